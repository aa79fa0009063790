"""`dnalm finetune` classification from Mamba (causal) and Caduceus (masked, RCPS: hidden states of width
2 d_model) checkpoints, full and LoRA on the family's targets, end to end on a few GUE-format rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _finetune_helpers import assert_saved_classifier_gives_the_test_loss
from safetensors.torch import load_file

from dnalm.models.families import family
from dnalm.models.io import save_pretrained
from dnalm.models.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from dnalm.models.mamba import CaduceusConfig, CaduceusLM, MambaConfig, MambaLM

FAST = ["trainer.progress_bar=false", "trainer.accelerator=cpu", "trainer.log_every_n_steps=1", "task.dropout=0"]


def _gue_rows(root: Path) -> None:
    """GUE-format splits (sequence,label) with a motif in class 1."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 16), ("dev", 8), ("test", 8)):
        lines = ["sequence,label"]
        for i in range(n):
            seq = "".join(rng.choice(list("ACGT"), int(rng.integers(20, 36))))
            if i % 2:
                seq = seq[:5] + "GGGGGGGG" + seq[13:]
            lines.append(f"{seq},{i % 2}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ssm")
    torch.manual_seed(0)
    save_pretrained(MambaLM(MambaConfig(d_model=16, n_layer=1, d_state=4)), root / "mamba")
    save_pretrained(CaduceusLM(CaduceusConfig(d_model=16, n_layer=1, d_state=4, rcps=True)), root / "caduceus")
    _gue_rows(root / "gue")
    return {"mamba": root / "mamba", "caduceus": root / "caduceus", "gue": root / "gue"}


@pytest.mark.parametrize("name", ["mamba", "caduceus"])
@pytest.mark.parametrize("lora", [False, True])
def test_finetune_cli_end_to_end(tmp_path, setup, name: str, lora: bool) -> None:
    """The head reads the backbone's hidden width (32 for Caduceus's two streams); LoRA adapts exactly the family's
    targets; the saved classifier reproduces the reported test loss."""
    from dnalm.cli import run
    from dnalm.tokenizers import load_tokenizer

    checkpoint, data, out = setup[name], setup["gue"], tmp_path / "run"
    assert run(["finetune", f"checkpoint={checkpoint}", f"data.path={data}", f"out={out}", "trainer.max_epochs=1",
                "data.batch_size=8", "optim.lr=1e-2", f"lora.enabled={lora}", *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n"] == 8 and metrics["steps"] == 2 and metrics["lora"] is lora
    saved = out / ("adapter" if lora else "model")
    head = json.loads((saved / (ADAPTER_CONFIG if lora else "head.json")).read_text())
    head = head["head"] if lora else head
    assert head["d_model"] == (32 if name == "caduceus" else 16)
    if lora:
        config = json.loads((saved / ADAPTER_CONFIG).read_text())
        targets = family(name).lora_targets
        assert tuple(config["target_modules"]) == targets and config["family"] == name
        adapted = {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in load_file(str(saved / ADAPTER_WEIGHTS))
                   if ".lora_" in k}
        assert adapted == set(targets)
    tokenizer = load_tokenizer(saved)
    assert tokenizer.type == "char"
    assert_saved_classifier_gives_the_test_loss(saved, checkpoint, lora, tokenizer, data / "test.csv",
                                                metrics["test"]["loss"])
