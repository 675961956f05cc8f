"""Device choice, precision, determinism (medtorch.device) and intensity helpers (medtorch.intensity)."""

from __future__ import annotations

import math
import os
import random
from typing import Any

import numpy as np
import pytest
import torch

from medtorch.device import (
    DEVICE_ENV_VAR,
    autocast_context,
    deterministic,
    device_summary,
    seed_everything,
    select_device,
)
from medtorch.errors import Cancelled, MedTorchInputError
from medtorch.intensity import (
    CT_WINDOWS,
    apply_window,
    histogram_match,
    n4_bias_correction,
    otsu_mask,
    robust_normalize,
)
from medtorch.progress import CancelToken
from medtorch.volume import Geometry, Volume

# -- select_device -------------------------------------------------------------------------------


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv(DEVICE_ENV_VAR, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    return monkeypatch


@pytest.fixture
def fake_cuda(no_gpu: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    no_gpu.setattr(torch.cuda, "is_available", lambda: True)
    no_gpu.setattr(torch.cuda, "device_count", lambda: 2)
    return no_gpu


def test_auto_without_gpu_is_cpu(no_gpu: pytest.MonkeyPatch) -> None:
    assert select_device() == torch.device("cpu")
    assert select_device("auto") == torch.device("cpu")


def test_auto_prefers_cuda_then_mps(no_gpu: pytest.MonkeyPatch) -> None:
    no_gpu.setattr(torch.backends.mps, "is_available", lambda: True)
    assert select_device("auto").type == "mps"
    no_gpu.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto").type == "cuda"
    assert select_device(None).type == "cuda"


def test_env_var_is_used_without_argument(no_gpu: pytest.MonkeyPatch) -> None:
    no_gpu.setattr(torch.cuda, "is_available", lambda: True)
    no_gpu.setenv(DEVICE_ENV_VAR, "cpu")
    assert select_device() == torch.device("cpu")
    assert select_device("") == torch.device("cpu")  # an empty setting defers to the env var
    no_gpu.setenv(DEVICE_ENV_VAR, " CUDA ")
    assert select_device().type == "cuda"


def test_argument_wins_over_env_var(fake_cuda: pytest.MonkeyPatch) -> None:
    fake_cuda.setenv(DEVICE_ENV_VAR, "cuda")
    assert select_device("cpu") == torch.device("cpu")
    fake_cuda.setenv(DEVICE_ENV_VAR, "cpu")
    assert select_device("cuda").type == "cuda"
    assert select_device("auto").type == "cuda"
    assert select_device(torch.device("cpu")) == torch.device("cpu")


def test_argument_wins_over_broken_env_var(no_gpu: pytest.MonkeyPatch) -> None:
    no_gpu.setenv(DEVICE_ENV_VAR, "cuda")  # unavailable, but the argument decides
    assert select_device("cpu") == torch.device("cpu")
    with pytest.raises(MedTorchInputError) as ei:
        select_device()
    msg = str(ei.value)
    assert DEVICE_ENV_VAR in msg and "not available" in msg and "What to do" in msg


def test_cuda_index(fake_cuda: pytest.MonkeyPatch) -> None:
    assert select_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(MedTorchInputError) as ei:
        select_device("cuda:2")
    assert "2 CUDA device" in str(ei.value) and "What to do" in str(ei.value)
    with pytest.raises(MedTorchInputError):
        select_device("cuda:x")


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "mps", "MPS"])
def test_unavailable_device(no_gpu: pytest.MonkeyPatch, name: str) -> None:
    with pytest.raises(MedTorchInputError) as ei:
        select_device(name)
    msg = str(ei.value)
    assert "not available" in msg
    assert "What to do" in msg and "--device cpu" in msg and "auto" in msg


def test_unknown_device_name(no_gpu: pytest.MonkeyPatch) -> None:
    with pytest.raises(MedTorchInputError) as ei:
        select_device("gpu")
    assert "'gpu'" in str(ei.value) and "auto" in str(ei.value)
    no_gpu.setenv(DEVICE_ENV_VAR, "tpu")
    with pytest.raises(MedTorchInputError) as ei:
        select_device()
    assert DEVICE_ENV_VAR in str(ei.value)


# -- autocast ------------------------------------------------------------------------------------------


def _conv_out(ctx: Any) -> torch.Tensor:
    conv = torch.nn.Conv3d(1, 2, 3)
    x = torch.randn(1, 1, 6, 6, 6)
    with ctx:
        return conv(x)


def test_autocast_off_on_cpu_by_default() -> None:
    with autocast_context("cpu"):
        assert not torch.is_autocast_enabled("cpu")
    assert _conv_out(autocast_context(torch.device("cpu"))).dtype == torch.float32


def test_autocast_cpu_only_when_asked() -> None:
    assert _conv_out(autocast_context("cpu", allow_cpu=True)).dtype == torch.bfloat16
    assert _conv_out(autocast_context("cpu", enabled=False, allow_cpu=True)).dtype == torch.float32


def test_autocast_noop_on_mps_and_meta() -> None:
    for dev in ("mps", "meta"):
        with autocast_context(dev):
            assert not torch.is_autocast_enabled("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_autocast_on_cuda() -> None:  # pragma: no cover - needs a GPU
    conv = torch.nn.Conv3d(1, 2, 3).cuda()
    x = torch.randn(1, 1, 6, 6, 6, device="cuda")
    with autocast_context("cuda"):
        y = conv(x)
    assert y.dtype in (torch.bfloat16, torch.float16)
    assert Volume.from_torch(y[0, :1], Geometry(size=(4, 4, 4))).array.dtype == np.float32


# -- determinism ---------------------------------------------------------------------------------------


def _tiny_net_run() -> torch.Tensor:
    net = torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv3d(4, 2, 3, padding=1),
    )
    x = torch.randn(2, 1, 8, 10, 12) + torch.from_numpy(np.random.rand(1, 1, 8, 10, 12).astype(np.float32))
    x = x + random.random()
    return net(x).detach()


def test_deterministic_is_bitwise_repeatable() -> None:
    with deterministic(1234) as seed:
        a = _tiny_net_run()
    with deterministic(1234):
        b = _tiny_net_run()
    with deterministic(1235):
        c = _tiny_net_run()
    assert seed == 1234
    assert torch.equal(a, b)  # bitwise
    assert not torch.equal(a, c)


def test_deterministic_restores_previous_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True
        random.seed(7)
        np.random.seed(7)
        torch.manual_seed(7)
        expected = (random.random(), np.random.rand(), torch.rand(1).item())
        random.seed(7)
        np.random.seed(7)
        torch.manual_seed(7)

        with deterministic(99, warn_only=False):
            assert torch.are_deterministic_algorithms_enabled()
            assert not torch.is_deterministic_algorithms_warn_only_enabled()
            assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
            assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
            _tiny_net_run()

        assert not torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic is False and torch.backends.cudnn.benchmark is True
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected

        with pytest.raises(RuntimeError, match="inside"):
            with deterministic(5):
                raise RuntimeError("failure inside")
        assert not torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev_cudnn


def test_seed_everything() -> None:
    assert seed_everything(42) == 42
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(42)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
    drawn = seed_everything()
    assert isinstance(drawn, int) and 0 <= drawn < 2**32
    for bad in (-1, 2**32, 1.5, "7", True):
        with pytest.raises(MedTorchInputError):
            seed_everything(bad)  # type: ignore[arg-type]


def test_device_summary_cpu() -> None:
    s = device_summary(torch.device("cpu"))
    assert s["device"] == "cpu" and s["type"] == "cpu"
    assert s["torch_version"] == torch.__version__
    assert "cuda_version" in s and isinstance(s["name"], str) and s["name"]
    assert s["memory_total_bytes"] is None or s["memory_total_bytes"] > 0
    import json

    json.dumps(s)  # fit for a run report


# -- robust_normalize -----------------------------------------------------------------------------------


def _percentile_by_hand(values: np.ndarray, p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method), written out."""
    s = np.sort(values.reshape(-1).astype(np.float64))
    rank = p / 100.0 * (s.size - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, s.size - 1)
    return float(s[lo] + (rank - lo) * (s[hi] - s[lo]))


def test_percentile_helper_matches_numpy() -> None:
    v = np.random.default_rng(0).normal(size=101)
    for p in (0, 1, 37.5, 99, 100):
        assert _percentile_by_hand(v, p) == pytest.approx(float(np.percentile(v, p)), abs=1e-12)


def test_robust_normalize_uses_only_voxels_in_mask() -> None:
    rng = np.random.default_rng(1)
    arr = rng.normal(200.0, 40.0, (10, 12, 14)).astype(np.float32)
    mask = np.zeros(arr.shape, bool)
    mask[2:8, 3:9, 4:10] = True
    arr[~mask] = rng.choice([-5000.0, 9000.0], size=int((~mask).sum()))  # wild outliers outside
    before = arr.copy()

    out = robust_normalize(arr, 2, 98, mask=mask)
    lo = _percentile_by_hand(arr[mask], 2)
    hi = _percentile_by_hand(arr[mask], 98)
    expected = np.clip((arr.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_array_equal(arr, before)  # input untouched
    inside = out[mask]
    assert 0.015 < (inside == 0).mean() < 0.03 and 0.015 < (inside == 1).mean() < 0.03

    no_mask = robust_normalize(arr, 2, 98)
    assert not np.allclose(no_mask, out)  # the outliers would have mattered


def test_robust_normalize_volume_in_volume_out() -> None:
    rng = np.random.default_rng(2)
    geom = Geometry(size=(8, 7, 6), origin=(3, -4, 5), spacing=(0.7, 1.1, 3.0))
    vol = Volume(rng.integers(0, 1000, geom.shape_zyx).astype(np.int16), geom, metadata={"source": "x"})
    mask = Volume((vol.array > 300).astype(np.uint8), geom, "label")
    arr_before = vol.array.copy()
    out = robust_normalize(vol, mask=mask, out_range=(-1.0, 1.0), clip=False)
    assert isinstance(out, Volume)
    assert out.geometry == geom and out.array.dtype == np.float32 and out.kind == "scalar"
    np.testing.assert_array_equal(vol.array, arr_before)
    lo = _percentile_by_hand(vol.array[mask.array > 0], 1)
    hi = _percentile_by_hand(vol.array[mask.array > 0], 99)
    np.testing.assert_allclose(out.array, -1.0 + 2.0 * (vol.array - lo) / (hi - lo), atol=1e-5)
    assert out.array.min() < -1.0  # no clip: background below the mask's 1st percentile


def test_robust_normalize_errors() -> None:
    with pytest.raises(MedTorchInputError) as ei:
        robust_normalize(np.full((4, 5, 6), 3.0))
    assert "constant" in str(ei.value) and "What to do" in str(ei.value)
    arr = np.random.default_rng(3).random((4, 5, 6))
    const_inside = arr.copy()
    m = np.zeros(arr.shape, bool)
    m[1:3, 1:3, 1:3] = True
    const_inside[m] = 0.5
    with pytest.raises(MedTorchInputError, match="inside the mask"):
        robust_normalize(const_inside, mask=m)
    with pytest.raises(MedTorchInputError, match="empty"):
        robust_normalize(arr, mask=np.zeros(arr.shape, bool))
    with pytest.raises(MedTorchInputError, match="shape"):
        robust_normalize(arr, mask=np.ones((4, 5, 7), bool))
    with pytest.raises(MedTorchInputError, match="percentiles"):
        robust_normalize(arr, 99, 1)
    bad = arr.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(MedTorchInputError, match="NaN"):
        robust_normalize(bad)
    with pytest.raises(MedTorchInputError, match="empty"):
        robust_normalize(np.zeros((0, 3, 3)))


def test_robust_normalize_mostly_constant_falls_back_to_min_max() -> None:
    arr = np.zeros((10, 10, 10), np.float32)
    arr[0, 0, :3] = [1.0, 2.0, 4.0]  # 0.3 % of voxels: both percentiles are 0
    out = robust_normalize(arr)
    assert out.max() == 1.0 and out.min() == 0.0
    assert out[0, 0, 1] == pytest.approx(0.5)


# -- CT windows --------------------------------------------------------------------------------------------


def test_ct_window_presets_are_the_standard_values() -> None:
    assert CT_WINDOWS["brain"] == (80.0, 40.0)
    assert CT_WINDOWS["lung"] == (1500.0, -600.0)
    assert CT_WINDOWS["soft_tissue"] == (400.0, 50.0)
    assert CT_WINDOWS["bone"] == (1800.0, 400.0)
    assert CT_WINDOWS["subdural"] == (215.0, 75.0)
    for width, _level in CT_WINDOWS.values():
        assert width > 0


@pytest.mark.parametrize("preset", sorted(CT_WINDOWS))
def test_ct_window_maps_edges_to_range(preset: str) -> None:
    width, level = CT_WINDOWS[preset]
    hu = np.array([level - width / 2, level + width / 2, level, level - width, level + width, level + width / 4])
    out = apply_window(hu, preset)
    np.testing.assert_allclose(out, [0.0, 1.0, 0.5, 0.0, 1.0, 0.75], atol=1e-6)
    assert out.dtype == np.float32
    by_pair = apply_window(hu, (width, level), out_range=(0, 255))
    np.testing.assert_allclose(by_pair, [0.0, 255.0, 127.5, 0.0, 255.0, 191.25], atol=1e-3)


def test_apply_window_on_volume() -> None:
    geom = Geometry(size=(5, 4, 3), origin=(1, 2, 3), spacing=(0.5, 0.5, 2.0))
    hu = np.linspace(-1024, 2000, geom.num_voxels).reshape(geom.shape_zyx).astype(np.int16)
    vol = Volume(hu, geom)
    out = apply_window(vol, "Soft tissue")
    assert isinstance(out, Volume) and out.geometry == geom
    np.testing.assert_array_equal(vol.array, hu)
    expected = np.clip((hu.astype(np.float64) - (50 - 200)) / 400.0, 0, 1)
    np.testing.assert_allclose(out.array, expected, atol=1e-6)


def test_apply_window_errors() -> None:
    hu = np.zeros((2, 2, 2))
    for bad in ("brian", (0, 40), (-80, 40), (80,), "(80, 40)"):
        with pytest.raises(MedTorchInputError) as ei:
            apply_window(hu, bad)  # type: ignore[arg-type]
        assert "What to do" in str(ei.value)


# -- N4 ----------------------------------------------------------------------------------------------------------


def _phantom() -> tuple[Volume, np.ndarray, np.ndarray]:
    """An ellipsoid of uniform intensity under a smooth multiplicative bias field.

    Returns the biased volume, the true bias field and a mask of the homogeneous region.
    """
    z, y, x = np.mgrid[0:32, 0:40, 0:48].astype(np.float64)
    r2 = ((x - 24) / 19) ** 2 + ((y - 20) / 15) ** 2 + ((z - 16) / 12) ** 2
    inner = ((x - 24) / 7) ** 2 + ((y - 20) / 6) ** 2 + ((z - 16) / 5) ** 2 < 1
    obj = np.where(r2 < 1, 100.0, 0.0)
    obj[inner] = 150.0  # a second tissue so the histogram has structure
    noise = np.random.default_rng(0).normal(0.0, 1.0, obj.shape)
    bias = np.exp(0.3 * (x - 24) / 24 + 0.2 * (y - 20) / 20 - 0.15 * (z - 16) / 16)
    arr = ((obj + noise) * bias + 5.0).astype(np.float32)
    geom = Geometry(
        size=(48, 40, 32),
        origin=(-40.0, 25.0, 12.5),
        spacing=(0.7, 1.1, 3.0),
        direction=np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
    )
    region = (r2 < 0.8) & ~(((x - 24) / 9) ** 2 + ((y - 20) / 8) ** 2 + ((z - 16) / 7) ** 2 < 1)
    return Volume(arr, geom, metadata={"source": "phantom"}), bias, region


def _cv(a: np.ndarray) -> float:
    return float(a.std() / a.mean())


def test_n4_removes_a_known_bias_field() -> None:
    vol, bias, region = _phantom()
    arr_before = vol.array.copy()
    geom_before = vol.geometry
    fractions: list[float] = []
    corrected, field = n4_bias_correction(vol, progress=lambda f, m="": fractions.append(f))

    cv_before = _cv(vol.array[region])
    cv_after = _cv(corrected.array[region])
    assert cv_after < 0.5 * cv_before, (cv_before, cv_after)
    # the estimated field follows the true one up to a constant factor
    ratio = field.array[region] / bias[region]
    assert _cv(ratio) < 0.05

    for out in (corrected, field):
        assert out.geometry == geom_before  # exactly the input geometry
        assert out.array.shape == vol.array.shape and out.array.dtype == np.float32
    np.testing.assert_allclose(corrected.array * field.array, vol.array, rtol=1e-5)
    np.testing.assert_array_equal(vol.array, arr_before)  # input not modified
    assert vol.geometry is geom_before
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert all(b >= a for a, b in zip(fractions, fractions[1:], strict=False))


def test_n4_with_explicit_mask_and_no_shrink() -> None:
    vol, _bias, region = _phantom()
    mask = otsu_mask(vol)
    assert mask.kind == "label" and mask.geometry == vol.geometry
    corrected, _ = n4_bias_correction(vol, mask=mask, shrink_factor=1, iterations=(20, 20))
    assert _cv(corrected.array[region]) < 0.5 * _cv(vol.array[region])


def test_n4_cancel_from_progress_callback() -> None:
    vol, _, _ = _phantom()
    token = CancelToken()
    seen: list[str] = []

    def progress(fraction: float, message: str = "") -> None:
        seen.append(message)
        if "level" in message:  # inside the N4 iterations
            token.cancel()

    with pytest.raises(Cancelled):
        n4_bias_correction(vol, progress=progress, cancel=token)
    assert any("level" in m for m in seen)
    assert "N4: done" not in seen


def test_n4_already_cancelled() -> None:
    vol, _, _ = _phantom()
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        n4_bias_correction(vol, cancel=token)


def test_n4_bad_input() -> None:
    vol, _, _ = _phantom()
    with pytest.raises(MedTorchInputError, match="constant"):
        n4_bias_correction(vol.with_array(np.ones_like(vol.array)))
    with pytest.raises(MedTorchInputError, match="positive"):
        n4_bias_correction(vol.with_array(-vol.array))
    with pytest.raises(MedTorchInputError, match="shrink"):
        n4_bias_correction(vol, shrink_factor=0)
    with pytest.raises(MedTorchInputError, match="iterations"):
        n4_bias_correction(vol, iterations=())
    with pytest.raises(MedTorchInputError, match="empty"):
        n4_bias_correction(vol, mask=np.zeros(vol.array.shape, bool))


# -- histogram matching -----------------------------------------------------------------------------------------


def test_histogram_match_undoes_a_linear_rescale() -> None:
    vol, _, _ = _phantom()
    moving = vol.with_array((vol.array * 3.0 + 40.0).astype(np.float32))
    before = moving.array.copy()
    out = histogram_match(moving, vol, match_points=15, threshold_at_mean=False)
    assert out.geometry == moving.geometry and out.array.dtype == np.float32
    np.testing.assert_array_equal(moving.array, before)
    err = np.abs(out.array - vol.array)
    assert np.median(err) < 2.0


def test_deterministic_as_a_function() -> None:
    prev = torch.are_deterministic_algorithms_enabled()
    state = deterministic(3)
    try:
        assert torch.are_deterministic_algorithms_enabled()
        a = torch.rand(3)
        deterministic(3)
        assert torch.equal(torch.rand(3), a)
    finally:
        state.restore()
    assert torch.are_deterministic_algorithms_enabled() == prev
