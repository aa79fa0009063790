"""Hidden states of any layer, pooled or per base, for sequences of any length.

Layers are indexed as in :meth:`dnalm.models.blocks.CausalLM.hidden_states`: ``0`` = token
embedding, ``i`` = residual stream after block ``i``, ``-1`` / ``'final'`` = after the final
LayerNorm (what the LM head reads). Pooling over the bases of a sequence: ``mean``, ``max``
(per feature), ``last`` (the last base: for a causal model the only position that has seen the
whole sequence) or ``none`` (per base). A ``[BOS]`` position, when prepended, is left out.

Every sequence goes through :func:`dnalm.inference.chunked.iter_chunks`, so the numbers do not
depend on the chunk size (the failure reported in Evo2 issue 196, ``shared/reference/evo2.md``
§3) and memory does not grow with the length. Pooled statistics are accumulated chunk by
chunk in float64. Per-base outputs are written chunk by chunk into a ``.npy`` file created with
:func:`numpy.lib.format.open_memmap`; the file is mapped only while a chunk is written, so a
whole chromosome never sits in memory.

API
---
``resolve_layer(model, layer) -> int``
``embed_pooled(model, rows, layer=-1, pool='mean', skip=0, ..., precision='32') -> (N, D) float32``
    (``precision='bf16'``: the chunks run under bf16 autocast)
``embed_per_base(model, rows, layer, write, skip=0, ...)``: calls ``write(row, start, block)``
    with blocks (T, D) of consecutive positions.
``NpyStream(path, shape, dtype)``: a ``.npy`` file filled by ``write(start, block)``.
``embed_to_directory(model, rows, ids, out, layer, pool, ...)``: the layout of ``dnalm embed``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap

from dnalm.errors import ConfigError
from dnalm.inference.chunked import check_precision, iter_chunks
from dnalm.inference.scoring import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_TOKENS,
    bucket_batches,
    chunk_tokens,
    pad_rows,
    tokens_tracker,
)
from dnalm.models.blocks import CausalLM
from dnalm.utils import atomic_dir

POOLS = ("mean", "max", "last", "none")
DTYPES = {"float32": np.float32, "float16": np.float16}


def resolve_layer(model: CausalLM, layer: int | str) -> int:
    """Layer index 0..n_layer+1 from an int, a numeric string, or ``'final'``/``'last'`` (= -1)."""
    if isinstance(layer, str):
        text = layer.strip().lower()
        if text in ("final", "last"):
            layer = -1
        else:
            try:
                layer = int(text)
            except ValueError:
                raise ConfigError(f"layer={layer!r} must be an integer or 'final'") from None
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ConfigError(f"layer={layer!r} must be an integer or 'final'")
    return model._layer_indices([layer])[0]


def _check_pool(pool: str) -> None:
    if pool not in POOLS:
        raise ConfigError(f"pool={pool!r} must be one of {', '.join(POOLS)}")


def _row_blocks(model: CausalLM, rows: Sequence[np.ndarray], index: int, skip: int, batch_size: int,
                max_tokens: int, chunk_size: int | None, progress: bool, precision: str | int):
    """``(row, start, block)`` for every chunk of every row: ``block`` (T, D) on the model's device holds the
    hidden states of positions ``skip + start ..`` of row ``row`` (padding and the first ``skip`` left out)."""
    bar = tokens_tracker(rows, "embedding", progress)
    for batch in bucket_batches([len(r) for r in rows], batch_size, max_tokens):
        sub = [rows[i] for i in batch]
        lengths = [len(r) for r in sub]
        for chunk in iter_chunks(model, pad_rows(sub), chunk_size, layers=[index], logits=False,
                                 precision=precision):
            hidden, start = chunk.hidden[0], chunk.start
            if bar is not None:
                bar.update(chunk_tokens(lengths, start, hidden.shape[1]))
            for b, i in enumerate(batch):
                lo, hi = max(start, skip), min(start + hidden.shape[1], lengths[b])
                if hi > lo:
                    yield i, lo - skip, hidden[b, lo - start: hi - start]
    if bar is not None:
        bar.close()


def embed_pooled(model: CausalLM, rows: Sequence[np.ndarray], layer: int | str = -1, pool: str = "mean",
                 skip: int = 0, batch_size: int = DEFAULT_BATCH_SIZE, max_tokens: int = DEFAULT_MAX_TOKENS,
                 chunk_size: int | None = None, progress: bool = False, precision: str | int = "32") -> np.ndarray:
    """One vector per row: rows are N id arrays (n_i,); returns (N, D) float32.

    Positions ``skip .. n_i-1`` are pooled (``skip=1`` leaves out a prepended ``[BOS]``).
    ``precision``: ``'32'`` or ``'bf16'`` (bf16 autocast, see :func:`dnalm.inference.chunked.iter_chunks`).
    """
    _check_pool(pool)
    check_precision(precision)
    if pool == "none":
        raise ConfigError("embed_pooled needs pool=mean, max or last (use embed_per_base for per-base output)")
    index = resolve_layer(model, layer)  # a bad layer fails before any work
    for i, r in enumerate(rows):
        if len(r) <= skip:
            raise ConfigError(f"sequence {i} has no base to embed")
    D = model.backbone.embeddings.word_embeddings.embedding_dim
    # pooled on the model's device (float64 sums): only (N, D) comes back, not every base's hidden state
    out = torch.zeros(len(rows), D, dtype=torch.float64, device=model.lm_head.weight.device)
    if pool == "max":
        out.fill_(-math.inf)
    for i, start, block in _row_blocks(model, rows, index, skip, batch_size, max_tokens, chunk_size, progress,
                                       precision):
        if pool == "mean":
            out[i] += block.sum(0, dtype=torch.float64)
        elif pool == "max":
            out[i] = torch.maximum(out[i], block.max(0).values.double())
        elif start + len(block) == len(rows[i]) - skip:  # last: the block that ends the row
            out[i] = block[-1].double()
    if pool == "mean":
        out /= torch.tensor([len(r) - skip for r in rows], dtype=torch.float64, device=out.device)[:, None]
    return out.float().cpu().numpy()


def embed_per_base(model: CausalLM, rows: Sequence[np.ndarray], layer: int | str,
                   write: Callable[[int, int, np.ndarray], None], skip: int = 0,
                   batch_size: int = DEFAULT_BATCH_SIZE, max_tokens: int = DEFAULT_MAX_TOKENS,
                   chunk_size: int | None = None, progress: bool = False, precision: str | int = "32") -> None:
    """Per-base hidden states of every row, handed to ``write(row, start, block)`` chunk by chunk.

    ``block`` (T, D) float32 holds positions ``skip + start .. skip + start + T - 1`` of row
    ``row``, i.e. output rows ``start .. start + T - 1`` once the first ``skip`` positions are dropped.
    ``precision``: as in :func:`embed_pooled`.
    """
    index = resolve_layer(model, layer)
    check_precision(precision)
    for i, start, block in _row_blocks(model, rows, index, skip, batch_size, max_tokens, chunk_size, progress,
                                       precision):
        write(i, start, block.float().cpu().numpy())


class NpyStream:
    """A ``.npy`` file of ``shape`` (L, D) filled block by block.

    The file is created with :func:`numpy.lib.format.open_memmap` and mapped again for each
    ``write``, then unmapped, so resident memory stays at one block whatever L is.
    """

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...], dtype: Any = np.float32):
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        mm = open_memmap(self.path, mode="w+", dtype=dtype, shape=self.shape)
        mm.flush()
        del mm

    def write(self, start: int, block: np.ndarray) -> None:
        """Rows ``start .. start + len(block) - 1`` <- block."""
        mm = np.load(self.path, mmap_mode="r+")
        mm[start: start + len(block)] = block
        mm.flush()
        del mm


def per_base_file_names(ids: Sequence[str]) -> list[str]:
    """One ``<id>.npy`` file name per sequence: characters other than letters, digits, ``.``, ``-`` and ``_``
    become ``_``; a name already taken (ignoring case, for case-insensitive file systems) gets ``-2``, ``-3``..."""
    names: list[str] = []
    taken: set[str] = set()
    for i, name in enumerate(ids):
        base = re.sub(r"[^A-Za-z0-9._-]", "_", str(name)).lstrip(".") or f"row{i}"
        candidate, k = base, 2
        while candidate.lower() in taken:
            candidate, k = f"{base}-{k}", k + 1
        taken.add(candidate.lower())
        names.append(f"{candidate}.npy")
    return names


def embed_to_directory(model: CausalLM, rows: Sequence[np.ndarray], ids: Sequence[str], out: str | os.PathLike,
                       layer: int | str = -1, pool: str = "mean", skip: int = 0, dtype: str = "float32",
                       batch_size: int = DEFAULT_BATCH_SIZE, max_tokens: int = DEFAULT_MAX_TOKENS,
                       chunk_size: int | None = None, progress: bool = False,
                       metadata: dict[str, Any] | None = None, precision: str | int = "32", pad_id: int = 0) -> Path:
    """Write the embeddings of ``rows`` (named ``ids``) to the directory ``out``, atomically.

    A masked LM (:mod:`dnalm.inference.masked`) takes :class:`~dnalm.inference.masked.TokenRow` rows (ids with
    specials and the bases of each token), padded with ``pad_id``; pools ``mean`` | ``max`` | ``cls`` | ``none``
    (per base: each base gets the vector of its token); ``chunk_size`` is its window (tokens per pass).

    Layout: ``sequences.parquet`` (row, id, length in bases [, file]) and ``embed.json`` (layer,
    pool, dtype, precision, width and ``metadata``); pooled: ``embeddings.npy`` (N, D); per base
    (``pool="none"``): ``<id>.npy`` (length, D) per sequence (named by :func:`per_base_file_names`),
    streamed to disk.
    """
    from dnalm.inference.io import write_parquet
    from dnalm.inference.masked import MASKED_POOLS, embed_masked, objective_of
    from dnalm.models.family import MASKED
    from dnalm.models.heads import backbone_width

    masked = objective_of(model) == MASKED
    if masked:
        if pool not in MASKED_POOLS:
            raise ConfigError(f"pool={pool!r} must be one of {', '.join(MASKED_POOLS)} for a masked LM")
        if skip:
            raise ConfigError("a masked LM reads no [BOS]: prepend_bos must be false")
        if check_precision(precision) != "32":
            raise ConfigError("precision=bf16 applies to the chunked causal path; a masked LM runs in its dtype "
                              "(dtype=bf16 casts it)")
    else:
        _check_pool(pool)
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r} must be one of {', '.join(DTYPES)}")
    if len(ids) != len(rows):
        raise ConfigError(f"{len(ids)} ids for {len(rows)} sequences")
    index = resolve_layer(model, layer)
    precision = check_precision(precision)
    D = backbone_width(model)
    lengths = [int(r.n_bases.sum()) for r in rows] if masked else [len(r) - skip for r in rows]
    for i, n in enumerate(lengths):
        if n < 1:
            raise ConfigError(f"sequence '{ids[i]}' has no base to embed")
    info = {"layer": index, "pool": pool, "dtype": dtype, "precision": precision, "width": D,
            "n_sequences": len(rows), **(metadata or {})}
    with atomic_dir(out) as tmp:
        table: dict[str, Any] = {"row": np.arange(len(rows)), "id": list(ids), "length": np.array(lengths)}
        if masked:
            info["tokens"] = "per-base rows repeat the vector of the token covering the base" if pool == "none" \
                else "pooled over the tokens, [CLS] and [SEP] included"
        if pool == "none":
            names = per_base_file_names(ids)
            streams = [NpyStream(tmp / name, (n, D), DTYPES[dtype]) for name, n in zip(names, lengths, strict=True)]
        if masked:
            vectors = embed_masked(model, rows, index, pool, pad_id,
                                   write=(lambda i, s, block: streams[i].write(s, block)) if pool == "none" else None,
                                   batch_size=batch_size, max_tokens=max_tokens, progress=progress,
                                   window=chunk_size)
            if pool == "none":
                table["file"] = names
            else:
                np.save(tmp / "embeddings.npy", vectors.astype(DTYPES[dtype]))
        elif pool == "none":
            embed_per_base(model, rows, index, lambda i, s, block: streams[i].write(s, block), skip=skip,
                           batch_size=batch_size, max_tokens=max_tokens, chunk_size=chunk_size, progress=progress,
                           precision=precision)
            table["file"] = names
        else:
            vectors = embed_pooled(model, rows, index, pool, skip=skip, batch_size=batch_size,
                                   max_tokens=max_tokens, chunk_size=chunk_size, progress=progress,
                                   precision=precision)
            np.save(tmp / "embeddings.npy", vectors.astype(DTYPES[dtype]))
        write_parquet(tmp / "sequences.parquet", table)
        (tmp / "embed.json").write_text(json.dumps(info, indent=2) + "\n")
    return Path(out)

