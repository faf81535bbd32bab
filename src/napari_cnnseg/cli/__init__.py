"""``cnnseg`` command line: a thin argparse front end over :mod:`napari_cnnseg.core`.

Each subcommand lives in its own module in this package and exposes
``add_parser(subparsers) -> argparse.ArgumentParser`` and ``run(args) -> int``.
Modules import torch and the engine inside ``run`` only, so ``cnnseg --help`` is fast.
Errors the user can act on (:class:`~napari_cnnseg.core.errors.CnnsegError`) are printed
as one clear line on stderr with exit code 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

#: subcommand modules, in the order ``cnnseg --help`` lists them
SUBCOMMANDS = ("info", "segment", "suggest", "finetune", "evaluate", "models", "slicer")

EXIT_USER_ERROR = 2
EXIT_CANCELLED = 130
#: stdout closed early by the reader (``cnnseg models | head``): the shell's SIGPIPE code
EXIT_BROKEN_PIPE = 141


def build_parser() -> argparse.ArgumentParser:
    """The full ``cnnseg`` parser with every subcommand registered."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="cnnseg",
        description="Interactive CNN segmentation of 3D volumes (headless engine of napari-cnnseg).",
    )
    parser.add_argument("--version", action="version", version=f"napari-cnnseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"{__name__}.{name}")
        sp = module.add_parser(sub)
        sp.set_defaults(_run=module.run)
    return parser


def run_reporting_errors(call: Callable[[], int | None], prog: str, command: str = "") -> int:
    """Run ``call()`` and turn what the user can act on into one stderr line and an exit code.

    Args:
        call: the work; its return value (None = 0) is the exit code.
        prog: program name that starts the messages (``cnnseg``, ``cnnseg-slicer``).
        command: subcommand named in the error line (``cnnseg segment: error: ...``), if any.

    Returns:
        The exit code: ``call()``'s, :data:`EXIT_USER_ERROR` for a
        :class:`~napari_cnnseg.core.errors.CnnsegError`, :data:`EXIT_CANCELLED` when cancelled
        or interrupted, :data:`EXIT_BROKEN_PIPE` (quietly) when the reader of stdout went away.
        Other exceptions propagate (with their traceback).
    """
    from ..core.errors import Cancelled, CnnsegError

    try:
        code = int(call() or 0)
        sys.stdout.flush()  # a closed pipe shows up here at the latest, not at interpreter exit
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except Cancelled as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_CANCELLED
    except CnnsegError as exc:
        where = f"{prog} {command}" if command else prog
        print(f"{where}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_CANCELLED


def _silence_stdout() -> None:
    """Point stdout at the null device so that the final flush at exit cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (e.g. under pytest)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cnnseg`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return run_reporting_errors(lambda: args._run(args), "cnnseg", args.command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
