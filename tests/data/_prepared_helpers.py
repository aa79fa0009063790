"""Build small prepared dataset directories by hand, following DESIGN.md's contract exactly.

Tests of the readers must not depend on ``dnalm prepare``; this writer is deliberately simple
(no FASTA, no GFF3): sequences are strings whose lowercase letters are soft-masked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

IDS = {"A": 7, "C": 8, "G": 9, "T": 10, "N": 11}
REGION_CLASSES = ["intergenic", "CDS", "UTR", "exon_other", "intron", "promoter", "repeat", "N"]


def encode(seq: str) -> np.ndarray:
    """Upper-cased bases -> CharTokenizer ids, IUPAC ambiguity -> N: ``(L,)`` uint8."""
    return np.array([IDS.get(c, 11) for c in seq.upper()], dtype=np.uint8)


def random_sequence(rng: np.random.Generator, length: int, n_frac: float = 0.0, soft_frac: float = 0.0) -> str:
    bases = rng.choice(list("ACGT"), size=length)
    bases[rng.random(length) < n_frac] = "N"
    soft = rng.random(length) < soft_frac
    bases[soft] = np.char.lower(bases[soft])
    return "".join(bases)


def write_prepared(path: Path, records: Mapping[str, str],
                   splits: Mapping[str, Sequence[tuple[str, int, int]]] | None = None,
                   region_ids: Mapping[str, np.ndarray] | None = None,
                   genome_of: Mapping[str, str] | None = None,
                   weights: Mapping[str, float] | None = None) -> Path:
    """Write ``tokens.u8``, ``regions.u8``, ``manifest.json`` and ``splits.json`` under ``path``.

    ``region_ids[record]`` gives the class id (0-6) of every base (default 0); N bases become
    class 7 and lowercase bases get bit 7. ``splits`` defaults to every record in 'train'.
    """
    path.mkdir(parents=True, exist_ok=True)
    genome_of = genome_of or {}
    tokens, regions, recs, offset = [], [], [], 0
    class_counts = dict.fromkeys(REGION_CLASSES, 0)
    for name, seq in records.items():
        ids = encode(seq)
        cls = np.zeros(len(seq), dtype=np.uint8) if region_ids is None else np.asarray(region_ids[name], np.uint8)
        cls = np.where(ids == 11, 7, cls).astype(np.uint8)
        lower = np.array([c.islower() for c in seq], dtype=bool)
        raw = cls | np.where(lower, 0x80, 0).astype(np.uint8)
        for c in range(8):
            class_counts[REGION_CLASSES[c]] += int((cls == c).sum())
        tokens.append(ids)
        regions.append(raw)
        recs.append({"name": name, "genome": genome_of.get(name, "g1"), "length": len(seq), "offset": offset,
                     "n_count": int((ids == 11).sum()), "softmasked": int(lower.sum())})
        offset += len(seq)
    np.concatenate(tokens).astype(np.uint8).tofile(path / "tokens.u8")
    np.concatenate(regions).astype(np.uint8).tofile(path / "regions.u8")
    genomes = sorted({r["genome"] for r in recs})
    manifest = {
        "format": "dnalm-prepared/1",
        "dnalm_version": "0.1.0",
        "tokenizer": {"type": "char"},
        "genomes": [{"name": g, "fasta": f"{g}.fa", "fasta_sha256": "0" * 64, "annotation": None,
                     "annotation_sha256": None, "weight": (weights or {}).get(g, 1.0)} for g in genomes],
        "records": recs,
        "region_classes": REGION_CLASSES,
        "class_counts": class_counts,
        "total_length": offset,
    }
    if splits is None:
        splits = {"train": [(name, 0, len(seq)) for name, seq in records.items()]}
    (path / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (path / "splits.json").write_text(json.dumps({
        "strategy": "by-hand", "splits": {k: [list(iv) for iv in v] for k, v in splits.items()}}, indent=1))
    (path / "split_report.md").write_text("# split report\n")
    return path
