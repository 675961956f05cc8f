"""The FusionRegistration module's panel, written to FusionRegistration/Resources/UI/FusionRegistration.ui by tools/make_ui.py.

Sections: Inputs (shared), Registration (its own Register button), Fusion (the blend and its
Apply button; more fusion methods plug in here), Advanced.
"""

from __future__ import annotations

from ui.common import SCALAR, apply_button, document, label, node_combo, section, status_label, widget

FIDUCIALS = ["vtkMRMLMarkupsFiducialNode"]
TRANSFORMS = ["vtkMRMLLinearTransformNode", "vtkMRMLGridTransformNode"]


def build() -> str:
    inputs = section("inputsCollapsibleButton", "Inputs", "Volumes to align and fuse", [
        (label("fixedLabel", "Fixed volume:", "The reference volume"),
         node_combo("fixedSelector", "fixedVolume", "Reference volume: the output has its grid (origin, spacing, direction)", SCALAR)),
        (label("movingLabel", "Moving volume:", "The volume brought onto the fixed grid"),
         node_combo("movingSelector", "movingVolume", "Volume resampled onto the fixed grid, through the transforms both volumes are under", SCALAR)),
    ])
    registration = section("registrationCollapsibleButton", "Registration", "Find the transform that aligns the moving volume with the fixed one", [
        (label("modeLabel", "Transform:", "Transform model"),
         widget("QComboBox", "modeComboBox",
                "rigid: rotation and translation; affine: also scaling and shearing; deformable: affine, then a smooth displacement field",
                "registrationMode", items=["rigid", "affine", "deformable"])),
        (label("metricLabel", "Similarity:", "How the two volumes are compared"),
         widget("QComboBox", "metricComboBox",
                "mi: mutual information (any modalities, e.g. CT to MRI); mind: MIND-SSC descriptors (any modalities); lncc, ncc, mse: same modality",
                "metric", items=["mi", "mind", "lncc", "ncc", "mse"])),
        (label("engineLabel", "Engine:", "Which implementation registers"),
         widget("QComboBox", "engineComboBox",
                "torch: MedTorch's engine (GPU or CPU); sitk: SimpleITK Mattes MI (corrected multi-resolution recipe); elastix: itk-elastix, if installed",
                "engine", items=["torch", "sitk", "elastix"])),
        (label("initLabel", "Initialisation:", "How the search starts"),
         widget("QComboBox", "initComboBox",
                "auto: landmark pairs if given, else a rotation search about the centres of mass (survives large misalignment); geometry: grid centres; moments: centres of mass; pax: principal axes; fiducials: landmark pairs; none: as the volumes are",
                "initialization", items=["auto", "geometry", "moments", "pax", "fiducials", "none"])),
        (label("fixedMaskLabel", "Fixed mask:", "Optional region of the fixed volume"),
         node_combo("fixedMaskSelector", "fixedMask", "Optional binary volume or label map: only fixed voxels inside it are compared", SCALAR, optional=True)),
        (label("movingMaskLabel", "Moving mask:", "Optional region of the moving volume"),
         node_combo("movingMaskSelector", "movingMask", "Optional binary volume or label map: only moving voxels inside it are compared", SCALAR, optional=True)),
        (label("fixedFiducialsLabel", "Fixed landmarks:", "Optional points in the fixed volume"),
         node_combo("fixedFiducialsSelector", "fixedFiducials", "Optional point list in the fixed volume, paired in order with the moving landmarks: used to initialise (auto, fiducials) and to report the target registration error (TRE, mm)", FIDUCIALS, optional=True)),
        (label("movingFiducialsLabel", "Moving landmarks:", "Optional points in the moving volume"),
         node_combo("movingFiducialsSelector", "movingFiducials", "Optional point list in the moving volume: the points matching the fixed landmarks, in the same order", FIDUCIALS, optional=True)),
        (label("outputTransformLabel", "Output transform:", "Transform node that receives the result"),
         node_combo("outputTransformSelector", "outputTransform", "Transform node that receives the result (linear for rigid/affine, grid for deformable); 'Create new' makes a new node", TRANSFORMS, optional=True)),
        (label("resampledLabel", "Resampled volume:", "Volume that receives the moving volume on the fixed grid"),
         node_combo("resampledSelector", "resampledVolume", "Volume that receives the moving volume resampled onto the fixed grid; 'Create new' makes a new volume", SCALAR, optional=True)),
        (label("placeLabel", "Place moving under transform:", "Put the moving volume under the result transform"),
         widget("QCheckBox", "placeUnderTransformCheckBox", "Put the moving volume under the result transform, so that it shows aligned with the fixed volume (its voxels are not changed)", "placeUnderTransform", text="", checked=True)),
        (label("hardenLabel", "Harden transform:", "Apply the transform to the moving volume's voxels"),
         widget("QCheckBox", "hardenCheckBox", "Harden the transform into the moving volume (changes the moving volume node; off by default)", "hardenTransform", text="")),
        ("", widget("QPushButton", "registerButton", "Register the moving volume to the fixed volume in the background (progress and Cancel)", text="Register", enabled=False)),
    ])
    fusion = section("blendCollapsibleButton", "Fusion", "How the two volumes are combined into one", [
        (label("weightLabel", "Moving weight:", "Share of the moving volume in the blend"),
         widget("ctkSliderWidget", "blendWeightSliderWidget",
                "Share of the moving volume in the blend, from 0 (fixed only) to 1 (moving only); unitless", "blendWeight",
                minimum=0.0, maximum=1.0, singleStep=0.05, decimals=2, value=0.5)),
        (label("normalizationLabel", "Intensity normalisation:", "How intensities are made comparable before blending"),
         widget("QComboBox", "normalizationComboBox",
                "percentile: each volume's 1st-99th percentile mapped to [0, 1] (output in [0, 1]); none: raw intensities in the inputs' units",
                "normalization", items=["percentile", "none"])),
        (label("outputLabel", "Fused volume:", "Volume that receives the blend"),
         node_combo("outputSelector", "outputVolume", "Volume that receives the blend; 'Create new' makes a new volume (a volume of yours is overwritten only if you choose it here)", SCALAR, optional=True)),
        (label("showResultLabel", "Show result:", "Show the fused volume when done"),
         widget("QCheckBox", "showResultCheckBox", "Show the fused volume in the slice views when done", "showResult", text="")),
        ("", apply_button("Resample the moving volume onto the fixed grid and blend them", text="Fuse")),
    ])
    advanced = section("advancedCollapsibleButton", "Advanced", "Compute settings", [
        (label("deviceLabel", "Device:", "Where the computation runs"),
         widget("QComboBox", "deviceComboBox",
                "auto: $MEDTORCH_DEVICE if set, else CUDA GPU, then Apple MPS, then CPU; or force cpu, cuda or mps",
                "device", items=["auto", "cpu", "cuda", "mps"])),
        (label("seedLabel", "Random seed:", "Seed of the registration's sampling"),
         widget("QSpinBox", "seedSpinBox", "Seed of the registration's random sampling (a whole number, unitless); the same seed gives the same result, and it is recorded with the result",
                "seed", minimum=0, maximum=2147483647, value=0)),
    ], collapsed=True)
    return document("FusionRegistration", [inputs, registration, fusion, advanced, status_label()])
