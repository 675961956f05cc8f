"""Registration results as MRML transform nodes (RAS), and markups as LPS points.

ITK's convention (MedTorch's): a transform maps *fixed* points to *moving* points -- it is
the "resampling" direction, which Slicer calls **FromParent** (world, i.e. the fixed volume's
space, to the transformed node's local space). So:

* a linear result ``A`` (4x4 LPS) becomes a ``vtkMRMLLinearTransformNode`` whose to-parent
  RAS matrix is ``F A^-1 F`` (``F``: the RAS <-> LPS flip,
  :func:`medtorch.coords.to_parent_ras_from_itk`): :func:`medtorch.integration.slicer_bridge.
  linear_transform_node_from_lps`;
* a deformable result ``p -> A(p + d(p))`` becomes a ``vtkMRMLGridTransformNode`` whose
  FromParent transform is a ``vtkOrientedGridTransform`` holding the total displacement
  ``t(p) = A(p + d(p)) - p``, converted to RAS: the grid's origin and axes flipped by ``F``,
  each vector too. The field is stored on its own grid and interpolated linearly, exactly as
  ITK's ``DisplacementFieldTransform`` (and :func:`medtorch.resample.resample`) does, so a
  volume placed under the node shows where the registration put it.

Slicer is imported lazily, inside the functions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medtorch import coords
from medtorch.errors import MedTorchInputError
from medtorch.volume import Volume

__all__ = [
    "grid_transform_node_from_lps",
    "lps_points_from_markups",
    "registration_transform_node",
    "set_grid_transform_from_lps",
]

def _slicer() -> Any:
    import slicer

    return slicer


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
    from medtorch.integration.slicer_bridge import vtk_matrix_from_array

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
    from medtorch.integration.slicer_bridge import linear_transform_node_from_lps, vtk_matrix_from_array

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
