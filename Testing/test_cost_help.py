"""Cost (issue 21, part 8): ``--help`` gives each method's rough time on a 256^3 volume with 2
CPU cores, from one table in code (:mod:`medtorch.commands.costs`) that the benchmark
(``python -m benchmarks.cost``) measured and checks; the help says the figures are approximate."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from medtorch.cli import build_parser, main

REPO = Path(__file__).resolve().parent.parent


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)



@pytest.mark.parametrize("command", ["denoise", "superres", "fuse"])
def test_help_gives_a_rough_cost_per_method_from_the_table(command, capsys):
    from medtorch.commands.costs import COST_256_2CORES, _rough

    table = COST_256_2CORES[command]
    method = next(a for a in _subparsers()[command]._actions if a.dest == "method")
    assert list(table) == list(method.choices)  # every method, in the help's order
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Rough time on a 256^3 volume with 2 CPU cores (approximate" in text
    assert "python -m benchmarks.cost" in text
    for m, seconds in table.items():
        assert (f"{m} {_rough(seconds)}" if seconds is not None else f"{m} not measured yet") in text


def test_the_cost_table_is_the_one_the_benchmark_measured():
    """docs/benchmarks/cost.md (written by python -m benchmarks.cost) shows the table's figures and
    says they agree with its measurements; the benchmark script is where the help says."""
    import json

    from medtorch.commands.costs import COST_256_2CORES

    raw = json.loads((REPO / "docs" / "benchmarks" / "cost.json").read_text())
    doc = (REPO / "docs" / "benchmarks" / "cost.md").read_text()
    assert "the help's table agrees with these measurements" in doc
    for command, methods in COST_256_2CORES.items():
        for m, seconds in methods.items():
            if seconds is None:  # not measured at a size worth extrapolating from: the doc says which
                r = raw["results"][command].get(m)
                assert r is None or not r["extrapolated"], (command, m)
                assert re.search(rf"\| {command} \| {m} \| (not measured|.*not extrapolated)", doc), (command, m)
                continue
            est = raw["results"][command][m]["estimate_256_s"]
            assert max(est, 0.1) / 3 <= seconds <= max(est, 0.1) * 3, (command, m, seconds, est)
            assert re.search(rf"\| {command} \| {m} \|.*\| {seconds:g} \|$", doc, re.M), (command, m)
    assert (REPO / "benchmarks" / "cost" / "__main__.py").is_file()


