"""Transform files in ITK's convention (a transform maps fixed-space points to moving-space points).

* Linear transforms (``.tfm``, ``.txt``, ``.h5``, ``.mat``) of any ITK type read as a 4x4
  LPS matrix, measured by mapping points (exact for every affine type).
* Displacement fields read as a ``kind='vector'`` :class:`~medtorch.volume.Volume` (LPS mm),
  from a ``DisplacementFieldTransform`` file or a 3-component vector image (``.nii.gz``,
  ``.nrrd``, ``.mha``).

Both forms are what :func:`medtorch.resample.resample` takes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medtorch.errors import MedTorchInputError
from medtorch.io import VOLUME_EXTENSIONS, atomic_path, read_volume
from medtorch.volume import Volume

LINEAR_EXTENSIONS = (".tfm", ".txt", ".h5", ".hdf5", ".mat")


def affine_from_sitk(transform: object) -> np.ndarray:
    """4x4 LPS matrix of a linear SimpleITK transform (fixed point -> moving point)."""
    origin = np.array(transform.TransformPoint((0.0, 0.0, 0.0)))  # type: ignore[attr-defined]
    m = np.eye(4)
    for axis in range(3):
        e = [0.0, 0.0, 0.0]
        e[axis] = 1.0
        m[:3, axis] = np.array(transform.TransformPoint(tuple(e))) - origin  # type: ignore[attr-defined]
    m[:3, 3] = origin
    return m


def read_transform(path: str | os.PathLike[str]) -> np.ndarray | Volume:
    """Read a transform file: a 4x4 LPS matrix (linear) or a displacement-field volume."""
    import SimpleITK as sitk

    p = Path(path)
    if not p.exists():
        raise MedTorchInputError(f"transform file not found: {p}", "check the path")
    name = p.name.lower()
    if any(name.endswith(ext) for ext in VOLUME_EXTENSIONS):
        field = read_volume(p)
        if field.kind != "vector" or field.num_components != 3:
            raise MedTorchInputError(f"{p.name} is not a 3-component displacement field",
                                     "give a linear transform file (.tfm/.h5) or a 3-component vector image")
        return field
    try:
        tx = sitk.ReadTransform(str(p))
    except RuntimeError as exc:
        raise MedTorchInputError(f"{p.name} could not be read as an ITK transform",
                                 "give a .tfm, .txt, .h5 or .mat transform written by ITK, SimpleITK or Slicer") from exc
    if tx.GetDimension() != 3:
        raise MedTorchInputError(f"{p.name} is a {tx.GetDimension()}D transform", "give a 3D transform")
    if tx.IsLinear():
        return affine_from_sitk(tx)
    try:
        disp = sitk.DisplacementFieldTransform(tx)
        return Volume.from_sitk(disp.GetDisplacementField(), kind="vector")
    except (RuntimeError, TypeError) as exc:
        raise MedTorchInputError(f"{p.name} holds a {tx.GetName()}, which MedTorch cannot use yet",
                                 "export it as a displacement field (a 3-component vector image)") from exc


def write_affine(matrix: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write a 4x4 LPS matrix (fixed -> moving) as an ITK affine transform file, atomically."""
    import SimpleITK as sitk

    m = np.asarray(matrix, dtype=np.float64)
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(tuple(m[:3, :3].reshape(-1)))
    tx.SetTranslation(tuple(m[:3, 3]))
    p = Path(path)
    if not p.name.lower().endswith(LINEAR_EXTENSIONS):
        raise MedTorchInputError(f"unknown transform format for {p.name}", "use .tfm, .txt or .h5")
    with atomic_path(p) as tmp:
        sitk.WriteTransform(tx, str(tmp))
    return p
