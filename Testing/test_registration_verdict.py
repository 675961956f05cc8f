"""The registration verdict (medtorch.registration.verdict): each check on a success and on a
failure, the calibrated verdict on held-out synthetic cases, the input policies (NaN, constant
slices, no physical overlap, one slice), and where the verdict shows (CLI exit code 3 and
``--strict``, ``.verdict.json``, the register operation, the pipeline's run.json, the batch
summary). Small phantoms (40^3 or less) keep it quick."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from medtorch.errors import MedTorchInputError
from medtorch.registration import register
from medtorch.registration.synthetic import synthetic_pair
from medtorch.registration.verdict import (
    Measures,
    VerdictOptions,
    inspect_inputs,
    judge,
    linear_factors,
    needs_restarts,
    rotation_angle_deg,
)
from medtorch.volume import Geometry, Volume

ALWAYS = {"restarts": "always"}


@pytest.fixture(scope="module")
def pair():
    return synthetic_pair("rigid", seed=1, size=40, spacing=2.4)


def _noise_like(v: Volume, seed: int = 0, shift: float = 0.0) -> Volume:
    g = v.geometry
    arr = np.random.default_rng(seed).normal(100.0, 30.0, g.shape_zyx).astype(np.float32)
    return Volume(arr, Geometry(g.size, np.asarray(g.origin) + shift, g.spacing, g.direction))


@pytest.fixture(scope="module")
def success(pair):
    return register(pair.fixed, pair.moving, device="cpu", resample_output=False, verdict_options=ALWAYS)


@pytest.fixture(scope="module")
def noise(pair):
    return register(pair.fixed, _noise_like(pair.moving), device="cpu", resample_output=False,
                    verdict_options=ALWAYS)


def _check(result, name):
    c = result.verdict.check(name)
    assert c is not None, [x.name for x in result.verdict.checks]
    return c


# -- each check on a success and a failure ----------------------------------------------------------------------


def test_success_passes_every_check(pair, success):
    assert pair.tre(success.map_points(pair.landmarks)).mean() < 0.5
    v = success.verdict
    assert v.status == "pass", v.summary()
    assert v.score < 0
    for name in ("overlap", "local_similarity", "scale", "shear", "rotation", "convergence", "inverse_consistency",
                 "start_stability"):
        assert _check(success, name).status == "pass", _check(success, name)
    assert success.report["verdict"] == "pass"
    assert set(success.report["verdict_timings_s"]) >= {"overlap", "local_similarity", "inverse_consistency",
                                                         "start_stability", "total"}


def test_noise_fails_local_similarity_inverse_consistency_and_restarts(noise):
    v = noise.verdict
    assert v.status == "fail"
    sim = _check(noise, "local_similarity")
    assert sim.status == "fail" and abs(sim.details["after"] - sim.details["control"]) < 0.05
    assert "control" in sim.message
    assert _check(noise, "inverse_consistency").status in ("warn", "fail")
    assert _check(noise, "inverse_consistency").value > _check(noise, "inverse_consistency").warn_at
    assert _check(noise, "start_stability").status == "fail"
    assert v.score >= 1.0


def test_local_similarity_before_after_and_control(success):
    d = _check(success, "local_similarity").details
    assert d["after"] > d["before"] > d["control"]  # registration improved on how the volumes lay


def test_overlap_of_a_cropped_moving_volume(pair, success):
    g = pair.moving.geometry
    keep = g.size[2] // 5  # the middle fifth of the slices
    k0 = 2 * g.size[2] // 5
    origin = g.index_to_physical(np.array([[0.0, 0.0, float(k0)]]))[0]
    cropped = Volume(pair.moving.array[k0:k0 + keep], Geometry((g.size[0], g.size[1], keep), origin, g.spacing,
                                                               g.direction))
    res = register(pair.fixed, cropped, device="cpu", resample_output=False, verdict_options={"restarts": "never"})
    ov = _check(res, "overlap")
    assert ov.value < 0.6 and ov.status in ("warn", "fail"), ov
    assert _check(success, "overlap").value > 0.95


def test_plausibility_scales_shears_mirror_and_rotation():
    lin = np.diag([1.2, 0.9, 1.0]) @ np.array([[1.0, 0.1, 0.05], [0.0, 1.0, -0.2], [0.0, 0.0, 1.0]])
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 degrees about z
    scales, shears, det = linear_factors(rot @ lin)
    np.testing.assert_allclose(scales, [1.2, 0.9, 1.0], atol=1e-9)
    np.testing.assert_allclose(shears, [0.1, 0.05, -0.2], atol=1e-9)
    assert det == pytest.approx(1.08)
    assert rotation_angle_deg(rot) == pytest.approx(90.0)

    def verdict_of(matrix):
        s, h, d = linear_factors(matrix)
        return judge(_measures(scales=s.tolist(), shears=h.tolist(), determinant=d,
                               rotation_deg=rotation_angle_deg(matrix)))

    assert verdict_of(np.eye(3)).status == "pass"
    assert verdict_of(np.diag([1.6, 1.0, 1.0])).check("scale").status == "warn"
    assert verdict_of(np.diag([2.5, 1.0, 1.0])).check("scale").status == "fail"
    assert verdict_of(np.diag([0.55, 1.0, 1.0])).check("scale").status == "warn"
    assert verdict_of(np.array([[1.0, 0.2, 0.0], [0, 1, 0], [0, 0, 1]])).check("shear").status == "warn"
    assert verdict_of(np.array([[1.0, 0.4, 0.0], [0, 1, 0], [0, 0, 1]])).check("shear").status == "fail"
    mirror = verdict_of(np.diag([-1.0, 1.0, 1.0]))
    assert mirror.check("scale").status == "fail" and "mirrors" in mirror.check("scale").message
    assert verdict_of(rot).check("rotation").status == "warn"
    # configurable: a stricter range
    strict = VerdictOptions.from_options({"scale_max": 1.1, "scale_fail_max": 1.3})
    s, h, d = linear_factors(np.diag([1.2, 1.0, 1.0]))
    assert judge(_measures(scales=s.tolist()), strict).check("scale").status == "warn"
    with pytest.raises(MedTorchInputError, match="unknown verdict option"):
        VerdictOptions.from_options({"scale_maximum": 2})
    with pytest.raises(MedTorchInputError, match="nested"):
        VerdictOptions.from_options({"scale_max": 0.9})


def _measures(**changes) -> Measures:
    base = dict(mode="rigid", level_mm=4.0, overlap=1.0, similarity_after=0.8, similarity_control=0.1,
                similarity_before=0.3, similarity_blocks=50, uninformative=0.0, inverse_mean_mm=0.3,
                inverse_max_mm=0.6, scales=[1.0, 1.0, 1.0], shears=[0.0, 0.0, 0.0], determinant=1.0,
                deformable=False, folding_percent=None, jacobian_min=None, jacobian_max=None,
                convergence={"tail_net_mm": 0.05, "tail_path_mm": 0.1, "final_level_mm": 2.0,
                             "first_level_improvement": 0.2, "stalled_at_start": False, "iterations": [20],
                             "planned": [20]}, stability_mm=None)
    base.update(changes)
    return Measures(**base)


def test_convergence_still_moving_and_stalled():
    o = VerdictOptions()
    assert judge(_measures()).check("convergence").status == "pass"
    moving = judge(_measures(convergence={**_measures().convergence, "tail_net_mm": o.convergence_fail * 2}))
    assert moving.check("convergence").status == "fail" and "not converged" in moving.check("convergence").message
    stalled = judge(_measures(convergence={**_measures().convergence, "stalled_at_start": True}))
    assert stalled.check("convergence").status == "warn" and "stalled" in stalled.check("convergence").message
    assert judge(_measures(convergence=None)).check("convergence").status == "skip"


def test_deformable_folding_and_jacobian():
    ok = judge(_measures(deformable=True, folding_percent=0.0, jacobian_min=0.4, jacobian_max=2.0))
    assert ok.check("folding").status == "pass" and ok.check("jacobian").status == "pass"
    some = judge(_measures(deformable=True, folding_percent=0.05, jacobian_min=-0.2, jacobian_max=2.0))
    fold = some.check("folding")
    assert fold.status == "warn" and "0.05 %" in fold.message and "-0.2" in fold.message
    assert some.check("jacobian").status == "fail"
    torn = judge(_measures(deformable=True, folding_percent=3.0, jacobian_min=-1.0, jacobian_max=5.0))
    assert torn.check("folding").status == "fail" and torn.status == "fail"
    assert judge(_measures()).check("folding") is None  # linear results: no folding check


def test_start_stability_runs_only_when_borderline(pair, success):
    clear = register(pair.fixed, pair.moving, device="cpu", resample_output=False)
    assert clear.verdict.check("start_stability").status == "skip"
    assert "start_stability" not in clear.report["verdict_timings_s"]
    assert _check(success, "start_stability").value < VerdictOptions().stability_warn_mm
    never = judge(_measures(stability_mm=50.0), VerdictOptions(restarts="never"), with_stability=False)
    assert never.check("start_stability").status == "skip"
    o = VerdictOptions()
    clear_pre = judge(_measures(), o, with_stability=False)
    assert not needs_restarts(clear_pre, o)
    # a borderline alignment check runs them; a partial field of view alone does not
    assert needs_restarts(judge(_measures(inverse_mean_mm=0.95 * o.inverse_warn_mm), o, with_stability=False), o)
    cropped_pre = judge(_measures(overlap=0.9), o, with_stability=False)
    assert cropped_pre.check("overlap").score > o.borderline_score and not needs_restarts(cropped_pre, o)


def test_the_verdict_does_not_change_the_registration(pair, success):
    plain = register(pair.fixed, pair.moving, device="cpu", resample_output=False, verdict=False)
    assert plain.verdict is None and "verdict" not in plain.report
    np.testing.assert_array_equal(plain.affine, success.affine)


def test_deformable_result_gets_folding_checks_and_a_similarity_map():
    p = synthetic_pair("deformable", seed=2, size=32, spacing=3.0)
    res = register(p.fixed, p.moving, mode="deformable", device="cpu", similarity_map=True,
                   deformable_iterations=20)
    assert res.verdict.check("folding") is not None and res.verdict.check("jacobian") is not None
    assert res.similarity_map is not None and res.similarity_map.geometry.isclose(p.fixed.geometry)
    arr = res.similarity_map.array
    assert 0.0 <= float(arr.min()) and float(arr.max()) <= 1.0 and float(arr.max()) > 0.3


# -- calibrated thresholds on held-out synthetic cases (odd seeds, see benchmarks/registration/verdict.py) -------


def test_calibrated_verdict_on_held_out_cases():
    from benchmarks.registration import verdict as bench

    base = bench._phantom_base(1)  # seed 1: held out
    assert bench.split_of(1) == "held-out"
    clean = bench.derive("clean", 1, base, "phantom")
    res = register(clean.fixed, clean.moving, device="cpu", resample_output=False, **{
        k: v for k, v in clean.register_kwargs.items() if k != "mode"}, mode=clean.register_kwargs["mode"])
    assert np.linalg.norm(res.map_points(clean.landmarks) - clean.truth(clean.landmarks), axis=1).mean() < 0.5
    assert res.verdict.status == "pass", res.verdict.summary()
    for kind, worst_allowed in (("noise", "fail"), ("wrong_start", "warn"), ("stopped_early", "warn")):
        case = bench.derive(kind, 1, base, "phantom")
        kw = dict(case.register_kwargs)
        r = register(case.fixed, case.moving, device="cpu", resample_output=False, **kw)
        if case.truth is not None:  # a failure by its TRE
            assert np.linalg.norm(r.map_points(case.landmarks) - case.truth(case.landmarks), axis=1).mean() > 2.0
        assert r.verdict.status in ("warn", "fail"), (kind, r.verdict.summary())
        if worst_allowed == "fail":
            assert r.verdict.status == "fail", (kind, r.verdict.summary())


# -- input policies ----------------------------------------------------------------------------------------------


def test_nan_voxels_are_treated_as_outside_and_named(pair):
    arr = pair.moving.array.astype(np.float32).copy()
    arr[::6] = np.nan
    arr[3, 4, 5] = np.inf
    moving = Volume(arr, pair.moving.geometry)
    res = register(pair.fixed, moving, device="cpu")
    assert pair.tre(res.map_points(pair.landmarks)).mean() < 0.5
    c = res.verdict.check("nan_inf_voxels_moving")
    assert c.status == "warn" and "NaN" in c.message and c.details["inf"] == 1
    assert res.verdict.status in ("warn", "fail")
    assert np.isnan(moving.array).sum() == np.isnan(arr).sum()  # the input is not modified
    assert np.isnan(res.resampled.array).any()  # never silently replaced in the output
    with pytest.raises(MedTorchInputError, match="NaN"):  # the classic engines refuse them
        register(pair.fixed, moving, engine="sitk")
    with pytest.raises(MedTorchInputError, match="no finite voxel"):
        register(pair.fixed, Volume(np.full_like(arr, np.nan), moving.geometry), device="cpu")


def test_constant_slices_are_masked_and_warned(pair):
    arr = pair.moving.array.astype(np.float32).copy()
    arr[-arr.shape[0] // 3:] = 0.0
    findings = inspect_inputs(pair.fixed, Volume(arr, pair.moving.geometry))
    c = next(x for x in findings.checks if x.name == "constant_slices_moving")
    assert c.status == "warn" and "constant slices" in c.message and "along k" in c.message
    assert findings.moving_valid is not None and not findings.moving_valid[-1].any() and findings.moving_valid[0].all()
    few = pair.moving.array.astype(np.float32).copy()
    few[-1] = 0.0  # one blank edge slice: masked, noted, not a warning
    c1 = next(x for x in inspect_inputs(pair.fixed, Volume(few, pair.moving.geometry)).checks
              if x.name == "constant_slices_moving")
    assert c1.status == "pass"
    with pytest.raises(MedTorchInputError, match="constant"):
        inspect_inputs(pair.fixed, Volume(np.full_like(arr, 3.0), pair.moving.geometry))


def test_no_physical_overlap_warns_or_is_refused(pair):
    g = pair.moving.geometry
    far = Volume(pair.moving.array, Geometry(g.size, np.asarray(g.origin) + 5000.0, g.spacing, g.direction))
    res = register(pair.fixed, far, device="cpu", resample_output=False)
    c = res.verdict.check("physical_overlap")
    assert c.status == "warn" and c.value > 4000 and "initialisation" in c.message
    with pytest.raises(MedTorchInputError, match="do not overlap"):
        register(pair.fixed, far, device="cpu", init="none")


def test_one_slice_volume_is_refused(pair):
    g = pair.moving.geometry
    one = Volume(pair.moving.array[10:11], Geometry((g.size[0], g.size[1], 1), g.origin, g.spacing, g.direction))
    with pytest.raises(MedTorchInputError, match="2D"):
        register(pair.fixed, one, device="cpu")


# -- where the verdict shows ------------------------------------------------------------------------------------


def test_register_operation_values_carry_the_verdict(pair):
    from medtorch import ops
    from medtorch.ops.registration import RegisterRequest

    out = ops.run(RegisterRequest(similarity_map=True, resample_output=False, verdict_options={"shear_max": 0.2}),
                  {"fixed": pair.fixed, "moving": pair.moving})
    assert out.values["verdict"]["status"] == "pass"
    assert {c["name"] for c in out.values["verdict"]["checks"]} >= {"overlap", "local_similarity"}
    assert next(c for c in out.values["verdict"]["checks"] if c["name"] == "shear")["warn_at"] == 0.2
    json.dumps(out.values)  # plain JSON: what a background task sends back
    assert out.volumes["similarity_map"].geometry.isclose(pair.fixed.geometry)
    off = ops.run(RegisterRequest(verdict=False, resample_output=False), {"fixed": pair.fixed, "moving": pair.moving})
    assert off.values["verdict"] is None


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory, pair):
    from medtorch.io import write_volume

    d = tmp_path_factory.mktemp("verdict_cli")
    arr = pair.moving.array.astype(np.float32).copy()
    arr[::6] = np.nan
    return {"fixed": write_volume(pair.fixed, d / "fixed.nrrd"),
            "moving": write_volume(pair.moving, d / "moving.nrrd"),
            "nan": write_volume(Volume(arr, pair.moving.geometry), d / "nan.nrrd"),
            "noise_far": write_volume(_noise_like(pair.moving, shift=5000.0), d / "noise_far.nrrd")}


def _cli(argv, capsys):
    from medtorch.cli import main

    rc = main(argv + ["-q"])
    return rc, capsys.readouterr().err


def test_cli_noise_far_away_exits_3_and_writes_the_verdict(pair_files, tmp_path, capsys):
    out = tmp_path / "reg.tfm"
    rc, err = _cli(["register", "--fixed", str(pair_files["fixed"]), "--moving", str(pair_files["noise_far"]),
                    "--mode", "affine", "--out-transform", str(out)], capsys)
    assert rc == 3, err
    assert err.count("\n") == 1 and "verdict: fail" in err and "local_similarity" in err
    assert "physical_overlap" in err and "Traceback" not in err
    assert out.exists()  # written, with the verdict beside it
    verdict = json.loads((tmp_path / "reg.verdict.json").read_text())
    assert verdict["status"] == "fail" and "local_similarity" in verdict["reasons"]
    report = json.loads((tmp_path / "reg.json").read_text())
    assert report["verdict"]["status"] == "fail"


def test_cli_strict_writes_nothing(pair_files, tmp_path, capsys):
    before = set(tmp_path.iterdir())
    rc, err = _cli(["register", "--fixed", str(pair_files["fixed"]), "--moving", str(pair_files["noise_far"]),
                    "--out-transform", str(tmp_path / "reg.tfm"), "--out-volume", str(tmp_path / "r.nrrd"),
                    "--strict"], capsys)
    assert rc == 3 and "nothing was written" in err
    assert set(tmp_path.iterdir()) == before


def test_cli_nan_case_names_the_nans_and_succeeds(pair_files, tmp_path, capsys):
    rc, err = _cli(["register", "--fixed", str(pair_files["fixed"]), "--moving", str(pair_files["nan"]),
                    "--out-transform", str(tmp_path / "reg.h5")], capsys)
    assert rc == 0, err
    assert "warning" in err and "nan_inf_voxels_moving" in err
    v = json.loads((tmp_path / "reg.verdict.json").read_text())
    assert "NaN" in next(c for c in v["checks"] if c["name"] == "nan_inf_voxels_moving")["message"]


def test_cli_clean_pair_passes_quietly(pair_files, tmp_path, capsys):
    rc, err = _cli(["register", "--fixed", str(pair_files["fixed"]), "--moving", str(pair_files["moving"]),
                    "--out-transform", str(tmp_path / "reg.tfm"), "--mode", "rigid",
                    "--verdict-option", "restarts=\"never\""], capsys)
    assert rc == 0 and err == ""
    assert json.loads((tmp_path / "reg.verdict.json").read_text())["status"] == "pass"


def test_pipeline_and_batch_summary_carry_the_verdict(pair_files, tmp_path):
    import yaml

    from medtorch.pipeline.batch import _run_case, write_summary

    cfg = tmp_path / "study.yaml"
    cfg.write_text(yaml.safe_dump({"inputs": {"fixed": str(pair_files["fixed"]), "moving": str(pair_files["moving"])},
                                   "steps": {"register": {"mode": "rigid"}}}))
    rows = []
    for cid, moving in (("good", pair_files["moving"]), ("noise", pair_files["noise_far"])):
        rows.append(_run_case(str(cfg), {"study": cid, "output_dir": str(tmp_path / cid), "moving": str(moving)}))
        rec = json.loads((tmp_path / cid / "run.json").read_text())
        assert rec["status"] == "done" and rec["verdict"] == rec["verdicts"]["register"]["status"]
    write_summary(tmp_path / "summary.csv", rows)
    with open(tmp_path / "summary.csv", newline="") as fh:
        summary = {r["case_id"]: r for r in csv.DictReader(fh)}
    assert list(summary["good"])[:4] == ["case_id", "status", "verdict", "verdict_reasons"]
    assert summary["good"]["verdict"] == "pass" and summary["good"]["verdict_reasons"] == ""
    assert summary["noise"]["verdict"] == "fail" and "register.local_similarity" in summary["noise"]["verdict_reasons"]


def test_verdict_is_deterministic_and_leaves_global_random_state_alone(pair):
    import torch

    np.random.seed(5)
    torch.manual_seed(5)
    a = register(pair.fixed, pair.moving, device="cpu", resample_output=False, seed=2)
    after_np, after_torch = np.random.rand(), torch.rand(1).item()
    np.random.seed(5)
    torch.manual_seed(5)
    b = register(pair.fixed, pair.moving, device="cpu", resample_output=False, seed=2)
    assert (np.random.rand(), torch.rand(1).item()) == (after_np, after_torch)  # the global states moved alike
    assert [(c.name, c.value, c.status) for c in a.verdict.checks] == [(c.name, c.value, c.status)
                                                                      for c in b.verdict.checks]


def test_benchmark_doc_section_is_kept_by_the_main_report(tmp_path):
    from benchmarks.registration import verdict as bench

    doc = tmp_path / "registration.md"
    doc.write_text("# Registration benchmark\n\n## Targets\n\nold\n")
    bench.write_section(doc, f"{bench.BEGIN}\n\n## The verdict\n\nfirst\n\n{bench.END}\n")
    bench.write_section(doc, f"{bench.BEGIN}\n\n## The verdict\n\nsecond\n\n{bench.END}\n")
    text = doc.read_text()
    assert "old" in text and "second" in text and "first" not in text and text.count(bench.BEGIN) == 1
    rewritten = bench.keep_section(text, "# Registration benchmark\n\n## Targets\n\nnew\n")
    assert "new" in rewritten and "second" in rewritten and "old" not in rewritten


def test_benchmark_counts_failure_kinds_and_names_slipped_registrations():
    from benchmarks.registration import verdict as bench

    rows = [{"name": "noise-1", "kind": "noise", "label": "failure", "verdict": "fail"},
            {"name": "flipped-1", "kind": "flipped", "label": "failure", "verdict": "pass"},
            {"name": "clean-1", "kind": "clean", "label": "failure", "verdict": "pass"},
            {"name": "clean-3", "kind": "clean", "label": "success", "verdict": "pass"}]
    flagged = bench.kinds_flagged({"rows": rows})
    assert flagged == {"flipped": False, "noise": True}  # only the synthetic failure kinds
    assert bench.missed_failures({"rows": rows}) == (["clean-1"], 1)


def test_cli_refuses_a_report_path_that_is_the_verdicts(pair_files, tmp_path, capsys):
    rc, err = _cli(["register", "--fixed", str(pair_files["fixed"]), "--moving", str(pair_files["moving"]),
                    "--out-transform", str(tmp_path / "reg.tfm"), "--report", str(tmp_path / "reg.verdict.json")],
                   capsys)
    assert rc == 2 and "verdict would be written to" in err and "--report" in err
    assert list(tmp_path.iterdir()) == []
