"""Stand-in for ``slicer.parameterNodeWrapper`` (Slicer >= 5.2), enough for MedTorch's modules.

``@parameterNodeWrapper`` turns a class of annotated fields into a typed view of a
``vtkMRMLScriptedModuleNode``: plain values are stored as node parameters (strings) and
MRML nodes as node references, so they are saved with the scene as in Slicer.
``connectGui(ui)`` binds every widget whose dynamic property ``SlicerParameterName`` names
a field, both ways; an unknown name or an unsupported widget raises, as in Slicer.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Annotated, get_args, get_origin

_MISSING = object()


@dataclass(frozen=True)
class WithinRange:
    minimum: float
    maximum: float


@dataclass(frozen=True)
class Minimum:
    value: float


@dataclass(frozen=True)
class Maximum:
    value: float


@dataclass(frozen=True)
class Choice:
    choices: tuple[Any, ...]

    def __init__(self, choices: Any) -> None:
        object.__setattr__(self, "choices", tuple(choices))


@dataclass(frozen=True)
class Default:
    value: Any


@dataclass(frozen=True)
class Decimals:
    value: int


@dataclass(frozen=True)
class SingleStep:
    value: float


def _unwrap(annotation: Any) -> tuple[Any, list[Any], bool]:
    """(base type, Annotated extras, optional?)"""
    extras: list[Any] = []
    optional = False
    if get_origin(annotation) is Annotated:
        base, *extras = get_args(annotation)
    else:
        base = annotation
    if get_origin(base) is typing.Union or type(base).__name__ == "UnionType":
        args = [a for a in get_args(base) if a is not type(None)]
        optional = len(args) != len(get_args(base))
        base = args[0]
    return base, list(extras), optional


def _is_node_type(base: Any) -> bool:
    return isinstance(base, type) and base.__name__.startswith("vtkMRML")


class _Field:
    def __init__(self, name: str, annotation: Any, default: Any) -> None:
        self.name = name
        self.base, self.extras, self.optional = _unwrap(annotation)
        self.is_node = _is_node_type(self.base)
        for extra in self.extras:
            if isinstance(extra, Default):
                default = extra.value
        if default is _MISSING and not self.is_node:
            default = {bool: False, int: 0, float: 0.0, str: ""}.get(self.base, None)
            choice = next((e for e in self.extras if isinstance(e, Choice)), None)
            if choice is not None and choice.choices:
                default = choice.choices[0]
        self.default = None if self.is_node else default

    def validate(self, value: Any) -> Any:
        if self.is_node:
            if value is not None and not value.IsA(self.base.__name__):
                raise ValueError(f"{self.name} needs a {self.base.__name__}, got {value.GetClassName()}")
            return value
        if self.base is float:
            value = float(value)
        elif self.base is int:
            value = int(value)
        elif self.base is bool:
            value = bool(value)
        elif self.base is str:
            value = str(value)
        for extra in self.extras:
            if isinstance(extra, WithinRange) and not extra.minimum <= value <= extra.maximum:
                raise ValueError(f"{self.name}={value} is outside [{extra.minimum}, {extra.maximum}]")
            if isinstance(extra, Minimum) and value < extra.value:
                raise ValueError(f"{self.name}={value} is below {extra.value}")
            if isinstance(extra, Maximum) and value > extra.value:
                raise ValueError(f"{self.name}={value} is above {extra.value}")
            if isinstance(extra, Choice) and value not in extra.choices:
                raise ValueError(f"{self.name}={value!r} is not one of {extra.choices}")
        return value

    def serialize(self, value: Any) -> str:
        return repr(value) if self.base in (float, int) else (str(value) if self.base is not bool else ("true" if value else "false"))

    def deserialize(self, text: str) -> Any:
        if self.base is bool:
            return text.lower() in ("true", "1")
        if self.base is float:
            return float(text)
        if self.base is int:
            return int(text)
        return text


class _GuiBinding:
    def __init__(self) -> None:
        self.links: list[tuple[Any, str, Any]] = []
        self.observer: int | None = None


def parameterNodeWrapper(cls: type) -> type:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {name: _Field(name, ann, getattr(cls, name, _MISSING)) for name, ann in hints.items()}

    class Wrapper:
        allParameters = fields

        def __init__(self, parameterNode: Any) -> None:
            object.__setattr__(self, "parameterNode", parameterNode)
            object.__setattr__(self, "_bindings", {})
            for f in fields.values():
                if not f.is_node and not parameterNode.GetParameter(f.name) and f.default is not None:
                    parameterNode.SetParameter(f.name, f.serialize(f.default))

        def __getattr__(self, name: str) -> Any:
            if name not in fields:
                raise AttributeError(f"{cls.__name__} has no parameter {name!r}")
            f = fields[name]
            node = object.__getattribute__(self, "parameterNode")
            if f.is_node:
                return node.GetNodeReference(name)
            text = node.GetParameter(name)
            return f.deserialize(text) if text else f.default

        def __setattr__(self, name: str, value: Any) -> None:
            if name not in fields:
                raise AttributeError(f"{cls.__name__} has no parameter {name!r}")
            f = fields[name]
            value = f.validate(value)
            node = self.parameterNode
            if f.is_node:
                node.SetNodeReferenceID(name, value.GetID() if value is not None else None)
            else:
                node.SetParameter(name, f.serialize(value))

        # vtk object protocol, so VTKObservationMixin can observe the wrapper
        def AddObserver(self, event: Any, callback: Any, priority: float = 0.0) -> int:
            return self.parameterNode.AddObserver(event, callback, priority)

        def RemoveObserver(self, tag: int) -> None:
            self.parameterNode.RemoveObserver(tag)

        def StartModify(self) -> int:
            return self.parameterNode.StartModify()

        def EndModify(self, was: int) -> None:
            self.parameterNode.EndModify(was)

        def isCached(self, name: str) -> bool:  # API parity
            return False

        # -- GUI binding ----------------------------------------------------------------
        def connectGui(self, gui: Any) -> int:
            import vtk

            binding = _GuiBinding()
            widgets = gui.__dict__.values() if hasattr(gui, "__dict__") else gui
            for widget in widgets:
                pname = widget.property("SlicerParameterName") if hasattr(widget, "property") else None
                if not pname:
                    continue
                if pname not in fields:
                    raise ValueError(f"widget {widget.objectName} names unknown parameter {pname!r}")
                self._bind(widget, fields[pname], binding)
            binding.observer = self.parameterNode.AddObserver(vtk.vtkCommand.ModifiedEvent,
                                                              lambda *a: self._update_gui(binding))
            self._update_gui(binding)
            tag = id(binding)
            self._bindings[tag] = binding
            return tag

        def disconnectGui(self, tag: int) -> None:
            binding = self._bindings.pop(tag, None)
            if binding is None:
                return
            if binding.observer is not None:
                self.parameterNode.RemoveObserver(binding.observer)
            for widget, signal, slot in binding.links:
                widget.signal(signal).disconnect(slot)

        def _bind(self, widget: Any, f: _Field, binding: _GuiBinding) -> None:
            cls_name = widget.className()
            if f.is_node and cls_name == "qMRMLNodeComboBox":
                signal, slot = "currentNodeChanged", lambda node, n=f.name: setattr(self, n, node)
            elif cls_name in ("ctkSliderWidget", "QDoubleSpinBox", "ctkDoubleSpinBox", "QSpinBox", "QSlider"):
                signal, slot = "valueChanged", lambda v, n=f.name: setattr(self, n, v)
            elif cls_name == "QCheckBox" and f.base is bool:
                signal, slot = "toggled", lambda v, n=f.name: setattr(self, n, v)
            elif cls_name == "QComboBox" and f.base is str:
                signal, slot = "currentTextChanged", lambda v, n=f.name: setattr(self, n, v)
                choice = next((e for e in f.extras if isinstance(e, Choice)), None)
                if choice is not None and not widget.items:
                    widget.addItems([str(c) for c in choice.choices])
            elif cls_name == "QLineEdit" and f.base is str:
                signal, slot = "textChanged", lambda v, n=f.name: setattr(self, n, v)
            else:
                raise TypeError(f"no GUI connector for widget {widget.objectName} ({cls_name}) and parameter "
                                f"{f.name} of type {getattr(f.base, '__name__', f.base)}")
            widget.signal(signal).connect(slot)
            binding.links.append((widget, signal, slot))

        def _update_gui(self, binding: _GuiBinding) -> None:
            for widget, _signal, _slot in binding.links:
                name = widget.property("SlicerParameterName")
                value = getattr(self, name)
                cls_name = widget.className()
                if cls_name == "qMRMLNodeComboBox":
                    if widget.currentNode() is not value:
                        widget._current_node = value
                elif cls_name == "QCheckBox":
                    widget.checked = bool(value)
                elif cls_name == "QComboBox":
                    if value in widget.items:
                        widget.currentIndex = widget.items.index(value)
                elif cls_name == "QLineEdit":
                    widget.text = value
                else:
                    widget.value = value

    Wrapper.__name__ = cls.__name__
    Wrapper.__qualname__ = cls.__qualname__
    Wrapper.__doc__ = cls.__doc__
    Wrapper.__module__ = cls.__module__
    return Wrapper
