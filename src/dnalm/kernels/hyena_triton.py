"""Triton kernels of the fused Hyena block (CUDA); twins of :mod:`dnalm.kernels.hyena_torch`.

:class:`TritonOps` has the methods of :class:`dnalm.kernels.hyena_torch.TorchOps`, with the same
arguments, layouts and results (float32 arithmetic, one rounding to the compute dtype per output).
Layouts: ``xz`` (B, L, 3D), ``dy``, ``y`` and ``yt`` (B, L, D) channels-last; the FFT buffers
(B, D, n) channels-first, so the kernels transpose on the fly instead of through copies.
The short-convolution backward kernels are written for HyenaDNA's 3 taps (other sizes use the twin).

Kernels: ``_pre_kernel`` (short conv of x1 and v + gating into the zero-padded FFT input),
``_post_kernel`` (skip term, gating by x0), ``_bwd_pre_kernel``, ``_bwd_ds_kernel`` and ``_conv_t_kernel``
(their gradients, the short convolution's included, with the weight and bias sums as per-program partials),
``_conv_spectrum_kernel`` and ``_conv_grad_spectrum_kernel`` (unpacking of the half-length complex FFTs
into real spectra, the products with the shared filter spectrum, the batch sum of the filter-gradient
spectrum and the packing for the inverse FFTs), ``_modulate_kernel`` (the filter's decay window),
``_ln_fwd_kernel`` / ``_ln_bwd_kernel`` (LayerNorm of ``x + o`` with a compute-dtype output, and
its gradient plus the residual gradient), ``_gelu_bwd_kernel`` and ``_residual_kernel``.
Checked against the PyTorch twins on the GPU by ``benchmarks/check_kernels.py`` and, without a GPU,
under ``TRITON_INTERPRET=1`` by ``tests/kernels``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from dnalm.kernels.hyena_torch import TorchOps

BL, BC, WARPS = 32, 64, 4  # positions x channels per tile of the channel kernels


def _progs(tiles: int, others: int, target: int = 2048) -> tuple[int, int]:
    """Split ``tiles`` tiles among programs so that about ``target`` programs run: (programs, tiles each)."""
    per = max(1, triton.cdiv(tiles, max(1, target // max(1, others))))
    return triton.cdiv(tiles, per), per


@triton.jit
def _conv_at(base, w, bias, ch, pos, L, C3, K: tl.constexpr, cm, TL: tl.constexpr, TC: tl.constexpr):
    """Short-conv output of channels ch (1, TC) at positions pos (TL, 1): (TL, TC) float32."""
    acc = tl.zeros((TL, TC), tl.float32) + tl.load(bias + ch, mask=cm, other=0.0).to(tl.float32)
    for j in tl.static_range(K):
        p = pos - (K - 1) + j
        m = (p >= 0) & (p < L) & cm
        xv = tl.load(base + p * C3 + ch, mask=m, other=0.0).to(tl.float32)
        acc += tl.load(w + ch * K + j, mask=cm, other=0.0).to(tl.float32) * xv
    return acc


@triton.jit
def _pre_kernel(xz, w, bias, zpad, L, D, n, K: tl.constexpr, TL: tl.constexpr, TC: tl.constexpr):
    pl, pc, pb = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    pos = pl * TL + tl.arange(0, TL)[:, None]
    c = pc * TC + tl.arange(0, TC)[None, :]
    cm = c < D
    base = xz + pb * L * 3 * D
    x1 = _conv_at(base, w, bias, c + D, pos, L, 3 * D, K, cm, TL, TC)
    v = _conv_at(base, w, bias, c + 2 * D, pos, L, 3 * D, K, cm, TL, TC)
    m = (pos < L) & cm
    out = zpad + pb * D * n + c * n + pos
    tl.store(out, v * x1, mask=m)
    tl.store(out + L, tl.zeros((TL, TC), tl.float32), mask=m)


@triton.jit
def _post_kernel(yc, xz, w, bias, dskip, yt, y, L, D, n, K: tl.constexpr, TL: tl.constexpr, TC: tl.constexpr):
    pl, pc, pb = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    pos = pl * TL + tl.arange(0, TL)[:, None]
    c = pc * TC + tl.arange(0, TC)[None, :]
    cm = c < D
    base = xz + pb * L * 3 * D
    x0 = _conv_at(base, w, bias, c, pos, L, 3 * D, K, cm, TL, TC)
    x1 = _conv_at(base, w, bias, c + D, pos, L, 3 * D, K, cm, TL, TC)
    v = _conv_at(base, w, bias, c + 2 * D, pos, L, 3 * D, K, cm, TL, TC)
    m = (pos < L) & cm
    ycv = tl.load(yc + pb * D * n + c * n + pos, mask=m, other=0.0)
    t = ycv + tl.load(dskip + c, mask=cm, other=0.0).to(tl.float32) * (v * x1)
    t = t.to(yt.dtype.element_ty)
    tl.store(yt + pb * L * D + pos * D + c, t, mask=m)
    tl.store(y + pb * L * D + pos * D + c, (t.to(tl.float32) * x0).to(y.dtype.element_ty), mask=m)


@triton.jit
def _bwd_pre_kernel(dy, xz, w, bias, yt, gpad, zpad, y, dpart, L, D, n, NPL, TILES: tl.constexpr,
                    K: tl.constexpr, TL: tl.constexpr, TC: tl.constexpr):
    pl, pc, pb = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    c1 = pc * TC + tl.arange(0, TC)
    c = c1[None, :]
    cm = c < D
    base = xz + pb * L * 3 * D
    acc = tl.zeros((TL, TC), tl.float32)
    for t in tl.range(0, TILES):
        pos = (pl * TILES + t) * TL + tl.arange(0, TL)[:, None]
        m = (pos < L) & cm
        x0 = _conv_at(base, w, bias, c, pos, L, 3 * D, K, cm, TL, TC)
        x1 = _conv_at(base, w, bias, c + D, pos, L, 3 * D, K, cm, TL, TC)
        v = _conv_at(base, w, bias, c + 2 * D, pos, L, 3 * D, K, cm, TL, TC)
        z = v * x1
        g = tl.load(dy + pb * L * D + pos * D + c, mask=m, other=0.0).to(tl.float32) * x0
        tv = tl.load(yt + pb * L * D + pos * D + c, mask=m, other=0.0).to(tl.float32)
        buf = pb * D * n + c * n + pos
        zeros = tl.zeros((TL, TC), tl.float32)
        tl.store(gpad + buf, g, mask=m)
        tl.store(gpad + buf + L, zeros, mask=m)
        tl.store(zpad + buf, z, mask=m)
        tl.store(zpad + buf + L, zeros, mask=m)
        tl.store(y + pb * L * D + pos * D + c, (tv * x0).to(y.dtype.element_ty), mask=m)
        acc += g * z
    tl.store(dpart + (pb * NPL + pl) * D + c1, tl.sum(acc, axis=0), mask=c1 < D)


@triton.jit
def _load3(base, ch, pos, L, C3, cm):
    """Inputs of channels ch at pos - 2, pos - 1, pos (zeros outside 0..L-1)."""
    xm2 = tl.load(base + (pos - 2) * C3 + ch, mask=(pos >= 2) & (pos - 2 < L) & cm, other=0.0).to(tl.float32)
    xm1 = tl.load(base + (pos - 1) * C3 + ch, mask=(pos >= 1) & (pos - 1 < L) & cm, other=0.0).to(tl.float32)
    x00 = tl.load(base + pos * C3 + ch, mask=(pos < L) & cm, other=0.0).to(tl.float32)
    return xm2, xm1, x00


@triton.jit
def _w3(w, bias, ch, cm):
    return (tl.load(w + ch * 3, mask=cm, other=0.0).to(tl.float32),
            tl.load(w + ch * 3 + 1, mask=cm, other=0.0).to(tl.float32),
            tl.load(w + ch * 3 + 2, mask=cm, other=0.0).to(tl.float32),
            tl.load(bias + ch, mask=cm, other=0.0).to(tl.float32))


@triton.jit
def _bwd_ds_kernel(dzc, dy, xz, w, bias, yt, dskip, ds, dwpart, dbpart, L, D, n, NPL,
                   TILES: tl.constexpr, TL: tl.constexpr, TC: tl.constexpr):
    """Gradient ds (B, L, 3D) at the 3-tap short conv's output, and its weight and bias sums."""
    pl, pc, pb = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    c1 = pc * TC + tl.arange(0, TC)
    c = c1[None, :]
    cm = c < D
    C3 = 3 * D
    base = xz + pb * L * C3
    dsk = tl.load(dskip + c, mask=cm, other=0.0).to(tl.float32)
    u0, u1, u2, ub = _w3(w, bias, c, cm)
    r0, r1, r2, rb = _w3(w, bias, c + D, cm)
    s0, s1, s2, sb = _w3(w, bias, c + 2 * D, cm)
    z2 = tl.zeros((TL, TC), tl.float32)
    dw00, dw01, dw02, dw10, dw11, dw12, dw20, dw21, dw22 = z2, z2, z2, z2, z2, z2, z2, z2, z2
    db0, db1, db2 = z2, z2, z2
    for t in tl.range(0, TILES):
        pos = (pl * TILES + t) * TL + tl.arange(0, TL)[:, None]
        m = (pos < L) & cm
        pm2, pm1, p00 = _load3(base, c, pos, L, C3, cm)
        qm2, qm1, q00 = _load3(base, c + D, pos, L, C3, cm)
        vm2, vm1, v00 = _load3(base, c + 2 * D, pos, L, C3, cm)
        x0 = ub + u0 * pm2 + u1 * pm1 + u2 * p00
        x1 = rb + r0 * qm2 + r1 * qm1 + r2 * q00
        v = sb + s0 * vm2 + s1 * vm1 + s2 * v00
        g = tl.load(dy + pb * L * D + pos * D + c, mask=m, other=0.0).to(tl.float32)
        tv = tl.load(yt + pb * L * D + pos * D + c, mask=m, other=0.0).to(tl.float32)
        dz = tl.load(dzc + pb * D * n + c * n + pos, mask=m, other=0.0) + dsk * g * x0
        d0 = g * tv
        d1 = dz * v
        d2 = dz * x1
        out = ds + pb * L * C3 + pos * C3 + c
        tl.store(out, d0.to(ds.dtype.element_ty), mask=m)
        tl.store(out + D, d1.to(ds.dtype.element_ty), mask=m)
        tl.store(out + 2 * D, d2.to(ds.dtype.element_ty), mask=m)
        db0 += d0
        db1 += d1
        db2 += d2
        dw00, dw01, dw02 = dw00 + d0 * pm2, dw01 + d0 * pm1, dw02 + d0 * p00
        dw10, dw11, dw12 = dw10 + d1 * qm2, dw11 + d1 * qm1, dw12 + d1 * q00
        dw20, dw21, dw22 = dw20 + d2 * vm2, dw21 + d2 * vm1, dw22 + d2 * v00
    row = pb * NPL + pl
    cmask = c1 < D
    tl.store(dbpart + row * C3 + c1, tl.sum(db0, axis=0), mask=cmask)
    tl.store(dbpart + row * C3 + D + c1, tl.sum(db1, axis=0), mask=cmask)
    tl.store(dbpart + row * C3 + 2 * D + c1, tl.sum(db2, axis=0), mask=cmask)
    wrow = dwpart + row * C3 * 3 + c1 * 3
    tl.store(wrow, tl.sum(dw00, axis=0), mask=cmask)
    tl.store(wrow + 1, tl.sum(dw01, axis=0), mask=cmask)
    tl.store(wrow + 2, tl.sum(dw02, axis=0), mask=cmask)
    tl.store(wrow + 3 * D, tl.sum(dw10, axis=0), mask=cmask)
    tl.store(wrow + 3 * D + 1, tl.sum(dw11, axis=0), mask=cmask)
    tl.store(wrow + 3 * D + 2, tl.sum(dw12, axis=0), mask=cmask)
    tl.store(wrow + 6 * D, tl.sum(dw20, axis=0), mask=cmask)
    tl.store(wrow + 6 * D + 1, tl.sum(dw21, axis=0), mask=cmask)
    tl.store(wrow + 6 * D + 2, tl.sum(dw22, axis=0), mask=cmask)


@triton.jit
def _conv_t_kernel(ds, w, dxz, dinpart, L, C3, NPL, TILES: tl.constexpr, TL: tl.constexpr, TC: tl.constexpr):
    """Transposed 3-tap conv: dxz[p] = w2 ds[p] + w1 ds[p + 1] + w0 ds[p + 2] over (B, L, 3D), and its sums."""
    pl, pc, pb = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    c1 = pc * TC + tl.arange(0, TC)
    c = c1[None, :]
    cm = c < C3
    w0 = tl.load(w + c * 3, mask=cm, other=0.0).to(tl.float32)
    w1 = tl.load(w + c * 3 + 1, mask=cm, other=0.0).to(tl.float32)
    w2 = tl.load(w + c * 3 + 2, mask=cm, other=0.0).to(tl.float32)
    base = ds + pb * L * C3
    acc = tl.zeros((TL, TC), tl.float32)
    for t in tl.range(0, TILES):
        pos = (pl * TILES + t) * TL + tl.arange(0, TL)[:, None]
        da = tl.load(base + pos * C3 + c, mask=(pos < L) & cm, other=0.0).to(tl.float32)
        db = tl.load(base + (pos + 1) * C3 + c, mask=(pos + 1 < L) & cm, other=0.0).to(tl.float32)
        dc = tl.load(base + (pos + 2) * C3 + c, mask=(pos + 2 < L) & cm, other=0.0).to(tl.float32)
        a = w2 * da + w1 * db + w0 * dc
        tl.store(dxz + pb * L * C3 + pos * C3 + c, a.to(dxz.dtype.element_ty), mask=(pos < L) & cm)
        acc += a
    tl.store(dinpart + (pb * NPL + pl) * C3 + c1, tl.sum(acc, axis=0), mask=c1 < C3)


@triton.jit
def _cload(ptr, idx, m):
    """Complex numbers at idx (TF,) of an interleaved float32 array: (re, im), each (TF,)."""
    two = idx[:, None] * 2 + tl.arange(0, 2)[None, :]
    return tl.split(tl.load(ptr + two, mask=m[:, None] & (two >= 0), other=0.0))


@triton.jit
def _cstore(ptr, idx, re, im, m):
    two = idx[:, None] * 2 + tl.arange(0, 2)[None, :]
    tl.store(ptr + two, tl.join(re, im), mask=m[:, None] & (two >= 0))


@triton.jit
def _unpack(cr_, ci_, dr_, di_, wr, wi):
    """X[k] and X[M-k] from C[k] = (cr_, ci_) and C[(M-k) mod M] = (dr_, di_): E + W O and conj(E - W O)."""
    er, ei = (cr_ + dr_) * 0.5, (ci_ - di_) * 0.5
    o_r, o_i = (ci_ + di_) * 0.5, (dr_ - cr_) * 0.5
    tr, ti = wr * o_r - wi * o_i, wr * o_i + wi * o_r
    return er + tr, ei + ti, er - tr, ti - ei


@triton.jit
def _pack(yr, yi, ur, ui, wr, wi):
    """C2[k] and C2[M-k] from Y[k] = (yr, yi) and Y[M-k] = (ur, ui): A + T and conj(A - T) with
    A = Y[k] + conj Y[M-k], T = i conj(W) (Y[k] - conj Y[M-k])."""
    ar, ai = yr + ur, yi - ui
    br, bi = yr - ur, yi + ui
    tr, ti = -(wr * bi - wi * br), wr * br + wi * bi
    return ar + tr, ai + ti, ar - tr, ti - ai


@triton.jit
def _conv_spectrum_kernel(c, kf, out, D, M, H, inv_n, TF: tl.constexpr):
    pk, ch, b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    k = pk * TF + tl.arange(0, TF)
    km = k < H
    kr = tl.where(k == 0, 0, M - k)
    ang = -6.283185307179586 * k.to(tl.float32) * inv_n
    wr, wi = tl.cos(ang), tl.sin(ang)
    row = (b * D + ch) * M
    cr_, ci_ = _cload(c + row * 2, k, km)
    dr_, di_ = _cload(c + row * 2, kr, km)
    xr, xi, x2r, x2i = _unpack(cr_, ci_, dr_, di_, wr, wi)
    kr0, ki0 = _cload(kf + ch * (M + 1) * 2, k, km)
    kr1, ki1 = _cload(kf + ch * (M + 1) * 2, M - k, km)
    yr, yi = xr * kr0 - xi * ki0, xr * ki0 + xi * kr0
    ur, ui = x2r * kr1 - x2i * ki1, x2r * ki1 + x2i * kr1
    pr, pi, qr, qi = _pack(yr, yi, ur, ui, wr, wi)
    _cstore(out + row * 2, k, pr, pi, km)
    _cstore(out + row * 2, M - k, qr, qi, km & (k > 0))


@triton.jit
def _conv_grad_spectrum_kernel(cz, cg, kf, out, ppart, B, D, M, H, inv_n, BCH: tl.constexpr, TF: tl.constexpr):
    pk, ch, pbc = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    k = pk * TF + tl.arange(0, TF)
    km = k < H
    kr = tl.where(k == 0, 0, M - k)
    ang = -6.283185307179586 * k.to(tl.float32) * inv_n
    wr, wi = tl.cos(ang), tl.sin(ang)
    kr0, ki0 = _cload(kf + ch * (M + 1) * 2, k, km)
    kr1, ki1 = _cload(kf + ch * (M + 1) * 2, M - k, km)
    p0r = tl.zeros((TF,), tl.float32)
    p0i = tl.zeros((TF,), tl.float32)
    p1r = tl.zeros((TF,), tl.float32)
    p1i = tl.zeros((TF,), tl.float32)
    for bb in tl.range(0, BCH):
        b = pbc * BCH + bb
        m = km & (b < B)
        row = (b.to(tl.int64) * D + ch) * M
        cr_, ci_ = _cload(cz + row * 2, k, m)
        dr_, di_ = _cload(cz + row * 2, kr, m)
        zr, zi, z2r, z2i = _unpack(cr_, ci_, dr_, di_, wr, wi)
        cr_, ci_ = _cload(cg + row * 2, k, m)
        dr_, di_ = _cload(cg + row * 2, kr, m)
        gr, gi, g2r, g2i = _unpack(cr_, ci_, dr_, di_, wr, wi)
        p0r += zr * gr + zi * gi
        p0i += zr * gi - zi * gr
        p1r += z2r * g2r + z2i * g2i
        p1i += z2r * g2i - z2i * g2r
        yr, yi = gr * kr0 + gi * ki0, gi * kr0 - gr * ki0
        ur, ui = g2r * kr1 + g2i * ki1, g2i * kr1 - g2r * ki1
        pr, pi, qr, qi = _pack(yr, yi, ur, ui, wr, wi)
        _cstore(out + row * 2, k, pr, pi, m)
        _cstore(out + row * 2, M - k, qr, qi, m & (k > 0))
    prow = (pbc.to(tl.int64) * D + ch) * (M + 1) * 2
    _cstore(ppart + prow, k, p0r, p0i, km)
    _cstore(ppart + prow, M - k, p1r, p1i, km)


@triton.jit
def _modulate_kernel(h, t, deltas, k, L, D, shift, scale, HAS_SHIFT: tl.constexpr, TRANSPOSE_IN: tl.constexpr,
                     TL: tl.constexpr, TC: tl.constexpr):
    """k[c, l] = scale * h[l, c] * (exp(-t[l] |delta[c]|) + shift); with TRANSPOSE_IN, h is (D, L) and k (L, D)."""
    pl, pc = tl.program_id(0), tl.program_id(1)
    pos = pl * TL + tl.arange(0, TL)[:, None]
    c = pc * TC + tl.arange(0, TC)[None, :]
    m = (pos < L) & (c < D)
    if TRANSPOSE_IN:
        hv = tl.load(h + c.to(tl.int64) * L + pos, mask=m, other=0.0).to(tl.float32)
    else:
        hv = tl.load(h + pos.to(tl.int64) * D + c, mask=m, other=0.0).to(tl.float32)
    if HAS_SHIFT:
        tv = tl.load(t + pos, mask=pos < L, other=0.0).to(tl.float32)
        dv = tl.abs(tl.load(deltas + c, mask=c < D, other=0.0).to(tl.float32))
        hv = hv * (tl.exp(-tv * dv) + shift)
    hv = hv * scale
    if TRANSPOSE_IN:
        tl.store(k + pos.to(tl.int64) * D + c, hv.to(k.dtype.element_ty), mask=m)
    else:
        tl.store(k + c.to(tl.int64) * L + pos, hv.to(k.dtype.element_ty), mask=m)


@triton.jit
def _ln_fwd_kernel(x, o, w, b, h, mean, rstd, N, D, eps, HAS_O: tl.constexpr, TR: tl.constexpr, TD: tl.constexpr):
    r1 = tl.program_id(0).to(tl.int64) * TR + tl.arange(0, TR)
    rows = r1[:, None]
    cols = tl.arange(0, TD)[None, :]
    m = (rows < N) & (cols < D)
    r = tl.load(x + rows * D + cols, mask=m, other=0.0).to(tl.float32)
    if HAS_O:
        r += tl.load(o + rows * D + cols, mask=m, other=0.0).to(tl.float32)
    mu = tl.sum(r, axis=1) / D
    diff = tl.where(m, r - mu[:, None], 0.0)
    rs = 1.0 / tl.sqrt(tl.sum(diff * diff, axis=1) / D + eps)
    wv = tl.load(w + cols, mask=cols < D, other=0.0).to(tl.float32)
    bv = tl.load(b + cols, mask=cols < D, other=0.0).to(tl.float32)
    tl.store(h + rows * D + cols, (diff * rs[:, None] * wv + bv).to(h.dtype.element_ty), mask=m)
    tl.store(mean + r1, mu, mask=r1 < N)
    tl.store(rstd + r1, rs, mask=r1 < N)


@triton.jit
def _ln_bwd_kernel(dh, x, o, w, mean, rstd, dres, dx, dwpart, dbpart, N, D, TILES: tl.constexpr,
                   HAS_O: tl.constexpr, HAS_RES: tl.constexpr, TR: tl.constexpr, TD: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, TD)[None, :]
    cmask = cols < D
    wv = tl.load(w + cols, mask=cmask, other=0.0).to(tl.float32)
    accw = tl.zeros((TR, TD), tl.float32)
    accb = tl.zeros((TR, TD), tl.float32)
    for t in tl.range(0, TILES):
        rows = (pid * TILES + t).to(tl.int64) * TR + tl.arange(0, TR)[:, None]
        m = (rows < N) & cmask
        r = tl.load(x + rows * D + cols, mask=m, other=0.0).to(tl.float32)
        if HAS_O:
            r += tl.load(o + rows * D + cols, mask=m, other=0.0).to(tl.float32)
        mu = tl.load(mean + rows, mask=rows < N, other=0.0)
        rs = tl.load(rstd + rows, mask=rows < N, other=0.0)
        xhat = tl.where(m, (r - mu) * rs, 0.0)
        g = tl.load(dh + rows * D + cols, mask=m, other=0.0).to(tl.float32)
        wdh = g * wv
        c1 = tl.sum(wdh * xhat, axis=1)[:, None] / D
        c2 = tl.sum(wdh, axis=1)[:, None] / D
        d = rs * (wdh - c2 - xhat * c1)
        if HAS_RES:
            d += tl.load(dres + rows * D + cols, mask=m, other=0.0).to(tl.float32)
        tl.store(dx + rows * D + cols, d, mask=m)
        accw += g * xhat
        accb += g
    c = tl.arange(0, TD)
    tl.store(dwpart + pid * D + c, tl.sum(accw, axis=0), mask=c < D)
    tl.store(dbpart + pid * D + c, tl.sum(accb, axis=0), mask=c < D)


@triton.jit
def _tanh(u):
    e = tl.exp(-2.0 * tl.abs(u))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(u < 0, -t, t)


@triton.jit
def _gelu_bwd_kernel(dg, a, g, da, numel, TB: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * TB + tl.arange(0, TB)
    m = offs < numel
    av = tl.load(a + offs, mask=m, other=0.0).to(tl.float32)
    dv = tl.load(dg + offs, mask=m, other=0.0).to(tl.float32)
    beta = 0.7978845608028654  # sqrt(2 / pi)
    kappa = 0.044715
    t = _tanh(beta * (av + kappa * av * av * av))
    tl.store(g + offs, (0.5 * av * (1.0 + t)).to(g.dtype.element_ty), mask=m)
    dgelu = 0.5 * (1.0 + t) + 0.5 * av * (1.0 - t * t) * beta * (1.0 + 3.0 * kappa * av * av)
    tl.store(da + offs, (dv * dgelu).to(da.dtype.element_ty), mask=m)


@triton.jit
def _residual_kernel(x, o, a, out, numel, TB: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * TB + tl.arange(0, TB)
    m = offs < numel
    r = tl.load(x + offs, mask=m, other=0.0).to(tl.float32) + tl.load(o + offs, mask=m, other=0.0).to(tl.float32)
    tl.store(out + offs, r + tl.load(a + offs, mask=m, other=0.0).to(tl.float32), mask=m)


def _grid(L: int, D: int, B: int) -> tuple[int, int, int]:
    return triton.cdiv(L, BL), triton.cdiv(D, BC), B


def _zero_tail(buf: Tensor, L: int) -> None:
    if buf.shape[-1] > 2 * L:
        buf[..., 2 * L:].zero_()


class TritonOps:
    """The elementwise pieces of the fused Hyena block as Triton kernels (CUDA tensors)."""

    name = "triton"

    @staticmethod
    def pre(xz: Tensor, weight: Tensor, bias: Tensor, n: int) -> Tensor:
        B, L, C3 = xz.shape
        D, K = C3 // 3, weight.shape[-1]
        zpad = torch.empty(B, D, n, device=xz.device, dtype=torch.float32)
        _pre_kernel[_grid(L, D, B)](xz, weight.contiguous(), bias, zpad, L, D, n, K=K, TL=BL, TC=BC,
                                    num_warps=WARPS)
        _zero_tail(zpad, L)
        return zpad

    @staticmethod
    def post(yc: Tensor, xz: Tensor, weight: Tensor, bias: Tensor, dskip: Tensor,
             cdt: torch.dtype) -> tuple[Tensor, Tensor]:
        B, L, C3 = xz.shape
        D, K, n = C3 // 3, weight.shape[-1], yc.shape[-1]
        yt = torch.empty(B, L, D, device=xz.device, dtype=cdt)
        y = torch.empty(B, L, D, device=xz.device, dtype=cdt)
        _post_kernel[_grid(L, D, B)](yc, xz, weight.contiguous(), bias, dskip, yt, y, L, D, n, K=K, TL=BL, TC=BC,
                                     num_warps=WARPS)
        return yt, y

    @staticmethod
    def bwd_pre(dy: Tensor, xz: Tensor, weight: Tensor, bias: Tensor, yt: Tensor, n: int
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        B, L, C3 = xz.shape
        D, K = C3 // 3, weight.shape[-1]
        npl, tiles = _progs(triton.cdiv(L, BL), triton.cdiv(D, BC) * B)
        kw = {"device": xz.device, "dtype": torch.float32}
        gpad, zpad = torch.empty(B, D, n, **kw), torch.empty(B, D, n, **kw)
        y = torch.empty(B, L, D, device=xz.device, dtype=yt.dtype)
        dpart = torch.empty(B * npl, D, **kw)
        _bwd_pre_kernel[(npl, triton.cdiv(D, BC), B)](dy.contiguous(), xz, weight.contiguous(), bias, yt, gpad, zpad,
                                                       y, dpart, L, D, n, npl, TILES=tiles, K=K, TL=BL, TC=BC,
                                                       num_warps=WARPS)
        _zero_tail(gpad, L)
        _zero_tail(zpad, L)
        return gpad, zpad, dpart.sum(0), y

    @staticmethod
    def conv_spectrum(c: Tensor, kf: Tensor, n: int) -> Tensor:
        B, D, M = c.shape
        H, TF = M // 2 + 1, 512
        out = torch.empty_like(c)
        _conv_spectrum_kernel[(triton.cdiv(H, TF), D, B)](torch.view_as_real(c), torch.view_as_real(kf.contiguous()),
                                                          torch.view_as_real(out), D, M, H, 1.0 / n, TF=TF,
                                                          num_warps=4)
        return out

    @staticmethod
    def conv_grad_spectrum(cz: Tensor, cg: Tensor, kf: Tensor, n: int) -> tuple[Tensor, Tensor]:
        B, D, M = cz.shape
        H, TF = M // 2 + 1, 256
        bch = max(1, min(B, 16))
        nb = triton.cdiv(B, bch)
        out = torch.empty_like(cz)
        ppart = torch.empty(nb, D, M + 1, 2, device=cz.device, dtype=torch.float32)
        _conv_grad_spectrum_kernel[(triton.cdiv(H, TF), D, nb)](torch.view_as_real(cz), torch.view_as_real(cg),
                                                                torch.view_as_real(kf.contiguous()),
                                                                torch.view_as_real(out), ppart, B, D, M, H, 1.0 / n,
                                                                BCH=bch, TF=TF, num_warps=4)
        return out, torch.view_as_complex(ppart.sum(0))

    @staticmethod
    def bwd_post(dzc: Tensor, dy: Tensor, xz: Tensor, weight: Tensor, bias: Tensor, yt: Tensor, dskip: Tensor
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        B, L, C3 = xz.shape
        D, K, n = C3 // 3, weight.shape[-1], dzc.shape[-1]
        if K != 3:
            return TorchOps.bwd_post(dzc, dy, xz, weight, bias, yt, dskip)
        kw = {"device": xz.device, "dtype": torch.float32}
        TL = 8  # twelve (TL, BC) float32 accumulators stay in registers
        npl, tiles = _progs(triton.cdiv(L, TL), triton.cdiv(D, BC) * B)
        ds = torch.empty_like(xz)
        dwpart = torch.empty(B * npl, C3, K, **kw)
        dbpart = torch.empty(B * npl, C3, **kw)
        w = weight.contiguous()
        _bwd_ds_kernel[(npl, triton.cdiv(D, BC), B)](dzc, dy.contiguous(), xz, w, bias, yt, dskip, ds, dwpart,
                                                      dbpart, L, D, n, npl, TILES=tiles, TL=TL, TC=BC,
                                                      num_warps=WARPS)
        TL, TC = 16, 128
        npl2, tiles2 = _progs(triton.cdiv(L, TL), triton.cdiv(C3, TC) * B)
        dxz = torch.empty_like(xz)
        dinpart = torch.empty(B * npl2, C3, **kw)
        _conv_t_kernel[(npl2, triton.cdiv(C3, TC), B)](ds, w, dxz, dinpart, L, C3, npl2, TILES=tiles2, TL=TL, TC=TC,
                                                        num_warps=WARPS)
        return dxz, dwpart.sum(0), dbpart.sum(0), dinpart.sum(0)

    @staticmethod
    def modulate(h: Tensor, t: Tensor, deltas: Tensor, shift: float | None, scale: float) -> Tensor:
        L, D = h.shape
        k = torch.empty(D, L, device=h.device, dtype=torch.float32)
        _modulate_kernel[(triton.cdiv(L, 64), triton.cdiv(D, 64))](h.contiguous(), t.contiguous(), deltas.contiguous(),
                                                                   k, L, D, shift or 0.0, scale,
                                                                   HAS_SHIFT=shift is not None, TRANSPOSE_IN=False,
                                                                   TL=64, TC=64, num_warps=4)
        return k

    @staticmethod
    def modulate_bwd(dk: Tensor, t: Tensor, deltas: Tensor, shift: float | None, dtype: torch.dtype) -> Tensor:
        D, L = dk.shape
        dh = torch.empty(L, D, device=dk.device, dtype=dtype)
        _modulate_kernel[(triton.cdiv(L, 64), triton.cdiv(D, 64))](dk.contiguous(), t.contiguous(),
                                                                   deltas.contiguous(), dh, L, D, shift or 0.0, 1.0,
                                                                   HAS_SHIFT=shift is not None, TRANSPOSE_IN=True,
                                                                   TL=64, TC=64, num_warps=4)
        return dh

    @staticmethod
    def ln_fwd(x: Tensor, o: Tensor | None, weight: Tensor, bias: Tensor, eps: float, cdt: torch.dtype
               ) -> tuple[Tensor, Tensor, Tensor]:
        N, D = x.shape
        TD = triton.next_power_of_2(D)
        TR = max(1, 4096 // TD)
        h = torch.empty(N, D, device=x.device, dtype=cdt)
        mean = torch.empty(N, device=x.device, dtype=torch.float32)
        rstd = torch.empty_like(mean)
        _ln_fwd_kernel[(triton.cdiv(N, TR),)](x, x if o is None else o, weight, bias, h, mean, rstd, N, D, eps,
                                              HAS_O=o is not None, TR=TR, TD=TD, num_warps=8)
        return h, mean, rstd

    @staticmethod
    def ln_bwd(dh: Tensor, x: Tensor, o: Tensor | None, weight: Tensor, mean: Tensor, rstd: Tensor,
               dres: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        N, D = x.shape
        TD = triton.next_power_of_2(D)
        TR = max(1, 4096 // TD)
        nprog, tiles = _progs(triton.cdiv(N, TR), 1, target=8192)
        dx = torch.empty(N, D, device=x.device, dtype=torch.float32)
        dwpart = torch.empty(nprog, D, device=x.device, dtype=torch.float32)
        dbpart = torch.empty_like(dwpart)
        _ln_bwd_kernel[(nprog,)](dh.contiguous(), x, x if o is None else o, weight, mean, rstd,
                                 x if dres is None else dres.contiguous(), dx, dwpart, dbpart, N, D, TILES=tiles,
                                 HAS_O=o is not None, HAS_RES=dres is not None, TR=TR, TD=TD, num_warps=8)
        return dx, dwpart.sum(0), dbpart.sum(0)

    @staticmethod
    def residual(x: Tensor, o: Tensor, a: Tensor) -> Tensor:
        out = torch.empty(x.shape, device=x.device, dtype=torch.float32)
        TB = 4096
        _residual_kernel[(triton.cdiv(x.numel(), TB),)](x, o.contiguous(), a.contiguous(), out, x.numel(), TB=TB,
                                                        num_warps=8)
        return out

    gelu_fwd = staticmethod(TorchOps.gelu_fwd)

    @staticmethod
    def gelu_bwd(dg: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
        g, da = torch.empty_like(a), torch.empty_like(a)
        TB = 4096
        _gelu_bwd_kernel[(triton.cdiv(a.numel(), TB),)](dg.contiguous(), a, g, da, a.numel(), TB=TB, num_warps=8)
        return g, da
