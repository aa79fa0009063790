"""The sequence-mixer contract: what a block, the inference state and chunked inference ask of a mixer.

A block (:class:`dnalm.models.blocks.Block`, a family's own block) holds one sequence mixer and calls it on
its normalised input; every mixer of :mod:`dnalm.models` offers the methods below, so that neither the
blocks nor :mod:`dnalm.inference` know the concrete mixer classes.

One pass, prefill and decoding (:mod:`dnalm.inference.state`)
    ``forward(u, state=None, offset=0) -> y``: u, y (B, L, D). With a state, u holds the positions
    ``offset .. offset+L-1`` and the call writes what later positions need into ``state``.
    ``allocate_state(batch, max_len, device, dtype) -> state``: a fresh state for ``batch`` sequences of
    up to ``max_len`` tokens (tensors, dataclasses of tensors, lists/dicts of them, or None).
    ``step(u, state, offset) -> y``: the single token u (B, 1, D) at position ``offset``.
    A mixer that cannot decode step by step raises :class:`~dnalm.inference.state.StepNotSupportedError`
    from ``allocate_state`` and ``step``; it never ignores a state it was given.

Chunks of a sequence of any length (:mod:`dnalm.inference.chunked`)
    ``chunk_carry(batch, length, context, device, dtype) -> carry``: what the mixer keeps between the
    chunks of ``batch`` sequences of ``length`` tokens, fresh; ``context`` is the model's trained context
    (its family's ``context_length``, None when unknown).
    ``chunk(u, carry, offset) -> y``: the chunk u (B, T, D) at positions ``offset .. offset+T-1``; updates
    ``carry``. The chunks, one after another, compute exactly the one-pass forward within the trained
    context, and beyond it the mixer's own definition at any length with a bounded carry: a Hyena operator
    the convolution with its filter truncated to ``l_max`` taps (the last ``l_max - 1`` inputs carried),
    attention a sliding window of ``context`` keys and values, a recurrent mixer its inference state.
    Optional size hints (absent: no preference, no bound):
    ``chunk_range(context) -> (preferred, cap)``: the chunk length the mixer works well at (None: any) and
    the longest a default chunk should be (None: no bound);
    ``chunk_limit(elements, context) -> int``: the longest chunk (tokens per row) whose tensors stay below
    ``elements`` elements per row.
    Optional fused block (a fast path computing the whole block on a chunk, whose reference twin is
    ``block.with_mixer(x, lambda h: mixer.chunk(h, carry, offset))``):
    ``fused_chunk_carry(block, device) -> carry | None`` (None: declined), ``fused_chunk(block, x, carry)``
    on the residual stream x (B, T, D), and ``fused_chunk_bytes(chunk) -> int``, the bytes it would keep
    between chunks (a cache it drops when ``carry.cache_spectra`` is False).

A mixer without ``chunk`` is chunked through its own inference state (:func:`chunker`), which is exact
for as many tokens as the state holds.

A block offers ``with_mixer(x, fn)``: the block on the residual stream x (B, L, D) with its mixer's call
replaced by ``fn`` (its ``forward`` is ``with_mixer(x, mixer)``).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor, nn

#: Tokens x width per row of a chunk of moderate size (about 100 MB of activations per row at width 16).
CHUNK_ELEMENTS = 1 << 20


class Mixer(Protocol):
    """A sequence mixer that prefills and decodes (see the module docstring)."""

    def allocate_state(self, batch: int, max_len: int, device: torch.device | None = None,
                       dtype: torch.dtype | None = None) -> Any: ...

    def step(self, x: Tensor, state: Any, offset: int) -> Tensor: ...


class ChunkMixer(Protocol):
    """A sequence mixer that runs chunk by chunk (see the module docstring)."""

    def chunk_carry(self, batch: int, length: int, context: int | None, device: torch.device | None = None,
                    dtype: torch.dtype | None = None) -> Any: ...

    def chunk(self, u: Tensor, carry: Any, offset: int) -> Tensor: ...


class ThroughState:
    """The chunks of a mixer without ``chunk``: one ``forward(u, state, offset)`` per chunk with a state
    allocated for the whole sequence."""

    def __init__(self, mixer: nn.Module):
        self.mixer = mixer

    def chunk_carry(self, batch: int, length: int, context: int | None, device: torch.device | None = None,
                    dtype: torch.dtype | None = None) -> Any:
        return self.mixer.allocate_state(batch, length, device, dtype)

    def chunk(self, u: Tensor, carry: Any, offset: int) -> Tensor:
        return self.mixer(u, state=carry, offset=offset)


def chunker(mixer: nn.Module) -> ChunkMixer:
    """The mixer itself where it has ``chunk``, else :class:`ThroughState` around it."""
    return mixer if hasattr(mixer, "chunk") else ThroughState(mixer)


def chunk_range(mixer: Any, context: int | None) -> tuple[int | None, int | None]:
    """The mixer's ``chunk_range(context)``, or (None, None) where it has none."""
    hint = getattr(mixer, "chunk_range", None)
    return (None, None) if hint is None else hint(context)


def chunk_limit(mixer: Any, elements: int, context: int | None) -> int | None:
    """The mixer's ``chunk_limit(elements, context)``, or None (no bound) where it has none."""
    hint = getattr(mixer, "chunk_limit", None)
    return None if hint is None else hint(elements, context)
