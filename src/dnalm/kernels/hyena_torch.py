"""Plain PyTorch twins of the fused Hyena kernels (the CPU path, and the reference for the Triton ones).

Each function computes, with ordinary tensor operations, exactly what one Triton kernel of
:mod:`dnalm.kernels.hyena_triton` computes, with the same arguments and the same outputs
(all arithmetic in float32, or float64 for float64 inputs, outputs rounded once to the compute dtype ``cdt``).
:class:`TorchOps` bundles them; :class:`dnalm.kernels.hyena_triton.TritonOps` has the same methods.

Notation (Hyena operator, order 2, see :mod:`dnalm.models.hyena`): ``xz`` (B, L, 3D) is the
in-projection output (bias included); the causal K-tap depthwise short convolution gives
``s = ShortConv(xz)`` (B, 3D, L), split into ``x0, x1, v`` (D channels each); ``z = v * x1``;
the long convolution ``yc = h * z`` comes from the FFT; ``yt = yc + Dskip * z`` (rounded to ``cdt``,
HyenaDNA's ``fftconv`` output) and the operator's gated output is ``y = yt * x0`` (B, L, D).
Long-convolution buffers are channels-first, float32 and zero-padded to the FFT length ``n = 2M >= 2L``,
transformed as M complex numbers ``x[2m] + i x[2m+1]`` (a complex FFT of half the length, whose
unpacking into the real spectrum is fused with the spectral products, :func:`unpack_spectrum`):
``zpad`` (B, D, n); everything else is channels-last: ``yt``, ``y``, ``dy`` (B, L, D).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def wide(t: Tensor) -> Tensor:
    """``t`` in at least float32: float64 stays float64 (exactness checks), everything else becomes float32."""
    return t if t.dtype == torch.float64 else t.float()


def short_conv(xz: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Causal depthwise convolution of the in-projection output, split into (x0, x1, v).

    xz: (B, L, 3D); weight: (3D, K); bias: (3D,). ``s[c, l] = bias[c] + sum_j weight[c, j] xz[l - K + 1 + j, c]``
    (zeros before the start). Returns three float32 tensors (B, D, L).
    """
    K = weight.shape[-1]
    x = F.pad(wide(xz.transpose(1, 2)), (K - 1, 0))
    s = F.conv1d(x, wide(weight)[:, None, :], wide(bias), groups=weight.shape[0])
    return s.chunk(3, dim=1)


def _twiddles(k: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """``W^k = exp(-2 pi i k / n)`` (angles in float64)."""
    return torch.exp(-2j * math.pi * k.double() / n).to(dtype)


def unpack_spectrum(c: Tensor, n: int) -> Tensor:
    """The real FFT (..., M + 1) of n = 2M reals x from the complex FFT c (..., M) of ``x[2m] + i x[2m+1]``.

    ``X[k] = E[k] + W^k O[k]`` with ``E = (C[k] + conj C[M-k]) / 2``, ``O = (C[k] - conj C[M-k]) / 2i``.
    """
    M = c.shape[-1]
    k = torch.arange(M + 1, device=c.device)
    ck, cr = c[..., k % M], c[..., (M - k) % M].conj()
    return (ck + cr) / 2 + _twiddles(k, n, c.dtype) * (ck - cr) / 2j


def pack_spectrum(y: Tensor, n: int) -> Tensor:
    """Inverse of :func:`unpack_spectrum` up to the transform: from a real spectrum y (..., M + 1) the complex
    spectrum c2 (..., M) whose unscaled inverse FFT is ``x[2m] + i x[2m+1]`` for ``x = irfft(y, n, norm="forward")``.
    """
    M = y.shape[-1] - 1
    k = torch.arange(M, device=y.device)
    yk, yr = y[..., k], y[..., M - k].conj()
    return (yk + yr) + 1j * _twiddles(k, n, y.dtype).conj() * (yk - yr)


def padded(x: Tensor, n: int) -> Tensor:
    """x (B, C, L) float32 zero-padded on the right to length n: (B, C, n)."""
    return F.pad(x, (0, n - x.shape[-1]))


class TorchOps:
    """The elementwise pieces of the fused Hyena block in plain PyTorch (any device)."""

    name = "torch"

    @staticmethod
    def pre(xz: Tensor, weight: Tensor, bias: Tensor, n: int) -> Tensor:
        """Forward prologue: ``zpad = pad(v * x1)`` (B, D, n) float32."""
        _, x1, v = short_conv(xz, weight, bias)
        return padded(v * x1, n)

    @staticmethod
    def post(yc: Tensor, xz: Tensor, weight: Tensor, bias: Tensor, dskip: Tensor,
             cdt: torch.dtype) -> tuple[Tensor, Tensor]:
        """Forward epilogue from the long convolution yc (B, D, n) float32.

        Returns ``yt = yc + Dskip * z`` and ``y = yt * x0``, both (B, L, D) in ``cdt``.
        """
        x0, x1, v = short_conv(xz, weight, bias)
        L = xz.shape[1]
        yt = (yc[..., :L] + wide(dskip)[:, None] * (v * x1)).to(cdt)
        y = (wide(yt) * x0).to(cdt)
        return yt.transpose(1, 2).contiguous(), y.transpose(1, 2).contiguous()

    @staticmethod
    def bwd_pre(dy: Tensor, xz: Tensor, weight: Tensor, bias: Tensor, yt: Tensor, n: int
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Backward prologue from dy = dLoss/dy (B, L, D).

        Returns ``gpad = pad(dy * x0)`` (the gradient at yt, B, D, n, float32), ``zpad`` (B, D, n),
        ``dDskip = sum_{b,l} dy x0 z`` (D,) float32 and the recomputed ``y`` (B, L, D) in ``yt.dtype``.
        """
        x0, x1, v = short_conv(xz, weight, bias)
        z = v * x1
        g = wide(dy.transpose(1, 2)) * x0
        y = (wide(yt.transpose(1, 2)) * x0).to(yt.dtype).transpose(1, 2).contiguous()
        return padded(g, n), padded(z, n), (g * z).sum((0, 2)), y

    @staticmethod
    def modulate(h: Tensor, t: Tensor, deltas: Tensor, shift: float | None, scale: float) -> Tensor:
        """The implicit filter from its MLP output: ``k = scale * h^T * (exp(-t |delta|) + shift)``.

        h: (L, D); t: (L,); deltas: (D,); ``shift`` None means no decay window. Returns (D, L) float32.
        """
        k = wide(h)
        if shift is not None:
            k = k * (torch.exp(-wide(t)[:, None] * wide(deltas).abs()[None, :]) + shift)
        return (k * scale).t().contiguous()

    @staticmethod
    def modulate_bwd(dk: Tensor, t: Tensor, deltas: Tensor, shift: float | None, dtype: torch.dtype) -> Tensor:
        """Gradient of :meth:`modulate` (with scale 1) at h: dk (D, L) float32 -> dh (L, D) in ``dtype``."""
        dh = wide(dk.t())
        if shift is not None:
            dh = dh * (torch.exp(-wide(t)[:, None] * wide(deltas).abs()[None, :]) + shift)
        return dh.to(dtype)

    @staticmethod
    def conv_spectrum(c: Tensor, kf: Tensor, n: int) -> Tensor:
        """Forward spectral step: from ``c = FFT_M(zpad as M = n/2 complex pairs)`` (B, D, M) to ``c2`` (B, D, M)
        whose unscaled inverse FFT, read as n reals, is the convolution ``irfft(rfft(zpad) * kf)``.

        kf: (D, M + 1) complex64, the filter's real spectrum (with the 1/n of the inverse transform).
        """
        return pack_spectrum(unpack_spectrum(c, n) * kf, n)

    @staticmethod
    def conv_grad_spectrum(cz: Tensor, cg: Tensor, kf: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """Backward spectral step from the packed FFTs of zpad and gpad (B, D, M).

        Returns the packed spectrum of ``irfft(G conj(kf))`` (input gradient, B, D, M) and the filter-gradient
        spectrum ``P = sum_b conj(Z) G`` (D, M + 1), with Z, G the real spectra of zpad and gpad.
        """
        z, g = unpack_spectrum(cz, n), unpack_spectrum(cg, n)
        return pack_spectrum(g * kf.conj(), n), (z.conj() * g).sum(0)

    @staticmethod
    def bwd_post(dzc: Tensor, dy: Tensor, xz: Tensor, weight: Tensor, bias: Tensor, yt: Tensor, dskip: Tensor
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Backward epilogue: gradients through the gating and the short convolution.

        dzc: (B, D, n) float32, the long convolution's input gradient ``sum_t h[t-s] g[t]``.
        With ``dx0 = dy yt``, ``dz = dzc + Dskip dy x0``, ``dx1 = dz v``, ``dv = dz x1``, and ``ds = (dx0, dx1, dv)``:
        returns dxz (B, L, 3D) in ``xz.dtype`` (from ds rounded to ``xz.dtype``), dweight (3D, K), dbias (3D,)
        (from ds in float32) and ``sum_{b,l} dxz`` (3D,), all three float32.
        """
        x0, x1, v = short_conv(xz, weight, bias)
        L, K = xz.shape[1], weight.shape[-1]
        g = wide(dy.transpose(1, 2))
        dz = dzc[..., :L] + wide(dskip)[:, None] * g * x0
        ds = torch.cat([g * wide(yt.transpose(1, 2)), dz * v, dz * x1], dim=1)  # (B, 3D, L)
        dsr = wide(ds.to(xz.dtype))  # the short conv's output gradient, kept in the compute dtype
        dxz = F.conv1d(F.pad(dsr, (0, K - 1)), wide(weight).flip(-1)[:, None, :], groups=weight.shape[0])
        xpad = F.pad(wide(xz.transpose(1, 2)), (K - 1, 0)).unfold(-1, K, 1)  # (B, 3D, L, K)
        dweight = torch.einsum("bcl,bclk->ck", ds, xpad)
        return dxz.transpose(1, 2).to(xz.dtype), dweight, ds.sum((0, 2)), dxz.sum((0, 2))

    @staticmethod
    def ln_fwd(x: Tensor, o: Tensor | None, weight: Tensor, bias: Tensor, eps: float, cdt: torch.dtype
               ) -> tuple[Tensor, Tensor, Tensor]:
        """LayerNorm of the rows of ``r = x + o`` (o optional): x (N, D) float32 -> (h in cdt, mean, rstd (N,))."""
        r = wide(x) if o is None else wide(x) + wide(o)
        mean = r.mean(-1)
        rstd = torch.rsqrt(((r - mean[:, None]) ** 2).mean(-1) + eps)
        h = (r - mean[:, None]) * rstd[:, None] * wide(weight) + wide(bias)
        return h.to(cdt), mean, rstd

    @staticmethod
    def ln_bwd(dh: Tensor, x: Tensor, o: Tensor | None, weight: Tensor, mean: Tensor, rstd: Tensor,
               dres: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Gradients of :meth:`ln_fwd`: returns dr (+ dres when given) (N, D) float32, dweight, dbias (D,)."""
        r = wide(x) if o is None else wide(x) + wide(o)
        xhat = (r - mean[:, None]) * rstd[:, None]
        dh = wide(dh)
        wdh = dh * wide(weight)
        dr = rstd[:, None] * (wdh - wdh.mean(-1, keepdim=True) - xhat * (wdh * xhat).mean(-1, keepdim=True))
        if dres is not None:
            dr = dr + dres
        return dr, (dh * xhat).sum(0), dh.sum(0)

    @staticmethod
    def residual(x: Tensor, o: Tensor, a: Tensor) -> Tensor:
        """``(x + o) + a`` in float32 (the block's two residual additions), all (N, D)."""
        return (wide(x) + wide(o)) + wide(a)

    @staticmethod
    def gelu_fwd(a: Tensor) -> Tensor:
        """GELU with the tanh approximation (HyenaDNA's MLP)."""
        return F.gelu(a, approximate="tanh")

    @staticmethod
    def gelu_bwd(dg: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
        """Recomputed ``gelu(a)`` and ``dLoss/da`` from ``dg``, both in ``a.dtype``."""
        af = wide(a)
        return F.gelu(af, approximate="tanh").to(a.dtype), torch.ops.aten.gelu_backward(
            wide(dg), af, approximate="tanh").to(a.dtype)
