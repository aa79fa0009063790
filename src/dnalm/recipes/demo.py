"""``dnalm demo``: the built-in default job.

Synthesizes a small polyploid genome, prepares it with a homology-aware split, trains a tiny HyenaDNA
on the CPU, benchmarks it against the order-k Markov baseline and writes ``<out>/report.html``. Every
step is the dnalm command of the same name, so the demo doubles as a worked example of the CLI.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dnalm.config import to_dataclass


@dataclass
class DemoConfig:
    out: str = "demo"
    seed: int = 0
    synth: list[str] = field(default_factory=list)
    prepare: list[str] = field(default_factory=list)
    train: list[str] = field(default_factory=list)
    benchmark: list[str] = field(default_factory=list)


def _step(title: str, argv: list[str]) -> None:
    from dnalm.cli import run

    print(f"\n== {title}: dnalm {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    run(argv)
    print(f"== {title} done in {time.perf_counter() - start:.1f} s", flush=True)


def main(cfg: DictConfig) -> int:
    dc = to_dataclass(OmegaConf.to_container(cfg, resolve=True), DemoConfig, where="demo")
    out = Path(dc.out).resolve()
    genome, prepared, run_dir, bench = out / "genome", out / "prepared", out / "train", out / "benchmark"
    _step("synth", ["synth", f"out={genome}", f"seed={dc.seed}", *dc.synth])
    _step("prepare", ["prepare", f"genome={genome / 'genome.fa'}", f"annotation={genome / 'annotation.gff3'}",
                      "name=synthetic", f"out={prepared}", *dc.prepare])
    _step("train", ["train", f"data.prepared={prepared}", f"out={run_dir}", f"seed={dc.seed}", *dc.train])
    _step("benchmark", ["benchmark", f"prepared={prepared}", f"models=[{run_dir / 'model'}]", f"out={bench}",
                        f"seed={dc.seed}", *dc.benchmark])
    print(f"\nreport: {bench / 'report.html'}\nleaderboard: {bench / 'leaderboard.md'}")
    return 0
