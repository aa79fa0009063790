"""Inference speed at length: step-by-step generation against a full recompute, and chunked embedding.

    python benchmarks/inference_bench.py [--preset large-1m] [--contexts 1024,8192,65536] [--batches 1,32]
        [--new-tokens 256] [--embed-mb 1,10,100] [--precisions 32,bf16] [--budget-s 240] [--out results.json]

Generation (dnalm.inference.generate, top-k sampling over A/C/G/T, fp32 weights): for every context c and
batch B, a random prompt of c tokens is prefilled (not timed) and extended by N tokens through the
decoding loop of ``generate``. The decode rate is B * (N - 2) divided by the loop's time for N tokens minus
its time for 2 (the capture of the graph at the first step, or the compiled step's first call, cancel; the
prefill, which at 64k and batch 32 takes ten times the decoding of 256 tokens, is outside both), for each
decoding mode of dnalm.inference.decode (``--modes``: eager steps with sampling on the host, or the step
and the sampling on the device, replayed as one CUDA graph, plain or after ``torch.compile``); the naive
rate is B divided by the time of one full forward over c tokens (what a recompute per new token costs at
least); everything is run once untimed first (with ``compiled``, that is where the
compilation happens). ``step_ms`` is the time of one decoding step alone (no sampling, no copies to
the host), the device's share of the decode time.

Embedding (dnalm.inference.embed.embed_pooled, chunks carrying the long-convolution history): one random
sequence of 1, 10 and 100 Mb, mean-pooled final hidden state, in each ``--precisions`` (``32``: float32;
``bf16``: the chunks under bf16 autocast), after an untimed warm-up on 50 kb; bases/s and peak GPU memory.
The table also
gives the element count of the widest tensor an unchunked forward would need (d_inner x length), to show
the runs past 2^31 elements.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from dnalm.inference.decode import Stepper
from dnalm.inference.embed import embed_pooled
from dnalm.inference.generate import GenerationOptions, decode_loop, row_generator
from dnalm.models.hyena import HyenaConfig, HyenaLM


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def random_ids(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(7, 11, size=n, dtype=np.int64)  # A C G T of the character tokenizer


def bench_generation(model: HyenaLM, device: torch.device, context: int, batch: int, new_tokens: int,
                     rng: np.random.Generator, modes: list[str]) -> dict:
    prompts = [random_ids(context, rng) for _ in range(batch)]
    row: dict = {"context": context, "batch": batch, "new_tokens": new_tokens}
    ids = torch.from_numpy(np.stack(prompts)).to(device)
    with torch.inference_mode():
        model(ids)  # warm-up at this length (FFT plans, allocator), not timed
        t_full = _timed(lambda: model(ids), device)
    row["naive_tok_s"] = round(batch / t_full, 1)
    row["prefill_s"] = round(prefill_time(model, ids, device), 4)
    for mode in modes:
        def loop_time(n: int, mode: str = mode) -> float:
            """Seconds of the decoding loop of ``generate`` after a prefill (not timed) for n new tokens."""
            options = GenerationOptions(max_new_tokens=n, top_k=4, batch_size=batch, decode=mode)
            forced = np.zeros((batch, context + n), dtype=np.int64)
            forced[:, :context] = np.stack(prompts)
            rows = [row_generator(0, b, 0) for b in range(batch)]
            with torch.inference_mode():
                state = model.allocate_state(batch, context + n - 1)
                logits = model(ids, state=state)[:, -1]
                return _timed(lambda: decode_loop(model, state, logits, forced, [context] * batch, rows, options),
                              device)

        # warm-up at both timed lengths (filters, allocator, kernels; a graph is captured once per loop;
        # 'compiled' compiles once per state size, i.e. per prompt + new-token count)
        loop_time(2)
        loop_time(new_tokens)
        t2, tn = loop_time(2), loop_time(new_tokens)
        decode = batch * (new_tokens - 2) / max(tn - t2, 1e-9)
        row[f"decode_tok_s_{mode}"] = round(decode, 1)
        row[f"speedup_{mode}"] = round(decode * t_full / batch, 1)
        row[f"step_ms_{mode}"] = round(1e3 * bench_steps(model, ids, new_tokens, mode, device), 3)
    return row


def prefill_time(model: HyenaLM, ids: torch.Tensor, device: torch.device) -> float:
    """Seconds of the forward over the prompts that fills a fresh inference state."""
    with torch.inference_mode():
        state = model.allocate_state(ids.shape[0], ids.shape[1] + 1)
        return _timed(lambda: model(ids, state=state), device)


def bench_steps(model: HyenaLM, ids: torch.Tensor, n: int, mode: str, device: torch.device) -> float:
    """Seconds per decoding step alone (the model's step, no sampling or host copies): the part of the
    decode time that is the device's."""
    with torch.inference_mode():
        state = model.allocate_state(ids.shape[0], ids.shape[1] + n)
        model(ids, state=state)
        step = Stepper(model, state, mode)
        tok = ids[:, -1:].clone()
        for _ in range(3):
            step(tok)
        t = _timed(lambda: [step(tok) for _ in range(n - 3)], device)
    return t / (n - 3)


def bench_embedding(model: HyenaLM, device: torch.device, megabases: float, rng: np.random.Generator,
                    precision: str = "32") -> dict:
    n = int(megabases * 1_000_000)
    seq = random_ids(n, rng)
    embed_pooled(model, [seq[:50_000]], layer=-1, pool="mean", precision=precision)  # kernels compiled, not timed
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = _timed(lambda: embed_pooled(model, [seq], layer=-1, pool="mean", precision=precision), device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    d_inner = model.backbone.layers[0].mlp.fc1.out_features
    return {"megabases": megabases, "precision": precision, "seconds": round(t, 2),
            "mb_per_s": round(megabases / t, 3),
            "peak_gib": round(peak, 2), "unchunked_widest_elements": n * d_inner,
            "exceeds_2_31": n * d_inner > 2**31}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="large-1m")
    ap.add_argument("--n-layer", type=int, default=None, help="override the preset's depth (CPU smoke runs)")
    ap.add_argument("--d-model", type=int, default=None)
    ap.add_argument("--contexts", default="1024,8192,65536")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--modes", default="eager,graph,compiled", help="decoding modes (dnalm.inference.decode)")
    ap.add_argument("--embed-mb", default="1,10,100")
    ap.add_argument("--precisions", default="32,bf16", help="embedding precisions (32 | bf16), each size in each")
    ap.add_argument("--fast-path", default="auto", help="Hyena fast_path: auto | fused | reference")
    ap.add_argument("--budget-s", type=float, default=300.0, help="skip what starts after this many seconds")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None, help="JSON file with every row (rewritten after each one)")
    args = ap.parse_args(argv)

    torch.backends.cuda.matmul.allow_tf32 = True
    device = torch.device(args.device)
    sizes = {k: v for k, v in (("n_layer", args.n_layer), ("d_model", args.d_model)) if v is not None}
    if "d_model" in sizes:
        sizes["d_inner"] = 4 * sizes["d_model"]
    torch.manual_seed(0)
    model = HyenaLM(HyenaConfig.preset(args.preset, **sizes, fast_path=args.fast_path), device=device).eval()
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "preset": args.preset, "fast_path": args.fast_path, **sizes,
            "params": sum(p.numel() for p in model.parameters())}
    results: dict = {"info": info, "generation": [], "embedding": []}

    def save() -> None:
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=2)

    print(json.dumps(info), flush=True)
    for context in (int(c) for c in args.contexts.split(",") if c):
        for batch in (int(b) for b in args.batches.split(",")):
            if time.perf_counter() - start > args.budget_s:
                print(f"skipped generation c={context} B={batch}: budget", flush=True)
                continue
            row = bench_generation(model, device, context, batch, args.new_tokens, rng, args.modes.split(","))
            results["generation"].append(row)
            print(json.dumps(row), flush=True)
            save()
    for mb in (float(m) for m in args.embed_mb.split(",") if m):
        for precision in args.precisions.split(","):
            if time.perf_counter() - start > args.budget_s:
                print(f"skipped embedding {mb} Mb {precision}: budget", flush=True)
                continue
            row = bench_embedding(model, device, mb, rng, precision)
            results["embedding"].append(row)
            print(json.dumps(row), flush=True)
            save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
