"""Reading and writing volumes: NIfTI, NRRD, MHA/MHD, DICOM series, and 2D images.

``read_volume(path)`` opens a file or a DICOM folder as a :class:`~medtorch.volume.Volume`;
``write_volume(volume, path)`` writes atomically, choosing the format by extension.

2D images (PNG, JPEG, TIFF, BMP; :mod:`medtorch.io.images`) are read as one-slice volumes
flagged 2D (:attr:`~medtorch.volume.Volume.is_2d`); grey images are scalar, colour ones RGB
vector volumes. A 2D NIfTI/NRRD/MHA file is read the same way with ``allow_2d=True`` and
refused otherwise (in those formats one slice is usually a mistake where a volume was meant).
Operations that need 3D refuse 2D volumes themselves (:func:`medtorch.volume.check_volume`).
A one-slice volume is written to ``.png``/``.jpg``/``.bmp``/``.tif`` as a 2D image.
"""

from __future__ import annotations

import contextlib
import contextvars
import gzip
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from medtorch.errors import MedTorchInputError
from medtorch.io.atomic import _os_error, atomic_path, check_writable, write_json_atomic, write_text_atomic
from medtorch.io.images import IMAGE_EXTENSIONS, has_image_extension, read_image, volume_from_2d_sitk, write_image
from medtorch.volume import Volume, VolumeKind

__all__ = [
    "read_volume",
    "read_frames",
    "write_volume",
    "atomic_path",
    "check_writable",
    "write_json_atomic",
    "write_text_atomic",
    "VOLUME_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "read_image",
    "write_image",
]

#: File name endings that ``read_volume``/``write_volume`` handle with SimpleITK.
VOLUME_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".seg.nrrd")


def _has_volume_extension(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(ext) for ext in VOLUME_EXTENSIONS)


def _nifti_expected_bytes(header: bytes) -> int | None:
    """Bytes a complete NIfTI-1/-2 file holds (header + voxels), or None if unknown."""
    if len(header) < 4:
        return None
    for order in ("<", ">"):
        sizeof_hdr = struct.unpack(order + "i", header[:4])[0]
        if sizeof_hdr == 348 and len(header) >= 348:  # NIfTI-1
            dim = struct.unpack(order + "8h", header[40:56])
            bitpix = struct.unpack(order + "h", header[72:74])[0]
            vox_offset = int(struct.unpack(order + "f", header[108:112])[0])
            break
        if sizeof_hdr == 540 and len(header) >= 540:  # NIfTI-2
            dim = struct.unpack(order + "8q", header[16:80])
            bitpix = struct.unpack(order + "h", header[14:16])[0]
            vox_offset = struct.unpack(order + "q", header[168:176])[0]
            break
    else:
        return None
    ndim = dim[0]
    if not 1 <= ndim <= 7 or bitpix <= 0 or bitpix % 8 or any(d < 0 for d in dim[1 : ndim + 1]):
        return None
    nvox = 1
    for d in dim[1 : ndim + 1]:
        nvox *= max(int(d), 1)
    return max(int(vox_offset), sizeof_hdr) + nvox * (bitpix // 8)


def _check_nifti_complete(path: Path) -> None:
    """Raise for a truncated NIfTI file.

    ITK's NIfTI reader fills the missing part of a truncated ``.nii``/``.nii.gz`` with
    zeros and reports nothing, so the size is checked here: the header's dimensions give
    the bytes a complete file holds; a ``.nii.gz`` is decompressed (streamed, not kept).
    """
    name = path.name.lower()
    try:
        if name.endswith(".nii"):
            with open(path, "rb") as fh:
                expected = _nifti_expected_bytes(fh.read(540))
            have = path.stat().st_size
        elif name.endswith(".nii.gz"):
            with open(path, "rb") as fh:
                if fh.read(2) != b"\x1f\x8b":
                    return  # not gzip: let the reader give its own error
            have = 0
            expected = None
            with gzip.open(path, "rb") as gz:
                head = gz.read(540)
                expected = _nifti_expected_bytes(head)
                if expected is None:
                    return
                have = len(head)
                while have < expected:
                    chunk = gz.read(min(1 << 24, expected - have))
                    if not chunk:
                        break
                    have += len(chunk)
        else:
            return
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise MedTorchInputError(
            f"{path.name} is truncated or corrupt (the compressed data ends early: {exc})",
            "the file was not saved or copied completely: copy or export it again",
        ) from exc
    if expected is not None and have < expected:
        raise MedTorchInputError(
            f"{path.name} is truncated: it holds {have} of the {expected} bytes its header announces",
            "the file was not saved or copied completely: copy or export it again",
        )


def _itk_error_detail(exc: RuntimeError, path: Path) -> str:
    """The most telling line of an ITK/SimpleITK exception text."""
    lines = []
    for ln in str(exc).splitlines():
        ln = ln.strip()
        if not ln or ln.startswith("Exception thrown in SimpleITK"):
            continue
        if ln.startswith("ITK ERROR:"):
            ln = ln.split("):", 1)[-1].strip() if "):" in ln else ln[len("ITK ERROR:"):].strip()
        if ln.startswith("sitk::ERROR:"):
            ln = ln[len("sitk::ERROR:"):].strip()
        # ITK appends the stale errno text, which is misleading for a file that exists.
        if ln.startswith("Reason:") and path.exists():
            continue
        lines.append(ln)
    return lines[-1][:200] if lines else ""


def _read_sitk(path: Path) -> Any:
    import SimpleITK as sitk

    if not path.exists():
        raise MedTorchInputError(f"file not found: {path}", "check the path")
    if path.stat().st_size == 0:
        raise MedTorchInputError(f"{path} is empty (0 bytes)", "the file was not saved completely: export it again")
    _check_nifti_complete(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise MedTorchInputError(
            f"{path.name} could not be read as an image (it is truncated, corrupt or not an image: "
            f"{_itk_error_detail(exc, path)})",
            "check that the file is complete (copy or export it again) and is NIfTI, NRRD, MHA or DICOM",
        ) from exc


def _volume_from_image(img: Any, p: Path, kind: VolumeKind | None, allow_2d: bool = False) -> Volume:
    if img.GetDimension() == 2:
        if allow_2d:
            vol = volume_from_2d_sitk(img, {"source": str(p)})
            if kind is not None and kind != vol.kind:
                vol = Volume(vol.array, vol.geometry, kind, vol.metadata)
            return vol
        raise MedTorchInputError(
            f"{p.name} is a 2D image (size {img.GetSize()}): a 3D volume is needed",
            "load the whole series (a DICOM folder or a 3D file) rather than one slice",
        )
    if img.GetDimension() == 4:
        raise MedTorchInputError(
            f"{p.name} is 4D ({img.GetSize()[3]} frames): a 3D volume is needed",
            f"write one frame as a 3D file first: 'medtorch convert --in {p.name} --frame N --out frame.nii.gz' "
            f"(N from 0 to {img.GetSize()[3] - 1})",
        )
    vol = Volume.from_sitk(img, kind=kind, metadata={"source": str(p)})
    if kind is None and img.GetNumberOfComponentsPerPixel() == 1 and p.name.lower().endswith(".seg.nrrd"):
        vol.kind = "label"
    return vol


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
    return [_volume_from_image(img, p, kind)]


#: Series choices a front end made for its input paths (see :func:`series_choices`).
_SERIES_CHOICES: contextvars.ContextVar[dict[Path, tuple[str | None, str]]] = contextvars.ContextVar(
    "medtorch_series_choices", default={})


@contextlib.contextmanager
def series_choices(choices: Mapping[str, tuple[str | None, str]] | Mapping[os.PathLike[str], tuple[str | None, str]]
                   ) -> Iterator[None]:
    """While active, :func:`read_volume` of a DICOM folder in ``choices`` reads the series chosen for
    it, and a folder of several series with none chosen is refused with a hint that names the front
    end's own option (``{path: (series_uid or None, "--moving-series-uid")}``). The command line
    uses it so that every command's every input can name its series with a flag of that command."""
    resolved = {Path(k).expanduser().resolve(): v for k, v in choices.items()}
    token = _SERIES_CHOICES.set({**_SERIES_CHOICES.get(), **resolved})
    try:
        yield
    finally:
        _SERIES_CHOICES.reset(token)


def read_volume(path: str | os.PathLike[str], kind: VolumeKind | None = None, series_uid: str | None = None,
                allow_2d: bool = False) -> Volume:
    """Open a 3D volume from a NIfTI/NRRD/MHA file, a DICOM file or a DICOM series folder,
    or a 2D image (PNG, JPEG, TIFF, BMP) as a one-slice volume.

    Args:
        path: file or folder.
        kind: force ``"label"`` for label maps; by default scalar, or vector for multi-component files.
        series_uid: for a DICOM folder holding several series, which one to read.
        allow_2d: read a 2D NIfTI/NRRD/MHA file as a one-slice volume (refused by default).
            Image files (PNG, ...) are always 2D and always read.
    """
    p = Path(path)
    if has_image_extension(p) and not p.is_dir():
        vol = read_image(p)
        if kind is not None and kind != vol.kind:
            vol = Volume(vol.array, vol.geometry, kind, vol.metadata)
        return vol
    if p.is_dir() or (p.exists() and not _has_volume_extension(p) and _looks_like_dicom(p)):
        from medtorch.io.dicom import read_dicom_series, series_hint

        chosen = _SERIES_CHOICES.get().get(p.expanduser().resolve())
        if chosen is not None:
            uid, flag = chosen
            with series_hint(flag):
                vol = read_dicom_series(p, series_uid=series_uid if series_uid is not None else uid)
        else:
            vol = read_dicom_series(p, series_uid=series_uid)
        if kind is not None and kind != vol.kind:
            vol = Volume(vol.array, vol.geometry, kind, vol.metadata)
        return vol
    return _volume_from_image(_read_sitk(p), p, kind, allow_2d)


def _looks_like_dicom(p: Path) -> bool:
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
        return len(head) == 132 and head[128:132] == b"DICM"
    except OSError:
        return False


#: Formats whose voxels go to a second file beside the header.
_DETACHED_EXTENSIONS = (".nhdr", ".mhd")


def _write_failed(exc: RuntimeError, final: Path, nbytes: int) -> MedTorchInputError:
    """Turn a SimpleITK write error into a user-facing error (ITK loses the errno)."""
    text = str(exc)
    try:
        free = shutil.disk_usage(final.parent).free
    except OSError:
        free = None
    if "No space left" in text or "ENOSPC" in text or (free is not None and free < nbytes + (1 << 20)):
        return MedTorchInputError(
            f"the disk filled up while writing {final}", "free some disk space or write to another disk"
        )
    return MedTorchInputError(
        f"{final.name} could not be written ({_itk_error_detail(exc, final)})",
        "check that the output folder is writable and has free space, or choose another output path",
    )


def write_volume(volume: Volume, path: str | os.PathLike[str], compress: bool = True) -> Path:
    """Write ``volume`` atomically; format from the extension (.nrrd, .nii.gz, .nii, .mha, ...).

    A failure (full disk, unwritable folder, cancel) leaves no partial file under the
    final name and leaves a file already there untouched. Detached formats (``.nhdr``,
    ``.mhd``) are written to a temporary folder beside the target and their data file is
    moved in before the header.
    """
    import SimpleITK as sitk

    p = Path(path)
    if has_image_extension(p):
        return write_image(volume, p)
    if not _has_volume_extension(p):
        raise MedTorchInputError(
            f"unknown output format for {p.name}",
            "use one of " + ", ".join(VOLUME_EXTENSIONS) + " (or, for one slice, " + ", ".join(IMAGE_EXTENSIONS) + ")",
        )
    img = volume.to_sitk()
    if str(volume.metadata.get("spatial_dims", "")) == "2" and volume.geometry.size[2] == 1:
        img = img[:, :, 0]  # a 2D image stays 2D in NIfTI/NRRD/MHA
    if volume.kind == "label" and volume.array.dtype.kind == "f":
        img = sitk.Cast(img, sitk.sitkInt16 if np.abs(volume.array).max() < 32767 else sitk.sitkInt32)
    nbytes = int(volume.array.nbytes)
    if p.name.lower().endswith(_DETACHED_EXTENSIONS):
        return _write_detached(img, p, compress, nbytes)
    with atomic_path(p) as tmp:
        try:
            sitk.WriteImage(img, str(tmp), useCompression=compress)
        except RuntimeError as exc:
            raise _write_failed(exc, p, nbytes) from exc
    return p


def _write_detached(img: Any, p: Path, compress: bool, nbytes: int) -> Path:
    import SimpleITK as sitk

    final = check_writable(p)
    try:
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent))
    except OSError as exc:
        raise MedTorchInputError(
            f"cannot write in the output folder {final.parent} ({exc.strerror})",
            "choose an output path in a folder you can write to",
        ) from exc
    try:
        try:
            sitk.WriteImage(img, str(tmpdir / final.name), useCompression=compress)
        except RuntimeError as exc:
            raise _write_failed(exc, final, nbytes) from exc
        header = tmpdir / final.name
        for f in sorted(tmpdir.iterdir()):
            if f != header:
                os.replace(f, final.parent / f.name)
        os.replace(header, final)
    except OSError as exc:
        err = _os_error(exc, final)
        if err is not None:
            raise err from exc
        raise
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return p
