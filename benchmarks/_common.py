"""Shared helpers for the benchmark scripts: conv peak, peak RSS, one-line JSON output.

Every benchmark prints exactly ONE JSON line on stdout (``emit``) so results can be
collected with ``python benchmarks/bench_x.py >> results.jsonl``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import torch


def conv3d_flops(in_channels: int, out_channels: int, kernel: int | tuple[int, int, int],
                 out_voxels: int, batch: int = 1, groups: int = 1) -> float:
    """Multiply-add FLOPs (2 per MAC) of one Conv3d forward.

    Args:
        in_channels, out_channels: channel counts.
        kernel: kernel size (int or (kz, ky, kx)).
        out_voxels: number of output voxels per sample (Z' * Y' * X').
        batch: batch size.
        groups: convolution groups.

    Returns:
        FLOPs as a float.
    """
    k = (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)
    kvol = k[0] * k[1] * k[2]
    return 2.0 * (in_channels // groups) * out_channels * kvol * out_voxels * batch


def measure_conv_peak_gflops(dtype: torch.dtype = torch.float32, seconds: float = 3.0,
                             batch: int = 2, device: str = "cpu") -> float:
    """Achieved GFLOP/s of a well-shaped 3D convolution: this machine's practical conv peak.

    Conv3d 64 -> 64 channels, kernel 3^3, padding 1, on (batch, 64, 48, 48, 48) in
    ``channels_last_3d`` under ``torch.inference_mode()``. For bf16 / fp16 the conv runs
    under autocast. The best of several timed repetitions is reported.

    Args:
        dtype: torch.float32, torch.bfloat16 or torch.float16.
        seconds: time budget for the timed repetitions (after one warm-up).
        batch: samples per forward (>= 2 keeps oneDNN on its fast path).
        device: "cpu" or "cuda".

    Returns:
        GFLOP/s (1e9 FLOPs per second, 2 FLOPs per multiply-add).
    """
    dev = torch.device(device)
    conv = torch.nn.Conv3d(64, 64, 3, padding=1).to(dev).eval()
    x = torch.randn(batch, 64, 48, 48, 48, device=dev)
    conv = conv.to(memory_format=torch.channels_last_3d)
    x = x.contiguous(memory_format=torch.channels_last_3d)
    flops = conv3d_flops(64, 64, 3, 48**3, batch)
    autocast = dtype != torch.float32

    def step() -> None:
        with torch.autocast(dev.type, dtype=dtype, enabled=autocast):
            conv(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    best = float("inf")
    with torch.inference_mode():
        step()  # warm-up (oneDNN primitive creation)
        start = time.perf_counter()
        reps = 0
        while reps < 3 or time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            step()
            best = min(best, time.perf_counter() - t0)
            reps += 1
            if reps >= 200:
                break
    return flops / best / 1e9


def status_mb(key: str) -> float:
    """A memory field of /proc/self/status (``VmHWM``, ``VmRSS``, ...) in MB; 0 without /proc."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (``VmHWM`` from /proc; ru_maxrss elsewhere)."""
    peak = status_mb("VmHWM")
    if peak:
        return peak
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


def emit(result: dict[str, Any]) -> None:
    """Print ``result`` as ONE JSON line on stdout (floats rounded to 6 significant digits)."""

    def clean(v: Any) -> Any:
        if isinstance(v, float):
            return float(f"{v:.6g}")
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    print(json.dumps(clean(result), sort_keys=False), flush=True)


def count_conv_flops(model: torch.nn.Module, input_shape: tuple[int, ...],
                     device: str = "cpu") -> float:
    """FLOPs (2 per multiply-add) of every Conv3d / ConvTranspose3d in one forward pass.

    Counted with forward hooks on a zero input of ``input_shape`` (N, C, Z, Y, X): a conv adds
    ``2 * C_in/groups * C_out * k^3 * output voxels``, a transposed conv
    ``2 * C_in * C_out/groups * k^3 * input voxels``. Elementwise ops are not counted.
    """
    total = 0.0

    def hook(module, inputs, output):
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1] * module.kernel_size[2]
        if isinstance(module, torch.nn.ConvTranspose3d):
            vox = inputs[0][0, 0].numel() * inputs[0].shape[0]
            total += 2.0 * module.in_channels * (module.out_channels // module.groups) * k * vox
        else:
            vox = output[0, 0].numel() * output.shape[0]
            total += 2.0 * (module.in_channels // module.groups) * module.out_channels * k * vox

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    try:
        with torch.inference_mode():
            model(torch.zeros(input_shape, device=device))
    finally:
        for h in handles:
            h.remove()
    return total


def describe_device(device: str = "cpu") -> str:
    """Human-readable name of the compute device (CPU model + threads, or GPU name)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(torch.device(device))} (CUDA)"
    name = "CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {torch.get_num_threads()} threads"


def conv_kernel_seconds(fn: Any) -> float:
    """CPU seconds that ``fn()`` spends inside convolution kernels (forward and backward).

    Runs ``fn`` once under ``torch.profiler`` and sums the *self* time of every aten op whose
    name contains "conv" (``mkldnn_convolution``, ``convolution_backward``, the transposed
    paths, ...). Weight casts, norms, activations, copies and Python are not included. A
    method whose convolutions alone take ``t`` seconds can never beat a baseline taking ``T``
    by more than ``T / t``: this is how the benchmarks report the bound on the speedup that
    the machine allows (``speedup_bound_*`` keys).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    total_us = sum(e.self_cpu_time_total for e in prof.key_averages() if "conv" in e.key.lower())
    return total_us / 1e6
