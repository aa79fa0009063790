"""Inputs and outputs of the inference commands: sequences from FASTA/CSV, Parquet, FASTA, JSONL.

``read_sequences(path)`` reads a FASTA (plain, gzip or bgzip) or a CSV/TSV table with a
``sequence`` column (optionally gzip-compressed) into :class:`NamedSequence` items whose
``where`` names the file and record/line for error messages. Every writer goes through
:func:`dnalm.utils.atomic_file`, so a failed command leaves no partial output.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dnalm.errors import InputError
from dnalm.utils import allow_long_csv_fields, atomic_file, open_text

#: Column names accepted for the sequence and the identifier in a CSV/TSV input.
SEQUENCE_COLUMNS = ("sequence", "seq")
ID_COLUMNS = ("id", "name")


@dataclass(frozen=True)
class NamedSequence:
    """A sequence to score or embed: ``id``, the bases ``seq`` and ``where`` (file and record/line)."""

    id: str
    seq: str
    where: str


def _first_char(path: str | os.PathLike) -> str:
    try:
        with open_text(path) as f:
            for line in f:
                if line.strip():
                    return line.lstrip()[0]
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None
    raise InputError(f"{path}: empty file")


def is_fasta(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds FASTA (its first non-blank character is ``>``)."""
    return _first_char(path) == ">"


def _read_fasta(path: Path, uppercase: bool) -> list[NamedSequence]:
    from dnalm.genome.fasta import iter_records

    out = []
    for rec in iter_records(path):
        seq = rec.seq.decode("ascii")
        out.append(NamedSequence(rec.name, seq.upper() if uppercase else seq, f"{path}: record '{rec.name}'"))
    return out


def _read_table(path: Path, uppercase: bool) -> list[NamedSequence]:
    suffixes = [s.lower() for s in path.suffixes]
    delimiter = "\t" if ".tsv" in suffixes or ".txt" in suffixes else ","
    out = []
    allow_long_csv_fields()
    try:
        with open_text(path) as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                raise InputError(f"{path}: empty file")
            names = [h.strip().lower() for h in header]
            seq_col = next((names.index(c) for c in SEQUENCE_COLUMNS if c in names), None)
            if seq_col is None:
                raise InputError(f"{path}: line 1: no 'sequence' column in the header "
                                 f"(columns: {', '.join(header)})")
            id_col = next((names.index(c) for c in ID_COLUMNS if c in names), None)
            for row in reader:
                line = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    raise InputError(f"{path}: line {line}: {len(row)} fields, the header has {len(header)}")
                seq = row[seq_col].strip()
                if not seq:
                    raise InputError(f"{path}: line {line}: empty sequence")
                name = row[id_col].strip() if id_col is not None else f"row{len(out)}"
                out.append(NamedSequence(name, seq.upper() if uppercase else seq, f"{path}: line {line}"))
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None
    if not out:
        raise InputError(f"{path}: no sequences")
    return out


def read_sequences(path: str | os.PathLike, uppercase: bool = True) -> list[NamedSequence]:
    """All sequences of a FASTA or CSV/TSV file (see the module docstring).

    ``uppercase`` folds soft-masked (lowercase) bases to upper case, as the models saw them in
    training. Malformed input raises :class:`InputError` naming the file and record or line.
    """
    path = Path(path)
    if is_fasta(path):
        return _read_fasta(path, uppercase)
    return _read_table(path, uppercase)


def write_parquet(path: str | os.PathLike, columns: Mapping[str, Sequence[Any] | np.ndarray],
                  metadata: Mapping[str, Any] | None = None) -> Path:
    """Write a table of equal-length ``columns`` (arrays, lists, or lists of 1-D arrays) atomically.

    ``metadata`` is stored as JSON under the schema key ``dnalm``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {}
    for name, values in columns.items():
        if isinstance(values, np.ndarray):
            arrays[name] = pa.array(values)
        elif values and isinstance(values[0], np.ndarray):
            arrays[name] = pa.array([np.asarray(v) for v in values],
                                    type=pa.list_(pa.from_numpy_dtype(np.asarray(values[0]).dtype)))
        else:
            arrays[name] = pa.array(list(values))
    table = pa.table(arrays)
    if metadata:
        table = table.replace_schema_metadata({"dnalm": json.dumps(dict(metadata))})
    path = Path(path)
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)
    return path


def write_fasta(path: str | os.PathLike, records: Iterable[tuple[str, str]], width: int = 80) -> Path:
    """Write ``(header, sequence)`` pairs as FASTA with lines of ``width`` bases, atomically."""
    path = Path(path)
    with atomic_file(path) as tmp, open(tmp, "w") as f:
        for header, seq in records:
            f.write(f">{header}\n")
            for i in range(0, len(seq), width):
                f.write(seq[i: i + width] + "\n")
    return path


def write_jsonl(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write one JSON object per line, atomically."""
    path = Path(path)
    with atomic_file(path) as tmp, open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def data_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """``(1-based line number, line without its line break)`` of a plain or gzip text file."""
    try:
        with open_text(path) as f:
            for number, line in enumerate(f, start=1):
                yield number, line.rstrip("\r\n")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None
