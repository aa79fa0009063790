"""A fine-tuned sequence classifier (or regressor) applied to new sequences.

``dnalm finetune`` saves a classifier as a model directory with ``head.json`` (or, with LoRA, an adapter
directory with ``adapter_config.json``); :func:`load_sequence_model` reads either and
:func:`classify_rows` runs it the way fine-tuning evaluated it: each sequence tokenized as in training
(cut to the training ``max_length`` when one was set), right-padded batches through
:class:`~dnalm.models.heads.SequenceClassifier`, and, for a model evaluated on both strands
(``data.rc_eval=true``), the mean of the two strands' class log-probabilities
(:func:`dnalm.training.classify.both_strands`).

API
---
``load_sequence_model(path, base=None) -> LoadedClassifier`` (model in eval mode, tokenizer, options)
``classify_rows(model, rows, rc_rows=None, batch_size=64) -> (N, C) float64``: class log-probabilities
    (classification) or predictions (regression); ``rows`` are token id arrays (n_i,).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dnalm.errors import InputError
from dnalm.inference.scoring import bucket_batches, pad_batch
from dnalm.models.heads import HEAD_CONFIG, SequenceClassifier, load_classifier, read_head_config
from dnalm.tokenizers import PAD_ID
from dnalm.utils import track

ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class LoadedClassifier:
    """A sequence model with its tokenizer, class names and the input options it was fine-tuned with:
    ``both_strands`` (dev/test scored on both strands) and ``max_length`` (tokens kept per sequence)."""

    model: SequenceClassifier
    tokenizer: Any
    classes: list[str] | None
    both_strands: bool = False
    max_length: int | None = None
    info: dict[str, Any] = field(default_factory=dict)


def is_sequence_model(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a fine-tuned classifier/regressor: ``head.json``, an adapter with a head, or a
    DNABERT-2 classifier in the hub layout."""
    path = Path(path)
    if (path / HEAD_CONFIG).is_file():
        return True
    if (path / ADAPTER_CONFIG).is_file():
        from dnalm.models.lora import read_adapter_config

        return bool(read_adapter_config(path).get("head"))
    from dnalm.models.dnabert2 import is_hub_classifier_dir

    return is_hub_classifier_dir(path)


def load_sequence_model(path: str | os.PathLike, base: str | os.PathLike | None = None) -> LoadedClassifier:
    """The classifier of a ``dnalm finetune`` output: ``model/`` (head.json) or a LoRA ``adapter/`` (merged into
    its base, the recorded ``base_model`` unless ``base`` is given); or a DNABERT-2 classifier in the hub layout
    (:func:`dnalm.models.dnabert2.load_hub_classifier`)."""
    from dnalm.models.dnabert2 import is_hub_classifier_dir, load_hub_classifier
    from dnalm.tokenizers import CharTokenizer, load_tokenizer

    path = Path(path)
    if (path / HEAD_CONFIG).is_file():
        info = read_head_config(path)
        model = load_classifier(path)
        directories = [path]
    elif (path / ADAPTER_CONFIG).is_file():
        from dnalm.models.lora import merge_lora, read_adapter_config

        info = read_adapter_config(path)
        if not info.get("head"):
            raise InputError(f"{path}: a LoRA adapter of a language model, not of a classifier (no head)")
        source = base or info.get("base_model")
        if not source or not Path(source).exists():
            raise InputError(f"{path}: its base model {source!r} is not there; set base=PATH")
        model = merge_lora(source, path)
        directories = [path, Path(source) if Path(source).is_dir() else Path(source).parent]
    elif is_hub_classifier_dir(path):
        model = load_hub_classifier(path)
        info = {"pooling": "cls", "pooler": True, "source": "BertForSequenceClassification"}
        directories = [path]
    else:
        raise InputError(f"{path}: not a fine-tuned classifier (no {HEAD_CONFIG}, no {ADAPTER_CONFIG}); "
                         "'dnalm finetune' writes one into <out>/model (or <out>/adapter with LoRA)")
    if not isinstance(model, SequenceClassifier):
        raise InputError(f"{path}: holds a {type(model).__name__}, not a sequence classifier")
    tokenizer = None
    for directory in directories:
        try:
            tokenizer = load_tokenizer(directory)
            break
        except InputError:
            continue
    inputs = info.get("inputs") or {}
    return LoadedClassifier(model.eval(), tokenizer or CharTokenizer.hyenadna(), model.classes,
                            bool(inputs.get("both_strands", False)), inputs.get("max_length"), info)


def context_of(model: SequenceClassifier) -> int | None:
    """The longest input the backbone takes in one forward (Hyena ``l_max``, Transformer ``max_len``)."""
    config = getattr(model.backbone, "config", None)
    return getattr(config, "l_max", None) or getattr(config, "max_len", None)


@torch.no_grad()
def classify_rows(model: SequenceClassifier, rows: Sequence[np.ndarray], rc_rows: Sequence[np.ndarray] | None = None,
                  batch_size: int = 64, progress: bool = False, pad_id: int = PAD_ID) -> np.ndarray:
    """Outputs (N, C) float64 of ``rows`` (token ids (n_i,) each): class log-probabilities for a classifier,
    predictions for a regressor; with ``rc_rows`` (the reverse complements' ids) both strands are combined
    as in fine-tuning's evaluation. Batches of similar length, right-padded with ``pad_id`` (the checkpoint
    tokenizer's; real tokens never see padding)."""
    from dnalm.training.classify import both_strands

    model.eval()
    device = next(model.parameters()).device
    out = np.empty((len(rows), model.n_outputs), dtype=np.float64)
    batches = bucket_batches([len(r) for r in rows], batch_size, max_tokens=1 << 62)
    it: Iterable[list[int]] = track(batches, total=len(batches), desc="classifying", unit="batch") if progress \
        else batches
    for batch in it:
        y = model(*pad_batch([rows[i] for i in batch], pad_id, device))
        if rc_rows is not None:
            y = both_strands(y, model(*pad_batch([rc_rows[i] for i in batch], pad_id, device)), model.task)
        if model.task == "classification":
            y = y.float().log_softmax(-1)
        out[batch] = y.double().cpu().numpy()
    return out
