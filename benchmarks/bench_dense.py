"""Dense ("a trous") patch classifier vs the naive patch-by-patch sliding window.

Setup (issue 4): patch classifier with patch 25, two max-pools of stride 2, conv widths
(16, 16, 32, 32), FC 128, 2 classes; dense output 64^3 (input 88^3). The naive baseline is
:func:`classify_patches` (crop + classify, batches of 256) on a random sample of >= 2048
voxels of the same volume; both run in this process with the same thread count, fp32,
``torch.inference_mode()``, after one warm-up call each; the dense pass is the best of
``--repeats`` (default 3). The dense net runs in
``channels_last_3d`` (the naive baseline is the plain reference: contiguous layout).

Prints ONE JSON line with keys ``naive_voxels_per_s``, ``dense_voxels_per_s``, ``speedup``,
``max_abs_diff`` (dense vs naive on the sampled voxels) and ``peak_rss_mb`` (VmHWM).

Usage: ``python benchmarks/bench_dense.py [--samples 2048] [--out 64] [--threads N] [--quick]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss_mb  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from napari_cnnseg.core.models import build_model, classify_patches

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=2048, help="voxels classified naively (>= 2048)")
    ap.add_argument("--out", type=int, default=64, help="dense output side (voxels)")
    ap.add_argument("--batch", type=int, default=256, help="naive batch size")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=3, help="timed dense passes (best is kept)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 256 samples, 24^3 output")
    args = ap.parse_args(argv)
    if args.quick:
        args.samples, args.out = 256, 24
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    model = build_model(
        "patch_classifier", patch_size=25, widths=(16, 16, 32, 32), pool_after=(1, 3),
        pool_size=2, fc_widths=(128,), num_classes=2,
    ).eval()
    p = model.patch_size
    side = args.out + p - 1
    volume = torch.randn(1, 1, side, side, side)
    coords = rng.integers(0, args.out, size=(args.samples, 3))

    with torch.inference_mode():
        # naive: the reference sliding window, one warm-up batch then timed
        classify_patches(model, volume[0], coords[: args.batch], args.batch)
        t0 = time.perf_counter()
        naive = classify_patches(model, volume[0], coords, args.batch)
        naive_s = time.perf_counter() - t0

        dense = model.to_dense().eval().to(memory_format=torch.channels_last_3d)
        x = volume.contiguous(memory_format=torch.channels_last_3d)
        dense(x)  # warm-up (oneDNN primitive creation for these shapes)
        dense_s = float("inf")
        for _ in range(args.repeats):  # best of a few passes: one pass is well under a second
            t0 = time.perf_counter()
            out = dense(x)
            dense_s = min(dense_s, time.perf_counter() - t0)

    z, y, xx = (torch.as_tensor(coords[:, i]) for i in range(3))
    picked = out[0][:, z, y, xx].T
    result = {
        "naive_voxels_per_s": round(args.samples / naive_s, 2),
        "dense_voxels_per_s": round(args.out**3 / dense_s, 1),
        "speedup": round((args.out**3 / dense_s) / (args.samples / naive_s), 1),
        "max_abs_diff": float((picked - naive).abs().max()),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
