"""Seeded multi-class segmentation: geodesic competition (default) or localized region competition.

The user paints seeds, as with Slicer's *Grow from seeds*: a label map where 0 is
unlabelled and each positive value is a class (for a brain tumor, e.g. 1 necrosis/core,
2 oedema, 3 enhancing), the **largest value being the background**. Every voxel of a
region around the seeds gets one class; the output keeps each tumor class's value and
writes the background as 0. Several co-registered channels (e.g. FLAIR and T1c) are used
at once. No training is needed.

Two methods share the seeds, the region and the connectivity rules:

* ``geodesic`` (the default): every class grows from its seeds along the cheapest paths,
  paying for intensity changes and for tissue that looks more like another class than its
  own seeds (:mod:`medtorch.segment.geodesic`). It won on real brain-tumor MRI (the
  development half of ``benchmarks/segment/real_bench.py``, confirmed on its held-out half).
* ``competition``: the localized region competition below (on torch, CPU or GPU).

Region competition
------------------
1. **Region.** The bounding box of the seeds plus a margin (or a box the caller gives);
   everything below works inside it.
2. **Features.** Each channel is robustly normalised (1st-99th percentile in the region)
   and scaled to unit noise (noise estimated from the residual of a small Gaussian, robustly:
   median of squares), so channels count by their signal-to-noise ratio.
3. **Class models.** The seed voxels of each class, in a Gaussian-smoothed copy of the
   features, are clustered (k-means, a few centres per class: the background is many
   tissues); each class is a mixture of isotropic Gaussians. The initial labelling is the
   most likely class of every voxel, with the seeds fixed.
4. **Localized region competition.** Iterated conditional modes on the energy

   ``E = sum_p |f_p - mu_{L_p}(p)|^2 / 2 + w * g_{L_p}(p) - alpha * #(26-neighbours of p with label L_p)``

   where ``mu_k(p)`` is the mean of the (unsmoothed, unit-noise) features of the voxels
   currently labelled ``k`` in a window of radius ``r`` around ``p`` and ``g_k(p)`` half the
   squared distance of the smoothed features to the nearest centre of class ``k``'s seed
   model (a global anchor: without it a class with graded intensities, such as oedema
   fading at its edge, creeps into its neighbours by adapting its local mean). Every voxel takes
   the class whose *local* statistics fit it best, so a boundary settles half-way between
   the intensities on its two sides wherever it is, whatever the bias field or the
   neighbouring tissue: region competition (Zhu and Yuille 1996) with localized region
   statistics (Lankton and Tannenbaum 2008) and a Potts smoothness term. A class can only
   take a voxel where it already has voxels within ``r`` (regions grow from what is
   connected to them). Local sums are kept on a grid
   coarser by two, box-filtered once with cumulative sums and then updated from the voxels
   that move; only voxels on or next to a label boundary are visited.
5. **Seed connectivity.** A piece of a tumor class farther than ``connect_mm`` from the
   pieces holding that class's seeds becomes background; background holes inside the
   tumor without background seeds are filled (:func:`_seed_connected`).

Incremental re-runs (:class:`SeededSegmenter`): features are computed once per region;
after a seed edit the class models are re-estimated, the previous labelling is kept except
near the changed seeds (re-initialised from the new class models), and the competition
resumes from there, which takes a few iterations instead of a full run.

All steps report progress and honour cancel between iterations.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medtorch.errors import MedTorchInputError
from medtorch.progress import CancelToken, ProgressCallback, SubProgress, report
from medtorch.segment.seeded_verdict import region_verdict
from medtorch.verdict import Verdict
from medtorch.volume import Geometry, Volume, check_volume

__all__ = [
    "SeededOptions",
    "SeededResult",
    "SeededSegmenter",
    "seeded_segment",
    "check_seeds",
    "align_channels",
    "box_sum",
    "MAX_CLASSES",
]

#: Most distinct seed values accepted (more means an image was given as the seed map).
MAX_CLASSES = 32


@dataclass(frozen=True)
class SeededOptions:
    """Settings of :func:`seeded_segment` (defaults work for 1 mm brain MRI).

    Attributes:
        method: ``geodesic`` (geodesic competition of the seeds' class models, the default) or
            ``competition`` (localized region competition); see the module docstring.
        margin_mm: least margin around the seeds' bounding box (mm) that is segmented too.
        margin_fraction: the margin is at least this fraction of the seeds' extent on each
            axis (0.2, as Slicer's *Grow from seeds* grows its region when no mask is used).
        region_aspect: every axis of the region spans at least this fraction of the seeds'
            largest extent (mm), so that strokes on one slice still get a region about as deep
            as it is wide (0 turns this off). 1.0 lifted the one-slice protocol's Dice on the
            real-data benchmark's development half from 0.39 to 0.91, leaving 3-slice strokes
            unchanged.
        smoothing_mm: Gaussian standard deviation (mm) of the features the class models
            and the initial labelling use (noise suppression).
        radius_mm: half-size (mm) of the window of the local region statistics.
        smoothness: weight ``alpha`` of the Potts term (per 26-neighbour, in units of
            noise variance); higher gives smoother, rounder regions.
        iterations: most competition iterations (it stops earlier when nothing changes).
        components: most Gaussian components per class model.
        outlier_p: a voxel whose features are this improbable under every tumor class
            model starts as background (0 turns the test off).
        keep_seed_connected: a piece of a tumor class farther than ``connect_mm`` from every
            piece holding a seed of that class becomes background; background holes inside
            the tumor without background seeds are filled (see :func:`_seed_connected`).
        connect_mm: gap (mm) up to which pieces of one class count as connected.
        plausible_gap: in the competition a class may take a voxel only where its seed
            model's log-likelihood is within this of the best class's (``inf``: anywhere);
            so a class cannot spread into tissue its seeds never looked like. In units of
            squared intensity range (1st-99th percentile), so it means the same contrast at
            any noise level. Off by default: the global term below keeps classes in place.
        global_weight: weight of the global term of the competition: half the squared
            distance (noise units, smoothed features) to the nearest centre of each class's
            seed model. It anchors every class to what its seeds looked like, so that a
            class with graded intensities (oedema fading at its edge) cannot creep into its
            neighbours by adapting its local mean; 0 gives pure local competition. 0.5 (the
            default) gave the best whole-tumor Dice on the benchmark's phantoms
            (``benchmarks/segment/seeded_bench.py``; 1.0 undersegments faint oedema edges).
        context_mm: geodesic: Gaussian sigma (mm) of the first channel's context feature.
        bandwidth: geodesic: kernel width of the class densities (units of the seeds' contrast).
        evidence_weight: geodesic: cost per mm of a voxel's evidence (nats) against a class.
        grid_mm: geodesic: spacing (mm) of the grid the path costs are computed on, for a region of
            more than ``full_resolution_voxels`` voxels.
        full_resolution_voxels: geodesic: a region of at most this many voxels is computed on its
            own voxels. The coarse grid only bounds the cost; on it a lesion of a few mm is a few
            cells. 400 000: about the cells of the largest real case's region at 2 mm (371 000,
            a 128 x 180 x 129 mm region), so no region costs more than that one; every real
            case's region from 3-slice strokes is larger (470 000 voxels and up) and keeps the
            2 mm grid (the same Dice on all 19 cases). On 16 development phantoms
            (``phantom_family(16, seed=7)``, not the benchmark's seed 14) it lifted the mean
            whole-tumor Dice from 0.763 to 0.802 (10th percentile 0.628 to 0.685; a pair of 6-7 mm
            lesions from 0.363 to 0.715). On the benchmark's 40 held-out phantoms (seed 14) the gain
            was smaller and mixed: mean 0.754 to 0.758, median 0.781 to 0.796, worst 0.403 to 0.422,
            but 10th percentile 0.567 to 0.536 (22 phantoms better, 13 worse, the worst losses on
            small oedematous lesions, where the full-resolution path costs see more noise).
        background_hull: geodesic: when the background strokes surround the tumor (their convex
            hull is solid and holds every tumor seed, as a ring drawn on several slices does),
            nothing farther than ``hull_margin`` beyond that hull is tumor, and no tumor class
            passes there: a far region that merely looks like tumor is not taken. On a
            development set of 12 varied phantoms (``phantom_family`` with another seed than the
            benchmark's) it lifted the mean whole-tumor Dice from 0.750 to 0.821 (runaways to
            tumor-like tissue beyond the ring stopped), with the real-data development cases
            unchanged (0.857, 3-slice and missing-side strokes).
        hull_margin: how far beyond the background strokes' hull a tumor may still reach, as a
            fraction of the hull's radius (a tumor bulges between the slices its ring was drawn
            on). 0.3: the largest value tried (0, 0.15, 0.3) that kept the real development
            cases' mean within 0.001 of the run without the hull; 0.15 cut their largest tumor.
        growcut_cavity: after the competition, FastGrowCut (Slicer's *Grow from seeds* filter,
            :mod:`medtorch.segment.growcut`; needs ``pip install 'medtorch[growcut]'``) runs on the
            first channel with the same seeds, and what it gives the tumor inside the convex hull
            of this result, thicker than ``growcut_cavity_mm``, joins the tumor (its nearest
            class). GrowCut grows by steps, so a dark resection cavity or necrosis that the tumor's
            rim encloses goes to the tumor even though it looks like the background; the hull keeps
            it from adding anything outside the lesion, and the opening keeps the two methods'
            boundary disagreement (a thin shell) out. On the real-data benchmark's development
            cases (5 cases, all five seed protocols) it lifted the mean whole-tumor Dice from 0.840
            to 0.856 and the case with a dark cavity from 0.644 to 0.789 (3-slice strokes), no
            other case losing more than 0.005. On the held-out cases (14, 3-slice strokes, checked
            once after the choice) it changed nothing that matters: mean 0.880 -> 0.881, worst
            0.758 -> 0.757, per case -0.006 to +0.008. It costs one FastGrowCut run per call (a
            held-out median of 4.2 s against 1.4 s, on a loaded machine) and ITK's wheels, so it
            is off by default.
        growcut_cavity_mm: radius (mm) of the opening: pieces of the FastGrowCut addition thinner
            than about twice this are left out. 2 mm (the grid of the path costs): 1 mm let the
            boundary shell through on one development case (-0.009), 3 mm kept less of the cavity.
        device: ``auto``, ``cpu``, ``cuda``, ``mps`` (see :func:`medtorch.device.select_device`).
        seed: random seed of the k-means initialisation (recorded with the result).

    The geodesic settings' defaults were chosen on the development half of the real-data
    benchmark (``benchmarks/segment/real_bench.py``); ``smoothing_mm`` serves both methods.
    """

    method: Literal["geodesic", "competition"] = "geodesic"
    margin_mm: float = 5.0
    margin_fraction: float = 0.2
    region_aspect: float = 1.0
    smoothing_mm: float = 1.0
    radius_mm: float = 2.0
    smoothness: float = 0.3
    iterations: int = 16
    components: int = 6
    keep_seed_connected: bool = True
    connect_mm: float = 2.0
    plausible_gap: float = float("inf")
    global_weight: float = 0.5
    outlier_p: float = 0.0
    context_mm: float = 2.0
    bandwidth: float = 0.12
    evidence_weight: float = 0.1
    grid_mm: float = 2.0
    full_resolution_voxels: int = 400_000
    background_hull: bool = True
    hull_margin: float = 0.3
    growcut_cavity: bool = False
    growcut_cavity_mm: float = 2.0
    device: str | None = None
    seed: int = 0

    def validated(self) -> "SeededOptions":
        checks = [
            (self.method in ("geodesic", "competition"), "method must be 'geodesic' or 'competition'"),
            (self.margin_mm >= 0, "margin_mm must be >= 0 mm"),
            (0.0 <= self.margin_fraction <= 1.0, "margin_fraction must lie in [0, 1]"),
            (0.0 <= self.region_aspect <= 2.0, "region_aspect must lie in [0, 2]"),
            (self.context_mm > 0, "context_mm must be > 0 mm"),
            (self.bandwidth > 0, "bandwidth must be > 0"),
            (self.evidence_weight >= 0, "evidence_weight must be >= 0"),
            (self.grid_mm > 0, "grid_mm must be > 0 mm"),
            (self.full_resolution_voxels >= 0, "full_resolution_voxels must be >= 0"),
            (self.hull_margin >= 0, "hull_margin must be >= 0"),
            (self.growcut_cavity_mm >= 0, "growcut_cavity_mm must be >= 0 mm"),
            (self.smoothing_mm >= 0, "smoothing_mm must be >= 0 mm"),
            (self.radius_mm > 0, "radius_mm must be > 0 mm"),
            (self.smoothness >= 0, "smoothness must be >= 0"),
            (self.iterations >= 0, "iterations must be >= 0"),
            (self.components >= 1, "components must be >= 1"),
            (0.0 <= self.outlier_p < 1.0, "outlier_p must lie in [0, 1)"),
            (self.connect_mm >= 0, "connect_mm must be >= 0 mm"),
            (self.plausible_gap > 0, "plausible_gap must be > 0"),
            (self.global_weight >= 0, "global_weight must be >= 0"),
        ]
        for ok, what in checks:
            if not ok:
                raise MedTorchInputError(f"invalid seeded-segmentation setting: {what}", "fix the setting")
        return self


@dataclass
class SeededResult:
    """What :func:`seeded_segment` returns.

    Attributes:
        label: label map on the first channel's grid: the tumor classes keep their seed
            values, background and everything outside the region are 0.
        classes: the seed values, background last.
        background: the background's seed value.
        region: ``(lo, hi)`` voxel bounds ``[z, y, x]`` of the segmented region (hi exclusive).
        voxel_counts: voxels per output class value (background excluded).
        volumes_ml: the same in millilitres.
        iterations: competition iterations run; ``changed``: voxels changed by the last one.
        seconds: wall time per step.
        incremental: whether the run reused a previous run's features (and, for the
            competition, its labelling as the start).
        options: the settings used (the k-means seed among them).
        verdict: whether the result stayed with the seeds (``pass``/``warn``/``fail`` with the
            checks that decided it; :func:`medtorch.segment.seeded_verdict.seeded_verdict`).
    """

    label: Volume
    classes: list[int]
    background: int
    region: tuple[tuple[int, int, int], tuple[int, int, int]]
    voxel_counts: dict[int, int]
    volumes_ml: dict[int, float]
    iterations: int
    changed: int
    seconds: dict[str, float]
    incremental: bool
    options: dict[str, Any] = field(default_factory=dict)
    verdict: Verdict | None = None


# -- input checks ------------------------------------------------------------------------------------


def check_seeds(seeds: Volume, box_background: bool = False) -> tuple[list[int], int]:
    """The classes of a seed map (sorted, background last) and the background value.

    With ``box_background`` (a region box is given) seeds of one class are accepted: that
    class is the tumor, and the background (value + 1) is the box's border.

    Raises:
        MedTorchInputError: an empty seed map, seeds of one class only (without a box),
            negative or fractional values, or so many values that it looks like an image.
    """
    arr = np.asarray(seeds.array)
    if arr.ndim != 3 or seeds.kind == "vector":
        raise MedTorchInputError("the seed map must be a 3D label map", "give one label value per voxel")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise MedTorchInputError("the seed map holds fractional or non-finite values",
                                     "give a label map of whole numbers: 0 unlabelled, 1... classes")
    elif arr.dtype.kind not in "iub":
        raise MedTorchInputError(f"the seed map has voxels of type {arr.dtype}", "give an integer label map")
    if arr.size and arr.min() < 0:
        raise MedTorchInputError("the seed map holds negative values",
                                 "use 0 for unlabelled voxels and 1, 2, ... for the classes")
    values = np.unique(arr[arr > 0]) if arr.size else np.array([])
    if values.size == 0:
        raise MedTorchInputError("the seed map is empty (no voxel is labelled)",
                                 "paint seeds in every tumor class and in the background (the last class) "
                                 "around the tumor")
    if values.size == 1 and box_background:
        return [int(values[0]), int(values[0]) + 1], int(values[0]) + 1
    if values.size == 1:
        raise MedTorchInputError(f"the seeds are of one class only (value {int(values[0])})",
                                 "paint seeds of at least two classes: the tumor class(es) and the background "
                                 "(the last, largest value) around the tumor, or give a box around the tumor")
    if values.size > MAX_CLASSES:
        raise MedTorchInputError(f"the seed map has {values.size} different values, more than {MAX_CLASSES}",
                                 "give a seed label map (0 unlabelled, 1... classes), not an image")
    classes = [int(v) for v in values]
    return classes, classes[-1]


def align_channels(channels: Sequence[Volume], progress: ProgressCallback | None = None,
                   cancel: CancelToken | None = None) -> list[Volume]:
    """The channels on the first channel's grid: others are resampled (linear) onto it.

    A channel on another grid is accepted when it covers at least half of the first one
    (otherwise it is refused: the volumes are probably not of the same study).
    """
    from medtorch.resample import resample

    if len(channels) == 0:
        raise MedTorchInputError("no input volume was given", "give at least one volume (e.g. FLAIR, T1c)")
    first = channels[0]
    out = [check_volume(first, "input volume 1")]
    for n, vol in enumerate(channels[1:], start=2):
        check_volume(vol, f"input volume {n}")
        if vol.geometry.isclose(first.geometry, atol=1e-4):
            out.append(vol)
            continue
        report(progress, cancel, 0.0, f"resampling input volume {n} onto the first one's grid")
        lo, hi = vol.geometry.bounds()
        pts = first.geometry.corners()
        # coverage of the first grid's box by the other volume's box (LPS axis-aligned)
        flo, fhi = pts.min(0), pts.max(0)
        inter = np.clip(np.minimum(fhi, hi) - np.maximum(flo, lo), 0.0, None)
        cover = float(np.prod(inter) / max(np.prod(np.maximum(fhi - flo, 1e-6)), 1e-12))
        if cover < 0.5:
            raise MedTorchInputError(
                f"input volume {n} covers only {cover:.0%} of input volume 1 (different geometry and position)",
                "give co-registered volumes of one study (register them first, e.g. with FusionRegistration)")
        res = resample(vol, first.geometry, None, interpolation="linear", default_value=0.0, cancel=cancel)
        res.metadata["resampled_onto"] = "input volume 1"
        # never silently: say what was done (shown by the command line and Slicer's log)
        logging.getLogger("medtorch").warning(
            "input volume %d is on another grid (size %s, spacing %s mm): resampled (linear) onto input volume 1's "
            "grid (size %s, spacing %s mm), covering %.0f%% of it", n, vol.size,
            tuple(round(float(v), 3) for v in vol.spacing), first.size,
            tuple(round(float(v), 3) for v in first.spacing), 100.0 * min(cover, 1.0))
        # interpolation smooths the noise: keep the native grid's noise level for the weighting
        res.metadata["noise_sd"] = native_noise_sd(vol)
        out.append(res)
    return out


def native_noise_sd(volume: Volume, max_side: int = 96) -> float:
    """Noise standard deviation of a volume on its own grid (a central block of at most
    ``max_side`` voxels a side), in its intensity units; see :func:`_robust_noise_sd`."""
    arr = np.asarray(volume.array)
    sl = tuple(slice(max(0, (n - max_side) // 2), max(0, (n - max_side) // 2) + min(n, max_side)) for n in arr.shape)
    x = torch.from_numpy(np.ascontiguousarray(arr[sl], dtype=np.float32))[None]
    unit = [1.0, 1.0, 1.0]
    return float(_robust_noise_sd(x, _gaussian(x, unit), unit)[0])


def _seeds_on_grid(seeds: Volume, geometry: Geometry, cancel: CancelToken | None) -> np.ndarray:
    if seeds.geometry.isclose(geometry, atol=1e-4):
        return np.asarray(seeds.array)
    from medtorch.resample import resample

    res = resample(Volume(np.asarray(seeds.array).astype(np.int32), seeds.geometry, "label"), geometry, None,
                   interpolation="nearest", default_value=0, cancel=cancel)
    if not np.any(res.array > 0):
        raise MedTorchInputError("the seeds lie outside the input volume",
                                 "paint the seeds on the volumes being segmented")
    return res.array


# -- tensor helpers ------------------------------------------------------------------------------------


def box_sum(x: torch.Tensor, radius: Sequence[int]) -> torch.Tensor:
    """Sum over a ``(2r+1)`` window per axis of the last three axes of ``x`` (``[..., z, y, x]``);
    the window is clipped at the borders. Cumulative sums: the cost does not depend on ``r``."""
    out = x
    for axis, r in zip((-3, -2, -1), radius):
        r = int(r)
        if r <= 0:
            continue
        n = out.shape[axis]
        pad = [0] * (2 * (-axis))
        pad[2 * (-axis - 1)] = r + 1  # one extra zero in front: c[i] = sum of padded x[:i]
        pad[2 * (-axis - 1) + 1] = r
        c = torch.cumsum(F.pad(out, pad), dim=axis)
        out = c.narrow(axis, 2 * r + 1, n) - c.narrow(axis, 0, n)
    return out


def _gaussian(x: torch.Tensor, sigma_vox: Sequence[float]) -> torch.Tensor:
    """Separable Gaussian of ``[C, z, y, x]`` (replicated borders, truncated at 3 sigma);
    sigma per axis (z, y, x) in voxels. On the CPU SciPy's filter is used (several times
    faster there than a convolution in torch); elsewhere torch's ``conv3d``."""
    if x.device.type == "cpu":
        from scipy import ndimage

        arr = x.detach().numpy()
        sig = [float(s) for s in sigma_vox]
        out = np.stack([ndimage.gaussian_filter(a, sig, truncate=3.0, mode="nearest") for a in arr])
        return torch.from_numpy(out)
    out = x[:, None]
    for dim, s in zip(range(3), sigma_vox):
        if s <= 0:
            continue
        r = int(3.0 * s + 0.5)
        if r < 1:
            continue
        t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
        k = torch.exp(-(t * t) / (2.0 * s * s))
        k = k / k.sum()
        shape = [1, 1, 1, 1, 1]
        shape[2 + dim] = -1
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - dim)] = r
        pad[2 * (2 - dim) + 1] = r
        out = F.conv3d(F.pad(out, pad, mode="replicate"), k.view(shape))
    return out[:, 0]


def _quantiles(sample: torch.Tensor, qs: Sequence[float]) -> list[float]:
    """Quantiles of a 1D sample by selection (``kthvalue``: no full sort), nearest rank."""
    n = sample.numel()
    return [float(torch.kthvalue(sample, min(max(int(round(q * (n - 1))) + 1, 1), n)).values) for q in qs]


def _argmin0(scores: torch.Tensor) -> torch.Tensor:
    """``scores.argmin(0)`` for a few classes (see :func:`_argmax0`)."""
    best = scores[0].clone()
    idx = torch.zeros(scores.shape[1:], dtype=torch.long, device=scores.device)
    for k in range(1, scores.shape[0]):
        better = scores[k] < best
        best = torch.where(better, scores[k], best)
        idx.masked_fill_(better, k)
    return idx


def _argmax0(scores: torch.Tensor) -> torch.Tensor:
    """``scores.argmax(0)`` for a few classes (much faster than a strided reduction on the CPU);
    ties go to the lower index, as ``argmax``."""
    best = scores[0].clone()
    idx = torch.zeros(scores.shape[1:], dtype=torch.long, device=scores.device)
    for k in range(1, scores.shape[0]):
        better = scores[k] > best
        best = torch.where(better, scores[k], best)
        idx.masked_fill_(better, k)
    return idx


def _smoothed_noise_variance(sigma_vox: Sequence[float]) -> float:
    """Variance left of unit white noise after :func:`_gaussian` with ``sigma_vox``."""
    var = 1.0
    for s in sigma_vox:
        if s <= 0:
            continue
        r = max(int(3.0 * s + 0.5), 1)
        t = np.arange(-r, r + 1, dtype=np.float64)
        k = np.exp(-(t * t) / (2.0 * s * s))
        k /= k.sum()
        var *= float((k * k).sum())
    return var


def _sq_dist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between the rows of ``x`` [N, C] and ``c`` [M, C]."""
    return ((x * x).sum(1, keepdim=True) - 2.0 * x @ c.T + (c * c).sum(1)[None]).clamp_min_(0.0)


def _kmeans(x: torch.Tensor, m: int, generator: torch.Generator, iterations: int = 15) -> torch.Tensor:
    """``m`` centres of the rows of ``x`` (k-means++ seeding, Lloyd iterations)."""
    n = x.shape[0]
    m = max(1, min(m, n))
    first = int(torch.randint(n, (1,), generator=generator).item())
    centres = [x[first]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, m):
        total = float(d2.sum())
        if total <= 0:
            break
        pick = int(torch.multinomial((d2 / total).cpu(), 1, generator=generator).item())
        centres.append(x[pick])
        d2 = torch.minimum(d2, ((x - x[pick]) ** 2).sum(1))
    c = torch.stack(centres)
    for _ in range(iterations):
        assign = _sq_dist(x, c).argmin(1)
        new = torch.zeros_like(c).index_add_(0, assign, x)
        count = torch.bincount(assign, minlength=c.shape[0]).to(x.dtype)
        keep = count > 0
        new[keep] /= count[keep, None]
        new[~keep] = c[~keep]
        if torch.allclose(new, c):
            c = new
            break
        c = new
    return c


@dataclass
class _ClassModel:
    centres: list[torch.Tensor]  # per class [m_k, C]
    variances: torch.Tensor  # per class, isotropic


def _fit_class_models(features: torch.Tensor, seed_index: torch.Tensor, n_classes: int, components: int,
                      generator: torch.Generator, floor: float, max_samples: int = 20_000) -> _ClassModel:
    """Gaussian mixtures (isotropic, one variance per class) of each class's seed features."""
    c = features.shape[0]
    flat = features.reshape(c, -1)
    centres, variances = [], []
    for k in range(n_classes):
        idx = torch.nonzero(seed_index.reshape(-1) == k).flatten()
        if idx.numel() > max_samples:
            idx = idx[torch.randperm(idx.numel(), generator=generator)[:max_samples].to(idx.device)]
        x = flat[:, idx].T.contiguous()
        m = min(components, max(1, x.shape[0] // 8))
        cen = _kmeans(x, m, generator)
        var = float(_sq_dist(x, cen).min(1).values.mean()) / c
        centres.append(cen)
        variances.append(max(var, floor))
    return _ClassModel(centres, torch.tensor(variances, dtype=features.dtype, device=features.device))


def _class_constants(model: _ClassModel, channels: int) -> torch.Tensor:
    """Per class: ``-log(#components) - C/2 log(variance)``, the constant of its log-likelihood."""
    counts = torch.tensor([float(cen.shape[0]) for cen in model.centres], dtype=model.variances.dtype,
                          device=model.variances.device)
    return -torch.log(counts) - 0.5 * channels * torch.log(model.variances)


def _class_scores(features: torch.Tensor, model: _ClassModel, outlier_classes: Sequence[int] = (),
                  outlier_d2: float = float("inf"), chunk: int = 1 << 19) -> torch.Tensor:
    """``[K, z, y, x]`` log-likelihood of every voxel under every class model, each mixture
    taken at its nearest component (the hard-assignment approximation of the log-sum).

    For the classes in ``outlier_classes`` (the tumor classes), a voxel farther than
    ``outlier_d2`` (squared distance in units of the class variance) from every centre of
    the class gets ``-inf``: a voxel that fits no tumor class is left to the background,
    the class of everything else.
    """
    c = features.shape[0]
    flat = features.reshape(c, -1).T  # [N, C]
    n = flat.shape[0]
    allc = torch.cat(model.centres)  # [M, C]
    const = _class_constants(model, c)
    out = torch.empty((len(model.centres), n), dtype=features.dtype, device=features.device)
    bounds = [0] + list(np.cumsum([cen.shape[0] for cen in model.centres]))
    xx = (flat * flat).sum(1)
    cc = (allc * allc).sum(1)
    for s in range(0, n, chunk):
        part = torch.addmm(cc[None, :], flat[s:s + chunk], allc.T, alpha=-2.0)  # |c|^2 - 2 x.c, [n, M]
        for k in range(len(model.centres)):
            dk = (part[:, bounds[k]:bounds[k + 1]].min(1).values + xx[s:s + chunk]).clamp_min_(0.0) / model.variances[k]
            ll = -0.5 * dk + const[k]
            if k in outlier_classes:
                ll = ll.masked_fill(dk > outlier_d2, float("-inf"))
            out[k, s:s + chunk] = ll
    return out.reshape((len(model.centres),) + tuple(features.shape[1:]))


def _chi2_quantile(p: float, dof: int) -> float:
    """The squared distance exceeded with probability ``p`` by a ``dof``-dimensional unit
    Gaussian (``inf`` for ``p = 0``)."""
    if p <= 0:
        return float("inf")
    from scipy.stats import chi2

    return float(chi2.isf(p, dof))


def _residual_noise_fraction(sigma_vox: Sequence[float]) -> float:
    """Share of white noise's variance left in ``x - gaussian(x)``: ``1 - 2 g(0) + sum g^2``."""
    g0, g2 = 1.0, 1.0
    for s in sigma_vox:
        if s <= 0:
            return 0.0
        r = max(int(3.0 * s + 0.5), 1)
        t = np.arange(-r, r + 1, dtype=np.float64)
        k = np.exp(-(t * t) / (2.0 * s * s))
        k /= k.sum()
        g0 *= float(k[r])
        g2 *= float((k * k).sum())
    return 1.0 - 2.0 * g0 + g2


def _robust_noise_sd(x: torch.Tensor, smoothed: torch.Tensor, sigma_vox: Sequence[float],
                     max_samples: int = 200_000) -> torch.Tensor:
    """Per-channel noise standard deviation from the residual of a small Gaussian.

    The median of the squared residual, divided by the median of chi-square(1) (0.4549),
    estimates its variance while ignoring edges; the residual holds a known share of white
    noise's variance (:func:`_residual_noise_fraction`), which is divided out.
    """
    r = (x - smoothed).reshape(x.shape[0], -1)
    step = max(1, r.shape[1] // max_samples)
    r = r[:, ::step]
    med = torch.tensor([_quantiles(row * row, (0.5,))[0] for row in r], dtype=x.dtype, device=x.device)
    var = med / 0.4549 / _residual_noise_fraction(sigma_vox)
    return torch.sqrt(torch.clamp(var, min=1e-12))


# -- the competition -----------------------------------------------------------------------------------


class _Competition:
    """Localized region competition on a region grid, on an active set (see the module docstring).

    The per-class window statistics (voxel counts and feature sums over a window of
    ``2 r + 1`` coarse cells) live on a grid coarser by ``factor``; they are box-filtered
    once, then updated from the voxels that move only. Each iteration interpolates them
    (trilinear; counts and sums separately, then divided) at the *active* voxels and moves
    each active voxel to the class of lowest energy. The active voxels are those on a label
    boundary at the start (and every ``refresh`` iterations), then the voxels that moved and
    their 26 neighbours: away from the boundaries a voxel would have to beat 26 like
    neighbours to move.
    """

    def __init__(self, x: torch.Tensor, n_classes: int, radius_vox: Sequence[int], alpha: float,
                 factor: int = 2, allowed: torch.Tensor | None = None,
                 global_term: torch.Tensor | None = None) -> None:
        self.x = x  # [C, z, y, x]
        self.global_term = None if global_term is None else global_term.reshape(n_classes, -1)  # [K, N]
        self.allowed = None if allowed is None else allowed.reshape(n_classes, -1)  # [K, N] bool
        self.c = x.shape[0]
        self.shape = tuple(int(v) for v in x.shape[1:])
        self.n = int(np.prod(self.shape))
        self.k = n_classes
        self.alpha = float(alpha)
        self.factor = int(factor)
        dev = x.device
        self.device = dev
        self.xf = x.reshape(self.c, -1)  # [C, N] view
        self.x2 = (self.xf * self.xf).sum(0)
        # padded fine grid (one voxel of sentinel label k all round) for neighbour look-ups
        self.pshape = tuple(n + 2 for n in self.shape)
        py, px = self.pshape[1], self.pshape[2]
        offs = [(dz * py + dy) * px + dx for dz in (-1, 0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                if (dz, dy, dx) != (0, 0, 0)]
        self.offsets = torch.tensor(offs, device=dev, dtype=torch.long)
        self.padded = torch.full(self.pshape, self.k, dtype=torch.uint8, device=dev)
        self.inner = self.padded[1:-1, 1:-1, 1:-1]
        # coarse window statistics on a grid padded by the window radius all round:
        # [C+1, K, wz, wy, wx], row 0 counts, rows 1.. feature sums
        self.cshape = tuple((n + self.factor - 1) // self.factor for n in self.shape)
        self.rc = tuple(max(1, int(round(r / self.factor))) for r in radius_vox)
        self.wshape = tuple(n + 2 * r for n, r in zip(self.cshape, self.rc))
        self.nw = int(np.prod(self.wshape))
        wy, wx = self.wshape[1], self.wshape[2]
        woffs = [(dz * wy + dy) * wx + dx for dz in range(-self.rc[0], self.rc[0] + 1)
                 for dy in range(-self.rc[1], self.rc[1] + 1) for dx in range(-self.rc[2], self.rc[2] + 1)]
        self.woffsets = torch.tensor(woffs, device=dev, dtype=torch.long)
        self.window = torch.zeros((self.c + 1, self.k * self.nw), device=dev, dtype=x.dtype)
        # no flip-flop: a voxel that moved may not move straight back at the next iteration
        self.tabu = torch.full((self.n,), self.k, dtype=torch.uint8, device=dev)
        self.tabu_it = torch.full((self.n,), -2, dtype=torch.int32, device=dev)
        self.iteration = 0
        # grid_sample coordinates of every fine voxel in the padded coarse grid, per axis
        self.axis_coords = []
        for n, r, nw in zip(self.shape, self.rc, self.wshape):
            u = (torch.arange(n, device=dev, dtype=x.dtype) + 0.5) / self.factor - 0.5 + r
            self.axis_coords.append(2.0 * u / (nw - 1) - 1.0)

    # -- index helpers ---------------------------------------------------------------------------------
    def _zyx(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        plane = self.shape[1] * self.shape[2]
        z = torch.div(idx, plane, rounding_mode="floor")
        rem = idx - z * plane
        y = torch.div(rem, self.shape[2], rounding_mode="floor")
        return z, y, rem - y * self.shape[2]

    def _window_cell(self, z: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        f = self.factor
        return ((z // f + self.rc[0]) * self.wshape[1] + (y // f + self.rc[1])) * self.wshape[2] + (x // f + self.rc[2])

    def _padded_index(self, z: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return ((z + 1) * self.pshape[1] + (y + 1)) * self.pshape[2] + (x + 1)

    # -- statistics ----------------------------------------------------------------------------------
    def reset(self, labels: torch.Tensor) -> None:
        """Start from ``labels`` (flat class indices): box-filtered coarse statistics."""
        k, c = self.k, self.c
        z, y, x = self._zyx(torch.arange(self.n, device=self.device))
        f = self.factor
        cell = ((z // f) * self.cshape[1] + y // f) * self.cshape[2] + x // f
        nc = int(np.prod(self.cshape))
        stats = torch.zeros((c + 1, k * nc), device=self.device, dtype=self.x.dtype)
        values = torch.cat([torch.ones((1, self.n), device=self.device, dtype=self.x.dtype), self.xf], dim=0)
        stats.index_add_(1, labels * nc + cell, values)
        win = box_sum(stats.view(c + 1, k, *self.cshape), self.rc)
        w = self.window.view(c + 1, k, *self.wshape)
        w.zero_()
        w[:, :, self.rc[0]:self.rc[0] + self.cshape[0], self.rc[1]:self.rc[1] + self.cshape[1],
          self.rc[2]:self.rc[2] + self.cshape[2]] = win
        self.inner.copy_(labels.view(self.shape).to(torch.uint8))

    def _move(self, idx: torch.Tensor, cells: torch.Tensor, old: torch.Tensor, new: torch.Tensor) -> None:
        """Voxels ``idx`` (in coarse cells ``cells``) go from class ``old`` to ``new``."""
        targets = torch.cat([old * self.nw + cells, new * self.nw + cells])
        targets = (targets[:, None] + self.woffsets[None, :]).reshape(-1)
        xs = self.xf[:, idx]
        ones = torch.ones((1, idx.numel()), device=self.device, dtype=self.x.dtype)
        values = torch.cat([torch.cat([-ones, -xs], 0), torch.cat([ones, xs], 0)], dim=1)  # [C+1, 2m]
        values = values[:, :, None].expand(-1, -1, self.woffsets.numel()).reshape(self.c + 1, -1)
        self.window.index_add_(1, targets, values)

    def boundary(self) -> torch.Tensor:
        """Flat indices of the voxels that have a 6-neighbour of another label."""
        lab = self.inner
        edge = torch.zeros(self.shape, dtype=torch.bool, device=self.device)
        for axis in range(3):
            n = self.shape[axis]
            if n < 2:
                continue
            diff = lab.narrow(axis, 1, n - 1) != lab.narrow(axis, 0, n - 1)
            edge.narrow(axis, 1, n - 1).logical_or_(diff)
            edge.narrow(axis, 0, n - 1).logical_or_(diff)
        return torch.nonzero(edge.reshape(-1)).flatten()

    # -- one iteration ---------------------------------------------------------------------------------
    def step(self, active: torch.Tensor, seeded: torch.Tensor) -> tuple[torch.Tensor, int]:
        """One synchronous ICM update of the ``active`` voxels (flat indices, unique).

        Returns the voxels that moved (flat indices) and the number of voxels examined.
        """
        k, c = self.k, self.c
        self.iteration += 1
        active = active[~seeded[active]]
        if active.numel() == 0:
            return active, 0
        z, y, xq = self._zyx(active)
        grid = torch.stack([self.axis_coords[2][xq], self.axis_coords[1][y], self.axis_coords[0][z]], dim=-1)
        interp = F.grid_sample(self.window.view(1, (c + 1) * k, *self.wshape), grid.view(1, 1, 1, -1, 3),
                               mode="bilinear", padding_mode="border", align_corners=True).view(c + 1, k, -1)
        counts = interp[0]
        mu = interp[1:] / counts.clamp_min(1e-6)[None]  # [C, K, na]
        xa = self.xf[:, active]  # [C, na]
        energy = 0.5 * (self.x2[active][None] - 2.0 * (mu * xa[:, None]).sum(0) + (mu * mu).sum(0))  # [K, na]
        if self.global_term is not None:
            energy += self.global_term[:, active]
        pidx = self._padded_index(z, y, xq)
        flat_lab = self.padded.view(-1)
        if self.alpha > 0:
            nb = flat_lab[pidx[:, None] + self.offsets[None, :]].to(torch.long)  # [na, 26]
            rows = torch.arange(nb.shape[0], device=nb.device)[:, None] * (k + 1)
            same = torch.bincount((rows + nb).view(-1), minlength=nb.shape[0] * (k + 1))
            energy -= self.alpha * same.view(-1, k + 1)[:, :k].T.to(energy.dtype)
        # a class can take a voxel only where it is present nearby
        energy.masked_fill_(counts <= 0.5, float("inf"))
        if self.allowed is not None:  # classes the global models find plausible here
            energy.masked_fill_(~self.allowed[:, active], float("inf"))
        recent = self.tabu_it[active] == self.iteration - 1
        if bool(recent.any()):
            back = self.tabu[active].to(torch.long).clamp_max(k - 1)
            energy[back[recent], torch.nonzero(recent).flatten()] = float("inf")
        old = flat_lab[pidx].to(torch.long)
        best = _argmin0(energy)
        gain = energy.gather(0, old[None])[0] - energy.gather(0, best[None])[0]
        move = (best != old) & (gain > 1e-4)
        if bool(move.any()):
            idx = active[move]
            self._move(idx, self._window_cell(z[move], y[move], xq[move]), old[move], best[move])
            flat_lab[pidx[move]] = best[move].to(torch.uint8)
            self.tabu[idx] = old[move].to(torch.uint8)
            self.tabu_it[idx] = self.iteration
            return idx, int(active.numel())
        return active[:0], int(active.numel())

    def neighbourhood(self, idx: torch.Tensor) -> torch.Tensor:
        """``idx`` and their 26 neighbours inside the region (flat, unique)."""
        if idx.numel() == 0:
            return idx
        pidx = self._padded_index(*self._zyx(idx))
        mark = torch.zeros(self.padded.numel(), dtype=torch.bool, device=self.device)
        mark[pidx] = True
        mark[(pidx[:, None] + self.offsets[None, :]).view(-1)] = True
        mark = mark.view(self.pshape)[1:-1, 1:-1, 1:-1]
        return torch.nonzero(mark.reshape(-1)).flatten()

    def labels(self) -> torch.Tensor:
        return self.inner.to(torch.long).reshape(-1)


def _compete(x: torch.Tensor, labels: torch.Tensor, seed_index: torch.Tensor, n_classes: int,
             radius: Sequence[int], alpha: float, iterations: int, progress: ProgressCallback | None,
             cancel: CancelToken | None, refresh: int = 4, allowed: torch.Tensor | None = None,
             global_term: torch.Tensor | None = None) -> tuple[torch.Tensor, int, int]:
    """Run the localized region competition from ``labels`` (``[z, y, x]`` class indices) on
    features ``x`` (``[C, z, y, x]``, unit noise); seeds (``seed_index >= 0``) stay fixed.

    Returns the labels, the iterations run and the voxels moved by the last one.
    """
    seeded = (seed_index >= 0).reshape(-1)
    flat = torch.where(seeded, seed_index.reshape(-1), labels.reshape(-1))
    comp = _Competition(x, n_classes, radius, alpha, allowed=allowed, global_term=global_term)
    comp.reset(flat)
    moved_n, it = 0, 0
    stop = max(1, flat.numel() // 10_000)  # 0.01 % of the region
    active = comp.boundary()
    last_full = 0
    for it in range(1, iterations + 1):
        report(progress, cancel, (it - 1) / max(iterations, 1), f"region competition, iteration {it}")
        moved, _ = comp.step(active, seeded)
        moved_n = int(moved.numel())
        if moved_n <= stop:
            if last_full == it - 1:
                break
            active = comp.boundary()  # a last look at every boundary before stopping
            last_full = it
            continue
        if it % refresh == 0:
            active = comp.boundary()
            last_full = it
        else:
            active = comp.neighbourhood(moved)
    report(progress, cancel, 1.0, "region competition done")
    return comp.labels().view(labels.shape), it, moved_n


def _seed_connected(labels: np.ndarray, seed_index: np.ndarray, background: int,
                    tolerance: Sequence[int] = (2, 2, 2)) -> np.ndarray:
    """Connectivity to the seeds, class by class.

    * A piece of a tumor class (26-connected) holding no seed of that class becomes
      background -- unless it lies within ``tolerance`` voxels (per axis) of a piece that
      does: a thin enhancing rim is often broken into pieces, and strokes on a few slices
      cannot reach them all. Regions the seeds' class models mistook for a tumor class
      (a ventricle taken for necrosis, say) go back to the background, the class of
      everything else.
    * A piece of background that holds no background seed and does not touch the region's
      border (a hole inside the tumor) goes to the nearest tumor classes.
    """
    from scipy import ndimage

    out = labels.copy()
    full = np.ones((3, 3, 3), bool)
    tol = np.zeros([2 * int(t) + 1 for t in tolerance], bool)
    grid = np.meshgrid(*(np.arange(-int(t), int(t) + 1) / max(int(t), 1) for t in tolerance), indexing="ij")
    tol[sum(g * g for g in grid) <= 1.0 + 1e-9] = True
    for k in range(int(labels.max()) + 1):
        if k == background:
            continue
        mask = labels == k
        if not mask.any():
            continue
        # pieces within the tolerance of each other count as one
        merged, n = ndimage.label(ndimage.binary_dilation(mask, structure=tol) if tol.size > 1 else mask,
                                  structure=full)
        keep = np.zeros(n + 1, bool)
        keep[np.unique(merged[mask & (seed_index == k)])] = True
        keep[0] = True
        out[mask & ~keep[merged]] = background
    bg = out == background
    comp, n = ndimage.label(bg, structure=np.array([[[0, 0, 0], [0, 1, 0], [0, 0, 0]], [[0, 1, 0], [1, 1, 1], [0, 1, 0]],
                                                    [[0, 0, 0], [0, 1, 0], [0, 0, 0]]], bool))
    if n > 1:
        keep = np.zeros(n + 1, bool)
        keep[np.unique(comp[bg & (seed_index >= 0)])] = True
        border = np.concatenate([comp[0].ravel(), comp[-1].ravel(), comp[:, 0].ravel(), comp[:, -1].ravel(),
                                 comp[:, :, 0].ravel(), comp[:, :, -1].ravel()])
        keep[np.unique(border)] = True
        keep[0] = True
        holes = ~keep[comp]
        if holes.any():
            # nearest tumor label, computed in the holes' bounding box (plus one voxel)
            first, last = _bounds(holes)
            lo = np.maximum(first - 1, 0)
            hi = np.minimum(last + 2, np.asarray(holes.shape))
            box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
            sub_holes, sub_out = holes[box], out[box]
            _, idx = ndimage.distance_transform_edt(sub_holes | (sub_out == background), return_indices=True)
            sub_out[sub_holes] = sub_out[tuple(i[sub_holes] for i in idx)]
    return out


def _beyond_planes(x: np.ndarray, equations: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """How far the points ``x`` (``[n, 3]``) lie outside a convex hull given by its facets'
    ``equations`` (qhull's ``[normal, offset]``): the largest signed facet-plane distance, a lower
    bound of the distance, <= 0 inside. In chunks: one product of all the points with all the
    facets made a [points, facets] array of ~0.3 GB on a large tumor's region and took 1.6 s,
    chunked in float32 0.05 s (float32 is ~1e-4 mm off at 200 mm)."""
    n, d = equations[:, :3].T.astype(dtype), equations[:, 3].astype(dtype)
    x = x.astype(dtype)
    out = np.empty(len(x), dtype)
    for i in range(0, len(x), 16384):
        out[i:i + 16384] = (x[i:i + 16384] @ n + d).max(axis=1)
    return out


def _outside_background_hull(seed_index: np.ndarray, n_classes: int, spacing_zyx: Sequence[float],
                             margin: float, step_mm: float = 2.0) -> np.ndarray | None:
    """Voxels beyond the background strokes: outside the convex hull of the background seeds by
    more than ``margin`` times the hull's radius (that of a ball of the hull's volume), when the
    hull is solid (the strokes are not all on one plane) and holds every tumor seed, i.e. the
    user's background strokes surround the tumor. ``None`` otherwise (one-slice strokes,
    scattered background, a box). Evaluated on a grid of about ``step_mm``."""
    from scipy.spatial import ConvexHull, QhullError

    bg = np.argwhere(seed_index == n_classes - 1)
    tumor = np.argwhere((seed_index >= 0) & (seed_index < n_classes - 1))
    if len(bg) < 4 or len(tumor) == 0:
        return None
    sp = np.asarray(spacing_zyx, float)
    pts = bg * sp
    try:  # one background point per step_mm cell is enough for the hull
        hull = ConvexHull(pts[np.unique(np.round(pts / step_mm).astype(np.int64), axis=0, return_index=True)[1]])
    except (QhullError, ValueError):  # flat or too few strokes: no enclosing hull
        return None
    margin_mm = float(margin) * (3.0 * hull.volume / (4.0 * np.pi)) ** (1.0 / 3.0)

    if np.any(_beyond_planes(tumor * sp, hull.equations) > 0):
        return None
    f = [max(1, int(round(step_mm / s))) for s in sp]
    centres = np.stack(np.meshgrid(*(np.arange(0, n, b) + (b - 1) / 2.0 for n, b in zip(seed_index.shape, f)),
                                   indexing="ij"), -1)
    coarse = (_beyond_planes(centres.reshape(-1, 3) * sp, hull.equations, np.float32) > margin_mm).reshape(centres.shape[:3])
    out = np.repeat(np.repeat(np.repeat(coarse, f[0], 0), f[1], 1), f[2], 2)
    out = out[: seed_index.shape[0], : seed_index.shape[1], : seed_index.shape[2]]
    return out if out.any() else None


def _inside_convex_hull(mask: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Which of ``points`` (``[n, 3]`` voxel indices) lie in the convex hull of ``mask``'s voxels
    (all of them when the hull is flat: it cannot be told apart from the mask's bounding box)."""
    from scipy.spatial import ConvexHull, QhullError

    idx = np.argwhere(mask)
    if len(points) == 0 or len(idx) < 4:
        return np.zeros(len(points), bool)
    # the hull's vertices are among the voxels on the mask's surface
    from scipy import ndimage

    surface = np.argwhere(mask & ~ndimage.binary_erosion(mask))
    try:
        hull = ConvexHull(surface.astype(float))
    except (QhullError, ValueError):  # flat: the bounding box
        lo, hi = idx.min(0), idx.max(0)
        return np.all((points >= lo) & (points <= hi), axis=1)
    return _beyond_planes(points, hull.equations) <= 1e-6


def _growcut_cavities(labels: np.ndarray, seed_index: np.ndarray, background: int, image: np.ndarray,
                      spacing_zyx: Sequence[float], radius_mm: float) -> np.ndarray:
    """``labels`` plus what FastGrowCut, on ``image`` with the same seeds, gives the tumor inside
    the convex hull of the tumor of ``labels``, opened by a ball of ``radius_mm`` (see
    ``SeededOptions.growcut_cavity``). Added voxels take the nearest tumor class."""
    from scipy import ndimage

    from medtorch.segment.growcut import fast_growcut

    tumor = labels != background
    if not tumor.any():
        return labels
    # FastGrowCut's classes: every tumor class 1, the background 2
    seeds = np.where(seed_index < 0, 0, np.where(seed_index == background, 2, 1)).astype(np.uint8)
    grown = fast_growcut(image, seeds, spacing_zyx) == 1
    cand = grown & ~tumor & (seed_index != background)
    pts = np.argwhere(cand)
    cand[tuple(pts[~_inside_convex_hull(tumor, pts)].T)] = False
    if radius_mm > 0 and cand.any():
        sp = np.asarray(spacing_zyx, float)
        r = [int(np.floor(radius_mm / s)) for s in sp]
        grid = np.meshgrid(*(np.arange(-n, n + 1) * s / radius_mm for n, s in zip(r, sp)), indexing="ij")
        ball = sum(g * g for g in grid) <= 1.0 + 1e-9
        cand = ndimage.binary_opening(cand, structure=ball)
    if not cand.any():
        return labels
    out = labels.copy()
    _, idx = ndimage.distance_transform_edt(~tumor, return_indices=True)
    out[cand] = labels[tuple(i[cand] for i in idx)]
    return out


@contextlib.contextmanager
def _single_thread(device: torch.device) -> Iterator[None]:
    """One torch thread on the CPU inside the block (see :meth:`SeededSegmenter.segment`)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _bounds(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last index of ``mask``'s true voxels on each axis (``mask`` has one). The same as
    ``argwhere(mask).min(0)`` / ``.max(0)``, from the per-axis projections: no index list of the
    whole volume is built (on a 1 mm head that list cost more than the rest of the region search)."""
    lo, hi = [], []
    for a in range(mask.ndim):
        along = np.flatnonzero(mask.any(axis=tuple(d for d in range(mask.ndim) if d != a)))
        lo.append(along[0])
        hi.append(along[-1])
    return np.asarray(lo), np.asarray(hi)


def _region_from_seeds(seeds: np.ndarray, geometry: Geometry, margin_mm: float,
                       margin_fraction: float = 0.0, region_aspect: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The seeds' bounding box grown on each side by ``margin_mm`` or by ``margin_fraction`` of
    its extent on that axis, whichever is larger, and on every axis to at least
    ``region_aspect`` times the box's largest extent in mm (``[z, y, x]`` voxel bounds, hi
    exclusive)."""
    first, last = _bounds(seeds > 0)
    extent = last - first + 1
    margin = np.maximum(np.ceil(margin_mm / np.asarray(geometry.spacing)[::-1]),
                        np.round(margin_fraction * extent)).astype(int)
    if region_aspect > 0:  # flat seeds (strokes on one slice): the region as deep as it is wide
        sp = np.asarray(geometry.spacing)[::-1]
        ext_mm = extent * sp
        extra = np.ceil(np.maximum(region_aspect * ext_mm.max() - ext_mm, 0.0) / 2.0 / sp).astype(int)
        margin = np.maximum(margin, extra)
    lo = np.maximum(first - margin, 0)
    hi = np.minimum(last + margin + 1, np.asarray(seeds.shape))
    # at least 3 voxels per axis (strokes on one slice only give a flat box)
    for a in range(3):
        while hi[a] - lo[a] < 3 and (lo[a] > 0 or hi[a] < seeds.shape[a]):
            lo[a] = max(lo[a] - 1, 0)
            hi[a] = min(hi[a] + 1, seeds.shape[a])
    return lo, hi


def _region_from_box(box: Any, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Voxel bounds ``(lo, hi)`` (``[z, y, x]``, hi exclusive) of the voxels inside ``box``.

    The box's mask is evaluated only on the index-space bounding box of its corners (plus one
    voxel), not on the whole grid."""
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
    corners = np.asarray(box.center, float) + (signs * np.asarray(box.half_size, float)) @ np.asarray(box.axes, float).T
    ijk = geometry.physical_to_index(corners)
    size = np.asarray(geometry.size)
    lo = np.clip(np.floor(ijk.min(0)).astype(int) - 1, 0, size)
    hi = np.clip(np.ceil(ijk.max(0)).astype(int) + 2, 0, size)
    mask = None
    if np.all(hi > lo):
        sub = Geometry(tuple(int(v) for v in hi - lo), geometry.index_to_physical(lo[None].astype(float))[0],
                       geometry.spacing, geometry.direction)
        mask = box.mask(sub)
    if mask is None or not mask.any():
        raise MedTorchInputError("the region box does not contain any voxel of the volume",
                                 "move or enlarge the box over the tumor")
    first, last = _bounds(mask)
    return first + lo[::-1], last + 1 + lo[::-1]


class SeededSegmenter:
    """Seeded segmentation of one study, ready for fast re-runs after seed edits.

    Usage::

        seg = SeededSegmenter([flair, t1c])
        first = seg.segment(seeds)            # features + full run
        again = seg.segment(edited_seeds)     # reuses features, warm-started

    The channels are never modified. A re-run whose seeds (plus margin) leave the region
    of the previous run recomputes the features for the new region.
    """

    def __init__(self, channels: Sequence[Volume] | Volume, options: SeededOptions | None = None,
                 region_box: Any = None, progress: ProgressCallback | None = None,
                 cancel: CancelToken | None = None) -> None:
        from medtorch.device import select_device

        chans = [channels] if isinstance(channels, Volume) else list(channels)
        self.options = (options or SeededOptions()).validated()
        self.channels = align_channels(chans, progress, cancel)
        self.geometry = self.channels[0].geometry
        self.device = select_device(self.options.device)
        self.region_box = region_box
        self._box_bounds: tuple[np.ndarray, np.ndarray] | None = None
        self._region: tuple[np.ndarray, np.ndarray] | None = None
        self._x: torch.Tensor | None = None  # unit-noise features in the region
        self._smooth: torch.Tensor | None = None
        self._noise: np.ndarray | None = None
        self._gfeat: list[np.ndarray] | None = None  # geodesic: smoothed channels of the region
        self._prev: dict[str, Any] | None = None

    # -- internals -----------------------------------------------------------------------------------
    def _radius_vox(self) -> tuple[int, int, int]:
        sp = np.asarray(self.geometry.spacing)[::-1]
        return tuple(max(1, int(round(self.options.radius_mm / s))) for s in sp)  # type: ignore[return-value]

    def _features(self, lo: np.ndarray, hi: np.ndarray, progress: ProgressCallback | None,
                  cancel: CancelToken | None) -> None:
        """The region's features, cached for re-runs: smoothed channels (geodesic), or unit-noise
        features and their smoothed copy (competition)."""
        if self.options.method == "geodesic":
            self._geodesic_features(lo, hi, progress, cancel)
            return
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        from medtorch.memory import check_fits, estimate_bytes

        # features, their smoothed copies and temporaries per channel, plus the class scores and
        # labels of the competition (about 6 float32 maps per channel and 6 more): refused before
        # anything is computed when the region cannot fit
        region_voxels = int(np.prod(np.asarray(hi) - np.asarray(lo)))
        check_fits(estimate_bytes(region_voxels, 4, copies=6 * len(self.channels) + 6),
                   "seeded segmentation of the seeds' region", self.device)
        chans, spans = [], []
        for n, vol in enumerate(self.channels):
            report(progress, cancel, n / (len(self.channels) + 2), f"features of input volume {n + 1}")
            a = torch.from_numpy(np.ascontiguousarray(np.asarray(vol.array[sl], dtype=np.float32))).to(self.device)
            flat = a.reshape(-1)
            sample = flat[:: max(1, flat.numel() // 100_000)]
            p1, p99 = _quantiles(sample, (0.01, 0.99))
            span = p99 - p1
            if span <= 0:
                span = float(a.max() - a.min()) or 1.0
            chans.append((a - p1) / span)
            spans.append(span)
        x = torch.stack(chans)
        sp = np.asarray(self.geometry.spacing)[::-1]
        report(progress, cancel, len(self.channels) / (len(self.channels) + 2), "noise level")
        unit = [1.0, 1.0, 1.0]
        sig = [self.options.smoothing_mm / s for s in sp]
        small = _gaussian(x, unit)
        noise = _robust_noise_sd(x, small, unit)
        for n, (vol, span) in enumerate(zip(self.channels, spans)):
            if "noise_sd" in vol.metadata:  # resampled: its noise was measured on its own grid
                noise[n] = float(vol.metadata["noise_sd"]) / span
        # noise below 0.1 % of the intensity range counts as that (noise-free synthetic images)
        noise = noise.clamp_min(1e-3)
        x = x / noise[:, None, None, None]
        report(progress, cancel, (len(self.channels) + 1) / (len(self.channels) + 2), "smoothing")
        if self.options.smoothing_mm <= 0:
            self._smooth = x
        elif np.allclose(sig, unit):
            self._smooth = small / noise[:, None, None, None]
        else:
            self._smooth = _gaussian(x, sig)
        self._x = x
        self._noise = noise.cpu().numpy()
        self._region = (lo.copy(), hi.copy())

    def _geodesic_features(self, lo: np.ndarray, hi: np.ndarray, progress: ProgressCallback | None,
                           cancel: CancelToken | None) -> None:
        """Every channel smoothed at ``smoothing_mm``, the first also at ``context_mm`` (raw units:
        each run expresses them in its seeds' contrast)."""
        from scipy import ndimage

        from medtorch.memory import check_fits, estimate_bytes

        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        # features (one per channel and a context copy), class densities' look-ups and path
        # costs per class, distances: about 3 float32 maps per channel and 12 more
        region_voxels = int(np.prod(np.asarray(hi) - np.asarray(lo)))
        check_fits(estimate_bytes(region_voxels, 4, copies=3 * len(self.channels) + 12),
                   "seeded segmentation of the seeds' region", self.device)
        sp = np.asarray(self.geometry.spacing)[::-1]
        opts = self.options
        feats = []
        for n, vol in enumerate(self.channels):
            report(progress, cancel, n / (len(self.channels) + 1), f"features of input volume {n + 1}")
            a = np.asarray(vol.array[sl], dtype=np.float32)
            feats.append(ndimage.gaussian_filter(a, opts.smoothing_mm / sp, mode="nearest", truncate=3.0)
                         if opts.smoothing_mm > 0 else a)
            if n == 0:
                feats.append(ndimage.gaussian_filter(a, opts.context_mm / sp, mode="nearest", truncate=3.0))
        self._gfeat = feats
        self._region = (lo.copy(), hi.copy())

    def _geodesic(self, seed_index_np: np.ndarray, k: int, progress: ProgressCallback | None,
                  cancel: CancelToken | None, times: dict[str, float]) -> tuple[np.ndarray, int, int, bool]:
        """Geodesic competition on the cached features (:mod:`medtorch.segment.geodesic`)."""
        from medtorch.segment.geodesic import GeodesicSettings, contrast_normalise, geodesic_competition

        assert self._gfeat is not None
        opts = self.options
        t1 = time.perf_counter()
        report(progress, cancel, 0.3, "class models and path costs")
        feats = [contrast_normalise(f, seed_index_np, k) for f in self._gfeat]
        settings = GeodesicSettings(opts.smoothing_mm, opts.context_mm, opts.bandwidth, opts.evidence_weight,
                                    opts.grid_mm, opts.full_resolution_voxels)
        spacing = np.asarray(self.geometry.spacing)[::-1]
        labels = geodesic_competition(feats, seed_index_np, k, spacing, settings,
                                      SubProgress(progress, 0.3, 0.9, "geodesic competition"), cancel,
                                      outside=_outside_background_hull(seed_index_np, k, spacing, opts.hull_margin)
                                      if opts.background_hull else None)
        times["geodesic"] = time.perf_counter() - t1
        return labels, 0, 0, False

    def _competition(self, seed_index_np: np.ndarray, k: int, classes: list[int], reuse: bool,
                     progress: ProgressCallback | None, cancel: CancelToken | None,
                     times: dict[str, float]) -> tuple[np.ndarray, int, int, bool]:
        """Localized region competition on the cached unit-noise features (module docstring)."""
        opts = self.options
        seed_index = torch.from_numpy(seed_index_np).to(self.device)
        assert self._x is not None and self._smooth is not None

        t1 = time.perf_counter()
        report(progress, cancel, 0.3, "class models")
        gen = torch.Generator().manual_seed(int(opts.seed))
        floor = _smoothed_noise_variance([opts.smoothing_mm / s for s in np.asarray(self.geometry.spacing)[::-1]])
        model = _fit_class_models(self._smooth, seed_index, k, opts.components, gen, floor)
        loglik = _class_scores(self._smooth, model, list(range(k - 1)), _chi2_quantile(opts.outlier_p,
                                                                                        self._smooth.shape[0]))
        init = _argmax0(loglik)
        warm = False
        prev = self._prev
        if reuse and prev is not None and prev["classes"] == classes:
            # keep the previous labelling away from the seeds that changed
            changed_seeds = torch.from_numpy(seed_index_np != prev["seed_index"]).to(self.device)
            if bool(changed_seeds.any()):
                near = box_sum(changed_seeds[None].to(self._x.dtype), [3 * r for r in self._radius_vox()])[0] > 0
                init = torch.where(near, init, prev["labels"])
            else:
                init = prev["labels"]
            warm = True
        times["class_models"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        allowed = None
        if math.isfinite(opts.plausible_gap):
            # a class may take a voxel only if its model is within the gap of the best one there
            # the gap is given in squared fractions of the intensity range (the features are
            # in noise units), so that it means the same contrast at any noise level
            gap = opts.plausible_gap / float(np.mean(np.square(self._noise)))
            best = loglik.max(0).values
            allowed = loglik >= (best - gap)[None]
        global_term = None
        if opts.global_weight > 0:
            # half the squared distance (noise units) to the nearest centre of each class model
            shape = (k,) + (1,) * (loglik.ndim - 1)
            const = _class_constants(model, self._smooth.shape[0]).view(shape)
            global_term = opts.global_weight * (const - loglik) * model.variances.view(shape)
        labels, iters, changed = _compete(self._x, init, seed_index, k, self._radius_vox(), opts.smoothness,
                                          opts.iterations, SubProgress(progress, 0.35, 0.9, "competition"), cancel,
                                          allowed=allowed, global_term=global_term)
        times["competition"] = time.perf_counter() - t2
        return labels.cpu().numpy(), iters, changed, warm


    # -- the run --------------------------------------------------------------------------------------
    def segment(self, seeds: Volume, progress: ProgressCallback | None = None,
                cancel: CancelToken | None = None, incremental: bool = True) -> SeededResult:
        """Segment with ``seeds`` (0 unlabelled, classes 1..., background the largest value).

        With ``incremental`` (the default) a run after a previous one reuses its features
        (when the region still contains the seeds) and its labelling. On the CPU the run
        uses one torch thread: it is made of many small steps, where starting and joining
        threads costs more than it saves (far more on a busy machine, where waiting threads
        spin).
        """
        with _single_thread(self.device):
            return self._segment(seeds, progress, cancel, incremental)

    def _segment(self, seeds: Volume, progress: ProgressCallback | None, cancel: CancelToken | None,
                 incremental: bool) -> SeededResult:
        opts = self.options
        times: dict[str, float] = {}
        t0 = time.perf_counter()
        report(progress, cancel, 0.0, "checking the seeds")
        classes, background = check_seeds(seeds, box_background=self.region_box is not None)
        seed_arr = _seeds_on_grid(seeds, self.geometry, cancel)
        if self.region_box is not None:
            if self._box_bounds is None:  # the box and the grid do not change: once per segmenter
                self._box_bounds = _region_from_box(self.region_box, self.geometry)
            lo, hi = (b.copy() for b in self._box_bounds)
            inside = np.zeros(seed_arr.shape, bool)
            inside[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))] = True
            if not np.any((seed_arr > 0) & inside):
                raise MedTorchInputError("no seed lies inside the region box", "paint the seeds inside the box")
        else:
            lo, hi = _region_from_seeds(seed_arr, self.geometry, opts.margin_mm, opts.margin_fraction,
                                        opts.region_aspect)
        reuse = (incremental and self._region is not None and bool(np.all(lo >= self._region[0]))
                 and bool(np.all(hi <= self._region[1])))
        if reuse:
            lo, hi = self._region  # type: ignore[misc]
        else:
            self._features(lo, hi, SubProgress(progress, 0.02, 0.25, "features"), cancel)
            self._prev = None
        times["features"] = time.perf_counter() - t0
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        sub = np.asarray(seed_arr[sl])
        if self.region_box is not None and not np.any(sub == background):
            # no background seed: the box's border is the background (the box holds the tumor)
            sub = sub.copy()
            border = np.ones(sub.shape, bool)
            border[1:-1, 1:-1, 1:-1] = False
            sub[border & (sub == 0)] = background
        present = [c for c in classes if np.any(sub == c)]
        if len(present) < 2:
            raise MedTorchInputError("fewer than two seed classes lie inside the region",
                                     "paint seeds of the tumor and of the background inside the region")
        classes = present
        lut = np.full(int(sub.max()) + 1, -1, np.int64)
        for i, c in enumerate(classes):
            lut[c] = i
        seed_index_np = lut[sub.astype(np.int64)]
        k = len(classes)
        if opts.method == "geodesic":
            lab_np, iters, changed, warm = self._geodesic(seed_index_np, k, progress, cancel, times)
            warm = reuse
        else:
            lab_np, iters, changed, warm = self._competition(seed_index_np, k, classes, reuse, progress, cancel, times)

        t3 = time.perf_counter()
        report(progress, cancel, 0.92, "seed connectivity")
        if opts.keep_seed_connected:
            tol = [max(1, int(round(opts.connect_mm / s))) for s in np.asarray(self.geometry.spacing)[::-1]]
            lab_np = _seed_connected(lab_np, seed_index_np, k - 1, tol)
        # the competition's warm start after a seed edit is its own result, without the cavities
        self._prev = {"classes": classes, "seed_index": seed_index_np,
                      "labels": torch.from_numpy(lab_np).to(self.device)}
        times["connectivity"] = time.perf_counter() - t3
        if opts.growcut_cavity:
            report(progress, cancel, 0.94, "cavities (FastGrowCut)")
            t5 = time.perf_counter()
            lab_np = _growcut_cavities(lab_np, seed_index_np, k - 1, np.asarray(self.channels[0].array[sl]),
                                       np.asarray(self.geometry.spacing)[::-1], opts.growcut_cavity_mm)
            times["growcut_cavity"] = time.perf_counter() - t5
        values = np.array([0 if c == background else c for c in classes])
        dtype = np.uint8 if values.max() < 256 else np.uint16
        out = np.zeros(self.geometry.shape_zyx, dtype)
        out[sl] = values[lab_np].astype(dtype)
        times["total"] = time.perf_counter() - t0
        vox_ml = self.geometry.voxel_volume_mm3 / 1000.0
        counts = {int(c): int(np.count_nonzero(out == c)) for c in classes if c != background}
        t4 = time.perf_counter()
        verdict = region_verdict(out[sl] > 0, sub, background, (lo, hi), out.shape)
        times["verdict"] = time.perf_counter() - t4
        times["total"] = time.perf_counter() - t0
        meta = {"operation": "seeded", "classes": classes, "background": background,
                "seed": int(opts.seed), "options": asdict(opts)}
        report(progress, cancel, 1.0, "done")
        return SeededResult(
            label=Volume(out, self.geometry, "label", meta), classes=classes, background=background,
            region=(tuple(int(v) for v in lo), tuple(int(v) for v in hi)),  # type: ignore[arg-type]
            voxel_counts=counts, volumes_ml={c: n * vox_ml for c, n in counts.items()},
            iterations=iters, changed=changed, seconds=times, incremental=warm, options=asdict(opts),
            verdict=verdict)


def seeded_segment(channels: Sequence[Volume] | Volume, seeds: Volume, options: SeededOptions | None = None,
                   region_box: Any = None, progress: ProgressCallback | None = None,
                   cancel: CancelToken | None = None, **kwargs: Any) -> SeededResult:
    """Segment ``channels`` (one or more co-registered volumes) from a seed label map.

    Args:
        channels: the volume(s) to segment, e.g. ``[flair, t1c]``; others than the first
            are resampled onto the first one's grid. Never modified.
        seeds: label map, 0 unlabelled, 1... classes, the **largest value the background**;
            on the first channel's grid (else resampled, nearest neighbour).
        options: :class:`SeededOptions`; keyword arguments override its fields.
        region_box: a :class:`~medtorch.segment.threshold.Box` to segment instead of the
            seeds' bounding box plus margin.

    Returns:
        :class:`SeededResult`; ``label`` keeps the tumor classes' values, background 0.

    Raises:
        MedTorchInputError: an empty seed map, seeds of one class only, channels that do
            not overlap, bad volumes or settings.
    """
    opts = options or SeededOptions()
    if kwargs:
        unknown = set(kwargs) - set(SeededOptions.__dataclass_fields__)
        if unknown:
            raise MedTorchInputError(f"unknown seeded-segmentation setting(s): {', '.join(sorted(unknown))}",
                                     "use " + ", ".join(SeededOptions.__dataclass_fields__))
        opts = SeededOptions(**{**asdict(opts), **kwargs})
    check_seeds(seeds, box_background=region_box is not None)
    return SeededSegmenter(channels, opts, region_box, progress, cancel).segment(seeds, progress, cancel)
