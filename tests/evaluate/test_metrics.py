"""Benchmark metrics against hand-computed values and independent formulas."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest

from dnalm.evaluate import metrics as M

IDS = {"A": 7, "C": 8, "G": 9, "T": 10, "N": 11}


def ids(seq: str) -> np.ndarray:
    return np.array([IDS[c] for c in seq], dtype=np.uint8)


def test_next_base_accumulator_per_class_and_overall():
    acc = M.NextBaseAccumulator()
    acc.add(np.array([1.0, 2.0]), np.array([True, False]), np.array([1, 1]))
    acc.add(np.array([3.0]), np.array([True]), np.array([5 | 0x80]))  # the soft-mask bit is ignored
    res = acc.result(["intergenic", "CDS", "UTR", "exon_other", "intron", "promoter", "repeat", "N"])
    assert res.n_bases == 3
    assert res.bits_per_base == pytest.approx(2.0)
    assert res.accuracy == pytest.approx(2 / 3)
    assert res.perplexity == pytest.approx(4.0)
    assert set(res.per_class) == {"CDS", "promoter"}
    assert res.per_class["CDS"].bits_per_base == pytest.approx(1.5)
    assert res.per_class["CDS"].accuracy == pytest.approx(0.5)
    assert res.per_class["CDS"].perplexity == pytest.approx(2**1.5)
    assert res.per_class["promoter"].n_bases == 1
    empty = M.NextBaseAccumulator().result(["intergenic"])
    assert empty.n_bases == 0 and math.isnan(empty.bits_per_base)


def test_auroc_hand_example_and_degenerate_cases():
    # 4 positive-negative pairs: (0.35 > 0.1), (0.35 < 0.4), (0.8 > 0.1), (0.8 > 0.4) -> 3/4
    assert M.auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # a tie counts one half
    assert M.auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    # the NaN score is dropped with its label
    assert M.auroc([0, 0, 1, 1], [0.1, np.nan, 0.35, 0.8]) == pytest.approx(1.0)
    assert math.isnan(M.auroc([1, 1, 1], [0.1, 0.2, 0.3]))


def _mcc_multiclass(y: np.ndarray, p: np.ndarray, classes: list[int]) -> float:
    """Gorodkin's R_K from the confusion matrix."""
    C = np.array([[np.sum((y == a) & (p == b)) for b in classes] for a in classes], dtype=float)
    s, c = C.sum(), np.trace(C)
    t, q = C.sum(axis=1), C.sum(axis=0)
    return (c * s - t @ q) / math.sqrt((s**2 - q @ q) * (s**2 - t @ t))


def _pair_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def test_classification_metrics_against_hand_formulas():
    y = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    proba = np.array([[0.7, 0.2, 0.1], [0.3, 0.4, 0.3], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5],
                      [0.1, 0.1, 0.8], [0.3, 0.3, 0.4], [0.5, 0.2, 0.3], [0.6, 0.3, 0.1]])
    classes = [0, 1, 2]
    m = M.classification_metrics(y, proba, classes)
    pred = proba.argmax(axis=1)
    assert m["accuracy"] == pytest.approx(np.mean(pred == y))
    assert m["mcc"] == pytest.approx(_mcc_multiclass(y, pred, classes))
    f1 = []
    for c in classes:
        tp, fp, fn = np.sum((pred == c) & (y == c)), np.sum((pred == c) & (y != c)), np.sum((pred != c) & (y == c))
        f1.append(2 * tp / (2 * tp + fp + fn))
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    aucs = [_pair_auc(proba[y == c, j], proba[y != c, j]) for j, c in enumerate(classes)]
    assert m["auroc"] == pytest.approx(np.mean(aucs))


def test_gc_fraction_ids():
    assert M.gc_fraction_ids(ids("GGCA")) == pytest.approx(0.75)
    assert M.gc_fraction_ids(ids("GNNA")) == pytest.approx(0.5)  # N is not counted
    assert math.isnan(M.gc_fraction_ids(ids("NNN")))
    assert M.gc_fraction_ids(np.stack([ids("GGGG"), ids("AAAA")])) == pytest.approx(0.5)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_kmer_counts_match_substring_counts(k):
    rng = np.random.default_rng(k)
    seqs = ["".join(rng.choice(list("ACGTN"), size=n, p=[0.24, 0.24, 0.24, 0.24, 0.04])) for n in (50, 2, 31)]
    got = M.kmer_counts([ids(s) for s in seqs], k)
    expected = Counter(s[i:i + k] for s in seqs for i in range(len(s) - k + 1) if "N" not in s[i:i + k])
    alphabetical = ["".join(p) for p in itertools.product("ACGT", repeat=k)]
    assert got.tolist() == [expected.get(kmer, 0) for kmer in alphabetical]


def test_kmer_counts_do_not_span_sequences():
    assert M.kmer_counts([ids("AC"), ids("GT")], 2).sum() == 2
    assert M.kmer_counts([ids("A")], 2).sum() == 0


def test_js_divergence_hand_values():
    assert M.js_divergence(np.array([1, 0]), np.array([0, 1])) == pytest.approx(1.0)
    assert M.js_divergence(np.array([2, 6]), np.array([1, 3])) == pytest.approx(0.0, abs=1e-12)
    p, q = np.array([0.5, 0.5, 0.0]), np.array([0.25, 0.25, 0.5])
    m = (p + q) / 2

    def h(x):
        x = x[x > 0]
        return -(x * np.log2(x)).sum()

    assert M.js_divergence(p * 10, q * 4) == pytest.approx(h(m) - (h(p) + h(q)) / 2)
    assert math.isnan(M.js_divergence(np.zeros(3), q))


def test_first_in_frame_stop():
    assert M.first_in_frame_stop(ids("ATGAAATAGCCC")) == 2
    assert M.first_in_frame_stop(ids("TGACCC")) == 0
    assert M.first_in_frame_stop(ids("ATGAAACCC")) == -1
    # TAA is read in frame 1 only
    assert M.first_in_frame_stop(ids("CTAACC")) == -1
    assert M.first_in_frame_stop(ids("CTAACC"), frame=1) == 0
    # a codon with N is never a stop; an incomplete last codon is not read
    assert M.first_in_frame_stop(ids("TNACCCTAG")) == 2
    assert M.first_in_frame_stop(ids("CCCTA")) == -1


def test_ratio_ci_over_windows_by_hand():
    # windows of (bits, bases): (3, 2), (5, 4), (10, 6): r = 18/12 = 1.5; residuals s - r n = 0, -1, 1;
    # SE = sqrt(3/2 * 2) / 12 = sqrt(3) / 12
    low, high = M.ratio_ci(np.array([3.0, 5.0, 10.0]), np.array([2, 4, 6]))
    half = 1.959963984540054 * math.sqrt(3) / 12
    assert (low, high) == pytest.approx((1.5 - half, 1.5 + half))
    assert all(math.isnan(v) for v in M.ratio_ci(np.array([3.0]), np.array([2])))  # one window: no interval
    acc = M.NextBaseAccumulator()
    # the same three windows as bases: window 0 two bases of 1.5, window 1 four of 1.25, window 2 six of 10/6
    acc.add(np.array([1.5, 1.5, 1.25, 1.25, 1.25, 1.25]), np.ones(6, bool), np.ones(6, int),
            np.array([0, 0, 1, 1, 1, 1]))
    acc.add(np.full(6, 10 / 6), np.ones(6, bool), np.array([1, 1, 1, 1, 5, 5]), np.full(6, 2))
    res = acc.result(["intergenic", "CDS", "UTR", "exon_other", "intron", "promoter", "repeat", "N"])
    assert (res.ci_low, res.ci_high, res.n_windows) == pytest.approx((1.5 - half, 1.5 + half, 3))
    cds = res.per_class["CDS"]  # windows (3, 2), (5, 4), (4 * 10/6, 4)
    assert cds.n_windows == 3 and cds.ci_low < cds.bits_per_base < cds.ci_high
    assert math.isnan(res.per_class["promoter"].ci_low) and res.per_class["promoter"].n_windows == 1


def test_auroc_ci_hanley_mcneil_by_hand_and_its_coverage():
    # A = 0.8, 50 + 50: Q1 = 2/3, Q2 = 1.28/1.8; SE^2 = (0.16 + 49 (Q1 - 0.64) + 49 (Q2 - 0.64)) / 2500
    se = math.sqrt((0.16 + 49 * (2 / 3 - 0.64) + 49 * (1.28 / 1.8 - 0.64)) / 2500)
    assert M.auroc_ci(0.8, 50, 50) == pytest.approx((0.8 - 1.959963984540054 * se, 0.8 + 1.959963984540054 * se))
    low, high = M.auroc_ci(0.0, 2, 2)  # a perfect (inverted) ranking of 2 + 2 windows is not certain
    assert low == 0.0 and high > 0.3
    assert all(math.isnan(v) for v in M.auroc_ci(0.5, 0, 10))
    # coverage on binormal scores (true AUROC = Phi(d / sqrt 2)): about 95% of 400 intervals hold it
    rng = np.random.default_rng(0)
    d, n = 1.0, 60
    true = 0.5 * (1 + math.erf(d / 2))
    hits = 0
    for _ in range(400):
        pos, neg = rng.normal(d, 1, n), rng.normal(0, 1, n)
        area = M.auroc(np.r_[np.ones(n), np.zeros(n)], np.r_[pos, neg])
        lo, hi = M.auroc_ci(area, n, n)
        hits += lo <= true <= hi
    assert 0.91 <= hits / 400 <= 0.985
