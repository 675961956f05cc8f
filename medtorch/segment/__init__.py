"""Tumour segmentation (SegmentTumor): thresholding, components, volumetry."""

from medtorch.segment.threshold import Box, ThresholdResult, threshold_largest_component

__all__ = ["Box", "ThresholdResult", "threshold_largest_component"]
