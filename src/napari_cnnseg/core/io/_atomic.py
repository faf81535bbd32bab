"""Atomic writes: a temporary sibling path moved onto the destination on success."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from ._suffixes import WRITE_SUFFIXES, _suffix


def _temp_sibling(path: Path) -> Path:
    """A hidden, unique temporary path beside ``path`` with the same format ending."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp{_suffix(path, WRITE_SUFFIXES) or ''}")


def _replace(tmp: Path, path: Path) -> None:
    """Move ``tmp`` (file or folder) onto ``path``; an existing folder there is replaced."""
    if tmp.is_dir():
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    else:
        os.replace(tmp, path)


def _remove(tmp: Path) -> None:
    """Remove a temporary file or folder if it is still there."""
    if tmp.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
    elif tmp.exists():
        tmp.unlink()


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success move it onto ``path`` (file or folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    try:
        yield tmp
        _replace(tmp, path)
    finally:
        _remove(tmp)
