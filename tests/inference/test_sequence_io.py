"""Reading the sequences of the inference commands (FASTA, CSV/TSV) and writing their outputs."""

from __future__ import annotations

import gzip

import pytest

from dnalm.errors import InputError
from dnalm.inference.io import read_sequences


def test_tables_with_long_sequences_a_byte_order_mark_or_gzip(tmp_path):
    """A sequence longer than the csv module's default field limit (131,072 characters), a UTF-8 byte-order
    mark before the header and gzip are read; corrupt gzip data is an InputError naming the file."""
    long = "ACGT" * 50_000
    path = tmp_path / "seqs.csv"
    path.write_bytes(b"\xef\xbb\xbfid,sequence\na," + long.encode() + b"\nb,gg\n")
    (tmp_path / "seqs.csv.gz").write_bytes(gzip.compress(path.read_bytes()))
    for name in ("seqs.csv", "seqs.csv.gz"):
        seqs = read_sequences(tmp_path / name)
        assert [(s.id, s.seq) for s in seqs] == [("a", long), ("b", "GG")]
        assert seqs[1].where.endswith(f"{name}: line 3")
    corrupt = gzip.compress(b"id,sequence\na,AC\n", mtime=0)[:10] + b"\x07" + bytes(16)
    (tmp_path / "bad.csv.gz").write_bytes(corrupt)
    with pytest.raises(InputError, match=r"bad\.csv\.gz: cannot read \(corrupt compressed data"):
        read_sequences(tmp_path / "bad.csv.gz")
