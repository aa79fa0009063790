"""Synthetic genomes: GFF3 validity, gene models, soft-masking, homologs, determinism, the command.

The FASTA reader, GFF3 parser, translation and edit distance below are written here on purpose,
independently of dnalm's own readers.
"""

from __future__ import annotations

import gzip
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from dnalm.cli import main, run
from dnalm.errors import ConfigError, InputError
from dnalm.genome.synth import SynthConfig, synthesize

STOPS = {"TAA", "TAG", "TGA"}
COMPLEMENT = str.maketrans("ACGTNacgtn", "TGCANtgcan")
GENE_PARTS = {"exon", "CDS", "five_prime_UTR", "three_prime_UTR", "polyA_signal_sequence"}
REPEAT_TYPES = {"transposable_element", "repeat_region"}

SMALL = dict(n_chromosomes=2, chromosome_length=60_000, genes_per_mb=150.0, repeat_copies_per_mb=80.0,
             tandem_repeats_per_mb=40.0, n_gaps_per_mb=30.0, n_gap_min=20, n_gap_max=200)


def revcomp(s: str) -> str:
    return s.translate(COMPLEMENT)[::-1]


def read_fasta(path: Path) -> dict[str, str]:
    opener = gzip.open if path.suffix == ".gz" else open
    seqs: dict[str, list[str]] = {}
    name = None
    with opener(path, "rt") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith(">"):
                name = line[1:].split()[0]
                seqs[name] = []
            else:
                seqs[name].append(line)
    return {k: "".join(v) for k, v in seqs.items()}


def parse_gff3(path: Path) -> tuple[list[str], dict[str, int], list[dict]]:
    """Pragmas, sequence-region lengths and features (1-based closed coordinates as written)."""
    pragmas, regions, feats = [], {}, []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("##"):
            pragmas.append(line)
            if line.startswith("##sequence-region"):
                _, seqid, start, end = line.split()
                assert start == "1"
                regions[seqid] = int(end)
            continue
        assert not line.startswith("#") and line.strip(), f"line {lineno}: {line!r}"
        cols = line.split("\t")
        assert len(cols) == 9, f"line {lineno}: {len(cols)} columns"
        attrs = dict(kv.split("=", 1) for kv in cols[8].split(";"))
        feats.append({"seqid": cols[0], "type": cols[2], "start": int(cols[3]), "end": int(cols[4]),
                      "strand": cols[6], "phase": cols[7], "attrs": attrs, "line": lineno})
    return pragmas, regions, feats


def fragment(seq: str, f: dict) -> str:
    return seq[f["start"] - 1: f["end"]]


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance, one DP row at a time: row[j] = j + cummin(t[k] - k)."""
    x = np.frombuffer(a.upper().encode(), dtype=np.uint8)
    y = np.frombuffer(b.upper().encode(), dtype=np.uint8)
    j = np.arange(y.size + 1)
    row = j.copy()
    for i in range(1, x.size + 1):
        t = np.empty_like(row)
        t[0] = i
        t[1:] = np.minimum(row[1:] + 1, row[:-1] + (y != x[i - 1]))
        row = j + np.minimum.accumulate(t - j)
    return int(row[-1])


class Genome:
    def __init__(self, paths: dict[str, Path]):
        self.paths = paths
        self.seqs = read_fasta(paths["fasta"])
        self.pragmas, self.regions, self.features = parse_gff3(paths["gff3"])
        self.by_id: dict[str, list[dict]] = defaultdict(list)
        self.children: dict[str, list[dict]] = defaultdict(list)
        for f in self.features:
            if "ID" in f["attrs"]:
                self.by_id[f["attrs"]["ID"]].append(f)
            for parent in f["attrs"].get("Parent", "").split(","):
                if parent:
                    self.children[parent].append(f)

    def of_type(self, type_: str) -> list[dict]:
        return [f for f in self.features if f["type"] == type_]

    def transcripts(self):
        """(mRNA, exons, CDS parts) with parts in transcript order (5' -> 3')."""
        for m in self.of_type("mRNA"):
            kids = self.children[m["attrs"]["ID"]]
            minus = m["strand"] == "-"
            exons = sorted((k for k in kids if k["type"] == "exon"), key=lambda f: f["start"], reverse=minus)
            cds = sorted((k for k in kids if k["type"] == "CDS"), key=lambda f: f["start"], reverse=minus)
            yield m, exons, cds

    def stranded(self, f: dict) -> str:
        s = fragment(self.seqs[f["seqid"]], f).upper()
        return revcomp(s) if f["strand"] == "-" else s


@pytest.fixture(scope="module")
def haploid(tmp_path_factory) -> Genome:
    return Genome(synthesize(SynthConfig(seed=11, **SMALL), tmp_path_factory.mktemp("haploid")))


@pytest.fixture(scope="module")
def polyploid(tmp_path_factory) -> Genome:
    cfg = SynthConfig(seed=5, ploidy=3, snp_rate=0.02, indel_rate=0.002, gzip=True, **SMALL)
    return Genome(synthesize(cfg, tmp_path_factory.mktemp("polyploid")))


@pytest.fixture(scope="module")
def snp_only(tmp_path_factory) -> Genome:
    cfg = SynthConfig(seed=9, n_chromosomes=1, chromosome_length=50_000, ploidy=4, snp_rate=0.02, indel_rate=0.0)
    return Genome(synthesize(cfg, tmp_path_factory.mktemp("snp_only")))


@pytest.fixture(params=["haploid", "polyploid"])
def genome(request) -> Genome:
    return request.getfixturevalue(request.param)


def test_fasta_and_sequence_regions(genome: Genome):
    assert genome.pragmas[0] == "##gff-version 3"
    assert list(genome.regions) == list(genome.seqs)
    for name, seq in genome.seqs.items():
        assert genome.regions[name] == len(seq)
        assert re.fullmatch(r"[ACGTNacgt]+", seq), name
    for f in genome.features:
        assert 1 <= f["start"] <= f["end"] <= genome.regions[f["seqid"]], f
        assert f["strand"] in "+-.", f


def test_gff3_hierarchy(genome: Genome):
    for fid, lines in genome.by_id.items():
        # only the parts of one CDS share an ID (a discontinuous feature)
        assert len(lines) == 1 or {f["type"] for f in lines} == {"CDS"}, fid
    for parent_id, kids in genome.children.items():
        assert parent_id in genome.by_id, f"dangling Parent {parent_id}"
        parent = genome.by_id[parent_id][0]
        for k in kids:
            assert (k["seqid"], k["strand"]) == (parent["seqid"], parent["strand"])
            assert parent["start"] <= k["start"] and k["end"] <= parent["end"], (k, parent)
            expected = {"gene": {"mRNA"}, "mRNA": GENE_PARTS, "promoter": {"TATA_box"}}[parent["type"]]
            assert k["type"] in expected, (k["type"], parent["type"])
    genes = genome.of_type("gene")
    assert len(genes) > 10 and {g["strand"] for g in genes} == {"+", "-"}
    for g in genes:
        assert [k["type"] for k in genome.children[g["attrs"]["ID"]]] == ["mRNA"]
    for m, exons, cds in genome.transcripts():
        kids = genome.children[m["attrs"]["ID"]]
        # exons tile the mRNA with introns between them
        ex = sorted((e["start"], e["end"]) for e in exons)
        assert ex[0][0] == m["start"] and ex[-1][1] == m["end"]
        assert all(a[1] + 1 < b[0] for a, b in zip(ex, ex[1:]))
        # UTRs + CDS partition the exonic bases
        exonic = {p for s, e in ex for p in range(s, e + 1)}
        parts = [k for k in kids if k["type"] in ("CDS", "five_prime_UTR", "three_prime_UTR")]
        covered = [p for k in parts for p in range(k["start"], k["end"] + 1)]
        assert len(covered) == len(set(covered)) and set(covered) == exonic
        for c in cds:
            assert any(s <= c["start"] and c["end"] <= e for s, e in ex)


def test_cds_translate_and_phase(genome: Genome):
    n_multi = 0
    for m, _, cds in genome.transcripts():
        spliced = "".join(genome.stranded(c) for c in cds)
        assert len(spliced) % 3 == 0, m
        codons = [spliced[i: i + 3] for i in range(0, len(spliced), 3)]
        assert codons[0] == "ATG" and codons[-1] in STOPS, m
        assert not STOPS & set(codons[:-1]), m
        done = 0
        for c in cds:
            assert int(c["phase"]) == (3 - done % 3) % 3, c
            done += c["end"] - c["start"] + 1
        assert all(f["phase"] == "." for f in genome.children[m["attrs"]["ID"]] if f["type"] != "CDS")
        n_multi += len(cds) > 1 and m["strand"] == "-"
    assert n_multi > 3, "no multi-exon minus-strand genes to check phases on"


def test_introns_and_motifs(genome: Genome):
    n_introns = 0
    for m, exons, _ in genome.transcripts():
        seq = genome.seqs[m["seqid"]]
        for a, b in zip(exons, exons[1:]):
            lo, hi = (a["end"] + 1, b["start"] - 1) if m["strand"] == "+" else (b["end"] + 1, a["start"] - 1)
            intron = genome.stranded({"seqid": m["seqid"], "start": lo, "end": hi, "strand": m["strand"]})
            assert intron[:2] == "GT" and intron[-2:] == "AG", m
            ag = len(intron) - 2
            branch = [x.start() + 3 for x in re.finditer(r"(?=CT[AG]A[CT])", intron)]
            assert any(20 <= ag - p <= 40 for p in branch), (m, intron[-50:])
            n_introns += 1
        mrna = genome.stranded(m)
        assert mrna[0] == "A", "Inr: the TSS is an A"
        pas = [k for k in genome.children[m["attrs"]["ID"]] if k["type"] == "polyA_signal_sequence"]
        assert len(pas) == 1 and genome.stranded(pas[0]) == "AATAAA"
        dist = m["end"] - pas[0]["end"] if m["strand"] == "+" else pas[0]["start"] - m["start"]
        assert 10 <= dist <= 30
        assert len(seq) >= m["end"]
    assert n_introns > 20
    for p in genome.of_type("promoter"):
        gene = genome.by_id[p["attrs"]["gene"]][0]
        tss = gene["start"] if gene["strand"] == "+" else gene["end"]
        assert (p["end"] + 1 if p["strand"] == "+" else p["start"] - 1) == tss
        (tata,) = genome.children[p["attrs"]["ID"]]
        assert re.fullmatch(r"TATA[AT]A[AT][AG]", genome.stranded(tata))
        upstream = tss - tata["start"] if p["strand"] == "+" else tata["end"] - tss
        assert 28 <= upstream <= 33


def test_softmask_and_gaps_match_features(genome: Genome):
    n_repeat, n_gap = 0, 0
    for name, seq in genome.seqs.items():
        arr = np.frombuffer(seq.encode(), dtype=np.uint8)
        repeat = np.zeros(arr.size, dtype=bool)
        gap = np.zeros(arr.size, dtype=bool)
        for f in genome.features:
            if f["seqid"] == name and f["type"] in REPEAT_TYPES:
                repeat[f["start"] - 1: f["end"]] = True
            if f["seqid"] == name and f["type"] == "gap":
                gap[f["start"] - 1: f["end"]] = True
        np.testing.assert_array_equal(arr >= ord("a"), repeat)
        np.testing.assert_array_equal(arr == ord("N"), gap)
        n_repeat += repeat.sum()
        n_gap += gap.sum()
    assert n_repeat > 0 and n_gap > 0
    assert {f["type"] for f in genome.features} >= REPEAT_TYPES | {"gap"}


def test_homology_tsv(haploid: Genome, polyploid: Genome):
    def rows(g: Genome) -> list[list[str]]:
        lines = g.paths["homology"].read_text().splitlines()
        return [line.split("\t") for line in lines if not line.startswith("#")]

    assert rows(haploid) == [["Chr1", "Chr1"], ["Chr2", "Chr2"]]
    assert list(haploid.seqs) == ["Chr1", "Chr2"]
    expected = [[f"Chr{i}{c}", f"Chr{i}"] for i in (1, 2) for c in "ABC"]
    assert rows(polyploid) == expected
    assert list(polyploid.seqs) == [r for r, _ in expected]


def _homologous_genes(g: Genome, a: str, b: str) -> list[tuple[dict, dict]]:
    genes_a = {f["attrs"]["ID"].split(".", 1)[1]: f for f in g.of_type("gene") if f["seqid"] == a}
    genes_b = {f["attrs"]["ID"].split(".", 1)[1]: f for f in g.of_type("gene") if f["seqid"] == b}
    assert genes_a.keys() == genes_b.keys() and genes_a
    return [(genes_a[k], genes_b[k]) for k in genes_a]


def test_snp_only_copies_within_divergence(snp_only: Genome):
    rate = 0.02
    seqs = snp_only.seqs
    names = ["Chr1A", "Chr1B", "Chr1C", "Chr1D"]
    assert list(seqs) == names and len({len(s) for s in seqs.values()}) == 1
    lines = defaultdict(list)
    for f in snp_only.features:
        lines[f["seqid"]].append((f["type"], f["start"], f["end"], f["attrs"]["ID"].split(".", 1)[1]))
    for n in names[1:]:
        assert lines[n] == lines["Chr1A"], "without indels every feature keeps its coordinates"
    arrs = {n: np.frombuffer(s.encode(), dtype=np.uint8) for n, s in seqs.items()}
    for i, x in enumerate(names):
        for y in names[i + 1:]:
            np.testing.assert_array_equal(arrs[x] >= ord("a"), arrs[y] >= ord("a"))
            mismatch = np.mean((arrs[x] | 32) != (arrs[y] | 32))
            # each copy carries at most `rate` SNPs per base (fewer: genes are protected)
            assert 0.5 * rate < mismatch <= 2 * rate, (x, y, mismatch)
    # SNPs inside genes are rarer than outside (synonymous sites only in CDS, motifs kept)
    in_gene = np.zeros(arrs["Chr1A"].size, dtype=bool)
    for f in snp_only.of_type("CDS"):
        if f["seqid"] == "Chr1A":
            in_gene[f["start"] - 1: f["end"]] = True
    diff = (arrs["Chr1A"] | 32) != (arrs["Chr1B"] | 32)
    assert diff[in_gene].mean() < diff[~in_gene].mean()


def test_indel_copies_within_divergence(polyploid: Genome):
    snp, indel, mean_len = 0.02, 0.002, 3.0
    bound = 2 * (snp + mean_len * indel)
    lengths = {n: len(s) for n, s in polyploid.seqs.items()}
    assert len(set(lengths.values())) > 1, "indels change the copies' lengths"
    gene_mismatch, gene_bases = 0, 0
    for a, b in (("Chr1A", "Chr1B"), ("Chr2B", "Chr2C")):
        pairs = _homologous_genes(polyploid, a, b)
        for ga, gb in pairs:
            sa, sb = fragment(polyploid.seqs[a], ga), fragment(polyploid.seqs[b], gb)
            assert len(sa) == len(sb), "no indels inside genes"
            gene_mismatch += sum(x != y for x, y in zip(sa, sb))
            gene_bases += len(sa)
        # between two consecutive homologous genes both copies are anchored: a global alignment
        edits, bases = 0, 0
        for (a1, b1), (a2, b2) in list(zip(pairs, pairs[1:]))[:6]:
            ia = polyploid.seqs[a][a1["end"]: a2["start"] - 1]
            ib = polyploid.seqs[b][b1["end"]: b2["start"] - 1]
            if max(len(ia), len(ib)) > 6000:
                continue
            edits += edit_distance(ia, ib)
            bases += max(len(ia), len(ib))
        assert bases > 2000
        assert 0 < edits / bases <= 1.5 * bound, (a, b, edits / bases)
    assert 0 < gene_mismatch / gene_bases <= 2 * snp


def test_same_seed_same_bytes(tmp_path: Path):
    cfg = SynthConfig(seed=3, n_chromosomes=1, chromosome_length=30_000, ploidy=3, gzip=True)
    a, b = synthesize(cfg, tmp_path / "a"), synthesize(cfg, tmp_path / "b")
    assert a.keys() == b.keys() == {"fasta", "gff3", "homology", "summary"}
    for key in a:
        assert a[key].read_bytes() == b[key].read_bytes(), key
    c = synthesize(SynthConfig(seed=4, n_chromosomes=1, chromosome_length=30_000, ploidy=3, gzip=True),
                   tmp_path / "c")
    assert read_fasta(c["fasta"]) != read_fasta(a["fasta"])
    assert c["gff3"].read_bytes() != a["gff3"].read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(p.name for p in a.values())


@pytest.mark.parametrize("gc", [0.3, 0.6])
def test_gc_content_follows_config(tmp_path: Path, gc: float):
    paths = synthesize(SynthConfig(seed=1, n_chromosomes=1, chromosome_length=40_000, gc=gc), tmp_path)
    seq = read_fasta(paths["fasta"])["Chr1"].upper().replace("N", "")
    observed = (seq.count("G") + seq.count("C")) / len(seq)
    assert abs(observed - gc) < 0.06, observed


def test_summary_matches_files(haploid: Genome):
    import json

    summary = json.loads(haploid.paths["summary"].read_text())
    for r in summary["records"]:
        seq = haploid.seqs[r["name"]]
        assert r["length"] == len(seq)
        assert r["repeat_bases"] == sum(c.islower() for c in seq)
        assert r["n_bases"] == seq.count("N")
        assert r["genes"] == sum(1 for g in haploid.of_type("gene") if g["seqid"] == r["name"])


def test_bad_config_values():
    with pytest.raises(ConfigError, match="ploidy"):
        SynthConfig(ploidy=0)
    with pytest.raises(ConfigError, match="n_gap_max"):
        SynthConfig(n_gap_min=500, n_gap_max=100)


def test_too_dense_raises_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="chromosome_length"):
        synthesize(SynthConfig(n_chromosomes=1, chromosome_length=10_000, genes_per_mb=2000.0), tmp_path / "x")
    assert not (tmp_path / "x" / "genome.fa").exists()


def test_an_output_directory_that_cannot_be_made(tmp_path: Path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(InputError, match=r"afile/g: cannot create this directory \(Not a directory\)"):
        synthesize(SynthConfig(n_chromosomes=1, chromosome_length=10_000), tmp_path / "afile" / "g")


def test_command_runs_in_process(tmp_path: Path, capsys):
    out = tmp_path / "synth"
    code = run(["synth", f"out={out}", "seed=2", "ploidy=3", "n_chromosomes=1", "chromosome_length=20000"])
    assert code == 0
    text = capsys.readouterr().out
    assert "Chr1A" in text and "Chr1C" in text and "genes" in text
    assert read_fasta(out / "genome.fa").keys() == {"Chr1A", "Chr1B", "Chr1C"}


@pytest.mark.parametrize("override, key", [("ploidy=0", "ploidy"), ("snp_rate=abc", "snp_rate"),
                                           ("colour=red", "colour"),
                                           ("chromosome_length=99999999999999999999999999", "chromosome_length"),
                                           ("line_width=99999999999999999999999999", "line_width")])
def test_command_bad_option(tmp_path: Path, capsys, override: str, key: str):
    with pytest.raises(SystemExit) as exc:
        main(["synth", f"out={tmp_path / 'o'}", override])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("dnalm: error:") and key in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
