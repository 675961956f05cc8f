"""Reading and writing volumes: NIfTI, NRRD, MHA/MHD and DICOM series.

``read_volume(path)`` opens a file or a DICOM folder as a :class:`~medtorch.volume.Volume`;
``write_volume(volume, path)`` writes atomically, choosing the format by extension.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from medtorch.errors import MedTorchInputError
from medtorch.io.atomic import atomic_path, check_writable, write_text_atomic
from medtorch.volume import Volume, VolumeKind

__all__ = [
    "read_volume",
    "read_frames",
    "write_volume",
    "atomic_path",
    "check_writable",
    "write_text_atomic",
    "VOLUME_EXTENSIONS",
]

#: File name endings that ``read_volume``/``write_volume`` handle with SimpleITK.
VOLUME_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".seg.nrrd")


def _has_volume_extension(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(ext) for ext in VOLUME_EXTENSIONS)


def _read_sitk(path: Path) -> Any:
    import SimpleITK as sitk

    if not path.exists():
        raise MedTorchInputError(f"file not found: {path}", "check the path")
    if path.stat().st_size == 0:
        raise MedTorchInputError(f"{path} is empty (0 bytes)", "the file was not saved completely: export it again")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        text = str(exc).splitlines()
        detail = next((ln for ln in text if "rror" in ln or "nable" in ln), text[-1] if text else "")
        raise MedTorchInputError(
            f"{path.name} could not be read as an image (it is truncated, corrupt or not an image: {detail.strip()[:200]})",
            "check that the file is complete (copy or export it again) and is NIfTI, NRRD, MHA or DICOM",
        ) from exc


def read_frames(path: str | os.PathLike[str], kind: VolumeKind | None = None) -> list[Volume]:
    """Read a file as a list of 3D volumes: one for a 3D file, one per frame for 4D NIfTI/NRRD."""
    import SimpleITK as sitk

    p = Path(path)
    if p.is_dir():
        return [read_volume(p)]
    img = _read_sitk(p)
    if img.GetDimension() == 4:
        size = list(img.GetSize())
        frames = []
        for t in range(size[3]):
            frames.append(Volume.from_sitk(sitk.Extract(img, size[:3] + [0], [0, 0, 0, t]), kind=kind,
                                           metadata={"source": str(p), "frame": t}))
        return frames
    return [read_volume(p, kind=kind)]


def read_volume(path: str | os.PathLike[str], kind: VolumeKind | None = None, series_uid: str | None = None) -> Volume:
    """Open a 3D volume from a NIfTI/NRRD/MHA file, a DICOM file or a DICOM series folder.

    Args:
        path: file or folder.
        kind: force ``"label"`` for label maps; by default scalar, or vector for multi-component files.
        series_uid: for a DICOM folder holding several series, which one to read.
    """
    p = Path(path)
    if p.is_dir() or (p.exists() and not _has_volume_extension(p) and _looks_like_dicom(p)):
        from medtorch.io.dicom import read_dicom_series

        vol = read_dicom_series(p, series_uid=series_uid)
        if kind is not None and kind != vol.kind:
            vol = Volume(vol.array, vol.geometry, kind, vol.metadata)
        return vol
    img = _read_sitk(p)
    if img.GetDimension() == 2:
        raise MedTorchInputError(
            f"{p.name} is a 2D image (size {img.GetSize()}): a 3D volume is needed",
            "load the whole series (a DICOM folder or a 3D file) rather than one slice",
        )
    if img.GetDimension() == 4:
        raise MedTorchInputError(
            f"{p.name} is 4D ({img.GetSize()[3]} frames): a 3D volume is needed",
            "pick one frame first (medtorch.io.read_frames returns them one by one)",
        )
    vol = Volume.from_sitk(img, kind=kind, metadata={"source": str(p)})
    if kind is None and img.GetNumberOfComponentsPerPixel() == 1 and p.name.lower().endswith(".seg.nrrd"):
        vol.kind = "label"
    return vol


def _looks_like_dicom(p: Path) -> bool:
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
        return len(head) == 132 and head[128:132] == b"DICM"
    except OSError:
        return False


def write_volume(volume: Volume, path: str | os.PathLike[str], compress: bool = True) -> Path:
    """Write ``volume`` atomically; format from the extension (.nrrd, .nii.gz, .nii, .mha, ...)."""
    import SimpleITK as sitk

    p = Path(path)
    if not _has_volume_extension(p):
        raise MedTorchInputError(
            f"unknown output format for {p.name}",
            "use one of " + ", ".join(VOLUME_EXTENSIONS),
        )
    img = volume.to_sitk()
    if volume.kind == "label" and volume.array.dtype.kind == "f":
        img = sitk.Cast(img, sitk.sitkInt16 if np.abs(volume.array).max() < 32767 else sitk.sitkInt32)
    with atomic_path(p) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=compress)
    return p
