"""Segmentation metrics and volumetry: overlap, surface distances, lesion-wise scores, mL.

Everything takes boolean or label ``[z, y, x]`` arrays, or label
:class:`~medtorch.volume.Volume` objects (then the voxel spacing comes from the volume and
the two must share one grid). Distances are in millimetres.

Definitions (the conventions chosen where the literature differs)
----------------------------------------------------------------
* **Dice** ``2|P&R| / (|P| + |R|)``; both empty gives 1 (nothing to find, nothing found:
  BraTS's convention), one empty gives 0.
* **Sensitivity** ``TP/(TP+FN)``, **specificity** ``TN/(TN+FP)``, **precision**
  ``TP/(TP+FP)``; NaN when the denominator is 0. Specificity counts every voxel of the
  grid as a negative unless a ``mask`` limits it (e.g. the brain).
* **Surfaces** are the voxels of a mask that have a face neighbour outside it (the mask
  XOR its erosion by the 6-neighbourhood, the array border counting as outside), as
  MONAI's ``get_mask_edges``. Surface distances go from each surface voxel of one mask to
  the nearest surface voxel of the other (exact Euclidean distance transform, in mm).
* **HD95** is the larger of the two directed 95th percentiles (linear interpolation), as
  MONAI's ``compute_hausdorff_distance(percentile=95)``; 0 when both masks are empty, inf
  when one is. **ASSD** is the mean of all surface distances of both directions.
* **Surface Dice** at tolerance ``t`` (Nikolov et al. 2021): the surface voxels of both
  masks within ``t`` mm of the other surface, over all surface voxels, as MONAI's
  ``compute_surface_dice`` (``use_subvoxels=False``); 1 when both are empty.
* **Lesion-wise** scores in the style of the BraTS 2023 challenge: reference lesions are
  the 26-connected components of the reference, merged when their dilations (3 voxels,
  18-neighbourhood) touch; each is matched to the predicted components that touch its
  dilation; lesions below a size threshold are not scored; predicted components that touch
  no reference lesion are false positives with Dice 0 and HD95 374 mm. Lesion-wise Dice
  (HD95) is the sum over scored lesions and false positives over their number.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Mapping, Sequence, Union

import numpy as np

from medtorch.errors import MedTorchInputError
from medtorch.progress import CancelToken, ProgressCallback, report
from medtorch.volume import Volume

__all__ = [
    "confusion_counts",
    "dice",
    "sensitivity",
    "specificity",
    "precision",
    "mask_surface",
    "surface_distances",
    "hausdorff_distance",
    "average_surface_distance",
    "surface_dice",
    "lesion_wise",
    "LesionWiseResult",
    "volumetry",
    "VolumeRow",
    "StructureScores",
    "SegmentationReport",
    "evaluate_segmentation",
    "structures_for",
    "BRATS_HD_MAX_MM",
]

MaskLike = Union[Volume, np.ndarray]
#: HD95 that BraTS gives a lesion with no prediction (or a false positive), mm.
BRATS_HD_MAX_MM = 374.0

_FACE = np.array([[[0, 0, 0], [0, 1, 0], [0, 0, 0]], [[0, 1, 0], [1, 1, 1], [0, 1, 0]],
                  [[0, 0, 0], [0, 1, 0], [0, 0, 0]]], bool)


# -- inputs -----------------------------------------------------------------------------------------


def _spacing_zyx(*items: Any, spacing: Sequence[float] | None = None) -> np.ndarray:
    for it in items:
        if isinstance(it, Volume):
            return np.asarray(it.geometry.spacing, float)[::-1]
    return np.ones(3) if spacing is None else np.asarray(spacing, float)


def _mask(data: MaskLike, name: str) -> np.ndarray:
    arr = np.asarray(data.array if isinstance(data, Volume) else data)
    if arr.ndim != 3:
        raise MedTorchInputError(f"the {name} must be 3D, got {arr.ndim}D", "give a [z, y, x] mask or label map")
    return arr.astype(bool) if arr.dtype != np.bool_ else arr


def _pair(pred: MaskLike, ref: MaskLike) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(pred, Volume) and isinstance(ref, Volume) and not pred.geometry.isclose(ref.geometry, atol=1e-3):
        raise MedTorchInputError(
            f"the prediction and the reference have different grids (size {pred.size} vs {ref.size}, "
            f"spacing {tuple(round(float(v), 3) for v in pred.spacing)} vs "
            f"{tuple(round(float(v), 3) for v in ref.spacing)})",
            "bring the prediction onto the reference's grid first (in Slicer: Resample Scalar/Vector/DWI Volume, "
            "nearest neighbour, the reference as reference volume), or score it against a reference on its own grid")
    p, r = _mask(pred, "prediction"), _mask(ref, "reference")
    if p.shape != r.shape:
        raise MedTorchInputError(f"the prediction ({p.shape}) and the reference ({r.shape}) differ in shape",
                                 "give two masks of one grid")
    return p, r


# -- overlap ---------------------------------------------------------------------------------------------


def confusion_counts(pred: MaskLike, ref: MaskLike, mask: MaskLike | None = None) -> dict[str, int]:
    """True/false positives/negatives, voxel counts (inside ``mask`` when given)."""
    p, r = _pair(pred, ref)
    if mask is not None:
        m = _mask(mask, "mask")
        p, r = p[m], r[m]
    tp = int(np.count_nonzero(p & r))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(r)) - tp
    return {"tp": tp, "fp": fp, "fn": fn, "tn": int(p.size) - tp - fp - fn}


def _ratio(num: int, den: int) -> float:
    return float(num) / float(den) if den else float("nan")


def dice(pred: MaskLike, ref: MaskLike) -> float:
    """Dice coefficient; 1 when both are empty."""
    c = confusion_counts(pred, ref)
    den = 2 * c["tp"] + c["fp"] + c["fn"]
    return 1.0 if den == 0 else 2.0 * c["tp"] / den


def sensitivity(pred: MaskLike, ref: MaskLike) -> float:
    c = confusion_counts(pred, ref)
    return _ratio(c["tp"], c["tp"] + c["fn"])


def specificity(pred: MaskLike, ref: MaskLike, mask: MaskLike | None = None) -> float:
    c = confusion_counts(pred, ref, mask)
    return _ratio(c["tn"], c["tn"] + c["fp"])


def precision(pred: MaskLike, ref: MaskLike) -> float:
    c = confusion_counts(pred, ref)
    return _ratio(c["tp"], c["tp"] + c["fp"])


# -- surfaces ---------------------------------------------------------------------------------------------


def mask_surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face neighbour outside it (array border = outside)."""
    from scipy import ndimage

    m = np.asarray(mask, bool)
    return m ^ ndimage.binary_erosion(m, structure=_FACE, border_value=0)


def surface_distances(pred: MaskLike, ref: MaskLike, spacing: Sequence[float] | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of ``pred`` to ``ref``'s surface, and back.

    ``spacing`` is ``(z, y, x)`` in mm for arrays (Volumes carry their own). An empty mask
    has no surface: the distances *to* it are inf.
    """
    from scipy import ndimage

    p, r = _pair(pred, ref)
    sp = _spacing_zyx(pred, ref, spacing=spacing)
    union = p | r
    if not union.any():
        return np.zeros(0), np.zeros(0)
    idx = np.argwhere(union)
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = np.minimum(idx.max(0) + 2, np.asarray(p.shape))
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    # surfaces on the full grid's border rule: pad the crop with what lies outside it
    sp_ = mask_surface(p)[box] if _touches_border(p, lo, hi) else mask_surface(p[box])
    sr_ = mask_surface(r)[box] if _touches_border(r, lo, hi) else mask_surface(r[box])

    def directed(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        if not src.any():
            return np.zeros(0)
        if not dst.any():
            return np.full(int(src.sum()), np.inf)
        dist = ndimage.distance_transform_edt(~dst, sampling=sp)
        return dist[src]

    return directed(sp_, sr_), directed(sr_, sp_)


def _touches_border(m: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> bool:
    # the crop keeps a margin of one voxel unless the mask reaches the array's border;
    # there the surface must be taken on the whole array (same result, just slower)
    return bool(np.any(lo == 0) or np.any(hi == np.asarray(m.shape)))


def hausdorff_distance(pred: MaskLike, ref: MaskLike, percentile: float = 95.0,
                       spacing: Sequence[float] | None = None) -> float:
    """Symmetric percentile Hausdorff distance (mm); 100 gives the classic Hausdorff."""
    if not 0.0 <= percentile <= 100.0:
        raise MedTorchInputError(f"the percentile must lie in [0, 100], got {percentile}", "use e.g. 95")
    dp, dr = surface_distances(pred, ref, spacing)
    if dp.size == 0 and dr.size == 0:
        return 0.0
    if dp.size == 0 or dr.size == 0 or np.isinf(dp).any() or np.isinf(dr).any():
        return float("inf")
    return float(max(np.percentile(dp, percentile), np.percentile(dr, percentile)))


def average_surface_distance(pred: MaskLike, ref: MaskLike, spacing: Sequence[float] | None = None) -> float:
    """Average symmetric surface distance (mm): the mean over both directions' distances."""
    dp, dr = surface_distances(pred, ref, spacing)
    both = np.concatenate([dp, dr])
    if both.size == 0:
        return 0.0
    return float(both.mean())


def surface_dice(pred: MaskLike, ref: MaskLike, tolerance_mm: float = 1.0,
                 spacing: Sequence[float] | None = None) -> float:
    """Normalised surface Dice at ``tolerance_mm``; 1 when both are empty, 0 when one is."""
    if tolerance_mm < 0:
        raise MedTorchInputError(f"the tolerance must be >= 0 mm, got {tolerance_mm}", "give e.g. 1 mm")
    dp, dr = surface_distances(pred, ref, spacing)
    total = dp.size + dr.size
    if total == 0:
        return 1.0
    return float((np.count_nonzero(dp <= tolerance_mm) + np.count_nonzero(dr <= tolerance_mm)) / total)


# -- lesion-wise ---------------------------------------------------------------------------------------------


@dataclass
class LesionWiseResult:
    """BraTS-2023-style lesion-wise scores of one region (see the module docstring)."""

    dice: float
    hd95: float
    reference_lesions: int  # scored (above the size threshold)
    predicted_components: int
    detected: int  # scored lesions with any overlap
    false_positives: int
    lesions: list[dict[str, float]] = field(default_factory=list)


def lesion_wise(pred: MaskLike, ref: MaskLike, spacing: Sequence[float] | None = None, dilation: int = 3,
                min_lesion_mm3: float = 50.0, hd_max_mm: float = BRATS_HD_MAX_MM) -> LesionWiseResult:
    """Lesion-wise Dice and HD95 in the style of BraTS 2023 (see the module docstring)."""
    from scipy import ndimage

    p, r = _pair(pred, ref)
    sp = _spacing_zyx(pred, ref, spacing=spacing)
    voxel_mm3 = float(np.prod(sp))
    full = np.ones((3, 3, 3), bool)
    ref_cc, n_ref = ndimage.label(r, structure=full)
    pred_cc, n_pred = ndimage.label(p, structure=full)
    if dilation > 0 and n_ref:
        dil = ndimage.binary_dilation(r, structure=ndimage.generate_binary_structure(3, 2), iterations=dilation)
    else:
        dil = r.copy()
    dil_cc, n_dil = ndimage.label(dil, structure=full)
    lesions: list[dict[str, float]] = []
    scored_dice: list[float] = []
    scored_hd: list[float] = []
    detected = 0
    for j in range(1, n_dil + 1):
        region = dil_cc == j
        lesion = r & region
        if not lesion.any():
            continue
        size_mm3 = float(lesion.sum()) * voxel_mm3
        touching = np.unique(pred_cc[region & p])
        touching = touching[touching > 0]
        matched = np.isin(pred_cc, touching) if touching.size else np.zeros_like(p)
        d = dice(matched, lesion)
        hd = hausdorff_distance(matched, lesion, 95.0, sp) if matched.any() else hd_max_mm
        hd = min(hd, hd_max_mm) if np.isfinite(hd) else hd_max_mm
        scored = size_mm3 >= min_lesion_mm3
        lesions.append({"volume_mm3": size_mm3, "dice": d, "hd95": hd, "scored": float(scored),
                        "matched_components": float(touching.size)})
        if scored:
            scored_dice.append(d)
            scored_hd.append(hd)
            detected += int(touching.size > 0)
    fp_ids = np.setdiff1d(np.unique(pred_cc[p]), np.unique(pred_cc[p & dil]))
    n_fp = int(fp_ids.size)
    n = len(scored_dice) + n_fp
    if n == 0:
        ldice, lhd = 1.0, 0.0
    else:
        ldice = float(sum(scored_dice)) / n
        lhd = float(sum(scored_hd) + n_fp * hd_max_mm) / n
    return LesionWiseResult(ldice, lhd, len(scored_dice), int(n_pred), detected, n_fp, lesions)


# -- volumetry ---------------------------------------------------------------------------------------------------


@dataclass
class VolumeRow:
    """One row of a volumetry table: a label value or a region (a union of values)."""

    name: str
    values: list[int]
    voxels: int
    volume_ml: float
    kind: Literal["label", "region"] = "label"


def volumetry(label: Volume, names: Mapping[int, str] | None = None,
              regions: Mapping[str, Sequence[int]] | None = None) -> list[VolumeRow]:
    """mL per label value (every non-zero value, or those named) and per region.

    ``names`` maps values to names (default ``"label <v>"``); ``regions`` maps a region
    name to the values it unites (e.g. BraTS ``{"WT": [1, 2, 3], ...}``).
    """
    if not isinstance(label, Volume):
        raise MedTorchInputError("volumetry needs a label volume (with its spacing)", "give a Volume")
    arr = np.asarray(label.array)
    vox_ml = label.geometry.voxel_volume_mm3 / 1000.0
    counts = np.bincount(arr.ravel().astype(np.int64)) if arr.size and arr.min() >= 0 else None
    values = sorted(names) if names else [int(v) for v in np.unique(arr) if v != 0]

    def count(v: int) -> int:
        if counts is not None:
            return int(counts[v]) if 0 <= v < counts.size else 0
        return int(np.count_nonzero(arr == v))

    rows = [VolumeRow((names or {}).get(v, f"label {v}"), [int(v)], count(v), count(v) * vox_ml) for v in values]
    for name, vals in (regions or {}).items():
        n = sum(count(int(v)) for v in set(int(v) for v in vals))
        rows.append(VolumeRow(name, sorted(int(v) for v in vals), n, n * vox_ml, "region"))
    return rows


# -- a whole report ----------------------------------------------------------------------------------------------


@dataclass
class StructureScores:
    """Every metric of one structure (a label value or a region)."""

    name: str
    values: list[int]
    dice: float
    hd95_mm: float
    assd_mm: float
    surface_dice: float
    sensitivity: float
    specificity: float
    precision: float
    volume_pred_ml: float
    volume_ref_ml: float
    lesion_dice: float | None = None
    lesion_hd95_mm: float | None = None
    lesions_ref: int | None = None
    lesions_detected: int | None = None
    lesions_false_positive: int | None = None


@dataclass
class SegmentationReport:
    """Scores of each structure, with the settings used."""

    structures: list[StructureScores]
    tolerance_mm: float
    spacing_mm: list[float]
    convention: str

    def to_dict(self) -> dict[str, Any]:
        return {"tolerance_mm": self.tolerance_mm, "spacing_mm": self.spacing_mm, "convention": self.convention,
                "structures": [asdict(s) for s in self.structures]}

    def to_csv(self) -> str:
        buf = io.StringIO()
        rows = [asdict(s) for s in self.structures]
        if not rows:
            return ""
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            row["values"] = " ".join(str(v) for v in row["values"])
            writer.writerow(row)
        return buf.getvalue()

    def to_text(self) -> str:
        def f(v: float | None, nd: int = 3) -> str:
            if v is None:
                return "-"
            return "nan" if isinstance(v, float) and math.isnan(v) else (
                "inf" if isinstance(v, float) and math.isinf(v) else f"{v:.{nd}f}")

        head = ["structure", "Dice", "HD95 mm", "ASSD mm", f"NSD@{self.tolerance_mm:g}mm", "sens", "spec", "prec",
                "pred mL", "ref mL", "lesion Dice", "lesion HD95"]
        lines = [head]
        for s in self.structures:
            lines.append([s.name, f(s.dice, 4), f(s.hd95_mm, 2), f(s.assd_mm, 2), f(s.surface_dice, 4),
                          f(s.sensitivity, 4), f(s.specificity, 5), f(s.precision, 4), f(s.volume_pred_ml, 2),
                          f(s.volume_ref_ml, 2), f(s.lesion_dice, 4), f(s.lesion_hd95_mm, 2)])
        widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in lines)


def structures_for(pred: np.ndarray, ref: np.ndarray, convention: str = "labels") -> tuple[dict[str, list[int]], str]:
    """Which structures to score: ``labels`` -- each non-zero value and the foreground;
    ``brats2021`` / ``brats2023`` -- the regions TC, WT, ET; ``auto`` -- BraTS regions when
    both maps hold only BraTS values (0, 1, 2 and 3 or 4), else ``labels``."""
    from medtorch.segment.postprocess import BRATS_LABELS, BRATS_REGIONS

    values = sorted(set(int(v) for v in np.unique(pred)) | set(int(v) for v in np.unique(ref)))
    if convention == "auto":
        vs = set(values)
        if vs <= {0, 1, 2, 3} and 3 in vs:
            convention = "brats2023"
        elif vs <= {0, 1, 2, 4} and 4 in vs:
            convention = "brats2021"
        else:
            convention = "labels"
    if convention in BRATS_LABELS:
        lab = BRATS_LABELS[convention]
        stray = set(values) - {0, *lab.values()}
        if stray:
            raise MedTorchInputError(f"the label maps hold {sorted(stray)}, which {convention} does not have",
                                     f"check the convention ({convention} uses 0 and {sorted(lab.values())})")
        return {region: sorted(lab[c] for c in classes) for region, classes in BRATS_REGIONS.items()}, convention
    if convention != "labels":
        raise MedTorchInputError(f"unknown structure choice {convention!r}",
                                 "use labels, auto, brats2021 or brats2023")
    fg = [v for v in values if v != 0]
    out = {f"label {v}": [v] for v in fg}
    if len(fg) > 1:
        out["foreground"] = fg
    return out, "labels"


def evaluate_segmentation(pred: Volume, ref: Volume, structures: str | Mapping[str, Sequence[int]] = "auto",
                          tolerance_mm: float = 1.0, lesion_wise_scores: bool = True,
                          specificity_mask: np.ndarray | None = None, progress: ProgressCallback | None = None,
                          cancel: CancelToken | None = None) -> SegmentationReport:
    """Score ``pred`` against ``ref`` (label volumes on one grid) for each structure.

    Args:
        structures: ``auto``, ``labels``, ``brats2021``, ``brats2023`` (see
            :func:`structures_for`) or a mapping ``name -> label values``.
        tolerance_mm: surface Dice tolerance.
        lesion_wise_scores: add BraTS-2023-style lesion-wise Dice and HD95.
        specificity_mask: voxels that count as negatives (default: the whole grid).
    """
    for v, name in ((pred, "prediction"), (ref, "reference")):
        if not isinstance(v, Volume):
            raise MedTorchInputError(f"the {name} must be a label volume", "read it with medtorch.io.read_volume")
    p_arr, r_arr = np.asarray(pred.array), np.asarray(ref.array)
    _pair(pred, ref)
    if isinstance(structures, str):
        chosen, convention = structures_for(p_arr, r_arr, structures)
    else:
        chosen, convention = {k: [int(x) for x in v] for k, v in structures.items()}, "custom"
    if not chosen:
        raise MedTorchInputError("both label maps are empty: there is nothing to score",
                                 "check that the right files were given")
    sp = _spacing_zyx(pred)
    vox_ml = float(np.prod(sp)) / 1000.0
    rows = []
    for i, (name, vals) in enumerate(chosen.items()):
        report(progress, cancel, i / len(chosen), f"scoring {name}")
        pm, rm = np.isin(p_arr, vals), np.isin(r_arr, vals)
        c = confusion_counts(pm, rm, specificity_mask)
        dp, dr = surface_distances(pm, rm, sp)
        both = np.concatenate([dp, dr])
        if dp.size == 0 and dr.size == 0:
            hd, assd, nsd = 0.0, 0.0, 1.0
        elif dp.size == 0 or dr.size == 0 or np.isinf(both).any():
            hd, assd, nsd = float("inf"), float("inf"), 0.0
        else:
            hd = float(max(np.percentile(dp, 95), np.percentile(dr, 95)))
            assd = float(both.mean())
            nsd = float(np.count_nonzero(both <= tolerance_mm) / both.size)
        den = 2 * c["tp"] + c["fp"] + c["fn"]
        row = StructureScores(
            name, list(vals), 1.0 if den == 0 else 2.0 * c["tp"] / den, hd, assd, nsd,
            _ratio(c["tp"], c["tp"] + c["fn"]), _ratio(c["tn"], c["tn"] + c["fp"]), _ratio(c["tp"], c["tp"] + c["fp"]),
            float(pm.sum()) * vox_ml, float(rm.sum()) * vox_ml)
        if lesion_wise_scores:
            lw = lesion_wise(pm, rm, sp)
            row.lesion_dice, row.lesion_hd95_mm = lw.dice, lw.hd95
            row.lesions_ref, row.lesions_detected, row.lesions_false_positive = (lw.reference_lesions, lw.detected,
                                                                                 lw.false_positives)
        rows.append(row)
    report(progress, cancel, 1.0, "done")
    return SegmentationReport(rows, float(tolerance_mm), [float(v) for v in sp], convention)
