"""One case of an output folder in an MRML scene, shown in Slicer's views rendered offscreen.

:class:`CaseScene` builds a headless scene (:func:`medtorch.slicer.views.headless_scene`) for a
:class:`~medtorch.view.outputs.Case`: volumes are read when first shown (background or
foreground), every segmentation of the case becomes a segmentation node (one segment per label,
outlined and filled in the slice views, closed surfaces in 3D). The Red (axial), Yellow
(sagittal) and Green (coronal) slice views are linked as in Slicer: the same layers, and one
position (R, A, S) that each view's slider moves along its own axis. The 3D view volume-renders
the background and shows the segments' surfaces. Renders come back as PNG bytes.

Nothing is computed here beyond what Slicer's views draw: the volumes are the case's files as
the pipeline wrote them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medtorch.slicer import views
from medtorch.view.outputs import Case, FileEntry

#: each slice view's axis in RAS (index into R, A, S) and its name, as Slicer's default layout
SLICE_AXES: dict[str, tuple[int, str]] = {"Red": (2, "Axial"), "Yellow": (0, "Sagittal"), "Green": (1, "Coronal")}


def png_bytes(pixels: np.ndarray) -> bytes:
    """An (height, width, 3) uint8 array encoded as PNG, in memory."""
    import vtk
    from vtk.util import numpy_support

    data = np.ascontiguousarray(np.asarray(pixels, dtype=np.uint8)[::-1])
    height, width = data.shape[:2]
    image = vtk.vtkImageData()
    image.SetDimensions(width, height, 1)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(data.reshape(-1, data.shape[2]), deep=True,
                                                               array_type=vtk.VTK_UNSIGNED_CHAR))
    writer = vtk.vtkPNGWriter()
    writer.SetCompressionLevel(1)  # speed over size: the page is on this machine or a tunnel
    writer.WriteToMemoryOn()
    writer.SetInputData(image)
    writer.Write()
    return bytes(numpy_support.vtk_to_numpy(writer.GetResult()).tobytes())


@dataclass
class SegmentInfo:
    """A segment shown in the views: ``key`` is unique in the case (segmentation file and segment)."""

    key: str
    name: str
    color: tuple[float, float, float]
    segmentation: Any = field(repr=False)
    segment_id: str = ""


class CaseScene:
    """A case's scene and its views (``size`` pixels square)."""

    def __init__(self, case: Case, size: int = 320, size_3d: int = 320) -> None:
        self.case = case
        self.hs = views.headless_scene()
        self._nodes: dict[str, Any] = {}
        self.segments: list[SegmentInfo] = []
        self.background: str | None = None
        self.foreground: str | None = None
        self.opacity = 0.5
        self.position = [0.0, 0.0, 0.0]  # R, A, S (mm)
        self.bounds = [0.0] * 6
        self.volume_rendering = True
        self.azimuth = 30.0
        self.elevation = 15.0
        self._rendering_display: Any = None
        with views.batch(self.hs.scene):
            for entry in case.segmentations:
                self._add_segmentation(entry)
        self.views = views.Views(self.hs.scene, self.hs.app_logic, size)
        self._size_3d = int(size_3d)
        self._three_d: ThreeD | None = None

    # -- loading ------------------------------------------------------------------------
    def _entry(self, key: str) -> FileEntry:
        for entry in self.case.files:
            if entry.key == key:
                return entry
        raise KeyError(f"case {self.case.case_id} has no file {key!r}")

    def _volume_node(self, key: str) -> Any:
        if key not in self._nodes:
            from medtorch.io import read_volume
            from medtorch.slicer.renders import volume_node

            entry = self._entry(key)
            with views.batch(self.hs.scene):
                self._nodes[key] = volume_node(self.hs.scene, read_volume(entry.path), key)
        return self._nodes[key]

    def _add_segmentation(self, entry: FileEntry) -> None:
        from medtorch.io import read_volume
        from medtorch.slicer.renders import volume_node

        label = read_volume(entry.path, kind="label")
        array = np.asarray(label.array)
        if not array.any():
            return
        node = volume_node(self.hs.scene, label.with_array(array.astype(np.int16)), f"{entry.key}-label", labelmap=True)
        segmentation = self.hs.segmentation_from_labelmap(node, entry.key)
        views.show_segmentation(segmentation, fill=0.3, outline=1.0, surface=True)
        seg = segmentation.GetSegmentation()
        for index in range(seg.GetNumberOfSegments()):
            segment_id = seg.GetNthSegmentID(index)
            segment = seg.GetSegment(segment_id)
            value = segment.GetLabelValue() if hasattr(segment, "GetLabelValue") else index + 1
            name = f"{entry.key} {value}" if seg.GetNumberOfSegments() > 1 else entry.key
            segment.SetName(name)
            color = tuple(float(c) for c in segment.GetColor())
            self.segments.append(SegmentInfo(f"{entry.key}/{segment_id}", name, (color[0], color[1], color[2]),
                                             segmentation, segment_id))

    # -- what is shown ---------------------------------------------------------------------
    def show(self, background: str | None, foreground: str | None, opacity: float) -> None:
        """Set the layers of the three linked slice views (file keys; ``None``: no foreground)."""
        first = self.background is None or background != self.background
        bg = self._volume_node(background) if background else None
        fg = self._volume_node(foreground) if foreground else None
        self.background, self.foreground, self.opacity = background, foreground, float(opacity)
        for view in self.views.slices():
            comp = view.composite
            comp.SetBackgroundVolumeID(bg.GetID() if bg is not None else None)
            comp.SetForegroundVolumeID(fg.GetID() if fg is not None else None)
            comp.SetForegroundOpacity(self.opacity)
        if first and bg is not None:
            bounds = [0.0] * 6
            bg.GetRASBounds(bounds)
            self.bounds = bounds
            focus = bounds
            if self.segments:  # where the first segmentation is: what the case is about
                seg_bounds = [0.0] * 6
                self.segments[0].segmentation.GetRASBounds(seg_bounds)
                if seg_bounds[1] >= seg_bounds[0]:
                    focus = seg_bounds
            self.position = [(focus[0] + focus[1]) / 2, (focus[2] + focus[3]) / 2, (focus[4] + focus[5]) / 2]
            for view in self.views.slices():
                view.fit()
            self.set_position(self.position)
            self._show_volume_rendering()

    def set_position(self, ras: list[float]) -> None:
        """Move the linked views to the RAS point ``ras``: each slice view through its own axis."""
        self.position = [float(v) for v in ras]
        for name in SLICE_AXES:
            self.views[name].jump_to(self.position)  # along the view's own normal, whatever its sign

    def slice_range(self, name: str) -> tuple[float, float]:
        """The slider range (mm) of slice view ``name``: the background's extent along its axis."""
        axis = SLICE_AXES[name][0]
        return self.bounds[2 * axis], self.bounds[2 * axis + 1]

    def set_segment_visible(self, key: str, visible: bool) -> None:
        for info in self.segments:
            if info.key == key:
                info.segmentation.GetDisplayNode().SetSegmentVisibility(info.segment_id, bool(visible))

    def _show_volume_rendering(self) -> None:
        if self._rendering_display is not None:
            self._rendering_display.SetVisibility(0)
            self._rendering_display = None
        if self.volume_rendering and self.background:
            # fainter where there are segments, so that their surfaces show through
            self._rendering_display = views.show_volume_rendering(self.hs, self._volume_node(self.background),
                                                                  max_opacity=0.05 if self.segments else 0.15)

    def set_volume_rendering(self, on: bool) -> None:
        self.volume_rendering = bool(on)
        self._show_volume_rendering()

    # -- renders ---------------------------------------------------------------------------
    def render_slice(self, name: str) -> bytes:
        return png_bytes(self.views[name].render())

    def render_3d(self) -> bytes:
        if self._three_d is None:
            self._three_d = ThreeD(self)
        three_d: ThreeD = self._three_d
        return png_bytes(three_d.render())

    def close(self) -> None:
        if self._three_d is not None:
            self._three_d.close()
            self._three_d = None
        self.views.close()
        self.hs.scene.Clear(1)


class ThreeD:
    """The case's 3D view, its camera framing the background volume, turned by the scene's
    azimuth and elevation."""

    def __init__(self, case_scene: CaseScene) -> None:
        self.cs = case_scene
        self.view = views.ThreeDView(case_scene.hs.scene, case_scene.hs.app_logic, "1",
                                     (case_scene._size_3d, case_scene._size_3d))

    def render(self) -> np.ndarray:
        cs = self.cs
        self.view.reset_camera("Anterior", azimuth=cs.azimuth, elevation=cs.elevation, zoom=1.2,
                               bounds=cs.bounds if cs.background else None)
        return self.view.render()

    def close(self) -> None:
        self.view.close()
