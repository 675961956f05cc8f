"""``medtorch threshold-seg``: threshold plus largest connected component inside an optional box."""

from __future__ import annotations

import argparse

from medtorch.commands import Command, progress_bar, vec3
from medtorch.errors import MedTorchInputError
from medtorch.ops import default_of
from medtorch.ops.segmentation import ThresholdRequest
from medtorch.progress import CancelToken


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--in", dest="input", required=True, help="input volume (file or DICOM folder)")
    p.add_argument("--out", required=True, help="label map to write (1 = segment)")
    p.add_argument("--lower", type=float, required=True, help="lowest intensity kept (volume units, HU for CT)")
    p.add_argument("--upper", type=float, default=default_of(ThresholdRequest, "upper"), help="highest intensity kept")
    p.add_argument("--roi-center", type=vec3, default=None, help="box centre x,y,z in LPS mm")
    p.add_argument("--roi-size", type=vec3, default=None, help="box size x,y,z in mm (with --roi-center)")
    p.add_argument("--all-components", action="store_true", help="keep every component, not only the largest")


def run(args: argparse.Namespace, cancel: CancelToken) -> int:
    from medtorch import ops
    from medtorch.io import read_volume, write_volume
    from medtorch.ops import Roi

    if (args.roi_center is None) != (args.roi_size is None):
        raise MedTorchInputError("--roi-center and --roi-size go together", "give both, or neither")
    roi = None if args.roi_center is None else Roi.from_size(args.roi_center, args.roi_size)
    vol = read_volume(args.input)
    request = ThresholdRequest(lower=args.lower, upper=args.upper, roi=roi, keep_largest=not args.all_components)
    res = ops.run(request, {"input": vol}, progress=progress_bar(args), cancel=cancel)
    write_volume(res.volumes["label"], args.out)
    if not args.quiet:
        v = res.values
        print(f"Segment: {v['voxel_count']} voxels, {v['volume_ml']:.3f} mL ({v['num_components']} components found)")
    return 0


COMMANDS = [Command(
    "threshold-seg", "segment by threshold plus largest connected component inside an optional box",
    "  medtorch threshold-seg --in t1c.nii.gz --lower 300 --out tumor.seg.nrrd\n"
    "  medtorch threshold-seg --in ct.nrrd --lower 40 --upper 90 --roi-center 10,-20,35 --roi-size 40,40,30 "
    "--out lesion.nrrd", add_arguments, run)]
