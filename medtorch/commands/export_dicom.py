"""``medtorch export-dicom``: write a segmentation as a DICOM SEG that references its source series.

The SEG is checked after it is written (each segment's centroid and volume in patient space,
read back from the file, within half a voxel of the segmentation's); a file that fails is not
kept (see :mod:`medtorch.segment.dicom_seg`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medtorch.commands import Command
from medtorch.errors import MedTorchInputError
from medtorch.progress import CancelToken

_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nrrd", ".nii", ".mha", ".mhd", ".dcm")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seg", required=True,
                   help="label map to export (0 = background, 1, 2 ... = segments), on the source series' grid; "
                        "with --fractional a probability map (0 to 1)")
    p.add_argument("--source", required=True,
                   help="DICOM folder (or file) of the series the segmentation was computed on")
    p.add_argument("--out", required=True,
                   help="folder to write the DICOM SEG into (made if missing); the file is named after --seg: "
                        "FOLDER/<name>_SEG.dcm")
    p.add_argument("--names", action="append", default=None, metavar="VALUE=NAME[,...]",
                   help="segment names by label value, e.g. 1=Necrosis,2=Edema,3=Enhancing tumor; standard tumor "
                        "names get their standard codes (SNOMED CT / NCIt), others are coded as Neoplasm; "
                        "unnamed labels are called 'Class <value>'")
    p.add_argument("--fractional", action="store_true",
                   help="write one FRACTIONAL (probability) segment from a map of values between 0 and 1 "
                        "(stored in steps of 1/255)")
    p.add_argument("--algorithm-type", default="SEMIAUTOMATIC", choices=("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL"),
                   help="how the segments were made (DICOM SegmentAlgorithmType; default: %(default)s)")
    p.add_argument("--description", default="MedTorch segmentation", help="SeriesDescription of the SEG")


def _output_file(seg: str, folder: str) -> Path:
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise MedTorchInputError(f"--out {folder} is a file", "give a folder to write the DICOM SEG into")
    name = Path(seg.rstrip("/\\")).name
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    target = out / f"{name or 'segmentation'}_SEG.dcm"
    if target.exists() and target.resolve() == Path(seg).resolve():
        raise MedTorchInputError(f"the DICOM SEG {target} would replace the input --seg {seg}",
                                 "choose another --out folder")
    return target


def run(args: argparse.Namespace, cancel: CancelToken) -> int:
    from medtorch.io import read_volume
    from medtorch.io.dicom import series_hint
    from medtorch.segment.dicom_seg import parse_names, write_dicom_seg

    names = parse_names(args.names)
    target = _output_file(args.seg, args.out)
    segmentation = read_volume(args.seg, kind=None if args.fractional else "label")
    cancel.raise_if_cancelled()
    target.parent.mkdir(parents=True, exist_ok=True)
    with series_hint("--source-series-uid"):
        result = write_dicom_seg(segmentation, args.source, target, source_series_uid=args.source_series_uid,
                                 names=names, fractional=args.fractional, algorithm_type=args.algorithm_type,
                                 series_description=args.description)
    if not args.quiet:
        print(f"Wrote {result.path} (DICOM SEG, {result.segmentation_type.lower()}, {len(result.segments)} "
              f"segment{'s' if len(result.segments) != 1 else ''}; source series {result.source_series_uid})")
        for s in result.segments:
            centroid = ", ".join(f"{v:.1f}" for v in s.written_centroid or ())
            print(f"  segment {s.number} '{s.name}' (label {s.label_value}): {s.written_volume_mm3 / 1000:.3f} mL, "
                  f"centroid ({centroid}) mm LPS; geometry check passed ({s.shift_voxels:.2f} voxel shift, "
                  f"{s.volume_diff_voxels:.2f} voxel volume difference)")
    return 0


COMMANDS = [Command(
    "export-dicom", "write a segmentation as a DICOM SEG referencing its source series, checked after writing",
    "  medtorch export-dicom --seg tumor.seg.nrrd --source dicom/t1c --out seg-out --names 1=Tumor\n"
    "  medtorch export-dicom --seg brats.nii.gz --source study/ --source-series-uid 1.2.3 --out seg-out "
    "--names 1=Necrosis,2=Edema,3=Enhancing tumor --algorithm-type AUTOMATIC\n"
    "  medtorch export-dicom --seg tumor_prob.nii.gz --fractional --source dicom/t1c --out seg-out",
    add_arguments, run)]
