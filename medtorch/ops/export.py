"""Export operations.

* ``export_dicom``: input ``input`` (a label map, a probability map or any scalar volume).
  Writes it as DICOM (``export_as``): a DICOM SEG (:mod:`medtorch.segment.dicom_seg`) or an
  RTSTRUCT (:mod:`medtorch.segment.rtstruct`) referencing the ``reference`` series the
  segmentation was computed on, or a new derived image series
  (:mod:`medtorch.io.dicom_write`) that keeps the reference's patient and study (without a
  reference: a new patient with ``patient_id``). Every file is read back and checked in
  patient space before it is kept. Values: ``paths`` (the written files), ``series_uid`` and
  ``checks`` (per segment/ROI, or the series' corner shift and value difference).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from medtorch.errors import MedTorchInputError
from medtorch.ops.base import OperationResult, Request, need
from medtorch.progress import CancelToken, ProgressCallback
from medtorch.volume import Volume

#: What a volume is written as: DICOM SEG, RT Structure Set, or a derived image series.
ExportAs = Literal["seg", "rtstruct", "series"]
#: The output format of the commands' and the pipeline's volume outputs: a volume file
#: (NRRD, NIfTI, MHA, by the name's extension) or a DICOM series in a folder.
OutputFormat = Literal["file", "dicom"]
AlgorithmType = Literal["AUTOMATIC", "SEMIAUTOMATIC", "MANUAL"]
Modality = Literal["auto", "CT", "MR"]


@dataclass(frozen=True)
class ExportDicomRequest(Request):
    """Parameters of a DICOM export. ``out``: the SEG/RTSTRUCT file, or the (new or empty) folder
    of a series; ``reference``: the DICOM series (folder or file) the input was computed on or
    derived from (required for seg and rtstruct); ``names``: ``VALUE=NAME`` items."""

    operation: ClassVar[str] = "export_dicom"

    export_as: ExportAs = "series"
    out: str = ""
    reference: str | None = None
    reference_series_uid: str | None = None
    names: tuple[str, ...] = ()
    fractional: bool = False
    algorithm_type: AlgorithmType = "SEMIAUTOMATIC"
    description: str | None = None
    derivation: str = "derived by MedTorch"
    patient_id: str | None = None
    patient_name: str | None = None
    modality: Modality = "auto"


def run_export_dicom(request: ExportDicomRequest, inputs: dict[str, Volume], progress: ProgressCallback | None,
                     cancel: CancelToken | None) -> OperationResult:
    volume = need(inputs, "input")
    if not request.out:
        raise MedTorchInputError("no output was given for the DICOM export", "give the output file or folder")
    if cancel is not None:
        cancel.raise_if_cancelled()
    values: dict[str, Any]
    if request.export_as in ("seg", "rtstruct"):
        from medtorch.segment.dicom_seg import parse_names

        if not request.reference:
            raise MedTorchInputError(f"a DICOM {'SEG' if request.export_as == 'seg' else 'RTSTRUCT'} must reference "
                                     "the series the segmentation was computed on, and none was given",
                                     "give that DICOM series (--source / the reference folder)")
        names = parse_names(request.names)
        if request.export_as == "seg":
            from medtorch.segment.dicom_seg import write_dicom_seg

            seg = write_dicom_seg(volume, request.reference, request.out, source_series_uid=request.reference_series_uid,
                                  names=names, fractional=request.fractional, algorithm_type=request.algorithm_type,
                                  series_description=request.description or "MedTorch segmentation")
            checks = [{"number": s.number, "label": s.label_value, "name": s.name, "volume_mm3": s.written_volume_mm3,
                       "centroid_lps": list(s.written_centroid or ()), "shift_voxels": s.shift_voxels,
                       "volume_diff_voxels": s.volume_diff_voxels} for s in seg.segments]
            values = {"paths": [str(seg.path)], "series_uid": seg.series_instance_uid, "checks": checks,
                      "reference_series_uid": seg.source_series_uid, "segmentation_type": seg.segmentation_type}
        else:
            if request.fractional:
                raise MedTorchInputError("an RTSTRUCT holds outlines, not probabilities",
                                         "leave out fractional, or export a fractional DICOM SEG (--as seg)")
            from medtorch.segment.rtstruct import write_rtstruct

            rt = write_rtstruct(volume, request.reference, request.out, source_series_uid=request.reference_series_uid,
                                names=names, algorithm_type=request.algorithm_type,
                                series_description=request.description or "MedTorch structures")
            checks = [{"number": r.number, "label": r.label_value, "name": r.name, "volume_mm3": r.written_volume_mm3,
                       "centroid_lps": list(r.written_centroid or ()), "shift_voxels": r.shift_voxels,
                       "volume_diff_voxels": r.volume_diff_voxels, "contours": r.contours} for r in rt.rois]
            values = {"paths": [str(rt.path)], "series_uid": rt.series_instance_uid, "checks": checks,
                      "reference_series_uid": rt.source_series_uid}
    else:
        from medtorch.io.dicom_write import write_dicom_series

        res = write_dicom_series(volume, request.out, reference=request.reference,
                                 reference_series_uid=request.reference_series_uid, patient_id=request.patient_id,
                                 patient_name=request.patient_name,
                                 modality=None if request.modality == "auto" else request.modality,
                                 series_description=request.description or "MedTorch derived volume",
                                 derivation=request.derivation)
        values = {"paths": [str(p) for p in res.files], "folder": str(Path(res.folder)),
                  "series_uid": res.series_instance_uid, "study_uid": res.study_instance_uid,
                  "reference_series_uid": res.reference_series_uid, "modality": res.modality,
                  "storage": res.storage, "checks": {"corner_shift_voxels": res.corner_shift_voxels,
                                                     "value_difference": res.value_difference,
                                                     "precision": res.precision}}
    if progress is not None:
        progress(1.0, "written and checked")
    return OperationResult(values=values)
