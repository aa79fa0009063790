"""Reading GFF3 annotations (plain or gzip) into features and their Parent hierarchy.

Public API
----------
``read_gff3(path, seq_lengths=None) -> Annotation``
    Parse every feature line of a GFF3 file (Sequence Ontology GFF3 specification 1.26,
    https://github.com/The-Sequence-Ontology/Specifications/blob/master/gff3.md). Reading stops
    at a ``##FASTA`` directive (or a line starting with ``>``). With ``seq_lengths`` (record
    name -> length, e.g. from :func:`dnalm.genome.fasta.read_lengths`) the seqids and the
    coordinates are checked against the genome.
``index_gff3(path, seq_lengths=None) -> GffIndex``
    The same parsing and checks, but only what region classes need is kept (type, coordinates,
    strand, ``ID``, ``Parent``, whether an ``exception`` mentions trans-splicing), as columns per
    seqid (:class:`FeatureTable`) in an unnamed temporary file: memory does not grow with the
    annotation, one seqid's table is loaded at a time (:meth:`GffIndex.table`). Close it (or use it
    as a context manager) when done.
``Feature``
    One feature line. Coordinates are converted from the file's 1-based closed ``[start, end]``
    to 0-based half-open ``[start, end)``: ``Feature.start = file_start - 1``,
    ``Feature.end = file_end``. ``attributes`` maps each tag to its URL-decoded value
    (``%3B`` -> ``;``, ``%2C`` -> ``,``...; a multi-value tag keeps its separating commas),
    ``id`` is the ``ID`` tag, ``parents`` the ``Parent`` tag split at its commas.
``Annotation``
    ``features`` in file order; ``on(seqid)``, ``get(id)`` (all lines of a multi-line feature,
    e.g. a CDS split over several lines with one ID), ``children(id)``, ``seqids``,
    ``is_circular(seqid)``, ``type_counts``, ``unknown_types`` and ``index`` (the same features
    as a :class:`GffIndex` held in memory).

Errors (:class:`dnalm.errors.InputError`, naming the file and line): a feature line without 9
tab-separated columns; an attribute that is not ``tag=value`` (e.g. a GTF file); a start or
end that is not a positive integer; end < start; a strand other than ``+ - . ?``; a phase other
than ``0 1 2 .``; a score that is not a number; coordinates beyond the sequence length; a
``Parent`` that no feature defines; seqids that are not in the FASTA (the message lists a few
and gives their number); a truncated or corrupt gzip stream.

Circular sequences: a feature crossing the origin of a seqid whose ``region`` feature has
``Is_circular=true`` may end past the sequence length (the GFF3 convention ``end = position +
length``); region tracks wrap it around.

Feature types: the types dnalm uses for region classes are listed in the ``*_TYPES`` sets below
(any type ending in ``RNA`` or ``transcript`` is a transcript; any feature with exon, CDS or UTR
children is treated as a transcript as well). ``OTHER_KNOWN_TYPES`` are recognised and
deliberately not used. Features of any other type are kept but do not contribute to region
classes; their counts are returned in ``Annotation.unknown_types`` and reported once with
``warnings.warn`` (:class:`GffWarning`).

How the index is built: one pass over the lines fills column buffers, flushed as a fragment
whenever the seqid changes (or every ``_FRAGMENT_ROWS`` rows). Parent links are resolved per
seqid once the file is read; an ID or Parent string that occurs on several seqids (found by
comparing the hashes of each seqid's distinct strings, then the strings themselves) has its
file-wide facts (first line and type, children, trans-splicing) kept in a small shared table,
so cross-seqid links behave as within one seqid.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from urllib.parse import unquote

import numpy as np

from dnalm.errors import InputError
from dnalm.utils import open_text

__all__ = [
    "CDS_TYPES", "EXON_TYPES", "GENE_TYPES", "INTRON_TYPES", "OTHER_KNOWN_TYPES", "PROMOTER_TYPES",
    "REPEAT_TYPES", "TRANSCRIPT_TYPES", "UTR_TYPES", "Annotation", "Feature", "FeatureTable", "GffIndex",
    "GffWarning", "index_gff3", "is_transcript_type", "read_gff3",
]

CDS_TYPES = frozenset({"CDS"})
EXON_TYPES = frozenset({"exon", "coding_exon", "noncoding_exon"})
UTR_TYPES = frozenset({"five_prime_UTR", "three_prime_UTR", "UTR", "5'UTR", "3'UTR", "five_prime_utr",
                       "three_prime_utr", "UTR_region"})
INTRON_TYPES = frozenset({"intron"})
PROMOTER_TYPES = frozenset({"promoter"})
GENE_TYPES = frozenset({
    "gene", "pseudogene", "ncRNA_gene", "protein_coding_gene", "transposable_element_gene", "rRNA_gene",
    "tRNA_gene", "snRNA_gene", "snoRNA_gene", "miRNA_gene", "lncRNA_gene", "pseudogenic_region",
})
TRANSCRIPT_TYPES = frozenset({"transcript", "primary_transcript", "pseudogenic_transcript",
                              "unconfirmed_transcript", "V_gene_segment", "D_gene_segment", "J_gene_segment",
                              "C_gene_segment", "ncRNA_gene_segment"})
REPEAT_TYPES = frozenset({
    "repeat_region", "transposable_element", "LTR", "long_terminal_repeat", "mobile_genetic_element",
    "mobile_element", "dispersed_repeat", "tandem_repeat", "inverted_repeat", "direct_repeat",
    "terminal_inverted_repeat", "five_prime_LTR", "three_prime_LTR", "satellite_DNA", "microsatellite",
    "minisatellite", "retrotransposon", "LTR_retrotransposon", "non_LTR_retrotransposon", "SINE_element",
    "LINE_element", "DNA_transposon", "helitron", "MITE", "repeat_fragment", "low_complexity_region",
    "simple_repeat", "centromeric_repeat", "telomeric_repeat", "nested_repeat", "solo_LTR",
})
OTHER_KNOWN_TYPES = frozenset({
    "region", "chromosome", "contig", "supercontig", "scaffold", "centromere", "telomere",
    "origin_of_replication", "sequence_feature", "gap", "assembly_gap", "D_loop", "polyA_signal_sequence",
    "polyA_site", "TSS", "transcription_start_site", "start_codon", "stop_codon", "enhancer", "silencer",
    "insulator", "binding_site", "protein_binding_site", "TATA_box", "CAAT_signal", "nucleotide_motif",
    "regulatory_region", "transcriptional_cis_regulatory_region", "match", "match_part", "cDNA_match",
    "EST_match", "protein_match", "nucleotide_match", "expressed_sequence_match", "biological_region",
    "recombination_feature", "meiotic_recombination_region", "mitotic_recombination_region",
    "sequence_alteration", "sequence_conflict", "sequence_secondary_structure", "stem_loop",
    "primer_binding_site", "conserved_region", "DNaseI_hypersensitive_site", "CAGE_cluster",
    "locus_control_region", "epigenetically_modified_region", "signal_peptide", "mature_protein_region",
    "transit_peptide", "propeptide", "non_canonical_five_prime_splice_site",
    "non_canonical_three_prime_splice_site", "five_prime_cis_splice_site", "three_prime_cis_splice_site",
    "splice_site", "exon_junction", "chromosome_breakpoint", "imprinting_control_region",
    "matrix_attachment_site", "replication_regulatory_region", "response_element", "TF_binding_site",
    "operon", "attenuator", "terminator", "riboswitch", "ribosome_entry_site", "CDS_region",
})

_STRANDS = frozenset("+-.?")
_PHASES = {".": None, "0": 0, "1": 1, "2": 2}
_PART_TYPES = CDS_TYPES | EXON_TYPES | UTR_TYPES
_FRAGMENT_ROWS = 1 << 16
_NO_LINE = np.iinfo(np.int64).max
MAX_COORDINATE = 1 << 62
"""Largest start or end accepted (coordinates are kept as int64)."""

CHILD = 1
"""Bit of :attr:`FeatureTable.children`: some feature names this ID as its Parent."""
TRANSCRIPT_CHILD = 2
"""Bit of :attr:`FeatureTable.children`: a feature of a transcript type names this ID as its Parent."""
PART_CHILD = 4
"""Bit of :attr:`FeatureTable.children`: an exon, CDS or UTR feature names this ID as its Parent."""


class GffWarning(UserWarning):
    """A GFF3 file is valid but parts of it are not used (e.g. features of unknown type)."""


def is_transcript_type(type_: str) -> bool:
    """Whether a feature type names a transcript (mRNA, tRNA, lnc_RNA, transcript, ...)."""
    return type_ in TRANSCRIPT_TYPES or type_.endswith("RNA") or type_.endswith("transcript")


def _is_known(type_: str) -> bool:
    return (type_ in CDS_TYPES or type_ in EXON_TYPES or type_ in UTR_TYPES or type_ in INTRON_TYPES
            or type_ in PROMOTER_TYPES or type_ in GENE_TYPES or type_ in REPEAT_TYPES
            or type_ in OTHER_KNOWN_TYPES or is_transcript_type(type_))


def _mentions_trans_splicing(exception: str | None) -> bool:
    """Whether an ``exception`` attribute value says trans-splicing (as NCBI organelle files do)."""
    if not exception:
        return False
    low = exception.lower()
    return "trans-splic" in low or "trans_splic" in low


@dataclass(frozen=True, slots=True)
class Feature:
    """One GFF3 feature line, coordinates 0-based half-open ``[start, end)``."""

    seqid: str
    source: str
    type: str
    start: int
    end: int
    strand: str
    score: float | None
    phase: int | None
    attributes: dict[str, str] = field(hash=False)
    id: str | None = None
    parents: tuple[str, ...] = ()
    line: int = 0

    def __len__(self) -> int:
        return self.end - self.start


@dataclass(slots=True)
class FeatureTable:
    """The features of one seqid as columns ``(n,)``, rows in file order.

    ``names`` are the distinct ``ID`` and ``Parent`` strings on the seqid; ``id`` and ``parent``
    index into it. The per-name columns ``(k,)`` (``first_type`` to ``children``) describe each
    name over the whole file, links from other seqids included; :meth:`GffIndex.table` fills them.
    """

    names: list[str]
    type: np.ndarray  # (n,) int16, index into GffIndex.types
    start: np.ndarray  # (n,) int64, 0-based
    end: np.ndarray  # (n,) int64, exclusive
    strand: np.ndarray  # (n,) uint8, ASCII code of + - . ?
    line: np.ndarray  # (n,) int64, line number in the file
    trans_spliced: np.ndarray  # (n,) bool, the row's exception attribute mentions trans-splicing
    id: np.ndarray  # (n,) int32, index into names, -1 for a row without ID
    parent_ptr: np.ndarray  # (n + 1,) int64, the parents of row i are parent[parent_ptr[i]:parent_ptr[i + 1]]
    parent: np.ndarray  # (m,) int32, index into names
    first_type: np.ndarray | None = None  # (k,) int16, type of the first line with this ID, -1 if none
    first_line: np.ndarray | None = None  # (k,) int64, line of the first line with this ID
    name_trans_spliced: np.ndarray | None = None  # (k,) bool, a line with this ID mentions trans-splicing
    children: np.ndarray | None = None  # (k,) uint8, CHILD | TRANSCRIPT_CHILD | PART_CHILD bits

    def __len__(self) -> int:
        return len(self.type)

    @property
    def n_parents(self) -> np.ndarray:
        """``(n,)`` int64: the number of parents of each row."""
        return np.diff(self.parent_ptr)

    def parent_rows(self) -> np.ndarray:
        """``(m,)`` int64: the row of each entry of ``parent``."""
        return np.repeat(np.arange(len(self.type)), self.n_parents)

    @classmethod
    def empty(cls) -> FeatureTable:
        """A table without rows (a seqid without features)."""
        i64 = np.zeros(0, np.int64)
        i32 = np.zeros(0, np.int32)
        return cls([], np.zeros(0, np.int16), i64, i64, np.zeros(0, np.uint8), i64, np.zeros(0, bool), i32,
                   np.zeros(1, np.int64), i32)


class _Rows:
    """Buffers for one fragment (consecutive rows of one seqid): a tuple per row, ``parent`` flat."""

    __slots__ = ("seqid", "names", "rows", "parent")

    def __init__(self, seqid: int) -> None:
        self.seqid = seqid
        self.names: dict[str, int] = {}
        self.rows: list[tuple[int, int, int, str, int, bool, int, int]] = []
        self.parent: list[int] = []

    def __len__(self) -> int:
        return len(self.rows)

    def table(self) -> FeatureTable:
        n = len(self.rows)
        type_, start, end, strand, line, trans, id_, n_parents = zip(*self.rows) if n else ((),) * 8
        ptr = np.zeros(n + 1, np.int64)
        np.cumsum(n_parents, out=ptr[1:])
        return FeatureTable(
            list(self.names), np.array(type_, np.int16), np.array(start, np.int64), np.array(end, np.int64),
            np.frombuffer("".join(strand).encode("ascii"), np.uint8), np.array(line, np.int64),
            np.array(trans, bool), np.array(id_, np.int32), ptr, np.array(self.parent, np.int32))


_COLUMNS = (("start", np.int64, (1, 0, 0)), ("end", np.int64, (1, 0, 0)), ("line", np.int64, (1, 0, 0)),
            ("parent_ptr", np.int64, (1, 0, 1)), ("id", np.int32, (1, 0, 0)), ("parent", np.int32, (0, 1, 0)),
            ("type", np.int16, (1, 0, 0)), ("strand", np.uint8, (1, 0, 0)), ("trans_spliced", np.bool_, (1, 0, 0)))


class _MemoryStore:
    """Fragments kept as they are."""

    def __init__(self) -> None:
        self.fragments: dict[int, list[FeatureTable]] = defaultdict(list)

    def put(self, seqid: int, table: FeatureTable) -> None:
        self.fragments[seqid].append(table)

    def get(self, seqid: int) -> list[FeatureTable]:
        return self.fragments.get(seqid, [])

    def close(self) -> None:
        self.fragments.clear()


class _FileStore:
    """Fragments serialised to an unnamed temporary file, read back one seqid at a time."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile(prefix="dnalm-gff-")
        self.where: dict[int, list[tuple[int, int, int, int]]] = defaultdict(list)  # offset, rows, parents, names
        self.size = 0

    def put(self, seqid: int, table: FeatureTable) -> None:
        names = json.dumps(table.names).encode("ascii")
        data = b"".join([np.ascontiguousarray(getattr(table, name), dt).tobytes() for name, dt, _ in _COLUMNS]
                        + [names])
        self.file.seek(self.size)
        self.file.write(data)
        self.where[seqid].append((self.size, len(table), len(table.parent), len(names)))
        self.size += len(data)

    def get(self, seqid: int) -> list[FeatureTable]:
        out = []
        for offset, n, m, n_names in self.where.get(seqid, []):
            counts = [n * a + m * b + c for _, _, (a, b, c) in _COLUMNS]
            size = sum(k * np.dtype(dt).itemsize for k, (_, dt, _) in zip(counts, _COLUMNS)) + n_names
            self.file.seek(offset)
            data = self.file.read(size)
            columns, at = {}, 0
            for k, (name, dt, _) in zip(counts, _COLUMNS):
                columns[name] = np.frombuffer(data, dt, k, at)
                at += k * np.dtype(dt).itemsize
            out.append(FeatureTable(json.loads(data[at:].decode("ascii")), **columns))
        return out

    def close(self) -> None:
        self.file.close()


def _merge(parts: list[FeatureTable]) -> FeatureTable:
    """One table from the fragments of a seqid (in file order), with their names unified."""
    if not parts:
        return FeatureTable.empty()
    if len(parts) == 1:
        return parts[0]
    index: dict[str, int] = {}
    ids, parents, ptrs = [], [], [np.zeros(1, np.int64)]
    n_parents = 0
    for p in parts:
        remap = np.array([index.setdefault(name, len(index)) for name in p.names], np.int32)
        id_ = p.id.copy()
        has = id_ >= 0
        id_[has] = remap[id_[has]]
        ids.append(id_)
        parents.append(remap[p.parent])
        ptrs.append(p.parent_ptr[1:] + n_parents)
        n_parents += len(p.parent)
    columns = {name: np.concatenate([getattr(p, name) for p in parts])
               for name in ("type", "start", "end", "strand", "line", "trans_spliced")}
    return FeatureTable(list(index), id=np.concatenate(ids), parent_ptr=np.concatenate(ptrs),
                        parent=np.concatenate(parents), **columns)


class GffIndex:
    """The features of a GFF3 file as one :class:`FeatureTable` per seqid.

    Built by :func:`index_gff3` (tables in a temporary file), by :func:`read_gff3` (in memory,
    ``Annotation.index``) or :meth:`from_features`. ``types`` are the feature types in order of
    first appearance (the codes of ``FeatureTable.type``), ``seqids`` the seqids likewise.
    """

    def __init__(self, path: str, store: _MemoryStore | _FileStore) -> None:
        self.path = path
        self.types: list[str] = []
        self.seqids: list[str] = []
        self.sequence_regions: dict[str, int] = {}
        """Lengths given by ``##sequence-region`` directives (``seqid -> end``)."""
        self.unknown_types: dict[str, int] = {}
        """Counts of features whose type is not used for region classes (see the module docstring)."""
        self.circular: frozenset[str] = frozenset()
        self._store = store
        self._seqid_code: dict[str, int] = {}
        self._type_code: dict[str, int] = {}
        self._rows: _Rows | None = None
        self._counts = np.zeros(0, np.int64)
        self._hashes: list[tuple[int, np.ndarray]] = []
        self._shared: dict[str, list] = {}

    @classmethod
    def from_features(cls, features: Iterable[Feature], path: str = "", circular: Iterable[str] = (),
                      sequence_regions: dict[str, int] | None = None) -> GffIndex:
        """An in-memory index of ``features`` (file order), without checks."""
        index = cls(path, _MemoryStore())
        index.sequence_regions = dict(sequence_regions or {})
        for f in features:
            index._add(index._seqid(f.seqid), index._type(f.type), f.start, f.end,
                       f.strand if f.strand in _STRANDS else ".", f.line, f.id, f.parents,
                       _mentions_trans_splicing(f.attributes.get("exception")))
        index.circular = frozenset(circular)
        index._finish()
        return index

    def __len__(self) -> int:
        return int(self._counts.sum())

    def __enter__(self) -> GffIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the tables (and delete their temporary file)."""
        self._store.close()

    @property
    def type_counts(self) -> dict[str, int]:
        return {t: int(n) for t, n in zip(self.types, self._counts)}

    def is_circular(self, seqid: str) -> bool:
        return seqid in self.circular

    def table(self, seqid: str) -> FeatureTable:
        """The features on ``seqid`` (an empty table if none), per-name columns filled."""
        code = self._seqid_code.get(seqid)
        table = _merge(self._store.get(code)) if code is not None else FeatureTable.empty()
        self._link(table)
        if self._shared:
            for i, name in enumerate(table.names):
                shared = self._shared.get(name)
                if shared is not None:
                    table.first_line[i], table.first_type[i], table.name_trans_spliced[i], table.children[i] = shared
        return table

    # building

    def _seqid(self, name: str) -> int:
        code = self._seqid_code.get(name)
        if code is None:
            code = self._seqid_code[name] = len(self.seqids)
            self.seqids.append(name)
        return code

    def _type(self, name: str) -> int:
        code = self._type_code.get(name)
        if code is None:
            code = self._type_code[name] = len(self.types)
            self.types.append(name)
        return code

    def _add(self, seqid: int, type_: int, start: int, end: int, strand: str, line: int, id_: str | None,
             parents: tuple[str, ...], trans_spliced: bool) -> None:
        rows = self._rows
        if rows is None or rows.seqid != seqid or len(rows.rows) >= _FRAGMENT_ROWS:
            self._flush()
            rows = self._rows = _Rows(seqid)
        names = rows.names
        i = -1
        if id_ is not None:
            i = names.get(id_)
            if i is None:
                i = names[id_] = len(names)
        for p in parents:
            j = names.get(p)
            if j is None:
                j = names[p] = len(names)
            rows.parent.append(j)
        rows.rows.append((type_, start, end, strand, line, trans_spliced, i, len(parents)))

    def _flush(self) -> None:
        rows, self._rows = self._rows, None
        if not rows:
            return
        table = rows.table()
        self._store.put(rows.seqid, table)
        hashes = np.fromiter(map(hash, table.names), np.int64, len(table.names))
        self._hashes.append((rows.seqid, np.unique(hashes)))
        counts = np.bincount(table.type, minlength=len(self.types))
        counts[:len(self._counts)] += self._counts
        self._counts = counts

    def _shared_hashes(self) -> set[int]:
        """Hashes of the names that occur on more than one seqid (and a few colliding others)."""
        if len(self.seqids) < 2:
            return set()
        hashes = np.concatenate([h for _, h in self._hashes])
        seqids = np.concatenate([np.full(len(h), s, np.int64) for s, h in self._hashes])
        order = np.lexsort((seqids, hashes))
        hashes, seqids = hashes[order], seqids[order]
        new = np.ones(len(hashes), bool)
        new[1:] = (hashes[1:] != hashes[:-1]) | (seqids[1:] != seqids[:-1])
        hashes = hashes[new]
        return set(hashes[1:][hashes[1:] == hashes[:-1]].tolist())

    def _type_flags(self) -> tuple[np.ndarray, np.ndarray]:
        """``(types,)`` bool: transcript types, and exon/CDS/UTR types."""
        transcript = np.array([is_transcript_type(t) for t in self.types], bool)
        part = np.array([t in _PART_TYPES for t in self.types], bool)
        return transcript, part

    def _link(self, t: FeatureTable, flags: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Fill the per-name columns of ``t`` from its own rows."""
        k = len(t.names)
        rows = np.flatnonzero(t.id >= 0)
        ids = t.id[rows]
        first = np.zeros(k, np.int64)
        defined = np.zeros(k, bool)
        names, at = np.unique(ids, return_index=True)
        first[names] = rows[at]
        defined[names] = True
        t.first_type = np.where(defined, t.type[first] if len(t) else 0, -1).astype(np.int16)
        t.first_line = np.where(defined, t.line[first] if len(t) else 0, _NO_LINE)
        t.name_trans_spliced = np.bincount(ids, weights=t.trans_spliced[rows], minlength=k) > 0
        transcript, part = flags or self._type_flags()
        child_type = t.type[t.parent_rows()]
        children = np.where(np.bincount(t.parent, minlength=k) > 0, CHILD, 0)
        children |= np.where(np.bincount(t.parent, weights=transcript[child_type], minlength=k) > 0,
                             TRANSCRIPT_CHILD, 0)
        children |= np.where(np.bincount(t.parent, weights=part[child_type], minlength=k) > 0, PART_CHILD, 0)
        t.children = children.astype(np.uint8)

    def _finish(self) -> tuple[tuple[int, int, str] | None, list[tuple[str, int]]]:
        """Resolve Parent links over the whole file.

        Fills the shared table of names found on several seqids and returns the first undefined
        Parent (``(line, position, message)`` or None) and the unknown types with their counts,
        most frequent first (ties in order of first appearance).
        """
        self._flush()
        shared_hashes = self._shared_hashes()
        self._hashes = []
        flags = self._type_flags()
        known = np.array([_is_known(t) for t in self.types], bool)
        shared: dict[str, list] = {}
        undefined: list[tuple[int, int, str]] = []
        pending_parents: list[tuple[int, int, str, str]] = []
        unknown: dict[str, list[int]] = {}
        pending_unknown: list[tuple[int, str, str]] = []

        def what(t: FeatureTable, row: int) -> str:
            type_ = self.types[t.type[row]]
            id_ = t.names[t.id[row]] if t.id[row] >= 0 else None
            return f"{type_} '{id_}'" if id_ else type_

        def count_unknown(type_: str, line: int) -> None:
            entry = unknown.setdefault(type_, [0, line])
            entry[0] += 1
            entry[1] = min(entry[1], line)

        for code in range(len(self.seqids)):
            t = _merge(self._store.get(code))
            self._link(t, flags)
            on_several = np.zeros(len(t.names), bool)
            if shared_hashes:
                on_several = np.fromiter((hash(n) in shared_hashes for n in t.names), bool, len(t.names))
                for i in np.flatnonzero(on_several).tolist():
                    mine = [int(t.first_line[i]), int(t.first_type[i]), bool(t.name_trans_spliced[i]),
                            int(t.children[i])]
                    have = shared.setdefault(t.names[i], mine)
                    if have is not mine:
                        if mine[0] < have[0]:
                            have[0], have[1] = mine[0], mine[1]
                        have[2] |= mine[2]
                        have[3] |= mine[3]
            missing = t.first_type[t.parent] < 0
            if missing.any():
                rows = t.parent_rows()
                for j in np.flatnonzero(missing).tolist():
                    row, name = int(rows[j]), t.names[t.parent[j]]
                    entry = (int(t.line[row]), j - int(t.parent_ptr[row]), name, what(t, row))
                    if on_several[t.parent[j]]:
                        pending_parents.append(entry)
                    else:
                        undefined.append(entry[:2] + (self._undefined(*entry[2:]),))
                        break
            odd = np.flatnonzero(~known[t.type])
            for row in odd.tolist():
                i = int(t.id[row])
                if i >= 0 and t.children[i] & PART_CHILD:
                    continue
                if i >= 0 and on_several[i]:
                    pending_unknown.append((int(t.line[row]), self.types[t.type[row]], t.names[i]))
                else:
                    count_unknown(self.types[t.type[row]], int(t.line[row]))
        for line, position, name, described in pending_parents:
            if shared[name][1] < 0:
                undefined.append((line, position, self._undefined(name, described)))
        for line, type_, name in pending_unknown:
            if not shared[name][3] & PART_CHILD:
                count_unknown(type_, line)
        self._shared = shared
        ordered = sorted(unknown.items(), key=lambda kv: (-kv[1][0], kv[1][1]))
        return min(undefined, default=None), [(t, n) for t, (n, _) in ordered]

    @staticmethod
    def _undefined(name: str, described: str) -> str:
        return f"Parent '{name}' of {described} is not defined (no feature has ID={name})"


def _lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    with open_text(path, what="GFF3 file", errors="replace", newline=None) as f:
        lineno = 0
        try:
            for lineno, line in enumerate(f, 1):  # noqa: B007
                yield lineno, line
        except (EOFError, OSError, zlib.error) as exc:
            raise InputError(f"{path}: line {lineno + 1}: truncated or corrupt gzip data ({exc})") from None


def _decode(text: str) -> str:
    return unquote(text) if "%" in text else text


def _attributes(col: str, path: str | os.PathLike, lineno: int) -> tuple[dict[str, str], tuple[str, ...]]:
    attrs: dict[str, str] = {}
    parents: tuple[str, ...] = ()
    if col.strip() == ".":  # an undefined column, as GFF3 writes every empty one
        return attrs, parents
    for item in col.split(";"):
        item = item.strip()
        if not item:
            continue
        tag, sep, value = item.partition("=")
        if not sep or not tag:
            hint = " (is this a GTF file?)" if " " in item else ""
            raise InputError(f"{path}: line {lineno}: attribute '{item}' is not tag=value{hint}")
        tag = _decode(tag)
        if tag == "Parent":
            parents = tuple(_decode(p) for p in value.split(",") if p)
        attrs[tag] = _decode(value)
    return attrs, parents


def _lean_attributes(col: str, path: str | os.PathLike,
                     lineno: int) -> tuple[str | None, tuple[str, ...], str | None, str | None]:
    """``ID``, ``Parent`` (split), ``exception`` and ``Is_circular`` exactly as :func:`_attributes` reads them.

    Only plain items are read here (a tag without ``%`` or leading blanks); anything else, a
    malformed item included, goes through :func:`_attributes`.
    """
    id_ = parent = exception = circular = None
    plain = True
    for item in col.split(";"):
        tag, sep, value = item.partition("=")
        if not sep:
            if item and not item.isspace():
                plain = False
                break
        elif tag == "ID":
            id_ = value
        elif tag == "Parent":
            parent = value
        elif tag == "exception":
            exception = value
        elif tag == "Is_circular":
            circular = value
        elif not tag or tag[0].isspace() or "%" in tag:
            plain = False
            break
    if not plain:
        attrs, parents = _attributes(col, path, lineno)
        return attrs.get("ID"), parents, attrs.get("exception"), attrs.get("Is_circular")
    parents: tuple[str, ...] = ()
    if parent is not None:
        pieces = parent.rstrip().split(",")
        parents = (tuple(pieces) if "%" not in parent and "" not in pieces
                   else tuple(_decode(p) for p in pieces if p))
    return (None if id_ is None else _decode(id_.rstrip()), parents,
            None if exception is None else _decode(exception.rstrip()),
            None if circular is None else _decode(circular.rstrip()))


def _coordinate(text: str, what: str, path: str | os.PathLike, lineno: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InputError(f"{path}: line {lineno}: {what} '{text}' is not an integer") from None
    if value < 1:
        raise InputError(f"{path}: line {lineno}: {what} {value} must be >= 1 (GFF3 is 1-based)")
    if value > MAX_COORDINATE:
        raise InputError(f"{path}: line {lineno}: {what} {text} is larger than any sequence (at most "
                         f"{MAX_COORDINATE:,})")
    return value


def _check_columns(cols: list[str], path: str | os.PathLike, lineno: int) -> tuple[int, int]:
    """Start and end of a feature line, raising for the first bad column among start, end, strand, phase."""
    start = _coordinate(cols[3], "start", path, lineno)
    end = _coordinate(cols[4], "end", path, lineno)
    if end < start:
        raise InputError(f"{path}: line {lineno}: end {end} is before start {start}")
    if cols[6] not in _STRANDS:
        raise InputError(f"{path}: line {lineno}: strand '{cols[6]}' is not one of + - . ?")
    if cols[7] not in _PHASES:
        raise InputError(f"{path}: line {lineno}: phase '{cols[7]}' is not one of 0 1 2 .")
    return start, end


def _score(text: str, path: str | os.PathLike, lineno: int) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{path}: line {lineno}: score '{text}' is not a number or '.'") from None


def _few(items: list[tuple[str, int]], n: int = 5) -> str:
    shown = ", ".join(f"'{name}' (line {line})" for name, line in items[:n])
    return shown + (", ..." if len(items) > n else "")


def _read(path: str | os.PathLike, seq_lengths: dict[str, int] | None, index: GffIndex,
          features: list[Feature] | None) -> None:
    """Parse and check ``path`` into ``index`` and, if given, ``features`` (full :class:`Feature` objects)."""
    circular: set[str] = set()
    saw_header = False
    seqid_codes: dict[str, int] = {}  # the column as written -> seqid code
    type_codes: dict[str, int] = {}
    lengths: dict[int, int | None] = {}
    missing: dict[str, int] = {}
    beyond: tuple[int, int, int, int, int] | None = None  # line, type, start, end, seqid of the first overhang
    wraps: dict[int, tuple[int, int, int, int, int]] = {}  # the same, per seqid, for overhangs a circle allows
    checked = seq_lengths is not None
    add = index._add
    n = 0
    for lineno, raw in _lines(path):
        line = raw.rstrip("\r\n")
        if not line or line.isspace():
            continue
        if line[0] == "#":
            if line.startswith("##FASTA"):
                break
            if line.startswith("##gff-version"):
                saw_header = True
            elif line.startswith("##sequence-region"):
                parts = line.split()
                if len(parts) == 4 and parts[3].isdigit():
                    index.sequence_regions[_decode(parts[1])] = int(parts[3])
            continue
        if line[0] == ">":
            break
        cols = line.split("\t")
        if len(cols) != 9:
            raise InputError(f"{path}: line {lineno}: expected 9 tab-separated columns, found {len(cols)}")
        seqid_s, source, type_s, start_s, end_s, score_s, strand, phase_s, attr_s = cols
        try:
            start, end = int(start_s), int(end_s)
            ok = 0 < start <= end <= MAX_COORDINATE
        except ValueError:
            ok = False
        if not ok or strand not in _STRANDS or phase_s not in _PHASES:
            start, end = _check_columns(cols, path, lineno)
        score = None if score_s == "." else _score(score_s, path, lineno)
        if features is None:
            id_, parents, exception, is_circular = _lean_attributes(attr_s, path, lineno)
        else:
            attrs, parents = _attributes(attr_s, path, lineno)
            id_, exception, is_circular = attrs.get("ID"), attrs.get("exception"), attrs.get("Is_circular")

        sid = seqid_codes.get(seqid_s)
        if sid is None:
            seqid = _decode(seqid_s)
            sid = seqid_codes[seqid_s] = index._seqid(seqid)
            if checked:
                lengths[sid] = seq_lengths.get(seqid)
                if lengths[sid] is None:
                    missing.setdefault(seqid, lineno)
        code = type_codes.get(type_s)
        if code is None:
            code = type_codes[type_s] = index._type(_decode(type_s))
        if checked:
            length = lengths[sid]
            if length is not None and end > length:
                where = (lineno, code, start, end, sid)
                if start <= length and end - start < length:
                    wraps.setdefault(sid, where)
                elif beyond is None:
                    beyond = where
        if is_circular is not None and is_circular.lower() == "true" and index.types[code] == "region":
            circular.add(index.seqids[sid])
        add(sid, code, start - 1, end, strand, lineno, id_, parents,
            exception is not None and _mentions_trans_splicing(exception))
        if features is not None:
            features.append(Feature(index.seqids[sid], source, index.types[code], start - 1, end, strand, score,
                                    _PHASES[phase_s], attrs, id_, parents, lineno))
        n += 1
    if not n and not saw_header:
        raise InputError(f"{path}: no GFF3 features and no ##gff-version header (empty or not a GFF3 file)")
    index.circular = frozenset(circular)

    if checked:
        if missing:
            known = ", ".join(list(seq_lengths)[:3]) + (", ..." if len(seq_lengths) > 3 else "")
            raise InputError(f"{path}: {len(missing)} seqid(s) are not records of the FASTA: "
                             f"{_few(list(missing.items()))}; the FASTA has {len(seq_lengths)} record(s): "
                             f"{known}")
        overhangs = [w for sid, w in wraps.items() if index.seqids[sid] not in circular]
        if beyond is not None:
            overhangs.append(beyond)
        if overhangs:
            lineno, code, start, end, sid = min(overhangs)
            raise InputError(f"{path}: line {lineno}: {index.types[code]} {start}..{end} extends beyond the end "
                             f"of '{index.seqids[sid]}' (length {lengths[sid]:,})")

    undefined, unknown = index._finish()
    if undefined is not None:
        raise InputError(f"{path}: line {undefined[0]}: {undefined[2]}")
    index.unknown_types = dict(unknown)
    if unknown:
        listed = ", ".join(f"{t} ({n})" for t, n in unknown[:8])
        more = ", ..." if len(unknown) > 8 else ""
        warnings.warn(f"{path}: {sum(n for _, n in unknown)} feature(s) of {len(unknown)} unknown type(s) are not "
                      f"used for region classes: {listed}{more}", GffWarning, stacklevel=3)


def read_gff3(path: str | os.PathLike, seq_lengths: dict[str, int] | None = None) -> Annotation:
    """Parse a GFF3 file (plain or gzip) into an :class:`Annotation`.

    ``seq_lengths`` (``{record name: length}``), when given, is checked: every seqid must be a
    record and every feature must lie within its record (see the module docstring for circular
    records). Raises :class:`InputError` naming the file and line for malformed input.
    """
    features: list[Feature] = []
    index = GffIndex(str(path), _MemoryStore())
    _read(path, seq_lengths, index, features)
    ann = Annotation(str(path), features, dict(index.sequence_regions), dict(index.unknown_types),
                     circular=index.circular)
    ann._index = index
    return ann


def index_gff3(path: str | os.PathLike, seq_lengths: dict[str, int] | None = None) -> GffIndex:
    """Parse and check a GFF3 file like :func:`read_gff3`, keeping only what region classes use.

    Returns a :class:`GffIndex` whose tables live in an unnamed temporary file (close it when
    done); the memory it holds does not grow with the number of features.
    """
    index = GffIndex(str(path), _FileStore())
    try:
        _read(path, seq_lengths, index, None)
    except BaseException:
        index.close()
        raise
    return index


@dataclass
class Annotation:
    """The features of a GFF3 file and their Parent hierarchy."""

    path: str
    features: list[Feature]
    sequence_regions: dict[str, int] = field(default_factory=dict)
    """Lengths given by ``##sequence-region`` directives (``seqid -> end``)."""
    unknown_types: dict[str, int] = field(default_factory=dict)
    """Counts of features whose type is not used for region classes (see the module docstring)."""
    circular: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self._by_seqid: dict[str, list[Feature]] = defaultdict(list)
        self._by_id: dict[str, list[Feature]] = defaultdict(list)
        self._children: dict[str, list[Feature]] = defaultdict(list)
        self._index: GffIndex | None = None
        for f in self.features:
            self._by_seqid[f.seqid].append(f)
            if f.id is not None:
                self._by_id[f.id].append(f)
            for p in f.parents:
                self._children[p].append(f)

    @property
    def index(self) -> GffIndex:
        """The features as a :class:`GffIndex` in memory (what region tracks read)."""
        if self._index is None:
            self._index = GffIndex.from_features(self.features, self.path, self.circular, self.sequence_regions)
        return self._index

    @property
    def seqids(self) -> list[str]:
        """Seqids in order of first appearance."""
        return list(self._by_seqid)

    @property
    def type_counts(self) -> dict[str, int]:
        return dict(Counter(f.type for f in self.features))

    def on(self, seqid: str) -> list[Feature]:
        """Features on ``seqid`` in file order (empty if none)."""
        return self._by_seqid.get(seqid, [])

    def get(self, id_: str) -> list[Feature]:
        """All lines of the feature with ID ``id_`` (several for a multi-line feature)."""
        return self._by_id.get(id_, [])

    def children(self, id_: str) -> list[Feature]:
        """Features whose ``Parent`` includes ``id_``."""
        return self._children.get(id_, [])

    def is_circular(self, seqid: str) -> bool:
        return seqid in self.circular

    def __len__(self) -> int:
        return len(self.features)
