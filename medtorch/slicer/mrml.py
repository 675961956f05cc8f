"""MRML nodes to and from :class:`~medtorch.volume.Volume`: volume, label map, vector,
segmentation and transform nodes, registration results and markups, with RAS (Slicer) and
LPS (MedTorch, ITK) converted through :mod:`medtorch.coords`.

Slicer (or PyPI's ``slicer-core``) is imported lazily, inside the functions, so the rest
of ``medtorch`` stays importable without it.

* A node's *local* geometry is its IJK-to-RAS matrix; parent transforms are not baked in.
  :func:`transform_between_volumes` returns the ITK-convention transform that takes the
  fixed volume's local LPS points to the moving volume's local LPS points through both
  nodes' parent transforms (a 4x4 matrix when all are linear, else a displacement field
  sampled on the fixed grid).

Registration results: ITK's convention (MedTorch's) maps *fixed* points to *moving* points --
the "resampling" direction, which Slicer calls **FromParent** (world, i.e. the fixed volume's
space, to the transformed node's local space). So:

* a linear result ``A`` (4x4 LPS) becomes a ``vtkMRMLLinearTransformNode`` whose to-parent
  RAS matrix is ``F A^-1 F`` (``F``: the RAS <-> LPS flip,
  :func:`medtorch.coords.to_parent_ras_from_itk`): :func:`linear_transform_node_from_lps`;
* a deformable result ``p -> A(p + d(p))`` becomes a ``vtkMRMLGridTransformNode`` whose
  FromParent transform is a ``vtkOrientedGridTransform`` holding the total displacement
  ``t(p) = A(p + d(p)) - p``, converted to RAS: the grid's origin and axes flipped by ``F``,
  each vector too. The field is stored on its own grid and interpolated linearly, exactly as
  ITK's ``DisplacementFieldTransform`` (and :func:`medtorch.resample.resample`) does, so a
  volume placed under the node shows where the registration put it
  (:func:`registration_transform_node`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from medtorch import coords
from medtorch.errors import MedTorchInputError
from medtorch.jsonvalue import plain
from medtorch.volume import Geometry, Volume

if TYPE_CHECKING:  # pragma: no cover
    import vtk


def _slicer() -> Any:
    import slicer

    return slicer


def array_from_vtk_matrix(matrix: "vtk.vtkMatrix4x4") -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def vtk_matrix_from_array(array: np.ndarray) -> "vtk.vtkMatrix4x4":
    import vtk

    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(array[r, c]))
    return m


# -- volumes ---------------------------------------------------------------------------------


def geometry_from_node(node: Any) -> Geometry:
    """The node's local grid (IJK-to-RAS converted to LPS); parent transforms not applied."""
    import vtk

    image = node.GetImageData() if node is not None else None
    if image is None:
        raise MedTorchInputError(
            f"volume node {node.GetName() if node is not None else '(none)'} has no image data",
            "select a volume that has been loaded",
        )
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    dims = image.GetDimensions()
    return Geometry.from_ijk_to_ras(array_from_vtk_matrix(m), (dims[0], dims[1], dims[2]))


def volume_from_node(node: Any) -> Volume:
    """Copy a scalar, label map or vector volume node into a :class:`Volume` (LPS)."""
    slicer = _slicer()
    geom = geometry_from_node(node)
    cls = node.GetClassName()
    arr = np.array(slicer.util.arrayFromVolume(node), copy=True)
    if cls == "vtkMRMLLabelMapVolumeNode":
        kind = "label"
    elif arr.ndim == 4:
        kind = "vector"
    else:
        kind = "scalar"
    meta = {"node_name": node.GetName(), "node_id": node.GetID()}
    return Volume(arr, geom, kind, meta)  # type: ignore[arg-type]


def geometry_from_oriented_image(image: Any) -> Geometry:
    """The grid of a ``vtkOrientedImageData`` (segmentation labelmaps, the Segment Editor's
    images): its image-to-world matrix (RAS) from the first voxel of its extent, in LPS."""
    import vtk

    m = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    ext = image.GetExtent()
    ijk_to_ras = array_from_vtk_matrix(m)
    ijk_to_ras[:3, 3] = ijk_to_ras[:3, :3] @ np.array([ext[0], ext[2], ext[4]], float) + ijk_to_ras[:3, 3]
    size = (ext[1] - ext[0] + 1, ext[3] - ext[2] + 1, ext[5] - ext[4] + 1)
    return Geometry.from_ijk_to_ras(ijk_to_ras, size)


def volume_from_oriented_image(image: Any, kind: str = "scalar") -> Volume:
    """Copy a single-component ``vtkOrientedImageData`` into a :class:`Volume` (LPS)."""
    from vtk.util import numpy_support

    geom = geometry_from_oriented_image(image)
    scalars = image.GetPointData().GetScalars()
    if scalars is None or scalars.GetNumberOfComponents() != 1:
        raise MedTorchInputError("the image has no single-component voxel values",
                                 "select a scalar source volume")
    arr = numpy_support.vtk_to_numpy(scalars).reshape(geom.shape_zyx).copy()
    return Volume(arr, geom, kind)  # type: ignore[arg-type]


def fill_oriented_image(image: Any, like: Any, array: np.ndarray) -> Any:
    """Make ``image`` (a ``vtkOrientedImageData``) hold ``array`` (``[z, y, x]``) on the grid of
    ``like`` (same extent and image-to-world matrix); returns ``image``."""
    import vtk
    from vtk.util import numpy_support

    ext = like.GetExtent()
    shape = (ext[5] - ext[4] + 1, ext[3] - ext[2] + 1, ext[1] - ext[0] + 1)
    if tuple(array.shape) != shape:
        raise MedTorchInputError(f"an array of shape {array.shape} does not fit an image of shape {shape}",
                                 "give an array on the image's grid")
    m = vtk.vtkMatrix4x4()
    like.GetImageToWorldMatrix(m)
    image.SetExtent(ext)
    image.SetImageToWorldMatrix(m)
    data = numpy_support.numpy_to_vtk(np.ascontiguousarray(array).ravel(), deep=True)
    image.GetPointData().SetScalars(data)
    return image


def _node_class_for(volume: Volume) -> str:
    return {"label": "vtkMRMLLabelMapVolumeNode", "vector": "vtkMRMLVectorVolumeNode"}.get(
        volume.kind, "vtkMRMLScalarVolumeNode"
    )


def _vtk_safe_array(volume: Volume) -> np.ndarray:
    arr = volume.array
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if arr.dtype in (np.int64, np.uint64):
        if arr.size and (arr.max() > np.iinfo(np.int32).max or arr.min() < np.iinfo(np.int32).min):
            raise MedTorchInputError("voxel values exceed the 32-bit integer range that Slicer displays",
                                     "convert the volume to float first")
        return arr.astype(np.int32)
    return arr


def update_node_from_volume(node: Any, volume: Volume) -> Any:
    """Write ``volume``'s voxels and geometry into an existing node (local IJK-to-RAS)."""
    slicer = _slicer()
    node.SetIJKToRASMatrix(vtk_matrix_from_array(volume.geometry.ijk_to_ras()))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(_vtk_safe_array(volume)))
    return node


def node_from_volume(volume: Volume, name: str = "", scene: Any = None, node_class: str | None = None,
                     show: bool = False) -> Any:
    """Add a new node (scalar, label map or vector, from ``volume.kind``) holding ``volume``."""
    slicer = _slicer()
    scene = scene if scene is not None else slicer.mrmlScene
    node = scene.AddNewNodeByClass(node_class or _node_class_for(volume), name)
    try:
        update_node_from_volume(node, volume)
        node.CreateDefaultDisplayNodes()
    except Exception:
        scene.RemoveNode(node)
        raise
    if show and hasattr(slicer.util, "setSliceViewerLayers") and hasattr(slicer, "app"):
        try:
            slicer.util.setSliceViewerLayers(background=node)
        except Exception:  # pragma: no cover - no views (headless)
            pass
    return node


# -- transforms ------------------------------------------------------------------------------


def _transform_is_linear(node: Any) -> bool:
    return node is None or bool(node.IsTransformToWorldLinear())


def ras_matrix_between(source_parent: Any, target_parent: Any) -> np.ndarray:
    """4x4 RAS matrix from ``source_parent``'s coordinates to ``target_parent``'s (None = world)."""
    import vtk

    slicer = _slicer()
    m = vtk.vtkMatrix4x4()
    slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(source_parent, target_parent, m)
    return array_from_vtk_matrix(m)


def transform_between_volumes(fixed_node: Any, moving_node: Any) -> np.ndarray | Volume | None:
    """ITK-convention transform taking the fixed node's local LPS points to the moving node's.

    Returns ``None`` when neither node is under a transform (or both are under the same
    one), a 4x4 LPS matrix when the chain is linear, else a displacement-field
    :class:`Volume` (``kind='vector'``, LPS mm) sampled on the fixed grid.
    """
    fixed_parent = fixed_node.GetParentTransformNode()
    moving_parent = moving_node.GetParentTransformNode()
    if fixed_parent is moving_parent:
        return None
    if _transform_is_linear(fixed_parent) and _transform_is_linear(moving_parent):
        ras = ras_matrix_between(fixed_parent, moving_parent)
        return coords.flip_affine(ras)
    return _displacement_between(fixed_node, fixed_parent, moving_parent)


def _displacement_between(fixed_node: Any, fixed_parent: Any, moving_parent: Any) -> Volume:
    import vtk
    from vtk.util import numpy_support

    slicer = _slicer()
    geom = geometry_from_node(fixed_node)
    general = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(fixed_parent, moving_parent, general)
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in geom.shape_zyx), indexing="ij")
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)
    lps = geom.index_to_physical(ijk)
    ras = coords.ras_from_lps(lps)
    pts_in = vtk.vtkPoints()
    pts_in.SetData(numpy_support.numpy_to_vtk(np.ascontiguousarray(ras), deep=True))
    pts_out = vtk.vtkPoints()
    general.TransformPoints(pts_in, pts_out)
    moved_ras = numpy_support.vtk_to_numpy(pts_out.GetData()).astype(np.float64)
    disp_lps = coords.lps_from_ras(moved_ras - ras)
    field = disp_lps.reshape(geom.shape_zyx + (3,)).astype(np.float64)
    return Volume(field, geom, "vector", {"what": "displacement field (LPS, mm)"})


def linear_transform_node_from_lps(matrix_lps: np.ndarray, name: str = "", scene: Any = None) -> Any:
    """A ``vtkMRMLLinearTransformNode`` from an ITK-convention LPS matrix (fixed -> moving).

    Slicer's transform nodes store the *to-parent* (moving-to-fixed, "resampling") matrix
    in RAS; that is the inverse of the ITK matrix, converted from LPS to RAS.
    """
    slicer = _slicer()
    scene = scene if scene is not None else slicer.mrmlScene
    to_parent_ras = coords.to_parent_ras_from_itk(matrix_lps)
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(vtk_matrix_from_array(to_parent_ras))
    return node


# -- registration results and markups (ITK's fixed -> moving convention; see the module docstring) --


def lps_points_from_markups(node: Any) -> np.ndarray:
    """World positions of a markups node's control points as an ``(N, 3)`` LPS array (mm)."""
    if node is None:
        raise MedTorchInputError("no markups node was given", "select a point list")
    n = int(node.GetNumberOfControlPoints())
    out = np.zeros((n, 3))
    for i in range(n):
        ras = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(i, ras)
        out[i] = coords.lps_from_ras(ras)
    return out


def _grid_transform_from_lps(field: Volume) -> Any:
    """A ``vtkOrientedGridTransform`` (RAS) of an LPS displacement-field volume."""
    import vtk
    from vtk.util import numpy_support

    slicer = _slicer()
    if field.kind != "vector" or field.num_components != 3:
        raise MedTorchInputError("a grid transform needs a 3-component displacement field",
                                 "give the displacement as a vector volume (LPS mm)")
    geom = field.geometry
    ras_vectors = coords.ras_from_lps(field.array)
    image = vtk.vtkImageData()
    image.SetDimensions(*geom.size)
    image.SetOrigin(*coords.ras_from_lps(geom.origin))
    image.SetSpacing(*geom.spacing)
    flat = np.ascontiguousarray(ras_vectors.reshape(-1, 3))
    array = numpy_support.numpy_to_vtk(flat, deep=True, array_type=vtk.VTK_DOUBLE)
    array.SetNumberOfComponents(3)
    image.GetPointData().SetScalars(array)
    direction = np.eye(4)
    direction[:3, :3] = coords.flip_rows(geom.direction)
    grid = slicer.vtkOrientedGridTransform()
    grid.SetDisplacementGridData(image)
    grid.SetGridDirectionMatrix(vtk_matrix_from_array(direction))
    grid.SetInterpolationModeToLinear()
    return grid


def set_grid_transform_from_lps(node: Any, field: Volume) -> Any:
    """Put an LPS displacement field (fixed -> moving, ITK) into a grid transform node as FromParent."""
    node.SetAndObserveTransformFromParent(_grid_transform_from_lps(field))
    return node


def grid_transform_node_from_lps(field: Volume, name: str = "", scene: Any = None) -> Any:
    """A new ``vtkMRMLGridTransformNode`` from an LPS displacement field (fixed -> moving, ITK)."""
    slicer = _slicer()
    scene = scene if scene is not None else slicer.mrmlScene
    node = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", name)
    try:
        set_grid_transform_from_lps(node, field)
    except Exception:
        scene.RemoveNode(node)
        raise
    return node


def _total_field(affine: np.ndarray, displacement: Volume) -> Volume:
    """``t(p) = A(p + d(p)) - p`` on the displacement's own grid (exact for trilinear interpolation:
    the linear part of ``t`` is reproduced exactly by it)."""
    from medtorch.registration.result import total_displacement

    return total_displacement(affine, displacement, displacement.geometry)


def registration_transform_node(affine: np.ndarray, displacement: Volume | None, name: str = "",
                                node: Any = None, scene: Any = None) -> Any:
    """The MRML node of a registration result (see the module docstring).

    ``node``: an existing transform node to fill (linear for a linear result, grid for a
    deformable one); ``None`` makes a new node.
    """
    slicer = _slicer()
    scene = scene if scene is not None else slicer.mrmlScene
    if displacement is None:
        if node is None:
            return linear_transform_node_from_lps(affine, name, scene)
        if not node.IsA("vtkMRMLLinearTransformNode"):
            raise MedTorchInputError(f"the output transform {node.GetName()} is not a linear transform",
                                     "choose a linear transform node, or 'Create new'")
        to_parent = coords.to_parent_ras_from_itk(affine)
        node.SetMatrixTransformToParent(vtk_matrix_from_array(to_parent))
        return node
    total = _total_field(affine, displacement)
    if node is None:
        return grid_transform_node_from_lps(total, name, scene)
    if not node.IsA("vtkMRMLGridTransformNode"):
        raise MedTorchInputError(f"the output transform {node.GetName()} is not a grid transform",
                                 "choose a grid transform node, or 'Create new', for deformable registration")
    return set_grid_transform_from_lps(node, total)


# -- segmentations ---------------------------------------------------------------------------


def _node_ids(scene: Any) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def _remove_added(scene: Any, before: set[str]) -> None:
    """Remove the nodes added since ``before`` (temporary nodes and the display and colour
    nodes Slicer makes for them, which removing a node alone leaves behind)."""
    added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
    for node in added:
        if node is not None and node.GetID() not in before and node.GetScene() is scene:
            scene.RemoveNode(node)


def segmentation_from_label(label: Volume, segment_names: dict[int, str], name: str = "",
                            colors: dict[int, tuple[float, float, float]] | None = None,
                            reference_node: Any = None, scene: Any = None) -> Any:
    """A new ``vtkMRMLSegmentationNode`` with one named segment per label value.

    Each label value in ``segment_names`` becomes a segment of that name (and colour);
    values present in the label map but not named are ignored.
    """
    slicer = _slicer()
    scene = scene if scene is not None else slicer.mrmlScene
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    temp = None
    try:
        seg_node.CreateDefaultDisplayNodes()
        if reference_node is not None:
            seg_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
        segmentation = seg_node.GetSegmentation()
        for value, seg_name in segment_names.items():
            mask = Volume((label.array == value).astype(np.uint8), label.geometry, "label")
            nodes_before = _node_ids(scene)
            temp = node_from_volume(mask, "__medtorch_temp_label__", scene)
            before = set(segmentation.GetSegmentIDs())
            ok = slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(temp, seg_node)
            _remove_added(scene, nodes_before)  # the temporary node and its display node
            temp = None
            if not ok:
                raise MedTorchInputError(f"segment {seg_name} could not be imported", "check the label map")
            new_ids = [sid for sid in segmentation.GetSegmentIDs() if sid not in before]
            if not new_ids:  # empty mask: keep an empty, named segment so the user sees it
                new_ids = [segmentation.AddEmptySegment("", seg_name)]
            segment = segmentation.GetSegment(new_ids[0])
            segment.SetName(seg_name)
            if colors and value in colors:
                segment.SetColor(*colors[value])
        return seg_node
    except Exception:
        if temp is not None:
            scene.RemoveNode(temp)
        scene.RemoveNode(seg_node)
        raise


def label_from_segmentation(seg_node: Any, reference_node: Any, segment_ids: list[str] | None = None) -> Volume:
    """Export segments to a label map on ``reference_node``'s grid (value = 1-based segment index)."""
    slicer = _slicer()
    scene = seg_node.GetScene()
    nodes_before = _node_ids(scene)
    label_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__medtorch_export__")
    try:
        import vtk

        ids = vtk.vtkStringArray()
        for sid in segment_ids or list(seg_node.GetSegmentation().GetSegmentIDs()):
            ids.InsertNextValue(sid)
        slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(seg_node, ids, label_node, reference_node)
        return volume_from_node(label_node)
    finally:
        _remove_added(scene, nodes_before)  # the label node, its display node and colour table


# -- markups ---------------------------------------------------------------------------------


def box_from_roi_node(roi_node: Any) -> dict[str, Any]:
    """An ROI markup as a box in LPS: ``{"center", "half_size", "axes"}`` (world coordinates)."""
    import vtk

    center_ras = [0.0, 0.0, 0.0]
    roi_node.GetCenterWorld(center_ras)
    size = [0.0, 0.0, 0.0]
    roi_node.GetSizeWorld(size)
    m = vtk.vtkMatrix4x4()
    m.DeepCopy(roi_node.GetObjectToWorldMatrix())
    axes_ras = array_from_vtk_matrix(m)[:3, :3]
    axes_ras = axes_ras / np.linalg.norm(axes_ras, axis=0)
    return {
        "center": plain(coords.lps_from_ras(center_ras)),
        "half_size": plain(np.asarray(size) / 2.0),
        "axes": plain(coords.flip_rows(axes_ras)),
    }


# -- views ---------------------------------------------------------------------------------


def show_in_slice_views(background: Any = None, foreground: Any = None, foreground_opacity: float | None = None,
                        label: Any = None, link: bool = True, scene: Any = None) -> int:
    """Set the layers of every slice view (through their composite nodes, so it works headless).

    Returns the number of views updated. ``None`` leaves a layer as it is.
    """
    slicer = _slicer()
    scene = scene if scene is not None else slicer.mrmlScene
    composites = [scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
                  for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]
    for comp in composites:
        if background is not None:
            comp.SetBackgroundVolumeID(background.GetID())
        if foreground is not None:
            comp.SetForegroundVolumeID(foreground.GetID())
        if foreground_opacity is not None:
            comp.SetForegroundOpacity(float(foreground_opacity))
        if label is not None:
            comp.SetLabelVolumeID(label.GetID())
        if link:
            comp.SetLinkedControl(1)
    return len(composites)
