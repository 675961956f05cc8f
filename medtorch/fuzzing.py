"""Property-based fuzzing of the file readers and the geometry conversions (Hypothesis).

Two entry points share the same properties:

* ``Testing/test_fuzz.py`` runs each property for a short, fixed budget in CI;
* ``python -m benchmarks.fuzz --minutes N`` runs them for as long as asked.

Properties:

* **readers never crash**: any bytes (random, or a real file cut or corrupted at random
  places) given to :func:`medtorch.io.read_volume` either load as a valid volume or raise
  :class:`~medtorch.errors.MedTorchInputError` - never another exception, never a hang;
* **geometry round trips**: any valid geometry (random size, spacing, origin and rotation)
  survives Geometry -> IJK-to-RAS -> Geometry, Volume -> SimpleITK -> Volume and
  Volume -> file -> Volume within stated tolerances, and maps points like SimpleITK;
* **bad geometry is refused**: non-positive spacing and non-orthonormal directions are
  rejected with :class:`MedTorchInputError` by :meth:`Geometry.validate`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from medtorch.errors import MedTorchInputError
from medtorch.volume import Geometry, Volume

#: File kinds the reader fuzzing corrupts (written fresh from a small volume each time).
FUZZ_FORMATS = (".nrrd", ".nii", ".nii.gz", ".mha")


def rotation_from_quaternion(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, float)
    q = q / np.linalg.norm(q)
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def check_reader_on_bytes(data: bytes, suffix: str) -> str:
    """Write ``data`` to a temporary file and read it; return 'ok' or 'refused'.

    Any exception other than :class:`MedTorchInputError` propagates: that is a finding.
    """
    from medtorch.io import read_volume

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"fuzz{suffix}"
        path.write_bytes(data)
        try:
            vol = read_volume(path)
        except MedTorchInputError:
            return "refused"
        vol.geometry.validate("fuzzed volume")
        assert vol.array.shape[:3] == vol.geometry.shape_zyx
        return "ok"


def valid_file_bytes(suffix: str, seed: int) -> bytes:
    """Bytes of a small, valid, oblique volume file in the format of ``suffix``."""
    from medtorch.io import write_volume

    rng = np.random.default_rng(seed)
    size = tuple(int(s) for s in rng.integers(2, 7, size=3))
    vol = Volume(rng.normal(size=size[::-1]).astype(np.float32),
                 Geometry(size=size, origin=rng.normal(size=3) * 50, spacing=rng.uniform(0.3, 4.0, 3),
                          direction=rotation_from_quaternion(rng.normal(size=4))))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"v{suffix}"
        write_volume(vol, path, compress=suffix.endswith(".gz"))
        return path.read_bytes()


def corrupt(data: bytes, cut: float, flips: list[tuple[float, int]]) -> bytes:
    """Cut ``data`` at fraction ``cut`` and overwrite bytes at the given fractions."""
    out = bytearray(data[: max(0, int(len(data) * cut))])
    for where, value in flips:
        if out:
            out[min(len(out) - 1, int(where * len(out)))] = value & 0xFF
    return bytes(out)


def check_geometry_round_trip(size: tuple[int, int, int], spacing: np.ndarray, origin: np.ndarray,
                              quaternion: np.ndarray, suffix: str | None = None) -> None:
    """Assert every conversion keeps the geometry (tolerances: 1e-9 in memory, 1e-4 mm via files)."""
    import SimpleITK as sitk

    from medtorch.io import read_volume, write_volume

    geom = Geometry(size=size, origin=origin, spacing=spacing, direction=rotation_from_quaternion(quaternion))
    geom.validate()
    back = Geometry.from_ijk_to_ras(geom.ijk_to_ras(), geom.size)
    assert back.isclose(geom, atol=1e-9), "IJK-to-RAS round trip"
    arr = (np.arange(np.prod(size), dtype=np.float32) % 97).reshape(geom.shape_zyx)
    vol = Volume(arr, geom)
    img = vol.to_sitk()
    again = Volume.from_sitk(img)
    assert again.geometry.isclose(geom, atol=1e-9) and np.array_equal(again.array, arr), "SimpleITK round trip"
    ijk = np.array([[0.5, size[1] - 1.0, 0.25]])
    expected = np.array(img.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in ijk[0])))
    assert np.allclose(geom.index_to_physical(ijk)[0], expected, atol=1e-6), "point mapping vs SimpleITK"
    if suffix:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"v{suffix}"
            write_volume(vol, path)
            loaded = read_volume(path)
            assert loaded.geometry.isclose(geom, atol=1e-4), f"file round trip {suffix}"
            assert np.array_equal(loaded.array, arr), f"voxels through {suffix}"


def run_fuzz(minutes: float, batch: int = 50) -> dict[str, int]:
    """Run the properties with Hypothesis for about ``minutes``; return example counts.

    Hypothesis runs in rounds of ``batch`` examples per property until the time is up; a
    property that fails raises (with Hypothesis's minimal failing example).
    """
    import time

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    counts = {"reader": 0, "geometry": 0}
    common = settings(max_examples=batch, deadline=None, database=None, suppress_health_check=list(HealthCheck))

    @common
    @given(suffix=st.sampled_from(FUZZ_FORMATS), seed=st.integers(0, 10**6), cut=st.floats(0.0, 1.0),
           flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=8))
    def readers(suffix: str, seed: int, cut: float, flips: list[tuple[float, int]]) -> None:
        counts["reader"] += 1
        check_reader_on_bytes(corrupt(valid_file_bytes(suffix, seed), cut, flips), suffix)

    @common
    @given(size=st.tuples(*[st.integers(2, 9)] * 3), spacing=st.tuples(*[st.floats(0.05, 10.0)] * 3),
           origin=st.tuples(*[st.floats(-1e3, 1e3)] * 3),
           quaternion=st.tuples(*[st.floats(-1.0, 1.0)] * 4).filter(lambda q: float(np.linalg.norm(q)) > 0.1),
           suffix=st.sampled_from((None, ".nrrd", ".mha", ".nii.gz")))
    def geometry(size, spacing, origin, quaternion, suffix) -> None:  # type: ignore[no-untyped-def]
        counts["geometry"] += 1
        check_geometry_round_trip(size, np.array(spacing), np.array(origin), np.array(quaternion), suffix)

    deadline = time.monotonic() + minutes * 60.0
    while time.monotonic() < deadline:
        readers()
        geometry()
    return counts
