"""Order-k Markov chain over the four bases: the honest floor for every neural result.

A base ``x_i`` is predicted from the ``k`` bases before it with additive (Laplace/Lidstone)
smoothing of the transition counts ``c(u, b)`` of context ``u = x_{i-k} .. x_{i-1}``:

    P(b | u) = (c(u, b) + alpha) / (sum_b' c(u, b') + 4 alpha)

(Durbin, Eddy, Krogh & Mitchison 1998, "Biological Sequence Analysis", ch. 3; Chen & Goodman 1999
for additive smoothing). Counts are kept for every order ``0 .. k`` (``counts_by_order[j]`` has
shape ``(4**j, 4)``) so that a position whose context is cut short, by the start of a sequence
or by an N, backs off to the longest N-free context before it (order ``j < k``). Counting skips
every (context, target) pair of an order whose context or target holds N (or any non-ACGT id);
the lower orders still count the bases nearer to the target.

A context ``x_{i-j} .. x_{i-1}`` has the code ``sum_m code(x_{i-m}) * 4**(m-1)`` with
A 0, C 1, G 2, T 3: the oldest base is the most significant digit, so the order-``j`` code of a
position is its order-``k`` code modulo ``4**j``. Counting is one ``np.bincount`` per order over
these rolling codes.

Inputs are CharTokenizer ids (A 7, C 8, G 9, T 10, N 11), as in a prepared directory.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dnalm.errors import ConfigError, InputError
from dnalm.tokenizers import A_ID, CHAR_VOCAB, COMPLEMENT_IDS
from dnalm.utils import atomic_dir, track

FORMAT = "dnalm-markov/1"
CONFIG_FILE = "config.json"
COUNTS_FILE = "markov.npz"
MAX_ORDER = 14
LN2 = math.log(2.0)
NON_BASE_LOGIT = -1.0e4
"""Logit that :meth:`MarkovModel.forward` gives to tokens other than A, C, G, T."""

_BASE_CODE = np.full(256, -1, dtype=np.int64)
_BASE_CODE[A_ID:A_ID + 4] = np.arange(4)


@dataclass(frozen=True)
class MarkovConfig:
    """An order-``order`` chain with additive smoothing ``alpha`` (1 is Laplace's rule)."""

    order: int = 6
    alpha: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.order <= MAX_ORDER:
            raise ConfigError(f"Markov order must lie in [0, {MAX_ORDER}], got {self.order}")
        if not self.alpha > 0:
            raise ConfigError(f"Markov smoothing alpha must be > 0, got {self.alpha}")

    @property
    def n_contexts(self) -> int:
        return 4**self.order


@dataclass
class BitsPerBase:
    """Bits per base overall and per region class (only A/C/G/T targets are scored)."""

    overall: float
    n_bases: int
    per_region: dict[int, float] = field(default_factory=dict)
    region_bases: dict[int, int] = field(default_factory=dict)

    def named(self, names: Sequence[str]) -> dict[str, float]:
        """``per_region`` keyed by class name instead of id."""
        return {names[c] if c < len(names) else str(c): v for c, v in sorted(self.per_region.items())}


def _codes(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Base codes (0-3, 0 where invalid) and validity of ``(L,)`` token ids."""
    a = np.asarray(ids)
    if a.dtype == np.uint8:
        code = _BASE_CODE[a]
    else:
        code = np.where((a >= 0) & (a < 256), _BASE_CODE[np.clip(a, 0, 255)], -1)
    valid = code >= 0
    return np.where(valid, code, 0), valid


def _chunks(start: int, end: int, size: int) -> Iterator[tuple[int, int]]:
    for c0 in range(start, end, size):
        yield c0, min(end, c0 + size)


class MarkovModel:
    """Order-k Markov chain with additive smoothing and back-off to shorter contexts.

    Attributes:
        config: :class:`MarkovConfig`.
        counts_by_order: ``[(4**j, 4) int64 for j in 0..k]`` transition counts.
    """

    def __init__(self, order: int | MarkovConfig = 6, alpha: float = 1.0):
        self.config = order if isinstance(order, MarkovConfig) else MarkovConfig(int(order), float(alpha))
        self.counts_by_order = [np.zeros((4**j, 4), dtype=np.int64) for j in range(self.order + 1)]

    @property
    def order(self) -> int:
        return self.config.order

    @property
    def alpha(self) -> float:
        return self.config.alpha

    @property
    def counts(self) -> np.ndarray:
        """Counts of the full order: ``(4**k, 4)`` int64, row = context code, column = next base."""
        return self.counts_by_order[-1]

    # ------------------------------------------------------------------ counting
    def reset(self) -> MarkovModel:
        for c in self.counts_by_order:
            c[:] = 0
        return self

    def update(self, ids: np.ndarray, first: int = 0) -> MarkovModel:
        """Add the transitions into positions ``first ..`` of ``ids`` ``(L,)`` (the bases before ``first``
        serve as context only)."""
        k = self.order
        b, valid = _codes(ids)
        n = len(b)
        if n <= first:
            return self
        b_pad = np.concatenate([np.zeros(k, dtype=np.int64), b])
        v_pad = np.concatenate([np.zeros(k, dtype=bool), valid])
        target = b[first:]
        ok = valid[first:].copy()
        code = np.zeros(n - first, dtype=np.int64)
        for j in range(k + 1):
            if j:
                src = slice(first + k - j, n + k - j)
                code += b_pad[src] << (2 * (j - 1))
                ok &= v_pad[src]
            keys = (code[ok] << 2) | target[ok]
            flat = self.counts_by_order[j].reshape(-1)
            if flat.size <= 8 * max(keys.size, 1):
                flat += np.bincount(keys, minlength=flat.size)
            else:
                uniq, cnt = np.unique(keys, return_counts=True)
                flat[uniq] += cnt
        return self

    def fit(self, token_arrays: Iterable[np.ndarray], both_strands: bool = False) -> MarkovModel:
        """Count transitions in each ``(L_i,)`` array of token ids (and their reverse complements)."""
        self.reset()
        for ids in token_arrays:
            ids = np.asarray(ids)
            self.update(ids)
            if both_strands:
                self.update(COMPLEMENT_IDS[ids[::-1]])
        return self

    def fit_prepared(self, prepared: Any, split: str = "train", both_strands: bool = True,
                     chunk: int = 1 << 22) -> MarkovModel:
        """Count transitions in the intervals of ``split`` of a :class:`~dnalm.data.prepared.PreparedGenome`,
        in chunks of ``chunk`` targets (memory stays flat for any genome size)."""
        self.reset()
        k = self.order
        pieces = [(iv.start, iv.end, c0, c1) for iv in prepared.intervals(split)
                  for c0, c1 in _chunks(iv.start, iv.end, chunk)]
        for s, e, c0, c1 in track(pieces, desc=f"order-{k} counts", unit="chunk"):
            a0 = max(s, c0 - k)
            self.update(np.asarray(prepared.tokens[a0:c1]), first=c0 - a0)
            if both_strands:
                rc = COMPLEMENT_IDS[np.asarray(prepared.tokens[c0:min(e, c1 + k)])[::-1]]
                self.update(rc, first=len(rc) - (c1 - c0))
        return self

    def truncate(self, order: int) -> MarkovModel:
        """The order-``order`` model (``order <= k``) with the same counts; equal to fitting that order."""
        if not 0 <= order <= self.order:
            raise ConfigError(f"cannot truncate an order-{self.order} Markov model to order {order}")
        out = MarkovModel(order, self.alpha)
        out.counts_by_order = [c.copy() for c in self.counts_by_order[: order + 1]]
        return out

    # ------------------------------------------------------------------ probabilities
    def _context(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per position of ``ids`` ``(L,)``: order-k context code, order used, base code, validity."""
        k = self.order
        b, valid = _codes(ids)
        n = len(b)
        code = np.zeros(n, dtype=np.int64)
        for m in range(1, min(k, n) + 1):
            code[m:] += b[:-m] << (2 * (m - 1))
        pos = np.arange(n)
        last_invalid = np.maximum.accumulate(np.where(valid, -1, pos)) if n else pos
        run = np.empty(n, dtype=np.int64)
        if n:
            run[0] = 0
            run[1:] = pos[1:] - 1 - last_invalid[:-1]
        return code, np.minimum(run, k), b, valid

    def log_probs(self, ids: np.ndarray) -> np.ndarray:
        """Natural-log probabilities of A, C, G, T at each position given the bases before it:
        ``(L,) ids -> (L, 4)`` float64."""
        code, used, _, _ = self._context(np.asarray(ids))
        out = np.empty((len(code), 4), dtype=np.float64)
        for j in range(self.order + 1):
            sel = np.flatnonzero(used == j)
            if sel.size:
                c = self.counts_by_order[j][code[sel] & (4**j - 1)].astype(np.float64)
                out[sel] = np.log(c + self.alpha) - np.log(c.sum(1, keepdims=True) + 4 * self.alpha)
        return out

    def target_log_probs(self, ids: np.ndarray) -> np.ndarray:
        """Natural-log probability of each base of ``ids`` ``(L,)`` given the bases before it: ``(L,)``
        float64, NaN where the base is not A, C, G or T."""
        lp = self.log_probs(ids)
        b, valid = _codes(ids)
        out = lp[np.arange(len(b)), b]
        out[~valid] = np.nan
        return out

    def score(self, ids: np.ndarray, unit: str = "nats") -> float:
        """Log-likelihood of the A/C/G/T bases of ``ids`` ``(L,)`` (N skipped), in nats or bits."""
        if unit not in ("nats", "bits"):
            raise ConfigError(f"unit must be 'nats' or 'bits', got {unit!r}")
        total = float(np.nansum(self.target_log_probs(ids)))
        return total / LN2 if unit == "bits" else total

    def bits_per_base(self, arrays: Iterable[np.ndarray], regions: Iterable[np.ndarray] | None = None
                      ) -> BitsPerBase:
        """Mean ``-log2 P`` over the A/C/G/T bases of every array, overall and per region class.

        ``regions`` gives, per array, ``(L_i,)`` region bytes of a prepared directory (the soft-mask
        bit is ignored) or class ids. Every base is scored, the first of an array with order 0.
        """
        acc = _BitsAccumulator()
        region_iter = iter(regions) if regions is not None else None
        for ids in arrays:
            reg = None if region_iter is None else np.asarray(next(region_iter))
            acc.add(-self.target_log_probs(np.asarray(ids)) / LN2, reg)
        return acc.result()

    def bits_per_base_prepared(self, prepared: Any, split: str = "val", both_strands: bool = False,
                               chunk: int = 1 << 22) -> BitsPerBase:
        """:meth:`bits_per_base` over the intervals of ``split`` (each scored from its first base), with
        region classes from ``regions.u8``; ``both_strands`` also scores the reverse complements."""
        k, acc = self.order, _BitsAccumulator()
        pieces = [(iv.start, iv.end, c0, c1) for iv in prepared.intervals(split)
                  for c0, c1 in _chunks(iv.start, iv.end, chunk)]
        for s, e, c0, c1 in track(pieces, desc=f"order-{k} bits/base", unit="chunk"):
            a0 = max(s, c0 - k)
            bits = -self.target_log_probs(np.asarray(prepared.tokens[a0:c1]))[c0 - a0:] / LN2
            reg = np.asarray(prepared.regions[c0:c1])
            acc.add(bits, reg)
            if both_strands:
                rc = COMPLEMENT_IDS[np.asarray(prepared.tokens[c0:min(e, c1 + k)])[::-1]]
                bits = -self.target_log_probs(rc)[len(rc) - (c1 - c0):] / LN2
                acc.add(bits, reg[::-1])
        return acc.result()

    def forward(self, input_ids: Any, state: Any = None) -> Any:
        """Next-token logits like a causal LM: ``input_ids (B, L) -> logits (B, L, V)`` (V = 12, the
        CharTokenizer vocabulary). ``logits[b, t]`` predicts token ``t + 1`` from tokens ``<= t`` of the
        row (contexts never reach before the row); tokens other than A/C/G/T get ``NON_BASE_LOGIT``.
        Returns a float32 tensor on the device of ``input_ids`` (a numpy array for numpy input)."""
        if state is not None:
            raise ConfigError("the Markov model keeps no inference state; call it on whole windows")
        is_tensor = hasattr(input_ids, "detach")
        ids = input_ids.detach().cpu().numpy() if is_tensor else np.asarray(input_ids)
        squeeze = ids.ndim == 1
        ids = np.atleast_2d(ids)
        out = np.full(ids.shape + (len(CHAR_VOCAB),), NON_BASE_LOGIT, dtype=np.float32)
        for row in range(ids.shape[0]):
            ext = np.append(ids[row].astype(np.uint8), np.uint8(A_ID))
            out[row, :, A_ID:A_ID + 4] = self.log_probs(ext)[1:]
        out = out[0] if squeeze else out
        if is_tensor:
            import torch

            return torch.from_numpy(out).to(input_ids.device)
        return out

    __call__ = forward

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``markov.npz`` (counts of every order) into directory ``path``."""
        with atomic_dir(path) as tmp:
            np.savez_compressed(tmp / COUNTS_FILE, **{f"order_{j}": c for j, c in enumerate(self.counts_by_order)})
            (tmp / CONFIG_FILE).write_text(json.dumps(
                {"format": FORMAT, "order": self.order, "alpha": self.alpha}, indent=1) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> MarkovModel:
        path = Path(path)
        cfg_file, counts_file = path / CONFIG_FILE, path / COUNTS_FILE
        for f in (cfg_file, counts_file):
            if not f.is_file():
                raise InputError(f"{f}: missing (a Markov model directory holds {CONFIG_FILE} and {COUNTS_FILE})")
        try:
            cfg = json.loads(cfg_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{cfg_file}: not valid JSON ({exc})") from None
        if cfg.get("format") != FORMAT:
            raise InputError(f"{cfg_file}: format is {cfg.get('format')!r}, expected {FORMAT!r}")
        model = cls(int(cfg["order"]), float(cfg["alpha"]))
        try:
            with np.load(counts_file, allow_pickle=False) as npz:
                for j in range(model.order + 1):
                    counts = npz[f"order_{j}"]
                    if counts.shape != (4**j, 4):
                        raise InputError(f"{counts_file}: order_{j} has shape {counts.shape}, expected {(4**j, 4)}")
                    model.counts_by_order[j] = counts.astype(np.int64)
        except (KeyError, ValueError, OSError) as exc:
            raise InputError(f"{counts_file}: cannot read counts ({exc})") from None
        return model

    def __repr__(self) -> str:
        return f"MarkovModel(order={self.order}, alpha={self.alpha}, transitions={int(self.counts_by_order[0].sum())})"


class _BitsAccumulator:
    """Sums of bits and base counts, overall and per region class."""

    def __init__(self) -> None:
        self.bits = np.zeros(128, dtype=np.float64)
        self.n = np.zeros(128, dtype=np.int64)
        self.total_bits, self.total_n = 0.0, 0

    def add(self, bits: np.ndarray, regions: np.ndarray | None) -> None:
        ok = ~np.isnan(bits)
        self.total_bits += float(bits[ok].sum())
        self.total_n += int(ok.sum())
        if regions is not None:
            cls = np.asarray(regions).astype(np.int64)[ok] & 0x7F
            self.bits += np.bincount(cls, weights=bits[ok], minlength=128)
            self.n += np.bincount(cls, minlength=128)

    def result(self) -> BitsPerBase:
        present = np.flatnonzero(self.n)
        return BitsPerBase(overall=self.total_bits / self.total_n if self.total_n else float("nan"),
                           n_bases=self.total_n,
                           per_region={int(c): float(self.bits[c] / self.n[c]) for c in present},
                           region_bases={int(c): int(self.n[c]) for c in present})


def select_order(prepared: Any, orders: Iterable[int] = range(1, 13), split: str = "val",
                 train_split: str = "train", alpha: float = 1.0, both_strands: bool = True
                 ) -> tuple[MarkovModel, dict[int, float]]:
    """Fit on ``train_split`` once at the largest order and pick the order with the lowest bits per
    base on ``split`` (forward strand). Returns the chosen model and ``{order: bits per base}``."""
    orders = sorted(set(int(o) for o in orders))
    if not orders:
        raise ConfigError("select_order needs at least one order")
    full = MarkovModel(orders[-1], alpha).fit_prepared(prepared, train_split, both_strands=both_strands)
    scores = {j: full.truncate(j).bits_per_base_prepared(prepared, split).overall for j in orders}
    best = min(orders, key=lambda j: (scores[j], j))
    return full.truncate(best), scores
