"""Chromosome names as other files spell them: ``chrI``, ``I``, ``chr1`` or ``BK006935`` for ``BK006935.2``.

A VCF, BED or table made against the same assembly often names records differently from the FASTA
(UCSC ``chrI`` vs NCBI ``BK006935.2``; Arabidopsis ``1`` vs ``Chr1``). :class:`ChromAliases` maps a name to
the FASTA record it means, in this order:

1. the record name itself;
2. an alias file (``chrom_aliases=FILE``): two tab- or whitespace-separated columns ``alias  record``
   (lines starting with ``#`` are comments), e.g. a UCSC ``chromAlias`` table;
3. names derived from the FASTA, compared without case and without a leading ``chr``/``chrom``/
   ``chromosome``: the record name, its accession without the version (``BK006935``), and what its
   header says after "chromosome" (``... chromosome I, complete sequence`` gives ``I``; a Roman numeral
   also gives its number, so ``chr1`` finds chromosome I), ``mitochondrion`` gives ``M``, ``MT``, ``mito``
   (likewise ``chloroplast``: ``C``, ``Pt``).

A derived name that two records share is dropped (never guessed). :meth:`ChromAliases.resolve` returns the
record name or None; :meth:`ChromAliases.used` lists the renamings applied, for a summary line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from dnalm.errors import InputError

_PREFIX = re.compile(r"^(chromosome|chrom|chr)[_\s-]?", re.IGNORECASE)
_CHROMOSOME = re.compile(r"\bchromosome[:\s]+([A-Za-z0-9]+)", re.IGNORECASE)
_ROMAN = {"I": 1, "V": 5, "X": 10, "L": 50}
_ORGANELLES = {"mitochondrion": ("m", "mt", "mito", "mitochondrion"), "chloroplast": ("c", "pt", "chloroplast")}


def _roman(text: str) -> int | None:
    """The value of a Roman numeral of I, V, X, L (None if ``text`` is not one)."""
    text = text.upper()
    if not text or any(c not in _ROMAN for c in text):
        return None
    total = 0
    for i, c in enumerate(text):
        v = _ROMAN[c]
        total += -v if i + 1 < len(text) and _ROMAN[text[i + 1]] > v else v
    return total


def _key(name: str) -> str:
    """A name compared without case and without a leading chr/chrom/chromosome."""
    return _PREFIX.sub("", name.strip()).lower()


def derived_names(name: str, description: str = "") -> tuple[set[str], set[str]]:
    """Comparison keys under which a record is also known (see the module docstring): the names themselves,
    and, second in rank, the numbers of Roman numerals its header gives (``chromosome XIV`` -> ``14``)."""
    keys = {_key(name)}
    if re.match(r"^[A-Za-z]{1,6}_?\d+\.\d+$", name):  # an accession with its version
        keys.add(_key(name.rsplit(".", 1)[0]))
    m = _CHROMOSOME.search(description)
    numbers = set()
    if m:
        keys.add(m.group(1).lower())
        value = _roman(m.group(1))
        if value is not None:
            numbers.add(str(value))
    else:
        for organelle, names in _ORGANELLES.items():
            if organelle in description.lower():
                keys.update(names)
    return {k for k in keys if k}, numbers


def read_alias_file(path: str | os.PathLike) -> dict[str, str]:
    """``{alias: record}`` from a two-column file (see the module docstring)."""
    from dnalm.inference.io import data_lines

    out: dict[str, str] = {}
    for number, line in data_lines(path):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) < 2 or not fields[0].strip() or not fields[1].strip():
            raise InputError(f"{path}: line {number}: expected two columns 'alias<TAB>record', got {line!r}")
        out[fields[0].strip()] = fields[1].strip()
    return out


class ChromAliases:
    """Names of the records of one FASTA, and what other files call them (see the module docstring)."""

    def __init__(self, records: Iterable[str], descriptions: Mapping[str, str] | None = None,
                 alias_file: str | os.PathLike | None = None):
        self.records = list(records)
        known = set(self.records)
        self.explicit: dict[str, str] = {}
        if alias_file is not None:
            for alias, record in read_alias_file(alias_file).items():
                if record not in known:
                    raise InputError(f"{alias_file}: alias '{alias}' names record '{record}', which the reference "
                                     f"does not have (records: {', '.join(self.records[:8])}"
                                     f"{', ...' if len(self.records) > 8 else ''})")
                self.explicit[alias] = record
        owners: dict[str, set[str]] = {}
        numbered: dict[str, set[str]] = {}
        for record in self.records:
            keys, numbers = derived_names(record, (descriptions or {}).get(record, ""))
            for key in keys:
                owners.setdefault(key, set()).add(record)
            for key in numbers:
                numbered.setdefault(key, set()).add(record)
        self.derived = {k: next(iter(v)) for k, v in owners.items() if len(v) == 1}
        self.derived.update({k: next(iter(v)) for k, v in numbered.items() if len(v) == 1 and k not in owners})
        self._used: dict[str, str] = {}

    @classmethod
    def of(cls, genome, alias_file: str | os.PathLike | None = None) -> ChromAliases:
        """The aliases of an open :class:`~dnalm.genome.fasta.FastaIndex`."""
        return cls(genome.names, getattr(genome, "descriptions", {}), alias_file)

    def resolve(self, name: str) -> str | None:
        """The record ``name`` means, or None."""
        if name in self.records and name not in self.explicit:
            return name
        record = self.explicit.get(name) or self.derived.get(_key(name))
        if record is not None and record != name:
            self._used[name] = record
        return record

    def used(self) -> dict[str, str]:
        """``{name as given: record}`` for every renaming :meth:`resolve` applied so far."""
        return dict(self._used)

    def summary(self, limit: int = 4) -> str:
        """``'chrI -> BK006935.2, chrII -> BK006936.2, ... (16 names)'``, or '' when nothing was renamed."""
        used = list(self._used.items())
        if not used:
            return ""
        shown = ", ".join(f"{a} -> {r}" for a, r in used[:limit])
        return shown + (f", ... ({len(used)} names)" if len(used) > limit else "")


def alias_path(value: str | None) -> Path | None:
    """A config's ``chrom_aliases`` value as a path (None when unset); a missing file is an InputError."""
    if not value:
        return None
    path = Path(value)
    if not path.is_file():
        raise InputError(f"{path}: chromosome alias file not found (chrom_aliases=FILE)")
    return path
