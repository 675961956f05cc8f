"""Render each module's demo result in Slicer's own views, for the extension page.

    python tools/render_screenshots.py demo-out      # a `medtorch demo --out demo-out` folder
    python tools/render_screenshots.py --run         # runs the demo into a temporary folder first

writes into ``Resources/Screenshots/``:

* ``FusionRegistration.png``: the T1 with the T2-like scan as a 50 % foreground (Slicer's Magenta colour table) in linked
  Red/Yellow/Green slice views, before (top) and after (bottom) MedTorch's registration, and
  the fused volume (unregistered average, top; guided-filter fusion after registration,
  bottom) volume-rendered in the 3D view;
* ``EnhanceSR.png``: axial views of the noisy T1, the denoised T1 and the clean T1 (top), and
  coronal views of the thick-slice T1, its self-supervised super-resolution and the thin-slice
  reference (bottom), side by side;
* ``SegmentTumor.png``: four-up, zoomed on the tumor: the tumor phantom with the seeded segmentation (filled and
  outlined) and the truth (outline) in the slice views, their closed surfaces in 3D over a
  faint volume rendering of the head;
* ``demo-views.png``: four-up of the registered fusion (the README picture).

They are Slicer-view renders made headlessly: Slicer's MRML displayable managers and view
logics from PyPI's ``slicer-core`` (:mod:`medtorch.slicer.views`), drawn offscreen through
VTK's EGL window on software OpenGL. The module panels (the Qt widgets) need a Slicer
application and are not shown. The demo's matplotlib figures stay in the demo report
(``tools/make_screenshots.py`` stacks them into ``<Module>-figures.png``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

OUT = REPO / "Resources" / "Screenshots"
NEEDED = (
    "t1.nrrd", "t2like_misaligned.nrrd", "t2like_registered.nrrd", "fused_no_registration.nrrd",
    "fused_registered_gff.nrrd", "t1_noisy.nrrd", "t1_denoised_anisotropic.nrrd", "t1_thick_slices.nrrd",
    "t1_sr_selfsup.nrrd", "t1_sr_reference.nrrd", "tumor_phantom.nrrd", "tumor_truth.nrrd",
    "tumor_segmentation_seeded.nrrd",
)
SEGMENT_COLOR = (1.0, 0.85, 0.1)  # the seeded segmentation
TRUTH_COLOR = (0.2, 0.9, 0.3)  # the inserted tumor (outline only)


def _window_level(node: Any, mask_zero: bool = True) -> None:
    """A robust window/level (1st-99.5th percentile of the non-zero voxels), as Slicer's auto W/L."""
    from vtk.util import numpy_support

    values = numpy_support.vtk_to_numpy(node.GetImageData().GetPointData().GetScalars())
    if mask_zero and (values != 0).any():
        values = values[values != 0]
    lo, hi = np.percentile(values, [1.0, 99.5])
    display = node.GetDisplayNode()
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(float(lo), float(hi))


def _centroid_ras(node: Any) -> tuple[float, float, float]:
    """The RAS centre of a label map's non-zero voxels."""
    import vtk
    from vtk.util import numpy_support

    image = node.GetImageData()
    nx, ny, nz = image.GetDimensions()
    values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(nz, ny, nx)
    k, j, i = (float(v.mean()) for v in np.nonzero(values))
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    ras = matrix.MultiplyPoint((i, j, k, 1.0))
    return ras[0], ras[1], ras[2]


def _segmentation(hs: Any, path: Path, name: str, color: tuple[float, float, float]) -> Any:
    labelmap = hs.load_volume(path, name + "-label", labelmap=True)
    segmentation = hs.segmentation_from_labelmap(labelmap, name)
    seg = segmentation.GetSegmentation()
    for index in range(seg.GetNumberOfSegments()):
        segment = seg.GetNthSegment(index)
        segment.SetColor(*color)
        segment.SetName(name)
    return segmentation


def render_all(demo: Path, out: Path, size: int = 320) -> dict[str, float]:
    """Render the four pictures from the demo folder ``demo`` into ``out``; seconds per picture."""
    from medtorch.slicer import views

    reason = views.rendering_unavailable()
    if reason:
        raise SystemExit(f"cannot render: {reason}")
    times: dict[str, float] = {}
    out.mkdir(parents=True, exist_ok=True)

    # -- FusionRegistration and the README picture ----------------------------------------------
    start = time.perf_counter()
    hs = views.headless_scene()
    with views.batch(hs.scene):
        vol = {name: hs.load_volume(demo / f"{name}.nrrd") for name in (
            "t1", "t2like_misaligned", "t2like_registered", "fused_no_registration", "fused_registered_gff")}
        for node in vol.values():
            _window_level(node)
        for moving in ("t2like_misaligned", "t2like_registered"):  # Slicer's Magenta table: misalignment shows
            vol[moving].GetDisplayNode().SetAndObserveColorNodeID("vtkMRMLColorTableNodeMagenta")
    with views.Views(hs.scene, hs.app_logic, size) as v:
        rows = []
        for moving, fused in (("t2like_misaligned", "fused_no_registration"),
                              ("t2like_registered", "fused_registered_gff")):
            v.show(background=vol["t1"], foreground=vol[moving], opacity=0.5)
            for other in ("fused_no_registration", "fused_registered_gff"):
                display = hs.logic("VolumeRendering").GetFirstVolumeRenderingDisplayNode(vol[other])
                if display is not None:
                    display.SetVisibility(0)
            views.show_volume_rendering(hs, vol[fused], max_opacity=0.2)
            v["3D"].reset_camera("Anterior", azimuth=35, elevation=20, zoom=1.6)
            rows.append([v[name].render() for name in ("Red", "Yellow", "Green", "3D")])
        bars = [["Red", "Yellow", "Green", "3D"]] * 2
        views.save_png(views.compose(rows, bars), out / "FusionRegistration.png")
        times["FusionRegistration"] = time.perf_counter() - start
        start = time.perf_counter()
        views.save_png(views.compose([[rows[1][0], rows[1][3]], [rows[1][1], rows[1][2]]],
                                     [["Red", "3D"], ["Yellow", "Green"]]), out / "demo-views.png")
        times["demo-views"] = time.perf_counter() - start

    # -- EnhanceSR --------------------------------------------------------------------------------
    start = time.perf_counter()
    hs = views.headless_scene()
    with views.batch(hs.scene):
        vol = {name: hs.load_volume(demo / f"{name}.nrrd") for name in (
            "t1", "t1_noisy", "t1_denoised_anisotropic", "t1_thick_slices", "t1_sr_selfsup", "t1_sr_reference")}
        for node in vol.values():
            _window_level(node)
    with views.SliceView(hs.scene, hs.app_logic, "Red", (size, size)) as red, \
            views.SliceView(hs.scene, hs.app_logic, "Green", (size, size)) as green:
        top = [red.show(background=vol[name], fit=True).render()
               for name in ("t1_noisy", "t1_denoised_anisotropic", "t1")]
        bottom = [green.show(background=vol[name], fit=True).render()
                  for name in ("t1_thick_slices", "t1_sr_selfsup", "t1_sr_reference")]
    views.save_png(views.compose([top, bottom], [["Red"] * 3, ["Green"] * 3]), out / "EnhanceSR.png")
    times["EnhanceSR"] = time.perf_counter() - start

    # -- SegmentTumor -----------------------------------------------------------------------------
    start = time.perf_counter()
    hs = views.headless_scene()
    with views.batch(hs.scene):
        phantom = hs.load_volume(demo / "tumor_phantom.nrrd")
        _window_level(phantom)
        truth_label = hs.load_volume(demo / "tumor_truth.nrrd", "truth-label", labelmap=True)
        center = _centroid_ras(truth_label)
        hs.scene.RemoveNode(truth_label)
        seeded = _segmentation(hs, demo / "tumor_segmentation_seeded.nrrd", "tumor (seeded)", SEGMENT_COLOR)
        truth = _segmentation(hs, demo / "tumor_truth.nrrd", "tumor (truth)", TRUTH_COLOR)
        views.show_segmentation(seeded, fill=0.5, outline=1.0, surface=True)
        views.show_segmentation(truth, fill=0.0, outline=1.0, surface=False)
    with views.Views(hs.scene, hs.app_logic, size) as v:
        v.show(background=phantom, center=center, zoom=1.8)
        views.show_volume_rendering(hs, phantom, max_opacity=0.06)
        v["3D"].reset_camera("Left", azimuth=-30, elevation=25, zoom=1.5)
        views.save_png(v.render_layout("four-up"), out / "SegmentTumor.png")
    times["SegmentTumor"] = time.perf_counter() - start
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("demo_out", type=Path, nargs="?", help="a `medtorch demo --out` folder")
    parser.add_argument("--run", action="store_true", help="run `medtorch demo` into a temporary folder first")
    parser.add_argument("--out", type=Path, default=OUT, help=f"where the pictures go (default: {OUT})")
    parser.add_argument("--size", type=int, default=320, help="pixels per view (default: 320)")
    args = parser.parse_args()
    if args.run == (args.demo_out is not None):
        parser.error("give a demo folder or --run, not both")
    with tempfile.TemporaryDirectory(prefix="medtorch-demo-") as tmp:
        demo = args.demo_out
        if args.run:
            from medtorch.demo import run_demo

            demo = Path(tmp)
            run_demo(demo)
        missing = [name for name in NEEDED if not (demo / name).is_file()]
        if missing:
            parser.error(f"{demo} lacks {', '.join(missing)}: run `medtorch demo --out {demo}` first")
        times = render_all(demo, args.out, args.size)
    for name, seconds in times.items():
        print(f"{args.out / (name + '.png')}: {seconds:.1f} s")
    print(f"total: {sum(times.values()):.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
