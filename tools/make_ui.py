"""Write a module's Qt Designer ``.ui`` file from a compact Python description.

Developer tool (not shipped): ``python tools/make_ui.py`` regenerates the three modules'
``Resources/UI/*.ui``. The ``.ui`` files are the source of truth that Slicer loads; this
script only keeps them consistent (every widget has a tooltip, units as suffixes, each
parameter-node field bound through ``SlicerParameterName``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from xml.sax.saxutils import escape

REPO = Path(__file__).resolve().parent.parent

CUSTOM = {
    "ctkCollapsibleButton": ("QWidget", "ctkCollapsibleButton.h", True),
    "ctkSliderWidget": ("QWidget", "ctkSliderWidget.h", False),
    "qMRMLNodeComboBox": ("QWidget", "qMRMLNodeComboBox.h", False),
    "qMRMLWidget": ("QWidget", "qMRMLWidget.h", True),
}


def prop(name: str, value, stdset: bool = True) -> str:
    extra = "" if stdset else ' stdset="0"'
    if isinstance(value, bool):
        body = f"<bool>{'true' if value else 'false'}</bool>"
    elif isinstance(value, int):
        body = f"<number>{value}</number>"
    elif isinstance(value, float):
        body = f"<double>{value!r}</double>"
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


def label(name: str, text: str, tooltip: str) -> str:
    return widget("QLabel", name, tooltip, text=text)


def node_combo(name: str, param: str, tooltip: str, node_types: list[str], optional: bool = False) -> str:
    return widget("qMRMLNodeComboBox", name, tooltip, param, nodeTypes=node_types, showChildNodeTypes=False,
                  addEnabled=optional, removeEnabled=optional, noneEnabled=optional,
                  noneDisplay="Create new" if optional else "None", renameEnabled=True)


def form(rows: list[tuple[str, str]]) -> str:
    """rows: (label xml, field xml) pairs; label xml may be '' for a full-width field."""
    out = ['<layout class="QFormLayout">']
    for r, (lab, field) in enumerate(rows):
        if lab:
            out.append(f'<item row="{r}" column="0">{lab}</item><item row="{r}" column="1">{field}</item>')
        else:
            out.append(f'<item row="{r}" column="0" colspan="2">{field}</item>')
    out.append("</layout>")
    return "".join(out)


def section(name: str, title: str, tooltip: str, rows: list[tuple[str, str]], collapsed: bool = False) -> str:
    return (f'<widget class="ctkCollapsibleButton" name="{name}">{prop("toolTip", tooltip)}{prop("text", title)}'
            f'{prop("collapsed", collapsed)}{form(rows)}</widget>')


def document(module: str, body: list[str]) -> str:
    items = "".join(f"<item>{b}</item>" for b in body)
    spacer = ('<item><spacer name="verticalSpacer"><property name="orientation"><enum>Qt::Vertical</enum></property>'
              '</spacer></item>')
    customs = "".join(
        f"<customwidget><class>{c}</class><extends>{e}</extends><header>{h}</header>"
        + ("<container>1</container>" if cont else "") + "</customwidget>"
        for c, (e, h, cont) in CUSTOM.items()
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


def fusion_registration() -> str:
    inputs = section("inputsCollapsibleButton", "Inputs", "Volumes to align and fuse", [
        (label("fixedLabel", "Fixed volume:", "The reference volume"),
         node_combo("fixedSelector", "fixedVolume", "Reference volume: the output has its grid (origin, spacing, direction)", SCALAR)),
        (label("movingLabel", "Moving volume:", "The volume brought onto the fixed grid"),
         node_combo("movingSelector", "movingVolume", "Volume resampled onto the fixed grid, through the transforms both volumes are under", SCALAR)),
    ])
    params = section("blendCollapsibleButton", "Blend", "How the two volumes are combined", [
        (label("weightLabel", "Moving weight:", "Share of the moving volume in the blend"),
         widget("ctkSliderWidget", "blendWeightSliderWidget",
                "Share of the moving volume in the blend, from 0 (fixed only) to 1 (moving only); unitless", "blendWeight",
                minimum=0.0, maximum=1.0, singleStep=0.05, decimals=2, value=0.5)),
        (label("normalizationLabel", "Intensity normalisation:", "How intensities are made comparable before blending"),
         widget("QComboBox", "normalizationComboBox",
                "percentile: each volume's 1st-99th percentile mapped to [0, 1] (output in [0, 1]); none: raw intensities in the inputs' units",
                "normalization", items=["percentile", "none"])),
    ])
    outputs = section("outputsCollapsibleButton", "Outputs", "Where the result goes", [
        (label("outputLabel", "Fused volume:", "Volume that receives the blend"),
         node_combo("outputSelector", "outputVolume", "Volume that receives the blend; 'Create new' makes a new volume (a volume of yours is overwritten only if you choose it here)", SCALAR, optional=True)),
        (label("showResultLabel", "Show result:", "Show the fused volume when done"),
         widget("QCheckBox", "showResultCheckBox", "Show the fused volume in the slice views when done", "showResult", text="")),
    ])
    advanced = section("advancedCollapsibleButton", "Advanced", "Compute settings", [
        (label("deviceLabel", "Device:", "Where the computation runs"),
         widget("QComboBox", "deviceComboBox",
                "auto: $MEDTORCH_DEVICE if set, else CUDA GPU, then Apple MPS, then CPU; or force cpu, cuda or mps",
                "device", items=["auto", "cpu", "cuda", "mps"])),
    ], collapsed=True)
    return document("FusionRegistration", [inputs, params, outputs, advanced,
                                           apply_button("Resample the moving volume onto the fixed grid and blend them"),
                                           status_label()])


def enhance_sr() -> str:
    inputs = section("inputsCollapsibleButton", "Inputs", "Volume to enhance", [
        (label("inputLabel", "Input volume:", "The volume to denoise"),
         node_combo("inputSelector", "inputVolume", "Volume to denoise; it is never modified", SCALAR)),
    ])
    params = section("denoiseCollapsibleButton", "Denoising", "Denoising method and its parameters", [
        (label("methodLabel", "Method:", "Denoising method"),
         widget("QComboBox", "methodComboBox",
                "gaussian: Gaussian smoothing; anisotropic: curvature anisotropic diffusion (edge-preserving, as Slicer's module)",
                "method", items=["gaussian", "anisotropic"])),
        (label("sigmaLabel", "Gaussian sigma:", "Width of the Gaussian kernel"),
         widget("ctkSliderWidget", "sigmaSliderWidget", "Standard deviation of the Gaussian kernel, in millimetres (same physical width along every axis)",
                "sigma", minimum=0.1, maximum=10.0, singleStep=0.1, decimals=1, value=1.0, suffix=" mm")),
        (label("conductanceLabel", "Conductance:", "Edge sensitivity of anisotropic diffusion"),
         widget("ctkSliderWidget", "conductanceSliderWidget", "Conductance of anisotropic diffusion: lower keeps more edges; unitless",
                "conductance", minimum=0.1, maximum=10.0, singleStep=0.1, decimals=1, value=1.0)),
        (label("iterationsLabel", "Iterations:", "Number of diffusion steps"),
         widget("QSpinBox", "iterationsSpinBox", "Number of anisotropic diffusion steps (more is smoother and slower)",
                "iterations", minimum=1, maximum=100, value=5)),
    ])
    outputs = section("outputsCollapsibleButton", "Outputs", "Where the result goes", [
        (label("outputLabel", "Denoised volume:", "Volume that receives the result"),
         node_combo("outputSelector", "outputVolume", "Volume that receives the result; 'Create new' makes a new volume (a volume of yours is overwritten only if you choose it here)", SCALAR, optional=True)),
        (label("showResultLabel", "Show result:", "Show the result when done"),
         widget("QCheckBox", "showResultCheckBox", "Show the denoised volume in the slice views when done", "showResult", text="")),
    ])
    return document("EnhanceSR", [inputs, params, outputs, apply_button("Denoise the input volume into a new volume"),
                                  status_label()])


def segment_tumor() -> str:
    inputs = section("inputsCollapsibleButton", "Inputs", "Volume and region to segment", [
        (label("inputLabel", "Input volume:", "The volume to segment"),
         node_combo("inputSelector", "inputVolume", "Volume to segment; it is never modified", SCALAR)),
        (label("roiLabel", "Region of interest:", "Optional box that limits the segmentation"),
         node_combo("roiSelector", "roi", "Optional ROI box around the lesion: only voxels inside it are considered", ["vtkMRMLMarkupsROINode"], optional=True)),
    ])
    params = section("thresholdCollapsibleButton", "Threshold", "Intensity range of the lesion", [
        (label("lowerLabel", "Lower threshold:", "Lowest lesion intensity"),
         widget("QDoubleSpinBox", "lowerSpinBox", "Lowest intensity kept, in the volume's units (HU for CT)",
                "lowerThreshold", minimum=-100000.0, maximum=100000.0, singleStep=1.0, decimals=2, value=0.0)),
        (label("upperLabel", "Upper threshold:", "Highest lesion intensity"),
         widget("QDoubleSpinBox", "upperSpinBox", "Highest intensity kept, in the volume's units (HU for CT)",
                "upperThreshold", minimum=-100000.0, maximum=100000.0, singleStep=1.0, decimals=2, value=100000.0)),
        (label("largestLabel", "Largest component only:", "Keep only the largest connected region"),
         widget("QCheckBox", "largestComponentCheckBox", "Keep only the largest 26-connected region of the thresholded voxels", "largestComponent", text="", checked=True)),
        (label("segmentNameLabel", "Segment name:", "Name of the segment created"),
         widget("QLineEdit", "segmentNameLineEdit", "Name given to the segment in the new segmentation", "segmentName", text="Tumor")),
    ])
    outputs = section("outputsCollapsibleButton", "Outputs", "Result of the segmentation", [
        (label("volumeLabel", "Lesion volume:", "Volume of the segment"),
         widget("QLabel", "volumeValueLabel", "Volume of the segment in millilitres (mL)", text="- mL")),
    ])
    return document("SegmentTumor", [inputs, params, outputs,
                                     apply_button("Threshold inside the ROI, keep the largest component, create a segmentation"),
                                     status_label()])


def main() -> int:
    for module, make in (("FusionRegistration", fusion_registration), ("EnhanceSR", enhance_sr), ("SegmentTumor", segment_tumor)):
        path = REPO / module / "Resources" / "UI" / f"{module}.ui"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(make(), encoding="utf-8")
        print("wrote", path.relative_to(REPO))
    return 0


if __name__ == "__main__":
    sys.exit(main())
