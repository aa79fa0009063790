"""Train / validation / test splits of a genome, and how much they leak.

A split assigns 0-based half-open intervals ``(record, start, end)`` of the genome's records to
``train``, ``val`` and ``test``. Four strategies (``SplitSpec.strategy``):

``records``
    explicit record lists: ``val`` and ``test`` name records, every other record is train
    (e.g. yeast R64: val ``BK006947.3``, test ``BK006948.2, BK006949.2``). In a blend of several
    genomes, whose records are named ``<genome>:<record>``, a bare record name selects that
    record in every genome.
``fraction``
    a seeded random choice of whole records: ``round(fraction * n_records)`` of them (at least
    one when the fraction is positive) for val and for test.
``intervals``
    held-out intervals, written ``record:start-end`` (1-based, inclusive, as samtools and genome
    browsers write regions; a bare record name holds out the whole record); train is the rest of
    every record, minus ``gap`` bases on each side of a held-out interval.
``homology``
    for polyploid genomes, whose homologous chromosomes are near-identical: records are grouped
    and a group never straddles splits. Groups come from a naming pattern (``group_by=pattern``:
    a regex whose first capture group names the group, found with ``re.search``; the default
    turns ``Chr1A`` .. ``Chr1H`` into ``Chr1``), from a TSV file (``group_by=tsv``:
    ``record<TAB>group`` lines) or from shared k-mer content (``group_by=auto``: single-linkage
    clustering of records whose k-mer Jaccard similarity reaches ``threshold``). ``val`` and
    ``test`` then name groups (or records, which bring their whole group); without them a
    seeded fraction of the groups is held out.

Leakage is the fraction of the distinct canonical k-mers (``k = 31`` by default, both strands)
of a held-out split that also occur in train. :func:`naive_split` draws the random record split
with as many held-out records as a given split, so a report can show what the chosen split
saves. On large genomes k-mer sets are FracMinHash sketches (Irber et al. 2022, "Lightweight
compositional analysis of metagenomes with FracMinHash and minimum metagenome covers",
bioRxiv 10.1101/2022.01.11.475838): only k-mers whose hash falls below ``2**64 / scale`` are
kept, which leaves Jaccard similarity and containment unbiased while bounding memory.

Sequences are given as a mapping ``record -> (length,) uint8 array`` of either ASCII bases or
``CharTokenizer`` ids (A 7, C 8, G 9, T 10, N 11); anything but A, C, G, T ends a k-mer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dnalm.errors import ConfigError, InputError

SPLIT_NAMES = ("train", "val", "test")
STRATEGIES = ("records", "fraction", "intervals", "homology")
GROUP_SOURCES = ("pattern", "tsv", "auto")
DEFAULT_GROUP_PATTERN = r"([A-Za-z_]*\d+)[A-Za-z]$"

Interval = tuple[str, int, int]


@dataclass
class SplitSpec:
    """How to split; the ``split`` node of ``conf/prepare.yaml`` (see the module docstring)."""

    strategy: str = "records"
    val: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    gap: int = 0
    group_by: str = "pattern"
    pattern: str = DEFAULT_GROUP_PATTERN
    groups_tsv: str | None = None
    sketch_k: int = 21
    threshold: float = 0.3
    ignore_softmasked: bool = True
    leakage_k: int = 31
    max_hashes: int = 1_000_000

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad option."""
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"split.strategy: '{self.strategy}' is not one of {', '.join(STRATEGIES)}")
        if self.group_by not in GROUP_SOURCES:
            raise ConfigError(f"split.group_by: '{self.group_by}' is not one of {', '.join(GROUP_SOURCES)}")
        for key in ("val_fraction", "test_fraction"):
            value = getattr(self, key)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"split.{key}: {value} is not in [0, 1)")
        if self.gap < 0:
            raise ConfigError(f"split.gap: {self.gap} is negative")
        for key in ("sketch_k", "leakage_k"):
            if getattr(self, key) < 1:
                raise ConfigError(f"split.{key}: must be at least 1")
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"split.threshold: {self.threshold} is not in (0, 1]")
        if self.max_hashes < 1000:
            raise ConfigError(f"split.max_hashes: {self.max_hashes} is below 1000")
        if self.strategy == "homology" and self.group_by == "pattern":
            try:
                compiled = re.compile(self.pattern)
            except re.error as exc:
                raise ConfigError(f"split.pattern: '{self.pattern}' is not a valid regex ({exc})") from None
            if compiled.groups < 1:
                raise ConfigError(f"split.pattern: '{self.pattern}' needs a capture group naming the group")
        if self.strategy == "homology" and self.group_by == "tsv" and not self.groups_tsv:
            raise ConfigError("split.groups_tsv: group_by=tsv needs a 'record<TAB>group' file")


@dataclass(frozen=True)
class Split:
    """Intervals per split name; ``groups`` {group: [records]} when the split is homology-aware."""

    strategy: str
    intervals: dict[str, list[Interval]]
    groups: dict[str, list[str]] | None = None

    def bases(self, name: str) -> int:
        return sum(end - start for _, start, end in self.intervals[name])

    def records(self, name: str) -> list[str]:
        """Distinct records with an interval in split ``name``, in order of first appearance."""
        return list(dict.fromkeys(rec for rec, _, _ in self.intervals[name]))

    def to_json(self) -> dict:
        """The content of ``splits.json`` (DESIGN.md, "Prepared dataset directory")."""
        out: dict = {
            "strategy": self.strategy,
            "splits": {n: [[rec, int(s), int(e)] for rec, s, e in self.intervals[n]] for n in SPLIT_NAMES},
        }
        if self.groups is not None:
            out["groups"] = {g: list(recs) for g, recs in self.groups.items()}
        return out

    @classmethod
    def from_json(cls, data: Mapping) -> Split:
        splits = data["splits"]
        intervals = {n: [(str(r), int(s), int(e)) for r, s, e in splits.get(n, [])] for n in SPLIT_NAMES}
        groups = data.get("groups")
        return cls(str(data["strategy"]), intervals, None if groups is None else dict(groups))


# ----------------------------------------------------------------------------------------------
# Canonical k-mer hashing (vectorised; Karp & Rabin 1987 polynomial hash modulo 2**64)
# ----------------------------------------------------------------------------------------------

A_ID, N_ID = 7, 11  # CharTokenizer ids of A (C, G, T follow) and N
_CODE = np.full(256, 4, dtype=np.uint8)
for _i, _b in enumerate(b"ACGT"):
    _CODE[_b] = _CODE[_b + 32] = _CODE[A_ID + _i] = _i

_BASE = 0x9E3779B97F4A7C15  # odd, so invertible modulo 2**64
_CHUNK = 1 << 16  # positions hashed at a time: the arrays stay in the CPU cache
_S33, _M1, _M2 = np.uint64(33), np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)
_POWERS: list[np.ndarray] = []


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``B**i`` and ``B**-i`` modulo 2**64 for i < n (or more): two (>= n,) uint64 arrays."""
    if not _POWERS or len(_POWERS[0]) < n:
        inv = pow(_BASE, -1, 1 << 64)
        with np.errstate(over="ignore"):
            fwd = np.cumprod(np.full(n - 1, _BASE, np.uint64), dtype=np.uint64)
            bwd = np.cumprod(np.full(n - 1, inv, np.uint64), dtype=np.uint64)
        one = np.ones(1, np.uint64)
        _POWERS[:] = [np.concatenate([one, fwd]), np.concatenate([one, bwd])]
    return _POWERS[0], _POWERS[1]


def _chunk_hashes(codes: np.ndarray, k: int, bad: np.ndarray) -> np.ndarray:
    """Canonical hashes of the k-mers of one chunk that contain no bad base.

    ``codes`` (L,) uint8 in 0..3 (anything where ``bad`` is set is ignored); returns (<= L-k+1,) uint64.
    With ``x`` a k-mer, ``W(x) = sum_t x_t B**t`` and ``W(revcomp(x)) = sum_t (3 - x_{k-1-t}) B**t``
    both come from prefix sums; ``min(W(x), W(revcomp(x)))`` is the same on both strands, and
    MurmurHash3's 64-bit finaliser (a bijection) makes its bits uniform for FracMinHash.
    """
    n = len(codes)
    if n < k:
        return np.empty(0, np.uint64)
    pw, pinv = _powers(_CHUNK + k)
    codes = np.where(bad, np.uint8(0), codes) if bad.any() else codes
    prefix = np.zeros(n + 1, np.uint64)
    tmp = np.multiply(codes, pw[:n])
    np.cumsum(tmp, out=prefix[1:])
    fwd = prefix[k:] - prefix[:-k]
    fwd *= pinv[: n - k + 1]
    np.multiply(np.uint8(3) - codes, pinv[:n], out=tmp)
    np.cumsum(tmp, out=prefix[1:])
    rev = np.subtract(prefix[k:], prefix[:-k], out=tmp[: n - k + 1])
    rev *= pw[k - 1 : n]
    np.minimum(fwd, rev, out=fwd)
    if bad.any():
        nbad = np.zeros(n + 1, np.int32)
        np.cumsum(bad, out=nbad[1:])
        h = fwd[nbad[k:] == nbad[:-k]]
    else:
        h = fwd
    h ^= h >> _S33
    h *= _M1
    h ^= h >> _S33
    h *= _M2
    h ^= h >> _S33
    return h


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a 1-d array (``np.unique`` without its slow hashing path)."""
    if len(values) == 0:
        return values
    s = np.sort(values)
    keep = np.empty(len(s), bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def kmer_sketch(seq: np.ndarray, k: int, scale: int = 1, mask: np.ndarray | None = None) -> np.ndarray:
    """Sorted distinct canonical k-mer hashes of ``seq``, FracMinHash-subsampled by ``scale``.

    ``seq`` (L,) uint8 ASCII bases or CharTokenizer ids; ``mask`` (L,) bool, True where a base is
    to be ignored (e.g. soft-masked repeats). k-mers containing N, an ambiguity code or a masked
    base are skipped. ``scale = 1`` keeps every k-mer; ``scale = s`` keeps those whose hash is
    below ``2**64 / s``, the same k-mers in every sequence. Returns (M,) uint64.
    """
    threshold = None if scale <= 1 else np.uint64((1 << 64) // scale)
    parts = []
    n = len(seq)
    for start in range(0, max(n - k + 1, 0), _CHUNK):
        stop = min(start + _CHUNK + k - 1, n)
        piece = np.asarray(seq[start:stop], dtype=np.uint8)
        if piece.max() <= N_ID:
            codes = piece - np.uint8(A_ID)  # ids below A wrap around to large values
            bad = codes > 3
        else:
            codes = _CODE[piece]
            bad = codes == 4
        if mask is not None:
            bad |= np.asarray(mask[start:stop], dtype=bool)
        h = _chunk_hashes(codes, k, bad)
        parts.append(h[h < threshold] if threshold is not None else h)
    if not parts:
        return np.empty(0, np.uint64)
    return sorted_unique(np.concatenate(parts))


def scale_for(total_bases: int, max_hashes: int) -> int:
    """The FracMinHash scale that keeps about ``max_hashes`` k-mers of a genome of ``total_bases``."""
    return max(1, math.ceil(total_bases / max_hashes))


class KmerSets:
    """Cached k-mer sketches of intervals: ``sets.of((record, start, end)) -> (M,) uint64``."""

    def __init__(self, seqs: Mapping[str, np.ndarray], k: int, scale: int = 1,
                 masks: Mapping[str, np.ndarray] | None = None):
        self.seqs, self.k, self.scale, self.masks = seqs, k, scale, masks
        self._cache: dict[Interval, np.ndarray] = {}

    def of(self, interval: Interval) -> np.ndarray:
        if interval not in self._cache:
            rec, start, end = interval
            mask = None if self.masks is None else self.masks[rec][start:end]
            self._cache[interval] = kmer_sketch(self.seqs[rec][start:end], self.k, self.scale, mask)
        return self._cache[interval]

    def union(self, intervals: Iterable[Interval]) -> np.ndarray:
        parts = [self.of(iv) for iv in intervals]
        if not parts:
            return np.empty(0, np.uint64)
        return sorted_unique(np.concatenate(parts))


def containment(query: np.ndarray, reference: np.ndarray) -> float:
    """Fraction of the sorted distinct values ``query`` (M,) present in sorted ``reference`` (R,)."""
    if len(query) == 0:
        return float("nan")
    if len(reference) == 0:
        return 0.0
    idx = np.searchsorted(reference, query)
    idx[idx == len(reference)] = 0
    return float(np.count_nonzero(reference[idx] == query)) / len(query)


def leakage(split: Split, kmers: KmerSets) -> dict[str, float]:
    """Fraction of the distinct canonical k-mers of val and of test that also occur in train.

    Returns {"val": f, "test": f}; NaN for an empty split.
    """
    train = kmers.union(split.intervals["train"])
    return {n: containment(kmers.union(split.intervals[n]), train) for n in ("val", "test")}


# ----------------------------------------------------------------------------------------------
# Homology groups
# ----------------------------------------------------------------------------------------------

def groups_from_pattern(names: Sequence[str], pattern: str = DEFAULT_GROUP_PATTERN) -> dict[str, list[str]]:
    """Group records by the first capture group of ``re.search(pattern, name)``.

    A record the pattern does not match is a group of its own, named after it. With the default
    pattern ``Chr1A``, ``Chr1B`` and ``R570:Chr1C`` all fall into group ``Chr1``.
    """
    regex = re.compile(pattern)
    groups: dict[str, list[str]] = {}
    for name in names:
        m = regex.search(name)
        key = m.group(1) if m and m.group(1) else name
        groups.setdefault(key, []).append(name)
    return groups


def read_groups_tsv(path: str | Path, names: Sequence[str]) -> dict[str, list[str]]:
    """Groups from a ``record<TAB>group`` file (``#`` comments, blank lines and a first line
    ``record<TAB>group`` as a header are allowed; ``dnalm synth`` writes such a file).

    A TSV record matches a record of the same name, or, in a blend of several genomes, every
    record ``genome:record``. Records the file does not name are groups of their own.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: groups TSV not found")
    by_bare: dict[str, list[str]] = {}
    for name in names:
        by_bare.setdefault(name, []).append(name)
        if ":" in name:
            by_bare.setdefault(name.split(":", 1)[1], []).append(name)
    group_of: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split("\t")
            if lineno == 1 and [f.strip().lower() for f in fields[:2]] == ["record", "group"]:
                continue
            if len(fields) < 2 or not fields[0] or not fields[1]:
                raise InputError(f"{path}:{lineno}: expected 'record<TAB>group', got {line[:60]!r}")
            rec, group = fields[0].strip(), fields[1].strip()
            if rec not in by_bare:
                raise InputError(f"{path}:{lineno}: record '{rec}' is not in the genome")
            for full in by_bare[rec]:
                if group_of.get(full, group) != group:
                    raise InputError(f"{path}:{lineno}: record '{rec}' is already in group "
                                     f"'{group_of[full]}'")
                group_of[full] = group
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(group_of.get(name, name), []).append(name)
    return groups


@dataclass(frozen=True)
class HomologyDetection:
    """Groups found from shared k-mers, and the record pairs whose Jaccard similarity was measured.

    ``pairs`` holds (record_a, record_b, jaccard) for every pair sharing at least one sampled k-mer,
    highest first.
    """

    groups: dict[str, list[str]]
    pairs: list[tuple[str, str, float]]
    k: int
    scale: int
    threshold: float


def detect_groups(seqs: Mapping[str, np.ndarray], names: Sequence[str], k: int = 21, threshold: float = 0.3,
                  max_hashes: int = 1_000_000,
                  masks: Mapping[str, np.ndarray] | None = None) -> HomologyDetection:
    """Group records by k-mer Jaccard similarity with single linkage at ``threshold``.

    Each record is sketched with FracMinHash (``scale`` chosen so the whole genome keeps about
    ``max_hashes`` k-mers); the Jaccard similarity ``|A & B| / |A | B|`` of every pair comes from
    one sparse product of the (records, k-mers) incidence matrix with its transpose, and records
    linked by a pair at or above ``threshold`` form one group (connected components). ``masks``
    (record -> (L,) bool) excludes bases, e.g. soft-masked repeats that non-homologous
    chromosomes share.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    names = list(names)
    total = sum(len(seqs[n]) for n in names)
    scale = scale_for(total, max_hashes)
    sets = KmerSets(seqs, k, scale, masks)
    sketches = [sets.of((n, 0, len(seqs[n]))) for n in names]
    sizes = np.array([len(s) for s in sketches], dtype=np.int64)
    pairs: list[tuple[str, str, float]] = []
    n_rec = len(names)
    if n_rec > 1 and sizes.sum() > 0:
        allh = np.concatenate(sketches)
        rows = np.repeat(np.arange(n_rec), sizes)
        order = np.argsort(allh, kind="stable")
        sh = allh[order]
        new = np.empty(len(sh), bool)
        new[0] = True
        np.not_equal(sh[1:], sh[:-1], out=new[1:])
        cols = np.empty(len(sh), np.int64)
        cols[order] = np.cumsum(new) - 1
        inc = csr_matrix((np.ones(len(allh), np.float32), (rows, cols)), shape=(n_rec, int(new.sum())))
        shared = (inc @ inc.T).tocoo()
        keep = shared.row < shared.col
        a, b, inter = shared.row[keep], shared.col[keep], shared.data[keep].astype(np.float64)
        jac = inter / (sizes[a] + sizes[b] - inter)
        for i in np.argsort(-jac, kind="stable"):
            pairs.append((names[a[i]], names[b[i]], float(jac[i])))
        linked = jac >= threshold
        graph = csr_matrix((np.ones(int(linked.sum())), (a[linked], b[linked])), shape=(n_rec, n_rec))
        _, labels = connected_components(graph, directed=False)
    else:
        labels = np.arange(n_rec)
    members: dict[int, list[str]] = {}
    for name, label in zip(names, labels):
        members.setdefault(int(label), []).append(name)
    groups: dict[str, list[str]] = {}
    for recs in members.values():
        key = _group_name(recs)
        if key in groups:
            key = recs[0]
        groups[key] = recs
    return HomologyDetection(groups, pairs, k, scale, threshold)


def _group_name(records: list[str]) -> str:
    """The common prefix of the group's records (``Chr1A, Chr1B -> Chr1``), else its first record."""
    if len(records) == 1:
        return records[0]
    prefix = records[0]
    for r in records[1:]:
        i = 0
        while i < min(len(prefix), len(r)) and prefix[i] == r[i]:
            i += 1
        prefix = prefix[:i]
    prefix = prefix.rstrip("_-.:|")
    return prefix if prefix else records[0]


# ----------------------------------------------------------------------------------------------
# Making splits
# ----------------------------------------------------------------------------------------------

def make_split(spec: SplitSpec, lengths: Mapping[str, int], seqs: Mapping[str, np.ndarray] | None = None,
               masks: Mapping[str, np.ndarray] | None = None) -> tuple[Split, HomologyDetection | None]:
    """Split the records ``lengths`` {record: length} (genome order) according to ``spec``.

    ``seqs`` (and optionally ``masks``, soft-masked bases) are needed only for
    ``group_by=auto``. Returns the split and, for automatic homology detection, its details.
    Bad options (unknown records, overlapping held-out sets, fractions that leave nothing to
    train on) raise :class:`ConfigError`.
    """
    spec.validate()
    names = list(lengths)
    if not names:
        raise ConfigError("split: the genome has no records")
    if spec.strategy == "records":
        val, test = _resolve_records(spec.val, lengths, "val"), _resolve_records(spec.test, lengths, "test")
        return _record_split("records", names, lengths, val, test), None
    if spec.strategy == "fraction":
        units = {n: [n] for n in names}
        val, test = _draw_units(units, spec.val_fraction, spec.test_fraction, spec.seed, "records")
        return _record_split("fraction", names, lengths, val, test), None
    if spec.strategy == "intervals":
        return _interval_split(spec, lengths), None
    detection = None
    if spec.group_by == "pattern":
        groups = groups_from_pattern(names, spec.pattern)
    elif spec.group_by == "tsv":
        groups = read_groups_tsv(str(spec.groups_tsv), names)
    else:
        if seqs is None:
            raise ValueError("group_by=auto needs the sequences")
        detection = detect_groups(seqs, names, spec.sketch_k, spec.threshold, spec.max_hashes,
                                  masks if spec.ignore_softmasked else None)
        groups = detection.groups
    group_of = {rec: g for g, recs in groups.items() for rec in recs}
    if spec.val or spec.test:
        held = {}
        for which, wanted in (("val", spec.val), ("test", spec.test)):
            chosen: list[str] = []
            for item in wanted:
                if item in groups:
                    found = [item]
                else:
                    found = [group_of[r] for r in _matching(item, names)]
                if not found:
                    raise ConfigError(f"split.{which}: '{item}' is neither a group nor a record "
                                      f"(groups: {_preview(groups)})")
                chosen.extend(g for g in dict.fromkeys(found) if g not in chosen)
            held[which] = chosen
        both = set(held["val"]) & set(held["test"])
        if both:
            raise ConfigError(f"split: group '{sorted(both)[0]}' is in both val and test")
        val_groups, test_groups = held["val"], held["test"]
    else:
        val_groups, test_groups = _draw_units(groups, spec.val_fraction, spec.test_fraction, spec.seed,
                                              "groups")
    val = [r for g in val_groups for r in groups[g]]
    test = [r for g in test_groups for r in groups[g]]
    split = _record_split("homology", names, lengths, val, test)
    return Split(split.strategy, split.intervals, groups), detection


def naive_split(split: Split, lengths: Mapping[str, int], seed: int = 0) -> Split:
    """A random record split holding out as many records as ``split`` does, ignoring homology.

    For record-level splits the val and test record counts are copied; for interval splits each
    count is the held-out share of bases times the number of records (at least one). At least
    one record stays in train, so a one-record genome gets an empty naive val and test.
    """
    names = list(lengths)
    total = sum(lengths.values())
    counts = {}
    for which in ("val", "test"):
        recs = split.records(which)
        whole = all(s == 0 and e == lengths[r] for r, s, e in split.intervals[which])
        if whole:
            counts[which] = len(recs)
        else:
            counts[which] = max(1, round(split.bases(which) / total * len(names))) if recs else 0
    counts["test"] = min(counts["test"], len(names) - 1)
    counts["val"] = min(counts["val"], len(names) - 1 - counts["test"])
    rng = np.random.default_rng(seed)
    order = [names[i] for i in rng.permutation(len(names))]
    test = order[: counts["test"]]
    val = order[counts["test"] : counts["test"] + counts["val"]]
    return _record_split("naive", names, lengths, val, test)


def _preview(items: Iterable[str], n: int = 8) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _matching(name: str, names: Sequence[str]) -> list[str]:
    """``name`` itself if it is a record, else every blended record ``<genome>:<name>``."""
    if name in names:
        return [name]
    return [n for n in names if n.endswith(":" + name) and n.split(":", 1)[1] == name]


def _resolve_records(wanted: Sequence[str], lengths: Mapping[str, int], which: str) -> list[str]:
    out: list[str] = []
    names = list(lengths)
    for name in wanted:
        found = _matching(name, names)
        if not found:
            raise ConfigError(f"split.{which}: record '{name}' is not in the genome "
                              f"(records: {_preview(lengths)})")
        out.extend(n for n in found if n not in out)
    return out


def _record_split(strategy: str, names: list[str], lengths: Mapping[str, int], val: Sequence[str],
                  test: Sequence[str]) -> Split:
    overlap = set(val) & set(test)
    if overlap:
        raise ConfigError(f"split: record '{sorted(overlap)[0]}' is in both val and test")
    held = set(val) | set(test)
    if len(held) == len(names):
        raise ConfigError("split: val and test take every record, nothing is left to train on")
    order = {n: i for i, n in enumerate(names)}
    intervals = {
        "train": [(n, 0, lengths[n]) for n in names if n not in held],
        "val": [(n, 0, lengths[n]) for n in sorted(val, key=order.__getitem__)],
        "test": [(n, 0, lengths[n]) for n in sorted(test, key=order.__getitem__)],
    }
    return Split(strategy, intervals)


def _draw_units(units: Mapping[str, list[str]], val_fraction: float, test_fraction: float, seed: int,
                what: str) -> tuple[list[str], list[str]]:
    """Seeded random choice of ``round(fraction * n)`` units (at least 1 for a positive fraction)."""
    keys = list(units)
    n = len(keys)
    counts = [0 if f <= 0 else max(1, round(f * n)) for f in (val_fraction, test_fraction)]
    if sum(counts) >= n:
        raise ConfigError(f"split: val_fraction={val_fraction} and test_fraction={test_fraction} leave no "
                          f"{what} to train on ({n} {what} in all)")
    rng = np.random.default_rng(seed)
    order = [keys[i] for i in rng.permutation(n)]
    return order[: counts[0]], order[counts[0] : counts[0] + counts[1]]


_REGION = re.compile(r"^(?P<rec>.+):(?P<start>[\d,]+)-(?P<end>[\d,]+)$")


def parse_region(text: str, lengths: Mapping[str, int], where: str) -> Interval:
    """``record:start-end`` (1-based, inclusive) or ``record`` -> 0-based half-open interval."""
    text = text.strip()
    if text in lengths:
        return (text, 0, lengths[text])
    m = _REGION.match(text)
    if not m:
        raise ConfigError(f"{where}: '{text}' is neither a record nor a region 'record:start-end'")
    rec = m["rec"]
    if rec not in lengths:
        raise ConfigError(f"{where}: record '{rec}' of region '{text}' is not in the genome "
                          f"(records: {_preview(lengths)})")
    start, end = int(m["start"].replace(",", "")), int(m["end"].replace(",", ""))
    if start < 1 or end < start or end > lengths[rec]:
        raise ConfigError(f"{where}: region '{text}' is outside 1..{lengths[rec]} or has end < start")
    return (rec, start - 1, end)


def _interval_split(spec: SplitSpec, lengths: Mapping[str, int]) -> Split:
    held: dict[str, list[Interval]] = {}
    for which in ("val", "test"):
        ivs = [parse_region(t, lengths, f"split.{which}") for t in getattr(spec, which)]
        held[which] = sorted(ivs, key=lambda iv: (list(lengths).index(iv[0]), iv[1]))
    every = sorted(held["val"] + held["test"], key=lambda iv: (iv[0], iv[1]))
    for a, b in zip(every, every[1:]):
        if a[0] == b[0] and b[1] < a[2]:
            raise ConfigError(f"split: held-out regions {a[0]}:{a[1] + 1}-{a[2]} and "
                              f"{b[0]}:{b[1] + 1}-{b[2]} overlap")
    train: list[Interval] = []
    for rec, length in lengths.items():
        pos = 0
        for _, start, end in (iv for iv in every if iv[0] == rec):
            if start - spec.gap > pos:
                train.append((rec, pos, start - spec.gap))
            pos = max(pos, end + spec.gap)
        if pos < length:
            train.append((rec, pos, length))
    if not train:
        raise ConfigError("split: the held-out regions (and gaps) cover the whole genome")
    return Split("intervals", {"train": train, "val": held["val"], "test": held["test"]})
