"""Fine-tuning guards: class prior and weights, balanced sampling, the learning-rate range test, warm-up and
decay, and the collapse warning (rules on hand-made figures; whole runs on a tiny task)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from _finetune_helpers import TINY, tiny_checkpoint_fixture  # noqa: F401 (fixture)

from dnalm.data.datamodule import BalancedBatchSampler
from dnalm.errors import ConfigError
from dnalm.models.heads import SequenceClassifier
from dnalm.models.hyena import HyenaLM
from dnalm.training.collapse import TRAIN_MARGIN, dev_at_chance, train_at_prior
from dnalm.training.imbalance import class_weights, constant_loss, entropy
from dnalm.training.lr_range import DIVERGENCE, lr_range_test, pick_lr, smooth
from dnalm.training.schedules import warmup_cosine, warmup_steps_of

MOTIF = "GGGGGGGG"
FAST = ["trainer.progress_bar=false", "trainer.accelerator=cpu", "optim.weight_decay=0", "task.dropout=0",
        "data.batch_size=16", "save_model=false"]


# ----------------------------------------------------------------------------- class prior and weights


def test_class_weights_and_constant_loss_by_hand() -> None:
    counts = np.array([30, 10])
    w = class_weights("auto", counts)
    assert w == pytest.approx([40 / (2 * 30), 40 / (2 * 10)], abs=1e-12)  # N / (C n_c) = 2/3, 2
    assert float((counts / 40 * w).sum()) == pytest.approx(1.0, abs=1e-12)  # mean weight 1 over examples
    assert class_weights("none", counts) is None and class_weights(None, counts) is None
    assert class_weights([1, 3], counts) == pytest.approx([1.0, 3.0])
    # a class absent from training gets weight 0; the others N / (C_present n_c)
    assert class_weights("auto", np.array([5, 0, 15])) == pytest.approx([2.0, 0.0, 20 / 30], abs=1e-12)
    prior = np.array([0.75, 0.25])
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert entropy(prior) == pytest.approx(h, abs=1e-12) and h == pytest.approx(0.562335, abs=1e-6)
    assert constant_loss(prior) == pytest.approx(h, abs=1e-12)
    assert constant_loss(prior, w) == pytest.approx(math.log(2), abs=1e-12)  # weights even the classes out
    assert constant_loss(prior, sampling="balanced") == pytest.approx(math.log(2), abs=1e-12)
    # weights [1, 3] on the prior: s~ = (0.75, 0.75) / 1.5 = (0.5, 0.5)
    assert constant_loss(prior, np.array([1.0, 3.0])) == pytest.approx(math.log(2), abs=1e-12)
    for bad in ("often", [1.0], [1.0, -1.0], [0.0, 0.0]):
        with pytest.raises(ConfigError, match="task.class_weights"):
            class_weights(bad, counts)


def test_weighted_training_loss_is_the_weighted_mean() -> None:
    """The module's training loss with class weights is sum_i w_(y_i) l_i / sum_i w_(y_i), computed by hand."""
    from dnalm.training.classify import SequenceTaskModule

    torch.manual_seed(0)
    model = SequenceClassifier(HyenaLM(TINY), 2, dropout=0.0)
    module = SequenceTaskModule(model, class_weights=[0.5, 3.0])
    batch = {"input_ids": torch.randint(7, 11, (6, 12)), "labels": torch.tensor([0, 0, 0, 1, 1, 0])}
    module.log = lambda *a, **k: None
    loss = module.training_step(batch, 0)
    logp = model(batch["input_ids"]).log_softmax(-1).detach().double()
    y = batch["labels"]
    w = torch.tensor([0.5, 3.0], dtype=torch.float64)[y]
    expected = float((w * -logp[torch.arange(6), y]).sum() / w.sum())
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_balanced_sampler_draws_classes_evenly() -> None:
    """Labels 90% / 10%: the rare class's count in an epoch of N = 4,000 draws is Binomial(N, 1/2) (sd 31.6);
    asserted within 5 sd of N / 2 (a false failure has probability < 1e-6), in each of three epochs and on
    two ranks together; epochs differ, and the same (seed, epoch) gives the same batches."""
    labels = np.array([0] * 3600 + [1] * 400)
    sampler = BalancedBatchSampler(labels, batch_size=50, seed=3)
    sd = math.sqrt(len(labels) * 0.25)
    draws = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        idx = np.concatenate([b for _, b, _ in sampler])
        assert len(idx) == len(labels) and len(sampler) == 80
        assert abs(int((labels[idx] == 1).sum()) - len(labels) / 2) < 5 * sd
        assert len(np.unique(idx[labels[idx] == 1])) > 0.8 * 400  # the rare class's members are all visited
        draws.append(idx)
    assert not np.array_equal(draws[0], draws[1])
    sampler.set_epoch(0)
    assert np.array_equal(np.concatenate([b for _, b, _ in sampler]), draws[0])
    ranks = [BalancedBatchSampler(labels, 50, drop_last=True, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    idx = np.concatenate([b for s in ranks for _, b, _ in s])
    assert len(idx) == len(labels) and abs(int((labels[idx] == 1).sum()) - 2000) < 5 * sd


# ----------------------------------------------------------------------------- schedule


def test_warmup_fraction_and_constant_decay() -> None:
    assert warmup_steps_of(200, 0, 0.1) == 20 and warmup_steps_of(200, 7, 0.1) == 7 and warmup_steps_of(200) == 0
    assert warmup_cosine(4, 100, 10, 0.1, decay="constant") == pytest.approx(0.5)
    assert [warmup_cosine(s, 100, 10, 0.1, decay="constant") for s in (10, 50, 99)] == [1.0, 1.0, 1.0]
    assert warmup_cosine(99, 100, 10, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 89 / 90)))
    # linear (the Hugging Face Trainer's decay): 1 at the end of the warm-up, the floor at the last step
    linear = [warmup_cosine(s, 100, 10, 0.0, decay="linear") for s in (4, 10, 55, 100, 150)]
    assert linear == pytest.approx([0.5, 1.0, 0.5, 0.0, 0.0])
    assert warmup_cosine(40, 100, 10, 0.2, decay="linear") == pytest.approx(0.2 + 0.8 * (1 - 30 / 90))
    with pytest.raises(ConfigError, match="warmup_fraction"):
        warmup_steps_of(100, 0, 1.5)


# ----------------------------------------------------------------------------- lr range test


def test_pick_lr_rule_on_synthetic_curves() -> None:
    """The rule of dnalm.training.lr_range, checked with pandas' bias-corrected EWM as the smoother.

    A loss that starts at 1.0, falls to 0.4 around lr 1e-3 and climbs steeply past 1e-2: divergence where the
    smoothed loss first passes 1.1 x the start, and the pick is min(lr_div / 100, lr_min / 10). A loss that
    never falls and rises past lr 0.1: lr_div / 100. A flat loss: lr_end / 100."""
    import pandas as pd

    lrs = list(np.logspace(-5, 0, 51))
    x = np.log10(lrs)
    curve = 1.0 - 0.6 / (1.0 + np.exp(-4.0 * (x + 3.0)))
    curve = np.where(x > -2.0, curve + 30.0 * (x + 2.0) ** 2, curve)
    lr, lr_min, lr_steep, lr_div = pick_lr(lrs, list(curve))
    sm = pd.Series(curve).ewm(alpha=0.1, adjust=True).mean().to_numpy()
    assert smooth(list(curve)) == pytest.approx(list(sm), abs=1e-12)
    start = float(np.mean(curve[:5]))
    k_div = next(k for k in range(51) if sm[k] > 1.1 * start or sm[k] > DIVERGENCE * sm[:k + 1].min())
    i_min = int(np.argmin(sm[:k_div]))
    assert lr_div == pytest.approx(lrs[k_div]) and lr_min == pytest.approx(lrs[i_min])
    assert 1e-3 < lr_min < 1e-1 and lr == pytest.approx(min(lrs[k_div] / 100, lrs[i_min] / 10))
    assert lr_steep < lr_min  # the steepest descent comes before the minimum
    rising = np.where(x > -1.0, 0.7 + 2.0 * (x + 1.0), 0.7)
    lr, lr_min, _, lr_div = pick_lr(lrs, list(rising))
    sm = pd.Series(rising).ewm(alpha=0.1, adjust=True).mean().to_numpy()
    k_div = next(k for k in range(51) if sm[k] > 1.1 * 0.7)
    assert lr_div == pytest.approx(lrs[k_div]) and lr == pytest.approx(lrs[k_div] / 100)
    lr, _, _, lr_div = pick_lr(lrs, [0.69] * 51, 1e-5, 1.0)
    assert lr_div is None and lr == pytest.approx(1.0 / 100)


def _motif_batches(n: int, L_: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, 11, (n, L_), generator=g)
    labels = torch.arange(n) % 2
    ids[labels == 1, 5:13] = 9  # a planted run of one base
    return [{"input_ids": ids[k:k + 16], "labels": labels[k:k + 16]} for k in range(0, n, 16)]


def test_lr_range_test_picks_a_finite_rate_and_restores_weights() -> None:
    torch.manual_seed(0)
    model = SequenceClassifier(HyenaLM(TINY), 2, dropout=0.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = _motif_batches(128, 30, 0)
    result = lr_range_test(model, lambda m, b: m.loss(m(b["input_ids"]), b["labels"]), lambda: batches,
                           lambda m: torch.optim.AdamW(m.parameters(), lr=1.0), lr_start=1e-5, lr_end=1.0, steps=40)
    assert math.isfinite(result.lr) and 1e-5 <= result.lr <= 1.0
    assert result.steps == len(result.losses) <= 40
    assert (result.lr, result.lr_min_loss) == pick_lr(result.lrs, result.losses, 1e-5, 1.0)[:2]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training


# ----------------------------------------------------------------------------- collapse


def test_collapse_rules_on_hand_figures() -> None:
    h = math.log(2)
    assert train_at_prior(0.6931, h) and train_at_prior(0.68, h) and train_at_prior(float("nan"), h)
    assert not train_at_prior((1 - TRAIN_MARGIN) * h - 1e-3, h) and not train_at_prior(0.5, h)
    # n = 400: MCC bound 2 / 20 = 0.1; accuracy bound for majority 0.5: 0.5 + 2 * 0.025 = 0.55
    assert dev_at_chance(0.02, 0.51, 0.5, 400) and dev_at_chance(float("nan"), 0.5, 0.5, 400)
    assert not dev_at_chance(0.3, 0.65, 0.5, 400) and not dev_at_chance(0.12, 0.56, 0.5, 400)
    # majority 0.9: predicting the majority class is at chance, a classifier above it with MCC 0.4 is not
    assert dev_at_chance(0.0, 0.9, 0.9, 400) and not dev_at_chance(0.4, 0.93, 0.9, 400)


def _write_motif_csv(path, n: int, seed: int, shuffled: bool = False, L_: int = 40) -> None:
    rng = np.random.default_rng(seed)
    lines = ["sequence,label"]
    for i in range(n):
        seq = "".join(rng.choice(list("ACGT"), L_))
        label = i % 2
        if label:
            s = int(rng.integers(0, L_ - len(MOTIF)))
            seq = seq[:s] + MOTIF + seq[s + len(MOTIF):]
        lines.append(f"{seq},{int(rng.integers(2)) if shuffled else label}")
    path.write_text("\n".join(lines) + "\n")


def _task(root, shuffled: bool):
    for split, n, seed in (("train", 192, 0), ("dev", 96, 1), ("test", 64, 2)):
        _write_motif_csv(root / f"{split}.csv", n, seed, shuffled=shuffled and split != "test")
    return root


def test_collapse_warning_fires_on_shuffled_labels_only(tmp_path, tiny_checkpoint, capsys) -> None:
    """Labels drawn at random (nothing to learn): the warning is in the log and in metrics.json. The learnable
    task with the same recipe: no warning, and the class prior is reported."""
    from dnalm.cli import run

    metrics = {}
    for name, shuffled in (("shuffled", True), ("learnable", False)):
        data = _task(tmp_path / f"data_{name}", shuffled) if (tmp_path / f"data_{name}").mkdir() is None else None
        out = tmp_path / name
        assert run(["finetune", f"checkpoint={tiny_checkpoint}", f"data.path={data}", f"out={out}",
                    "trainer.max_epochs=3", "optim.lr=5e-3", *FAST]) == 0
        metrics[name] = json.loads((out / "metrics.json").read_text())
        err = capsys.readouterr().err
        assert ("WARNING: collapse" in err) == shuffled and "finetune: class prior 0 0." in err
    warned = metrics["shuffled"]["warnings"]
    assert len(warned) == 1 and warned[0]["kind"] == "collapse" and "dnalm tune" in warned[0]["message"]
    assert warned[0]["train_at_prior"] or warned[0]["dev_at_chance"]
    assert metrics["learnable"]["warnings"] == [] and metrics["learnable"]["test"]["mcc"] > 0.5
    prior = metrics["learnable"]["class_prior"]
    assert prior["prior"] == [0.5, 0.5] and prior["entropy_nats"] == pytest.approx(math.log(2), abs=1e-12)


def test_lr_zero_collapses_and_lr_auto_is_recorded(tmp_path, tiny_checkpoint, capsys) -> None:
    """optim.lr=0 learns nothing: the warning fires on the learnable task. optim.lr=auto with balanced sampling and
    class weights: the chosen rate is finite, in metrics.json and the log."""
    from dnalm.cli import run

    data = _task(tmp_path / "data", shuffled=False) if (tmp_path / "data").mkdir() is None else None
    assert run(["finetune", f"checkpoint={tiny_checkpoint}", f"data.path={data}", f"out={tmp_path / 'zero'}",
                "trainer.max_epochs=2", "optim.lr=0", *FAST]) == 0
    zero = json.loads((tmp_path / "zero" / "metrics.json").read_text())
    assert [w["kind"] for w in zero["warnings"]] == ["collapse"] and zero["warnings"][0]["last_epoch"]
    assert "WARNING: collapse" in capsys.readouterr().err
    assert run(["finetune", f"checkpoint={tiny_checkpoint}", f"data.path={data}", f"out={tmp_path / 'auto'}",
                "trainer.max_epochs=1", "optim.lr=auto", "task.class_weights=auto", "task.sampling=balanced",
                *FAST]) == 0
    auto = json.loads((tmp_path / "auto" / "metrics.json").read_text())
    assert math.isfinite(auto["lr"]) and auto["lr"] == auto["lr_range_test"]["lr"]
    assert 1e-5 <= auto["lr"] <= 1.0 and auto["class_prior"]["class_weights"] == [1.0, 1.0]
    assert auto["class_prior"]["sampling"] == "balanced"
    assert "optim.lr=auto ->" in capsys.readouterr().err


def test_bad_options_fail_before_writing(tmp_path, tiny_checkpoint) -> None:
    from dnalm.cli import run

    data = _task(tmp_path / "data", shuffled=False) if (tmp_path / "data").mkdir() is None else None
    for override, says in (("task.sampling=often", "task.sampling"), ("optim.lr=fast", "optim.lr"),
                           ("task.class_weights=[1,2,3]", "task.class_weights"), ("optim.decay=step", "optim.decay")):
        with pytest.raises(ConfigError, match=says):
            run(["finetune", f"checkpoint={tiny_checkpoint}", f"data.path={data}", f"out={tmp_path / 'x'}",
                 override, *FAST])
        assert not (tmp_path / "x").exists()


def test_train_rejects_lr_auto_and_keeps_numbers() -> None:
    """optim.lr=auto is a fine-tuning option; dnalm train says so. A number given as text is read as one."""
    from dnalm.config import compose
    from dnalm.recipes.train import parse
    from dnalm.training.lightning import OptimConfig

    with pytest.raises(ConfigError, match="optim.lr=auto"):
        parse(compose("train", ["experiment=synthetic/hyena_demo", "optim.lr=auto"]))
    assert OptimConfig(lr="3e-4").lr == pytest.approx(3e-4) and OptimConfig(lr="auto").lr == "auto"
