"""Slicer-view renders of MedTorch's volumes for the HTML reports (``medtorch demo``, ``fuse-eval``).

Each function takes :class:`medtorch.volume.Volume` objects, builds a headless scene
(:func:`medtorch.slicer.views.headless_scene`), renders the views that say more than a
matplotlib slice (a volume rendered in 3D, a segmentation's surface) and writes a PNG.

:func:`try_render` is what a report calls: it gives the PNG, or the one-line reason why there
is none (rendering unavailable: no EGL/OpenGL, no slicer-core, ``MEDTORCH_NO_RENDER=1``; or
the rendering failed), and never raises, so that a report is written without its renders.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medtorch import coords
from medtorch.volume import Volume


@dataclass(frozen=True)
class Segment:
    """A label map (non-zero voxels) to show as a segment: named, coloured (0-1 RGB), with its
    closed surface in 3D when ``surface``."""

    label: Volume
    name: str
    color: tuple[float, float, float]
    surface: bool = True


def _ijk_to_ras(volume: Volume) -> Any:
    import vtk

    geometry = volume.geometry
    linear = coords.flip_rows(geometry.direction) @ np.diag(np.asarray(geometry.spacing, float))
    origin = coords.ras_from_lps(geometry.origin)
    matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, float(linear[r, c]))
        matrix.SetElement(r, 3, float(origin[r]))
    return matrix


def volume_node(scene: Any, volume: Volume, name: str, labelmap: bool = False) -> Any:
    """A scalar (or label map) volume node holding ``volume`` at its physical place, with a
    display node (window/level: 1st to 99.5th percentile of the non-zero voxels)."""
    import vtk
    from vtk.util import numpy_support

    array = np.ascontiguousarray(volume.array)
    if array.ndim != 3:
        raise ValueError(f"a 3D volume is needed, not an array of shape {array.shape}")
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode", name)
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    values = array.astype(np.int16 if labelmap else np.float32).ravel()
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(
        values, deep=True, array_type=vtk.VTK_SHORT if labelmap else vtk.VTK_FLOAT))
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(_ijk_to_ras(volume))
    node.CreateDefaultDisplayNodes()
    if not labelmap:
        nonzero = values[values != 0] if (values != 0).any() else values
        lo, hi = np.percentile(nonzero, [1.0, 99.5])
        display = node.GetDisplayNode()
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(float(lo), float(max(hi, lo + 1e-6)))
    return node


def _segmentation(hs: Any, segment: Segment, index: int) -> Any:
    labelmap = volume_node(hs.scene, segment.label.with_array((np.asarray(segment.label.array) > 0).astype(np.int16)),
                           f"{segment.name}-label-{index}", labelmap=True)
    segmentation = hs.segmentation_from_labelmap(labelmap, segment.name)
    seg = segmentation.GetSegmentation()
    for i in range(seg.GetNumberOfSegments()):
        seg.GetNthSegment(i).SetColor(*segment.color)
        seg.GetNthSegment(i).SetName(segment.name)
    return segmentation


def _ras_center(volume: Volume, mask: np.ndarray | None = None) -> np.ndarray:
    if mask is not None and np.asarray(mask).any():
        ijk = np.argwhere(np.asarray(mask))[:, ::-1].mean(axis=0)
    else:
        ijk = (np.asarray(volume.array.shape[::-1], float) - 1.0) / 2.0
    return coords.ras_from_lps(volume.geometry.index_to_physical(ijk[None, :].astype(float))[0])


def volumes_in_3d(volumes: Sequence[tuple[str, Volume]], path: str | Path, size: int = 320,
                  max_opacity: float = 0.2, azimuth: float = 35.0, elevation: float = 20.0,
                  zoom: float = 1.4) -> Path:
    """Each volume rendered in Slicer's 3D view, from the front turned by ``azimuth`` and
    ``elevation`` (the same camera for all), side by side; the PNG ``path``. The titles are
    the report's to give (the PNG has a 3D bar over each render)."""
    from medtorch.slicer import views

    hs = views.headless_scene()
    with views.batch(hs.scene):
        nodes = [volume_node(hs.scene, volume, name) for name, volume in volumes]
    renders = []
    view = views.ThreeDView(hs.scene, hs.app_logic, "1", (size, size))
    with view:
        for index, node in enumerate(nodes):
            display = views.show_volume_rendering(hs, node, max_opacity=max_opacity)
            if index == 0:
                view.reset_camera("Anterior", azimuth=azimuth, elevation=elevation, zoom=zoom)
            renders.append(view.render())
            display.SetVisibility(0)
    return views.save_png(views.compose([renders], [["3D"] * len(renders)]), path)


def segments_in_views(background: Volume, segments: Sequence[Segment], path: str | Path, size: int = 320,
                      center_on: int = 0, zoom: float = 1.8, max_opacity: float = 0.06) -> Path:
    """Slicer's Red slice view (zoomed ``zoom`` times on the middle of segment ``center_on``, the
    segments filled and outlined) beside its 3D view (their closed surfaces over a faint volume
    rendering of ``background``, from the left-front); the PNG ``path``."""
    from medtorch.slicer import views

    hs = views.headless_scene()
    with views.batch(hs.scene):
        node = volume_node(hs.scene, background, "background")
        for index, segment in enumerate(segments):
            segmentation = _segmentation(hs, segment, index)
            views.show_segmentation(segmentation, fill=0.4 if segment.surface else 0.0, outline=1.0,
                                    surface=segment.surface)
    center = _ras_center(segments[center_on].label, np.asarray(segments[center_on].label.array) > 0)
    with views.Views(hs.scene, hs.app_logic, size) as v:
        v.show(background=node, center=[float(c) for c in center], zoom=zoom)
        views.show_volume_rendering(hs, node, max_opacity=max_opacity)
        v["3D"].reset_camera("Left", azimuth=-30, elevation=25, zoom=1.5)
        return views.save_png(v.render_layout("side-by-side"), path)


def try_render(render: Callable[..., Path], *args: Any, **kwargs: Any) -> tuple[Path | None, str | None]:
    """``render(*args, **kwargs)`` when rendering is available: (the PNG, None); otherwise, or
    when it fails, (None, why) -- never an exception, so a report goes on without the render."""
    from medtorch.slicer import views

    reason = views.rendering_unavailable()
    if reason:
        return None, reason
    try:
        return render(*args, **kwargs), None
    except Exception as exc:  # noqa: BLE001 - a render is optional: the report says why it is missing
        logging.getLogger(__name__).warning("rendering %s failed", getattr(render, "__name__", render), exc_info=True)
        return None, f"the rendering failed ({type(exc).__name__}: {exc})"
