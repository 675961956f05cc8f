"""What a registration returns, and how its transform is written to files.

Transform composition (every engine, every file): ``p_moving = A(p + d(p))`` -- the
displacement field ``d`` (on the fixed grid, LPS mm, zero outside it) is applied first, then
the affine ``A``. That is ITK's ``CompositeTransform`` with ``A`` added first and ``d`` second
(the last added is applied first), and the list ``[A, d]`` of :data:`medtorch.resample.TransformLike`.

Files written by :meth:`RegistrationResult.write_transform`:

* linear (no field): ``.tfm``, ``.txt``, ``.h5``, ``.hdf5`` or ``.mat`` -- an ITK ``AffineTransform``;
* deformable, ``.h5`` / ``.hdf5``: an ITK ``CompositeTransform`` holding the ``AffineTransform``
  and the ``DisplacementFieldTransform`` in the order above (Slicer, ANTs, ITK and
  ``SimpleITK.ReadTransform`` read it; :func:`read_registration_transform` reads it back);
* deformable, a volume file (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``): one displacement field
  on the fixed grid with the affine folded in, ``t(p) = A(p + d(p)) - p``, as
  :func:`medtorch.transform_io.read_transform` reads it (exact on the fixed grid; outside it
  ITK treats the displacement as zero).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medtorch.errors import MedTorchInputError
from medtorch.resample import TransformLike, reference_grid, transform_points
from medtorch.transform_io import LINEAR_EXTENSIONS, write_affine
from medtorch.verdict import Verdict
from medtorch.volume import Geometry, Volume

__all__ = ["RegistrationResult", "composite_sitk_transform", "read_registration_transform", "total_displacement"]

H5_EXTENSIONS = (".h5", ".hdf5")


def _suffix_matches(path: Path, extensions: tuple[str, ...]) -> bool:
    name = path.name.lower()
    return any(name.endswith(ext) for ext in extensions)


def total_displacement(affine: np.ndarray, displacement: Volume | None, geometry: Geometry,
                       dtype: np.dtype | type = np.float64, chunk_slices: int = 16) -> Volume:
    """The whole transform as one displacement field on ``geometry``: ``t(p) = A(p + d(p)) - p``.

    Computed in float64, a few slices at a time.
    """
    out = np.empty(geometry.shape_zyx + (3,), dtype=dtype)
    transform: list[Any] = [np.asarray(affine, np.float64)]
    if displacement is not None:
        transform.append(displacement)
    with torch.no_grad():
        for k0 in range(0, geometry.size[2], chunk_slices):
            k1 = min(k0 + chunk_slices, geometry.size[2])
            p = reference_grid(geometry, dtype=torch.float64, k_range=(k0, k1))
            out[k0:k1] = (transform_points(p, transform) - p).numpy().astype(dtype)
    return Volume(out, geometry, "vector", {"what": "displacement field (LPS, mm), fixed -> moving"})


def composite_sitk_transform(affine: np.ndarray, displacement: Volume | None) -> Any:
    """A SimpleITK transform for ``A(p + d(p))``: an ``AffineTransform`` or a ``CompositeTransform``."""
    import SimpleITK as sitk

    m = np.asarray(affine, dtype=np.float64)
    aff = sitk.AffineTransform(3)
    aff.SetMatrix(tuple(float(v) for v in m[:3, :3].reshape(-1)))
    aff.SetTranslation(tuple(float(v) for v in m[:3, 3]))
    if displacement is None:
        return aff
    field_img = Volume(np.asarray(displacement.array, dtype=np.float64), displacement.geometry, "vector").to_sitk()
    disp = sitk.DisplacementFieldTransform(field_img)
    return sitk.CompositeTransform([aff, disp])  # the last one is applied first: A(d(p))


def read_registration_transform(path: str | os.PathLike[str]) -> np.ndarray | Volume | list[Any]:
    """Read any transform file :meth:`RegistrationResult.write_transform` writes.

    Returns what :func:`medtorch.resample.resample` takes: a 4x4 matrix, a displacement
    field, or ``[A, d]`` for a composite ``.h5`` (ITK order: ``d`` is applied first).
    """
    import SimpleITK as sitk

    from medtorch.transform_io import affine_from_sitk, read_transform

    p = Path(path)
    if not _suffix_matches(p, H5_EXTENSIONS) or not p.exists():
        return read_transform(p)
    try:
        tx = sitk.ReadTransform(str(p))
    except RuntimeError as exc:
        raise MedTorchInputError(f"{p.name} could not be read as an ITK transform",
                                 "give a transform file written by MedTorch, ITK, SimpleITK or Slicer") from exc
    if tx.GetName() != "CompositeTransform":
        return read_transform(p)
    comp = sitk.CompositeTransform(tx)
    out: list[Any] = []
    for i in range(comp.GetNumberOfTransforms()):
        t = comp.GetNthTransform(i)
        if t.IsLinear():
            out.append(affine_from_sitk(t))
        else:
            try:
                out.append(Volume.from_sitk(sitk.DisplacementFieldTransform(t).GetDisplacementField(), kind="vector"))
            except (RuntimeError, TypeError) as exc:
                raise MedTorchInputError(f"{p.name} holds a {t.GetName()}, which MedTorch cannot use",
                                         "export it as a displacement field") from exc
    return out


@dataclass
class RegistrationResult:
    """The outcome of :func:`medtorch.registration.register`.

    Attributes:
        affine: 4x4 LPS matrix, ITK convention (fixed point -> moving point).
        displacement: ``None`` for rigid/affine; for deformable a ``kind='vector'`` volume on
            the fixed grid (LPS mm), applied **before** the affine: ``p_moving = A(p + d(p))``.
        resampled: the moving volume resampled onto the fixed grid through the transform
            (``None`` only when ``register(..., resample_output=False)``).
        report: figures of the run: ``final_similarity``, ``metric``, ``mode``, ``engine``,
            ``jacobian_min``, ``folding_percent``, ``runtime_s``, ``device``, ``seed``, and
            ``tre_mean_mm`` / ``tre_p95_mm`` / ``tre_max_mm`` when landmark pairs were given.
        control_field: for the torch engine's deformable mode, the same field on its coarse
            control grid (corners on the fixed grid's corner voxels): linear interpolation of it
            at the fixed voxels gives ``displacement`` exactly; a compact form for files and
            Slicer grid transforms. ``None`` otherwise.
        verdict: whether to trust the result, judged without landmarks (pass / warn / fail
            and its checks; :mod:`medtorch.registration.verdict`); ``None`` when
            ``register(..., verdict=False)``.
        similarity_map: with ``register(..., similarity_map=True)``, the verdict's local
            similarity (0-1) as a volume on the fixed grid; else ``None``.
    """

    affine: np.ndarray
    displacement: Volume | None
    resampled: Volume | None
    report: dict[str, Any] = field(default_factory=dict)
    control_field: Volume | None = None
    verdict: Verdict | None = None
    similarity_map: Volume | None = None

    @property
    def transform(self) -> TransformLike:
        """The transform as :func:`medtorch.resample.resample` takes it (``A`` or ``[A, d]``)."""
        if self.displacement is None:
            return np.asarray(self.affine, dtype=np.float64)
        return [np.asarray(self.affine, dtype=np.float64), self.displacement]

    def map_points(self, points_fixed_lps: np.ndarray) -> np.ndarray:
        """Map ``(N, 3)`` fixed-space LPS points to moving space (float64)."""
        pts = np.asarray(points_fixed_lps, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise MedTorchInputError(f"points must be an (N, 3) array, got shape {pts.shape}",
                                     "give one LPS point (x, y, z in mm) per row")
        with torch.no_grad():
            return transform_points(torch.from_numpy(pts.copy()), self.transform).numpy()

    def total_displacement(self, geometry: Geometry | None = None) -> Volume:
        """The whole transform as one displacement field (default: on the fixed grid)."""
        if geometry is None and self.displacement is None and self.resampled is None:
            raise MedTorchInputError("no grid to compute the displacement on", "give the geometry")
        geom = geometry if geometry is not None else (
            self.displacement.geometry if self.displacement is not None else self.resampled.geometry)  # type: ignore[union-attr]
        return total_displacement(self.affine, self.displacement, geom)

    def to_sitk(self) -> Any:
        """The transform as a SimpleITK transform (``AffineTransform`` or ``CompositeTransform``)."""
        return composite_sitk_transform(self.affine, self.displacement)

    def write_transform(self, path: str | os.PathLike[str]) -> Path:
        """Write the transform (ITK convention, fixed -> moving), atomically; see the module docstring."""
        import SimpleITK as sitk

        from medtorch.io import VOLUME_EXTENSIONS, atomic_path, write_volume

        p = Path(path)
        if self.displacement is None:
            if not _suffix_matches(p, LINEAR_EXTENSIONS):
                raise MedTorchInputError(f"unknown transform format for {p.name}",
                                         "use .tfm, .txt, .h5 or .mat for a rigid or affine transform")
            return write_affine(self.affine, p)
        if _suffix_matches(p, H5_EXTENSIONS):
            tx = self.to_sitk()
            with atomic_path(p) as tmp:
                sitk.WriteTransform(tx, str(tmp))
            return p
        if _suffix_matches(p, VOLUME_EXTENSIONS):
            field_vol = total_displacement(self.affine, self.displacement, self.displacement.geometry, np.float32)
            return write_volume(field_vol, p)
        raise MedTorchInputError(
            f"a deformable transform cannot be written as {p.name}",
            "use .h5 (ITK composite transform) or a displacement field image (.nii.gz, .nrrd, .mha)",
        )
