"""Python dependencies inside Slicer: checked on first use, installed only after asking.

Never call these at a module's import time: Slicer must start even when nothing is
installed. A module's Logic calls :func:`ensure_dependencies` right before the first
computation that needs them.

* torch comes from the PyTorch extension (``PyTorchUtils``) when it is installed, so the
  build matches the user's GPU and Slicer's Python; otherwise from pip, CPU-pinned.
* other packages come from the module's ``Resources/requirements.txt`` through
  ``slicer.packaging.pip_ensure`` (or ``slicer.pydeps.pip_ensure``) where Slicer has it,
  ``slicer.util.pip_install`` otherwise.
"""

from __future__ import annotations

import importlib.util
import re
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from medtorch.errors import MedTorchInputError

#: Import names that differ from distribution names.
_IMPORT_NAMES = {"simpleitk": "SimpleITK", "pyyaml": "yaml", "scikit-image": "skimage", "pywavelets": "pywt",
                 "pydicom-data": "pydicom_data", "onnxruntime": "onnxruntime"}

TORCH_REQUIREMENT = ">=2.3"


def read_requirements(path: str | Path) -> list[str]:
    """Requirement lines of a requirements file (comments and blank lines dropped)."""
    lines = []
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def _dist_name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip()


def is_satisfied(requirement: str) -> bool:
    """Whether ``requirement`` is installed (at an allowed version when ``packaging`` is there)."""
    name = _dist_name(requirement)
    try:
        version = metadata.version(name)
    except metadata.PackageNotFoundError:
        return importlib.util.find_spec(_IMPORT_NAMES.get(name.lower(), name)) is not None
    try:
        from packaging.requirements import Requirement

        return Requirement(requirement).specifier.contains(version, prereleases=True)
    except Exception:  # no packaging, or an unparsable line: presence is enough
        return True


def missing_requirements(requirements: list[str]) -> list[str]:
    return [r for r in requirements if not is_satisfied(r)]


def ensure_torch(ask: Callable[[str], bool] | None = None) -> Any:
    """Import torch, installing it through the PyTorch extension (after asking) if needed."""
    if importlib.util.find_spec("torch") is not None:
        import torch

        return torch
    try:
        import PyTorchUtils  # the PyTorch extension's module
    except ImportError:
        PyTorchUtils = None
    if PyTorchUtils is not None:
        logic = PyTorchUtils.PyTorchUtilsLogic()
        torch = logic.installTorch(askConfirmation=True, torchVersionRequirement=TORCH_REQUIREMENT)
        if torch is None:
            raise MedTorchInputError("PyTorch is not installed", "install it from the PyTorch module, then try again")
        return torch
    if ask is not None and not ask("MedTorch needs PyTorch. Install the CPU build now (about 200 MB)?"):
        raise MedTorchInputError("PyTorch is not installed", "install the PyTorch extension from the Extensions Manager")
    _pip_install([f"torch{TORCH_REQUIREMENT}"], requester="MedTorch")
    import torch

    return torch


def _pip_install(requirements: list[str], requester: str) -> None:
    import slicer

    for mod_name in ("packaging", "pydeps"):
        mod = getattr(slicer, mod_name, None)
        if mod is None:
            try:
                mod = importlib.import_module(f"slicer.{mod_name}")
            except ImportError:
                mod = None
        if mod is not None and hasattr(mod, "pip_ensure"):
            try:
                from packaging.requirements import Requirement

                mod.pip_ensure([Requirement(r) for r in requirements], requester=requester)
            except TypeError:
                mod.pip_ensure(requirements)
            return
    slicer.util.pip_install(requirements)


def ensure_dependencies(requirements_file: str | Path, requester: str,
                        ask: Callable[[str], bool] | None = None, with_torch: bool = True) -> None:
    """Make sure the module's requirements are importable, asking before any install.

    Args:
        requirements_file: the module's ``Resources/requirements.txt``.
        requester: module name shown to the user.
        ask: yes/no question callback; in Slicer ``slicer.util.confirmOkCancelDisplay``.
        with_torch: also ensure torch (through the PyTorch extension when present).

    Raises:
        MedTorchInputError: the user declined, saying what to install by hand.
    """
    if with_torch:
        ensure_torch(ask)
    missing = missing_requirements(read_requirements(requirements_file))
    if not missing:
        return
    question = f"{requester} needs these Python packages: {', '.join(missing)}. Install them now?"
    if ask is not None and not ask(question):
        raise MedTorchInputError(
            f"missing Python packages: {', '.join(missing)}",
            "accept the installation, or install them from Slicer's Python console with slicer.util.pip_install",
        )
    _pip_install(missing, requester)
