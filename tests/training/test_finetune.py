"""Fine-tuning: metrics against scikit-learn/scipy, parameter groups, the Lightning module and `dnalm finetune`."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from _finetune_helpers import TINY, tiny_checkpoint_fixture  # noqa: F401 (fixture)
from scipy import stats
from sklearn import metrics as skm

from dnalm.errors import ConfigError
from dnalm.models.heads import SequenceClassifier
from dnalm.models.hyena import HyenaLM
from dnalm.training.classify import (
    BestWeights,
    SequenceTaskModule,
    finetune_param_groups,
    regression_metrics,
)


@pytest.mark.parametrize("C", [2, 3])
def test_epoch_metrics_over_all_batches_without_padding_rows(C: int) -> None:
    """Validation metrics are computed once on the whole epoch (not averaged over batches), leaving out
    the rows flagged as padding; compared with scikit-learn on predictions made outside Lightning."""
    torch.manual_seed(C)
    model = SequenceClassifier(HyenaLM(TINY), C, pooling="mean", dropout=0.0)
    with torch.no_grad():
        model.head.weight.mul_(50.0)  # spread the random predictions so that the metrics are not trivial
    items = [{"input_ids": torch.randint(7, 11, (int(n),)), "labels": torch.tensor(i % C)}
             for i, n in enumerate(torch.randint(5, 30, (70,)))]
    batches = []
    from dnalm.data.datasets import LabeledCollator

    collate = LabeledCollator()
    for k in range(0, 70, 16):
        batch = collate(items[k:k + 16])
        batch["padding"] = torch.zeros(len(batch["labels"]), dtype=torch.bool)
        batches.append(batch)
    copy = {k: v.clone() for k, v in batches[0].items()}
    copy["padding"][:] = True
    batches.append(copy)  # a duplicate batch that must not count

    module = SequenceTaskModule(model)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, torch.utils.data.DataLoader(batches, batch_size=None), verbose=False)
    got = module.last_metrics["val"]

    model.eval()
    with torch.no_grad():
        probs = torch.cat([model(b["input_ids"], b["attention_mask"]).softmax(-1) for b in batches[:-1]]).numpy()
        logits = torch.cat([model(b["input_ids"], b["attention_mask"]) for b in batches[:-1]])
    y = np.array([int(it["labels"]) for it in items])
    pred = probs.argmax(1)
    assert got["n"] == 70
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-6)
    assert got["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-6)
    assert got["mcc"] == pytest.approx(skm.matthews_corrcoef(y, pred), abs=1e-6)
    if C == 2:  # positive class, ranked by the logit margin (p1 itself saturates at 1.0 here)
        auroc = skm.roc_auc_score(y, (logits[:, 1] - logits[:, 0]).numpy())
    else:
        auroc = skm.roc_auc_score(y, probs, multi_class="ovr")
    assert got["auroc"] == pytest.approx(auroc, abs=1e-6)
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor(y))
    assert got["loss"] == pytest.approx(float(ce), rel=1e-5)
    assert len({round(got[k], 6) for k in ("accuracy", "mcc", "auroc")}) == 3


def test_regression_metrics_match_scipy() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.randn(50, generator=g)
    p = y + 0.5 * torch.randn(50, generator=g)
    got = regression_metrics(p, y)
    yn, pn = y.numpy().astype(np.float64), p.numpy().astype(np.float64)
    assert got["mse"] == pytest.approx(np.mean((pn - yn) ** 2), rel=1e-5)
    assert got["mae"] == pytest.approx(np.mean(np.abs(pn - yn)), rel=1e-5)
    assert got["r2"] == pytest.approx(skm.r2_score(yn, pn), rel=1e-4)
    assert got["pearson"] == pytest.approx(stats.pearsonr(pn, yn)[0], rel=1e-4)
    assert got["spearman"] == pytest.approx(stats.spearmanr(pn, yn)[0], rel=1e-4)


def test_param_groups_head_lr_and_layer_decay() -> None:
    model = SequenceClassifier(HyenaLM(TINY), 2)
    groups = finetune_param_groups(model, lr=1e-3, weight_decay=0.1, head_lr=1e-2)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len([p for p in model.parameters() if p.requires_grad])
    head = {g["name"]: g for g in groups if g["name"].startswith("head.")}
    assert head["head.decay"]["lr"] == 1e-2 and head["head.decay"]["params"] == [model.head.weight]
    assert head["head.no_decay"]["weight_decay"] == 0.0
    decayed = finetune_param_groups(model, lr=1.0, weight_decay=0.0, layer_decay=0.5)
    lrs = {g["name"]: g["lr"] for g in decayed}
    # 2 blocks: block 1 (top) lr 1, block 0 lr 0.5, embedding 0.25, final norm 1
    assert lrs["layers.1.decay"] == 1.0 and lrs["layers.0.decay"] == 0.5
    assert lrs["embeddings.no_decay"] == 0.25 and lrs["backbone.no_decay"] == 1.0
    ids = [id(p) for g in decayed for p in g["params"]]
    assert len(ids) == len(set(ids)) == len([p for p in model.parameters() if p.requires_grad])
    with pytest.raises(ConfigError):
        finetune_param_groups(model, lr=1.0, weight_decay=0.0, layer_decay=0.0)


def _motif_data(n: int, L_: int, seed: int) -> list[dict[str, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        ids = rng.integers(7, 11, L_)
        label = i % 2
        if label:
            s = rng.integers(0, L_ - 8)
            ids[s:s + 8] = [9, 9, 9, 9, 9, 9, 9, 9]
        items.append({"input_ids": torch.as_tensor(ids), "labels": torch.tensor(label)})
    return items


def _loader(items: list[dict[str, torch.Tensor]], batch: int, shuffle: bool) -> torch.utils.data.DataLoader:
    from dnalm.data.datasets import LabeledCollator

    return torch.utils.data.DataLoader(items, batch_size=batch, shuffle=shuffle, collate_fn=LabeledCollator())


def test_module_learns_and_best_weights_restore() -> None:
    torch.manual_seed(0)
    model = SequenceClassifier(HyenaLM(TINY), 2, pooling="mean", dropout=0.0)

    def factory(m):
        return torch.optim.AdamW(finetune_param_groups(m, lr=5e-3, weight_decay=0.0))

    module = SequenceTaskModule(model, factory)
    best = BestWeights("val/mcc", "max")
    trainer = L.Trainer(max_epochs=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[best])
    train = _loader(_motif_data(128, 40, 0), 16, True)
    dev = _loader(_motif_data(64, 40, 1), 32, False)
    trainer.fit(module, train, dev)
    assert best.best_score is not None and best.best_score > 0.5
    assert best.best_metrics["mcc"] == pytest.approx(best.best_score)
    # the restored weights are those of the best epoch: validating again gives its metrics
    trainer.validate(module, dev, verbose=False)
    assert module.last_metrics["val"]["mcc"] == pytest.approx(best.best_score, abs=1e-6)
    trainer.test(module, dev, verbose=False)
    assert module.last_metrics["test"]["n"] == 64


# ---------------------------------------------------------------------------------------------
# dnalm finetune
# ---------------------------------------------------------------------------------------------

MOTIF = "GGGGGGGG"


def _write_motif_csv(path, n: int, seed: int, L_: int = 40, regression: bool = False) -> None:
    """label 1 sequences carry MOTIF; for regression the label is the GC fraction of the sequence."""
    rng = np.random.default_rng(seed)
    lines = ["sequence,label"]
    for i in range(n):
        seq = "".join(rng.choice(list("ACGT"), L_ - int(rng.integers(0, 6))))
        if regression:
            label = f"{(seq.count('G') + seq.count('C')) / len(seq):.4f}"
        else:
            label = str(i % 2)
            if label == "1":
                s = int(rng.integers(0, len(seq) - len(MOTIF)))
                seq = seq[:s] + MOTIF + seq[s + len(MOTIF):]
        lines.append(f"{seq},{label}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def motif_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("motif")
    for split, n, seed in (("train", 256, 0), ("dev", 64, 1), ("test", 64, 2)):
        _write_motif_csv(root / f"{split}.csv", n, seed)
    return root


FAST = ["trainer.progress_bar=false", "trainer.accelerator=cpu", "optim.weight_decay=0", "task.dropout=0",
        "trainer.log_every_n_steps=1"]


def _predict(model, csv_path, tokenizer, strand: str = "+") -> tuple[torch.Tensor, np.ndarray]:
    import pandas as pd

    from dnalm.data.datasets import LabeledCollator

    df = pd.read_csv(csv_path)
    seqs = list(df["sequence"])
    if strand == "-":
        seqs = [s.translate(str.maketrans("ACGT", "TGCA"))[::-1] for s in seqs]
    items = [{"input_ids": torch.as_tensor(tokenizer.encode(s)), "labels": torch.tensor(0)} for s in seqs]
    batch = LabeledCollator()(items)
    with torch.no_grad():
        out = model.eval()(batch["input_ids"], batch["attention_mask"])
    return out, df["label"].to_numpy()


@pytest.mark.parametrize("rc_eval", [False, True])
def test_finetune_classification_reaches_mcc(tmp_path, tiny_checkpoint, motif_data, rc_eval: bool) -> None:
    """Test metrics of the saved model recomputed outside dnalm; with ``data.rc_eval`` dev and test are scored
    on both strands (trained with reverse-complement augmentation): the mean of the two strands' class
    log-probabilities."""
    import json

    from dnalm.cli import run
    from dnalm.models.heads import load_classifier
    from dnalm.tokenizers import load_tokenizer

    out = tmp_path / "run"
    assert run(["finetune", f"checkpoint={tiny_checkpoint}", f"data.path={motif_data}", f"out={out}",
                "trainer.max_epochs=4", "optim.lr=5e-3", "data.batch_size=16", f"data.rc_eval={rc_eval}",
                f"data.rc_aug={rc_eval}", *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] <= 64 and metrics["monitor"] == "val/mcc"
    assert metrics["test"]["mcc"] > 0.5 and metrics["dev"]["mcc"] == pytest.approx(metrics["best_score"])
    assert metrics["classes"] == ["0", "1"] and metrics["test"]["n"] == 64
    # the saved model reproduces the reported test metrics (independent MCC and AUROC from scikit-learn)
    model = load_classifier(out / "model")
    tokenizer = load_tokenizer(out / "model")
    logits, y = _predict(model, motif_data / "test.csv", tokenizer)
    if rc_eval:
        reverse, _ = _predict(model, motif_data / "test.csv", tokenizer, strand="-")
        assert not torch.allclose(logits.log_softmax(-1), reverse.log_softmax(-1), atol=1e-3)
        logits = (logits.log_softmax(-1) + reverse.log_softmax(-1)) / 2
        ce = torch.nn.functional.cross_entropy(logits, torch.tensor(y))
        assert metrics["test"]["loss"] == pytest.approx(float(ce), rel=1e-5)
    assert metrics["test"]["mcc"] == pytest.approx(skm.matthews_corrcoef(y, logits.argmax(1).numpy()), abs=1e-6)
    margin = (logits[:, 1] - logits[:, 0]).numpy()
    assert metrics["test"]["auroc"] == pytest.approx(skm.roc_auc_score(y, margin), abs=1e-5)
    assert (out / "config.yaml").is_file() and not (out / "adapter").exists()


def test_finetune_regression(tmp_path, tiny_checkpoint) -> None:
    import json

    from dnalm.cli import run
    from dnalm.models.heads import load_classifier
    from dnalm.tokenizers import load_tokenizer

    root = tmp_path / "gc"
    root.mkdir()
    _write_motif_csv(root / "train.csv", 96, 0, regression=True)
    _write_motif_csv(root / "dev.csv", 32, 1, regression=True)
    _write_motif_csv(root / "test.csv", 32, 2, regression=True)
    out = tmp_path / "run"
    assert run(["finetune", "task=regression", f"checkpoint={tiny_checkpoint}", f"data.path={root}", f"out={out}",
                "trainer.max_epochs=2", "optim.lr=1e-3", "data.batch_size=16", "task.pooling=max", *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["monitor"] == "val/mse" and metrics["mode"] == "min"
    model = load_classifier(out / "model")
    assert model.task == "regression" and model.pooling == "max"
    preds, y = _predict(model, root / "test.csv", load_tokenizer(out / "model"))
    assert metrics["test"]["mse"] == pytest.approx(float(np.mean((preds[:, 0].numpy() - y) ** 2)), rel=1e-4)


def test_finetune_lora_then_merge(tmp_path, tiny_checkpoint, motif_data) -> None:
    import json

    from dnalm.cli import run
    from dnalm.models.heads import load_classifier
    from dnalm.tokenizers import load_tokenizer

    out = tmp_path / "lora"
    assert run(["finetune", f"checkpoint={tiny_checkpoint}", f"data.path={motif_data}", f"out={out}",
                "lora.enabled=true", "lora.r=4", "trainer.max_epochs=2", "optim.lr=5e-3", "data.batch_size=32",
                *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["lora"] is True and (out / "adapter" / "adapter.safetensors").is_file()
    assert not (out / "model").exists()
    assert run(["merge-lora", f"adapter={out / 'adapter'}", f"out={tmp_path / 'merged'}"]) == 0
    merged = load_classifier(tmp_path / "merged")
    logits, y = _predict(merged, motif_data / "test.csv", load_tokenizer(tmp_path / "merged"))
    assert metrics["test"]["mcc"] == pytest.approx(skm.matthews_corrcoef(y, logits.argmax(1).numpy()), abs=1e-6)


def test_finetune_from_hyenadna_checkpoint(tmp_path, hyena_fixture, motif_data) -> None:
    import json

    from dnalm.config import compose
    from dnalm.recipes import finetune

    class Modes(L.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            self.training = {m.training for m in pl_module.modules()}

    out = tmp_path / "hd"
    modes = Modes()
    cfg = compose("finetune", [f"checkpoint={hyena_fixture / 'hub_lightning'}", f"data.path={motif_data / 'train.csv'}",
                               f"data.dev={motif_data / 'dev.csv'}", f"out={out}", "trainer.max_steps=2",
                               "data.batch_size=8", "save_model=false", "task.pooling=last", *FAST])
    finetune.run(cfg, callbacks=[modes])
    assert modes.training == {True}  # dropout active although load_pretrained returns eval mode
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and "test" not in metrics and "mcc" in metrics["dev"]
    assert not (out / "model").exists()


def test_finetune_lm_continues_pretraining(tmp_path, tiny_checkpoint) -> None:
    """task=lm runs `dnalm train` from the checkpoint: with lr 0 the saved model is the checkpoint itself."""
    import json

    from dnalm.cli import run
    from dnalm.models.io import load_pretrained

    base = load_pretrained(tiny_checkpoint)
    common = ["finetune", "task=lm", f"checkpoint={tiny_checkpoint}", "data=synthetic",
              f"data.cache={tmp_path / 'cache'}", "data.synthetic.chromosome_length=10000", "data.length=48",
              "data.batch_size=8",
              "data.eval_max_windows=8", "trainer.max_steps=3", "trainer.val_check_interval=3",
              "trainer.progress_bar=false", "optim.weight_decay=0"]
    for lr, changed in ((0.0, False), (1e-2, True)):
        out = tmp_path / f"lm{lr}"
        assert run([*common, f"optim.lr={lr}", f"out={out}"]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["global_step"] == 3 and metrics["test"]["loss"] > 0
        model = load_pretrained(out / "model")
        assert model.config == base.config
        same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), base.state_dict().values()))
        assert same != changed
    with pytest.raises(ConfigError, match="data.prepared"):
        run(["finetune", "task=lm", f"checkpoint={tiny_checkpoint}", f"out={tmp_path / 'x'}"])
    # with LoRA only the adapted Linear layers change (model/ holds the merged weights, model/adapter/ the adapter)
    out = tmp_path / "lora"
    assert run([*common, "lora.enabled=true", "lora.r=2", "optim.lr=1e-2", f"out={out}"]) == 0
    assert (out / "model" / "adapter" / "adapter.safetensors").is_file()
    tuned, targets = load_pretrained(out / "model").state_dict(), ("in_proj", "out_proj", "fc1", "fc2")
    for key, w0 in base.state_dict().items():
        adapted = key.endswith(".weight") and key.rsplit(".", 2)[-2] in targets
        assert adapted or torch.equal(tuned[key], w0), key
    assert any(not torch.equal(tuned[k], w0) for k, w0 in base.state_dict().items())


def test_finetune_user_errors(tmp_path, tiny_checkpoint, motif_data, capsys) -> None:
    from dnalm.cli import main, run
    from dnalm.errors import InputError

    with pytest.raises(SystemExit) as exc:
        main(["finetune", f"checkpoint={tmp_path / 'none'}", f"data.path={motif_data}"])
    assert exc.value.code == 2 and "checkpoint not found" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="data.path"):
        run(["finetune", f"checkpoint={tiny_checkpoint}"])
    with pytest.raises(ConfigError, match="task.kind"):
        run(["finetune", f"checkpoint={tiny_checkpoint}", f"data.path={motif_data}", "task.kind=ranking"])
    bad = tmp_path / "bad.csv"
    bad.write_text("sequence,label\nACGT,0\nACGT,2\nACGA,1\n")
    with pytest.raises(InputError, match=r"bad.csv:3: label '2' is not a known class"):
        run(["finetune", f"checkpoint={tiny_checkpoint}", f"data.path={motif_data / 'train.csv'}",
             f"out={tmp_path / 'o'}", f"data.dev={bad}", *FAST])
    no_column = tmp_path / "nocol.csv"
    no_column.write_text("seq,label\nACGT,0\n")
    with pytest.raises(InputError, match=r"nocol.csv:1: missing column 'sequence'"):
        run(["finetune", f"checkpoint={tiny_checkpoint}", f"data.path={no_column}", f"out={tmp_path / 'o'}", *FAST])
    too_long = tmp_path / "long.csv"
    too_long.write_text("sequence,label\nACGT,0\n" + "A" * 2000 + ",1\n")
    with pytest.raises(InputError, match=r"long.csv:3: 2,001 tokens, more than the model's context l_max="):
        run(["finetune", f"checkpoint={tiny_checkpoint}", f"data.path={too_long}", f"out={tmp_path / 'o'}", *FAST])
    assert not (tmp_path / "o").exists()  # bad inputs leave no output directory behind


def test_shipped_task_configs_compose(shared_data) -> None:
    from dnalm.config import compose, to_dataclass
    from dnalm.data.datamodule import LabeledDataConfig, LabeledDataModule
    from dnalm.recipes.finetune import resolved
    from dnalm.tokenizers import CharTokenizer

    for name, folder in (("gue_prom_core_all", "gue/prom/prom_core_all"), ("gue_tf0", "gue/tf/0")):
        cfg = compose("finetune", [f"task={name}", f"data_root={shared_data}", "checkpoint=x"])
        assert cfg.task.kind == "classification"
        data = to_dataclass(resolved(cfg).data, LabeledDataConfig, where="data")
        paths = LabeledDataModule(data, CharTokenizer()).paths()
        assert paths["train"] == str(shared_data / folder / "train.csv")
        assert paths["dev"] == str(shared_data / folder / "dev.csv")



def test_shipped_task_away_from_the_repo_root_names_data_root(tmp_path, tiny_checkpoint, motif_data, monkeypatch,
                                                              capsys) -> None:
    """dnalm finetune checkpoint=... task=gue_prom_core_all trainer=gpu data.rc_aug=true data.rc_eval=true, run
    from another folder on a machine without a GPU: the missing data is one line naming data_root=; with
    data_root=DIR it fine-tunes (on the CPU)."""
    import json
    import shutil

    from dnalm.cli import main, run

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    argv = ["finetune", f"checkpoint={tiny_checkpoint}", "task=gue_prom_core_all", "trainer=gpu", "data.rc_aug=true",
            "data.rc_eval=true"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1, err
    assert "../shared/data/gue/prom/prom_core_all" in err and "data_root=" in err and "gue/prom/prom_core_all" in err
    shutil.copytree(motif_data, tmp_path / "data" / "gue" / "prom" / "prom_core_all")
    assert run([*argv, "data_root=data", "out=ft", "trainer.max_epochs=1", "trainer.progress_bar=false"]) == 0
    assert "finetune: no GPU found, running on the CPU" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert metrics["test"]["n"] == 64 and metrics["epochs"] == 1
