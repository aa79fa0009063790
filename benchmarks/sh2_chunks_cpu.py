"""Chunked inference of a StripedHyena 2 with evo2-1b's layer pattern at width 256 on CPU: tokens/s of the
chunked forward (hidden states, no logits) against one pass at the trained context.

    python benchmarks/sh2_chunks_cpu.py [--tokens 65536] [--chunks 8192,32768] [--threads 2]

Model: the ``1b-8k`` preset (25 layers ``SDH*SDHSDH*SDHSDH*SDHSDH*``, 8k context) at hidden size 256, 8 heads,
MLP 688, random weights, float32; input: random A/C/G/T byte ids. Each chunk size first runs two chunks as a
warm-up.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import torch

from dnalm.inference.chunked import iter_chunks
from dnalm.models.stripedhyena import PRESETS, StripedHyenaLM


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--chunks", default="8192,32768")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    config = replace(PRESETS["1b-8k"], hidden_size=256, num_attention_heads=8, inner_mlp_size=688)
    model = StripedHyenaLM(config).eval()
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
