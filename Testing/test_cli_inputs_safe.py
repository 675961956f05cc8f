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


def _dests(parser: argparse.ArgumentParser) -> set[str]:
    """The dests of a command's parser and of its actions' parsers (``models pack``'s ``--out``)."""
    out = {a.dest for a in parser._actions}
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub in a.choices.values():
                out |= _dests(sub)
    return out


def test_the_table_names_real_options_and_every_out_option():
    subs = _subparsers()
    for name, (ins, outs) in PATH_OPTIONS.items():
        dests = _dests(subs[name])
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
    ["models", "pack", "{dir}", "--license", "{other}", "--out", "{other}"],  # the pack over its license file
    ["models", "pack", "{dir}", "--out", "{dir}"],  # the pack over the bundle folder
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


def test_models_pack_takes_overwrite_input_after_the_action(vol, tmp_path, capsys):
    """``--overwrite-input`` is accepted after ``models pack`` too (it lets the check pass; the
    bundle, not a bundle here, is then refused by the packing itself)."""
    argv = ["models", "pack", str(tmp_path / "no_bundle"), "--license", str(vol), "--out", str(vol), "-q"]
    assert main(argv) == 2 and "would replace your input" in capsys.readouterr().err
    before = _sha(vol)
    assert main(argv + ["--overwrite-input"]) == 2
    err = capsys.readouterr().err
    assert "would replace your input" not in err and "unrecognized arguments" not in err
    assert _sha(vol) == before


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


# -- every input can name its DICOM series (issue 21, part 2) ---------------------------------------


@pytest.fixture()
def two_series(tmp_path):
    """One folder, two series (as a PACS export gives), and their UIDs."""
    pytest.importorskip("pydicom")
    from test_registration_cli import write_dicom_series

    import pydicom

    g = Geometry((12, 10, 6), origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 2.0))
    uids = []
    (tmp_path / "pacs").mkdir()
    for seed in (0, 1):
        a = np.random.default_rng(seed).normal(100.0, 5.0, g.shape_zyx).astype(np.float32)
        a[2:4, 3:7, 3:8] += 100.0 * (seed + 1)
        sub = tmp_path / f"s{seed}"
        write_dicom_series(Volume(a, g, "scalar"), sub)
        uids.append(str(pydicom.dcmread(next(sub.glob("*.dcm"))).SeriesInstanceUID))
        for f in sub.glob("*.dcm"):
            f.rename(tmp_path / "pacs" / f"{seed}_{f.name}")
    return tmp_path / "pacs", uids


def test_a_folder_of_several_series_names_the_commands_own_flag(two_series, tmp_path, capsys):
    folder, uids = two_series
    rc = main(["threshold-seg", "--in", str(folder), "--out", str(tmp_path / "t.nrrd"), "--lower", "150", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "2 DICOM series" in err and "--series-uid UID" in err and "list_series" not in err
    rc = main(["fuse", "--fixed", str(folder), "--moving", str(folder), "--assume-aligned",
               "--fixed-series-uid", uids[0], "--out", str(tmp_path / "f.nrrd"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "--moving-series-uid UID" in err  # the fixed one was chosen, the moving one not


def test_each_input_reads_the_series_it_names(two_series, tmp_path):
    from medtorch.io import read_volume

    folder, uids = two_series
    # only the second series' block (+200) is above 250: the first series has no such voxel
    out = tmp_path / "t.nrrd"
    argv = ["threshold-seg", "--in", str(folder), "--out", str(out), "--lower", "250", "-q", "--series-uid"]
    assert main(argv + [uids[0]]) == 2 and not out.exists()
    assert main(argv + [uids[1]]) == 0 and (read_volume(out).array > 0).sum() == 2 * 4 * 5
    out = tmp_path / "fused.nrrd"
    assert main(["fuse", "--fixed", str(folder), "--moving", str(folder), "--assume-aligned", "--method", "average",
                 "--fixed-series-uid", uids[0], "--moving-series-uid", uids[1], "--out", str(out), "-q"]) == 0
    assert read_volume(out).geometry.shape_zyx == (6, 10, 12)


def test_segment_series_uids_follow_the_in_order():
    from medtorch.commands.paths import series_choices_of

    args = argparse.Namespace(input=["a", "FLAIR=b"], series_uid=["1.2", "1.3"], seeds="s", seeds_series_uid=None)
    got = series_choices_of("segment", args)
    assert got["a"][0] == "1.2" and got["b"][0] == "1.3" and got["s"] == (None, "--seeds-series-uid")
    assert "the 2nd" in got["b"][1]
    with pytest.raises(Exception, match="at most one --series-uid per --in"):
        series_choices_of("segment", argparse.Namespace(input=["a"], series_uid=["1", "2"], seeds=None,
                                                        seeds_series_uid=None))


def test_json_outputs_are_strict_json(tmp_path):
    import json

    from medtorch.io import write_json_atomic

    p = write_json_atomic(tmp_path / "x.json", {"a": float("inf"), "b": [1.0, np.float32("nan")], "c": np.int64(3),
                                                "d": (1, 2), "e": np.arange(2)})
    text = p.read_text()
    assert "Infinity" not in text and "NaN" not in text
    doc = json.loads(text)
    assert doc["a"] is None and doc["b"] == [1.0, None] and doc["c"] == 3 and doc["d"] == [1, 2] and doc["e"] == [0, 1]
    assert doc["nonfinite_as_null"] == ["$.a = inf", "$.b[1] = nan"]


def test_info_on_an_empty_or_non_dicom_folder_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("not an image")
    for name, what in (("empty", "it is empty"), ("text", "non-DICOM file")):
        assert main(["info", str(tmp_path / name)]) == 2
        assert what in capsys.readouterr().err


def test_info_describes_a_single_dicom_slice(capsys):
    import json

    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    assert main(["info", get_testdata_file("CT_small.dcm")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["size_ijk"] == [128, 128, 1] and doc["spacing_mm"][0] == pytest.approx(0.661468)


@pytest.mark.parametrize("argv", [
    ["denoise", "--in", "{in}", "--out", "{dir}/o.nii.gz"],
    ["enhance", "--in", "{in}", "--out", "{dir}/o.nii.gz", "--window", "0,200"],
    ["threshold-seg", "--in", "{in}", "--out", "{dir}/o.nii.gz", "--lower", "150"],
    ["register", "--fixed", "{in}", "--moving", "{in}", "--out-transform", "{dir}/t.tfm"],
    ["superres", "--in", "{in}", "--factor", "2", "--out", "{dir}/o.nii.gz"],
])
def test_a_device_this_machine_lacks_is_refused_by_every_command(argv, vol, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    rc = main([a.format(**{"in": str(vol), "dir": str(tmp_path)}) for a in argv] + ["--device", "cuda", "-q"])
    assert rc == 2 and "CUDA is not available" in capsys.readouterr().err
    assert not list(tmp_path.glob("o.*")) and not (tmp_path / "t.tfm").exists()


def test_convert_a_series_of_a_multi_series_folder_keeps_the_geometry(two_series, tmp_path):
    from medtorch.io import read_volume
    from medtorch.io.dicom import read_dicom_series

    folder, uids = two_series
    out = tmp_path / "one.nii.gz"
    assert main(["convert", "--in", str(folder), "--out", str(out), "-q"]) == 2  # two series, none chosen
    assert main(["convert", "--in", str(folder), "--series-uid", uids[1], "--out", str(out), "-q"]) == 0
    got, ref = read_volume(out), read_dicom_series(folder, series_uid=uids[1])
    assert got.geometry.isclose(ref.geometry, atol=1e-4)
    np.testing.assert_allclose(got.array, ref.array, rtol=1e-5, atol=1e-3)
    # and on to NRRD as a label map, values kept
    lab = tmp_path / "lab.nrrd"
    write_volume(Volume((ref.array > 250).astype(np.uint8) * 3, ref.geometry, "label"), tmp_path / "l.nii.gz")
    assert main(["convert", "--in", str(tmp_path / "l.nii.gz"), "--kind", "label", "--out", str(lab), "-q"]) == 0
    assert set(np.unique(read_volume(lab).array)) == {0, 3}


def test_the_progress_bar_shows_the_time_left():
    import io
    import time as _time

    from medtorch.progress import ConsoleProgressBar

    out = io.StringIO()
    bar = ConsoleProgressBar(stream=out)
    bar._started = _time.monotonic() - 30.0  # 30 s spent
    bar(0.25, "registering")  # a quarter done: about 90 s left
    bar(0.5, "registering")   # half done: about 30 s left
    lines = out.getvalue().splitlines()
    assert "~2 min left" in lines[0] and "~30 s left" in lines[1], lines
    bar(1.0, "done")
    assert "left" not in out.getvalue().splitlines()[-1]
