"""Zero-shot variant effect scores: Δ log-likelihood of the alternative vs the reference allele.

For a variant at 1-based position ``pos`` of record ``chrom`` with alleles ``REF`` and ``ALT``,
a window of ``W`` bases of the reference genome is taken around it (``start = pos - 1 - W // 2``,
moved inward at the ends of the record) and scored twice::

    ref window = genome[start : start + W]
    alt window = genome[start : pos-1] + ALT + genome[pos-1+len(REF) : ...]   cut or extended to W bases
    Δ = score(alt window) - score(ref window)

where ``score`` is the summed (or mean) log-likelihood of :mod:`dnalm.inference.scoring`.
Both windows start at the same base and have the same length, also for insertions and
deletions (the alt window takes as many bases after the allele as it needs to reach ``W``), so
sum and mean differ only by a constant factor. This is the protocol of the Evo 2 BRCA1 notebook
(``shared/reference/evo2.md`` §2.5; 8,192-base windows, mean reduction). With
``reverse_complement`` the reverse complements of both windows are scored too and
``Δ = (Δ_forward + Δ_reverse) / 2``. A negative Δ means the model finds the alternative allele
less likely.

A masked LM (DNABERT-2, Caduceus) has no causal log-likelihood of a window; it gives the masked-marginal score
instead (:func:`score_variants_masked`): in the reference window the token(s) covering the variant
are masked and the log-probabilities of the reference and the alternative allele's tokens at the masks
compared, Δ = log p(alt tokens) - log p(ref tokens) (Meier et al. 2021).

Inputs: VCF (plain or gzip; multi-allelic records give one row per ALT allele; symbolic
alleles such as ``<DEL>``, breakends, ``*`` and ``.`` are skipped and counted) or a TSV with
a header naming the columns ``chrom``, ``pos`` (1-based), ``ref``, ``alt`` and optionally ``id``.
Malformed lines raise :class:`InputError` naming the file and line. Every variant is checked against
the FASTA first (:func:`match_reference`): its chromosome, possibly under another name (``chrI`` for
``BK006935.2``, :mod:`dnalm.genome.aliases`), its end and its REF allele; ``dnalm score-variants`` skips
and counts those that do not match (``mismatch=skip``) or stops on them (``mismatch=error``).
Positions: ``pos`` is 1-based (VCF); so is the ``window_start`` written to the TSV (the window covers
``window_start .. window_start + window_length - 1``); :class:`VariantScore` keeps the 0-based ``start``.

API: ``read_variants(path) -> VariantTable``; ``match_reference(variants, genome, aliases) -> ReferenceMatch``;
``check_reference(variants, genome, source)`` (raises on any mismatch);
``variant_windows(variant, genome, window) -> (start, ref_window, alt_window)``;
``score_variants(model, tokenizer, variants, genome, ...) -> list[VariantScore]`` (a causal LM);
``score_variants_masked(model, tokenizer, variants, genome, ...)`` (a masked LM: masked-marginal scores);
``write_variant_scores(path, scores)``.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from dnalm.errors import ConfigError, InputError
from dnalm.genome.fasta import FastaIndex
from dnalm.inference.io import data_lines
from dnalm.inference.scoring import DEFAULT_BATCH_SIZE, DEFAULT_MAX_TOKENS, encode_sequence, score_sequences
from dnalm.tokenizers import reverse_complement
from dnalm.utils import atomic_file

_ALLELE = re.compile(r"^[ACGTNacgtn]+$")
#: Mismatches listed in the error message.
SHOWN_MISMATCHES = 5


@dataclass(frozen=True)
class Variant:
    """One alternative allele: ``chrom``, 1-based ``pos``, ``ref``, ``alt``, ``id`` and its input ``line``;
    ``record``: the reference record ``chrom`` names (set by :func:`match_reference`; empty: ``chrom`` itself)."""

    chrom: str
    pos: int
    ref: str
    alt: str
    id: str
    line: int
    record: str = ""

    @property
    def reference_name(self) -> str:
        return self.record or self.chrom


@dataclass
class VariantTable:
    """The variants of a file and the number of ALT alleles skipped as not sequence-resolved."""

    path: Path
    variants: list[Variant] = field(default_factory=list)
    skipped: int = 0


@dataclass(frozen=True)
class VariantScore:
    """Scores of one variant: window ``[start, start + length)`` (0-based), reference and alternative
    window scores (forward strand), ``delta`` (RC-averaged when asked) and the reverse-strand Δ."""

    variant: Variant
    start: int
    length: int
    ref_score: float
    alt_score: float
    delta: float
    delta_rc: float | None = None


def _is_symbolic(alt: str) -> bool:
    return alt in ("*", ".") or alt.startswith("<") or "[" in alt or "]" in alt


def _parse_pos(text: str, path: Path, line: int) -> int:
    try:
        pos = int(text)
    except ValueError:
        raise InputError(f"{path}: line {line}: POS {text!r} is not an integer") from None
    if pos < 1:
        raise InputError(f"{path}: line {line}: POS {pos} must be >= 1 (1-based)")
    return pos


def _check_allele(allele: str, what: str, path: Path, line: int) -> str:
    if not _ALLELE.match(allele):
        raise InputError(f"{path}: line {line}: {what} allele {allele!r} is not a sequence of A, C, G, T, N")
    return allele.upper()


def _read_vcf(path: Path, lines) -> VariantTable:
    table = VariantTable(path)
    for number, text in lines:
        if not text.strip() or text.startswith("#"):
            continue
        fields = text.split("\t")
        if len(fields) < 5:
            raise InputError(f"{path}: line {number}: {len(fields)} tab-separated fields, a VCF record needs at "
                             "least 5 (CHROM POS ID REF ALT)")
        chrom, pos_text, vid, ref, alts = (f.strip() for f in fields[:5])
        if not chrom:
            raise InputError(f"{path}: line {number}: empty CHROM")
        pos = _parse_pos(pos_text, path, number)
        ref = _check_allele(ref, "REF", path, number)
        if not alts:
            raise InputError(f"{path}: line {number}: empty ALT")
        for alt in alts.split(","):
            if _is_symbolic(alt):
                table.skipped += 1
                continue
            alt = _check_allele(alt, "ALT", path, number)
            name = vid if vid and vid != "." else f"{chrom}:{pos}:{ref}>{alt}"
            table.variants.append(Variant(chrom, pos, ref, alt, name, number))
    return table


def _read_tsv(path: Path, lines) -> VariantTable:
    table = VariantTable(path)
    header: list[str] | None = None
    for number, text in lines:
        if not text.strip() or (header is not None and text.startswith("#")):
            continue
        fields = [f.strip() for f in next(csv.reader([text], delimiter="\t"))]
        if header is None:
            header = [f.lower().lstrip("#") for f in fields]
            missing = [c for c in ("chrom", "pos", "ref", "alt") if c not in header]
            if missing:
                raise InputError(f"{path}: line {number}: header lacks column(s) {', '.join(missing)} "
                                 f"(a variant TSV needs chrom, pos, ref, alt; got {', '.join(fields)})")
            col = {c: header.index(c) for c in ("chrom", "pos", "ref", "alt")}
            id_col = header.index("id") if "id" in header else None
            continue
        if len(fields) != len(header):
            raise InputError(f"{path}: line {number}: {len(fields)} fields, the header has {len(header)}")
        chrom = fields[col["chrom"]]
        if not chrom:
            raise InputError(f"{path}: line {number}: empty chrom")
        pos = _parse_pos(fields[col["pos"]], path, number)
        ref = _check_allele(fields[col["ref"]], "REF", path, number)
        alt = fields[col["alt"]]
        if _is_symbolic(alt):
            table.skipped += 1
            continue
        alt = _check_allele(alt, "ALT", path, number)
        vid = fields[id_col] if id_col is not None and fields[id_col] else f"{chrom}:{pos}:{ref}>{alt}"
        table.variants.append(Variant(chrom, pos, ref, alt, vid, number))
    if header is None:
        raise InputError(f"{path}: empty file (expected a header with chrom, pos, ref, alt)")
    return table


def read_variants(path: str | os.PathLike) -> VariantTable:
    """Variants of a VCF or TSV file (see the module docstring); the format is read from the content."""
    path = Path(path)
    lines = list(data_lines(path))
    first = next((t for _, t in lines if t.strip()), None)
    if first is None:
        raise InputError(f"{path}: empty file")
    is_vcf = first.startswith("##fileformat=VCF") or first.startswith("#CHROM\tPOS\tID\tREF\tALT")
    table = _read_vcf(path, lines) if is_vcf else _read_tsv(path, lines)
    if not table.variants:
        raise InputError(f"{path}: no sequence variants to score ({table.skipped} symbolic alleles skipped)")
    return table


@dataclass
class ReferenceMatch:
    """:func:`match_reference`'s verdict: the ``variants`` that match the reference (``record`` filled in) and
    one ``problems`` line (``line N: ...``) per variant that does not, with its ``kind`` (``unknown chromosome``,
    ``past the record end``, ``REF differs``)."""

    variants: list[Variant]
    problems: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)

    def summary(self, source: str | os.PathLike, reference: str | os.PathLike) -> str:
        """``'3 of 120 variants do not match ref.fa (2 REF differs, 1 unknown chromosome): line 14: ...'``."""
        total = len(self.variants) + len(self.problems)
        counts = ", ".join(f"{self.kinds.count(k)} {k}" for k in dict.fromkeys(self.kinds))
        shown = "; ".join(self.problems[:SHOWN_MISMATCHES])
        more = f" (first {SHOWN_MISMATCHES} shown)" if len(self.problems) > SHOWN_MISMATCHES else ""
        return (f"{source}: {len(self.problems)} of {total} variants do not match the reference {reference} "
                f"({counts}): {shown}{more}")


def match_reference(variants: Sequence[Variant], genome: FastaIndex, aliases=None) -> ReferenceMatch:
    """Check every variant against the genome: its chromosome (through ``aliases``, a
    :class:`~dnalm.genome.aliases.ChromAliases`, when given), its end and its REF allele."""
    out = ReferenceMatch([])
    for v in variants:
        record = aliases.resolve(v.chrom) if aliases is not None else (v.chrom if v.chrom in genome else None)
        if record is None:
            out.problems.append(f"line {v.line}: chromosome '{v.chrom}' is not in the reference")
            out.kinds.append("unknown chromosome")
            continue
        length = genome.lengths[record]
        end = v.pos - 1 + len(v.ref)
        if end > length:
            out.problems.append(f"line {v.line}: {v.chrom}:{v.pos} REF {v.ref} runs past the record end ({length:,})")
            out.kinds.append("past the record end")
            continue
        actual = genome.fetch(record, v.pos - 1, end).upper()
        if actual != v.ref:
            out.problems.append(f"line {v.line}: {v.chrom}:{v.pos} REF {v.ref}, reference has {actual}")
            out.kinds.append("REF differs")
            continue
        out.variants.append(replace(v, record=record if record != v.chrom else ""))
    return out


def check_reference(variants: Sequence[Variant], genome: FastaIndex, source: str | os.PathLike,
                    aliases=None) -> list[Variant]:
    """The variants with their reference records; one :class:`InputError` listing those whose REF differs from
    the genome (or that lie outside it) when there is any."""
    found = match_reference(variants, genome, aliases)
    if found.problems:
        raise InputError(found.summary(source, genome.path))
    return found.variants


def variant_windows(variant: Variant, genome: FastaIndex, window: int) -> tuple[int, str, str]:
    """``(start, ref_window, alt_window)`` of one variant (module docstring); windows upper-cased."""
    name = variant.reference_name
    length = genome.lengths[name]
    W = min(window, length)
    p0 = variant.pos - 1
    start = min(max(p0 - window // 2, 0), length - W)
    after = p0 + len(variant.ref)
    if after > start + W:
        raise ConfigError(f"line {variant.line}: REF allele of {len(variant.ref)} bases does not fit a window of "
                          f"{window} bases around {variant.chrom}:{variant.pos}; use a larger window")
    ref_window = genome.fetch(name, start, start + W).upper()
    left = ref_window[: p0 - start]
    need = W - len(left) - len(variant.alt)
    right = genome.fetch(name, after, min(after + max(need, 0), length)).upper()
    alt_window = (left + variant.alt + right)[:W]
    return start, ref_window, alt_window


def score_variants(model, tokenizer, variants: Sequence[Variant], genome: FastaIndex, window: int = 8192,
                   reduce: str = "mean", reverse_complement_average: bool = False, prepend_bos: bool = False,
                   batch_size: int = DEFAULT_BATCH_SIZE, max_tokens: int = DEFAULT_MAX_TOKENS,
                   chunk_size: int | None = None, progress: bool = False) -> list[VariantScore]:
    """Δ log-likelihood of every variant (see the module docstring); windows shared by variants are scored once."""
    if window < 2:
        raise ConfigError(f"window must be >= 2 bases, got {window}")
    placed = [(v, *variant_windows(v, genome, window)) for v in variants]
    unique: dict[str, int] = {}
    for _, _, ref_w, alt_w in placed:
        seqs = (ref_w, alt_w, reverse_complement(ref_w), reverse_complement(alt_w)) \
            if reverse_complement_average else (ref_w, alt_w)
        for s in seqs:
            unique.setdefault(s, len(unique))
    rows = [encode_sequence(tokenizer, s, prepend_bos, where="variant window") for s in unique]
    scores = score_sequences(model, rows, reduce, batch_size=batch_size, max_tokens=max_tokens,
                             chunk_size=chunk_size, progress=progress)
    out = []
    for v, start, ref_w, alt_w in placed:
        ref_s, alt_s = float(scores[unique[ref_w]]), float(scores[unique[alt_w]])
        delta, delta_rc = alt_s - ref_s, None
        if reverse_complement_average:
            delta_rc = float(scores[unique[reverse_complement(alt_w)]] - scores[unique[reverse_complement(ref_w)]])
            delta = (delta + delta_rc) / 2
        out.append(VariantScore(v, start, len(ref_w), ref_s, alt_s, delta, delta_rc))
    return out


def score_variants_masked(model, tokenizer, variants: Sequence[Variant], genome: FastaIndex, window: int = 512,
                          reverse_complement_average: bool = False,
                          progress: bool = False) -> list[VariantScore]:
    """Masked-marginal scores of every variant under a masked LM (DNABERT-2, Caduceus): the reference window of
    :func:`variant_windows` with the token(s) covering the variant masked, and ``log p`` of the reference vs the
    alternative allele's tokens there (:func:`dnalm.inference.masked.masked_marginal`, which says what is done
    with BPE tokens spanning the variant). ``ref_score``/``alt_score`` are summed log-probabilities (nats) of
    those tokens; Δ = alt - ref; with ``reverse_complement_average`` the reverse strand's Δ (the window, its
    variant offset and both alleles reverse complemented) is averaged in."""
    from dnalm.inference.masked import masked_marginal
    from dnalm.utils import track

    if window < 2:
        raise ConfigError(f"window must be >= 2 bases, got {window}")
    out = []
    it = track(variants, total=len(variants), desc="scoring", unit="variant") if progress else variants
    for v in it:
        start, ref_w, _ = variant_windows(v, genome, window)
        offset = v.pos - 1 - start
        ref, alt = v.ref.upper(), v.alt.upper()
        ref_s, alt_s = masked_marginal(model, tokenizer, ref_w, offset, ref, alt)
        delta, delta_rc = alt_s - ref_s, None
        if reverse_complement_average:
            rc_offset = len(ref_w) - offset - len(ref)
            rc_ref, rc_alt = masked_marginal(model, tokenizer, reverse_complement(ref_w), rc_offset,
                                             reverse_complement(ref), reverse_complement(alt))
            delta_rc = rc_alt - rc_ref
            delta = (delta + delta_rc) / 2
        out.append(VariantScore(v, start, len(ref_w), ref_s, alt_s, delta, delta_rc))
    return out


def write_variant_scores(path: str | os.PathLike, scores: Sequence[VariantScore]) -> Path:
    """Write a TSV: chrom, pos, id, ref, alt, window_start (1-based), window_length, ref_score, alt_score,
    delta [, delta_forward, delta_reverse] (atomically)."""
    with_rc = any(s.delta_rc is not None for s in scores)
    header = ["chrom", "pos", "id", "ref", "alt", "window_start", "window_length", "ref_score", "alt_score", "delta"]
    if with_rc:
        header += ["delta_forward", "delta_reverse"]
    path = Path(path)
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        for s in scores:
            v = s.variant
            row = [v.chrom, v.pos, v.id, v.ref, v.alt, s.start + 1, s.length, _fmt(s.ref_score), _fmt(s.alt_score),
                   _fmt(s.delta)]
            if with_rc:
                row += [_fmt(s.alt_score - s.ref_score), _fmt(s.delta_rc)]
            writer.writerow(row)
    return path


def _fmt(x: float | None) -> str:
    return "" if x is None else repr(float(np.float64(x)))
