"""2D images (PNG, JPEG, TIFF, BMP) as one-slice volumes, read and written with SimpleITK.

A 2D image is a :class:`~medtorch.volume.Volume` with one slice along k: ``array[0, y, x]``
(grey) or ``array[0, y, x, c]`` (colour, ``kind='vector'``), size ``(width, height, 1)``,
spacing ``(sx, sy, 1)`` and metadata ``spatial_dims = "2"`` (see
:attr:`~medtorch.volume.Volume.is_2d`), ``image_format`` (``png``, ``jpeg``, ...) and
``color`` (``grey`` or ``rgb``). Alpha channels are dropped on reading (a fused image has no
transparency); grey + alpha becomes grey. RGB files whose three channels are equal (many
published "grey" images are stored so) stay RGB here: :func:`is_grey_rgb` tells, and the
fusion reads them as grey.

Writing (:func:`write_image`): a one-slice scalar volume becomes a 1-channel PNG/TIFF/...
(uint8, or uint16 for 16-bit data), a one-slice vector volume of 3 components an RGB file.
Float volumes must hold values in [0, 1] (MedTorch's fused output) and are written as
``round(255 x)``; other float ranges are refused (they would be clipped silently).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from medtorch.errors import MedTorchInputError
from medtorch.volume import Geometry, Volume

__all__ = ["IMAGE_EXTENSIONS", "has_image_extension", "image_format", "is_grey_rgb", "read_image",
           "volume_from_2d_sitk", "write_image"]

#: 2D image formats read and written through SimpleITK.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".bmp": "bmp", ".tif": "tiff", ".tiff": "tiff"}


def has_image_extension(path: str | os.PathLike[str]) -> bool:
    return Path(path).name.lower().endswith(IMAGE_EXTENSIONS)


def image_format(path: str | os.PathLike[str]) -> str:
    """``png``, ``jpeg``, ``bmp`` or ``tiff`` from the file name."""
    name = Path(path).name.lower()
    for ext, fmt in _FORMATS.items():
        if name.endswith(ext):
            return fmt
    raise MedTorchInputError(f"{Path(path).name} is not a 2D image format MedTorch writes",
                             "use .png, .jpg, .bmp or .tif")


def is_grey_rgb(volume: Volume) -> bool:
    """True for a colour (vector) volume of 3 or 4 components whose R, G and B are equal."""
    if volume.kind != "vector" or volume.num_components not in (3, 4):
        return False
    arr = volume.array
    return bool(np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2]))


def volume_from_2d_sitk(img: Any, metadata: dict[str, Any] | None = None) -> Volume:
    """A 2D SimpleITK image as a one-slice volume (see the module docstring); alpha dropped."""
    import SimpleITK as sitk

    if img.GetDimension() != 2:
        raise MedTorchInputError(f"a 2D image was expected, got {img.GetDimension()}D", "give a 2D image")
    arr = sitk.GetArrayFromImage(img)  # [y, x] or [y, x, c]
    n_comp = img.GetNumberOfComponentsPerPixel()
    meta = dict(metadata or {})
    if n_comp == 2:  # grey + alpha
        arr, n_comp = arr[..., 0], 1
    elif n_comp == 4:  # RGBA
        arr, n_comp = arr[..., :3], 3
    if n_comp not in (1, 3):
        raise MedTorchInputError(f"the image has {n_comp} channels per pixel",
                                 "give a grey or RGB image (1 or 3 channels)")
    d2 = np.asarray(img.GetDirection(), dtype=np.float64).reshape(2, 2)
    direction = np.eye(3)
    direction[:2, :2] = d2
    sx, sy = (float(v) for v in img.GetSpacing())
    ox, oy = (float(v) for v in img.GetOrigin())
    geom = Geometry((img.GetSize()[0], img.GetSize()[1], 1), (ox, oy, 0.0), (sx, sy, 1.0), direction)
    meta.setdefault("spatial_dims", "2")
    meta.setdefault("color", "rgb" if n_comp == 3 else "grey")
    arr = np.ascontiguousarray(arr[None])
    return Volume(arr, geom, "vector" if n_comp == 3 else "scalar", meta)


def read_image(path: str | os.PathLike[str]) -> Volume:
    """Read a PNG, JPEG, TIFF or BMP file as a one-slice volume (see the module docstring)."""
    import SimpleITK as sitk

    p = Path(path)
    if not p.exists():
        raise MedTorchInputError(f"file not found: {p}", "check the path")
    if p.stat().st_size == 0:
        raise MedTorchInputError(f"{p} is empty (0 bytes)", "the file was not saved completely: export it again")
    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        detail = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise MedTorchInputError(
            f"{p.name} could not be read as an image ({detail[-1][:200] if detail else 'unknown error'})",
            "check that the file is a complete PNG, JPEG, TIFF or BMP image") from exc
    if img.GetDimension() == 3 and img.GetSize()[2] == 1:  # some readers give one-frame 3D images
        img = img[:, :, 0]
    if img.GetDimension() != 2:
        raise MedTorchInputError(f"{p.name} holds {img.GetSize()[2]} frames (a multi-page image)",
                                 "give single 2D images (one page per file)")
    fmt = next((f for e, f in _FORMATS.items() if p.name.lower().endswith(e)), p.suffix.lstrip(".").lower())
    return volume_from_2d_sitk(img, {"source": str(p), "image_format": fmt})


def write_image(volume: Volume, path: str | os.PathLike[str]) -> Path:
    """Write a one-slice volume as a 2D image file, atomically (see the module docstring)."""
    import SimpleITK as sitk

    from medtorch.io.atomic import atomic_path
    from medtorch.volume import is_single_slice

    p = Path(path)
    fmt = image_format(p)
    if not is_single_slice(volume.geometry):
        raise MedTorchInputError(
            f"{p.name}: a {fmt.upper()} file holds one 2D image, the volume has size {volume.size}",
            "write volumes as .nrrd or .nii.gz (2D image formats take one slice)")
    arr = np.asarray(volume.array)[0]
    if volume.kind == "vector" and arr.shape[-1] != 3:
        raise MedTorchInputError(f"{p.name}: a colour image needs 3 components, the volume has {arr.shape[-1]}",
                                 "write RGB (3 components) or a grey image")
    if volume.kind == "label" and arr.dtype.kind == "f":
        arr = np.rint(arr)
    if arr.dtype.kind == "f":
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        if not (np.isfinite(arr).all() and lo >= -1e-6 and hi <= 1.0 + 1e-6):
            raise MedTorchInputError(
                f"{p.name}: float values from {lo:g} to {hi:g} do not fit an 8-bit image (values in [0, 1] are "
                "written as 0..255)", "scale the image to [0, 1] first, or write .nrrd/.nii.gz to keep the values")
        arr = np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype.kind in "iu":
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise MedTorchInputError(f"{p.name}: integer values from {lo} to {hi} do not fit a 16-bit image",
                                     "rescale to 0..255 (or 0..65535) first, or write .nrrd/.nii.gz")
        if fmt in ("jpeg", "bmp") and hi > 255:
            raise MedTorchInputError(f"{p.name}: {fmt.upper()} holds 8-bit values, the image reaches {hi}",
                                     "write .png or .tif for 16-bit values, or rescale to 0..255")
        arr = arr.astype(np.uint8 if hi <= 255 and arr.dtype.itemsize == 1 else
                         (np.uint8 if fmt in ("jpeg", "bmp") else np.uint16))
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=volume.kind == "vector")
    img.SetSpacing(tuple(float(v) for v in volume.spacing[:2]))
    img.SetOrigin(tuple(float(v) for v in volume.origin[:2]))
    with atomic_path(p) as tmp:
        try:
            # the temporary name must keep the extension: SimpleITK picks the writer by it
            sitk.WriteImage(img, str(tmp), imageIO=_IMAGE_IO[fmt])
        except RuntimeError as exc:
            raise MedTorchInputError(f"{p.name} could not be written ({str(exc).strip().splitlines()[-1][:200]})",
                                     "check that the output folder is writable and has free space") from exc
    return p


_IMAGE_IO = {"png": "PNGImageIO", "jpeg": "JPEGImageIO", "bmp": "BMPImageIO", "tiff": "TIFFImageIO"}
