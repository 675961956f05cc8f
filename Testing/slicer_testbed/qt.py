"""Stand-in for PythonQt's ``qt`` module: just what MedTorch's widgets and runners use.

Widgets hold their state in plain attributes; signals are :class:`Signal` objects that
also accept PythonQt's ``widget.connect("signal(args)", slot)`` form. Timers do not run
by themselves: :func:`process_events` fires the active ones (``slicer.app.processEvents``
calls it), so tests drive the GUI's event loop explicitly.
"""

from __future__ import annotations

import time
from typing import Any, Callable

_ACTIVE_TIMERS: list["QTimer"] = []


class Signal:
    def __init__(self) -> None:
        self._slots: list[Callable[..., Any]] = []

    def connect(self, slot: Callable[..., Any]) -> None:
        self._slots.append(slot)

    def disconnect(self, slot: Callable[..., Any] | None = None) -> None:
        if slot is None:
            self._slots.clear()
        elif slot in self._slots:
            self._slots.remove(slot)

    def emit(self, *args: Any) -> None:
        for slot in list(self._slots):
            try:
                slot(*args)
            except TypeError:
                slot()


class QObject:
    def __init__(self, parent: Any = None) -> None:
        self._parent = parent
        self._signals: dict[str, Signal] = {}
        self._dynamic: dict[str, Any] = {}
        self.objectName = ""

    def signal(self, name: str) -> Signal:
        return self._signals.setdefault(name, Signal())

    def connect(self, signature: str, slot: Callable[..., Any]) -> None:
        self.signal(signature.split("(")[0]).connect(slot)

    def disconnect(self, signature: str, slot: Callable[..., Any] | None = None) -> None:
        self.signal(signature.split("(")[0]).disconnect(slot)

    def property(self, name: str) -> Any:
        return self._dynamic.get(name)

    def setProperty(self, name: str, value: Any) -> None:
        self._dynamic[name] = value

    def __getattr__(self, name: str) -> Any:
        # PythonQt exposes signals as attributes: widget.clicked.connect(...)
        if name.startswith("_"):
            raise AttributeError(name)
        return self.signal(name)


class QTimer(QObject):
    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self.interval = 0
        self.singleShot_ = False
        self.active = False
        self._due = 0.0

    def setInterval(self, ms: int) -> None:
        self.interval = ms

    def setSingleShot(self, value: bool) -> None:
        self.singleShot_ = value

    def start(self, ms: int | None = None) -> None:
        if ms is not None:
            self.interval = ms
        self.active = True
        self._due = time.monotonic() + self.interval / 1000.0
        if self not in _ACTIVE_TIMERS:
            _ACTIVE_TIMERS.append(self)

    def stop(self) -> None:
        self.active = False
        if self in _ACTIVE_TIMERS:
            _ACTIVE_TIMERS.remove(self)

    def isActive(self) -> bool:
        return self.active

    @staticmethod
    def singleShot(ms: int, slot: Callable[[], Any]) -> None:
        t = QTimer()
        t.setSingleShot(True)
        t.signal("timeout").connect(slot)
        t.start(ms)


def process_events() -> None:
    """Fire every active timer that is due (once)."""
    now = time.monotonic()
    for timer in list(_ACTIVE_TIMERS):
        if timer.active and now >= timer._due:
            timer._due = now + timer.interval / 1000.0
            if timer.singleShot_:
                timer.stop()
            timer.signal("timeout").emit()


class QWidget(QObject):
    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self.enabled = True
        self.visible = True
        self.toolTip = ""
        self.styleSheet = ""
        self._layout: Any = None

    def setEnabled(self, value: bool) -> None:
        self.enabled = bool(value)

    def isEnabled(self) -> bool:
        return self.enabled

    def show(self) -> None:
        self.visible = True

    def hide(self) -> None:
        self.visible = False

    def close(self) -> None:
        self.visible = False

    def setToolTip(self, text: str) -> None:
        self.toolTip = text

    def setStyleSheet(self, sheet: str) -> None:
        self.styleSheet = sheet

    def layout(self) -> Any:
        return self._layout

    def setLayout(self, layout: Any) -> None:
        self._layout = layout


class QLayout(QObject):
    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self.widgets: list[Any] = []
        if isinstance(parent, QWidget):
            parent.setLayout(self)

    def addWidget(self, widget: Any, *args: Any) -> None:
        self.widgets.append(widget)

    def addStretch(self, *args: Any) -> None:
        pass

    def addRow(self, *args: Any) -> None:
        self.widgets.extend(a for a in args if isinstance(a, QWidget))


QVBoxLayout = QHBoxLayout = QFormLayout = QGridLayout = QLayout


class QProgressDialog(QWidget):
    def __init__(self, label: str = "", cancel_text: str = "Cancel", minimum: int = 0, maximum: int = 100,
                 parent: Any = None) -> None:
        super().__init__(parent)
        self.labelText = label
        self.minimum = minimum
        self.maximum = maximum
        self.value = minimum
        self.wasCanceled = False
        self.windowTitle = ""
        self.minimumDuration = 0

    def setValue(self, value: int) -> None:
        self.value = value

    def setLabelText(self, text: str) -> None:
        self.labelText = text

    def setWindowTitle(self, text: str) -> None:
        self.windowTitle = text

    def setMinimumDuration(self, ms: int) -> None:
        self.minimumDuration = ms

    def cancel(self) -> None:
        """What the Cancel button does."""
        self.wasCanceled = True
        self.signal("canceled").emit()


class QMessageBox(QWidget):
    NoIcon, Information, Warning, Critical, Question = 0, 1, 2, 3, 4
    Ok = 0x400
    Cancel = 0x400000
    Yes = 0x4000
    No = 0x10000


class _Qt:
    WaitCursor = 3
    ArrowCursor = 0
    AlignLeft = 1


Qt = _Qt()


class QCursor:
    def __init__(self, shape: int = 0) -> None:
        self.shape = shape


class QApplication:
    @staticmethod
    def processEvents() -> None:
        process_events()
