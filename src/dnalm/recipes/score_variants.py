"""``dnalm score-variants variants=VCF|TSV reference=FASTA checkpoint=CKPT out=scores.tsv``: Δ log-likelihood."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from dnalm.config import to_dataclass
from dnalm.errors import ConfigError
from dnalm.recipes import InferenceRun


@dataclass
class ScoreVariantsConfig(InferenceRun):
    variants: str | None = None
    reference: str | None = None
    window: int = 8192
    reduce: str = "mean"
    reverse_complement: bool = False


def main(cfg: DictConfig) -> int | None:
    sc = to_dataclass(cfg, ScoreVariantsConfig, where="score-variants")
    if not sc.variants or not sc.reference or not sc.checkpoint or not sc.out:
        raise ConfigError("score-variants: set variants=VCF|TSV, reference=FASTA, checkpoint=CKPT and out=FILE.tsv")
    from dnalm.genome.fasta import FastaIndex
    from dnalm.inference.api import load_model
    from dnalm.inference.scoring import REDUCTIONS
    from dnalm.inference.variants import check_reference, read_variants, score_variants, write_variant_scores

    if sc.reduce not in REDUCTIONS:
        raise ConfigError(f"score-variants: reduce={sc.reduce!r} must be one of {', '.join(REDUCTIONS)}")
    if sc.window < 2:
        raise ConfigError(f"score-variants: window must be >= 2 bases, got {sc.window}")
    table = read_variants(sc.variants)
    with FastaIndex(sc.reference) as genome:
        check_reference(table.variants, genome, sc.variants)
        model, tokenizer = load_model(sc.checkpoint, sc.device, sc.dtype)
        scores = score_variants(model, tokenizer, table.variants, genome, window=sc.window, reduce=sc.reduce,
                                reverse_complement_average=sc.reverse_complement, prepend_bos=sc.prepend_bos,
                                batch_size=sc.batch_size, max_tokens=sc.max_tokens, chunk_size=sc.chunk_size,
                                progress=True)
    write_variant_scores(sc.out, scores)
    skipped = f", {table.skipped} symbolic alleles skipped" if table.skipped else ""
    print(f"score-variants: {len(scores)} variants{skipped} -> {sc.out}")
    return 0
