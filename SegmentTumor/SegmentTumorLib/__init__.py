"""SegmentTumor's scene code: the "Grow from seeds (MedTorch)" Segment Editor effect and its
logic, and the segmentations and nodule markups of segmentation models
(:mod:`SegmentTumorLib.model_scene`)."""
