"""Atomic file output: write to a temporary file beside the target, then rename.

A crash, a cancel or a full disk never leaves a half-written output under the
final name, and never damages a file that was already there.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

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


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _output_mode(final: Path) -> int:
    """Permissions for a new output: those of the file it replaces, else 0666 minus the umask."""
    try:
        return final.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


#: ``errno`` values that mean "no room left" (a full disk or an exhausted quota).
_NO_SPACE = {errno.ENOSPC} | ({errno.EDQUOT} if hasattr(errno, "EDQUOT") else set())
#: ``errno`` values that mean "not allowed to write there".
_NOT_ALLOWED = {errno.EACCES, errno.EPERM, errno.EROFS}


def _os_error(exc: OSError, final: Path) -> MedTorchInputError | None:
    if exc.errno in _NO_SPACE:
        return MedTorchInputError(
            f"the disk filled up while writing {final}", "free some disk space or write to another disk"
        )
    if exc.errno in _NOT_ALLOWED:
        return MedTorchInputError(
            f"no permission to write {final} ({exc.strerror})",
            "choose an output path in a folder you can write to",
        )
    return None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same extension); rename it over ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left as it was.
    A full disk (``ENOSPC``, or an exhausted quota) and a refused write (``EACCES``,
    ``EPERM``, ``EROFS``) become a :class:`MedTorchInputError` that says so. The new file
    gets the permissions of the file it replaces, or the usual ``0666 & ~umask``
    (not the ``0600`` of a temporary file).
    """
    final = check_writable(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".part{_suffix(final)}", dir=final.parent)
    except OSError as exc:
        err = _os_error(exc, final)
        if err is not None:
            raise err from exc
        raise
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with contextlib.suppress(OSError):
            os.chmod(tmp, _output_mode(final))
        os.replace(tmp, final)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        err = _os_error(exc, final)
        if err is not None:
            raise err from exc
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def replace_folder(tmp: Path, final: Path) -> None:
    """Put the finished folder ``tmp`` (beside ``final``) in place of ``final``: an existing
    ``final`` is moved aside first and removed only once ``tmp`` is in its place, so a reader
    sees the old folder or the new one, never a half-written one."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def strict_json_value(value: Any, where: str = "$", replaced: list[str] | None = None) -> Any:
    """``value`` as strict JSON types: numpy scalars and arrays made plain, tuples made lists, and
    every NaN or infinity replaced by ``None`` (strict JSON has no such numbers; Python's
    ``json`` would write ``NaN``/``Infinity``, which other readers refuse). The JSON paths of the
    replaced values are appended to ``replaced``. Anything else that JSON cannot hold becomes its
    ``str``."""
    import math

    import numpy as np

    if isinstance(value, dict):
        return {str(k): strict_json_value(v, f"{where}.{k}", replaced) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json_value(v, f"{where}[{i}]", replaced) for i, v in enumerate(value)]
    if isinstance(value, np.ndarray):
        return strict_json_value(value.tolist(), where, replaced)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        if math.isfinite(f):
            return f
        if replaced is not None:
            replaced.append(f"{where} = {f}")
        return None
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def write_json_atomic(path: str | os.PathLike[str], value: Any, indent: int | None = 2) -> Path:
    """Write ``value`` as strict JSON (:func:`strict_json_value`), atomically. Where NaN or
    infinite numbers were replaced by ``null``, a top-level object gets a ``"nonfinite_as_null"``
    note listing them, so that a reader knows ``null`` there means "not a finite number"."""
    import json

    replaced: list[str] = []
    doc = strict_json_value(value, "$", replaced)
    if replaced and isinstance(doc, dict):
        doc["nonfinite_as_null"] = replaced
    return write_text_atomic(path, json.dumps(doc, indent=indent, allow_nan=False) + "\n")
