"""``dnalm plot``: the numbers drawn from real predict / generate / embed / score-variants outputs equal those
read independently from the files."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from scipy import special, stats

from dnalm.cli import main, run
from dnalm.config import compose, to_dataclass
from dnalm.errors import ConfigError, InputError
from dnalm.models.hyena import HyenaConfig, HyenaLM
from dnalm.models.io import save_pretrained
from dnalm.recipes.plot import PlotConfig, draw
from dnalm.tokenizers import CharTokenizer


@pytest.fixture(scope="module")
def outs(tmp_path_factory) -> Path:
    """A tiny model's predict (loglik, ACGT logits, all logits), generate, embed and score-variants outputs."""
    d = tmp_path_factory.mktemp("plot")
    torch.manual_seed(0)
    model = HyenaLM(HyenaConfig(d_model=16, n_layer=2, d_inner=32, l_max=200, filter_order=8, embed_dropout=0.0))
    save_pretrained(model, d / "m", tokenizer=CharTokenizer())
    rng = np.random.default_rng(0)
    with open(d / "in.csv", "w") as f:
        f.write("id,sequence,label\n")
        for i in range(12):
            f.write(f"s{i},{''.join(rng.choice(list('ACGT'), 30 + i))},{['a', 'b', 'c'][i % 3]}\n")
    ref = "".join(rng.choice(list("ACGT"), 300))
    (d / "ref.fa").write_text(f">chr1\n{ref}\n")
    with open(d / "variants.tsv", "w") as f:
        f.write("chrom\tpos\tid\tref\talt\n")
        for i, pos in enumerate(range(20, 280, 20)):
            alt = "A" if ref[pos - 1] != "A" else "C"
            f.write(f"chr1\t{pos}\tv{i}\t{ref[pos - 1]}\t{alt}\n")
    with open(d / "experiment.csv", "w") as f:
        f.write("id,value\n" + "".join(f"v{i},{rng.normal():.5f}\n" for i in range(0, 13, 1) if i != 4))
    for args in (["predict", f"out={d / 'll.parquet'}"],
                 ["predict", f"out={d / 'lg.parquet'}", "output_type=logits"],
                 ["predict", f"out={d / 'lga.parquet'}", "output_type=logits", "tokens=all"],
                 ["generate", f"out={d / 'gen.fasta'}", "max_new_tokens=20", "seed=3"],
                 ["embed", f"out={d / 'emb'}"]):
        run(args + [f"input={d / 'in.csv'}", f"checkpoint={d / 'm'}", "device=cpu"])
    run(["score-variants", f"variants={d / 'variants.tsv'}", f"reference={d / 'ref.fa'}", f"checkpoint={d / 'm'}",
         f"out={d / 'scores.tsv'}", "window=64", "device=cpu"])
    return d


def plot(*overrides: str):
    """What ``dnalm plot`` draws for these overrides (through the shipped config)."""
    return draw(to_dataclass(compose("plot", list(overrides)), PlotConfig, where="plot"))


def fasta_sequences(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith(">")]


def test_logo_counts_letters_of_the_generated_fasta(outs, tmp_path):
    res = plot("kind=logo", f"input={outs / 'gen.fasta'}", f"out={tmp_path / 'logo.png'}", "start=2", "end=12")
    seqs = fasta_sequences(outs / "gen.fasta")
    assert res.n_sequences == 12 and len(res.counts) == 10
    for pos in range(10):
        col = Counter(s[2 + pos] for s in seqs)
        assert res.counts.iloc[pos].to_dict() == {b: float(col.get(b, 0)) for b in "ACGT"}
    assert (tmp_path / "logo.png").stat().st_size > 1000


def test_gc_of_generate_jsonl_completions(outs, tmp_path):
    res = plot("kind=gc", f"input={outs / 'gen.jsonl'}", f"out={tmp_path / 'gc.png'}")
    completions = [json.loads(line)["completion"] for line in (outs / "gen.jsonl").read_text().splitlines()]
    expected = [(c.count("G") + c.count("C")) / len(c) for c in completions]
    assert res.values.tolist() == pytest.approx(expected)


def test_lengths_from_a_length_column_and_from_sequences(outs, tmp_path):
    res = plot("kind=lengths", f"input={outs / 'll.parquet'}", f"out={tmp_path / 'a.png'}")
    assert res.values.tolist() == pq.read_table(outs / "ll.parquet").column("length").to_pylist()
    res = plot("kind=lengths", f"input={outs / 'in.csv'}", f"out={tmp_path / 'b.png'}")
    with open(outs / "in.csv") as f:
        assert res.values.tolist() == [len(r["sequence"]) for r in csv.DictReader(f)]


def predict_logits(outs: Path, name: str, row: int) -> np.ndarray:
    table = pq.read_table(outs / f"{name}.parquet")
    key = table.column("key").to_pylist()[row]
    with np.load(outs / f"{name}.npz") as z:
        return z[key]


def test_heatmap_and_entropy_of_predict_logits(outs, tmp_path):
    res = plot("kind=heatmap", f"input={outs / 'lg.parquet'}", "index=2", f"out={tmp_path / 'h.png'}")
    z = predict_logits(outs, "lg", 2)  # (n - 1, 4): columns A, C, G, T
    assert res.matrix.shape == (4, 31)
    assert res.matrix == pytest.approx(special.softmax(z, axis=1).T)
    # the full vocabulary: the A/C/G/T ids 7..10 are picked and renormalised
    zall = predict_logits(outs, "lga", 3)
    assert zall.shape[1] >= 11
    res = plot("kind=entropy", f"input={outs / 'lga.parquet'}", "id=s3", f"out={tmp_path / 'e.png'}")
    p = special.softmax(zall[:, 7:11], axis=1)
    assert res.entropy == pytest.approx(-(p * np.log2(p)).sum(axis=1))
    res = plot("kind=heatmap", f"input={outs / 'lga.parquet'}", "id=s3", "values=logits", "start=5", "end=9",
               f"out={tmp_path / 'h2.png'}")
    assert res.matrix == pytest.approx(zall[5:9, 7:11].T)


def test_heatmap_of_an_npy_of_probabilities(tmp_path):
    probs = np.random.default_rng(1).dirichlet(np.ones(4), size=(2, 7))  # (N, L, 4)
    np.save(tmp_path / "p.npy", probs)
    res = plot("kind=heatmap", f"input={tmp_path / 'p.npy'}", "index=1", "input_values=probs",
               f"out={tmp_path / 'h.png'}")
    assert res.matrix == pytest.approx(probs[1].T)


def test_histogram_and_scatter_of_variant_scores(outs, tmp_path):
    with open(outs / "scores.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    delta = {r["id"]: float(r["delta"]) for r in rows}
    res = plot("kind=histogram", f"input={outs / 'scores.tsv'}", f"out={tmp_path / 'h.png'}")
    assert res["all"].values.tolist() == pytest.approx(list(delta.values()))
    with open(outs / "experiment.csv") as f:
        value = {r["id"]: float(r["value"]) for r in csv.DictReader(f)}
    common = [i for i in delta if i in value]
    assert len(common) == len(delta) - 1  # v4 has no measurement
    res = plot("kind=scatter", f"input={outs / 'scores.tsv'}", f"experimental={outs / 'experiment.csv'}",
               f"out={tmp_path / 's.png'}")
    assert res.n == len(common)
    r, _ = stats.pearsonr([value[i] for i in common], [delta[i] for i in common])
    assert res.pearson_r == pytest.approx(r)


def test_violin_and_ranked(outs, tmp_path):
    lines = [json.loads(line) for line in (outs / "gen.jsonl").read_text().splitlines()]
    table = tmp_path / "t.tsv"
    with open(table, "w") as f:
        f.write("id\tscore\tgroup\n" + "".join(f"{r['id']}\t{r['mean_log_prob']}\tg{i % 2}\n"
                                               for i, r in enumerate(lines)))
    res = plot("kind=violin", f"input={table}", "group_column=group", f"out={tmp_path / 'v.png'}")
    g0 = [r["mean_log_prob"] for i, r in enumerate(lines) if i % 2 == 0]
    assert res.groups == ("g0", "g1") and res.n == (6, 6)
    assert res.median[0] == pytest.approx(np.median(g0))
    res = plot("kind=ranked", f"input={outs / 'gen.jsonl'}", "score_column=mean_log_prob", "k=3",
               f"out={tmp_path / 'r.html'}")
    best = sorted(lines, key=lambda r: -r["mean_log_prob"])
    assert res.top["name"].tolist() == [r["id"] for r in best[:3]]
    assert res.bottom["name"].tolist() == [r["id"] for r in best[-3:]]
    assert res.top["sequence"].tolist() == [r["completion"] for r in best[:3]]


def test_tsne_of_embed_output_with_labels_joined_on_id(outs, tmp_path):
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="openmp"):  # 12 points: threads only add synchronisation on busy cores
        res = plot("kind=tsne", f"input={outs / 'emb'}", f"labels={outs / 'in.csv'}", f"out={tmp_path / 't.png'}")
    ids = pq.read_table(outs / "emb" / "sequences.parquet").column("id").to_pylist()
    with open(outs / "in.csv") as f:
        label = {r["id"]: r["label"] for r in csv.DictReader(f)}
    assert res.labels.tolist() == [label[i] for i in ids]
    assert res.coords.shape == (12, 2)


def test_learning_curves(tmp_path):
    (tmp_path / "m.csv").write_text("step,train_loss,val_loss\n1,2.0,\n2,1.5,1.7\n3,1.2,\n")
    res = plot("kind=curves", f"input={tmp_path / 'm.csv'}", f"out={tmp_path / 'c.png'}")
    assert res.series["train_loss"][1].tolist() == [2.0, 1.5, 1.2]
    assert res.series["val_loss"][0].tolist() == [2.0]


def test_plot_errors(outs, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["plot", "kind=pie", f"input={outs / 'in.csv'}", f"out={tmp_path / 'x.png'}"])
    assert exc.value.code == 2 and "kind='pie' must be one of" in capsys.readouterr().err
    with pytest.raises(InputError, match="no column 'nope'"):
        plot("kind=histogram", f"input={outs / 'll.parquet'}", "score_column=nope", f"out={tmp_path / 'x.png'}")
    with pytest.raises(ConfigError, match="group_column"):
        plot("kind=violin", f"input={outs / 'll.parquet'}", f"out={tmp_path / 'x.png'}")
    with pytest.raises(InputError, match="12 labels for"):
        np.save(tmp_path / "e.npy", np.random.default_rng(0).normal(size=(5, 3)))
        plot("kind=tsne", f"input={tmp_path / 'e.npy'}", f"labels={outs / 'in.csv'}", "join_column=none",
             f"out={tmp_path / 'x.png'}")
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(SystemExit) as exc:
        main(["plot", "kind=gc", f"input={tmp_path / 'missing.fa'}", f"out={tmp_path / 'x.png'}"])
    assert exc.value.code == 2 and "missing.fa: file not found" in capsys.readouterr().err


def _training_metrics(path: Path, steps: int = 60) -> None:
    """A metrics.csv with the columns dnalm train writes (overall and per region class), one row per step and a
    validation row every 20 steps."""
    classes = ["intergenic", "CDS", "UTR", "exon_other", "intron", "promoter", "repeat", "N"]
    cols = ["epoch", "step", "train/loss", "train/acc", "train/bits_per_base", "train/ppl", "train/lr",
            "train/tokens_per_s", "val/loss", "val/acc", "val/bits_per_base", "val/ppl"]
    cols += [f"val/loss/{c}" for c in classes] + [f"val/bits_per_base/{c}" for c in classes]
    rng = np.random.default_rng(1)
    with open(path, "w") as f:
        f.write(",".join(cols) + "\n")
        for s in range(steps):
            loss = 1.4 - 0.3 * s / steps
            row = {"epoch": 0, "step": s, "train/loss": loss, "train/acc": 0.3 + 0.1 * s / steps,
                   "train/bits_per_base": loss / np.log(2), "train/ppl": np.exp(loss),
                   "train/lr": 1e-3 * (s + 1) / steps, "train/tokens_per_s": 30000 + 1000 * rng.normal()}
            if s % 20 == 19:
                row.update({c: loss + 0.05 for c in cols if c.startswith("val/")})
            f.write(",".join(str(row.get(c, "")) for c in cols) + "\n")


def test_curves_of_a_training_run_keep_each_quantity_on_its_own_axis(tmp_path, capsys):
    """dnalm plot curves input=runs/<name>/metrics.csv out=curves.png: tokens/s is not on the accuracy axis, the
    16 per-class series are not drawn unless named, the learning rate has a log axis of its own."""
    _training_metrics(tmp_path / "metrics.csv")
    assert run(["plot", "curves", f"input={tmp_path / 'metrics.csv'}", f"out={tmp_path / 'curves.png'}"]) == 0
    res = plot("kind=curves", f"input={tmp_path / 'metrics.csv'}", f"out={tmp_path / 'c.png'}")
    assert res.panels == {"loss (nats)": ["train/loss", "val/loss"],
                          "bits per base": ["train/bits_per_base", "val/bits_per_base"],
                          "perplexity": ["train/ppl", "val/ppl"], "accuracy and scores (0-1)": ["train/acc", "val/acc"],
                          "learning rate": ["train/lr"], "throughput (per second)": ["train/tokens_per_s"]}
    assert sum(len(v) for v in res.panels.values()) == 10 and not res.left_out
    assert "throughput (per second): train/tokens_per_s" in capsys.readouterr().out
    named = plot("kind=curves", f"input={tmp_path / 'metrics.csv'}", f"out={tmp_path / 'd.png'}",
                 "series=[" + ",".join(f"val/bits_per_base/{c}" for c in ("CDS", "intron", "UTR")) + "]")
    assert named.panels == {"bits per base": ["val/bits_per_base/CDS", "val/bits_per_base/intron",
                                              "val/bits_per_base/UTR"]}
    assert named.series["val/bits_per_base/CDS"][0].tolist() == [19, 39, 59]


def test_logo_of_long_sequences_wraps_into_rows(tmp_path, capsys):
    """dnalm plot logo input=gen.fasta out=logo.png with 500-base samples: ten rows of 50 positions, not one strip
    of 500; longer ones are drawn up to a limit (500) and start=/end= pick a window."""
    from matplotlib.image import imread

    rng = np.random.default_rng(2)
    (tmp_path / "gen.fasta").write_text("".join(f">s{i}\n{''.join(rng.choice(list('ACGT'), 500))}\n"
                                                for i in range(8)))
    assert run(["plot", "logo", f"input={tmp_path / 'gen.fasta'}", f"out={tmp_path / 'logo.png'}"]) == 0
    assert "8 sequences, 500 positions in 10 rows" in capsys.readouterr().out
    img = imread(tmp_path / "logo.png")
    assert img.shape[0] > img.shape[1] / 2 and img.shape[1] <= 24 * 110  # rows stacked, not a 55-inch strip
    from dnalm.evaluate.plots import sequence_logo

    seqs = ["".join(rng.choice(list("ACGT"), 70)) for _ in range(4)]
    res = sequence_logo(seqs, tmp_path / "l.png", row_length=20, max_positions=50)
    assert (len(res.counts), res.n_drawn, res.n_rows) == (70, 50, 3)
    (tmp_path / "long.fasta").write_text("".join(f">s{i}\n{s}\n" for i, s in enumerate(seqs)))
    window = plot("kind=logo", f"input={tmp_path / 'long.fasta'}", f"out={tmp_path / 'w.png'}", "start=10")
    assert (len(window.counts), window.n_drawn, window.n_rows) == (60, 60, 2)


def test_umap_without_umap_learn_fails_in_one_line(outs, tmp_path, monkeypatch, capsys):
    """dnalm plot kind=umap input=emb/ out=u.png without umap-learn: exit 2 and the install command, not 'skipped'
    with exit 0."""
    import sys

    monkeypatch.setitem(sys.modules, "umap", None)
    with pytest.raises(SystemExit) as exc:
        main(["plot", "kind=umap", f"input={outs / 'emb'}", f"out={tmp_path / 'u.png'}"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "pip install 'dnalm[umap]'" in err
    assert not (tmp_path / "u.png").exists()
