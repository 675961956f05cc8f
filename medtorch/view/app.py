"""The ``medtorch view`` web page: a trame app over Slicer's views of an output folder's cases.

The page lists the cases (with their status and verdict, from ``summary.csv`` or ``run.json``)
and shows the selected case in Slicer's Red (axial), Yellow (sagittal) and Green (coronal) slice
views, linked (the same layers; one position that each view's slider moves along its own
axis), and a 3D view (the background volume-rendered, the segments' closed surfaces), with the
foreground's opacity and each segment's visibility. Below the views: the case's volumes,
segmentations, transforms, metrics and verdicts.

The views are rendered on the server by :class:`medtorch.view.scene.CaseScene` (Slicer's
displayable managers, offscreen) and sent to the page as PNG images; the page's own scripts
and styles come from the installed trame packages (no CDN), so it works on a machine with no
internet access, e.g. through an SSH tunnel from a cluster.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, TextIO

import numpy as np

from medtorch.slicer.views import VIEW_COLORS
from medtorch.view.outputs import Case, Output
from medtorch.view.scene import SLICE_AXES, CaseScene

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
#: the colour of each view's bar, as in Slicer's layouts
BAR_COLORS = {name: "#%02x%02x%02x" % rgb for name, rgb in VIEW_COLORS.items()}
VERDICT_COLORS = {"pass": "green", "warn": "orange", "fail": "red"}
log = logging.getLogger(__name__)


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    return str(value)


def _hex(rgb: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{int(round(max(0.0, min(1.0, c)) * 255)):02x}" for c in rgb)


def _transform_text(path: Path) -> str:
    """A transform file in words: its 4x4 matrix (LPS, as ITK stores it), or its kind."""
    from medtorch.errors import MedTorchError
    from medtorch.transform_io import read_transform

    try:
        value = read_transform(path)
    except (MedTorchError, RuntimeError, OSError) as exc:
        return f"not readable: {exc}"
    if isinstance(value, np.ndarray) and value.shape == (4, 4):
        rows = ["[" + " ".join(f"{float(v):8.3f}" for v in row) + "]" for row in value]
        return "linear (4x4 matrix, LPS mm): " + " ".join(rows)
    return "displacement field"


def _default_layers(case: Case) -> tuple[str | None, str | None]:
    """The layers a case opens with: the scan that was segmented (or the fixed one, or the first
    volume) under the registered moving scan (or the fused one, or the second volume)."""
    keys = [v.key for v in case.volumes]
    if not keys:
        return None, None
    background = next((k for k in (case.segmented, "fixed", "t1") if k in keys), keys[0])
    rest = [k for k in keys if k != background]
    foreground = next((k for k in ("moving_registered", "t2like_registered", "fused") if k in rest),
                      rest[0] if rest else None)
    return background, foreground


def case_details(case: Case) -> dict[str, Any]:
    """What the page lists under the views for ``case`` (plain JSON values)."""
    files = [{"key": f.key, "kind": f.kind if f.kind != "rgb" else "colour volume (not shown)",
              "size": " x ".join(str(s) for s in f.size), "spacing": ", ".join(f"{s:.3g}" for s in f.spacing),
              "path": str(f.path)} for f in case.files if f.kind != "transform"]
    transforms = [{"key": f.key, "path": str(f.path), "text": _transform_text(f.path)} for f in case.transforms]
    metrics = [{"step": step, "name": name, "value": _fmt(value)}
               for step, values in case.metrics.items() for name, value in values.items()]
    verdicts = []
    for step, verdict in case.verdicts.items():
        for check in verdict.get("checks", []):
            verdicts.append({"step": step, "name": str(check.get("name", "")), "status": str(check.get("status", "")),
                             "value": _fmt(check.get("value")), "message": str(check.get("message", "")),
                             "color": VERDICT_COLORS.get(str(check.get("status")), "grey")})
    return {"files": files, "transforms": transforms, "metrics": metrics, "verdicts": verdicts}


class ViewerApp:
    """The trame server and the scene of the selected case."""

    def __init__(self, output: Output, size: int = 320, server_name: str | None = None) -> None:
        from trame.app import get_server

        self.output = output
        self.size = int(size)
        self.server = get_server(server_name or f"medtorch-view-{id(self)}", client_type="vue3")
        self.state = self.server.state
        self.scene: CaseScene | None = None
        self._busy = False
        self._pending_3d = False
        self._init_state()
        self._build_ui()
        self._bind()

    # -- state -----------------------------------------------------------------------------
    def _init_state(self) -> None:
        s = self.state
        s.output_root = str(self.output.root)
        s.output_kind = self.output.kind
        s.cases = [{"index": i, "title": c.case_id,
                    "subtitle": " · ".join(x for x in (c.status, f"verdict {c.verdict}" if c.verdict else "") if x),
                    "color": VERDICT_COLORS.get(c.verdict, "grey") if c.status in ("done", "skipped (done)")
                    else ("red" if c.status == "failed" else "grey")}
                   for i, c in enumerate(self.output.cases)]
        s.case_index = None
        s.case_title = ""
        s.case_error = ""
        s.volume_items = []
        s.background = None
        s.foreground = None
        s.opacity = 0.5
        s.segments = []
        s.segments_visible = []
        for name in SLICE_AXES:
            setattr(s, f"pos_{name}", 0.0)
            setattr(s, f"min_{name}", 0.0)
            setattr(s, f"max_{name}", 1.0)
            setattr(s, f"img_{name}", "")
        s.img_3d = ""
        s.volume_rendering = True
        s.azimuth = 30
        s.elevation = 15
        s.position_text = ""
        s.details = {"files": [], "transforms": [], "metrics": [], "verdicts": []}
        s.renders = 0  # how many times the views were drawn (the page shows it; the browser test reads it)

    # -- page ------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        from trame.ui.vuetify3 import SinglePageWithDrawerLayout
        from trame.widgets import html
        from trame.widgets import vuetify3 as v3

        with SinglePageWithDrawerLayout(self.server, full_height=True) as layout:
            layout.title.set_text("MedTorch view")
            with layout.toolbar:
                html.Div("{{ case_title }}", classes="text-subtitle-1 ml-4", id="case-title")
                v3.VSpacer()
                html.Div("{{ output_kind }} output: {{ output_root }}", classes="text-caption mr-4")
            with layout.drawer:
                html.Div("Cases", classes="text-h6 pa-3")
                with v3.VList(density="compact", id="case-list"):
                    with v3.VListItem(v_for="c in cases", key="c.index", click="case_index = c.index",
                                      active=("case_index === c.index",), classes="case-item"):
                        v3.VListItemTitle("{{ c.title }}", classes="case-title")
                        v3.VListItemSubtitle("{{ c.subtitle }}", style=("{color: c.color}",))
            with layout.content:
                with v3.VContainer(fluid=True, classes="pa-2"):
                    html.Div("{{ case_error }}", v_if="case_error", classes="text-error mb-2", id="case-error")
                    with v3.VRow(dense=True, align="center"):
                        with v3.VCol(cols=3):
                            v3.VSelect(label="Background", v_model=("background",), items=("volume_items",),
                                       density="compact", hide_details=True, id="background")
                        with v3.VCol(cols=3):
                            v3.VSelect(label="Foreground", v_model=("foreground",), items=("volume_items",),
                                       clearable=True, density="compact", hide_details=True, id="foreground")
                        with v3.VCol(cols=3):
                            v3.VSlider(label="Foreground opacity", v_model=("opacity",), min=0, max=1, step=0.05,
                                       density="compact", hide_details=True, thumb_label=True, id="opacity")
                        with v3.VCol(cols=3):
                            html.Div("{{ position_text }}", classes="text-caption", id="position")
                    with v3.VRow(dense=True):
                        for name, (_, orientation) in SLICE_AXES.items():
                            with v3.VCol(cols=3):
                                html.Div(f"{name} ({orientation})", classes="text-caption view-bar",
                                         style=f"background: {BAR_COLORS[name]}; padding-left: 4px")
                                html.Img(src=(f"img_{name}",), id=f"view-{name}", width=self.size, height=self.size,
                                         style="max-width: 100%; height: auto; background: black; display: block")
                                with html.Div(id=f"slider-{name}", classes="slice-slider"):
                                    v3.VSlider(v_model=(f"pos_{name}",), min=(f"min_{name}",), max=(f"max_{name}",),
                                               step=0.5, density="compact", hide_details=True,
                                               title=f"{name} slice position (mm)")
                        with v3.VCol(cols=3):
                            html.Div("3D", classes="text-caption view-bar",
                                     style=f"background: {BAR_COLORS['3D']}; padding-left: 4px")
                            html.Img(src=("img_3d",), id="view-3D", width=self.size, height=self.size,
                                     style="max-width: 100%; height: auto; background: black; display: block")
                            with v3.VRow(dense=True, no_gutters=True):
                                v3.VSlider(v_model=("azimuth",), min=-180, max=180, step=15, label="Turn",
                                           density="compact", hide_details=True, id="azimuth")
                            v3.VCheckbox(v_model=("volume_rendering",), label="Volume rendering", density="compact",
                                         hide_details=True, id="volume-rendering")
                    with v3.VRow(dense=True, v_if="segments.length"):
                        with v3.VCol(cols=12):
                            html.Span("Segments: ", classes="text-caption mr-2")
                            v3.VCheckbox(v_for="seg in segments", key="seg.key", v_model=("segments_visible",),
                                         value=("seg.key",), label=("seg.name",), color=("seg.color",),
                                         density="compact", hide_details=True, inline=True,
                                         classes="d-inline-flex mr-4 segment-toggle")
                    self._details(html, v3)
                    html.Div("{{ renders }}", id="render-count", style="display: none")
            with layout.footer:
                html.Div("Slicer's slice and 3D views (slicer-core's displayable managers) rendered on the "
                         "server, offscreen", classes="text-caption")

    def _details(self, html: Any, v3: Any) -> None:
        with v3.VRow(dense=True):
            with v3.VCol(cols=6):
                html.Div("Volumes and segmentations", classes="text-subtitle-2 mt-2")
                with v3.VTable(density="compact", id="files-table"):
                    with html.Tbody():
                        with html.Tr(v_for="f in details.files", key="f.key"):
                            html.Td("{{ f.key }}")
                            html.Td("{{ f.kind }}")
                            html.Td("{{ f.size }}")
                            html.Td("{{ f.spacing }} mm", title=("f.path",))
                html.Div("Transforms", classes="text-subtitle-2 mt-2", v_if="details.transforms.length")
                with v3.VTable(density="compact", v_if="details.transforms.length", id="transforms-table"):
                    with html.Tbody():
                        with html.Tr(v_for="t in details.transforms", key="t.key"):
                            html.Td("{{ t.key }}", title=("t.path",))
                            html.Td("{{ t.text }}", style="font-family: monospace; font-size: 11px")
                html.Div("Verdicts", classes="text-subtitle-2 mt-2", v_if="details.verdicts.length")
                with v3.VTable(density="compact", v_if="details.verdicts.length", id="verdicts-table"):
                    with html.Tbody():
                        with html.Tr(v_for="v in details.verdicts", key="v.step + v.name"):
                            html.Td("{{ v.step }}.{{ v.name }}")
                            html.Td("{{ v.status }}", style=("{color: v.color}",))
                            html.Td("{{ v.value }}")
                            html.Td("{{ v.message }}", classes="text-caption")
            with v3.VCol(cols=6):
                html.Div("Metrics", classes="text-subtitle-2 mt-2")
                with v3.VTable(density="compact", id="metrics-table"):
                    with html.Tbody():
                        with html.Tr(v_for="m in details.metrics", key="m.step + m.name"):
                            html.Td("{{ m.step }}")
                            html.Td("{{ m.name }}")
                            html.Td("{{ m.value }}")

    # -- behaviour -------------------------------------------------------------------------
    def _bind(self) -> None:
        s = self.state
        s.change("case_index")(self._on_case)
        s.change("background", "foreground", "opacity")(self._on_layers)
        for name in SLICE_AXES:
            s.change(f"pos_{name}")(self._make_on_position(name))
        s.change("segments_visible")(self._on_segments)
        s.change("volume_rendering", "azimuth")(self._on_3d)

    def _make_on_position(self, name: str) -> Callable[..., None]:
        axis = SLICE_AXES[name][0]

        def on_position(**_: Any) -> None:
            if self.scene is None or self._busy:
                return
            position = list(self.scene.position)
            position[axis] = float(self.state[f"pos_{name}"])
            self.scene.set_position(position)
            self._render_slices([name])

        return on_position

    def load_case(self, index: int) -> None:
        """Show case ``index`` (its scene built, its views drawn)."""
        s = self.state
        case = self.output.cases[index]
        self._busy = True
        try:
            if self.scene is not None:
                self.scene.close()
                self.scene = None
            s.case_title = f"{case.case_id} ({case.status}{', verdict ' + case.verdict if case.verdict else ''})"
            s.case_error = case.error
            s.details = case_details(case)
            s.volume_items = [{"title": v.key, "value": v.key} for v in case.volumes]
            background, foreground = _default_layers(case)
            if background is None:
                s.case_error = (case.error + "; " if case.error else "") + "this case has no volume to show"
                s.segments, s.segments_visible = [], []
                for name in SLICE_AXES:
                    s[f"img_{name}"] = ""
                s.img_3d = ""
                return
            self.scene = CaseScene(case, self.size, self.size)
            self.scene.show(background, foreground, float(s.opacity))
            s.background, s.foreground = background, foreground
            s.segments = [{"key": g.key, "name": g.name, "color": _hex(g.color)} for g in self.scene.segments]
            s.segments_visible = [g.key for g in self.scene.segments]
            self._sync_positions()
        finally:
            self._busy = False
        self._render_slices()
        self._render_3d_soon()

    def _render_3d_soon(self) -> None:
        """The 3D view drawn after the slice views reach the page (it takes longer): on the next turn of
        the server's loop, or when the server is ready; at once when no loop runs."""
        self._pending_3d = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # drawn by serve() once the server listens
        loop.call_later(0.02, self._render_pending_3d)

    def _render_pending_3d(self) -> None:
        if not self._pending_3d:
            return
        with self.state:  # pushed to the page when the block ends
            self._render_3d()

    def _sync_positions(self) -> None:
        assert self.scene is not None
        for name, (axis, _) in SLICE_AXES.items():
            low, high = self.scene.slice_range(name)
            self.state[f"min_{name}"] = round(low, 1)
            self.state[f"max_{name}"] = round(high, 1)
            self.state[f"pos_{name}"] = round(self.scene.position[axis], 1)

    def _on_case(self, case_index: Any = None, **_: Any) -> None:
        if case_index is None:
            return
        try:
            self.load_case(int(case_index))
        except Exception as exc:  # noqa: BLE001 - the page says what went wrong; the server goes on
            log.warning("could not show case %s", case_index, exc_info=True)
            self.state.case_error = f"could not show this case: {type(exc).__name__}: {exc}"

    def _on_layers(self, **_: Any) -> None:
        if self.scene is None or self._busy:
            return
        s = self.state
        background = s.background or self.scene.background
        changed = background != self.scene.background
        self.scene.show(background, s.foreground or None, float(s.opacity))
        if changed:
            self._busy = True
            try:
                self._sync_positions()
            finally:
                self._busy = False
        self._render_slices()
        if changed:
            self._render_3d_soon()

    def _on_segments(self, segments_visible: Any = None, **_: Any) -> None:
        if self.scene is None or self._busy:
            return
        shown = set(segments_visible or [])
        for g in self.scene.segments:
            self.scene.set_segment_visible(g.key, g.key in shown)
        self._render_slices()
        self._render_3d_soon()

    def _on_3d(self, **_: Any) -> None:
        if self.scene is None or self._busy:
            return
        self.scene.azimuth = float(self.state.azimuth)
        if bool(self.state.volume_rendering) != self.scene.volume_rendering:
            self.scene.set_volume_rendering(bool(self.state.volume_rendering))
        self._render_3d()

    def _render_slices(self, names: list[str] | None = None) -> None:
        if self.scene is None:
            return
        for name in names or list(SLICE_AXES):
            self.state[f"img_{name}"] = _data_url(self.scene.render_slice(name))
        r, a, s_ = self.scene.position
        self.state.position_text = f"position R {r:.1f}, A {a:.1f}, S {s_:.1f} mm"
        self.state.renders += 1

    def _render_3d(self) -> None:
        self._pending_3d = False
        if self.scene is None:
            return
        self.state.img_3d = _data_url(self.scene.render_3d())
        self.state.renders += 1

    def close(self) -> None:
        if self.scene is not None:
            self.scene.close()
            self.scene = None

    # -- serving ---------------------------------------------------------------------------
    def serve(self, host: str = "127.0.0.1", port: int = 0, out: TextIO | None = None) -> None:
        """Serve the page until Ctrl-C (or SIGTERM); says where on ``out`` (stdout)."""
        out = out if out is not None else sys.stdout
        started = time.perf_counter()

        @self.server.controller.on_server_ready.add
        def _ready(**_: Any) -> None:
            shown = f"[{host}]" if ":" in host else host
            out.write(f"MedTorch view of {self.output.root} ({len(self.output.cases)} case(s)) at "
                      f"http://{shown}:{self.server.port}/ (Ctrl-C to stop; ready in "
                      f"{time.perf_counter() - started:.1f} s)\n")
            out.flush()
            if self._pending_3d:
                asyncio.get_event_loop().call_later(0.02, self._render_pending_3d)

        previous = os.environ.get("TRAME_ARGS")
        os.environ["TRAME_ARGS"] = ""  # trame reads no option from medtorch's command line
        try:
            self.server.start(host=host, port=int(port), open_browser=False, show_connection_info=False,
                              timeout=0, disable_logging=True)
        finally:
            if previous is None:
                os.environ.pop("TRAME_ARGS", None)
            else:
                os.environ["TRAME_ARGS"] = previous
