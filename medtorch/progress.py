"""Progress and cancel: one protocol that every core algorithm takes.

An algorithm takes ``progress: ProgressCallback | None`` and ``cancel: CancelToken | None``.
It reports ``progress(fraction, message)`` with ``0 <= fraction <= 1`` and calls
``cancel.raise_if_cancelled()`` (or :func:`report`, which does both) often enough that a
cancel takes effect within a fraction of a second.

Nested steps use :class:`SubProgress` so that each step reports 0..1 of its own share.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Any, Iterator, Protocol, TextIO

from medtorch.errors import Cancelled


class ProgressCallback(Protocol):
    """``callback(fraction, message)``: fraction in [0, 1], message a short human text."""

    def __call__(self, fraction: float, message: str = "") -> None: ...


class CancelToken:
    """A thread-safe flag. Set it from any thread; algorithms poll it."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled()


def report(
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
    fraction: float,
    message: str = "",
) -> None:
    """Check for cancel, then report progress. Call it at every natural step of a loop."""
    if cancel is not None:
        cancel.raise_if_cancelled()
    if progress is not None:
        progress(min(max(float(fraction), 0.0), 1.0), message)


class SubProgress:
    """Maps a step's own 0..1 progress onto ``[start, stop]`` of a parent callback."""

    def __init__(self, parent: ProgressCallback | None, start: float, stop: float, prefix: str = "") -> None:
        self.parent = parent
        self.start = start
        self.stop = stop
        self.prefix = prefix

    def __call__(self, fraction: float, message: str = "") -> None:
        if self.parent is None:
            return
        text = f"{self.prefix}: {message}" if self.prefix and message else (self.prefix or message)
        self.parent(self.start + (self.stop - self.start) * min(max(fraction, 0.0), 1.0), text)


class ConsoleProgressBar:
    """A text progress bar for the command line: ``[#####.....]  50% ~3 min left message``.

    Redraws at most every ``min_interval`` seconds; writes nothing when ``quiet``.
    On a non-terminal stream it prints one line per 10 % step instead of redrawing.
    """

    def __init__(self, stream: TextIO | None = None, width: int = 30, quiet: bool = False, min_interval: float = 0.1) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.quiet = quiet
        self.min_interval = min_interval
        self._last_draw = 0.0
        self._last_decile = -1
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._started = time.monotonic()

    def _eta(self, now: float, fraction: float) -> str:
        """``~2 min left``: the time left at the rate so far, once there is a rate to go by (5 % done
        and 2 s spent); empty before that and at the end."""
        elapsed = now - self._started
        if fraction < 0.05 or fraction >= 1.0 or elapsed < 2.0:
            return ""
        left = elapsed * (1.0 - fraction) / fraction
        if left < 60:
            return f"~{max(1, round(left))} s left"
        if left < 3600:
            return f"~{round(left / 60)} min left"
        return f"~{left / 3600:.1f} h left"

    def __call__(self, fraction: float, message: str = "") -> None:
        if self.quiet:
            return
        fraction = min(max(fraction, 0.0), 1.0)
        now = time.monotonic()
        if self._tty:
            if fraction < 1.0 and now - self._last_draw < self.min_interval:
                return
            self._last_draw = now
            filled = int(round(self.width * fraction))
            bar = "#" * filled + "." * (self.width - filled)
            line = f"\r[{bar}] {fraction * 100:5.1f}% {self._eta(now, fraction):>11} {message[:60]:<60}"
            self.stream.write(line)
            if fraction >= 1.0:
                self.stream.write("\n")
            self.stream.flush()
        else:
            decile = int(fraction * 10)
            if decile != self._last_decile:
                self._last_decile = decile
                eta = self._eta(now, fraction)
                self.stream.write(f"[{fraction * 100:5.1f}%] {message}  ({now - self._started:.1f} s"
                                  + (f", {eta}" if eta else "") + ")\n")
                self.stream.flush()


def sitk_observe(filt: object, progress: ProgressCallback | None, cancel: CancelToken | None, message: str) -> None:
    """Wire a SimpleITK filter's progress events to ``progress`` and ``cancel``.

    A cancel calls the filter's ``Abort()``; SimpleITK then raises, and the caller sees
    :class:`~medtorch.errors.Cancelled` if it wraps ``Execute`` in :func:`run_sitk_filter`.
    Iterative filters that report only iteration events and ignore ``Abort()`` (N4 bias
    correction, for one) are stopped by raising :class:`~medtorch.errors.Cancelled` from
    their iteration event, which SimpleITK turns into an exception out of ``Execute``.
    """
    import SimpleITK as sitk

    def on_progress() -> None:
        if cancel is not None and cancel.cancelled:
            filt.Abort()  # type: ignore[attr-defined]
            return
        if progress is not None:
            progress(float(filt.GetProgress()), message)  # type: ignore[attr-defined]

    def on_iteration() -> None:
        if cancel is not None and cancel.cancelled:
            filt.Abort()  # type: ignore[attr-defined]
            raise Cancelled()

    filt.AddCommand(sitk.sitkProgressEvent, on_progress)  # type: ignore[attr-defined]
    if cancel is not None:
        filt.AddCommand(sitk.sitkIterationEvent, on_iteration)  # type: ignore[attr-defined]


@contextlib.contextmanager
def _quiet_cancel_tracebacks() -> Iterator[None]:
    """Keep SimpleITK from printing a traceback for a Cancelled raised inside a command.

    SimpleITK reports a Python exception raised in a command through ``sys.excepthook``;
    during the call, that hook stays silent for :class:`Cancelled` and passes anything
    else on to the hook that was installed before.
    """
    previous = sys.excepthook

    def hook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        if isinstance(exc_type, type) and issubclass(exc_type, Cancelled):
            return
        previous(exc_type, exc, tb)

    sys.excepthook = hook
    try:
        yield
    finally:
        if sys.excepthook is hook:
            sys.excepthook = previous


def run_sitk_filter(filt: object, *images: object, progress: ProgressCallback | None = None,
                    cancel: CancelToken | None = None, message: str = "") -> Any:
    """Execute a SimpleITK filter with progress and a working cancel."""
    if cancel is not None:
        cancel.raise_if_cancelled()
    sitk_observe(filt, progress, cancel, message)
    try:
        with _quiet_cancel_tracebacks():
            out = filt.Execute(*images)  # type: ignore[attr-defined]
    except RuntimeError:
        if cancel is not None and cancel.cancelled:
            raise Cancelled() from None
        raise
    if cancel is not None and cancel.cancelled:
        raise Cancelled()
    return out
