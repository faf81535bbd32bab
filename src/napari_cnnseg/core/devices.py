"""Compute devices: choose "auto" | "cpu" | "cuda" | "mps", and what precision each supports.

``resolve_device("auto")`` picks CUDA, then Apple MPS, then the CPU. Reduced precision:

* CPU: bfloat16 where oneDNN has native bf16 kernels (AVX512-BF16 / AMX, e.g. AMD Zen 4,
  Intel Sapphire Rapids and later). Emulated bf16 on older CPUs is slower than fp32, so it is
  never chosen automatically there.
* CUDA: bfloat16 on Ampere and later, float16 otherwise.
* MPS: float16.
"""

from __future__ import annotations

import logging

import torch

from .errors import DeviceError, InputError
from .precisions import PRECISION_CHOICES, TRAIN_PRECISION_CHOICES  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """Device names usable on this machine, "auto" first (e.g. ``["auto", "cpu", "cuda"]``)."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names.append("cuda")
        names.extend(f"cuda:{i}" for i in range(torch.cuda.device_count()) if torch.cuda.device_count() > 1)
    if _mps_available():
        names.append("mps")
    return names


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Turn a device name into a :class:`torch.device`, checking that it exists.

    Args:
        spec: "auto" (CUDA > MPS > CPU), "cpu", "cuda", "cuda:N", "mps", a torch.device, or None
            (same as "auto").

    Returns:
        The device.

    Raises:
        DeviceError: the device is not available here (the message lists the ones that are).
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    name = (spec or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise DeviceError(
            f"unknown device {spec!r}; choose one of {', '.join(available_devices())}"
        ) from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {spec!r} requested but CUDA is not available here; use one of "
                f"{', '.join(available_devices())}"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {spec!r} does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type == "mps":
        if not _mps_available():
            raise DeviceError(
                f"device 'mps' requested but Apple MPS is not available here; use one of "
                f"{', '.join(available_devices())}"
            )
    elif device.type != "cpu":
        raise DeviceError(f"unsupported device {spec!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    return device


def cpu_has_native_bf16() -> bool:
    """True when oneDNN runs bf16 convolutions natively on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


def reduced_precision_dtype(device: torch.device) -> torch.dtype | None:
    """The fast reduced-precision dtype of ``device``, or None where fp32 is the fastest.

    Returns:
        torch.bfloat16 (CPU with native bf16, CUDA Ampere+), torch.float16 (older CUDA, MPS),
        or None.
    """
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return None


def precision_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Map an explicit precision name to a compute dtype (None = plain fp32).

    Args:
        precision: "fp32", "bf16" or "fp16" ("auto" is decided by the caller with a probe).
        device: where the network runs.

    Raises:
        InputError: unknown name, or fp16 asked for on the CPU.
    """
    name = str(precision).lower()
    if name not in PRECISION_CHOICES:
        raise InputError(
            f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_CHOICES)}"
        )
    if name == "fp32":
        return None
    if name == "bf16":
        if device.type == "cpu" and not cpu_has_native_bf16():
            log.warning("this CPU has no native bf16 kernels: bf16 runs emulated (slower than fp32)")
        return torch.bfloat16
    if name == "fp16":
        if device.type == "cpu":
            raise InputError("fp16 is not supported on the CPU; use --precision bf16 or fp32")
        return torch.float16
    raise InputError("precision 'auto' must be resolved by predict()")  # pragma: no cover
