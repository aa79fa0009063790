"""The order-k Markov baseline against hand-computed values, a dictionary implementation and the
entropy rate of a known chain."""

from __future__ import annotations

import math
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from _prepared_helpers import encode, random_sequence, write_prepared  # noqa: E402

from dnalm.data.prepared import PreparedGenome  # noqa: E402
from dnalm.errors import ConfigError, InputError  # noqa: E402
from dnalm.models.markov import NON_BASE_LOGIT, MarkovModel, select_order  # noqa: E402

BASES = "ACGT"


class DictMarkov:
    """Reference: counts in dictionaries keyed by context strings, longest N-free context back-off."""

    def __init__(self, seqs: list[str], k: int, alpha: float):
        self.k, self.alpha = k, alpha
        self.counts = [defaultdict(Counter) for _ in range(k + 1)]
        for s in seqs:
            for i, b in enumerate(s):
                if b not in BASES:
                    continue
                for j in range(k + 1):
                    if i - j < 0 or any(c not in BASES for c in s[i - j:i]):
                        break
                    self.counts[j][s[i - j:i]][b] += 1

    def log_prob(self, s: str, i: int, base: str) -> float:
        j = 0
        while j < self.k and i - j - 1 >= 0 and s[i - j - 1] in BASES:
            j += 1
        c = self.counts[j][s[i - j:i]]
        return math.log((c[base] + self.alpha) / (sum(c.values()) + 4 * self.alpha))


def context_code(ctx: str) -> int:
    return int("".join(str(BASES.index(c)) for c in ctx), 4) if ctx else 0


def test_order1_by_hand():
    ids = encode("ACGTAC")
    m = MarkovModel(1, alpha=1.0).fit([ids])
    # transitions A->C twice, C->G, G->T, T->A; bases A 2, C 2, G 1, T 1
    np.testing.assert_array_equal(m.counts, [[0, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0]])
    np.testing.assert_array_equal(m.counts_by_order[0], [[2, 2, 1, 1]])
    np.testing.assert_allclose(np.exp(m.log_probs(ids)[1]), [1 / 6, 3 / 6, 1 / 6, 1 / 6])
    # P(A) = 3/10 from order 0, then P(C|A) = 3/6, P(G|C) = P(T|G) = P(A|T) = 2/5, P(C|A) = 3/6
    expected = math.log(0.3) + 2 * math.log(0.5) + 3 * math.log(0.4)
    assert m.score(ids) == pytest.approx(expected, rel=1e-12)
    assert m.score(ids, unit="bits") == pytest.approx(expected / math.log(2), rel=1e-12)
    bpb = m.bits_per_base([ids])
    assert bpb.n_bases == 6 and bpb.overall == pytest.approx(-expected / math.log(2) / 6)


@pytest.mark.parametrize("k, alpha", [(3, 0.5), (0, 1.0), (5, 2.0)])
def test_matches_dictionary_implementation(k, alpha):
    rng = np.random.default_rng(k)
    seqs = [random_sequence(rng, n, n_frac=0.05).upper() for n in (400, 3, 250)]
    ref = DictMarkov(seqs, k, alpha)
    m = MarkovModel(k, alpha).fit([encode(s) for s in seqs])
    for j in range(k + 1):
        expected = np.zeros((4**j, 4), dtype=np.int64)
        for ctx, counter in ref.counts[j].items():
            for b, n in counter.items():
                expected[context_code(ctx), BASES.index(b)] = n
        np.testing.assert_array_equal(m.counts_by_order[j], expected)
        np.testing.assert_array_equal(MarkovModel(k + 2, alpha).fit([encode(s) for s in seqs]).truncate(j).counts,
                                      expected)
    test = random_sequence(rng, 300, n_frac=0.05).upper()
    got = m.target_log_probs(encode(test))
    for i, b in enumerate(test):
        if b == "N":
            assert np.isnan(got[i])
        else:
            assert got[i] == pytest.approx(ref.log_prob(test, i, b), rel=1e-12)
    assert m.score(encode(test)) == pytest.approx(np.nansum(got))


def test_forward_gives_next_token_logits():
    rng = np.random.default_rng(3)
    seqs = [random_sequence(rng, 500, n_frac=0.02).upper()]
    ref, m = DictMarkov(seqs, 2, 1.0), MarkovModel(2, 1.0).fit([encode(s) for s in seqs])
    rows = [random_sequence(rng, 12, n_frac=0.1).upper() for _ in range(2)]
    import torch

    logits = m.forward(torch.tensor(np.stack([encode(r) for r in rows]), dtype=torch.int64))
    assert logits.shape == (2, 12, 12) and logits.dtype == torch.float32
    for r, row in enumerate(rows):
        for t in range(12):
            for c, base in enumerate(BASES):
                assert logits[r, t, 7 + c].item() == pytest.approx(ref.log_prob(row[:t + 1] + base, t + 1, base),
                                                                   rel=1e-5)
    assert (logits[..., :7] == NON_BASE_LOGIT).all() and (logits[..., 11] == NON_BASE_LOGIT).all()
    np.testing.assert_allclose(torch.logsumexp(logits, -1).numpy(), 0.0, atol=1e-5)


def _chain(rng: np.random.Generator, P: np.ndarray, n: int) -> str:
    """Sample ``n`` bases of the order-2 chain with transitions ``P`` (16 contexts, 4 bases)."""
    cum = np.cumsum(P, axis=1)
    u = rng.random(n)
    out = np.empty(n, dtype=np.int64)
    out[:2] = rng.integers(0, 4, 2)
    for i in range(2, n):
        out[i] = min(int(np.searchsorted(cum[4 * out[i - 2] + out[i - 1]], u[i], side="right")), 3)
    return "".join(BASES[b] for b in out)


def _entropy_rate(P: np.ndarray) -> float:
    T = np.zeros((16, 16))
    for s in range(16):
        for c in range(4):
            T[s, 4 * (s % 4) + c] = P[s, c]
    w, v = np.linalg.eig(T.T)
    pi = np.real(v[:, np.argmin(np.abs(w - 1))])
    pi /= pi.sum()
    return float(-(pi[:, None] * P * np.log2(P)).sum())


@pytest.fixture(scope="module")
def order2_chain():
    rng = np.random.default_rng(11)
    P = rng.dirichlet([0.5] * 4, size=16)
    return P, _chain(rng, P, 100_000), _chain(rng, P, 40_000)


def test_bits_per_base_approaches_entropy_rate(order2_chain):
    P, train, held_out = order2_chain
    m = MarkovModel(2, alpha=1.0).fit([encode(train)])
    bpb = m.bits_per_base([encode(held_out)])
    assert bpb.overall == pytest.approx(_entropy_rate(P), abs=0.02)
    assert MarkovModel(0).fit([encode(train)]).bits_per_base([encode(held_out)]).overall > bpb.overall + 0.1


def test_select_order_on_a_prepared_genome(order2_chain, tmp_path):
    P, train, held_out = order2_chain
    write_prepared(tmp_path / "p", {"a": train, "b": held_out},
                   splits={"train": [("a", 0, len(train))], "val": [("b", 0, len(held_out))]})
    best, scores = select_order(PreparedGenome(tmp_path / "p"), orders=range(0, 5), both_strands=False)
    assert best.order == 2 and min(scores, key=scores.get) == 2
    assert scores[1] > scores[2] + 0.05 and scores[3] - scores[2] < 0.01


def test_fit_prepared_in_chunks_equals_whole_arrays(tmp_path):
    rng = np.random.default_rng(5)
    records = {"r1": random_sequence(rng, 300, n_frac=0.03, soft_frac=0.3), "r2": random_sequence(rng, 90)}
    regions = {"r1": rng.integers(0, 7, 300), "r2": rng.integers(0, 7, 90)}
    splits = {"train": [("r1", 10, 200), ("r2", 0, 90)], "val": [("r1", 200, 300)]}
    pg = PreparedGenome(write_prepared(tmp_path / "p", records, splits, region_ids=regions))
    arrays = [np.asarray(pg.tokens[s:e]) for _, s, e in pg.intervals("train")]
    whole = MarkovModel(3, 0.5).fit(arrays, both_strands=True)
    chunked = MarkovModel(3, 0.5).fit_prepared(pg, "train", both_strands=True, chunk=7)
    for a, b in zip(whole.counts_by_order, chunked.counts_by_order):
        np.testing.assert_array_equal(a, b)
    (_, s, e), = pg.intervals("val")
    ids, raw = np.asarray(pg.tokens[s:e]), np.asarray(pg.regions[s:e])
    bpb = chunked.bits_per_base_prepared(pg, "val", chunk=11)
    bits = -chunked.target_log_probs(ids) / math.log(2)
    ok = ~np.isnan(bits)
    assert bpb.overall == pytest.approx(bits[ok].mean()) and bpb.n_bases == ok.sum()
    for c, value in bpb.per_region.items():
        assert value == pytest.approx(bits[ok & ((raw & 0x7F) == c)].mean())
    assert bpb.named(pg.region_classes).keys() <= set(pg.region_classes)
    both = chunked.bits_per_base_prepared(pg, "val", both_strands=True, chunk=11)
    assert both.n_bases == 2 * ok.sum()


def test_save_load_and_errors(tmp_path):
    m = MarkovModel(2, 0.3).fit([encode("ACGTTGCANNACGT")])
    m.save(tmp_path / "mk")
    back = MarkovModel.load(tmp_path / "mk")
    assert back.order == 2 and back.alpha == 0.3
    for a, b in zip(m.counts_by_order, back.counts_by_order):
        np.testing.assert_array_equal(a, b)
    (tmp_path / "mk" / "config.json").write_text('{"format": "other", "order": 2, "alpha": 1}')
    with pytest.raises(InputError, match="format is 'other'"):
        MarkovModel.load(tmp_path / "mk")
    with pytest.raises(InputError, match=r"nothing/config\.json: missing"):
        MarkovModel.load(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="alpha must be > 0"):
        MarkovModel(2, 0.0)
    with pytest.raises(ConfigError, match="order"):
        MarkovModel(40)


def test_order_selection_on_the_chloroplast(tmp_path):
    from conftest import shared_file
    from dnalm.data.prepare import GenomeSpec, prepare
    from dnalm.genome.splits import SplitSpec

    fasta = shared_file("athal_chloroplast", "NC_000932.1.fa")
    out = prepare([GenomeSpec("athal", str(fasta))], tmp_path / "prep",
                  SplitSpec(strategy="intervals", val=["NC_000932.1:100001-130000"]))
    best, scores = select_order(PreparedGenome(out), orders=range(0, 7))
    # AT-rich plastid DNA: the base composition alone is below 2 bits, context helps further
    assert 1.85 < scores[0] < 2.0
    assert best.order >= 2 and scores[best.order] == min(scores.values()) < scores[0] - 0.02
