"""medtorch.resample against SimpleITK.Resample on oblique, anisotropic, off-origin volumes.

Tolerances (single precision, the default):

* linear: |medtorch - sitk| <= 1e-4 * (intensity range) on every compared voxel;
* nearest: exactly equal on every compared voxel.

Compared voxels: all output voxels except those whose *exact* (float64, mapped through the
SimpleITK transform itself) continuous index in the moving volume -- or in a displacement
field's grid -- lies within ``MARGIN`` = 1e-3 voxel of ITK's inside/outside boundary
(``u = -0.5`` or ``u = size - 0.5``) and, for nearest, of a rounding tie (``u = n + 0.5``).
There float32 rounding may legitimately flip the decision. The tests also check that this
excludes well under 1 % of the voxels, so the comparison covers the whole grid, the
half-voxel rim and the outside (default value) included.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy.ndimage import gaussian_filter
from scipy.spatial.transform import Rotation

from medtorch.errors import Cancelled, MedTorchInputError, OutOfMemoryBudget
from medtorch.progress import CancelToken
from medtorch.resample import (
    DisplacementField,
    estimate_resample_bytes,
    physical_to_index,
    physical_to_normalized,
    reference_grid,
    resample,
    resample_like,
    sample,
    transform_points,
    warp,
)
from medtorch.volume import Geometry, Volume

MARGIN = 1e-3
LINEAR_RTOL = 1e-4
DEFAULT = -7.0


# -- fixtures and helpers ---------------------------------------------------------------------


def rot(angles: tuple[float, float, float]) -> np.ndarray:
    return Rotation.from_euler("xyz", angles, degrees=True).as_matrix()


@pytest.fixture(scope="module")
def moving() -> Volume:
    rng = np.random.default_rng(1)
    arr = gaussian_filter(rng.normal(size=(16, 24, 20)), 1.2) * 400.0
    arr += np.linspace(0, 50, 20)[None, None, :]
    return Volume.from_array(arr.astype(np.float32), origin=(12.5, -30.2, 41.0), spacing=(0.7, 1.1, 3.0),
                             direction=rot((20, -10, 35)))


def centred_grid(centre: np.ndarray, size: tuple[int, int, int], spacing: tuple[float, float, float],
                 direction: np.ndarray) -> Geometry:
    half = direction @ (np.asarray(spacing) * (np.asarray(size) - 1) / 2.0)
    return Geometry(size=size, origin=centre - half, spacing=spacing, direction=direction)


@pytest.fixture(scope="module")
def reference(moving: Volume) -> Geometry:
    # Larger than the moving volume in places, so the rim and the outside are exercised.
    return centred_grid(moving.geometry.center() + [1.0, -2.0, 3.0], (22, 18, 20), (0.9, 1.3, 2.6), rot((-5, 12, -25)))


def sitk_ref(geom: Geometry) -> sitk.Image:
    img = sitk.Image([int(s) for s in geom.size], sitk.sitkFloat32)
    img.SetOrigin(tuple(float(v) for v in geom.origin))
    img.SetSpacing(tuple(float(v) for v in geom.spacing))
    img.SetDirection(tuple(float(v) for v in geom.direction.ravel()))
    return img


def sitk_resample(vol: Volume, ref: Geometry, tx: sitk.Transform | None, nearest: bool,
                  pixel: int = sitk.sitkFloat32) -> np.ndarray:
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    out = sitk.Resample(vol.to_sitk(), sitk_ref(ref), tx or sitk.Transform(), interp, DEFAULT, pixel)
    return sitk.GetArrayFromImage(out)


def ref_points(ref: Geometry) -> np.ndarray:
    k, j, i = np.meshgrid(*[np.arange(n) for n in ref.shape_zyx], indexing="ij")
    return ref.index_to_physical(np.stack([i, j, k], -1).reshape(-1, 3))


def near_boundary(u: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    s = np.asarray(size, dtype=np.float64)
    return ((np.abs(u + 0.5) < MARGIN) | (np.abs(u - (s - 0.5)) < MARGIN)).any(-1)


def near_tie(u: np.ndarray) -> np.ndarray:
    return (np.abs(u - np.floor(u) - 0.5) < MARGIN).any(-1)


def compared_mask(vol: Volume, ref: Geometry, tx: sitk.Transform | None, nearest: bool,
                  field_checks: list[tuple[sitk.Transform | None, Geometry]] = ()) -> np.ndarray:
    """True where the voxel is compared (see the module docstring)."""
    pts = ref_points(ref)
    mapped = pts if tx is None else np.array([tx.TransformPoint(tuple(p)) for p in pts])
    u = vol.geometry.physical_to_index(mapped)
    bad = near_boundary(u, vol.size)
    if nearest:
        bad |= near_tie(u)
    for pre, fgeom in field_checks:  # where a displacement field is evaluated
        at = pts if pre is None else np.array([pre.TransformPoint(tuple(p)) for p in pts])
        bad |= near_boundary(fgeom.physical_to_index(at), fgeom.size)
    mask = ~bad.reshape(ref.shape_zyx)
    assert mask.mean() > 0.99, f"too many voxels excluded: {(~mask).sum()}"
    return mask


def assert_matches(ours: np.ndarray, theirs: np.ndarray, mask: np.ndarray, nearest: bool, value_range: float) -> None:
    assert ours.shape[:3] == theirs.shape[:3] == mask.shape
    outside = theirs == DEFAULT if theirs.ndim == 3 else (theirs == DEFAULT).all(-1)
    assert 0 < outside.sum() < outside.size  # the test grid covers inside, rim and outside
    if nearest:
        np.testing.assert_array_equal(ours[mask], theirs[mask])
    else:
        err = np.abs(ours[mask].astype(np.float64) - theirs[mask])
        assert err.max() <= LINEAR_RTOL * value_range, err.max()


def affine_4x4(matrix: np.ndarray, translation: np.ndarray) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = matrix
    a[:3, 3] = translation
    return a


def sitk_affine(a: np.ndarray, center: np.ndarray | None = None) -> sitk.AffineTransform:
    """sitk.AffineTransform equal to the 4x4 ``a``: p' = M (p - c) + c + t  =>  t = a_t - c + M c."""
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(tuple(a[:3, :3].ravel()))
    if center is None:
        tx.SetTranslation(tuple(a[:3, 3]))
    else:
        tx.SetCenter(tuple(center))
        tx.SetTranslation(tuple(a[:3, 3] - center + a[:3, :3] @ center))
    return tx


@pytest.fixture(scope="module")
def affine(moving: Volume) -> np.ndarray:
    shear = np.array([[1.0, 0.08, -0.05], [0.03, 1.0, 0.06], [0.0, -0.04, 1.0]])
    m = rot((8, -6, 12)) @ shear @ np.diag([1.05, 0.93, 1.1])
    c = moving.geometry.center()
    return affine_4x4(m, c - m @ c + [1.5, -2.0, 2.5])  # about the centre, then shifted


def field_volume(grid: Geometry, amplitude: float, seed: int) -> Volume:
    rng = np.random.default_rng(seed)
    d = np.stack([gaussian_filter(rng.normal(size=grid.shape_zyx), 1.5) for _ in range(3)], -1)
    d *= amplitude / np.abs(d).max()
    return Volume(d.astype(np.float64), grid, "vector")


def sitk_field(field: Volume) -> sitk.DisplacementFieldTransform:
    img = field.to_sitk()
    return sitk.DisplacementFieldTransform(sitk.Cast(img, sitk.sitkVectorFloat64))


@pytest.fixture(scope="module")
def field(moving: Volume) -> Volume:
    # Its own oblique grid, covering only part of the reference grid: zero outside.
    grid = centred_grid(moving.geometry.center(), (12, 14, 10), (1.7, 1.5, 2.2), rot((3, 15, -8)))
    return field_volume(grid, 3.0, 5)


def value_range(vol: Volume) -> float:
    return float(vol.array.max() - vol.array.min())


# -- agreement with SimpleITK -----------------------------------------------------------------


@pytest.mark.parametrize("nearest", [False, True])
def test_identity_onto_oblique_grid(moving: Volume, reference: Geometry, nearest: bool) -> None:
    mode = "nearest" if nearest else "linear"
    ours = resample(moving, reference, interpolation=mode, default_value=DEFAULT).array
    assert ours.dtype == np.float32 and ours.shape == reference.shape_zyx
    theirs = sitk_resample(moving, reference, None, nearest)
    assert_matches(ours, theirs, compared_mask(moving, reference, None, nearest), nearest, value_range(moving))


@pytest.mark.parametrize("nearest", [False, True])
@pytest.mark.parametrize("centred", [False, True])
def test_affine_matches_sitk(moving: Volume, reference: Geometry, affine: np.ndarray, nearest: bool,
                             centred: bool) -> None:
    tx = sitk_affine(affine, moving.geometry.center() if centred else None)
    pts = ref_points(reference)[:50]
    np.testing.assert_allclose([tx.TransformPoint(tuple(p)) for p in pts], pts @ affine[:3, :3].T + affine[:3, 3],
                               atol=1e-9)
    mode = "nearest" if nearest else "linear"
    for matrix in (affine, torch.tensor(affine)):
        ours = resample(moving, reference, matrix, interpolation=mode, default_value=DEFAULT).array
        theirs = sitk_resample(moving, reference, tx, nearest)
        assert_matches(ours, theirs, compared_mask(moving, reference, tx, nearest), nearest, value_range(moving))


@pytest.mark.parametrize("nearest", [False, True])
def test_displacement_field_matches_sitk(moving: Volume, reference: Geometry, field: Volume, nearest: bool) -> None:
    tx = sitk_field(field)
    mode = "nearest" if nearest else "linear"
    ours = resample(moving, reference, field, interpolation=mode, default_value=DEFAULT).array
    theirs = sitk_resample(moving, reference, tx, nearest)
    mask = compared_mask(moving, reference, tx, nearest, [(None, field.geometry)])
    assert_matches(ours, theirs, mask, nearest, value_range(moving))
    # Zero displacement outside the field's grid (half a voxel beyond its last centres).
    p_out = field.geometry.index_to_physical([[-0.6, 3, 3], [12.0, 3, 3], [3, 3, 9.6]])
    moved = transform_points(torch.tensor(p_out), field).numpy()
    np.testing.assert_allclose(moved, p_out, atol=1e-12)
    np.testing.assert_allclose(moved, [tx.TransformPoint(tuple(p)) for p in p_out], atol=1e-9)


@pytest.mark.parametrize("nearest", [False, True])
def test_composition_matches_sitk(moving: Volume, reference: Geometry, affine: np.ndarray, field: Volume,
                                  nearest: bool) -> None:
    a2 = affine_4x4(rot((0, 0, 4)), [-1.0, 0.5, 0.0])
    t1, tf, t2 = sitk_affine(affine), sitk_field(field), sitk_affine(a2)
    comp = sitk.CompositeTransform([t1, tf, t2])  # ITK order: t2 first, t1 last
    composite = [affine, field, a2]
    pts = ref_points(reference)
    ours_pts = transform_points(torch.tensor(pts), composite).numpy()
    np.testing.assert_allclose(ours_pts, [comp.TransformPoint(tuple(p)) for p in pts], atol=1e-6)
    np.testing.assert_allclose(ours_pts, [t1.TransformPoint(tf.TransformPoint(t2.TransformPoint(tuple(p))))
                                          for p in pts], atol=1e-6)
    mode = "nearest" if nearest else "linear"
    ours = resample(moving, reference, composite, interpolation=mode, default_value=DEFAULT).array
    theirs = sitk_resample(moving, reference, comp, nearest)
    mask = compared_mask(moving, reference, comp, nearest, [(t2, field.geometry)])
    assert_matches(ours, theirs, mask, nearest, value_range(moving))


def test_label_nearest_exact_and_dtype(moving: Volume, reference: Geometry, affine: np.ndarray) -> None:
    labels = np.digitize(moving.array, np.quantile(moving.array, [0.2, 0.4, 0.6, 0.8])).astype(np.uint16) * 300
    lab = Volume(labels, moving.geometry, "label")
    out = resample(lab, reference, affine, default_value=7)
    assert out.kind == "label" and out.array.dtype == np.uint16
    tx = sitk_affine(affine)
    theirs = sitk.GetArrayFromImage(sitk.Resample(lab.to_sitk(), sitk_ref(reference), tx, sitk.sitkNearestNeighbor,
                                                  7, sitk.sitkUInt16))
    mask = compared_mask(lab, reference, tx, True)
    np.testing.assert_array_equal(out.array[mask], theirs[mask])
    assert set(np.unique(out.array)) <= set(np.unique(labels)) | {7}
    with pytest.raises(MedTorchInputError, match="linear"):
        resample(lab, reference, interpolation="linear")
    with pytest.raises(MedTorchInputError, match="default value"):
        resample(lab, reference, default_value=-1)


def test_vector_volume_matches_sitk(moving: Volume, reference: Geometry, affine: np.ndarray) -> None:
    arr = np.stack([moving.array, -moving.array, moving.array * 0.5 + 3], -1)
    vec = Volume(arr, moving.geometry, "vector")
    out = resample(vec, reference, affine, default_value=DEFAULT)
    assert out.kind == "vector" and out.array.shape == reference.shape_zyx + (3,)
    tx = sitk_affine(affine)
    theirs = sitk.GetArrayFromImage(sitk.Resample(vec.to_sitk(), sitk_ref(reference), tx, sitk.sitkLinear, DEFAULT,
                                                  sitk.sitkVectorFloat32))
    assert_matches(out.array, theirs, compared_mask(vec, reference, tx, False), False, value_range(vec))


def test_edge_rule_matches_sitk() -> None:
    """Inside means -0.5 <= u < size - 0.5; the rim takes the edge value; nearest rounds half up."""
    arr = np.broadcast_to((np.arange(5) * 10 + 5).astype(np.float32), (3, 3, 5)).copy()
    vol = Volume.from_array(arr)
    xs = [-0.6, -0.5, -0.4999, -0.2, 0.5, 1.5, 3.7, 4.0, 4.4999, 4.5, 4.6]
    ref = Geometry(size=(len(xs), 1, 1))
    pts = torch.tensor([[x, 1.0, 1.0] for x in xs], dtype=torch.float64)
    for mode, interp in (("linear", sitk.sitkLinear), ("nearest", sitk.sitkNearestNeighbor)):
        ours = sample(vol.to_torch(dtype=torch.float64), pts, vol.geometry, mode, DEFAULT)[0].numpy()
        theirs = []
        for x in xs:
            r = sitk.Image([1, 1, 1], sitk.sitkFloat32)
            r.SetOrigin((x, 1.0, 1.0))
            theirs.append(sitk.Resample(vol.to_sitk(), r, sitk.Transform(), interp, DEFAULT, sitk.sitkFloat32)[0, 0, 0])
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert ref.size == (11, 1, 1)
    expected_nearest = [DEFAULT, 5, 5, 5, 15, 25, 45, 45, 45, DEFAULT, DEFAULT]
    np.testing.assert_array_equal(sample(vol.to_torch(), pts, vol.geometry, "nearest", DEFAULT)[0].numpy(),
                                  expected_nearest)


def test_nearest_exact_ties_round_half_up_like_sitk() -> None:
    """Downsampling by 2 with centres on exact half-voxel positions: ITK rounds half up."""
    arr = np.arange(8 * 9 * 10, dtype=np.int16).reshape(8, 9, 10)
    lab = Volume.from_array(arr, origin=(1.0, 2.0, 3.0), spacing=(0.5, 1.0, 2.0), kind="label")
    ref = Geometry(size=(5, 5, 4), origin=(1.25, 2.5, 4.0), spacing=(1.0, 2.0, 4.0))  # u = 2 n + 0.5
    theirs = sitk.GetArrayFromImage(sitk.Resample(lab.to_sitk(), sitk_ref(ref), sitk.Transform(),
                                                  sitk.sitkNearestNeighbor, -1, sitk.sitkInt16))
    ours = resample(lab, ref, default_value=-1).array
    np.testing.assert_array_equal(ours, theirs)
    assert ours[0, 0, 0] == arr[1, 1, 1]  # 0.5 -> 1 on every axis


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(moving: Volume, reference: Geometry, affine: np.ndarray, field: Volume) -> None:
    for transform in (affine, [affine, field]):
        for mode in ("linear", "nearest"):
            cpu = resample(moving, reference, transform, interpolation=mode, default_value=DEFAULT).array
            gpu = resample(moving, reference, transform, interpolation=mode, default_value=DEFAULT, device="cuda").array
            np.testing.assert_allclose(gpu, cpu, rtol=0, atol=1e-5 * value_range(moving))
            streamed = resample(moving, reference, transform, interpolation=mode, default_value=DEFAULT,
                                device="cuda", stream=True, chunk_slices=3).array
            np.testing.assert_allclose(streamed, cpu, rtol=0, atol=1e-5 * value_range(moving))
    grad_case = torch.tensor(affine, device="cuda", requires_grad=True)
    out = warp(moving.to_torch(device="cuda"), moving.geometry, reference, grad_case)
    out.sum().backward()
    assert grad_case.grad is not None and torch.isfinite(grad_case.grad).all()


def test_default_value_outside(moving: Volume) -> None:
    far = Geometry(size=(4, 5, 6), origin=moving.origin + 1000.0, spacing=(1, 1, 1))
    out = resample(moving, far, default_value=-123.5)
    assert np.all(out.array == -123.5)
    out = resample(moving, far, default_value=-123.5, stream=True)
    assert np.all(out.array == -123.5)


def test_double_precision_matches_sitk_closely(moving: Volume, reference: Geometry, affine: np.ndarray) -> None:
    vol64 = Volume(moving.array.astype(np.float64), moving.geometry)
    ours = resample(vol64, reference, affine, precision="double", default_value=DEFAULT).array
    assert ours.dtype == np.float64
    theirs = sitk_resample(vol64, reference, sitk_affine(affine), False, sitk.sitkFloat64)
    mask = compared_mask(vol64, reference, sitk_affine(affine), False)
    np.testing.assert_allclose(ours[mask], theirs[mask], rtol=0, atol=1e-9 * value_range(vol64))


# -- chunking, streaming, fast path, dtype, progress, memory ---------------------------------------


def test_chunked_equals_unchunked(moving: Volume, reference: Geometry, affine: np.ndarray, field: Volume) -> None:
    for transform in (affine, [affine, field]):
        whole = resample(moving, reference, transform, chunk_slices=reference.size[2]).array
        for n in (1, 3, 7):
            np.testing.assert_array_equal(resample(moving, reference, transform, chunk_slices=n).array, whole)
        # Streaming fetches only the block each chunk needs: the same values up to rounding.
        streamed = resample(moving, reference, transform, chunk_slices=4, stream=True).array
        np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-5 * value_range(moving))
    lab = Volume((moving.array > 0).astype(np.uint8), moving.geometry, "label")
    np.testing.assert_array_equal(resample(lab, reference, affine, chunk_slices=2, stream=True).array,
                                  resample(lab, reference, affine).array)


def test_small_budget_streams_and_tiny_budget_refuses(moving: Volume, reference: Geometry, affine: np.ndarray,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import medtorch.resample as rs

    whole = resample(moving, reference, affine).array
    fetched: list[tuple[int, ...]] = []
    real_block = rs._block_tensor

    def spy(arr: np.ndarray, *args: object) -> torch.Tensor:
        fetched.append(arr.shape)
        return real_block(arr, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(rs, "_block_tensor", spy)
    # Output (32 KB) + one slice of work fit in 75 KB, the whole moving tensor (31 KB) does not
    # fit beside them: resample streams blocks of the input, one output slice at a time.
    out = resample(moving, reference, affine, memory_budget=75_000).array
    np.testing.assert_allclose(out, whole, rtol=0, atol=1e-5 * value_range(moving))
    assert len(fetched) > 1 and all(np.prod(s) < moving.array.size for s in fetched)
    with pytest.raises(OutOfMemoryBudget, match=r"resampling needs .* but the memory budget given is 1.0 KB"):
        resample(moving, reference, affine, memory_budget="1K")


def test_identity_fast_path_copies(moving: Volume) -> None:
    out = resample(moving, moving.geometry)
    np.testing.assert_array_equal(out.array, moving.array)
    assert not np.shares_memory(out.array, moving.array)
    out2 = resample(moving, moving.geometry, np.eye(4))
    np.testing.assert_array_equal(out2.array, moving.array)
    ints = Volume(np.round(moving.array).astype(np.int16), moving.geometry)
    assert resample(ints, moving.geometry).array.dtype == np.float32
    assert resample(ints, moving.geometry, dtype="input").array.dtype == np.int16


def test_output_dtype_input_rounds(moving: Volume, reference: Geometry, affine: np.ndarray) -> None:
    ints = Volume(np.round(moving.array).astype(np.int16), moving.geometry)
    f = resample(ints, reference, affine, default_value=DEFAULT).array
    i = resample(ints, reference, affine, default_value=DEFAULT, dtype="input").array
    assert i.dtype == np.int16
    np.testing.assert_array_equal(i, np.rint(f).astype(np.int16))


def test_resample_like_and_reference_volume(moving: Volume, reference: Geometry, affine: np.ndarray) -> None:
    ref_vol = Volume(np.zeros(reference.shape_zyx, np.float32), reference)
    a = resample_like(moving, ref_vol, affine).array
    np.testing.assert_array_equal(a, resample(moving, reference, affine).array)
    np.testing.assert_array_equal(a, resample(moving, ref_vol, affine).array)


def test_memmap_input_streams(tmp_path, moving: Volume, reference: Geometry, affine: np.ndarray) -> None:
    from medtorch.io.raw import open_raw

    path = tmp_path / "moving.raw"
    moving.array.astype(">f4").tofile(path)
    mm = open_raw(path, moving.array.shape, "float32", byteorder="big", spacing=moving.spacing,
                  origin=moving.origin, direction=moving.direction)
    ref = resample(moving, reference, affine).array
    for stream in (False, True):
        out = resample(mm, reference, affine, stream=stream, chunk_slices=5).array
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * value_range(moving))


def test_progress_and_cancel(moving: Volume, reference: Geometry) -> None:
    seen: list[float] = []
    resample(moving, reference, chunk_slices=4, progress=lambda f, m="": seen.append(f))
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen) and len(seen) >= 5
    token = CancelToken()

    def cancel_soon(fraction: float, message: str = "") -> None:
        if fraction > 0.2:
            token.cancel()

    with pytest.raises(Cancelled):
        resample(moving, reference, chunk_slices=2, progress=cancel_soon, cancel=token)


def test_estimate_for_a_large_ct_is_a_few_gb() -> None:
    """512 x 512 x 400 int16 CT, rotated onto its own grid: under 1.5 GB with chunking."""
    geom = Geometry(size=(512, 512, 400), spacing=(0.7, 0.7, 1.0))
    ct = Volume(np.broadcast_to(np.int16(0), geom.shape_zyx), geom)  # no real allocation
    a = affine_4x4(rot((0, 0, 10)), [0, 0, 0])
    need = estimate_resample_bytes(ct, geom, a)
    assert 0.8 * 1024**3 < need < 1.5 * 1024**3  # moving float32 + output float32 + one chunk
    assert estimate_resample_bytes(ct, geom) <= 1.1 * 400 * 1024**2  # identity: a float32 copy only


def test_bad_inputs() -> None:
    vol = Volume.from_array(np.zeros((3, 4, 5), np.float32))
    with pytest.raises(MedTorchInputError, match="4x4"):
        resample(vol, vol.geometry, np.eye(3))
    with pytest.raises(MedTorchInputError, match="last row"):
        bad = np.eye(4)
        bad[3, 0] = 1
        resample(vol, vol.geometry, bad)
    with pytest.raises(MedTorchInputError, match="displacement field"):
        resample(vol, vol.geometry, vol)
    with pytest.raises(MedTorchInputError, match="unsupported transform"):
        resample(vol, vol.geometry, "rigid")
    with pytest.raises(MedTorchInputError, match="interpolation"):
        resample(vol, vol.geometry, interpolation="cubic")  # type: ignore[arg-type]


# -- tensor-level API: coordinates and gradients ----------------------------------------------


def test_normalized_coordinates(moving: Volume) -> None:
    g = moving.geometry
    corners = torch.tensor(g.corners())
    n = physical_to_normalized(corners, g)
    assert torch.allclose(n.abs(), torch.ones_like(n), atol=1e-9)
    idx = physical_to_index(corners, g).numpy()
    np.testing.assert_allclose(idx, g.physical_to_index(g.corners()), atol=1e-9)
    grid = reference_grid(g, dtype=torch.float64)
    assert grid.shape == g.shape_zyx + (3,)
    np.testing.assert_allclose(grid[2, 3, 4].numpy(), g.index_to_physical([[4, 3, 2]])[0], atol=1e-9)
    part = reference_grid(g, dtype=torch.float64, k_range=(5, 7))
    np.testing.assert_allclose(part.numpy(), grid[5:7].numpy(), atol=1e-12)
    # grid_sample on the normalized points reproduces the voxels (align_corners=True, x=i first).
    t = moving.to_torch(dtype=torch.float64)
    vals = torch.nn.functional.grid_sample(t[None], physical_to_normalized(grid, g)[None], align_corners=True)
    np.testing.assert_allclose(vals[0, 0].numpy(), moving.array, atol=1e-9)


def _tiny_case() -> tuple[torch.Tensor, Geometry, Geometry]:
    rng = np.random.default_rng(3)
    arr = gaussian_filter(rng.normal(size=(5, 6, 7)), 1.0)
    g = Geometry(size=(7, 6, 5), origin=(1.0, -2.0, 3.0), spacing=(0.8, 1.1, 1.7), direction=rot((10, -20, 30)))
    ref = centred_grid(g.center(), (4, 5, 3), (0.9, 0.9, 1.2), rot((-5, 5, 15)))
    return torch.tensor(arr), g, ref


def test_gradient_flows_to_affine_gradcheck() -> None:
    moving_t, g, ref = _tiny_case()
    c = torch.tensor(g.center())
    weights = torch.linspace(-1, 1, ref.num_voxels, dtype=torch.float64).reshape(ref.shape_zyx)

    def loss(params: torch.Tensor) -> torch.Tensor:
        a = torch.eye(4, dtype=torch.float64)
        a = a.clone()
        a[:3, :] = a[:3, :] + params.reshape(3, 4)
        a = a.clone()
        a[:3, 3] = a[:3, 3] + c - a[:3, :3] @ c  # about the centre
        return (warp(moving_t[None], g, ref, a)[0] * weights).sum()

    params = (torch.randn(12, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.03).requires_grad_()
    assert torch.autograd.gradcheck(loss, (params,), eps=1e-6, atol=1e-5, rtol=1e-4)
    # float32 path: autograd vs a central finite difference on one parameter.
    p32 = params.detach().float().requires_grad_()
    m32 = moving_t.float()[None]

    def loss32(p: torch.Tensor) -> torch.Tensor:
        a = torch.eye(4)
        a = a.clone()
        a[:3, :] = a[:3, :] + p.reshape(3, 4)
        return (warp(m32, g, ref, a)[0] * weights.float()).sum()

    loss32(p32).backward()
    assert p32.grad is not None and torch.isfinite(p32.grad).all() and p32.grad.abs().sum() > 0
    h = 1e-3
    e = torch.zeros(12)
    e[3] = h
    fd = (loss32(p32.detach() + e) - loss32(p32.detach() - e)) / (2 * h)
    assert abs(float(fd) - float(p32.grad[3])) <= 2e-2 * max(1.0, abs(float(fd)))


def test_gradient_flows_to_displacement() -> None:
    moving_t, g, ref = _tiny_case()
    disp = (torch.randn((3,) + ref.shape_zyx, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.3)
    disp.requires_grad_()

    def loss(d: torch.Tensor) -> torch.Tensor:
        return warp(moving_t[None], g, ref, DisplacementField(d, ref))[0].square().sum()

    assert torch.autograd.gradcheck(loss, (disp,), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_displacement_field_from_volume_validation(moving: Volume) -> None:
    with pytest.raises(MedTorchInputError, match="3 components"):
        DisplacementField.from_volume(moving)
    with pytest.raises(MedTorchInputError, match=r"\[3, z, y, x\]"):
        DisplacementField(torch.zeros(2, 3, 4, 5), moving.geometry)
