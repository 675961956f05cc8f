"""Draw MedTorch's extension and module icons (128x128 RGBA PNGs).

    python Resources/Icons/make_icons.py [--t1 PATH]

Writes, relative to the repository root:

* ``Resources/Icons/MedTorch.png``                            extension icon
* ``FusionRegistration/Resources/Icons/FusionRegistration.png``
* ``EnhanceSR/Resources/Icons/EnhanceSR.png``
* ``SegmentTumor/Resources/Icons/SegmentTumor.png``

Shapes are rendered at 8x supersampling into premultiplied float layers and
box-filtered down, so every edge is antialiased and the background stays
transparent.  The brain pictures are an axial slice of the MNI152 2009a T1
template that nilearn ships inside its wheel (found with ``--t1``, the
``MEDTORCH_ICON_T1`` environment variable, or the installed ``nilearn``
package); without it a synthetic phantom is drawn instead.  No network access.
Needs numpy, Pillow and SimpleITK.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 128  # final icon edge, pixels
SS = 8  # supersampling factor
N = SIZE * SS  # working canvas edge
MAX_BYTES = 40 * 1024

ROOT = Path(__file__).resolve().parents[2]
T1_NAME = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
GM_NAME = "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"

# --------------------------------------------------------------------------- data


def _nilearn_data_dir() -> Path | None:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def _read_axial(path: Path, z: int) -> np.ndarray:
    """Axial slice ``z`` (array index) as float 0..1, anterior up, patient left on the right."""
    import SimpleITK as sitk

    vol = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
    sl = vol[z]
    # ITK index order is (x: R->L flipped to L->R by the direction, y: P->A); the
    # array rows run posterior to anterior, so flip rows to put anterior at the top.
    sl = sl[::-1, :]
    hi = np.percentile(sl[sl > 0], 99.5) if np.any(sl > 0) else 1.0
    return np.clip(sl / hi, 0.0, 1.0)


def _phantom(n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Fallback brain-like picture: a cortex ring, white matter and two ventricles."""
    y, x = np.mgrid[-1:1:n * 1j, -1:1:n * 1j]
    head = (x / 0.72) ** 2 + (y / 0.9) ** 2
    img = np.where(head < 1, 0.55, 0.0)
    img = np.where(head < 0.8, 0.85, img)
    for cx in (-0.12, 0.12):
        img = np.where(((x - cx) / 0.07) ** 2 + (y / 0.3) ** 2 < 1, 0.15, img)
    img = np.where(np.abs(x) < 0.015, 0.2, img) * (head < 1)
    gm = np.where((head < 1) & (head > 0.75), 1.0, 0.0)
    return img.astype(np.float32), gm.astype(np.float32)


def _crop_square(*imgs: np.ndarray, margin: int = 7) -> list[np.ndarray]:
    """Crop all images to the first one's foreground bounding box, padded square."""
    ys, xs = np.nonzero(imgs[0] > 0.02)
    y0, y1 = ys.min() - margin, ys.max() + 1 + margin
    x0, x1 = xs.min() - margin, xs.max() + 1 + margin
    h, w = y1 - y0, x1 - x0
    side = max(h, w)
    out = []
    for im in imgs:
        sq = np.zeros((side, side), np.float32)
        pad = np.pad(im, margin + side)  # room for any crop window
        o = margin + side
        sq[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = pad[
            y0 + o:y1 + o, x0 + o:x1 + o
        ]
        out.append(sq)
    return out


def load_brain(t1: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """(T1 slice, grey-matter slice), square and cropped to the brain, 0..1."""
    candidates = []
    if t1 is not None:
        candidates.append(Path(t1))
    if os.environ.get("MEDTORCH_ICON_T1"):
        candidates.append(Path(os.environ["MEDTORCH_ICON_T1"]))
    d = _nilearn_data_dir()
    if d is not None:
        candidates.append(d / T1_NAME)
    for c in candidates:
        if c.is_file():
            z = 92  # through the lateral ventricles: the familiar "butterfly" slice
            img = _read_axial(c, z)
            gm_path = c.with_name(GM_NAME)
            gm = _read_axial(gm_path, z) if gm_path.is_file() else img
            print(f"brain slice from {c}")
            return tuple(_crop_square(img, gm))  # type: ignore[return-value]
    print("MNI152 template not found; drawing a synthetic phantom")
    return tuple(_crop_square(*_phantom()))  # type: ignore[return-value]


# ------------------------------------------------------------------ raster helpers

_yy, _xx = (np.mgrid[0:N, 0:N].astype(np.float32) + 0.5) / SS  # icon-pixel coords


def canvas() -> np.ndarray:
    """Empty premultiplied RGBA working canvas (N, N, 4)."""
    return np.zeros((N, N, 4), np.float32)


def over(dst: np.ndarray, src: np.ndarray) -> np.ndarray:
    """Porter-Duff 'src over dst' on premultiplied layers (in place)."""
    dst *= 1.0 - src[..., 3:4]
    dst += src
    return dst


def layer(rgb, alpha: np.ndarray) -> np.ndarray:
    """Premultiplied layer from a colour (tuple 0..255 or (N,N,3) 0..1 array) and alpha."""
    rgb = np.asarray(rgb, np.float32)
    if rgb.ndim == 1:
        rgb = np.broadcast_to(rgb / 255.0, (N, N, 3))
    a = np.clip(alpha, 0.0, 1.0)[..., None]
    return np.concatenate([rgb * a, a], axis=-1)


def _mask_from(draw_fn) -> np.ndarray:
    m = Image.new("L", (N, N), 0)
    draw_fn(ImageDraw.Draw(m))
    return np.asarray(m, np.float32) / 255.0


def _s(v: float) -> float:
    return v * SS


def rrect(x0, y0, x1, y1, r) -> np.ndarray:
    """Rounded-rectangle mask; coordinates in icon pixels."""
    return _mask_from(lambda d: d.rounded_rectangle(
        [_s(x0), _s(y0), _s(x1) - 1, _s(y1) - 1], radius=_s(r), fill=255))


def disc(cx, cy, r) -> np.ndarray:
    return _mask_from(lambda d: d.ellipse(
        [_s(cx - r), _s(cy - r), _s(cx + r) - 1, _s(cy + r) - 1], fill=255))


def polygon(points) -> np.ndarray:
    pts = [(_s(x), _s(y)) for x, y in points]
    return _mask_from(lambda d: d.polygon(pts, fill=255))


def stroke(mask: np.ndarray, width: float) -> np.ndarray:
    """Band of about ``width`` icon pixels centred on the edge of a (hard) mask."""
    m = Image.fromarray((mask > 0.5).astype(np.uint8) * 255)
    k = max(3, int(round(width * SS)) | 1)
    grown = np.asarray(m.filter(ImageFilter.MaxFilter(k)), np.float32) / 255
    shrunk = np.asarray(m.filter(ImageFilter.MinFilter(k)), np.float32) / 255
    return np.clip(grown - shrunk, 0, 1)


_FREQ2 = np.add.outer(np.fft.fftfreq(N) ** 2, np.fft.rfftfreq(N) ** 2)


def blur(a: np.ndarray, radius_px: float) -> np.ndarray:
    """Gaussian blur, sigma ``radius_px`` icon pixels (FFT; the canvas edge is empty)."""
    sigma = radius_px * SS
    out = np.fft.irfft2(np.fft.rfft2(a) * np.exp(-2 * np.pi ** 2 * sigma ** 2 * _FREQ2), s=a.shape)
    return np.clip(out, 0, None).astype(np.float32)


def shift(a: np.ndarray, dx: float, dy: float) -> np.ndarray:
    return np.roll(a, (int(round(dy * SS)), int(round(dx * SS))), axis=(0, 1))


def shadow(mask: np.ndarray, dx=0.0, dy=1.5, radius=2.0, opacity=0.45) -> np.ndarray:
    return layer((0, 0, 0), shift(blur(mask, radius), dx, dy) * opacity)


def place(img: np.ndarray, x0, y0, size) -> np.ndarray:
    """Resample a square float image (H,W) or (H,W,3) into an (N,N[,3]) canvas box."""
    px = int(round(size * SS))
    chans = [img] if img.ndim == 2 else [img[..., i] for i in range(img.shape[-1])]
    res = []
    for ch in chans:
        im = Image.fromarray(ch.astype(np.float32)).resize((px, px), Image.BICUBIC)
        full = np.zeros((N, N), np.float32)
        ox, oy = int(round(x0 * SS)), int(round(y0 * SS))
        a = np.clip(np.asarray(im, np.float32), 0, 1)
        ys, xs = slice(max(oy, 0), min(oy + px, N)), slice(max(ox, 0), min(ox + px, N))
        full[ys, xs] = a[ys.start - oy:ys.stop - oy, xs.start - ox:xs.stop - ox]
        res.append(full)
    return res[0] if img.ndim == 2 else np.stack(res, axis=-1)


def grey_rgb(g: np.ndarray, tint=(1.0, 1.0, 1.0)) -> np.ndarray:
    return np.clip(g[..., None] * np.asarray(tint, np.float32), 0, 1)


def colormap(v: np.ndarray, stops) -> np.ndarray:
    """Piecewise-linear colormap; ``stops`` is [(value, (r, g, b) 0..255), ...]."""
    xs = [s[0] for s in stops]
    return np.stack(
        [np.interp(v, xs, [s[1][i] / 255.0 for s in stops]) for i in range(3)], axis=-1
    ).astype(np.float32)


HOT = [(0.0, (0, 0, 0)), (0.3, (150, 10, 0)), (0.6, (240, 90, 10)),
       (0.85, (255, 190, 40)), (1.0, (255, 250, 210))]


def vgradient(top, bottom, y0, y1) -> np.ndarray:
    t = np.clip((_yy - y0) / max(y1 - y0, 1e-6), 0, 1)[..., None]
    return (np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t) / 255


def save(cv: np.ndarray, rel: str) -> Path:
    """Box-filter the working canvas to SIZE, un-premultiply, write an RGBA PNG."""
    small = cv.reshape(SIZE, SS, SIZE, SS, 4).mean(axis=(1, 3))
    a = small[..., 3:4]
    rgb = np.where(a > 1e-6, small[..., :3] / np.maximum(a, 1e-6), 0)
    out = np.concatenate([rgb, a], axis=-1)
    arr = np.clip(np.round(out * 255), 0, 255).astype(np.uint8)
    arr[arr[..., 3] == 0, :3] = 0  # clean fully transparent pixels
    path = ROOT / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr, "RGBA")
    img.save(path, optimize=True)
    if path.stat().st_size > MAX_BYTES:  # palette fallback keeps the file small
        img.quantize(256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
    print(f"{rel}: {path.stat().st_size} bytes")
    return path


# ---------------------------------------------------------------------- motifs

DARK = (18, 24, 33)  # tile background, near the colour of a scanner viewer


def teardrop(cx, base, height, width, lean=0.0, sharp=3.0, n=360):
    """Flame tongue: round bottom at ``base``, pointed tip ``height`` above, tip bent by ``lean``."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    xn = np.sin(t) * np.abs(np.sin(t / 2)) ** sharp
    xn /= np.abs(xn).max()
    h = (np.cos(t) + 1) / 2  # 0 bottom .. 1 tip
    x = cx + xn * width / 2 + lean * h ** 2.2
    y = base - h * height
    return list(zip(x, y))


def flame(cx, base, height, width) -> np.ndarray:
    """Three-colour flame layer (outer red-orange, middle orange, yellow core)."""
    cv = canvas()
    outer = np.maximum.reduce([
        polygon(teardrop(cx, base, height, width, lean=0.10 * width, sharp=2.6)),
        polygon(teardrop(cx - 0.22 * width, base - 0.02 * height, 0.62 * height,
                         0.55 * width, lean=-0.22 * width, sharp=2.4)),
        polygon(teardrop(cx + 0.24 * width, base - 0.04 * height, 0.50 * height,
                         0.50 * width, lean=0.25 * width, sharp=2.4)),
    ])
    top = base - height
    over(cv, layer(vgradient((214, 38, 28), (246, 98, 30), top, base), outer))
    mid = polygon(teardrop(cx + 0.02 * width, base - 0.04 * height, 0.70 * height,
                           0.66 * width, lean=0.07 * width, sharp=2.4))
    over(cv, layer(vgradient((250, 140, 30), (255, 178, 40), top, base), mid))
    core = polygon(teardrop(cx + 0.03 * width, base - 0.07 * height, 0.40 * height,
                            0.36 * width, lean=0.03 * width, sharp=2.0))
    over(cv, layer(vgradient((255, 226, 110), (255, 246, 200), top + 0.5 * height, base), core))
    return cv


def brain_tile(img_rgb: np.ndarray, shape_mask: np.ndarray, x0, y0, size, bg=DARK):
    """Dark tile clipped by ``shape_mask`` with the picture resampled into the box."""
    pic = place(img_rgb, x0, y0, size)
    lum = pic.max(axis=-1, keepdims=True)
    bgc = np.asarray(bg, np.float32) / 255
    rgb = pic + bgc * (1 - np.clip(lum * 4, 0, 1))  # background shows where the slice is black
    return layer(np.clip(rgb, 0, 1), shape_mask)


# ----------------------------------------------------------------------- icons


def icon_medtorch(t1, gm):
    cv = canvas()
    cx, cy, r = 64, 80, 46
    d = disc(cx, cy, r)
    over(cv, shadow(d, dy=1.5, radius=2.5))
    over(cv, brain_tile(grey_rgb(t1, (0.93, 0.97, 1.0)), d, cx - r + 2, cy - r + 2, 2 * r - 4))
    over(cv, layer((240, 90, 40), stroke(d, 3.0) * d))  # warm rim, inner half
    f = flame(64, 66, 64, 44)
    # dark halo behind the flame so it stays separate from the slice
    over(cv, layer(DARK, blur(f[..., 3], 1.6) * 0.75))
    over(cv, f)
    save(cv, "Resources/Icons/MedTorch.png")


def icon_fusion(t1, gm):
    """One brain, aligned in two offset frames: greyscale MRI (back, up-left) and a
    warm colour-mapped grey-matter map (front, down-right), fused where they overlap."""
    cv = canvas()
    bx, by, fx, fy, s = 4, 4, 34, 34, 90
    back = rrect(bx, by, bx + s, by + s, 14)
    front = rrect(fx, fy, fx + s, fy + s, 14)
    bsz = 120  # the brain sits at the same place in both frames: registered
    b0 = 64 - bsz / 2
    grey = place(t1, b0, b0, bsz)
    warm = place(np.clip(gm * 1.1, 0, 1), b0, b0, bsz)
    dark = np.asarray(DARK, np.float32) / 255
    grey_rgb_ = grey_rgb(grey) + dark * (1 - np.clip(grey[..., None] * 4, 0, 1))
    hot = colormap(warm, HOT)
    hot_rgb = hot + dark * (1 - np.clip(warm[..., None] * 4, 0, 1))
    w = np.clip(warm * 1.6, 0, 1)[..., None] * 0.85  # fusion weight of the colour map
    fused = grey_rgb_ * (1 - w) + hot * w

    over(cv, shadow(back, radius=2.0))
    over(cv, layer(np.clip(grey_rgb_, 0, 1), back))
    over(cv, layer((205, 215, 230), stroke(back, 2.2) * back))
    ov = back * front
    only_front = front * (1 - ov)
    over(cv, shadow(front, radius=2.0, opacity=0.5) * (1 - back)[..., None])
    over(cv, layer(np.clip(hot_rgb, 0, 1), only_front))
    over(cv, layer(np.clip(fused, 0, 1), ov))
    over(cv, layer((255, 150, 50), stroke(front, 2.2) * front))
    save(cv, "FusionRegistration/Resources/Icons/FusionRegistration.png")


def icon_enhance(t1, gm):
    cv = canvas()
    x0, y0, s = 4, 4, 120
    tile = rrect(x0, y0, x0 + s, y0 + s, 18)
    over(cv, shadow(tile))
    inner = s - 6
    sharp = place(t1, x0 + 3, y0 + 3, inner)
    # degraded: coarse blocks plus noise
    blocks = 13
    small = Image.fromarray(t1).resize((blocks, blocks), Image.BOX)
    coarse = np.asarray(small.resize((t1.shape[1], t1.shape[0]), Image.NEAREST), np.float32)
    coarse_c = np.asarray(
        Image.fromarray(coarse).resize((int(inner * SS),) * 2, Image.NEAREST), np.float32)
    rng = np.random.default_rng(7)
    noise = rng.normal(0, 0.11, (int(inner * 1.2), int(inner * 1.2))).astype(np.float32)
    noise = np.asarray(Image.fromarray(noise).resize(
        (int(inner * SS),) * 2, Image.NEAREST), np.float32)
    bad_small = np.clip(coarse_c + noise * (coarse_c > 0.05), 0, 1)
    bad = np.zeros((N, N), np.float32)
    ox, oy = int((x0 + 3) * SS), int((y0 + 3) * SS)
    bad[oy:oy + bad_small.shape[0], ox:ox + bad_small.shape[1]] = bad_small
    split = 64
    left = _xx < split
    img = np.where(left, bad, sharp)
    rgb = grey_rgb(img)
    lum = img[..., None]
    rgb = rgb + np.asarray(DARK, np.float32) / 255 * (1 - np.clip(lum * 4, 0, 1))
    over(cv, layer(np.clip(rgb, 0, 1), tile))
    # divider with a handle, like a before/after slider
    line = rrect(split - 1.25, y0 + 1, split + 1.25, y0 + s - 1, 1) * tile
    over(cv, layer((0, 0, 0), blur(line, 1.2) * 0.5))
    over(cv, layer((255, 255, 255), line))
    hc = disc(split, 64, 9)
    over(cv, shadow(hc, radius=1.5, opacity=0.5))
    over(cv, layer((255, 255, 255), hc))
    for sgn in (-1, 1):
        tri = [(split + sgn * 6.5, 64), (split + sgn * 2.0, 60), (split + sgn * 2.0, 68)]
        over(cv, layer((236, 76, 44), polygon(tri)))
    # sparkle on the enhanced side
    def star(cx, cy, r):
        pts = []
        for k in range(8):
            ang = np.pi / 4 * k - np.pi / 2
            rr = r if k % 2 == 0 else r * 0.28
            pts.append((cx + rr * np.cos(ang), cy + rr * np.sin(ang)))
        return polygon(pts)
    for cx, cy, r in ((106, 20, 9), (94, 33, 5)):
        st = star(cx, cy, r)
        over(cv, layer((0, 0, 0), blur(st, 1.0) * 0.6))
        over(cv, layer((255, 214, 90), st))
    over(cv, layer((190, 200, 215), stroke(tile, 2.0) * tile))
    save(cv, "EnhanceSR/Resources/Icons/EnhanceSR.png")


def _blob(cx, cy, r, n=240, phase=0.6):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rr = r * (1 + 0.13 * np.sin(3 * t + phase) + 0.07 * np.sin(5 * t + 2.1))
    return list(zip(cx + rr * np.cos(t), cy + 0.9 * rr * np.sin(t)))


def icon_tumor(t1, gm):
    cv = canvas()
    x0, y0, s = 4, 4, 120
    tile = rrect(x0, y0, x0 + s, y0 + s, 18)
    over(cv, shadow(tile))
    img = place(t1, x0 + 3, y0 + 3, s - 6)
    brain = place((t1 > 0.05).astype(np.float32), x0 + 3, y0 + 3, s - 6)
    # paint a lesion into the picture: oedema, an enhancing rim and a dark core
    tcx, tcy, tr = 82, 48, 14
    les = blur(polygon(_blob(tcx, tcy, tr)), 1.0)
    oedema = blur(polygon(_blob(tcx, tcy, tr * 1.45, phase=1.4)), 2.5)
    core = blur(polygon(_blob(tcx + 1, tcy + 1, tr * 0.55, phase=2.2)), 1.2)
    img = img * (1 - 0.25 * oedema * brain)
    img = img * (1 - les) + les * 0.95
    img = img * (1 - core) + core * 0.35
    img = img * brain + place(t1, x0 + 3, y0 + 3, s - 6) * (1 - brain)
    rgb = grey_rgb(img) + np.asarray(DARK, np.float32) / 255 * (1 - np.clip(img[..., None] * 4, 0, 1))
    over(cv, layer(np.clip(rgb, 0, 1), tile))
    seg = polygon(_blob(tcx, tcy, tr * 1.12))
    over(cv, layer((255, 70, 50), seg * 0.38))
    ring = stroke(seg, 2.6)
    over(cv, layer((0, 0, 0), blur(ring, 0.8) * 0.55))
    over(cv, layer((255, 96, 60), ring))
    over(cv, layer((190, 200, 215), stroke(tile, 2.0) * tile))
    save(cv, "SegmentTumor/Resources/Icons/SegmentTumor.png")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--t1", type=Path, help="MNI152 T1 NIfTI (default: nilearn's copy)")
    args = ap.parse_args(argv)
    t1, gm = load_brain(args.t1)
    icon_medtorch(t1, gm)
    icon_fusion(t1, gm)
    icon_enhance(t1, gm)
    icon_tumor(t1, gm)


if __name__ == "__main__":
    main()
