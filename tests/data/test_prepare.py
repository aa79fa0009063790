from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_file
from dnalm.cli import main, run
from dnalm.data.prepare import GenomeSpec, PrepareWarning, default_genome_name, prepare
from dnalm.data.prepared import PreparedGenome
from dnalm.errors import ConfigError, InputError
from dnalm.genome.splits import SplitSpec

# Classes (dnalm.genome.regions.REGION_CLASSES): 0 intergenic, 1 CDS, 2 UTR, 3 exon_other,
# 4 intron, 5 promoter, 6 repeat, 7 N; bit 7 = soft-masked.
CHR1 = ("ACGTACGTAC" "GTACGTACGT" "acgtacgtac" "GTACNNNNAC" "GTACGTRYAC" "GTACGTACGT")
CHR2 = "TTTTTgggggCCCCCAAAAA"
CHR3 = "ACGTA"
GFF = """##gff-version 3
chr1\tt\tgene\t11\t50\t.\t+\t.\tID=g1
chr1\tt\tmRNA\t11\t50\t.\t+\t.\tID=m1;Parent=g1
chr1\tt\texon\t11\t20\t.\t+\t.\tID=e1;Parent=m1
chr1\tt\texon\t41\t50\t.\t+\t.\tID=e2;Parent=m1
chr1\tt\tCDS\t14\t20\t.\t+\t0\tID=c1;Parent=m1
chr1\tt\tCDS\t41\t45\t.\t+\t2\tID=c1;Parent=m1
"""
IDS = {"A": 7, "C": 8, "G": 9, "T": 10}


def expected_regions() -> dict[str, np.ndarray]:
    """Region bytes worked out by hand for GFF with promoter_window=5."""
    r1 = np.zeros(60, np.uint8)
    r1[5:10] = 5  # promoter: 5 bases before the mRNA start (1-based 11 -> 0-based 10)
    r1[10:13] = 2  # 5' UTR: exon 1 before the CDS
    r1[13:20] = 1  # CDS 14..20
    r1[20:40] = 4  # intron between the exons
    r1[40:45] = 1  # CDS 41..45
    r1[45:50] = 2  # 3' UTR
    r1[[34, 35, 36, 37, 46, 47]] = 7  # N, R, Y
    r1[20:30] |= 0x80  # lowercase inside the intron keeps class intron
    r2 = np.zeros(20, np.uint8)
    r2[5:10] = 6 | 0x80  # soft-masked, unannotated: repeat
    return {"chr1": r1, "chr2": r2, "chr3": np.zeros(5, np.uint8)}


def wrap(seq: str, width: int = 17) -> str:
    return "\n".join(seq[i : i + width] for i in range(0, len(seq), width))


@pytest.fixture
def tiny(tmp_path) -> tuple[Path, Path]:
    fa = tmp_path / "tiny.fa"
    fa.write_text(f">chr1 first\n{wrap(CHR1)}\n>chr2\n{wrap(CHR2)}\n\n>chr3\n{CHR3}\n")
    gff = tmp_path / "tiny.gff3"
    gff.write_text(GFF)
    return fa, gff


def upper_n(seq: str) -> str:
    return re.sub("[^ACGT]", "N", seq.upper())


def test_tiny_genome_tokens_and_regions(tiny, tmp_path):
    fa, gff = tiny
    out = prepare([GenomeSpec("tiny", str(fa), str(gff))], tmp_path / "out", SplitSpec(test=["chr2"]),
                  promoter_window=5)
    tokens = np.fromfile(out / "tokens.u8", np.uint8)
    regions = np.fromfile(out / "regions.u8", np.uint8)
    decoded = "".join("ACGTN"[i - 7] for i in tokens)
    assert decoded == upper_n(CHR1 + CHR2 + CHR3)
    exp = expected_regions()
    np.testing.assert_array_equal(regions, np.concatenate([exp["chr1"], exp["chr2"], exp["chr3"]]))

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "dnalm-prepared/1"
    assert manifest["tokenizer"]["type"] == "char"
    assert [(r["name"], r["length"], r["offset"], r["n_count"], r["softmasked"]) for r in manifest["records"]] == [
        ("chr1", 60, 0, 6, 10), ("chr2", 20, 60, 0, 5), ("chr3", 5, 80, 0, 0)]
    assert manifest["total_length"] == 85
    assert manifest["class_counts"] == {"intergenic": 5 + 10 + 15 + 5, "CDS": 12, "UTR": 6, "exon_other": 0,
                                        "intron": 16, "promoter": 5, "repeat": 5, "N": 6}
    assert sum(manifest["class_counts"].values()) == 85
    g = manifest["genomes"][0]
    assert g["name"] == "tiny" and g["weight"] == 1.0 and Path(g["fasta"]) == fa.resolve()
    assert len(g["fasta_sha256"]) == 64 and len(g["annotation_sha256"]) == 64

    splits = json.loads((out / "splits.json").read_text())
    assert splits == {"strategy": "records",
                      "splits": {"train": [["chr1", 0, 60], ["chr3", 0, 5]], "val": [], "test": [["chr2", 0, 20]]}}
    report = (out / "split_report.md").read_text()
    assert "| test | 1 | 20 | 23.5% | 15 | 0 | 0 | 0 | 0 | 0 | 5 | 0 |" in report

    pg = PreparedGenome(out)
    assert pg.sequence("chr1") == upper_n(CHR1)
    assert pg.split_length("train") == 65
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny.fa", "tiny.gff3"]


def test_blend_prefixes_records_and_keeps_weights(tiny, tmp_path):
    fa, gff = tiny
    genomes = [GenomeSpec("R570", str(fa), str(gff), weight=2.0), GenomeSpec("XTT22", str(fa), weight=0.5)]
    out = prepare(genomes, tmp_path / "blend", SplitSpec(val=["XTT22:chr1"], test=["chr2"]), promoter_window=5)
    manifest = json.loads((out / "manifest.json").read_text())
    names = [r["name"] for r in manifest["records"]]
    assert names == ["R570:chr1", "R570:chr2", "R570:chr3", "XTT22:chr1", "XTT22:chr2", "XTT22:chr3"]
    assert [r["genome"] for r in manifest["records"]] == ["R570"] * 3 + ["XTT22"] * 3
    assert [(g["name"], g["weight"], g["annotation"] is None) for g in manifest["genomes"]] == [
        ("R570", 2.0, False), ("XTT22", 0.5, True)]
    regions = np.fromfile(out / "regions.u8", np.uint8)
    exp = expected_regions()
    np.testing.assert_array_equal(regions[:60], exp["chr1"])
    unannotated = (np.frombuffer(upper_n(CHR1).encode(), np.uint8) == ord("N")) * 7
    np.testing.assert_array_equal(regions[85:145] & 0x7F, np.where(exp["chr1"][:] & 0x80, 6, unannotated))
    splits = json.loads((out / "splits.json").read_text())["splits"]
    assert splits["val"] == [["XTT22:chr1", 0, 60]]
    assert splits["test"] == [["R570:chr2", 0, 20], ["XTT22:chr2", 0, 20]]
    assert PreparedGenome(out).genome_weight("XTT22:chr3") == 0.5


def test_short_records_are_warned_about(tiny, tmp_path):
    fa, _ = tiny
    with pytest.warns(PrepareWarning, match=r"2 of 3 records \(25 bases\) are shorter than the window length 21"):
        out = prepare([GenomeSpec("tiny", str(fa))], tmp_path / "out", window=21)
    assert "2 records (25 bases) are shorter than the window length 21: chr2, chr3" in (
        out / "split_report.md").read_text()


def test_default_genome_name():
    assert default_genome_name("/x/GCA_000146045.2_R64_genomic.fna.gz") == "GCA_000146045.2_R64_genomic"
    assert default_genome_name("R570.fa") == "R570"


# --------------------------------------------------------------------------- real data

def test_chloroplast_windows_decode_to_fasta(tmp_path):
    from dnalm.genome.fasta import FastaIndex

    fa = shared_file("athal_chloroplast", "NC_000932.1.fa")
    gff = shared_file("athal_chloroplast", "NC_000932.1.gff3")
    out = prepare([GenomeSpec("chloroplast", str(fa), str(gff))], tmp_path / "cp",
                  SplitSpec(strategy="intervals", test=["NC_000932.1:100001-154478"], gap=100))
    pg = PreparedGenome(out)
    manifest = pg.manifest
    assert manifest["total_length"] == 154_478
    assert sum(manifest["class_counts"].values()) == 154_478
    assert manifest["class_counts"]["CDS"] > 50_000 and manifest["class_counts"]["N"] == 0
    rng = np.random.default_rng(0)
    with FastaIndex(fa) as index:
        for start in rng.integers(0, 154_478 - 1000, 20).tolist() + [0, 154_478 - 1000]:
            assert pg.sequence("NC_000932.1", start, start + 1000) == index.fetch("NC_000932.1", start,
                                                                                  start + 1000).upper()
            lower = np.frombuffer(index.fetch("NC_000932.1", start, start + 1000).encode(), np.uint8) >= 97
            np.testing.assert_array_equal(pg.window_regions("NC_000932.1", start, start + 1000) >= 0x80, lower)
    splits = json.loads((out / "splits.json").read_text())["splits"]
    assert splits == {"train": [["NC_000932.1", 0, 99_900]], "val": [], "test": [["NC_000932.1", 100_000, 154_478]]}
    # the inverted repeats (IRa in train, IRb in test) share their k-mers: leakage is reported
    chosen, naive = leakage_table((out / "split_report.md").read_text())["test"]
    assert 0.2 < chosen < 0.6 and np.isnan(naive)  # a single record: no naive record split


def test_yeast_chromosome_split(tmp_path):
    from dnalm.genome.fasta import FastaIndex

    fa = shared_file("yeast_r64", "GCA_000146045.2_R64_genomic.fna.gz")
    gff = shared_file("yeast_r64", "GCA_000146045.2_R64_genomic.gff.gz")
    spec = SplitSpec(val=["BK006947.3"], test=["BK006948.2", "BK006949.2"])
    out = prepare([GenomeSpec("R64", str(fa), str(gff))], tmp_path / "yeast", spec)
    pg = PreparedGenome(out)
    assert pg.total_length == 12_071_326 == sum(pg.manifest["class_counts"].values())
    assert [iv.record for iv in pg.intervals("test")] == ["BK006948.2", "BK006949.2"]
    assert len(pg.intervals("train")) == len(pg.records) - 3
    rng = np.random.default_rng(1)
    with FastaIndex(fa) as index:
        for name in ("BK006947.3", "BK006949.2", pg.manifest["records"][0]["name"]):
            length = pg.record(name).length
            for start in rng.integers(0, length - 500, 3).tolist():
                assert pg.sequence(name, start, start + 500) == index.fetch(name, start, start + 500).upper()
    soft = sum(r["softmasked"] for r in pg.manifest["records"])
    assert 0.12 < soft / pg.total_length < 0.135  # README: 12.7% lowercase


# --------------------------------------------------------------------------- polyploid genome

def exact_leakage(pg: PreparedGenome, held: list[str], train: list[str], k: int = 31) -> float:
    """Independent reference: Python sets of canonical k-mer strings of whole records."""
    comp = str.maketrans("ACGT", "TGCA")

    def kmers(records: list[str]) -> set[str]:
        out = set()
        for rec in records:
            seq = pg.sequence(rec)
            for i in range(len(seq) - k + 1):
                kmer = seq[i : i + k]
                if "N" not in kmer:
                    out.add(min(kmer, kmer.translate(comp)[::-1]))
        return out

    test = kmers(held)
    return len(test & kmers(train)) / len(test)


@pytest.fixture(scope="module")
def polyploid(tmp_path_factory) -> dict[str, Path]:
    from dnalm.genome.synth import SynthConfig, synthesize

    cfg = SynthConfig(seed=3, n_chromosomes=3, chromosome_length=20_000, ploidy=4, snp_rate=0.005)
    return synthesize(cfg, tmp_path_factory.mktemp("synth"))


def leakage_table(report: str) -> dict[str, tuple[float, float]]:
    rows = re.findall(r"^\| (val|test) \| ([\d.]+|–) \| ([\d.]+|–) \|$", report, flags=re.M)
    return {name: (float(a.replace("–", "nan")), float(b.replace("–", "nan"))) for name, a, b in rows}


@pytest.mark.parametrize("group_by", ["pattern", "auto"])
def test_homology_split_of_polyploid_genome(polyploid, tmp_path, group_by):
    spec = SplitSpec(strategy="homology", group_by=group_by, val_fraction=0.2, test_fraction=0.2, seed=2)
    out = prepare([GenomeSpec("poly", str(polyploid["fasta"]), str(polyploid["gff3"]))], tmp_path / "p", spec)
    splits = json.loads((out / "splits.json").read_text())
    assert splits["strategy"] == "homology"
    truth = {}
    for line in polyploid["homology"].read_text().splitlines()[1:]:
        rec, group = line.split("\t")
        truth.setdefault(group, []).append(rec)
    assert sorted(splits["groups"].values()) == sorted(truth.values())
    where = {iv[0]: name for name, ivs in splits["splits"].items() for iv in ivs}
    for recs in truth.values():
        assert len({where[r] for r in recs}) == 1
    assert sorted(where.values()) == ["test"] * 4 + ["train"] * 4 + ["val"] * 4
    report = (out / "split_report.md").read_text()
    leaks = leakage_table(report)
    assert leaks["test"][0] < 0.05 and leaks["val"][0] < 0.05
    assert leaks["test"][1] > 0.5
    pg = PreparedGenome(out)
    records = list(pg.records)
    naive_test = re.search(r"^Naive split: val: .*; test: (.*)\.$", report, flags=re.M).group(1).split(", ")
    naive_val = re.search(r"^Naive split: val: (.*); test:", report, flags=re.M).group(1).split(", ")
    naive_train = [r for r in records if r not in naive_test + naive_val]
    assert len(naive_test) == 4 and len(naive_val) == 4
    assert leaks["test"][1] == pytest.approx(exact_leakage(pg, naive_test, naive_train), abs=1e-3)
    chosen_test = [iv.record for iv in pg.intervals("test")]
    chosen_train = [iv.record for iv in pg.intervals("train")]
    assert leaks["test"][0] == pytest.approx(exact_leakage(pg, chosen_test, chosen_train), abs=1e-3)
    assert "## Homology groups" in report


def test_homology_split_from_synth_tsv(polyploid, tmp_path):
    spec = SplitSpec(strategy="homology", group_by="tsv", groups_tsv=str(polyploid["homology"]), test=["Chr2B"])
    out = prepare([GenomeSpec("poly", str(polyploid["fasta"]))], tmp_path / "p", spec)
    splits = json.loads((out / "splits.json").read_text())
    assert [iv[0] for iv in splits["splits"]["test"]] == ["Chr2A", "Chr2B", "Chr2C", "Chr2D"]


# --------------------------------------------------------------------------- bad inputs

GOOD_FA = ">chr1\nACGTACGTAC\n"
GOOD_GFF = "##gff-version 3\nchr1\tt\tgene\t2\t5\t.\t+\t.\tID=g1\n"


def truncated_gzip() -> bytes:
    data = gzip.compress((">chr1\n" + "ACGT" * 5000 + "\n").encode())
    return data[: len(data) // 2]


BAD_INPUTS = {
    "empty FASTA": ("fa", b"", r"empty file"),
    "text before header": ("fa", b"hello\n>chr1\nACGT\n", r"line 1: text before the first '>'"),
    "duplicate ids": ("fa", b">a\nACGT\n>a\nACGT\n", r"line 3: duplicate record name 'a'"),
    "non-IUPAC": ("fa", b">ok\nACGT\n>a\nACGTXACGT\n",
                  r"line 4: record .a. has an invalid character .X. at position 5"),
    "truncated gzip": ("fa", truncated_gzip(), r"truncated or corrupt gzip"),
    "GFF3 columns": ("gff", b"##gff-version 3\nchr1\tt\tgene\t2\t5\t.\t+\n", r"line 2"),
    "GFF3 end < start": ("gff", b"##gff-version 3\nchr1\tt\tgene\t5\t2\t.\t+\t.\tID=g\n", r"line 2"),
    "GFF3 missing parent": ("gff", b"##gff-version 3\nchr1\tt\texon\t2\t5\t.\t+\t.\tParent=zz\n", r"zz"),
    "GFF3 seqid not in FASTA": ("gff", b"##gff-version 3\nchrZ\tt\tgene\t2\t5\t.\t+\t.\tID=g\n", r"chrZ"),
    "GFF3 beyond record": ("gff", b"##gff-version 3\nchr1\tt\tgene\t2\t50\t.\t+\t.\tID=g\n", r"line 2"),
}


@pytest.mark.parametrize("case, with_gff", [(c, True) for c in BAD_INPUTS]
                         + [(c, False) for c, v in BAD_INPUTS.items() if v[0] == "fa"])
def test_bad_input_fails_naming_the_file_and_leaves_nothing(tmp_path, case, with_gff):
    """The same FASTA errors whether or not the genome has an annotation."""
    kind, content, message = BAD_INPUTS[case]
    fa, gff = tmp_path / "g.fa", tmp_path / "g.gff3"
    fa.write_text(GOOD_FA)
    gff.write_text(GOOD_GFF)
    bad = fa if kind == "fa" else gff
    bad.write_bytes(content)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(InputError) as exc:
        prepare([GenomeSpec("g", str(fa), str(gff) if with_gff else None)], tmp_path / "out")
    msg = str(exc.value)
    assert str(bad) in msg and "\n" not in msg
    assert re.search(message, msg), msg
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_failure_after_writing_keeps_the_old_output_and_no_temporary(tiny, tmp_path):
    fa, gff = tiny
    out = prepare([GenomeSpec("tiny", str(fa))], tmp_path / "out")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ConfigError, match="split.test: record 'chrZ' is not in the genome"):
        prepare([GenomeSpec("tiny", str(fa), str(gff))], tmp_path / "out", SplitSpec(test=["chrZ"]))
    # automatic homology groups are found on the written arrays: this error comes after writing
    with pytest.raises(ConfigError, match="split.test: 'chrZ' is neither a group nor a record"):
        prepare([GenomeSpec("tiny", str(fa), str(gff))], tmp_path / "out",
                SplitSpec(strategy="homology", group_by="auto", test=["chrZ"]))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny.fa", "tiny.gff3"]
    with pytest.raises(ConfigError, match="exists"):
        prepare([GenomeSpec("tiny", str(fa))], tmp_path / "out", overwrite=False)


@pytest.mark.parametrize("genomes, message", [
    ([], "no genome given"),
    ([GenomeSpec("a:b", "x.fa")], "without ':'"),
    ([GenomeSpec("a", "x.fa"), GenomeSpec("a", "y.fa")], "used by two genomes"),
    ([GenomeSpec("a", "x.fa", weight=0.0)], "positive"),
])
def test_bad_genome_options(tmp_path, genomes, message):
    with pytest.raises(ConfigError, match=message):
        prepare(genomes, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- command line

def test_cli_prepare_single_genome(tiny, tmp_path, capsys):
    fa, gff = tiny
    out = tmp_path / "cli"
    assert run(["prepare", f"genome={fa}", f"annotation={gff}", f"out={out}", "promoter_window=5",
                "split.strategy=records", "split.val=[chr3]", "split.test=[chr2]"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["genomes"][0]["name"] == "tiny"
    assert manifest["class_counts"]["promoter"] == 5
    splits = json.loads((out / "splits.json").read_text())["splits"]
    assert splits["val"] == [["chr3", 0, 5]] and splits["test"] == [["chr2", 0, 20]]
    assert "prepare: wrote" in capsys.readouterr().out


def test_cli_prepare_genome_list(tiny, tmp_path):
    fa, gff = tiny
    out = tmp_path / "cli"
    run(["prepare", f"genomes=[{{name: a, fasta: '{fa}', annotation: '{gff}'}}, {{name: b, fasta: '{fa}', "
         f"weight: 3.0}}]", f"out={out}", "split.test=[chr2]"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(g["name"], g["weight"]) for g in manifest["genomes"]] == [("a", 1.0), ("b", 3.0)]
    assert json.loads((out / "splits.json").read_text())["splits"]["test"] == [["a:chr2", 0, 20], ["b:chr2", 0, 20]]


@pytest.mark.parametrize("args, message", [
    (["out={tmp}/o"], "set genome=PATH"),
    (["genome={fa}"], "set out=DIR"),
    (["genome={fa}", "out={tmp}/o", "split.test=[nope]"], "split.test: record 'nope' is not in the genome"),
    (["genome={fa}", "out={tmp}/o", "split.strategy=chromosomes"], "split.strategy"),
    (["genomes=[{{name: a, fasta: x, colour: red}}]", "out={tmp}/o"], "unknown config key 'genomes\\[0\\].colour'"),
    (["genome={tmp}/missing.fa", "out={tmp}/o"], "missing.fa: file not found"),
])
def test_cli_errors_are_one_line(tiny, tmp_path, capsys, args, message):
    fa, _ = tiny
    with pytest.raises(SystemExit) as exc:
        main(["prepare"] + [a.format(fa=fa, tmp=tmp_path) for a in args])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dnalm: error: ") and "\n" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "o").exists()


def test_shipped_config_matches_the_library_defaults():
    from dnalm.config import compose, to_dataclass

    cfg = compose("prepare", [])
    assert to_dataclass(cfg.split, SplitSpec, where="split") == SplitSpec()
    assert cfg.promoter_window == 1000 and cfg.window == 0
