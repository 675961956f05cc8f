"""Make the extension page's pictures of each module from a ``medtorch demo`` output folder.

    python tools/make_screenshots.py demo-out

writes ``Resources/Screenshots/<Module>-figures.png``: the demo's own figures of what each
module does on the sample data (FusionRegistration: registration + fusion; EnhanceSR:
denoising + super-resolution; SegmentTumor: the segmentation outlines), stacked into one
picture each. They are rendered from the outputs (slices drawn with matplotlib), not
captured from Slicer's window. Rerun after the demo changes; ``demo-fusion.png`` is the
fusion figure. The extension page's pictures, ``<Module>.png``, are Slicer-view renders
made by ``tools/render_screenshots.py``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "Resources" / "Screenshots"
#: module -> the demo figures that show it, top to bottom
PICTURES = {
    "FusionRegistration": ["registration.png", "fusion.png"],
    "EnhanceSR": ["enhancement.png", "superres.png"],
    "SegmentTumor": ["segmentation.png"],
}


def stack(images: list[Path], out: Path) -> Path:
    """Stack PNG images vertically (centred, black background) into ``out``."""
    from PIL import Image

    opened = [Image.open(p).convert("RGB") for p in images]
    width = max(im.width for im in opened)
    canvas = Image.new("RGB", (width, sum(im.height for im in opened)), "black")
    y = 0
    for im in opened:
        canvas.paste(im, ((width - im.width) // 2, y))
        y += im.height
    tmp = out.with_suffix(".part.png")
    canvas.save(tmp, optimize=True)
    tmp.replace(out)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("demo_out", type=Path, help="a `medtorch demo --out` folder")
    args = parser.parse_args()
    figures = args.demo_out / "figures"
    missing = [f for names in PICTURES.values() for f in names if not (figures / f).is_file()]
    if missing:
        parser.error(f"{figures} lacks {', '.join(missing)}: run `medtorch demo --out {args.demo_out}` first")
    OUT.mkdir(parents=True, exist_ok=True)
    for module, names in PICTURES.items():
        print(stack([figures / n for n in names], OUT / f"{module}-figures.png"))
    shutil.copyfile(figures / "fusion.png", OUT / "demo-fusion.png")
    print(OUT / "demo-fusion.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
