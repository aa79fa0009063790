"""Embeddings: pooled and per-base outputs against numpy pooling of the plain forward, any length
through the chunked path, a 2 Mb chromosome on disk within a memory bound, the embed command."""

from __future__ import annotations

import json
import resource
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from _inference_helpers import (  # noqa: F401 (fixtures)
    HYENA_L_MAX,
    saved_models_fixture,
    tiny_hyena,
    tiny_hyena_fixture,
    tiny_transformer_fixture,
    truncated_filter_reference,
)

import dnalm
from conftest import needs_cxx, shared_file
from dnalm.cli import main, run
from dnalm.errors import ConfigError
from dnalm.inference.embed import (
    NpyStream,
    embed_per_base,
    embed_pooled,
    embed_to_directory,
    per_base_file_names,
    resolve_layer,
)
from dnalm.inference.io import read_sequences
from dnalm.inference.scoring import encode_sequence
from dnalm.tokenizers import CharTokenizer
from tolerance import float32_tolerance


def _tol(model, refs, length: int) -> dict[str, float]:
    """float32 tolerance by the rule of tests/tolerance.py: FFTs of at most ``4 max(length, context)`` points
    (chunk plus history, or the unchunked convolution), depth ``n_layer``, the scale of the hidden states
    ``refs`` the outputs are made from."""
    context = getattr(model.config, "l_max", None) or getattr(model.config, "max_len", 1)
    scale = max(float(np.abs(r).max()) for r in refs)
    return float32_tolerance(4 * max(length, context), model.config.n_layer, scale)
rng = np.random.default_rng(3)


def _rows(n: int, low: int, high: int, bos: bool = False) -> list[np.ndarray]:
    tok = CharTokenizer()
    return [encode_sequence(tok, "".join(rng.choice(list("ACGT"), size=int(k))), bos)
            for k in rng.integers(low, high, n)]


def _plain_hidden(model, ids: np.ndarray, layer: int) -> np.ndarray:
    with torch.no_grad():
        return model.hidden_states(torch.from_numpy(ids.astype(np.int64))[None], [layer])[0][0].numpy()


@pytest.mark.parametrize("family", ["hyena", "transformer"])
@pytest.mark.parametrize("layer", [0, 1, 2, "final"])
def test_pooled_equals_numpy_pooling_of_the_plain_forward(request, family, layer):
    model = request.getfixturevalue(family)
    rows = _rows(7, 1, 45)
    index = resolve_layer(model, layer)
    refs = [_plain_hidden(model, r, index) for r in rows]
    chunk = int(rng.integers(1, 30))
    for pool, fn in [("mean", lambda h: h.mean(0)), ("max", lambda h: h.max(0)), ("last", lambda h: h[-1])]:
        got = embed_pooled(model, rows, layer, pool, batch_size=3, chunk_size=chunk)
        np.testing.assert_allclose(got, np.stack([fn(h) for h in refs]), **_tol(model, refs, 45))


def test_bos_position_is_left_out(hyena):
    rows = _rows(3, 2, 30, bos=True)
    refs = [_plain_hidden(hyena, r, 3)[1:] for r in rows]
    np.testing.assert_allclose(embed_pooled(hyena, rows, -1, "mean", skip=1),
                               np.stack([h.mean(0) for h in refs]), **_tol(hyena, refs, 30))
    got = [np.zeros_like(h) for h in refs]
    embed_per_base(hyena, rows, -1, lambda i, s, b: got[i].__setitem__(slice(s, s + len(b)), b), skip=1,
                   chunk_size=4)
    for g, h in zip(got, refs, strict=True):
        np.testing.assert_allclose(g, h, **_tol(hyena, refs, 30))


def test_per_base_beyond_the_context_follows_the_truncated_filter_model(tmp_path, hyena):
    rows = _rows(3, 3 * HYENA_L_MAX, 5 * HYENA_L_MAX)
    out = embed_to_directory(hyena, rows, ["a", "b", "c"], tmp_path / "emb", layer=2, pool="none", chunk_size=29)
    table = pq.read_table(out / "sequences.parquet").to_pydict()
    assert table["id"] == ["a", "b", "c"] and table["length"] == [len(r) for r in rows]
    info = json.loads((out / "embed.json").read_text())
    assert (info["layer"], info["pool"], info["width"]) == (2, "none", 16)
    for r, name in zip(rows, table["file"], strict=True):
        ref = _plain_hidden(truncated_filter_reference(hyena, len(r)), r, 2)
        np.testing.assert_allclose(np.load(out / name), ref, **_tol(hyena, [ref], len(r)))


def test_per_base_files_are_named_after_their_records():
    names = per_base_file_names(["chrI", "Chr1", "chr1", "a/b c", "..", "chrI"])
    assert names == ["chrI.npy", "Chr1.npy", "chr1-2.npy", "a_b_c.npy", "row4.npy", "chrI-2.npy"]


def test_pooled_directory_and_float16(tmp_path, hyena):
    rows = _rows(4, 5, 40)
    out = embed_to_directory(hyena, rows, list("wxyz"), tmp_path / "p", layer=1, pool="max", dtype="float16")
    vectors = np.load(out / "embeddings.npy")
    assert vectors.dtype == np.float16 and vectors.shape == (4, 16)
    ref = np.stack([_plain_hidden(hyena, r, 1).max(0) for r in rows])
    np.testing.assert_allclose(vectors.astype(np.float32), ref, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("fast_path", ["reference", "fused"])
def test_bf16_precision_stays_close_to_float32(tmp_path, hyena, model_dirs, fast_path):
    model = tiny_hyena()
    for op in model.mixers:
        op.fast_path = fast_path
    rows = _rows(3, 100, 200)
    want = embed_pooled(model, rows, 1, "mean", chunk_size=70)
    got = embed_pooled(model, rows, 1, "mean", chunk_size=70, precision="bf16")
    err = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert 1e-6 < err < 2e-2, err  # bf16 products somewhere, and no more than that
    out = embed_to_directory(model, rows, list("abc"), tmp_path / "b", layer=1, chunk_size=70, precision="bf16")
    assert json.loads((out / "embed.json").read_text())["precision"] == "bf16"
    np.testing.assert_array_equal(np.load(out / "embeddings.npy"), got)
    with pytest.raises(ConfigError, match="precision='fp8'"):
        embed_pooled(model, rows, 1, "mean", precision="fp8")
    fasta = tmp_path / "in.fa"
    fasta.write_text(">one\nACGTAGGA\n")
    run(["embed", f"input={fasta}", f"checkpoint={model_dirs['hyena']}", f"out={tmp_path / 'e'}", "precision=bf16",
         "device=cpu"])
    assert json.loads((tmp_path / "e" / "embed.json").read_text())["precision"] == "bf16"


@needs_cxx
def test_cli_embed_compiled_equals_eager(model_dirs, hyena, tmp_path):
    """``compile=true`` runs the chunks through compiled modules (``compiled_blocks``) and writes what the eager
    run writes, to float32 rounding (the rule of tests/tolerance.py)."""
    fasta = tmp_path / "in.fa"
    fasta.write_text(">one\nACGTAGGACCTTAGGACATTAGACCAGT\n>two\nTTGACA\n")
    for name, extra in (("eager", []), ("compiled", ["compile=true"])):
        run(["embed", f"input={fasta}", f"checkpoint={model_dirs['hyena']}", f"out={tmp_path / name}",
             "chunk_size=8", "device=cpu", *extra])
    eager, got = (np.load(tmp_path / name / "embeddings.npy") for name in ("eager", "compiled"))
    np.testing.assert_allclose(got, eager, **_tol(hyena, [eager], 28))
    assert np.abs(eager[0] - eager[1]).max() > 1e-3  # control: two sequences, two vectors


def test_npy_stream_writes_blocks(tmp_path):
    s = NpyStream(tmp_path / "x.npy", (10, 3))
    s.write(4, np.ones((6, 3)))
    s.write(0, np.arange(12.0).reshape(4, 3))
    expected = np.concatenate([np.arange(12.0).reshape(4, 3), np.ones((6, 3))])
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), expected.astype(np.float32))


def test_layer_names(hyena):
    assert resolve_layer(hyena, "final") == resolve_layer(hyena, -1) == 3
    assert resolve_layer(hyena, "0") == 0 and resolve_layer(hyena, -2) == 2
    with pytest.raises(ConfigError, match="out of range"):
        resolve_layer(hyena, 4)
    with pytest.raises(ConfigError, match="integer or 'final'"):
        resolve_layer(hyena, "middle")


def test_api_embed(model_dirs, transformer):
    m = dnalm.load(model_dirs["transformer"], device="cpu", chunk_size=7)
    seqs = ["ACGTACGGT", "ttagc"]
    refs = [_plain_hidden(transformer, encode_sequence(CharTokenizer(), s.upper()), 2) for s in seqs]
    np.testing.assert_allclose(m.embed(seqs, layer=2, pool="mean"), np.stack([h.mean(0) for h in refs]),
                               **_tol(transformer, refs, 10))
    per_base = m.embed(seqs, layer=2, pool="none")
    for got, ref in zip(per_base, refs, strict=True):
        np.testing.assert_allclose(got, ref, **_tol(transformer, refs, 10))
    assert m.embed(seqs[0], pool="last").shape == (16,)


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def test_two_megabase_chromosome_per_base_on_disk_with_bounded_memory(tmp_path):
    fasta = shared_file("athal_colcen_chr1_5-7mb", "Col-CEN_v1.2.Chr1_5MB-7MB.fasta.gz")
    (record,) = read_sequences(fasta)
    ids = encode_sequence(CharTokenizer(), record.seq)
    assert ids.shape == (2_000_000,)
    l_max = 4096
    # milder weights than the small models: with 4,095 filter taps the heavily perturbed filters make even the
    # plain float32 forward differ from float64 by 4e-4, which would hide any chunking error
    model = tiny_hyena(seed=2, l_max=l_max, d_model=16, scale=0.05)
    embed_per_base(model, [ids[:5000]], -1, lambda *a: None, chunk_size=4096)  # load the kernels first
    before = _status_mb("VmRSS")
    exact_peak = _reset_peak()
    start = time.perf_counter()
    out = embed_to_directory(model, [ids], ["Chr1"], tmp_path / "chr1", layer=-1, pool="none")
    elapsed = time.perf_counter() - start
    peak = _status_mb("VmHWM") if exact_peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # the output alone is 2e6 x 16 x 4 bytes = 128 MB; it is on disk, not in memory
    assert peak - before < 300, f"peak RSS grew by {peak - before:.0f} MB"
    assert elapsed < 60
    emb = np.load(out / "Chr1.npy", mmap_mode="r")
    assert emb.shape == (2_000_000, 16) and emb.dtype == np.float32
    # the first l_max positions: the plain forward; later windows: the truncated-filter reference run on
    # the window plus the receptive field of two layers (l_max - 1 filter taps and 2 short-conv taps each)
    head = _plain_hidden(model, ids[:l_max], -1)
    np.testing.assert_allclose(emb[:l_max], head, **_tol(model, [head], l_max))
    reach = 2 * (l_max - 1 + 2)
    for s in (1_000_003, 2_000_000 - 700):
        window = ids[s - reach: s + 700]
        ref = _plain_hidden(truncated_filter_reference(model, len(window)), window, -1)[reach:]
        np.testing.assert_allclose(emb[s: s + 700], ref, **_tol(model, [ref], len(window)))


def test_embed_command_and_errors(tmp_path, model_dirs, hyena, capsys):
    fasta = tmp_path / "in.fa"
    fasta.write_text(">one\nACGTAGGA\n>two\nttgacca\n")
    run(["embed", f"input={fasta}", f"checkpoint={model_dirs['hyena']}", f"out={tmp_path / 'e'}", "layer=1",
         "pool=none", "device=cpu"])
    table = pq.read_table(tmp_path / "e" / "sequences.parquet").to_pydict()
    assert table["id"] == ["one", "two"] and table["file"] == ["one.npy", "two.npy"]  # named after the records
    ref = _plain_hidden(hyena, encode_sequence(CharTokenizer(), "TTGACCA"), 1)
    np.testing.assert_allclose(np.load(tmp_path / "e" / table["file"][1]), ref, **_tol(hyena, [ref], 7))
    bad = tmp_path / "bad.fa"
    bad.write_text(">one\nACGT\n>one\nACGT\n")
    with pytest.raises(SystemExit) as exc:
        main(["embed", f"input={bad}", f"checkpoint={model_dirs['hyena']}", f"out={tmp_path / 'f'}", "device=cpu"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "bad.fa" in err and "one" in err
    assert not (tmp_path / "f").exists()
    with pytest.raises(ConfigError, match="pool='median'"):
        run(["embed", f"input={fasta}", f"checkpoint={model_dirs['hyena']}", f"out={tmp_path / 'g'}", "pool=median"])
    assert not (tmp_path / "g").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.fa", "e", "in.fa"]
