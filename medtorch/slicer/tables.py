"""Table nodes: rows of values into a ``vtkMRMLTableNode``.

One way to build a results table in the scene (metrics, fusion scores, evaluation rows):
each row a ``{column: value}`` dict; a column whose values are all numbers becomes a
double column (missing values NaN), any other a string column (missing values empty).

Slicer's VTK is imported lazily, inside the functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["is_numeric", "table_from_rows", "table_node_from_rows"]


def is_numeric(values: Sequence[Any]) -> bool:
    """True when every value is a number (``bool`` is not)."""
    return all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values)


def table_from_rows(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> Any:
    """A ``vtkTable`` of ``rows`` (one per dict); ``columns`` (default: every key, first seen
    first) names the columns and their order."""
    import vtk

    cols = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    table = vtk.vtkTable()
    for c in cols:
        values = [r.get(c) for r in rows]
        arr: Any
        if is_numeric([v for v in values if v is not None]) and any(v is not None for v in values):
            arr = vtk.vtkDoubleArray()
            for v in values:
                arr.InsertNextValue(float("nan") if v is None else float(v))
        else:
            arr = vtk.vtkStringArray()
            for v in values:
                arr.InsertNextValue("" if v is None else str(v))
        arr.SetName(str(c))
        table.AddColumn(arr)
    return table


def table_node_from_rows(rows: Sequence[dict[str, Any]], name: str, scene: Any = None,
                         columns: Sequence[str] | None = None, table_node: Any = None) -> Any:
    """``rows`` in a ``vtkMRMLTableNode``: ``table_node``'s table replaced, or a new node named
    ``name`` in ``scene`` (Slicer's scene when None)."""
    if table_node is None:
        if scene is None:
            import slicer

            scene = slicer.mrmlScene
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table_node.SetAndObserveTable(table_from_rows(rows, columns))
    return table_node
