"""The SegmentTumor module's panel, written to SegmentTumor/Resources/UI/SegmentTumor.ui by tools/make_ui.py."""

from __future__ import annotations

from ui.common import SCALAR, apply_button, document, label, node_combo, section, status_label, widget


def build() -> str:
    inputs = section("inputsCollapsibleButton", "Inputs", "Volume and region to segment", [
        (label("inputLabel", "Input volume:", "The volume to segment"),
         node_combo("inputSelector", "inputVolume", "Volume to segment; it is never modified", SCALAR)),
        (label("roiLabel", "Region of interest:", "Optional box that limits the segmentation"),
         node_combo("roiSelector", "roi", "Optional ROI box around the lesion: only voxels inside it are considered", ["vtkMRMLMarkupsROINode"], optional=True)),
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
    outputs = section("outputsCollapsibleButton", "Outputs", "Result of the segmentation", [
        (label("volumeLabel", "Lesion volume:", "Volume of the segment"),
         widget("QLabel", "volumeValueLabel", "Volume of the segment in millilitres (mL)", text="- mL")),
    ])
    return document("SegmentTumor", [inputs, params, outputs,
                                     apply_button("Threshold inside the ROI, keep the largest component, create a segmentation"),
                                     status_label()])
