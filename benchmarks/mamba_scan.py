"""Selective-scan paths of dnalm.models.mamba on one GPU: agreement with the reference and time.

``python benchmarks/mamba_scan.py [--sweep] [--lm-lengths 1k,4k,...,1M] [--budget 65536]`` (CUDA). Prints:

* per shape, the largest difference of the forward-only Triton scan from the chunked PyTorch reference
  (float32) and the forward time of each path;
* per shape, the trainable Triton scan (``selective_scan_triton_train``) against the reference: the largest
  absolute difference of y and of every gradient (u, delta, A, B, C, D, z, delta_bias) and that difference
  relative to the reference's largest magnitude, for a random upstream gradient; on the first shape also
  against the reference in float64 (the float32 reference has rounding of its own); forward + backward time
  and peak memory of each path;
* with ``--sweep``: forward + backward time of the trainable scan for each (BLOCK_E, BLOCK_T) on two shapes;
* a training step (bf16 autocast, AdamW; :func:`dnalm.evaluate.speed.measure`) of a Mamba LM with d_model 256
  and 8 layers (preset ``medium``) at ``--lm-lengths`` with ``--budget`` tokens per step (batch = budget /
  length), on the Triton path and on the reference (the latter up to ``--ref-max-length``: its Python loop
  over chunks of 1-16 positions makes longer steps take minutes);
* the forward time of Caduceus-PS (d_model 256, 16 layers) at a few lengths through each path.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from dnalm.evaluate.speed import ceilings, length_label, measure, parse_length
from dnalm.kernels.selective_scan_triton import selective_scan_triton, selective_scan_triton_train
from dnalm.models.mamba import CaduceusConfig, CaduceusLM, MambaConfig, MambaLM, selective_scan_ref

SHAPES = ((2, 512, 16, 1024), (1, 512, 16, 16384), (8, 1024, 16, 4096))
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def timed(fn, repeat: int = 3) -> float:
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeat


def scan_inputs(b: int, E: int, N: int, L: int, dev: str = "cuda") -> dict[str, torch.Tensor]:
    u, delta, z = (torch.randn(b, E, L, device=dev) for _ in range(3))
    B, C = (torch.randn(b, N, L, device=dev) for _ in range(2))
    A = -torch.rand(E, N, device=dev) * 4
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=torch.randn(E, device=dev), z=z,
                delta_bias=torch.randn(E, device=dev))


def forward_backward(fn, x: dict[str, torch.Tensor], dy: torch.Tensor) -> dict[str, torch.Tensor]:
    """y and the gradients of <y, dy> with respect to every input of ``fn``."""
    x = {k: v.detach().requires_grad_() for k, v in x.items()}
    y, _ = fn(**x)
    grads = torch.autograd.grad(y, list(x.values()), dy)
    return {"y": y.detach(), **dict(zip(GRAD_NAMES, grads, strict=True))}


def relative_errors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> dict[str, tuple[float, float]]:
    """Per tensor: the largest absolute difference and that difference over the reference's largest magnitude."""
    errors = {}
    for k in want:
        err = float((got[k].double() - want[k].double()).abs().max())
        errors[k] = (err, err / max(float(want[k].abs().max()), 1e-30))
    return errors


def differences(errors: dict[str, tuple[float, float]]) -> str:
    """:func:`relative_errors` as 'name absolute (relative)' items."""
    return ", ".join(f"{k} {err:.1e} ({rel:.1e})" for k, (err, rel) in errors.items())


def forward_only() -> None:
    for b, E, N, L in SHAPES:
        x = scan_inputs(b, E, N, L)
        args = tuple(x.values())
        ref, ref_h = selective_scan_ref(*args)
        tri, tri_h = selective_scan_triton(*args)
        err = float((tri - ref).abs().max())
        t_ref = timed(lambda args=args: selective_scan_ref(*args))
        t_tri = timed(lambda args=args: selective_scan_triton(*args))
        print(f"scan B={b} E={E} N={N} L={L}: max|triton-ref| {err:.2e} (scale {float(ref.abs().max()):.1f}), "
              f"state {float((tri_h - ref_h).abs().max()):.2e}; ref {t_ref * 1e3:.1f} ms, triton {t_tri * 1e3:.2f} ms")


def trainable() -> None:
    for i, (b, E, N, L) in enumerate(SHAPES):
        x = scan_inputs(b, E, N, L)
        dy = torch.randn(b, E, L, device="cuda")
        got = forward_backward(selective_scan_triton_train, x, dy)
        print(f"train scan B={b} E={E} N={N} L={L}: max abs difference (relative to the reference's max):")
        try:
            want = forward_backward(selective_scan_ref, x, dy)
            print(f"  vs reference float32: {differences(relative_errors(got, want))}")
            del want
        except torch.OutOfMemoryError:
            print("  vs reference float32: out of memory")
        if i == 0:
            want64 = forward_backward(selective_scan_ref, {k: v.double() for k, v in x.items()}, dy.double())
            print(f"  vs reference float64: {differences(relative_errors(got, want64))}")
            del want64
        del got
        for name, fn in (("triton", selective_scan_triton_train), ("reference", selective_scan_ref)):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            try:
                t = timed(lambda fn=fn, x=x, dy=dy: forward_backward(fn, x, dy))
            except torch.OutOfMemoryError:
                print(f"  forward+backward {name}: out of memory")
                continue
            peak = torch.cuda.max_memory_allocated() / 2**30
            print(f"  forward+backward {name}: {t * 1e3:.1f} ms, peak {peak:.2f} GiB")


def check(rel_tol: float = 1e-4) -> int:
    """Exit status 0 when the trainable scan's output and gradients on CUDA agree with the float64 reference
    to ``rel_tol`` of each tensor's largest magnitude (float32 rounding is ~1e-6 there), else 1."""
    x = scan_inputs(2, 200, 16, 1001)
    dy = torch.randn(2, 200, 1001, device="cuda")
    got = forward_backward(selective_scan_triton_train, x, dy)
    want = forward_backward(selective_scan_ref, {k: v.double() for k, v in x.items()}, dy.double())
    errors = relative_errors(got, want)
    worst = max(rel for _, rel in errors.values())
    print(f"trainable scan on CUDA vs float64 reference: {differences(errors)}; worst relative {worst:.1e}")
    return 0 if worst <= rel_tol else 1


def sweep() -> None:
    for b, E, N, L in ((1, 512, 16, 16384), (8, 1024, 16, 4096)):
        x = scan_inputs(b, E, N, L)
        dy = torch.randn(b, E, L, device="cuda")
        cells = []
        for block_e in (4, 8, 16, 32, 64):
            for block_t in (8, 16, 32):
                def fn(block_e=block_e, block_t=block_t, **kw):
                    return selective_scan_triton_train(**kw, block_e=block_e, block_t=block_t)
                t = timed(lambda fn=fn, x=x, dy=dy: forward_backward(fn, x, dy))
                cells.append(f"E{block_e}/T{block_t} {t * 1e3:.1f}")
        print(f"sweep B={b} E={E} N={N} L={L} forward+backward ms: " + ", ".join(cells))


def lm_training(lengths: list[int], budget: int, ref_max_length: int) -> None:
    ceil = ceilings()
    cfg = MambaConfig.preset("medium")
    print(f"Mamba LM d_model {cfg.d_model}, {cfg.n_layer} layers, training step at {budget} tokens per step:")
    for path in ("triton", "reference"):
        torch.manual_seed(0)
        model = MambaLM(MambaConfig.preset("medium", fast_path=path)).cuda()
        for L in lengths:
            if path == "reference" and L > ref_max_length:
                continue
            row = measure(model, "mamba", "train", L, budget, "medium", ceil, steps=3, warmup=1)
            if row.step_ms is None:
                print(f"  {path} L={length_label(L)} batch {row.batch}: {row.note}")
                continue
            print(f"  {path} L={length_label(L)} batch {row.batch}: {row.step_ms:.1f} ms/step, "
                  f"{row.tokens_per_s:,.0f} tokens/s, peak {row.peak_gib:.2f} GiB")
        del model
        torch.cuda.empty_cache()


def caduceus_forward() -> None:
    for path in ("triton", "reference"):
        model = CaduceusLM(CaduceusConfig.preset("ps-131k", fast_path=path)).cuda().eval()
        for L in (1024, 16384, 131072):
            if path == "reference" and L > 16384:
                continue
            ids = torch.randint(7, 11, (1, L), device="cuda")
            with torch.no_grad():
                t = timed(lambda model=model, ids=ids: model(ids), repeat=2)
            print(f"caduceus-ps-131k forward fp32 L={L} path={path}: {t * 1e3:.1f} ms, "
                  f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", action="store_true", help="time the trainable scan for each block size")
    parser.add_argument("--lm-lengths", default="1k,4k,16k,64k,256k,1M",
                        help="lengths of the Mamba LM training steps (empty: none)")
    parser.add_argument("--budget", type=parse_length, default=65536, help="tokens per training step")
    parser.add_argument("--ref-max-length", type=parse_length, default=16384,
                        help="longest length the reference path trains at")
    parser.add_argument("--check", action="store_true",
                        help="only check the trainable scan against the float64 reference (exit status 1 if off)")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(torch.cuda.get_device_name(), torch.__version__)
    if args.check:
        sys.exit(check())
    forward_only()
    trainable()
    if args.sweep:
        sweep()
    lengths = [parse_length(s) for s in args.lm_lengths.split(",") if s]
    if lengths:
        lm_training(lengths, args.budget, args.ref_max_length)
    caduceus_forward()


if __name__ == "__main__":
    main()
