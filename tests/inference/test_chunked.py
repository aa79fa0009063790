"""Chunked inference equals one unchunked pass: against the plain forward (L <= context) and against
independent references of the model beyond its context (truncated filter, sliding window)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from _inference_helpers import (  # noqa: F401 (fixtures)
    ATTENTION_WINDOW,
    HYENA_L_MAX,
    _perturb,
    saved_models_fixture,
    sliding_window_reference,
    tiny_hyena,
    tiny_hyena_fixture,
    tiny_transformer_fixture,
    truncated_filter_reference,
)

from dnalm.errors import ConfigError
from dnalm.inference import chunked
from dnalm.inference.chunked import (
    MAX_ELEMENTS,
    chunked_forward,
    context_length,
    default_chunk_size,
    iter_chunks,
    max_chunk_tokens,
)
from dnalm.kernels import hyena_block
from dnalm.kernels.hyena_block import fft_size
from dnalm.models.hyena import HyenaConfig, HyenaLM, HyenaOperator
from tolerance import tolerance_for

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
    """A mixer without chunk methods is chunked through its inference state (dnalm.models.mixer.chunker)."""

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
    # the widest activations per token: Hyena's 4 x d_model, the Transformer's q|k|v projection 3 x d_model
    for model, width in ((hyena, 16 * 4), (transformer, 16 * 3)):
        for batch in (1, 64):
            T = max_chunk_tokens(model, batch)
            # every chunk tensor B x width x (T + history) stays below 2^31 elements
            assert batch * T * width < MAX_ELEMENTS
            if model is transformer:  # the keys with the carried window, (H, W - 1 + T, d_h) per row
                assert batch * (ATTENTION_WINDOW - 1 + T) * 16 < MAX_ELEMENTS
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


# ---------------------------------------------------------------------------------------------
# The fused block (dnalm.kernels.hyena_block.hyena_block_chunk) against the reference chunks
# ---------------------------------------------------------------------------------------------


def _with_fast_path(model, fast_path: str):
    """A copy of ``model`` (same weights) whose Hyena blocks run through ``fast_path``."""
    out = copy.deepcopy(model)
    for op in out.mixers:
        op.fast_path = fast_path
    return out


def _hyena_k(K: int, l_max: int, seed: int = 11):
    torch.manual_seed(seed)
    cfg = HyenaConfig(d_model=16, n_layer=2, d_inner=32, l_max=l_max, filter_order=16, short_filter_order=K,
                      embed_dropout=0.0)
    return _perturb(HyenaLM(cfg), seed)


def _forbid_reference_mixer(monkeypatch) -> None:
    """From here on, a chunk that fell back to the reference Hyena mixer fails."""
    def fail(*args, **kwargs):
        raise AssertionError("the reference chunk function ran instead of the fused block")
    monkeypatch.setattr(HyenaOperator, "chunk", fail)


def _assert_outputs_close(got, want, **tol):
    torch.testing.assert_close(got[0], want[0], **tol)
    for a, b in zip(got[1], want[1], strict=True):
        torch.testing.assert_close(a, b, **tol)


def _assert_within(got, want, dtype, n_fft, depth):
    """``got`` equals ``want`` within the tolerance rule of :mod:`tolerance` (float64: exact but for rounding)."""
    tol = tolerance_for(dtype, n_fft, depth, [want[0], *want[1]])
    _assert_outputs_close(got, want, **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("length, chunk", CASES + [(200, 3), (129, 128), (5, 1)])
def test_fused_chunks_equal_reference_chunks_and_unchunked(hyena, monkeypatch, length, chunk, dtype):
    if dtype == torch.float64:  # float64 chunks cost 3x: at most 40 of them, still past two contexts
        length = min(length, max(40 * chunk, 2 * HYENA_L_MAX + 5))
    B = 3 if length % 2 else 2
    ids = _ids(B, length, seed=length + chunk)
    layers = [0, 1, 2, -1]
    reference = _with_fast_path(hyena, "reference").to(dtype)
    fused = _with_fast_path(hyena, "fused").to(dtype)
    want_plain = _plain(truncated_filter_reference(reference, length), ids, layers)
    want_chunks = chunked_forward(reference, ids, chunk, layers)
    _forbid_reference_mixer(monkeypatch)
    got = chunked_forward(fused, ids, chunk, layers)
    assert got[0].dtype == dtype and all(h.dtype == dtype for h in got[1])
    n_fft = fft_size(max(length, HYENA_L_MAX + chunk))  # the longest FFT of any of the three computations
    depth = len(hyena.mixers)
    _assert_within(got, want_chunks, dtype, n_fft, depth)
    _assert_within(got, want_plain, dtype, n_fft, depth)
    if length <= HYENA_L_MAX:  # the unchunked fused forward (hyena_block_forward) too
        _assert_within(got, _plain(fused, ids, layers), dtype, n_fft, depth)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("K, l_max", [(4, 40), (1, 40), (3, 2), (4, 1)])
def test_fused_chunks_other_short_filters_and_tiny_contexts(monkeypatch, K, l_max, dtype):
    """Short filters of 1 and 4 taps (0 and 3 carried rows), and a history shorter than the carried rows."""
    model = _hyena_k(K, l_max).to(dtype)
    length = (2 if dtype == torch.float64 else 3) * l_max + 11  # float64 chunks cost 3x
    ids = _ids(2, length, seed=K)
    layers = [1, -1]
    want = _plain(truncated_filter_reference(_with_fast_path(model, "reference"), length), ids, layers)
    _forbid_reference_mixer(monkeypatch)
    fused = _with_fast_path(model, "fused")
    for chunk in (1, 2, l_max, 2 * l_max + 1):
        n_fft = fft_size(max(length, l_max + chunk))
        _assert_within(chunked_forward(fused, ids, chunk, layers), want, dtype, n_fft, len(model.mixers))


def test_fused_chunks_compute_the_filter_once_per_fft_length(hyena, monkeypatch):
    calls = []
    spectrum = hyena_block._filter_spectrum
    monkeypatch.setattr(hyena_block, "_filter_spectrum", lambda *a: calls.append(a[2]) or spectrum(*a))
    fused = _with_fast_path(hyena, "fused")
    ids = _ids(1, 20 * HYENA_L_MAX + 7, seed=2)
    chunks = list(iter_chunks(fused, ids, HYENA_L_MAX, layers=[-1], logits=False))
    assert len(chunks) == 21
    # per layer: the first chunk (no history), the full ones, the short last one (one length kept at a time)
    n_layer = len(fused.mixers)
    assert len(calls) <= 3 * n_layer
    for layer in range(n_layer):
        lengths = calls[layer::n_layer]
        assert all(a != b for a, b in zip(lengths, lengths[1:])), lengths


def test_fused_chunks_without_the_spectrum_cache_recompute_it_and_agree(hyena, monkeypatch):
    """Where the spectra would not fit on the GPU, every chunk computes its layer's spectrum again: the same
    outputs, one spectrum per chunk and layer."""
    fused = _with_fast_path(hyena, "fused")
    ids = _ids(2, 5 * HYENA_L_MAX + 3, seed=4)
    want = chunked_forward(fused, ids, HYENA_L_MAX, [1, -1])
    calls = []
    spectrum = hyena_block._filter_spectrum
    monkeypatch.setattr(hyena_block, "_filter_spectrum", lambda *a: calls.append(a[2]) or spectrum(*a))
    monkeypatch.setattr(chunked, "cache_spectra", lambda *a: False)
    got = chunked_forward(fused, ids, HYENA_L_MAX, [1, -1])
    assert len(calls) == 6 * len(fused.mixers)
    for a, b in zip([got[0], *got[1]], [want[0], *want[1]], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_spectrum_cache_is_kept_when_the_spectra_fit_in_half_the_gpu(hyena, monkeypatch):
    """By hand: per layer D x (n/2 + 1) complex64 numbers, n = fft_size(l_max - 1 + chunk)."""
    from types import SimpleNamespace

    op = hyena.mixers[0]
    layers = list(range(len(hyena.mixers)))
    chunk = 3 * HYENA_L_MAX
    need = len(layers) * op.d_model * (fft_size(op.l_max - 1 + chunk) // 2 + 1) * 8
    cuda = torch.device("cuda")
    for memory, keep in ((2 * need, True), (2 * need - 1, False)):
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _d, m=memory: SimpleNamespace(total_memory=m))
        assert chunked.cache_spectra(hyena, cuda, chunk, layers) is keep
    assert chunked.cache_spectra(hyena, torch.device("cpu"), chunk, layers)  # host memory: always kept


def test_fused_chunks_under_bf16_autocast_stay_close_to_float32(hyena):
    fused = _with_fast_path(hyena, "fused")
    ids = _ids(2, 3 * HYENA_L_MAX + 5, seed=8)
    want = chunked_forward(fused, ids, 50, [1, -1])
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = chunked_forward(fused, ids, 50, [1, -1])
    except RuntimeError as exc:  # an op without a CPU bf16 kernel
        pytest.skip(f"bf16 autocast on CPU: {exc}")
    assert got[1][0].dtype == torch.float32  # the residual stream stays float32 (logits: bf16, the LM head's)
    for a, b in zip([got[0], *got[1]], [want[0], *want[1]], strict=True):
        err = (a.float() - b).norm() / b.norm()
        assert 1e-5 < err < 2e-2, err  # rounded to bf16 somewhere, but only that
