"""The selective scan of :mod:`dnalm.models.mamba` as Triton kernels (CUDA): a forward-only kernel and a
trainable pair (forward + backward) behind a ``torch.autograd.Function``.

:func:`selective_scan_triton` (no autograd) is the twin of :func:`dnalm.models.mamba.selective_scan_ref`
(same arguments and results, ``delta_softplus`` on). One program owns a block of ``BLOCK_E`` channels of
one sequence and keeps their states h (BLOCK_E, N) in registers while it walks the sequence in chunks of
``BLOCK_T`` positions: each chunk's inputs (u, delta, z: (BLOCK_E, BLOCK_T); B, C: (N, BLOCK_T)) are
loaded as tiles, then the positions of the chunk are applied in order, each picked out of the tiles by a
one-hot reduction, and the chunk's outputs are stored as one tile. Everything is computed in float32; y is
stored in u's dtype. The state before position 0 may be given and the last state is returned, so
sequences can be continued chunk by chunk.

:func:`selective_scan_triton_train` (same arguments and results) is differentiable in every input. The
softplus of ``delta + delta_bias``, the ``D u`` skip and the ``SiLU(z)`` gate stay in PyTorch (autograd
differentiates them); :class:`SelectiveScanFn` runs only the core recurrence, per sequence and channel::

    h_t = a_t * h_{t-1} + dt_t u_t B_t,   a_t = exp(dt_t A),   y_t = <h_t, C_t>       (h: (N,))

Its forward kernel (:func:`_scan_fwd_core`) also writes the state at the start of every tile of
``BLOCK_T`` positions (``hs``: (B, L / BLOCK_T, E, N), the only state saved for the backward pass: E N / T
numbers per position instead of the E N T of the chunked reference's decays). The backward kernel
(:func:`_scan_bwd_core`) walks the tiles from last to first with the gradient of the state
``dh = dLoss/dh_t`` (accumulated through later positions) in registers; per tile it recomputes the tile's
states from ``hs`` (the forward's arithmetic in the same order, so the same values), then per position,
from the last to the first::

    dh   += dy_t C_t                                   (y_t reads h_t)
    dC_t  = sum_e dy_t h_t
    ddt_t = sum_n dh (A a_t h_{t-1} + u_t B_t)
    du_t  = dt_t sum_n dh B_t
    dB_t  = sum_e dh dt_t u_t
    dA   += dh dt_t a_t h_{t-1}
    dh   *= a_t                                        (now dLoss/dh_{t-1})

and after position 0, ``dh`` is the gradient of the initial state. Both kernels compute in the dtype of
``hs``: float32, or float64 for float64 inputs (exact against the reference; used by the tests).
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


# ---------------------------------------------------------------------------------------------
# The trainable scan: forward with saved tile states, backward, autograd function
# ---------------------------------------------------------------------------------------------


@triton.jit
def _program_block(E, N, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr):
    """The sequence (64-bit: offsets of B E L and B L/T E N may pass 2^31) and channel block of this program,
    its channel, state and tile-position indices, their masks and the (BLOCK_E, BLOCK_N) offsets inside one
    (E, N) state."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_e = tl.program_id(1)
    e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, BLOCK_N)
    t = tl.arange(0, BLOCK_T)
    e_ok = e < E
    n_ok = n < N
    return pid_b, pid_e, e, n, t, e_ok, n_ok, e_ok[:, None] & n_ok[None, :], e[:, None] * N + n[None, :]


@triton.jit
def _scan_fwd_core(u_ptr, dt_ptr, b_ptr, c_ptr, a_ptr, h0_ptr, y_ptr, hs_ptr, hT_ptr,
                   E, N, L, n_tiles,
                   HAS_H0: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr):
    """``y_t = <h_t, C_t>``, ``h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t`` for one sequence and BLOCK_E channels.

    dt is the step after softplus. Stores y (B, E, L), the state before every tile of BLOCK_T positions into
    hs (B, n_tiles, E, N) and the last state into hT (B, E, N), all in hs's dtype (the compute dtype).
    Positions past L load dt = u = B = C = 0: the state passes through them unchanged (exp(0) = 1).
    """
    pid_b, pid_e, e, n, t, e_ok, n_ok, en_ok, en = _program_block(E, N, BLOCK_E, BLOCK_N, BLOCK_T)
    acc = hs_ptr.dtype.element_ty
    A = tl.load(a_ptr + en, mask=en_ok, other=0.0).to(acc)
    if HAS_H0:
        h = tl.load(h0_ptr + pid_b * E * N + en, mask=en_ok, other=0.0).to(acc)
    else:
        h = tl.zeros([BLOCK_E, BLOCK_N], acc)
    row = (pid_b * E + e[:, None]) * L  # (BLOCK_E, 1)
    brow = (pid_b * N + n[:, None]) * L  # (BLOCK_N, 1)
    hs_p = hs_ptr + pid_b * n_tiles * E * N + en  # the state slot of tile 0; + E N per tile
    for tile in range(n_tiles):
        tl.store(hs_p, h, mask=en_ok)
        hs_p += E * N
        pos = tile * BLOCK_T + t
        p_ok = pos < L
        et_ok = e_ok[:, None] & p_ok[None, :]
        nt_ok = n_ok[:, None] & p_ok[None, :]
        u = tl.load(u_ptr + row + pos[None, :], mask=et_ok, other=0.0).to(acc)  # (BLOCK_E, BLOCK_T)
        dt = tl.load(dt_ptr + row + pos[None, :], mask=et_ok, other=0.0).to(acc)
        Bt = tl.load(b_ptr + brow + pos[None, :], mask=nt_ok, other=0.0).to(acc)  # (BLOCK_N, BLOCK_T)
        Ct = tl.load(c_ptr + brow + pos[None, :], mask=nt_ok, other=0.0).to(acc)
        y = tl.zeros([BLOCK_E, BLOCK_T], acc)
        for i in range(BLOCK_T):
            sel = (t == i)[None, :]  # one-hot over the tile's positions
            dt_i = tl.sum(tl.where(sel, dt, 0.0), axis=1)  # (BLOCK_E,)
            u_i = tl.sum(tl.where(sel, u, 0.0), axis=1)
            B_i = tl.sum(tl.where(sel, Bt, 0.0), axis=1)  # (BLOCK_N,)
            C_i = tl.sum(tl.where(sel, Ct, 0.0), axis=1)
            h = tl.exp(dt_i[:, None] * A) * h + (dt_i * u_i)[:, None] * B_i[None, :]
            y = tl.where(sel, tl.sum(h * C_i[None, :], axis=1)[:, None], y)
        tl.store(y_ptr + row + pos[None, :], y, mask=et_ok)
    tl.store(hT_ptr + pid_b * E * N + en, h, mask=en_ok)


@triton.jit
def _scan_bwd_core(u_ptr, dt_ptr, b_ptr, c_ptr, a_ptr, hs_ptr, dy_ptr, dhT_ptr,
                   du_ptr, ddt_ptr, db_ptr, dc_ptr, da_ptr, dh0_ptr, scratch_ptr,
                   E, N, L, n_tiles, n_eblocks,
                   HAS_DHT: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr):
    """The gradients of :func:`_scan_fwd_core` for one sequence and BLOCK_E channels (see the module docstring).

    Stores du, ddt (B, E, L); this channel block's share of dB and dC into db, dc (B, n_eblocks, N, L) and of
    dA into da (B, E, N) (the caller sums the shares: no atomics, the same result every run); the gradient of
    the initial state into dh0 (B, E, N). dhT: the gradient of the last state (zero when not HAS_DHT).

    The states of a tile are recomputed into this program's slots of ``scratch`` (BLOCK_T states of
    (BLOCK_E, BLOCK_N): slot i = the state before the tile's position i) and read back in reverse order; a
    barrier separates the writes from the reads (other threads of the program read what one wrote) and the
    reads of one tile from the writes of the next.
    """
    pid_b, pid_e, e, n, t, e_ok, n_ok, en_ok, en = _program_block(E, N, BLOCK_E, BLOCK_N, BLOCK_T)
    acc = hs_ptr.dtype.element_ty
    A = tl.load(a_ptr + en, mask=en_ok, other=0.0).to(acc)
    if HAS_DHT:
        dh = tl.load(dhT_ptr + pid_b * E * N + en, mask=en_ok, other=0.0).to(acc)
    else:
        dh = tl.zeros([BLOCK_E, BLOCK_N], acc)
    dA = tl.zeros([BLOCK_E, BLOCK_N], acc)
    row = (pid_b * E + e[:, None]) * L  # (BLOCK_E, 1)
    brow = (pid_b * N + n[:, None]) * L  # (BLOCK_N, 1)
    prow = ((pid_b * n_eblocks + pid_e) * N + n[:, None]) * L  # this block's rows of the dB, dC shares
    slot = BLOCK_E * BLOCK_N
    sc = (scratch_ptr + (pid_b * n_eblocks + pid_e) * BLOCK_T * slot
          + tl.arange(0, BLOCK_E)[:, None] * BLOCK_N + n[None, :])  # slot 0 of this program
    hs_p = hs_ptr + (pid_b * n_tiles + n_tiles - 1) * E * N + en  # the last tile's state; - E N per tile
    for k in range(n_tiles):
        start = (n_tiles - 1 - k) * BLOCK_T
        pos = start + t
        p_ok = pos < L
        et_ok = e_ok[:, None] & p_ok[None, :]
        nt_ok = n_ok[:, None] & p_ok[None, :]
        u = tl.load(u_ptr + row + pos[None, :], mask=et_ok, other=0.0).to(acc)
        dt = tl.load(dt_ptr + row + pos[None, :], mask=et_ok, other=0.0).to(acc)
        dy = tl.load(dy_ptr + row + pos[None, :], mask=et_ok, other=0.0).to(acc)
        Bt = tl.load(b_ptr + brow + pos[None, :], mask=nt_ok, other=0.0).to(acc)
        Ct = tl.load(c_ptr + brow + pos[None, :], mask=nt_ok, other=0.0).to(acc)
        h = tl.load(hs_p, mask=en_ok, other=0.0)
        hs_p -= E * N
        tl.debug_barrier()  # every thread is done reading the previous tile's slots
        # Recompute the tile's states (the forward's arithmetic): slot i <- h_{i-1}; h ends as h_{T-1}.
        for i in range(BLOCK_T):
            sel = (t == i)[None, :]
            dt_i = tl.sum(tl.where(sel, dt, 0.0), axis=1)
            u_i = tl.sum(tl.where(sel, u, 0.0), axis=1)
            B_i = tl.sum(tl.where(sel, Bt, 0.0), axis=1)
            tl.store(sc + i * slot, h)
            h = tl.exp(dt_i[:, None] * A) * h + (dt_i * u_i)[:, None] * B_i[None, :]
        tl.debug_barrier()  # the slots are written before any thread reads them
        du = tl.zeros([BLOCK_E, BLOCK_T], acc)
        ddt = tl.zeros([BLOCK_E, BLOCK_T], acc)
        dB = tl.zeros([BLOCK_N, BLOCK_T], acc)
        dC = tl.zeros([BLOCK_N, BLOCK_T], acc)
        # Walk back: h holds h_i (the state after position i), h_prev = h_{i-1} comes from slot i.
        for j in range(BLOCK_T):
            i = BLOCK_T - 1 - j
            sel = (t == i)[None, :]
            dt_i = tl.sum(tl.where(sel, dt, 0.0), axis=1)  # (BLOCK_E,)
            u_i = tl.sum(tl.where(sel, u, 0.0), axis=1)
            dy_i = tl.sum(tl.where(sel, dy, 0.0), axis=1)
            B_i = tl.sum(tl.where(sel, Bt, 0.0), axis=1)  # (BLOCK_N,)
            C_i = tl.sum(tl.where(sel, Ct, 0.0), axis=1)
            h_prev = tl.load(sc + i * slot)
            dh += dy_i[:, None] * C_i[None, :]
            dC_i = tl.sum(h * dy_i[:, None], axis=0)  # (BLOCK_N,)
            a = tl.exp(dt_i[:, None] * A)
            g = dh * a * h_prev  # dLoss/d(dt_i A) elementwise
            dhB = tl.sum(dh * B_i[None, :], axis=1)  # (BLOCK_E,)
            ddt_i = tl.sum(g * A, axis=1) + u_i * dhB
            du_i = dt_i * dhB
            dB_i = tl.sum(dh * (dt_i * u_i)[:, None], axis=0)  # (BLOCK_N,)
            dA += g * dt_i[:, None]
            dh = dh * a
            h = h_prev
            du = tl.where(sel, du_i[:, None], du)
            ddt = tl.where(sel, ddt_i[:, None], ddt)
            dB = tl.where(sel, dB_i[:, None], dB)
            dC = tl.where(sel, dC_i[:, None], dC)
        tl.store(du_ptr + row + pos[None, :], du, mask=et_ok)
        tl.store(ddt_ptr + row + pos[None, :], ddt, mask=et_ok)
        tl.store(db_ptr + prow + pos[None, :], dB, mask=nt_ok)
        tl.store(dc_ptr + prow + pos[None, :], dC, mask=nt_ok)
    tl.store(da_ptr + pid_b * E * N + en, dA, mask=en_ok)
    tl.store(dh0_ptr + pid_b * E * N + en, dh, mask=en_ok)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _default_block_e(batch: int, channels: int, device: torch.device) -> int:
    """BLOCK_E: 32, halved (down to 8) while the grid (batch x channel blocks) has fewer programs than the GPU
    has multiprocessors (a long single sequence would otherwise leave most of them idle)."""
    block = 32
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        while block > 8 and batch * triton.cdiv(channels, block) < sms:
            block //= 2
    return block


def scan_core_forward(u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor | None,
                      block_e: int, block_t: int) -> tuple[Tensor, Tensor, Tensor]:
    """The core recurrence (see the module docstring) on contiguous tensors of the compute dtype.

    u, dt: (B, E, L); A: (E, N); B, C: (B, N, L); h0: (B, E, N) or None. Returns y (B, E, L), the last state
    (B, E, N) and the tile states hs (B, ceil(L / block_t), E, N).
    """
    Bsz, E, L = u.shape
    N = A.shape[1]
    n_tiles = triton.cdiv(L, block_t)
    y = torch.empty_like(u)
    hs = torch.empty(Bsz, n_tiles, E, N, device=u.device, dtype=u.dtype)
    hT = torch.empty(Bsz, E, N, device=u.device, dtype=u.dtype)
    grid = (Bsz, triton.cdiv(E, block_e))
    _scan_fwd_core[grid](u, dt, B, C, A, h0 if h0 is not None else A, y, hs, hT, E, N, L, n_tiles,
                         HAS_H0=h0 is not None, BLOCK_E=block_e, BLOCK_N=triton.next_power_of_2(N),
                         BLOCK_T=block_t)
    return y, hT, hs


def scan_core_backward(u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, hs: Tensor, dy: Tensor,
                       dhT: Tensor | None, block_e: int, block_t: int) -> tuple[Tensor, ...]:
    """Gradients of :func:`scan_core_forward` given dy (B, E, L) and dhT (B, E, N) or None (contiguous, compute
    dtype; ``hs`` and the blocks those of the forward). Returns du, ddt (B, E, L), dA (E, N), dB, dC (B, N, L)
    and dh0 (B, E, N)."""
    Bsz, E, L = u.shape
    N = A.shape[1]
    n_tiles = hs.shape[1]
    n_eb = triton.cdiv(E, block_e)
    BLOCK_N = triton.next_power_of_2(N)
    du, ddt = torch.empty_like(u), torch.empty_like(u)
    dB_parts = torch.empty(Bsz, n_eb, N, L, device=u.device, dtype=u.dtype)
    dC_parts = torch.empty_like(dB_parts)
    dA_parts = torch.empty(Bsz, E, N, device=u.device, dtype=u.dtype)
    dh0 = torch.empty(Bsz, E, N, device=u.device, dtype=u.dtype)
    scratch = torch.empty(Bsz * n_eb * block_t * block_e * BLOCK_N, device=u.device, dtype=u.dtype)
    _scan_bwd_core[(Bsz, n_eb)](u, dt, B, C, A, hs, dy, dhT if dhT is not None else A,
                                du, ddt, dB_parts, dC_parts, dA_parts, dh0, scratch,
                                E, N, L, n_tiles, n_eb,
                                HAS_DHT=dhT is not None, BLOCK_E=block_e, BLOCK_N=BLOCK_N, BLOCK_T=block_t)
    return du, ddt, dA_parts.sum(0), dB_parts.sum(1), dC_parts.sum(1), dh0


class SelectiveScanFn(torch.autograd.Function):
    """``(y, h_last) = scan(u, dt, A, B, C, h0)``: the core recurrence (no softplus, D or gate) with autograd.

    Inputs in one floating dtype (float32 or float64: the compute dtype); ``h0`` may be None (zeros). Saves u,
    dt, A, B, C and the tile states (E N numbers per ``block_t`` positions); the backward kernel recomputes the
    states in between.
    """

    @staticmethod
    def forward(ctx, u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor | None,
                block_e: int, block_t: int) -> tuple[Tensor, Tensor]:
        u, dt, A, B, C = (x.contiguous() for x in (u, dt, A, B, C))
        h0 = h0.contiguous() if h0 is not None else None
        y, hT, hs = scan_core_forward(u, dt, A, B, C, h0, block_e, block_t)
        ctx.save_for_backward(u, dt, A, B, C, hs)
        ctx.blocks = (block_e, block_t)
        ctx.has_h0 = h0 is not None
        return y, hT

    @staticmethod
    def backward(ctx, dy: Tensor | None, dhT: Tensor | None):
        u, dt, A, B, C, hs = ctx.saved_tensors
        dy = torch.zeros_like(u) if dy is None else dy.to(u.dtype).contiguous()
        dhT = None if dhT is None else dhT.to(u.dtype).contiguous()
        du, ddt, dA, dB, dC, dh0 = scan_core_backward(u, dt, A, B, C, hs, dy, dhT, *ctx.blocks)
        return du, ddt, dA, dB, dC, (dh0 if ctx.has_h0 else None), None, None


def selective_scan_triton_train(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                                z: Tensor | None = None, delta_bias: Tensor | None = None,
                                state: Tensor | None = None, block_e: int | None = None,
                                block_t: int = 16) -> tuple[Tensor, Tensor]:
    """:func:`selective_scan_triton`'s arguments and results, differentiable in every input (``state`` too).

    ``delta <- softplus(delta + delta_bias)``, ``y <- (y + D u) SiLU(z)`` and the casts run in PyTorch around
    :class:`SelectiveScanFn`. Computed in float32 (float64 for float64 inputs); returns y (B, E, L) in
    ``u.dtype`` and the last state (B, E, N) in the compute dtype. ``block_e``: channels per program (default
    :func:`_default_block_e`); ``block_t``: positions per tile (the backward pass keeps one state per tile).
    """
    from dnalm.models.mamba import _scan_inputs, _scan_output

    dtype = u.dtype
    u, delta, A, B, C = _scan_inputs(u, delta, A, B, C, delta_bias, True)
    h0 = None if state is None else state.to(u.dtype)
    block_e = block_e or _default_block_e(u.shape[0], u.shape[1], u.device)
    y, hT = SelectiveScanFn.apply(u, delta, A, B, C, h0, block_e, block_t)
    return _scan_output(y, u, D, z, dtype), hT
