"""One way to carry a volume: voxels plus origin, spacing and direction.

Conventions (the same everywhere in MedTorch):

* Physical space is **LPS** in millimetres, as in ITK, SimpleITK and DICOM. Slicer's
  RAS differs by the sign of the first two axes; :meth:`Geometry.ijk_to_ras` and
  :meth:`Geometry.from_ijk_to_ras` do that conversion and nothing else does.
* Voxel arrays are stored **k, j, i** (slowest to fastest: ``array[z, y, x]``), as
  ``SimpleITK.GetArrayFromImage`` and ``slicer.util.arrayFromVolume`` return them.
  :attr:`Geometry.size` is in ITK order ``(i, j, k)``.
* ``direction`` is a 3x3 matrix whose *columns* are the unit vectors of the i, j and k
  axes in LPS, as ``SimpleITK.Image.GetDirection`` gives it row by row.
* Multi-component (vector, RGB, multi-channel) voxels carry the component last:
  ``array[z, y, x, c]``. Torch tensors carry it first: ``tensor[c, z, y, x]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import ArrayLike

from medtorch import coords
from medtorch.errors import MedTorchInputError

if TYPE_CHECKING:  # pragma: no cover
    import SimpleITK as sitk
    import torch

VolumeKind = Literal["scalar", "label", "vector"]

#: Largest deviation from orthonormal accepted in a direction matrix (``|D^T D - I|``).
DIRECTION_TOLERANCE = 1e-4

LPS_TO_RAS = coords.LPS_TO_RAS


def _as_vec3(values: Any, what: str) -> np.ndarray:
    # A private copy: a frozen Geometry must not change when the caller's array does.
    arr = np.array(values, dtype=np.float64, copy=True).reshape(-1)
    if arr.shape != (3,):
        raise MedTorchInputError(
            f"{what} must have 3 values, got {arr.size}", "give one value per axis (i, j, k)"
        )
    return arr


@dataclass(frozen=True, eq=False, init=False)
class Geometry:
    """The voxel grid of a volume in LPS physical space.

    ``==`` is exact equality of size, origin, spacing and direction; use
    :meth:`isclose` to compare within a tolerance. Geometries are hashable.
    """

    size: tuple[int, int, int]
    origin: np.ndarray = field(default_factory=lambda: np.zeros(3))
    spacing: np.ndarray = field(default_factory=lambda: np.ones(3))
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __init__(
        self,
        size: Sequence[int],
        origin: ArrayLike | None = None,
        spacing: ArrayLike | None = None,
        direction: ArrayLike | None = None,
    ) -> None:
        """Any array-likes are accepted; they are copied into read-only float64 arrays.

        Defaults: origin (0, 0, 0), spacing (1, 1, 1), identity direction.
        """
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "origin", np.zeros(3) if origin is None else origin)
        object.__setattr__(self, "spacing", np.ones(3) if spacing is None else spacing)
        object.__setattr__(self, "direction", np.eye(3) if direction is None else direction)
        self.__post_init__()

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        object.__setattr__(self, "origin", _as_vec3(self.origin, "origin"))
        object.__setattr__(self, "spacing", _as_vec3(self.spacing, "spacing"))
        d = np.array(self.direction, dtype=np.float64, copy=True)
        if d.size != 9:
            raise MedTorchInputError(
                f"direction must be a 3x3 matrix, got {d.size} values",
                "give the nine direction cosines of a 3D volume",
            )
        object.__setattr__(self, "direction", d.reshape(3, 3))
        for a in (self.origin, self.spacing, self.direction):
            a.setflags(write=False)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Geometry):
            return NotImplemented
        return (
            self.size == other.size
            and bool(np.array_equal(self.origin, other.origin))
            and bool(np.array_equal(self.spacing, other.spacing))
            and bool(np.array_equal(self.direction, other.direction))
        )

    def __hash__(self) -> int:
        # ``+ 0.0`` turns -0.0 into 0.0, which ``==`` treats as equal.
        return hash((self.size, *((a + 0.0).tobytes() for a in (self.origin, self.spacing, self.direction))))

    # -- validation --------------------------------------------------------------
    def validate(self, name: str = "volume") -> "Geometry":
        """Raise :class:`MedTorchInputError` for a geometry that no algorithm can use."""
        if len(self.size) != 3 or any(s <= 0 for s in self.size):
            raise MedTorchInputError(
                f"{name} is empty (size {self.size})", "load a volume that has voxels in every axis"
            )
        if not np.all(np.isfinite(self.spacing)) or np.any(self.spacing <= 0):
            raise MedTorchInputError(
                f"{name} has zero, negative or non-finite spacing {tuple(round(float(v), 4) for v in self.spacing)}",
                "fix the voxel spacing in the file header (every spacing must be > 0 mm)",
            )
        if not np.all(np.isfinite(self.origin)):
            raise MedTorchInputError(f"{name} has a non-finite origin", "fix the origin in the file header")
        d = self.direction
        if not np.all(np.isfinite(d)) or np.abs(d.T @ d - np.eye(3)).max() > DIRECTION_TOLERANCE:
            raise MedTorchInputError(
                f"{name} has a non-orthonormal direction matrix",
                "fix the direction cosines in the header (axes must be unit length and perpendicular); "
                "a sheared acquisition (gantry tilt) must be resampled first",
            )
        return self

    # -- matrices -------------------------------------------------------------------
    def ijk_to_lps(self) -> np.ndarray:
        """4x4 matrix mapping a continuous index (i, j, k, 1) to LPS millimetres."""
        m = np.eye(4)
        m[:3, :3] = self.direction @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    def lps_to_ijk(self) -> np.ndarray:
        """Inverse of :meth:`ijk_to_lps`."""
        return np.linalg.inv(self.ijk_to_lps())

    def ijk_to_ras(self) -> np.ndarray:
        """4x4 IJK-to-RAS matrix, as Slicer's ``vtkMRMLVolumeNode.SetIJKToRASMatrix`` takes it."""
        return LPS_TO_RAS @ self.ijk_to_lps()

    @classmethod
    def from_ijk_to_lps(cls, matrix: ArrayLike, size: Sequence[int]) -> "Geometry":
        m = np.asarray(matrix, dtype=np.float64).reshape(4, 4)
        linear = m[:3, :3]
        spacing = np.linalg.norm(linear, axis=0)
        if np.any(spacing <= 0):
            raise MedTorchInputError(
                "the index-to-physical matrix has a zero-length axis", "fix the volume's spacing"
            )
        return cls(size=size, origin=m[:3, 3], spacing=spacing, direction=linear / spacing)

    @classmethod
    def from_ijk_to_ras(cls, matrix: ArrayLike, size: Sequence[int]) -> "Geometry":
        """Geometry from Slicer's IJK-to-RAS matrix."""
        return cls.from_ijk_to_lps(LPS_TO_RAS @ np.asarray(matrix, dtype=np.float64), size)

    # -- helpers --------------------------------------------------------------------
    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """Array shape (k, j, i) of a volume on this grid."""
        return (self.size[2], self.size[1], self.size[0])

    @property
    def num_voxels(self) -> int:
        return int(np.prod(self.size))

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    def index_to_physical(self, ijk: np.ndarray) -> np.ndarray:
        """Map (N, 3) continuous indices (i, j, k) to (N, 3) LPS points."""
        ijk = np.asarray(ijk, dtype=np.float64).reshape(-1, 3)
        m = self.ijk_to_lps()
        return ijk @ m[:3, :3].T + m[:3, 3]

    def physical_to_index(self, points: np.ndarray) -> np.ndarray:
        """Map (N, 3) LPS points to (N, 3) continuous indices (i, j, k)."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        m = self.lps_to_ijk()
        return pts @ m[:3, :3].T + m[:3, 3]

    def corners(self) -> np.ndarray:
        """The 8 corner voxel centres in LPS, (8, 3)."""
        n = np.array(self.size, dtype=np.float64) - 1
        ijk = np.array([[a, b, c] for a in (0, n[0]) for b in (0, n[1]) for c in (0, n[2])])
        return self.index_to_physical(ijk)

    def center(self) -> np.ndarray:
        """Physical centre of the grid (LPS)."""
        return self.index_to_physical((np.array(self.size, dtype=np.float64) - 1) / 2.0)[0]

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned LPS bounding box (min, max) of the voxel centres."""
        c = self.corners()
        return c.min(axis=0), c.max(axis=0)

    def isclose(self, other: "Geometry", atol: float = 1e-5) -> bool:
        """Same grid within ``atol`` (mm for origin/spacing, unitless for direction)."""
        return (
            tuple(self.size) == tuple(other.size)
            and bool(np.allclose(self.origin, other.origin, atol=atol))
            and bool(np.allclose(self.spacing, other.spacing, atol=atol))
            and bool(np.allclose(self.direction, other.direction, atol=atol))
        )

    def with_size_spacing(self, size: Sequence[int], spacing: ArrayLike) -> "Geometry":
        """The same origin and direction with another size and spacing."""
        return Geometry(size, self.origin, spacing, self.direction)


@dataclass(eq=False)
class Volume:
    """Voxels (``array[z, y, x]`` or ``array[z, y, x, c]``) on a :class:`Geometry`.

    ``kind`` is ``"label"`` for label maps (integer voxels, nearest-neighbour
    resampling), ``"vector"`` for multi-component voxels, else ``"scalar"``.
    ``metadata`` carries free-form strings (DICOM tags, the seed of a run, ...).

    The array is kept as given (no copy). ``==`` is identity; compare ``array`` and
    ``geometry`` explicitly.
    """

    array: np.ndarray
    geometry: Geometry
    kind: VolumeKind = "scalar"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        self.array = arr
        if self.kind not in ("scalar", "label", "vector"):
            raise MedTorchInputError(
                f"unknown volume kind {self.kind!r}", "use 'scalar', 'label' or 'vector'"
            )
        expected = self.geometry.shape_zyx
        if self.kind == "vector":
            if arr.ndim != 4 or arr.shape[:3] != expected:
                raise MedTorchInputError(
                    f"vector volume array has shape {arr.shape}, expected {expected} + (components,)",
                    "pass array[z, y, x, c] matching the geometry's size",
                )
        elif arr.shape != expected:
            raise MedTorchInputError(
                f"volume array has shape {arr.shape}, but its geometry needs {expected} (z, y, x)",
                "pass array[z, y, x] matching the geometry's size (i, j, k)",
            )

    # -- construction ---------------------------------------------------------------
    @classmethod
    def from_array(
        cls,
        array: np.ndarray,
        origin: Any = (0.0, 0.0, 0.0),
        spacing: Any = (1.0, 1.0, 1.0),
        direction: Any = None,
        kind: VolumeKind = "scalar",
        metadata: dict[str, Any] | None = None,
    ) -> "Volume":
        """Volume from an ``array[z, y, x]`` (or ``[z, y, x, c]`` when ``kind='vector'``)."""
        arr = np.asarray(array)
        if kind == "vector":
            if arr.ndim != 4:
                raise MedTorchInputError(
                    f"a vector volume needs a 4D array [z, y, x, c], got {arr.ndim}D",
                    "add the component axis last",
                )
        elif arr.ndim != 3:
            raise MedTorchInputError(
                f"a 3D volume is needed, got a {arr.ndim}D array of shape {arr.shape}",
                "give a 3D array [z, y, x]; stack 2D slices into a volume first, "
                "or pick one frame of a 4D series",
            )
        size = (arr.shape[2], arr.shape[1], arr.shape[0])
        geom = Geometry(
            size=size,
            origin=origin,
            spacing=spacing,
            direction=np.eye(3) if direction is None else direction,
        )
        return cls(arr, geom, kind, dict(metadata or {}))

    def with_array(self, array: np.ndarray, kind: VolumeKind | None = None) -> "Volume":
        """A new volume on the same grid with other voxels (metadata copied)."""
        return Volume(np.asarray(array), self.geometry, kind or self.kind, dict(self.metadata))

    def copy(self) -> "Volume":
        return Volume(self.array.copy(), self.geometry, self.kind, dict(self.metadata))

    # -- properties -----------------------------------------------------------------
    @property
    def origin(self) -> np.ndarray:
        return self.geometry.origin

    @property
    def spacing(self) -> np.ndarray:
        return self.geometry.spacing

    @property
    def direction(self) -> np.ndarray:
        return self.geometry.direction

    @property
    def size(self) -> tuple[int, int, int]:
        return self.geometry.size

    @property
    def num_components(self) -> int:
        return int(self.array.shape[3]) if self.kind == "vector" else 1

    @property
    def is_2d(self) -> bool:
        """True for a 2D image: one slice along k (how :mod:`medtorch.io` stores PNG, JPEG,
        TIFF, BMP and 2D NIfTI/NRRD files), or metadata ``spatial_dims`` = ``"2"``."""
        return is_single_slice(self.geometry) or str(self.metadata.get("spatial_dims", "")) == "2"

    # -- SimpleITK ------------------------------------------------------------------
    def to_sitk(self) -> "sitk.Image":
        """SimpleITK image with the same voxels, type and geometry (a copy)."""
        import SimpleITK as sitk

        arr = self.array
        if arr.dtype == np.bool_:
            arr = arr.astype(np.uint8)
        img = sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=self.kind == "vector")
        img.SetOrigin(tuple(float(v) for v in self.origin))
        img.SetSpacing(tuple(float(v) for v in self.spacing))
        img.SetDirection(tuple(float(v) for v in self.direction.reshape(-1)))
        return img

    @classmethod
    def from_sitk(
        cls, image: "sitk.Image", kind: VolumeKind | None = None, metadata: dict[str, Any] | None = None
    ) -> "Volume":
        """Volume from a 3D SimpleITK image. Multi-component pixels become ``kind='vector'``."""
        import SimpleITK as sitk

        if image.GetDimension() != 3:
            raise MedTorchInputError(
                f"a 3D image is needed, got a {image.GetDimension()}D image of size {image.GetSize()}",
                "give a 3D volume; for a 4D series write one frame first ('medtorch convert --in FILE --frame N --out frame.nii.gz')",
            )
        arr = sitk.GetArrayFromImage(image)
        n_comp = image.GetNumberOfComponentsPerPixel()
        if kind is None:
            kind = "vector" if n_comp > 1 else "scalar"
        geom = Geometry(
            size=image.GetSize(),
            origin=image.GetOrigin(),
            spacing=image.GetSpacing(),
            direction=image.GetDirection(),
        )
        if kind != "vector" and n_comp > 1:
            raise MedTorchInputError(
                f"image has {n_comp} components per voxel", "open it as a vector volume"
            )
        return cls(arr, geom, kind, dict(metadata or {}))

    # -- torch ------------------------------------------------------------------------
    def to_torch(self, device: "torch.device | str | None" = None, dtype: "torch.dtype | None" = None) -> "torch.Tensor":
        """Tensor ``[c, z, y, x]`` (c = 1 for scalar and label volumes) on ``device``.

        The geometry does not travel with the tensor: keep the :class:`Volume` (or its
        :attr:`geometry`) and rebuild with :meth:`from_torch`. The tensor never shares
        memory with :attr:`array` (an in-place op on it cannot change the volume); uint16
        becomes int32 and uint32 int64, as torch lacks general unsigned types.
        """
        import torch

        arr = self.array
        if arr.dtype == np.uint16:
            arr = arr.astype(np.int32)
        elif arr.dtype == np.uint32:
            arr = arr.astype(np.int64)
        elif arr.dtype.byteorder not in ("=", "|"):
            arr = arr.astype(arr.dtype.newbyteorder("="))  # torch takes native byte order only
        arr = np.ascontiguousarray(arr)
        if not arr.flags.writeable:
            arr = arr.copy()  # torch.from_numpy warns on read-only arrays
        base = torch.from_numpy(arr)
        t = base.permute(3, 0, 1, 2) if self.kind == "vector" else base.unsqueeze(0)
        t = t.to(device=device, dtype=dtype).contiguous()
        if np.may_share_memory(arr, self.array) and t.device.type == "cpu" and (
            t.untyped_storage().data_ptr() == base.untyped_storage().data_ptr()
        ):
            # Never hand out a view of the volume's voxels: an in-place op on the
            # tensor would silently change the input volume.
            t = t.clone()
        return t

    @classmethod
    def from_torch(
        cls,
        tensor: "torch.Tensor",
        geometry: Geometry,
        kind: VolumeKind = "scalar",
        metadata: dict[str, Any] | None = None,
        dtype: np.dtype | type | None = None,
    ) -> "Volume":
        """Volume from a ``[c, z, y, x]`` or ``[z, y, x]`` tensor on any device.

        The voxels are copied (the volume never shares memory with ``tensor``). Half
        precision (float16, bfloat16, e.g. from mixed precision) comes back as float32
        unless ``dtype`` says otherwise.
        """
        import torch

        t = tensor.detach()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.to(torch.float32)
        if t.ndim == 5 and t.shape[0] == 1:
            t = t[0]
        if t.ndim == 4 and t.shape[0] == 1 and kind != "vector":
            t = t[0]
        arr = t.cpu().numpy()
        if kind == "vector":
            if arr.ndim != 4:
                raise MedTorchInputError(
                    f"a vector volume needs a [c, z, y, x] tensor, got shape {tuple(t.shape)}",
                    "keep the channel axis first",
                )
            arr = np.moveaxis(arr, 0, -1)
        if dtype is not None:
            arr = arr.astype(dtype)
        out = np.ascontiguousarray(arr)
        if t.device.type == "cpu" and np.may_share_memory(out, t.numpy()):
            out = out.copy()
        return cls(out, geometry, kind, dict(metadata or {}))


# -- validation --------------------------------------------------------------------------


def is_single_slice(geometry: Geometry) -> bool:
    """True when the grid has one slice along k (size ``(i, j, 1)``, i and j > 1): a 2D image."""
    return int(geometry.size[2]) == 1 and min(geometry.size[:2]) > 1


def check_volume(
    volume: Volume,
    name: str = "input volume",
    *,
    allow_constant: bool = False,
    allow_vector: bool = False,
    allow_nonfinite: bool = False,
    allow_2d: bool = False,
) -> Volume:
    """Check that an algorithm can use ``volume``; raise :class:`MedTorchInputError` if not.

    Covers: empty volume, 2D volume (a single slice; accepted with ``allow_2d`` when the
    slice is along k, see :func:`is_single_slice`), vector voxels where scalars are
    needed, zero/negative spacing, non-orthonormal direction, NaN or Inf voxels (unless
    ``allow_nonfinite``: the caller then has a policy for them) and (unless
    ``allow_constant``) a volume of one constant value. The volume is not modified.
    """
    volume.geometry.validate(name)
    if volume.kind == "vector" and not allow_vector:
        raise MedTorchInputError(
            f"{name} has {volume.num_components} components per voxel but a scalar volume is needed",
            "pick one channel, or convert the vector (e.g. RGB) volume to a scalar volume first",
        )
    arr = volume.array
    if arr.size == 0:
        raise MedTorchInputError(f"{name} is empty", "load a volume that has voxels")
    if min(volume.size) < 2 and not (allow_2d and is_single_slice(volume.geometry)):
        raise MedTorchInputError(
            f"{name} is 2D (size {volume.size}): a 3D volume is needed",
            "load the whole series (all slices) rather than one image",
        )
    if np.issubdtype(arr.dtype, np.floating) and not allow_nonfinite:
        finite = np.isfinite(arr)
        if not finite.all():
            n_nan = int(np.isnan(arr).sum())
            n_inf = int(arr.size - finite.sum() - n_nan)
            raise MedTorchInputError(
                f"{name} contains {n_nan} NaN and {n_inf} infinite voxels",
                "replace them (e.g. with 0 or the background value) before running",
            )
    if not allow_constant:
        lo, hi = arr.min(), arr.max()
        if lo == hi:
            raise MedTorchInputError(
                f"{name} has one constant value ({lo}) in every voxel",
                "check that the right volume was selected and that it loaded completely",
            )
    return volume
