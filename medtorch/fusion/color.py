"""Colour fusion of a functional image (PET, SPECT) with an anatomical one (MRI, CT).

The field's protocol (e.g. the Harvard PET/SPECT-MRI benchmarks, CDDFuse, U2Fusion):

1. the functional image is shown in a colour map: intensities in [0, 1] -> RGB
   (:func:`apply_color_map`; or it is already an RGB image, as the Harvard PNGs are);
2. RGB -> YCbCr (ITU-R BT.601, full range, as JPEG and OpenCV's ``COLOR_RGB2YCrCb``):
   ``Y = 0.299 R + 0.587 G + 0.114 B``, ``Cb = 0.5 + 0.564 (B - Y)``, ``Cr = 0.5 + 0.713 (R - Y)``
   (:func:`rgb_to_ycbcr`, :func:`ycbcr_to_rgb` -- the exact inverse);
3. the luminance ``Y`` is fused with the anatomical image by any grey-level method;
4. the fused luminance and the functional image's ``Cb``, ``Cr`` go back to RGB, clipped to
   [0, 1] (the colour is kept, the anatomy comes in through the luminance).

Metrics for colour fusion are computed on the luminance (fused ``Y`` against the functional
``Y`` and the anatomical image), as the literature does.

Colour maps (:data:`COLOR_MAPS`, 256 entries each, defined here so that Slicer's views can
show exactly the same colours through a colour table made from them):

* ``hot`` -- black, red, yellow, white: ``R = 3x``, ``G = 3x - 1``, ``B = 3x - 2`` clipped (the
  classic heat/hot-metal ramp of PET displays);
* ``jet`` -- the usual piecewise-linear jet (dark blue to dark red,
  ``1.5 - |4x - k|`` per channel);
* ``rainbow`` -- black, blue, cyan, green, yellow, red (linear between six equally spaced
  stops): a rainbow that starts at black, as nuclear-medicine (SPECT) displays use, so
  that no uptake stays dark in the fusion;
* ``gray`` -- identity (a functional image shown in grey).
"""

from __future__ import annotations

from typing import get_args

import numpy as np
import torch

from medtorch.errors import MedTorchInputError
from medtorch.ops.fusion import ColorMap

__all__ = [
    "COLOR_MAPS",
    "FUNCTIONAL_MODALITIES",
    "apply_color_map",
    "color_map_lut",
    "rgb_to_ycbcr",
    "ycbcr_to_rgb",
]

#: DICOM Modality values of functional images (PET, SPECT / nuclear medicine).
FUNCTIONAL_MODALITIES = ("PT", "PET", "NM", "SPECT")
COLOR_MAPS: tuple[str, ...] = get_args(ColorMap)  # defined by the fusion requests (medtorch.ops.fusion)

_RGB_TO_YCBCR = np.array([
    [0.299, 0.587, 0.114],
    [-0.299 * 0.564, -0.587 * 0.564, (1 - 0.114) * 0.564],
    [(1 - 0.299) * 0.713, -0.587 * 0.713, -0.114 * 0.713],
])
_YCBCR_TO_RGB = np.linalg.inv(_RGB_TO_YCBCR)


def color_map_lut(name: str, entries: int = 256) -> np.ndarray:
    """``(entries, 3)`` float64 RGB in [0, 1] of colour map ``name`` (see the module docstring)."""
    key = str(name).strip().lower()
    x = np.linspace(0.0, 1.0, entries)
    if key == "hot":
        rgb = np.stack([3 * x, 3 * x - 1, 3 * x - 2], axis=1)
    elif key == "jet":
        rgb = np.stack([1.5 - np.abs(4 * x - 3), 1.5 - np.abs(4 * x - 2), 1.5 - np.abs(4 * x - 1)], axis=1)
    elif key == "rainbow":
        points = np.array([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
        colours = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 1], [0, 1, 0], [1, 1, 0], [1, 0, 0]], dtype=np.float64)
        rgb = np.stack([np.interp(x, points, colours[:, c]) for c in range(3)], axis=1)
    elif key in ("gray", "grey"):
        rgb = np.stack([x, x, x], axis=1)
    else:
        raise MedTorchInputError(f"unknown colour map {name!r}", "use one of " + ", ".join(COLOR_MAPS))
    return np.clip(rgb, 0.0, 1.0)


def apply_color_map(x: torch.Tensor, name: str) -> torch.Tensor:
    """Intensities in [0, 1] (any shape) -> RGB in [0, 1], channel first: ``[3, *shape]``.

    Linear interpolation between the 256 entries of :func:`color_map_lut`.
    """
    lut = torch.from_numpy(color_map_lut(name)).to(x.device, torch.float32 if x.dtype != torch.float64 else x.dtype)
    pos = x.clamp(0.0, 1.0) * (lut.shape[0] - 1)
    i0 = pos.floor().long().clamp(0, lut.shape[0] - 2)
    w = (pos - i0.to(pos.dtype)).unsqueeze(0)
    c0 = lut[i0].movedim(-1, 0)
    c1 = lut[i0 + 1].movedim(-1, 0)
    return (c0 + (c1 - c0) * w).to(x.dtype)


def _mix(x: torch.Tensor, m: np.ndarray, offset: tuple[float, float, float]) -> torch.Tensor:
    if x.shape[0] != 3:
        raise MedTorchInputError(f"a colour image needs 3 channels first, got shape {tuple(x.shape)}",
                                 "give [3, ...] (R, G, B) or (Y, Cb, Cr)")
    mt = torch.as_tensor(m, dtype=x.dtype, device=x.device)
    flat = x.reshape(3, -1)
    out = mt @ flat
    out += torch.as_tensor(offset, dtype=x.dtype, device=x.device).view(3, 1)
    return out.reshape(x.shape)


def rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """``[3, ...]`` RGB in [0, 1] -> ``[3, ...]`` Y, Cb, Cr in [0, 1] (BT.601 full range)."""
    return _mix(rgb, _RGB_TO_YCBCR, (0.0, 0.5, 0.5))


def ycbcr_to_rgb(ycc: torch.Tensor) -> torch.Tensor:
    """Exact inverse of :func:`rgb_to_ycbcr` (not clipped)."""
    centred = ycc - torch.as_tensor((0.0, 0.5, 0.5), dtype=ycc.dtype, device=ycc.device).view(
        (3,) + (1,) * (ycc.ndim - 1))
    return _mix(centred, _YCBCR_TO_RGB, (0.0, 0.0, 0.0))
