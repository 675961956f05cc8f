"""The FusionRegistration module's panel, written to FusionRegistration/Resources/UI/FusionRegistration.ui by tools/make_ui.py."""

from __future__ import annotations

from ui.common import SCALAR, apply_button, document, label, node_combo, section, status_label, widget


def build() -> str:
    inputs = section("inputsCollapsibleButton", "Inputs", "Volumes to align and fuse", [
        (label("fixedLabel", "Fixed volume:", "The reference volume"),
         node_combo("fixedSelector", "fixedVolume", "Reference volume: the output has its grid (origin, spacing, direction)", SCALAR)),
        (label("movingLabel", "Moving volume:", "The volume brought onto the fixed grid"),
         node_combo("movingSelector", "movingVolume", "Volume resampled onto the fixed grid, through the transforms both volumes are under", SCALAR)),
    ])
    params = section("blendCollapsibleButton", "Blend", "How the two volumes are combined", [
        (label("weightLabel", "Moving weight:", "Share of the moving volume in the blend"),
         widget("ctkSliderWidget", "blendWeightSliderWidget",
                "Share of the moving volume in the blend, from 0 (fixed only) to 1 (moving only); unitless", "blendWeight",
                minimum=0.0, maximum=1.0, singleStep=0.05, decimals=2, value=0.5)),
        (label("normalizationLabel", "Intensity normalisation:", "How intensities are made comparable before blending"),
         widget("QComboBox", "normalizationComboBox",
                "percentile: each volume's 1st-99th percentile mapped to [0, 1] (output in [0, 1]); none: raw intensities in the inputs' units",
                "normalization", items=["percentile", "none"])),
    ])
    outputs = section("outputsCollapsibleButton", "Outputs", "Where the result goes", [
        (label("outputLabel", "Fused volume:", "Volume that receives the blend"),
         node_combo("outputSelector", "outputVolume", "Volume that receives the blend; 'Create new' makes a new volume (a volume of yours is overwritten only if you choose it here)", SCALAR, optional=True)),
        (label("showResultLabel", "Show result:", "Show the fused volume when done"),
         widget("QCheckBox", "showResultCheckBox", "Show the fused volume in the slice views when done", "showResult", text="")),
    ])
    advanced = section("advancedCollapsibleButton", "Advanced", "Compute settings", [
        (label("deviceLabel", "Device:", "Where the computation runs"),
         widget("QComboBox", "deviceComboBox",
                "auto: $MEDTORCH_DEVICE if set, else CUDA GPU, then Apple MPS, then CPU; or force cpu, cuda or mps",
                "device", items=["auto", "cpu", "cuda", "mps"])),
    ], collapsed=True)
    return document("FusionRegistration", [inputs, params, outputs, advanced,
                                           apply_button("Resample the moving volume onto the fixed grid and blend them"),
                                           status_label()])
