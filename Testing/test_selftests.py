"""Each module's self-test (its ``ScriptedLoadableModuleTest``), run unchanged on the headless Slicer.

In a real Slicer the same classes run through ``slicer.testing.runUnitTest`` / the
module's Reload and Test button.

The self-tests render Slicer's views after each operation and check what a person would
(medtorch.slicer.checks). Where rendering is unavailable (no EGL/OpenGL, or
``MEDTORCH_NO_RENDER=1``) they say so and skip those checks; the test here then passes its
other checks and reports the skip, with the reason, as a pytest skip.
"""

from __future__ import annotations

import pytest

from slicer_testbed import MODULE_NAMES


@pytest.mark.parametrize("module_name", MODULE_NAMES)
def test_module_selftest(module_name, headless_slicer):
    import slicer_testbed

    from medtorch.slicer import checks

    mod = slicer_testbed.load_module(module_name)
    test_case = getattr(mod, module_name + "Test")()
    skipped_before = len(checks.SKIPPED)
    test_case.runTest()
    skipped = checks.SKIPPED[skipped_before:]
    if skipped:
        pytest.skip(f"{module_name}'s self-test passed without its visual checks: {skipped[0]}")


def test_visual_checks_skip_with_the_reason_said(headless_slicer, monkeypatch):
    """Without rendering a self-test still runs its other checks, and says why it skips the visual ones."""
    import slicer_testbed

    from medtorch.slicer import checks, views

    monkeypatch.setenv(views.NO_RENDER_ENV, "1")
    mod = slicer_testbed.load_module("SegmentTumor")
    test_case = mod.SegmentTumorTest()
    said: list[str] = []
    monkeypatch.setattr(test_case, "delayDisplay", lambda message, *args, **kwargs: said.append(message))
    skipped_before = len(checks.SKIPPED)
    test_case.setUp()
    test_case.test_ThresholdInROI()
    reason = "rendering is turned off (MEDTORCH_NO_RENDER=1)"
    assert said.count(f"Visual checks skipped: {reason}") == 1, said
    assert said[-1] == "Test passed"
    assert checks.SKIPPED[skipped_before:] == [reason]
    del checks.SKIPPED[skipped_before:]
