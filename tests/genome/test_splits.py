from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnalm.errors import ConfigError, InputError
from dnalm.genome import splits as sp
from dnalm.genome.splits import (
    KmerSets,
    Split,
    SplitSpec,
    containment,
    detect_groups,
    groups_from_pattern,
    kmer_sketch,
    leakage,
    make_split,
    naive_split,
    parse_region,
    read_groups_tsv,
)

COMP = bytes.maketrans(b"ACGTacgtN", b"TGCAtgcaN")


def py_canonical_kmers(seq: bytes, k: int, mask: np.ndarray | None = None) -> set[bytes]:
    """Independent reference: distinct canonical k-mers as strings, skipping N and masked bases."""
    up = seq.upper()
    out = set()
    for i in range(len(up) - k + 1):
        kmer = up[i : i + k]
        if any(c not in b"ACGT" for c in kmer):
            continue
        if mask is not None and mask[i : i + k].any():
            continue
        rc = kmer.translate(COMP)[::-1]
        out.add(min(kmer, rc))
    return out


def arr(seq: bytes) -> np.ndarray:
    return np.frombuffer(seq, dtype=np.uint8)


def random_seq(rng: np.random.Generator, n: int) -> bytes:
    return bytes(rng.choice(np.frombuffer(b"ACGT", np.uint8), n))


def mutate(rng: np.random.Generator, seq: bytes, rate: float) -> bytes:
    a = np.frombuffer(seq, np.uint8).copy()
    pos = np.flatnonzero(rng.random(len(a)) < rate)
    a[pos] = rng.choice(np.frombuffer(b"ACGT", np.uint8), len(pos))
    return a.tobytes()


@pytest.fixture(scope="module")
def polyploid() -> dict[str, bytes]:
    """3 chromosomes x 4 homologous copies (1% substitutions each), 20 kb per record."""
    rng = np.random.default_rng(7)
    seqs = {}
    for c in range(1, 4):
        base = random_seq(rng, 20_000)
        for h in "ABCD":
            seqs[f"Chr{c}{h}"] = mutate(rng, base, 0.01)
    return seqs


def as_arrays(seqs: dict[str, bytes]) -> dict[str, np.ndarray]:
    return {k: arr(v) for k, v in seqs.items()}


# --------------------------------------------------------------------------- k-mer hashing

@pytest.mark.parametrize("k", [1, 5, 11, 31, 40])
def test_sketch_counts_match_reference_kmers(k):
    rng = np.random.default_rng(k)
    seq = bytearray(random_seq(rng, 600) + random_seq(rng, 50) * 3)  # repeats: duplicates must collapse
    seq[100:104] = b"NNNN"
    seq[300] = ord("R")
    mask = np.zeros(len(seq), bool)
    mask[400:420] = True
    ref = py_canonical_kmers(bytes(seq), k, mask)
    got = kmer_sketch(arr(bytes(seq)), k, mask=mask)
    assert len(got) == len(ref)
    assert np.all(got[1:] > got[:-1])


def test_sketch_is_strand_symmetric_and_encoding_independent():
    rng = np.random.default_rng(1)
    seq = random_seq(rng, 3000)
    rc = seq.translate(COMP)[::-1]
    s = kmer_sketch(arr(seq), 21)
    np.testing.assert_array_equal(s, kmer_sketch(arr(rc), 21))
    np.testing.assert_array_equal(s, kmer_sketch(arr(seq.lower()), 21))
    ids = np.frombuffer(seq.translate(bytes.maketrans(b"ACGT", bytes([7, 8, 9, 10]))), np.uint8)
    np.testing.assert_array_equal(s, kmer_sketch(ids, 21))


def test_containment_matches_reference_sets():
    rng = np.random.default_rng(2)
    a = random_seq(rng, 2000)
    b = a[500:1500] + random_seq(rng, 1000)
    ra, rb = py_canonical_kmers(a, 15), py_canonical_kmers(b, 15)
    expected = len(rb & ra) / len(rb)
    assert containment(kmer_sketch(arr(b), 15), kmer_sketch(arr(a), 15)) == pytest.approx(expected)
    u = np.uint64
    assert containment(np.array([1, 5, 9], u), np.array([2, 5, 9, 11], u)) == pytest.approx(2 / 3)
    assert np.isnan(containment(np.empty(0, np.uint64), np.array([1], np.uint64)))


def test_chunked_hashing_equals_unchunked(monkeypatch):
    rng = np.random.default_rng(3)
    seq = arr(random_seq(rng, 5000))
    whole = kmer_sketch(seq, 31)
    monkeypatch.setattr(sp, "_CHUNK", 97)
    monkeypatch.setattr(sp, "_POWERS", [])
    np.testing.assert_array_equal(kmer_sketch(seq, 31), whole)


def test_fracminhash_keeps_a_consistent_fraction():
    rng = np.random.default_rng(4)
    seq = arr(random_seq(rng, 200_000))
    full = kmer_sketch(seq, 21)
    sub = kmer_sketch(seq, 21, scale=10)
    assert np.all(np.isin(sub, full))
    assert 0.08 < len(sub) / len(full) < 0.12
    np.testing.assert_array_equal(sub, full[full < np.uint64((1 << 64) // 10)])


# --------------------------------------------------------------------------- strategies

YEAST = {f"BK0069{n}.2": 1000 + n for n in range(34, 50)}
YEAST["BK006947.3"] = YEAST.pop("BK006947.2")


def test_records_strategy_yeast_lists():
    spec = SplitSpec(strategy="records", val=["BK006947.3"], test=["BK006948.2", "BK006949.2"])
    split, _ = make_split(spec, YEAST)
    js = split.to_json()
    assert js["strategy"] == "records"
    assert js["splits"]["val"] == [["BK006947.3", 0, YEAST["BK006947.3"]]]
    assert js["splits"]["test"] == [["BK006948.2", 0, 1048], ["BK006949.2", 0, 1049]]
    assert [r for r, _, _ in js["splits"]["train"]] == [n for n in YEAST if n not in
                                                        ("BK006947.3", "BK006948.2", "BK006949.2")]
    assert "groups" not in js
    assert Split.from_json(js) == split


def test_records_strategy_errors():
    with pytest.raises(ConfigError, match="split.test: record 'chrZ' is not in the genome"):
        make_split(SplitSpec(test=["chrZ"]), YEAST)
    with pytest.raises(ConfigError, match="in both val and test"):
        make_split(SplitSpec(val=["BK006934.2"], test=["BK006934.2"]), YEAST)
    with pytest.raises(ConfigError, match="nothing is left to train on"):
        make_split(SplitSpec(val=list(YEAST)[:8], test=list(YEAST)[8:]), YEAST)
    with pytest.raises(ConfigError, match="split.strategy"):
        make_split(SplitSpec(strategy="chromosomes"), YEAST)


def test_fraction_strategy_is_seeded_and_counts_records():
    spec = SplitSpec(strategy="fraction", val_fraction=0.1, test_fraction=0.2, seed=5)
    a, _ = make_split(spec, YEAST)
    b, _ = make_split(spec, YEAST)
    c, _ = make_split(SplitSpec(strategy="fraction", val_fraction=0.1, test_fraction=0.2, seed=6), YEAST)
    assert a == b and a != c
    assert len(a.records("val")) == round(0.1 * 16) and len(a.records("test")) == round(0.2 * 16)
    everything = a.records("train") + a.records("val") + a.records("test")
    assert sorted(everything) == sorted(YEAST)
    tiny, _ = make_split(SplitSpec(strategy="fraction", val_fraction=0.01, test_fraction=0.01), YEAST)
    assert len(tiny.records("val")) == 1 and len(tiny.records("test")) == 1
    with pytest.raises(ConfigError, match="leave no records to train on"):
        make_split(SplitSpec(strategy="fraction", val_fraction=0.5, test_fraction=0.5), {"a": 5, "b": 5})


def test_interval_strategy_with_gap():
    lengths = {"chr1": 1000, "chr2": 500}
    spec = SplitSpec(strategy="intervals", val=["chr1:101-200"], test=["chr1:901-1,000", "chr2"], gap=10)
    split, _ = make_split(spec, lengths)
    assert split.intervals["val"] == [("chr1", 100, 200)]
    assert split.intervals["test"] == [("chr1", 900, 1000), ("chr2", 0, 500)]
    assert split.intervals["train"] == [("chr1", 0, 90), ("chr1", 210, 890)]
    assert parse_region("chr2:1-500", lengths, "x") == ("chr2", 0, 500)
    with pytest.raises(ConfigError, match="outside 1..1000"):
        parse_region("chr1:0-10", lengths, "split.val")
    with pytest.raises(ConfigError, match="overlap"):
        make_split(SplitSpec(strategy="intervals", val=["chr1:1-100"], test=["chr1:50-60"]), lengths)
    with pytest.raises(ConfigError, match="record 'chr3'"):
        make_split(SplitSpec(strategy="intervals", val=["chr3:1-100"]), lengths)


def test_groups_from_pattern():
    names = [f"Chr{c}{h}" for c in (1, 10) for h in "ABCDEFGH"] + ["BK006947.3", "R570:Chr2B", "XTT22:Chr2A"]
    groups = groups_from_pattern(names)
    assert groups["Chr1"] == [f"Chr1{h}" for h in "ABCDEFGH"]
    assert groups["Chr10"] == [f"Chr10{h}" for h in "ABCDEFGH"]
    assert groups["Chr2"] == ["R570:Chr2B", "XTT22:Chr2A"]
    assert groups["BK006947.3"] == ["BK006947.3"]
    per_genome = groups_from_pattern(["R570:Chr2B", "XTT22:Chr2A", "R570:Chr2A"], r"^(.*\d)[A-Z]$")
    assert per_genome == {"R570:Chr2": ["R570:Chr2B", "R570:Chr2A"], "XTT22:Chr2": ["XTT22:Chr2A"]}


def test_read_groups_tsv(tmp_path):
    names = ["g1:a", "g2:a", "g1:b", "c"]
    tsv = tmp_path / "groups.tsv"
    tsv.write_text("record\tgroup\n# comment\na\tA\nc\tA\n\n")
    assert read_groups_tsv(tsv, names) == {"A": ["g1:a", "g2:a", "c"], "g1:b": ["g1:b"]}
    tsv.write_text("a\tA\nb A\n")
    with pytest.raises(InputError, match=r"groups.tsv:2: expected 'record<TAB>group'"):
        read_groups_tsv(tsv, names)
    tsv.write_text("zz\tA\n")
    with pytest.raises(InputError, match=r"groups.tsv:1: record 'zz' is not in the genome"):
        read_groups_tsv(tsv, names)
    tsv.write_text("c\tA\nc\tB\n")
    with pytest.raises(InputError, match=r"groups.tsv:2: record 'c' is already in group 'A'"):
        read_groups_tsv(tsv, names)


def test_detect_groups_finds_homologs(polyploid):
    seqs = as_arrays(polyploid)
    det = detect_groups(seqs, list(seqs), k=21, threshold=0.3)
    assert det.groups == {f"Chr{c}": [f"Chr{c}{h}" for h in "ABCD"] for c in range(1, 4)}
    top = {(a, b): j for a, b, j in det.pairs}
    # 1% substitutions on both copies: about (1 - 0.02)**21 = 0.65 of 21-mers shared, Jaccard ~0.49
    assert 0.35 < top[("Chr1A", "Chr1B")] < 0.6
    assert all(j < 0.01 for a, b, j in det.pairs if a[:4] != b[:4])


def test_detect_groups_ignores_masked_shared_repeats():
    rng = np.random.default_rng(11)
    repeat = random_seq(rng, 5000)
    seqs = {"x": random_seq(rng, 5000) + repeat.lower(), "y": repeat.lower() + random_seq(rng, 5000)}
    arrays = as_arrays(seqs)
    masks = {n: np.frombuffer(s, np.uint8) >= ord("a") for n, s in seqs.items()}
    assert len(detect_groups(arrays, ["x", "y"], threshold=0.2).groups) == 1
    assert len(detect_groups(arrays, ["x", "y"], threshold=0.2, masks=masks).groups) == 2


@pytest.mark.parametrize("group_by", ["pattern", "auto", "tsv"])
def test_homology_split_keeps_groups_together_and_does_not_leak(polyploid, group_by, tmp_path):
    seqs = as_arrays(polyploid)
    lengths = {n: len(s) for n, s in seqs.items()}
    tsv = tmp_path / "g.tsv"
    tsv.write_text("".join(f"{n}\tgroup{n[3]}\n" for n in lengths))
    spec = SplitSpec(strategy="homology", group_by=group_by, groups_tsv=str(tsv), val_fraction=0.2,
                     test_fraction=0.2, seed=1)
    split, det = make_split(spec, lengths, seqs)
    assert (det is not None) == (group_by == "auto")
    assert len(split.groups) == 3
    where = {r: n for n in sp.SPLIT_NAMES for r in split.records(n)}
    for recs in split.groups.values():
        assert len({where[r] for r in recs}) == 1
    assert len(split.records("val")) == 4 and len(split.records("test")) == 4
    kmers = KmerSets(seqs, 31)
    chosen = leakage(split, kmers)
    naive = leakage(naive_split(split, lengths, seed=0), kmers)
    assert chosen["test"] < 0.05 and chosen["val"] < 0.05
    assert naive["test"] > 0.5
    assert split.to_json()["groups"] == split.groups


def test_homology_split_by_names(polyploid):
    lengths = {n: len(s) for n, s in polyploid.items()}
    spec = SplitSpec(strategy="homology", val=["Chr2"], test=["Chr3B"])
    split, _ = make_split(spec, lengths)
    assert split.records("val") == ["Chr2A", "Chr2B", "Chr2C", "Chr2D"]
    assert split.records("test") == ["Chr3A", "Chr3B", "Chr3C", "Chr3D"]
    assert split.records("train") == ["Chr1A", "Chr1B", "Chr1C", "Chr1D"]
    with pytest.raises(ConfigError, match="in both val and test"):
        make_split(SplitSpec(strategy="homology", val=["Chr2A"], test=["Chr2C"]), lengths)
    with pytest.raises(ConfigError, match="'Chr9' is neither a group nor a record"):
        make_split(SplitSpec(strategy="homology", test=["Chr9"]), lengths)


def test_naive_split_copies_counts():
    split, _ = make_split(SplitSpec(val=["BK006947.3"], test=["BK006948.2", "BK006949.2"]), YEAST)
    naive = naive_split(split, YEAST, seed=3)
    assert len(naive.records("val")) == 1 and len(naive.records("test")) == 2
    assert naive.strategy == "naive"
    held = naive.records("val") + naive.records("test")
    assert len(set(held)) == 3 and not set(held) & set(naive.records("train"))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_interval_split_partitions_the_genome(data):
    """Every base is in exactly one split, except the ``gap`` bases beside held-out regions."""
    lengths = {f"r{i}": n for i, n in enumerate(data.draw(st.lists(st.integers(1, 300), min_size=1, max_size=4)))}
    gap = data.draw(st.integers(0, 20))
    held: dict[str, list[str]] = {"val": [], "test": []}
    paint = {r: np.zeros(n, np.int8) for r, n in lengths.items()}  # 0 train, 1 val, 2 test, -1 gap
    for rec, n in lengths.items():
        cuts = sorted(data.draw(st.sets(st.integers(1, n), max_size=6)))
        for a, b in zip(cuts[::2], cuts[1::2]):  # 1-based inclusive regions a..b, disjoint
            which = data.draw(st.sampled_from(["val", "test"]))
            held[which].append(f"{rec}:{a}-{b}")
    for region in held["val"] + held["test"]:
        rec, _, span = region.rpartition(":")
        a, b = map(int, span.split("-"))
        lo, hi = max(0, a - 1 - gap), min(lengths[rec], b + gap)
        paint[rec][lo:hi][paint[rec][lo:hi] == 0] = -1
    for which, code in (("val", 1), ("test", 2)):
        for region in held[which]:
            rec, _, span = region.rpartition(":")
            a, b = map(int, span.split("-"))
            paint[rec][a - 1 : b] = code
    spec = SplitSpec(strategy="intervals", val=held["val"], test=held["test"], gap=gap)
    if all((p != 0).all() for p in paint.values()):
        with pytest.raises(ConfigError, match="cover the whole genome"):
            make_split(spec, lengths)
        return
    split, _ = make_split(spec, lengths)
    got = {r: np.full(n, -1, np.int8) for r, n in lengths.items()}
    for code, which in enumerate(sp.SPLIT_NAMES):
        for rec, start, end in split.intervals[which]:
            assert start < end and (got[rec][start:end] == -1).all()  # no base in two intervals
            got[rec][start:end] = code
    for rec in lengths:
        np.testing.assert_array_equal(got[rec], paint[rec])
