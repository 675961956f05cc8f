"""``medtorch denoise``: denoise a volume into a new volume."""

from __future__ import annotations

import argparse

from medtorch.commands import Command, progress_bar
from medtorch.progress import CancelToken


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--in", dest="input", required=True, help="input volume (file or DICOM folder)")
    p.add_argument("--out", required=True, help="output volume (.nrrd, .nii.gz, .mha)")
    p.add_argument("--method", default="gaussian", choices=["gaussian", "anisotropic"],
                   help="gaussian: Gaussian smoothing; anisotropic: curvature anisotropic diffusion (edge-preserving)")
    p.add_argument("--strength", type=float, default=None,
                   help="gaussian: sigma in mm (default 1.0); anisotropic: conductance (default 1.0)")
    p.add_argument("--iterations", type=int, default=5, help="anisotropic: number of diffusion steps")
    p.add_argument("--seed", type=int, default=0, help="random seed (recorded with the result)")


def run(args: argparse.Namespace, cancel: CancelToken) -> int:
    from medtorch.device import seed_everything
    from medtorch.enhance.denoise import denoise
    from medtorch.io import read_volume, write_volume

    seed = seed_everything(args.seed)
    vol = read_volume(args.input)
    options = {"iterations": args.iterations} if args.method == "anisotropic" else {}
    out = denoise(vol, args.method, args.strength, progress=progress_bar(args), cancel=cancel, **options)
    out.metadata["seed"] = seed
    write_volume(out, args.out)
    if not args.quiet:
        print(f"Denoised ({args.method}) into {args.out}")
    return 0


COMMANDS = [Command(
    "denoise", "denoise a volume into a new volume",
    "  medtorch denoise --in t1.nii.gz --out t1_smooth.nrrd --method gaussian --strength 1.5\n"
    "  medtorch denoise --in ct.nrrd --out ct_ad.nrrd --method anisotropic --strength 1 --iterations 10",
    add_arguments, run)]
