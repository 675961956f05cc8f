"""ITK FastGrowCut (the filter of Slicer's *Grow from seeds* effect), from the optional
``itk-growcut`` package (``pip install 'medtorch[growcut]'``).

GrowCut (Vezhnevets and Konouchine 2005) lets every seed class grow as a cellular automaton:
a voxel goes to the neighbour whose strength, weakened by the intensity step between them, is
highest. FastGrowCut (Zhu et al. 2014) computes the same labelling with Dijkstra's algorithm.
Because every class grows by steps, a dark region enclosed by a tumor's bright rim goes to
the tumor when the tumor reaches it first, whatever it looks like; :mod:`medtorch.segment.seeded`
uses that for resection cavities and necrosis (``SeededOptions.growcut_cavity``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from medtorch.errors import MedTorchInputError
from medtorch.optional import installed_version, itk_with

__all__ = ["load_growcut", "fast_growcut", "growcut_version"]

#: how to get FastGrowCut, or do without it (one message for every caller)
INSTALL_FIX = ("install it with: pip install 'medtorch[growcut]' (the itk-growcut package), or turn the "
               "GrowCut cavity rule off (SeededOptions(growcut_cavity=False); medtorch segment --no-growcut-cavity; "
               "pipeline key growcut_cavity: false)")


def load_growcut() -> Any:
    """``itk`` with FastGrowCut loaded; :class:`MedTorchInputError` when itk-growcut is missing.

    The first call loads ITK's libraries (seconds); later calls are free."""
    return itk_with("FastGrowCut (itk-growcut)", ("FastGrowCut",), INSTALL_FIX)


def growcut_version() -> str:
    """The installed itk-growcut version, or ``"not installed"``."""
    return installed_version("itk-growcut")


def fast_growcut(image: np.ndarray, seeds: np.ndarray, spacing_zyx: Sequence[float], pad: int = 2) -> np.ndarray:
    """FastGrowCut of ``image`` (``[z, y, x]``) from ``seeds`` (0 unlabelled, 1... classes):
    the class of every voxel (distance penalty 0, as Slicer's effect by default).

    The image is padded by ``pad`` voxels (edge values, no seeds) first: FastGrowCut leaves
    seeds on its image's outermost layer unused. Neither input is modified."""
    itk = load_growcut()
    if seeds.max() > 255:
        raise MedTorchInputError("FastGrowCut takes at most 255 seed classes", "use fewer seed labels")
    img_np = np.pad(np.asarray(image, np.float32), pad, mode="edge")
    lab_np = np.pad(np.asarray(seeds, np.uint8), pad)
    img = itk.image_from_array(np.ascontiguousarray(img_np))
    lab = itk.image_from_array(np.ascontiguousarray(lab_np))
    for im in (img, lab):
        im.SetSpacing([float(v) for v in list(spacing_zyx)[::-1]])
    f = itk.FastGrowCut[itk.Image[itk.F, 3], itk.Image[itk.UC, 3]].New()
    f.SetInput(img)
    f.SetSeedImage(lab)
    f.SetDistancePenalty(0.0)
    f.Update()
    out = np.asarray(itk.array_from_image(f.GetOutput()))
    inner = tuple(slice(pad, n - pad) for n in out.shape)
    return np.array(out[inner], copy=True)
