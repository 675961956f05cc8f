"""What every operation shares: its spec, its result, and typed requests built from plain params.

A request is a frozen dataclass whose fields are an operation's parameters, with their
types, choices (``Literal``) and defaults defined once. Front ends build one directly
(``RegisterRequest(mode="affine")``) or from a plain mapping (:func:`request_from_params`:
JSON, YAML, a background job), and :func:`request_to_params` turns one back into a
JSON-safe mapping, so a request crosses a process boundary unchanged.

Coercion from params (what JSON and YAML give): lists become tuples, whole numbers become
floats for float fields (and whole floats ints for int fields), a comma-separated string
becomes a tuple of strings, a mapping becomes a nested request (e.g. a :class:`Roi`), and
``Literal`` choices match regardless of case and surrounding spaces. Anything else that does
not fit the field's type is refused with a :class:`~medtorch.errors.MedTorchInputError`
naming the operation, the field and what it takes.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

import numpy as np

from medtorch.errors import MedTorchInputError
from medtorch.jsonvalue import plain
from medtorch.progress import CancelToken, ProgressCallback
from medtorch.volume import Volume

__all__ = ["Operation", "OperationResult", "Request", "Roi", "choices", "default_of", "need",
           "request_from_params", "request_to_params"]

R = TypeVar("R")

#: A 4x4 matrix (LPS, fixed -> moving) as nested tuples.
Matrix = tuple[tuple[float, ...], ...]
#: ``(N, 3)`` LPS points (mm) as nested tuples.
Points = tuple[tuple[float, float, float], ...]
Vec3 = tuple[float, float, float]


@dataclass
class OperationResult:
    """Volumes and plain values (numbers, strings, lists, dicts) an operation produced.

    ``native`` is the algorithm's own result object (e.g. a
    :class:`~medtorch.registration.result.RegistrationResult`) when the operation ran in this
    process, for callers that write files with it; it never crosses a process boundary, so
    it is ``None`` for a background job's result.
    """

    volumes: dict[str, Volume] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    native: Any = field(default=None, repr=False, compare=False)


class Request:
    """Base of every request: ``operation`` names the operation it is for (a class constant)."""

    operation: ClassVar[str]


Run = Callable[[Any, dict[str, Volume], "ProgressCallback | None", "CancelToken | None"], OperationResult]


@dataclass(frozen=True)
class Operation:
    """One operation: its name, request type, run function, a one-line summary, and the input
    volumes it needs and those it accepts besides (``channel<n>`` stands for ``channel0``,
    ``channel1``, ... in order)."""

    name: str
    request: type[Request]
    run: Run
    summary: str
    needs: tuple[str, ...] = ()
    accepts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Roi:
    """An oriented box in LPS mm: ``center``, ``half_size`` along each box axis, and ``axes``
    (3x3, the columns are the axes' unit vectors; default: the LPS axes), as Slicer's ROI has it."""

    center: Vec3
    half_size: Vec3
    axes: tuple[Vec3, Vec3, Vec3] | None = None

    @classmethod
    def from_size(cls, center: Sequence[float], size: Sequence[float]) -> Roi:
        """The box of edge lengths ``size`` (mm, along L, P, S) about ``center``."""
        c, s = [float(v) for v in center], [float(v) / 2.0 for v in size]
        if len(c) != 3 or len(s) != 3:
            raise MedTorchInputError(f"a box needs a centre and a size of three numbers each, got {center!r} and {size!r}",
                                     "give x, y, z in mm for both")
        return cls((c[0], c[1], c[2]), (s[0], s[1], s[2]))

    def box(self) -> Any:
        """The :class:`medtorch.segment.threshold.Box`."""
        from medtorch.segment.threshold import Box

        axes = np.eye(3) if self.axes is None else np.asarray(self.axes, float)
        return Box(np.asarray(self.center, float), np.asarray(self.half_size, float), axes)


def need(inputs: Mapping[str, Volume], name: str) -> Volume:
    """The input volume ``name``, or a clear error when it is missing."""
    if name not in inputs:
        raise MedTorchInputError(f"the {name} volume is missing", f"select a {name} volume")
    return inputs[name]


# -- fields, choices, defaults ---------------------------------------------------------------------


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a request dataclass")
    return {f.name: f for f in dataclasses.fields(cls)}


def _is_union(tp: Any) -> bool:
    return get_origin(tp) is Union or isinstance(tp, types.UnionType)


def _literals(tp: Any) -> tuple[Any, ...]:
    """The Literal values in ``tp`` (through unions), in order; () when there are none."""
    if get_origin(tp) is Literal:
        return get_args(tp)
    if _is_union(tp):
        return tuple(v for arg in get_args(tp) for v in _literals(arg))
    return ()


def choices(cls: type, field_name: str) -> tuple[str, ...]:
    """The allowed values of a request field's ``Literal`` (of its items for a tuple field)."""
    tp = _hints(cls).get(field_name)
    if tp is None:
        raise KeyError(f"{cls.__name__} has no field {field_name!r}")
    found = _literals(tp)
    if not found:
        for arg in (get_args(tp) if _is_union(tp) else (tp,)):
            if get_origin(arg) is tuple:
                found = tuple(v for item in get_args(arg) if item is not Ellipsis for v in _literals(item))
                break
    if not found:
        raise KeyError(f"{cls.__name__}.{field_name} has no Literal choices")
    return tuple(str(v) for v in dict.fromkeys(found))


def default_of(cls: type, field_name: str) -> Any:
    """A request field's default (a fresh copy for mutable defaults)."""
    f = _fields(cls).get(field_name)
    if f is None:
        raise KeyError(f"{cls.__name__} has no field {field_name!r}")
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise KeyError(f"{cls.__name__}.{field_name} has no default (it is required)")


def default_first(cls: type, field_name: str) -> list[str]:
    """The field's choices with its default first (the order a combo box shows them in)."""
    values = list(choices(cls, field_name))
    default = default_of(cls, field_name)
    return ([default] if default in values else []) + [v for v in values if v != default]


# -- params -> request ------------------------------------------------------------------------------


class _Mismatch(Exception):
    """A value that does not fit a type; ``wants`` says what the type takes."""

    def __init__(self, wants: str) -> None:
        super().__init__(wants)
        self.wants = wants


def _describe(tp: Any) -> str:
    if tp is Any:
        return "any value"
    if get_origin(tp) is Literal:
        return "one of: " + ", ".join(str(v) for v in get_args(tp))
    if _is_union(tp):
        args = get_args(tp)
        named = _literals(tp)
        parts = (["one of: " + ", ".join(str(v) for v in named)] if named else []) + [
            "none" if a is type(None) else _describe(a) for a in args if get_origin(a) is not Literal]
        return " or ".join(parts)
    origin = get_origin(tp)
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of ({_describe(args[0])})"
        return f"a list of {len(args)} items ({', '.join(_describe(a) for a in args)})"
    if origin in (dict, Mapping) or tp is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return "a mapping with " + ", ".join(_fields(tp))
    return {bool: "true or false", int: "a whole number", float: "a number", str: "text"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any) -> Any:
    if tp is Any:
        return value
    if get_origin(tp) is Literal:
        allowed = get_args(tp)
        if value in allowed and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            key = value.strip().lower()
            for v in allowed:
                if isinstance(v, str) and v.lower() == key:
                    return v
        raise _Mismatch(_describe(tp))
    if _is_union(tp):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise _Mismatch(_describe(tp))
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except _Mismatch:
                continue
        raise _Mismatch(_describe(tp))
    if tp is bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        raise _Mismatch(_describe(tp))
    if tp is int:
        if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
            return int(value)
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return int(value)
        raise _Mismatch(_describe(tp))
    if tp is float:
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
            return float(value)
        raise _Mismatch(_describe(tp))
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise _Mismatch(_describe(tp))
    origin = get_origin(tp)
    if origin is tuple:
        args = get_args(tp)
        if isinstance(value, str) and len(args) == 2 and args[1] is Ellipsis:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple, np.ndarray)):
            raise _Mismatch(_describe(tp))
        items = list(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in items)
        if len(items) != len(args):
            raise _Mismatch(_describe(tp))
        return tuple(_coerce(v, a) for v, a in zip(items, args))
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise _Mismatch(_describe(tp))
        args = get_args(tp)
        item_tp = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, item_tp) for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            try:
                return request_from_params(tp, value)
            except MedTorchInputError as exc:
                raise _Mismatch(f"{_describe(tp)} ({exc.problem})") from None
        raise _Mismatch(_describe(tp))
    raise TypeError(f"request fields of type {tp!r} are not supported")


def _name_of(cls: type) -> str:
    return str(getattr(cls, "operation", cls.__name__))


def request_from_params(cls: type[R], params: Mapping[str, Any]) -> R:
    """A ``cls`` request from a plain mapping, checked and coerced (see the module docstring).

    Raises:
        MedTorchInputError: an unknown key (the message lists the allowed ones), a missing
            required key, or a value of the wrong kind (a bad choice lists the allowed values).
    """
    if not isinstance(params, Mapping):
        raise MedTorchInputError(f"the {_name_of(cls)} parameters are a {type(params).__name__}, not a mapping",
                                 "give the parameters as name: value pairs")
    op = _name_of(cls)
    fields = _fields(cls)
    unknown = sorted(str(k) for k in params if k not in fields)
    if unknown:
        raise MedTorchInputError(f"unknown parameter(s) of the {op} operation: {', '.join(unknown)}",
                                 "use only: " + ", ".join(fields))
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in params:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise MedTorchInputError(f"the {op} operation needs the parameter '{name}'",
                                         f"give {name}: {_describe(hints[name])}")
            continue
        try:
            values[name] = _coerce(params[name], hints[name])
        except _Mismatch as exc:
            raise MedTorchInputError(f"{op}: {name}={params[name]!r} is not valid", f"give {exc.wants}") from None
    return cls(**values)


def request_to_params(request: Any) -> dict[str, Any]:
    """The request as a JSON-safe mapping (tuples as lists); :func:`request_from_params` inverts it."""
    if not dataclasses.is_dataclass(request) or isinstance(request, type):
        raise TypeError(f"{request!r} is not a request")
    return {f.name: plain(getattr(request, f.name)) for f in dataclasses.fields(request)}


def normalized(request: R) -> R:
    """``request`` checked and coerced as if it had come from params (e.g. numpy values in a
    directly built request become plain ones), so every run sees what a background job sees."""
    return request_from_params(type(request), request_to_params(request))
