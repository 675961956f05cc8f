"""Write the Slicer sample data sets (``FusionRegistration/Resources/SampleData``).

Developer tool: ``python tools/make_sample_data.py``. Uses the demo's functions on the MNI152
2009a template (Resources/SampleData) at 2 mm: the T1, a T2-like contrast misaligned by the
demo's known rigid transform, and the tumor phantom (with its truth label), plus 128x128
thumbnails. Deterministic (seed 0).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def thumbnail(volume, path: Path) -> None:
    from PIL import Image

    arr = volume.array[volume.array.shape[0] // 2].astype(np.float32)
    lo, hi = np.percentile(arr, [1, 99.5])
    img = np.clip((arr - lo) / max(hi - lo, 1e-6), 0, 1)[::-1] * 255
    Image.fromarray(img.astype(np.uint8)).resize((128, 128)).save(path)


def main() -> int:
    import medtorch.demo.data as demo
    from medtorch.io import write_volume
    from medtorch.volume import Volume

    out = REPO / "FusionRegistration" / "Resources" / "SampleData"
    out.mkdir(parents=True, exist_ok=True)
    data = demo.load_sample_data()
    t1 = Volume(np.round(data.t1.array).astype(np.int16), data.t1.geometry)
    head_center = data.geometry.index_to_physical(np.argwhere(data.head_mask)[:, ::-1].mean(axis=0))[0]
    truth = demo.rigid_matrix(demo.TRUTH_ROTATION_DEG, demo.TRUTH_TRANSLATION_MM, head_center)
    t2 = demo.synthesize_t2like(data)
    moving = demo.make_misaligned(t2, truth, demo.padded_grid(data.geometry, demo.MOVING_MARGIN_MM))
    moving = Volume(np.round(moving.array).astype(np.int16), moving.geometry)
    phantom, label, facts = demo.tumor_phantom(data, seed=0)
    phantom = Volume(np.round(phantom.array).astype(np.int16), phantom.geometry)
    for vol, name in ((t1, "MedTorchT1"), (moving, "MedTorchT2likeMisaligned"), (phantom, "MedTorchTumorPhantom")):
        write_volume(vol, out / f"{name}.nrrd")
        thumbnail(vol, out / f"{name}.png")
    write_volume(Volume(label.array.astype(np.uint8), label.geometry, "label"), out / "MedTorchTumorTruth.seg.nrrd")
    (out / "MedTorchT2likeTruthTransform.json").write_text(json.dumps(
        {"convention": "ITK: maps T1 (fixed) LPS points to T2-like (moving) LPS points, mm",
         "matrix": np.asarray(truth).tolist(), "tumor": {k: v for k, v in facts.items()
                                                          if isinstance(v, (int, float, str, list))}}, indent=2))
    print("wrote", sorted(p.name for p in out.iterdir()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
