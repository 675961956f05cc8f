"""Tumor segmentation (SegmentTumor): thresholding, components, volumetry."""

from medtorch.segment.threshold import Box, ThresholdResult, threshold_largest_component

__all__ = ["Box", "ThresholdResult", "threshold_largest_component"]

# -- deep learning and lung nodules (imported on first use: torch and MONAI are heavy) ----------
_LAZY_EXPORTS = {
    "segment_with_model": "medtorch.segment.inference",
    "load_model": "medtorch.segment.models",
    "describe_model": "medtorch.segment.models",
    "train_segmentation": "medtorch.segment.training",
    "detect_nodules": "medtorch.segment.nodules",
}
__all__ += list(_LAZY_EXPORTS)


def __getattr__(name: str) -> object:
    module = _LAZY_EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'medtorch.segment' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)

# -- seeded segmentation, post-processing, metrics and terminology (imported on first use) ------
_SEEDED_EXPORTS = {
    "seeded_segment": "medtorch.segment.seeded",
    "SeededSegmenter": "medtorch.segment.seeded",
    "SeededOptions": "medtorch.segment.seeded",
    "SeededResult": "medtorch.segment.seeded",
    "remove_small_components": "medtorch.segment.postprocess",
    "keep_largest_component": "medtorch.segment.postprocess",
    "fill_holes": "medtorch.segment.postprocess",
    "postprocess_label": "medtorch.segment.postprocess",
    "brats_regions": "medtorch.segment.postprocess",
    "compose_brats_label": "medtorch.segment.postprocess",
    "convert_brats_labels": "medtorch.segment.postprocess",
    "BRATS_LABELS": "medtorch.segment.postprocess",
    "dice": "medtorch.segment.metrics",
    "hausdorff_distance": "medtorch.segment.metrics",
    "surface_dice": "medtorch.segment.metrics",
    "lesion_wise": "medtorch.segment.metrics",
    "volumetry": "medtorch.segment.metrics",
    "evaluate_segmentation": "medtorch.segment.metrics",
    "TERMS": "medtorch.segment.terminology",
    "slicer_terminology": "medtorch.segment.terminology",
}
_LAZY_EXPORTS.update(_SEEDED_EXPORTS)
__all__ += list(_SEEDED_EXPORTS)
