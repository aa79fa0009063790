"""Malformed and hostile inputs through dnalm's entry points: count tracebacks, hangs and partial outputs.

A seeded generator builds inputs of every format dnalm reads (FASTA plain/gzip/bgzip, GFF3, labeled
CSV/TSV/FASTA, sequence tables, VCF/TSV variants, Hydra overrides and config files, model checkpoints and
training states, pickles whose ``__reduce__`` would run a shell command). Each input runs

* in-process through the library entry point that reads it (``read_lengths``/``iter_records``/
  ``FastaIndex``, ``read_gff3``/``index_gff3``, ``prepare``, ``LabeledSequenceDataset.from_path``,
  ``read_sequences``, ``read_variants``/``check_reference``/``variant_windows``, ``load_model``,
  ``read_training_state``, and ``dnalm.cli.run`` for overrides) in a worker process, with a per-input
  time limit (an input that runs past it is a hang; the worker is replaced) and an address-space limit;
* for a sample, through the real command line (``python -m dnalm.cli ...``), checking the exit status,
  that stderr is one ``dnalm: error: ...`` line naming the input and holding no traceback, and that no
  output (or temporary file) is left behind.

Outcomes: ``accepted`` (no error; outputs complete), ``clean`` (a DnalmError of one line naming the input),
``unclear`` (a DnalmError that does not name the input, or a CLI error of several lines), ``traceback``
(any other exception, or a CLI exit status other than 0 and 2), ``hang``, ``partial`` (an output or a
temporary file left after a failure), ``executed`` (a hostile pickle or config ran its command: its marker
file exists). Inputs built to be malformed that are accepted, and valid ones that are refused, are counted
as ``wrongly_accepted`` / ``wrongly_rejected`` (``expect`` of each kind of input).

    python benchmarks/fuzz_inputs.py --seed 0 --scale 1 --cli 60 --out benchmarks/fuzz_results

writes ``fuzz.json`` (every case with its outcome) and ``fuzz.md`` (the counts). ``--scale`` multiplies
the number of inputs per format (scale 1: 1,380 in-process inputs).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import os
import random
import resource
import selectors
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

#: Address-space limit of the worker and CLI processes (a hostile config that would allocate a huge model
#: fails instead of exhausting the machine).
MEMORY_LIMIT = 6 << 30
MARKER = "EXECUTED"
BAD_OUTCOMES = ("traceback", "hang", "partial", "executed")
#: In-process inputs per format at scale 1.
COUNTS = {"fasta": 200, "gzip": 120, "gff3": 220, "prepare": 100, "labeled": 180, "sequences": 80,
          "variants": 180, "config": 130, "checkpoint": 140, "training_state": 30}


# =============================================================================================
# Base content
# =============================================================================================

def bases(rng: random.Random, n: int, lower: float = 0.0, n_frac: float = 0.0) -> str:
    out = rng.choices("ACGT", k=n)
    if n_frac:
        for i in rng.sample(range(n), int(n * n_frac)):
            out[i] = "N"
    if lower:
        start = rng.randrange(max(1, n))
        for i in range(start, min(n, start + int(n * lower))):
            out[i] = out[i].lower()
    return "".join(out)


def fasta_text(records: Sequence[tuple[str, str]], width: int = 60, eol: str = "\n") -> str:
    lines = []
    for header, seq in records:
        lines.append(f">{header}")
        step = width if width > 0 else max(1, len(seq))
        lines.extend(seq[i:i + step] for i in range(0, len(seq), step))
    return eol.join(lines) + eol


def random_genome(rng: random.Random, n_records: int | None = None, lo: int = 50,
                  hi: int = 3000) -> list[tuple[str, str]]:
    n = n_records or rng.randint(1, 4)
    return [(f"chr{i + 1}", bases(rng, rng.randint(lo, hi), lower=rng.choice([0, 0.1, 0.3]),
                                  n_frac=rng.choice([0, 0, 0.05]))) for i in range(n)]


BASE_LENGTHS = {"chr1": 2400, "chr2": 1800, "chr3": 1200}


def base_genome() -> list[tuple[str, str]]:
    rng = random.Random("base-genome")
    return [(name, bases(rng, n, lower=0.1)) for name, n in BASE_LENGTHS.items()]


def gff_lines(rng: random.Random) -> list[str]:
    """A valid GFF3 body for the base genome (genes with mRNAs, exons, CDS, UTRs; ncRNA; a repeat)."""
    lines = ["##gff-version 3"] + [f"##sequence-region {n} 1 {length}" for n, length in BASE_LENGTHS.items()]
    s = rng.randint(50, 150)
    g = [s, s + 200, s + 400, s + 700, s + 1000]  # gene parts on chr1
    lines += [
        f"chr1\ttest\tgene\t{g[0]}\t{g[4]}\t.\t+\t.\tID=gene1;Name=G1",
        f"chr1\ttest\tmRNA\t{g[0]}\t{g[4]}\t.\t+\t.\tID=mrna1;Parent=gene1",
        f"chr1\ttest\texon\t{g[0]}\t{g[1]}\t.\t+\t.\tID=exon1;Parent=mrna1",
        f"chr1\ttest\texon\t{g[2]}\t{g[4]}\t.\t+\t.\tID=exon2;Parent=mrna1",
        f"chr1\ttest\tfive_prime_UTR\t{g[0]}\t{g[0] + 49}\t.\t+\t.\tParent=mrna1",
        f"chr1\ttest\tCDS\t{g[0] + 50}\t{g[1]}\t.\t+\t0\tID=cds1;Parent=mrna1",
        f"chr1\ttest\tCDS\t{g[2]}\t{g[3]}\t.\t+\t2\tID=cds1;Parent=mrna1",
        f"chr1\ttest\tthree_prime_UTR\t{g[3] + 1}\t{g[4]}\t.\t+\t.\tParent=mrna1",
        "chr2\ttest\tncRNA_gene\t300\t700\t.\t-\t.\tID=gene2",
        "chr2\ttest\tlnc_RNA\t300\t700\t.\t-\t.\tID=tx2;Parent=gene2",
        "chr2\ttest\texon\t300\t700\t.\t-\t.\tParent=tx2",
        f"chr3\ttest\trepeat_region\t{rng.randint(100, 400)}\t{rng.randint(500, 900)}\t12.5\t.\t.\tID=rep1",
    ]
    return lines


def labeled_rows(rng: random.Random, n: int = 16, named: bool = False) -> list[tuple[str, str]]:
    labels = ["promoter", "enhancer", "other"] if named else ["0", "1"]
    rows = [(bases(rng, rng.randint(20, 60)), labels[i % len(labels)]) for i in range(n)]
    return rows


def csv_text(header: Sequence[str], rows: Iterable[Sequence[str]], sep: str = ",", eol: str = "\n") -> str:
    return eol.join([sep.join(header)] + [sep.join(r) for r in rows]) + eol


# --- compression -------------------------------------------------------------------------------

BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")


def bgzf(data: bytes, eof: bool = True, block: int = 4096) -> bytes:
    """Blocked gzip (BGZF, as bgzip writes it) of ``data``."""
    out = bytearray()
    for i in range(0, len(data), block):
        chunk = data[i:i + block]
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        comp = c.compress(chunk) + c.flush()
        out += b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff\x06\x00BC\x02\x00"
        out += (len(comp) + 25).to_bytes(2, "little") + comp
        out += zlib.crc32(chunk).to_bytes(4, "little") + (len(chunk) & 0xFFFFFFFF).to_bytes(4, "little")
    return bytes(out + (BGZF_EOF if eof else b""))


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def corrupt_gzip(rng: random.Random, data: bytes, how: str) -> bytes:
    z = bytearray(gz(data))
    if how == "truncated":
        return bytes(z[: rng.randint(11, max(11, len(z) - 9))])
    if how == "header_only":
        return bytes(z[:10])
    if how == "magic_only":
        return b"\x1f\x8b"
    if how == "flip":
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(10, len(z) - 8)
            z[i] ^= 1 << rng.randrange(8)
        return bytes(z)
    if how == "bad_crc":
        z[-8] ^= 0xFF
        return bytes(z)
    if how == "bad_isize":
        z[-1] ^= 0x40
        return bytes(z)
    if how == "trailing_garbage":
        return bytes(z) + bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
    if how == "bad_method":
        z[2] = 7
        return bytes(z)
    raise ValueError(how)


def mutate(rng: random.Random, data: bytes, ops: int | None = None) -> bytes:
    """1-3 random edits: byte flips, inserted hostile bytes, deleted spans, truncation, line shuffles."""
    b = bytearray(data)
    specials = [b"\x00", b"\xff", b"\xc3\xa9", b">", b"\t", b"\n", b"\r\n", b";", b"=", b"%", b",", b'"', b"#",
                b" ", b"-1", b"99999999999999999999", b"N" * 5, b"\xef\xbb\xbf"]
    for _ in range(ops or rng.randint(1, 3)):
        if not b:
            b += rng.choice(specials)
            continue
        op = rng.randrange(8)
        i = rng.randrange(len(b))
        if op == 0:
            b[i] = rng.randrange(256)
        elif op == 1:
            b[i:i] = rng.choice(specials)
        elif op == 2:
            del b[i:i + rng.randint(1, 40)]
        elif op == 3:
            del b[i:]
        else:
            lines = bytes(b).split(b"\n")
            j, k = rng.randrange(len(lines)), rng.randrange(len(lines))
            if op == 4:
                lines.insert(k, lines[j])
            elif op == 5:
                del lines[j]
            elif op == 6:
                lines[j], lines[k] = lines[k], lines[j]
            else:
                lines[j] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 30)))
            b = bytearray(b"\n".join(lines))
    return bytes(b)


def garbage(rng: random.Random, n: int | None = None) -> bytes:
    return bytes(rng.randrange(256) for _ in range(n or rng.randint(1, 4000)))


# =============================================================================================
# Cases
# =============================================================================================

@dataclass(frozen=True)
class Case:
    """One input: its format, the kind of malformation, the entry point that reads it, what a correct
    reader does with it (``error``, ``accept`` or ``any``) and the seed of its random choices."""

    index: int
    fmt: str
    kind: str
    target: str
    expect: str
    seed: str


@dataclass
class Built:
    """The files of a case: ``path`` (the input), ``args`` (entry-point arguments), ``outputs`` (paths
    that must not exist after a failure), ``cli`` (the command-line arguments of the CLI sample)."""

    path: Path | None = None
    args: dict[str, Any] = field(default_factory=dict)
    outputs: list[Path] = field(default_factory=list)
    cli: list[str] | None = None
    names: list[str] = field(default_factory=list)  # what a clean error message should mention


@dataclass
class Assets:
    """Files shared by the cases: a valid genome, its GFF3, a tiny model, a prepared genome, sequences."""

    root: Path
    fasta: Path
    gff: Path
    model: Path
    prepared: Path
    seqs: Path
    variants: Path
    labeled: Path
    genome: dict[str, str]
    checkpoint: Path  # a full training checkpoint of the tiny model on ``prepared``


Builder = Callable[[random.Random, Path, Assets], Built]
KINDS: dict[str, list[tuple[str, str, str, Builder]]] = {}  # fmt -> [(kind, target, expect, builder)]


def kind(fmt: str, name: str, target: str, expect: str):
    def register(fn: Builder) -> Builder:
        KINDS.setdefault(fmt, []).append((name, target, expect, fn))
        return fn
    return register


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def one(path: Path) -> Built:
    return Built(path=path, names=[path.name])


# --- FASTA ------------------------------------------------------------------------------------

def _fasta_case(name: str, expect: str, make: Callable[[random.Random], bytes | str], fmt: str = "fasta",
                suffix: str = ".fa") -> None:
    def build(rng: random.Random, d: Path, a: Assets) -> Built:
        return one(write(d / f"in{suffix}", make(rng)))
    kind(fmt, name, "fasta", expect)(build)


def _huge_line(rng: random.Random) -> str:
    return f">big\n{bases(rng, rng.randint(2, 6) * 1_000_000)}\n"


def _irregular(rng: random.Random) -> str:
    out = []
    for name, seq in random_genome(rng):
        out.append(f">{name}")
        i = 0
        while i < len(seq):
            w = rng.randint(1, 120)
            out.append(seq[i:i + w])
            i += w
    return "\n".join(out) + "\n"


_FASTA_KINDS: list[tuple[str, str, Callable[[random.Random], bytes | str]]] = [
    ("valid", "accept", lambda r: fasta_text(random_genome(r), width=r.choice([50, 60, 61, 80, 0]))),
    ("crlf", "accept", lambda r: fasta_text(random_genome(r), eol="\r\n")),
    ("mixed_eol", "accept", lambda r: fasta_text(random_genome(r)).replace("\n", "\r\n", r.randint(1, 5))),
    ("blank_lines", "accept", lambda r: fasta_text(random_genome(r)).replace("\n", "\n\n", r.randint(1, 9))),
    ("spaces_in_sequence", "accept", lambda r: fasta_text(random_genome(r)).replace("ACG", "AC G\t", 3)),
    ("iupac_codes", "accept", lambda r: fasta_text([("x", "ACGTNRYSWKMBDHVacgtnrysw" * r.randint(1, 20))])),
    ("no_final_newline", "accept", lambda r: fasta_text(random_genome(r)).rstrip("\n")),
    ("long_description", "accept", lambda r: fasta_text([(f"x {'d' * r.randint(1000, 100000)}", "ACGT")])),
    ("non_ascii_header", "accept", lambda r: fasta_text([("séquence_α desc ü", "ACGT" * 10)])),
    ("latin1_header", "accept", lambda r: b">caf\xe9 desc\nACGTACGT\n"),
    ("huge_line", "accept", _huge_line),
    ("many_records", "accept", lambda r: fasta_text([(f"r{i}", bases(r, r.randint(1, 30)))
                                                     for i in range(r.randint(2000, 6000))])),
    ("irregular_widths", "accept", _irregular),
    ("cr_only", "any", lambda r: fasta_text(random_genome(r), eol="\r")),
    ("bom", "any", lambda r: "\ufeff" + fasta_text(random_genome(r))),
    ("no_header", "error", lambda r: bases(r, r.randint(1, 500)) + "\n"),
    ("text_before_header", "error", lambda r: "some notes\n" + fasta_text(random_genome(r))),
    ("duplicate_names", "error", lambda r: fasta_text([("a", "ACGT"), ("b", "GG"), ("a", "TT")])),
    ("empty_record", "error", lambda r: fasta_text([("a", "ACGT")]) + ">b\n" + fasta_text([("c", "GG")])),
    ("empty_record_at_end", "error", lambda r: fasta_text(random_genome(r)) + ">last\n"),
    ("header_starting_with_space", "any", lambda r: "> only a description\nACGT\n"),
    ("only_gt", "error", lambda r: ">\n"),
    ("empty_file", "error", lambda r: ""),
    ("whitespace_only", "error", lambda r: " \n\t\r\n\n"),
    ("digits_in_sequence", "error", lambda r: fasta_text([("a", "ACGT1234ACGT")])),
    ("gap_and_stop", "error", lambda r: fasta_text([("a", "ACGT-" + r.choice("-*.") + "ACGT")])),
    ("non_ascii_sequence", "error", lambda r: fasta_text([("a", "ACGTéACGT")])),
    ("nul_bytes", "error", lambda r: b">a\nAC\x00GT\n"),
    ("binary_garbage", "error", lambda r: garbage(r)),
    ("utf16", "error", lambda r: fasta_text(random_genome(r)).encode("utf-16")),
    ("gt_inside_line", "error", lambda r: ">a\nACGT>ACGT\n"),
    ("semicolon_comment", "error", lambda r: ";comment\n" + fasta_text(random_genome(r))),
    ("html", "error", lambda r: "<html><body>404 Not Found</body></html>\n"),
    ("protein", "error", lambda r: ">p\nMKVLAAGIVGLLLAQPEFWQ\n"),
]
for _name, _expect, _make in _FASTA_KINDS:
    _fasta_case(_name, _expect, _make)


@kind("fasta", "mutated", "fasta", "any")
def _fasta_mutated(rng: random.Random, d: Path, a: Assets) -> Built:
    return one(write(d / "in.fa", mutate(rng, fasta_text(random_genome(rng, hi=400)).encode())))


def _gz_kind(name: str, expect: str, make: Callable[[random.Random], bytes], suffix: str = ".fa.gz") -> None:
    _fasta_case(name, expect, make, fmt="gzip", suffix=suffix)


def _valid_fasta_bytes(r: random.Random) -> bytes:
    return fasta_text(random_genome(r)).encode()


_gz_kind("gzip_valid", "accept", lambda r: gz(_valid_fasta_bytes(r)))
_gz_kind("gzip_multi_member", "accept", lambda r: gz(b">a\nACGT\n") + gz(_valid_fasta_bytes(r).replace(b">chr", b">m")))
_gz_kind("gzip_named_plain", "accept", lambda r: gz(_valid_fasta_bytes(r)), suffix=".fa")
_gz_kind("plain_named_gz", "accept", _valid_fasta_bytes)
_gz_kind("bgzip_valid", "accept", lambda r: bgzf(_valid_fasta_bytes(r), block=r.choice([100, 1000, 4096])))
_gz_kind("bgzip_without_eof_block", "accept", lambda r: bgzf(_valid_fasta_bytes(r), eof=False))
_gz_kind("gzip_moderate_bomb", "accept", lambda r: gz(b">big\n" + b"ACGT" * (r.randint(2, 5) * 1_000_000) + b"\n"))
for _how in ("truncated", "header_only", "magic_only", "flip", "bad_crc", "bad_isize", "bad_method"):
    _gz_kind(f"gzip_{_how}", "error", lambda r, h=_how: corrupt_gzip(r, _valid_fasta_bytes(r), h))
_gz_kind("gzip_trailing_garbage", "any", lambda r: corrupt_gzip(r, _valid_fasta_bytes(r), "trailing_garbage"))
_gz_kind("gzip_of_garbage", "error", lambda r: gz(garbage(r)))
_gz_kind("gzip_of_empty", "error", lambda r: gz(b""))
_gz_kind("gzip_of_bad_fasta", "error", lambda r: gz(b">a\nACGT\n>a\nGG\n"))
_gz_kind("bgzip_eof_only", "error", lambda r: BGZF_EOF)
_gz_kind("bgzip_truncated_block", "error",
         lambda r: (lambda z: z[: r.randint(20, len(z) - 30)])(bgzf(_valid_fasta_bytes(r), eof=False)))


def _bgzip_bad_block(r: random.Random) -> bytes:
    z = bytearray(bgzf(_valid_fasta_bytes(r), block=200))
    i = r.randrange(18, len(z) - 40)
    z[i] ^= 0xFF
    return bytes(z)


def _bgzip_bad_bsize(r: random.Random) -> bytes:
    z = bytearray(bgzf(_valid_fasta_bytes(r), block=200))
    z[16:18] = r.choice([b"\x00\x00", b"\xff\xff", b"\x05\x00"])
    return bytes(z)


_gz_kind("bgzip_bad_block", "any", _bgzip_bad_block)  # may hit a field no reader checks
_gz_kind("bgzip_bad_bsize", "any", _bgzip_bad_bsize)


@kind("gzip", "gzip_mutated", "fasta", "any")
def _gz_mutated(rng: random.Random, d: Path, a: Assets) -> Built:
    z = (bgzf if rng.random() < 0.5 else gz)(fasta_text(random_genome(rng, hi=400)).encode())
    return one(write(d / "in.fa.gz", mutate(rng, z)))


# --- GFF3 -------------------------------------------------------------------------------------

def _gff_case(name: str, expect: str, edit: Callable[[random.Random, list[str]], list[str] | bytes],
              gzipped: bool = False) -> None:
    def build(rng: random.Random, d: Path, a: Assets) -> Built:
        out = edit(rng, gff_lines(rng))
        data = out if isinstance(out, bytes) else ("\n".join(out) + "\n").encode()
        return one(write(d / ("in.gff3.gz" if gzipped else "in.gff3"), gz(data) if gzipped else data))
    kind("gff3", name, "gff", expect)(build)


def _feature_rows(lines: list[str]) -> list[int]:
    return [i for i, x in enumerate(lines) if x and not x.startswith("#")]


def _set_col(rng: random.Random, lines: list[str], col: int, value: str | Callable[[list[str]], str]) -> list[str]:
    i = rng.choice(_feature_rows(lines))
    cols = lines[i].split("\t")
    cols[col] = value(cols) if callable(value) else value
    lines[i] = "\t".join(cols)
    return lines


def _cut_columns(rng: random.Random, lines: list[str]) -> list[str]:
    i = rng.choice(_feature_rows(lines))
    lines[i] = "\t".join(lines[i].split("\t")[:rng.randint(1, 8)])
    return lines


def _append(extra: Sequence[str]) -> Callable[[random.Random, list[str]], list[str]]:
    return lambda r, lines: lines + list(extra)


_GFF_KINDS: list[tuple[str, str, Callable[[random.Random, list[str]], list[str] | bytes]]] = [
    ("valid", "accept", lambda r, x: x),
    ("crlf", "accept", lambda r, x: ("\r\n".join(x) + "\r\n").encode()),
    ("escaped_attributes", "accept", _append(["chr3\tt\tgene\t10\t50\t.\t+\t.\tID=g%3B1;Name=a%2Cb%3Dc%25;Note=x%20y",
                                              "chr3\tt\tmRNA\t10\t50\t.\t+\t.\tID=m%3B1;Parent=g%3B1"])),
    ("bad_percent_escape", "accept", _append(["chr3\tt\tgene\t10\t50\t.\t+\t.\tID=g%ZZ;Name=%"])),
    ("fasta_section", "accept", lambda r, x: x + ["##FASTA", ">chr1", "ACGT"]),
    ("header_only", "accept", lambda r, x: ["##gff-version 3"]),
    ("comments_and_blanks", "accept", lambda r, x: [y for line in x for y in (line, "", "# note")]),
    ("unknown_types", "accept", _append(["chr3\tt\tweird_thing\t10\t50\t.\t+\t.\tID=w1"])),
    ("circular_wrap", "accept", lambda r, x: x + ["chr3\tt\tregion\t1\t1200\t.\t+\t.\tID=r3;Is_circular=true",
                                                  "chr3\tt\tgene\t1100\t1300\t.\t+\t.\tID=wrap"]),
    ("multi_parent", "accept", _append(["chr1\tt\tmRNA\t100\t200\t.\t+\t.\tID=m2;Parent=gene1",
                                        "chr1\tt\texon\t100\t150\t.\t+\t.\tParent=mrna1,m2"])),
    ("dot_attributes", "accept", _append(["chr3\tt\trepeat_region\t10\t50\t.\t.\t.\t."])),
    ("many_features", "accept", lambda r, x: x + [f"chr1\tt\trepeat_region\t{i + 1}\t{i + 5}\t.\t+\t.\tID=r{i}"
                                                  for i in range(r.randint(5000, 20000)) if i + 5 <= 2400]),
    ("huge_attribute", "accept", _append([f"chr3\tt\tgene\t10\t50\t.\t+\t.\tID=big;Note={'x' * 1_000_000}"])),
    ("too_few_columns", "error", lambda r, x: _cut_columns(r, x)),
    ("too_many_columns", "error", lambda r, x: _set_col(r, x, 8, lambda c: c[8] + "\textra")),
    ("spaces_not_tabs", "error", lambda r, x: [line.replace("\t", " ") for line in x]),
    ("negative_start", "error", lambda r, x: _set_col(r, x, 3, lambda c: str(-r.randint(1, 100)))),
    ("zero_start", "error", lambda r, x: _set_col(r, x, 3, "0")),
    ("reversed_coordinates", "error", lambda r, x: _set_col(r, x, 3, lambda c: str(int(c[4]) + r.randint(1, 50)))),
    ("end_past_sequence", "error", lambda r, x: _set_col(r, x, 4, str(r.randint(2401, 10**6)))),
    ("unknown_seqid", "error", lambda r, x: _set_col(r, x, 0, r.choice(["chrX", "Chr1", "chr1 ", "scaffold_9"]))),
    ("bad_phase", "error", lambda r, x: _set_col(r, x, 7, r.choice(["3", "x", "-1", "0.5", "01"]))),
    ("bad_strand", "error", lambda r, x: _set_col(r, x, 6, r.choice(["*", "plus", "++", "1"]))),
    ("bad_score", "error", lambda r, x: _set_col(r, x, 5, r.choice(["abc", "1,5", "--"]))),
    ("float_coordinate", "error", lambda r, x: _set_col(r, x, 3, "10.5")),
    ("scientific_coordinate", "error", lambda r, x: _set_col(r, x, 4, "1e3")),
    ("huge_coordinate", "error", lambda r, x: _set_col(r, x, 4, str(10 ** r.randint(19, 60)))),
    ("attribute_not_tag_value", "error", lambda r, x: _set_col(r, x, 8, lambda c: c[8] + ";Justaword")),
    ("gtf_style", "error", lambda r, x: _set_col(r, x, 8, 'gene_id "g1"; transcript_id "t1";')),
    ("empty_tag", "error", lambda r, x: _set_col(r, x, 8, "=value")),
    ("undefined_parent", "error", lambda r, x: _set_col(r, x, 8, "ID=orphan;Parent=nosuchfeature")),
    ("empty_file", "error", lambda r, x: b""),
    ("binary_garbage", "error", lambda r, x: garbage(r)),
    ("truncated_gzip", "error", lambda r, x: corrupt_gzip(r, ("\n".join(x) + "\n").encode(), "truncated")),
    ("corrupt_gzip", "error", lambda r, x: corrupt_gzip(r, ("\n".join(x) + "\n").encode(), r.choice(["flip",
                                                                                                    "bad_crc"]))),
    ("parent_cycle", "any", _append(["chr3\tt\tmRNA\t10\t50\t.\t+\t.\tID=ca;Parent=cb",
                                     "chr3\tt\tmRNA\t10\t50\t.\t+\t.\tID=cb;Parent=ca",
                                     "chr3\tt\texon\t10\t50\t.\t+\t.\tParent=ca"])),
    ("self_parent", "any", _append(["chr3\tt\tmRNA\t10\t50\t.\t+\t.\tID=s;Parent=s",
                                    "chr3\tt\tCDS\t10\t50\t.\t+\t0\tParent=s"])),
    ("deep_chain", "any", lambda r, x: x + ["chr3\tt\tgene\t10\t50\t.\t+\t.\tID=d0"] + [
        f"chr3\tt\t{r.choice(['mRNA', 'exon', 'gene'])}\t10\t50\t.\t+\t.\tID=d{i};Parent=d{i - 1}"
        for i in range(1, r.randint(2000, 6000))]),
    ("non_utf8", "any", lambda r, x: ("\n".join(x) + "\n").encode().replace(b"Name=G1", b"Name=G\xff\xfe1")),
    ("nul_byte", "any", lambda r, x: ("\n".join(x) + "\n").encode().replace(b"gene1", b"ge\x00ne1", 1)),
    ("empty_seqid", "any", lambda r, x: _set_col(r, x, 0, "")),
    ("empty_type", "any", lambda r, x: _set_col(r, x, 2, "")),
    ("empty_value", "any", lambda r, x: _set_col(r, x, 8, "ID=;Name=")),
    ("duplicate_id_elsewhere", "any", _append(["chr2\tt\tgene\t10\t50\t.\t+\t.\tID=gene1"])),
]
for _name, _expect, _edit in _GFF_KINDS:
    _gff_case(_name, _expect, _edit)
_gff_case("valid_gzip", "accept", lambda r, x: x, gzipped=True)


@kind("gff3", "mutated", "gff", "any")
def _gff_mutated(rng: random.Random, d: Path, a: Assets) -> Built:
    return one(write(d / "in.gff3", mutate(rng, ("\n".join(gff_lines(rng)) + "\n").encode())))


# --- prepare (FASTA + GFF3 -> prepared directory) ---------------------------------------------

def _prepare_built(d: Path, fasta: Path, gff: Path | None, split: dict | None = None) -> Built:
    out = d / "prepared"
    cli = ["prepare", f"genome={fasta}", f"out={out}"] + ([f"annotation={gff}"] if gff else [])
    for key, value in (split or {}).items():
        cli.append(f"split.{key}={json.dumps(value) if not isinstance(value, str) else value}")
    return Built(path=fasta if gff is None else gff, args={"fasta": fasta, "gff": gff, "split": split or {}},
                 outputs=[out], cli=cli, names=[(gff or fasta).name])


@kind("prepare", "valid", "prepare", "accept")
def _prepare_valid(rng: random.Random, d: Path, a: Assets) -> Built:
    return _prepare_built(d, a.fasta, a.gff, {"strategy": "records", "val": ["chr3"]})


@kind("prepare", "split_unknown_record", "prepare", "error")
def _prepare_bad_split(rng: random.Random, d: Path, a: Assets) -> Built:
    built = _prepare_built(d, a.fasta, a.gff, {"strategy": "records", "val": [rng.choice(["chr9", "Chr1", "x"])]})
    built.names = ["split", "val"]
    return built


for _fmt in ("fasta", "gff3"):
    for _name, _target, _expect, _build in list(KINDS[_fmt]):
        if _name in ("huge_line", "many_features", "huge_attribute", "deep_chain", "many_records"):
            continue  # the parser cases cover these; prepare would only repeat them more slowly

        def _prepare_from(rng: random.Random, d: Path, a: Assets, b=_build, f=_fmt) -> Built:
            built = b(rng, d / "input", a)
            return _prepare_built(d, built.path, None) if f == "fasta" else _prepare_built(d, a.fasta, built.path)
        kind("prepare", f"{_fmt}:{_name}", "prepare", _expect)(_prepare_from)


# --- labeled sequences (fine-tuning data) -------------------------------------------------------

def _labeled(name: str, expect: str, make: Callable[[random.Random], bytes | str], suffix: str = ".csv",
             task: str = "classification") -> None:
    def build(rng: random.Random, d: Path, a: Assets) -> Built:
        built = one(write(d / f"train{suffix}", make(rng)))
        built.args = {"task": task}
        return built
    kind("labeled", name, "labeled", expect)(build)


def _rows(r: random.Random, named: bool = False) -> list[tuple[str, str]]:
    return labeled_rows(r, named=named)


def _csv(r: random.Random, header=("sequence", "label"), sep=",", eol="\n", named=False) -> str:
    return csv_text(header, _rows(r, named), sep, eol)


def _edit_row(r: random.Random, text: str, fn: Callable[[list[str]], list[str]], sep: str = ",") -> str:
    lines = text.rstrip("\n").split("\n")
    i = r.randrange(1, len(lines))
    lines[i] = sep.join(fn(lines[i].split(sep)))
    return "\n".join(lines) + "\n"


_LABELED_KINDS: list[tuple[str, str, Callable[[random.Random], bytes | str], str, str]] = [
    ("csv_valid", "accept", _csv, ".csv", "classification"),
    ("tsv_valid", "accept", lambda r: _csv(r, sep="\t"), ".tsv", "classification"),
    ("csv_gzip", "accept", lambda r: gz(_csv(r).encode()), ".csv.gz", "classification"),
    ("csv_crlf", "accept", lambda r: _csv(r, eol="\r\n"), ".csv", "classification"),
    ("csv_quoted", "accept", lambda r: csv_text(["sequence", "label"], [(f'"{s}"', f'"{y}"') for s, y in _rows(r)]),
     ".csv", "classification"),
    ("csv_utf8_bom", "accept", lambda r: "\ufeff" + _csv(r), ".csv", "classification"),
    ("csv_named_labels", "accept", lambda r: _csv(r, named=True), ".csv", "classification"),
    ("csv_reordered_columns", "accept", lambda r: csv_text(["label", "id", "sequence"],
                                                           [(y, "x", s) for s, y in _rows(r)]), ".csv",
     "classification"),
    ("csv_regression", "accept", lambda r: csv_text(["sequence", "label"], [(s, f"{r.gauss(0, 1):.4f}")
                                                                           for s, _ in _rows(r)]), ".csv",
     "regression"),
    # read by the library; fine-tuning through the CLI refuses it past the model's context unless told to truncate
    ("csv_long_sequence", "any", lambda r: csv_text(["sequence", "label"], [(bases(r, r.randint(140_000, 300_000)),
                                                                               "1"), ("ACGT", "0")]), ".csv",
     "classification"),
    ("csv_lowercase", "accept", lambda r: _csv(r).lower(), ".csv", "classification"),
    ("fasta_valid", "accept", lambda r: fasta_text([(f"s{i}|{y}", s) for i, (s, y) in enumerate(_rows(r))]), ".fa",
     "classification"),
    ("fasta_space_label", "accept", lambda r: fasta_text([(f"s{i} {y}", s) for i, (s, y) in enumerate(_rows(r))]),
     ".fasta", "classification"),
    ("missing_sequence_column", "error", lambda r: _csv(r, header=("seq_x", "label")), ".csv", "classification"),
    ("missing_label_column", "error", lambda r: _csv(r, header=("sequence", "class")), ".csv", "classification"),
    ("empty_file", "error", lambda r: "", ".csv", "classification"),
    ("header_only", "error", lambda r: "sequence,label\n", ".csv", "classification"),
    ("empty_sequence", "error", lambda r: _edit_row(r, _csv(r), lambda c: ["", c[1]]), ".csv", "classification"),
    ("fewer_fields", "error", lambda r: _edit_row(r, _csv(r), lambda c: c[:1]), ".csv", "classification"),
    ("invalid_bases", "error", lambda r: _edit_row(r, _csv(r), lambda c: [c[0] + r.choice(["X", "1", "-", "é", "*"]),
                                                                        c[1]]), ".csv", "classification"),
    ("regression_text_label", "error", lambda r: _edit_row(r, csv_text(["sequence", "label"], [
        (s, "0.5") for s, _ in _rows(r)]), lambda c: [c[0], r.choice(["abc", "1;5", "", "0x"])]), ".csv",
     "regression"),
    ("regression_non_finite", "error", lambda r: _edit_row(r, csv_text(["sequence", "label"], [
        (s, "0.5") for s, _ in _rows(r)]), lambda c: [c[0], r.choice(["inf", "-inf", "nan", "1e999"])]), ".csv",
     "regression"),
    ("non_utf8", "error", lambda r: _csv(r).encode().replace(b"label", b"lab\xffel"), ".csv", "classification"),
    ("nul_byte", "error", lambda r: _csv(r).encode().replace(b",", b",\x00", 1), ".csv", "classification"),
    ("binary_garbage", "error", lambda r: garbage(r), ".csv", "classification"),
    ("truncated_gzip", "error", lambda r: corrupt_gzip(r, _csv(r).encode(), "truncated"), ".csv.gz",
     "classification"),
    ("corrupt_gzip", "error", lambda r: corrupt_gzip(r, _csv(r).encode(), r.choice(["flip", "bad_crc"])), ".csv.gz",
     "classification"),
    ("fasta_without_label", "error", lambda r: fasta_text([(f"s{i}", s) for i, (s, y) in enumerate(_rows(r))]),
     ".fa", "classification"),
    ("fasta_empty_record", "error", lambda r: ">a|0\n>b|1\nACGT\n", ".fa", "classification"),
    ("tsv_named_but_commas", "error", lambda r: _csv(r), ".tsv", "classification"),
    ("unknown_suffix", "error", lambda r: _csv(r), ".txt", "classification"),
    ("unterminated_quote", "any", lambda r: _csv(r).replace(",", ',"', 1), ".csv", "classification"),
    ("empty_label", "any", lambda r: _edit_row(r, _csv(r), lambda c: [c[0], ""]), ".csv", "classification"),
    ("extra_fields", "any", lambda r: _edit_row(r, _csv(r), lambda c: c + ["x", "y"]), ".csv", "classification"),
    ("duplicate_header", "any", lambda r: _csv(r, header=("sequence", "sequence")), ".csv", "classification"),
]
for _name, _expect, _make, _suffix, _task in _LABELED_KINDS:
    _labeled(_name, _expect, _make, _suffix, _task)


@kind("labeled", "class_folders", "labeled", "accept")
def _class_folders(rng: random.Random, d: Path, a: Assets) -> Built:
    root = d / "classes"
    for label in ("pos", "neg"):
        write(root / label / "a.txt", "\n".join(bases(rng, rng.randint(10, 50)) for _ in range(5)) + "\n")
        write(root / label / "b.fa", fasta_text([("r1", bases(rng, 30)), ("r2", bases(rng, 40))]))
    built = one(root)
    built.args = {"task": "classification"}
    return built


@kind("labeled", "class_folder_empty", "labeled", "error")
def _class_folder_empty(rng: random.Random, d: Path, a: Assets) -> Built:
    root = d / "classes"
    write(root / "pos" / "a.txt", "ACGT\n")
    (root / "neg").mkdir(parents=True)
    built = Built(path=root, args={"task": "classification"}, names=["neg"])
    return built


@kind("labeled", "class_folder_binary", "labeled", "error")
def _class_folder_binary(rng: random.Random, d: Path, a: Assets) -> Built:
    root = d / "classes"
    write(root / "pos" / "a.txt", "ACGT\n")
    write(root / "neg" / "b.txt", garbage(rng))
    built = Built(path=root, args={"task": "classification"}, names=["b.txt"])
    return built


@kind("labeled", "mutated", "labeled", "any")
def _labeled_mutated(rng: random.Random, d: Path, a: Assets) -> Built:
    built = one(write(d / "train.csv", mutate(rng, _csv(rng).encode())))
    built.args = {"task": rng.choice(["classification", "regression"])}
    return built


# --- sequences to score (predict / embed inputs) -----------------------------------------------

def _seqs(name: str, expect: str, make: Callable[[random.Random], bytes | str], suffix: str) -> None:
    def build(rng: random.Random, d: Path, a: Assets) -> Built:
        return one(write(d / f"seqs{suffix}", make(rng)))
    kind("sequences", name, "sequences", expect)(build)


def _seq_csv(r: random.Random, header=("id", "sequence"), sep=",") -> str:
    return csv_text(header, [(f"s{i}", bases(r, r.randint(5, 60))) for i in range(r.randint(1, 12))], sep)


for _name, _expect, _make, _suffix in [
    ("fasta_valid", "accept", lambda r: fasta_text(random_genome(r, hi=200)), ".fa"),
    ("csv_valid", "accept", _seq_csv, ".csv"),
    ("tsv_valid", "accept", lambda r: _seq_csv(r, sep="\t"), ".tsv"),
    ("csv_without_id", "accept", lambda r: _seq_csv(r, header=("x", "seq")), ".csv"),
    ("csv_utf8_bom", "accept", lambda r: "\ufeff" + _seq_csv(r), ".csv"),
    ("csv_long_sequence", "accept", lambda r: csv_text(["id", "sequence"], [("a", bases(r, 200_000))]), ".csv"),
    ("csv_gzip", "accept", lambda r: gz(_seq_csv(r).encode()), ".csv.gz"),
    ("no_sequence_column", "error", lambda r: _seq_csv(r, header=("id", "bases")), ".csv"),
    ("empty_sequence", "error", lambda r: "id,sequence\na,ACGT\nb,\n", ".csv"),
    ("invalid_bases", "error", lambda r: f"id,sequence\na,ACGT{r.choice(['X', '1', 'é', '-'])}A\n", ".csv"),
    ("field_count", "error", lambda r: "id,sequence\na,ACGT,extra\n", ".csv"),
    ("empty_file", "error", lambda r: "", ".csv"),
    ("blank_only", "error", lambda r: "\n\n  \n", ".csv"),
    ("header_only", "error", lambda r: "id,sequence\n", ".csv"),
    ("binary_garbage", "error", lambda r: garbage(r), ".csv"),
    ("non_utf8", "error", lambda r: b"id,sequence\n\xff\xfe,ACGT\n", ".csv"),
    ("truncated_gzip", "error", lambda r: corrupt_gzip(r, _seq_csv(r).encode(), "truncated"), ".csv.gz"),
    ("corrupt_gzip", "error", lambda r: corrupt_gzip(r, _seq_csv(r).encode(), r.choice(["flip", "bad_crc"])),
     ".csv.gz"),
    ("fasta_invalid", "error", lambda r: ">a\nACGTZZ\n", ".fa"),
    ("mutated", "any", lambda r: mutate(r, _seq_csv(r).encode()), ".csv"),
]:
    _seqs(_name, _expect, _make, _suffix)


# --- variants (VCF / TSV) ---------------------------------------------------------------------

VCF_HEADER = ["##fileformat=VCFv4.2", "##contig=<ID=chr1,length=2400>", "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]


def _snvs(r: random.Random, genome: dict[str, str], n: int | None = None) -> list[tuple[str, int, str, str]]:
    out = []
    for _ in range(n or r.randint(1, 8)):
        chrom = r.choice(list(genome))
        pos = r.randint(1, len(genome[chrom]))
        ref = genome[chrom][pos - 1].upper()
        out.append((chrom, pos, ref, r.choice([b for b in "ACGT" if b != ref])))
    return out


def _vcf(records: Iterable[tuple[str, int | str, str, str]], header: Sequence[str] = tuple(VCF_HEADER),
         eol: str = "\n") -> str:
    body = [f"{c}\t{p}\t.\t{ref}\t{alt}\t.\tPASS\t." for c, p, ref, alt in records]
    return eol.join(list(header) + body) + eol


def _tsv(records: Iterable[tuple[str, int | str, str, str]], header=("chrom", "pos", "ref", "alt")) -> str:
    return csv_text(header, [(c, str(p), ref, alt) for c, p, ref, alt in records], "\t")


def _variant(name: str, expect: str, make: Callable[[random.Random, dict[str, str]], bytes | str],
             suffix: str = ".vcf") -> None:
    def build(rng: random.Random, d: Path, a: Assets) -> Built:
        path = write(d / f"variants{suffix}", make(rng, a.genome))
        return Built(path=path, args={"reference": a.fasta}, names=[path.name, "window"])
    kind("variants", name, "variants", expect)(build)


def _one_bad(r: random.Random, g: dict[str, str], **change: Any) -> list[tuple[str, Any, str, str]]:
    recs = [list(x) for x in _snvs(r, g)]
    i = r.randrange(len(recs))
    for key, value in change.items():
        recs[i][("chrom", "pos", "ref", "alt").index(key)] = value(recs[i]) if callable(value) else value
    return [tuple(x) for x in recs]


def _indel(r: random.Random, g: dict[str, str]) -> list[tuple[str, int, str, str]]:
    pos = r.randint(40, 2000)
    ref = g["chr1"][pos - 1:pos - 1 + r.randint(1, 6)].upper()
    return [("chr1", pos, ref, ref[0]), ("chr1", pos, ref[0], ref[0] + "ACG")]


for _name, _expect, _make, _suffix in [
    ("vcf_valid", "accept", lambda r, g: _vcf(_snvs(r, g)), ".vcf"),
    ("vcf_multiallelic", "accept", lambda r, g: _vcf([(c, p, ref, ",".join(b for b in "ACGT" if b != ref))
                                                      for c, p, ref, _ in _snvs(r, g)]), ".vcf"),
    ("vcf_symbolic_mixed", "accept", lambda r, g: _vcf(_snvs(r, g) + [(c, p, ref, r.choice(["<DEL>", "*", ".",
                                                                                            "A[chr2:5[", "<INS:ME>"]))
                                                                      for c, p, ref, _ in _snvs(r, g, 2)]), ".vcf"),
    ("vcf_lowercase", "accept", lambda r, g: _vcf([(c, p, ref.lower(), alt.lower()) for c, p, ref, alt in
                                                   _snvs(r, g)]), ".vcf"),
    ("vcf_indels", "accept", lambda r, g: _vcf(_indel(r, g)), ".vcf"),
    ("vcf_crlf", "accept", lambda r, g: _vcf(_snvs(r, g), eol="\r\n"), ".vcf"),
    ("vcf_gzip", "accept", lambda r, g: gz(_vcf(_snvs(r, g)).encode()), ".vcf.gz"),
    ("vcf_bgzip", "accept", lambda r, g: bgzf(_vcf(_snvs(r, g)).encode()), ".vcf.gz"),
    ("vcf_chrom_header_only", "accept", lambda r, g: _vcf(_snvs(r, g), header=VCF_HEADER[-1:]), ".vcf"),
    ("tsv_valid", "accept", lambda r, g: _tsv(_snvs(r, g)), ".tsv"),
    ("tsv_with_id_and_hash", "accept", lambda r, g: csv_text(["#chrom", "pos", "id", "ref", "alt"], [
        (c, str(p), f"v{i}", ref, alt) for i, (c, p, ref, alt) in enumerate(_snvs(r, g))], "\t"), ".tsv"),
    ("vcf_bad_ref", "error", lambda r, g: _vcf(_one_bad(r, g, ref=r.choice(["X", "R", "1", "A-", ""]))), ".vcf"),
    ("vcf_ref_mismatch", "error", lambda r, g: _vcf(_one_bad(r, g, ref=lambda x: {"A": "C", "C": "G", "G": "T",
                                                                                 "T": "A", "N": "A"}[x[2]])), ".vcf"),
    ("vcf_bad_alt", "error", lambda r, g: _vcf(_one_bad(r, g, alt=r.choice(["Z", "A C", "1", "<DEL", "A*"]))),
     ".vcf"),
    ("vcf_empty_alt", "error", lambda r, g: _vcf(_one_bad(r, g, alt="")), ".vcf"),
    ("vcf_missing_header", "error", lambda r, g: _vcf(_snvs(r, g), header=()), ".vcf"),
    ("vcf_only_symbolic", "error", lambda r, g: _vcf([(c, p, ref, "<DEL>") for c, p, ref, _ in _snvs(r, g)]),
     ".vcf"),
    ("vcf_pos_zero", "error", lambda r, g: _vcf(_one_bad(r, g, pos="0")), ".vcf"),
    ("vcf_pos_negative", "error", lambda r, g: _vcf(_one_bad(r, g, pos=str(-r.randint(1, 99)))), ".vcf"),
    ("vcf_pos_text", "error", lambda r, g: _vcf(_one_bad(r, g, pos=r.choice(["abc", "1.5", "1e3", ""]))), ".vcf"),
    ("vcf_pos_past_end", "error", lambda r, g: _vcf(_one_bad(r, g, pos=str(r.randint(2401, 10**6)))), ".vcf"),
    ("vcf_huge_pos", "error", lambda r, g: _vcf(_one_bad(r, g, pos=str(10 ** r.randint(19, 80)))), ".vcf"),
    # refused by check_reference; `dnalm score-variants` skips such records and counts them in its summary
    ("vcf_unknown_chrom", "any", lambda r, g: _vcf(_one_bad(r, g, chrom=r.choice(["chrX", "Chr1", "1"]))),
     ".vcf"),
    ("vcf_empty_chrom", "error", lambda r, g: _vcf(_one_bad(r, g, chrom="")), ".vcf"),
    ("vcf_few_fields", "error", lambda r, g: "\n".join(VCF_HEADER + ["chr1\t5\t.\tA"]) + "\n", ".vcf"),
    ("vcf_spaces_not_tabs", "error", lambda r, g: _vcf(_snvs(r, g)).replace("\t", " "), ".vcf"),
    ("vcf_ref_too_long_for_window", "error",
     lambda r, g: _vcf([("chr1", 200, g["chr1"][199:299].upper(), "A")]), ".vcf"),
    ("empty_file", "error", lambda r, g: "", ".vcf"),
    ("binary_garbage", "error", lambda r, g: garbage(r), ".vcf"),
    ("non_utf8", "error", lambda r, g: _vcf(_snvs(r, g)).encode().replace(b"PASS", b"PA\xffSS", 1), ".vcf"),
    ("truncated_gzip", "error", lambda r, g: corrupt_gzip(r, _vcf(_snvs(r, g)).encode(), "truncated"), ".vcf.gz"),
    ("corrupt_gzip", "error", lambda r, g: corrupt_gzip(r, _vcf(_snvs(r, g)).encode(), r.choice(["flip", "bad_crc"])),
     ".vcf.gz"),
    ("tsv_missing_columns", "error", lambda r, g: _tsv(_snvs(r, g), header=("chrom", "position", "ref", "alt")),
     ".tsv"),
    ("tsv_field_count", "error", lambda r, g: _tsv(_snvs(r, g)) + "chr1\t5\tA\n", ".tsv"),
    ("tsv_header_only", "error", lambda r, g: "chrom\tpos\tref\talt\n", ".tsv"),
    ("tsv_empty_chrom", "error", lambda r, g: _tsv(_one_bad(r, g, chrom="")), ".tsv"),
    ("tsv_bad_ref", "error", lambda r, g: _tsv(_one_bad(r, g, ref="QQ")), ".tsv"),
]:
    _variant(_name, _expect, _make, _suffix)


@kind("variants", "mutated", "variants", "any")
def _variants_mutated(rng: random.Random, d: Path, a: Assets) -> Built:
    text = (_vcf if rng.random() < 0.6 else _tsv)(_snvs(rng, a.genome))
    path = write(d / "variants.vcf", mutate(rng, text.encode()))
    return Built(path=path, args={"reference": a.fasta}, names=[path.name])


# --- configs and overrides --------------------------------------------------------------------

TRAIN_BASE = ["experiment=synthetic/hyena_demo", "model.d_model=16", "model.d_inner=32", "model.n_layer=1",
              "data.length=64", "data.batch_size=4", "data.eval_max_windows=2", "trainer.max_steps=1",
              "trainer.val_check_interval=1", "checkpoint.every_n_steps=0", "logger=[csv]",
              "trainer.progress_bar=false"]
CHECKPOINT_STEPS = 2
#: For each command: baseline argv (a valid run) and typed keys to fuzz (int, float, bool, str-with-choices).
COMMANDS = {
    "prepare": {"int": ["promoter_window", "window", "split.seed", "split.sketch_k"],
                "float": ["split.val_fraction", "split.threshold"], "bool": ["overwrite"],
                "choice": ["split.strategy", "split.group_by"], "path": ["genome", "annotation", "split.groups_tsv"],
                "out": "out"},
    "predict": {"int": ["batch_size", "max_tokens", "chunk_size"], "float": [], "bool": ["prepend_bos", "uppercase"],
                "choice": ["output_type", "reduce", "tokens", "device", "dtype"], "path": ["input", "checkpoint"],
                "out": "output"},
    "score-variants": {"int": ["window", "batch_size", "max_tokens"], "float": [],
                       "bool": ["reverse_complement", "prepend_bos"], "choice": ["reduce", "device", "dtype"],
                       "path": ["variants", "reference", "checkpoint"], "out": "output"},
    "embed": {"int": ["batch_size", "max_tokens"], "float": [], "bool": ["prepend_bos"],
              "choice": ["layer", "pool", "save_dtype", "precision", "device"], "path": ["input", "checkpoint"],
              "out": "output"},
    "generate": {"int": ["max_new_tokens", "top_k", "n_samples", "seed", "batch_size"],
                 "float": ["temperature", "top_p"], "bool": ["acgt_only", "include_prompt"],
                 "choice": ["decode", "device", "dtype"], "path": ["checkpoint", "input"], "out": "output"},
    "train": {"int": ["trainer.max_steps", "data.batch_size", "model.d_model", "seed", "checkpoint.keep"],
              "float": ["optim.lr", "data.rc_prob", "data.max_n_frac"], "bool": ["test", "data.rc_aug"],
              "choice": ["resume", "trainer.precision", "trainer.accelerator", "logger"],
              "path": ["data.prepared", "init_from"], "out": "out"},
    "synth": {"int": ["n_chromosomes", "chromosome_length", "ploidy", "seed", "line_width"],
              "float": ["gc", "snp_rate"], "bool": ["gzip"], "choice": [], "path": [], "out": "out"},
    "model info": {"int": ["seq_len", "batch_size", "d_model", "n_layer"], "float": [], "bool": [],
                   "choice": ["preset", "dtype", "model"], "path": ["checkpoint"], "out": "out"},
}


def command_argv(command: str, d: Path, a: Assets) -> tuple[list[str], Path]:
    """A valid invocation of ``command`` writing under ``d`` and the output path it writes."""
    if command == "prepare":
        out = d / "prepared"
        return ["prepare", f"genome={a.fasta}", f"annotation={a.gff}", f"out={out}"], out
    if command == "predict":
        out = d / "out.parquet"
        return ["predict", f"input={a.seqs}", f"checkpoint={a.model}", f"output={out}", "device=cpu"], out
    if command == "score-variants":
        out = d / "scores.tsv"
        return ["score-variants", f"variants={a.variants}", f"reference={a.fasta}", f"checkpoint={a.model}",
                f"output={out}", "window=64", "device=cpu"], out
    if command == "embed":
        out = d / "embeddings"
        return ["embed", f"input={a.seqs}", f"checkpoint={a.model}", f"output={out}", "device=cpu"], out
    if command == "generate":
        out = d / "samples.fa"
        return ["generate", f"checkpoint={a.model}", "prompts=[ACGT,GGA]", f"output={out}", "max_new_tokens=8",
                "device=cpu"], out
    if command == "train":
        out = d / "run"
        return ["train", *TRAIN_BASE, f"data.prepared={a.prepared}", f"out={out}"], out
    if command == "synth":
        out = d / "synth"
        return ["synth", f"out={out}", "n_chromosomes=1", "chromosome_length=10000"], out
    if command == "model info":
        out = d / "info.json"
        return ["model", "info", f"out={out}"], out
    raise ValueError(command)


def _override(rng: random.Random, command: str, d: Path, a: Assets, how: str) -> list[str]:
    """The extra arguments of one bad override of ``command``."""
    spec = COMMANDS[command]

    def pick(group: str) -> str:
        return rng.choice(spec[group] or spec["int"])

    afile = write(d / "afile", "x")
    first_path = (spec["path"] or [spec["out"]])[0]
    table = {
        "unknown_key": [f"{rng.choice(['foo', 'inptu', 'nonexistent_option', 'Output'])}=1"],
        "unknown_nested_key": [f"{rng.choice(['trainer', 'model', 'data', 'split', 'optim'])}.nosuchkey=1"],
        "append_unknown_key": ["+foo=1"],
        "delete_key": [f"~{pick('int')}"],
        "int_as_text": [f"{pick('int')}={rng.choice(['abc', 'ten', '1O', '0x1g'])}"],
        "int_as_float": [f"{pick('int')}=1.5"],
        "bool_as_text": [f"{pick('bool')}={rng.choice(['maybe', 'yess', '2'])}"],
        "float_as_text": [f"{pick('float')}=fast"],
        "list_for_scalar": [f"{pick('int')}=[1,2]"],
        "dict_for_scalar": [f"{pick('int')}={{a: 1}}"],
        "negative": [f"{pick('int')}=-{rng.randint(1, 10**6)}"],
        "zero": [f"{pick('int')}=0"],
        "huge_int": [f"{pick('int')}=99999999999999999999999999"],
        "bad_choice": [f"{pick('choice')}={rng.choice(['nope', 'fp64', 'tpu', 'cuda:7', 'MEAN'])}"],
        "null_required_path": [f"{first_path}=null"],
        "empty_path": [f"{first_path}="],
        "missing_path": [f"{pick('path')}=/nonexistent/dir/file.txt"],
        "directory_as_file": [f"{first_path}={d}"],
        "dev_null_input": [f"{first_path}=/dev/null"],
        "output_under_a_file": [f"{spec['out']}={afile}/sub/out"],
        "output_in_proc": [f"{spec['out']}=/proc/dnalm_fuzz_out"],
        "output_name_too_long": [f"{spec['out']}={d}/{'x' * 300}"],
        "bad_group_option": [f"{rng.choice(['model', 'trainer', 'data', 'optim', 'experiment'])}="
                              f"{rng.choice(['nope', '../../etc/passwd', 'hyena_tiny/x'])}"],
        "override_parse_error": [rng.choice(["a=[1", "key==", "=value", "a b=c", "x=${", "'x=1", "x=]", "a.=1"])],
        "missing_interpolation": [f"{spec['out']}=${{nope}}"],
        "unknown_resolver": [f"{spec['out']}=${{eval:__import__('os').system('touch {d / MARKER}')}}"],
        "env_resolver_unset": [f"{spec['out']}=${{oc.env:DNALM_FUZZ_UNSET_VARIABLE}}"],
        "dash_flag": [rng.choice(["--bogus", "-x", "--config-dir"])],
        "config_dir_missing": ["--config-dir", "/nonexistent/conf"],
        "unicode_key": ["ключ=1"],
        "surrogate_value": [f"{first_path}=\udcff\udcfe"],
    }
    return table[how]


_OVERRIDE_KINDS = ["unknown_key", "unknown_nested_key", "append_unknown_key", "delete_key", "int_as_text",
                   "int_as_float", "bool_as_text", "float_as_text", "list_for_scalar", "dict_for_scalar", "negative",
                   "zero", "huge_int", "bad_choice", "null_required_path", "empty_path", "missing_path",
                   "directory_as_file", "dev_null_input", "output_under_a_file", "output_in_proc",
                   "output_name_too_long", "bad_group_option", "override_parse_error", "missing_interpolation",
                   "unknown_resolver", "env_resolver_unset", "dash_flag", "config_dir_missing", "unicode_key",
                   "surrogate_value"]
#: Overrides that some commands accept (a key that is optional there, a value in range for it).
_ANY_OVERRIDES = {"delete_key": "any", "negative": "any", "zero": "any", "huge_int": "any", "null_required_path": "any"}
#: Overrides of an input path (synth has none: its only path is the output).
_INPUT_PATH_OVERRIDES = ("null_required_path", "empty_path", "missing_path", "directory_as_file", "dev_null_input")
#: Commands whose valid runs are quick; ``train`` runs a step when an override happens to be valid.
_FAST_COMMANDS = ["prepare", "predict", "score-variants", "embed", "generate", "model info", "synth"]


def _config_builder(how: str) -> tuple[str, Builder]:
    expect = _ANY_OVERRIDES.get(how, "error")

    def build(rng: random.Random, d: Path, a: Assets) -> Built:
        commands = [c for c in _FAST_COMMANDS if c != "synth" or how not in _INPUT_PATH_OVERRIDES]
        command = rng.choice(commands + ["train"] * (how not in ("negative", "zero", "delete_key")))
        argv, out = command_argv(command, d / "run", a)
        extra = _override(rng, command, d, a, how)
        n_cmd = 2 if command == "model info" else 1
        argv = argv[:n_cmd] + extra + argv[n_cmd:] if extra[0].startswith("-") else argv + extra
        return Built(None, {"argv": argv}, [out], argv, [])
    return expect, build


for _how in _OVERRIDE_KINDS:
    _e, _b = _config_builder(_how)
    kind("config", _how, "cli", _e)(_b)


def _config_file_kind(name: str, text: Callable[[Path], str]) -> None:
    def build(rng: random.Random, d: Path, a: Assets) -> Built:
        command = rng.choice(["predict", "prepare", "train"])
        argv, out = command_argv(command, d / "run", a)
        conf = d / "conf"
        write(conf / f"{command.replace('-', '_')}.yaml", text(d))
        argv = argv[:1] + ["--config-dir", str(conf)] + argv[1:]
        return Built(None, {"argv": argv}, [out], argv, [])
    kind("config", name, "cli", "error")(build)


_config_file_kind("config_file_bad_yaml", lambda d: "input: [unclosed\n  - x: : :\n\tbad: tab\n")
_config_file_kind("config_file_python_tag",
                  lambda d: f"input: !!python/object/apply:os.system ['touch {d / MARKER}']\n")
_config_file_kind("config_file_list", lambda d: "- a\n- b\n")
_config_file_kind("config_file_bad_defaults", lambda d: "defaults:\n  - model: nope\n  - _self_\n")
_config_file_kind("config_file_binary", lambda d: "\x00\x01\x02garbage\x7f")


@kind("config", "unknown_command", "cli", "error")
def _unknown_command(rng: random.Random, d: Path, a: Assets) -> Built:
    argv = [rng.choice(["trian", "nonexistent", "model", "config", "cp", "--weird"]), "x=1"]
    return Built(None, {"argv": argv}, [], argv, [])


# --- checkpoints ------------------------------------------------------------------------------

class Payload:
    """Unpickling this runs ``command`` through ``function`` (what a malicious checkpoint does)."""

    def __init__(self, function: Any, *args: Any):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def _touch(d: Path) -> str:
    return f"touch {shlex.quote(str(d / MARKER))}"


def _payloads(rng: random.Random, d: Path) -> Any:
    import builtins
    import subprocess as sp

    import numpy as np

    cmd = _touch(d)
    options = [
        Payload(os.system, cmd),
        Payload(builtins.eval, f"__import__('os').system({cmd!r})"),
        Payload(builtins.exec, f"import os; os.system({cmd!r})"),
        Payload(sp.call, ["sh", "-c", cmd]),
        Payload(sp.Popen, ["sh", "-c", cmd]),
        Payload(np.testing._private.utils.runstring, f"import os; os.system({cmd!r})", {}),
    ]
    return rng.choice(options)


def _model_copy(d: Path, a: Assets) -> Path:
    return Path(shutil.copytree(a.model, d / "model"))


def _ckpt(name: str, expect: str, target: str = "checkpoint") -> Callable[[Builder], Builder]:
    return kind("checkpoint" if target == "checkpoint" else "training_state", name, target, expect)


@_ckpt("valid", "accept")
def _ck_valid(rng: random.Random, d: Path, a: Assets) -> Built:
    return one(_model_copy(d, a))


@_ckpt("valid_weight_file", "any")
def _ck_valid_file(rng: random.Random, d: Path, a: Assets) -> Built:
    return one(_model_copy(d, a) / "model.safetensors")


@_ckpt("lightning_layout", "accept")
def _ck_lightning(rng: random.Random, d: Path, a: Assets) -> Built:
    import torch
    from safetensors.torch import load_file

    sd = load_file(str(a.model / "model.safetensors"))
    path = d / "hub" / "weights.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 3}, path)
    return one(path.parent)


def _safetensors_edit(name: str, expect: str, edit: Callable[[random.Random, bytes], bytes]) -> None:
    def build(rng: random.Random, d: Path, a: Assets) -> Built:
        m = _model_copy(d, a)
        f = m / "model.safetensors"
        f.write_bytes(edit(rng, f.read_bytes()))
        built = one(m)
        built.names = ["model"]
        return built
    _ckpt(name, expect)(build)


def _header(data: bytes) -> tuple[int, dict]:
    n = int.from_bytes(data[:8], "little")
    return n, json.loads(data[8:8 + n])


def _with_header(data: bytes, header: dict) -> bytes:
    n, _ = _header(data)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return len(h).to_bytes(8, "little") + h + data[8 + n:]


def _edit_entry(rng: random.Random, data: bytes, fn: Callable[[dict], None]) -> bytes:
    _, header = _header(data)
    key = rng.choice([k for k in header if k != "__metadata__"])
    fn(header[key])
    return _with_header(data, header)


_safetensors_edit("safetensors_truncated", "error", lambda r, b: b[: r.randint(0, len(b) - 1)])
_safetensors_edit("safetensors_header_length_huge", "error",
                  lambda r, b: (2**62 + r.randint(0, 99)).to_bytes(8, "little") + b[8:])
_safetensors_edit("safetensors_header_length_past_end", "error",
                  lambda r, b: (len(b) + r.randint(1, 10**6)).to_bytes(8, "little") + b[8:])
_safetensors_edit("safetensors_header_not_json", "error",
                  lambda r, b: b[:8] + b"{not json" + b[17:])
_safetensors_edit("safetensors_empty", "error", lambda r, b: b"")
_safetensors_edit("safetensors_garbage", "error", lambda r, b: garbage(r))
_safetensors_edit("safetensors_offsets_out_of_range", "error",
                  lambda r, b: _edit_entry(r, b, lambda e: e.update(data_offsets=[0, 10**9])))
_safetensors_edit("safetensors_wrong_shape", "error",
                  lambda r, b: _edit_entry(r, b, lambda e: e.update(shape=[e["shape"][0] + 1] + e["shape"][1:]
                                                                     if e["shape"] else [1])))
_safetensors_edit("safetensors_bad_dtype", "error", lambda r, b: _edit_entry(r, b, lambda e: e.update(dtype="Q9")))
_safetensors_edit("safetensors_flipped_data", "any",
                  lambda r, b: b[:-64] + bytes(x ^ 0xFF for x in b[-64:]))


def _weights_edit(name: str, expect: str, edit: Callable[[random.Random, dict], dict]) -> None:
    def build(rng: random.Random, d: Path, a: Assets) -> Built:
        from safetensors.torch import load_file, save_file

        m = _model_copy(d, a)
        sd = load_file(str(m / "model.safetensors"))
        save_file(edit(rng, dict(sd)), str(m / "model.safetensors"))
        built = one(m)
        built.names = ["model"]
        return built
    _ckpt(name, expect)(build)


def _drop(r: random.Random, sd: dict) -> dict:
    del sd[r.choice(list(sd))]
    return sd


def _reshape(r: random.Random, sd: dict) -> dict:
    import torch

    k = r.choice(list(sd))
    sd[k] = torch.zeros(sd[k].numel() + 1)
    return sd


def _extra(r: random.Random, sd: dict) -> dict:
    import torch

    sd["backbone.surprise.weight"] = torch.zeros(3)
    return sd


def _retype(r: random.Random, sd: dict) -> dict:
    import torch

    k = r.choice(list(sd))
    sd[k] = sd[k].to(r.choice([torch.int8, torch.float64, torch.bool]))
    return sd


def _nan(r: random.Random, sd: dict) -> dict:
    k = r.choice(list(sd))
    sd[k] = sd[k].clone().fill_(float("nan"))
    return sd


_weights_edit("weights_missing_tensor", "error", _drop)
_weights_edit("weights_wrong_shape", "error", _reshape)
_weights_edit("weights_unexpected_tensor", "error", _extra)
_weights_edit("weights_other_dtype", "any", _retype)
_weights_edit("weights_nan", "any", _nan)


def _config_edit(name: str, expect: str, edit: Callable[[random.Random, dict], Any], raw: bool = False) -> None:
    def build(rng: random.Random, d: Path, a: Assets) -> Built:
        m = _model_copy(d, a)
        f = m / "config.json"
        if raw:
            f.write_bytes(edit(rng, {}))
        else:
            f.write_text(json.dumps(edit(rng, json.loads(f.read_text()))))
        built = one(m)
        built.names = ["model"]
        return built
    _ckpt(name, expect)(build)


def _cfg_set(key: str, value: Any) -> Callable[[random.Random, dict], dict]:
    def edit(r: random.Random, meta: dict) -> dict:
        meta["config"][key] = value(r) if callable(value) else value
        return meta
    return edit


_config_edit("config_not_json", "error", lambda r, m: b"{\"format\": \"dnalm-model/1\", ", raw=True)
_config_edit("config_binary", "error", lambda r, m: garbage(r), raw=True)
_config_edit("config_a_list", "any", lambda r, m: [1, 2, 3])  # not dnalm's: weights read as a state dict
_config_edit("config_unknown_family", "error", lambda r, m: {**m, "family": r.choice(["mamba9", "", None, 3])})
_config_edit("config_no_config", "error", lambda r, m: {k: v for k, v in m.items() if k != "config"})
_config_edit("config_field_wrong_type", "error", _cfg_set("d_model", lambda r: r.choice(["abc", [1], {"a": 1}])))
_config_edit("config_field_negative", "error", _cfg_set("n_layer", lambda r: r.choice([-1, 0, -100])))
_config_edit("config_unknown_field", "error", _cfg_set("nosuchfield", 1))
_config_edit("config_huge_model", "error", _cfg_set("d_model", lambda r: r.choice([1 << 16, 1 << 20, 10**9])))
_config_edit("config_huge_layers", "error", _cfg_set("n_layer", lambda r: r.choice([10**5, 10**7])))
_config_edit("config_huge_context", "error", _cfg_set("l_max", lambda r: r.choice([1 << 31, 1 << 40])))
_config_edit("config_other_format", "any", lambda r, m: {**m, "format": "something/9"})


@_ckpt("tokenizer_corrupt", "error")
def _ck_tokenizer(rng: random.Random, d: Path, a: Assets) -> Built:
    m = _model_copy(d, a)
    (m / "tokenizer.json").write_bytes(rng.choice([b"{broken", garbage(rng), b'{"type": "nosuch"}',
                                                   b'{"type": "char", "nosuchoption": 1}']))
    built = one(m)
    built.names = ["tokenizer.json"]
    return built


@_ckpt("tokenizer_missing", "accept")
def _ck_no_tokenizer(rng: random.Random, d: Path, a: Assets) -> Built:
    m = _model_copy(d, a)
    (m / "tokenizer.json").unlink()
    return one(m)


@_ckpt("nonexistent_path", "error")
def _ck_missing(rng: random.Random, d: Path, a: Assets) -> Built:
    return one(d / "nothing_here")


@_ckpt("empty_directory", "error")
def _ck_empty(rng: random.Random, d: Path, a: Assets) -> Built:
    (d / "empty").mkdir()
    return one(d / "empty")


def _pickle_kind(name: str, filename: str, dump: Callable[[Any, Path, random.Random], None]) -> None:
    def build(rng: random.Random, d: Path, a: Assets) -> Built:
        path = d / "hub" / filename
        path.parent.mkdir(parents=True)
        payload = _payloads(rng, d)
        obj = rng.choice([payload, {"state_dict": {"model.backbone.x": payload}},
                          {"state_dict": {}, "hyper_parameters": payload}, [payload]])
        dump(obj, path, rng)
        built = Built(path=path.parent if rng.random() < 0.5 else path, names=[filename, "hub"])
        return built
    _ckpt(name, "error")(build)


def _torch_save(obj: Any, path: Path, rng: random.Random) -> None:
    import torch

    torch.save(obj, path)


def _torch_legacy(obj: Any, path: Path, rng: random.Random) -> None:
    import torch

    torch.save(obj, path, _use_new_zipfile_serialization=False)


def _raw_pickle(obj: Any, path: Path, rng: random.Random) -> None:
    import pickle

    path.write_bytes(pickle.dumps(obj, protocol=rng.randint(0, 5)))


_pickle_kind("pickle_code_torch_zip", "weights.ckpt", _torch_save)
_pickle_kind("pickle_code_torch_zip_bin", "pytorch_model.bin", _torch_save)
_pickle_kind("pickle_code_torch_legacy", "model.pt", _torch_legacy)
_pickle_kind("pickle_code_raw", "pytorch_model.bin", _raw_pickle)
_pickle_kind("pickle_code_raw_ckpt", "weights.ckpt", _raw_pickle)


@_ckpt("pickle_code_in_dnalm_dir", "error")
def _ck_pickle_beside(rng: random.Random, d: Path, a: Assets) -> Built:
    """A dnalm directory whose config.json is not dnalm's, so the loader looks for a weight file."""
    m = _model_copy(d, a)
    (m / "model.safetensors").unlink()
    (m / "config.json").write_text("{}")
    _torch_save({"state_dict": _payloads(rng, d)}, m / "weights.ckpt", rng)
    built = one(m)
    built.names = ["model"]
    return built


@_ckpt("torch_zip_truncated", "error")
def _ck_zip_truncated(rng: random.Random, d: Path, a: Assets) -> Built:
    import torch
    from safetensors.torch import load_file

    path = d / "hub" / "weights.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": load_file(str(a.model / "model.safetensors"))}, path)
    data = path.read_bytes()
    path.write_bytes(data[: rng.randint(0, len(data) - 1)])
    return one(path)


@_ckpt("weights_file_garbage", "error")
def _ck_garbage(rng: random.Random, d: Path, a: Assets) -> Built:
    name = rng.choice(["weights.ckpt", "pytorch_model.bin", "model.pt", "model.pth"])
    return one(write(d / "hub" / name, rng.choice([garbage(rng), b"", b"PK\x03\x04" + garbage(rng)])))


@_ckpt("state_dict_of_other_model", "error")
def _ck_other(rng: random.Random, d: Path, a: Assets) -> Built:
    import torch

    path = d / "hub" / "pytorch_model.bin"
    path.parent.mkdir(parents=True)
    torch.save({"encoder.layer.0.weight": torch.zeros(2, 2), "classifier.bias": torch.zeros(2)}, path)
    return one(path)


@_ckpt("hyenadna_config_broken", "error")
def _ck_hyena_cfg(rng: random.Random, d: Path, a: Assets) -> Built:
    import torch
    from safetensors.torch import load_file

    hub = d / "hub"
    hub.mkdir()
    torch.save({"state_dict": {f"model.{k}": v for k, v in load_file(str(a.model / "model.safetensors")).items()}},
               hub / "weights.ckpt")
    cfg = rng.choice([{"d_model": 16, "layer": {}}, {"d_model": "x", "n_layer": 2, "layer": {"l_max": 66}},
                      {"model_type": "hyenadna"}, {"d_model": 16, "n_layer": 2, "layer": {"l_max": -5}}])
    (hub / "config.json").write_text(json.dumps(cfg))
    return one(hub)


# --- training states (resume) -----------------------------------------------------------------

_CHECKPOINT_LOCK = threading.Lock()


def training_checkpoint(a: Assets) -> Path:
    """A full training checkpoint of the tiny model (two steps on the prepared base genome), made on first use."""
    with _CHECKPOINT_LOCK:
        if not (a.checkpoint / "training_state.pt").is_file():
            from dnalm.cli import run

            argv = [x for x in TRAIN_BASE if not x.startswith("trainer.max_steps=")]
            with contextlib.redirect_stdout(io.StringIO()):
                run(["train", *argv, f"trainer.max_steps={CHECKPOINT_STEPS}", f"data.prepared={a.prepared}",
                     f"out={a.root / 'run'}"])
    return a.checkpoint


def _state_kind(name: str, expect: str, make: Callable[[random.Random, Path], None]) -> None:
    """A copy of a real training checkpoint (two steps of the tiny model) whose training state ``make`` edits."""
    def build(rng: random.Random, d: Path, a: Assets) -> Built:
        m = Path(shutil.copytree(training_checkpoint(a), d / "model"))
        make(rng, m / "training_state.pt")
        built = one(m)
        built.names = ["training_state.pt", "model"]
        return built
    _ckpt(name, expect, target="training_state")(build)


def _truncated_state(r: random.Random, path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: r.randint(0, len(data) - 1)])


def _incomplete_state(r: random.Random, path: Path) -> None:
    import torch

    state = torch.load(path, weights_only=True)
    for key in r.sample(["pytorch-lightning_version", "global_step", "epoch", "loops", "optimizer_states"],
                        r.randint(1, 3)):
        del state[key]
    torch.save(state, path)


_state_kind("valid", "accept", lambda r, p: None)
_state_kind("truncated", "error", _truncated_state)
_state_kind("incomplete", "error", _incomplete_state)
_state_kind("not_a_dict", "error", lambda r, p: _torch_save(r.choice([[1, 2], 3, "state"]), p, r))
_state_kind("garbage", "error", lambda r, p: p.write_bytes(garbage(r)))
_state_kind("empty", "error", lambda r, p: p.write_bytes(b""))
_state_kind("pickle_code", "error", lambda r, p: _torch_save({"global_step": _payloads(r, p.parent.parent)}, p, r))
_state_kind("pickle_code_raw", "error", lambda r, p: _raw_pickle(_payloads(r, p.parent.parent), p, r))
_state_kind("missing", "error", lambda r, p: p.unlink())


def generate(seed: int = 0, scale: float = 1.0) -> list[Case]:
    """The cases: for each format ``COUNTS[fmt] * scale`` inputs, cycling through its kinds in a seeded order."""
    cases: list[Case] = []
    for fmt, count in COUNTS.items():
        kinds = KINDS[fmt]
        order = list(range(len(kinds)))
        random.Random(f"{seed}:{fmt}:order").shuffle(order)
        for j in range(max(1, round(count * scale))):
            name, target, expect, _ = kinds[order[j % len(kinds)]]
            cases.append(Case(len(cases), fmt, name, target, expect, f"{seed}:{fmt}:{j}"))
    return cases


def builder(case: Case) -> Builder:
    for name, _, _, fn in KINDS[case.fmt]:
        if name == case.kind:
            return fn
    raise KeyError(case.kind)


def build(case: Case, d: Path, assets: Assets) -> Built:
    d.mkdir(parents=True, exist_ok=True)
    return builder(case)(random.Random(case.seed), d, assets)


# =============================================================================================
# Assets
# =============================================================================================

def make_assets(root: Path) -> Assets:
    """Write (once) the valid files the cases start from."""
    import torch

    genome = dict(base_genome())
    a = Assets(root, root / "genome.fa", root / "genome.gff3", root / "model", root / "prepared",
               root / "seqs.fa", root / "variants.vcf", root / "labeled.csv", genome,
               root / "run" / "checkpoints" / f"step-{CHECKPOINT_STEPS:08d}")
    done = root / ".complete"
    if done.exists():
        return a
    root.mkdir(parents=True, exist_ok=True)
    write(a.fasta, fasta_text(list(genome.items())))
    write(a.gff, "\n".join(gff_lines(random.Random("base-gff"))) + "\n")
    rng = random.Random("assets")
    write(a.seqs, fasta_text([(f"s{i}", bases(rng, rng.randint(10, 80))) for i in range(5)]))
    write(a.variants, _vcf(_snvs(rng, genome, 4)))
    write(a.labeled, _csv(rng))
    from dnalm.data.prepare import GenomeSpec, prepare
    from dnalm.genome.splits import SplitSpec
    from dnalm.models.hyena import HyenaConfig, HyenaLM
    from dnalm.models.io import save_pretrained
    from dnalm.tokenizers import CharTokenizer

    torch.manual_seed(0)
    model = HyenaLM(HyenaConfig(d_model=16, n_layer=2, d_inner=32, l_max=66, filter_order=8, embed_dropout=0.0))
    save_pretrained(model, a.model, tokenizer=CharTokenizer())
    prepare([GenomeSpec("base", str(a.fasta), str(a.gff))], a.prepared,
            SplitSpec(strategy="records", val=["chr3"], test=["chr2"]))
    done.touch()
    return a


# =============================================================================================
# Running a case in-process
# =============================================================================================

class Hang(BaseException):
    """Raised by the alarm when a case runs past its time limit (a BaseException, so that no
    ``except Exception`` in the library can swallow it)."""


def _fasta(built: Built, d: Path) -> None:
    from dnalm.genome.fasta import FastaIndex, iter_records, read_lengths

    lengths = read_lengths(built.path)
    streamed = {rec.name: rec.seq.decode("ascii") for rec in iter_records(built.path)}
    tmp = d / "fasta_tmp"
    tmp.mkdir()
    with FastaIndex(built.path, tmp_dir=tmp) as index:
        if index.lengths != lengths or list(streamed) != list(lengths):
            raise AssertionError(f"record lengths disagree: index {index.lengths}, streamed {lengths}")
        for name, seq in streamed.items():
            if index.fetch(name, 0, len(seq)) != seq:
                raise AssertionError(f"FastaIndex.fetch({name!r}) differs from the streamed record")
    if any(tmp.iterdir()):
        raise AssertionError(f"FastaIndex left temporary files: {sorted(p.name for p in tmp.iterdir())}")


def _gff(built: Built, d: Path, assets: Assets) -> None:
    from dnalm.genome.gff import index_gff3, read_gff3

    lengths = {k: len(v) for k, v in assets.genome.items()}
    read_gff3(built.path, lengths)
    with index_gff3(built.path, lengths) as index:
        for seqid in lengths:
            index.table(seqid)


def _prepare(built: Built, d: Path) -> None:
    from dnalm.data.prepare import GenomeSpec, prepare
    from dnalm.genome.splits import SplitSpec

    a = built.args
    gff = str(a["gff"]) if a["gff"] else None
    prepare([GenomeSpec("g", str(a["fasta"]), gff)], built.outputs[0], SplitSpec(**a["split"]))
    for name in ("tokens.u8", "regions.u8", "manifest.json", "splits.json", "split_report.md"):
        if not (built.outputs[0] / name).is_file():
            raise AssertionError(f"prepare finished without {name}")


def _labeled_target(built: Built, d: Path) -> None:
    from dnalm.data.datasets import LabeledSequenceDataset
    from dnalm.tokenizers import CharTokenizer

    ds = LabeledSequenceDataset.from_path(built.path, CharTokenizer(), task=built.args["task"])
    for i in range(len(ds)):
        ds[i]


def _sequences(built: Built, d: Path) -> None:
    from dnalm.inference.io import read_sequences
    from dnalm.inference.scoring import encode_sequence
    from dnalm.tokenizers import CharTokenizer

    tok = CharTokenizer()
    for s in read_sequences(built.path):
        encode_sequence(tok, s.seq, False, where=s.where)


def _variants(built: Built, d: Path) -> None:
    from dnalm.genome.fasta import FastaIndex
    from dnalm.inference.variants import check_reference, read_variants, variant_windows

    table = read_variants(built.path)
    with FastaIndex(built.args["reference"]) as genome:
        check_reference(table.variants, genome, built.path)
        for v in table.variants:
            variant_windows(v, genome, 64)


def _checkpoint(built: Built, d: Path) -> None:
    from dnalm.inference.api import load_model

    load_model(built.path, device="cpu")


def _training_state(built: Built, d: Path) -> None:
    from dnalm.training.checkpoint import read_training_state

    read_training_state(built.path)


def _cli(built: Built, d: Path) -> None:
    from dnalm.cli import run

    code = run(list(built.args["argv"]))
    if code != 0:
        raise AssertionError(f"dnalm.cli.run returned {code} without raising")


def run_target(case: Case, built: Built, d: Path, assets: Assets) -> None:
    if case.target == "fasta":
        _fasta(built, d)
    elif case.target == "gff":
        _gff(built, d, assets)
    elif case.target == "prepare":
        _prepare(built, d)
    elif case.target == "labeled":
        _labeled_target(built, d)
    elif case.target == "sequences":
        _sequences(built, d)
    elif case.target == "variants":
        _variants(built, d)
    elif case.target == "checkpoint":
        _checkpoint(built, d)
    elif case.target == "training_state":
        _training_state(built, d)
    elif case.target == "cli":
        _cli(built, d)
    else:
        raise ValueError(case.target)


def leftovers(outputs: Sequence[Path]) -> list[str]:
    """Outputs that exist and temporary files (``.name.*.tmp``, ``.name.old``) beside them."""
    found = []
    for out in outputs:
        if out.exists() or out.is_symlink():
            found.append(str(out))
        parent = out.parent
        if parent.is_dir():
            found += [str(p) for p in parent.iterdir() if p.name.startswith(f".{out.name}.")]
    return found


def _site(exc: BaseException) -> str:
    """The innermost frame of the traceback inside dnalm (else the innermost one): 'file:line function'."""
    frames = traceback.extract_tb(exc.__traceback__)
    inside = [f for f in frames if f"{os.sep}dnalm{os.sep}" in f.filename and "fuzz_inputs" not in f.filename]
    f = (inside or frames or [None])[-1]
    if f is None:
        return "?"
    name = f.filename.split(f"{os.sep}src{os.sep}")[-1] if f"{os.sep}src{os.sep}" in f.filename else f.filename
    return f"{name}:{f.lineno} {f.name}"


def names_input(message: str, built: Built) -> bool:
    return not built.names or any(n and n in message for n in built.names)


def classify_error(exc: BaseException, built: Built, case: Case) -> tuple[str, str, str]:
    """(outcome, message, site) of an exception raised by an entry point."""
    from dnalm.errors import DnalmError

    message = str(exc)
    if isinstance(exc, Hang):
        return "hang", message, _site(exc)
    if isinstance(exc, DnalmError):
        one_line = "\n" not in message and message.strip() != ""
        return ("clean" if one_line and names_input(message, built) else "unclear"), message, _site(exc)
    first = message.splitlines()[0] if message else ""
    return "traceback", f"{type(exc).__name__}: {first}"[:500], _site(exc)


def run_case(case: Case, root: Path, assets: Assets, timeout: float) -> dict[str, Any]:
    """Build and run one case in this process; the outcome as a JSON-ready dict."""
    import signal

    d = root / f"case{case.index:05d}"
    shutil.rmtree(d, ignore_errors=True)
    result: dict[str, Any] = {**asdict(case), "outcome": "accepted", "message": "", "site": ""}
    try:
        built = build(case, d, assets)
    except Exception as exc:  # a bug of the generator, not of dnalm
        result.update(outcome="build_error", message=f"{type(exc).__name__}: {exc}"[:500], site=_site(exc))
        return result

    def alarm(signum, frame):
        raise Hang(f"still running after {timeout:.0f} s")

    start = time.perf_counter()
    signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    error: BaseException | None = None
    try:
        run_target(case, built, d, assets)
    except BaseException as exc:  # noqa: BLE001 - every outcome is counted
        error = exc
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    result["seconds"] = round(time.perf_counter() - start, 3)
    if error is not None:
        outcome, message, site = classify_error(error, built, case)
        result.update(outcome=outcome, message=message, site=site)
        left = leftovers(built.outputs)
        if left and outcome in ("clean", "unclear"):
            result.update(outcome="partial", message=f"{message} | left behind: {', '.join(left)[:300]}")
    else:
        left = [p for p in leftovers(built.outputs) if Path(p).name.startswith(".")]
        if left:
            result.update(outcome="partial", message=f"left behind: {', '.join(left)[:300]}")
    if (d / MARKER).exists():
        result.update(outcome="executed", message=f"the hostile input ran its command: {result['message']}")
    result["wrong"] = wrong(case.expect, result["outcome"])
    shutil.rmtree(d, ignore_errors=True)
    return result


def wrong(expect: str, outcome: str) -> str:
    if expect == "error" and outcome == "accepted":
        return "wrongly_accepted"
    if expect == "accept" and outcome in ("clean", "unclear"):
        return "wrongly_rejected"
    return ""


# =============================================================================================
# Worker process (in-process runs, isolated from the harness so a hang or crash can be contained)
# =============================================================================================

def limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def worker(args: argparse.Namespace) -> None:
    """Read case indices on stdin, answer one JSON line per case (stdout and stderr of the library go to
    /dev/null so that they cannot corrupt the answers)."""
    import warnings

    answers = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    if not args.verbose:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    warnings.simplefilter("ignore")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    limit_memory()
    cases = generate(args.seed, args.scale)
    assets = make_assets(Path(args.assets))
    work = Path(args.work)
    answers.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        case = cases[int(line)]
        answers.write(json.dumps(run_case(case, work, assets, args.timeout)) + "\n")


class Pool:
    """One worker process at a time; a case that outlives ``timeout + grace`` is a hang and the worker is
    replaced (the alarm inside the worker normally reports it first, with where it was)."""

    def __init__(self, args: argparse.Namespace, work: Path):
        self.args, self.work, self.proc = args, work, None
        self.sel = selectors.DefaultSelector()

    def _start(self) -> None:
        cmd = [sys.executable, __file__, "--worker", "--seed", str(self.args.seed), "--scale", str(self.args.scale),
               "--assets", str(self.work / "assets"), "--work", str(self.work), "--timeout", str(self.args.timeout)]
        if self.args.verbose:
            cmd.append("--verbose")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                     env={**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"})
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.proc.stdout, selectors.EVENT_READ)
        ready = self._read(600)
        if ready is None or not ready.get("ready"):
            raise RuntimeError("the fuzz worker did not start")

    def _read(self, timeout: float) -> dict | None:
        assert self.proc is not None
        if not self.sel.select(timeout):
            return None
        line = self.proc.stdout.readline()
        return json.loads(line) if line else None

    def _stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def run(self, case: Case) -> dict[str, Any]:
        if self.proc is None:
            self._start()
        assert self.proc is not None
        start = time.perf_counter()
        self.proc.stdin.write(f"{case.index}\n")
        self.proc.stdin.flush()
        answer = self._read(self.args.timeout + 30)
        if answer is None:
            died = self.proc.poll() is not None
            code = self.proc.returncode
            self._stop()
            outcome = "traceback" if died else "hang"
            message = f"the worker process died (status {code})" if died else "no answer (killed)"
            answer = {**asdict(case), "outcome": outcome, "message": message, "site": "",
                      "seconds": round(time.perf_counter() - start, 3)}
            answer["wrong"] = ""
        return answer

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
            self.proc = None


# =============================================================================================
# The command line sample
# =============================================================================================

def cli_argv(case: Case, built: Built, assets: Assets, d: Path) -> tuple[list[str], list[Path]]:
    """The dnalm command that reads the case's input, and the outputs it would write."""
    if built.cli is not None:
        return built.cli, built.outputs
    p = built.path
    if case.target == "fasta":
        out = d / "prepared"
        return ["prepare", f"genome={p}", f"out={out}"], [out]
    if case.target == "gff":
        out = d / "prepared"
        return ["prepare", f"genome={assets.fasta}", f"annotation={p}", f"out={out}"], [out]
    if case.target == "labeled":
        out = d / "finetuned"
        task = built.args.get("task", "classification")
        return ["finetune", f"checkpoint={assets.model}", f"task={task}", f"data.path={p}", f"out={out}",
                "trainer.max_steps=1", "trainer.max_epochs=1", "data.batch_size=4", "trainer.progress_bar=false",
                "save_model=true"], [out]
    if case.target == "sequences":
        out = d / "out.parquet"
        return ["predict", f"input={p}", f"checkpoint={assets.model}", f"output={out}", "device=cpu"], [out]
    if case.target == "variants":
        out = d / "scores.tsv"
        return ["score-variants", f"variants={p}", f"reference={assets.fasta}", f"checkpoint={assets.model}",
                f"output={out}", "window=64", "device=cpu"], [out]
    if case.target == "checkpoint":
        out = d / "out.parquet"
        return ["predict", f"input={assets.seqs}", f"checkpoint={p}", f"output={out}", "device=cpu"], [out]
    if case.target == "training_state":
        out = d / "run"
        argv = [x for x in TRAIN_BASE if not x.startswith("trainer.max_steps=")]
        return ["train", *argv, f"trainer.max_steps={CHECKPOINT_STEPS + 1}", f"data.prepared={assets.prepared}",
                f"out={out}", f"resume={p}"], [out]
    raise ValueError(case.target)


def run_cli_case(case: Case, root: Path, assets: Assets, timeout: float) -> dict[str, Any]:
    d = root / f"cli{case.index:05d}"
    shutil.rmtree(d, ignore_errors=True)
    built = build(case, d, assets)
    argv, outputs = cli_argv(case, built, assets, d)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result: dict[str, Any] = {**asdict(case), "argv": [str(x) for x in argv], "outcome": "accepted", "message": "",
                              "site": ""}
    start = time.perf_counter()
    try:
        limited = ["bash", "-c", f'ulimit -v {MEMORY_LIMIT >> 10} && exec "$0" "$@"', sys.executable]
        proc = subprocess.run([*limited, "-m", "dnalm.cli", *argv], cwd=d, env=env, capture_output=True,
                              timeout=timeout)
        code, stderr = proc.returncode, proc.stderr.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        code, stderr = None, ""
    result["seconds"] = round(time.perf_counter() - start, 3)
    result["exit_code"] = code
    lines = [x for x in stderr.splitlines() if x.strip()]
    result["stderr"] = stderr[-2000:]
    if code is None:
        result.update(outcome="hang", message=f"still running after {timeout:.0f} s")
    elif "Traceback" in stderr or code not in (0, 2):
        last = lines[-1] if lines else ""
        result.update(outcome="traceback", message=f"exit {code}: {last}"[:500])
    elif code == 2:
        errors = [x for x in lines if x.startswith("dnalm: error: ")]
        message = errors[0] if errors else (lines[-1] if lines else "")
        clean = len(lines) == 1 and len(errors) == 1 and names_input(message, built)
        result.update(outcome="clean" if clean else "unclear", message=message[:500])
        if not clean:
            result["message"] = (message + f" | stderr has {len(lines)} lines")[:500]
        left = leftovers(outputs)
        if left:
            result.update(outcome="partial", message=f"{message} | left behind: {', '.join(left)[:300]}")
    else:
        left = [p for p in leftovers(outputs) if Path(p).name.startswith(".")]
        if left:
            result.update(outcome="partial", message=f"left behind: {', '.join(left)[:300]}")
    if (d / MARKER).exists():
        result.update(outcome="executed", message=f"the hostile input ran its command: {result['message']}")
    result["wrong"] = wrong(case.expect, result["outcome"])
    shutil.rmtree(d, ignore_errors=True)
    return result


def cli_sample(cases: Sequence[Case], n: int, seed: int) -> list[Case]:
    """``n`` cases spread over every format and kind (seeded), no more than one per kind where possible."""
    rng = random.Random(f"{seed}:cli")
    by_kind: dict[tuple[str, str], list[Case]] = {}
    for c in cases:
        by_kind.setdefault((c.fmt, c.kind), []).append(c)
    keys = sorted(by_kind)
    rng.shuffle(keys)
    by_fmt: dict[str, list[tuple[str, str]]] = {}
    for k in keys:
        by_fmt.setdefault(k[0], []).append(k)
    chosen: list[Case] = []
    while len(chosen) < n and any(by_fmt.values()):
        for fmt in list(by_fmt):
            if by_fmt[fmt] and len(chosen) < n:
                chosen.append(rng.choice(by_kind[by_fmt[fmt].pop()]))
    return sorted(chosen, key=lambda c: c.index)


# =============================================================================================
# Summary
# =============================================================================================

OUTCOMES = ("accepted", "clean", "unclear", "traceback", "hang", "partial", "executed", "build_error")


def summarize(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    by_fmt: dict[str, Counter] = {}
    for r in results:
        by_fmt.setdefault(r["fmt"], Counter())[r["outcome"]] += 1
        if r.get("wrong"):
            by_fmt[r["fmt"]][r["wrong"]] += 1
    total = Counter()
    for c in by_fmt.values():
        total.update(c)
    return {"inputs": len(results), "total": dict(total), "by_format": {k: dict(v) for k, v in by_fmt.items()}}


def markdown(summary: dict[str, Any], title: str) -> str:
    cols = list(OUTCOMES) + ["wrongly_accepted", "wrongly_rejected"]
    cols = [c for c in cols if c != "build_error" or summary["total"].get(c)]
    lines = [f"### {title}: {summary['inputs']} inputs", "",
             "| format | inputs | " + " | ".join(c.replace("_", " ") for c in cols) + " |",
             "|---|---" + "|---" * len(cols) + "|"]
    for fmt, c in list(summary["by_format"].items()) + [("total", summary["total"])]:
        n = sum(c.get(o, 0) for o in OUTCOMES)
        lines.append(f"| {fmt} | {n} | " + " | ".join(str(c.get(o, 0)) for o in cols) + " |")
    return "\n".join(lines) + "\n"


def problems(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in results if r["outcome"] in BAD_OUTCOMES + ("unclear", "build_error") or r.get("wrong")]


def problem_lines(results: Sequence[dict[str, Any]], limit: int = 200) -> str:
    out = []
    for r in problems(results)[:limit]:
        what = r["outcome"] + (f" ({r['wrong']})" if r.get("wrong") else "")
        out.append(f"- #{r['index']} {r['fmt']}/{r['kind']} -> {what}: {r['message'][:200]}"
                   + (f" [{r['site']}]" if r.get("site") else ""))
    return "\n".join(out) + ("\n" if out else "")


# =============================================================================================
# Main
# =============================================================================================

def run_all(seed: int, scale: float, cli: int, timeout: float, cli_timeout: float, work: Path, jobs: int = 2,
            indices: Sequence[int] | None = None, verbose: bool = False, progress: bool = True
            ) -> tuple[list[dict], list[dict]]:
    """In-process results of every case (or of ``indices``) and CLI results of a sample of ``cli`` cases."""
    args = argparse.Namespace(seed=seed, scale=scale, timeout=timeout, verbose=verbose)
    cases = generate(seed, scale)
    chosen = [cases[i] for i in indices] if indices is not None else cases
    pool = Pool(args, work)
    results = []
    try:
        for i, case in enumerate(chosen):
            results.append(pool.run(case))
            if progress and (i + 1) % 50 == 0:
                print(f"  {i + 1}/{len(chosen)} in-process, {dict(Counter(r['outcome'] for r in results))}",
                      file=sys.stderr, flush=True)
    finally:
        pool.close() if pool.proc is not None and pool.proc.poll() is None else pool._stop()
    cli_results: list[dict] = []
    if cli:
        assets = make_assets(work / "assets")
        sample = cli_sample(chosen, cli, seed)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=jobs) as ex:
            for r in ex.map(lambda c: run_cli_case(c, work / "cli", assets, cli_timeout), sample):
                cli_results.append(r)
                if progress and len(cli_results) % 10 == 0:
                    print(f"  {len(cli_results)}/{len(sample)} CLI", file=sys.stderr, flush=True)
    return results, cli_results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=float, default=1.0, help="multiplies the inputs per format")
    p.add_argument("--cli", type=int, default=60, help="cases also run through the command line")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per in-process input")
    p.add_argument("--cli-timeout", type=float, default=180.0, help="seconds per CLI run")
    p.add_argument("--jobs", type=int, default=2, help="CLI runs at a time")
    p.add_argument("--out", type=Path, default=None, help="directory for fuzz.json and fuzz.md")
    p.add_argument("--only", default=None, help="comma-separated case indices (debugging)")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--assets", default=None, help=argparse.SUPPRESS)
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    indices = [int(x) for x in args.only.split(",")] if args.only else None
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dnalm-fuzz-") as tmp:
        results, cli_results = run_all(args.seed, args.scale, args.cli, args.timeout, args.cli_timeout, Path(tmp),
                                       args.jobs, indices, args.verbose)
    seconds = time.perf_counter() - start
    summary = {"seed": args.seed, "scale": args.scale, "seconds": round(seconds, 1),
               "in_process": summarize(results), "cli": summarize(cli_results) if cli_results else None}
    text = (f"# Fuzzing dnalm's inputs (seed {args.seed}, scale {args.scale}, {seconds:.0f} s)\n\n"
            + markdown(summary["in_process"], "In-process (library entry points)") + "\n"
            + (markdown(summary["cli"], "Command line (python -m dnalm.cli)") + "\n" if cli_results else "")
            + "### Problems\n\n" + (problem_lines(results + cli_results) or "none\n"))
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "fuzz.json").write_text(json.dumps({"summary": summary, "in_process": results,
                                                        "cli": cli_results}, indent=1) + "\n")
        (args.out / "fuzz.md").write_text(text)
    bad = sum(summary["in_process"]["total"].get(o, 0) for o in BAD_OUTCOMES)
    if cli_results:
        bad += sum(summary["cli"]["total"].get(o, 0) for o in BAD_OUTCOMES)
    return 1 if bad else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
