"""Exceptions shared by the whole engine.

Every error a user can cause (bad file, bad shape, bad config, bad device) is raised as a
subclass of :class:`CnnsegError` with a message that says what to do. Front ends (CLI,
napari dock, Slicer module) catch ``CnnsegError`` and show its message, never a traceback.
"""

from __future__ import annotations


class CnnsegError(Exception):
    """Base class for errors the user can act on. The message says what to do."""


class InputError(CnnsegError, ValueError):
    """Bad input value: wrong shape, dtype, channel count, option or configuration."""


class VolumeReadError(CnnsegError, OSError):
    """A volume file or folder cannot be read (corrupt, truncated, unsupported, empty)."""


class ShapeError(InputError):
    """An array shape a network cannot take; the message names the nearest valid shape."""


class CheckpointError(CnnsegError):
    """A model file cannot be loaded safely (pickle, missing sidecar, mismatched weights)."""


class DeviceError(CnnsegError, RuntimeError):
    """A requested compute device is not available."""


class Cancelled(CnnsegError):
    """A long job stopped because its ``cancel()`` callable returned True."""
