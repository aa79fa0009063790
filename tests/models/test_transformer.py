"""The Transformer baseline: KV-cache decoding, attention against an explicit reference, rotary embeddings."""

from __future__ import annotations

import math

import pytest
import torch

from dnalm.errors import ConfigError
from dnalm.models.transformer import (
    PRESETS,
    CausalSelfAttention,
    KVCache,
    TransformerConfig,
    TransformerLM,
    apply_rope,
    causal_attention_reference,
    rope_cos_sin,
    rope_inv_freq,
)

SMALL = TransformerConfig(d_model=32, n_layer=2, n_head=2, d_inner=64, max_len=512)


@pytest.fixture(scope="module")
def model() -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(SMALL).eval()


def _rope_complex(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """Independent RoPE: pair (x_i, x_{i+d/2}) as the complex number x_i + j x_{i+d/2}, times e^{j m theta_i}."""
    d = x.shape[-1]
    theta = torch.tensor([base ** (-2 * i / d) for i in range(d // 2)], dtype=torch.float64)
    z = torch.complex(x[..., : d // 2].double(), x[..., d // 2:].double())
    z = z * torch.polar(torch.ones(len(positions), d // 2, dtype=torch.float64),
                        positions.double()[:, None] * theta[None, :])
    return torch.cat([z.real, z.imag], dim=-1).float()


@pytest.mark.parametrize("prompt", [1, 7, 300])
def test_full_forward_equals_prefill_plus_steps(model: TransformerLM, prompt: int):
    torch.manual_seed(prompt)
    n_steps = 12
    ids = torch.randint(0, 12, (2, prompt + n_steps))
    with torch.no_grad():
        full = model(ids)
        state = model.allocate_state(2, prompt + n_steps)
        pieces = [model(ids[:, :prompt], state)]
        for t in range(prompt, prompt + n_steps):
            pieces.append(model(ids[:, t:t + 1], state))
    assert state.offset == prompt + n_steps
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=0)


def test_chunked_prefill_equals_full_forward(model: TransformerLM):
    torch.manual_seed(1)
    ids = torch.randint(0, 12, (3, 61))
    with torch.no_grad():
        full = model(ids)
        state = model.allocate_state(3, 64)
        pieces = [model(ids[:, a:b], state) for a, b in [(0, 5), (5, 6), (6, 40), (40, 61)]]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=0)


def test_selected_rows_continue_like_the_full_batch(model: TransformerLM):
    torch.manual_seed(2)
    ids = torch.randint(0, 12, (3, 20))
    with torch.no_grad():
        full = model(ids)
        state = model.allocate_state(3, 20)
        model(ids[:, :15], state)
        kept = state.select(torch.tensor([2, 0]))
        out = torch.cat([model(ids[[2, 0], t:t + 1], kept) for t in range(15, 20)], dim=1)
    torch.testing.assert_close(out, full[[2, 0], 15:], atol=1e-5, rtol=0)


def test_attention_mixer_equals_explicit_softmax_reference():
    torch.manual_seed(3)
    D, H, L, base = 24, 3, 17, 500.0
    attn = CausalSelfAttention(D, H, rope_base=base).eval()
    u = torch.randn(2, L, D)
    d_h = D // H
    qkv = u @ attn.in_proj.weight.T + attn.in_proj.bias  # (B, L, 3D)
    q, k, v = (qkv[..., i * D:(i + 1) * D].reshape(2, L, H, d_h).transpose(1, 2) for i in range(3))
    pos = torch.arange(L)
    q, k = _rope_complex(q, pos, base), _rope_complex(k, pos, base)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d_h)
    scores = scores + torch.triu(torch.full((L, L), float("-inf")), diagonal=1)
    o = torch.softmax(scores, dim=-1) @ v  # (B, H, L, d_h)
    expected = o.transpose(1, 2).reshape(2, L, D) @ attn.out_proj.weight.T + attn.out_proj.bias
    with torch.no_grad():
        torch.testing.assert_close(attn(u), expected, atol=1e-5, rtol=0)
        # the in-module twin agrees with the fast path, also for queries at an offset
        qr, kr, vr = attn._qkv(u, 0)
        torch.testing.assert_close(causal_attention_reference(qr, kr, vr), o, atol=1e-5, rtol=0)
        tail = causal_attention_reference(qr[:, :, 10:], kr, vr, offset=10)
        torch.testing.assert_close(tail, o[:, :, 10:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("block_min", [2, 64])
def test_sliding_window_chunks_equal_an_explicit_band_softmax_in_float64(monkeypatch, block_min: int):
    """Chunks of any sizes (shorter and longer than the window) through ``chunk``: each query attends to the W
    keys up to its own, by hand in float64 (1e-10), with query blocks smaller than the window (block_min 2:
    blocks of W / 4) and larger (64)."""
    import dnalm.models.transformer as tr

    monkeypatch.setattr(tr, "QUERY_BLOCK_MIN", block_min)
    torch.manual_seed(4)
    D, H, L, W = 24, 3, 157, 23
    attn = CausalSelfAttention(D, H, rope_base=500.0, dtype=torch.float64).eval()
    u = torch.randn(2, L, D, dtype=torch.float64)
    with torch.no_grad():
        q, k, v = attn._qkv(u, 0)
        i, j = torch.arange(L)[:, None], torch.arange(L)[None, :]
        scores = (q @ k.transpose(-1, -2) / math.sqrt(D // H)).masked_fill(~((j <= i) & (i - j < W)), float("-inf"))
        expected = attn._out(scores.softmax(-1) @ v)
        carry = attn.chunk_carry(2, L, W)
        cuts = [0, 5, 6, 40, 41, 70, 100, 157]  # chunks of 5, 1, 34, 1, 29, 30, 57 tokens
        got = torch.cat([attn.chunk(u[:, a:b], carry, a) for a, b in zip(cuts, cuts[1:])], dim=1)
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)
    assert carry.k.shape[2] == W - 1 and len(carry.masks) >= 1


def test_rope_matches_complex_rotation_and_preserves_norms():
    torch.manual_seed(4)
    d_h, base = 16, 10000.0
    x = torch.randn(2, 3, 40, d_h)
    positions = torch.arange(1000, 1040)
    cos, sin = rope_cos_sin(positions, rope_inv_freq(d_h, base))
    y = apply_rope(x, cos, sin)
    torch.testing.assert_close(y, _rope_complex(x, positions, base), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5, rtol=1e-6)


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(5)
    d_h = 32
    inv_freq = rope_inv_freq(d_h, 10000.0)
    q, k = torch.randn(1, 1, 1, d_h), torch.randn(1, 1, 1, d_h)

    def score(m: int, n: int) -> torch.Tensor:
        cm, sm = rope_cos_sin(torch.tensor([m]), inv_freq)
        cn, sn = rope_cos_sin(torch.tensor([n]), inv_freq)
        return (apply_rope(q, cm, sm) * apply_rope(k, cn, sn)).sum()

    for m, n, s in [(3, 1, 5), (10, 10, 77), (0, 9, 1234), (50, 7, 100_000)]:
        torch.testing.assert_close(score(m, n), score(m + s, n + s), atol=1e-4, rtol=1e-5)
    # the score is not position-blind: another distance gives another value
    assert not torch.allclose(score(3, 1), score(4, 1), atol=1e-3)
    # closed form: q·R_{m-n}k = sum_i Re(q_i conj(k_i) e^{j (m-n) theta_i}) with complex pairs
    qc = torch.complex(q[0, 0, 0, :16].double(), q[0, 0, 0, 16:].double())
    kc = torch.complex(k[0, 0, 0, :16].double(), k[0, 0, 0, 16:].double())
    expected = (qc.conj() * kc * torch.exp(-1j * 2.0 * inv_freq)).real.sum()
    torch.testing.assert_close(score(3, 1).double(), expected, atol=1e-5, rtol=0)


def test_tiny_preset_parameter_count_by_hand():
    cfg = PRESETS["tiny-1k"]
    model = TransformerLM(cfg)
    d, di, V = cfg.d_model, cfg.d_inner, 16
    per_layer = (d * 3 * d + 3 * d) + (d * d + d) + 4 * d + (d * di + di + di * d + d)
    assert sum(p.numel() for p in model.parameters()) == V * d + 2 * per_layer + 2 * d == 398_848
    assert model.lm_head.weight is model.backbone.embeddings.word_embeddings.weight
    assert model(torch.randint(0, 12, (1, 5))).shape == (1, 5, 16)


def test_training_step_gives_gradients_everywhere():
    torch.manual_seed(6)
    model = TransformerLM(TransformerConfig(d_model=16, n_layer=1, n_head=2, d_inner=32, dropout=0.1)).train()
    ids = torch.randint(0, 12, (2, 9))
    loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_cache_is_batch_first_and_bounded():
    attn = CausalSelfAttention(16, 2)
    cache = attn.allocate_state(3, 10, dtype=torch.float64)
    assert isinstance(cache, KVCache) and cache.k.shape == (3, 2, 10, 8) and cache.v.dtype == torch.float64
    with pytest.raises(ConfigError, match="KV cache holds 10"):
        attn.step(torch.randn(3, 1, 16), cache, offset=10)


@pytest.mark.parametrize(("overrides", "needle"), [
    ({"d_model": 30, "n_head": 4}, "divisible by n_head"),
    ({"d_model": 12, "n_head": 4}, "must be even"),
    ({"dropout": 1.5}, "dropout"),
    ({"n_layer": 0}, "n_layer"),
])
def test_bad_config_raises_config_error(overrides: dict, needle: str):
    with pytest.raises(ConfigError, match=needle):
        TransformerConfig.preset("tiny", **overrides)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ConfigError, match="large-1m"):
        TransformerConfig.preset("huge")
