"""Region tracks: hand-computed small cases, a per-base reference on random features, real genomes."""

from __future__ import annotations

import gzip
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import shared_file
from dnalm.genome.fasta import iter_records
from dnalm.genome.gff import index_gff3, read_gff3
from dnalm.genome.regions import CLASS_IDS, REGION_CLASSES, SOFTMASK_BIT, class_counts, region_track


def row(seqid: str, type_: str, start: int, end: int, strand: str = "+", attrs: str = "") -> str:
    return "\t".join([seqid, ".", type_, str(start), str(end), ".", strand, ".", attrs]) + "\n"


def annotation(tmp_path: Path, body: str):
    path = tmp_path / "a.gff3"
    path.write_text("##gff-version 3\n" + body)
    return read_gff3(path)


def classes(text: str) -> np.ndarray:
    """A track written as one digit (class id) per base."""
    return np.frombuffer(text.replace(" ", "").encode(), dtype=np.uint8) - ord("0")


def test_constants():
    assert REGION_CLASSES == ("intergenic", "CDS", "UTR", "exon_other", "intron", "promoter", "repeat", "N")
    assert SOFTMASK_BIT == 0x80 and CLASS_IDS["N"] == 7


def test_hand_computed_track_priorities_softmask_and_n(tmp_path):
    body = (row("r", "gene", 6, 25, "+", "ID=g1") + row("r", "mRNA", 6, 25, "+", "ID=t1;Parent=g1")
            + row("r", "exon", 6, 10, "+", "Parent=t1") + row("r", "exon", 16, 25, "+", "Parent=t1")
            + row("r", "CDS", 8, 10, "+", "Parent=t1") + row("r", "CDS", 16, 20, "+", "Parent=t1")
            + row("r", "gene", 30, 34, "-", "ID=g2") + row("r", "tRNA", 30, 34, "-", "ID=r2;Parent=g2")
            + row("r", "repeat_region", 1, 4, "+"))
    seq = b"A" * 27 + b"N" + b"C" * 8 + b"gant"
    track = region_track(annotation(tmp_path, body), "r", 40, seq, promoter_window=3)
    #                      1    6  8   11    16    21    26 28  30    35  38
    expected = classes("66555 22 111 44444 11111 22222 00 7 0 33333 555 6 7 6")
    expected[36:] |= SOFTMASK_BIT
    np.testing.assert_array_equal(track, expected)
    assert class_counts(track) == {"intergenic": 3, "CDS": 8, "UTR": 7, "exon_other": 5, "intron": 5,
                                   "promoter": 6, "repeat": 4, "N": 2}
    no_seq = region_track(annotation(tmp_path, body), "r", 40, promoter_window=3)
    np.testing.assert_array_equal(no_seq, classes("66555 22 111 44444 11111 22222 00 0 0 33333 555 0 0 0"))
    assert not region_track(annotation(tmp_path, body), "other", 5).any()
    unannotated = region_track(None, "r", 40, seq)
    np.testing.assert_array_equal(unannotated & 0x7F, classes("0" * 27 + "7" + "0" * 8 + "6676"))
    np.testing.assert_array_equal(unannotated, (unannotated & 0x7F) | expected & SOFTMASK_BIT)


def test_ncbi_gene_level_cds_bare_genes_and_utr_features(tmp_path):
    body = (
        # a gene with CDS children and no transcript is its own transcript
        row("r", "gene", 3, 20, "+", "ID=gA") + row("r", "CDS", 3, 8, "+", "Parent=gA")
        + row("r", "CDS", 13, 20, "+", "Parent=gA")
        # CDS on a gene that also has an mRNA (ribosomal slippage): the mRNA is coding
        + row("r", "gene", 31, 50, "+", "ID=gB") + row("r", "mRNA", 31, 50, "+", "ID=tB;Parent=gB")
        + row("r", "exon", 31, 50, "+", "Parent=tB") + row("r", "CDS", 33, 40, "+", "ID=cB;Parent=gB")
        + row("r", "CDS", 42, 48, "+", "ID=cB;Parent=gB")
        # a gene without children
        + row("r", "gene", 55, 58, "-", "ID=gC")
        # UTR features and CDS without exon features
        + row("r", "mRNA", 62, 70, "+", "ID=tD") + row("r", "five_prime_UTR", 62, 64, "+", "Parent=tD")
        + row("r", "CDS", 65, 70, "+", "Parent=tD")
    )
    track = region_track(annotation(tmp_path, body), "r", 75, promoter_window=3)
    expected = classes("55 111111 4444 11111111 0000000 555 22 11111111 2 1111111 22 0000 3333 555 222 111111 00000")
    np.testing.assert_array_equal(track, expected)


def test_trans_splicing_and_circular_wrap(tmp_path):
    body = (
        row("c", "region", 1, 100, "+", "ID=c;Is_circular=true")
        + row("c", "mRNA", 5, 85, ".", "ID=T;exception=trans-splicing")
        + row("c", "exon", 5, 10, "-", "Parent=T") + row("c", "CDS", 5, 10, "-", "Parent=T")
        + row("c", "exon", 60, 70, "+", "Parent=T") + row("c", "CDS", 60, 70, "+", "Parent=T")
        + row("c", "exon", 80, 85, "+", "Parent=T") + row("c", "CDS", 80, 85, "+", "Parent=T")
        + row("c", "ncRNA", 5, 45, "-", "ID=U;exception=trans-splicing")
        + row("c", "exon", 5, 10, "-", "Parent=U") + row("c", "exon", 40, 45, "-", "Parent=U")
        + row("c", "exon", 30, 32, "-", "Parent=U")
        + row("c", "repeat_region", 97, 103, "+") + row("c", "gene", 2, 3, "+", "ID=V")
    )
    track = region_track(annotation(tmp_path, body), "c", 100, promoter_window=3)
    expected = np.zeros(100, dtype=np.uint8)
    expected[[0, 98, 99]] = CLASS_IDS["promoter"]  # upstream of V, wrapped over the origin
    expected[96:98] = CLASS_IDS["repeat"]  # 97..103 wraps to 97..100 and 1..3
    expected[1:3] = CLASS_IDS["exon_other"]  # V, a gene without children
    expected[4:10] = expected[59:70] = expected[79:85] = CLASS_IDS["CDS"]
    expected[70:79] = CLASS_IDS["intron"]  # only between the collinear + exons of T
    expected[29:32] = expected[39:45] = CLASS_IDS["exon_other"]
    expected[32:39] = CLASS_IDS["intron"]  # U: exon 40..45 -> 30..32, not 5..10 -> 40..45
    expected[45:48] = CLASS_IDS["promoter"]  # U on the minus strand; T has no strand: no promoter
    np.testing.assert_array_equal(track, expected)

    linear = body.replace("Is_circular=true", "Is_circular=false")
    track = region_track(annotation(tmp_path, linear), "c", 100, promoter_window=3)
    expected[98:100] = CLASS_IDS["repeat"]  # clipped at the end instead of wrapped
    np.testing.assert_array_equal(track, expected)


LEAF_CLASSES = {"CDS": "CDS", "five_prime_UTR": "UTR", "exon": "exon_other", "intron": "intron",
                "promoter": "promoter", "transposable_element": "repeat"}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), length=st.integers(1, 60), circular=st.booleans())
def test_random_features_match_per_base_reference(tmp_path, data, length, circular):
    types = list(LEAF_CLASSES)
    feats = data.draw(st.lists(st.tuples(st.sampled_from(types), st.integers(1, length),
                                         st.integers(0, length)), max_size=12))
    body = row("r", "region", 1, length, "+", f"Is_circular={'true' if circular else 'false'}")
    intervals = []
    for type_, start, extra in feats:
        end = start + extra
        body += row("r", type_, start, end)
        intervals.append((LEAF_CLASSES[type_], start - 1, end))
    seq = data.draw(st.binary(min_size=length, max_size=length).map(
        lambda b: bytes(b"ACGTNacgtnRy"[x % 12] for x in b)))
    track = region_track(annotation(tmp_path, body), "r", length, seq)

    priority = ["CDS", "UTR", "exon_other", "intron", "promoter", "repeat"]
    for p in range(length):
        covering = {name for name, s, e in intervals
                    if s <= p < e or (circular and s <= p + length < e)}
        lower = seq[p:p + 1].islower()
        if lower:
            covering.add("repeat")
        if seq[p:p + 1] not in (b"A", b"C", b"G", b"T", b"a", b"c", b"g", b"t"):
            want = CLASS_IDS["N"]
        else:
            want = next((CLASS_IDS[c] for c in priority if c in covering), 0)
        assert track[p] == want | (SOFTMASK_BIT if lower else 0), (p, covering)


def test_argument_checks(tmp_path):
    ann = annotation(tmp_path, "")
    with pytest.raises(ValueError, match="seq has 3 bases but length is 4"):
        region_track(ann, "r", 4, b"ACG")
    with pytest.raises(ValueError, match="promoter_window"):
        region_track(ann, "r", 4, promoter_window=-1)


# ---------------------------------------------------------------- real genomes, per-base reference

PARTS = {"exon", "CDS", "five_prime_UTR", "three_prime_UTR"}
REPEATS = {"long_terminal_repeat", "mobile_genetic_element", "repeat_region", "transposable_element"}


def reference_track(lines: list[list[str]], seqid: str, seq: bytes, circular: bool, window: int = 1000) -> list[int]:
    """The documented class rules, base by base with Python sets, from the raw GFF3 columns."""
    n = len(seq)
    feats = []
    for cols in lines:
        attrs = dict(kv.split("=", 1) for kv in cols[8].split(";") if "=" in kv)
        feats.append({"seqid": cols[0], "type": cols[2], "s": int(cols[3]) - 1, "e": int(cols[4]),
                      "strand": cols[6], "id": attrs.get("ID"), "exc": attrs.get("exception", ""),
                      "parents": attrs["Parent"].split(",") if "Parent" in attrs else []})
    by_id: dict[str, list[dict]] = defaultdict(list)
    kids: dict[str, list[dict]] = defaultdict(list)
    for f in feats:
        if f["id"]:
            by_id[f["id"]].append(f)
        for p in f["parents"]:
            kids[p].append(f)

    def is_tx(t: str) -> bool:
        return t.endswith("RNA") or t.endswith("transcript")

    def bases(s: int, e: int) -> set[int]:
        return {p % n for p in range(s, e)} if circular else set(range(max(s, 0), min(e, n)))

    sets: dict[str, set[int]] = {name: set() for name in REGION_CLASSES}
    on = [f for f in feats if f["seqid"] == seqid]
    gene_with_tx = {i for i, fs in by_id.items()
                    if fs[0]["type"] in ("gene", "pseudogene") and any(is_tx(k["type"]) for k in kids[i])}
    tx_ids = []
    for f in on:
        if f["id"] and f["id"] not in gene_with_tx and f["id"] not in tx_ids and (
                is_tx(f["type"]) or any(k["type"] in PARTS for k in kids[f["id"]])
                or (f["type"] in ("gene", "pseudogene") and not kids[f["id"]])):
            tx_ids.append(f["id"])
    for f in on:
        if f["type"] == "CDS":
            sets["CDS"] |= bases(f["s"], f["e"])
        elif f["type"] in ("five_prime_UTR", "three_prime_UTR"):
            sets["UTR"] |= bases(f["s"], f["e"])
        elif f["type"] in REPEATS:
            sets["repeat"] |= bases(f["s"], f["e"])
        elif f["type"] == "exon" and any(p in gene_with_tx for p in f["parents"]):
            coding = any(k["type"] == "CDS" for p in f["parents"] for k in kids[p])
            sets["UTR" if coding else "exon_other"] |= bases(f["s"], f["e"])
    for t in tx_ids:
        own = [f for f in by_id[t] if f["seqid"] == seqid]
        children = [k for k in kids[t] if k["seqid"] == seqid]
        exons = ([k for k in children if k["type"] == "exon"]
                 or [k for k in children if k["type"] in PARTS] or own)
        genes = [g for f in own for p in f["parents"] for g in by_id[p]]
        coding = any(k["type"] == "CDS" for k in children) or any(
            k["type"] == "CDS" for g in genes for k in kids[g["id"]])
        for x in exons:
            sets["UTR" if coding else "exon_other"] |= bases(x["s"], x["e"])
        strands = {f["strand"] for f in own} - {".", "?"}
        strand = strands.pop() if len(strands) == 1 else "."
        trans = any("trans-splicing" in f["exc"] for f in own + genes) or len({x["strand"] for x in exons}) > 1
        ordered = exons if trans else sorted(exons, key=lambda x: x["s"], reverse=strand == "-")
        for a, b in zip(ordered, ordered[1:]):
            st_ = a["strand"] if a["strand"] in "+-" else strand
            if st_ != (b["strand"] if b["strand"] in "+-" else strand):
                continue
            if st_ == "+" and b["s"] >= a["e"]:
                sets["intron"] |= bases(a["e"], b["s"])
            elif st_ == "-" and b["e"] <= a["s"]:
                sets["intron"] |= bases(b["e"], a["s"])
        start, end = min(f["s"] for f in own), max(f["e"] for f in own)
        if strand == "+":
            sets["promoter"] |= bases(start - window, start)
        elif strand == "-":
            sets["promoter"] |= bases(end, end + window)
    sets["repeat"] |= {i for i, c in enumerate(seq) if chr(c).islower()}
    sets["N"] = {i for i, c in enumerate(seq) if chr(c) not in "ACGTacgt"}
    track = [0] * n
    for name in ("repeat", "promoter", "intron", "exon_other", "UTR", "CDS", "N"):
        for p in sets[name]:
            track[p] = CLASS_IDS[name]
    return track


def gff_lines(path: Path) -> list[list[str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return [line.rstrip("\n").split("\t") for line in f if line.strip() and not line.startswith("#")]


@pytest.fixture(scope="module")
def chloroplast():
    fasta = shared_file("athal_chloroplast", "NC_000932.1.fa")
    gff = shared_file("athal_chloroplast", "NC_000932.1.gff3")
    (record,) = list(iter_records(fasta))
    return record, read_gff3(gff, {record.name: len(record)}), gff_lines(gff)


@pytest.fixture(scope="module")
def yeast():
    fasta = shared_file("yeast_r64", "GCA_000146045.2_R64_genomic.fna.gz")
    gff = shared_file("yeast_r64", "GCA_000146045.2_R64_genomic.gff.gz")
    records = list(iter_records(fasta))
    ann = read_gff3(gff, {r.name: len(r) for r in records})
    tracks = {r.name: region_track(ann, r.name, len(r), r.seq) for r in records}
    return records, ann, tracks, gff_lines(gff)


def test_chloroplast_matches_reference(chloroplast):
    record, ann, lines = chloroplast
    track = region_track(ann, record.name, len(record), record.seq)
    assert ann.is_circular(record.name)
    reference = reference_track(lines, record.name, record.seq, circular=True)
    np.testing.assert_array_equal(track & 0x7F, np.array(reference, dtype=np.uint8))
    counts = class_counts(track)
    assert sum(counts.values()) == len(record) == 154_478
    assert min(counts["CDS"], counts["exon_other"], counts["intron"], counts["promoter"]) > 0
    # rps12 is trans-spliced: the 28 kb between its first and second exon is not an intron (an
    # intron there would outrank every promoter and intergenic base in it)
    gap = track[69_724:97_998] & 0x7F
    assert np.isin(gap, [CLASS_IDS["intergenic"], CLASS_IDS["promoter"]]).sum() > 1000
    assert (track[98_024:98_561] == CLASS_IDS["intron"]).all()  # its cis-spliced intron


@pytest.mark.parametrize("seqid", ["BK006937.2", "BK006942.2"])  # chr III, chr IX: tRNA introns, Ty genes
def test_yeast_records_match_reference(yeast, seqid):
    records, ann, tracks, lines = yeast
    record = next(r for r in records if r.name == seqid)
    reference = reference_track(lines, seqid, record.seq, circular=False)
    np.testing.assert_array_equal(tracks[seqid] & 0x7F, np.array(reference, dtype=np.uint8))


def merged_size(intervals: list[tuple[int, int]]) -> int:
    total, reach = 0, -1
    for s, e in sorted(intervals):
        if e > reach:
            total += e - max(s, reach)
            reach = e
    return total


def test_yeast_whole_genome_counts(yeast):
    records, ann, tracks, lines = yeast
    totals = dict.fromkeys(REGION_CLASSES, 0)
    for r in records:
        track = tracks[r.name]
        counts = class_counts(track)
        assert sum(counts.values()) == len(r)
        cds = [(int(c[3]) - 1, int(c[4])) for c in lines if c[0] == r.name and c[2] == "CDS"]
        assert counts["CDS"] == merged_size(cds)  # CDS wins everywhere and yeast has no N
        lowercase = sum(r.seq.count(c) for c in b"acgtnryswkmbdhv")
        assert int(np.count_nonzero(track & SOFTMASK_BIT)) == lowercase
        for k, v in counts.items():
            totals[k] += v
    assert sum(totals.values()) == 12_071_326
    assert totals["N"] == 0 and min(totals[c] for c in REGION_CLASSES[:7]) > 0


def test_links_across_seqids(tmp_path):
    """A transcript on another seqid than its gene, an ID on two seqids (each seqid uses its own lines)."""
    body = (row("s1", "gene", 3, 10, "+", "ID=g1")  # its mRNA is on s2: not a childless gene on s1
            + row("s2", "mRNA", 5, 20, "+", "ID=t1;Parent=g1")
            + row("s2", "exon", 5, 8, "+", "Parent=t1") + row("s2", "exon", 15, 20, "+", "Parent=t1")
            + row("s2", "CDS", 6, 8, "+", "Parent=t1")
            + row("s1", "ncRNA", 20, 25, "-", "ID=r1") + row("s2", "ncRNA", 25, 28, "-", "ID=r1"))
    path = tmp_path / "a.gff3"
    path.write_text("##gff-version 3\n" + body)
    s1, s2 = np.zeros(30, np.uint8), np.zeros(30, np.uint8)
    s1[19:25] = CLASS_IDS["exon_other"]
    s1[25:27] = CLASS_IDS["promoter"]
    s2[2:4] = CLASS_IDS["promoter"]
    s2[4:8] = s2[14:20] = CLASS_IDS["UTR"]
    s2[5:8] = CLASS_IDS["CDS"]
    s2[8:14] = CLASS_IDS["intron"]
    s2[24:28] = CLASS_IDS["exon_other"]
    s2[28:30] = CLASS_IDS["promoter"]
    with index_gff3(path, {"s1": 30, "s2": 30}) as index:
        for ann in (read_gff3(path), index):
            np.testing.assert_array_equal(region_track(ann, "s1", 30, promoter_window=2), s1)
            np.testing.assert_array_equal(region_track(ann, "s2", 30, promoter_window=2), s2)


def test_index_tracks_equal_annotation_tracks(yeast):
    records, ann, tracks, lines = yeast
    gff = shared_file("yeast_r64", "GCA_000146045.2_R64_genomic.gff.gz")
    with index_gff3(gff, {r.name: len(r) for r in records}) as index:
        for r in records:
            np.testing.assert_array_equal(region_track(index, r.name, len(r), r.seq), tracks[r.name])
