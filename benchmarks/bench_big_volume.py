"""A big CT in napari: peak memory of the Segment dock plus one Fine-tune round.

Builds a synthetic int16 CT (default 600x512x512 = 157 M voxels, 300 MiB: air, a body
ellipse of soft tissue, lungs, bone and noise, made slab by slab), opens it in a napari viewer,
adds the plugin's docks the way a user does (``viewer.window.add_plugin_dock_widget``), picks a
new untrained net of ``--family`` (default: the family the dock recommends for a new structure,
``feature_net``; 2 classes), clicks **Segment**, paints a few strokes in the scribbles layer
the Fine-tune dock adds, and runs one **Fine-tune** round (with its whole-volume refresh).
Jobs run inline (``CNNSEG_SYNC=1``) so the timings are the work itself. Prints ONE JSON line::

    {"peak_rss_mb", "volume_mb", "baseline_rss_mb", "segment_seconds", "finetune_round_seconds",
     "target_mb", "within_target", "layers": {name: dtype}, "stages": [...], "shape", "mode", ...}

``peak_rss_mb`` is ``VmHWM`` of this process (napari and Qt included; ``baseline_rss_mb`` is
the RSS with the viewer open before the volume exists). The target (issue 16) is
``6 * volume_mb + 1536``. ``stages`` gives, per step (open, segment, finetune), the RSS before,
the peak during the step (``VmHWM`` reset through ``/proc/self/clear_refs`` at its start) and
the RSS after. ``--patch FILE`` imports a Python file and calls its ``apply()`` first: a way to
measure a proposed change (e.g. monkeypatches) with exactly this benchmark.

    xvfb-run -a -s "-screen 0 1280x1024x24" python benchmarks/bench_big_volume.py            # 600x512x512
    xvfb-run -a -s "-screen 0 1280x1024x24" python benchmarks/bench_big_volume.py --quick    # 64x128x128
    python benchmarks/bench_big_volume.py --mode session   # the same work without napari (Session)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import status_mb  # noqa: E402  (VmHWM / VmRSS in MB)


class Stages:
    """Per-step memory: RSS before, peak during (``VmHWM`` reset at the start), RSS after."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self._start: tuple[str, float, float] | None = None
        self.seen = 0.0  # the highest VmHWM read before a reset

    def peak(self) -> float:
        """Peak RSS of the whole run: the highest VmHWM seen, before and after every reset."""
        return max([self.seen, status_mb("VmHWM")] + [r["peak_mb"] for r in self.rows])

    @staticmethod
    def _reset_peak() -> bool:
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
                fh.write("5")
            return True
        except OSError:
            return False

    def begin(self, name: str) -> None:
        self.seen = max(self.seen, status_mb("VmHWM"))
        self._reset_peak()
        self._start = (name, status_mb("VmRSS"), time.perf_counter())

    def end(self) -> None:
        name, before, t0 = self._start  # type: ignore[misc]
        self.rows.append({"stage": name, "rss_before_mb": round(before), "peak_mb": round(status_mb("VmHWM")),
                          "rss_after_mb": round(status_mb("VmRSS")), "seconds": round(time.perf_counter() - t0, 1)})


def synthetic_ct(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """int16 Hounsfield-like volume, made slab by slab (no float copy of the whole volume)."""
    z, y, x = shape
    out = np.empty(shape, np.int16)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:y, 0:x].astype(np.float32)
    cy, cx = y / 2, x / 2
    body = ((yy - cy) / (0.42 * y)) ** 2 + ((xx - cx) / (0.46 * x)) ** 2 <= 1
    lung_l = ((yy - cy * 0.9) / (0.2 * y)) ** 2 + ((xx - cx * 0.62) / (0.12 * x)) ** 2 <= 1
    lung_r = ((yy - cy * 0.9) / (0.2 * y)) ** 2 + ((xx - cx * 1.38) / (0.12 * x)) ** 2 <= 1
    spine = ((yy - cy * 1.55) / (0.05 * y)) ** 2 + ((xx - cx) / (0.05 * x)) ** 2 <= 1
    slab = 16
    for z0 in range(0, z, slab):
        n = min(slab, z - z0)
        s = np.full((n, y, x), -1000.0, np.float32)
        s[:, body] = 40.0
        grow = 0.5 + 0.5 * np.sin(np.linspace(z0, z0 + n, n) / max(z, 1) * np.pi)[:, None, None]
        s[:, lung_l | lung_r] = -850.0
        s[:, spine] = 700.0
        s += rng.normal(scale=20.0, size=s.shape).astype(np.float32) * grow
        out[z0:z0 + n] = np.clip(s, -1024, 3071).astype(np.int16)
    return out


def scribbles_for(ct: np.ndarray) -> np.ndarray:
    """A few strokes on three slices: background (value 1) in air, body (value 2) in tissue."""
    scr = np.zeros(ct.shape, np.uint8)
    z, y, x = ct.shape
    for zz in (z // 4, z // 2, 3 * z // 4):
        scr[zz, y // 2, x // 10: x // 5] = 1
        scr[zz, y // 2, 2 * x // 5: x // 2] = 2
    return scr


def run_dock(ct: np.ndarray, steps: int, classes: list[str], device: str, family: str,
             stages: Stages) -> dict:
    os.environ["CNNSEG_SYNC"] = "1"
    import napari

    from napari_cnnseg._widgets import _worker

    _worker.SYNC = True
    viewer = napari.Viewer(show=False)
    _, seg = viewer.window.add_plugin_dock_widget("napari-cnnseg", "Segment")
    _, fin = viewer.window.add_plugin_dock_widget("napari-cnnseg", "Fine-tune")
    baseline = status_mb("VmRSS")
    stages.begin("open")
    layer = viewer.add_image(ct, name="ct")
    seg.set_image_layer(layer)
    assert seg.choose_new(family, classes), seg.last_error
    seg.session.predict_options["device"] = device
    stages.end()
    stages.begin("segment")
    seg.segment()
    stages.end()
    if getattr(seg, "last_error", None):
        raise RuntimeError(f"Segment failed: {seg.last_error}")
    scr_layer = fin.add_scribbles_layer()
    scr_layer.data[...] = scribbles_for(ct)
    stages.begin("finetune")
    fin.finetune(steps=steps)
    stages.end()
    if getattr(fin, "last_error", None):
        raise RuntimeError(f"Fine-tune failed: {fin.last_error}")
    layers = {lyr.name: str(np.asarray(lyr.data[:1, :1, :1]).dtype) for lyr in viewer.layers}
    viewer.close()
    return {"baseline_rss_mb": baseline, "layers": layers}


def run_session(ct: np.ndarray, steps: int, classes: list[str], device: str, family: str,
                stages: Stages) -> dict:
    from napari_cnnseg._session import Session
    from napari_cnnseg.core.io import Volume

    baseline = status_mb("VmRSS")
    s = Session(autosave_folder=os.environ.get("TMPDIR", "/tmp") + "/bench_big_volume_autosave")
    stages.begin("open")
    s.set_image(Volume(ct), name="ct")
    s.new_model(family, classes)
    s.predict_options["device"] = device
    stages.end()
    stages.begin("segment")
    s.segment()
    stages.end()
    stages.begin("finetune")
    s.finetune(scribbles_for(ct), steps=steps, refresh=True, device=device)
    stages.end()
    res = s.results
    layers = {"labels": str(res.labels.dtype), "probabilities": str(res.probabilities.dtype),
              "uncertainty": str(res.uncertainty.dtype)}
    return {"baseline_rss_mb": baseline, "layers": layers}


def apply_patch(path: str) -> None:
    """Import the Python file ``path`` and call its ``apply()`` (a proposed change to measure)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_patch", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"--patch {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.apply()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", type=int, nargs=3, default=[600, 512, 512], metavar=("Z", "Y", "X"))
    p.add_argument("--quick", action="store_true", help="64x128x128 (a minute on a laptop)")
    p.add_argument("--mode", choices=("dock", "session"), default="dock")
    p.add_argument("--steps", type=int, default=20, help="training steps of the Fine-tune round")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--family", default="feature_net",
                   help="new net's family (default feature_net, the dock's choice for a new task)")
    p.add_argument("--patch", default=None, metavar="FILE",
                   help="import FILE and call its apply() first (measure a proposed change)")
    args = p.parse_args(argv)
    if args.patch:
        apply_patch(args.patch)
    shape = (64, 128, 128) if args.quick else tuple(args.shape)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    ct = synthetic_ct(shape)
    make_seconds = time.perf_counter() - t0
    volume_mb = ct.nbytes / 2**20
    run = run_dock if args.mode == "dock" else run_session
    stages = Stages()
    result = run(ct, args.steps, ["background", "body"], args.device, args.family, stages)
    peak = stages.peak()
    times = {r["stage"]: r["seconds"] for r in stages.rows}
    result.update(segment_seconds=times.get("segment", 0.0),
                  finetune_round_seconds=times.get("finetune", 0.0), stages=stages.rows)
    target = 6 * volume_mb + 1536
    out = {"bench": "big_volume", "mode": args.mode, "shape": list(shape), "dtype": "int16",
           "volume_mb": round(volume_mb, 1), "peak_rss_mb": round(peak, 1),
           "target_mb": round(target, 1), "within_target": bool(peak <= target),
           "peak_over_volume": round(peak / volume_mb, 2),
           "make_volume_seconds": round(make_seconds, 2), "steps": args.steps, "device": args.device,
           "family": args.family, "patch": args.patch, **{
               k: (round(v, 2) if isinstance(v, float) else v) for k, v in result.items()}}
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
