"""Crash-safe autosave of scribbles, keyed by the identity of the image they were painted on.

Scribbles are sparse (a few strokes in a large volume), so they are stored as the flat indices
and values of the painted voxels in an uncompressed ``.npz``: saving takes milliseconds even for
large volumes and can run on every paint stroke. Every save writes a temporary file in the same
folder and then ``os.replace``-s it over the previous one, so a crash at any moment leaves either
the old or the new file on disk, never a truncated one.

Where the files go: ``$CNNSEG_DATA_DIR/scribbles`` if that variable is set, otherwise the per-user
data folder (``platformdirs.user_data_dir("napari-cnnseg")/scribbles``, e.g.
``~/.local/share/napari-cnnseg/scribbles`` on Linux). One file per image: ``<key>.npz``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .core.errors import InputError

logger = logging.getLogger(__name__)

#: environment variable that overrides the autosave root folder (tests, portable installs)
DATA_DIR_ENV = "CNNSEG_DATA_DIR"
_FORMAT_VERSION = 1


def autosave_dir() -> Path:
    """Folder holding autosaved scribbles (created on first save)."""
    root = os.environ.get(DATA_DIR_ENV)
    if not root:
        try:
            import platformdirs

            root = platformdirs.user_data_dir("napari-cnnseg", appauthor=False)
        except ImportError:  # pragma: no cover - platformdirs ships with napari
            root = str(Path.home() / ".local" / "share" / "napari-cnnseg")
    return Path(root) / "scribbles"


def image_key(
    array: Any,
    *,
    spacing: tuple[float, ...] = (1.0, 1.0, 1.0),
    source_path: str | os.PathLike | None = None,
) -> str:
    """A short stable identifier of an image, used to name its scribble file.

    For an image read from disk the key hashes its absolute path and shape (so the scribbles
    come back when the same file is opened again). For an in-memory image it hashes the shape,
    dtype, spacing and a strided subsample of the voxels (at most ~1 M values).

    Args:
        array: image voxels (Z, Y, X) or (C, Z, Y, X); numpy, zarr or dask.
        spacing: voxel size (z, y, x) in physical units.
        source_path: file or folder the image was read from, if any.

    Returns:
        A 20-character hexadecimal string.
    """
    h = hashlib.sha1()
    h.update(repr(tuple(int(s) for s in array.shape)).encode())
    if source_path:
        h.update(b"path:" + str(Path(source_path).expanduser().resolve()).encode())
    else:
        h.update(str(np.dtype(array.dtype)).encode())
        h.update(repr(tuple(round(float(s), 6) for s in spacing)).encode())
        size = int(np.prod(array.shape))
        step = max(1, int(np.ceil((size / 1_000_000) ** (1.0 / array.ndim))))
        sub = np.ascontiguousarray(np.asarray(array[(slice(None, None, step),) * array.ndim]))
        h.update(sub.tobytes())
    return h.hexdigest()[:20]


class ScribbleStore:
    """Saves and reloads the scribbles of one image.

    Args:
        key: image identity from :func:`image_key`.
        folder: where to keep the file; default :func:`autosave_dir`.
    """

    def __init__(self, key: str, folder: str | os.PathLike | None = None) -> None:
        self.key = key
        self.folder = Path(folder) if folder is not None else autosave_dir()

    @property
    def path(self) -> Path:
        """The scribble file of this image (may not exist yet)."""
        return self.folder / f"{self.key}.npz"

    def save(self, scribbles: np.ndarray) -> Path:
        """Atomically write ``scribbles`` (Z, Y, X) integer array; returns the file path."""
        scribbles = np.asarray(scribbles)
        if scribbles.ndim != 3 or not np.issubdtype(scribbles.dtype, np.integer):
            raise InputError(
                f"scribbles must be a 3D integer array (Z, Y, X), got {scribbles.dtype} "
                f"{scribbles.shape}"
            )
        flat = scribbles.reshape(-1)
        index = np.flatnonzero(flat)
        values = flat[index]
        self.folder.mkdir(parents=True, exist_ok=True)
        self._sweep_stale()
        fd, tmp = tempfile.mkstemp(prefix=f".{self.key}.{os.getpid()}.", suffix=".npz.tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(
                    fh,
                    version=np.int64(_FORMAT_VERSION),
                    shape=np.asarray(scribbles.shape, dtype=np.int64),
                    dtype=np.asarray(str(scribbles.dtype)),
                    index=index.astype(np.int64),
                    values=values,
                )
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        logger.debug("autosaved %d scribbled voxels to %s", index.size, self.path)
        return self.path

    def _sweep_stale(self) -> None:
        """Remove temporary files a killed save left (SIGKILL, power cut): those of processes
        that no longer run. The saved file itself is never touched."""
        from .core.io._atomic import _pid_alive

        for tmp in self.folder.glob(f".{self.key}.*.npz.tmp"):
            parts = tmp.name.split(".")
            try:
                pid = int(parts[2])
            except (IndexError, ValueError):
                continue  # an older name without a pid: leave it
            if pid != os.getpid() and not _pid_alive(pid):
                tmp.unlink(missing_ok=True)

    def load(self, shape: tuple[int, int, int] | None = None) -> np.ndarray | None:
        """The last saved scribbles, or None if there are none (or they do not fit ``shape``).

        A damaged file is logged and ignored (never raises): losing an autosave must not stop
        the user from working.
        """
        if not self.path.is_file():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as data:
                saved_shape = tuple(int(s) for s in data["shape"])
                dtype = np.dtype(str(data["dtype"]))
                out = np.zeros(int(np.prod(saved_shape)), dtype=dtype)
                out[data["index"]] = data["values"]
        except Exception as exc:  # noqa: BLE001 - any damage means "no autosave"
            logger.warning("ignoring unreadable scribble autosave %s: %s", self.path, exc)
            return None
        if shape is not None and tuple(shape) != saved_shape:
            logger.warning(
                "ignoring scribble autosave %s: shape %s differs from the image %s",
                self.path,
                saved_shape,
                tuple(shape),
            )
            return None
        return out.reshape(saved_shape)

    def clear(self) -> None:
        """Delete the saved scribbles of this image."""
        self.path.unlink(missing_ok=True)
