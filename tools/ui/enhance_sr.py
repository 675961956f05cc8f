"""The EnhanceSR module's panel, written to EnhanceSR/Resources/UI/EnhanceSR.ui by tools/make_ui.py."""

from __future__ import annotations

from ui.common import SCALAR, apply_button, document, label, node_combo, section, status_label, widget


def build() -> str:
    inputs = section("inputsCollapsibleButton", "Inputs", "Volume to enhance", [
        (label("inputLabel", "Input volume:", "The volume to denoise"),
         node_combo("inputSelector", "inputVolume", "Volume to denoise; it is never modified", SCALAR)),
    ])
    params = section("denoiseCollapsibleButton", "Denoising", "Denoising method and its parameters", [
        (label("methodLabel", "Method:", "Denoising method"),
         widget("QComboBox", "methodComboBox",
                "gaussian: Gaussian smoothing; anisotropic: curvature anisotropic diffusion (edge-preserving, as Slicer's module)",
                "method", items=["gaussian", "anisotropic"])),
        (label("sigmaLabel", "Gaussian sigma:", "Width of the Gaussian kernel"),
         widget("ctkSliderWidget", "sigmaSliderWidget", "Standard deviation of the Gaussian kernel, in millimetres (same physical width along every axis)",
                "sigma", minimum=0.1, maximum=10.0, singleStep=0.1, decimals=1, value=1.0, suffix=" mm")),
        (label("conductanceLabel", "Conductance:", "Edge sensitivity of anisotropic diffusion"),
         widget("ctkSliderWidget", "conductanceSliderWidget", "Conductance of anisotropic diffusion: lower keeps more edges; unitless",
                "conductance", minimum=0.1, maximum=10.0, singleStep=0.1, decimals=1, value=1.0)),
        (label("iterationsLabel", "Iterations:", "Number of diffusion steps"),
         widget("QSpinBox", "iterationsSpinBox", "Number of anisotropic diffusion steps (more is smoother and slower)",
                "iterations", minimum=1, maximum=100, value=5)),
    ])
    outputs = section("outputsCollapsibleButton", "Outputs", "Where the result goes", [
        (label("outputLabel", "Denoised volume:", "Volume that receives the result"),
         node_combo("outputSelector", "outputVolume", "Volume that receives the result; 'Create new' makes a new volume (a volume of yours is overwritten only if you choose it here)", SCALAR, optional=True)),
        (label("showResultLabel", "Show result:", "Show the result when done"),
         widget("QCheckBox", "showResultCheckBox", "Show the denoised volume in the slice views when done", "showResult", text="")),
    ])
    return document("EnhanceSR", [inputs, params, outputs, apply_button("Denoise the input volume into a new volume"),
                                  status_label()])
