"""Atomic writes: a temporary sibling path moved onto the destination on success."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

from ._suffixes import WRITE_SUFFIXES, _suffix

logger = logging.getLogger(__package__)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def _temp_sibling(path: Path) -> Path:
    """A hidden, unique temporary path beside ``path`` with the same format ending.

    The name carries this host and process id (``.NAME.HOST-PID-XXXXXXXX.tmp.EXT``), so that
    what a killed writer left behind can be recognised and removed (:func:`_sweep_stale`).
    """
    _sweep_stale(path)
    tag = f"{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return path.with_name(f".{path.name}.{tag}.tmp{_suffix(path, WRITE_SUFFIXES) or ''}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: alive
        return True
    return True


def _sweep_stale(path: Path) -> None:
    """Remove temporary siblings of ``path`` left by a writer on this host that no longer runs
    (killed before it could clean up, e.g. SIGKILL or a power cut). Others are left alone."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.{re.escape(_host())}-(\d+)-[0-9a-f]{{8}}\.tmp")
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            m = pattern.match(entry.name)
            if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
                logger.info("removing %s, left by an interrupted write", entry.name)
                _remove(Path(entry.path))


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
