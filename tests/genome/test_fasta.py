"""FASTA reading: parsing, validation messages, lengths and random access."""

from __future__ import annotations

import gzip
import os
import random
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import shared_file
from dnalm.errors import InputError
from dnalm.genome import fasta
from dnalm.genome.fasta import FastaIndex, FastaRecord, compression, iter_records, read_lengths


def bgzip(data: bytes, block: int = 1000) -> bytes:
    """BGZF (SAM spec section 4.1): gzip members of <= 64 KiB with a 'BC' extra field, then an EOF block."""
    out = []
    for i in range(0, len(data), block):
        chunk = data[i:i + block]
        comp = zlib.compressobj(6, zlib.DEFLATED, -15)
        cdata = comp.compress(chunk) + comp.flush()
        header = b"\x1f\x8b\x08\x04" + b"\0" * 4 + b"\0\xff" + struct.pack("<HBBHH", 6, 66, 67, 2, len(cdata) + 25)
        out.append(header + cdata + struct.pack("<II", zlib.crc32(chunk), len(chunk)))
    out.append(bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000"))
    return b"".join(out)


def write(tmp_path: Path, data: bytes, name: str = "g.fa", kind: str = "plain") -> Path:
    path = tmp_path / name
    if kind == "gzip":
        data = gzip.compress(data)
    elif kind == "bgzf":
        data = bgzip(data)
    path.write_bytes(data)
    return path


def reference_parse(text: bytes) -> list[tuple[str, str, bytes]]:
    """A line-by-line parser, independent of the block-wise one under test."""
    records: list[tuple[str, str, bytes]] = []
    for line in text.splitlines():
        if line.startswith(b">"):
            words = line[1:].decode().split(None, 1)
            records.append((words[0], words[1].strip() if len(words) > 1 else "", b""))
        elif records:
            name, desc, seq = records[-1]
            records[-1] = (name, desc, seq + b"".join(line.split()))
    return records


MIXED = (b">chr1 first record\r\nACGTacgtNN\r\nRYSWKMBDHV\r\n\r\nn\r\n"
         b">chr2\nAC\nGT\n\n>chr3\tdesc with\ttabs\n" + b"N" * 5000 + b"acgt" * 10 + b"\n")


@pytest.mark.parametrize("kind", ["plain", "gzip", "bgzf"])
def test_iter_records_mixed_line_endings_case_iupac_and_n_runs(tmp_path, kind):
    path = write(tmp_path, MIXED, kind=kind)
    records = list(iter_records(path))
    assert records == [
        FastaRecord("chr1", "first record", b"ACGTacgtNNRYSWKMBDHVn"),
        FastaRecord("chr2", "", b"ACGT"),
        FastaRecord("chr3", "desc with\ttabs", b"N" * 5000 + b"acgt" * 10),
    ]
    assert compression(path) == kind
    assert read_lengths(path) == {"chr1": 21, "chr2": 4, "chr3": 5040}


def test_single_line_chromosome_and_no_final_newline(tmp_path, monkeypatch):
    monkeypatch.setattr(fasta, "_BLOCK", 64)
    seq = bytes(random.Random(0).choice(b"ACGTacgtN") for _ in range(10_000))
    path = write(tmp_path, b">a\n" + seq + b"\n>b\nAC")
    assert [(r.name, r.seq) for r in iter_records(path)] == [("a", seq), ("b", b"AC")]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), block=st.integers(1, 40))
def test_blockwise_parser_matches_line_parser(tmp_path, monkeypatch, data, block):
    monkeypatch.setattr(fasta, "_BLOCK", block)
    n = data.draw(st.integers(1, 4))
    parts = []
    for i in range(n):
        seq = data.draw(st.text(alphabet="ACGTNacgtnRY", min_size=1, max_size=60))
        width = data.draw(st.integers(1, 25))
        eol = data.draw(st.sampled_from(["\n", "\r\n"]))
        lines = [seq[j:j + width] for j in range(0, len(seq), width)]
        blank = eol if data.draw(st.booleans()) else ""
        parts.append(f">r{i} d{i}{eol}" + eol.join(lines) + eol + blank)
    text = "".join(parts).encode()
    path = write(tmp_path, text)
    got = [(r.name, r.description, r.seq) for r in iter_records(path)]
    assert got == reference_parse(text)
    assert read_lengths(path) == {name: len(seq) for name, _, seq in got}


@pytest.mark.parametrize(("data", "message"), [
    (b"", r"g\.fa: empty file"),
    (b"\n  \n\n", r"g\.fa: empty file"),
    (b"\n\nACGT\n>a\nACGT\n", r"g\.fa: line 3: text before the first '>'"),
    (b">a\nACGT\n>b\n>c\nAC\n", r"g\.fa: line 3: record 'b' has no sequence"),
    (b">a\nACGT\n>b x\n\n", r"g\.fa: line 3: record 'b' has no sequence"),
    (b">a\nACGT\n>b\nA\n>a\nC\n", r"g\.fa: line 5: duplicate record name 'a' \(first at line 1\)"),
    (b">a\nACGT\n> \nAC\n", r"g\.fa: line 3: FASTA header has no record name"),
    (b">a\nACGT\n>b\nACGT\r\nAC-T\n", r"g\.fa: line 5: record 'b' has an invalid character '-' at position 7 "),
    (b">a\nACGU\n", r"line 2: record 'a' has an invalid character 'U' at position 4 "),
    (b">a\nAC*\n", r"invalid character '\*' at position 3"),
    (b">a\nAC\x00G\n", r"invalid character '\\x00' at position 3"),
])
def test_malformed_fasta_messages(tmp_path, data, message):
    path = write(tmp_path, data)
    for read in (lambda p: list(iter_records(p)), read_lengths, FastaIndex):
        with pytest.raises(InputError, match=message):
            read(path)


def test_invalid_character_position_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(fasta, "_BLOCK", 7)
    path = write(tmp_path, b">a\n" + b"ACGTACGTAC\n" * 30 + b"ACGTAXGTAC\n")
    with pytest.raises(InputError, match=r"line 32: record 'a' has an invalid character 'X' at position 306 "):
        list(iter_records(path))


def test_truncated_and_corrupt_gzip(tmp_path):
    good = gzip.compress(b">a\n" + b"ACGT" * 50_000 + b"\n")
    truncated = write(tmp_path, good[: len(good) // 2], "t.fa.gz")
    with pytest.raises(InputError, match=r"t\.fa\.gz: truncated or corrupt gzip"):
        list(iter_records(truncated))
    bad = bytearray(good)
    bad[-8] ^= 0xFF  # CRC32 of the member
    corrupt = write(tmp_path, bytes(bad), "c.fa.gz")
    with pytest.raises(InputError, match=r"c\.fa\.gz: truncated or corrupt gzip"):
        read_lengths(corrupt)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.fa: file not found"):
        read_lengths(tmp_path / "nope.fa")


IRREGULAR = b">a desc\nACGTAC\nGTacg\nTTTTTTTTT\n>b\nNNNNNNNNNN\nNNNNNNNNNN\nAC\n>c\nG\n"
REGULAR = b">a\r\nACGTACGTAC\r\nacgtacgtac\r\nNNNN\r\n>b\r\nGGGCC\r\n"
LONG_LAST_LINE = b">a\nACG\nACGTT\n>b\nACGT\nAC"  # pyfaidx indexes this without complaint, but wrongly


@pytest.mark.parametrize(("data", "kind"), [
    (REGULAR, "plain"), (IRREGULAR, "plain"), (LONG_LAST_LINE, "plain"), (IRREGULAR, "gzip"), (IRREGULAR, "bgzf"),
])
def test_fasta_index_fetch_equals_stream_slices(tmp_path, data, kind):
    path = write(tmp_path, data, "g.fa.gz" if kind != "plain" else "g.fa", kind)
    before = sorted(os.listdir(tmp_path))
    records = {r.name: r.seq.decode() for r in iter_records(path)}
    with FastaIndex(path) as index:
        assert index.lengths == {k: len(v) for k, v in records.items()}
        assert index.names == list(records)
        for name, seq in records.items():
            for start in range(len(seq) + 1):
                for end in range(start, len(seq) + 1):
                    assert index.fetch(name, start, end) == seq[start:end]
        with pytest.raises(InputError, match=r"no record named 'zz'"):
            index.fetch("zz", 0, 1)
        with pytest.raises(InputError, match=r"interval \[2, 99\) is outside record 'b'"):
            index.fetch("b", 2, 99)
        tmp = index._tmp
    assert tmp is None or not tmp.exists()
    assert sorted(os.listdir(tmp_path)) == before  # nothing written beside the input


def test_fasta_index_of_a_plain_file_named_gz(tmp_path):
    """The content decides the compression: pyfaidx would read a '.gz' name as bgzip (and need Biopython)."""
    path = write(tmp_path, IRREGULAR, "g.fa.gz")
    with FastaIndex(path) as index:
        assert index.lengths == {"a": 20, "b": 22, "c": 1}
        assert index.fetch("a", 4, 12) == "ACGTacgT"


def test_yeast_genome_stream_lengths_and_index():
    path = shared_file("yeast_r64", "GCA_000146045.2_R64_genomic.fna.gz")
    records = list(iter_records(path))
    assert len(records) == 16
    assert [r.name for r in records[:2]] == ["BK006935.2", "BK006936.2"]
    total = sum(len(r) for r in records)
    assert total == 12_071_326
    lower = sum(r.seq.count(c) for r in records for c in b"acgtn")
    assert 0.12 < lower / total < 0.135  # README: 12.7% soft-masked
    assert read_lengths(path) == {r.name: len(r) for r in records}
    rng = random.Random(1)
    with FastaIndex(path) as index:
        for r in rng.sample(records, 4):
            start = rng.randrange(len(r) - 5000)
            assert index.fetch(r.name, start, start + 5000) == r.seq[start:start + 5000].decode()
            assert index.fetch(r.name, len(r) - 7, len(r)) == r.seq[-7:].decode()


def test_plain_gzip_genome_lengths():
    path = shared_file("athal_colcen_chr1_5-7mb", "Col-CEN_v1.2.Chr1_5MB-7MB.fasta.gz")
    assert compression(path) == "gzip"
    assert read_lengths(path) == {"Chr1": 2_000_000}
