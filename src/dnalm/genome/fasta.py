"""Reading FASTA genomes: streaming with validation, lengths, and random access.

Public API
----------
``iter_records(path) -> Iterator[FastaRecord]``
    Stream the records of a FASTA file (plain, gzip or bgzip; detected from the file's first
    bytes, not its name). Lines may have any length and end in ``\\n`` or ``\\r\\n``; blank lines
    and spaces/tabs inside sequence lines are ignored. ``FastaRecord.seq`` holds the raw bases
    as ``bytes`` with the case preserved (soft-masking survives) and line breaks removed. Only
    one record is held in memory at a time.
``read_lengths(path) -> dict[str, int]``
    ``{record name: number of bases}`` in file order, streaming and validating like
    ``iter_records`` without keeping any sequence.
``FastaIndex(path)``
    Random access: ``.lengths`` (dict), ``.names``, ``.descriptions`` (header text after each name; empty
    with ``validate=False`` on a plain file), ``.fetch(name, start, end) -> str`` (0-based half-open, case
    preserved), ``.close()``; also a context manager.

Validation (all raise :class:`dnalm.errors.InputError` with the file and line):
an empty file; text before the first ``>``; a header without a name; a record with no
sequence; a duplicate record name; a character that is not an IUPAC nucleotide code
(``ACGTNRYSWKMBDHV`` in either case; the message names the record, the 1-based position in
the record and the character); a truncated or corrupt gzip stream.

The record name is the header text up to the first whitespace, the description is the rest
(as samtools and pyfaidx define them).

Random access and compression
-----------------------------
A plain FASTA is indexed with pyfaidx. An up-to-date ``.fai`` beside the file is used;
otherwise the index is built in a temporary directory (nothing is ever written beside an
input file). pyfaidx reads bgzip files only through
Biopython's ``bgzf`` module, which dnalm does not depend on, and a plain gzip file (what NCBI
ships) cannot be read at random offsets at all. For both, and for plain files that pyfaidx
cannot index (lines of irregular width), :class:`FastaIndex` streams the file once through
``iter_records`` (which validates it) into a temporary uncompressed copy with one line per
record, indexes that copy and deletes it on ``close()``. This costs disk space equal to the
genome size and one decompression pass, and keeps memory flat for genomes of many gigabases.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from dnalm.errors import InputError
from dnalm.utils import GZIP_MAGIC, open_binary

__all__ = ["IUPAC", "FastaIndex", "FastaRecord", "compression", "iter_records", "read_lengths"]

IUPAC = b"ACGTNRYSWKMBDHV"
"""The IUPAC nucleotide codes accepted in a sequence (upper case; lower case is accepted too)."""

_WHITESPACE = b" \t\r\n"
_ALLOWED = IUPAC + IUPAC.lower() + _WHITESPACE
_VALID = np.zeros(256, dtype=bool)
_VALID[np.frombuffer(_ALLOWED, dtype=np.uint8)] = True
_BLOCK = 1 << 22


@dataclass(frozen=True, slots=True)
class FastaRecord:
    """One FASTA record: ``name`` (header up to the first whitespace), ``description`` (the rest
    of the header, stripped) and ``seq``, the raw bases ``(length,)`` as bytes, case preserved."""

    name: str
    description: str
    seq: bytes

    def __len__(self) -> int:
        return len(self.seq)


def compression(path: str | os.PathLike) -> str:
    """``"plain"``, ``"gzip"`` or ``"bgzf"`` (blocked gzip, RFC 1952 with a ``BC`` extra field),
    read from the first bytes of the file."""
    with _open_raw(path) as f:
        head = f.read(18)
    if not head.startswith(GZIP_MAGIC):
        return "plain"
    flags = head[3] if len(head) > 3 else 0
    if flags & 4 and len(head) >= 16 and head[12:14] == b"BC":
        return "bgzf"
    return "gzip"


def _open_raw(path: str | os.PathLike) -> BinaryIO:
    return open_binary(path, "FASTA file")


def _open_text_stream(path: str | os.PathLike) -> tuple[BinaryIO, bool]:
    """The decompressed byte stream of ``path`` and whether it is gzip-compressed."""
    raw = _open_raw(path)
    magic = raw.read(2)
    raw.seek(0)
    if magic == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=raw, mode="rb"), True  # type: ignore[return-value]
    return raw, False


class _Record:
    __slots__ = ("name", "description", "line", "pieces", "length")

    def __init__(self, name: str, description: str, line: int):
        self.name = name
        self.description = description
        self.line = line
        self.pieces: list[bytes] = []
        self.length = 0


class _Scanner:
    """Block-wise FASTA parser; yields finished ``_Record`` objects.

    Sequence text is validated and cleaned a whole block at a time with ``bytes.translate``
    (C speed); only a header line is ever kept back across a block boundary, so a genome
    written as one line per chromosome is parsed in linear time.
    """

    def __init__(self, path: str | os.PathLike, keep_seq: bool):
        self.path = path
        self.keep_seq = keep_seq
        self.record: _Record | None = None
        self.seen: dict[str, int] = {}
        self.line = 1  # line number at self.counted within the current buffer
        self.counted = 0
        self.nonblank = False

    def _line_at(self, buf: bytes, pos: int) -> int:
        self.line += buf.count(b"\n", self.counted, pos)
        self.counted = pos
        return self.line

    def __iter__(self) -> Iterator[_Record]:
        stream, compressed = _open_text_stream(self.path)
        with stream:
            carry = b""
            at_line_start = True
            eof = False
            while not eof:
                try:
                    block = stream.read(_BLOCK)
                except (EOFError, OSError, zlib.error) as exc:
                    if not compressed:
                        raise InputError(f"{self.path}: cannot read file ({exc})") from None
                    raise InputError(f"{self.path}: truncated or corrupt gzip data ({exc})") from None
                eof = not block
                buf = carry + block if carry else block
                carry = b""
                if not eof:
                    tail = buf.rfind(b"\n") + 1
                    if (tail > 0 or at_line_start) and buf.startswith(b">", tail):
                        carry = buf[tail:]
                        buf = buf[:tail]
                self.counted = 0
                yield from self._process(buf, at_line_start)
                self._line_at(buf, len(buf))
                if buf:
                    at_line_start = buf.endswith(b"\n")
        if self.record is not None:
            yield self._finish()
        elif not self.nonblank:
            raise InputError(f"{self.path}: empty file (no FASTA records)")

    def _process(self, buf: bytes, at_line_start: bool) -> Iterator[_Record]:
        pos, n = 0, len(buf)
        while pos < n:
            if buf.startswith(b">", pos) and (pos > 0 or at_line_start):
                h = pos
            else:
                j = buf.find(b"\n>", pos)
                h = n if j < 0 else j + 1
            if h > pos:
                self._sequence(buf, pos, h)
            if h >= n:
                return
            e = buf.find(b"\n", h)
            e = n if e < 0 else e
            line = self._line_at(buf, h)
            if self.record is not None:
                yield self._finish()
            self._header(buf[h + 1:e], line)
            pos = e + 1

    def _header(self, text: bytes, line: int) -> None:
        self.nonblank = True
        parts = text.decode("utf-8", errors="replace").split(None, 1)
        name = parts[0] if parts else ""
        description = parts[1].strip() if len(parts) > 1 else ""
        if not name:
            raise InputError(f"{self.path}: line {line}: FASTA header has no record name")
        first = self.seen.get(name)
        if first is not None:
            raise InputError(f"{self.path}: line {line}: duplicate record name '{name}' "
                             f"(first at line {first})")
        self.seen[name] = line
        self.record = _Record(name, description, line)

    def _sequence(self, buf: bytes, a: int, b: int) -> None:
        seg = buf[a:b]
        rec = self.record
        if rec is None:
            stripped = seg.lstrip()
            if stripped:
                first = a + len(seg) - len(stripped)
                raise InputError(f"{self.path}: line {self._line_at(buf, first)}: text before the first "
                                 f"'>' header (not a FASTA file?)")
            return
        if seg.translate(None, _ALLOWED):
            i = int(np.flatnonzero(~_VALID[np.frombuffer(seg, dtype=np.uint8)])[0])
            position = rec.length + len(seg[:i].translate(None, _WHITESPACE)) + 1
            char = chr(seg[i])
            line = self._line_at(buf, a + i)
            raise InputError(f"{self.path}: line {line}: record '{rec.name}' has an invalid character"
                             f" {char!r} at position {position:,} (allowed: IUPAC nucleotide codes "
                             f"{IUPAC.decode()} in either case)")
        clean = seg.translate(None, _WHITESPACE)
        if clean:
            rec.length += len(clean)
            if self.keep_seq:
                rec.pieces.append(clean)

    def _finish(self) -> _Record:
        rec = self.record
        assert rec is not None
        self.record = None
        if rec.length == 0:
            raise InputError(f"{self.path}: line {rec.line}: record '{rec.name}' has no sequence")
        return rec


def iter_records(path: str | os.PathLike) -> Iterator[FastaRecord]:
    """Stream the records of a FASTA (plain, gzip or bgzip) file, validating as it goes.

    Yields one :class:`FastaRecord` per record, ``seq`` of shape ``(length,)`` bytes with
    case preserved. A malformed file raises :class:`InputError` at the record where the
    problem is found; records before it have already been yielded, so a caller that writes
    outputs must write them atomically.
    """
    for rec in _Scanner(path, keep_seq=True):
        seq = rec.pieces[0] if len(rec.pieces) == 1 else b"".join(rec.pieces)
        rec.pieces = []
        yield FastaRecord(rec.name, rec.description, seq)


def read_lengths(path: str | os.PathLike) -> dict[str, int]:
    """``{record name: length}`` in file order, validating the whole file (no sequence is kept)."""
    return {rec.name: rec.length for rec in _Scanner(path, keep_seq=False)}


def _layout_agrees(fh: BinaryIO, entry, seq: bytes) -> bool:
    """Whether the bytes of a record in a plain file are exactly what a ``.fai`` entry describes.

    A ``.fai`` entry (offset, length, bases per line ``lenc``, bytes per line ``lenb``) says the
    record is stored as lines of ``lenc`` bases followed by a ``lenb - lenc`` byte line break,
    the last line possibly shorter. The file bytes are compared with that layout built from the
    streamed bases ``seq`` (the final line break may be missing at the end of the file).
    """
    rlen, lenc, lenb, offset = int(entry.rlen), int(entry.lenc), int(entry.lenb), int(entry.offset)
    eol = lenb - lenc
    if rlen != len(seq) or lenc <= 0 or eol not in (1, 2):
        return False
    full, rem = divmod(rlen, lenc)
    span = full * lenb + (rem + eol if rem else 0)
    fh.seek(offset)
    raw = np.frombuffer(fh.read(span), dtype=np.uint8)
    if raw.size < span - eol:
        return False
    bases = np.frombuffer(seq, dtype=np.uint8)
    term = np.frombuffer(b"\n" if eol == 1 else b"\r\n", dtype=np.uint8)
    layout = np.empty(span, dtype=np.uint8)
    lines = layout[:full * lenb].reshape(full, lenb)
    lines[:, :lenc] = bases[:full * lenc].reshape(full, lenc)
    lines[:, lenc:] = term
    if rem:
        layout[full * lenb:full * lenb + rem] = bases[full * lenc:]
        layout[span - eol:] = term
    return bool(np.array_equal(raw, layout[:raw.size]))


class FastaIndex:
    """Random access to the records of a FASTA file (see the module docstring for compression).

    ``validate=True`` (the default) streams the file once through the validating parser, so a
    malformed file fails here with the same messages as :func:`iter_records`, and checks that
    every record read through the index equals the streamed record (pyfaidx does not notice
    every irregular line width; such a file is read through a temporary copy instead).
    ``validate=False`` trusts pyfaidx's index of a plain file and skips that pass (compressed
    files are always validated while their copy is written). ``tmp_dir`` is where temporary
    files go (default: the system temporary directory).
    """

    def __init__(self, path: str | os.PathLike, validate: bool = True,
                 tmp_dir: str | os.PathLike | None = None):
        self.path = Path(path)
        self._tmp: Path | None = None
        self._fasta = None
        self._tmp_parent = tmp_dir
        self.lengths: dict[str, int] = {}
        self.descriptions: dict[str, str] = {}  # header text after the name (filled when the file is streamed)
        try:
            if compression(self.path) == "plain":
                self._fasta = self._open_direct(validate)
            if self._fasta is None:
                self._fasta = self._open_pyfaidx(self._plain_copy())
        except BaseException:
            self.close()
            raise

    def _open_direct(self, validate: bool):
        """pyfaidx on the file itself, or None when its index disagrees with the streamed records."""
        import pyfaidx

        try:
            fa = self._open_pyfaidx(self.path)
        except (pyfaidx.FastaIndexingError, ValueError, OSError, ImportError):
            # ImportError: pyfaidx takes a name ending in .gz for bgzip and needs Biopython for it
            return None
        index = fa.faidx.index
        lengths = {name: int(entry.rlen) for name, entry in index.items()}
        if validate:
            agrees = True
            streamed: dict[str, int] = {}
            with open(self.path, "rb") as fh:
                for rec in iter_records(self.path):
                    streamed[rec.name] = len(rec.seq)
                    self.descriptions[rec.name] = rec.description
                    agrees = agrees and rec.name in index and _layout_agrees(fh, index[rec.name], rec.seq)
            if not agrees or streamed != lengths:
                fa.close()
                return None
        self.lengths = lengths
        return fa

    def _tmpdir(self) -> Path:
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="dnalm-fasta-", dir=self._tmp_parent))
        return self._tmp

    def _open_pyfaidx(self, fasta: Path):
        import pyfaidx

        fai = Path(f"{fasta}.fai")
        if not fai.exists() or fai.stat().st_mtime < fasta.stat().st_mtime:
            fai = self._tmpdir() / (fasta.name + ".fai")
        return pyfaidx.Fasta(str(fasta), indexname=str(fai), sequence_always_upper=False, as_raw=True,
                             strict_bounds=True, duplicate_action="stop")

    def _plain_copy(self) -> Path:
        out = self._tmpdir() / "genome.fa"
        lengths = {}
        with open(out, "wb") as f:
            for rec in iter_records(self.path):
                self.descriptions[rec.name] = rec.description
                f.write(b">" + rec.name.encode() + b"\n")
                f.write(rec.seq)
                f.write(b"\n")
                lengths[rec.name] = len(rec.seq)
        self.lengths = lengths
        return out

    @property
    def names(self) -> list[str]:
        return list(self.lengths)

    def __contains__(self, name: str) -> bool:
        return name in self.lengths

    def fetch(self, name: str, start: int, end: int) -> str:
        """Bases ``[start, end)`` (0-based, half-open) of record ``name`` as a string, case preserved."""
        length = self.lengths.get(name)
        if length is None:
            raise InputError(f"{self.path}: no record named '{name}'")
        if not 0 <= start <= end <= length:
            raise InputError(f"{self.path}: interval [{start}, {end}) is outside record '{name}' "
                             f"(length {length:,})")
        if start == end:
            return ""
        assert self._fasta is not None
        return str(self._fasta.faidx.fetch(name, start + 1, end))

    def close(self) -> None:
        if self._fasta is not None:
            self._fasta.close()
            self._fasta = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> FastaIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
