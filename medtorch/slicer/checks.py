"""What a person checks on a render of Slicer's views, as numbers and as checks that fail.

Renders are (height, width, 3) uint8 arrays (:meth:`medtorch.slicer.views.SliceView.render`);
screen positions are (x, y) pixels, x to the right and y down from the top-left corner, as
:meth:`~medtorch.slicer.views.SliceView.project` gives them.

Measures (numpy only, no Slicer):

* :func:`changed_mask`, :func:`changed_fraction`: the pixels that differ between two renders;
* :func:`non_background_fraction`: the share of pixels that are not background (a colour or a
  render of the empty view);
* :func:`colour_mask`, :func:`centroid`: where a colour shows, and its middle on the screen;
* :func:`coloured_fraction`: the share of pixels in colour rather than grey;
* :func:`roughness`: how grainy a render looks (noise shows, smooth shapes do not).

Checks (:func:`expect_changed`, :func:`expect_not_blank`, :func:`expect_colour_near`,
:func:`expect_smoother`) return the measure and raise :class:`VisualCheckFailed` (an
``AssertionError``, so a ``unittest`` self-test fails on it) with what a person would have seen.

:class:`VisualChecks` is the module self-tests' entry: it says once, in the test's own
message channel, why the visual checks are skipped where rendering is unavailable, and opens
views on ``slicer.mrmlScene`` otherwise. It uses only what a Slicer application has too.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

#: the reasons visual checks were skipped in this process (the test bed reports them to pytest)
SKIPPED: list[str] = []

RGB = Sequence[float]


class VisualCheckFailed(AssertionError):
    """A render does not show what it should."""


def _pixels(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] < 3:
        raise ValueError(f"a render is an (height, width, 3) array, not {arr.shape}")
    return arr[..., :3].astype(np.int16)


def _rgb255(rgb: RGB) -> np.ndarray:
    """A colour as 0-255 RGB: Slicer's 0-1 colours are scaled, 0-255 ones kept."""
    c = np.asarray(rgb, dtype=np.float64)[:3]
    return c * 255.0 if c.max() <= 1.0 else c


def changed_mask(after: np.ndarray, before: np.ndarray, tolerance: int = 20) -> np.ndarray:
    """Pixels whose colour differs by more than ``tolerance`` (0-255, any channel)."""
    a, b = _pixels(after), _pixels(before)
    if a.shape != b.shape:
        raise ValueError(f"renders of different sizes: {a.shape} and {b.shape}")
    return np.asarray(np.abs(a - b).max(axis=2) > tolerance)


def changed_fraction(after: np.ndarray, before: np.ndarray, tolerance: int = 20) -> float:
    """The share of pixels whose colour differs by more than ``tolerance`` (0-255, any channel)."""
    return float(changed_mask(after, before, tolerance).mean())


def background_mask(pixels: np.ndarray, background: np.ndarray | RGB | None = None,
                    tolerance: int = 20) -> np.ndarray:
    """Pixels that show background: within ``tolerance`` of ``background``, a colour (0-1 or
    0-255) or a render of the empty view (a 3D view's background is a gradient); ``None``: black."""
    p = _pixels(pixels)
    if background is None:
        ref: np.ndarray = np.zeros(3)
    elif np.ndim(background) == 1:
        ref = _rgb255(background)  # type: ignore[arg-type]  # a colour
    else:
        ref = _pixels(np.asarray(background))
        if ref.shape != p.shape:
            raise ValueError(f"the background render is {ref.shape}, the render {p.shape}")
    return np.asarray(np.abs(p - ref).max(axis=2) <= tolerance)


def non_background_fraction(pixels: np.ndarray, background: np.ndarray | RGB | None = None,
                            tolerance: int = 20) -> float:
    """The share of pixels that are not background (see :func:`background_mask`)."""
    return float(1.0 - background_mask(pixels, background, tolerance).mean())


def colour_mask(pixels: np.ndarray, rgb: RGB, max_angle_deg: float = 15.0, min_brightness: int = 40) -> np.ndarray:
    """Pixels of the colour ``rgb`` (0-1 or 0-255), lit or shaded: their RGB vector within
    ``max_angle_deg`` of the colour's and their brightest channel at least ``min_brightness``.
    Grey pixels never match a saturated colour."""
    p = _pixels(pixels).astype(np.float64)
    c = _rgb255(rgb)
    norm = np.linalg.norm(p, axis=2) * float(np.linalg.norm(c))
    cos = np.divide(p @ c, norm, out=np.zeros(p.shape[:2]), where=norm > 0)
    return np.asarray((cos >= np.cos(np.radians(max_angle_deg))) & (p.max(axis=2) >= min_brightness))


def centroid(mask: np.ndarray) -> tuple[float, float] | None:
    """The middle (x, y) of the true pixels of ``mask`` in screen pixels, or ``None`` if none."""
    ys, xs = np.nonzero(np.asarray(mask))
    if xs.size == 0:
        return None
    return float(xs.mean()), float(ys.mean())


def colour_centroid(pixels: np.ndarray, rgb: RGB, max_angle_deg: float = 15.0) -> tuple[float, float] | None:
    """Where the colour ``rgb`` shows on the screen (the middle of its pixels), or ``None``."""
    return centroid(colour_mask(pixels, rgb, max_angle_deg))


def coloured_fraction(pixels: np.ndarray, min_spread: int = 30) -> float:
    """The share of pixels in colour, not grey: their channels spread by more than ``min_spread``."""
    p = _pixels(pixels)
    return float(((p.max(axis=2) - p.min(axis=2)) > min_spread).mean())


def _box_mean(image: np.ndarray, size: int) -> np.ndarray:
    """The mean over the ``size`` x ``size`` window around each pixel (edges repeated)."""
    half = size // 2
    padded = np.pad(image.astype(np.float64), half, mode="edge")
    summed = np.pad(padded.cumsum(axis=0).cumsum(axis=1), ((1, 0), (1, 0)))
    h, w = image.shape
    total = (summed[size:size + h, size:size + w] - summed[:h, size:size + w] - summed[size:size + h, :w]
             + summed[:h, :w])
    return np.asarray(total / float(size * size))


def roughness(pixels: np.ndarray, mask: np.ndarray | None = None, size: int = 7) -> float:
    """How grainy a render looks: the mean absolute difference between each pixel's brightness
    and the mean of the ``size`` x ``size`` pixels around it (noise, not the shapes, shows up).
    With ``mask``, only where that whole window lies inside it (edges of the mask left out)."""
    grey = _pixels(pixels).astype(np.float64).mean(axis=2)
    deviation = np.abs(grey - _box_mean(grey, size))
    if mask is None:
        return float(deviation.mean())
    inside = _box_mean(np.asarray(mask, dtype=np.float64), size) > 1.0 - 1e-9
    return float(deviation[inside].mean()) if inside.any() else 0.0


def _what(what: str) -> str:
    return f"{what}: " if what else ""


def expect_changed(after: np.ndarray, before: np.ndarray, min_fraction: float = 0.01, tolerance: int = 20,
                   what: str = "") -> float:
    """At least ``min_fraction`` of the pixels differ between ``after`` and ``before``; the share."""
    fraction = changed_fraction(after, before, tolerance)
    if fraction < min_fraction:
        raise VisualCheckFailed(f"{_what(what)}the render looks the same as before ({100 * fraction:.2f} % of the "
                                f"pixels changed, at least {100 * min_fraction:.2f} % expected)")
    return fraction


def expect_not_blank(pixels: np.ndarray, background: np.ndarray | RGB | None = None, min_fraction: float = 0.01,
                     tolerance: int = 20, what: str = "") -> float:
    """At least ``min_fraction`` of the pixels are not background; the share."""
    fraction = non_background_fraction(pixels, background, tolerance)
    if fraction < min_fraction:
        raise VisualCheckFailed(f"{_what(what)}the render is empty ({100 * fraction:.2f} % of the pixels are not "
                                f"background, at least {100 * min_fraction:.2f} % expected)")
    return fraction


def expect_colour_near(pixels: np.ndarray, rgb: RGB, xy: Sequence[float], max_distance: float, min_pixels: int = 20,
                       max_angle_deg: float = 15.0, what: str = "") -> tuple[float, float]:
    """The colour ``rgb`` shows on at least ``min_pixels`` pixels, centred within ``max_distance``
    pixels of the screen point ``xy``; where it is centred."""
    mask = colour_mask(pixels, rgb, max_angle_deg)
    count = int(mask.sum())
    colour = "(" + ", ".join(f"{v:.0f}" for v in _rgb255(rgb)) + ")"
    if count < min_pixels:
        raise VisualCheckFailed(f"{_what(what)}the colour {colour} shows on {count} pixels, at least {min_pixels} "
                                "expected")
    found = centroid(mask)
    assert found is not None
    distance = float(np.hypot(found[0] - xy[0], found[1] - xy[1]))
    if distance > max_distance:
        raise VisualCheckFailed(f"{_what(what)}the colour {colour} shows centred at ({found[0]:.0f}, {found[1]:.0f}), "
                                f"{distance:.0f} pixels from the expected ({xy[0]:.0f}, {xy[1]:.0f}) (at most "
                                f"{max_distance:.0f})")
    return found


def expect_smoother(after: np.ndarray, before: np.ndarray, max_ratio: float = 0.8, mask: np.ndarray | None = None,
                    what: str = "") -> float:
    """``after`` is smoother than ``before`` (its :func:`roughness` at most ``max_ratio`` of it); the ratio."""
    rough_after, rough_before = roughness(after, mask), roughness(before, mask)
    ratio = rough_after / rough_before if rough_before > 0 else float("inf")
    if not ratio <= max_ratio:
        raise VisualCheckFailed(f"{_what(what)}the render is not smoother (roughness {rough_after:.2f} against "
                                f"{rough_before:.2f} before, at most {max_ratio:.2f} times expected)")
    return ratio


class VisualChecks:
    """Renders for a module self-test, on ``slicer.mrmlScene`` with Slicer's application logic.

    ``say`` is the test's message channel (its ``delayDisplay``). Where rendering is
    unavailable (:func:`medtorch.slicer.views.rendering_unavailable`) :attr:`available` is
    false and the reason was said and logged once, and recorded in :data:`SKIPPED`.

    Open views with :meth:`views` after a step has built its scene, and leave the ``with``
    block before the scene is cleared.
    """

    def __init__(self, say: Callable[[str], Any] | None = None, size: int = 160) -> None:
        self.size = int(size)
        self._say = say
        self.reason: str | None = None
        try:
            from medtorch.slicer import views

            self.reason = views.rendering_unavailable()
        except ImportError as exc:  # pragma: no cover - views imports numpy only at module level
            self.reason = f"medtorch.slicer.views cannot be imported ({exc})"
        if self.reason:
            message = f"Visual checks skipped: {self.reason}"
            SKIPPED.append(self.reason)
            if say is not None:
                say(message)  # a self-test's delayDisplay: shown, and logged
            else:
                logging.warning(message)

    @classmethod
    def of(cls, test: Any) -> "VisualChecks":
        """The visual checks of a module self-test (a ``ScriptedLoadableModuleTest``): made on first
        use with the test's ``delayDisplay`` as the message channel, then kept on the test."""
        checks = getattr(test, "_visualChecks", None)
        if checks is None:
            checks = cls(test.delayDisplay)
            test._visualChecks = checks
        return checks

    @property
    def available(self) -> bool:
        return self.reason is None

    @contextlib.contextmanager
    def views(self) -> Iterator[Any]:
        """:class:`medtorch.slicer.views.Views` (Red, Yellow, Green, 3D) on Slicer's scene, closed after."""
        import slicer

        from medtorch.slicer import views

        if not self.available:
            raise RuntimeError(f"rendering is unavailable: {self.reason}")
        hs = views.headless_scene(slicer.mrmlScene, slicer.app.applicationLogic())
        with views.Views(hs.scene, hs.app_logic, self.size) as v:
            yield v

    def say(self, message: str) -> None:
        if self._say is not None:
            self._say(message)
        else:
            logging.info(message)
