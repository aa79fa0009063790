"""Read a prepared dataset directory (the output of ``dnalm prepare``).

The format is fixed in DESIGN.md ("Prepared dataset directory"):

* ``tokens.u8``: uint8, all records concatenated, CharTokenizer ids A 7, C 8, G 9, T 10, N 11;
* ``regions.u8``: uint8, same length; bits 0-6 region class id, bit 7 set on soft-masked bases;
* ``manifest.json``: ``format == "dnalm-prepared/1"``, ``records`` with ``offset`` and ``length``,
  ``region_classes``, ``genomes`` (with a sampling ``weight``), ``total_length``;
* ``splits.json``: ``splits`` {name: [[record, start, end], ...]} in record coordinates (0-based,
  half-open).

:class:`PreparedGenome` opens both arrays as read-only memory maps, so a genome of many gigabases
costs no memory until windows are read. Every inconsistency between the files raises a one-line
:class:`~dnalm.errors.InputError` that names the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from dnalm.errors import InputError
from dnalm.genome.regions import CLASS_MASK, SOFTMASK_BIT
from dnalm.tokenizers import A_ID, C_ID, G_ID, N_ID, T_ID

FORMAT = "dnalm-prepared/1"
TOKENS_FILE = "tokens.u8"
REGIONS_FILE = "regions.u8"
MANIFEST_FILE = "manifest.json"
SPLITS_FILE = "splits.json"


@dataclass(frozen=True)
class Record:
    """One sequence record of a prepared genome; ``offset`` is its first base in ``tokens.u8``."""

    name: str
    genome: str
    length: int
    offset: int
    n_count: int = 0
    softmasked: int = 0


class Interval(NamedTuple):
    """A split interval in global coordinates of ``tokens.u8``: bases ``[start, end)`` of ``record``."""

    record: str
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


class PreparedGenome:
    """A prepared directory opened for reading.

    Attributes:
        path: the directory.
        manifest: the parsed ``manifest.json``.
        split_info: the parsed ``splits.json``.
        tokens: ``(total_length,)`` uint8 read-only memmap of token ids.
        regions: ``(total_length,)`` uint8 read-only memmap (bits 0-6 class, bit 7 soft-mask).
        records: record name -> :class:`Record`, in file order.
        region_classes: region class names in id order.

    The object pickles without its memory maps (they are reopened), so DataLoader workers
    started by ``spawn`` or ``forkserver`` do not copy the genome.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise InputError(f"{self.path}: prepared dataset directory not found (create it with 'dnalm prepare')")
        self.manifest = self._read_json(MANIFEST_FILE)
        self.split_info = self._read_json(SPLITS_FILE)
        self._check_manifest()
        self.records = self._parse_records()
        self.region_classes: list[str] = [str(c) for c in self.manifest["region_classes"]]
        self.genome_weights = self._parse_genomes()
        self._splits = self._parse_splits()
        self._open_arrays()

    # ------------------------------------------------------------------ reading the files
    def _read_json(self, name: str) -> dict[str, Any]:
        file = self.path / name
        if not file.is_file():
            raise InputError(f"{file}: missing from the prepared directory (re-run 'dnalm prepare')")
        try:
            data = json.loads(file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{file}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise InputError(f"{file}: expected a JSON object at top level")
        return data

    def _check_manifest(self) -> None:
        file = self.path / MANIFEST_FILE
        fmt = self.manifest.get("format")
        if fmt != FORMAT:
            raise InputError(f"{file}: format is {fmt!r}, this dnalm reads {FORMAT!r} (re-run 'dnalm prepare')")
        for key in ("records", "region_classes", "total_length"):
            if key not in self.manifest:
                raise InputError(f"{file}: missing key '{key}'")
        if "splits" not in self.split_info or not isinstance(self.split_info["splits"], dict):
            raise InputError(f"{self.path / SPLITS_FILE}: missing object 'splits'")

    def _parse_records(self) -> dict[str, Record]:
        file = self.path / MANIFEST_FILE
        records: dict[str, Record] = {}
        expected_offset = 0
        for i, rec in enumerate(self.manifest["records"]):
            try:
                r = Record(name=str(rec["name"]), genome=str(rec.get("genome", "")), length=int(rec["length"]),
                           offset=int(rec["offset"]), n_count=int(rec.get("n_count", 0)),
                           softmasked=int(rec.get("softmasked", 0)))
            except (KeyError, TypeError, ValueError) as exc:
                raise InputError(f"{file}: record {i} is malformed ({exc!r})") from None
            if r.name in records:
                raise InputError(f"{file}: record '{r.name}' appears twice")
            if r.offset != expected_offset or r.length < 0:
                raise InputError(f"{file}: record '{r.name}' has offset {r.offset} and length {r.length}, "
                                 f"expected offset {expected_offset} (records must be concatenated in order)")
            expected_offset += r.length
            records[r.name] = r
        if expected_offset != int(self.manifest["total_length"]):
            raise InputError(f"{file}: records sum to {expected_offset} bases but total_length is "
                             f"{self.manifest['total_length']}")
        return records

    def _parse_genomes(self) -> dict[str, float]:
        weights = {}
        for g in self.manifest.get("genomes", []) or []:
            weight = float(g.get("weight", 1.0))
            if not weight >= 0:
                raise InputError(f"{self.path / MANIFEST_FILE}: genome '{g.get('name')}' has weight {weight}")
            weights[str(g.get("name", ""))] = weight
        return weights

    def _parse_splits(self) -> dict[str, list[Interval]]:
        file = self.path / SPLITS_FILE
        out: dict[str, list[Interval]] = {}
        for split, items in self.split_info["splits"].items():
            intervals = []
            for j, item in enumerate(items or []):
                try:
                    name, start, end = item
                    start, end = int(start), int(end)
                except (TypeError, ValueError):
                    raise InputError(f"{file}: split '{split}' item {j} is not [record, start, end]") from None
                rec = self.records.get(str(name))
                if rec is None:
                    raise InputError(f"{file}: split '{split}' names record '{name}' absent from the manifest")
                if not 0 <= start <= end <= rec.length:
                    raise InputError(f"{file}: split '{split}' interval [{start}, {end}) lies outside record "
                                     f"'{name}' of length {rec.length}")
                if end > start:
                    intervals.append(Interval(rec.name, rec.offset + start, rec.offset + end))
            out[str(split)] = intervals
        return out

    def _open_arrays(self) -> None:
        total = int(self.manifest["total_length"])
        arrays = []
        for name in (TOKENS_FILE, REGIONS_FILE):
            file = self.path / name
            if not file.is_file():
                raise InputError(f"{file}: missing from the prepared directory (re-run 'dnalm prepare')")
            size = file.stat().st_size
            if size != total:
                raise InputError(f"{file}: has {size} bytes but the manifest's total_length is {total}")
            # np.memmap cannot map an empty file; an empty genome gets an empty array instead.
            arrays.append(np.memmap(file, dtype=np.uint8, mode="r", shape=(total,)) if total
                          else np.zeros(0, dtype=np.uint8))
        self.tokens, self.regions = arrays

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("tokens", None)
        state.pop("regions", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open_arrays()

    # ------------------------------------------------------------------ queries
    @property
    def total_length(self) -> int:
        return int(self.manifest["total_length"])

    @property
    def split_names(self) -> list[str]:
        return list(self._splits)

    def record(self, name: str) -> Record:
        try:
            return self.records[name]
        except KeyError:
            raise InputError(f"{self.path / MANIFEST_FILE}: no record named '{name}'") from None

    def intervals(self, split: str) -> list[Interval]:
        """Intervals of ``split`` as ``(record, start, end)`` named tuples in global coordinates of
        ``tokens.u8``, in the order of ``splits.json``; empty intervals are dropped."""
        if split not in self._splits:
            raise InputError(f"{self.path / SPLITS_FILE}: no split '{split}' (has: {', '.join(self._splits)})")
        return list(self._splits[split])

    def split_length(self, split: str) -> int:
        """Number of bases in ``split``."""
        return sum(iv.length for iv in self.intervals(split))

    def genome_weight(self, record: str) -> float:
        """Sampling weight of the genome that holds ``record`` (1.0 when the manifest gives none)."""
        return self.genome_weights.get(self.record(record).genome, 1.0)

    def _span(self, record: str, start: int, end: int) -> slice:
        rec = self.record(record)
        if not 0 <= start <= end <= rec.length:
            raise InputError(f"window [{start}, {end}) lies outside record '{record}' of length {rec.length}")
        return slice(rec.offset + start, rec.offset + end)

    def window(self, record: str, start: int, end: int) -> np.ndarray:
        """Token ids of bases ``[start, end)`` of ``record`` (record coordinates): ``(end - start,)`` uint8,
        a read-only view of the memmap."""
        return self.tokens[self._span(record, start, end)]

    def window_regions(self, record: str, start: int, end: int) -> np.ndarray:
        """Raw region bytes of bases ``[start, end)`` of ``record``: ``(end - start,)`` uint8 (bit 7 soft-mask)."""
        return self.regions[self._span(record, start, end)]

    def sequence(self, record: str, start: int = 0, end: int | None = None) -> str:
        """Bases of ``record`` as an upper-case string (soft-masking is in ``regions``, not in the string)."""
        end = self.record(record).length if end is None else end
        return _ID_TO_CHAR[self.window(record, start, end)].tobytes().decode("ascii")

    def __repr__(self) -> str:
        splits = ", ".join(f"{s}={self.split_length(s)}" for s in self._splits)
        return f"PreparedGenome({str(self.path)!r}, records={len(self.records)}, bases={self.total_length}, {splits})"


def region_class(raw: np.ndarray) -> np.ndarray:
    """Region class ids (bits 0-6) of raw region bytes, same shape."""
    return np.asarray(raw) & CLASS_MASK


def softmasked(raw: np.ndarray) -> np.ndarray:
    """Boolean soft-mask flags (bit 7) of raw region bytes, same shape."""
    return (np.asarray(raw) & SOFTMASK_BIT) != 0


_ID_TO_CHAR = np.full(256, ord("?"), dtype=np.uint8)
_ID_TO_CHAR[[A_ID, C_ID, G_ID, T_ID, N_ID]] = np.frombuffer(b"ACGTN", dtype=np.uint8)
