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
import sys
from collections.abc import Sequence

#: subcommand modules, in the order ``cnnseg --help`` lists them
SUBCOMMANDS = ("info", "segment", "finetune", "evaluate", "models", "slicer")

EXIT_USER_ERROR = 2
EXIT_CANCELLED = 130


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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cnnseg`` console script; returns the exit code."""
    from ..core.errors import Cancelled, CnnsegError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args._run(args) or 0)
    except Cancelled as exc:
        print(f"cnnseg: {exc}", file=sys.stderr)
        return EXIT_CANCELLED
    except CnnsegError as exc:
        print(f"cnnseg {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("cnnseg: interrupted", file=sys.stderr)
        return EXIT_CANCELLED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
