"""Sparse-scribble fine-tuning: masked loss, sampling, every family, cancel, determinism."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from napari_cnnseg.core.errors import Cancelled, InputError
from napari_cnnseg.core.losses import scribble_loss
from napari_cnnseg.core.metrics import mean_foreground_dice
from napari_cnnseg.core.models import build_model
from napari_cnnseg.core.sampling import CropGeometry, ScribbleSampler
from napari_cnnseg.core.training import Evaluated, StepDone, crop_geometry, finetune

# tiny configurations of every family (fast on 2 CPU cores)
FAMILIES = {
    "unet": dict(depth=1, base_width=4, anisotropic_levels=1),
    "unet_same": dict(depth=1, base_width=4, padding="same"),
    "encoder_decoder": dict(depth=1, base_width=4),
    "multiscale": dict(widths=(4, 4), factors=(3,), head_widths=(8,)),
    "patch_classifier": dict(patch_size=9, widths=(4, 4), pool_after=(), fc_widths=(8,)),
}


def _net(family: str, k: int = 2) -> torch.nn.Module:
    name = "unet" if family == "unet_same" else family
    return build_model(name, in_channels=1, num_classes=k, **FAMILIES[family])


def _toy(shape=(12, 28, 28), seed=0):
    """Bright ball on a dark noisy background; scribbles on two slices."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.arange(s) - s / 2 for s in shape], indexing="ij")
    gt = ((zz / 5) ** 2 + (yy / 8) ** 2 + (xx / 8) ** 2 < 1).astype(np.uint8)
    image = (gt + 0.3 * rng.standard_normal(shape)).astype(np.float32)
    scr = np.zeros(shape, np.int64)
    for z in (shape[0] // 2 - 2, shape[0] // 2 + 1):
        sl = gt[z]
        inside = np.argwhere(sl == 1)[::7]
        outside = np.argwhere(sl == 0)[::23]
        scr[z][inside[:, 0], inside[:, 1]] = 2
        scr[z][outside[:, 0], outside[:, 1]] = 1
    return image, gt, scr


# --------------------------------------------------------------------------- loss
def test_loss_without_prior_ignores_unpainted_voxels():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, 6)
    target = torch.zeros(2, 4, 5, 6, dtype=torch.int64)
    target[0, 1, 2, 3] = 1
    target[1, 2, 1:4, 2] = 3
    base = scribble_loss(logits, target, prior_weight=0.0, dice_weight=0.5)
    perturbed = logits + 10 * torch.randn_like(logits) * (target == 0).unsqueeze(1)
    again = scribble_loss(perturbed, target, prior_weight=0.0, dice_weight=0.5)
    assert torch.equal(base, again)
    # ... while the prior makes them count
    with_prior = scribble_loss(perturbed, target, prior_weight=0.3)
    assert not torch.isclose(with_prior, scribble_loss(logits, target, prior_weight=0.3))


def test_loss_gradient_is_zero_at_unpainted_voxels_without_prior():
    logits = torch.randn(1, 2, 3, 4, 5, requires_grad=True)
    target = torch.zeros(1, 3, 4, 5, dtype=torch.int64)
    target[0, 1, 1, 1] = 2
    scribble_loss(logits, target, prior_weight=0.0).backward()
    grad = logits.grad.abs().sum(1)[0]
    assert grad[1, 1, 1] > 0
    grad[1, 1, 1] = 0
    assert float(grad.sum()) == 0.0


def test_prior_pushes_unpainted_only_to_background_and_is_balanced():
    logits = torch.zeros(1, 3, 2, 2, 2, requires_grad=True)
    target = torch.zeros(1, 2, 2, 2, dtype=torch.int64)
    target[0, 0, 0, 0] = 3
    scribble_loss(logits, target, prior_weight=1.0).backward()
    g = logits.grad[0]
    unpainted = (target[0] == 0)
    # gradient descent raises class 0 and lowers classes 1, 2 at unpainted voxels
    assert (g[0][unpainted] < 0).all() and (g[1][unpainted] > 0).all()
    # class balance: a class with more painted voxels does not weigh more
    t2 = torch.zeros(1, 2, 2, 2, dtype=torch.int64)
    t2[0, 0] = 1
    t2[0, 1, 0, 0] = 2
    lg = torch.randn(1, 2, 2, 2, 2)
    per = [-torch.log_softmax(lg, 1)[0, k][t2[0] == k + 1].mean() for k in (0, 1)]
    assert torch.isclose(scribble_loss(lg, t2, prior_weight=0.0), torch.stack(per).mean())


def test_self_prior_with_a_one_hot_background_target_equals_the_background_prior():
    logits = torch.randn(2, 3, 3, 4, 5)
    target = torch.zeros(2, 3, 4, 5, dtype=torch.int64)
    target[0, 1, 1, 1] = 2
    onehot = torch.zeros_like(logits)
    onehot[:, 0] = 1
    a = scribble_loss(logits, target, prior_weight=0.5)
    b = scribble_loss(logits, target, prior_weight=0.5, prior_target=onehot)
    assert torch.allclose(a, b)


def test_self_prior_keeps_unpainted_predictions_closer_to_the_start():
    image, _, scr = _toy()
    preds = {}
    for prior in ("background", "self"):
        torch.manual_seed(5)
        net = _net("unet")
        x = torch.from_numpy(image[None, None, :8, :20, :20].copy())
        net.eval()
        with torch.no_grad():
            start = torch.softmax(net(x), 1)
        finetune(net, image, scr, steps=8, lr=3e-3, batch_size=2, crop_shape=(4, 8, 8),
                 prior=prior, prior_weight=1.0, keep_best=False, precision="fp32")
        with torch.no_grad():
            preds[prior] = float((torch.softmax(net(x), 1) - start).abs().mean())
    assert preds["self"] < preds["background"]
    with pytest.raises(InputError, match="prior"):
        finetune(net, image, scr, steps=1, prior="teacher")


# --------------------------------------------------------------------------- sampling
def test_sampler_output_crops_contain_scribbles_and_balance_classes():
    image, _, scr = _toy()
    geo = CropGeometry((8, 20, 20), (4, 12, 12), (2, 4, 4))
    s = ScribbleSampler(image[None], scr, geo, seed=1)
    batch = s.sample(8)
    assert batch.image.shape == (8, 1, 8, 20, 20) and batch.target.shape == (8, 4, 12, 12)
    assert all((t > 0).any() for t in batch.target)
    counts = [sum(int((t == c).any()) for t in batch.target) for c in (1, 2)]
    assert min(counts) >= 4


def test_sampler_aligns_input_and_target_without_augmentation():
    # the target crop must sit at the centre of the input crop (offset = margin)
    shape = (6, 10, 10)
    image = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    scr = np.zeros(shape, np.int64)
    scr[3, 5, 5] = 1
    geo = CropGeometry((5, 7, 7), (3, 3, 3), (1, 2, 2))
    s = ScribbleSampler(image[None], scr, geo, augment=False)
    b = s.sample(3)
    for x, t in zip(b.image, b.target, strict=True):
        z, y, xx = np.argwhere(t == 1)[0]
        assert x[0, z + 1, y + 2, xx + 2] == image[3, 5, 5]


def test_sampler_pads_volumes_smaller_than_the_crop():
    image = np.random.default_rng(0).random((3, 5, 5)).astype(np.float32)
    scr = np.zeros((3, 5, 5), np.int64)
    scr[1, 2, 2] = 2
    s = ScribbleSampler(image[None], scr, CropGeometry((8, 10, 10), (4, 8, 8), (2, 1, 1)))
    assert s.sample(2).image.shape == (2, 1, 8, 10, 10)


def test_no_scribbles_or_bad_values_raise_clear_errors():
    image, _, scr = _toy()
    net = _net("unet")
    with pytest.raises(InputError, match="paint"):
        finetune(net, image, np.zeros_like(scr), steps=1)
    with pytest.raises(InputError, match="0..2"):
        finetune(net, image, scr * 2, steps=1)
    with pytest.raises(InputError, match="grid"):
        finetune(net, image, scr[:-1], steps=1)
    with pytest.raises(InputError, match="channel"):
        finetune(net, np.stack([image, image]), scr, steps=1)


# --------------------------------------------------------------------------- training
@pytest.mark.slow
def test_loss_decreases_on_a_toy_volume():
    image, _, scr = _toy()
    net = _net("unet")
    h = finetune(net, image, scr, steps=40, lr=5e-3, batch_size=2, crop_shape=(4, 12, 12),
                 keep_best=False)
    assert h.steps == 40 and len(h.losses) == len(h.times) == 40
    assert np.mean(h.losses[-8:]) < 0.7 * np.mean(h.losses[:8])


@pytest.mark.slow
def test_finetune_raises_dice_on_the_phantom():
    from napari_cnnseg.core.inference import predict
    from napari_cnnseg.core.sample_data import make_phantom

    img, lab = make_phantom(shape=(16, 40, 40), spacing=(2.0, 1.0, 1.0))
    gt = (lab.array == 1).astype(np.int64)  # organ vs rest keeps the test small
    rng = np.random.default_rng(0)
    scr = np.zeros(gt.shape, np.int64)
    for z in (4, 8, 12):
        pick = rng.random(gt[z].shape) < 0.04
        scr[z][pick] = gt[z][pick] + 1
    net = build_model("unet", num_classes=2, depth=1, base_width=8, anisotropic_levels=1)

    def dice() -> float:
        pred = predict(img.array, net, device="cpu", precision="fp32").argmax(0)
        return mean_foreground_dice(pred, gt, 2)

    before = dice()
    finetune(net, img.array, scr, steps=60, lr=3e-3, crop_shape=(8, 24, 24))
    after = dice()
    assert after > before + 0.1 and after > 0.6, (before, after)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_trains_a_few_steps(family):
    image, _, scr = _toy()
    net = _net(family)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    h = finetune(net, image, scr, steps=3, batch_size=2, crop_shape=(4, 8, 8),
                 keep_best=False)
    assert h.steps == 3 and all(np.isfinite(h.losses))
    changed = any(not torch.equal(before[k], v) for k, v in net.state_dict().items()
                  if v.dtype.is_floating_point)
    assert changed
    assert not net.training
    assert net.meta["normalization"]["mode"] == "percentile"


def test_crop_geometry_follows_the_network_protocol():
    net = _net("unet")
    geo = crop_geometry(net, (4, 8, 8), (12, 28, 28))
    assert geo.out_shape == net.output_shape(geo.in_shape)
    assert all(o >= w for o, w in zip(geo.out_shape, (4, 8, 8), strict=True))
    pc = _net("patch_classifier")
    assert crop_geometry(pc, None, (12, 28, 28)).out_shape == (1, 1, 1)


def test_deterministic_with_a_seed():
    image, _, scr = _toy()
    runs = []
    for _ in range(2):
        torch.manual_seed(123)  # same initial weights
        net = _net("unet")
        h = finetune(net, image, scr, steps=5, batch_size=2, crop_shape=(4, 8, 8), seed=3,
                     precision="fp32")
        runs.append((h.losses, [p.detach().clone() for p in net.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1], strict=True))


def test_cancel_is_prompt_and_keeps_a_usable_model():
    image, _, scr = _toy()
    net = _net("unet")
    stop = threading.Event()
    seen = []

    def progress(done, total):
        seen.append(done)
        if done == 2:
            stop.set()
            seen.append(time.perf_counter())

    t0 = time.perf_counter()
    with pytest.raises(Cancelled):
        finetune(net, image, scr, steps=10_000, batch_size=2, crop_shape=(4, 8, 8),
                 progress=progress, cancel=stop.is_set)
    assert seen[:2] == [1, 2]
    assert time.perf_counter() - t0 < 30  # sanity bound only; promptness is: stopped at step 2
    assert not net.training


def test_seconds_budget_and_live_updates():
    image, _, scr = _toy()
    net = _net("unet")
    events = []
    h = finetune(net, image, scr, seconds=1.0, steps=10_000, batch_size=2, crop_shape=(4, 8, 8),
                 eval_every=2, on_event=events.append)
    assert h.steps >= 1 and h.steps < 10_000
    done = [e for e in events if isinstance(e, StepDone)]
    evals = [e.step for e in events if isinstance(e, Evaluated)]
    assert [e.step for e in done] == list(range(1, h.steps + 1))
    assert [e.loss for e in done] == h.losses
    # keep-best: the start, every 2 steps, and the last step
    assert evals == sorted({0, *range(2, h.steps + 1, 2), h.steps})


def test_a_budget_spent_on_set_up_still_trains_one_step():
    image, _, scr = _toy()
    net = _net("unet")
    h = finetune(net, image, scr, seconds=1e-9, batch_size=2, crop_shape=(4, 8, 8))
    assert h.steps == 1 and len(h.losses) == 1


def test_keep_best_never_ends_worse_than_the_start_on_its_eval_crops():
    image, _, scr = _toy()
    net = _net("unet")
    h = finetune(net, image, scr, steps=6, lr=0.5, batch_size=2, crop_shape=(4, 8, 8),
                 eval_every=2)  # absurd lr: training diverges, keep_best holds on
    best = dict(h.eval_losses)[h.best_step]
    assert best == min(loss for _, loss in h.eval_losses)
    assert best <= h.eval_losses[0][1]


def _poison_first_gradient(net):
    """Make the first backward pass give a NaN gradient for one parameter."""
    calls = {"n": 0}

    def hook(grad):
        calls["n"] += 1
        return grad * float("nan") if calls["n"] == 1 else grad

    next(net.parameters()).register_hook(hook)


def test_a_non_finite_gradient_is_never_applied(caplog):
    image, _, scr = _toy()
    net = _net("unet")
    _poison_first_gradient(net)
    with pytest.raises(InputError, match="NaN/inf"):
        finetune(net, image, scr, steps=2, batch_size=2, crop_shape=(4, 8, 8),
                 keep_best=False, precision="fp32")
    assert all(bool(torch.isfinite(p).all()) for p in net.parameters())
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return
    net = _net("unet")
    _poison_first_gradient(net)
    with caplog.at_level("WARNING"):
        h = finetune(net, image, scr, steps=2, batch_size=2, crop_shape=(4, 8, 8),
                     keep_best=False, precision="bf16")
    assert h.steps == 2 and "continuing in fp32" in caplog.text
    assert all(bool(torch.isfinite(p).all()) for p in net.parameters())
