"""Know before starting whether a step fits in memory, and say so clearly when it does not.

A step estimates what it will allocate (:func:`estimate_bytes`), asks :func:`check_fits`
and either proceeds or raises :class:`~medtorch.errors.OutOfMemoryBudget` *before* it
allocates anything, with a message that says how much it needs, how much there is and
what to do. Steps that can work in pieces (slices of a volume) use :func:`plan_chunks`.

The budget, in order of precedence:

1. the ``budget`` argument of the function (bytes, or a string such as ``"8G"``);
2. the environment variable ``MEDTORCH_MEMORY_BUDGET`` (e.g. ``"8G"``, ``"512M"``,
   ``"1.5GB"``, or a plain number of bytes);
3. the memory available on the device now: :func:`available_memory_bytes`.

Sizes in this module use binary units: ``1K = 1024`` bytes, ``1M = 1024**2``,
``1G = 1024**3``, ``1T = 1024**4`` (``K``, ``KB`` and ``KiB`` all mean the same), and
messages print them with the same units ("GB" meaning 2**30 bytes).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medtorch.errors import MedTorchInputError, OutOfMemoryBudget

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "BUDGET_ENV_VAR",
    "available_memory_bytes",
    "check_fits",
    "estimate_bytes",
    "format_bytes",
    "memory_budget_bytes",
    "parse_bytes",
    "plan_chunks",
]

#: Environment variable that overrides the memory budget (e.g. ``8G``).
BUDGET_ENV_VAR = "MEDTORCH_MEMORY_BUDGET"

_UNIT_POWERS = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMGTP]?)(I?B?)\s*$", re.IGNORECASE)

#: cgroup v1 reports "no limit" as a huge number close to 2**63.
_CGROUP_UNLIMITED = 1 << 60


# -- sizes ------------------------------------------------------------------------------


def parse_bytes(value: str | float) -> int:
    """Bytes from ``"8G"``, ``"512M"``, ``"1.5 GB"``, ``"64KiB"``, ``"1000000"`` or a number.

    Units are binary (``K`` = 1024). Raises :class:`MedTorchInputError` for anything else,
    and for zero or negative sizes.
    """
    if isinstance(value, bool):
        raise MedTorchInputError(f"memory size {value!r} is not a size", 'give a size such as "8G" or "512M"')
    if isinstance(value, (int, float, np.integer, np.floating)):
        n = float(value)
    else:
        m = _SIZE_RE.match(str(value))
        if m is None or (m.group(3) and m.group(3).upper() == "I"):
            raise MedTorchInputError(
                f"memory size {value!r} is not understood",
                'give a number of bytes or a number with a unit K, M, G or T, such as "8G" or "512M"',
            )
        n = float(m.group(1)) * 1024 ** _UNIT_POWERS[m.group(2).upper()]
    if not math.isfinite(n) or n <= 0:
        raise MedTorchInputError(f"memory size {value!r} is not a positive size", 'give a size such as "8G"')
    return int(n)


def format_bytes(n: float) -> str:
    """Human-readable size: ``"12.3 GB"``, ``"512.0 MB"``, ``"4.0 KB"``, ``"12 bytes"`` (binary units)."""
    n = float(n)
    for unit, power in (("TB", 4), ("GB", 3), ("MB", 2), ("KB", 1)):
        if abs(n) >= 1024**power:
            return f"{n / 1024 ** power:.1f} {unit}"
    return f"{int(n)} bytes"


def _bytes_per_item(bytes_per_voxel: Any) -> float:
    if isinstance(bytes_per_voxel, (int, float, np.integer, np.floating)) and not isinstance(bytes_per_voxel, bool):
        return float(bytes_per_voxel)
    if type(bytes_per_voxel).__module__.startswith("torch"):  # a torch.dtype
        return float(bytes_per_voxel.itemsize)
    try:
        return float(np.dtype(bytes_per_voxel).itemsize)
    except TypeError as exc:
        raise MedTorchInputError(f"bytes per voxel {bytes_per_voxel!r} is not a size or a dtype",
                                 "give a number of bytes or a numpy/torch dtype") from exc


def estimate_bytes(shape_or_numvoxels: int | Sequence[int], bytes_per_voxel: Any = 4, copies: float = 1) -> int:
    """Bytes taken by ``copies`` arrays of ``shape_or_numvoxels`` voxels.

    Args:
        shape_or_numvoxels: a voxel count, or an array shape (any order, any length).
        bytes_per_voxel: bytes per voxel, or a numpy/torch dtype (its item size is used).
            Multiply by the component count yourself for vector voxels.
        copies: how many such arrays exist at the same time (may be fractional).
    """
    if isinstance(shape_or_numvoxels, (int, np.integer)):
        n = int(shape_or_numvoxels)
    else:
        n = int(np.prod([int(s) for s in shape_or_numvoxels], dtype=np.float64))
    return math.ceil(n * _bytes_per_item(bytes_per_voxel) * float(copies))


# -- what is available -----------------------------------------------------------------------


def _normalize_device(device: torch.device | str | None) -> tuple[str, int | None]:
    """(type, index) without importing torch when the device is the CPU."""
    if device is None:
        return "cpu", None
    text = str(device)
    kind, _, index = text.partition(":")
    return kind, (int(index) if index.strip().isdigit() else None)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (OSError, ValueError):
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _read_stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_available_bytes(root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> int | None:
    """Memory left under this process's cgroup limit (v2 or v1), or ``None`` when unlimited.

    Looks at the process's own cgroup (from ``/proc/self/cgroup``) and at the root of the
    cgroup mount (what a container sees). Reclaimable page cache (``inactive_file``) counts
    as free, as container runtimes count it.
    """
    paths_v2: list[Path] = []
    paths_v1: list[Path] = []
    try:
        for line in proc_cgroup.read_text().splitlines():
            parts = line.split(":", 2)
            if len(parts) != 3:
                continue
            _, controllers, rel = parts
            rel = rel.lstrip("/")
            if controllers == "":
                paths_v2.append(root / rel)
            elif "memory" in controllers.split(","):
                paths_v1.append(root / "memory" / rel)
    except OSError:
        pass
    paths_v2.append(root)
    paths_v1.append(root / "memory")
    best: int | None = None
    for p in paths_v2:
        limit = _read_int(p / "memory.max")
        if limit is None or limit >= _CGROUP_UNLIMITED:
            continue
        usage = _read_int(p / "memory.current") or 0
        usage -= _read_stat(p / "memory.stat", "inactive_file")
        free = max(limit - max(usage, 0), 0)
        best = free if best is None else min(best, free)
    for p in paths_v1:
        limit = _read_int(p / "memory.limit_in_bytes")
        if limit is None or limit >= _CGROUP_UNLIMITED:
            continue
        usage = _read_int(p / "memory.usage_in_bytes") or 0
        usage -= _read_stat(p / "memory.stat", "total_inactive_file")
        free = max(limit - max(usage, 0), 0)
        best = free if best is None else min(best, free)
    return best


def _host_available_bytes() -> int:
    try:
        import psutil  # type: ignore[import-untyped]

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001, S110 - psutil missing or failing: read the kernel's estimate below
        pass
    try:
        info: dict[str, int] = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, rest = line.partition(":")
            fields = rest.split()
            if fields:
                info[name] = int(fields[0]) * 1024
        if "MemAvailable" in info:
            return info["MemAvailable"]
        return info.get("MemFree", 0) + info.get("Cached", 0) + info.get("Buffers", 0)
    except (OSError, ValueError):
        pass
    try:  # other POSIX systems
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 * 1024**3  # unknown: assume a modest machine


def available_memory_bytes(device: torch.device | str | None = None) -> int:
    """Memory that a new allocation on ``device`` can take now, in bytes.

    * CPU (``None`` or ``"cpu"``): the operating system's available memory (psutil, else
      ``/proc/meminfo``), lowered to what is left under a cgroup (container) limit.
    * CUDA: free device memory from ``torch.cuda.mem_get_info`` plus what torch's caching
      allocator holds but does not use.
    * MPS: the recommended working set minus what torch already allocated.
    """
    kind, index = _normalize_device(device)
    if kind == "cuda":
        import torch

        dev = torch.device("cuda", index if index is not None else torch.cuda.current_device())
        free, _total = torch.cuda.mem_get_info(dev)
        cached = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
        return int(free + max(cached, 0))
    if kind == "mps":
        import torch

        mps = getattr(torch, "mps", None)
        if mps is not None and hasattr(mps, "recommended_max_memory"):
            return int(max(mps.recommended_max_memory() - mps.current_allocated_memory(), 0))
    host = _host_available_bytes()
    cgroup = _cgroup_available_bytes()
    return int(host if cgroup is None else min(host, cgroup))


def _resolve_budget(device: torch.device | str | None, budget: str | float | None) -> tuple[int, str]:
    """(bytes, where the number came from)."""
    if budget is not None:
        return parse_bytes(budget), "the memory budget given"
    env = os.environ.get(BUDGET_ENV_VAR, "").strip()
    if env:
        try:
            return parse_bytes(env), f"the memory budget set by {BUDGET_ENV_VAR}"
        except MedTorchInputError as exc:
            raise MedTorchInputError(
                f"{BUDGET_ENV_VAR}={env!r} is not a memory size",
                'set it to a size such as "8G" or "512M", or unset it to use the available memory',
            ) from exc
    return available_memory_bytes(device), "available"


def memory_budget_bytes(device: torch.device | str | None = None, budget: str | float | None = None) -> int:
    """The number of bytes a step on ``device`` may allocate: ``budget``, else
    ``$MEDTORCH_MEMORY_BUDGET``, else :func:`available_memory_bytes`."""
    return _resolve_budget(device, budget)[0]


def check_fits(
    required_bytes: float,
    what: str,
    device: torch.device | str | None = None,
    budget: str | float | None = None,
) -> int:
    """Raise :class:`OutOfMemoryBudget` unless ``required_bytes`` fit; return the budget.

    Args:
        required_bytes: the estimate of what the step allocates.
        what: the step, as a gerund that starts the message (``"resampling"``).
        device: where the memory is needed (CPU when ``None``).
        budget: overrides ``$MEDTORCH_MEMORY_BUDGET`` and the available memory.

    The message reads, e.g.: ``resampling needs 12.3 GB but 8.0 GB is available. What
    to do: crop the volume, downsample it, raise MEDTORCH_MEMORY_BUDGET, or use a machine
    with more memory.``
    """
    limit, source = _resolve_budget(device, budget)
    if required_bytes <= limit:
        return limit
    kind, _ = _normalize_device(device)
    where = "" if kind == "cpu" else f" on {device}"
    if source == "available":
        problem = f"{what} needs {format_bytes(required_bytes)} but {format_bytes(limit)} is available{where}"
    else:
        problem = f"{what} needs {format_bytes(required_bytes)}{where} but {source} is {format_bytes(limit)}"
    fix = f"crop the volume, downsample it, raise {BUDGET_ENV_VAR}, or use a machine with more memory"
    if kind != "cpu":
        fix += " (or run on the CPU)"
    err = OutOfMemoryBudget(problem, fix)
    err.required_bytes = int(required_bytes)  # type: ignore[attr-defined]
    err.budget_bytes = int(limit)  # type: ignore[attr-defined]
    err.what = what  # type: ignore[attr-defined]
    raise err


def plan_chunks(num_slices: int, bytes_per_slice: float, budget: str | float) -> list[tuple[int, int]]:
    """Split ``num_slices`` slices into as few ``(start, stop)`` ranges as fit ``budget``.

    The ranges are contiguous, cover ``0..num_slices`` exactly once, in order, and have
    nearly equal lengths; each needs at most ``budget`` bytes at ``bytes_per_slice``.
    Raises :class:`OutOfMemoryBudget` when not even one slice fits.
    """
    num_slices = int(num_slices)
    if num_slices <= 0:
        return []
    limit = parse_bytes(budget)
    if bytes_per_slice <= 0:
        return [(0, num_slices)]
    per_chunk = int(limit // bytes_per_slice)
    if per_chunk < 1:
        raise OutOfMemoryBudget(
            f"one slice needs {format_bytes(bytes_per_slice)} but the budget for a piece of the work is {format_bytes(limit)}",
            f"crop the volume, downsample it, raise {BUDGET_ENV_VAR}, or use a machine with more memory",
        )
    n_chunks = -(-num_slices // per_chunk)
    bounds = [round(i * num_slices / n_chunks) for i in range(n_chunks + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(n_chunks) if bounds[i + 1] > bounds[i]]
