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

from slicer import vtkMRMLScalarVolumeNode, vtkMRMLMarkupsFiducialNode, vtkMRMLTransformNode

try:
    import medtorch  # installed extension: the core sits beside the module files
except ImportError:  # developer checkout: the core sits beside the module folders
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from medtorch.integration.slicer_widgets import ModuleWidgetMixin


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
volumes are under) and blend the two into a new volume; each input is first mapped to
[0, 1] by robust percentiles, so a CT and an MRI weigh alike.
See the <a href="https://github.com/medtorch/SlicerMedTorch#fusionregistration">documentation</a>.
""")
        self.parent.acknowledgementText = _("""
MedTorch is built on 3D Slicer, SimpleITK, PyTorch and MONAI.
""")


#
# FusionRegistrationParameterNode
#


@parameterNodeWrapper
class FusionRegistrationParameterNode:
    """
    fixedVolume - the reference: the output has its geometry.
    movingVolume - the volume brought onto the fixed grid.
    blendWeight - share of the moving volume in the blend (0: fixed only, 1: moving only).
    normalization - "percentile": each input mapped to [0, 1]; "none": raw intensities.
    outputVolume - where the blend goes; a new volume is created when none is chosen.
    showResult - show the fused volume in the slice views.
    device - where torch computes: auto ($MEDTORCH_DEVICE, else cuda, then mps, then cpu), cpu, cuda or mps.
    registrationMode - rigid, affine or deformable.
    metric - mi, mind (across modalities), lncc, ncc, mse (same modality).
    engine - torch (MedTorch), sitk (SimpleITK) or elastix.
    initialization - auto, geometry, moments, pax, fiducials or none.
    fixedMask, movingMask - optional binary volumes: only voxels inside are compared.
    fixedFiducials, movingFiducials - optional landmark pairs (in order): initialisation and TRE.
    outputTransform - receives the result (linear or grid transform); a new node when none is chosen.
    resampledVolume - receives the moving volume on the fixed grid; a new node when none is chosen.
    placeUnderTransform - put the moving volume under the result transform.
    hardenTransform - harden the result into the moving volume (changes that node).
    seed - seed of the registration's random sampling.
    """

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    blendWeight: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    normalization: Annotated[str, Choice(["percentile", "none"])] = "percentile"
    outputVolume: vtkMRMLScalarVolumeNode
    showResult: bool = True
    device: Annotated[str, Choice(["auto", "cpu", "cuda", "mps"])] = "auto"
    registrationMode: Annotated[str, Choice(["rigid", "affine", "deformable"])] = "rigid"
    metric: Annotated[str, Choice(["mi", "mind", "lncc", "ncc", "mse"])] = "mi"
    engine: Annotated[str, Choice(["torch", "sitk", "elastix"])] = "torch"
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


#
# FusionRegistrationWidget
#


class FusionRegistrationWidget(ModuleWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Two actions on one pair of inputs: Register (Registration section) and Fuse (Fusion
    section, the mixin's Apply button). Each runs in the background with progress and Cancel."""

    uiFileName = "UI/FusionRegistration.ui"
    applyToolTip = _("Resample the moving volume onto the fixed grid and blend them")
    registerToolTip = _("Register the moving volume to the fixed volume (background, with progress and Cancel)")
    missingInputsToolTip = _("Select the fixed and moving volumes")

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        self.setupModuleWidget(FusionRegistrationLogic())
        self.ui.registerButton.connect("clicked(bool)", self.onRegisterButton)
        self._checkCanApply()

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
        if not hasattr(self.ui, "registerButton"):
            return
        ready = bool(self._parameterNode) and self.canApply(self._parameterNode) and not self.busy
        self.ui.registerButton.toolTip = self.registerToolTip if ready else self.missingInputsToolTip
        self.ui.registerButton.enabled = ready

    def onApplyButton(self) -> None:
        """Fuse: run in a background process with a progress dialog and a Cancel button."""
        with slicer.util.tryWithErrorDisplay(_("Failed to blend the volumes."), waitCursor=True):
            p = self._parameterNode
            job = self.logic.blendJob(p.fixedVolume, p.movingVolume, p.blendWeight, p.normalization,
                                      p.outputVolume, p.showResult, p.device)
            self.runJob(job, _("Fusion Registration"), self.onDone)

    def onDone(self, outputNode) -> None:
        self._parameterNode.outputVolume = outputNode
        self.ui.statusLabel.text = _("Blended into {name}").format(name=outputNode.GetName())

    def onRegisterButton(self) -> None:
        """Register: run in a background process with a progress dialog and a Cancel button."""
        with slicer.util.tryWithErrorDisplay(_("Failed to register the volumes."), waitCursor=True):
            p = self._parameterNode
            job = self.logic.registerJob(
                p.fixedVolume, p.movingVolume, mode=p.registrationMode, metric=p.metric, engine=p.engine,
                fixedMask=p.fixedMask, movingMask=p.movingMask, fixedFiducials=p.fixedFiducials,
                movingFiducials=p.movingFiducials, placeUnderTransform=p.placeUnderTransform,
                harden=p.hardenTransform, device=p.device, seed=p.seed, initialization=p.initialization,
                outputTransform=p.outputTransform, resampledVolume=p.resampledVolume)
            self.runJob(job, _("Registration"), self.onRegistered)

    def onRegistered(self, output) -> None:
        p = self._parameterNode
        p.outputTransform = output.transformNode
        p.resampledVolume = output.resampledNode
        report = output.report
        text = _("Registered ({engine} {mode}) in {seconds:.1f} s into {name}").format(
            engine=report.get("engine"), mode=report.get("mode"), seconds=float(report.get("runtime_s") or 0.0),
            name=output.transformNode.GetName())
        if "tre_mean_mm" in report:
            text += _("; landmark TRE {tre:.2f} mm").format(tre=float(report["tre_mean_mm"]))
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
        from medtorch.integration.dependencies import ensure_dependencies

        ensure_dependencies(self.requirementsPath(), "Fusion Registration", ask=slicer.util.confirmOkCancelDisplay)

    def blendJob(self, fixedVolume, movingVolume, weight: float = 0.5, normalization: str = "percentile",
                 outputVolume=None, showResult: bool = True, device: str = "auto"):
        """Prepare the blend as a job: run it with ``.run_blocking()`` or ``.start()``.

        The moving volume is resampled through both volumes' parent transforms. Nothing in
        the scene changes until the job finishes; the inputs are never modified.
        """
        from medtorch.errors import MedTorchInputError
        from medtorch.integration import slicer_bridge as bridge
        from medtorch.integration.slicer_jobs import LogicJob

        if not fixedVolume or not movingVolume:
            raise MedTorchInputError("the fixed or moving volume is not set", "select both volumes")
        if outputVolume is not None and outputVolume in (fixedVolume, movingVolume):
            raise MedTorchInputError("the output volume is one of the inputs",
                                     "choose another output volume, or none to create a new one")
        self.ensureDependencies()
        inputs = {"fixed": bridge.volume_from_node(fixedVolume), "moving": bridge.volume_from_node(movingVolume)}
        params = {"weight": float(weight), "normalization": normalization, "device": device}
        transform = bridge.transform_between_volumes(fixedVolume, movingVolume)
        if transform is not None and not hasattr(transform, "geometry"):
            params["matrix"] = transform.tolist()
        elif transform is not None:
            inputs["displacement"] = transform
        name = slicer.mrmlScene.GenerateUniqueName(f"{movingVolume.GetName()} fused with {fixedVolume.GetName()}")

        def apply(result):
            fused = result.volumes["fused"]
            if outputVolume is not None:
                node = bridge.update_node_from_volume(outputVolume, fused)
            else:
                node = bridge.node_from_volume(fused, name)
            node.SetAndObserveTransformNodeID(fixedVolume.GetTransformNodeID())
            node.SetAttribute("MedTorch.operation", "blend")
            node.SetAttribute("MedTorch.weight", str(weight))
            node.SetAttribute("MedTorch.overlapFraction", f"{result.values['overlap_fraction']:.4f}")
            if node.GetDisplayNode():
                node.GetDisplayNode().AutoWindowLevelOn()
            if showResult:
                bridge.show_in_slice_views(background=node)
            return node

        return LogicJob("blend", inputs, params, apply, slicer.mrmlScene)

    def blend(self, fixedVolume, movingVolume, weight: float = 0.5, normalization: str = "percentile",
              outputVolume=None, showResult: bool = True, device: str = "auto"):
        """Blocking blend (scripts and tests). Returns the output volume node."""
        startTime = time.time()
        node = self.blendJob(fixedVolume, movingVolume, weight, normalization, outputVolume, showResult,
                             device).run_blocking()
        logging.info(f"Blend completed in {time.time() - startTime:.2f} seconds")
        return node

    def showFusedInViews(self, fixedVolume, movingVolume, opacity: float = 0.5) -> None:
        """Fixed volume as background, moving as foreground at ``opacity``, views linked."""
        from medtorch.integration import slicer_bridge as bridge

        bridge.show_in_slice_views(background=fixedVolume, foreground=movingVolume, foreground_opacity=opacity)


    # -- registration --------------------------------------------------------------------------

    def _localPoints(self, markupsNode, volumeNode):
        """A point list's positions in the volume's local LPS space (through its parent transform)."""
        import numpy as np
        from medtorch.errors import MedTorchInputError
        from medtorch.integration import slicer_bridge as bridge
        from medtorch.integration.slicer_transforms import lps_points_from_markups

        world = lps_points_from_markups(markupsNode)
        parent = volumeNode.GetParentTransformNode()
        if parent is None:
            return world
        if not parent.IsTransformToWorldLinear():
            raise MedTorchInputError(f"{volumeNode.GetName()} is under a non-linear transform",
                                     "harden that transform first, or remove the landmarks")
        ras = bridge.ras_matrix_between(None, parent)  # world -> the volume's parent space
        lps = bridge.LPS_TO_RAS @ ras @ bridge.LPS_TO_RAS
        return world @ lps[:3, :3].T + lps[:3, 3]

    def registerJob(self, fixedVolume, movingVolume, mode: str = "rigid", metric: str = "mi", engine: str = "torch",
                    fixedMask=None, movingMask=None, fixedFiducials=None, movingFiducials=None,
                    placeUnderTransform: bool = True, harden: bool = False, device: str = "auto", seed: int = 0,
                    initialization: str = "auto", outputTransform=None, resampledVolume=None, showFused: bool = True,
                    options: Optional[dict] = None):
        """Prepare a registration as a job: run it with ``.run_blocking()`` or ``.start()``.

        The volumes are registered in their local coordinates; when they are under linear
        transforms, the transform between them is the starting point. The result (ITK
        convention, fixed -> moving) becomes a linear or grid transform node placed under the
        fixed volume's parent transform, a resampled volume on the fixed grid, a report table,
        and report attributes (``MedTorch.*``) on the transform node. The moving volume is put
        under the transform if ``placeUnderTransform`` and hardened only if ``harden``.
        Nothing in the scene changes until the job finishes.
        """
        import numpy as np
        from medtorch.errors import MedTorchInputError
        from medtorch.integration import slicer_bridge as bridge
        from medtorch.integration.slicer_jobs import LogicJob

        if not fixedVolume or not movingVolume:
            raise MedTorchInputError("the fixed or moving volume is not set", "select both volumes")
        if fixedVolume is movingVolume:
            raise MedTorchInputError("the fixed and moving volumes are the same node", "select two different volumes")
        if resampledVolume is not None and resampledVolume in (fixedVolume, movingVolume):
            raise MedTorchInputError("the resampled volume is one of the inputs",
                                     "choose another volume for the result, or none to create a new one")
        if (fixedFiducials is None) != (movingFiducials is None):
            raise MedTorchInputError("landmarks were given for only one of the volumes",
                                     "select a point list for both volumes, or for none")
        self.ensureDependencies()
        inputs = {"fixed": bridge.volume_from_node(fixedVolume), "moving": bridge.volume_from_node(movingVolume)}
        for key, node in (("fixed_mask", fixedMask), ("moving_mask", movingMask)):
            if node is not None:
                inputs[key] = bridge.volume_from_node(node)
        params = {"mode": mode, "metric": metric, "engine": engine, "init": initialization, "device": device,
                  "seed": int(seed), "options": dict(options or {})}
        if fixedFiducials is not None:
            params["fixed_landmarks"] = self._localPoints(fixedFiducials, fixedVolume).tolist()
            params["moving_landmarks"] = self._localPoints(movingFiducials, movingVolume).tolist()
        between = bridge.transform_between_volumes(fixedVolume, movingVolume)
        if (between is not None and not hasattr(between, "geometry") and initialization in ("auto", "none")
                and fixedFiducials is None):
            params["initial_transform"] = np.asarray(between).tolist()
        name = slicer.mrmlScene.GenerateUniqueName(f"{movingVolume.GetName()} to {fixedVolume.GetName()} ({mode})")

        def apply(result):
            return self._applyRegistration(result, fixedVolume, movingVolume, name, placeUnderTransform, harden,
                                           outputTransform, resampledVolume, showFused)

        return LogicJob("register", inputs, params, apply, slicer.mrmlScene)

    def _applyRegistration(self, result, fixedVolume, movingVolume, name, placeUnderTransform, harden,
                           outputTransform, resampledVolume, showFused):
        import numpy as np
        from medtorch.integration import slicer_bridge as bridge
        from medtorch.integration.slicer_transforms import registration_transform_node

        affine = np.asarray(result.values["affine"], dtype=np.float64)
        report = dict(result.values.get("report") or {})
        displacement = result.volumes.get("displacement")
        transformNode = registration_transform_node(affine, displacement, name, node=outputTransform)
        transformNode.SetAndObserveTransformNodeID(fixedVolume.GetTransformNodeID())
        transformNode.SetAttribute("MedTorch.operation", "register")
        for key in ("engine", "mode", "metric", "final_similarity", "jacobian_min", "folding_percent", "runtime_s",
                    "device", "seed", "init", "tre_mean_mm", "tre_p95_mm", "tre_max_mm"):
            if report.get(key) is not None:
                transformNode.SetAttribute(f"MedTorch.{key}", str(report[key]))
        resampled = result.volumes.get("resampled")
        resampledNode = None
        if resampled is not None:
            if resampledVolume is not None:
                resampledNode = bridge.update_node_from_volume(resampledVolume, resampled)
            else:
                resampledNode = bridge.node_from_volume(resampled, slicer.mrmlScene.GenerateUniqueName(
                    f"{movingVolume.GetName()} registered"))
            resampledNode.SetAndObserveTransformNodeID(fixedVolume.GetTransformNodeID())
            resampledNode.SetAttribute("MedTorch.operation", "register")
            if resampledNode.GetDisplayNode():
                resampledNode.GetDisplayNode().AutoWindowLevelOn()
        table = self._reportTable(report, f"{name} report")
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
            bridge.show_in_slice_views(background=fixedVolume, foreground=foreground, foreground_opacity=0.5)
        return RegistrationOutput(transformNode, resampledNode, table, report, affine)

    def _reportTable(self, report: dict, name: str):
        import json

        import vtk

        table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", slicer.mrmlScene.GenerateUniqueName(name))
        keys, values = vtk.vtkStringArray(), vtk.vtkStringArray()
        keys.SetName("quantity")
        values.SetName("value")
        for key, value in report.items():
            keys.InsertNextValue(str(key))
            values.InsertNextValue(value if isinstance(value, str) else json.dumps(value, default=str))
        table.GetTable().AddColumn(keys)
        table.GetTable().AddColumn(values)
        table.SetAttribute("MedTorch.operation", "register")
        return table

    def register(self, fixedVolume, movingVolume, **kwargs):
        """Blocking registration (scripts and tests). Returns a :class:`RegistrationOutput`."""
        startTime = time.time()
        output = self.registerJob(fixedVolume, movingVolume, **kwargs).run_blocking()
        logging.info(f"Registration completed in {time.time() - startTime:.2f} seconds")
        return output


class RegistrationOutput:
    """What a registration put in the scene: ``transformNode``, ``resampledNode``, ``tableNode``,
    the ``report`` dict and the ``affine`` (4x4 LPS, fixed -> moving)."""

    def __init__(self, transformNode, resampledNode, tableNode, report, affine) -> None:
        self.transformNode = transformNode
        self.resampledNode = resampledNode
        self.tableNode = tableNode
        self.report = report
        self.affine = affine


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
        self.test_RegisterRigidMovesMovingOntoFixed()
        self.setUp()
        self.test_RegisterDeformableGridTransform()

    def _addVolume(self, volume, name):
        from medtorch.integration import slicer_bridge as bridge

        return bridge.node_from_volume(volume, name)

    def test_BlendSameGrid(self):
        import numpy as np
        from medtorch.integration import slicer_bridge as bridge
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
        fused = bridge.volume_from_node(out)
        self.assertTrue(fused.geometry.isclose(geom, atol=1e-5))
        self.assertGreaterEqual(float(fused.array.min()), 0.0)
        self.assertLessEqual(float(fused.array.max()), 1.0)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(fixedNode), fixedBefore)
        self.delayDisplay("Test passed")

    def test_BlendThroughParentTransform(self):
        import numpy as np
        from medtorch.integration import slicer_bridge as bridge
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
        toParentRas[:3, 3] = -shiftLps * np.array([-1.0, -1.0, 1.0])
        transformNode.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(toParentRas))

        logic = FusionRegistrationLogic()
        without = bridge.volume_from_node(logic.blend(fixedNode, movingNode, weight=1.0, normalization="none"))
        movingNode.SetAndObserveTransformNodeID(transformNode.GetID())
        withT = bridge.volume_from_node(logic.blend(fixedNode, movingNode, weight=1.0, normalization="none"))
        errWith = float(np.abs(withT.array - fixed.array).mean())
        errWithout = float(np.abs(without.array - fixed.array).mean())
        self.assertLess(errWith, 0.25 * errWithout)
        self.assertLess(errWith, 3.0)
        self.delayDisplay("Test passed")

    def test_BlendInBackground(self):
        import numpy as np
        from medtorch.integration import slicer_bridge as bridge
        from medtorch.phantoms import blob_phantom, oblique_geometry

        self.delayDisplay("Background process gives the blocking result")
        geom = oblique_geometry()
        fixedNode = self._addVolume(blob_phantom(geom), "fixed")
        movingNode = self._addVolume(blob_phantom(geom, noise=5.0, seed=2), "moving")
        logic = FusionRegistrationLogic()
        blocking = bridge.volume_from_node(logic.blend(fixedNode, movingNode, weight=0.5))
        background = logic.blendJob(fixedNode, movingNode, weight=0.5).run_background_blocking(timeout=120)
        np.testing.assert_allclose(bridge.volume_from_node(background).array, blocking.array, atol=1e-6)
        self.delayDisplay("Test passed")

    def test_RegisterRigidMovesMovingOntoFixed(self):
        import numpy as np
        from medtorch.integration import slicer_bridge as bridge
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
        matrix = bridge.transform_between_volumes(fixedNode, movingNode)
        mapped = pair.landmarks @ matrix[:3, :3].T + matrix[:3, 3]
        self.assertLess(float(pair.tre(mapped).max()), 0.5)
        # The resampled volume lies on the fixed grid and matches the moving contrast painted there.
        resampled = bridge.volume_from_node(out.resampledNode)
        self.assertTrue(resampled.geometry.isclose(pair.fixed.geometry, atol=1e-5))
        self.assertIn("runtime_s", out.report)
        self.assertIsNotNone(out.transformNode.GetAttribute("MedTorch.final_similarity"))
        self.assertGreater(out.tableNode.GetNumberOfRows(), 5)
        self.delayDisplay("Test passed")

    def test_RegisterDeformableGridTransform(self):
        import numpy as np
        from medtorch.integration import slicer_bridge as bridge
        from medtorch.registration.synthetic import synthetic_pair

        self.delayDisplay("Deformable registration gives a grid transform node (RAS) that matches the result")
        pair = synthetic_pair("deformable", seed=2, size=40, spacing=2.0, deform_mm=2.0)
        fixedNode = self._addVolume(pair.fixed, "fixed")
        movingNode = self._addVolume(pair.moving, "moving")
        logic = FusionRegistrationLogic()
        out = logic.register(fixedNode, movingNode, mode="deformable", metric="mi", seed=0,
                             options={"deformable_iterations": [20, 15], "deformable_points": 20000})
        self.assertTrue(out.transformNode.IsA("vtkMRMLGridTransformNode"))
        field = bridge.transform_between_volumes(fixedNode, movingNode)  # sampled from the node, LPS
        self.assertEqual(field.kind, "vector")
        import torch
        from medtorch.resample import transform_points

        nodeMapped = transform_points(torch.from_numpy(pair.landmarks.copy()), field).numpy()
        before = float(pair.tre(pair.landmarks).mean())
        self.assertLess(float(pair.tre(nodeMapped).mean()), 0.3 * before)
        resampled = bridge.volume_from_node(out.resampledNode)
        self.assertTrue(resampled.geometry.isclose(pair.fixed.geometry, atol=1e-5))
        self.assertLess(float(out.report["folding_percent"]), 0.1)
        self.delayDisplay("Test passed")

