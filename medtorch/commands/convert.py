"""``medtorch convert``: a DICOM series or any volume file to another format (NIfTI, NRRD, MHA, or a
2D image for a one-slice volume), geometry kept exactly (origin, spacing, direction)."""

from __future__ import annotations

import argparse

from medtorch.commands import Command
from medtorch.errors import MedTorchInputError
from medtorch.progress import CancelToken


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--in", dest="input", required=True,
                   help="a DICOM series folder, a DICOM file, or a NIfTI/NRRD/MHA/PNG/... file")
    p.add_argument("--out", required=True,
                   help="the file to write; its extension picks the format (.nii.gz, .nii, .nrrd, .mha, .png, ...)")
    p.add_argument("--kind", choices=["auto", "scalar", "label"], default="auto",
                   help="read the input as a label map (integer values kept exactly) or a scalar volume")
    p.add_argument("--frame", type=int, default=None, metavar="N",
                   help="a 4D file (fMRI, DWI, a time series): write its frame N (0 = the first) as a 3D volume")


def run(args: argparse.Namespace, cancel: CancelToken) -> int:
    from medtorch.io import read_frames, read_volume, write_volume

    kind = None if args.kind == "auto" else args.kind
    if args.frame is not None:
        frames = read_frames(args.input, kind=kind)
        if not 0 <= args.frame < len(frames):
            raise MedTorchInputError(
                f"{args.input} has {len(frames)} frame{'s' if len(frames) != 1 else ''}, so there is no frame {args.frame}",
                f"give --frame from 0 to {len(frames) - 1}" if len(frames) > 1 else "leave out --frame: it is a 3D volume")
        vol = frames[args.frame]
    else:
        vol = read_volume(args.input, kind=kind, allow_2d=True)
    cancel.raise_if_cancelled()
    out = write_volume(vol, args.out)
    if not args.quiet:
        size = "x".join(str(v) for v in vol.size)
        spacing = ", ".join(f"{float(v):g}" for v in vol.spacing)
        print(f"Wrote {out} ({vol.kind}, {size} voxels, spacing {spacing} mm)")
    return 0


COMMANDS = [Command(
    "convert", "convert a DICOM series or a volume file to another format (geometry kept)",
    "  medtorch convert --in /data/dicom_folder --out t1.nii.gz\n"
    "  medtorch convert --in /data/pacs_export --series-uid 1.2.840... --out ct.nrrd\n"
    "  medtorch convert --in seg.nii.gz --kind label --out seg.nrrd\n"
    "  medtorch convert --in bold.nii.gz --frame 0 --out bold_0.nii.gz", add_arguments, run)]
