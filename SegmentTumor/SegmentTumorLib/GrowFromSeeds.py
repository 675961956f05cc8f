"""What the Segment Editor effect "Grow from seeds (MedTorch)" computes, without Qt.

The Segment Editor gives the effect two images on one clipped grid (``vtkOrientedImageData``):
the source volume's voxels and the merged seed labelmap (each painted segment a label value
``1..N``, in the order of the segments taken part). :class:`GrowFromSeedsLogic` turns them into
the preview labelmap: every voxel of the grid gets the label of a segment, the background
segment's included, as Slicer's own *Grow from seeds* does. It keeps MedTorch's
:class:`~medtorch.segment.seeded.SeededSegmenter` between calls, so that after a stroke only
the class models and the paths are recomputed (the source's features are kept), and it never
touches the segmentation itself: the effect's *Apply* writes the preview into the segments
(one undo step) and *Cancel* drops it.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def background_label(segment_names: list[str]) -> int:
    """The label value (1-based, in the segments' order) of the background segment: the first
    segment whose name contains "background" (any case), else the last segment."""
    for i, name in enumerate(segment_names):
        if "background" in name.lower():
            return i + 1
    return len(segment_names)


class GrowFromSeedsLogic:
    """Preview labelmaps from the Segment Editor's source image and merged seeds."""

    def __init__(self, options: Any = None) -> None:
        from medtorch.segment.seeded import SeededOptions

        self.options = options or SeededOptions()
        self._segmenter: Any = None
        self._key: Any = None
        self.last: dict[str, Any] = {}

    def reset(self) -> None:
        """Forget the source's features (a new source volume, or new settings)."""
        self._segmenter = None
        self._key = None

    def _source_key(self, source: Any) -> tuple[Any, ...]:
        return (id(source), source.GetMTime(), tuple(source.GetExtent()))

    def preview(self, source: Any, mergedSeeds: Any, outputLabelmap: Any, backgroundValue: int | None = None) -> Any:
        """Compute the preview into ``outputLabelmap`` (on ``mergedSeeds``' grid) and return it.

        Args:
            source: the clipped source volume (``vtkOrientedImageData``).
            mergedSeeds: the merged seed labelmap (values ``1..N``, 0 unpainted), on the
                source's grid.
            backgroundValue: the background segment's label value (default: the largest).
        """
        from medtorch.errors import MedTorchInputError
        from medtorch.slicer import mrml
        from medtorch.segment.seeded import SeededSegmenter

        seeds = mrml.volume_from_oriented_image(mergedSeeds, "label")
        arr = np.asarray(seeds.array)
        values = [int(v) for v in np.unique(arr[arr > 0])]
        if len(values) < 2:
            raise MedTorchInputError("the seeds are of one segment only",
                                     "paint at least two segments: the tumor and the background around it")
        bg = int(backgroundValue) if backgroundValue is not None else values[-1]
        if bg not in values:
            raise MedTorchInputError("the background segment has no seed",
                                     "paint the background segment around the tumor")
        top = max(values)
        swapped = arr.copy()  # MedTorch's convention: the background is the largest value
        if bg != top:
            swapped[arr == bg] = top
            swapped[arr == top] = bg
        key = self._source_key(source)
        if self._segmenter is None or key != self._key:
            image = mrml.volume_from_oriented_image(source, "scalar")
            if not image.geometry.isclose(seeds.geometry, atol=1e-4):
                raise MedTorchInputError("the seeds are not on the source volume's grid",
                                         "let the Segment Editor clip both to one grid")
            self._segmenter = SeededSegmenter([image], self.options)
            self._key = key
        res = self._segmenter.segment(seeds.with_array(swapped))
        lab = np.asarray(res.label.array).astype(arr.dtype, copy=True)
        (z0, y0, x0), (z1, y1, x1) = res.region
        region = np.zeros(lab.shape, bool)
        region[z0:z1, y0:y1, x0:x1] = True
        lab[region & (lab == 0)] = top  # the background segment fills the rest of the region
        out = lab.copy()
        if bg != top:  # back to the effect's label values
            out[lab == top] = bg
            out[lab == bg] = top
        self.last = {"seconds": res.seconds, "incremental": res.incremental, "region": res.region,
                     "verdict": res.verdict}
        return mrml.fill_oriented_image(outputLabelmap, mergedSeeds, out)
