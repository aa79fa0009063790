"""DNABERT-2: a bidirectional BERT encoder with ALiBi attention, GEGLU MLPs and a BPE vocabulary.

Zhou et al. 2023, "DNABERT-2: Efficient Foundation Model and Benchmark for Multi-Species Genome"
(arXiv 2306.15006), released as ``zhihan1996/DNABERT-2-117M`` (remote code ``bert_layers.py``, a
MosaicBERT, Portes et al. 2023). The network, in the reference's post-LayerNorm order::

    x_0 = Dropout(LN_emb(E[ids] + T[0]))                                  # (B, L, D), hidden state 0
    a   = LN_att(x + Dropout(dense(Attn(Wqkv x, bias))))                  # per layer
    x'  = LN_mlp(a + wo(Dropout(GELU(g) * u))),  [g | u] = gated_layers a  # GEGLU (Shazeer 2020)
    logits = decoder(LN_head(GELU(dense_head(x_n))))                      # decoder weight = E, own bias

``Attn`` is softmax attention over all positions with the additive bias
``-m_h |i - j|`` (ALiBi, Press et al. 2022, "Train Short, Test Long", in its symmetric form) plus
``-10000`` on padded keys (as the reference); there are no position embeddings, so any length runs.
The head slopes ``m_h`` are :func:`alibi_slopes`. Attention runs through
:func:`torch.nn.functional.scaled_dot_product_attention` with that bias; its twin
:func:`alibi_attention_reference` is the explicit softmax. GELU is the exact (erf) form everywhere.
``T[0]`` is the first token-type embedding (the reference adds it to every token). The MLM head's
LayerNorm has eps 1e-12 whatever ``layer_norm_eps`` (as the reference).

Padding: ``attention_mask`` (B, L) is 1 on real tokens. Real tokens get the numbers of the
unpadded computation (the reference computes on real tokens only; here padded keys are masked,
which gives the same result on either padding side since ALiBi depends only on ``|i - j|``).
Returned hidden states are zero on padded positions and the MLM head reads those zeros, as in the
reference's outputs.

Module names are those of the hub checkpoint, so its state dict loads without a key map:
``bert.embeddings.{word_embeddings,token_type_embeddings,LayerNorm}``,
``bert.encoder.layer.{i}.attention.self.Wqkv``, ``...attention.output.{dense,LayerNorm}``,
``...mlp.{gated_layers,wo,layernorm}``, ``cls.predictions.transform.{dense,LayerNorm}``,
``cls.predictions.decoder`` (weight tied to the word embeddings, plus a bias). A hub
``bert.pooler.*`` (the randomly initialised pooler of ``BertModel``) is ignored on load.

API: ``model = Dnabert2Model(Dnabert2Config.preset("117m"))``; ``model(input_ids, attention_mask)
-> logits (B, L, V)``; ``forward_with_hidden`` / ``hidden_states`` with layer indices 0 = embedding
output, i = after layer i, -1 = last layer; ``encode`` (last hidden state); ``pool``. Training:
:func:`mlm_mask` + :func:`mlm_loss`; scoring: :func:`pseudo_log_likelihood`. Checkpoints of the hub
layout: :func:`load_hub`. Tokenizer: :class:`Dnabert2Tokenizer` (the released BPE or one trained
with :func:`train_bpe`).

Notation: ``B`` batch, ``L`` tokens, ``D`` hidden size, ``H`` heads, ``d_h = D / H``, ``I``
intermediate size, ``V`` vocabulary.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dnalm.errors import ConfigError, InputError
from dnalm.models.blocks import layer_indices
from dnalm.models.family import HUB_WEIGHTS, MASKED, Alphabet, Family, Importer
from dnalm.utils import atomic_file

if TYPE_CHECKING:
    import tokenizers as hf_tokenizers

    from dnalm.training.losses import LMLoss

log = logging.getLogger(__name__)

#: Special tokens of DNABERT-2's vocabulary, in id order (``[UNK]`` 0 ... ``[MASK]`` 4).
SPECIAL_TOKENS: tuple[str, ...] = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")
UNK_ID, CLS_ID, SEP_ID, PAD_ID, MASK_ID = range(5)
SPECIAL_IDS: tuple[int, ...] = (UNK_ID, CLS_ID, SEP_ID, PAD_ID, MASK_ID)
#: Additive attention bias on padded keys (the reference's ``(1 - mask) * -10000``).
PAD_BIAS = -10000.0
IGNORE_INDEX = -100


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dnabert2Config:
    """Hyperparameters of :class:`Dnabert2Model`, named as in the hub ``config.json``.

    ``intermediate_size`` is the GEGLU width ``I`` (``gated_layers`` maps D -> 2I).
    ``hidden_dropout_prob`` drops the embedding output, the attention output and the GEGLU
    activation; ``attention_probs_dropout_prob`` the attention weights. ``type_vocab_size`` only
    sizes ``token_type_embeddings`` (row 0 is added to every token). ``pad_token_id`` is the
    embedding's ``padding_idx`` (None in the released model). The hub fields
    ``alibi_starting_size`` and ``max_position_embeddings`` have no counterpart: the ALiBi bias is
    built for each input length.
    """

    vocab_size: int = 4096
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.0
    layer_norm_eps: float = 1e-12
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"dnabert2: {name} must be an integer >= 1, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"dnabert2: hidden_size ({self.hidden_size}) must be divisible by "
                              f"num_attention_heads ({self.num_attention_heads})")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"dnabert2: {name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("layer_norm_eps", "initializer_range"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"dnabert2: {name} must be > 0, got {getattr(self, name)}")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(f"dnabert2: pad_token_id {self.pad_token_id} is outside the vocabulary "
                              f"(0-{self.vocab_size - 1})")

    @property
    def d_model(self) -> int:
        """Width of the hidden states (``hidden_size``)."""
        return self.hidden_size

    @property
    def n_layer(self) -> int:
        """Number of encoder layers (``num_hidden_layers``)."""
        return self.num_hidden_layers

    @property
    def head_dim(self) -> int:
        """Per-head width ``d_h = hidden_size / num_attention_heads``."""
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Dnabert2Config:
        """A named preset (see :data:`PRESETS`) with some fields replaced."""
        if name not in PRESETS:
            raise ConfigError(f"unknown dnabert2 preset '{name}' (presets: {', '.join(PRESETS)})")
        try:
            return replace(PRESETS[name], **overrides)
        except TypeError as exc:
            raise ConfigError(f"dnabert2 preset '{name}': {exc}") from None


#: ``117m``: the released ``zhihan1996/DNABERT-2-117M`` (its config.json). ``small`` and ``tiny``
#: keep its head width (64), vocabulary and a 3x GEGLU width, for training on small genomes.
PRESETS: dict[str, Dnabert2Config] = {
    "117m": Dnabert2Config(),
    "small": Dnabert2Config(hidden_size=256, num_hidden_layers=6, num_attention_heads=4, intermediate_size=768),
    "tiny": Dnabert2Config(hidden_size=128, num_hidden_layers=4, num_attention_heads=2, intermediate_size=384),
}


# ---------------------------------------------------------------------------------------------
# ALiBi attention
# ---------------------------------------------------------------------------------------------


def alibi_slopes(n_heads: int) -> list[float]:
    """ALiBi head slopes ``m_h`` (Press et al. 2022), as DNABERT-2 / MosaicBERT define them.

    For ``n`` a power of two: ``m_h = s^(h+1)``, ``h = 0..n-1``, with ``s = 2^(-8/n)``. Otherwise,
    with ``p`` the largest power of two below ``n``: the ``p`` slopes of ``p`` heads, then every
    other slope (0th, 2nd, ...) of ``2p`` heads, the first ``n - p`` of them.
    """
    if n_heads < 1:
        raise ConfigError(f"alibi: n_heads must be >= 1, got {n_heads}")
    if math.log2(n_heads).is_integer():
        s = 2.0 ** (-(2.0 ** -(math.log2(n_heads) - 3)))
        return [s * s**h for h in range(n_heads)]
    p = 2 ** math.floor(math.log2(n_heads))
    return alibi_slopes(p) + alibi_slopes(2 * p)[0::2][: n_heads - p]


def attention_bias(n_heads: int, length: int, attention_mask: Tensor | None = None,
                   dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> Tensor:
    """The additive attention bias: ``-m_h |i - j|`` plus ``-10000`` on padded keys.

    Computed in float32 (float64 when ``dtype`` is float64), as the reference, then cast to
    ``dtype``. Returns (1, H, L, L) without a mask, else (B, H, L, L); ``attention_mask`` (B, L) is 1
    on real tokens.
    """
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    pos = torch.arange(length, device=device)
    distance = (pos[None, :] - pos[:, None]).abs().to(wide)  # (L, L)
    slopes = torch.tensor(alibi_slopes(n_heads), dtype=wide, device=device)  # (H,)
    bias = (slopes[:, None, None] * -distance)[None]  # (1, H, L, L)
    if attention_mask is not None:
        pad = (1.0 - attention_mask.to(device=device, dtype=wide)) * PAD_BIAS  # (B, L)
        bias = bias + pad[:, None, None, :]
    return bias.to(dtype)


def alibi_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, dropout_p: float = 0.0) -> Tensor:
    """``softmax(q k^T / sqrt(d_h) + bias) v`` through SDPA. q, k, v: (B, H, L, d_h); bias broadcasts to
    (B, H, L, L). Returns (B, H, L, d_h)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout_p)


def alibi_attention_reference(q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
    """The explicit twin of :func:`alibi_attention` (no dropout): scores, bias, softmax, weighted sum."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias  # (B, H, L, L)
    return scores.softmax(dim=-1) @ v


# ---------------------------------------------------------------------------------------------
# Modules (named after the hub checkpoint's keys)
# ---------------------------------------------------------------------------------------------


class Embeddings(nn.Module):
    """Word embedding plus token type 0, LayerNorm, dropout: ids (B, L) -> (B, L, D)."""

    def __init__(self, config: Dnabert2Config, device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id,
                                            **kw)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size, **kw)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, **kw)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: Tensor) -> Tensor:
        x = self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0]
        return self.dropout(self.LayerNorm(x))


class SelfAttention(nn.Module):
    """Fused ``Wqkv`` projection (rows in (3, H, d_h) order) and ALiBi attention: (B, L, D) -> (B, L, D),
    the heads' outputs concatenated (before the output projection)."""

    def __init__(self, config: Dnabert2Config, device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.n_head = config.num_attention_heads
        self.head_dim = config.head_dim
        self.dropout_p = config.attention_probs_dropout_prob
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, device=device, dtype=dtype)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        B, L, D = x.shape
        q, k, v = self.Wqkv(x).view(B, L, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, H, L, d_h)
        o = alibi_attention(q, k, v, bias, self.dropout_p if self.training else 0.0)
        return o.transpose(1, 2).reshape(B, L, D)


class AttentionOutput(nn.Module):
    """``LayerNorm(residual + Dropout(dense(o)))`` (post-LN)."""

    def __init__(self, config: Dnabert2Config, device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, device=device, dtype=dtype)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, device=device, dtype=dtype)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, o: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(o)))


class Attention(nn.Module):
    """Self-attention sublayer: x (B, L, D), bias -> (B, L, D). Submodules ``self`` and ``output``."""

    def __init__(self, config: Dnabert2Config, device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.self = SelfAttention(config, device=device, dtype=dtype)
        self.output = AttentionOutput(config, device=device, dtype=dtype)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        return self.output(self.self(x, bias), x)


class GegluMlp(nn.Module):
    """``LayerNorm(x + wo(Dropout(GELU(g) * u)))`` with ``[g | u] = gated_layers(x)`` (no bias): (B, L, D) ->
    (B, L, D)."""

    def __init__(self, config: Dnabert2Config, device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.gated_layers = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False, device=device,
                                      dtype=dtype)
        self.wo = nn.Linear(config.intermediate_size, config.hidden_size, device=device, dtype=dtype)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        g, u = self.gated_layers(x).split(self.intermediate_size, dim=-1)  # (B, L, I) each
        return self.layernorm(x + self.wo(self.dropout(F.gelu(g) * u)))


class Layer(nn.Module):
    """One encoder layer: attention sublayer then GEGLU sublayer, each post-LN."""

    def __init__(self, config: Dnabert2Config, device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.attention = Attention(config, device=device, dtype=dtype)
        self.mlp = GegluMlp(config, device=device, dtype=dtype)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        return self.mlp(self.attention(x, bias))


class Encoder(nn.Module):
    """The stack of layers (``encoder.layer.{i}``)."""

    def __init__(self, config: Dnabert2Config, device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.layer = nn.ModuleList(Layer(config, device=device, dtype=dtype) for _ in range(config.num_hidden_layers))


class Backbone(nn.Module):
    """``bert``: embeddings and encoder."""

    def __init__(self, config: Dnabert2Config, device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.embeddings = Embeddings(config, device=device, dtype=dtype)
        self.encoder = Encoder(config, device=device, dtype=dtype)


class HeadTransform(nn.Module):
    """``LayerNorm_1e-12(GELU(dense(h)))``: (..., D) -> (..., D)."""

    def __init__(self, config: Dnabert2Config, device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, device=device, dtype=dtype)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=1e-12, device=device, dtype=dtype)

    def forward(self, h: Tensor) -> Tensor:
        return self.LayerNorm(F.gelu(self.dense(h)))


class MlmPredictions(nn.Module):
    """``decoder(transform(h))``: (..., D) -> (..., V); the decoder weight is set to the word embedding."""

    def __init__(self, config: Dnabert2Config, device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.transform = HeadTransform(config, device=device, dtype=dtype)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, device=device, dtype=dtype)

    def forward(self, h: Tensor) -> Tensor:
        return self.decoder(self.transform(h))


class MlmHead(nn.Module):
    """``cls``: the MLM head (``cls.predictions``): hidden (..., D) -> logits (..., V)."""

    def __init__(self, config: Dnabert2Config, device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.predictions = MlmPredictions(config, device=device, dtype=dtype)

    def forward(self, h: Tensor) -> Tensor:
        return self.predictions(h)


class Dnabert2Model(nn.Module):
    """DNABERT-2 with its MLM head (the hub's ``BertForMaskedLM``); see the module docstring."""

    family: ClassVar[str] = "dnabert2"
    #: A bidirectional encoder with an MLM head (the head at position t predicts token t when masked).
    causal: ClassVar[bool] = False

    def __init__(self, config: Dnabert2Config, device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.config = config
        self.n_layer = config.num_hidden_layers
        self.bert = Backbone(config, device=device, dtype=dtype)
        self.cls = MlmHead(config, device=device, dtype=dtype)
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """BERT's initialisation: Linear and Embedding weights ~ N(0, initializer_range), biases 0,
        LayerNorm (1, 0), the ``pad_token_id`` embedding row (if any) 0."""
        r = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=r)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        embedding = self.bert.embeddings.word_embeddings  # after the tied decoder's initialisation
        if embedding.padding_idx is not None:
            embedding.weight[embedding.padding_idx].zero_()

    def _layer_indices(self, layers: Sequence[int] | None) -> list[int]:
        return layer_indices(layers, self.n_layer, "last layer")

    def _real(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor | None:
        """The padding mask as bool (B, L), or None when there is no padding."""
        if input_ids.dim() != 2:
            raise ConfigError(f"input_ids must be (B, L), got shape {tuple(input_ids.shape)}")
        if attention_mask is None:
            return None
        if attention_mask.shape != input_ids.shape:
            raise ConfigError(f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids "
                              f"{tuple(input_ids.shape)}")
        real = attention_mask.to(input_ids.device).bool()
        return None if bool(real.all()) else real

    def _run(self, input_ids: Tensor, attention_mask: Tensor | None,
             keep: Sequence[int]) -> tuple[Tensor, list[Tensor]]:
        """Last hidden state (B, L, D) and the hidden states at the indices ``keep``; zero on padding."""
        real = self._real(input_ids, attention_mask)
        x = self.bert.embeddings(input_ids)  # (B, L, D)
        bias = attention_bias(self.config.num_attention_heads, input_ids.shape[1], real, dtype=x.dtype,
                              device=x.device)

        def zero_pad(h: Tensor) -> Tensor:
            return h if real is None else h.masked_fill(~real[..., None], 0.0)

        wanted = set(keep)
        found = {0: zero_pad(x)} if 0 in wanted else {}
        for i, layer in enumerate(self.bert.encoder.layer, start=1):
            x = layer(x, bias)
            if i in wanted:
                found[i] = zero_pad(x)
        return zero_pad(x), [found[i] for i in keep]

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """input_ids (B, L), attention_mask (B, L) (1 = token, 0 = padding) -> MLM logits (B, L, V)."""
        h, _ = self._run(input_ids, attention_mask, ())
        return self.cls(h)

    def head(self, h: Tensor) -> Tensor:
        """The MLM head: hidden states (..., D) -> logits (..., V), position by position."""
        return self.cls(h)

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """The last layer's hidden states (B, L, D), zero on padding (what the MLM head reads)."""
        h, _ = self._run(input_ids, attention_mask, ())
        return h

    def forward_with_hidden(self, input_ids: Tensor, layers: Sequence[int] | None,
                            attention_mask: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
        """Logits (B, L, V) and the hidden states (B, L, D) at ``layers`` (0 = embedding output, i = after
        layer i, -1 = last; None = all) in one pass."""
        h, kept = self._run(input_ids, attention_mask, self._layer_indices(layers))
        return self.cls(h), kept

    def hidden_states(self, input_ids: Tensor, layers: Sequence[int] | None = None,
                      attention_mask: Tensor | None = None) -> list[Tensor]:
        """Hidden states (B, L, D) at ``layers`` (see :meth:`forward_with_hidden`), zero on padding."""
        return self._run(input_ids, attention_mask, self._layer_indices(layers))[1]

    @staticmethod
    def pool(hidden: Tensor, attention_mask: Tensor | None = None, how: str = "mean") -> Tensor:
        """Hidden states (B, L, D) -> (B, D): ``mean`` over real tokens ([CLS] and [SEP] included, as
        DNABERT-2's README embeds) or ``cls`` (the first real token)."""
        from dnalm.models.heads import pool

        if how not in ("mean", "cls"):
            raise ConfigError(f"dnabert2 pooling must be 'mean' or 'cls', got {how!r}")
        return pool(hidden, attention_mask, how)


# ---------------------------------------------------------------------------------------------
# Masked-LM training and scoring
# ---------------------------------------------------------------------------------------------


def _special_ids(alphabet: Alphabet) -> list[int]:
    return sorted({i for i in (alphabet.pad, alphabet.bos, alphabet.eos, alphabet.mask, alphabet.unk) if i is not None})


def _unpicked_ids(alphabet: Alphabet) -> list[int]:
    """Ids masking never picks nor writes as a random token: the specials and N (a gap, not a base to learn)."""
    return sorted(set(_special_ids(alphabet)) | ({alphabet.n} if alphabet.n is not None else set()))


def _as_alphabet(alphabet: Any) -> Alphabet:
    alphabet = getattr(alphabet, "alphabet", alphabet)
    if not isinstance(alphabet, Alphabet):
        raise ConfigError(f"expected an Alphabet or a tokenizer with one, got {type(alphabet).__name__}")
    if alphabet.mask is None:
        raise ConfigError("the vocabulary has no [MASK] token")
    return alphabet


def mlm_mask(input_ids: Tensor, alphabet: Alphabet | Any, rate: float = 0.15,
             generator: torch.Generator | None = None,
             attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """BERT's masking (Devlin et al. 2019, §3.1): pick each maskable token with probability ``rate``;
    of the picked, 80 % become ``[MASK]``, 10 % a random token, 10 % stay.

    Args:
        input_ids: (B, L) token ids.
        alphabet: the vocabulary's :class:`~dnalm.models.family.Alphabet` (or a tokenizer with one).
            Its specials (pad, [CLS]/[SEP], [MASK], [UNK]) and N are never picked, and random
            replacements are drawn uniformly from the pickable ids present in the batch.
        rate: the probability of picking a token.
        generator: random source; the draws are made on its device (default: ``input_ids``'s).
        attention_mask: (B, L), 1 on real tokens; padding is never picked.

    Returns:
        ``masked_ids`` (B, L) and ``labels`` (B, L): the original id where picked, -100 elsewhere.
    """
    if not 0.0 < rate < 1.0:
        raise ConfigError(f"masking rate must be in (0, 1), got {rate}")
    alphabet = _as_alphabet(alphabet)
    device = input_ids.device
    draw_on = generator.device if generator is not None else device
    specials = torch.tensor(_unpicked_ids(alphabet), device=device)
    maskable = ~torch.isin(input_ids, specials)
    if attention_mask is not None:
        maskable &= attention_mask.to(device).bool()
    shape = input_ids.shape
    picked = maskable & (torch.rand(shape, generator=generator, device=draw_on).to(device) < rate)
    action = torch.rand(shape, generator=generator, device=draw_on).to(device)
    # random tokens: uniform over the maskable ids present in the batch (a character vocabulary's bases, not its
    # unused or reserved ids; for a BPE the tokens of the batch)
    present = torch.unique(input_ids[maskable]) if bool(maskable.any()) else input_ids.new_tensor([alphabet.mask])
    random_ids = present[torch.randint(len(present), shape, generator=generator, device=draw_on).to(device)]
    masked = torch.where(picked & (action < 0.8), torch.full_like(input_ids, alphabet.mask), input_ids)
    masked = torch.where(picked & (action >= 0.8) & (action < 0.9), random_ids, masked)
    labels = torch.where(picked, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return masked, labels


def mlm_loss(model: nn.Module, batch: Mapping[str, Tensor]) -> LMLoss:
    """Masked-LM cross-entropy of a batch from :func:`mlm_mask`, for any masked model that offers
    ``encode(input_ids, attention_mask)`` (the final hidden states) and a position-wise ``head(h)`` (DNABERT-2's,
    Caduceus's).

    ``batch``: ``input_ids`` (B, L) (masked), ``labels`` (B, L) (-100 where not predicted) and
    optionally ``attention_mask`` (B, L). The head runs only on labelled positions. Returns a
    :class:`dnalm.training.losses.LMLoss`: ``loss`` the mean over labelled tokens (0 when there are
    none), ``ce``/``weight``/``correct`` (B, L) with weight 1 on labelled tokens.
    """
    from dnalm.training.losses import masked_lm_loss_at_labels

    input_ids, labels = batch["input_ids"], batch["labels"]
    hidden = model.encode(input_ids, batch.get("attention_mask"))  # (B, L, D)
    return masked_lm_loss_at_labels(model.head(hidden[labels != IGNORE_INDEX]), labels)  # head on (N, D)


@torch.no_grad()
def pseudo_log_likelihood(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None,
                          batch_of_masks: int = 64, alphabet: Alphabet | Any | None = None,
                          reduce: str = "sum") -> Tensor:
    """Pseudo-log-likelihood (Salazar et al. 2020): each scored token masked in turn, ``log p(true token)``.

    Scored tokens are the real (``attention_mask`` 1), non-special ones. The masked copies run
    ``batch_of_masks`` at a time; the head reads only the masked position. ``model``: any masked model with
    ``encode(input_ids, attention_mask)`` and a position-wise ``head(h)`` (DNABERT-2's, Caduceus's).

    Args:
        input_ids: (B, L); attention_mask: (B, L) or None.
        alphabet: the specials to skip and the [MASK] id (default: DNABERT-2's, ids 0-4).
        reduce: ``sum`` -> (B,) sums; ``none`` -> (B, L) per token, 0 where not scored.

    Returns float32 (float64 for a float64 model) log-probabilities in nats.
    """
    if reduce not in ("sum", "none"):
        raise ConfigError(f"reduce must be 'sum' or 'none', got {reduce!r}")
    if batch_of_masks < 1:
        raise ConfigError(f"batch_of_masks must be >= 1, got {batch_of_masks}")
    specials = list(SPECIAL_IDS) if alphabet is None else _special_ids(_as_alphabet(alphabet))
    mask_id = MASK_ID if alphabet is None else _as_alphabet(alphabet).mask
    scored = ~torch.isin(input_ids, torch.tensor(specials, device=input_ids.device))
    if attention_mask is not None:
        scored &= attention_mask.to(input_ids.device).bool()
    rows, cols = scored.nonzero(as_tuple=True)  # (N,) each
    dtype = torch.promote_types(next(model.parameters()).dtype, torch.float32)
    out = torch.zeros(input_ids.shape, dtype=dtype, device=input_ids.device)
    for start in range(0, len(rows), batch_of_masks):
        r, c = rows[start: start + batch_of_masks], cols[start: start + batch_of_masks]
        n = torch.arange(len(r), device=input_ids.device)
        ids = input_ids[r].clone()  # (n, L)
        ids[n, c] = mask_id
        hidden = model.encode(ids, None if attention_mask is None else attention_mask[r])
        logp = model.head(hidden[n, c]).to(dtype).log_softmax(dim=-1)  # (n, V)
        out[r, c] = logp[n, input_ids[r, c]]
    return out.sum(dim=1) if reduce == "sum" else out


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_SIDE_FILE = "dnalm_tokenizer.json"
TOKENIZER_FORMAT = "dnalm-tokenizer/1"
_NOT_ACGT = re.compile(r"[^ACGT]+")


@dataclass(frozen=True, eq=False)
class Dnabert2Tokenizer:
    """DNABERT-2's BPE tokenizer: a Hugging Face ``tokenizers`` BPE with ``[UNK] [CLS] [SEP] [PAD] [MASK]``
    at ids 0-4 and each sequence written ``[CLS] ... [SEP]``.

    The released tokenizer has no normalizer: lowercase letters and N become ``[UNK]``, one per
    character, and whitespace splits words. ``uppercase=True`` folds lowercase (soft-masked) bases to
    upper case first. Rows are padded with ``[PAD]`` (3) on ``padding_side`` ("right" as released;
    the model gives the same numbers either way).

    This is its own class, beside :mod:`dnalm.tokenizers`, because those tokenizers share HyenaDNA's
    special ids 0-6, while DNABERT-2's checkpoint needs its own ids 0-4.
    """

    hf: hf_tokenizers.Tokenizer = field(repr=False)
    uppercase: bool = False
    padding_side: str = "right"

    type: ClassVar[str] = "dnabert2"

    def __post_init__(self) -> None:
        if self.padding_side not in ("left", "right"):
            raise ConfigError(f"tokenizer option padding_side={self.padding_side!r} must be 'left' or 'right'")
        if not isinstance(self.uppercase, bool):
            raise ConfigError(f"tokenizer option uppercase={self.uppercase!r} must be true or false")
        for i, token in enumerate(SPECIAL_TOKENS):
            if self.hf.token_to_id(token) != i:
                raise InputError(f"DNABERT-2 tokenizer: special token {token} must have id {i} "
                                 f"(has {self.hf.token_to_id(token)})")
        missing = [b for b in "ACGT" if self.hf.token_to_id(b) is None]
        if missing:
            raise InputError(f"DNABERT-2 tokenizer: no token for the base(s) {', '.join(missing)}")
        self.hf.no_padding()
        self.hf.no_truncation()

    # -- vocabulary -------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return int(self.hf.get_vocab_size())

    @property
    def vocab(self) -> dict[str, int]:
        return dict(self.hf.get_vocab())

    pad_id: ClassVar[int] = PAD_ID
    mask_id: ClassVar[int] = MASK_ID
    unk_id: ClassVar[int] = UNK_ID
    bos_id: ClassVar[int] = CLS_ID
    eos_id: ClassVar[int] = SEP_ID
    num_special_tokens: ClassVar[int] = 2

    @property
    def alphabet(self) -> Alphabet:
        """Ids of A, C, G, T, of what N encodes to (``[UNK]`` in the released vocabulary) and of the
        specials (bos = ``[CLS]``, eos = ``[SEP]``)."""
        acgt = tuple(int(self.hf.token_to_id(b)) for b in "ACGT")
        n = self.hf.token_to_id("N")
        return Alphabet(acgt=acgt, n=UNK_ID if n is None else int(n), pad=PAD_ID, bos=CLS_ID, eos=SEP_ID,
                        mask=MASK_ID, unk=UNK_ID, vocab_size=self.vocab_size)

    # -- encoding ---------------------------------------------------------------------------
    def _texts(self, seqs: Sequence[str | bytes]) -> list[str]:
        out = []
        for i, seq in enumerate(seqs):
            if isinstance(seq, (bytes, bytearray)):
                try:
                    seq = bytes(seq).decode("ascii")
                except UnicodeDecodeError:
                    raise InputError(f"sequence {i}: not ASCII text") from None
            if not isinstance(seq, str):
                raise InputError(f"sequence {i}: expected str or bytes, got {type(seq).__name__}")
            out.append(seq.upper() if self.uppercase else seq)
        return out

    def _bodies(self, seqs: Sequence[str | bytes]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(self._texts(seqs), add_special_tokens=False)]

    def encode(self, seq: str | bytes, add_special_tokens: bool = True,
               return_tensors: str | None = None) -> np.ndarray | Tensor:
        """One sequence -> ids (T,) int64 (numpy, or a tensor with ``return_tensors='pt'``)."""
        ids = np.asarray(self._with_specials(self._bodies([seq])[0], add_special_tokens), dtype=np.int64)
        return torch.from_numpy(ids) if return_tensors == "pt" else ids

    @staticmethod
    def _with_specials(body: list[int], add: bool) -> list[int]:
        return [CLS_ID, *body, SEP_ID] if add else list(body)

    def encode_batch(self, seqs: Sequence[str | bytes], max_length: int | None = None, padding: bool | str = True,
                     truncation: bool = True, add_special_tokens: bool = True,
                     return_tensors: str = "pt") -> dict[str, Any]:
        """Encode and pad B sequences.

        ``max_length``: the most tokens per row, specials included; with ``truncation`` a longer row keeps
        its first tokens then ``[SEP]`` (as the released tokenizer truncates), without it it raises.
        ``padding``: True/``'longest'`` or ``'max_length'``. Returns ``input_ids`` and ``attention_mask``
        (B, L) int64 (tensors, or numpy arrays with ``return_tensors='np'``).
        """
        n_special = 2 if add_special_tokens else 0
        if max_length is not None and max_length < n_special + 1:
            raise ConfigError(f"max_length={max_length} leaves no room for a token")
        rows = []
        for i, body in enumerate(self._bodies(seqs)):
            if max_length is not None and len(body) + n_special > max_length:
                if not truncation:
                    raise InputError(f"sequence {i}: {len(body) + n_special} tokens exceed max_length={max_length} "
                                     "(enable truncation)")
                body = body[: max_length - n_special]
            rows.append(self._with_specials(body, add_special_tokens))
        if padding is True or padding == "longest":
            width = max((len(r) for r in rows), default=0)
        elif padding == "max_length" and max_length is not None:
            width = max_length
        else:
            raise ConfigError(f"padding={padding!r} must be true, 'longest' or 'max_length' (with max_length)")
        ids = np.full((len(rows), width), PAD_ID, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for b, row in enumerate(rows):
            cols = slice(0, len(row)) if self.padding_side == "right" else slice(width - len(row), width)
            ids[b, cols] = row
            mask[b, cols] = 1
        if return_tensors == "pt":
            return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
        if return_tensors == "np":
            return {"input_ids": ids, "attention_mask": mask}
        raise ConfigError(f"return_tensors={return_tensors!r} must be 'pt' or 'np'")

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        """Ids (T,) -> text. With ``skip_special_tokens``, ``[CLS] [SEP] [PAD] [MASK]`` are dropped and each
        ``[UNK]`` (one character) is written N; otherwise every token is written out."""
        if hasattr(ids, "detach"):
            ids = ids.detach().cpu().numpy()
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        bad = (ids < 0) | (ids >= self.vocab_size)
        if bad.any():
            pos = int(np.argmax(bad))
            raise InputError(f"token id {int(ids[pos])} at position {pos} is outside the vocabulary "
                             f"(0-{self.vocab_size - 1})")
        strings = [self.hf.id_to_token(int(i)) for i in ids]
        if skip_special_tokens:
            drop = {SPECIAL_TOKENS[i] for i in (CLS_ID, SEP_ID, PAD_ID, MASK_ID)}
            strings = ["N" if s == "[UNK]" else s for s in strings if s not in drop]
        return "".join(strings)

    # -- persistence ------------------------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        """Options plus the Hugging Face tokenizer as a JSON object under ``hf``."""
        return {"type": self.type, "uppercase": self.uppercase, "padding_side": self.padding_side,
                "hf": json.loads(self.hf.to_str())}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Dnabert2Tokenizer:
        """Inverse of :meth:`to_config`; unknown keys raise :class:`ConfigError`."""
        from tokenizers import Tokenizer

        config = dict(config)
        config.pop("format", None)
        kind = config.pop("type", cls.type)
        if kind != cls.type:
            raise ConfigError(f"tokenizer config of type {kind!r} given to {cls.__name__}")
        if "hf" not in config:
            raise ConfigError("DNABERT-2 tokenizer config needs 'hf' (the Hugging Face tokenizer JSON)")
        try:
            hf = Tokenizer.from_str(json.dumps(config.pop("hf")))
        except Exception as exc:
            raise InputError(f"DNABERT-2 tokenizer config: not a Hugging Face tokenizer ({exc})") from None
        unknown = sorted(set(config) - {"uppercase", "padding_side"})
        if unknown:
            raise ConfigError(f"unknown tokenizer option {unknown[0]!r} (allowed: padding_side, uppercase)")
        return cls(hf=hf, **config)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` (the Hugging Face file, as on the hub) and the options in
        ``dnalm_tokenizer.json`` (``type: dnabert2``) beside it; returns the first."""
        directory = Path(directory)
        path = directory / TOKENIZER_FILE
        with atomic_file(path) as tmp:
            tmp.write_text(self.hf.to_str(pretty=True) + "\n")
        options = {k: v for k, v in self.to_config().items() if k != "hf"}
        with atomic_file(directory / TOKENIZER_SIDE_FILE) as tmp:
            tmp.write_text(json.dumps({"format": TOKENIZER_FORMAT, **options, "hf_file": TOKENIZER_FILE}, indent=2)
                           + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, **options: Any) -> Dnabert2Tokenizer:
        """Read ``tokenizer.json`` (a directory or the file): the hub's, or one written by :meth:`save`
        (whose ``dnalm_tokenizer.json`` options apply unless given in ``options``)."""
        from tokenizers import Tokenizer

        path = Path(path)
        file = path / TOKENIZER_FILE if path.is_dir() else path
        if not file.is_file():
            raise InputError(f"{file}: no such tokenizer file")
        side = file.parent / TOKENIZER_SIDE_FILE
        saved: dict[str, Any] = {}
        if side.is_file():
            try:
                saved = json.loads(side.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise InputError(f"{side}: cannot read JSON ({exc})") from None
            if not isinstance(saved, dict) or saved.get("type") != cls.type:
                raise InputError(f"{side}: not a DNABERT-2 tokenizer (type {saved.get('type')!r})"
                                 if isinstance(saved, dict) else f"{side}: expected a JSON object")
            saved = {k: saved[k] for k in ("uppercase", "padding_side") if k in saved}
        try:
            hf = Tokenizer.from_file(str(file))
        except Exception as exc:
            raise InputError(f"{file}: not a Hugging Face tokenizer ({str(exc).splitlines()[0]})") from None
        try:
            return cls(hf=hf, **{**saved, **options})
        except InputError as exc:
            raise InputError(f"{file}: {exc}") from None


def train_bpe(sequences: Iterable[str | bytes], vocab_size: int, *, min_frequency: int = 2,
              chunk_length: int = 1000, max_token_length: int | None = None, uppercase: bool = True,
              show_progress: bool = False) -> Dnabert2Tokenizer:
    """Learn a DNABERT-2-style BPE vocabulary of (at most) ``vocab_size`` tokens from DNA sequences.

    The recipe of the released tokenizer (``shared/reference/families.md`` §B.2): sequences
    upper-cased, split at every character other than A/C/G/T and cut into pieces of at most
    ``chunk_length`` bases; ``tokenizers`` BPE with ``[UNK]``, Whitespace pre-tokenizer, the five
    specials at ids 0-4, then A, C, G, T at 5-8 and the merges; ``[CLS] $A [SEP]`` template. The
    returned tokenizer folds lowercase to upper case when ``uppercase`` (as it was trained).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    if vocab_size < len(SPECIAL_TOKENS) + 4:
        raise ConfigError(f"vocab_size={vocab_size} must be at least {len(SPECIAL_TOKENS) + 4} (specials + ACGT)")
    if chunk_length < 1:
        raise ConfigError(f"chunk_length must be >= 1, got {chunk_length}")

    def pieces() -> Iterable[str]:
        for i, seq in enumerate(sequences):
            if isinstance(seq, (bytes, bytearray)):
                seq = bytes(seq).decode("ascii", errors="replace")
            if not isinstance(seq, str):
                raise InputError(f"sequence {i}: expected str or bytes, got {type(seq).__name__}")
            for part in _NOT_ACGT.split(seq.upper()):
                for start in range(0, len(part), chunk_length):
                    yield part[start: start + chunk_length]

    hf = Tokenizer(models.BPE(unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS), initial_alphabet=list("ACGT"),
                                  limit_alphabet=4, max_token_length=max_token_length, show_progress=show_progress)
    hf.train_from_iterator(pieces(), trainer)
    return Dnabert2Tokenizer(hf=hf, uppercase=uppercase)


def default_tokenizer(config: Dnabert2Config) -> None:
    """DNABERT-2's tokenizer is data (a trained BPE): it comes with a checkpoint (``tokenizer.json``)
    or from :func:`train_bpe`, so a config alone gives none."""
    return None


# ---------------------------------------------------------------------------------------------
# The hub checkpoint layout
# ---------------------------------------------------------------------------------------------

#: Hub keys that belong to no part of :class:`Dnabert2Model` and are dropped on load.
HUB_IGNORED_PREFIXES = ("bert.pooler.",)
_HUB_FIELDS = {  # config.json field (the Dnabert2Config field of the same name) -> required
    "vocab_size": True, "hidden_size": True, "num_hidden_layers": True, "num_attention_heads": True,
    "intermediate_size": True, "hidden_dropout_prob": False, "attention_probs_dropout_prob": False,
    "layer_norm_eps": False, "type_vocab_size": False, "initializer_range": False, "pad_token_id": False,
}


def detect_hub(directory: Path, meta: Any) -> bool:
    """Whether ``directory`` (its parsed ``config.json`` ``meta``) holds a DNABERT-2 hub checkpoint:
    a config whose ``auto_map`` names ``bert_layers`` classes, or with ``alibi_starting_size``, and a
    weight file."""
    if not isinstance(meta, Mapping) or "format" in meta:
        return False
    auto_map = meta.get("auto_map")
    names = [str(v) for v in auto_map.values()] if isinstance(auto_map, Mapping) else []
    if not (any(n.startswith("bert_layers.") for n in names) or "alibi_starting_size" in meta):
        return False
    directory = Path(directory)
    directory = directory if directory.is_dir() else directory.parent
    return any((directory / n).is_file() for n in HUB_WEIGHTS)


def config_from_hub(meta: Mapping[str, Any], where: str = "config.json", **overrides: Any) -> Dnabert2Config:
    """A :class:`Dnabert2Config` from the hub's ``config.json`` (parsed); ``overrides`` replace fields."""
    if meta.get("hidden_act", "gelu") != "gelu":
        raise InputError(f"{where}: hidden_act {meta['hidden_act']!r} is not supported (DNABERT-2 uses 'gelu')")
    fields = {}
    for name, required in _HUB_FIELDS.items():
        if name in meta:
            fields[name] = meta[name]
        elif required:
            raise InputError(f"{where}: missing field '{name}'")
    fields.update(overrides)
    try:
        return Dnabert2Config(**fields)
    except (TypeError, ConfigError) as exc:
        raise InputError(f"{where}: {exc}") from None


def load_hub(path: str | os.PathLike, map_location: str | torch.device = "cpu",
             overrides: Mapping[str, Any] | None = None) -> Dnabert2Model:
    """Load a DNABERT-2 checkpoint in the hub layout (``config.json`` + ``model.safetensors`` or
    ``pytorch_model.bin``), in eval mode on ``map_location``.

    ``path``: the directory or its weight file. Pickled weights are read with the restricted
    unpickler (:func:`dnalm.models.io.safe_torch_load`). The decoder weight may be absent (it is the
    word embedding) or must equal it; ``bert.pooler.*`` is ignored; any other missing or unexpected
    key raises :class:`InputError` naming the file and the key.
    """
    from dnalm.models.io import load_state_into, read_hub_layout, read_weights

    meta, cfg_file, file = read_hub_layout(path)
    config = config_from_hub(meta, str(cfg_file), **dict(overrides or {}))
    weights = read_weights(file)
    if is_hub_classifier(meta, weights):
        raise InputError(f"{file}: a fine-tuned DNABERT-2 sequence classifier (BertForSequenceClassification), not "
                         "the masked LM: use it with 'dnalm classify'")
    state = {k: v for k, v in weights.items() if not k.startswith(HUB_IGNORED_PREFIXES)}
    model = Dnabert2Model(config)
    load_state_into(model, state, file)
    return model.to(map_location).eval()


#: The head of the hub's ``BertForSequenceClassification``: BERT's pooler and the classifier.
HUB_CLASSIFIER_KEYS = ("bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias")


def is_hub_classifier(meta: Mapping[str, Any], weights: Mapping[str, Any] | None = None) -> bool:
    """Whether a hub checkpoint (its ``config.json`` ``meta``, and its weights when read) is a sequence
    classifier: ``architectures`` names a ``...ForSequenceClassification``, or the weights hold ``classifier.*``."""
    architectures = meta.get("architectures") or []
    named = any(str(a).endswith("ForSequenceClassification") for a in architectures)
    return named or (weights is not None and "classifier.weight" in weights)


def is_hub_classifier_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory holding a DNABERT-2 classifier in the hub layout (:func:`detect_hub` and
    :func:`is_hub_classifier` on its ``config.json``)."""
    from dnalm.models.io import read_json

    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    meta = read_json(config)
    return detect_hub(Path(path), meta) and is_hub_classifier(meta)


def load_hub_classifier(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """A DNABERT-2 classifier fine-tuned in the hub's layout (``BertForSequenceClassification``, as DNABERT-2's
    GUE script saves it) as a :class:`~dnalm.models.heads.SequenceClassifier`: ``[CLS]`` pooling, BERT's pooler
    (``bert.pooler.dense``, tanh), dropout (``classifier_dropout``, else ``hidden_dropout_prob``) and the linear
    ``classifier``; ``num_labels == 1`` or ``problem_type: regression`` is a regressor. Class names from
    ``id2label``. The checkpoint has no MLM head: the model's stays as initialised (classification only reads
    the encoder)."""
    from dnalm.models.heads import SequenceClassifier
    from dnalm.models.io import load_state_into, read_hub_layout, read_weights

    meta, cfg_file, file = read_hub_layout(path)
    config = config_from_hub(meta, str(cfg_file))
    weights = dict(read_weights(file))
    missing = [k for k in HUB_CLASSIFIER_KEYS if k not in weights]
    if missing:
        raise InputError(f"{file}: not a sequence classifier's weights (no {missing[0]})")
    backbone = Dnabert2Model(config)
    mlm_head = {k: v for k, v in backbone.state_dict().items()
                if k.startswith("cls.") and k != "cls.predictions.decoder.weight"}  # the decoder is the embedding
    encoder = {k: v for k, v in weights.items() if not k.startswith(("bert.pooler.", "classifier.", "cls."))}
    load_state_into(backbone, {**mlm_head, **encoder}, file)
    n = int(weights["classifier.weight"].shape[0])
    regression = meta.get("problem_type") == "regression" or n == 1
    dropout = meta.get("classifier_dropout")
    dropout = float(meta.get("hidden_dropout_prob", 0.1) if dropout is None else dropout)
    model = SequenceClassifier(backbone, n, task="regression" if regression else "classification", pooling="cls",
                               dropout=dropout, pooler=True, d_model=config.hidden_size)
    head = {"weight": weights["classifier.weight"], "bias": weights["classifier.bias"],
            "pooler.weight": weights["bert.pooler.dense.weight"], "pooler.bias": weights["bert.pooler.dense.bias"]}
    try:
        model.head.load_state_dict({k: v.to(model.head.weight.dtype) for k, v in head.items()})
    except RuntimeError as exc:
        raise InputError(f"{file}: the classifier does not fit the config ({str(exc).splitlines()[0]})") from None
    labels = meta.get("id2label")
    if not regression and isinstance(labels, Mapping):
        model.classes = [str(labels.get(str(i), labels.get(i, i))) for i in range(n)]
    return model.to(map_location).eval()


FAMILY = Family(
    name="dnabert2",
    config_cls=Dnabert2Config,
    model_cls=Dnabert2Model,
    presets=PRESETS,
    objective=MASKED,
    lora_targets=("Wqkv", "dense", "gated_layers", "wo"),
    tokenizer=default_tokenizer,
    context_field=None,
    importers=(Importer("dnabert2-hub", detect_hub, load_hub),),
    window_tokens=4096,  # about 20 kb of BPE tokens; attention scores grow with the square
)
