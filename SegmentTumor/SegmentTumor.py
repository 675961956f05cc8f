import json
import os
import sys
from typing import Annotated, Optional

import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import *
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import (
    parameterNodeWrapper,
    Choice,
    WithinRange,
)

from slicer import (
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLMarkupsROINode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)

try:
    import medtorch  # installed extension: the core sits beside the module files
except ImportError:  # developer checkout: the core sits beside the module folders
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from medtorch import coords
from medtorch.slicer.widgets import ModuleWidgetMixin

TUMOR_COLOR = (0.85, 0.2, 0.2)
METHODS = ["threshold", "seeded", "model", "nodules"]
SEEDED_METHODS = ["geodesic", "competition"]
DEVICES = ["auto", "cpu", "cuda", "mps"]
#: What a segmentation is exported as (Export to DICOM): the shown choice -> the export_dicom operation's ``export_as``.
DICOM_EXPORTS = {"DICOM SEG": "seg", "RTSTRUCT": "rtstruct"}


#
# SegmentTumor
#


class SegmentTumor(ScriptedLoadableModule):
    """Segment a tumor and report its volume (MedTorch)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Segment Tumor")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "MedTorch")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedTorch developers"]
        self.parent.helpText = _("""
Segment a tumor into a new segmentation with named, coloured segments, closed surfaces and a
volumetry table (mL per segment and for the whole tumor):
<ul>
<li><b>threshold</b>: an intensity range inside an optional ROI box, largest connected region;</li>
<li><b>seeded</b>: paint seeds (Segment Editor segments, one per class, the background last or
named "Background"; or markups points labelled with the class name) on one or more co-registered
volumes (e.g. FLAIR and T1c); every voxel around the seeds gets a class (geodesic competition of
the seeds' class models, no training). <i>Update</i> re-runs fast after seed edits. The same method is in
the Segment Editor as the effect <b>Grow from seeds (MedTorch)</b>, beside Slicer's own;</li>
<li><b>model</b>: a trained model (an installed model pack, a MONAI bundle folder, a TorchScript file or an
nnU-Net folder), offline; <i>Import model pack</i> installs a pack file after checking its hashes and asking you
to agree to its license;</li>
<li><b>nodules</b>: lung nodules in a chest CT, as markups with diameters.</li>
</ul>
With a reference segmentation, Dice, HD95, surface Dice, sensitivity, specificity and precision go
into a metrics table.
See the <a href="https://github.com/medtorch/SlicerMedTorch#segmenttumor">documentation</a>.
""")
        self.parent.acknowledgementText = _("""
MedTorch is built on 3D Slicer, SimpleITK, PyTorch and MONAI.
""")
        # The Segment Editor effect, once the application has started (as Slicer's effect extensions do).
        app = getattr(slicer, "app", None)
        if app is not None and hasattr(app, "connect"):
            app.connect("startupCompleted()", registerEditorEffect)


def registerEditorEffect() -> bool:
    """Add "Grow from seeds (MedTorch)" to the Segment Editor (False where the Segment Editor's
    effects are not available, e.g. without the Slicer application)."""
    try:
        import qSlicerSegmentationsEditorEffectsPythonQt as effects
    except ImportError:
        return False
    instance = effects.qSlicerSegmentEditorScriptedEffect(None)
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "SegmentTumorLib", "SegmentEditorEffect.py")
    instance.setPythonSource(source.replace("\\", "/"))
    instance.self().register()
    return True


#
# SegmentTumorParameterNode
#


@parameterNodeWrapper
class SegmentTumorParameterNode:
    """
    inputVolume - the volume to segment (never modified); the first channel.
    secondVolume, thirdVolume, fourthVolume - further co-registered channels (seeded, model).
    roi - optional ROI box: only voxels inside it are considered (threshold, seeded).
    method - "threshold", "seeded", "model" or "nodules".
    lowerThreshold, upperThreshold - intensity range kept, in the volume's units.
    largestComponent - keep only the largest 26-connected region.
    segmentName - name of the segment created (threshold).
    seedSegmentation - seeds as segments: one per class, the background last (or named Background).
    seedMarkups - seeds as markups points labelled with their class name (instead of segments).
    seedRadiusMm - radius of the ball a markups point paints, mm.
    seededMethod - seeded segmentation method: "geodesic" (default) or "competition".
    smoothness - boundary smoothness of the region competition.
    marginMm - margin around the seeds that is segmented, mm.
    minSizeMm3 - pieces smaller than this are removed, mm^3 (0: keep all).
    fillHoles - fill cavities enclosed in the tumor.
    autoUpdate - re-run the seeded segmentation when the seeds change.
    modelPath - trained model: an installed model's name, a MONAI bundle folder, a TorchScript file or an
        nnU-Net folder.
    testTimeAugmentation - flip test-time augmentation (model).
    minNoduleMm, maxNoduleMm - nodule diameter range, mm.
    outputSegmentation - where the segments go; a new segmentation when none is chosen.
    volumetryTable - table that receives mL per segment; a new table when none is chosen.
    referenceSegmentation - reference to score against (Dice, HD95, ...); none: no scoring.
    metricsTable - table that receives the scores; a new table when none is chosen.
    device - where the computation runs.
    dicomSegmentation - the segmentation Export to DICOM writes (none: the output segmentation).
    dicomExportAs - "DICOM SEG" or "RTSTRUCT".
    """

    inputVolume: vtkMRMLScalarVolumeNode
    secondVolume: vtkMRMLScalarVolumeNode
    thirdVolume: vtkMRMLScalarVolumeNode
    fourthVolume: vtkMRMLScalarVolumeNode
    roi: vtkMRMLMarkupsROINode
    method: Annotated[str, Choice(METHODS)] = "threshold"
    lowerThreshold: Annotated[float, WithinRange(-100000.0, 100000.0)] = 0.0
    upperThreshold: Annotated[float, WithinRange(-100000.0, 100000.0)] = 100000.0
    largestComponent: bool = True
    segmentName: str = "Tumor"
    seedSegmentation: vtkMRMLSegmentationNode
    seedMarkups: vtkMRMLMarkupsFiducialNode
    seedRadiusMm: Annotated[float, WithinRange(0.5, 20.0)] = 2.0
    seededMethod: Annotated[str, Choice(SEEDED_METHODS)] = "geodesic"
    smoothness: Annotated[float, WithinRange(0.0, 5.0)] = 0.3
    marginMm: Annotated[float, WithinRange(0.0, 100.0)] = 5.0
    minSizeMm3: Annotated[float, WithinRange(0.0, 1000000.0)] = 0.0
    fillHoles: bool = False
    autoUpdate: bool = False
    modelPath: str = ""
    testTimeAugmentation: bool = False
    minNoduleMm: Annotated[float, WithinRange(1.0, 100.0)] = 4.0
    maxNoduleMm: Annotated[float, WithinRange(1.0, 100.0)] = 30.0
    outputSegmentation: vtkMRMLSegmentationNode
    volumetryTable: vtkMRMLTableNode
    referenceSegmentation: vtkMRMLSegmentationNode
    metricsTable: vtkMRMLTableNode
    device: Annotated[str, Choice(DEVICES)] = "auto"
    dicomSegmentation: vtkMRMLSegmentationNode
    dicomExportAs: Annotated[str, Choice(list(DICOM_EXPORTS))] = "DICOM SEG"


#
# SegmentTumorWidget
#


class SegmentTumorWidget(ModuleWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    uiFileName = "UI/SegmentTumor.ui"
    applyToolTip = _("Segment with the chosen method into a segmentation, with a volumetry table")
    missingInputsToolTip = _("Select an input volume (and the seeds, or a model, for those methods)")

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self._observedSeeds = None
        self._updateTimer = None
        self._installedModelNames = []

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        self.setupModuleWidget(SegmentTumorLogic())
        self.ui.updateButton.connect("clicked(bool)", self.onUpdateButton)
        self.ui.importModelButton.connect("clicked(bool)", self.onImportModelButton)
        self.ui.removeModelButton.connect("clicked(bool)", self.onRemoveModelButton)
        self.ui.installedModelComboBox.connect("currentIndexChanged(int)", self.onInstalledModelChosen)
        self.ui.exportDicomButton.connect("clicked(bool)", self.onExportDicomButton)
        self.setupDicomExport(self.ui.exportFolderButton)
        self.refreshInstalledModels()

    def cleanup(self) -> None:
        self._observeSeeds(None)
        ModuleWidgetMixin.cleanup(self)

    def selectDefaultInputs(self, p) -> None:
        if not p.inputVolume:
            p.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def canApply(self, p) -> bool:
        self._observeSeeds(p.seedSegmentation if (p.method == "seeded" and p.autoUpdate) else None)
        seededReady = bool(p.inputVolume) and bool(p.seedSegmentation or p.seedMarkups)
        self.ui.updateButton.enabled = p.method == "seeded" and seededReady and not self.busy
        if p.method == "seeded":
            return seededReady
        if p.method == "model":
            return bool(p.inputVolume) and bool(p.modelPath)
        return bool(p.inputVolume)

    def _inputVolumes(self, p):
        return [v for v in (p.inputVolume, p.secondVolume, p.thirdVolume, p.fourthVolume) if v is not None]

    def onApplyButton(self) -> None:
        """Run in a background process with a progress dialog and a Cancel button."""
        with slicer.util.tryWithErrorDisplay(_("Failed to segment the volume."), waitCursor=True):
            p = self._parameterNode
            if p.method == "seeded":
                from medtorch.slicer.jobs import confirm_replacing_inputs

                clashes = self.logic.seededInputsReplaced(p.outputSegmentation, p.seedSegmentation,
                                                          p.referenceSegmentation)
                if not confirm_replacing_inputs(clashes, slicer.util.confirmOkCancelDisplay):
                    self.ui.statusLabel.text = _("Nothing done: the output segmentation is an input segmentation.")
                    return
                job = self.logic.seededJob(self._inputVolumes(p), p.seedSegmentation, p.seedMarkups,
                                           **self._seededOptions(p), overwriteInput=bool(clashes))
                self.runJob(job, _("Segment Tumor"), self.onSeededDone)
            elif p.method == "model":
                job = self.logic.modelJob(self._inputVolumes(p), p.modelPath, tta=p.testTimeAugmentation,
                                          device=p.device)
                self.runJob(job, _("Segment Tumor"), self.onModelDone)
            elif p.method == "nodules":
                job = self.logic.nodulesJob(p.inputVolume, p.minNoduleMm, p.maxNoduleMm, device=p.device)
                self.runJob(job, _("Segment Tumor"), self.onNodulesDone)
            else:
                job = self.logic.thresholdJob(p.inputVolume, p.lowerThreshold, p.upperThreshold, p.roi,
                                              p.largestComponent, p.segmentName)
                self.runJob(job, _("Segment Tumor"), self.onDone)

    def _seededOptions(self, p) -> dict:
        return dict(outputSegmentation=p.outputSegmentation, volumetryTable=p.volumetryTable,
                    referenceSegmentation=p.referenceSegmentation, metricsTable=p.metricsTable, roi=p.roi,
                    method=p.seededMethod, smoothness=p.smoothness, marginMm=p.marginMm, minSizeMm3=p.minSizeMm3,
                    fillHoles=p.fillHoles, seedRadiusMm=p.seedRadiusMm, device=p.device)

    def onUpdateButton(self) -> None:
        """Fast in-process re-run after seed edits (reuses the previous run's features)."""
        with slicer.util.tryWithErrorDisplay(_("Failed to update the segmentation."), waitCursor=True):
            p = self._parameterNode
            seg = self.logic.updateSeeded(self._inputVolumes(p), p.seedSegmentation, p.seedMarkups,
                                          **self._seededOptions(p))
            self.onSeededDone(seg)

    def onExportDicomButton(self) -> None:
        """Export to DICOM: the chosen segmentation (else the output segmentation) as DICOM SEG or
        RTSTRUCT, referencing the DICOM series of the input volume; the result or why not in the label."""
        p = self._parameterNode
        self.runDicomExport(lambda: self.logic.exportToDicom(
            p.dicomSegmentation or p.outputSegmentation, p.inputVolume, self.ui.exportFolderButton.directory,
            DICOM_EXPORTS[p.dicomExportAs], referenceFolder=self.ui.exportSourceFolderLineEdit.currentPath),
            self.ui.exportStatusLabel)

    # -- installed models (SegmentTumorLib.Models) --------------------------------------------------
    def refreshInstalledModels(self) -> None:
        """Fill the installed-models list (names; the model chosen above stays as it is)."""
        combo = self.ui.installedModelComboBox
        combo.clear()
        self._installedModelNames = []
        try:
            models = self.logic.installedModels()
        except Exception as exc:  # a damaged store must not stop the module from opening
            self.ui.statusLabel.text = _("The installed models cannot be listed: {error}").format(error=exc)
            return
        from SegmentTumorLib.Models import model_choice_text

        combo.addItem(_("(choose an installed model)"))
        for m in models:
            combo.addItem(model_choice_text(m))
            self._installedModelNames.append(m["name"])
        self.ui.removeModelButton.enabled = bool(models)

    def onInstalledModelChosen(self, index=None) -> None:
        """The chosen installed model becomes the model to segment with (by its name)."""
        i = int(self.ui.installedModelComboBox.currentIndex if index is None else index) - 1
        if 0 <= i < len(self._installedModelNames) and self._parameterNode is not None:
            self._parameterNode.modelPath = self._installedModelNames[i]
            self._parameterNode.method = "model"

    def onImportModelButton(self) -> None:
        import qt

        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Import a model pack"), "",
                                              _("Model packs (*.zip)"))
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to import the model pack."), waitCursor=True):
            model = self.logic.importModelPack(path)
            self.refreshInstalledModels()
            if model is None:
                self.ui.statusLabel.text = _("Nothing installed: the license was not agreed to.")
                return
            self._parameterNode.modelPath = model["name"]
            self.ui.statusLabel.text = _("Installed the model {name}").format(name=model["name"])

    def onRemoveModelButton(self) -> None:
        i = int(self.ui.installedModelComboBox.currentIndex) - 1
        if not 0 <= i < len(self._installedModelNames):
            self.ui.statusLabel.text = _("Choose an installed model to remove.")
            return
        name = self._installedModelNames[i]
        if not slicer.util.confirmOkCancelDisplay(_("Remove the model {name} from this computer?").format(name=name)):
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to remove the model."), waitCursor=True):
            self.logic.removeModel(name)
            if self._parameterNode is not None and self._parameterNode.modelPath == name:
                self._parameterNode.modelPath = ""
            self.refreshInstalledModels()
            self.ui.statusLabel.text = _("Removed the model {name}").format(name=name)

    # -- automatic update after seed edits --------------------------------------------------------
    def _observeSeeds(self, node) -> None:
        if node is self._observedSeeds:
            return
        if self._observedSeeds is not None:
            self.removeObserver(self._observedSeeds, vtk.vtkCommand.ModifiedEvent, self._onSeedsModified)
        self._observedSeeds = node
        if node is not None:
            self.addObserver(node, vtk.vtkCommand.ModifiedEvent, self._onSeedsModified)

    def _onSeedsModified(self, caller=None, event=None) -> None:
        import qt

        if self.busy:
            return
        p = self._parameterNode
        if p is not None and p.outputSegmentation is not None and p.outputSegmentation is p.seedSegmentation:
            return  # the seeds were replaced by a result (the user agreed): no automatic re-run from them
        if self._updateTimer is None:
            self._updateTimer = qt.QTimer()
            self._updateTimer.setSingleShot(True)
            self._updateTimer.setInterval(500)
            self._updateTimer.connect("timeout()", self.onUpdateButton)
        self._updateTimer.start()

    # -- results -------------------------------------------------------------------------------------
    def onDone(self, segmentationNode) -> None:
        volumeMl = float(segmentationNode.GetAttribute("MedTorch.volumeMl"))
        self.ui.volumeValueLabel.text = f"{volumeMl:.2f} mL"
        self.ui.statusLabel.text = _("Segmented into {name}").format(name=segmentationNode.GetName())

    def onSeededDone(self, segmentationNode) -> None:
        p = self._parameterNode
        if p is not None and p.outputSegmentation is not segmentationNode:
            p.outputSegmentation = segmentationNode
        table = slicer.mrmlScene.GetNodeByID(segmentationNode.GetAttribute("MedTorch.volumetryTableID") or "")
        if p is not None and table is not None and p.volumetryTable is not table:
            p.volumetryTable = table
        metrics = slicer.mrmlScene.GetNodeByID(segmentationNode.GetAttribute("MedTorch.metricsTableID") or "")
        if p is not None and metrics is not None and p.metricsTable is not metrics:
            p.metricsTable = metrics
        volumeMl = float(segmentationNode.GetAttribute("MedTorch.volumeMl") or 0.0)
        self.ui.volumeValueLabel.text = f"{volumeMl:.2f} mL"
        seconds = segmentationNode.GetAttribute("MedTorch.seconds") or "0"
        text = _("Segmented into {name} ({seconds} s)").format(name=segmentationNode.GetName(), seconds=seconds)
        verdict = json.loads(segmentationNode.GetAttribute("MedTorch.verdict") or "null")
        style = ""
        if verdict and verdict.get("status") in ("warn", "fail"):
            # a result that may be wrong says so: the checks' sentences, worst first
            reasons = [c for c in verdict.get("checks", []) if c.get("status") in ("warn", "fail")]
            reasons.sort(key=lambda c: c["status"] != "fail")
            label = _("Check this result") if verdict["status"] == "warn" else _("This result is probably wrong")
            text += "\n" + label + ": " + " ".join(c["message"] + "." for c in reasons)
            style = "color: #b36b00;" if verdict["status"] == "warn" else "color: #c00000; font-weight: bold;"
        self.ui.statusLabel.text = text
        self.ui.statusLabel.setStyleSheet(style)

    def onModelDone(self, segmentationNode) -> None:
        volumes = json.loads(segmentationNode.GetAttribute("MedTorch.volumesMl") or "{}")
        self.ui.volumeValueLabel.text = f"{sum(float(v) for v in volumes.values()):.2f} mL"
        self.ui.statusLabel.text = _("Segmented into {name}").format(name=segmentationNode.GetName())

    def onNodulesDone(self, output) -> None:
        markups = output[0] if isinstance(output, tuple) else output
        self.ui.volumeValueLabel.text = "- mL"
        self.ui.statusLabel.text = _("{n} nodule(s) in {name}").format(n=markups.GetNumberOfControlPoints(),
                                                                       name=markups.GetName())


#
# SegmentTumorLogic
#


class SegmentTumorLogic(ScriptedLoadableModuleLogic):
    """Turns MRML nodes into calls of the ``medtorch`` core and its results back into nodes."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._sessions = {}

    def getParameterNode(self):
        return SegmentTumorParameterNode(super().getParameterNode())

    def requirementsPath(self) -> str:
        return os.path.join(os.path.dirname(__file__), "Resources", "requirements.txt")

    def ensureDependencies(self, withTorch: bool = False) -> None:
        from medtorch.slicer.dependencies import ensure_dependencies

        ensure_dependencies(self.requirementsPath(), "Segment Tumor", ask=slicer.util.confirmOkCancelDisplay,
                            with_torch=withTorch)

    # -- threshold ----------------------------------------------------------------------------------
    def thresholdJob(self, inputVolume, lowerThreshold: float, upperThreshold: float = float("inf"), roi=None,
                     largestComponent: bool = True, segmentName: str = "Tumor"):
        """Prepare threshold + largest component as a job (``.run_blocking()`` or ``.start()``).

        The result is a new segmentation node (a segment named ``segmentName``) whose
        ``MedTorch.volumeMl`` attribute holds the segment's volume in mL.
        """
        from medtorch.errors import MedTorchInputError
        from medtorch.slicer import mrml
        from medtorch.slicer.jobs import LogicJob
        from medtorch.ops import Roi
        from medtorch.ops.segmentation import ThresholdRequest

        if not inputVolume:
            raise MedTorchInputError("no input volume is selected", "select the volume to segment")
        if inputVolume.GetParentTransformNode() is not None and roi is not None:
            raise MedTorchInputError("the input volume is under a transform, so the ROI box would not line up",
                                     "harden the transform on the volume first (Transforms module)")
        self.ensureDependencies()
        inputs = {"input": mrml.volume_from_node(inputVolume)}
        request = ThresholdRequest(lower=float(lowerThreshold), upper=float(upperThreshold),
                                   keep_largest=bool(largestComponent),
                                   roi=Roi(**mrml.box_from_roi_node(roi)) if roi is not None else None)
        name = slicer.mrmlScene.GenerateUniqueName(f"{inputVolume.GetName()} segmentation")

        def apply(result):
            from medtorch.segment.terminology import class_terms, slicer_terminology

            seg = mrml.segmentation_from_label(result.volumes["label"], {1: segmentName}, name,
                                                 colors={1: TUMOR_COLOR}, reference_node=inputVolume)
            seg.SetAndObserveTransformNodeID(inputVolume.GetTransformNodeID())
            term = class_terms([1], {1: segmentName})[1]
            seg.GetSegmentation().GetNthSegment(0).SetTag("TerminologyEntry", slicer_terminology(term))
            seg.SetAttribute("MedTorch.operation", "threshold")
            seg.SetAttribute("MedTorch.volumeMl", f"{result.values['volume_ml']:.6f}")
            seg.SetAttribute("MedTorch.voxelCount", str(result.values["voxel_count"]))
            seg.CreateClosedSurfaceRepresentation()
            return seg

        return LogicJob(request, inputs, apply, slicer.mrmlScene)

    def threshold(self, inputVolume, lowerThreshold: float, upperThreshold: float = float("inf"), roi=None,
                  largestComponent: bool = True, segmentName: str = "Tumor"):
        """Blocking segmentation (scripts and tests). Returns the segmentation node."""
        return self.thresholdJob(inputVolume, lowerThreshold, upperThreshold, roi, largestComponent,
                                 segmentName).run_blocking()

    # -- seeds ------------------------------------------------------------------------------------------
    @staticmethod
    def _isBackgroundName(name: str) -> bool:
        from medtorch.segment.terminology import find_term

        t = find_term(name or "")
        return t is not None and t.key in ("background", "normal")

    def seedsFromSegmentation(self, seedSegmentation, referenceVolume):
        """Seeds from a segmentation node: one class per segment, the background last.

        The background is the segment named like "Background" (or "Normal tissue"), else the
        last segment. Returns ``(seeds volume on the reference grid, names, colours)``; class
        values are 1, 2, ... in segment order, the background the largest.
        """
        from medtorch.errors import MedTorchInputError
        from medtorch.slicer import mrml

        segmentation = seedSegmentation.GetSegmentation()
        n = segmentation.GetNumberOfSegments()
        if n < 2:
            raise MedTorchInputError(
                f"the seed segmentation {seedSegmentation.GetName()} has {n} segment(s); the seeds are of one class only",
                "add a segment per tumor class and a Background segment, and paint seeds in each")
        ids = [segmentation.GetNthSegmentID(i) for i in range(n)]
        names = [segmentation.GetSegment(i).GetName() for i in ids]
        bg = next((i for i, name in zip(ids, names) if self._isBackgroundName(name)), ids[-1])
        order = [i for i in ids if i != bg] + [bg]
        seeds = mrml.label_from_segmentation(seedSegmentation, referenceVolume, order)
        seeds.kind = "label"
        if not (seeds.array == len(order)).any():
            raise MedTorchInputError(
                f"the background segment {segmentation.GetSegment(bg).GetName()!r} has no seeds",
                "paint background seeds around the tumor (or name another segment Background)")
        namesByValue = {v: segmentation.GetSegment(sid).GetName() for v, sid in enumerate(order, start=1)}
        colors = {v: tuple(segmentation.GetSegment(sid).GetColor()) for v, sid in enumerate(order, start=1)}
        return seeds, namesByValue, colors

    def seedsFromMarkups(self, seedMarkups, referenceVolume, radiusMm: float = 2.0):
        """Seeds from markups points: each point paints a ball of ``radiusMm`` with the class its
        label names (points of one label are one class); the background is the label named like
        "Background", else the last label to appear."""
        import numpy as np

        from medtorch.errors import MedTorchInputError
        from medtorch.slicer import mrml
        from medtorch.volume import Volume

        geom = mrml.geometry_from_node(referenceVolume)
        labels, points = [], []
        for i in range(seedMarkups.GetNumberOfControlPoints()):
            p = [0.0, 0.0, 0.0]
            seedMarkups.GetNthControlPointPositionWorld(i, p)
            labels.append(seedMarkups.GetNthControlPointLabel(i).strip() or "Class")
            points.append(tuple(coords.lps_from_ras(p)))
        classes = list(dict.fromkeys(labels))
        if len(classes) < 2:
            raise MedTorchInputError(
                f"the seed points of {seedMarkups.GetName()} are of {len(classes)} class(es) only",
                "label the points with their class names (e.g. Necrosis, Edema, Enhancing, Background)")
        bg = next((c for c in classes if self._isBackgroundName(c)), classes[-1])
        order = [c for c in classes if c != bg] + [bg]
        value = {c: v for v, c in enumerate(order, start=1)}
        seeds = np.zeros(geom.shape_zyx, np.uint8)
        r_vox = np.ceil(radiusMm / np.asarray(geom.spacing)).astype(int)  # i, j, k
        for lab, pt in zip(labels, points):
            c = geom.physical_to_index(np.asarray([pt]))[0]
            lo = np.maximum(np.floor(c - r_vox).astype(int), 0)
            hi = np.minimum(np.ceil(c + r_vox).astype(int) + 1, np.asarray(geom.size))
            if np.any(hi <= lo):
                continue
            k, j, i = np.meshgrid(*(np.arange(lo[a], hi[a]) for a in (2, 1, 0)), indexing="ij")
            ijk = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(float)
            inside = np.linalg.norm(geom.index_to_physical(ijk) - np.asarray(pt), axis=1) <= radiusMm
            kk, jj, ii = k.ravel()[inside], j.ravel()[inside], i.ravel()[inside]
            seeds[kk, jj, ii] = value[lab]
        if not (seeds == value[bg]).any():
            raise MedTorchInputError("no background seed point lies inside the input volume",
                                     "place background points inside the volume, around the tumor")
        names = {v: c for c, v in value.items()}
        colors = {}
        return Volume(seeds, geom, "label"), names, colors

    def _seedsAndNames(self, inputVolume, seedSegmentation, seedMarkups, seedRadiusMm):
        from medtorch.errors import MedTorchInputError

        if seedSegmentation is not None:
            return self.seedsFromSegmentation(seedSegmentation, inputVolume)
        if seedMarkups is not None:
            return self.seedsFromMarkups(seedMarkups, inputVolume, seedRadiusMm)
        raise MedTorchInputError("no seeds are selected",
                                 "choose a seed segmentation (one segment per class and a Background segment) "
                                 "or seed markups points labelled with class names")

    @staticmethod
    def _checkVolumes(inputVolumes):
        from medtorch.errors import MedTorchInputError

        vols = [v for v in inputVolumes if v is not None]
        if not vols:
            raise MedTorchInputError("no input volume is selected", "select the volume(s) to segment")
        if len({v.GetTransformNodeID() for v in vols}) > 1:
            raise MedTorchInputError("the input volumes are under different transforms, so they would not line up",
                                     "put them under the same transform, or harden the transforms first")
        return vols

    # -- seeded -------------------------------------------------------------------------------------------
    @staticmethod
    def seededInputsReplaced(outputSegmentation, seedSegmentation=None, referenceSegmentation=None) -> list:
        """The output segmentation, when it is the seed or the reference segmentation."""
        from medtorch.slicer.jobs import inputs_replaced

        return inputs_replaced({"output segmentation": outputSegmentation},
                               {"seed segmentation": seedSegmentation, "reference segmentation": referenceSegmentation})

    def seededJob(self, inputVolumes, seedSegmentation=None, seedMarkups=None, outputSegmentation=None,
                  volumetryTable=None, referenceSegmentation=None, metricsTable=None, roi=None,
                  smoothness: float = 0.3, marginMm: float = 5.0, minSizeMm3: float = 0.0, fillHoles: bool = False,
                  seedRadiusMm: float = 2.0, device: str = "auto", method: str = "geodesic",
                  overwriteInput: bool = False):
        """Seeded segmentation as a job (``.run_blocking()`` or ``.start()``); its result is the
        output segmentation node (segments named after the seed classes, with standard
        terminology and colours when the names are standard, closed surfaces) and a volumetry
        table (``MedTorch.volumetryTableID`` attribute); with a reference, a metrics table too.
        An ``outputSegmentation`` that is the seed or reference segmentation is refused unless
        ``overwriteInput`` (the Widget asks first).
        """
        from medtorch.errors import MedTorchInputError
        from medtorch.slicer import mrml
        from medtorch.slicer.jobs import LogicJob
        from medtorch.ops import Roi
        from medtorch.ops.segmentation import SeededRequest

        vols = self._checkVolumes(inputVolumes)
        from medtorch.slicer.jobs import refuse_replacing_inputs

        refuse_replacing_inputs(self.seededInputsReplaced(outputSegmentation, seedSegmentation, referenceSegmentation),
                                overwriteInput)
        self.ensureDependencies(withTorch=True)
        seeds, names, colors = self._seedsAndNames(vols[0], seedSegmentation, seedMarkups, seedRadiusMm)
        inputs = {f"channel{i}": mrml.volume_from_node(v) for i, v in enumerate(vols)}
        inputs["seeds"] = seeds
        request = SeededRequest(method=method, smoothness=float(smoothness), margin_mm=float(marginMm),
                                min_size_mm3=float(minSizeMm3),
                                fill_holes=bool(fillHoles), device=device,
                                roi=Roi(**mrml.box_from_roi_node(roi)) if roi is not None else None)
        if roi is not None and vols[0].GetParentTransformNode() is not None:
            raise MedTorchInputError("the input volume is under a transform, so the ROI box would not line up",
                                     "harden the transform on the volume first (Transforms module)")

        def apply(result):
            return self._applySeeded(result.volumes["label"], result.values, names, colors, vols[0],
                                     outputSegmentation, volumetryTable, referenceSegmentation, metricsTable)

        return LogicJob(request, inputs, apply, slicer.mrmlScene)

    def seeded(self, inputVolumes, seedSegmentation=None, seedMarkups=None, **kwargs):
        """Blocking seeded segmentation (scripts and tests). Returns the segmentation node."""
        return self.seededJob(inputVolumes, seedSegmentation, seedMarkups, **kwargs).run_blocking()

    def updateSeeded(self, inputVolumes, seedSegmentation=None, seedMarkups=None, outputSegmentation=None,
                     volumetryTable=None, referenceSegmentation=None, metricsTable=None, roi=None,
                     smoothness: float = 0.3, marginMm: float = 5.0, minSizeMm3: float = 0.0, fillHoles: bool = False,
                     seedRadiusMm: float = 2.0, device: str = "auto", method: str = "geodesic"):
        """Seeded segmentation in this process, reusing the previous run's features and labels
        when the volumes and settings are unchanged (fast re-runs after seed edits)."""
        from medtorch.errors import MedTorchInputError
        from medtorch.slicer import mrml
        from medtorch.slicer.jobs import scene_transaction
        from medtorch.segment.postprocess import postprocess_label
        from medtorch.segment.seeded import SeededOptions, SeededSegmenter
        from medtorch.segment.threshold import Box

        import numpy as np

        vols = self._checkVolumes(inputVolumes)
        if outputSegmentation is not None and outputSegmentation in (seedSegmentation, referenceSegmentation):
            raise MedTorchInputError("the output segmentation is also the seed or reference segmentation",
                                     "choose another output segmentation, or 'Create new'")
        seeds, names, colors = self._seedsAndNames(vols[0], seedSegmentation, seedMarkups, seedRadiusMm)
        box = None
        if roi is not None:
            b = mrml.box_from_roi_node(roi)
            box = Box(np.asarray(b["center"]), np.asarray(b["half_size"]), np.asarray(b["axes"]))
        opts = SeededOptions(method=method, smoothness=float(smoothness), margin_mm=float(marginMm), device=device)
        key = (tuple(v.GetID() for v in vols), tuple(v.GetImageData().GetMTime() for v in vols),
               tuple(v.GetMTime() for v in vols), repr(opts), repr(None if roi is None else mrml.box_from_roi_node(roi)))
        session = self._sessions.get("seeded")
        if session is None or session[0] != key:
            segmenter = SeededSegmenter([mrml.volume_from_node(v) for v in vols], opts, region_box=box)
            self._sessions["seeded"] = (key, segmenter)
        else:
            segmenter = session[1]
        res = segmenter.segment(seeds)
        label = res.label
        if minSizeMm3 > 0 or fillHoles:
            label = postprocess_label(label, float(minSizeMm3), False, bool(fillHoles))
        values = {"classes": res.classes, "background": res.background, "seconds": res.seconds,
                  "iterations": res.iterations, "seed": int(res.options.get("seed", 0)), "incremental": res.incremental,
                  "verdict": None if res.verdict is None else res.verdict.to_dict()}
        with scene_transaction(slicer.mrmlScene):
            return self._applySeeded(label, values, names, colors, vols[0], outputSegmentation, volumetryTable,
                                     referenceSegmentation, metricsTable)

    # -- putting results into the scene ---------------------------------------------------------------
    def _applySeeded(self, label, values, names, colors, referenceVolume, outputSegmentation, volumetryTable,
                     referenceSegmentation, metricsTable):
        import numpy as np

        from medtorch.slicer import mrml
        from medtorch.segment.metrics import volumetry
        from medtorch.segment.terminology import class_terms, slicer_terminology

        background = int(values["background"])
        tumor = [int(c) for c in values["classes"] if int(c) != background]
        segNames = {c: names.get(c, f"Class {c}") for c in tumor}
        terms = class_terms(tumor, segNames)
        segColors = {c: (terms[c].color if not terms[c].key.startswith("class_") else colors.get(c, terms[c].color))
                     for c in tumor}
        scene = slicer.mrmlScene
        name = scene.GenerateUniqueName(f"{referenceVolume.GetName()} tumor segmentation")
        built = mrml.segmentation_from_label(label, segNames, name, colors=segColors, reference_node=referenceVolume)
        if outputSegmentation is not None:
            outputSegmentation.GetSegmentation().DeepCopy(built.GetSegmentation())
            outputSegmentation.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolume)
            scene.RemoveNode(built)
            seg = outputSegmentation
            if seg.GetDisplayNode() is None:
                seg.CreateDefaultDisplayNodes()
        else:
            seg = built
        seg.SetAndObserveTransformNodeID(referenceVolume.GetTransformNodeID())
        segmentation = seg.GetSegmentation()
        byName = {segNames[c]: c for c in tumor}
        for i in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(i)
            c = byName.get(segment.GetName())
            if c is not None:
                segment.SetTag("TerminologyEntry", slicer_terminology(terms[c]))
        seg.CreateClosedSurfaceRepresentation()
        rows = volumetry(label, segNames, {"Whole tumor": tumor} if len(tumor) > 1 else None)
        table = self.writeVolumetryTable(rows, volumetryTable, f"{seg.GetName()} volumes")
        wholeMl = float(np.count_nonzero(np.isin(label.array, tumor))) * label.geometry.voxel_volume_mm3 / 1000.0
        seg.SetAttribute("MedTorch.operation", "seeded")
        seg.SetAttribute("MedTorch.volumeMl", f"{wholeMl:.6f}")
        seg.SetAttribute("MedTorch.volumesMl", json.dumps({r.name: r.volume_ml for r in rows}))
        seg.SetAttribute("MedTorch.volumetryTableID", table.GetID())
        seg.SetAttribute("MedTorch.seed", str(values.get("seed", 0)))
        seg.SetAttribute("MedTorch.seconds", f"{float(values.get('seconds', {}).get('total', 0.0)):.2f}")
        seg.SetAttribute("MedTorch.incremental", str(bool(values.get("incremental", False))).lower())
        verdict = values.get("verdict")
        seg.SetAttribute("MedTorch.verdict", json.dumps(verdict) if verdict else "")
        if referenceSegmentation is not None:
            metrics = self.scoreAgainstReference(seg, referenceSegmentation, referenceVolume, metricsTable)
            seg.SetAttribute("MedTorch.metricsTableID", metrics.GetID())
        return seg

    def writeVolumetryTable(self, rows, tableNode=None, name: str = "Tumor volumes"):
        """Write volumetry rows (segment, label value(s), voxels, mL) into a table node (new if none)."""
        from medtorch.slicer.tables import table_node_from_rows

        titles = ("Segment", "Label values", "Voxels", "Volume (mL)")
        return table_node_from_rows(
            [dict(zip(titles, (row.name, " ".join(str(v) for v in row.values), int(row.voxels), float(row.volume_ml))))
             for row in rows], name, slicer.mrmlScene, titles, tableNode,
            kinds={"Segment": "str", "Label values": "str", "Voxels": "int", "Volume (mL)": "float"})

    def scoreAgainstReference(self, segmentationNode, referenceSegmentation, referenceVolume, metricsTable=None):
        """Dice, HD95, surface Dice, sensitivity, specificity, precision and volumes of each segment
        of ``segmentationNode`` against the reference segment of the same name, and of the whole
        (all segments together); written into a table node (new if none), which is returned."""
        import numpy as np

        from medtorch.slicer import mrml
        from medtorch.segment.metrics import evaluate_segmentation
        from medtorch.volume import Volume

        def masks(node):
            s = node.GetSegmentation()
            out = {}
            for i in range(s.GetNumberOfSegments()):
                sid = s.GetNthSegmentID(i)
                lab = mrml.label_from_segmentation(node, referenceVolume, [sid])
                out[s.GetSegment(sid).GetName()] = (lab.array > 0, lab.geometry)
            return out

        pred, ref = masks(segmentationNode), masks(referenceSegmentation)
        geom = mrml.geometry_from_node(referenceVolume)
        structures = []
        refByName = {k.lower(): v[0] for k, v in ref.items()}
        for name, (m, _g) in pred.items():
            if name.lower() in refByName:
                structures.append((name, m, refByName[name.lower()]))
        if pred and ref:
            allPred = np.any([m for m, _ in pred.values()], axis=0)
            allRef = np.any([m for m, _ in ref.values()], axis=0)
            structures.append(("Whole tumor", allPred, allRef))
        rows = []
        for name, p, r in structures:
            rep = evaluate_segmentation(Volume(p.astype(np.uint8), geom, "label"), Volume(r.astype(np.uint8), geom, "label"),
                                        {name: [1]}, tolerance_mm=1.0, lesion_wise_scores=False)
            rows.append(rep.structures[0])
        from medtorch.slicer.tables import table_node_from_rows

        titles = ("Structure", "Dice", "HD95 (mm)", "Surface Dice 1 mm", "Sensitivity", "Specificity", "Precision",
                  "Volume (mL)", "Reference volume (mL)")
        table = table_node_from_rows(
            [dict(zip(titles, (s.name, s.dice, s.hd95_mm, s.surface_dice, s.sensitivity, s.specificity, s.precision,
                               s.volume_pred_ml, s.volume_ref_ml))) for s in rows],
            f"{segmentationNode.GetName()} metrics", slicer.mrmlScene, titles, metricsTable,
            kinds={t: ("str" if t == "Structure" else "float") for t in titles})
        table.SetAttribute("MedTorch.metrics", json.dumps([s.__dict__ for s in rows], default=float))
        table.Modified()
        return table

    # -- deep learning and nodules (SegmentTumorLib.model_scene) -----------------------------------------
    def modelJob(self, inputVolumes, modelPath: str, tta: bool = False, device: str = "auto"):
        """A trained model's segmentation as a job; its result is a new segmentation node."""
        from SegmentTumorLib.model_scene import segment_model_job

        vols = self._checkVolumes(inputVolumes)
        self.ensureDependencies(withTorch=True)
        return segment_model_job(vols, modelPath, tta=tta, device=device)

    # -- installed models (SegmentTumorLib.Models: the store of ``medtorch models``) ----------------------
    def installedModels(self, modelsDir: str = "") -> list:
        """A summary (dict) per installed model: name, version, input channels, labels, license."""
        from SegmentTumorLib.Models import installed_models

        return installed_models(modelsDir)

    def importModelPack(self, packPath: str, confirm=None, modelsDir: str = ""):
        """Install a model pack: every hash is checked, then a license not agreed to before is shown
        with ``confirm(text) -> bool`` (default: an OK/Cancel dialog). Returns the installed model's
        summary, or None when the license was not agreed to (nothing installed)."""
        from SegmentTumorLib.Models import import_pack

        self.ensureDependencies(withTorch=True)  # the weights are checked with torch.load(weights_only=True)
        return import_pack(packPath, confirm or slicer.util.confirmOkCancelDisplay, modelsDir)

    def removeModel(self, name: str, modelsDir: str = "") -> dict:
        """Remove an installed model; its summary."""
        from SegmentTumorLib.Models import remove_model

        return remove_model(name, modelsDir)

    # -- Export to DICOM (medtorch.slicer.dicom, the export_dicom operation) --------------------------------
    def exportToDicom(self, segmentationNode, inputVolume, outputFolder: str, exportAs: str = "seg",
                      referenceFolder: str = "", database=None):
        """Write ``segmentationNode`` as a DICOM SEG (``exportAs="seg"``) or RTSTRUCT (``"rtstruct"``)
        into a new file in ``outputFolder``, on the grid of ``inputVolume`` (the volume it was made
        on) and referencing that volume's DICOM series: the one it was loaded from (Slicer's DICOM
        database, or ``database``), else the series in ``referenceFolder``. The file is read back and
        checked in patient space first; a segment more than half a voxel off refuses it
        (``DicomGeometryError``: problem and what to do) and nothing is written.
        Returns a ``medtorch.slicer.dicom.ExportResult`` (``path``, ``values``, ``message``)."""
        from medtorch.slicer.dicom import export_segmentation

        self.ensureDependencies()  # highdicom writes DICOM SEG
        return export_segmentation(segmentationNode, inputVolume, outputFolder, exportAs,
                                   reference_folder=referenceFolder or None, database=database)

    def nodulesJob(self, ctVolume, minDiameterMm: float = 4.0, maxDiameterMm: float = 30.0, device: str = "auto"):
        """Lung-nodule detection as a job; its result is a new markups node (diameters in mm)."""
        from medtorch.errors import MedTorchInputError
        from SegmentTumorLib.model_scene import detect_nodules_job

        if minDiameterMm > maxDiameterMm:
            raise MedTorchInputError(f"the smallest nodule diameter ({minDiameterMm} mm) is above the largest "
                                     f"({maxDiameterMm} mm)", "swap the two diameters")
        self.ensureDependencies(withTorch=True)
        return detect_nodules_job(ctVolume, min_diameter_mm=minDiameterMm, max_diameter_mm=maxDiameterMm,
                                  device=device)


def terminologyOf(segment) -> str:
    """A segment's terminology entry string (Slicer's ``TerminologyEntry`` tag)."""
    if hasattr(segment, "GetTerminology"):
        return segment.GetTerminology()
    value = vtk.reference("")
    segment.GetTag("TerminologyEntry", value)
    return str(value)


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
        self.setUp()
        self.test_SeededTwoChannels()
        self.setUp()
        self.test_SeedsOfOneClassAreRefused()

    def _visual(self):
        """Renders of Slicer's views for the visual checks (medtorch.slicer.checks); where
        rendering is unavailable they are skipped, and the reason is said once."""
        from medtorch.slicer.checks import VisualChecks

        return VisualChecks.of(self)

    def _centreRas(self, mask, geometry):
        """The RAS centre of the true voxels of ``mask`` ([z, y, x] on ``geometry``)."""
        import numpy as np

        ijk = np.argwhere(mask)[:, ::-1].mean(axis=0)
        return coords.ras_from_lps(geometry.index_to_physical(ijk[None, :].astype(float))[0])

    def _checkSegmentShows(self, segmentationNode, volumeNode, segmentName, centreRas, in3D=True, inSlice=True):
        """The segment's surface shows in 3D (``in3D``), and its outline and fill in the Red slice
        view through ``centreRas`` (``inSlice``), in the segment's colour, centred where
        ``centreRas`` lands on the screen (the whole volume framed in 3D). Markups
        (the ROI box and its handles) and other segmentations (the seeds) are hidden meanwhile:
        their colours could pass for the segment's."""
        from medtorch.slicer import checks

        segmentation = segmentationNode.GetSegmentation()
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(segmentName))
        color = segment.GetColor()
        others = [node for node in slicer.util.getNodesByClass("vtkMRMLSegmentationNode")
                  if node is not segmentationNode]
        hidden = [node.GetDisplayNode() for node in slicer.util.getNodesByClass("vtkMRMLMarkupsNode") + others
                  if node.GetDisplayNode() is not None and node.GetDisplayNode().GetVisibility()]
        for display in hidden:
            display.SetVisibility(0)
        try:
            self._renderSegment(segmentName, color, volumeNode, centreRas, in3D, inSlice)
        finally:
            for display in hidden:
                display.SetVisibility(1)

    def _renderSegment(self, segmentName, color, volumeNode, centreRas, in3D, inSlice):
        from medtorch.slicer import checks

        with self._visual().views() as views:
            if in3D:
                three_d = views["3D"]
                bounds = [0.0] * 6
                volumeNode.GetRASBounds(bounds)  # the whole volume framed: the segment shows where it lies in it
                three_d.reset_camera("Anterior", bounds=bounds)
                checks.expect_colour_near(three_d.render(), color, three_d.project(centreRas),
                                          max_distance=0.06 * three_d.size[0], min_pixels=20,
                                          what=f"the surface of {segmentName} in 3D")
            if inSlice:
                red = views["Red"]
                red.composite.SetForegroundVolumeID(None)
                red.show(background=volumeNode, fit=True).jump_to(centreRas)
                checks.expect_colour_near(red.render(), color, red.project(centreRas), max_distance=0.06 * red.size[0],
                                          min_pixels=20, what=f"{segmentName} in the Red slice view")

    def test_ThresholdInROI(self):
        import numpy as np
        from medtorch.slicer import mrml
        from medtorch.phantoms import blob_phantom, lesion_mask, oblique_geometry

        self.delayDisplay("Threshold + largest component inside an ROI gives the lesion")
        geom = oblique_geometry(spacing=(0.8, 0.9, 1.2), size=(48, 44, 36))
        volumeNode = mrml.node_from_volume(blob_phantom(geom, noise=8.0, seed=4), "phantom")
        truth = lesion_mask(geom)
        centerLps = geom.center() + np.array([5.0, -3.0, 4.0])
        roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "ROI")
        roi.SetCenter(*coords.ras_from_lps(centerLps))
        roi.SetSize(16.0, 16.0, 16.0)

        logic = SegmentTumorLogic()
        seg = logic.threshold(volumeNode, 150.0, 1000.0, roi=roi, segmentName="Enhancing tumor")
        segmentation = seg.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), 1)
        segmentId = segmentation.GetNthSegmentID(0)
        self.assertEqual(segmentation.GetSegment(segmentId).GetName(), "Enhancing tumor")
        label = mrml.label_from_segmentation(seg, volumeNode).array > 0
        dice = 2.0 * np.logical_and(label, truth).sum() / (label.sum() + truth.sum())
        self.assertGreater(dice, 0.85)
        volumeMl = float(seg.GetAttribute("MedTorch.volumeMl"))
        self.assertAlmostEqual(volumeMl, label.sum() * np.prod(geom.spacing) / 1000.0, places=4)
        if self._visual().available:
            self.delayDisplay("Visual: the segment shows in 3D and in the slice view where the lesion is")
            self._checkSegmentShows(seg, volumeNode, "Enhancing tumor", self._centreRas(truth, geom))
        self.delayDisplay("Test passed")

    def test_EmptyRangeIsAClearError(self):
        from medtorch.errors import MedTorchInputError
        from medtorch.slicer import mrml
        from medtorch.slicer.jobs import scene_node_ids
        from medtorch.phantoms import blob_phantom, oblique_geometry

        self.delayDisplay("A threshold range with no voxel is refused, and the scene is untouched")
        volumeNode = mrml.node_from_volume(blob_phantom(oblique_geometry()), "phantom")
        before = scene_node_ids(slicer.mrmlScene)
        with self.assertRaises(MedTorchInputError) as ctx:
            SegmentTumorLogic().threshold(volumeNode, 5000.0, 6000.0)
        self.assertIn("What to do", str(ctx.exception))
        self.assertEqual(scene_node_ids(slicer.mrmlScene), before)
        self.delayDisplay("Test passed")

    def _seedSegmentation(self, seeds, referenceNode, names):
        """A seed segmentation node with one segment per value of ``seeds`` (a label volume)."""
        from medtorch.slicer import mrml

        node = mrml.segmentation_from_label(seeds, names, "Seeds", reference_node=referenceNode)
        return node

    def test_SeededTwoChannels(self):
        import numpy as np
        from medtorch.slicer import mrml
        from medtorch.segment.tumor_phantom import make_tumor_phantom, stroke_seeds, synthetic_tissue
        from medtorch.volume import Geometry

        self.delayDisplay("Seeded segmentation of a two-channel tumor phantom from painted seeds")
        geom = Geometry((56, 56, 48), origin=(-40.0, -40.0, -35.0), spacing=(1.5, 1.5, 1.5))
        phantom = make_tumor_phantom(synthetic_tissue(geom, seed=1), noise=0.06, seed=2, core_radius_mm=8.0,
                                     rim_mm=4.0, oedema_radius_mm=17.0)
        flair = mrml.node_from_volume(phantom.channels["FLAIR"], "FLAIR")
        t1c = mrml.node_from_volume(phantom.channels["T1c"], "T1c")
        seeds = stroke_seeds(phantom.truth, seed=0)
        names = {1: "Necrosis", 2: "Edema", 3: "Enhancing tumor", 4: "Background"}
        seedNode = self._seedSegmentation(seeds, flair, names)

        logic = SegmentTumorLogic()
        seg = logic.seeded([flair, t1c], seedNode)
        segmentation = seg.GetSegmentation()
        self.assertEqual([segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())],
                         ["Necrosis", "Edema", "Enhancing tumor"])
        self.assertIn("79654002", terminologyOf(segmentation.GetNthSegment(1)))  # SNOMED CT: Edema
        self.assertTrue(seg.GetSegmentation().ContainsRepresentation("Closed surface"))
        label = mrml.label_from_segmentation(seg, flair).array > 0
        truth = phantom.truth.array > 0
        dice = 2.0 * np.logical_and(label, truth).sum() / (label.sum() + truth.sum())
        self.assertGreater(dice, 0.9)
        table = slicer.mrmlScene.GetNodeByID(seg.GetAttribute("MedTorch.volumetryTableID"))
        self.assertEqual(table.GetNumberOfRows(), 4)  # three classes and the whole tumor
        wholeMl = float(table.GetTable().GetValue(3, 3).ToDouble())
        self.assertAlmostEqual(wholeMl, label.sum() * geom.voxel_volume_mm3 / 1000.0, places=3)
        if self._visual().available:
            self.delayDisplay("Visual: the oedema's surface in 3D and the necrotic core in the slice view, "
                              "where the tumor is")
            self._checkSegmentShows(seg, flair, "Edema", self._centreRas(truth, geom), inSlice=False)
            self._checkSegmentShows(seg, flair, "Necrosis", self._centreRas(phantom.truth.array == 1, geom), in3D=False)

        self.delayDisplay("An edit of the seeds re-runs from the previous result")
        first = logic.updateSeeded([flair, t1c], seedNode, outputSegmentation=seg)
        self.assertIs(first, seg)
        arr = seeds.array.copy()
        z = int(np.argwhere(phantom.truth.array == 2)[:, 0].mean())
        arr[z][(phantom.truth.array[z] == 2) & (arr[z] == 0)] = 2  # paint oedema on one more slice
        edited = self._seedSegmentation(seeds.with_array(arr), flair, names)
        again = logic.updateSeeded([flair, t1c], edited, outputSegmentation=seg)
        self.assertIs(again, seg)
        self.assertEqual(seg.GetAttribute("MedTorch.incremental"), "true")
        self.delayDisplay("Test passed")

    def test_SeedsOfOneClassAreRefused(self):
        import numpy as np
        from medtorch.errors import MedTorchInputError
        from medtorch.slicer import mrml
        from medtorch.slicer.jobs import scene_node_ids
        from medtorch.phantoms import blob_phantom, oblique_geometry
        from medtorch.volume import Volume

        self.delayDisplay("Seeds of one class only are refused, and the scene is untouched")
        geom = oblique_geometry()
        volumeNode = mrml.node_from_volume(blob_phantom(geom), "phantom")
        arr = np.zeros(geom.shape_zyx, np.uint8)
        arr[10:12, 15:20, 15:20] = 1
        seedNode = self._seedSegmentation(Volume(arr, geom, "label"), volumeNode, {1: "Tumor"})
        before = scene_node_ids(slicer.mrmlScene)
        with self.assertRaises(MedTorchInputError) as ctx:
            SegmentTumorLogic().seeded([volumeNode], seedNode)
        self.assertIn("one class", str(ctx.exception))
        self.assertEqual(scene_node_ids(slicer.mrmlScene), before)
        self.delayDisplay("Test passed")
