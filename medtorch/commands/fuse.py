"""``medtorch fuse``: bring the moving volume onto the fixed grid and fuse the two.

Methods: average, max, pca, dwt, laplacian, gff, cnn (:mod:`medtorch.fusion.methods`).
Every source is brought to [0, 1] first (CT windowed, the rest percentile-normalised);
the fused volume is float32 in [0, 1]. With ``--color-map`` (a PET or SPECT moving
volume) ``--out`` receives the RGB colour fusion (uint8 vector volume) and
``--out-luminance`` the fused luminance.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from medtorch.commands import Command, add_format_argument, ct_window_arg, device_of, progress_bar, write_output
from medtorch.commands.costs import cost_help
from medtorch.errors import MedTorchInputError
from medtorch.ops import choices, default_of
from medtorch.ops.fusion import FuseRequest
from medtorch.progress import CancelToken


def _param(text: str) -> tuple[str, Any]:
    """argparse type for ``--param KEY=VALUE`` (VALUE parsed as JSON when it can be)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed: Any = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip().replace("-", "_"), parsed


def add_fusion_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``fuse`` and ``fuse-eval``: intensities and method parameters."""
    g = p.add_argument_group("intensities")
    g.add_argument("--fixed-modality", default=default_of(FuseRequest, "fixed_modality"),
                   help="auto (DICOM Modality, else other), CT, MR, PT, NM or OT")
    g.add_argument("--moving-modality", default=default_of(FuseRequest, "moving_modality"),
                   help="auto, CT, MR, PT (PET), NM (SPECT) or OT")
    g.add_argument("--ct-window", type=ct_window_arg, default=default_of(FuseRequest, "ct_window"),
                   help="CT window: a preset (brain, subdural, stroke, bone, lung, mediastinum, soft_tissue, liver) "
                        "or WIDTH,LEVEL in HU")
    g.add_argument("--normalization", default=default_of(FuseRequest, "normalization"),
                   choices=choices(FuseRequest, "normalization"),
                   help="auto: CT windowed, the rest 1st-99th percentile to [0, 1]; percentile: all percentile; "
                        "none: raw intensities (average only)")
    m = p.add_argument_group("method parameters")
    m.add_argument("--weight", type=float, default=None, help="average: share of the moving volume, 0..1 (0.5)")
    m.add_argument("--wavelet", default=None, help="dwt: wavelet name (haar, db2, sym4, ...; haar)")
    m.add_argument("--levels", type=int, default=None, help="dwt / laplacian: decomposition levels (3 / 4)")
    m.add_argument("--iterations", type=int, default=None,
                   help="cnn: training iterations on the pair (150; 0 with --checkpoint)")
    m.add_argument("--seed", type=int, default=None, help="cnn: random seed (0); recorded with the result")
    m.add_argument("--checkpoint", default=None, help="cnn: load this checkpoint (.pt) instead of training from scratch")
    m.add_argument("--param", type=_param, action="append", default=[], metavar="KEY=VALUE",
                   help="any other method parameter, e.g. --param r1=30 --param subsample=1 (repeatable)")


def method_params(args: argparse.Namespace, method: str) -> dict[str, Any]:
    """The method parameters given on the command line (only those the method takes)."""
    from medtorch.fusion.methods import METHODS

    accepted = METHODS[method].params if method in METHODS else {}
    flags = {"weight": args.weight, "wavelet": args.wavelet, "levels": args.levels, "iterations": args.iterations,
             "seed": args.seed, "checkpoint": args.checkpoint}
    out: dict[str, Any] = {}
    for k, v in flags.items():
        if v is None:
            continue
        if k not in accepted:
            raise MedTorchInputError(f"--{k} does not apply to the {method} method",
                                     "leave it out, or choose a method that takes it")
        out[k] = v
    for k, v in args.param:
        out[k] = v
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fixed", required=True, help="fixed volume (file or DICOM folder): the output has its grid")
    p.add_argument("--moving", required=True, help="moving volume (file or DICOM folder)")
    p.add_argument("--transform", default=None,
                   help="transform, ITK convention (fixed point -> moving point): .tfm/.h5 or a displacement field")
    p.add_argument("--assume-aligned", action="store_true",
                   help="without --transform, resample a moving volume on another grid as it lies in physical space")
    p.add_argument("--method", default=default_of(FuseRequest, "method"), choices=choices(FuseRequest, "method"),
                   help="fusion method. " + cost_help("fuse"))
    p.add_argument("--out", default=None,
                   help="fused volume (.nrrd, .nii.gz, .mha): float32 in [0, 1]; with --color-map the RGB fusion")
    p.add_argument("--out-luminance", default=None, help="with --color-map: the fused luminance (float32 in [0, 1])")
    p.add_argument("--out-resampled", default=None, help="also write the moving volume resampled onto the fixed grid")
    p.add_argument("--metrics", default=None,
                   help="write run figures and fusion metrics (EN, SD, SF, AG, MI, SSIM_sum: SSIM summed over both sources, QABF, VIF) as JSON")
    p.add_argument("--metrics-mode", default="3d", choices=["3d", "slices"],
                   help="metrics on the volume (3d) or averaged over axial slices (slices)")
    p.add_argument("--mi-unit", default=default_of(FuseRequest, "mi_unit"), choices=choices(FuseRequest, "mi_unit"),
                   help="unit of the MI metric")
    p.add_argument("--color-map", default=default_of(FuseRequest, "color_map"), choices=choices(FuseRequest, "color_map"),
                   help="colour fusion for a functional (PET/SPECT) volume: colour map, fuse the luminance (YCbCr)")
    p.add_argument("--functional", default=default_of(FuseRequest, "functional"),
                   choices=choices(FuseRequest, "functional"),
                   help="which volume is the PET/SPECT (default: from the modalities)")
    p.add_argument("--metric-set", default=default_of(FuseRequest, "metric_set"),
                   choices=choices(FuseRequest, "metric_set"),
                   help="metric definitions: medtorch (MedTorch's own), or cddfuse (the CDDFuse/VIFB evaluator's, as "
                        "published tables use: 8-bit grey inputs, MI in nats, SSIM_sum: SSIM summed over both sources)")
    p.add_argument("--save-checkpoint", default=None, help="cnn: write the trained network here (.pt)")
    add_format_argument(p, "each of --out, --out-luminance and --out-resampled")
    add_fusion_options(p)


def run(args: argparse.Namespace, cancel: CancelToken) -> int:
    from medtorch import __version__, ops
    from medtorch.io import read_volume, write_json_atomic
    from medtorch.transform_io import read_transform
    from medtorch.volume import Volume

    if not args.out and not args.metrics and not args.out_resampled and not args.out_luminance:
        raise MedTorchInputError("no output was asked for", "give --out (and/or --metrics, --out-resampled)")
    if args.out_luminance and not args.color_map:
        raise MedTorchInputError("--out-luminance is for colour fusion", "add --color-map, or use --out")
    params = method_params(args, args.method)
    if args.save_checkpoint:
        if args.method != "cnn":
            raise MedTorchInputError("--save-checkpoint is for the cnn method", "leave it out, or use --method cnn")
        params["save_checkpoint"] = args.save_checkpoint
    start = time.perf_counter()
    # a 2D pair (PNG, JPEG, TIFF, BMP, or a 2D NIfTI/NRRD) is fused as 2D images
    inputs = {"fixed": read_volume(args.fixed, allow_2d=True), "moving": read_volume(args.moving, allow_2d=True)}
    transform = read_transform(args.transform) if args.transform else None
    matrix = None
    if isinstance(transform, Volume):
        inputs["displacement"] = transform
    elif transform is not None:
        matrix = tuple(tuple(float(v) for v in row) for row in transform)
    request = FuseRequest(method=args.method, method_params=params, fixed_modality=args.fixed_modality,
                          moving_modality=args.moving_modality, normalization=args.normalization,
                          ct_window=args.ct_window, color_map=args.color_map, functional=args.functional,
                          assume_aligned=args.assume_aligned, metrics=args.metrics_mode if args.metrics else None,
                          mi_unit=args.mi_unit, metric_set=args.metric_set, device=device_of(args), matrix=matrix)
    res = ops.run(request, inputs, progress=progress_bar(args), cancel=cancel).native
    if args.output_format == "dicom" and args.out and res.rgb is not None:
        raise MedTorchInputError("a colour fusion cannot be written as a grey-scale DICOM series",
                                 "write the fused luminance with --out-luminance FOLDER instead of --out, or leave "
                                 "out --format dicom")
    derivation = f"{args.moving} fused into {args.fixed} by MedTorch ({args.method})"
    if args.out:
        write_output(args, res.rgb if res.rgb is not None else res.fused, args.out, args.fixed, args.fixed_series_uid,
                     derivation + ", values 0 to 1", f"Fused ({args.method})")
    if args.out_luminance:
        write_output(args, res.fused, args.out_luminance, args.fixed, args.fixed_series_uid,
                     derivation + ", fused luminance 0 to 1", f"Fused luminance ({args.method})")
    if args.out_resampled and res.moving_resampled is not None:
        write_output(args, res.moving_resampled, args.out_resampled, args.fixed, args.fixed_series_uid,
                     f"{args.moving} resampled onto {args.fixed} by MedTorch", "Resampled onto the fixed image")
    info = res.info
    figures: dict[str, Any] = {
        "method": args.method, "params": info["params"], "normalization": args.normalization,
        "fixed_modality": info["fixed_modality"], "moving_modality": info["moving_modality"],
        "fixed_intensity": info["fixed_intensity"], "moving_intensity": info["moving_intensity"],
        "overlap_fraction": res.overlap_fraction, "output_range": info["output_range"], "device": info["device"],
        "seconds": round(time.perf_counter() - start, 3), "timings_s": info["seconds"], "medtorch": __version__,
    }
    if "weight" in info["params"]:
        figures["weight"] = info["params"]["weight"]
    if "seed" in info["params"]:
        figures["seed"] = info["params"]["seed"]
    if res.rgb is not None:
        figures.update({"color_map": info["color_map"], "functional": info["functional"],
                        "rgb_range": info["rgb_range"], "metrics_on": "luminance (Y) of the colour fusion"})
    if res.metrics is not None:
        figures.update({"metrics": res.metrics, "metrics_mode": args.metrics_mode, "mi_unit": args.mi_unit,
                        "metrics_scale": "8-bit (0..255) as the fusion evaluators assume"})
    if args.metrics:
        write_json_atomic(args.metrics, figures)
    if not args.quiet:
        line = f"Fused ({args.method}); the moving volume covers {res.overlap_fraction:.1%} of the fixed grid"
        if res.metrics:
            line += "; " + ", ".join(f"{k} {v:.3f}" for k, v in res.metrics.items() if k != "slices_scored")
        print(line)
    return 0


COMMANDS = [Command(
    "fuse", "resample the moving volume onto the fixed grid and fuse the two into one volume",
    "  medtorch fuse --fixed t1.nii.gz --moving ct.nrrd --transform reg.tfm --method gff --out fused.nrrd "
    "--metrics m.json\n"
    "  medtorch fuse --fixed t1.nrrd --moving t2.nrrd --method dwt --wavelet db2 --levels 3 --out fused.nrrd\n"
    "  medtorch fuse --fixed mri.nrrd --moving pet.nrrd --moving-modality PT --method laplacian "
    "--color-map hot --out fused_rgb.nrrd\n"
    "  medtorch fuse --fixed ct.nii.gz --moving t1.nii.gz --fixed-modality CT --ct-window brain --method cnn "
    "--iterations 100 --seed 3 --save-checkpoint net.pt --out fused.nrrd\n"
    "  medtorch fuse --fixed t1.nrrd --moving t2.nrrd --transform reg.tfm --weight 0.3 --out fused.nrrd",
    add_arguments, run)]
