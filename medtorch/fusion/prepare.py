"""Input intensities for fusion: every source is brought to [0, 1] before it is fused.

* **CT** is windowed (:func:`medtorch.intensity.apply_window`, a preset from
  :data:`medtorch.intensity.CT_WINDOWS` -- ``bone`` by default, since bone is what a CT adds
  to an MRI -- or a ``(width, level)`` pair in HU): ``level - width/2`` -> 0, ``level +
  width/2`` -> 1, clipped.
* **MRI, PET, SPECT** and anything else are percentile-normalised
  (:func:`medtorch.intensity.robust_normalize`): the 1st percentile -> 0, the 99th -> 1,
  clipped, over the voxels that carry data (for a resampled moving volume, those inside
  the fixed grid's overlap).

The modality comes from ``modality`` when given (``CT``, ``MR``, ``PT``, ``NM``, or the
spellings ``MRI``, ``PET``, ``SPECT``), else from the volume's DICOM ``Modality`` in its
metadata, else it is ``OT`` (other: percentile normalisation). MedTorch does not guess a
modality from intensities.

The fused output is float32 in [0, 1] whatever the inputs; colour fusion writes an RGB
uint8 vector volume (0..255 per channel) beside it.
"""

from __future__ import annotations

import numpy as np

from medtorch.errors import MedTorchInputError
from medtorch.ops.fusion import Normalization
from medtorch.volume import Volume

__all__ = ["MODALITIES", "Normalization", "is_functional", "modality_of", "prepare_intensity"]

#: Canonical modality codes (DICOM) MedTorch understands for fusion.
MODALITIES = ("CT", "MR", "PT", "NM", "OT")
_ALIASES = {"CT": "CT", "MR": "MR", "MRI": "MR", "PT": "PT", "PET": "PT", "NM": "NM", "SPECT": "NM",
            "OT": "OT", "OTHER": "OT", "AUTO": "AUTO", "": "AUTO"}


def canonical_modality(text: str | None) -> str:
    """``'CT'``, ``'MR'``, ``'PT'``, ``'NM'``, ``'OT'`` or ``'AUTO'`` for a user's spelling."""
    key = (text or "").strip().upper()
    if key not in _ALIASES:
        raise MedTorchInputError(f"unknown modality {text!r}", "use CT, MR (MRI), PT (PET), NM (SPECT), OT or auto")
    return _ALIASES[key]


def modality_of(volume: Volume, given: str | None = "auto") -> str:
    """The modality to treat ``volume`` as: ``given`` unless 'auto', else its DICOM Modality, else 'OT'."""
    mod = canonical_modality(given)
    if mod != "AUTO":
        return mod
    meta = str(volume.metadata.get("Modality", "") or "").strip().upper()
    if meta in _ALIASES and _ALIASES[meta] != "AUTO":
        return _ALIASES[meta]
    return "OT"


def is_functional(modality: str) -> bool:
    """True for PET and SPECT (nuclear medicine)."""
    return canonical_modality(modality) in ("PT", "NM")


def prepare_intensity(
    array: np.ndarray,
    modality: str,
    normalization: Normalization = "auto",
    ct_window: str | tuple[float, float] = "bone",
    lower_percentile: float = 1.0,
    upper_percentile: float = 99.0,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, str]:
    """``array`` in [0, 1] as float32 (a new array) and a sentence saying how.

    Args:
        modality: a code from :data:`MODALITIES` (see :func:`modality_of`).
        normalization: ``auto`` (CT windowed, the rest percentile-normalised), ``percentile``
            (every modality percentile-normalised) or ``none`` (raw values as float32; the
            output is then in the inputs' units).
        mask: voxels that carry data; percentiles are taken there, and the rest is set to 0.
    """
    from medtorch.intensity import apply_window, robust_normalize, window_bounds

    mod = canonical_modality(modality)
    if normalization not in ("auto", "percentile", "none"):
        raise MedTorchInputError(f"unknown normalization {normalization!r}", "use 'auto', 'percentile' or 'none'")
    arr = np.asarray(array)
    if normalization == "none":
        out = arr.astype(np.float32, copy=True)
        how = "raw intensities (no normalisation)"
    elif mod == "CT" and normalization == "auto":
        lo, hi = window_bounds(ct_window)
        out = apply_window(arr, ct_window)
        name = ct_window if isinstance(ct_window, str) else f"W{hi - lo:g} L{(hi + lo) / 2:g}"
        how = f"CT window {name} ({lo:g} to {hi:g} HU) to [0, 1]"
    else:
        m = None if mask is None or mask.all() else mask
        try:
            out = robust_normalize(arr, lower_percentile, upper_percentile, mask=m)
        except MedTorchInputError as exc:
            raise MedTorchInputError(f"a {mod} volume could not be normalised: {exc.problem}", exc.fix) from None
        how = f"percentiles {lower_percentile:g}-{upper_percentile:g} to [0, 1]"
    if mask is not None:
        out = np.where(mask, out, 0.0).astype(np.float32)
    return np.ascontiguousarray(out, dtype=np.float32), how
