"""StripedHyena 2 (Evo 2's architecture) at evo2-1b size on one GPU: training, forward, decoding, embedding.

    python benchmarks/sh2_gpu.py [--preset 1b-8k] [--train-len 8192] [--forward 8192,1048576]
        [--decode-context 65536] [--decode-batches 1,32] [--new-tokens 34] [--embed-mb 1]
        [--embed-small-mb 100] [--chunks auto,32768] [--modes eager,compiled]
        [--rows training,forward,decoding,embedding] [--out results.json]

Random weights (dnalm's initialisation), the preset's published shape (``1b-8k``: 25 layers, d 1920,
1,107,989,760 parameters). Rows:

* training: AdamW steps on (1, ``train_len``) random byte ids, float32 master weights under bf16 autocast
  (what ``trainer.precision=bf16-mixed`` does); tokens/s over the timed steps after 2 warm-up steps, and
  peak memory;
* forward: the next-token logits of one (1, L) sequence under bf16 autocast, weights in bf16; at the trained
  context in one pass, past it by :func:`dnalm.inference.chunked.iter_chunks` (the long filters carry their
  recurrent state between chunks, attention a sliding window of the trained context); tokens/s;
* decoding: a (B, context) random prompt prefilled into the inference state (bf16 weights, full K/V cache
  of context + new tokens), then ``new_tokens`` one-token steps; the rate is B * (N - 2) / (time of N steps -
  time of the first 2);
* embedding: :func:`dnalm.inference.embed.embed_pooled` (mean-pooled final hidden state, bf16) of one
  random sequence of each ``--embed-mb`` megabases, after a warm-up of two chunks and a last chunk as long as
  the row's; Mb/s and peak memory. ``--embed-small-mb`` runs the ``small`` preset (6.5M parameters) at
  such lengths to show memory staying flat.

``--chunks``: the chunk sizes (tokens) of the forward past the context and of the embedding rows, each its own
row (``auto``: :func:`dnalm.inference.chunked.default_chunk_size`, the trained context); ``--modes``: the
chunked rows as they are (``eager``) and/or within :func:`dnalm.inference.chunked.compiled_blocks`
(``compiled``: each block's modules through ``torch.compile``; the warm-up compiles); ``--best-mb``: lengths
(megabases) embedded after the other rows with the fastest mode and chunk of the embedding rows; ``--rows``: which
kinds of rows to run. ``--profile N``: a torch profile of N chunks of the chunked forward (after the
rows), the operators taking the most GPU time written to ``<out>.profile.txt``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import numpy as np
import torch

from dnalm.inference.chunked import compiled_blocks, default_chunk_size, iter_chunks
from dnalm.inference.embed import embed_pooled
from dnalm.models.stripedhyena import StripedHyenaConfig, StripedHyenaLM


def _sync() -> None:
    torch.cuda.synchronize()


def _peak_gib() -> float:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


def _ids(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Random DNA as byte ids (A, C, G, T = 65, 67, 71, 84)."""
    return np.array([65, 67, 71, 84], dtype=np.int64)[rng.integers(0, 4, size=shape)]


def _warm_up(model: StripedHyenaLM, n: int, chunk: int | None) -> int:
    """A length whose chunks have both sizes that n's chunks have (two full ones and n's last), so that a
    compiled model meets no new shape in the timed run."""
    T = chunk or default_chunk_size(model)
    return min(n, 2 * T + n % T)


def _build(preset: str, dtype: torch.dtype) -> StripedHyenaLM:
    torch.manual_seed(0)
    config = StripedHyenaConfig.preset(preset)
    return StripedHyenaLM(config, device=torch.device("cuda"), dtype=dtype)


def bench_training(preset: str, length: int, steps: int, rng: np.random.Generator) -> dict:
    model = _build(preset, torch.float32).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ids = torch.from_numpy(_ids(rng, 1, length + 1)).cuda()
    torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    _sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync()
    t = time.perf_counter() - t0
    row = {"length": length, "batch": 1, "steps": steps, "tokens_per_s": round(steps * length / t),
           "peak_gib": _peak_gib()}
    return row


@torch.inference_mode()
def bench_forward(model: StripedHyenaLM, length: int, rng: np.random.Generator, chunk: int | None = None) -> dict:
    context = model.config.max_seqlen
    ids = _ids(rng, 1, length)
    torch.cuda.reset_peak_memory_stats()
    if length <= context:
        x = torch.from_numpy(ids).cuda()
        model(x)  # warm-up
        _sync()
        t0 = time.perf_counter()
        model(x)
        _sync()
        how = "one pass"
    else:
        for _ in iter_chunks(model, ids[:, :_warm_up(model, length, chunk)], chunk, precision="bf16"):
            pass
        _sync()
        t0 = time.perf_counter()
        for out in iter_chunks(model, ids, chunk, precision="bf16"):
            del out
        _sync()
        how = f"chunks of {chunk or context}"
    t = time.perf_counter() - t0
    return {"length": length, "how": how, "tokens_per_s": round(length / t), "seconds": round(t, 2),
            "peak_gib": _peak_gib()}


@torch.inference_mode()
def profile_chunks(model: StripedHyenaLM, n_chunks: int, chunk: int | None, rng: np.random.Generator) -> str:
    """The operators of ``n_chunks`` chunks of the chunked forward, most GPU time first."""
    size = chunk or model.config.max_seqlen
    ids = _ids(rng, 1, size * (n_chunks + 2))
    for _ in iter_chunks(model, ids[:, :2 * size], chunk, precision="bf16"):
        pass
    _sync()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for out in iter_chunks(model, ids[:, :n_chunks * size], chunk, precision="bf16"):
            del out
        _sync()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=70)


@torch.inference_mode()
def bench_decoding(model: StripedHyenaLM, context: int, batch: int, new_tokens: int,
                   rng: np.random.Generator) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        state = model.allocate_state(batch, context + new_tokens)
        ids = torch.from_numpy(_ids(rng, batch, context)).cuda()
        piece = max(256, 2**17 // batch)  # prefill in pieces of 128k tokens over the batch
        t0 = time.perf_counter()
        for start in range(0, context, piece):
            logits = model(ids[:, start:start + piece], state)[:, -1]
        _sync()
        prefill = time.perf_counter() - t0
        times = []
        token = logits.argmax(-1, keepdim=True)
        _sync()
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            logits = model(token, state)[:, -1]
            token = logits.argmax(-1, keepdim=True)
            _sync()
            times.append(time.perf_counter() - t0)
    except torch.OutOfMemoryError as exc:
        del exc
        torch.cuda.empty_cache()
        return {"context": context, "batch": batch, "error": "out of memory"}
    steady = times[-1] - times[1]
    row = {"context": context, "batch": batch, "new_tokens": new_tokens, "prefill_s": round(prefill, 2),
           "tokens_per_s": round(batch * (new_tokens - 2) / steady, 1),
           "step_ms": round(1000 * steady / (new_tokens - 2), 2), "peak_gib": _peak_gib()}
    del state
    torch.cuda.empty_cache()
    return row


def _log_peak(stop: threading.Event, t0: float, every: float = 60.0) -> None:
    while not stop.wait(every):
        print(f"{time.perf_counter() - t0:.0f} s: peak GPU memory so far {_peak_gib()} GiB", file=sys.stderr,
              flush=True)


def bench_embedding(model: StripedHyenaLM, megabases: float, rng: np.random.Generator,
                    chunk: int | None = None) -> dict:
    n = int(megabases * 1_000_000)
    seq = _ids(rng, n)
    embed_pooled(model, [seq[:_warm_up(model, n, chunk)]], layer=-1, pool="mean", precision="bf16",
                 chunk_size=chunk)
    _sync()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    # long rows log their progress (rate and time left) every 30 s on stderr, and the peak memory so far
    stop = threading.Event()
    if megabases >= 10:
        threading.Thread(target=_log_peak, args=(stop, t0), daemon=True).start()
    vec = embed_pooled(model, [seq], layer=-1, pool="mean", precision="bf16", chunk_size=chunk,
                       progress=megabases >= 10)
    _sync()
    t = time.perf_counter() - t0
    stop.set()
    return {"megabases": megabases, "chunk": chunk or "auto", "seconds": round(t, 1),
            "mb_per_s": round(megabases / t, 4),
            "peak_gib": _peak_gib(), "finite": bool(np.isfinite(vec).all())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="1b-8k")
    ap.add_argument("--train-len", type=int, default=8192)
    ap.add_argument("--train-steps", type=int, default=8)
    ap.add_argument("--forward", default="8192,1048576")
    ap.add_argument("--decode-context", type=int, default=65536)
    ap.add_argument("--decode-batches", default="1,32")
    ap.add_argument("--new-tokens", type=int, default=34)
    ap.add_argument("--embed-mb", default="1")
    ap.add_argument("--embed-small-mb", default="100")
    ap.add_argument("--chunks", default="auto")
    ap.add_argument("--modes", default="eager")
    ap.add_argument("--best-mb", default="")
    ap.add_argument("--rows", default="training,forward,decoding,embedding")
    ap.add_argument("--out", default="sh2_gpu.json")
    ap.add_argument("--profile", type=int, default=0)
    args = ap.parse_args(argv)
    chunks = [None if x == "auto" else int(x) for x in args.chunks.split(",") if x]
    rows = set(args.rows.split(","))
    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - {"eager", "compiled"}:
        print(f"--modes {args.modes!r}: eager and/or compiled", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("needs a CUDA device", file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    config = StripedHyenaConfig.preset(args.preset)
    result: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "preset": args.preset,
                    "parameters": sum(p.numel() for p in _build(args.preset, torch.bfloat16).parameters()),
                    "layers": config.pattern, "rows": {}}
    torch.cuda.empty_cache()

    def save() -> None:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)

    def record(kind: str, fn) -> None:
        t0 = time.perf_counter()
        try:
            row = fn()
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            row = {"error": "out of memory"}
        except Exception as exc:  # e.g. a compile failure: the row says so and the other rows still run
            row = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        result["rows"].setdefault(kind, []).append(row)
        print(kind, row, flush=True)
        save()

    if "training" in rows:
        record("training", lambda: bench_training(args.preset, args.train_len, args.train_steps, rng))
        torch.cuda.empty_cache()  # the training model and optimizer are gone with bench_training's frame
    model = _build(args.preset, torch.bfloat16).eval()

    def run(mode: str, m: StripedHyenaLM, fn) -> dict:
        with compiled_blocks(m, enabled=mode == "compiled"):
            return {"mode": mode, **fn(m)}

    for length in [int(x) for x in args.forward.split(",") if x] if "forward" in rows else []:
        for chunk in chunks if length > config.max_seqlen else [None]:
            for mode in modes if length > config.max_seqlen else ["eager"]:
                record("forward", lambda n=length, c=chunk, mode=mode, m=model: run(
                    mode, m, lambda m: bench_forward(m, n, rng, c)))
    for batch in [int(x) for x in args.decode_batches.split(",") if x] if "decoding" in rows else []:
        record("decoding", lambda b=batch, m=model: bench_decoding(m, args.decode_context, b, args.new_tokens, rng))
    for mb in [float(x) for x in args.embed_mb.split(",") if x] if "embedding" in rows else []:
        for chunk in chunks:
            for mode in modes:
                record("embedding", lambda mb=mb, c=chunk, mode=mode, m=model: run(
                    mode, m, lambda m: {"preset": args.preset, **bench_embedding(m, mb, rng, c)}))
    done = [r for r in result["rows"].get("embedding", []) if "mb_per_s" in r]
    for mb in [float(x) for x in args.best_mb.split(",") if x] if done else []:
        best = max(done, key=lambda r: r["mb_per_s"])
        chunk = None if best["chunk"] == "auto" else best["chunk"]
        record("embedding", lambda mb=mb, c=chunk, mode=best["mode"], m=model: run(
            mode, m, lambda m: {"preset": args.preset, **bench_embedding(m, mb, rng, c)}))
    if args.profile:
        for chunk in chunks:
            table = profile_chunks(model, args.profile, chunk, rng)
            with open(f"{args.out}.profile.txt", "a") as f:
                f.write(f"# {args.profile} chunks of {chunk or 'auto'}\n{table}\n")
    del model
    torch.cuda.empty_cache()
    if "embedding" in rows and args.embed_small_mb:
        small = _build("small", torch.bfloat16).eval()
        for mb in [float(x) for x in args.embed_small_mb.split(",") if x]:
            record("embedding", lambda mb=mb: {"preset": "small", **bench_embedding(small, mb, rng)})
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
