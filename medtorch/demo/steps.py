"""The demo's steps, each an operation of :mod:`medtorch.ops` run on :mod:`medtorch.demo.data`
and measured against the known truth with the library's metrics, and :func:`run_demo`, which
runs them all and writes the outputs, ``summary.json`` and the report
(:mod:`medtorch.demo.page`).

The measures: target registration error on landmarks and the alignment of the two modalities
(:mod:`medtorch.registration.evaluation`), PSNR and SSIM (:mod:`medtorch.enhance.metrics`),
Dice (:mod:`medtorch.segment.metrics`); fusion metrics come with the ``fuse`` operation.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from medtorch import ops
from medtorch.demo.data import (
    ANISOTROPIC_CONDUCTANCE,
    ANISOTROPIC_ITERATIONS,
    DEMO_SPACING_MM,
    FUSION_METHODS,
    GAUSSIAN_SIGMA_MM,
    MOVING_MARGIN_MM,
    NOISE_FRACTION,
    NUM_LANDMARKS,
    REGISTRATION,
    ROI_MARGIN_MM,
    ROI_OFFSET_MM,
    SR_FACTOR,
    SR_SELFSUP_ITERATIONS,
    TRUTH_ROTATION_DEG,
    TRUTH_TRANSLATION_MM,
    TUMOR_CENTER_LPS,
    TUMOR_SEMI_AXES_MM,
    _STREAM_LANDMARKS,
    SampleData,
    _check_seed,
    _rng,
    add_rician_noise,
    apply_matrix,
    center_of_mass,
    load_sample_data,
    make_misaligned,
    matrix_from_sitk,
    padded_grid,
    rigid_matrix,
    seed_strokes,
    synthesize_t2like,
    thick_slice_volume,
    tumor_phantom,
    write_truth_transform,
)
from medtorch.demo.page import draw_figures, render_views, write_html
from medtorch.enhance.metrics import psnr, ssim
from medtorch.io import write_text_atomic, write_volume
from medtorch.jsonvalue import plain
from medtorch.ops import Roi
from medtorch.ops.enhance import DenoiseRequest, SuperresRequest
from medtorch.ops.fusion import FuseRequest, FusionMethod
from medtorch.ops.segmentation import SeededRequest, ThresholdRequest
from medtorch.progress import CancelToken, ProgressCallback, SubProgress, report
from medtorch.registration.evaluation import landmark_errors, normalized_mutual_information, pearson_correlation
from medtorch.segment.metrics import dice
from medtorch.volume import Volume


def segment_tumor(data: SampleData, seed: int = 0, progress: ProgressCallback | None = None,
                   cancel: CancelToken | None = None) -> dict[str, Any]:
    """Make the tumor phantom and segment it by threshold + largest component in an ROI box.

    The threshold is halfway between the white-matter and the tumor intensity; the ROI is
    the box a user would draw around the tumor (off-centre by :data:`ROI_OFFSET_MM`, with
    :data:`ROI_MARGIN_MM` margin). Returns the volumes and the metrics against the truth.
    """
    report(progress, cancel, 0.0, "making the tumor phantom")
    phantom, truth, facts = tumor_phantom(data, seed)
    threshold = 0.5 * (facts["white_matter_intensity"] + facts["tumor_intensity"])
    half = float(np.max(TUMOR_SEMI_AXES_MM)) + ROI_MARGIN_MM
    center = np.asarray(TUMOR_CENTER_LPS) + np.asarray(ROI_OFFSET_MM)
    roi_request = Roi((float(center[0]), float(center[1]), float(center[2])), (half, half, half))
    roi = roi_request.box()
    report(progress, cancel, 0.3, "thresholding")
    t0 = time.perf_counter()
    res = ops.run(ThresholdRequest(lower=threshold, roi=roi_request), {"input": phantom},
                  progress=SubProgress(progress, 0.3, 0.9), cancel=cancel).native
    seconds = time.perf_counter() - t0
    seg = res.label.array.astype(bool)
    truth_mask = truth.array.astype(bool)
    truth_ml = facts["truth_volume_ml"]
    metrics = {
        "threshold": threshold,
        "roi_center_lps_mm": [float(v) for v in roi.center],
        "roi_half_size_mm": [float(v) for v in roi.half_size],
        "dice": dice(seg, truth_mask),
        "truth_volume_ml": truth_ml,
        "segmented_volume_ml": res.volume_ml,
        "volume_error_ml": res.volume_ml - truth_ml,
        "volume_error_percent": 100.0 * (res.volume_ml - truth_ml) / truth_ml,
        "false_positive_voxels": int((seg & ~truth_mask).sum()),
        "false_negative_voxels": int((~seg & truth_mask).sum()),
        "num_components": res.num_components,
        "seconds": seconds,
    }
    report(progress, cancel, 1.0, "segmented")
    return {"phantom": phantom, "truth": truth, "segmentation": res.label, "roi": roi, "facts": facts,
            "metrics": metrics}


def segment_tumor_seeded(phantom: Volume, truth: Volume, progress: ProgressCallback | None = None,
                          cancel: CancelToken | None = None) -> dict[str, Any]:
    """Seeded segmentation (the ``seeded`` operation, default settings) of the tumor phantom
    from :func:`seed_strokes` on the three orthogonal slices through its centre."""
    truth_mask = truth.array.astype(bool)
    center = np.round(np.argwhere(truth_mask).mean(axis=0)).astype(int)
    seeds = Volume(seed_strokes(truth_mask, center), phantom.geometry, "label", {"seeds": "strokes on 3 slices"})
    t0 = time.perf_counter()
    res = ops.run(SeededRequest(), {"channel0": phantom, "seeds": seeds}, progress=progress, cancel=cancel)
    seconds = time.perf_counter() - t0
    seg = res.volumes["label"].array > 0
    truth_ml = float(truth_mask.sum()) * phantom.geometry.voxel_volume_mm3 / 1000.0
    seg_ml = float(seg.sum()) * phantom.geometry.voxel_volume_mm3 / 1000.0
    metrics = {
        "dice": dice(seg, truth_mask),
        "segmented_volume_ml": seg_ml,
        "volume_error_ml": seg_ml - truth_ml,
        "volume_error_percent": 100.0 * (seg_ml - truth_ml) / truth_ml,
        "seed_voxels": {"tumor": int((seeds.array == 1).sum()), "background": int((seeds.array == 2).sum())},
        "seconds": seconds,
    }
    return {"seeds": seeds, "segmentation": Volume(seg.astype(np.uint8), phantom.geometry, "label"),
            "metrics": metrics}


# -- the demo ----------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import scipy
    import SimpleITK as sitk
    import torch

    import medtorch

    out = {
        "medtorch": medtorch.__version__,
        "torch": torch.__version__,
        "SimpleITK": sitk.Version_VersionString() if hasattr(sitk, "Version_VersionString") else sitk.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
    }
    try:
        import matplotlib

        out["matplotlib"] = matplotlib.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def _through_transform(transform: Any, points: np.ndarray) -> np.ndarray:
    """``(N, 3)`` LPS points mapped by a SimpleITK transform (as read back from a .tfm file)."""
    return np.array([transform.TransformPoint(tuple(float(v) for v in p)) for p in points])


def _stats(values: np.ndarray) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "median": float(np.median(v)), "max": float(v.max())}


class _Timer:
    def __init__(self, store: dict[str, float], name: str) -> None:
        self.store, self.name = store, name

    def __enter__(self) -> _Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.store[self.name] = time.perf_counter() - self.t0


def run_demo(out_dir: Path, progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
             seed: int = 0, *, device: str | None = None) -> dict:
    """Run the whole demo into ``out_dir``; return the summary (also in ``out_dir/summary.json``).

    Args:
        out_dir: output folder (created if needed); existing outputs of an earlier run are
            replaced, each atomically.
        progress, cancel: see :mod:`medtorch.progress`.
        seed: seeds every random choice (noise, landmarks); recorded in the outputs.
        device: torch device for resampling (``None``: ``MEDTORCH_DEVICE`` or automatic).

    Returns:
        A JSON-friendly dict: ``seed``, ``versions``, ``device``, per-step metrics
        (``truth``, ``registration``, ``fusion``, ``enhance``, ``segment``), ``timings_s``,
        ``outputs`` (absolute paths of every file written) and ``report`` (the HTML page).

    Raises:
        MedTorchInputError: sample data missing, output folder not writable.
        Cancelled: ``cancel`` was set.
    """
    import SimpleITK as sitk
    from scipy import ndimage

    from medtorch.device import device_summary, select_device
    from medtorch.resample import resample

    seed = _check_seed(seed)
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    dev = select_device(device)
    dev_str = str(dev)
    timings: dict[str, float] = {}
    outputs: dict[str, str] = {}

    def save(vol: Volume, name: str) -> None:
        outputs[name] = str(write_volume(vol, out / name).resolve())

    report(progress, cancel, 0.0, "starting the demo")

    # 1. data ------------------------------------------------------------------------------------
    with _Timer(timings, "data"):
        sp = SubProgress(progress, 0.0, 0.2, "data")
        data = load_sample_data(DEMO_SPACING_MM, progress=SubProgress(sp, 0.0, 0.5), cancel=cancel)
        geom = data.geometry
        head = data.head_mask
        report(sp, cancel, 0.55, "synthesising the T2-like contrast")
        t2_aligned = synthesize_t2like(data)
        head_center = geom.index_to_physical(np.argwhere(head)[:, ::-1].mean(axis=0))[0]
        truth = rigid_matrix(TRUTH_ROTATION_DEG, TRUTH_TRANSLATION_MM, head_center)
        report(sp, cancel, 0.65, "misaligning the T2-like volume by the known transform")
        moving = make_misaligned(t2_aligned, truth, padded_grid(geom, MOVING_MARGIN_MM), device=dev_str)
        # Checks of the transform convention: round trip and centre of mass.
        back = resample(moving, geom, truth, interpolation="linear", device=dev_str)
        interior = ndimage.binary_erosion(head, iterations=2)
        round_trip_r = pearson_correlation(back.array, t2_aligned.array, interior)
        com_fixed = center_of_mass(t2_aligned)
        com_moving = center_of_mass(moving)
        com_error = float(np.linalg.norm(com_moving - apply_matrix(truth, com_fixed)[0]))
        com_shift_if_inverted = float(np.linalg.norm(com_moving - apply_matrix(np.linalg.inv(truth), com_fixed)[0]))
        report(sp, cancel, 0.8, "writing the data")
        save(data.t1, "t1.nrrd")
        save(moving, "t2like_misaligned.nrrd")
        save(t2_aligned, "t2like_aligned_truth.nrrd")
        tfm_path, json_path = out / "truth_transform.tfm", out / "truth_transform.json"
        write_truth_transform(truth, tfm_path, json_path, {
            "rotation_deg_xyz": list(TRUTH_ROTATION_DEG),
            "rotation_order": "about x, then y, then z (R = Rz Ry Rx), about center_lps_mm",
            "translation_mm": list(TRUTH_TRANSLATION_MM),
            "center_lps_mm": [float(v) for v in head_center],
            "seed": seed,
        })
        outputs["truth_transform.tfm"] = str(tfm_path.resolve())
        outputs["truth_transform.json"] = str(json_path.resolve())
        read_back = sitk.ReadTransform(str(tfm_path))
        rng = _rng(seed, _STREAM_LANDMARKS)
        deep = ndimage.binary_erosion(head, iterations=4)  # >= 8 mm inside the brain
        candidates = np.argwhere(deep)  # (k, j, i)
        pick = np.sort(rng.choice(len(candidates), size=NUM_LANDMARKS, replace=False))
        landmarks = geom.index_to_physical(candidates[pick][:, ::-1].astype(np.float64))
        from_tfm = np.array([read_back.TransformPoint(tuple(float(v) for v in p)) for p in landmarks])
        tfm_error = float(np.abs(from_tfm - apply_matrix(truth, landmarks)).max())
        report(sp, cancel, 1.0, "data ready")

    truth_info = {
        "matrix_lps": truth,
        "rotation_deg_xyz": list(TRUTH_ROTATION_DEG),
        "translation_mm": list(TRUTH_TRANSLATION_MM),
        "center_lps_mm": head_center,
        "checks": {
            "round_trip_correlation": round_trip_r,
            "center_of_mass_error_mm": com_error,
            "center_of_mass_error_if_inverted_mm": com_shift_if_inverted,
            "tfm_readback_max_error_mm": tfm_error,
        },
    }

    # 2. register --------------------------------------------------------------------------------
    with _Timer(timings, "register"):
        sp = SubProgress(progress, 0.2, 0.3, "registration")
        t0 = time.perf_counter()
        request = dataclasses.replace(REGISTRATION, seed=seed, device=dev_str)
        reg = ops.run(request, {"fixed": data.t1, "moving": moving},
                      progress=SubProgress(sp, 0.0, 0.85, "registering T2-like to T1"), cancel=cancel).native
        reg_seconds = time.perf_counter() - t0
        report(sp, cancel, 0.9, "writing the registration")
        reg_tfm = out / "registration_transform.tfm"
        reg.write_transform(reg_tfm)
        outputs["registration_transform.tfm"] = str(reg_tfm.resolve())
        reg_read = sitk.ReadTransform(str(reg_tfm))
        save(reg.resampled, "t2like_registered.nrrd")
        est = matrix_from_sitk(read_back)
        truth_points = apply_matrix(truth, landmarks)
        tre_identity = landmark_errors(apply_matrix(np.eye(4), landmarks), truth_points)
        tre_known = landmark_errors(_through_transform(read_back, landmarks), truth_points)
        tre_reg = landmark_errors(_through_transform(reg_read, landmarks), truth_points)
        registration = {
            "method": {"mode": request.mode, "metric": request.metric, "engine": request.engine, "seed": seed,
                       "device": dev_str},
            "report": {k: v for k, v in reg.report.items() if isinstance(v, (int, float, str, bool))},
            "seconds": reg_seconds,
            "note": "TRE of the registration is measured through registration_transform.tfm as read back by "
                    "SimpleITK; 'known transform (reference)' is the truth transform read back from "
                    "truth_transform.tfm",
            "landmarks_lps_mm": landmarks,
            "tre_mm": {"no_registration": _stats(tre_identity), "registered": _stats(tre_reg),
                       "known_transform": _stats(tre_known)},
            "tre_per_landmark_mm": {"no_registration": tre_identity, "registered": tre_reg,
                                    "known_transform": tre_known},
            "verdict": reg.verdict.to_dict() if reg.verdict is not None else None,
        }
        report(sp, cancel, 1.0, "registration done")

    # 3. fuse --------------------------------------------------------------------------------------
    with _Timer(timings, "fuse"):
        sp = SubProgress(progress, 0.3, 0.45, "fusion")
        cases: list[tuple[str, FusionMethod, Any]] = [("no_registration", "average", None)]
        cases += [(f"registered_{m}", m, reg.affine) for m in FUSION_METHODS]
        cases.append(("known_transform", "average", est))
        fusion: dict[str, Any] = {"methods": list(FUSION_METHODS), "baseline": "dwt"}
        fused: dict[str, Volume] = {}
        resampled: dict[str, Volume] = {}
        for n, (name, method, tx) in enumerate(cases):
            t0 = time.perf_counter()
            # the known-transform case is a reference for the alignment measures only: no fusion metrics
            fuse = FuseRequest(method=method, assume_aligned=tx is None,
                               metrics=None if name == "known_transform" else "3d", device=dev_str,
                               matrix=None if tx is None else tuple(tuple(float(v) for v in row) for row in tx))
            res = ops.run(fuse, {"fixed": data.t1, "moving": moving}, cancel=cancel,
                          progress=SubProgress(sp, 0.9 * n / len(cases), 0.9 * (n + 1) / len(cases),
                                               f"{method} fusion, {name.replace('_', ' ')}")).native
            fused[name] = res.fused
            resampled[name] = res.moving_resampled if res.moving_resampled is not None else res.moving_prepared
            fusion[name] = {
                "method": method,
                "seconds": time.perf_counter() - t0,
                "metrics": {k: float(v) for k, v in (res.metrics or {}).items()},
                "nmi_t1_vs_t2like": normalized_mutual_information(data.t1.array, resampled[name].array, head),
                "correlation_with_aligned_truth": pearson_correlation(resampled[name].array, t2_aligned.array,
                                                                      head),
                "overlap_fraction": res.overlap_fraction,
            }
        fusion["nmi_truth_t1_vs_aligned_t2like"] = normalized_mutual_information(data.t1.array, t2_aligned.array,
                                                                                 head)
        fusion["output_range"] = "[0, 1] (each source normalised: 1st-99th percentile of the MRI)"
        report(sp, cancel, 0.95, "writing the fused volumes")
        save(fused["no_registration"], "fused_no_registration.nrrd")
        for m in FUSION_METHODS:
            save(fused[f"registered_{m}"], f"fused_registered_{m}.nrrd")
        report(sp, cancel, 1.0, "fusion done")

    # 4. enhance ----------------------------------------------------------------------------------
    with _Timer(timings, "enhance"):
        sp = SubProgress(progress, 0.45, 0.55, "denoising")
        clean = data.t1
        peak = float(clean.array.max())
        noisy = add_rician_noise(clean, NOISE_FRACTION, seed)
        report(sp, cancel, 0.1, "denoising (Gaussian)")
        t0 = time.perf_counter()
        den_g = ops.run(DenoiseRequest(method="gaussian", strength=GAUSSIAN_SIGMA_MM), {"input": noisy},
                        progress=SubProgress(sp, 0.1, 0.3), cancel=cancel).volumes["output"]
        sec_g = time.perf_counter() - t0
        report(sp, cancel, 0.3, "denoising (anisotropic diffusion)")
        t0 = time.perf_counter()
        den_a = ops.run(DenoiseRequest(method="anisotropic", strength=ANISOTROPIC_CONDUCTANCE,
                                       iterations=ANISOTROPIC_ITERATIONS), {"input": noisy},
                        progress=SubProgress(sp, 0.3, 0.6), cancel=cancel).volumes["output"]
        sec_a = time.perf_counter() - t0
        report(sp, cancel, 0.6, "measuring PSNR and SSIM")
        enhance: dict[str, Any] = {
            "noise": {"type": "rician", "fraction_of_max": NOISE_FRACTION, "sigma": noisy.metadata["noise_sigma"],
                      "seed": seed},
            "data_range": peak,
            "mask": "head mask",
        }
        for n, (name, vol, sec, params) in enumerate((
            ("noisy", noisy, None, {}),
            ("gaussian", den_g, sec_g, {"sigma_mm": GAUSSIAN_SIGMA_MM}),
            ("anisotropic", den_a, sec_a, {"conductance": ANISOTROPIC_CONDUCTANCE,
                                           "iterations": ANISOTROPIC_ITERATIONS}),
        )):
            report(sp, cancel, 0.6 + 0.1 * n, f"metrics of {name}")
            entry: dict[str, Any] = {
                "psnr_db": psnr(vol.array, clean.array, head, peak),
                "ssim": ssim(vol.array, clean.array, head, data_range=peak),
                **params,
            }
            if sec is not None:
                entry["seconds"] = sec
            enhance[name] = entry
        for name in ("gaussian", "anisotropic"):
            enhance[name]["psnr_gain_db"] = enhance[name]["psnr_db"] - enhance["noisy"]["psnr_db"]
            enhance[name]["ssim_gain"] = enhance[name]["ssim"] - enhance["noisy"]["ssim"]
        report(sp, cancel, 0.95, "writing the denoised volumes")
        save(noisy, "t1_noisy.nrrd")
        save(den_g, "t1_denoised_gaussian.nrrd")
        save(den_a, "t1_denoised_anisotropic.nrrd")
        report(sp, cancel, 1.0, "denoising done")

    with _Timer(timings, "superres"):
        from medtorch.enhance.srnet import SRTrainConfig

        sp = SubProgress(progress, 0.55, 0.85, "super-resolution")
        thin, thick = thick_slice_volume(clean, SR_FACTOR)
        sr_mask = head[: thin.geometry.size[2]]
        sr: dict[str, Any] = {"factor": SR_FACTOR, "axis": "k", "thick_spacing_mm": float(thick.geometry.spacing[2]),
                              "profile": "Gaussian, FWHM = thick spacing (given to the methods)",
                              "reference": "the 2 mm T1 (t1_sr_reference.nrrd), on the super-resolved grid"}
        sr_out: dict[str, Volume] = {}
        sr_request = SuperresRequest(factor=float(SR_FACTOR), axis="k", fwhm_mm=float(thick.geometry.spacing[2]),
                                     seed=seed, device=dev_str)
        for n, request_sr in enumerate((
            dataclasses.replace(sr_request, method="bspline"),
            dataclasses.replace(sr_request, method="selfsup", train_iterations=SR_SELFSUP_ITERATIONS),
        )):
            name = request_sr.method
            t0 = time.perf_counter()
            vol = ops.run(request_sr, {"input": thick},
                          progress=SubProgress(sp, (0.0, 0.02)[n], (0.02, 0.95)[n], f"{name} super-resolution"),
                          cancel=cancel).volumes["output"]
            sr_out[name] = vol
            sr[name] = {"psnr_db": psnr(vol.array, thin.array, sr_mask, peak),
                        "ssim": ssim(vol.array, thin.array, sr_mask, data_range=peak),
                        "seconds": time.perf_counter() - t0}
            if request_sr.method == "selfsup":  # the training the operation ran (medtorch.ops.enhance.run_superres)
                sr[name]["training"] = SRTrainConfig(iterations=SR_SELFSUP_ITERATIONS, seed=seed).as_dict()
        sr["selfsup"]["psnr_gain_over_bspline_db"] = sr["selfsup"]["psnr_db"] - sr["bspline"]["psnr_db"]
        enhance["superres"] = sr
        report(sp, cancel, 0.96, "writing the super-resolved volumes")
        save(thick, "t1_thick_slices.nrrd")
        save(thin, "t1_sr_reference.nrrd")
        save(sr_out["bspline"], "t1_sr_bspline.nrrd")
        save(sr_out["selfsup"], "t1_sr_selfsup.nrrd")
        report(sp, cancel, 1.0, "super-resolution done")

    # 5. segment ----------------------------------------------------------------------------------
    with _Timer(timings, "segment"):
        sp = SubProgress(progress, 0.85, 0.9, "segmentation")
        seg = segment_tumor(data, seed, progress=SubProgress(sp, 0.0, 0.5), cancel=cancel)
        seeded = segment_tumor_seeded(seg["phantom"], seg["truth"], progress=SubProgress(sp, 0.5, 0.9),
                                       cancel=cancel)
        seg["seeded"] = seeded
        report(sp, cancel, 0.9, "writing the segmentation")
        save(seg["phantom"], "tumor_phantom.nrrd")
        save(seg["truth"], "tumor_truth.nrrd")
        save(seg["segmentation"], "tumor_segmentation.nrrd")
        save(seeded["seeds"], "tumor_seeds.nrrd")
        save(seeded["segmentation"], "tumor_segmentation_seeded.nrrd")
        report(sp, cancel, 1.0, "segmentation done")
    segment = {"tumor": seg["facts"], **seg["metrics"], "seeded": seeded["metrics"]}

    # 5. report ----------------------------------------------------------------------------------------
    with _Timer(timings, "report"):
        sp = SubProgress(progress, 0.9, 1.0, "report")
        figures = draw_figures(out, data, t2_aligned, resampled, fused, clean, noisy, den_g, den_a, seg,
                                head_center, enhance, fusion, sp, cancel, sr=(thin, thick, sr_out))
        for name, path in figures.items():
            outputs[f"figures/{name}"] = str(path.resolve())
    with _Timer(timings, "renders"):
        report(sp, cancel, 0.85, "rendering Slicer's views")
        renders = render_views(out, fused, seg)
        for name, path_text in renders["files"].items():
            outputs[f"figures/{name}"] = path_text
    timings["total"] = time.perf_counter() - t_start

    summary: dict[str, Any] = {
        "demo": "medtorch demo",
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "versions": _versions(),
        "device": device_summary(dev),
        "sample_data": {"files": {k: str(v) for k, v in data.files.items()},
                        "description": "MNI ICBM152 2009a nonlinear symmetric template (1 mm), see NOTICE.md"},
        "grid": {"size_ijk": list(geom.size), "spacing_mm": list(geom.spacing), "origin_lps_mm": list(geom.origin),
                 "direction": geom.direction.ravel()},
        "truth": truth_info,
        "registration": registration,
        "fusion": fusion,
        "enhance": enhance,
        "segment": segment,
        "renders": renders,
        "timings_s": timings,
        "outputs": outputs,
    }
    summary["report"] = str((out / "report.html").resolve())
    summary["summary_json"] = str((out / "summary.json").resolve())
    summary = plain(summary, nonfinite="str")
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    report(sp, cancel, 0.9, "writing report.html")
    write_html(out, summary, figures)
    report(progress, cancel, 1.0, "demo finished")
    return summary


