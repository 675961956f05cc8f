"""Atomic file output: write to a temporary file beside the target, then rename.

A crash, a cancel or a full disk never leaves a half-written output under the
final name, and never damages a file that was already there.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Iterator

from medtorch.errors import MedTorchInputError


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for double in (".nii.gz", ".seg.nrrd", ".tar.gz"):
        if name.endswith(double):
            return path.name[-len(double):]
    return path.suffix


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Raise a clear error unless ``path``'s folder exists (or can be made) and is writable."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MedTorchInputError(
            f"cannot create the output folder {parent} ({exc.strerror})",
            "choose an output path in a folder you can write to",
        ) from exc
    if not os.access(parent, os.W_OK):
        raise MedTorchInputError(
            f"the output folder {parent} is not writable",
            "choose an output path in a folder you can write to",
        )
    if p.is_dir():
        raise MedTorchInputError(f"the output path {p} is a folder", "give a file name for the output")
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same extension); rename it over ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left as it was.
    A full disk (``ENOSPC``) becomes a :class:`MedTorchInputError` that says so.
    """
    final = check_writable(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".part{_suffix(final)}", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, final)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if exc.errno == errno.ENOSPC:
            raise MedTorchInputError(
                f"the disk filled up while writing {final}", "free some disk space or write to another disk"
            ) from exc
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
