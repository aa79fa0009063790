"""`dnalm predict`, `embed` and `score-variants` with Caduceus (masked, dnalm's character ids, reverse-complement
equivariant with RCPS), checked against computations made here from the model's outputs, one sequence and one
masked copy at a time, and against what RC-equivariance says: with RCPS, ``logits(rc x)[t, v] = logits(x)[L-1-t,
comp(v)]`` and every hidden state of ``rc x`` at t is that of x at ``L-1-t`` with its channels reversed (the two
streams swap)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _inference_helpers import cli, write_fasta

from dnalm.inference.masked import embed_masked, encode_tokens, masked_marginal, pseudo_log_likelihoods
from dnalm.models.io import load_pretrained, save_pretrained
from dnalm.models.mamba import CaduceusConfig, CaduceusLM
from dnalm.tokenizers import CharTokenizer, reverse_complement
from tolerance import FLOAT64_ATOL, float32_tolerance, scale_of

SEQS = {"s1": "ACGTACGGTTACGATCGNNACGTAGCTAGCTAGGCTTTGACA", "s2": "TTTTGGGGCCCCAAAATGCA", "s3": "GATTACA"}
#: no [SEP] after the bases: the reverse complement of a row is then the row of the reverse complement
BARE = CharTokenizer(add_eos=False)


def _caduceus(dtype=torch.float32, **fields) -> CaduceusLM:
    torch.manual_seed(0)
    config = CaduceusConfig(**{"d_model": 16, "n_layer": 2, "d_state": 4, "rcps": True, **fields})
    model = CaduceusLM(config, dtype=dtype)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model.eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """``sep``: the character tokenizer as trained (``[SEP]`` appended); ``bare``: no specials."""
    root = tmp_path_factory.mktemp("caduceus")
    model = _caduceus()
    save_pretrained(model, root / "sep", tokenizer=CharTokenizer())
    save_pretrained(model, root / "bare", tokenizer=BARE)
    return {"sep": root / "sep", "bare": root / "bare"}


@pytest.fixture(scope="module")
def fasta(tmp_path_factory) -> Path:
    return write_fasta(tmp_path_factory.mktemp("in") / "in.fa", SEQS)


def _direct_pll(model: CaduceusLM, ids: np.ndarray, positions) -> np.ndarray:
    """log p(x_t | x without t) for each t in ``positions``: the row with [MASK] at t, alone, one forward each."""
    out = []
    for t in positions:
        masked = torch.as_tensor(ids).clone()[None]
        masked[0, t] = BARE.alphabet.mask
        with torch.no_grad():
            lp = model(masked)[0, t].double().log_softmax(-1)
        out.append(float(lp[int(ids[t])]))
    return np.array(out)


# ---------------------------------------------------------------------------------------------
# Pseudo-log-likelihood
# ---------------------------------------------------------------------------------------------


def test_pll_batched_equals_one_copy_at_a_time_in_float64() -> None:
    """The generic PLL (masked copies batched and padded, padding run apart from the real tokens) equals each copy
    run alone, and DNABERT-2's encode+head PLL applied to Caduceus, to 1e-10; N and [SEP] are not scored."""
    from dnalm.models.dnabert2 import pseudo_log_likelihood

    model = _caduceus(torch.float64)
    tok = CharTokenizer()
    rows = [encode_tokens(tok, s).ids for s in SEQS.values()]
    got = pseudo_log_likelihoods(model, rows, tok.alphabet, skip_n=True, batch_size=7)
    for seq, row, lp in zip(SEQS.values(), rows, got, strict=True):
        scored = np.flatnonzero(~np.isnan(lp))
        assert list(scored) == [i for i, c in enumerate(seq) if c != "N"]  # the [SEP] at the end never
        np.testing.assert_allclose(lp[scored], _direct_pll(model, row, scored), rtol=0, atol=FLOAT64_ATOL)
        ref = pseudo_log_likelihood(model, torch.as_tensor(row)[None], alphabet=tok.alphabet, reduce="none")[0]
        np.testing.assert_allclose(lp[scored], ref.numpy()[scored], rtol=0, atol=FLOAT64_ATOL)


@pytest.mark.parametrize("fused", [False, True])
def test_pll_of_the_reverse_complement_is_the_reversed_pll(fused: bool) -> None:
    """RCPS: masking base t of x is masking base L-1-t of rc(x), and the head there gives the complement's
    probability: the per-base PLL of rc(x) is that of x reversed, exactly (float64, 1e-10)."""
    model = _caduceus(torch.float64, fused_add_norm=fused)
    seq = SEQS["s1"].replace("N", "")
    fwd, rev = pseudo_log_likelihoods(model, [BARE.encode(seq), BARE.encode(reverse_complement(seq))], BARE.alphabet)
    assert np.isfinite(fwd).all() and len(fwd) == len(seq)
    np.testing.assert_allclose(rev, fwd[::-1], rtol=0, atol=FLOAT64_ATOL)
    plain = _caduceus(torch.float64, rcps=False)  # without RCPS the property fails
    a, b = pseudo_log_likelihoods(plain, [BARE.encode(seq), BARE.encode(reverse_complement(seq))], BARE.alphabet)
    assert np.abs(b - a[::-1]).max() > 1e-3


def test_predict_caduceus(tmp_path, checkpoints, fasta) -> None:
    """`dnalm predict` on the checkpoint trained with [SEP]: the summed log_likelihood and the per-token
    log-probabilities against the direct one-copy-at-a-time computation (float32)."""
    model = load_pretrained(checkpoints["sep"])
    ckpt = checkpoints["sep"]
    assert cli("predict", f"input={fasta}", f"checkpoint={ckpt}", f"out={tmp_path / 'l.parquet'}",
                "reduce=sum") == 0
    assert cli("predict", f"input={fasta}", f"checkpoint={ckpt}", f"out={tmp_path / 't.parquet'}",
                "output_type=per_token") == 0
    loglik = pd.read_parquet(tmp_path / "l.parquet").set_index("id")
    tokens = pd.read_parquet(tmp_path / "t.parquet").set_index("id")
    tok = CharTokenizer()
    for name, seq in SEQS.items():
        keep = [i for i, c in enumerate(seq) if c != "N"]
        ref = _direct_pll(model, np.asarray(tok.encode(seq)), keep)
        assert loglik.loc[name, "log_likelihood"] == pytest.approx(ref.sum(), rel=1e-5)
        assert loglik.loc[name, "n_scored"] == len(keep) and loglik.loc[name, "n_skipped"] == seq.count("N")
        np.testing.assert_allclose(tokens.loc[name, "log_probs"], ref, rtol=1e-5)
        np.testing.assert_array_equal(tokens.loc[name, "positions"], np.array(keep) + 1)


# ---------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["mean", "none"])
def test_embed_caduceus_matches_its_hidden_states(tmp_path, checkpoints, fasta, pool: str) -> None:
    """Each sequence's hidden states run alone ([SEP] included in the mean, one row per base for none); the width
    is 2 d_model (the two RCPS streams)."""
    model = load_pretrained(checkpoints["sep"])
    out = tmp_path / "emb"
    assert cli("embed", f"input={fasta}", f"checkpoint={checkpoints['sep']}", f"out={out}", f"pool={pool}",
                "batch_size=2") == 0
    table = pd.read_parquet(out / "sequences.parquet")
    vectors = None if pool == "none" else np.load(out / "embeddings.npy")
    for i, seq in enumerate(SEQS.values()):
        with torch.no_grad():
            (h,) = model.hidden_states(torch.as_tensor(CharTokenizer().encode(seq))[None], [-1])
        h = h[0]
        assert h.shape == (len(seq) + 1, 32)
        tol = float32_tolerance(2, 2, scale_of([h]))
        if pool == "none":
            np.testing.assert_allclose(np.load(out / table["file"][i]), h[:-1].numpy(), rtol=0, atol=tol["atol"])
        else:
            np.testing.assert_allclose(vectors[i], h.double().mean(0).float().numpy(), rtol=0, atol=tol["atol"])


@pytest.mark.parametrize("fused", [False, True])
def test_embeddings_of_the_reverse_complement(fused: bool) -> None:
    """RC-equivariance of the embeddings (float64, every layer): per base, the vector of rc(x) at t is x's at
    L-1-t with its channels reversed; mean-pooled, the channels reversed."""
    model = _caduceus(torch.float64, fused_add_norm=fused)
    seq = SEQS["s1"]
    rows = [encode_tokens(BARE, s) for s in (seq, reverse_complement(seq))]
    for layer in range(model.n_layer + 2):
        blocks: dict[int, np.ndarray] = {}

        def keep(i: int, _start: int, block: np.ndarray, into: dict = blocks) -> None:
            into[i] = block

        embed_masked(model, rows, layer, "none", BARE.pad_id, write=keep)
        assert blocks[0].shape == (len(seq), 32)
        # embed_masked hands float32 blocks: compare at float32 rounding of values of that scale
        np.testing.assert_allclose(blocks[1], blocks[0][::-1, ::-1], rtol=0, atol=4 * np.finfo(np.float32).eps *
                                   np.abs(blocks[0]).max())
    with torch.no_grad():
        ids = torch.as_tensor(rows[0].ids)[None]
        hs = model.hidden_states(ids, None)
        hs_rc = model.hidden_states(model.reverse_complement(ids), None)
    for a, b in zip(hs, hs_rc, strict=True):
        torch.testing.assert_close(b, a.flip(1, 2), rtol=0, atol=FLOAT64_ATOL)
    mean = embed_masked(model, rows, -1, "mean", BARE.pad_id)
    np.testing.assert_allclose(mean[1], mean[0][::-1], rtol=0, atol=4 * np.finfo(np.float32).eps *
                               np.abs(mean[0]).max())


# ---------------------------------------------------------------------------------------------
# Variant effects
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def genome(tmp_path_factory) -> tuple[Path, str]:
    rng = np.random.default_rng(5)
    seq = "".join(rng.choice(list("ACGT"), 200))
    path = tmp_path_factory.mktemp("genome") / "g.fa"
    path.write_text(f">chr1\n{seq}\n")
    return path, seq


def _variants(tmp_path: Path, seq: str) -> tuple[Path, list[tuple[int, str, str]]]:
    snvs = [(p, seq[p - 1], "A" if seq[p - 1] != "A" else "G") for p in (30, 77, 120, 181)]
    path = tmp_path / "v.tsv"
    path.write_text("chrom\tpos\tref\talt\n" + "".join(f"chr1\t{p}\t{r}\t{a}\n" for p, r, a in snvs))
    return path, snvs


def test_score_variants_caduceus_masked_marginal(tmp_path, checkpoints, genome) -> None:
    """SNVs: the variant base masked in its reference window; ref/alt scores are log p of the two bases there,
    from one explicit forward of the masked window ([SEP] appended as the checkpoint's tokenizer does)."""
    fa, seq = genome
    tsv, snvs = _variants(tmp_path, seq)
    out = tmp_path / "scores.tsv"
    assert cli("score-variants", f"variants={tsv}", f"reference={fa}", f"checkpoint={checkpoints['sep']}",
                f"out={out}", "window=40") == 0
    got = pd.read_csv(out, sep="\t")
    model = load_pretrained(checkpoints["sep"])
    tok = CharTokenizer()
    for k, (pos, ref, alt) in enumerate(snvs):
        start = got["window_start"][k] - 1
        w = seq[start: start + 40]
        off = pos - 1 - start
        ids = tok.encode(w)
        ids[off] = tok.alphabet.mask
        with torch.no_grad():
            lp = model(torch.as_tensor(ids)[None])[0, off].double().log_softmax(-1)
        assert got["ref_score"][k] == pytest.approx(float(lp[tok.alphabet.base_id(ref)]), rel=1e-5)
        assert got["alt_score"][k] == pytest.approx(float(lp[tok.alphabet.base_id(alt)]), rel=1e-5)


def test_score_variants_both_strands_agree_under_rcps(tmp_path, checkpoints, genome) -> None:
    """reverse_complement=true scores the reverse strand too; with RCPS and a tokenizer adding no specials both
    strands give the same Δ (to float32 rounding)."""
    fa, seq = genome
    tsv, _ = _variants(tmp_path, seq)
    out = tmp_path / "scores.tsv"
    assert cli("score-variants", f"variants={tsv}", f"reference={fa}", f"checkpoint={checkpoints['bare']}",
                f"out={out}", "window=40", "reverse_complement=true") == 0
    got = pd.read_csv(out, sep="\t")
    assert (got["delta_forward"].abs() > 1e-3).any()
    np.testing.assert_allclose(got["delta_reverse"], got["delta_forward"], rtol=0, atol=1e-5)


def test_masked_marginal_strands_in_float64() -> None:
    model = _caduceus(torch.float64, fused_add_norm=True)
    rng = np.random.default_rng(9)
    w = "".join(rng.choice(list("ACGT"), 50))
    for off in (0, 17, 49):
        alt = "C" if w[off] != "C" else "T"
        fwd = masked_marginal(model, BARE, w, off, w[off], alt)
        rev = masked_marginal(model, BARE, reverse_complement(w), len(w) - 1 - off, reverse_complement(w[off]),
                              reverse_complement(alt))
        np.testing.assert_allclose(rev, fwd, rtol=0, atol=FLOAT64_ATOL)


def test_python_api_with_caduceus(checkpoints) -> None:
    """dnalm.load: score by pseudo-log-likelihood (mean per base), embed at the RCPS width; causal-only methods are
    one-line errors."""
    from dnalm.errors import ConfigError
    from dnalm.inference.api import load

    m = load(checkpoints["sep"], device="cpu")
    seq = SEQS["s2"]
    ref = _direct_pll(m.model, np.asarray(CharTokenizer().encode(seq)), range(len(seq)))
    assert m.score(seq, reduce="mean") == pytest.approx(ref.mean(), rel=1e-5)
    assert m.embed(seq, pool="mean").shape == (32,) and m.embed([seq, seq], pool="mean").shape == (2, 32)
    with pytest.raises(ConfigError, match="needs a causal LM; this is a masked LM"):
        m.generate("ACGT")


# ---------------------------------------------------------------------------------------------
# Rows longer than a window
# ---------------------------------------------------------------------------------------------


def test_window_row_tiles_the_row() -> None:
    """For every row length, window and specials layout: one pass when the row fits; else windows of exactly
    ``window`` tokens, each a copy of the row's tokens at ``position - shift`` with the row's end specials,
    answering in order for ranges that tile the row, every answered content token with an eighth of the content
    width of context on both sides (fewer only at the row's ends)."""
    from dnalm.inference.masked import window_row

    CLS, SEP = 90, 91
    for head, tail in ((0, 0), (1, 0), (0, 1), (1, 1)):
        for n in (1, 5, 17, 40, 41, 100, 257):
            ids = np.array([CLS] * head + list(range(n)) + [SEP] * tail)
            for window in (4 + head + tail, 9, 16, 33, 64, 1000):
                if window < 4 + head + tail:
                    continue
                windows = window_row(ids, window, {CLS, SEP}, row=3)
                if len(ids) <= window:
                    assert len(windows) == 1 and windows[0].lo == 0 and windows[0].hi == len(ids)
                    continue
                margin = (window - head - tail) // 8
                assert windows[0].lo == 0 and windows[-1].hi == len(ids) and all(w.row == 3 for w in windows)
                for a, b in zip(windows, windows[1:]):
                    assert a.hi == b.lo
                for w in windows:
                    assert len(w.ids) == window and w.lo < w.hi
                    assert list(w.ids[:head]) == [CLS] * head and list(w.ids[len(w.ids) - tail:]) == [SEP] * tail
                    for p in range(w.lo, w.hi):
                        assert w.ids[p - w.shift] == ids[p]
                        if head <= p < head + n:  # a content token: context within its window
                            before, after = p - w.shift - head, window - tail - 1 - (p - w.shift)
                            assert before >= min(margin, p - head) and after >= min(margin, head + n - 1 - p)


def _window_case(dtype=torch.float64):
    tok = CharTokenizer()  # [SEP] after the bases
    rng = np.random.default_rng(5)
    seqs = ["".join(rng.choice(list("ACGT"), size=k)) for k in (7, 90, 203)]
    return _caduceus(dtype), tok, [encode_tokens(tok, s) for s in seqs]


def test_windowed_embeddings_are_the_window_passes_stitched_in_float64() -> None:
    """A row longer than the window: every token's vector is that of one plain forward of the window answering
    for it (float64, 1e-10); pooled mean / max / cls are those of the stitched tokens; a row within the window,
    and every row with no window, is read in one pass as before."""
    from dnalm.inference.masked import window_row

    model, tok, rows = _window_case()
    window, layer = 32, -1
    D = model.config.d_model * 2  # RCPS: both streams
    per_base = {}

    def write(i: int, start: int, block: np.ndarray) -> None:
        per_base.setdefault(i, np.full((int(rows[i].n_bases.sum()), D), np.nan))[start: start + len(block)] = block

    embed_masked(model, rows, layer, "none", write=write, window=window, batch_size=3)
    pooled = {p: embed_masked(model, rows, layer, p, window=window, batch_size=3) for p in ("mean", "max", "cls")}
    one_pass = embed_masked(model, rows, layer, "mean")
    for i, r in enumerate(rows):
        stitched = np.full((len(r.ids), D), np.nan)
        for w in window_row(r.ids, window, {tok.alphabet.eos}):
            with torch.no_grad():
                (h,) = model.hidden_states(torch.as_tensor(w.ids)[None], [layer])
            stitched[w.lo: w.hi] = h[0, w.lo - w.shift: w.hi - w.shift].numpy()
        assert not np.isnan(stitched).any()
        rounding = 4 * np.finfo(np.float32).eps * np.abs(stitched).max()  # per-base vectors are stored as float32
        np.testing.assert_allclose(per_base[i], np.repeat(stitched, r.n_bases, axis=0), rtol=0, atol=rounding)
        np.testing.assert_allclose(pooled["mean"][i], stitched.mean(0), rtol=0, atol=1e-6)  # stored as float32
        np.testing.assert_allclose(pooled["max"][i], stitched.max(0), rtol=0, atol=1e-6)
        np.testing.assert_allclose(pooled["cls"][i], stitched[0], rtol=0, atol=1e-6)
        with torch.no_grad():
            (whole,) = model.hidden_states(torch.as_tensor(r.ids)[None], [layer])
        np.testing.assert_allclose(one_pass[i], whole[0].numpy().mean(0), rtol=0, atol=1e-6)
        if len(r.ids) <= window:
            np.testing.assert_allclose(stitched, whole[0].numpy(), rtol=0, atol=FLOAT64_ATOL)
        else:  # the windows did change what the far tokens see
            assert np.abs(stitched - whole[0].numpy()).max() > 1e-6


def test_windowed_pll_masks_each_token_in_its_window_in_float64() -> None:
    """The pseudo-log-likelihood of a row longer than the window: each token masked in the window answering for
    it, one forward per copy (float64, 1e-10); the [SEP] is never scored."""
    from dnalm.inference.masked import window_row

    model, tok, rows = _window_case()
    window = 29
    got = pseudo_log_likelihoods(model, [r.ids for r in rows], tok.alphabet, window=window, batch_size=16)
    for r, lp in zip(rows, got, strict=True):
        expected = np.full(len(r.ids), np.nan)
        for w in window_row(r.ids, window, {tok.alphabet.eos}):
            for p in range(w.lo, w.hi):
                if r.n_bases[p]:
                    copy = torch.as_tensor(w.ids).clone()[None]
                    copy[0, p - w.shift] = tok.alphabet.mask
                    with torch.no_grad():
                        expected[p] = float(model(copy)[0, p - w.shift].double().log_softmax(-1)[int(r.ids[p])])
        np.testing.assert_allclose(lp, expected, rtol=0, atol=FLOAT64_ATOL)  # NaN where not scored, in both


def test_window_reaches_predict_embed_and_the_api(tmp_path, checkpoints) -> None:
    """``chunk_size`` is a masked LM's window in `dnalm embed`, `dnalm predict` and ``dnalm.load``: their outputs
    are the library's with that window, and differ from one pass."""
    import dnalm

    seq = "".join(np.random.default_rng(8).choice(list("ACGT"), size=150))
    fasta = tmp_path / "long.fa"
    fasta.write_text(f">long\n{seq}\n")
    ckpt = checkpoints["sep"]
    model, tok = load_pretrained(ckpt), CharTokenizer()
    row = encode_tokens(tok, seq)
    blocks = {}
    embed_masked(model, [row], -1, "none", write=lambda i, s, b: blocks.setdefault(s, b), window=40)
    expected = np.concatenate([blocks[s] for s in sorted(blocks)])
    assert len(blocks) > 1
    assert cli("embed", f"input={fasta}", f"checkpoint={ckpt}", f"out={tmp_path / 'e'}", "pool=none",
                "chunk_size=40") == 0
    got = np.load(next((tmp_path / "e").glob("*.npy")))
    same = {"rtol": 0, "atol": 4 * np.finfo(np.float32).eps * np.abs(expected).max()}  # the same float32 passes
    np.testing.assert_allclose(got, expected, **same)
    api = dnalm.load(ckpt, device="cpu", chunk_size=40)
    np.testing.assert_allclose(api.embed(seq, pool="none"), expected, **same)
    np.testing.assert_allclose(api.embed(seq), embed_masked(model, [row], -1, "mean", window=40)[0], **same)
    assert not np.allclose(dnalm.load(ckpt, device="cpu").embed(seq, pool="none"), expected, atol=1e-6)

    pll = pseudo_log_likelihoods(model, [row.ids], tok.alphabet, window=40)[0]
    assert cli("predict", f"input={fasta}", f"checkpoint={ckpt}", f"out={tmp_path / 'p.parquet'}",
                "output_type=loglik", "reduce=sum", "chunk_size=40") == 0
    table = pd.read_parquet(tmp_path / "p.parquet")
    assert table["log_likelihood"][0] == pytest.approx(np.nansum(pll), abs=1e-4)
    assert api.score(seq, reduce="sum") == pytest.approx(np.nansum(pll), abs=1e-4)
