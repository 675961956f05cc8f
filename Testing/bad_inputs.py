"""The bad-input catalogue: one row per failure users hit, each tried through the command
line and through the modules' Logic classes.

Every row must end in :class:`~medtorch.errors.MedTorchInputError` (CLI: exit code 2 and one
message with "What to do", no traceback), with no partial output file and no change to the
scene -- except the rows with another ``exit_code``: inputs that registration accepts under a
documented policy (NaN voxels and constant slices treated as outside the image, volumes that
do not overlap brought together by the initialisation) and reports in its verdict: exit 0 with
a warning on stderr that names the problem, or 3 when the result fails its verdict (with
``--strict``: nothing written). ``Testing/test_bad_input_catalogue.py`` runs the rows;
``tools/make_bad_input_doc.py`` runs them too and writes ``docs/bad-input.md`` with the
messages they actually produce.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medtorch.phantoms import blob_phantom, oblique_geometry
from medtorch.volume import Volume


@dataclass
class Row:
    key: str
    title: str
    expect: str  # a word the message must contain (case-insensitive)
    cli: Callable[[Path], list[str]] | None = None  # argv for `medtorch`, built in a temp folder
    logic: Callable[[], Any] | None = None  # calls a module Logic (needs the headless Slicer)
    env: dict[str, str] | None = None
    patch: Callable[[Any], None] | None = None  # monkeypatch hook (pytest's monkeypatch)
    exit_code: int = 2  # 0: accepted with a warning (outputs written); 3: the verdict failed
    writes: bool = False  # the command writes its outputs (exit 0, or 3 without --strict)


# -- file makers -------------------------------------------------------------------------------


def _good(tmp: Path, name: str = "good.nrrd", noise: float = 5.0, seed: int = 0) -> Path:
    from medtorch.io import write_volume

    return write_volume(blob_phantom(oblique_geometry(size=(20, 18, 12)), noise=noise, seed=seed), tmp / name)


def _bytes_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _array_file(tmp: Path, arr: np.ndarray, name: str) -> Path:
    import SimpleITK as sitk

    path = tmp / name
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    return path


def _nrrd_with_directions(tmp: Path, directions: str, name: str) -> Path:
    data = np.arange(64, dtype="<f4").tobytes()
    header = ("NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\nsizes: 4 4 4\n"
              f"space directions: {directions}\nkinds: domain domain domain\nendian: little\n"
              "encoding: raw\nspace origin: (0,0,0)\n\n")
    path = tmp / name
    path.write_bytes(header.encode() + data)
    return path


def _truncated(tmp: Path, suffix: str) -> Path:
    from medtorch.io import write_volume

    path = write_volume(blob_phantom(oblique_geometry(size=(20, 18, 12)), noise=5.0), tmp / f"cut{suffix}",
                        compress=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def _truncated_dicom(tmp: Path) -> Path:
    from test_dicom import make_series

    files, _ = make_series(tmp / "dicom_cut", n=5, step=2.0)
    data = files[2].read_bytes()
    files[2].write_bytes(data[: len(data) - 4000])  # pixel data cut short
    return tmp / "dicom_cut"


def _dicom_missing_slice(tmp: Path) -> Path:
    from test_dicom import make_series

    files, _ = make_series(tmp / "dicom_gap", n=6, step=2.0)
    files[3].unlink()
    return tmp / "dicom_gap"


def _four_d(tmp: Path) -> Path:
    import SimpleITK as sitk

    img = sitk.JoinSeries([sitk.GetImageFromArray(np.random.rand(4, 5, 6).astype(np.float32)) for _ in range(3)])
    path = tmp / "four_d.nii.gz"
    sitk.WriteImage(img, str(path))
    return path


def _far_moving(tmp: Path) -> Path:
    from medtorch.io import write_volume

    geom = oblique_geometry(size=(20, 18, 12), center=(500.0, 500.0, 500.0))
    return write_volume(blob_phantom(geom), tmp / "far.nrrd")


def _pair_files(tmp: Path, moving_fn: Callable[[Volume], Volume] | None = None) -> tuple[str, str]:
    """A small synthetic registration pair (fixed, moving) written to ``tmp``; ``moving_fn``
    changes the moving volume first."""
    from medtorch.io import write_volume
    from medtorch.registration.synthetic import synthetic_pair

    pair = synthetic_pair("rigid", seed=3, size=32, spacing=3.0)
    moving = moving_fn(pair.moving) if moving_fn else pair.moving
    return (str(write_volume(pair.fixed, tmp / "fixed.nrrd")), str(write_volume(moving, tmp / "moving.nrrd")))


def _nan_slices(v: Volume) -> Volume:
    a = v.array.astype(np.float32).copy()
    a[::7] = np.nan  # every 7th slice
    return Volume(a, v.geometry)


def _zero_filled_end(v: Volume) -> Volume:
    a = v.array.astype(np.float32).copy()
    a[a.shape[0] * 3 // 4:] = 0.0  # the last quarter of the slices: a truncated file, zero-filled
    return Volume(a, v.geometry)


def _noise_far(v: Volume) -> Volume:
    from medtorch.volume import Geometry

    g = v.geometry
    noise = np.random.default_rng(0).normal(100.0, 30.0, g.shape_zyx).astype(np.float32)
    return Volume(noise, Geometry(g.size, np.asarray(g.origin) + 5000.0, g.spacing, g.direction))


def _far(v: Volume) -> Volume:
    from medtorch.volume import Geometry

    g = v.geometry
    return Volume(v.array, Geometry(g.size, np.asarray(g.origin) + 5000.0, g.spacing, g.direction))


def _one_slice(v: Volume) -> Volume:
    from medtorch.volume import Geometry

    g = v.geometry
    return Volume(v.array[v.array.shape[0] // 2:v.array.shape[0] // 2 + 1], Geometry((g.size[0], g.size[1], 1),
                                                                                      g.origin, g.spacing, g.direction))


def _register(tmp: Path, moving_fn: Callable[[Volume], Volume], *extra: str) -> list[str]:
    fixed, moving = _pair_files(tmp, moving_fn)
    return ["register", "--fixed", fixed, "--moving", moving, "--out-transform", str(tmp / "reg.tfm"), *extra]


def _readonly_target(tmp: Path) -> str:
    blocker = tmp / "a_file"
    blocker.write_text("x")
    return str(blocker / "out.nrrd")  # the 'folder' is a file: cannot be created, even as root


# -- logic helpers (headless Slicer) ------------------------------------------------------------


def _node(volume: Volume, name: str = "input") -> Any:
    from medtorch.slicer import mrml

    return mrml.node_from_volume(volume, name)


def _logic(module: str) -> Any:
    import slicer_testbed

    mod = slicer_testbed.load_module(module)
    return getattr(mod, module + "Logic")()


def _phantom(**kw: Any) -> Volume:
    return blob_phantom(oblique_geometry(size=(20, 18, 12)), **kw)


def _with(arr_fn: Callable[[np.ndarray], np.ndarray]) -> Volume:
    v = _phantom(noise=3.0)
    return Volume(arr_fn(v.array.copy()), v.geometry)


def _bad_spacing_node(spacing: float) -> Any:
    import vtk

    node = _node(_phantom(noise=3.0))
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    for r in range(3):
        m.SetElement(r, 0, m.GetElement(r, 0) * spacing)
    node.SetIJKToRASMatrix(m)
    return node


def _sheared_node() -> Any:
    import vtk

    node = _node(_phantom(noise=3.0))
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    for r in range(3):
        m.SetElement(r, 1, m.GetElement(r, 1) + 0.5 * m.GetElement(r, 0))
    node.SetIJKToRASMatrix(m)
    return node


def _single_slice_node() -> Any:
    g = oblique_geometry(size=(20, 18, 1))
    return _node(Volume(np.random.default_rng(0).normal(size=g.shape_zyx).astype(np.float32), g))


def _empty_node() -> Any:
    import slicer

    return slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")


def _no_overlap_logic() -> Any:
    far = blob_phantom(oblique_geometry(size=(20, 18, 12), center=(500.0, 500.0, 500.0)))
    return _logic("FusionRegistration").blend(_node(_phantom()), _node(far, "far"))


def _output_is_input_link(tmp: Path) -> list[str]:
    src = _good(tmp)
    link = tmp / "link.nrrd"
    link.symlink_to(src)
    return ["denoise", "--in", str(src), "--out", str(link)]


def _output_node_is_input() -> Any:
    node = _node(_phantom())
    return _logic("EnhanceSR").denoise(node, outputVolume=node)


def _enospc(monkeypatch: Any) -> None:
    import SimpleITK as sitk

    real = sitk.WriteImage

    def full_disk(image: Any, path: str, *a: Any, **k: Any) -> None:
        real(image, path, *a, **k)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sitk, "WriteImage", full_disk)


ROWS: list[Row] = [
    Row("empty", "empty volume", "empty",
        cli=lambda t: ["denoise", "--in", str(_bytes_file(t / "empty.nrrd", b"")), "--out", str(t / "o.nrrd")],
        logic=lambda: _logic("EnhanceSR").denoise(_empty_node())),
    Row("constant", "constant volume", "constant",
        cli=lambda t: ["threshold-seg", "--in", str(_array_file(t, np.full((6, 7, 8), 3.0, np.float32), "c.nrrd")),
                       "--lower", "1", "--out", str(t / "o.nrrd")],
        logic=lambda: _logic("SegmentTumor").threshold(_node(_with(lambda a: np.full_like(a, 7.0))), 1.0)),
    Row("nan", "NaN voxels", "NaN",
        cli=lambda t: ["denoise", "--in", str(_array_file(t, np.where(np.arange(336).reshape(6, 7, 8) == 5, np.nan, 1.0)
                                                         .astype(np.float32), "nan.nrrd")), "--out", str(t / "o.nrrd")],
        logic=lambda: _logic("EnhanceSR").denoise(_node(_with(lambda a: np.where(a > 150, np.nan, a))))),
    Row("inf", "Inf voxels", "infinite",
        cli=lambda t: ["denoise", "--in", str(_array_file(t, np.where(np.arange(336).reshape(6, 7, 8) == 5, np.inf, 1.0)
                                                         .astype(np.float32), "inf.nrrd")), "--out", str(t / "o.nrrd")],
        logic=lambda: _logic("FusionRegistration").blend(_node(_with(lambda a: np.where(a > 150, np.inf, a))),
                                                         _node(_phantom(), "m"))),
    Row("2d", "2D image where a 3D volume is needed", "2D",
        cli=lambda t: ["denoise", "--in", str(_array_file(t, np.random.rand(20, 30).astype(np.float32), "slice.nrrd")),
                       "--out", str(t / "o.nrrd")],
        logic=lambda: _logic("EnhanceSR").denoise(_single_slice_node())),
    Row("4d", "4D series where a 3D volume is needed", "4D",
        cli=lambda t: ["denoise", "--in", str(_four_d(t)), "--out", str(t / "o.nrrd")]),
    Row("zero_spacing", "zero spacing", "spacing",
        cli=lambda t: ["denoise", "--in", str(_nrrd_with_directions(t, "(0,0,0) (0,1,0) (0,0,1)", "z.nrrd")),
                       "--out", str(t / "o.nrrd")],
        logic=lambda: _logic("EnhanceSR").denoise(_bad_spacing_node(0.0))),
    Row("negative_spacing", "negative spacing", "spacing",
        cli=lambda t: ["denoise", "--in", str(_nrrd_with_directions(t, "(-0,0,0) (0,-1,0) (0,0,0)", "n.nrrd")),
                       "--out", str(t / "o.nrrd")]),
    Row("non_orthonormal", "non-orthonormal direction", "orthonormal",
        cli=lambda t: ["denoise", "--in", str(_nrrd_with_directions(t, "(1,0,0) (0.5,1,0) (0,0,1)", "s.nrrd")),
                       "--out", str(t / "o.nrrd")],
        logic=lambda: _logic("EnhanceSR").denoise(_sheared_node())),
    Row("no_overlap", "fixed and moving volumes with no overlap", "overlap",
        cli=lambda t: ["fuse", "--fixed", str(_good(t)), "--moving", str(_far_moving(t)), "--assume-aligned",
                       "--out", str(t / "o.nrrd")],
        logic=_no_overlap_logic),
    Row("truncated_nifti", "truncated NIfTI file", "truncated",
        cli=lambda t: ["denoise", "--in", str(_truncated(t, ".nii")), "--out", str(t / "o.nrrd")]),
    Row("truncated_nrrd", "truncated NRRD file", "truncated",
        cli=lambda t: ["denoise", "--in", str(_truncated(t, ".nrrd")), "--out", str(t / "o.nrrd")]),
    Row("corrupt_file", "a file that is not an image", "could not be read",
        cli=lambda t: ["denoise", "--in", str(_bytes_file(t / "x.nii.gz", os.urandom(700))),
                       "--out", str(t / "o.nrrd")]),
    Row("truncated_dicom", "truncated DICOM file", "truncated",
        cli=lambda t: ["denoise", "--in", str(_truncated_dicom(t)), "--out", str(t / "o.nrrd")]),
    Row("dicom_missing_slices", "DICOM series with missing slices", "missing",
        cli=lambda t: ["denoise", "--in", str(_dicom_missing_slice(t)), "--out", str(t / "o.nrrd")]),
    Row("memory_budget", "volume larger than the memory budget", "needs",
        cli=lambda t: ["fuse", "--fixed", str(_good(t)), "--moving", str(_good(t, "m.nrrd", seed=1)),
                       "--method", "average", "--out", str(t / "o.nrrd")],
        logic=lambda: _logic("FusionRegistration").blend(_node(_phantom()), _node(_phantom(noise=2.0), "m")),
        env={"MEDTORCH_MEMORY_BUDGET": "2K"}),
    Row("output_is_input", "output that is the input (here through a symbolic link; a Slicer output node "
        "that is the input node: Apply asks first)", "input",
        cli=_output_is_input_link, logic=_output_node_is_input),
    Row("unwritable_output", "output path that is not writable", "cannot create the output folder",
        cli=lambda t: ["denoise", "--in", str(_good(t)), "--method", "gaussian", "--out", _readonly_target(t)]),
    Row("disk_full", "disk fills up during a write", "disk filled up",
        cli=lambda t: ["denoise", "--in", str(_good(t)), "--method", "gaussian", "--out", str(t / "o.nrrd")],
        patch=_enospc),
    # registration: inputs accepted under a documented policy, named by the verdict
    Row("register_nan", "registration: NaN slices in the moving volume (treated as outside the image)", "nan_inf_voxels",
        cli=lambda t: _register(t, _nan_slices), exit_code=0, writes=True),
    Row("register_constant_slices", "registration: the moving volume's last slices zero-filled (constant slices)",
        "constant_slices", cli=lambda t: _register(t, _zero_filled_end), exit_code=0, writes=True),
    Row("register_far", "registration: volumes 5 m apart (no physical overlap), brought together by the initialisation",
        "physical_overlap", cli=lambda t: _register(t, _far), exit_code=0, writes=True),
    Row("register_noise_far", "registration: noise 5 m away, --strict (the result fails its verdict)",
        "local_similarity", cli=lambda t: _register(t, _noise_far, "--strict"), exit_code=3),
    Row("register_no_overlap_no_init", "registration: volumes 5 m apart with --init none (nothing brings them together)",
        "overlap", cli=lambda t: _register(t, _far, "--init", "none")),
    Row("register_one_slice", "registration: a one-slice moving volume", "2D",
        cli=lambda t: _register(t, _one_slice)),
]
