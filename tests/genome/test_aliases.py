"""Chromosome aliases: UCSC, Ensembl and NCBI spellings of the yeast and Arabidopsis records, and no guesses."""

from __future__ import annotations

import pytest

from dnalm.errors import InputError
from dnalm.genome.aliases import ChromAliases

# The headers of the yeast R64 FASTA (../shared/data/yeast_r64), abridged to four records.
YEAST = {"BK006935.2": "TPA_inf: Saccharomyces cerevisiae S288C chromosome I, complete sequence",
         "BK006936.2": "TPA_inf: Saccharomyces cerevisiae S288C chromosome II, complete sequence",
         "BK006947.3": "TPA_inf: Saccharomyces cerevisiae S288C chromosome XIV, complete sequence",
         "BK006949.2": "TPA_inf: Saccharomyces cerevisiae S288C chromosome XVI, complete sequence"}


@pytest.mark.parametrize(("given", "record"), [
    ("BK006935.2", "BK006935.2"), ("chrI", "BK006935.2"), ("I", "BK006935.2"), ("chromosome_I", "BK006935.2"),
    ("chr1", "BK006935.2"), ("1", "BK006935.2"), ("BK006935", "BK006935.2"), ("chrXIV", "BK006947.3"),
    ("14", "BK006947.3"), ("ChrXVI", "BK006949.2"), ("chrII", "BK006936.2"), ("chrIII", None), ("chrM", None),
])
def test_yeast_names_as_ucsc_ensembl_and_ncbi_write_them(given, record):
    assert ChromAliases(YEAST, YEAST).resolve(given) == record


def test_names_shared_by_two_records_are_never_guessed(tmp_path):
    human = ChromAliases(["1", "10", "X", "MT"], {"1": "chromosome 1", "10": "chromosome 10", "X": "chromosome X",
                                                  "MT": "mitochondrion, complete genome"})
    assert [human.resolve(n) for n in ("chr1", "chr10", "chrX", "chrM", "M", "x")] == ["1", "10", "X", "MT", "MT",
                                                                                         "X"]
    plant = ChromAliases(["Chr1", "Chr2", "ChrC"], {"ChrC": "chloroplast"})
    assert [plant.resolve(n) for n in ("1", "chr2", "Pt", "C", "3")] == ["Chr1", "Chr2", "ChrC", "ChrC", None]
    twins = ChromAliases(["Chr1A", "chr1a"])  # the same key twice: only the exact names resolve
    assert twins.resolve("Chr1A") == "Chr1A" and twins.resolve("CHR1A") is None
    table = tmp_path / "aliases.tsv"
    table.write_text("# alias\trecord\nscaffold_7\tChr2\nchr1\tChr2\n")
    explicit = ChromAliases(["Chr1", "Chr2"], alias_file=table)
    assert explicit.resolve("scaffold_7") == "Chr2" and explicit.resolve("chr1") == "Chr2"  # the file wins
    assert explicit.summary() == "scaffold_7 -> Chr2, chr1 -> Chr2"
    table.write_text("x\tChr9\n")
    with pytest.raises(InputError, match=r"aliases.tsv: alias 'x' names record 'Chr9', which the reference"):
        ChromAliases(["Chr1"], alias_file=table)
