"""Exact inference at any length: run a causal LM chunk by chunk, carrying each layer's history.

A sequence longer than memory allows, or than the model's context, is cut into chunks of ``T``
tokens. Every layer keeps what later positions need from earlier chunks, so the outputs are
those of one unchunked pass (to float rounding), while memory is bounded by the chunk plus a
fixed history per layer, whatever the sequence length.

The model at any length
-----------------------
Each mixer computes its chunks itself (the chunk part of the mixer contract, :mod:`dnalm.models.mixer`:
``chunk_carry`` and ``chunk``), exactly the one-pass forward within the trained context. Beyond it, a
Hyena operator's implicit filter ``h`` (Poli et al. 2023, eq. 7), which exists for ``l_max`` taps only,
is truncated to ``l_max`` taps (``h[j] = 0`` for ``j >= l_max``)::

    y_t = sum_{j=0}^{min(t, l_max-1)} h[j] z_{t-j} + Dskip z_t

which is the model's plain forward wherever that exists (``L <= l_max``): a chunk's output is the FFT
convolution of ``[last l_max-1 inputs z; chunk]`` with the filter, of which only the chunk's positions
are kept; the 3-tap short convolution needs the last 2 inputs
(:meth:`dnalm.models.hyena.HyenaOperator.chunk`). For causal attention the analogue is a sliding window:
the query at position ``t`` attends to the keys ``t - W + 1 .. t`` with ``W`` the trained context
(``max_len``; the full causal attention when ``L <= W``;
:meth:`dnalm.models.transformer.CausalSelfAttention.chunk`, also StripedHyena's attention). Recurrent
mixers (StripedHyena's gated convolutions) carry their inference state, exact at any length; a mixer
without ``chunk`` runs through its own inference state (:func:`dnalm.models.mixer.chunker`), which
bounds the length by what that state holds.

One loop serves every family: each block runs as ``block.with_mixer(x, lambda h: mixer.chunk(h, carry,
start))``, or, where the mixer offers a fused block (``fused_chunk_carry``/``fused_chunk``), through that.
A Hyena block has both twins: :meth:`~dnalm.models.hyena.HyenaOperator.chunk` inside ``with_mixer`` (the
reference, plain PyTorch) and :func:`dnalm.kernels.hyena_block.hyena_block_chunk`, the fused block of
training (Triton kernels on CUDA, their PyTorch twins elsewhere) with the same history carried. The
mixer's ``fast_path`` picks one as for the unchunked forward (:func:`dnalm.kernels.select_ops`: ``auto``
is fused on CUDA, ``fused`` everywhere, ``reference`` never). Both compute the filter once per sequence
(the fused one once per FFT length), in float32 even under autocast. ``precision='bf16'`` runs each
chunk under bf16 autocast: the matrix products in bf16, the residual stream, LayerNorm statistics and
FFTs in float32. The chunk sizes ask the mixers too (``chunk_range``, ``chunk_limit``).

API
---
``iter_chunks(model, input_ids (B, L), chunk_size=None, layers=(), logits=True, precision='32')``
    yields :class:`ChunkOutput` (``start``, logits (B, T, V), hidden states (B, T, D) of the
    requested layers) for consecutive chunks.
``chunked_forward(model, input_ids, chunk_size=None, layers=(), precision='32')`` -> (logits (B, L, V), hidden)
    the chunks concatenated (for tests and short inputs; holds everything in memory).
``context_length(model)``, ``default_chunk_size(model, batch)``, ``max_chunk_tokens(model, batch)``,
``cache_spectra(model, device, chunk, layers)``.
``with compiled_blocks(model, enabled=True):`` each block's submodules (norms, MLP, mixer) compiled in place
    with ``torch.compile`` (Inductor fuses their elementwise work; the eager modules are the reference, and
    compiled chunks are tested against them); restored on exit.

Layer indices are those of :meth:`dnalm.models.blocks.CausalLM.hidden_states`: 0 = embedding,
``i`` = after block ``i``, ``n_layer + 1`` or ``-1`` = after the final norm. Every chunk
tensor stays below 2^31 elements so that no kernel falls back to (or fails on) 32-bit indexing.
The model must be in eval mode (dropout would make chunks differ). What the loop relies on: the
backbone's ``embed``, ``layers`` and ``final_norm`` (:func:`dnalm.models.blocks.run_blocks`), each block's
``with_mixer`` and ``mixer``, the model's ``lm_head`` and ``_layer_indices``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dnalm.errors import ConfigError
from dnalm.models.blocks import CausalLM, run_blocks
from dnalm.models.mixer import CHUNK_ELEMENTS, chunk_limit, chunk_range, chunker

#: Largest number of elements any tensor of one chunk may have (32-bit indexing limit).
MAX_ELEMENTS = 2**31 - 1
#: Precision settings of :func:`iter_chunks`.
PRECISIONS = ("32", "bf16")
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


def max_chunk_tokens(model: CausalLM, batch: int = 1) -> int:
    """The longest chunk (tokens per row) whose tensors all stay below 2^31 elements.

    Per token and row, the widest activations of a block are the short-convolution input (3D), the MLP
    hidden layer (d_inner) and the logits (V); each mixer bounds its own (``chunk_limit``: a Hyena
    operator's complex FFT over the history and the chunk, attention's scores of the chunk against the
    window).
    """
    backbone = model.backbone
    D = backbone.embeddings.word_embeddings.embedding_dim
    V = backbone.embeddings.word_embeddings.num_embeddings
    d_inner = max((m.out_features for block in backbone.layers for m in block.mlp.modules()
                   if isinstance(m, nn.Linear)), default=D)
    width = max(3 * D, d_inner, V, 1)
    limit = MAX_ELEMENTS // max(batch, 1)
    best = limit // width
    context = context_length(model)
    for mixer in model.mixers:
        most = chunk_limit(mixer, limit, context)
        if most is not None:
            best = min(best, most)
    if best < 1:
        raise ConfigError(f"a batch of {batch} rows is too wide for chunked inference (32-bit index limit); "
                          "use a smaller batch")
    return int(best)


def default_chunk_size(model: CausalLM, batch: int = 1) -> int:
    """A chunk length that keeps memory moderate, capped by :func:`max_chunk_tokens`.

    The longest length a mixer prefers, bounded by the shortest cap of any (``chunk_range``):
    long-convolution models ``max(l_max, 2^20 / d_model)`` tokens (about 100 MB of activations per
    row at d_model 16; a chunk shorter than l_max would spend most of its FFT on the history);
    attention the window (its scores grow with T^2). Without preferences: the context, else
    ``2^20 / d_model``.
    """
    D = model.backbone.embeddings.word_embeddings.embedding_dim
    context = context_length(model)
    preferred, caps = [], []
    for mixer in model.mixers:
        want, cap = chunk_range(mixer, context)
        if want is not None:
            preferred.append(want)
        if cap is not None:
            caps.append(cap)
    size = max(preferred) if preferred else (context or CHUNK_ELEMENTS // D)
    if caps:
        size = min(size, min(caps))
    return max(1, min(size, max_chunk_tokens(model, batch)))


def cache_spectra(model: CausalLM, device: torch.device, chunk: int, layers: Sequence[int]) -> bool:
    """Whether the fused chunks of ``layers`` keep their filter spectra between chunks (see
    :data:`SPECTRUM_CACHE_FRACTION`): always off the GPU; on one, when what their mixers would keep
    (``fused_chunk_bytes``: the spectra of a full chunk with its history, complex64 ``(D, n/2 + 1)`` per
    layer) fits in that fraction of its memory."""
    if device.type != "cuda" or not layers:
        return True
    total = sum(model.mixers[i].fused_chunk_bytes(chunk) for i in layers)
    return total <= SPECTRUM_CACHE_FRACTION * torch.cuda.get_device_properties(device).total_memory


#: Compiled graphs kept per code object while :func:`compiled_blocks` is on: a mixer kind and a chunk length each
#: compile once (three gated-convolution kinds x the full, the warm-up and the last chunk's lengths), where
#: torch's default of 8 would send the rest back to eager.
COMPILE_CACHE_LIMIT = 64


@contextmanager
def compiled_blocks(model: CausalLM, enabled: bool = True) -> Iterator[None]:
    """Inside the ``with`` statement, every child module of every block (norms, MLP, mixer) runs compiled
    (``nn.Module.compile``, static shapes): Inductor fuses the elementwise work of a chunk (the FIRs, gates,
    dtype casts and norms) into few kernels. A mixer whose ``chunk`` calls its own forward with a carried
    state (StripedHyena's gated convolutions) runs compiled; one that computes its chunk otherwise (attention's
    window, Hyena's fused block) stays as it is. Modules the caller compiled already are left alone; the rest
    are restored on exit. Each new chunk length compiles once (seconds on a GPU, tens of seconds on a CPU)."""
    if not enabled:
        yield
        return
    mods = [m for block in model.backbone.layers for m in block.children() if m._compiled_call_impl is None]
    for m in mods:
        m.compile(dynamic=False)
    try:
        with torch._dynamo.config.patch(recompile_limit=COMPILE_CACHE_LIMIT):
            yield
    finally:
        for m in mods:
            m._compiled_call_impl = None


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
    keep = model._layer_indices(layers) if layers else []
    backbone = model.backbone
    p = model.lm_head.weight
    device = p.device
    context = context_length(model)
    mixers = [chunker(block.mixer) for block in backbone.layers]
    carries: list[Any] = []
    fused: set[int] = set()  # the layers that run through their mixer's fused block
    for i, block in enumerate(backbone.layers):
        hook = getattr(block.mixer, "fused_chunk_carry", None)
        carry = hook(block, device) if hook is not None else None
        if carry is None:
            carry = mixers[i].chunk_carry(B, L, context, device, p.dtype)
        else:
            fused.add(i)
        carries.append(carry)
    if fused:
        cache = cache_spectra(model, device, T, sorted(fused))
        for i in fused:
            carries[i].cache_spectra = cache

    def block_fn(start: int):
        def run(i: int, block: nn.Module, x: Tensor) -> Tensor:
            carry = carries[i]
            if i in fused:
                return block.mixer.fused_chunk(block, x, carry)
            return block.with_mixer(x, lambda h: mixers[i].chunk(h, carry, start))
        return run

    for start in range(0, L, T):
        # entered per chunk, so that neither mode stays on in the caller's code between chunks
        with torch.inference_mode(), (torch.autocast(device.type, dtype=torch.bfloat16) if amp else nullcontext()):
            ids = _as_ids(input_ids, start, min(start + T, L), device)
            h, hidden = run_blocks(backbone, ids, keep, block_fn(start))
            out = ChunkOutput(start, model.lm_head(h) if logits else None, hidden)
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
