"""Short fuzzing run in CI (the long one: ``python -m benchmarks.fuzz --minutes N``)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medtorch.errors import MedTorchInputError
from medtorch.fuzzing import FUZZ_FORMATS, check_geometry_round_trip, check_reader_on_bytes, corrupt, valid_file_bytes
from medtorch.volume import Geometry

CI = settings(max_examples=60, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))


@CI
@given(suffix=st.sampled_from(FUZZ_FORMATS), seed=st.integers(0, 10**6), cut=st.floats(0.0, 1.0),
       flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=6))
def test_corrupted_files_never_crash_the_reader(suffix, seed, cut, flips):
    assert check_reader_on_bytes(corrupt(valid_file_bytes(suffix, seed), cut, flips), suffix) in ("ok", "refused")


@CI
@given(data=st.binary(max_size=600), suffix=st.sampled_from(FUZZ_FORMATS))
def test_random_bytes_are_refused_cleanly(data, suffix):
    assert check_reader_on_bytes(data, suffix) in ("ok", "refused")


@CI
@given(size=st.tuples(*[st.integers(2, 8)] * 3), spacing=st.tuples(*[st.floats(0.05, 10.0)] * 3),
       origin=st.tuples(*[st.floats(-1e3, 1e3)] * 3),
       quaternion=st.tuples(*[st.floats(-1.0, 1.0)] * 4).filter(lambda q: float(np.linalg.norm(q)) > 0.1),
       suffix=st.sampled_from((None, ".nrrd", ".mha", ".nii.gz")))
def test_geometry_round_trips_on_random_oblique_grids(size, spacing, origin, quaternion, suffix):
    check_geometry_round_trip(size, np.array(spacing), np.array(origin), np.array(quaternion), suffix)


@CI
@given(spacing=st.tuples(*[st.floats(-5.0, 5.0)] * 3), shear=st.floats(0.01, 1.0))
def test_bad_geometry_is_refused(spacing, shear):
    if min(spacing) <= 0:
        with pytest.raises(MedTorchInputError):
            Geometry(size=(3, 3, 3), spacing=spacing).validate()
    direction = np.eye(3)
    direction[0, 1] = shear
    with pytest.raises(MedTorchInputError, match="non-orthonormal"):
        Geometry(size=(3, 3, 3), direction=direction).validate()
