"""``python -m benchmarks.enhance [--quick]``: see :mod:`benchmarks.enhance`."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.enhance import data  # noqa: E402
from benchmarks.enhance.runner import run_isolated  # noqa: E402

M = "benchmarks.enhance.methods."
#: Denoisers: (label, function, extra params, is MedTorch's).
DENOISERS = [
    ("MedTorch selfsup (network + collab)", M + "medtorch_denoise", {"method": "selfsup"}, True),
    ("MedTorch collab (DCT pilot, guided NLM, Wiener)", M + "medtorch_denoise", {"method": "collab"}, True),
    ("MedTorch nlm", M + "medtorch_denoise", {"method": "nlm"}, True),
    ("SimpleITK curvature anisotropic diffusion", M + "sitk_anisotropic", {}, False),
    ("SimpleITK patch-based (Rician)", M + "sitk_patch_based", {"only_levels": [0.05]}, False),
    ("dipy NLM (Rician)", M + "dipy_nlmeans", {}, False),
    ("BM4D (bm4d package)", M + "bm4d_denoise", {}, False),
]
SR_SELFSUP = "MedTorch selfsup (blind: profile estimated)"
SR_INTERPOLATION = [("linear", "linear"), ("cubic B-spline", "bspline"), ("windowed sinc", "sinc")]
#: Denoising targets of the issue, per noise level: within this of BM4D, at least this over NLM.
WITHIN_BM4D_DB = 0.5
OVER_NLM_DB = 2.0
#: Super-resolution targets over cubic B-spline, and the time budget per volume.
SR_TARGET_DB = {2: 1.0, 4: 2.5, 5: 2.0}
SR_BUDGET_S = 600.0
#: Self-supervised SR training settings used here: the command's defaults
#: (``medtorch.enhance.srnet.SRTrainConfig``, read when the benchmark runs); the iterations are
#: the default for each factor (``medtorch.enhance.srnet.default_iterations``) unless
#: ``--sr-iterations`` says otherwise.
SR_CONFIG_KEYS = ("features", "layers", "batch", "patch", "patch_min_std")


def sr_config() -> dict[str, Any]:
    from medtorch.enhance.srnet import SRTrainConfig

    defaults = SRTrainConfig()
    return {**{k: getattr(defaults, k) for k in SR_CONFIG_KEYS}, "seed": 0}


def _psnr_ssim(out: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    from medtorch.enhance.metrics import psnr, ssim

    return psnr(out, ref, mask), ssim(out, ref, mask)


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- denoising -------------------------------------------------------------------------------------


def bench_denoise(work: Path, size: int, levels: list[float], threads: int, skip: set[str],
                  selfsup_iterations: int | None) -> list[dict[str, Any]]:
    clean = data.central_crop(size)
    mask = data.head_mask(clean)
    rows = []
    for level in levels:
        noisy, sigma = data.rician(clean, level)
        path = work / f"noisy_{level}.npy"
        np.save(path, noisy)
        p, s = _psnr_ssim(noisy, clean, mask)
        rows.append({"level": level, "method": "noisy input", "psnr": p, "ssim": s, "ours": False})
        for label, fn, extra, ours in DENOISERS:
            if any(k in label.lower() for k in skip):
                continue
            if "only_levels" in extra and level not in extra["only_levels"] and len(levels) > 1:
                continue  # too slow to run at every level (see the report)
            params = {"noisy": str(path), "sigma": sigma, "threads": threads,
                      **{k: v for k, v in extra.items() if k != "only_levels"}}
            if extra.get("method") == "selfsup" and selfsup_iterations:
                params["iterations"] = selfsup_iterations
            _log(f"denoise {level:.0%} {label}")
            res = run_isolated(fn, params, work / "out.npy", threads=threads, timeout=3600)
            row = {"level": level, "method": label, "ours": ours}
            if not res["ok"]:
                _log(f"  failed: {res['error']}")
                row["error"] = res["error"]
            else:
                out = np.load(work / "out.npy")
                row["psnr"], row["ssim"] = _psnr_ssim(out, clean, mask)
                row.update(seconds=res["seconds"], cpu_seconds=res["cpu_seconds"], peak_mb=res["peak_mb"],
                           info=res["info"])
                _log(f"  {row['psnr']:.2f} dB, SSIM {row['ssim']:.4f}, {res['seconds']:.1f} s")
            rows.append(row)
    return rows


def denoise_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for level in sorted({r["level"] for r in rows}):
        at = [r for r in rows if r["level"] == level and "psnr" in r]
        ours = [r for r in at if r["ours"]]
        bm4d = next((r for r in at if r["method"].startswith("BM4D")), None)
        nlm = next((r for r in at if r["method"].startswith("dipy NLM")), None)
        if not ours:
            continue
        best = max(ours, key=lambda r: r["psnr"])
        if bm4d is not None and nlm is not None:
            # the method that meets every criterion at once, when one does (its name is shown)
            meets = [r for r in ours if r["psnr"] >= bm4d["psnr"] - WITHIN_BM4D_DB
                     and r["psnr"] >= nlm["psnr"] + OVER_NLM_DB and r.get("seconds", 1e9) < bm4d.get("seconds", 0)]
            best = max(meets, key=lambda r: r["psnr"]) if meets else best
        t = {"level": level, "best": best["method"], "psnr": best["psnr"], "seconds": best.get("seconds"),
             "cpu_seconds": best.get("cpu_seconds")}
        if bm4d is not None:
            t.update(bm4d_psnr=bm4d["psnr"], bm4d_seconds=bm4d.get("seconds"), bm4d_cpu=bm4d.get("cpu_seconds"),
                     less_cpu_than_bm4d=best.get("cpu_seconds", 1e9) < bm4d.get("cpu_seconds", 0),
                     within_bm4d=best["psnr"] >= bm4d["psnr"] - WITHIN_BM4D_DB,
                     faster_than_bm4d=best.get("seconds", 1e9) < bm4d.get("seconds", 0))
        if nlm is not None:
            t.update(nlm_psnr=nlm["psnr"], over_nlm=best["psnr"] - nlm["psnr"],
                     beats_nlm=best["psnr"] >= nlm["psnr"] + OVER_NLM_DB)
        out.append(t)
    return out


# -- super-resolution ----------------------------------------------------------------------------------


def bench_superres(work: Path, factors: list[int], threads: int, crop: int | None,
                   config: dict[str, Any], skip: set[str] = frozenset()) -> tuple[list[dict[str, Any]], dict[int, Path]]:
    from medtorch.enhance.slice_profile import estimate_slice_fwhm
    from medtorch.io import write_volume
    from medtorch.volume import Volume

    base = data.template()
    if crop:
        a = base.array
        st = [(s - crop) // 2 for s in a.shape]
        sub = np.ascontiguousarray(a[st[0]:st[0] + crop, st[1]:st[1] + crop, st[2]:st[2] + crop])
        base = Volume(sub, base.geometry.with_size_spacing((crop, crop, crop), base.spacing))
    rows: list[dict[str, Any]] = []
    models: dict[int, Path] = {}
    for f in factors:
        thick, thin = data.thick_slices(f, volume=base)
        mask = data.head_mask(thin.array)
        thick_path = work / f"thick_x{f}.nrrd"
        write_volume(thick, thick_path)
        fwhm_est = estimate_slice_fwhm(thick.array, 0, f) * float(thin.spacing[2])
        _log(f"SR x{f}: estimated slice profile FWHM {fwhm_est:.2f} mm (true {f:.2f} mm)")
        methods = [(label, {"method": m}) for label, m in SR_INTERPOLATION]
        model_path = work / f"sr_x{f}.pt"
        # the blind path: the slice profile is estimated from the thick volume, as a user's would be
        methods.append((SR_SELFSUP, {"method": "selfsup", "config": config, "model_out": str(model_path)}))
        for label, extra in methods:
            if any(k in label.lower() for k in skip):
                continue
            _log(f"SR x{f} {label}")
            res = run_isolated(M + "medtorch_superres", {"thick": str(thick_path), "factor": f, **extra},
                               work / "out.npy", threads=threads, timeout=3600)
            row: dict[str, Any] = {"factor": f, "method": label, "fwhm_estimate": fwhm_est}
            if not res["ok"]:
                _log(f"  failed: {res['error']}")
                row["error"] = res["error"]
            else:
                out = np.load(work / "out.npy")
                if out.shape != thin.array.shape:
                    row["error"] = f"output shape {out.shape} != reference {thin.array.shape}"
                else:
                    row["psnr"], row["ssim"] = _psnr_ssim(out, thin.array, mask)
                row.update(seconds=res["seconds"], cpu_seconds=res["cpu_seconds"], peak_mb=res["peak_mb"],
                           info=res["info"])
                if "psnr" in row:
                    info = res["info"] or {}
                    row["fidelity"] = data.fidelity(thick, out, f, info.get("fwhm_mm"),
                                                    info.get("profile_shape") or "gaussian")
                _log(f"  {row.get('psnr', float('nan')):.2f} dB in {res['seconds']:.1f} s")
                if extra["method"] == "selfsup":
                    models[f] = model_path
                    np.save(work / f"sr_torch_x{f}.npy", out)
            rows.append(row)
    return rows, models


def sr_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for f in sorted({r["factor"] for r in rows}):
        at = {r["method"]: r for r in rows if r["factor"] == f and "psnr" in r}
        b = at.get("cubic B-spline")
        s = at.get(SR_SELFSUP)
        if b is None or s is None:
            continue
        gain = s["psnr"] - b["psnr"]
        out.append({"factor": f, "bspline": b["psnr"], "selfsup": s["psnr"], "gain": gain,
                    "target": SR_TARGET_DB.get(f), "reached": gain >= SR_TARGET_DB.get(f, 0.0),
                    "seconds": s.get("seconds"), "in_budget": s.get("seconds", 1e9) <= SR_BUDGET_S})
    return out


# -- deployment: ONNX and INT8 -----------------------------------------------------------------------


def bench_deploy(work: Path, models: dict[int, Path], threads: int, crop: int | None) -> list[dict[str, Any]]:
    from medtorch.enhance.weights import ONNX_TOLERANCE, export_onnx, load_model, quantize_onnx
    from medtorch.volume import Volume

    rows = []
    base = data.template()
    if crop:
        a = base.array
        st = [(s - crop) // 2 for s in a.shape]
        base = Volume(np.ascontiguousarray(a[st[0]:st[0] + crop, st[1]:st[1] + crop, st[2]:st[2] + crop]),
                      base.geometry.with_size_spacing((crop, crop, crop), base.spacing))
    for f, model_path in sorted(models.items()):
        _, thin = data.thick_slices(f, volume=base)
        mask = data.head_mask(thin.array)
        model = load_model(model_path)
        onnx = export_onnx(model.net, work / f"sr_x{f}.onnx")
        int8 = quantize_onnx(onnx, work / f"sr_x{f}_int8.onnx")
        ref_out = None
        for label, runner_path in (("torch (float32)", None), ("onnxruntime (float32)", onnx),
                                   ("onnxruntime dynamic INT8", int8)):
            _log(f"deploy x{f} {label}")
            params = {"thick": str(work / f"thick_x{f}.nrrd"), "model": str(model_path), "threads": threads,
                      "onnx": str(runner_path) if runner_path else None}
            res = run_isolated(M + "medtorch_apply_model", params, work / "out.npy", threads=threads, timeout=3600)
            row: dict[str, Any] = {"factor": f, "runtime": label}
            if not res["ok"]:
                row["error"] = res["error"]
                rows.append(row)
                continue
            out = np.load(work / "out.npy")
            if ref_out is None:
                ref_out = out
            row["psnr"], row["ssim"] = _psnr_ssim(out, thin.array, mask)
            scale = float(model.metadata["intensity_scale"][1] - model.metadata["intensity_scale"][0])
            row["max_diff"] = float(np.abs(out - ref_out).max()) / scale  # normalised to the [0, 1] scale
            row["tolerance"] = ONNX_TOLERANCE if "float32" in label and runner_path else None
            row.update(seconds=res["seconds"], cpu_seconds=res["cpu_seconds"], peak_mb=res["peak_mb"],
                       size_mb=(Path(runner_path).stat().st_size if runner_path else model_path.stat().st_size) / 1e6)
            rows.append(row)
    return rows


# -- report -------------------------------------------------------------------------------------------


def _environment(threads: int) -> dict[str, Any]:
    import SimpleITK as sitk
    import torch

    env = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "python": platform.python_version(),
           "torch": torch.__version__, "simpleitk": sitk.Version_VersionString(), "cpus": os.cpu_count(),
           "threads": threads, "platform": platform.platform()}
    for pkg in ("bm4d", "dipy", "monai", "onnxruntime"):
        try:
            from importlib.metadata import version

            env[pkg] = version(pkg)
        except Exception:  # pragma: no cover
            env[pkg] = "missing"
    try:
        with open("/proc/cpuinfo") as fh:
            env["cpu"] = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "?")
    except OSError:  # pragma: no cover
        env["cpu"] = platform.processor()
    return env


def write_report(path: Path, args: argparse.Namespace, env: dict[str, Any], den: list[dict[str, Any]],
                 den_t: list[dict[str, Any]], sr: list[dict[str, Any]], sr_t: list[dict[str, Any]],
                 dep: list[dict[str, Any]], loads: tuple[float, float], total_s: float) -> str:
    from medtorch.io import write_text_atomic

    mode = "quick" if args.quick else "full"
    lines = [
        "# Enhancement benchmark (EnhanceSR)",
        "",
        f"Generated by `python -m benchmarks.enhance{' --quick' if args.quick else ''}` ({mode} mode) on "
        f"{env['date']} in {total_s / 60:.1f} min. Do not edit by hand: rerun the command.",
        "",
        *(["**Quick mode**: small crops, one noise level, x4 only, a short selfsup denoising training; the target checks below "
           "are indicative only (the targets are set for the full run).", ""] if args.quick else []),
        f"Machine: {env['cpu']}, {env['cpus']} CPU cores, no GPU; every method runs in its own process with "
        f"{env['threads']} threads. Load average (1 min) at start / end: {loads[0]:.1f} / {loads[1]:.1f} -- the "
        "machine was shared with other jobs, so wall times are longer than on an idle machine; CPU time (all "
        "threads) is given beside them. Peak memory is the process's peak resident size above its size after "
        "loading the input and the libraries.",
        f"Versions: torch {env['torch']}, MONAI {env['monai']}, SimpleITK {env['simpleitk']}, "
        f"bm4d {env['bm4d']}, dipy {env['dipy']}, onnxruntime {env['onnxruntime']}, Python {env['python']}.",
        "",
    ]
    if den:
        size = args.denoise_size
        lines += [
            "## Denoising",
            "",
            f"Data: the central {size}^3 of the MNI152 2009a T1 template (1 mm, scaled to [0, 1]) with Rician noise "
            f"of {', '.join(f'{lv:.0%}' for lv in sorted({r['level'] for r in den}))} of the maximum (seed {data.SEED}). PSNR (peak = 1) and SSIM (3D Gaussian window) inside "
            "the head mask (clean > 5 % of the maximum, closed, holes filled). The peers get the true noise "
            "sigma; MedTorch estimates its own (noise model and sigma from the data). BM4D is the `bm4d` "
            "package with its defaults (`bm4d.bm4d(noisy, sigma)`, on the magnitude as is); dipy NLM is "
            "`nlmeans(..., patch_radius=1, block_radius=5, rician=True)`; anisotropic diffusion uses "
            f"conductance {_fmt(1.0, 1)}, {10} iterations, time step 0.0625; SimpleITK's patch-based filter "
            "its Rician model, patch radius 2, one iteration, kernel bandwidth 2 sigma (the best of sigma, 2 sigma "
            "and its automatic estimate on a 48^3 crop); it runs at 5 % only, being slow. MedTorch's collab and selfsup choose the guided-NLM "
            "parameter h for each volume by SURE, from the noisy data alone (`medtorch.enhance.selfsup_denoise."
            "sure_select_h`; its time is included); the h chosen is shown after the method's name.",
            "",
            "| noise | method | PSNR (dB) | SSIM | time (s) | CPU time (s) | peak memory (MB) |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in den:
            label = r["method"]
            h = (r.get("info") or {}).get("collab_h")
            if h is not None:
                label += f", h = {h:.2f} sigma by SURE"
            name = f"**{label}**" if r.get("ours") else label
            if "error" in r:
                lines.append(f"| {r['level']:.0%} | {name} | failed: {r['error'][:80]} | | | | |")
                continue
            lines.append(f"| {r['level']:.0%} | {name} | {_fmt(r.get('psnr'))} | {_fmt(r.get('ssim'), 4)} | "
                         f"{_fmt(r.get('seconds'), 1)} | {_fmt(r.get('cpu_seconds'), 1)} | {_fmt(r.get('peak_mb'), 0)} |")
        lines += ["", "Targets (issue #6): within 0.5 dB of BM4D, at least 2 dB over NLM, in less time than BM4D "
                  "(at 5 %: >= 36.0 dB; the same rule at 3 and 9 %). 'faster' compares wall time (the target); CPU time "
                  "is shown beside it because on a shared machine multi-threaded methods lose wall time waiting for "
                  "cores (BM4D runs on one thread).", "",
                  "| noise | MedTorch method (the best that meets all three, else the best) | PSNR (dB) | BM4D (dB) | within 0.5 dB of BM4D | over dipy NLM (dB) "
                  "| >= +2 dB | time (s) vs BM4D (s) | faster | CPU time (s) vs BM4D (s) | less CPU |",
                  "| --- | --- | ---: | ---: | :---: | ---: | :---: | ---: | :---: | ---: | :---: |"]
        for t in den_t:
            yn = lambda b: "-" if b is None else ("yes" if b else "**no**")  # noqa: E731
            lines.append(f"| {t['level']:.0%} | {t['best']} | {_fmt(t['psnr'])} | {_fmt(t.get('bm4d_psnr'))} | "
                         f"{yn(t.get('within_bm4d'))} | {_fmt(t.get('over_nlm'))} | {yn(t.get('beats_nlm'))} | "
                         f"{_fmt(t.get('seconds'), 1)} vs {_fmt(t.get('bm4d_seconds'), 1)} | {yn(t.get('faster_than_bm4d'))} | "
                         f"{_fmt(t.get('cpu_seconds'), 1)} vs {_fmt(t.get('bm4d_cpu'), 1)} | "
                         f"{yn(t.get('less_cpu_than_bm4d'))} |")
        lines.append("")
    if sr:
        what = f"the central {args.sr_crop}^3 of the template" if args.sr_crop else "the whole template (197 x 233 x 189, 1 mm)"
        lines += [
            "## Through-plane super-resolution",
            "",
            f"Data: {what}, thick axial slices simulated along k with a Gaussian slice profile (FWHM = the thick "
            "spacing) and one thick slice per `factor` thin slices, centred on them; the reference is the thin volume, "
            "which lies exactly on the super-resolved grid (the output grid rule of `medtorch.enhance.superres`). "
            "PSNR (peak = the data range) and SSIM inside the head mask. Self-supervised SR learns from the thick "
            f"volume alone (settings {json.dumps(config_for(args))}, iterations "
            f"{'as given' if args.sr_iterations else 'the default for the factor'}); its slice profile is estimated from the thick "
            "volume (the blind path, as a user runs it; the estimate is listed beside the truth). Real 1 mm brain MRI "
            "and the profile estimate against the truth for box profiles and slice gaps: `enhance_real.md` "
            "(`--real-dir`).",
            "",
            "| factor | method | PSNR (dB) | SSIM | time (s) | CPU time (s) | peak memory (MB) | profile FWHM estimate (mm) |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in sr:
            name = f"**{r['method']}**" if r["method"].startswith("MedTorch") else r["method"]
            if "error" in r and "psnr" not in r:
                lines.append(f"| x{r['factor']} | {name} | failed: {r['error'][:80]} | | | | | |")
                continue
            lines.append(f"| x{r['factor']} | {name} | {_fmt(r.get('psnr'))} | {_fmt(r.get('ssim'), 4)} | "
                         f"{_fmt(r.get('seconds'), 1)} | {_fmt(r.get('cpu_seconds'), 1)} | {_fmt(r.get('peak_mb'), 0)} | "
                         f"{_fmt(r.get('fwhm_estimate'))} (true {r['factor']:.2f}) |")
        lines += ["", "Targets (issue #6): over cubic B-spline by >= 1 dB (x2), >= 2.5 dB (x4), >= 2 dB (x5), in "
                  "<= 10 min per volume on 2 CPU cores.", "",
                  "| factor | cubic B-spline (dB) | MedTorch selfsup (dB) | gain (dB) | target (dB) | reached | time (s) | within 10 min |",
                  "| --- | ---: | ---: | ---: | ---: | :---: | ---: | :---: |"]
        for t in sr_t:
            lines.append(f"| x{t['factor']} | {_fmt(t['bspline'])} | {_fmt(t['selfsup'])} | {t['gain']:+.2f} | "
                         f"+{_fmt(t['target'], 1)} | {'yes' if t['reached'] else '**no**'} | {_fmt(t['seconds'], 1)} | "
                         f"{'yes' if t['in_budget'] else '**no**'} |")
        gains = {t["factor"]: t["gain"] for t in sr_t}
        lines += [""] + data.fidelity_lines(
            [([f"x{r['factor']}", r["method"]], r.get("fidelity"), gains.get(r["factor"]) if r["method"] == SR_SELFSUP else None)
             for r in sr if "psnr" in r], ["factor", "method"])
        lines.append("")
    if dep:
        lines += [
            "## Deployment: saved weights, ONNX and dynamic INT8",
            "",
            "The self-supervised SR model trained above is saved (state dict + metadata), reloaded and applied "
            "to the same thick volume with torch, with onnxruntime (float32, the exported ONNX graph) and with "
            "onnxruntime after dynamic INT8 quantisation (`onnxruntime.quantization.quantize_dynamic`, INT8 weights). "
            "'max difference' is the largest voxel difference from the torch output on the model's [0, 1] intensity "
            "scale; the stated ONNX tolerance is 1e-4.",
            "",
            "| factor | runtime | PSNR (dB) | SSIM | max difference from torch | time (s) | CPU time (s) | model size (MB) |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in dep:
            if "error" in r:
                lines.append(f"| x{r['factor']} | {r['runtime']} | failed: {r['error'][:80]} | | | | | |")
                continue
            lines.append(f"| x{r['factor']} | {r['runtime']} | {_fmt(r['psnr'])} | {_fmt(r['ssim'], 4)} | "
                         f"{r['max_diff']:.2e} | {_fmt(r['seconds'], 1)} | {_fmt(r['cpu_seconds'], 1)} | {r['size_mb']:.2f} |")
        lines.append("")
    lines += ["GPU timings: not measured (this machine has no GPU).", ""]
    text = "\n".join(lines)
    write_text_atomic(path, text)
    return text


def config_for(args: argparse.Namespace) -> dict[str, Any]:
    cfg = sr_config()
    if args.sr_iterations:
        cfg["iterations"] = args.sr_iterations
    return cfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.enhance", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small data, 5 %% noise and x4 only (a few minutes)")
    p.add_argument("--out", default=str(REPO / "docs" / "benchmarks" / "enhance.md"), help="Markdown report")
    p.add_argument("--parts", default="denoise,sr,deploy", help="comma-separated: denoise, sr, deploy")
    p.add_argument("--threads", type=int, default=2, help="threads per method (default 2)")
    p.add_argument("--skip", default="", help="comma-separated words: skip methods (denoisers, SR methods) whose name contains one")
    p.add_argument("--workdir", default=None, help="keep intermediate files here")
    p.add_argument("--sr-iterations", type=int, default=None, help="override the self-supervised SR iterations")
    p.add_argument("--factors", default=None, help="comma-separated SR factors instead of the mode's (e.g. 4)")
    p.add_argument("--levels", default=None, help="comma-separated noise levels instead of the mode's (e.g. 0.05)")
    p.add_argument("--real-dir", default=None,
                   help="folder of real 1 mm brain MRI (case folders with flair/t1/t1ce/t2 NIfTI files, BraTS layout): "
                        "run only the real-data super-resolution benchmark (benchmarks/enhance/real.py)")
    p.add_argument("--split", default=None, help="with --real-dir: only the cases of this split in its cases.csv (e.g. held-out)")
    p.add_argument("--cases", default=None, help="with --real-dir: comma-separated case folders to run")
    p.add_argument("--contrasts", default=None, help="with --real-dir: comma-separated contrasts (default t1,t1ce,t2,flair)")
    p.add_argument("--profiles-only", action="store_true", help="with --real-dir: only the slice-profile estimates (no SR)")
    p.add_argument("--no-profiles", action="store_true", help="with --real-dir: skip the slice-profile estimate table")
    p.add_argument("--real-out", default=str(REPO / "docs" / "benchmarks" / "enhance_real.md"),
                   help="with --real-dir: Markdown report (a .json beside it)")
    args = p.parse_args(argv)
    if args.real_dir:
        from benchmarks.enhance import real

        args.command_line = "python -m benchmarks.enhance " + " ".join(sys.argv[1:] if argv is None else argv)
        with tempfile.TemporaryDirectory(prefix="enh_real_") as tmp:
            work = Path(args.workdir) if args.workdir else Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            print(real.run(args, _environment(args.threads), config_for(args),
                           {s.strip().lower() for s in args.skip.split(",") if s.strip()}, _log, work))
        return 0
    parts = {s.strip() for s in args.parts.split(",") if s.strip()}
    args.denoise_size = 64 if args.quick else 128
    args.sr_crop = 96 if args.quick else None
    levels = [0.05] if args.quick else [0.03, 0.05, 0.09]
    factors = [4] if args.quick else [2, 4, 5]
    if args.factors:
        factors = [int(v) for v in args.factors.split(",") if v.strip()]
    if args.levels:
        levels = [float(v) for v in args.levels.split(",") if v.strip()]
    skip = {s.strip().lower() for s in args.skip.split(",") if s.strip()}
    start = time.monotonic()
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="enh_bench_") as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        den = bench_denoise(work, args.denoise_size, levels, args.threads, skip,
                            30 if args.quick else None) if "denoise" in parts else []
        sr, models = bench_superres(work, factors, args.threads, args.sr_crop, config_for(args), skip) if "sr" in parts else ([], {})
        dep = bench_deploy(work, {4: models[4]} if 4 in models else models, args.threads, args.sr_crop) \
            if "deploy" in parts and models else []
        total = time.monotonic() - start
        text = write_report(Path(args.out), args, _environment(args.threads), den, denoise_targets(den), sr,
                            sr_targets(sr), dep, (load0, os.getloadavg()[0]), total)
        (work / "results.json").write_text(json.dumps({"denoise": den, "superres": sr, "deploy": dep}, indent=1,
                                                      default=str))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
