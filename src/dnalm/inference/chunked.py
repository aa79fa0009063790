"""Exact inference at any length: run a causal LM chunk by chunk, carrying each layer's history.

A sequence longer than memory allows, or than the model's context, is cut into chunks of ``T``
tokens. Every layer keeps what later positions need from earlier chunks, so the outputs are
those of one unchunked pass (to float rounding), while memory is bounded by the chunk plus a
fixed history per layer, whatever the sequence length.

The model at any length
-----------------------
A Hyena operator's implicit filter ``h`` (Poli et al. 2023, eq. 7) exists for ``l_max`` taps
only. Beyond that, dnalm defines the long convolution with the filter truncated to ``l_max``
taps (``h[j] = 0`` for ``j >= l_max``)::

    y_t = sum_{j=0}^{min(t, l_max-1)} h[j] z_{t-j} + Dskip z_t

which is the model's plain forward wherever that exists (``L <= l_max``). A chunk's output is
the FFT convolution of ``[last l_max-1 inputs z; chunk]`` with the filter, of which only the
chunk's positions are kept; the 3-tap short convolution needs the last 2 inputs. For causal
attention the analogue is a sliding window: the query at position ``t`` attends to the keys
``t - W + 1 .. t`` with ``W = max_len`` (the full causal attention when ``L <= max_len``).
Other mixers are run through their own :mod:`dnalm.inference.state` (prefill of one chunk after
another at increasing ``offset``), which bounds the length by what their state holds.

Two twins compute a Hyena block on a chunk: :func:`hyena_chunk` inside :func:`_block_chunk` (the
reference, plain PyTorch) and :func:`dnalm.kernels.hyena_block.hyena_block_chunk`, the fused block
of training (Triton kernels on CUDA, their PyTorch twins elsewhere) with the same history carried.
The mixer's ``fast_path`` picks one as for the unchunked forward (:func:`dnalm.kernels.select_ops`:
``auto`` is fused on CUDA, ``fused`` everywhere, ``reference`` never). Both compute the filter once
per sequence (the fused one once per FFT length), in float32 even under autocast. ``precision='bf16'``
runs each chunk under bf16 autocast: the matrix products in bf16, the residual stream, LayerNorm
statistics and FFTs in float32.

API
---
``iter_chunks(model, input_ids (B, L), chunk_size=None, layers=(), logits=True, precision='32')``
    yields :class:`ChunkOutput` (``start``, logits (B, T, V), hidden states (B, T, D) of the
    requested layers) for consecutive chunks.
``chunked_forward(model, input_ids, chunk_size=None, layers=(), precision='32')`` -> (logits (B, L, V), hidden)
    the chunks concatenated (for tests and short inputs; holds everything in memory).
``context_length(model)``, ``default_chunk_size(model, batch)``, ``max_chunk_tokens(model, batch)``,
``cache_spectra(model, device, chunk, layers)``.

Layer indices are those of :meth:`dnalm.models.blocks.CausalLM.hidden_states`: 0 = embedding,
``i`` = after block ``i``, ``n_layer + 1`` or ``-1`` = after the final LayerNorm. Every chunk
tensor stays below 2^31 elements so that no kernel falls back to (or fails on) 32-bit indexing.
The model must be in eval mode (dropout would make chunks differ).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.fft import next_fast_len
from torch import Tensor, nn

from dnalm.errors import ConfigError
from dnalm.kernels.hyena_block import FusedCarry, fft_size, hyena_block_chunk
from dnalm.kernels.hyena_torch import wide
from dnalm.models.blocks import Block, CausalLM
from dnalm.models.hyena import HyenaOperator, fftconv_ref
from dnalm.models.transformer import CausalSelfAttention

#: Largest number of elements any tensor of one chunk may have (32-bit indexing limit).
MAX_ELEMENTS = 2**31 - 1
#: Precision settings of :func:`iter_chunks`.
PRECISIONS = ("32", "bf16")
#: Default chunk size of long-convolution models: tokens x d_model per row (at least l_max tokens).
HYENA_CHUNK_ELEMENTS = 1 << 20
#: The fused chunks keep every layer's filter spectrum (computed once per FFT length) when all of them together
#: take at most this fraction of the GPU's memory, and compute it again for every chunk otherwise. HyenaDNA
#: large-1m at its default chunk: 8 x 4.3 GB, kept on an 80 GB card (61.7 GiB peak for 100 Mb), recomputed on
#: a 40 GB one.
SPECTRUM_CACHE_FRACTION = 0.5


@dataclass
class ChunkOutput:
    """The outputs of positions ``start .. start+T-1``.

    logits: (B, T, V) or None; hidden: one (B, T, D) tensor per requested layer, in order.
    """

    start: int
    logits: Tensor | None
    hidden: list[Tensor] = field(default_factory=list)


def context_length(model: nn.Module) -> int | None:
    """The model's trained context (its family's ``context_field``: Hyena ``l_max``, Transformer ``max_len``,
    StripedHyena ``max_seqlen``; None when unknown)."""
    from dnalm.models.families import family_of

    config = getattr(model, "config", None)
    try:
        return family_of(model).context_length(config)
    except (ConfigError, AttributeError):
        value = getattr(config, "l_max", None) or getattr(config, "max_len", None)
        return None if value is None else int(value)


def _runs_through_state(model: nn.Module) -> bool:
    """Whether the model's blocks are not the pre-LN :class:`Block` of the Hyena/Transformer shell: such a
    family (StripedHyena 2: recurrent long filters, FIR caches, a full KV cache) is chunked through its own
    inference state, one ``forward_with_hidden(chunk, state=...)`` per chunk, which its mixers make exact."""
    return not all(isinstance(b, Block) for b in model.backbone.layers)


def max_chunk_tokens(model: CausalLM, batch: int = 1) -> int:
    """The longest chunk (tokens per row) whose tensors all stay below 2^31 elements.

    Per token and row, the widest activations are the short-convolution input (3D), the MLP
    hidden layer (d_inner), the logits (V), the long convolution's complex FFT of size 2N over
    D channels (4D reals per position of N = history + T; the fused block's FFT buffers (B, D, n) have
    n ~ 2N, half of that), and for attention the scores of one
    query against ``W`` cached keys plus the chunk (n_head * (W + T)).
    """
    backbone = model.backbone
    D = backbone.embeddings.word_embeddings.embedding_dim
    V = backbone.embeddings.word_embeddings.num_embeddings
    d_inner = max((m.out_features for block in backbone.layers for m in block.mlp.modules()
                   if isinstance(m, nn.Linear)), default=D)
    width = max(3 * D, d_inner, V, 1)
    limit = MAX_ELEMENTS // max(batch, 1)
    best = limit // width
    for mixer in model.mixers:
        if isinstance(mixer, HyenaOperator):
            best = min(best, limit // (4 * D) - mixer.l_max)
        elif isinstance(mixer, CausalSelfAttention):
            W = _window(model)
            # scores (B, H, T, W-1+T) < limit: solve T^2 + (W-1) T < limit / H
            h = mixer.n_head
            disc = (W - 1) ** 2 + 4 * limit / h
            best = min(best, int((-(W - 1) + disc**0.5) / 2))
    if best < 1:
        raise ConfigError(f"a batch of {batch} rows is too wide for chunked inference (32-bit index limit); "
                          "use a smaller batch")
    return int(best)


def default_chunk_size(model: CausalLM, batch: int = 1) -> int:
    """A chunk length that keeps memory moderate, capped by :func:`max_chunk_tokens`.

    Long-convolution models: ``max(l_max, 2^20 / d_model)`` tokens (about 100 MB of activations per
    row at d_model 16; a chunk shorter than l_max would spend most of its FFT on the history);
    attention: ``max_len`` (its scores grow with T^2).
    """
    D = model.backbone.embeddings.word_embeddings.embedding_dim
    size = 0
    for mixer in model.mixers:
        if isinstance(mixer, HyenaOperator):
            size = max(size, mixer.l_max, HYENA_CHUNK_ELEMENTS // D)
        elif isinstance(mixer, CausalSelfAttention):
            size = max(size, _window(model))
    if size == 0:
        size = context_length(model) or HYENA_CHUNK_ELEMENTS // D
    if any(isinstance(m, CausalSelfAttention) for m in model.mixers):
        size = min(size, _window(model))
    return max(1, min(size, max_chunk_tokens(model, batch)))


def cache_spectra(model: CausalLM, device: torch.device, chunk: int, layers: Sequence[int]) -> bool:
    """Whether the fused chunks of ``layers`` keep their filter spectra between chunks (see
    :data:`SPECTRUM_CACHE_FRACTION`): always off the GPU; on one, when the spectra of a full chunk with its
    history (complex64, ``(D, n/2 + 1)`` per layer) fit in that fraction of its memory."""
    if device.type != "cuda" or not layers:
        return True
    total = 0
    for i in layers:
        op = model.mixers[i]
        n = fft_size(max(op.l_max - 1, op.short_filter.kernel_size[0] - 1) + chunk)
        total += op.d_model * (n // 2 + 1) * 8
    return total <= SPECTRUM_CACHE_FRACTION * torch.cuda.get_device_properties(device).total_memory


def _window(model: nn.Module) -> int:
    W = context_length(model)
    if W is None:
        raise ConfigError(f"{type(model).__name__} has no max_len: the attention window is unknown")
    return W


# ---------------------------------------------------------------------------------------------
# Per-mixer chunk functions
# ---------------------------------------------------------------------------------------------


@dataclass
class HyenaCarry:
    """What the next chunk of one Hyena operator needs.

    conv: (B, 3D, K-1) last inputs of the short convolution (empty before the first chunk);
    z: (B, D, H) last ``H <= l_max - 1`` inputs ``v * x1`` of the long convolution;
    k: (D, l_max) the filter, computed once.
    """

    conv: Tensor | None = None
    z: Tensor | None = None
    k: Tensor | None = None


def hyena_chunk(op: HyenaOperator, u: Tensor, carry: HyenaCarry) -> Tensor:
    """One chunk u (B, T, D) of :class:`HyenaOperator` -> (B, T, D), updating ``carry``.

    The short convolution runs over ``[carry.conv; in_proj u]``, the long convolution over
    ``[carry.z; z]`` with the filter truncated to ``l_max`` taps and zero-padded to the window
    (:func:`dnalm.models.hyena.fftconv_ref`), keeping the last T outputs.
    """
    B, T, _ = u.shape
    D = op.d_model
    xz = op.in_proj(u).transpose(1, 2)  # (B, 3D, T)
    K = op.short_filter.kernel_size[0]
    if carry.conv is None:
        carry.conv = xz.new_zeros(B, 3 * D, K - 1)
    window = torch.cat([carry.conv.to(xz.dtype), xz], dim=-1)  # (B, 3D, K-1+T)
    carry.conv = window[..., window.shape[-1] - (K - 1):].clone()
    xz = F.conv1d(window, op.short_filter.weight, op.short_filter.bias, groups=3 * D)  # (B, 3D, T)
    x0, x1, v = xz.split(D, dim=1)
    z = op.dropout(v * x1)  # (B, D, T)
    if carry.k is None:
        with torch.autocast(u.device.type, enabled=False):  # once per sequence: in float32 even under autocast
            carry.k = op.filter_fn.filter(op.l_max)  # (D, l_max)
    zz = z if carry.z is None else torch.cat([carry.z.to(z.dtype), z], dim=-1)  # (B, D, H+T)
    H, N = zz.shape[-1] - T, zz.shape[-1]
    # zeros after the window change none of its causal outputs; they give the FFT a length with small
    # prime factors (a length like 2 * 69631 would fall back to a slow, memory-hungry algorithm)
    M = next_fast_len(N)
    k = carry.k[:, :M]
    y = fftconv_ref(F.pad(zz, (0, M - N)), F.pad(k, (0, M - k.shape[-1])), op.filter_fn.bias)[..., H:N]  # (B, D, T)
    keep = op.l_max - 1
    carry.z = zz[..., max(N - keep, 0):].clone() if keep > 0 else zz[..., :0]
    return op.out_proj((y * x0).transpose(1, 2))


@dataclass
class AttentionCarry:
    """Rotated keys and values of the last ``W - 1`` positions: k, v (B, H, <=W-1, d_h)."""

    k: Tensor | None = None
    v: Tensor | None = None


def attention_chunk(attn: CausalSelfAttention, u: Tensor, carry: AttentionCarry, offset: int,
                    window: int) -> Tensor:
    """One chunk u (B, T, D) at positions ``offset..`` -> (B, T, D), sliding-window causal attention.

    Query ``offset + i`` attends to keys ``offset + i - window + 1 .. offset + i`` (the cached
    ``carry`` keys and the chunk's own); rotary embeddings use absolute positions.
    """
    q, k, v = attn._qkv(u, offset)  # (B, H, T, d_h)
    if carry.k is not None:
        k = torch.cat([carry.k.to(k.dtype), k], dim=2)
        v = torch.cat([carry.v.to(v.dtype), v], dim=2)
    T, S = q.shape[2], k.shape[2]
    dist = torch.arange(T, device=q.device)[:, None] + (S - T) - torch.arange(S, device=q.device)[None, :]
    mask = (dist >= 0) & (dist < window)  # (T, S)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    keep = max(window - 1, 0)
    carry.k, carry.v = k[:, :, S - min(S, keep):].clone(), v[:, :, S - min(S, keep):].clone()
    return attn._out(o)


@dataclass
class StateCarry:
    """A mixer with neither form above runs through its own inference state (allocated for L)."""

    state: Any = None


def _block_chunk(block: Block, x: Tensor, mixer_fn: Callable[[Tensor], Tensor]) -> Tensor:
    """One pre-LN block on a chunk of the residual stream x (B, T, D) with the mixer replaced by ``mixer_fn``."""
    x = block._residual(x)
    x = x + block.dropout(mixer_fn(block._norm(block.norm1, x)))
    return x + block.dropout(block.mlp(block._norm(block.norm2, x)))


def _as_ids(input_ids: Tensor | np.ndarray, start: int, end: int, device: torch.device) -> Tensor:
    piece = input_ids[:, start:end]
    if isinstance(piece, np.ndarray):
        piece = torch.from_numpy(np.ascontiguousarray(piece))
    return piece.to(device=device, dtype=torch.long)


def check_precision(precision: str | int) -> str:
    """``'32'`` or ``'bf16'`` from a precision setting (see :func:`iter_chunks`)."""
    text = str(precision).strip().lower()
    if text not in PRECISIONS:
        raise ConfigError(f"precision={precision!r} must be one of {', '.join(PRECISIONS)}")
    return text


def iter_chunks(model: CausalLM, input_ids: Tensor | np.ndarray, chunk_size: int | None = None,
                layers: Sequence[int] = (), logits: bool = True, precision: str | int = "32"
                ) -> Iterator[ChunkOutput]:
    """Run ``model`` over input_ids (B, L) in chunks of ``chunk_size`` tokens; yield each chunk's outputs.

    ``input_ids`` may be a tensor or a numpy array of any integer type (converted one chunk at a
    time, so a whole chromosome can stay uint8). ``layers``: hidden-state indices to return
    (see the module docstring); ``logits=False`` skips the LM head. Outputs equal one unchunked
    pass of the model as defined in the module docstring. ``precision``: ``'32'`` (the model's
    dtype) or ``'bf16'``: each chunk runs under ``torch.autocast(bfloat16)`` (matrix products in
    bf16; the residual stream, the LayerNorm statistics and the FFTs stay float32, as in training).
    """
    amp = check_precision(precision) == "bf16"
    if input_ids.ndim != 2:
        raise ConfigError(f"input_ids must be (B, L), got shape {tuple(input_ids.shape)}")
    B, L = int(input_ids.shape[0]), int(input_ids.shape[1])
    limit = max_chunk_tokens(model, B)
    T = default_chunk_size(model, B) if chunk_size is None else int(chunk_size)
    if T < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
    if T > limit:
        raise ConfigError(f"chunk_size {T} with a batch of {B} exceeds the 32-bit index limit "
                          f"(at most {limit} tokens per chunk)")
    if _runs_through_state(model):
        yield from _state_chunks(model, input_ids, T, list(layers), logits, amp)
        return
    keep = model._layer_indices(layers) if layers else []
    backbone = model.backbone
    n = len(backbone.layers)
    device = model.lm_head.weight.device
    fp32 = backbone.residual_in_fp32 or backbone.embeddings.word_embeddings.weight.dtype == torch.float32
    carries: list[Any] = []
    fused: list[Any] = []  # the fused block's ops per layer (None: the reference path)
    for block in backbone.layers:
        mixer = block.mixer
        fused.append(mixer.fused_ops(block, device) if fp32 and isinstance(mixer, HyenaOperator) else None)
    cache = cache_spectra(model, device, T, [i for i, ops in enumerate(fused) if ops is not None])
    for block, ops in zip(backbone.layers, fused):
        mixer = block.mixer
        if ops is not None:
            carries.append(FusedCarry(cache_spectra=cache))
        elif isinstance(mixer, HyenaOperator):
            carries.append(HyenaCarry())
        elif isinstance(mixer, CausalSelfAttention):
            carries.append(AttentionCarry())
        else:
            carries.append(StateCarry())
    window = _window(model) if any(isinstance(c, AttentionCarry) for c in carries) else 0

    def mixer_fn(i: int, start: int) -> Callable[[Tensor], Tensor]:
        mixer, carry = model.mixers[i], carries[i]
        if isinstance(carry, HyenaCarry):
            return lambda h: hyena_chunk(mixer, h, carry)
        if isinstance(carry, AttentionCarry):
            return lambda h: attention_chunk(mixer, h, carry, start, window)

        def run(h: Tensor) -> Tensor:
            if carry.state is None:
                carry.state = mixer.allocate_state(B, L, h.device, h.dtype)
            return mixer(h, state=carry.state, offset=start)
        return run

    for start in range(0, L, T):
        # entered per chunk, so that neither mode stays on in the caller's code between chunks
        with torch.inference_mode(), (torch.autocast(device.type, dtype=torch.bfloat16) if amp else nullcontext()):
            ids = _as_ids(input_ids, start, min(start + T, L), device)
            x = backbone.drop_emb(backbone.embeddings(ids))
            if backbone.residual_in_fp32:
                x = wide(x)
            kept: dict[int, Tensor] = {0: x} if 0 in keep else {}
            for i, block in enumerate(backbone.layers):
                if fused[i] is not None:
                    x = hyena_block_chunk(block, x, carries[i], fused[i])
                else:
                    x = _block_chunk(block, x, mixer_fn(i, start))
                if i + 1 in keep:
                    kept[i + 1] = x
            h = backbone.ln_f(x.to(backbone.ln_f.weight.dtype))
            if n + 1 in keep:
                kept[n + 1] = h
            out = ChunkOutput(start, model.lm_head(h) if logits else None, [kept[i] for i in keep])
        yield out


def _state_chunks(model: CausalLM, input_ids: Tensor | np.ndarray, T: int, layers: list[int], logits: bool,
                  amp: bool) -> Iterator[ChunkOutput]:
    """Chunks through the mixers' own states (see :func:`_runs_through_state`): each convolution carries its
    inference state (FIR histories, the long filters' recurrent state: exact at any length), each attention
    layer the keys and values of its last ``W - 1`` positions (:func:`attention_chunk`: a sliding window of
    the trained context ``W``, so that memory stays flat at any length; up to ``W`` tokens it is one pass)."""
    B, L = int(input_ids.shape[0]), int(input_ids.shape[1])
    backbone = model.backbone
    p = model.lm_head.weight
    n = len(backbone.layers)
    indices = model._layer_indices(layers) if layers else []
    keep = set(indices)
    carries: list[Any] = [AttentionCarry() if isinstance(b.mixer, CausalSelfAttention)
                          else b.mixer.allocate_state(B, T, p.device, p.dtype) for b in backbone.layers]
    window = _window(model) if any(isinstance(c, AttentionCarry) for c in carries) else 0

    def mixer_fn(block: nn.Module, carry: Any, start: int) -> Callable[[Tensor], Tensor]:
        if isinstance(carry, AttentionCarry):
            return lambda h: attention_chunk(block.mixer, h, carry, start, window)
        return lambda h: block.mixer(h, state=carry, offset=start)

    for start in range(0, L, T):
        with torch.inference_mode(), (torch.autocast(p.device.type, dtype=torch.bfloat16) if amp else nullcontext()):
            ids = _as_ids(input_ids, start, min(start + T, L), p.device)
            x = wide(backbone.embeddings(ids))
            kept: dict[int, Tensor] = {0: x} if 0 in keep else {}
            for i, (block, carry) in enumerate(zip(backbone.layers, carries)):
                x = block.with_mixer(x, mixer_fn(block, carry, start))
                if i + 1 in keep:
                    kept[i + 1] = x
            h = backbone.ln_f(x)
            if n + 1 in keep:
                kept[n + 1] = h
            out = ChunkOutput(start, model.lm_head(h) if logits else None, [kept[i] for i in indices])
        yield out


def chunked_forward(model: CausalLM, input_ids: Tensor | np.ndarray, chunk_size: int | None = None,
                    layers: Sequence[int] = (), precision: str | int = "32") -> tuple[Tensor, list[Tensor]]:
    """All chunks of :func:`iter_chunks` concatenated: logits (B, L, V) and hidden states (B, L, D)."""
    logits, hidden = [], []
    for out in iter_chunks(model, input_ids, chunk_size, layers, precision=precision):
        logits.append(out.logits)
        hidden.append(out.hidden)
    cat_hidden = [torch.cat([h[j] for h in hidden], dim=1) for j in range(len(hidden[0]))] if hidden else []
    return torch.cat(logits, dim=1), cat_hidden
