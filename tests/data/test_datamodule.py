"""GenomeDataModule / LabeledDataModule: batches, epochs, sharding by rank, warm-up stages, Lightning."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from _prepared_helpers import random_sequence, write_prepared

from conftest import shared_file
from dnalm.data.datamodule import (
    EpochBatchSampler,
    GenomeDataConfig,
    GenomeDataModule,
    LabeledDataConfig,
    LabeledDataModule,
)
from dnalm.data.datasets import WindowDataset
from dnalm.errors import InputError
from dnalm.tokenizers import CharTokenizer


@pytest.fixture()
def prepared(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    records = {f"chr{i}": random_sequence(rng, 600, n_frac=0.01, soft_frac=0.2) for i in range(3)}
    splits = {"train": [("chr0", 0, 600), ("chr1", 0, 600)], "val": [("chr2", 0, 350)], "test": [("chr2", 350, 600)]}
    return write_prepared(tmp_path / "p", records, splits)


def test_epoch_batch_sampler_shards_by_rank():
    train = [list(EpochBatchSampler(23, 4, drop_last=True, num_replicas=2, rank=r)) for r in range(2)]
    assert [len(t) for t in train] == [2, 2]  # 5 full batches, 4 shared evenly
    seen = np.concatenate([idx for t in train for _, idx, _ in t])
    assert sorted(seen.tolist()) == list(range(16))
    evals = [list(EpochBatchSampler(23, 4, num_replicas=4, rank=r)) for r in range(4)]
    assert [len(e) for e in evals] == [2, 2, 2, 2]  # 6 batches (the last of 3) + 2 padding copies
    real = [idx for e in evals for _, idx, pad in e if not pad]
    assert sorted(np.concatenate(real).tolist()) == list(range(23))
    assert [pad for e in evals for _, _, pad in e].count(True) == 2
    s = EpochBatchSampler(10, 10, shuffle=True, seed=1)
    first = next(iter(s))[1]
    s.set_epoch(1)
    epoch, second, _ = next(iter(s))
    assert epoch == 1 and sorted(first.tolist()) == sorted(second.tolist()) and first.tolist() != second.tolist()
    assert len(s) == 1 and len(EpochBatchSampler(23, 4, num_replicas=4, rank=0)) == 2


def test_genome_datamodule_batches_follow_the_epoch(prepared):
    cfg = GenomeDataConfig(path=str(prepared), length=32, batch_size=4, samples_per_epoch=20, rc_aug=True, seed=7)
    dm = GenomeDataModule(cfg)
    dm.setup("fit")
    loader = dm.train_dataloader()
    batches0 = list(loader)
    assert len(batches0) == 5 and batches0[0]["input_ids"].shape == (4, 32)
    reference = WindowDataset(prepared, "train", 32, rc_aug=True, seed=7, samples_per_epoch=20)
    assert torch.equal(batches0[1]["targets"], reference.get_batch([4, 5, 6, 7], epoch=0)["targets"])
    dm.set_epoch(1)
    batches1 = list(loader)
    assert torch.equal(batches1[1]["input_ids"], reference.get_batch([4, 5, 6, 7], epoch=1)["input_ids"])
    assert not torch.equal(batches0[1]["input_ids"], batches1[1]["input_ids"])
    val = list(dm.val_dataloader())
    scored = sum(int((b["loss_weight"] > 0).sum()) for b in val)
    n_val = int((np.fromfile(prepared / "tokens.u8", np.uint8)[1200 + 1:1200 + 350] != 11).sum())
    assert scored == n_val  # every non-N base after the first of the split, once
    assert len(list(dm.test_dataloader())) == 2  # 250 bases: 8 windows of 32 -> 2 batches


def test_genome_datamodule_workers_give_the_same_batches(prepared):
    cfg = GenomeDataConfig(path=str(prepared), length=16, batch_size=3, samples_per_epoch=12, num_workers=1)
    with_worker = [b["input_ids"] for b in GenomeDataModule(cfg).train_dataloader()]
    cfg.num_workers = 0
    in_process = [b["input_ids"] for b in GenomeDataModule(cfg).train_dataloader()]
    assert len(with_worker) == 4 and all(torch.equal(a, b) for a, b in zip(with_worker, in_process))


def test_genome_datamodule_warmup_stage_state_and_missing_splits(prepared):
    cfg = GenomeDataConfig(path=str(prepared), length=16, batch_size=8, samples_per_epoch=64, eval_max_windows=3,
                           val_split="dev")
    dm = GenomeDataModule(cfg)
    assert next(iter(dm.train_dataloader()))["input_ids"].shape == (8, 16)
    dm.set_length(64, batch_size=2)
    assert next(iter(dm.train_dataloader()))["input_ids"].shape == (2, 64)
    state = dm.state_dict()
    fresh = GenomeDataModule(cfg)
    fresh.load_state_dict(state)
    assert fresh.config.length == 64 and fresh.config.batch_size == 2
    assert dm.val_dataloader() == []
    test_batches = list(dm.test_dataloader())
    assert sum(b["input_ids"].shape[0] for b in test_batches) == 3
    bad = GenomeDataModule(GenomeDataConfig(path=str(prepared), train_split="training"))
    with pytest.raises(InputError, match="no split 'training'"):
        bad.setup("fit")


class _TinyLM(L.LightningModule):
    """Embedding + linear next-token model that records the batches it trains on."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(12, 8)
        self.out = torch.nn.Linear(8, 12)
        self.seen: list[tuple[int, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append((self.current_epoch, batch["input_ids"].clone()))
        logits = self.out(self.emb(batch["input_ids"]))
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), reduction="none")
        return (loss * batch["loss_weight"].flatten()).sum() / batch["loss_weight"].sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_sets_the_sampler_epoch(prepared):
    cfg = GenomeDataConfig(path=str(prepared), length=16, batch_size=4, samples_per_epoch=8, seed=3)
    dm, model = GenomeDataModule(cfg), _TinyLM()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    reference = WindowDataset(prepared, "train", 16, seed=3, samples_per_epoch=8)
    assert [e for e, _ in model.seen] == [0, 0, 1, 1]
    for k, (epoch, ids) in enumerate(model.seen):
        assert torch.equal(ids, reference.get_batch(np.arange(4) + 4 * (k % 2), epoch=epoch)["input_ids"])


def test_labeled_datamodule_gue_layout(tmp_path):
    rows = {"train": ["ACGT,b", "GG,a", "TTTA,b", "CA,a", "A,c"], "dev": ["ACG,a", "T,c"], "test": ["GGG,b"]}
    for split, lines in rows.items():
        (tmp_path / f"{split}.csv").write_text("sequence,label\n" + "\n".join(lines) + "\n")
    cfg = LabeledDataConfig(path=str(tmp_path), batch_size=2, padding_side="left", rc_aug=True, seed=2)
    dm = LabeledDataModule(cfg, CharTokenizer(add_eos=False))
    dm.setup("fit")
    assert dm.classes == ["a", "b", "c"] and dm.num_classes == 3
    train = list(dm.train_dataloader())
    assert [b["input_ids"].shape[0] for b in train] == [2, 2, 1]
    assert sorted(torch.cat([b["labels"] for b in train]).tolist()) == [0, 0, 1, 1, 2]
    b = train[0]
    assert (b["attention_mask"].sum(1) == b["lengths"]).all()
    assert (b["input_ids"][b["attention_mask"] == 0] == 4).all() and (b["attention_mask"][:, -1] == 1).all()
    dev = list(dm.val_dataloader())
    assert dev[0]["labels"].tolist() == [0, 2] and dev[0]["input_ids"].tolist() == [[7, 8, 9], [4, 4, 10]]
    assert list(dm.test_dataloader())[0]["labels"].tolist() == [1]


def test_labeled_datamodule_real_gue_promoters():
    root = shared_file("gue", "prom", "prom_core_all")
    tok = CharTokenizer()
    dm = LabeledDataModule(LabeledDataConfig(path=str(root), batch_size=16), tok)
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"].shape == (16, 70 + tok.num_special_tokens)
    assert dm.num_classes == 2 and len(dm.dataset("train")) == 47356
