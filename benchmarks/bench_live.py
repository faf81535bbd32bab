"""Live training latency: from a new stroke to the first refreshed visible slice trained on it.

Drives the Fine-tune dock's own loop, :class:`napari_cnnseg._widgets._live_loop.LiveLoop` (Qt-free),
in a worker thread over the session API (``Session.start_live`` → ``LiveTraining``), exactly as
the dock does with its worker, on the 128^3 synthetic phantom (``make_phantom``, the bundled
sample's generator) on the CPU. The main thread plays the user and the GUI thread: it adds one
stroke at a time to the scribbles (the slice it paints on is the visible one), hands them over
with ``LiveLoop.push`` (what the dock does on the layer's paint event) and waits for the first
slice refresh whose weights were trained on that stroke. Strokes come after short and long
gaps, so some land while a whole-volume refresh (after a 2 s pause in painting) runs.

Baseline in the same run, on the same strokes: the non-live path (paint, then click
Fine-tune): ``Session.finetune`` with the dock's settings (``--round-seconds`` of training,
the visible slice refreshed after the first step), timed from the click to its first
refreshed slice and to the end of the round (whole volume shown).

    OMP_NUM_THREADS=1 python benchmarks/bench_live.py [--size 128] [--strokes 8]
        [--model NAME] [--round-seconds 5] [--rounds 2] [--device cpu] [--quick]

One JSON line. Keys: ``stroke_to_slice_s`` {median, max, n} (target <= 2), ``strokes`` (each
stroke's delay, gap before it and whether a whole-volume refresh ran when it came; a refresh
that a stroke interrupts is dropped), ``last_stroke_to_volume_s`` (the user stops painting:
last stroke -> whole volume shown, the pause included),
``volume_refreshes``, ``live_steps``, ``baseline`` {``click_to_slice_s``, ``click_to_volume_s``
(median, max)}, ``model``, ``size``, ``threads``, ``load_avg`` (1-min load at the start and
the end: the machine is shared), ``driver``. ``--quick`` is a smoke test (32^3, 3 strokes).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit  # noqa: E402

from napari_cnnseg._session import Preview, RegionUpdate, Session  # noqa: E402
from napari_cnnseg._widgets._live_loop import LiveLoop, LiveSettings  # noqa: E402
from napari_cnnseg.core.sample_data import make_phantom  # noqa: E402
from napari_cnnseg.demo import demo_strokes  # noqa: E402

log = logging.getLogger("bench_live")
#: seconds between strokes, in turn: painting on, and a pause (a whole-volume refresh starts)
GAPS = (0.4, 2.6)


def stroke_list(truth: np.ndarray, n: int) -> list[tuple[int, np.ndarray]]:
    """``n`` strokes (slice, (Z, Y, X) mask with the value to paint) from the demo's strokes:
    one class on one slice each, taken in turn over the slices."""
    all_strokes = demo_strokes(truth)
    out = []
    for z in np.nonzero(all_strokes.reshape(all_strokes.shape[0], -1).any(1))[0]:
        for value in np.unique(all_strokes[z])[1:]:
            one = np.zeros_like(all_strokes)
            one[z][all_strokes[z] == value] = value
            out.append((int(z), one))
    order = sorted(range(len(out)), key=lambda i: (i % 2, i))  # alternate slices and classes
    return [out[i] for i in order][:n]


def _wait(predicate, timeout: float) -> bool:
    end = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > end:
            return False
        time.sleep(0.002)
    return True


def run_live(session: Session, first: np.ndarray, strokes: list, timeout: float) -> dict:
    """The live loop in a thread; the strokes added one by one. Returns the figures."""
    events: list = []
    visible = [strokes[0][0]]

    def on_event(event) -> None:  # the dock hands this to the GUI thread, which applies it
        if event.kind in ("slice", "volume") and hasattr(event.update, "roi"):
            session.apply_region(event.update)
        events.append(event)

    loop = LiveLoop(session, first, region=lambda: session.slice_roi(0, visible[0]),
                    on_event=on_event, settings=LiveSettings())
    stop = threading.Event()
    worker = threading.Thread(target=loop.run, args=(stop.is_set,), name="live", daemon=True)
    worker.start()
    if not _wait(lambda: any(e.kind == "slice" for e in events), timeout):
        raise RuntimeError("live training showed no slice")
    scribbles = np.array(first, copy=True)
    rows = []
    for i, (z, stroke) in enumerate(strokes):
        gap = GAPS[i % 2]
        time.sleep(gap)
        visible[0] = z  # the user paints on the slice on screen
        scribbles = np.where(stroke > 0, stroke, scribbles).astype(scribbles.dtype)
        during_volume = loop.refreshing_volume
        t0 = time.perf_counter()
        version = loop.push(scribbles)
        if not _wait(lambda v=version: any(e.kind == "slice" and e.strokes >= v
                                           for e in events), timeout):
            raise RuntimeError(f"no slice trained on stroke {version} within {timeout} s")
        shown = next(e for e in events if e.kind == "slice" and e.strokes >= version)
        rows.append({"delay_s": round(shown.t - t0, 3), "gap_s": gap, "slice": z,
                     "during_volume_refresh": during_volume})
        log.info("stroke %d on slice %d: %.2f s", version, z, shown.t - t0)
    # the user stops painting: the whole volume follows after the pause
    done = len([e for e in events if e.kind == "volume"])
    if not _wait(lambda: sum(e.kind == "volume" for e in events) > done, timeout):
        raise RuntimeError("no whole-volume refresh after the last stroke")
    pause_to_volume = next(e for e in events[::-1] if e.kind == "volume").t - t0
    stop.set()
    worker.join(timeout)
    if worker.is_alive():
        raise RuntimeError("the live loop did not stop")
    delays = [r["delay_s"] for r in rows]
    return {
        "stroke_to_slice_s": {"median": round(float(np.median(delays)), 3),
                              "max": round(float(np.max(delays)), 3), "n": len(delays)},
        "strokes": rows,
        "last_stroke_to_volume_s": round(pause_to_volume, 3),
        "volume_refreshes": sum(e.kind == "volume" for e in events),
        "slice_refreshes": sum(e.kind == "slice" for e in events),
        "live_steps": loop.steps,
    }


def run_baseline(session: Session, first: np.ndarray, strokes: list, rounds: int,
                 seconds: float) -> dict:
    """Paint, click Fine-tune (the dock's settings): click -> first slice, -> whole volume."""
    scribbles = np.array(first, copy=True)
    to_slice, to_volume = [], []
    for z, stroke in strokes[:rounds]:
        scribbles = np.where(stroke > 0, stroke, scribbles).astype(scribbles.dtype)
        seen: list[float] = []
        t0 = time.perf_counter()
        def on_event(event, seen=seen) -> None:  # what the dock does with a preview
            if isinstance(event, RegionUpdate):
                session.apply_region(event)
                seen.append(time.perf_counter())

        session.finetune(np.array(scribbles, copy=True), seconds=seconds, on_event=on_event,
                         preview=Preview(lambda z=z: session.slice_roi(0, z), seconds=1.5))
        to_volume.append(time.perf_counter() - t0)
        to_slice.append(seen[0] - t0 if seen else float("nan"))

    def stats(values: list[float]) -> dict:
        return {"median": round(float(np.median(values)), 3),
                "max": round(float(np.max(values)), 3), "n": len(values)}

    return {"click_to_slice_s": stats(to_slice), "click_to_volume_s": stats(to_volume),
            "round_seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=None, help="volume edge (default 128)")
    parser.add_argument("--strokes", type=int, default=None, help="strokes timed (default 8)")
    parser.add_argument("--model", default=None,
                        help="shipped model or checkpoint; default a new feature_net (what a "
                             "new structure starts with)")
    parser.add_argument("--round-seconds", type=float, default=5.0,
                        help="training time of each baseline Fine-tune round")
    parser.add_argument("--rounds", type=int, default=2, help="baseline rounds timed")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--quick", action="store_true", help="32^3, 3 strokes (smoke test)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    n = args.size or (32 if args.quick else 128)
    count = args.strokes or (3 if args.quick else 8)
    load0 = os.getloadavg()[0]
    image, truth = make_phantom(shape=(n, n, n), spacing=(1.0, 1.0, 1.0), seed=0)
    names = list(truth.metadata["class_names"])
    labels = np.asarray(truth.array)
    strokes = stroke_list(labels, count + 1)
    first = strokes[0][1]  # the strokes on screen when Live is switched on
    with tempfile.TemporaryDirectory() as tmp:
        session = Session(autosave_folder=tmp)
        session.set_image(image, name="phantom")
        if args.model:
            session.load_model(args.model)
        else:
            session.new_model("feature_net", names)
        session.predict_options.update(device=args.device)
        session.segment()  # the user has segmented once before painting
        live = run_live(session, first, strokes[1:], args.timeout)
        session.undo()  # the baseline starts from the same weights
        baseline = run_baseline(session, first, strokes[1:], args.rounds, args.round_seconds)
    emit({**live, "baseline": baseline, "target_s": 2.0,
          "model": args.model or "new feature_net", "size": n, "device": args.device,
          "threads": torch.get_num_threads(),
          "load_avg": [round(load0, 2), round(os.getloadavg()[0], 2)],
          "driver": "LiveLoop of the Fine-tune dock (Qt-free) in a thread over "
                    "Session.start_live; main thread = user + GUI thread",
          "quick": bool(args.quick)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
