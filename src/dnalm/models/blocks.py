"""Building blocks shared by every causal LM family: MLP, pre-LN block and the LM shell.

Composition (the network of HyenaDNA, Nguyen et al. 2023, "HyenaDNA: Long-Range Genomic
Sequence Modeling at Single Nucleotide Resolution", in its pre-LN form)::

    x_0 = Dropout_emb(E[input_ids])                            # (B, L, D), layer 0
    x_i = x_{i-1}' + MLP(LN2 x_{i-1}'),  x_{i-1}' = x_{i-1} + Mixer(LN1 x_{i-1})   # block i
    h   = LN_f(x_n);   logits = h @ E^T                        # (B, L, V), head tied to E

``V`` is the vocabulary padded to a multiple of ``pad_vocab_size_multiple`` (12 -> 16).
The residual stream ``x_i`` is kept in float32 (float64 in a float64 model) when ``residual_in_fp32``
(HyenaDNA: always).

API
---
``MLP(d_model, d_inner, bias=True)``: fc1 -> GELU(tanh) -> fc2.
``Block(mixer, mlp, norm1, norm2, resid_dropout=0.0, residual_in_fp32=True)``: a pre-norm residual
    block around any mixer, MLP and norms (LayerNorm here; RMSNorm or gated MLPs in other families);
    ``forward(x, layer_state=None, offset=0)``, ``step(x, layer_state, offset)`` and
    ``with_mixer(x, fn)`` (the mixer's call replaced by ``fn``) on the residual stream x (B, L, D).
``run_blocks(backbone, input_ids, keep, block_fn)``: the loop of every backbone (embedding, blocks,
    final norm, the hidden states kept on the way); ``backbone_forward`` runs it with an inference state.
``CausalLM(d_model, n_layer, d_inner, vocab_size, mixer_factory, ...)``: the LM shell;
    ``mixer_factory(layer_idx) -> nn.Module`` builds the sequence mixer of each block (the mixer
    contract is in :mod:`dnalm.models.mixer`). Families subclass it only to attach their
    config (``model.config``, a frozen dataclass) and ``family`` name, e.g. ``HyenaLM``.

    * ``model(input_ids (B, L), state=None) -> logits (B, L, V)``; with an
      :class:`~dnalm.inference.state.InferenceState` the call continues the sequences at
      ``state.offset`` and advances it (a single token uses the mixers' ``step``).
    * ``model.hidden_states(input_ids, layers=None, state=None) -> list[Tensor]``: the
      hidden states (B, L, D) at the requested layer indices: ``0`` = embedding output,
      ``i`` (1..n_layer) = residual stream after block ``i``, ``n_layer + 1`` (or ``-1``) = after
      the final LayerNorm (what the LM head reads). ``None`` means all ``n_layer + 2``.
    * ``model.forward_with_hidden(input_ids, layers, state=None) -> (logits, list[Tensor])``.
    * ``model.allocate_state(batch, max_len, device=None, dtype=None) -> InferenceState``.
    * ``model.init_weights()``: HyenaDNA's initialisation (hyenadna.md §3.6).

Module names give HyenaDNA's state-dict keys: ``backbone.embeddings.word_embeddings.weight``,
``backbone.layers.{i}.{norm1,mixer,norm2,mlp.fc1,mlp.fc2}.*``, ``backbone.ln_f.*`` and
``lm_head.weight`` (the same tensor as the embedding), in HyenaDNA's order (mixer, norm1, mlp, norm2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dnalm.errors import ConfigError
from dnalm.inference.state import InferenceState, StepNotSupportedError
from dnalm.kernels.hyena_torch import wide


def pad_vocab(vocab_size: int, multiple: int) -> int:
    """``vocab_size`` rounded up to a multiple of ``multiple`` (12, 8 -> 16)."""
    return (vocab_size + multiple - 1) // multiple * multiple


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of unique parameters (a tied or shared tensor counts once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


class MLP(nn.Module):
    """Position-wise feed-forward network: ``fc2(GELU_tanh(fc1 x))``; x (..., D) -> (..., D)."""

    def __init__(self, d_model: int, d_inner: int, bias: bool = True, device: torch.device | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_inner, bias=bias, device=device, dtype=dtype)
        self.fc2 = nn.Linear(d_inner, d_model, bias=bias, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-LN residual block: ``x + drop(mixer(LN1 x))`` then ``x + drop(mlp(LN2 x))``.

    x: (B, L, D), the residual stream (float32 when ``residual_in_fp32``). ``layer_state`` and
    ``offset`` are handed to the mixer (see :mod:`dnalm.inference.state`). A mixer with a
    ``fused_block(block, x)`` method may compute the whole block at once (it returns None to decline).
    """

    def __init__(self, mixer: nn.Module, mlp: nn.Module, norm1: nn.Module, norm2: nn.Module,
                 resid_dropout: float = 0.0, residual_in_fp32: bool = True):
        super().__init__()
        self.mixer = mixer
        self.norm1 = norm1
        self.mlp = mlp
        self.norm2 = norm2
        self.dropout = nn.Dropout(resid_dropout)
        self.residual_in_fp32 = residual_in_fp32

    def _residual(self, x: Tensor) -> Tensor:
        return wide(x) if self.residual_in_fp32 else x

    def _norm(self, norm: nn.Module, x: Tensor) -> Tensor:
        return norm(x.to(norm.weight.dtype))

    def forward(self, x: Tensor, layer_state: object | None = None, offset: int = 0) -> Tensor:
        x = self._residual(x)
        fused = getattr(self.mixer, "fused_block", None) if layer_state is None else None
        out = fused(self, x) if fused is not None else None
        if out is not None:
            return out
        if layer_state is None:
            return self.with_mixer(x, self.mixer)
        return self.with_mixer(x, lambda h: self.mixer(h, state=layer_state, offset=offset))

    def with_mixer(self, x: Tensor, mixer: Callable[[Tensor], Tensor]) -> Tensor:
        """The block on x (B, L, D) with its mixer's call replaced by ``mixer`` (chunked inference, steps)."""
        x = self._residual(x)
        x = x + self.dropout(mixer(self._norm(self.norm1, x)))
        return x + self.dropout(self.mlp(self._norm(self.norm2, x)))

    def step(self, x: Tensor, layer_state: object, offset: int) -> Tensor:
        """One token: x (B, 1, D) at position ``offset`` -> (B, 1, D)."""
        step = getattr(self.mixer, "step", None)
        if step is None:
            raise StepNotSupportedError(f"{type(self.mixer).__name__} cannot decode step by step")
        return self.with_mixer(x, lambda h: step(h, layer_state, offset))


class Embeddings(nn.Module):
    """Token embedding ``E``: ids (B, L) -> (B, L, D); no position embedding."""

    def __init__(self, num_embeddings: int, d_model: int, device: torch.device | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.word_embeddings = nn.Embedding(num_embeddings, d_model, device=device, dtype=dtype)

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.word_embeddings(input_ids)


class Backbone(nn.Module):
    """Embedding -> blocks -> final LayerNorm ``ln_f`` (see the module docstring)."""

    def __init__(self, d_model: int, n_layer: int, d_inner: int, vocab_size: int,
                 mixer_factory: Callable[[int], nn.Module], pad_vocab_size_multiple: int = 8,
                 embed_dropout: float = 0.0, resid_dropout: float = 0.0, layer_norm_eps: float = 1e-5,
                 residual_in_fp32: bool = True, mlp_bias: bool = True, device: torch.device | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.embeddings = Embeddings(pad_vocab(vocab_size, pad_vocab_size_multiple), d_model, device, dtype)
        self.drop_emb = nn.Dropout(embed_dropout)
        self.layers = nn.ModuleList(
            Block(mixer_factory(i), MLP(d_model, d_inner, bias=mlp_bias, device=device, dtype=dtype),
                  nn.LayerNorm(d_model, eps=layer_norm_eps, device=device, dtype=dtype),
                  nn.LayerNorm(d_model, eps=layer_norm_eps, device=device, dtype=dtype),
                  resid_dropout=resid_dropout, residual_in_fp32=residual_in_fp32)
            for i in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model, eps=layer_norm_eps, device=device, dtype=dtype)
        self.residual_in_fp32 = residual_in_fp32

    def embed(self, input_ids: Tensor) -> Tensor:
        """input_ids (B, L) -> the residual stream x_0 (B, L, D) (layer 0)."""
        x = self.drop_emb(self.embeddings(input_ids))
        return wide(x) if self.residual_in_fp32 else x

    def final_norm(self, x: Tensor) -> Tensor:
        """``ln_f`` of the last residual stream x (B, L, D): what the LM head reads."""
        return self.ln_f(x.to(self.ln_f.weight.dtype))

    def forward(self, input_ids: Tensor, state: InferenceState | None = None,
                keep: Sequence[int] = ()) -> tuple[Tensor, list[Tensor]]:
        """input_ids (B, L) -> (final hidden (B, L, D), hidden states at layer indices ``keep``).

        Indices as in :meth:`CausalLM.hidden_states` (already normalised to 0..n_layer+1).
        """
        return backbone_forward(self, input_ids, state, keep)


def run_blocks(backbone: nn.Module, input_ids: Tensor, keep: Sequence[int],
               block_fn: Callable[[int, nn.Module, Tensor], Tensor]) -> tuple[Tensor, list[Tensor]]:
    """``backbone.embed`` -> ``x = block_fn(i, block, x)`` for each of ``backbone.layers`` ->
    ``backbone.final_norm``: (final hidden (B, L, D), hidden states at the layer indices ``keep``, normalised
    to 0..n_layer+1, in their order)."""
    n = len(backbone.layers)
    x = backbone.embed(input_ids)
    kept: dict[int, Tensor] = {0: x} if 0 in keep else {}
    for i, block in enumerate(backbone.layers):
        x = block_fn(i, block, x)
        if i + 1 in keep:
            kept[i + 1] = x
    h = backbone.final_norm(x)
    if n + 1 in keep:
        kept[n + 1] = h
    return h, [kept[i] for i in keep]


def backbone_forward(backbone: nn.Module, input_ids: Tensor, state: InferenceState | None = None,
                     keep: Sequence[int] = ()) -> tuple[Tensor, list[Tensor]]:
    """A backbone's forward (:func:`run_blocks`): one pass, or with ``state`` a continuation at
    ``state.offset`` (one token: the blocks' ``step``), advancing it."""
    n = len(backbone.layers)
    B, L = input_ids.shape
    if state is None:
        return run_blocks(backbone, input_ids, keep, lambda i, block, x: block(x))
    if len(state.layers) != n:
        raise ConfigError(f"inference state has {len(state.layers)} layers, the model {n}")
    state.check_room(L, B)
    if L == 1:
        out = run_blocks(backbone, input_ids, keep, lambda i, block, x: block.step(x, state.layers[i], state.offset))
    else:
        out = run_blocks(backbone, input_ids, keep, lambda i, block, x: block(x, state.layers[i], state.offset))
    state.advance(L)
    return out


def layer_indices(layers: Sequence[int] | None, top: int, top_means: str) -> list[int]:
    """Hidden-state indices 0..``top`` from ``layers`` (negative ones count from the end; None: all).

    ``top_means`` says what index ``top`` is, for the error message.
    """
    if layers is None:
        return list(range(top + 1))
    out = []
    for i in layers:
        j = int(i) + top + 1 if int(i) < 0 else int(i)
        if not 0 <= j <= top:
            raise ConfigError(f"layer {i} out of range: this model has hidden states 0..{top} "
                              f"(0 = embedding, {top} = {top_means})")
        out.append(j)
    return out


class CausalLM(nn.Module):
    """Backbone plus an LM head tied to the token embedding (see the module docstring)."""

    family: str = ""
    #: Next-token LM (the LM head at position t predicts token t+1); bidirectional encoders say False.
    causal: bool = True

    def __init__(self, d_model: int, n_layer: int, d_inner: int, vocab_size: int,
                 mixer_factory: Callable[[int], nn.Module], pad_vocab_size_multiple: int = 8,
                 embed_dropout: float = 0.0, resid_dropout: float = 0.0, layer_norm_eps: float = 1e-5,
                 residual_in_fp32: bool = True, mlp_bias: bool = True, initializer_range: float = 0.02,
                 device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.backbone = Backbone(d_model, n_layer, d_inner, vocab_size, mixer_factory,
                                 pad_vocab_size_multiple=pad_vocab_size_multiple, embed_dropout=embed_dropout,
                                 resid_dropout=resid_dropout, layer_norm_eps=layer_norm_eps,
                                 residual_in_fp32=residual_in_fp32, mlp_bias=mlp_bias,
                                 device=device, dtype=dtype)
        V = self.backbone.embeddings.word_embeddings.num_embeddings
        self.lm_head = nn.Linear(d_model, V, bias=False, device=device, dtype=dtype)
        self.lm_head.weight = self.backbone.embeddings.word_embeddings.weight
        self.n_layer = n_layer
        self.initializer_range = initializer_range

    @property
    def mixers(self) -> list[nn.Module]:
        return [block.mixer for block in self.backbone.layers]

    def _layer_indices(self, layers: Sequence[int] | None) -> list[int]:
        return layer_indices(layers, self.n_layer + 1, "after the final norm")

    def forward(self, input_ids: Tensor, state: InferenceState | None = None) -> Tensor:
        """input_ids (B, L) -> logits (B, L, V)."""
        h, _ = self.backbone(input_ids, state)
        return self.lm_head(h)

    def forward_with_hidden(self, input_ids: Tensor, layers: Sequence[int] | None,
                            state: InferenceState | None = None) -> tuple[Tensor, list[Tensor]]:
        """Logits (B, L, V) and the hidden states (B, L, D) at ``layers`` in one pass."""
        h, kept = self.backbone(input_ids, state, self._layer_indices(layers))
        return self.lm_head(h), kept

    def hidden_states(self, input_ids: Tensor, layers: Sequence[int] | None = None,
                      state: InferenceState | None = None) -> list[Tensor]:
        """Hidden states (B, L, D) at ``layers``.

        0 = embedding output, i = after block i, n_layer + 1 (or -1) = after ln_f.
        """
        _, kept = self.backbone(input_ids, state, self._layer_indices(layers))
        return kept

    def allocate_state(self, batch: int, max_len: int, device: torch.device | None = None,
                       dtype: torch.dtype | None = None) -> InferenceState:
        """A fresh :class:`InferenceState` for ``batch`` sequences of up to ``max_len`` tokens."""
        p = self.lm_head.weight
        return InferenceState.allocate(self.mixers, batch, max_len, device or p.device, dtype or p.dtype)

    @torch.no_grad()
    def init_weights(self) -> None:
        """HyenaDNA's ``_init_weights`` (hyenadna.md §3.6).

        Every Linear weight (the mixers' included) and the embedding ~ N(0, r), biases 0, with
        ``r = initializer_range``; LayerNorm (1, 0); then ``out_proj.weight`` and ``fc2.weight``
        ~ N(0, r / sqrt(2 n_layer)) (GPT-2's scaled residual init). Other mixer parameters
        (convolutions, filter gains, frequencies) keep the values their constructors gave them.
        """
        r = self.initializer_range
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=r)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=r)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for name, p in self.named_parameters():
            if name.endswith("out_proj.weight") or name.endswith("fc2.weight"):
                nn.init.normal_(p, std=r / math.sqrt(2 * self.n_layer))
