"""Synthetic genomes: a seeded generative model that writes FASTA + GFF3 + homology groups.

The model is the built-in default data of dnalm: small enough to train on in minutes, and built
from the signals a DNA language model should learn. Everything is drawn from one
:class:`numpy.random.Generator` tree seeded by ``SynthConfig.seed``, so a seed names a genome.

Per chromosome (the *ancestor*), a list of objects is drawn and laid out left to right with
exponentially distributed spacers (a Poisson placement) of background sequence between them:

- **background**: an order-``k`` Markov chain whose transition rows are Dirichlet draws around the
  base composition set by ``gc`` (a GC-biased, context-dependent background);
- **protein-coding genes** on either strand, in transcript orientation
  ``promoter | 5' UTR | CDS exons with introns | 3' UTR``:
  a TATA box (consensus TATAWAWR, Lifton et al. 2006 / Bucher 1990) whose first base lies 28-33 bp
  upstream of the transcription start site (TSS); an initiator (Inr, consensus YYANWYY with the A at
  +1, Smale & Kadonaga 2003) at the TSS; a CDS drawn from a codon-usage table (standard genetic code,
  NCBI translation table 1; amino-acid frequencies of UniProtKB/Swiss-Prot), ``ATG`` start, one stop
  codon and no internal in-frame stop; introns with a GTRAGT 5' splice site, a CTRAY branch point
  whose A lies 20-40 bp upstream of the 3' splice site, a polypyrimidine tract and a final AG
  (the U2-type intron consensus, Burge et al. 1999); a 3' UTR with the polyadenylation signal
  AATAAA 10-30 bp upstream of the cleavage site (Proudfoot 2011). Minus-strand genes are written
  reverse-complemented;
- **transposable elements**: a few families (LTR retrotransposons ``LTR|internal|LTR``, terminal
  inverted repeat DNA transposons ``TIR|internal|revcomp(TIR)``, poly(A)-tailed LINEs) whose copies
  are full-length or truncated fragments of the family consensus with a per-copy divergence
  (substitutions and small indels), inserted on either strand; soft-masked (lowercase) and annotated
  as ``transposable_element``;
- **tandem repeats** (micro- and minisatellites) and one **centromeric satellite array**
  (a ~150-180 bp monomer, cf. CEN180 of *Arabidopsis*): soft-masked, annotated as ``repeat_region``;
- **N gaps**: runs of ``N`` between the other objects, annotated as ``gap``.

Polyploid mode (``ploidy >= 3``) writes ``ploidy`` homologous copies ``Chr1A, Chr1B, ...`` of each
ancestor, each derived independently with SNPs at rate ``snp_rate`` and indels at rate
``indel_rate`` per base. Mutations never break an annotation: SNPs inside a CDS hit only four-fold
degenerate third codon positions (always synonymous), SNPs avoid splice sites and promoter/polyA
motifs, and indels fall only in unannotated background, so every feature is carried over with its
coordinates shifted through the indels. ``ploidy <= 2`` writes one (haploid reference) record per
chromosome: ``Chr1, Chr2, ...``.

Base codes inside this module: A 0, C 1, G 2, T 3, N 4 (complement of ``b < 4`` is ``3 - b``).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dnalm.errors import ConfigError
from dnalm.utils import atomic_file, make_dir, track

__all__ = ["SynthConfig", "synthesize", "record_names", "GENETIC_CODE", "STOP_CODONS"]

ASCII_UPPER = np.frombuffer(b"ACGTN", dtype=np.uint8)
ASCII_LOWER = np.frombuffer(b"acgtn", dtype=np.uint8)
N_CODE = 4

# NCBI translation table 1, codons enumerated in TCAG order (first base slowest).
_TCAG_AMINO_ACIDS = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"
GENETIC_CODE: dict[str, str] = {
    a + b + c: _TCAG_AMINO_ACIDS[16 * i + 4 * j + k]
    for i, a in enumerate("TCAG") for j, b in enumerate("TCAG") for k, c in enumerate("TCAG")
}
STOP_CODONS = ("TAA", "TAG", "TGA")

# Amino-acid composition of UniProtKB/Swiss-Prot (percent).
_AMINO_ACID_PERCENT = {
    "A": 8.25, "R": 5.53, "N": 4.06, "D": 5.45, "C": 1.37, "Q": 3.93, "E": 6.75, "G": 7.07, "H": 2.27,
    "I": 5.96, "L": 9.66, "K": 5.84, "M": 2.42, "F": 3.86, "P": 4.70, "S": 6.56, "T": 5.34, "W": 1.08,
    "Y": 2.92, "V": 6.87,
}
# First two codon bases (in transcript orientation) of the eight four-fold degenerate codon families
# (CTN Leu, GTN Val, TCN Ser, CCN Pro, ACN Thr, GCN Ala, CGN Arg, GGN Gly): any third base is synonymous.
_FOURFOLD_PREFIXES = ("CT", "GT", "TC", "CC", "AC", "GC", "CG", "GG")

IUPAC = {"A": "A", "C": "C", "G": "G", "T": "T", "R": "AG", "Y": "CT", "W": "AT", "S": "CG", "K": "GT",
         "M": "AC", "N": "ACGT"}

PROMOTER_LENGTH = 250          # bp upstream of the TSS annotated as promoter
TATA_MOTIF = "TATAWAWR"
TATA_OFFSET = (-33, -28)       # first TATA base relative to the TSS (inclusive range)
INR_MOTIF = "YYANWYY"          # A at +1 (the TSS)
SPLICE_DONOR = "GTRAGT"
BRANCH_MOTIF = "CTRAY"         # the branch-point A is the 4th base
BRANCH_DISTANCE = (20, 40)     # bp from the branch-point A to the 3' splice-site AG
POLYA_SIGNAL = "AATAAA"
POLYA_DISTANCE = (10, 30)      # bp from the end of AATAAA to the cleavage site (transcript end)
UTR5_LENGTH = (30, 200)
UTR3_LENGTH = (80, 400)
INDEL_MEAN_LENGTH = 3.0        # homologous copies: geometric indel lengths
MIN_EXON = 30                  # minimum CDS part length between introns
MIN_SPACER = 50                # minimum background between two laid-out objects
MARKOV_STEPS = 4096            # Markov chain: steps per parallel chain
TE_FULL_LENGTH_FRACTION = 0.3
SOURCE = "dnalm_synth"

PROTECT_FREE, PROTECT_SNP_OK, PROTECT_ALL = 0, 1, 2

#: Longest synthetic chromosome and FASTA line (2^32 bases: longer than any real chromosome; beyond it
#: the generator's Poisson draws and array shapes overflow).
MAX_CHROMOSOME = 2**32


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of the synthetic genome model (see the module docstring).

    Rates are per base; densities per megabase of ancestral chromosome. ``ploidy <= 2`` writes one
    record per chromosome, ``ploidy >= 3`` writes ``ploidy`` homologous copies of each, each with SNPs
    at ``snp_rate`` and indel events at ``indel_rate`` (geometric lengths of mean 3 bp) relative to the
    ancestor, so two copies differ by about ``2 * (snp_rate + 3 * indel_rate)`` edits per base.
    """

    seed: int = 0
    n_chromosomes: int = 2
    chromosome_length: int = 200_000
    ploidy: int = 2
    gc: float = 0.38
    markov_order: int = 3
    markov_concentration: float = 30.0
    genes_per_mb: float = 100.0
    introns_per_gene: float = 2.0
    snp_rate: float = 0.01
    indel_rate: float = 0.001
    repeat_families: int = 6
    repeat_copies_per_mb: float = 40.0
    repeat_divergence: float = 0.15
    tandem_repeats_per_mb: float = 20.0
    centromere_fraction: float = 0.02
    n_gaps_per_mb: float = 5.0
    n_gap_min: int = 100
    n_gap_max: int = 1000
    gzip: bool = False
    line_width: int = 60

    def __post_init__(self) -> None:
        checks = [
            ("seed", self.seed >= 0, "must be >= 0"),
            ("n_chromosomes", 1 <= self.n_chromosomes <= 10_000, "must be in [1, 10000]"),
            ("chromosome_length", 10_000 <= self.chromosome_length <= MAX_CHROMOSOME,
             f"must be in [10000, {MAX_CHROMOSOME}]"),
            ("ploidy", 1 <= self.ploidy <= 26, "must be in [1, 26]"),
            ("gc", 0.1 <= self.gc <= 0.9, "must be in [0.1, 0.9]"),
            ("markov_order", 1 <= self.markov_order <= 6, "must be in [1, 6]"),
            ("markov_concentration", self.markov_concentration > 0, "must be > 0"),
            ("genes_per_mb", self.genes_per_mb >= 0, "must be >= 0"),
            ("introns_per_gene", self.introns_per_gene >= 0, "must be >= 0"),
            ("snp_rate", 0 <= self.snp_rate <= 0.2, "must be in [0, 0.2]"),
            ("indel_rate", 0 <= self.indel_rate <= 0.05, "must be in [0, 0.05]"),
            ("repeat_families", 0 <= self.repeat_families <= 1000, "must be in [0, 1000]"),
            ("repeat_copies_per_mb", self.repeat_copies_per_mb >= 0, "must be >= 0"),
            ("repeat_divergence", 0 <= self.repeat_divergence <= 0.5, "must be in [0, 0.5]"),
            ("tandem_repeats_per_mb", self.tandem_repeats_per_mb >= 0, "must be >= 0"),
            ("centromere_fraction", 0 <= self.centromere_fraction <= 0.3, "must be in [0, 0.3]"),
            ("n_gaps_per_mb", self.n_gaps_per_mb >= 0, "must be >= 0"),
            ("n_gap_min", self.n_gap_min >= 1, "must be >= 1"),
            ("n_gap_max", self.n_gap_max >= self.n_gap_min, f"must be >= n_gap_min ({self.n_gap_min})"),
            ("line_width", 1 <= self.line_width <= MAX_CHROMOSOME, f"must be in [1, {MAX_CHROMOSOME}]"),
        ]
        for key, ok, why in checks:
            if not ok:
                raise ConfigError(f"synth.{key} {why} (got {getattr(self, key)!r})")

    @property
    def n_copies(self) -> int:
        """Records written per chromosome."""
        return self.ploidy if self.ploidy >= 3 else 1


def record_names(cfg: SynthConfig) -> list[tuple[str, str]]:
    """``(record, homology group)`` pairs in FASTA order, e.g. ``("Chr1B", "Chr1")``."""
    out = []
    for i in range(1, cfg.n_chromosomes + 1):
        group = f"Chr{i}"
        if cfg.n_copies == 1:
            out.append((group, group))
        else:
            out.extend((f"{group}{chr(ord('A') + c)}", group) for c in range(cfg.n_copies))
    return out


# ----------------------------------------------------------------------------------------------
# sequence helpers

def _codes(text: str) -> np.ndarray:
    """ACGT string -> codes ``(n,)`` uint8."""
    lut = np.full(256, 255, dtype=np.uint8)
    lut[np.frombuffer(b"ACGTN", dtype=np.uint8)] = np.arange(5, dtype=np.uint8)
    return lut[np.frombuffer(text.encode(), dtype=np.uint8)]


def _revcomp(x: np.ndarray) -> np.ndarray:
    """Reverse complement of codes ``(n,)`` without N."""
    return (3 - x)[::-1]


def _random_bases(rng: np.random.Generator, n: int, gc: float) -> np.ndarray:
    """``(n,)`` iid bases with GC fraction ``gc``."""
    p = np.array([1 - gc, gc, gc, 1 - gc]) / 2
    return rng.choice(4, size=n, p=p).astype(np.uint8)


def _motif(rng: np.random.Generator, pattern: str) -> np.ndarray:
    """One instance ``(len(pattern),)`` of an IUPAC pattern, each ambiguous base drawn uniformly."""
    return _codes("".join(IUPAC[c][rng.integers(len(IUPAC[c]))] for c in pattern))


def _substitute(rng: np.random.Generator, x: np.ndarray, rate: float) -> np.ndarray:
    """Copy of ``x`` with each base replaced by one of the three others with probability ``rate``."""
    x = x.copy()
    hit = np.flatnonzero(rng.random(x.size) < rate)
    x[hit] = (x[hit] + rng.integers(1, 4, hit.size)) % 4
    return x


def _indel_events(rng: np.random.Generator, n: int, rate: float, mean_length: float,
                  free: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Draw indels on a sequence of length ``n``.

    Returns ``keep (n,) bool`` (False where deleted) and ``ins_after (n,) int64`` (bases inserted after
    each position). Events are Poisson with ``rate`` per base, half insertions and half deletions, with
    geometric lengths of mean ``mean_length``; deletions must lie within ``free`` and insertions are
    anchored on ``free`` positions (all positions when ``free`` is None).
    """
    k = rng.binomial(n, rate)
    pos = rng.integers(0, n, k)
    length = rng.geometric(1.0 / mean_length, k)
    is_ins = rng.random(k) < 0.5
    keep = np.ones(n, dtype=bool)
    ins_after = np.zeros(n, dtype=np.int64)
    if k == 0:
        return keep, ins_after
    blocked = np.zeros(n + 1, dtype=np.int64)
    if free is not None:
        np.cumsum(~free, out=blocked[1:])
    dpos, dlen = pos[~is_ins], length[~is_ins]
    dend = np.minimum(dpos + dlen, n)
    ok = blocked[dend] - blocked[dpos] == 0
    diff = np.zeros(n + 1, dtype=np.int64)
    np.add.at(diff, dpos[ok], 1)
    np.add.at(diff, dend[ok], -1)
    keep &= np.cumsum(diff[:n]) == 0
    ipos, ilen = pos[is_ins], length[is_ins]
    if free is not None:
        ilen = ilen[free[ipos]]
        ipos = ipos[free[ipos]]
    np.add.at(ins_after, ipos, ilen)
    return keep, ins_after


def _apply_indels(rng: np.random.Generator, x: np.ndarray, keep: np.ndarray, ins_after: np.ndarray,
                  gc: float) -> tuple[np.ndarray, np.ndarray]:
    """Apply indel events to codes ``x (n,)``.

    Returns the new sequence ``(m,)`` (inserted bases iid with GC ``gc``) and ``new_pos (n,) int64``,
    the new index of each old base (meaningful where ``keep``).
    """
    counts = keep.astype(np.int64) + ins_after
    new_pos = np.cumsum(counts) - counts
    out = np.empty(int(counts.sum()), dtype=np.uint8)
    inserted = np.ones(out.size, dtype=bool)
    inserted[new_pos[keep]] = False
    out[new_pos[keep]] = x[keep]
    out[inserted] = _random_bases(rng, int(inserted.sum()), gc)
    return out, new_pos


def _markov_chain(rng: np.random.Generator, cum: np.ndarray, order: int, n: int) -> np.ndarray:
    """``(n,)`` bases from an order-``order`` Markov chain with cumulative transition rows ``cum``.

    ``cum (4**order, 3)`` holds P(b <= 0), P(b <= 1), P(b <= 2) given the previous ``order`` bases
    (state index = base-4 number of the context). The sequence is sampled as ``ceil(n / MARKOV_STEPS)``
    chains advanced in parallel (vectorised over chains) and concatenated; each chain starts from a
    uniformly drawn context.
    """
    chains = max(1, -(-n // MARKOV_STEPS))
    steps = -(-n // chains)
    state_mask = 4 ** order - 1
    c0, c1, c2 = (np.ascontiguousarray(cum[:, j], dtype=np.float32) for j in range(3))
    state = rng.integers(0, 4 ** order, chains)
    out = np.empty((steps, chains), dtype=np.uint8)
    for t in range(steps):
        u = rng.random(chains, dtype=np.float32)
        b = (u > c0[state]).astype(np.uint8)
        b += u > c1[state]
        b += u > c2[state]
        out[t] = b
        state = ((state << 2) | b) & state_mask
    return out.T.reshape(-1)[:n]


# ----------------------------------------------------------------------------------------------
# genome-level tables

@dataclass
class _TEFamily:
    name: str
    kind: str
    consensus: np.ndarray          # (n,) codes


@dataclass
class _Model:
    """Tables drawn once per genome."""

    markov_cum: np.ndarray         # (4**k, 3)
    codon_codes: np.ndarray        # (61, 3) sense codons
    codon_p: np.ndarray            # (61,)
    stop_codes: np.ndarray         # (3, 3)
    stop_p: np.ndarray             # (3,)
    fourfold: np.ndarray           # (16,) bool, by 4 * first + second base
    te_families: list[_TEFamily]
    te_p: np.ndarray               # (F,)
    satellite: np.ndarray          # (m,) centromeric monomer


def _draw_model(rng: np.random.Generator, cfg: SynthConfig) -> _Model:
    gc = cfg.gc
    base_p = np.array([1 - gc, gc, gc, 1 - gc]) / 2
    rows = rng.dirichlet(cfg.markov_concentration * base_p, size=4 ** cfg.markov_order)
    cum = np.cumsum(rows, axis=1)[:, :3]

    sense = [c for c, aa in GENETIC_CODE.items() if aa != "*"]
    gc3 = np.array([c[2] in "GC" for c in sense])
    weight = rng.gamma(2.0, size=len(sense)) * np.where(gc3, 2 * gc, 2 * (1 - gc))
    aa_of = np.array([GENETIC_CODE[c] for c in sense])
    codon_p = np.empty(len(sense))
    for aa, pct in _AMINO_ACID_PERCENT.items():
        sel = aa_of == aa
        codon_p[sel] = pct * weight[sel] / weight[sel].sum()
    codon_p /= codon_p.sum()
    stop_p = rng.dirichlet(np.full(3, 4.0))
    fourfold = np.zeros(16, dtype=bool)
    for prefix in _FOURFOLD_PREFIXES:
        a, b = _codes(prefix)
        fourfold[4 * a + b] = True

    families = []
    kinds = ("LTR", "TIR", "LINE")
    for f in range(cfg.repeat_families):
        kind = kinds[f % 3]
        if kind == "LTR":
            ltr = _random_bases(rng, int(rng.integers(150, 600)), gc)
            seq = np.concatenate([ltr, _random_bases(rng, int(rng.integers(1000, 4000)), gc), ltr])
        elif kind == "TIR":
            tir = _random_bases(rng, int(rng.integers(15, 50)), gc)
            seq = np.concatenate([tir, _random_bases(rng, int(rng.integers(200, 2500)), gc), _revcomp(tir)])
        else:
            seq = np.concatenate([_random_bases(rng, int(rng.integers(1000, 5000)), gc),
                                  np.zeros(int(rng.integers(10, 30)), dtype=np.uint8)])
        families.append(_TEFamily(f"TE{f + 1:03d}_{kind}", kind, seq))
    te_p = rng.dirichlet(np.ones(max(cfg.repeat_families, 1)))[: cfg.repeat_families]
    satellite = _random_bases(rng, int(rng.integers(150, 181)), gc)
    return _Model(cum, np.stack([_codes(c) for c in sense]), codon_p,
                  np.stack([_codes(c) for c in STOP_CODONS]), stop_p, fourfold, families, te_p, satellite)


# ----------------------------------------------------------------------------------------------
# objects laid out along an ancestral chromosome

# A feature in object coordinates: (start, end) 0-based half-open, type, strand, phase, attributes.
# Attribute templates contain "{id}" for the object's ID prefix, filled in at layout.
_Feature = tuple[int, int, str, str, str, str]


@dataclass
class _Object:
    kind: str                      # gene, te, tandem, centromere, gap
    seq: np.ndarray                # (n,) codes
    lower: bool                    # soft-masked
    protect: np.ndarray            # (n,) uint8 PROTECT_* class
    features: list[_Feature]


def _gene(rng: np.random.Generator, model: _Model, cfg: SynthConfig, minus: bool) -> _Object:
    """One protein-coding gene with its promoter, in genome orientation."""
    gc = cfg.gc
    intron_gc = max(0.1, gc - 0.07)
    n_codons = int(min(60 + rng.gamma(2.0, 150.0), 2000))
    body = rng.choice(len(model.codon_p), size=n_codons - 2, p=model.codon_p)
    stop = model.stop_codes[rng.choice(3, p=model.stop_p)]
    cds = np.concatenate([_codes("ATG"), model.codon_codes[body].reshape(-1), stop])
    cds_protect = np.full(cds.size, PROTECT_ALL, dtype=np.uint8)
    codons = cds.reshape(-1, 3)
    third = np.flatnonzero(model.fourfold[4 * codons[:, 0] + codons[:, 1]]) * 3 + 2
    cds_protect[third] = PROTECT_SNP_OK

    n_introns = min(int(rng.poisson(cfg.introns_per_gene)), cds.size // (2 * MIN_EXON) - 1)
    cut_sites = np.arange(MIN_EXON, cds.size - MIN_EXON)
    cuts = np.sort(rng.choice(cut_sites, size=max(n_introns, 0), replace=False))
    kept: list[int] = []
    for c in cuts.tolist():
        if not kept or c - kept[-1] >= MIN_EXON:
            kept.append(c)

    pieces: list[tuple[np.ndarray, np.ndarray]] = []   # (codes, protect) in transcript order

    def add(seq: np.ndarray, protect: np.ndarray | int) -> int:
        start = sum(p[0].size for p in pieces)
        prot = np.full(seq.size, protect, dtype=np.uint8) if np.isscalar(protect) else protect
        pieces.append((seq, prot))
        return start

    promoter = _random_bases(rng, PROMOTER_LENGTH, gc)
    promoter_protect = np.full(PROMOTER_LENGTH, PROTECT_SNP_OK, dtype=np.uint8)
    tata = PROMOTER_LENGTH + int(rng.integers(TATA_OFFSET[0], TATA_OFFSET[1] + 1))
    promoter[tata: tata + len(TATA_MOTIF)] = _motif(rng, TATA_MOTIF)
    promoter_protect[tata: tata + len(TATA_MOTIF)] = PROTECT_ALL
    add(promoter, promoter_protect)
    tss = PROMOTER_LENGTH
    utr5 = _random_bases(rng, int(rng.integers(UTR5_LENGTH[0], UTR5_LENGTH[1] + 1)), gc)
    add(utr5, PROTECT_SNP_OK)

    cds_parts: list[tuple[int, int]] = []              # unit coordinates, transcript order
    introns: list[tuple[int, int]] = []
    bounds = [0, *kept, cds.size]
    for i in range(len(bounds) - 1):
        s = add(cds[bounds[i]: bounds[i + 1]], cds_protect[bounds[i]: bounds[i + 1]])
        cds_parts.append((s, s + bounds[i + 1] - bounds[i]))
        if i < len(bounds) - 2:
            length = int(min(70 + rng.gamma(1.5, 100.0), 3000))
            seq = _random_bases(rng, length, intron_gc)
            prot = np.full(length, PROTECT_SNP_OK, dtype=np.uint8)
            seq[:6] = _motif(rng, SPLICE_DONOR)
            prot[:2] = PROTECT_ALL
            seq[-2:] = _codes("AG")
            prot[-2:] = PROTECT_ALL
            dist = int(rng.integers(BRANCH_DISTANCE[0], BRANCH_DISTANCE[1] + 1))
            branch_a = length - 2 - dist
            seq[branch_a - 3: branch_a + 2] = _motif(rng, BRANCH_MOTIF)
            prot[branch_a - 3: branch_a + 2] = PROTECT_ALL
            tract = np.arange(branch_a + 2, length - 2)
            seq[tract] = np.where(rng.random(tract.size) < 0.85, rng.choice(np.array([1, 3], np.uint8),
                                                                          tract.size), seq[tract])
            s = add(seq, prot)
            introns.append((s, s + length))
    utr3_len = int(rng.integers(UTR3_LENGTH[0], UTR3_LENGTH[1] + 1))
    utr3 = _random_bases(rng, utr3_len, gc)
    utr3_protect = np.full(utr3_len, PROTECT_SNP_OK, dtype=np.uint8)
    pas = utr3_len - int(rng.integers(POLYA_DISTANCE[0], POLYA_DISTANCE[1] + 1)) - len(POLYA_SIGNAL)
    utr3[pas: pas + len(POLYA_SIGNAL)] = _codes(POLYA_SIGNAL)
    utr3_protect[pas: pas + len(POLYA_SIGNAL)] = PROTECT_ALL
    utr3_start = add(utr3, utr3_protect)
    pas += utr3_start

    seq = np.concatenate([p[0] for p in pieces])
    protect = np.concatenate([p[1] for p in pieces])
    inr = tss - 2
    seq[inr: inr + len(INR_MOTIF)] = _motif(rng, INR_MOTIF)
    protect[inr: inr + len(INR_MOTIF)] = PROTECT_ALL
    end = seq.size

    exons, cursor = [], tss
    for s, e in introns:
        exons.append((cursor, s))
        cursor = e
    exons.append((cursor, end))
    phases, done = [], 0
    for s, e in cds_parts:
        phases.append((3 - done % 3) % 3)
        done += e - s

    tx = "{id}.t1"
    feats: list[tuple[int, int, str, str, str]] = [
        (0, tss, "promoter", ".", "ID={id}.promoter;gene={id}"),
        (tata, tata + len(TATA_MOTIF), "TATA_box", ".", "ID={id}.tata;Parent={id}.promoter"),
        (tss, end, "gene", ".", "ID={id};Name={id};gene_biotype=protein_coding"),
        (tss, end, "mRNA", ".", f"ID={tx};Parent={{id}};transcript_biotype=mRNA"),
    ]
    feats += [(s, e, "exon", ".", f"ID={tx}.exon{i + 1};Parent={tx}") for i, (s, e) in enumerate(exons)]
    feats.append((tss, cds_parts[0][0], "five_prime_UTR", ".", f"ID={tx}.utr5;Parent={tx}"))
    feats += [(s, e, "CDS", str(ph), f"ID={tx}.cds;Parent={tx}") for (s, e), ph in zip(cds_parts, phases)]
    feats.append((cds_parts[-1][1], end, "three_prime_UTR", ".", f"ID={tx}.utr3;Parent={tx}"))
    feats.append((pas, pas + len(POLYA_SIGNAL), "polyA_signal_sequence", ".", f"ID={tx}.pas;Parent={tx}"))

    strand = "-" if minus else "+"
    if minus:
        seq, protect = _revcomp(seq), protect[::-1].copy()
        feats = [(end - e, end - s, t, ph, a) for s, e, t, ph, a in feats]
    features = [(s, e, t, strand, ph, a) for s, e, t, ph, a in feats]
    return _Object("gene", seq, False, protect, features)


def _te_copy(rng: np.random.Generator, model: _Model, cfg: SynthConfig, family: int) -> _Object:
    fam = model.te_families[family]
    n = fam.consensus.size
    if rng.random() < TE_FULL_LENGTH_FRACTION:
        s, e = 0, n
    elif fam.kind == "LINE":
        s, e = int(rng.integers(0, n - 50)), n
    else:
        length = int(rng.integers(50, n + 1))
        s = int(rng.integers(0, n - length + 1))
        e = s + length
    divergence = float(rng.uniform(0.0, cfg.repeat_divergence))
    seq = _substitute(rng, fam.consensus[s:e], divergence)
    keep, ins = _indel_events(rng, seq.size, divergence / 10, 2.0, None)
    seq, _ = _apply_indels(rng, seq, keep, ins, cfg.gc)
    if seq.size == 0:
        seq = fam.consensus[s:e].copy()
    minus = rng.random() < 0.5
    if minus:
        seq = _revcomp(seq)
    attrs = (f"ID={{id}};Name={fam.name};rpt_family={fam.name};rpt_class={fam.kind};"
             f"Target={fam.name} {s + 1} {e} +;divergence={divergence:.3f}")
    feat = (0, seq.size, "transposable_element", "-" if minus else "+", ".", attrs)
    return _Object("te", seq, True, np.full(seq.size, PROTECT_SNP_OK, dtype=np.uint8), [feat])


def _tandem(rng: np.random.Generator, cfg: SynthConfig, unit: np.ndarray | None, length: int,
            mutation: float, name: str) -> _Object:
    if unit is None:
        k = int(rng.integers(1, 7)) if rng.random() < 0.7 else int(rng.integers(7, 41))
        unit = _random_bases(rng, k, cfg.gc)
    seq = _substitute(rng, np.resize(unit, length), mutation)
    if unit.size <= 40:
        unit_attr = "rpt_unit_seq=" + ASCII_UPPER[unit].tobytes().decode()
    else:
        unit_attr = f"rpt_unit_length={unit.size}"
    attrs = f"ID={{id}};Name={name};rpt_type=tandem;{unit_attr}"
    feat = (0, length, "repeat_region", "+", ".", attrs)
    return _Object("tandem" if name != "centromeric_satellite" else "centromere", seq, True,
                   np.full(length, PROTECT_SNP_OK, dtype=np.uint8), [feat])


def _gap(length: int) -> _Object:
    feat = (0, length, "gap", ".", ".", "ID={id};estimated_length=" + str(length))
    return _Object("gap", np.full(length, N_CODE, dtype=np.uint8), False,
                   np.full(length, PROTECT_ALL, dtype=np.uint8), [feat])


@dataclass
class _Chromosome:
    """An ancestral chromosome: codes, soft mask, mutation protection and features."""

    seq: np.ndarray                # (L,) uint8 codes
    lower: np.ndarray              # (L,) bool
    protect: np.ndarray            # (L,) uint8
    starts: np.ndarray             # (F,) int64, 0-based
    ends: np.ndarray               # (F,) int64, exclusive
    rows: list[tuple[str, str, str, str]]   # (type, strand, phase, attributes with "{rec}")
    n_genes: int


_PREFIX = {"gene": "g", "te": "te", "tandem": "tr", "centromere": "cen", "gap": "gap"}


def _chromosome(rng: np.random.Generator, model: _Model, cfg: SynthConfig, index: int) -> _Chromosome:
    L = cfg.chromosome_length
    mb = L / 1e6
    objects: list[_Object] = []
    for minus in rng.random(rng.poisson(cfg.genes_per_mb * mb)) < 0.5:
        objects.append(_gene(rng, model, cfg, bool(minus)))
    if cfg.repeat_families:
        n_copies = rng.poisson(cfg.repeat_copies_per_mb * mb)
        for fam in rng.choice(cfg.repeat_families, size=n_copies, p=model.te_p):
            objects.append(_te_copy(rng, model, cfg, int(fam)))
    for _ in range(rng.poisson(cfg.tandem_repeats_per_mb * mb)):
        objects.append(_tandem(rng, cfg, None, int(rng.integers(20, 400)), 0.03, "tandem_repeat"))
    for _ in range(rng.poisson(cfg.n_gaps_per_mb * mb)):
        objects.append(_gap(int(rng.integers(cfg.n_gap_min, cfg.n_gap_max + 1))))
    order = [objects[i] for i in rng.permutation(len(objects))]
    cen_length = int(round(cfg.centromere_fraction * L))
    if cen_length >= model.satellite.size:
        cen = _tandem(rng, cfg, model.satellite, cen_length, 0.05, "centromeric_satellite")
        order.insert(len(order) // 2, cen)

    sizes = np.array([o.seq.size for o in order], dtype=np.int64)
    slots = len(order) + 1
    extra = L - int(sizes.sum()) - slots * MIN_SPACER
    if extra < 0:
        raise ConfigError(
            f"synth.chromosome_length={L} cannot hold the {len(order)} genes, repeats and gaps drawn for "
            f"Chr{index + 1} ({int(sizes.sum())} bp); lower genes_per_mb, repeat_copies_per_mb, "
            "tandem_repeats_per_mb or n_gaps_per_mb, or raise chromosome_length")
    w = rng.exponential(size=slots)
    spacer = np.floor(extra * w / w.sum()).astype(np.int64)
    spacer[rng.choice(slots, size=extra - int(spacer.sum()), replace=False)] += 1
    spacer += MIN_SPACER
    starts = np.cumsum(spacer[:-1]) + np.concatenate([[0], np.cumsum(sizes)[:-1]])

    seq = _markov_chain(rng, model.markov_cum, cfg.markov_order, L)
    lower = np.zeros(L, dtype=bool)
    protect = np.zeros(L, dtype=np.uint8)
    f_start, f_end, rows = [], [], []
    counters = dict.fromkeys(_PREFIX, 0)
    for obj, pos in zip(order, starts.tolist()):
        n = obj.seq.size
        seq[pos: pos + n] = obj.seq
        lower[pos: pos + n] = obj.lower
        protect[pos: pos + n] = obj.protect
        counters[obj.kind] += 1
        oid = "{rec}." + f"{_PREFIX[obj.kind]}{counters[obj.kind]:05d}"
        for s, e, ftype, strand, phase, attrs in obj.features:
            f_start.append(pos + s)
            f_end.append(pos + e)
            rows.append((ftype, strand, phase, attrs.replace("{id}", oid)))
    return _Chromosome(seq, lower, protect, np.array(f_start, dtype=np.int64),
                       np.array(f_end, dtype=np.int64), rows, counters["gene"])


def _derive_copy(rng: np.random.Generator, anc: _Chromosome, cfg: SynthConfig
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A homologous copy of ``anc`` with SNPs and indels that keep every feature valid.

    Returns ``seq (m,)``, ``lower (m,)``, and the feature ``starts, ends (F,)`` in copy coordinates.
    """
    L = anc.seq.size
    seq = anc.seq.copy()
    pos = np.unique(rng.integers(0, L, rng.binomial(L, cfg.snp_rate)))
    pos = pos[anc.protect[pos] <= PROTECT_SNP_OK]
    seq[pos] = (seq[pos] + rng.integers(1, 4, pos.size)) % 4
    if cfg.indel_rate == 0:
        return seq, anc.lower, anc.starts, anc.ends
    free = (anc.protect == PROTECT_FREE) & ~anc.lower
    keep, ins_after = _indel_events(rng, L, cfg.indel_rate, INDEL_MEAN_LENGTH, free)
    new_seq, new_pos = _apply_indels(rng, seq, keep, ins_after, cfg.gc)
    new_lower = np.zeros(new_seq.size, dtype=bool)
    new_lower[new_pos[keep]] = anc.lower[keep]
    return new_seq, new_lower, new_pos[anc.starts], new_pos[anc.ends - 1] + 1


# ----------------------------------------------------------------------------------------------
# writing

def _fasta_bytes(name: str, seq: np.ndarray, lower: np.ndarray, width: int) -> bytes:
    text = np.where(lower, ASCII_LOWER[seq], ASCII_UPPER[seq])
    full = text.size // width
    block = np.empty((full, width + 1), dtype=np.uint8)
    block[:, :width] = text[: full * width].reshape(full, width)
    block[:, width] = ord("\n")
    tail = text[full * width:].tobytes()
    return f">{name}\n".encode() + block.tobytes() + (tail + b"\n" if tail else b"")


def synthesize(cfg: SynthConfig, out_dir: str | Path) -> dict[str, Path]:
    """Write a synthetic genome into ``out_dir`` and return the paths written.

    Keys: ``fasta`` (``genome.fa`` or ``genome.fa.gz``), ``gff3`` (``annotation.gff3``),
    ``homology`` (``homology.tsv``: a comment line ``# record<TAB>group``, then one line per record) and
    ``summary`` (``synth.json``: the config and per-record statistics). Each file is written
    atomically; the same ``cfg`` always gives byte-identical files.
    """
    out = make_dir(out_dir)
    paths = {"fasta": out / ("genome.fa.gz" if cfg.gzip else "genome.fa"), "gff3": out / "annotation.gff3",
             "homology": out / "homology.tsv", "summary": out / "synth.json"}
    root = np.random.SeedSequence(cfg.seed)
    model_seed, *chrom_seeds = root.spawn(cfg.n_chromosomes + 1)
    model = _draw_model(np.random.default_rng(model_seed), cfg)
    names = record_names(cfg)
    records: list[dict] = []
    regions: list[str] = []

    with atomic_file(paths["fasta"]) as fasta_tmp, open(fasta_tmp, "wb") as raw, \
            tempfile.TemporaryFile(mode="w+", dir=out) as body:
        fasta = gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) if cfg.gzip else raw
        for i in track(range(cfg.n_chromosomes), total=cfg.n_chromosomes, desc="synth", unit="chr"):
            rng = np.random.default_rng(chrom_seeds[i])
            anc = _chromosome(rng, model, cfg, i)
            copy_names = names[i * cfg.n_copies: (i + 1) * cfg.n_copies]
            for rec, group in copy_names:
                if cfg.n_copies == 1:
                    seq, lower, starts, ends = anc.seq, anc.lower, anc.starts, anc.ends
                else:
                    seq, lower, starts, ends = _derive_copy(rng, anc, cfg)
                fasta.write(_fasta_bytes(rec, seq, lower, cfg.line_width))
                regions.append(f"##sequence-region {rec} 1 {seq.size}\n")
                lines = [
                    f"{rec}\t{SOURCE}\t{t}\t{s + 1}\t{e}\t.\t{strand}\t{ph}\t{a.replace('{rec}', rec)}\n"
                    for (t, strand, ph, a), s, e in zip(anc.rows, starts.tolist(), ends.tolist())
                ]
                body.writelines(lines)
                body.write("###\n")
                counts = np.bincount(seq, minlength=5)
                records.append({
                    "name": rec, "group": group, "length": int(seq.size), "genes": anc.n_genes,
                    "repeat_bases": int(lower.sum()), "n_bases": int(counts[N_CODE]),
                    "gc": round(float(counts[1] + counts[2]) / max(1, int(counts[:4].sum())), 4),
                })
        if cfg.gzip:
            fasta.close()
        with atomic_file(paths["gff3"]) as gff_tmp, open(gff_tmp, "w") as gff:
            gff.write("##gff-version 3\n")
            gff.writelines(regions)
            body.seek(0)
            shutil.copyfileobj(body, gff)
        with atomic_file(paths["homology"]) as tsv_tmp:
            tsv_tmp.write_text("# record\tgroup\n" + "".join(f"{r}\t{g}\n" for r, g in names))
        summary = {
            "format": "dnalm-synth/1",
            "config": dataclasses.asdict(cfg),
            "files": {k: v.name for k, v in paths.items() if k != "summary"},
            "total_length": sum(r["length"] for r in records),
            "genes": sum(r["genes"] for r in records),
            "repeat_bases": sum(r["repeat_bases"] for r in records),
            "n_bases": sum(r["n_bases"] for r in records),
            "records": records,
        }
        with atomic_file(paths["summary"]) as js_tmp:
            js_tmp.write_text(json.dumps(summary, indent=1) + "\n")
    return paths
