"""Mamba (selective state spaces) and Caduceus (bidirectional, reverse-complement equivariant Mamba).

References: Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces"
(the S6 mixer, section 3 and Algorithm 2); Schiff et al. 2024, "Caduceus: Bi-Directional Equivariant
Long-Range DNA Sequence Modeling" (BiMamba and RCPS). Facts about the reference code (``mamba_ssm``
2.3.2 and ``kuleshov-group/caduceus``) are in ``shared/reference/families.md`` section C; ``§C.n``
below points there.

The S6 mixer on u (B, L, D), with ``E = expand * D`` inner channels, ``N = d_state``, ``R = dt_rank``::

    (x, z) = split(in_proj u)                                 # each (B, E, L)
    x = SiLU(CausalConv_K(x))                                 # depthwise, K = d_conv taps
    (dt, Bt, Ct) = split(x_proj x)                            # (B, R, L), (B, N, L), (B, N, L)
    delta = softplus(dt_proj.weight dt + dt_proj.bias)        # (B, E, L)
    h_t = exp(delta_t A) h_{t-1} + delta_t Bt_t x_t           # h: (B, E, N); A = -exp(A_log): (E, N)
    y_t = <h_t, Ct_t> + D x_t;   out = out_proj(y * SiLU(z))

The recurrence is the *selective scan*. :func:`selective_scan_sequential` is the loop above (the
ground truth of the tests); :func:`selective_scan_ref` computes it chunk by chunk (within a chunk of T
positions every state is a sum weighted by ``exp(S_t - S_s)``, ``S`` the cumulative ``delta A``,
with the upper triangle masked to 0 before the exponential, so nothing overflows). The loop is the
plain PyTorch path on the CPU (faster there), the chunked form the one on CUDA where no kernel applies.
On CUDA, :func:`selective_scan` uses ``mamba_ssm``'s kernel when it is installed (never required) and
else the Triton kernels of :mod:`dnalm.kernels.selective_scan_triton`: the forward-only one where no gradient
is needed, the trainable pair (a forward that keeps one state per tile of positions, a backward that
recomputes the states in between) where one is.

Networks (the block of ``mamba_ssm``: residual add -> RMSNorm -> mixer, no MLP)::

    x_0 = E[input_ids];   x_i = x_{i-1} + Mixer_i(RMSNorm(x_{i-1}));   h = RMSNorm_f(x_n)

* :class:`MambaLM` (family ``mamba``): causal, Mixer = :class:`Mamba`, ``logits = h E^T``. Its
  inference state per layer is the last ``K - 1`` conv inputs and the SSM state ``h`` (O(1) in the
  length), so prefill + steps and chunked inference of any length give the one-pass outputs.
* :class:`CaduceusLM` (family ``caduceus``): a masked LM, Mixer = :class:`BiMamba`
  ``Mamba_fwd(u) + flip(Mamba_rev(flip(u)))`` (flip along L; ``ew_multiply``: the product) with
  ``in_proj``/``out_proj`` shared between the two directions when ``bidirectional_weight_tie`` (§C.2).
  With ``rcps`` (reverse-complement parameter sharing) the same network also runs on the reverse
  complement ``rc(x)`` (the sequence reversed, each id through ``complement_map``) and the head adds
  both: ``logits[t] = W s1[t] + (W s2[L-1-t])[comp]`` with s1, s2 the final states of the two
  streams, so ``logits(rc x)[t, v] = logits(x)[L-1-t, comp(v)]`` exactly. This is the reference's
  2D-channel layout ``[s1, flip_{L,C}(s2)]`` computed as two streams (hidden states are returned in
  that layout). ``fused_add_norm`` reproduces the reference's fused add+norm path for RCPS blocks,
  which hands the two halves to each block swapped (stream 1 <- flip_{L,C}(stream 2) and back); the
  released checkpoints set it, so the importer does too.

Hidden-state indices (both families): 0 = embedding, i = residual stream after block i, n_layer + 1
(or -1) = after the final norm (what the head reads).

Notation: ``B`` batch, ``L`` length, ``D = d_model``, ``E = d_inner``, ``N = d_state``, ``K = d_conv``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dnalm.errors import ConfigError, InputError
from dnalm.inference.state import InferenceState
from dnalm.kernels.hyena_torch import wide
from dnalm.models.blocks import CausalLM, Embeddings, backbone_forward, layer_indices, pad_vocab
from dnalm.models.family import CAUSAL, HUB_WEIGHTS, MASKED, Family, Importer

log = logging.getLogger(__name__)

FAST_PATHS = ("auto", "reference", "triton", "mamba_ssm")
BIDIRECTIONAL_STRATEGIES = ("add", "ew_multiply")
#: Elements of the (B, E, T, T, N) decay tensor of one chunk of :func:`selective_scan_ref`.
SCAN_CHUNK_ELEMENTS = 1 << 21
SCAN_MAX_CHUNK = 16


# ---------------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SsmConfig:
    """Fields shared by :class:`MambaConfig` and :class:`CaduceusConfig` (``mamba_ssm``'s ``Mamba`` arguments
    and ``MixerModel``'s, §C.2).

    ``dt_rank``: R, None for ``ceil(d_model / 16)`` ("auto"). ``dt_min``/``dt_max``/``dt_init_floor``:
    the range of ``softplus(dt_proj.bias)`` at initialisation; ``dt_init`` ``random`` or ``constant``,
    ``dt_scale`` the scale of ``dt_proj.weight``. ``conv_bias``/``bias``: biases of the convolution and
    of ``in_proj``/``out_proj``. ``norm_eps``: RMSNorm epsilon. ``residual_in_fp32``: keep the residual
    stream in at least float32. ``fast_path``: the scan on CUDA: ``auto`` (``mamba_ssm`` if installed,
    else the Triton kernels, forward-only or trainable as gradients require, else the reference), ``triton``,
    ``mamba_ssm`` or ``reference``; on a CPU ``reference`` runs the position-by-position loop, any other value
    the cumulative-sum scan where no gradient is needed. It changes no weights.
    """

    d_model: int = 128
    n_layer: int = 2
    vocab_size: int = 12
    pad_vocab_size_multiple: int = 8
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dt_init: str = "random"
    dt_scale: float = 1.0
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False
    norm_eps: float = 1e-5
    residual_in_fp32: bool = True
    initializer_range: float = 0.02
    fast_path: str = "auto"

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.dt_rank is None:
            object.__setattr__(self, "dt_rank", math.ceil(self.d_model / 16))
        for field in ("d_model", "n_layer", "vocab_size", "pad_vocab_size_multiple", "d_state", "d_conv", "expand",
                      "dt_rank"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name}: {field} must be an integer >= 1, got {value!r}")
        if self.fast_path not in FAST_PATHS:
            raise ConfigError(f"{name}: fast_path must be one of {', '.join(FAST_PATHS)}, got {self.fast_path!r}")
        if self.dt_init not in ("random", "constant"):
            raise ConfigError(f"{name}: dt_init must be 'random' or 'constant', got {self.dt_init!r}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ConfigError(f"{name}: need 0 < dt_min <= dt_max, got {self.dt_min} and {self.dt_max}")

    @property
    def d_inner(self) -> int:
        """E = expand * d_model, the channels of the scan."""
        return self.expand * self.d_model

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding and columns of the logits (12 -> 16)."""
        return pad_vocab(self.vocab_size, self.pad_vocab_size_multiple)

    @classmethod
    def presets(cls) -> Mapping[str, Any]:
        raise NotImplementedError

    @classmethod
    def preset(cls, name: str, **overrides: Any):
        """A named preset (see :meth:`presets`) with some fields replaced."""
        presets = cls.presets()
        if name not in presets:
            raise ConfigError(f"unknown {cls.__name__} preset '{name}' (presets: {', '.join(presets)})")
        try:
            return replace(presets[name], **overrides)
        except TypeError as exc:
            raise ConfigError(f"{cls.__name__} preset '{name}': {exc}") from None


@dataclass(frozen=True)
class MambaConfig(SsmConfig):
    """Hyperparameters of :class:`MambaLM` (a causal Mamba LM; the fields are those of :class:`SsmConfig`)."""

    @classmethod
    def presets(cls) -> Mapping[str, MambaConfig]:
        return MAMBA_PRESETS


def _char_complement(size: int) -> tuple[int, ...]:
    from dnalm.tokenizers import COMPLEMENT_IDS

    return tuple(int(COMPLEMENT_IDS[i]) if i < len(COMPLEMENT_IDS) else i for i in range(size))


@dataclass(frozen=True)
class CaduceusConfig(SsmConfig):
    """Hyperparameters of :class:`CaduceusLM`: :class:`SsmConfig` and the bidirectional and RCPS settings.

    ``bidirectional``: BiMamba (False: the forward Mamba only); ``bidirectional_strategy``: ``add`` or
    ``ew_multiply``; ``bidirectional_weight_tie``: share ``in_proj``/``out_proj`` between directions.
    ``rcps``: reverse-complement parameter sharing (outputs exactly RC-equivariant). ``fused_add_norm``:
    the reference's fused RCPS block order (see the module docstring; no effect without ``rcps``).
    ``complement_map``: id -> id of the complement over the padded vocabulary; empty: dnalm's character
    ids (A<->T, C<->G, everything else to itself). Defaults: residual in float32, as dnalm trains;
    the released checkpoints say False (the importer reads it).
    """

    bidirectional: bool = True
    bidirectional_strategy: str = "add"
    bidirectional_weight_tie: bool = True
    rcps: bool = False
    fused_add_norm: bool = False
    complement_map: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bidirectional_strategy not in BIDIRECTIONAL_STRATEGIES:
            raise ConfigError(f"CaduceusConfig: bidirectional_strategy must be one of "
                              f"{', '.join(BIDIRECTIONAL_STRATEGIES)}, got {self.bidirectional_strategy!r}")
        V = self.padded_vocab_size
        comp = tuple(int(c) for c in self.complement_map) if self.complement_map else _char_complement(V)
        if len(comp) != V or any(not 0 <= c < V for c in comp) or any(comp[c] != i for i, c in enumerate(comp)):
            raise ConfigError(f"CaduceusConfig: complement_map must map each of the {V} ids to an id whose "
                              f"complement is the first (an involution), got {list(self.complement_map)}")
        object.__setattr__(self, "complement_map", comp)

    @classmethod
    def presets(cls) -> Mapping[str, CaduceusConfig]:
        return CADUCEUS_PRESETS


#: ``tiny``: the size generic tests run; ``small``: about HyenaDNA-small's parameter count (0.87 M).
MAMBA_PRESETS: dict[str, MambaConfig] = {
    "tiny": MambaConfig(d_model=32, n_layer=2),
    "small": MambaConfig(d_model=128, n_layer=7),
    "medium": MambaConfig(d_model=256, n_layer=8),
}

#: The released Caduceus checkpoints (§C.2: ``kuleshov-group/caduceus-{ph,ps}_seqlen-131k_d_model-256_n_layer-16``,
#: the PS config.json; Ph is the same without RCPS); the 1k models from the names in the hub collection
#: (``..._seqlen-1k_d_model-118_n_layer-4``; not checked against a config). All: vocabulary 16, residual not in
#: float32, fused add+norm, as released.
_RELEASED = {"vocab_size": 16, "residual_in_fp32": False, "fused_add_norm": True}
CADUCEUS_PRESETS: dict[str, CaduceusConfig] = {
    "tiny": CaduceusConfig(d_model=32, n_layer=2, rcps=True),
    "small": CaduceusConfig(d_model=128, n_layer=6, rcps=True),
    "ph-131k": CaduceusConfig(d_model=256, n_layer=16, rcps=False, **_RELEASED),
    "ps-131k": CaduceusConfig(d_model=256, n_layer=16, rcps=True, **_RELEASED),
    "ph-1k": CaduceusConfig(d_model=118, n_layer=4, rcps=False, **_RELEASED),
    "ps-1k": CaduceusConfig(d_model=118, n_layer=4, rcps=True, **_RELEASED),
}


def count_parameters_of_config(config: SsmConfig) -> int:
    """Parameters of the model of ``config`` without building it (tied tensors count once)::

        per Mamba:  in_proj D 2E (+2E) + conv E K (+E) + x_proj E (R + 2N) + dt_proj R E + E + A_log E N + D E
                    + out_proj E D (+D)
        per layer:  one Mamba (MambaLM), or BiMamba: two, in_proj/out_proj once when tied; + RMSNorm D
        total:      embedding V D (head tied) + layers + final RMSNorm D
    """
    D, E, N, K, R, V = (config.d_model, config.d_inner, config.d_state, config.d_conv, config.dt_rank,
                        config.padded_vocab_size)
    proj = D * 2 * E + E * D + ((2 * E + D) if config.bias else 0)
    own = E * K + (E if config.conv_bias else 0) + E * (R + 2 * N) + R * E + E + E * N + E
    mixer = proj + own
    if isinstance(config, CaduceusConfig) and config.bidirectional:
        mixer = proj + 2 * own if config.bidirectional_weight_tie else 2 * (proj + own)
    return V * D + config.n_layer * (mixer + D) + D


# ---------------------------------------------------------------------------------------------
# The selective scan
# ---------------------------------------------------------------------------------------------


def _scan_inputs(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, delta_bias: Tensor | None,
                 delta_softplus: bool) -> tuple[Tensor, ...]:
    acc = torch.promote_types(u.dtype, torch.float32)
    delta = delta.to(acc)
    if delta_bias is not None:
        delta = delta + delta_bias.to(acc)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return u.to(acc), delta, A.to(acc), B.to(acc), C.to(acc)


def _scan_output(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None, dtype: torch.dtype) -> Tensor:
    if D is not None:
        y = y + u * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(dtype)


def selective_scan_sequential(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                              z: Tensor | None = None, delta_bias: Tensor | None = None,
                              delta_softplus: bool = True, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The selective scan one position at a time (the ground truth of the other scans).

    u, delta, z: (B, E, L); A: (E, N); B, C: (B, N, L); D, delta_bias: (E,); state: (B, E, N), the state
    before position 0 (zeros when None). ``delta <- softplus(delta + delta_bias)``; ``h_t = exp(delta_t A)
    h_{t-1} + delta_t u_t B_t``; ``y_t = <h_t, C_t> + D u_t``, times ``SiLU(z_t)``. Computed in float32
    (float64 for float64 inputs). Returns y (B, E, L) in ``u.dtype`` and the last state (B, E, N).
    """
    dtype = u.dtype
    u, delta, A, B, C = _scan_inputs(u, delta, A, B, C, delta_bias, delta_softplus)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1]) if state is None else state.to(u.dtype)
    ys = []
    for t in range(u.shape[-1]):
        h = torch.exp(delta[..., t, None] * A) * h + (delta[..., t] * u[..., t])[..., None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(u.shape)
    return _scan_output(y, u, D, z, dtype), h


#: Positions per chunk of :func:`selective_scan_cumsum`, and the largest |S| a chunk may reach (float64's
#: exponent range is about 709).
CUMSUM_CHUNK = 64
CUMSUM_MAX_EXPONENT = 600.0


def selective_scan_cumsum(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                          z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = True,
                          state: Tensor | None = None, chunk: int = CUMSUM_CHUNK) -> tuple[Tensor, Tensor]:
    """The selective scan of :func:`selective_scan_sequential` by cumulative sums, each chunk in float64 (same
    arguments and results; for inference on a CPU, where it replaces L small steps by a dozen operations per
    chunk).

    Within a chunk after state h_0, with ``S_t = sum_{k<=t} delta_k A`` and ``G_s = delta_s u_s B_s``::

        h_t = exp(S_t) (h_0 + sum_{s<=t} exp(-S_s) G_s)

    which needs ``exp(|S|)`` to stay finite: a chunk whose |S| passes :data:`CUMSUM_MAX_EXPONENT` is halved
    (down to one position, computed as ``exp(delta A) h_0 + G``). Returns y in ``u.dtype`` and the last state
    in the scan's working dtype (float32, float64 for float64 inputs), as the sequential scan.
    """
    dtype = u.dtype
    u, delta, A, B, C = _scan_inputs(u, delta, A, B, C, delta_bias, delta_softplus)
    acc = u.dtype
    A = A.double()
    Bsz, E, L = u.shape
    h = u.new_zeros(Bsz, E, A.shape[1], dtype=torch.float64) if state is None else state.double()
    ys = []
    s = 0
    while s < L:
        e = min(s + chunk, L)
        while True:
            dt = delta[..., s:e].double()
            S = torch.cumsum(dt[..., None] * A[:, None, :], dim=2)  # (B, E, t, N)
            if e - s == 1 or float(S.abs().max()) <= CUMSUM_MAX_EXPONENT:
                break
            e = s + (e - s) // 2
        G = (dt * u[..., s:e].double())[..., None] * B[:, None, :, s:e].transpose(-1, -2).double()  # (B, E, t, N)
        if e - s == 1:
            H = torch.exp(S) * h[:, :, None, :] + G
        else:
            H = torch.exp(S) * (h[:, :, None, :] + torch.cumsum(torch.exp(-S) * G, dim=2))
        # elementwise, as the sequential scan; each chunk back in the working dtype (the inputs stay in it too)
        ys.append((H * C[:, None, :, s:e].transpose(-1, -2).double()).sum(-1).to(acc))
        h = H[:, :, -1]
        s = e
    y = torch.cat(ys, dim=-1) if ys else u.new_zeros(u.shape)
    return _scan_output(y, u, D, z, dtype), h.to(acc)


def scan_chunk_length(batch: int, channels: int, d_state: int) -> int:
    """Positions per chunk of :func:`selective_scan_ref`: the (B, E, T, T, N) decays stay below
    :data:`SCAN_CHUNK_ELEMENTS`, T between 1 and :data:`SCAN_MAX_CHUNK`."""
    t = math.isqrt(max(SCAN_CHUNK_ELEMENTS // max(batch * channels * d_state, 1), 1))
    return max(1, min(SCAN_MAX_CHUNK, t))


def selective_scan_ref(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                       z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = True,
                       state: Tensor | None = None, chunk: int | None = None) -> tuple[Tensor, Tensor]:
    """The selective scan of :func:`selective_scan_sequential`, chunk by chunk (same arguments and results).

    Within a chunk starting after state h_0, with ``S_t = sum_{k<=t} delta_k A`` (cumulative over the
    chunk, (B, E, T, N))::

        h_t = exp(S_t) h_0 + sum_{s<=t} exp(S_t - S_s) delta_s u_s B_s

    The decays ``exp(S_t - S_s)`` (B, E, T, T, N) are formed with the entries s > t set to -inf before
    the exponential (they become exactly 0; no ``exp(-S)`` that could overflow). ``chunk``: T (default
    :func:`scan_chunk_length`). Differentiable (plain PyTorch ops).
    """
    dtype = u.dtype
    u, delta, A, B, C = _scan_inputs(u, delta, A, B, C, delta_bias, delta_softplus)
    Bsz, E, L = u.shape
    N = A.shape[1]
    h = u.new_zeros(Bsz, E, N) if state is None else state.to(u.dtype)
    T = chunk or scan_chunk_length(Bsz, E, N)
    ys = []
    for s in range(0, L, T):
        e = min(s + T, L)
        dt = delta[..., s:e]  # (B, E, t)
        S = torch.cumsum(dt[..., None] * A[:, None, :], dim=2)  # (B, E, t, N)
        t = e - s
        causal = torch.ones(t, t, dtype=torch.bool, device=u.device).tril()  # [t, s]: s <= t
        seg = (S[:, :, :, None, :] - S[:, :, None, :, :]).masked_fill(~causal[:, :, None], float("-inf"))
        G = (dt * u[..., s:e])[..., None] * B[:, None, :, s:e].transpose(-1, -2)  # (B, E, t, N)
        H = torch.einsum("bctsn,bcsn->bctn", torch.exp(seg), G) + torch.exp(S) * h[:, :, None, :]  # (B, E, t, N)
        ys.append(torch.einsum("bctn,bnt->bct", H, C[..., s:e]))
        h = H[:, :, -1]
    y = torch.cat(ys, dim=-1) if ys else u.new_zeros(u.shape)
    return _scan_output(y, u, D, z, dtype), h


@functools.cache
def _mamba_ssm_scan() -> Callable[..., Any] | None:
    """``mamba_ssm``'s CUDA ``selective_scan_fn`` when it is installed and importable, else None."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # not installed, or built without its CUDA extension
        return None
    return selective_scan_fn


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   z: Tensor | None = None, delta_bias: Tensor | None = None, state: Tensor | None = None,
                   fast_path: str = "auto") -> tuple[Tensor, Tensor | None]:
    """The scan with ``delta_softplus``, on the path ``fast_path`` picks (see :class:`SsmConfig`).

    Off CUDA: where a gradient is needed (or ``fast_path='reference'``) :func:`selective_scan_sequential` (on a
    CPU its L small steps cost less than the chunked form's T x T decays: 0.31 s against 1.7 s (T = 4) for a
    forward of (2, 512, 16, 1024), 0.04 s against 0.15 s forward + backward of (16, 64, 16, 32), one thread),
    else :func:`selective_scan_cumsum` (a dozen operations per 64 positions instead of a few per position).
    On CUDA (unless ``fast_path='reference'``):
    ``mamba_ssm``'s kernel where it applies, else with Triton installed
    :func:`~dnalm.kernels.selective_scan_triton.selective_scan_triton` where no gradient is needed and
    :func:`~dnalm.kernels.selective_scan_triton.selective_scan_triton_train` (differentiable in every input,
    the state too; float64 computed in float64) where one is or the inputs are float64; without Triton
    :func:`selective_scan_ref`, a few large kernels per chunk instead of many tiny ones per position.

    Returns y (B, E, L) and the last state (B, E, N), or None for it where ``state`` is None and the path
    does not give it (``mamba_ssm``).
    """
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                           for t in (u, delta, A, B, C, D, z, delta_bias, state))
    if u.is_cuda and fast_path != "reference":
        mamba_ssm = _mamba_ssm_scan() if fast_path in ("auto", "mamba_ssm") and state is None else None
        if mamba_ssm is not None and u.dtype != torch.float64:
            y = mamba_ssm(u.contiguous(), delta.contiguous(), A.float(), B.contiguous(), C.contiguous(),
                          None if D is None else D.float(), None if z is None else z.contiguous(),
                          None if delta_bias is None else delta_bias.float(), True, False)
            return y, None
        if fast_path == "mamba_ssm" and state is None:
            raise ConfigError("fast_path='mamba_ssm' but mamba_ssm's CUDA scan cannot be imported")
        if fast_path in ("auto", "triton"):
            from dnalm.kernels import triton_available

            if triton_available():
                from dnalm.kernels import selective_scan_triton as kernels

                # The trainable pair also computes float64 in float64 (the forward-only kernel in float32).
                train = grad or u.dtype == torch.float64
                scan = kernels.selective_scan_triton_train if train else kernels.selective_scan_triton
                return scan(u, delta, A, B, C, D, z, delta_bias, state)
    if not u.is_cuda:
        if grad or fast_path == "reference":
            return selective_scan_sequential(u, delta, A, B, C, D, z, delta_bias, True, state)
        return selective_scan_cumsum(u, delta, A, B, C, D, z, delta_bias, True, state)
    return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, True, state)


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """``w * x / sqrt(mean(x^2) + eps)`` over the last dimension (``mamba_ssm``'s RMSNorm), computed in at
    least float32 and returned in the weight's dtype."""

    def __init__(self, d: int, eps: float = 1e-5, device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        xf = wide(x)
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * wide(self.weight)
        return y.to(self.weight.dtype)


@dataclass
class MambaState:
    """Recurrent state of one :class:`Mamba`: conv (B, E, K-1), its last K-1 inputs (zeros before the start);
    ssm (B, E, N), the scan state h, in at least float32."""

    conv: Tensor
    ssm: Tensor


class Mamba(nn.Module):
    """The S6 mixer (see the module docstring); ``mamba_ssm``'s ``Mamba`` module names and initialisation.

    ``projections_of``: another Mamba whose ``in_proj`` and ``out_proj`` this one uses (looked up at every
    call, so an adapter put on them later serves both); this one then has none of its own.
    """

    def __init__(self, cfg: SsmConfig, device: torch.device | None = None, dtype: torch.dtype | None = None,
                 projections_of: Mamba | None = None):
        super().__init__()
        object.__setattr__(self, "_owner", projections_of)  # not a submodule: its weights are its owner's
        kw = {"device": device, "dtype": dtype}
        D, E, N, K, R = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.d_conv, cfg.dt_rank
        self.d_inner, self.d_state, self.d_conv, self.dt_rank = E, N, K, R
        self.fast_path = cfg.fast_path
        if projections_of is None:
            self.in_proj = nn.Linear(D, 2 * E, bias=cfg.bias, **kw)
        self.conv1d = nn.Conv1d(E, E, K, groups=E, padding=K - 1, bias=cfg.conv_bias, **kw)
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False, **kw)
        self.dt_proj = nn.Linear(R, E, bias=True, **kw)
        self.A_log = nn.Parameter(torch.empty(E, N, **kw))
        self.D = nn.Parameter(torch.empty(E, **kw))
        if projections_of is None:
            self.out_proj = nn.Linear(E, D, bias=cfg.bias, **kw)
        self._init = (cfg.dt_init, cfg.dt_scale, cfg.dt_min, cfg.dt_max, cfg.dt_init_floor)
        if not self.A_log.is_meta:
            self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """``mamba_ssm``'s initialisation of the SSM parameters: ``dt_proj.weight`` ~ U(+-s / sqrt(R))
        (``constant``: s / sqrt(R)); ``softplus(dt_proj.bias)`` log-uniform in [dt_min, dt_max] (at least
        dt_init_floor); ``A_log[:, n] = log(n + 1)`` (S4D-real); ``D = 1``."""
        dt_init, dt_scale, dt_min, dt_max, floor = self._init
        std = self.dt_rank ** -0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        p = self.dt_proj.bias
        dt = torch.exp(torch.rand(p.shape, device=p.device) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=floor)
        p.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1
        self.A_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32,
                                                device=p.device)).expand(self.d_inner, -1))
        self.D.fill_(1.0)

    def projections(self) -> tuple[nn.Module, nn.Module]:
        """(in_proj, out_proj): this module's own, or those of ``projections_of``."""
        owner = self._owner or self
        return owner.in_proj, owner.out_proj

    def _conv(self, window: Tensor, L: int) -> Tensor:
        """The causal depthwise convolution of the last L positions of window (B, E, K-1+L) -> (B, E, L):
        ``sum_k w[:, k] window[:, t + k] + bias`` (K shifted products; ``nn.Conv1d``'s depthwise kernel is
        slow on the CPU, in float64 especially)."""
        w = self.conv1d.weight[:, 0]  # (E, K)
        y = sum(window[..., k: k + L] * w[:, k, None] for k in range(self.d_conv))
        return y if self.conv1d.bias is None else y + self.conv1d.bias[:, None]

    def _ssm_inputs(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x (B, E, L) after the convolution -> delta before softplus (B, E, L), Bt, Ct (B, N, L), A (E, N)."""
        x_dbl = self.x_proj(x.transpose(1, 2))  # (B, L, R + 2N)
        dt, Bt, Ct = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # (B, E, L), bias added in the scan
        A = -torch.exp(wide(self.A_log))
        return delta, Bt.transpose(1, 2), Ct.transpose(1, 2), A

    def forward(self, u: Tensor, state: MambaState | None = None, offset: int = 0) -> Tensor:
        """u (B, L, D) -> (B, L, D). With a state: the tokens at ``offset..``, continuing from it and updating it."""
        L = u.shape[1]
        in_proj, out_proj = self.projections()
        x, z = in_proj(u).transpose(1, 2).chunk(2, dim=1)  # (B, E, L) each
        K = self.d_conv
        if state is None:
            window = F.pad(x, (K - 1, 0))  # (B, E, K-1+L): zeros before the start
        else:
            window = torch.cat([state.conv.to(x.dtype), x], dim=-1)  # (B, E, K-1+L)
            state.conv.copy_(window[..., window.shape[-1] - (K - 1):])
        x = F.silu(self._conv(window, L))
        delta, Bt, Ct, A = self._ssm_inputs(x)
        y, last = selective_scan(x, delta, A, Bt, Ct, self.D, z, self.dt_proj.bias,
                                 None if state is None else state.ssm, self.fast_path)
        if state is not None:
            state.ssm.copy_(last)
        return out_proj(y.transpose(1, 2))

    def step(self, u: Tensor, state: MambaState, offset: int) -> Tensor:
        """One token u (B, 1, D) at position ``offset`` -> (B, 1, D): the recurrence, O(E N)."""
        in_proj, out_proj = self.projections()
        x, z = in_proj(u[:, 0]).chunk(2, dim=-1)  # (B, E)
        window = torch.cat([state.conv.to(x.dtype), x[..., None]], dim=-1)  # (B, E, K)
        state.conv.copy_(window[..., 1:])
        x = (window * self.conv1d.weight[:, 0]).sum(-1)
        if self.conv1d.bias is not None:
            x = x + self.conv1d.bias
        x = F.silu(x)
        delta, Bt, Ct, A = self._ssm_inputs(x[..., None])  # (B, E, 1), (B, N, 1)
        acc = state.ssm.dtype
        delta = F.softplus(delta[..., 0].to(acc) + self.dt_proj.bias.to(acc))  # (B, E)
        xa = x.to(acc)
        h = torch.exp(delta[..., None] * A.to(acc)) * state.ssm + (delta * xa)[..., None] * Bt[..., 0].to(acc)[:, None]
        state.ssm.copy_(h)
        y = (h * Ct[..., 0].to(acc)[:, None]).sum(-1) + self.D.to(acc) * xa
        y = y * F.silu(z.to(acc))
        return out_proj(y.to(u.dtype)[:, None])

    def allocate_state(self, batch: int, max_len: int, device: torch.device | None = None,
                       dtype: torch.dtype | None = None) -> MambaState:
        """A zero state (its size does not depend on ``max_len``)."""
        p = self.conv1d.weight
        device, dtype = device or p.device, dtype or p.dtype
        return MambaState(conv=torch.zeros(batch, self.d_inner, self.d_conv - 1, device=device, dtype=dtype),
                          ssm=torch.zeros(batch, self.d_inner, self.d_state, device=device,
                                          dtype=torch.promote_types(dtype, torch.float32)))


class BiMamba(nn.Module):
    """Caduceus's bidirectional mixer: ``Mamba_fwd(u) (+ or *) flip(Mamba_rev(flip(u)))`` along L (§C.2).

    With ``weight_tie`` the reverse direction uses the forward direction's ``in_proj`` and ``out_proj``
    (stored once, under ``mamba_fwd``; the hub layout repeats them under ``mamba_rev``); a LoRA adapter on them
    serves both directions."""

    def __init__(self, cfg: CaduceusConfig, device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.strategy = cfg.bidirectional_strategy
        self.mamba_fwd = Mamba(cfg, device=device, dtype=dtype)
        tied = self.mamba_fwd if cfg.bidirectional_weight_tie else None
        self.mamba_rev = Mamba(cfg, device=device, dtype=dtype, projections_of=tied) if cfg.bidirectional else None

    def forward(self, u: Tensor) -> Tensor:
        """u (B, L, D) -> (B, L, D)."""
        out = self.mamba_fwd(u)
        if self.mamba_rev is None:
            return out
        rev = self.mamba_rev(u.flip(1)).flip(1)
        return out + rev if self.strategy == "add" else out * rev


class MambaBlock(nn.Module):
    """``x + mixer(RMSNorm(x))`` on the residual stream x (B, L, D) (``mamba_ssm``'s ``Block`` without MLP;
    ``mlp`` is the identity it uses then)."""

    def __init__(self, mixer: nn.Module, d: int, eps: float, residual_in_fp32: bool,
                 device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.norm = RMSNorm(d, eps, device=device, dtype=dtype)
        self.mixer = mixer
        self.mlp = nn.Identity()
        self.residual_in_fp32 = residual_in_fp32

    def _residual(self, x: Tensor) -> Tensor:
        return wide(x) if self.residual_in_fp32 else x

    def with_mixer(self, x: Tensor, mixer: Callable[[Tensor], Tensor]) -> Tensor:
        """The block on x (B, L, D) with its mixer's call replaced by ``mixer`` (chunked inference, steps)."""
        x = self._residual(x)
        return x + mixer(self.norm(x)).to(x.dtype)

    def forward(self, x: Tensor, layer_state: object | None = None, offset: int = 0) -> Tensor:
        if layer_state is None:
            return self.with_mixer(x, self.mixer)
        return self.with_mixer(x, lambda h: self.mixer(h, state=layer_state, offset=offset))

    def step(self, x: Tensor, layer_state: object, offset: int) -> Tensor:
        """One token: x (B, 1, D) at position ``offset`` -> (B, 1, D)."""
        return self.with_mixer(x, lambda h: self.mixer.step(h, layer_state, offset))


class MambaBackbone(nn.Module):
    """Embedding -> blocks -> final RMSNorm ``norm_f``; ``forward(input_ids, state, keep)`` as
    :class:`dnalm.models.blocks.Backbone` (hidden-state indices in the module docstring)."""

    def __init__(self, cfg: SsmConfig, mixer_factory: Callable[[int], nn.Module],
                 device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.embeddings = Embeddings(cfg.padded_vocab_size, cfg.d_model, device, dtype)
        self.layers = nn.ModuleList(
            MambaBlock(mixer_factory(i), cfg.d_model, cfg.norm_eps, cfg.residual_in_fp32, device, dtype)
            for i in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps, device=device, dtype=dtype)
        self.residual_in_fp32 = cfg.residual_in_fp32

    def embed(self, input_ids: Tensor) -> Tensor:
        x = self.embeddings(input_ids)
        return wide(x) if self.residual_in_fp32 else x

    def final_norm(self, x: Tensor) -> Tensor:
        return self.norm_f(x)

    def forward(self, input_ids: Tensor, state: InferenceState | None = None,
                keep: Sequence[int] = ()) -> tuple[Tensor, list[Tensor]]:
        """input_ids (B, L) -> (final hidden (B, L, D), hidden states at the layer indices ``keep``)."""
        return backbone_forward(self, input_ids, state, keep)


@torch.no_grad()
def _init_weights(model: nn.Module, n_layer: int, initializer_range: float) -> None:
    """``mamba_ssm``'s ``_init_weights`` (``MixerModel``; the same in Caduceus): Linear biases 0 (except
    ``dt_proj.bias``), embedding ~ N(0, r), ``out_proj.weight`` PyTorch's default (Kaiming-uniform) divided
    by sqrt(n_layer) (one residual branch per layer); other weights keep their constructors' values."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.bias is not None and not name.endswith("dt_proj"):
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=initializer_range)
    for name, p in model.named_parameters():
        if name.endswith("out_proj.weight"):
            nn.init.kaiming_uniform_(p, a=math.sqrt(5))
            p /= math.sqrt(n_layer)


class MambaLM(CausalLM):
    """A causal Mamba LM: :class:`MambaBackbone` with :class:`Mamba` mixers, head tied to the embedding. It has
    :class:`~dnalm.models.blocks.CausalLM`'s API (forward, hidden states, inference state, mixers)."""

    family = "mamba"

    def __init__(self, config: MambaConfig, device: torch.device | None = None, dtype: torch.dtype | None = None):
        nn.Module.__init__(self)  # not CausalLM.__init__: it builds LayerNorm/MLP blocks
        self.config = config
        self.backbone = MambaBackbone(config, lambda i: Mamba(config, device=device, dtype=dtype), device, dtype)
        V = config.padded_vocab_size
        self.lm_head = nn.Linear(config.d_model, V, bias=False, device=device, dtype=dtype)
        self.lm_head.weight = self.backbone.embeddings.word_embeddings.weight
        self.n_layer = config.n_layer
        self.initializer_range = config.initializer_range
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    def init_weights(self) -> None:
        """See :func:`_init_weights`."""
        _init_weights(self, self.n_layer, self.initializer_range)

    def allocate_state(self, batch: int, max_len: int | None = None, device: torch.device | None = None,
                       dtype: torch.dtype | None = None) -> InferenceState:
        """A fresh inference state; the state is O(1) in the length, so ``max_len`` defaults to no limit."""
        return super().allocate_state(batch, max_len or sys.maxsize, device, dtype)


class CaduceusLM(nn.Module):
    """Caduceus with its masked-LM head (the hub's ``CaduceusForMaskedLM``); see the module docstring.

    ``model(input_ids (B, L), attention_mask=None) -> logits (B, L, V)``; ``encode`` -> the final hidden
    states (B, L, D), or (B, L, 2D) with RCPS in the reference's layout ``[s1, flip_{L,C}(s2)]``, which
    :meth:`head` reads position by position. An ``attention_mask`` with padding runs each row on its real
    tokens alone (the network has no masking; padding would change every output of the bidirectional
    scan) and leaves zeros at the padded positions.
    """

    family: ClassVar[str] = "caduceus"
    #: A bidirectional encoder with an MLM head (the head at position t predicts token t when masked).
    causal: ClassVar[bool] = False

    def __init__(self, config: CaduceusConfig, device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.config = config
        self.n_layer = config.n_layer
        self.backbone = MambaBackbone(config, lambda i: BiMamba(config, device=device, dtype=dtype), device, dtype)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False, device=device, dtype=dtype)
        self.lm_head.weight = self.backbone.embeddings.word_embeddings.weight
        self.register_buffer("complement", torch.tensor(config.complement_map, dtype=torch.long, device=device),
                             persistent=False)
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    def init_weights(self) -> None:
        """See :func:`_init_weights`."""
        _init_weights(self, self.n_layer, self.config.initializer_range)

    def _layer_indices(self, layers: Sequence[int] | None) -> list[int]:
        return layer_indices(layers, self.n_layer + 1, "after the final norm")

    @property
    def hidden_width(self) -> int:
        """Channels of every hidden state: ``2 d_model`` with RCPS (the two streams), else ``d_model``."""
        return 2 * self.config.d_model if self.config.rcps else self.config.d_model

    def reverse_complement(self, input_ids: Tensor) -> Tensor:
        """ids (B, L) -> the reverse complement (B, L) through ``complement_map``."""
        return self.complement.to(input_ids.device)[input_ids.flip(-1)]

    def _layout(self, xs: list[Tensor]) -> Tensor:
        """Streams [(B, L, D)] x 1 or 2 -> the reference's RCPS layout (B, L, 2D); without RCPS the one stream."""
        return torch.cat([xs[0], xs[1].flip(1, 2)], dim=-1) if self.config.rcps else xs[0]

    def _run(self, input_ids: Tensor, keep: Sequence[int]) -> tuple[Tensor, list[Tensor]]:
        """Unpadded rows (B, L) -> final hidden states and those at ``keep`` (indices already normalised).

        With RCPS the two streams (the sequence, its reverse complement) run as separate batches of the same
        shape, so that the reverse complement of a sequence reruns the same computations with the streams
        swapped, at mirrored positions: the outputs are reverse-complement equivariant up to how a kernel
        rounds a row by its position (bit for bit with AVX-512 BLAS here; float64 tests bound it at 1e-10)."""
        backbone, rcps = self.backbone, self.config.rcps
        xs = [backbone.embed(s) for s in ([input_ids, self.reverse_complement(input_ids)] if rcps else [input_ids])]
        n = len(backbone.layers)
        wanted = set(keep)
        found = {0: self._layout(xs)} if 0 in wanted else {}
        swap = rcps and self.config.fused_add_norm
        for i, block in enumerate(backbone.layers):
            if swap:  # the reference's fused RCPS block: stream 1 <- flip(stream 2), stream 2 <- flip(stream 1)
                xs = [xs[1].flip(1, 2), xs[0].flip(1, 2)]
            xs = [block(x) for x in xs]
            if i + 1 in wanted:
                found[i + 1] = self._layout(xs)
        h = self._layout([backbone.norm_f(x) for x in xs])
        if n + 1 in wanted:
            found[n + 1] = h
        return h, [found[i] for i in keep]

    def _run_masked(self, input_ids: Tensor, attention_mask: Tensor | None,
                    keep: Sequence[int]) -> tuple[Tensor, list[Tensor]]:
        if input_ids.dim() != 2:
            raise ConfigError(f"input_ids must be (B, L), got shape {tuple(input_ids.shape)}")
        if attention_mask is None or bool(attention_mask.bool().all()):
            return self._run(input_ids, keep)
        if attention_mask.shape != input_ids.shape:
            raise ConfigError(f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids "
                              f"{tuple(input_ids.shape)}")
        real = attention_mask.to(input_ids.device).bool()
        h_all: Tensor | None = None
        kept_all: list[Tensor] = []
        for r in range(input_ids.shape[0]):
            cols = real[r].nonzero().squeeze(1)
            if cols.numel() == 0:
                continue
            h, kept = self._run(input_ids[r: r + 1, cols], keep)
            if h_all is None:
                h_all = h.new_zeros(input_ids.shape + h.shape[-1:])
                kept_all = [k.new_zeros(input_ids.shape + k.shape[-1:]) for k in kept]
            h_all[r, cols] = h[0]
            for dst, src in zip(kept_all, kept):
                dst[r, cols] = src[0]
        if h_all is None:
            raise ConfigError("attention_mask marks no real token in any row")
        return h_all, kept_all

    def head(self, h: Tensor) -> Tensor:
        """Final hidden states (..., D) or, with RCPS, (..., 2D) -> logits (..., V), position by position:
        ``W a + (W flip_C(b))[comp]`` for ``h = [a, b]`` (the reference's ``RCPSLMHead``)."""
        if not self.config.rcps:
            return self.lm_head(h)
        D = self.config.d_model
        return self.lm_head(h[..., :D]) + self.lm_head(h[..., D:].flip(-1))[..., self.complement.to(h.device)]

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """input_ids (B, L), attention_mask (B, L) (1 = token, 0 = padding) -> MLM logits (B, L, V)."""
        h, _ = self._run_masked(input_ids, attention_mask, ())
        return self.head(h)

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """The final hidden states (B, L, D or 2D), what :meth:`head` reads."""
        return self._run_masked(input_ids, attention_mask, ())[0]

    def forward_with_hidden(self, input_ids: Tensor, layers: Sequence[int] | None,
                            attention_mask: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
        """Logits (B, L, V) and the hidden states at ``layers`` (indices in the module docstring) in one pass."""
        h, kept = self._run_masked(input_ids, attention_mask, self._layer_indices(layers))
        return self.head(h), kept

    def hidden_states(self, input_ids: Tensor, layers: Sequence[int] | None = None,
                      attention_mask: Tensor | None = None) -> list[Tensor]:
        """Hidden states at ``layers`` (see :meth:`forward_with_hidden`)."""
        return self._run_masked(input_ids, attention_mask, self._layer_indices(layers))[1]


# ---------------------------------------------------------------------------------------------
# Caduceus's hub layout (§C.2)
# ---------------------------------------------------------------------------------------------

_SSM_FIELDS = ("d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init", "dt_scale", "dt_init_floor",
               "conv_bias", "bias")
_TOP_FIELDS = {"d_model": "d_model", "n_layer": "n_layer", "vocab_size": "vocab_size",
               "pad_vocab_size_multiple": "pad_vocab_size_multiple", "norm_epsilon": "norm_eps",
               "residual_in_fp32": "residual_in_fp32", "fused_add_norm": "fused_add_norm",
               "bidirectional": "bidirectional", "bidirectional_strategy": "bidirectional_strategy",
               "bidirectional_weight_tie": "bidirectional_weight_tie", "rcps": "rcps"}
#: hub key fragment -> dnalm's (applied in order to every key after the ``caduceus.`` prefix is removed)
_HUB_RENAMES = ((".word_embeddings.embedding.", ".word_embeddings."), (".mixer.submodule.", ".mixer."),
                (".norm.submodule.", ".norm."), ("norm_f.submodule.", "norm_f."), ("lm_head.lm_head.", "lm_head."))


def is_caduceus_config(meta: Any) -> bool:
    """Whether a parsed config.json is Caduceus's hub config (``model_type`` caduceus or an ``auto_map`` to
    ``modeling_caduceus``)."""
    if not isinstance(meta, Mapping) or "format" in meta:
        return False
    auto_map = meta.get("auto_map")
    names = [str(v) for v in auto_map.values()] if isinstance(auto_map, Mapping) else []
    return meta.get("model_type") == "caduceus" or any("modeling_caduceus." in n for n in names)


def detect_caduceus_hub(path: Path, meta: Any) -> bool:
    """A Caduceus hub config beside a weight file (``model.safetensors`` or ``pytorch_model.bin``)."""
    if not is_caduceus_config(meta):
        return False
    directory = path if path.is_dir() else path.parent
    return any((directory / n).is_file() for n in HUB_WEIGHTS)


def config_from_caduceus_hub(meta: Mapping[str, Any], where: str = "config.json", **overrides: Any) -> CaduceusConfig:
    """A :class:`CaduceusConfig` from the hub's config.json (parsed). ``rms_norm`` must be true; the
    ``complement_map`` (a dict id -> id) is extended to the padded vocabulary with ids mapping to themselves,
    as the reference does; ``ssm_cfg.use_fast_path`` and the initialiser settings change no output."""
    fields: dict[str, Any] = {}
    for key in ("d_model", "n_layer", "vocab_size"):
        if key not in meta:
            raise InputError(f"{where}: missing field '{key}'")
    if not meta.get("rms_norm", False):
        raise InputError(f"{where}: rms_norm false (LayerNorm) is not supported; Caduceus's released models "
                         "use RMSNorm")
    for key, name in _TOP_FIELDS.items():
        if key in meta and meta[key] is not None:
            fields[name] = meta[key]
    ssm = meta.get("ssm_cfg") or {}
    if not isinstance(ssm, Mapping):
        raise InputError(f"{where}: ssm_cfg must be an object")
    for key in _SSM_FIELDS:
        if key in ssm:
            fields[key] = None if (key == "dt_rank" and ssm[key] == "auto") else ssm[key]
    comp = meta.get("complement_map")
    try:
        if comp:
            V = pad_vocab(int(fields["vocab_size"]), int(fields.get("pad_vocab_size_multiple", 8)))
            given = {int(k): int(v) for k, v in dict(comp).items()}
            fields["complement_map"] = tuple(given.get(i, i) for i in range(V))
        fields.update(overrides)
        return CaduceusConfig(**fields)
    except (TypeError, ValueError, ConfigError) as exc:
        raise InputError(f"{where}: {exc}") from None


def caduceus_state_dict(sd: Mapping[str, Tensor], config: CaduceusConfig, where: Path) -> dict[str, Tensor]:
    """Hub keys (``caduceus.backbone...``, ``lm_head[.lm_head].weight``, RCPS ``.submodule.`` infixes) ->
    dnalm's; the ``complement_map`` buffers must agree with the config and are dropped."""
    out: dict[str, Tensor] = {}
    want = torch.tensor(config.complement_map, dtype=torch.long)
    for key, value in sd.items():
        if not isinstance(value, Tensor):
            continue
        k = key[len("caduceus."):] if key.startswith("caduceus.") else key
        if k.endswith("complement_map"):
            if value.shape != want.shape or not torch.equal(value.long().cpu(), want):
                raise InputError(f"{where}: '{key}' differs from the config's complement_map")
            continue
        for a, b in _HUB_RENAMES:
            k = k.replace(a, b)
        out[k] = value
    if config.bidirectional and config.bidirectional_weight_tie:
        for k in [k for k in out if ".mamba_rev.in_proj." in k or ".mamba_rev.out_proj." in k]:
            v = out.pop(k)
            own = out.get(k.replace(".mamba_rev.", ".mamba_fwd."))
            if own is None or own.shape != v.shape or not torch.equal(own, v):
                raise InputError(f"{where}: '{k}' differs from its mamba_fwd twin, but the config ties them")
    return out


def load_caduceus_hub(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                      overrides: Mapping[str, Any] | None = None) -> CaduceusLM:
    """A Caduceus checkpoint in the hub layout (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``;
    ``path`` the directory or its weight file), float32 unless stored otherwise, eval mode on ``map_location``.

    Pickled weights are read with the restricted unpickler; a missing, unexpected or misshapen tensor raises
    :class:`InputError` naming the file and the key.
    """
    from dnalm.models.io import check_fits, load_state_into, read_hub_layout, read_weights

    meta, cfg_file, file = read_hub_layout(path)
    config = config_from_caduceus_hub(meta, str(cfg_file), **dict(overrides or {}))
    sd = caduceus_state_dict(read_weights(file), config, file)
    check_fits(CaduceusLM, config, sd, file)
    model = CaduceusLM(config)
    load_state_into(model, sd, file)
    return model.to(map_location).eval()


def to_caduceus_hub_state_dict(model: CaduceusLM) -> dict[str, Tensor]:
    """dnalm's Caduceus weights under the hub's key names (the inverse of :func:`caduceus_state_dict`; for
    exporting and for tests of the importer). Tied tensors appear under each of their names."""
    rcps = model.config.rcps
    sd = dict(model.state_dict())
    if model.config.bidirectional and model.config.bidirectional_weight_tie:
        for k in [k for k in sd if ".mamba_fwd.in_proj." in k or ".mamba_fwd.out_proj." in k]:
            sd[k.replace(".mamba_fwd.", ".mamba_rev.")] = sd[k]
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        if k == "lm_head.weight":
            out["lm_head.lm_head.weight" if rcps else "lm_head.weight"] = v
            continue
        if rcps:
            k = k.replace(".word_embeddings.", ".word_embeddings.embedding.").replace(".mixer.", ".mixer.submodule.")
            if not model.config.fused_add_norm:
                k = k.replace(".norm.", ".norm.submodule.").replace("norm_f.", "norm_f.submodule.")
        out["caduceus." + k] = v
    if rcps:
        comp = torch.tensor(model.config.complement_map, dtype=torch.long)
        out["caduceus.backbone.embeddings.word_embeddings.complement_map"] = comp
        out["lm_head.complement_map"] = comp.clone()
    return out


# ---------------------------------------------------------------------------------------------
# mamba_ssm's MambaLMHeadModel layout (``save_pretrained``: config.json + pytorch_model.bin)
# ---------------------------------------------------------------------------------------------


def is_mamba_ssm_config(meta: Any) -> bool:
    """Whether a parsed config.json is ``mamba_ssm``'s ``MambaConfig`` (``d_model``, ``n_layer`` and ``ssm_cfg``,
    neither dnalm's nor Caduceus's)."""
    return (isinstance(meta, Mapping) and "format" not in meta and not is_caduceus_config(meta)
            and all(k in meta for k in ("d_model", "n_layer", "ssm_cfg")))


def detect_mamba_ssm(path: Path, meta: Any) -> bool:
    """A ``mamba_ssm`` config beside a weight file."""
    directory = path if path.is_dir() else path.parent
    return is_mamba_ssm_config(meta) and any((directory / n).is_file() for n in HUB_WEIGHTS)


def config_from_mamba_ssm(meta: Mapping[str, Any], where: str = "config.json", **overrides: Any) -> MambaConfig:
    """A :class:`MambaConfig` from ``mamba_ssm``'s config.json: Mamba1 layers only, no MLP (``d_intermediate``
    0), no attention layers, RMSNorm, tied embeddings."""
    ssm = meta.get("ssm_cfg") or {}
    if not isinstance(ssm, Mapping):
        raise InputError(f"{where}: ssm_cfg must be an object")
    for key, ok in (("layer", ssm.get("layer", "Mamba1") == "Mamba1"),
                    ("d_intermediate", not meta.get("d_intermediate")),
                    ("attn_layer_idx", not meta.get("attn_layer_idx")), ("rms_norm", meta.get("rms_norm", True)),
                    ("tie_embeddings", meta.get("tie_embeddings", True))):
        if not ok:
            raise InputError(f"{where}: {key}={meta.get(key, ssm.get(key))!r} is not supported (Mamba1 blocks without "
                             "MLP or attention, RMSNorm, tied embeddings)")
    fields: dict[str, Any] = {k: meta[k] for k in ("d_model", "n_layer", "vocab_size", "pad_vocab_size_multiple",
                                                   "residual_in_fp32") if k in meta}
    for key in _SSM_FIELDS:
        if key in ssm:
            fields[key] = None if (key == "dt_rank" and ssm[key] == "auto") else ssm[key]
    fields.update(overrides)
    try:
        return MambaConfig(**fields)
    except (TypeError, ValueError, ConfigError) as exc:
        raise InputError(f"{where}: {exc}") from None


def load_mamba_ssm(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                   overrides: Mapping[str, Any] | None = None) -> MambaLM:
    """A ``mamba_ssm`` ``MambaLMHeadModel`` checkpoint (``backbone.embedding.weight``, ``backbone.layers.i.{norm,
    mixer}.*``, ``backbone.norm_f.weight``, ``lm_head.weight``), eval mode on ``map_location``."""
    from dnalm.models.io import check_fits, load_state_into, read_json, read_weights

    path = Path(path)
    directory = path if path.is_dir() else path.parent
    cfg_file = directory / "config.json"
    meta = read_json(cfg_file) if cfg_file.is_file() else None
    if not is_mamba_ssm_config(meta):
        raise InputError(f"{directory}: no mamba_ssm config.json beside the weights")
    config = config_from_mamba_ssm(meta, str(cfg_file), **dict(overrides or {}))
    file = next((directory / n for n in HUB_WEIGHTS if (directory / n).is_file()), None) if path.is_dir() else path
    if file is None:
        raise InputError(f"{path}: no weights ({' or '.join(HUB_WEIGHTS)})")
    sd = {k.replace("backbone.embedding.", "backbone.embeddings.word_embeddings."): v
          for k, v in read_weights(file).items() if isinstance(v, Tensor)}
    check_fits(MambaLM, config, sd, file)
    model = MambaLM(config)
    load_state_into(model, sd, file)
    return model.to(map_location).eval()


def _tokenizer(config: SsmConfig):
    from dnalm.tokenizers import CharTokenizer

    return CharTokenizer()


def _info(config: SsmConfig, seq_len: int, batch_size: int = 1, dtype: Any = "bf16"):
    from dnalm.models.info import ssm_info

    return ssm_info(config, seq_len, batch_size, dtype)


FAMILY = Family(name="mamba", config_cls=MambaConfig, model_cls=MambaLM, presets=MAMBA_PRESETS, objective=CAUSAL,
                lora_targets=("in_proj", "out_proj", "x_proj", "dt_proj"), tokenizer=_tokenizer,
                importers=(Importer("mamba-ssm", detect_mamba_ssm, load_mamba_ssm),), info=_info)

CADUCEUS_FAMILY = Family(name="caduceus", config_cls=CaduceusConfig, model_cls=CaduceusLM, presets=CADUCEUS_PRESETS,
                         objective=MASKED, lora_targets=("in_proj", "out_proj", "x_proj", "dt_proj"),
                         tokenizer=_tokenizer,
                         importers=(Importer("caduceus-hub", detect_caduceus_hub, load_caduceus_hub),), info=_info,
                         window_tokens=1 << 17)  # the published context (caduceus-ps-131k)
