"""Plain, JSON-safe values: the one place where numpy values become Python ones.

:func:`plain` turns numpy arrays and scalars, tuples, dataclasses, paths and mappings into
the lists, dicts, floats, ints, bools and strings that :mod:`json` writes (and that
``torch.load(weights_only=True)`` reads back); :func:`dumps` is :func:`json.dumps` through it.

Used for the background runtime's job and result files (:mod:`medtorch.runtime.serialize`),
a request's params (:func:`medtorch.ops.request_to_params`) and saved model metadata. The
output files of the commands and the pipeline (reports, metrics, ``run.json``) are written as
strict JSON by :func:`medtorch.io.write_json_atomic` instead (NaN and infinities as null).
It imports numpy only, so every layer may use it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

__all__ = ["dumps", "plain"]


def plain(value: Any, *, nonfinite: Literal["keep", "str"] = "keep", other: Literal["keep", "str"] = "keep") -> Any:
    """``value`` with every numpy array/scalar, tuple, dataclass, mapping and path made plain.

    Args:
        nonfinite: ``"str"`` writes NaN and infinities as ``"nan"``, ``"inf"``, ``"-inf"``
            (strict JSON has no such numbers); ``"keep"`` leaves them floats.
        other: what to do with a value of any other type: keep it, or ``"str"`` it.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name), nonfinite=nonfinite, other=other)
                for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v, nonfinite=nonfinite, other=other) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, nonfinite=nonfinite, other=other) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist(), nonfinite=nonfinite, other=other)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return str(f) if nonfinite == "str" and not math.isfinite(f) else f
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value) if other == "str" else value


def dumps(value: Any, *, indent: int | None = None, nonfinite: Literal["keep", "str"] = "keep") -> str:
    """JSON text of ``value`` (:func:`plain`; anything else is written as its ``str``)."""
    return json.dumps(plain(value, nonfinite=nonfinite, other="str"), indent=indent)
