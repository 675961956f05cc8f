"""Guard rails: the import contracts of pyproject.toml hold (what ``lint-imports`` checks in CI)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept():
    pytest.importorskip("importlinter")
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "Contracts: 3 kept, 0 broken." in out.stdout


def test_contracts_would_catch_a_core_module_importing_a_front_end(tmp_path):
    """The forbidden contract is not vacuous: a core module that imports medtorch.commands breaks it."""
    pytest.importorskip("importlinter")
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(REPO / "medtorch", copy / "medtorch", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    with open(copy / "medtorch" / "resample.py", "a", encoding="utf-8") as fh:
        fh.write("\n\ndef _bad():\n    from medtorch.commands import progress_bar  # noqa: F401\n")
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")
    out = subprocess.run([sys.executable, "-c", code], cwd=copy, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(copy)})
    assert out.returncode != 0 and "medtorch.resample is not allowed to import medtorch.commands" in out.stdout
