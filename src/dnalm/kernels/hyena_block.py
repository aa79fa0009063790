"""The fused HyenaDNA block: one Hyena operator and one MLP with their norms and residuals.

Reference twin: :class:`dnalm.models.blocks.Block` with :class:`dnalm.models.hyena.HyenaOperator`
(``x' = x + out_proj(Hyena(LN1 x))``, ``out = x' + fc2(GELU(fc1(LN2 x')))``, long convolution by
:func:`dnalm.models.hyena.fftconv_ref`). Both compute the same function; only the order of the
floating-point operations and the points of rounding to the compute dtype differ.

What is fused and what is kept for the backward pass (per token and layer, D = d_model):

* :class:`HyenaMixerFunction` (LN1 -> in_proj -> short conv -> gating -> FFT long conv -> skip ->
  gating -> out_proj). The filter ``h`` and its spectrum are computed once per call and shared by
  every row of the batch; the FFT runs in float32 on zero-padded buffers written by the prologue
  kernel (no padded copies of the inputs), through complex FFTs of half the length whose unpacking is
  fused with the spectral products; the filter MLP is recomputed in the backward pass
  instead of keeping its activations. Kept: x (float32, shared with the residual stream), the
  in-projection output xz (3D, compute dtype) and the long-convolution output yt (D, compute dtype).
* :class:`MLPResidualFunction` (residual add -> LN2 -> fc1 -> GELU -> fc2 -> residual add). Kept: the
  mixer output o (D) and the fc1 output (d_inner); LN2 and GELU are recomputed.

With bf16 activations that is ``4 D + 2 (4 D) + 2 d_inner`` bytes: 5.5 KB per token and layer for
HyenaDNA-large (D = 256, d_inner = 1024), 44 GiB for 1,048,576 tokens through 8 layers (58.4 GiB peak
measured with the optimizer step and the transient FFT buffers), against about 17 KB per token and layer
for the reference path (``benchmarks/speed_results.md``).

The elementwise work goes through an ``ops`` object: :class:`dnalm.kernels.hyena_torch.TorchOps`
(plain PyTorch, any device) or :class:`dnalm.kernels.hyena_triton.TritonOps` (Triton, CUDA).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dnalm.kernels.hyena_torch import TorchOps, wide

#: A power of two is taken over a smaller length with prime factors <= 7 when at most this much longer:
#: cuFFT ran a complex FFT of (1, 256, M) points 1.43-1.47x faster at M = 2^20 and 2^21 than at the
#: 7-smooth M = 1,000,188 and 2,000,376 on an H200 (``benchmarks/profile_inference.py``).
POW2_SLACK = 1.25


@functools.lru_cache(maxsize=64)
def fft_size(L: int) -> int:
    """The FFT length n = 2M for a causal convolution of L positions: M >= L the smallest with prime factors
    <= 7, or the next power of two when that is at most ``POW2_SLACK`` times longer."""
    M = L
    while True:
        r = M
        for p in (2, 3, 5, 7):
            while r % p == 0:
                r //= p
        if r == 1:
            break
        M += 1
    pow2 = 1 << max(L - 1, 0).bit_length()
    return 2 * (pow2 if pow2 <= POW2_SLACK * M else M)


def _packed_fft(buf: Tensor) -> Tensor:
    """FFT of a real buffer (B, D, n) read as n/2 complex numbers: (B, D, n/2) complex64."""
    B, D, n = buf.shape
    return torch.fft.fft(torch.view_as_complex(buf.view(B, D, n // 2, 2)))


def _packed_ifft(c: Tensor) -> Tensor:
    """Unscaled inverse FFT of c (B, D, M), read as 2M reals: (B, D, 2M) float32."""
    B, D, M = c.shape
    return torch.view_as_real(torch.fft.ifft(c, norm="forward")).view(B, D, 2 * M)


def _compute_dtype(x: Tensor, param: Tensor) -> torch.dtype:
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else param.dtype


def _autocast_state(x: Tensor) -> tuple[str, bool, torch.dtype]:
    dev = x.device.type
    return dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev)


def _flat(t: Tensor) -> Tensor:
    return t.reshape(-1, t.shape[-1])


def _weight_grad(dout: Tensor, inp: Tensor, param: Tensor) -> Tensor:
    """``dout^T inp`` over all tokens: dout (..., M), inp (..., K) -> (M, K) in the parameter's dtype."""
    return (_flat(dout).t() @ _flat(inp)).to(param.dtype)


def _filter_mlp(filter_fn: nn.Module, L: int) -> tuple[Tensor, Tensor]:
    """The filter MLP's output h (L, D) and the positions t (L,) of a :class:`HyenaFilter` (before its decay)."""
    z, t = filter_fn.pos_emb(L)
    return filter_fn.implicit_filter(z)[0], t[0, :, 0]


def _window(filter_fn: nn.Module) -> tuple[Tensor, float | None]:
    """The decay rates (D,) and shift of the filter's exponential window (shift None: no window)."""
    mod = filter_fn.modulation
    return mod.deltas.reshape(-1), (mod.shift if mod.modulate else None)


class HyenaMixerFunction(torch.autograd.Function):
    """``o = out_proj(Hyena(LN1 x))`` for x (B, L, D) float32; o (B, L, D) in the compute dtype."""

    @staticmethod
    def forward(ctx, x: Tensor, ln_w: Tensor, ln_b: Tensor, w_in: Tensor, b_in: Tensor, conv_w: Tensor,
                conv_b: Tensor, w_out: Tensor, b_out: Tensor, dskip: Tensor, ops, eps: float,
                filter_fn: nn.Module, *filter_params: Tensor) -> Tensor:
        B, L, D = x.shape
        cdt = _compute_dtype(x, w_in)
        n = fft_size(L)
        h, mean, rstd = ops.ln_fwd(_flat(x), None, ln_w, ln_b, eps, cdt)
        xz = F.linear(h.view(B, L, D), w_in.to(cdt), b_in.to(cdt))  # (B, L, 3D)
        del h
        cw = conv_w.reshape(conv_w.shape[0], -1)
        hk, t = _filter_mlp(filter_fn, L)
        kf = torch.fft.rfft(ops.modulate(hk, t, *_window(filter_fn), 1.0 / n), n=n)  # (D, n/2+1), shared by the batch
        del hk
        c = _packed_fft(ops.pre(xz, cw, conv_b, n))  # (B, D, n/2)
        yc = _packed_ifft(ops.conv_spectrum(c, kf, n))  # (B, D, n) float32; the 1/n is in kf
        del c
        yt, y = ops.post(yc, xz, cw, conv_b, dskip, cdt)
        del yc
        o = F.linear(y, w_out.to(cdt), b_out.to(cdt))
        ctx.save_for_backward(x, ln_w, ln_b, w_in, mean, rstd, xz, conv_w, conv_b, yt, w_out, dskip, *filter_params)
        ctx.ops, ctx.eps, ctx.filter_fn, ctx.cdt, ctx.amp = ops, eps, filter_fn, cdt, _autocast_state(x)
        return o

    @staticmethod
    def backward(ctx, do: Tensor):
        x, ln_w, ln_b, w_in, mean, rstd, xz, conv_w, conv_b, yt, w_out, dskip, *filter_params = ctx.saved_tensors
        ops, cdt = ctx.ops, ctx.cdt
        B, L, D = x.shape
        n = fft_size(L)
        cw = conv_w.reshape(conv_w.shape[0], -1)
        do = do.to(cdt)
        dy = do @ w_out.to(cdt)  # (B, L, D)
        gpad, zpad, d_dskip, y = ops.bwd_pre(dy, xz, cw, conv_b, yt, n)
        d_w_out = _weight_grad(do, y, w_out)
        d_b_out = _flat(do).sum(0, dtype=torch.float32).to(w_out.dtype)
        del y
        dev, amp, adt = ctx.amp
        with torch.enable_grad(), torch.autocast(dev, dtype=adt, enabled=amp):
            hk, t = _filter_mlp(ctx.filter_fn, L)  # recomputed: its activations are not kept
        window = _window(ctx.filter_fn)
        with torch.no_grad():
            kf = torch.fft.rfft(ops.modulate(hk.detach(), t, *window, 1.0 / n), n=n)
            cg = _packed_fft(gpad)
            del gpad
            cz = _packed_fft(zpad)
            del zpad
            c2, p = ops.conv_grad_spectrum(cz, cg, kf, n)
            del cz, cg, kf
            dhk = ops.modulate_bwd(torch.fft.irfft(p, n=n)[:, :L], t, *window, hk.dtype)  # filter gradient (L, D)
            dzc = _packed_ifft(c2)  # (B, D, n)
            del c2, p
            dxz, d_conv_w, d_conv_b, d_b_in = ops.bwd_post(dzc, dy, xz, cw, conv_b, yt, dskip)
            del dzc, dy
            h, _, _ = ops.ln_fwd(_flat(x), None, ln_w, ln_b, ctx.eps, cdt)
            d_w_in = _weight_grad(dxz, h, w_in)
            del h
            dh = _flat(dxz) @ w_in.to(cdt)
            del dxz
            dx, d_ln_w, d_ln_b = ops.ln_bwd(dh, _flat(x), None, ln_w, mean, rstd, None)
        wanted = [p for p in filter_params if p.requires_grad]
        d_filter = dict(zip(map(id, wanted), torch.autograd.grad(hk, wanted, dhk))) if wanted else {}
        return (dx.view(B, L, D), d_ln_w.to(ln_w.dtype), d_ln_b.to(ln_b.dtype), d_w_in, d_b_in.to(w_in.dtype),
                d_conv_w.view_as(conv_w).to(conv_w.dtype), d_conv_b.to(conv_b.dtype), d_w_out, d_b_out,
                d_dskip.to(dskip.dtype), None, None, None, *(d_filter.get(id(p)) for p in filter_params))


class MLPResidualFunction(torch.autograd.Function):
    """``x' = x + o``, ``out = x' + fc2(GELU(fc1(LN2 x')))``: x (B, L, D) float32, o (B, L, D) -> out float32."""

    @staticmethod
    def forward(ctx, x: Tensor, o: Tensor, ln_w: Tensor, ln_b: Tensor, w1: Tensor, b1: Tensor, w2: Tensor,
                b2: Tensor, ops, eps: float) -> Tensor:
        cdt = _compute_dtype(x, w1)
        h, mean, rstd = ops.ln_fwd(_flat(x), _flat(o), ln_w, ln_b, eps, cdt)
        a1 = F.linear(h, w1.to(cdt), b1.to(cdt))  # (N, d_inner)
        del h
        a2 = F.linear(ops.gelu_fwd(a1), w2.to(cdt), b2.to(cdt))
        out = ops.residual(_flat(x), _flat(o), a2)
        ctx.save_for_backward(x, o, ln_w, ln_b, w1, b1, w2, mean, rstd, a1)
        ctx.ops, ctx.eps, ctx.cdt = ops, eps, cdt
        return out.view(x.shape)

    @staticmethod
    def backward(ctx, dout: Tensor):
        x, o, ln_w, ln_b, w1, b1, w2, mean, rstd, a1 = ctx.saved_tensors
        ops, cdt = ctx.ops, ctx.cdt
        dres = _flat(dout).float()
        da2 = dres.to(cdt)
        dg = da2 @ w2.to(cdt)
        g, da1 = ops.gelu_bwd(dg, a1)
        del dg
        d_w2 = _weight_grad(da2, g, w2)
        d_b2 = da2.sum(0, dtype=torch.float32).to(w2.dtype)
        del g, da2
        h, _, _ = ops.ln_fwd(_flat(x), _flat(o), ln_w, ln_b, ctx.eps, cdt)
        d_w1 = _weight_grad(da1, h, w1)
        d_b1 = da1.sum(0, dtype=torch.float32).to(b1.dtype)
        del h
        dh = da1 @ w1.to(cdt)
        del da1
        dx, d_ln_w, d_ln_b = ops.ln_bwd(dh, _flat(x), _flat(o), ln_w, mean, rstd, dres)
        dx = dx.view(x.shape)
        return (dx, dx.to(o.dtype), d_ln_w.to(ln_w.dtype), d_ln_b.to(ln_b.dtype), d_w1, d_b1, d_w2, d_b2,
                None, None)


def filter_parameters(filter_fn: nn.Module) -> list[Tensor]:
    """The tensors the implicit filter depends on (its MLP, frequencies and positional features)."""
    return list(filter_fn.implicit_filter.parameters()) + [p for p in (filter_fn.pos_emb.z,)
                                                            if isinstance(p, nn.Parameter)]


def hyena_block_forward(block: nn.Module, x: Tensor, ops=TorchOps, checkpoint_mixer: bool = False) -> Tensor:
    """The fused twin of ``Block.forward(x)`` for a Hyena block: x (B, L, D) float32 -> (B, L, D) float32.

    ``block`` is a :class:`dnalm.models.blocks.Block` whose mixer is a
    :class:`dnalm.models.hyena.HyenaOperator`; dropout must be inactive (p = 0 or eval mode).
    ``checkpoint_mixer``: keep nothing of the mixer for the backward pass but its input x (already
    kept for the MLP) and run it again there: 2 KB less per token and layer at D = 256 (selective
    activation checkpointing, for sequences beyond about a million tokens per GPU).
    """
    m, f = block.mixer, block.mixer.filter_fn
    args = (x, block.norm1.weight, block.norm1.bias, m.in_proj.weight, m.in_proj.bias, m.short_filter.weight,
            m.short_filter.bias, m.out_proj.weight, m.out_proj.bias, f.bias, ops, block.norm1.eps, f,
            *filter_parameters(f))
    if checkpoint_mixer and torch.is_grad_enabled():
        from torch.utils.checkpoint import checkpoint

        o = checkpoint(HyenaMixerFunction.apply, *args, use_reentrant=False)
    else:
        o = HyenaMixerFunction.apply(*args)
    mlp = block.mlp
    return MLPResidualFunction.apply(x, o, block.norm2.weight, block.norm2.bias, mlp.fc1.weight, mlp.fc1.bias,
                                     mlp.fc2.weight, mlp.fc2.bias, ops, block.norm2.eps)


# ---------------------------------------------------------------------------------------------
# Inference: one chunk of a long sequence (HyenaOperator.fused_chunk, run by dnalm.inference.chunked)
# ---------------------------------------------------------------------------------------------


@dataclass
class FusedCarry:
    """What the next chunk of one fused Hyena block needs (see :func:`hyena_block_chunk`).

    xz: (B, K-1, 3D) the last K-1 rows of the in-projection output (compute dtype; None before the
    first chunk: zeros, the short convolution's causal padding); z: (B, D, H) float32, the last
    ``H <= l_max - 1`` long-convolution inputs ``v * x1``; spectra: the filter's real spectrum (with
    the 1/n of the inverse transform) for the last FFT length n, (D, n/2 + 1) complex64, computed once
    per length (4 GiB per layer for HyenaDNA-large's default chunks of l_max tokens, n ~ 4.2M) when
    ``cache_spectra``, else computed again for every chunk (one more FFT per chunk and layer); ops: the
    elementwise ops the chunks run with (:func:`dnalm.kernels.select_ops`).
    """

    xz: Tensor | None = None
    z: Tensor | None = None
    spectra: dict[int, Tensor] = field(default_factory=dict)
    cache_spectra: bool = True
    ops: Any = TorchOps


def _filter_spectrum(filter_fn: nn.Module, ops, n: int, l_max: int, device: torch.device) -> Tensor:
    """rfft of the filter's first ``min(l_max, n/2)`` taps (at least float32, not autocast), times 1/n: (D, n/2+1)."""
    with torch.autocast(device.type, enabled=False):
        hk, t = _filter_mlp(filter_fn, min(l_max, n // 2))  # pos_emb(L) holds the first L of l_max positions
        return torch.fft.rfft(ops.modulate(wide(hk), t, *_window(filter_fn), 1.0 / n), n=n)


def hyena_block_chunk(block: nn.Module, x: Tensor, carry: FusedCarry, ops=TorchOps) -> Tensor:
    """One chunk of a Hyena block for chunked inference: x (B, T, D) float32 -> (B, T, D) float32.

    The twin of ``block.with_mixer(x, lambda h: block.mixer.chunk(h, hyena_carry, offset))``
    (:meth:`dnalm.models.hyena.HyenaOperator.chunk` inside the block's ``with_mixer``): the long
    convolution runs over the carried last ``H <= l_max - 1`` inputs z and the chunk's T, with the filter
    truncated to ``l_max`` taps. Inference only (no autograd graph); dropout must be inactive.

    Layout: ``xz_ext = [carry.xz; in_proj(LN1 x)]`` (B, K-1+T, 3D); the prologue writes its z into an FFT
    buffer of length ``n = fft_size(max(H, K-1) + T)``, where the chunk's z lies at positions K-1.. (the
    first K-1 positions, computed from the carried rows, are not the chunk's). The history is written
    just before them, circularly: its last K-1 values over positions 0..K-2, the rest at the end of the
    buffer. The circular convolution then equals the linear one at positions K-1..K-1+T-1 (the nonzero
    window has H + T <= n/2 positions and the filter at most n/2 taps), and those positions line up
    with the rows of ``xz_ext``, so the epilogue reads the FFT output in place; its first K-1 rows are
    dropped.
    """
    m, f = block.mixer, block.mixer.filter_fn
    B, T, D = x.shape
    w_in = m.in_proj.weight
    cdt = _compute_dtype(x, w_in)
    cw = m.short_filter.weight.reshape(m.short_filter.weight.shape[0], -1)
    cb = m.short_filter.bias
    a = cw.shape[-1] - 1  # K - 1
    with torch.no_grad():
        h, _, _ = ops.ln_fwd(_flat(x), None, block.norm1.weight, block.norm1.bias, block.norm1.eps, cdt)
        xz = F.linear(h.view(B, T, D), w_in.to(cdt), m.in_proj.bias.to(cdt))  # (B, T, 3D)
        del h
        if a > 0:
            prev = carry.xz.to(xz.dtype) if carry.xz is not None else xz.new_zeros(B, a, 3 * D)
            xz = torch.cat([prev, xz], dim=1)  # (B, a+T, 3D)
            carry.xz = xz[:, T:].clone()
        H = 0 if carry.z is None else carry.z.shape[-1]
        n = fft_size(max(H, a) + T)
        buf = ops.pre(xz, cw, cb, n)  # (B, D, n): positions a.. hold the chunk's z, zeros from a+T
        hist, keep = carry.z, m.l_max - 1
        new = buf[..., a + max(T - keep, 0): a + T]  # the chunk's last inputs that later chunks need
        if hist is not None and keep > T:
            carry.z = torch.cat([hist[..., max(H - (keep - T), 0):], new], dim=-1)
        else:
            carry.z = new.clone()
        del new
        if a > 0:
            buf[..., :a] = 0  # not the chunk's: z of the carried rows, or of the zero padding
        if H:
            r = min(H, a)
            buf[..., a - r: a] = hist[..., H - r:]
            if H > a:
                buf[..., n - (H - a):] = hist[..., : H - a]
        del hist
        kf = carry.spectra.get(n)
        if kf is None:
            carry.spectra.clear()  # one length kept: every chunk but the first few and the last has the same n
            kf = _filter_spectrum(f, ops, n, m.l_max, x.device)
            if carry.cache_spectra:
                carry.spectra[n] = kf
        c = _packed_fft(buf)  # (B, D, n/2)
        del buf
        yc = _packed_ifft(ops.conv_spectrum(c, kf, n))  # (B, D, n) float32; positions a..a+T-1 are the chunk's
        del c
        _, y = ops.post(yc, xz, cw, cb, f.bias, cdt)  # rows aligned with xz: (B, a+T, D)
        del yc, xz
        o = F.linear(y[:, a:], m.out_proj.weight.to(cdt), m.out_proj.bias.to(cdt))
        del y
        mlp = block.mlp
        return MLPResidualFunction.apply(x, o, block.norm2.weight, block.norm2.bias, mlp.fc1.weight, mlp.fc1.bias,
                                         mlp.fc2.weight, mlp.fc2.bias, ops, block.norm2.eps)
