"""A Qt-free ``.ui`` loader: builds stand-in widgets from Qt Designer XML.

``load_ui(path)`` returns the root widget; every ``<widget>`` becomes a stand-in with
its ``objectName``, class name, properties (``toolTip``, ``suffix``, dynamic properties
such as ``SlicerParameterName``) and the state a real widget of that class would have
(``value``, ``checked``, ``currentText``, ``currentNode()`` ...). ``child_widget_variables``
mirrors ``slicer.util.childWidgetVariables``.
"""

from __future__ import annotations

import types
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import qt

VALUE_WIDGETS = {"ctkSliderWidget", "QDoubleSpinBox", "ctkDoubleSpinBox", "QSpinBox", "QSlider", "ctkSpinBox"}
MRML_COMBO = {"qMRMLNodeComboBox"}


def _prop_value(prop: ET.Element) -> Any:
    child = next(iter(prop), None)
    if child is None:
        return None
    tag = child.tag
    if tag == "string":
        return child.text or ""
    if tag in ("double", "float"):
        return float(child.text or 0)
    if tag == "number":
        return int(child.text or 0)
    if tag == "bool":
        return (child.text or "").strip().lower() == "true"
    if tag == "stringlist":
        return [s.text or "" for s in child.findall("string")]
    if tag in ("enum", "set", "cstring"):
        return child.text or ""
    return child.text


class FakeWidget(qt.QWidget):
    """Stand-in for any widget class; behaviour depends on ``className``."""

    def __init__(self, class_name: str, name: str, props: dict[str, Any], dynamic: dict[str, Any]) -> None:
        super().__init__(None)
        self.className_ = class_name
        self.objectName = name
        self.props = props
        self._dynamic.update(dynamic)
        self.children_: list[FakeWidget] = []
        self.items: list[str] = []
        self.toolTip = props.get("toolTip", "")
        self.text = props.get("text", "")
        self.enabled = props.get("enabled", True)
        self.checked = bool(props.get("checked", False))
        self.collapsed = bool(props.get("collapsed", False))
        self.minimum = props.get("minimum", 0.0)
        self.maximum = props.get("maximum", 99.0 if class_name in ("QSpinBox", "QDoubleSpinBox") else 100.0)
        self.singleStep = props.get("singleStep", 1.0)
        self.decimals = props.get("decimals", 2)
        self.suffix = props.get("suffix", "")
        self.value = props.get("value", self.minimum if class_name in VALUE_WIDGETS else 0)
        self.nodeTypes = props.get("nodeTypes", [])
        self.noneEnabled = props.get("noneEnabled", False)
        self.addEnabled = props.get("addEnabled", True)
        self.removeEnabled = props.get("removeEnabled", True)
        self._scene: Any = None
        self._current_node: Any = None
        self.currentIndex = 0
        self.directory = props.get("directory", "")  # ctkDirectoryButton
        self.currentPath = props.get("currentPath", "")  # ctkPathLineEdit

    def className(self) -> str:
        return self.className_

    # -- buttons ------------------------------------------------------------------------
    def click(self) -> None:
        if self.className_ == "QCheckBox":
            self.setChecked(not self.checked)
        if self.enabled:
            self.signal("clicked").emit(False)

    def setChecked(self, value: bool) -> None:
        if bool(value) != self.checked:
            self.checked = bool(value)
            self.signal("toggled").emit(self.checked)

    def setText(self, text: str) -> None:
        self.text = text

    # -- values -------------------------------------------------------------------------
    def setValue(self, value: float) -> None:
        value = min(max(value, self.minimum), self.maximum)
        if value != self.value:
            self.value = value
            self.signal("valueChanged").emit(value)

    # -- combo boxes ----------------------------------------------------------------------
    @property
    def currentText(self) -> str:
        return self.items[self.currentIndex] if 0 <= self.currentIndex < len(self.items) else ""

    def addItem(self, text: str, *args: Any) -> None:
        self.items.append(text)

    def addItems(self, texts: list[str]) -> None:
        self.items.extend(texts)

    def clear(self) -> None:
        self.items.clear()
        self.currentIndex = 0

    def findText(self, text: str) -> int:
        return self.items.index(text) if text in self.items else -1

    def setCurrentText(self, text: str) -> None:
        if text in self.items:
            self.setCurrentIndex(self.items.index(text))

    def setCurrentIndex(self, index: int) -> None:
        if index != self.currentIndex:
            self.currentIndex = index
            self.signal("currentIndexChanged").emit(index)
            self.signal("currentTextChanged").emit(self.currentText)

    # -- MRML -----------------------------------------------------------------------------
    def setMRMLScene(self, scene: Any) -> None:
        self._scene = scene
        for child in self.children_:
            if child.className_.startswith("qMRML") or child.className_ == "qSlicerWidget":
                child.setMRMLScene(scene)

    def mrmlScene(self) -> Any:
        return self._scene

    def currentNode(self) -> Any:
        return self._current_node

    @property
    def currentNodeID(self) -> str | None:
        return self._current_node.GetID() if self._current_node is not None else None

    def setCurrentNode(self, node: Any) -> None:
        if node is not None and self.nodeTypes and not any(node.IsA(t) for t in self.nodeTypes):
            raise TypeError(f"{self.objectName} accepts {self.nodeTypes}, not {node.GetClassName()}")
        if node is not self._current_node:
            self._current_node = node
            self.signal("currentNodeChanged").emit(node)
            self.signal("currentNodeIDChanged").emit(node.GetID() if node is not None else "")

    def setCurrentNodeID(self, node_id: str) -> None:
        self.setCurrentNode(self._scene.GetNodeByID(node_id) if node_id and self._scene is not None else None)


def _build(elem: ET.Element) -> FakeWidget:
    props: dict[str, Any] = {}
    dynamic: dict[str, Any] = {}
    for prop in elem.findall("property"):
        name = prop.get("name", "")
        value = _prop_value(prop)
        (dynamic if prop.get("stdset") == "0" else props)[name] = value
    widget = FakeWidget(elem.get("class", "QWidget"), elem.get("name", ""), props, dynamic)
    if widget.className_ == "QComboBox":
        for item in elem.findall("item"):
            for prop in item.findall("property"):
                if prop.get("name") == "text":
                    widget.items.append(_prop_value(prop))
    for child in elem.iter("widget"):
        if child is elem:
            continue
    # direct widget descendants (through layouts/items)
    for child in _widget_children(elem):
        widget.children_.append(_build(child))
    return widget


def _widget_children(elem: ET.Element) -> list[ET.Element]:
    found: list[ET.Element] = []
    for child in elem:
        if child.tag == "widget":
            found.append(child)
        elif child.tag in ("layout", "item"):
            found.extend(_widget_children(child))
    return found


def load_ui(path: str | Path) -> FakeWidget:
    root = ET.parse(str(path)).getroot()
    top = root.find("widget")
    if top is None:
        raise ValueError(f"{path} has no top-level widget")
    return _build(top)


def iter_widgets(widget: FakeWidget) -> list[FakeWidget]:
    out = [widget]
    for child in widget.children_:
        out.extend(iter_widgets(child))
    return out


def child_widget_variables(widget: FakeWidget) -> types.SimpleNamespace:
    ns = types.SimpleNamespace()
    for w in iter_widgets(widget)[1:]:
        if w.objectName:
            setattr(ns, w.objectName, w)
    return ns
