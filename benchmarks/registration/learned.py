"""The learned-registration section of the registration benchmark: ``python -m benchmarks.registration --learned``.

Data: the bundled MNI152 2009a template at 2 mm (T1, grey and white matter; about 100^3 voxels).
Each pair is the template (fixed) and the template warped by a random smooth displacement field
(moving; control points every 24 mm, largest displacement 4-8 mm), each with its own noise
(1 % of the maximum). The truth is known exactly: a fixed point ``p`` lies at the moving point
``q`` with ``q + v(q) = p``; landmarks are 200 random brain voxels. Training pairs and held-out
pairs use different seeds.

A model is trained first (``medtorch.registration.learned_training.train_registration``: pairs,
affine pre-alignment by the torch engine, LNCC + bending energy, diffeomorphic, at 4 mm) within a
time budget, then on every held-out pair three rows are run: the network only, the network plus
refinement (instance optimisation), and the optimiser only (the torch engine's deformable mode) --
TRE against the truth, Dice of grey and white matter, folding, CPU time. The section is written
into ``docs/benchmarks/registration.md`` between its markers, leaving the rest of the file as it is.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.registration import sections

BEGIN = "<!-- learned section: written by python -m benchmarks.registration --learned -->"
END = "<!-- end of learned section -->"


def _template() -> tuple[Any, np.ndarray]:
    from medtorch.demo import load_sample_data
    from medtorch.volume import Volume

    d = load_sample_data(2.0)
    gm, wm = np.asarray(d.gm.array), np.asarray(d.wm.array)
    lab = np.zeros(gm.shape, np.int16)
    lab[(gm > 0.5) & (gm >= wm)] = 1
    lab[(wm > 0.5) & (wm > gm)] = 2
    return Volume(np.asarray(d.t1.array, np.float32), d.t1.geometry), lab


def _field(geometry: Any, seed: int) -> Any:
    """A random smooth displacement field on ``geometry`` (LPS mm): control points every 24 mm, max 4-8 mm."""
    from medtorch.resample import resample
    from medtorch.volume import Geometry, Volume

    rng = np.random.default_rng(seed)
    extent = (np.asarray(geometry.size) - 1) * np.asarray(geometry.spacing)
    n = np.maximum(np.ceil(extent / 24.0).astype(int) + 1, 3)
    coarse = Geometry(tuple(int(v) for v in n), geometry.origin, extent / (n - 1), geometry.direction)
    disp = rng.normal(0.0, 1.0, coarse.shape_zyx + (3,))
    v = resample(Volume(disp, coarse, "vector"), geometry, interpolation="linear").array.astype(np.float64)
    v *= rng.uniform(4.0, 8.0) / max(float(np.linalg.norm(v, axis=-1).max()), 1e-9)
    return Volume(v.astype(np.float32), geometry, "vector")


def make_pair(t1: Any, labels: np.ndarray, seed: int) -> dict[str, Any]:
    """The moving volume and labels (the template through a random field ``v``), and ``v``."""
    from medtorch.resample import resample
    from medtorch.volume import Volume

    rng = np.random.default_rng(10_000 + seed)
    v = _field(t1.geometry, seed)
    moving = resample(t1, t1.geometry, v, interpolation="linear")
    sigma = 0.01 * float(np.max(t1.array))
    moving_arr = moving.array + rng.normal(0, sigma, moving.array.shape).astype(np.float32)
    fixed_arr = t1.array + rng.normal(0, sigma, t1.array.shape).astype(np.float32)
    mlab = resample(Volume(labels, t1.geometry, "label"), t1.geometry, v, interpolation="nearest").array
    return {"fixed": Volume(fixed_arr.astype(np.float32), t1.geometry), "moving": Volume(moving_arr, t1.geometry),
            "moving_labels": mlab, "field": v}


def truth_points(field: Any, points: np.ndarray) -> np.ndarray:
    """``q`` with ``q + v(q) = p`` for each fixed point ``p`` (fixed-point iteration; |grad v| < 1)."""
    import torch

    from medtorch.resample import transform_points

    p = torch.from_numpy(np.asarray(points, float).copy())
    q = p.clone()
    with torch.no_grad():
        for _ in range(30):
            q = p - (transform_points(q, field) - q)
    return q.numpy()


def _dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    x, y = a == value, b == value
    return float(2.0 * (x & y).sum() / max(int(x.sum() + y.sum()), 1))


def _landmarks(t1: Any, labels: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(12345)
    idx = np.argwhere(labels > 0)  # z, y, x
    pick = idx[rng.choice(len(idx), 200, replace=False)]
    return t1.geometry.index_to_physical(pick[:, ::-1].astype(float))


def run_row(kind: str, pair: dict[str, Any], model: Path, landmarks: np.ndarray, fixed_labels: np.ndarray,
            threads: int) -> dict[str, Any]:
    import torch

    from medtorch.registration import register
    from medtorch.resample import resample
    from medtorch.volume import Volume

    torch.set_num_threads(threads)
    kw: dict[str, Any] = {"torch": dict(engine="torch", mode="deformable"),
                          "network": dict(engine="learned", model=str(model)),
                          "network+refine": dict(engine="learned", model=str(model), refine=True)}[kind]
    t0 = time.process_time()
    w0 = time.perf_counter()
    res = register(pair["fixed"], pair["moving"], seed=0, verdict=False, resample_output=False, **kw)
    wall = time.perf_counter() - w0
    cpu = time.process_time() - t0
    mapped = res.map_points(landmarks)
    err = np.linalg.norm(mapped - truth_points(pair["field"], landmarks), axis=1)
    warped = resample(Volume(pair["moving_labels"], pair["fixed"].geometry, "label"), pair["fixed"].geometry,
                      res.transform, interpolation="nearest").array
    rep = res.report
    return {"row": kind, "tre_mean_mm": float(err.mean()), "tre_p95_mm": float(np.percentile(err, 95)),
            "dice_gm": _dice(warped, fixed_labels, 1), "dice_wm": _dice(warped, fixed_labels, 2),
            "folding_percent": float(rep["folding_percent"]), "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "network_s": rep.get("network_s"), "network_forward_s": rep.get("network_forward_s"),
            "refinement_s": rep.get("refinement_s"), "linear_s": rep.get("linear_runtime_s"),
            "affine_only_tre": None}


def targets(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(target, MET / NOT MET / NOT MEASURED, evidence) for the issue's targets."""
    def by(kind: str) -> list[dict[str, Any]]:
        return [r for r in rows if r["row"] == kind]

    out = []
    net, ref, opt = by("network"), by("network+refine"), by("torch")
    if net:
        worst = max(float(r["network_s"]) for r in net)
        out.append(("Network only: <= 1 s per pair at 2 mm (~100^3; the network pass, after the affine stage)",
                    "MET" if worst <= 1.0 else "NOT MET", f"worst {worst:.2f} s, mean "
                    f"{np.mean([float(r['network_s']) for r in net]):.2f} s (forward pass alone: mean "
                    f"{np.mean([float(r['network_forward_s']) for r in net]):.2f} s)"))
        fold = max(float(r["folding_percent"]) for r in net)
        out.append(("Network only, diffeomorphic: 0 % folding", "MET" if fold == 0.0 else "NOT MET",
                    f"largest {fold:.4f} %"))
    if ref and opt:
        pairs = sorted({r["pair"] for r in ref})
        ok_tre = [next(r for r in ref if r["pair"] == p)["tre_mean_mm"] <= next(r for r in opt if r["pair"] == p)["tre_mean_mm"]
                  for p in pairs]
        ratios = [next(r for r in ref if r["pair"] == p)["wall_s"] / next(r for r in opt if r["pair"] == p)["wall_s"]
                  for p in pairs]
        out.append(("Network + refinement: TRE <= optimiser-only TRE", "MET" if all(ok_tre) else "NOT MET",
                    f"{sum(ok_tre)}/{len(pairs)} pairs; mean {np.mean([r['tre_mean_mm'] for r in ref]):.3f} against "
                    f"{np.mean([r['tre_mean_mm'] for r in opt]):.3f} mm"))
        out.append(("Network + refinement: <= 50 % of the optimiser's time (wall, whole call)",
                    "MET" if max(ratios) <= 0.5 else "NOT MET",
                    f"time ratio mean {np.mean(ratios):.2f}, worst {max(ratios):.2f}"))
    out.append(("Synthetic-mode training <= 30 min on 2 cores at 2 mm", "NOT MEASURED",
                "this section trains on template pairs (LNCC); the synthetic mode was not timed here"))
    out.append(("GPU", "NOT MEASURED", "no GPU on the machine that ran this benchmark"))
    return out


def _machine(m: dict[str, str]) -> str:
    return f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores visible, {m.get('memory', '?')}"


def render(result: dict[str, Any]) -> str:
    rows = result["rows"]
    t = result["training"]
    lines = [BEGIN, "", "## Learned registration (VoxelMorph network, refinement, optimiser)", "",
             f"Run {result['date']} on {_machine(result['machine'])} (torch threads: {result['threads']}; 1-minute load average "
             f"{result['load']} -- the machine was shared, so times are upper bounds); "
             f"{'quick run, ' if result['quick'] else ''}written by `python -m benchmarks.registration --learned"
             f"{' --quick' if result['quick'] else ''}` ({result['total_s']:.0f} s in all). GPU: not measured.", "",
             "Data: the MNI152 2009a template at 2 mm "
             f"({' x '.join(str(s) for s in result['grid'])} voxels) as the fixed volume; the moving volume is the "
             "template through a random smooth displacement field (control points every 24 mm, largest displacement "
             "4-8 mm), each with its own noise; the truth is exact. TRE: 200 random brain voxels. Dice: grey and white "
             "matter of the template (probability > 0.5) carried by the estimated transform. "
             f"{len(result['pairs'])} held-out pairs (seeds {', '.join(str(s) for s in result['pairs'])}); the "
             f"model never saw them.", "",
             f"Model: `medtorch train-reg`-style training on {t['num_train']} pairs (+{t['num_val']} held out for "
             f"validation) of the same kind (other seeds), affine pre-alignment by the torch engine, LNCC + bending "
             f"energy, diffeomorphic (scaling and squaring), network `{t['size']}` at {t['spacing_mm']:g} mm; "
             f"Adam, learning rate {t.get('lr')}; {t['steps_run']} steps ({t['stopped']}) in {t['train_s']:.0f} s of training "
             f"({t['prep_s']:.0f} s data preparation and pre-alignment before it), seed {t['seed']}; best held-out "
             f"LNCC loss {t['best_val_loss']:.4f} against {t['identity_val_loss']:.4f} for the identity.", "",
             "| row | TRE mean (mm) | TRE p95 (mm) | Dice GM | Dice WM | folding % | time per pair (s) | "
             "network pass (s) | refinement (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    before = result["identity"]
    lines.append(f"| identity (no registration) | {before['tre_mean_mm']:.3f} | {before['tre_p95_mm']:.3f} | "
                 f"{before['dice_gm']:.3f} | {before['dice_wm']:.3f} | - | - | - | - |")
    names = {"network": "network only", "network+refine": "network + refinement", "torch": "optimiser only (torch deformable, MI)"}
    for kind in ("network", "network+refine", "torch"):
        rs = [r for r in rows if r["row"] == kind]
        if not rs:
            continue

        def m(key: str) -> float:
            vals = [float(r[key]) for r in rs if r.get(key) is not None]
            return float(np.mean(vals)) if vals else float("nan")

        net = f"{m('network_s'):.2f} ({m('network_forward_s'):.2f} forward)" if kind != "torch" else "-"
        ref = f"{m('refinement_s'):.2f}" if kind == "network+refine" else "-"
        lines.append(f"| {names[kind]} | {m('tre_mean_mm'):.3f} | {m('tre_p95_mm'):.3f} | {m('dice_gm'):.3f} | "
                     f"{m('dice_wm'):.3f} | {m('folding_percent'):.4f} | {m('wall_s'):.1f} (CPU {m('cpu_s'):.1f}) | "
                     f"{net} | {ref} |")
    lines += ["", "Targets (2 CPU cores):", "", "| Target | Verdict | Evidence |", "| --- | --- | --- |"]
    lines += [f"| {a} | **{b}** | {c} |" for a, b, c in targets(rows)]
    lines += ["", "Time per pair: the whole `register` call (affine stage included, which every row runs; verdict and "
              "resampling of the output off); CPU is the process's CPU time. Network pass: resampling both volumes to "
              "the model grid, the forward pass (in brackets) and the field back on the fixed grid. Means over the "
              "pairs; per-pair figures in the run's `learned_results.json`.", ""]
    lines += result.get("notes", [])
    lines += ["", END, ""]
    return "\n".join(lines)


def write_section(doc: Path, section: str) -> None:
    """Put ``section`` into ``doc`` between the learned section's markers (replacing an earlier one), or append it."""
    sections.write_section(doc, section, BEGIN, END)


def keep_section(old_text: str, new_text: str) -> str:
    """``new_text`` (the main benchmark's report) with the learned section of ``old_text`` kept."""
    return sections.keep_section(old_text, new_text, BEGIN, END)


def main(quick: bool, workdir: Path, out: Path, train_minutes: float | None = None, threads: int = 2,
         log: Callable[[str], None] = print, size: str = "tiny", learning_rate: float = 1e-3) -> dict[str, Any]:
    import datetime as dt

    import torch

    from benchmarks.registration import report
    from medtorch.io import write_volume
    from medtorch.registration.learned_training import train_registration

    started = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    loads = [os.getloadavg()[0]]
    t1, labels = _template()
    log(f"template {t1.geometry.size} at 2 mm")
    n_train, test_seeds = (6, [0, 1]) if quick else (16, [0, 1, 2, 3, 4, 5])
    minutes = train_minutes if train_minutes is not None else (4.0 if quick else 25.0)
    model = workdir / "model.zip"
    train_dir = workdir / "train"
    prep_s = 0.0
    if not model.exists():
        t0 = time.perf_counter()
        train_dir.mkdir(exist_ok=True)
        for i in range(n_train):
            pair = make_pair(t1, labels, 1000 + i)
            write_volume(pair["fixed"], train_dir / f"t{i}_fixed.nii.gz")
            write_volume(pair["moving"], train_dir / f"t{i}_moving.nii.gz")
        log(f"{n_train} training pairs written in {time.perf_counter() - t0:.0f} s; training for up to {minutes:g} min")
        res = train_registration(train_dir, model, network_size=size, spacing_mm=4.0, steps=100_000, val_every=25,
                                 patience=6, val_fraction=0.2, seed=0, max_minutes=minutes, image_loss="lncc",
                                 learning_rate=learning_rate)
        prep_s = res.seconds - res.record["training"].get("train_s", 0.0)
        (workdir / "training.json").write_text(json.dumps({"record": res.record, "total_s": res.seconds}), "utf-8")
    info = json.loads((workdir / "training.json").read_text("utf-8"))
    rec = info["record"]["training"]
    hist = rec["history"]
    train_s = float(rec.get("train_s") or info["total_s"])
    prep_s = float(info["total_s"]) - train_s
    loads.append(os.getloadavg()[0])
    landmarks = _landmarks(t1, labels)
    rows: list[dict[str, Any]] = []
    ident: list[dict[str, float]] = []
    for seed in test_seeds:
        pair = make_pair(t1, labels, seed)
        err = np.linalg.norm(landmarks - truth_points(pair["field"], landmarks), axis=1)
        ident.append({"tre_mean_mm": float(err.mean()), "tre_p95_mm": float(np.percentile(err, 95)),
                      "dice_gm": _dice(pair["moving_labels"], labels, 1), "dice_wm": _dice(pair["moving_labels"], labels, 2)})
        for kind in ("network", "network+refine", "torch"):
            r = run_row(kind, pair, model, landmarks, labels, threads)
            r["pair"] = seed
            rows.append(r)
            loads.append(os.getloadavg()[0])
            log(f"[pair {seed}] {kind:15s} TRE {r['tre_mean_mm']:.3f} mm  Dice GM {r['dice_gm']:.3f} WM "
                f"{r['dice_wm']:.3f}  folding {r['folding_percent']:.4f} %  {r['wall_s']:.1f} s "
                f"(network {r['network_s']}, refinement {r['refinement_s']})")
            (workdir / "learned_results.json").write_text(json.dumps({"rows": rows}, indent=1), "utf-8")
    result = {
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": report.machine_summary(), "threads": threads,
        "load": f"{min(loads):.1f} to {max(loads):.1f}", "quick": quick, "grid": list(t1.geometry.size),
        "pairs": test_seeds, "rows": rows,
        "identity": {k: float(np.mean([d[k] for d in ident])) for k in ident[0]},
        "training": {"num_train": rec["num_train"], "num_val": rec["num_val"], "size": size, "spacing_mm": 4.0,
                     "steps_run": rec["steps_run"], "stopped": rec["stopped"], "train_s": train_s, "prep_s": prep_s,
                     "seed": info["record"]["seed"], "best_val_loss": rec["best_val_loss"],
                     "identity_val_loss": rec["identity_val_loss"], "history_points": len(hist),
                     "lr": rec.get("learning_rate")},
        "total_s": time.perf_counter() - started,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_section(out, render(result))
    log(f"learned section written to {out}")
    return result
