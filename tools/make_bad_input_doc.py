"""Write ``docs/bad-input.md`` from the catalogue's rows, with the messages they really produce.

Run: ``python tools/make_bad_input_doc.py``. Each row of ``Testing/bad_inputs.py`` is tried
through the command line and (where it has one) a module's Logic on the headless Slicer;
the table lists the message each gives. The tests (``Testing/test_bad_input_catalogue.py``)
check the same rows, so the document and the behaviour cannot drift apart silently.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "Testing")]


class _Patch:
    """The part of pytest's monkeypatch the rows use."""

    def __init__(self) -> None:
        self.undo: list[tuple[object, str, object]] = []

    def setattr(self, obj: object, name: str, value: object) -> None:
        self.undo.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    def restore(self) -> None:
        for obj, name, value in reversed(self.undo):
            setattr(obj, name, value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()


def main() -> int:
    import slicer_testbed
    from bad_inputs import ROWS

    from medtorch.cli import main as cli
    from medtorch.errors import MedTorchInputError
    from medtorch.io import write_text_atomic

    slicer_testbed.install()
    lines = [
        "# Bad input: what MedTorch says, and what to do",
        "",
        "Written by `python tools/make_bad_input_doc.py` from the rows of `Testing/bad_inputs.py`;",
        "`Testing/test_bad_input_catalogue.py` checks every row: the command line exits with code 2",
        "and one message (no traceback), the Logic raises `MedTorchInputError`, no partial output is",
        "left and the scene is unchanged. The registration rows at the end are inputs registration",
        "accepts under a documented policy (NaN/Inf voxels and constant slices are treated as outside",
        "the image, never replaced; volumes that do not overlap are brought together by the",
        "initialisation): the command exits with 0 and a warning naming the problem (the outputs are",
        "written, with the verdict beside them), or with 3 when the result fails its verdict (with",
        "`--strict` nothing is written); see README's command-line section for the exit codes.",
        "",
        "| case | command line | Slicer module logic |",
        "| --- | --- | --- |",
    ]
    for row in ROWS:
        cli_msg = logic_msg = "-"
        old_env = {k: os.environ.get(k) for k in (row.env or {})}
        os.environ.update(row.env or {})
        patch = _Patch()
        try:
            if row.cli is not None:
                with tempfile.TemporaryDirectory() as tmp:
                    argv = row.cli(Path(tmp))
                    if row.patch:
                        row.patch(patch)
                    err = io.StringIO()
                    with contextlib.redirect_stderr(err):
                        code = cli(argv + ["-q"])
                    patch.restore()
                    raw = err.getvalue()
                    text = (raw.split("error: ", 1)[-1] if "error: " in raw else
                            raw.split("warning: ", 1)[-1]).replace(tmp, "<folder>")
                    cli_msg = f"exit {code}: {text}"
            if row.logic is not None:
                slicer_testbed.reset_scene()
                try:
                    row.logic()
                    logic_msg = "NO ERROR (bug)"
                except MedTorchInputError as exc:
                    logic_msg = str(exc)
        finally:
            patch.restore()
            for k, v in old_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        lines.append(f"| {row.title} | {_cell(cli_msg)} | {_cell(logic_msg)} |")
    path = REPO / "docs" / "bad-input.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "\n".join(lines) + "\n")
    print(f"wrote {path.relative_to(REPO)} ({len(ROWS)} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
