"""Run reports: an HTML page with metric tables and PNG figures, written atomically.

A report is a list of :class:`Section`\\ s, each with paragraphs, :class:`Table`\\ s and
:class:`Figure`\\ s; :func:`write_report` turns them into ``report.html`` in the output
folder (figures live in ``out_dir/figures`` and are linked by relative path, so the folder
can be moved or zipped as a whole).

Figures are drawn with matplotlib (Agg backend, no display needed). Slices are shown the
way Slicer shows them by default, whatever the volume's direction matrix:

* axial: anterior up, patient right on the viewer's left (radiological convention);
* coronal: superior up, patient right on the viewer's left;
* sagittal: superior up, anterior on the viewer's left.

:class:`DisplayVolume` does this reorientation (arrays are ``[z, y, x]`` on an LPS grid,
see :mod:`medtorch.volume`), and maps LPS points to pixel positions for markers.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from medtorch.errors import MedTorchInputError
from medtorch.io.atomic import atomic_path, write_text_atomic
from medtorch.volume import Geometry, Volume

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure as MplFigure

__all__ = [
    "DisplayVolume",
    "Figure",
    "Panel",
    "Plane",
    "Section",
    "Table",
    "checkerboard",
    "display_volume",
    "format_value",
    "panel_figure",
    "save_figure",
    "write_report",
]

Plane = Literal["axial", "coronal", "sagittal"]

#: Folder (inside the output folder) that holds the report's figures.
FIGURES_DIR = "figures"


# -- report structure ------------------------------------------------------------------------


@dataclass
class Table:
    """A metric table: ``columns`` headers and ``rows`` of cells (numbers are formatted)."""

    caption: str
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    note: str = ""


@dataclass
class Figure:
    """A figure already written under the output folder; ``path`` is relative to it
    (e.g. ``"figures/registration.png"``) or absolute inside it."""

    path: str | os.PathLike[str]
    caption: str = ""


@dataclass
class Section:
    """One heading of the report with its text, tables and figures (shown in that order)."""

    title: str
    paragraphs: Sequence[str] = field(default_factory=list)
    tables: Sequence[Table] = field(default_factory=list)
    figures: Sequence[Figure] = field(default_factory=list)


def format_value(value: Any, digits: int = 4) -> str:
    """A table cell as text: floats to ``digits`` significant digits, None as an en dash."""
    if value is None:
        return "\u2013"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            return str(v)
        if v == 0.0:
            return "0"
        if abs(v) >= 10 ** digits or abs(v) < 1e-3:
            return f"{v:.{max(digits - 1, 1)}e}"
        return f"{v:.{digits}g}"
    return str(value)


_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; line-height: 1.45; padding: 0 1em; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #bbb; padding-bottom: .1em; }
table { border-collapse: collapse; margin: .8em 0 1.4em 0; font-size: .93em; }
caption { text-align: left; font-weight: 600; padding-bottom: .3em; }
th, td { border: 1px solid #ccc; padding: .25em .7em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f0f0f0; }
p.note { color: #555; font-size: .9em; margin-top: -1em; }
figure { margin: 1em 0 2em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #444; font-size: .92em; margin-top: .3em; }
footer { margin-top: 3em; color: #777; font-size: .85em; }
"""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _table_html(table: Table) -> str:
    out = ["<table>", f"<caption>{html.escape(table.caption)}</caption>", "<thead><tr>"]
    out += [f"<th>{html.escape(str(c))}</th>" for c in table.columns]
    out.append("</tr></thead><tbody>")
    for row in table.rows:
        cells = []
        for v in row:
            cls = ' class="num"' if _is_number(v) else ""
            cells.append(f"<td{cls}>{html.escape(format_value(v))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    if table.note:
        out.append(f'<p class="note">{html.escape(table.note)}</p>')
    return "\n".join(out)


def _figure_src(fig: Figure, out_dir: Path) -> str:
    p = Path(fig.path)
    if p.is_absolute():
        try:
            p = p.resolve().relative_to(out_dir.resolve())
        except ValueError as exc:
            raise MedTorchInputError(
                f"the report figure {fig.path} is outside the output folder {out_dir}",
                "write figures under the output folder (e.g. with panel_figure into out_dir/figures)",
            ) from exc
    return p.as_posix()


def write_report(
    out_dir: str | os.PathLike[str],
    title: str,
    sections: Sequence[Section],
    *,
    intro: Sequence[str] = (),
    footer: str = "",
    filename: str = "report.html",
) -> Path:
    """Write ``out_dir/report.html`` (atomically) from ``sections``; return its path.

    Args:
        out_dir: the output folder (created if needed). Figures are linked relative to it.
        title: page title and top heading.
        sections: the report's sections, in order.
        intro: paragraphs under the title.
        footer: a small-print line at the bottom.
        filename: the page's file name.

    Text is HTML-escaped; numbers in tables are formatted by :func:`format_value`.

    Raises:
        MedTorchInputError: a figure that is missing or lies outside ``out_dir``, or an
            output folder that cannot be written.
    """
    out = Path(out_dir)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    parts += [f"<p>{html.escape(p)}</p>" for p in intro]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        parts += [f"<p>{html.escape(p)}</p>" for p in section.paragraphs]
        parts += [_table_html(t) for t in section.tables]
        for fig in section.figures:
            src = _figure_src(fig, out)
            if not (out / src).is_file():
                raise MedTorchInputError(
                    f"the report figure {src} does not exist in {out}", "write the figure before the report"
                )
            parts.append(
                f'<figure><img src="{html.escape(src, quote=True)}" alt="{html.escape(fig.caption, quote=True)}">'
                f"<figcaption>{html.escape(fig.caption)}</figcaption></figure>"
            )
    if footer:
        parts.append(f"<footer>{html.escape(footer)}</footer>")
    parts.append("</body></html>\n")
    return write_text_atomic(out / filename, "\n".join(parts))


# -- display orientation -----------------------------------------------------------------------


@dataclass(frozen=True)
class DisplayVolume:
    """Voxels reoriented to ``[S, P, L]`` with every axis increasing in its LPS coordinate.

    ``lower`` is the LPS position of voxel ``[0, 0, 0]`` (in L, P, S order) and ``spacing``
    the voxel size along L, P and S (mm).
    """

    array: np.ndarray
    lower: np.ndarray
    spacing: np.ndarray

    def _index(self, axis: int, coordinate: float) -> int:
        n = self.array.shape[2 - axis]
        return int(np.clip(round((coordinate - self.lower[axis]) / self.spacing[axis]), 0, n - 1))

    def slice(self, plane: Plane, point: Sequence[float]) -> np.ndarray:
        """The 2D slice through the LPS ``point``, ready for ``imshow(origin='upper')``.

        Rows run top to bottom, columns left to right as the module docstring says.
        """
        a = self.array
        if plane == "axial":
            return a[self._index(2, point[2])]  # rows P (anterior first), columns L (right first)
        if plane == "coronal":
            return a[::-1, self._index(1, point[1]), :]  # rows S (superior first), columns L
        if plane == "sagittal":
            return a[::-1, :, self._index(0, point[0])]  # rows S (superior first), columns P (anterior first)
        raise MedTorchInputError(f"unknown plane {plane!r}", "use 'axial', 'coronal' or 'sagittal'")

    def aspect(self, plane: Plane) -> float:
        """Height/width of one pixel of :meth:`slice` (for ``imshow(aspect=...)``)."""
        sl, sp, ss = self.spacing
        return float({"axial": sp / sl, "coronal": ss / sl, "sagittal": ss / sp}[plane])

    def to_pixels(self, plane: Plane, points: np.ndarray) -> np.ndarray:
        """(column, row) pixel positions in :meth:`slice` of ``(N, 3)`` LPS points."""
        p = np.atleast_2d(np.asarray(points, dtype=np.float64))
        idx = (p - self.lower) / self.spacing  # continuous (L, P, S) indices
        n_s = self.array.shape[0]
        if plane == "axial":
            return np.stack([idx[:, 0], idx[:, 1]], axis=1)
        if plane == "coronal":
            return np.stack([idx[:, 0], n_s - 1 - idx[:, 2]], axis=1)
        if plane == "sagittal":
            return np.stack([idx[:, 1], n_s - 1 - idx[:, 2]], axis=1)
        raise MedTorchInputError(f"unknown plane {plane!r}", "use 'axial', 'coronal' or 'sagittal'")

    def labels(self, plane: Plane) -> tuple[str, str, str, str]:
        """Orientation letters at the (top, bottom, left, right) edges of :meth:`slice`."""
        return {"axial": ("A", "P", "R", "L"), "coronal": ("S", "I", "R", "L"),
                "sagittal": ("S", "I", "A", "P")}[plane]


def _axis_permutation(direction: np.ndarray, tol: float = 1e-3) -> tuple[list[int], list[float]] | None:
    """For each LPS axis m, the index axis n along it and the sign; None if oblique."""
    d = np.asarray(direction, dtype=np.float64)
    axes: list[int] = []
    signs: list[float] = []
    for m in range(3):
        n = int(np.argmax(np.abs(d[m])))
        if abs(abs(d[m, n]) - 1.0) > tol or n in axes:
            return None
        axes.append(n)
        signs.append(float(np.sign(d[m, n])))
    return axes, signs


def display_volume(volume: Volume | np.ndarray, geometry: Geometry | None = None) -> DisplayVolume:
    """Reorient a scalar or label volume for display (see :class:`DisplayVolume`).

    Axis-aligned grids (any permutation or flip of the LPS axes) are reoriented without
    interpolation; an oblique grid is resampled (linear, nearest for labels) onto an
    LPS-aligned grid of its smallest spacing covering the same region.

    Args:
        volume: a :class:`Volume`, or an ``array[z, y, x]`` with its ``geometry``.
    """
    if isinstance(volume, Volume):
        vol = volume
    else:
        if geometry is None:
            raise MedTorchInputError("an array needs its geometry for display", "pass geometry=volume.geometry")
        vol = Volume(np.asarray(volume), geometry)
    geom = vol.geometry
    perm = _axis_permutation(geom.direction)
    if perm is None:
        from medtorch.resample import resample

        lo, hi = geom.bounds()
        s = float(np.min(geom.spacing))
        size = tuple(int(math.floor((hi[m] - lo[m]) / s + 1e-6)) + 1 for m in range(3))
        aligned = Geometry(size=size, origin=lo, spacing=(s, s, s))  # type: ignore[arg-type]
        src = vol if vol.kind == "label" else vol.with_array(vol.array.astype(np.float32))
        vol = resample(src, aligned)
        geom = aligned
        perm = ([0, 1, 2], [1.0, 1.0, 1.0])
    axes, signs = perm
    # array axis of index axis n is 2 - n; canonical order is [S, P, L].
    arr = np.transpose(np.asarray(vol.array), [2 - axes[2], 2 - axes[1], 2 - axes[0]])
    flips = tuple(ax for ax, m in zip((0, 1, 2), (2, 1, 0)) if signs[m] < 0)
    if flips:
        arr = np.flip(arr, axis=flips)
    lo, _ = geom.bounds()
    spacing = np.array([geom.spacing[axes[m]] for m in range(3)])
    return DisplayVolume(np.ascontiguousarray(arr), lo, spacing)


# -- figures ------------------------------------------------------------------------------------


def checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    """A 2D checkerboard of two equally shaped images (``tiles`` squares along the longer side)."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape or a.ndim != 2:
        raise MedTorchInputError(
            f"checkerboard needs two 2D images of one shape, got {a.shape} and {b.shape}", "pass matching slices"
        )
    step = max(1, int(math.ceil(max(a.shape) / max(int(tiles), 1))))
    r, c = np.indices(a.shape)
    return np.where(((r // step) + (c // step)) % 2 == 0, a, b)


@dataclass
class Panel:
    """One image of a :func:`panel_figure`.

    ``image`` is 2D (grey values, windowed with ``vmin``/``vmax``) or ``[h, w, 3]`` RGB in
    [0, 1]. ``contours`` are ``(mask2d, colour, legend label[, line style])``, earlier ones
    drawn wider so that coinciding outlines stay visible (the label may be empty);
    ``points`` are ``(N, 2)`` (column, row) pixel positions drawn as crosses;
    ``rectangles`` are ``(col0, row0, col1, row1, colour)``. ``aspect`` is a pixel's
    height/width (:meth:`DisplayVolume.aspect`); ``orientation`` the letters at the
    (top, bottom, left, right) edges (:meth:`DisplayVolume.labels`).
    """

    image: np.ndarray
    title: str = ""
    vmin: float | None = None
    vmax: float | None = None
    cmap: str = "gray"
    aspect: float = 1.0
    contours: Sequence[tuple[Any, ...]] = field(default_factory=list)
    points: np.ndarray | None = None
    point_colour: str = "yellow"
    rectangles: Sequence[tuple[float, float, float, float, str]] = field(default_factory=list)
    orientation: tuple[str, str, str, str] | None = None
    colorbar: bool = False


def save_figure(fig: MplFigure, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    p = Path(path)
    try:
        with atomic_path(p) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, facecolor=fig.get_facecolor())
    finally:
        plt.close(fig)
    return p


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise MedTorchInputError(
            "matplotlib is needed to draw the report's figures but is not installed",
            "install it (pip install matplotlib)",
        ) from exc
    if plt.get_backend().lower() != "agg":
        plt.switch_backend("Agg")
    return plt


def panel_figure(
    path: str | os.PathLike[str],
    panels: Sequence[Panel],
    ncols: int | None = None,
    title: str = "",
    panel_size: float = 3.0,
    dpi: int = 100,
) -> Path:
    """Draw ``panels`` in a grid (``ncols`` per row) and save a PNG atomically.

    The figure has a black background, as a viewer would show medical images.
    """
    plt = _pyplot()
    n = len(panels)
    if n == 0:
        raise MedTorchInputError("a figure needs at least one panel", "pass one or more panels")
    ncols = n if ncols is None else max(1, min(int(ncols), n))
    nrows = int(math.ceil(n / ncols))
    heights = [max(0.3, min(2.5, p.image.shape[0] * p.aspect / p.image.shape[1])) for p in panels]
    row_heights = [max(heights[r * ncols:(r + 1) * ncols]) for r in range(nrows)]
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, gridspec_kw={"height_ratios": row_heights},
                             figsize=(panel_size * ncols, panel_size * sum(row_heights) + 0.45 * nrows
                                      + (0.4 if title else 0.0)))
    fig.patch.set_facecolor("black")
    for ax in axes.ravel():
        ax.set_facecolor("black")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    for ax, p in zip(axes.ravel(), panels):
        img = np.asarray(p.image)
        if img.ndim == 3:
            im = ax.imshow(np.clip(img, 0.0, 1.0), origin="upper", aspect=p.aspect, interpolation="nearest")
        else:
            im = ax.imshow(img, cmap=p.cmap, vmin=p.vmin, vmax=p.vmax, origin="upper", aspect=p.aspect,
                           interpolation="nearest")
        handles = []
        for n, contour in enumerate(p.contours):
            mask, colour, label = contour[0], contour[1], contour[2]
            style = contour[3] if len(contour) > 3 else "solid"
            m = np.asarray(mask, dtype=float)
            # Earlier contours are drawn wider, so a later one that coincides leaves them visible.
            width = 1.3 + 1.4 * (len(p.contours) - 1 - n)
            if m.any() and not m.all():
                ax.contour(m, levels=[0.5], colors=[colour], linewidths=width, linestyles=style)
            if label:
                handles.append(plt.Line2D([], [], color=colour, label=label, linestyle=style, linewidth=width))
        for c0, r0, c1, r1, colour in p.rectangles:
            ax.add_patch(plt.Rectangle((c0, r0), c1 - c0, r1 - r0, fill=False, edgecolor=colour, linewidth=1.0,
                                       linestyle="--"))
        if p.points is not None and len(p.points):
            pts = np.atleast_2d(p.points)
            ax.plot(pts[:, 0], pts[:, 1], "+", color=p.point_colour, markersize=8, markeredgewidth=1.5)
        ax.set_xlim(-0.5, img.shape[1] - 0.5)
        ax.set_ylim(img.shape[0] - 0.5, -0.5)
        if handles:
            ax.legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.6)
        if p.title:
            ax.set_title(p.title, color="white", fontsize=9)
        if p.orientation is not None:
            top, bottom, left, right = p.orientation
            style = {"color": "#ffcc00", "fontsize": 8, "fontweight": "bold"}
            ax.text(0.5, 0.99, top, transform=ax.transAxes, ha="center", va="top", **style)
            ax.text(0.5, 0.01, bottom, transform=ax.transAxes, ha="center", va="bottom", **style)
            ax.text(0.01, 0.5, left, transform=ax.transAxes, ha="left", va="center", **style)
            ax.text(0.99, 0.5, right, transform=ax.transAxes, ha="right", va="center", **style)
        if p.colorbar and img.ndim == 2:
            cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            cb.ax.tick_params(colors="white", labelsize=7)
    if title:
        fig.suptitle(title, color="white", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path, dpi=dpi)
