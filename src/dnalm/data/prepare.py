"""Turn FASTA (+ GFF3) genomes into a prepared, split dataset directory.

:func:`prepare` writes the directory fixed in DESIGN.md ("Prepared dataset directory"):
``tokens.u8`` and ``regions.u8`` (uint8 files read as memory maps, all records concatenated),
``manifest.json``, ``splits.json`` and ``split_report.md``.

How it runs:

1. every FASTA is validated and its record lengths read (:func:`dnalm.genome.fasta.read_lengths`),
   every GFF3 is parsed and checked against them (:func:`dnalm.genome.gff.index_gff3`, which keeps
   the features as per-record columns in a temporary file), and the split options are checked
   against the record names (unless homology groups are to be detected from the sequence), all
   before anything is written;
2. the records are streamed one at a time (:func:`dnalm.genome.fasta.iter_records`): bases become
   ``CharTokenizer`` ids (:func:`dnalm.tokenizers.bases_to_ids`) in pieces of a few megabases,
   the region track (:func:`dnalm.genome.regions.region_track`) is computed for the record from
   its features alone, and both are appended to the output files, so memory depends on the
   longest record (a few bytes per base, plus its features), not on the size of the genome or of
   its annotation (only the GFF3 check holds an 8-byte hash per distinct ID and Parent while the
   file is read);
3. the leakage of the split (:func:`dnalm.genome.splits.make_split`; automatic homology groups
   are detected here, on the written files) is compared with that of a naive random record split
   (:func:`dnalm.genome.splits.leakage`);
4. the JSON files and the report are written. All of this happens in a temporary directory that
   is renamed to ``out_dir`` only when complete (:func:`dnalm.utils.atomic_dir`): a bad input
   (reported as :class:`~dnalm.errors.InputError` naming the file) leaves no output behind.

Several genomes (a blend): record names become ``<genome>:<record>`` (e.g. ``R570:Chr1A``) so
that records of different genomes never collide; GFF3 seqids still use the bare FASTA names.
Each genome's sampling ``weight`` is stored in the manifest for the window sampler. A single
genome keeps its record names as they are. Genome names may not contain ``:`` or whitespace.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dnalm.errors import ConfigError
from dnalm.genome.fasta import iter_records, read_lengths
from dnalm.genome.gff import GffIndex, index_gff3
from dnalm.genome.regions import CLASS_MASK, REGION_CLASSES, SOFTMASK_BIT, region_track
from dnalm.genome.splits import (
    SPLIT_NAMES,
    HomologyDetection,
    KmerSets,
    Split,
    SplitSpec,
    leakage,
    make_split,
    naive_split,
    scale_for,
)
from dnalm.tokenizers import CharTokenizer, bases_to_ids
from dnalm.utils import atomic_dir, sha256_file, track

FORMAT = "dnalm-prepared/1"
TOKENS_FILE = "tokens.u8"
REGIONS_FILE = "regions.u8"
MANIFEST_FILE = "manifest.json"
SPLITS_FILE = "splits.json"
REPORT_FILE = "split_report.md"

_PIECE = 1 << 22  # bases tokenised at a time
_N_CLASS = REGION_CLASSES.index("N")


class PrepareWarning(UserWarning):
    """Something in the input worth knowing that does not stop ``prepare`` (e.g. short records)."""


@dataclass
class GenomeSpec:
    """One genome of a blend: ``name`` (prefixes its records when several genomes are blended),
    ``fasta`` (plain, gzip or bgzip), optional GFF3 ``annotation`` and sampling ``weight``."""

    name: str
    fasta: str
    annotation: str | None = None
    weight: float = 1.0


@dataclass
class _Record:
    name: str
    genome: str
    length: int
    offset: int
    n_count: int
    softmasked: int
    class_counts: np.ndarray  # (n_classes,) int64


class _FileBytes:
    """A lazy ``(length,)`` uint8 view of bytes ``[offset, offset + length)`` of an open file.

    Slicing stays lazy; ``np.asarray`` reads the bytes with ``os.pread``, so scanning a written
    genome keeps only the piece in hand in memory (a memory map would add every page it touched
    to the resident set). ``bit`` turns the view into the boolean ``(byte & bit) != 0``.
    """

    def __init__(self, fd: int, offset: int, length: int, bit: int | None = None):
        self.fd, self.offset, self.length, self.bit = fd, offset, length, bit

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, item: slice) -> _FileBytes:
        start, stop, step = item.indices(self.length)
        if step != 1:
            raise ValueError("only contiguous slices")
        return _FileBytes(self.fd, self.offset + start, max(0, stop - start), self.bit)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        data = np.frombuffer(os.pread(self.fd, self.length, self.offset), dtype=np.uint8)
        if self.length and len(data) != self.length:
            raise OSError(f"short read at offset {self.offset}")
        out = data if self.bit is None else (data & self.bit) != 0
        return out if dtype is None else out.astype(dtype, copy=False)


def _check_genomes(genomes: Sequence[GenomeSpec]) -> None:
    if not genomes:
        raise ConfigError("prepare: no genome given (set genome=PATH or genomes=[{name: ..., fasta: ...}])")
    seen = set()
    for i, g in enumerate(genomes):
        if not g.name or any(c.isspace() for c in g.name) or ":" in g.name:
            raise ConfigError(f"genomes[{i}].name: '{g.name}' must be non-empty, without ':' or whitespace")
        if g.name in seen:
            raise ConfigError(f"genomes[{i}].name: '{g.name}' is used by two genomes")
        seen.add(g.name)
        if not g.fasta:
            raise ConfigError(f"genomes[{i}].fasta: no FASTA file given for genome '{g.name}'")
        if not (math.isfinite(g.weight) and g.weight > 0):
            raise ConfigError(f"genomes[{i}].weight: {g.weight} must be a positive number")


def default_genome_name(fasta: str | os.PathLike) -> str:
    """A genome name from its FASTA file name: ``dir/R570.fa.gz -> R570``."""
    name = Path(fasta).name
    for ext in (".gz", ".bgz", ".fa", ".fasta", ".fna", ".fas", ".faa"):
        name = name.removesuffix(ext)
    return "".join("_" if c.isspace() or c == ":" else c for c in name) or "genome"


def prepare(genomes: Sequence[GenomeSpec], out_dir: str | os.PathLike, split: SplitSpec | None = None,
            promoter_window: int = 1000, window: int = 0, overwrite: bool = True) -> Path:
    """Prepare ``genomes`` into the directory ``out_dir`` and return its path.

    Args:
        genomes: one or more genomes; with several, records are named ``<genome>:<record>``.
        out_dir: the prepared directory to write (replaced only once the new one is complete).
        split: how to split (default: every record in train).
        promoter_window: bases upstream of each transcript start labelled promoter.
        window: the training window length; records shorter than it are counted, warned about
            (:class:`PrepareWarning`) and listed in the report (0: no check).
        overwrite: replace an existing ``out_dir``; if False an existing one is a ConfigError.

    Raises:
        InputError: a malformed FASTA or GFF3 (the message names the file and line).
        ConfigError: bad options, e.g. a split naming a record that is not in the genome.
    """
    split = split or SplitSpec()
    split.validate()
    _check_genomes(genomes)
    if promoter_window < 0:
        raise ConfigError(f"prepare: promoter_window={promoter_window} must be >= 0")
    if window < 0:
        raise ConfigError(f"prepare: window={window} must be >= 0")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise ConfigError(f"prepare: {out} exists (set overwrite=true to replace it)")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"prepare: {out} exists and is not a directory")

    fasta_lengths = [read_lengths(g.fasta) for g in genomes]
    with ExitStack() as stack:
        annotations = [stack.enter_context(index_gff3(g.annotation, ls)) if g.annotation else None
                       for g, ls in zip(genomes, fasta_lengths)]
        return _prepare(genomes, out, split, fasta_lengths, annotations, promoter_window, window)


def _prepare(genomes: Sequence[GenomeSpec], out: Path, split: SplitSpec, fasta_lengths: list[dict[str, int]],
             annotations: list[GffIndex | None], promoter_window: int, window: int) -> Path:
    """:func:`prepare` once its inputs are validated and their annotations indexed."""
    blend = len(genomes) > 1
    rec_lengths = {(f"{g.name}:{name}" if blend else name): n
                   for g, ls in zip(genomes, fasta_lengths) for name, n in ls.items()}
    total = sum(rec_lengths.values())
    needs_sequence = split.strategy == "homology" and split.group_by == "auto"
    if not needs_sequence:  # a mistake in the split options fails before the genome is read
        chosen, detection = make_split(split, rec_lengths)

    with atomic_dir(out) as tmp:
        records = _write_arrays(tmp, genomes, annotations, blend, total, promoter_window)
        with open(tmp / TOKENS_FILE, "rb") as ftok, open(tmp / REGIONS_FILE, "rb") as freg:
            tokens, regions = ftok.fileno(), freg.fileno()
            seqs = {r.name: _FileBytes(tokens, r.offset, r.length) for r in records}
            masks = {r.name: _FileBytes(regions, r.offset, r.length, SOFTMASK_BIT) for r in records}
            if needs_sequence:
                chosen, detection = make_split(split, rec_lengths, seqs, masks)
            naive = naive_split(chosen, rec_lengths, seed=split.seed)
            scale = scale_for(total, split.max_hashes)
            leaks = _leakage(chosen, naive, KmerSets(seqs, split.leakage_k, scale))
            by_split = _split_class_counts(chosen, records, regions)
        short = [r for r in records if r.length < window]
        if short:
            short_bases = sum(r.length for r in short)
            warnings.warn(f"{len(short)} of {len(records)} records ({short_bases:,} bases) are shorter than "
                          f"the window length {window}", PrepareWarning, stacklevel=3)

        manifest = _manifest(genomes, records)
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
        (tmp / SPLITS_FILE).write_text(_splits_json(chosen.to_json()))
        report = _report(split, chosen, naive, leaks, scale, by_split, detection, records, short, window)
        (tmp / REPORT_FILE).write_text(report)
    return out


def _pieces(seq: bytes) -> Iterator[memoryview]:
    view = memoryview(seq)
    for start in range(0, len(seq), _PIECE):
        yield view[start : start + _PIECE]


def _class_counts(regions: np.ndarray) -> np.ndarray:
    """``(n_classes,)`` int64 bases per class of a piece of ``regions.u8`` (one comparison per class,
    several times faster than ``np.bincount`` on uint8)."""
    classes = regions & CLASS_MASK
    return np.array([np.count_nonzero(classes == c) for c in range(len(REGION_CLASSES))], np.int64)


def _write_arrays(tmp: Path, genomes: Sequence[GenomeSpec], annotations: Sequence[GffIndex | None], blend: bool,
                  total: int, promoter_window: int) -> list[_Record]:
    """Stream every record into ``tokens.u8`` and ``regions.u8``; return their manifest entries."""
    records: list[_Record] = []
    offset = 0
    bar = track(iter(()), total=total, desc="prepare", unit="b", unit_scale=True)
    try:
        with open(tmp / TOKENS_FILE, "wb") as ftok, open(tmp / REGIONS_FILE, "wb") as freg:
            for genome, annotation in zip(genomes, annotations):
                for rec in iter_records(genome.fasta):
                    length = len(rec.seq)
                    for piece in _pieces(rec.seq):
                        ids, _ = bases_to_ids(piece, where=f"{genome.fasta}: record '{rec.name}'")
                        ftok.write(ids.data)
                        bar.update(len(piece))
                    reg = region_track(annotation, rec.name, length, rec.seq, promoter_window)
                    freg.write(reg.data)
                    counts = _class_counts(reg)
                    soft = int(np.count_nonzero(reg >= SOFTMASK_BIT))
                    name = f"{genome.name}:{rec.name}" if blend else rec.name
                    # every base that is not A/C/G/T becomes the N token and has region class N
                    records.append(_Record(name, genome.name, length, offset, int(counts[_N_CLASS]), soft, counts))
                    offset += length
    finally:
        bar.close()
    return records


def _leakage(chosen: Split, naive: Split, kmers: KmerSets) -> dict[str, dict[str, float]]:
    """{"chosen": {"val": f, "test": f}, "naive": {...}}; empty when nothing is held out."""
    if not (chosen.intervals["val"] or chosen.intervals["test"]):
        return {}
    needed = list(dict.fromkeys(iv for s in (chosen, naive) for n in SPLIT_NAMES for iv in s.intervals[n]))
    for iv in track(needed, total=len(needed), desc="leakage", unit="interval"):
        kmers.of(iv)
    return {"chosen": leakage(chosen, kmers), "naive": leakage(naive, kmers)}


def _split_class_counts(split: Split, records: Sequence[_Record], regions: int) -> dict[str, np.ndarray]:
    """Bases per region class in each split: {split: (n_classes,) int64}; ``regions`` is an open fd."""
    by_name = {r.name: r for r in records}
    n_classes = len(REGION_CLASSES)
    out = {}
    for which in SPLIT_NAMES:
        counts = np.zeros(n_classes, np.int64)
        for name, start, end in split.intervals[which]:
            rec = by_name[name]
            if start == 0 and end == rec.length:
                counts += rec.class_counts
                continue
            for a in range(rec.offset + start, rec.offset + end, _PIECE):
                counts += _class_counts(np.asarray(_FileBytes(regions, a, min(_PIECE, rec.offset + end - a))))
        out[which] = counts
    return out


def _manifest(genomes: Sequence[GenomeSpec], records: Sequence[_Record]) -> dict:
    from dnalm import __version__

    class_counts = np.sum([r.class_counts for r in records], axis=0)
    return {
        "format": FORMAT,
        "dnalm_version": __version__,
        "tokenizer": CharTokenizer().to_config(),
        "genomes": [{
            "name": g.name,
            "fasta": str(Path(g.fasta).resolve()),
            "fasta_sha256": sha256_file(g.fasta),
            "annotation": str(Path(g.annotation).resolve()) if g.annotation else None,
            "annotation_sha256": sha256_file(g.annotation) if g.annotation else None,
            "weight": float(g.weight),
        } for g in genomes],
        "records": [{"name": r.name, "genome": r.genome, "length": r.length, "offset": r.offset,
                     "n_count": r.n_count, "softmasked": r.softmasked} for r in records],
        "region_classes": list(REGION_CLASSES),
        "class_counts": {c: int(n) for c, n in zip(REGION_CLASSES, class_counts)},
        "total_length": int(sum(r.length for r in records)),
    }


def _splits_json(data: Mapping) -> str:
    """``splits.json`` text with one interval (and one group) per line."""
    def block(items: Sequence[str], indent: str) -> str:
        return "\n" + ",\n".join(indent + " " + it for it in items) + "\n" + indent if items else ""

    splits = [f'  {json.dumps(n)}: [{block([json.dumps(iv) for iv in ivs], "  ")}]'
              for n, ivs in data["splits"].items()]
    parts = [f' "strategy": {json.dumps(data["strategy"])}', ' "splits": {\n' + ",\n".join(splits) + "\n }"]
    if "groups" in data:
        groups = [f"{json.dumps(g)}: {json.dumps(recs)}" for g, recs in data["groups"].items()]
        parts.append(' "groups": {' + block(groups, " ") + "}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def _fmt(x: float) -> str:
    return "–" if x is None or math.isnan(x) else f"{x:.3f}"


def _report(spec: SplitSpec, split: Split, naive: Split, leaks: Mapping[str, Mapping[str, float]],
            scale: int, by_split: Mapping[str, np.ndarray], detection: HomologyDetection | None,
            records: Sequence[_Record], short: Sequence[_Record], window: int) -> str:
    total = sum(r.length for r in records)
    how = {
        "records": "explicit record lists",
        "fraction": f"a seeded random choice of records (seed {spec.seed})",
        "intervals": f"held-out intervals (gap {spec.gap} bases)",
        "homology": {"pattern": f"homology groups from the record-name pattern `{spec.pattern}`",
                     "tsv": f"homology groups from `{spec.groups_tsv}`",
                     "auto": f"homology groups detected from shared {spec.sketch_k}-mers (Jaccard >= "
                             f"{spec.threshold}, single linkage)"}[spec.group_by],
    }[spec.strategy]
    lines = [
        "# Split report", "",
        f"{len(records)} records, {total:,} bases; strategy **{spec.strategy}**: {how}.", "",
        "## Splits", "",
        "| split | records | bases | share | " + " | ".join(REGION_CLASSES) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(REGION_CLASSES),
    ]
    for which in SPLIT_NAMES:
        bases = split.bases(which)
        share = f"{bases / total:.1%}" if total else "–"
        counts = " | ".join(f"{int(c):,}" for c in by_split[which])
        lines.append(f"| {which} | {len(split.records(which))} | {bases:,} | {share} | {counts} |")
    lines += ["", "## Leakage", ""]
    if not leaks:
        lines.append("Nothing is held out: every record is in train.")
    else:
        sampled = "every k-mer" if scale == 1 else f"a FracMinHash sample of 1 in {scale} k-mers"
        lines += [
            f"Fraction of the distinct canonical {spec.leakage_k}-mers (both strands) of each held-out split "
            f"that also occur in train ({sampled}). The naive split holds out as many records, drawn at "
            f"random (seed {spec.seed}) without regard to homology; the difference is what the chosen "
            f"split saves a model from memorising.", "",
            "| held out | chosen split | naive random record split |",
            "|---|---:|---:|",
        ]
        for which in ("val", "test"):
            lines.append(f"| {which} | {_fmt(leaks['chosen'][which])} | {_fmt(leaks['naive'][which])} |")
        lines += ["", "Naive split: " + "; ".join(
            f"{which}: {', '.join(naive.records(which)) or '–'}" for which in ("val", "test")) + "."]
    if split.groups is not None:
        where = {rec: which for which in SPLIT_NAMES for rec in split.records(which)}
        lines += ["", "## Homology groups", "", "| group | split | records |", "|---|---|---|"]
        for group, recs in split.groups.items():
            lines.append(f"| {group} | {where[recs[0]]} | {', '.join(recs)} |")
        if detection is not None:
            masked = ", soft-masked bases ignored" if spec.ignore_softmasked else ""
            sampled = "every k-mer" if detection.scale == 1 else f"1 in {detection.scale} k-mers sampled"
            lines += ["", f"Strongest record similarities ({detection.k}-mer Jaccard, {sampled}{masked}):", "",
                      "| record | record | Jaccard |", "|---|---|---:|"]
            lines += [f"| {a} | {b} | {j:.3f} |" for a, b, j in detection.pairs[:20]]
    if window:
        lines += ["", "## Short records", ""]
        if short:
            names = ", ".join(r.name for r in short[:20]) + (" ..." if len(short) > 20 else "")
            lines.append(f"{len(short)} records ({sum(r.length for r in short):,} bases) are shorter than "
                         f"the window length {window}: {names}")
        else:
            lines.append(f"Every record is at least {window} bases long.")
    return "\n".join(lines) + "\n"
