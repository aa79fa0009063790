"""``dnalm predict input=FASTA|CSV checkpoint=CKPT out=FILE.parquet``: log-likelihoods, log-probs or logits.

A causal model gives next-token log-likelihoods (``collapse=sum|mean|per_token`` is BioNeMo's
``predict_evo2 --output-log-prob-seqs --log-prob-collapse-option``, with ``prepend_bos`` as its
``--prepend-bos``); a masked model (DNABERT-2, Caduceus) gives pseudo-log-likelihoods (:mod:`dnalm.inference.masked`):
``loglik`` is their sum, or with ``reduce=mean`` that sum per base covered by the scored tokens; ``per_token``
lists every scored token with the 1-based position of its first base and its number of bases.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from dnalm.config import to_dataclass
from dnalm.errors import ConfigError
from dnalm.recipes import InferenceRun

OUTPUT_TYPES = ("loglik", "per_token", "logits")
#: BioNeMo's --log-prob-collapse-option -> (output_type, reduce).
COLLAPSE = {"sum": ("loglik", "sum"), "mean": ("loglik", "mean"), "per_token": ("per_token", None)}
SCORES = ("auto", "causal", "pseudo")


@dataclass
class PredictConfig(InferenceRun):
    input: str | None = None
    reference: str | None = None
    strand: str = "auto"
    chrom_aliases: str | None = None
    output_type: str = "loglik"
    reduce: str = "mean"
    tokens: str = "acgt"
    uppercase: bool = True
    skip_n: bool = True
    collapse: str | None = None
    score: str = "auto"
    compile: bool = False


def main(cfg: DictConfig) -> int | None:
    pc = to_dataclass(cfg, PredictConfig, where="predict")
    if not pc.input or not pc.checkpoint or not pc.out:
        raise ConfigError("predict: set input=FILE (FASTA, CSV, or BED with reference=FASTA), checkpoint=CKPT "
                          "and out=FILE.parquet")
    if pc.output_type not in OUTPUT_TYPES:
        raise ConfigError(f"predict: output_type={pc.output_type!r} must be one of {', '.join(OUTPUT_TYPES)}")
    if pc.score not in SCORES:
        raise ConfigError(f"predict: score={pc.score!r} must be one of {', '.join(SCORES)}")
    if pc.collapse is not None:
        if pc.collapse not in COLLAPSE:
            raise ConfigError(f"predict: collapse={pc.collapse!r} must be one of {', '.join(COLLAPSE)}")
        if pc.output_type == "logits":
            raise ConfigError("predict: collapse applies to log-probabilities, not to output_type=logits")
        output_type, reduce = COLLAPSE[pc.collapse]
        pc.output_type, pc.reduce = output_type, reduce or pc.reduce
    from dnalm.genome.aliases import alias_path
    from dnalm.inference.api import load_model
    from dnalm.inference.chunked import compiled_blocks
    from dnalm.inference.io import read_inputs, write_parquet
    from dnalm.inference.scoring import (
        REDUCTIONS,
        ambiguous_targets,
        encode_sequence,
        logit_columns,
        reduce_log_probs,
        score_rows,
    )
    from dnalm.utils import atomic_file

    if pc.reduce not in REDUCTIONS:
        raise ConfigError(f"predict: reduce={pc.reduce!r} must be one of {', '.join(REDUCTIONS)}")
    from dnalm.inference.classify import is_sequence_model

    inputs = read_inputs(pc.input, pc.uppercase, pc.reference, pc.strand, alias_path(pc.chrom_aliases))
    seqs = inputs.sequences
    if inputs.renamed:
        print(f"predict: chromosome names matched to {pc.reference}: "
              + ", ".join(f"{a} -> {r}" for a, r in inputs.renamed.items()), flush=True)
    if is_sequence_model(pc.checkpoint):
        print(f"predict: note: {pc.checkpoint} is a fine-tuned classifier; these are its backbone's language-model "
              f"scores, not class probabilities (those come from: dnalm classify checkpoint={pc.checkpoint} "
              "input=... out=...)", flush=True)
    from dnalm.inference.masked import check_objective, objective_of
    from dnalm.models.family import CAUSAL, MASKED

    model, tokenizer = load_model(pc.checkpoint, pc.device, pc.dtype)
    if pc.score != "auto":
        check_objective(model, MASKED if pc.score == "pseudo" else CAUSAL, f"predict score={pc.score}")
    if objective_of(model) == MASKED:
        if pc.output_type == "logits":
            check_objective(model, CAUSAL, "predict output_type=logits (the logits predicting each next base)")
        if pc.prepend_bos:
            check_objective(model, CAUSAL, "predict prepend_bos=true (a [BOS] to condition the first base on)")
        if pc.compile:
            check_objective(model, CAUSAL, "predict compile=true (the chunked causal path, compiled)")
        return _predict_masked(pc, model, tokenizer, seqs)
    columns = logit_columns(model, pc.tokens, tokenizer) if pc.output_type == "logits" else None
    rows = [encode_sequence(tokenizer, s.seq, pc.prepend_bos, where=s.where) for s in seqs]
    with compiled_blocks(model, enabled=pc.compile):
        scores = score_rows(model, rows, logits_columns=columns, batch_size=pc.batch_size,
                            max_tokens=pc.max_tokens, chunk_size=pc.chunk_size, progress=True)
    first = 0 if pc.prepend_bos else 1
    # the scored tokens that count: all, or all but N / IUPAC ambiguity codes (skip_n, as training weighs them 0)
    keep = [~ambiguous_targets(row, tokenizer) if pc.skip_n else np.ones(len(row) - 1, dtype=bool) for row in rows]
    if pc.output_type == "logits":  # logits predict every position, whatever base is there
        keep = [np.ones(r.logits.shape[0], dtype=bool) for r in scores]
    table = {"id": [s.id for s in seqs], "length": np.array([len(s.seq) for s in seqs], dtype=np.int64),
             "n_scored": np.array([int(k.sum()) for k in keep], dtype=np.int64),
             "n_skipped": np.array([int((~k).sum()) for k in keep], dtype=np.int64)}
    meta = {"command": "predict", "model": str(pc.checkpoint), "input": str(pc.input), "output_type": pc.output_type,
            "prepend_bos": pc.prepend_bos, "first_position": first, "skip_n": pc.skip_n}
    output = Path(pc.out)
    if pc.output_type == "loglik":
        table["log_likelihood"] = np.array([reduce_log_probs(r.log_probs, pc.reduce, k)
                                            for r, k in zip(scores, keep, strict=True)])
        meta["reduce"] = pc.reduce
    elif pc.output_type == "per_token":
        table["positions"] = [np.arange(first + 1, first + 1 + r.log_probs.size, dtype=np.int64)[k]
                              for r, k in zip(scores, keep, strict=True)]
        table["log_probs"] = [r.log_probs[k] for r, k in zip(scores, keep, strict=True)]
    else:
        table["positions"] = [np.arange(first + 1, first + 1 + r.logits.shape[0], dtype=np.int64) for r in scores]
        npz = output.with_suffix(".npz")
        keys = [f"seq{i}" for i in range(len(seqs))]
        with atomic_file(npz) as tmp, open(tmp, "wb") as f:
            np.savez(f, **{k: r.logits for k, r in zip(keys, scores, strict=True)})
        table["key"] = keys
        meta.update(npz=npz.name, tokens=pc.tokens, columns=[int(c) for c in columns])
    write_parquet(output, table, metadata=meta)
    total, skipped = int(table["n_scored"].sum()), int(table["n_skipped"].sum())
    note = f" ({skipped:,} N or ambiguous bases skipped, as in training; skip_n=false scores them)" if skipped else ""
    print(f"predict: {len(seqs)} sequences, {total:,} scored bases{note} -> {output}"
          + (f" (+ {output.with_suffix('.npz')})" if pc.output_type == "logits" else ""))
    return 0


def _predict_masked(pc: PredictConfig, model, tokenizer, seqs) -> int:
    """Pseudo-log-likelihoods of a masked model (see the module docstring)."""
    from dnalm.inference.io import write_parquet
    from dnalm.inference.masked import encode_tokens, pseudo_log_likelihoods

    rows = [encode_tokens(tokenizer, s.seq, where=s.where) for s in seqs]
    lps = pseudo_log_likelihoods(model, [r.ids for r in rows], tokenizer.alphabet, skip_n=pc.skip_n,
                                 batch_size=pc.batch_size, max_tokens=pc.max_tokens, progress=True,
                                 window=pc.chunk_size)
    scored = [~np.isnan(lp) for lp in lps]
    real = [r.n_bases > 0 for r in rows]
    table = {"id": [s.id for s in seqs], "length": np.array([len(s.seq) for s in seqs], dtype=np.int64),
             "n_scored": np.array([int(r.n_bases[k].sum()) for r, k in zip(rows, scored, strict=True)],
                                  dtype=np.int64),
             "n_skipped": np.array([int(r.n_bases[b & ~k].sum()) for r, b, k in zip(rows, real, scored, strict=True)],
                                   dtype=np.int64),
             "n_tokens": np.array([int(k.sum()) for k in scored], dtype=np.int64)}
    meta = {"command": "predict", "model": str(pc.checkpoint), "input": str(pc.input), "output_type": pc.output_type,
            "score": "pseudo_log_likelihood", "skip_n": pc.skip_n}
    if pc.output_type == "loglik":
        sums = np.array([float(lp[k].sum()) for lp, k in zip(lps, scored, strict=True)])
        if pc.reduce == "mean":  # per base covered by the scored tokens
            with np.errstate(invalid="ignore", divide="ignore"):
                sums = np.where(table["n_scored"] > 0, sums / np.maximum(table["n_scored"], 1), np.nan)
        table["log_likelihood"] = sums
        meta["reduce"] = pc.reduce
    else:
        table["positions"] = [r.start[k] + 1 for r, k in zip(rows, scored, strict=True)]
        table["n_bases"] = [r.n_bases[k] for r, k in zip(rows, scored, strict=True)]
        table["log_probs"] = [lp[k].astype(np.float32) for lp, k in zip(lps, scored, strict=True)]
    output = Path(pc.out)
    write_parquet(output, table, metadata=meta)
    total, skipped = int(table["n_scored"].sum()), int(table["n_skipped"].sum())
    note = f" ({skipped:,} N bases skipped; skip_n=false scores them)" if skipped else ""
    print(f"predict: {len(seqs)} sequences, {total:,} bases in {int(table['n_tokens'].sum()):,} scored tokens "
          f"(pseudo-log-likelihood){note} -> {output}")
    return 0
