"""Selective-scan paths of dnalm.models.mamba on one GPU: agreement with the reference and time.

``python benchmarks/mamba_scan.py`` (CUDA). Prints, per shape, the largest difference of the Triton scan from
the chunked PyTorch reference (float32) and the time of each path, and the forward time of Caduceus-PS
(d_model 256, 16 layers) at a few lengths through each path.
"""

from __future__ import annotations

import time

import torch

from dnalm.kernels.selective_scan_triton import selective_scan_triton
from dnalm.models.mamba import CaduceusConfig, CaduceusLM, selective_scan_ref


def timed(fn, repeat: int = 3) -> float:
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeat


def main() -> None:
    torch.manual_seed(0)
    dev = "cuda"
    print(torch.cuda.get_device_name(), torch.__version__)
    for b, E, N, L in ((2, 512, 16, 1024), (1, 512, 16, 16384), (8, 1024, 16, 4096)):
        u, delta, z = (torch.randn(b, E, L, device=dev) for _ in range(3))
        B, C = (torch.randn(b, N, L, device=dev) for _ in range(2))
        A = -torch.rand(E, N, device=dev) * 4
        D, bias = torch.randn(E, device=dev), torch.randn(E, device=dev)
        ref, ref_h = selective_scan_ref(u, delta, A, B, C, D, z, bias)
        tri, tri_h = selective_scan_triton(u, delta, A, B, C, D, z, bias)
        err = float((tri - ref).abs().max())
        args = (u, delta, A, B, C, D, z, bias)
        t_ref = timed(lambda args=args: selective_scan_ref(*args))
        t_tri = timed(lambda args=args: selective_scan_triton(*args))
        print(f"scan B={b} E={E} N={N} L={L}: max|triton-ref| {err:.2e} (scale {float(ref.abs().max()):.1f}), "
              f"state {float((tri_h - ref_h).abs().max()):.2e}; ref {t_ref * 1e3:.1f} ms, triton {t_tri * 1e3:.2f} ms")
    for path in ("triton", "reference"):
        model = CaduceusLM(CaduceusConfig.preset("ps-131k", fast_path=path)).to(dev).eval()
        for L in (1024, 16384, 131072):
            if path == "reference" and L > 16384:
                continue
            ids = torch.randint(7, 11, (1, L), device=dev)
            with torch.no_grad():
                t = timed(lambda model=model, ids=ids: model(ids), repeat=2)
            print(f"caduceus-ps-131k forward fp32 L={L} path={path}: {t * 1e3:.1f} ms, "
                  f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
