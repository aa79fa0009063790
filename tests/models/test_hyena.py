"""HyenaLM against the reference HyenaDNA fixture, hand-computed filters and its own step mode."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dnalm.errors import ConfigError
from dnalm.models.blocks import count_parameters
from dnalm.models.hyena import PRESETS, HyenaConfig, HyenaLM, HyenaOperator, fftconv_ref

TOL = {"atol": 1e-5, "rtol": 1e-5}


def _fixture_model(hyena_fixture, **overrides) -> HyenaLM:
    sd = torch.load(hyena_fixture / "state_dict.pt", weights_only=True)
    sd["lm_head.weight"] = sd["backbone.embeddings.word_embeddings.weight"]
    model = HyenaLM(HyenaConfig.preset("tiny-1k", **overrides))
    model.load_state_dict(sd, strict=True)
    return model.eval()


def test_reproduces_reference_logits_and_hidden_states(hyena_fixture):
    model = _fixture_model(hyena_fixture)
    ids = torch.load(hyena_fixture / "input_ids.pt", weights_only=True)
    with torch.no_grad():
        logits, (hidden,) = model.forward_with_hidden(ids, [-1])
    torch.testing.assert_close(logits, torch.load(hyena_fixture / "logits.pt", weights_only=True), **TOL)
    ref_hidden = torch.load(hyena_fixture / "hidden_states.pt", weights_only=True)
    torch.testing.assert_close(hidden, ref_hidden, **TOL)


def test_training_code_shift_zero(hyena_fixture):
    model = _fixture_model(hyena_fixture, shift=0.0)
    ids = torch.load(hyena_fixture / "input_ids.pt", weights_only=True)
    with torch.no_grad():
        logits = model(ids)
    ref = torch.load(hyena_fixture / "logits_trainingcode_shift0.pt", weights_only=True)
    torch.testing.assert_close(logits, ref, **TOL)
    assert not torch.allclose(logits, torch.load(hyena_fixture / "logits.pt", weights_only=True), atol=1e-2)


def test_state_dict_keys_shapes_and_sharing_match_reference(hyena_fixture):
    table = json.loads((hyena_fixture / "state_dict_keys.json").read_text())
    sd = HyenaLM(HyenaConfig.preset("tiny-1k")).state_dict()
    assert list(sd) == [e["key"] for e in table] + ["lm_head.weight"]
    for e in table:
        assert list(sd[e["key"]].shape) == e["shape"], e["key"]
        assert str(sd[e["key"]].dtype) == f"torch.{e['dtype']}"
        if e["shares_storage_with"]:
            assert sd[e["key"]].data_ptr() == sd[e["shares_storage_with"]].data_ptr()
    assert sd["lm_head.weight"].data_ptr() == sd["backbone.embeddings.word_embeddings.weight"].data_ptr()


@pytest.mark.parametrize("name, expected", [
    ("tiny-1k", 436_096), ("tiny-1k-d256", 1_641_088), ("tiny-16k-d128", 436_096),
    ("small-32k", 3_277_568), ("medium-160k", 6_550_528), ("large-1m", 6_550_528)])
def test_preset_parameter_counts(name, expected):
    model = HyenaLM(PRESETS[name], device="meta")
    assert count_parameters(model) == expected


def test_positional_features_and_decay_by_hand():
    cfg = HyenaConfig(d_model=8, n_layer=1, d_inner=16, l_max=10)
    op = HyenaOperator(cfg)
    z, t = op.filter_fn.pos_emb.z[0], op.filter_fn.pos_emb.t[0]
    for n in (0, 3, 9):
        w = 2 * math.pi * n / 10
        expected = [n / 9, math.cos(1e-4 * w), math.cos(w), -math.sin(1e-4 * w), -math.sin(w)]
        assert z[n].tolist() == pytest.approx(expected, abs=1e-6)
        assert t[n, 0].item() == pytest.approx(n / 9, abs=1e-7)
    deltas = op.filter_fn.modulation.deltas.flatten()
    assert deltas[0].item() == pytest.approx(math.log(1e-2) / 1.5, rel=1e-6)
    assert deltas[-1].item() == pytest.approx(math.log(1e-2) / 0.3, rel=1e-6)
    # one Sin module (one freq tensor) in the three activation slots
    mlp = op.filter_fn.implicit_filter
    assert mlp[1] is mlp[3] is mlp[5]
    assert torch.equal(mlp[1].freq, torch.full((1, 64), 10.0))


def test_filter_by_hand():
    cfg = HyenaConfig(d_model=4, n_layer=1, d_inner=8, l_max=12, filter_order=6, shift=0.05)
    f = HyenaOperator(cfg).filter_fn
    with torch.no_grad():
        k = f.filter(7).numpy()  # (D, L)
        z = f.pos_emb.z[0, :7].double().numpy()
        t = f.pos_emb.t[0, :7, 0].double().numpy()
        lin = [m for m in f.implicit_filter if isinstance(m, torch.nn.Linear)]
        freq = f.implicit_filter[1].freq.double().numpy()
        h = z
        for i, m in enumerate(lin):
            h = h @ m.weight.double().numpy().T + (m.bias.double().numpy() if m.bias is not None else 0)
            if i < 3:
                h = np.sin(freq * h)
        decay = np.exp(-t[:, None] * np.abs(f.modulation.deltas.double().numpy()[0]))
        expected = (h * (decay + 0.05)).T
    np.testing.assert_allclose(k, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("L", [37, 64, 1031])  # 37 and 1031 (primes) take an FFT of a larger smooth size
def test_fftconv_matches_direct_convolution(L):
    g = torch.Generator().manual_seed(1)
    u = torch.randn(2, 3, L, generator=g)
    k = torch.randn(3, L, generator=g)
    D = torch.randn(3, generator=g)
    y = fftconv_ref(u, k, D).numpy()
    un, kn, Dn = u.double().numpy(), k.double().numpy(), D.double().numpy()
    for b in range(2):
        for c in range(3):
            expected = np.convolve(un[b, c], kn[c])[:L] + Dn[c] * un[b, c]
            np.testing.assert_allclose(y[b, c], expected, atol=1e-4, rtol=1e-5)


def test_fftconv_low_precision_inputs_are_computed_in_float32():
    g = torch.Generator().manual_seed(2)
    u = torch.randn(1, 4, 64, generator=g).bfloat16()
    k = torch.randn(4, 64, generator=g).bfloat16()
    D = torch.randn(4, generator=g).bfloat16()
    y = fftconv_ref(u, k, D)
    assert y.dtype == torch.bfloat16
    exact = fftconv_ref(u.double(), k.double(), D.double())
    torch.testing.assert_close(y.double(), exact, atol=0.05, rtol=1e-2)


@pytest.fixture(scope="module")
def small_model() -> HyenaLM:
    torch.manual_seed(0)
    return HyenaLM(HyenaConfig(d_model=32, n_layer=2, d_inner=64, filter_order=16, l_max=330)).eval()


@pytest.mark.parametrize("prompt, total", [(1, 30), (7, 36), (300, 312)])
def test_full_forward_equals_prefill_then_steps(small_model, prompt, total):
    g = torch.Generator().manual_seed(prompt)
    ids = torch.randint(0, 12, (2, total), generator=g)
    with torch.no_grad():
        full = small_model(ids)
        state = small_model.allocate_state(2, total)
        out = [small_model(ids[:, :prompt], state)]
        for i in range(prompt, total):
            out.append(small_model(ids[:, i:i + 1], state))
    assert state.offset == total
    torch.testing.assert_close(torch.cat(out, 1), full, **TOL)


def test_chunked_forward_equals_unchunked(small_model):
    ids = torch.randint(0, 12, (3, 100), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = small_model.hidden_states(ids, [1, -1])
        state = small_model.allocate_state(3, 100)
        parts = [small_model.hidden_states(ids[:, a:b], [1, -1], state)
                 for a, b in ((0, 33), (33, 34), (34, 100))]
    for j in range(2):
        torch.testing.assert_close(torch.cat([p[j] for p in parts], 1), full[j], **TOL)


def test_longer_than_l_max_is_a_clear_error(small_model):
    with pytest.raises(ConfigError, match="exceeds the model's l_max 330"):
        small_model(torch.zeros(1, 331, dtype=torch.long))
    with pytest.raises(ConfigError, match="l_max"):
        small_model.allocate_state(1, 400)


def test_bad_config_values():
    with pytest.raises(ConfigError, match="emb_dim"):
        HyenaConfig(emb_dim=4)
    with pytest.raises(ConfigError, match="unknown hyena preset"):
        HyenaConfig.preset("huge")
    with pytest.raises(ConfigError, match="embed_dropout"):
        HyenaConfig(embed_dropout=1.5)


def test_dropout_only_in_training_mode(small_model):
    ids = torch.randint(0, 12, (1, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = small_model(ids)
        small_model.train()
        try:
            b = small_model(ids)
        finally:
            small_model.eval()
    assert not torch.allclose(a, b)
