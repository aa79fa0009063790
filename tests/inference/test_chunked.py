"""Chunked inference equals one unchunked pass: against the plain forward (L <= context) and against
independent references of the model beyond its context (truncated filter, sliding window)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _inference_helpers import (  # noqa: F401 (fixtures)
    ATTENTION_WINDOW,
    HYENA_L_MAX,
    saved_models_fixture,
    sliding_window_reference,
    tiny_hyena,
    tiny_hyena_fixture,
    tiny_transformer_fixture,
    truncated_filter_reference,
)

from dnalm.errors import ConfigError
from dnalm.inference.chunked import (
    MAX_ELEMENTS,
    chunked_forward,
    context_length,
    default_chunk_size,
    iter_chunks,
    max_chunk_tokens,
)

TOL = {"atol": 1e-5, "rtol": 1e-5}
rng = np.random.default_rng(7)
# (length, chunk size) pairs drawn once: lengths below, at and far above the context, chunks from 1 token up
CASES = [(int(L), int(T)) for L, T in zip(rng.integers(1, 300, 8), rng.integers(1, 90, 8), strict=True)]
CASES += [(HYENA_L_MAX, 1), (HYENA_L_MAX + 1, HYENA_L_MAX), (3 * HYENA_L_MAX + 5, HYENA_L_MAX - 1)]


def _ids(B: int, L: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(7, 12, (B, L), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _plain(model, ids, layers):
    logits, hidden = model.forward_with_hidden(ids, layers)
    return logits, hidden


@pytest.mark.parametrize("length, chunk", CASES)
def test_hyena_chunked_equals_truncated_filter_reference(hyena, length, chunk):
    ids = _ids(2, length, seed=length)
    layers = [0, 1, 2, -1]
    ref_model = truncated_filter_reference(hyena, length)
    ref_logits, ref_hidden = _plain(ref_model, ids, layers)
    logits, hidden = chunked_forward(hyena, ids, chunk, layers)
    torch.testing.assert_close(logits, ref_logits, **TOL)
    for a, b in zip(hidden, ref_hidden, strict=True):
        torch.testing.assert_close(a, b, **TOL)
    if length <= HYENA_L_MAX:  # the definition is the model's own forward where that exists
        plain_logits, _ = _plain(hyena, ids, layers)
        torch.testing.assert_close(logits, plain_logits, **TOL)


def test_reference_is_sensitive_to_the_history(hyena):
    """Chunks that forgot the previous chunk would differ far beyond the tolerance."""
    L = 3 * HYENA_L_MAX
    ids = _ids(1, L, seed=3)
    full, _ = chunked_forward(hyena, ids, L)
    pieces = torch.cat([chunked_forward(hyena, ids[:, s: s + HYENA_L_MAX], HYENA_L_MAX)[0]
                        for s in range(0, L, HYENA_L_MAX)], dim=1)
    assert (full[:, HYENA_L_MAX:] - pieces[:, HYENA_L_MAX:]).abs().max() > 1e-2
    # ... and the filter really is truncated: a tap at distance >= l_max has no effect
    a = ids.clone()
    a[0, 0] = 7 if ids[0, 0] != 7 else 8
    out_a, _ = chunked_forward(hyena, a, 17)
    reach = 2 * (HYENA_L_MAX - 1) + 2 * 2  # two layers of l_max-1 filter taps and 2 short-conv taps
    torch.testing.assert_close(out_a[:, reach + 1:], full[:, reach + 1:], **TOL)
    assert (out_a[:, 1:reach] - full[:, 1:reach]).abs().max() > 1e-3


@pytest.mark.parametrize("length, chunk", CASES)
def test_transformer_chunked_equals_sliding_window_reference(transformer, length, chunk):
    ids = _ids(2, length, seed=length + 1)
    layers = [1, -1]
    ref_logits, ref_hidden = _plain(sliding_window_reference(transformer, ATTENTION_WINDOW), ids, layers)
    logits, hidden = chunked_forward(transformer, ids, chunk, layers)
    torch.testing.assert_close(logits, ref_logits, **TOL)
    for a, b in zip(hidden, ref_hidden, strict=True):
        torch.testing.assert_close(a, b, **TOL)
    if length <= ATTENTION_WINDOW:
        torch.testing.assert_close(logits, _plain(transformer, ids, layers)[0], **TOL)


def test_numpy_uint8_input_and_chunk_starts(hyena):
    ids = _ids(1, 150, seed=5)
    starts, parts = [], []
    for out in iter_chunks(hyena, ids.numpy().astype(np.uint8), 40, layers=[2], logits=False):
        assert out.logits is None
        starts.append(out.start)
        parts.append(out.hidden[0])
    assert starts == [0, 40, 80, 120]
    ref = truncated_filter_reference(hyena, 150).hidden_states(ids, [2])[0]
    torch.testing.assert_close(torch.cat(parts, dim=1), ref.detach(), **TOL)


def test_state_mixers_run_through_their_own_state(hyena):
    """A mixer that is neither Hyena nor attention is chunked through its inference state."""

    class Wrapped(torch.nn.Module):
        def __init__(self, op):
            super().__init__()
            self.op = op

        def forward(self, u, state=None, offset=0):
            return self.op(u, state=state, offset=offset)

        def allocate_state(self, batch, max_len, device=None, dtype=None):
            return self.op.allocate_state(batch, max_len, device, dtype)

    model = tiny_hyena(seed=4)
    ids = _ids(1, HYENA_L_MAX, seed=9)
    with torch.no_grad():
        ref = model(ids)
    for block in model.backbone.layers:
        block.mixer = Wrapped(block.mixer)
    logits, _ = chunked_forward(model, ids, 13)
    torch.testing.assert_close(logits, ref, **TOL)


def test_chunk_limits_follow_the_32_bit_index_bound(hyena, transformer):
    assert context_length(hyena) == HYENA_L_MAX and context_length(transformer) == ATTENTION_WINDOW
    for model in (hyena, transformer):
        for batch in (1, 64):
            T = max_chunk_tokens(model, batch)
            # every chunk tensor B x width x (T + history) stays below 2^31 elements
            assert batch * T * 16 * 4 < MAX_ELEMENTS
            assert 1 <= default_chunk_size(model, batch) <= T
    assert default_chunk_size(hyena) == (1 << 20) // 16
    assert default_chunk_size(transformer) == ATTENTION_WINDOW
    with pytest.raises(ConfigError, match="32-bit index limit"):
        next(iter_chunks(hyena, _ids(1, 10), chunk_size=max_chunk_tokens(hyena) + 1))
    with pytest.raises(ConfigError, match="chunk_size must be >= 1"):
        next(iter_chunks(hyena, _ids(1, 10), chunk_size=0))


@pytest.mark.parametrize("chunk", [7, 97, 500, 1001])
def test_chunks_reproduce_the_hyenadna_reference_fixture(hyena_fixture, chunk):
    """The released tiny-1k weights: chunked logits and final hidden states equal the reference code's outputs."""
    from dnalm.models.io import load_pretrained

    model = load_pretrained(hyena_fixture / "state_dict.pt")
    ids = torch.load(hyena_fixture / "input_ids.pt", weights_only=True)
    logits, (hidden,) = chunked_forward(model, ids, chunk, [-1])
    torch.testing.assert_close(logits, torch.load(hyena_fixture / "logits.pt", weights_only=True), **TOL)
    torch.testing.assert_close(hidden, torch.load(hyena_fixture / "hidden_states.pt", weights_only=True), **TOL)
