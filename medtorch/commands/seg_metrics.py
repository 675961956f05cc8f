"""``medtorch seg-metrics``: score a segmentation against a reference (Dice, HD95, surface Dice...)."""

from __future__ import annotations

import argparse

from medtorch.commands import Command, progress_bar
from medtorch.ops import choices, default_of
from medtorch.ops.segmentation import SegMetricsRequest
from medtorch.progress import CancelToken


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", required=True, help="segmentation to score (label map)")
    p.add_argument("--ref", required=True, help="reference segmentation (label map on the same grid)")
    p.add_argument("--structures", default=default_of(SegMetricsRequest, "structures"),
                   choices=choices(SegMetricsRequest, "structures"),
                   help="labels: each label value and the foreground; brats2021/brats2023: the regions TC, WT, ET; "
                        "auto: BraTS regions when both maps hold BraTS labels, else labels")
    p.add_argument("--tolerance", type=float, default=default_of(SegMetricsRequest, "tolerance_mm"),
                   help="surface Dice tolerance, mm")
    p.add_argument("--no-lesion-wise", action="store_true", help="skip the BraTS-2023-style lesion-wise scores")
    p.add_argument("--json", default=None, help="write the scores as JSON")
    p.add_argument("--csv", default=None, help="write the scores as CSV (one row per structure)")


def run(args: argparse.Namespace, cancel: CancelToken) -> int:

    from medtorch import ops
    from medtorch.io import read_volume, write_text_atomic, write_json_atomic

    inputs = {"pred": read_volume(args.pred, kind="label"), "ref": read_volume(args.ref, kind="label")}
    request = SegMetricsRequest(structures=args.structures, tolerance_mm=args.tolerance,
                                lesion_wise=not args.no_lesion_wise)
    rep = ops.run(request, inputs, progress=progress_bar(args), cancel=cancel).native
    if args.json:
        write_json_atomic(args.json, rep.to_dict())
    if args.csv:
        write_text_atomic(args.csv, rep.to_csv())
    print(rep.to_text())  # the result this command exists for: printed with --quiet too
    return 0


COMMANDS = [Command(
    "seg-metrics", "score a segmentation against a reference: Dice, HD95, surface Dice, lesion-wise, mL",
    "  medtorch seg-metrics --pred tumor.nrrd --ref truth.nii.gz\n"
    "  medtorch seg-metrics --pred seg.nii.gz --ref truth.nii.gz --structures brats2023 --json scores.json",
    add_arguments, run)]
