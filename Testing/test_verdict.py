"""The generic verdict type (medtorch.verdict): checks, grading, worst-of, round trips."""

from __future__ import annotations

import json

import pytest

from medtorch.verdict import Check, Verdict, grade, worst


def test_worst_of_statuses_and_skip_counts_for_nothing():
    assert worst([]) == "pass"
    assert worst(["pass", "skip"]) == "pass"
    assert worst(["pass", "warn", "skip"]) == "warn"
    assert worst(["warn", "fail", "pass"]) == "fail"
    with pytest.raises(ValueError):
        worst(["maybe"])


def test_grade_higher_is_worse_statuses_scores_and_messages():
    ok = grade("residual", 1.0, warn_at=2.0, fail_at=5.0, unit="mm", what="residual")
    assert ok.status == "pass" and ok.score == pytest.approx(-1.0 / 3.0) and ok.threshold == 2.0
    assert ok.message == "residual: 1 mm (warn > 2 mm, fail > 5 mm)"
    w = grade("residual", 2.0, warn_at=2.0, fail_at=5.0)  # at the threshold: that threshold's status
    assert w.status == "warn" and w.score == pytest.approx(0.0)
    f = grade("residual", 6.5, warn_at=2.0, fail_at=5.0, messages={"fail": "{value} is past {fail_at}{unit}"},
              unit="mm")
    assert f.status == "fail" and f.threshold == 5.0 and f.score == pytest.approx(1.5)
    assert f.message == "6.5 is past 5 mm"


def test_grade_lower_is_worse_and_single_thresholds():
    c = grade("overlap", 0.5, warn_at=0.8, fail_at=0.4, higher_is_worse=False)
    assert c.status == "warn" and 0.0 < c.score < 1.0
    assert grade("overlap", 0.3, warn_at=0.8, fail_at=0.4, higher_is_worse=False).status == "fail"
    assert grade("overlap", 0.95, warn_at=0.8, fail_at=0.4, higher_is_worse=False).status == "pass"
    only_warn = grade("angle", 90.0, warn_at=60.0, scale=240.0)
    assert only_warn.status == "warn" and only_warn.score == pytest.approx(0.125)
    only_fail = grade("x", 3.0, warn_at=None, fail_at=2.0)
    assert only_fail.status == "fail" and only_fail.score == pytest.approx(1.5)
    nan = grade("x", float("nan"), warn_at=1.0, messages={"skip": "could not measure"})
    assert nan.status == "skip" and nan.value is None and nan.message == "could not measure"


def test_verdict_is_the_worst_check_and_cannot_disagree():
    checks = [Check("a", 1.0, 2.0, "pass", "fine", score=-0.5), Check("b", 3.0, 2.0, "warn", "hm", score=0.3),
              Check("c", None, None, "skip", "not run")]
    v = Verdict.of(checks, "thing")
    assert v.status == "warn" and not v.passed and not v.failed
    assert v.score == pytest.approx(0.3)
    assert [c.name for c in v.reasons] == ["b"]
    assert "thing verdict: warn" in v.summary() and "b warn" in v.summary()
    assert v.explain() == ["WARN b: hm"]
    assert v.check("c").status == "skip" and v.check("zz") is None
    with pytest.raises(ValueError, match="disagrees"):
        Verdict("pass", tuple(checks))
    with pytest.raises(ValueError):
        Verdict("maybe", ())
    assert Verdict.of([]).status == "pass" and Verdict.of([]).score is None
    worse = v.with_checks([Check("d", 9.0, 5.0, "fail", "bad", score=2.0)])
    assert worse.status == "fail" and [c.name for c in worse.reasons] == ["d", "b"]
    relaxed = worse.replace_check("d", status="pass", score=-1.0)
    assert relaxed.status == "warn"


def test_to_dict_round_trips_through_json():
    v = Verdict.of([grade("residual", 6.0, warn_at=2.0, fail_at=5.0, unit="mm", seconds=0.01,
                          details={"max_mm": 9.0}),
                    grade("overlap", float("inf"), warn_at=0.8, higher_is_worse=False)], "registration")
    d = json.loads(v.to_json())
    assert d["status"] == "fail" and d["reasons"] == ["residual"] and d["subject"] == "registration"
    assert d["checks"][0]["threshold"] == 5.0 and d["checks"][0]["details"] == {"max_mm": 9.0}
    assert d["checks"][1]["value"] is None  # non-finite numbers become null in JSON
    back = Verdict.from_dict(d)
    assert back.status == v.status and [c.name for c in back.checks] == ["residual", "overlap"]
    assert back.checks[0].threshold_text == "warn > 2 mm, fail > 5 mm"
