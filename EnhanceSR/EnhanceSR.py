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
    Choice,
)

from slicer import vtkMRMLScalarVolumeNode

try:
    import medtorch  # installed extension: the core sits beside the module files
except ImportError:  # developer checkout: the core sits beside the module folders
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from medtorch.slicer.widgets import ModuleWidgetMixin

DENOISE_METHODS = ["gaussian", "median", "anisotropic", "bilateral", "nlm", "patch", "dct", "collab", "selfsup"]
SR_METHODS = ["bspline", "linear", "sinc", "selfsup"]
#: The slice profile shapes of selfsup (``SuperresRequest.profile_shape``; a test checks they agree).
SR_PROFILE_SHAPES = ["gaussian", "box", "auto"]
SR_PROFILE_SHAPE_DEFAULT = "gaussian"
CT_WINDOW_CHOICES = ["none", "brain", "subdural", "stroke", "bone", "lung", "mediastinum", "soft_tissue", "liver"]


#
# EnhanceSR
#


class EnhanceSR(ScriptedLoadableModule):
    """Denoise, correct and sharpen a volume; super-resolve thick-slice scans (MedTorch)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Enhance SR")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "MedTorch")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedTorch developers"]
        self.parent.helpText = _("""
Enhance a volume into a new volume. <b>Denoise</b>: Gaussian, median, curvature anisotropic
diffusion, bilateral, non-local means, patch-based, sliding DCT, collaborative (DCT + guided NLM)
or <i>self-supervised</i> (a network trained on this volume alone; noise level estimated, Rician-aware
for MRI). <b>Super-resolve</b> thick slices (through-plane) or upsample isotropically: interpolation
(linear, cubic B-spline, windowed sinc) or <i>self-supervised</i> SR learnt from the volume's own
in-plane slices. <b>Enhance</b>: N4 bias correction, CLAHE, histogram matching, unsharp masking,
CT windows. The input is never modified; long runs show progress and can be cancelled; an optional
difference or checkerboard volume compares before and after (the views are linked). An optional
<b>fidelity map</b> shows where the result departs from what the input supports: for super-resolution the
output re-degraded by the slice profile minus the input (on the input's grid: invented detail shows up),
for denoising the removed component in units of the noise (white noise when only noise was removed,
edges when structure was); its summary is shown when the run is done.
See the <a href="https://github.com/medtorch/SlicerMedTorch#enhancesr">documentation</a>.
""")
        self.parent.acknowledgementText = _("""
MedTorch is built on 3D Slicer, SimpleITK, PyTorch and MONAI.
""")


#
# EnhanceSRParameterNode
#


@parameterNodeWrapper
class EnhanceSRParameterNode:
    """
    inputVolume - the volume to enhance (never modified).
    operation - "denoise", "superres" or "enhance".
    method - denoising method (see DENOISE_METHODS).
    sigma - Gaussian standard deviation, or median radius, in mm.
    conductance - anisotropic diffusion conductance (lower keeps more edges).
    iterations - anisotropic diffusion steps.
    strength - noise-aware denoisers: multiple of the estimated noise level.
    trainIterations - self-supervised methods: training iterations (0 = default).
    seed - random seed of the self-supervised methods (recorded with the result).
    srMethod - super-resolution method (see SR_METHODS).
    factor - super-resolution factor of the thick axis (or of all axes).
    axis - "auto" (the thickest), "i", "j", "k" or "all" (isotropic upsampling).
    fwhm - slice profile FWHM in mm for self-supervised SR (0 = estimate it).
    profileShape - slice profile shape for self-supervised SR: "gaussian", "box" or "auto".
    n4, clahe, unsharp - enhancement steps to run.
    claheClip - CLAHE clip limit.
    unsharpAmount - unsharp masking amount.
    ctWindow - CT window preset ("none" for no windowing).
    referenceVolume - histogram matching reference (none: no matching).
    comparison - "none", "difference" or "checkerboard": an extra before/after volume.
    fidelityMap - also make the fidelity map (denoise and superres) as a new volume.
    outputVolume - where the result goes; a new volume is created when none is chosen.
    showResult - show the result in the slice views (linked), the input as a faded foreground.
    dicomPatientId - Export to DICOM of a volume without a DICOM source: the new patient's ID.
    dicomModality - Export to DICOM: "auto" (the source series'), "CT" or "MR".
    """

    inputVolume: vtkMRMLScalarVolumeNode
    operation: Annotated[str, Choice(["denoise", "superres", "enhance"])] = "denoise"
    method: Annotated[str, Choice(DENOISE_METHODS)] = "collab"
    sigma: Annotated[float, WithinRange(0.1, 10.0)] = 1.0
    conductance: Annotated[float, WithinRange(0.1, 10.0)] = 1.0
    iterations: Annotated[int, WithinRange(1, 100)] = 5
    strength: Annotated[float, WithinRange(0.2, 3.0)] = 1.0
    trainIterations: Annotated[int, WithinRange(0, 5000)] = 0
    seed: Annotated[int, WithinRange(0, 1000000)] = 0
    srMethod: Annotated[str, Choice(SR_METHODS)] = "bspline"
    factor: Annotated[float, WithinRange(1.0, 8.0)] = 2.0
    axis: Annotated[str, Choice(["auto", "i", "j", "k", "all"])] = "auto"
    fwhm: Annotated[float, WithinRange(0.0, 20.0)] = 0.0
    profileShape: Annotated[str, Choice(SR_PROFILE_SHAPES)] = SR_PROFILE_SHAPE_DEFAULT
    n4: bool = True
    clahe: bool = False
    claheClip: Annotated[float, WithinRange(0.001, 1.0)] = 0.01
    unsharp: bool = False
    unsharpAmount: Annotated[float, WithinRange(0.0, 3.0)] = 0.5
    ctWindow: Annotated[str, Choice(CT_WINDOW_CHOICES)] = "none"
    referenceVolume: vtkMRMLScalarVolumeNode
    comparison: Annotated[str, Choice(["none", "difference", "checkerboard"])] = "none"
    fidelityMap: bool = False
    outputVolume: vtkMRMLScalarVolumeNode
    showResult: bool = True
    dicomPatientId: str = ""
    dicomModality: Annotated[str, Choice(["auto", "CT", "MR"])] = "auto"


#
# EnhanceSRWidget
#


class EnhanceSRWidget(ModuleWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    uiFileName = "UI/EnhanceSR.ui"
    applyToolTip = _("Enhance the input volume into a new volume")
    missingInputsToolTip = _("Select an input volume")

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        self.setupModuleWidget(EnhanceSRLogic())
        self.ui.exportDicomButton.connect("clicked(bool)", self.onExportDicomButton)
        self.setupDicomExport(self.ui.exportFolderButton)

    def selectDefaultInputs(self, p) -> None:
        if not p.inputVolume:
            p.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def canApply(self, p) -> bool:
        return bool(p.inputVolume)

    def onApplyButton(self) -> None:
        """Run in a background process with a progress dialog and a Cancel button."""
        from medtorch.slicer.jobs import confirm_replacing_inputs

        with slicer.util.tryWithErrorDisplay(_("Failed to enhance the volume."), waitCursor=True):
            p = self._parameterNode
            clashes = self.logic.inputsReplaced(p)
            if not confirm_replacing_inputs(clashes, slicer.util.confirmOkCancelDisplay):
                self.ui.statusLabel.text = _("Nothing done: the output volume is the input volume.")
                return
            job = self.logic.jobFromParameters(p, overwriteInput=bool(clashes))
            self.runJob(job, _("Enhance SR"), self.onDone)

    def onExportDicomButton(self) -> None:
        """Export to DICOM: the output volume as a new DICOM series, derived from the input's series."""
        p = self._parameterNode
        self.runDicomExport(lambda: self.logic.exportToDicom(
            p.outputVolume, self.ui.exportFolderButton.directory, inputVolume=p.inputVolume,
            patientId=p.dicomPatientId, modality=p.dicomModality, referenceFolder=self.ui.exportSourceFolderLineEdit.currentPath),
            self.ui.exportStatusLabel)

    def onDone(self, outputNode) -> None:
        self._parameterNode.outputVolume = outputNode
        verb = {"denoise": _("Denoised"), "superres": _("Super-resolved"), "enhance": _("Enhanced")}
        text = _("{verb} into {name}").format(verb=verb.get(self._parameterNode.operation, ""),
                                              name=outputNode.GetName())
        summary = outputNode.GetAttribute("MedTorch.fidelitySummary")
        if summary:
            text += "\n" + summary
        self.ui.statusLabel.text = text


#
# EnhanceSRLogic
#


class EnhanceSRLogic(ScriptedLoadableModuleLogic):
    """Turns MRML nodes into calls of the ``medtorch`` core and its results back into nodes."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return EnhanceSRParameterNode(super().getParameterNode())

    def requirementsPath(self) -> str:
        return os.path.join(os.path.dirname(__file__), "Resources", "requirements.txt")

    def ensureDependencies(self) -> None:
        from medtorch.slicer.dependencies import ensure_dependencies

        ensure_dependencies(self.requirementsPath(), "Enhance SR", ask=slicer.util.confirmOkCancelDisplay)

    # -- jobs ------------------------------------------------------------------------------------
    def jobFromParameters(self, p, overwriteInput: bool = False):
        """The job the parameter node describes (what Apply runs). ``overwriteInput``: the
        output volume may be an input (the Widget asks the user first)."""
        train = int(p.trainIterations) or None
        if p.operation == "superres":
            return self.superresJob(p.inputVolume, p.srMethod, p.factor, p.axis, p.fwhm or None, p.outputVolume,
                                    p.showResult, p.comparison, int(p.seed), train, fidelityMap=p.fidelityMap,
                                    profileShape=p.profileShape, overwriteInput=overwriteInput)
        if p.operation == "enhance":
            return self.enhanceJob(p.inputVolume, n4=p.n4, clahe=p.clahe, claheClip=p.claheClip, unsharp=p.unsharp,
                                   unsharpAmount=p.unsharpAmount,
                                   ctWindow=None if p.ctWindow == "none" else p.ctWindow,
                                   referenceVolume=p.referenceVolume, outputVolume=p.outputVolume,
                                   showResult=p.showResult, comparison=p.comparison, overwriteInput=overwriteInput)
        strength = {"gaussian": p.sigma, "median": p.sigma, "anisotropic": p.conductance}.get(p.method, p.strength)
        return self.denoiseJob(p.inputVolume, p.method, strength, p.iterations, p.outputVolume, p.showResult,
                               comparison=p.comparison, seed=int(p.seed), trainIterations=train,
                               fidelityMap=p.fidelityMap, overwriteInput=overwriteInput)

    def inputsReplaced(self, p) -> list:
        """The parameter node's outputs that are one of its inputs (see ``medtorch.slicer.jobs.inputs_replaced``)."""
        from medtorch.slicer.jobs import inputs_replaced

        inputs = {"input volume": p.inputVolume}
        if p.operation == "enhance":
            inputs["reference volume"] = p.referenceVolume
        return inputs_replaced({"output volume": p.outputVolume}, inputs)

    def _checkInput(self, inputVolume, outputVolume, what: str, overwriteInput: bool = False,
                    referenceVolume=None) -> None:
        from medtorch.errors import MedTorchInputError
        from medtorch.slicer.jobs import inputs_replaced, refuse_replacing_inputs

        if not inputVolume:
            raise MedTorchInputError("no input volume is selected", f"select the volume to {what}")
        refuse_replacing_inputs(inputs_replaced({"output volume": outputVolume},
                                                {"input volume": inputVolume, "reference volume": referenceVolume}),
                                overwriteInput)

    def _job(self, request, inputVolume, inputs, outputVolume, showResult: bool, name: str, attributes: dict):
        from medtorch.slicer import mrml
        from medtorch.slicer.jobs import LogicJob

        operation = request.operation

        def apply(result):
            out = result.volumes["output"]
            node = (mrml.update_node_from_volume(outputVolume, out) if outputVolume is not None
                    else mrml.node_from_volume(out, name))
            node.SetAndObserveTransformNodeID(inputVolume.GetTransformNodeID())
            node.SetAttribute("MedTorch.operation", operation)
            for key, value in attributes.items():
                node.SetAttribute(f"MedTorch.{key}", str(value))
            for key, value in result.values.items():
                node.SetAttribute(f"MedTorch.{key}", str(value))
            extra = {}
            if "fidelity" in result.values:
                from medtorch.enhance.fidelity import format_summary

                node.SetAttribute("MedTorch.fidelitySummary", format_summary(result.values["fidelity"]))
            for key in ("comparison", "bias_field", "fidelity"):
                if key in result.volumes:
                    vol = result.volumes[key]
                    label = {"comparison": vol.metadata.get("comparison", "comparison").split(" ")[0],
                             "bias_field": "bias field", "fidelity": "fidelity"}[key]
                    extra[key] = mrml.node_from_volume(vol, slicer.mrmlScene.GenerateUniqueName(
                        f"{inputVolume.GetName()} {label}"))
                    extra[key].SetAndObserveTransformNodeID(inputVolume.GetTransformNodeID())
                    node.SetAttribute(f"MedTorch.{key}NodeID", extra[key].GetID())
            if showResult:
                # before/after: result in the background, the input as a faded foreground, views linked
                mrml.show_in_slice_views(background=node, foreground=inputVolume, foreground_opacity=0.0, link=True)
            return node

        return LogicJob(request, inputs, apply, slicer.mrmlScene)

    def denoiseJob(self, inputVolume, method: str = "collab", strength: Optional[float] = None,
                   iterations: int = 5, outputVolume=None, showResult: bool = True, comparison: str = "none",
                   seed: int = 0, trainIterations: Optional[int] = None, fidelityMap: bool = False,
                   overwriteInput: bool = False):
        """Prepare denoising as a job: run it with ``.run_blocking()`` or ``.start()``.

        ``strength`` is sigma in mm for ``gaussian``, the radius in mm for ``median``, the
        conductance for ``anisotropic``, and a multiple of the estimated noise level for the others.
        ``fidelityMap``: also a new volume of the removed component in units of the noise (its node
        ID in the output's ``MedTorch.fidelityNodeID`` attribute, its summary in ``MedTorch.fidelity``).
        An ``outputVolume`` that is the input is refused unless ``overwriteInput`` (the same in every job).
        """
        from medtorch.slicer import mrml
        from medtorch.ops.enhance import DenoiseRequest

        self._checkInput(inputVolume, outputVolume, "denoise", overwriteInput)
        self.ensureDependencies()
        inputs = {"input": mrml.volume_from_node(inputVolume)}
        request = DenoiseRequest(method=method, strength=strength, iterations=int(iterations), comparison=comparison,
                                 seed=int(seed), train_iterations=trainIterations, fidelity_map=bool(fidelityMap))
        name = slicer.mrmlScene.GenerateUniqueName(f"{inputVolume.GetName()} {method}")
        return self._job(request, inputVolume, inputs, outputVolume, showResult, name,
                         {"method": method, "strength": strength, "seed": seed})

    def superresJob(self, inputVolume, method: str = "bspline", factor: float = 2.0, axis: str = "auto",
                    fwhm: Optional[float] = None, outputVolume=None, showResult: bool = True,
                    comparison: str = "none", seed: int = 0, trainIterations: Optional[int] = None,
                    fidelityMap: bool = False, overwriteInput: bool = False, profileShape: str = "gaussian"):
        """Prepare super-resolution as a job (through-plane, or isotropic with ``axis="all"``).

        ``profileShape``: the slice profile's shape for selfsup (``gaussian``, ``box`` or ``auto``).

        ``fidelityMap``: also a new volume, on the input's grid, of the output re-degraded by the
        slice profile minus the input (node ID in ``MedTorch.fidelityNodeID``).
        """
        from medtorch.slicer import mrml
        from medtorch.ops.enhance import SuperresRequest

        self._checkInput(inputVolume, outputVolume, "super-resolve", overwriteInput)
        self.ensureDependencies()
        inputs = {"input": mrml.volume_from_node(inputVolume)}
        request = SuperresRequest(method=method, factor=float(factor), axis=axis, fwhm_mm=fwhm, comparison=comparison,
                                  seed=int(seed), train_iterations=trainIterations, fidelity_map=bool(fidelityMap),
                                  profile_shape=profileShape)
        name = slicer.mrmlScene.GenerateUniqueName(f"{inputVolume.GetName()} SR x{factor:g}")
        return self._job(request, inputVolume, inputs, outputVolume, showResult, name,
                         {"method": method, "factor": factor, "axis": axis})

    def enhanceJob(self, inputVolume, n4: bool = False, clahe: bool = False, claheClip: float = 0.01,
                   unsharp: bool = False, unsharpAmount: float = 0.5, ctWindow: Optional[str] = None,
                   referenceVolume=None, outputVolume=None, showResult: bool = True, comparison: str = "none",
                   overwriteInput: bool = False):
        """Prepare enhancement (N4, histogram matching, CLAHE, unsharp masking, CT window) as a job."""
        from medtorch.slicer import mrml
        from medtorch.ops.enhance import EnhanceRequest

        self._checkInput(inputVolume, outputVolume, "enhance", overwriteInput, referenceVolume)
        self.ensureDependencies()
        inputs = {"input": mrml.volume_from_node(inputVolume)}
        if referenceVolume is not None:
            inputs["reference"] = mrml.volume_from_node(referenceVolume)
        request = EnhanceRequest(n4=bool(n4), clahe=bool(clahe), clahe_clip=float(claheClip), unsharp=bool(unsharp),
                                 unsharp_amount=float(unsharpAmount), window=ctWindow, comparison=comparison)
        name = slicer.mrmlScene.GenerateUniqueName(f"{inputVolume.GetName()} enhanced")
        return self._job(request, inputVolume, inputs, outputVolume, showResult, name, {})

    # -- Export to DICOM (medtorch.slicer.dicom, the export_dicom operation) -------------------------------
    def exportToDicom(self, outputVolume, outputFolder: str, inputVolume=None, patientId: str = "",
                      modality: str = "auto", referenceFolder: str = "", database=None):
        """Write ``outputVolume`` as a new DICOM series (a new sub-folder of ``outputFolder``), derived
        from the DICOM series of ``inputVolume`` (the one it was loaded from; else the series in
        ``referenceFolder``): it joins that series' patient and study. Without a DICOM source a new
        patient and study are made, and ``patientId`` and ``modality`` (``CT`` or ``MR``; ``auto``: the
        source series') are required (nothing is invented). The series is
        read back and checked in patient space first; a corner more than half a voxel off refuses it
        (``DicomGeometryError``: problem and what to do) and nothing is written.
        Returns a ``medtorch.slicer.dicom.ExportResult`` (``path``, ``values``, ``message``)."""
        from medtorch.slicer.dicom import export_volume

        operation = (outputVolume.GetAttribute("MedTorch.operation") or "") if outputVolume is not None else ""
        method = (outputVolume.GetAttribute("MedTorch.method") or "") if outputVolume is not None else ""
        verb = {"denoise": "denoised", "superres": "super-resolved", "enhance": "enhanced"}.get(operation, "derived")
        derivation = f"{verb} by MedTorch" + (f" ({method})" if method else "")
        return export_volume(outputVolume, outputFolder, reference_node=inputVolume,
                             reference_folder=referenceFolder or None, patient_id=patientId, modality=modality,
                             database=database,
                             description=f"MedTorch {verb}", derivation=derivation)

    # -- blocking ------------------------------------------------------------------------------
    def denoise(self, inputVolume, method: str = "collab", strength: Optional[float] = None, iterations: int = 5,
                outputVolume=None, showResult: bool = True, **kwargs):
        """Blocking denoising (scripts and tests). Returns the output volume node."""
        return self.denoiseJob(inputVolume, method, strength, iterations, outputVolume, showResult, **kwargs).run_blocking()

    def superres(self, inputVolume, method: str = "bspline", factor: float = 2.0, axis: str = "auto", **kwargs):
        """Blocking super-resolution. Returns the output volume node."""
        return self.superresJob(inputVolume, method, factor, axis, **kwargs).run_blocking()

    def enhance(self, inputVolume, **kwargs):
        """Blocking enhancement. Returns the output volume node."""
        return self.enhanceJob(inputVolume, **kwargs).run_blocking()


#
# EnhanceSRTest
#


class EnhanceSRTest(ScriptedLoadableModuleTest):
    """Self-test: runs on synthetic volumes made here (no download), in Slicer and headless."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_DenoiseImprovesPSNR()
        self.setUp()
        self.test_SuperResLandsOnPhysicalGrid()
        self.setUp()
        self.test_CancelLeavesSceneAsItWas()

    def _visual(self):
        """Renders of Slicer's views for the visual checks (medtorch.slicer.checks); where
        rendering is unavailable they are skipped, and the reason is said once."""
        from medtorch.slicer.checks import VisualChecks

        return VisualChecks.of(self)

    def _beforeAfter(self, view, outputNode, inputNode):
        """Renders of ``outputNode`` and ``inputNode`` in ``view``: the module shows the result
        with the input as a foreground at opacity 0, so opacity 1 shows the input (its
        before/after slider)."""
        composite = view.composite
        composite.SetBackgroundVolumeID(outputNode.GetID())
        self.assertEqual(composite.GetForegroundVolumeID(), inputNode.GetID())  # the module's before/after
        composite.SetForegroundOpacity(0.0)
        after = view.render()
        composite.SetForegroundOpacity(1.0)
        before = view.render()
        composite.SetForegroundOpacity(0.0)
        return after, before

    def _psnr(self, image, reference):
        import numpy as np

        mse = float(np.mean((image.astype(np.float64) - reference.astype(np.float64)) ** 2))
        return 10.0 * np.log10(float(reference.max() - reference.min()) ** 2 / mse)

    def test_DenoiseImprovesPSNR(self):
        import numpy as np
        from medtorch.slicer import mrml
        from medtorch.phantoms import blob_phantom, oblique_geometry

        self.delayDisplay("Gaussian, anisotropic and DCT denoising raise PSNR and keep geometry")
        geom = oblique_geometry()
        clean = blob_phantom(geom)
        noisyNode = mrml.node_from_volume(blob_phantom(geom, noise=15.0, seed=3), "noisy")
        before = slicer.util.arrayFromVolume(noisyNode).copy()
        psnrNoisy = self._psnr(before, clean.array)
        logic = EnhanceSRLogic()
        outputs = {}
        for method, strength in (("gaussian", 1.0), ("anisotropic", 1.0), ("dct", 1.0)):
            out = logic.denoise(noisyNode, method, strength, iterations=5)
            result = mrml.volume_from_node(out)
            self.assertTrue(result.geometry.isclose(geom, atol=1e-5))
            self.assertGreater(self._psnr(result.array, clean.array), psnrNoisy + 3.0, method)
            outputs[method] = out
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(noisyNode), before)
        if self._visual().available:
            from medtorch.slicer import checks

            self.delayDisplay("Visual: each denoised volume shows, differs from the noisy one and looks smoother")
            with self._visual().views() as views:
                red = views["Red"].fit()
                for method, out in outputs.items():
                    after, noisy = self._beforeAfter(red, out, noisyNode)
                    what = f"{method}-denoised volume in the Red view"
                    checks.expect_not_blank(after, min_fraction=0.2, what=what)
                    head = ~checks.background_mask(noisy, tolerance=60)
                    checks.expect_changed(after, noisy, min_fraction=0.05, what=what)
                    checks.expect_smoother(after, noisy, max_ratio=0.8, mask=head, what=what)
        self.delayDisplay("Test passed")

    def test_SuperResLandsOnPhysicalGrid(self):
        import numpy as np
        from medtorch.slicer import mrml
        from medtorch.phantoms import blob_phantom, oblique_geometry

        self.delayDisplay("Super-resolution x2 keeps the physical extent; difference volume added")
        geom = oblique_geometry(size=(30, 28, 12), spacing=(1.0, 1.0, 3.0))
        node = mrml.node_from_volume(blob_phantom(geom), "thick")
        out = EnhanceSRLogic().superres(node, "bspline", 3.0, "auto", comparison="difference")
        result = mrml.volume_from_node(out)
        self.assertEqual(tuple(result.size), (30, 28, 36))
        np.testing.assert_allclose(result.spacing, (1.0, 1.0, 1.0), atol=1e-6)
        # first and last slice centres sit 1 mm inside the thick volume's outer slice edges
        first = geom.index_to_physical(np.array([[0.0, 0.0, -1.0 / 3.0]]))[0]
        np.testing.assert_allclose(result.geometry.index_to_physical(np.array([[0.0, 0.0, 0.0]]))[0], first, atol=1e-5)
        diffId = out.GetAttribute("MedTorch.comparisonNodeID")
        self.assertIsNotNone(slicer.mrmlScene.GetNodeByID(diffId))
        if self._visual().available:
            from medtorch.slicer import checks

            self.delayDisplay("Visual: across the thick slices, voxels shown as blocks, the super-resolved volume "
                              "shows finer steps than the input")
            with self._visual().views() as views:
                for volumeNode in (node, out):
                    volumeNode.GetDisplayNode().SetInterpolate(0)  # voxels as blocks: the resolution shows
                for name in ("Yellow", "Green"):  # sagittal and coronal views cut across the slices
                    view = views[name].fit()
                    after, thick = self._beforeAfter(view, out, node)
                    what = f"the super-resolved volume in the {name} view"
                    checks.expect_not_blank(after, min_fraction=0.2, what=what)
                    checks.expect_changed(after, thick, min_fraction=0.05, tolerance=8, what=what)
                    changed = checks.changed_mask(after, thick, tolerance=8)
                    inside = ~checks.background_mask(thick, tolerance=8)
                    self.assertGreater(float((changed & inside).sum() / changed.sum()), 0.9,
                                       f"{what}: the render changed outside the volume's object")
                for volumeNode in (node, out):
                    volumeNode.GetDisplayNode().SetInterpolate(1)
        self.delayDisplay("Test passed")

    def test_CancelLeavesSceneAsItWas(self):
        from medtorch.errors import Cancelled
        from medtorch.slicer import mrml
        from medtorch.slicer.jobs import scene_node_ids
        from medtorch.phantoms import blob_phantom, oblique_geometry

        self.delayDisplay("A cancelled background run stops within 2 s and adds nothing")
        geom = oblique_geometry(size=(96, 96, 80), spacing=(1.0, 1.0, 1.0))
        node = mrml.node_from_volume(blob_phantom(geom, noise=10.0), "big")
        logic = EnhanceSRLogic()
        job = logic.denoiseJob(node, "anisotropic", 1.0, iterations=100)
        before = scene_node_ids(slicer.mrmlScene)
        background = job.start()
        deadline = time.time() + 60
        while background.poll().status == "running" and background.poll().fraction <= 0.0 and time.time() < deadline:
            time.sleep(0.05)  # wait until the worker is really computing
        self.assertEqual(background.poll().status, "running")
        started = time.time()
        background.cancel()
        with self.assertRaises(Cancelled):
            background.wait(timeout=10)
        self.assertLess(time.time() - started, 2.0)
        self.assertEqual(scene_node_ids(slicer.mrmlScene), before)
        self.delayDisplay("Test passed")
