"""Run a study: the configured steps in order, every output named and written atomically,
and a ``run.json`` recording versions, parameters, device, seeds, timings and outputs.

The register, fuse and segment (threshold, seeded) steps run their operation through
:func:`medtorch.ops.run` (a step's parameters become the operation's request); denoising,
super-resolution and model segmentation pass their parameters to the core as keywords (a
study may set any of the core's options there, more than the operations take).

``run.json`` is written last; its ``status`` is ``"done"`` only when every step finished,
which is how :mod:`medtorch.pipeline.batch` knows a case can be skipped on resume. Steps whose
result has a verdict (register, seeded segment) put it under ``verdicts`` (the step's checks) and the worst of
them under ``verdict`` (``pass``, ``warn`` or ``fail``; absent when no step has one): a study
that finished with a failing verdict is still ``done`` -- the verdict says whether to trust it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medtorch import ops
from medtorch.errors import Cancelled, MedTorchError, MedTorchInputError
from medtorch.pipeline.config import StudyConfig
from medtorch.progress import CancelToken, ProgressCallback, SubProgress, report
from medtorch.runtime.threads import ThreadPlan, applied, plan_threads
from medtorch.volume import Volume

RUN_RECORD = "run.json"


@dataclass
class StepContext:
    """What steps share: the config, loaded volumes, the transform, outputs and values."""

    config: StudyConfig
    device: str
    volumes: dict[str, Volume] = field(default_factory=dict)
    transform: Any = None
    outputs: dict[str, str] = field(default_factory=dict)
    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    verdicts: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def out(self, relative: str) -> Path:
        path = self.config.output_dir / relative
        # an output never replaces an input (the same rule as the command line's)
        target = path.resolve()
        for name, src in self.config.inputs.items():
            s = Path(src).resolve()
            if target == s or (target.exists() and s.exists() and s.is_file() and target.samefile(s)):
                raise MedTorchInputError(f"the study's output {relative} in {self.config.output_dir} is its input "
                                         f"{name!r} ({src}): writing it would replace the input",
                                         "choose another output_dir for the study, or move the input out of it")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write(self, key: str, volume: Volume, relative: str, source: str = "fixed",
              names: dict[int, str] | None = None) -> Path:
        """Write a volume output; with ``output_format: dicom`` also as DICOM, through the
        ``export_dicom`` operation: a grey-scale volume as a DICOM series in the folder
        ``<relative without extension>_dicom`` (output ``<key>_dicom``), referencing the input
        ``source`` when that is a DICOM folder (else a new patient with ``patient_id``); a label map
        as a DICOM SEG ``<relative without extension>_SEG.dcm`` (output ``<key>_seg``) referencing
        the input ``source``, which must then be a DICOM series (segment names from ``names``).
        What could not be written as DICOM, and why, goes to the run's ``notes``."""
        from medtorch.io import write_volume

        path = write_volume(volume, self.out(relative))
        self.outputs[key] = str(path)
        if self.config.output_format != "dicom":
            return path
        from medtorch.ops.export import ExportDicomRequest

        ref = self.config.inputs.get(source)
        is_dicom = ref is not None and ref.is_dir()
        if volume.kind == "vector":
            self.notes.append(f"{key}: a colour volume is not written as DICOM (its grey-scale outputs are)")
        elif volume.kind == "label":
            if not is_dicom:
                self.notes.append(f"{key}: not written as DICOM SEG: a DICOM SEG must reference the DICOM series the "
                                  f"segmentation was made on, and the input {source!r} is not a DICOM series "
                                  "(medtorch export-dicom --as seg --source DICOMDIR writes it from the series)")
            elif not np.any(volume.array):
                self.notes.append(f"{key}: not written as DICOM SEG: the segmentation is empty")
            else:
                seg_path = self.out(relative.rsplit(".", 1)[0] + "_SEG.dcm")
                request = ExportDicomRequest(
                    export_as="seg", out=str(seg_path), reference=str(ref),
                    reference_series_uid=self.config.series_uids.get(source),
                    names=tuple(f"{v}={n.replace(',', ' ')}" for v, n in sorted((names or {}).items())),
                    algorithm_type="AUTOMATIC", description=f"MedTorch {key} ({self.config.study})"[:64])
                ops.run(request, {"input": volume})
                self.outputs[f"{key}_seg"] = str(seg_path)
        else:
            folder = self.out(relative.rsplit(".", 1)[0] + "_dicom")
            request = ExportDicomRequest(
                export_as="series", out=str(folder), reference=str(ref) if is_dicom else None,
                reference_series_uid=self.config.series_uids.get(source) if is_dicom else None,
                patient_id=None if is_dicom else self.config.patient_id,
                modality="auto" if is_dicom else "CT" if self.config.modality == "CT" else
                "MR" if self.config.modality == "MR" else "auto",
                derivation=f"{key} of the MedTorch study {self.config.study}", description=f"MedTorch {key}")
            ops.run(request, {"input": volume})
            self.outputs[f"{key}_dicom"] = str(folder)
        return path

    def input_volume(self, params: dict[str, Any]) -> Volume:
        name = params.get("input", "fixed")
        if name not in self.volumes:
            raise MedTorchInputError(f"step input {name!r} is not available at this point of the study",
                                     f"use one of {', '.join(sorted(self.volumes))} as the step's input")
        return self.volumes[name]


Step = Callable[[StepContext, dict[str, Any], ProgressCallback, "CancelToken | None"], None]


def _step_register(ctx: StepContext, params: dict[str, Any], progress: ProgressCallback,
                   cancel: CancelToken | None) -> None:
    from medtorch.ops.registration import RegisterRequest

    try:
        import medtorch.registration  # noqa: F401
    except ImportError as exc:
        raise MedTorchInputError("this MedTorch has no registration engine", "disable the register step") from exc
    # the request's fields by name; every other key is a torch-engine option
    p = dict(params)
    named = {f.name for f in dataclasses.fields(RegisterRequest)} - {"device", "seed", "options"}
    request = ops.request_from_params(RegisterRequest, {
        **{k: p.pop(k) for k in list(p) if k in named}, "device": ctx.device, "seed": ctx.config.seed, "options": p})
    result = ops.run(request, {"fixed": ctx.volumes["fixed"], "moving": ctx.volumes["moving"]}, progress=progress,
                     cancel=cancel).native
    ctx.transform = result.transform
    linear = getattr(result, "displacement", None) is None
    path = ctx.out("register/transform.tfm" if linear else "register/transform.h5")
    result.write_transform(path)
    ctx.outputs["transform"] = str(path)
    ctx.write("moving_registered", result.resampled, "register/moving_registered.nrrd")
    ctx.values["register"] = {k: v for k, v in result.report.items() if isinstance(v, (int, float, str, bool))}
    if result.verdict is not None:
        ctx.verdicts["register"] = result.verdict.to_dict()


def _step_fuse(ctx: StepContext, params: dict[str, Any], progress: ProgressCallback,
               cancel: CancelToken | None) -> None:
    from medtorch.ops.fusion import FuseRequest

    p = dict(params)
    method = p.pop("method", "average")
    options: dict[str, Any] = {k: p.pop(k) for k in ("fixed_modality", "moving_modality", "normalization",
                                                      "ct_window", "color_map", "functional") if k in p}
    # the rest are the method's parameters; without a register step the two scans are taken
    # as they lie in physical space
    inputs = {"fixed": ctx.volumes["fixed"], "moving": ctx.volumes["moving"]}
    matrix = None
    if isinstance(ctx.transform, list):  # [A, d]: the field is applied first, then the affine
        matrix, inputs["displacement"] = ctx.transform
    elif ctx.transform is not None:
        matrix = ctx.transform
    request = ops.request_from_params(FuseRequest, {
        "method": method, "method_params": p, "assume_aligned": ctx.transform is None, "metrics": "3d",
        "device": ctx.device, "matrix": matrix, **options})
    res = ops.run(request, inputs, progress=progress, cancel=cancel).native
    ctx.write("fused", res.fused, f"fuse/fused_{method}.nrrd")
    if res.rgb is not None:
        ctx.write("fused_rgb", res.rgb, f"fuse/fused_{method}_rgb.nrrd")
    metrics = {k: float(v) for k, v in (res.metrics or {}).items() if isinstance(v, (int, float))}
    ctx.values["fuse"] = {"method": method, "overlap_fraction": float(res.overlap_fraction), **metrics}


def _step_denoise(ctx: StepContext, params: dict[str, Any], progress: ProgressCallback,
                  cancel: CancelToken | None) -> None:
    from medtorch.enhance.denoise import denoise

    # the core's keywords, not the denoise operation: a study may set any method option
    # (patch_radius, block, h, ...), which the operation does not take
    p = {k: v for k, v in params.items() if k != "input"}
    from medtorch.ops.enhance import DenoiseRequest

    method = p.pop("method", DenoiseRequest.method)  # the operation's default, as on the command line
    strength = p.pop("strength", None)
    out = denoise(ctx.input_volume(params), method, strength, progress=progress, cancel=cancel, **p)
    ctx.write("denoised", out, f"enhance/denoised_{method}.nrrd", str(params.get("input", "fixed")))
    ctx.values["denoise"] = {"method": method, "input": params.get("input", "fixed")}


def _step_superres(ctx: StepContext, params: dict[str, Any], progress: ProgressCallback,
                   cancel: CancelToken | None) -> None:
    from medtorch.enhance.superres import superres

    p = {k: v for k, v in params.items() if k != "input"}
    if "spacing" in p and isinstance(p["spacing"], str):
        p["spacing"] = [float(v) for v in p["spacing"].split(",")]
    out, _model = superres(ctx.input_volume(params), device=ctx.device, progress=progress, cancel=cancel, **p)
    ctx.write("superres", out, "enhance/superres.nrrd", str(params.get("input", "fixed")))
    ctx.values["superres"] = {"input": params.get("input", "fixed"), "output_spacing_mm": list(out.geometry.spacing),
                              **{k: v for k, v in p.items() if isinstance(v, (int, float, str))}}


def _step_segment(ctx: StepContext, params: dict[str, Any], progress: ProgressCallback,
                  cancel: CancelToken | None) -> None:
    p = {k: v for k, v in params.items() if k != "input"}
    method = p.pop("method", "threshold")
    vol = ctx.input_volume(params)
    names: dict[int, str] = {}  # label value -> segment name (a model's labels)
    if method == "threshold":
        from medtorch.ops.segmentation import ThresholdRequest

        roi = p.pop("roi", None)  # {center, size} in mm
        if roi is not None:
            p["roi"] = ops.Roi.from_size(roi["center"], roi["size"])
        out = ops.run(ops.request_from_params(ThresholdRequest, p), {"input": vol}, progress=progress, cancel=cancel)
        label, values = out.volumes["label"], {k: out.values[k] for k in ("volume_ml", "voxel_count")}
    elif method == "model":
        from medtorch.segment.inference import segment_with_model

        label, info = segment_with_model(p.pop("model"), [vol], device=ctx.device, progress=progress,
                                         cancel=cancel, **p)
        values = {k: v for k, v in dict(info).items() if isinstance(v, (int, float, str))}
        names = {int(k): str(v) for k, v in (info.get("labels") or {}).items()}
    elif method == "seeded":
        from medtorch.io import read_volume
        from medtorch.ops.segmentation import SeededRequest

        inputs = {"seeds": read_volume(p.pop("seeds"), kind="label")}
        channels = [vol, *(ctx.input_volume({"input": name}) for name in p.pop("extra_inputs", []))]
        inputs.update({f"channel{i}": v for i, v in enumerate(channels)})
        out = ops.run(ops.request_from_params(SeededRequest, p), inputs, progress=progress, cancel=cancel)
        label, values = out.volumes["label"], {}
        if out.values.get("verdict"):  # whether the result stayed with the seeds (medtorch.segment.seeded_verdict)
            ctx.verdicts["segment"] = out.values["verdict"]
    else:
        raise MedTorchInputError(f"unknown segmentation method {method!r}", "use threshold, seeded or model")
    if label.kind != "label":  # a segmentation is a label map, whatever the method returned
        label = Volume(label.array, label.geometry, "label")
    ctx.write("segmentation", label, "segment/segmentation.nrrd", str(params.get("input", "fixed")), names)
    counts = np.bincount(label.array.astype(np.int64).ravel())
    volumes_ml = {str(v): float(c) * label.geometry.voxel_volume_mm3 / 1000.0
                  for v, c in enumerate(counts) if v > 0 and c > 0}
    ctx.values["segment"] = {"method": method, **values, "volumes_ml": volumes_ml}


STEPS: dict[str, Step] = {
    "register": _step_register, "fuse": _step_fuse, "denoise": _step_denoise,
    "superres": _step_superres, "segment": _step_segment,
}


def versions() -> dict[str, str]:
    """Versions of MedTorch and the libraries a result depends on."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("medtorch", "torch", "SimpleITK", "numpy", "scipy", "monai", "pydicom"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return out


def _sha256(path: str) -> str:
    """SHA-256 of a file; of a folder (a DICOM series): of its files' names and contents, in name order."""
    h = hashlib.sha256()
    files = sorted(p for p in Path(path).iterdir() if p.is_file()) if Path(path).is_dir() else [Path(path)]
    for f in files:
        if Path(path).is_dir():
            h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


@dataclass
class RunRecord:
    status: str
    study: str
    output_dir: Path
    record: dict[str, Any]


def run_pipeline(config: StudyConfig, progress: ProgressCallback | None = None,
                 cancel: CancelToken | None = None, threads: ThreadPlan | None = None) -> RunRecord:
    """Run ``config``'s steps; write every output and ``run.json`` under ``config.output_dir``.

    A failing step stops the run: ``run.json`` then has ``status: "failed"`` and the error,
    outputs already written stay (each is complete: writes are atomic), and the error is
    raised again for the caller. The steps run with the runtime's thread policy (``threads``,
    default :func:`~medtorch.runtime.threads.plan_threads`), which ``run.json`` records.
    """
    plan = plan_threads() if threads is None else threads
    with applied(plan):
        return _run_pipeline(config, progress, cancel, plan)


def _run_pipeline(config: StudyConfig, progress: ProgressCallback | None, cancel: CancelToken | None,
                  plan: ThreadPlan) -> RunRecord:
    from medtorch.device import device_summary, seed_everything, select_device
    from medtorch.io import read_volume, write_json_atomic

    config.output_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc)
    seed = seed_everything(config.seed)
    device = select_device(None if config.device == "auto" else config.device)
    ctx = StepContext(config, str(device))
    timings: dict[str, float] = {}
    record: dict[str, Any] = {
        "study": config.study, "status": "running", "started": started.isoformat(), "seed": seed,
        "device": device_summary(device), "threads": plan.as_dict(), "versions": versions(),
        "config": config.to_dict(),
    }
    steps = config.enabled_steps()
    n = len(steps) + 1
    try:
        t0 = time.perf_counter()
        report(progress, cancel, 0.0, "reading inputs")
        for name, path in config.inputs.items():
            ctx.volumes[name] = read_volume(path, series_uid=config.series_uids.get(name))
        timings["read_inputs"] = round(time.perf_counter() - t0, 3)
        for i, name in enumerate(steps, start=1):
            t0 = time.perf_counter()
            STEPS[name](ctx, config.steps[name], SubProgress(progress, i / n, (i + 1) / n, name), cancel)
            timings[name] = round(time.perf_counter() - t0, 3)
        record["status"] = "done"
    except (MedTorchError, Exception) as exc:
        record["status"] = "cancelled" if isinstance(exc, Cancelled) else "failed"
        record["error"] = {"type": type(exc).__name__, "message": str(exc)}
        if not isinstance(exc, MedTorchError):
            record["error"]["traceback"] = traceback.format_exc()
        raise
    finally:
        record["timings_s"] = timings
        record["parameters"] = {name: config.steps[name] for name in steps}
        record["values"] = ctx.values
        if ctx.verdicts:
            from medtorch.verdict import worst

            record["verdicts"] = ctx.verdicts
            record["verdict"] = worst(v["status"] for v in ctx.verdicts.values())
        if ctx.notes:
            record["notes"] = ctx.notes
        record["outputs"] = {k: {"path": v, "sha256": _sha256(v)} for k, v in ctx.outputs.items() if Path(v).exists()}
        record["finished"] = datetime.now(timezone.utc).isoformat()
        write_json_atomic(config.output_dir / RUN_RECORD, record)
    report(progress, cancel, 1.0, "done")
    return RunRecord(record["status"], config.study, config.output_dir, record)


def read_run_record(output_dir: Path) -> dict[str, Any] | None:
    path = Path(output_dir) / RUN_RECORD
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
