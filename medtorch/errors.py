"""The one exception type that every user-facing failure in MedTorch raises.

A :class:`MedTorchInputError` says what is wrong *and* what to do about it, so the
command line can print it without a traceback and Slicer can show it in a message box.
"""

from __future__ import annotations


class MedTorchError(Exception):
    """Base class of every error MedTorch raises on purpose."""


class MedTorchInputError(MedTorchError, ValueError):
    """Bad input: the message names the problem and the fix.

    Args:
        problem: what is wrong, e.g. ``"the volume contains NaN values"``.
        fix: what the user should do, e.g. ``"replace NaN voxels before running"``.
    """

    def __init__(self, problem: str, fix: str) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}. What to do: {fix}.")


class Cancelled(MedTorchError):
    """Raised inside an algorithm when its :class:`~medtorch.progress.CancelToken` is set."""

    def __init__(self, message: str = "cancelled by the user") -> None:
        super().__init__(message)


class OutOfMemoryBudget(MedTorchInputError):
    """A step would need more memory than the budget allows; raised before it starts."""
