"""Benchmark data: the MNI152 2009a T1 template shipped in Resources/SampleData (1 mm, uint8).

* Denoising: the central ``n^3`` of the template scaled to [0, 1], Rician noise of
  ``level * max`` (``M = |A + n1 + i n2|``, ``n1, n2 ~ N(0, sigma^2)``), seeded.
* Super-resolution: the whole template; thick slices along k (axial) simulated with a
  Gaussian slice profile of FWHM = the thick spacing (``factor`` mm), one thick slice per
  ``factor`` thin slices, centred on them (:func:`medtorch.enhance.slice_profile.degrade_along`);
  the reference is the thin volume on exactly the super-resolved grid (tested).
* Head mask: voxels of the clean volume above 5 % of its maximum, closed and hole-filled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
T1 = REPO / "Resources" / "SampleData" / "MNI152_2009a_T1.nii.gz"
SEED = 20240607


def template() -> "object":
    from medtorch.io import read_volume

    return read_volume(T1)


def central_crop(size: int) -> np.ndarray:
    """Central ``size^3`` of the T1 template, float32 in [0, 1]."""
    a = np.asarray(template().array, dtype=np.float32) / 255.0
    starts = [(s - size) // 2 for s in a.shape]
    return np.ascontiguousarray(a[starts[0]:starts[0] + size, starts[1]:starts[1] + size, starts[2]:starts[2] + size])


def rician(clean: np.ndarray, level: float, seed: int = SEED) -> tuple[np.ndarray, float]:
    """Rician noise of ``level`` times the maximum; returns (noisy float32, sigma)."""
    rng = np.random.default_rng(seed)
    sigma = float(level) * float(clean.max())
    real = clean + rng.normal(0.0, sigma, clean.shape)
    imag = rng.normal(0.0, sigma, clean.shape)
    return np.sqrt(real**2 + imag**2).astype(np.float32), sigma


def head_mask(clean: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    m = clean > 0.05 * float(clean.max())
    m = ndimage.binary_closing(m, iterations=2)
    return ndimage.binary_fill_holes(m)


def thick_slices(factor: int, fwhm_mm: float | None = None, volume: "object | None" = None, shape: str = "gaussian"):
    """``(thick Volume, thin reference Volume)`` of the template (or ``volume``) along k.

    ``shape``: the slice profile, ``gaussian`` or ``box`` (of width ``fwhm_mm``).
    """
    import torch

    from medtorch.enhance.slice_profile import degrade_along
    from medtorch.volume import Geometry, Volume

    vol = volume if volume is not None else template()
    a = np.asarray(vol.array, dtype=np.float32)
    n = a.shape[0] // factor * factor
    thin = np.ascontiguousarray(a[:n])
    fwhm = float(factor) if fwhm_mm is None else float(fwhm_mm)
    thick = degrade_along(torch.from_numpy(thin), 0, factor, fwhm / float(vol.spacing[2]), shape).numpy()
    g = vol.geometry
    thin_geom = Geometry((g.size[0], g.size[1], n), g.origin, g.spacing, g.direction)
    # thick slice k is centred on thin slices f k .. f k + f - 1, i.e. on thin index f k + (f - 1) / 2
    origin = thin_geom.index_to_physical(np.array([[0.0, 0.0, (factor - 1) / 2.0]]))[0]
    spacing = np.array(g.spacing, dtype=float)
    spacing[2] *= factor
    thick_geom = Geometry((g.size[0], g.size[1], thick.shape[0]), origin, spacing, g.direction)
    return Volume(thick, thick_geom), Volume(thin, thin_geom)


def fidelity(thick: "object", out: np.ndarray, factor: int, fwhm_mm: float | None, shape: str = "gaussian") -> dict:
    """The fidelity summary and verdict a user gets with a super-resolved ``out`` of ``thick``
    (:func:`medtorch.enhance.fidelity.superres_fidelity` on the output grid of
    :func:`medtorch.enhance.superres.output_geometry`, :func:`~medtorch.enhance.fidelity.superres_verdict`):
    ``fwhm_mm`` is the profile the method used (a self-supervised model's own estimate), or
    ``None`` for the interpolators (estimated from ``thick``, as ``medtorch superres --fidelity-map``
    does); ``shape``: the profile's shape (a box model is re-degraded with its box)."""
    from medtorch.enhance.fidelity import superres_fidelity, superres_verdict
    from medtorch.enhance.superres import output_geometry
    from medtorch.volume import Volume

    g = thick.geometry  # type: ignore[attr-defined]
    og = output_geometry(g, (1.0, 1.0, float(factor)))
    if tuple(og.shape_zyx) != tuple(out.shape):
        return {"error": f"output shape {out.shape} is not the super-resolved grid {og.shape_zyx}"}
    _, summary = superres_fidelity(thick, Volume(np.asarray(out, np.float32), og), fwhm_mm=fwhm_mm,  # type: ignore[arg-type]
                                   fwhm_source="estimated" if fwhm_mm is not None else None,
                                   profile_shape="box" if shape == "box" else "gaussian")
    verdict = superres_verdict(summary)
    keep = ("rms_over_noise_sigma", "fraction_above_3_sigma", "max_abs_over_noise_sigma", "rms_relative_to_range",
            "fwhm_over_spacing")
    return {**{k: summary.get(k) for k in keep}, "verdict": verdict.status,
            "flagged": [c.name for c in verdict.checks if c.status in ("warn", "fail")]}


def fidelity_lines(entries: list, headers: list) -> list:
    """A Markdown section on the fidelity maps of super-resolved outputs: ``entries`` are
    ``(label cells, fidelity dict or None, gain over cubic B-spline in dB or None)``; ``headers`` name
    the label cells. Ends with how many outputs below cubic B-spline the verdict flagged."""
    from medtorch.enhance.fidelity import SUPERRES_THRESHOLDS as th

    lines = ["## Fidelity map summary (what a user sees)", "",
             "Each output re-degraded by the slice profile its method used (selfsup: its own estimate; the "
             "interpolators: the profile estimated from the thick volume, as `medtorch superres --fidelity-map` "
             "does), minus the thick input, in units of the input's estimated noise sigma "
             "(`medtorch.enhance.fidelity`), and the verdict on it (`superres_verdict`: RMS warn at "
             f"{th['fidelity_rms'][0]:g} / fail at {th['fidelity_rms'][1]:g} sigma, voxels beyond 3 sigma warn at "
             f"{th['fidelity_outliers'][0]:.0%} / fail at {th['fidelity_outliers'][1]:.0%}, largest residual warn at "
             f"{th['fidelity_peak'][0]:g} sigma). It checks that the output explains its input; it cannot see an error "
             "that the slice profile used hides (an output sharper than the truth, re-degraded by a profile estimated "
             "as wide, is consistent with its input).", "",
             "| " + " | ".join(headers) + " | residual RMS (sigma) | beyond 3 sigma | largest (sigma) | verdict | "
             "gain over cubic B-spline (dB) |",
             "| " + " | ".join("---" for _ in headers) + " | ---: | ---: | ---: | --- | ---: |"]
    below = flagged = 0
    for cells, fid, gain in entries:
        if not fid or "error" in fid:
            lines.append("| " + " | ".join(cells) + f" | {(fid or {}).get('error', 'not computed')} | | | | |")
            continue
        v = fid["verdict"] + (f" ({', '.join(fid['flagged'])})" if fid.get("flagged") else "")
        lines.append("| " + " | ".join(cells) + f" | {fid['rms_over_noise_sigma']:.2f} | "
                     f"{100 * fid['fraction_above_3_sigma']:.2f} % | {fid['max_abs_over_noise_sigma']:.1f} | {v} | "
                     + ("-" if gain is None else f"{gain:+.2f}") + " |")
        if gain is not None and gain < 0:
            below += 1
            flagged += fid["verdict"] in ("warn", "fail")
    lines += ["", f"MedTorch outputs below cubic B-spline: {below}; flagged by the verdict (warn or fail): {flagged}."]
    return lines
