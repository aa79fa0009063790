"""Mamba / Caduceus inference on a CPU: the selective scan one position at a time against the scan by cumulative
sums (``dnalm.models.mamba.selective_scan_cumsum``), side by side in one process.

    python benchmarks/mamba_cpu_scan.py [--tokens 20000] [--presets tiny,small] [--threads 2]

For each Caduceus preset (random weights, float32): one forward of (1, tokens) random A/C/G/T ids with each
scan (``SsmConfig.fast_path='reference'`` runs the sequential loop on a CPU), seconds, tokens/s and the largest
difference of the logits.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import torch

from dnalm.models.mamba import CADUCEUS_PRESETS, CaduceusLM


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=20000)
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ids = torch.randint(7, 11, (1, args.tokens), generator=torch.Generator().manual_seed(0))
    print("| preset | parameters | sequential s | cumulative-sum s | speed-up | max abs difference of the logits |")
    print("|---|---|---|---|---|---|")
    for preset in args.presets.split(","):
        torch.manual_seed(0)
        outs, seconds = [], []
        for fast_path in ("reference", "auto"):
            model = CaduceusLM(replace(CADUCEUS_PRESETS[preset], fast_path=fast_path)).eval()
            if outs:
                model.load_state_dict(outs[0][1])
            with torch.no_grad():
                t0 = time.perf_counter()
                logits = model(ids)
                seconds.append(time.perf_counter() - t0)
            outs.append((logits, model.state_dict()))
        n = sum(p.numel() for p in model.parameters())
        diff = float((outs[0][0] - outs[1][0]).abs().max())
        print(f"| {preset} | {n:,} | {seconds[0]:.1f} | {seconds[1]:.1f} | {seconds[0] / seconds[1]:.1f}x | "
              f"{diff:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
