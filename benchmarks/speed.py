"""Throughput of dnalm's models across sequence lengths on one GPU (no Hydra needed).

    python benchmarks/speed.py --lengths 1k,16k,256k,1M --models hyena,hyena-ref,transformer,gpt \
        --out speed.md [--profile hyena:train:1k]

See :mod:`dnalm.evaluate.speed` for what is measured. ``--profile MODEL:MODE:LENGTH`` adds the top
CUDA kernels of one step (torch.profiler) for each such configuration.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from dnalm.evaluate.speed import (
    MODELS,
    MODES,
    build_model,
    ceilings,
    device_description,
    length_label,
    markdown_table,
    parse_length,
    run_speed,
    step_fn,
)
from dnalm.training.lightning import checkpoint_blocks


def profile(spec: str, budget: int, preset: str, max_len: int, top: int = 15) -> str:
    """Top CUDA kernels by self time over one step of ``MODEL:MODE:LENGTH``."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    name, mode, length = spec.split(":")
    L = parse_length(length)
    B = max(1, budget // L)
    model = build_model(name, preset, max_len)
    if name == "hyena-ref" and L >= 524288 and mode == "train":
        checkpoint_blocks(model)
    model.train(mode == "train")
    ids = torch.randint(7, 11, (B, L), device="cuda")
    step = step_fn(model, mode, ids, ids)
    step()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA" or e.self_device_time_total > 0]
    total = sum(e.self_device_time_total for e in events) or 1.0
    events.sort(key=lambda e: -e.self_device_time_total)
    lines = [f"### profile {name} {mode} {length_label(L)} (batch {B}): {total / 1e3:.1f} ms of kernels",
             "", "| kernel | calls | ms | % |", "|---|---|---|---|"]
    for e in events[:top]:
        lines.append(f"| `{e.key[:90]}` | {e.count} | {e.self_device_time_total / 1e3:.2f} | "
                     f"{100 * e.self_device_time_total / total:.1f} |")
    del model
    torch.cuda.empty_cache()
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--lengths", default="1k,2k,4k,8k,16k,32k,64k,128k,256k,512k,1M")
    p.add_argument("--budget", default="1M", help="tokens per step (batch = budget / length)")
    p.add_argument("--preset", default="large-1m")
    p.add_argument("--attention-cap", default="64k")
    p.add_argument("--ref-checkpoint-from", default="512k")
    p.add_argument("--mixer-checkpoint-from", default="2M", help="fused Hyena: checkpoint only the mixers from here")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--profile", action="append", default=[])
    p.add_argument("--out", default=None, help="markdown file for the table")
    a = p.parse_args(argv)
    lengths = [parse_length(x) for x in a.lengths.split(",")]
    dev = device_description()
    print(" ".join(f"{k}={v}" for k, v in dev.items()), flush=True)
    ceil = ceilings()
    print(f"ceilings: copy {ceil.copy_gbs:.0f} GB/s, bf16 matmul {ceil.matmul_tflops:.0f} TFLOP/s", flush=True)
    rows = run_speed(a.models.split(","), a.modes.split(","), lengths, parse_length(a.budget), a.preset,
                     parse_length(a.attention_cap), parse_length(a.ref_checkpoint_from), a.steps, a.warmup, ceil,
                     report=lambda r: print(f"{r.model:12s} {r.mode:8s} {length_label(r.length):>5s} B={r.batch:<5d} "
                                            f"{(r.tokens_per_s or 0) / 1e6:7.3f} Mtok/s  peak "
                                            f"{r.peak_gib or 0:6.1f} GiB {r.note}", flush=True),
                     mixer_checkpoint_from=parse_length(a.mixer_checkpoint_from))
    table = markdown_table(rows)
    text = [f"GPU: {dev.get('gpu')}, driver {dev.get('driver')}, torch {dev['torch']} (CUDA {dev['cuda']}), "
            f"triton {dev['triton']}", f"Ceilings measured: copy {ceil.copy_gbs:.0f} GB/s, bf16 matmul "
            f"{ceil.matmul_tflops:.0f} TFLOP/s", f"Command: python benchmarks/speed.py {' '.join(sys.argv[1:])}",
            "", table]
    for spec in a.profile:
        text += ["", profile(spec, parse_length(a.budget), a.preset, max(lengths))]
    out = "\n".join(text) + "\n"
    print(out, flush=True)
    if a.out:
        Path(a.out).write_text(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
