"""The shared LM shell against hand-written formulas, with toy mixers."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from dnalm.errors import ConfigError
from dnalm.inference.state import StepNotSupportedError
from dnalm.models.blocks import MLP, Block, CausalLM, count_parameters, pad_vocab


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _np(t: Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def test_pad_vocab():
    assert pad_vocab(12, 8) == 16 and pad_vocab(16, 8) == 16 and pad_vocab(5, 1) == 5


def test_mlp_by_hand():
    torch.manual_seed(0)
    mlp = MLP(6, 10)
    x = torch.randn(2, 3, 6)
    fc1, fc2 = mlp.fc1, mlp.fc2
    expected = _gelu_tanh(_np(x) @ _np(fc1.weight).T + _np(fc1.bias)) @ _np(fc2.weight).T + _np(fc2.bias)
    np.testing.assert_allclose(_np(mlp(x)), expected, atol=1e-5)


def test_block_is_pre_ln_residual():
    torch.manual_seed(1)
    block = Block(nn.Linear(4, 4), MLP(4, 8), nn.LayerNorm(4), nn.LayerNorm(4))
    for norm in (block.norm1, block.norm2):
        nn.init.normal_(norm.weight)
        nn.init.normal_(norm.bias)
    x = torch.randn(2, 5, 4)
    xn = _np(x)
    mix, mlp = block.mixer, block.mlp
    f = _layer_norm(xn, _np(block.norm1.weight), _np(block.norm1.bias))
    h = xn + f @ _np(mix.weight).T + _np(mix.bias)
    g = _layer_norm(h, _np(block.norm2.weight), _np(block.norm2.bias))
    expected = h + _gelu_tanh(g @ _np(mlp.fc1.weight).T + _np(mlp.fc1.bias)) @ _np(mlp.fc2.weight).T \
        + _np(mlp.fc2.bias)
    np.testing.assert_allclose(_np(block(x)), expected, atol=1e-5)
    assert [n for n, _ in block.named_children()][:4] == ["mixer", "norm1", "mlp", "norm2"]


@dataclass
class _SumState:
    total: Tensor  # (B, D) sum of the inputs so far


class CumMean(nn.Module):
    """Toy causal mixer y_t = W mean_{s<=t} x_s with a recurrent form (running sum)."""

    def __init__(self, d: int):
        super().__init__()
        self.proj = nn.Linear(d, d)

    def forward(self, x: Tensor, state: _SumState | None = None, offset: int = 0) -> Tensor:
        c = x.cumsum(1)
        if state is not None:
            c = c + state.total[:, None]
            state.total = c[:, -1].clone()
        n = offset + torch.arange(1, x.shape[1] + 1, dtype=x.dtype)[None, :, None]
        return self.proj(c / n)

    def step(self, x: Tensor, state: _SumState, offset: int) -> Tensor:
        state.total = state.total + x[:, 0]
        return self.proj(state.total[:, None] / (offset + 1))

    def allocate_state(self, batch, max_len, device=None, dtype=None) -> _SumState:
        return _SumState(torch.zeros(batch, self.proj.in_features, device=device, dtype=dtype))


def _toy(mixer=CumMean, n_layer=2, d=8, **kw) -> CausalLM:
    torch.manual_seed(0)
    model = CausalLM(d, n_layer, 16, 12, lambda i: mixer(d), **kw)
    model.init_weights()
    return model.eval()


def test_shell_structure_tied_head_and_logits():
    model = _toy()
    E = model.backbone.embeddings.word_embeddings.weight
    assert E.shape == (16, 8) and model.lm_head.weight is E
    assert count_parameters(model) == sum(p.numel() for n, p in model.named_parameters())
    assert count_parameters(model) == 16 * 8 + 2 * (8 * 8 + 8 + 2 * 16 + 8 * 16 + 16 + 16 * 8 + 8) + 16
    keys = list(model.state_dict())
    assert keys[0] == "backbone.embeddings.word_embeddings.weight" and keys[-1] == "lm_head.weight"
    assert "backbone.layers.1.mlp.fc2.bias" in keys and "backbone.ln_f.weight" in keys
    ids = torch.randint(0, 12, (2, 9))
    with torch.no_grad():
        logits = model(ids)
        (h,) = model.hidden_states(ids, [-1])
    assert logits.shape == (2, 9, 16)
    torch.testing.assert_close(logits, h @ E.T)


def test_hidden_state_indices():
    model = _toy(n_layer=3)
    ids = torch.randint(0, 12, (2, 7))
    with torch.no_grad():
        hs = model.hidden_states(ids)
        logits, picked = model.forward_with_hidden(ids, [0, 2, -1])
        x = hs[0]
        for i, block in enumerate(model.backbone.layers):
            x = block(x)
            torch.testing.assert_close(hs[i + 1], x)
    assert len(hs) == 5
    torch.testing.assert_close(hs[0], model.backbone.embeddings.word_embeddings.weight[ids])
    torch.testing.assert_close(hs[4], model.backbone.ln_f(hs[3]))
    for a, b in zip(picked, [hs[0], hs[2], hs[4]], strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(logits, model(ids))
    with pytest.raises(ConfigError, match="layer 5 out of range"):
        model.hidden_states(ids, [5])


def test_state_prefill_steps_and_chunks_match_full_forward():
    model = _toy()
    ids = torch.randint(0, 12, (3, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(ids)
        state = model.allocate_state(3, 12)
        out = [model(ids[:, :4], state)] + [model(ids[:, i:i + 1], state) for i in range(4, 8)]
        out.append(model(ids[:, 8:], state))
    assert state.offset == 12
    torch.testing.assert_close(torch.cat(out, 1), full)
    with pytest.raises(ConfigError, match="full"):
        model(ids[:, :1], state)
    with pytest.raises(ConfigError, match="batch of 2"):
        model(ids[:2, :1], model.allocate_state(3, 12))


def test_mixer_without_recurrent_form_refuses_state():
    class NoState(nn.Linear):
        def __init__(self, d):
            super().__init__(d, d)

    model = _toy(NoState)
    with pytest.raises(StepNotSupportedError, match="cannot decode step by step"):
        model.allocate_state(1, 4)


def test_residual_stream_in_float32():
    torch.manual_seed(0)
    model = CausalLM(8, 2, 16, 12, lambda i: CumMean(8).bfloat16(), dtype=torch.bfloat16).eval()
    ids = torch.randint(0, 12, (1, 5))
    with torch.no_grad():
        logits, hs = model.forward_with_hidden(ids, None)
    assert [h.dtype for h in hs] == [torch.float32] * 3 + [torch.bfloat16]
    assert logits.dtype == torch.bfloat16


def test_init_weights_statistics():
    class Attn(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.out_proj = nn.Linear(d, d)

        def forward(self, x):
            return self.out_proj(x)

    torch.manual_seed(0)
    model = CausalLM(256, 4, 1024, 12, lambda i: Attn(256), initializer_range=0.02)
    for p in model.parameters():
        nn.init.constant_(p, 3.0)
    model.init_weights()
    layer = model.backbone.layers[0]
    assert layer.mlp.fc1.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert layer.mlp.fc2.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.03)
    assert layer.mixer.out_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.03)
    assert model.backbone.embeddings.word_embeddings.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.all(layer.mlp.fc1.bias == 0) and torch.all(layer.norm1.weight == 1)
    assert torch.all(model.backbone.ln_f.bias == 0)
