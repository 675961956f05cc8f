"""The ``medtorch`` command line (also ``python -m medtorch``).

Sub-commands live in :mod:`medtorch.commands`, one module each, and are discovered here.
Every command shows progress on stderr (``--quiet`` hides it), can be stopped with Ctrl-C
(outputs are written atomically, so nothing half-written is left), and reports a user
error as one clear message, not a traceback. Every command runs with the runtime's thread
policy (:mod:`medtorch.runtime.threads`: threads from the free CPUs, OpenMP not spinning;
``MEDTORCH_THREADS`` overrides it).

Exit codes: 0 success, 2 bad input or usage, 130 cancelled, 1 unexpected error.
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
from medtorch.errors import Cancelled, MedTorchError, MedTorchInputError
from medtorch.progress import CancelToken
from medtorch.runtime.threads import applied, plan_threads

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def discover_commands() -> dict[str, Command]:
    """Every :class:`Command` of the modules in :mod:`medtorch.commands`, by name."""
    import medtorch.commands as pkg

    found: dict[str, Command] = {}
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{pkg.__name__}.{info.name}")
        for command in getattr(module, "COMMANDS", []):
            found[command.name] = command
    return found


def _add_common(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("general options")
    g.add_argument("--device", default=None, choices=["auto", "cpu", "cuda", "mps"],
                   help="compute device (default: $MEDTORCH_DEVICE, else auto: cuda, then mps, then cpu)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar, only errors")
    g.add_argument("-v", "--verbose", action="store_true", help="log details, and show tracebacks of internal errors")


def build_parser(commands: dict[str, Command] | None = None) -> argparse.ArgumentParser:
    commands = commands if commands is not None else discover_commands()
    parser = argparse.ArgumentParser(
        prog="medtorch",
        description="MedTorch: registration, fusion, enhancement and tumour segmentation on torch "
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
        _add_common(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # chosen before any command imports torch, so that OpenMP starts with it; put back on return
    with applied(plan_threads()):
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    commands = discover_commands()
    parser = build_parser(commands)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    logging.basicConfig(level=logging.DEBUG if args.verbose else (logging.ERROR if args.quiet else logging.WARNING),
                        format="%(levelname)s: %(message)s")
    if args.device:
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
        return commands[args.command].run(args, cancel)
    except MedTorchInputError as exc:
        sys.stderr.write(f"medtorch {args.command}: error: {exc}\n")
        return EXIT_USAGE
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
