"""Enhancement operations.

* ``denoise``: input ``input``. Outputs ``output`` (and ``comparison``; ``fidelity``, the
  removed component in units of the noise, with ``fidelity_map``); values: the noise
  estimate, the seed and the strength (and ``fidelity``, the map's summary).
* ``superres``: input ``input``. Outputs ``output`` (and ``comparison``; ``fidelity``, the
  output re-degraded by the slice profile minus the input, on the input's grid, with
  ``fidelity_map``); values: factors, seed, slice profile of a trained model (and
  ``model_path`` when it was saved; ``fidelity``, the map's summary); ``native`` is the
  trained model (selfsup) or None.
* ``enhance``: input ``input`` and optionally ``reference`` (histogram matching). Outputs
  ``output`` (and ``bias_field`` with N4, ``comparison``); values: ``steps``.

The choices defined here are those :mod:`medtorch.enhance` accepts (its ``DENOISE_METHODS``,
``SR_METHODS``, ``NOISE_MODELS`` and ``COMPARISONS`` are these).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from medtorch.ops.base import OperationResult, Request, Vec3, need
from medtorch.progress import CancelToken, ProgressCallback
from medtorch.volume import Volume

DenoiseMethod = Literal["gaussian", "median", "anisotropic", "bilateral", "nlm", "patch", "dct", "collab", "selfsup"]
NoiseModel = Literal["rician", "gaussian", "poisson"]
SrMethod = Literal["linear", "bspline", "sinc", "selfsup"]
#: The axis super-resolution refines: the thickest, one of i, j, k, or all (isotropic).
SrAxis = Literal["auto", "i", "j", "k", "all"]
#: The slice profile's shape for selfsup: a Gaussian, a box (2D multi-slice), or the better fit.
SrProfileShape = Literal["gaussian", "box", "auto"]
#: An extra before/after volume: none, the difference, or a checkerboard of the two.
Comparison = Literal["none", "difference", "checkerboard"]


@dataclass(frozen=True)
class DenoiseRequest(Request):
    """Parameters of :func:`medtorch.enhance.denoise.denoise`. ``strength``: sigma (gaussian)
    or radius (median) in mm, conductance (anisotropic), else a multiple of the noise level;
    ``iterations`` and ``time_step``: anisotropic diffusion; ``train_iterations``: selfsup;
    ``fidelity_map``: also the removed component in units of the noise
    (:func:`medtorch.enhance.fidelity.denoise_fidelity`)."""

    operation: ClassVar[str] = "denoise"

    #: collab by default: on real MRI noise it was the one method that lowered the error (gaussian
    #: raised it 3.4 times) and selfsup did no better at 16 times its time (docs/benchmarks/denoise_real.md)
    method: DenoiseMethod = "collab"
    strength: float | None = None
    iterations: int = 5
    time_step: float | None = None
    train_iterations: int | None = None
    noise_model: Literal["auto"] | NoiseModel = "auto"
    noise_sigma: float | None = None
    seed: int = 0
    output_dtype: str = "float32"
    comparison: Comparison = "none"
    device: str = "cpu"
    fidelity_map: bool = False


@dataclass(frozen=True)
class SuperresRequest(Request):
    """Parameters of :func:`medtorch.enhance.superres.superres`: ``factor`` or ``spacing``
    (mm, i j k); for selfsup the training (``train_iterations``: 0 or none for the default
    length, ``max_train_seconds``, ``adversarial_weight``) and a saved model to apply
    (``model_in``) or to write (``model_out``); ``fidelity_map``: also the output re-degraded
    by the slice profile minus the input (:func:`medtorch.enhance.fidelity.superres_fidelity`)."""

    operation: ClassVar[str] = "superres"

    method: SrMethod = "bspline"
    factor: float | None = None
    spacing: Vec3 | None = None
    axis: SrAxis = "auto"
    fwhm_mm: float | None = None
    profile_shape: SrProfileShape = "gaussian"
    seed: int = 0
    train_iterations: int | None = None
    max_train_seconds: float | None = None
    adversarial_weight: float = 0.0
    model_in: str | None = None
    model_out: str | None = None
    output_dtype: str = "float32"
    comparison: Comparison = "none"
    device: str = "cpu"
    fidelity_map: bool = False


@dataclass(frozen=True)
class EnhanceRequest(Request):
    """The steps of :func:`medtorch.enhance.contrast.enhance` (N4, CLAHE, unsharp masking, CT
    ``window``: a preset or (width, level) in HU); histogram matching when a ``reference``
    volume is given."""

    operation: ClassVar[str] = "enhance"

    n4: bool = False
    n4_shrink: int = 4
    clahe: bool = False
    clahe_clip: float = 0.01
    clahe_kernel_mm: float = 32.0
    unsharp: bool = False
    unsharp_sigma_mm: float = 1.0
    unsharp_amount: float = 0.5
    window: str | tuple[float, float] | None = None
    comparison: Comparison = "none"


def _with_comparison(result: OperationResult, kind: str, before: Volume) -> OperationResult:
    from medtorch.enhance.compare import comparison_volume

    comp = comparison_volume(kind, before, result.volumes["output"])
    if comp is not None:
        result.volumes["comparison"] = comp
    return result


def run_denoise(request: DenoiseRequest, inputs: dict[str, Volume], progress: ProgressCallback | None,
                cancel: CancelToken | None) -> OperationResult:
    from medtorch.enhance.denoise import denoise

    options: dict[str, Any] = {}
    if request.method == "anisotropic":
        options = {k: v for k, v in (("iterations", request.iterations), ("time_step", request.time_step))
                   if v is not None}
    elif request.method == "selfsup" and request.train_iterations is not None:
        options = {"iterations": int(request.train_iterations)}
    vol = need(inputs, "input")
    out = denoise(vol, request.method, request.strength, progress=progress, cancel=cancel,
                  noise_model=request.noise_model, noise_sigma=request.noise_sigma, seed=request.seed,
                  device=request.device, output_dtype=request.output_dtype, **options)
    values: dict[str, Any] = {k: out.metadata[k] for k in ("noise_model", "noise_sigma", "seed", "strength")
                              if k in out.metadata}
    volumes = {"output": out}
    if request.fidelity_map:
        from medtorch.enhance.fidelity import denoise_fidelity, noise_used

        noise = noise_used(vol, out, request.noise_model, request.noise_sigma)
        volumes["fidelity"], values["fidelity"] = denoise_fidelity(vol, out, noise, method=request.method,
                                                                   cancel=cancel)
    return _with_comparison(OperationResult(volumes, values), request.comparison, vol)


def run_superres(request: SuperresRequest, inputs: dict[str, Volume], progress: ProgressCallback | None,
                 cancel: CancelToken | None) -> OperationResult:
    from medtorch.enhance.output import cast_output
    from medtorch.enhance.srnet import SRTrainConfig, default_iterations
    from medtorch.enhance.superres import factor_guess, superres
    from medtorch.enhance.weights import load_model, save_model

    vol = need(inputs, "input")
    factor, spacing, seed = request.factor, request.spacing, request.seed
    model = load_model(request.model_in) if request.model_in else None
    cfg = SRTrainConfig(iterations=int(request.train_iterations or default_iterations(factor_guess(vol, factor, spacing))),
                        seed=seed, max_seconds=request.max_train_seconds,
                        adversarial_weight=float(request.adversarial_weight))
    out, trained = superres(vol, request.method, factor=None if factor is None else float(factor), spacing=spacing,
                            axis=request.axis, fwhm_mm=request.fwhm_mm, model=model, config=cfg, device=request.device,
                            progress=progress, cancel=cancel, profile_shape=request.profile_shape)
    values: dict[str, Any] = {"factors": out.metadata.get("factors"), "seed": seed}
    if trained is not None:
        values.update({k: trained.metadata.get(k) for k in ("fwhm_mm", "fwhm_source", "profile_shape", "factor")})
        if request.model_out:
            values["model_path"] = str(save_model(trained, request.model_out))
    volumes = {"output": cast_output(out, request.output_dtype, vol.array.dtype)}
    # the fidelity check: always for the learned method (the one that can invent detail), and for any
    # method when the map is asked for; on the float output, before any cast
    if request.fidelity_map or request.method == "selfsup":
        from medtorch.enhance.fidelity import superres_fidelity, superres_verdict

        fwhm, source = request.fwhm_mm, None
        shape = "box" if request.profile_shape == "box" else "gaussian"
        if trained is not None:  # the profile the model was trained with, given or estimated
            fwhm, source = trained.metadata.get("fwhm_mm"), trained.metadata.get("fwhm_source")
            shape = "box" if trained.metadata.get("profile_shape") == "box" else "gaussian"
        fmap, values["fidelity"] = superres_fidelity(vol, out, fwhm, fwhm_source=source, cancel=cancel,
                                                     profile_shape=shape)
        values["verdict"] = superres_verdict(values["fidelity"]).to_dict()
        if request.fidelity_map:
            volumes["fidelity"] = fmap
    return _with_comparison(OperationResult(volumes, values, trained), request.comparison, vol)


def run_enhance(request: EnhanceRequest, inputs: dict[str, Volume], progress: ProgressCallback | None,
                cancel: CancelToken | None) -> OperationResult:
    from medtorch.enhance.contrast import EnhanceSteps, enhance

    vol = need(inputs, "input")
    window = request.window or None
    steps = EnhanceSteps(
        n4=request.n4, n4_shrink=int(request.n4_shrink), histogram_reference=inputs.get("reference"),
        clahe=request.clahe, clahe_clip=float(request.clahe_clip), clahe_kernel_mm=float(request.clahe_kernel_mm),
        unsharp=request.unsharp, unsharp_sigma_mm=float(request.unsharp_sigma_mm),
        unsharp_amount=float(request.unsharp_amount),
        window=window if isinstance(window, str) or window is None else (float(window[0]), float(window[1])),
    )
    out, extra = enhance(vol, steps, progress, cancel)
    volumes = {"output": out}
    if "bias_field" in extra:
        volumes["bias_field"] = extra["bias_field"]
    return _with_comparison(OperationResult(volumes, {"steps": steps.names()}), request.comparison, vol)
