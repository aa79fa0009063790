"""``dnalm prepare genome=PATH [annotation=PATH] out=DIR [split.*=...]``: a prepared, split dataset.

See :mod:`dnalm.data.prepare` for what is written and :mod:`dnalm.genome.splits` for the split
strategies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

from dnalm.config import to_dataclass
from dnalm.data.prepare import GenomeSpec, default_genome_name, prepare
from dnalm.errors import ConfigError
from dnalm.genome.splits import SplitSpec


@dataclass
class PrepareConfig:
    genome: str | None = None
    annotation: str | None = None
    name: str | None = None
    out: str | None = None
    promoter_window: int = 1000
    window: int = 0
    overwrite: bool = True
    split: SplitSpec = field(default_factory=SplitSpec)


def main(cfg: DictConfig) -> int:
    node = OmegaConf.to_container(cfg, resolve=True)
    listed = node.pop("genomes", None) or []
    if not isinstance(listed, list) or not all(isinstance(g, dict) for g in listed):
        raise ConfigError("prepare: genomes must be a list of {name, fasta, annotation, weight} entries")
    pc = to_dataclass(node, PrepareConfig, where="prepare")
    if not pc.out:
        raise ConfigError("prepare: set out=DIR (the prepared directory to write)")
    if pc.genome and listed:
        raise ConfigError("prepare: give either genome=PATH or genomes=[...], not both")
    if pc.genome:
        genomes = [GenomeSpec(pc.name or default_genome_name(pc.genome), pc.genome, pc.annotation)]
    elif listed:
        if pc.annotation or pc.name:
            raise ConfigError("prepare: with genomes=[...], give each genome's name and annotation in the list")
        genomes = [to_dataclass(g, GenomeSpec, where=f"genomes[{i}]") for i, g in enumerate(listed)]
    else:
        raise ConfigError("prepare: set genome=PATH (a FASTA file) or genomes=[{name: ..., fasta: ...}, ...]")
    out = prepare(genomes, pc.out, pc.split, promoter_window=pc.promoter_window, window=pc.window,
                  overwrite=pc.overwrite)
    print(f"prepare: wrote {out}/ (see {out / 'split_report.md'})")
    return 0
