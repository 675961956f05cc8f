"""The Markdown report: tables computed from the results, targets judged from them."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from collections import defaultdict
from typing import Any

import numpy as np

#: The issue's targets for the MedTorch engine (2 CPU cores).
TARGET_TRE_ISO_MM = 0.10
TARGET_TRE_THICK_MM = 0.25
TARGET_TRE_DEFORMABLE_MM = 0.6
TARGET_DEFORMABLE_TIME_S = 30.0
TARGET_TIME_RATIO = 0.5
PEERS = ("sitk", "elastix", "ants")
ENGINE_LABELS = {
    "medtorch": "MedTorch (torch, CPU)",
    "sitk": "SimpleITK, corrected recipe",
    "sitk-seed": "SimpleITK, original recipe",
    "elastix": "elastix (defaults)",
    "ants": "ANTs (antspyx)",
}


def category(spec: dict[str, Any]) -> str:
    if spec["mode"] == "deformable":
        return "deformable"
    if spec["name"].startswith("quick"):
        return "quick"
    return "thick" if max(spec["moving_spacing_mm"]) >= 4.0 else "iso"


CATEGORY_TITLES = {
    "iso": "Rigid/affine, 2 mm isotropic, +-12 deg/+-12 mm",
    "thick": "Rigid/affine, 1 x 1 x 5 mm slices, bias field, cropped FOV, +-30 deg/+-40 mm",
    "deformable": "Deformable, 256^3 at 1 mm",
    "quick": "Quick cases (4 mm)",
}
CATEGORY_TARGET = {"iso": TARGET_TRE_ISO_MM, "thick": TARGET_TRE_THICK_MM, "deformable": TARGET_TRE_DEFORMABLE_MM,
                   "quick": None}


def _f(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    if isinstance(v, (int, np.integer)):
        return str(v)
    return f"{v:.{digits}f}"


def _ok(r: dict[str, Any]) -> bool:
    return r.get("status") == "ok" and r.get("tre_mean_mm") is not None


def machine_summary() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import psutil

        mem = f"{psutil.virtual_memory().total / 1024**3:.0f} GB"
    except ImportError:  # pragma: no cover
        mem = "?"
    return {"cpu": cpu, "cores": str(os.cpu_count()), "memory": mem, "python": platform.python_version(),
            "os": platform.platform()}


def speed_verdicts(results: list[dict[str, Any]], specs: dict[str, dict[str, Any]],
                   clock: str = "time_s") -> list[dict[str, Any]]:
    """Per linear case: MedTorch's time against the fastest peer at least as accurate.

    A peer counts when its mean TRE is at most ``max(target, MedTorch's mean TRE)``; with no
    such peer the comparison has nothing to beat (reported as such). ``clock`` is
    ``time_s`` (wall) or ``cpu_s`` (CPU seconds of all threads).
    """
    by_case: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in results:
        by_case[r["case"]][r["engine"]] = r
    out = []
    for name, rows in by_case.items():
        spec = specs[name]
        cat = category(spec)
        target = CATEGORY_TARGET[cat]
        mt = rows.get("medtorch")
        if cat not in ("iso", "thick") or target is None or mt is None or not _ok(mt):
            continue  # the time target is for the rigid/affine pairs (deformable has its own)
        bar = max(target, mt["tre_mean_mm"])
        peers = [rows[p] for p in PEERS if p in rows and _ok(rows[p]) and rows[p]["tre_mean_mm"] <= bar]
        fastest = min(peers, key=lambda r: r[clock]) if peers else None
        ratio = mt[clock] / max(fastest[clock], 1e-9) if fastest else None
        out.append({"case": name, "category": cat, "medtorch_time_s": mt[clock], "medtorch_tre": mt["tre_mean_mm"],
                    "peer": fastest["engine"] if fastest else None, "peer_time_s": fastest[clock] if fastest else None,
                    "peer_tre": fastest["tre_mean_mm"] if fastest else None, "ratio": ratio,
                    "met": (ratio is None) or ratio <= TARGET_TIME_RATIO})
    return out


def judge_targets(results: list[dict[str, Any]], specs: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    """``(target, verdict, evidence)`` rows; verdicts are MET, NOT MET or NOT MEASURED."""
    mt = [r for r in results if r["engine"] == "medtorch"]
    rows: list[tuple[str, str, str]] = []

    def cat_rows(cat: str) -> list[dict[str, Any]]:
        return [r for r in mt if category(specs[r["case"]]) == cat]

    for cat, target, text in (("iso", TARGET_TRE_ISO_MM, "TRE <= 0.10 mm on every 2 mm isotropic pair"),
                              ("thick", TARGET_TRE_THICK_MM,
                               "TRE <= 0.25 mm with 5 mm slices, bias field, cropped FOV, +-30 deg/+-40 mm starts")):
        rs = cat_rows(cat)
        n_cases = sum(1 for s in specs.values() if category(s) == cat)
        if not rs or n_cases == 0:
            rows.append((text, "NOT MEASURED", "no MedTorch run on these cases"))
            continue
        bad = [r for r in rs if not _ok(r) or r["tre_mean_mm"] > target]
        worst = max((r["tre_mean_mm"] for r in rs if _ok(r)), default=float("nan"))
        verdict = "MET" if not bad and len(rs) == n_cases else "NOT MET"
        ev = f"{len(rs) - len(bad)}/{n_cases} cases within; worst mean TRE {worst:.3f} mm"
        if bad:
            ev += "; over: " + ", ".join(f"{r['case']} ({_f(r.get('tre_mean_mm'), 3)} mm)" for r in bad)
        rows.append((text, verdict, ev))
    for clock, label in (("time_s", "wall time"), ("cpu_s", "CPU time")):
        text = f"At most half the time of the fastest peer that reaches the same accuracy (rigid/affine; {label})"
        sv = speed_verdicts(results, specs, clock)
        if not sv:
            rows.append((text, "NOT MEASURED", "no MedTorch run on rigid/affine cases"))
            continue
        bad = [v for v in sv if not v["met"]]
        compared = [v for v in sv if v["ratio"] is not None]
        ratios = [v["ratio"] for v in compared]
        ev = (f"{len(sv) - len(bad)}/{len(sv)} cases within; {len(compared)} had a peer as accurate "
              f"(time ratio median {np.median(ratios):.2f}, worst {max(ratios):.2f})" if ratios else
              f"{len(sv)} cases; no peer was as accurate on any")
        if bad:
            ev += "; over: " + ", ".join(f"{v['case']} ({v['ratio']:.2f}x {v['peer']})" for v in bad)
        rows.append((text, "MET" if not bad else "NOT MET", ev))
    rs = cat_rows("deformable")
    if rs:
        for text, test, show in (
            ("Deformable: TRE <= 0.6 mm", lambda r: r["tre_mean_mm"] <= TARGET_TRE_DEFORMABLE_MM,
             lambda r: f"{r['case']}: {r['tre_mean_mm']:.3f} mm"),
            ("Deformable: 0 % folding", lambda r: r.get("folding_percent", 1.0) == 0.0,
             lambda r: f"{r['case']}: {_f(r.get('folding_percent'), 4)} %"),
            ("Deformable: <= 30 s (2 CPU cores, wall time)", lambda r: r["time_s"] <= TARGET_DEFORMABLE_TIME_S,
             lambda r: f"{r['case']}: {r['time_s']:.1f} s wall, {r['cpu_s']:.1f} CPU s"),
        ):
            good = [r for r in rs if _ok(r) and test(r)]
            rows.append((text, "MET" if len(good) == len(rs) else "NOT MET",
                         "; ".join(show(r) if _ok(r) else f"{r['case']}: {r.get('status')}" for r in rs)))
    else:
        for text in ("Deformable: TRE <= 0.6 mm", "Deformable: 0 % folding",
                     "Deformable: <= 30 s (2 CPU cores, wall time)"):
            rows.append((text, "NOT MEASURED", "no MedTorch run on the deformable cases"))
    rows.append(("Deformable on a GPU: <= 2 s", "NOT MEASURED", "no GPU on the machine that ran this benchmark"))
    return rows


def render(results: list[dict[str, Any]], specs: dict[str, dict[str, Any]], case_info: dict[str, dict[str, Any]],
           meta: dict[str, Any]) -> str:
    lines: list[str] = []
    add = lines.append
    add("# Registration benchmark")
    add("")
    add("Generated by `python -m benchmarks.registration" + (" --quick" if meta.get("quick") else "") +
        "` -- do not edit by hand; rerun it.")
    add("")
    add(f"Run finished {meta['date']} on {meta['machine']['cpu']} ({meta['machine']['cores']} cores, "
        f"{meta['machine']['memory']}), {meta['machine']['os']}, Python {meta['machine']['python']}. "
        f"Every engine ran in its own process with {meta['threads']} threads. Load average during the run: "
        f"{meta.get('loadavg_range', '?')} (other work shared the machine; CPU seconds are less affected "
        "by that than wall seconds). The engine processes took "
        f"{meta.get('runs_s', 0) / 60:.0f} min in all.")
    add("")
    add("Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".")
    if meta.get("unavailable"):
        add("")
        add("Not run: " + "; ".join(f"{k}: {v}" for k, v in meta["unavailable"].items()) + ".")
    add("")
    add("## Targets (the MedTorch engine)")
    add("")
    add("| Target | Verdict | Evidence |")
    add("| --- | --- | --- |")
    for text, verdict, ev in judge_targets(results, specs):
        add(f"| {text} | **{verdict}** | {ev} |")
    add("")
    sv = speed_verdicts(results, specs)
    sv_cpu = {v["case"]: v for v in speed_verdicts(results, specs, "cpu_s")}
    if sv:
        add("Time against the fastest peer at least as accurate (mean TRE at most max(target, MedTorch's)); "
            "wall seconds, and CPU seconds of all threads:")
        add("")
        add("| Case | MedTorch TRE mm | MedTorch s | Fastest such peer (wall) | Peer TRE mm | Peer s | Ratio | "
            "MedTorch CPU s | Fastest such peer (CPU) | Peer CPU s | CPU ratio |")
        add("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |")
        for v in sv:
            c = sv_cpu.get(v["case"], {})
            add(f"| {v['case']} | {_f(v['medtorch_tre'], 3)} | {_f(v['medtorch_time_s'])} | {v['peer'] or 'none'} | "
                f"{_f(v['peer_tre'], 3)} | {_f(v['peer_time_s'])} | {_f(v['ratio'])} | "
                f"{_f(c.get('medtorch_time_s'))} | {c.get('peer') or 'none'} | {_f(c.get('peer_time_s'))} | "
                f"{_f(c.get('ratio'))} |")
        add("")

    add("## Summary by case group")
    add("")
    by_cat: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        by_cat[category(specs[r["case"]])][r["engine"]].append(r)
    for cat in ("iso", "thick", "deformable", "quick"):
        if cat not in by_cat:
            continue
        target = CATEGORY_TARGET[cat]
        n_cases = sum(1 for s in specs.values() if category(s) == cat)
        add(f"### {CATEGORY_TITLES[cat]} ({n_cases} cases)")
        add("")
        tgt = f" (<= {target:g} mm)" if target else ""
        add(f"| Engine | Runs ok | Within target{tgt} | Median mean TRE mm | Worst mean TRE mm | Worst p95 mm | "
            "Median time s | Median CPU s | Median peak MB | Folding % (max) |")
        add("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for eng in ("medtorch", "sitk", "sitk-seed", "elastix", "ants"):
            rs = by_cat[cat].get(eng)
            if not rs:
                continue
            ok = [r for r in rs if _ok(r)]
            within = sum(1 for r in ok if target is not None and r["tre_mean_mm"] <= target)
            def med(key: str, ok: list[dict[str, Any]] = ok) -> float | None:
                return float(np.median([r[key] for r in ok])) if ok else None

            def worst(key: str, ok: list[dict[str, Any]] = ok) -> float | None:
                return float(np.max([r[key] for r in ok])) if ok else None

            fold = [r["folding_percent"] for r in ok if r.get("folding_percent") is not None]
            add(f"| {ENGINE_LABELS[eng]} | {len(ok)}/{len(rs)} | {within if target else '-'} | "
                f"{_f(med('tre_mean_mm'), 3)} | {_f(worst('tre_mean_mm'), 3)} | {_f(worst('tre_p95_mm'), 3)} | "
                f"{_f(med('time_s'), 1)} | {_f(med('cpu_s'), 1)} | {_f(med('peak_rss_mb'), 0)} | "
                f"{_f(max(fold), 4) if fold else '-'} |")
        add("")

    add("## Every run")
    add("")
    add("TRE over the case's landmarks (mm). Time: the registration call alone (wall, and CPU "
        "seconds of all threads); elastix's library load is its own column (paid once per process). "
        "Peak: the process's peak resident memory (MB), and in brackets the rise over what it held "
        "just before the call (libraries and images loaded).")
    add("")
    add("| Case | Start TRE | Engine | TRE mean | TRE p95 | TRE max | Folding % | Time s | CPU s | Load s | "
        "Peak MB (rise) | Note |")
    add("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    order = {e: i for i, e in enumerate(("medtorch", "sitk", "sitk-seed", "elastix", "ants"))}
    for name in specs:
        rs = sorted((r for r in results if r["case"] == name), key=lambda r: order.get(r["engine"], 99))
        for r in rs:
            note = ""
            if r.get("status") != "ok":
                note = (r.get("error") or r.get("status", ""))[:120].replace("|", "/")
            elif r["engine"] == "ants" and isinstance(r.get("info"), dict) and "convention_check" in r["info"]:
                cc = r["info"]["convention_check"]
                note = f"ANTs-convention check: max diff {cc['max_rel_diff']:.1e} of range"
            elif isinstance(r.get("info"), dict) and r["info"].get("stop"):
                note = str(r["info"]["stop"])[:60]
            peak = f"{_f(r.get('peak_rss_mb'), 0)} ({_f(r.get('peak_delta_mb'), 0)})" if r.get("peak_rss_mb") else "-"
            add(f"| {name} | {_f(case_info[name].get('start_tre_mm'), 1)} | {r['engine']} | "
                f"{_f(r.get('tre_mean_mm'), 3)} | {_f(r.get('tre_p95_mm'), 3)} | {_f(r.get('tre_max_mm'), 3)} | "
                f"{_f(r.get('folding_percent'), 4)} | {_f(r.get('time_s'), 2)} | {_f(r.get('cpu_s'), 1)} | "
                f"{_f(r.get('load_s'), 1)} | {peak} | {note} |")
    add("")
    add("## Cases")
    add("")
    add("Built by `benchmarks/registration/cases.py` from the MNI152 2009a template in "
        "`Resources/SampleData` (fixed: the real T1 with synthetic skull and scalp shells; moving: "
        "T2-like or CT-like contrasts painted from the grey/white-matter maps, SynthMorph-style, "
        "through a known transform; 40 landmarks in the brain). The bias field is applied to MR-like "
        "moving volumes only (CT has none).")
    add("")
    add("| Case | Description | Fixed size | Moving size | Start TRE mm | Truth |")
    add("| --- | --- | --- | --- | ---: | --- |")
    for name, spec in specs.items():
        info = case_info[name]
        truth = info.get("truth", {})
        t = (f"angles {', '.join(f'{a:.1f}' for a in truth.get('angles_deg', []))} deg; shift "
             f"{', '.join(f'{a:.1f}' for a in truth.get('shift_mm', []))} mm")
        if spec["max_scale"] or spec["max_shear"]:
            t += f"; scale {', '.join(f'{a:.3f}' for a in truth.get('scale', []))}"
        if "deform_max_mm" in truth:
            t += f"; field max {truth['deform_max_mm']:.1f} mm (inverse exact to {info.get('truth_inverse_error_mm', 0):.3f} mm)"
        add(f"| {name} | {_describe(spec)} | {'x'.join(map(str, info.get('fixed_size', [])))} | "
            f"{'x'.join(map(str, info.get('moving_size', [])))} | {_f(info.get('start_tre_mm'), 1)} | {t} |")
    add("")
    add("## Method")
    add("")
    add("* Each engine registers the same files (`.mha`, float32) in a fresh process "
        "(`python -m benchmarks.registration.worker`), one at a time, with "
        f"{meta['threads']} threads (`SimpleITK`/ITK global default threads, "
        "`ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`, `OMP_NUM_THREADS`, `torch.set_num_threads`).")
    add("* MedTorch: `medtorch.registration.register(fixed, moving, mode=..., engine='torch', device='cpu', "
        "verdict=False)` with its defaults otherwise (the landmark-free verdict is measured, and its cost timed, in "
        "its own section, `--verdict`; before the clock starts, the worker imports it and runs one tiny registration of a 24^3 "
        "pair, which initialises torch's lazily loaded kernels, as the elastix worker loads its wrapped classes; "
        "both count in Load s). SimpleITK corrected recipe: `medtorch.registration.classic.register_sitk` (centred "
        "initialiser on foreground masks, a 27-start rotation search at the coarsest level, Mattes MI 50 bins with "
        "seeded random sampling, physical-shift scales, regular-step gradient descent, shrink 4/2/1 with "
        "smoothing 2/1/0 mm; for deformable a B-spline refined from 50 to about 25 mm control-point spacing, "
        "gradient descent with line search). SimpleITK original recipe: Mattes MI, "
        "gradient descent with learning rate 1 for 100 iterations from the identity. elastix: its default "
        "rigid, affine and B-spline parameter maps (itk-elastix), starting from the geometric centres. ANTs: "
        "`ants.registration` with `Rigid`, `Affine` or `SyN` and its defaults.")
    add("* TRE: distance between where the estimated and the true transform send each landmark. "
        "Folding: share of fixed-grid voxels with a Jacobian determinant <= 0 (deformable only).")
    add("* Seeds are fixed (engine seed 0, each case its own seed); elastix, ANTs and the torch engine may "
        "still vary slightly from run to run through multithreaded sums.")
    add("* Wall time was measured while other work shared the 2 cores (see the load average above), which "
        "stretches every engine's wall time; CPU seconds (all threads) are the steadier comparison.")
    add("")
    return "\n".join(lines)


def _describe(spec: dict[str, Any]) -> str:
    from benchmarks.registration.cases import CaseSpec

    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}
    return CaseSpec(**fields).describe()


def today() -> str:
    return _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
