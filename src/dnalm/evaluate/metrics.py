"""Metrics of the genome benchmark, on plain numpy arrays.

Next-base prediction
    :class:`NextBaseAccumulator` sums, per region class, the surprisal ``-log2 p(x_t | x_<t)`` of
    scored bases and whether the most probable base was the right one; :class:`NextBaseMetrics`
    holds bits per base, accuracy and perplexity ``2 ** bits_per_base`` (a per-base perplexity
    over the four-letter alphabet, at most 4 for a model no worse than uniform), with 95% confidence
    intervals over windows (:func:`ratio_ci`).
Binary and multi-class classification
    :func:`auroc` (area under the ROC curve, Hanley & McNeil 1982) with :func:`auroc_ci`, and
    :func:`classification_metrics`: Matthews correlation coefficient (Matthews 1975; its
    multi-class form, Gorodkin 2004), macro-averaged F1 and one-vs-rest macro AUROC, all from
    scikit-learn.
Sequence statistics (inputs are ``CharTokenizer`` ids: A 7, C 8, G 9, T 10, N 11)
    :func:`gc_fraction_ids`, :func:`kmer_counts` (k-mer spectrum), :func:`js_divergence`
    (Jensen–Shannon divergence in bits, Lin 1991) and :func:`first_in_frame_stop` (the first stop
    codon TAA, TAG or TGA in a reading frame).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from dnalm.errors import ConfigError
from dnalm.tokenizers import A_ID, C_ID, G_ID, T_ID

LN2 = math.log(2.0)
STOP_CODONS = ("TAA", "TAG", "TGA")

_CODE = np.full(256, -1, dtype=np.int64)
_CODE[A_ID:A_ID + 4] = np.arange(4)


def base_codes(ids: np.ndarray) -> np.ndarray:
    """Base codes A 0, C 1, G 2, T 3 of token ids ``(...)``; -1 for anything else (N, specials)."""
    a = np.asarray(ids)
    if a.dtype != np.uint8:
        a = np.where((a >= 0) & (a < 256), a, 255).astype(np.uint8)
    return _CODE[a]


# ----------------------------------------------------------------------------- next-base prediction


@dataclass(frozen=True)
class ClassMetrics:
    """Bits per base, accuracy and perplexity of the scored bases of one region class; ``ci_low``/``ci_high``: a
    95% confidence interval of the bits per base over the ``n_windows`` windows that hold these bases
    (:func:`ratio_ci`; NaN with fewer than two windows or without windows recorded)."""

    bits_per_base: float
    accuracy: float
    perplexity: float
    n_bases: int
    ci_low: float = math.nan
    ci_high: float = math.nan
    n_windows: int = 0


Z95 = 1.959963984540054


def ratio_ci(sums: np.ndarray, counts: np.ndarray, z: float = Z95) -> tuple[float, float]:
    """A confidence interval of ``sum(sums) / sum(counts)`` when whole windows are the independent units.

    Bases within a window are correlated (a repeat, a gene), so the interval treats each window's total
    ``sums[k]`` over its ``counts[k]`` bases as one draw: the ratio estimator's standard error
    ``sqrt(K / (K - 1) * sum_k (s_k - r n_k)^2) / sum_k n_k`` (the linearisation of Cochran 1977, §6.4) gives
    ``r -/+ z SE``. NaN for fewer than two windows.
    """
    s = np.asarray(sums, dtype=np.float64)
    n = np.asarray(counts, dtype=np.float64)
    K, total = len(s), float(n.sum())
    if K < 2 or total <= 0:
        return math.nan, math.nan
    r = float(s.sum()) / total
    se = math.sqrt(K / (K - 1) * float(((s - r * n) ** 2).sum())) / total
    return r - z * se, r + z * se


@dataclass(frozen=True)
class NextBaseMetrics:
    """Overall and per-region-class next-base metrics (``per_class`` keyed by class name)."""

    bits_per_base: float
    accuracy: float
    perplexity: float
    n_bases: int
    per_class: dict[str, ClassMetrics] = field(default_factory=dict)
    ci_low: float = math.nan
    ci_high: float = math.nan
    n_windows: int = 0

    def to_dict(self) -> dict:
        return {"bits_per_base": self.bits_per_base, "ci95": [self.ci_low, self.ci_high], "accuracy": self.accuracy,
                "perplexity": self.perplexity, "n_bases": self.n_bases, "n_windows": self.n_windows,
                "per_class": {c: vars(m) for c, m in self.per_class.items()}}


class NextBaseAccumulator:
    """Running sums of bits, correct predictions and base counts per region class id (0..127), and, when the
    bases come with window ids, per window and class (for :func:`ratio_ci`)."""

    def __init__(self) -> None:
        self.bits = np.zeros(128, dtype=np.float64)
        self.correct = np.zeros(128, dtype=np.int64)
        self.n = np.zeros(128, dtype=np.int64)
        self._windows: dict[tuple[int, int], list[float]] = {}  # (window, class) -> [bits, n]

    def add(self, bits: np.ndarray, correct: np.ndarray, classes: np.ndarray, windows: np.ndarray | None = None
            ) -> None:
        """Add scored bases: ``bits`` (n,) surprisal in bits, ``correct`` (n,) bool, ``classes`` (n,) ids and
        optionally ``windows`` (n,) the id of the window each base was scored in."""
        cls = np.asarray(classes, dtype=np.int64) & 0x7F
        b = np.asarray(bits, dtype=np.float64)
        self.bits += np.bincount(cls, weights=b, minlength=128)
        self.correct += np.bincount(cls, weights=np.asarray(correct, dtype=np.float64), minlength=128).astype(
            np.int64)
        self.n += np.bincount(cls, minlength=128)
        if windows is not None:
            keys = np.asarray(windows, dtype=np.int64) * 128 + cls
            uniq, inverse = np.unique(keys, return_inverse=True)
            sums = np.bincount(inverse, weights=b)
            counts = np.bincount(inverse)
            for key, sb, sn in zip(uniq.tolist(), sums.tolist(), counts.tolist()):
                entry = self._windows.setdefault((key // 128, key % 128), [0.0, 0])
                entry[0] += sb
                entry[1] += sn

    def _ci(self, cls: int | None) -> tuple[float, float, int]:
        if not self._windows:
            return math.nan, math.nan, 0
        per: dict[int, list[float]] = {}
        for (w, c), (sb, sn) in self._windows.items():
            if cls is None or c == cls:
                entry = per.setdefault(w, [0.0, 0])
                entry[0] += sb
                entry[1] += sn
        arr = np.array(list(per.values()), dtype=np.float64).reshape(-1, 2)
        lo, hi = ratio_ci(arr[:, 0], arr[:, 1])
        return lo, hi, len(per)

    def result(self, class_names: Sequence[str]) -> NextBaseMetrics:
        """Metrics overall and for every class with at least one scored base (NaN when nothing was scored)."""
        total = int(self.n.sum())
        per_class = {}
        for c in np.flatnonzero(self.n):
            name = class_names[c] if c < len(class_names) else str(int(c))
            per_class[name] = _metrics(float(self.bits[c]), int(self.correct[c]), int(self.n[c]), *self._ci(int(c)))
        overall = _metrics(float(self.bits.sum()), int(self.correct.sum()), total, *self._ci(None))
        return NextBaseMetrics(overall.bits_per_base, overall.accuracy, overall.perplexity, total, per_class,
                               overall.ci_low, overall.ci_high, overall.n_windows)


def _metrics(bits: float, correct: int, n: int, ci_low: float = math.nan, ci_high: float = math.nan,
             n_windows: int = 0) -> ClassMetrics:
    if n == 0:
        return ClassMetrics(math.nan, math.nan, math.nan, 0)
    bpb = bits / n
    return ClassMetrics(bpb, correct / n, 2.0**bpb, n, ci_low, ci_high, n_windows)


# ----------------------------------------------------------------------------- classification


def auroc_ci(area: float, n_pos: int, n_neg: int, z: float = Z95) -> tuple[float, float]:
    """A 95% confidence interval of an AUROC ``area`` from ``n_pos`` positives and ``n_neg`` negatives, with the
    standard error of Hanley & McNeil (1982): ``Q1 = A / (2 - A)``, ``Q2 = 2 A^2 / (1 + A)``,
    ``SE^2 = (A (1 - A) + (n_pos - 1)(Q1 - A^2) + (n_neg - 1)(Q2 - A^2)) / (n_pos n_neg)``, with ``A`` kept
    ``1 / (2 n_pos n_neg)`` away from 0 and 1 (where the formula's variance vanishes); clipped to [0, 1]."""
    if not math.isfinite(area) or n_pos < 1 or n_neg < 1:
        return math.nan, math.nan
    # the formula's variance vanishes at 0 and 1; there it uses the nearest AUROC one pair away from perfect
    edge = 1.0 / (2 * n_pos * n_neg)
    a = min(max(area, edge), 1.0 - edge)
    q1, q2 = a / (2 - a), 2 * a**2 / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a**2) + (n_neg - 1) * (q2 - a**2)) / (n_pos * n_neg)
    se = math.sqrt(max(var, 0.0))
    return max(0.0, area - z * se), min(1.0, area + z * se)


def auroc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` (N,) for binary ``labels`` (N,) (1 = positive).

    Pairs with a non-finite score are left out; NaN when fewer than one positive and one negative remain.
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels).astype(np.int64)
    s = np.asarray(scores, dtype=np.float64)
    keep = np.isfinite(s)
    y, s = y[keep], s[keep]
    if len(np.unique(y)) < 2:
        return math.nan
    return float(roc_auc_score(y, s))


def classification_metrics(y_true: Sequence[int] | np.ndarray, proba: np.ndarray,
                           classes: Sequence[int] | np.ndarray) -> dict[str, float]:
    """Accuracy, MCC, macro-F1 and one-vs-rest macro AUROC of class probabilities ``proba`` (N, C).

    ``classes`` (C,) are the labels of the columns of ``proba``; the prediction is the column of
    highest probability. AUROC is averaged over the classes present in ``y_true`` (N,) with both
    positives and negatives (NaN when none has).
    """
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, roc_auc_score

    y = np.asarray(y_true)
    p = np.asarray(proba, dtype=np.float64)
    cls = np.asarray(classes)
    if p.ndim != 2 or p.shape != (len(y), len(cls)):
        raise ValueError(f"proba has shape {p.shape}, expected ({len(y)}, {len(cls)})")
    pred = cls[np.argmax(p, axis=1)]
    aucs = []
    for j, c in enumerate(cls):
        pos = y == c
        if pos.any() and (~pos).any():
            aucs.append(roc_auc_score(pos.astype(np.int64), p[:, j]))
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "mcc": float(matthews_corrcoef(y, pred)),
        "macro_f1": float(f1_score(y, pred, labels=cls, average="macro", zero_division=0)),
        "auroc": float(np.mean(aucs)) if aucs else math.nan,
    }


# ----------------------------------------------------------------------------- sequence statistics


def gc_fraction_ids(ids: np.ndarray) -> float:
    """(G + C) / (A + C + G + T) of token ids ``(L,)`` (any shape); NaN without A/C/G/T."""
    a = np.asarray(ids)
    gc = int(np.count_nonzero((a == C_ID) | (a == G_ID)))
    at = int(np.count_nonzero((a == A_ID) | (a == T_ID)))
    return gc / (gc + at) if gc + at else math.nan


def kmer_counts(sequences: Iterable[np.ndarray], k: int) -> np.ndarray:
    """Pooled k-mer spectrum of token-id sequences: ``(4**k,)`` int64 counts.

    A k-mer ``b_1 .. b_k`` has index ``sum_i code(b_i) 4**(k-i)`` (A 0, C 1, G 2, T 3; the first base is
    the most significant digit, so indices sort k-mers alphabetically). k-mers are counted inside each
    sequence (none spans two sequences), on the given strand only; k-mers holding a non-ACGT token are
    skipped.
    """
    if not 1 <= k <= 12:
        raise ConfigError(f"k-mer length must lie in [1, 12], got {k}")
    out = np.zeros(4**k, dtype=np.int64)
    for seq in sequences:
        code = base_codes(seq).reshape(-1)
        n = len(code) - k + 1
        if n <= 0:
            continue
        index = np.zeros(n, dtype=np.int64)
        ok = np.ones(n, dtype=bool)
        for i in range(k):
            part = code[i:i + n]
            index = index * 4 + np.maximum(part, 0)
            ok &= part >= 0
        out += np.bincount(index[ok], minlength=4**k)
    return out


def js_divergence(p_counts: np.ndarray, q_counts: np.ndarray) -> float:
    """Jensen–Shannon divergence in bits between two count (or probability) vectors of equal shape.

    ``JSD(P, Q) = H(M) - (H(P) + H(Q)) / 2`` with ``M = (P + Q) / 2`` (Lin 1991), in [0, 1]. Computed as
    the square of :func:`scipy.spatial.distance.jensenshannon` with ``base=2`` (which returns the
    Jensen–Shannon *distance*, the square root of the divergence). NaN when either vector sums to 0.
    """
    from scipy.spatial.distance import jensenshannon

    p = np.asarray(p_counts, dtype=np.float64)
    q = np.asarray(q_counts, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError(f"count vectors differ in shape: {p.shape} vs {q.shape}")
    if p.sum() <= 0 or q.sum() <= 0:
        return math.nan
    return float(jensenshannon(p, q, base=2.0) ** 2)


_STOP_INDEX = frozenset(16 * "ACGT".index(c[0]) + 4 * "ACGT".index(c[1]) + "ACGT".index(c[2]) for c in STOP_CODONS)


def first_in_frame_stop(ids: np.ndarray, frame: int = 0) -> int:
    """Codon number of the first stop codon (TAA, TAG, TGA) read from ``frame`` of ``ids`` ``(L,)``.

    Codon ``m`` is bases ``frame + 3m .. frame + 3m + 2``; only whole codons are read. Returns -1 when no
    codon of the frame is a stop. Codons holding a non-ACGT token are never stops.
    """
    code = base_codes(ids).reshape(-1)[frame:]
    m = len(code) // 3
    if m == 0:
        return -1
    c = code[:3 * m].reshape(m, 3)
    index = np.where((c >= 0).all(axis=1), c[:, 0] * 16 + c[:, 1] * 4 + c[:, 2], -1)
    hits = np.flatnonzero(np.isin(index, list(_STOP_INDEX)))
    return int(hits[0]) if hits.size else -1
