"""Wording guard rails: one spelling of "tumor" (Slicer's and the SegmentTumor module's) in code, docs
and user-facing text. British spellings stay accepted where a user types a name (the terminology's
aliases), and names of outside datasets (MSD ``Task01_BrainTumour``) are kept as published. Reports
under ``docs/benchmarks`` are written by the benchmarks and take the spelling on their next run."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
KEPT = re.compile(r"Task01_BrainTumour|aliases=\(")
PATTERN = re.compile(r"tumour", re.IGNORECASE)


def british_spellings(files: list[tuple[str, str]]) -> list[str]:
    """``path:line: text`` of every line spelling tumour the British way, outside the kept uses."""
    hits = []
    for path, text in files:
        for no, line in enumerate(text.splitlines(), 1):
            if PATTERN.search(line) and not KEPT.search(line):
                hits.append(f"{path}:{no}: {line.strip()[:120]}")
    return hits


def _tracked_text_files() -> list[tuple[str, str]]:
    try:
        names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True,
                               timeout=60).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    out = []
    for n in names:
        if n.startswith("docs/benchmarks/") or n == "Testing/test_wording.py":
            continue
        p = REPO / n
        if p.suffix.lower() in {".png", ".nrrd", ".nii", ".gz", ".dcm", ".pt", ".onnx", ".zip", ".jpg"}:
            continue
        try:
            out.append((n, p.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, OSError):
            continue
    return out


def test_one_spelling_of_tumor_in_the_tree():
    hits = british_spellings(_tracked_text_files())
    assert not hits, "spell it 'tumor' (as Slicer and SegmentTumor do):\n" + "\n".join(hits[:30])


def test_the_check_finds_a_british_spelling_and_keeps_the_allowed_ones():
    files = [("a.py", 'label = "Tumour core"\n'), ("b.py", 'aliases=("tumour", "lesion")\n'),
             ("c.py", '"--data Task01_BrainTumour"\n'), ("d.md", "whole tumor\n")]
    assert british_spellings(files) == ['a.py:1: label = "Tumour core"']


def test_terminology_still_accepts_british_names():
    from medtorch.segment.terminology import term

    assert term("whole tumour").name == term("whole tumor").name == term("WT").name
    assert term("enhancing tumour").name == term("enhancing tumor").name


def test_messages_print_numbers_as_numbers():
    """A message shows 2.0, never numpy's repr np.float64(2.0): the documents made from the real
    messages (docs/*.md, e.g. bad-input.md) hold none."""
    docs = sorted((REPO / "docs").glob("*.md"))
    assert docs
    hits = [f"{p.name}:{no}" for p in docs for no, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
            if re.search(r"np\.(float|int|uint|bool)\w*\(", line)]
    assert not hits, "numpy reprs in messages: " + ", ".join(hits)
