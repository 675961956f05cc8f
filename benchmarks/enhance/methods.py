"""The methods the enhancement benchmark runs, MedTorch's and its peers', each as
``fn(prepared, params, prepare)`` for :func:`benchmarks.enhance.runner.run_isolated`:
with ``prepare=True`` it imports what it needs and loads its input (untimed); with
``prepare=False`` it runs once and returns ``(output array, info dict)``.

Denoising inputs: ``params["noisy"]`` (``.npy``, [0, 1] intensities) and ``params["sigma"]``
(the true noise level, given to the peers that need one; MedTorch estimates its own).
Super-resolution inputs: ``params["thick"]`` (a volume file) and ``params["factor"]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Curvature anisotropic diffusion settings (the best of conductance 0.5/1/2 x 5/10/20
#: iterations at 5 % Rician noise on the benchmark crop; time step 0.0625).
AD_CONDUCTANCE = 1.0
AD_ITERATIONS = 10


def _noisy(params: dict[str, Any]) -> np.ndarray:
    return np.load(params["noisy"])


# -- denoising: MedTorch -------------------------------------------------------------------------


def medtorch_denoise(prepared: Any, params: dict[str, Any], prepare: bool) -> Any:
    if prepare:
        import monai.networks.nets  # noqa: F401  (import cost outside the timing)
        import torch  # noqa: F401

        from medtorch.enhance import denoise  # noqa: F401
        from medtorch.volume import Volume

        return Volume.from_array(_noisy(params))
    from medtorch.enhance import denoise

    options = {}
    if params["method"] == "selfsup" and params.get("iterations"):
        options["iterations"] = int(params["iterations"])
    if params["method"] == "anisotropic":
        options["iterations"] = int(params.get("ad_iterations", AD_ITERATIONS))
    out = denoise(prepared, params["method"], params.get("strength"), seed=int(params.get("seed", 0)), **options)
    info = {k: out.metadata.get(k) for k in ("noise_model", "noise_sigma") if k in out.metadata}
    collab = out.metadata.get("collab") or (out.metadata.get("selfsup") or {}).get("collab")
    if collab and "h" in collab:
        info["collab_h"] = collab["h"]  # the guided-NLM parameter SURE chose (units of sigma)
    return out.array, info


# -- denoising: peers --------------------------------------------------------------------------------


def sitk_anisotropic(prepared: Any, params: dict[str, Any], prepare: bool) -> Any:
    import SimpleITK as sitk

    if prepare:
        return sitk.GetImageFromArray(_noisy(params))
    f = sitk.CurvatureAnisotropicDiffusionImageFilter()
    f.SetConductanceParameter(float(params.get("conductance", AD_CONDUCTANCE)))
    f.SetNumberOfIterations(int(params.get("iterations", AD_ITERATIONS)))
    f.SetTimeStep(0.0625)
    return sitk.GetArrayFromImage(f.Execute(prepared)), {}


def sitk_patch_based(prepared: Any, params: dict[str, Any], prepare: bool) -> Any:
    import SimpleITK as sitk

    if prepare:
        return sitk.GetImageFromArray(_noisy(params))
    f = sitk.PatchBasedDenoisingImageFilter()
    f.SetNoiseModel(f.RICIAN)
    f.SetNoiseSigma(float(params["sigma"]))
    f.SetNoiseModelFidelityWeight(0.0)
    f.SetPatchRadius(2)
    f.SetNumberOfIterations(int(params.get("iterations", 1)))
    f.SetKernelBandwidthEstimation(False)
    f.SetKernelBandwidthSigma(2.0 * float(params["sigma"]))
    f.SetNumberOfSamplePatches(200)
    f.SetSampleVariance(400.0)
    return sitk.GetArrayFromImage(f.Execute(prepared)), {}


def dipy_nlmeans(prepared: Any, params: dict[str, Any], prepare: bool) -> Any:
    from dipy.denoise.nlmeans import nlmeans

    if prepare:
        return _noisy(params).astype(np.float64)
    out = nlmeans(prepared, float(params["sigma"]), patch_radius=1, block_radius=5, rician=True,
                  num_threads=int(params.get("threads", 2)))
    return out, {}


def bm4d_denoise(prepared: Any, params: dict[str, Any], prepare: bool) -> Any:
    import bm4d

    if prepare:
        return _noisy(params)
    return np.asarray(bm4d.bm4d(prepared, float(params["sigma"]))), {}


# -- super-resolution -------------------------------------------------------------------------------


def medtorch_superres(prepared: Any, params: dict[str, Any], prepare: bool) -> Any:
    if prepare:
        import monai.networks.blocks  # noqa: F401
        import torch  # noqa: F401

        from medtorch.enhance.superres import superres  # noqa: F401
        from medtorch.io import read_volume

        return read_volume(params["thick"])
    from medtorch.enhance.srnet import SRTrainConfig, default_iterations
    from medtorch.enhance.superres import superres
    from medtorch.enhance.weights import save_model

    cfg = None
    if params["method"] == "selfsup":
        settings = dict(params.get("config", {}))
        settings.setdefault("iterations", default_iterations(int(params["factor"])))
        cfg = SRTrainConfig(**settings)
    out, model = superres(prepared, params["method"], factor=float(params["factor"]), fwhm_mm=params.get("fwhm_mm"),
                          config=cfg, profile_shape=params.get("profile_shape", "gaussian"))
    info: dict[str, Any] = {"size": list(out.size), "spacing": [float(v) for v in out.spacing]}
    if model is not None:
        info.update({k: model.metadata.get(k) for k in ("fwhm_mm", "fwhm_source", "profile_shape", "log")})
        if params.get("model_out"):
            save_model(model, params["model_out"])
    return out.array, info


def medtorch_apply_model(prepared: Any, params: dict[str, Any], prepare: bool) -> Any:
    """Apply a saved SR model with torch, onnxruntime (float32) or onnxruntime INT8."""
    if prepare:
        from medtorch.enhance.weights import OnnxRunner, load_model
        from medtorch.io import read_volume

        model = load_model(params["model"])
        runner = OnnxRunner(params["onnx"], threads=int(params.get("threads", 2))) if params.get("onnx") else None
        return read_volume(params["thick"]), model, runner
    vol, model, runner = prepared
    out = model.apply(vol, "k", runner=runner)
    return out.array, {}
