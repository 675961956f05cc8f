"""Enhancement operations for Slicer and background tasks (see :mod:`medtorch.tasks`).

* ``denoise``: inputs ``input``; params ``method``, ``strength``, ``iterations``
  (anisotropic diffusion steps), ``time_step``, ``train_iterations`` (selfsup),
  ``noise_model``, ``noise_sigma``, ``seed``, ``output_dtype``, ``comparison``
  (``none``/``difference``/``checkerboard``). Outputs ``output`` (and ``comparison``);
  values: the noise estimate and the seed.
* ``superres``: inputs ``input``; params ``method``, ``factor`` or ``spacing`` (3 numbers),
  ``axis``, ``fwhm_mm``, ``seed``, ``train_iterations``, ``max_train_seconds``,
  ``adversarial_weight``, ``model_in`` / ``model_out`` (paths of a saved model),
  ``comparison``. Outputs ``output`` (and ``comparison``); values: factor, slice profile.
* ``enhance``: inputs ``input`` and optionally ``reference`` (histogram matching);
  params ``n4``, ``clahe``, ``clahe_clip``, ``clahe_kernel_mm``, ``unsharp``,
  ``unsharp_sigma_mm``, ``unsharp_amount``, ``window``, ``comparison``. Outputs ``output``
  (and ``bias_field`` with N4, ``comparison``).
"""

from __future__ import annotations

from typing import Any

from medtorch.progress import CancelToken, ProgressCallback
from medtorch.tasks import OperationResult, need, register
from medtorch.volume import Volume


def _with_comparison(result: OperationResult, kind: str | None, before: Volume) -> OperationResult:
    from medtorch.enhance.compare import comparison_volume

    comp = comparison_volume(kind or "none", before, result.volumes["output"])
    if comp is not None:
        result.volumes["comparison"] = comp
    return result


@register("denoise")
def _op_denoise(inputs: dict[str, Volume], params: dict[str, Any], progress: ProgressCallback | None,
                cancel: CancelToken | None) -> OperationResult:
    from medtorch.enhance.denoise import denoise

    method = params.get("method", "gaussian")
    options: dict[str, Any] = {}
    if method == "anisotropic":
        options = {k: params[k] for k in ("iterations", "time_step") if params.get(k) is not None}
    elif method == "selfsup" and params.get("train_iterations") is not None:
        options = {"iterations": int(params["train_iterations"])}
    vol = need(inputs, "input")
    out = denoise(vol, method, params.get("strength"), progress=progress, cancel=cancel,
                  noise_model=params.get("noise_model", "auto"), noise_sigma=params.get("noise_sigma"),
                  seed=int(params.get("seed", 0)), output_dtype=params.get("output_dtype", "float32"), **options)
    values = {k: out.metadata[k] for k in ("noise_model", "noise_sigma", "seed", "strength") if k in out.metadata}
    return _with_comparison(OperationResult({"output": out}, values), params.get("comparison"), vol)


@register("superres")
def _op_superres(inputs: dict[str, Volume], params: dict[str, Any], progress: ProgressCallback | None,
                 cancel: CancelToken | None) -> OperationResult:
    from medtorch.commands.superres import _factor_guess
    from medtorch.enhance.output import cast_output
    from medtorch.enhance.srnet import SRTrainConfig, default_iterations
    from medtorch.enhance.superres import superres
    from medtorch.enhance.weights import load_model, save_model

    vol = need(inputs, "input")
    factor = params.get("factor")
    spacing = params.get("spacing")
    model = load_model(params["model_in"]) if params.get("model_in") else None
    seed = int(params.get("seed", 0))
    f_guess = _factor_guess(vol, factor, spacing)
    cfg = SRTrainConfig(iterations=int(params.get("train_iterations") or default_iterations(f_guess)), seed=seed,
                        max_seconds=params.get("max_train_seconds"),
                        adversarial_weight=float(params.get("adversarial_weight", 0.0)))
    out, trained = superres(vol, params.get("method", "bspline"), factor=None if factor is None else float(factor),
                            spacing=spacing, axis=params.get("axis", "auto"), fwhm_mm=params.get("fwhm_mm"),
                            model=model, config=cfg, progress=progress, cancel=cancel)
    values: dict[str, Any] = {"factors": out.metadata.get("factors"), "seed": seed}
    if trained is not None:
        values.update({k: trained.metadata.get(k) for k in ("fwhm_mm", "fwhm_source", "factor")})
        if params.get("model_out"):
            values["model_path"] = str(save_model(trained, params["model_out"]))
    out = cast_output(out, params.get("output_dtype", "float32"), vol.array.dtype)
    return _with_comparison(OperationResult({"output": out}, values), params.get("comparison"), vol)


@register("enhance")
def _op_enhance(inputs: dict[str, Volume], params: dict[str, Any], progress: ProgressCallback | None,
                cancel: CancelToken | None) -> OperationResult:
    from medtorch.enhance.contrast import EnhanceSteps, enhance

    vol = need(inputs, "input")
    window = params.get("window") or None
    steps = EnhanceSteps(
        n4=bool(params.get("n4", False)), n4_shrink=int(params.get("n4_shrink", 4)),
        histogram_reference=inputs.get("reference"),
        clahe=bool(params.get("clahe", False)), clahe_clip=float(params.get("clahe_clip", 0.01)),
        clahe_kernel_mm=float(params.get("clahe_kernel_mm", 32.0)),
        unsharp=bool(params.get("unsharp", False)), unsharp_sigma_mm=float(params.get("unsharp_sigma_mm", 1.0)),
        unsharp_amount=float(params.get("unsharp_amount", 0.5)),
        window=tuple(window) if isinstance(window, (list, tuple)) else window,
    )
    out, extra = enhance(vol, steps, progress, cancel)
    volumes = {"output": out}
    if "bias_field" in extra:
        volumes["bias_field"] = extra["bias_field"]
    return _with_comparison(OperationResult(volumes, {"steps": steps.names()}), params.get("comparison"), vol)
