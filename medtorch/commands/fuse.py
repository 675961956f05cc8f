"""``medtorch fuse``: resample the moving volume onto the fixed grid and fuse the two."""

from __future__ import annotations

import argparse
import json
import time

from medtorch.commands import Command, device_of, progress_bar
from medtorch.errors import MedTorchInputError
from medtorch.progress import CancelToken


def add_arguments(p: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace, cancel: CancelToken) -> int:
    from medtorch import __version__
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
                             device=device_of(args), progress=progress_bar(args), cancel=cancel)
    if args.out:
        write_volume(res.fused, args.out)
    if args.out_resampled:
        write_volume(res.resampled_moving, args.out_resampled)
    figures = {"method": args.method, "weight": args.weight, "normalization": args.normalization,
               "overlap_fraction": res.overlap_fraction, "output_range": res.fused.metadata.get("output_range"),
               "device": res.fused.metadata.get("device"), "seconds": round(time.perf_counter() - start, 3),
               "medtorch": __version__}
    if args.metrics:
        write_text_atomic(args.metrics, json.dumps(figures, indent=2))
    if not args.quiet:
        print(f"Fused ({args.method}, weight {args.weight}); the moving volume covers "
              f"{res.overlap_fraction:.1%} of the fixed grid")
    return 0


COMMANDS = [Command(
    "fuse", "resample the moving volume onto the fixed grid and fuse the two into one volume",
    "  medtorch fuse --fixed t1.nii.gz --moving ct.nrrd --method average --out fused.nrrd\n"
    "  medtorch fuse --fixed t1.nrrd --moving t2.nrrd --transform reg.tfm --weight 0.3 --out fused.nrrd "
    "--metrics fused.json", add_arguments, run)]
