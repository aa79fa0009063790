"""The fused Hyena block (plain PyTorch ops, CPU) against the reference Block, values and gradients."""

from __future__ import annotations

import pytest
import torch

from dnalm.kernels.hyena_block import hyena_block_forward
from dnalm.kernels.hyena_torch import TorchOps
from dnalm.models.hyena import HyenaConfig, HyenaLM


def _randomise(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p + 0.1 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("B, L, K", [(2, 37, 3), (1, 64, 3), (3, 20, 4)])
def test_block_matches_reference(B, L, K):
    cfg = HyenaConfig(d_model=16, n_layer=1, d_inner=32, l_max=80, short_filter_order=K, embed_dropout=0.0)
    model = HyenaLM(cfg)
    _randomise(model, B * L)
    block = model.backbone.layers[0]
    x = torch.randn(B, L, 16, generator=torch.Generator().manual_seed(L), requires_grad=True)
    ref = block(x)
    dout = torch.randn_like(ref)
    params = [x, *block.parameters()]
    ref_grads = torch.autograd.grad(ref, params, dout, allow_unused=True)
    out = hyena_block_forward(block, x, TorchOps)
    grads = torch.autograd.grad(out, params, dout, allow_unused=True)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)
    names = ["x"] + [n for n, _ in block.named_parameters()]
    for name, g, r in zip(names, grads, ref_grads):
        if r is None:
            assert g is None or not g.any(), name
        else:
            torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4, msg=name)


def test_model_fast_path_switch_keeps_keys_and_function():
    cfg = HyenaConfig(d_model=32, n_layer=2, d_inner=64, l_max=130, embed_dropout=0.0)
    torch.manual_seed(0)
    ref = HyenaLM(cfg)
    fused = HyenaLM(HyenaConfig(**{**cfg.__dict__, "fast_path": "fused"}))
    fused.load_state_dict(ref.state_dict())
    assert list(fused.state_dict()) == list(ref.state_dict())
    ids = torch.randint(0, 12, (3, 100))
    a, b = ref(ids), fused(ids)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    a.logsumexp(-1).sum().backward()
    b.logsumexp(-1).sum().backward()
    for (name, p), q in zip(ref.named_parameters(), fused.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-4, rtol=1e-4, msg=name)


def test_fast_path_selection():
    from dnalm.errors import ConfigError
    from dnalm.kernels import select_ops

    cpu = torch.device("cpu")
    assert select_ops("auto", cpu) is None and select_ops("reference", cpu) is None
    assert select_ops("fused", cpu) is TorchOps
    with pytest.raises(ConfigError, match="fast_path"):
        HyenaConfig(fast_path="fast")


def test_checkpointed_mixer_gives_the_same_gradients():
    torch.manual_seed(1)
    block = HyenaLM(HyenaConfig(d_model=16, n_layer=1, d_inner=32, l_max=40)).backbone.layers[0]
    x = torch.randn(2, 30, 16, requires_grad=True)
    params = [x, *block.parameters()]
    out = hyena_block_forward(block, x, TorchOps)
    ref = torch.autograd.grad(out.square().sum(), params)
    out = hyena_block_forward(block, x, TorchOps, checkpoint_mixer=True)
    for g, r in zip(torch.autograd.grad(out.square().sum(), params), ref, strict=True):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("L", [10, 33, 45, 64])
def test_half_length_complex_fft_gives_the_real_spectrum(L):
    from dnalm.kernels.hyena_block import _packed_fft, _packed_ifft, fft_size
    from dnalm.kernels.hyena_torch import pack_spectrum, unpack_spectrum

    n = fft_size(L)
    assert n % 2 == 0 and n >= 2 * L
    x = torch.nn.functional.pad(torch.randn(2, 3, L, dtype=torch.float64), (0, n - L))
    spec = unpack_spectrum(_packed_fft(x.float()).to(torch.complex128), n)
    torch.testing.assert_close(spec, torch.fft.rfft(x), atol=1e-5, rtol=1e-5)
    y = torch.randn(2, 3, n // 2 + 1, dtype=torch.complex128)
    y[..., 0] = y[..., 0].real
    y[..., -1] = y[..., -1].real
    torch.testing.assert_close(_packed_ifft(pack_spectrum(y, n).to(torch.complex64)).double(),
                               torch.fft.irfft(y, n=n, norm="forward"), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("L, n", [(1, 2), (33, 70), (64, 128), (1000, 2048), (1025, 2058), (1031, 2100),
                                  (1_000_188, 2_097_152), (3_000_000, 6_000_000)])
def test_fft_length_is_seven_smooth_or_a_close_power_of_two(L, n):
    """By hand: 33 -> 35 = 5 x 7 (64 is more than 1.25 x 35); 1000 -> 1024 (within 1.25 x 1000);
    1025 -> 1029 = 3 x 7^3 (2048 is too far); 1,000,188 = 2^2 x 3^6 x 7^3 is smooth but 2^20 is only 4.8%
    longer; 3,000,000 = 2^6 x 3 x 5^6 is smooth and 2^22 is 1.4x longer."""
    from dnalm.kernels.hyena_block import fft_size

    assert fft_size(L) == n
