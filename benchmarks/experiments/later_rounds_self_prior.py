"""Recipe study: a fresh net trains round 1 with the fresh recipe, later rounds with the
trained recipe (lr 5e-4 + self prior), instead of the fresh recipe in every round.

Run from the repo root (docs/training.md)::

    .venv/bin/python benchmarks/experiments/later_rounds_self_prior.py <bench_scribbles args>
"""
import sys

sys.path.insert(0, "benchmarks")
import bench_scribbles  # noqa: E402

from napari_cnnseg.core.training import TRAINED_NET_SETTINGS  # noqa: E402

real = bench_scribbles.finetune
calls = [0]


def finetune(model, image, scribbles, **kw):
    calls[0] += 1
    if calls[0] > 1:  # every round after the first one
        kw.update(TRAINED_NET_SETTINGS)
    return real(model, image, scribbles, **kw)


bench_scribbles.finetune = finetune
sys.exit(bench_scribbles.main())
