"""One memory case: ``python -m benchmarks.memory.one OP NX NY NZ`` prints one JSON line.

The data is a synthetic CT-sized int16 volume (body, bones, organs, a lesion, noise) at
0.8 x 0.8 x 1.0 mm. Registration cases register a copy moved by a known rigid transform;
segmentation cases segment the lesion. Each case also reports a sanity figure (the
registration's error against the known transform, the segmentation's Dice) so that a
case that "fits" by doing nothing would show.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def rss_gb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024**2
    return float("nan")


def ct_like(size: tuple[int, int, int], seed: int = 0):
    """A CT-like int16 volume [HU]: body ellipsoid (40), lungs (-800), spine and ribs (700),
    a liver-like organ (60), a lesion (120) and Gaussian noise (sd 10); 0.8 x 0.8 x 1 mm."""
    from medtorch.volume import Volume

    nx, ny, nz = size
    z, y, x = np.ogrid[:nz, :ny, :nx]
    xn, yn, zn = (x - nx / 2) / (0.5 * nx), (y - ny / 2) / (0.5 * ny), (z - nz / 2) / (0.5 * nz)
    arr = np.full((nz, ny, nx), -1000, np.int16)
    body = (xn / 0.8) ** 2 + (yn / 0.6) ** 2 + (zn / 0.95) ** 2 <= 1
    arr[body] = 40
    for cx in (-0.35, 0.35):
        lung = ((xn - cx) / 0.25) ** 2 + ((yn + 0.05) / 0.35) ** 2 + ((zn - 0.2) / 0.5) ** 2 <= 1
        arr[lung] = -800
    spine = ((xn / 0.08) ** 2 + ((yn - 0.42) / 0.08) ** 2 <= 1) & (np.abs(zn) < 0.95)
    arr[spine] = 700
    liver = ((xn + 0.3) / 0.3) ** 2 + ((yn - 0.05) / 0.3) ** 2 + ((zn + 0.45) / 0.3) ** 2 <= 1
    arr[liver] = 60
    lesion = ((xn - 0.2) / 0.06) ** 2 + (yn / 0.06) ** 2 + ((zn + 0.4) / 0.06) ** 2 <= 1
    arr[lesion] = 120
    rng = np.random.default_rng(seed)
    arr = (arr + rng.normal(0, 10, arr.shape).astype(np.float32)).astype(np.int16)
    return Volume.from_array(arr, spacing=(0.8, 0.8, 1.0), origin=(-200.0, -200.0, -200.0)), lesion


def _rigid(vol, angles_deg=(3.0, -2.0, 4.0), shift=(4.0, -3.0, 2.5)) -> np.ndarray:
    from medtorch.phantoms import rotation_matrix

    c = vol.geometry.center()
    m = np.eye(4)
    m[:3, :3] = rotation_matrix(angles_deg)
    m[:3, 3] = c + np.asarray(shift) - m[:3, :3] @ c
    return m


def _moved(vol, truth: np.ndarray):
    """``vol`` moved by ``truth`` (fixed -> moving): resampled through its inverse."""
    from medtorch.resample import resample

    return resample(vol, vol.geometry, np.linalg.inv(truth), default_value=-1000.0, dtype=np.int16)


def _error_mm(vol, estimate, truth: np.ndarray) -> float:
    """Mean distance between where ``estimate`` and ``truth`` send points of the body."""
    g = vol.geometry
    rng = np.random.default_rng(1)
    idx = rng.uniform(0.25, 0.75, (200, 3)) * (np.asarray(g.size) - 1)
    pts = g.index_to_physical(idx)
    want = pts @ truth[:3, :3].T + truth[:3, 3]
    got = estimate.map_points(pts)
    return float(np.linalg.norm(got - want, axis=1).mean())


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


def _torchscript_unet(path: Path) -> None:
    import torch
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(8, 16, 32, 64), strides=(2, 2, 2),
               num_res_units=1).eval()
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 1, 64, 64, 64)), str(path))


def main() -> int:
    op = sys.argv[1]
    size = tuple(int(v) for v in sys.argv[2:5])
    vol, lesion = ct_like(size)  # type: ignore[arg-type]
    extra: dict = {}
    moving = truth = None
    if op.startswith("register_") or op.startswith("fuse_"):
        truth = _rigid(vol)
        moving = _moved(vol, truth)
    input_gb = rss_gb()
    t0 = time.perf_counter()
    try:
        if op == "blend":
            from medtorch.fusion.blend import resample_and_blend

            resample_and_blend(vol, moving if moving is not None else vol, truth, device="cpu")
        elif op.startswith("fuse_"):
            from medtorch.fusion import fuse_volumes

            fuse_volumes(vol, moving, op.split("_", 1)[1], truth, fixed_modality="CT", moving_modality="CT",
                         device="cpu")
        elif op.startswith("denoise_"):
            from medtorch.enhance.denoise import denoise

            method = op.split("_", 1)[1]
            denoise(vol, method, 1.0, **({"iterations": 3} if method == "anisotropic" else {}))
        elif op.startswith("superres_"):
            from medtorch.enhance.superres import superres

            superres(vol, op.split("_", 1)[1], factor=2.0, axis="k")
        elif op == "threshold":
            from medtorch.segment.threshold import threshold_largest_component

            res = threshold_largest_component(vol, 90.0, 200.0)
            extra["dice"] = round(_dice(res.label.array > 0, lesion), 4)
        elif op.startswith("register_"):
            from medtorch.registration import register

            res = register(vol, moving, mode=op.split("_", 1)[1], metric="mi", device="cpu", resample_output=True)
            extra["error_mm"] = round(_error_mm(vol, res, truth), 3)
            extra["folding_percent"] = res.report.get("folding_percent")
        elif op == "segment_seeded":
            from scipy import ndimage

            from medtorch.segment.seeded import seeded_segment

            seeds = np.zeros(vol.array.shape, np.uint8)
            zc, yc, xc = (int(v) for v in np.argwhere(lesion).mean(axis=0).round())
            planes = np.zeros(lesion.shape, bool)
            planes[zc], planes[:, yc], planes[:, :, xc] = True, True, True
            seeds[ndimage.binary_erosion(lesion, iterations=2) & planes] = 1
            ring = ndimage.binary_dilation(lesion, iterations=6) & ~ndimage.binary_dilation(lesion, iterations=3)
            seeds[ring & planes] = 2
            res = seeded_segment(vol, vol.with_array(seeds, kind="label"))
            extra["dice"] = round(_dice(res.label.array > 0, lesion), 4)
        elif op == "segment_model":
            from medtorch.segment.inference import segment_with_model

            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "unet.ts"
                _torchscript_unet(path)
                input_gb = rss_gb()
                t0 = time.perf_counter()
                label, info = segment_with_model(path, [vol], roi_size=(128, 128, 128), overlap=0.25, device="cpu")
                extra["windows"] = info.get("windows") if isinstance(info, dict) else None
                extra["label_dtype"] = str(label.array.dtype)
        else:
            raise ValueError(op)
        status = "ok"
    except ImportError as exc:
        status = f"not available ({exc.name})"
    except Exception as exc:  # reported in the table
        from medtorch.errors import OutOfMemoryBudget

        if isinstance(exc, OutOfMemoryBudget):
            status = "refused before starting: " + str(exc).replace("\n", " ")[:300]
        else:
            status = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(json.dumps({"status": status, "peak_gb": round(peak, 2), "input_gb": round(input_gb, 2),
                      "seconds": round(seconds, 1), "budget": os.environ.get("MEDTORCH_MEMORY_BUDGET"), **extra}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
