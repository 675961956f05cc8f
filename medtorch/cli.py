"""The ``medtorch`` command line (also ``python -m medtorch``).

Sub-commands live in :mod:`medtorch.commands`, one module each, and are discovered here.
Every command shows progress on stderr (``--quiet`` hides it), can be stopped with Ctrl-C
(outputs are written atomically, so nothing half-written is left), and reports a user
error as one clear message, not a traceback. Every command runs with the runtime's thread
policy (:mod:`medtorch.runtime.threads`: threads from the free CPUs, OpenMP not spinning;
``MEDTORCH_THREADS`` overrides it).

Exit codes: 0 success, 2 bad input or usage, 3 finished but the result failed its verdict
(``medtorch register``: the outputs are written unless ``--strict``), 4 a batch with failed
cases (``medtorch batch``), 130 cancelled, 141 the output pipe was closed (quietly),
1 unexpected error.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import signal
import sys
from typing import Any, Sequence

from medtorch import __version__
from medtorch.commands import Command
from medtorch.commands.paths import PATH_OPTIONS, add_series_arguments, check_outputs, series_choices_of
from medtorch.errors import Cancelled, MedTorchError, MedTorchInputError
from medtorch.progress import CancelToken
from medtorch.runtime.threads import applied, plan_threads

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130
#: 128 + SIGPIPE: the conventional status of a command whose output pipe was closed.
EXIT_BROKEN_PIPE = 141


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's last flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Help with each option's default, once: not where the help already states it, and not for
    options whose default means "not given" (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text.lower():
            return text
        return super()._get_help_string(action)


def discover_commands() -> dict[str, Command]:
    """Every :class:`Command` of the modules in :mod:`medtorch.commands`, by name."""
    import medtorch.commands as pkg

    found: dict[str, Command] = {}
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{pkg.__name__}.{info.name}")
        for command in getattr(module, "COMMANDS", []):
            found[command.name] = command
    return found


def _add_common(parser: argparse.ArgumentParser, writes_files: bool = False) -> None:
    g = parser.add_argument_group("general options")
    if writes_files:
        g.add_argument("--overwrite-input", action="store_true",
                       help="let an output path be one of the input files and replace it (refused otherwise)")
    g.add_argument("--device", default=None, choices=["auto", "cpu", "cuda", "mps"],
                   help="compute device (default: $MEDTORCH_DEVICE, else auto: cuda, then mps, then cpu)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar, notices or logs (Dask's too); errors and the results a command exists to print (seg-metrics, info) still show")
    g.add_argument("-v", "--verbose", action="store_true", help="log details, and show tracebacks of internal errors")


def build_parser(commands: dict[str, Command] | None = None) -> argparse.ArgumentParser:
    commands = commands if commands is not None else discover_commands()
    parser = argparse.ArgumentParser(
        prog="medtorch",
        description="MedTorch: registration, fusion, enhancement and tumor segmentation on torch "
                    "(the command line of the MedTorch 3D Slicer extension).",
        epilog="Run 'medtorch COMMAND --help' for a command's options and examples.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"medtorch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in commands.items():
        p = sub.add_parser(name, help=command.help, description=command.help,
                           epilog="examples:\n" + command.examples, formatter_class=_Formatter)
        command.add_arguments(p)
        add_series_arguments(name, p)
        _add_common(p, writes_files=name in PATH_OPTIONS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # threads chosen before any command imports torch, so that OpenMP starts with them; the
    # threads and --device's MEDTORCH_DEVICE put back on return (a command run inside a script
    # or a test must not change the device of what runs after it)
    device = os.environ.get("MEDTORCH_DEVICE")
    try:
        with applied(plan_threads()):
            return _main(argv)
    finally:
        if device is None:
            os.environ.pop("MEDTORCH_DEVICE", None)
        else:
            os.environ["MEDTORCH_DEVICE"] = device


def _main(argv: Sequence[str] | None) -> int:
    commands = discover_commands()
    parser = build_parser(commands)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    logging.basicConfig(level=logging.DEBUG if args.verbose else (logging.ERROR if args.quiet else logging.WARNING),
                        format="%(levelname)s: %(message)s")
    if args.device:  # put back by main() on return
        os.environ["MEDTORCH_DEVICE"] = args.device
    cancel = CancelToken()
    previous = signal.getsignal(signal.SIGINT)

    def on_interrupt(signum: int, frame: Any) -> None:
        if cancel.cancelled:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        cancel.cancel()
        sys.stderr.write("\ncancelling (Ctrl-C again to stop at once)...\n")

    signal.signal(signal.SIGINT, on_interrupt)
    try:
        check_outputs(args.command, args)  # before any work: an output never replaces an input
        if args.device not in (None, "auto"):
            from medtorch.device import select_device

            select_device(args.device)  # a device this machine lacks is refused the same way by every command
        from medtorch.io import series_choices

        with series_choices(series_choices_of(args.command, args)):  # each input's DICOM series
            rc = commands[args.command].run(args, cancel)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
        return rc
    except MedTorchInputError as exc:
        sys.stderr.write(f"medtorch {args.command}: error: {exc}\n")
        return EXIT_USAGE
    except BrokenPipeError:
        # the reader went away (``medtorch info ... | head``): end quietly, as Unix tools do
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except (Cancelled, KeyboardInterrupt):
        sys.stderr.write(f"medtorch {args.command}: cancelled; no partial output was written\n")
        return EXIT_CANCELLED
    except MedTorchError as exc:
        sys.stderr.write(f"medtorch {args.command}: error: {exc}\n")
        return EXIT_ERROR
    except Exception as exc:  # an internal error: say so, with the traceback when verbose
        if args.verbose:
            raise
        sys.stderr.write(f"medtorch {args.command}: internal error: {type(exc).__name__}: {exc}\n"
                         "(run again with --verbose for the traceback, and please report it)\n")
        return EXIT_ERROR
    finally:
        signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    sys.exit(main())
