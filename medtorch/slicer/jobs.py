"""Running MedTorch operations from Slicer module logic: blocking or in the background.

A :class:`LogicJob` ties an operation's request (:mod:`medtorch.ops`) to the function that
turns its result into MRML nodes, and runs it blocking or as a background job of
:mod:`medtorch.runtime` (a worker process started with ``slicer.util.launchConsoleProcess``,
whose whole process tree a cancel stops). Nothing touches the scene until the operation has finished,
and :func:`scene_transaction` removes every node an ``apply`` step added if it fails, so a
cancel or an error leaves the scene as it was.

:class:`QtJobRunner` drives a background job from a widget: a progress dialog with a
Cancel button, polled from a ``QTimer`` so the GUI never freezes. It is the only piece
here that needs Qt, and it imports ``qt`` lazily.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any, Callable, Iterator

from medtorch import ops
from medtorch.errors import Cancelled
from medtorch.ops.base import OperationResult, Request
from medtorch.progress import CancelToken, ProgressCallback
from medtorch.runtime import BackgroundJob
from medtorch.volume import Volume


@contextlib.contextmanager
def scene_transaction(scene: Any) -> Iterator[None]:
    """Remove the nodes added inside the block if it raises (a cancel, an error)."""
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    try:
        yield
    except BaseException:
        added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        for node in added:
            if node is not None and node.GetID() not in before and node.GetScene() is scene:
                scene.RemoveNode(node)
        raise


def scene_node_ids(scene: Any) -> set[str]:
    """IDs of all nodes in the scene (for before/after comparisons)."""
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


class LogicJob:
    """An operation's request and inputs, plus the step that puts its result into the scene.

    ``LogicJob(RegisterRequest(mode="affine"), inputs, apply, scene)``; the request is checked
    at once (:func:`medtorch.ops.request_for`), so bad parameters fail before anything runs.
    """

    def __init__(self, request: Request, inputs: dict[str, Volume], apply: Callable[[OperationResult], Any],
                 scene: Any) -> None:
        self.request = ops.request_for(request)
        self.operation = self.request.operation
        self.inputs = inputs
        self.apply = apply
        self.scene = scene
        self.background: BackgroundJob | None = None

    def run_blocking(self, progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> Any:
        """Run in this process and apply the result (scripts, tests, self-tests); the time it
        took is logged, as Slicer's scripted-module template logs its processing time."""
        start = time.time()
        result = ops.run(self.request, self.inputs, progress=progress, cancel=cancel)
        output = self.finish(result)
        logging.info(f"{self.operation} completed in {time.time() - start:.2f} seconds")
        return output

    def start(self, progress: ProgressCallback | None = None) -> BackgroundJob:
        """Start in a worker process; call :meth:`finish` once it is done."""
        self.background = BackgroundJob(self.request, self.inputs, progress=progress).start()
        return self.background

    def finish(self, result: OperationResult | None = None) -> Any:
        if result is None:
            if self.background is None or self.background.result is None:
                raise Cancelled("the job has no result (it was cancelled or failed)")
            result = self.background.result
        with scene_transaction(self.scene):
            return self.apply(result)

    def run_background_blocking(self, timeout: float | None = None) -> Any:
        """Background process, waited for here (the same path the GUI takes, without Qt)."""
        background = self.start()
        result = background.wait(timeout=timeout)
        return self.finish(result)


class QtJobRunner:
    """Show a background :class:`LogicJob` in Slicer: progress dialog, Cancel, no freeze."""

    def __init__(self, job: LogicJob, title: str, on_done: Callable[[Any], None] | None = None,
                 on_error: Callable[[str], None] | None = None, parent: Any = None, interval_ms: int = 100,
                 on_cancelled: Callable[[], None] | None = None) -> None:
        import qt

        self.job = job
        self.on_done = on_done
        self.on_error = on_error
        self.on_cancelled = on_cancelled
        self.status = "idle"
        self.output: Any = None
        self.dialog = qt.QProgressDialog(title, "Cancel", 0, 100, parent)
        self.dialog.setWindowTitle(title)
        self.dialog.setMinimumDuration(0)
        self.dialog.setValue(0)
        self.timer = qt.QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.connect("timeout()", self._poll)

    def start(self) -> "QtJobRunner":
        self.job.start()
        self.status = "running"
        self.dialog.show()
        self.timer.start()
        return self

    def cancel(self) -> None:
        if self.job.background is not None:
            self.job.background.cancel()

    def _poll(self) -> None:
        background = self.job.background
        if background is None:
            return
        if self.dialog.wasCanceled:
            background.cancel()
        state = background.poll()
        self.dialog.setValue(int(round(state.fraction * 100)))
        self.dialog.setLabelText(state.message or "working")
        if state.status == "running":
            return
        self.timer.stop()
        self.dialog.close()
        self.status = state.status
        if state.status == "done":
            try:
                self.output = self.job.finish()
            except Exception as exc:  # an apply failure leaves the scene as it was
                self.status = "failed"
                if self.on_error:
                    self.on_error(str(exc))
                return
            if self.on_done:
                self.on_done(self.output)
        elif state.status == "failed" and self.on_error:
            self.on_error(state.message)
        elif state.status == "cancelled" and self.on_cancelled:
            self.on_cancelled()


def inputs_replaced(outputs: Mapping[str, Any], inputs: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    """The outputs that are one of the inputs: ``(output role, input role, node)`` per clash.

    ``outputs`` and ``inputs`` map a role ("output volume", "moving volume") to a node or
    ``None``; a node counts once per output role (the first input role it plays is named).
    """
    clashes = []
    for out_role, out_node in outputs.items():
        if out_node is None:
            continue
        for in_role, in_node in inputs.items():
            if in_node is not None and in_node is out_node:
                clashes.append((out_role, in_role, out_node))
                break
    return clashes


def refuse_replacing_inputs(clashes: list[tuple[str, str, Any]], overwrite_input: bool) -> None:
    """What a module's Logic does with :func:`inputs_replaced`'s clashes: an error unless the
    user agreed (``overwrite_input``; the Widget asks first, as Slicer modules do)."""
    from medtorch.errors import MedTorchInputError

    if clashes and not overwrite_input:
        out_role, in_role, node = clashes[0]
        raise MedTorchInputError(f"the {out_role} is the {in_role} ({node.GetName()}): the input would be replaced",
                                 f"choose another {out_role}, or 'Create new', or agree to replace the {in_role} "
                                 "when Apply asks")


def confirm_replacing_inputs(clashes: list[tuple[str, str, Any]], confirm: Callable[[str], bool]) -> bool:
    """Ask before an output replaces an input (Slicer's ``confirmOkCancelDisplay``): ``True``
    when there is nothing to ask or the user pressed OK."""
    if not clashes:
        return True
    lines = [f"The {out_role} '{node.GetName()}' is also the {in_role}: its contents will be replaced by the result."
             for out_role, in_role, node in clashes]
    return bool(confirm("\n".join(lines) + "\n\nReplace the input? (Cancel: nothing is changed; choose another "
                        "output or 'Create new'.)"))
