"""The operations layer: the one door through which front ends reach the core.

Every operation is a typed request (a frozen dataclass: its parameters, their ``Literal``
choices and defaults, defined once) and a run function, listed in :data:`OPERATIONS`. The
command line, the YAML pipeline, the demo, the Slicer modules (through
:class:`~medtorch.slicer.jobs.LogicJob`) and background jobs
(:mod:`medtorch.runtime`, whose worker runs one operation per job) all call :func:`run`::

    from medtorch import ops
    from medtorch.ops.registration import RegisterRequest

    result = ops.run(RegisterRequest(mode="affine", seed=1), {"fixed": t1, "moving": ct})
    result = ops.run("register", {"fixed": t1, "moving": ct}, {"mode": "affine", "seed": 1})

Importing this package imports no algorithm (nor torch): run functions import theirs when
they run. A new operation is a request and a run function in ``medtorch/ops/<area>.py`` and
a row in :data:`OPERATIONS` (see ``docs/architecture.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medtorch.errors import MedTorchInputError
from medtorch.ops import enhance, export, fusion, models, registration, segmentation
from medtorch.ops.base import (
    Operation,
    OperationResult,
    Request,
    Roi,
    choices,
    default_of,
    normalized,
    request_from_params,
    request_to_params,
)
from medtorch.progress import CancelToken, ProgressCallback
from medtorch.volume import Volume

__all__ = ["OPERATIONS", "Operation", "OperationResult", "Request", "Roi", "choices", "default_of", "operation",
           "request_for", "request_from_params", "request_to_params", "run"]

_TWO = ("fixed", "moving")

#: Every operation, by name.
OPERATIONS: dict[str, Operation] = {op.name: op for op in (
    Operation("register", registration.RegisterRequest, registration.run_register,
              "register a moving volume to a fixed one (rigid, affine, deformable)", _TWO, ("fixed_mask", "moving_mask")),
    Operation("threshold", segmentation.ThresholdRequest, segmentation.run_threshold,
              "threshold plus largest connected component inside an optional box", ("input",)),
    Operation("seeded", segmentation.SeededRequest, segmentation.run_seeded,
              "seeded segmentation of one or more co-registered volumes", ("channel0", "seeds"), ("channel<n>",)),
    Operation("seg_metrics", segmentation.SegMetricsRequest, segmentation.run_seg_metrics,
              "score a segmentation against a reference", ("pred", "ref")),
    Operation("segment_model", segmentation.ModelRequest, segmentation.run_segment_model,
              "segment with a trained model (MONAI bundle, TorchScript, nnU-Net)", ("channel0",), ("channel<n>",)),
    Operation("detect_nodules", segmentation.NodulesRequest, segmentation.run_detect_nodules,
              "detect lung nodules in a chest CT", ("input",)),
    Operation("blend", fusion.BlendRequest, fusion.run_blend,
              "resample the moving volume onto the fixed grid and blend the two", _TWO, ("displacement",)),
    Operation("fuse", fusion.FuseRequest, fusion.run_fuse,
              "fuse the moving volume into the fixed grid with a fusion method", _TWO, ("displacement",)),
    Operation("fuse_compare", fusion.FuseCompareRequest, fusion.run_fuse_compare,
              "fuse with several methods, score each and test it against a baseline", _TWO, ("displacement",)),
    Operation("fusion_metrics", fusion.FusionMetricsRequest, fusion.run_fusion_metrics,
              "fusion metrics of a fused volume against its two sources", ("a", "b", "fused")),
    Operation("fuse_eval", fusion.FuseEvalRequest, fusion.run_fuse_eval,
              "evaluate fusion methods over many pairs into a report folder"),
    Operation("denoise", enhance.DenoiseRequest, enhance.run_denoise, "denoise a volume", ("input",)),
    Operation("superres", enhance.SuperresRequest, enhance.run_superres,
              "super-resolve thick slices or upsample isotropically", ("input",)),
    Operation("enhance", enhance.EnhanceRequest, enhance.run_enhance,
              "N4, histogram matching, CLAHE, unsharp masking, CT window", ("input",), ("reference",)),
    Operation("models_list", models.ModelsListRequest, models.run_models_list,
              "list the installed models (and the catalog of downloadable ones)"),
    Operation("models_import", models.ModelsImportRequest, models.run_models_import,
              "install a model pack after checking its hashes and its license"),
    Operation("models_download", models.ModelsDownloadRequest, models.run_models_download,
              "download a catalog model after the user agrees, check its published hash and install it"),
    Operation("models_verify", models.ModelsVerifyRequest, models.run_models_verify,
              "check an installed model against its pack's hashes"),
    Operation("models_remove", models.ModelsRemoveRequest, models.run_models_remove, "remove an installed model"),
    Operation("models_pack", models.ModelsPackRequest, models.run_models_pack,
              "make a model pack from a medtorch train-seg output or a MONAI bundle folder"),
    Operation("export_dicom", export.ExportDicomRequest, export.run_export_dicom,
              "write a volume as DICOM (SEG, RTSTRUCT or a derived series), checked after writing", ("input",)),
)}


def operation(name: str) -> Operation:
    """The operation ``name`` (a clear error for an unknown name)."""
    op = OPERATIONS.get(name)
    if op is None:
        raise MedTorchInputError(f"unknown operation {name!r}", "use one of " + ", ".join(sorted(OPERATIONS)))
    return op


def request_for(name_or_request: str | Request, params: Mapping[str, Any] | None = None) -> Request:
    """A checked request: ``name_or_request`` itself (normalised, see :func:`~medtorch.ops.base.normalized`)
    or the named operation's request built from ``params``."""
    if isinstance(name_or_request, str):
        return request_from_params(operation(name_or_request).request, dict(params or {}))
    if params is not None:
        raise TypeError("give a request, or an operation name and its params, not both")
    operation(getattr(name_or_request, "operation", type(name_or_request).__name__))
    return normalized(name_or_request)


def run(name_or_request: str | Request, inputs: Mapping[str, Volume],
        request_or_params: Request | Mapping[str, Any] | None = None, progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None) -> OperationResult:
    """Run an operation in this process (blocking); inputs are not modified.

    Either ``run(request, inputs)``, or ``run(name, inputs, params)`` with a plain mapping
    that goes through :func:`request_from_params` (``run(name, inputs, request)`` works too).
    """
    if isinstance(request_or_params, Request):
        if isinstance(name_or_request, str) and name_or_request != request_or_params.operation:
            raise MedTorchInputError(f"a {request_or_params.operation} request was given to the {name_or_request} "
                                     "operation", f"give a {operation(name_or_request).request.__name__}")
        request = request_for(request_or_params)
    else:
        request = request_for(name_or_request, request_or_params)
    return operation(request.operation).run(request, dict(inputs), progress, cancel)
