"""A headless Slicer on PyPI's ``slicer-core``: a real MRML scene and real module logic.

:func:`install` builds what the Slicer application builds at start-up, without Qt:

* an MRML scene and a ``vtkSlicerApplicationLogic``;
* the volumes, segmentations, subject-hierarchy, colors, transforms, terminologies and
  markups logic, registered with the application logic and reachable as
  ``slicer.modules.<name>.logic()``;
* ``slicer.mrmlScene``, so ``slicer.util`` functions work unchanged;
* the Red, Yellow and Green slice views' MRML nodes and one 3D view node, as the default
  layout creates them.

Stand-ins only where Qt or the application object is needed: ``qt`` and ``ctk``
(:mod:`.qt`, :mod:`.ctk`), ``slicer.app`` (:class:`FakeApp`), the ScriptedLoadableModule
base classes, ``slicer.parameterNodeWrapper``, ``slicer.i18n`` and a ``.ui`` loader.
"""

from __future__ import annotations

import os
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
MODULE_NAMES = ("FusionRegistration", "EnhanceSR", "SegmentTumor")

_state: dict[str, Any] = {}


class _ModuleHandle:
    """What ``slicer.modules.<name>`` is for a loadable module: ``.logic()`` and ``.name``."""

    def __init__(self, name: str, logic: Any) -> None:
        self.name = name
        self._logic = logic

    def logic(self) -> Any:
        return self._logic


class FakeIOManager:
    """``slicer.app.coreIOManager()`` for volumes, so ``slicer.util.loadVolume`` works."""

    VOLUME_EXTENSIONS = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")

    def __init__(self, volumes_logic: Any) -> None:
        self.volumes_logic = volumes_logic

    def fileType(self, filename: str) -> str:
        name = str(filename).lower()
        if any(name.endswith(ext) for ext in self.VOLUME_EXTENSIONS):
            return "VolumeFile"
        return "NoFile"

    def loadNodes(self, filetype: str, properties: dict[str, Any], loaded: Any, messages: Any = None) -> bool:
        if filetype != "VolumeFile":
            raise NotImplementedError(f"the headless test bed loads volumes only, not {filetype}")
        filename = properties["fileName"]
        name = properties.get("name") or Path(filename).name.split(".")[0]
        flags = 1 if properties.get("labelmap") else 0
        node = self.volumes_logic.AddArchetypeVolume(filename, name, flags)
        if node is None:
            return False
        loaded.AddItem(node)
        return True


class FakeApp:
    """The part of ``slicer.app`` that module code and ``slicer.util`` use headlessly."""

    applicationName = "Slicer"
    majorVersion = 5
    minorVersion = 9

    def __init__(self, scene: Any, app_logic: Any, volumes_logic: Any) -> None:
        self._scene = scene
        self._app_logic = app_logic
        self._io = FakeIOManager(volumes_logic)
        self.temporaryPath = tempfile.mkdtemp(prefix="medtorch-slicer-")
        self.commandOptions = types.SimpleNamespace(noMainWindow=True)
        self.signals: dict[str, list[Any]] = {}
        self.cursor_depth = 0

    def testingEnabled(self) -> bool:
        return True

    def mrmlScene(self) -> Any:
        return self._scene

    def applicationLogic(self) -> Any:
        return self._app_logic

    def coreIOManager(self) -> FakeIOManager:
        return self._io

    def processEvents(self) -> None:
        import qt

        qt.process_events()

    def connect(self, signal: str, slot: Any) -> None:
        self.signals.setdefault(signal, []).append(slot)

    def setOverrideCursor(self, cursor: Any) -> None:
        self.cursor_depth += 1

    def restoreOverrideCursor(self) -> None:
        self.cursor_depth -= 1

    def layoutManager(self) -> None:
        return None

    def pauseRender(self) -> None:
        pass

    def resumeRender(self) -> None:
        pass


def _quiet_vtk_logging() -> None:
    import vtk

    # slicer-core ships no terminology/color data files; their loaders log errors at start.
    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_OFF)
    vtk.vtkObject.GlobalWarningDisplayOff()


def _create_views(scene: Any) -> None:
    for name, orientation in (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal")):
        slice_node = scene.GetSingletonNode(name, "vtkMRMLSliceNode")
        if slice_node is None:
            import slicer

            slice_node = slicer.vtkMRMLSliceNode()
            slice_node.SetName(f"Slice{name}")
            slice_node.SetLayoutName(name)
            slice_node.SetSingletonTag(name)
            slice_node.SetOrientation(orientation)
            scene.AddNode(slice_node)
            composite = slicer.vtkMRMLSliceCompositeNode()
            composite.SetName(f"SliceComposite{name}")
            composite.SetLayoutName(name)
            composite.SetSingletonTag(name)
            scene.AddNode(composite)
    if scene.GetSingletonNode("1", "vtkMRMLViewNode") is None:
        import slicer

        view = slicer.vtkMRMLViewNode()
        view.SetName("View1")
        view.SetLayoutName("1")
        view.SetSingletonTag("1")
        scene.AddNode(view)


def install() -> types.SimpleNamespace:
    """Set up the headless Slicer once per process; return its pieces."""
    if _state:
        return _state["ns"]
    sys.path.insert(0, str(HERE))  # qt, ctk stand-ins
    import ctk  # noqa: F401
    import qt  # noqa: F401

    import slicer
    import slicer.util  # noqa: F401

    _quiet_vtk_logging()
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    logic_classes = {
        "volumes": ("Volumes", slicer.vtkSlicerVolumesLogic),
        "colors": ("Colors", slicer.vtkSlicerColorLogic),
        "terminologies": ("Terminologies", slicer.vtkSlicerTerminologiesModuleLogic),
        "subjecthierarchy": ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic),
        "segmentations": ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
        "transforms": ("Transforms", slicer.vtkSlicerTransformLogic),
        "markups": ("Markups", slicer.vtkSlicerMarkupsLogic),
        "volumerendering": ("VolumeRendering", slicer.vtkSlicerVolumeRenderingLogic),
    }
    modules = types.SimpleNamespace()
    logics: dict[str, Any] = {}
    for key, (module_name, cls) in logic_classes.items():
        logic = cls()
        logic.SetMRMLApplicationLogic(app_logic)
        logic.SetMRMLScene(scene)
        app_logic.SetModuleLogic(module_name, logic)
        logics[key] = logic
        setattr(modules, key, _ModuleHandle(module_name, logic))
    _create_views(scene)

    slicer.mrmlScene = scene
    slicer.modules = modules
    slicer.app = FakeApp(scene, app_logic, logics["volumes"])
    slicer.moduleMetadata = {}

    from . import ScriptedLoadableModule as slm
    from . import i18n, parameterNodeWrapper, ui

    for name, mod in (("ScriptedLoadableModule", slm), ("parameterNodeWrapper", parameterNodeWrapper), ("i18n", i18n)):
        sys.modules[f"slicer.{name}"] = mod
        setattr(slicer, name, mod)
    slicer.util.loadUI = ui.load_ui
    slicer.util.childWidgetVariables = ui.child_widget_variables

    for module_name in MODULE_NAMES:
        path = str(REPO / module_name)
        if path not in sys.path:
            sys.path.insert(0, path)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))

    ns = types.SimpleNamespace(scene=scene, app_logic=app_logic, logics=logics, app=slicer.app)
    _state["ns"] = ns
    return ns


def reset_scene() -> None:
    """Clear the scene as a module self-test's ``setUp`` does (singletons kept), and the views."""
    import slicer

    slicer.mrmlScene.Clear(0)
    _create_views(slicer.mrmlScene)


def load_module(name: str) -> types.ModuleType:
    """Import a scripted module and instantiate its Module class, as Slicer does at start-up."""
    import importlib

    install()
    mod = importlib.import_module(name)
    parent = types.SimpleNamespace()
    getattr(mod, name)(parent)
    return mod


def run_events_until(predicate: Any, timeout: float = 60.0, interval: float = 0.02) -> bool:
    """Drive the stand-in event loop (timers) until ``predicate()`` is true or time runs out."""
    import time

    import slicer

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        slicer.app.processEvents()
        if predicate():
            return True
        time.sleep(interval)
    return False


os.environ.setdefault("MEDTORCH_TESTBED", "1")
