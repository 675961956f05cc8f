"""The engines the benchmark compares, each behind one function with the same contract.

``run(engine, fixed_path, moving_path, fixed, moving, mode, seed, workdir)`` returns an
:class:`EngineResult`: the transform as ``p_moving = A(p + d(p))`` (ITK convention, LPS mm,
``d`` on the fixed grid or ``None``) plus the engine's own figures. :func:`preload` loads an
engine's libraries before the clock starts (elastix's load time is reported on its own).

Engines:

* ``medtorch`` -- :func:`medtorch.registration.register` (torch engine, CPU here);
* ``sitk`` -- :func:`medtorch.registration.classic.register_sitk` (the corrected recipe);
* ``sitk-seed`` -- the original MedTorch recipe, as a reference: Mattes MI (50 bins, every
  voxel), plain gradient descent with learning rate 1 for 100 iterations, from the identity
  (rigid: ``Euler3DTransform``; affine: ``AffineTransform``), one resolution; run on
  the isotropic rigid/affine pairs only;
* ``elastix`` -- :func:`medtorch.registration.classic.register_elastix` (elastix's default
  rigid/affine/B-spline maps through itk-elastix);
* ``ants`` -- ``ants.registration`` (antspyx) with ``type_of_transform`` ``Rigid``,
  ``Affine`` or ``SyN`` (its defaults otherwise). Its transforms (``0GenericAffine.mat``,
  ``1Warp.nii.gz``) are read as ``A`` and ``d`` with ``T(p) = A(p + d(p))``; the worker
  checks that reading against ``ants.apply_transforms`` on every run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medtorch.volume import Volume

ENGINES: tuple[str, ...] = ("medtorch", "sitk", "sitk-seed", "elastix", "ants")


@dataclass
class EngineResult:
    affine: np.ndarray
    displacement: Volume | None
    info: dict[str, Any] = field(default_factory=dict)


def engine_version(engine: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    pkg = {"medtorch": "medtorch", "sitk": "SimpleITK", "sitk-seed": "SimpleITK", "elastix": "itk-elastix",
           "ants": "antspyx"}[engine]
    try:
        return f"{pkg} {version(pkg)}"
    except PackageNotFoundError:
        return f"{pkg} (not installed)"


def available(engine: str) -> str | None:
    """``None`` when ``engine`` can run here, else why not."""
    import importlib.util

    mod = {"medtorch": "torch", "sitk": "SimpleITK", "sitk-seed": "SimpleITK", "elastix": "itk", "ants": "ants"}[engine]
    if importlib.util.find_spec(mod) is None:
        return f"{mod} is not installed (pip install -r benchmarks/requirements.txt)"
    if engine == "medtorch" and importlib.util.find_spec("medtorch.registration.api") is None:
        return "medtorch.registration.register is not available yet"
    return None


def preload(engine: str, threads: int) -> None:
    """Import an engine's libraries and set its thread count (not timed as registration)."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    if engine == "medtorch":
        import torch

        torch.set_num_threads(threads)
        from medtorch.registration import register
        from medtorch.registration.synthetic import synthetic_pair

        # torch initialises its kernels (thread pool, allocator, per-op dispatch) lazily, on first
        # use: one tiny registration touches them, as elastix's wrapped classes are touched below.
        # Its time is part of "Load s", not of the registration's.
        tiny = synthetic_pair("rigid", seed=0, size=24, spacing=4.0)
        register(tiny.fixed, tiny.moving, mode="rigid", device="cpu", iterations=3, resample_output=False)
    elif engine == "elastix":
        from medtorch.registration.classic import _to_itk, load_elastix

        itk = load_elastix()
        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(threads)
        # Loading the wrapped classes is lazy: touch what a registration uses.
        tiny = Volume(np.zeros((4, 4, 4), np.float32), _tiny_geometry())
        _to_itk(tiny, itk)
        itk.ParameterObject.New()
        itk.ElastixRegistrationMethod[itk.Image[itk.F, 3], itk.Image[itk.F, 3]]
        itk.TransformToDisplacementFieldFilter  # noqa: B018
    elif engine == "ants":
        import ants  # noqa: F401


def _tiny_geometry() -> Any:
    from medtorch.volume import Geometry

    return Geometry((4, 4, 4))


# -- the engines -------------------------------------------------------------------------


def _medtorch(fixed: Volume, moving: Volume, mode: str, seed: int, **_: Any) -> EngineResult:
    from medtorch.registration import register

    # the verdict is measured (and timed) in its own section (python -m benchmarks.registration --verdict)
    res = register(fixed, moving, mode=mode, engine="torch", seed=seed, device="cpu",  # type: ignore[arg-type]
                   resample_output=False, verdict=False)
    return EngineResult(np.asarray(res.affine, np.float64), res.displacement, dict(res.report))


def _sitk(fixed: Volume, moving: Volume, mode: str, seed: int, **_: Any) -> EngineResult:
    from medtorch.registration.classic import register_sitk

    a, d, info = register_sitk(fixed, moving, mode, seed=seed)
    return EngineResult(a, d, info)


def register_sitk_seed(fixed: Volume, moving: Volume, mode: str) -> tuple[np.ndarray, dict[str, Any]]:
    """The original MedTorch recipe (see the module docstring): a 4x4 matrix and figures."""
    import SimpleITK as sitk

    from medtorch.registration.classic import _affine_of

    if mode not in ("rigid", "affine"):
        raise ValueError("the original recipe is rigid or affine only")
    f = sitk.Cast(fixed.to_sitk(), sitk.sitkFloat32)
    m = sitk.Cast(moving.to_sitk(), sitk.sitkFloat32)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    reg.SetOptimizerAsGradientDescent(learningRate=1.0, numberOfIterations=100)
    tx = sitk.Euler3DTransform() if mode == "rigid" else sitk.AffineTransform(3)
    reg.SetInitialTransform(tx, inPlace=True)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.Execute(f, m)
    return _affine_of(tx), {"final_metric": float(reg.GetMetricValue()),
                            "iterations": int(reg.GetOptimizerIteration()),
                            "stop": reg.GetOptimizerStopConditionDescription()}


def _sitk_seed(fixed: Volume, moving: Volume, mode: str, seed: int, **_: Any) -> EngineResult:
    a, info = register_sitk_seed(fixed, moving, mode)
    return EngineResult(a, None, info)


def _elastix(fixed: Volume, moving: Volume, mode: str, seed: int, **_: Any) -> EngineResult:
    from medtorch.registration.classic import register_elastix

    a, d, info = register_elastix(fixed, moving, mode, seed=seed, isolate=False)
    return EngineResult(a, d, info)


ANTS_TYPES = {"rigid": "Rigid", "affine": "Affine", "deformable": "SyN"}


def _ants(fixed: Volume, moving: Volume, mode: str, seed: int, fixed_path: Path, moving_path: Path,
          timer: Callable[[str], None], **_: Any) -> EngineResult:
    import ants

    f = ants.image_read(str(fixed_path))
    m = ants.image_read(str(moving_path))
    timer("start")
    reg = ants.registration(fixed=f, moving=m, type_of_transform=ANTS_TYPES[mode], random_seed=seed + 1,
                            verbose=False)
    timer("stop")
    affine, disp = read_ants_transforms(reg["fwdtransforms"])
    info: dict[str, Any] = {"type_of_transform": ANTS_TYPES[mode], "transforms": [Path(p).name for p in reg["fwdtransforms"]]}
    info["convention_check"] = check_ants_convention(f, m, reg["fwdtransforms"], affine, disp)
    return EngineResult(affine, disp, info)


def read_ants_transforms(fwdtransforms: list[str]) -> tuple[np.ndarray, Volume | None]:
    """``(A, d)`` of ANTs' forward transforms (fixed point -> moving point).

    ``fwdtransforms`` is ``[warp, affine]`` (SyN) or ``[affine]``. ANTs applies the list as
    ITK's composite transform does, the last first: a fixed point ``p`` goes through the
    warp, then the affine, ``T(p) = A(p + w(p))``, the warp living on the fixed grid.
    :func:`check_ants_convention` verifies this on every run.
    """
    import SimpleITK as sitk

    from medtorch.transform_io import affine_from_sitk

    affine = np.eye(4)
    disp = None
    for path in fwdtransforms:
        if path.endswith(".mat"):
            affine = affine_from_sitk(sitk.ReadTransform(path))
        else:
            disp = Volume.from_sitk(sitk.ReadImage(path), kind="vector")
            disp = Volume(disp.array.astype(np.float32), disp.geometry, "vector")
    return affine, disp


def check_ants_convention(fixed: Any, moving: Any, fwdtransforms: list[str], affine: np.ndarray,
                          disp: Volume | None) -> dict[str, float]:
    """Resample the moving image with ``A(p + d(p))`` (SimpleITK) and with
    ``ants.apply_transforms``; return their largest difference relative to the moving range."""
    import ants
    import SimpleITK as sitk

    ref = ants.apply_transforms(fixed=fixed, moving=moving, transformlist=fwdtransforms, interpolator="linear").numpy()
    # ANTs numpy arrays are indexed [x, y, z]; SimpleITK's [z, y, x].
    fixed_sitk = _ants_to_sitk(fixed)
    moving_sitk = _ants_to_sitk(moving)
    tx: Any = sitk.AffineTransform(3)
    tx.SetMatrix(tuple(float(v) for v in affine[:3, :3].reshape(-1)))
    tx.SetTranslation(tuple(float(v) for v in affine[:3, 3]))
    if disp is not None:
        field_img = Volume(disp.array.astype(np.float64), disp.geometry, "vector").to_sitk()
        tx = sitk.CompositeTransform([tx, sitk.DisplacementFieldTransform(field_img)])
    ours = sitk.GetArrayFromImage(sitk.Resample(moving_sitk, fixed_sitk, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    ref_zyx = np.transpose(ref, (2, 1, 0))
    rng = float(np.ptp(moving.numpy())) or 1.0
    diff = np.abs(ours - ref_zyx)
    return {"max_rel_diff": float(diff.max() / rng), "p99_rel_diff": float(np.percentile(diff, 99) / rng)}


def _ants_to_sitk(img: Any) -> Any:
    import SimpleITK as sitk

    out = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(img.numpy(), (2, 1, 0)), dtype=np.float32))
    out.SetOrigin(tuple(float(v) for v in img.origin))
    out.SetSpacing(tuple(float(v) for v in img.spacing))
    out.SetDirection(tuple(float(v) for v in np.asarray(img.direction).reshape(-1)))
    return out


RUNNERS: dict[str, Callable[..., EngineResult]] = {
    "medtorch": _medtorch, "sitk": _sitk, "sitk-seed": _sitk_seed, "elastix": _elastix, "ants": _ants,
}


def run(engine: str, fixed: Volume, moving: Volume, mode: str, seed: int, fixed_path: Path, moving_path: Path,
        timer: Callable[[str], None]) -> EngineResult:
    """Run ``engine``; ``timer('start')``/``timer('stop')`` bracket the registration itself."""
    fn = RUNNERS[engine]
    if engine == "ants":
        return fn(fixed, moving, mode, seed, fixed_path=fixed_path, moving_path=moving_path, timer=timer)
    timer("start")
    out = fn(fixed, moving, mode, seed)
    timer("stop")
    return out


def supports(engine: str, mode: str, thick: bool = False) -> bool:
    """Whether the benchmark runs ``engine`` on a case: the original recipe is a reference for
    the isotropic rigid/affine pairs only (it fails there already)."""
    return not (engine == "sitk-seed" and (mode == "deformable" or thick))


def now() -> float:
    return time.perf_counter()
