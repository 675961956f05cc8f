"""Which options of each command name files it reads and files it writes, and the rule that
follows from it: **an output never replaces an input**.

Before a command does any work, :func:`check_outputs` resolves every input and output path
(symbolic links and ``..`` included; hard links too, where both exist) and refuses, with exit
status 2, an output that is one of the inputs, or two outputs that are one file, unless the user
passes ``--overwrite-input``. README promises that inputs are never modified; this is where the
promise is kept for every command at once.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from medtorch.errors import MedTorchInputError

__all__ = ["PATH_OPTIONS", "SERIES_OPTIONS", "add_series_arguments", "check_outputs", "flag_of", "series_choices_of"]

#: command -> (options naming files it reads, options naming files it writes), by argparse dest.
#: A command not listed reads and writes folders only (demo, fuse-eval, pipeline, batch, train-seg)
#: or nothing it could overwrite (info).
PATH_OPTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "convert": (("input",), ("out",)),
    "denoise": (("input",), ("out", "metrics", "fidelity_map")),
    "enhance": (("input", "match"), ("out", "bias_field")),
    "export-dicom": (("seg", "source"), ("out",)),
    # models pack: the pack (--out) never replaces the bundle folder or the license file it packs
    "models": (("bundle", "license_file"), ("out",)),
    "fuse": (("fixed", "moving", "transform", "checkpoint"),
             ("out", "out_luminance", "out_resampled", "metrics", "save_checkpoint")),
    "register": (("fixed", "moving", "fixed_mask", "moving_mask", "initial_transform", "fixed_landmarks",
                  "moving_landmarks", "model"), ("out_transform", "out_volume", "report")),
    "seg-metrics": (("pred", "ref"), ("json", "csv")),
    "segment": (("input", "seeds", "model"), ("out", "volumes_csv", "info")),
    "superres": (("input", "model"), ("out", "save_model", "export_onnx", "metrics", "fidelity_map")),
    "threshold-seg": (("input",), ("out",)),
    "train-reg": ((), ("out",)),
}


#: dests whose flag is not ``--`` + the dest with dashes
_FLAGS = {"input": "--in", "license_file": "--license", "bundle": "BUNDLE"}


def flag_of(dest: str) -> str:
    """The command-line flag of an argparse ``dest`` (``out_volume`` -> ``--out-volume``; ``input`` -> ``--in``)."""
    return _FLAGS.get(dest, "--" + dest.replace("_", "-"))


def _values(value: object) -> Iterator[str]:
    if value is None:
        return
    if isinstance(value, (list, tuple)):
        for v in value:
            yield from _values(v)
        return
    text = str(value)
    if "=" in text and not os.path.exists(text):  # NAME=path (a model's named channels)
        name, _, path = text.partition("=")
        if name and os.sep not in name:
            text = path
    if text and text != "-":
        yield text


def _same(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _resolved(paths: Iterable[tuple[str, str]]) -> list[tuple[str, str, Path]]:
    return [(dest, text, Path(text).expanduser().resolve()) for dest, text in paths]


def check_outputs(command: str, args: argparse.Namespace) -> None:
    """Refuse (:class:`MedTorchInputError`, exit 2) an output path that is an input or another output.

    ``--overwrite-input`` (``args.overwrite_input``) lets an output replace an input on purpose.
    """
    if command not in PATH_OPTIONS:
        return
    in_dests, out_dests = PATH_OPTIONS[command]
    inputs = _resolved((d, v) for d in in_dests for v in _values(getattr(args, d, None)))
    outputs = _resolved((d, v) for d in out_dests for v in _values(getattr(args, d, None)))
    for i, (od, otext, opath) in enumerate(outputs):
        for od2, otext2, opath2 in outputs[i + 1:]:
            if _same(opath, opath2):
                raise MedTorchInputError(
                    f"{flag_of(od)} and {flag_of(od2)} are one file ({otext}): the second would replace the first",
                    f"give {flag_of(od2)} another path")
        if getattr(args, "overwrite_input", False):
            continue
        for idest, itext, ipath in inputs:
            if _same(opath, ipath) or (ipath.is_dir() and opath == ipath):
                raise MedTorchInputError(
                    f"{flag_of(od)} {otext} is the input {flag_of(idest)} {itext}: writing it would replace your input",
                    f"choose another path for {flag_of(od)}, or add --overwrite-input if you mean to replace the input")


#: command -> {input option (dest): the option that chooses its DICOM series}. Every command that
#: reads volumes lets each input name its series; a folder of several series with none chosen is
#: refused with a hint naming this option. ``segment``'s ``--series-uid`` repeats, one per ``--in``.
SERIES_OPTIONS: dict[str, dict[str, str]] = {
    "convert": {"input": "--series-uid"},
    "denoise": {"input": "--series-uid"},
    "enhance": {"input": "--series-uid", "match": "--match-series-uid"},
    "export-dicom": {"source": "--source-series-uid"},
    "superres": {"input": "--series-uid"},
    "threshold-seg": {"input": "--series-uid"},
    "fuse": {"fixed": "--fixed-series-uid", "moving": "--moving-series-uid"},
    "register": {"fixed": "--fixed-series-uid", "moving": "--moving-series-uid",
                 "fixed_mask": "--fixed-mask-series-uid", "moving_mask": "--moving-mask-series-uid"},
    "seg-metrics": {"pred": "--pred-series-uid", "ref": "--ref-series-uid"},
    "segment": {"input": "--series-uid", "seeds": "--seeds-series-uid"},
}


def _series_dest(flag: str) -> str:
    return flag[2:].replace("-", "_")


def add_series_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    """The series options of ``command`` (:data:`SERIES_OPTIONS`), in their own help group."""
    options = SERIES_OPTIONS.get(command)
    if not options:
        return
    g = parser.add_argument_group("DICOM series (for an input folder that holds several; "
                                  "'medtorch info FOLDER' lists them)")
    for dest, flag in options.items():
        if command == "segment" and dest == "input":
            g.add_argument(flag, action="append", default=None, metavar="UID",
                           help="the series of an --in folder; repeat it, one per --in, in the same order")
        else:
            g.add_argument(flag, default=None, metavar="UID", help=f"the series of the {flag_of(dest)} folder")


def series_choices_of(command: str, args: argparse.Namespace) -> dict[str, tuple[str | None, str]]:
    """``{input path: (series UID or None, option)}`` for every input of ``command`` in ``args``."""
    out: dict[str, tuple[str | None, str]] = {}
    for dest, flag in SERIES_OPTIONS.get(command, {}).items():
        paths = list(_values(getattr(args, dest, None)))
        chosen = getattr(args, _series_dest(flag), None)
        uids = list(chosen) if isinstance(chosen, list) else [chosen] * max(len(paths), 1)
        if isinstance(chosen, list) and len(chosen) > len(paths):
            raise MedTorchInputError(f"{len(chosen)} {flag} given for {len(paths)} {flag_of(dest)} input(s)",
                                     f"give at most one {flag} per {flag_of(dest)}, in the same order")
        for i, path in enumerate(paths):
            uid = uids[i] if i < len(uids) else None
            hint = flag if len(paths) == 1 else f"{flag} (the {_ordinal(i + 1)}, for {flag_of(dest)} {path})"
            out[path] = (uid, hint)
    return out


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"
