"""One memory case: ``python -m benchmarks.memory.one OP NX NY NZ`` prints one JSON line."""

from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np


def rss_gb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024**2
    return float("nan")


def ct_like(size: tuple[int, int, int], seed: int = 0):
    """A CT-sized int16 volume: a body ellipsoid (soft tissue ~40 HU), a bright lesion, noise."""
    from medtorch.volume import Volume

    nx, ny, nz = size
    z, y, x = np.ogrid[:nz, :ny, :nx]
    body = ((x - nx / 2) / (0.4 * nx)) ** 2 + ((y - ny / 2) / (0.35 * ny)) ** 2 + ((z - nz / 2) / (0.45 * nz)) ** 2 <= 1
    lesion = ((x - 0.6 * nx) ** 2 + (y - 0.5 * ny) ** 2 + (z - 0.5 * nz) ** 2) <= (0.05 * nx) ** 2
    arr = np.where(body, 40, -1000).astype(np.int16)
    arr[lesion] = 200
    rng = np.random.default_rng(seed)
    arr = (arr + rng.normal(0, 10, arr.shape)).astype(np.int16)
    spacing = (0.8, 0.8, 1.0)
    return Volume.from_array(arr, spacing=spacing, origin=(-200.0, -200.0, -200.0))


def main() -> int:
    op = sys.argv[1]
    size = tuple(int(v) for v in sys.argv[2:5])
    vol = ct_like(size)
    input_gb = rss_gb()
    t0 = time.perf_counter()
    try:
        if op == "blend":
            from medtorch.fusion.blend import resample_and_blend

            shift = np.eye(4)
            shift[:3, 3] = (2.0, -1.5, 3.0)
            resample_and_blend(vol, vol, shift, device="cpu")
        elif op.startswith("denoise_"):
            from medtorch.enhance.denoise import denoise

            method = op.split("_", 1)[1]
            denoise(vol, method, 1.0, **({"iterations": 3} if method == "anisotropic" else {}))
        elif op == "threshold":
            from medtorch.segment.threshold import threshold_largest_component

            threshold_largest_component(vol, 150.0)
        elif op.startswith("register_"):
            from medtorch.registration import register

            shift = np.eye(4)
            shift[:3, 3] = (3.0, -2.0, 1.0)
            from medtorch.resample import resample

            moving = resample(vol, vol.geometry, shift)
            register(vol, moving, mode=op.split("_", 1)[1], metric="mi", device="cpu")
        elif op == "segment_seeded":
            from medtorch.segment import seeded

            seeds = np.zeros(vol.array.shape, np.uint8)
            nz, ny, nx = vol.array.shape
            seeds[nz // 2, ny // 2, int(0.6 * nx)] = 1
            seeds[nz // 2, ny // 2, int(0.3 * nx)] = 2
            seeds[nz // 2, 5, 5] = 2
            fn = getattr(seeded, "segment_seeded", None) or getattr(seeded, "seeded_segmentation")
            fn([vol], vol.with_array(seeds, kind="label"))
        elif op == "segment_model":
            from medtorch.segment import inference  # noqa: F401

            raise NotImplementedError("needs a model: see benchmarks/segment for DL memory")
        else:
            raise ValueError(op)
        status = "ok"
    except ImportError as exc:
        status = f"not available ({exc.name})"
    except NotImplementedError as exc:
        status = f"skipped: {exc}"
    except Exception as exc:  # reported in the table
        status = f"failed: {type(exc).__name__}: {str(exc)[:120]}"
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(json.dumps({"status": status, "peak_gb": round(peak, 2), "input_gb": round(input_gb, 2),
                      "seconds": round(seconds, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
