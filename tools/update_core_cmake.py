"""Regenerate ``medtorch/CMakeLists.txt`` so it lists every file of the core package.

Developer tool: run it after adding or removing a file under ``medtorch/``. The packaging
test (``Testing/test_packaging.py``) fails while a file is missing from the list.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORE = REPO / "medtorch"

TEMPLATE = """#-----------------------------------------------------------------------------
# The Slicer-free compute core, installed next to the scripted modules so that
# Slicer's Python can `import medtorch` (it is also a pip-installable package:
# see pyproject.toml at the repository root).
#
# Regenerate this list with: python tools/update_core_cmake.py
#-----------------------------------------------------------------------------
set(MEDTORCH_PYTHON_SCRIPTS
{scripts}
  )

set(MEDTORCH_PYTHON_RESOURCES
{resources}
  )

ctkMacroCompilePythonScript(
  TARGET_NAME medtorch
  SCRIPTS "${{MEDTORCH_PYTHON_SCRIPTS}}"
  RESOURCES "${{MEDTORCH_PYTHON_RESOURCES}}"
  DESTINATION_DIR ${{CMAKE_BINARY_DIR}}/${{Slicer_QTSCRIPTEDMODULES_LIB_DIR}}/medtorch
  INSTALL_DIR ${{Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}}/medtorch
  NO_INSTALL_SUBDIR
  )
"""


def main() -> None:
    files = sorted(p.relative_to(CORE).as_posix() for p in CORE.rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts and p.name != "CMakeLists.txt")
    scripts = [f for f in files if f.endswith(".py")]
    resources = [f for f in files if not f.endswith(".py")]
    text = TEMPLATE.format(scripts="\n".join(f"  {f}" for f in scripts),
                           resources="\n".join(f"  {f}" for f in resources))
    (CORE / "CMakeLists.txt").write_text(text, encoding="utf-8")
    print(f"listed {len(scripts)} scripts and {len(resources)} resources")


if __name__ == "__main__":
    main()
