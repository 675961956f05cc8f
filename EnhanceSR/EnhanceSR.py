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
    Choice,
)

from slicer import vtkMRMLScalarVolumeNode

try:
    import medtorch  # installed extension: the core sits beside the module files
except ImportError:  # developer checkout: the core sits beside the module folders
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from medtorch.integration.slicer_widgets import ModuleWidgetMixin


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
Denoise a volume into a new volume: Gaussian smoothing (sigma in mm) or curvature
anisotropic diffusion (edge-preserving, as Slicer's module of that name). The input is
never modified; long runs show progress and can be cancelled.
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
    inputVolume - the volume to denoise (never modified).
    method - "gaussian" or "anisotropic" (curvature anisotropic diffusion).
    sigma - Gaussian standard deviation in mm.
    conductance - anisotropic diffusion conductance (lower keeps more edges).
    iterations - anisotropic diffusion steps.
    outputVolume - where the result goes; a new volume is created when none is chosen.
    showResult - show the result in the slice views.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    method: Annotated[str, Choice(["gaussian", "anisotropic"])] = "gaussian"
    sigma: Annotated[float, WithinRange(0.1, 10.0)] = 1.0
    conductance: Annotated[float, WithinRange(0.1, 10.0)] = 1.0
    iterations: Annotated[int, WithinRange(1, 100)] = 5
    outputVolume: vtkMRMLScalarVolumeNode
    showResult: bool = True


#
# EnhanceSRWidget
#


class EnhanceSRWidget(ModuleWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    uiFileName = "UI/EnhanceSR.ui"
    applyToolTip = _("Denoise the input volume into a new volume")
    missingInputsToolTip = _("Select an input volume")

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        self.setupModuleWidget(EnhanceSRLogic())

    def selectDefaultInputs(self, p) -> None:
        if not p.inputVolume:
            p.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def canApply(self, p) -> bool:
        return bool(p.inputVolume)

    def onApplyButton(self) -> None:
        """Run in a background process with a progress dialog and a Cancel button."""
        with slicer.util.tryWithErrorDisplay(_("Failed to denoise the volume."), waitCursor=True):
            p = self._parameterNode
            strength = p.sigma if p.method == "gaussian" else p.conductance
            job = self.logic.denoiseJob(p.inputVolume, p.method, strength, p.iterations, p.outputVolume, p.showResult)
            self.runJob(job, _("Enhance SR"), self.onDone)

    def onDone(self, outputNode) -> None:
        self._parameterNode.outputVolume = outputNode
        self.ui.statusLabel.text = _("Denoised into {name}").format(name=outputNode.GetName())


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
        from medtorch.integration.dependencies import ensure_dependencies

        ensure_dependencies(self.requirementsPath(), "Enhance SR", ask=slicer.util.confirmOkCancelDisplay)

    def denoiseJob(self, inputVolume, method: str = "gaussian", strength: Optional[float] = None,
                   iterations: int = 5, outputVolume=None, showResult: bool = True):
        """Prepare denoising as a job: run it with ``.run_blocking()`` or ``.start()``.

        ``strength`` is sigma in mm for ``gaussian``, the conductance for ``anisotropic``.
        """
        from medtorch.errors import MedTorchInputError
        from medtorch.integration import slicer_bridge as bridge
        from medtorch.integration.slicer_jobs import LogicJob

        if not inputVolume:
            raise MedTorchInputError("no input volume is selected", "select the volume to denoise")
        if outputVolume is not None and outputVolume is inputVolume:
            raise MedTorchInputError("the output volume is the input volume",
                                     "choose another output volume, or none to create a new one")
        self.ensureDependencies()
        inputs = {"input": bridge.volume_from_node(inputVolume)}
        params = {"method": method, "strength": strength, "iterations": int(iterations)}
        name = slicer.mrmlScene.GenerateUniqueName(f"{inputVolume.GetName()} {method}")

        def apply(result):
            out = result.volumes["output"]
            node = bridge.update_node_from_volume(outputVolume, out) if outputVolume is not None else bridge.node_from_volume(out, name)
            node.SetAndObserveTransformNodeID(inputVolume.GetTransformNodeID())
            node.SetAttribute("MedTorch.operation", "denoise")
            node.SetAttribute("MedTorch.method", method)
            node.SetAttribute("MedTorch.strength", str(strength))
            if showResult:
                bridge.show_in_slice_views(background=node, foreground=inputVolume, foreground_opacity=0.0)
            return node

        return LogicJob("denoise", inputs, params, apply, slicer.mrmlScene)

    def denoise(self, inputVolume, method: str = "gaussian", strength: Optional[float] = None, iterations: int = 5,
                outputVolume=None, showResult: bool = True):
        """Blocking denoising (scripts and tests). Returns the output volume node."""
        startTime = time.time()
        node = self.denoiseJob(inputVolume, method, strength, iterations, outputVolume, showResult).run_blocking()
        logging.info(f"Denoising completed in {time.time() - startTime:.2f} seconds")
        return node


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
        self.test_CancelLeavesSceneAsItWas()

    def _psnr(self, image, reference):
        import numpy as np

        mse = float(np.mean((image.astype(np.float64) - reference.astype(np.float64)) ** 2))
        return 10.0 * np.log10(float(reference.max() - reference.min()) ** 2 / mse)

    def test_DenoiseImprovesPSNR(self):
        import numpy as np
        from medtorch.integration import slicer_bridge as bridge
        from medtorch.phantoms import blob_phantom, oblique_geometry

        self.delayDisplay("Gaussian and anisotropic denoising raise PSNR and keep geometry")
        geom = oblique_geometry()
        clean = blob_phantom(geom)
        noisyNode = bridge.node_from_volume(blob_phantom(geom, noise=15.0, seed=3), "noisy")
        before = slicer.util.arrayFromVolume(noisyNode).copy()
        psnrNoisy = self._psnr(before, clean.array)
        logic = EnhanceSRLogic()
        for method, strength in (("gaussian", 1.0), ("anisotropic", 1.0)):
            out = logic.denoise(noisyNode, method, strength, iterations=5)
            result = bridge.volume_from_node(out)
            self.assertTrue(result.geometry.isclose(geom, atol=1e-5))
            self.assertGreater(self._psnr(result.array, clean.array), psnrNoisy + 3.0, method)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(noisyNode), before)
        self.delayDisplay("Test passed")

    def test_CancelLeavesSceneAsItWas(self):
        from medtorch.errors import Cancelled
        from medtorch.integration import slicer_bridge as bridge
        from medtorch.integration.slicer_jobs import scene_node_ids
        from medtorch.phantoms import blob_phantom, oblique_geometry

        self.delayDisplay("A cancelled background run stops within 2 s and adds nothing")
        geom = oblique_geometry(size=(96, 96, 80), spacing=(1.0, 1.0, 1.0))
        node = bridge.node_from_volume(blob_phantom(geom, noise=10.0), "big")
        logic = EnhanceSRLogic()
        job = logic.denoiseJob(node, "anisotropic", 1.0, iterations=100)
        before = scene_node_ids(slicer.mrmlScene)
        task = job.start()
        deadline = time.time() + 60
        while task.poll().status == "running" and task.poll().fraction <= 0.0 and time.time() < deadline:
            time.sleep(0.05)  # wait until the worker is really computing
        self.assertEqual(task.poll().status, "running")
        started = time.time()
        task.cancel()
        with self.assertRaises(Cancelled):
            task.wait(timeout=10)
        self.assertLess(time.time() - started, 2.0)
        self.assertEqual(scene_node_ids(slicer.mrmlScene), before)
        self.delayDisplay("Test passed")
