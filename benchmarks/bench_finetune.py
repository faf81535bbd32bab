"""Training-step throughput: our fine-tuning step vs a plain PyTorch loop, same net, same run.

Usage::

    python benchmarks/bench_finetune.py [--steps 30] [--plain-steps 12] [--batch 4] [--quick]

Our step is :func:`napari_cnnseg.core.training.finetune` itself (batch 4, ``channels_last_3d``,
bf16 autocast where the CPU has it, crops sampled around scribbles with augmentation, masked
loss, AdamW); the plain loop trains the same architecture (same initial weights) at batch 1,
fp32, contiguous memory, on the same crop shape. Both run on the phantom with simulated strokes.

``conv_peak_gflops`` is this machine's conv peak measured in the same run (bf16 when our step
uses bf16, see ``_common.measure_conv_peak_gflops``); ``fraction_of_peak`` is the conv FLOPs of
our training step divided by time and by that peak. Training FLOPs per crop are taken as
3x the forward conv FLOPs (forward + gradients w.r.t. inputs and weights); elementwise ops,
norms and the optimiser are not counted.
``plain_fraction_of_peak`` is the plain loop's conv FLOPs per second over the fp32 peak
(``conv_peak_gflops_fp32``): the higher it is on a machine, the lower the reachable speedup.
``speedup_bound`` divides the plain loop's seconds per crop by the seconds per crop that our
step spends inside convolution kernels alone (``_common.conv_kernel_seconds``, 10 steps): no
change outside the convolutions can take ``speedup`` past it.
Keys: ``crops_per_s``, ``plain_crops_per_s``, ``speedup``, ``conv_peak_gflops``,
``fraction_of_peak``.
``--quick`` is a smoke test only (numbers meaningless): a 24x48x48 phantom, a half-width net
(base width 8), 4x16x16 output crops, batch 2, 5 of our steps, 2 plain-loop crops, 2 profiled
steps for ``speedup_bound`` and a tiny (batch-1) peak measurement; explicit ``--steps`` /
``--plain-steps`` / ``--batch`` / ``--peak-seconds`` still apply.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    conv_kernel_seconds,
    count_conv_flops,
    emit,
    measure_conv_peak_gflops,
)
from _scribble_sim import initial_strokes  # noqa: E402
from _unet import crop_for, make_net  # noqa: E402

from napari_cnnseg.core.normalization import normalize  # noqa: E402
from napari_cnnseg.core.sample_data import make_phantom  # noqa: E402
from napari_cnnseg.core.sampling import ScribbleSampler  # noqa: E402
from napari_cnnseg.core.training import crop_geometry, finetune, use_bf16  # noqa: E402


def plain_loop(net: torch.nn.Module, sampler: ScribbleSampler, steps: int) -> float:
    """Seconds per crop of a textbook loop: batch 1, fp32, contiguous, masked CE, AdamW."""
    net = net.to(memory_format=torch.contiguous_format).train()
    opt = torch.optim.AdamW(net.parameters(), lr=5e-4)
    times = []
    for _ in range(steps + 2):
        b = sampler.sample(1)
        t0 = time.perf_counter()
        x = torch.from_numpy(b.image)
        y = torch.from_numpy(b.target)
        logits = net(x)
        mask = y > 0
        loss = F.cross_entropy(logits, (y - 1).clamp(min=0), reduction="none")[mask].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[2:]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=None,
                   help="our steps, the first 3 are warm-up (default 30; 5 with --quick)")
    p.add_argument("--plain-steps", type=int, default=None,
                   help="plain-loop crops (default 12; 2 with --quick)")
    p.add_argument("--batch", type=int, default=None, help="our batch size (default 4; 2 with --quick)")
    p.add_argument("--peak-seconds", type=float, default=None,
                   help="conv peak time budget (default 3; 0.1 with --quick)")
    p.add_argument("--quick", action="store_true", help="small and short (smoke test only)")
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = 5 if args.quick else 30
    if args.plain_steps is None:
        args.plain_steps = 2 if args.quick else 12
    if args.batch is None:
        args.batch = 2 if args.quick else 4
    if args.peak_seconds is None:
        args.peak_seconds = 0.1 if args.quick else 3.0
    torch.manual_seed(0)

    image, labels = make_phantom(shape=(24, 48, 48)) if args.quick else make_phantom()
    spacing = image.spacing
    scribbles = initial_strokes(labels.array, spacing, seed=0)
    net = make_net(4, spacing, width=8) if args.quick else make_net(4, spacing)
    plain_net = copy.deepcopy(net)
    crop = (4, 16, 16) if args.quick else crop_for(labels.array.shape, spacing)
    geo = crop_geometry(net, crop, labels.array.shape)
    bf16 = use_bf16(torch.device("cpu"), "auto")

    hist = finetune(net, image.array, scribbles, steps=args.steps, batch_size=args.batch,
                    crop_shape=crop, keep_best=False, device="cpu")
    warm = 3
    t = hist.times
    ours = args.batch * (len(t) - warm) / (t[-1] - t[warm - 1])

    # the bound the machine allows: plain seconds per crop over the seconds per crop that our
    # step spends inside convolution kernels alone (forward + backward; all else counted free)
    bound_steps = 2 if args.quick else 10
    conv_s = conv_kernel_seconds(lambda: finetune(
        copy.deepcopy(plain_net), image.array, scribbles, steps=bound_steps,
        batch_size=args.batch, crop_shape=crop, keep_best=False, device="cpu"))
    conv_s_per_crop = conv_s / (bound_steps * args.batch)

    sampler = ScribbleSampler(normalize(image.array)[None], scribbles, geo, seed=0)
    plain = 1.0 / plain_loop(plain_net, sampler, args.plain_steps)

    fwd = count_conv_flops(net, (1, 1, *geo.in_shape))
    train_flops = 3.0 * fwd
    peak_batch = 1 if args.quick else 2
    peak = measure_conv_peak_gflops(torch.bfloat16 if bf16 else torch.float32,
                                    seconds=args.peak_seconds, batch=peak_batch)
    # the plain loop runs fp32: its efficiency is measured against the fp32 peak; the speedup
    # target assumes it sits near 0.13 (issue 5/7); speedup <= peak / (plain_fraction * fp32 peak)
    peak32 = peak if not bf16 else measure_conv_peak_gflops(torch.float32,
                                                             seconds=args.peak_seconds,
                                                             batch=peak_batch)
    emit({
        "bench": "finetune",
        "net": net.get_config(),
        "crop_in": list(geo.in_shape),
        "crop_out": list(geo.out_shape),
        "batch": args.batch,
        "bf16": bf16,
        "threads": torch.get_num_threads(),
        "crops_per_s": ours,
        "plain_crops_per_s": plain,
        "speedup": ours / plain,
        "train_gflop_per_crop": train_flops / 1e9,
        "achieved_gflops": ours * train_flops / 1e9,
        "conv_peak_gflops": peak,
        "fraction_of_peak": ours * train_flops / 1e9 / peak,
        "speedup_bound": 1.0 / plain / conv_s_per_crop,
        "conv_peak_gflops_fp32": peak32,
        "plain_fraction_of_peak": plain * train_flops / 1e9 / peak32,
        "quick": bool(args.quick),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
