"""StripedHyena 2, the architecture of Evo 2, reproduced exactly from Arc Institute's ``vortex`` code.

References: Brixi et al. 2025, "Genome modeling and design across all domains of life with Evo 2";
Ku et al. 2025, "Systems and Algorithms for Convolutional Multi-Hybrid Language Models at Scale"
(StripedHyena 2). Facts about the reference code (vortex / ``vtx`` 1.1.0, the Evo 2 configs and
their checkpoint layouts) are in ``shared/reference/families.md`` section A; ``§A.n`` below points there.

The network (§A.1-A.4)::

    x_0 = E[input_ids]                                            # (B, L, d), byte vocabulary of 512
    x_i' = x_{i-1} + Mixer_i(RMSNorm(x_{i-1}))                    # block i
    x_i  = x_i' + MLP_i(RMSNorm(x_i'))
    logits = RMSNorm_f(x_n) @ E^T                                 # (B, L, 512), unembedding tied to E

``RMSNorm(x) = w * x / (||x||_2 d^(-1/2) + eps)`` (eps added to the RMS, not under the root);
``MLP_i(z) = l3(act_i(l1 z) * l2 z)`` without biases, act = exact GELU in layer 0 and the identity in
every later layer (``evo2_style_activations``). The mixer of each layer is one of four kinds, picked
by the config's ``hcs/hcm/hcl/attn_layer_idxs`` (letters S, D, H, * in :attr:`StripedHyenaConfig.pattern`):

* S, HCS (Hyena-SE), D, HCM (Hyena-MR), H, HCL (Hyena-LI): a gated convolution (§A.3)::

      z = ShortFIR_3(projections u)               # (B, 3d, L), depthwise causal FIR of 3 taps
      x2, x1, v = z[:, 0::3], z[:, 1::3], z[:, 2::3]    # interleaved rows (``interleave``)
      y = x2 * Inner(x1 * v);   out = out_filter_dense(y)

  with the inner operator an explicit FIR of 7 taps (HCS, ``hcs_filter_groups`` filters shared by
  runs of consecutive channels, no skip term), of 128 taps (HCM, computed by FFT, with a skip term
  ``D``), or the long implicit filter in modal form (HCL), one per channel::

      h[c, t] = sum_{n < N} R[c, n] exp(logpole[c, n] t),   Inner(x) = h * x + D x   (causal convolution)

  Explicit filters shorter than 128 taps are cross-correlations (``h[-1]`` weights the current
  token), from 128 taps on true convolutions (``h[0]`` weights it) plus ``D``, as in vortex.
* *, multi-head causal self-attention with rotary embeddings (GPT-NeoX "rotate-half" over the
  whole head, the stored ``inv_freq``, positions divided by ``rotary_emb_scaling_factor`` when
  ``use_interpolated_rotary_pos_emb``), QKV without bias, output projection with bias.

Inference state (mixer contract of :mod:`dnalm.models.mixer`): a gated convolution keeps the
last ``K - 1`` inputs of its short FIR and of an explicit inner FIR, or, for HCL, the modal state
``s[c, n] = sum_{t' <= t} p^(t - t') (x1 v)[c, t']`` with ``p = exp(logpole)``, updated by
``s <- p s + x1 v`` (O(d N) per token, no history). Attention keeps a K/V cache. A forward with a
state continues the sequences at ``offset`` for any number of tokens, so a long sequence fed chunk
by chunk through one state gives the outputs of a single pass: the explicit filters read the
carried inputs, the modal filter adds ``sum_n R p^(t+1) s_n`` (the carried state's part) to the
chunk's own FFT convolution and moves the state on by ``s <- p^T s + sum_t' p^(T-1-t') (x1 v)_t'``.
Prefill is this chunk computation from a zero state (an FFT convolution, then a direct weighted sum
per mode for the state; no (B, d, N, 2L) complex tensor as in vortex's FFT prefill). Chunked inference
(:meth:`GatedConvolution.chunk`) is this forward with a state, exact at any length; attention layers chunk
over a sliding window of the trained context (``max_seqlen``), as :class:`RotaryAttention` inherits from
:class:`~dnalm.models.transformer.CausalSelfAttention`.

Precision: the convolutions, gates and modal filters run in float32 (float64 for a float64 model)
even under autocast, the residual stream is at least float32, the linear layers follow the model
dtype or autocast. The modal filters (``log_poles``, ``residues``, ``D``) and the rotary ``inv_freq``
stay float32 when the model is cast to a 16-bit dtype (vortex keeps poles and residues in float32 too;
casting ``inv_freq`` would move the rotary angles).

API: ``StripedHyenaLM(StripedHyenaConfig.preset("tiny"))`` is called like every causal LM of
:mod:`dnalm.models.blocks` (it is a :class:`~dnalm.models.blocks.CausalLM`: ``model(ids, state)``,
``forward_with_hidden``, ``hidden_states``, ``allocate_state``, ``mixers``); hidden state ``i`` is the
residual stream after block ``i``, ``n_layer + 1`` the output of the final norm. :func:`load_vortex`
reads the released ``evo2_*`` ``.pt`` files (§A.5); :class:`ByteTokenizer` is Evo 2's byte tokenizer.

Notation: ``B`` batch, ``L`` length, ``d = hidden_size``, ``N = state_size`` modes, ``K`` taps, ``G`` filter groups.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dnalm.errors import ConfigError, InputError
from dnalm.inference.state import InferenceState
from dnalm.models.blocks import CausalLM, Embeddings, backbone_forward
from dnalm.models.family import CAUSAL, Alphabet, Family, Importer
from dnalm.models.hyena import fftconv_ref
from dnalm.models.transformer import CausalSelfAttention, apply_rope, rope_cos_sin, rope_inv_freq
from dnalm.tokenizers import SavedOptions, fitted_rows, padded_batch

log = logging.getLogger(__name__)

#: Explicit filters with at least this many taps are true convolutions computed by FFT, with a skip
#: term ``D``; shorter ones are direct cross-correlations without one (vortex ``model.py:205-209, 366``).
FFT_FIR_MIN_TAPS = 128
#: Positions per block of a modal filter's chunk (inference with a state): the powers p^t, t < T, are
#: p^(j MODAL_BLOCK) p^r for r < MODAL_BLOCK, so a chunk needs (d, N, MODAL_BLOCK) and (d, N, T / MODAL_BLOCK)
#: powers instead of (d, N, T) (1 GB per HCL layer at evo2-1b's width and an 8k chunk, in float32).
MODAL_BLOCK = 128

#: Layer kinds, in the order of the config's index lists, and their pattern letters (§A.1).
KINDS: tuple[str, ...] = ("hcs", "hcm", "hcl", "attn")
LETTERS: dict[str, str] = {"S": "hcs", "D": "hcm", "H": "hcl", "*": "attn"}
_LETTER_OF = {kind: letter for letter, kind in LETTERS.items()}
MLP_ACTIVATIONS = ("gelu",)


def _wide(dtype: torch.dtype) -> torch.dtype:
    """The dtype the convolutions and the residual stream use: at least float32."""
    return torch.promote_types(dtype, torch.float32)


def pattern_fields(pattern: str) -> dict[str, Any]:
    """``num_layers`` and the four index lists of a layer pattern such as ``"SDH*SDH*"`` (S = HCS,
    D = HCM, H = HCL, * = attention)."""
    bad = sorted({c for c in pattern if c not in LETTERS})
    if not pattern or bad:
        raise ConfigError(f"stripedhyena: layer pattern {pattern!r} must be a non-empty string of "
                          f"S, D, H and * (found {', '.join(map(repr, bad)) or 'nothing'})")
    out: dict[str, Any] = {"num_layers": len(pattern)}
    for letter, kind in LETTERS.items():
        out[f"{kind}_layer_idxs"] = tuple(i for i, c in enumerate(pattern) if c == letter)
    return out


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StripedHyenaConfig:
    """Hyperparameters of :class:`StripedHyenaLM`, named as in vortex's configs (§A.2).

    ``hidden_size`` d, ``num_layers``, ``num_attention_heads`` (head width d / heads, even),
    ``inner_mlp_size`` (MLP width), ``vocab_size`` (512 bytes); ``{hcs,hcm,hcl,attn}_layer_idxs``:
    which layers are of which kind (together exactly ``0 .. num_layers-1``); ``short_filter_length``:
    taps of the featurizer FIR on the 3d projection channels; ``hcs_filter_length`` /
    ``hcm_filter_length`` and ``*_filter_groups``: taps and number of distinct explicit filters
    (each shared by d / groups consecutive channels); ``state_size``: modes N of the long filters;
    ``eps``: RMSNorm eps; ``rotary_emb_base``: base of a new model's rotary frequencies (a loaded
    checkpoint brings its own ``inv_freq``); ``use_interpolated_rotary_pos_emb`` with
    ``rotary_emb_scaling_factor``: positions divided by the factor (linear interpolation of the
    1M-context models); ``interleave``: the projection rows are (x2, x1, v) interleaved (else three
    consecutive blocks); ``hyena_flip_x1x2`` swaps the roles of x1 and x2; ``evo2_style_activations``:
    GELU in layer 0's MLP only (else in every MLP); ``mlp_activation``: ``gelu`` (exact, erf);
    ``tie_embeddings``: unembedding = embedding; ``final_norm``: RMSNorm before the unembedding;
    ``*_bias``: biases of the attention QKV and output projections and of ``out_filter_dense``;
    ``max_seqlen``: the trained context, the default size of a K/V cache (the convolutions have no
    length limit); ``initializer_range``: std of new linear and embedding weights (not a vortex field).
    """

    hidden_size: int = 128
    num_layers: int = 8
    num_attention_heads: int = 4
    inner_mlp_size: int = 336
    vocab_size: int = 512
    hcs_layer_idxs: tuple[int, ...] = (0, 4)
    hcm_layer_idxs: tuple[int, ...] = (1, 5)
    hcl_layer_idxs: tuple[int, ...] = (2, 6)
    attn_layer_idxs: tuple[int, ...] = (3, 7)
    short_filter_length: int = 3
    hcs_filter_length: int = 7
    hcs_filter_groups: int = 8
    hcm_filter_length: int = 128
    hcm_filter_groups: int = 8
    state_size: int = 16
    eps: float = 1e-6
    rotary_emb_base: float = 10000.0
    use_interpolated_rotary_pos_emb: bool = False
    rotary_emb_scaling_factor: float = 1.0
    interleave: bool = True
    hyena_flip_x1x2: bool = False
    evo2_style_activations: bool = True
    mlp_activation: str = "gelu"
    tie_embeddings: bool = True
    final_norm: bool = True
    qkv_proj_bias: bool = False
    mha_out_proj_bias: bool = True
    hyena_out_proj_bias: bool = True
    max_seqlen: int = 8192
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        for kind in KINDS:
            name = f"{kind}_layer_idxs"
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                raise ConfigError(f"stripedhyena: {name} must be a list of layer indices, got {value!r}")
            object.__setattr__(self, name, tuple(int(i) for i in value))
        for name in ("hidden_size", "num_layers", "num_attention_heads", "inner_mlp_size", "vocab_size",
                     "short_filter_length", "hcs_filter_length", "hcs_filter_groups", "hcm_filter_length",
                     "hcm_filter_groups", "state_size", "max_seqlen"):
            if getattr(self, name) < 1:
                raise ConfigError(f"stripedhyena: {name} must be >= 1, got {getattr(self, name)}")
        seen: dict[int, str] = {}
        for kind in KINDS:
            for i in getattr(self, f"{kind}_layer_idxs"):
                if not 0 <= i < self.num_layers:
                    raise ConfigError(f"stripedhyena: {kind}_layer_idxs holds {i}, outside 0..{self.num_layers - 1}")
                if i in seen:
                    raise ConfigError(f"stripedhyena: layer {i} is in both {seen[i]}_layer_idxs and "
                                      f"{kind}_layer_idxs")
                seen[i] = kind
        if len(seen) != self.num_layers:
            missing = sorted(set(range(self.num_layers)) - set(seen))
            raise ConfigError(f"stripedhyena: layers {missing} are in none of hcs/hcm/hcl/attn_layer_idxs")
        d = self.hidden_size
        if d % self.num_attention_heads or (d // self.num_attention_heads) % 2:
            raise ConfigError(f"stripedhyena: hidden_size {d} must split into {self.num_attention_heads} heads "
                              "of even width (rotary embeddings)")
        for name in ("hcs_filter_groups", "hcm_filter_groups"):
            if d % getattr(self, name):
                raise ConfigError(f"stripedhyena: hidden_size {d} must be divisible by {name} "
                                  f"({getattr(self, name)})")
        if self.mlp_activation not in MLP_ACTIVATIONS:
            raise ConfigError(f"stripedhyena: mlp_activation must be one of {', '.join(MLP_ACTIVATIONS)}, "
                              f"got {self.mlp_activation!r}")
        if not self.eps > 0:
            raise ConfigError(f"stripedhyena: eps must be > 0, got {self.eps}")
        if not self.rotary_emb_base > 1:
            raise ConfigError(f"stripedhyena: rotary_emb_base must be > 1, got {self.rotary_emb_base}")
        if not self.rotary_emb_scaling_factor > 0:
            raise ConfigError(f"stripedhyena: rotary_emb_scaling_factor must be > 0, "
                              f"got {self.rotary_emb_scaling_factor}")

    @property
    def layer_kinds(self) -> tuple[str, ...]:
        """The kind of every layer (``hcs``, ``hcm``, ``hcl`` or ``attn``), in order."""
        kinds = [""] * self.num_layers
        for kind in KINDS:
            for i in getattr(self, f"{kind}_layer_idxs"):
                kinds[i] = kind
        return tuple(kinds)

    @property
    def pattern(self) -> str:
        """The layer pattern in letters, e.g. ``SDH*SDHSDH*...`` for Evo 2 1B (S, D, H, * as in §A.1)."""
        return "".join(_LETTER_OF[k] for k in self.layer_kinds)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary_position_scale(self) -> float:
        """What positions are divided by before the rotary angles (1 without interpolation)."""
        return float(self.rotary_emb_scaling_factor) if self.use_interpolated_rotary_pos_emb else 1.0

    @classmethod
    def preset(cls, name: str, pattern: str | None = None, **overrides: Any) -> StripedHyenaConfig:
        """A named preset (see :data:`PRESETS`) with some fields replaced; ``pattern`` (e.g.
        ``"SDH*SDH*"``) sets ``num_layers`` and the four index lists at once."""
        if name not in PRESETS:
            raise ConfigError(f"unknown stripedhyena preset '{name}' (presets: {', '.join(PRESETS)})")
        if pattern is not None:
            overrides = {**pattern_fields(pattern), **overrides}
        try:
            return replace(PRESETS[name], **overrides)
        except TypeError as exc:
            raise ConfigError(f"stripedhyena preset '{name}': {exc}") from None


_EVO2_1B = "SDH*SDHSDH*SDHSDH*SDHSDH*"
_EVO2_7B = "SDH*SDHSDH*SDHSDH*SDHSDH*SDHSDH*"
_EVO2_40B = "SDH*SDHSDH*SDHSDH*SDHSDH*SDHSDH*SDH*SDHSDH*SDHSDH*"


def _preset(pattern: str, **fields_: Any) -> StripedHyenaConfig:
    return StripedHyenaConfig(**{**pattern_fields(pattern), **fields_})


#: Evo 2's published configs (``evo2`` 0.6.0 ``configs/evo2-*.yml``, §A.1) and two small models for
#: training from scratch (``tiny`` 1.6 M parameters, ``small`` 6.5 M; one attention layer
#: in four, explicit filter groups of 16 channels as in Evo 2 7B). The 1M-context configs divide
#: rotary positions by 128. Other copies of the 40B-1M (and 7B-1M) configs give a rotary base of 1e11
#: instead; a checkpoint's stored ``inv_freq`` decides, the base only seeds a new model.
PRESETS: dict[str, StripedHyenaConfig] = {
    "tiny": _preset("SDH*SDH*", hidden_size=128, num_attention_heads=4, inner_mlp_size=336,
                    hcs_filter_groups=8, hcm_filter_groups=8, max_seqlen=1024),
    "small": _preset("SDH*SDH*", hidden_size=256, num_attention_heads=8, inner_mlp_size=688,
                     hcs_filter_groups=16, hcm_filter_groups=16, max_seqlen=8192),
    "1b-8k": _preset(_EVO2_1B, hidden_size=1920, num_attention_heads=15, inner_mlp_size=5120,
                     hcs_filter_groups=128, hcm_filter_groups=128, max_seqlen=8192, rotary_emb_base=1e4),
    "7b-8k": _preset(_EVO2_7B, hidden_size=4096, num_attention_heads=32, inner_mlp_size=11008,
                     hcs_filter_groups=256, hcm_filter_groups=256, max_seqlen=32768, rotary_emb_base=1e4),
    "7b-1m": _preset(_EVO2_7B, hidden_size=4096, num_attention_heads=32, inner_mlp_size=11264,
                     hcs_filter_groups=256, hcm_filter_groups=256, max_seqlen=1048576, rotary_emb_base=1e4,
                     use_interpolated_rotary_pos_emb=True, rotary_emb_scaling_factor=128.0),
    "40b-8k": _preset(_EVO2_40B, hidden_size=8192, num_attention_heads=64, inner_mlp_size=21888,
                      hcs_filter_groups=512, hcm_filter_groups=512, max_seqlen=8192, rotary_emb_base=1e6),
    "40b-1m": _preset(_EVO2_40B, hidden_size=8192, num_attention_heads=64, inner_mlp_size=22528,
                      hcs_filter_groups=512, hcm_filter_groups=512, max_seqlen=1048576, rotary_emb_base=1e6,
                      use_interpolated_rotary_pos_emb=True, rotary_emb_scaling_factor=128.0),
}


# ---------------------------------------------------------------------------------------------
# Norm, MLP, causal FIR
# ---------------------------------------------------------------------------------------------


class _KeepFloat32(nn.Module):
    """A module whose floating tensors never go below float32 when the model is cast (``model.to(bf16)``,
    ``.half()``): they move to the new device but keep their precision. Wider casts (float64) apply."""

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> nn.Module:
        def keep(t: Tensor) -> Tensor:
            out = fn(t)
            narrowed = (t.is_floating_point() and out.is_floating_point()
                        and out.dtype.itemsize < 4 <= t.dtype.itemsize)
            return t.to(out.device) if narrowed else out

        if recurse:  # children (e.g. the attention's Linear layers) are cast as usual
            for module in self.children():
                module._apply(fn)
        return super()._apply(keep, recurse=False)


class RMSNorm(nn.Module):
    """``weight * x / (||x||_2 d^(-1/2) + eps)`` over the last dimension (§A.4; eps outside the root).

    x: (..., d) -> (..., d) in the weight's dtype, computed in at least float32.
    """

    def __init__(self, d: int, eps: float = 1e-6, device: torch.device | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.d = d
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        wide = _wide(x.dtype)
        x = x.to(wide)
        y = x / (x.norm(2, dim=-1, keepdim=True) * self.d ** (-0.5) + self.eps)
        return (self.weight.to(wide) * y).to(self.weight.dtype)


class GatedMLP(nn.Module):
    """``l3(act(l1 z) * l2 z)``, no biases; act = exact GELU or the identity (§A.4). z: (..., d) -> (..., d)."""

    def __init__(self, d: int, d_inner: int, gelu: bool, device: torch.device | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.l1 = nn.Linear(d, d_inner, bias=False, **kw)
        self.l2 = nn.Linear(d, d_inner, bias=False, **kw)
        self.l3 = nn.Linear(d_inner, d, bias=False, **kw)
        self.gelu = gelu

    def forward(self, z: Tensor) -> Tensor:
        a = self.l1(z)
        return self.l3((F.gelu(a) if self.gelu else a) * self.l2(z))


def causal_fir(x: Tensor, w: Tensor, history: Tensor | None = None) -> Tensor:
    """Depthwise causal FIR as a cross-correlation: ``y[c, t] = sum_k w[c, k] x[c, t - K + 1 + k]``.

    x: (B, C, L); w: (C, K), ``w[:, K-1]`` weighting the current input; history: (B, C, K-1) the inputs
    before x (zeros when None), replaced by the last K-1 inputs. Returns (B, C, L) in at least float32
    (vortex computes these convolutions in float32), as K multiply-adds of shifted inputs (the same sum
    as a depthwise ``F.conv1d``, whose CPU kernels are 100x slower at these sizes; no autocast op).
    """
    K, L = w.shape[-1], x.shape[-1]
    wide = _wide(x.dtype)
    x = x.to(wide)
    w = w.to(wide)
    if history is None:
        window = F.pad(x, (K - 1, 0))
    else:
        window = torch.cat([history.to(wide), x], dim=-1)  # (B, C, K-1+L)
        if K > 1:
            history.copy_(window[..., L:])
    y = window[..., :L] * w[:, 0, None]
    for k in range(1, K):
        y = y.addcmul_(window[..., k: k + L], w[:, k, None])
    return y


def fir_step(x: Tensor, w: Tensor, history: Tensor) -> Tensor:
    """One step of :func:`causal_fir`: x (B, C) the new input, w (C, K), history (B, C, K-1) updated;
    returns (B, C) in at least float32."""
    wide = _wide(x.dtype)
    window = torch.cat([history.to(wide), x.to(wide)[..., None]], dim=-1)  # (B, C, K): oldest .. newest
    history.copy_(window[..., 1:])
    return (window * w.to(wide)).sum(-1)  # elementwise: no autocast op


# ---------------------------------------------------------------------------------------------
# Inner filters of the gated convolutions
# ---------------------------------------------------------------------------------------------


class ExplicitFilter(nn.Module):
    """An explicit FIR filter of HCS (short) or HCM (medium) blocks (§A.3).

    h: (G, 1, K), shared by runs of d/G consecutive channels. With K < 128 the filter is a direct
    cross-correlation (``h[..., K-1]`` weights the current token) without skip term; with K >= 128 a
    true convolution (``h[..., 0]`` weights it), computed by FFT, plus ``D * x`` with D: (d,).
    The inference state is the last K-1 inputs (B, d, K-1).
    """

    def __init__(self, d: int, groups: int, taps: int, device: torch.device | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.d = d
        self.repeat = d // groups
        self.taps = taps
        self.convolution = taps >= FFT_FIR_MIN_TAPS
        self.h = nn.Parameter(torch.zeros(groups, 1, taps, device=device, dtype=dtype))
        if self.convolution:
            self.D = nn.Parameter(torch.zeros(d, device=device, dtype=dtype))
        else:
            self.register_parameter("D", None)

    def kernel(self, dtype: torch.dtype) -> Tensor:
        """The per-channel filter (d, K) in convolution order: ``kernel[:, j]`` weights the input j steps back."""
        h = self.h[:, 0].to(dtype).repeat_interleave(self.repeat, dim=0)
        return h if self.convolution else h.flip(-1)

    def _skip(self, x: Tensor) -> Tensor:
        return x * self.D.to(x.dtype)[:, None] if self.D is not None else 0.0

    def forward(self, x: Tensor, history: Tensor | None = None) -> Tensor:
        """x: (B, d, L) in float32 or float64 -> (B, d, L); ``history`` (B, d, K-1) is read and updated."""
        k = self.kernel(x.dtype)
        if not self.convolution:
            return causal_fir(x, k.flip(-1), history)
        L, K = x.shape[-1], self.taps
        zero = k.new_zeros(self.d)
        if history is None:
            return fftconv_ref(x, k[:, :L], zero) + self._skip(x)
        window = torch.cat([history.to(x.dtype), x], dim=-1)  # (B, d, K-1+L)
        history.copy_(window[..., window.shape[-1] - (K - 1):])
        return fftconv_ref(window, k, zero)[..., K - 1:] + self._skip(x)

    def step(self, x: Tensor, history: Tensor) -> Tensor:
        """One token: x (B, d) -> (B, d); history (B, d, K-1) updated."""
        y = fir_step(x, self.kernel(x.dtype).flip(-1), history)
        return y + x * self.D.to(x.dtype) if self.D is not None else y

    def allocate(self, batch: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        return torch.zeros(batch, self.d, self.taps - 1, device=device, dtype=dtype)


def block_powers(logp: Tensor, L: int) -> tuple[Tensor, Tensor]:
    """The powers ``p^t = exp(logp t)``, t < L, as two factors: ``within`` (..., b) = p^r for r < b and
    ``blocks`` (..., J) = p^(j b) for j < J, so that ``p^t = blocks[t // b] within[t % b]``
    (``b = min(MODAL_BLOCK, L)``, ``J = ceil(L / b)``)."""
    b = max(1, min(MODAL_BLOCK, L))
    J = -(-L // b)
    within = torch.exp(logp[..., None] * torch.arange(b, device=logp.device, dtype=logp.dtype))
    blocks = torch.exp(logp[..., None] * torch.arange(0, J * b, b, device=logp.device, dtype=logp.dtype))
    return within, blocks


def modal_sum(c: Tensor, within: Tensor, blocks: Tensor, L: int) -> Tensor:
    """``y[..., d, t] = sum_n c[..., d, n] p[d, n]^t`` for t < L, from :func:`block_powers`' factors (d, N, b)
    and (d, N, J): c (d, N) or (B, d, N) -> (d, L) or (B, d, L), one batched product per block row."""
    J, b = blocks.shape[-1], within.shape[-1]
    y = torch.einsum("...dnj,dnr->...djr", c[..., None] * blocks, within)
    return y.reshape(*c.shape[:-1], J * b)[..., :L]


class ModalFilter(_KeepFloat32):
    """The long implicit filter of HCL blocks in modal (pole-residue) form (§A.3), one per channel.

    ``h[c, t] = sum_n R[c, n] exp(logpole[c, n] t)``, applied as a causal convolution plus ``D * x``.
    log_poles: (d, N, 1) (real, negative for a decaying filter); residues: (d, N); D: (d,).
    The inference state is the modal state s: (B, d, N), ``s_t = p s_{t-1} + x_t`` with ``p = exp(logpole)``,
    so that ``y_t = sum_n R s_t + D x_t``.
    """

    def __init__(self, d: int, state_size: int, device: torch.device | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.d = d
        self.state_size = state_size
        kw = {"device": device, "dtype": _wide(dtype or torch.get_default_dtype())}
        self.log_poles = nn.Parameter(torch.zeros(d, state_size, 1, **kw))
        self.residues = nn.Parameter(torch.zeros(d, state_size, **kw))
        self.D = nn.Parameter(torch.zeros(d, device=device, dtype=dtype))

    def modes(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(logpole (d, N), R (d, N)) in ``dtype``."""
        return self.log_poles[..., 0].to(dtype), self.residues.to(dtype)

    def filter(self, L: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """The first L taps (d, L), ``sum_n R p^t`` over blocks of positions (:func:`block_powers`; no (d, N, L)
        tensor)."""
        logp, R = self.modes(dtype)
        with torch.autocast(logp.device.type, enabled=False):  # a sum of modes: keep it in ``dtype``
            within, blocks = block_powers(logp, L)
            return modal_sum(R, within, blocks, L)

    def forward(self, x: Tensor, state: Tensor | None = None) -> Tensor:
        """x: (B, d, L) in float32 or float64 -> (B, d, L); ``state`` (B, d, N) is read and advanced by L.

        With a state (inference), the taps ``h_t = sum_n R p^t``, the carried state's part of y,
        ``sum_n R p^(t+1) s``, and the new state, ``p^T s + sum_t p^(T-1-t) x_t``, are computed over blocks of
        ``MODAL_BLOCK`` positions: with t = j b + r, ``p^t = p^(j b) p^r``, so each is a batched product of
        (d, N, T / b) and (d, N, b) powers, and no (d, N, T) tensor is formed."""
        L = x.shape[-1]
        if state is None:
            return fftconv_ref(x, self.filter(L, x.dtype), x.new_zeros(self.d)) + x * self.D.to(x.dtype)[:, None]
        with torch.autocast(x.device.type, enabled=False):  # batched products: keep them in x's dtype
            logp, R = self.modes(x.dtype)
            within, blocks = block_powers(logp, L)  # (d, N, b), (d, N, J)
            J, b = blocks.shape[-1], within.shape[-1]
            s = state.to(x.dtype)
            h = modal_sum(R, within, blocks, L)
            carried = modal_sum(s * (R * torch.exp(logp)), within, blocks, L)  # sum_n R p^(t+1) s_n
            # new state: x padded in front to J b positions, sum_j p^((J-1-j) b) sum_r p^(b-1-r) x[j b + r]
            padded = F.pad(x, (J * b - L, 0)).view(x.shape[0], self.d, J, b)
            inner = torch.einsum("bdjr,dnr->bdnj", padded, within.flip(-1))
            state.copy_(s * torch.exp(logp * L) + torch.einsum("bdnj,dnj->bdn", inner, blocks.flip(-1)))
            return fftconv_ref(x, h, x.new_zeros(self.d)) + x * self.D.to(x.dtype)[:, None] + carried

    def step(self, x: Tensor, state: Tensor) -> Tensor:
        """One token: x (B, d) -> (B, d); ``state`` (B, d, N) updated: ``s <- p s + x``."""
        logp, R = self.modes(x.dtype)
        state.copy_(torch.exp(logp) * state.to(x.dtype) + x[..., None])
        return (state.to(x.dtype) * R).sum(-1) + x * self.D.to(x.dtype)

    def allocate(self, batch: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        return torch.zeros(batch, self.d, self.state_size, device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Mixers
# ---------------------------------------------------------------------------------------------


@dataclass
class GatedConvState:
    """Inference state of one :class:`GatedConvolution`.

    short: (B, 3d, K_s - 1) the last inputs of the featurizer FIR; inner: the inner filter's state,
    (B, d, K - 1) inputs for an explicit filter or the modal state (B, d, N). Float32 (float64 for a
    float64 model); zeros before the first token.
    """

    short: Tensor
    inner: Tensor


class GatedConvolution(nn.Module):
    """The mixer of a Hyena block (HCS, HCM or HCL; §A.3), mixer contract of :mod:`dnalm.models.mixer`.

    u (B, L, d) -> ``out_filter_dense(x2 * Inner(x1 * v))`` (B, L, d), where (x2, x1, v) are the
    interleaved rows of ``ShortFIR(projections u)``.
    """

    def __init__(self, config: StripedHyenaConfig, kind: str, device: torch.device | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        d = config.hidden_size
        kw = {"device": device, "dtype": dtype}
        self.kind = kind
        self.d = d
        self.interleave = config.interleave
        self.flip_x1x2 = config.hyena_flip_x1x2
        self.projections = nn.Linear(d, 3 * d, bias=False, **kw)
        self.short_filter_weight = nn.Parameter(torch.zeros(3 * d, 1, config.short_filter_length, **kw))
        if kind == "hcs":
            self.filter: ExplicitFilter | ModalFilter = ExplicitFilter(
                d, config.hcs_filter_groups, config.hcs_filter_length, **kw)
        elif kind == "hcm":
            self.filter = ExplicitFilter(d, config.hcm_filter_groups, config.hcm_filter_length, **kw)
        elif kind == "hcl":
            self.filter = ModalFilter(d, config.state_size, **kw)
        else:
            raise ConfigError(f"stripedhyena: unknown gated convolution kind {kind!r}")
        self.out_filter_dense = nn.Linear(d, d, bias=config.hyena_out_proj_bias, **kw)

    def _gates(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Featurizer output (B, 3d, ...) -> (x2, x1, v), each (B, d, ...)."""
        if self.interleave:
            x2, x1, v = z[:, 0::3], z[:, 1::3], z[:, 2::3]
        else:
            x2, x1, v = z.split(self.d, dim=1)
        return (x1, x2, v) if self.flip_x1x2 else (x2, x1, v)

    def _out(self, y: Tensor) -> Tensor:
        return self.out_filter_dense(y.to(self.out_filter_dense.weight.dtype))

    def forward(self, u: Tensor, state: GatedConvState | None = None, offset: int = 0) -> Tensor:
        """u (B, L, d) -> (B, L, d); with a state, u holds positions offset..offset+L-1 (any L)."""
        z = self.projections(u).transpose(1, 2)  # (B, 3d, L)
        z = causal_fir(z, self.short_filter_weight[:, 0], None if state is None else state.short)
        x2, x1, v = self._gates(z)
        y = x2 * self.filter(x1 * v, None if state is None else state.inner)
        return self._out(y.transpose(1, 2))

    def step(self, u: Tensor, state: GatedConvState, offset: int) -> Tensor:
        """One token u (B, 1, d) at position ``offset`` -> (B, 1, d), O(d (K + N)) work."""
        z = fir_step(self.projections(u[:, 0]), self.short_filter_weight[:, 0], state.short)  # (B, 3d)
        x2, x1, v = self._gates(z)
        return self._out(x2 * self.filter.step(x1 * v, state.inner))[:, None]

    def allocate_state(self, batch: int, max_len: int, device: torch.device | None = None,
                       dtype: torch.dtype | None = None) -> GatedConvState:
        """Zeroed state for ``batch`` sequences; its size does not depend on ``max_len``."""
        w = self.projections.weight
        device = device or w.device
        wide = _wide(dtype or w.dtype)
        K = self.short_filter_weight.shape[-1]
        return GatedConvState(short=torch.zeros(batch, 3 * self.d, K - 1, device=device, dtype=wide),
                              inner=self.filter.allocate(batch, device, wide))

    def chunk_carry(self, batch: int, length: int, context: int | None, device: torch.device | None = None,
                    dtype: torch.dtype | None = None) -> GatedConvState:
        """The inference state: a fixed size, exact at any length (FIR histories, the modal state)."""
        return self.allocate_state(batch, length, device, dtype)

    def chunk(self, u: Tensor, carry: GatedConvState, offset: int) -> Tensor:
        """One chunk u (B, T, d) at positions ``offset..`` -> (B, T, d): the forward with the state ``carry``."""
        return self(u, state=carry, offset=offset)


class RotaryAttention(_KeepFloat32, CausalSelfAttention):
    """Evo 2's attention (§A.4): :class:`~dnalm.models.transformer.CausalSelfAttention` (its K/V cache,
    chunked and step forward) with vortex's biases, the stored rotary frequencies ``inv_freq`` (d_h/2,)
    and positions divided by ``position_scale``. ``in_proj`` rows are in (q|k|v, head, d_h) order."""

    def __init__(self, config: StripedHyenaConfig, device: torch.device | None = None,
                 dtype: torch.dtype | None = None):
        d = config.hidden_size
        super().__init__(d, config.num_attention_heads, config.rotary_emb_base, 0.0, bias=config.qkv_proj_bias,
                         device=device, dtype=dtype)
        if config.mha_out_proj_bias != config.qkv_proj_bias:
            self.out_proj = nn.Linear(d, d, bias=config.mha_out_proj_bias, device=device, dtype=dtype)
        self.position_scale = config.rotary_position_scale
        self.register_buffer("inv_freq", rope_inv_freq(self.head_dim, config.rotary_emb_base, device).float())

    def _qkv(self, u: Tensor, offset: int) -> tuple[Tensor, Tensor, Tensor]:
        """u (B, L, d) at positions offset.. -> rotated q, rotated k, v, each (B, H, L, d_h)."""
        B, L, _ = u.shape
        q, k, v = self.in_proj(u).view(B, L, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        wide = torch.float32 if u.device.type == "mps" else torch.float64
        positions = torch.arange(offset, offset + L, device=u.device, dtype=wide) / self.position_scale
        cos, sin = rope_cos_sin(positions, self.inv_freq)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


# ---------------------------------------------------------------------------------------------
# Blocks and the LM
# ---------------------------------------------------------------------------------------------


class StripedHyenaBlock(nn.Module):
    """``x + mixer(pre_norm x)``, then ``x + mlp(post_norm x)``; x (B, L, d), the residual stream (>= float32)."""

    def __init__(self, mixer: nn.Module, mlp: GatedMLP, d: int, eps: float, device: torch.device | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.pre_norm = RMSNorm(d, eps, device=device, dtype=dtype)
        self.mixer = mixer
        self.post_norm = RMSNorm(d, eps, device=device, dtype=dtype)
        self.mlp = mlp

    def forward(self, x: Tensor, layer_state: object | None = None, offset: int = 0) -> Tensor:
        if layer_state is None:
            return self.with_mixer(x, self.mixer)
        return self.with_mixer(x, lambda h: self.mixer(h, state=layer_state, offset=offset))

    def with_mixer(self, x: Tensor, mixer: Callable[[Tensor], Tensor]) -> Tensor:
        """The block on x (B, L, d) with its mixer's call replaced by ``mixer`` (chunked inference)."""
        x = x.to(_wide(x.dtype))
        x = x + mixer(self.pre_norm(x))
        return x + self.mlp(self.post_norm(x))

    def step(self, x: Tensor, layer_state: object, offset: int) -> Tensor:
        """One token: x (B, 1, d) at position ``offset`` -> (B, 1, d)."""
        return self.with_mixer(x, lambda h: self.mixer.step(h, layer_state, offset))


class StripedHyenaBackbone(nn.Module):
    """Embedding -> blocks -> final RMSNorm ``ln_f``; the same ``forward(input_ids, state, keep)`` contract
    as :class:`dnalm.models.blocks.Backbone`."""

    def __init__(self, config: StripedHyenaConfig, device: torch.device | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        d = config.hidden_size
        kw = {"device": device, "dtype": dtype}
        self.embeddings = Embeddings(config.vocab_size, d, **kw)
        layers = []
        for i, kind in enumerate(config.layer_kinds):
            mixer = RotaryAttention(config, **kw) if kind == "attn" else GatedConvolution(config, kind, **kw)
            gelu = i == 0 or not config.evo2_style_activations
            layers.append(StripedHyenaBlock(mixer, GatedMLP(d, config.inner_mlp_size, gelu, **kw), d, config.eps,
                                            **kw))
        self.layers = nn.ModuleList(layers)
        self.ln_f = RMSNorm(d, config.eps, **kw) if config.final_norm else nn.Identity()
        self.residual_in_fp32 = True

    def embed(self, input_ids: Tensor) -> Tensor:
        """input_ids (B, L) -> the residual stream x_0 (B, L, d), at least float32."""
        x = self.embeddings(input_ids)
        return x.to(_wide(x.dtype))

    def final_norm(self, x: Tensor) -> Tensor:
        """The final norm of the last residual stream x (B, L, d): what the unembedding reads."""
        return self.ln_f(x)

    def forward(self, input_ids: Tensor, state: InferenceState | None = None,
                keep: Sequence[int] = ()) -> tuple[Tensor, list[Tensor]]:
        """input_ids (B, L) -> (final hidden (B, L, d), hidden states at layer indices ``keep``)
        (:func:`dnalm.models.blocks.backbone_forward`)."""
        return backbone_forward(self, input_ids, state, keep)


class StripedHyenaLM(CausalLM):
    """StripedHyena 2 (Evo 2) causal LM: the backbone above and an unembedding tied to the embedding
    (``tie_embeddings``). It has :class:`~dnalm.models.blocks.CausalLM`'s API (forward, hidden states,
    inference state, mixers); only the shell is built here, since its norms, MLPs and blocks differ."""

    family = "stripedhyena"

    def __init__(self, config: StripedHyenaConfig, device: torch.device | None = None,
                 dtype: torch.dtype | None = None):
        nn.Module.__init__(self)  # not CausalLM.__init__: it builds LayerNorm blocks
        self.config = config
        self.backbone = StripedHyenaBackbone(config, device=device, dtype=dtype)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False, device=device, dtype=dtype)
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embeddings.word_embeddings.weight
        self.n_layer = config.num_layers
        self.initializer_range = config.initializer_range
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    def tie_weights(self) -> None:
        """Share the unembedding with the embedding again (after loading with ``assign=True``)."""
        if self.config.tie_embeddings:
            self.lm_head.weight = self.backbone.embeddings.word_embeddings.weight

    def allocate_state(self, batch: int, max_len: int | None = None, device: torch.device | None = None,
                       dtype: torch.dtype | None = None) -> InferenceState:
        """A fresh inference state; ``max_len`` (K/V cache size) defaults to ``config.max_seqlen``."""
        return super().allocate_state(batch, max_len or self.config.max_seqlen, device, dtype)

    @torch.no_grad()
    def init_weights(self) -> None:
        """dnalm's initialisation for training from scratch (vortex is inference-only).

        Linear and embedding weights ~ N(0, r), r = ``initializer_range``, the three residual-branch
        outputs (``out_filter_dense``, ``out_proj``, ``l3``) ~ N(0, r / sqrt(2 n_layer)), biases 0, norms 1;
        featurizer and short filters ~ U(-1/sqrt(K), 1/sqrt(K)) (PyTorch's Conv1d default); medium filters
        ``N(0, 1/K) * exp(-r_g t)``, t = linspace(0, 1, K), rates r_g = 10^linspace(-2, 2, G) (savanna's
        explicit single-decay filter); modal filters as savanna's implicit modal filter: ``logpole =
        -exp(-1) U(0.01, 0.1)``, ``R = 0.1 N(0, 1) / sqrt(N)``; skip terms D ~ N(0, 1) (HyenaDNA's skip gain).
        """
        r = self.initializer_range
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=r)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=r)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
            elif isinstance(module, GatedConvolution):
                bound = 1 / math.sqrt(module.short_filter_weight.shape[-1])
                nn.init.uniform_(module.short_filter_weight, -bound, bound)
            elif isinstance(module, ExplicitFilter):
                K, G = module.taps, module.h.shape[0]
                if module.convolution:
                    t = torch.linspace(0, 1, K, device=module.h.device)
                    rates = 10 ** torch.linspace(-2, 2, G, device=module.h.device)
                    decay = torch.exp(-rates[:, None] * t)[:, None]
                    module.h.copy_(torch.randn_like(module.h) / math.sqrt(K) * decay)
                    nn.init.normal_(module.D)
                else:
                    nn.init.uniform_(module.h, -1 / math.sqrt(K), 1 / math.sqrt(K))
            elif isinstance(module, ModalFilter):
                module.log_poles.copy_(-math.exp(-1) * torch.empty_like(module.log_poles).uniform_(0.01, 0.1))
                module.residues.copy_(0.1 * torch.randn_like(module.residues) / math.sqrt(module.state_size))
                nn.init.normal_(module.D)
        for name, p in self.named_parameters():
            if name.endswith(("out_filter_dense.weight", "out_proj.weight", "mlp.l3.weight")):
                nn.init.normal_(p, std=r / math.sqrt(2 * self.n_layer))


# ---------------------------------------------------------------------------------------------
# Parameters and FLOPs from the config
# ---------------------------------------------------------------------------------------------


def count_parameters_of_config(config: StripedHyenaConfig) -> int:
    """Parameters of :class:`StripedHyenaLM` for ``config`` without building it (a tied unembedding
    counts once; the rotary ``inv_freq`` buffers are not parameters)."""
    d, V = config.hidden_size, config.vocab_size
    total = V * d * (1 if config.tie_embeddings else 2) + (d if config.final_norm else 0)
    block = 2 * d + 3 * d * config.inner_mlp_size  # two norms and the MLP
    hyena = 3 * d * d + 3 * d * config.short_filter_length + d * d + (d if config.hyena_out_proj_bias else 0)

    def explicit(groups: int, taps: int) -> int:
        return groups * taps + (d if taps >= FFT_FIR_MIN_TAPS else 0)

    per_kind = {
        "hcs": hyena + explicit(config.hcs_filter_groups, config.hcs_filter_length),
        "hcm": hyena + explicit(config.hcm_filter_groups, config.hcm_filter_length),
        "hcl": hyena + 2 * d * config.state_size + d,
        "attn": 4 * d * d + (3 * d if config.qkv_proj_bias else 0) + (d if config.mha_out_proj_bias else 0),
    }
    return total + sum(block + per_kind[kind] for kind in config.layer_kinds)


def flops_per_token(config: StripedHyenaConfig, seq_len: int, batch_size: int = 1) -> float:
    """Forward FLOPs per token at ``seq_len`` tokens per sequence, with :mod:`dnalm.models.info`'s conventions.

    A Linear d_in -> d_out costs ``2 d_in d_out``; a direct FIR of K taps ``2 K`` per channel; an FFT
    convolution (size n = 2L) ``4 c log2 n + 6 (L + 1) / L`` per channel plus the filter's FFT
    ``2 c log2 n / B`` (c = 2.5); the modal filter's taps ``2 N / B`` per channel (a multiply-add per mode
    and tap, shared by the batch; the exponentials not counted); attention ``4 L d`` (both matmuls of the
    full square); the MLP ``6 d d_i``; the unembedding ``2 d V``. Norms, gates, activations, softmax and
    rotary embeddings are not counted. Training is about 3 x this.
    """
    from dnalm.models.info import FFT_FLOPS_COEF as c

    if seq_len < 1 or batch_size < 1:
        raise ConfigError(f"flops_per_token needs seq_len >= 1 and batch_size >= 1, got {seq_len}, {batch_size}")
    d, L, B = config.hidden_size, seq_len, batch_size
    log_n = math.log2(2 * L)
    fft = d * (4 * c * log_n + 6 * (L + 1) / L + 2 * c * log_n / B)
    hyena = 2 * 3 * d * d + 2 * config.short_filter_length * 3 * d + 2 * d * d

    def explicit(taps: int) -> float:
        return fft if taps >= FFT_FIR_MIN_TAPS else 2.0 * taps * d

    per_kind = {
        "hcs": hyena + explicit(config.hcs_filter_length),
        "hcm": hyena + explicit(config.hcm_filter_length),
        "hcl": hyena + fft + 2.0 * config.state_size * d / B,
        "attn": 8.0 * d * d + 4.0 * L * d,
    }
    mlp = 6.0 * d * config.inner_mlp_size
    return 2.0 * d * config.vocab_size + sum(mlp + per_kind[k] for k in config.layer_kinds)


# ---------------------------------------------------------------------------------------------
# Byte tokenizer
# ---------------------------------------------------------------------------------------------

BYTE_VOCAB_SIZE = 512
BYTE_EOD_ID = 0
BYTE_PAD_ID = 1
BYTE_CASES = ("upper", "keep")


@dataclass(frozen=True, kw_only=True)
class ByteTokenizer(SavedOptions):
    """Evo 2's byte-level tokenizer (vortex ``CharLevelTokenizer(512)``, evo2.md §1.1): token id = the
    byte of an ASCII character (A 65, C 67, G 71, T 84, N 78), vocabulary 512, end of document/sequence
    0 (also the "BOS" Evo 2 prepends), padding 1.

    ``case='upper'`` folds soft-masked lowercase to upper case (Evo 2 trains on up-cased bases);
    ``'keep'`` passes lowercase bytes through. ``add_bos`` prepends 0, ``add_eos`` appends 0. Any
    ASCII character is a token (IUPAC codes, phylogenetic tags); non-ASCII raises InputError.
    Rows are padded with 1 on ``padding_side`` (right, as Evo 2).
    """

    add_bos: bool = False
    add_eos: bool = False
    padding_side: str = "right"
    case: str = "upper"

    type: ClassVar[str] = "byte"

    def __post_init__(self) -> None:
        if self.case not in BYTE_CASES:
            raise ConfigError(f"byte tokenizer: case={self.case!r} must be one of {', '.join(BYTE_CASES)}")
        if self.padding_side not in ("left", "right"):
            raise ConfigError(f"byte tokenizer: padding_side={self.padding_side!r} must be 'left' or 'right'")
        for name in ("add_bos", "add_eos"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"byte tokenizer: {name}={getattr(self, name)!r} must be true or false")

    vocab_size: ClassVar[int] = BYTE_VOCAB_SIZE
    bos_id: ClassVar[int] = BYTE_EOD_ID
    eos_id: ClassVar[int] = BYTE_EOD_ID
    pad_id: ClassVar[int] = BYTE_PAD_ID
    unk_id: ClassVar[None] = None
    mask_id: ClassVar[None] = None

    @property
    def alphabet(self) -> Alphabet:
        return BYTE_ALPHABET

    @property
    def num_special_tokens(self) -> int:
        return int(self.add_bos) + int(self.add_eos)

    def padded_vocab_size(self, multiple: int = 8) -> int:
        return int(math.ceil(self.vocab_size / multiple) * multiple)

    def _body(self, seq: str | bytes | np.ndarray, where: str) -> np.ndarray:
        if isinstance(seq, str):
            raw = seq.encode("utf-8")
        elif isinstance(seq, (bytes, bytearray, memoryview)):
            raw = bytes(seq)
        elif isinstance(seq, np.ndarray) and seq.dtype == np.uint8:
            raw = seq.tobytes()
        else:
            raise InputError(f"{where}: expected str, bytes or a uint8 array, got {type(seq).__name__}")
        ids = np.frombuffer(raw.upper() if self.case == "upper" else raw, dtype=np.uint8)
        if ids.size and ids.max() > 127:
            pos = int(np.argmax(ids > 127))
            raise InputError(f"{where}: non-ASCII byte {int(ids[pos])} at position {pos} (DNA is ASCII)")
        return ids.astype(np.int64)

    def with_special_tokens(self, ids: np.ndarray) -> np.ndarray:
        """Add 0 before (``add_bos``) and after (``add_eos``) the ids (T,)."""
        head = [BYTE_EOD_ID] if self.add_bos else []
        tail = [BYTE_EOD_ID] if self.add_eos else []
        return np.concatenate([np.array(head, dtype=np.int64), np.asarray(ids, dtype=np.int64),
                               np.array(tail, dtype=np.int64)])

    def encode(self, seq: str | bytes | np.ndarray, add_special_tokens: bool = True,
               return_tensors: str | None = None) -> np.ndarray | Tensor:
        """One sequence -> ids (T,) int64 (numpy, or a tensor with ``return_tensors='pt'``)."""
        ids = self._body(seq, "sequence")
        if add_special_tokens:
            ids = self.with_special_tokens(ids)
        return torch.from_numpy(ids) if return_tensors == "pt" else ids

    def encode_batch(self, seqs: Sequence[str | bytes | np.ndarray], max_length: int | None = None,
                     padding: bool | str = True, truncation: bool = True, add_special_tokens: bool = True,
                     return_tensors: str = "pt") -> dict[str, Any]:
        """Encode and pad B sequences: ``input_ids`` and ``attention_mask`` (B, L) (1 on tokens)."""
        rows = fitted_rows(seqs, self._body, self.with_special_tokens if add_special_tokens else None,
                           self.num_special_tokens if add_special_tokens else 0, max_length, truncation)
        return self.pad(rows, max_length=max_length, padding=padding, return_tensors=return_tensors)

    def pad(self, rows: Sequence[np.ndarray], max_length: int | None = None, padding: bool | str = True,
            return_tensors: str = "pt") -> dict[str, Any]:
        """Pad B id arrays (T_b,) with 1 into ``input_ids`` and ``attention_mask`` (B, L)."""
        return padded_batch(rows, BYTE_PAD_ID, self.padding_side, max_length, padding, return_tensors)

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        """Ids (T,) -> text: printable ASCII ids as their characters; control ids (0-31: EOD, padding)
        dropped with ``skip_special_tokens``, else written as spaces (vortex clamps ids to >= 32); ids of
        127 and above (never produced by the tokenizer) as ``?``."""
        if hasattr(ids, "detach"):
            ids = ids.detach().cpu().numpy()
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            pos = int(np.argmax((ids < 0) | (ids >= self.vocab_size)))
            raise InputError(f"token id {int(ids[pos])} at position {pos} is outside the vocabulary "
                             f"(0-{self.vocab_size - 1})")
        if skip_special_tokens:
            ids = ids[ids >= 32]
        ids = np.where(ids >= 127, ord("?"), np.maximum(ids, 32))
        return ids.astype(np.uint8).tobytes().decode("ascii")

    def decode_batch(self, ids: Any, skip_special_tokens: bool = True) -> list[str]:
        if hasattr(ids, "detach"):
            ids = ids.detach().cpu().numpy()
        return [self.decode(row, skip_special_tokens) for row in np.asarray(ids)]


BYTE_ALPHABET = Alphabet(acgt=(ord("A"), ord("C"), ord("G"), ord("T")), n=ord("N"), pad=BYTE_PAD_ID,
                         bos=BYTE_EOD_ID, eos=BYTE_EOD_ID, mask=None, unk=None, vocab_size=BYTE_VOCAB_SIZE)


def byte_tokenizer(config: StripedHyenaConfig | None = None) -> ByteTokenizer:
    """The default tokenizer of a StripedHyena config: :class:`ByteTokenizer` (up-casing, no specials)."""
    return ByteTokenizer()


# ---------------------------------------------------------------------------------------------
# vortex checkpoints (§A.5)
# ---------------------------------------------------------------------------------------------

#: Config fields copied from a vortex config to :class:`StripedHyenaConfig` unchanged (vortex has all but
#: ``initializer_range``).
_VORTEX_FIELDS = tuple(f.name for f in fields(StripedHyenaConfig))
#: Fields a vortex config must have (the rest default to the dataclass values, Evo 2's).
_VORTEX_REQUIRED = ("hidden_size", "num_layers", "num_attention_heads", "inner_mlp_size", "vocab_size",
                    "hcs_layer_idxs", "hcm_layer_idxs", "hcl_layer_idxs", "attn_layer_idxs", "hcs_filter_length",
                    "hcs_filter_groups", "hcm_filter_length", "hcm_filter_groups", "state_size",
                    "short_filter_length", "eps")
#: vortex options whose other value would change the math in ways dnalm does not implement: key -> the
#: supported value.
_VORTEX_FIXED = {"proj_groups": 1, "column_split_hyena": False, "short_filter_bias": False, "smeared_gqa": False}
_VORTEX_WEIGHT_SUFFIXES = (".pt", ".pth")
_CONFIG_SUFFIXES = (".yml", ".yaml", ".json")

#: vortex key pattern -> dnalm key (a ``re.sub`` template), and back.
_KEY_PAIRS: tuple[tuple[str, str, str, str], ...] = (
    (r"embedding_layer\.weight", r"backbone.embeddings.word_embeddings.weight",
     r"backbone\.embeddings\.word_embeddings\.weight", r"embedding_layer.weight"),
    (r"norm\.scale", r"backbone.ln_f.weight", r"backbone\.ln_f\.weight", r"norm.scale"),
    (r"unembed\.weight", r"lm_head.weight", r"lm_head\.weight", r"unembed.weight"),
    (r"blocks\.(\d+)\.(pre_norm|post_norm)\.scale", r"backbone.layers.\1.\2.weight",
     r"backbone\.layers\.(\d+)\.(pre_norm|post_norm)\.weight", r"blocks.\1.\2.scale"),
    (r"blocks\.(\d+)\.mlp\.(l1|l2|l3)\.weight", r"backbone.layers.\1.mlp.\2.weight",
     r"backbone\.layers\.(\d+)\.mlp\.(l1|l2|l3)\.weight", r"blocks.\1.mlp.\2.weight"),
    (r"blocks\.(\d+)\.(projections|out_filter_dense)\.(weight|bias)", r"backbone.layers.\1.mixer.\2.\3",
     r"backbone\.layers\.(\d+)\.mixer\.(projections|out_filter_dense)\.(weight|bias)", r"blocks.\1.\2.\3"),
    (r"blocks\.(\d+)\.filter\.short_filter_weight", r"backbone.layers.\1.mixer.short_filter_weight",
     r"backbone\.layers\.(\d+)\.mixer\.short_filter_weight", r"blocks.\1.filter.short_filter_weight"),
    (r"blocks\.(\d+)\.filter\.(h|D|log_poles|residues)", r"backbone.layers.\1.mixer.filter.\2",
     r"backbone\.layers\.(\d+)\.mixer\.filter\.(h|D|log_poles|residues)", r"blocks.\1.filter.\2"),
    (r"blocks\.(\d+)\.inner_mha_cls\.Wqkv\.(weight|bias)", r"backbone.layers.\1.mixer.in_proj.\2",
     r"backbone\.layers\.(\d+)\.mixer\.in_proj\.(weight|bias)", r"blocks.\1.inner_mha_cls.Wqkv.\2"),
    (r"blocks\.(\d+)\.inner_mha_cls\.out_proj\.(weight|bias)", r"backbone.layers.\1.mixer.out_proj.\2",
     r"backbone\.layers\.(\d+)\.mixer\.out_proj\.(weight|bias)", r"blocks.\1.inner_mha_cls.out_proj.\2"),
    (r"blocks\.(\d+)\.inner_mha_cls\.rotary_emb\.inv_freq", r"backbone.layers.\1.mixer.inv_freq",
     r"backbone\.layers\.(\d+)\.mixer\.inv_freq", r"blocks.\1.inner_mha_cls.rotary_emb.inv_freq"),
)
_FROM_VORTEX = tuple((re.compile(a), b) for a, b, _, _ in _KEY_PAIRS)
_TO_VORTEX = tuple((re.compile(c), d) for _, _, c, d in _KEY_PAIRS)


def _rename(key: str, table: tuple[tuple[re.Pattern[str], str], ...]) -> str | None:
    for pattern, template in table:
        if pattern.fullmatch(key):
            return pattern.sub(template, key)
    return None


def vortex_key(key: str) -> str:
    """The vortex name of a :class:`StripedHyenaLM` state-dict key (the key itself where it has none)."""
    return _rename(key, _TO_VORTEX) or key


def is_vortex_config(cfg: Any) -> bool:
    """Whether a parsed config looks like vortex's StripedHyena config (the layer index lists and widths)."""
    return isinstance(cfg, Mapping) and all(k in cfg for k in ("hidden_size", "hcl_layer_idxs", "attn_layer_idxs"))


def read_vortex_config(file: str | os.PathLike) -> dict[str, Any]:
    """A vortex config file (YAML as in the ``evo2`` package, or JSON) as a dict."""
    import yaml

    file = Path(file)
    try:
        text = file.read_text()
        cfg = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{file}: cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{file}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise InputError(f"{file}: {where}not valid YAML") from None
    if not isinstance(cfg, dict):
        raise InputError(f"{file}: expected a mapping of config fields")
    return cfg


def config_from_vortex(cfg: Mapping[str, Any], where: str | os.PathLike = "config",
                       **overrides: Any) -> StripedHyenaConfig:
    """The :class:`StripedHyenaConfig` of a vortex config (§A.2); ``where`` names the file in errors.

    Fields vortex uses only at run time (kernels, parallelism, logging, init) are ignored; options whose
    other values change the math in ways not implemented here (``proj_groups``, ``column_split_hyena``,
    ``short_filter_bias``, ``smeared_gqa``) must have Evo 2's values.
    """
    for key in _VORTEX_REQUIRED:
        if key not in cfg:
            raise InputError(f"{where}: missing vortex config field '{key}'")
    for key, value in _VORTEX_FIXED.items():
        if key in cfg and cfg[key] != value:
            raise InputError(f"{where}: {key}: {cfg[key]!r} is not supported (only {value!r}, as in every Evo 2 model)")
    d = cfg["hidden_size"]
    nf = cfg.get("num_filters", d)
    if not isinstance(nf, int) or nf < 1 or not isinstance(d, int) or d % nf:
        raise InputError(f"{where}: num_filters ({nf!r}) must divide hidden_size ({d!r})")
    values = {k: cfg[k] for k in _VORTEX_FIELDS if k in cfg}
    for key in ("eps", "rotary_emb_base", "rotary_emb_scaling_factor"):
        if key in values and isinstance(values[key], (int, str)) and not isinstance(values[key], bool):
            try:
                values[key] = float(values[key])
            except ValueError:
                raise InputError(f"{where}: {key}: {values[key]!r} is not a number") from None
    try:
        return StripedHyenaConfig(**{**values, **overrides})
    except (TypeError, ValueError, ConfigError) as exc:
        raise InputError(f"{where}: bad StripedHyena config ({exc})") from None


def _vortex_files(path: Path) -> tuple[Path, Path]:
    """(weights, config) of a vortex checkpoint given as its directory or its ``.pt`` file."""
    directory = path if path.is_dir() else path.parent
    if path.is_dir():
        if any(directory.glob("*.distcp")) or (directory / "weights").is_dir() or any(directory.glob("iter_*")):
            raise InputError(f"{directory}: a NeMo2/Megatron-Bridge torch_dist checkpoint; dnalm does not read it "
                             "(its .metadata is a pickle that would run code); export it to the vortex .pt layout "
                             "with BioNeMo's evo2_export_mbridge_to_vortex")
        weights = sorted(p for p in directory.iterdir() if p.suffix in _VORTEX_WEIGHT_SUFFIXES and p.is_file())
        if not weights:
            parts = sorted(directory.glob("*.pt.part*"))
            if parts:
                raise InputError(f"{parts[0]}: a sharded vortex checkpoint; join the parts first "
                                 f"(cat {parts[0].name.split('.part')[0]}.part* > {parts[0].name.split('.part')[0]})")
            raise InputError(f"{directory}: no vortex weight file (*.pt)")
        if len(weights) > 1:
            raise InputError(f"{directory}: several weight files ({', '.join(p.name for p in weights)}); "
                             "give the one to load")
        file = weights[0]
    else:
        file = path
    candidates = [directory / "config.json"] + sorted(p for p in directory.iterdir()
                                                      if p.suffix in (".yml", ".yaml") and p.is_file())
    configs = [p for p in candidates if p.is_file() and is_vortex_config(_try_config(p))]
    if not configs:
        raise InputError(f"{directory}: no vortex config (config.json or an evo2-*.yml with hidden_size, "
                         f"hcl_layer_idxs, ...) beside {file.name}")
    if len(configs) > 1:
        raise InputError(f"{directory}: several vortex configs ({', '.join(p.name for p in configs)}); "
                         "keep one beside the weights")
    return file, configs[0]


def _try_config(file: Path) -> Any:
    try:
        return read_vortex_config(file)
    except InputError:
        return None


def detect_vortex(directory: str | os.PathLike, meta: Any = None) -> bool:
    """Whether ``directory`` holds a vortex checkpoint: a ``.pt`` file beside a vortex config
    (``meta``, the parsed ``config.json``, or a ``*.yml`` / ``*.yaml`` with the StripedHyena fields)."""
    directory = Path(directory)
    if not directory.is_dir():
        return False
    if not any(p.suffix in _VORTEX_WEIGHT_SUFFIXES or ".pt.part" in p.name for p in directory.iterdir()):
        return False
    if is_vortex_config(meta):
        return True
    return any(is_vortex_config(_try_config(p)) for p in directory.iterdir()
               if p.suffix in (".yml", ".yaml") and p.is_file())


def _layout_error(file: Path, sd: Mapping[str, Any]) -> None:
    """Raise InputError naming the layout when ``sd`` is a savanna or NeMo/Megatron state dict."""
    keys = list(sd)
    if any(k.startswith("sequential.") for k in keys):
        raise InputError(f"{file}: a savanna training checkpoint (keys sequential.*); dnalm reads the vortex .pt "
                         "layout: convert it with BioNeMo's evo2_convert_savanna_to_mbridge and "
                         "evo2_export_mbridge_to_vortex (the published facts do not fix its MLP and projection "
                         "row orders)")
    if any(k.startswith(("decoder.", "module.decoder.", "embedding.", "module.embedding.")) for k in keys):
        raise InputError(f"{file}: a NeMo2/Megatron-Bridge state dict (keys decoder.layers.*); export it to the "
                         "vortex .pt layout with BioNeMo's evo2_export_mbridge_to_vortex")


def vortex_state_dict(sd: Mapping[str, Any], config: StripedHyenaConfig, file: Path,
                      column_split: bool = True) -> dict[str, Tensor]:
    """vortex keys -> :class:`StripedHyenaLM` keys (§A.5): TE ``_extra_state`` dropped, ``unembed.weight``
    dropped when the embedding is tied, the attention ``Wqkv`` rows reordered from the file's (head, q|k|v,
    d_h) to (q|k|v, head, d_h) when ``column_split`` (vortex ``custom_load_state_dict``)."""
    _layout_error(file, sd)
    H, hd = config.num_attention_heads, config.head_dim
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if key.endswith("_extra_state"):
            continue
        if key == "unembed.weight" and config.tie_embeddings:
            continue
        if not isinstance(value, Tensor):
            raise InputError(f"{file}: key {key}: expected a tensor, found {type(value).__name__}")
        new = _rename(key, _FROM_VORTEX)
        if new is None:
            raise InputError(f"{file}: unexpected key {key} (not in the vortex StripedHyena layout)")
        if column_split and ".inner_mha_cls.Wqkv." in key:
            if value.shape[0] != 3 * H * hd:
                raise InputError(f"{file}: key {key}: {value.shape[0]} rows, expected 3 x {H} heads x {hd}")
            value = value.reshape(H, 3, hd, *value.shape[1:]).transpose(0, 1).reshape(value.shape)
        out[new] = value
    return out


def load_vortex(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                overrides: Mapping[str, Any] | None = None, dtype: torch.dtype | None = None) -> StripedHyenaLM:
    """Load a vortex checkpoint (a released ``evo2_*.pt`` and its config): the directory, or the ``.pt`` file
    with the config (``config.json`` or ``*.yml``) beside it. The file is read with dnalm's restricted
    unpickler. Tensors keep their stored dtypes (bf16 weights and float32 poles in the released files)
    unless ``dtype`` is given; ``overrides`` replaces fields of the vortex config, e.g. ``column_split: False``
    for a ``state_dict()`` saved from an instantiated vortex model (its ``Wqkv`` rows are already in
    (q|k|v, head, d_h) order; the released files need the reordering). Returns the model in eval mode on
    ``map_location``. Unreadable files, other layouts (savanna, NeMo2/MBridge, shards), missing,
    unexpected or misshapen tensors raise InputError naming the file and key.
    """
    from dnalm.models.io import safe_torch_load

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(_VORTEX_FIELDS) - {"column_split"})
    if unknown:
        raise ConfigError(f"stripedhyena: unknown override '{unknown[0]}' (config fields or column_split)")
    file, cfg_file = _vortex_files(path)
    raw = {**read_vortex_config(cfg_file), **overrides}
    config = config_from_vortex(raw, cfg_file)
    if raw.get("use_fp8_input_projections"):
        log.warning("%s: this model was trained with FP8 input projections (Transformer Engine); dnalm computes "
                    "them in the model dtype, which Evo 2's authors report changes the 1B/40B results", cfg_file)
    sd = safe_torch_load(file, map_location="cpu")
    if isinstance(sd, Mapping) and isinstance(sd.get("state_dict"), Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping):
        raise InputError(f"{file}: expected a state dict, found {type(sd).__name__}")
    sd = vortex_state_dict(sd, config, file, column_split=bool(raw.get("column_split", True)))
    model = StripedHyenaLM(config, device="meta")
    own = model.state_dict()
    if config.tie_embeddings:
        own.pop("lm_head.weight", None)
    for key, value in own.items():
        if key not in sd:
            raise InputError(f"{file}: missing key {vortex_key(key)} (the config {cfg_file.name} has layers "
                             f"{config.pattern})")
        if tuple(sd[key].shape) != tuple(value.shape):
            raise InputError(f"{file}: key {vortex_key(key)}: shape {tuple(sd[key].shape)}, the config "
                             f"{cfg_file.name} needs {tuple(value.shape)}")
    extra = sorted(set(sd) - set(own))
    if extra:
        raise InputError(f"{file}: key {vortex_key(extra[0])} does not fit the config {cfg_file.name} "
                         f"(layers {config.pattern})")
    if config.tie_embeddings:
        sd["lm_head.weight"] = sd["backbone.embeddings.word_embeddings.weight"]
    model.load_state_dict(sd, strict=True, assign=True)
    model.tie_weights()
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.to(map_location).eval()


def _info(config: StripedHyenaConfig, seq_len: int, batch_size: int = 1, dtype: Any = "bf16"):
    from dnalm.models.info import stripedhyena_info

    return stripedhyena_info(config, seq_len, batch_size, dtype)


FAMILY = Family(
    name="stripedhyena",
    config_cls=StripedHyenaConfig,
    model_cls=StripedHyenaLM,
    presets=PRESETS,
    objective=CAUSAL,
    lora_targets=("projections", "out_filter_dense", "in_proj", "out_proj", "l1", "l2", "l3"),
    tokenizer=byte_tokenizer,
    context_field="max_seqlen",
    importers=(Importer("vortex", detect_vortex, load_vortex),),
    info=_info,
)
