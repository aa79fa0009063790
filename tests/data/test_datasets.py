"""PreparedGenome, WindowDataset and LabeledSequenceDataset against hand-built prepared directories
and independent string-level computations."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from _prepared_helpers import encode, random_sequence, write_prepared

from conftest import shared_file
from dnalm.data.datasets import (
    IGNORE_REGION,
    LabeledCollator,
    LabeledSequenceDataset,
    WindowDataset,
    hash_uniform,
    iter_split_files,
    reverse_complement,
)
from dnalm.data.prepared import PreparedGenome, region_class, softmasked
from dnalm.errors import ConfigError, InputError
from dnalm.tokenizers import CharTokenizer

COMP = {"A": "T", "C": "G", "G": "C", "T": "A", "N": "N"}


def rc_string(seq: str) -> str:
    return "".join(COMP[c] for c in reversed(seq.upper()))


@pytest.fixture()
def small(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    rng = np.random.default_rng(0)
    records = {"chr1": random_sequence(rng, 700, n_frac=0.02, soft_frac=0.3),
               "chr2": random_sequence(rng, 230, soft_frac=0.3), "chr3": "ACgtN"}
    regions = {name: rng.integers(0, 7, len(seq)) for name, seq in records.items()}
    splits = {"train": [("chr1", 0, 500), ("chr2", 30, 230)],
              "val": [("chr1", 500, 700), ("chr3", 0, 5)], "test": []}
    write_prepared(tmp_path / "p", records, splits, region_ids=regions)
    return tmp_path / "p", records


# ------------------------------------------------------------------------------ PreparedGenome


def test_prepared_records_intervals_and_windows(small):
    path, records = small
    pg = PreparedGenome(path)
    assert list(pg.records) == ["chr1", "chr2", "chr3"]
    assert [(r.offset, r.length) for r in pg.records.values()] == [(0, 700), (700, 230), (930, 5)]
    assert pg.intervals("train") == [("chr1", 0, 500), ("chr2", 730, 930)]
    assert pg.intervals("test") == [] and pg.split_length("val") == 205
    np.testing.assert_array_equal(pg.window("chr2", 10, 40), encode(records["chr2"][10:40]))
    assert pg.sequence("chr3") == "ACGTN"
    raw = pg.window_regions("chr3", 0, 5)
    np.testing.assert_array_equal(softmasked(raw), [False, False, True, True, False])
    assert region_class(raw)[-1] == 7
    with pytest.raises(InputError, match="outside record 'chr3'"):
        pg.window("chr3", 2, 6)
    with pytest.raises(InputError, match="no split 'dev'"):
        pg.intervals("dev")
    clone = pickle.loads(pickle.dumps(pg))
    np.testing.assert_array_equal(clone.tokens, pg.tokens)
    assert isinstance(clone.tokens, np.memmap) and not clone.tokens.flags.writeable


@pytest.mark.parametrize("name", ["tokens.u8", "regions.u8", "manifest.json", "splits.json"])
def test_prepared_missing_file_is_named(small, name):
    path, _ = small
    (path / name).unlink()
    with pytest.raises(InputError, match=name.replace(".", r"\.") + ": missing"):
        PreparedGenome(path)


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("edit, file, message", [
    (lambda m: m.update(format="dnalm-prepared/2"), "manifest.json", "format is 'dnalm-prepared/2'"),
    (lambda m: m.update(total_length=999), "manifest.json", "total_length is 999"),
    (lambda m: m["records"][1].update(offset=701), "manifest.json", "record 'chr2' has offset 701"),
    (lambda s: s["splits"]["val"].append(["chr3", 0, 6]), "splits.json", r"\[0, 6\) lies outside record 'chr3'"),
    (lambda s: s["splits"]["val"].append(["chrX", 0, 1]), "splits.json", "record 'chrX' absent"),
])
def test_prepared_inconsistent_files(small, edit, file, message):
    path, _ = small
    _edit_json(path / file, edit)
    with pytest.raises(InputError, match=message):
        PreparedGenome(path)


def test_prepared_tokens_of_wrong_size(small):
    path, _ = small
    with open(path / "tokens.u8", "ab") as f:
        f.write(b"\x07")
    with pytest.raises(InputError, match=r"tokens\.u8: has 936 bytes"):
        PreparedGenome(path)


# ------------------------------------------------------------------------------ random windows


def _containing(pg: PreparedGenome, split: str, start: int, span: int) -> bool:
    return any(s <= start and start + span <= e for _, s, e in pg.intervals(split))


def test_random_windows_lie_inside_split_and_match_the_genome(small):
    path, records = small
    pg = PreparedGenome(path)
    genome = "".join(records.values())
    ds = WindowDataset(pg, "train", 32, rc_aug=True, softmask_weight=0.1, n_weight=0.0, seed=3,
                       samples_per_epoch=300)
    assert len(ds) == 300
    batch = ds.get_batch(np.arange(300), epoch=1)
    starts, rc = ds.window_starts(np.arange(300), epoch=1)
    assert 100 < rc.sum() < 200
    raw = np.fromfile(path / "regions.u8", dtype=np.uint8)
    for i in range(300):
        s = int(starts[i])
        assert _containing(pg, "train", s, 33)
        text = genome[s:s + 33]
        cls, soft = raw[s:s + 33] & 0x7F, raw[s:s + 33] >= 128
        if rc[i]:
            text, cls, soft = rc_string(text), cls[::-1], soft[::-1]
        ids = encode(text)
        np.testing.assert_array_equal(batch["input_ids"][i].numpy(), ids[:-1])
        np.testing.assert_array_equal(batch["targets"][i].numpy(), ids[1:])
        np.testing.assert_array_equal(batch["regions"][i].numpy(), cls[1:])
        expected = np.where(np.array(list(text[1:].upper())) == "N", 0.0, np.where(soft[1:], 0.1, 1.0))
        np.testing.assert_allclose(batch["loss_weight"][i].numpy(), expected)
    assert batch["input_ids"].dtype == torch.int64 and batch["loss_weight"].dtype == torch.float32


def test_random_windows_are_a_function_of_seed_epoch_index(small):
    path, _ = small
    ds = WindowDataset(path, "train", 16, rc_aug=True, seed=5)
    a = ds.get_batch([3, 1, 4], epoch=2)
    b = ds.get_batch([3, 1, 4], epoch=2)
    c = ds.get_batch([3, 1, 4], epoch=3)
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert not torch.equal(a["input_ids"], c["input_ids"])
    ds.set_epoch(2)
    one = ds[1]
    assert torch.equal(one["input_ids"], a["input_ids"][1]) and torch.equal(one["targets"], a["targets"][1])
    items = ds.__getitems__([3, 1, 4])
    assert torch.equal(torch.stack([it["regions"] for it in items]), a["regions"])
    other_seed = WindowDataset(path, "train", 16, rc_aug=True, seed=6).get_batch([3, 1, 4], epoch=2)
    assert not torch.equal(a["input_ids"], other_seed["input_ids"])
    with pytest.raises(IndexError):
        ds.get_batch([len(ds)])


def test_random_window_positions_are_uniform_and_weighted_by_genome(tmp_path):
    rng = np.random.default_rng(1)
    records = {"a": random_sequence(rng, 120), "b": random_sequence(rng, 320)}
    write_prepared(tmp_path / "p", records, genome_of={"a": "g1", "b": "g2"}, weights={"g1": 3.0, "g2": 1.0})
    ds = WindowDataset(tmp_path / "p", "train", 19, samples_per_epoch=40000)  # span 20: 101 and 301 starts
    starts, _ = ds.window_starts(np.arange(40000))
    in_a = starts < 120
    # genome weight 3 on 101 starts vs weight 1 on 301 starts
    assert abs(in_a.mean() - 303 / 604) < 0.015
    counts = np.bincount(starts[~in_a] - 120, minlength=301)
    assert counts.size == 301 and counts.min() > 0
    expected = (~in_a).sum() / 301
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 301 + 5 * np.sqrt(2 * 301)
    assert abs(hash_uniform(0, 0, np.arange(100000)).mean() - 0.5) < 0.005


def test_rc_augmentation_by_hand(tmp_path):
    seq = "AACgtTTGNA"
    write_prepared(tmp_path / "p", {"r": seq}, region_ids={"r": np.arange(10) % 7})
    ds = WindowDataset(tmp_path / "p", "train", 9, rc_aug=True, rc_prob=1.0, max_n_frac=1.0,
                       softmask_weight=0.5, n_weight=0.25)
    item = ds[0]
    # reverse complement of AACGTTTGNA is TNCAAACGTT; soft-masked 'gt' (bases 3-4) becomes 'ac' at 5-6
    assert item["input_ids"].tolist() == [10, 11, 8, 7, 7, 7, 8, 9, 10]
    assert item["targets"].tolist() == [11, 8, 7, 7, 7, 8, 9, 10, 10]
    # classes of the original bases 0..9 are [0,1,2,3,4,5,6,0,7(N),2]; reversed -> [2,7,0,6,5,4,3,2,1,0]
    assert item["regions"].tolist() == [7, 0, 6, 5, 4, 3, 2, 1, 0]
    assert item["loss_weight"].tolist() == [0.25, 1, 1, 1, 0.5, 0.5, 1, 1, 1]


def test_windows_with_too_many_n_are_redrawn(tmp_path):
    seq = "N" * 60 + "ACGT" * 15
    write_prepared(tmp_path / "p", {"r": seq})
    ds = WindowDataset(tmp_path / "p", "train", 19, max_n_frac=0.25, samples_per_epoch=500)
    starts, _ = ds.window_starts(np.arange(500))
    n_in_window = np.array([seq[s:s + 20].count("N") for s in starts])
    assert n_in_window.max() <= 5 and (n_in_window > 0).any()
    write_prepared(tmp_path / "q", {"r": "N" * 50})
    with pytest.raises(ConfigError, match="raise max_n_frac"):
        WindowDataset(tmp_path / "q", "train", 9, max_n_frac=0.5).get_batch([0])


def test_add_eos_and_short_split_errors(small):
    path, records = small
    ds = WindowDataset(path, "train", 12, add_eos=True, n_weight=1.0, samples_per_epoch=50)
    batch = ds.get_batch(np.arange(50))
    starts, _ = ds.window_starts(np.arange(50))
    genome = "".join(records.values())
    for i in range(50):
        s = int(starts[i])
        assert _containing(ds.prepared, "train", s, 12)
        np.testing.assert_array_equal(batch["input_ids"][i].numpy(), encode(genome[s:s + 12]))
        np.testing.assert_array_equal(batch["targets"][i].numpy(), np.append(encode(genome[s + 1:s + 12]), 1))
    assert (batch["regions"][:, -1] == IGNORE_REGION).all() and (batch["loss_weight"][:, -1] == 1).all()
    with pytest.raises(ConfigError, match="no interval of 501 bases"):
        WindowDataset(path, "train", 500)
    with pytest.raises(ConfigError, match="window mode"):
        WindowDataset(path, "train", 8, mode="sliding")


# ------------------------------------------------------------------------------ strided windows


@pytest.mark.parametrize("length, stride, add_eos",
                         [(32, None, False), (32, 10, False), (50, None, True), (7, 3, True)])
def test_strided_windows_score_every_base_once(small, length, stride, add_eos):
    path, records = small
    genome = "".join(records.values())
    ds = WindowDataset(path, "val", length, mode="strided", stride=stride, add_eos=add_eos, max_n_frac=1.0,
                       n_weight=1.0)
    batch = ds.get_batch(np.arange(len(ds)))
    starts, _ = ds.window_starts(np.arange(len(ds)))
    scored = np.zeros(len(genome), dtype=np.int64)
    for i, s in enumerate(starts):
        targets = batch["targets"][i].numpy()
        w = batch["loss_weight"][i].numpy()
        for j in range(length):
            pos = s + 1 + j
            if targets[j] in (1, 4):  # EOS or PAD
                assert batch["regions"][i, j] == IGNORE_REGION
                assert w[j] == (1.0 if targets[j] == 1 else 0.0)
                continue
            assert targets[j] == encode(genome[pos])[0]
            scored[pos] += w[j] > 0
    expected = np.zeros(len(genome), dtype=np.int64)
    for _, s, e in ds.prepared.intervals("val"):
        expected[s + 1:e] = 1
    np.testing.assert_array_equal(scored, expected)
    short = int(np.flatnonzero(starts == 930)[0])  # chr3 (5 bases) is shorter than a window
    assert batch["input_ids"][short, :5].tolist() == [7, 8, 9, 10, 11]
    assert batch["input_ids"][short, 5 + int(add_eos):].eq(4).all()


# ------------------------------------------------------------------------------ labeled sequences


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_labeled_csv_fasta_and_folders(tmp_path):
    tok = CharTokenizer(add_eos=False)
    csv_file = _write(tmp_path / "train.csv", "sequence,label\nACGT,1\nGGA,0\nTTTTN,1\n")
    ds = LabeledSequenceDataset.from_path(csv_file, tok)
    assert len(ds) == 3 and ds.classes == ["0", "1"]
    assert ds[0]["input_ids"].tolist() == [7, 8, 9, 10] and ds[2]["labels"].item() == 1
    fasta = _write(tmp_path / "x.fa", ">s1|cold\nACG\nTT\n>s2 some words hot\nGG\n>s3|hot\nA\n")
    ds = LabeledSequenceDataset.from_path(fasta, tok)
    assert ds.classes == ["cold", "hot"] and ds.labels.tolist() == [0, 1, 1]
    assert ds[0]["input_ids"].tolist() == [7, 8, 9, 10, 10]
    _write(tmp_path / "folders" / "zeta" / "a.txt", "ACGT\n\nGG\n")
    _write(tmp_path / "folders" / "alpha" / "b.fa", ">x\nTTT\n")
    _write(tmp_path / "folders" / "alpha" / "a.txt", "C\n")
    ds = LabeledSequenceDataset.from_path(tmp_path / "folders", tok)
    assert ds.classes == ["alpha", "zeta"]
    assert ds.sequences == ["C", "TTT", "ACGT", "GG"] and ds.labels.tolist() == [0, 0, 1, 1]
    reg = LabeledSequenceDataset.from_path(_write(tmp_path / "r.tsv", "sequence\tlabel\nAC\t-1.5\nGT\t2e3\n"), tok,
                                           task="regression")
    assert reg.labels.dtype == np.float32 and reg.labels.tolist() == [-1.5, 2000.0]


@pytest.mark.parametrize("text, task, message", [
    ("seq,label\nACGT,1\n", "classification", r"x\.csv:1: missing column 'sequence'"),
    ("sequence,label\nACGT,1\n,0\n", "classification", r"x\.csv:3: empty sequence"),
    ("sequence,label\nACGT,1.5\nAC,high\n", "regression", r"x\.csv:3: label 'high' is not a number"),
])
def test_labeled_errors_name_file_and_line(tmp_path, text, task, message):
    with pytest.raises(InputError, match=message):
        LabeledSequenceDataset.from_path(_write(tmp_path / "x.csv", text), CharTokenizer(), task=task)


def test_labeled_csv_with_long_sequences_a_byte_order_mark_or_gzip(tmp_path):
    """Sequences longer than the csv module's default field limit (131,072 characters) and a spreadsheet's
    UTF-8 byte-order mark are read; corrupt gzip data is an InputError naming the file."""
    import gzip

    long = "ACGT" * 50_000
    path = tmp_path / "long.csv"
    path.write_bytes(b"\xef\xbb\xbfsequence,label\n" + long.encode() + b",1\nGG,0\n")
    ds = LabeledSequenceDataset.from_path(path, CharTokenizer(add_eos=False))
    assert ds.sequences == [long, "GG"] and ds.labels.tolist() == [1, 0]
    corrupt = gzip.compress(b"sequence,label\nAC,1\n", mtime=0)[:10] + b"\x07" + bytes(16)
    (tmp_path / "bad.csv.gz").write_bytes(corrupt)
    with pytest.raises(InputError, match=r"bad\.csv\.gz: cannot read as CSV \(corrupt compressed data"):
        LabeledSequenceDataset.from_path(tmp_path / "bad.csv.gz", CharTokenizer())


def test_class_folder_with_a_binary_file(tmp_path):
    _write(tmp_path / "folders" / "pos" / "a.txt", "ACGT\n")
    (tmp_path / "folders" / "neg").mkdir()
    (tmp_path / "folders" / "neg" / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    with pytest.raises(InputError, match=r"neg/img\.png: cannot read as sequences \('utf-8' codec"):
        LabeledSequenceDataset.from_path(tmp_path / "folders", CharTokenizer())


def test_labeled_fasta_without_label_and_unknown_dev_class(tmp_path):
    with pytest.raises(InputError, match="record 's2' has no label"):
        LabeledSequenceDataset.from_path(_write(tmp_path / "a.fa", ">s1|x\nAC\n>s2\nGG\n"), CharTokenizer())
    with pytest.raises(InputError, match=r"dev\.csv:2: label 'c' is not a known class"):
        LabeledSequenceDataset.from_path(_write(tmp_path / "dev.csv", "sequence,label\nAC,c\n"), CharTokenizer(),
                                         classes=["a", "b"])


def test_labeled_rc_augmentation_and_collate(tmp_path):
    assert reverse_complement("AACgN") == "NcGTT"
    tok = CharTokenizer(add_eos=False)
    ds = LabeledSequenceDataset(["AACG", "T"], np.array([1, 0]), tok, rc_aug=True, rc_prob=1.0)
    assert ds[0]["input_ids"].tolist() == [8, 9, 10, 10]
    half = LabeledSequenceDataset(["AACG"] * 400, np.zeros(400), tok, rc_aug=True, seed=1)
    flipped = sum(half.item(i, epoch=0)["input_ids"][0].item() == 8 for i in range(400))
    assert 150 < flipped < 250
    items = [{"input_ids": torch.tensor([7, 8, 9]), "labels": torch.tensor(1)},
             {"input_ids": torch.tensor([10]), "labels": torch.tensor(0)}]
    right = LabeledCollator(padding_side="right")(items)
    assert right["input_ids"].tolist() == [[7, 8, 9], [10, 4, 4]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert right["lengths"].tolist() == [3, 1] and right["labels"].tolist() == [1, 0]
    left = LabeledCollator(padding_side="left", pad_to_multiple_of=4)(items)
    assert left["input_ids"].tolist() == [[4, 7, 8, 9], [4, 4, 4, 10]]
    assert left["attention_mask"].tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]


def test_gue_promoter_dev_split():
    path = shared_file("gue", "prom", "prom_core_all", "dev.csv")
    tok = CharTokenizer()
    ds = LabeledSequenceDataset.from_path(path, tok)
    first = path.read_text().splitlines()[1].split(",")
    assert len(ds) == 5920 and ds.classes == ["0", "1"]
    assert ds.sequences[0] == first[0] and ds.labels[0] == int(first[1])
    assert ds[0]["input_ids"].tolist() == tok.encode(first[0]).tolist()
    assert set(np.unique(ds.labels).tolist()) == {0, 1}
    assert dict(iter_split_files(path.parent)) == {s: path.parent / f"{s}.csv" for s in ("train", "dev", "test")}


def test_windows_of_a_genome_prepared_by_dnalm_prepare(tmp_path):
    from dnalm.data.prepare import GenomeSpec, prepare
    from dnalm.genome.fasta import iter_records
    from dnalm.genome.splits import SplitSpec

    fasta = shared_file("athal_chloroplast", "NC_000932.1.fa")
    gff = shared_file("athal_chloroplast", "NC_000932.1.gff3")
    out = prepare([GenomeSpec("athal", str(fasta), str(gff))], tmp_path / "prep",
                  SplitSpec(strategy="intervals", val=["NC_000932.1:100001-130000"]))
    (record,) = list(iter_records(fasta))
    genome = record.seq.decode().upper()
    ds = WindowDataset(out, "train", 256, rc_aug=True, seed=4)
    batch = ds.get_batch(np.arange(64))
    starts, rc = ds.window_starts(np.arange(64))
    assert rc.any() and not rc.all()
    for i, s in enumerate(starts):
        assert s + 257 <= 100_000 or s >= 130_000  # never inside or across the held-out interval
        text = rc_string(genome[s:s + 257]) if rc[i] else genome[s:s + 257]
        np.testing.assert_array_equal(batch["input_ids"][i].numpy(), encode(text)[:-1])
    val = WindowDataset(out, "val", 1000, mode="strided")
    assert len(val) == 30 and int((val.get_batch(np.arange(30))["loss_weight"] > 0).sum()) == 29_999
