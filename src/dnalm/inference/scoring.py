"""Log-likelihoods, per-token log-probabilities and logits of sequences under a causal LM.

For a tokenized sequence ``x_0 .. x_{n-1}`` (optionally preceded by ``[BOS]``), the model
scores every token that has a context::

    log p(x_i | x_<i),  i = 1 .. n-1            (without BOS: the first base is not scored)
    log p(x_i | BOS, x_<i),  i = 0 .. n-1       (with BOS: every base is scored)

The per-sequence log-likelihood is their sum, or their mean over the scored tokens (``reduce``).
These are the quantities of BioNeMo's ``predict_evo2 --output-log-prob-seqs`` and Arc's
``score_sequences`` (``shared/reference/evo2.md`` §1.6, §2.2), with the padding positions never
counted.

Batching: sequences are sorted by length, grouped into batches of at most ``batch_size`` rows
and ``max_tokens`` padded tokens, and right-padded with ``[PAD]``. The models are causal, so
the outputs at real positions do not depend on the padding after them: a batch gives the
numbers of scoring each sequence alone (to float rounding). Sequences of any length go through
:func:`dnalm.inference.chunked.iter_chunks`, which is exact at any length.

API
---
``encode_sequence(tokenizer, seq, prepend_bos=False, where=...) -> (n,) ids`` (uint8 for small vocabularies)
``bucket_batches(lengths, batch_size, max_tokens) -> list[list[int]]``
``score_rows(model, rows, logits_columns=None, ...) -> list[RowScores]``: per-token log-probs
    (n-1,) and optionally logits (n-1, C) of every row (a list of (n,) id arrays).
``token_log_probs(model, rows, ...) -> list[(n-1,) float32]``
``score_sequences(model, rows, reduce='sum', ...) -> (N,) float64``
``reduce_log_probs(log_probs, reduce, keep=None) -> float``; ``logit_columns(model, 'acgt' | 'all') -> ids``
``ambiguous_targets(row, tokenizer) -> (n-1,) bool``: the scored tokens that are N (or [UNK])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dnalm import tokenizers
from dnalm.errors import ConfigError, InputError
from dnalm.inference.chunked import iter_chunks
from dnalm.models.blocks import CausalLM
from dnalm.tokenizers import A_ID, C_ID, G_ID, N_ID, PAD_ID, T_ID, UNK_ID
from dnalm.utils import track

REDUCTIONS = ("sum", "mean")
LOGIT_TOKENS = ("acgt", "all")
DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_TOKENS = 1 << 18


@dataclass
class RowScores:
    """Scores of one row: log_probs (n-1,) float32 of tokens 1..n-1; logits (n-1, C) predicting them."""

    log_probs: np.ndarray
    logits: np.ndarray | None = None


def encode_sequence(tokenizer, seq: str | bytes, prepend_bos: bool = False, where: str = "sequence") -> np.ndarray:
    """Token ids (n,) of ``seq`` without the tokenizer's end token, ``[BOS]`` first when asked.

    The ids are uint8 when the vocabulary has at most 256 tokens (a chromosome of 100 Mb then takes
    100 MB, not 800), int64 otherwise. An invalid character raises :class:`InputError` naming
    ``where`` and the position.
    """
    try:
        body = np.asarray(tokenizer.encode(seq, add_special_tokens=False), dtype=np.int64)
    except InputError as exc:
        raise InputError(f"{where}: {str(exc).removeprefix('sequence: ')}") from None
    if prepend_bos:
        body = np.concatenate([np.array([tokenizer.bos_id], dtype=np.int64), body])
    return body.astype(np.uint8) if getattr(tokenizer, "vocab_size", 1 << 31) <= 256 else body


def logit_columns(model: CausalLM, tokens: str, tokenizer: object | None = None) -> list[int]:
    """Vocabulary ids of the logits to keep: ``'acgt'`` (A, C, G, T of the tokenizer's alphabet; dnalm's
    character ids without a tokenizer) or ``'all'`` (the padded vocabulary).

    ``'acgt'`` needs a tokenizer with one token per base.
    """
    if tokens == "acgt":
        if tokenizer is None:
            return [A_ID, C_ID, G_ID, T_ID]
        try:
            return list(tokenizer.alphabet.acgt)
        except (ConfigError, AttributeError):
            raise ConfigError(f"tokens=acgt needs one token per base, this model uses "
                              f"'{getattr(tokenizer, 'type', type(tokenizer).__name__)}' tokens (use tokens=all)"
                              ) from None
    if tokens == "all":
        return list(range(model.lm_head.weight.shape[0]))
    raise ConfigError(f"tokens={tokens!r} must be one of {', '.join(LOGIT_TOKENS)}")


def ambiguous_targets(row: np.ndarray, tokenizer: object) -> np.ndarray:
    """(n-1,) bool: which scored tokens of ``row`` (its tokens 1..n-1) are N or ``[UNK]`` with a character-level
    tokenizer (IUPAC ambiguity codes are read as N). Training gives them no weight (``data.n_weight=0``), and a
    model's log-probability of an N (about -6.5 nats) says nothing about the sequence, so the scores of
    ``dnalm predict`` leave them out by default. All False for other tokenizers."""
    targets = np.asarray(row[1:])
    if getattr(tokenizer, "type", "char") != "char":
        return np.zeros(targets.shape, dtype=bool)
    return (targets == N_ID) | (targets == UNK_ID)


def reduce_log_probs(log_probs: np.ndarray, reduce: str, keep: np.ndarray | None = None) -> float:
    """Sum, or mean over the scored tokens (NaN when none is scored), in float64; ``keep`` (bool, same shape)
    selects the tokens that count."""
    if reduce not in REDUCTIONS:
        raise ConfigError(f"reduce={reduce!r} must be one of {', '.join(REDUCTIONS)}")
    if keep is not None:
        log_probs = log_probs[keep]
    total = float(np.sum(log_probs, dtype=np.float64))
    if reduce == "sum":
        return total
    return total / log_probs.size if log_probs.size else float("nan")


def pad_batch(rows: Sequence[np.ndarray], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token rows with ``pad_id``: ``input_ids`` and ``attention_mask`` (B, L) int64 on ``device``."""
    batch = tokenizers.padded_batch([np.asarray(r, dtype=np.int64) for r in rows], pad_id, "right")
    return batch["input_ids"].to(device), batch["attention_mask"].to(device)


def bucket_batches(lengths: Sequence[int], batch_size: int = DEFAULT_BATCH_SIZE,
                   max_tokens: int = DEFAULT_MAX_TOKENS) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first).

    A batch holds at most ``batch_size`` rows and, unless it is a single row, at most
    ``max_tokens`` tokens after padding to its longest row.
    """
    if batch_size < 1 or max_tokens < 1:
        raise ConfigError(f"batch_size and max_tokens must be >= 1, got {batch_size} and {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[current[0]] if current else lengths[i]
        if current and (len(current) >= batch_size or (len(current) + 1) * width > max_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def tokens_tracker(rows: Sequence[np.ndarray], desc: str, progress: bool) -> Any:
    """Progress counted in the rows' tokens (``update(n)`` per chunk, so that one chromosome-long row reports
    too), or None without ``progress``."""
    if not progress:
        return None
    return track(iter(()), total=sum(len(r) for r in rows), desc=desc, unit="token", unit_scale=True)


def chunk_tokens(lengths: Sequence[int], start: int, width: int) -> int:
    """Real tokens of the rows (of ``lengths``) in the chunk of positions ``start .. start + width - 1``."""
    return sum(max(0, min(start + width, n) - start) for n in lengths)


def pad_rows(rows: Sequence[np.ndarray], pad_id: int = PAD_ID) -> np.ndarray:
    """Right-pad (n_b,) id arrays into one (B, max n_b) array (a single row is not copied)."""
    if len(rows) == 1:
        return np.asarray(rows[0])[None]
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), pad_id, dtype=np.int64)
    for b, row in enumerate(rows):
        out[b, : len(row)] = row
    return out


def _score_batch(model: CausalLM, rows: Sequence[np.ndarray], logits_columns: Sequence[int] | None,
                 chunk_size: int | None, bar: Any = None) -> list[RowScores]:
    ids = pad_rows(rows)
    B, L = ids.shape
    lengths = [len(r) for r in rows]
    out = [RowScores(np.empty(max(n - 1, 0), dtype=np.float32),
                     None if logits_columns is None else np.empty((max(n - 1, 0), len(logits_columns)),
                                                                  dtype=np.float32))
           for n in lengths]
    if L < 2:
        return out
    columns = None if logits_columns is None else torch.as_tensor(list(logits_columns), dtype=torch.long)
    for chunk in iter_chunks(model, ids, chunk_size, logits=True):
        s = chunk.start
        if bar is not None:
            bar.update(chunk_tokens(lengths, s, chunk.logits.shape[1]))
        e = min(s + chunk.logits.shape[1], L - 1)  # logits at s..e-1 predict tokens s+1..e
        if e <= s:
            continue
        logits = chunk.logits[:, : e - s].float()
        targets = torch.from_numpy(ids[:, s + 1: e + 1].astype(np.int64)).to(logits.device)
        lp = logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0].cpu().numpy()  # (B, e-s)
        picked = None
        if columns is not None:
            picked = logits.index_select(-1, columns.to(logits.device)).cpu().numpy()  # (B, e-s, C)
        for b, n in enumerate(lengths):
            stop = min(e, n - 1)
            if stop > s:
                out[b].log_probs[s:stop] = lp[b, : stop - s]
                if picked is not None:
                    out[b].logits[s:stop] = picked[b, : stop - s]
    return out


def score_rows(model: CausalLM, rows: Sequence[np.ndarray], logits_columns: Sequence[int] | None = None,
               batch_size: int = DEFAULT_BATCH_SIZE, max_tokens: int = DEFAULT_MAX_TOKENS,
               chunk_size: int | None = None, progress: bool = False) -> list[RowScores]:
    """Per-token log-probabilities (and logits) of every row, in the order given.

    rows: N id arrays (n_i,) (see :func:`encode_sequence`). Row i gets ``log_probs`` (n_i-1,)
    with ``log_probs[j] = log p(x_{j+1} | x_<=j)`` and, with ``logits_columns`` (vocabulary ids),
    ``logits`` (n_i-1, C): the model's logits of those ids for the same predictions.
    """
    results: list[RowScores | None] = [None] * len(rows)
    bar = tokens_tracker(rows, "scoring", progress)
    for batch in bucket_batches([len(r) for r in rows], batch_size, max_tokens):
        for i, res in zip(batch, _score_batch(model, [rows[i] for i in batch], logits_columns, chunk_size, bar),
                          strict=True):
            results[i] = res
    if bar is not None:
        bar.close()
    return results  # type: ignore[return-value]


def token_log_probs(model: CausalLM, rows: Sequence[np.ndarray], **kwargs) -> list[np.ndarray]:
    """``log p(x_j | x_<j)`` for j = 1..n-1 of every row: (n_i-1,) float32 arrays (see :func:`score_rows`)."""
    return [r.log_probs for r in score_rows(model, rows, **kwargs)]


def score_sequences(model: CausalLM, rows: Sequence[np.ndarray], reduce: str = "sum", **kwargs) -> np.ndarray:
    """Log-likelihood of every row, summed or averaged over its scored tokens: (N,) float64."""
    if reduce not in REDUCTIONS:
        raise ConfigError(f"reduce={reduce!r} must be one of {', '.join(REDUCTIONS)}")
    return np.array([reduce_log_probs(lp, reduce) for lp in token_log_probs(model, rows, **kwargs)],
                    dtype=np.float64)
