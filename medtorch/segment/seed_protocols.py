"""Seed protocols: the ways users give seeds to seeded segmentation, simulated from a truth.

Each protocol turns a truth label map (0 outside, tumor classes 1...) into what a user
would give :func:`~medtorch.segment.seeded.seeded_segment`: a seed label map (0 unlabelled,
the tumor class values, the background ``max(classes) + 1``) and, where the protocol has
one, a region :class:`~medtorch.segment.threshold.Box`. All are deterministic given ``seed``.

Protocols
---------
* :func:`three_slice_strokes` -- strokes on the axial, coronal and sagittal slices through
  the centre of each lesion (today's :func:`~medtorch.segment.tumor_phantom.stroke_seeds`,
  which it calls; with one lesion and the ``"ring"`` background it returns exactly
  ``stroke_seeds``' seeds).
* :func:`one_slice_strokes` -- the same strokes on one slice: the axial slice through each
  lesion's centre.
* :func:`clicks_and_box` -- a few clicks inside the tumor, each painted as a ball of
  ``radius_mm`` (as SegmentTumor turns markups points into seeds), and a box: the tumor's
  bounding box grown by ``margin_mm``. **No background seeds**: the box boundary is the
  background (the method is expected to treat it so).

Background variants of the stroke protocols (``background=``):

* ``"ring"`` -- an arc-like stroke in a band 4-8 mm outside the tumor on each slice
  (``stroke_seeds``' background);
* ``"scattered"`` -- short straight strokes (5-12 mm) scattered 3-15 mm outside the tumor
  on the protocol's slices;
* ``"ring_missing_side"`` -- a full ring on each slice with no seed in one half-space through
  the tumor's centre (its normal, random in the axial plane, is in the metadata): a user
  who never paints on one side (next to the skull, the midline, a ventricle).

Correction rounds (:func:`correct`): a simulated user looks at a result, finds the largest
connected error component (a miss or a false positive), and adds one straight stroke,
2 voxels wide, on the slice through its centroid, inside the eroded error region, labelled
with the truth there (the tumor class for a miss, the background for a false positive).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import numpy as np

from medtorch.errors import MedTorchInputError
from medtorch.segment.threshold import Box
from medtorch.segment.tumor_phantom import _disk_line_mask, stroke_seeds
from medtorch.volume import Geometry, Volume

__all__ = [
    "ProtocolSeeds",
    "PROTOCOLS",
    "BACKGROUNDS",
    "stroke_seeds",
    "lesion_components",
    "axial_axis",
    "three_slice_strokes",
    "one_slice_strokes",
    "clicks_and_box",
    "make_protocol_seeds",
    "correct",
    "seed_background_value",
]

#: protocol names accepted by :func:`make_protocol_seeds`
PROTOCOLS = ("three_slice", "one_slice", "click_box")
#: background variants of the stroke protocols
BACKGROUNDS = ("ring", "scattered", "ring_missing_side")


class ProtocolSeeds(NamedTuple):
    """A protocol's seeds: the seed label map and the region box (``None`` when the protocol
    has none). ``seeds.metadata`` records the protocol, its settings and ``background_value``."""

    seeds: Volume
    box: Box | None = None

    @property
    def background(self) -> int:
        return int(self.seeds.metadata["background_value"])


# -- helpers --------------------------------------------------------------------------------------


def _check_truth(truth: Volume) -> np.ndarray:
    if not isinstance(truth, Volume):
        raise MedTorchInputError("the truth must be a label Volume", "give the truth on its grid")
    t = np.asarray(truth.array)
    if t.ndim != 3:
        raise MedTorchInputError("the truth must be a 3D label map", "give one label per voxel")
    if not np.any(t > 0):
        raise MedTorchInputError("the truth has no labelled voxel", "give a label map with the tumor")
    return t


def _class_values(t: np.ndarray, classes: Sequence[int] | None) -> list[int]:
    vals = sorted(int(v) for v in (classes if classes is not None else np.unique(t[t > 0])))
    if not vals:
        raise MedTorchInputError("the truth has no labelled voxel", "give a label map with the tumor")
    return vals


def _spacing_zyx(geometry: Geometry) -> np.ndarray:
    return np.asarray(geometry.spacing, float)[::-1]


def axial_axis(geometry: Geometry) -> int:
    """The array axis (0 z, 1 y, 2 x) whose direction is closest to the patient's S axis."""
    d = np.asarray(geometry.direction, float).reshape(3, 3)
    ijk = int(np.argmax(np.abs(d[2, :])))  # column = voxel axis i, j, k; row 2 = LPS z
    return 2 - ijk


def lesion_components(truth: Volume | np.ndarray, min_fraction: float = 0.05, min_voxels: int = 8) -> list[np.ndarray]:
    """The lesions of a truth: its 26-connected pieces, largest first, keeping those with at
    least ``min_fraction`` of the largest piece's voxels and ``min_voxels`` voxels (the largest
    is always kept). Boolean masks on the truth's grid."""
    from scipy import ndimage

    t = np.asarray(truth.array if isinstance(truth, Volume) else truth) > 0
    lab, n = ndimage.label(t, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return []
    counts = np.bincount(lab.ravel())[1:]
    order = np.argsort(-counts, kind="stable")
    big = counts[order[0]]
    keep = [int(i) + 1 for i in order
            if i == order[0] or (counts[i] >= min_fraction * big and counts[i] >= min_voxels)]
    return [lab == i for i in keep]


def _crop_bounds(mask: np.ndarray, spacing_zyx: np.ndarray, margin_mm: float) -> tuple[slice, ...]:
    idx = np.argwhere(mask)
    pad = np.ceil(margin_mm / spacing_zyx).astype(int)
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + pad + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _distance_outside(tumor: np.ndarray, spacing_zyx: np.ndarray, reach_mm: float) -> np.ndarray:
    """Distance (mm) to the tumor of every voxel, exact within ``reach_mm`` of it (inf beyond)."""
    from scipy import ndimage

    out = np.full(tumor.shape, np.inf, np.float32)
    sl = _crop_bounds(tumor, spacing_zyx, reach_mm + 2.0 * float(spacing_zyx.max()))
    out[sl] = ndimage.distance_transform_edt(~tumor[sl], sampling=spacing_zyx)
    return out


def _plane_index(axis: int, index: int, ndim: int = 3) -> tuple[Any, ...]:
    sl: list[Any] = [slice(None)] * ndim
    sl[axis] = int(index)
    return tuple(sl)


def _centre_zyx(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return np.round(ndimage.center_of_mass(mask)).astype(int)


def _centroid_zyx(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return np.asarray(ndimage.center_of_mass(mask), float)


def _physical_zyx(geometry: Geometry, zyx: np.ndarray) -> np.ndarray:
    """LPS points of (N, 3) ``[z, y, x]`` indices."""
    zyx = np.asarray(zyx, float).reshape(-1, 3)
    return geometry.index_to_physical(zyx[:, ::-1])


def seed_background_value(truth: Volume | np.ndarray, seeds: Volume | np.ndarray | None = None) -> int:
    """The background seed value: a seed map's ``background_value`` metadata if it has one, else
    the larger of ``max(truth) + 1`` and the largest seed value."""
    if isinstance(seeds, Volume) and "background_value" in seeds.metadata:
        return int(seeds.metadata["background_value"])
    t = np.asarray(truth.array if isinstance(truth, Volume) else truth)
    bg = int(t.max()) + 1
    if seeds is not None:
        s = np.asarray(seeds.array if isinstance(seeds, Volume) else seeds)
        if s.size:
            bg = max(bg, int(s.max()))
    return bg


# -- strokes ---------------------------------------------------------------------------------------


def _ring_band(dist_out: np.ndarray, margin_mm: tuple[float, float], width: float, spacing_zyx: np.ndarray) -> np.ndarray:
    """``stroke_seeds``' background band: within a voxel of the middle of ``margin_mm``."""
    mid = 0.5 * (margin_mm[0] + margin_mm[1])
    half = max(width * float(spacing_zyx.min()), 0.5 * (margin_mm[1] - margin_mm[0])) / 2.0
    return np.abs(dist_out - mid) <= half


def _scattered_strokes(plane_band: np.ndarray, plane_ok: np.ndarray, plane_sp: np.ndarray, count: int,
                       rng: np.random.Generator, width: float, length_mm: tuple[float, float]) -> np.ndarray:
    """``count`` short straight strokes centred on random points of ``plane_band``, kept inside ``plane_ok``."""
    out = np.zeros(plane_band.shape, bool)
    pts = np.argwhere(plane_band)
    if len(pts) == 0:
        return out
    for _ in range(count):
        a = pts[rng.integers(len(pts))].astype(float)
        ang = rng.uniform(0.0, np.pi)
        half = 0.5 * rng.uniform(*length_mm)
        d = np.array([math.sin(ang), math.cos(ang)]) * half / plane_sp  # pixels along (row, col)
        out |= _disk_line_mask(plane_band.shape, a - d, a + d, width)
    return out & plane_ok


def _strokes(truth: Volume, classes: Sequence[int] | None, background: str, seed: int, within: np.ndarray | Volume | None,
             axes: tuple[int, ...], strokes_per_class: int, background_margin_mm: tuple[float, float],
             erode_mm: float, width: float, scattered_per_slice: int, protocol: str) -> ProtocolSeeds:
    if background not in BACKGROUNDS:
        raise MedTorchInputError(f"unknown background variant {background!r}", "use one of " + ", ".join(BACKGROUNDS))
    t = _check_truth(truth)
    vals = _class_values(t, classes)
    bg = max(vals) + 1
    g = truth.geometry
    sp = _spacing_zyx(g)
    tumor = t > 0
    if within is not None:
        within = np.asarray(within.array if isinstance(within, Volume) else within).astype(bool)
        if within.shape != t.shape:
            raise MedTorchInputError("the mask of allowed background voxels is not on the truth's grid",
                                     "give a mask of the truth's shape")
    lesions = lesion_components(t)
    rng = np.random.default_rng([int(seed), 0x5EED])
    out = np.zeros(t.shape, np.uint8 if bg < 256 else np.uint16)
    ring_arcs = np.zeros(t.shape, bool)
    planes: list[tuple[int, int]] = []
    for n, les in enumerate(lesions):
        centre = _centre_zyx(les)
        if len(lesions) == 1:
            sub = truth  # exactly today's stroke_seeds
        else:
            sub = Volume(np.where(les, t, 0).astype(t.dtype), g, "label")
        if axes == (axial_axis(g),) and not les[_plane_index(axes[0], centre[axes[0]])].any():
            # the centre's axial slice misses the lesion (a C shape): the slice where it is largest
            areas = les.sum(axis=tuple(a for a in range(3) if a != axes[0]))
            centre[axes[0]] = int(np.argmax(areas))
        s = stroke_seeds(sub, classes=vals, center_zyx=centre, strokes_per_class=strokes_per_class,
                         background_margin_mm=background_margin_mm, erode_mm=erode_mm, width=width,
                         seed=int(seed) + 1009 * n).array
        for axis in axes:
            pl = _plane_index(axis, centre[axis])
            s_pl = s[pl]
            o_pl = out[pl]
            tum = (s_pl > 0) & (s_pl != bg) & (o_pl == 0)
            o_pl[tum] = s_pl[tum]
            ring_arcs[pl] |= s_pl == bg
            planes.append((axis, int(centre[axis])))
    reach = max(background_margin_mm[1], 15.0) + 2.0
    dist_out = _distance_outside(tumor, sp, reach)
    allowed = dist_out >= max(background_margin_mm[0] - 1.0, 2.0)
    if within is not None:
        allowed &= within
    meta: dict[str, Any] = {"protocol": protocol, "background": background, "background_value": bg, "seed": int(seed),
                            "lesions": len(lesions), "planes_zyx_axis_index": sorted(set(planes))}
    if background == "ring":
        bgmask = ring_arcs
    elif background == "scattered":
        bgmask = np.zeros(t.shape, bool)
        band = (dist_out >= 3.0) & (dist_out <= 15.0)
        if within is not None:
            band &= within
        for axis, index in sorted(set(planes)):
            pl = _plane_index(axis, index)
            bgmask[pl] |= _scattered_strokes(band[pl], allowed[pl], np.delete(sp, axis), scattered_per_slice, rng,
                                             width, (5.0, 12.0))
    else:
        ring = _ring_band(dist_out, background_margin_mm, width, sp)
        ang = rng.uniform(-np.pi, np.pi)
        normal = np.array([math.cos(ang), math.sin(ang), 0.0])  # LPS, in the axial plane
        centre_lps = _physical_zyx(g, _centroid_zyx(tumor))[0]
        bgmask = np.zeros(t.shape, bool)
        for axis, index in sorted(set(planes)):
            pl = _plane_index(axis, index)
            pts = np.argwhere(ring[pl])
            if len(pts) == 0:
                continue
            zyx = np.insert(pts, axis, index, axis=1)
            side = (_physical_zyx(g, zyx) - centre_lps) @ normal
            keep = pts[side < 0]
            plane = np.zeros(ring[pl].shape, bool)
            plane[tuple(keep.T)] = True
            bgmask[pl] |= plane
        meta["missing_side_normal_lps"] = [float(v) for v in normal]
        meta["missing_side_centre_lps"] = [float(v) for v in centre_lps]
        meta["missing_side"] = "no background seed where (p - centre) . normal >= 0"
    bgmask &= allowed & (out == 0)
    out[bgmask] = bg
    meta["seeds"] = {"three_slice": "strokes on the axial, coronal and sagittal slices through each lesion's centre",
                     "one_slice": "strokes on the axial slice through each lesion's centre"}[protocol] + \
        f"; background: {background}"
    return ProtocolSeeds(Volume(out, g, "label", meta), None)


def three_slice_strokes(truth: Volume, classes: Sequence[int] | None = None, background: str = "ring",
                        seed: int = 0, within: np.ndarray | Volume | None = None, strokes_per_class: int = 3,
                        background_margin_mm: tuple[float, float] = (4.0, 8.0), erode_mm: float = 1.5,
                        width: float = 2.0, scattered_per_slice: int = 4) -> ProtocolSeeds:
    """Strokes on the axial, coronal and sagittal slices through the centre of each lesion.

    Tumor strokes are :func:`~medtorch.segment.tumor_phantom.stroke_seeds`' (three straight
    strokes per class and slice, ``width`` voxels wide, ``erode_mm`` inside the class). Each
    lesion (:func:`lesion_components`) gets its own three slices. ``background`` is one of
    :data:`BACKGROUNDS`; background seeds stay at least ``max(background_margin_mm[0] - 1, 2)``
    mm away from every lesion and inside ``within`` (e.g. the brain mask) when it is given.

    Returns:
        :class:`ProtocolSeeds` with no box; background value ``max(classes) + 1``.
    """
    return _strokes(truth, classes, background, seed, within, (0, 1, 2), strokes_per_class, background_margin_mm,
                    erode_mm, width, scattered_per_slice, "three_slice")


def one_slice_strokes(truth: Volume, classes: Sequence[int] | None = None, background: str = "ring",
                      seed: int = 0, within: np.ndarray | Volume | None = None, strokes_per_class: int = 3,
                      background_margin_mm: tuple[float, float] = (4.0, 8.0), erode_mm: float = 1.5,
                      width: float = 2.0, scattered_per_slice: int = 6) -> ProtocolSeeds:
    """Strokes on ONE slice per lesion: the axial slice through its centre (or, when that
    slice misses the lesion, the axial slice where the lesion is largest). The tumor strokes
    are those :func:`three_slice_strokes` draws on that slice; see it for the arguments."""
    return _strokes(truth, classes, background, seed, within, (axial_axis(truth.geometry),), strokes_per_class,
                    background_margin_mm, erode_mm, width, scattered_per_slice, "one_slice")


# -- clicks and a box ------------------------------------------------------------------------------


def _ball_offsets(radius_mm: float, spacing_zyx: np.ndarray) -> np.ndarray:
    r = np.ceil(radius_mm / spacing_zyx).astype(int)
    zz, yy, xx = np.meshgrid(*(np.arange(-k, k + 1) for k in r), indexing="ij")
    off = np.stack([zz.ravel(), yy.ravel(), xx.ravel()], 1)
    return off[np.linalg.norm(off * spacing_zyx, axis=1) <= radius_mm + 1e-9]


def clicks_and_box(truth: Volume, n_clicks: int = 4, radius_mm: float = 2.0, margin_mm: float = 7.5,
                   seed: int = 0, classes: Sequence[int] | None = None) -> ProtocolSeeds:
    """A few clicks inside the tumor, each painted as a ball, and a box around the tumor.

    Each lesion gets at least one click; the others go to the lesions with the most voxels per
    click. In a lesion the clicks are spread out (the first at random, each next one the
    farthest from those before among a random sample), at least ``radius_mm`` deep inside the
    tumor where it is that thick (else at its deepest point). A click paints the ball of
    ``radius_mm`` around it with the truth's class there, clipped to that class's voxels.

    The box is the tumor's bounding box (voxel centres, along the grid's axes) grown by
    ``margin_mm`` on every side. **No background seed is painted**: the box boundary is the
    background. The background value ``max(classes) + 1`` is in the metadata.
    """
    from scipy import ndimage

    t = _check_truth(truth)
    vals = _class_values(t, classes)
    bg = max(vals) + 1
    g = truth.geometry
    sp = _spacing_zyx(g)
    if n_clicks < 1 or radius_mm <= 0 or margin_mm < 0:
        raise MedTorchInputError("n_clicks must be >= 1, radius_mm > 0 and margin_mm >= 0", "fix the settings")
    rng = np.random.default_rng([int(seed), 0xC11C])
    tumor = t > 0
    lesions = lesion_components(t)
    sl = _crop_bounds(tumor, sp, 2.0 * float(sp.max()))
    depth = np.zeros(t.shape, np.float32)
    depth[sl] = ndimage.distance_transform_edt(tumor[sl], sampling=sp)
    # clicks per lesion: one each, the rest where the voxels per click are most
    sizes = np.array([int(m.sum()) for m in lesions], float)
    per = np.ones(len(lesions), int)
    for _ in range(max(0, n_clicks - len(lesions))):
        per[int(np.argmax(sizes / per))] += 1
    offsets = _ball_offsets(radius_mm, sp)
    out = np.zeros(t.shape, np.uint8 if bg < 256 else np.uint16)
    clicks: list[list[float]] = []
    for les, k in zip(lesions, per):
        d = np.where(les, depth, 0.0)
        cand = np.argwhere(d > radius_mm)
        if len(cand) == 0:
            cand = np.argwhere(d >= d.max() - 1e-6)
        if len(cand) > 4000:
            cand = cand[rng.choice(len(cand), 4000, replace=False)]
        chosen = [cand[rng.integers(len(cand))]]
        mind = np.linalg.norm((cand - chosen[0]) * sp, axis=1)
        for _ in range(int(k) - 1):
            nxt = cand[int(np.argmax(mind))]
            chosen.append(nxt)
            mind = np.minimum(mind, np.linalg.norm((cand - nxt) * sp, axis=1))
        for c in chosen:
            value = int(t[tuple(c)])
            pts = c + offsets
            ok = np.all((pts >= 0) & (pts < np.asarray(t.shape)), axis=1)
            pts = pts[ok]
            pts = pts[t[tuple(pts.T)] == value]
            out[tuple(pts.T)] = value
            clicks.append([float(v) for v in _physical_zyx(g, c[None])[0]])
    idx = np.argwhere(tumor)
    lo, hi = idx.min(0).astype(float), idx.max(0).astype(float)
    centre_ijk = ((lo + hi) / 2.0)[::-1]
    centre = g.index_to_physical(centre_ijk[None])[0]
    half = ((hi - lo) / 2.0)[::-1] * np.asarray(g.spacing, float) + margin_mm
    box = Box(center=centre, half_size=half, axes=np.asarray(g.direction, float).reshape(3, 3))
    meta = {"protocol": "click_box", "seeds": f"{len(clicks)} clicks (balls of {radius_mm:g} mm) inside the tumor "
            f"and a box (tumor bounding box + {margin_mm:g} mm); no background seeds",
            "background": "box boundary", "background_value": bg, "seed": int(seed), "clicks_lps": clicks,
            "radius_mm": float(radius_mm), "margin_mm": float(margin_mm), "lesions": len(lesions),
            "box_center_lps": [float(v) for v in centre], "box_half_size_mm": [float(v) for v in half]}
    return ProtocolSeeds(Volume(out, g, "label", meta), box)


def make_protocol_seeds(protocol: str, truth: Volume, background: str = "ring", seed: int = 0,
                        **kwargs: Any) -> ProtocolSeeds:
    """One of :data:`PROTOCOLS` by name (``background`` is ignored by ``click_box``)."""
    if protocol == "three_slice":
        return three_slice_strokes(truth, background=background, seed=seed, **kwargs)
    if protocol == "one_slice":
        return one_slice_strokes(truth, background=background, seed=seed, **kwargs)
    if protocol == "click_box":
        return clicks_and_box(truth, seed=seed, **kwargs)
    raise MedTorchInputError(f"unknown seed protocol {protocol!r}", "use one of " + ", ".join(PROTOCOLS))


# -- corrections -----------------------------------------------------------------------------------


def _longest_chord(region: np.ndarray, start: np.ndarray, plane_sp: np.ndarray, max_length_mm: float,
                   angles: int = 36) -> tuple[np.ndarray, np.ndarray]:
    """End points (row, col) of the longest straight segment through ``start`` inside ``region``."""
    best = (-1.0, start, start)
    limit = 0.5 * max_length_mm
    for k in range(angles):
        ang = np.pi * k / angles
        u = np.array([math.sin(ang), math.cos(ang)])
        step_mm = float(np.hypot(*(0.5 * u * plane_sp)))
        ends = []
        for sign in (1.0, -1.0):
            pos, run = start.astype(float), 0.0
            while run + step_mm <= limit:
                nxt = pos + sign * 0.5 * u
                ij = np.round(nxt).astype(int)
                if np.any(ij < 0) or np.any(ij >= region.shape) or not region[tuple(ij)]:
                    break
                pos, run = nxt, run + step_mm
            ends.append((pos, run))
        length = ends[0][1] + ends[1][1]
        if length > best[0] + 1e-9:
            best = (length, ends[1][0], ends[0][0])
    return best[1], best[2]


def correct(truth: Volume, seeds: Volume, result: Volume | np.ndarray, background: int | None = None,
            width: float = 2.0, max_length_mm: float = 40.0) -> Volume:
    """One correction round: the seeds plus ONE stroke where ``result`` is most wrong.

    The error is ``result != truth`` (class values; 0 is background in both). Its pieces are
    the 26-connected components of the error voxels that should be one value (a miss of a
    tumor class, a false positive that should be background, or a wrong class). In the
    largest piece, on the orthogonal slice through its centroid where its cross-section is
    largest, a straight stroke ``width`` voxels wide is drawn through the deepest point of
    the cross-section eroded by one voxel, along the direction where it runs longest inside
    it (at most ``max_length_mm``), clipped to the piece. It is labelled with the truth there:
    the tumor class for a miss, ``background`` (default :func:`seed_background_value`) for a
    false positive.

    Returns:
        The new seed map (the input is not modified); ``metadata["correction"]`` describes the
        stroke (``None`` when the result has no error).
    """
    from scipy import ndimage

    t = _check_truth(truth)
    s = np.asarray(seeds.array)
    r = np.asarray(result.array if isinstance(result, Volume) else result)
    if s.shape != t.shape or r.shape != t.shape:
        raise MedTorchInputError("the truth, seeds and result are not on one grid", "give them on the truth's grid")
    bg = int(background) if background is not None else seed_background_value(truth, seeds)
    g = truth.geometry
    sp = _spacing_zyx(g)
    new = s.astype(np.uint16) if (s.dtype.kind == "u" and bg > np.iinfo(s.dtype).max) else s.copy()
    meta = dict(seeds.metadata)
    meta["background_value"] = bg
    err = r != t
    best: tuple[int, int, np.ndarray] | None = None  # (voxels, wanted value, mask)
    st = np.ones((3, 3, 3), bool)
    for v in np.unique(t[err]):
        lab, n = ndimage.label(err & (t == v), structure=st)
        if n == 0:
            continue
        counts = np.bincount(lab.ravel())[1:]
        i = int(np.argmax(counts))
        if best is None or counts[i] > best[0]:
            best = (int(counts[i]), int(v), lab == i + 1)
    if best is None:
        meta["correction"] = None
        return Volume(new, g, "label", meta)
    voxels, wanted, comp = best
    value = bg if wanted == 0 else wanted
    c = _centroid_zyx(comp)
    order = [axial_axis(g)] + [a for a in range(3) if a != axial_axis(g)]
    idx = np.round(c).astype(int)
    areas = [int(comp[_plane_index(a, idx[a])].sum()) * float(np.prod(np.delete(sp, a))) for a in order]
    if max(areas) == 0:  # the centroid lies outside the piece: its voxel nearest the centroid
        pts = np.argwhere(comp)
        idx = pts[int(np.argmin(np.linalg.norm((pts - c) * sp, axis=1)))]
        areas = [int(comp[_plane_index(a, idx[a])].sum()) * float(np.prod(np.delete(sp, a))) for a in order]
    axis = order[int(np.argmax(areas))]
    pl = _plane_index(axis, idx[axis])
    region = comp[pl]
    plane_sp = np.delete(sp, axis)
    eroded = ndimage.binary_erosion(region, np.ones((3, 3), bool))
    inner = eroded if eroded.any() else region
    depth = ndimage.distance_transform_edt(inner, sampling=plane_sp)
    start = np.array(np.unravel_index(int(np.argmax(depth)), depth.shape))
    p0, p1 = _longest_chord(inner, start, plane_sp, max_length_mm)
    stroke = _disk_line_mask(region.shape, p0, p1, width) & region
    new_pl = new[pl]
    new_pl[stroke] = value
    meta["correction"] = {"kind": "miss" if wanted != 0 else "false positive", "label": int(value),
                          "component_voxels": voxels, "axis_zyx": int(axis), "index": int(idx[axis]),
                          "stroke_voxels": int(stroke.sum()),
                          "from_zyx": [float(v) for v in np.insert(p0, axis, idx[axis])],
                          "to_zyx": [float(v) for v in np.insert(p1, axis, idx[axis])]}
    meta["corrections"] = int(meta.get("corrections", 0)) + 1
    return Volume(new, g, "label", meta)
