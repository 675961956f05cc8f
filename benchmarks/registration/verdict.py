"""The registration verdict, calibrated and tested on synthetic successes and failures with known truth.

``python -m benchmarks.registration --verdict [--quick]`` runs this section:

1. **Cases.** Base pairs from the benchmark's case builder (:mod:`benchmarks.registration.cases`:
   the MNI152 template as the T1-like fixed volume, T2-like or CT-like moving volumes through a
   known rigid or affine transform, 4 mm) and from :mod:`medtorch.registration.synthetic`
   (an asymmetric phantom in two contrasts; rigid, affine, deformable). Each *kind* below
   derives a case from a base pair, with its truth when there is one (:data:`KINDS`).
2. **Split, fixed in advance.** A case's ``seed`` decides its set: odd seeds are the HELD-OUT
   test set, even seeds the calibration set (:func:`split_of`). Every kind has both.
3. **Measure.** Each case is registered by MedTorch's torch engine with the verdict, every
   check measured (the restarts too); TRE over the base's landmarks where there is a truth.
4. **Calibrate** (:func:`calibrate`, on the calibration set only): for each calibrated check,
   the warning threshold is the worst value among the calibration successes (TRE < 0.5 mm),
   widened by a margin; the failing threshold sits at twice that distance from the successes'
   typical value (see :func:`calibrate` for the exact rule).
5. **Evaluate** (:func:`evaluate`, on the held-out set with the calibrated thresholds): the
   AUC of the verdict's score at telling TRE > 2 mm from TRE < 0.5 mm, the verdict of every
   failure kind, and no ``fail`` on the registration benchmark's own success cases (its
   standard 2 mm cases; ``--quick``: its two quick cases).
6. **Cost**: on the benchmark's rigid cases, the registration's wall time with and without the
   verdict, and each check's share.

The section is written into ``docs/benchmarks/registration.md`` between markers, leaving the
rest of the file as it was.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks.registration import cases as case_mod
from benchmarks.registration import sections
from medtorch.volume import Geometry, Volume

#: What the verdict section is written between, in docs/benchmarks/registration.md.
BEGIN = "<!-- verdict section: written by python -m benchmarks.registration --verdict -->"
END = "<!-- end of verdict section -->"

#: kind -> (description, expected: "success" when the registration should succeed, else "failure")
KINDS: dict[str, tuple[str, str]] = {
    "clean": ("the base pair as built (T2-like/CT-like from the template, or the phantom)", "success"),
    "nan_slices": ("the moving volume with NaN in 10 % of its slices (scattered and a slab)", "success"),
    "far_away": ("the moving volume moved 5 m away (no physical overlap); the truth moved with it", "success"),
    "wrong_start": ("the moving volume turned by 90-180 degrees about a random axis, registered from the grids' "
                    "centres (init='geometry': no rotation search)", "failure"),
    "flipped": ("the moving volume's voxels mirrored along the A-P or S-I axis (a flipped axis)", "failure"),
    "cropped": ("the moving field of view cut to a slab of 20-30 % of the head", "failure"),
    "truncated": ("the moving volume's last 40-60 % of slices zero-filled (a truncated file)", "failure"),
    "other_patient": ("a different anatomy: the synthetic phantom (scaled to a head) as the moving volume", "failure"),
    "noise": ("the moving volume replaced by noise", "failure"),
    "far_noise": ("noise, 5 m away (the issue's example)", "failure"),
    "stopped_early": ("the registration stopped after 2 iterations per level", "failure"),
    "wrong_metric": ("a CT-like pair registered with mean squared differences (a same-modality metric)", "failure"),
}
#: Kinds built on the phantom pairs of medtorch.registration.synthetic as well.
PHANTOM_KINDS = ("clean", "wrong_start", "flipped", "noise", "stopped_early")
SUCCESS_TRE_MM = 0.5
FAILURE_TRE_MM = 2.0
#: the checks whose thresholds are calibrated (the plausibility ranges are stated defaults)
CALIBRATED = {
    # check: (option prefix, higher_is_worse)
    "local_similarity": ("similarity", False),
    "inverse_consistency": ("inverse", True),
    "convergence": ("convergence", True),
    "start_stability": ("stability", True),
}


def split_of(seed: int) -> str:
    """The rule, fixed before any threshold was chosen: odd seeds are held out."""
    return "held-out" if seed % 2 == 1 else "calibration"


@dataclass
class VerdictCase:
    name: str
    kind: str
    seed: int
    fixed: Volume
    moving: Volume
    landmarks: np.ndarray | None
    truth: Callable[[np.ndarray], np.ndarray] | None  # fixed LPS -> moving LPS; None: no correspondence
    register_kwargs: dict[str, Any] = field(default_factory=dict)
    source: str = "template"

    @property
    def split(self) -> str:
        return split_of(self.seed)


# -- base pairs ------------------------------------------------------------------------------


def _template_spec(seed: int) -> case_mod.CaseSpec:
    """Seeds 0-7: 4 mm isotropic pairs, +-15 deg/+-15 mm; 8-11: the benchmark's hard kind at 4 mm
    (2 x 2 x 6 mm moving slices, bias field, cropped field of view, +-30 deg/+-30 mm). Rigid and
    affine, T2-like and CT-like alternate so that both splits hold each."""
    mode = ("rigid", "affine")[(seed // 2) % 2]
    contrast = ("t2", "ct")[(seed // 4) % 2]
    extra: dict[str, Any] = {"max_scale": 0.08, "max_shear": 0.06} if mode == "affine" else {}
    if seed >= 8:
        contrast = ("t2", "ct")[seed % 4 // 2]
        extra.update(max_angle_deg=30.0, max_shift_mm=30.0, moving_spacing_mm=(2.0, 2.0, 6.0), bias=True, crop=True,
                     fov_offset_mm=10.0)
    else:
        extra.update(max_angle_deg=15.0, max_shift_mm=15.0)
    return case_mod.small_spec(f"verdict-base-{seed}", mode, contrast, 5000 + seed, **extra)  # type: ignore[arg-type]


class _Bases:
    """Template base cases, built once per seed and cached in ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.cache: dict[int, Any] = {}

    def template(self, seed: int) -> Any:
        if seed in self.cache:
            return self.cache[seed]
        spec = _template_spec(seed)
        folder = self.workdir / "bases" / spec.name
        if (folder / "case.json").exists():
            case = _load_case(folder, spec)
        else:
            case = case_mod.build_case(spec)
            case.save(folder)
        self.cache[seed] = case
        return case


def _load_case(folder: Path, spec: case_mod.CaseSpec) -> Any:
    import SimpleITK as sitk

    meta = json.loads((folder / "case.json").read_text(encoding="utf-8"))
    fixed = Volume.from_sitk(sitk.ReadImage(str(folder / "fixed.mha")))
    moving = Volume.from_sitk(sitk.ReadImage(str(folder / "moving.mha")))
    return case_mod.Case(spec, fixed, moving, np.asarray(meta["affine"]), None, None,
                         np.asarray(meta["landmarks"]), meta["info"])


def _phantom_mode(seed: int) -> str:
    return ("rigid", "affine", "deformable")[(seed // 2) % 3]


def _phantom_base(seed: int) -> Any:
    from medtorch.registration.synthetic import synthetic_pair

    mode = _phantom_mode(seed)
    return synthetic_pair(mode, seed=7000 + seed, size=48, spacing=2.0, max_angle_deg=12.0, max_shift_mm=8.0,
                          max_scale=0.06, deform_mm=3.0)


# -- derivations -----------------------------------------------------------------------------


def _moved(geometry: Geometry, g: np.ndarray) -> Geometry:
    """The grid carried by the 4x4 map ``g`` (the content moves with it)."""
    direction = g[:3, :3] @ geometry.direction
    origin = g[:3, :3] @ np.asarray(geometry.origin, float) + g[:3, 3]
    return Geometry(geometry.size, origin, geometry.spacing, direction)


def _compose(g: np.ndarray, truth: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda p: truth(p) @ g[:3, :3].T + g[:3, 3]


def _random_rotation(rng: np.random.Generator, lo_deg: float, hi_deg: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = math.radians(rng.uniform(lo_deg, hi_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


def _noise_like(moving: Volume, rng: np.random.Generator) -> Volume:
    arr = np.asarray(moving.array, np.float32)
    return Volume((rng.normal(float(arr.mean()), float(arr.std()) + 1e-3, arr.shape)).astype(np.float32),
                  moving.geometry)


def _phantom_on(geometry: Geometry, rng: np.random.Generator, head_center: np.ndarray) -> Volume:
    from medtorch.registration.synthetic import _MOVING_VALUES, _grid_points, paint

    pts = _grid_points(geometry) - head_center
    scale = 2.4  # the phantom's head (30 x 36 x 27 mm radii) to the template's size
    vals = paint(pts / scale, _MOVING_VALUES) + rng.normal(0.0, 2.0, geometry.shape_zyx)
    return Volume(vals.astype(np.float32), geometry)


def derive(kind: str, seed: int, base: Any, source: str) -> VerdictCase:
    """The case of ``kind`` from ``base`` (a template ``Case`` or a phantom ``SyntheticPair``)."""
    rng = np.random.default_rng([seed, sum(map(ord, kind))])
    fixed, moving = base.fixed, base.moving
    truth: Callable[[np.ndarray], np.ndarray] | None = base.truth
    mode = base.spec.mode if source == "template" else _phantom_mode(seed)
    kw: dict[str, Any] = {"mode": mode}
    geom = moving.geometry
    arr = np.asarray(moving.array, np.float32)
    centre = geom.center()
    if kind == "clean":
        pass
    elif kind == "nan_slices":
        a = arr.copy()
        nz = a.shape[0]
        picks = rng.choice(nz, size=max(1, nz // 20), replace=False)
        a[picks] = np.nan
        k0 = int(rng.integers(0, nz - nz // 20))
        a[k0:k0 + max(1, nz // 20)] = np.nan
        moving = Volume(a, geom)
    elif kind in ("far_away", "far_noise"):
        d = rng.normal(size=3)
        g = np.eye(4)
        g[:3, 3] = d / np.linalg.norm(d) * 5000.0
        if kind == "far_noise":
            moving, truth = _noise_like(moving, rng), None
        else:
            truth = _compose(g, truth)  # type: ignore[arg-type]
        moving = Volume(np.asarray(moving.array), _moved(geom, g))
    elif kind == "wrong_start":
        r = _random_rotation(rng, 90.0, 180.0)
        g = np.eye(4)
        g[:3, :3] = r
        g[:3, 3] = centre - r @ centre
        moving = Volume(arr, _moved(geom, g))
        truth = _compose(g, truth)  # type: ignore[arg-type]
        kw["init"] = "geometry"
    elif kind == "flipped":
        # flip a grid axis that is not the left-right one (the template is nearly symmetric left-right)
        lr = int(np.argmax(np.abs(geom.direction[0, :])))
        axis = int(rng.choice([a for a in range(3) if a != lr]))
        a = np.ascontiguousarray(np.flip(arr, axis=2 - axis))
        d = geom.direction[:, axis]
        g = np.eye(4)
        g[:3, :3] = np.eye(3) - 2.0 * np.outer(d, d)
        g[:3, 3] = 2.0 * d * float(d @ centre)
        moving = Volume(a, geom)
        truth = _compose(g, truth)  # type: ignore[arg-type]
    elif kind == "cropped":
        nz = arr.shape[0]
        keep = max(4, int(round(nz * rng.uniform(0.2, 0.3))))
        k0 = int(rng.integers(max(0, nz // 2 - keep), min(nz - keep, nz // 2) + 1))
        sub = np.ascontiguousarray(arr[k0:k0 + keep])
        origin = geom.index_to_physical(np.array([[0.0, 0.0, float(k0)]]))[0]
        moving = Volume(sub, Geometry((geom.size[0], geom.size[1], keep), origin, geom.spacing, geom.direction))
    elif kind == "truncated":
        a = arr.copy()
        nz = a.shape[0]
        cut = int(round(nz * (1.0 - rng.uniform(0.4, 0.6))))
        a[cut:] = 0.0
        moving = Volume(a, geom)
    elif kind == "other_patient":
        moving, truth = _phantom_on(geom, rng, centre), None
    elif kind == "noise":
        moving, truth = _noise_like(moving, rng), None
    elif kind == "stopped_early":
        kw["iterations"] = 2
    elif kind == "wrong_metric":
        kw["metric"] = "mse"
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return VerdictCase(f"{kind}-{source}-{seed}", kind, seed, fixed, moving, np.asarray(base.landmarks), truth, kw,
                       source)


def build_cases(seeds: list[int], workdir: Path, kinds: list[str] | None = None,
                log: Callable[[str], None] = print) -> list[VerdictCase]:
    bases = _Bases(workdir)
    out: list[VerdictCase] = []
    for kind in kinds or list(KINDS):
        for seed in seeds:
            if kind == "wrong_metric" and _template_spec(seed).contrast != "ct":
                continue
            t0 = time.perf_counter()
            out.append(derive(kind, seed, bases.template(seed), "template"))
            if kind in PHANTOM_KINDS:
                out.append(derive(kind, seed, _phantom_base(seed), "phantom"))
            dt = time.perf_counter() - t0
            if dt > 2.0:
                log(f"  base for {kind} seed {seed} built in {dt:.1f} s")
    return out


# -- running ---------------------------------------------------------------------------------


def run_case(case: VerdictCase, seed: int = 0) -> dict[str, Any]:
    """Register ``case`` with every check measured; the record (JSON) for calibration."""
    from medtorch.errors import MedTorchInputError
    from medtorch.registration import register

    rec: dict[str, Any] = {"name": case.name, "kind": case.kind, "seed": case.seed, "split": case.split,
                           "source": case.source, "expected": KINDS[case.kind][1],
                           "mode": case.register_kwargs.get("mode")}
    t0 = time.perf_counter()
    try:
        res = register(case.fixed, case.moving, device="cpu", seed=seed, resample_output=False,
                       verdict_options={"restarts": "always"}, **case.register_kwargs)
    except MedTorchInputError as exc:
        rec.update(status="refused", error=str(exc), seconds=round(time.perf_counter() - t0, 3))
        return rec
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    rec["registration_s"] = res.report.get("runtime_s")
    rec["status"] = "ok"
    rec["measures"] = res.report["verdict_measures"]
    rec["findings"] = [c.to_dict() for c in res.verdict.checks  # type: ignore[union-attr]
                       if c.name.startswith(("nan_inf", "constant", "physical"))]
    if case.truth is not None and case.landmarks is not None:
        err = np.linalg.norm(res.map_points(case.landmarks) - case.truth(case.landmarks), axis=1)
        rec["tre_mm"] = float(err.mean())
    else:
        rec["tre_mm"] = None
    return rec


def label_of(rec: dict[str, Any]) -> str:
    """``success`` (TRE < 0.5 mm), ``failure`` (TRE > 2 mm, or no correspondence), else ``between``."""
    tre = rec.get("tre_mm")
    if tre is None:
        return "failure"
    if tre < SUCCESS_TRE_MM:
        return "success"
    if tre > FAILURE_TRE_MM:
        return "failure"
    return "between"


def verdict_of(rec: dict[str, Any], options: Any) -> Any:
    """The verdict of a record under ``options`` (restarts only when borderline, as ``register`` does)."""
    from medtorch.registration.verdict import Measures, judge, needs_restarts
    from medtorch.verdict import Check

    m = Measures.from_dict(rec["measures"])
    findings = [Check.from_dict(c) for c in rec.get("findings", [])]
    pre = judge(m, options, findings, with_stability=False)
    return judge(m, options, findings, with_stability=needs_restarts(pre, options))


# -- calibration -----------------------------------------------------------------------------


def _measure_of(rec: dict[str, Any], check: str) -> float | None:
    m = rec["measures"]
    if check == "local_similarity":
        a, c = m.get("similarity_after"), m.get("similarity_control")
        return None if a is None or c is None else a - c
    if check == "inverse_consistency":
        return m.get("inverse_mean_mm")
    if check == "convergence":
        return (m.get("convergence") or {}).get("tail_net_mm")
    if check == "start_stability":
        return m.get("stability_mm")
    if check == "overlap":
        return m.get("overlap")
    raise KeyError(check)


#: the calibration rule's constants, fixed with the rule
WARN_FACTOR = 1.25  # the warning threshold: 25 % beyond the worst calibration success
FAIL_FACTOR = 2.5  # the failing threshold: 2.5 times the worst calibration success (its inverse, lower-is-worse)


def calibrate(records: list[dict[str, Any]]) -> dict[str, float]:
    """Thresholds from the calibration records: for each check of :data:`CALIBRATED` (all of
    them positive numbers), with ``worst`` its worst value over the calibration successes (TRE <
    0.5 mm), ``warn_at = worst * WARN_FACTOR`` and ``fail_at = worst * FAIL_FACTOR`` where higher
    is worse, ``worst / WARN_FACTOR`` and ``worst / FAIL_FACTOR`` where lower is worse. No
    calibration success warns; a failure has to be 2.5 times worse than any of them to fail.
    """
    ok = [r for r in records if r.get("status") == "ok" and r["split"] == "calibration"]
    succ = [r for r in ok if label_of(r) == "success"]
    out: dict[str, float] = {}
    for check, (prefix, higher_worse) in CALIBRATED.items():
        vals = np.array([v for r in succ if (v := _measure_of(r, check)) is not None and math.isfinite(v)], float)
        if vals.size == 0:
            continue
        worst_v = max(float(vals.max() if higher_worse else vals.min()), 1e-6)
        warn, fail = (worst_v * WARN_FACTOR, worst_v * FAIL_FACTOR) if higher_worse else \
            (worst_v / WARN_FACTOR, worst_v / FAIL_FACTOR)
        key_w, key_f = (f"{prefix}_warn_mm", f"{prefix}_fail_mm") if prefix in ("inverse", "stability") else \
            (f"{prefix}_warn", f"{prefix}_fail")
        out[key_w], out[key_f] = round(warn, 4), round(fail, 4)
    return out


def auc(scores_pos: list[float], scores_neg: list[float]) -> float:
    """Probability that a failure (positive) scores above a success (negative); ties count half."""
    if not scores_pos or not scores_neg:
        return float("nan")
    pos, neg = np.asarray(scores_pos, float), np.asarray(scores_neg, float)
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def evaluate(records: list[dict[str, Any]], options: Any, split: str = "held-out") -> dict[str, Any]:
    rows = []
    for r in records:
        if r["split"] != split:
            continue
        if r.get("status") != "ok":
            rows.append({**r, "verdict": "refused", "score": math.inf, "label": "failure", "reasons": [r.get("error")]})
            continue
        v = verdict_of(r, options)
        rows.append({**r, "verdict": v.status, "score": v.score if v.score is not None else -math.inf,
                     "label": label_of(r), "reasons": [f"{c.name} {c.status}" for c in v.reasons]})
    tre_rows = [x for x in rows if x.get("tre_mm") is not None or x["verdict"] == "refused"]
    pos = [x["score"] for x in tre_rows if x["label"] == "failure" and x.get("tre_mm") is not None]
    neg = [x["score"] for x in tre_rows if x["label"] == "success"]
    pos_all = [x["score"] for x in rows if x["label"] == "failure"]
    false_fail = [x["name"] for x in rows if x["label"] == "success" and x["verdict"] == "fail"]
    per_kind: dict[str, dict[str, int]] = {}
    for x in rows:
        k = per_kind.setdefault(x["kind"], {})
        key = f"{x['label']}:{x['verdict']}"
        k[key] = k.get(key, 0) + 1
    return {"rows": rows, "auc": auc(pos, neg), "auc_with_no_truth": auc(pos_all, neg), "n_failure_tre": len(pos),
            "n_success": len(neg), "n_failure_all": len(pos_all), "false_fails": false_fail, "per_kind": per_kind}


def kinds_flagged(evaluated: dict[str, Any]) -> dict[str, bool]:
    """Per synthetic failure kind (expected ``failure`` in :data:`KINDS`) with failed cases:
    whether every one of them was flagged (warn, fail or refused)."""
    out = {}
    for kind, (_, expected) in KINDS.items():
        if expected != "failure":
            continue
        failed = [r for r in evaluated["rows"] if r["kind"] == kind and r["label"] == "failure"]
        if failed:
            out[kind] = all(r["verdict"] in ("warn", "fail", "refused") for r in failed)
    return out


def missed_failures(evaluated: dict[str, Any]) -> tuple[list[str], int]:
    """Registrations that failed (TRE > 2 mm) on inputs meant to succeed (the ``success`` kinds:
    the engine itself went wrong) and that the verdict let pass; and how many failed in all."""
    failed = [r for r in evaluated["rows"] if KINDS[r["kind"]][1] == "success" and r["label"] == "failure"]
    return [r["name"] for r in failed if r["verdict"] == "pass"], len(failed)


# -- the registration benchmark's own success cases, and the cost ------------------------------


def benchmark_successes(quick: bool, workdir: Path, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """The verdict on the registration benchmark's cases, with their TRE and time (one run each)."""
    from medtorch.registration import register

    specs = case_mod.quick_specs() if quick else [s for s in case_mod.standard_specs() if s.mode != "deformable"]
    out = []
    for spec in specs:
        folder = workdir / "benchmark-cases" / spec.name
        if (folder / "case.json").exists():
            case = _load_case(folder, spec)
            meta = json.loads((folder / "case.json").read_text(encoding="utf-8"))
            truth_pts = np.asarray(meta["truth_points"])
        else:
            case = case_mod.build_case(spec)
            case.save(folder)
            truth_pts = case.truth(case.landmarks)
        res = register(case.fixed, case.moving, mode=spec.mode, device="cpu", resample_output=False,
                       verdict_options={"restarts": "always"})
        tre = float(np.linalg.norm(res.map_points(case.landmarks) - truth_pts, axis=1).mean())
        target = 0.25 if spec.thick else 0.10
        if quick:
            target = 0.5
        rec = {"name": spec.name, "kind": "benchmark", "seed": -1, "split": "benchmark", "mode": spec.mode,
               "status": "ok", "tre_mm": tre, "within_target": tre <= target, "target_mm": target,
               "measures": res.report["verdict_measures"],
               "findings": [c.to_dict() for c in res.verdict.checks  # type: ignore[union-attr]
                            if c.name.startswith(("nan_inf", "constant", "physical"))]}
        log(f"  [{spec.name}] TRE {tre:.3f} mm (target {target} mm), verdict measured")
        out.append(rec)
    return out


def measure_cost(quick: bool, workdir: Path, repeats: int = 3, log: Callable[[str], None] = print,
                 verdict_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Wall time of ``register`` (rigid, resampling on, as the CLI with --out-volume) with and
    without the verdict, on the benchmark's rigid cases; the median of ``repeats`` runs each
    (alternating); the per-check times from the runs with the verdict."""
    from medtorch.registration import register
    from medtorch.registration.synthetic import synthetic_pair

    tiny = synthetic_pair("rigid", seed=0, size=24, spacing=4.0)
    register(tiny.fixed, tiny.moving, device="cpu", iterations=3)  # torch's lazy start-up, not timed
    specs = [s for s in (case_mod.quick_specs() if quick else case_mod.standard_specs()) if s.mode == "rigid"]
    if not quick:
        specs = specs[:4]
    rows = []
    for spec in specs:
        folder = workdir / "benchmark-cases" / spec.name
        if (folder / "case.json").exists():
            case = _load_case(folder, spec)
        else:
            case = case_mod.build_case(spec)
            case.save(folder)
        without, with_, per_check = [], [], []
        for _ in range(repeats):
            for v in (False, True):
                load = os.getloadavg()[0]
                t0 = time.perf_counter()
                res = register(case.fixed, case.moving, mode="rigid", device="cpu", verdict=v,
                               verdict_options=verdict_options)
                dt = time.perf_counter() - t0
                (with_ if v else without).append((dt, load))
                if v:
                    per_check.append(dict(res.report["verdict_timings_s"]))
        w0 = float(np.median([d for d, _ in without]))
        w1 = float(np.median([d for d, _ in with_]))
        keys = sorted({k for p in per_check for k in p})
        med = {k: float(np.median([p.get(k, 0.0) for p in per_check])) for k in keys}
        loads = [ld for _, ld in without + with_]
        rows.append({"case": spec.name, "without_s": w0, "with_s": w1, "added": (w1 - w0) / w0, "checks_s": med,
                     "load": f"{min(loads):.1f}-{max(loads):.1f}",
                     "restarts_ran": sum(1 for p in per_check if "start_stability" in p)})
        log(f"  [{spec.name}] register {w0:.3f} s, with verdict {w1:.3f} s (+{100 * (w1 - w0) / w0:.0f} %), "
            f"load {rows[-1]['load']}")
    return {"rows": rows, "median_added": float(np.median([r["added"] for r in rows])) if rows else float("nan")}


# -- the report section -----------------------------------------------------------------------


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.{digits}f}"
    return str(v)


def _machine_text(machine: Any) -> str:
    """``{"cpu": "AMD EPYC", "cores": "2", ...}`` -> ``cpu AMD EPYC, cores 2, ...``."""
    if isinstance(machine, dict):
        return ", ".join(f"{k} {v}" for k, v in machine.items())
    return str(machine)


def render(result: dict[str, Any]) -> str:
    from medtorch.registration.verdict import VerdictOptions

    opts = result["options"]
    cal, held, bench, cost = result["calibration"], result["held_out"], result["benchmark"], result["cost"]
    lines = [BEGIN, "", "## The verdict: trusting a result without landmarks", ""]
    lines.append(f"Generated by `python -m benchmarks.registration --verdict{' --quick' if result['quick'] else ''}` "
                 f"on {result['date']} ({_machine_text(result['machine'])}; load average {result['load']} during the run; "
                 f"{result['total_s']:.0f} s in all). Every registration is MedTorch's torch engine (CPU) with its "
                 "defaults; the verdict (`medtorch.registration.verdict`) measures each result at a 4 mm level of "
                 "the images."
                 + (f" Section re-rendered on {result['rendered']} from that run's saved measurements "
                    "(`--report-only`)." if result.get("rendered") else ""))
    lines += ["", "### Targets", "", "| Target | Verdict | Evidence |", "| --- | --- | --- |"]
    a = held["auc"]
    lines.append(f"| Held-out AUC >= 0.95 at telling TRE > 2 mm from TRE < 0.5 mm (verdict score) | "
                 f"**{'MET' if a >= 0.95 else 'NOT MET'}** | AUC {a:.3f} ({held['n_failure_tre']} failures with a truth, "
                 f"{held['n_success']} successes); with the no-truth failures too: {held['auc_with_no_truth']:.3f} |")
    bench_ff = [r["name"] for r in bench["rows"] if r["within_target"] and r["verdict"] == "fail"]
    n_within = sum(1 for r in bench["rows"] if r["within_target"])
    lines.append(f"| No `fail` on the registration benchmark's cases within target | "
                 f"**{'MET' if not bench_ff else 'NOT MET'}** | {n_within} cases within target: "
                 f"{', '.join(f'{k} {v}' for k, v in sorted(bench['counts'].items()))}"
                 + (f"; fails: {', '.join(bench_ff)}" if bench_ff else "") + " |")
    flagged = held["kinds_flagged"]
    missed = [k for k, okk in flagged.items() if not okk]
    lines.append(f"| Every synthetic failure kind flagged at least `warn` (held-out cases that failed) | "
                 f"**{'MET' if not missed else 'NOT MET'}** | "
                 + (f"missed: {', '.join(missed)}" if missed else f"{len(flagged)} kinds, every failed case flagged")
                 + " |")
    slipped, n_failed = held.get("missed_failures", ([], 0))
    if n_failed:
        lines.append(f"| (beyond the targets) Registrations that went wrong on inputs meant to succeed, flagged | "
                     f"{n_failed - len(slipped)} of {n_failed} | "
                     + (f"passed: {', '.join(slipped)}" if slipped else "every one flagged") + " |")
    med = cost["median_added"]
    lines.append(f"| The verdict adds <= 30 % to a rigid registration's wall time | "
                 f"**{'MET' if med <= 0.30 else 'NOT MET'}** | median +{100 * med:.0f} % over "
                 f"{len(cost['rows'])} rigid cases (load {', '.join(r['load'] for r in cost['rows'])}) |")
    o = VerdictOptions(**opts)
    sh = result.get("shipped")
    if sh:
        differ = sh["differ"]
        lines += ["", "The figures above use the thresholds calibrated in this run. `register()` ships with "
                  "`VerdictOptions`' defaults"
                  + (": the same values." if not differ else
                     ", which differ: " + ", ".join(f"`{k}` {_f(float(a))} (calibrated {_f(float(b))})"
                                                    for k, (a, b) in sorted(differ.items())) + ".")
                  + f" With the shipped defaults, on the same held-out cases: AUC {sh['auc']:.3f}, successes failed: "
                  f"{len(sh['false_fails'])}"
                  + (f" ({', '.join(sh['false_fails'])})" if sh["false_fails"] else "")
                  + "; failure kinds not always flagged: " + (", ".join(sh["missed"]) or "none")
                  + "; registrations gone wrong on inputs meant to succeed that passed: "
                  + (", ".join(sh.get("missed_failures", ([], 0))[0]) or "none")
                  + (f"; `fail` on the registration benchmark's cases within target: "
                     f"{', '.join(sh['benchmark_fails']) or 'none'}" if "benchmark_fails" in sh else "") + "."]
    lines += ["", "### Checks and calibrated thresholds", "",
              "Split fixed in advance: odd case seeds are held out, even seeds calibrate. The thresholds of "
              "`local_similarity`, `inverse_consistency`, `convergence` and `start_stability` come from the calibration set alone by one rule: with `worst` the worst value over the "
              f"calibration successes (TRE < 0.5 mm), warn at {WARN_FACTOR:g} x worst and fail at {FAIL_FACTOR:g} x "
              "worst (divided instead of multiplied where lower is worse). Overlap, scale, shear, rotation, "
              "folding and Jacobian ranges are stated defaults, not calibrated. The verdict is the worst check; "
              "its score (for the AUC) is the largest check score (0 at a warning threshold, 1 at a failing one; "
              "the input findings carry no score). Start-stability restarts run only when another check's score "
              f"(overlap aside) is at least {o.borderline_score:g} (every case here was measured with them; the verdicts count "
              "them only where that rule runs them).", "",
              "| Check | Measures | Warn | Fail | Calibration successes (median / worst) |",
              "| --- | --- | ---: | ---: | ---: |"]
    desc = {
        "local_similarity": ("block correlation ratio after registration less a shuffled control", o.similarity_warn,
                             o.similarity_fail, "<"),
        "inverse_consistency": ("mean residual (mm) of registering back from the inverse", o.inverse_warn_mm,
                                o.inverse_fail_mm, ">"),
        "overlap": ("share of the fixed foreground inside the moving volume", o.overlap_warn, o.overlap_fail, "<"),
        "convergence": ("net move (mm) over the final level's last 30 % of iterations", o.convergence_warn,
                        o.convergence_fail, ">"),
        "start_stability": ("two restarts from 10 deg / 8 mm off: distance (mm) to the result", o.stability_warn_mm,
                            o.stability_fail_mm, ">"),
    }
    for check, (text, w, fl, op) in desc.items():
        st = cal["success_stats"].get(check)
        lines.append(f"| `{check}` | {text} | {op} {_f(w)} | {op} {_f(fl)} | "
                     + (f"{_f(st.get('median'))} / {_f(st.get('worst'))} |" if st else "stated |"))
    lines.append(f"| `rotation` | angle of the rotation from how the volumes lie | > {o.rotation_warn_deg:g} deg | - "
                 "| stated |")
    lines.append(f"| `scale` | scales of the linear part (QR factors) | outside {o.scale_min:g}-{o.scale_max:g} | "
                 f"outside {o.scale_fail_min:g}-{o.scale_fail_max:g} | stated |")
    lines.append(f"| `shear` | largest shear | > {o.shear_max:g} | > {o.shear_fail:g} | stated |")
    lines.append(f"| `folding`, `jacobian` (deformable) | folding %, smallest Jacobian determinant | > 0 % / < "
                 f"{o.jacobian_warn:g} | > {o.folding_fail_percent:g} % / <= {o.jacobian_fail:g} | stated |")
    lines.append("| `nan_inf_voxels_*`, `constant_slices_*`, `physical_overlap` | input findings (NaN/Inf, "
                 "constant slices, no physical overlap) | warn | - | policy |")
    lines += ["", f"Calibration set: {cal['n']} cases ({cal['counts']}); on it with these thresholds: "
              f"AUC {cal['auc']:.3f}, successes failed: {len(cal['false_fails'])}.", ""]
    lines += ["### Held-out results by kind", "",
              "Verdicts of the held-out cases (label from TRE: success < 0.5 mm, failure > 2 mm or no "
              "correspondence, between otherwise).", "",
              "| Kind | What | Cases | Verdicts (label: verdict x count) | Median TRE mm |",
              "| --- | --- | ---: | --- | ---: |"]
    for kind, (text, _) in KINDS.items():
        rows = [r for r in held["rows"] if r["kind"] == kind]
        if not rows:
            continue
        counts = held["per_kind"].get(kind, {})
        tres = [r["tre_mm"] for r in rows if r.get("tre_mm") is not None]
        lines.append(f"| {kind} | {text} | {len(rows)} | "
                     + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))
                     + f" | {_f(float(np.median(tres)) if tres else None, 2)} |")
    lines += ["", "Every held-out case:", "", "| Case | TRE mm | Label | Verdict | Score | Not passing |",
              "| --- | ---: | --- | --- | ---: | --- |"]
    for r in sorted(held["rows"], key=lambda r: (list(KINDS).index(r["kind"]), r["name"])):
        lines.append(f"| {r['name']} | {_f(r.get('tre_mm'), 2)} | {r['label']} | {r['verdict']} | "
                     f"{_f(r['score'], 2)} | {', '.join(r['reasons']) or '-'} |")
    lines += ["", "### The registration benchmark's own cases", "",
              "| Case | TRE mm | Within target | Verdict | Not passing |", "| --- | ---: | --- | --- | --- |"]
    for r in bench["rows"]:
        lines.append(f"| {r['name']} | {r['tre_mm']:.3f} | {'yes' if r['within_target'] else 'no'} | {r['verdict']} | "
                     f"{', '.join(r['reasons']) or '-'} |")
    lines += ["", "### Cost", "",
              "Wall time of `register(fixed, moving, mode='rigid')` (resampling on) without and with the verdict, "
              f"median of {result['repeats']} alternating runs each; per-check seconds from the runs with it "
              "(`report['verdict_timings_s']`). The load average is the machine's at each run (2 cores shared "
              "with other work: rerun on an idle machine for the final figures).", "",
              "| Case | Load | Without s | With s | Added | Overlap s | Local similarity s | Inverse consistency s "
              "| Start stability s (runs) | Verdict total s |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in cost["rows"]:
        c = r["checks_s"]
        lines.append(f"| {r['case']} | {r['load']} | {r['without_s']:.3f} | {r['with_s']:.3f} | "
                     f"+{100 * r['added']:.0f} % | {c.get('overlap', 0):.3f} | {c.get('local_similarity', 0):.3f} | "
                     f"{c.get('inverse_consistency', 0):.3f} | {c.get('start_stability', 0):.3f} "
                     f"({r['restarts_ran']}/{result['repeats']}) | {c.get('total', 0):.3f} |")
    lines += ["", END, ""]
    return "\n".join(lines)


def write_section(doc: Path, section: str) -> None:
    """Put ``section`` into ``doc`` between the verdict section's markers (replacing an earlier one), or append it."""
    sections.write_section(doc, section, BEGIN, END)


def keep_section(old_text: str, new_text: str) -> str:
    """``new_text`` (the main benchmark's report) with the verdict section of ``old_text`` kept."""
    return sections.keep_section(old_text, new_text, BEGIN, END)


def main(quick: bool, workdir: Path, out: Path, repeats: int = 3, log: Callable[[str], None] = print,
         calibrate_only: bool = False, report_only: bool = False) -> dict[str, Any]:
    """Run the verdict section in ``workdir`` (finished cases are reused from its
    ``verdict_records.json``) and write it into ``out``. ``report_only``: run nothing; judge
    the saved records and rows again and render the section from them and the saved cost."""
    import datetime as dt

    from benchmarks.registration import report
    from medtorch.registration.verdict import VerdictOptions

    started = time.perf_counter()
    loads = [os.getloadavg()[0]]
    workdir.mkdir(parents=True, exist_ok=True)
    seeds = [0, 1, 8, 9] if quick else list(range(12))
    rec_path = workdir / "verdict_records.json"
    records: list[dict[str, Any]] = []
    done: set[str] = set()
    if rec_path.exists():
        records = json.loads(rec_path.read_text(encoding="utf-8"))
        done = {r["name"] for r in records}
    if not report_only:
        log(f"verdict: building cases (seeds {seeds}) in {workdir}")
    cases = [] if report_only else build_cases(seeds, workdir, log=log)
    for case in cases:
        if case.name in done:
            continue
        rec = run_case(case)
        records.append(rec)
        loads.append(os.getloadavg()[0])
        log(f"  [{case.name}] {case.split}: TRE {_f(rec.get('tre_mm'), 2)} mm, {rec.get('status')} "
            f"({rec.get('seconds', 0):.1f} s)")
        rec_path.write_text(json.dumps(records, indent=1, default=str), encoding="utf-8")
    thresholds = calibrate(records)
    log(f"calibrated thresholds: {thresholds}")
    opts = replace(VerdictOptions(), **thresholds)
    cal = evaluate(records, opts, "calibration")
    held = evaluate(records, opts, "held-out")
    stats: dict[str, dict[str, float]] = {}
    cal_succ = [r for r in records if r["split"] == "calibration" and r.get("status") == "ok"
                and label_of(r) == "success"]
    for check, (_, higher_worse) in CALIBRATED.items():
        vals = [v for r in cal_succ if (v := _measure_of(r, check)) is not None and math.isfinite(v)]
        if vals:
            stats[check] = {"median": float(np.median(vals)), "worst": float(max(vals) if higher_worse else min(vals))}
    cal_counts: dict[str, int] = {}
    for r in cal["rows"]:
        cal_counts[r["label"]] = cal_counts.get(r["label"], 0) + 1
    held["kinds_flagged"] = kinds_flagged(held)
    # the thresholds register() ships with (VerdictOptions' defaults) on the same held-out cases
    shipped_opts = VerdictOptions()
    shipped = evaluate(records, shipped_opts, "held-out")
    held["missed_failures"] = missed_failures(held)
    shipped_summary = {"auc": shipped["auc"], "false_fails": shipped["false_fails"],
                       "missed": [k for k, ok in kinds_flagged(shipped).items() if not ok],
                       "missed_failures": missed_failures(shipped),
                       "differ": {k: (getattr(shipped_opts, k), v) for k, v in thresholds.items()
                                  if not math.isclose(float(getattr(shipped_opts, k)), float(v), rel_tol=1e-3)}}
    log(f"held-out with the shipped defaults: AUC {shipped['auc']:.3f}, false fails {shipped['false_fails']}")
    result: dict[str, Any] = {"quick": quick, "options": {**thresholds}, "thresholds": thresholds,
                              "calibration": {"n": len(cal["rows"]), "counts": ", ".join(
                                  f"{k} {v}" for k, v in sorted(cal_counts.items())), "auc": cal["auc"],
                                  "false_fails": cal["false_fails"], "success_stats": stats},
                              "held_out": held, "shipped": shipped_summary}
    if calibrate_only:
        return result
    saved_path = workdir / "verdict_result.json"
    saved = json.loads(saved_path.read_text(encoding="utf-8")) if report_only and saved_path.exists() else None
    if report_only and saved is None:
        raise SystemExit(f"--report-only: no saved results in {saved_path}; run the verdict section first")
    if saved is None:
        log("verdict: the registration benchmark's own cases")
        bench_rows = benchmark_successes(quick, workdir, log)
    else:  # the measured rows of the last run, judged again below
        bench_rows = saved["benchmark"]["rows"]
    counts: dict[str, int] = {}
    for r in bench_rows:
        v = verdict_of(r, opts)
        r["verdict"] = v.status
        r["reasons"] = [f"{c.name} {c.status}" for c in v.reasons]
        if r["within_target"]:
            counts[v.status] = counts.get(v.status, 0) + 1
    shipped_summary["benchmark_fails"] = [r["name"] for r in bench_rows if r["within_target"]
                                          and verdict_of(r, shipped_opts).status == "fail"]
    result["benchmark"] = {"rows": bench_rows, "counts": counts}
    if saved is None:
        log("verdict: cost")
        loads.append(os.getloadavg()[0])
        result["cost"] = measure_cost(quick, workdir, repeats, log, thresholds)
        result["repeats"] = repeats
        loads.append(os.getloadavg()[0])
        result.update({"date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": report.machine_summary(),
                       "load": f"{min(loads):.1f} to {max(loads):.1f}", "total_s": time.perf_counter() - started})
    else:
        if bool(saved.get("quick")) != quick:
            raise SystemExit(f"--report-only: the saved results in {saved_path} are from a run with"
                             f"{'' if saved.get('quick') else 'out'} --quick; give the same option")
        result.update({k: saved[k] for k in ("cost", "repeats", "date", "machine", "load", "total_s")})
        result["rendered"] = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    section = render(result)
    saved_path.write_text(json.dumps(
        {k: v for k, v in result.items() if k != "held_out"} | {"held_out_auc": held["auc"]}, indent=1, default=str),
        encoding="utf-8")
    write_section(out, section)
    log(f"verdict section written to {out}")
    return result
