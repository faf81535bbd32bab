"""Live-refresh latency of the fine-tune loop, through the session code path the GUI uses.

Simulates: scribbles changed (autosave) + "Fine-tune" clicked on a 128^3 volume on the CPU;
measures the time to the first refreshed visible slice (the dock repaints it when
``on_region`` fires) and the time of the whole-volume refresh when training ends.

    python benchmarks/bench_refresh.py [--size 128] [--seconds 5] [--refresh-every 5] [--model NAME]
                                       [--device cpu] [--quick]

One JSON line. Keys: ``first_slice_s`` (click -> first refreshed slice; target <= 2),
``whole_volume_s`` (whole-volume refresh after training; target <= 10), ``click_to_whole_s``
(click -> whole volume shown, includes the training budget), ``train_s``, ``steps``,
``slice_refreshes``, ``slice_refresh_s`` (mean time of one slice prediction), ``size``,
``refresh_every``, ``model``, ``device``, ``threads``; ``first_slice_cpu_s`` and
``whole_volume_cpu_s`` are the process CPU seconds (all threads) of the same spans: on a busy
machine they show what the wall times would be on a quiet one (between cpu_s / threads and
cpu_s).
``--quick`` is a smoke test only (numbers meaningless): a 32^3 volume (unless ``--size``) and a
budget of 2 training steps instead of seconds (unless ``--seconds``), so that at least one
slice refresh happens however slow the machine is.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit  # noqa: E402

from napari_cnnseg._session import (  # noqa: E402
    Preview,
    RegionUpdate,
    Session,
    warm_up_training,
)
from napari_cnnseg.core.sample_data import make_phantom  # noqa: E402
from napari_cnnseg.demo import demo_strokes  # noqa: E402

#: the small valid U-Net the refresh figures were measured with (the demo's fallback net until
#: 2026-12-01; a new task now starts with a feature_net, whose refresh is its head alone)
FALLBACK_CONFIG = {
    "depth": 2, "base_width": 8, "padding": "valid", "anisotropic_levels": 1,
    "upsampling": "trilinear",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=None,
                        help="volume edge in voxels (default 128; 32 with --quick)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="training budget in seconds (default 5; --quick: 2 steps instead)")
    parser.add_argument("--refresh-every", type=int, default=5,
                        help="steps between live slice refreshes after the first step "
                             "(the dock's default: 5)")
    parser.add_argument("--model", default=None,
                        help="shipped model name or checkpoint; default a new small U-Net")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="small and short (smoke test only)")
    args = parser.parse_args(argv)
    if args.size is None:
        args.size = 32 if args.quick else 128
    budget = ({"steps": 2} if args.quick and args.seconds is None
              else {"seconds": 5.0 if args.seconds is None else args.seconds})

    n = int(args.size)
    image, truth = make_phantom(shape=(n, n, n), spacing=(1.0, 1.0, 1.0), seed=0)
    names = list(truth.metadata["class_names"])
    with tempfile.TemporaryDirectory() as tmp:
        session = Session(autosave_folder=tmp)
        session.set_image(image, name="phantom")
        if args.model:
            session.load_model(args.model)
            names = session.class_names
        else:
            session.new_model("unet", names, **FALLBACK_CONFIG)
        session.predict_options.update(device=args.device)
        labels = np.asarray(truth.array) % len(names)
        strokes = demo_strokes(labels)
        session.segment()  # the user has segmented once before painting
        z = n // 2
        events: list[float] = []
        cpu_events: list[float] = []
        slice_costs: list[float] = []

        def on_region(update) -> None:  # what the dock does on the GUI thread
            session.apply_region(update)
            events.append(time.perf_counter())
            cpu_events.append(time.process_time())

        def timed_region():
            slice_costs.append(time.perf_counter())
            return session.slice_roi(0, z)

        warm_up_training()  # the Fine-tune dock does this in the background when it opens
        t0 = time.perf_counter()  # scribbles changed + Fine-tune clicked
        c0 = time.process_time()
        session.autosave_scribbles(strokes)
        scribbles = np.array(strokes, copy=True)
        outcome = session.finetune(
            scribbles,
            **budget,
            preview=Preview(timed_region, steps=args.refresh_every),
            on_event=lambda e: on_region(e) if isinstance(e, RegionUpdate) else None,
            refresh=False,
            device=args.device,
        )
        t_train, c_train = time.perf_counter(), time.process_time()
        session.segment()  # the whole-volume refresh the dock runs when training ends
        t_whole, c_whole = time.perf_counter(), time.process_time()
    per_slice = [e - s for s, e in zip(slice_costs, events, strict=False)]
    emit({
        "first_slice_s": round(events[0] - t0, 3) if events else None,
        "whole_volume_s": round(t_whole - t_train, 3),
        "first_slice_cpu_s": round(cpu_events[0] - c0, 3) if cpu_events else None,
        "whole_volume_cpu_s": round(c_whole - c_train, 3),
        "click_to_whole_s": round(t_whole - t0, 3),
        "train_s": round(t_train - t0, 3),
        "steps": outcome.steps,
        "slice_refreshes": len(events),
        "slice_refresh_s": round(float(np.mean(per_slice)), 3) if per_slice else None,
        "size": n,
        "refresh_every": args.refresh_every,
        "model": args.model or "unet " + ",".join(f"{k}={v}" for k, v in FALLBACK_CONFIG.items()),
        "device": args.device,
        "threads": torch.get_num_threads(),
        "quick": bool(args.quick),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
