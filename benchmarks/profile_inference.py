"""Where the time of chunked embedding and of decoding goes, on a GPU: kernel tables from torch.profiler.

    python benchmarks/profile_inference.py [--preset large-1m] [--embed-mb 2] [--context 65536] [--out DIR]

1. FFT lengths: the time of one complex FFT over (1, D, M) float32 for the lengths the chunked path
   uses (``fft_size`` of one chunk, of history + chunk) and the powers of two next to them.
2. ``embed_pooled`` of one random sequence of ``--embed-mb`` Mb (fused chunks, float32), run once
   untimed at the same length (FFT plans, Triton kernels), then timed and profiled: wall time and the
   kernels ranked by GPU time.
3. Generation after a ``--context`` prompt, batch 1, CUDA-graph decoding: 256 new tokens profiled the same
   way (the decoding step's graph and the sampling kernels around it).

Tables are printed and, with ``--out``, written to ``DIR/profile_*.txt``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from dnalm.inference.chunked import default_chunk_size
from dnalm.inference.embed import embed_pooled
from dnalm.inference.generate import GenerationOptions, generate
from dnalm.kernels.hyena_block import fft_size
from dnalm.models.hyena import HyenaConfig, HyenaLM

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MODE = "graph" if DEVICE == "cuda" else "static"


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeat: int = 1) -> float:
    sync()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync()
    return (time.perf_counter() - t0) / repeat


def kernel_table(fn, rows: int = 30) -> str:
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        sync()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=70)


def fft_lengths(model: HyenaLM, D: int) -> str:
    l_max = model.config.l_max
    T = default_chunk_size(model, 1)
    lines = [f"chunk T = {T}, l_max = {l_max}", "| M (complex points) | factors | ms per FFT (1, D, M) |",
             "|---|---|---|"]
    candidates = {fft_size(T) // 2, fft_size(l_max - 1 + T) // 2}
    for m in list(candidates):
        candidates.add(1 << (m - 1).bit_length())
    for M in sorted(candidates):
        x = torch.randn(1, D, M, dtype=torch.complex64, device=DEVICE)
        torch.fft.fft(x)
        ms = 1e3 * timed(lambda x=x: torch.fft.fft(x), repeat=5)
        r, f = M, []
        for p in (2, 3, 5, 7):
            while r % p == 0:
                r //= p
                f.append(p)
        lines.append(f"| {M:,} | {'x'.join(str(p) for p in sorted(set(f)))} | {ms:.2f} |")
        del x
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="large-1m")
    ap.add_argument("--embed-mb", type=float, default=2.0)
    ap.add_argument("--context", type=int, default=65536)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--out", default=None)
    ap.add_argument("--n-layer", type=int, default=None, help="override the preset's depth (CPU smoke runs)")
    args = ap.parse_args(argv)
    sizes = {"n_layer": args.n_layer} if args.n_layer else {}
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(0)
    model = HyenaLM(HyenaConfig.preset(args.preset, **sizes), device=torch.device(DEVICE)).eval()
    D = model.config.d_model
    rng = np.random.default_rng(0)
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)

    def emit(name: str, text: str) -> None:
        print(f"== {name}\n{text}", flush=True)
        if out:
            (out / f"profile_{name}.txt").write_text(text + "\n")

    emit("fft", fft_lengths(model, D))

    seq = rng.integers(7, 11, size=int(args.embed_mb * 1e6), dtype=np.int64)
    run = lambda: embed_pooled(model, [seq], layer=-1, pool="mean")  # noqa: E731
    run()
    t = timed(run)
    head = f"embed_pooled {args.embed_mb} Mb fp32: {t:.3f} s, {args.embed_mb / t:.3f} Mb/s\n"
    emit("embed", head + kernel_table(run))

    prompt = [rng.integers(7, 11, size=args.context, dtype=np.int64)]
    options = GenerationOptions(max_new_tokens=args.new_tokens, top_k=4, batch_size=1, decode=MODE)
    gen = lambda: generate(model, prompt, options)  # noqa: E731
    gen()
    short = GenerationOptions(max_new_tokens=2, top_k=4, batch_size=1, decode=MODE)
    t2 = timed(lambda: generate(model, prompt, short))
    tn = timed(gen)
    rate = (args.new_tokens - 2) / (tn - t2)
    emit("generate", f"generate {args.context} + {args.new_tokens}, batch 1, {MODE}: {tn:.3f} s "
         f"(2 tokens: {t2:.3f} s), {rate:.0f} tok/s\n" + kernel_table(gen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
