"""The Segment Editor effect "Grow from seeds (MedTorch)": its logic on the headless Slicer, with the
images the Segment Editor hands an auto-complete effect (the source volume and the merged seed
labelmap as ``vtkOrientedImageData``, on an oblique, anisotropic grid), the preview's geometry
and labels, the background found by name, fast re-runs after a stroke, and the segmentation left
untouched until Apply."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from medtorch.phantoms import oblique_geometry
from medtorch.segment import metrics as M
from medtorch.segment.tumor_phantom import make_tumor_phantom, stroke_seeds, synthetic_tissue
from medtorch.volume import Volume

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SegmentTumor"))


@pytest.fixture(scope="module")
def phantom():
    geom = oblique_geometry(size=(60, 56, 40), spacing=(1.2, 1.3, 1.8), angles_deg=(8.0, -5.0, 12.0))
    ph = make_tumor_phantom(synthetic_tissue(geom, seed=4), noise=0.06, seed=3, core_radius_mm=7.0, rim_mm=3.0,
                            oedema_radius_mm=14.0)
    wt = Volume((ph.truth.array > 0).astype(np.uint8), geom, "label")
    return ph, wt, stroke_seeds(wt, classes=[1], seed=0)


def _editor_images(scene, ph, seeds, names):
    """What the Segment Editor gives the effect: the source volume and the merged seeds (values
    1..N in the segments' order) as vtkOrientedImageData on one grid."""
    import slicer

    from medtorch.slicer import mrml

    source_node = mrml.node_from_volume(ph.channels["FLAIR"], "FLAIR", scene)
    seg_node = mrml.segmentation_from_label(seeds, names, "Seeds", reference_node=source_node, scene=scene)
    source = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(source_node)
    merged = slicer.vtkOrientedImageData()
    ids = [seg_node.GetSegmentation().GetNthSegmentID(i) for i in range(len(names))]
    import vtk

    id_list = vtk.vtkStringArray()
    for i in ids:
        id_list.InsertNextValue(i)
    assert seg_node.GenerateMergedLabelmapForAllSegments(merged, 0, source, id_list)
    return source_node, seg_node, source, merged


def _labels(seg_node, source_node):
    from medtorch.slicer import mrml

    return mrml.label_from_segmentation(seg_node, source_node).array.copy()


def test_oriented_image_round_trip_keeps_lps_geometry(scene, phantom):
    """vtkOrientedImageData (RAS, any extent) -> Volume (LPS) -> vtkOrientedImageData, on an oblique grid."""
    import slicer

    from medtorch.slicer import mrml

    ph, _, _ = phantom
    node = mrml.node_from_volume(ph.channels["FLAIR"], "FLAIR", scene)
    image = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(node)
    vol = mrml.volume_from_oriented_image(image)
    assert vol.geometry.isclose(ph.channels["FLAIR"].geometry, atol=1e-6)
    np.testing.assert_array_equal(vol.array, ph.channels["FLAIR"].array)
    # a clipped image (extent not starting at 0) keeps its physical place
    clip = slicer.vtkOrientedImageData()
    clip.DeepCopy(image)
    ext = list(image.GetExtent())
    clipper = slicer.vtkOrientedImageDataResample()
    sub = [ext[0] + 5, ext[1] - 3, ext[2] + 4, ext[3], ext[4] + 2, ext[5] - 1]
    clipper.CopyImage(image, clip, sub)
    part = mrml.volume_from_oriented_image(clip)
    expected = ph.channels["FLAIR"].geometry.index_to_physical(np.array([[5.0, 4.0, 2.0]]))[0]
    np.testing.assert_allclose(part.geometry.origin, expected, atol=1e-6)
    np.testing.assert_array_equal(part.array, ph.channels["FLAIR"].array[2:-1, 4:, 5:-3])
    out = mrml.fill_oriented_image(slicer.vtkOrientedImageData(), clip, (part.array > 0).astype(np.uint8))
    assert out.GetExtent() == clip.GetExtent()
    assert mrml.geometry_from_oriented_image(out).isclose(part.geometry, atol=1e-9)


@pytest.mark.parametrize("names", [{1: "Tumor", 2: "Background"}, {2: "Background", 1: "Tumor"}])
def test_preview_segments_the_tumor_and_fills_the_background_segment(scene, phantom, names):
    from SegmentTumorLib.GrowFromSeeds import GrowFromSeedsLogic, background_label

    from medtorch.slicer import mrml

    ph, wt, seeds = phantom
    source_node, seg_node, source, merged = _editor_images(scene, ph, seeds, names)
    order = list(names.values())
    bg = background_label(order)
    assert order[bg - 1] == "Background"
    before = _labels(seg_node, source_node)
    import slicer

    out = slicer.vtkOrientedImageData()
    logic = GrowFromSeedsLogic()
    logic.preview(source, merged, out, bg)
    preview = mrml.volume_from_oriented_image(out, "label")
    assert preview.geometry.isclose(mrml.geometry_from_oriented_image(merged), atol=1e-9)
    tumor_value = order.index("Tumor") + 1
    assert M.dice(preview.array == tumor_value, wt.array > 0) > 0.85
    (z0, y0, x0), (z1, y1, x1) = logic.last["region"]
    region = preview.array[z0:z1, y0:y1, x0:x1]
    assert set(np.unique(region)) == {1, 2}  # every voxel of the region goes to a segment
    merged_arr = mrml.volume_from_oriented_image(merged, "label").array
    assert np.all(preview.array[merged_arr > 0] == merged_arr[merged_arr > 0])  # seeds kept
    # the preview never writes into the segmentation (Cancel leaves it as it was)
    np.testing.assert_array_equal(_labels(seg_node, source_node), before)


def test_a_new_stroke_reuses_the_features_and_changes_the_preview(scene, phantom):
    import slicer
    from SegmentTumorLib.GrowFromSeeds import GrowFromSeedsLogic

    from medtorch.slicer import mrml

    ph, wt, seeds = phantom
    _, _, source, merged = _editor_images(scene, ph, seeds, {1: "Tumor", 2: "Background"})
    logic = GrowFromSeedsLogic()
    first = mrml.volume_from_oriented_image(logic.preview(source, merged, slicer.vtkOrientedImageData()), "label")
    assert not logic.last["incremental"]
    t_first = logic.last["seconds"]["total"]
    # a background stroke painted over a block the first preview gave to the tumor
    arr = mrml.volume_from_oriented_image(merged, "label").array.copy()
    where = np.argwhere((first.array == 1) & (arr == 0) & (wt.array > 0))
    z, y, x = where[len(where) // 2]
    arr[z - 1:z + 2, y - 2:y + 3, x - 2:x + 3] = 2
    edited = mrml.fill_oriented_image(slicer.vtkOrientedImageData(), merged, arr.astype(np.int16))
    start = time.perf_counter()
    second = mrml.volume_from_oriented_image(logic.preview(source, edited, slicer.vtkOrientedImageData()), "label")
    assert logic.last["incremental"]
    assert logic.last["seconds"]["features"] < 0.5 * max(t_first, 1e-3) + 0.05
    assert np.all(second.array[z - 1:z + 2, y - 2:y + 3, x - 2:x + 3] == 2)
    assert time.perf_counter() - start < 30.0
    logic.reset()
    logic.preview(source, edited, slicer.vtkOrientedImageData())
    assert not logic.last["incremental"]


def test_seeds_of_one_segment_are_refused_with_a_fix(scene, phantom):
    import slicer
    from SegmentTumorLib.GrowFromSeeds import GrowFromSeedsLogic

    from medtorch.errors import MedTorchInputError
    from medtorch.slicer import mrml

    ph, wt, seeds = phantom
    _, _, source, merged = _editor_images(scene, ph, seeds, {1: "Tumor", 2: "Background"})
    arr = mrml.volume_from_oriented_image(merged, "label").array
    only = mrml.fill_oriented_image(slicer.vtkOrientedImageData(), merged, np.where(arr == 1, 1, 0).astype(np.int16))
    with pytest.raises(MedTorchInputError, match="one segment only"):
        GrowFromSeedsLogic().preview(source, only, slicer.vtkOrientedImageData())


def test_the_effect_is_listed_and_registers_only_inside_slicer():
    import slicer_testbed

    mod = slicer_testbed.load_module("SegmentTumor")
    assert mod.registerEditorEffect() is False  # no Segment Editor effects without the application
    cmake = (Path(__file__).resolve().parents[1] / "SegmentTumor" / "CMakeLists.txt").read_text()
    for name in ("SegmentTumorLib/SegmentEditorEffect.py", "SegmentTumorLib/GrowFromSeeds.py",
                 "SegmentTumorLib/SegmentEditorEffect.png"):
        assert name.split("/")[1] in cmake
