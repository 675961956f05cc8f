"""A verdict on a result: ``pass``, ``warn`` or ``fail``, with the checks that decided it.

Any operation whose result a user cannot check by eye (a registration without landmarks, a
segmentation that may have run away, a super-resolved volume) can attach a :class:`Verdict`:
a list of :class:`Check` objects, each a measured number, the threshold it was held against,
its status and a sentence a user understands. The verdict's status is the worst of its
checks' (``skip`` checks, measurements that could not be made, count for nothing).

Checks made with :func:`grade` also carry a continuous ``score``: below 0 the check passes,
from 0 to 1 it warns, from 1 it fails (linear between the thresholds, in the check's own
units). The verdict's score is the largest of its checks' scores: one number that ranks
results from "clearly fine" to "clearly wrong" (what a ROC curve of the verdict is drawn from).

Nothing here knows about registration, segmentation or any front end; it imports nothing
but the standard library.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

__all__ = ["Check", "STATUSES", "Status", "Verdict", "grade", "worst"]

Status = Literal["pass", "warn", "fail", "skip"]
#: The statuses in order of severity (``skip`` is not a verdict, only a check's).
STATUSES: tuple[str, ...] = ("pass", "warn", "fail")
_RANK = {"skip": -1, "pass": 0, "warn": 1, "fail": 2}


def worst(statuses: Iterable[str]) -> str:
    """The most severe of ``statuses`` (``pass`` when there is none, ``skip`` counts for nothing)."""
    out = "pass"
    for s in statuses:
        if s not in _RANK:
            raise ValueError(f"unknown status {s!r}: use one of pass, warn, fail, skip")
        if _RANK[s] > _RANK[out]:
            out = s
    return out


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    a = abs(v)
    if a != 0 and (a >= 1e4 or a < 1e-3):
        return f"{v:.3g}"
    return f"{v:.3f}".rstrip("0").rstrip(".") if a < 100 else f"{v:.1f}"


@dataclass(frozen=True)
class Check:
    """One measurement held against its thresholds.

    Attributes:
        name: a short identifier (``inverse_consistency``, ``overlap``...).
        value: the measured number (``None`` when not measured: ``status`` is then ``skip``,
            or the check is a yes/no finding).
        threshold: the threshold that decided the status (the failing one for ``fail``, else
            the warning one), or ``None``.
        status: ``pass``, ``warn``, ``fail`` or ``skip``.
        message: a sentence for the user: what was measured and what it means.
        unit: the unit of ``value`` and the thresholds (``mm``, ``%``, or ``""``).
        warn_at, fail_at: the warning and failing thresholds (either may be ``None``).
        higher_is_worse: whether values above the thresholds are the bad side.
        score: continuous badness: < 0 pass, 0..1 warn, >= 1 fail (``None`` if not graded).
        seconds: what the measurement cost (wall seconds), if timed.
        details: further numbers (plain JSON values).
    """

    name: str
    value: float | None
    threshold: float | None
    status: str
    message: str
    unit: str = ""
    warn_at: float | None = None
    fail_at: float | None = None
    higher_is_worse: bool = True
    score: float | None = None
    seconds: float | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in _RANK:
            raise ValueError(f"unknown status {self.status!r}: use one of pass, warn, fail, skip")

    @property
    def threshold_text(self) -> str:
        """The thresholds in words, e.g. ``warn > 2 mm, fail > 5 mm``."""
        op = ">" if self.higher_is_worse else "<"
        unit = f" {self.unit}" if self.unit and self.unit != "%" else self.unit
        parts = []
        if self.warn_at is not None:
            parts.append(f"warn {op} {_fmt(self.warn_at)}{unit}")
        if self.fail_at is not None:
            parts.append(f"fail {op} {_fmt(self.fail_at)}{unit}")
        if not parts and self.threshold is not None:
            parts.append(f"{op} {_fmt(self.threshold)}{unit}")
        return ", ".join(parts) if parts else "-"

    @property
    def value_text(self) -> str:
        if self.value is None:
            return "-"
        unit = f" {self.unit}" if self.unit and self.unit != "%" else self.unit
        return f"{_fmt(self.value)}{unit}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "value": _finite_or_none(self.value), "threshold": _finite_or_none(self.threshold),
            "status": self.status, "message": self.message, "unit": self.unit,
            "warn_at": _finite_or_none(self.warn_at), "fail_at": _finite_or_none(self.fail_at),
            "higher_is_worse": self.higher_is_worse,
            "score": None if self.score is None else round(float(self.score), 4) if math.isfinite(self.score) else None,
        }
        if self.seconds is not None:
            out["seconds"] = round(float(self.seconds), 4)
        if self.details:
            out["details"] = dict(self.details)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Check:
        return cls(name=str(d["name"]), value=d.get("value"), threshold=d.get("threshold"), status=str(d["status"]),
                   message=str(d.get("message", "")), unit=str(d.get("unit", "")), warn_at=d.get("warn_at"),
                   fail_at=d.get("fail_at"), higher_is_worse=bool(d.get("higher_is_worse", True)),
                   score=d.get("score"), seconds=d.get("seconds"), details=dict(d.get("details") or {}))


def grade(name: str, value: float | None, *, warn_at: float | None, fail_at: float | None = None,
          higher_is_worse: bool = True, unit: str = "", what: str = "", messages: Mapping[str, str] | None = None,
          scale: float | None = None, seconds: float | None = None, details: Mapping[str, Any] | None = None) -> Check:
    """A :class:`Check` of ``value`` against ``warn_at`` / ``fail_at``.

    ``higher_is_worse``: values above the thresholds are bad (else below). A value exactly at a
    threshold takes that threshold's status. ``messages`` maps a status to its sentence
    (``{value}``, ``{warn_at}``, ``{fail_at}`` and ``{unit}`` are filled in); by default the
    sentence is ``"<what>: <value> (<thresholds>)"``. ``value`` ``None`` or NaN gives a ``skip``
    check. The score is 0 at ``warn_at`` and 1 at ``fail_at`` (linear; with one threshold,
    ``scale`` units of value make one unit of score, default: the threshold's magnitude or 1).
    """
    v = _finite_or_none(value)
    if v is None:
        msg = (messages or {}).get("skip") or f"{what or name}: not measured"
        return Check(name, None, warn_at, "skip", msg, unit, warn_at, fail_at, higher_is_worse, None, seconds,
                     dict(details or {}))
    sign = 1.0 if higher_is_worse else -1.0
    bad = lambda t: t is not None and sign * (v - t) >= 0  # noqa: E731 - at or past threshold t
    status = "fail" if bad(fail_at) else "warn" if bad(warn_at) else "pass"
    threshold = fail_at if status == "fail" else warn_at if warn_at is not None else fail_at
    # continuous score: 0 at warn_at, 1 at fail_at
    if warn_at is not None and fail_at is not None and fail_at != warn_at:
        score = (v - warn_at) / (fail_at - warn_at)
    else:
        t = warn_at if warn_at is not None else fail_at
        if t is None:
            score = None
        else:
            s = scale if scale is not None else (abs(t) or 1.0)
            score = sign * (v - t) / s + (1.0 if warn_at is None else 0.0)
    filled = {"value": _fmt(v), "warn_at": _fmt(warn_at), "fail_at": _fmt(fail_at),
              "unit": (" " + unit) if unit and unit != "%" else unit}
    template = (messages or {}).get(status)
    if template:
        msg = template.format(**filled)
    else:
        probe = Check(name, v, threshold, status, "", unit, warn_at, fail_at, higher_is_worse)
        msg = f"{what or name}: {probe.value_text} ({probe.threshold_text})"
    return Check(name, v, threshold, status, msg, unit, warn_at, fail_at, higher_is_worse, score, seconds,
                 dict(details or {}))


@dataclass(frozen=True)
class Verdict:
    """The checks of one result and the worst of their statuses.

    Build one with :meth:`of` (the status is derived, never given by hand, so it cannot
    disagree with the checks). ``subject`` says what was judged (``"registration"``).
    """

    status: str
    checks: tuple[Check, ...] = ()
    subject: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"a verdict is pass, warn or fail, not {self.status!r}")
        if self.status != worst(c.status for c in self.checks):
            raise ValueError(f"verdict {self.status!r} disagrees with its checks "
                             f"({worst(c.status for c in self.checks)!r}): build it with Verdict.of")

    @classmethod
    def of(cls, checks: Iterable[Check], subject: str = "") -> Verdict:
        """The verdict of ``checks``: the worst of their statuses."""
        cs = tuple(checks)
        return cls(worst(c.status for c in cs), cs, subject)

    def with_checks(self, checks: Iterable[Check]) -> Verdict:
        """This verdict with ``checks`` added (the status recomputed)."""
        return Verdict.of((*self.checks, *checks), self.subject)

    def check(self, name: str) -> Check | None:
        """The check called ``name`` (the first, if several), or None."""
        return next((c for c in self.checks if c.name == name), None)

    @property
    def score(self) -> float | None:
        """The largest of the graded checks' scores (< 0 pass, 0..1 warn, >= 1 fail), or None."""
        scores = [c.score for c in self.checks if c.score is not None and c.status != "skip"
                  and math.isfinite(c.score)]
        return max(scores) if scores else None

    @property
    def reasons(self) -> tuple[Check, ...]:
        """The checks that warn or fail, the failing ones first."""
        return tuple(sorted((c for c in self.checks if c.status in ("warn", "fail")),
                            key=lambda c: -_RANK[c.status]))

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    def summary(self) -> str:
        """One line: the status and the checks that are not passing, with their numbers."""
        subject = f"{self.subject} " if self.subject else ""
        if not self.reasons:
            return f"{subject}verdict: pass ({len([c for c in self.checks if c.status == 'pass'])} checks passed)"
        parts = [f"{c.name} {c.status} ({c.value_text}; {c.threshold_text})" for c in self.reasons]
        return f"{subject}verdict: {self.status}: " + "; ".join(parts)

    def explain(self) -> list[str]:
        """The sentences of the checks that warn or fail (for a user), worst first."""
        return [f"{c.status.upper()} {c.name}: {c.message}" for c in self.reasons]

    def to_dict(self) -> dict[str, Any]:
        score = self.score
        return {"status": self.status, "subject": self.subject,
                "score": None if score is None else round(float(score), 4),
                "reasons": [c.name for c in self.reasons], "checks": [c.to_dict() for c in self.checks]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Verdict:
        return cls.of((Check.from_dict(c) for c in d.get("checks", ())), str(d.get("subject", "")))

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=str)

    def replace_check(self, name: str, **changes: Any) -> Verdict:
        """A copy with the check ``name`` changed (e.g. a threshold overridden); status recomputed."""
        return Verdict.of((replace(c, **changes) if c.name == name else c for c in self.checks), self.subject)
