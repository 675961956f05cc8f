"""Where torch runs and in what precision; seeds for reproducible runs.

* :func:`select_device` turns ``auto | cpu | cuda | cuda:N | mps`` into a
  :class:`torch.device`. The choice comes from, in order: an explicit argument (the
  module's setting in Slicer, ``--device`` on the command line), the environment
  variable ``MEDTORCH_DEVICE``, then ``auto`` (CUDA, then Apple MPS, then the CPU).
* :func:`autocast_context` turns on automatic mixed precision only where it is safe
  and useful: convolutions and matrix products on CUDA. Elsewhere it does nothing.
* :func:`deterministic` and :func:`seed_everything` make a run repeatable; the seed is
  returned so that it can be stored with the result.
* :func:`device_summary` describes the device for run reports.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import secrets
import sys
from typing import Any

import numpy as np
import torch

from medtorch.errors import MedTorchInputError

__all__ = [
    "DEVICE_ENV_VAR",
    "DEVICE_CHOICES",
    "select_device",
    "autocast_context",
    "autocast_dtype",
    "deterministic",
    "seed_everything",
    "device_summary",
]

#: Environment variable that picks the device when no explicit setting is given.
DEVICE_ENV_VAR = "MEDTORCH_DEVICE"

#: The spellings :func:`select_device` accepts (``cuda:N`` for any index N).
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")

_FIX = "use --device cpu or --device auto (in Slicer: device 'auto' or 'cpu')"


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    try:
        return bool(mps is not None and mps.is_available())
    except Exception:  # pragma: no cover - very old or odd builds
        return False


def _cuda_available() -> bool:
    try:
        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover - broken driver installs raise here
        return False


def select_device(preference: "str | torch.device | None" = None) -> torch.device:
    """The torch device to compute on.

    Args:
        preference: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` (any case,
            surrounding spaces ignored), or a :class:`torch.device`. ``None`` or ``""``
            defers to the ``MEDTORCH_DEVICE`` environment variable, and then to ``auto``.
            An explicit preference always wins over the environment variable.

    ``auto`` picks CUDA if available, else Apple MPS, else the CPU.

    Raises:
        MedTorchInputError: for an unknown spelling, or for CUDA / MPS (or a CUDA index)
            that this machine does not have.
    """
    source = "the device setting"
    if isinstance(preference, torch.device):
        text = str(preference)
    elif preference is not None and str(preference).strip():
        text = str(preference)
    else:
        env = os.environ.get(DEVICE_ENV_VAR, "").strip()
        text = env or "auto"
        if env:
            source = f"the environment variable {DEVICE_ENV_VAR}"
    choice = text.strip().lower()

    if choice == "auto":
        if _cuda_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "mps":
        if not _mps_available():
            raise MedTorchInputError(
                f"{source} asks for 'mps' (Apple GPU), but MPS is not available on this machine", _FIX
            )
        return torch.device("mps")
    if choice == "cuda" or choice.startswith("cuda:"):
        index: int | None = None
        if choice != "cuda":
            tail = choice[len("cuda:") :]
            if not tail.isdigit():
                raise MedTorchInputError(
                    f"{source} asks for {text!r}, which is not a valid CUDA device",
                    "write cuda:N with N the GPU number (e.g. cuda:0), or use --device auto",
                )
            index = int(tail)
        if not _cuda_available():
            why = "has no CUDA support" if torch.version.cuda is None else "finds no usable NVIDIA GPU"
            raise MedTorchInputError(
                f"{source} asks for {text!r}, but CUDA is not available on this machine "
                f"(torch {torch.__version__} {why})",
                _FIX,
            )
        if index is not None:
            count = torch.cuda.device_count()
            if index >= count:
                raise MedTorchInputError(
                    f"{source} asks for {text!r}, but this machine has {count} CUDA device(s) "
                    f"(cuda:0 to cuda:{count - 1})",
                    f"pick an existing GPU, or {_FIX}",
                )
            return torch.device("cuda", index)
        return torch.device("cuda")
    raise MedTorchInputError(
        f"{source} is {text!r}, which is not a known device",
        "use one of " + ", ".join(DEVICE_CHOICES),
    )


# -- precision ------------------------------------------------------------------------------


def autocast_dtype(device: "torch.device | str") -> torch.dtype | None:
    """Reduced-precision type :func:`autocast_context` would use on ``device`` (None: none)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    try:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    except Exception:  # pragma: no cover - no usable CUDA after all
        return None


def autocast_context(
    device: "torch.device | str",
    enabled: bool = True,
    *,
    allow_cpu: bool = False,
) -> contextlib.AbstractContextManager[Any]:
    """Automatic mixed precision where it is safe, a no-op context elsewhere.

    On CUDA, :func:`torch.autocast` runs convolutions and matrix products in bfloat16
    (or float16 on GPUs without bfloat16) and keeps reductions, losses, normalisation and
    anything precision-sensitive in float32 (torch's own op lists). On the CPU it is off
    unless ``allow_cpu`` (then bfloat16, which is slower than float32 on many CPUs). On
    MPS and other devices it is always off. Tensors that come out of the context may be
    half precision: :meth:`~medtorch.volume.Volume.from_torch` turns them back into float32.
    """
    dev = torch.device(device)
    if not enabled:
        return contextlib.nullcontext()
    if dev.type == "cuda":
        dtype = autocast_dtype(dev)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=dtype)
    if dev.type == "cpu" and allow_cpu:
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# -- reproducibility -------------------------------------------------------------------------

#: Largest seed accepted (numpy's legacy global generator takes 32-bit seeds).
MAX_SEED = 2**32 - 1


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) <= MAX_SEED:
        raise MedTorchInputError(
            f"the random seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}",
            "give a seed such as 0 or 12345, or leave it empty to draw one",
        )
    return int(seed)


def seed_everything(seed: int | None = None) -> int:
    """Seed Python's ``random``, numpy's global generator and torch (CPU and every GPU).

    Args:
        seed: 0 .. 2**32-1, or None to draw a fresh one.

    Returns:
        The seed used, to be recorded with the result (e.g. in ``Volume.metadata``).
    """
    seed = secrets.randbelow(MAX_SEED + 1) if seed is None else _check_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return seed


class deterministic:  # noqa: N801 - used like a function: deterministic(seed)
    """Make torch, numpy and Python reproducible; as a context manager, undo it afterwards.

    Calling ``deterministic(seed)`` at once seeds Python, numpy and torch with ``seed``;
    turns on ``torch.use_deterministic_algorithms(True, warn_only=warn_only)`` (with
    ``warn_only`` an op that has no deterministic version warns instead of failing); makes
    cuDNN deterministic with benchmarking off; and sets ``CUBLAS_WORKSPACE_CONFIG`` for
    deterministic cuBLAS if it was unset.

    Used as ``with deterministic(seed) as seed:`` the block runs that way and, on exit
    (also on an exception), the previous random states (Python, numpy, torch CPU and any
    initialised GPU), the deterministic-algorithm setting, the cuDNN flags and the
    environment variable are restored, so the block leaves no trace. Called as a plain
    function the settings stay (:meth:`restore` undoes them).

    Example::

        with deterministic(1234) as seed:
            out = model(x)
        result.metadata["seed"] = seed
    """

    def __init__(self, seed: int = 0, *, warn_only: bool = True) -> None:
        self.seed = _check_seed(seed)
        self._py_state = random.getstate()
        self._np_state = np.random.get_state()
        self._torch_state = torch.get_rng_state()
        self._cuda_states = None
        if _cuda_available() and torch.cuda.is_initialized():
            self._cuda_states = torch.cuda.get_rng_state_all()
        self._det_enabled = torch.are_deterministic_algorithms_enabled()
        self._det_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
        self._cudnn_det = torch.backends.cudnn.deterministic
        self._cudnn_bench = torch.backends.cudnn.benchmark
        self._cublas_env = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
        self._restored = False
        try:
            if self._cublas_env is None:
                os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
            torch.use_deterministic_algorithms(True, warn_only=warn_only)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
            seed_everything(self.seed)
        except BaseException:
            self.restore()
            raise

    def restore(self) -> None:
        """Put back everything as it was before; a second call does nothing."""
        if self._restored:
            return
        self._restored = True
        torch.use_deterministic_algorithms(self._det_enabled, warn_only=self._det_warn_only)
        torch.backends.cudnn.deterministic = self._cudnn_det
        torch.backends.cudnn.benchmark = self._cudnn_bench
        if self._cublas_env is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = self._cublas_env
        random.setstate(self._py_state)
        np.random.set_state(self._np_state)
        torch.set_rng_state(self._torch_state)
        if self._cuda_states is not None:
            torch.cuda.set_rng_state_all(self._cuda_states)

    def __enter__(self) -> int:
        return self.seed

    def __exit__(self, *exc: object) -> None:
        self.restore()


# -- reports -------------------------------------------------------------------------------


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _system_memory() -> tuple[int | None, int | None]:
    """(total, available) bytes of system memory, None where unknown."""
    try:
        info: dict[str, int] = {}
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    info[key] = int(parts[0]) * 1024
        return info.get("MemTotal"), info.get("MemAvailable")
    except OSError:
        pass
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return int(total), None
    except (ValueError, OSError, AttributeError):  # pragma: no cover - Windows
        return None, None


def device_summary(device: "torch.device | str") -> dict[str, Any]:
    """A JSON-friendly description of ``device`` for run reports.

    Keys: ``device``, ``type``, ``name``, ``torch_version``, ``cuda_version``,
    ``cudnn_version``, ``python_version``, ``platform``, ``num_threads``,
    ``memory_total_bytes``, ``memory_free_bytes`` (GPU memory on CUDA, system memory
    otherwise; None where unknown) and, on CUDA, ``capability`` and ``autocast_dtype``.
    """
    dev = torch.device(device)
    cudnn_version = None
    with contextlib.suppress(Exception):
        cudnn_version = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    summary: dict[str, Any] = {
        "device": str(dev),
        "type": dev.type,
        "name": None,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "cudnn_version": cudnn_version,
        "python_version": sys.version.split()[0],
        "platform": platform.platform(),
        "num_threads": torch.get_num_threads(),
        "memory_total_bytes": None,
        "memory_free_bytes": None,
    }
    if dev.type == "cuda" and _cuda_available():
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        summary["device"] = f"cuda:{index}"
        summary["name"] = props.name
        summary["capability"] = f"{props.major}.{props.minor}"
        summary["memory_total_bytes"] = int(props.total_memory)
        with contextlib.suppress(Exception):
            summary["memory_free_bytes"] = int(torch.cuda.mem_get_info(index)[0])
        dtype = autocast_dtype(dev)
        summary["autocast_dtype"] = str(dtype).replace("torch.", "") if dtype is not None else None
    elif dev.type == "mps":
        summary["name"] = f"Apple MPS ({platform.machine()})"
        # MPS shares system memory
        summary["memory_total_bytes"], summary["memory_free_bytes"] = _system_memory()
    else:
        summary["name"] = _cpu_name()
        summary["memory_total_bytes"], summary["memory_free_bytes"] = _system_memory()
    return summary
