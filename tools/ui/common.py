"""Building blocks for the modules' Qt Designer ``.ui`` files (see ``tools/make_ui.py``)."""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

REPO = Path(__file__).resolve().parent.parent

CUSTOM = {
    "ctkCollapsibleButton": ("QWidget", "ctkCollapsibleButton.h", True),
    "ctkSliderWidget": ("QWidget", "ctkSliderWidget.h", False),
    "qMRMLNodeComboBox": ("QWidget", "qMRMLNodeComboBox.h", False),
    "qMRMLWidget": ("QWidget", "qMRMLWidget.h", True),
}
#: Custom widgets declared only in the ``.ui`` files that use them.
CUSTOM_IF_USED = {
    "ctkDirectoryButton": ("QWidget", "ctkDirectoryButton.h", False),
    "ctkPathLineEdit": ("QWidget", "ctkPathLineEdit.h", False),
}


class QtSet(str):
    """A property value written as a Qt flag set (``<set>A|B</set>``), e.g. ctkPathLineEdit's filters."""


def prop(name: str, value, stdset: bool = True) -> str:
    extra = "" if stdset else ' stdset="0"'
    if isinstance(value, bool):
        body = f"<bool>{'true' if value else 'false'}</bool>"
    elif isinstance(value, int):
        body = f"<number>{value}</number>"
    elif isinstance(value, float):
        body = f"<double>{value!r}</double>"
    elif isinstance(value, QtSet):
        body = f"<set>{escape(str(value))}</set>"
    elif isinstance(value, list):
        body = "<stringlist>" + "".join(f"<string>{escape(v)}</string>" for v in value) + "</stringlist>"
    else:
        body = f"<string>{escape(str(value))}</string>"
    return f'<property name="{name}"{extra}>{body}</property>'


def widget(cls: str, name: str, tooltip: str, param: str | None = None, items: list[str] | None = None, **props) -> str:
    parts = [f'<widget class="{cls}" name="{name}">', prop("toolTip", tooltip)]
    for key, value in props.items():
        parts.append(prop(key, value))
    if param:
        parts.append(prop("SlicerParameterName", param, stdset=False))
    for item in items or []:
        parts.append(f"<item>{prop('text', item)}</item>")
    parts.append("</widget>")
    return "".join(parts)


def request_items(request: type, field: str, drop: tuple[str, ...] = ()) -> list[str]:
    """A combo box's items for a request field's choices (medtorch.ops), the default first."""
    from medtorch.ops.base import default_first

    return [v for v in default_first(request, field) if v not in drop]


def label(name: str, text: str, tooltip: str) -> str:
    return widget("QLabel", name, tooltip, text=text)


def node_combo(name: str, param: str, tooltip: str, node_types: list[str], optional: bool = False) -> str:
    return widget("qMRMLNodeComboBox", name, tooltip, param, nodeTypes=node_types, showChildNodeTypes=False,
                  addEnabled=optional, removeEnabled=optional, noneEnabled=optional,
                  noneDisplay="Create new" if optional else "None", renameEnabled=True)


def form(rows: list[tuple[str | None, str]]) -> str:
    """rows: (label xml, field xml) pairs; label xml may be '' for a full-width field, or None for a
    field in the field column with nothing beside it."""
    out = ['<layout class="QFormLayout">']
    for r, (lab, field) in enumerate(rows):
        if lab is None:
            out.append(f'<item row="{r}" column="1">{field}</item>')
        elif lab:
            out.append(f'<item row="{r}" column="0">{lab}</item><item row="{r}" column="1">{field}</item>')
        else:
            out.append(f'<item row="{r}" column="0" colspan="2">{field}</item>')
    out.append("</layout>")
    return "".join(out)


def dicom_source_folder_row(why: str) -> tuple[str, str]:
    """The Export to DICOM sections' source-folder row; ``why`` ends its tooltip (what the series is for)."""
    return (label("exportSourceFolderLabel", "Source DICOM folder:",
                  "Only for an input volume not loaded through the DICOM module"),
            widget("ctkPathLineEdit", "exportSourceFolderLineEdit",
                   "Only needed when the input volume was not loaded through Slicer's DICOM module: the folder holding "
                   f"the DICOM files of the series it came from ({why})",
                   filters=QtSet("ctkPathLineEdit::Dirs|ctkPathLineEdit::Drives|ctkPathLineEdit::NoDot|"
                                 "ctkPathLineEdit::NoDotDot|ctkPathLineEdit::Readable")))


def dicom_export_rows(written: str, button_tooltip: str) -> list[tuple[str | None, str]]:
    """The Export to DICOM sections' last rows: output folder, the export button, its status line.
    ``written``: what one export writes ("file", "series")."""
    return [
        (label("exportFolderLabel", "Output folder:", f"Where the DICOM {written} is written"),
         widget("ctkDirectoryButton", "exportFolderButton",
                "The folder the DICOM files are written to (a new file or sub-folder each time: nothing there is "
                "replaced). Send them from there to a PACS, or open them in OHIF or another DICOM viewer",
                caption="Choose the folder for the DICOM export")),
        ("", widget("QPushButton", "exportDicomButton", button_tooltip, text="Export to DICOM")),
        ("", widget("QLabel", "exportStatusLabel",
                    "What the last export wrote, or why nothing was written and what to do", text="", wordWrap=True)),
    ]


def hbox(name: str, widgets: list[str]) -> str:
    """A horizontal row of widgets (e.g. buttons side by side in a form's field column)."""
    return f'<layout class="QHBoxLayout" name="{name}">' + "".join(f"<item>{w}</item>" for w in widgets) + "</layout>"


def section(name: str, title: str, tooltip: str, rows: list[tuple[str | None, str]], collapsed: bool = False) -> str:
    return (f'<widget class="ctkCollapsibleButton" name="{name}">{prop("toolTip", tooltip)}{prop("text", title)}'
            f'{prop("collapsed", collapsed)}{form(rows)}</widget>')


def document(module: str, body: list[str]) -> str:
    items = "".join(f"<item>{b}</item>" for b in body)
    spacer = ('<item><spacer name="verticalSpacer"><property name="orientation"><enum>Qt::Vertical</enum></property>'
              '</spacer></item>')
    used = {c: v for c, v in CUSTOM_IF_USED.items() if f'<widget class="{c}"' in "".join(body)}
    customs = "".join(
        f"<customwidget><class>{c}</class><extends>{e}</extends><header>{h}</header>"
        + ("<container>1</container>" if cont else "") + "</customwidget>"
        for c, (e, h, cont) in {**CUSTOM, **used}.items()
    )
    combos = []
    import re

    for m in re.finditer(r'<widget class="qMRMLNodeComboBox" name="(\w+)"', "".join(body)):
        combos.append(
            f"<connection><sender>{module}</sender><signal>mrmlSceneChanged(vtkMRMLScene*)</signal>"
            f"<receiver>{m.group(1)}</receiver><slot>setMRMLScene(vtkMRMLScene*)</slot></connection>"
        )
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<ui version="4.0">'
        f"<class>{module}</class>"
        f'<widget class="qMRMLWidget" name="{module}">{prop("toolTip", module.replace("SR", " SR"))}'
        f'<layout class="QVBoxLayout" name="verticalLayout">{items}{spacer}</layout></widget>'
        f"<customwidgets>{customs}</customwidgets><resources/><connections>{''.join(combos)}</connections></ui>\n"
    )
    return pretty(xml)


def pretty(text: str) -> str:
    import xml.dom.minidom

    return xml_dom_fix(xml.dom.minidom.parseString(text.encode("utf-8")).toprettyxml(indent=" ", encoding="UTF-8").decode("utf-8"))


def xml_dom_fix(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(lines) + "\n"


def apply_button(tooltip: str, text: str = "Apply") -> str:
    return widget("QPushButton", "applyButton", tooltip, text=text, enabled=False)


def status_label() -> str:
    return widget("QLabel", "statusLabel", "Result of the last run", text="")


SCALAR = ["vtkMRMLScalarVolumeNode"]


