"""Sequence-level heads on an LM backbone: classification and regression.

A :class:`SequenceClassifier` reads the hidden states of one layer of a backbone (any model of
:data:`dnalm.models.families.FAMILIES`: a causal LM such as ``HyenaLM``, ``StripedHyenaLM`` or ``MambaLM``, or
a bidirectional ``Dnabert2Model`` or ``CaduceusLM``, whose RCPS hidden states are ``2 d_model`` wide, the
:func:`backbone_width`), pools them over the
real (non-padding) tokens of each sequence and maps the pooled vector through dropout and a
Linear layer, as in HyenaDNA's sequence-classification fine-tuning (Nguyen et al. 2023, §4.2) and
DNABERT-2's GUE heads (Zhou et al. 2023, "DNABERT-2: Efficient Foundation Model and Benchmark for
Multi-Species Genome")::

    H = backbone.hidden_states(input_ids, [layer])   # (B, L, D)
    p = pool(H, attention_mask)                       # (B, D)
    p = tanh(W_p · p + b_p)                           # with pooler=True only (BERT's pooler)
    y = W · dropout(p) + b                            # (B, n_outputs)

Pooling (``m`` the attention mask, 1 on real tokens):

* ``mean``: ``sum_t m_t H_t / sum_t m_t``;
* ``max``: elementwise maximum over real tokens;
* ``last``: the last real token (the only one that has seen the whole sequence in a causal model);
  works with right or left padding;
* ``cls``: the first real token (a prepended ``[CLS]``/``[BOS]``).

In a causal model right padding leaves the hidden states of real tokens untouched; with left
padding the pads come first and reach every real token, so prefer ``padding_side: right``. A
bidirectional backbone (``causal`` False) would let every token see the padding, so it is given the
attention mask (``hidden_states(input_ids, [layer], attention_mask=...)``), which hides padded keys: a
padded batch gives the numbers of each sequence alone, on either padding side. DNABERT-2's GUE heads
pool ``cls`` (the ``[CLS]`` token) or ``mean`` (every real token, ``[CLS]`` and ``[SEP]`` included); its
published recipe classifies through BERT's pooler (``BertForSequenceClassification``: a dense D x D layer and tanh
on the ``[CLS]`` vector, new for fine-tuning since the MLM checkpoint has none), ``pooler=True`` here.

Losses: cross-entropy for classification (labels ``(B,)`` class ids), mean squared error for
regression (labels ``(B,)`` or ``(B, n_outputs)``).

A fine-tuned classifier is saved as a dnalm checkpoint of its backbone
(:func:`dnalm.models.io.save_pretrained`) plus ``head.safetensors`` and ``head.json``
(:func:`save_classifier`, :func:`load_classifier`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dnalm.errors import ConfigError, InputError
from dnalm.models.io import read_format_json

POOLINGS = ("mean", "max", "last", "cls")
TASKS = ("classification", "regression")
HEAD_FORMAT = "dnalm-head/1"
HEAD_WEIGHTS = "head.safetensors"
HEAD_CONFIG = "head.json"


def _mask_of(hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
    """Boolean mask (B, L); all true when ``attention_mask`` is None."""
    B, L = hidden.shape[:2]
    if attention_mask is None:
        return torch.ones(B, L, dtype=torch.bool, device=hidden.device)
    if attention_mask.shape != (B, L):
        raise ConfigError(f"attention_mask has shape {tuple(attention_mask.shape)}, hidden states {(B, L)}")
    return attention_mask.to(device=hidden.device).bool()


def pool(hidden: Tensor, attention_mask: Tensor | None = None, mode: str = "mean") -> Tensor:
    """Pool hidden states (B, L, D) over the real tokens of each row -> (B, D).

    ``attention_mask`` (B, L): 1 on real tokens, 0 on padding (either side); None means no padding.
    ``mode`` is one of :data:`POOLINGS` (see the module docstring). A row without real tokens
    pools to zeros. Means are accumulated in float32; the result has ``hidden.dtype``.
    """
    if mode not in POOLINGS:
        raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {mode!r}")
    m = _mask_of(hidden, attention_mask)  # (B, L)
    B, L, _ = hidden.shape
    rows = torch.arange(B, device=hidden.device)
    has_tokens = m.any(dim=1)  # (B,)
    if mode == "mean":
        w = m.to(torch.float32)[..., None]  # (B, L, 1)
        out = (hidden.float() * w).sum(1) / w.sum(1).clamp_min(1.0)
        return out.to(hidden.dtype)
    if mode == "max":
        out = hidden.masked_fill(~m[..., None], float("-inf")).amax(dim=1)
        return torch.where(has_tokens[:, None], out, torch.zeros_like(out))
    positions = torch.arange(L, device=hidden.device).expand(B, L)
    if mode == "last":
        idx = torch.where(m, positions, -1).amax(dim=1)  # (B,) last real position
    else:
        idx = torch.where(m, positions, L).amin(dim=1)  # (B,) first real position
    out = hidden[rows, idx.clamp(0, L - 1)]
    return torch.where(has_tokens[:, None], out, torch.zeros_like(out))


def head_loss(outputs: Tensor, labels: Tensor, task: str) -> Tensor:
    """Mean loss of a batch: cross-entropy on logits (B, C) vs class ids (B,), or MSE on (B, K) vs (B,) / (B, K)."""
    if task == "classification":
        return F.cross_entropy(outputs.float(), labels.long())
    if task == "regression":
        target = labels.float()
        if target.dim() == 1:
            target = target[:, None]
        if target.shape != outputs.shape:
            raise ConfigError(f"regression targets of shape {tuple(labels.shape)} do not fit outputs "
                              f"{tuple(outputs.shape)}")
        return F.mse_loss(outputs.float(), target)
    raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {task!r}")


def backbone_width(backbone: nn.Module) -> int:
    """Width ``D`` of a backbone's hidden states: its ``hidden_width`` where it has one (Caduceus with RCPS: two
    streams, ``2 d_model``), else its ``config.d_model`` or ``hidden_size``."""
    width = getattr(backbone, "hidden_width", None)
    if width is not None:
        return int(width)
    config = getattr(backbone, "config", None)
    d_model = getattr(config, "d_model", None) or getattr(config, "hidden_size", None)
    if d_model is None:
        raise ConfigError(f"{type(backbone).__name__} has no config.d_model; pass d_model to the head")
    return int(d_model)


class ClassifierHead(nn.Linear):
    """The output layer ``W p + b`` (a Linear, whose ``weight`` and ``bias`` keep their names in saved heads) with
    an optional ``pooler``: BERT's dense D x D layer, applied with tanh before the dropout."""

    def __init__(self, d_model: int, n_outputs: int, pooler: bool = False, device: torch.device | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__(d_model, n_outputs, device=device, dtype=dtype)
        self.pooler = nn.Linear(d_model, d_model, device=device, dtype=dtype) if pooler else None

    def pooled(self, p: Tensor) -> Tensor:
        """``tanh(W_p p + b_p)`` with a pooler, else ``p``."""
        return torch.tanh(self.pooler(p)) if self.pooler is not None else p


class SequenceClassifier(nn.Module):
    """Backbone -> pooled hidden states of one layer -> dropout -> Linear (see the module docstring).

    ``backbone`` must have ``hidden_states(input_ids, layers)`` (every ``CausalLM`` does); a backbone whose
    ``causal`` is False also takes ``attention_mask=`` there.
    ``n_outputs``: number of classes (classification) or of targets (regression).
    ``layer``: which hidden state to pool (``-1``: after the final LayerNorm; ``0``: embeddings).
    ``pooler``: BERT's dense + tanh on the pooled vector before the dropout (:class:`ClassifierHead`).
    """

    def __init__(self, backbone: nn.Module, n_outputs: int, task: str = "classification", pooling: str = "mean",
                 dropout: float = 0.1, layer: int = -1, d_model: int | None = None, pooler: bool = False,
                 device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        if task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if n_outputs < 1 or (task == "classification" and n_outputs < 2):
            raise ConfigError(f"{task} head needs {'>= 2 classes' if task == 'classification' else '>= 1 output'}, "
                              f"got {n_outputs}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"head dropout must be in [0, 1), got {dropout}")
        if not callable(getattr(backbone, "hidden_states", None)):
            raise ConfigError(f"{type(backbone).__name__} has no hidden_states(); a sequence head needs a neural LM")
        self.backbone = backbone
        self.task, self.pooling, self.layer, self.n_outputs = task, pooling, int(layer), int(n_outputs)
        D = d_model if d_model is not None else backbone_width(backbone)
        self.dropout = nn.Dropout(dropout)
        self.head = ClassifierHead(D, n_outputs, pooler=bool(pooler), device=device, dtype=dtype)
        self.classes: list[str] | None = None

    @classmethod
    def from_head_config(cls, backbone: nn.Module, config: Mapping[str, Any], where: str | os.PathLike
                         ) -> SequenceClassifier:
        """The classifier that :meth:`head_config` describes, its head freshly initialised; ``where`` (the
        file the config came from) names it in the one-line error for a missing key. Without ``d_model`` the
        head takes the backbone's width."""
        try:
            model = cls(backbone, int(config["n_outputs"]), task=config["task"], pooling=config["pooling"],
                        dropout=float(config["dropout"]), layer=int(config["layer"]), d_model=config.get("d_model"),
                        pooler=bool(config.get("pooler", False)))
        except KeyError as exc:
            raise InputError(f"{where}: head misses key {exc}") from None
        model.classes = config.get("classes")
        return model

    def features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Pooled hidden states (B, D) of ``input_ids`` (B, L)."""
        if getattr(self.backbone, "causal", True):
            (hidden,) = self.backbone.hidden_states(input_ids, [self.layer])  # (B, L, D)
        else:
            (hidden,) = self.backbone.hidden_states(input_ids, [self.layer], attention_mask=attention_mask)
        return pool(hidden, attention_mask, self.pooling)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """input_ids (B, L), attention_mask (B, L) -> logits or predictions (B, n_outputs)."""
        p = self.head.pooled(self.features(input_ids, attention_mask).to(self.head.weight.dtype))
        return self.head(self.dropout(p))

    def loss(self, outputs: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy or MSE of ``outputs`` (B, n_outputs) against ``labels`` (see :func:`head_loss`)."""
        return head_loss(outputs, labels, self.task)

    def head_config(self, classes: Sequence[str] | None = None) -> dict[str, Any]:
        """What :func:`load_classifier` needs to rebuild the head (JSON-able)."""
        return {"format": HEAD_FORMAT, "task": self.task, "n_outputs": self.n_outputs, "pooling": self.pooling,
                "layer": self.layer, "dropout": self.dropout.p, "d_model": self.head.in_features,
                "pooler": self.head.pooler is not None,
                "classes": list(classes) if classes is not None else None}


def save_classifier(model: SequenceClassifier, path: str | os.PathLike, tokenizer: Any = None,
                    classes: Sequence[str] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write ``path/`` atomically: the backbone as a dnalm checkpoint plus ``head.safetensors`` and ``head.json``.

    ``extra`` entries are added to ``head.json`` (e.g. the fine-tuning metrics or options).
    """
    from safetensors.torch import save_file

    from dnalm.models.io import save_pretrained
    from dnalm.utils import atomic_dir

    path = Path(path)
    with atomic_dir(path) as tmp:
        save_pretrained(model.backbone, tmp, tokenizer=tokenizer)
        state = {k: v.detach().contiguous().cpu() for k, v in model.head.state_dict().items()}
        save_file(state, str(tmp / HEAD_WEIGHTS), metadata={"format": HEAD_FORMAT})
        config = {**model.head_config(classes), **(extra or {})}
        (tmp / HEAD_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return path


def read_head_config(path: str | os.PathLike) -> dict[str, Any]:
    """``head.json`` of a saved classifier directory."""
    return read_format_json(Path(path) / HEAD_CONFIG, HEAD_FORMAT, "a saved sequence classifier")


def load_classifier(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> SequenceClassifier:
    """Inverse of :func:`save_classifier`; the class names are in ``model.classes``."""
    from safetensors.torch import load_file

    from dnalm.models.io import load_pretrained

    config = read_head_config(path)
    backbone = load_pretrained(path)
    model = SequenceClassifier.from_head_config(backbone, config, Path(path) / HEAD_CONFIG)
    state = load_file(str(Path(path) / HEAD_WEIGHTS), device=str(map_location))
    try:
        model.head.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(f"{Path(path) / HEAD_WEIGHTS}: does not fit the head ({str(exc).splitlines()[0]})") from None
    return model.to(map_location)
