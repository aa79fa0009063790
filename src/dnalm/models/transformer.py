"""A causal Transformer baseline with rotary position embeddings and a KV cache.

The network is the same LM shell as HyenaDNA (:mod:`dnalm.models.blocks`): token embedding
(vocabulary padded to a multiple of 8) -> ``n_layer`` pre-LN blocks ``x + mixer(LN x)``,
``x + MLP(LN x)`` -> final LayerNorm -> LM head tied to the embedding. Only the mixer differs:
multi-head causal self-attention (Vaswani et al. 2017, "Attention Is All You Need") computed by
:func:`torch.nn.functional.scaled_dot_product_attention` (FlashAttention on GPU), with rotary
position embeddings on queries and keys (Su et al. 2021, "RoFormer: Enhanced Transformer with
Rotary Position Embedding").

API: ``TransformerLM(TransformerConfig.preset("tiny-1k"))`` is called like every causal LM of
:mod:`dnalm.models.blocks` (``model(input_ids (B, L), state=None) -> logits (B, L, V)``,
``hidden_states``, ``allocate_state``); each block's state is a :class:`KVCache`, so prefill and
step-by-step decoding follow :mod:`dnalm.inference.state`. Rotary tables are computed on the fly
from the positions, so checkpoints hold no position buffers and any length runs.

Notation: ``B`` batch, ``L`` sequence length, ``D = d_model``, ``H = n_head``,
``d_h = D / H`` head width, ``T`` cache length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dnalm.errors import ConfigError
from dnalm.inference.state import InferenceState
from dnalm.models.blocks import CausalLM, pad_vocab
from dnalm.models.family import CAUSAL, Family


@dataclass(frozen=True)
class TransformerConfig:
    """Hyperparameters of :class:`TransformerLM`.

    ``d_inner`` is the MLP width (4 x ``d_model`` when not given), ``max_len`` the longest sequence the
    KV cache is sized for by default (rotary embeddings themselves have no length limit), ``rope_base``
    the base ``b`` of the rotary frequencies ``theta_i = b^(-2i/d_h)``, ``dropout`` the dropout rate on the embedding,
    the residual branches and the attention weights, ``bias`` whether linear layers have biases.
    """

    d_model: int = 128
    n_layer: int = 2
    n_head: int = 2
    d_inner: int | None = None  # MLP width; None: 4 * d_model
    vocab_size: int = 12
    pad_vocab_size_multiple: int = 8
    max_len: int = 1026
    rope_base: float = 10000.0
    dropout: float = 0.0
    bias: bool = True
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        if self.d_inner is None:
            object.__setattr__(self, "d_inner", 4 * self.d_model)
        for name in ("d_model", "n_layer", "n_head", "d_inner", "vocab_size", "pad_vocab_size_multiple", "max_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"transformer: {name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            raise ConfigError(f"transformer: d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if self.head_dim % 2:
            raise ConfigError(f"transformer: head width d_model/n_head = {self.head_dim} must be even for rotary "
                              "embeddings")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"transformer: dropout must be in [0, 1), got {self.dropout}")
        if self.rope_base <= 1.0:
            raise ConfigError(f"transformer: rope_base must be > 1, got {self.rope_base}")

    @property
    def head_dim(self) -> int:
        """Per-head width ``d_h = d_model / n_head``."""
        return self.d_model // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding and columns of the logits (12 -> 16 for the DNA tokenizer)."""
        return pad_vocab(self.vocab_size, self.pad_vocab_size_multiple)

    @classmethod
    def preset(cls, name: str, **overrides) -> TransformerConfig:
        """A named preset (see :data:`PRESETS`) with some fields replaced."""
        if name not in PRESETS:
            raise ConfigError(f"unknown transformer preset '{name}' (presets: {', '.join(PRESETS)})")
        try:
            return replace(PRESETS[name], **overrides)
        except TypeError as exc:
            raise ConfigError(f"transformer preset '{name}': {exc}") from None


#: Sizes that mirror the released HyenaDNA checkpoints (HyenaDNA paper, Nguyen et al. 2023, and the
#: hub configs): same width, depth, MLP width and context, head width 64.
PRESETS: dict[str, TransformerConfig] = {
    "tiny-1k": TransformerConfig(d_model=128, n_layer=2, n_head=2, d_inner=512, max_len=1026),
    "tiny-1k-d256": TransformerConfig(d_model=256, n_layer=2, n_head=4, d_inner=1024, max_len=1026),
    "tiny-16k-d128": TransformerConfig(d_model=128, n_layer=2, n_head=2, d_inner=512, max_len=16386),
    "small-32k": TransformerConfig(d_model=256, n_layer=4, n_head=4, d_inner=1024, max_len=32770),
    "medium-160k": TransformerConfig(d_model=256, n_layer=8, n_head=4, d_inner=1024, max_len=160002),
    "medium-450k": TransformerConfig(d_model=256, n_layer=8, n_head=4, d_inner=1024, max_len=450002),
    "large-1m": TransformerConfig(d_model=256, n_layer=8, n_head=4, d_inner=1024, max_len=1000002),
}
PRESETS["tiny"] = PRESETS["tiny-1k"]
PRESETS["large"] = PRESETS["large-1m"]


# ---------------------------------------------------------------------------------------------
# Rotary position embeddings
# ---------------------------------------------------------------------------------------------


def rope_inv_freq(head_dim: int, base: float, device: torch.device | None = None) -> Tensor:
    """Rotary frequencies ``theta_i = base^(-2i/d_h)``, i = 0..d_h/2-1; shape (d_h/2,).

    float64 (float32 on devices without it), so that the angles of long contexts stay accurate.
    """
    wide = torch.float32 if device is not None and torch.device(device).type == "mps" else torch.float64
    return base ** (-torch.arange(0, head_dim, 2, dtype=wide, device=device) / head_dim)


def rope_cos_sin(positions: Tensor, inv_freq: Tensor) -> tuple[Tensor, Tensor]:
    """``cos(m theta_i)`` and ``sin(m theta_i)`` for absolute positions ``m``.

    positions: (L,) integers; inv_freq: (d_h/2,). Returns two float32 tensors (L, d_h/2).
    The angle ``m theta_i`` is formed in float64 (float32 where the device lacks it), so long
    contexts keep their phase accurate.
    """
    wide = torch.float32 if positions.device.type == "mps" else torch.float64
    angles = positions.to(wide)[:, None] * inv_freq.to(positions.device, wide)[None, :]
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate feature pairs ``(x_i, x_{i+d_h/2})`` by the angles ``m theta_i`` (RoFormer eq. 34).

    x: (B, H, L, d_h); cos, sin: (L, d_h/2). Pairs are formed from the two halves of the head
    ("rotate-half" layout), a fixed permutation of RoFormer's adjacent pairs. Computed in float32,
    returned in ``x.dtype``.
    """
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return out.to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------


def causal_attention_reference(q: Tensor, k: Tensor, v: Tensor, offset: int = 0) -> Tensor:
    """Explicit ``softmax(q k^T / sqrt(d_h) + M) v`` with a causal mask ``M``; the twin of the fast path.

    q: (B, H, L, d_h) at absolute positions ``offset .. offset+L-1``; k, v: (B, H, T, d_h) at
    positions ``0 .. T-1`` with ``T >= offset + L``. Query ``i`` sees keys ``j <= offset + i``.
    Returns (B, H, L, d_h).
    """
    L, T = q.shape[-2], k.shape[-2]
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, H, L, T)
    allowed = torch.arange(T, device=q.device)[None, :] <= offset + torch.arange(L, device=q.device)[:, None]
    scores = scores.masked_fill(~allowed, float("-inf"))
    return (scores.softmax(dim=-1) @ v.float()).to(q.dtype)


@dataclass
class KVCache:
    """Keys and values of one attention layer, preallocated and filled up to the state's offset.

    k, v: (B, H, T_max, d_h); keys are stored already rotated by their absolute positions.
    """

    k: Tensor
    v: Tensor


@dataclass
class AttentionCarry:
    """What the next chunk of one attention layer needs (:meth:`CausalSelfAttention.chunk`): the window
    ``W`` (the model's trained context) and the rotated keys and values of the last ``W - 1`` positions,
    k, v (B, H, <=W-1, d_h) (None before the first chunk); ``masks`` keeps the band masks of the query blocks
    (the same for every full block of every chunk)."""

    window: int
    k: Tensor | None = None
    v: Tensor | None = None
    masks: dict = field(default_factory=dict)


def band_mask(queries: int, keys: int, base: int, window: int, device: torch.device | None = None) -> Tensor:
    """(queries, keys) bool: query r sees key j where ``0 <= base + r - j < window`` (``base``: the query 0's
    key index)."""
    dist = base + torch.arange(queries, device=device)[:, None] - torch.arange(keys, device=device)[None, :]
    return (dist >= 0) & (dist < window)


#: Queries per block of :meth:`CausalSelfAttention.chunk`: the window / QUERY_BLOCK_FRACTION, at least
#: QUERY_BLOCK_MIN; a block scores ``window + block - 1`` keys, against ``window + chunk - 1`` for the chunk's
#: queries at once.
QUERY_BLOCK_FRACTION = 4
QUERY_BLOCK_MIN = 64


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with rotary embeddings (mixer contract of :mod:`dnalm.models.mixer`).

    ``q, k, v = split(in_proj u)``, ``q <- R_m q``, ``k <- R_n k`` (rotary, absolute positions),
    ``o = softmax(q k^T / sqrt(d_h) + M) v`` per head, ``out = out_proj(concat_heads o)``.
    u, out: (B, L, D). With a :class:`KVCache`, keys/values of positions ``offset..offset+L-1``
    are written into it and queries attend over every cached position ``<=`` their own.
    """

    def __init__(self, d_model: int, n_head: int, rope_base: float = 10000.0, dropout: float = 0.0,
                 bias: bool = True, device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        if d_model % n_head or (d_model // n_head) % 2:
            raise ConfigError(f"attention: d_model {d_model} must split into {n_head} heads of even width")
        self.d_model = d_model
        self.n_head = n_head
        self.head_dim = d_model // n_head
        self.rope_base = rope_base
        self.dropout = dropout
        self.in_proj = nn.Linear(d_model, 3 * d_model, bias=bias, device=device, dtype=dtype)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias, device=device, dtype=dtype)

    def _qkv(self, u: Tensor, offset: int) -> tuple[Tensor, Tensor, Tensor]:
        """u (B, L, D) at positions offset.. -> rotated q, rotated k, v, each (B, H, L, d_h)."""
        B, L, _ = u.shape
        q, k, v = self.in_proj(u).view(B, L, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        positions = torch.arange(offset, offset + L, device=u.device)
        inv_freq = rope_inv_freq(self.head_dim, self.rope_base, device=u.device)
        cos, sin = rope_cos_sin(positions, inv_freq)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def _out(self, o: Tensor) -> Tensor:
        """o (B, H, L, d_h) -> out_proj(concat heads) (B, L, D)."""
        B, _, L, _ = o.shape
        return self.out_proj(o.transpose(1, 2).reshape(B, L, self.d_model))

    def forward(self, u: Tensor, state: KVCache | None = None, offset: int = 0) -> Tensor:
        """u (B, L, D) -> (B, L, D); with a state, u holds positions offset..offset+L-1."""
        q, k, v = self._qkv(u, offset)
        p = self.dropout if self.training else 0.0
        if state is None:
            return self._out(F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True))
        end = offset + q.shape[-2]
        self._check_room(state, end)
        state.k[:, :, offset:end] = k
        state.v[:, :, offset:end] = v
        keys, values = state.k[:, :, :end].to(q.dtype), state.v[:, :, :end].to(q.dtype)
        if offset == 0:
            o = F.scaled_dot_product_attention(q, keys, values, dropout_p=p, is_causal=True)
        else:
            L = q.shape[-2]
            mask = torch.arange(end, device=q.device)[None, :] <= offset + torch.arange(L, device=q.device)[:, None]
            o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, dropout_p=p)
        return self._out(o)

    def step(self, u: Tensor, state: KVCache, offset: int) -> Tensor:
        """One token u (B, 1, D) at position ``offset`` -> (B, 1, D); attends over the cache (O(t·D))."""
        q, k, v = self._qkv(u, offset)
        self._check_room(state, offset + 1)
        state.k[:, :, offset] = k[:, :, 0]
        state.v[:, :, offset] = v[:, :, 0]
        keys, values = state.k[:, :, : offset + 1].to(q.dtype), state.v[:, :, : offset + 1].to(q.dtype)
        return self._out(F.scaled_dot_product_attention(q, keys, values))

    def chunk_carry(self, batch: int, length: int, context: int | None, device: torch.device | None = None,
                    dtype: torch.dtype | None = None) -> AttentionCarry:
        """An empty sliding window of ``context`` positions (the model's trained context)."""
        if context is None:
            raise ConfigError(f"{type(self).__name__}: the model's context is unknown, so is its attention window")
        return AttentionCarry(window=int(context))

    def chunk(self, u: Tensor, carry: AttentionCarry, offset: int) -> Tensor:
        """One chunk u (B, T, D) at positions ``offset..`` -> (B, T, D), sliding-window causal attention.

        Query ``offset + i`` attends to keys ``offset + i - W + 1 .. offset + i`` (the carried keys and the
        chunk's own; ``W = carry.window``), which is the causal attention of one pass while ``offset + T <= W``;
        rotary embeddings use absolute positions. Keeps the last ``W - 1`` keys and values in ``carry``.
        A chunk with no carried keys that fits the window runs as one causal attention (FlashAttention on a
        GPU); otherwise its queries go in blocks of about ``W / QUERY_BLOCK_FRACTION``, each over the keys
        its window reaches, with the band mask cached in ``carry`` (see ``QUERY_BLOCK_FRACTION``).
        """
        window = carry.window
        q, k, v = self._qkv(u, offset)  # (B, H, T, d_h)
        if carry.k is not None:
            k = torch.cat([carry.k.to(k.dtype), k], dim=2)
            v = torch.cat([carry.v.to(v.dtype), v], dim=2)
        T, S = q.shape[2], k.shape[2]
        before = S - T  # carried keys
        if before == 0 and T <= window:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            block = max(QUERY_BLOCK_MIN, window // QUERY_BLOCK_FRACTION)
            outs = []
            for i0 in range(0, T, block):
                i1 = min(i0 + block, T)
                k0 = max(0, before + i0 - window + 1)  # the oldest key any query of the block sees
                k1 = before + i1
                shape = (i1 - i0, k1 - k0, before + i0 - k0)
                mask = carry.masks.get(shape)
                if mask is None or mask.device != q.device:
                    mask = carry.masks[shape] = band_mask(*shape, window, q.device)
                outs.append(F.scaled_dot_product_attention(q[:, :, i0:i1], k[:, :, k0:k1], v[:, :, k0:k1],
                                                           attn_mask=mask))
            o = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
        keep = max(window - 1, 0)
        carry.k, carry.v = k[:, :, S - min(S, keep):].clone(), v[:, :, S - min(S, keep):].clone()
        return self._out(o)

    def chunk_range(self, context: int | None) -> tuple[int | None, int | None]:
        """Chunks of the window ``context`` by preference; no cap (a chunk's queries go in blocks, whose scores
        do not grow with the chunk)."""
        return context, None

    def chunk_limit(self, elements: int, context: int | None) -> int:
        """The longest chunk T whose keys and values with the carried ones, (H, W - 1 + T, d_h) per row, the
        scores of one query block and those of a first chunk within the window, (H, T, T), stay below
        ``elements``."""
        W = 1 if context is None else int(context)
        keys = elements // self.d_model - (W - 1)  # the carried and the chunk's keys, (H, W - 1 + T, d_h) per row
        block = max(QUERY_BLOCK_MIN, W // QUERY_BLOCK_FRACTION)
        if self.n_head * block * (W - 1 + block) >= elements:
            return 0  # one block's scores would not fit
        first = int((elements / self.n_head) ** 0.5)  # a first chunk T <= W: (H, T, T) scores at most
        return max(0, min(keys, first) if first < W else keys)

    @staticmethod
    def _check_room(state: KVCache, end: int) -> None:
        if end > state.k.shape[-2]:
            raise ConfigError(f"attention: KV cache holds {state.k.shape[-2]} positions, {end} needed")

    def allocate_state(self, batch: int, max_len: int, device: torch.device | None = None,
                       dtype: torch.dtype | None = None) -> KVCache:
        """Zeroed K/V cache for ``batch`` sequences of up to ``max_len`` tokens: 2 x (B, H, max_len, d_h)."""
        w = self.in_proj.weight
        shape = (batch, self.n_head, max_len, self.head_dim)
        kw = {"device": device or w.device, "dtype": dtype or w.dtype}
        return KVCache(k=torch.zeros(shape, **kw), v=torch.zeros(shape, **kw))


class TransformerLM(CausalLM):
    """The causal Transformer baseline: the LM shell of :mod:`dnalm.models.blocks` with attention mixers."""

    family = "transformer"

    def __init__(self, config: TransformerConfig, device: torch.device | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__(config.d_model, config.n_layer, config.d_inner, config.vocab_size,
                         lambda i: CausalSelfAttention(config.d_model, config.n_head, config.rope_base,
                                                       config.dropout, config.bias, device=device, dtype=dtype),
                         pad_vocab_size_multiple=config.pad_vocab_size_multiple, embed_dropout=config.dropout,
                         resid_dropout=config.dropout, layer_norm_eps=config.layer_norm_eps,
                         residual_in_fp32=True, mlp_bias=config.bias, initializer_range=config.initializer_range,
                         device=device, dtype=dtype)
        self.config = config
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    def allocate_state(self, batch: int, max_len: int | None = None, device: torch.device | None = None,
                       dtype: torch.dtype | None = None) -> InferenceState:
        """A fresh inference state (a K/V cache per layer); ``max_len`` defaults to ``config.max_len``."""
        return super().allocate_state(batch, max_len or self.config.max_len, device, dtype)


def _tokenizer(config: TransformerConfig):
    from dnalm.tokenizers import CharTokenizer

    return CharTokenizer()


def _info(config: TransformerConfig, seq_len: int, batch_size: int = 1, dtype="bf16"):
    from dnalm.models.info import transformer_info

    return transformer_info(config, seq_len, batch_size, dtype)


FAMILY = Family(name="transformer", config_cls=TransformerConfig, model_cls=TransformerLM, presets=PRESETS,
                objective=CAUSAL, lora_targets=("in_proj", "out_proj"), tokenizer=_tokenizer,
                context_field="max_len", info=_info)
