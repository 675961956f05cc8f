"""``medtorch view``: browse an output folder (batch, pipeline, demo) in Slicer's views, in a web browser."""

from __future__ import annotations

import argparse
import sys

from medtorch.commands import Command
from medtorch.errors import Cancelled, MedTorchError, MedTorchInputError
from medtorch.progress import CancelToken

INSTALL_HINT = "pip install 'medtorch[view]' (or: pip install trame trame-vuetify)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("outdir", help="the output folder of medtorch batch, pipeline or demo (their --out)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on: this machine only by default; 0.0.0.0 lets other machines in "
                        "(the viewer has no login: prefer an SSH tunnel)")
    p.add_argument("--port", type=int, default=0, help="port to listen on; 0 takes a free one (printed)")
    p.add_argument("--size", type=int, default=320, help="size of each view in pixels")


def _check_trame() -> None:
    try:
        import trame  # noqa: F401
        import trame_vuetify  # noqa: F401
    except ImportError as exc:
        raise MedTorchInputError(f"medtorch view needs the trame packages, which are not installed ({exc})",
                                 INSTALL_HINT) from exc


def _check_port(host: str, port: int) -> None:
    """Refuse a port that is taken before the case is loaded (seconds), not after."""
    import socket

    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise MedTorchInputError(f"cannot listen on {host} port {port} ({exc.strerror or exc})",
                                     "choose another --port, or --port 0 for a free one") from exc


def run(args: argparse.Namespace, cancel: CancelToken) -> int:
    from medtorch.view.outputs import read_output

    if not 0 <= args.port <= 65535:
        raise MedTorchInputError(f"--port {args.port} is not a port number", "give 0 (a free port) or 1-65535")
    if not 64 <= args.size <= 2048:
        raise MedTorchInputError(f"--size {args.size} is out of range", "give a view size of 64 to 2048 pixels")
    _check_trame()
    output = read_output(args.outdir)
    _check_port(args.host, args.port)
    from medtorch.slicer.views import rendering_unavailable

    reason = rendering_unavailable()
    if reason:
        raise MedTorchError(f"cannot draw Slicer's views on this machine: {reason}. What to do: run it where "
                            "offscreen OpenGL works (Mesa's EGL: apt-get install libegl1 libgl1-mesa-dri) or open "
                            "the output in 3D Slicer")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        sys.stderr.write(f"medtorch view: warning: listening on {args.host}: anyone who can reach this machine on "
                         "that port can see these images (the viewer has no login); an SSH tunnel to the default "
                         "127.0.0.1 is safer\n")
    from medtorch.view.app import ViewerApp

    if not args.quiet:
        sys.stderr.write(f"reading {output.kind} output {output.root}: {len(output.cases)} case(s)\n")
    app = ViewerApp(output, size=args.size)
    try:
        if output.cases:
            app.state.case_index = 0
            app.load_case(0)
        if cancel.cancelled:
            raise Cancelled()
        app.serve(args.host, args.port)
    finally:
        app.close()
    if not args.quiet:
        sys.stderr.write("medtorch view: stopped\n")
    return 0


COMMANDS = [Command("view", "browse the cases of a batch, pipeline or demo output in Slicer's views, in a web browser",
                    "  medtorch view cohort-out\n"
                    "  medtorch view cohort-out --port 8080   (then on your laptop: ssh -L 8080:127.0.0.1:8080 "
                    "cluster-node, and open http://127.0.0.1:8080/)\n"
                    "  medtorch view medtorch-demo --host 0.0.0.0 --port 8080   (other machines may connect: no "
                    "login)", add_arguments, run)]
