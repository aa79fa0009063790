"""Inputs and outputs of the inference commands: sequences from FASTA/CSV, Parquet, FASTA, JSONL.

``read_sequences(path)`` reads a FASTA (plain, gzip or bgzip) or a CSV/TSV table with a
``sequence`` column (optionally gzip-compressed) into :class:`NamedSequence` items whose
``where`` names the file and record/line for error messages; :func:`read_inputs` also reads BED
intervals of a reference FASTA and takes a strand. Every writer goes through
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

from dnalm.errors import ConfigError, InputError
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
    return read_inputs(path, uppercase, strand="forward").sequences


STRANDS = ("auto", "forward", "reverse")
BED_SUFFIXES = (".bed", ".narrowpeak", ".broadpeak")


@dataclass
class Inputs:
    """What :func:`read_inputs` read: the ``sequences``, the chromosome names it renamed (``{given: record}``)
    and whether they came from BED intervals."""

    sequences: list[NamedSequence]
    renamed: dict[str, str]
    bed: bool = False


def _bed_fields(line: str) -> list[str] | None:
    """The tab-separated fields of a BED data line, or None for a header/comment line."""
    if not line.strip() or line.startswith(("#", "track", "browser")):
        return None
    return line.split("\t")


def is_bed(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds BED intervals: a ``.bed`` (``.bed.gz``, narrowPeak) name, or a first data line of
    at least three tab-separated fields whose second and third are integers."""
    path = Path(path)
    if any(s.lower() in BED_SUFFIXES for s in path.suffixes):
        return True
    for _, line in data_lines(path):
        fields = _bed_fields(line)
        if fields is None:
            continue
        return len(fields) >= 3 and fields[1].strip().isdigit() and fields[2].strip().isdigit()
    return False


def _read_bed(path: Path, reference: str | os.PathLike, uppercase: bool, strand: str,
              chrom_aliases: str | os.PathLike | None) -> Inputs:
    """Sequences of BED intervals (0-based start, end exclusive) of ``reference``; see :func:`read_inputs`."""
    from dnalm.genome.aliases import ChromAliases
    from dnalm.genome.fasta import FastaIndex
    from dnalm.tokenizers import reverse_complement

    out = []
    with FastaIndex(reference) as genome:
        aliases = ChromAliases.of(genome, chrom_aliases)
        for number, line in data_lines(path):
            fields = _bed_fields(line)
            if fields is None:
                continue
            where = f"{path}: line {number}"
            if len(fields) < 3:
                raise InputError(f"{where}: {len(fields)} tab-separated fields, a BED line needs chrom, start, end")
            chrom, start_text, end_text = (f.strip() for f in fields[:3])
            try:
                start, end = int(start_text), int(end_text)
            except ValueError:
                raise InputError(f"{where}: start {start_text!r} and end {end_text!r} must be integers") from None
            record = aliases.resolve(chrom)
            if record is None:
                raise InputError(f"{where}: chromosome '{chrom}' is not in {reference} (records: "
                                 f"{', '.join(genome.names[:6])}{', ...' if len(genome.names) > 6 else ''}; "
                                 "map other names with chrom_aliases=FILE)")
            length = genome.lengths[record]
            if not 0 <= start < end <= length:
                raise InputError(f"{where}: interval {chrom}:{start}-{end} (BED: 0-based start, end exclusive) is "
                                 f"empty or outside '{record}' (length {length:,})")
            name = fields[3].strip() if len(fields) > 3 and fields[3].strip() not in ("", ".") else ""
            minus = strand == "reverse" or (strand == "auto" and len(fields) > 5 and fields[5].strip() == "-")
            seq = genome.fetch(record, start, end)
            seq = reverse_complement(seq) if minus else seq
            ident = name or f"{chrom}:{start + 1}-{end}" + ("(-)" if minus else "")
            out.append(NamedSequence(ident, seq.upper() if uppercase else seq, where))
        renamed = aliases.used()
    if not out:
        raise InputError(f"{path}: no intervals")
    return Inputs(out, renamed, bed=True)


def read_inputs(path: str | os.PathLike, uppercase: bool = True, reference: str | os.PathLike | None = None,
                strand: str = "auto", chrom_aliases: str | os.PathLike | None = None) -> Inputs:
    """The sequences of a FASTA, a CSV/TSV table, or BED intervals of the FASTA ``reference``.

    BED: ``chrom start end [name [score [strand]]]`` with a 0-based start and an exclusive end (UCSC's
    convention); a sequence is named by its name column, else ``chrom:start+1-end`` (1-based, inclusive),
    with ``(-)`` when reverse-complemented. Chromosome names may be aliases (``chrI`` for ``BK006935.2``;
    :class:`dnalm.genome.aliases.ChromAliases`, ``chrom_aliases`` a two-column file). ``strand``:
    ``forward`` (as written; BED: the reference's + strand), ``reverse`` (the reverse complement of that),
    ``auto`` (as written, BED rows with strand ``-`` reverse-complemented).
    """
    from dnalm.tokenizers import reverse_complement

    if strand not in STRANDS:
        raise ConfigError(f"strand={strand!r} must be one of {', '.join(STRANDS)}")
    path = Path(path)
    if reference is not None and is_bed(path):
        return _read_bed(path, reference, uppercase, strand, chrom_aliases)
    if is_fasta(path):
        seqs = _read_fasta(path, uppercase)
    elif is_bed(path):
        raise InputError(f"{path}: BED intervals need their genome: set reference=FASTA")
    else:
        seqs = _read_table(path, uppercase)
    if strand == "reverse":
        seqs = [NamedSequence(s.id, reverse_complement(s.seq), s.where) for s in seqs]
    return Inputs(seqs, {})


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
