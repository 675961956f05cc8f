"""Time the import of a generated model pack: ``python -m benchmarks.models [--mb 100]``.

Writes a segmentation-shaped pack of about ``--mb`` MB of random float32 weights (random data
does not compress, so the file is that large) into a temporary folder, then times, each once
after one warm-up read of the file (so the figure is hashing, not the disk):

* ``verify``: :func:`medtorch.models.pack.verify_pack` (every member's SHA-256 against the manifest);
* ``inspect``: verify plus the ``weights_only`` load of the weights (what import checks before
  anything is written);
* ``install``: the whole :meth:`medtorch.models.store.ModelStore.install` (verify, check, copy, unpack).

Target (issue 19): verifying the hashes of a 100 MB pack takes <= 2 s. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def main() -> None:
    import numpy as np
    import torch

    from medtorch.models.pack import pack_sha256, verify_pack, write_pack
    from medtorch.models.store import ModelStore

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=100.0, help="size of the pack's weights, MB")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        n = int(args.mb * 2**20 / 4)
        weights = {"weight": torch.from_numpy(np.random.default_rng(0).standard_normal(n, dtype=np.float32))}
        config = {"kind": "segmentation", "name": "bench", "version": "0", "input_channels": [], "labels": []}
        pack = write_pack(Path(tmp) / "bench.zip", weights, config, "# bench\n",
                          {"LICENSE.txt": b"benchmark only\n", "bundle/configs/metadata.json": b"{}"})
        pack_sha256(pack)  # warm the page cache
        out = {"pack_mb": round(pack.stat().st_size / 2**20, 1), "cpu": platform.processor() or platform.machine(),
               "cpu_count": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 2)}
        t = time.perf_counter()
        verify_pack(pack)
        out["verify_s"] = round(time.perf_counter() - t, 3)
        store = ModelStore(Path(tmp) / "store")
        t = time.perf_counter()
        store.inspect(pack)
        out["inspect_s"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        store.install(pack, accept_license=True)
        out["install_s"] = round(time.perf_counter() - t, 3)
        out["target_verify_s"] = 2.0
        out["passed"] = out["verify_s"] <= 2.0
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
