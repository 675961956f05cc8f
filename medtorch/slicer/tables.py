"""Table nodes: rows of values into a ``vtkMRMLTableNode``.

One way to build a results table in the scene (metrics, fusion scores, evaluation rows):
each row a ``{column: value}`` dict; a column whose values are all numbers becomes a
double column (missing values NaN), any other a string column (missing values empty), unless
the caller names a column's kind (``"str"``, ``"int"`` or ``"float"``), which holds even for a
table without rows.

Slicer's VTK is imported lazily, inside the functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

ColumnKind = Literal["str", "int", "float"]

import numpy as np

__all__ = ["ColumnKind", "is_numeric", "table_from_rows", "table_node_from_rows"]


def is_numeric(values: Sequence[Any]) -> bool:
    """True when every value is a number (``bool`` is not)."""
    return all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values)


def _kind_of(values: Sequence[Any]) -> ColumnKind:
    present = [v for v in values if v is not None]
    return "float" if present and is_numeric(present) else "str"


def table_from_rows(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None,
                    kinds: Mapping[str, ColumnKind] | None = None) -> Any:
    """A ``vtkTable`` of ``rows`` (one per dict); ``columns`` (default: every key, first seen
    first) names the columns and their order; ``kinds`` fixes the kind of some columns (an
    ``int`` column's missing values are 0)."""
    import vtk

    cols = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    table = vtk.vtkTable()
    for c in cols:
        values = [r.get(c) for r in rows]
        kind = (kinds or {}).get(c) or _kind_of(values)
        arr: Any
        if kind == "float":
            arr = vtk.vtkDoubleArray()
            for v in values:
                arr.InsertNextValue(float("nan") if v is None else float(v))
        elif kind == "int":
            arr = vtk.vtkIntArray()
            for v in values:
                arr.InsertNextValue(0 if v is None else int(v))
        else:
            arr = vtk.vtkStringArray()
            for v in values:
                arr.InsertNextValue("" if v is None else str(v))
        arr.SetName(str(c))
        table.AddColumn(arr)
    return table


def table_node_from_rows(rows: Sequence[dict[str, Any]], name: str, scene: Any = None,
                         columns: Sequence[str] | None = None, table_node: Any = None,
                         kinds: Mapping[str, ColumnKind] | None = None) -> Any:
    """``rows`` in a ``vtkMRMLTableNode``: ``table_node``'s table replaced, or a new node named
    ``name`` (made unique) in ``scene`` (Slicer's scene when None)."""
    if table_node is None:
        if scene is None:
            import slicer

            scene = slicer.mrmlScene
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    table_node.SetAndObserveTable(table_from_rows(rows, columns, kinds))
    table_node.Modified()
    return table_node
