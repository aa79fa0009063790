"""Per-base region classes of a genome record from its GFF3 annotation and soft-masking.

Public API
----------
``REGION_CLASSES``
    Class names in id order: 0 intergenic, 1 CDS, 2 UTR, 3 exon_other, 4 intron, 5 promoter,
    6 repeat, 7 N (the ids stored in bits 0-6 of a prepared dataset's ``regions.u8``).
``SOFTMASK_BIT = 0x80``, ``CLASS_MASK = 0x7F``
    Bit 7 of a track byte is set where the source base is lower case (soft-masked).
``region_track(annotation, record, length, seq=None, promoter_window=1000) -> np.ndarray``
    ``(length,)`` uint8: class id | SOFTMASK_BIT for every base of ``record``; ``annotation`` is an
    :class:`~dnalm.genome.gff.Annotation`, a :class:`~dnalm.genome.gff.GffIndex` or None.
``class_counts(track) -> dict[str, int]``
    Bases per class name (the soft-mask bit is ignored).

Class rules
-----------
Where classes overlap, the first in this order wins: CDS > UTR > exon_other > intron >
promoter > repeat > intergenic. A base that is not A/C/G/T (``N`` or another IUPAC ambiguity
code, either case; these all become the N token) is class ``N`` whatever the annotation says.

*Transcripts.* A transcript is a feature whose type ends in ``RNA`` or ``transcript`` (mRNA,
tRNA, lnc_RNA, snoRNA, transcript, ...; see :func:`dnalm.genome.gff.is_transcript_type`), or any
feature that is the Parent of exon, CDS or UTR features. A gene whose children include
transcripts is not itself a transcript: CDS attached directly to it (as NCBI writes ribosomal
slippage in yeast Ty genes) mark all its transcripts as coding. A gene with CDS children and no
transcript (also seen in NCBI yeast files) is its own transcript. A gene with no children at all
is taken as a single-exon non-coding transcript. The exons of a transcript are its ``exon``
children; if it has none, its CDS and UTR children; if it has none of those either, its own
extent.

*CDS*: every CDS feature. *UTR*: ``five_prime_UTR``/``three_prime_UTR``/``UTR`` features, and
the exon bases of coding transcripts (those with CDS) outside CDS. *exon_other*: exons of
transcripts without CDS (ncRNA, tRNA, rRNA, snoRNA, ...). *intron*: the gaps between
consecutive exons of one transcript, and ``intron`` features. For a trans-spliced transcript
(an ``exception`` attribute mentioning trans-splicing, as in NCBI organelle files, or exons on
both strands) only consecutive exons in file order that are collinear on one strand enclose an
intron, so the gap between trans-spliced pieces is not called intron. *promoter*: the
``promoter_window`` bases upstream of each transcript start (before ``start`` on ``+``, after
``end`` on ``-``; none when the transcript strand is unknown), and ``promoter`` features.
*repeat*: features of the repeat types in :data:`dnalm.genome.gff.REPEAT_TYPES` (repeat_region,
transposable_element, LTR, long_terminal_repeat, mobile_genetic_element, ...), and soft-masked
(lower-case) bases of ``seq``. *intergenic*: everything else.

Intervals that run past the record end are clipped, or, on a record marked circular in the
GFF3 (``Is_circular=true``), wrapped around the origin (promoter windows too).

How it is computed: the record's features come as columns (:meth:`dnalm.genome.gff.GffIndex.table`,
per-name facts such as "has transcript children" already resolved over the whole file), and
transcripts, their exons, introns and promoters are found with array operations on them (only
trans-spliced transcripts are walked one by one). Every class is painted as merged intervals with
slice assignment in reverse priority order onto a zero track; the bases' own classes (N,
soft-masked repeat, the soft-mask bit) come from one byte-translation of the sequence and are
combined with it in a few whole-array operations.
"""

from __future__ import annotations

import numpy as np

from dnalm.genome.gff import (
    CDS_TYPES,
    CHILD,
    EXON_TYPES,
    GENE_TYPES,
    INTRON_TYPES,
    PROMOTER_TYPES,
    REPEAT_TYPES,
    TRANSCRIPT_CHILD,
    UTR_TYPES,
    Annotation,
    FeatureTable,
    GffIndex,
    is_transcript_type,
)

__all__ = ["CLASS_IDS", "CLASS_MASK", "REGION_CLASSES", "SOFTMASK_BIT", "class_counts", "region_track"]

REGION_CLASSES: tuple[str, ...] = (
    "intergenic", "CDS", "UTR", "exon_other", "intron", "promoter", "repeat", "N",
)
CLASS_IDS: dict[str, int] = {name: i for i, name in enumerate(REGION_CLASSES)}
SOFTMASK_BIT = 0x80
CLASS_MASK = 0x7F

_N = CLASS_IDS["N"]


def _base_classes(soft_acgt: int) -> bytes:
    """Translation table byte -> track byte from the base alone: 0 for A/C/G/T, ``soft_acgt`` for
    a/c/g/t, N | soft-mask for other lower-case letters, N for everything else."""
    table = bytearray([_N]) * 256
    for b in b"ACGT":
        table[b] = 0
    for b in range(ord("a"), ord("z") + 1):
        table[b] = _N | SOFTMASK_BIT
    for b in b"acgt":
        table[b] = soft_acgt
    return bytes(table)


_REPEAT_ID = CLASS_IDS["repeat"]
_BASE_CLASS = _base_classes(_REPEAT_ID | SOFTMASK_BIT)  # the track of a base without annotation
# the same with soft-masked bases as the bare bit: OR-ed onto painted classes 1-6, it keeps N (7 | x = 7)
# and the soft-mask bit; a soft-masked base that no class covers comes out as the bare bit, then repeat
_BASE_BITS = _base_classes(SOFTMASK_BIT)

# feature categories of the direct class rules
_OTHER, _CDS, _EXON, _UTR, _INTRON, _PROMOTER, _REPEAT = range(7)
_PLUS, _MINUS = ord("+"), ord("-")

Intervals = list[tuple[np.ndarray, np.ndarray]]


def _category(type_: str) -> int:
    for category, types in ((_CDS, CDS_TYPES), (_UTR, UTR_TYPES), (_INTRON, INTRON_TYPES),
                            (_PROMOTER, PROMOTER_TYPES), (_REPEAT, REPEAT_TYPES), (_EXON, EXON_TYPES)):
        if type_ in types:
            return category
    return _OTHER


def _any_by(groups: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    """``(size,)`` bool: whether any of ``values`` is true in each group (``groups`` holds group ids)."""
    return np.bincount(groups, weights=values, minlength=size) > 0


def _layers(table: FeatureTable, types: list[str], promoter_window: int) -> dict[str, Intervals]:
    """Intervals ``(starts, ends)`` of every class on one record (before clipping and merging)."""
    layers: dict[str, Intervals] = {name: [] for name in REGION_CLASSES}
    n, k = len(table), len(table.names)
    start, end, strand = table.start, table.end, table.strand

    def add(name: str, rows: np.ndarray) -> None:
        layers[name].append((start[rows], end[rows]))

    cat = np.array([_category(t) for t in types], np.int8)[table.type]
    gene_type = np.array([t in GENE_TYPES for t in types], bool)
    is_gene = gene_type[table.type]
    is_transcript = np.array([is_transcript_type(t) for t in types], bool)[table.type]
    for name, category in (("CDS", _CDS), ("UTR", _UTR), ("intron", _INTRON), ("promoter", _PROMOTER),
                           ("repeat", _REPEAT)):
        add(name, cat == category)
    add("exon_other", (cat == _EXON) & (table.n_parents == 0))

    # per-name columns with one extra entry at index k for "no name"
    first_type = np.append(table.first_type, -1)
    children = np.append(table.children, 0)
    pair_row, pair_name = table.parent_rows(), table.parent  # (m,) every (row, parent) link

    # parts (exon, CDS, UTR) and the names they hang on; a gene with transcripts is not a transcript
    is_part = (cat == _CDS) | (cat == _EXON) | (cat == _UTR)
    links = is_part[pair_row]
    part_row, part_name = pair_row[links], pair_name[links]
    part_cat = cat[part_row]
    gene_with_transcripts = ((first_type >= 0) & gene_type[np.maximum(first_type, 0)]
                             & (children & TRANSCRIPT_CHILD > 0))
    on_gene = gene_with_transcripts[part_name]
    coding_gene = np.zeros(k + 1, bool)
    coding_gene[part_name[on_gene & (part_cat == _CDS)]] = True
    coding_parent = _any_by(pair_row, coding_gene[pair_name], n)  # (n,) a parent is a coding gene
    gene_parts = part_row[on_gene & (part_cat != _CDS)]
    add("UTR", gene_parts[coding_parent[gene_parts]])
    add("exon_other", gene_parts[~coding_parent[gene_parts]])

    # transcripts: (a) names with parts, (b) other transcript-type or childless gene features, one per ID
    part_row, part_name, part_cat = part_row[~on_gene], part_name[~on_gene], part_cat[~on_gene]
    part_names = np.unique(part_name)
    has_id = table.id >= 0
    name_of = np.where(has_id, table.id, k)
    from_parts = np.zeros(k + 1, bool)
    from_parts[part_names] = True
    bare_gene = is_gene & (children[name_of] & CHILD == 0)
    own = np.flatnonzero((is_transcript | bare_gene) & ~from_parts[name_of])
    own_names = np.unique(name_of[own[has_id[own]]])
    unnamed = own[~has_id[own]]
    n_named = len(part_names) + len(own_names)
    n_tx = n_named + len(unnamed)
    if n_tx == 0:
        return layers
    tx_of_name = np.full(k + 1, -1, np.int64)
    tx_of_name[part_names] = np.arange(len(part_names))
    tx_of_name[own_names] = np.arange(len(part_names), n_named)

    # the lines of each transcript (f_*) and its exons (e_*): the exon parts, else its CDS then UTR
    # parts, and for (b) the lines themselves
    named_rows = np.flatnonzero(tx_of_name[name_of] >= 0)
    f_row = np.concatenate([named_rows, unnamed])
    f_tx = np.concatenate([tx_of_name[name_of[named_rows]], np.arange(n_named, n_tx)])
    p_tx = tx_of_name[part_name]
    has_exons = np.zeros(n_tx, bool)
    has_exons[p_tx[part_cat == _EXON]] = True
    keep = (part_cat == _EXON) | ~has_exons[p_tx]
    own_lines = f_tx >= len(part_names)
    e_row = np.concatenate([part_row[keep], f_row[own_lines]])
    e_tx = np.concatenate([p_tx[keep], f_tx[own_lines]])
    e_rank = np.concatenate([(part_cat[keep] == _UTR).astype(np.int8), np.zeros(int(own_lines.sum()), np.int8)])

    coding = np.zeros(n_tx, bool)
    coding[p_tx[part_cat == _CDS]] = True
    coding |= _any_by(f_tx, coding_parent[f_row], n_tx)
    parent_trans = _any_by(pair_row, table.name_trans_spliced[pair_name], n)
    trans = _any_by(f_tx, table.trans_spliced[f_row] | parent_trans[f_row], n_tx)
    e_plus = _any_by(e_tx, strand[e_row] == _PLUS, n_tx)
    e_minus = _any_by(e_tx, strand[e_row] == _MINUS, n_tx)
    trans |= e_plus & e_minus
    n_lines = np.bincount(f_tx, minlength=n_tx)
    plus = np.where(n_lines > 0, _any_by(f_tx, strand[f_row] == _PLUS, n_tx), e_plus)
    minus = np.where(n_lines > 0, _any_by(f_tx, strand[f_row] == _MINUS, n_tx), e_minus)
    forward, reverse = plus & ~minus, minus & ~plus

    exon_coding = coding[e_tx]
    add("UTR", e_row[exon_coding])
    add("exon_other", e_row[~exon_coding])
    layers["intron"] += _cis_introns(start, end, e_row[~trans[e_tx]], e_tx[~trans[e_tx]])
    spliced = trans[e_tx]
    if spliced.any():
        layers["intron"] += _trans_introns(table, e_row[spliced], e_tx[spliced], e_rank[spliced],
                                           np.where(forward, _PLUS, np.where(reverse, _MINUS, 0)))

    if promoter_window:
        lo = np.full(n_tx, np.iinfo(np.int64).max)
        hi = np.full(n_tx, np.iinfo(np.int64).min)
        np.minimum.at(lo, f_tx, start[f_row])
        np.maximum.at(hi, f_tx, end[f_row])
        by_exons = (n_lines == 0)[e_tx]
        np.minimum.at(lo, e_tx[by_exons], start[e_row[by_exons]])
        np.maximum.at(hi, e_tx[by_exons], end[e_row[by_exons]])
        layers["promoter"].append((lo[forward] - promoter_window, lo[forward]))
        layers["promoter"].append((hi[reverse], hi[reverse] + promoter_window))
    return layers


def _cis_introns(start: np.ndarray, end: np.ndarray, rows: np.ndarray, tx: np.ndarray) -> Intervals:
    """Gaps between the exons (``rows``) of each transcript (``tx``), exons taken in coordinate order."""
    if rows.size < 2:
        return []
    order = np.lexsort((start[rows], tx))
    rows, tx = rows[order], tx[order]
    s, e = start[rows], end[rows]
    span = int(e.max()) + 1  # transcript offsets keep the running maximum inside each transcript
    reach = np.maximum.accumulate(e + tx * span) - tx * span
    gap = (tx[1:] == tx[:-1]) & (s[1:] > reach[:-1])
    return [(reach[:-1][gap], s[1:][gap])]


def _trans_introns(table: FeatureTable, rows: np.ndarray, tx: np.ndarray, rank: np.ndarray,
                   tx_strand: np.ndarray) -> Intervals:
    """Introns of trans-spliced transcripts: between consecutive exons in file order that lie on one strand."""
    order = np.lexsort((rows, rank, tx))
    rows, tx = rows[order].tolist(), tx[order].tolist()
    start, end, strand = table.start.tolist(), table.end.tolist(), table.strand
    starts, ends = [], []
    for i in range(1, len(rows)):
        if tx[i] != tx[i - 1]:
            continue
        prev, nxt, own = rows[i - 1], rows[i], int(tx_strand[tx[i]])
        sp = int(strand[prev]) if strand[prev] in (_PLUS, _MINUS) else own
        sn = int(strand[nxt]) if strand[nxt] in (_PLUS, _MINUS) else own
        if sp != sn:
            continue
        if sp == _PLUS and start[nxt] > end[prev]:
            starts.append(end[prev])
            ends.append(start[nxt])
        elif sp == _MINUS and end[nxt] < start[prev]:
            starts.append(end[nxt])
            ends.append(start[prev])
    return [(np.array(starts, np.int64), np.array(ends, np.int64))]


def _normalise(intervals: Intervals, length: int, circular: bool) -> tuple[np.ndarray, np.ndarray]:
    """Clip (or wrap, on a circular record) intervals to ``[0, length)`` and merge overlaps.

    Returns sorted, disjoint ``starts, ends`` int64 arrays of shape ``(k,)``.
    """
    starts = np.concatenate([s for s, _ in intervals] + [np.zeros(0, np.int64)]).astype(np.int64, copy=False)
    ends = np.concatenate([e for _, e in intervals] + [np.zeros(0, np.int64)]).astype(np.int64, copy=False)
    if starts.size == 0:
        return starts, ends
    if circular:
        ends = np.minimum(ends, starts + length)
        over = ends > length
        under = starts < 0
        starts = np.concatenate([starts, np.zeros(int(over.sum()), np.int64), starts[under] + length])
        ends = np.concatenate([ends, ends[over] - length, np.full(int(under.sum()), length, np.int64)])
    starts = np.clip(starts, 0, length)
    ends = np.clip(ends, 0, length)
    keep = ends > starts
    starts, ends = starts[keep], ends[keep]
    if starts.size == 0:
        return starts, ends
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    reach = np.maximum.accumulate(ends)
    new = np.ones(starts.size, dtype=bool)
    new[1:] = starts[1:] > reach[:-1]
    group_end = np.r_[np.flatnonzero(new)[1:] - 1, starts.size - 1]
    return starts[new], reach[group_end]


def region_track(annotation: Annotation | GffIndex | None, record: str, length: int,
                 seq: bytes | None = None, promoter_window: int = 1000) -> np.ndarray:
    """Region class of every base of ``record`` (see the module docstring for the rules).

    Args:
        annotation: a parsed GFF3 (:func:`dnalm.genome.gff.read_gff3` or
            :func:`dnalm.genome.gff.index_gff3`), or None for a genome without annotation; features
            on other records are ignored, and a record without features is intergenic apart from
            its N and soft-masked bases.
        record: the record (FASTA name, GFF3 seqid).
        length: number of bases of the record.
        seq: the record's bases ``(length,)`` (case preserved); adds the N class, soft-masked
            repeats and the soft-mask bit. Without it no base is N or soft-masked.
        promoter_window: bases upstream of each transcript start labelled promoter (>= 0).

    Returns:
        ``(length,)`` uint8: class id (bits 0-6) | :data:`SOFTMASK_BIT` where ``seq`` is lower case.
    """
    if seq is not None and len(seq) != length:
        raise ValueError(f"record '{record}': seq has {len(seq)} bases but length is {length}")
    if promoter_window < 0:
        raise ValueError(f"promoter_window must be >= 0, got {promoter_window}")
    index = annotation.index if isinstance(annotation, Annotation) else annotation
    track = np.zeros(length, dtype=np.uint8)
    painted = False
    table = index.table(record) if index is not None else None
    if table is not None and len(table):
        layers = _layers(table, index.types, promoter_window)
        circular = index.is_circular(record)
        for name in ("repeat", "promoter", "intron", "exon_other", "UTR", "CDS"):
            starts, ends = _normalise(layers[name], length, circular)
            class_id = CLASS_IDS[name]
            for s, e in zip(starts.tolist(), ends.tolist()):
                track[s:e] = class_id
            painted = painted or starts.size > 0
    if seq is None:
        return track
    if not painted:
        return np.frombuffer(bytes(seq).translate(_BASE_CLASS), dtype=np.uint8).copy()
    track |= np.frombuffer(bytes(seq).translate(_BASE_BITS), dtype=np.uint8)
    track += (track == SOFTMASK_BIT).view(np.uint8) * np.uint8(_REPEAT_ID)
    return track


def class_counts(track: np.ndarray) -> dict[str, int]:
    """Bases per region class of a track ``(length,)`` uint8, soft-mask bit ignored."""
    counts = np.bincount(np.asarray(track, dtype=np.uint8) & CLASS_MASK, minlength=len(REGION_CLASSES))
    if counts.size > len(REGION_CLASSES):
        raise ValueError(f"track holds class ids up to {counts.size - 1}, beyond {len(REGION_CLASSES) - 1}")
    return {name: int(n) for name, n in zip(REGION_CLASSES, counts)}
