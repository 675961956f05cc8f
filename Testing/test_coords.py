"""RAS <-> LPS in one place: ``medtorch.coords`` converts both ways (round trips on an oblique,
anisotropic grid), and a sign flip written anywhere else in the shipped code fails this test."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from medtorch import coords

REPO = Path(__file__).resolve().parent.parent
#: where the flip may be written: the coordinates module, and volume.py (IJK-to-RAS of a grid)
ALLOWED = {"medtorch/coords.py", "medtorch/volume.py"}
SHIPPED = ("medtorch", "FusionRegistration", "EnhanceSR", "SegmentTumor", "tools")
FLIP_PATTERNS = [
    re.compile(r"-1(\.0*)?\s*,\s*-1(\.0*)?\s*,\s*\+?1(\.0*)?\b"),                 # [-1, -1, 1] / diag(-1., -1., 1.)
    re.compile(r"\(\s*-\s*[\w.]+\[0\]\s*,\s*-\s*[\w.]+\[1\]\s*,"),                  # (-p[0], -p[1], p[2])
    re.compile(r"\(\s*-\s*float\([^)]*\[0\]\)\s*,\s*-\s*float\([^)]*\[1\]\)"),     # (-float(p[0]), -float(p[1]), ...)
    re.compile(r"\[\s*:\s*2\s*\]\s*\*=\s*-1"),                                      # v[:2] *= -1
]


def sign_flips(files: dict[str, str]) -> list[str]:
    """``path:line: text`` of every RAS<->LPS sign flip written outside :data:`ALLOWED`."""
    hits = []
    for path, text in files.items():
        if path in ALLOWED:
            continue
        for no, line in enumerate(text.splitlines(), 1):
            if any(p.search(line) for p in FLIP_PATTERNS):
                hits.append(f"{path}:{no}: {line.strip()[:120]}")
    return hits


def _shipped_python() -> dict[str, str]:
    out = {}
    for top in SHIPPED:
        for p in sorted((REPO / top).rglob("*.py")):
            out[p.relative_to(REPO).as_posix()] = p.read_text(encoding="utf-8")
    return out


def test_no_sign_flip_outside_coords():
    hits = sign_flips(_shipped_python())
    assert not hits, "convert RAS <-> LPS with medtorch.coords, not by hand:\n" + "\n".join(hits)


def test_the_scan_reaches_the_slicer_glue_and_every_module_lib():
    """The generic glue (medtorch/slicer/) and each module's <Module>Lib package are scanned."""
    scanned = set(_shipped_python())
    libs = sorted(p.relative_to(REPO).as_posix() for p in REPO.glob("*/*Lib/*.py"))
    assert {"FusionRegistration/FusionRegistrationLib/fusion_scene.py",
            "SegmentTumor/SegmentTumorLib/model_scene.py"} <= set(libs)
    assert set(libs) <= scanned
    assert {"medtorch/slicer/mrml.py", "medtorch/slicer/tables.py", "medtorch/slicer/jobs.py"} <= scanned


@pytest.mark.parametrize("snippet", [
    "ras = lps * np.array([-1.0, -1.0, 1.0])",
    "flip = np.diag([-1., -1., 1., 1.])",
    "points.append((-p[0], -p[1], p[2]))",
    "return (-float(lps[0]), -float(lps[1]), float(lps[2]))",
    "v[:2] *= -1",
])
def test_the_check_catches_a_hand_written_flip(snippet):
    assert sign_flips({"medtorch/x.py": "a = 1\n" + snippet + "\n"}) == [f"medtorch/x.py:2: {snippet}"]
    assert sign_flips({"medtorch/coords.py": snippet}) == []


def test_a_plain_negative_is_not_a_flip():
    assert sign_flips({"m.py": "x = [-1, 1, 1]\ny = (-a[0], b[1])\nz = np.array([-1.0, 2.0, 1.0])\n"}) == []


def _oblique_geometry():
    from medtorch.volume import Geometry

    c, s = np.cos(0.4), np.sin(0.4)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.array([[1.0, 0.0, 0.0], [0.0, np.cos(0.3), -np.sin(0.3)], [0.0, np.sin(0.3), np.cos(0.3)]])
    return Geometry(size=(7, 9, 5), spacing=(0.7, 1.1, 3.0), origin=(12.5, -40.0, 7.25), direction=rot)


def test_points_vectors_and_matrices_round_trip_on_an_oblique_anisotropic_grid():
    g = _oblique_geometry()
    a_lps, a_ras = g.ijk_to_lps(), g.ijk_to_ras()  # a_ras: what Slicer's IJKToRAS holds
    ijk = np.array([[0, 0, 0, 1], [6, 8, 4, 1], [3.5, 2.25, 1.0, 1]], dtype=float)
    lps = (a_lps @ ijk.T).T[:, :3]
    # the same voxel lands on the same physical point, written in RAS
    np.testing.assert_allclose((a_ras @ ijk.T).T[:, :3], coords.ras_from_lps(lps), atol=1e-12)
    np.testing.assert_allclose(coords.lps_from_ras(coords.ras_from_lps(lps)), lps, atol=1e-12)
    # image axes (columns) written in RAS
    np.testing.assert_allclose(coords.flip_rows(a_lps[:3, :3]), a_ras[:3, :3], atol=1e-12)
    np.testing.assert_allclose(coords.flip_rows(coords.flip_rows(g.direction)), g.direction, atol=1e-12)
    # a world-to-world map (here: a voxel step and a shear) is F M F, both ways
    world = np.eye(4)
    world[:3, :3] = a_lps[:3, :3] / 2.0
    world[:3, 3] = [3.0, -1.0, 8.0]
    moved = (world @ np.c_[lps, np.ones(len(lps))].T).T[:, :3]
    world_ras = coords.flip_affine(world)
    np.testing.assert_allclose((world_ras @ np.c_[coords.ras_from_lps(lps), np.ones(len(lps))].T).T[:, :3],
                               coords.ras_from_lps(moved), atol=1e-12)
    np.testing.assert_allclose(coords.flip_affine(world_ras), world, atol=1e-12)
    # vectors (displacements) flip like points without an origin
    d = np.array([1.5, -2.0, 0.25])
    np.testing.assert_allclose(coords.ras_from_lps(lps[1] + d) - coords.ras_from_lps(lps[1]), coords.ras_from_lps(d))


def test_to_parent_matrix_moves_the_moving_volume_onto_the_fixed_one():
    rng = np.random.default_rng(3)
    itk = np.eye(4)
    itk[:3, :3] = np.linalg.qr(rng.normal(size=(3, 3)))[0] @ np.diag([1.1, 0.9, 1.05])
    itk[:3, 3] = [4.0, -7.5, 2.0]
    to_parent = coords.to_parent_ras_from_itk(itk)
    fixed_lps = np.array([10.0, 20.0, -5.0, 1.0])
    moving_lps = itk @ fixed_lps  # ITK: fixed point -> where to sample the moving image
    # Slicer: the to-parent matrix takes the moving point (RAS) back to the fixed point (RAS)
    back = to_parent @ np.r_[coords.ras_from_lps(moving_lps[:3]), 1.0]
    np.testing.assert_allclose(back[:3], coords.ras_from_lps(fixed_lps[:3]), atol=1e-10)
    np.testing.assert_allclose(coords.itk_from_to_parent_ras(to_parent), itk, atol=1e-12)


def test_nrrd_space_signs_take_ras_to_lps():
    assert coords.NRRD_SPACE_SIGNS["right-anterior-superior"] == tuple(coords.FLIP)
    assert coords.NRRD_SPACE_SIGNS["left-posterior-superior"] == (1.0, 1.0, 1.0)
