"""Checkpoint directories: contents, atomic writes, refusal of pickled code, resume lookup, crash recovery,
and the training loader that resumes mid-epoch."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dnalm.data.datamodule import GenomeDataConfig
from dnalm.errors import InputError
from dnalm.models.hyena import HyenaConfig, HyenaLM
from dnalm.models.io import load_pretrained, read_pretrained_info
from dnalm.tokenizers import CharTokenizer, load_tokenizer
from dnalm.training.checkpoint import (
    TRAINING_STATE,
    DirectoryCheckpointIO,
    ResumableGenomeDataModule,
    data_position,
    find_resume_checkpoint,
    read_training_state,
    recover_run_dir,
    rng_states,
    set_rng_states,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from _prepared_helpers import random_sequence, write_prepared  # noqa: E402


def _model() -> HyenaLM:
    torch.manual_seed(0)
    return HyenaLM(HyenaConfig(d_model=16, n_layer=2, d_inner=32, l_max=66))


def _lightning_like_checkpoint(model: HyenaLM, step: int) -> dict:
    """What Lightning's dump_checkpoint hands a CheckpointIO (the parts that matter here)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(7, 11, (2, 8))).sum().backward()
    opt.step()
    return {"state_dict": {"model." + k: v for k, v in model.state_dict().items()}, "global_step": step, "epoch": 1,
            "optimizer_states": [opt.state_dict()], "lr_schedulers": [{"last_epoch": step}],
            "loops": {"fit_loop": {"state_dict": {"combined_loader": [{"epoch": 1, "batches": 7}]}}},
            "pytorch-lightning_version": "2.6.0"}


def _temp_leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith((".tmp", ".old"))]


def test_checkpoint_directory_is_self_describing_and_round_trips(tmp_path):
    model = _model()
    io = DirectoryCheckpointIO(model, CharTokenizer.hyenadna(), extra={"run": "t"})
    ckpt = _lightning_like_checkpoint(model, step=12)
    io.save_checkpoint(ckpt, tmp_path / "step-00000012", storage_options={"extra": {"best": {"val/loss": 1.5}}})
    d = tmp_path / "step-00000012"
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json",
                                                    TRAINING_STATE]
    assert not _temp_leftovers(tmp_path)
    loaded = load_pretrained(d)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert loaded.backbone.embeddings.word_embeddings.weight is loaded.lm_head.weight
    extra = read_pretrained_info(d)["extra"]
    assert extra == {"run": "t", "global_step": 12, "epoch": 1, "best": {"val/loss": 1.5}}
    assert load_tokenizer(d) == CharTokenizer.hyenadna()
    back = io.load_checkpoint(d)
    assert set(back["state_dict"]) == set(ckpt["state_dict"])
    for k, v in ckpt["state_dict"].items():
        assert torch.equal(back["state_dict"][k], v)
    assert back["global_step"] == 12 and data_position(back) == {"epoch": 1, "batches": 7}
    exp_avg = ckpt["optimizer_states"][0]["state"][0]["exp_avg"]
    assert torch.equal(back["optimizer_states"][0]["state"][0]["exp_avg"], exp_avg)


def test_weights_only_save_has_no_training_state(tmp_path):
    model = _model()
    ckpt = {"state_dict": {"model." + k: v for k, v in model.state_dict().items()}, "global_step": 3, "epoch": 0}
    DirectoryCheckpointIO(model).save_checkpoint(ckpt, tmp_path / "best")
    assert not (tmp_path / "best" / TRAINING_STATE).exists()
    assert read_pretrained_info(tmp_path / "best")["extra"]["global_step"] == 3
    with pytest.raises(InputError, match="not a resumable checkpoint"):
        read_training_state(tmp_path / "best")


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    model = _model()
    io = DirectoryCheckpointIO(model)
    target = tmp_path / "best"
    io.save_checkpoint(_lightning_like_checkpoint(model, 1), target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint(_lightning_like_checkpoint(model, 2), target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert not _temp_leftovers(tmp_path)


class Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_training_state_with_pickled_code_is_refused(tmp_path):
    model = _model()
    DirectoryCheckpointIO(model).save_checkpoint(_lightning_like_checkpoint(model, 1), tmp_path / "c")
    torch.save({"global_step": 1, "evil": Payload()}, tmp_path / "c" / TRAINING_STATE)
    with pytest.raises(InputError, match=r"cannot read the training state \(Unsupported global: GLOBAL print was "
                                         r"not an allowed global by default\)") as err:
        read_training_state(tmp_path / "c")
    assert "weights_only" not in str(err.value)


@pytest.mark.parametrize(("content", "message"), [
    (b"", r"cannot read the training state \(unexpected end of file"),
    (b"\x80\x02}q\x00.", r"cannot read the training state \(.*"),
    (b"PK\x03\x04garbage", r"cannot read the training state \(PytorchStreamReader failed reading zip archive"),
])
def test_unreadable_training_state_is_one_line(tmp_path, content, message):
    model = _model()
    DirectoryCheckpointIO(model).save_checkpoint(_lightning_like_checkpoint(model, 1), tmp_path / "c")
    (tmp_path / "c" / TRAINING_STATE).write_bytes(content)
    with pytest.raises(InputError, match=message) as err:
        read_training_state(tmp_path / "c")
    assert "weights_only" not in str(err.value) and "\n" not in str(err.value)


def test_training_state_without_what_resuming_needs(tmp_path):
    model = _model()
    DirectoryCheckpointIO(model).save_checkpoint(_lightning_like_checkpoint(model, 1), tmp_path / "c")
    torch.save({"global_step": 5, "epoch": 0}, tmp_path / "c" / TRAINING_STATE)
    with pytest.raises(InputError, match=r"not a training state written by dnalm \(missing pytorch-lightning_version, "
                                         r"loops, optimizer_states\)"):
        read_training_state(tmp_path / "c")
    torch.save([1, 2], tmp_path / "c" / TRAINING_STATE)
    with pytest.raises(InputError, match=r"not a training state written by dnalm \(holds a list\)"):
        read_training_state(tmp_path / "c")


def test_resume_lookup_takes_the_newest_complete_checkpoint(tmp_path):
    model = _model()
    io = DirectoryCheckpointIO(model)
    ckdir = tmp_path / "checkpoints"
    assert find_resume_checkpoint(tmp_path) is None
    for step in (5, 10):
        io.save_checkpoint(_lightning_like_checkpoint(model, step), ckdir / f"step-{step:08d}")
    (ckdir / "step-00000015").mkdir()  # incomplete: no files
    (ckdir / "step-00000015" / "config.json").write_text("{}")
    assert find_resume_checkpoint(tmp_path) == ckdir / "step-00000010"


def test_recover_run_dir_removes_unfinished_writes_and_restores_a_replaced_output(tmp_path):
    (tmp_path / "checkpoints" / ".step-00000020.abc.tmp").mkdir(parents=True)
    (tmp_path / ".metrics.json.x.tmp").write_text("half")
    (tmp_path / ".best.old").mkdir()
    (tmp_path / ".best.old" / "config.json").write_text("{}")
    (tmp_path / "model").mkdir()
    (tmp_path / ".model.old").mkdir()
    removed = recover_run_dir(tmp_path)
    assert (tmp_path / "best" / "config.json").read_text() == "{}"
    assert not _temp_leftovers(tmp_path) and (tmp_path / "model").is_dir()
    assert len(removed) == 3


def test_rng_states_round_trip():
    states = rng_states()
    a = (random.random(), float(np.random.rand()), torch.rand(3))
    set_rng_states(states)
    b = (random.random(), float(np.random.rand()), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


@pytest.fixture()
def datamodule(tmp_path) -> ResumableGenomeDataModule:
    rng = np.random.default_rng(0)
    path = write_prepared(tmp_path / "prep", {"c1": random_sequence(rng, 3000), "c2": random_sequence(rng, 800)},
                          splits={"train": [("c1", 0, 3000)], "val": [("c2", 0, 800)]})
    return ResumableGenomeDataModule(GenomeDataConfig(path=str(path), length=32, batch_size=4, rc_aug=True))


def _epoch(loader, epoch: int) -> list[torch.Tensor]:
    loader.sampler.set_epoch(epoch)
    return [b["input_ids"] for b in loader]


def test_resumable_loader_continues_mid_epoch(datamodule):
    loader = datamodule.train_dataloader()
    n = len(loader)
    assert n == 3000 // 32 // 4
    full = _epoch(loader, 2)
    assert len(full) == n and not torch.equal(full[0], _epoch(loader, 3)[0])
    it = iter(loader)
    loader.sampler.set_epoch(2)
    for _ in range(5):
        next(it)
    state = loader.state_dict()
    assert state == {"epoch": 2, "batches": 5}

    fresh = datamodule.train_dataloader()
    fresh.load_state_dict(state)
    fresh.sampler.set_epoch(2)
    rest = [b["input_ids"] for b in fresh]
    assert len(rest) == n - 5 and all(torch.equal(a, b) for a, b in zip(rest, full[5:]))
    assert fresh.state_dict() == {"epoch": 3, "batches": 0}  # an epoch done: the next one starts afresh
    again = _epoch(fresh, 2)
    assert len(again) == n and torch.equal(again[0], full[0])
