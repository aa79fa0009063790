"""Masked models on long inputs (CPU): a DNABERT-2-shaped encoder embeds real sequence of 20 kb to 1 Mb through
overlapping windows (``dnalm.inference.masked``), with its time and peak memory per length.

    python benchmarks/masked_windows.py [--data-root ../shared/data] [--lengths 20000 100000 1000000]

Model: the ``small`` DNABERT-2 preset (6 layers, width 256, 4 heads, GEGLU 768; 6.2M parameters), random
weights (seed 0), float32; tokenizer: DNABERT-2's released BPE (``fixtures/dnabert2_tiny/tokenizer.json``);
sequence: the first bases of the Arabidopsis chromosome 1 excerpt (5-7 Mb of Col-CEN), upper case. Each length
runs in its own process so that its peak resident memory is its own. Without windows one pass over T tokens
would hold the attention scores, heads x T^2 float32 values per layer (printed for comparison).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def _sequence(data_root: Path, n: int) -> str:
    from dnalm.inference.io import read_sequences

    path = data_root / "athal_colcen_chr1_5-7mb" / "Col-CEN_v1.2.Chr1_5MB-7MB.fasta.gz"
    return read_sequences(path)[0].seq[:n]  # upper case


def one(data_root: Path, shared: Path, n: int) -> dict:
    import torch

    from dnalm.inference.masked import embed_masked, encode_tokens, masked_window, window_row
    from dnalm.models.dnabert2 import Dnabert2Config, Dnabert2Model, Dnabert2Tokenizer

    torch.manual_seed(0)
    torch.set_num_threads(2)
    tok = Dnabert2Tokenizer.load(shared / "fixtures" / "dnabert2_tiny", uppercase=True)
    model = Dnabert2Model(Dnabert2Config.preset("small")).eval()
    seq = _sequence(data_root, n)
    row = encode_tokens(tok, seq)
    window = masked_window(model)
    windows = window_row(row.ids, window, {tok.alphabet.bos, tok.alphabet.eos})
    t0 = time.perf_counter()
    vec = embed_masked(model, [row], -1, "mean", pad_id=tok.alphabet.pad, batch_size=4, max_tokens=4 * window)
    seconds = time.perf_counter() - t0
    heads = model.config.num_attention_heads
    return {"bases": len(seq), "tokens": len(row.ids), "window": window, "windows": len(windows),
            "seconds": round(seconds, 2), "kb_per_s": round(len(seq) / seconds / 1e3, 1),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "one_pass_scores_gib": round(heads * len(row.ids) ** 2 * 4 / 2**30, 1),
            "finite": bool(abs(vec).sum() > 0 and (vec == vec).all())}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    ap.add_argument("--lengths", type=int, nargs="+", default=[20_000, 100_000, 1_000_000])
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    shared = args.data_root.resolve().parent
    if args.one:
        print(json.dumps(one(args.data_root, shared, args.one)))
        return 0
    print("| bases | BPE tokens | window | windows | seconds | kb/s | peak RSS GiB | one pass: scores per layer GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.lengths:
        out = subprocess.run([sys.executable, __file__, "--data-root", str(args.data_root), "--one", str(n)],
                             capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        assert r["finite"]
        print(f"| {r['bases']:,} | {r['tokens']:,} | {r['window']:,} | {r['windows']} | {r['seconds']} | "
              f"{r['kb_per_s']} | {r['peak_rss_gib']} | {r['one_pass_scores_gib']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
