"""Threshold plus largest connected component, inside an optional oriented box (ROI).

A quick, training-free way to outline a bright (or dark) lesion: keep voxels with
``lower <= value <= upper`` inside the ROI, then the largest 26-connected component.
The result is a label map (``1`` inside) on the input grid, with its volume in mL.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medtorch.errors import MedTorchInputError
from medtorch.progress import CancelToken, ProgressCallback, report
from medtorch.volume import Geometry, Volume, check_volume


@dataclass(frozen=True)
class Box:
    """An oriented box in LPS: ``center`` (mm), ``half_size`` (mm along each box axis) and
    ``axes`` (3x3, columns are the box axes' unit vectors), as Slicer's ROI markup has it."""

    center: np.ndarray
    half_size: np.ndarray
    axes: np.ndarray = field(default_factory=lambda: np.eye(3))

    @classmethod
    def from_bounds(cls, lower: np.ndarray, upper: np.ndarray) -> "Box":
        """Axis-aligned box from LPS corner points."""
        lo, hi = np.asarray(lower, float), np.asarray(upper, float)
        return cls(center=(lo + hi) / 2.0, half_size=np.abs(hi - lo) / 2.0)

    def mask(self, geometry: Geometry) -> np.ndarray:
        """Boolean ``[z, y, x]`` mask of the voxel centres inside the box."""
        k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in geometry.shape_zyx), indexing="ij")
        ijk = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)
        local = (geometry.index_to_physical(ijk) - np.asarray(self.center, float)) @ np.asarray(self.axes, float)
        inside = np.all(np.abs(local) <= np.asarray(self.half_size, float) + 1e-9, axis=1)
        return inside.reshape(geometry.shape_zyx)


@dataclass
class ThresholdResult:
    label: Volume
    voxel_count: int
    volume_ml: float
    num_components: int


def threshold_largest_component(
    volume: Volume,
    lower: float,
    upper: float = float("inf"),
    roi: Box | None = None,
    keep_largest: bool = True,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> ThresholdResult:
    """Label ``lower <= value <= upper`` inside ``roi``, keeping the largest 26-connected component.

    Raises:
        MedTorchInputError: bad volume, ``lower > upper``, an ROI that misses the volume,
            or no voxel in range (the message gives the intensity range inside the ROI).
    """
    from scipy import ndimage

    check_volume(volume, "input volume")
    if lower > upper:
        raise MedTorchInputError(f"threshold lower {lower} is above upper {upper}", "swap the two thresholds")
    report(progress, cancel, 0.0, "thresholding")
    arr = volume.array
    region = np.ones(arr.shape, dtype=bool) if roi is None else roi.mask(volume.geometry)
    if not region.any():
        raise MedTorchInputError("the ROI does not contain any voxel of the volume", "move or enlarge the ROI over the lesion")
    selected = region & (arr >= lower) & (arr <= upper)
    if not selected.any():
        lo, hi = float(arr[region].min()), float(arr[region].max())
        raise MedTorchInputError(
            f"no voxel lies between {lower} and {upper} inside the region (its values span {lo:g} to {hi:g})",
            "adjust the thresholds to the lesion's intensities",
        )
    report(progress, cancel, 0.4, "connected components")
    labels, n = ndimage.label(selected, structure=np.ones((3, 3, 3), dtype=bool))
    if keep_largest and n > 1:
        counts = np.bincount(labels.ravel())
        counts[0] = 0
        out = labels == int(np.argmax(counts))
    else:
        out = selected
    report(progress, cancel, 0.9, "volumetry")
    count = int(out.sum())
    ml = count * volume.geometry.voxel_volume_mm3 / 1000.0
    label = Volume(out.astype(np.uint8), volume.geometry, "label",
                   {"operation": "threshold", "lower": lower, "upper": upper, "volume_ml": ml})
    report(progress, cancel, 1.0, "done")
    return ThresholdResult(label=label, voxel_count=count, volume_ml=ml, num_components=int(n))
