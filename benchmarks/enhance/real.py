"""Through-plane super-resolution on REAL 1 mm brain MRI: ``python -m benchmarks.enhance --real-dir DIR``.

``DIR`` holds one folder per case with NIfTI volumes named by contrast (the BraTS layout:
``<case>/flair.nii.gz``, ``t1.nii.gz``, ``t1ce.nii.gz``, ``t2.nii.gz``; other files are ignored),
and optionally ``cases.csv`` (columns ``case_id`` and ``split``: only ``--split`` cases are run)
and ``SOURCES.md`` (where the data came from: the lines naming each case used are quoted in the
report). The data are never copied into the repository.

Each volume (co-registered and resampled to 1 mm isotropic, as BraTS volumes are) is the thin
truth. It is made thick along k (axial) by a known slice profile -- a Gaussian of 4 mm FWHM,
or a 4 mm box -- and a factor of 4 (:func:`benchmarks.enhance.data.thick_slices`). Only the
thick volume goes to the methods: linear, cubic B-spline and windowed-sinc interpolation, and
MedTorch's self-supervised SR on its *blind* path (the slice profile estimated from the thick
volume, :func:`medtorch.enhance.slice_profile.estimate_slice_profile`). PSNR and SSIM inside the
head (voxels above the background value, closed and hole-filled) against the thin truth.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.enhance import data
from benchmarks.enhance.runner import run_isolated

M = "benchmarks.enhance.methods."
CONTRASTS = ("t1", "t1ce", "t2", "flair")
#: The known profiles (shape, FWHM mm) and the factor of the real-data benchmark.
PROFILES = (("gaussian", 4.0), ("box", 4.0))
FACTOR = 4
INTERPOLATION = (("linear", "linear"), ("cubic B-spline", "bspline"), ("windowed sinc", "sinc"))
SELFSUP = "MedTorch selfsup (blind: FWHM estimated)"
#: Profile-estimation settings (shape, factor, FWHM in thin voxels): contiguous slices and slices with gaps.
PROFILE_CASES = (("gaussian", 2, 2.0), ("gaussian", 3, 3.0), ("gaussian", 4, 4.0), ("gaussian", 5, 5.0),
                 ("gaussian", 4, 3.0), ("gaussian", 5, 3.5), ("box", 2, 2.0), ("box", 4, 4.0), ("box", 5, 5.0),
                 ("box", 4, 3.0), ("box", 5, 4.0))
#: Targets: gain over cubic B-spline at x4, time per volume, profile estimate error.
TARGET_GAIN_DB = 2.5
BUDGET_S = 90.0
PROFILE_TOLERANCE = 0.10


def find_volumes(root: Path, split: str | None, cases: list[str] | None,
                 contrasts: tuple[str, ...]) -> list[tuple[str, str, Path]]:
    """``(case, contrast, path)`` of every volume to run, sorted; ``split`` filters by ``cases.csv``."""
    if not root.is_dir():
        raise SystemExit(f"--real-dir {root} is not a folder: give the folder of case folders (BraTS layout)")
    allowed: set[str] | None = None
    table = root / "cases.csv"
    if split and table.exists():
        with open(table, newline="") as fh:
            allowed = {r["case_id"] for r in csv.DictReader(fh) if r.get("split") == split}
    out = []
    for case in sorted(p for p in root.iterdir() if p.is_dir()):
        if allowed is not None and case.name not in allowed:
            continue
        if cases and case.name not in cases:
            continue
        for c in contrasts:
            for ext in (".nii.gz", ".nii"):
                if (case / f"{c}{ext}").exists():
                    out.append((case.name, c, case / f"{c}{ext}"))
                    break
    return out


def split_of(root: Path) -> dict[str, str]:
    table = root / "cases.csv"
    if not table.exists():
        return {}
    with open(table, newline="") as fh:
        return {r["case_id"]: r.get("split", "") for r in csv.DictReader(fh)}


def source_lines(root: Path, cases: list[str]) -> list[str]:
    """From ``SOURCES.md``: the licence paragraph, and in each section naming a case used, its heading,
    the lines naming a case used, and its licence line."""
    p = root / "SOURCES.md"
    if not p.exists():
        return []
    keys = set(cases) | {c.split("BRATS2015_", 1)[1] for c in cases if c.startswith("BRATS2015_")}
    text = p.read_text().splitlines()
    out: list[str] = []
    para = False
    for line in text:  # the licence paragraph, whole
        if line.strip().startswith("**Licence"):
            para = True
        if para and not line.strip():
            break
        if para:
            out.append(line.strip())
    sections: list[list[str]] = []
    for line in text:
        if line.startswith("## "):
            sections.append([line.strip()])
        elif sections and line.strip():
            sections[-1].append(line.strip())
    for sec in sections:
        hits = [s for s in sec[1:] if any(k in s for k in keys)]
        if hits and not sec[0].lower().startswith(("## missing", "## labelled")):
            out += ["", sec[0]] + hits + [s for s in sec[1:] if s.startswith("* Licence") and s not in hits]
    return out


def head_mask(a: np.ndarray) -> np.ndarray:
    """Voxels above the background (the volume's minimum, zero or a constant after normalisation), closed, filled."""
    from scipy import ndimage

    lo, hi = float(a.min()), float(a.max())
    m = a > lo + 1e-3 * (hi - lo)
    m = ndimage.binary_closing(m, iterations=2)
    return ndimage.binary_fill_holes(m)


def bench_real(work: Path, volumes: list[tuple[str, str, Path]], threads: int, config: dict[str, Any],
               skip: set[str], log: Any) -> list[dict[str, Any]]:
    from medtorch.enhance.metrics import psnr, ssim
    from medtorch.io import read_volume, write_volume

    rows: list[dict[str, Any]] = []
    for case, contrast, path in volumes:
        vol = read_volume(path)
        if not np.allclose(vol.spacing, 1.0, atol=0.05):
            log(f"skip {case} {contrast}: spacing {tuple(vol.spacing)} is not 1 mm isotropic")
            continue
        for shape, fwhm in PROFILES:
            thick, thin = data.thick_slices(FACTOR, fwhm, volume=vol, shape=shape)
            mask = head_mask(thin.array)
            thick_path = work / "thick.nrrd"
            write_volume(thick, thick_path)
            methods: list[tuple[str, dict[str, Any]]] = [(label, {"method": m}) for label, m in INTERPOLATION]
            methods.append((SELFSUP, {"method": "selfsup", "config": config, "profile_shape": shape}))
            for label, extra in methods:
                if any(k in label.lower() for k in skip):
                    continue
                log(f"real {case} {contrast} {shape} {fwhm:g} mm x{FACTOR}: {label}")
                res = run_isolated(M + "medtorch_superres", {"thick": str(thick_path), "factor": FACTOR, **extra},
                                   work / "out.npy", threads=threads, timeout=3600)
                row: dict[str, Any] = {"case": case, "contrast": contrast, "shape": shape, "fwhm": fwhm,
                                       "factor": FACTOR, "method": label}
                if not res["ok"]:
                    row["error"] = res["error"]
                    log(f"  failed: {res['error']}")
                else:
                    out = np.load(work / "out.npy")
                    if out.shape != thin.array.shape:
                        row["error"] = f"output shape {out.shape} != reference {thin.array.shape}"
                    else:
                        ref = thin.array.astype(np.float32)
                        row["psnr"], row["ssim"] = psnr(out, ref, mask), ssim(out, ref, mask)
                    info = res["info"] or {}
                    row.update(seconds=res["seconds"], cpu_seconds=res["cpu_seconds"], peak_mb=res["peak_mb"],
                               fwhm_estimate=info.get("fwhm_mm"), shape_estimate=info.get("profile_shape"))
                    row["fidelity"] = data.fidelity(thick, out, FACTOR, info.get("fwhm_mm"),
                                                    info.get("profile_shape") or "gaussian")
                    log(f"  {row.get('psnr', float('nan')):.2f} dB in {res['seconds']:.1f} s"
                        + (f", profile {info.get('profile_shape')} {info.get('fwhm_mm')} mm" if info.get("fwhm_mm") else ""))
                rows.append(row)
                (work / "real_results.json").write_text(json.dumps(rows, indent=1, default=str))
    return rows


def estimate_profile(thick: np.ndarray, factor: int, shapes: tuple[str, ...]) -> tuple[float, str]:
    """The blind path's estimate (FWHM in thin voxels, shape), from the thick array alone (as ``train_selfsup_sr``)."""
    from medtorch.enhance.noise import estimate_noise
    from medtorch.enhance.slice_profile import estimate_slice_profile
    from medtorch.enhance.superres import _intensity_scale

    lo, hi = _intensity_scale(thick)
    x = (thick.astype(np.float32) - lo) / (hi - lo)
    sigma = estimate_noise(thick).sigma / (hi - lo)
    return estimate_slice_profile(x, 0, factor, noise_sigma=sigma, shapes=shapes)


def bench_profiles(volumes: list[tuple[str, str, np.ndarray]], log: Any) -> list[dict[str, Any]]:
    """Slice-profile estimates against the truth: the shape given (FWHM estimated), and both estimated."""
    import torch

    from medtorch.enhance.slice_profile import PROFILE_SHAPES, degrade_along

    rows = []
    for case, contrast, arr in volumes:
        for shape, f, fw in PROFILE_CASES:
            thick = degrade_along(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)), 0, f, fw, shape).numpy()
            given, _ = estimate_profile(thick, f, (shape,))
            auto, auto_shape = estimate_profile(thick, f, PROFILE_SHAPES)
            rows.append({"case": case, "contrast": contrast, "shape": shape, "factor": f, "fwhm": fw,
                         "given_shape_estimate": given, "auto_estimate": auto, "auto_shape": auto_shape})
            log(f"profile {case} {contrast} {shape} x{f} {fw:g}: {given:.2f} (shape given), {auto_shape} {auto:.2f}")
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per volume and profile: selfsup's gain over cubic B-spline, time, and the profile estimate's error."""
    out = []
    keys = sorted({(r["case"], r["contrast"], r["shape"], r["fwhm"]) for r in rows})
    for key in keys:
        at = {r["method"]: r for r in rows if (r["case"], r["contrast"], r["shape"], r["fwhm"]) == key and "psnr" in r}
        b, s = at.get("cubic B-spline"), at.get(SELFSUP)
        if b is None or s is None:
            continue
        est = s.get("fwhm_estimate")
        err = None if est is None else (float(est) - key[3]) / key[3]
        out.append({"case": key[0], "contrast": key[1], "shape": key[2], "fwhm": key[3], "bspline": b["psnr"],
                    "selfsup": s["psnr"], "gain": s["psnr"] - b["psnr"], "ssim_gain": s["ssim"] - b["ssim"],
                    "seconds": s.get("seconds"), "fwhm_estimate": est, "shape_estimate": s.get("shape_estimate"),
                    "error": err})
    return out


def report(path: Path, root: Path, args: Any, env: dict[str, Any], rows: list[dict[str, Any]],
           loads: tuple[float, float], total_s: float, config: dict[str, Any],
           prof: list[dict[str, Any]] | None = None) -> str:
    from medtorch.io import write_text_atomic

    def f2(v: Any, d: int = 2) -> str:
        return "-" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))

    yn = lambda b: "-" if b is None else ("yes" if b else "**no**")  # noqa: E731
    splits = split_of(root)
    used = rows + [r for r in (prof or []) if r["case"] != "MNI152 2009a"]
    cases = sorted({r["case"] for r in used})
    summ = summarise(rows)
    lines = [
        "# Super-resolution benchmark on real 1 mm brain MRI (EnhanceSR, blind path)" if rows else
        "# Slice-profile estimate on real 1 mm brain MRI and the MNI template (EnhanceSR, blind path)",
        "",
        *([] if rows else ["Only the slice-profile estimates were run (`--profiles-only`): no super-resolution rows here.", ""]),
        f"Generated by `{args.command_line}` on {env['date']} in {total_s / 60:.1f} min. "
        "Do not edit by hand: rerun the command.",
        "",
        f"Machine: {env['cpu']}, {env['cpus']} CPU cores, no GPU; each method in its own process with {env['threads']} "
        f"threads. Load average (1 min) at start / end: {loads[0]:.1f} / {loads[1]:.1f}: the machine was shared with "
        "other jobs, so wall times are longer than on an idle machine (CPU time beside them).",
        "",
        "## Data",
        "",
        "Real brain MRI from the BraTS challenges, found in public GitHub repositories (quoted from the data "
        "folder's `SOURCES.md` below). BraTS volumes are co-registered to one anatomical template and resampled to "
        "1 mm isotropic by the challenge organisers, so each serves here as the 1 mm truth; note that many were "
        "acquired with thicker slices (FLAIR and T2 often 2D, 3-5 mm), so their 1 mm z axis is already smoother "
        "than in-plane. The data may not be redistributed: it is read from the folder given on the command line "
        "and never stored in this repository.",
        "",
        "Each volume is made thick along k (axial) with a known slice profile -- "
        + ", ".join(f"a {s} of {w:g} mm FWHM" for s, w in PROFILES)
        + f" -- keeping one thick slice per {FACTOR} thin slices (x{FACTOR}, thick slices centred on the thin slices "
        "they replace). The methods see only the thick volume: MedTorch's self-supervised SR runs its blind path "
        f"(no profile given: estimated from the thick volume, shape and FWHM; settings {json.dumps(config)}, "
        "default iterations). PSNR (peak = the truth's range) and SSIM inside the head (voxels above the background "
        "value, closed and hole-filled).",
        "",
        "Cases and split (from the folder's `cases.csv`; the estimator's settings were chosen on the MNI template and "
        "the `dev` cases only):",
        "",
    ]
    for c in cases:
        lines.append(f"* {c}: {splits.get(c, 'no split given')}; contrasts "
                     + ", ".join(sorted({r['contrast'] for r in used if r['case'] == c})))
    src = source_lines(root, cases)
    if src:
        lines += ["", "Where the data came from (`SOURCES.md`, lines naming these cases and the licences):", ""]
        lines += [f"> {s}" if s else ">" for s in src]
    if rows:
        lines += ["", "## Results", "",
                  "| case | contrast | true profile | method | PSNR (dB) | SSIM | time (s) | CPU time (s) | profile estimate |",
                  "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
        for r in rows:
            name = f"**{r['method']}**" if r["method"].startswith("MedTorch") else r["method"]
            true_profile = f"{r['shape']} {r['fwhm']:g} mm"
            if "psnr" not in r:
                lines.append(f"| {r['case']} | {r['contrast']} | {true_profile} | {name} | failed: {str(r.get('error'))[:80]} | | | | |")
                continue
            est = f"{r.get('shape_estimate')} {f2(r.get('fwhm_estimate'))} mm" if r.get("fwhm_estimate") is not None else ""
            lines.append(f"| {r['case']} | {r['contrast']} | {true_profile} | {name} | {f2(r['psnr'])} | {f2(r['ssim'], 4)} | "
                         f"{f2(r.get('seconds'), 1)} | {f2(r.get('cpu_seconds'), 1)} | {est} |")
        lines += ["", f"Targets: selfsup (blind) >= +{TARGET_GAIN_DB} dB over cubic B-spline at x{FACTOR} in every contrast, "
                  f"<= {BUDGET_S:g} s per volume on 2 cores; the profile estimate within {PROFILE_TOLERANCE:.0%} of the "
                  "true FWHM.", "",
                  "| case | contrast | true profile | cubic B-spline (dB) | selfsup (dB) | gain (dB) | SSIM gain | reached | "
                  "time (s) | in budget | estimated profile | FWHM error | within 10 % |",
                  "| --- | --- | --- | ---: | ---: | ---: | ---: | :---: | ---: | :---: | --- | ---: | :---: |"]
        for t in summ:
            err = t["error"]
            lines.append(f"| {t['case']} | {t['contrast']} | {t['shape']} {t['fwhm']:g} mm | {f2(t['bspline'])} | "
                         f"{f2(t['selfsup'])} | {t['gain']:+.2f} | {t['ssim_gain']:+.4f} | {yn(t['gain'] >= TARGET_GAIN_DB)} | "
                         f"{f2(t['seconds'], 1)} | {yn(None if t['seconds'] is None else t['seconds'] <= BUDGET_S)} | "
                         f"{t['shape_estimate']} {f2(t['fwhm_estimate'])} mm | "
                         f"{'-' if err is None else f'{100 * err:+.1f} %'} | "
                         f"{yn(None if err is None else abs(err) <= PROFILE_TOLERANCE)} |")
        if summ:
            by_c: dict[str, list[float]] = {}
            for t in summ:
                by_c.setdefault(t["contrast"], []).append(t["gain"])
            lines += ["", "Mean gain over cubic B-spline by contrast: "
                      + "; ".join(f"{c} {np.mean(g):+.2f} dB (min {min(g):+.2f}, n = {len(g)})" for c, g in sorted(by_c.items())) + "."]
    if rows:
        gains = {(t["case"], t["contrast"], t["shape"], t["fwhm"]): t["gain"] for t in summ}
        entries = [([r["case"], r["contrast"], f"{r['shape']} {r['fwhm']:g} mm", r["method"]], r.get("fidelity"),
                    gains.get((r["case"], r["contrast"], r["shape"], r["fwhm"])) if r["method"] == SELFSUP else None)
                   for r in rows if "psnr" in r]
        lines += [""] + data.fidelity_lines(entries, ["case", "contrast", "true profile", "method"])
    if prof:
        lines += ["", "## Slice profile estimate against the truth", "",
                  "The blind path's estimate from the thick volume alone (`medtorch.enhance.slice_profile."
                  "estimate_slice_profile`, the noise level estimated too), for known profiles: contiguous slices "
                  "(FWHM = spacing) and slices with gaps (FWHM < spacing). 'shape given': the profile family is known "
                  "(as for a 2D multi-slice acquisition: a box), the FWHM estimated; 'auto': the family is chosen by "
                  "the fit too. FWHM in thin-slice voxels (= mm here). Before this change the estimator (matching the "
                  "energy of neighbour differences) came out 12-20 % low on the template at FWHM = spacing.", "",
                  "The truth here is the profile applied to the 1 mm volume. Where that volume is itself smoother along "
                  "z than in-plane (a 2D acquisition with thick slices, resampled to 1 mm: typically T2 and FLAIR), the "
                  "thick volume is blurred along z by the applied profile *and* that intrinsic blur, and the estimate, "
                  "which compares the slice axis with the in-plane axes, measures both together: for Gaussians "
                  "sqrt(applied^2 + intrinsic^2). The last column gives the intrinsic z blur this implies (Gaussian "
                  "rows, estimate above the truth); a consistent value across factors for one volume points to the "
                  "data, not to the estimator. The template's own anisotropy (its power along z is 1.2-1.9 times that "
                  "along x, rising with frequency, measured on the 1 mm template) biases it the other way.", "",
                  "| volume | split | true profile | factor | estimate, shape given | error | within 10 % | "
                  "auto: shape, FWHM | error | implied intrinsic z FWHM |",
                  "| --- | --- | --- | ---: | ---: | ---: | :---: | --- | ---: | ---: |"]
        for r in prof:
            e1 = (r["given_shape_estimate"] - r["fwhm"]) / r["fwhm"]
            e2 = (r["auto_estimate"] - r["fwhm"]) / r["fwhm"]
            sp = "template" if r["case"] == "MNI152 2009a" else splits.get(r["case"], "-")
            est = r["given_shape_estimate"]
            intrinsic = f"{np.sqrt(est**2 - r['fwhm']**2):.2f}" if r["shape"] == "gaussian" and est > r["fwhm"] else "-"
            lines.append(f"| {r['case']} {r['contrast']} | {sp} | {r['shape']} {r['fwhm']:g} | x{r['factor']} | "
                         f"{r['given_shape_estimate']:.2f} | {100 * e1:+.1f} % | {yn(abs(e1) <= PROFILE_TOLERANCE)} | "
                         f"{r['auto_shape']} {r['auto_estimate']:.2f} | {100 * e2:+.1f} % | {intrinsic} |")
        for label, keep in (("template and dev", lambda r: r["case"] == "MNI152 2009a" or splits.get(r["case"]) == "dev"),
                            ("held-out", lambda r: r["case"] != "MNI152 2009a" and splits.get(r["case"]) != "dev")):
            errs = [abs(r["given_shape_estimate"] - r["fwhm"]) / r["fwhm"] for r in prof if keep(r)]
            if errs:
                lines.append(f"\n{label}: shape given, mean |error| {100 * np.mean(errs):.1f} %, max {100 * max(errs):.1f} %, "
                             f"{sum(e <= PROFILE_TOLERANCE for e in errs)} of {len(errs)} within 10 %.")
    lines += ["", "GPU timings: not measured (this machine has no GPU).", ""]
    text = "\n".join(lines)
    write_text_atomic(path, text)
    write_text_atomic(path.with_suffix(".json"), json.dumps({"rows": rows, "summary": summ, "profiles": prof},
                                                            indent=1, default=str))
    return text


def run(args: Any, env: dict[str, Any], config: dict[str, Any], skip: set[str], log: Any, work: Path) -> str:
    root = Path(args.real_dir)
    contrasts = tuple(c.strip() for c in args.contrasts.split(",")) if args.contrasts else CONTRASTS
    cases = [c.strip() for c in args.cases.split(",")] if args.cases else None
    volumes = find_volumes(root, args.split, cases, contrasts)
    if not volumes:
        raise SystemExit(f"no volumes found under {root} (case folders with {'/'.join(contrasts)}.nii.gz"
                         + (f", split {args.split}" if args.split else "") + ")")
    log(f"real data: {len(volumes)} volumes from {root}")
    start, load0 = time.monotonic(), os.getloadavg()[0]
    prof: list[dict[str, Any]] = []
    if not args.no_profiles:
        from medtorch.io import read_volume

        prof_vols = [("MNI152 2009a", "T1", np.asarray(data.template().array, dtype=np.float32))]
        prof_vols += [(c, m, np.asarray(read_volume(p).array, dtype=np.float32)) for c, m, p in volumes]
        prof = bench_profiles(prof_vols, log)
    rows = [] if args.profiles_only else bench_real(work, volumes, args.threads, config, skip, log)
    return report(Path(args.real_out), root, args, env, rows, (load0, os.getloadavg()[0]),
                  time.monotonic() - start, config, prof)
