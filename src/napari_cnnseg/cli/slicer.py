"""`cnnseg slicer` (work in progress: being written in this session)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return sub.add_parser("slicer", help="(not yet available)")


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("cnnseg slicer is not implemented yet")
