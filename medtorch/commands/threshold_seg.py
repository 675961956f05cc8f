"""``medtorch threshold-seg``: threshold plus largest connected component inside an optional box."""

from __future__ import annotations

import argparse

from medtorch.commands import Command, progress_bar, vec3
from medtorch.errors import MedTorchInputError
from medtorch.progress import CancelToken


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--in", dest="input", required=True, help="input volume (file or DICOM folder)")
    p.add_argument("--out", required=True, help="label map to write (1 = segment)")
    p.add_argument("--lower", type=float, required=True, help="lowest intensity kept (volume units, HU for CT)")
    p.add_argument("--upper", type=float, default=float("inf"), help="highest intensity kept")
    p.add_argument("--roi-center", type=vec3, default=None, help="box centre x,y,z in LPS mm")
    p.add_argument("--roi-size", type=vec3, default=None, help="box size x,y,z in mm (with --roi-center)")
    p.add_argument("--all-components", action="store_true", help="keep every component, not only the largest")


def run(args: argparse.Namespace, cancel: CancelToken) -> int:
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
                                      progress=progress_bar(args), cancel=cancel)
    write_volume(res.label, args.out)
    if not args.quiet:
        print(f"Segment: {res.voxel_count} voxels, {res.volume_ml:.3f} mL ({res.num_components} components found)")
    return 0


COMMANDS = [Command(
    "threshold-seg", "segment by threshold plus largest connected component inside an optional box",
    "  medtorch threshold-seg --in t1c.nii.gz --lower 300 --out tumor.seg.nrrd\n"
    "  medtorch threshold-seg --in ct.nrrd --lower 40 --upper 90 --roi-center 10,-20,35 --roi-size 40,40,30 "
    "--out lesion.nrrd", add_arguments, run)]
