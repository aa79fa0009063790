"""Chunked inference of a StripedHyena 2 with evo2-1b's layer pattern at width 256 on CPU: tokens/s of the
chunked forward (hidden states, no logits) against one pass at the trained context.

    python benchmarks/sh2_chunks_cpu.py [--tokens 65536] [--chunks 8192,32768] [--threads 2]
    python benchmarks/sh2_chunks_cpu.py --mixers [--width 512]

Model: the ``1b-8k`` preset (25 layers ``SDH*SDHSDH*SDHSDH*SDHSDH*``, 8k context) at hidden size 256, 8 heads,
MLP 688, random weights, float32; input: random A/C/G/T byte ids. Each chunk size first runs two chunks as a
warm-up. ``--mixers``: per kind of mixer (HCS, HCM, HCL, attention) at ``--width``, the time of one chunk of
the context after a first chunk has filled its carry, against its one pass of the context.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import torch

from dnalm.inference.chunked import chunker, iter_chunks
from dnalm.models.stripedhyena import PRESETS, StripedHyenaLM


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def mixers(model: StripedHyenaLM, width: int) -> None:
    """One chunk with a filled carry against one pass, per kind of mixer."""
    T = model.config.max_seqlen
    u = torch.randn(1, T, width)
    seen = set()
    with torch.inference_mode():
        for block in model.backbone.layers:
            kind = getattr(block.mixer, "kind", "attention")
            if kind in seen:
                continue
            seen.add(kind)
            block.mixer(u)
            one = _timed(lambda m=block.mixer: m(u))
            c = chunker(block.mixer)
            carry = c.chunk_carry(1, 4 * T, T, None, torch.float32)
            c.chunk(u, carry, 0)
            chunk = _timed(lambda c=c, carry=carry: c.chunk(u, carry, T))
            print(f"{kind}: one pass {one * 1e3:,.0f} ms, chunk with carry {chunk * 1e3:,.0f} ms "
                  f"({chunk / one:.2f}x)", flush=True)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--chunks", default="8192,32768")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mixers", action="store_true")
    ap.add_argument("--width", type=int, default=256)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    config = replace(PRESETS["1b-8k"], hidden_size=args.width, num_attention_heads=8,
                     inner_mlp_size=688 * args.width // 256)
    model = StripedHyenaLM(config).eval()
    if args.mixers:
        mixers(model, args.width)
        return 0
    ids = torch.tensor([ord(b) for b in "ACGT"])[torch.randint(0, 4, (1, args.tokens))]
    context = config.max_seqlen
    with torch.inference_mode():
        model(ids[:, :context])
        t0 = time.perf_counter()
        model(ids[:, :context])
        one = time.perf_counter() - t0
    print(f"one pass of {context}: {context / one:,.0f} tokens/s")
    for chunk in [int(x) for x in args.chunks.split(",") if x]:
        for _ in iter_chunks(model, ids[:, :2 * chunk], chunk, logits=False):
            pass
        t0 = time.perf_counter()
        for _ in iter_chunks(model, ids, chunk, logits=False):
            pass
        print(f"chunks of {chunk}: {args.tokens / (time.perf_counter() - t0):,.0f} tokens/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
