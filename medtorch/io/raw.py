"""Volumes backed by a read-only ``numpy.memmap``: open files larger than RAM without reading them.

* :func:`open_raw` maps a headerless raw file whose layout you know.
* :func:`memmap_volume` reads the header of an **uncompressed** NRRD (``.nrrd`` with attached
  data, ``.nhdr`` with a detached data file), MetaImage (``.mha``, ``.mhd`` + raw) or NIfTI
  (``.nii``, NIfTI-1 or NIfTI-2, and ``.hdr``/``.img`` pairs) file itself and maps the voxels.

The returned :class:`~medtorch.volume.Volume` has ``array`` set to the ``numpy.memmap``
(mode ``"r"``): nothing is read until it is used, and writing to it raises. The geometry is
the one SimpleITK reports for the same file (LPS; NRRD RAS/LAS spaces and NIfTI's RAS are
converted as ITK converts them). Compressed files are refused: decompress them first (e.g.
``gunzip``, or save uncompressed from Slicer). A file shorter than its header promises is
refused as truncated.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medtorch import coords
from medtorch.errors import MedTorchInputError
from medtorch.volume import Geometry, Volume, VolumeKind

__all__ = ["MEMMAP_EXTENSIONS", "memmap_volume", "open_raw"]

#: File name endings :func:`memmap_volume` understands.
MEMMAP_EXTENSIONS = (".nrrd", ".nhdr", ".mha", ".mhd", ".nii", ".hdr")

_COMPRESSED_FIX = (
    "decompress it first (for example 'gunzip file.nii.gz', or save it again without compression "
    "from Slicer or SimpleITK), or open it with medtorch.io.read_volume if it fits in memory"
)

ByteOrder = Literal["little", "big", "native", "<", ">", "="]


# -- the memory map ----------------------------------------------------------------------


def _byteorder_char(byteorder: str | None) -> str | None:
    if byteorder is None:
        return None
    table = {"little": "<", "<": "<", "big": ">", ">": ">", "native": "=", "=": "=", "|": "|"}
    if byteorder not in table:
        raise MedTorchInputError(f"unknown byte order {byteorder!r}", "use 'little', 'big' or 'native'")
    return table[byteorder]


def _map(
    path: Path,
    shape: tuple[int, ...],
    dtype: np.dtype,
    offset: int,
    order: Literal["C", "F"] = "C",
) -> np.memmap:
    """Read-only memmap of ``shape``/``dtype`` at byte ``offset``; refuse short files."""
    if not path.is_file():
        raise MedTorchInputError(f"data file not found: {path}", "check the path (and the header's data file name)")
    if any(int(s) <= 0 for s in shape):
        raise MedTorchInputError(f"the voxel array shape {shape} has an empty axis", "check the sizes in the header")
    if offset < 0:
        raise MedTorchInputError(f"the data offset {offset} is negative", "give an offset >= 0")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = path.stat().st_size
    if have < offset + nbytes:
        raise MedTorchInputError(
            f"{path.name} is truncated: its voxels need {nbytes} bytes from byte {offset} "
            f"({offset + nbytes} in all) but the file has only {have} bytes",
            "the file was not copied or saved completely: copy or export it again",
        )
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)


def _make_volume(mm: np.ndarray, geometry: Geometry, kind: VolumeKind, metadata: dict[str, Any]) -> Volume:
    vol = Volume(mm, geometry, kind, metadata)
    vol.array = mm  # Volume.__post_init__ turns it into a plain ndarray view; keep the memmap itself
    return vol


def open_raw(
    path: str | os.PathLike[str],
    shape_zyx: Sequence[int],
    dtype: Any,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    direction: Any = None,
    offset: int = 0,
    order: Literal["C", "F"] = "C",
    byteorder: ByteOrder | None = None,
    kind: VolumeKind | None = None,
) -> Volume:
    """Map a headerless raw volume file without reading it.

    Args:
        path: the raw file.
        shape_zyx: ``(z, y, x)`` for a scalar volume or ``(z, y, x, c)`` for a vector volume.
            With ``order="C"`` (the usual layout) x varies fastest in the file.
        dtype: voxel type (anything ``numpy.dtype`` accepts, e.g. ``"int16"`` or ``">f4"``).
        spacing, origin, direction: the geometry in ITK order (i, j, k) and LPS; ``direction``
            is 3x3 with the axis unit vectors as columns (identity when ``None``).
        offset: bytes to skip at the start of the file (a header).
        order: ``"C"`` or ``"F"`` memory layout of ``shape_zyx``, as ``numpy.memmap`` takes it.
        byteorder: ``"little"``, ``"big"`` or ``"native"``; ``None`` keeps ``dtype``'s own.
        kind: ``"scalar"``, ``"label"`` or ``"vector"``; ``None``: vector for 4-value shapes.

    Returns:
        A :class:`Volume` whose ``array`` is a read-only ``numpy.memmap``.
    """
    p = Path(path)
    shape = tuple(int(s) for s in shape_zyx)
    if len(shape) not in (3, 4):
        raise MedTorchInputError(
            f"shape_zyx must have 3 values (z, y, x) or 4 (z, y, x, c), got {len(shape)}",
            "give the array shape slowest axis first",
        )
    if kind is None:
        kind = "vector" if len(shape) == 4 else "scalar"
    if (kind == "vector") != (len(shape) == 4):
        raise MedTorchInputError(
            f"a {kind} volume needs a {'4' if kind == 'vector' else '3'}-value shape, got {shape}",
            "give (z, y, x) for scalar and label volumes and (z, y, x, c) for vector volumes",
        )
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise MedTorchInputError(f"unknown voxel type {dtype!r}", "give a numpy dtype such as 'int16'") from exc
    bo = _byteorder_char(byteorder)
    if bo is not None and dt.itemsize > 1:
        dt = dt.newbyteorder(bo)
    if order not in ("C", "F"):
        raise MedTorchInputError(f"unknown order {order!r}", "use 'C' or 'F'")
    geom = Geometry(
        size=(shape[2], shape[1], shape[0]),
        origin=origin,
        spacing=spacing,
        direction=np.eye(3) if direction is None else direction,
    )
    geom.validate(p.name)
    mm = _map(p, shape, dt, int(offset), order)
    return _make_volume(mm, geom, kind, {"source": str(p), "memmap": True, "data_file": str(p), "data_offset": int(offset)})


# -- NRRD ----------------------------------------------------------------------------------

_NRRD_TYPES: dict[np.dtype[Any], tuple[str, ...]] = {
    np.dtype("i1"): ("signed char", "int8", "int8_t"),
    np.dtype("u1"): ("uchar", "unsigned char", "uint8", "uint8_t"),
    np.dtype("i2"): ("short", "short int", "signed short", "signed short int", "int16", "int16_t"),
    np.dtype("u2"): ("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
    np.dtype("i4"): ("int", "signed int", "int32", "int32_t"),
    np.dtype("u4"): ("uint", "unsigned int", "uint32", "uint32_t"),
    np.dtype("i8"): ("longlong", "long long", "long long int", "signed long long", "signed long long int",
                     "int64", "int64_t"),
    np.dtype("u8"): ("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"),
    np.dtype("f4"): ("float",),
    np.dtype("f8"): ("double",),
}
_NRRD_TYPE_LOOKUP: dict[str, np.dtype[Any]] = {name: dt for dt, names in _NRRD_TYPES.items() for name in names}

#: NRRD spaces and the sign flips that take them to LPS (:data:`medtorch.coords.NRRD_SPACE_SIGNS`).
_NRRD_SPACES = coords.NRRD_SPACE_SIGNS

_MAX_HEADER_BYTES = 1 << 20


def _nrrd_vector(text: str, what: str, name: str) -> np.ndarray | None:
    t = text.strip()
    if t.lower() == "none":
        return None
    m = re.fullmatch(r"\(([^()]*)\)", t)
    if m is None:
        raise MedTorchInputError(f"{name}: cannot read the {what} {t!r}", "check the NRRD header")
    try:
        return np.array([float(v) for v in m.group(1).split(",")], dtype=np.float64)
    except ValueError as exc:
        raise MedTorchInputError(f"{name}: cannot read the {what} {t!r}", "check the NRRD header") from exc


def _read_nrrd_header(path: Path) -> tuple[dict[str, str], int, bool]:
    """(fields, byte offset after the header, header ended with a blank line)."""
    fields: dict[str, str] = {}
    with open(path, "rb") as fh:
        magic = fh.readline()
        if not magic.startswith(b"NRRD"):
            raise MedTorchInputError(f"{path.name} is not a NRRD file (no NRRD magic line)", "check the file")
        blank = False
        while True:
            line = fh.readline()
            if fh.tell() > _MAX_HEADER_BYTES:
                raise MedTorchInputError(f"{path.name}: the NRRD header does not end", "check the file")
            if not line:
                break
            text = line.decode("latin-1").rstrip("\r\n")
            if text == "":
                blank = True
                break
            if text.startswith("#"):
                continue
            kv, field_sep = text.find(":="), text.find(": ")
            if kv >= 0 and (field_sep < 0 or kv < field_sep):
                continue  # a key:=value pair, not a field
            key, sep, value = text.partition(":")
            if not sep:
                raise MedTorchInputError(f"{path.name}: cannot read the NRRD header line {text!r}", "check the file")
            fields[key.strip().lower()] = value.strip()
        return fields, fh.tell(), blank


def _skip_lines(path: Path, start: int, lines: int) -> int:
    with open(path, "rb") as fh:
        fh.seek(start)
        for _ in range(lines):
            if not fh.readline():
                break
        return fh.tell()


def _memmap_nrrd(path: Path, kind: VolumeKind | None) -> Volume:
    fields, header_end, blank = _read_nrrd_header(path)
    name = path.name
    encoding = fields.get("encoding", "").lower()
    if encoding in ("gzip", "gz", "bzip2", "bz2", "zstd", "zst"):
        raise MedTorchInputError(f"{name} is compressed ({encoding} encoding) and cannot be memory-mapped", _COMPRESSED_FIX)
    if encoding != "raw":
        raise MedTorchInputError(
            f"{name} has '{encoding or 'no'}' encoding; only raw binary data can be memory-mapped",
            "save it again as uncompressed raw NRRD, or open it with medtorch.io.read_volume",
        )
    type_name = " ".join(fields.get("type", "").lower().split())
    if type_name not in _NRRD_TYPE_LOOKUP:
        raise MedTorchInputError(f"{name}: unsupported NRRD voxel type {type_name!r}", "convert it to an integer or float type")
    dt = _NRRD_TYPE_LOOKUP[type_name]
    if dt.itemsize > 1:
        endian = fields.get("endian", "little").lower()
        if endian not in ("little", "big"):
            raise MedTorchInputError(f"{name}: unknown endian {endian!r}", "the header must say little or big")
        dt = dt.newbyteorder("<" if endian == "little" else ">")
    try:
        dim = int(fields["dimension"])
        sizes = [int(v) for v in fields["sizes"].split()]
    except (KeyError, ValueError) as exc:
        raise MedTorchInputError(f"{name}: the NRRD header lacks a valid dimension or sizes", "check the file") from exc
    if len(sizes) != dim:
        raise MedTorchInputError(f"{name}: {dim} dimensions but {len(sizes)} sizes", "check the NRRD header")

    flips = np.ones(3)
    space = fields.get("space", "").lower()
    if space:
        if space not in _NRRD_SPACES:
            raise MedTorchInputError(f"{name}: unsupported NRRD space {space!r}", "use a left-posterior-superior or right-anterior-superior NRRD")
        flips = np.array(_NRRD_SPACES[space])

    directions: list[np.ndarray | None]
    if "space directions" in fields:
        parts = re.findall(r"\([^()]*\)|none", fields["space directions"], flags=re.IGNORECASE)
        if len(parts) != dim:
            raise MedTorchInputError(f"{name}: {dim} axes but {len(parts)} space directions", "check the NRRD header")
        directions = [_nrrd_vector(p, "space direction", name) for p in parts]
    else:
        directions = []
        kinds_text = fields.get("kinds", "").lower().split()
        spacings_text = fields.get("spacings", "").split()
        for ax in range(dim):
            k = kinds_text[ax] if ax < len(kinds_text) else "domain"
            if k in ("domain", "space", "time") or dim == 3:
                directions.append(np.zeros(3))  # filled below
            else:
                directions.append(None)
        spatial_axes = [ax for ax, d in enumerate(directions) if d is not None]
        for n, ax in enumerate(spatial_axes):
            s = 1.0
            if ax < len(spacings_text):
                try:
                    s = float(spacings_text[ax])
                except ValueError:
                    s = 1.0
                if not np.isfinite(s):
                    s = 1.0
            v = np.zeros(3)
            if n < 3:
                v[n] = s
            directions[ax] = v
        flips = np.ones(3)
    spatial = [ax for ax, d in enumerate(directions) if d is not None]
    other = [ax for ax, d in enumerate(directions) if d is None]
    if len(spatial) != 3 or (other and other != [0]) or any(len(d) != 3 for d in directions if d is not None):
        raise MedTorchInputError(
            f"{name} is not a 3D volume (sizes {sizes}, {len(spatial)} spatial axes)",
            "memory-map 3D volumes (with at most one vector axis first); pick one frame of a 4D series first",
        )
    cols = np.stack([directions[ax] for ax in spatial], axis=1) * flips[:, None]  # type: ignore[misc]
    spacing = np.linalg.norm(cols, axis=0)
    if np.any(spacing <= 0):
        raise MedTorchInputError(f"{name}: a space direction has zero length", "fix the NRRD header")
    direction = cols / spacing
    origin = np.zeros(3)
    if "space origin" in fields:
        o = _nrrd_vector(fields["space origin"], "space origin", name)
        if o is None or len(o) != 3:
            raise MedTorchInputError(f"{name}: cannot read the space origin", "check the NRRD header")
        origin = o * flips
    elif "axis mins" in fields:
        mins = fields["axis mins"].split()
        vals = [float(mins[ax]) if ax < len(mins) and mins[ax].lower() != "nan" else 0.0 for ax in spatial]
        origin = np.array(vals)

    data_name = fields.get("data file", fields.get("datafile"))
    if data_name is not None:
        if data_name.split()[0].upper() == "LIST" or len(data_name.split()) > 1 or "%" in data_name:
            raise MedTorchInputError(
                f"{name} keeps its voxels in several files ({data_name!r})",
                "save it again as a single .nrrd file (or .nhdr with one data file)",
            )
        data_path = Path(data_name)
        if not data_path.is_absolute():
            data_path = path.parent / data_path
        if data_path.name.lower().endswith((".gz", ".bz2", ".zst")):
            raise MedTorchInputError(f"{name}'s data file {data_path.name} is compressed", _COMPRESSED_FIX)
        start = 0
    else:
        if not blank:
            raise MedTorchInputError(f"{name} has no data: its header neither ends with a blank line nor names a data file",
                                     "check that the file is complete")
        data_path = path
        start = header_end

    shape_file = tuple(reversed(sizes))  # numpy C order: slowest (last NRRD axis) first
    nbytes = int(np.prod(sizes, dtype=np.int64)) * dt.itemsize
    line_skip = int(fields.get("line skip", fields.get("lineskip", "0")) or 0)
    byte_skip = int(fields.get("byte skip", fields.get("byteskip", "0")) or 0)
    offset = _skip_lines(data_path, start, line_skip) if line_skip > 0 and data_path.is_file() else start
    if byte_skip == -1:
        if not data_path.is_file():
            raise MedTorchInputError(f"data file not found: {data_path}", "check the header's data file name")
        offset = data_path.stat().st_size - nbytes
        if offset < start:
            raise MedTorchInputError(
                f"{data_path.name} is truncated: its voxels need {nbytes} bytes but the file is shorter",
                "the file was not copied or saved completely: copy or export it again",
            )
    elif byte_skip > 0:
        offset += byte_skip
    mm = _map(data_path, shape_file, dt, offset)
    vector = bool(other)
    if kind is None:
        kind = "vector" if vector else "scalar"
    if vector and kind != "vector":
        raise MedTorchInputError(f"{name} has {sizes[0]} components per voxel", "open it as a vector volume")
    geom = Geometry(size=(sizes[spatial[0]], sizes[spatial[1]], sizes[spatial[2]]), origin=origin, spacing=spacing,
                    direction=direction)
    geom.validate(name)
    return _make_volume(mm, geom, kind, {"source": str(path), "memmap": True, "data_file": str(data_path),
                                         "data_offset": int(offset)})


# -- MetaImage -------------------------------------------------------------------------------

_MET_TYPES = {
    "MET_CHAR": "i1", "MET_UCHAR": "u1", "MET_SHORT": "i2", "MET_USHORT": "u2",
    "MET_INT": "i4", "MET_UINT": "u4", "MET_LONG": "i4", "MET_ULONG": "u4",
    "MET_LONG_LONG": "i8", "MET_ULONG_LONG": "u8", "MET_FLOAT": "f4", "MET_DOUBLE": "f8",
}


def _memmap_meta(path: Path, kind: VolumeKind | None) -> Volume:
    name = path.name
    fields: dict[str, str] = {}
    with open(path, "rb") as fh:
        while True:
            line = fh.readline()
            if not line or fh.tell() > _MAX_HEADER_BYTES:
                raise MedTorchInputError(f"{name}: the MetaImage header has no ElementDataFile line",
                                         "check that the file is a complete .mha/.mhd file")
            text = line.decode("latin-1").strip()
            if not text:
                continue
            key, sep, value = text.partition("=")
            if not sep:
                raise MedTorchInputError(f"{name}: cannot read the MetaImage header line {text!r}", "check the file")
            fields[key.strip().lower()] = value.strip()
            if key.strip().lower() == "elementdatafile":
                header_end = fh.tell()
                break

    def flag(key: str) -> bool:
        return fields.get(key, "False").strip().lower() in ("true", "1", "yes")

    if flag("compresseddata"):
        raise MedTorchInputError(f"{name} is compressed (CompressedData = True) and cannot be memory-mapped", _COMPRESSED_FIX)
    if "binarydata" in fields and not flag("binarydata"):
        raise MedTorchInputError(f"{name} stores its voxels as text", "save it again as binary (uncompressed) MetaImage")
    ndims = int(fields.get("ndims", "0") or 0)
    dims = [int(v) for v in fields.get("dimsize", "").split()]
    if ndims != 3 or len(dims) != 3:
        raise MedTorchInputError(
            f"{name} is not a 3D volume (NDims = {ndims}, DimSize = {dims})",
            "memory-map 3D volumes; pick one frame of a 4D series first",
        )
    etype = fields.get("elementtype", "").upper().replace("_ARRAY", "")
    if etype not in _MET_TYPES:
        raise MedTorchInputError(f"{name}: unsupported ElementType {etype!r}", "convert it to an integer or float type")
    dt = np.dtype(_MET_TYPES[etype])
    msb = flag("binarydatabyteordermsb") or flag("elementbyteordermsb")
    if dt.itemsize > 1:
        dt = dt.newbyteorder(">" if msb else "<")
    channels = int(fields.get("elementnumberofchannels", "1") or 1)

    def floats(keys: Sequence[str], default: Sequence[float], count: int) -> np.ndarray:
        for k in keys:
            if k in fields:
                vals = [float(v) for v in fields[k].split()]
                if len(vals) != count:
                    raise MedTorchInputError(f"{name}: {k} has {len(vals)} values, expected {count}", "check the header")
                return np.array(vals)
        return np.array(default, dtype=np.float64)

    origin = floats(("offset", "origin", "position"), (0.0, 0.0, 0.0), 3)
    spacing = floats(("elementspacing", "elementsize"), (1.0, 1.0, 1.0), 3)
    matrix = floats(("transformmatrix", "rotation", "orientation"), tuple(np.eye(3).ravel()), 9)
    direction = matrix.reshape(3, 3).T  # consecutive triples are the axis vectors (columns)

    data_name = fields["elementdatafile"]
    header_size = int(float(fields.get("headersize", "0") or 0))
    if data_name.upper() == "LOCAL":
        data_path = path
        offset = header_end
    else:
        if data_name.split()[0].upper() == "LIST" or len(data_name.split()) > 1 or "%" in data_name:
            raise MedTorchInputError(
                f"{name} keeps its voxels in several files ({data_name!r})",
                "save it again as a single .mha file (or .mhd with one .raw file)",
            )
        data_path = Path(data_name)
        if not data_path.is_absolute():
            data_path = path.parent / data_path
        if data_path.name.lower().endswith((".gz", ".zraw")):
            raise MedTorchInputError(f"{name}'s data file {data_path.name} is compressed", _COMPRESSED_FIX)
        offset = 0
    shape = (dims[2], dims[1], dims[0]) + ((channels,) if channels > 1 else ())
    nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    if header_size == -1:
        if not data_path.is_file():
            raise MedTorchInputError(f"data file not found: {data_path}", "check the ElementDataFile name")
        offset = data_path.stat().st_size - nbytes
        if offset < (header_end if data_path == path else 0):
            raise MedTorchInputError(f"{data_path.name} is truncated: its voxels need {nbytes} bytes",
                                     "the file was not copied or saved completely: copy or export it again")
    elif header_size > 0:
        offset += header_size
    mm = _map(data_path, shape, dt, offset)
    if kind is None:
        kind = "vector" if channels > 1 else "scalar"
    if channels > 1 and kind != "vector":
        raise MedTorchInputError(f"{name} has {channels} components per voxel", "open it as a vector volume")
    if channels == 1 and kind == "vector":
        raise MedTorchInputError(f"{name} has one component per voxel", "open it as a scalar or label volume")
    geom = Geometry(size=tuple(dims), origin=origin, spacing=spacing, direction=direction)
    geom.validate(name)
    return _make_volume(mm, geom, kind, {"source": str(path), "memmap": True, "data_file": str(data_path),
                                         "data_offset": int(offset)})


# -- NIfTI ---------------------------------------------------------------------------------

_NIFTI_TYPES: dict[int, tuple[str, int]] = {
    2: ("u1", 1), 4: ("i2", 1), 8: ("i4", 1), 16: ("f4", 1), 64: ("f8", 1), 256: ("i1", 1),
    512: ("u2", 1), 768: ("u4", 1), 1024: ("i8", 1), 1280: ("u8", 1), 128: ("u1", 3), 2304: ("u1", 4),
}
_NIFTI_INTENT_VECTOR = 1007
_NIFTI_INTENT_SYMMATRIX = 1005
_NIFTI_XFORM_SCANNER_ANAT = 1


def _quaternion_matrix(b: float, c: float, d: float, qfac: float) -> np.ndarray:
    """Rotation (times qfac on the third column) from NIfTI's quaternion (b, c, d)."""
    a = 1.0 - (b * b + c * c + d * d)
    if a < 1e-7:
        norm = 1.0 / np.sqrt(b * b + c * c + d * d)
        b, c, d, a = b * norm, c * norm, d * norm, 0.0
    else:
        a = float(np.sqrt(a))
    r = np.array([
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
    ])
    r[:, 2] *= qfac
    return r


def _nifti_choose_matrix(hdr: dict[str, Any], name: str) -> np.ndarray | None:
    """The 4x4 voxel->RAS matrix ITK (5.4) uses, or ``None`` when neither form is set.

    ITK prefers the sform when it is a rigid+scale matrix (orthonormal after normalising its
    columns) and the qform is unset, or the sform is SCANNER_ANAT, or both are set and agree;
    otherwise it uses the qform.
    """
    qcode, scode = hdr["qform_code"], hdr["sform_code"]
    if qcode <= 0 and scode <= 0:
        return None
    dx, dy, dz = (float(v) for v in hdr["pixdim"][1:4])
    if qcode > 0:
        qfac = -1.0 if hdr["pixdim"][0] < 0 else 1.0
        scales = [v if v > 0 else 1.0 for v in (dx, dy, dz)]
        q = np.eye(4)
        qb, qc, qd = (float(v) for v in hdr["quatern"])
        q[:3, :3] = _quaternion_matrix(qb, qc, qd, qfac) * np.array(scales)[None, :]
        q[:3, 3] = hdr["qoffset"]
    else:
        q = np.diag([dx, dy, dz, 1.0])
    s = np.zeros((4, 4))
    if scode > 0:
        s[:3, :] = hdr["srow"]
        s[3, 3] = 1.0
    prefer_sform = bool(np.abs(s[:3, :3] - q[:3, :3]).max() <= 1e-5 and np.abs(s[:, 3] - q[:, 3]).sum() <= 1e-7)
    if not prefer_sform or scode > 0:
        lin = s[:3, :3]
        norms = np.linalg.norm(lin, axis=0)
        decomposable = bool(scode > 0 and np.all(norms > 0) and abs(np.linalg.det(lin)) > 1e-12)
        if decomposable:
            rot = lin / norms
            decomposable = bool(np.abs(rot @ rot.T - np.eye(3)).max() <= 1e-4)
        if decomposable:
            if qcode <= 0 and scode > 0 or scode == _NIFTI_XFORM_SCANNER_ANAT:
                prefer_sform = True
            elif qcode > 0 and scode > 0:
                qlin = q[:3, :3]
                qnorms = np.linalg.norm(qlin, axis=0)
                prefer_sform = bool(
                    np.abs(lin / norms - qlin / qnorms).max() <= 1e-4
                    and np.abs(np.sort(norms) - np.sort(qnorms)).max() <= 1e-4
                    and np.abs(s[:3, 3] - q[:3, 3]).max() <= 1e-4
                )
    if prefer_sform:
        return s
    if qcode > 0:
        return q
    raise MedTorchInputError(
        f"{name} has no usable orientation: its sform is not a rotation with scaling and it has no qform",
        "fix the NIfTI header (a sheared sform cannot be represented; resample the image first)",
    )


def _read_nifti_header(path: Path) -> tuple[dict[str, Any], str]:
    with open(path, "rb") as fh:
        head = fh.read(540)
    if head[:2] == b"\x1f\x8b":
        raise MedTorchInputError(f"{path.name} is gzip-compressed and cannot be memory-mapped", _COMPRESSED_FIX)
    if len(head) < 348:
        raise MedTorchInputError(f"{path.name} is truncated: it is shorter than a NIfTI header", "copy or export it again")
    for endian in ("<", ">"):
        size = struct.unpack(endian + "i", head[:4])[0]
        if size == 348:
            return _parse_nifti1(head, endian), endian
        if size == 540:
            if len(head) < 540:
                raise MedTorchInputError(f"{path.name} is truncated: it is shorter than a NIfTI-2 header", "copy or export it again")
            return _parse_nifti2(head, endian), endian
    raise MedTorchInputError(f"{path.name} is not a NIfTI file (bad header size)", "check the file")


def _parse_nifti1(h: bytes, e: str) -> dict[str, Any]:
    u = struct.unpack_from
    return {
        "version": 1,
        "dim": list(u(e + "8h", h, 40)),
        "intent_code": u(e + "h", h, 68)[0],
        "datatype": u(e + "h", h, 70)[0],
        "pixdim": list(u(e + "8f", h, 76)),
        "vox_offset": float(u(e + "f", h, 108)[0]),
        "scl_slope": float(u(e + "f", h, 112)[0]),
        "scl_inter": float(u(e + "f", h, 116)[0]),
        "xyzt_units": h[123],
        "qform_code": u(e + "h", h, 252)[0],
        "sform_code": u(e + "h", h, 254)[0],
        "quatern": list(u(e + "3f", h, 256)),
        "qoffset": list(u(e + "3f", h, 268)),
        "srow": np.array(u(e + "12f", h, 280), dtype=np.float64).reshape(3, 4),
        "magic": h[344:348],
    }


def _parse_nifti2(h: bytes, e: str) -> dict[str, Any]:
    u = struct.unpack_from
    return {
        "version": 2,
        "magic": h[4:12],
        "datatype": u(e + "h", h, 12)[0],
        "dim": list(u(e + "8q", h, 16)),
        "pixdim": list(u(e + "8d", h, 104)),
        "vox_offset": float(u(e + "q", h, 168)[0]),
        "scl_slope": float(u(e + "d", h, 176)[0]),
        "scl_inter": float(u(e + "d", h, 184)[0]),
        "qform_code": u(e + "i", h, 344)[0],
        "sform_code": u(e + "i", h, 348)[0],
        "quatern": list(u(e + "3d", h, 352)),
        "qoffset": list(u(e + "3d", h, 376)),
        "srow": np.array(u(e + "12d", h, 400), dtype=np.float64).reshape(3, 4),
        "xyzt_units": u(e + "i", h, 500)[0],
        "intent_code": u(e + "i", h, 504)[0],
    }


def _memmap_nifti(path: Path, kind: VolumeKind | None, allow_scaled: bool) -> Volume:
    name = path.name
    hdr, endian = _read_nifti_header(path)
    magic = hdr["magic"]
    single = magic[:3] in (b"n+1", b"n+2")
    pair = magic[:3] in (b"ni1", b"ni2")
    if not (single or pair):
        raise MedTorchInputError(f"{name} is an Analyze file or not NIfTI (magic {magic!r})",
                                 "convert it to NIfTI, or open it with medtorch.io.read_volume")
    if pair:
        data_path = path.with_suffix(".img")
        if not data_path.exists():
            data_path = path.with_suffix(".IMG")
        if not data_path.exists() and path.with_suffix(".img.gz").exists():
            raise MedTorchInputError(f"{name}'s image file is gzip-compressed", _COMPRESSED_FIX)
        offset = int(hdr["vox_offset"])
    else:
        data_path = path
        offset = int(hdr["vox_offset"])
        offset = max(offset, 352 if hdr["version"] == 1 else 544)
    dtcode = hdr["datatype"]
    if dtcode not in _NIFTI_TYPES:
        raise MedTorchInputError(f"{name}: NIfTI datatype {dtcode} cannot be memory-mapped",
                                 "convert it to an integer or float type (complex data is not supported)")
    code, per_voxel = _NIFTI_TYPES[dtcode]
    dt = np.dtype(code)
    if dt.itemsize > 1:
        dt = dt.newbyteorder("<" if endian == "<" else ">")
    dim = [int(v) for v in hdr["dim"]]
    ndim = dim[0]
    if not 1 <= ndim <= 7:
        raise MedTorchInputError(f"{name}: invalid NIfTI dim[0] = {ndim}", "check the file")
    sizes = [dim[i] if i <= ndim and dim[i] > 0 else 1 for i in range(1, 8)]
    nx, ny, nz, nt, nu = sizes[0], sizes[1], sizes[2], sizes[3], sizes[4]
    vector_intent = hdr["intent_code"] in (_NIFTI_INTENT_VECTOR, _NIFTI_INTENT_SYMMATRIX)
    if vector_intent:
        if nt != 1 or any(s != 1 for s in sizes[5:]):
            raise MedTorchInputError(f"{name} is a vector series (dim {dim[:ndim + 1]})", "pick one frame first")
        components = nu
    else:
        if any(s != 1 for s in sizes[3:]):
            raise MedTorchInputError(
                f"{name} is not a 3D volume (dim {dim[1:ndim + 1]})",
                "pick one frame of the 4D series first (medtorch.io.read_frames)",
            )
        components = 1
    if ndim < 3 or nz < 1:
        raise MedTorchInputError(f"{name} is a {ndim}D image: a 3D volume is needed", "load a 3D volume")
    slope, inter = hdr["scl_slope"], hdr["scl_inter"]
    if abs(slope) < np.finfo(np.float64).eps or not np.isfinite(slope):
        slope = 1.0
    if not np.isfinite(inter):
        inter = 0.0
    scaled = slope != 1.0 or inter != 0.0
    if scaled and not allow_scaled:
        raise MedTorchInputError(
            f"{name} stores scaled voxels (value = {slope:g} * stored + {inter:g}); a memory map gives the stored values",
            "pass allow_scaled=True and apply metadata['scl_slope'] and ['scl_inter'] yourself, "
            "or open it with medtorch.io.read_volume",
        )

    # geometry, as ITK reads it
    units = {1: 1e3, 2: 1.0, 3: 1e-3}.get(int(hdr["xyzt_units"]) & 0x07, 1.0)
    pixdim = [float(v) for v in hdr["pixdim"]]
    spacing = np.array([pixdim[i] if pixdim[i] != 0 and np.isfinite(pixdim[i]) else 1.0 for i in (1, 2, 3)]) * units
    mat = _nifti_choose_matrix(
        {**hdr, "pixdim": [pixdim[0]] + [p if p != 0 and np.isfinite(p) else 1.0 for p in pixdim[1:]]}, name
    )
    if mat is None:
        origin, direction = np.zeros(3), np.eye(3)
    else:
        origin = coords.lps_from_ras(mat[:3, 3])  # NIfTI's world is RAS
        cols = coords.flip_rows(mat[:3, :3])
        norms = np.linalg.norm(cols, axis=0)
        direction = cols / np.where(norms > 0, norms, 1.0)

    if per_voxel > 1:  # RGB / RGBA: components interleaved
        shape: tuple[int, ...] = (nz, ny, nx, per_voxel)
        mm = _map(data_path, shape, dt, offset)
        components = per_voxel
        array: np.ndarray = mm
    elif components > 1:  # vector intent: components slowest in the file
        mm = _map(data_path, (components, nz, ny, nx), dt, offset)
        array = np.moveaxis(mm, 0, -1)
    else:
        mm = _map(data_path, (nz, ny, nx), dt, offset)
        array = mm
    if kind is None:
        kind = "vector" if components > 1 else "scalar"
    if components > 1 and kind != "vector":
        raise MedTorchInputError(f"{name} has {components} components per voxel", "open it as a vector volume")
    geom = Geometry(size=(nx, ny, nz), origin=origin, spacing=spacing, direction=direction)
    geom.validate(name)
    meta: dict[str, Any] = {"source": str(path), "memmap": True, "data_file": str(data_path), "data_offset": offset}
    if scaled:
        meta.update({"scl_slope": slope, "scl_inter": inter})
    return _make_volume(array, geom, kind, meta)


# -- dispatch --------------------------------------------------------------------------------


def memmap_volume(path: str | os.PathLike[str], kind: VolumeKind | None = None, *, allow_scaled: bool = False) -> Volume:
    """Memory-map the voxels of an uncompressed NRRD, MetaImage or NIfTI file.

    Args:
        path: ``.nrrd``/``.nhdr``, ``.mha``/``.mhd``, ``.nii`` or ``.hdr`` (with its ``.img``).
        kind: ``"label"`` to mark a label map; by default scalar, or vector for
            multi-component voxels.
        allow_scaled: NIfTI only: accept ``scl_slope``/``scl_inter`` scaling; the array then
            holds the *stored* values and ``metadata`` the slope and intercept.

    Returns:
        A :class:`Volume` whose ``array`` is a read-only ``numpy.memmap`` (for NIfTI vector
        images a transposed view of one) and whose geometry equals SimpleITK's reading.

    Raises:
        MedTorchInputError: compressed, truncated, not 3D, or not one of these formats.
    """
    p = Path(path)
    if not p.exists():
        raise MedTorchInputError(f"file not found: {p}", "check the path")
    lower = p.name.lower()
    if lower.endswith((".gz", ".bz2", ".zst", ".zip")):
        raise MedTorchInputError(f"{p.name} is compressed and cannot be memory-mapped", _COMPRESSED_FIX)
    if p.stat().st_size == 0:
        raise MedTorchInputError(f"{p.name} is empty (0 bytes)", "the file was not saved completely: export it again")
    with open(p, "rb") as fh:
        head = fh.read(8)
    if head[:2] == b"\x1f\x8b":
        raise MedTorchInputError(f"{p.name} is gzip-compressed and cannot be memory-mapped", _COMPRESSED_FIX)
    if lower.endswith((".nrrd", ".nhdr")) or head.startswith(b"NRRD"):
        return _memmap_nrrd(p, kind)
    if lower.endswith((".mha", ".mhd")):
        return _memmap_meta(p, kind)
    if lower.endswith((".nii", ".hdr")):
        return _memmap_nifti(p, kind, allow_scaled)
    raise MedTorchInputError(
        f"{p.name}: unknown format for memory mapping",
        "use an uncompressed .nrrd, .nhdr, .mha, .mhd, .nii or .hdr/.img file, or open_raw for headerless data",
    )
