"""Fine-tuning the masked and the byte-level families: DNABERT-2 (BPE, padding + attention mask, mean and
[CLS] pooling) and StripedHyena 2 (byte tokens), full and LoRA, and the shipped DNABERT-2 GUE recipe."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _finetune_helpers import assert_saved_classifier_gives_the_test_loss

from dnalm.data.datasets import LabeledCollator, truncate_tokens
from dnalm.models.dnabert2 import Dnabert2Config, Dnabert2Model, Dnabert2Tokenizer
from dnalm.models.heads import SequenceClassifier

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
DNABERT2 = FIXTURES / "dnabert2_tiny"
STRIPEDHYENA = FIXTURES / "stripedhyena2_tiny"
FAST = ["trainer.progress_bar=false", "trainer.accelerator=cpu", "trainer.log_every_n_steps=1", "task.dropout=0"]


@pytest.fixture(scope="module")
def bpe() -> Dnabert2Tokenizer:
    return Dnabert2Tokenizer.load(DNABERT2)


def _sequences(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list("ACGT"), int(rng.integers(5, 60)))) for _ in range(n)]


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_dnabert2_classifier_padded_batch_equals_one_by_one(bpe, pooling: str, side: str) -> None:
    """BPE gives every sequence its own token count; a padded batch (either side) gives, in float64, the outputs
    of each sequence run alone to 1e-10: the attention mask reaches the encoder and pooling reads real tokens
    only."""
    torch.manual_seed(0)
    config = Dnabert2Config(vocab_size=bpe.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=48, hidden_dropout_prob=0.0)
    model = SequenceClassifier(Dnabert2Model(config, dtype=torch.float64), 3, pooling=pooling, dropout=0.0,
                               dtype=torch.float64).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    rows = [torch.as_tensor(bpe.encode(s)) for s in _sequences(6, 1)]
    assert len({len(r) for r in rows}) > 2
    batch = LabeledCollator(pad_id=bpe.pad_id, padding_side=side)([{"input_ids": r, "labels": 0} for r in rows])
    with torch.no_grad():
        together = model(batch["input_ids"], batch["attention_mask"])
        alone = torch.cat([model(r[None]) for r in rows])
        # the mask matters: without it the padded rows differ
        unmasked = model(batch["input_ids"])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-10)
    assert (unmasked - alone).abs().max() > 1e-3
    if pooling == "cls":  # the [CLS] hidden state of the last layer
        (h,) = model.backbone.hidden_states(rows[0][None], [-1])
        torch.testing.assert_close(model.features(rows[0][None]), h[:, 0], rtol=0, atol=0)


def test_truncation_keeps_the_end_token(bpe) -> None:
    """DNABERT-2's model_max_length counts [CLS] and [SEP]: a long sequence keeps its first tokens and [SEP]."""
    ids = np.asarray(bpe.encode("ACGTTGCA" * 20))
    cut = truncate_tokens(ids, 10, bpe)
    assert len(cut) == 10 and cut[0] == bpe.bos_id and cut[-1] == bpe.eos_id
    np.testing.assert_array_equal(cut[:9], ids[:9])
    assert truncate_tokens(ids, None, bpe) is ids


def test_dnabert2_lora_trains_only_adapters_and_head(bpe) -> None:
    """LoRA on the family's targets (Wqkv, dense, gated_layers, wo): after an optimizer step only the adapters
    and the head have moved."""
    from dnalm.models.lora import LoraSettings, apply_lora, resolve_targets
    from dnalm.training.classify import finetune_param_groups

    torch.manual_seed(0)
    config = Dnabert2Config(vocab_size=bpe.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=48)
    model = SequenceClassifier(Dnabert2Model(config), 2, pooling="mean")
    assert resolve_targets(model, None) == ["Wqkv", "dense", "gated_layers", "wo"]
    apply_lora(model, LoraSettings(enabled=True, r=4))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    for suffix in ("Wqkv", "attention.output.dense", "gated_layers", "mlp.wo"):
        assert any(f"{suffix}.lora_A" in n for n in trainable), suffix
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(finetune_param_groups(model, lr=1e-2, weight_decay=0.0))
    batch = LabeledCollator(pad_id=bpe.pad_id)([{"input_ids": torch.as_tensor(bpe.encode(s)), "labels": i % 2}
                                               for i, s in enumerate(_sequences(4, 2))])
    model.train()
    loss = model.loss(model(batch["input_ids"], batch["attention_mask"]), batch["labels"])
    loss.backward()
    opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and moved <= trainable
    assert any(n.startswith("head.") for n in moved) and any("lora_B" in n for n in moved)


def _gue_rows(root: Path, n_train: int = 24) -> None:
    """GUE-format splits (sequence,label) with a motif in class 1."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", 8), ("test", 8)):
        lines = ["sequence,label"]
        for i in range(n):
            seq = "".join(rng.choice(list("ACGT"), int(rng.integers(30, 50))))
            if i % 2:
                seq = seq[:5] + "GGGGGGGG" + seq[13:]
            lines.append(f"{seq},{i % 2}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture
def vortex_dir(tmp_path) -> Path:
    """The StripedHyena 2 fixture in the vortex layout: its weight file and config alone in a directory."""
    d = tmp_path / "sh2"
    d.mkdir()
    for name in ("model.pt", "config.json"):
        shutil.copy(STRIPEDHYENA / name, d / name)
    return d


@pytest.mark.parametrize("family", ["dnabert2", "stripedhyena"])
@pytest.mark.parametrize("lora", [False, True])
def test_finetune_cli_end_to_end(tmp_path, vortex_dir, family: str, lora: bool) -> None:
    """`dnalm finetune` on a few GUE-format rows from the hub (DNABERT-2) and vortex (StripedHyena 2) layouts: the
    family's tokenizer is saved with the result, and the saved classifier reproduces the reported test loss."""
    from dnalm.cli import run
    from dnalm.tokenizers import load_tokenizer

    checkpoint = DNABERT2 if family == "dnabert2" else vortex_dir
    data = tmp_path / "gue"
    _gue_rows(data)
    out = tmp_path / "run"
    assert run(["finetune", f"checkpoint={checkpoint}", f"data.path={data}", f"out={out}", "trainer.max_epochs=1",
                "data.batch_size=8", "optim.lr=1e-3", f"lora.enabled={lora}", *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n"] == 8 and metrics["steps"] == 3 and metrics["lora"] is lora
    saved = out / ("adapter" if lora else "model")
    tokenizer = load_tokenizer(saved)
    assert tokenizer.type == ("dnabert2" if family == "dnabert2" else "byte")
    assert_saved_classifier_gives_the_test_loss(saved, checkpoint, lora, tokenizer, data / "test.csv",
                                                metrics["test"]["loss"])


def test_dnabert2_gue_recipe(tmp_path, shared_data) -> None:
    """The shipped DNABERT-2 recipe composes with the paper's settings for prom_core_all and tf/0, and runs end to
    end on GUE-format rows (max 20 BPE tokens per sequence, [CLS] pooling)."""
    from dnalm.cli import run
    from dnalm.config import compose

    # run_dnabert2.sh: (max length, warm-up, epochs, batch, eval every) per task group; train.py's defaults
    recipes = (("gue_prom_core_all_dnabert2", 20, 50, 4, 32, 400, "gue/prom/prom_core_all"),
               ("gue_tf0_dnabert2", 30, 30, 3, 8, 200, "gue/tf/0"))
    for task, max_length, warmup, epochs, batch, every, folder in recipes:
        cfg = compose("finetune", [f"task={task}", "checkpoint=x", "trainer=gpu"])
        assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.warmup_steps) == (3e-5, 0.01, warmup)
        assert (cfg.optim.decay, cfg.optim.min_lr_ratio, cfg.optim.grad_clip) == ("linear", 0.0, 1.0)
        assert (cfg.data.batch_size, cfg.data.max_length, cfg.trainer.max_epochs) == (batch, max_length, epochs)
        assert cfg.task.pooling == "cls" and cfg.task.pooler and cfg.task.patience is None and cfg.seed == 42
        assert cfg.trainer.val_check_interval == every and cfg.data.path.endswith(folder)
    root = tmp_path / "root"
    _gue_rows(root / "gue" / "prom" / "prom_core_all", n_train=64)
    out = tmp_path / "rec"
    assert run(["finetune", f"checkpoint={DNABERT2}", "task=gue_prom_core_all_dnabert2", f"data_root={root}",
                f"out={out}", "trainer.progress_bar=false", "trainer.accelerator=cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 8 and metrics["test"]["n"] == 8
    head = json.loads((out / "model" / "head.json").read_text())
    assert head["pooling"] == "cls" and head["pooler"] and head["inputs"]["max_length"] == 20
