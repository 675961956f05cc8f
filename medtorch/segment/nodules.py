"""Lung-nodule mode: lung mask, multi-scale blob candidates, a false-positive scorer, diameters.

:func:`detect_nodules` finds nodule-like blobs in a chest CT (Hounsfield units) in four steps:

1. **Lung mask** (:func:`lung_mask`): air below ``-400 HU`` that does not touch the side
   faces of the volume (that is the air around the body), the largest components (the
   lungs; smaller air pockets such as bowel gas are dropped), closed with a ball of
   ``closing_mm`` (so nodules on the pleura stay inside) and filled slice by slice (so
   vessels and nodules, which are holes in the air, are inside the mask).
2. **Candidates** (:func:`blob_candidates`): the scale-normalised Laplacian of Gaussian
   ``-sigma^2 * laplacian(G_sigma * CT)`` computed on torch (CPU or GPU) in the Fourier domain
   (one FFT, then one inverse FFT per scale) in physical units (frequencies per mm, so
   anisotropic voxels are handled exactly), at scales whose blob diameters
   ``2 * sqrt(3) * sigma`` span ``min_diameter_mm`` to ``max_diameter_mm``; candidates are
   local maxima over space and the neighbouring scales, inside the lung mask, with a response
   above ``min_response_hu``. Only three scale maps are kept at a time (skimage's
   ``blob_log`` keeps every scale of the whole volume in float64: 5 GB for a 512x512x300 CT
   at 8 scales).
3. **Features** (:func:`candidate_features`): around each candidate the blob is segmented
   (``> -400 HU``, the component at the centre, an opening of ~1/3 of its radius that cuts
   off thinner attached vessels, capped at :data:`CAP_RADII` radii); from it: equivalent-sphere diameter,
   mean HU, contrast to the surrounding lung, sphericity (square root of the smallest over
   the largest eigenvalue of the region's second moments: 1 for a ball, small for a vessel
   segment), how much of it touches the cap (vessels run through it).
4. **False-positive scorer** (:func:`score_candidates`): a **rule-based** score, the product
   of four soft gates with the documented thresholds below (:data:`SCORER`). It was tuned on
   the synthetic phantoms of :func:`lung_phantom` (spheres against tubes), not trained on
   clinical data: it rejects vessel segments and faint or out-of-range blobs, and it is no
   substitute for a learned classifier on real scans (ground-glass nodules, for one, score
   low by design of the density gate).

The result: nodules (score >= ``score_threshold``) with their LPS centre (centroid of the
segmented blob), diameter in mm (equivalent-sphere diameter of the segmented blob; the LoG
scale's diameter is kept too), score and features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medtorch.errors import MedTorchInputError
from medtorch.progress import CancelToken, ProgressCallback, SubProgress, report
from medtorch.volume import Geometry, Volume, check_volume

__all__ = [
    "SCORER",
    "Nodule",
    "NoduleResult",
    "blob_candidates",
    "candidate_features",
    "detect_nodules",
    "lung_mask",
    "lung_phantom",
    "score_candidates",
]

#: The false-positive scorer: each gate is ``sigmoid((value - centre) / width)`` (or of
#: ``centre - value`` for upper limits); the score is their product.
SCORER: dict[str, dict[str, float]] = {
    # a ball has sphericity 1, a vessel segment capped at 2 radii about 0.3 to 0.6
    "sphericity": {"centre": 0.72, "width": 0.05},
    # mean inside minus mean of the surrounding lung (HU): solid nodules ~ +800
    "contrast_hu": {"centre": 300.0, "width": 60.0},
    # mean density of the blob (HU): solid and part-solid nodules above ~ -300
    "mean_hu": {"centre": -450.0, "width": 60.0},
    # share of the blob's surface voxels on the cap sphere: vessels run through it
    "cap_fraction": {"centre": 0.25, "width": 0.05},
}

#: A candidate's blob is segmented within this many LoG radii (``sqrt(3) sigma``) of its centre.
CAP_RADII = 2.0

#: HU threshold between lung parenchyma and soft tissue used for the mask and the blobs.
SOFT_TISSUE_HU = -400.0


@dataclass
class Nodule:
    """A detected (or candidate) nodule. Coordinates are LPS millimetres."""

    center_lps: tuple[float, float, float]
    diameter_mm: float
    score: float
    log_diameter_mm: float
    volume_mm3: float
    mean_hu: float
    contrast_hu: float
    sphericity: float
    cap_fraction: float
    response: float

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else float(v)) for k, v in self.__dict__.items()}


@dataclass
class NoduleResult:
    """Nodules (sorted by score, highest first), every scored candidate, and the lung mask."""

    nodules: list[Nodule]
    candidates: list[Nodule]
    lung_mask: Volume
    info: dict[str, Any] = field(default_factory=dict)


# -- lung mask ---------------------------------------------------------------------------------


def _edt(mask: np.ndarray, spacing_zyx: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.distance_transform_edt(mask, sampling=spacing_zyx).astype(np.float32)


def lung_mask(ct: Volume, *, threshold_hu: float = SOFT_TISSUE_HU, closing_mm: float = 6.0,
              min_fraction: float = 0.1, progress: ProgressCallback | None = None,
              cancel: CancelToken | None = None) -> Volume:
    """Lungs of a chest CT as a label map (1 inside), on the CT's grid.

    Args:
        ct: the CT in Hounsfield units.
        threshold_hu: air/lung below, tissue above.
        closing_mm: radius of the ball (mm) the mask is closed with, to keep nodules on the
            pleura inside (0: no closing).
        min_fraction: air components smaller than this fraction of the largest are dropped.

    Raises:
        MedTorchInputError: no air inside the body (not a chest CT, or not in HU).
    """
    from scipy import ndimage

    check_volume(ct, "CT volume")
    report(progress, cancel, 0.0, "lung mask: thresholding")
    arr = ct.array
    air = arr < threshold_hu
    lab, n = ndimage.label(air)
    if n == 0:
        raise MedTorchInputError(f"no voxel below {threshold_hu:g} HU", "give a chest CT in Hounsfield units")
    border = np.unique(np.concatenate([lab[:, 0, :].ravel(), lab[:, -1, :].ravel(), lab[:, :, 0].ravel(),
                                       lab[:, :, -1].ravel()]))
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    counts[border] = 0  # the air around the body
    if counts.max() == 0:
        raise MedTorchInputError(
            "no air region inside the body was found (all air touches the side of the volume)",
            "give a chest CT in Hounsfield units covering the lungs, with the body inside the field of view",
        )
    keep = np.nonzero(counts >= min_fraction * counts.max())[0]
    mask = np.isin(lab, keep)
    del lab
    report(progress, cancel, 0.3, "lung mask: closing")
    sp = np.asarray(ct.spacing[::-1], dtype=np.float64)
    zz, yy, xx = np.nonzero(mask)
    if closing_mm > 0:
        margin = np.ceil(closing_mm / sp).astype(int) + 1
        lo = np.maximum([zz.min(), yy.min(), xx.min()] - margin, 0)
        hi = np.minimum(np.array([zz.max(), yy.max(), xx.max()]) + margin + 1, mask.shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        sub = np.pad(mask[box], [(int(m), int(m)) for m in margin])
        dil = _edt(~sub, sp) <= closing_mm
        report(progress, cancel, 0.6, "lung mask: closing")
        closed = _edt(dil, sp) > closing_mm
        crop = tuple(slice(int(m), int(m) + (b - a)) for m, a, b in zip(margin, lo, hi))
        mask[box] |= closed[crop]
    report(progress, cancel, 0.8, "lung mask: filling")
    for k in range(mask.shape[0]):
        if mask[k].any():
            mask[k] = ndimage.binary_fill_holes(mask[k])
    report(progress, cancel, 1.0, "lung mask done")
    return Volume(mask.astype(np.uint8), ct.geometry, "label", {"operation": "lung_mask", "threshold_hu": threshold_hu})


# -- blob candidates ----------------------------------------------------------------------------


class _LogScaleSpace:
    """Scale-normalised LoG responses ``-sigma^2 * laplacian(G_sigma * x)`` of one image at any
    sigma (mm), computed in the Fourier domain: one forward FFT of the (edge-padded) image, then
    one inverse FFT per scale, whatever the scale (a spatial Gaussian's cost grows with sigma).
    Anisotropic voxels are handled exactly (frequencies in cycles per mm)."""

    def __init__(self, x: torch.Tensor, spacing_zyx: np.ndarray, pad_vox: np.ndarray) -> None:
        self.shape = tuple(int(v) for v in x.shape)
        self.pad = [int(p) for p in pad_vox]
        padded = F.pad(x[None, None], (self.pad[2], self.pad[2], self.pad[1], self.pad[1], self.pad[0], self.pad[0]),
                       mode="replicate")[0, 0]
        self.full = tuple(int(v) for v in padded.shape)
        self.spectrum = torch.fft.rfftn(padded)
        del padded
        dev = x.device
        kz = 2 * math.pi * torch.fft.fftfreq(self.full[0], d=float(spacing_zyx[0]), device=dev)
        ky = 2 * math.pi * torch.fft.fftfreq(self.full[1], d=float(spacing_zyx[1]), device=dev)
        kx = 2 * math.pi * torch.fft.rfftfreq(self.full[2], d=float(spacing_zyx[2]), device=dev)
        self.k2 = (kz[:, None, None] ** 2 + ky[None, :, None] ** 2 + kx[None, None, :] ** 2).to(torch.float32)

    def response(self, sigma_mm: float) -> torch.Tensor:
        s2 = float(sigma_mm) ** 2
        h = self.k2 * s2
        h = h * torch.exp(-0.5 * h)  # sigma^2 |k|^2 exp(-sigma^2 |k|^2 / 2): -sigma^2 laplacian of G
        r = torch.fft.irfftn(self.spectrum * h, s=self.full)
        p = self.pad
        return r[p[0]:p[0] + self.shape[0], p[1]:p[1] + self.shape[1], p[2]:p[2] + self.shape[2]].contiguous()


def blob_candidates(ct: Volume, mask: Volume | np.ndarray, *, min_diameter_mm: float = 4.0,
                    max_diameter_mm: float = 30.0, num_scales: int = 8, min_response_hu: float = 60.0,
                    max_candidates: int = 500, device: str | torch.device | None = None,
                    progress: ProgressCallback | None = None,
                    cancel: CancelToken | None = None) -> list[tuple[np.ndarray, float, float]]:
    """Bright blobs inside ``mask``: ``[(ijk index, sigma_mm, response), ...]``, strongest first.

    The scale-normalised LoG of a ball of diameter ``d`` peaks at ``sigma = d / (2 sqrt 3)``;
    the scales are spaced geometrically between those of ``min_diameter_mm`` and
    ``max_diameter_mm``. ``min_response_hu`` is the smallest response kept (the response is
    in HU: about 0.4 x the contrast for a ball at its own scale).
    """
    if not 0 < min_diameter_mm < max_diameter_mm:
        raise MedTorchInputError(f"nodule diameters {min_diameter_mm}-{max_diameter_mm} mm are not a range",
                                 "give 0 < minimum < maximum diameter (mm)")
    if num_scales < 2:
        raise MedTorchInputError("at least 2 scales are needed", "use e.g. 8 scales")
    m = mask.array if isinstance(mask, Volume) else np.asarray(mask)
    m = m.astype(bool)
    if not m.any():
        return []
    dev = torch.device(device) if device is not None else torch.device("cpu")
    sp = np.asarray(ct.spacing[::-1], dtype=np.float64)
    sigmas = np.geomspace(min_diameter_mm, max_diameter_mm, num_scales) / (2.0 * math.sqrt(3.0))
    # work on the mask's bounding box plus the largest kernel's reach
    zz, yy, xx = np.nonzero(m)
    margin = np.ceil(3.0 * sigmas[-1] / sp).astype(int) + 2
    lo = np.maximum(np.array([zz.min(), yy.min(), xx.min()]) - margin, 0)
    hi = np.minimum(np.array([zz.max(), yy.max(), xx.max()]) + margin + 1, m.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    img = np.clip(np.asarray(ct.array[box], dtype=np.float32), -1000.0, 400.0)
    x = torch.from_numpy(np.ascontiguousarray(img)).to(dev)
    inside = torch.from_numpy(np.ascontiguousarray(m[box])).to(dev)
    report(progress, cancel, 0.0, "blob scale space")
    space = _LogScaleSpace(x, sp, np.ceil(3.0 * sigmas[-1] / sp).astype(int) + 1)
    found: list[tuple[np.ndarray, float, float]] = []
    maps: list[torch.Tensor] = []
    pooled: list[torch.Tensor] = []

    def response(i: int) -> torch.Tensor:
        report(progress, cancel, i / (num_scales + 1), f"blob scale {i + 1} of {num_scales}")
        return space.response(float(sigmas[i]))

    with torch.inference_mode():
        for i in range(num_scales + 1):
            if i < num_scales:
                r = response(i)
                maps.append(r)
                pooled.append(F.max_pool3d(r[None, None], 3, stride=1, padding=1)[0, 0])
            # decide scale i-1 once its neighbours (i-2, i) are known
            s = i - 1
            if s < 0:
                continue
            lo_s, hi_s = max(s - 1, 0), min(s + 1, len(maps) - 1)
            neigh = torch.stack([pooled[j] for j in range(lo_s, hi_s + 1)]).amax(dim=0)
            r = maps[s]
            peak = (r >= neigh) & (r > min_response_hu) & inside
            idx = torch.nonzero(peak, as_tuple=False)
            if idx.numel():
                vals = r[peak]
                for (kz, ky, kx), v in zip(idx.cpu().numpy(), vals.cpu().numpy()):
                    ijk = np.array([kx + lo[2], ky + lo[1], kz + lo[0]], dtype=np.float64)
                    found.append((ijk, float(sigmas[s]), float(v)))
            # free what is no longer needed
            if s - 1 >= 0:
                maps[s - 1] = pooled[s - 1] = torch.empty(0)
    found.sort(key=lambda t: -t[2])
    return found[:max_candidates]


# -- features --------------------------------------------------------------------------------------


def _box_around(center_zyx: np.ndarray, radius_mm: float, sp: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    half = np.ceil(radius_mm / sp).astype(int) + 1
    lo = np.maximum(np.round(center_zyx).astype(int) - half, 0)
    hi = np.minimum(np.round(center_zyx).astype(int) + half + 1, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _blob_region(ct: np.ndarray, lung: np.ndarray, center_zyx: np.ndarray, radius_mm: float,
                 sp: np.ndarray) -> tuple[np.ndarray, tuple[slice, ...], np.ndarray, np.ndarray] | None:
    """(region mask, box, distance of each box voxel to the centre in mm, cap mask) or None."""
    from scipy import ndimage

    cap = CAP_RADII * radius_mm
    box = _box_around(center_zyx, (CAP_RADII + 1.0) * radius_mm, sp, ct.shape)
    sub = ct[box]
    grids = np.meshgrid(*[(np.arange(s.start, s.stop) - c) * d for s, c, d in zip(box, center_zyx, sp)], indexing="ij")
    dist = np.sqrt(sum(g * g for g in grids))
    solid = (sub > SOFT_TISSUE_HU) & (dist <= cap)
    if not solid.any():
        return None
    rho = max(0.35 * radius_mm, float(sp.min()))
    eroded = _edt(solid, sp) > rho  # opening: cut off structures thinner than 2 rho
    lab, n = ndimage.label(eroded if eroded.any() else solid)
    if n == 0:
        return None
    c = tuple(int(round(v)) - s.start for v, s in zip(center_zyx, box))
    c = tuple(min(max(v, 0), dim - 1) for v, dim in zip(c, lab.shape))
    target = lab[c]
    if target == 0:  # the centre fell outside: the component nearest to it
        idx = np.argwhere(lab > 0)
        d = np.sqrt((((idx - np.array(c)) * sp) ** 2).sum(axis=1))
        target = lab[tuple(idx[int(np.argmin(d))])]
        if d.min() > radius_mm:
            return None
    core = lab == target
    # dilate back a little further than eroded: on anisotropic voxels a radius below the slice
    # spacing could not bring back the first and last slices of the blob
    region = (_edt(~core, sp) <= rho + float(sp.max())) & solid if eroded.any() else core
    shell = (dist > cap) & (dist <= cap + radius_mm) & lung[box].astype(bool)
    return region, box, dist, shell


def candidate_features(ct: Volume, lung: Volume | np.ndarray, candidates: list[tuple[np.ndarray, float, float]],
                       progress: ProgressCallback | None = None,
                       cancel: CancelToken | None = None) -> list[Nodule]:
    """Segment each candidate and measure it (unscored :class:`Nodule` objects, score 0)."""
    arr = np.asarray(ct.array, dtype=np.float32)
    lung_arr = (lung.array if isinstance(lung, Volume) else np.asarray(lung)).astype(bool)
    sp = np.asarray(ct.spacing[::-1], dtype=np.float64)
    vox = float(np.prod(sp))
    out: list[Nodule] = []
    for n, (ijk, sigma, resp) in enumerate(candidates):
        if n % 8 == 0:
            report(progress, cancel, n / max(len(candidates), 1), f"measuring candidate {n + 1} of {len(candidates)}")
        radius = math.sqrt(3.0) * sigma
        center_zyx = ijk[::-1]
        got = _blob_region(arr, lung_arr, center_zyx, radius, sp)
        if got is None:
            continue
        region, box, dist, shell = got
        count = int(region.sum())
        if count < 4:
            continue
        vals = arr[box][region]
        surround = arr[box][shell]
        mean_in = float(vals.mean())
        contrast = mean_in - (float(surround.mean()) if surround.size else -850.0)
        idx = np.argwhere(region).astype(np.float64)
        pts = (idx + [s.start for s in box]) * sp  # mm, zyx
        centroid_zyx_idx = idx.mean(axis=0) + [s.start for s in box]
        # second moments of the voxels as boxes (each adds spacing^2 / 12 per axis)
        cov = np.cov((pts - pts.mean(axis=0)).T, bias=True) + np.diag(sp ** 2 / 12.0)
        ev = np.clip(np.linalg.eigvalsh(cov), 1e-9, None)
        sphericity = float(math.sqrt(ev[0] / ev[-1]))
        from scipy import ndimage

        surface = region & ~ndimage.binary_erosion(region)
        on_cap = surface & (dist > CAP_RADII * radius - 0.75 * float(sp.max()))
        cap_fraction = float(on_cap.sum() / max(surface.sum(), 1))
        center_lps = ct.geometry.index_to_physical(centroid_zyx_idx[::-1][None])[0]
        out.append(Nodule(center_lps=tuple(float(v) for v in center_lps),
                          diameter_mm=float((6.0 * count * vox / math.pi) ** (1.0 / 3.0)), score=0.0,
                          log_diameter_mm=float(2.0 * radius), volume_mm3=float(count * vox), mean_hu=mean_in,
                          contrast_hu=float(contrast), sphericity=sphericity, cap_fraction=cap_fraction,
                          response=float(resp)))
    return out


def _gate(value: float, centre: float, width: float, upper: bool = False) -> float:
    z = (centre - value) / width if upper else (value - centre) / width
    return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))


def score_candidates(candidates: list[Nodule], min_diameter_mm: float, max_diameter_mm: float) -> list[Nodule]:
    """Score each candidate with the rule-based gates of :data:`SCORER` and the size range."""
    for c in candidates:
        s = _gate(c.sphericity, **SCORER["sphericity"])
        s *= _gate(c.contrast_hu, **SCORER["contrast_hu"])
        s *= _gate(c.mean_hu, **SCORER["mean_hu"])
        s *= _gate(c.cap_fraction, **SCORER["cap_fraction"], upper=True)
        s *= _gate(c.diameter_mm, 0.85 * min_diameter_mm, 0.05 * min_diameter_mm + 0.1)
        s *= _gate(c.diameter_mm, 1.15 * max_diameter_mm, 0.05 * max_diameter_mm + 0.1, upper=True)
        c.score = float(s)
    return candidates


def _deduplicate(nodules: list[Nodule]) -> list[Nodule]:
    """Keep the best-scoring of candidates whose centres lie within the other's radius."""
    kept: list[Nodule] = []
    for n in sorted(nodules, key=lambda c: (-c.score, -c.response)):
        p = np.asarray(n.center_lps)
        if all(np.linalg.norm(p - np.asarray(k.center_lps)) > 0.5 * max(k.diameter_mm, n.diameter_mm) for k in kept):
            kept.append(n)
    return kept


def detect_nodules(ct: Volume, *, min_diameter_mm: float = 4.0, max_diameter_mm: float = 30.0,
                   score_threshold: float = 0.5, num_scales: int = 8, min_response_hu: float = 60.0,
                   max_candidates: int = 500, lung: Volume | None = None, device: str | torch.device | None = None,
                   progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> NoduleResult:
    """Lung nodules of a chest CT (HU): candidates, features, rule-based scores, diameters.

    Args:
        ct: chest CT in Hounsfield units (never modified).
        min_diameter_mm, max_diameter_mm: the nodule sizes looked for.
        score_threshold: candidates scoring at least this are reported as nodules.
        num_scales: LoG scales between the two diameters.
        min_response_hu: weakest LoG response kept as a candidate.
        max_candidates: most candidates measured (strongest first).
        lung: a lung mask to use instead of :func:`lung_mask`'s.
        device: torch device for the LoG scale space.

    Returns:
        :class:`NoduleResult`; ``info`` holds the candidate count, the scorer and the settings.
    """
    from medtorch.device import select_device

    check_volume(ct, "CT volume")
    if not 0.0 <= score_threshold <= 1.0:
        raise MedTorchInputError(f"the score threshold must be from 0 to 1, got {score_threshold}", "use e.g. 0.5")
    dev = select_device(device)
    if lung is None:
        lung = lung_mask(ct, progress=SubProgress(progress, 0.0, 0.3, "lungs"), cancel=cancel)
    elif lung.geometry.shape_zyx != ct.geometry.shape_zyx:
        raise MedTorchInputError("the lung mask and the CT have different sizes", "give a lung mask on the CT's grid")
    cands = blob_candidates(ct, lung, min_diameter_mm=min_diameter_mm, max_diameter_mm=max_diameter_mm,
                            num_scales=num_scales, min_response_hu=min_response_hu, max_candidates=max_candidates,
                            device=dev, progress=SubProgress(progress, 0.3, 0.75, "candidates"), cancel=cancel)
    measured = candidate_features(ct, lung, cands, SubProgress(progress, 0.75, 0.97, "features"), cancel)
    scored = _deduplicate(score_candidates(measured, min_diameter_mm, max_diameter_mm))
    nodules = [n for n in scored if n.score >= score_threshold]
    report(progress, cancel, 1.0, f"{len(nodules)} nodule(s) found")
    info = {"num_candidates": len(cands), "num_measured": len(measured), "score_threshold": score_threshold,
            "min_diameter_mm": min_diameter_mm, "max_diameter_mm": max_diameter_mm, "scorer": "rule-based",
            "scorer_gates": SCORER, "device": str(dev)}
    return NoduleResult(nodules=nodules, candidates=scored, lung_mask=lung, info=info)


# -- a synthetic chest CT ------------------------------------------------------------------------


def lung_phantom(size: tuple[int, int, int] = (128, 112, 72), spacing: tuple[float, float, float] = (0.9, 0.9, 1.5),
                 nodule_diameters_mm: tuple[float, ...] = (5.0, 8.0, 12.0, 18.0), num_vessels: int = 10,
                 noise_hu: float = 25.0, seed: int = 0) -> tuple[Volume, list[dict[str, Any]]]:
    """A chest-CT-like volume (HU, int16) with nodules of known diameters and vessel-like tubes.

    Body (soft tissue, 40 HU) in air (-1000 HU); two lungs (-850 HU); ``num_vessels`` straight
    tubes 2 to 5 mm thick (40 HU) through the lungs; solid nodules (30 HU) placed in the
    lungs clear of the walls, the vessels and each other; partial-volume edges and Gaussian
    noise. Returns the volume and the truth: ``[{"center_lps", "diameter_mm"}, ...]``.
    """
    rng = np.random.default_rng(seed)
    geom = Geometry(size, origin=(-(size[0] - 1) * spacing[0] / 2, -(size[1] - 1) * spacing[1] / 2, 0.0), spacing=spacing)
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in geom.shape_zyx), indexing="ij")
    p = np.stack([i * spacing[0] + geom.origin[0], j * spacing[1] + geom.origin[1], k * spacing[2]], axis=-1)
    ext = np.array(size, float) * spacing
    zc = ext[2] / 2

    def soft(d: np.ndarray, w: float = 0.6) -> np.ndarray:  # 1 inside (d < 0), smooth edge
        return 1.0 / (1.0 + np.exp(np.clip(d / w, -40, 40)))

    body_r = np.array([0.45 * ext[0], 0.42 * ext[1]])
    body = soft((np.sqrt((p[..., 0] / body_r[0]) ** 2 + (p[..., 1] / body_r[1]) ** 2) - 1.0) * body_r.min())
    lung_r = np.array([0.17 * ext[0], 0.30 * ext[1], 0.42 * ext[2]])
    centres = [np.array([-0.2 * ext[0], 0.0, zc]), np.array([0.2 * ext[0], 0.0, zc])]
    lungs = np.zeros(geom.shape_zyx, np.float32)
    for c in centres:
        d = np.sqrt((((p - c) / lung_r) ** 2).sum(-1))
        lungs = np.maximum(lungs, soft((d - 1.0) * lung_r.min()))
    tissue = np.zeros(geom.shape_zyx, np.float32)
    vessels_axes = []
    for _ in range(num_vessels):
        c = centres[rng.integers(2)] + rng.uniform(-0.5, 0.5, 3) * lung_r
        u = rng.normal(size=3)
        u /= np.linalg.norm(u)
        r = rng.uniform(1.0, 2.5)
        half = rng.uniform(15.0, 35.0)
        q = p - c
        t = np.clip(q @ u, -half, half)
        d = np.linalg.norm(q - t[..., None] * u, axis=-1)
        tissue = np.maximum(tissue, soft(d - r))
        vessels_axes.append((c, u, r, half))
    truth: list[dict[str, Any]] = []
    placed: list[tuple[np.ndarray, float]] = []
    for dia in nodule_diameters_mm:
        r = dia / 2.0
        for _ in range(2000):
            c = centres[rng.integers(2)] + rng.uniform(-0.75, 0.75, 3) * lung_r
            inner = np.sqrt((((c - centres[0]) / (lung_r - r - 3)) ** 2).sum()) <= 1.0 or \
                np.sqrt((((c - centres[1]) / (lung_r - r - 3)) ** 2).sum()) <= 1.0
            if not inner:
                continue
            clear_v = all(np.linalg.norm((c - vc) - np.clip((c - vc) @ vu, -vh, vh) * vu) > r + vr + 4.0
                          for vc, vu, vr, vh in vessels_axes)
            clear_n = all(np.linalg.norm(c - pc) > r + pr + 6.0 for pc, pr in placed)
            if clear_v and clear_n:
                break
        else:  # pragma: no cover - the phantom is too small for the nodules asked for
            raise MedTorchInputError(f"no room for a {dia} mm nodule in the phantom", "use a larger phantom or fewer nodules")
        placed.append((c, r))
        tissue = np.maximum(tissue, soft(np.linalg.norm(p - c, axis=-1) - r))
        truth.append({"center_lps": tuple(float(v) for v in c), "diameter_mm": float(dia)})
    hu = -1000.0 + body * 1040.0  # air -> 40 HU soft tissue
    hu = hu - lungs * body * 890.0  # lungs -850
    hu = hu + tissue * lungs * (880.0 - 10.0)  # vessels/nodules ~ +30 HU inside the lungs
    hu = hu + rng.normal(0.0, noise_hu, hu.shape)
    vol = Volume(np.clip(np.round(hu), -1024, 3071).astype(np.int16), geom, "scalar",
                 {"phantom": "lung", "seed": seed, "noise_hu": noise_hu})
    return vol, truth
