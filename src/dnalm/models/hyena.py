"""HyenaDNA, reproduced exactly (tensor for tensor with the released reference).

References: Poli et al. 2023, "Hyena Hierarchy: Towards Larger Convolutional Language Models"
(the Hyena operator, order N = 2); Nguyen et al. 2023, "HyenaDNA: Long-Range Genomic Sequence
Modeling at Single Nucleotide Resolution" (the DNA models and their checkpoints). Facts about the
reference code are in ``shared/reference/hyenadna.md``; section numbers below point there.

The network is the LM shell of :mod:`dnalm.models.blocks` with :class:`HyenaOperator` as mixer.
One operator, on u (B, L, D) (§3.2)::

    (x0, x1, v) = split(ShortConv_3(in_proj u))          # each (B, D, L), causal 3-tap conv
    z_t = v_t * x1_t                                      # gating, input of the long convolution
    y_t = x0_t * (sum_{s<=t} h[t-s] z_s + Dskip * z_t)   # long convolution with the implicit filter h
    out = out_proj(y)

The filter ``h`` (D, L) is "implicit": ``h = FFN(PosEnc(t)) * (exp(-|delta| t) + shift)``
(Hyena eq. 7), a Linear/Sin MLP over fixed positional features with exponential decay (§3.4).
The long convolution is computed by FFT (:func:`fftconv_ref`, §3.3), or step by step from the
kept history of ``z`` (:meth:`HyenaOperator.step`, O(t·D) for token t), or chunk by chunk at any
length with the last ``l_max - 1`` inputs ``z`` carried (:meth:`HyenaOperator.chunk`, the filter
truncated to ``l_max`` taps; its fused twin is :func:`dnalm.kernels.hyena_block.hyena_block_chunk`).

Notation: ``B`` batch, ``L`` length, ``D = d_model``, ``K`` short filter size, ``F = filter_order``.
Hidden states and inference state: see :mod:`dnalm.models.blocks`, :mod:`dnalm.models.mixer` and
:mod:`dnalm.inference.state`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from scipy.fft import next_fast_len
from torch import Tensor, nn
from torch.nn import functional as F

from dnalm.errors import ConfigError, InputError
from dnalm.inference.state import InferenceState
from dnalm.kernels.hyena_torch import wide
from dnalm.models.blocks import CausalLM, pad_vocab
from dnalm.models.family import CAUSAL, Family, Importer
from dnalm.models.mixer import CHUNK_ELEMENTS

log = logging.getLogger(__name__)

#: The config file of HyenaDNA's published layouts (and of dnalm's own format).
CONFIG_FILE = "config.json"
FAST_PATHS = ("auto", "fused", "reference")


@dataclass(frozen=True)
class HyenaConfig:
    """Hyperparameters of :class:`HyenaLM` (defaults: tiny-1k).

    ``l_max``: longest input; the positional features and so every filter depend on it, so it
    must match the checkpoint (training length + 2 in the released models). ``emb_dim``: width
    of the positional features (odd, >= 3). ``filter_order``: hidden width F of the filter MLP.
    ``w``: initial Sin frequency. ``shift``: added to the exponential decay of the filter;
    0.05 in HyenaDNA's standalone and ``-hf`` code, 0.0 in its training code (§1).
    ``modulate``: apply the decay at all. ``train_pos_emb``: make the positional features a
    trainable parameter (HyenaDNA's ``lr_pos_emb > 0``). ``embed_dropout`` / ``resid_dropout`` /
    ``hyena_dropout``: dropout on the embedding, on each residual branch, on ``v * x1``.
    ``fast_decay_pct``, ``slow_decay_pct``, ``decay_target``: the decay rates
    ``delta = linspace(ln(target)/slow, ln(target)/fast, D)``.
    ``d_inner``: the MLP's hidden width, 4 x ``d_model`` when not given (as in every released model).
    ``fast_path``: how whole blocks run without an inference state: ``auto`` (the fused kernels of
    :mod:`dnalm.kernels` on CUDA with Triton, the reference code elsewhere), ``fused`` (the fused
    block everywhere; plain PyTorch ops off CUDA) or ``reference``. It changes no weights or keys.
    """

    d_model: int = 128
    n_layer: int = 2
    d_inner: int | None = None  # MLP width; None: 4 * d_model
    vocab_size: int = 12
    pad_vocab_size_multiple: int = 8
    l_max: int = 1026
    emb_dim: int = 5
    filter_order: int = 64
    short_filter_order: int = 3
    w: float = 10.0
    train_freq: bool = True
    modulate: bool = True
    shift: float = 0.05
    fast_decay_pct: float = 0.3
    slow_decay_pct: float = 1.5
    decay_target: float = 1e-2
    train_pos_emb: bool = False
    embed_dropout: float = 0.1
    resid_dropout: float = 0.0
    hyena_dropout: float = 0.0
    layer_norm_eps: float = 1e-5
    residual_in_fp32: bool = True
    initializer_range: float = 0.02
    fast_path: str = "auto"

    def __post_init__(self) -> None:
        if self.d_inner is None:
            object.__setattr__(self, "d_inner", 4 * self.d_model)
        if self.fast_path not in FAST_PATHS:
            raise ConfigError(f"hyena: fast_path must be one of {', '.join(FAST_PATHS)}, got '{self.fast_path}'")
        for name in ("d_model", "n_layer", "d_inner", "vocab_size", "pad_vocab_size_multiple", "l_max",
                     "filter_order", "short_filter_order"):
            if getattr(self, name) < 1:
                raise ConfigError(f"hyena: {name} must be >= 1, got {getattr(self, name)}")
        if self.emb_dim < 3 or self.emb_dim % 2 == 0:
            raise ConfigError(f"hyena: emb_dim must be odd and >= 3 (time + cos/sin pairs), "
                              f"got {self.emb_dim}")
        for name in ("embed_dropout", "resid_dropout", "hyena_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"hyena: {name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding and columns of the logits (12 -> 16)."""
        return pad_vocab(self.vocab_size, self.pad_vocab_size_multiple)

    @classmethod
    def preset(cls, name: str, **overrides) -> HyenaConfig:
        """A named preset (see :data:`PRESETS`) with some fields replaced."""
        if name not in PRESETS:
            raise ConfigError(f"unknown hyena preset '{name}' (presets: {', '.join(PRESETS)})")
        try:
            return replace(PRESETS[name], **overrides)
        except TypeError as exc:
            raise ConfigError(f"hyena preset '{name}': {exc}") from None


#: The released HyenaDNA checkpoints (``LongSafari/hyenadna-<name>-seqlen`` hub configs, §2);
#: tiny-1k-d256 from its name and the repo's ``experiment/hg38/nucleotide_transformer.yaml``.
PRESETS: dict[str, HyenaConfig] = {
    "tiny-1k": HyenaConfig(d_model=128, n_layer=2, d_inner=512, l_max=1026),
    "tiny-1k-d256": HyenaConfig(d_model=256, n_layer=2, d_inner=1024, l_max=1026),
    "tiny-16k-d128": HyenaConfig(d_model=128, n_layer=2, d_inner=512, l_max=16386),
    "small-32k": HyenaConfig(d_model=256, n_layer=4, d_inner=1024, l_max=32770),
    "medium-160k": HyenaConfig(d_model=256, n_layer=8, d_inner=1024, l_max=160002),
    "medium-450k": HyenaConfig(d_model=256, n_layer=8, d_inner=1024, l_max=450002),
    "large-1m": HyenaConfig(d_model=256, n_layer=8, d_inner=1024, l_max=1000002),
}
PRESETS["tiny"] = PRESETS["tiny-1k"]


def fftconv_ref(u: Tensor, k: Tensor, D: Tensor) -> Tensor:
    """Causal long convolution with skip term: ``y[t] = sum_{s<=t} k[t-s] u[s] + D u[t]``.

    u: (B, C, L); k: (C, L); D: (C,). Returns (B, C, L) in ``u.dtype``.
    Zero-padded FFT as in HyenaDNA's ``fftconv`` (§3.3), of size 2L where L has only the prime
    factors 2, 3, 5, 7 and otherwise of the next such size, or of the next power of two where that
    is at most 1.25x longer (:func:`dnalm.kernels.hyena_block.fft_size`; zeros after the inputs change
    none of the L outputs; a length like 2 x 65599 would make cuFFT fall back to an algorithm that needs
    several times the memory), computed in float32 (float64 for a float64 filter) whatever the
    input dtype, the skip term in float32.
    """
    from dnalm.kernels.hyena_block import fft_size

    L = u.shape[-1]
    n = fft_size(L)
    k = k.to(torch.promote_types(k.dtype, torch.float32))
    k_f = torch.fft.rfft(k, n=n) / n
    u_f = torch.fft.rfft(u.to(k.dtype), n=n)
    y = torch.fft.irfft(u_f * k_f, n=n, norm="forward")[..., :L]
    out = y + wide(u) * wide(D)[:, None]
    return out.to(u.dtype)


class PositionalEmbedding(nn.Module):
    """Fixed features of the filter positions (§3.4).

    z: (1, l_max, emb_dim) = [t, cos(f_j w), -sin(f_j w)] with t = linspace(0, 1, l_max),
    w = 2 pi n / l_max, f = linspace(1e-4, bands - 1, bands); t: (1, l_max, 1).
    Both persistent (stored in checkpoints); z is a parameter when ``trainable``.
    """

    def __init__(self, emb_dim: int, l_max: int, trainable: bool = False, device: torch.device | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        bands = (emb_dim - 1) // 2
        t = torch.linspace(0, 1, l_max, device=device)[None, :, None]
        w = 2 * math.pi * torch.linspace(0, l_max - 1, l_max, device=device)[None, :, None] / l_max
        f = torch.linspace(1e-4, bands - 1, bands, device=device)[None, None]
        z = torch.cat([t, torch.cos(f * w), -torch.sin(f * w)], dim=-1).to(dtype or torch.get_default_dtype())
        if trainable:
            self.z = nn.Parameter(z)
        else:
            self.register_buffer("z", z)
        self.register_buffer("t", t.to(z.dtype))

    def forward(self, L: int) -> tuple[Tensor, Tensor]:
        """The first L rows: z (1, L, emb_dim), t (1, L, 1)."""
        return self.z[:, :L], self.t[:, :L]


class Sin(nn.Module):
    """``sin(freq * x)`` with a learned frequency per feature; freq: (1, F), initialised to w."""

    def __init__(self, dim: int, w: float = 10.0, trainable: bool = True, device: torch.device | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.freq = nn.Parameter(w * torch.ones(1, dim, device=device, dtype=dtype), requires_grad=trainable)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.freq * x)


class ExponentialModulation(nn.Module):
    """``h * (exp(-t |delta|) + shift)`` with per-channel decay rates delta (§3.4); deltas: (1, 1, D)."""

    def __init__(self, d_model: int, fast_decay_pct: float = 0.3, slow_decay_pct: float = 1.5,
                 target: float = 1e-2, modulate: bool = True, shift: float = 0.05,
                 device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.modulate = modulate
        self.shift = shift
        max_decay = math.log(target) / fast_decay_pct
        min_decay = math.log(target) / slow_decay_pct
        self.register_buffer("deltas", torch.linspace(min_decay, max_decay, d_model, device=device,
                                                      dtype=dtype)[None, None])

    def forward(self, t: Tensor, h: Tensor) -> Tensor:
        """t: (1, L, 1), h: (1, L, D) -> (1, L, D)."""
        if not self.modulate:
            return h
        return h * (torch.exp(-t * self.deltas.abs()) + self.shift)


class HyenaFilter(nn.Module):
    """The implicit long filter h (D, L) and the skip gain ``bias`` (D) of one operator (§3.4).

    ``implicit_filter`` = Linear(emb_dim, F), Sin, Linear(F, F), Sin, Linear(F, F), Sin,
    Linear(F, D, bias=False), where the three Sin slots are one module (one ``freq`` tensor).
    """

    def __init__(self, cfg: HyenaConfig, device: torch.device | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        d, order = cfg.d_model, cfg.filter_order
        kw = {"device": device, "dtype": dtype}
        self.bias = nn.Parameter(torch.randn(d, **kw))
        self.pos_emb = PositionalEmbedding(cfg.emb_dim, cfg.l_max, cfg.train_pos_emb, **kw)
        act = Sin(order, cfg.w, cfg.train_freq, **kw)
        self.implicit_filter = nn.Sequential(
            nn.Linear(cfg.emb_dim, order, **kw), act,
            nn.Linear(order, order, **kw), act,
            nn.Linear(order, order, **kw), act,
            nn.Linear(order, d, bias=False, **kw))
        self.modulation = ExponentialModulation(d, cfg.fast_decay_pct, cfg.slow_decay_pct, cfg.decay_target,
                                                cfg.modulate, cfg.shift, **kw)

    def filter_parameters(self) -> list[nn.Parameter]:
        """The implicit-filter parameters that get their own optimizer group (§3.4): the MLP
        (``freq`` included) and ``z`` when trainable; not the skip gain ``bias``."""
        params = list(self.implicit_filter.parameters())
        if isinstance(self.pos_emb.z, nn.Parameter):
            params.append(self.pos_emb.z)
        return params

    def filter(self, L: int) -> Tensor:
        """The filter of the first L positions, (D, L)."""
        z, t = self.pos_emb(L)
        h = self.modulation(t, self.implicit_filter(z))  # (1, L, D)
        return h[0].transpose(0, 1)


#: Elements per FFT buffer of the long convolution over a state's history (:meth:`HyenaOperator._state_conv`).
STATE_FFT_ELEMENTS = 1 << 28


@dataclass
class HyenaState:
    """Recurrent state of one :class:`HyenaOperator`.

    conv: (B, 3D, K-1) the last K-1 inputs of the short convolution (zeros before the start);
    z: (B, D, max_len) every input ``v * x1`` of the long convolution so far;
    k_rev: (D, max_len) the filter reversed in time (``k_rev[:, max_len - 1 - j] = h[j]``), computed
    once at the first use and shared by all rows: the newest output of a step is then one
    contiguous dot product of the history with ``k_rev[:, max_len - 1 - t:]``;
    prefix, pre: the positions ``0 .. prefix-1`` written by the last full forward (the prompt) and
    ``pre`` (B, D, max_len - prefix) float32, their contribution ``sum_{s<prefix} h[t-s] z_s`` to every
    later position t, computed by one FFT after that forward: a step then sums over the positions
    written since (O((t - prefix)·D)) instead of the whole history.
    """

    conv: Tensor
    z: Tensor
    k_rev: Tensor | None = field(default=None, init=False)
    # per row (batch first, so that InferenceState.select keeps them with their rows); set by forward
    prefix: int = 0
    pre: Tensor | None = None
    # for steps at a tensor offset (static shapes, see HyenaOperator.step): the filter reversed and
    # zero-padded to 2 max_len - 1 taps, and arange(max_len)
    k_pad: Tensor | None = field(default=None, init=False)
    lags: Tensor | None = field(default=None, init=False)


@dataclass
class HyenaCarry:
    """What the next chunk of one :class:`HyenaOperator` needs (:meth:`HyenaOperator.chunk`).

    conv: (B, 3D, K-1) last inputs of the short convolution (None before the first chunk: zeros);
    z: (B, D, H) last ``H <= l_max - 1`` inputs ``v * x1`` of the long convolution;
    k: (D, l_max) the filter, computed once.
    """

    conv: Tensor | None = None
    z: Tensor | None = None
    k: Tensor | None = None


class HyenaOperator(nn.Module):
    """The order-2 Hyena operator of HyenaDNA (§3.2); mixer contract of :mod:`dnalm.models.mixer`."""

    def __init__(self, cfg: HyenaConfig, device: torch.device | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        d = cfg.d_model
        kw = {"device": device, "dtype": dtype}
        self.d_model = d
        self.l_max = cfg.l_max
        self.in_proj = nn.Linear(d, 3 * d, **kw)
        self.out_proj = nn.Linear(d, d, **kw)
        K = cfg.short_filter_order
        self.short_filter = nn.Conv1d(3 * d, 3 * d, K, groups=3 * d, padding=K - 1, **kw)
        self.filter_fn = HyenaFilter(cfg, **kw)
        self.dropout = nn.Dropout(cfg.hyena_dropout)
        self.fast_path = cfg.fast_path
        self.checkpoint_mixer = False  # a training-time switch, see dnalm.kernels.hyena_block

    def fused_ops(self, block: nn.Module, device: torch.device):
        """The elementwise ops of the fused kernels (:func:`dnalm.kernels.select_ops`) for ``block`` (whose
        mixer this is) on ``device``, or None where ``fast_path`` or active dropout rule them out."""
        from dnalm.kernels import select_ops
        from dnalm.models.blocks import MLP

        if self.training and (self.dropout.p > 0 or block.dropout.p > 0):
            return None
        if not (isinstance(block.norm1, nn.LayerNorm) and isinstance(block.norm2, nn.LayerNorm)
                and type(block.mlp) is MLP):
            return None  # the fused kernels implement LayerNorm and the GELU MLP only
        return select_ops(self.fast_path, device)

    def fused_block(self, block: nn.Module, x: Tensor) -> Tensor | None:
        """``block(x)`` (x (B, L, D) float32 residual stream) through the fused kernels of
        :mod:`dnalm.kernels.hyena_block`, or None where ``fast_path`` or active dropout rule them out."""
        ops = self.fused_ops(block, x.device)
        if ops is None or x.dtype != torch.float32 or x.shape[1] > self.l_max:
            return None
        from dnalm.kernels.hyena_block import hyena_block_forward

        return hyena_block_forward(block, x, ops, checkpoint_mixer=self.checkpoint_mixer)

    def chunk_carry(self, batch: int, length: int, context: int | None, device: torch.device | None = None,
                    dtype: torch.dtype | None = None) -> HyenaCarry:
        """An empty history (the filter is computed at the first chunk)."""
        return HyenaCarry()

    def chunk(self, u: Tensor, carry: HyenaCarry, offset: int) -> Tensor:
        """One chunk u (B, T, D) -> (B, T, D), updating ``carry`` (the chunks follow one another from 0).

        The short convolution runs over ``[carry.conv; in_proj u]``, the long convolution over
        ``[carry.z; z]`` with the filter truncated to ``l_max`` taps and zero-padded to the window
        (:func:`fftconv_ref`), keeping the last T outputs: at any length, the causal convolution with the
        filter's ``l_max`` taps, which is the plain forward wherever that exists. The filter is computed once
        per sequence, in float32 even under autocast.
        """
        B, T, _ = u.shape
        D = self.d_model
        xz = self.in_proj(u).transpose(1, 2)  # (B, 3D, T)
        K = self.short_filter.kernel_size[0]
        if carry.conv is None:
            carry.conv = xz.new_zeros(B, 3 * D, K - 1)
        window = torch.cat([carry.conv.to(xz.dtype), xz], dim=-1)  # (B, 3D, K-1+T)
        carry.conv = window[..., window.shape[-1] - (K - 1):].clone()
        xz = F.conv1d(window, self.short_filter.weight, self.short_filter.bias, groups=3 * D)  # (B, 3D, T)
        x0, x1, v = xz.split(D, dim=1)
        z = self.dropout(v * x1)  # (B, D, T)
        if carry.k is None:
            with torch.autocast(u.device.type, enabled=False):  # once per sequence: in float32 even under autocast
                carry.k = self.filter_fn.filter(self.l_max)  # (D, l_max)
        zz = z if carry.z is None else torch.cat([carry.z.to(z.dtype), z], dim=-1)  # (B, D, H+T)
        H, N = zz.shape[-1] - T, zz.shape[-1]
        # zeros after the window change none of its causal outputs; they give the FFT a length with small
        # prime factors (a length like 2 * 69631 would fall back to a slow, memory-hungry algorithm)
        M = next_fast_len(N)
        k = carry.k[:, :M]
        y = fftconv_ref(F.pad(zz, (0, M - N)), F.pad(k, (0, M - k.shape[-1])), self.filter_fn.bias)[..., H:N]
        keep = self.l_max - 1
        carry.z = zz[..., max(N - keep, 0):].clone() if keep > 0 else zz[..., :0]
        return self.out_proj((y * x0).transpose(1, 2))

    def chunk_range(self, context: int | None) -> tuple[int | None, int | None]:
        """At least ``max(l_max, 2^20 / D)`` tokens (a chunk shorter than l_max would spend most of its FFT
        on the history), no bound."""
        return max(self.l_max, CHUNK_ELEMENTS // self.d_model), None

    def chunk_limit(self, elements: int, context: int | None) -> int:
        """The longest chunk T whose long convolution's complex FFT (4D reals per position of
        ``l_max + T``; the fused block's buffers are half of that) stays below ``elements`` per row."""
        return elements // (4 * self.d_model) - self.l_max

    def fused_chunk_carry(self, block: nn.Module, device: torch.device):
        """A fresh carry of the fused block's chunks (:func:`dnalm.kernels.hyena_block.hyena_block_chunk`)
        for ``block`` (whose mixer this is) on ``device``, or None where the residual stream is narrower than
        float32, or ``fast_path`` or active dropout rule the fused kernels out."""
        from dnalm.kernels.hyena_block import FusedCarry

        if not (getattr(block, "residual_in_fp32", False) or self.in_proj.weight.dtype == torch.float32):
            return None
        ops = self.fused_ops(block, device)
        return None if ops is None else FusedCarry(ops=ops)

    def fused_chunk(self, block: nn.Module, x: Tensor, carry) -> Tensor:
        """``block`` on the chunk x (B, T, D) of the residual stream through the fused kernels; the twin of
        ``block.with_mixer(x, lambda h: self.chunk(h, hyena_carry, offset))``."""
        from dnalm.kernels.hyena_block import hyena_block_chunk

        return hyena_block_chunk(block, x, carry, carry.ops)

    def fused_chunk_bytes(self, chunk: int) -> int:
        """Bytes of the filter spectrum the fused chunks keep: complex64 ``(D, n/2 + 1)`` for the FFT length
        n of a chunk of ``chunk`` tokens with its history."""
        from dnalm.kernels.hyena_block import fft_size

        n = fft_size(max(self.l_max - 1, self.short_filter.kernel_size[0] - 1) + chunk)
        return self.d_model * (n // 2 + 1) * 8

    def _check_length(self, n: int) -> None:
        if n > self.l_max:
            raise ConfigError(f"hyena: input of {n} tokens exceeds the model's l_max {self.l_max} "
                              "(the filter is defined for at most l_max positions)")

    def forward(self, u: Tensor, state: HyenaState | None = None, offset: int = 0) -> Tensor:
        """u (B, L, D) -> (B, L, D); with a state, u holds positions offset..offset+L-1."""
        L = u.shape[1]
        end = offset + L
        self._check_length(end)
        xz = self.in_proj(u).transpose(1, 2)  # (B, 3D, L)
        if state is None:
            xz = self.short_filter(xz)[..., :L]
        else:
            window = torch.cat([state.conv.to(xz.dtype), xz], dim=-1)  # (B, 3D, K-1+L)
            state.conv.copy_(window[..., window.shape[-1] - state.conv.shape[-1]:])
            xz = F.conv1d(window, self.short_filter.weight, self.short_filter.bias, groups=xz.shape[1])
        x0, x1, v = xz.split(self.d_model, dim=1)
        z = self.dropout(v * x1)  # (B, D, L)
        if state is None:
            y = fftconv_ref(z, self.filter_fn.filter(L), self.filter_fn.bias)
        else:
            state.z[..., offset:end] = z
            y = self._state_conv(state, end)[..., offset:end].to(z.dtype)
        return self.out_proj((y * x0).transpose(1, 2))

    def _state_conv(self, state: HyenaState, end: int) -> Tensor:
        """The long convolution (float32, with the skip term) of the kept inputs ``z_0 .. z_{end-1}``,
        zero after them, at every position of the state (B, D, max_len), by one FFT of size 2 max_len.

        Positions before ``end`` are the forward's outputs; from ``end`` on (where the skip term is
        zero) they are the contribution of those inputs to later positions, kept as ``state.pre`` for
        the steps that follow (``state.prefix = end``)."""
        B, D, M = state.z.shape
        h = self._state_filter(state).flip(-1)  # h[0 .. M-1]
        acc = torch.promote_types(h.dtype, torch.float32)
        h = h.to(acc)
        y = torch.empty(B, D, M, dtype=acc, device=state.z.device)
        # a few rows at a time: the FFT's buffers (several (rows, D, 2M) tensors) stay near 2^28 elements
        rows = max(1, STATE_FFT_ELEMENTS // (2 * D * M))
        for b in range(0, B, rows):
            u = F.pad(state.z[b: b + rows, :, :end].to(acc), (0, M - end))
            y[b: b + rows] = fftconv_ref(u, h, self.filter_fn.bias)
        state.prefix, state.pre = end, (y[..., end:].contiguous() if end < M else None)
        return y

    def _state_filter(self, state: HyenaState) -> Tensor:
        """The reversed filter ``k_rev`` (D, max_len) of the state (computed at the first use)."""
        if state.k_rev is None:
            state.k_rev = self.filter_fn.filter(state.z.shape[-1]).flip(-1).contiguous()
        return state.k_rev

    def allocate_state(self, batch: int, max_len: int, device: torch.device | None = None,
                       dtype: torch.dtype | None = None) -> HyenaState:
        """Zeroed state for ``batch`` sequences of up to ``max_len`` (<= l_max) tokens."""
        self._check_length(max_len)
        w = self.short_filter.weight
        device = device or w.device
        dtype = dtype or w.dtype
        K = self.short_filter.kernel_size[0]
        return HyenaState(conv=torch.zeros(batch, 3 * self.d_model, K - 1, device=device, dtype=dtype),
                          z=torch.zeros(batch, self.d_model, max_len, device=device, dtype=dtype))

    def step(self, u: Tensor, state: HyenaState, offset: int | Tensor) -> Tensor:
        """One token u (B, 1, D) at position ``offset`` -> (B, 1, D).

        The long convolution at t = offset is ``sum_{s<=t} h[t-s] z_s`` plus the skip term
        ``Dskip * z_t``, in float32: after a forward with the state, the prompt's part of the sum is
        ``state.pre`` and the step sums over the positions written since (O((t - prefix)·D));
        without one, over all kept inputs (O(t·D)).

        ``offset`` may be a one-element int64 tensor on the state's device: the step then has the same
        shapes and no host synchronisation at every position (it can be captured once as a CUDA graph
        and replayed), at the price of a dot product over the whole state after the prompt (``max_len -
        prefix`` positions, the inputs not yet written being zeros) with the taps gathered from a
        zero-padded filter.
        """
        if isinstance(offset, Tensor):
            return self._step_at(u, state, offset)
        self._check_length(offset + 1)
        x0, z = self._step_gates(u, state)
        state.z[..., offset] = z
        k_rev = self._state_filter(state)
        acc = torch.promote_types(k_rev.dtype, torch.float32)
        c = state.prefix if state.pre is not None and offset >= state.prefix else 0
        hist = state.z[..., c: offset + 1].to(acc)  # (B, D, t+1-c): z_c .. z_t
        taps = k_rev[:, k_rev.shape[-1] - (offset + 1 - c):].to(acc)  # (D, t+1-c): h[t-c] .. h[0]
        # one batched dot product per channel (no (B, D, t+1) temporary)
        y = torch.einsum("bdt,dt->bd", hist, taps) + wide(z) * wide(self.filter_fn.bias)
        if c:
            y = y + state.pre[..., offset - c]
        return self.out_proj((y.to(z.dtype) * x0)[:, None])

    def _step_gates(self, u: Tensor, state: HyenaState) -> tuple[Tensor, Tensor]:
        """In-projection, short convolution (updating ``state.conv``) and gating of one token:
        u (B, 1, D) -> (x0, z), each (B, D)."""
        xz = self.in_proj(u[:, 0])  # (B, 3D)
        window = torch.cat([state.conv.to(xz.dtype), xz[..., None]], dim=-1)  # (B, 3D, K)
        state.conv.copy_(window[..., 1:])
        w = self.short_filter.weight[:, 0]  # (3D, K)
        xz = (window * w).sum(-1) + self.short_filter.bias
        x0, x1, v = xz.split(self.d_model, dim=1)  # (B, D)
        return x0, self.dropout(v * x1)

    def _step_at(self, u: Tensor, state: HyenaState, offset: Tensor) -> Tensor:
        """:meth:`step` at a tensor offset (shapes independent of the position)."""
        x0, z = self._step_gates(u, state)
        M = state.z.shape[-1]
        state.z.index_copy_(2, offset, z[..., None].to(state.z.dtype))
        if state.k_pad is None:
            k_rev = self._state_filter(state)  # (D, M): h[M-1] .. h[0]
            # k_pad[:, M - 1 - j] = h[j] for j >= 0, zeros after: the window k_pad[:, M-1-t : 2M-1-t]
            # holds h[t - s] at s = 0..t and zeros at s > t (positions not written yet)
            state.k_pad = torch.cat([k_rev, k_rev.new_zeros(k_rev.shape[0], M - 1)], dim=-1)
            state.lags = torch.arange(M, device=k_rev.device)
        acc = torch.promote_types(state.k_pad.dtype, torch.float32)
        c = state.prefix if state.pre is not None else 0  # fixed for the life of a captured step
        taps = state.k_pad.index_select(1, state.lags[c:] + (M - 1 - offset)).to(acc)  # (D, M - c)
        y = torch.einsum("bdm,dm->bd", state.z[..., c:].to(acc), taps) + wide(z) * wide(self.filter_fn.bias)
        if c:
            y = y + state.pre.index_select(2, offset - c)[..., 0]
        return self.out_proj((y.to(z.dtype) * x0)[:, None])


class HyenaLM(CausalLM):
    """HyenaDNA's causal LM (``ConvLMHeadModel``): the LM shell with Hyena mixers, head tied."""

    family = "hyena"

    def __init__(self, config: HyenaConfig, device: torch.device | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__(config.d_model, config.n_layer, config.d_inner, config.vocab_size,
                         lambda i: HyenaOperator(config, device=device, dtype=dtype),
                         pad_vocab_size_multiple=config.pad_vocab_size_multiple,
                         embed_dropout=config.embed_dropout, resid_dropout=config.resid_dropout,
                         layer_norm_eps=config.layer_norm_eps, residual_in_fp32=config.residual_in_fp32,
                         initializer_range=config.initializer_range, device=device, dtype=dtype)
        self.config = config
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    def allocate_state(self, batch: int, max_len: int | None = None, device: torch.device | None = None,
                       dtype: torch.dtype | None = None) -> InferenceState:
        """A fresh inference state; ``max_len`` defaults to ``config.l_max``."""
        return super().allocate_state(batch, max_len or self.config.l_max, device, dtype)


# ---------------------------------------------------------------------------------------------
# HyenaDNA's published checkpoints (shared/reference/hyenadna.md §5)
# ---------------------------------------------------------------------------------------------
#
# * Lightning (``LongSafari/hyenadna-*-seqlen``): ``weights.ckpt`` + ``config.json``; keys
#   ``model.backbone...``, with or without the ``.mixer.layer.`` / ``.mlp.layer.`` infix of
#   activation checkpointing; the file also pickles OmegaConf objects and optimizer state;
# * ``-hf`` (``LongSafari/hyenadna-*-seqlen-hf``): ``model.safetensors`` or ``pytorch_model.bin`` +
#   ``config.json`` (``model_type: hyenadna``); keys ``hyena.backbone...`` and a separate
#   ``lm_head.weight``; the shared Sin ``freq`` may be stored under only some of its names;
# * a plain state dict (``.pt``/``.pth``/``.bin``/``.safetensors``) with ``backbone...`` keys.
#
# Without a recognised ``config.json`` beside the weights, the configuration is read off the
# tensor shapes. The modulation ``shift`` is stored in none of HyenaDNA's layouts; it defaults to
# 0.05 (standalone and ``-hf`` code) and can be overridden (``overrides={"shift": 0.0}``).


def _hyena_fields_from_original(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """HyenaDNA's own config.json (standalone constructor arguments, §5a).

    Absent layer fields take the values every released config sets (emb_dim 5, w 10, ...).
    """
    layer = cfg.get("layer") or {}
    if layer.get("bidirectional"):
        raise ConfigError("bidirectional Hyena layers are not supported")
    d_model = cfg["d_model"]
    out = {
        "d_model": d_model,
        "n_layer": cfg["n_layer"],
        "d_inner": cfg.get("d_inner") or 4 * d_model,
        "vocab_size": cfg.get("vocab_size", 12),
        "pad_vocab_size_multiple": cfg.get("pad_vocab_size_multiple", 8),
        "embed_dropout": cfg.get("embed_dropout", 0.1),
        "resid_dropout": cfg.get("resid_dropout", 0.0),
        "residual_in_fp32": cfg.get("residual_in_fp32", True),
        "l_max": layer["l_max"],
        "emb_dim": layer.get("emb_dim", 5),
        "filter_order": layer.get("filter_order", 64),
        "w": layer.get("w", 10),
        "modulate": layer.get("modulate", True),
        "train_pos_emb": bool(layer.get("lr_pos_emb", 0.0)),
    }
    # The reference ignores ``local_order`` (its short convolution always has 3 taps).
    for key in ("shift", "fast_decay_pct", "slow_decay_pct", "target"):
        if key in layer:
            out["decay_target" if key == "target" else key] = layer[key]
    return out


def _hyena_fields_from_hf(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``-hf`` port's flat config.json (§5b)."""
    for key, want in (("hyena_order", 2), ("num_inner_mlps", 2), ("use_bias", True)):
        if cfg.get(key, want) != want:
            raise ConfigError(f"{key}={cfg[key]!r} is not supported (only {want!r})")
    return {
        "d_model": cfg["d_model"],
        "n_layer": cfg["n_layer"],
        "d_inner": cfg.get("d_inner") or 4 * cfg["d_model"],
        "vocab_size": cfg.get("vocab_size", 12),
        "pad_vocab_size_multiple": cfg.get("pad_vocab_size_multiple", 8),
        "l_max": cfg["max_seq_len"],
        "emb_dim": cfg.get("emb_dim", 5),
        "filter_order": cfg.get("filter_order", 64),
        "short_filter_order": cfg.get("short_filter_order", 3),
        "w": cfg.get("activation_freq", 10),
        "train_freq": cfg.get("train_freq", True),
        "embed_dropout": cfg.get("embed_dropout", 0.1),
        "hyena_dropout": cfg.get("hyena_dropout", 0.0),
        "layer_norm_eps": cfg.get("layer_norm_epsilon", 1e-5),
        "initializer_range": cfg.get("initializer_range", 0.02),
    }


def is_hyenadna_config(cfg: Any) -> bool:
    """Whether a parsed config.json is HyenaDNA's original or ``-hf`` layout."""
    if not isinstance(cfg, Mapping):
        return False
    return cfg.get("model_type") == "hyenadna" or (isinstance(cfg.get("layer"), Mapping) and "d_model" in cfg)


def load_hyenadna_config(source: str | os.PathLike | Mapping[str, Any], **overrides: Any) -> HyenaConfig:
    """A :class:`HyenaConfig` from HyenaDNA's ``config.json`` (original or ``-hf`` layout).

    ``source``: the file, its directory, or the parsed dict. Field mapping (§5): original
    ``layer.l_max``/``layer.w``/``layer.lr_pos_emb > 0`` -> ``l_max``/``w``/``train_pos_emb``;
    ``-hf`` ``max_seq_len``/``activation_freq``/``layer_norm_epsilon`` -> ``l_max``/``w``/
    ``layer_norm_eps``. ``overrides`` replace fields (e.g. ``shift=0.0``).
    """
    where = "config"
    if isinstance(source, Mapping):
        cfg = source
    else:
        path = Path(source)
        path = path / CONFIG_FILE if path.is_dir() else path
        where = str(path)
        from dnalm.models.io import read_json

        cfg = read_json(path)
    if not is_hyenadna_config(cfg):
        raise InputError(f"{where}: not a HyenaDNA config (expected 'layer' with 'd_model', or model_type "
                         "'hyenadna')")
    try:
        fields = _hyena_fields_from_hf(cfg) if cfg.get("model_type") == "hyenadna" else \
            _hyena_fields_from_original(cfg)
        fields.update(overrides)
        return HyenaConfig(**fields)
    except KeyError as exc:
        raise InputError(f"{where}: missing field {exc}") from None
    except (TypeError, ValueError, ConfigError) as exc:
        raise InputError(f"{where}: {exc}") from None


def infer_hyena_config(state_dict: Mapping[str, Tensor], **overrides: Any) -> HyenaConfig:
    """A :class:`HyenaConfig` read off the tensor shapes of a (normalised) HyenaDNA state dict.

    Keys as in :mod:`dnalm.models.blocks`. Fields the shapes do not determine (dropouts, shift)
    keep their defaults unless given in ``overrides``.
    """
    emb = state_dict["backbone.embeddings.word_embeddings.weight"]  # (V, D)
    V, d = emb.shape
    layers = {int(k.split(".")[2]) for k in state_dict if k.startswith("backbone.layers.")}
    p = "backbone.layers.0."
    z = state_dict[p + "mixer.filter_fn.pos_emb.z"]  # (1, l_max, emb_dim)
    fields = {
        "d_model": d, "n_layer": len(layers), "vocab_size": 12 if V == 16 else V,
        "pad_vocab_size_multiple": 8 if V % 8 == 0 else 1,
        "d_inner": state_dict[p + "mlp.fc1.weight"].shape[0],
        "l_max": z.shape[1], "emb_dim": z.shape[2],
        "filter_order": state_dict[p + "mixer.filter_fn.implicit_filter.0.weight"].shape[0],
        "short_filter_order": state_dict[p + "mixer.short_filter.weight"].shape[-1],
    }
    fields.update(overrides)
    return HyenaConfig(**fields)




def _normalise_hyenadna_keys(sd: Mapping[str, Tensor], where: Path) -> dict[str, Tensor]:
    """Lightning/-hf/checkpointed keys -> dnalm keys; task heads and metrics are dropped."""
    out: dict[str, Tensor] = {}
    dropped = []
    for key, value in sd.items():
        if not isinstance(value, Tensor):
            continue
        k = key
        for prefix in ("model.", "hyena."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        k = k.replace(".mixer.layer.", ".mixer.").replace(".mlp.layer.", ".mlp.")
        if k.startswith(("backbone.", "lm_head.")):
            out[k] = value
        else:
            dropped.append(key)
    if not any(k.startswith("backbone.layers.") for k in out):
        raise InputError(f"{where}: unknown checkpoint layout (no HyenaDNA 'backbone.layers.*' weights; "
                         f"first keys: {', '.join(list(sd)[:3])})")
    if dropped:
        log.info("%s: ignored %d tensors outside the LM (%s ...)", where, len(dropped), dropped[0])
    return out



def _hyenadna_detect(path: Path, meta: Any) -> bool:
    """HyenaDNA's config.json beside the weights, or no config at all (a bare weight file: by elimination)."""
    return is_hyenadna_config(meta) or meta is None


def load_hyenadna(path: Path, map_location: str | torch.device = "cpu",
                  overrides: Mapping[str, Any] | None = None) -> HyenaLM:
    """A HyenaDNA checkpoint (any layout above; ``path`` a directory or weight file), float32, eval mode."""
    from dnalm.models.io import WEIGHT_NAMES, check_fits, load_state_into, read_config_json, read_weights

    path = Path(path)
    overrides = dict(overrides or {})
    directory = path if path.is_dir() else path.parent
    if path.is_dir():
        file = next((path / n for n in WEIGHT_NAMES if (path / n).is_file()), None)
        if file is None:
            raise InputError(f"{path}: unknown model layout (no {CONFIG_FILE} of dnalm and none of "
                             f"{', '.join(WEIGHT_NAMES)})")
    else:
        file = path
    meta = read_config_json(directory)
    sd = _normalise_hyenadna_keys(read_weights(file), file)
    try:
        if is_hyenadna_config(meta):
            config = load_hyenadna_config(directory / CONFIG_FILE, **overrides)
        else:
            config = infer_hyena_config(sd, **overrides)
    except KeyError as exc:
        raise InputError(f"{file}: cannot infer the model config, missing tensor {exc}") from None
    except (TypeError, ConfigError) as exc:
        raise InputError(f"{file}: {exc}") from None
    check_fits(HyenaLM, config, sd, file)
    model = HyenaLM(config)
    load_state_into(model, sd, file)
    return model.to(map_location).eval()


def _tokenizer(config: HyenaConfig):
    from dnalm.tokenizers import CharTokenizer

    return CharTokenizer()


def _info(config: HyenaConfig, seq_len: int, batch_size: int = 1, dtype: Any = "bf16"):
    from dnalm.models.info import hyena_info

    return hyena_info(config, seq_len, batch_size, dtype)


FAMILY = Family(name="hyena", config_cls=HyenaConfig, model_cls=HyenaLM, presets=PRESETS, objective=CAUSAL,
                lora_targets=("in_proj", "out_proj", "fc1", "fc2"), tokenizer=_tokenizer, context_field="l_max",
                importers=(Importer("hyenadna", _hyenadna_detect, load_hyenadna, fallback=True),), info=_info)
