import logging
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
    WithinRange,
    Choice,
)

from slicer import vtkMRMLScalarVolumeNode, vtkMRMLMarkupsFiducialNode, vtkMRMLTableNode, vtkMRMLTransformNode

try:
    import medtorch  # installed extension: the core sits beside the module files
except ImportError:  # developer checkout: the core sits beside the module folders
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from medtorch import coords
from medtorch.slicer.widgets import ModuleWidgetMixin

#: Fusion methods offered in the module (medtorch.fusion.methods.METHODS, less the reference rule "max").
FUSION_METHODS = ["average", "dwt", "laplacian", "gff", "gradient", "pca", "cnn"]
MODALITY_CHOICES = ["auto", "CT", "MR", "PT", "NM", "OT"]
CT_WINDOW_CHOICES = ["bone", "brain", "subdural", "stroke", "lung", "mediastinum", "soft_tissue", "liver"]
COLOR_MAP_CHOICES = ["none", "hot", "jet", "rainbow", "gray"]
WAVELET_CHOICES = ["haar", "db2", "db3", "db4", "db5", "sym4", "sym5", "coif1", "coif2"]
METRIC_CHOICES = ["EN", "SD", "SF", "AG", "MI", "SSIM_sum", "QABF", "VIF"]


#
# FusionRegistration
#


class FusionRegistration(ScriptedLoadableModule):
    """Align a moving volume to a fixed one and fuse them (MedTorch)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Fusion Registration")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "MedTorch")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedTorch developers"]
        self.parent.helpText = _("""
<b>Registration</b>: find the transform that aligns the moving volume with the fixed one --
rigid, affine or deformable; mutual information or MIND-SSC across modalities (CT to MRI),
local/global correlation or squared differences within one. MedTorch's torch engine (GPU or
CPU) survives large misalignment (a rotation search); SimpleITK and elastix engines are there
for comparison. Optional masks restrict the comparison; optional landmark pairs initialise
it and give the target registration error. The result is a linear or grid transform node
(ITK convention, shown in RAS), a resampled volume and a report (node attributes and a table).
<br><b>Fusion</b>: bring the moving volume onto the fixed grid (through the transforms the
volumes are under: after Register, just press Fuse) and fuse the two into a new volume by a
weighted average, DWT (mean approximation, max-abs details), a Laplacian pyramid, guided
filtering (GFF), gradient-domain fusion (the stronger gradient, then a robust or Poisson reconstruction), PCA
weights or a small CNN trained on the pair itself. 2D images (PNG, JPEG, TIFF, BMP, which Slicer
loads as one-slice volumes) are fused as 2D images. Each input is first brought to [0, 1]
(CT through a window preset, MRI and the rest by 1st-99th percentiles); the fused volume is
in [0, 1]. A PET or SPECT moving volume can be fused in colour (YCbCr: the luminance fused,
the colour kept) into an RGB volume. The views show the fixed volume under the moving one
(opacity, colour map) and the fused volume in 3D; the fusion metrics (EN, SD, SF, AG, MI,
SSIM, QAB/F, VIF) go into a table.
<br><b>Evaluate methods</b>: fuse the pair with several methods, score each in 3D and slice by
slice, test each against a baseline (Wilcoxon, paired t over slices) and plot one metric's
per-slice values per method.
See the <a href="https://github.com/medtorch/SlicerMedTorch#fusionregistration">documentation</a>.
""")
        self.parent.acknowledgementText = _("""
MedTorch is built on 3D Slicer, SimpleITK, PyTorch and MONAI.
""")
        # Sample data sets (local files, nothing downloaded) once the application has started.
        app = getattr(slicer, "app", None)
        if app is not None and hasattr(app, "connect"):
            app.connect("startupCompleted()", registerSampleData)


#
# Register sample data sets in the Sample Data module
#


def sampleDataFolder() -> str:
    """The folder of the sample data this module ships (``Resources/SampleData``)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "Resources", "SampleData")


def registerSampleData() -> int:
    """Add MedTorch's sample data sets (category "MedTorch") to Slicer's Sample Data module.

    They load from the files in ``Resources/SampleData`` (no download). Returns how many data
    sets were registered (0 where the Sample Data module is not available).
    """
    try:
        import SampleData  # noqa: F401 - Slicer's Sample Data module
    except ImportError:
        logging.info("Sample Data module not available: MedTorch sample data not registered")
        return 0
    from FusionRegistrationLib.sample_data import register_sample_data

    return register_sample_data(sampleDataFolder())


#
# FusionRegistrationParameterNode
#


@parameterNodeWrapper
class FusionRegistrationParameterNode:
    """
    fixedVolume - the reference: the output has its geometry.
    movingVolume - the volume brought onto the fixed grid.
    fusionMethod - average, dwt, laplacian, gff, gradient (gradient-domain), pca or cnn.
    blendWeight - average: share of the moving volume (0: fixed only, 1: moving only).
    normalization - "auto": CT windowed, the rest percentile-normalised; "percentile": all
        percentile-normalised; "none": raw intensities (average only).
    fixedModality, movingModality - auto (DICOM modality of the node, else other), CT, MR, PT, NM, OT.
    ctWindow - the CT window preset used for a CT source.
    colorMap - colour fusion of a PET/SPECT moving volume with this colour map ("none": grey fusion).
    dwtWavelet, dwtLevels - dwt: wavelet and decomposition levels.
    laplacianLevels - laplacian: pyramid levels.
    gffR1, gffEps1, gffR2, gffEps2 - gff: guided-filter radii (voxels) and regularisation.
    cnnIterations, cnnCheckpoint - cnn: training iterations on the pair; optional checkpoint (.pt).
    computeMetrics - score the fused volume (3D fusion metrics) into a table.
    outputVolume - where the fused volume goes; a new volume is created when none is chosen.
    showResult - show fixed and moving volumes overlaid in the slice views when done.
    foregroundOpacity - opacity of the moving volume over the fixed one in the slice views.
    showIn3D - show the fused volume in the 3D view (volume rendering).
    evaluationMethods - comma-separated methods that Evaluate compares.
    evaluationBaseline - the method the others are tested against.
    boxPlotMetric - the metric whose per-slice values the box plot shows.
    evaluationTable - receives the evaluation's metrics; a new table is created when none is chosen.
    device - where torch computes: auto ($MEDTORCH_DEVICE, else cuda, then mps, then cpu), cpu, cuda or mps.
    registrationMode - rigid, affine or deformable.
    metric - mi, mind (across modalities), lncc, ncc, mse (same modality).
    engine - torch (MedTorch), sitk (SimpleITK), elastix, or learned (a trained network, deformable).
    learnedModel - learned engine: the registration model pack (.zip, e.g. from medtorch train-reg).
    refineLearned - learned engine: refine the network's field with the deformable optimiser (instance optimisation).
    initialization - auto, geometry, moments, pax, fiducials or none.
    fixedMask, movingMask - optional binary volumes: only voxels inside are compared.
    fixedFiducials, movingFiducials - optional landmark pairs (in order): initialisation and TRE.
    outputTransform - receives the result (linear or grid transform); a new node when none is chosen.
    resampledVolume - receives the moving volume on the fixed grid; a new node when none is chosen.
    placeUnderTransform - put the moving volume under the result transform.
    hardenTransform - harden the result into the moving volume (changes that node).
    seed - seed of the registration's random sampling and of the fusion CNN.
    similarityMap - also output the verdict's local similarity (0-1, per block of about 24 mm) as a volume.
    similarityMapVolume - receives that map; a new volume is created when none is chosen.
    verdictTable - receives the verdict's checks (a row per check); a new table is created when none is chosen.
    """

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    fusionMethod: Annotated[str, Choice(FUSION_METHODS)] = "average"
    blendWeight: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    normalization: Annotated[str, Choice(["auto", "percentile", "none"])] = "auto"
    fixedModality: Annotated[str, Choice(MODALITY_CHOICES)] = "auto"
    movingModality: Annotated[str, Choice(MODALITY_CHOICES)] = "auto"
    ctWindow: Annotated[str, Choice(CT_WINDOW_CHOICES)] = "bone"
    colorMap: Annotated[str, Choice(COLOR_MAP_CHOICES)] = "none"
    dwtWavelet: Annotated[str, Choice(WAVELET_CHOICES)] = "haar"
    dwtLevels: Annotated[int, WithinRange(1, 8)] = 3
    laplacianLevels: Annotated[int, WithinRange(1, 8)] = 4
    gffR1: Annotated[int, WithinRange(1, 200)] = 45
    gffEps1: Annotated[float, WithinRange(1e-6, 10.0)] = 0.3
    gffR2: Annotated[int, WithinRange(1, 200)] = 7
    gffEps2: Annotated[float, WithinRange(1e-8, 1.0)] = 1e-6
    cnnIterations: Annotated[int, WithinRange(0, 100000)] = 150
    cnnCheckpoint: str = ""
    computeMetrics: bool = True
    outputVolume: vtkMRMLScalarVolumeNode
    showResult: bool = True
    foregroundOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    showIn3D: bool = True
    evaluationMethods: str = "average,dwt,laplacian,gff,pca"
    evaluationBaseline: Annotated[str, Choice(FUSION_METHODS)] = "dwt"
    boxPlotMetric: Annotated[str, Choice(METRIC_CHOICES)] = "QABF"
    evaluationTable: vtkMRMLTableNode
    device: Annotated[str, Choice(["auto", "cpu", "cuda", "mps"])] = "auto"
    registrationMode: Annotated[str, Choice(["rigid", "affine", "deformable"])] = "rigid"
    metric: Annotated[str, Choice(["mi", "mind", "lncc", "ncc", "mse"])] = "mi"
    engine: Annotated[str, Choice(["torch", "sitk", "elastix", "learned"])] = "torch"
    learnedModel: str = ""
    refineLearned: bool = False
    initialization: Annotated[str, Choice(["auto", "geometry", "moments", "pax", "fiducials", "none"])] = "auto"
    fixedMask: vtkMRMLScalarVolumeNode
    movingMask: vtkMRMLScalarVolumeNode
    fixedFiducials: vtkMRMLMarkupsFiducialNode
    movingFiducials: vtkMRMLMarkupsFiducialNode
    outputTransform: vtkMRMLTransformNode
    resampledVolume: vtkMRMLScalarVolumeNode
    placeUnderTransform: bool = True
    hardenTransform: bool = False
    seed: Annotated[int, WithinRange(0, 2147483647)] = 0
    similarityMap: bool = False
    similarityMapVolume: vtkMRMLScalarVolumeNode
    verdictTable: vtkMRMLTableNode


#
# FusionRegistrationWidget
#


class FusionRegistrationWidget(ModuleWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Three actions on one pair of inputs: Register (Registration section), Fuse (Fusion
    section, the mixin's Apply button) and Evaluate methods (Evaluation section). Each runs in
    the background with progress and Cancel; nothing enters the scene until it has finished."""

    uiFileName = "UI/FusionRegistration.ui"
    applyToolTip = _("Fuse the moving volume (through its transforms) with the fixed volume into a new volume")
    registerToolTip = _("Register the moving volume to the fixed volume (background, with progress and Cancel)")
    evaluateToolTip = _("Fuse with every listed method, score each and test it against the baseline")
    missingInputsToolTip = _("Select the fixed and moving volumes")

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        self.setupModuleWidget(FusionRegistrationLogic())
        self.ui.registerButton.connect("clicked(bool)", self.onRegisterButton)
        self.ui.evaluateButton.connect("clicked(bool)", self.onEvaluateButton)
        self.ui.learnedModelBrowseButton.connect("clicked(bool)", self.onChooseLearnedModel)
        self._checkCanApply()

    def onChooseLearnedModel(self) -> None:
        path = qt.QFileDialog.getOpenFileName(self.parent, _("Choose a registration model"), "",
                                              _("Model pack (*.zip)"))
        if path:
            self._parameterNode.learnedModel = path

    def selectDefaultInputs(self, p) -> None:
        volumes = [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                   if n.GetClassName() == "vtkMRMLScalarVolumeNode"] or slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
        if not p.fixedVolume and len(volumes) > 0:
            p.fixedVolume = volumes[0]
        if not p.movingVolume and len(volumes) > 1:
            p.movingVolume = volumes[1]

    def canApply(self, p) -> bool:
        return bool(p.fixedVolume and p.movingVolume)

    def _checkCanApply(self, caller=None, event=None) -> None:
        ModuleWidgetMixin._checkCanApply(self, caller, event)
        ready = bool(self._parameterNode) and self.canApply(self._parameterNode) and not self.busy
        for button, tip in (("registerButton", self.registerToolTip), ("evaluateButton", self.evaluateToolTip)):
            if hasattr(self.ui, button):
                getattr(self.ui, button).toolTip = tip if ready else self.missingInputsToolTip
                getattr(self.ui, button).enabled = ready

    def _methodParams(self, method: str) -> dict:
        p = self._parameterNode
        return self.logic.fusionMethodParams(
            method, weight=p.blendWeight, wavelet=p.dwtWavelet, dwtLevels=p.dwtLevels,
            laplacianLevels=p.laplacianLevels, gffR1=p.gffR1, gffEps1=p.gffEps1, gffR2=p.gffR2, gffEps2=p.gffEps2,
            cnnIterations=p.cnnIterations, cnnCheckpoint=p.cnnCheckpoint, seed=p.seed)

    def onApplyButton(self) -> None:
        """Fuse: run in a background process with a progress dialog and a Cancel button."""
        from medtorch.slicer.jobs import confirm_replacing_inputs, inputs_replaced

        with slicer.util.tryWithErrorDisplay(_("Failed to fuse the volumes."), waitCursor=True):
            p = self._parameterNode
            clashes = inputs_replaced({"output volume": p.outputVolume},
                                      {"fixed volume": p.fixedVolume, "moving volume": p.movingVolume})
            if not confirm_replacing_inputs(clashes, slicer.util.confirmOkCancelDisplay):
                self.ui.statusLabel.text = _("Nothing done: the output volume is an input volume.")
                return
            job = self.logic.fuseJob(
                p.fixedVolume, p.movingVolume, method=p.fusionMethod, methodParams=self._methodParams(p.fusionMethod),
                normalization=p.normalization, fixedModality=p.fixedModality, movingModality=p.movingModality,
                ctWindow=p.ctWindow, colorMap=p.colorMap, computeMetrics=p.computeMetrics,
                outputVolume=p.outputVolume, showResult=p.showResult, showIn3D=p.showIn3D,
                opacity=p.foregroundOpacity, device=p.device, seed=p.seed, overwriteInput=bool(clashes))
            self.runJob(job, _("Fusion"), self.onDone)

    def onDone(self, output) -> None:
        self._parameterNode.outputVolume = output.fusedNode
        text = _("Fused ({method}) into {name}").format(method=output.method, name=output.outputNode.GetName())
        if "QABF" in output.metrics:
            text += _("; QAB/F {q:.3f}, VIF {v:.3f}").format(q=float(output.metrics["QABF"]),
                                                            v=float(output.metrics.get("VIF", float("nan"))))
        self.ui.statusLabel.text = text

    def onEvaluateButton(self) -> None:
        """Evaluate methods: every listed method on the pair, in the background (progress, Cancel)."""
        with slicer.util.tryWithErrorDisplay(_("Failed to evaluate the fusion methods."), waitCursor=True):
            p = self._parameterNode
            methods = self.logic.parseMethods(p.evaluationMethods)
            params = {m: self._methodParams(m) for m in set(methods) | {p.evaluationBaseline}}
            job = self.logic.evaluateJob(
                p.fixedVolume, p.movingVolume, methods=methods, baseline=p.evaluationBaseline,
                metric=p.boxPlotMetric, methodParams=params, normalization=p.normalization,
                fixedModality=p.fixedModality, movingModality=p.movingModality, ctWindow=p.ctWindow,
                colorMap=p.colorMap, device=p.device, tableNode=p.evaluationTable)
            self.runJob(job, _("Fusion evaluation"), self.onEvaluated)

    def onEvaluated(self, output) -> None:
        self._parameterNode.evaluationTable = output.tableNode
        best = max(output.rows, key=lambda r: r.get("QABF", float("-inf")))
        self.ui.statusLabel.text = _("Evaluated {n} methods into {name}; highest QAB/F: {best} ({q:.3f})").format(
            n=len(output.rows), name=output.tableNode.GetName(), best=best["method"], q=float(best["QABF"]))

    def onRegisterButton(self) -> None:
        """Register: run in a background process with a progress dialog and a Cancel button."""
        from medtorch.slicer.jobs import confirm_replacing_inputs

        with slicer.util.tryWithErrorDisplay(_("Failed to register the volumes."), waitCursor=True):
            p = self._parameterNode
            clashes = self.logic.registrationInputsReplaced(p.fixedVolume, p.movingVolume, p.resampledVolume,
                                                            p.similarityMapVolume if p.similarityMap else None)
            if not confirm_replacing_inputs(clashes, slicer.util.confirmOkCancelDisplay):
                self.ui.statusLabel.text = _("Nothing done: an output volume is an input volume.")
                return
            job = self.logic.registerJob(
                p.fixedVolume, p.movingVolume, mode=p.registrationMode, metric=p.metric, engine=p.engine,
                fixedMask=p.fixedMask, movingMask=p.movingMask, fixedFiducials=p.fixedFiducials,
                movingFiducials=p.movingFiducials, placeUnderTransform=p.placeUnderTransform,
                harden=p.hardenTransform, device=p.device, seed=p.seed, initialization=p.initialization,
                outputTransform=p.outputTransform, resampledVolume=p.resampledVolume,
                similarityMap=p.similarityMap, similarityMapVolume=p.similarityMapVolume, verdictTable=p.verdictTable,
                model=p.learnedModel, refine=p.refineLearned, overwriteInput=bool(clashes))
            self.runJob(job, _("Registration"), self.onRegistered)

    #: The status line's colour per verdict (green, orange, red).
    VERDICT_COLORS = {"pass": "#1a7f37", "warn": "#c26100", "fail": "#cf222e"}

    def onRegistered(self, output) -> None:
        p = self._parameterNode
        p.outputTransform = output.transformNode
        p.resampledVolume = output.resampledNode
        if output.verdictTableNode is not None:
            p.verdictTable = output.verdictTableNode
        if output.similarityMapNode is not None:
            p.similarityMapVolume = output.similarityMapNode
        report = output.report
        text = _("Registered ({engine} {mode}) in {seconds:.1f} s into {name}").format(
            engine=report.get("engine"), mode=report.get("mode"), seconds=float(report.get("runtime_s") or 0.0),
            name=output.transformNode.GetName())
        if "tre_mean_mm" in report:
            text += _("; landmark TRE {tre:.2f} mm").format(tre=float(report["tre_mean_mm"]))
        verdict = output.verdict
        if verdict:
            status = verdict.get("status", "")
            text += _("; verdict: {status}").format(status=status.upper())
            if verdict.get("reasons"):
                text += " (" + ", ".join(verdict["reasons"]) + ")"
            self.ui.statusLabel.styleSheet = f"color: {self.VERDICT_COLORS.get(status, '')}; font-weight: bold"
        else:
            self.ui.statusLabel.styleSheet = ""
        self.ui.statusLabel.text = text


#
# FusionRegistrationLogic
#


class FusionRegistrationLogic(ScriptedLoadableModuleLogic):
    """Turns MRML nodes into calls of the ``medtorch`` core and its results back into nodes."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return FusionRegistrationParameterNode(super().getParameterNode())

    def requirementsPath(self) -> str:
        return os.path.join(os.path.dirname(__file__), "Resources", "requirements.txt")

    def ensureDependencies(self) -> None:
        from medtorch.slicer.dependencies import ensure_dependencies

        ensure_dependencies(self.requirementsPath(), "Fusion Registration", ask=slicer.util.confirmOkCancelDisplay)

    def blendJob(self, fixedVolume, movingVolume, weight: float = 0.5, normalization: str = "percentile",
                 outputVolume=None, showResult: bool = True, device: str = "auto", overwriteInput: bool = False):
        """Prepare the blend as a job: run it with ``.run_blocking()`` or ``.start()``.

        The moving volume is resampled through both volumes' parent transforms. Nothing in
        the scene changes until the job finishes; the inputs are never modified.
        """
        from medtorch.errors import MedTorchInputError
        from medtorch.slicer import mrml
        from medtorch.slicer.jobs import LogicJob
        from medtorch.ops.fusion import BlendRequest

        if not fixedVolume or not movingVolume:
            raise MedTorchInputError("the fixed or moving volume is not set", "select both volumes")
        self._refuseReplacingInputs(fixedVolume, movingVolume, outputVolume, overwriteInput)
        self.ensureDependencies()
        inputs, matrix = self._volumesAndTransform(fixedVolume, movingVolume)
        request = BlendRequest(weight=float(weight), normalization=normalization, device=device, matrix=matrix)
        name = slicer.mrmlScene.GenerateUniqueName(f"{movingVolume.GetName()} fused with {fixedVolume.GetName()}")

        def apply(result):
            fused = result.volumes["fused"]
            if outputVolume is not None:
                node = mrml.update_node_from_volume(outputVolume, fused)
            else:
                node = mrml.node_from_volume(fused, name)
            node.SetAndObserveTransformNodeID(fixedVolume.GetTransformNodeID())
            node.SetAttribute("MedTorch.operation", "blend")
            node.SetAttribute("MedTorch.weight", str(weight))
            node.SetAttribute("MedTorch.overlapFraction", f"{result.values['overlap_fraction']:.4f}")
            if node.GetDisplayNode():
                node.GetDisplayNode().AutoWindowLevelOn()
            if showResult:
                mrml.show_in_slice_views(background=node)
            return node

        return LogicJob(request, inputs, apply, slicer.mrmlScene)

    def blend(self, fixedVolume, movingVolume, weight: float = 0.5, normalization: str = "percentile",
              outputVolume=None, showResult: bool = True, device: str = "auto"):
        """Blocking blend (scripts and tests). Returns the output volume node."""
        return self.blendJob(fixedVolume, movingVolume, weight, normalization, outputVolume, showResult,
                             device).run_blocking()

    # -- fusion --------------------------------------------------------------------------------

    @staticmethod
    def _colorMap(colorMap: Optional[str]) -> Optional[str]:
        if colorMap is None or str(colorMap).strip().lower() in ("", "none"):
            return None
        return str(colorMap).strip()

    @staticmethod
    def parseMethods(text) -> list:
        """Method names from ``"dwt, gff"`` or a list; unknown names are refused."""
        from medtorch.errors import MedTorchInputError
        from medtorch.fusion.methods import METHODS

        items = text.split(",") if isinstance(text, str) else list(text or [])
        methods = list(dict.fromkeys(str(m).strip().lower() for m in items if str(m).strip()))
        if not methods:
            raise MedTorchInputError("no fusion methods were listed", "list methods separated by commas, e.g. dwt,gff,pca")
        bad = [m for m in methods if m not in METHODS]
        if bad:
            raise MedTorchInputError(f"unknown fusion method(s): {', '.join(bad)}", "use any of " + ", ".join(METHODS))
        return methods

    @staticmethod
    def fusionMethodParams(method: str, weight: float = 0.5, wavelet: str = "haar", dwtLevels: int = 3,
                           laplacianLevels: int = 4, gffR1: int = 45, gffEps1: float = 0.3, gffR2: int = 7,
                           gffEps2: float = 1e-6, cnnIterations: int = 150, cnnCheckpoint: str = "",
                           seed: int = 0) -> dict:
        """The core parameters (``medtorch.fusion.methods.METHODS``) of ``method`` from the module's fields."""
        method = str(method).strip().lower()
        if method == "average":
            return {"weight": float(weight)}
        if method == "dwt":
            return {"wavelet": str(wavelet), "levels": int(dwtLevels)}
        if method == "laplacian":
            return {"levels": int(laplacianLevels)}
        if method == "gff":
            return {"r1": int(gffR1), "eps1": float(gffEps1), "r2": int(gffR2), "eps2": float(gffEps2)}
        if method == "cnn":
            out = {"iterations": int(cnnIterations), "seed": int(seed)}
            if cnnCheckpoint and str(cnnCheckpoint).strip():
                out["checkpoint"] = str(cnnCheckpoint).strip()
            return out
        return {}

    def _modality(self, node, given: str) -> str:
        """``given`` unless 'auto'; else the node's DICOM modality when it is one fusion knows, else 'auto'."""
        from medtorch.errors import MedTorchInputError
        from medtorch.fusion.prepare import canonical_modality
        from FusionRegistrationLib import fusion_scene as sf

        text = str(given or "auto")
        if text.strip().lower() != "auto":
            return canonical_modality(text)
        found = sf.node_modality(node)
        if not found:
            return "auto"
        try:
            return canonical_modality(found)
        except MedTorchInputError:
            return "auto"

    @staticmethod
    def _volumesAndTransform(fixedVolume, movingVolume):
        """``{"fixed", "moving"[, "displacement"]}`` and the linear part of the transform between
        the two volumes (4x4 LPS rows, or None), as the fusion requests take them."""
        from medtorch.slicer import mrml

        inputs = {"fixed": mrml.volume_from_node(fixedVolume), "moving": mrml.volume_from_node(movingVolume)}
        matrix = None
        transform = mrml.transform_between_volumes(fixedVolume, movingVolume)
        if transform is not None and not hasattr(transform, "geometry"):
            matrix = tuple(tuple(row) for row in transform.tolist())
        elif transform is not None:
            inputs["displacement"] = transform
        return inputs, matrix

    @staticmethod
    def isColourImage(node) -> bool:
        """Whether a vector volume node is an RGB(A) colour image (3 or 4 components of 8- or 16-bit
        unsigned integers, as Slicer loads a colour PNG, JPEG, TIFF or BMP)."""
        import vtk

        image = node.GetImageData() if node is not None else None
        if image is None:
            return False
        return image.GetNumberOfScalarComponents() in (3, 4) and image.GetScalarType() in (
            vtk.VTK_UNSIGNED_CHAR, vtk.VTK_UNSIGNED_SHORT)

    @staticmethod
    def _refuseReplacingInputs(fixedVolume, movingVolume, outputVolume, overwriteInput: bool) -> None:
        from medtorch.slicer.jobs import inputs_replaced, refuse_replacing_inputs

        refuse_replacing_inputs(inputs_replaced({"output volume": outputVolume},
                                                {"fixed volume": fixedVolume, "moving volume": movingVolume}),
                                overwriteInput)

    def _fusionInputs(self, fixedVolume, movingVolume, outputVolume=None, overwriteInput: bool = False):
        """Checked inputs: ``{"fixed", "moving"[, "displacement"]}`` and the transform matrix (or None)."""
        from medtorch.errors import MedTorchInputError
        from medtorch.slicer import mrml

        if not fixedVolume or not movingVolume:
            raise MedTorchInputError("the fixed or moving volume is not set", "select both volumes")
        if fixedVolume is movingVolume:
            raise MedTorchInputError("the fixed and moving volumes are the same node", "select two different volumes")
        self._refuseReplacingInputs(fixedVolume, movingVolume, outputVolume, overwriteInput)
        for role, node in (("fixed", fixedVolume), ("moving", movingVolume)):
            if node.IsA("vtkMRMLLabelMapVolumeNode") or (node.IsA("vtkMRMLVectorVolumeNode")
                                                           and not self.isColourImage(node)):
                raise MedTorchInputError(f"the {role} volume {node.GetName()} is not a grey-value volume or an RGB "
                                         "colour image", "select scalar volumes (CT, MRI, PET, SPECT), or an RGB "
                                         "colour PET/SPECT image (e.g. a PNG) to fuse with a grey one")
        self.ensureDependencies()
        return self._volumesAndTransform(fixedVolume, movingVolume)

    def _intensityParams(self, fixedVolume, movingVolume, method, normalization, fixedModality, movingModality,
                         ctWindow, colorMap):
        """Modalities, normalisation, CT window and colour map, checked before anything runs."""
        from medtorch.errors import MedTorchInputError
        from medtorch.fusion.fuse import resolve_functional
        from medtorch.intensity import CT_WINDOWS

        modF = self._modality(fixedVolume, fixedModality)
        modM = self._modality(movingVolume, movingModality)
        cmap = self._colorMap(colorMap)
        if normalization not in ("auto", "percentile", "none"):
            raise MedTorchInputError(f"unknown normalization {normalization!r}", "use auto, percentile or none")
        if normalization == "none" and method != "average":
            raise MedTorchInputError(f"raw intensities (normalization 'none') only make sense for 'average', not {method}",
                                     "use normalization 'auto' or 'percentile'")
        if str(ctWindow) not in CT_WINDOWS:
            raise MedTorchInputError(f"unknown CT window {ctWindow!r}", "use one of " + ", ".join(CT_WINDOWS))
        if cmap is not None:
            if cmap.lower() not in ("hot", "jet", "rainbow", "gray", "grey"):
                raise MedTorchInputError(f"unknown colour map {cmap!r}", "use hot, jet, rainbow or gray")
            try:
                resolve_functional("OT" if modF == "auto" else modF, "OT" if modM == "auto" else modM, None, cmap)
            except MedTorchInputError as exc:
                raise MedTorchInputError(
                    exc.problem, "set the colour map to 'none' for anatomical pairs (CT, MRI); for a PET or SPECT "
                    "moving volume set its modality to PT or NM (Fusion section, 'Moving modality')") from None
        if cmap is not None and cmap.lower() == "grey":
            cmap = "gray"
        return {"fixed_modality": modF, "moving_modality": modM, "normalization": normalization,
                "ct_window": str(ctWindow), "color_map": cmap, "assume_aligned": True}

    def fuseJob(self, fixedVolume, movingVolume, method: str = "average", weight: float = 0.5,
                methodParams: Optional[dict] = None, normalization: str = "auto", fixedModality: str = "auto",
                movingModality: str = "auto", ctWindow: str = "bone", colorMap: Optional[str] = None,
                computeMetrics: bool = True, outputVolume=None, showResult: bool = True, showIn3D: bool = True,
                opacity: float = 0.5, device: str = "auto", seed: int = 0, overwriteInput: bool = False):
        """Prepare a fusion as a job: run it with ``.run_blocking()`` or ``.start()``; it gives a
        :class:`FusionOutput`.

        The moving volume is resampled onto the fixed grid through the transforms the two
        volumes are under (after Register: the transform registration made), as Slicer shows
        them; each is brought to [0, 1] (CT: ``ctWindow`` preset; MRI and the rest: 1st-99th
        percentiles; ``*Modality`` 'auto' takes the node's DICOM modality) and fused by
        ``method`` (average, dwt, laplacian, gff, gradient, pca, cnn; ``methodParams`` as in
        ``medtorch.fusion.methods.METHODS``, ``weight`` for average). With ``colorMap`` (a PET
        or SPECT moving volume) the fusion is in colour and an RGB vector volume is made too.
        The fused volume (float, [0, 1]) goes to a new node (or ``outputVolume``), under the
        fixed volume's parent transform; metrics go into a table. Nothing in the scene changes
        until the job finishes; the inputs are never modified, unless ``outputVolume`` is one of
        them and ``overwriteInput`` (the Widget asks first).
        """
        from medtorch.errors import MedTorchInputError
        from medtorch.fusion.methods import check_params
        from medtorch.slicer.jobs import LogicJob
        from medtorch.ops.fusion import FuseRequest

        key = str(method).strip().lower()
        mp = dict(methodParams or {})
        if key == "average":
            mp.setdefault("weight", float(weight))
        if key == "cnn":
            mp.setdefault("seed", int(seed))
            ckpt = mp.get("checkpoint")
            if ckpt and not os.path.isfile(str(ckpt)):
                raise MedTorchInputError(f"the CNN checkpoint {ckpt} does not exist",
                                         "choose an existing .pt file, or leave the checkpoint empty to train on the pair")
        check_params(key, mp)
        if not 0.0 <= float(opacity) <= 1.0:
            raise MedTorchInputError(f"the foreground opacity {opacity} is outside [0, 1]", "give a value from 0 to 1")
        intensity = self._intensityParams(fixedVolume, movingVolume, key, normalization, fixedModality,
                                          movingModality, ctWindow, colorMap)
        inputs, matrix = self._fusionInputs(fixedVolume, movingVolume, outputVolume, overwriteInput)
        request = FuseRequest(method=key, method_params=mp, metrics="3d" if computeMetrics else None, device=device,
                              matrix=matrix, **intensity)
        name = slicer.mrmlScene.GenerateUniqueName(f"{movingVolume.GetName()} fused with {fixedVolume.GetName()} ({key})")
        cmap = intensity["color_map"]

        def apply(result):
            import json

            from FusionRegistrationLib import fusion_scene as sf

            nodes = sf.add_fuse_result(result, fixedVolume, movingVolume, name, output_node=outputVolume, show=False)
            fused = nodes["fused"]
            info = dict(result.values.get("info") or {})
            fused.SetAttribute("MedTorch.parameters", json.dumps(info.get("params", {}), default=str, sort_keys=True))
            for attr, k in (("fixedIntensity", "fixed_intensity"), ("movingIntensity", "moving_intensity"),
                            ("movingPlacement", "moving_placement"), ("device", "device")):
                if k in info:
                    fused.SetAttribute(f"MedTorch.{attr}", str(info[k]))
            if "seed" in info.get("params", {}):
                fused.SetAttribute("MedTorch.seed", str(info["params"]["seed"]))
            if nodes["rgb"] is not None:
                nodes["rgb"].SetAttribute("MedTorch.operation", "fuse")
                nodes["rgb"].SetAttribute("MedTorch.method", key)
                nodes["rgb"].SetAttribute("MedTorch.colorMap", str(cmap))
            if showResult:
                sf.show_fusion_in_views(fixedVolume, movingVolume, float(opacity), cmap)
            if showIn3D:
                sf.show_volume_rendering(fused)
            return FusionOutput(fused, nodes["rgb"], nodes["table"], key, dict(result.values.get("metrics") or {}), info)

        return LogicJob(request, inputs, apply, slicer.mrmlScene)

    def fuse(self, fixedVolume, movingVolume, **kwargs):
        """Blocking fusion (scripts and tests). Returns a :class:`FusionOutput`."""
        return self.fuseJob(fixedVolume, movingVolume, **kwargs).run_blocking()

    def evaluateJob(self, fixedVolume, movingVolume, methods=None, baseline: str = "dwt", metric: str = "QABF",
                    methodParams: Optional[dict] = None, normalization: str = "auto", fixedModality: str = "auto",
                    movingModality: str = "auto", ctWindow: str = "bone", colorMap: Optional[str] = None,
                    device: str = "auto", tableNode=None, showChart: bool = True, miUnit: str = "bits"):
        """Compare fusion methods on the pair as a job (``.run_blocking()`` or ``.start()``); it
        gives an :class:`EvaluationOutput`.

        Every method fuses the pair as :meth:`fuseJob` would and is scored in 3D and on every
        axial slice that carries data; each is tested against ``baseline`` over the slices
        (Wilcoxon signed-rank, paired t). Results: a table node with one row per method and a
        column per metric (new, or ``tableNode``), a table of the paired tests, and a box plot
        of ``metric``'s per-slice values per method (a plot chart node, shown in the layout
        when ``showChart``). MI is in ``miUnit`` (bits or nats).
        """
        from medtorch.errors import MedTorchInputError
        from medtorch.fusion.methods import check_params
        from medtorch.fusion.metrics import METRICS, metric_key
        from medtorch.slicer.jobs import LogicJob
        from medtorch.ops.fusion import FuseCompareRequest

        names = self.parseMethods(methods if methods is not None else FUSION_METHODS[:-1])
        base = str(baseline).strip().lower()
        self.parseMethods([base])
        metric = {metric_key(m): m for m in METRICS}.get(metric_key(metric), metric)  # SSIM: the summed SSIM_sum
        if metric not in METRICS:
            raise MedTorchInputError(f"unknown metric {metric!r} for the box plot", "use one of " + ", ".join(METRICS))
        if miUnit not in ("bits", "nats"):
            raise MedTorchInputError(f"unknown MI unit {miUnit!r}", "use bits or nats")
        params_by = {str(k).lower(): dict(v or {}) for k, v in (methodParams or {}).items()}
        for m in set(names) | {base}:
            check_params(m, params_by.get(m))
        norm = "auto" if normalization == "none" else normalization  # raw intensities suit only 'average'
        intensity = self._intensityParams(fixedVolume, movingVolume, base, norm, fixedModality, movingModality,
                                          ctWindow, colorMap)
        inputs, matrix = self._fusionInputs(fixedVolume, movingVolume)
        request = FuseCompareRequest(methods=tuple(names), baseline=base, method_params=params_by, per_slice=True,
                                     mi_unit=miUnit, device=device, matrix=matrix, **intensity)
        title = slicer.mrmlScene.GenerateUniqueName(f"Fusion methods: {movingVolume.GetName()} / {fixedVolume.GetName()}")

        def apply(result):
            from medtorch.fusion.compare import slice_rows
            from FusionRegistrationLib import fusion_scene as sf

            values = result.values
            rows = list(values["rows"])
            table = sf.metrics_table_node(rows, title, columns=["method", "seconds", *METRICS, "seed"],
                                          table_node=tableNode)
            if tableNode is not None:
                table.SetName(title)
            table.SetAttribute("MedTorch.operation", "fuse_compare")
            table.SetAttribute("MedTorch.baseline", values["baseline"])
            table.SetAttribute("MedTorch.miUnit", miUnit)
            table.SetAttribute("MedTorch.slicesScored", str(len(values.get("slice_index") or [])))
            statsTable = None
            if values.get("stats"):
                statsTable = sf.metrics_table_node(values["stats"], slicer.mrmlScene.GenerateUniqueName(
                    f"{title} paired tests (vs {values['baseline']}, over slices)"))
            chart = None
            per = slice_rows(values.get("slices") or {}, values.get("slice_index") or [])
            if per:
                chart = sf.box_plot_chart(per, metric, values["methods"], name=f"{metric} per slice ({title})",
                                          show=showChart)
            return EvaluationOutput(table, statsTable, chart, rows, list(values.get("stats") or []),
                                    list(values["methods"]), dict(values.get("info") or {}))

        return LogicJob(request, inputs, apply, slicer.mrmlScene)

    def evaluate(self, fixedVolume, movingVolume, **kwargs):
        """Blocking evaluation of fusion methods (scripts and tests). Returns an :class:`EvaluationOutput`."""
        return self.evaluateJob(fixedVolume, movingVolume, **kwargs).run_blocking()

    # -- registration --------------------------------------------------------------------------

    def _localPoints(self, markupsNode, volumeNode):
        """A point list's positions in the volume's local LPS space (through its parent transform)."""
        import numpy as np
        from medtorch.errors import MedTorchInputError
        from medtorch.slicer import mrml
        from medtorch.slicer.mrml import lps_points_from_markups

        world = lps_points_from_markups(markupsNode)
        parent = volumeNode.GetParentTransformNode()
        if parent is None:
            return world
        if not parent.IsTransformToWorldLinear():
            raise MedTorchInputError(f"{volumeNode.GetName()} is under a non-linear transform",
                                     "harden that transform first, or remove the landmarks")
        ras = mrml.ras_matrix_between(None, parent)  # world -> the volume's parent space
        lps = coords.flip_affine(ras)
        return world @ lps[:3, :3].T + lps[:3, 3]

    @staticmethod
    def registrationInputsReplaced(fixedVolume, movingVolume, resampledVolume=None, similarityMapVolume=None) -> list:
        """The registration's output volumes that are one of its input volumes."""
        from medtorch.slicer.jobs import inputs_replaced

        return inputs_replaced({"resampled volume": resampledVolume, "similarity map volume": similarityMapVolume},
                               {"fixed volume": fixedVolume, "moving volume": movingVolume})

    def registerJob(self, fixedVolume, movingVolume, mode: str = "rigid", metric: str = "mi", engine: str = "torch",
                    fixedMask=None, movingMask=None, fixedFiducials=None, movingFiducials=None,
                    placeUnderTransform: bool = True, harden: bool = False, device: str = "auto", seed: int = 0,
                    initialization: str = "auto", outputTransform=None, resampledVolume=None, showFused: bool = True,
                    options: Optional[dict] = None, similarityMap: bool = False, similarityMapVolume=None,
                    verdictTable=None, verdictOptions: Optional[dict] = None, model: str = "", refine: bool = False,
                    overwriteInput: bool = False):
        """Prepare a registration as a job: run it with ``.run_blocking()`` or ``.start()``.

        The volumes are registered in their local coordinates; when they are under linear
        transforms, the transform between them is the starting point. The result (ITK
        convention, fixed -> moving) becomes a linear or grid transform node placed under the
        fixed volume's parent transform, a resampled volume on the fixed grid, a report table,
        and report attributes (``MedTorch.*``) on the transform node. The moving volume is put
        under the transform if ``placeUnderTransform`` and hardened only if ``harden``.
        The verdict (pass / warn / fail, judged without landmarks) goes into a table with a row per
        check (``verdictTable``, or a new one) and the ``MedTorch.verdict`` attribute; with
        ``similarityMap`` the verdict's local similarity becomes a volume (``similarityMapVolume``,
        or a new one) on the fixed grid. Nothing in the scene changes until the job finishes.
        ``engine="learned"``: ``model`` is the registration model pack (.zip) whose network predicts
        the deformable field (the mode is then deformable); ``refine`` refines it with the
        deformable optimiser (instance optimisation).
        A ``resampledVolume`` that is the fixed or moving volume is refused unless ``overwriteInput``
        (the Widget asks first); a moving volume replaced by its resampled self is on the fixed grid
        already, so it is not put under the transform.
        """
        import numpy as np
        from medtorch.errors import MedTorchInputError
        from medtorch.slicer import mrml
        from medtorch.slicer.jobs import LogicJob
        from medtorch.ops.registration import RegisterRequest

        if not fixedVolume or not movingVolume:
            raise MedTorchInputError("the fixed or moving volume is not set", "select both volumes")
        if fixedVolume is movingVolume:
            raise MedTorchInputError("the fixed and moving volumes are the same node", "select two different volumes")
        from medtorch.slicer.jobs import refuse_replacing_inputs

        refuse_replacing_inputs(self.registrationInputsReplaced(fixedVolume, movingVolume, resampledVolume,
                                                                similarityMapVolume), overwriteInput)
        if resampledVolume is not None and resampledVolume is movingVolume:
            placeUnderTransform, harden = False, False
        if similarityMapVolume is not None and similarityMapVolume is resampledVolume:
            raise MedTorchInputError("the similarity map volume is also the resampled volume",
                                     "choose another volume for the map, or none to create a new one")
        if engine == "learned":
            if not model:
                raise MedTorchInputError("the learned engine needs a model file",
                                         "choose a registration model pack (.zip) under Learned model")
            mode = "deformable"
        if (fixedFiducials is None) != (movingFiducials is None):
            raise MedTorchInputError("landmarks were given for only one of the volumes",
                                     "select a point list for both volumes, or for none")
        self.ensureDependencies()
        inputs = {"fixed": mrml.volume_from_node(fixedVolume), "moving": mrml.volume_from_node(movingVolume)}
        for key, node in (("fixed_mask", fixedMask), ("moving_mask", movingMask)):
            if node is not None:
                inputs[key] = mrml.volume_from_node(node)
        landmarks = {}
        if fixedFiducials is not None:  # a point list without points gives no landmarks
            for key, markups, volume in (("fixed_landmarks", fixedFiducials, fixedVolume),
                                         ("moving_landmarks", movingFiducials, movingVolume)):
                points = self._localPoints(markups, volume)
                landmarks[key] = tuple(tuple(p) for p in points.tolist()) if len(points) else None
        initial = None
        between = mrml.transform_between_volumes(fixedVolume, movingVolume)
        if (between is not None and not hasattr(between, "geometry") and initialization in ("auto", "none")
                and fixedFiducials is None):
            initial = tuple(tuple(row) for row in np.asarray(between).tolist())
        request = RegisterRequest(mode=mode, metric=metric, engine=engine, init=initialization, device=device,
                                  seed=int(seed), options=dict(options or {}), initial_transform=initial,
                                  similarity_map=bool(similarityMap), verdict_options=dict(verdictOptions or {}),
                                  model=str(model) if engine == "learned" else None,
                                  refine=bool(refine) and engine == "learned", **landmarks)
        name = slicer.mrmlScene.GenerateUniqueName(f"{movingVolume.GetName()} to {fixedVolume.GetName()} ({mode})")

        def apply(result):
            return self._applyRegistration(result, fixedVolume, movingVolume, name, placeUnderTransform, harden,
                                           outputTransform, resampledVolume, showFused, similarityMapVolume,
                                           verdictTable)

        return LogicJob(request, inputs, apply, slicer.mrmlScene)

    def _applyRegistration(self, result, fixedVolume, movingVolume, name, placeUnderTransform, harden,
                           outputTransform, resampledVolume, showFused, similarityMapVolume=None, verdictTable=None):
        import numpy as np
        from medtorch.slicer import mrml
        from medtorch.slicer.mrml import registration_transform_node

        affine = np.asarray(result.values["affine"], dtype=np.float64)
        report = dict(result.values.get("report") or {})
        displacement = result.volumes.get("displacement")
        transformNode = registration_transform_node(affine, displacement, name, node=outputTransform)
        transformNode.SetAndObserveTransformNodeID(fixedVolume.GetTransformNodeID())
        transformNode.SetAttribute("MedTorch.operation", "register")
        for key in ("engine", "mode", "metric", "final_similarity", "jacobian_min", "folding_percent", "runtime_s",
                    "device", "seed", "init", "tre_mean_mm", "tre_p95_mm", "tre_max_mm", "verdict", "verdict_score"):
            if report.get(key) is not None:
                transformNode.SetAttribute(f"MedTorch.{key}", str(report[key]))
        resampled = result.volumes.get("resampled")
        resampledNode = None
        if resampled is not None:
            if resampledVolume is not None:
                resampledNode = mrml.update_node_from_volume(resampledVolume, resampled)
            else:
                resampledNode = mrml.node_from_volume(resampled, slicer.mrmlScene.GenerateUniqueName(
                    f"{movingVolume.GetName()} registered"))
            resampledNode.SetAndObserveTransformNodeID(fixedVolume.GetTransformNodeID())
            resampledNode.SetAttribute("MedTorch.operation", "register")
            if resampledNode.GetDisplayNode():
                resampledNode.GetDisplayNode().AutoWindowLevelOn()
        table = self._reportTable(report, f"{name} report")
        verdict = result.values.get("verdict")
        verdictNode = self._verdictTable(verdict, f"{name} verdict", verdictTable) if verdict else None
        similarityNode = None
        smap = result.volumes.get("similarity_map")
        if smap is not None:
            if similarityMapVolume is not None:
                similarityNode = mrml.update_node_from_volume(similarityMapVolume, smap)
            else:
                similarityNode = mrml.node_from_volume(smap, slicer.mrmlScene.GenerateUniqueName(
                    f"{movingVolume.GetName()} local similarity"))
            similarityNode.SetAndObserveTransformNodeID(fixedVolume.GetTransformNodeID())
            similarityNode.SetAttribute("MedTorch.operation", "register")
            similarityNode.SetAttribute("MedTorch.what", "local similarity after registration (0-1)")
        if placeUnderTransform or harden:
            movingVolume.SetAndObserveTransformNodeID(transformNode.GetID())
        if harden:
            logic = getattr(getattr(slicer.modules, "transforms", None), "logic", None)
            if logic is not None:
                logic().hardenTransform(movingVolume)
            else:  # pragma: no cover - every Slicer has the Transforms module
                movingVolume.HardenTransform()
        if showFused:
            foreground = movingVolume if (placeUnderTransform or harden) else resampledNode
            mrml.show_in_slice_views(background=fixedVolume, foreground=foreground, foreground_opacity=0.5)
        return RegistrationOutput(transformNode, resampledNode, table, report, affine, verdict, verdictNode,
                                  similarityNode)

    #: The verdict table's columns (a row per check).
    VERDICT_COLUMNS = ("check", "value", "threshold", "status", "message")

    def _verdictTable(self, verdict: dict, name: str, tableNode=None):
        """A table node with a row per check of ``verdict`` (name, value, threshold, status,
        message); ``tableNode`` is refilled if given. Its ``MedTorch.verdict`` attribute holds the status."""
        from medtorch.slicer.tables import table_node_from_rows
        from medtorch.verdict import Verdict

        v = Verdict.from_dict(verdict)
        rows = [dict(zip(self.VERDICT_COLUMNS, (c.name, c.value_text, c.threshold_text, c.status, c.message)))
                for c in v.checks]
        tableNode = table_node_from_rows(rows, name, slicer.mrmlScene, self.VERDICT_COLUMNS, tableNode,
                                         kinds=dict.fromkeys(self.VERDICT_COLUMNS, "str"))
        tableNode.SetAttribute("MedTorch.operation", "register")
        tableNode.SetAttribute("MedTorch.verdict", v.status)
        tableNode.Modified()
        return tableNode

    def _reportTable(self, report: dict, name: str):
        import json

        from medtorch.slicer.tables import table_node_from_rows

        rows = [{"quantity": str(key), "value": value if isinstance(value, str) else json.dumps(value, default=str)}
                for key, value in report.items()]
        table = table_node_from_rows(rows, name, slicer.mrmlScene, ("quantity", "value"),
                                     kinds={"quantity": "str", "value": "str"})
        table.SetAttribute("MedTorch.operation", "register")
        return table

    def register(self, fixedVolume, movingVolume, **kwargs):
        """Blocking registration (scripts and tests). Returns a :class:`RegistrationOutput`."""
        return self.registerJob(fixedVolume, movingVolume, **kwargs).run_blocking()


class FusionOutput:
    """What a fusion put in the scene: ``fusedNode`` (scalar, [0, 1]; the fused luminance for
    colour fusion), ``rgbNode`` (RGB vector volume of colour fusion, else None), ``outputNode``
    (the RGB node for colour fusion, else the fused node), ``tableNode`` (the metrics, or None),
    the ``method``, the ``metrics`` dict and the run's ``info`` (parameters, modalities, seed)."""

    def __init__(self, fusedNode, rgbNode, tableNode, method, metrics, info) -> None:
        self.fusedNode = fusedNode
        self.rgbNode = rgbNode
        self.outputNode = rgbNode if rgbNode is not None else fusedNode
        self.tableNode = tableNode
        self.method = method
        self.metrics = metrics
        self.info = info


class EvaluationOutput:
    """What an evaluation put in the scene: ``tableNode`` (a row per method, a column per
    metric), ``statsTableNode`` (paired tests against the baseline over slices), ``chartNode``
    (box plot of the chosen metric per method), and the ``rows``, ``stats`` and ``methods``."""

    def __init__(self, tableNode, statsTableNode, chartNode, rows, stats, methods, info) -> None:
        self.tableNode = tableNode
        self.statsTableNode = statsTableNode
        self.chartNode = chartNode
        self.rows = rows
        self.stats = stats
        self.methods = methods
        self.info = info


class RegistrationOutput:
    """What a registration put in the scene: ``transformNode``, ``resampledNode``, ``tableNode``
    (the report), the ``report`` dict, the ``affine`` (4x4 LPS, fixed -> moving), the ``verdict``
    (a dict: ``status``, ``reasons``, ``checks``), ``verdictTableNode`` (a row per check) and
    ``similarityMapNode`` (the local similarity volume, or None)."""

    def __init__(self, transformNode, resampledNode, tableNode, report, affine, verdict=None, verdictTableNode=None,
                 similarityMapNode=None) -> None:
        self.transformNode = transformNode
        self.resampledNode = resampledNode
        self.tableNode = tableNode
        self.report = report
        self.affine = affine
        self.verdict = verdict
        self.verdictTableNode = verdictTableNode
        self.similarityMapNode = similarityMapNode


#
# FusionRegistrationTest
#


class FusionRegistrationTest(ScriptedLoadableModuleTest):
    """Self-test: runs on synthetic volumes made here (no download), in Slicer and headless."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_BlendSameGrid()
        self.setUp()
        self.test_BlendThroughParentTransform()
        self.setUp()
        self.test_BlendInBackground()
        self.setUp()
        self.test_FuseMethodsAndEvaluate()
        self.setUp()
        self.test_RegisterRigidMovesMovingOntoFixed()
        self.setUp()
        self.test_RegisterDeformableGridTransform()
        self.setUp()
        self.test_RegisterLearnedModel()

    def _addVolume(self, volume, name):
        from medtorch.slicer import mrml

        return mrml.node_from_volume(volume, name)

    def _visual(self):
        """Renders of Slicer's views for the visual checks (medtorch.slicer.checks); where
        rendering is unavailable they are skipped, and the reason is said once."""
        from medtorch.slicer.checks import VisualChecks

        return VisualChecks.of(self)

    def _checkShownIn3D(self, view, volumeNode, what):
        """The volume rendering of ``volumeNode`` shows in the 3D view, around the volume's centre."""
        from medtorch.slicer import checks

        bounds = [0.0] * 6
        volumeNode.GetRASBounds(bounds)
        view.reset_camera("Anterior", bounds=bounds)
        display = slicer.modules.volumerendering.logic().GetFirstVolumeRenderingDisplayNode(volumeNode)
        self.assertIsNotNone(display, what)
        shown = view.render()
        display.SetVisibility(0)
        empty = view.render()
        display.SetVisibility(1)
        checks.expect_not_blank(shown, background=empty, min_fraction=0.05, what=what)
        found = checks.centroid(~checks.background_mask(shown, empty))
        middle = view.project([(bounds[2 * i] + bounds[2 * i + 1]) / 2.0 for i in range(3)])
        self.assertLess(abs(found[0] - middle[0]) + abs(found[1] - middle[1]), 0.15 * view.size[0],
                        f"{what}: centred at {found}, not at the volume's centre {middle}")

    def test_BlendSameGrid(self):
        import numpy as np
        from medtorch.slicer import mrml
        from medtorch.phantoms import blob_phantom, oblique_geometry

        self.delayDisplay("Blend two volumes on one oblique grid")
        geom = oblique_geometry()
        fixedNode = self._addVolume(blob_phantom(geom), "fixed")
        movingNode = self._addVolume(blob_phantom(geom, noise=5.0, seed=1), "moving")
        fixedBefore = slicer.util.arrayFromVolume(fixedNode).copy()

        logic = FusionRegistrationLogic()
        out = logic.blend(fixedNode, movingNode, weight=0.25)
        self.assertIsNotNone(out)
        self.assertNotIn(out, (fixedNode, movingNode))
        fused = mrml.volume_from_node(out)
        self.assertTrue(fused.geometry.isclose(geom, atol=1e-5))
        self.assertGreaterEqual(float(fused.array.min()), 0.0)
        self.assertLessEqual(float(fused.array.max()), 1.0)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(fixedNode), fixedBefore)
        if self._visual().available:
            from medtorch.slicer import checks

            with self._visual().views() as views:
                red = views["Red"]
                self.assertEqual(red.composite.GetBackgroundVolumeID(), out.GetID())  # the module showed it
                checks.expect_not_blank(red.fit().render(), min_fraction=0.1, what="the blend in the Red view")
        self.delayDisplay("Test passed")

    def test_BlendThroughParentTransform(self):
        import numpy as np
        from medtorch.slicer import mrml
        from medtorch.phantoms import blob_phantom, oblique_geometry

        self.delayDisplay("Moving volume under a parent transform is resampled through it")
        fixedGeom = oblique_geometry()
        movingGeom = oblique_geometry(size=(44, 40, 30), spacing=(1.1, 1.0, 1.5), angles_deg=(-5.0, 10.0, 0.0))
        shiftLps = np.array([6.0, -4.0, 3.0])
        fixed = blob_phantom(fixedGeom)
        # The moving object sits shifted by +shift; its parent transform moves it back by -shift.
        moving = blob_phantom(movingGeom, world_shift=tuple(shiftLps), center=tuple(fixedGeom.center()))
        fixedNode = self._addVolume(fixed, "fixed")
        movingNode = self._addVolume(moving, "moving")
        transformNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "undo shift")
        toParentRas = np.eye(4)
        toParentRas[:3, 3] = coords.ras_from_lps(-shiftLps)
        transformNode.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(toParentRas))

        logic = FusionRegistrationLogic()
        without = mrml.volume_from_node(logic.blend(fixedNode, movingNode, weight=1.0, normalization="none"))
        movingNode.SetAndObserveTransformNodeID(transformNode.GetID())
        withT = mrml.volume_from_node(logic.blend(fixedNode, movingNode, weight=1.0, normalization="none"))
        errWith = float(np.abs(withT.array - fixed.array).mean())
        errWithout = float(np.abs(without.array - fixed.array).mean())
        self.assertLess(errWith, 0.25 * errWithout)
        self.assertLess(errWith, 3.0)
        self.delayDisplay("Test passed")

    def test_BlendInBackground(self):
        import numpy as np
        from medtorch.slicer import mrml
        from medtorch.phantoms import blob_phantom, oblique_geometry

        self.delayDisplay("Background process gives the blocking result")
        geom = oblique_geometry()
        fixedNode = self._addVolume(blob_phantom(geom), "fixed")
        movingNode = self._addVolume(blob_phantom(geom, noise=5.0, seed=2), "moving")
        logic = FusionRegistrationLogic()
        blocking = mrml.volume_from_node(logic.blend(fixedNode, movingNode, weight=0.5))
        background = logic.blendJob(fixedNode, movingNode, weight=0.5).run_background_blocking(timeout=120)
        np.testing.assert_allclose(mrml.volume_from_node(background).array, blocking.array, atol=1e-6)
        self.delayDisplay("Test passed")

    def test_FuseMethodsAndEvaluate(self):
        import numpy as np
        from medtorch.errors import MedTorchInputError
        from medtorch.slicer import mrml
        from medtorch.phantoms import blob_phantom, oblique_geometry

        self.delayDisplay("Fuse through a parent transform (gff), colour fusion of a PET-like volume, compare methods")
        fixedGeom = oblique_geometry(size=(24, 22, 16))
        movingGeom = oblique_geometry(size=(26, 24, 16), spacing=(1.1, 1.0, 1.4), angles_deg=(-5.0, 10.0, 0.0))
        shiftLps = np.array([4.0, -3.0, 2.0])
        fixed = blob_phantom(fixedGeom)
        moving = blob_phantom(movingGeom, world_shift=tuple(shiftLps), center=tuple(fixedGeom.center()), seed=4)
        fixedNode = self._addVolume(fixed, "fixed")
        movingNode = self._addVolume(moving, "moving")
        transformNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "undo shift")
        toParentRas = np.eye(4)
        toParentRas[:3, 3] = coords.ras_from_lps(-shiftLps)
        transformNode.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(toParentRas))
        movingNode.SetAndObserveTransformNodeID(transformNode.GetID())
        movingBefore = slicer.util.arrayFromVolume(movingNode).copy()

        logic = FusionRegistrationLogic()
        small = {"r1": 5, "r2": 2}
        out = logic.fuse(fixedNode, movingNode, method="gff", methodParams=small)
        fused = mrml.volume_from_node(out.fusedNode)
        self.assertTrue(fused.geometry.isclose(fixedGeom, atol=1e-5))
        self.assertGreaterEqual(float(fused.array.min()), 0.0)
        self.assertLessEqual(float(fused.array.max()), 1.0)
        self.assertIn("transform", out.fusedNode.GetAttribute("MedTorch.movingPlacement"))
        self.assertGreater(out.metrics["QABF"], 0.0)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(movingNode), movingBefore)
        visual = self._visual()
        if visual.available:
            from medtorch.slicer import checks

            self.delayDisplay("Visual: the fused volume in a slice view and volume-rendered in 3D")
            with visual.views() as views:
                red = views["Red"]
                red.composite.SetForegroundVolumeID(None)
                red.show(background=out.fusedNode, fit=True)
                checks.expect_not_blank(red.render(), min_fraction=0.2, what="the fused volume in the Red view")
                self._checkShownIn3D(views["3D"], out.fusedNode, "the fused volume rendered in 3D")

        colour = logic.fuse(fixedNode, movingNode, method="average", movingModality="PT", colorMap="hot",
                            computeMetrics=False, showIn3D=False)
        self.assertEqual(colour.outputNode.GetClassName(), "vtkMRMLVectorVolumeNode")
        if visual.available:
            self.delayDisplay("Visual: the PET-like moving volume shows in colour over the fixed one")
            with visual.views() as views:
                red = views["Red"].fit()
                self.assertEqual(red.composite.GetForegroundVolumeID(), movingNode.GetID())  # the module showed it
                fusedView = red.render()
                opacity = red.composite.GetForegroundOpacity()
                red.composite.SetForegroundOpacity(0.0)
                fixedOnly = red.render()
                red.composite.SetForegroundOpacity(opacity)
                checks.expect_not_blank(fixedOnly, min_fraction=0.2, what="the fixed volume in the Red view")
                checks.expect_changed(fusedView, fixedOnly, min_fraction=0.1,
                                      what=f"the moving volume as a {100 * opacity:.0f} % foreground")
                self.assertLess(checks.coloured_fraction(fixedOnly), 0.01, "the fixed volume alone is not grey")
                self.assertGreater(checks.coloured_fraction(fusedView), 0.1,
                                   "the foreground in the 'hot' colour map does not show in colour")
        with self.assertRaises(MedTorchInputError):
            logic.fuseJob(fixedNode, movingNode, movingModality="MR", colorMap="hot")

        evaluation = logic.evaluate(fixedNode, movingNode, methods=["average", "pca"], baseline="dwt",
                                    methodParams={"dwt": {"levels": 2}}, showChart=False)
        self.assertEqual(evaluation.tableNode.GetNumberOfRows(), 3)
        self.assertEqual(evaluation.chartNode.GetClassName(), "vtkMRMLPlotChartNode")
        self.delayDisplay("Test passed")

    def test_RegisterRigidMovesMovingOntoFixed(self):
        import numpy as np
        from medtorch.slicer import mrml
        from medtorch.registration.synthetic import synthetic_pair

        self.delayDisplay("Rigid registration across contrasts; the transform node moves the moving volume onto the fixed one")
        pair = synthetic_pair("rigid", seed=1, size=48, spacing=2.0)
        fixedNode = self._addVolume(pair.fixed, "fixed")
        movingNode = self._addVolume(pair.moving, "moving")
        movingBefore = slicer.util.arrayFromVolume(movingNode).copy()
        logic = FusionRegistrationLogic()
        out = logic.register(fixedNode, movingNode, mode="rigid", metric="mi", seed=0)
        self.assertTrue(out.transformNode.IsA("vtkMRMLLinearTransformNode"))
        self.assertEqual(movingNode.GetTransformNodeID(), out.transformNode.GetID())
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(movingNode), movingBefore)  # not hardened
        # The scene's transform (RAS node, through the hierarchy) maps the fixed landmarks onto the truth.
        matrix = mrml.transform_between_volumes(fixedNode, movingNode)
        mapped = pair.landmarks @ matrix[:3, :3].T + matrix[:3, 3]
        self.assertLess(float(pair.tre(mapped).max()), 0.5)
        # The resampled volume lies on the fixed grid and matches the moving contrast painted there.
        resampled = mrml.volume_from_node(out.resampledNode)
        self.assertTrue(resampled.geometry.isclose(pair.fixed.geometry, atol=1e-5))
        self.assertIn("runtime_s", out.report)
        self.assertIsNotNone(out.transformNode.GetAttribute("MedTorch.final_similarity"))
        self.assertGreater(out.tableNode.GetNumberOfRows(), 5)
        if self._visual().available:
            self.delayDisplay("Visual: under the transform the moving volume lies on the fixed one in the slice views")
            self._checkOverlap(fixedNode, movingNode, out.transformNode)
        self.delayDisplay("Test passed")

    def _checkOverlap(self, fixedNode, movingNode, transformNode):
        """In each slice view through the fixed volume's centre, the moving volume (a different
        contrast) covers the fixed one's pixels better under the transform than without it."""
        from medtorch.slicer import checks

        def head(view, node):
            view.composite.SetBackgroundVolumeID(node.GetID())
            return ~checks.background_mask(view.render(), tolerance=40)

        bounds = [0.0] * 6
        fixedNode.GetRASBounds(bounds)
        centre = [(bounds[2 * i] + bounds[2 * i + 1]) / 2.0 for i in range(3)]
        with self._visual().views() as views:
            for view in views.slices():
                view.composite.SetForegroundVolumeID(None)
                view.show(background=fixedNode, fit=True).jump_to(centre)
                fixed = head(view, fixedNode)
                registered = head(view, movingNode)
                movingNode.SetAndObserveTransformNodeID(None)
                unregistered = head(view, movingNode)
                movingNode.SetAndObserveTransformNodeID(transformNode.GetID())
                overlap = [float((fixed & m).sum() / max((fixed | m).sum(), 1)) for m in (registered, unregistered)]
                self.assertGreater(fixed.mean(), 0.05, f"{view.name}: the fixed volume does not show")
                self.assertGreater(overlap[0], 0.8, f"{view.name}: overlap {overlap[0]:.2f} after registration")
                self.assertGreater(overlap[0], overlap[1] + 0.05,
                                   f"{view.name}: overlap {overlap[0]:.2f} registered, {overlap[1]:.2f} without")

    def test_RegisterDeformableGridTransform(self):
        import numpy as np
        from medtorch.slicer import mrml
        from medtorch.registration.synthetic import synthetic_pair

        self.delayDisplay("Deformable registration gives a grid transform node (RAS) that matches the result")
        pair = synthetic_pair("deformable", seed=2, size=40, spacing=2.0, deform_mm=2.0)
        fixedNode = self._addVolume(pair.fixed, "fixed")
        movingNode = self._addVolume(pair.moving, "moving")
        logic = FusionRegistrationLogic()
        out = logic.register(fixedNode, movingNode, mode="deformable", metric="mi", seed=0,
                             options={"deformable_iterations": [20, 15], "deformable_points": 20000})
        self.assertTrue(out.transformNode.IsA("vtkMRMLGridTransformNode"))
        field = mrml.transform_between_volumes(fixedNode, movingNode)  # sampled from the node, LPS
        self.assertEqual(field.kind, "vector")
        import torch
        from medtorch.resample import transform_points

        nodeMapped = transform_points(torch.from_numpy(pair.landmarks.copy()), field).numpy()
        before = float(pair.tre(pair.landmarks).mean())
        self.assertLess(float(pair.tre(nodeMapped).mean()), 0.3 * before)
        resampled = mrml.volume_from_node(out.resampledNode)
        self.assertTrue(resampled.geometry.isclose(pair.fixed.geometry, atol=1e-5))
        self.assertLess(float(out.report["folding_percent"]), 0.1)
        if self._visual().available:
            self.delayDisplay("Visual: under the grid transform the moving volume lies on the fixed one in the slice views")
            self._checkOverlap(fixedNode, movingNode, out.transformNode)
        self.delayDisplay("Test passed")

    def test_RegisterLearnedModel(self):
        import tempfile
        from pathlib import Path

        from medtorch.io import write_volume
        from medtorch.registration.learned_training import train_registration
        from medtorch.registration.synthetic import synthetic_pair

        self.delayDisplay("The learned engine, on a tiny model trained here, gives a grid transform in the background")
        kw = dict(size=20, spacing=3.5, max_angle_deg=2.0, max_shift_mm=2.0, max_scale=0.0, deform_mm=6.0,
                  same_contrast=True)
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "pairs"
            data.mkdir()
            for s in range(3):
                p = synthetic_pair("deformable", seed=s, **kw)
                write_volume(p.fixed, data / f"c{s}_fixed.nii.gz")
                write_volume(p.moving, data / f"c{s}_moving.nii.gz")
            model = train_registration(data, Path(tmp) / "model.zip", spacing_mm=4.0, steps=6, val_every=3,
                                       val_fraction=0.34, prealign=False, seed=0).path
            pair = synthetic_pair("deformable", seed=7, **kw)
            fixedNode = self._addVolume(pair.fixed, "fixed")
            movingNode = self._addVolume(pair.moving, "moving")
            logic = FusionRegistrationLogic()
            for refine in (False, True):
                job = logic.registerJob(fixedNode, movingNode, engine="learned", model=str(model), refine=refine,
                                        seed=0)
                out = job.run_background_blocking(timeout=600)  # a worker process, as the Register button runs it
                self.assertTrue(out.transformNode.IsA("vtkMRMLGridTransformNode"))
                self.assertEqual(out.report["engine"], "learned")
                self.assertEqual(out.report["mode"], "deformable")
                self.assertEqual(bool(out.report["refine"]), refine)
                self.assertIn(out.verdict["status"], ("pass", "warn"))
            with self.assertRaises(Exception):
                logic.registerJob(fixedNode, movingNode, engine="learned", model="")
        self.delayDisplay("Test passed")

