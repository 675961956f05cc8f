"""``medtorch fuse-eval``: run fusion methods over many pairs and write the evaluation report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medtorch.commands import Command, device_of, progress_bar
from medtorch.errors import MedTorchInputError
from medtorch.ops import choices, default_of
from medtorch.ops.fusion import FuseEvalRequest
from medtorch.progress import CancelToken


def add_arguments(p: argparse.ArgumentParser) -> None:
    from medtorch.commands import ct_window_arg

    p.add_argument("--pairs", required=True,
                   help="a CSV list (fixed,moving[,modality[,name]]) or a folder: modality sub-folders (MRI/ + CT/, "
                        "PET/ or SPECT/, files matched by name; or CT-MRI/, PET-MRI/, SPECT-MRI/ folders of them), "
                        "or files named <case>_<modality>.<ext> (mri/t1/t2 + ct/pet/spect)")
    p.add_argument("--methods", default=",".join(default_of(FuseEvalRequest, "methods")),
                   help="comma-separated methods (" + ", ".join(choices(FuseEvalRequest, "baseline")) + ") or 'all'")
    p.add_argument("--out", required=True, help="report folder (metrics.csv, stats.csv, figures/, report.html, report.md)")
    p.add_argument("--baseline", default=default_of(FuseEvalRequest, "baseline"), help="method the paired tests (Wilcoxon, paired t) compare with")
    p.add_argument("--metrics-mode", default="3d", choices=["3d", "slices"],
                   help="volumes: metrics on the volume or averaged over axial slices (2D images: 2D)")
    p.add_argument("--metric-set", default=default_of(FuseEvalRequest, "metric_set"),
                   choices=choices(FuseEvalRequest, "metric_set"),
                   help="metric definitions: medtorch (MedTorch's own), or cddfuse (the CDDFuse/VIFB evaluator's, "
                        "to compare with published tables: EN, SD, SF, MI in nats, SCD, VIF, Qabf, SSIM_sum)")
    p.add_argument("--mi-unit", default=default_of(FuseEvalRequest, "mi_unit"),
                   choices=choices(FuseEvalRequest, "mi_unit"), help="unit of the MI metric")
    p.add_argument("--color-map", default=default_of(FuseEvalRequest, "color_map"),
                   choices=choices(FuseEvalRequest, "color_map"),
                   help="colour map for PET/SPECT volumes (2D RGB images keep their own colours)")
    p.add_argument("--ct-window", type=ct_window_arg, default="bone", help="CT window preset or WIDTH,LEVEL (HU)")
    p.add_argument("--assume-aligned", action="store_true",
                   help="resample a moving volume on another grid as it lies (no transform)")
    p.add_argument("--cnn-iterations", type=int, default=None, help="cnn: training iterations per pair (150)")
    p.add_argument("--seed", type=int, default=None, help="cnn: random seed (0)")
    p.add_argument("--save-fused", action="store_true", help="also write every fused image into OUT/fused/")


def render_fused_in_3d(path: Path, volumes: list[tuple[str, Any]]) -> tuple[Path | None, str | None]:
    """Each fused volume rendered in Slicer's 3D view, side by side (medtorch.slicer.renders), or
    why not (no EGL/OpenGL, no slicer-core, ``MEDTORCH_NO_RENDER=1``): never raises."""
    from medtorch.slicer import renders

    return renders.try_render(renders.volumes_in_3d, volumes, path, 240)


def run(args: argparse.Namespace, cancel: CancelToken) -> int:
    from medtorch.fusion.evaluate import evaluate
    from medtorch.fusion.methods import METHODS

    text = args.methods.strip().lower()
    methods = list(METHODS) if text == "all" else [m.strip() for m in text.split(",") if m.strip()]
    if not methods:
        raise MedTorchInputError("no method was given", "give e.g. --methods dwt,gff,laplacian")
    cnn = {k: v for k, v in (("iterations", args.cnn_iterations), ("seed", args.seed)) if v is not None}
    res = evaluate(args.pairs, methods, args.out, baseline=args.baseline.strip().lower(),
                   method_params={"cnn": cnn} if cnn else None, metrics_mode=args.metrics_mode, mi_unit=args.mi_unit,
                   metric_set=args.metric_set,
                   color_map=args.color_map, ct_window=args.ct_window, assume_aligned=args.assume_aligned,
                   save_fused=args.save_fused, device=device_of(args), progress=progress_bar(args), cancel=cancel,
                   render_views=render_fused_in_3d)
    if not args.quiet:
        cases = len({r["case"] for r in res.rows})
        print(f"Evaluated {len({r['method'] for r in res.rows})} methods on {cases} cases: "
              f"{res.files['report_html']}")
    return 0


COMMANDS = [Command(
    "fuse-eval", "run fusion methods over many image pairs: metrics CSV, box plots, paired tests, report",
    "  medtorch fuse-eval --pairs pairs.csv --methods dwt,laplacian,gff,pca --out eval\n"
    "  medtorch fuse-eval --pairs Harvard/ --methods all --baseline dwt --cnn-iterations 100 --out harvard-eval\n"
    "  medtorch fuse-eval --pairs volumes/ --methods average,dwt,gff --metrics-mode slices --out eval3d",
    add_arguments, run)]
