"""``dnalm benchmark (genome=FASTA annotation=GFF3 | prepared=DIR) models=[ckpt, ...] out=DIR``.

The genome benchmark of :mod:`dnalm.evaluate.genome_benchmark`: every model and an order-k Markov
baseline on the held-out split of a prepared genome; writes the leaderboard, a dataset card, plots and
``report.html`` into ``out``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

from dnalm.config import to_dataclass
from dnalm.data.prepare import GenomeSpec, default_genome_name
from dnalm.errors import ConfigError
from dnalm.evaluate.genome_benchmark import (
    BenchmarkSpec,
    GenerationSpec,
    MarkovSpec,
    NextBaseSpec,
    ProbeSpec,
    PromoterSpec,
    benchmark,
    headline_table,
)
from dnalm.genome.splits import SplitSpec


@dataclass
class BenchmarkConfig:
    genome: str | None = None
    annotation: str | None = None
    name: str | None = None
    prepared: str | None = None
    models: list[str] = field(default_factory=list)
    out: str | None = None
    keep_prepared: bool = False
    promoter_window: int = 1000
    device: str = "auto"
    batch_size: int = 16
    seed: int = 0
    plots: bool = True
    tsne_points: int = 500
    logo_positions: int = 30
    split: SplitSpec = field(default_factory=SplitSpec)
    markov: MarkovSpec = field(default_factory=MarkovSpec)
    next_base: NextBaseSpec = field(default_factory=NextBaseSpec)
    promoters: PromoterSpec = field(default_factory=PromoterSpec)
    probes: ProbeSpec = field(default_factory=ProbeSpec)
    generation: GenerationSpec = field(default_factory=GenerationSpec)


def main(cfg: DictConfig) -> int:
    bc = to_dataclass(OmegaConf.to_container(cfg, resolve=True), BenchmarkConfig, where="benchmark")
    if not bc.out:
        raise ConfigError("benchmark: set out=DIR (the results directory to write)")
    if bc.prepared and bc.genome:
        raise ConfigError("benchmark: give either prepared=DIR or genome=FASTA, not both")
    if not bc.prepared and not bc.genome:
        raise ConfigError("benchmark: set genome=FASTA (with annotation=GFF3) or prepared=DIR")
    if not bc.models and not bc.markov.enabled:
        raise ConfigError("benchmark: nothing to evaluate (models=[] and markov.enabled=false)")
    spec = BenchmarkSpec(markov=bc.markov, next_base=bc.next_base, promoters=bc.promoters, probes=bc.probes,
                         generation=bc.generation, batch_size=bc.batch_size, device=bc.device, seed=bc.seed,
                         plots=bc.plots, tsne_points=bc.tsne_points, logo_positions=bc.logo_positions)
    genomes = None
    if bc.genome:
        genomes = [GenomeSpec(bc.name or default_genome_name(bc.genome), bc.genome, bc.annotation)]
    out = benchmark(bc.out, bc.models, spec, prepared=bc.prepared, genomes=genomes, split=bc.split,
                    promoter_window=bc.promoter_window, keep_prepared=bc.keep_prepared)
    rows = json.loads((out / "leaderboard.json").read_text())["rows"]
    header, table = headline_table([{k: math.nan if v is None else v for k, v in r.items()} for r in rows])
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(header)]
    print(f"benchmark: wrote {out}/ (report.html; every metric in leaderboard.csv, explained in leaderboard.md)")
    for cells in [header] + table:
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
    return 0
