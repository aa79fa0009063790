"""GFF3 reading: features, attributes, hierarchy, validation messages, real NCBI files."""

from __future__ import annotations

import gzip
import re
import warnings
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import shared_file
from dnalm.errors import InputError
from dnalm.genome import gff as gff_module
from dnalm.genome.gff import (
    CHILD,
    PART_CHILD,
    TRANSCRIPT_CHILD,
    Feature,
    GffIndex,
    GffWarning,
    index_gff3,
    is_transcript_type,
    read_gff3,
)

HEADER = "##gff-version 3\n"


def gff(tmp_path: Path, body: str, name: str = "a.gff3", compress: bool = False) -> Path:
    path = tmp_path / name
    data = (HEADER + body).encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def row(seqid: str, type_: str, start: int, end: int, strand: str = "+", attrs: str = "", phase: str = ".",
        score: str = ".") -> str:
    return "\t".join([seqid, "src", type_, str(start), str(end), score, strand, phase, attrs]) + "\n"


GOOD = (
    "##sequence-region chr1 1 100\n"
    + row("chr1", "gene", 11, 60, "+", "ID=g1;Name=ab%3Bc%2Cd%3De;Note=x,y")
    + row("chr1", "mRNA", 11, 60, "+", "ID=t1;Parent=g1")
    + "###\n"
    + row("chr1", "CDS", 21, 30, "+", "ID=c1;Parent=t1", phase="0")
    + row("chr1", "CDS", 41, 50, "+", "ID=c1;Parent=t1", phase="2", score="1.5")
    + row("chr1", "exon", 11, 30, "+", "Parent=t1,t2")
    + "# a comment\n\n"
    + row("chr1", "mRNA", 11, 60, "-", "ID=t2;Parent=g1")
    + row("chr%7C2", "repeat_region", 1, 1, "?", "")
    + "##FASTA\n>chr1\nNOT A FEATURE\tLINE\n"
)


@pytest.mark.parametrize("compress", [False, True])
def test_parse_features_attributes_and_hierarchy(tmp_path, compress):
    ann = read_gff3(gff(tmp_path, GOOD, "a.gff3.gz" if compress else "a.gff3", compress))
    assert len(ann) == 7
    assert ann.seqids == ["chr1", "chr|2"]
    assert ann.sequence_regions == {"chr1": 100}
    gene = ann.features[0]
    assert gene == Feature("chr1", "src", "gene", 10, 60, "+", None, None,
                           {"ID": "g1", "Name": "ab;c,d=e", "Note": "x,y"}, "g1", (), 3)
    cds = ann.get("c1")
    assert [(f.start, f.end, f.phase, f.score, f.line) for f in cds] == [(20, 30, 0, None, 6), (40, 50, 2, 1.5, 7)]
    exon = ann.features[4]
    assert exon.parents == ("t1", "t2") and exon.id is None and exon.attributes["Parent"] == "t1,t2"
    assert [f.type for f in ann.children("t1")] == ["CDS", "CDS", "exon"]
    assert [f.id for f in ann.children("g1")] == ["t1", "t2"]
    assert [f.id for f in ann.children("t2")] == [None]
    single = ann.on("chr|2")[0]
    assert (single.start, single.end, single.strand, single.attributes) == (0, 1, "?", {})
    assert ann.on("nope") == [] and ann.get("nope") == []
    assert ann.type_counts == {"gene": 1, "mRNA": 2, "CDS": 2, "exon": 1, "repeat_region": 1}
    assert ann.unknown_types == {}


def test_seq_lengths_accepted_when_consistent(tmp_path):
    ann = read_gff3(gff(tmp_path, GOOD), seq_lengths={"chr1": 60, "chr|2": 1, "chr3": 5})
    assert len(ann) == 7


MALFORMED = [
    (row("c", "gene", 1, 5).replace("\t", " ", 1), r"line 2: expected 9 tab-separated columns, found 8"),
    (row("c", "gene", 1, 5, attrs="ID=a") .rstrip("\n") + "\textra\n", r"line 2: expected 9 .* found 10"),
    (row("c", "gene", 1, 5) + row("c", "gene", 9, 5), r"a\.gff3: line 3: end 5 is before start 9"),
    (row("c", "gene", 1, 5).replace("\t1\t", "\t1.0\t"), r"line 2: start '1\.0' is not an integer"),
    (row("c", "gene", 1, 5).replace("\t5\t", "\tabc\t"), r"line 2: end 'abc' is not an integer"),
    (row("c", "gene", 0, 5), r"line 2: start 0 must be >= 1"),
    (row("c", "gene", 1, 10**20), r"line 2: end 100000000000000000000 is larger than any sequence"),
    (row("c", "gene", 2**62 + 1, 2**63), r"line 2: start 4611686018427387905 is larger than any sequence"),
    (row("c", "gene", 1, 5, strand="x"), r"line 2: strand 'x' is not one of"),
    (row("c", "CDS", 1, 5, phase="3"), r"line 2: phase '3' is not one of 0 1 2"),
    (row("c", "CDS", 1, 5, score="high"), r"line 2: score 'high' is not a number"),
    (row("c", "gene", 1, 5, attrs='gene_id "g1"; transcript_id "t1";'),
     r"line 2: attribute 'gene_id \"g1\"' is not tag=value \(is this a GTF file\?\)"),
    (row("c", "gene", 1, 5, attrs="ID=g") + row("c", "mRNA", 1, 5, attrs="ID=t;Parent=g,missing%20x"),
     r"a\.gff3: line 3: Parent 'missing x' of mRNA 't' is not defined"),
    (row("c", "exon", 1, 5, attrs="Parent=later") + row("c", "mRNA", 1, 5, attrs="ID=later")
     + row("c", "CDS", 1, 5, attrs="Parent=nothere"), r"line 4: Parent 'nothere' of CDS is not defined"),
]


@pytest.mark.parametrize(("body", "message"), MALFORMED)
def test_malformed_gff_messages(tmp_path, body, message):
    with pytest.raises(InputError, match=message):
        read_gff3(gff(tmp_path, body))


def test_undefined_attribute_column_is_empty(tmp_path):
    """GFF3 writes '.' for every undefined column, the ninth included."""
    path = gff(tmp_path, row("c", "repeat_region", 1, 5, attrs=".") + row("c", "gene", 2, 4, attrs=" . "))
    ann = read_gff3(path, {"c": 5})
    assert [(f.attributes, f.id, f.parents) for f in ann.features] == [({}, None, ()), ({}, None, ())]
    with index_gff3(path, {"c": 5}) as index:
        assert len(index.table("c")) == 2


def test_forward_parent_reference_is_valid(tmp_path):
    body = row("c", "exon", 1, 5, attrs="Parent=t") + row("c", "mRNA", 1, 5, attrs="ID=t")
    ann = read_gff3(gff(tmp_path, body))
    assert [f.type for f in ann.children("t")] == ["exon"]


def test_coordinates_beyond_sequence_length(tmp_path):
    body = row("c", "gene", 1, 10) + row("c", "gene", 5, 11, attrs="ID=g2")
    path = gff(tmp_path, body)
    assert len(read_gff3(path, {"c": 11})) == 2
    with pytest.raises(InputError, match=r"a\.gff3: line 3: gene 5\.\.11 extends beyond the end of 'c' \(length 10\)"):
        read_gff3(path, {"c": 10})


def test_circular_feature_may_cross_the_origin(tmp_path):
    body = (row("c", "region", 1, 10, attrs="ID=c;Is_circular=true") + row("c", "gene", 8, 13)
            + row("d", "gene", 8, 13))
    path = gff(tmp_path, body)
    with pytest.raises(InputError, match=r"line 4: gene 8\.\.13 extends beyond the end of 'd'"):
        read_gff3(path, {"c": 10, "d": 10})
    ann = read_gff3(path, {"c": 10, "d": 13})
    assert ann.is_circular("c") and not ann.is_circular("d")
    with pytest.raises(InputError, match=r"line 3: gene 8\.\.18 extends beyond"):
        read_gff3(gff(tmp_path, row("c", "region", 1, 10, attrs="Is_circular=true") + row("c", "gene", 8, 18)),
                  {"c": 10})


def test_seqids_absent_from_fasta_are_listed_and_counted(tmp_path):
    body = "".join(row(f"s{i}", "gene", 1, 2) for i in range(8)) + row("s0", "gene", 1, 2)
    with pytest.raises(InputError, match=r"a\.gff3: 7 seqid\(s\) are not records of the FASTA: 's1' \(line 3\), "
                                         r"'s2' \(line 4\), 's3' \(line 5\), 's4' \(line 6\), 's5' \(line 7\), "
                                         r"\.\.\.; the FASTA has 2 record\(s\): s0, chrX"):
        read_gff3(gff(tmp_path, body), {"s0": 5, "chrX": 5})


def test_empty_or_not_gff(tmp_path):
    path = tmp_path / "empty.gff3"
    path.write_text("")
    with pytest.raises(InputError, match=r"empty\.gff3: no GFF3 features"):
        read_gff3(path)
    assert len(read_gff3(gff(tmp_path, "###\n"))) == 0
    with pytest.raises(InputError, match=r"x\.gff3: file not found"):
        read_gff3(tmp_path / "x.gff3")


def test_truncated_gzip(tmp_path):
    data = gzip.compress((HEADER + row("c", "gene", 1, 5) * 20_000).encode())
    path = tmp_path / "t.gff3.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"t\.gff3\.gz: line \d+: truncated or corrupt gzip"):
        read_gff3(path)


def test_unknown_types_warn_with_counts(tmp_path):
    body = (row("c", "gene", 1, 5, attrs="ID=g") + row("c", "widget", 1, 5) + row("c", "widget", 2, 5)
            + row("c", "gizmo", 1, 5) + row("c", "odd_parent", 1, 9, attrs="ID=p")
            + row("c", "exon", 1, 3, attrs="Parent=p"))
    with pytest.warns(GffWarning, match=r"3 feature\(s\) of 2 unknown type\(s\) .*: widget \(2\), gizmo \(1\)"):
        ann = read_gff3(gff(tmp_path, body))
    assert ann.unknown_types == {"widget": 2, "gizmo": 1}


@pytest.fixture(scope="module")
def yeast():
    from dnalm.genome.fasta import read_lengths

    fasta = shared_file("yeast_r64", "GCA_000146045.2_R64_genomic.fna.gz")
    path = shared_file("yeast_r64", "GCA_000146045.2_R64_genomic.gff.gz")
    return read_gff3(path, read_lengths(fasta)), path


def test_yeast_ncbi_annotation(yeast):
    ann, path = yeast
    counts = ann.type_counts
    # numbers from the data set's README
    assert (counts["gene"], counts["mRNA"], counts["exon"], counts["CDS"]) == (6381, 5995, 6733, 6316)
    assert counts["long_terminal_repeat"] > 0 and counts["centromere"] > 0 and counts["tRNA"] > 0
    assert ann.unknown_types == {}
    assert len(ann.seqids) == 16 and ann.seqids[0] == "BK006935.2"
    # an independent count of data lines and of the 1-based coordinates of the first gene
    with gzip.open(path, "rt") as f:
        lines = [line.rstrip("\n").split("\t") for line in f if line.strip() and not line.startswith("#")]
    assert len(ann) == len(lines)
    assert Counter(c[2] for c in lines) == Counter(counts)
    first_gene = next(c for c in lines if c[2] == "gene")
    gene = next(f for f in ann.features if f.type == "gene")
    assert (gene.start + 1, gene.end, gene.id) == (int(first_gene[3]), int(first_gene[4]), "gene-YAL068C")
    # a CDS split over two lines (ribosomal slippage) shares one ID and hangs on the gene
    slip = ann.get("cds-DAA07024.1")
    assert len(slip) == 2 and {f.parents for f in slip} == {("gene-YBL100W-B",)}
    assert ann.features[1].attributes["Note"].startswith("TEL01L; Telomeric region")


def test_chloroplast_annotation_with_trans_splicing():
    fasta = shared_file("athal_chloroplast", "NC_000932.1.fa")
    from dnalm.genome.fasta import read_lengths

    with warnings.catch_warnings():
        warnings.simplefilter("error", GffWarning)
        ann = read_gff3(shared_file("athal_chloroplast", "NC_000932.1.gff3"), read_lengths(fasta))
    counts = ann.type_counts
    assert (counts["gene"], counts["mRNA"], counts["tRNA"], counts["rRNA"]) == (129, 85, 37, 7)
    assert ann.is_circular("NC_000932.1")
    rps12 = ann.get("ArthCp047.t1")[0]
    assert rps12.strand == "." and rps12.attributes["exception"] == "trans-splicing"
    assert [(f.start, f.end, f.strand) for f in ann.children("ArthCp047.t1") if f.type == "exon"] == [
        (69610, 69724, "-"), (139855, 140087, "+"), (140624, 140650, "+")]


# ---------------------------------------------------------------- the columnar index (index_gff3)


def spliced(f: Feature) -> bool:
    exception = f.attributes.get("exception", "").lower()
    return "trans-splic" in exception or "trans_splic" in exception


def assert_index_matches(index: GffIndex, ann) -> None:
    """Every table of ``index`` against the Feature objects of ``ann`` (read with the full attribute parser)."""
    assert index.seqids == ann.seqids and len(index) == len(ann)
    assert index.type_counts == ann.type_counts and index.unknown_types == ann.unknown_types
    assert index.circular == ann.circular and index.sequence_regions == ann.sequence_regions
    for seqid in ann.seqids:
        feats, t = ann.on(seqid), index.table(seqid)
        assert [index.types[c] for c in t.type.tolist()] == [f.type for f in feats]
        assert t.start.tolist() == [f.start for f in feats] and t.end.tolist() == [f.end for f in feats]
        assert bytes(t.strand).decode() == "".join(f.strand for f in feats)
        assert t.line.tolist() == [f.line for f in feats]
        assert [t.names[i] if i >= 0 else None for i in t.id.tolist()] == [f.id for f in feats]
        assert [tuple(t.names[j] for j in t.parent[t.parent_ptr[r]:t.parent_ptr[r + 1]].tolist())
                for r in range(len(t))] == [f.parents for f in feats]
        assert t.trans_spliced.tolist() == [spliced(f) for f in feats]
        for i, name in enumerate(t.names):  # per-name facts over the whole file
            lines, kids = ann.get(name), ann.children(name)
            assert t.first_type[i] == (index.types.index(lines[0].type) if lines else -1)
            assert bool(t.name_trans_spliced[i]) == any(spliced(f) for f in lines)
            assert t.children[i] == ((CHILD if kids else 0)
                                     | (TRANSCRIPT_CHILD if any(is_transcript_type(k.type) for k in kids) else 0)
                                     | (PART_CHILD if any(k.type in {"exon", "CDS", "five_prime_UTR",
                                                                     "three_prime_UTR"} for k in kids) else 0))
    assert not len(index.table("nope"))


@pytest.mark.parametrize("compress", [False, True])
def test_index_holds_the_features(tmp_path, compress):
    path = gff(tmp_path, GOOD, "a.gff3.gz" if compress else "a.gff3", compress)
    ann = read_gff3(path)
    with index_gff3(path) as index:
        assert_index_matches(index, ann)
    assert_index_matches(ann.index, ann)
    assert_index_matches(GffIndex.from_features(ann.features, "", ann.circular, ann.sequence_regions), ann)


def test_index_of_real_annotations(yeast):
    ann, path = yeast
    from dnalm.genome.fasta import read_lengths

    with index_gff3(path, read_lengths(shared_file("yeast_r64", "GCA_000146045.2_R64_genomic.fna.gz"))) as index:
        assert_index_matches(index, ann)
    chloroplast = shared_file("athal_chloroplast", "NC_000932.1.gff3")
    with index_gff3(chloroplast) as index:
        assert_index_matches(index, read_gff3(chloroplast))


def test_index_fragments_and_links_across_seqids(tmp_path, monkeypatch):
    body = (row("s1", "gene", 1, 40, attrs="ID=g1") + row("s2", "mRNA", 5, 30, attrs="ID=t1;Parent=g1")
            + row("s1", "exon", 2, 3, attrs="Parent=t1") + row("s2", "exon", 5, 9, attrs="Parent=t1")
            + row("s2", "ncRNA", 1, 9, attrs="ID=r;exception=trans-splicing") + row("s1", "ncRNA", 3, 9, attrs="ID=r")
            + row("s1", "widget", 1, 5, attrs="ID=w") + row("s2", "CDS", 1, 3, attrs="Parent=w")
            + row("s1", "gizmo", 1, 5, attrs="ID=z") + row("s2", "mRNA", 1, 3, attrs="Parent=z")
            + "".join(row("s3", "exon", i, i + 1, attrs=f"ID=e{i};Parent=t1") for i in range(1, 8)))
    path = gff(tmp_path, body)
    monkeypatch.setattr(gff_module, "_FRAGMENT_ROWS", 3)  # s3 is split into fragments
    with pytest.warns(GffWarning, match=r"1 feature\(s\) of 1 unknown type\(s\) .*: gizmo \(1\)"):
        ann = read_gff3(path)
    with pytest.warns(GffWarning, match="gizmo"), index_gff3(path) as index:
        assert_index_matches(index, ann)
        assert index.unknown_types == {"gizmo": 1}  # widget has a CDS child, on another seqid


@pytest.mark.parametrize(("body", "message"), MALFORMED + [
    (row("s2", "exon", 1, 5, attrs="Parent=q") + row("s1", "CDS", 1, 5, attrs="Parent=q"),
     r"line 2: Parent 'q' of exon is not defined"),
    (row("s1", "gene", 1, 5, attrs="ID=q") + row("s2", "exon", 1, 5, attrs="Parent=q")
     + row("s2", "CDS", 1, 5, attrs="ID=c;Parent=q,x"), r"line 4: Parent 'x' of CDS 'c' is not defined"),
])
def test_index_reports_the_same_errors(tmp_path, body, message):
    with pytest.raises(InputError, match=message):
        read_gff3(gff(tmp_path, body))
    with pytest.raises(InputError, match=message):
        index_gff3(gff(tmp_path, body))


def test_index_checks_lengths_like_read_gff3(tmp_path):
    body = (row("c", "region", 1, 10, attrs="ID=c;Is_circular=true") + row("c", "gene", 8, 13)
            + row("d", "gene", 8, 13) + row("d", "gene", 5, 30))
    path = gff(tmp_path, body)
    for read in (read_gff3, index_gff3):
        with pytest.raises(InputError, match=r"line 4: gene 8\.\.13 extends beyond the end of 'd'"):
            read(path, {"c": 10, "d": 10})
        with pytest.raises(InputError, match=r"line 5: gene 5\.\.30 extends beyond the end of 'd' \(length 13\)"):
            read(path, {"c": 10, "d": 13})
        with pytest.raises(InputError, match=r"1 seqid\(s\) are not records of the FASTA: 'd' \(line 4\)"):
            read(path, {"c": 10})


ITEMS = st.lists(st.sampled_from(["ID", "Parent", "exception", "Is_circular", "Note", "=", "=", ";", ";", " ",
                                  "\x0c", "%41", "%3B", ",", ",", "a", "b", "trans-splicing", "ID=", ";Parent="]),
                 max_size=12).map("".join)


@settings(max_examples=400, deadline=None)
@given(col=ITEMS)
def test_lean_attributes_read_like_the_full_parser(col):
    try:
        attrs, parents = gff_module._attributes(col, "f.gff3", 3)
    except InputError as exc:
        with pytest.raises(InputError, match=re.escape(str(exc))):
            gff_module._lean_attributes(col, "f.gff3", 3)
        return
    want = (attrs.get("ID"), parents, attrs.get("exception"), attrs.get("Is_circular"))
    assert gff_module._lean_attributes(col, "f.gff3", 3) == want
