"""Inference with a masked (bidirectional) LM: pseudo-log-likelihoods, embeddings, masked-marginal variant scores.

A masked family (``Family.objective == "masked"``: DNABERT-2, Caduceus) has no next-token distribution: nothing
is generated and no causal log-likelihood exists. Its scores are built from the MLM head at masked positions:

* **Pseudo-log-likelihood** (Salazar et al. 2020, "Masked Language Model Scoring"): each scored token
  ``x_t`` is masked in turn and ``log p(x_t | x_without_t)`` read off the head;
  ``PLL(x) = sum_t log p(x_t | x_without_t)``. Scored tokens are the real, non-special ones (``[CLS]``,
  ``[SEP]``, ``[PAD]``, ``[MASK]`` never; ``[UNK]``/N ones only with ``skip_n=False``). With a BPE
  vocabulary a token covers several bases: :class:`TokenRow` records how many (``n_bases``), and the
  per-base mean is ``PLL / (bases covered by the scored tokens)``.
* **Embeddings**: the hidden states of one layer, run with the attention mask (padding never reaches a real
  token). Pooled per sequence over its tokens (``mean`` over every real token, ``[CLS]`` and ``[SEP]``
  included, as DNABERT-2's README embeds; ``max``; ``cls``, the first token), or per base (``none``):
  the vector of the token covering each base, so the output has one row per base as for the other
  families.
* **Masked-marginal variant effect** (Meier et al. 2021, "Language models enable zero-shot prediction of
  the effects of mutations on protein function"), see :func:`masked_marginal`.

A masked model reads a sequence whole (no chunking; attention is quadratic in the token count).
``check_objective`` gives the one-line error when a quantity of one objective is asked of the other.

API
---
``check_objective(model, needed, what)``: ConfigError unless the model's family has objective ``needed``
``encode_tokens(tokenizer, seq, where) -> TokenRow`` (ids with specials, bases per token)
``pseudo_log_likelihoods(model, rows, ...) -> list[(n,) float64]`` (NaN where not scored)
``embed_masked(model, rows, layer, pool, ...) -> (N, D)`` or per-base blocks through ``write``
``masked_marginal(model, tokenizer, window, offset, ref, alt) -> (ref_score, alt_score)``
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dnalm.errors import ConfigError, InputError
from dnalm.inference.scoring import DEFAULT_BATCH_SIZE, DEFAULT_MAX_TOKENS, bucket_batches
from dnalm.utils import track

MASKED_POOLS = ("mean", "max", "cls", "none")


def objective_of(model: nn.Module) -> str:
    """``causal`` or ``masked``: the objective of the model's family."""
    from dnalm.models.families import family_of

    return family_of(model).objective


def check_objective(model: nn.Module, needed: str, what: str) -> None:
    """ConfigError (one line) unless ``model``'s family has objective ``needed``; ``what`` names the request."""
    from dnalm.models.families import family_of
    from dnalm.models.family import CAUSAL

    fam = family_of(model)
    if fam.objective == needed:
        return
    if needed == CAUSAL:
        raise ConfigError(f"{what} needs a causal LM; this is a masked LM ({fam.name}): it scores sequences by "
                          "pseudo-log-likelihood (predict output_type=loglik or per_token)")
    raise ConfigError(f"{what} needs a masked LM; this is a causal LM ({fam.name}): its scores are next-token "
                      "log-likelihoods")


# ---------------------------------------------------------------------------------------------
# Tokens and the bases they cover
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenRow:
    """One encoded sequence: ``ids`` (n,) int64 with the tokenizer's specials, ``n_bases`` (n,) int64 the
    bases each token covers (0 for specials), ``start`` (n,) int64 the 0-based position of its first base
    (-1 for specials)."""

    ids: np.ndarray
    n_bases: np.ndarray
    start: np.ndarray


def _bases_of(tokenizer, ids: Sequence[int], specials: set[int]) -> np.ndarray:
    out = np.zeros(len(ids), dtype=np.int64)
    for j, t in enumerate(ids):
        if int(t) not in specials:
            out[j] = len(tokenizer.decode([int(t)], skip_special_tokens=True)) or 1
    return out


def _specials(alphabet) -> set[int]:
    return {i for i in (alphabet.pad, alphabet.bos, alphabet.eos, alphabet.mask) if i is not None}


def encode_tokens(tokenizer, seq: str, where: str = "sequence") -> TokenRow:
    """Encode ``seq`` with the tokenizer's specials (``[CLS] ... [SEP]``) and record the bases of every token."""
    try:
        ids = np.asarray(tokenizer.encode(seq), dtype=np.int64)
    except InputError as exc:
        raise InputError(f"{where}: {str(exc).removeprefix('sequence: ')}") from None
    n_bases = _bases_of(tokenizer, ids, _specials(tokenizer.alphabet))
    if int(n_bases.sum()) != len(seq):
        raise InputError(f"{where}: its {len(seq):,} characters encode to tokens covering {int(n_bases.sum()):,} "
                         "bases (characters the tokenizer drops, such as spaces?)")
    start = np.where(n_bases > 0, np.cumsum(n_bases) - n_bases, -1)
    return TokenRow(ids, n_bases, start)


def _pad(rows: Sequence[np.ndarray], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.as_tensor(np.asarray(r, dtype=np.int64))
        mask[b, : len(r)] = 1
    return ids.to(device), mask.to(device)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _batches(rows: Sequence[np.ndarray], batch_size: int, max_tokens: int, progress: bool,
             desc: str) -> Iterable[list[int]]:
    batches = bucket_batches([len(r) for r in rows], batch_size, max_tokens)
    return track(batches, total=len(batches), desc=desc, unit="batch") if progress else batches


# ---------------------------------------------------------------------------------------------
# Pseudo-log-likelihood
# ---------------------------------------------------------------------------------------------


def scored_tokens(ids: np.ndarray, alphabet, skip_n: bool = True) -> np.ndarray:
    """(n,) bool: the tokens a pseudo-log-likelihood scores (not special; not ``[UNK]``/N with ``skip_n``)."""
    skip = _specials(alphabet)
    if skip_n:
        skip |= {i for i in (alphabet.unk, alphabet.n) if i is not None}
    return ~np.isin(ids, sorted(skip))


@torch.no_grad()
def pseudo_log_likelihoods(model: nn.Module, rows: Sequence[np.ndarray], alphabet, skip_n: bool = True,
                           batch_size: int = DEFAULT_BATCH_SIZE, max_tokens: int = DEFAULT_MAX_TOKENS,
                           progress: bool = False) -> list[np.ndarray]:
    """``log p(x_t | x_without_t)`` of every scored token of every row (ids with specials): (n_i,) float64, NaN
    on tokens not scored (:func:`scored_tokens`).

    Each scored token gives one masked copy of its row; copies run ``batch_size`` rows (at most
    ``max_tokens`` padded tokens) at a time with the attention mask, through ``model(ids, attention_mask)``.
    """
    if alphabet.mask is None:
        raise ConfigError("pseudo-log-likelihood needs a vocabulary with a [MASK] token")
    device = _device(model)
    out = [np.full(len(r), np.nan) for r in rows]
    jobs = [(i, t) for i, r in enumerate(rows) for t in np.flatnonzero(scored_tokens(np.asarray(r), alphabet,
                                                                                      skip_n))]
    lengths = [len(rows[i]) for i, _ in jobs]
    batches = bucket_batches(lengths, batch_size, max_tokens)
    it: Iterable[list[int]] = track(batches, total=len(batches), desc="scoring", unit="batch") if progress \
        else batches
    pad = alphabet.pad if alphabet.pad is not None else 0
    for batch in it:
        copies = []
        for k in batch:
            i, t = jobs[k]
            row = np.asarray(rows[i], dtype=np.int64).copy()
            row[t] = alphabet.mask
            copies.append(row)
        ids, mask = _pad(copies, pad, device)
        logits = model(ids, mask)  # (n, L, V)
        n = torch.arange(len(batch), device=device)
        cols = torch.tensor([jobs[k][1] for k in batch], device=device)
        targets = torch.tensor([int(rows[jobs[k][0]][jobs[k][1]]) for k in batch], device=device)
        wide = torch.promote_types(logits.dtype, torch.float32)
        lp = logits[n, cols].to(wide).log_softmax(-1)[n, targets].double().cpu().numpy()
        for k, v in zip(batch, lp, strict=True):
            i, t = jobs[k]
            out[i][t] = v
    return out


# ---------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------


def _hidden_blocks(model: nn.Module, rows: Sequence[np.ndarray], index: int, pad: int, batch_size: int,
                   max_tokens: int, progress: bool):
    """``(row, hidden (n_i, D))`` for every row: the layer's hidden states of its real tokens."""
    device = _device(model)
    for batch in _batches(rows, batch_size, max_tokens, progress, "embedding"):
        ids, mask = _pad([rows[i] for i in batch], pad, device)
        (hidden,) = model.hidden_states(ids, [index], attention_mask=mask)
        for b, i in enumerate(batch):
            yield i, hidden[b, : len(rows[i])]


@torch.no_grad()
def embed_masked(model: nn.Module, rows: Sequence[TokenRow], layer: int, pool: str, pad_id: int = 0,
                 write: Callable[[int, int, np.ndarray], None] | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                 max_tokens: int = DEFAULT_MAX_TOKENS, progress: bool = False) -> np.ndarray | None:
    """Embeddings of a masked LM (see the module docstring): (N, D) float32 for pool ``mean`` | ``max`` |
    ``cls``; padding with ``pad_id``; for ``none`` the per-base vectors (n_bases_i, D) go to
    ``write(row, 0, block)`` and None is returned. ``layer``: a hidden-state index of the model (0 embeddings,
    i after layer i, -1 last)."""
    if pool not in MASKED_POOLS:
        raise ConfigError(f"pool={pool!r} must be one of {', '.join(MASKED_POOLS)} for a masked LM")
    if pool == "none" and write is None:
        raise ConfigError("pool=none needs a writer for the per-base blocks")
    ids = [r.ids for r in rows]
    vectors: list[np.ndarray | None] = [None] * len(rows)
    for i, hidden in _hidden_blocks(model, ids, layer, pad_id, batch_size, max_tokens, progress):
        if pool == "none":
            counts = torch.as_tensor(rows[i].n_bases, device=hidden.device)
            write(i, 0, hidden.repeat_interleave(counts, dim=0).float().cpu().numpy())
            continue
        if pool == "mean":
            v = hidden.double().mean(0)
        elif pool == "max":
            v = hidden.max(0).values
        else:
            v = hidden[0]
        vectors[i] = v.float().cpu().numpy()
    return None if pool == "none" else np.stack(vectors)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Masked-marginal variant effects
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def masked_marginal(model: nn.Module, tokenizer, window: str, offset: int, ref: str,
                    alt: str) -> tuple[float, float]:
    """Masked-marginal scores of replacing ``ref`` (at 0-based ``offset`` of ``window``) by ``alt``.

    The reference window is tokenized; ``S`` are its tokens overlapping the bases ``offset .. offset +
    len(ref) - 1`` (for an insertion, whose VCF ``ref`` is the anchor base, that base's token). Their bases
    with the variant applied are tokenized alone into ``S'``. The tokens outside ``S`` stay as in the
    reference (BPE could cut the alternative window elsewhere; keeping the reference's context tokens gives
    both alleles the same context). Then::

        ref_score = sum_{s in S}  log p(s  | context, [MASK] x |S|)
        alt_score = sum_{s in S'} log p(s' | context, [MASK] x |S'|)

    each read at the masked positions of one forward. When ``|S| == |S'|`` (every SNV whose tokens keep their
    count) both are read off the same masked input, the masked marginal of Meier et al. 2021; otherwise each
    allele gets its own count of masks. Returns (ref_score, alt_score) in nats; delta = alt - ref.
    """
    alphabet = tokenizer.alphabet
    row = encode_tokens(tokenizer, window, "variant window")
    lo, hi = offset, offset + max(len(ref), 1)
    ends = row.start + row.n_bases
    hit = np.flatnonzero((row.n_bases > 0) & (row.start < hi) & (ends > lo))
    if hit.size == 0:
        raise InputError(f"variant at window offset {offset}: no token covers it")
    first, last = int(hit[0]), int(hit[-1])
    a, b = int(row.start[first]), int(ends[last])
    span_alt = window[a:offset] + alt + window[offset + len(ref): b]
    alt_ids = np.asarray(tokenizer.encode(span_alt, add_special_tokens=False), dtype=np.int64)
    ref_ids = row.ids[first: last + 1]
    left, right = row.ids[:first], row.ids[last + 1:]
    device = _device(model)
    log_probs: dict[int, torch.Tensor] = {}  # number of masks -> (n, V) log-probabilities at the masks

    def score(tokens: np.ndarray) -> float:
        n = len(tokens)
        if n not in log_probs:
            masked = np.concatenate([left, np.full(n, alphabet.mask, dtype=np.int64), right])
            ids = torch.as_tensor(masked, device=device)[None]
            logits = model(ids, torch.ones_like(ids))[0, len(left): len(left) + n]
            log_probs[n] = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)
        lp = log_probs[n]
        return float(lp[torch.arange(n, device=device), torch.as_tensor(tokens, device=device)].double().sum())

    return score(ref_ids), score(alt_ids)
