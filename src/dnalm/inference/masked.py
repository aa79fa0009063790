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

A masked model reads a sequence whole up to its family's ``window_tokens`` (DNABERT-2 4,096 tokens, about 20 kb:
attention is quadratic in the token count; Caduceus 131,072, its published context) or a ``window`` given by the
caller. A longer row is read in overlapping windows (:func:`window_row`): each window holds the row's leading and
trailing specials around ``window - specials`` content tokens, consecutive windows overlap by a quarter of those,
and every token is answered for by the one window where it has at least an eighth of the content width of context
on both sides (except at the row's ends): its hidden state, or its masked copy for the pseudo-log-likelihood. A
bidirectional model's outputs then differ from one pass by what lies beyond that margin; a row within one window is
read exactly as before.
``check_objective`` gives the one-line error when a quantity of one objective is asked of the other.

API
---
``check_objective(model, needed, what)``: ConfigError unless the model's family has objective ``needed``
``encode_tokens(tokenizer, seq, where) -> TokenRow`` (ids with specials, bases per token)
``window_row(ids, window, specials) -> list[Window]`` (the passes a row is read in)
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
from dnalm.inference.scoring import DEFAULT_BATCH_SIZE, DEFAULT_MAX_TOKENS, bucket_batches, pad_batch
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


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _batches(rows: Sequence[np.ndarray], batch_size: int, max_tokens: int, progress: bool,
             desc: str) -> Iterable[list[int]]:
    batches = bucket_batches([len(r) for r in rows], batch_size, max_tokens)
    return track(batches, total=len(batches), desc=desc, unit="batch") if progress else batches


# ---------------------------------------------------------------------------------------------
# Windows over long rows
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """One pass over (part of) row ``row``: ``ids`` its tokens; row position = window position + ``shift``;
    it answers for the row positions ``lo .. hi - 1``."""

    row: int
    ids: np.ndarray
    shift: int
    lo: int
    hi: int


def window_row(ids: np.ndarray, window: int | None, specials: set[int], row: int = 0) -> list[Window]:
    """The passes that read the row ``ids`` (see the module docstring): one when it has at most ``window``
    tokens (or ``window`` is None), else windows of exactly ``window`` tokens whose answered ranges tile the row
    in order. A leading and a trailing special token (``[CLS]``, ``[SEP]``) are kept in every window."""
    ids = np.asarray(ids)
    total = len(ids)
    if window is None or total <= window:
        return [Window(row, ids, 0, 0, total)]
    head = int(int(ids[0]) in specials)
    tail = int(total > head and int(ids[-1]) in specials)
    width = window - head - tail  # content tokens per window
    if width < 4:
        raise ConfigError(f"a window of {window} tokens leaves {width} for the sequence; give at least "
                          f"{4 + head + tail}")
    n, margin = total - head - tail, width // 8
    stride = width - 2 * margin
    lead, trail = ids[:head], ids[total - tail:]
    out, start, lo = [], 0, 0
    while start + width < n:
        hi = head + start + width - margin
        out.append(Window(row, np.concatenate([lead, ids[head + start: head + start + width], trail]), start, lo, hi))
        start, lo = start + stride, hi
    start = n - width  # the last window ends with the row
    out.append(Window(row, np.concatenate([lead, ids[head + start: head + n], trail]), start, lo, total))
    return out


def masked_window(model: nn.Module, window: int | None = None) -> int | None:
    """``window`` when given (>= 1), else the model family's ``window_tokens``."""
    from dnalm.models.families import family_of

    if window is not None:
        if int(window) < 1:
            raise ConfigError(f"window (chunk_size) must be >= 1 token, got {window}")
        return int(window)
    return family_of(model).window_tokens


def _windows(model: nn.Module, rows: Sequence[np.ndarray], specials: set[int], window: int | None) -> list[Window]:
    size = masked_window(model, window)
    return [w for i, r in enumerate(rows) for w in window_row(r, size, specials, i)]


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
                           progress: bool = False, window: int | None = None) -> list[np.ndarray]:
    """``log p(x_t | x_without_t)`` of every scored token of every row (ids with specials): (n_i,) float64, NaN
    on tokens not scored (:func:`scored_tokens`).

    Each scored token gives one masked copy of the window that answers for it (the whole row unless it is longer
    than ``window`` tokens: :func:`masked_window`); copies run ``batch_size`` rows (at most ``max_tokens``
    padded tokens) at a time with the attention mask, through ``model(ids, attention_mask)``.
    """
    if alphabet.mask is None:
        raise ConfigError("pseudo-log-likelihood needs a vocabulary with a [MASK] token")
    device = _device(model)
    out = [np.full(len(r), np.nan) for r in rows]
    jobs = [(w, t) for w in _windows(model, rows, _specials(alphabet), window)
            for t in w.lo + np.flatnonzero(scored_tokens(np.asarray(rows[w.row][w.lo:w.hi]), alphabet, skip_n))]
    it = _batches([w.ids for w, _ in jobs], batch_size, max_tokens, progress, "scoring")
    pad = alphabet.pad if alphabet.pad is not None else 0
    for batch in it:
        copies = []
        for k in batch:
            w, t = jobs[k]
            copy = np.asarray(w.ids, dtype=np.int64).copy()
            copy[t - w.shift] = alphabet.mask
            copies.append(copy)
        ids, mask = pad_batch(copies, pad, device)
        logits = model(ids, mask)  # (n, L, V)
        n = torch.arange(len(batch), device=device)
        cols = torch.tensor([jobs[k][1] - jobs[k][0].shift for k in batch], device=device)
        targets = torch.tensor([int(rows[jobs[k][0].row][jobs[k][1]]) for k in batch], device=device)
        wide = torch.promote_types(logits.dtype, torch.float32)
        lp = logits[n, cols].to(wide).log_softmax(-1)[n, targets].double().cpu().numpy()
        for k, v in zip(batch, lp, strict=True):
            w, t = jobs[k]
            out[w.row][t] = v
    return out


# ---------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------


def _hidden_pieces(model: nn.Module, windows: Sequence[Window], index: int, pad: int, batch_size: int,
                   max_tokens: int, progress: bool):
    """``(window, hidden (hi - lo, D))`` for every window: the layer's hidden states of the row positions it
    answers for."""
    device = _device(model)
    for batch in _batches([w.ids for w in windows], batch_size, max_tokens, progress, "embedding"):
        ids, mask = pad_batch([windows[k].ids for k in batch], pad, device)
        (hidden,) = model.hidden_states(ids, [index], attention_mask=mask)
        for b, k in enumerate(batch):
            w = windows[k]
            yield w, hidden[b, w.lo - w.shift: w.hi - w.shift]


@torch.no_grad()
def embed_masked(model: nn.Module, rows: Sequence[TokenRow], layer: int, pool: str, pad_id: int = 0,
                 write: Callable[[int, int, np.ndarray], None] | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                 max_tokens: int = DEFAULT_MAX_TOKENS, progress: bool = False,
                 window: int | None = None) -> np.ndarray | None:
    """Embeddings of a masked LM (see the module docstring): (N, D) float32 for pool ``mean`` | ``max`` |
    ``cls``; padding with ``pad_id``; for ``none`` the per-base vectors go to ``write(row, first base, block)``
    (a row longer than a window in several blocks) and None is returned. ``layer``: a hidden-state index of the
    model (0 embeddings, i after layer i, -1 last); ``window``: tokens per pass (:func:`masked_window`)."""
    if pool not in MASKED_POOLS:
        raise ConfigError(f"pool={pool!r} must be one of {', '.join(MASKED_POOLS)} for a masked LM")
    if pool == "none" and write is None:
        raise ConfigError("pool=none needs a writer for the per-base blocks")
    windows = _windows(model, [r.ids for r in rows], _row_specials(rows), window)
    pooled: list[torch.Tensor | None] = [None] * len(rows)
    for w, hidden in _hidden_pieces(model, windows, layer, pad_id, batch_size, max_tokens, progress):
        row, i = rows[w.row], w.row
        if pool == "none":
            counts = torch.as_tensor(row.n_bases[w.lo:w.hi], device=hidden.device)
            write(i, int(row.n_bases[:w.lo].sum()), hidden.repeat_interleave(counts, dim=0).float().cpu().numpy())
        elif pool == "mean":
            part = hidden.double().sum(0)
            pooled[i] = part if pooled[i] is None else pooled[i] + part
        elif pool == "max":
            part = hidden.max(0).values
            pooled[i] = part if pooled[i] is None else torch.maximum(pooled[i], part)
        elif w.lo == 0:
            pooled[i] = hidden[0]
    if pool == "none":
        return None
    if pool == "mean":
        pooled = [v / len(r.ids) for v, r in zip(pooled, rows, strict=True)]
    return np.stack([v.float().cpu().numpy() for v in pooled])


def _row_specials(rows: Sequence[TokenRow]) -> set[int]:
    """The special tokens at the ends of ``rows`` (those covering no base)."""
    out: set[int] = set()
    for r in rows:
        for j in (0, len(r.ids) - 1):
            if len(r.ids) and r.n_bases[j] == 0:
                out.add(int(r.ids[j]))
    return out


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
