"""``medtorch export-dicom``: write a segmentation as a DICOM SEG or RTSTRUCT that references its
source series, or any volume as a new derived DICOM series.

Every output is checked after it is written (a SEG's segments and an RTSTRUCT's ROIs: centroid
and volume in patient space within half a voxel; a series: its corners, read back with pydicom
and SimpleITK, within half a voxel, and its values within the stated storage precision); an
output that fails is not kept (:mod:`medtorch.segment.dicom_seg`, :mod:`medtorch.segment.rtstruct`,
:mod:`medtorch.io.dicom_write`). All go through the ``export_dicom`` operation.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medtorch.commands import Command
from medtorch.errors import MedTorchInputError
from medtorch.progress import CancelToken

_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nrrd", ".nii", ".mha", ".mhd", ".dcm")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seg", "--in", dest="seg", required=True,
                   help="the volume to export: a label map (0 = background, 1, 2 ... = segments) on the source "
                        "series' grid for --as seg/rtstruct (with --fractional a probability map, 0 to 1), any "
                        "scalar volume for --as series")
    p.add_argument("--as", dest="export_as", default="seg", choices=("seg", "rtstruct", "series"),
                   help="seg (the default): a DICOM Segmentation; rtstruct: an RT Structure Set (one ROI per "
                        "segment, contours along the voxel edges) for radiotherapy systems; series: a new derived "
                        "image series (CT or MR images, one file per slice)")
    p.add_argument("--source", "--reference", dest="source", default=None,
                   help="DICOM folder (or file) of the series the volume was computed on or derived from: "
                        "required for seg and rtstruct; for series it gives the patient, study and frame of "
                        "reference (leave it out only with --patient-id, for a new patient and study)")
    p.add_argument("--out", required=True,
                   help="folder to write into (made if missing); the output is named after --seg: "
                        "FOLDER/<name>_SEG.dcm, FOLDER/<name>_RTSTRUCT.dcm or the series folder FOLDER/<name>_series/")
    p.add_argument("--names", action="append", default=None, metavar="VALUE=NAME[,...]",
                   help="segment names by label value, e.g. 1=Necrosis,2=Edema,3=Enhancing tumor; standard tumor "
                        "names get their standard codes (SNOMED CT / NCIt) and colours, others are coded as "
                        "Neoplasm; unnamed labels are called 'Class <value>'")
    p.add_argument("--fractional", action="store_true",
                   help="--as seg: write one FRACTIONAL (probability) segment from a map of values between 0 and 1 "
                        "(stored in steps of 1/255)")
    p.add_argument("--algorithm-type", default="SEMIAUTOMATIC", choices=("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL"),
                   help="how the segments were made (SegmentAlgorithmType, ROIGenerationAlgorithm; default: "
                        "%(default)s)")
    p.add_argument("--description", default=None, help="SeriesDescription of the new series")
    p.add_argument("--derivation", default="derived by MedTorch",
                   help="--as series: DerivationDescription, how the volume was made (e.g. 'denoised, collab')")
    p.add_argument("--patient-id", default=None,
                   help="--as series without --source: the patient ID of a new patient and study (required then; "
                        "nothing is invented)")
    p.add_argument("--patient-name", default=None, help="--as series without --source: the patient's name "
                   "(DICOM form Family^Given; left empty when not given)")
    p.add_argument("--modality", default="auto", choices=("auto", "CT", "MR"),
                   help="--as series: the images' modality (auto: the source's when it is CT or MR)")


_SUFFIX_OF = {"seg": "_SEG.dcm", "rtstruct": "_RTSTRUCT.dcm", "series": "_series"}


def _output_file(seg: str, folder: str, export_as: str = "seg") -> Path:
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise MedTorchInputError(f"--out {folder} is a file", "give a folder to write the DICOM output into")
    name = Path(seg.rstrip("/\\")).name
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    target = out / f"{name or 'segmentation'}{_SUFFIX_OF[export_as]}"
    if target.exists() and target.resolve() == Path(seg).resolve():
        raise MedTorchInputError(f"the DICOM output {target} would replace the input --seg {seg}",
                                 "choose another --out folder")
    return target


def run(args: argparse.Namespace, cancel: CancelToken) -> int:
    from medtorch import ops
    from medtorch.io import read_volume
    from medtorch.io.dicom import series_hint
    from medtorch.ops.export import ExportDicomRequest
    from medtorch.segment.dicom_seg import parse_names

    parse_names(args.names)  # a bad name fails before any reading
    if args.export_as != "series" and not args.source:
        raise MedTorchInputError(f"--as {args.export_as} needs --source",
                                 "give the DICOM series the segmentation was computed on (--source DICOMDIR)")
    if args.export_as == "series" and not args.source and not args.patient_id:
        raise MedTorchInputError(
            "--as series needs a patient: give --source DICOMDIR (the series the volume was derived from: the new "
            "series joins its patient and study) or, for a volume that has no DICOM source, --patient-id ID (a new "
            "patient and study)", "add --source DICOMDIR, or --patient-id ID")
    target = _output_file(args.seg, args.out, args.export_as)
    volume = read_volume(args.seg, kind="label" if args.export_as != "series" and not args.fractional else None)
    cancel.raise_if_cancelled()
    target.parent.mkdir(parents=True, exist_ok=True)
    request = ExportDicomRequest(
        export_as=args.export_as, out=str(target), reference=args.source,
        reference_series_uid=args.source_series_uid, names=tuple(args.names or ()), fractional=args.fractional,
        algorithm_type=args.algorithm_type, description=args.description, derivation=args.derivation,
        patient_id=args.patient_id, patient_name=args.patient_name, modality=args.modality)
    with series_hint("--source-series-uid"):
        values = ops.run(request, {"input": volume}, cancel=cancel).values
    if not args.quiet:
        if args.export_as == "series":
            c = values["checks"]
            print(f"Wrote {values['folder']} (DICOM {values['modality']} series, {len(values['paths'])} files, study "
                  f"{values['study_uid']}" + (f", derived from series {values['reference_series_uid']}"
                                              if values["reference_series_uid"] else ", new patient and study") + ")")
            print(f"  {values['storage']}")
            print(f"  geometry check passed (pydicom and SimpleITK): corners within {c['corner_shift_voxels']:.2g} "
                  f"voxels, values within {c['value_difference']:.3g}")
            return 0
        what = "DICOM SEG, " + values["segmentation_type"].lower() if args.export_as == "seg" else "RTSTRUCT"
        n = len(values["checks"])
        noun = "segment" if args.export_as == "seg" else "ROI"
        print(f"Wrote {values['paths'][0]} ({what}, {n} {noun}{'s' if n != 1 else ''}; source series "
              f"{values['reference_series_uid']})")
        for s in values["checks"]:
            centroid = ", ".join(f"{v:.1f}" for v in s["centroid_lps"])
            print(f"  {noun} {s['number']} '{s['name']}' (label {s['label']}): {s['volume_mm3'] / 1000:.3f} mL, "
                  f"centroid ({centroid}) mm LPS; geometry check passed ({s['shift_voxels']:.2f} voxel shift, "
                  f"{s['volume_diff_voxels']:.2f} voxel volume difference)")
    return 0


COMMANDS = [Command(
    "export-dicom", "write a segmentation as DICOM SEG or RTSTRUCT, or a volume as a derived DICOM series, "
    "checked after writing",
    "  medtorch export-dicom --seg tumor.seg.nrrd --source dicom/t1c --out seg-out --names 1=Tumor\n"
    "  medtorch export-dicom --seg brats.nii.gz --source study/ --source-series-uid 1.2.3 --out seg-out "
    "--names 1=Necrosis,2=Edema,3=Enhancing tumor --algorithm-type AUTOMATIC\n"
    "  medtorch export-dicom --seg tumor_prob.nii.gz --fractional --source dicom/t1c --out seg-out\n"
    "  medtorch export-dicom --as rtstruct --seg tumor.seg.nrrd --source dicom/ct --out rt-out --names 1=GTV\n"
    "  medtorch export-dicom --as series --in t1_denoised.nii.gz --reference dicom/t1 --out pacs-out "
    "--derivation 'denoised, collab'\n"
    "  medtorch export-dicom --as series --in phantom.nrrd --patient-id PHANTOM-01 --modality MR --out pacs-out",
    add_arguments, run)]
