"""The SegmentTumor module's panel, written to SegmentTumor/Resources/UI/SegmentTumor.ui by tools/make_ui.py."""

from __future__ import annotations

from ui.common import (SCALAR, apply_button, dicom_export_rows, dicom_source_folder_row, document, hbox, label,
                       node_combo, request_items, section, status_label, widget)

from medtorch.ops.segmentation import SeededRequest


def optional_combo(name: str, param: str, tooltip: str, node_types: list[str], none_display: str = "None",
                   add: bool = False) -> str:
    """A node selector that may stay empty (shows ``none_display``)."""
    return widget("qMRMLNodeComboBox", name, tooltip, param, nodeTypes=node_types, showChildNodeTypes=False,
                  addEnabled=add, removeEnabled=False, noneEnabled=True, noneDisplay=none_display, renameEnabled=True)


def build() -> str:
    inputs = section("inputsCollapsibleButton", "Inputs", "Volumes and region to segment", [
        (label("inputLabel", "Input volume:", "The volume to segment (first channel)"),
         node_combo("inputSelector", "inputVolume", "Volume to segment (e.g. FLAIR); it is never modified", SCALAR)),
        (label("secondVolumeLabel", "Second volume:", "Optional second channel"),
         optional_combo("secondVolumeSelector", "secondVolume",
                        "Optional second co-registered channel (e.g. T1c), used by seeded segmentation and models",
                        SCALAR)),
        (label("thirdVolumeLabel", "Third volume:", "Optional third channel"),
         optional_combo("thirdVolumeSelector", "thirdVolume",
                        "Optional third co-registered channel (e.g. T2), used by seeded segmentation and models",
                        SCALAR)),
        (label("fourthVolumeLabel", "Fourth volume:", "Optional fourth channel"),
         optional_combo("fourthVolumeSelector", "fourthVolume",
                        "Optional fourth co-registered channel (e.g. T1), used by seeded segmentation and models",
                        SCALAR)),
        (label("roiLabel", "Region of interest:", "Optional box that limits the segmentation"),
         node_combo("roiSelector", "roi", "Optional ROI box around the lesion: only voxels inside it are considered", ["vtkMRMLMarkupsROINode"], optional=True)),
        (label("methodLabel", "Method:", "How the tumor is segmented"),
         widget("QComboBox", "methodComboBox",
                "threshold: intensity range and largest region; seeded: grow classes from painted seeds (no training); "
                "model: a trained model (MONAI bundle, TorchScript, nnU-Net), offline; nodules: lung nodules in a chest CT",
                "method", items=["threshold", "seeded", "model", "nodules"])),
    ])
    params = section("thresholdCollapsibleButton", "Threshold", "Intensity range of the lesion", [
        (label("lowerLabel", "Lower threshold:", "Lowest lesion intensity"),
         widget("QDoubleSpinBox", "lowerSpinBox", "Lowest intensity kept, in the volume's units (HU for CT)",
                "lowerThreshold", minimum=-100000.0, maximum=100000.0, singleStep=1.0, decimals=2, value=0.0)),
        (label("upperLabel", "Upper threshold:", "Highest lesion intensity"),
         widget("QDoubleSpinBox", "upperSpinBox", "Highest intensity kept, in the volume's units (HU for CT)",
                "upperThreshold", minimum=-100000.0, maximum=100000.0, singleStep=1.0, decimals=2, value=100000.0)),
        (label("largestLabel", "Largest component only:", "Keep only the largest connected region"),
         widget("QCheckBox", "largestComponentCheckBox", "Keep only the largest 26-connected region of the thresholded voxels", "largestComponent", text="", checked=True)),
        (label("segmentNameLabel", "Segment name:", "Name of the segment created"),
         widget("QLineEdit", "segmentNameLineEdit", "Name given to the segment in the new segmentation", "segmentName", text="Tumor")),
    ])
    seeded = section("seededCollapsibleButton", "Seeded", "Grow tumor classes from painted seeds", [
        (label("seedSegmentationLabel", "Seed segmentation:", "Seeds painted as segments"),
         optional_combo("seedSegmentationSelector", "seedSegmentation",
                        "Seeds painted in the Segment Editor: one segment per class (e.g. Necrosis, Edema, Enhancing "
                        "tumor) and a Background segment (or the last segment) around the tumor",
                        ["vtkMRMLSegmentationNode"])),
        (label("seedMarkupsLabel", "Seed points:", "Seeds placed as markups points"),
         optional_combo("seedMarkupsSelector", "seedMarkups",
                        "Instead of segments: markups points labelled with their class name (Background for the "
                        "background); each paints a small ball",
                        ["vtkMRMLMarkupsFiducialNode"])),
        (label("seedRadiusLabel", "Seed point radius:", "Size of the ball a seed point paints"),
         widget("QDoubleSpinBox", "seedRadiusSpinBox", "Radius of the ball each seed point paints", "seedRadiusMm",
                minimum=0.5, maximum=20.0, singleStep=0.5, decimals=1, value=2.0, suffix=" mm")),
        (label("seededMethodLabel", "Seeded method:", "How the seeds grow"),
         widget("QComboBox", "seededMethodComboBox",
                "geodesic: every class grows from its seeds along the cheapest paths, paying for intensity changes "
                "and for tissue unlike its seeds (the best on real tumor MRI); competition: localized region "
                "competition (uses Smoothness)", "seededMethod", items=request_items(SeededRequest, "method"))),
        (label("smoothnessLabel", "Smoothness:", "Boundary smoothness (competition)"),
         widget("ctkSliderWidget", "smoothnessSliderWidget",
                "Region competition only: weight of the boundary smoothness term, 0 (follows every intensity "
                "change) to 5 (round regions); unitless", "smoothness", minimum=0.0, maximum=5.0, singleStep=0.1,
                decimals=1, value=0.3)),
        (label("marginLabel", "Margin around seeds:", "Region segmented around the seeds"),
         widget("QDoubleSpinBox", "marginSpinBox", "Margin around the seeds' bounding box that is segmented too",
                "marginMm", minimum=0.0, maximum=100.0, singleStep=1.0, decimals=1, value=5.0, suffix=" mm")),
        (label("minSizeLabel", "Minimum piece size:", "Smaller pieces are removed"),
         widget("QDoubleSpinBox", "minSizeSpinBox", "Pieces of a segment smaller than this are removed (0 keeps all)",
                "minSizeMm3", minimum=0.0, maximum=1000000.0, singleStep=10.0, decimals=0, value=0.0, suffix=" mm³")),
        (label("fillHolesLabel", "Fill holes:", "Fill cavities enclosed in the tumor"),
         widget("QCheckBox", "fillHolesCheckBox", "Fill cavities enclosed in the tumor", "fillHoles", text="")),
        (label("autoUpdateLabel", "Auto-update:", "Re-run when the seeds change"),
         widget("QCheckBox", "autoUpdateCheckBox",
                "Re-run the seeded segmentation (fast, from the previous result) half a second after the seed "
                "segmentation changes", "autoUpdate", text="")),
        ("", widget("QPushButton", "updateButton",
                    "Re-run now in this process, reusing the previous run's features and result (fast after seed edits)",
                    text="Update", enabled=False)),
    ], collapsed=True)
    model = section("modelCollapsibleButton", "Model", "A trained segmentation model, offline", [
        (label("modelPathLabel", "Model:", "Trained model"),
         widget("QLineEdit", "modelPathLineEdit",
                "The name of an installed model (see Installed models), or the path of a MONAI bundle folder, a "
                "TorchScript file or an nnU-Net v2 model folder (never downloaded); the input volumes are its channels, "
                "in its order", "modelPath", text="")),
        (label("ttaLabel", "Flip augmentation:", "Test-time augmentation"),
         widget("QCheckBox", "ttaCheckBox", "Average the prediction over flips (4 times slower, often more accurate)",
                "testTimeAugmentation", text="")),
        (label("installedModelLabel", "Installed models:", "Models installed on this computer (medtorch models list)"),
         widget("QComboBox", "installedModelComboBox",
                "Choose an installed model to segment with: its name becomes the model above. Each model shows its "
                "input channels, in order")),
        (None, hbox("modelButtonsLayout", [
            widget("QPushButton", "importModelButton",
                   "Install a model pack (.zip) from a file: every hash is checked and its license is shown for your "
                   "agreement (no network needed)", text="Import model pack..."),
            widget("QPushButton", "removeModelButton", "Remove the chosen installed model from this computer",
                   text="Remove model")])),
    ], collapsed=True)
    nodules = section("nodulesCollapsibleButton", "Lung nodules", "Nodule detection in a chest CT", [
        (label("minNoduleLabel", "Smallest diameter:", "Smallest nodule found"),
         widget("QDoubleSpinBox", "minNoduleSpinBox", "Smallest nodule diameter looked for", "minNoduleMm",
                minimum=1.0, maximum=100.0, singleStep=1.0, decimals=1, value=4.0, suffix=" mm")),
        (label("maxNoduleLabel", "Largest diameter:", "Largest nodule found"),
         widget("QDoubleSpinBox", "maxNoduleSpinBox", "Largest nodule diameter looked for", "maxNoduleMm",
                minimum=1.0, maximum=100.0, singleStep=1.0, decimals=1, value=30.0, suffix=" mm")),
    ], collapsed=True)
    outputs = section("outputsCollapsibleButton", "Outputs", "Result of the segmentation", [
        (label("outputSegmentationLabel", "Output segmentation:", "Segmentation that receives the segments"),
         optional_combo("outputSegmentationSelector", "outputSegmentation",
                        "Segmentation that receives the seeded result (its segments are replaced); 'Create new' "
                        "makes a new one", ["vtkMRMLSegmentationNode"], none_display="Create new", add=True)),
        (label("volumetryTableLabel", "Volumetry table:", "Table of segment volumes"),
         optional_combo("volumetryTableSelector", "volumetryTable",
                        "Table that receives mL per segment and for the whole tumor; 'Create new' makes a new one",
                        ["vtkMRMLTableNode"], none_display="Create new", add=True)),
        (label("referenceLabel", "Reference segmentation:", "Optional reference to score against"),
         optional_combo("referenceSelector", "referenceSegmentation",
                        "Optional reference: each segment is scored against the reference segment of the same name, "
                        "and the whole tumor against all reference segments (Dice, HD95, surface Dice...)",
                        ["vtkMRMLSegmentationNode"])),
        (label("metricsTableLabel", "Metrics table:", "Table of scores"),
         optional_combo("metricsTableSelector", "metricsTable",
                        "Table that receives the scores against the reference; 'Create new' makes a new one",
                        ["vtkMRMLTableNode"], none_display="Create new", add=True)),
        (label("volumeLabel", "Lesion volume:", "Volume of the segment"),
         widget("QLabel", "volumeValueLabel", "Volume of the tumor (all its segments) in millilitres (mL)", text="- mL")),
    ])
    advanced = section("advancedCollapsibleButton", "Advanced", "Compute settings", [
        (label("deviceLabel", "Device:", "Where the computation runs"),
         widget("QComboBox", "deviceComboBox",
                "auto: $MEDTORCH_DEVICE if set, else CUDA GPU, then Apple MPS, then CPU; or force cpu, cuda or mps",
                "device", items=["auto", "cpu", "cuda", "mps"])),
    ], collapsed=True)
    export = section("exportCollapsibleButton", "Export to DICOM",
                     "Write the segmentation as DICOM (SEG or RTSTRUCT) referencing the input volume's DICOM series", [
        (label("exportSegmentationLabel", "Segmentation:", "The segmentation to export"),
         widget("qMRMLNodeComboBox", "exportSegmentationSelector",
                "The segmentation to export (None: the output segmentation). It is written on the grid of the input "
                "volume, the volume it was made on", "dicomSegmentation", nodeTypes=["vtkMRMLSegmentationNode"],
                showChildNodeTypes=False, addEnabled=False, removeEnabled=False, noneEnabled=True,
                noneDisplay="Output segmentation")),
        (label("exportAsLabel", "Export as:", "The DICOM object the segmentation is written as"),
         widget("QComboBox", "exportAsComboBox",
                "DICOM SEG: the segments as a DICOM Segmentation (PACS, OHIF, research viewers). RTSTRUCT: the segments "
                "as outlines of an RT Structure Set, for radiotherapy planning systems", "dicomExportAs",
                items=["DICOM SEG", "RTSTRUCT"])),
        dicom_source_folder_row("the export must reference that series"),
        *dicom_export_rows("file", "Write the segmentation as a DICOM SEG or RTSTRUCT file that references the input "
                           "volume's DICOM series; the file is read back and checked (each segment within half a voxel) "
                           "before it is kept"),
    ], collapsed=True)
    return document("SegmentTumor", [inputs, params, seeded, model, nodules, outputs, advanced,
                                     apply_button("Segment with the chosen method into a segmentation, with a volumetry table"),
                                     status_label(), export])
