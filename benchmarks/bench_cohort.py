"""Cohorts and block mode on a dask LocalCluster vs one process, same cores in total.

Cohort: 8 volumes (NIfTI, ``--shape``, default 64 x 128 x 128) segmented by a small valid
U-Net (depth 2, width 8), fp32, after one untimed warm-up volume per process:

* ``plain_seconds``: :func:`segment_cohort` in this process, a loop, torch on all cores;
* ``dask_seconds``: the same call on a running ``LocalCluster`` of ``--workers`` processes x
  (cores / workers) threads (cluster start-up reported apart: ``dask_startup_seconds``);
* ``efficiency`` = plain / dask (target >= 0.9); ``cpu_efficiency``: the same with CPU seconds
  (this process, plus the workers' processes for dask), a proxy that a loaded machine does not
  distort; ``labels_identical``, ``max_abs_diff``
  (probabilities, dask vs plain), ``peak_rss_mb_per_worker`` (max VmHWM of the workers).

Block mode: a float32 Zarr volume of ``--block-volume``^3 voxels (default 160; ``--block-volume
800`` is the 2 GB case) through :func:`segment_blocks` on a fresh cluster, blocks of
``--block`` voxels, with bench_memory's small valid U-Net (depth 1, width 4, 2 classes): ``block_seconds``, ``block_max_abs_diff`` against the single-process engine
streaming the same volume (compared slab by slab, target <= 1e-6), ``block_labels_identical``,
``block_peak_rss_mb_per_worker`` (target <= 1500 on the 2 GB volume).

    python benchmarks/bench_cohort.py [--quick] [--workers 2] [--block-volume 800] [--workdir DIR]

Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import describe_device, emit, peak_rss_mb

from napari_cnnseg.core.cohort import CohortEngine, CohortOptions, segment_cohort
from napari_cnnseg.core.io import Volume, read_volume, write_volume
from napari_cnnseg.core.models import build_model

OPTS = CohortOptions(probabilities=True, device="cpu", precision="fp32")


def _worker_hwm_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        return next(int(ln.split()[1]) / 1024.0 for ln in fh if ln.startswith("VmHWM:"))


def make_cohort(folder: Path, shape: tuple[int, int, int], n: int = 8) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        img = rng.normal(size=shape).astype(np.float32)
        img[shape[0] // 4: shape[0] // 2, 20:60, 30:90] += 2.0 + 0.1 * i
        paths.append(write_volume(folder / f"case{i:02d}.nii.gz", Volume(img, spacing=(1.5, 1.0, 1.0))))
    return paths


def write_big(path: Path, size: int, slab: int = 32) -> Path:
    """A float32 OME-Zarr of ``size``^3 voxels written slab by slab (never whole in memory)."""
    from napari_cnnseg.core.io import ZarrVolumeWriter

    like = Volume(np.broadcast_to(np.float32(0), (size,) * 3))  # geometry only, no memory
    rng = np.random.default_rng(1)
    grid = np.linspace(0, 6 * np.pi, size, dtype=np.float32)
    yx = np.sin(grid)[:, None] * np.cos(grid)[None, :]
    with ZarrVolumeWriter(path, like=like, shape=(size,) * 3, dtype="f4", chunks=(64, 64, 64)) as w:
        for z0 in range(0, size, slab):
            k = min(slab, size - z0)
            block = np.sin(grid[z0:z0 + k])[:, None, None] + yx[None]
            w.array[z0:z0 + k] = block + rng.normal(scale=0.3, size=block.shape).astype(np.float32)
        return w.commit()


def compare(a_path: Path, b_path: Path, slab: int = 32) -> float:
    """Max |a - b| of two (K, Z, Y, X) probability stores, slab by slab."""
    a = read_volume(a_path, all_channels=True, lazy=True).array
    b = read_volume(b_path, all_channels=True, lazy=True).array
    worst = 0.0
    for z0 in range(0, a.shape[1], slab):
        worst = max(worst, float(np.abs(np.asarray(a[:, z0:z0 + slab]) - np.asarray(b[:, z0:z0 + slab])).max()))
    return worst


def labels_equal(a_path: Path, b_path: Path, slab: int = 32) -> bool:
    a = read_volume(a_path, lazy=True).array
    b = read_volume(b_path, lazy=True).array
    return all(np.array_equal(np.asarray(a[z:z + slab]), np.asarray(b[z:z + slab]))
               for z in range(0, a.shape[0], slab))


def cohort_part(work: Path, net, shape, workers: int) -> dict:
    from napari_cnnseg.core.distributed import open_client

    paths = make_cohort(work / "scans", shape)
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    # warm-up (imports, oneDNN primitives) on both sides, untimed: a cluster that runs a
    # cohort overnight is warm after its first volumes, and so is the plain loop
    segment_cohort(paths[:1], net, work / "warm_plain", OPTS)
    t0, c0 = time.perf_counter(), time.process_time()
    plain = segment_cohort(paths, net, work / "plain", OPTS)
    plain_s, plain_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    with open_client(workers=workers) as client:
        startup = time.perf_counter() - t0
        segment_cohort(paths[:workers], net, work / "warm_dask", OPTS,
                       engine=CohortEngine(client=client))
        w0, c0, t0 = client.run(time.process_time), time.process_time(), time.perf_counter()
        dask = segment_cohort(paths, net, work / "dask", OPTS, engine=CohortEngine(client=client))
        dask_s = time.perf_counter() - t0
        w1 = client.run(time.process_time)
        dask_cpu = time.process_time() - c0 + sum(w1[k] - w0[k] for k in w1 if k in w0)
        rss = max(client.run(_worker_hwm_mb).values())
    assert all(r["status"] == "done" for r in plain.records + dask.records)
    diff, same = 0.0, True
    for p in paths:
        stem = p.name[:-7]
        a = read_volume(work / "plain" / f"{stem}_probabilities.nii.gz", all_channels=True).array
        b = read_volume(work / "dask" / f"{stem}_probabilities.nii.gz", all_channels=True).array
        diff = max(diff, float(np.abs(a - b).max()))
        same &= bool(np.array_equal(read_volume(work / "plain" / f"{stem}_labels.nii.gz").array,
                                    read_volume(work / "dask" / f"{stem}_labels.nii.gz").array))
    return {"volumes": len(paths), "shape": list(shape), "workers": workers,
            "threads_per_worker": max(1, cores // workers), "plain_seconds": plain_s,
            "dask_seconds": dask_s, "dask_startup_seconds": startup,
            "efficiency": plain_s / dask_s, "plain_cpu_seconds": plain_cpu,
            "dask_cpu_seconds": dask_cpu, "cpu_efficiency": plain_cpu / dask_cpu,
            "labels_identical": same, "max_abs_diff": diff,
            "peak_rss_mb_per_worker": rss}


def block_part(work: Path, size: int, block: int, workers: int) -> dict:
    from napari_cnnseg.core.blocks import segment_blocks
    from napari_cnnseg.core.cohort import segment_one
    from napari_cnnseg.core.distributed import model_on_workers, open_client

    torch.manual_seed(0)  # the small net of bench_memory: the volume, not the net, is measured
    net = build_model("unet", depth=1, base_width=4, padding="valid", num_classes=2).eval()
    src = write_big(work / "big.ome.zarr", size)
    opts = CohortOptions(probabilities=True, device="cpu", precision="fp32", format="ome.zarr")
    t0 = time.perf_counter()
    segment_one(src, net, work / "engine", opts)  # single process, streamed tile by tile
    engine_s = time.perf_counter() - t0
    with open_client(workers=workers) as client, model_on_workers(client, net) as key:
        t0 = time.perf_counter()
        rec = segment_blocks(src, net, work / "blocks", opts, block_shape=(block,) * 3,
                             client=client, model_key=key)
        block_s = time.perf_counter() - t0
        rss = max(client.run(_worker_hwm_mb).values())
    diff = compare(work / "engine" / "big_probabilities.ome.zarr",
                      work / "blocks" / "big_probabilities.ome.zarr")
    return {"block_volume": [size] * 3, "block_volume_gb": size**3 * 4 / 1e9, "block": [block] * 3,
            "block_seconds": block_s, "block_engine_seconds": engine_s,
            "block_voxels_per_s": rec["voxels_per_s"], "block_max_abs_diff": diff,
            "block_labels_identical": labels_equal(work / "engine" / "big_labels.ome.zarr",
                                                   work / "blocks" / "big_labels.ome.zarr"),
            "block_peak_rss_mb_per_worker": rss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller volumes (a smoke run)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shape", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"))
    ap.add_argument("--block-volume", type=int, default=None,
                    help="edge of the block-mode volume (800: 2 GB float32)")
    ap.add_argument("--no-cohort", action="store_true", help="block mode only")
    ap.add_argument("--block", type=int, default=128, help="block edge (voxels)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    shape = tuple(args.shape or ((32, 96, 96) if args.quick else (64, 128, 128)))
    size = args.block_volume or (96 if args.quick else 160)
    torch.manual_seed(0)
    net = build_model("unet", depth=2, base_width=8, padding="valid", num_classes=3).eval()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_cohort_"))
    try:
        result = {"benchmark": "cohort", "device": describe_device("cpu"), "cores": os.cpu_count()}
        if not args.no_cohort:
            result.update(cohort_part(work, net, shape, args.workers))
        result.update(block_part(work, size, min(args.block, size), args.workers))
        result["driver_peak_rss_mb"] = peak_rss_mb()
        result["targets"] = {"efficiency": ">= 0.9", "block_max_abs_diff": "<= 1e-6",
                             "block_peak_rss_mb_per_worker": "<= 1500 on 800^3 (2 GB)"}
        emit(result)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
