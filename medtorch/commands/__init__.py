"""One module per ``medtorch`` sub-command, discovered by :mod:`medtorch.cli`.

A command module defines ``COMMANDS``: a list of :class:`Command` objects, each with a
``name``, a ``help`` line, ``examples`` (shown in ``--help``), an ``add_arguments(parser)``
function and a ``run(args, cancel) -> int`` function. Heavy imports go inside ``run``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable

from medtorch.progress import CancelToken, ConsoleProgressBar


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    examples: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, CancelToken], int]


def triple_arg(cast: Callable[[str], Any], noun: str, one_for_all: bool = False) -> Callable[[str], tuple[Any, Any, Any]]:
    """argparse type: three comma-separated values (``noun`` names them in errors), each through
    ``cast``; with ``one_for_all`` a single value is used for every axis."""

    def parse(text: str) -> tuple[Any, Any, Any]:
        parts = [p for p in text.replace(" ", "").split(",") if p]
        if one_for_all and len(parts) == 1:
            parts = parts * 3
        if len(parts) != 3:
            count = "one or three" if one_for_all else "three"
            raise argparse.ArgumentTypeError(f"expected {count} comma-separated {noun}, got {text!r}")
        try:
            return (cast(parts[0]), cast(parts[1]), cast(parts[2]))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not {noun}: {text!r}") from exc

    return parse


#: argparse type: three comma-separated numbers.
vec3 = triple_arg(float, "numbers")


def ct_window_arg(text: str) -> str | tuple[float, float]:
    """argparse type: a CT window preset name or ``WIDTH,LEVEL`` in HU."""
    if "," in text:
        parts = text.split(",")
        try:
            return (float(parts[0]), float(parts[1]))
        except (ValueError, IndexError) as exc:
            raise argparse.ArgumentTypeError(f"expected WIDTH,LEVEL in HU, got {text!r}") from exc
    return text


def progress_bar(args: argparse.Namespace) -> ConsoleProgressBar:
    """The progress bar a command shows (silent with ``--quiet``)."""
    return ConsoleProgressBar(quiet=getattr(args, "quiet", False))


def device_of(args: argparse.Namespace) -> str:
    """The torch device chosen by ``--device`` / ``$MEDTORCH_DEVICE`` / auto."""
    from medtorch.device import select_device

    return str(select_device(getattr(args, "device", None)))
