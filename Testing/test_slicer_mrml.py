"""medtorch.slicer.mrml on the headless Slicer (slicer-core): every path between MRML nodes and
:class:`Volume` round-trips on an oblique, anisotropic, non-zero-origin volume.

Tolerances: geometry 1e-9 (matrices are copied as doubles); voxels bit-exact.
"""

from __future__ import annotations

import numpy as np
import pytest

from medtorch.phantoms import blob_phantom, oblique_geometry, rotation_matrix
from medtorch.volume import Geometry, Volume

GEOM = Geometry(size=(9, 7, 5), origin=(12.5, -30.25, 47.0), spacing=(0.7, 1.1, 3.0),
                direction=rotation_matrix((20.0, -10.0, 35.0)))


def _volume(dtype, kind="scalar"):
    rng = np.random.default_rng(0)
    shape = GEOM.shape_zyx + ((3,) if kind == "vector" else ())
    arr = (rng.random(shape) * 100).astype(dtype)
    return Volume(arr, GEOM, kind)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint8, np.uint16, np.int32])
def test_scalar_node_round_trip(scene, dtype):
    from medtorch.slicer import mrml

    vol = _volume(dtype)
    before = vol.array.copy()
    node = mrml.node_from_volume(vol, "v")
    assert node.GetClassName() == "vtkMRMLScalarVolumeNode"
    back = mrml.volume_from_node(node)
    assert back.array.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.geometry.isclose(GEOM, atol=1e-9)
    np.testing.assert_array_equal(vol.array, before)  # input untouched


def test_label_and_vector_nodes_round_trip(scene):
    from medtorch.slicer import mrml

    label = Volume((np.arange(np.prod(GEOM.shape_zyx)) % 4).reshape(GEOM.shape_zyx).astype(np.int16), GEOM, "label")
    node = mrml.node_from_volume(label, "lab")
    assert node.GetClassName() == "vtkMRMLLabelMapVolumeNode"
    back = mrml.volume_from_node(node)
    assert back.kind == "label"
    np.testing.assert_array_equal(back.array, label.array)

    vec = _volume(np.float32, "vector")
    vnode = mrml.node_from_volume(vec, "vec")
    assert vnode.GetClassName() == "vtkMRMLVectorVolumeNode"
    vback = mrml.volume_from_node(vnode)
    assert vback.kind == "vector" and vback.num_components == 3
    np.testing.assert_array_equal(vback.array, vec.array)
    assert vback.geometry.isclose(GEOM, atol=1e-9)


def test_ras_lps_convention_on_a_point(scene):
    """Voxel (i, j, k) = (2, 3, 4) lands at the same physical point in MRML (RAS) and in the core (LPS)."""
    import vtk

    from medtorch.slicer import mrml

    node = mrml.node_from_volume(_volume(np.float32), "v")
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    ras = np.array(m.MultiplyPoint((2.0, 3.0, 4.0, 1.0))[:3])
    lps = GEOM.index_to_physical(np.array([[2.0, 3.0, 4.0]]))[0]
    np.testing.assert_allclose(ras, lps * np.array([-1.0, -1.0, 1.0]), atol=1e-9)
    # and against a hand computation: origin + D @ diag(spacing) @ ijk
    np.testing.assert_allclose(lps, GEOM.origin + GEOM.direction @ (GEOM.spacing * [2.0, 3.0, 4.0]), atol=1e-12)


def test_sitk_and_mrml_agree_through_files(scene, tmp_path):
    """A volume written by the core and loaded by Slicer's own reader has the same geometry."""
    import slicer

    from medtorch.slicer import mrml
    from medtorch.io import write_volume

    vol = _volume(np.int16)
    write_volume(vol, tmp_path / "v.nrrd")
    node = slicer.util.loadVolume(str(tmp_path / "v.nrrd"))
    back = mrml.volume_from_node(node)
    assert back.geometry.isclose(GEOM, atol=1e-6)
    np.testing.assert_array_equal(back.array, vol.array)


def test_linear_transform_between_volumes(scene):
    """The ITK-convention matrix from parent transforms maps fixed points where MRML maps them."""
    import slicer

    from medtorch.slicer import mrml

    fixed = mrml.node_from_volume(_volume(np.float32), "f")
    moving = mrml.node_from_volume(_volume(np.float32), "m")
    assert mrml.transform_between_volumes(fixed, moving) is None
    t_m = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    to_parent = np.eye(4)
    to_parent[:3, :3] = rotation_matrix((5.0, 0.0, -12.0))
    to_parent[:3, 3] = (4.0, -7.0, 2.5)
    t_m.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(to_parent))
    moving.SetAndObserveTransformNodeID(t_m.GetID())
    a = mrml.transform_between_volumes(fixed, moving)
    # A fixed-local LPS point p sits at world RAS F p; the moving-local point there is to_parent^-1 (F p).
    p = np.array([3.0, -2.0, 11.0])
    flip = np.array([-1.0, -1.0, 1.0])
    expected_ras = (np.linalg.inv(to_parent) @ np.append(p * flip, 1.0))[:3]
    np.testing.assert_allclose((a @ np.append(p, 1.0))[:3], expected_ras * flip, atol=1e-9)


def test_nonlinear_transform_becomes_displacement_field(scene):
    import slicer

    from medtorch.slicer import mrml

    fixed = mrml.node_from_volume(_volume(np.float32), "f")
    moving = mrml.node_from_volume(_volume(np.float32), "m")
    grid = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLGridTransformNode")
    import vtk

    disp = vtk.vtkImageData()
    disp.SetDimensions(6, 6, 6)
    disp.SetOrigin(-40.0, -60.0, 20.0)
    disp.SetSpacing(20.0, 20.0, 20.0)
    disp.AllocateScalars(vtk.VTK_DOUBLE, 3)
    arr = vtk.util.numpy_support.vtk_to_numpy(disp.GetPointData().GetScalars())
    arr[:] = (1.5, -2.0, 0.75)  # a constant displacement (RAS), in the transform's from-parent direction
    gt = slicer.vtkOrientedGridTransform()
    gt.SetDisplacementGridData(disp)
    gt.SetInterpolationModeToLinear()
    grid.SetAndObserveTransformFromParent(gt)
    moving.SetAndObserveTransformNodeID(grid.GetID())
    field = mrml.transform_between_volumes(fixed, moving)
    assert isinstance(field, Volume) and field.kind == "vector"
    assert field.geometry.isclose(GEOM, atol=1e-9)
    # world -> moving-local is the from-parent transform: p + (1.5, -2, 0.75) RAS = (-1.5, 2, 0.75) LPS
    np.testing.assert_allclose(field.array.reshape(-1, 3).mean(axis=0), (-1.5, 2.0, 0.75), atol=1e-6)


def test_linear_transform_node_from_lps_matches_itk_convention(scene):
    import vtk

    from medtorch.slicer import mrml

    a = np.eye(4)
    a[:3, :3] = rotation_matrix((10.0, 20.0, -5.0))
    a[:3, 3] = (3.0, -1.0, 8.0)
    node = mrml.linear_transform_node_from_lps(a, "reg")
    m = vtk.vtkMatrix4x4()
    node.GetMatrixTransformFromParent(m)  # world (fixed) RAS -> moving RAS
    from_parent = mrml.array_from_vtk_matrix(m)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    np.testing.assert_allclose(flip @ from_parent @ flip, a, atol=1e-9)


def test_segmentation_round_trip_and_names(scene):
    from medtorch.slicer import mrml

    geom = oblique_geometry(size=(20, 18, 12))
    label = np.zeros(geom.shape_zyx, np.uint8)
    label[3:8, 4:10, 5:12] = 1
    label[8:10, 10:14, 2:6] = 2
    ref = mrml.node_from_volume(blob_phantom(geom), "ref")
    seg = mrml.segmentation_from_label(Volume(label, geom, "label"), {1: "Core", 2: "Edema"}, "seg",
                                         colors={1: (1.0, 0.0, 0.0)}, reference_node=ref)
    s = seg.GetSegmentation()
    names = [s.GetNthSegment(i).GetName() for i in range(s.GetNumberOfSegments())]
    assert names == ["Core", "Edema"]
    assert s.GetNthSegment(0).GetColor() == (1.0, 0.0, 0.0)
    back = mrml.label_from_segmentation(seg, ref)
    np.testing.assert_array_equal(back.array, label)
    assert back.geometry.isclose(geom, atol=1e-6)


def test_roi_box_in_lps(scene):
    import slicer

    from medtorch.slicer import mrml

    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    roi.SetCenter(10.0, 20.0, 30.0)
    roi.SetSize(4.0, 6.0, 8.0)
    box = mrml.box_from_roi_node(roi)
    np.testing.assert_allclose(box["center"], (-10.0, -20.0, 30.0))
    np.testing.assert_allclose(box["half_size"], (2.0, 3.0, 4.0))
    np.testing.assert_allclose(np.abs(np.asarray(box["axes"])), np.eye(3), atol=1e-12)


def test_show_in_slice_views(scene):
    from medtorch.slicer import mrml

    a = mrml.node_from_volume(_volume(np.float32), "a")
    b = mrml.node_from_volume(_volume(np.float32), "b")
    assert mrml.show_in_slice_views(background=a, foreground=b, foreground_opacity=0.4) == 3
    import slicer

    for comp in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode"):
        assert comp.GetBackgroundVolumeID() == a.GetID()
        assert comp.GetForegroundVolumeID() == b.GetID()
        assert comp.GetForegroundOpacity() == pytest.approx(0.4)
        assert comp.GetLinkedControl() == 1


def test_table_columns_take_their_kinds_even_without_rows(scene):
    """``medtorch.slicer.tables``: numbers make double columns, text string columns; a named kind
    holds (an int column stays int; an empty table keeps its columns' kinds)."""
    from medtorch.slicer.tables import table_node_from_rows

    rows = [{"Segment": "Tumor", "Voxels": 12, "Volume (mL)": 0.5, "note": None},
            {"Segment": "Oedema", "Voxels": 7, "Volume (mL)": None, "note": "x"}]
    node = table_node_from_rows(rows, "volumes", scene, kinds={"Voxels": "int"})
    t = node.GetTable()
    kinds = {t.GetColumn(i).GetName(): t.GetColumn(i).GetClassName() for i in range(t.GetNumberOfColumns())}
    assert kinds == {"Segment": "vtkStringArray", "Voxels": "vtkIntArray", "Volume (mL)": "vtkDoubleArray",
                     "note": "vtkStringArray"}
    assert t.GetValue(1, 1).ToInt() == 7 and np.isnan(t.GetValue(1, 2).ToDouble()) and t.GetValue(0, 3).ToString() == ""
    empty = table_node_from_rows([], "volumes", scene, ["Segment", "Voxels"], kinds={"Segment": "str", "Voxels": "int"})
    assert empty.GetName() != node.GetName()  # a second table of the same name is made unique
    assert [empty.GetTable().GetColumn(i).GetClassName() for i in range(2)] == ["vtkStringArray", "vtkIntArray"]
    again = table_node_from_rows(rows[:1], "ignored", scene, table_node=empty)
    assert again is empty and empty.GetTable().GetNumberOfRows() == 1
