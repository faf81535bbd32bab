"""Recipe study: bench_scribbles with an EMA of the weights used as the final model.

Run from the repo root (docs/training.md)::

    .venv/bin/python benchmarks/experiments/weight_averaging.py DECAY KEEP_BEST(0|1) <bench_scribbles args>
"""
import sys, torch
sys.path.insert(0, "benchmarks")
import napari_cnnseg.core.training as T
decay = float(sys.argv.pop(1)); keep = sys.argv.pop(1) == "1"
orig_adamw, orig_ft = T._adamw, T.finetune
state = {}
def adamw(params, **kw):
    opt = orig_adamw(params, **kw)
    ema = [p.detach().clone() for p in params]; state["ema"] = (params, ema); n = [0]
    step = opt.step
    def new_step(*a, **k):
        r = step(*a, **k); n[0] += 1
        d = min(decay, (1 + n[0]) / (10 + n[0]))
        with torch.no_grad():
            for e, p in zip(ema, params): e.mul_(d).add_(p.detach(), alpha=1 - d)
        return r
    opt.step = new_step
    return opt
def finetune(model, *a, **k):
    k["keep_best"] = keep
    h = orig_ft(model, *a, **k)
    params, ema = state["ema"]
    with torch.no_grad():
        for p, e in zip(params, ema): p.copy_(e)
    return h
T._adamw = adamw
import bench_scribbles
bench_scribbles.finetune = finetune
sys.exit(bench_scribbles.main())
