"""Larger than memory: a ~1 GB zarr volume segmented zarr -> zarr with bounded peak RSS.

Writes a float32 volume of ``--size``^3 voxels (default 640^3 = 1.05 GB) into a zarr array slab
by slab (never whole in memory), then streams ``predict`` tile by tile from it into a float16
zarr output, with a small valid U-Net (depth 1, base width 4; 80^3 tiles -> 64^3 outputs
aligned with the 64^3 output chunks). Prints ONE JSON line with
``peak_rss_mb`` (VmHWM of this process, target <= 1500), the sizes and the speed::

    python benchmarks/bench_memory.py [--quick] [--size N] [--workdir DIR] [--keep] [--cli]

``--cli`` runs the same volume through ``cnnseg segment input.zarr -m MODEL -o OUT --format zarr``
in a child process instead (probabilities streamed through a scratch Zarr store, labels into a
Zarr store) and reports the child's peak RSS, ``VmHWM`` polled from ``/proc/<pid>/status``
(not ``RUSAGE_CHILDREN``: on Linux a child's ``ru_maxrss`` counts the parent's pages at fork).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import describe_device, emit, peak_rss_mb

from napari_cnnseg.core.inference import predict
from napari_cnnseg.core.models import build_model, save_model


def write_input(path: Path, size: int, slab: int = 64):
    """A smooth random float32 volume of ``size``^3 written slab by slab into zarr."""
    import zarr

    arr = zarr.open_array(str(path), mode="w", shape=(size,) * 3, chunks=(64, 64, 64), dtype="f4")
    rng = np.random.default_rng(0)
    grid = np.linspace(0, 6 * np.pi, size, dtype=np.float32)
    yx = np.sin(grid)[:, None] * np.cos(grid)[None, :]
    for z0 in range(0, size, slab):
        n = min(slab, size - z0)
        block = (np.sin(grid[z0:z0 + n])[:, None, None] + yx[None]).astype(np.float32)
        block += rng.normal(scale=0.3, size=block.shape).astype(np.float32)
        arr[z0:z0 + n] = block
    return arr


def _vm_hwm_mb(pid: int) -> float | None:
    """``VmHWM`` of a live process in MB, None once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def run_cli(work: Path, net, tile: tuple[int, ...]) -> dict:
    """``cnnseg segment`` on ``work/input.zarr`` in a child; its peak RSS and wall time."""
    model = save_model(work / "model", net, class_names=["background", "foreground"])
    out = work / "out"
    cmd = [sys.executable, "-m", "napari_cnnseg.cli", "segment", str(work / "input.zarr"),
           "-m", str(model), "-o", str(out), "--format", "zarr", "--device", "cpu",
           "--tile", *map(str, tile), "-q"]
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hwm = 0.0
    while child.poll() is None:  # VmHWM only grows: the last reading before exit is the peak
        hwm = max(hwm, _vm_hwm_mb(child.pid) or 0.0)
        time.sleep(0.1)
    seconds = time.perf_counter() - t0
    stdout, stderr = child.communicate()
    if child.returncode != 0:
        raise SystemExit(f"cnnseg segment failed ({child.returncode}):\n{stderr[-2000:]}")
    import zarr

    labels = zarr.open_group(str(out / "input_labels.zarr"), mode="r")["0"]
    return {
        "peak_rss_mb": hwm,
        "seconds": seconds,
        "written": [Path(line).name for line in stdout.split()],
        "labels_dtype": str(labels.dtype),
        "scratch_store_removed": sorted(p.name for p in out.iterdir()) == ["input_labels.zarr"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small volume (smoke test only)")
    parser.add_argument("--size", type=int, default=None, help="volume edge (default 640)")
    parser.add_argument("--workdir", default=None, help="where the zarr arrays go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the zarr arrays")
    parser.add_argument("--cli", action="store_true",
                        help="run `cnnseg segment ... --format zarr` in a child process instead")
    args = parser.parse_args()
    import zarr

    size = args.size or (96 if args.quick else 640)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="cnnseg_bench_memory_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        src = write_input(work / "input.zarr", size)
        t_write = time.perf_counter() - t0
        rss_after_write = peak_rss_mb()
        torch.manual_seed(0)
        net = build_model("unet", depth=1, base_width=4, padding="valid").eval()
        tile = tuple(2 * m + 64 for m in net.margin)
        if args.cli:
            res = run_cli(work, net, tile)
            emit({
                "benchmark": "bench_memory", "mode": "cli",
                "volume": [size] * 3,
                "input_gb": size**3 * 4 / 1e9,
                "scratch_probabilities_gb": size**3 * 4 * net.num_classes / 1e9,
                "model": {"arch": "unet", **net.get_config()}, "tile_in": list(tile),
                **res,
                "peak_rss_parent_mb": peak_rss_mb(),
                "voxels_per_s": size**3 / res["seconds"],
                "write_input_seconds": t_write,
                "device": describe_device("cpu"),
                "quick": bool(args.quick),
            })
            return
        out = zarr.open_array(str(work / "probabilities.zarr"), mode="w",
                              shape=(net.num_classes, *src.shape), chunks=(1, 64, 64, 64),
                              dtype="f2")
        t0 = time.perf_counter()
        predict(src, net, tile_shape=tile, device="cpu", precision="auto", out=out)
        t_pred = time.perf_counter() - t0
        check = np.asarray(out[:, size // 2, :8, :8], dtype=np.float32)
        emit({
            "benchmark": "bench_memory",
            "volume": [size] * 3,
            "input_gb": size**3 * 4 / 1e9,
            "output_gb": size**3 * 2 * net.num_classes / 1e9,
            "model": {"arch": "unet", **net.get_config()}, "tile_in": list(tile),
            "peak_rss_mb": peak_rss_mb(),
            "peak_rss_after_writing_input_mb": rss_after_write,
            "probabilities_sum_to_one": bool(np.allclose(check.sum(0), 1.0, atol=2e-3)),
            "voxels_per_s": size**3 / t_pred,
            "seconds": {"write_input": t_write, "predict": t_pred},
            "device": describe_device("cpu"),
            "quick": bool(args.quick),
        })
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
