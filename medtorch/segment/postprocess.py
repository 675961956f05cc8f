"""Post-processing of label maps: small components, largest component, holes, BraTS regions.

Every function takes a label :class:`~medtorch.volume.Volume` (or a plain ``[z, y, x]``
integer array), never modifies it, and returns the same kind of object: a Volume on the
same grid (metadata copied, the step recorded) or an array. Sizes are in mm^3 when a
Volume is given, so they mean the same on any grid; for arrays they are voxel counts.

BraTS conventions
-----------------
* Labels: 2021 and earlier -- 1 necrotic/non-enhancing core (NCR), 2 peritumoral oedema
  (ED), **4** enhancing tumor (ET); 2023 -- the same with ET = **3**.
* Regions: tumor core TC = NCR + ET; whole tumor WT = NCR + ED + ET; enhancing ET.
* Composing one label map from region masks: ET wins, then the rest of TC is NCR, then
  the rest of WT is ED (the order MONAI's BraTS bundle uses).
"""

from __future__ import annotations

from typing import Literal, Mapping, Sequence, Union

import numpy as np

from medtorch.errors import MedTorchInputError
from medtorch.ops.segmentation import LabelConvention  # the BraTS conventions, defined once there
from medtorch.volume import Volume

__all__ = [
    "BRATS_LABELS",
    "BRATS_REGIONS",
    "LabelConvention",
    "brats_regions",
    "compose_brats_label",
    "convert_brats_labels",
    "detect_brats_convention",
    "remove_small_components",
    "keep_largest_component",
    "fill_holes",
    "postprocess_label",
    "region_masks",
]

LabelLike = Union[Volume, np.ndarray]

#: Label values of the BraTS classes, per convention.
BRATS_LABELS: dict[str, dict[str, int]] = {
    "brats2021": {"NCR": 1, "ED": 2, "ET": 4},
    "brats2023": {"NCR": 1, "ED": 2, "ET": 3},
}
#: The classes each BraTS region is made of.
BRATS_REGIONS: dict[str, tuple[str, ...]] = {"TC": ("NCR", "ET"), "WT": ("NCR", "ED", "ET"), "ET": ("ET",)}

_FULL = np.ones((3, 3, 3), bool)  # 26-connectivity
_FACE = np.array([[[0, 0, 0], [0, 1, 0], [0, 0, 0]], [[0, 1, 0], [1, 1, 1], [0, 1, 0]],
                  [[0, 0, 0], [0, 1, 0], [0, 0, 0]]], bool)  # 6-connectivity


# -- helpers ----------------------------------------------------------------------------------------


def _labels(data: LabelLike, name: str = "label map") -> tuple[np.ndarray, Volume | None]:
    if isinstance(data, Volume):
        arr, vol = np.asarray(data.array), data
        if data.kind == "vector":
            raise MedTorchInputError(f"the {name} has several components per voxel", "give a label map")
    else:
        arr, vol = np.asarray(data), None
    if arr.ndim != 3:
        raise MedTorchInputError(f"the {name} must be 3D, got {arr.ndim}D", "give a [z, y, x] label map")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise MedTorchInputError(f"the {name} holds fractional values", "give a label map of whole numbers")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iub":
        raise MedTorchInputError(f"the {name} has voxels of type {arr.dtype}", "give an integer label map")
    return arr, vol


def _wrap(out: np.ndarray, vol: Volume | None, step: str) -> LabelLike:
    if vol is None:
        return out
    meta = dict(vol.metadata)
    meta["postprocessing"] = (str(meta["postprocessing"]) + "; " if meta.get("postprocessing") else "") + step
    return Volume(out, vol.geometry, "label", meta)


def _connectivity(connectivity: int) -> np.ndarray:
    if connectivity == 26:
        return _FULL
    if connectivity == 6:
        return _FACE
    raise MedTorchInputError(f"connectivity must be 6 or 26, got {connectivity}", "use 6 (faces) or 26 (full)")


def _voxel_mm3(vol: Volume | None) -> float:
    return vol.geometry.voxel_volume_mm3 if vol is not None else 1.0


def _check_convention(convention: str) -> dict[str, int]:
    if convention not in BRATS_LABELS:
        raise MedTorchInputError(f"unknown BraTS label convention {convention!r}",
                                 "use 'brats2021' (labels 1/2/4) or 'brats2023' (labels 1/2/3)")
    return BRATS_LABELS[convention]


# -- BraTS -------------------------------------------------------------------------------------------


def detect_brats_convention(label: LabelLike) -> LabelConvention:
    """``brats2021`` if the map holds a 4, ``brats2023`` if it holds a 3, else ``brats2023``.

    Raises:
        MedTorchInputError: values other than 0-4, or both 3 and 4.
    """
    arr, _ = _labels(label)
    values = set(int(v) for v in np.unique(arr))
    if not values <= {0, 1, 2, 3, 4}:
        raise MedTorchInputError(f"the label map holds values {sorted(values)}, not BraTS labels",
                                 "give a BraTS label map (0, 1, 2 and 3 or 4)")
    if {3, 4} <= values:
        raise MedTorchInputError("the label map holds both 3 and 4", "use the 2021 (ET = 4) or 2023 (ET = 3) labels")
    return "brats2021" if 4 in values else "brats2023"


def brats_regions(label: LabelLike, convention: LabelConvention | Literal["auto"] = "auto") -> dict[str, np.ndarray]:
    """The TC, WT and ET masks (boolean ``[z, y, x]``) of a BraTS label map."""
    arr, _ = _labels(label)
    conv = detect_brats_convention(arr) if convention == "auto" else convention
    lab = _check_convention(conv)
    return {region: np.isin(arr, [lab[c] for c in classes]) for region, classes in BRATS_REGIONS.items()}


def compose_brats_label(tc: np.ndarray, wt: np.ndarray, et: np.ndarray,
                        convention: LabelConvention = "brats2023") -> np.ndarray:
    """One BraTS label map (uint8) from the TC, WT and ET region masks.

    ET wins, then the rest of TC is NCR, then the rest of WT is ED, so overlapping or
    inconsistent masks (ET outside WT, say) still give one class per voxel.
    """
    lab = _check_convention(convention)
    tc, wt, et = (np.asarray(a).astype(bool) for a in (tc, wt, et))
    if not tc.shape == wt.shape == et.shape:
        raise MedTorchInputError(f"the region masks differ in shape: {tc.shape}, {wt.shape}, {et.shape}",
                                 "give the TC, WT and ET masks of one grid")
    out = np.zeros(tc.shape, np.uint8)
    out[wt] = lab["ED"]
    out[tc] = lab["NCR"]
    out[et] = lab["ET"]
    return out


def convert_brats_labels(label: LabelLike, source: LabelConvention, target: LabelConvention) -> LabelLike:
    """Relabel between the 2021 (ET = 4) and 2023 (ET = 3) conventions."""
    arr, vol = _labels(label)
    src, dst = _check_convention(source), _check_convention(target)
    allowed = {0, *src.values()}
    present = set(int(v) for v in np.unique(arr))
    if not present <= allowed:
        raise MedTorchInputError(f"the label map holds {sorted(present - allowed)}, which {source} does not have",
                                 f"check the convention: {source} uses {sorted(allowed)}")
    out = np.zeros(arr.shape, np.uint8)
    for name, value in src.items():
        out[arr == value] = dst[name]
    return _wrap(out, vol, f"BraTS labels {source} -> {target}")


# -- components and holes -------------------------------------------------------------------------------


def remove_small_components(label: LabelLike, min_size: float, connectivity: int = 26,
                            labels: Sequence[int] | None = None) -> LabelLike:
    """Set to 0 every connected piece of a label smaller than ``min_size``.

    Args:
        min_size: mm^3 for a Volume (voxel counts for an array); pieces of exactly that
            size are kept.
        connectivity: 6 (faces) or 26 (faces, edges and corners).
        labels: the values to clean (default: every non-zero value), each on its own.
    """
    from scipy import ndimage

    arr, vol = _labels(label)
    if min_size < 0:
        raise MedTorchInputError(f"the minimum component size must be >= 0, got {min_size}", "give a size >= 0")
    min_vox = float(min_size) / _voxel_mm3(vol)
    structure = _connectivity(connectivity)
    out = arr.copy()
    values = [int(v) for v in np.unique(arr) if v != 0] if labels is None else [int(v) for v in labels]
    for v in values:
        comp, n = ndimage.label(arr == v, structure=structure)
        if n == 0:
            continue
        sizes = np.bincount(comp.ravel())
        small = sizes < min_vox - 1e-9
        small[0] = False
        out[small[comp]] = 0
    return _wrap(out, vol, f"removed components < {min_size:g} {'mm3' if vol is not None else 'voxels'}")


def keep_largest_component(label: LabelLike, connectivity: int = 26, per_label: bool = False) -> LabelLike:
    """Keep only the largest connected piece of the foreground (all non-zero labels together,
    so a multi-class tumor stays whole), or of each label on its own with ``per_label``."""
    from scipy import ndimage

    arr, vol = _labels(label)
    structure = _connectivity(connectivity)
    out = arr.copy()
    masks = [arr == v for v in np.unique(arr) if v != 0] if per_label else [arr != 0]
    for mask in masks:
        comp, n = ndimage.label(mask, structure=structure)
        if n <= 1:
            continue
        sizes = np.bincount(comp.ravel())
        sizes[0] = 0
        out[mask & (comp != int(np.argmax(sizes)))] = 0
    return _wrap(out, vol, "largest component" + (" per label" if per_label else ""))


def fill_holes(label: LabelLike, per_label: bool = False) -> LabelLike:
    """Fill cavities: background pockets enclosed in 3D (6-connected background).

    Without ``per_label`` the foreground (all labels together) is filled and each filled
    voxel takes the label of its nearest labelled voxel; with ``per_label`` each label's
    own cavities are filled with that label (a cavity of one label that holds another
    label is left as it is).
    """
    from scipy import ndimage

    arr, vol = _labels(label)
    out = arr.copy()
    if per_label:
        for v in [int(v) for v in np.unique(arr) if v != 0]:
            mask = arr == v
            filled = ndimage.binary_fill_holes(mask, structure=_FACE)
            out[filled & ~mask & (out == 0)] = v
    else:
        fg = arr != 0
        holes = ndimage.binary_fill_holes(fg, structure=_FACE) & ~fg
        if holes.any():
            _, idx = ndimage.distance_transform_edt(~fg, return_indices=True)
            out[holes] = arr[tuple(i[holes] for i in idx)]
    return _wrap(out, vol, "filled holes" + (" per label" if per_label else ""))


def postprocess_label(label: LabelLike, min_size: float = 0.0, largest: bool = False, fill: bool = False,
                      connectivity: int = 26) -> LabelLike:
    """The usual clean-up in order: small pieces removed, largest piece kept, holes filled."""
    out: LabelLike = label
    if min_size > 0:
        out = remove_small_components(out, min_size, connectivity)
    if largest:
        out = keep_largest_component(out, connectivity)
    if fill:
        out = fill_holes(out)
    if out is label:  # nothing asked: still a new object, never the input
        arr, vol = _labels(label)
        out = _wrap(arr.copy(), vol, "none")
    return out


def region_masks(label: LabelLike, regions: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    """Masks of named regions, each a union of label values (e.g. ``{"WT": [1, 2, 3]}``)."""
    arr, _ = _labels(label)
    return {name: np.isin(arr, list(values)) for name, values in regions.items()}
