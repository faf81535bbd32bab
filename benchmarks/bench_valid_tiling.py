"""Exact overlap-tile of our valid U-Net: tiled prediction vs one pass over the whole volume.

``build_model("unet")`` (default config: depth 3, base width 16, valid padding, batch norm in
eval mode with non-trivial running statistics), seed 0, on a 160^3 volume: ``predict`` with its
default tiles against one forward pass over the whole mirror-padded volume. Prints ONE JSON line
with ``max_abs_diff`` (target <= 1e-5), ``tiled_voxels_per_s`` and ``one_pass_voxels_per_s``::

    python benchmarks/bench_valid_tiling.py [--quick] [--size N] [--base-width W]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _common import describe_device, emit, peak_rss_mb

from napari_cnnseg.core.inference import default_tile_shape, predict
from napari_cnnseg.core.models import build_model
from napari_cnnseg.core.netprep import inference_copy, network_spec
from napari_cnnseg.core.normalization import normalize
from napari_cnnseg.core.tiling import reflect_indices, valid_layout


def one_pass(image: np.ndarray, net: torch.nn.Module) -> np.ndarray:
    """Softmax of the net over the whole reflect-padded volume in ONE forward (fp32)."""
    m = net.margin
    shape = net.valid_input_shape([s + 2 * mi for s, mi in zip(image.shape, m, strict=True)])
    idx = [reflect_indices(-mi, n - mi, s) for mi, n, s in zip(m, shape, image.shape, strict=True)]
    padded = np.ascontiguousarray(normalize(image)[np.ix_(*idx)])
    fast = inference_copy(net, torch.device("cpu"))
    with torch.inference_mode():
        x = torch.from_numpy(padded)[None, None].contiguous(memory_format=torch.channels_last_3d)
        y = torch.softmax(fast(x), 1)[0]
        return y[:, : image.shape[0], : image.shape[1], : image.shape[2]].contiguous().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test only)")
    parser.add_argument("--size", type=int, default=None, help="volume edge (default 160)")
    parser.add_argument("--base-width", type=int, default=None, help="U-Net base width (default 16)")
    args = parser.parse_args()
    size = args.size or (72 if args.quick else 160)
    config = {"padding": "valid"}
    if args.quick:
        config.update(depth=2, base_width=4)
    if args.base_width:
        config["base_width"] = args.base_width
    torch.manual_seed(0)
    net = build_model("unet", **config)
    gen = torch.Generator().manual_seed(1)
    for mod in net.modules():  # trained-looking batch-norm statistics
        if isinstance(mod, torch.nn.BatchNorm3d):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=gen) * 0.1)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)
    net.eval()
    rng = np.random.default_rng(0)
    image = rng.normal(size=(size,) * 3).astype(np.float32)

    spec = network_spec(net)
    # quick: small tiles so that the smoke test really tiles (27 tiles)
    tile = (tuple(2 * m + 24 for m in spec.margin) if args.quick
            else default_tile_shape(spec, image.shape))
    n_tiles = len(valid_layout([(0, size)] * 3, tile, spec.output_shape(tile), spec.margin,
                               spec.lattice).tiles)
    predict(image, net, tile_shape=tile, device="cpu", precision="fp32")  # warm-up
    t0 = time.perf_counter()
    tiled = predict(image, net, tile_shape=tile, device="cpu", precision="fp32")
    t_tiled = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = one_pass(image, net)
    t_one = time.perf_counter() - t0
    t0 = time.perf_counter()
    bf16 = predict(image, net, tile_shape=tile, device="cpu", precision="bf16")
    t_bf16 = time.perf_counter() - t0
    emit({
        "benchmark": "bench_valid_tiling",
        "volume": [size] * 3, "model": {"arch": "unet", **net.get_config()},
        "margin": list(spec.margin), "lattice": list(spec.lattice),
        "tile_in": list(tile), "tile_out": list(spec.output_shape(tile)), "tiles": n_tiles,
        "max_abs_diff": float(np.abs(tiled - ref).max()),
        "argmax_agreement": float((tiled.argmax(0) == ref.argmax(0)).mean()),
        "tiled_voxels_per_s": size**3 / t_tiled,
        "one_pass_voxels_per_s": size**3 / t_one,
        "tiled_bf16_voxels_per_s": size**3 / t_bf16,
        "argmax_agreement_bf16": float((bf16.argmax(0) == tiled.argmax(0)).mean()),
        "peak_rss_mb": peak_rss_mb(),
        "device": describe_device("cpu"),
        "quick": bool(args.quick),
    })


if __name__ == "__main__":
    main()
