"""Per-call memory probe for ``bench_big_volume.py --patch benchmarks/memory_probe.py``.

Wraps the functions a Segment click and a Fine-tune round go through (session, pipeline,
features, training, suggestions, layers) and logs, for each call, the RSS at entry, the
highest RSS a 10 ms sampler thread saw during it, and the RSS at exit, indented by nesting::

    [probe]     predict_features: in 2413 peak 3384 (+971) out 2474 MB 238.8s

No ``VmHWM`` resets (the benchmark's own stage figures stay valid); a peak shorter than the
sampling interval can be missed. This is how the table in docs/reliability.md
("600x512x512 measured") was made.
"""

from __future__ import annotations

import functools
import importlib
import logging
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import status_mb  # noqa: E402

log = logging.getLogger("memory_probe")

#: (module, attribute) of every wrapped callable; "Class.method" for methods
TARGETS = [
    ("napari_cnnseg.core.suggest", "suggest"),
    ("napari_cnnseg.core.postprocess", "keep_stroke_components"),
    ("napari_cnnseg.core.pipeline", "segment_volume"),
    ("napari_cnnseg.core.pipeline", "_reduce"),
    ("napari_cnnseg.core.inference", "predict"),
    ("napari_cnnseg.core.models.feature_net", "volume_features"),
    ("napari_cnnseg.core.models.feature_net", "cached_features"),
    ("napari_cnnseg.core.models.feature_net", "predict_features"),
    ("napari_cnnseg.core.models.feature_net", "PooledFeatures.ensure_pool"),
    ("napari_cnnseg.core.pointwise_training", "train_pointwise"),
    ("napari_cnnseg.core.training", "finetune"),
    ("napari_cnnseg.core.training", "start_training"),
    ("napari_cnnseg._session_training", "run_finetune"),
    ("napari_cnnseg._session_training", "warm_up_training"),
    ("napari_cnnseg._session", "Session.segment"),
    ("napari_cnnseg._session", "Session.finetune"),
    ("napari_cnnseg._session", "Session.predict_region"),
    ("napari_cnnseg._widgets._layers", "show_results"),
    ("napari_cnnseg._widgets._layers", "refresh_region"),
]

_seen = [0.0]   # highest RSS sampled since the innermost open call started
_depth = [0]


def rss_mb() -> float:
    """Resident set size of this process in MB (0 where /proc is missing)."""
    return status_mb("VmRSS")


def _sample() -> None:
    while True:
        _seen[0] = max(_seen[0], rss_mb())
        time.sleep(0.01)


def _wrap(module: str, attr: str) -> None:
    owner = importlib.import_module(module)
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    fn = getattr(owner, name)

    @functools.wraps(fn)
    def probed(*args, **kwargs):
        start, outer = rss_mb(), _seen[0]
        _seen[0] = start
        _depth[0] += 1
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _depth[0] -= 1
            end = rss_mb()
            peak = max(_seen[0], end)
            log.info("[probe]%s %s: in %.0f peak %.0f (+%.0f) out %.0f MB %.1fs", "  " * _depth[0],
                     attr, start, peak, peak - start, end, time.perf_counter() - t0)
            _seen[0] = max(outer, peak)

    setattr(owner, name, probed)


def apply() -> None:
    """Start the sampler and wrap :data:`TARGETS` (called by ``bench_big_volume --patch``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    threading.Thread(target=_sample, daemon=True, name="memory-probe").start()
    for module, attr in TARGETS:
        try:
            _wrap(module, attr)
        except (ImportError, AttributeError) as exc:
            log.warning("[probe] cannot wrap %s.%s: %s", module, attr, exc)
