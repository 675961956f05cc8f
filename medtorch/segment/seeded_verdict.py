"""A verdict on a seeded segmentation: did the result stay with the seeds?

Seeded segmentation has no truth to compare with, but a result that may be wrong leaves traces
a user can be told about (:class:`medtorch.verdict.Verdict`, ``pass``/``warn``/``fail``):

* ``region_border``: the fraction of the segmented region's border (its faces inside the volume)
  that is labelled tumor. A tumor cut off by the region, or a result that ran into the
  surrounding tissue, reaches the border; a tumor inside its region does not.
* ``disconnected``: the fraction of the tumor voxels in connected pieces that hold no tumor
  seed: tissue that merely looks like tumor, away from what was painted.
* ``empty``: no tumor beyond the painted voxels (fail).

Thresholds (:data:`THRESHOLDS`) were chosen on the development half of the real-data benchmark
(``benchmarks/segment --real-dir``; runs of every seed protocol, plus runs made to fail: one-slice
strokes in a flat region, the older region competition) and checked on the held-out half; see
``docs/benchmarks/segment_real.md``. On the development half every run with Dice >= 0.86 had at
most 1 % of its region border labelled tumor; the runs cut off by a flat region had 6-20 %.

Left out on purpose: the overlap of the intensities under the tumor and background strokes
(a Bhattacharyya coefficient). It flagged the one poor development case, but also phantoms
whose tumor strokes span a dark core and bright oedema (Dice 0.94): it is no sign of a wrong
result, and a warning that is usually wrong teaches users to ignore warnings.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from medtorch.verdict import Check, Verdict, grade

__all__ = ["THRESHOLDS", "region_verdict", "seeded_verdict"]

#: ``name -> (warn_at, fail_at)`` (fractions; ``None``: no such level).
THRESHOLDS: dict[str, tuple[float | None, float | None]] = {
    "region_border": (0.02, 0.05),
    "disconnected": (0.05, None),
}

def _border_fraction(tumor: np.ndarray, lo: np.ndarray, hi: np.ndarray, shape: Sequence[int]) -> float | None:
    """Fraction of the region's faces that lie inside the volume and are labelled tumor."""
    faces = hit = 0
    for ax in range(3):
        for side, at_edge in ((0, lo[ax] <= 0), (-1, hi[ax] >= shape[ax])):
            if at_edge:  # the volume ends here: the tumor may touch it
                continue
            f = np.take(tumor, side, axis=ax)
            faces += f.size
            hit += int(np.count_nonzero(f))
    return hit / faces if faces else None


def seeded_verdict(label: np.ndarray, seeds: np.ndarray, region: tuple[Sequence[int], Sequence[int]],
                   background: int, thresholds: dict[str, tuple[float | None, float | None]] | None = None
                   ) -> Verdict:
    """The verdict on one seeded result.

    Args:
        label: the result on the full grid (tumor classes > 0, background 0).
        seeds: the seed map on the same grid (the background's value ``background``).
        region: ``(lo, hi)`` voxel bounds ``[z, y, x]`` of the segmented region (hi exclusive).
        background: the background's seed value.
        thresholds: overrides of :data:`THRESHOLDS`.
    """
    lo, hi = np.asarray(region[0], int), np.asarray(region[1], int)
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    return region_verdict(np.asarray(label)[sl] > 0, np.asarray(seeds)[sl], background, (lo, hi),
                          np.asarray(label).shape, thresholds)


def region_verdict(tumor: np.ndarray, s: np.ndarray, background: int,
                   region: tuple[Sequence[int] | np.ndarray, Sequence[int] | np.ndarray],
                   shape: Sequence[int], thresholds: dict[str, tuple[float | None, float | None]] | None = None
                   ) -> Verdict:
    """:func:`seeded_verdict` on arrays already cropped to the region (``tumor``: bool, ``s``: the
    seeds there); ``region``/``shape`` place it in the volume."""
    th = {**THRESHOLDS, **(thresholds or {})}
    lo, hi = np.asarray(region[0], int), np.asarray(region[1], int)
    tumor_seeds = (s > 0) & (s != background)
    checks: list[Check] = []

    n_tumor = int(np.count_nonzero(tumor))
    beyond = int(np.count_nonzero(tumor & ~tumor_seeds))
    checks.append(Check("empty", float(beyond), 0.0, "fail" if beyond == 0 else "pass",
                        "no voxel beyond the painted tumor strokes was labelled tumor: paint the tumor "
                        "strokes inside the tumor and background strokes outside it, then segment again"
                        if beyond == 0 else f"{beyond} voxels labelled tumor beyond the strokes", "voxels"))

    w, f = th["region_border"]
    border = _border_fraction(tumor, lo, hi, shape)
    checks.append(grade(
        "region_border", border, warn_at=w, fail_at=f, unit="", what="tumor on the region's border",
        messages={
            "pass": "the tumor stays inside the segmented region ({value} of its border)",
            "warn": "the tumor reaches the edge of the segmented region ({value} of its border, warn at {warn_at}): "
                    "it may be cut off there, or it may have grown into the surrounding tissue. Check the edges; "
                    "paint strokes nearer the tumor's edge, add background strokes beyond it, or draw a larger box",
            "fail": "the tumor covers {value} of the segmented region's border (fail at {fail_at}): the region cuts "
                    "the tumor off, or the result ran into the surrounding tissue. Paint strokes that span the "
                    "tumor (on three slices), add background strokes around it, or draw a larger box",
            "skip": "the segmented region spans the whole volume: no border to check"}))

    w, f = th["disconnected"]
    frac: float | None = None
    if n_tumor and tumor_seeds.any():
        cc, _ = ndimage.label(tumor)
        seeded = np.unique(cc[tumor_seeds & tumor])
        seeded = seeded[seeded > 0]
        frac = float(np.count_nonzero(tumor & ~np.isin(cc, seeded)) / n_tumor)
    checks.append(grade(
        "disconnected", frac, warn_at=w, fail_at=f, what="tumor apart from the tumor strokes",
        messages={
            "pass": "the tumor is connected to the tumor strokes ({value} apart from them)",
            "warn": "{value} of the tumor lies in pieces that touch no tumor stroke (warn at {warn_at}): tissue "
                    "that looks like tumor away from what was painted. Add background strokes on it, or keep the "
                    "largest component",
            "skip": "no tumor voxel to check"}))

    return Verdict.of(checks, "segmentation")
