"""Optional packages: ITK with one of its Python extensions, and an installed package's version.

FastGrowCut (itk-growcut) and elastix (itk-elastix) are ITK extensions that only some features
run; both load through :func:`itk_with`, which turns a missing package into a
:class:`~medtorch.errors.MedTorchInputError` that says how to install it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medtorch.errors import MedTorchInputError

__all__ = ["installed_version", "itk_with"]


def itk_with(package: str, attributes: Sequence[str], fix: str) -> Any:
    """``itk`` with the extension that provides ``attributes`` loaded (e.g. ``("FastGrowCut",)``).

    The first call loads ITK's libraries (seconds); later calls are free.

    Raises:
        MedTorchInputError: ``itk`` or the extension (``package``) is missing; ``fix`` says what to do.
    """
    try:
        import itk
    except ImportError as exc:
        raise MedTorchInputError(f"{package} is not installed", fix) from exc
    try:
        for name in attributes:
            getattr(itk, name)  # triggers ITK's lazy load
    except AttributeError as exc:
        raise MedTorchInputError(f"{package} is not installed (itk is, without it)", fix) from exc
    return itk


def installed_version(package: str) -> str:
    """The installed version of ``package`` (a distribution name), or ``"not installed"``."""
    try:
        from importlib.metadata import version

        return version(package)
    except Exception:  # noqa: BLE001 - metadata missing
        return "not installed"
