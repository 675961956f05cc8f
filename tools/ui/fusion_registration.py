"""The FusionRegistration module's panel, written to FusionRegistration/Resources/UI/FusionRegistration.ui by tools/make_ui.py.

Sections: Inputs (shared), Registration (its own Register button), Fusion (method, its
parameters, intensities, colour map, views; the Apply button reads "Fuse"), Evaluation
(compare methods on the pair: Evaluate methods button), Advanced.
"""

from __future__ import annotations

from ui.common import SCALAR, apply_button, document, label, node_combo, request_items, section, status_label, widget

from medtorch.ops.fusion import FuseRequest
from medtorch.ops.registration import RegisterRequest

FIDUCIALS = ["vtkMRMLMarkupsFiducialNode"]
TRANSFORMS = ["vtkMRMLLinearTransformNode", "vtkMRMLGridTransformNode"]
#: The fusion methods, less the reference rule "max".
FUSION_METHODS = request_items(FuseRequest, "method", drop=("max",))
MODALITIES = ["auto", "CT", "MR", "PT", "NM", "OT"]
CT_WINDOWS = ["bone", "brain", "subdural", "stroke", "lung", "mediastinum", "soft_tissue", "liver"]
WAVELETS = ["haar", "db2", "db3", "db4", "db5", "sym4", "sym5", "coif1", "coif2"]
METRICS = ["EN", "SD", "SF", "AG", "MI", "SSIM_sum", "QABF", "VIF"]


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
                "registrationMode", items=request_items(RegisterRequest, "mode"))),
        (label("metricLabel", "Similarity:", "How the two volumes are compared"),
         widget("QComboBox", "metricComboBox",
                "mi: mutual information (any modalities, e.g. CT to MRI); mind: MIND-SSC descriptors (any modalities); lncc, ncc, mse: same modality",
                "metric", items=request_items(RegisterRequest, "metric"))),
        (label("engineLabel", "Engine:", "Which implementation registers"),
         widget("QComboBox", "engineComboBox",
                "torch: MedTorch's engine (GPU or CPU); sitk: SimpleITK Mattes MI (corrected multi-resolution recipe); elastix: itk-elastix, if installed; "
                "learned: a trained network (VoxelMorph) predicts the deformable field in one pass after the affine stage (needs a model file)",
                "engine", items=request_items(RegisterRequest, "engine"))),
        (label("learnedModelLabel", "Learned model:", "learned engine: the model file"),
         widget("QLineEdit", "learnedModelLineEdit",
                "learned engine: path of a registration model pack (.zip), e.g. one trained with 'medtorch train-reg'; "
                "its checksums are verified before it is loaded, and volumes outside its contract (channels, voxel size) "
                "are refused", "learnedModel", text="")),
        ("", widget("QPushButton", "learnedModelBrowseButton", "Choose the registration model pack (.zip) of the learned engine",
                    text="Choose model file...")),
        (label("refineLearnedLabel", "Refine network result:", "learned engine: instance optimisation"),
         widget("QCheckBox", "refineLearnedCheckBox",
                "learned engine: refine the network's field with MedTorch's deformable optimiser, starting from it "
                "(instance optimisation: more accurate, a few seconds more)", "refineLearned", text="")),
        (label("initLabel", "Initialisation:", "How the search starts"),
         widget("QComboBox", "initComboBox",
                "auto: landmark pairs if given, else a rotation search about the centres of mass (survives large misalignment); geometry: grid centres; moments: centres of mass; pax: principal axes; fiducials: landmark pairs; none: as the volumes are",
                "initialization", items=request_items(RegisterRequest, "init"))),
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
        (label("similarityMapLabel", "Local similarity map:", "Also output the verdict's local similarity as a volume"),
         widget("QCheckBox", "similarityMapCheckBox", "Also output the verdict's local similarity after registration (0-1, per block of about 24 mm) as a volume on the fixed grid: low values show where the volumes do not match", "similarityMap", text="")),
        (label("similarityMapVolumeLabel", "Similarity map volume:", "Volume that receives the local similarity map"),
         node_combo("similarityMapSelector", "similarityMapVolume", "Volume that receives the local similarity map (when the map is on); 'Create new' makes a new volume", SCALAR, optional=True)),
        (label("verdictTableLabel", "Verdict table:", "Table that receives the verdict's checks"),
         node_combo("verdictTableSelector", "verdictTable", "Table that receives the verdict: a row per check (name, value, threshold, status, message); 'Create new' makes a new table", ["vtkMRMLTableNode"], optional=True)),
        ("", widget("QPushButton", "registerButton", "Register the moving volume to the fixed volume in the background (progress and Cancel)", text="Register", enabled=False)),
    ])
    fusion = section("blendCollapsibleButton", "Fusion", "How the two volumes are combined into one", [
        (label("fusionMethodLabel", "Method:", "Fusion method"),
         widget("QComboBox", "fusionMethodComboBox",
                "average: weighted average; dwt: DWT, mean approximation, max-abs details; "
                "laplacian: Laplacian pyramid; gff: guided-filter fusion (Li 2013, training-free, usually the highest "
                "QAB/F); pca: PCA weights; cnn: a two-branch CNN trained on this pair (unsupervised, seeded; slower)",
                "fusionMethod", items=FUSION_METHODS)),
        (label("weightLabel", "Moving weight:", "Share of the moving volume in the average"),
         widget("ctkSliderWidget", "blendWeightSliderWidget",
                "average: share of the moving volume, from 0 (fixed only) to 1 (moving only); unitless", "blendWeight",
                minimum=0.0, maximum=1.0, singleStep=0.05, decimals=2, value=0.5)),
        (label("waveletLabel", "Wavelet:", "dwt: the wavelet"),
         widget("QComboBox", "waveletComboBox", "dwt: wavelet of the decomposition (haar as in the seeds; Daubechies, "
                "Symlets, Coiflets as PyWavelets names them)", "dwtWavelet", items=WAVELETS)),
        (label("dwtLevelsLabel", "Wavelet levels:", "dwt: decomposition levels"),
         widget("QSpinBox", "dwtLevelsSpinBox", "dwt: number of decomposition levels (fewer where the volume is small)",
                "dwtLevels", minimum=1, maximum=8, value=3)),
        (label("laplacianLevelsLabel", "Pyramid levels:", "laplacian: pyramid levels"),
         widget("QSpinBox", "laplacianLevelsSpinBox", "laplacian: number of pyramid levels (fewer where the volume is small)",
                "laplacianLevels", minimum=1, maximum=8, value=4)),
        (label("gffR1Label", "GFF base radius r1:", "gff: guided-filter radius of the base-layer weights"),
         widget("QSpinBox", "gffR1SpinBox", "gff: radius of the guided filter that smooths the base-layer weights, in "
                "voxels of the finest axis (paper: 45)", "gffR1", minimum=1, maximum=200, value=45, suffix=" voxels")),
        (label("gffEps1Label", "GFF base eps1:", "gff: regularisation of the base-layer guided filter"),
         widget("QDoubleSpinBox", "gffEps1SpinBox", "gff: regularisation eps1 of the base-layer guided filter, for "
                "intensities in [0, 1] (paper: 0.3); unitless", "gffEps1", minimum=1e-06, maximum=10.0, singleStep=0.05,
                decimals=6, value=0.3)),
        (label("gffR2Label", "GFF detail radius r2:", "gff: guided-filter radius of the detail-layer weights"),
         widget("QSpinBox", "gffR2SpinBox", "gff: radius of the guided filter that smooths the detail-layer weights, in "
                "voxels of the finest axis (paper: 7)", "gffR2", minimum=1, maximum=200, value=7, suffix=" voxels")),
        (label("gffEps2Label", "GFF detail eps2:", "gff: regularisation of the detail-layer guided filter"),
         widget("QDoubleSpinBox", "gffEps2SpinBox", "gff: regularisation eps2 of the detail-layer guided filter, for "
                "intensities in [0, 1] (paper: 0.000001); unitless", "gffEps2", minimum=1e-08, maximum=1.0,
                singleStep=1e-06, decimals=8, value=1e-06)),
        (label("cnnIterationsLabel", "CNN iterations:", "cnn: training iterations on the pair"),
         widget("QSpinBox", "cnnIterationsSpinBox", "cnn: number of training iterations on this pair (unsupervised SSIM, "
                "gradient and intensity loss; seeded by the random seed under Advanced); 0 with a checkpoint uses it as it is",
                "cnnIterations", minimum=0, maximum=100000, value=150)),
        (label("cnnCheckpointLabel", "CNN checkpoint:", "cnn: optional weights to start from"),
         widget("QLineEdit", "cnnCheckpointLineEdit", "cnn: optional path of a checkpoint (.pt, MedTorch's fusion CNN, "
                "loaded with weights only) to start from; empty: train from a seeded initialisation", "cnnCheckpoint")),
        (label("normalizationLabel", "Intensities:", "How intensities are made comparable before fusing"),
         widget("QComboBox", "normalizationComboBox",
                "auto: CT through the window preset, MRI and the rest 1st-99th percentile to [0, 1] (output in [0, 1]); "
                "percentile: every volume by percentiles; none: raw intensities in the inputs' units (average only)",
                "normalization", items=request_items(FuseRequest, "normalization"))),
        (label("fixedModalityLabel", "Fixed modality:", "What the fixed volume is"),
         widget("QComboBox", "fixedModalityComboBox",
                "auto: the node's DICOM modality (else other: percentiles); CT (windowed), MR, PT (PET), NM (SPECT), OT",
                "fixedModality", items=MODALITIES)),
        (label("movingModalityLabel", "Moving modality:", "What the moving volume is"),
         widget("QComboBox", "movingModalityComboBox",
                "auto: the node's DICOM modality (else other: percentiles); CT (windowed), MR, PT (PET) or NM (SPECT): "
                "a PET or SPECT volume can be fused in colour", "movingModality", items=MODALITIES)),
        (label("ctWindowLabel", "CT window:", "Window preset for a CT source"),
         widget("QComboBox", "ctWindowComboBox",
                "CT window preset (width/level in HU from MedTorch's presets) mapped to [0, 1]; bone by default, "
                "since bone is what a CT adds to an MRI", "ctWindow", items=CT_WINDOWS)),
        (label("colorMapLabel", "Colour map:", "Colour fusion of a PET or SPECT moving volume"),
         widget("QComboBox", "colorMapComboBox",
                "none: grey fusion; hot, jet, rainbow, gray: the PET/SPECT volume in this colour map, its luminance "
                "fused (YCbCr), the colour kept: an RGB volume is made beside the fused one (moving modality PT or NM)",
                "colorMap", items=["none", *request_items(FuseRequest, "color_map")])),
        (label("computeMetricsLabel", "Compute metrics:", "Score the fused volume"),
         widget("QCheckBox", "computeMetricsCheckBox", "Score the fused volume against the two sources (EN, SD, SF, AG, "
                "MI in bits, SSIM, QAB/F, VIF; 3D) into a table", "computeMetrics", text="", checked=True)),
        (label("outputLabel", "Fused volume:", "Volume that receives the fused volume"),
         node_combo("outputSelector", "outputVolume", "Volume that receives the fused volume (values in [0, 1]); 'Create "
                    "new' makes a new volume (a volume of yours is overwritten only if you choose it here)", SCALAR,
                    optional=True)),
        (label("showResultLabel", "Show in slice views:", "Overlay the two volumes when done"),
         widget("QCheckBox", "showResultCheckBox", "When done, show the fixed volume as background and the moving volume "
                "(through its transforms, in the colour map) as foreground in linked slice views", "showResult", text="",
                checked=True)),
        (label("opacityLabel", "Foreground opacity:", "Opacity of the moving volume over the fixed one"),
         widget("ctkSliderWidget", "foregroundOpacitySliderWidget",
                "Opacity of the moving volume over the fixed volume in the slice views, from 0 (hidden) to 1 (opaque); "
                "unitless", "foregroundOpacity", minimum=0.0, maximum=1.0, singleStep=0.05, decimals=2, value=0.5)),
        (label("showIn3DLabel", "Show fused volume in 3D:", "Volume rendering of the fused volume"),
         widget("QCheckBox", "showIn3DCheckBox", "Show the fused volume in the 3D view by volume rendering when done",
                "showIn3D", text="", checked=True)),
        ("", apply_button("Fuse the moving volume (through its transforms) with the fixed volume into a new volume",
                          text="Fuse")),
    ])
    evaluation = section("evaluationCollapsibleButton", "Evaluation", "Compare fusion methods on this pair", [
        (label("evaluationMethodsLabel", "Methods:", "Methods to compare"),
         widget("QLineEdit", "evaluationMethodsLineEdit", "Methods to compare, separated by commas (average, dwt, "
                "laplacian, gff, pca, cnn, max); each uses the parameters set in the Fusion section",
                "evaluationMethods", text="average,dwt,laplacian,gff,pca")),
        (label("evaluationBaselineLabel", "Baseline:", "Method the others are tested against"),
         widget("QComboBox", "evaluationBaselineComboBox", "The method every other is compared with, slice by slice "
                "(Wilcoxon signed-rank and paired t-test); dwt: mean approximation, max-abs details", "evaluationBaseline",
                items=FUSION_METHODS)),
        (label("boxPlotMetricLabel", "Box plot metric:", "Metric shown in the box plot"),
         widget("QComboBox", "boxPlotMetricComboBox", "Metric whose per-slice values the box plot shows, one box per "
                "method (EN, SD, SF, AG, MI, SSIM_sum (SSIM summed over both sources), QABF, VIF)", "boxPlotMetric", items=METRICS)),
        (label("evaluationTableLabel", "Metrics table:", "Table that receives the metrics"),
         node_combo("evaluationTableSelector", "evaluationTable", "Table that receives one row per method and a column "
                    "per metric (3D); 'Create new' makes a new table", ["vtkMRMLTableNode"], optional=True)),
        ("", widget("QPushButton", "evaluateButton", "Fuse with every listed method, score each in 3D and per slice, test "
                    "each against the baseline, and plot the chosen metric per method (background, with progress and "
                    "Cancel)", text="Evaluate methods", enabled=False)),
    ], collapsed=True)
    advanced = section("advancedCollapsibleButton", "Advanced", "Compute settings", [
        (label("deviceLabel", "Device:", "Where the computation runs"),
         widget("QComboBox", "deviceComboBox",
                "auto: $MEDTORCH_DEVICE if set, else CUDA GPU, then Apple MPS, then CPU; or force cpu, cuda or mps",
                "device", items=["auto", "cpu", "cuda", "mps"])),
        (label("seedLabel", "Random seed:", "Seed of the registration's sampling and of the fusion CNN"),
         widget("QSpinBox", "seedSpinBox", "Seed of the registration's random sampling and of the fusion CNN's training (a whole number, unitless); the same seed gives the same result, and it is recorded with the result",
                "seed", minimum=0, maximum=2147483647, value=0)),
    ], collapsed=True)
    return document("FusionRegistration", [inputs, registration, fusion, evaluation, advanced, status_label()])
