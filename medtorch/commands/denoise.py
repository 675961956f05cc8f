"""``medtorch denoise``: denoise a volume into a new volume.

Methods: gaussian, median, anisotropic, bilateral, nlm, patch, dct, collab, selfsup
(:mod:`medtorch.enhance.denoise`). The noise model and level are estimated (or given);
``--metrics`` writes them, with the seed and timings, as JSON.
"""

from __future__ import annotations

import argparse
import time

from medtorch.commands import Command, add_format_argument, device_of, progress_bar, write_output
from medtorch.commands.costs import cost_help
from medtorch.ops import choices, default_of
from medtorch.ops.enhance import DenoiseRequest
from medtorch.progress import CancelToken


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--in", dest="input", required=True, help="input volume (file or DICOM folder)")
    p.add_argument("--out", required=True, help="output volume (.nrrd, .nii.gz, .mha), or with --format dicom a folder")
    p.add_argument("--method", default=default_of(DenoiseRequest, "method"), choices=choices(DenoiseRequest, "method"),
                   help="gaussian: Gaussian smoothing; median: median filter; anisotropic: curvature anisotropic "
                        "diffusion (edge-preserving); bilateral; nlm: non-local means; patch: SimpleITK patch-based; "
                        "dct: sliding 3D DCT; collab (the default): DCT pilot + guided NLM, the one method that lowered "
                        "the error on real MRI noise, where gaussian raised it 3.4 times and selfsup did no better at "
                        "16 times the time (docs/benchmarks/denoise_real.md; on synthetic Rician noise too: "
                        "docs/benchmarks/enhance.md); selfsup: self-supervised network "
                        "trained on this volume (+ collab). " + cost_help("denoise"))
    p.add_argument("--strength", type=float, default=None,
                   help="gaussian: sigma in mm (1.0); median: radius in mm (1.0); anisotropic: conductance (1.0); "
                        "the other methods: multiplier of the estimated noise level (1.0)")
    p.add_argument("--iterations", type=int, default=default_of(DenoiseRequest, "iterations"),
                   help="anisotropic: number of diffusion steps")
    p.add_argument("--train-iterations", type=int, default=None, help="selfsup: training iterations of the network")
    p.add_argument("--noise-model", default=default_of(DenoiseRequest, "noise_model"),
                   choices=choices(DenoiseRequest, "noise_model"),
                   help="noise model: auto (rician for MRI magnitude with background, gaussian for CT), or force one")
    p.add_argument("--noise-sigma", type=float, default=None,
                   help="noise standard deviation in intensity units (default: estimated)")
    p.add_argument("--output-dtype", default=default_of(DenoiseRequest, "output_dtype"),
                   help="float32 (default), input (the input's type, widened if values do not fit), or a type name")
    p.add_argument("--seed", type=int, default=default_of(DenoiseRequest, "seed"),
                   help="random seed (recorded with the result)")
    p.add_argument("--fidelity-map", default=None, metavar="PATH",
                   help="also write the fidelity map here: what was removed (input - output) in units of the noise "
                        "sigma; white noise of SD 1 when only noise was removed, structure where edges or detail "
                        "were removed (its summary is printed and in --metrics)")
    p.add_argument("--metrics", default=None,
                   help="write the noise estimate, seed, time (and the fidelity summary) as JSON here")
    add_format_argument(p)


def run(args: argparse.Namespace, cancel: CancelToken) -> int:
    from medtorch import ops
    from medtorch.device import seed_everything
    from medtorch.enhance.fidelity import format_summary
    from medtorch.io import read_volume, write_volume, write_json_atomic

    seed = seed_everything(args.seed)
    vol = read_volume(args.input)
    request = DenoiseRequest(method=args.method, strength=args.strength, iterations=args.iterations,
                             train_iterations=args.train_iterations, noise_model=args.noise_model,
                             noise_sigma=args.noise_sigma, seed=seed, output_dtype=args.output_dtype,
                             device=device_of(args) if args.method == "selfsup" else "cpu",
                             fidelity_map=bool(args.fidelity_map))
    start = time.perf_counter()
    result = ops.run(request, {"input": vol}, progress=progress_bar(args), cancel=cancel)
    seconds = time.perf_counter() - start
    out = result.volumes["output"]
    out.metadata["seed"] = seed
    written = write_output(args, out, args.out, args.input, args.series_uid, f"denoised by MedTorch ({args.method})",
                           f"Denoised ({args.method})")
    fidelity = result.values.get("fidelity")
    if args.fidelity_map:
        write_volume(result.volumes["fidelity"], args.fidelity_map)
    if args.metrics:
        info = {k: out.metadata.get(k) for k in ("method", "strength", "noise_model", "noise_sigma", "noise_estimator")}
        info.update(seed=seed, seconds=round(seconds, 3), input=args.input, output=args.out)
        if fidelity is not None:
            info["fidelity"] = fidelity
        write_json_atomic(args.metrics, info)
    if not args.quiet:
        extra = f", noise sigma {out.metadata['noise_sigma']:.4g} ({out.metadata['noise_model']})" if "noise_sigma" in out.metadata else ""
        print(f"Denoised ({args.method}{extra}) into {written} in {seconds:.1f} s")
        if fidelity is not None:
            print(f"{format_summary(fidelity)}; map in {args.fidelity_map}")
    return 0


COMMANDS = [Command(
    "denoise", "denoise a volume into a new volume",
    "  medtorch denoise --in t1.nii.gz --out t1_smooth.nrrd --method gaussian --strength 1.5\n"
    "  medtorch denoise --in ct.nrrd --out ct_ad.nrrd --method anisotropic --strength 1 --iterations 10\n"
    "  medtorch denoise --in t1.nii.gz --out t1_nlm.nii.gz --method nlm\n"
    "  medtorch denoise --in t1.nii.gz --out t1_dn.nii.gz --method collab --metrics noise.json\n"
    "  medtorch denoise --in t1.nii.gz --out t1_ss.nii.gz --method selfsup --seed 1 --metrics noise.json",
    add_arguments, run)]
