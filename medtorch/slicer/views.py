"""Slicer's own slice and 3D views rendered to PNG, headless.

The views are built from Slicer's MRML displayable managers and view logics (PyPI's
``slicer-core``, or a Slicer application's), drawn offscreen through VTK's EGL render window:
on a machine with no display that is Mesa's software OpenGL (llvmpipe), with no X server.

* :class:`SliceView`: a Red, Yellow or Green slice view. Its image (background, foreground at an
  opacity, label map) is what Slicer's slice logic blends; segmentation outlines and fills,
  models and markups (points) are drawn by the slice displayable managers.
* :class:`ThreeDView`: a 3D view with volume rendering (:func:`show_volume_rendering`) and
  closed surfaces of segmentations (:func:`show_segmentation`) and models.
* :class:`Views` holds one of each and :meth:`Views.render_layout` lays them out as Slicer's
  one-up, four-up and side-by-side layouts do; :func:`compose` and :func:`save_png` put any
  renders together.

Build the scene first, or inside :func:`batch`: a view updates on every scene change, which
makes building a scene with views open very slow. Close views (or use them as context
managers) before the scene goes: a camera manager that outlives its view crashes at exit;
views still open at exit are closed by an ``atexit`` hook.

:func:`rendering_unavailable` says why rendering cannot run on this machine (no EGL/OpenGL,
no slicer-core, or turned off by ``MEDTORCH_NO_RENDER=1``), or ``None``. :meth:`SliceView.project`
and :meth:`ThreeDView.project` say where a RAS point lands on a render;
:mod:`medtorch.slicer.checks` measures renders as a person looks at them.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import re
import subprocess
import sys
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

SliceName = Literal["Red", "Yellow", "Green"]
ViewName = Literal["Red", "Yellow", "Green", "3D"]
Layout = Literal["one-up", "one-up-3d", "four-up", "side-by-side"]
Direction = Literal["Anterior", "Posterior", "Left", "Right", "Superior", "Inferior"]

#: Slicer's default orientation of each slice view
ORIENTATIONS: dict[str, str] = {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}
#: the colour of each view's bar in Slicer's layouts (RGB)
VIEW_COLORS: dict[str, tuple[int, int, int]] = {
    "Red": (243, 74, 51), "Yellow": (237, 213, 76), "Green": (110, 176, 75), "3D": (116, 131, 233),
}
#: the views of each layout, row by row (as Slicer's layouts place them)
LAYOUTS: dict[str, list[list[str]]] = {
    "one-up": [["Red"]],
    "one-up-3d": [["3D"]],
    "four-up": [["Red", "3D"], ["Yellow", "Green"]],
    "side-by-side": [["Red", "3D"]],
}
SLICE_MANAGERS = (
    "vtkMRMLSegmentationsDisplayableManager2D", "vtkMRMLModelSliceDisplayableManager",
    "vtkMRMLVolumeGlyphSliceDisplayableManager", "vtkMRMLMarkupsDisplayableManager",
)
THREED_MANAGERS = (
    "vtkMRMLCameraDisplayableManager", "vtkMRMLViewDisplayableManager", "vtkMRMLModelDisplayableManager",
    "vtkMRMLVolumeRenderingDisplayableManager", "vtkMRMLSegmentationsDisplayableManager3D",
    "vtkMRMLMarkupsDisplayableManager",
)
#: module logics a headless scene gets (name -> slicer class), as the application registers them
_LOGICS = (
    ("Volumes", "vtkSlicerVolumesLogic"), ("Colors", "vtkSlicerColorLogic"),
    ("Segmentations", "vtkSlicerSegmentationsModuleLogic"), ("Markups", "vtkSlicerMarkupsLogic"),
    ("VolumeRendering", "vtkSlicerVolumeRenderingLogic"),
)

#: set to 1 (or any value but 0 and empty) to turn rendering off: the views' users then say so
#: and go on without renders (reports keep their figures, self-tests skip their visual checks)
NO_RENDER_ENV = "MEDTORCH_NO_RENDER"

_PROBE = """
import importlib.util, sys
if importlib.util.find_spec("slicer") is None:
    sys.exit("No module named 'slicer'")
# Only VTK's rendering modules (a second; 'import vtk' and 'import slicer' load everything: seconds)
from vtkmodules.vtkCommonCore import vtkObject
vtkObject.GlobalWarningDisplayOff()
from vtkmodules.vtkRenderingCore import vtkRenderer, vtkRenderWindow, vtkWindowToImageFilter
import vtkmodules.vtkRenderingOpenGL2
try:
    from vtkmodules.vtkRenderingOpenGL2 import vtkEGLRenderWindow
    w = vtkEGLRenderWindow()
except ImportError:  # a VTK built without EGL (e.g. a Slicer application): its own window, as _window
    w = vtkRenderWindow()
w.SetOffScreenRendering(1); w.SetSize(8, 8)
r = vtkRenderer(); r.SetBackground(1, 0, 0); w.AddRenderer(r); w.Render()
f = vtkWindowToImageFilter(); f.SetInput(w); f.ReadFrontBufferOff(); f.Update()
print('pixel', f.GetOutput().GetScalarComponentAsDouble(4, 4, 0, 0))
w.Finalize()
"""


def rendering_unavailable() -> str | None:
    """Why offscreen rendering cannot run here (a sentence), or ``None`` when it can.

    ``MEDTORCH_NO_RENDER=1`` turns rendering off (read at each call). Otherwise probes in a
    child process (about a second, once per process): a machine without EGL or OpenGL can
    abort the process that tries.
    """
    if os.environ.get(NO_RENDER_ENV, "").strip() not in ("", "0"):
        return f"rendering is turned off ({NO_RENDER_ENV}={os.environ[NO_RENDER_ENV].strip()})"
    return _probe_once()


@functools.lru_cache(maxsize=1)
def _probe_once() -> str | None:
    return _probe(sys.executable)


def _probe(python: str) -> str | None:
    try:
        out = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the rendering probe did not run: {exc}"
    if out.returncode != 0 or "pixel 255" not in out.stdout:
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in out.stderr.splitlines()]
        tail = next((line for line in reversed(lines) if line), "no message")
        if out.returncode < 0:
            tail = f"killed by signal {-out.returncode}; {tail}"
        if "No module named 'slicer'" in out.stderr or "No module named 'vtk" in out.stderr:
            return f"slicer-core is not installed for {python} (pip install slicer-core)"
        return f"no offscreen OpenGL through EGL on this machine (exit {out.returncode}: {tail})"
    return None


def _slicer() -> Any:
    import vtk

    import slicer

    vtk.vtkObject.GlobalWarningDisplayOff()
    return slicer


@dataclass
class HeadlessScene:
    """An MRML scene with the application logic and module logics that views need."""

    scene: Any
    app_logic: Any
    #: the module logics made here, by module name: the application logic does not keep them alive
    logics: dict[str, Any] = field(default_factory=dict)

    def logic(self, module: str) -> Any:
        """The module logic registered under ``module`` (e.g. ``"Segmentations"``)."""
        return self.logics.get(module) or self.app_logic.GetModuleLogic(module)

    def load_volume(self, path: str | Path, name: str | None = None, labelmap: bool = False) -> Any:
        """Read a volume file (NRRD, NIfTI, MHA, ...) into a volume node, as Slicer's 'Add data'."""
        path = Path(path)
        node = self.logic("Volumes").AddArchetypeVolume(str(path), name or path.name.split(".")[0],
                                                         1 if labelmap else 0)
        if node is None:
            raise OSError(f"could not read the volume {path}")
        return node

    def segmentation_from_labelmap(self, labelmap: Any, name: str = "Segmentation",
                                   remove_labelmap: bool = True) -> Any:
        """A segmentation node with one segment per label of a label map volume node."""
        segmentation = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        if not self.logic("Segmentations").ImportLabelmapToSegmentationNode(labelmap, segmentation):
            raise RuntimeError(f"could not import {labelmap.GetName()} into a segmentation")
        if remove_labelmap:
            self.scene.RemoveNode(labelmap)
        return segmentation


def headless_scene(scene: Any = None, app_logic: Any = None) -> HeadlessScene:
    """A scene and application logic with the volumes, colors, segmentations, markups and
    volume rendering logics registered, as Slicer's application sets them up.

    Pass Slicer's own (``slicer.mrmlScene``, ``slicer.app.applicationLogic()``) to render
    their views; logics already registered are kept.
    """
    slicer = _slicer()
    if scene is None:
        scene = slicer.vtkMRMLScene()
    if app_logic is None:
        app_logic = slicer.vtkSlicerApplicationLogic()
        app_logic.SetMRMLScene(scene)
    made = HeadlessScene(scene, app_logic)
    for module, cls_name in _LOGICS:
        if app_logic.GetModuleLogic(module) is None:
            logic = getattr(slicer, cls_name)()
            logic.SetMRMLApplicationLogic(app_logic)
            logic.SetMRMLScene(scene)
            app_logic.SetModuleLogic(module, logic)
            made.logics[module] = logic
    return made


@contextlib.contextmanager
def batch(scene: Any) -> Iterator[Any]:
    """Block the views' updates while a scene is built (Slicer's batch-processing state)."""
    scene.StartState(scene.BatchProcessState)
    try:
        yield scene
    finally:
        scene.EndState(scene.BatchProcessState)


def _window(size: tuple[int, int]) -> tuple[Any, Any, Any]:
    import vtk

    try:
        from vtkmodules.vtkRenderingOpenGL2 import vtkEGLRenderWindow

        window = vtkEGLRenderWindow()
    except ImportError:  # a VTK built without EGL (e.g. a Slicer application): its own window
        window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetMultiSamples(0)
    window.SetSize(int(size[0]), int(size[1]))
    renderer = vtk.vtkRenderer()
    window.AddRenderer(renderer)
    # The displayable managers observe the interactor (their widgets need one), never started here.
    interactor = vtk.vtkRenderWindowInteractor()
    interactor.SetRenderWindow(window)
    return window, renderer, interactor


def _factory(cls: Any, app_logic: Any, managers: Sequence[str]) -> Any:
    factory = cls.GetInstance()
    factory.SetMRMLApplicationLogic(app_logic)
    for name in managers:
        if not factory.IsDisplayableManagerRegistered(name):
            factory.RegisterDisplayableManager(name)
    return factory


#: the collections of view logics made here, with their application logic: it does not keep them alive
_collections: dict[tuple[int, str], tuple[Any, Any]] = {}


def _collection(app_logic: Any, kind: Literal["SliceLogics", "ViewLogics"]) -> Any:
    import vtk

    collection = getattr(app_logic, f"Get{kind}")()
    if collection is None:
        collection = vtk.vtkCollection()
        getattr(app_logic, f"Set{kind}")(collection)
        _collections[(id(app_logic), kind)] = (app_logic, collection)
    return collection


def _read_pixels(window: Any) -> np.ndarray:
    import vtk
    from vtk.util import numpy_support

    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.SetInputBufferTypeToRGB()
    grab.ReadFrontBufferOff()
    grab.ShouldRerenderOff()  # just rendered: a second render would double the time (volume rendering)
    grab.Update()
    image = grab.GetOutput()
    width, height, _ = image.GetDimensions()
    pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)
    return np.ascontiguousarray(pixels[::-1, :, :3])  # OpenGL rows run bottom-up


def _find_view_node(scene: Any, cls: str, layout_name: str) -> Any:
    """The scene's view node of class ``cls`` whose layout name is ``layout_name``, or None."""
    for index in range(scene.GetNumberOfNodesByClass(cls)):
        node = scene.GetNthNodeByClass(index, cls)
        if node.GetLayoutName() == layout_name:
            return node
    return None


_open_views: weakref.WeakSet[_View] = weakref.WeakSet()


class _View:
    """A render window with a displayable-manager group bound to one view node."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.window, self.renderer, self.interactor = _window(self.size)
        self.group: Any = _slicer().vtkMRMLDisplayableManagerGroup()
        self.node: Any = None
        self._closed = False
        _open_views.add(self)

    def render(self) -> np.ndarray:
        """Draw the view; its pixels as an (height, width, 3) uint8 array."""
        if self._closed:
            raise RuntimeError("the view is closed")
        self.window.Render()
        return _read_pixels(self.window)

    def save(self, path: str | Path) -> Path:
        """Draw the view into a PNG file."""
        return save_png(self.render(), path)

    def _release(self) -> None:
        pass

    def close(self) -> None:
        """Detach from the scene and free the window; the managers go before the window."""
        if self._closed:
            return
        self._closed = True
        self._release()
        self.group.SetMRMLDisplayableNode(None)
        self.group = None
        self.renderer.RemoveAllViewProps()
        self.interactor.SetRenderWindow(None)
        self.window.Finalize()
        _open_views.discard(self)

    def __enter__(self) -> _View:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SliceView(_View):
    """Slicer's slice view ``name`` (Red, Yellow or Green) in ``scene``, drawn offscreen.

    The slice node and its composite node are the scene's singletons for ``name`` (created if
    missing), so what a module sets on them shows here.
    """

    def __init__(self, scene: Any, app_logic: Any, name: SliceName = "Red", size: tuple[int, int] = (512, 512),
                 orientation: str | None = None) -> None:
        super().__init__(size)
        slicer = _slicer()
        import vtk

        self.name = name
        self.group.Initialize(_factory(slicer.vtkMRMLSliceViewDisplayableManagerFactory, app_logic, SLICE_MANAGERS),
                              self.renderer)
        self.logic: Any = slicer.vtkMRMLSliceLogic()
        self.logic.SetMRMLApplicationLogic(app_logic)
        self.logic.SetMRMLScene(scene)
        self._app_logic = app_logic
        _collection(app_logic, "SliceLogics").AddItem(self.logic)
        self.node = _find_view_node(scene, "vtkMRMLSliceNode", name)
        if self.node is not None:  # the scene's own (as Slicer's layout made it): show what it shows
            self.logic.SetSliceNode(self.node)
        else:
            self.node = self.logic.AddSliceNode(name)
        self.node.SetOrientation(orientation or ORIENTATIONS[name])
        self.group.SetMRMLDisplayableNode(self.node)
        # The blended slice image (RGBA, 0-255) drawn behind the managers' actors.
        self._mapper = vtk.vtkImageMapper()
        self._mapper.SetColorWindow(255)
        self._mapper.SetColorLevel(127.5)
        self._actor = vtk.vtkActor2D()
        self._actor.SetMapper(self._mapper)
        self._actor.GetProperty().SetDisplayLocationToBackground()
        self.renderer.AddViewProp(self._actor)
        self.logic.ResizeSliceNode(*self.size)

    @property
    def composite(self) -> Any:
        """The view's vtkMRMLSliceCompositeNode (background, foreground, label, opacities)."""
        return self.logic.GetSliceCompositeNode()

    def show(self, background: Any = None, foreground: Any = None, opacity: float | None = None,
             label: Any = None, label_opacity: float | None = None, fit: bool = False) -> SliceView:
        """Set the view's layers (volume nodes; ``None`` keeps a layer as it is)."""
        comp = self.composite
        if background is not None:
            comp.SetBackgroundVolumeID(background.GetID())
        if foreground is not None:
            comp.SetForegroundVolumeID(foreground.GetID())
        if opacity is not None:
            comp.SetForegroundOpacity(float(opacity))
        if label is not None:
            comp.SetLabelVolumeID(label.GetID())
        if label_opacity is not None:
            comp.SetLabelOpacity(float(label_opacity))
        if fit:
            self.fit()
        return self

    def fit(self) -> SliceView:
        """Fit the field of view to the background volume, as Slicer's 'reset field of view'."""
        self.logic.ResizeSliceNode(*self.size)
        self.logic.FitSliceToBackground()
        self.logic.SnapSliceOffsetToIJK()
        return self

    def jump_to(self, ras: Sequence[float], centre: bool = False) -> SliceView:
        """Move the slice through the RAS point ``ras``; with ``centre``, also pan it to the middle."""
        x, y, z = (float(v) for v in ras[:3])
        if centre:
            self.node.JumpSliceByCentering(x, y, z)
        else:
            self.node.JumpSliceByOffsetting(x, y, z)
        return self

    def zoom(self, factor: float) -> SliceView:
        """Zoom in by ``factor`` (the field of view divided by it) about the view's middle."""
        fov = self.node.GetFieldOfView()
        self.node.SetFieldOfView(fov[0] / factor, fov[1] / factor, fov[2])
        return self

    def project(self, ras: Sequence[float]) -> tuple[float, float]:
        """Where the RAS point ``ras`` lands on this view's render: (x, y) in pixels, x to the
        right and y down from the top-left corner (as the rows and columns of :meth:`render`'s
        array). A point off the slice plane is projected onto it."""
        import vtk

        ras_to_xy = vtk.vtkMatrix4x4()
        vtk.vtkMatrix4x4.Invert(self.node.GetXYToRAS(), ras_to_xy)
        x, y, _, _ = ras_to_xy.MultiplyPoint((float(ras[0]), float(ras[1]), float(ras[2]), 1.0))
        return x, self.size[1] - 1 - y  # the slice's XY runs bottom-up, as OpenGL's rows

    def render(self) -> np.ndarray:
        connection = self.logic.GetImageDataConnection()
        has_image = connection is not None and self.composite.GetBackgroundVolumeID() is not None
        if has_image:
            self._mapper.SetInputConnection(connection)
        self._actor.SetVisibility(bool(has_image))
        return super().render()

    def _release(self) -> None:
        self._mapper.RemoveAllInputConnections(0)
        _collection(self._app_logic, "SliceLogics").RemoveItem(self.logic)
        self.logic.SetMRMLScene(None)


class ThreeDView(_View):
    """Slicer's 3D view ``name`` ("1" is the default view) in ``scene``, drawn offscreen."""

    def __init__(self, scene: Any, app_logic: Any, name: str = "1", size: tuple[int, int] = (512, 512)) -> None:
        super().__init__(size)
        slicer = _slicer()
        self.group.Initialize(_factory(slicer.vtkMRMLThreeDViewDisplayableManagerFactory, app_logic,
                                       THREED_MANAGERS), self.renderer)
        self.logic: Any = slicer.vtkMRMLViewLogic()
        self.logic.SetMRMLApplicationLogic(app_logic)
        self.logic.SetMRMLScene(scene)
        self._app_logic = app_logic
        _collection(app_logic, "ViewLogics").AddItem(self.logic)
        self.node = _find_view_node(scene, "vtkMRMLViewNode", name)
        if self.node is not None:
            self.logic.SetName(name)  # the logic finds its view node by layout name
        else:
            self.node = self.logic.AddViewNode(name)
        self.group.SetMRMLDisplayableNode(self.node)

    def camera_node(self) -> Any:
        manager = self.group.GetDisplayableManagerByClassName("vtkMRMLCameraDisplayableManager")
        return manager.GetCameraNode() if manager is not None else None

    def reset_camera(self, direction: Direction = "Anterior", azimuth: float = 0.0, elevation: float = 0.0,
                     zoom: float = 1.0, box: bool = False, bounds: Sequence[float] | None = None) -> ThreeDView:
        """Look at everything shown from ``direction`` (as Slicer's view-direction buttons), then
        turn the camera by ``azimuth``/``elevation`` degrees and zoom; ``box`` shows the 3D cube.
        ``bounds`` (RAS: xmin, xmax, ymin, ymax, zmin, zmax; e.g. a volume node's
        ``GetRASBounds``) frames that box instead of everything shown."""
        slicer = _slicer()
        self.node.SetBoxVisible(int(box))
        self.node.SetAxisLabelsVisible(int(box))
        camera_node = self.camera_node()
        if camera_node is not None:
            camera_node.RotateTo(getattr(slicer.vtkMRMLCameraNode, direction))
        if bounds is not None:
            self.renderer.ResetCamera(*(float(b) for b in bounds[:6]))
        else:
            self.renderer.ResetCamera()
        camera = self.renderer.GetActiveCamera()
        camera.Azimuth(azimuth)
        camera.Elevation(elevation)
        camera.OrthogonalizeViewUp()
        camera.Zoom(zoom)
        self.renderer.ResetCameraClippingRange()
        return self

    def project(self, ras: Sequence[float]) -> tuple[float, float]:
        """Where the RAS point ``ras`` lands on this view's render with the camera as it is now:
        (x, y) in pixels, x to the right and y down from the top-left corner."""
        self.renderer.SetWorldPoint(float(ras[0]), float(ras[1]), float(ras[2]), 1.0)
        self.renderer.WorldToDisplay()
        x, y, _ = self.renderer.GetDisplayPoint()
        return float(x), self.size[1] - 1 - float(y)

    def _release(self) -> None:
        _collection(self._app_logic, "ViewLogics").RemoveItem(self.logic)
        self.logic.SetMRMLScene(None)


def _close_open_views() -> None:
    for view in list(_open_views):
        view.close()


atexit.register(_close_open_views)


def show_volume_rendering(app_logic: Any, volume: Any, preset: str | None = None,
                          window: tuple[float, float] | None = None, max_opacity: float = 0.25,
                          shade: bool = True) -> Any:
    """Volume-render ``volume`` in the 3D views; its volume rendering display node.

    ``app_logic``: the application logic (its volume rendering logic must be alive) or a
    :class:`HeadlessScene`.

    ``preset`` names one of Slicer's presets (e.g. ``"MR-Default"``, ``"CT-Bone"``), taken from
    the volume rendering logic. slicer-core on PyPI ships no presets file, so outside a Slicer
    application the default is a grey ramp over ``window`` = (low, high) intensities (the 30th
    percentile of the non-zero voxels to the maximum when not given), opacity rising from 0 to
    ``max_opacity``.
    """
    logic = (app_logic.logic("VolumeRendering") if isinstance(app_logic, HeadlessScene)
             else app_logic.GetModuleLogic("VolumeRendering"))
    if logic is None:
        raise RuntimeError("no volume rendering logic: build the scene with medtorch.slicer.views.headless_scene")
    display = logic.GetFirstVolumeRenderingDisplayNode(volume) or logic.CreateDefaultVolumeRenderingNodes(volume)
    prop_node = display.GetVolumePropertyNode()
    if preset is not None:
        found = logic.GetPresetByName(preset)
        if found is None:
            raise ValueError(f"no volume rendering preset {preset!r} here: slicer-core ships none (a Slicer "
                             "application has them); leave preset out for the intensity ramp")
        prop_node.Copy(found)
    else:
        from vtk.util import numpy_support

        values = numpy_support.vtk_to_numpy(volume.GetImageData().GetPointData().GetScalars())
        if window is None:
            nonzero = values[values != 0]
            nonzero = nonzero if nonzero.size else values
            window = (float(np.percentile(nonzero, 30)), float(nonzero.max()))
        low, high = window
        high = high if high > low else low + 1.0
        prop = prop_node.GetVolumeProperty()
        opacity = prop.GetScalarOpacity()
        opacity.RemoveAllPoints()
        opacity.AddPoint(float(values.min()) - 1.0, 0.0)
        opacity.AddPoint(low, 0.0)
        opacity.AddPoint(high, max_opacity)
        colors = prop.GetRGBTransferFunction()
        colors.RemoveAllPoints()
        colors.AddRGBPoint(low, 0.25, 0.25, 0.25)
        colors.AddRGBPoint(high, 1.0, 0.95, 0.85)
        prop.SetShade(int(shade))
        prop.SetInterpolationTypeToLinear()
    display.SetVisibility(1)
    return display


def show_segmentation(segmentation: Any, fill: float = 0.5, outline: float = 1.0, surface: bool = True,
                      surface_opacity: float = 1.0, segment_ids: Sequence[str] | None = None) -> Any:
    """Show a segmentation's segments: filled (at ``fill`` opacity) and outlined in the slice
    views; as closed surfaces in 3D when ``surface`` (built if missing). Its display node."""
    segmentation.CreateDefaultDisplayNodes()
    display = segmentation.GetDisplayNode()
    display.SetVisibility(1)
    display.SetVisibility2DFill(int(fill > 0))
    display.SetOpacity2DFill(float(fill))
    display.SetVisibility2DOutline(int(outline > 0))
    display.SetOpacity2DOutline(float(outline))
    if surface:
        segmentation.CreateClosedSurfaceRepresentation()
    display.SetVisibility3D(int(surface))
    display.SetOpacity3D(float(surface_opacity))
    if segment_ids is not None:
        wanted = set(segment_ids)
        seg = segmentation.GetSegmentation()
        for index in range(seg.GetNumberOfSegments()):
            segment_id = seg.GetNthSegmentID(index)
            display.SetSegmentVisibility(segment_id, segment_id in wanted)
    return display


class Views:
    """The Red, Yellow and Green slice views and the 3D view of a scene, made when first used."""

    def __init__(self, scene: Any, app_logic: Any, size: int = 384) -> None:
        self.scene = scene
        self.app_logic = app_logic
        self.size = int(size)
        self._views: dict[str, _View] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._views:
            if name == "3D":
                self._views[name] = ThreeDView(self.scene, self.app_logic, "1", (self.size, self.size))
            elif name in ("Red", "Yellow", "Green"):
                slice_name: SliceName = name  # type: ignore[assignment]  # checked just above
                self._views[name] = SliceView(self.scene, self.app_logic, slice_name, (self.size, self.size))
            else:
                raise KeyError(f"no view {name!r}: the views are Red, Yellow, Green and 3D")
        return self._views[name]

    def slices(self) -> list[SliceView]:
        return [self[name] for name in ("Red", "Yellow", "Green")]

    def show(self, background: Any = None, foreground: Any = None, opacity: float | None = None,
             label: Any = None, label_opacity: float | None = None, center: Sequence[float] | None = None,
             fit: bool = True, zoom: float = 1.0) -> Views:
        """The same layers in all three slice views (as Slicer's linked views), fitted to the
        background and moved through ``center`` (RAS) when given; with ``zoom`` > 1 they are
        zoomed in about ``center`` (or the middle)."""
        for view in self.slices():
            view.show(background, foreground, opacity, label, label_opacity, fit=fit)
            if center is not None:
                view.jump_to(center, centre=zoom != 1.0)
            if zoom != 1.0:
                view.zoom(zoom)
        return self

    def render_layout(self, layout: Layout = "four-up", labels: bool = True) -> np.ndarray:
        """Render the views of ``layout`` and put them together as Slicer places them."""
        if layout not in LAYOUTS:
            raise ValueError(f"no layout {layout!r}: one of {', '.join(LAYOUTS)}")
        grid = [[self[name].render() for name in row] for row in LAYOUTS[layout]]
        bars = [[name for name in row] for row in LAYOUTS[layout]] if labels else None
        return compose(grid, bars)

    def close(self) -> None:
        for view in self._views.values():
            view.close()
        self._views.clear()

    def __enter__(self) -> Views:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def compose(grid: Sequence[Sequence[np.ndarray]], bars: Sequence[Sequence[str | None]] | None = None,
            gap: int = 2, bar: int = 6) -> np.ndarray:
    """Lay renders out row by row (a ``gap`` of black between them); with ``bars``, a strip in
    each view's Slicer colour (``VIEW_COLORS``: Red, Yellow, Green, 3D) tops each render."""
    rows: list[np.ndarray] = []
    for r, grid_row in enumerate(grid):
        cells: list[np.ndarray] = []
        for c, image in enumerate(grid_row):
            name = bars[r][c] if bars is not None else None
            if name is not None:
                strip = np.zeros((bar, image.shape[1], 3), np.uint8)
                strip[:] = VIEW_COLORS.get(name, (128, 128, 128))
                image = np.concatenate([strip, image], axis=0)
            cells.append(image)
        height = max(im.shape[0] for im in cells)
        padded = [np.pad(im, ((0, height - im.shape[0]), (0, 0), (0, 0))) for im in cells]
        with_gaps: list[np.ndarray] = []
        for im in padded:
            if with_gaps:
                with_gaps.append(np.zeros((height, gap, 3), np.uint8))
            with_gaps.append(im)
        rows.append(np.concatenate(with_gaps, axis=1))
    width = max(line.shape[1] for line in rows)
    out: list[np.ndarray] = []
    for line in rows:
        if out:
            out.append(np.zeros((gap, width, 3), np.uint8))
        out.append(np.pad(line, ((0, 0), (0, width - line.shape[1]), (0, 0))))
    return np.concatenate(out, axis=0)


def save_png(pixels: np.ndarray, path: str | Path) -> Path:
    """Write an (height, width, 3) uint8 array as a PNG (through a temporary file)."""
    import vtk
    from vtk.util import numpy_support

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.ascontiguousarray(np.asarray(pixels, dtype=np.uint8)[::-1])
    height, width = data.shape[:2]
    image = vtk.vtkImageData()
    image.SetDimensions(width, height, 1)
    scalars = numpy_support.numpy_to_vtk(data.reshape(-1, data.shape[2]), deep=True,
                                         array_type=vtk.VTK_UNSIGNED_CHAR)
    image.GetPointData().SetScalars(scalars)
    tmp = path.with_name(path.name + ".part")
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(tmp))
    writer.SetInputData(image)
    writer.Write()
    tmp.replace(path)
    return path
