"""The EnhanceSR module's panel, written to EnhanceSR/Resources/UI/EnhanceSR.ui by tools/make_ui.py."""

from __future__ import annotations

from ui.common import (SCALAR, apply_button, dicom_export_rows, dicom_source_folder_row, document, label, node_combo,
                       request_items, section, status_label, widget)

from medtorch.ops.enhance import DenoiseRequest, SuperresRequest

DENOISE_METHODS = request_items(DenoiseRequest, "method")
SR_METHODS = request_items(SuperresRequest, "method")
CT_WINDOWS = ["none", "brain", "subdural", "stroke", "bone", "lung", "mediastinum", "soft_tissue", "liver"]


def build() -> str:
    inputs = section("inputsCollapsibleButton", "Inputs", "Volume to enhance and what to do with it", [
        (label("inputLabel", "Input volume:", "The volume to enhance"),
         node_combo("inputSelector", "inputVolume", "Volume to denoise, super-resolve or enhance; it is never modified",
                    SCALAR)),
        (label("operationLabel", "Operation:", "What to do"),
         widget("QComboBox", "operationComboBox",
                "denoise: remove noise; superres: super-resolve thick slices (or upsample isotropically); "
                "enhance: bias correction, CLAHE, histogram matching, sharpening, CT window",
                "operation", items=["denoise", "superres", "enhance"])),
    ])
    params = section("denoiseCollapsibleButton", "Denoising", "Denoising method and its parameters", [
        (label("methodLabel", "Method:", "Denoising method"),
         widget("QComboBox", "methodComboBox",
                "gaussian: Gaussian smoothing; median: median filter; anisotropic: curvature anisotropic diffusion "
                "(edge-preserving, as Slicer's module); bilateral; nlm: non-local means; patch: ITK patch-based; "
                "dct: sliding 3D DCT; collab: DCT pilot + guided non-local means; selfsup: a network trained on this "
                "volume alone (self-supervised) + collab. Noise level estimated; Rician-aware for MRI",
                "method", items=DENOISE_METHODS)),
        (label("sigmaLabel", "Gaussian sigma / median radius:", "Width of the Gaussian kernel or the median box"),
         widget("ctkSliderWidget", "sigmaSliderWidget", "Standard deviation of the Gaussian kernel (gaussian), or "
                "radius of the median box (median), in millimetres",
                "sigma", minimum=0.1, maximum=10.0, singleStep=0.1, decimals=1, value=1.0, suffix=" mm")),
        (label("conductanceLabel", "Conductance:", "Edge sensitivity of anisotropic diffusion"),
         widget("ctkSliderWidget", "conductanceSliderWidget", "Conductance of anisotropic diffusion: lower keeps more edges; unitless",
                "conductance", minimum=0.1, maximum=10.0, singleStep=0.1, decimals=1, value=1.0)),
        (label("iterationsLabel", "Iterations:", "Number of diffusion steps"),
         widget("QSpinBox", "iterationsSpinBox", "Number of anisotropic diffusion steps (more is smoother and slower)",
                "iterations", minimum=1, maximum=100, value=5)),
        (label("strengthLabel", "Strength:", "How strongly the noise-aware methods denoise"),
         widget("ctkSliderWidget", "strengthSliderWidget",
                "bilateral, nlm, patch, dct, collab, selfsup: multiple of the estimated noise level (1 = as "
                "estimated; higher is smoother); unitless",
                "strength", minimum=0.2, maximum=3.0, singleStep=0.1, decimals=1, value=1.0)),
    ])
    sr = section("superresCollapsibleButton", "Super-resolution", "Through-plane or isotropic super-resolution", [
        (label("srMethodLabel", "Method:", "Super-resolution method"),
         widget("QComboBox", "srMethodComboBox",
                "bspline: cubic B-spline; linear; sinc: windowed sinc; selfsup: learnt from the volume's own in-plane "
                "slices (self-supervised, SMORE-style; takes minutes)", "srMethod", items=SR_METHODS)),
        (label("factorLabel", "Factor:", "Upsampling factor"),
         widget("QDoubleSpinBox", "factorSpinBox",
                "Upsampling factor of the thick axis (or of every axis with axis 'all'); output spacing = input spacing "
                "/ factor; unitless", "factor", minimum=1.0, maximum=8.0, singleStep=0.5, decimals=1, value=2.0,
                prefix="x ")),
        (label("axisLabel", "Axis:", "Axis to refine"),
         widget("QComboBox", "axisComboBox",
                "auto: the thickest axis; i, j, k: that axis; all: isotropic upsampling of every axis",
                "axis", items=request_items(SuperresRequest, "axis"))),
        (label("fwhmLabel", "Slice profile FWHM:", "Width of the slice profile"),
         widget("QDoubleSpinBox", "fwhmSpinBox",
                "selfsup: full width at half maximum of the slice profile; 0 = estimate it from the volume",
                "fwhm", minimum=0.0, maximum=20.0, singleStep=0.5, decimals=2, value=0.0, suffix=" mm")),
        (label("profileShapeLabel", "Slice profile shape:", "Shape of the slice profile"),
         widget("QComboBox", "profileShapeComboBox",
                "selfsup: how each thick slice weighs the tissue across its thickness. gaussian: a smooth bell "
                "(3D acquisitions resampled to thick slices); box: equal weight across the slice (2D multi-slice "
                "acquisitions); auto: the one that fits the volume better, when the FWHM is estimated (the two fit "
                "almost equally well, so choose the shape when you know how the scan was acquired)",
                "profileShape", items=request_items(SuperresRequest, "profile_shape"))),
    ], collapsed=True)
    selfsup = section("learningCollapsibleButton", "Self-supervised learning", "Training of the self-supervised methods", [
        (label("trainIterationsLabel", "Training iterations:", "How long the network trains"),
         widget("QSpinBox", "trainIterationsSpinBox",
                "Number of training iterations of the self-supervised network (0 = the default); more is slower",
                "trainIterations", minimum=0, maximum=5000, value=0)),
        (label("seedLabel", "Random seed:", "Seed of the training"),
         widget("QSpinBox", "seedSpinBox", "Random seed of the training (recorded with the result); number of the seed",
                "seed", minimum=0, maximum=1000000, value=0)),
    ], collapsed=True)
    enh = section("enhanceCollapsibleButton", "Enhancement", "Bias correction, contrast, sharpening, CT windows", [
        (label("n4Label", "N4 bias correction:", "Correct the MRI bias field"),
         widget("QCheckBox", "n4CheckBox", "Correct the smooth intensity bias of MRI (N4)", "n4", text="")),
        (label("claheLabel", "CLAHE:", "Adaptive histogram equalisation"),
         widget("QCheckBox", "claheCheckBox", "Contrast-limited adaptive histogram equalisation (3D)", "clahe", text="")),
        (label("claheClipLabel", "CLAHE clip limit:", "Strength of CLAHE"),
         widget("ctkSliderWidget", "claheClipSliderWidget", "CLAHE clip limit, 0..1 (higher is stronger); unitless",
                "claheClip", minimum=0.001, maximum=1.0, singleStep=0.005, decimals=3, value=0.01)),
        (label("unsharpLabel", "Unsharp masking:", "Sharpen"),
         widget("QCheckBox", "unsharpCheckBox", "Sharpen detail finer than 1 mm (unsharp masking)", "unsharp", text="")),
        (label("unsharpAmountLabel", "Sharpening amount:", "Strength of the sharpening"),
         widget("ctkSliderWidget", "unsharpAmountSliderWidget", "Unsharp masking amount (0 = none); unitless",
                "unsharpAmount", minimum=0.0, maximum=3.0, singleStep=0.1, decimals=1, value=0.5)),
        (label("ctWindowLabel", "CT window:", "Window a CT volume"),
         widget("QComboBox", "ctWindowComboBox", "CT window preset mapped to 0..1 (none: no windowing)",
                "ctWindow", items=CT_WINDOWS)),
        (label("referenceLabel", "Histogram reference:", "Match the histogram to this volume"),
         node_combo("referenceSelector", "referenceVolume",
                    "Volume whose intensity histogram the result is matched to (none: no matching)", SCALAR,
                    optional=True)),
    ], collapsed=True)
    outputs = section("outputsCollapsibleButton", "Outputs", "Where the result goes", [
        (label("outputLabel", "Output volume:", "Volume that receives the result"),
         node_combo("outputSelector", "outputVolume", "Volume that receives the result; 'Create new' makes a new volume (a volume of yours is overwritten only if you choose it here)", SCALAR, optional=True)),
        (label("comparisonLabel", "Before/after volume:", "An extra volume comparing input and result"),
         widget("QComboBox", "comparisonComboBox",
                "none; difference: result minus input; checkerboard: alternating blocks of input and result "
                "(on the result's grid)", "comparison", items=request_items(DenoiseRequest, "comparison"))),
        (label("fidelityMapLabel", "Fidelity map:", "Also make a map of where the result departs from the input"),
         widget("QCheckBox", "fidelityMapCheckBox",
                "Denoise and super-resolution: also make the fidelity map as a new volume. Super-resolution: the "
                "output re-degraded by the slice profile minus the input, on the input's grid (invented detail "
                "shows up); denoising: what was removed in units of the noise (white noise when only noise was "
                "removed, edges when structure was). Its summary is shown when done", "fidelityMap", text="")),
        (label("showResultLabel", "Show result:", "Show the result when done"),
         widget("QCheckBox", "showResultCheckBox", "Show the result in the linked slice views, with the input as a "
                "foreground to fade in for before/after", "showResult", text="")),
    ])
    export = section("exportCollapsibleButton", "Export to DICOM",
                     "Write the output volume as a new DICOM series derived from the input's DICOM series", [
        dicom_source_folder_row("the new series joins its patient and study"),
        (label("exportPatientIdLabel", "Patient ID:", "For an input without a DICOM source"),
         widget("QLineEdit", "exportPatientIdLineEdit",
                "Only for an input without a DICOM source (not loaded through the DICOM module, no source folder "
                "chosen): the patient ID of the new patient and study the series is written in. Nothing is invented: "
                "without it the export is refused", "dicomPatientId", text="")),
        (label("exportModalityLabel", "Modality:", "The modality the new series is written as"),
         widget("QComboBox", "exportModalityComboBox",
                "auto: the modality of the input's DICOM series. For an input without a DICOM source choose CT or MR: "
                "the series is written as CT or MR images, which PACS and viewers show with their 3D geometry",
                "dicomModality", items=["auto", "CT", "MR"])),
        *dicom_export_rows("series", "Write the output volume as a new DICOM series, in the patient and study of the "
                           "input's DICOM series; it is read back and checked (corners within half a voxel, values) "
                           "before it is kept"),
    ], collapsed=True)
    return document("EnhanceSR", [inputs, params, sr, selfsup, enh, outputs,
                                  apply_button("Enhance the input volume into a new volume"), status_label(), export])
