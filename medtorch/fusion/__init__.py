"""Image fusion: combine two aligned volumes into one (FusionRegistration)."""

from medtorch.fusion.blend import BlendResult, resample_and_blend

__all__ = ["BlendResult", "resample_and_blend"]
