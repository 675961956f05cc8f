"""The ``medtorch`` command line (also ``python -m medtorch``).

Every command shows progress on stderr (``--quiet`` hides it), can be stopped with
Ctrl-C (outputs are written atomically, so nothing half-written is left), and reports a
user error as one clear message, not a traceback.

Exit codes: 0 success, 2 bad input or usage, 130 cancelled, 1 unexpected error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from medtorch import __version__
from medtorch.errors import Cancelled, MedTorchError, MedTorchInputError
from medtorch.progress import CancelToken, ConsoleProgressBar

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130

log = logging.getLogger("medtorch")


def _vec3(text: str) -> tuple[float, float, float]:
    parts = [p for p in text.replace(" ", "").split(",") if p]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {text!r}")
    try:
        return (float(parts[0]), float(parts[1]), float(parts[2]))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not numbers: {text!r}") from exc


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def _common(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("general options")
    g.add_argument("--device", default=None, choices=["auto", "cpu", "cuda", "mps"],
                   help="compute device (default: $MEDTORCH_DEVICE, else auto: cuda, then mps, then cpu)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar, only errors")
    g.add_argument("-v", "--verbose", action="store_true", help="log details, and show tracebacks of internal errors")


def _add(sub: Any, name: str, help_text: str, examples: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text, epilog="examples:\n" + examples,
                       formatter_class=_Formatter)
    _common(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medtorch",
        description="MedTorch: registration, fusion, enhancement and tumour segmentation on torch "
                    "(the command line of the MedTorch 3D Slicer extension).",
        epilog="Run 'medtorch COMMAND --help' for a command's options and examples.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"medtorch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = _add(sub, "demo", "run the whole pipeline on the bundled sample data and write a report",
             "  medtorch demo\n  medtorch demo --out /tmp/medtorch-demo --seed 1")
    p.add_argument("--out", default="medtorch-demo", help="output folder (created if needed)")
    p.add_argument("--seed", type=int, default=0, help="random seed (recorded with the results)")

    p = _add(sub, "fuse", "resample the moving volume onto the fixed grid and fuse the two into one volume",
             "  medtorch fuse --fixed t1.nii.gz --moving ct.nrrd --method average --out fused.nrrd\n"
             "  medtorch fuse --fixed t1.nrrd --moving t2.nrrd --transform reg.tfm --weight 0.3 --out fused.nrrd "
             "--metrics fused.json")
    p.add_argument("--fixed", required=True, help="fixed volume (file or DICOM folder): the output has its grid")
    p.add_argument("--moving", required=True, help="moving volume (file or DICOM folder)")
    p.add_argument("--transform", default=None,
                   help="transform, ITK convention (fixed point -> moving point): .tfm/.h5 or a displacement field")
    p.add_argument("--method", default="average", choices=["average"], help="fusion method")
    p.add_argument("--weight", type=float, default=0.5, help="share of the moving volume, 0..1 (average)")
    p.add_argument("--normalization", default="percentile", choices=["percentile", "none"],
                   help="percentile: each input's 1st-99th percentile to [0, 1] (output in [0, 1]); none: raw")
    p.add_argument("--out", default=None, help="fused volume (.nrrd, .nii.gz, .mha)")
    p.add_argument("--out-resampled", default=None, help="also write the moving volume resampled onto the fixed grid")
    p.add_argument("--metrics", default=None, help="write run figures as JSON")
    p.add_argument("--color-map", default=None, help="colour map for a functional (PET/SPECT) moving volume (not yet available)")

    p = _add(sub, "denoise", "denoise a volume into a new volume",
             "  medtorch denoise --in t1.nii.gz --out t1_smooth.nrrd --method gaussian --strength 1.5\n"
             "  medtorch denoise --in ct.nrrd --out ct_ad.nrrd --method anisotropic --strength 1 --iterations 10")
    p.add_argument("--in", dest="input", required=True, help="input volume (file or DICOM folder)")
    p.add_argument("--out", required=True, help="output volume (.nrrd, .nii.gz, .mha)")
    p.add_argument("--method", default="gaussian", choices=["gaussian", "anisotropic"],
                   help="gaussian: Gaussian smoothing; anisotropic: curvature anisotropic diffusion (edge-preserving)")
    p.add_argument("--strength", type=float, default=None,
                   help="gaussian: sigma in mm (default 1.0); anisotropic: conductance (default 1.0)")
    p.add_argument("--iterations", type=int, default=5, help="anisotropic: number of diffusion steps")
    p.add_argument("--seed", type=int, default=0, help="random seed (recorded with the result)")

    p = _add(sub, "threshold-seg", "segment by threshold plus largest connected component inside an optional box",
             "  medtorch threshold-seg --in t1c.nii.gz --lower 300 --out tumor.seg.nrrd\n"
             "  medtorch threshold-seg --in ct.nrrd --lower 40 --upper 90 --roi-center 10,-20,35 --roi-size 40,40,30 "
             "--out lesion.nrrd")
    p.add_argument("--in", dest="input", required=True, help="input volume (file or DICOM folder)")
    p.add_argument("--out", required=True, help="label map to write (1 = segment)")
    p.add_argument("--lower", type=float, required=True, help="lowest intensity kept (volume units, HU for CT)")
    p.add_argument("--upper", type=float, default=float("inf"), help="highest intensity kept")
    p.add_argument("--roi-center", type=_vec3, default=None, help="box centre x,y,z in LPS mm")
    p.add_argument("--roi-size", type=_vec3, default=None, help="box size x,y,z in mm (with --roi-center)")
    p.add_argument("--all-components", action="store_true", help="keep every component, not only the largest")

    p = _add(sub, "info", "show a volume's geometry and metadata, or list the DICOM series in a folder",
             "  medtorch info scan.nii.gz\n  medtorch info /data/dicom_folder")
    p.add_argument("path", help="volume file or DICOM folder")
    p.add_argument("--series-uid", default=None, help="for a DICOM folder: the series to describe")
    return parser


# -- commands ----------------------------------------------------------------------------------


def _progress(args: argparse.Namespace) -> ConsoleProgressBar:
    return ConsoleProgressBar(quiet=args.quiet)


def _device(args: argparse.Namespace) -> str:
    from medtorch.device import select_device

    return str(select_device(args.device))


def cmd_demo(args: argparse.Namespace, cancel: CancelToken) -> int:
    from medtorch.demo import run_demo

    summary = run_demo(Path(args.out), progress=_progress(args), cancel=cancel, seed=args.seed)
    report = summary.get("report") or str(Path(args.out) / "report.html")
    print(f"Demo finished: report at {report}")
    return EXIT_OK


def cmd_fuse(args: argparse.Namespace, cancel: CancelToken) -> int:
    from medtorch.fusion.blend import resample_and_blend
    from medtorch.io import read_volume, write_text_atomic, write_volume
    from medtorch.transform_io import read_transform

    if args.color_map:
        raise MedTorchInputError("colour fusion (--color-map) is not available yet", "leave --color-map out")
    if not args.out and not args.metrics and not args.out_resampled:
        raise MedTorchInputError("no output was asked for", "give --out (and/or --metrics, --out-resampled)")
    start = time.perf_counter()
    fixed, moving = read_volume(args.fixed), read_volume(args.moving)
    transform = read_transform(args.transform) if args.transform else None
    res = resample_and_blend(fixed, moving, transform, weight=args.weight, normalization=args.normalization,
                             device=_device(args), progress=_progress(args), cancel=cancel)
    if args.out:
        write_volume(res.fused, args.out)
    if args.out_resampled:
        write_volume(res.resampled_moving, args.out_resampled)
    figures = {"method": args.method, "weight": args.weight, "normalization": args.normalization,
               "overlap_fraction": res.overlap_fraction, "output_range": res.fused.metadata.get("output_range"),
               "seconds": round(time.perf_counter() - start, 3), "medtorch": __version__}
    if args.metrics:
        write_text_atomic(args.metrics, json.dumps(figures, indent=2))
    if not args.quiet:
        print(f"Fused ({args.method}, weight {args.weight}); moving volume covers {res.overlap_fraction:.1%} of the fixed grid")
    return EXIT_OK


def cmd_denoise(args: argparse.Namespace, cancel: CancelToken) -> int:
    from medtorch.device import seed_everything
    from medtorch.enhance.denoise import denoise
    from medtorch.io import read_volume, write_volume

    seed = seed_everything(args.seed)
    vol = read_volume(args.input)
    options = {"iterations": args.iterations} if args.method == "anisotropic" else {}
    out = denoise(vol, args.method, args.strength, progress=_progress(args), cancel=cancel, **options)
    out.metadata["seed"] = seed
    write_volume(out, args.out)
    if not args.quiet:
        print(f"Denoised ({args.method}) into {args.out}")
    return EXIT_OK


def cmd_threshold_seg(args: argparse.Namespace, cancel: CancelToken) -> int:
    import numpy as np

    from medtorch.io import read_volume, write_volume
    from medtorch.segment.threshold import Box, threshold_largest_component

    if (args.roi_center is None) != (args.roi_size is None):
        raise MedTorchInputError("--roi-center and --roi-size go together", "give both, or neither")
    box = None
    if args.roi_center is not None:
        box = Box(np.asarray(args.roi_center), np.asarray(args.roi_size) / 2.0)
    vol = read_volume(args.input)
    res = threshold_largest_component(vol, args.lower, args.upper, box, keep_largest=not args.all_components,
                                      progress=_progress(args), cancel=cancel)
    write_volume(res.label, args.out)
    if not args.quiet:
        print(f"Segment: {res.voxel_count} voxels, {res.volume_ml:.3f} mL ({res.num_components} components found)")
    return EXIT_OK


def cmd_info(args: argparse.Namespace, cancel: CancelToken) -> int:
    import numpy as np

    from medtorch.io import read_volume

    path = Path(args.path)
    if path.is_dir() and args.series_uid is None:
        from medtorch.io.dicom import list_series

        series = list_series(path)
        if len(series) != 1:
            for s in series:
                print(json.dumps({k: str(v) for k, v in vars(s).items()}))
            return EXIT_OK
    vol = read_volume(path, series_uid=args.series_uid)
    info = {
        "size_ijk": list(vol.size), "spacing_mm": [float(v) for v in vol.spacing],
        "origin_lps_mm": [float(v) for v in vol.origin], "direction": np.round(vol.direction, 6).tolist(),
        "kind": vol.kind, "dtype": str(vol.array.dtype),
        "min": float(np.min(vol.array)), "max": float(np.max(vol.array)),
        "metadata": {k: str(v) for k, v in vol.metadata.items()},
    }
    print(json.dumps(info, indent=2))
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace, CancelToken], int]] = {
    "demo": cmd_demo, "fuse": cmd_fuse, "denoise": cmd_denoise, "threshold-seg": cmd_threshold_seg, "info": cmd_info,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    logging.basicConfig(level=logging.DEBUG if args.verbose else (logging.ERROR if args.quiet else logging.WARNING),
                        format="%(levelname)s: %(message)s")
    if args.device:
        os.environ["MEDTORCH_DEVICE"] = args.device
    cancel = CancelToken()
    previous = signal.getsignal(signal.SIGINT)

    def on_interrupt(signum: int, frame: Any) -> None:
        if cancel.cancelled:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        cancel.cancel()
        sys.stderr.write("\ncancelling (Ctrl-C again to stop at once)...\n")

    signal.signal(signal.SIGINT, on_interrupt)
    try:
        return COMMANDS[args.command](args, cancel)
    except MedTorchInputError as exc:
        sys.stderr.write(f"medtorch {args.command}: error: {exc}\n")
        return EXIT_USAGE
    except (Cancelled, KeyboardInterrupt):
        sys.stderr.write(f"medtorch {args.command}: cancelled; no partial output was written\n")
        return EXIT_CANCELLED
    except MedTorchError as exc:
        sys.stderr.write(f"medtorch {args.command}: error: {exc}\n")
        return EXIT_ERROR
    except Exception as exc:  # an internal error: say so, with the traceback when verbose
        if args.verbose:
            raise
        sys.stderr.write(f"medtorch {args.command}: internal error: {type(exc).__name__}: {exc}\n"
                         "(run again with --verbose for the traceback, and please report it)\n")
        return EXIT_ERROR
    finally:
        signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    sys.exit(main())
