"""What each step of a study configuration takes, checked whole before anything runs.

``medtorch pipeline`` and ``medtorch batch`` used to check a step's options only when that step
ran, after earlier steps had written their outputs. :func:`check_steps` checks every step's every
key first, from the same definitions the operations and the command line use (the request
dataclasses of :mod:`medtorch.ops`, the registration engine's options, the fusion methods'
parameters, the denoising methods' options, :func:`medtorch.enhance.superres.superres`'s
keywords). Every error names the step, the key and the allowed values.

:func:`reference_markdown` writes the key tables of ``docs/pipeline.md`` from the same
definitions (``python -m medtorch.pipeline.schema``), so the documentation cannot drift from what
is accepted.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medtorch.errors import MedTorchInputError

__all__ = ["check_steps", "reference_markdown", "step_keys"]

#: keys every step that reads one volume takes
_INPUT_KEY = {"input": "which study input the step reads: fixed (default) or moving"}
#: fuse keys that are fusion options, not the method's parameters
_FUSE_OPTIONS = ("fixed_modality", "moving_modality", "normalization", "ct_window", "color_map", "functional")
#: superres keywords the study sets itself
_SUPERRES_INTERNAL = {"volume", "device", "progress", "cancel", "model", "config"}
#: segment_with_model keywords the study sets itself
_MODEL_INTERNAL = {"model_path", "inputs", "device", "progress", "cancel"}


def _err(step: str, problem: str, fix: str) -> MedTorchInputError:
    return MedTorchInputError(f"study configuration: step {step}: {problem}", fix)


def _request_keys(cls: type, exclude: frozenset[str] | set[str] = frozenset()) -> dict[str, str]:
    from medtorch.ops import choices

    out = {}
    for f in dataclasses.fields(cls):
        if f.name in exclude or f.name == "operation":
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            "required" if f.default_factory is dataclasses.MISSING else f.default_factory())
        text = f"default {default!r}" if default != "required" else "required"
        try:
            text = "one of " + ", ".join(choices(cls, f.name)) + f"; {text}"
        except KeyError:
            pass
        out[f.name] = text
    return out


def step_keys(step: str, method: str | None = None) -> dict[str, str]:
    """The keys ``step`` takes (with ``method`` where the step has methods): ``{key: note}``."""
    if step == "register":
        from medtorch.ops.registration import RegisterRequest
        from medtorch.registration.torch_engine import TorchOptions

        keys = _request_keys(RegisterRequest, {"device", "seed", "options"})
        keys.update({f.name: "registration engine option" for f in dataclasses.fields(TorchOptions)
                     if f.name != "extra"})
        return keys
    if step == "fuse":
        from medtorch.fusion.methods import METHODS
        from medtorch.ops import choices
        from medtorch.ops.fusion import FuseRequest

        keys = {"method": "one of " + ", ".join(choices(FuseRequest, "method")) + " (default 'average')"}
        keys.update({k: "fusion option" for k in _FUSE_OPTIONS})
        if method is not None and method in METHODS:
            keys.update({k: f"{method} parameter, default {v!r}" for k, v in METHODS[method].params.items()})
        return keys
    if step == "denoise":
        from medtorch.enhance.denoise import DENOISE_METHODS, METHOD_OPTIONS
        from medtorch.ops.enhance import DenoiseRequest

        keys = {**_INPUT_KEY, "method": "one of " + ", ".join(DENOISE_METHODS) + f" (default {DenoiseRequest.method!r})",
                "strength": "the method's strength (default: the method's own)", "noise_model": "default 'auto'",
                "noise_sigma": "default: estimated", "output_dtype": "default 'float32'"}
        for k in sorted(METHOD_OPTIONS.get(method or "", set()) - {"config"}):
            keys[k] = f"{method} option"
        return keys
    if step == "superres":
        from medtorch.enhance.superres import superres

        keys = dict(_INPUT_KEY)
        for name, prm in inspect.signature(superres).parameters.items():
            if name not in _SUPERRES_INTERNAL:
                keys[name] = "required" if prm.default is inspect.Parameter.empty else f"default {prm.default!r}"
        return keys
    if step == "segment":
        keys = {**_INPUT_KEY, "method": "threshold (default), seeded or model"}
        if method in (None, "threshold"):
            from medtorch.ops.segmentation import ThresholdRequest

            keys.update(_request_keys(ThresholdRequest, {"roi"}))
            keys["roi"] = "{center: [x, y, z], size: [x, y, z]} in LPS mm (optional)"
        elif method == "seeded":
            from medtorch.ops.segmentation import SeededRequest

            keys["seeds"] = "required: the seed label map (path; relative paths start at the YAML's folder)"
            keys["extra_inputs"] = "further channels: a list of study inputs (e.g. [moving])"
            keys.update(_request_keys(SeededRequest, {"device", "roi"}))
        elif method == "model":
            from medtorch.segment.inference import segment_with_model

            keys["model"] = "required: a MONAI bundle folder, TorchScript file or nnU-Net folder"
            for name, prm in inspect.signature(segment_with_model).parameters.items():
                if name not in _MODEL_INTERNAL:
                    keys[name] = f"default {prm.default!r}"
        return keys
    raise KeyError(step)


def _unknown(step: str, params: Mapping[str, Any], keys: Mapping[str, str], what: str) -> None:
    unknown = sorted(str(k) for k in params if k not in keys)
    if unknown:
        raise _err(step, f"unknown key(s) {', '.join(unknown)}{what}", "use only: " + ", ".join(keys))


def _wrap(step: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except MedTorchInputError as exc:
        raise _err(step, exc.problem if hasattr(exc, "problem") else str(exc),
                   getattr(exc, "fix", "") or "see docs/pipeline.md") from None


def check_steps(steps: Mapping[str, Mapping[str, Any]], inputs: Mapping[str, Any], base_dir: Path) -> None:
    """Check every step's keys and values (see the module docstring); raise on the first error."""
    from medtorch import ops

    for step, params in steps.items():
        p = dict(params)
        if "input" in p and p["input"] not in inputs:
            raise _err(step, f"input {p['input']!r} is not one of the study's inputs",
                       "use one of: " + ", ".join(inputs))
        if step == "register":
            from medtorch.ops.registration import RegisterRequest
            from medtorch.registration.torch_engine import TorchOptions

            named = {f.name for f in dataclasses.fields(RegisterRequest)} - {"device", "seed", "options"}
            _unknown(step, p, step_keys(step), "")
            _wrap(step, ops.request_from_params, RegisterRequest, {k: v for k, v in p.items() if k in named})
            _wrap(step, TorchOptions.from_options, {k: v for k, v in p.items() if k not in named})
        elif step == "fuse":
            from medtorch.fusion.methods import check_params
            from medtorch.ops.fusion import FuseRequest

            method = p.pop("method", "average")
            allowed = ops.choices(FuseRequest, "method")
            if method not in allowed:
                raise _err(step, f"method {method!r} is unknown", "use one of: " + ", ".join(allowed))
            _wrap(step, check_params, method, {k: v for k, v in p.items() if k not in _FUSE_OPTIONS})
            _wrap(step, ops.request_from_params, FuseRequest,
                  {"method": method, **{k: v for k, v in p.items() if k in _FUSE_OPTIONS}})
        elif step == "denoise":
            from medtorch.enhance.denoise import DENOISE_METHODS

            from medtorch.ops.enhance import DenoiseRequest

            method = p.get("method", DenoiseRequest.method)
            if method not in DENOISE_METHODS:
                raise _err(step, f"method {method!r} is unknown", "use one of: " + ", ".join(DENOISE_METHODS))
            _unknown(step, p, step_keys(step, method), f" for the {method} method")
            s = p.get("strength")
            if s is not None and not (isinstance(s, (int, float)) and s > 0):
                raise _err(step, f"strength {s!r} is not a positive number", "use e.g. strength: 1.0")
        elif step == "superres":
            from medtorch.enhance.superres import SR_METHODS

            _unknown(step, p, step_keys(step), "")
            if p.get("method", "bspline") not in SR_METHODS:
                raise _err(step, f"method {p.get('method')!r} is unknown", "use one of: " + ", ".join(SR_METHODS))
            if (p.get("factor") is None) == (p.get("spacing") is None):
                raise _err(step, "give exactly one of factor and spacing",
                           "e.g. factor: 2 (with axis: auto for the thick axis, or axis: all)")
            axis = p.get("axis", "auto")
            if axis not in ("auto", "i", "j", "k", "all", 0, 1, 2):
                raise _err(step, f"axis {axis!r} is unknown", "use one of: auto, i, j, k, all")
        elif step == "segment":
            method = p.get("method", "threshold")
            if method not in ("threshold", "seeded", "model"):
                raise _err(step, f"method {method!r} is unknown", "use one of: threshold, seeded, model")
            _unknown(step, p, step_keys(step, method), f" for the {method} method")
            rest = {k: v for k, v in p.items() if k not in ("input", "method")}
            if method == "threshold":
                from medtorch.ops.segmentation import ThresholdRequest

                roi = rest.pop("roi", None)
                if roi is not None and not (isinstance(roi, Mapping) and {"center", "size"} <= set(roi)):
                    raise _err(step, "roi must be {center: [x, y, z], size: [x, y, z]}", "give both center and size")
                _wrap(step, ops.request_from_params, ThresholdRequest, rest)
            elif method == "seeded":
                from medtorch.ops.segmentation import SeededRequest

                seeds = rest.pop("seeds", None)
                if seeds is None:
                    raise _err(step, "the seeded method needs 'seeds'", "give seeds: path/to/seeds.nrrd")
                path = Path(str(seeds)).expanduser()
                if not (path if path.is_absolute() else base_dir / path).exists():
                    raise _err(step, f"seeds {seeds} does not exist", "fix the path (relative to the YAML's folder)")
                extra = rest.pop("extra_inputs", []) or []
                bad = [e for e in extra if e not in inputs]
                if bad:
                    raise _err(step, f"extra_inputs {bad} are not study inputs", "use: " + ", ".join(inputs))
                _wrap(step, ops.request_from_params, SeededRequest, rest)
            else:
                model = rest.get("model")
                if model is None:
                    raise _err(step, "the model method needs 'model'", "give model: path/to/bundle")
                path = Path(str(model)).expanduser()
                if not (path if path.is_absolute() else base_dir / path).exists():
                    raise _err(step, f"model {model} does not exist", "fix the path (relative to the YAML's folder)")


def reference_markdown() -> str:
    """The key tables of ``docs/pipeline.md`` (generated: never edit them by hand)."""
    from medtorch.enhance.denoise import DENOISE_METHODS
    from medtorch.ops import choices
    from medtorch.ops.fusion import FuseRequest

    lines = ["<!-- generated by `python -m medtorch.pipeline.schema`: do not edit by hand -->", ""]

    def table(title: str, keys: Mapping[str, str]) -> None:
        lines.extend([f"### {title}", "", "| key | what |", "| --- | --- |"])
        lines.extend(f"| `{k}` | {v.replace('|', '/')} |" for k, v in keys.items())
        lines.append("")

    table("register", step_keys("register"))
    for m in choices(FuseRequest, "method"):
        table(f"fuse, method: {m}", step_keys("fuse", m))
    for m in DENOISE_METHODS:
        table(f"denoise, method: {m}", step_keys("denoise", m))
    table("superres", step_keys("superres"))
    for m in ("threshold", "seeded", "model"):
        table(f"segment, method: {m}", step_keys("segment", m))
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference_markdown())
