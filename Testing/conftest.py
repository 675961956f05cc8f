"""pytest set-up: the headless Slicer test bed (slicer-core) for module tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TESTING = Path(__file__).resolve().parent
for p in (str(REPO), str(TESTING)):
    if p not in sys.path:
        sys.path.insert(0, p)
# Each module's folder, as Slicer puts it on sys.path when it loads the module: its <Module>Lib
# package (scene code of that module alone) imports as ``FusionRegistrationLib``, ``SegmentTumorLib``.
for module_name in ("FusionRegistration", "EnhanceSR", "SegmentTumor"):
    if str(REPO / module_name) not in sys.path:
        sys.path.insert(0, str(REPO / module_name))

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def headless_slicer():
    """The headless Slicer (real MRML scene and module logic); skips if slicer-core is absent."""
    pytest.importorskip("slicer_core")
    import slicer_testbed

    return slicer_testbed.install()


@pytest.fixture
def scene(headless_slicer):
    """A cleared MRML scene (as a module self-test's setUp leaves it)."""
    import slicer
    import slicer_testbed

    slicer_testbed.reset_scene()
    yield slicer.mrmlScene
    slicer_testbed.reset_scene()


@pytest.fixture
def without_itk(monkeypatch):
    """Imports of ``itk`` (and its submodules) fail, as where no ITK wheel is installed."""
    import builtins

    real_import = builtins.__import__

    def no_itk(name, *args, **kwargs):
        if name == "itk" or name.startswith("itk."):
            raise ImportError("No module named 'itk'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_itk)
