"""``medtorch enhance``: N4 bias correction, histogram matching, CLAHE, unsharp masking, CT window.

The chosen steps run in that order (:mod:`medtorch.enhance.contrast`) into a new float32
volume on the input's grid.
"""

from __future__ import annotations

import argparse

from medtorch.commands import Command, ct_window_arg, progress_bar
from medtorch.ops import default_of
from medtorch.ops.enhance import EnhanceRequest
from medtorch.progress import CancelToken


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--in", dest="input", required=True, help="input volume (file or DICOM folder)")
    p.add_argument("--out", required=True, help="output volume (.nrrd, .nii.gz, .mha)")
    p.add_argument("--n4", action="store_true", help="N4 bias-field correction (MRI)")
    p.add_argument("--n4-shrink", type=int, default=default_of(EnhanceRequest, "n4_shrink"), help="N4: shrink factor for the fit (1 = full resolution)")
    p.add_argument("--bias-field", default=None, help="N4: also write the estimated bias field here")
    p.add_argument("--clahe", action="store_true", help="contrast-limited adaptive histogram equalisation (3D)")
    p.add_argument("--clahe-clip", type=float, default=default_of(EnhanceRequest, "clahe_clip"),
                   help="CLAHE clip limit, 0..1 (0.01)")
    p.add_argument("--clahe-kernel", type=float, default=default_of(EnhanceRequest, "clahe_kernel_mm"),
                   help="CLAHE context region edge in mm (32)")
    p.add_argument("--match", default=None, help="histogram matching: reference volume")
    p.add_argument("--unsharp", action="store_true", help="unsharp masking")
    p.add_argument("--unsharp-sigma", type=float, default=default_of(EnhanceRequest, "unsharp_sigma_mm"),
                   help="unsharp masking: Gaussian sigma in mm (1.0)")
    p.add_argument("--unsharp-amount", type=float, default=default_of(EnhanceRequest, "unsharp_amount"),
                   help="unsharp masking: amount (0.5)")
    p.add_argument("--window", type=ct_window_arg, default=None,
                   help="CT window: brain, subdural, stroke, bone, lung, mediastinum, soft_tissue, liver, or WIDTH,LEVEL (HU); "
                        "maps the window to 0..1")


def run(args: argparse.Namespace, cancel: CancelToken) -> int:
    from medtorch import ops
    from medtorch.io import read_volume, write_volume

    inputs = {"input": read_volume(args.input)}
    if args.match:
        inputs["reference"] = read_volume(args.match)
    request = EnhanceRequest(n4=args.n4, n4_shrink=args.n4_shrink, clahe=args.clahe, clahe_clip=args.clahe_clip,
                             clahe_kernel_mm=args.clahe_kernel, unsharp=args.unsharp,
                             unsharp_sigma_mm=args.unsharp_sigma, unsharp_amount=args.unsharp_amount,
                             window=args.window)
    result = ops.run(request, inputs, progress=progress_bar(args), cancel=cancel)
    write_volume(result.volumes["output"], args.out)
    if args.bias_field and "bias_field" in result.volumes:
        write_volume(result.volumes["bias_field"], args.bias_field)
    if not args.quiet:
        print(f"Enhanced ({', '.join(result.values['steps'])}) into {args.out}")
    return 0


COMMANDS = [Command(
    "enhance", "bias-correct, equalise, match, sharpen or window a volume into a new volume",
    "  medtorch enhance --in t1.nii.gz --out t1_n4.nii.gz --n4 --bias-field bias.nii.gz\n"
    "  medtorch enhance --in t1.nii.gz --out t1_eq.nii.gz --n4 --clahe\n"
    "  medtorch enhance --in t2.nii.gz --out t2_matched.nii.gz --match reference_t2.nii.gz\n"
    "  medtorch enhance --in ct.nrrd --out ct_brain.nrrd --window brain",
    add_arguments, run)]
