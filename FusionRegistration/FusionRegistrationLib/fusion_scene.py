"""Fusion in Slicer's scene and views: overlays, colour maps, volume rendering, metric tables, plots.

Reusable pieces for the FusionRegistration module's Logic (they need only MRML, so they
run on the headless test bed as in Slicer):

* :func:`color_node` -- a colour node for a core colour map name (``hot``, ``jet``,
  ``rainbow``, ``gray``: a ``vtkMRMLColorTableNode`` built once from
  :func:`medtorch.fusion.color.color_map_lut`, so views show exactly the colours the colour
  fusion used) or any colour node ID of the scene (``vtkMRMLPETProceduralColorNodePET-Heat``,
  ``vtkMRMLColorTableNodeRainbow``, ...).
* :func:`show_fusion_in_views` -- fixed volume as background, moving as foreground with an
  opacity and a colour map, in every slice view, views linked.
* :func:`show_volume_rendering` -- volume rendering of a (fused) volume in the 3D view.
* :func:`rgb_volume_node` -- an RGB vector volume node for colour fusion.
* :func:`metrics_table_node` -- metrics into a ``vtkMRMLTableNode`` (one row per case and
  method, or one row per metric).
* :func:`box_plot_chart` -- a box plot of one metric per method as a ``vtkMRMLPlotChartNode``
  (each box drawn as a line series: whiskers, box and median; the values as points).
* :func:`add_fuse_result` -- everything a ``fuse`` operation returned, as new nodes.
* :func:`node_modality` -- a volume node's DICOM modality (node or subject-hierarchy attribute).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medtorch.errors import MedTorchInputError
from medtorch.slicer.tables import table_node_from_rows
from medtorch.volume import Volume

__all__ = [
    "COLOR_NODE_ATTRIBUTE",
    "add_fuse_result",
    "box_plot_chart",
    "color_node",
    "metrics_table_node",
    "node_modality",
    "rgb_volume_node",
    "show_fusion_in_views",
    "show_volume_rendering",
]

#: Attribute that marks the colour table nodes made here (value: the colour map name).
COLOR_NODE_ATTRIBUTE = "MedTorch.colorMap"


def _slicer() -> Any:
    import slicer

    return slicer


def _scene(scene: Any) -> Any:
    return scene if scene is not None else _slicer().mrmlScene


def color_node(name: str, scene: Any = None) -> Any:
    """The colour node for ``name``: a core colour map (made once per scene) or a node ID."""
    from medtorch.fusion.color import COLOR_MAPS, color_map_lut

    sc = _scene(scene)
    existing = sc.GetNodeByID(str(name))
    if existing is not None and existing.IsA("vtkMRMLColorNode"):
        return existing
    key = str(name).strip().lower()
    if key not in COLOR_MAPS and key != "grey":
        raise MedTorchInputError(f"unknown colour map {name!r}",
                                 "use one of " + ", ".join(COLOR_MAPS) + " or the ID of a colour node in the scene")
    key = "gray" if key == "grey" else key
    for i in range(sc.GetNumberOfNodesByClass("vtkMRMLColorTableNode")):
        node = sc.GetNthNodeByClass(i, "vtkMRMLColorTableNode")
        if node.GetAttribute(COLOR_NODE_ATTRIBUTE) == key:
            return node
    lut = color_map_lut(key)
    node = sc.AddNewNodeByClass("vtkMRMLColorTableNode", f"MedTorch {key}")
    node.SetTypeToUser()
    node.SetNumberOfColors(lut.shape[0])
    node.SetNamesInitialised(True)
    for i, (r, g, b) in enumerate(lut):
        node.SetColor(i, f"{key} {i}", float(r), float(g), float(b), 1.0)
    node.SetAttribute(COLOR_NODE_ATTRIBUTE, key)
    node.SetAttribute("Category", "MedTorch")
    return node


def node_modality(volume_node: Any, scene: Any = None) -> str | None:
    """The DICOM Modality (``CT``, ``MR``, ``PT``, ``NM``, ...) of a volume node, or None.

    Looked up in the node's ``DICOM.Modality`` attribute, then in the subject-hierarchy
    item of the node and its parent (where Slicer's DICOM import stores the series' modality).
    """
    if volume_node is None:
        return None
    value = volume_node.GetAttribute("DICOM.Modality")
    if value:
        return str(value).strip().upper()
    sc = _scene(scene)
    sh = sc.GetFirstNodeByClass("vtkMRMLSubjectHierarchyNode")  # look only: never create one
    if sh is None:
        return None
    item = sh.GetItemByDataNode(volume_node)
    for _ in range(2):
        if not item:
            break
        value = sh.GetItemAttribute(item, "DICOM.Modality")
        if value:
            return str(value).strip().upper()
        item = sh.GetItemParent(item)
    return None


def show_fusion_in_views(fixed_node: Any, moving_node: Any, opacity: float = 0.5, color_map: str | None = None,
                         link: bool = True, scene: Any = None) -> Any:
    """Fixed as background, moving as foreground at ``opacity`` (0..1) in every slice view.

    With ``color_map`` the moving volume's display uses that colour node (window/level from
    its own range). Views are linked when ``link``. Returns the colour node (or None).
    """
    from medtorch.slicer.mrml import show_in_slice_views

    if fixed_node is None or moving_node is None:
        raise MedTorchInputError("the fixed or moving volume is not set", "select both volumes")
    if not 0.0 <= float(opacity) <= 1.0:
        raise MedTorchInputError(f"the foreground opacity {opacity} is outside [0, 1]", "give a value from 0 to 1")
    sc = _scene(scene)
    cnode = None
    for node in (fixed_node, moving_node):
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
    if color_map:
        cnode = color_node(color_map, sc)
        disp = moving_node.GetDisplayNode()
        disp.SetAndObserveColorNodeID(cnode.GetID())
        disp.AutoWindowLevelOn()
    show_in_slice_views(background=fixed_node, foreground=moving_node, foreground_opacity=float(opacity), link=link,
                        scene=sc)
    return cnode


def show_volume_rendering(volume_node: Any, preset: str | None = None, visible: bool = True,
                          threshold: float | None = None) -> Any:
    """Volume rendering display node of ``volume_node`` in the 3D view (created if needed).

    ``preset`` is a Volume Rendering preset name (used when Slicer has it, e.g. ``MR-Default``);
    otherwise a grey ramp over the volume's range is set: transparent below ``threshold``
    (default: 10 % of the range above the minimum), opaque towards the maximum.
    """
    slicer = _slicer()
    logic = slicer.modules.volumerendering.logic()
    disp = logic.GetFirstVolumeRenderingDisplayNode(volume_node) if hasattr(
        logic, "GetFirstVolumeRenderingDisplayNode") else None
    if disp is None:
        disp = logic.CreateDefaultVolumeRenderingNodes(volume_node)
    used = None
    if preset:
        node = logic.GetPresetByName(preset)
        if node is not None:
            disp.GetVolumePropertyNode().Copy(node)
            used = preset
    if used is None:
        arr = slicer.util.arrayFromVolume(volume_node)
        lo, hi = float(np.min(arr)), float(np.max(arr))
        hi = hi if hi > lo else lo + 1.0
        t = lo + 0.1 * (hi - lo) if threshold is None else float(threshold)
        prop = disp.GetVolumePropertyNode().GetVolumeProperty()
        opacity = prop.GetScalarOpacity()
        opacity.RemoveAllPoints()
        opacity.AddPoint(lo, 0.0)
        opacity.AddPoint(t, 0.0)
        opacity.AddPoint(hi, 0.8)
        colors = prop.GetRGBTransferFunction()
        colors.RemoveAllPoints()
        colors.AddRGBPoint(lo, 0.0, 0.0, 0.0)
        colors.AddRGBPoint(hi, 1.0, 1.0, 1.0)
    disp.SetVisibility(bool(visible))
    disp.SetAttribute("MedTorch.preset", used or "grey ramp")
    return disp


def rgb_volume_node(volume: Volume, name: str = "", scene: Any = None, reference_node: Any = None) -> Any:
    """A ``vtkMRMLVectorVolumeNode`` showing an RGB volume (uint8, 3 components) in colour.

    ``reference_node``'s parent transform is copied (the result lies where the fixed volume does).
    """
    from medtorch.slicer.mrml import node_from_volume

    if volume.kind != "vector" or volume.num_components != 3:
        raise MedTorchInputError(
            f"an RGB volume needs 3 components per voxel, got a {volume.kind} volume with "
            f"{volume.num_components} component(s)", "give the rgb output of colour fusion")
    arr = volume.array
    if arr.dtype != np.uint8:
        scale = 255.0 if np.issubdtype(arr.dtype, np.floating) and float(np.max(arr)) <= 1.0 else 1.0
        arr = np.clip(np.round(arr.astype(np.float64) * scale), 0, 255).astype(np.uint8)
        volume = Volume(arr, volume.geometry, "vector", dict(volume.metadata))
    node = node_from_volume(volume, name, _scene(scene))
    disp = node.GetDisplayNode()
    if disp is not None and hasattr(disp, "SetVisualizationModeToScalarVolume"):
        disp.SetVisualizationModeToScalarVolume()
    if reference_node is not None:
        node.SetAndObserveTransformNodeID(reference_node.GetTransformNodeID())
    node.SetAttribute("MedTorch.output", "colour fusion (RGB)")
    return node


def metrics_table_node(rows: Sequence[dict[str, Any]] | dict[str, float], name: str = "Fusion metrics",
                       scene: Any = None, columns: Sequence[str] | None = None, table_node: Any = None) -> Any:
    """Metrics into a ``vtkMRMLTableNode`` (a new one, or ``table_node`` replaced).

    ``rows``: a list of dicts (one row each; e.g. the rows of
    :func:`medtorch.fusion.evaluate.evaluate`) or one ``{metric: value}`` dict, stored as
    one row per metric (columns ``metric`` and ``value``). Numeric columns become double
    columns, the rest strings (:func:`medtorch.slicer.tables.table_node_from_rows`).
    """
    if isinstance(rows, dict):
        rows = [{"metric": k, "value": float(v)} for k, v in rows.items()]
    rows = list(rows)
    if not rows:
        raise MedTorchInputError("there are no metrics to put in a table", "run the fusion with metrics first")
    node = table_node_from_rows(rows, name, _scene(scene), columns, table_node)
    node.SetAttribute("MedTorch.output", "fusion metrics")
    return node


def _box_path(x: float, values: np.ndarray, half_width: float) -> tuple[np.ndarray, np.ndarray]:
    """Points of one box-and-whisker drawing traced as a single polyline (13 points)."""
    q1, med, q3 = (float(v) for v in np.percentile(values, [25, 50, 75]))
    iqr = q3 - q1
    lo_w = float(values[values >= q1 - 1.5 * iqr].min())
    hi_w = float(values[values <= q3 + 1.5 * iqr].max())
    w = half_width
    pts = [(x, lo_w), (x, q1), (x - w, q1), (x - w, q3), (x, q3), (x, hi_w), (x, q3), (x + w, q3), (x + w, med),
           (x - w, med), (x + w, med), (x + w, q1), (x, q1)]
    xs, ys = zip(*pts)
    return np.array(xs), np.array(ys)


def box_plot_chart(rows: Sequence[dict[str, Any]], metric: str, methods: Sequence[str] | None = None,
                   name: str = "", scene: Any = None, show: bool = True) -> Any:
    """A box plot of ``metric`` per method (``rows`` as in :func:`metrics_table_node`).

    Boxes: quartiles, median, whiskers to the furthest value within 1.5 IQR (matplotlib's
    rule); method ``k`` sits at x = k (1-based; the series are named after the methods).
    Returns the ``vtkMRMLPlotChartNode``; its table nodes are referenced by the series.
    With ``show``, Slicer's layout shows the chart when it has a plots module.
    """
    import vtk

    sc = _scene(scene)
    meths = list(methods) if methods is not None else list(dict.fromkeys(r["method"] for r in rows))
    data = {m: np.array([float(r[metric]) for r in rows if r.get("method") == m and metric in r
                         and np.isfinite(float(r[metric]))]) for m in meths}
    if not any(v.size for v in data.values()):
        raise MedTorchInputError(f"there are no {metric} values to plot", "run the evaluation with metrics first")
    title = name or f"{metric} per method"
    chart = sc.AddNewNodeByClass("vtkMRMLPlotChartNode", title)
    box_table = vtk.vtkTable()
    point_table = vtk.vtkTable()
    n_points = max(v.size for v in data.values())
    series_nodes = []
    for k, m in enumerate(meths, start=1):
        vals = data[m]
        if vals.size == 0:
            continue
        xs, ys = _box_path(float(k), vals, 0.25)
        for col, values in ((f"{m} box x", xs), (f"{m} box y", ys)):
            arr = vtk.vtkDoubleArray()
            arr.SetName(col)
            for v in values:
                arr.InsertNextValue(float(v))
            box_table.AddColumn(arr)
        for col, values in ((f"{m} x", np.full(vals.size, float(k))), (f"{m} y", vals)):
            arr = vtk.vtkDoubleArray()
            arr.SetName(col)
            for v in values:
                arr.InsertNextValue(float(v))
            for _ in range(n_points - vals.size):  # equal column lengths: pad by repeating the last value
                arr.InsertNextValue(float(values[-1]))
            point_table.AddColumn(arr)
    box_node = sc.AddNewNodeByClass("vtkMRMLTableNode", f"{title} (boxes)")
    box_node.SetAndObserveTable(box_table)
    point_node = sc.AddNewNodeByClass("vtkMRMLTableNode", f"{title} (values)")
    point_node.SetAndObserveTable(point_table)
    palette = [(0.12, 0.47, 0.71), (1.0, 0.5, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16), (0.58, 0.4, 0.74),
               (0.55, 0.34, 0.29), (0.89, 0.47, 0.76), (0.5, 0.5, 0.5)]
    for k, m in enumerate(meths):
        if data[m].size == 0:
            continue
        colour = palette[k % len(palette)]
        box = sc.AddNewNodeByClass("vtkMRMLPlotSeriesNode", m)
        box.SetAndObserveTableNodeID(box_node.GetID())
        box.SetXColumnName(f"{m} box x")
        box.SetYColumnName(f"{m} box y")
        box.SetPlotType(box.PlotTypeScatter)
        box.SetMarkerStyle(box.MarkerStyleNone)
        box.SetLineStyle(box.LineStyleSolid)
        box.SetColor(*colour)
        pts = sc.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{m} values")
        pts.SetAndObserveTableNodeID(point_node.GetID())
        pts.SetXColumnName(f"{m} x")
        pts.SetYColumnName(f"{m} y")
        pts.SetPlotType(pts.PlotTypeScatter)
        pts.SetLineStyle(pts.LineStyleNone)
        pts.SetMarkerStyle(pts.MarkerStyleCircle)
        pts.SetColor(*colour)
        chart.AddAndObservePlotSeriesNodeID(box.GetID())
        chart.AddAndObservePlotSeriesNodeID(pts.GetID())
        series_nodes += [box, pts]
    chart.SetTitle(title)
    chart.SetXAxisTitle("method: " + ", ".join(f"{k} {m}" for k, m in enumerate(meths, start=1)))
    chart.SetYAxisTitle(metric)
    chart.SetLegendVisibility(True)
    chart.SetAttribute("MedTorch.output", "box plot")
    if show:
        slicer = _slicer()
        plots = getattr(slicer.modules, "plots", None)
        if plots is not None and hasattr(plots.logic(), "ShowChartInLayout"):
            plots.logic().ShowChartInLayout(chart)
    return chart


def add_fuse_result(result: Any, fixed_node: Any, moving_node: Any | None = None, name: str = "",
                    output_node: Any = None, show: bool = True, opacity: float = 0.5, color_map: str | None = None,
                    render_3d: bool = True, scene: Any = None) -> dict[str, Any]:
    """Put a ``fuse`` operation's result (:class:`~medtorch.ops.OperationResult`) into the scene.

    Creates (or updates ``output_node`` with) the fused scalar volume under the fixed
    volume's parent transform, an RGB vector volume for colour fusion, and a metrics table
    when metrics were computed. With ``show``: the fixed/moving overlay in the slice views
    (:func:`show_fusion_in_views`, when ``moving_node`` is given) and the fused volume
    rendered in the 3D view (:func:`show_volume_rendering`) when ``render_3d``. Returns
    ``{"fused", "rgb", "table"}`` (missing ones None).
    """
    from medtorch.slicer.mrml import node_from_volume, update_node_from_volume

    sc = _scene(scene)
    fused = result.volumes["fused"]
    base = name or "fused"
    if output_node is not None:
        node = update_node_from_volume(output_node, fused)
    else:
        node = node_from_volume(fused, sc.GenerateUniqueName(base), sc)
    node.SetAndObserveTransformNodeID(fixed_node.GetTransformNodeID())
    info = result.values.get("info", {})
    node.SetAttribute("MedTorch.operation", "fuse")
    node.SetAttribute("MedTorch.method", str(info.get("method", "")))
    node.SetAttribute("MedTorch.outputRange", str(info.get("output_range", "[0, 1]")))
    node.SetAttribute("MedTorch.overlapFraction", f"{float(result.values.get('overlap_fraction', 1.0)):.4f}")
    if node.GetDisplayNode() is not None:
        node.GetDisplayNode().AutoWindowLevelOn()
    out: dict[str, Any] = {"fused": node, "rgb": None, "table": None}
    if "rgb" in result.volumes:
        out["rgb"] = rgb_volume_node(result.volumes["rgb"], sc.GenerateUniqueName(f"{base} RGB"), sc, fixed_node)
    metrics = result.values.get("metrics") or {}
    if metrics:
        out["table"] = metrics_table_node({k: v for k, v in metrics.items() if k != "slices_scored"},
                                          sc.GenerateUniqueName(f"{base} metrics"), sc)
    if show:
        if moving_node is not None:
            show_fusion_in_views(fixed_node, moving_node, opacity, color_map, scene=sc)
        if render_3d:
            show_volume_rendering(node)
    return out
