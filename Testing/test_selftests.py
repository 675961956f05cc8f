"""Each module's self-test (its ``ScriptedLoadableModuleTest``), run unchanged on the headless Slicer.

In a real Slicer the same classes run through ``slicer.testing.runUnitTest`` / the
module's Reload and Test button.
"""

from __future__ import annotations

import pytest

from slicer_testbed import MODULE_NAMES


@pytest.mark.parametrize("module_name", MODULE_NAMES)
def test_module_selftest(module_name, headless_slicer):
    import slicer_testbed

    mod = slicer_testbed.load_module(module_name)
    test_case = getattr(mod, module_name + "Test")()
    test_case.runTest()
