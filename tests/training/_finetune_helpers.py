"""What the fine-tuning tests of several families check the same way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dnalm.data.datasets import LabeledCollator


def assert_saved_classifier_gives_the_test_loss(saved: Path, checkpoint: Path, lora: bool, tokenizer,
                                                test_csv: Path, test_loss: float) -> None:
    """The classifier saved in ``saved`` (``model/``, or with LoRA ``adapter/`` over ``checkpoint``), run on the
    test split ``test_csv`` as one padded batch, reproduces the test loss the run reported."""
    from dnalm.inference.classify import load_sequence_model

    loaded = load_sequence_model(saved, base=checkpoint if lora else None)
    df = pd.read_csv(test_csv)
    items = [{"input_ids": torch.as_tensor(tokenizer.encode(s)), "labels": 0} for s in df["sequence"]]
    batch = LabeledCollator(pad_id=tokenizer.pad_id)(items)
    with torch.no_grad():
        logits = loaded.model.eval()(batch["input_ids"], batch["attention_mask"])
    ce = torch.nn.functional.cross_entropy(logits.float(), torch.as_tensor(np.array(df["label"])))
    assert test_loss == pytest.approx(float(ce), rel=1e-4)
