"""Model costs: parameter rows against the real modules, FLOPs and activation memory by hand and measured."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from dnalm.cli import main, run
from dnalm.errors import ConfigError
from dnalm.models.hyena import HyenaConfig, HyenaLM
from dnalm.models.info import ModelInfo, dtype_bytes, family_config, model_info
from dnalm.models.transformer import TransformerConfig, TransformerLM

HYENA_SMALL = HyenaConfig(d_model=24, n_layer=2, d_inner=40, l_max=64, filter_order=16, embed_dropout=0.0)
TRANSFORMER_SMALL = TransformerConfig(d_model=24, n_layer=2, n_head=3, d_inner=40)

# real parameter name (substring) -> row of the cost table
ROW_OF = {
    "backbone.embeddings.": "embedding (tied head)",
    ".norm1.": "norms (2 per block)",
    ".norm2.": "norms (2 per block)",
    ".mlp.": "mlp",
    "backbone.ln_f.": "final norm",
    ".mixer.short_filter.": "hyena short conv",
    ".mixer.filter_fn.bias": "hyena long conv FFT",
    ".mixer.filter_fn.": "hyena filter MLP",
}


def _row_of(name: str, family: str) -> str:
    if ".mixer.in_proj." in name:
        return "hyena in_proj" if family == "hyena" else "attn in_proj (qkv)"
    if ".mixer.out_proj." in name:
        return "hyena out_proj" if family == "hyena" else "attn out_proj"
    return next(row for key, row in ROW_OF.items() if key in name)


def _params_by_row(model: torch.nn.Module, family: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, p in model.named_parameters():  # a tied or shared tensor is listed once
        row = _row_of(name, family)
        out[row] = out.get(row, 0) + p.numel()
    return out


def _table_params(info: ModelInfo) -> dict[str, int]:
    return {r.name: r.count * r.params for r in info.rows if r.params}


@pytest.mark.parametrize(("preset", "expected"), [("tiny-1k", 436_096), ("small-32k", 3_277_568),
                                                  ("large-1m", 6_550_528)])
def test_hyena_presets_match_the_real_model(preset: str, expected: int):
    cfg = HyenaConfig.preset(preset)
    model = HyenaLM(cfg, device="meta")
    info = model_info(cfg, seq_len=1024)
    assert info.params == sum(p.numel() for p in model.parameters()) == expected
    assert _table_params(info) == _params_by_row(model, "hyena")


@pytest.mark.parametrize("cfg", [
    HyenaConfig(d_model=40, n_layer=3, d_inner=72, l_max=50, emb_dim=7, filter_order=12, short_filter_order=4,
                train_pos_emb=True),
    HyenaConfig(vocab_size=30, d_model=16, n_layer=1, d_inner=8, l_max=20),
])
def test_hyena_rows_match_other_configs(cfg: HyenaConfig):
    model = HyenaLM(cfg)
    info = model_info(cfg, seq_len=cfg.l_max)
    assert info.params == sum(p.numel() for p in model.parameters())
    assert _table_params(info) == _params_by_row(model, "hyena")


@pytest.mark.parametrize("cfg", [TransformerConfig.preset("tiny-1k"), TransformerConfig.preset("large-1m"),
                                 TransformerConfig(d_model=48, n_layer=3, n_head=4, d_inner=96, bias=False)])
def test_transformer_rows_match_the_real_model(cfg: TransformerConfig):
    model = TransformerLM(cfg, device="meta")
    info = model_info(cfg, seq_len=256)
    assert info.params == sum(p.numel() for p in model.parameters())
    assert _table_params(info) == _params_by_row(model, "transformer")


def test_transformer_tiny_by_hand():
    cfg = TransformerConfig.preset("tiny-1k")
    L, B = 1000, 4
    info = model_info(cfg, seq_len=L, batch_size=B, dtype="bf16")
    d, n, H, di, V, b = cfg.d_model, cfg.n_layer, cfg.n_head, cfg.d_inner, 16, 2
    assert info.params == V * d + n * ((3 * d * d + 3 * d) + (d * d + d) + 4 * d + (2 * d * di + di + d)) + 2 * d
    fwd = n * (2 * d * 3 * d + 2 * L * d + 2 * L * d + 2 * d * d + 2 * d * di + 2 * di * d) + 2 * d * V
    assert info.forward_flops_per_token == pytest.approx(fwd, rel=1e-12)
    assert info.train_flops_per_token == pytest.approx(3 * fwd, rel=1e-12)
    block = (2 * (4 * d + 8)  # norm1, norm2: float32 input + mean + rstd
             + b * d + 3 * b * d + 2 * b * d + b * d + 4 * H + b * d  # qkv in/out, rotated q k, o, lse, out_proj in
             + b * d + b * di + b * di)  # fc1 input, GELU input, fc2 input
    act = 8 + n * block + (4 * d + 8) + (b * d + b * V + 4 * V + 8)  # head input, bf16 and fp32 logits, targets
    assert info.activation_bytes_per_token == pytest.approx(act, rel=1e-12)
    assert info.activation_bytes == pytest.approx(act * B * L, rel=1e-12)
    assert info.train_state_bytes == 16 * info.params


def test_hyena_tiny_by_hand():
    cfg = HyenaConfig.preset("tiny-1k")  # embed_dropout 0.1
    L, B = 1000, 4
    info = model_info(cfg, seq_len=L, batch_size=B, dtype="fp32")
    d, n, di, V, b, K, Fo, e = cfg.d_model, cfg.n_layer, cfg.d_inner, 16, 4, 3, 64, 5
    n_fft = 2 * L
    fft = 2.5 * n_fft * math.log2(n_fft)  # one real FFT of the zero-padded sequence
    per_seq_channel = 2 * fft + 6 * (L + 1)  # FFT of u, inverse FFT, spectral product
    fwd = n * (2 * d * 3 * d  # in_proj
               + 2 * K * 3 * d * (L + K - 1) / L  # depthwise short conv, padded output
               + d * (per_seq_channel / L + fft / (B * L))  # long conv + the filter's FFT shared by the batch
               + 2 * (e * Fo + Fo * Fo + Fo * Fo + Fo * d) / B  # filter MLP on L positions per batch
               + 2 * d * d + 2 * d * di + 2 * di * d) + 2 * d * V
    assert info.forward_flops_per_token == pytest.approx(fwd, rel=1e-12)
    bins = (L + 1) / L
    block = (2 * (4 * d + 8) + b * d  # norms, in_proj input
             + 3 * b * d + 3 * b * d * (L + K - 1) / L  # short conv input and padded output
             + 8 * d + 8 * d * bins + 4 * d + b * d  # padded FFT input, its spectrum, skip input, conv output
             + (8 * d + 8 * d * bins) / B  # padded filter and its spectrum
             + (3 * Fo * (2 * b + 4) + 4 * d) / B  # Sin layers, decay window
             + b * d + b * d + 2 * b * di)  # out_proj input, MLP
    act = 8 + d + n * block + (4 * d + 8) + (b * d + 4 * V + 8)  # ids, 1-byte embedding dropout mask
    assert info.activation_bytes_per_token == pytest.approx(act, rel=1e-12)


@pytest.mark.parametrize(("cfg", "model_cls"), [(TRANSFORMER_SMALL, TransformerLM), (HYENA_SMALL, HyenaLM)])
def test_matmul_and_conv_flops_agree_with_flop_counter(cfg, model_cls):
    torch.manual_seed(0)
    model = model_cls(cfg)
    B, L = 2, 20
    ids = torch.randint(0, 12, (B, L))
    with FlopCounterMode(display=False) as counter:
        model(ids)
    counted = counter.get_total_flops()  # mm/addmm/convolution; the CPU attention kernel and FFTs are not counted
    info = model_info(cfg, seq_len=L, batch_size=B)
    rows = [r for r in info.rows if "L^2" not in r.name and "FFT" not in r.name]
    assert counted == pytest.approx(B * L * sum(r.count * r.flops for r in rows), rel=1e-12)
    assert counted > 0


def test_transformer_training_flops_are_three_times_forward():
    torch.manual_seed(0)
    model = TransformerLM(TRANSFORMER_SMALL)
    ids = torch.randint(0, 12, (2, 20))
    with FlopCounterMode(display=False) as fwd:
        model(ids)
    with FlopCounterMode(display=False) as train:
        model(ids).sum().backward()
    assert train.get_total_flops() == 3 * fwd.get_total_flops()


def _saved_bytes(model: torch.nn.Module, B: int, L: int, dtype: torch.dtype) -> int:
    """Bytes of the distinct storages autograd saves in one training forward + loss (weights excluded)."""
    constant = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in constant:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    inputs, targets = torch.randint(0, 12, (B, L)), torch.randint(0, 12, (B * L,))
    amp = torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), amp:
        F.cross_entropy(model(inputs).flatten(0, 1), targets)
    return sum(seen.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("cfg", "model_cls"), [(TRANSFORMER_SMALL, TransformerLM), (HYENA_SMALL, HyenaLM)])
def test_activation_memory_equals_what_autograd_saves(cfg, model_cls, dtype):
    torch.manual_seed(0)
    model = model_cls(cfg).train()
    L = 20
    # bytes per token of one more sequence in the batch: constants (weight copies, tables) cancel
    measured = (_saved_bytes(model, 3, L, dtype) - _saved_bytes(model, 1, L, dtype)) / (2 * L)
    f1, f2 = (model_info(cfg, L, B, dtype).activation_bytes_per_token for B in (1, 2))
    cpu_loss = 2 * 16 if dtype == torch.bfloat16 else 0  # CUDA's autocast loss also keeps the bf16 logits
    assert measured == pytest.approx(2 * f2 - f1 - cpu_loss, rel=1e-12)  # f(B) = per-sequence + shared / B


def test_hyena_batch_shared_activations_equal_what_autograd_saves():
    torch.manual_seed(0)
    model = HyenaLM(HYENA_SMALL).train()
    L = 20
    loss_scalar = 4  # nll_loss keeps its float32 total weight
    measured = _saved_bytes(model, 1, L, torch.float32) - loss_scalar
    assert measured == pytest.approx(model_info(HYENA_SMALL, L, 1, "fp32").activation_bytes, rel=1e-12)


def test_dtype_names_and_bad_sizes():
    assert dtype_bytes("bf16-mixed") == dtype_bytes(torch.bfloat16) == 2
    assert dtype_bytes("32-true") == dtype_bytes("fp32") == 4
    with pytest.raises(ConfigError, match="unknown dtype 'int3'"):
        dtype_bytes("int3")
    with pytest.raises(ConfigError, match="exceeds the model's l_max 1026"):
        model_info(HyenaConfig.preset("tiny-1k"), seq_len=2000)
    with pytest.raises(ConfigError, match="seq_len >= 1"):
        model_info(TRANSFORMER_SMALL, seq_len=0)
    with pytest.raises(ConfigError, match="unknown model 'rwkv'"):
        family_config("rwkv", "tiny")
    with pytest.raises(ConfigError, match="no cost model for Dnabert2Config"):
        model_info(family_config("dnabert2", "tiny"), seq_len=16)


def test_command_writes_the_numbers(tmp_path, capsys):
    out = tmp_path / "info.json"
    assert run(["model", "info", "model=transformer", "preset=large-1m", "seq_len=1024", "batch_size=2",
                "n_layer=4", f"out={out}"]) == 0
    data = json.loads(out.read_text())
    info = model_info(TransformerConfig.preset("large-1m", n_layer=4), 1024, 2, "bf16")
    assert data["params"] == info.params and data["config"]["n_layer"] == 4
    assert data["train_flops_per_token"] == pytest.approx(info.train_flops_per_token)
    text = capsys.readouterr().out
    assert f"{info.params:,}" in text and "attn q k^T" in text


def test_command_reads_a_saved_model(tmp_path, capsys):
    from dnalm.models.io import save_pretrained

    cfg = TransformerConfig(d_model=16, n_layer=1, n_head=2, d_inner=32, max_len=64)
    model = TransformerLM(cfg)
    save_pretrained(model, tmp_path / "m")
    run(["model", "info", f"checkpoint={tmp_path / 'm'}", f"out={tmp_path / 'i.json'}"])
    data = json.loads((tmp_path / "i.json").read_text())
    assert data["params"] == sum(p.numel() for p in model.parameters()) and data["seq_len"] == 64


@pytest.mark.parametrize(("argv", "needle"), [
    (["preset=huge"], "unknown hyena preset 'huge'"),
    (["n_head=4"], "n_head applies to model=transformer only"),
    (["model=transformer", "preset=tiny", "d_model=100", "n_head=3"], "divisible by n_head"),
    (["seq_len=5000"], "exceeds the model's l_max"),
    (["dtype=fp8"], "unknown dtype"),
])
def test_command_errors_are_one_line(argv: list[str], needle: str, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["model", "info", *argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_command_derives_d_inner_from_a_new_d_model(tmp_path):
    """dnalm model info preset=tiny-1k d_model=256: the MLP follows the width (1024), as a trained model's would."""
    run(["model", "info", "preset=tiny-1k", "d_model=256", f"out={tmp_path / 'a.json'}"])
    run(["model", "info", "preset=tiny-1k", "d_model=256", "d_inner=300", f"out={tmp_path / 'b.json'}"])
    assert json.loads((tmp_path / "a.json").read_text())["config"]["d_inner"] == 1024
    assert json.loads((tmp_path / "b.json").read_text())["config"]["d_inner"] == 300
