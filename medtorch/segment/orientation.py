"""Reorienting a MONAI image to axis codes (``RAS``, ``LPS``...) without nibabel.

:func:`orientation_transform` says how to reorder and flip the axes of an array so that they
point to the given codes, as ``nibabel.io_orientation`` decides; :func:`orient_to_axcodes_transform`
is a MONAI dictionary transform doing what ``Orientationd(keys, axcodes)`` does with it. Used
by model inference (:mod:`medtorch.segment.inference`), a bundle's preprocessing
(:mod:`medtorch.segment.models`) and training (:mod:`medtorch.segment.training`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from medtorch.errors import MedTorchInputError

__all__ = ["orient_to_axcodes_transform", "orientation_transform"]

_AXCODE = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


def orientation_transform(affine_ras: np.ndarray, shape: Sequence[int], axcodes: str = "RAS") -> tuple[list[int], list[bool], np.ndarray]:
    """How to reorder and flip the axes of an array ``[i, j, k]`` so that they point to ``axcodes``.

    Each array axis goes to the world (RAS) axis its direction is closest to, as
    ``nibabel.io_orientation`` decides for grids that are not exactly 45 degrees oblique.
    Returns ``(order, flips, new_affine)``: output axis ``o`` is input axis ``order[o]``,
    flipped where ``flips[o]``.
    """
    codes = str(axcodes).upper()
    if len(codes) != 3 or any(c not in _AXCODE for c in codes) or len({_AXCODE[c][0] for c in codes}) != 3:
        raise MedTorchInputError(f"unknown orientation {axcodes!r}", "use three axis codes such as RAS or LPS")
    a = np.asarray(affine_ras, dtype=np.float64)
    lin = a[:3, :3] / np.linalg.norm(a[:3, :3], axis=0)
    world_of_axis = np.argmax(np.abs(lin), axis=0)
    if len(set(world_of_axis.tolist())) != 3:
        raise MedTorchInputError("the volume's axes are too oblique to tell which points where (about 45 degrees)",
                                 "resample the volume onto an axis-aligned grid first")
    order: list[int] = []
    flips: list[bool] = []
    t = np.zeros((4, 4))
    t[3, 3] = 1.0
    for o, c in enumerate(codes):
        w, sign = _AXCODE[c]
        src = int(np.nonzero(world_of_axis == w)[0][0])
        flip = bool(np.sign(lin[w, src]) != sign)
        order.append(src)
        flips.append(flip)
        t[src, o] = -1.0 if flip else 1.0
        if flip:
            t[src, 3] = shape[src] - 1
    return order, flips, a @ t


def orient_to_axcodes_transform(keys: Any, axcodes: str) -> Any:
    """A MONAI dictionary transform equivalent to ``Orientationd(keys, axcodes)`` that needs
    no nibabel (MONAI's own calls ``nibabel.io_orientation``)."""
    from monai.data import MetaTensor
    from monai.transforms import MapTransform

    class OrientToAxcodesd(MapTransform):
        def __call__(self, data: Any) -> Any:
            d = dict(data)
            for key in self.key_iterator(d):
                img = d[key]
                shape = tuple(int(v) for v in img.shape[1:])
                order, flips, new_affine = orientation_transform(np.asarray(img.affine, dtype=np.float64), shape, axcodes)
                out = torch.as_tensor(img.as_tensor() if hasattr(img, "as_tensor") else img).permute(0, *[1 + o for o in order])
                dims = [1 + o for o, f in enumerate(flips) if f]
                if dims:
                    out = torch.flip(out, dims)
                meta = dict(getattr(img, "meta", {}))
                d[key] = MetaTensor(out.contiguous(), affine=torch.as_tensor(new_affine, dtype=torch.float64), meta=meta)
            return d

    t = OrientToAxcodesd(keys)
    t.axcodes = axcodes  # type: ignore[attr-defined]
    return t
