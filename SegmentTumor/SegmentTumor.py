import logging
import os
import sys
import time
from typing import Annotated, Optional

import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import *
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import (
    parameterNodeWrapper,
    WithinRange,
)

from slicer import vtkMRMLScalarVolumeNode, vtkMRMLMarkupsROINode

try:
    import medtorch  # installed extension: the core sits beside the module files
except ImportError:  # developer checkout: the core sits beside the module folders
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from medtorch.integration.slicer_widgets import ModuleWidgetMixin

TUMOR_COLOR = (0.85, 0.2, 0.2)


#
# SegmentTumor
#


class SegmentTumor(ScriptedLoadableModule):
    """Segment a tumour and report its volume (MedTorch)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Segment Tumor")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "MedTorch")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedTorch developers"]
        self.parent.helpText = _("""
Threshold a volume inside an optional ROI box, keep the largest connected region, and put
it into a new segmentation with a named segment. The segment's volume (mL) is reported.
See the <a href="https://github.com/medtorch/SlicerMedTorch#segmenttumor">documentation</a>.
""")
        self.parent.acknowledgementText = _("""
MedTorch is built on 3D Slicer, SimpleITK, PyTorch and MONAI.
""")


#
# SegmentTumorParameterNode
#


@parameterNodeWrapper
class SegmentTumorParameterNode:
    """
    inputVolume - the volume to segment (never modified).
    roi - optional ROI box: only voxels inside it are considered.
    lowerThreshold, upperThreshold - intensity range kept, in the volume's units.
    largestComponent - keep only the largest 26-connected region.
    segmentName - name of the segment created.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    roi: vtkMRMLMarkupsROINode
    lowerThreshold: Annotated[float, WithinRange(-100000.0, 100000.0)] = 0.0
    upperThreshold: Annotated[float, WithinRange(-100000.0, 100000.0)] = 100000.0
    largestComponent: bool = True
    segmentName: str = "Tumor"


#
# SegmentTumorWidget
#


class SegmentTumorWidget(ModuleWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    uiFileName = "UI/SegmentTumor.ui"
    applyToolTip = _("Threshold inside the ROI, keep the largest component, create a segmentation")
    missingInputsToolTip = _("Select an input volume")

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        self.setupModuleWidget(SegmentTumorLogic())

    def selectDefaultInputs(self, p) -> None:
        if not p.inputVolume:
            p.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def canApply(self, p) -> bool:
        return bool(p.inputVolume)

    def onApplyButton(self) -> None:
        """Run in a background process with a progress dialog and a Cancel button."""
        with slicer.util.tryWithErrorDisplay(_("Failed to segment the volume."), waitCursor=True):
            p = self._parameterNode
            job = self.logic.thresholdJob(p.inputVolume, p.lowerThreshold, p.upperThreshold, p.roi,
                                          p.largestComponent, p.segmentName)
            self.runJob(job, _("Segment Tumor"), self.onDone)

    def onDone(self, segmentationNode) -> None:
        volumeMl = float(segmentationNode.GetAttribute("MedTorch.volumeMl"))
        self.ui.volumeValueLabel.text = f"{volumeMl:.2f} mL"
        self.ui.statusLabel.text = _("Segmented into {name}").format(name=segmentationNode.GetName())


#
# SegmentTumorLogic
#


class SegmentTumorLogic(ScriptedLoadableModuleLogic):
    """Turns MRML nodes into calls of the ``medtorch`` core and its results back into nodes."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return SegmentTumorParameterNode(super().getParameterNode())

    def requirementsPath(self) -> str:
        return os.path.join(os.path.dirname(__file__), "Resources", "requirements.txt")

    def ensureDependencies(self) -> None:
        from medtorch.integration.dependencies import ensure_dependencies

        ensure_dependencies(self.requirementsPath(), "Segment Tumor", ask=slicer.util.confirmOkCancelDisplay,
                            with_torch=False)

    def thresholdJob(self, inputVolume, lowerThreshold: float, upperThreshold: float = float("inf"), roi=None,
                     largestComponent: bool = True, segmentName: str = "Tumor"):
        """Prepare threshold + largest component as a job (``.run_blocking()`` or ``.start()``).

        The result is a new segmentation node (a segment named ``segmentName``) whose
        ``MedTorch.volumeMl`` attribute holds the segment's volume in mL.
        """
        from medtorch.errors import MedTorchInputError
        from medtorch.integration import slicer_bridge as bridge
        from medtorch.integration.slicer_jobs import LogicJob

        if not inputVolume:
            raise MedTorchInputError("no input volume is selected", "select the volume to segment")
        if inputVolume.GetParentTransformNode() is not None and roi is not None:
            raise MedTorchInputError("the input volume is under a transform, so the ROI box would not line up",
                                     "harden the transform on the volume first (Transforms module)")
        self.ensureDependencies()
        inputs = {"input": bridge.volume_from_node(inputVolume)}
        params = {"lower": float(lowerThreshold), "upper": float(upperThreshold),
                  "keep_largest": bool(largestComponent),
                  "roi": bridge.box_from_roi_node(roi) if roi is not None else None}
        name = slicer.mrmlScene.GenerateUniqueName(f"{inputVolume.GetName()} segmentation")

        def apply(result):
            seg = bridge.segmentation_from_label(result.volumes["label"], {1: segmentName}, name,
                                                 colors={1: TUMOR_COLOR}, reference_node=inputVolume)
            seg.SetAndObserveTransformNodeID(inputVolume.GetTransformNodeID())
            seg.SetAttribute("MedTorch.operation", "threshold")
            seg.SetAttribute("MedTorch.volumeMl", f"{result.values['volume_ml']:.6f}")
            seg.SetAttribute("MedTorch.voxelCount", str(result.values["voxel_count"]))
            seg.CreateClosedSurfaceRepresentation()
            return seg

        return LogicJob("threshold", inputs, params, apply, slicer.mrmlScene)

    def threshold(self, inputVolume, lowerThreshold: float, upperThreshold: float = float("inf"), roi=None,
                  largestComponent: bool = True, segmentName: str = "Tumor"):
        """Blocking segmentation (scripts and tests). Returns the segmentation node."""
        startTime = time.time()
        node = self.thresholdJob(inputVolume, lowerThreshold, upperThreshold, roi, largestComponent,
                                 segmentName).run_blocking()
        logging.info(f"Segmentation completed in {time.time() - startTime:.2f} seconds")
        return node


#
# SegmentTumorTest
#


class SegmentTumorTest(ScriptedLoadableModuleTest):
    """Self-test: runs on synthetic volumes made here (no download), in Slicer and headless."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ThresholdInROI()
        self.setUp()
        self.test_EmptyRangeIsAClearError()

    def test_ThresholdInROI(self):
        import numpy as np
        from medtorch.integration import slicer_bridge as bridge
        from medtorch.phantoms import blob_phantom, lesion_mask, oblique_geometry

        self.delayDisplay("Threshold + largest component inside an ROI gives the lesion")
        geom = oblique_geometry(spacing=(0.8, 0.9, 1.2), size=(48, 44, 36))
        volumeNode = bridge.node_from_volume(blob_phantom(geom, noise=8.0, seed=4), "phantom")
        truth = lesion_mask(geom)
        centerLps = geom.center() + np.array([5.0, -3.0, 4.0])
        roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "ROI")
        roi.SetCenter(*(centerLps * np.array([-1.0, -1.0, 1.0])))
        roi.SetSize(16.0, 16.0, 16.0)

        logic = SegmentTumorLogic()
        seg = logic.threshold(volumeNode, 150.0, 1000.0, roi=roi, segmentName="Enhancing tumor")
        segmentation = seg.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), 1)
        segmentId = segmentation.GetNthSegmentID(0)
        self.assertEqual(segmentation.GetSegment(segmentId).GetName(), "Enhancing tumor")
        label = bridge.label_from_segmentation(seg, volumeNode).array > 0
        dice = 2.0 * np.logical_and(label, truth).sum() / (label.sum() + truth.sum())
        self.assertGreater(dice, 0.85)
        volumeMl = float(seg.GetAttribute("MedTorch.volumeMl"))
        self.assertAlmostEqual(volumeMl, label.sum() * np.prod(geom.spacing) / 1000.0, places=4)
        self.delayDisplay("Test passed")

    def test_EmptyRangeIsAClearError(self):
        from medtorch.errors import MedTorchInputError
        from medtorch.integration import slicer_bridge as bridge
        from medtorch.integration.slicer_jobs import scene_node_ids
        from medtorch.phantoms import blob_phantom, oblique_geometry

        self.delayDisplay("A threshold range with no voxel is refused, and the scene is untouched")
        volumeNode = bridge.node_from_volume(blob_phantom(oblique_geometry()), "phantom")
        before = scene_node_ids(slicer.mrmlScene)
        with self.assertRaises(MedTorchInputError) as ctx:
            SegmentTumorLogic().threshold(volumeNode, 5000.0, 6000.0)
        self.assertIn("What to do", str(ctx.exception))
        self.assertEqual(scene_node_ids(slicer.mrmlScene), before)
        self.delayDisplay("Test passed")
