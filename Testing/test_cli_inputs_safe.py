"""An output never replaces an input (issue 21, part 1): every command that writes files refuses,
before any work and with exit status 2, an output path that resolves to one of its inputs
(symbolic links and ``..`` included) or two outputs that are one file; ``--overwrite-input``
lets the user replace an input on purpose. The input is checked byte for byte (sha256)."""

from __future__ import annotations

import argparse
import hashlib
import os

import numpy as np
import pytest

from medtorch.cli import build_parser, main
from medtorch.commands.paths import PATH_OPTIONS
from medtorch.io import write_volume
from medtorch.volume import Geometry, Volume


def _sha(p) -> str:
    return hashlib.sha256(open(p, "rb").read()).hexdigest()


@pytest.fixture()
def vol(tmp_path):
    g = Geometry((16, 14, 12), origin=(1.0, 2.0, 3.0), spacing=(1.0, 1.2, 2.0))
    a = np.random.default_rng(0).normal(100.0, 10.0, g.shape_zyx).astype(np.float32)
    a[4:8, 4:9, 5:10] += 80.0
    p = tmp_path / "in.nii.gz"
    write_volume(Volume(a, g, "scalar"), p)
    return p


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_the_table_names_real_options_and_every_out_option():
    subs = _subparsers()
    for name, (ins, outs) in PATH_OPTIONS.items():
        dests = {a.dest for a in subs[name]._actions}
        assert set(ins) | set(outs) <= dests, (name, set(ins) | set(outs) - dests)
        assert "overwrite_input" in dests
        # every option called --out... is declared as an output
        assert {d for d in dests if d == "out" or d.startswith("out_") and d not in ("output_dtype",)} <= set(outs), name


@pytest.mark.parametrize("argv", [
    ["denoise", "--in", "{in}", "--out", "{in}"],
    ["enhance", "--in", "{in}", "--out", "{in}", "--window", "0,200"],
    ["threshold-seg", "--in", "{in}", "--out", "{in}", "--lower", "150"],
    ["fuse", "--fixed", "{in}", "--moving", "{other}", "--out", "{in}", "--assume-aligned"],
    ["register", "--fixed", "{other}", "--moving", "{in}", "--out-transform", "{dir}/t.tfm", "--out-volume", "{in}"],
    ["superres", "--in", "{in}", "--factor", "2", "--out", "{dir}/../{dirname}/in.nii.gz"],  # the same file through ..
    ["segment", "--in", "{in}", "--seeds", "{other}", "--out", "{link}"],  # a symbolic link to the input
])
def test_an_output_that_is_an_input_is_refused_before_any_work(argv, vol, tmp_path, capsys):
    other = tmp_path / "other.nii.gz"
    other.write_bytes(vol.read_bytes())
    link = tmp_path / "link.nii.gz"
    os.symlink(vol, link)
    before = _sha(vol), _sha(other)
    fill = {"in": str(vol), "other": str(other), "dir": str(tmp_path), "dirname": tmp_path.name, "link": str(link)}
    rc = main([a.format(**fill) for a in argv] + ["--quiet"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "would replace your input" in err and "--overwrite-input" in err
    assert (_sha(vol), _sha(other)) == before
    assert not (tmp_path / "t.tfm").exists()


def test_two_outputs_that_are_one_file_are_refused(vol, tmp_path, capsys):
    out = tmp_path / "x.nii.gz"
    rc = main(["fuse", "--fixed", str(vol), "--moving", str(vol), "--assume-aligned", "--out", str(out),
               "--out-resampled", str(out), "--quiet"])
    assert rc == 2 and "--out and --out-resampled are one file" in capsys.readouterr().err
    assert not out.exists()


def test_overwrite_input_replaces_it_on_purpose(vol, tmp_path):
    before = _sha(vol)
    rc = main(["threshold-seg", "--in", str(vol), "--out", str(vol), "--lower", "150", "--overwrite-input", "--quiet"])
    assert rc == 0 and _sha(vol) != before


def test_a_closed_pipe_ends_quietly_with_the_conventional_status(vol):
    """``medtorch info x | head``: the reader is gone before the output is written."""
    import subprocess
    import sys

    r, w = os.pipe()
    os.close(r)  # the reader is gone
    try:
        p = subprocess.run([sys.executable, "-m", "medtorch", "info", str(vol)], stdout=w, stderr=subprocess.PIPE,
                           text=True, timeout=120)
    finally:
        os.close(w)
    assert p.returncode == 141, p.stderr
    assert "internal error" not in p.stderr and "Traceback" not in p.stderr and "Exception" not in p.stderr
