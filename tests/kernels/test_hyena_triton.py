"""The Triton kernels against their PyTorch twins (under TRITON_INTERPRET=1 where no GPU is present).

Skipped where Triton is not installed; on a GPU machine ``benchmarks/check_kernels.py`` runs the
same comparisons at full size.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from dnalm.kernels.hyena_block import fft_size, hyena_block_forward  # noqa: E402
from dnalm.kernels.hyena_torch import TorchOps  # noqa: E402
from dnalm.kernels.hyena_triton import TritonOps  # noqa: E402
from dnalm.models.hyena import HyenaConfig, HyenaLM  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _close(a, b, tol=1e-5):
    if isinstance(a, tuple):
        for x, y in zip(a, b, strict=True):
            _close(x, y, tol)
        return
    assert a.shape == b.shape and a.dtype == b.dtype
    a, b = torch.view_as_real(a) if a.is_complex() else a, torch.view_as_real(b) if b.is_complex() else b
    err = (a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)
    assert err < tol, err


@pytest.mark.parametrize("B, L, D, K", [(2, 45, 24, 3), (1, 70, 8, 4)])
def test_channel_kernels_match_torch(B, L, D, K):
    g = torch.Generator().manual_seed(L)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(DEV)

    n = fft_size(L)
    xz, w, b, dsk = r(B, L, 3 * D), r(3 * D, K), r(3 * D), r(D)
    for ops_a, ops_b in ((TritonOps, TorchOps),):
        _close(ops_a.pre(xz, w, b, n), ops_b.pre(xz, w, b, n))
        yc = r(B, D, n)
        _close(ops_a.post(yc, xz, w, b, dsk, torch.float32), ops_b.post(yc, xz, w, b, dsk, torch.float32))
        yt, dy = r(B, L, D), r(B, L, D)
        _close(ops_a.bwd_pre(dy, xz, w, b, yt, n), ops_b.bwd_pre(dy, xz, w, b, yt, n))
        dzc = r(B, D, n)
        _close(ops_a.bwd_post(dzc, dy, xz, w, b, yt, dsk), ops_b.bwd_post(dzc, dy, xz, w, b, yt, dsk))
        M = n // 2
        cz, cg, kf = (torch.complex(r(*s), r(*s)) for s in ((B, D, M), (B, D, M), (D, M + 1)))
        _close(ops_a.conv_spectrum(cz, kf, n), ops_b.conv_spectrum(cz, kf, n))
        _close(ops_a.conv_grad_spectrum(cz, cg, kf, n), ops_b.conv_grad_spectrum(cz, cg, kf, n))
        h, t, dk = r(L, D), torch.linspace(0, 1, L).to(DEV), r(D, L)
        for shift in (None, 0.05):
            _close(ops_a.modulate(h, t, dsk, shift, 0.5), ops_b.modulate(h, t, dsk, shift, 0.5))
            _close(ops_a.modulate_bwd(dk, t, dsk, shift, torch.float32), ops_b.modulate_bwd(dk, t, dsk, shift,
                                                                                              torch.float32))


@pytest.mark.parametrize("N, D, with_o", [(37, 24, True), (20, 16, False)])
def test_row_kernels_match_torch(N, D, with_o):
    g = torch.Generator().manual_seed(N)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(DEV)

    x, o, w, b, dh, dres = r(N, D), r(N, D) if with_o else None, r(D), r(D), r(N, D), r(N, D)
    fa, fb = TritonOps.ln_fwd(x, o, w, b, 1e-5, torch.float32), TorchOps.ln_fwd(x, o, w, b, 1e-5, torch.float32)
    _close(fa, fb)
    _close(TritonOps.ln_bwd(dh, x, o, w, fb[1], fb[2], dres), TorchOps.ln_bwd(dh, x, o, w, fb[1], fb[2], dres))
    _close(TritonOps.ln_bwd(dh, x, o, w, fb[1], fb[2], None), TorchOps.ln_bwd(dh, x, o, w, fb[1], fb[2], None))
    a, dg = 3 * r(N, 4 * D), r(N, 4 * D)
    _close(TritonOps.gelu_bwd(dg, a), TorchOps.gelu_bwd(dg, a))
    _close(TritonOps.residual(x, dh, dres), TorchOps.residual(x, dh, dres))


def test_block_with_triton_kernels_matches_reference():
    torch.manual_seed(0)
    block = HyenaLM(HyenaConfig(d_model=16, n_layer=1, d_inner=32, l_max=40)).backbone.layers[0].to(DEV)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 33, 16, device=DEV, requires_grad=True)
    params = [x, *block.parameters()]
    ref = block(x)
    dout = torch.randn_like(ref)
    out = hyena_block_forward(block, x, TritonOps)
    _close(out, ref)
    for g, r in zip(torch.autograd.grad(out, params, dout), torch.autograd.grad(ref, params, dout), strict=True):
        _close(g, r, 1e-4)
