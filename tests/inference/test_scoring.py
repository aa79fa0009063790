"""Log-likelihoods and per-token scores against a hand computation from the plain forward; batching;
the predict command's Parquet/NPZ outputs and its one-line errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from _inference_helpers import (  # noqa: F401 (fixtures)
    HYENA_L_MAX,
    saved_models_fixture,
    tiny_hyena_fixture,
    tiny_transformer_fixture,
    truncated_filter_reference,
)

import dnalm
from dnalm.cli import main, run
from dnalm.errors import ConfigError, InputError
from dnalm.inference.scoring import (
    bucket_batches,
    encode_sequence,
    logit_columns,
    reduce_log_probs,
    score_rows,
    score_sequences,
    token_log_probs,
)
from dnalm.tokenizers import A_ID, BOS_ID, N_ID, CharTokenizer

TOL = {"atol": 1e-5, "rtol": 1e-5}
rng = np.random.default_rng(11)


def _random_seqs(n: int, low: int, high: int) -> list[str]:
    return ["".join(rng.choice(list("ACGTN"), size=int(k), p=[0.24, 0.24, 0.24, 0.24, 0.04]))
            for k in rng.integers(low, high, n)]


def _by_hand(model, ids: np.ndarray) -> np.ndarray:
    """log p(x_j | x_<j), j = 1..n-1, from one plain forward of the row alone (L <= context)."""
    with torch.no_grad():
        logits = model(torch.from_numpy(ids.astype(np.int64))[None])[0].double()
    logp = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    return np.array([logp[j - 1, ids[j]].item() for j in range(1, len(ids))])


def test_token_log_probs_equal_hand_computation(hyena):
    tok = CharTokenizer()
    for seq in _random_seqs(5, 2, HYENA_L_MAX):
        ids = encode_sequence(tok, seq)
        lp = token_log_probs(hyena, [ids])[0]
        assert lp.shape == (len(seq) - 1,)
        np.testing.assert_allclose(lp, _by_hand(hyena, ids), **TOL)
        with_bos = encode_sequence(tok, seq, prepend_bos=True)
        assert with_bos[0] == BOS_ID and len(with_bos) == len(seq) + 1 and with_bos.dtype == np.uint8
        np.testing.assert_allclose(token_log_probs(hyena, [with_bos])[0], _by_hand(hyena, with_bos), **TOL)


@pytest.mark.parametrize("family", ["hyena", "transformer"])
def test_batched_equals_one_at_a_time(request, family):
    model = request.getfixturevalue(family)
    tok = CharTokenizer()
    rows = [encode_sequence(tok, s) for s in _random_seqs(12, 1, 3 * HYENA_L_MAX)]
    alone = [score_rows(model, [r], batch_size=1)[0].log_probs for r in rows]
    batched = score_rows(model, rows, batch_size=5, max_tokens=400, chunk_size=37)
    for a, b in zip(alone, batched, strict=True):
        np.testing.assert_allclose(b.log_probs, a, **TOL)
    sums = score_sequences(model, rows, "sum", batch_size=4)
    means = score_sequences(model, rows, "mean", batch_size=4)
    for r, a, s, m in zip(rows, alone, sums, means, strict=True):
        assert s == pytest.approx(float(np.sum(a, dtype=np.float64)), rel=1e-5, abs=1e-5)
        if len(r) > 1:
            assert m == pytest.approx(s / (len(r) - 1), rel=1e-9)
        else:
            assert math.isnan(m)


def test_long_sequence_scores_follow_the_truncated_filter_model(hyena):
    ids = encode_sequence(CharTokenizer(), _random_seqs(1, 500, 501)[0])
    lp = token_log_probs(hyena, [ids], chunk_size=50)[0]
    ref = truncated_filter_reference(hyena, len(ids))
    np.testing.assert_allclose(lp, _by_hand(ref, ids), **TOL)


def test_logits_columns_and_reduce():
    assert bucket_batches([5, 1, 9, 9, 3], batch_size=2, max_tokens=100) == [[2, 3], [0, 4], [1]]
    assert bucket_batches([10, 10, 10], batch_size=8, max_tokens=25) == [[0, 1], [2]]
    assert bucket_batches([100], batch_size=8, max_tokens=25) == [[0]]
    assert reduce_log_probs(np.array([-1.0, -2.0, -4.5]), "sum") == -7.5
    assert reduce_log_probs(np.array([-1.0, -2.0, -4.5]), "mean") == -2.5
    with pytest.raises(ConfigError, match="reduce='max'"):
        reduce_log_probs(np.zeros(2), "max")


def test_logits_rows_predict_the_scored_tokens(hyena):
    ids = encode_sequence(CharTokenizer(), "ACGTTGCANNAC")
    (res,) = score_rows(hyena, [ids], logits_columns=logit_columns(hyena, "all"))
    with torch.no_grad():
        full = hyena(torch.from_numpy(ids.astype(np.int64))[None])[0, :-1]
    np.testing.assert_allclose(res.logits, full.numpy(), **TOL)
    (acgt,) = score_rows(hyena, [ids], logits_columns=logit_columns(hyena, "acgt"))
    np.testing.assert_allclose(acgt.logits, full.numpy()[:, A_ID:A_ID + 4], **TOL)


def test_api_score_log_probs_logits(model_dirs):
    m = dnalm.load(model_dirs["hyena"], device="cpu")
    seqs = ["ACGTACGTTA", "ggcat", "TTTTTTTTTTTTTTTTTTTTTA"]
    ids = [encode_sequence(m.tokenizer, s.upper()) for s in seqs]
    np.testing.assert_allclose(m.score(seqs, reduce="sum"), [np.sum(_by_hand(m.model, i)) for i in ids], **TOL)
    assert m.score(seqs[0]) == pytest.approx(np.mean(_by_hand(m.model, ids[0])), abs=1e-5)  # mean, as in predict
    np.testing.assert_allclose(m.log_probs(seqs[1]), _by_hand(m.model, ids[1]), **TOL)
    assert m.logits(seqs[2]).shape == (len(seqs[2]) - 1, 4)
    with pytest.raises(InputError, match="sequence 0: invalid character 'X' at position 2"):
        m.score(["ACXG"])


def _write_fasta(path, seqs):
    path.write_text("".join(f">s{i} some description\n{s}\n" for i, s in enumerate(seqs)))
    return path


def test_predict_command_outputs(tmp_path, model_dirs, hyena):
    seqs = _random_seqs(6, 2, 150) + ["acgtacgtNNacgt"]
    fasta = _write_fasta(tmp_path / "in.fa", seqs)
    rows = [encode_sequence(CharTokenizer(), s.upper()) for s in seqs]
    model = model_dirs["hyena"]
    run(["predict", f"input={fasta}", f"checkpoint={model}", f"out={tmp_path / 'll.parquet'}", "reduce=mean",
         "batch_size=3", "device=cpu"])
    table = pq.read_table(tmp_path / "ll.parquet")
    assert table.column("id").to_pylist() == [f"s{i}" for i in range(len(seqs))]
    assert table.column("length").to_pylist() == [len(s) for s in seqs]
    np.testing.assert_allclose(table.column("log_likelihood").to_numpy(),  # N targets left out (skip_n)
                               [np.mean(_by_hand(hyena, r)[r[1:] != N_ID]) if len(r) <= HYENA_L_MAX else
                                np.mean(_by_hand(truncated_filter_reference(hyena, len(r)), r)[r[1:] != N_ID])
                                for r in rows], **TOL)
    meta = json.loads(table.schema.metadata[b"dnalm"])
    assert meta["reduce"] == "mean" and meta["first_position"] == 1

    run(["predict", f"input={fasta}", f"checkpoint={model}", f"out={tmp_path / 'pt.parquet'}",
         "output_type=per_token", "prepend_bos=true", "device=cpu"])
    per_token = pq.read_table(tmp_path / "pt.parquet").column("log_probs").to_pylist()
    positions = pq.read_table(tmp_path / "pt.parquet").column("positions").to_pylist()
    bos_rows = [encode_sequence(CharTokenizer(), s.upper(), prepend_bos=True) for s in seqs]
    for got, r, pos, s in zip(per_token, bos_rows, positions, seqs, strict=True):
        if "N" not in s:
            assert len(got) == len(r) - 1 and pos == list(range(1, len(s) + 1))  # with BOS, bases 1..n
        # every row, N bases left out: the scored positions (1-based bases) pick the by-hand values
        np.testing.assert_allclose(got, token_log_probs(hyena, [r])[0][np.asarray(pos, dtype=int) - 1], **TOL)

    run(["predict", f"input={fasta}", f"checkpoint={model}", f"out={tmp_path / 'lg.parquet'}",
         "output_type=logits", "device=cpu"])
    lg = pq.read_table(tmp_path / "lg.parquet")
    with np.load(tmp_path / "lg.npz") as npz:
        for key, r, pos in zip(lg.column("key").to_pylist(), rows, lg.column("positions").to_pylist(), strict=True):
            assert npz[key].shape == (len(r) - 1, 4) and pos == list(range(2, len(r) + 1))  # predicting bases 2..n
        np.testing.assert_allclose(npz["seq0"], score_rows(hyena, [rows[0]], logits_columns=[7, 8, 9, 10])[0].logits,
                                   **TOL)


def test_predict_reads_csv(tmp_path, model_dirs, hyena):
    csv = tmp_path / "in.csv"
    csv.write_text("id,sequence,label\nx,ACGTAC,1\ny,GGGTTTAA,0\n")
    run(["predict", f"input={csv}", f"checkpoint={model_dirs['hyena']}", f"out={tmp_path / 'o.parquet'}",
         "device=cpu"])
    table = pq.read_table(tmp_path / "o.parquet")
    assert table.column("id").to_pylist() == ["x", "y"]
    ids = encode_sequence(CharTokenizer(), "GGGTTTAA")
    # reduce=mean by default (the README's "mean log-likelihood per base"), as in the Python API
    assert table.column("log_likelihood").to_pylist()[1] == pytest.approx(np.mean(_by_hand(hyena, ids)), abs=1e-5)


@pytest.mark.parametrize("content, name, needle", [
    (">a\nACGT\n>b\nAC#T\n", "bad.fa", r"bad.fa: line 4: .*'#'"),
    ("ACGT\n>a\nAC\n", "bad2.fa", r"bad2.fa"),
    ("name,seq\nx,ACGT\ny,ACQT\n", "bad.csv", r"bad.csv: line 3: invalid character 'Q' at position 2"),
    ("name,label\nx,1\n", "nocol.csv", r"nocol.csv: line 1: no 'sequence' column"),
    ("id,sequence\nx,ACGT,3\n", "fields.csv", r"fields.csv: line 2: 3 fields, the header has 2"),
    ("id,sequence\nx,\n", "empty.csv", r"empty.csv: line 2: empty sequence"),
])
def test_predict_bad_inputs_give_one_line_errors_and_no_output(tmp_path, model_dirs, capsys, content, name, needle):
    path = tmp_path / name
    path.write_text(content)
    out = tmp_path / "out" / "o.parquet"
    with pytest.raises(SystemExit) as exc:
        main(["predict", f"input={path}", f"checkpoint={model_dirs['hyena']}", f"out={out}", "device=cpu"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("dnalm: error: ") and err.count("\n") == 1
    import re
    assert re.search(needle, err), err
    assert not out.exists() and not list(tmp_path.glob("out/*"))


def test_predict_bad_options(tmp_path, model_dirs):
    fasta = _write_fasta(tmp_path / "in.fa", ["ACGT"])
    base = [f"input={fasta}", f"checkpoint={model_dirs['hyena']}", f"out={tmp_path / 'o.parquet'}", "device=cpu"]
    with pytest.raises(ConfigError, match="output_type='dense'"):
        run(["predict", *base, "output_type=dense"])
    with pytest.raises(ConfigError, match="tokens='acgtn'"):
        run(["predict", *base, "output_type=logits", "tokens=acgtn"])
    with pytest.raises(ConfigError, match="set input=FILE"):
        run(["predict", f"checkpoint={model_dirs['hyena']}"])
    assert not (tmp_path / "o.parquet").exists()


def test_base_columns_need_a_character_tokenizer(hyena):
    from dnalm.inference.generate import check_acgt_tokenizer
    from dnalm.tokenizers import KmerTokenizer

    kmer = KmerTokenizer(k=3)
    with pytest.raises(ConfigError, match="tokens=acgt needs one token per base"):
        logit_columns(hyena, "acgt", kmer)
    with pytest.raises(ConfigError, match="acgt_only=true needs one token per base"):
        check_acgt_tokenizer(kmer, True)
    check_acgt_tokenizer(kmer, False)
    assert logit_columns(hyena, "all", kmer) == list(range(16))


def test_predict_leaves_n_and_ambiguous_bases_out_and_counts_them(tmp_path, model_dirs, hyena, capsys):
    """dnalm predict checkpoint=... input=seqs.fa out=ll.parquet on sequences with N runs and IUPAC codes: those
    bases (read as N, about -6.5 nats each, weight 0 in training) are not scored by default; the table and the
    summary line count them; skip_n=false scores them (the old total)."""
    seqs = {"gap": "ACGTTGCANNNNNACGGTTA", "iupac": "ACRYGTSWTTGA", "clean": "ACGTTGCAAC"}
    fasta = tmp_path / "seqs.fa"
    fasta.write_text("".join(f">{k}\n{v}\n" for k, v in seqs.items()))
    assert run(["predict", f"checkpoint={model_dirs['hyena']}", f"input={fasta}", f"out={tmp_path / 'll.parquet'}",
                "device=cpu"]) == 0
    assert "9 N or ambiguous bases skipped" in capsys.readouterr().out  # 5 N + R, Y, S, W
    table = pq.read_table(tmp_path / "ll.parquet").to_pydict()
    tok = CharTokenizer()
    rows = [encode_sequence(tok, s) for s in seqs.values()]
    kept = [r[1:] != N_ID for r in rows]
    assert table["n_skipped"] == [5, 4, 0] and table["n_scored"] == [int(k.sum()) for k in kept]
    for got, r, k in zip(table["log_likelihood"], rows, kept, strict=True):
        assert got == pytest.approx(np.mean(_by_hand(hyena, r)[k]), abs=1e-5)
    assert run(["predict", f"checkpoint={model_dirs['hyena']}", f"input={fasta}", f"out={tmp_path / 'all.parquet'}",
                "device=cpu", "skip_n=false", "reduce=sum", "output_type=loglik"]) == 0
    table = pq.read_table(tmp_path / "all.parquet").to_pydict()
    assert table["n_skipped"] == [0, 0, 0]
    assert table["log_likelihood"][0] == pytest.approx(np.sum(_by_hand(hyena, rows[0])), abs=1e-4)
    assert run(["predict", f"checkpoint={model_dirs['hyena']}", f"input={fasta}", f"out={tmp_path / 'pt.parquet'}",
                "device=cpu", "output_type=per_token"]) == 0
    per_token = pq.read_table(tmp_path / "pt.parquet").to_pydict()
    assert per_token["positions"][0] == [2, 3, 4, 5, 6, 7, 8, 14, 15, 16, 17, 18, 19, 20]  # N at 9..13 left out
    np.testing.assert_allclose(per_token["log_probs"][0], _by_hand(hyena, rows[0])[kept[0]], **TOL)
    m = dnalm.load(model_dirs["hyena"], device="cpu")
    assert m.score(seqs["gap"]) == pytest.approx(np.mean(_by_hand(hyena, rows[0])[kept[0]]), abs=1e-5)
