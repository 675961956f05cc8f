"""Packaging checks for Slicer scripted modules (used by ``test_packaging.py``).

Each function returns a list of problems (empty when the module is fine):

* :func:`unlisted_files` - every ``.py`` and resource under a module folder is listed in
  its ``CMakeLists.txt`` (and every listed file exists): missing files are the most common
  reason a Slicer extension ships broken.
* :func:`ui_problems` - the ``.ui`` parses, every ``self.ui.<name>`` the widget code uses
  exists in it, every widget has a tooltip, and value widgets show their unit.
* :func:`unbound_parameters` - every parameter-node field has a widget whose
  ``SlicerParameterName`` names it (and no widget names an unknown field).
"""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_WIDGET_CODE = REPO / "medtorch" / "slicer" / "widgets.py"
VALUE_WIDGETS = {"ctkSliderWidget", "QDoubleSpinBox", "ctkDoubleSpinBox", "QSpinBox", "ctkRangeWidget"}
UNITLESS_HINTS = ("unitless", "units", "number of")


def cmake_lists(cmake_file: Path) -> dict[str, list[str]]:
    """The ``set(NAME item ...)`` lists of a CMakeLists.txt, with ``${VAR}`` substituted."""
    text = re.sub(r"#[^\n]*", "", cmake_file.read_text(encoding="utf-8"))
    variables: dict[str, list[str]] = {}
    for name, body in re.findall(r"set\(\s*(\w+)\s+([^)]*)\)", text):
        items = body.split()
        variables[name] = items
    def expand(item: str) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: " ".join(variables.get(m.group(1), [m.group(0)])), item)
    return {name: [expand(i) for i in items] for name, items in variables.items()}


def listed_files(cmake_file: Path) -> set[str]:
    lists = cmake_lists(cmake_file)
    out: set[str] = set()
    for name, items in lists.items():
        if name.endswith(("_SCRIPTS", "_RESOURCES")):
            out.update(i for i in items if not i.startswith("$"))
    return out


def shipped_files(folder: Path) -> set[str]:
    """Files under ``folder`` that must be shipped: Python scripts and everything in Resources/."""
    out = set()
    for path in folder.rglob("*"):
        if not path.is_file() or "__pycache__" in path.parts or path.name == "CMakeLists.txt":
            continue
        rel = path.relative_to(folder).as_posix()
        if path.suffix == ".py" or rel.startswith("Resources/") or path.name == "py.typed":
            out.add(rel)
    return out


def unlisted_files(folder: Path) -> list[str]:
    cmake = folder / "CMakeLists.txt"
    if not cmake.exists():
        return [f"{folder.name}: CMakeLists.txt is missing"]
    listed = listed_files(cmake)
    present = shipped_files(folder)
    problems = [f"{folder.name}: {f} is not listed in CMakeLists.txt" for f in sorted(present - listed)]
    problems += [f"{folder.name}: {f} is listed in CMakeLists.txt but does not exist" for f in sorted(listed - present)
                 if not (folder / f).exists()]
    return problems


def _ui_file(module_dir: Path) -> Path:
    return module_dir / "Resources" / "UI" / f"{module_dir.name}.ui"


def ui_widgets(ui_path: Path) -> dict[str, ET.Element]:
    root = ET.parse(str(ui_path)).getroot()
    return {w.get("name", ""): w for w in root.iter("widget")}


def _prop(widget: ET.Element, name: str) -> str | None:
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            child = next(iter(prop), None)
            return (child.text or "") if child is not None else ""
    return None


def ui_problems(module_dir: Path) -> list[str]:
    ui_path = _ui_file(module_dir)
    name = module_dir.name
    try:
        widgets = ui_widgets(ui_path)
    except (ET.ParseError, FileNotFoundError) as exc:
        return [f"{name}: {ui_path.name} does not parse ({exc})"]
    problems = []
    code = (module_dir / f"{name}.py").read_text(encoding="utf-8")
    used = set(re.findall(r"self\.ui\.(\w+)", code))
    if "ModuleWidgetMixin" in code:
        used |= set(re.findall(r"self\.ui\.(\w+)", SHARED_WIDGET_CODE.read_text(encoding="utf-8")))
    problems += [f"{name}: self.ui.{w} is used but {ui_path.name} has no widget named {w}" for w in sorted(used - set(widgets))]
    for wname, widget in widgets.items():
        tip = _prop(widget, "toolTip")
        if not tip:
            problems.append(f"{name}: widget {wname} has no tooltip")
        if widget.get("class") in VALUE_WIDGETS:
            suffix = _prop(widget, "suffix")
            if not suffix and not any(h in (tip or "").lower() for h in UNITLESS_HINTS):
                problems.append(f"{name}: value widget {wname} shows no unit (suffix) and does not say it is unitless")
    return problems


def parameter_fields(module_py: Path) -> set[str]:
    """Annotated fields of the class decorated with ``@parameterNodeWrapper``."""
    tree = ast.parse(module_py.read_text(encoding="utf-8"))
    fields: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(
            (isinstance(d, ast.Name) and d.id == "parameterNodeWrapper") for d in node.decorator_list
        ):
            fields |= {stmt.target.id for stmt in node.body
                       if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)}
    return fields


def unbound_parameters(module_dir: Path) -> list[str]:
    name = module_dir.name
    fields = parameter_fields(module_dir / f"{name}.py")
    if not fields:
        return [f"{name}: no @parameterNodeWrapper class found"]
    try:
        widgets = ui_widgets(_ui_file(module_dir))
    except (ET.ParseError, FileNotFoundError) as exc:
        return [f"{name}: UI does not parse ({exc})"]
    bound = {}
    for wname, widget in widgets.items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[(next(iter(prop)).text or "")] = wname
    problems = [f"{name}: parameter {f} has no widget with SlicerParameterName={f}" for f in sorted(fields - set(bound))]
    problems += [f"{name}: widget {w} names unknown parameter {p}" for p, w in sorted(bound.items()) if p not in fields]
    return problems
