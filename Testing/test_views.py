"""medtorch.slicer.views: Slicer's slice and 3D views rendered offscreen (EGL), checked as a person would.

A small synthetic scene: a background volume (a smooth blob), a foreground volume (a bright
block off-centre), a label map, a segmentation (a red sphere) and a markups point. Skipped,
with the reason, where slicer-core or offscreen OpenGL is missing.

The checks of medtorch.slicer.checks (what the module self-tests look for on their renders)
are tested on made-up pixels and on real renders, with the cases where they must fail: an
empty view, a foreground at opacity 0, a hidden segment, a colour in the wrong place.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("slicer_core")

from medtorch.slicer import checks, views  # noqa: E402

SIZE = 128
SHAPE = (24, 48, 48)  # z, y, x (1 mm voxels, origin 0, IJK-to-RAS the identity: R = x, A = y, S = z)
RED = (1.0, 0.1, 0.1)


@pytest.fixture(scope="module")
def rendering():
    reason = views.rendering_unavailable()
    if reason:
        pytest.skip(f"offscreen rendering unavailable: {reason}")


def _volume(hs, array, name, labelmap=False):
    import vtk
    from vtk.util import numpy_support

    cls = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = hs.scene.AddNewNodeByClass(cls, name)
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    vtk_type = vtk.VTK_SHORT if labelmap else vtk.VTK_FLOAT
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(array.ravel(), deep=True, array_type=vtk_type))
    node.SetAndObserveImageData(image)
    node.CreateDefaultDisplayNodes()
    if not labelmap:
        node.GetDisplayNode().AutoWindowLevelOff()
        node.GetDisplayNode().SetWindowLevel(100, 50)
    return node


@pytest.fixture
def scene_of_test_bed(headless_slicer):
    """The test bed's scene, cleared (this module's own ``scene`` fixture shadows conftest's)."""
    import slicer
    import slicer_testbed

    slicer_testbed.reset_scene()
    yield slicer.mrmlScene
    slicer_testbed.reset_scene()


@pytest.fixture(scope="module")
def scene(rendering):
    hs = views.headless_scene()
    z, y, x = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]].astype(np.float32)
    center = (SHAPE[0] / 2, SHAPE[1] / 2, SHAPE[2] / 2)
    r2 = (z - center[0]) ** 2 + (y - center[1]) ** 2 + (x - center[2]) ** 2
    with views.batch(hs.scene):
        background = _volume(hs, (80 * np.exp(-r2 / 600.0)).astype(np.float32), "background")
        block = np.zeros(SHAPE, np.float32)
        block[:, 4:16, 4:16] = 100.0  # R, A in [4, 16): left and posterior of the centre
        foreground = _volume(hs, block, "foreground")
        sphere = (r2 < 64).astype(np.int16)
        labelmap = _volume(hs, sphere, "sphere-label", labelmap=True)
        segmentation = hs.segmentation_from_labelmap(labelmap, "tumor")
        segment = segmentation.GetSegmentation().GetNthSegment(0)
        segment.SetColor(*RED)
        views.show_segmentation(segmentation, fill=0.4, outline=1.0, surface=True)
    ns = type("Scene", (), {})()
    ns.hs, ns.background, ns.foreground, ns.segmentation = hs, background, foreground, segmentation
    ns.center_ras = (center[2], center[1], center[0])  # the volumes' IJK-to-RAS is the identity
    with views.Views(hs.scene, hs.app_logic, size=SIZE) as v:
        ns.views = v
        yield ns


def _reddish(pixels):
    r, g, b = (pixels[..., i].astype(int) for i in range(3))
    return (r > 150) & (r > g + 80) & (r > b + 80)


def test_rendering_probe_is_cached_and_says_why():
    first = views.rendering_unavailable()
    assert views.rendering_unavailable() is first
    assert first is None or isinstance(first, str) and first


def test_probe_says_why_when_egl_or_slicer_core_is_missing(monkeypatch):
    import shutil
    import subprocess
    import sys

    # No EGL vendor library: the probe's child process dies in VTK; this one is told why.
    monkeypatch.setenv("__EGL_VENDOR_LIBRARY_FILENAMES", "/nonexistent/egl_vendor.json")
    reason = views._probe(sys.executable)
    assert reason is not None and "no offscreen OpenGL through EGL" in reason and "\x1b" not in reason
    monkeypatch.delenv("__EGL_VENDOR_LIBRARY_FILENAMES")
    bare = shutil.which("python3")  # a Python without VTK, where there is one
    if bare and subprocess.run([bare, "-c", "import vtk"], capture_output=True).returncode != 0:
        assert "slicer-core is not installed" in (views._probe(bare) or "")


def test_background_only_slice_shows_the_volume(scene):
    red = scene.views["Red"]
    red.composite.SetForegroundVolumeID(None)
    scene.segmentation.GetDisplayNode().SetVisibility(0)
    try:
        red.show(background=scene.background, fit=True).jump_to(scene.center_ras)
        pixels = red.render()
    finally:
        scene.segmentation.GetDisplayNode().SetVisibility(1)
    assert pixels.shape == (SIZE, SIZE, 3) and pixels.dtype == np.uint8
    grey = pixels.astype(int)
    centre = grey[SIZE // 2 - 4: SIZE // 2 + 4, SIZE // 2 - 4: SIZE // 2 + 4].mean()
    corner = grey[:8, :8].mean()
    assert centre > 150 > 60 > corner, (centre, corner)  # the blob is bright in the middle, dark outside
    assert np.abs(grey[..., 0] - grey[..., 1]).max() <= 2  # a grey volume draws grey


def test_foreground_changes_pixels_where_it_is(scene):
    red = scene.views["Red"]
    scene.segmentation.GetDisplayNode().SetVisibility(0)
    try:
        red.composite.SetForegroundVolumeID(None)
        red.show(background=scene.background, fit=True).jump_to(scene.center_ras)
        alone = red.render().astype(int)
        red.show(foreground=scene.foreground, opacity=0.5)
        fused = red.render().astype(int)
    finally:
        red.composite.SetForegroundVolumeID(None)
        scene.segmentation.GetDisplayNode().SetVisibility(1)
    changed = np.abs(fused - alone).max(axis=2) > 20
    assert changed.mean() > 0.02, changed.mean()
    # At 50 % the foreground's zeros darken the background everywhere; its block brightens it.
    changed = (fused - alone).mean(axis=2) > 20
    assert changed.mean() > 0.01, changed.mean()
    # The block lies at R, A in [4, 16): left and posterior of the centre. Slicer's axial view
    # shows the patient's right on the screen's left and anterior at the top.
    ys, xs = np.nonzero(changed)
    assert xs.mean() > SIZE / 2 and ys.mean() > SIZE / 2, (xs.mean(), ys.mean())
    assert not changed[:SIZE // 2, :SIZE // 2].any()  # far from the block nothing moved


def test_segment_fill_and_outline_colour_show_in_the_slice(scene):
    red = scene.views["Red"]
    red.composite.SetForegroundVolumeID(None)
    red.show(background=scene.background, fit=True).jump_to(scene.center_ras)
    pixels = red.render()
    reddish = _reddish(pixels)
    assert reddish.sum() > 50, reddish.sum()  # the outline (opaque) is drawn in the segment's colour
    ys, xs = np.nonzero(reddish)
    assert abs(xs.mean() - SIZE / 2) < SIZE / 10 and abs(ys.mean() - SIZE / 2) < SIZE / 10
    # inside the sphere the fill tints the grey towards red; outside nothing is tinted
    inside = pixels[SIZE // 2 - 3: SIZE // 2 + 3, SIZE // 2 - 3: SIZE // 2 + 3].astype(int)
    assert (inside[..., 0] - inside[..., 1]).mean() > 30
    outside = pixels[:10, :10].astype(int)
    assert np.abs(outside[..., 0] - outside[..., 1]).max() <= 2
    # zoomed in twice about the sphere's centre: the sphere's fill covers about 4 times the pixels
    filled = ((pixels[..., 0].astype(int) - pixels[..., 1]) > 30).sum()
    red.jump_to(scene.center_ras, centre=True).zoom(2.0)
    zoomed = red.render()
    zoomed_filled = ((zoomed[..., 0].astype(int) - zoomed[..., 1]) > 30).sum()
    assert 3.0 < zoomed_filled / filled < 5.0, (filled, zoomed_filled)
    red.fit()
    # the other slice views cut the same sphere
    for name in ("Yellow", "Green"):
        view = scene.views[name]
        view.show(background=scene.background, fit=True).jump_to(scene.center_ras)
        assert _reddish(view.render()).sum() > 50, name


def test_label_map_layer_is_coloured(scene):
    hs = scene.hs
    label = np.zeros(SHAPE, np.int16)
    label[:, 30:44, 30:44] = 1
    node = _volume(hs, label, "label", labelmap=True)
    red = scene.views["Red"]
    scene.segmentation.GetDisplayNode().SetVisibility(0)
    try:
        red.show(background=scene.background, fit=True).jump_to(scene.center_ras)
        alone = red.render().astype(int)
        red.show(label=node, label_opacity=1.0)
        labelled = red.render().astype(int)
    finally:
        red.composite.SetLabelVolumeID(None)
        scene.segmentation.GetDisplayNode().SetVisibility(1)
        hs.scene.RemoveNode(node)
    changed = np.abs(labelled - alone).max(axis=2) > 20
    assert changed.mean() > 0.02
    ys, xs = np.nonzero(changed)
    assert xs.mean() < SIZE / 2 and ys.mean() < SIZE / 2  # R, A >= 30: right and anterior
    tint = labelled[changed]
    assert (np.abs(tint[:, 0] - tint[:, 1]) + np.abs(tint[:, 1] - tint[:, 2])).mean() > 20  # coloured, not grey


def test_markups_point_shows_where_it_is(scene):
    import vtk

    red = scene.views["Red"]
    scene.segmentation.GetDisplayNode().SetVisibility(0)
    point = scene.hs.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "P")
    try:
        red.composite.SetForegroundVolumeID(None)
        red.show(background=scene.background, fit=True).jump_to(scene.center_ras)
        before = red.render().astype(int)
        point.CreateDefaultDisplayNodes()
        # 8 mm right and 8 mm anterior of the centre: the screen's left and top
        point.AddControlPoint(vtk.vtkVector3d(scene.center_ras[0] + 8, scene.center_ras[1] + 8, scene.center_ras[2]))
        display = point.GetDisplayNode()
        display.SetSelectedColor(0.1, 1.0, 0.1)
        display.SetGlyphScale(4)
        after = red.render().astype(int)
    finally:
        scene.hs.scene.RemoveNode(point)
        scene.segmentation.GetDisplayNode().SetVisibility(1)
    green = (after[..., 1] > 200) & (after[..., 1] > after[..., 0] + 80) & (np.abs(after - before).max(axis=2) > 30)
    assert green.sum() > 10, green.sum()
    ys, xs = np.nonzero(green)
    assert xs.mean() < SIZE / 2 - 5 and ys.mean() < SIZE / 2 - 5, (xs.mean(), ys.mean())


def test_3d_closed_surface_appears_in_the_middle(scene):
    three_d = scene.views["3D"]
    three_d.reset_camera("Anterior")
    pixels = three_d.render()
    assert pixels.shape == (SIZE, SIZE, 3)
    reddish = _reddish(pixels)
    assert reddish.mean() > 0.02, reddish.mean()
    ys, xs = np.nonzero(reddish)
    assert abs(xs.mean() - SIZE / 2) < SIZE / 8 and abs(ys.mean() - SIZE / 2) < SIZE / 8
    assert not reddish[:8, :].any() and not reddish[-8:, :].any()  # the background is Slicer's blue gradient
    corner = pixels[:4, :4].astype(int).mean(axis=(0, 1))
    assert corner[2] > corner[0] + 20


def test_volume_rendering_is_not_empty_and_surface_shows_through(scene):
    three_d = scene.views["3D"]
    display = scene.segmentation.GetDisplayNode()
    display.SetVisibility(0)
    try:
        three_d.reset_camera("Anterior")
        empty = three_d.render().astype(int)
        vr = views.show_volume_rendering(scene.hs.app_logic, scene.background, max_opacity=0.5)
        rendered = three_d.render().astype(int)
    finally:
        display.SetVisibility(1)
    changed = np.abs(rendered - empty).max(axis=2) > 20
    assert changed.mean() > 0.05, changed.mean()
    ys, xs = np.nonzero(changed)
    assert abs(xs.mean() - SIZE / 2) < SIZE / 8 and abs(ys.mean() - SIZE / 2) < SIZE / 8
    vr.SetVisibility(0)


def test_unknown_preset_says_what_to_do(scene):
    with pytest.raises(ValueError, match="preset"):
        views.show_volume_rendering(scene.hs.app_logic, scene.background, preset="No-Such-Preset")


def test_layouts_put_the_views_together(scene, tmp_path):
    v = scene.views
    v.show(background=scene.background, center=scene.center_ras)
    v["3D"].reset_camera("Anterior", azimuth=30, elevation=20)
    four = v.render_layout("four-up")
    bar = 6
    assert four.shape == (2 * (SIZE + bar) + 2, 2 * SIZE + 2, 3)
    assert tuple(four[0, 0]) == views.VIEW_COLORS["Red"] and tuple(four[0, -1]) == views.VIEW_COLORS["3D"]
    one = v.render_layout("one-up", labels=False)
    assert one.shape == (SIZE, SIZE, 3)
    assert np.array_equal(one, four[bar: bar + SIZE, :SIZE])  # the same Red view, unchanged by the layout
    side = v.render_layout("side-by-side")
    assert side.shape == (SIZE + bar, 2 * SIZE + 2, 3)
    path = views.save_png(four, tmp_path / "four-up.png")
    import vtk
    from vtk.util import numpy_support

    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    w, h, _ = reader.GetOutput().GetDimensions()
    back = numpy_support.vtk_to_numpy(reader.GetOutput().GetPointData().GetScalars()).reshape(h, w, -1)[::-1]
    assert np.array_equal(back[..., :3], four)
    with pytest.raises(ValueError, match="layout"):
        v.render_layout("nine-up")  # type: ignore[arg-type]


def test_closed_view_refuses_to_render(rendering):
    hs = views.headless_scene()
    view = views.SliceView(hs.scene, hs.app_logic, "Red", (32, 32))
    assert view.render().shape == (32, 32, 3)  # no volume: the empty view renders black
    view.close()
    view.close()
    with pytest.raises(RuntimeError, match="closed"):
        view.render()


def test_views_of_the_test_bed_scene(rendering, scene_of_test_bed):
    """The views work on the headless Slicer test bed's scene, its singleton slice nodes included."""
    import slicer

    hs = views.headless_scene(slicer.mrmlScene, slicer.app.applicationLogic())
    red_node = slicer.mrmlScene.GetSingletonNode("Red", "vtkMRMLSliceNode")
    z, y, x = np.mgrid[:16, :32, :32]
    volume = _volume(hs, (100.0 * ((x - 16) ** 2 + (y - 16) ** 2 < 64)).astype(np.float32), "disc")
    with views.SliceView(hs.scene, hs.app_logic, "Red", (64, 64)) as red:
        assert red.node is red_node  # the module's Red view is the one rendered
        assert red.composite is slicer.mrmlScene.GetSingletonNode("Red", "vtkMRMLSliceCompositeNode")
        pixels = red.show(background=volume, fit=True).render()
    assert pixels[28:36, 28:36].mean() > 200 and pixels[:4, :4].mean() < 10
    with views.ThreeDView(hs.scene, hs.app_logic, "1", (64, 64)) as three_d:
        assert three_d.node is slicer.mrmlScene.GetSingletonNode("1", "vtkMRMLViewNode")
        assert three_d.render().shape == (64, 64, 3)


# -- medtorch.slicer.checks -------------------------------------------------------------------


def _picture():
    """A black 20 x 20 render with a red 5 x 4 patch (rows 5-9, columns 12-15)."""
    black = np.zeros((20, 20, 3), np.uint8)
    red = black.copy()
    red[5:10, 12:16] = (230, 20, 20)
    return black, red


def test_checks_measure_made_up_renders():
    black, red = _picture()
    assert checks.changed_fraction(red, black) == pytest.approx(20 / 400)
    assert checks.changed_mask(red, black)[5:10, 12:16].all() and checks.changed_mask(red, black).sum() == 20
    assert checks.coloured_fraction(red) == pytest.approx(20 / 400) and checks.coloured_fraction(black) == 0.0
    assert checks.non_background_fraction(red) == pytest.approx(20 / 400)
    assert checks.non_background_fraction(red, background=red) == 0.0  # a render of the empty view
    assert checks.non_background_fraction(red, background=(230, 20, 20)) == pytest.approx(380 / 400)
    assert checks.colour_centroid(red, (0.9, 0.08, 0.08)) == (13.5, 7.0)
    assert checks.centroid(np.zeros((4, 4), bool)) is None
    shaded = (red * 0.5).astype(np.uint8)  # a lit surface's darker side keeps its hue
    assert checks.colour_mask(shaded, (1.0, 0.1, 0.1)).sum() == 20
    grey = np.full((4, 4, 3), 200, np.uint8)
    assert not checks.colour_mask(grey, (1.0, 0.1, 0.1)).any()  # grey is no colour
    assert not checks.colour_mask(grey // 10, (0.5, 0.5, 0.5)).any()  # too dark to tell
    assert checks.colour_mask(grey, (0.5, 0.5, 0.5)).all()
    rng = np.random.default_rng(0)
    noisy = np.clip(128 + rng.normal(0, 30, (32, 32, 1)), 0, 255).astype(np.uint8).repeat(3, axis=2)
    smooth = np.full_like(noisy, 128)
    assert checks.roughness(smooth) == 0.0 < checks.roughness(noisy)
    assert checks.expect_smoother(smooth, noisy) == 0.0
    assert checks.expect_changed(red, black, min_fraction=0.04) == pytest.approx(0.05)
    assert checks.expect_not_blank(red, min_fraction=0.04) == pytest.approx(0.05)
    assert checks.expect_colour_near(red, (0.9, 0.08, 0.08), (13, 7), max_distance=1.0) == (13.5, 7.0)


def test_checks_fail_where_a_person_would_see_nothing():
    black, red = _picture()
    with pytest.raises(checks.VisualCheckFailed, match="fused: the render looks the same as before"):
        checks.expect_changed(black.copy(), black, what="fused")
    with pytest.raises(checks.VisualCheckFailed, match="looks the same"):  # 5 % changed, 10 % asked
        checks.expect_changed(red, black, min_fraction=0.1)
    with pytest.raises(checks.VisualCheckFailed, match="the render is empty"):
        checks.expect_not_blank(black)
    with pytest.raises(checks.VisualCheckFailed, match="empty"):  # the same as the empty view's render
        checks.expect_not_blank(red, background=red)
    with pytest.raises(checks.VisualCheckFailed, match="shows on 0 pixels"):
        checks.expect_colour_near(red, (0.1, 1.0, 0.1), (13, 7), max_distance=5)
    with pytest.raises(checks.VisualCheckFailed, match="11 pixels from the expected"):
        checks.expect_colour_near(red, (0.9, 0.08, 0.08), (2.5, 7), max_distance=5)
    rng = np.random.default_rng(0)
    noisy = np.clip(128 + rng.normal(0, 30, (32, 32, 1)), 0, 255).astype(np.uint8).repeat(3, axis=2)
    with pytest.raises(checks.VisualCheckFailed, match="not smoother"):
        checks.expect_smoother(noisy, np.full_like(noisy, 128))
    with pytest.raises(checks.VisualCheckFailed, match="not smoother"):
        checks.expect_smoother(noisy, noisy)
    assert issubclass(checks.VisualCheckFailed, AssertionError)  # a unittest self-test fails on it
    with pytest.raises(ValueError, match="different sizes"):
        checks.changed_fraction(red, red[:10])
    with pytest.raises(ValueError, match="height, width, 3"):
        checks.non_background_fraction(red[..., 0])


def test_no_render_switch_turns_rendering_off_and_visual_checks_say_why(monkeypatch):
    monkeypatch.setenv(views.NO_RENDER_ENV, "1")
    reason = views.rendering_unavailable()
    assert reason is not None and "MEDTORCH_NO_RENDER=1" in reason
    said: list[str] = []
    before = len(checks.SKIPPED)
    visual = checks.VisualChecks(said.append)
    assert not visual.available and visual.reason == reason
    assert said == [f"Visual checks skipped: {reason}"] and checks.SKIPPED[before:] == [reason]
    del checks.SKIPPED[before:]
    with pytest.raises(RuntimeError, match="unavailable"):
        with visual.views():
            pass
    monkeypatch.setenv(views.NO_RENDER_ENV, "0")  # 0 (or empty) leaves it on
    assert views.rendering_unavailable() is views._probe_once()


def test_empty_scene_fails_the_not_blank_check(rendering):
    hs = views.headless_scene()
    with views.Views(hs.scene, hs.app_logic, size=64) as v:
        with pytest.raises(checks.VisualCheckFailed, match="empty"):
            checks.expect_not_blank(v["Red"].render(), what="Red")
        empty_3d = v["3D"].reset_camera("Anterior").render()
        with pytest.raises(checks.VisualCheckFailed, match="empty"):
            checks.expect_not_blank(v["3D"].render(), background=empty_3d)
        # an empty 3D view is Slicer's blue gradient, not black: the background to compare with is its render
        assert checks.non_background_fraction(empty_3d) > 0.9


def test_foreground_at_opacity_zero_fails_the_fusion_check(scene):
    red = scene.views["Red"]
    scene.segmentation.GetDisplayNode().SetVisibility(0)
    try:
        red.composite.SetForegroundVolumeID(None)
        red.show(background=scene.background, fit=True).jump_to(scene.center_ras)
        alone = red.render()
        red.show(foreground=scene.foreground, opacity=0.0)
        hidden = red.render()
        red.show(opacity=0.5)
        shown = red.render()
    finally:
        red.composite.SetForegroundVolumeID(None)
        scene.segmentation.GetDisplayNode().SetVisibility(1)
    with pytest.raises(checks.VisualCheckFailed, match="looks the same"):
        checks.expect_changed(hidden, alone, what="foreground at opacity 0")
    assert checks.expect_changed(shown, alone) > 0.02
    checks.expect_not_blank(alone, min_fraction=0.3)


def test_projection_puts_points_where_they_show(scene):
    """SliceView.project and ThreeDView.project: the sphere's centre lands where its colour shows;
    the patient's right is the screen's left, anterior the top (axial), superior the top (3D, from the front)."""
    cx, cy, cz = scene.center_ras
    red = scene.views["Red"]
    red.composite.SetForegroundVolumeID(None)
    red.show(background=scene.background, fit=True).jump_to(scene.center_ras)
    pixels = red.render()
    middle = red.project(scene.center_ras)
    assert abs(middle[0] - SIZE / 2) < 3 and abs(middle[1] - SIZE / 2) < 3, middle
    checks.expect_colour_near(pixels, RED, middle, max_distance=4, min_pixels=50)
    right, anterior = red.project((cx + 8, cy, cz)), red.project((cx, cy + 8, cz))
    assert right[0] < middle[0] - 10 and abs(right[1] - middle[1]) < 1
    assert anterior[1] < middle[1] - 10 and abs(anterior[0] - middle[0]) < 1
    with pytest.raises(checks.VisualCheckFailed, match="pixels from the expected"):
        checks.expect_colour_near(pixels, RED, right, max_distance=4)  # the sphere is not 8 mm to the right

    three_d = scene.views["3D"]
    three_d.reset_camera("Anterior")
    pixels = three_d.render()
    middle = three_d.project(scene.center_ras)
    assert abs(middle[0] - SIZE / 2) < 3 and abs(middle[1] - SIZE / 2) < 3, middle
    checks.expect_colour_near(pixels, RED, middle, max_distance=4, min_pixels=50)
    right, superior = three_d.project((cx + 8, cy, cz)), three_d.project((cx, cy, cz + 8))
    assert right[0] < middle[0] - 5 and superior[1] < middle[1] - 5, (right, superior)
    # framing a box (e.g. a volume's RAS bounds) puts its centre in the middle, the sphere off it
    three_d.reset_camera("Anterior", bounds=(cx - 40, cx, cy - 20, cy + 20, cz - 20, cz + 20))
    boxed = three_d.render()
    box_middle = three_d.project((cx - 20, cy, cz))
    assert abs(box_middle[0] - SIZE / 2) < 3 and abs(box_middle[1] - SIZE / 2) < 3, box_middle
    found = checks.expect_colour_near(boxed, RED, three_d.project(scene.center_ras), max_distance=4)
    assert found[0] < SIZE / 2 - 10  # the sphere lies 20 mm to the patient's right: the screen's left
    three_d.reset_camera("Anterior", azimuth=40)
    turned = three_d.render()
    checks.expect_colour_near(turned, RED, three_d.project(scene.center_ras), max_distance=4)
    display = scene.segmentation.GetDisplayNode()
    display.SetVisibility(0)
    try:
        with pytest.raises(checks.VisualCheckFailed, match="shows on 0 pixels"):
            checks.expect_colour_near(three_d.render(), RED, middle, max_distance=4)
    finally:
        display.SetVisibility(1)


# -- medtorch.slicer.renders (the reports' Slicer-view renders) --------------------------------


def test_report_renders_never_raise_and_say_why(monkeypatch, tmp_path):
    from medtorch.slicer import renders

    def broken(path):
        raise RuntimeError("no luck")

    monkeypatch.setenv(views.NO_RENDER_ENV, "1")
    assert renders.try_render(broken, tmp_path / "x.png") == (None, "rendering is turned off (MEDTORCH_NO_RENDER=1)")
    monkeypatch.delenv(views.NO_RENDER_ENV)
    if views.rendering_unavailable() is None:
        assert renders.try_render(broken, tmp_path / "x.png") == (None, "the rendering failed (RuntimeError: no luck)")


def test_report_volumes_lie_at_their_physical_place(rendering, tmp_path):
    """A medtorch Volume (LPS geometry) becomes a volume node at the same place in RAS; its render shows."""
    from medtorch.phantoms import blob_phantom, oblique_geometry
    from medtorch.slicer import renders

    geom = oblique_geometry(size=(20, 18, 12))
    volume = blob_phantom(geom)
    hs = views.headless_scene()
    node = renders.volume_node(hs.scene, volume, "blob")
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    ijk = np.array([3.0, 5.0, 7.0])
    ras = np.array(matrix.MultiplyPoint((*ijk, 1.0))[:3])
    np.testing.assert_allclose(ras, geom.index_to_physical(ijk[None])[0] * [-1, -1, 1], atol=1e-6)
    png = renders.volumes_in_3d([("blob", volume)], tmp_path / "blob.png", size=96)
    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(png))
    reader.Update()
    assert reader.GetOutput().GetDimensions()[:2] == (96, 96 + 6)  # one 3D view under its bar
