"""Seeded segmentation on a VARIED phantom family: the distribution of whole-tumor Dice of MedTorch
beside ITK FastGrowCut (Slicer's *Grow from seeds*), on the same 3-slice strokes in the same run.

``python -m benchmarks.segment.family_bench [--quick] [--n N] [--family-seed S] [--out PATH]
[--workdir DIR] [--threads N]`` (also the part ``family`` of ``python -m benchmarks.segment``).

Data
----
:func:`medtorch.segment.tumor_phantom.phantom_family` on the MNI ICBM152 2009a template (1 mm):
phantom ``i`` is drawn with ``default_rng([family seed, i])`` from the ranges of
:data:`~medtorch.segment.tumor_phantom.FAMILY_RANGES` (1-3 lesions of 5-40 mm, ellipsoids,
multi-lobed and field-deformed shapes, bright or dark lesions, oedema, thin rims, necrosis,
lesions touching CSF with poorly suppressed FLAIR CSF, Gaussian or Rician noise of 2-12 %, bias
0-0.35, 1x1x5 mm slices for a quarter of them), each on a crop 24 mm around its lesions. This is
NOT the setting the method was tuned on (``make_tumor_phantom``'s one fixed tumor). Channels:
FLAIR and T1, as on the real cases. Nothing is written to the repository but the report.

Seeds: 3-slice strokes (:func:`medtorch.segment.seed_protocols.three_slice_strokes`, ring
background, the phantom's index as seed); every lesion gets its own three slices. Binary seeds
(whole tumor 1, background 2).

Methods: ``medtorch`` through :func:`benchmarks.segment.real_bench.medtorch_segment` (default
options; option rows as in the real benchmark when ``SeededOptions`` has the field), and
``FastGrowCut`` on FLAIR on the seeds' box grown by 20 % per side
(:func:`benchmarks.segment.real_bench.growcut_segment`). Each (phantom, method) is guarded: a
failure is a row with the error.

Report: mean, 10th percentile, min and quantiles of the whole-tumor Dice per method, a histogram,
rows per subgroup (small lesions < 15 mm, dark lesions, anisotropic, several lesions, near CSF), and
the issue's targets (mean >= 0.93, 10th percentile >= 0.85). Writes
``docs/benchmarks/segment_family.md`` and ``segment_family.json`` (``--quick``: into the workdir).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "benchmarks" / "segment_family.md"
N_FULL, N_QUICK = 40, 4
FAMILY_SEED = 14
CHANNELS = ("FLAIR", "T1")
SUBGROUPS = {"small": "small lesions (< 15 mm)", "dark": "dark lesions", "anisotropic": "anisotropic (1x1x5 mm)",
             "multi_lesion": "several lesions", "near_csf": "next to CSF", "rim": "thin rim", "oedema": "with oedema"}
TARGETS = {"mean": 0.93, "p10": 0.85}
BINS = (0.0, 0.5, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0001)


def run_phantom(ph: Any, methods: list[str], variants: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    from benchmarks.segment.real_bench import GROWCUT, dice, growcut_segment, medtorch_segment, slicer_region
    from medtorch.segment.seed_protocols import three_slice_strokes
    from medtorch.volume import Volume

    p = ph.parameters
    base = {"index": p["index"], "params": {k: p[k] for k in ("n_lesions", "diameters_mm", "shape", "dark", "rim",
                                                                "oedema", "necrosis", "near_csf", "anisotropic",
                                                                "noise", "noise_kind", "bias", "bias_kind",
                                                                "flair_contrast", "small", "multi_lesion")}}
    rows: list[dict[str, Any]] = []
    truth = (ph.truth.array > 0).astype(np.uint8)
    wt = Volume(truth, ph.truth.geometry, "label")
    try:
        seeds = three_slice_strokes(wt, seed=int(p["index"])).seeds
    except Exception as e:  # noqa: BLE001
        return [{**base, "method": "(seeds)", "error": f"{type(e).__name__}: {e}"}]
    chans = [ph.channels[c] for c in CHANNELS]
    for name, opts in variants.items():
        if name not in methods:
            continue
        try:
            res, _, wall = medtorch_segment(chans, seeds, None, opts)
            rows.append({**base, "method": name, "dice": dice(res.label.array, truth),
                         "seconds": float(res.seconds.get("total", np.nan)), "wall": wall})
        except Exception as e:  # noqa: BLE001
            rows.append({**base, "method": name, "error": f"{type(e).__name__}: {str(e)[:300]}"})
    if GROWCUT in methods:
        try:
            lab, wall = growcut_segment(ph.channels["FLAIR"].array, seeds.array, slicer_region(seeds.array),
                                        np.asarray(ph.truth.geometry.spacing)[::-1])
            rows.append({**base, "method": GROWCUT, "dice": dice(lab, truth), "seconds": wall, "wall": wall})
        except Exception as e:  # noqa: BLE001
            rows.append({**base, "method": GROWCUT, "error": f"{type(e).__name__}: {str(e)[:300]}"})
    return rows


def _dist(d: list[float]) -> dict[str, Any]:
    if not d:
        return {"n": 0}
    a = np.asarray(d)
    return {"n": len(d), "mean": float(a.mean()), "p10": float(np.percentile(a, 10)), "min": float(a.min()),
            "q25": float(np.percentile(a, 25)), "median": float(np.median(a)), "q75": float(np.percentile(a, 75)),
            "max": float(a.max()), "hist": [int(v) for v in np.histogram(a, BINS)[0]]}


def summarise(rows: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        d = [r["dice"] for r in mine if "dice" in r]
        s: dict[str, Any] = {"all": _dist(d), "errors": sum(1 for r in mine if "error" in r),
                             "seconds": [r["seconds"] for r in mine if "seconds" in r]}
        for key in SUBGROUPS:
            s[key] = _dist([r["dice"] for r in mine if "dice" in r and r["params"].get(key)])
        out[m] = s
    mt = out.get("medtorch", {}).get("all", {})
    if mt.get("n"):
        out["targets"] = {"mean": (mt["mean"], TARGETS["mean"], mt["mean"] >= TARGETS["mean"]),
                          "p10": (mt["p10"], TARGETS["p10"], mt["p10"] >= TARGETS["p10"])}
    return out


def _f(v: Any, nd: int = 3) -> str:
    return "–" if v is None else f"{v:.{nd}f}"


def write_report(path: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    methods = meta["methods"]
    summary = summarise(rows, methods)
    quick = " (QUICK RUN: a few phantoms, not the result)" if meta["quick"] else ""
    lines = [
        "# Segmentation: seeded segmentation on a varied phantom family" + quick,
        "",
        "Generated by `python -m benchmarks.segment.family_bench" + "".join(f" {a}" for a in meta["argv"])
        + "` (do not edit by hand).",
        "",
        f"* Data: {meta['n']} phantoms of `phantom_family(n, seed={meta['family_seed']})` on the MNI ICBM152 2009a "
        "template: 1-3 lesions of 5-40 mm (ellipsoid, multi-lobed, field-deformed), bright or dark in FLAIR, oedema, "
        "thin rims, necrosis, lesions next to CSF (poorly suppressed FLAIR CSF), Gaussian or Rician noise 2-12 %, bias "
        "0-0.35, a quarter on 1x1x5 mm grids; each on a crop 24 mm around its lesions. Not the phantom the method was "
        "tuned on. Channels: FLAIR + T1.",
        "* Seeds: 3-slice strokes per lesion (ring background), binary (whole tumor 1, background 2).",
        "* Methods: `medtorch` = `SeededSegmenter` (as `seeded_segment`), default options"
        + ("; " + ", ".join(f"`{k}` ({', '.join(f'{a}={b!r}' for a, b in v.items())})"
                            for k, v in meta["variants"].items() if v) if any(meta["variants"].values()) else "")
        + "; `FastGrowCut` = `itk.FastGrowCut` on FLAIR, distance penalty 0, on the seeds' box grown by 20 % per side "
        "(Slicer's *Grow from seeds* without a mask).",
        f"* Machine: {meta['cpu']}, {meta['cores']} cores, {meta['threads']} threads; load {meta['load_min']:.1f} - "
        f"{meta['load_max']:.1f}" + (" (loaded: times are upper bounds)." if meta["load_max"] > meta["cores"] else "."),
        "",
        "## Whole-tumor Dice: distribution",
        "",
        "| Method | n | mean | 10th pct | min | 25th pct | median | 75th pct | max | errors | time median (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in methods:
        s = summary[m]["all"]
        if not s.get("n"):
            lines.append(f"| {m} | 0 | | | | | | | | {summary[m]['errors']} | |")
            continue
        sec = summary[m]["seconds"]
        lines.append(f"| {m} | {s['n']} | {s['mean']:.3f} | {s['p10']:.3f} | {s['min']:.3f} | {s['q25']:.3f} | "
                     f"{s['median']:.3f} | {s['q75']:.3f} | {s['max']:.3f} | {summary[m]['errors']} | "
                     f"{_f(float(np.median(sec)) if sec else None, 2)} |")
    labels = [f"{a:.2f}-{min(b, 1.0):.2f}" for a, b in zip(BINS[:-1], BINS[1:])]
    lines += ["", "### Histogram (phantoms per Dice bin)", "", "| Method | " + " | ".join(labels) + " |",
              "| --- | " + " | ".join("---:" for _ in labels) + " |"]
    for m in methods:
        h = summary[m]["all"].get("hist")
        if h:
            lines.append(f"| {m} | " + " | ".join(str(v) for v in h) + " |")
    lines += ["", "## Subgroups (mean / 10th pct / min, n)", "",
              "| Subgroup | " + " | ".join(methods) + " |", "| --- | " + " | ".join("---" for _ in methods) + " |"]
    for key, label in SUBGROUPS.items():
        cells = []
        for m in methods:
            s = summary[m][key]
            cells.append(f"{s['mean']:.3f} / {s['p10']:.3f} / {s['min']:.3f}, n={s['n']}" if s.get("n") else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    t = summary.get("targets")
    lines += ["", "## Targets (issue 14, `medtorch` row)", ""]
    if t:
        for key, what in (("mean", "mean"), ("p10", "10th percentile")):
            v, target, ok = t[key]
            lines.append(f"* Whole-tumor Dice {what} >= {target}: {v:.3f} ({'met' if ok else 'NOT met'})")
    else:
        lines.append("* not measured (no MedTorch result)")
    lines += ["", "## Per phantom", "", "| # | lesions (mm) | shape | flags | noise | bias | " + " | ".join(methods) + " |",
              "| ---: | --- | --- | --- | ---: | ---: | " + " | ".join("---:" for _ in methods) + " |"]
    by = {(r["index"], r["method"]): r for r in rows}
    for i in sorted({r["index"] for r in rows}):
        p = next(r["params"] for r in rows if r["index"] == i)
        flags = ", ".join(k for k in ("dark", "rim", "oedema", "necrosis", "near_csf", "anisotropic") if p.get(k)) or "–"
        cells = []
        for m in methods:
            r = by.get((i, m))
            cells.append("–" if r is None else ("error" if "error" in r else f"{r['dice']:.3f}"))
        lines.append(f"| {i} | {', '.join(f'{d:.0f}' for d in p['diameters_mm'])} | {p['shape']} | {flags} | "
                     f"{p['noise'] * 100:.0f} % {p['noise_kind']} | {p['bias']:.2f} | " + " | ".join(cells) + " |")
    errors = [r for r in rows if "error" in r]
    if errors:
        lines += ["", "Failed runs:", ""] + [f"* phantom {r['index']} / {r['method']}: {r['error']}" for r in errors]
    lines += ["", "<details><summary>Raw results</summary>", "", "```json", json.dumps(rows, indent=1, default=str),
              "```", "", "</details>", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp, path)
    js = path.with_suffix(".json")
    tmp = js.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"meta": meta, "summary": summary}, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, js)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.segment.family_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"{N_QUICK} phantoms instead of {N_FULL}")
    p.add_argument("--n", type=int, help="number of phantoms")
    p.add_argument("--family-seed", type=int, default=FAMILY_SEED, help=f"family seed (default {FAMILY_SEED})")
    p.add_argument("--methods", nargs="+", help="only these methods")
    p.add_argument("--workdir", type=Path, help="scratch folder (default: a new temporary folder)")
    p.add_argument("--out", type=Path, help=f"report (default: {DOC.relative_to(REPO)}; --quick: <workdir>/segment_family.md)")
    p.add_argument("--threads", type=int, default=2, help="threads (default 2)")
    args = p.parse_args(argv)

    import torch

    from benchmarks.segment.dl_timing import _cpu_name
    from benchmarks.segment.real_bench import GROWCUT, _shown_argv, medtorch_variants
    from medtorch.segment.tumor_phantom import family_phantom, mni_tissue

    torch.set_num_threads(args.threads)
    try:
        import itk

        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(args.threads)
    except Exception:  # noqa: BLE001 - the GrowCut rows become errors
        pass
    work = args.workdir or Path(tempfile.mkdtemp(prefix="medtorch-family-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    n = args.n or (N_QUICK if args.quick else N_FULL)
    variants = medtorch_variants()
    methods = args.methods or (list(variants) + [GROWCUT])
    loads = [os.getloadavg()[0]]
    tissue = mni_tissue()
    rows: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        try:
            ph = family_phantom(i, args.family_seed, tissue, CHANNELS)  # = phantom_family(n, seed)'s i-th
        except Exception as e:  # noqa: BLE001 - a phantom that cannot be made is a row
            rows.append({"index": i, "params": {"diameters_mm": [], "shape": "?", "noise": 0.0, "noise_kind": "?",
                                                "bias": 0.0}, "method": "(phantom)", "error": f"{type(e).__name__}: {e}"})
            continue
        made = time.perf_counter() - t0
        r = run_phantom(ph, methods, variants)
        rows += r
        loads.append(os.getloadavg()[0])
        print(f"[family] {i}: {ph.truth.array.shape} voxels, made in {made:.1f} s; " + ", ".join(
            f"{x['method']} {x['dice']:.3f}" if "dice" in x else f"{x['method']} ERROR" for x in r)
            + f" (load {loads[-1]:.1f})", flush=True)
    print(f"[family] {n} phantoms in {time.perf_counter() - t_all:.0f} s", flush=True)
    meta = {"argv": _shown_argv(argv if argv is not None else sys.argv[1:]), "quick": args.quick, "n": n,
            "family_seed": args.family_seed, "methods": methods, "variants": variants, "threads": args.threads,
            "cores": os.cpu_count(), "cpu": _cpu_name() or platform.machine(), "torch": torch.__version__,
            "load_min": float(min(loads)), "load_max": float(max(loads))}
    out = args.out or (work / "segment_family.md" if args.quick else DOC)
    write_report(out, rows, meta)
    print(f"[family] report written to {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
