"""score-variants against two explicit predict calls on windows built by hand, reverse-complement
averaging, REF checks and malformed VCF/TSV lines."""

from __future__ import annotations

import csv
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
from _inference_helpers import saved_models_fixture, tiny_hyena_fixture, tiny_transformer_fixture  # noqa: F401 (fixtures)

from dnalm.cli import main, run
from dnalm.errors import ConfigError, InputError
from dnalm.genome.fasta import FastaIndex
from dnalm.inference.variants import read_variants, score_variants
from dnalm.tokenizers import CharTokenizer

W = 40
rng = np.random.default_rng(5)
GENOME = {"chr1": "".join(rng.choice(list("ACGT"), 300)), "chr2": "".join(rng.choice(list("ACGT"), 90)),
          "tiny": "ACGTTGCAAC"}
# (record, 1-based pos, REF length, ALT) -- SNVs, insertions, deletions, record ends, a record shorter than W
EDITS = [("chr1", 150, 1, "G"), ("chr1", 151, 1, "T"), ("chr1", 3, 1, "A"), ("chr1", 299, 1, "C"),
         ("chr1", 200, 1, "ACGTA"), ("chr1", 100, 4, "T"), ("chr2", 88, 3, "G"), ("chr2", 45, 1, "TT"),
         ("tiny", 5, 1, "G")]


def _ref(chrom: str, pos: int, n: int) -> str:
    return GENOME[chrom][pos - 1: pos - 1 + n]


def _fix_alt(chrom, pos, n, alt):
    """An ALT that differs from REF (a SNV to the same base would be no variant)."""
    ref = _ref(chrom, pos, n)
    if alt == ref:
        alt = {"A": "C", "C": "G", "G": "T", "T": "A"}[alt]
    return alt


VARIANTS = [(c, p, _ref(c, p, n), _fix_alt(c, p, n, a)) for c, p, n, a in EDITS]


def _windows(chrom: str, pos: int, ref: str, alt: str, window: int) -> tuple[str, str]:
    """Reference window, and the same coordinates of the record with the variant applied."""
    seq = GENOME[chrom]
    w = min(window, len(seq))
    start = min(max(pos - 1 - window // 2, 0), len(seq) - w)
    edited = seq[: pos - 1] + alt + seq[pos - 1 + len(ref):]
    return seq[start: start + w], edited[start: start + w]


def _write_inputs(tmp_path):
    fasta = tmp_path / "ref.fa"
    fasta.write_text("".join(f">{k} test record\n{v}\n" for k, v in GENOME.items()))
    vcf = tmp_path / "v.vcf"
    lines = ["##fileformat=VCFv4.2", "##contig=<ID=chr1>", "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    for i, (c, p, r, a) in enumerate(VARIANTS):
        vid = f"v{i}" if i % 2 == 0 else "."
        alts = a + (",<DEL>" if i == 0 else "")
        lines.append(f"{c}\t{p}\t{vid}\t{r.lower() if i == 1 else r}\t{alts}\t50\tPASS\t.")
    vcf.write_text("\n".join(lines) + "\n")
    return fasta, vcf


def _read_tsv(path):
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_deltas_equal_two_explicit_predict_calls(tmp_path, model_dirs, reduce):
    fasta, vcf = _write_inputs(tmp_path)
    out = tmp_path / "scores.tsv"
    model = model_dirs["hyena"]
    run(["score-variants", f"variants={vcf}", f"reference={fasta}", f"checkpoint={model}", f"out={out}",
         f"window={W}", f"reduce={reduce}", "batch_size=3", "device=cpu"])
    rows = _read_tsv(out)
    assert len(rows) == len(VARIANTS)  # the symbolic <DEL> allele is skipped
    windows = [_windows(c, p, r, a, W) for c, p, r, a in VARIANTS]
    for name, k in (("ref", 0), ("alt", 1)):
        (tmp_path / f"{name}.fa").write_text("".join(f">w{i}\n{w[k]}\n" for i, w in enumerate(windows)))
        run(["predict", f"input={tmp_path / f'{name}.fa'}", f"checkpoint={model}",
             f"out={tmp_path / f'{name}.parquet'}", f"reduce={reduce}", "device=cpu"])
    ref_ll = pq.read_table(tmp_path / "ref.parquet").column("log_likelihood").to_numpy()
    alt_ll = pq.read_table(tmp_path / "alt.parquet").column("log_likelihood").to_numpy()
    for i, (row, (c, p, r, a)) in enumerate(zip(rows, VARIANTS, strict=True)):
        assert (row["chrom"], int(row["pos"]), row["ref"], row["alt"]) == (c, p, r, a)
        assert row["id"] == (f"v{i}" if i % 2 == 0 else f"{c}:{p}:{r}>{a}")
        assert int(row["window_length"]) == len(windows[i][0]) == min(W, len(GENOME[c]))
        assert GENOME[c][int(row["window_start"]) - 1:].startswith(windows[i][0])
        assert float(row["ref_score"]) == pytest.approx(ref_ll[i], abs=1e-4)
        assert float(row["alt_score"]) == pytest.approx(alt_ll[i], abs=1e-4)
        assert float(row["delta"]) == pytest.approx(alt_ll[i] - ref_ll[i], abs=1e-4)
    # windows of one length whatever the indel, unless a deletion reaches the record end (chr2:88)
    assert [len(w[1]) for w in windows] == [W] * 6 + [W - 2, W, len(GENOME["tiny"])]


def test_reverse_complement_average_and_tsv_input(tmp_path, transformer):
    fasta, _ = _write_inputs(tmp_path)
    tsv = tmp_path / "v.tsv"
    tsv.write_text("chrom\tpos\tref\talt\tid\n" + "".join(f"{c}\t{p}\t{r}\t{a}\tx{i}\n"
                                                        for i, (c, p, r, a) in enumerate(VARIANTS)))
    table = read_variants(tsv)
    assert [v.id for v in table.variants] == [f"x{i}" for i in range(len(VARIANTS))] and table.skipped == 0
    tok = CharTokenizer()
    comp = str.maketrans("ACGT", "TGCA")
    with FastaIndex(fasta) as genome:
        scores = score_variants(transformer, tok, table.variants, genome, window=W, reverse_complement_average=True)
    from dnalm.inference.scoring import encode_sequence, score_sequences

    for s, (c, p, r, a) in zip(scores, VARIANTS, strict=True):
        ref_w, alt_w = _windows(c, p, r, a, W)
        seqs = [ref_w, alt_w, ref_w.translate(comp)[::-1], alt_w.translate(comp)[::-1]]
        ll = score_sequences(transformer, [encode_sequence(tok, x) for x in seqs], "mean")  # the default reduce
        assert s.delta_rc == pytest.approx(ll[3] - ll[2], abs=1e-4)
        assert s.delta == pytest.approx(((ll[1] - ll[0]) + (ll[3] - ll[2])) / 2, abs=1e-4)


def test_ref_mismatches_are_listed_in_one_error(tmp_path, model_dirs, capsys):
    fasta, _ = _write_inputs(tmp_path)
    vcf = tmp_path / "bad_ref.vcf"
    lines = ["#CHROM\tPOS\tID\tREF\tALT"]
    for i in range(8):
        pos = 10 + i
        wrong = {"A": "C", "C": "G", "G": "T", "T": "A"}[GENOME["chr1"][pos - 1]]
        lines.append(f"chr1\t{pos}\t.\t{wrong}\tA")
    lines += ["chr1\t20\t.\t" + GENOME["chr1"][19] + "\tN", "chrX\t5\t.\tA\tG", "tiny\t9\t.\tACG\tA"]
    vcf.write_text("\n".join(lines) + "\n")
    out = tmp_path / "o.tsv"
    with pytest.raises(SystemExit) as exc:
        main(["score-variants", f"variants={vcf}", f"reference={fasta}", f"checkpoint={model_dirs['hyena']}",
              f"out={out}", "device=cpu", "mismatch=error"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert "bad_ref.vcf: 10 of 11 variants do not match the reference" in err
    assert "(8 REF differs, 1 unknown chromosome, 1 past the record end)" in err
    assert f"line 2: chr1:10 REF {lines[1].split()[3]}, reference has {GENOME['chr1'][9]}" in err
    assert "(first 5 shown)" in err and "line 7:" not in err
    assert not out.exists()
    with FastaIndex(fasta) as genome:
        from dnalm.inference.variants import check_reference

        table = read_variants(vcf)
        with pytest.raises(InputError) as info:
            check_reference(table.variants[-2:], genome, vcf)
        assert "chromosome 'chrX' is not in the reference" in str(info.value)
        assert "tiny:9 REF ACG runs past the record end (10)" in str(info.value)


@pytest.mark.parametrize("text, needle", [
    ("#CHROM\tPOS\tID\tREF\tALT\nchr1\tx12\t.\tA\tG\n", r"line 2: POS 'x12' is not an integer"),
    ("#CHROM\tPOS\tID\tREF\tALT\nchr1\t0\t.\tA\tG\n", r"line 2: POS 0 must be >= 1"),
    ("##fileformat=VCFv4.2\nchr1\t5\t.\tA\n", r"line 2: 4 tab-separated fields"),
    ("#CHROM\tPOS\tID\tREF\tALT\nchr1\t5\t.\tA\tG\nchr1\t6\t.\tAZ\tG\n", r"line 3: REF allele 'AZ'"),
    ("#CHROM\tPOS\tID\tREF\tALT\nchr1\t5\t.\tA\tG,Q\n", r"line 2: ALT allele 'Q'"),
    ("chrom\tpos\tref\n", r"line 1: header lacks column\(s\) alt"),
    ("chrom\tpos\tref\talt\nchr1\t5\tA\n", r"line 2: 3 fields, the header has 4"),
    ("#CHROM\tPOS\tID\tREF\tALT\nchr1\t5\t.\tA\t<DEL>\n", r"no sequence variants to score \(1 symbolic"),
    ("", r"empty file"),
])
def test_malformed_variant_files_name_file_and_line(tmp_path, model_dirs, capsys, text, needle):
    fasta, _ = _write_inputs(tmp_path)
    bad = tmp_path / "bad.txt"
    bad.write_text(text)
    out = tmp_path / "o.tsv"
    with pytest.raises(SystemExit) as exc:
        main(["score-variants", f"variants={bad}", f"reference={fasta}", f"checkpoint={model_dirs['hyena']}",
              f"out={out}", "device=cpu"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert re.search(r"bad\.txt: " + needle if "line" in needle else needle, err), err
    assert not out.exists()


def test_window_must_hold_the_allele(tmp_path, hyena):
    fasta, _ = _write_inputs(tmp_path)
    tsv = tmp_path / "v.tsv"
    tsv.write_text(f"chrom\tpos\tref\talt\nchr1\t100\t{_ref('chr1', 100, 12)}\tA\n")
    with FastaIndex(fasta) as genome, pytest.raises(ConfigError, match="use a larger window"):
        score_variants(hyena, CharTokenizer(), read_variants(tsv).variants, genome, window=16)


def test_ucsc_names_and_mismatched_records_are_matched_or_skipped_with_a_count(tmp_path, model_dirs, capsys):
    """dnalm score-variants checkpoint=... variants=calls.vcf reference=genome.fa out=delta.tsv with a VCF that
    says chrI where the FASTA says BK006935.2 (its header: chromosome I), a REF that differs and a contig the
    reference lacks: the names are matched, the two bad records skipped and counted, the rest scored as if the
    VCF had used the FASTA's names; window_start is 1-based like pos."""
    seq = GENOME["chr1"]
    fasta = tmp_path / "genome.fa"
    fasta.write_text(f">BK006935.2 Saccharomyces cerevisiae S288C chromosome I, complete sequence\n{seq}\n")
    good = [(150, seq[149], "A" if seq[149] != "A" else "C"), (20, seq[19:22], seq[19])]
    records = [f"chrI\t{p}\t.\t{r}\t{a}" for p, r, a in good]
    wrong = {"A": "C", "C": "G", "G": "T", "T": "A"}[seq[59]]
    bad = [f"chrI\t60\t.\t{wrong}\tA", "chrMito\t5\t.\tA\tG"]
    header = "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
    (tmp_path / "calls.vcf").write_text(header + "\n".join(f"{r}\t.\t.\t." for r in records[:1] + bad + records[1:])
                                        + "\n")
    (tmp_path / "same.vcf").write_text(header + "\n".join(f"{r.replace('chrI', 'BK006935.2')}\t.\t.\t."
                                                          for r in records) + "\n")
    model = model_dirs["hyena"]
    assert run(["score-variants", f"checkpoint={model}", f"variants={tmp_path / 'calls.vcf'}",
                f"reference={fasta}", f"out={tmp_path / 'delta.tsv'}", f"window={W}", "device=cpu"]) == 0
    printed = capsys.readouterr().out
    assert "chromosome names matched to" in printed and "chrI -> BK006935.2" in printed
    assert "2 of 4 variants do not match the reference" in printed
    assert "(1 REF differs, 1 unknown chromosome)" in printed and "line 4: chrI:60 REF" in printed
    assert "2 variants, 2 not matching the reference skipped" in printed
    assert run(["score-variants", f"checkpoint={model}", f"variants={tmp_path / 'same.vcf'}",
                f"reference={fasta}", f"out={tmp_path / 'same.tsv'}", f"window={W}", "device=cpu"]) == 0
    rows, same = _read_tsv(tmp_path / "delta.tsv"), _read_tsv(tmp_path / "same.tsv")
    assert [r["chrom"] for r in rows] == ["chrI", "chrI"] and [int(r["pos"]) for r in rows] == [150, 20]
    assert [r["delta"] for r in rows] == [r["delta"] for r in same]
    start = int(rows[0]["window_start"])  # 1-based: the window's first base is seq[start - 1]
    assert start == 150 - W // 2 and seq[start - 1: start - 1 + W][W // 2] == seq[149]
    (tmp_path / "none.vcf").write_text(header + "\n".join(f"{r}\t.\t.\t." for r in bad) + "\n")
    with pytest.raises(SystemExit) as exc:
        main(["score-variants", f"checkpoint={model}", f"variants={tmp_path / 'none.vcf'}", f"reference={fasta}",
              f"out={tmp_path / 'none.tsv'}", "device=cpu"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "nothing left to score" in err
