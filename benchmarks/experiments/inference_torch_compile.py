"""torch.compile (inductor) on the fast inference copy of the MONAI benchmark U-Net, 4 tiles of 96^3.

Run from the repo root (figures in docs/inference.md, "Tried and dropped")::

    .venv/bin/python benchmarks/experiments/inference_torch_compile.py
"""
import time

import torch
from monai.networks.nets import UNet

from napari_cnnseg.core.netprep import inference_copy, wrap_module

torch.manual_seed(0)
net = UNet(3, 1, 2, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2,
           norm="batch").eval()
fast = inference_copy(wrap_module(net, 2, divisor=8), torch.device("cpu"))
x = torch.randn(4, 1, 96, 96, 96).contiguous(memory_format=torch.channels_last_3d)


def bench(f, n=3):
    f()
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n


with torch.inference_mode():
    print("eager fp32", bench(lambda: fast(x)))
    with torch.autocast("cpu", torch.bfloat16):
        print("eager bf16", bench(lambda: fast(x)))
t0 = time.perf_counter()
comp = torch.compile(fast)
with torch.inference_mode():
    comp(x)
    print("compile s", time.perf_counter() - t0)
    print("compiled fp32", bench(lambda: comp(x)))
    with torch.autocast("cpu", torch.bfloat16):
        t0 = time.perf_counter()
        comp(x)
        print("compile bf16 s", time.perf_counter() - t0)
        print("compiled bf16", bench(lambda: comp(x)))
