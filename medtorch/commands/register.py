"""``medtorch register``: register a moving volume to a fixed one and write the transform."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from medtorch.commands import Command, add_format_argument, device_of, progress_bar, write_output
from medtorch.jsonvalue import plain
from medtorch.errors import MedTorchInputError
from medtorch.ops import choices, default_of
from medtorch.ops.registration import RegisterRequest
from medtorch.progress import CancelToken

#: Exit status of ``medtorch register`` when it finished but the result failed its verdict
#: (the outputs are written unless ``--strict``; see :mod:`medtorch.cli` for the others).
EXIT_VERDICT = 3


def _option(text: str) -> tuple[str, object]:
    """argparse type: ``key=value`` with a JSON value (or a plain string)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        parsed: object = json.loads(value)
    except ValueError:
        parsed = value
    return key.strip(), parsed


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fixed", required=True, help="fixed volume (file or DICOM folder): the reference")
    p.add_argument("--moving", required=True, help="moving volume (file or DICOM folder)")
    p.add_argument("--out-transform", required=True,
                   help="transform, ITK convention (fixed point -> moving point): .tfm/.h5/.txt/.mat for rigid and "
                        "affine; .h5 (composite: affine + displacement field) or a displacement field image "
                        "(.nii.gz/.nrrd/.mha, affine folded in) for deformable")
    p.add_argument("--out-volume", default=None, help="the moving volume resampled onto the fixed grid (a volume file, "
                   "or with --format dicom a folder for a DICOM series in the fixed image's patient and study)")
    add_format_argument(p, "--out-volume")
    p.add_argument("--mode", default=default_of(RegisterRequest, "mode"), choices=choices(RegisterRequest, "mode"),
                   help="transform model")
    p.add_argument("--metric", default=default_of(RegisterRequest, "metric"), choices=choices(RegisterRequest, "metric"),
                   help="similarity: mi/mind across modalities, lncc/ncc/mse within one")
    p.add_argument("--engine", default=default_of(RegisterRequest, "engine"), choices=choices(RegisterRequest, "engine"),
                   help="torch (MedTorch), sitk (SimpleITK Mattes MI), elastix (itk-elastix) or learned (a trained "
                        "network, --model; always deformable)")
    p.add_argument("--model", default=None,
                   help="--engine learned: the registration model pack (.zip) to use, e.g. one written by "
                        "medtorch train-reg (its SHA-256 manifest is checked before it is loaded)")
    p.add_argument("--refine", action="store_true",
                   help="--engine learned: refine the network's field with the torch engine's deformable stage "
                        "(instance optimisation: slower, more accurate)")
    p.add_argument("--fixed-mask", default=None, help="binary volume: only fixed voxels inside count")
    p.add_argument("--moving-mask", default=None, help="binary volume: only moving voxels inside count")
    p.add_argument("--seed", type=int, default=default_of(RegisterRequest, "seed"),
                   help="random seed of the sampling (recorded in the report)")
    p.add_argument("--init", default=default_of(RegisterRequest, "init"), choices=choices(RegisterRequest, "init"),
                   help="initialisation (auto: landmarks if given, else a rotation search about the centres of mass)")
    p.add_argument("--initial-transform", default=None, help="linear transform file (ITK convention) to start from")
    p.add_argument("--fixed-landmarks", default=None,
                   help="fixed points (.mrk.json, .fcsv, or .csv/.txt with x,y,z LPS per line); pairs with --moving-landmarks")
    p.add_argument("--moving-landmarks", default=None, help="moving points, in the same order as the fixed ones")
    p.add_argument("--report", default=None,
                   help="JSON quality report (default: next to the transform, <name>.json)")
    p.add_argument("--option", action="append", type=_option, default=[], metavar="KEY=VALUE",
                   help="torch-engine option, e.g. --option samples=20000 (value parsed as JSON); repeatable")
    p.add_argument("--strict", action="store_true",
                   help="a result that fails its verdict writes nothing (exit code 3); without it the outputs are "
                        "written, with <transform>.verdict.json beside them, and the exit code is still 3")
    p.add_argument("--verdict-option", action="append", type=_option, default=[], metavar="KEY=VALUE",
                   help="a threshold or setting of the verdict, e.g. --verdict-option scale_max=1.3 "
                        "(see medtorch.registration.verdict.VerdictOptions); repeatable")
    p.add_argument("--no-verdict", action="store_true",
                   help="skip the verdict (no landmark-free check of the result; the input policies still apply)")


def _beside_transform(args: argparse.Namespace, suffix: str) -> Path:
    """``<transform name without its extension><suffix>`` beside the transform."""
    t = Path(args.out_transform)
    name = t.name
    for ext in (".nii.gz", ".seg.nrrd"):
        if name.lower().endswith(ext):
            return t.with_name(name[: -len(ext)] + suffix)
    return t.with_name(t.stem + suffix) if t.suffix else t.with_name(name + suffix)


def _report_path(args: argparse.Namespace) -> Path:
    return Path(args.report) if args.report else _beside_transform(args, ".json")


def verdict_path(args: argparse.Namespace) -> Path:
    """Where the verdict goes: ``reg.tfm`` -> ``reg.verdict.json``."""
    return _beside_transform(args, ".verdict.json")


def _check_outputs(args: argparse.Namespace) -> None:
    from medtorch.io import VOLUME_EXTENSIONS, check_writable
    from medtorch.registration.result import H5_EXTENSIONS
    from medtorch.transform_io import LINEAR_EXTENSIONS

    name = Path(args.out_transform).name.lower()
    if args.mode == "deformable" or args.engine == "learned":
        ok = name.endswith(H5_EXTENSIONS) or name.endswith(VOLUME_EXTENSIONS)
        fix = "use .h5 (composite transform) or .nii.gz/.nrrd/.mha (displacement field) for --mode deformable"
    else:
        ok = name.endswith(LINEAR_EXTENSIONS)
        fix = "use .tfm, .txt, .h5 or .mat for a rigid or affine transform"
    if not ok:
        mode = "deformable" if args.engine == "learned" else args.mode
        raise MedTorchInputError(f"--out-transform {args.out_transform} has an unsupported extension for {mode}", fix)
    if args.engine == "learned" and not args.model:
        raise MedTorchInputError("--engine learned needs --model", "give the model pack: --model model.zip "
                                 "(train one with medtorch train-reg)")
    if (args.model or args.refine) and args.engine != "learned":
        raise MedTorchInputError("--model and --refine are options of the learned engine", "add --engine learned")
    if not args.no_verdict:  # the verdict's file is named from the transform's: it must not be another file
        vpath = verdict_path(args).expanduser().resolve()
        for flag, other in (("--report", _report_path(args)), ("--fixed", args.fixed), ("--moving", args.moving)):
            if Path(other).expanduser().resolve() == vpath:
                raise MedTorchInputError(f"the verdict would be written to {verdict_path(args)}, which is {flag} "
                                         f"{other}", "give --out-transform (or that option) another name")
    for path in (args.out_transform, args.out_volume, _report_path(args), verdict_path(args)):
        if path:
            check_writable(path)


def _rows(array: Any) -> Any:
    """An (N, k) array as nested tuples (what a request holds), or None."""
    return None if array is None else tuple(tuple(float(v) for v in row) for row in array)


def run(args: argparse.Namespace, cancel: CancelToken) -> int:
    from medtorch import ops
    from medtorch.io import read_volume, write_json_atomic
    from medtorch.registration.landmarks import read_landmarks

    _check_outputs(args)  # before the long part: a bad output path fails at once
    start = time.perf_counter()
    inputs = {"fixed": read_volume(args.fixed), "moving": read_volume(args.moving)}
    if args.fixed_mask:
        inputs["fixed_mask"] = read_volume(args.fixed_mask, kind="label")
    if args.moving_mask:
        inputs["moving_mask"] = read_volume(args.moving_mask, kind="label")
    f_lm = read_landmarks(args.fixed_landmarks) if args.fixed_landmarks else None
    m_lm = read_landmarks(args.moving_landmarks) if args.moving_landmarks else None
    initial = None
    if args.initial_transform:
        from medtorch.transform_io import read_transform

        initial = read_transform(args.initial_transform)
        if not hasattr(initial, "shape") or getattr(initial, "shape", None) != (4, 4):
            raise MedTorchInputError("--initial-transform must be a linear transform", "give a .tfm/.h5/.txt/.mat file")
    request = RegisterRequest(mode=args.mode, metric=args.metric, engine=args.engine, init=args.init,
                              initial_transform=_rows(initial), fixed_landmarks=_rows(f_lm),
                              moving_landmarks=_rows(m_lm), device=device_of(args), seed=args.seed,
                              options=dict(args.option), resample_output=bool(args.out_volume),
                              verdict=not args.no_verdict, verdict_options=dict(args.verdict_option),
                              model=args.model, refine=bool(args.refine))
    res = ops.run(request, inputs, progress=progress_bar(args), cancel=cancel).native
    verdict = res.verdict
    if verdict is not None and verdict.status != "pass":
        # one line on stderr (also with --quiet: it is about the result, not progress)
        where = "nothing was written (--strict)" if verdict.failed and args.strict else \
            f"details in {verdict_path(args)}"
        tail = "; do not use the transform without checking it" if verdict.failed and not args.strict else ""
        sys.stderr.write(f"medtorch register: {'error' if verdict.failed else 'warning'}: {verdict.summary()}; "
                         f"{where}{tail}\n")
    if verdict is not None and verdict.failed and args.strict:
        return EXIT_VERDICT
    res.write_transform(args.out_transform)
    if args.out_volume and res.resampled is not None:
        write_output(args, res.resampled, args.out_volume, args.fixed, args.fixed_series_uid,
                     f"{args.moving} registered to {args.fixed} by MedTorch ({args.engine} {args.mode}) and resampled "
                     "onto the fixed grid", "Registered (resampled onto the fixed image)")
    report = dict(res.report)
    report.update({"fixed": str(args.fixed), "moving": str(args.moving), "transform": str(args.out_transform),
                   "affine_lps": plain(res.affine), "total_seconds": round(time.perf_counter() - start, 3),
                   "convention": "ITK: fixed point -> moving point, p_moving = A(p + d(p)), LPS mm"})
    if verdict is not None:
        report["verdict"] = verdict.to_dict()
        write_json_atomic(verdict_path(args), verdict.to_dict())
    write_json_atomic(_report_path(args), report)
    if verdict is not None and verdict.failed:
        return EXIT_VERDICT
    if not args.quiet:
        line = (f"Registered ({args.engine} {report['mode']}, {report['metric']}) in {report['runtime_s']:.2f} s on "
                f"{report['device']}: transform in {args.out_transform}")
        if "tre_mean_mm" in report:
            line += f"; landmark TRE {report['tre_mean_mm']:.3f} mm (95th percentile {report['tre_p95_mm']:.3f} mm)"
        if report["mode"] == "deformable":
            line += f"; folding {report['folding_percent']:.4f} %"
        if verdict is not None:
            line += f"; verdict {verdict.status}"
        print(line)
    return 0


COMMANDS = [Command(
    "register", "register a moving volume to a fixed one (rigid, affine or deformable) and write the transform",
    "  medtorch register --fixed t1.nii.gz --moving ct.nrrd --out-transform reg.tfm --out-volume ct_on_t1.nrrd\n"
    "  medtorch register --fixed t1.nii.gz --moving t2.nii.gz --mode deformable --out-transform reg.h5\n"
    "  medtorch register --fixed t1.nrrd --moving ct_dicom/ --engine elastix --mode affine --out-transform reg.tfm\n"
    "  medtorch register --fixed a.nrrd --moving b.nrrd --out-transform reg.tfm --fixed-landmarks f.mrk.json "
    "--moving-landmarks m.mrk.json\n"
    "  medtorch register --fixed t1.nii.gz --moving t2.nii.gz --engine learned --model reg_model.zip --refine "
    "--out-transform reg.h5\n"
    "  medtorch register --fixed t1.nrrd --moving t2.nrrd --out-transform reg.tfm --strict   # refuse an untrustworthy "
    "result\n\n"
    "Every result gets a verdict (pass/warn/fail, with its checks) in <transform>.verdict.json and the report; warn "
    "and fail are named on stderr. Exit codes: 0 done (pass or warn), 3 done but the verdict failed (the outputs "
    "are written unless --strict), 2 bad input, 130 cancelled, 1 internal error.", add_arguments, run)]
