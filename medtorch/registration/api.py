"""``register``: one entry point for every engine, mode and metric.

Validates the inputs (one clear :class:`~medtorch.errors.MedTorchInputError` for each kind
of bad input), runs the chosen engine, resamples the moving volume onto the fixed grid,
and fills the quality report (similarity, Jacobian, folding, TRE, runtime, device, seed).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, get_args

import numpy as np
import torch

from medtorch.errors import MedTorchInputError
from medtorch.ops.registration import Engine, Init, Metric, Mode
from medtorch.progress import CancelToken, ProgressCallback, SubProgress, report
from medtorch.registration.result import RegistrationResult
from medtorch.volume import Volume, check_volume, is_single_slice

__all__ = ["ENGINES", "INITS", "METRICS", "MODES", "register", "check_inputs", "target_registration_error"]

# The choices are defined once, by the register operation's request (medtorch.ops.registration).
MODES: tuple[str, ...] = get_args(Mode)
METRICS: tuple[str, ...] = get_args(Metric)
ENGINES: tuple[str, ...] = get_args(Engine)
INITS: tuple[str, ...] = get_args(Init)


def _choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    v = str(value).strip().lower()
    if v not in allowed:
        raise MedTorchInputError(f"unknown {what} {value!r}", f"use one of: {', '.join(allowed)}")
    return v


def _check_mask(mask: Volume | None, name: str) -> None:
    if mask is None:
        return
    if not isinstance(mask, Volume):
        raise MedTorchInputError(f"the {name} mask is a {type(mask).__name__}, not a volume",
                                 "give the mask as a label or binary volume")
    mask.geometry.validate(f"{name} mask")
    if not np.asarray(mask.array).any():
        raise MedTorchInputError(f"the {name} mask is empty (no voxel is set)",
                                 f"give a {name} mask that marks the region to align, or no mask")


def _check_landmarks(fixed_landmarks: np.ndarray | None, moving_landmarks: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    if fixed_landmarks is None and moving_landmarks is None:
        return None, None
    if fixed_landmarks is None or moving_landmarks is None:
        raise MedTorchInputError("landmarks were given for only one of the volumes",
                                 "give fixed and moving landmarks in pairs, or none")
    f = np.asarray(fixed_landmarks, dtype=np.float64)
    m = np.asarray(moving_landmarks, dtype=np.float64)
    if f.ndim != 2 or f.shape[1] != 3 or m.ndim != 2 or m.shape[1] != 3:
        raise MedTorchInputError(f"landmarks must be (N, 3) arrays of LPS points, got {f.shape} and {m.shape}",
                                 "give one LPS point (mm) per row")
    if len(f) != len(m) or len(f) == 0:
        raise MedTorchInputError(f"{len(f)} fixed and {len(m)} moving landmarks do not make pairs",
                                 "give the same number of fixed and moving landmarks, in corresponding order")
    if not (np.isfinite(f).all() and np.isfinite(m).all()):
        raise MedTorchInputError("landmarks contain NaN or infinite coordinates", "check the landmark positions")
    return f, m


def _bounding_boxes_overlap(fixed: Volume, moving: Volume, transform: np.ndarray) -> bool:
    """Whether the fixed grid's box, mapped by ``transform``, meets the moving grid's box."""
    corners = fixed.geometry.corners()
    mapped = corners @ transform[:3, :3].T + transform[:3, 3]
    idx = moving.geometry.physical_to_index(mapped)
    lo, hi = idx.min(0), idx.max(0)
    size = np.asarray(moving.geometry.size, float)
    return bool(np.all(hi >= -0.5) and np.all(lo <= size - 0.5))


def check_inputs(fixed: Volume, moving: Volume, fixed_mask: Volume | None, moving_mask: Volume | None,
                 allow_nonfinite: bool = False) -> None:
    """Raise :class:`MedTorchInputError` for inputs no engine can register.

    ``allow_nonfinite``: NaN/Inf voxels and constant volumes pass here (the torch engine's
    policy for them is :func:`medtorch.registration.verdict.inspect_inputs`).
    """
    for vol, name in ((fixed, "fixed volume"), (moving, "moving volume")):
        if not isinstance(vol, Volume):
            raise MedTorchInputError(f"the {name} is a {type(vol).__name__}, not a Volume", "load it with medtorch.io.read_volume")
        if isinstance(vol, Volume) and (is_single_slice(vol.geometry) or vol.is_2d):
            raise MedTorchInputError(
                f"the {name} is a 2D image (size {vol.size}): MedTorch registers 3D volumes only",
                "fuse 2D pairs that are already aligned (pixel for pixel, as published 2D fusion pairs are): "
                "run the fusion without registration, with --assume-aligned for two images of one size; "
                "register the 3D volumes the slices come from instead")
        check_volume(vol, name, allow_nonfinite=allow_nonfinite, allow_constant=allow_nonfinite)
        if min(vol.size) < 4:
            raise MedTorchInputError(
                f"the {name} is too thin to register (size {vol.size}): at least 4 voxels per axis are needed",
                "give a 3D volume (a few slices are not enough to align in 3D)")
    _check_mask(fixed_mask, "fixed")
    _check_mask(moving_mask, "moving")


def target_registration_error(mapped: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """TRE figures (mm) of mapped landmarks against their true positions."""
    from medtorch.registration.evaluation import landmark_errors

    err = landmark_errors(mapped, truth)
    return {"tre_mean_mm": float(err.mean()), "tre_p95_mm": float(np.percentile(err, 95)),
            "tre_max_mm": float(err.max()), "tre_points": int(len(err))}


def _refinement_defaults(options: dict[str, Any], metric: str, fixed: Volume) -> None:
    """The deformable stage as a refinement of a network's field (instance optimisation): one level at
    the working spacing, a finer control grid and fewer iterations than from scratch, unless given."""
    deformable = {"deformable_iterations", "deformable_levels", "control_spacings", "control_spacing",
                  "deformable_spacing"}
    if deformable & set(options):
        return
    if (options.get("deformable_metric") or metric) == "mi":
        options.update(deformable_iterations=[40], control_spacings=[max(6.0, 3.0 * float(np.median(fixed.spacing)))])
    else:
        options.update(deformable_iterations=[0, 40])


def register(
    fixed: Volume,
    moving: Volume,
    *,
    mode: Mode = "rigid",
    metric: Metric = "mi",
    engine: Engine = "torch",
    fixed_mask: Volume | None = None,
    moving_mask: Volume | None = None,
    fixed_landmarks: np.ndarray | None = None,
    moving_landmarks: np.ndarray | None = None,
    init: Init = "auto",
    initial_transform: np.ndarray | None = None,
    device: str | None = None,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    resample_output: bool = True,
    verdict: bool = True,
    verdict_options: dict[str, Any] | None = None,
    similarity_map: bool = False,
    model: str | None = None,
    refine: bool = False,
    **options: Any,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed``: find the transform mapping fixed points to moving points.

    Args:
        fixed, moving: scalar volumes (any grids, LPS); never modified.
        mode: ``rigid`` (6 parameters); ``affine`` (rigid, then 12 parameters); ``deformable``
            (rigid, affine, then a dense displacement field).
        metric: ``mi`` (Mattes mutual information; multimodal), ``mind`` (MIND-SSC; multimodal),
            ``lncc``/``ncc``/``mse`` (same modality). In the deformable stage ``mi`` is sampled
            Parzen MI on a control-grid field; in the linear stages ``lncc`` uses global NCC.
        engine: ``torch`` (this package), ``sitk`` (SimpleITK Mattes MI, corrected recipe),
            ``elastix`` (itk-elastix; the classic engines take no metric or landmarks) or
            ``learned`` (the torch engine's affine stage, then a trained network's field in one
            forward pass, :mod:`medtorch.registration.learned`; always ``deformable``).
        fixed_mask, moving_mask: optional binary volumes (any grid); only voxels inside count.
        fixed_landmarks, moving_landmarks: optional ``(N, 3)`` LPS point pairs: used by
            ``init='fiducials'`` (and ``'auto'``), and to report the target registration error.
        init: ``auto`` (landmarks if given, else a rotation search about the centres of mass),
            ``geometry``, ``moments``, ``pax`` (principal axes), ``fiducials`` or ``none``.
        initial_transform: 4x4 LPS matrix (fixed -> moving) to start from (with ``init`` auto/none).
        device: ``auto``/``cpu``/``cuda``/``mps`` (default: ``$MEDTORCH_DEVICE``, else auto).
        seed: seeds the sampling; the same seed gives the same result on the same device.
        progress, cancel: see :mod:`medtorch.progress`.
        resample_output: False skips resampling the moving volume (``resampled`` is then
            ``None``), e.g. to time the registration alone.
        verdict: judge the result without landmarks (``result.verdict``: pass, warn or fail,
            with its checks; :mod:`medtorch.registration.verdict`). False skips it (the
            input findings are then not reported either; the input policies still apply).
        verdict_options: thresholds and settings of the verdict by name
            (:class:`~medtorch.registration.verdict.VerdictOptions`), e.g. ``{"scale_max": 1.3}``.
        similarity_map: also return the verdict's local similarity as a volume on the fixed
            grid (``result.similarity_map``).
        model: ``engine="learned"``: the model pack (``.zip``, ``medtorch train-reg``); its
            SHA-256 manifest is checked before it is loaded, and inputs outside its contract
            (channels, voxel size) are refused.
        refine: ``engine="learned"``: refine the network's field with the torch engine's
            deformable stage (instance optimisation; fewer iterations than from scratch unless
            the deformable options say otherwise).
        **options: engine options, see :mod:`medtorch.registration.torch_engine`.

    Inputs that are not clean (torch engine): NaN/Inf voxels and constant slices are treated as
    outside the image (masked, never compared; the volumes and the resampled output keep their
    values) and named by a warning in the verdict; volumes whose boxes do not meet get a
    warning unless ``init='none'`` (or an initial transform) leaves them apart, which is refused.
    The classic engines refuse NaN/Inf voxels.

    Returns:
        A :class:`RegistrationResult`; the transform is ``p_moving = A(p + d(p))``.
    """
    from medtorch.device import device_summary, select_device

    start = time.perf_counter()
    mode = _choice(mode, MODES, "registration mode")  # type: ignore[assignment]
    metric = _choice(metric, METRICS, "similarity metric")  # type: ignore[assignment]
    engine = _choice(engine, ENGINES, "registration engine")  # type: ignore[assignment]
    init = _choice(init, INITS, "initialisation")  # type: ignore[assignment]
    if engine == "learned":
        mode = "deformable"  # type: ignore[assignment]
    elif model is not None or refine:
        raise MedTorchInputError(f"a model (and refine) is for the learned engine, not the {engine} engine",
                                 "use engine='learned' with the model, or leave the model out")
    if engine == "learned" and not model:
        raise MedTorchInputError("the learned engine needs a model",
                                 "give a registration model pack (--model model.zip), e.g. one trained with "
                                 "medtorch train-reg")
    check_inputs(fixed, moving, fixed_mask, moving_mask, allow_nonfinite=engine in ("torch", "learned"))
    learned_model = None
    if engine == "learned":
        from medtorch.registration.learned import check_contract, load_model

        learned_model = load_model(str(model))  # the pack's hashes are checked before anything in it is loaded
        check_contract(learned_model.config, fixed, moving, learned_model.name)
    from medtorch.registration.verdict import VerdictOptions, assess_registration, inspect_inputs

    vopts = VerdictOptions.from_options(verdict_options)
    findings = inspect_inputs(fixed, moving, vopts)
    f_lm, m_lm = _check_landmarks(fixed_landmarks, moving_landmarks)
    if initial_transform is not None:
        from medtorch.resample import _check_affine

        initial_transform = np.asarray(_check_affine(np.asarray(initial_transform, dtype=np.float64)), dtype=np.float64)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MedTorchInputError(f"the seed must be a non-negative whole number, got {seed!r}", "give a seed such as 0")
    seed = int(seed)
    start_transform = initial_transform
    if start_transform is None and init == "none":
        start_transform = np.eye(4)
    if start_transform is not None and init in ("none", "auto") and not _bounding_boxes_overlap(fixed, moving, start_transform):
        raise MedTorchInputError(
            "the fixed and moving volumes do not overlap (with the " +
            ("initial transform given" if initial_transform is not None else "identity transform") + ")",
            "check that the right volumes are selected; use init='auto' or 'moments' to bring them together first",
        )
    dev = select_device(device)
    from medtorch.memory import check_fits, estimate_bytes

    # Peak measured at 512x512x400 (benchmarks/memory): about 12 float32 copies of the fixed
    # plus the moving voxels (converted images and their pyramids, the moving image's
    # gradient channels, the resampled output), for every mode. Refused before starting.
    voxels = int(np.prod(fixed.geometry.size)) + int(np.prod(moving.geometry.size))
    check_fits(estimate_bytes(voxels, 4, copies=12), f"{mode} registration ({engine} engine)", dev)
    report(progress, cancel, 0.0, "starting")
    eng_progress = SubProgress(progress, 0.0, 0.9, "")
    if engine in ("torch", "learned"):
        from medtorch.registration.torch_engine import RegistrationProblem, register_torch

        predictor: Callable[[np.ndarray], tuple[Volume, Volume, dict[str, Any]]] | None = None
        opts = dict(options)
        if learned_model is not None:
            from medtorch.registration.learned import predict_field

            learned_model.network.to(dev)
            lm = learned_model

            def network_field(affine: np.ndarray) -> tuple[Volume, Volume, dict[str, Any]]:
                return predict_field(lm, findings.fixed, findings.moving, affine, dev)

            predictor = network_field

            if refine:
                _refinement_defaults(opts, metric, fixed)
        problem = RegistrationProblem(findings.fixed, findings.moving, mode, metric, fixed_mask, moving_mask, f_lm,
                                      m_lm, init, initial_transform, dev, seed, opts,
                                      findings.fixed_valid, findings.moving_valid, field_predictor=predictor,
                                      refine=bool(refine))
        affine, displacement, info = register_torch(problem, eng_progress, cancel)
        if learned_model is not None:
            info["model"] = str(learned_model.path)
            info["model_sha256"] = learned_model.sha256
            info["refine"] = bool(refine)
    else:
        if options:
            raise MedTorchInputError(f"the {engine} engine takes no options ({', '.join(sorted(options))} given)",
                                     "leave the torch-engine options out for the classic engines")
        try:
            from medtorch.registration import classic
        except ImportError as exc:
            raise MedTorchInputError(f"the {engine} engine is not available in this installation ({exc})",
                                     "use engine='torch'") from exc
        fn_name = "register_sitk" if engine == "sitk" else "register_elastix"
        fn = getattr(classic, fn_name, None)
        if fn is None:
            raise MedTorchInputError(f"the {engine} engine is not available in this installation",
                                     "use engine='torch'")
        initial = initial_transform
        if initial is None and f_lm is not None and init in ("auto", "fiducials"):
            from medtorch.registration.initialization import fiducial_init

            initial = fiducial_init(f_lm, m_lm)  # type: ignore[arg-type]
        affine, displacement, info = fn(fixed, moving, mode, fixed_mask=fixed_mask, moving_mask=moving_mask,
                                        initial=initial, seed=seed, progress=eng_progress, cancel=cancel)
        info = dict(info or {})
    affine = np.asarray(affine, dtype=np.float64)
    compact = info.pop("_compact_field", None)  # the same field on a coarser grid, if the engine has one
    pyramids = info.pop("_pyramids", None)
    report(progress, cancel, 0.9, "resampling the moving volume")
    if resample_output:
        from medtorch.resample import resample

        transform: Any = affine if displacement is None else [affine, compact if compact is not None else displacement]
        resampled = resample(moving, fixed.geometry, transform, device=dev,
                             progress=SubProgress(progress, 0.9, 0.97, "resampling"), cancel=cancel)
    else:
        resampled = None
    if resampled is not None:
        resampled.metadata.update({"registration": f"{engine} {mode}", "seed": seed})
    report(progress, cancel, 0.97, "quality report")
    from medtorch.registration.jacobian import folding_report

    rep: dict[str, Any] = {
        "final_similarity": info.get("final_similarity"),
        "metric": metric if engine in ("torch", "learned") else "mattes_mi",
        "mode": mode,
        "engine": engine,
    }
    rep.update(folding_report(affine, displacement))
    rep.update({k: v for k, v in info.items() if k not in rep})
    rep["runtime_s"] = round(time.perf_counter() - start, 3)
    summary = device_summary(dev)
    rep["device"] = f"{summary.get('device', str(dev))} ({summary.get('name', '')})".strip()
    rep.setdefault("threads", torch.get_num_threads())
    rep["seed"] = seed
    result = RegistrationResult(affine, displacement, resampled, rep, compact)
    if f_lm is not None and m_lm is not None:
        rep.update(target_registration_error(result.map_points(f_lm), m_lm))
    if verdict:
        report(progress, cancel, 0.98, "verdict")
        t_verdict = time.perf_counter()
        judged, smap = assess_registration(
            findings.fixed, findings.moving, affine, compact if compact is not None else displacement, mode=mode,
            report=rep, findings=findings.checks, pyramids=pyramids, fixed_valid=findings.fixed_valid,
            moving_valid=findings.moving_valid, options=vopts, seed=seed, device=dev, similarity_map=similarity_map)
        result.verdict = judged
        result.similarity_map = smap
        rep["verdict"] = judged.status
        rep["verdict_score"] = None if judged.score is None else round(float(judged.score), 4)
        rep["verdict_s"] = round(time.perf_counter() - t_verdict, 3)
    report(progress, cancel, 1.0, "registered")
    return result
