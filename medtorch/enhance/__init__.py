"""Enhancement: denoising (and later correction and super-resolution) for EnhanceSR."""

from medtorch.enhance.denoise import DENOISE_METHODS, denoise

__all__ = ["DENOISE_METHODS", "denoise"]
