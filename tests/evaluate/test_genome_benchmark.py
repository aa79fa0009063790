"""The genome benchmark: window plans and task data by hand, metrics against independent computations,
and end-to-end runs on a synthetic genome and on yeast (reduced sizes)."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from conftest import shared_file
from dnalm.data.prepare import GenomeSpec, prepare
from dnalm.data.prepared import PreparedGenome
from dnalm.errors import ConfigError
from dnalm.evaluate import genome_benchmark as GB
from dnalm.evaluate.metrics import auroc_ci
from dnalm.genome.gff import read_gff3
from dnalm.genome.splits import SplitSpec
from dnalm.models.hyena import HyenaConfig, HyenaLM
from dnalm.models.io import save_pretrained
from dnalm.models.transformer import TransformerConfig, TransformerLM
from dnalm.tokenizers import CharTokenizer

IDS = {"A": 7, "C": 8, "G": 9, "T": 10, "N": 11}
COMP = str.maketrans("ACGTN", "TGCAN")


def revcomp(s: str) -> str:
    return s.translate(COMP)[::-1]


def random_dna(rng: np.random.Generator, n: int) -> str:
    return "".join(rng.choice(list("ACGT"), n))


def write_genome(path: Path, records: dict[str, str], gff_lines: list[str]) -> tuple[Path, Path]:
    path.mkdir(parents=True, exist_ok=True)
    fasta, gff = path / "g.fa", path / "g.gff3"
    fasta.write_text("".join(f">{n}\n{s}\n" for n, s in records.items()))
    gff.write_text("##gff-version 3\n" + "".join(line + "\n" for line in gff_lines))
    return fasta, gff


# ----------------------------------------------------------------------------- a genome built by hand

PLUS_CDS = (100, 160)   # 0-based half-open, phase 0, ends with TAA
MINUS_CDS = (200, 260)  # phase 1 on the minus strand


@pytest.fixture(scope="module")
def hand(tmp_path_factory) -> tuple[PreparedGenome, dict[str, str]]:
    rng = np.random.default_rng(7)
    chr_c = list(random_dna(rng, 600))
    cds = "ATG" + "".join(rng.choice(["AAA", "CCC", "GGC", "TTC", "GCT"], 18)) + "TAA"
    chr_c[PLUS_CDS[0]:PLUS_CDS[1]] = cds
    chr_c[400:410] = "N" * 10
    records = {"chrA": random_dna(rng, 3000), "chrB": random_dna(rng, 800), "chrC": "".join(chr_c)}
    gff = [
        "chrC\tt\tgene\t101\t160\t.\t+\t.\tID=g1",
        "chrC\tt\tmRNA\t101\t160\t.\t+\t.\tID=t1;Parent=g1",
        "chrC\tt\tCDS\t101\t160\t.\t+\t0\tID=c1;Parent=t1",
        "chrC\tt\tgene\t201\t260\t.\t-\t.\tID=g2",
        "chrC\tt\tCDS\t201\t260\t.\t-\t1\tID=c2;Parent=g2",
    ]
    root = tmp_path_factory.mktemp("hand")
    fasta, gff_file = write_genome(root, records, gff)
    out = prepare([GenomeSpec("hand", str(fasta), str(gff_file))], root / "prepared",
                  SplitSpec(strategy="records", val=["chrB"], test=["chrC"]), promoter_window=50)
    return PreparedGenome(out), records


def test_next_base_plan_by_hand(tmp_path):
    rng = np.random.default_rng(0)
    records = {"r0": random_dna(rng, 50), "r1": random_dna(rng, 21), "r2": random_dna(rng, 6),
               "r3": random_dna(rng, 3)}
    fasta, _ = write_genome(tmp_path, records, [])
    pg = PreparedGenome(prepare([GenomeSpec("g", str(fasta))], tmp_path / "p",
                                SplitSpec(strategy="records", test=["r1", "r2", "r3"])))
    plan = GB.next_base_plan(pg, "test", window=8, min_context=3)
    # r1 at offset 50: scored chunks [3,8) [8,13) [13,18) [18,21); the last window ends flush with the record
    # r2 at offset 71 (6 bases, shorter than a window): one window of 6, targets 3..5; r3 (3 bases): none
    assert plan.starts.tolist() == [50, 55, 60, 63, 71]
    assert plan.lengths.tolist() == [8, 8, 8, 8, 6]
    assert plan.score_from.tolist() == [3, 3, 3, 5, 3]
    assert plan.score_to.tolist() == [8, 8, 8, 8, 6]
    assert plan.positions().tolist() == list(range(53, 71)) + [74, 75, 76]
    assert plan.n_targets == 21
    small = GB.next_base_plan(pg, "test", window=8, min_context=3, max_bases=10)
    assert small.starts.tolist() == [50, 71]
    with pytest.raises(ConfigError, match="min_context"):
        GB.next_base_plan(pg, "test", window=8, min_context=8)


class ConstLM(nn.Module):
    """Logits independent of the input: A, C, G, T get log(0.1, 0.2, 0.3, 0.4) (plus a constant) and N a
    huge logit, which renormalisation over A/C/G/T must ignore."""

    def forward(self, input_ids: torch.Tensor, state: object = None) -> torch.Tensor:
        B, L = input_ids.shape
        z = torch.full((B, L, 16), -30.0)
        z[..., 7:11] = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4])) + 3.0
        z[..., 11] = 20.0
        return z


def test_next_base_constant_model_matches_counts(hand):
    pg, _ = hand
    plan = GB.next_base_plan(pg, "test", window=64, min_context=16)
    res = GB.evaluate_next_base(GB.wrap_model(ConstLM(), "const"), pg, plan, batch_size=3)
    pos = plan.positions()
    tok = np.asarray(pg.tokens)[pos]
    cls = np.asarray(pg.regions)[pos] & 0x7F
    assert (tok == IDS["N"]).sum() == 10  # the N run is inside the scored range, and skipped
    ok = tok != IDS["N"]
    p = {7: 0.1, 8: 0.2, 9: 0.3, 10: 0.4}
    bits = np.array([-math.log2(p[t]) for t in tok[ok]])
    assert res.n_bases == ok.sum()
    assert res.bits_per_base == pytest.approx(bits.mean(), rel=1e-6)  # float32 logits
    assert res.accuracy == pytest.approx(np.mean(tok[ok] == IDS["T"]))
    names = pg.region_classes
    for c in np.unique(cls[ok]):
        sel = cls[ok] == c
        assert res.per_class[names[c]].bits_per_base == pytest.approx(bits[sel].mean(), rel=1e-6)
        assert res.per_class[names[c]].n_bases == sel.sum()
    assert "N" not in res.per_class


def test_transcript_starts_by_hand(tmp_path):
    gff = tmp_path / "a.gff3"
    gff.write_text("##gff-version 3\n" + "".join(line + "\n" for line in [
        "r\tt\tgene\t11\t50\t.\t+\t.\tID=g1",
        "r\tt\tmRNA\t15\t50\t.\t+\t.\tID=t1;Parent=g1",      # the transcript, not its gene, starts at 14
        "r\tt\tCDS\t20\t40\t.\t+\t0\tID=c1;Parent=t1",
        "r\tt\tgene\t61\t90\t.\t-\t.\tID=g2",                 # a gene without transcripts: its own
        "r\tt\ttRNA\t101\t120\t.\t-\t.\tID=r1",
        "r\tt\tncRNA\t131\t140\t.\t.\t.\tID=r2",             # no strand: skipped
    ]))
    ann = read_gff3(gff)
    assert GB.transcript_starts(ann.on("r")) == [(14, "+"), (90, "-"), (120, "-")]


def test_cds_prompts_end_before_a_codon_of_the_cds(hand):
    pg, records = hand
    seq = records["chrC"]
    ann = GB.read_annotations(pg)
    P, G = 10, 9
    plus = {seq[c - P:c + G] for c in range(PLUS_CDS[0] + 3, PLUS_CDS[1] - 2, 3)}
    # minus strand, phase 1: codons start (on the genome, read leftwards) at 258, 255, ..., 204
    minus = {revcomp(seq[p + 1 - G:p + 1 + P]) for p in range(258, 201, -3)}
    found = Counter()
    tok = CharTokenizer()
    for seed in range(6):
        prompts, real = GB.cds_prompts(pg, ann, "test", 10, P, G, seed)
        assert prompts.shape == (2, P) and real.shape == (2, G)
        for p_row, r_row in zip(prompts, real):
            s = tok.decode(p_row.astype(np.int64)) + tok.decode(r_row.astype(np.int64))
            found["+" if s in plus else "-" if s in minus else "?"] += 1
    assert found == Counter({"+": 6, "-": 6})
    # the real + strand continuation meets the annotated stop codon (TAA at 157) in frame, and no stop before
    for seed in range(3):
        prompts, real = GB.cds_prompts(pg, ann, "test", 10, P, 60, seed)
        starts = {seq[c - P:c + 60]: c for c in range(PLUS_CDS[0] + 3, PLUS_CDS[1] - 2, 3)}
        hits = [(starts[s], r) for p_row, r in zip(prompts, real)
                if (s := tok.decode(p_row.astype(np.int64)) + tok.decode(r.astype(np.int64))) in starts]
        assert len(hits) == 1
        c, row = hits[0]
        assert GB.first_in_frame_stop(row) == (157 - c) // 3


def test_sample_greedy_equals_full_forward_decoding():
    torch.manual_seed(0)
    model = HyenaLM(HyenaConfig(d_model=16, n_layer=2, d_inner=32, l_max=40, filter_order=8, embed_dropout=0.0))
    bm = GB.wrap_model(model, "h")
    rng = np.random.default_rng(1)
    prompts = rng.integers(7, 11, size=(3, 12)).astype(np.uint8)
    got = GB.sample(bm, prompts, 20, top_k=1, batch_size=2)
    seq = torch.from_numpy(prompts.astype(np.int64))
    with torch.no_grad():
        for _ in range(20):
            nxt = model(seq)[:, -1, 7:11].argmax(-1) + 7
            seq = torch.cat([seq, nxt[:, None]], dim=1)
    assert got.tolist() == seq[:, 12:].tolist()
    with pytest.raises(ConfigError, match="at most 40"):
        GB.sample(bm, prompts, 30)


def test_markov_greedy_sampling_follows_the_largest_count(hand):
    from dnalm.models.markov import MarkovModel

    pg, records = hand
    model = MarkovModel(2, 1.0).fit_prepared(pg, "train")
    bm = GB.wrap_model(model, "markov")
    prompts = np.array([[IDS[c] for c in records["chrB"][i:i + 5]] for i in (0, 100, 300)], dtype=np.uint8)
    got = GB.sample(bm, prompts, 12, temperature=0.0)
    counts = model.counts_by_order[2]
    for row, new in zip(prompts, got):
        seq = [int(t) - 7 for t in row]
        for t in new:
            ctx = seq[-2] * 4 + seq[-1]  # the older base is the more significant digit
            assert int(t) - 7 == int(np.argmax(counts[ctx]))
            seq.append(int(t) - 7)
    sampled = GB.sample(bm, prompts, 12, seed=5)
    assert sampled.tolist() == GB.sample(bm, prompts, 12, seed=5).tolist()  # seeded
    assert set(np.unique(sampled)) <= {7, 8, 9, 10}


def test_probe_windows_are_labelled_by_their_majority_class(hand):
    pg, _ = hand
    classes = [0, 1, 5]
    starts, labels = GB.probe_windows(pg, "test", 30, per_class=4, min_majority=0.6, classes=classes, seed=3)
    assert len(starts) == len(labels) > 0
    counts = Counter(labels.tolist())
    assert set(counts) <= set(classes) and max(counts.values()) <= 4
    test_iv = pg.intervals("test")[0]
    for s, lab in zip(starts, labels):
        assert test_iv.start <= s and s + 30 <= test_iv.end
        cls = np.asarray(pg.regions[s:s + 30]) & 0x7F
        n = np.bincount(cls, minlength=8)
        assert n[7] == 0 and n.argmax() == lab and n[lab] >= 0.6 * 30


# ----------------------------------------------------------------------------- synthetic genome, end to end


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    from dnalm.genome.synth import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("synth")
    paths = synthesize(SynthConfig(seed=3, n_chromosomes=4, chromosome_length=25_000, ploidy=3, genes_per_mb=300,
                                   n_gaps_per_mb=20), root / "genome")
    return root, paths


def kl_bits(p: dict[str, float], q: dict[str, float]) -> float:
    return sum(v * math.log2(v / q[m]) for m, v in p.items() if v > 0)


def read_fasta(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line and not line.startswith(">")]


def test_synthetic_benchmark_end_to_end(synthetic):
    root, paths = synthetic
    prepared = prepare([GenomeSpec("syn", str(paths["fasta"]), str(paths["gff3"]))], root / "prepared",
                       SplitSpec(strategy="homology", group_by="tsv", groups_tsv=str(paths["homology"]),
                                 val=["Chr3"], test=["Chr4"]), promoter_window=300)
    torch.manual_seed(1)
    tr = TransformerLM(TransformerConfig(d_model=16, n_layer=1, n_head=2, d_inner=32, max_len=160))
    save_pretrained(tr, root / "tiny_tr", tokenizer=CharTokenizer())
    spec = GB.BenchmarkSpec(
        markov=GB.MarkovSpec(orders=[1, 3]),
        next_base=GB.NextBaseSpec(window=128, min_context=32, max_bases=3000),
        promoters=GB.PromoterSpec(window=120, max_promoters=40, gc_tolerance=0.05, background_stride=20),
        probes=GB.ProbeSpec(window=60, train_per_class=25, test_per_class=12),
        generation=GB.GenerationSpec(n_prompts=8, n_cds_prompts=8, prompt_length=48, length=60),
        device="cpu", tsne_points=40)
    out = GB.benchmark(root / "out", [str(root / "tiny_tr")], spec, prepared=prepared)
    assert not [p for p in root.iterdir() if p.name.startswith(".out")]  # no temporary directory left

    with open(out / "leaderboard.csv") as fh:
        rows = {r["model"]: r for r in csv.DictReader(fh)}
    assert list(rows) == ["markov", "tiny_tr"]
    assert rows["tiny_tr"]["family"] == "transformer"
    assert int(rows["tiny_tr"]["parameters"]) == sum(p.numel() for p in tr.parameters())
    for f in ("leaderboard.md", "leaderboard.json", "dataset_card.md", "report.html", "plots/region_bits.png",
              "plots/promoter_ll_tiny_tr.png", "plots/promoter_llr_tiny_tr.png", "plots/tsne_tiny_tr.png",
              "plots/gc_markov.png", "plots/logo_tiny_tr.png", "models/markov/metrics.json"):
        assert (out / f).is_file(), f

    # promoter windows: upstream of an annotated transcript start, oriented along it; backgrounds intergenic
    # and GC-matched to their promoter; AUROC equals scikit-learn on the written scores
    pg = PreparedGenome(prepared)
    ann = read_gff3(paths["gff3"])
    tss = {(f.seqid, f.start if f.strand == "+" else f.end, f.strand) for f in ann.features if f.type == "mRNA"}
    with open(out / "scores" / "promoter_scores.tsv") as fh:
        scores = list(csv.DictReader(fh, delimiter="\t"))
    labels = np.array([r["label"] == "promoter" for r in scores], dtype=int)
    assert labels.sum() >= 5 and (labels == 0).sum() == labels.sum()
    for r in scores:
        rec, s, e = r["record"], int(r["start"]), int(r["end"])
        assert rec in {"Chr4A", "Chr4B", "Chr4C"}
        cls = np.asarray(pg.window_regions(rec, s, e)) & 0x7F
        if r["label"] == "promoter":
            assert (rec, e if r["strand"] == "+" else s, r["strand"]) in tss
            assert (cls == 5).mean() >= 0.5
        else:
            assert (cls == 0).all()
            assert abs(float(r["gc"]) - float(scores[int(r["matched_to"])]["gc"])) <= 0.05 + 1e-9
    for name in ("markov", "tiny_tr"):
        ll = np.array([float(r[f"ll_{name}"]) for r in scores])
        assert float(rows[name]["promoter_auroc_ll"]) == pytest.approx(roc_auc_score(labels, ll))
        low, high = (float(rows[name][f"promoter_auroc_ll_ci_{k}"]) for k in ("low", "high"))
        assert (low, high) == pytest.approx(auroc_ci(roc_auc_score(labels, ll), labels.sum(), (labels == 0).sum()))
        assert int(rows[name]["n_promoters"]) == labels.sum() and int(rows[name]["n_background"]) == labels.sum()

    # what a reader sees: counts and 95% intervals, a sentence per quantity, no class scored on a few bases,
    # every figure explained, and the 30-odd columns of the CSV turned into rows
    board = (out / "leaderboard.md").read_text()
    headline = board.split("## Every metric")[0]
    table = [ln for ln in headline.splitlines() if ln.startswith("|")]
    assert table[0] == ("| model | parameters | bits/base (95% CI) | promoter AUROC (95% CI) "
                        "| AUROC vs Markov (95% CI) | probe MCC | k-mer JS, k=6 |")
    bpb = float(rows["tiny_tr"]["bits_per_base"])
    low, high = float(rows["tiny_tr"]["bits_per_base_ci_low"]), float(rows["tiny_tr"]["bits_per_base_ci_high"])
    assert low < bpb < high and f"{bpb:.3f} ({low:.3f}–{high:.3f})" in table[3]
    assert f"{int(rows['tiny_tr']['n_bases']):,} bases in " in headline and " promoter and " in headline
    for key in ("Bits per base:", "Promoter AUROC:", "below 0.5 means the model finds promoters less likely",
                "AUROC vs Markov:", "Probe MCC:", "k-mer JS:"):
        assert key in headline, key
    metrics = json.loads((out / "models" / "tiny_tr" / "metrics.json").read_text())["next_base"]["per_class"]
    few = sorted(c for c, m in metrics.items() if m["n_bases"] < spec.next_base.min_class_bases and c != "N")
    assert few and all(f"{c}: {metrics[c]['n_bases']:,}" in headline for c in few)
    assert not any(f"bpb_{c}" in rows["tiny_tr"] for c in few)
    full = [ln for ln in board.split("## Every metric")[1].splitlines() if ln.startswith("|")]
    assert full[0] == "| metric | markov | tiny_tr |" and len(full) == len(rows["tiny_tr"]) + 1  # header, rule, rows
    captions = json.loads((out / "plots" / "captions.json").read_text())
    assert set(captions) == {p.name for p in (out / "plots").glob("*.png")}
    assert "95% confidence intervals" in captions["region_bits.png"] and all(c in captions["region_bits.png"]
                                                                               for c in few)
    assert all(len(text) > 80 and text.endswith(".") for text in captions.values())
    llr = np.array([float(r["ll_tiny_tr"]) - float(r["ll_markov"]) for r in scores])
    assert float(rows["tiny_tr"]["promoter_auroc_llr"]) == pytest.approx(roc_auc_score(labels, llr))
    assert rows["markov"]["promoter_auroc_llr"] == ""

    # generation: GC and k-mer divergences recomputed from the written FASTA files
    real = read_fasta(out / "generated" / "real.fa")
    gen = read_fasta(out / "generated" / "tiny_tr.fa")
    assert len(gen) == len(real) == 8 and all(len(g) == 60 and set(g) <= set("ACGT") for g in gen)
    gc = sum(g.count("G") + g.count("C") for g in gen) / sum(len(g) for g in gen)
    assert float(rows["tiny_tr"]["gen_gc"]) == pytest.approx(gc)
    for k in (3, 6):
        cg = Counter(g[i:i + k] for g in gen for i in range(len(g) - k + 1))
        cr = Counter(r[i:i + k] for r in real for i in range(len(r) - k + 1) if "N" not in r[i:i + k])
        p = {m: c / sum(cg.values()) for m, c in cg.items()}
        q = {m: c / sum(cr.values()) for m, c in cr.items()}
        mix = {m: (p.get(m, 0) + q.get(m, 0)) / 2 for m in set(p) | set(q)}
        assert float(rows["tiny_tr"][f"gen_js_k{k}"]) == pytest.approx((kl_bits(p, mix) + kl_bits(q, mix)) / 2)
    cds_real = read_fasta(out / "generated" / "cds_real.fa")
    stop_real = np.mean([GB.first_in_frame_stop(np.array([IDS[c] for c in s])) >= 0 for s in cds_real])
    assert float(rows["markov"]["cds_stop_rate_real"]) == pytest.approx(stop_real)

    card = (out / "dataset_card.md").read_text()
    assert hashlib.sha256(paths["fasta"].read_bytes()).hexdigest() in card
    assert "Chr4A, Chr4B, Chr4C" in card


def test_load_model_reads_markov_directories_and_refuses_kmer_models(hand, tmp_path):
    from dnalm.models.markov import MarkovModel
    from dnalm.tokenizers import KmerTokenizer

    pg, _ = hand
    MarkovModel(3).fit_prepared(pg, "train").save(tmp_path / "markov")
    bm = GB.load_model(tmp_path / "markov")
    assert bm.is_markov and bm.info["order"] == 3 and bm.context is None
    assert GB._model_names([str(tmp_path / "markov"), "a/x", "b/x/"]) == ["markov_model", "x", "x-2"]
    assert GB._model_names(["runs/small/model", "runs/tiny/best/", "model"]) == ["small", "tiny", "model"]
    save_pretrained(HyenaLM(HyenaConfig(d_model=8, n_layer=1, d_inner=16, l_max=20, filter_order=4)),
                    tmp_path / "kmer", tokenizer=KmerTokenizer(k=3))
    with pytest.raises(ConfigError, match="KmerTokenizer"):
        GB.load_model(tmp_path / "kmer")


def test_benchmark_refuses_bad_settings(tmp_path, capsys):
    """Settings and models are checked before the (here absent) prepared genome is read."""
    from dnalm.cli import main

    prepared = tmp_path / "prepared"
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", f"out={tmp_path / 'o'}", f"prepared={prepared}", "models=[/nonexistent/ckpt]"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "/nonexistent/ckpt" in err
    with pytest.raises(SystemExit):
        main(["benchmark", f"out={tmp_path / 'o'}", f"prepared={prepared}", "probes.classes=[exon]"])
    assert "unknown class 'exon'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="min_context"):
        GB.benchmark(tmp_path / "o", [], GB.BenchmarkSpec(next_base=GB.NextBaseSpec(window=64, min_context=64)),
                     prepared=prepared)
    with pytest.raises(ConfigError, match="either prepared"):
        GB.benchmark(tmp_path / "o", [], GB.BenchmarkSpec())
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- yeast, through the CLI


def markov_bits_by_counting(prepared: Path, order: int, alpha: float, positions: np.ndarray) -> np.ndarray:
    """-log2 P(x_i | x_{i-k} .. x_{i-1}) from transition counts of the train intervals (both strands)."""
    tokens = np.fromfile(prepared / "tokens.u8", dtype=np.uint8).astype(np.int64) - 7
    manifest = json.loads((prepared / "manifest.json").read_text())
    offset = {r["name"]: r["offset"] for r in manifest["records"]}
    splits = json.loads((prepared / "splits.json").read_text())["splits"]
    counts = np.zeros(4 ** (order + 1), dtype=np.int64)
    for rec, s, e in splits["train"]:
        seq = tokens[offset[rec] + s:offset[rec] + e]
        for strand in (seq, (3 - seq)[::-1]):
            w = np.lib.stride_tricks.sliding_window_view(strand, order + 1)
            ok = (w >= 0).all(axis=1) & (w <= 3).all(axis=1)
            counts += np.bincount((w[ok] * 4 ** np.arange(order, -1, -1)).sum(axis=1), minlength=counts.size)
    table = counts.reshape(4**order, 4)
    ctx = np.lib.stride_tricks.sliding_window_view(tokens, order)[positions - order]
    ctx_code = (ctx * 4 ** np.arange(order - 1, -1, -1)).sum(axis=1)
    target = tokens[positions]
    p = (table[ctx_code, target] + alpha) / (table[ctx_code].sum(axis=1) + 4 * alpha)
    return -np.log2(p)


def test_yeast_benchmark_cli(tmp_path):
    fasta = shared_file("yeast_r64", "GCA_000146045.2_R64_genomic.fna.gz")
    gff = shared_file("yeast_r64", "GCA_000146045.2_R64_genomic.gff.gz")
    from dnalm.cli import run

    torch.manual_seed(0)
    model = HyenaLM(HyenaConfig(d_model=16, n_layer=2, d_inner=32, l_max=260, filter_order=8, embed_dropout=0.0))
    save_pretrained(model, tmp_path / "hyena_tiny", tokenizer=CharTokenizer())
    out = tmp_path / "bench"
    run(["benchmark", f"genome={fasta}", f"annotation={gff}", f"models=[{tmp_path / 'hyena_tiny'}]", f"out={out}",
         "split.val=[BK006947.3]", "split.test=[BK006948.2,BK006949.2]", "keep_prepared=true", "device=cpu",
         "markov.orders=[2,3]", "next_base.window=256", "next_base.min_context=64", "next_base.max_bases=12000",
         "promoters.window=200", "promoters.max_promoters=40", "probes.train_per_class=20", "probes.test_per_class=10",
         "probes.classes=[intergenic,CDS,promoter,repeat]", "generation.n_prompts=8", "generation.n_cds_prompts=8",
         "generation.prompt_length=64", "generation.length=60", "tsne_points=40"])
    html = (out / "report.html").read_text()
    assert len(html) > 10_000 and str(out.resolve()) in html and ".tmp" not in html  # the final location
    sections = [html.index(f'<h2>{title}</h2>') for title in ("Leaderboard", "Figures", "Dataset card", "Metrics")]
    assert sections == sorted(sections)
    assert re.findall(r'<img [^>]*alt="([^"]*)"', html)[0].startswith("How many bits each model needs per held-out")
    with open(out / "leaderboard.csv") as fh:
        rows = {r["model"]: r for r in csv.DictReader(fh)}
    assert list(rows) == ["markov", "hyena_tiny"]
    for name in rows:
        assert 1.5 < float(rows[name]["bits_per_base"]) < 2.2

    # the Markov row per region class equals a direct count on the same scored positions
    metrics = json.loads((out / "models" / "markov" / "metrics.json").read_text())
    order, alpha = metrics["info"]["order"], metrics["info"]["alpha"]
    assert order in (2, 3)
    pg = PreparedGenome(out / "prepared")
    positions = GB.next_base_plan(pg, "test", 256, 64, 12000).positions()
    bits = markov_bits_by_counting(out / "prepared", order, alpha, positions)
    cls = np.asarray(pg.regions)[positions] & 0x7F
    assert float(rows["markov"]["bits_per_base"]) == pytest.approx(bits.mean(), rel=1e-9)
    checked = 0
    for c in np.unique(cls):
        name = pg.region_classes[c]
        per_class = metrics["next_base"]["per_class"][name]
        assert per_class["bits_per_base"] == pytest.approx(bits[cls == c].mean(), rel=1e-9)
        assert per_class["n_bases"] == int((cls == c).sum())
        # the leaderboard's per-class columns: only classes with next_base.min_class_bases (1,000) scored bases
        assert (f"bpb_{name}" in rows["markov"]) == ((cls == c).sum() >= 1000)
        if (cls == c).sum() >= 1000:
            assert float(rows["markov"][f"bpb_{name}"]) == pytest.approx(bits[cls == c].mean(), rel=1e-9)
            checked += 1
    assert checked >= 2

    with open(out / "scores" / "promoter_scores.tsv") as fh:
        scores = list(csv.DictReader(fh, delimiter="\t"))
    labels = np.array([r["label"] == "promoter" for r in scores], dtype=int)
    assert labels.sum() >= 10
    llr = np.array([float(r["ll_hyena_tiny"]) - float(r["ll_markov"]) for r in scores])
    assert float(rows["hyena_tiny"]["promoter_auroc_llr"]) == pytest.approx(roc_auc_score(labels, llr))
    card = (out / "dataset_card.md").read_text()
    assert hashlib.sha256(fasta.read_bytes()).hexdigest() in card
    assert "BK006948.2, BK006949.2" in card and "Leakage" in card
    probe = json.loads((out / "models" / "hyena_tiny" / "metrics.json").read_text())["probes"]
    assert probe["classes"] == ["intergenic", "CDS", "promoter", "repeat"] and -1 <= probe["mcc"] <= 1


def test_benchmark_stripedhyena_and_dnabert2(synthetic, tmp_path):
    """A byte-level causal model (StripedHyena 2) reads the prepared genome's bases through its own ids (next-base
    log-probabilities equal its logits at A, C, G, T renormalised, sampling stays in A/C/G/T); a masked model
    (DNABERT-2, BPE) skips next-base prediction and generation and scores promoters by pseudo-log-likelihood
    (equal to the family's own PLL of each window in bits)."""
    from dnalm.models.dnabert2 import Dnabert2Tokenizer, load_hub, pseudo_log_likelihood
    from dnalm.models.stripedhyena import ByteTokenizer, StripedHyenaConfig, StripedHyenaLM

    root, paths = synthetic
    prepared = prepare([GenomeSpec("syn", str(paths["fasta"]), str(paths["gff3"]))], tmp_path / "prepared",
                       SplitSpec(strategy="homology", group_by="tsv", groups_tsv=str(paths["homology"]),
                                 val=["Chr3"], test=["Chr4"]), promoter_window=300)
    torch.manual_seed(2)
    sh = StripedHyenaLM(StripedHyenaConfig.preset("tiny", pattern="SDH*", hidden_size=32, num_attention_heads=2,
                                                  inner_mlp_size=48, hcs_filter_groups=4, hcm_filter_groups=4,
                                                  hcm_filter_length=16, max_seqlen=256))
    save_pretrained(sh, tmp_path / "sh2", tokenizer=ByteTokenizer())
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "dnabert2_tiny"

    bm = GB.load_model(tmp_path / "sh2")
    rng = np.random.default_rng(0)
    ids = rng.choice([7, 8, 9, 10, 11], (3, 40)).astype(np.uint8)
    byte_ids = np.vectorize({7: 65, 8: 67, 9: 71, 10: 84, 11: 78}.get)(ids)
    with torch.no_grad():
        ref = sh(torch.as_tensor(byte_ids))[..., [65, 67, 71, 84]].double().log_softmax(-1).numpy()
    np.testing.assert_allclose(GB.next_log_probs(bm, ids), ref, rtol=0, atol=1e-5)
    drawn = GB.sample(bm, ids[:, :10] % 4 + 7, 12, seed=1)
    assert drawn.shape == (3, 12) and set(np.unique(drawn)) <= {7, 8, 9, 10}

    spec = GB.BenchmarkSpec(
        markov=GB.MarkovSpec(orders=[2]),
        next_base=GB.NextBaseSpec(window=96, min_context=32, max_bases=600),
        promoters=GB.PromoterSpec(window=60, max_promoters=10, gc_tolerance=0.05, background_stride=20),
        probes=GB.ProbeSpec(window=40, train_per_class=8, test_per_class=5, min_per_class=3),
        generation=GB.GenerationSpec(n_prompts=4, n_cds_prompts=0, prompt_length=32, length=16),
        device="cpu", plots=False)
    out = GB.benchmark(tmp_path / "out", [str(tmp_path / "sh2"), str(fixture)], spec, prepared=prepared)
    with open(out / "leaderboard.csv") as fh:
        rows = {r["model"]: r for r in csv.DictReader(fh)}
    assert list(rows) == ["markov", "sh2", "dnabert2_tiny"]
    assert float(rows["sh2"]["bits_per_base"]) > 0 and rows["sh2"]["gen_gc"] != ""
    assert rows["dnabert2_tiny"]["bits_per_base"] == "" and rows["dnabert2_tiny"]["gen_gc"] == ""
    assert rows["dnabert2_tiny"]["probe_mcc"] != ""
    with open(out / "scores" / "promoter_scores.tsv") as fh:
        scores = list(csv.DictReader(fh, delimiter="\t"))
    labels = np.array([r["label"] == "promoter" for r in scores], dtype=int)
    pg = PreparedGenome(prepared)
    model, bpe = load_hub(fixture), Dnabert2Tokenizer.load(fixture)
    for r in scores[:4]:
        window = pg.sequence(r["record"], int(r["start"]), int(r["end"]))
        if r["strand"] == "-":
            window = revcomp(window)
        pll = pseudo_log_likelihood(model, torch.as_tensor(bpe.encode(window))[None])
        assert float(r["ll_dnabert2_tiny"]) == pytest.approx(float(pll) / math.log(2), rel=1e-5)
    ll = np.array([float(r["ll_dnabert2_tiny"]) for r in scores])
    assert float(rows["dnabert2_tiny"]["promoter_auroc_ll"]) == pytest.approx(roc_auc_score(labels, ll))
    skipped = json.loads((out / "models" / "dnabert2_tiny" / "metrics.json").read_text())["info"]["skipped"]
    assert "masked LM" in skipped
