"""``dnalm embed input=FASTA|CSV checkpoint=CKPT out=DIR layer=final pool=mean|max|last|none``.

A masked LM (DNABERT-2, Caduceus) pools over its tokens (``mean`` over every real token with the specials its
tokenizer adds, ``max``, ``cls``) or writes per base (``none``: each base gets its token's vector; Caduceus's
vectors are ``2 d_model`` wide with RCPS, the two strands' streams); see :mod:`dnalm.inference.masked`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from dnalm.config import to_dataclass
from dnalm.errors import ConfigError
from dnalm.recipes import InferenceRun


@dataclass
class EmbedConfig(InferenceRun):
    input: str | None = None
    reference: str | None = None
    strand: str = "auto"
    chrom_aliases: str | None = None
    layer: Any = "final"
    pool: str = "mean"
    save_dtype: str = "float32"
    precision: str = "32"
    uppercase: bool = True
    compile: bool = False


def main(cfg: DictConfig) -> int | None:
    ec = to_dataclass(cfg, EmbedConfig, where="embed")
    if not ec.input or not ec.checkpoint or not ec.out:
        raise ConfigError("embed: set input=FILE (FASTA, CSV, or BED with reference=FASTA), checkpoint=CKPT "
                          "and out=DIR")
    from dnalm.genome.aliases import alias_path
    from dnalm.inference.api import load_model
    from dnalm.inference.chunked import compiled_blocks
    from dnalm.inference.embed import POOLS, embed_to_directory, resolve_layer
    from dnalm.inference.io import read_inputs
    from dnalm.inference.scoring import encode_sequence

    if ec.pool not in (*POOLS, "cls"):
        raise ConfigError(f"embed: pool={ec.pool!r} must be one of {', '.join(POOLS)} (cls too for a masked LM)")
    inputs = read_inputs(ec.input, ec.uppercase, ec.reference, ec.strand, alias_path(ec.chrom_aliases))
    seqs = inputs.sequences
    if inputs.renamed:
        print(f"embed: chromosome names matched to {ec.reference}: "
              + ", ".join(f"{a} -> {r}" for a, r in inputs.renamed.items()), flush=True)
    from dnalm.inference.masked import check_objective, encode_tokens, objective_of
    from dnalm.models.family import CAUSAL, MASKED

    model, tokenizer = load_model(ec.checkpoint, ec.device, ec.dtype)
    layer = resolve_layer(model, ec.layer)
    if objective_of(model) == MASKED:
        if ec.prepend_bos:
            check_objective(model, CAUSAL, "embed prepend_bos=true")
        if ec.compile:
            check_objective(model, CAUSAL, "embed compile=true (the chunked causal path, compiled)")
        rows = [encode_tokens(tokenizer, s.seq, where=s.where) for s in seqs]
    else:
        rows = [encode_sequence(tokenizer, s.seq, ec.prepend_bos, where=s.where) for s in seqs]
    with compiled_blocks(model, enabled=ec.compile):
        out = embed_to_directory(model, rows, [s.id for s in seqs], ec.out, layer=layer, pool=ec.pool,
                                 skip=int(ec.prepend_bos), dtype=ec.save_dtype, batch_size=ec.batch_size,
                                 max_tokens=ec.max_tokens, chunk_size=ec.chunk_size, progress=True,
                                 precision=ec.precision, pad_id=getattr(tokenizer, "pad_id", 0) or 0,
                                 metadata={"model": str(ec.checkpoint), "input": str(ec.input),
                                           "prepend_bos": ec.prepend_bos})
    print(f"embed: {len(seqs)} sequences, layer {layer}, pool {ec.pool} -> {out}/")
    return 0
