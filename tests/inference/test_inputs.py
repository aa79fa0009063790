"""Inputs of predict and embed: BED intervals of a reference FASTA (0-based, end exclusive), strands and
chromosome aliases, each checked against the same command run on the sequences written out by hand."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from _inference_helpers import saved_models_fixture, tiny_hyena_fixture, tiny_transformer_fixture  # noqa: F401

from dnalm.cli import main, run
from dnalm.errors import InputError
from dnalm.inference.io import is_bed, read_inputs

rng = np.random.default_rng(8)
GENOME = {"BK006935.2": "".join(rng.choice(list("ACGT"), 120)), "BK006936.2": "".join(rng.choice(list("ACGT"), 80))}
COMPLEMENT = str.maketrans("ACGT", "TGCA")


def _rc(seq: str) -> str:
    return seq.translate(COMPLEMENT)[::-1]


@pytest.fixture
def genome(tmp_path):
    path = tmp_path / "genome.fa"
    path.write_text(f">BK006935.2 TPA_inf: Saccharomyces cerevisiae S288C chromosome I, complete sequence\n"
                    f"{GENOME['BK006935.2'][:60].lower()}\n{GENOME['BK006935.2'][60:]}\n"
                    f">BK006936.2 TPA_inf: Saccharomyces cerevisiae S288C chromosome II, complete sequence\n"
                    f"{GENOME['BK006936.2']}\n")
    return path


BED = "track name=test\n#chrom\tstart\tend\nchrI\t0\t30\tpromA\t0\t+\nchrI\t50\t90\t.\t0\t-\nchrII\t10\t40\n"


def test_bed_intervals_strands_and_aliases(tmp_path, genome):
    bed = tmp_path / "regions.txt"  # found by its content, whatever the name
    bed.write_text(BED)
    assert is_bed(bed)
    got = read_inputs(bed, reference=genome)
    assert [s.id for s in got.sequences] == ["promA", "chrI:51-90(-)", "chrII:11-40"]  # 1-based, inclusive
    assert [s.seq for s in got.sequences] == [GENOME["BK006935.2"][:30], _rc(GENOME["BK006935.2"][50:90]),
                                              GENOME["BK006936.2"][10:40]]
    assert got.renamed == {"chrI": "BK006935.2", "chrII": "BK006936.2"} and got.bed
    forward = read_inputs(bed, reference=genome, strand="forward").sequences
    assert forward[1].seq == GENOME["BK006935.2"][50:90] and forward[1].id == "chrI:51-90"
    reverse = read_inputs(bed, reference=genome, strand="reverse").sequences
    assert [s.seq for s in reverse] == [_rc(s.seq) for s in forward]
    fasta_reverse = read_inputs(genome, strand="reverse").sequences
    assert fasta_reverse[0].seq == _rc(GENOME["BK006935.2"])

    bad = tmp_path / "bad.bed"
    for text, needle in (("chrIII\t0\t10\n", "line 1: chromosome 'chrIII' is not in"),
                         ("chrI\t100\t130\n", "line 1: interval chrI:100-130 (BED: 0-based start, end exclusive) is "
                                              "empty or outside 'BK006935.2' (length 120)"),
                         ("chrI\t5\n", "line 1: 2 tab-separated fields"),
                         ("chrI\tten\t20\n", "must be integers")):
        bad.write_text(text)
        with pytest.raises(InputError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            read_inputs(bad, reference=genome)


def test_predict_and_embed_on_bed_intervals_equal_the_same_sequences_as_fasta(tmp_path, genome, model_dirs,
                                                                                capsys):
    """dnalm predict checkpoint=... input=regions.bed reference=genome.fa out=ll.parquet: the numbers of the
    intervals' sequences (reverse-complemented on '-') given as FASTA; the same for embed."""
    bed = tmp_path / "regions.bed"
    bed.write_text(BED)
    model = model_dirs["hyena"]
    assert run(["predict", f"checkpoint={model}", f"input={bed}", f"reference={genome}",
                f"out={tmp_path / 'bed.parquet'}", "device=cpu"]) == 0
    assert "predict: chromosome names matched to" in capsys.readouterr().out
    expected = read_inputs(bed, reference=genome).sequences
    fasta = tmp_path / "same.fa"
    fasta.write_text("".join(f">{s.id}\n{s.seq}\n" for s in expected))
    assert run(["predict", f"checkpoint={model}", f"input={fasta}", f"out={tmp_path / 'fa.parquet'}",
                "device=cpu"]) == 0
    a, b = pq.read_table(tmp_path / "bed.parquet").to_pydict(), pq.read_table(tmp_path / "fa.parquet").to_pydict()
    assert a["id"] == b["id"] == ["promA", "chrI:51-90(-)", "chrII:11-40"]
    np.testing.assert_array_equal(a["log_likelihood"], b["log_likelihood"])
    assert run(["embed", f"checkpoint={model}", f"input={bed}", f"reference={genome}", f"out={tmp_path / 'e'}",
                "device=cpu", "strand=forward"]) == 0
    assert run(["embed", f"checkpoint={model}", f"input={fasta}", f"out={tmp_path / 'f'}", "device=cpu"]) == 0
    e, f = np.load(tmp_path / "e" / "embeddings.npy"), np.load(tmp_path / "f" / "embeddings.npy")
    np.testing.assert_array_equal(e[[0, 2]], f[[0, 2]])  # + strand rows agree; row 1 is on the other strand
    assert not np.allclose(e[1], f[1]) and json.loads((tmp_path / "e" / "embed.json").read_text())["n_sequences"] == 3

    with pytest.raises(SystemExit) as exc:  # today's misleading "no 'sequence' column"
        main(["predict", f"checkpoint={model}", f"input={bed}", f"out={tmp_path / 'x.parquet'}", "device=cpu"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "BED intervals need their genome: set reference=" in err
