"""Packaging checks on the real modules, and proof that each check catches a broken module."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from packaging_checks import REPO, cmake_lists, listed_files, ui_problems, unbound_parameters, unlisted_files

MODULES = ("FusionRegistration", "EnhanceSR", "SegmentTumor")


@pytest.mark.parametrize("module", MODULES)
def test_real_module_passes_every_check(module):
    d = REPO / module
    assert unlisted_files(d) == []
    assert ui_problems(d) == []
    assert unbound_parameters(d) == []


def test_core_package_files_are_all_listed():
    assert unlisted_files(REPO / "medtorch") == []


def test_root_cmake_lists_extension_metadata_and_modules():
    text = (REPO / "CMakeLists.txt").read_text()
    lists = cmake_lists(REPO / "CMakeLists.txt")
    for var in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert var in lists, var
    assert lists["EXTENSION_DEPENDS"] == ['"PyTorch"']
    for sub in ("medtorch",) + MODULES:
        assert f"add_subdirectory({sub})" in text
    assert (REPO / "Resources" / "Icons" / "MedTorch.png").exists()


@pytest.mark.parametrize("module", MODULES)
def test_module_icon_is_a_real_png(module):
    data = (REPO / module / "Resources" / "Icons" / f"{module}.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= 64 and height >= 64


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    """A copy of a real module, to break on purpose."""
    dst = tmp_path / "FusionRegistration"
    shutil.copytree(REPO / "FusionRegistration", dst, ignore=shutil.ignore_patterns("__pycache__"))
    assert unlisted_files(dst) == [] and ui_problems(dst) == [] and unbound_parameters(dst) == []
    return dst


def test_check_catches_unlisted_script(broken):
    (broken / "FusionRegistrationHelpers.py").write_text("x = 1\n")
    assert any("FusionRegistrationHelpers.py is not listed" in p for p in unlisted_files(broken))


def test_check_catches_unlisted_resource(broken):
    (broken / "Resources" / "Icons" / "Extra.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    assert any("Resources/Icons/Extra.png is not listed" in p for p in unlisted_files(broken))


def test_check_catches_listed_but_missing(broken):
    (broken / "Resources" / "requirements.txt").unlink()
    assert any("requirements.txt is listed in CMakeLists.txt but does not exist" in p for p in unlisted_files(broken))


def test_check_catches_ui_that_does_not_parse(broken):
    ui = broken / "Resources" / "UI" / "FusionRegistration.ui"
    ui.write_text(ui.read_text()[:-200])
    assert any("does not parse" in p for p in ui_problems(broken))


def test_check_catches_widget_missing_from_ui(broken):
    py = broken / "FusionRegistration.py"
    py.write_text(py.read_text().replace("self.ui.statusLabel.text", "self.ui.ghostLabel.text", 1))
    assert any("self.ui.ghostLabel is used" in p for p in ui_problems(broken))


def test_check_catches_widget_without_tooltip(broken):
    ui = broken / "Resources" / "UI" / "FusionRegistration.ui"
    tree = ET.parse(ui)
    widget = next(w for w in tree.getroot().iter("widget") if w.get("name") == "applyButton")
    widget.remove(next(p for p in widget.findall("property") if p.get("name") == "toolTip"))
    tree.write(ui)
    assert any("applyButton has no tooltip" in p for p in ui_problems(broken))


def test_check_catches_value_widget_without_unit(broken):
    ui = broken / "Resources" / "UI" / "FusionRegistration.ui"
    ui.write_text(ui.read_text().replace("; unitless", ""))
    assert any("blendWeightSliderWidget shows no unit" in p for p in ui_problems(broken))


def test_check_catches_parameter_without_widget(broken):
    py = broken / "FusionRegistration.py"
    py.write_text(py.read_text().replace("    showResult: bool = True\n", "    showResult: bool = True\n    hiddenKnob: int = 3\n", 1))
    assert any("parameter hiddenKnob has no widget" in p for p in unbound_parameters(broken))


def test_check_catches_widget_naming_unknown_parameter(broken):
    ui = broken / "Resources" / "UI" / "FusionRegistration.ui"
    ui.write_text(ui.read_text().replace("<string>blendWeight</string>", "<string>blendWeightTypo</string>"))
    problems = unbound_parameters(broken)
    assert any("names unknown parameter blendWeightTypo" in p for p in problems)
    assert any("parameter blendWeight has no widget" in p for p in problems)


def test_listed_files_expands_module_name():
    assert "FusionRegistration.py" in listed_files(REPO / "FusionRegistration" / "CMakeLists.txt")
