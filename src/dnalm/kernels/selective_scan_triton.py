"""The selective scan of :mod:`dnalm.models.mamba` as a Triton kernel (CUDA; forward only, no autograd).

Twin of :func:`dnalm.models.mamba.selective_scan_ref` (same arguments and results, ``delta_softplus`` on).
One program owns a block of ``BLOCK_E`` channels of one sequence and keeps their states h (BLOCK_E, N) in
registers while it walks the sequence in chunks of ``BLOCK_T`` positions: each chunk's inputs (u, delta,
z: (BLOCK_E, BLOCK_T); B, C: (N, BLOCK_T)) are loaded as tiles, then the positions of the chunk are
applied in order, each picked out of the tiles by a one-hot reduction, and the chunk's outputs are
stored as one tile. Everything is computed in float32; y is stored in u's dtype. The state before
position 0 may be given and the last state is returned, so sequences can be continued chunk by chunk.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _softplus(x):
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))


@triton.jit
def _scan_kernel(u_ptr, dt_ptr, z_ptr, b_ptr, c_ptr, a_ptr, d_ptr, bias_ptr, h0_ptr, y_ptr, hT_ptr,
                 E, N, L,
                 HAS_Z: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
                 BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_e = tl.program_id(1)
    e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)  # (BLOCK_E,)
    n = tl.arange(0, BLOCK_N)
    t = tl.arange(0, BLOCK_T)
    e_ok = e < E
    n_ok = n < N
    en_ok = e_ok[:, None] & n_ok[None, :]
    A = tl.load(a_ptr + e[:, None] * N + n[None, :], mask=en_ok, other=0.0).to(tl.float32)  # (BLOCK_E, BLOCK_N)
    Dv = tl.load(d_ptr + e, mask=e_ok, other=0.0).to(tl.float32) if HAS_D else tl.zeros([BLOCK_E], tl.float32)
    bias = tl.load(bias_ptr + e, mask=e_ok, other=0.0).to(tl.float32) if HAS_BIAS else tl.zeros([BLOCK_E], tl.float32)
    state_off = pid_b * E * N + e[:, None] * N + n[None, :]
    if HAS_H0:
        h = tl.load(h0_ptr + state_off, mask=en_ok, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BLOCK_E, BLOCK_N], tl.float32)
    row = pid_b * E * L + e[:, None] * L  # (BLOCK_E, 1)
    brow = pid_b * N * L + n[:, None] * L  # (BLOCK_N, 1)
    for start in range(0, L, BLOCK_T):
        pos = start + t  # (BLOCK_T,)
        p_ok = pos < L
        et_ok = e_ok[:, None] & p_ok[None, :]
        nt_ok = n_ok[:, None] & p_ok[None, :]
        u = tl.load(u_ptr + row + pos[None, :], mask=et_ok, other=0.0).to(tl.float32)  # (BLOCK_E, BLOCK_T)
        dt = _softplus(tl.load(dt_ptr + row + pos[None, :], mask=et_ok, other=0.0).to(tl.float32) + bias[:, None])
        Bt = tl.load(b_ptr + brow + pos[None, :], mask=nt_ok, other=0.0).to(tl.float32)  # (BLOCK_N, BLOCK_T)
        Ct = tl.load(c_ptr + brow + pos[None, :], mask=nt_ok, other=0.0).to(tl.float32)
        y = tl.zeros([BLOCK_E, BLOCK_T], tl.float32)
        for i in range(BLOCK_T):
            sel = (t == i)[None, :]  # one-hot over the chunk's positions
            dt_i = tl.sum(tl.where(sel, dt, 0.0), axis=1)  # (BLOCK_E,)
            u_i = tl.sum(tl.where(sel, u, 0.0), axis=1)
            B_i = tl.sum(tl.where(sel, Bt, 0.0), axis=1)  # (BLOCK_N,)
            C_i = tl.sum(tl.where(sel, Ct, 0.0), axis=1)
            h_new = tl.exp(dt_i[:, None] * A) * h + (dt_i * u_i)[:, None] * B_i[None, :]
            h = tl.where(start + i < L, h_new, h)
            y_i = tl.sum(h * C_i[None, :], axis=1) + Dv * u_i  # (BLOCK_E,)
            y = tl.where(sel, y_i[:, None], y)
        if HAS_Z:
            z = tl.load(z_ptr + row + pos[None, :], mask=et_ok, other=0.0).to(tl.float32)
            y = y * z * tl.sigmoid(z)
        tl.store(y_ptr + row + pos[None, :], y.to(y_ptr.dtype.element_ty), mask=et_ok)
    tl.store(hT_ptr + state_off, h, mask=en_ok)


def selective_scan_triton(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                          z: Tensor | None = None, delta_bias: Tensor | None = None,
                          state: Tensor | None = None, block_e: int = 32, block_t: int = 16) -> tuple[Tensor, Tensor]:
    """u, delta, z: (B, E, L); A: (E, N); B, C: (B, N, L); D, delta_bias: (E,); state (B, E, N) or None.

    Returns y (B, E, L) in ``u.dtype`` and the last state (B, E, N) in float32 (the state of
    ``delta_softplus=True`` in :func:`dnalm.models.mamba.selective_scan_ref`). CUDA tensors only.
    """
    Bsz, E, L = u.shape
    N = A.shape[1]
    u, delta, B, C = u.contiguous(), delta.contiguous(), B.contiguous(), C.contiguous()
    zc = z.contiguous() if z is not None else u
    A = A.float().contiguous()
    Dc = D.float().contiguous() if D is not None else A
    bias = delta_bias.float().contiguous() if delta_bias is not None else A
    h0 = state.float().contiguous() if state is not None else A
    y = torch.empty_like(u)
    hT = torch.empty(Bsz, E, N, device=u.device, dtype=torch.float32)
    grid = (Bsz, triton.cdiv(E, block_e))
    _scan_kernel[grid](u, delta, zc, B, C, A, Dc, bias, h0, y, hT, E, N, L,
                       HAS_Z=z is not None, HAS_D=D is not None, HAS_BIAS=delta_bias is not None,
                       HAS_H0=state is not None, BLOCK_E=block_e, BLOCK_N=triton.next_power_of_2(N),
                       BLOCK_T=block_t)
    return y, hT
