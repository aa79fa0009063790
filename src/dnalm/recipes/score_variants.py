"""``dnalm score-variants variants=VCF|TSV reference=FASTA checkpoint=CKPT out=scores.tsv``: Δ log-likelihood
(a causal LM) or the masked-marginal Δ (a masked LM such as DNABERT-2 or Caduceus; :func:`score_variants_masked`)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from dnalm.config import to_dataclass
from dnalm.errors import ConfigError, InputError
from dnalm.recipes import InferenceRun

MISMATCH = ("skip", "error")


@dataclass
class ScoreVariantsConfig(InferenceRun):
    variants: str | None = None
    reference: str | None = None
    window: int = 8192
    reduce: str = "mean"
    reverse_complement: bool = False
    chrom_aliases: str | None = None
    mismatch: str = "skip"


def main(cfg: DictConfig) -> int | None:
    sc = to_dataclass(cfg, ScoreVariantsConfig, where="score-variants")
    if not sc.variants or not sc.reference or not sc.checkpoint or not sc.out:
        raise ConfigError("score-variants: set variants=VCF|TSV, reference=FASTA, checkpoint=CKPT and out=FILE.tsv")
    from dnalm.genome.aliases import ChromAliases, alias_path
    from dnalm.genome.fasta import FastaIndex
    from dnalm.inference.api import load_model
    from dnalm.inference.scoring import REDUCTIONS
    from dnalm.inference.variants import match_reference, read_variants, score_variants, write_variant_scores

    if sc.reduce not in REDUCTIONS:
        raise ConfigError(f"score-variants: reduce={sc.reduce!r} must be one of {', '.join(REDUCTIONS)}")
    if sc.window < 2:
        raise ConfigError(f"score-variants: window must be >= 2 bases, got {sc.window}")
    if sc.mismatch not in MISMATCH:
        raise ConfigError(f"score-variants: mismatch={sc.mismatch!r} must be one of {', '.join(MISMATCH)}")
    table = read_variants(sc.variants)
    with FastaIndex(sc.reference) as genome:
        aliases = ChromAliases.of(genome, alias_path(sc.chrom_aliases))
        found = match_reference(table.variants, genome, aliases)
        if found.problems and (sc.mismatch == "error" or not found.variants):
            raise InputError(found.summary(sc.variants, sc.reference)
                             + ("; nothing left to score" if not found.variants else ""))
        if aliases.summary():
            print(f"score-variants: chromosome names matched to {sc.reference}: {aliases.summary()}", flush=True)
        if found.problems:
            print(f"score-variants: skipping {found.summary(sc.variants, sc.reference)} (mismatch=error stops "
                  "instead)", flush=True)
        from dnalm.inference.masked import check_objective, objective_of
        from dnalm.inference.variants import score_variants_masked
        from dnalm.models.family import CAUSAL, MASKED

        model, tokenizer = load_model(sc.checkpoint, sc.device, sc.dtype)
        if objective_of(model) == MASKED:
            if sc.prepend_bos:
                check_objective(model, CAUSAL, "score-variants prepend_bos=true")
            scores = score_variants_masked(model, tokenizer, found.variants, genome, window=sc.window,
                                           reverse_complement_average=sc.reverse_complement, progress=True)
        else:
            scores = score_variants(model, tokenizer, found.variants, genome, window=sc.window, reduce=sc.reduce,
                                    reverse_complement_average=sc.reverse_complement, prepend_bos=sc.prepend_bos,
                                    batch_size=sc.batch_size, max_tokens=sc.max_tokens, chunk_size=sc.chunk_size,
                                    progress=True)
    write_variant_scores(sc.out, scores)
    skipped = f", {table.skipped} symbolic alleles skipped" if table.skipped else ""
    if found.problems:
        skipped += f", {len(found.problems)} not matching the reference skipped"
    print(f"score-variants: {len(scores)} variants{skipped} -> {sc.out}")
    return 0
