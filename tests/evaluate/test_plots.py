"""Each plot's returned numbers against an independent computation, and the PNG it wrote."""

from __future__ import annotations

import math
import statistics
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread
from scipy import special, stats

from dnalm.errors import ConfigError, InputError
from dnalm.evaluate import plots as P


def assert_png(path: Path) -> None:
    """The file decodes as an image with some contrast, and no temporary file was left beside it."""
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert float(img[..., :3].std()) > 0.01
    assert not list(path.parent.glob(".*.tmp"))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def random_dna(rng: np.random.Generator, n: int, length: int, alphabet: str = "ACGT") -> list[str]:
    return ["".join(rng.choice(list(alphabet), length)) for _ in range(n)]


# ----------------------------------------------------------------------------- sequences


def test_sequence_logo_counts_probability_and_bits(tmp_path, rng):
    seqs = random_dna(rng, 25, 9, "ACGTN") + ["ttttttttt", "NNNNNNNNN"]
    seqs = [s[:4] + "N" + s[5:] if i % 2 else s for i, s in enumerate(seqs)]
    prob = P.sequence_logo(seqs, tmp_path / "p.png", kind="probability")
    info = P.sequence_logo(seqs, tmp_path / "i.png", kind="information")
    for res in (prob, info):
        assert res.counts.shape == (9, 4) and list(res.counts.columns) == list("ACGT")
        for pos in range(9):
            column = Counter(s[pos].upper() for s in seqs)
            assert [res.counts.loc[pos, b] for b in "ACGT"] == [column[b] for b in "ACGT"]
    for pos in range(9):
        c = np.array([Counter(s[pos].upper() for s in seqs)[b] for b in "ACGT"], dtype=float)
        p = c / c.sum()
        np.testing.assert_allclose(prob.matrix.loc[pos].to_numpy(), p, atol=1e-12)
        h = -sum(x * math.log2(x) for x in p if x > 0)
        np.testing.assert_allclose(info.matrix.loc[pos].to_numpy(), p * (2.0 - h), atol=1e-9)
    assert info.n_sequences == len(seqs)
    assert_png(tmp_path / "p.png")
    assert_png(tmp_path / "i.png")


def test_sequence_logo_conserved_column_has_two_bits_and_all_n_column_is_empty(tmp_path):
    res = P.sequence_logo(["AN", "AN", "AN"], tmp_path / "l.png")
    np.testing.assert_allclose(res.matrix.to_numpy(), [[2, 0, 0, 0], [0, 0, 0, 0]], atol=1e-12)


def test_sequence_logo_rejects_unequal_lengths_and_bad_kind(tmp_path):
    with pytest.raises(InputError, match="sequence 2 has length 3"):
        P.sequence_logo(["ACGT", "ACGA", "ACG"], tmp_path / "l.png")
    with pytest.raises(ConfigError, match="logo kind"):
        P.sequence_logo(["ACGT"], tmp_path / "l.png", kind="bits")
    assert not (tmp_path / "l.png").exists()


def test_gc_content_matches_per_sequence_count(tmp_path, rng):
    seqs = random_dna(rng, 40, 50, "ACGTNacgt") + ["NNNN", "GGCC"]
    res = P.gc_content(seqs, tmp_path / "gc.png", bins=10)
    expected = []
    for s in seqs:
        gc = sum(1 for b in s if b in "GCgc")
        acgt = sum(1 for b in s if b in "ACGTacgt")
        if acgt:
            expected.append(gc / acgt)
    np.testing.assert_allclose(res.values, expected)
    assert res.n_skipped == 1
    assert res.counts.sum() == len(expected) and len(res.bin_edges) == 11
    assert res.mean == pytest.approx(statistics.fmean(expected))
    assert res.values[-1] == 1.0
    assert_png(tmp_path / "gc.png")


def test_length_histogram_from_sequences_and_lengths(tmp_path, rng):
    seqs = [s[: int(n)] for s, n in zip(random_dna(rng, 30, 200), rng.integers(5, 200, 30))]
    res = P.length_histogram(seqs, tmp_path / "len.png", bins=7)
    assert res.values.tolist() == [len(s) for s in seqs]
    assert res.counts.sum() == 30 and res.median == statistics.median(len(s) for s in seqs)
    res_log = P.length_histogram([10, 100, 1000, 10000], tmp_path / "log.png", bins=3, log_x=True)
    np.testing.assert_allclose(res_log.bin_edges, [10, 100, 1000, 10000])
    assert res_log.counts.tolist() == [1, 1, 2]
    assert_png(tmp_path / "len.png")


# ----------------------------------------------------------------------------- per-position model outputs


def test_logit_heatmap_selects_columns_and_normalises(tmp_path, rng):
    logits = rng.normal(size=(30, 12)) * 3
    cols = (7, 8, 9, 10)
    res = P.logit_heatmap(logits, tmp_path / "h.png", columns=cols, sequence="ACGTN" * 6)
    assert res.matrix.shape == (4, 30)
    manual = np.exp(logits[:, cols]) / np.exp(logits[:, cols]).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(res.matrix, manual.T, rtol=1e-12)
    np.testing.assert_allclose(res.matrix.sum(axis=0), 1.0)
    raw = P.logit_heatmap(logits[:, cols], tmp_path / "raw.png", values="logits")
    np.testing.assert_array_equal(raw.matrix, logits[:, cols].T)
    log2p = P.logit_heatmap(logits[:, cols], tmp_path / "l2.png", values="log2_probability")
    np.testing.assert_allclose(log2p.matrix, np.log2(manual.T), rtol=1e-10)
    assert_png(tmp_path / "h.png")


def test_logit_heatmap_rejects_bad_shapes(tmp_path, rng):
    with pytest.raises(InputError, match="expected 4 columns"):
        P.logit_heatmap(rng.normal(size=(5, 6)), tmp_path / "h.png")
    with pytest.raises(InputError, match=r"\(L, V\)"):
        P.logit_heatmap(rng.normal(size=(2, 5, 4)), tmp_path / "h.png")
    with pytest.raises(InputError, match="out of range"):
        P.logit_heatmap(rng.normal(size=(5, 6)), tmp_path / "h.png", columns=(7, 8, 9, 10))
    with pytest.raises(InputError, match="sequence has length 3"):
        P.logit_heatmap(rng.normal(size=(5, 4)), tmp_path / "h.png", sequence="ACG")


def test_entropy_curve_equals_scipy_entropy_of_softmax(tmp_path, rng):
    logits = rng.normal(size=(80, 16)) * 4
    cols = (7, 8, 9, 10)
    res = P.entropy_curve(logits, tmp_path / "e.png", columns=cols)
    expected = stats.entropy(special.softmax(logits[:, list(cols)], axis=1), base=2, axis=1)
    np.testing.assert_allclose(res.entropy, expected, rtol=1e-10, atol=1e-12)
    assert res.max_bits == 2.0 and res.mean == pytest.approx(expected.mean())
    full = P.entropy_curve(logits, tmp_path / "full.png")
    np.testing.assert_allclose(full.entropy, stats.entropy(special.softmax(logits, axis=1), base=2, axis=1))
    assert full.max_bits == 4.0
    edge = P.entropy_curve(np.array([[0.0, 0, 0, 0], [50.0, -50, -50, -50]]), tmp_path / "edge.png")
    np.testing.assert_allclose(edge.entropy, [2.0, 0.0], atol=1e-12)
    assert_png(tmp_path / "e.png")


# ----------------------------------------------------------------------------- scores


def test_score_scatter_matches_scipy_correlations(tmp_path, rng):
    x = rng.normal(size=60)
    y = 0.7 * x + rng.normal(size=60)
    y[3], x[10] = np.nan, np.inf
    res = P.score_scatter(y, x, tmp_path / "s.png")
    keep = np.isfinite(x) & np.isfinite(y)
    r, pr = stats.pearsonr(x[keep], y[keep])
    rho, prho = stats.spearmanr(x[keep], y[keep])
    assert res.n == 58
    assert res.pearson_r == pytest.approx(r) and res.pearson_p == pytest.approx(pr)
    assert res.spearman_rho == pytest.approx(rho) and res.spearman_p == pytest.approx(prho)
    assert_png(tmp_path / "s.png")
    with pytest.raises(InputError, match="at least 3"):
        P.score_scatter([1.0, 2.0, np.nan], [1.0, 2.0, 3.0], tmp_path / "t.png")
    with pytest.raises(InputError, match="differ in length"):
        P.score_scatter([1.0, 2.0], [1.0, 2.0, 3.0], tmp_path / "t.png")


def test_score_violin_group_medians_and_quartiles(tmp_path, rng):
    groups = rng.choice(["CDS", "intron", "promoter"], 90)
    scores = rng.normal(size=90) + (groups == "CDS") * 2.0
    scores[0] = np.nan
    res = P.score_violin(scores, groups, tmp_path / "v.png", order=["promoter", "CDS", "intron", "absent"])
    assert res.groups == ("promoter", "CDS", "intron")
    for i, g in enumerate(res.groups):
        vals = [float(s) for s, gg in zip(scores, groups) if gg == g and not math.isnan(s)]
        assert res.n[i] == len(vals)
        assert res.median[i] == pytest.approx(statistics.median(vals))
        q1, _, q3 = statistics.quantiles(vals, n=4, method="inclusive")
        assert (res.q1[i], res.q3[i]) == (pytest.approx(q1), pytest.approx(q3))
    assert_png(tmp_path / "v.png")


def test_score_histogram_per_group_on_shared_bins(tmp_path, rng):
    groups = np.array(["a"] * 30 + ["b"] * 20)
    scores = np.concatenate([rng.normal(size=30), rng.normal(size=20) + 3])
    res = P.score_histogram(scores, tmp_path / "h.png", groups=groups, bins=12)
    assert set(res) == {"a", "b"}
    assert res["a"].counts.sum() == 30 and res["b"].counts.sum() == 20
    np.testing.assert_array_equal(res["a"].bin_edges, res["b"].bin_edges)
    assert res["a"].bin_edges[0] == scores.min() and res["a"].bin_edges[-1] == scores.max()
    single = P.score_histogram(scores, tmp_path / "all.png")
    assert list(single) == ["all"] and single["all"].counts.sum() == 50
    assert_png(tmp_path / "h.png")


def test_ranked_table_png_and_html(tmp_path, rng):
    names = [f"s{i}" for i in range(30)]
    scores = rng.normal(size=30)
    scores[5] = np.nan
    seqs = random_dna(rng, 30, 70)
    res = P.ranked_table(names, scores, tmp_path / "r.png", k=4, sequences=seqs)
    order = sorted((i for i in range(30) if i != 5), key=lambda i: -scores[i])
    assert res.top["name"].tolist() == [names[i] for i in order[:4]]
    assert res.bottom["name"].tolist() == [names[i] for i in order[-4:]]
    assert res.top["rank"].tolist() == [1, 2, 3, 4] and res.bottom["rank"].tolist() == [26, 27, 28, 29]
    assert res.top["sequence"].tolist() == [seqs[i] for i in order[:4]]
    assert_png(tmp_path / "r.png")
    low = P.ranked_table(["<b>x</b>", "y", "z"], [3.0, 1.0, 2.0], tmp_path / "r.html", k=2,
                         higher_is_better=False)
    assert low.top["name"].tolist() == ["y", "z", "<b>x</b>"] and low.bottom.empty
    html = (tmp_path / "r.html").read_text()
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html
    with pytest.raises(ConfigError, match=r"\.png or \.html"):
        P.ranked_table(names, scores, tmp_path / "r.pdf")


# ----------------------------------------------------------------------------- embeddings


def test_tsne_separates_two_clusters(tmp_path, rng):
    emb = np.vstack([rng.normal(size=(20, 10)), rng.normal(size=(20, 10)) + 12.0])
    labels = np.array(["a"] * 20 + ["b"] * 20)
    res = P.embedding_tsne(emb, labels, tmp_path / "t.png", perplexity=10)
    assert res.coords.shape == (40, 2) and res.method == "t-SNE"
    d = np.linalg.norm(res.coords[:, None] - res.coords[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    assert (labels[d.argmin(axis=1)] == labels).all()
    ca, cb = res.coords[:20].mean(axis=0), res.coords[20:].mean(axis=0)
    closer = np.linalg.norm(res.coords - ca, axis=1) < np.linalg.norm(res.coords - cb, axis=1)
    assert closer[:20].all() and not closer[20:].any()
    assert_png(tmp_path / "t.png")
    numeric = P.embedding_tsne(emb[:12], np.linspace(0, 1, 12), tmp_path / "n.png")
    assert numeric.coords.shape == (12, 2)
    with pytest.raises(InputError, match="expected 40 values"):
        P.embedding_tsne(emb, labels[:5], tmp_path / "x.png")


def test_umap_is_an_optional_extra(tmp_path, rng, monkeypatch):
    emb = np.vstack([rng.normal(size=(15, 6)), rng.normal(size=(15, 6)) + 10.0])
    labels = np.array([0] * 15 + [1] * 15)
    try:
        import umap  # noqa: F401
    except ImportError:
        pass
    else:
        res = P.embedding_umap(emb, labels, tmp_path / "u.png", n_neighbors=5)
        assert res.coords.shape == (30, 2) and res.note is None
        assert_png(tmp_path / "u.png")
    monkeypatch.setitem(sys.modules, "umap", None)  # as without umap-learn: the import fails
    with pytest.raises(ConfigError, match=r"needs umap-learn, an optional extra .*pip install 'dnalm\[umap\]'"):
        P.embedding_umap(emb, labels, tmp_path / "v.png", n_neighbors=5)
    assert not (tmp_path / "v.png").exists()


# ----------------------------------------------------------------------------- training and benchmark


def test_learning_curves_from_csv_drop_missing_rows(tmp_path):
    steps = np.arange(0, 50)
    df = pd.DataFrame({"step": steps, "epoch": steps // 10, "train_loss": 2.0 / (1 + steps),
                       "val_loss": np.where(steps % 10 == 9, 1.5 / (1 + steps), np.nan),
                       "val_acc": np.where(steps % 10 == 9, steps / 100, np.nan)})
    csv = tmp_path / "metrics.csv"
    df.to_csv(csv, index=False)
    res = P.learning_curves(csv, tmp_path / "c.png")
    assert list(res.series) == ["train_loss", "val_loss", "val_acc"]
    xs, ys = res.series["val_loss"]
    assert xs.tolist() == [9, 19, 29, 39, 49]
    np.testing.assert_allclose(ys, [1.5 / (1 + s) for s in (9, 19, 29, 39, 49)])
    assert len(res.series["train_loss"][0]) == 50
    assert_png(tmp_path / "c.png")
    only = P.learning_curves(df, tmp_path / "o.png", series=["val_acc"], x="epoch")
    assert list(only.series) == ["val_acc"] and only.series["val_acc"][0].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(InputError, match="no column 'nope'"):
        P.learning_curves(csv, tmp_path / "c.png", series=["nope"])
    with pytest.raises(InputError, match="not found"):
        P.learning_curves(tmp_path / "missing.csv", tmp_path / "c.png")


def test_region_bars_table(tmp_path):
    values = {"hyena": {"CDS": 1.80, "intron": 1.95, "intergenic": 1.97},
              "transformer": {"intron": 1.96, "CDS": 1.85}}
    res = P.region_bars(values, tmp_path / "b.png")
    assert res.models == ("hyena", "transformer") and res.regions == ("CDS", "intron", "intergenic")
    np.testing.assert_allclose(res.values, [[1.80, 1.95, 1.97], [1.85, 1.96, np.nan]])
    assert_png(tmp_path / "b.png")
    ordered = P.region_bars(pd.DataFrame(values).T, tmp_path / "b2.png", regions=["intergenic", "CDS"])
    np.testing.assert_allclose(ordered.values, [[1.97, 1.80], [np.nan, 1.85]])
    with pytest.raises(InputError, match="promoter"):
        P.region_bars(values, tmp_path / "b3.png", regions=["promoter"])
