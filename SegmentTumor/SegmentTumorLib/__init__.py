"""SegmentTumor's scene code: the "Grow from seeds (MedTorch)" Segment Editor effect and its logic."""
