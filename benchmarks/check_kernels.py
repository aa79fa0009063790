"""Check the Triton kernels of the fused Hyena block against their PyTorch twins and the reference block, on a GPU.

    python benchmarks/check_kernels.py [--out check_kernels.md]

Every comparison draws fresh random inputs and reports ``||fast - ref|| / ||ref||``: each Triton
kernel against :class:`dnalm.kernels.hyena_torch.TorchOps` (float32 and bf16 inputs), then the whole
fused block against the reference :class:`dnalm.models.blocks.Block` (outputs and every gradient),
in float32 and under bf16 autocast, with the HyenaDNA-large width (D = 256, d_inner = 1024).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dnalm.kernels.hyena_block import fft_size, hyena_block_forward
from dnalm.kernels.hyena_torch import TorchOps
from dnalm.kernels.hyena_triton import TritonOps
from dnalm.models.hyena import HyenaConfig, HyenaLM


def rel(a, b) -> float:
    if isinstance(a, tuple):
        return max(rel(x, y) for x, y in zip(a, b, strict=True))
    a, b = (torch.view_as_real(t) if t.is_complex() else t for t in (a, b))
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    assert torch.isfinite(a).all()
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def kernel_rows(B: int, L: int, D: int, K: int, dtype: torch.dtype) -> list[tuple[str, float]]:
    def r(*shape, dt=torch.float32):
        return torch.randn(*shape, device="cuda").to(dt)

    n = fft_size(L)
    xz, w, b, dsk = r(B, L, 3 * D, dt=dtype), r(3 * D, K), r(3 * D), r(D)
    out = [("pre", rel(TritonOps.pre(xz, w, b, n), TorchOps.pre(xz, w, b, n)))]
    yc = r(B, D, n)
    out.append(("post", rel(TritonOps.post(yc, xz, w, b, dsk, dtype), TorchOps.post(yc, xz, w, b, dsk, dtype))))
    yt, dy = r(B, L, D, dt=dtype), r(B, L, D, dt=dtype)
    out.append(("bwd_pre", rel(TritonOps.bwd_pre(dy, xz, w, b, yt, n), TorchOps.bwd_pre(dy, xz, w, b, yt, n))))
    dzc = r(B, D, n)
    out.append(("bwd_post", rel(TritonOps.bwd_post(dzc, dy, xz, w, b, yt, dsk),
                                TorchOps.bwd_post(dzc, dy, xz, w, b, yt, dsk))))
    M = n // 2
    cz, cg, kf = (torch.complex(r(*s), r(*s)) for s in ((B, D, M), (B, D, M), (D, M + 1)))
    out.append(("conv_spectrum", rel(TritonOps.conv_spectrum(cz, kf, n), TorchOps.conv_spectrum(cz, kf, n))))
    out.append(("conv_grad_spectrum", rel(TritonOps.conv_grad_spectrum(cz, cg, kf, n),
                                          TorchOps.conv_grad_spectrum(cz, cg, kf, n))))
    h, t, dk = r(L, D, dt=dtype), torch.linspace(0, 1, L, device="cuda"), r(D, L)
    out.append(("modulate", rel(TritonOps.modulate(h, t, dsk, 0.05, 1 / n), TorchOps.modulate(h, t, dsk, 0.05, 1 / n))))
    out.append(("modulate_bwd", rel(TritonOps.modulate_bwd(dk, t, dsk, 0.05, dtype),
                                    TorchOps.modulate_bwd(dk, t, dsk, 0.05, dtype))))
    N = B * L
    x, o, lw, lb, dh, dres = r(N, D), r(N, D, dt=dtype), r(D), r(D), r(N, D, dt=dtype), r(N, D)
    fa, fb = TritonOps.ln_fwd(x, o, lw, lb, 1e-5, dtype), TorchOps.ln_fwd(x, o, lw, lb, 1e-5, dtype)
    out.append(("ln_fwd", rel(fa, fb)))
    out.append(("ln_bwd", rel(TritonOps.ln_bwd(dh, x, o, lw, fb[1], fb[2], dres),
                              TorchOps.ln_bwd(dh, x, o, lw, fb[1], fb[2], dres))))
    a, dg = 3 * r(N, 4 * D, dt=dtype), r(N, 4 * D, dt=dtype)
    out.append(("gelu_bwd", rel(TritonOps.gelu_bwd(dg, a), TorchOps.gelu_bwd(dg, a))))
    out.append(("residual", rel(TritonOps.residual(x, o, dh), TorchOps.residual(x, o, dh))))
    return out


def block_rows(B: int, L: int, amp: bool) -> list[tuple[str, float]]:
    """The fused block (Triton kernels) against the reference block: output and every gradient."""
    cfg = HyenaConfig.preset("large-1m", n_layer=1, l_max=L + 2)
    block = HyenaLM(cfg, device="cuda").backbone.layers[0]
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(B, L, cfg.d_model, device="cuda", requires_grad=True)
    dout = torch.randn(B, L, cfg.d_model, device="cuda")
    params = [x, *block.parameters()]
    names = ["x"] + [n for n, _ in block.named_parameters()]
    results = []
    for path in ("reference", "fused"):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            if path == "reference":
                block.mixer.fast_path = "reference"
                out = block(x)
                block.mixer.fast_path = "auto"
            else:
                out = hyena_block_forward(block, x, TritonOps)
        results.append((out.detach(), torch.autograd.grad(out, params, dout)))
    (ref, ref_grads), (out, grads) = results
    rows = [("block output", rel(out, ref))]
    return rows + [(f"grad {n}", rel(g, r)) for n, g, r in zip(names, grads, ref_grads, strict=True)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.manual_seed(0)
    lines = [f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}", "",
             "| check | shape | dtype | rel. error |", "|---|---|---|---|"]
    for B, L, D, K in ((2, 8192, 256, 3), (3, 1000, 256, 3), (1, 4099, 96, 4)):
        for dtype in (torch.float32, torch.bfloat16):
            for name, err in kernel_rows(B, L, D, K, dtype):
                lines.append(f"| kernel {name} | B={B} L={L} D={D} K={K} | {str(dtype)[6:]} | {err:.2e} |")
    for B, L in ((4, 4096), (1, 20000)):
        for amp in (False, True):
            for name, err in block_rows(B, L, amp):
                lines.append(f"| block {name} | B={B} L={L} | {'bf16 autocast' if amp else 'float32'} | {err:.2e} |")
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    if a.out:
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
