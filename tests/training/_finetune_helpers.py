"""What the fine-tuning tests of several families check the same way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dnalm.data.datasets import LabeledCollator
from dnalm.models.hyena import HyenaConfig, HyenaLM

#: The tiny HyenaDNA the classification fine-tuning tests start from.
TINY = HyenaConfig(d_model=16, n_layer=2, d_inner=32, l_max=66, filter_order=8, embed_dropout=0.0)


@pytest.fixture(scope="module", name="tiny_checkpoint")
def tiny_checkpoint_fixture(tmp_path_factory) -> str:
    """A randomly initialised :data:`TINY` saved with the character tokenizer."""
    from dnalm.models.io import save_pretrained
    from dnalm.tokenizers import CharTokenizer

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_pretrained(HyenaLM(TINY), path, tokenizer=CharTokenizer())
    return str(path)


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
