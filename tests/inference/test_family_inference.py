"""`dnalm predict`, `embed` and `score-variants` with DNABERT-2 (masked, BPE) and StripedHyena 2 (causal, bytes),
checked against computations made here directly from the models' outputs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _inference_helpers import cli, write_fasta

from conftest import needs_cxx
from dnalm.errors import ConfigError
from dnalm.inference.masked import (
    encode_tokens,
    masked_marginal,
    pseudo_log_likelihoods,
)
from dnalm.models.dnabert2 import Dnabert2Config, Dnabert2Model, Dnabert2Tokenizer, pseudo_log_likelihood
from dnalm.models.io import save_pretrained
from dnalm.models.stripedhyena import ByteTokenizer, StripedHyenaConfig, StripedHyenaLM
from tolerance import float32_tolerance, scale_of

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SEQS = {"s1": "ACGTACGGTTACGATCGNNACGTAGCTAGCTAGGCTTTGACA", "s2": "TTTTGGGGCCCCAAAATGCA", "s3": "GATTACA"}


def _perturbed(model: torch.nn.Module, seed: int, scale: float = 0.2) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model.eval()


@pytest.fixture(scope="module")
def bpe() -> Dnabert2Tokenizer:
    return Dnabert2Tokenizer.load(FIXTURES / "dnabert2_tiny")


def _dnabert2(bpe, dtype=torch.float32) -> Dnabert2Model:
    torch.manual_seed(0)
    config = Dnabert2Config(vocab_size=bpe.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=48, hidden_dropout_prob=0.0)
    return _perturbed(Dnabert2Model(config, dtype=dtype), 1)


def _stripedhyena(dtype=torch.float32) -> StripedHyenaLM:
    torch.manual_seed(0)
    config = StripedHyenaConfig.preset("tiny", pattern="SDH*", hidden_size=32, num_attention_heads=2,
                                       inner_mlp_size=48, hcs_filter_groups=4, hcm_filter_groups=4,
                                       hcm_filter_length=16, max_seqlen=256)
    return _perturbed(StripedHyenaLM(config, dtype=dtype), 2, 0.05)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, bpe) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    save_pretrained(_dnabert2(bpe), root / "dnabert2", tokenizer=bpe)
    save_pretrained(_stripedhyena(), root / "stripedhyena", tokenizer=ByteTokenizer())
    return {"dnabert2": root / "dnabert2", "stripedhyena": root / "stripedhyena"}


@pytest.fixture(scope="module")
def fasta(tmp_path_factory) -> Path:
    return write_fasta(tmp_path_factory.mktemp("in") / "in.fa", SEQS)


# ---------------------------------------------------------------------------------------------
# Pseudo-log-likelihood (DNABERT-2)
# ---------------------------------------------------------------------------------------------


def test_pll_matches_the_family_implementation_in_float64(bpe) -> None:
    """The generic PLL (one masked copy per token through model(ids, mask)) equals DNABERT-2's own
    pseudo_log_likelihood (the head read at the masked position only), batched and padded, to 1e-10."""
    model = _dnabert2(bpe, torch.float64)
    rows = [encode_tokens(bpe, s).ids for s in SEQS.values()]
    got = pseudo_log_likelihoods(model, rows, bpe.alphabet, skip_n=True, batch_size=5)
    for row, lp in zip(rows, got, strict=True):
        ref = pseudo_log_likelihood(model, torch.as_tensor(row)[None], reduce="none")[0].numpy()
        scored = ~np.isnan(lp)
        # the family's PLL also scores [UNK] (N); the generic one leaves it out with skip_n
        unk = row == bpe.alphabet.unk
        np.testing.assert_array_equal(scored, (ref != 0) & ~unk)
        np.testing.assert_allclose(lp[scored], ref[scored], rtol=0, atol=1e-10)
    all_tokens = pseudo_log_likelihoods(model, rows, bpe.alphabet, skip_n=False)
    assert np.isfinite(all_tokens[0][rows[0] == bpe.alphabet.unk]).all()


def test_encode_tokens_records_the_bases_of_each_token(bpe) -> None:
    row = encode_tokens(bpe, SEQS["s1"])
    assert row.n_bases[0] == 0 and row.n_bases[-1] == 0 and row.n_bases.sum() == len(SEQS["s1"])
    for t, start, n in zip(row.ids[1:-1], row.start[1:-1], row.n_bases[1:-1], strict=True):
        text = bpe.decode([int(t)])
        assert SEQS["s1"][start: start + n] == (text if text != "N" else "N")


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_predict_masked_loglik_and_per_token(tmp_path, checkpoints, fasta, bpe, reduce: str) -> None:
    from dnalm.models.io import load_pretrained

    model = load_pretrained(checkpoints["dnabert2"])
    assert cli("predict", f"input={fasta}", f"checkpoint={checkpoints['dnabert2']}", f"out={tmp_path / 'l.parquet'}",
                f"reduce={reduce}") == 0
    assert cli("predict", f"input={fasta}", f"checkpoint={checkpoints['dnabert2']}", f"out={tmp_path / 't.parquet'}",
                "output_type=per_token") == 0
    loglik = pd.read_parquet(tmp_path / "l.parquet").set_index("id")
    tokens = pd.read_parquet(tmp_path / "t.parquet").set_index("id")
    for name, seq in SEQS.items():
        row = encode_tokens(bpe, seq)
        ref = pseudo_log_likelihood(model, torch.as_tensor(row.ids)[None], reduce="none")[0].double().numpy()
        keep = (ref != 0) & (row.ids != bpe.alphabet.unk)
        bases = int(row.n_bases[keep].sum())
        expected = ref[keep].sum() / (bases if reduce == "mean" else 1)
        assert loglik.loc[name, "log_likelihood"] == pytest.approx(expected, rel=1e-6)
        assert loglik.loc[name, "n_scored"] == bases and loglik.loc[name, "n_skipped"] == seq.count("N")
        np.testing.assert_allclose(tokens.loc[name, "log_probs"], ref[keep], rtol=1e-6)
        np.testing.assert_array_equal(tokens.loc[name, "positions"], row.start[keep] + 1)
        np.testing.assert_array_equal(tokens.loc[name, "n_bases"], row.n_bases[keep])


def test_predict_asks_each_objective_only_its_own_quantities(tmp_path, checkpoints, fasta, capsys) -> None:
    from dnalm.cli import main

    cases = [(checkpoints["dnabert2"], "output_type=logits", "needs a causal LM; this is a masked LM (dnabert2)"),
             (checkpoints["dnabert2"], "prepend_bos=true", "needs a causal LM; this is a masked LM (dnabert2)"),
             (checkpoints["dnabert2"], "score=causal", "needs a causal LM; this is a masked LM (dnabert2)"),
             (checkpoints["dnabert2"], "compile=true", "needs a causal LM; this is a masked LM (dnabert2)"),
             (checkpoints["stripedhyena"], "score=pseudo", "needs a masked LM; this is a causal LM (stripedhyena)")]
    for ckpt, option, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(["predict", f"input={fasta}", f"checkpoint={ckpt}", f"out={tmp_path / 'x.parquet'}", option,
                  "device=cpu"])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.count("\n") == 1 and message in err, err
        assert not (tmp_path / "x.parquet").exists()
    with pytest.raises(SystemExit):
        main(["generate", f"checkpoint={checkpoints['dnabert2']}", f"out={tmp_path / 'g.fa'}", "prompts=[ACGT]",
              "device=cpu"])
    assert "generate needs a causal LM" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# StripedHyena 2: BioNeMo's predict_evo2 quantities
# ---------------------------------------------------------------------------------------------


def _direct_log_probs(model, ids: list[int]) -> np.ndarray:
    """log p(x_{t+1} | x_<=t) straight from one forward's logits."""
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0].double()
    return logits[:-1].log_softmax(-1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy()


@pytest.mark.parametrize("prepend_bos", [False, True])
def test_predict_stripedhyena_collapse_and_bos(tmp_path, checkpoints, fasta, prepend_bos: bool) -> None:
    """collapse=sum|mean|per_token with prepend_bos (id 0 first, its own position not scored) against a direct
    computation from the model's logits."""
    from dnalm.models.io import load_pretrained

    model = load_pretrained(checkpoints["stripedhyena"])
    out = {}
    for collapse in ("sum", "mean", "per_token"):
        out[collapse] = tmp_path / f"{collapse}.parquet"
        assert cli("predict", f"input={fasta}", f"checkpoint={checkpoints['stripedhyena']}", f"out={out[collapse]}",
                    f"collapse={collapse}", f"prepend_bos={prepend_bos}") == 0
    tables = {k: pd.read_parquet(v).set_index("id") for k, v in out.items()}
    for name, seq in SEQS.items():
        ids = ([0] if prepend_bos else []) + [ord(c) for c in seq]
        ref = _direct_log_probs(model, ids)
        assert len(ref) == len(seq) - (0 if prepend_bos else 1)  # N is scored: BioNeMo has no N mask
        assert tables["sum"].loc[name, "log_likelihood"] == pytest.approx(ref.sum(), rel=1e-5)
        assert tables["mean"].loc[name, "log_likelihood"] == pytest.approx(ref.mean(), rel=1e-5)
        np.testing.assert_allclose(tables["per_token"].loc[name, "log_probs"], ref, rtol=1e-5, atol=1e-6)


@needs_cxx
def test_predict_stripedhyena_compiled(tmp_path, checkpoints, fasta) -> None:
    """compile=true (each block's modules through torch.compile) scores what the model's own logits give, in
    two chunks of 21 tokens (one batch padded to 42: one shape to compile; the second chunk through the gated
    convolutions' compiled forward with a carried state)."""
    from dnalm.models.io import load_pretrained

    model = load_pretrained(checkpoints["stripedhyena"])
    out = tmp_path / "p.parquet"
    assert cli("predict", f"input={fasta}", f"checkpoint={checkpoints['stripedhyena']}", f"out={out}",
               "collapse=per_token", "chunk_size=21", "compile=true") == 0
    table = pd.read_parquet(out).set_index("id")
    for name, seq in SEQS.items():
        ref = _direct_log_probs(model, [ord(c) for c in seq])
        np.testing.assert_allclose(table.loc[name, "log_probs"], ref, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["mean", "cls", "max", "none"])
def test_embed_dnabert2(tmp_path, checkpoints, fasta, bpe, pool: str) -> None:
    """Masked LM embeddings against each sequence's hidden states run alone: pooled over its tokens ([CLS] and
    [SEP] included) or one row per base (the vector of the token covering it, from the tokenizer's offsets)."""
    from dnalm.models.io import load_pretrained

    model = load_pretrained(checkpoints["dnabert2"])
    out = tmp_path / "emb"
    assert cli("embed", f"input={fasta}", f"checkpoint={checkpoints['dnabert2']}", f"out={out}", f"pool={pool}",
                "batch_size=2") == 0
    table = pd.read_parquet(out / "sequences.parquet")
    assert list(table["length"]) == [len(s) for s in SEQS.values()]
    vectors = None if pool == "none" else np.load(out / "embeddings.npy")
    for i, seq in enumerate(SEQS.values()):
        enc = bpe.hf.encode(seq)  # [CLS] ... [SEP] with character offsets
        with torch.no_grad():
            (h,) = model.hidden_states(torch.tensor([enc.ids]), [-1])
        h = h[0]
        tol = float32_tolerance(2, 2, scale_of([h]))  # batched and padded vs alone: float32 rounding of 2 layers
        if pool == "none":
            got = np.load(out / table["file"][i])
            expected = np.stack([h[j].numpy() for j, (a, b) in enumerate(enc.offsets)
                                 for _ in range(b - a) if enc.ids[j] not in (1, 2)])
            np.testing.assert_allclose(got, expected, rtol=0, atol=tol["atol"])
        else:
            expected = {"mean": h.double().mean(0).float(), "cls": h[0], "max": h.max(0).values}[pool]
            np.testing.assert_allclose(vectors[i], expected.numpy(), rtol=0, atol=tol["atol"])


def test_embed_stripedhyena_matches_its_hidden_states(tmp_path, checkpoints, fasta) -> None:
    from dnalm.models.io import load_pretrained

    model = load_pretrained(checkpoints["stripedhyena"])
    out = tmp_path / "emb"
    assert cli("embed", f"input={fasta}", f"checkpoint={checkpoints['stripedhyena']}", f"out={out}", "pool=mean",
                "layer=2") == 0
    vectors = np.load(out / "embeddings.npy")
    for i, seq in enumerate(SEQS.values()):
        with torch.no_grad():
            (h,) = model.hidden_states(torch.tensor([[ord(c) for c in seq]]), [2])
        np.testing.assert_allclose(vectors[i], h[0].double().mean(0).numpy(), rtol=1e-5, atol=1e-6)


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


def _variants(tmp_path: Path, seq: str, rows: list[tuple[int, str, str]]) -> Path:
    path = tmp_path / "v.tsv"
    path.write_text("chrom\tpos\tref\talt\n" + "".join(f"chr1\t{p}\t{r}\t{a}\n" for p, r, a in rows))
    return path


def _snvs(seq: str) -> list[tuple[int, str, str]]:
    return [(p, seq[p - 1], "A" if seq[p - 1] != "A" else "G") for p in (30, 77, 120, 181)]


def test_score_variants_dnabert2_masked_marginal(tmp_path, checkpoints, genome, bpe) -> None:
    """SNVs: the reference window's token covering the variant is masked (found here from the tokenizer's
    character offsets); ref/alt scores are log p of the reference token and of the alternative token(s) at the
    mask(s), computed here with an explicit forward."""
    from dnalm.models.io import load_pretrained

    fa, seq = genome
    window = 64
    snvs = _snvs(seq)
    tsv = _variants(tmp_path, seq, snvs)
    out = tmp_path / "scores.tsv"
    assert cli("score-variants", f"variants={tsv}", f"reference={fa}", f"checkpoint={checkpoints['dnabert2']}",
                f"out={out}", f"window={window}") == 0
    got = pd.read_csv(out, sep="\t")
    model = load_pretrained(checkpoints["dnabert2"])
    for k, (pos, _ref, alt) in enumerate(snvs):
        start = got["window_start"][k] - 1
        w = seq[start: start + window]
        off = pos - 1 - start
        enc = bpe.hf.encode(w)
        j = next(j for j, (a, b) in enumerate(enc.offsets) if a <= off < b and enc.ids[j] not in (1, 2))
        a, b = enc.offsets[j]
        alt_tokens = bpe.hf.encode(w[a:off] + alt + w[off + 1: b], add_special_tokens=False).ids

        def score(tokens: list[int], enc=enc, j=j) -> float:
            ids = enc.ids[:j] + [bpe.alphabet.mask] * len(tokens) + enc.ids[j + 1:]
            with torch.no_grad():
                lp = model(torch.tensor([ids]))[0].double().log_softmax(-1)
            return sum(float(lp[j + i, t]) for i, t in enumerate(tokens))

        assert got["ref_score"][k] == pytest.approx(score([enc.ids[j]]), rel=1e-5)
        assert got["alt_score"][k] == pytest.approx(score(alt_tokens), rel=1e-5)
        assert got["delta"][k] == pytest.approx(got["alt_score"][k] - got["ref_score"][k], rel=1e-9, abs=1e-9)


def test_masked_marginal_indels_and_reverse_strand(bpe) -> None:
    """An SNV whose tokens keep their count reads both alleles off one masked input; an insertion and a deletion
    score each allele with its own number of masks; the reverse strand of a window mirrors the variant."""
    model = _dnabert2(bpe, torch.float64)
    rng = np.random.default_rng(9)
    w = "".join(rng.choice(list("ACGT"), 60))
    ref_s, alt_s = masked_marginal(model, bpe, w, 30, w[30], w[30])
    assert ref_s == alt_s  # same allele, same tokens: delta 0
    ins = masked_marginal(model, bpe, w, 30, w[30], w[30] + "GGTTA")
    dele = masked_marginal(model, bpe, w, 30, w[30:34], w[30])
    assert all(math.isfinite(x) for x in (*ins, *dele))
    assert ins[0] == pytest.approx(ref_s, abs=1e-12)  # the reference side of an insertion is that base's token
    from dnalm.tokenizers import reverse_complement

    rc = masked_marginal(model, bpe, reverse_complement(w), len(w) - 30 - 1, reverse_complement(w[30]),
                         reverse_complement(w[30]))
    assert rc[0] == rc[1]


def test_score_variants_stripedhyena_delta(tmp_path, checkpoints, genome) -> None:
    """A causal family keeps the window protocol: Δ = mean log-likelihood of the alt window - the ref window's,
    from the logits of one forward each."""
    from dnalm.models.io import load_pretrained

    fa, seq = genome
    snvs = _snvs(seq)
    tsv = _variants(tmp_path, seq, snvs)
    out = tmp_path / "scores.tsv"
    assert cli("score-variants", f"variants={tsv}", f"reference={fa}",
                f"checkpoint={checkpoints['stripedhyena']}", f"out={out}", "window=50") == 0
    got = pd.read_csv(out, sep="\t")
    model = load_pretrained(checkpoints["stripedhyena"])
    for k, (pos, _ref, alt) in enumerate(snvs):
        start = got["window_start"][k] - 1
        w = seq[start: start + 50]
        w_alt = w[: pos - 1 - start] + alt + w[pos - start:]
        ref_ll = _direct_log_probs(model, [ord(c) for c in w]).mean()
        alt_ll = _direct_log_probs(model, [ord(c) for c in w_alt]).mean()
        assert got["delta"][k] == pytest.approx(alt_ll - ref_ll, abs=1e-5)


def test_objective_errors_are_config_errors(checkpoints) -> None:
    from dnalm.inference.masked import check_objective
    from dnalm.models.io import load_pretrained

    with pytest.raises(ConfigError, match="needs a masked LM"):
        check_objective(load_pretrained(checkpoints["stripedhyena"]), "masked", "x")


def test_python_api_with_both_families(checkpoints, bpe) -> None:
    """dnalm.load: a masked model scores by pseudo-log-likelihood (per base with reduce='mean') and embeds over its
    tokens; causal-only methods are one-line errors. A byte-level causal model scores as predict does."""
    from dnalm.inference.api import load

    m = load(checkpoints["dnabert2"], device="cpu")
    seq = SEQS["s2"]
    row = encode_tokens(bpe, seq)
    ref = pseudo_log_likelihood(m.model, torch.as_tensor(row.ids)[None], reduce="none")[0].double().numpy()
    assert m.score(seq, reduce="sum") == pytest.approx(ref.sum(), rel=1e-6)
    assert m.score([seq], reduce="mean")[0] == pytest.approx(ref.sum() / len(seq), rel=1e-6)
    with torch.no_grad():
        (h,) = m.model.hidden_states(torch.as_tensor(row.ids)[None], [-1])
    np.testing.assert_allclose(m.embed(seq, pool="cls"), h[0, 0].numpy(), rtol=0, atol=1e-6)
    assert m.embed(seq, pool="none").shape == (len(seq), h.shape[-1])
    for call in (lambda: m.log_probs(seq), lambda: m.generate("ACGT"), lambda: m.logits(seq)):
        with pytest.raises(ConfigError, match="needs a causal LM; this is a masked LM"):
            call()
    sh = load(checkpoints["stripedhyena"], device="cpu")
    ref = _direct_log_probs(sh.model, [0] + [ord(c) for c in seq])
    assert sh.score(seq, reduce="sum", prepend_bos=True) == pytest.approx(ref.sum(), rel=1e-5)
