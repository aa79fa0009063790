"""Loss and metrics against hand computation, the lr schedule and warm-up stages against hand values,
activation checkpointing (keys, numbers, recomputation) and the LightningModule's evaluation."""

from __future__ import annotations

import copy
import math
import types

import numpy as np
import pytest
import torch
from scipy.special import log_softmax

from dnalm.errors import ConfigError
from dnalm.genome.regions import REGION_CLASSES
from dnalm.models.hyena import HyenaConfig, HyenaLM
from dnalm.training.lightning import NextTokenLM, OptimConfig, checkpoint_blocks, step_seed
from dnalm.training.losses import NextTokenMetrics, lm_loss
from dnalm.training.schedules import Stage, accumulation, plan_stages, stage_at, warmup_cosine, warmup_cosine_scheduler

pytestmark = pytest.mark.usefixtures("one_thread")  # small models run faster on one thread


# ---------------------------------------------------------------------------------------------- loss


def test_lm_loss_matches_hand_computation():
    logits = torch.tensor([[[2.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 3.0]]])
    targets = torch.tensor([[0, 2, 3]])
    weight = torch.tensor([[1.0, 0.5, 0.0]])
    ce0 = math.log(math.e**2 + 3) - 2
    ce1 = math.log(3 + math.e)
    ce2 = math.log(3 + math.e**3) - 3
    out = lm_loss(logits, targets, weight)
    expected = (ce0 + 0.5 * ce1) / 1.5
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.ce[0].tolist() == pytest.approx([ce0, ce1, ce2], rel=1e-6)
    # token 0 right, token 1 wrong, token 2 right but weight 0 (not scored)
    assert out.accuracy.item() == pytest.approx(0.5)
    assert out.n_tokens.item() == 2
    assert out.bits_per_base.item() == pytest.approx(expected / math.log(2), rel=1e-6)
    assert out.perplexity.item() == pytest.approx(math.exp(expected), rel=1e-6)
    unweighted = lm_loss(logits, targets)
    assert unweighted.loss.item() == pytest.approx((ce0 + ce1 + ce2) / 3, rel=1e-6)
    assert unweighted.accuracy.item() == pytest.approx(2 / 3)


def test_lm_loss_is_batch_level_and_differentiable():
    """One weighted mean over all tokens of the batch, not a mean of per-sequence means."""
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, requires_grad=True)
    targets = torch.randint(0, 5, (2, 4))
    weight = torch.tensor([[1.0, 1, 1, 1], [1.0, 0, 0, 0]])
    out = lm_loss(logits, targets, weight)
    ce = -log_softmax(logits.detach().numpy(), axis=-1)[np.arange(2)[:, None], np.arange(4)[None, :], targets.numpy()]
    assert out.loss.item() == pytest.approx(ce[0].sum() / 5 + ce[1, 0] / 5, rel=1e-5)
    out.loss.backward()
    assert logits.grad[1, 1:].abs().sum() == 0 and logits.grad[0].abs().sum() > 0


def test_all_zero_weights_give_zero_loss():
    out = lm_loss(torch.randn(1, 3, 4), torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3))
    assert out.loss.item() == 0.0 and out.accuracy.item() == 0.0


def test_metrics_pool_batches_and_regions_like_numpy():
    rng = np.random.default_rng(1)
    metric = NextTokenMetrics(REGION_CLASSES)
    all_ce, all_w, all_ok, all_reg = [], [], [], []
    for _ in range(3):
        logits = rng.normal(size=(2, 6, 5)).astype(np.float32)
        targets = rng.integers(0, 5, size=(2, 6))
        weight = rng.choice([0.0, 0.1, 1.0], size=(2, 6)).astype(np.float32)
        regions = rng.integers(-1, 3, size=(2, 6))
        out = lm_loss(torch.from_numpy(logits), torch.from_numpy(targets), torch.from_numpy(weight))
        metric.update(out, torch.from_numpy(regions))
        ce = -np.take_along_axis(log_softmax(logits.astype(np.float64), axis=-1), targets[..., None], -1)[..., 0]
        all_ce.append(ce.ravel())
        all_w.append(weight.ravel())
        all_ok.append((logits.argmax(-1) == targets).ravel())
        all_reg.append(regions.ravel())
    ce, w, ok, reg = map(np.concatenate, (all_ce, all_w, all_ok, all_reg))
    got = metric.compute()
    loss = (w * ce).sum() / w.sum()
    assert got["loss"] == pytest.approx(loss, rel=1e-6)
    assert got["acc"] == pytest.approx(ok[w > 0].mean())
    assert got["bits_per_base"] == pytest.approx(loss / math.log(2), rel=1e-6)
    assert got["ppl"] == pytest.approx(math.exp(loss), rel=1e-6)
    for c, name in enumerate(REGION_CLASSES):
        sel = reg == c
        if w[sel].sum() > 0:
            part = (w[sel] * ce[sel]).sum() / w[sel].sum()
            assert got[f"loss/{name}"] == pytest.approx(part, rel=1e-6)
            assert got[f"bits_per_base/{name}"] == pytest.approx(part / math.log(2), rel=1e-6)
        else:
            assert f"loss/{name}" not in got
    assert {"loss/intergenic", "loss/CDS", "loss/UTR"} <= set(got)


# ---------------------------------------------------------------------------------------------- schedules


def test_warmup_cosine_hand_values():
    f = lambda s: warmup_cosine(s, total_steps=110, warmup_steps=10, min_lr_ratio=0.1)  # noqa: E731
    assert f(0) == pytest.approx(0.1)       # (0 + 1) / 10
    assert f(4) == pytest.approx(0.5)
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)      # cosine starts at t = 0
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half way: cos(pi/2) = 0
    assert f(35) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    assert warmup_cosine(0, 1) == pytest.approx(1.0)


def test_scheduler_sets_every_group_per_step():
    p1, p2 = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [p1], "lr": 1e-3}, {"params": [p2], "lr": 2e-3}])
    sched = warmup_cosine_scheduler(opt, total_steps=20, warmup_steps=4, min_lr_ratio=0.0)
    seen = []
    for _ in range(20):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    for s, (a, b) in enumerate(seen):
        assert a == pytest.approx(1e-3 * warmup_cosine(s, 20, 4, 0.0))
        assert b == pytest.approx(2e-3 * warmup_cosine(s, 20, 4, 0.0))
    with pytest.raises(ConfigError):
        warmup_cosine_scheduler(opt, total_steps=0)


def test_time_horizon_decays_by_the_budget_spent():
    """horizon=time: t = max(step progress, fraction of max_time spent); warm-up stays per step."""
    f = lambda s, p: warmup_cosine(s, total_steps=1000, warmup_steps=10, min_lr_ratio=0.1, progress=p)  # noqa: E731
    assert f(4, 0.9) == pytest.approx(0.5)                      # warm-up ignores the clock
    assert f(60, 0.5) == pytest.approx(0.1 + 0.9 * 0.5)          # half the time spent, 5% of the steps
    assert f(60, 0.0) == pytest.approx(warmup_cosine(60, 1000, 10, 0.1))
    assert f(760, 0.25) == pytest.approx(warmup_cosine(760, 1000, 10, 0.1))  # steps ahead of the clock
    assert f(20, 1.0) == pytest.approx(0.1)
    p1 = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([p1], lr=1e-3)
    spent = [0.0]
    sched = warmup_cosine_scheduler(opt, total_steps=10**6, warmup_steps=2, min_lr_ratio=0.0,
                                    time_fraction=lambda: spent[0])
    for s, frac in enumerate([0.0, 0.1, 0.25, 0.5, 0.75, 1.0]):
        spent[0] = frac
        opt.step()
        sched.step()
        step = s + 1
        want = (step + 1) / 2 if step < 2 else 0.5 * (1 + math.cos(math.pi * frac))
        assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * want, abs=1e-9)


def test_time_budget_fraction_reads_the_trainers_timer():
    from lightning.pytorch.callbacks import Timer

    from dnalm.training.lightning import time_budget_fraction

    assert time_budget_fraction(None) == 0.0
    timer = Timer(duration="00:00:01:40")  # 100 s
    trainer = types.SimpleNamespace(callbacks=[timer])
    timer.time_elapsed = lambda stage="train": 25.0
    assert time_budget_fraction(trainer) == pytest.approx(0.25)
    timer.time_elapsed = lambda stage="train": 250.0
    assert time_budget_fraction(trainer) == 1.0
    assert time_budget_fraction(types.SimpleNamespace(callbacks=[])) == 0.0
    with pytest.raises(ConfigError, match="horizon"):
        OptimConfig(horizon="epochs")


def test_hyenadna_warmup_stages_keep_the_global_batch():
    """HyenaDNA's warm-up: 1k/bs256 -> 2k/128 -> 4k/64 -> 8k/32 (2 epochs each) -> 16k/16 -> 32k/8 (4 each),
    global batch 256, an epoch of ceil(1e9 / length) windows."""
    lengths = [1024, 2048, 4096, 8192, 16384, 32768]
    stages = [Stage(L, 256 * 1024 // L, epochs=2 if L <= 8192 else 4) for L in lengths]
    plans = plan_stages(stages, world_size=1, global_batch_size=256, default_samples=lambda L: math.ceil(1e9 / L))
    assert [p.accumulate for p in plans] == [1, 2, 4, 8, 16, 32]
    assert [p.first_epoch for p in plans] == [0, 2, 4, 6, 8, 12] and plans[-1].end_epoch == 16
    assert plans[0].steps_per_epoch == 976563 // 256          # 3814 full batches, one step each
    assert plans[1].steps_per_epoch == math.ceil((488282 // 128) / 2)
    assert [stage_at(plans, e).length for e in (0, 1, 2, 7, 8, 15, 99)] == [1024, 1024, 2048, 8192, 16384, 32768,
                                                                            32768]
    with pytest.raises(ConfigError, match="multiple"):
        plan_stages(stages, world_size=2, global_batch_size=256, default_samples=lambda L: 10**6)


def test_stage_in_steps_is_one_epoch_of_exactly_those_steps():
    plans = plan_stages([Stage(64, 8, steps=5), Stage(128, 4, epochs=1)], world_size=2, global_batch_size=32,
                        default_samples=lambda L: 1000)
    first, second = plans
    assert (first.accumulate, first.samples_per_epoch, first.steps_per_epoch, first.n_epochs) == (2, 160, 5, 1)
    assert second.accumulate == 4 and second.steps_per_epoch == math.ceil((1000 // 4 // 2) / 4)
    assert accumulation(None, 8, 4) == 1
    for bad in ([Stage(64, 8)], [Stage(64, 8, epochs=1, steps=2)], [Stage(0, 8, steps=1)]):
        with pytest.raises(ConfigError):
            plan_stages(bad, 1, None, lambda L: 100)


# ---------------------------------------------------------------------------------------------- modules


def _tiny_model(dropout: float = 0.1) -> HyenaLM:
    torch.manual_seed(0)
    return HyenaLM(HyenaConfig(d_model=16, n_layer=2, d_inner=32, l_max=34, embed_dropout=dropout,
                               resid_dropout=dropout))


def test_activation_checkpointing_keeps_keys_and_numbers_and_recomputes():
    plain = _tiny_model()
    wrapped = copy.deepcopy(plain)
    keys = list(plain.state_dict())
    assert checkpoint_blocks(wrapped) == 2 and checkpoint_blocks(wrapped) == 0
    assert list(wrapped.state_dict()) == keys
    calls = {"n": 0}

    def count(module, args, out):
        calls["n"] += 1

    wrapped.backbone.layers[0].mixer.register_forward_hook(count)
    x = torch.randint(7, 11, (3, 32))
    grads = []
    for model in (plain, wrapped):
        model.train()
        torch.manual_seed(5)
        logits = model(x)
        logits.float().logsumexp(-1).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        if model is plain:
            ref = logits.detach()
        else:
            torch.testing.assert_close(logits.detach(), ref)
    assert calls["n"] == 2  # forward, then recomputed in the backward pass
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        wrapped.eval()
        calls["n"] = 0
        torch.testing.assert_close(wrapped(x), plain.eval()(x))
        assert calls["n"] == 1


def test_step_seed_depends_on_every_argument():
    seeds = {step_seed(s, e, b, r) for s in (0, 1) for e in (0, 1) for b in (0, 1) for r in (0, 1)}
    assert len(seeds) == 16 and step_seed(0, 1, 2, 3) == step_seed(0, 1, 2, 3)
    assert all(0 <= s < 2**63 for s in seeds)


def test_module_optimizer_groups_and_schedule():
    model = _tiny_model()
    module = NextTokenLM(model, OptimConfig(lr=1e-3, weight_decay=0.1, warmup_steps=10, filter_lr=5e-4),
                         total_steps=100)
    conf = module.configure_optimizers()
    groups = {g["name"]: g for g in conf["optimizer"].param_groups}
    assert set(groups) == {"decay", "no_decay", "filter"}
    assert groups["decay"]["weight_decay"] == 0.1 and groups["filter"]["weight_decay"] == 0.0
    assert groups["decay"]["lr"] == pytest.approx(1e-4) and groups["filter"]["lr"] == pytest.approx(5e-5)
    assert conf["lr_scheduler"]["interval"] == "step"
    assert list(module.state_dict()) == ["model." + k for k in model.state_dict()]


def test_validation_epoch_metrics_equal_pooled_loss():
    import lightning as L

    model = _tiny_model(dropout=0.0).eval()
    gen = torch.Generator().manual_seed(3)
    batches = []
    for _ in range(3):
        ids = torch.randint(7, 12, (2, 33), generator=gen)
        batches.append({"input_ids": ids[:, :-1], "targets": ids[:, 1:],
                        "regions": torch.randint(-1, 8, (2, 32), generator=gen),
                        "loss_weight": torch.rand(2, 32, generator=gen).round()})
    module = NextTokenLM(model, OptimConfig(), total_steps=1)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False)
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    trainer.validate(module, dataloaders=loader, verbose=False)
    got = module.last_metrics["val"]
    with torch.no_grad():
        outs = [lm_loss(model(b["input_ids"]), b["targets"], b["loss_weight"]) for b in batches]
    num = sum(float((o.ce * o.weight).sum()) for o in outs)
    den = sum(float(o.weight.sum()) for o in outs)
    assert got["loss"] == pytest.approx(num / den, rel=1e-5)
    assert trainer.callback_metrics["val/bits_per_base"].item() == pytest.approx(num / den / math.log(2), rel=1e-5)


def test_last_metrics_travel_with_the_checkpoint():
    """A run resumed from its final checkpoint runs no validation; it reports what the checkpoint carries."""
    module = NextTokenLM(_tiny_model(), OptimConfig(), total_steps=1)
    module.last_metrics = {"val": {"loss": torch.tensor(1.25), "bits_per_base": torch.tensor(1.8033688)}}
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    resumed = NextTokenLM(_tiny_model(), OptimConfig(), total_steps=1)
    resumed.on_load_checkpoint(checkpoint)
    assert resumed.last_metrics == {"val": {"loss": 1.25, "bits_per_base": float(torch.tensor(1.8033688))}}
