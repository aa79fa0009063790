"""`dnalm model info` for StripedHyena 2: parameter rows against the real modules, FLOPs per block type by hand
and against :func:`dnalm.models.stripedhyena.flops_per_token`."""

from __future__ import annotations

import json
import math

import pytest

from dnalm.cli import run
from dnalm.models.info import model_info
from dnalm.models.stripedhyena import PRESETS, StripedHyenaConfig, StripedHyenaLM, flops_per_token


def _row_of(name: str, kinds: tuple[str, ...]) -> str:
    if name.startswith("backbone.embeddings."):
        return "embedding (tied head)"
    if name.startswith("backbone.ln_f."):
        return "final norm"
    if name == "lm_head.weight":
        return "LM head + loss"
    layer = int(name.split(".")[2])
    if ".pre_norm." in name or ".post_norm." in name:
        return "norms (2 per block)"
    if ".mlp." in name:
        return "gated mlp"
    for key, row in ((".mixer.projections.", "hyena projections"),
                     (".mixer.short_filter_weight", "hyena featurizer FIR"),
                     (".mixer.out_filter_dense.", "hyena out_filter_dense"),
                     (".mixer.in_proj.", "attn in_proj (qkv)"), (".mixer.out_proj.", "attn out_proj")):
        if key in name:
            return row
    assert ".mixer.filter." in name, name
    return {"hcs": "HCS", "hcm": "HCM", "hcl": "HCL"}[kinds[layer]]


def _params_by_row(model: StripedHyenaLM) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, p in model.named_parameters():  # a tied tensor is listed once
        row = _row_of(name, model.config.layer_kinds)
        out[row] = out.get(row, 0) + p.numel()
    return out


def _table(info) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in info.rows:
        if r.params:
            key = r.name.split(" FIR")[0].split(" modal")[0] if r.name.startswith("HC") else r.name
            out[key] = out.get(key, 0) + r.count * r.params
    return out


@pytest.mark.parametrize("name", ["tiny", "small", "1b-8k", "7b-1m"])
def test_preset_rows_match_the_real_model(name: str) -> None:
    cfg = PRESETS[name]
    model = StripedHyenaLM(cfg, device="meta")
    info = model_info(cfg, seq_len=1024)
    assert info.params == sum(p.numel() for p in model.parameters())
    assert _table(info) == _params_by_row(model)
    if name == "1b-8k":
        assert info.params == 1_107_989_760


@pytest.mark.parametrize("cfg", [
    StripedHyenaConfig.preset("tiny", pattern="SDH*S", hidden_size=32, num_attention_heads=2, inner_mlp_size=48,
                              hcs_filter_groups=4, hcm_filter_groups=4, tie_embeddings=False, qkv_proj_bias=True,
                              hyena_out_proj_bias=False, hcs_filter_length=130, hcm_filter_length=16),
])
def test_other_config_rows_match_the_real_model(cfg: StripedHyenaConfig) -> None:
    model = StripedHyenaLM(cfg)
    info = model_info(cfg, seq_len=64)
    assert info.params == sum(p.numel() for p in model.parameters())
    assert {k.replace("embedding (tied head)", "embedding"): v for k, v in _params_by_row(model).items()} == \
        _table(info)


@pytest.mark.parametrize(("L", "B"), [(64, 1), (1000, 3)])
def test_flops_per_block_type_by_hand(L: int, B: int) -> None:
    d, di, V, Ks, N, c = 32, 48, 512, 3, 16, 2.5
    cfg = StripedHyenaConfig.preset("tiny", pattern="SDH*", hidden_size=d, num_attention_heads=2,
                                    inner_mlp_size=di, hcs_filter_groups=4, hcm_filter_groups=4, state_size=N)
    info = model_info(cfg, L, B)
    fft = d * (4 * c * math.log2(2 * L) + 6 * (L + 1) / L + 2 * c * math.log2(2 * L) / B)
    gated = 6 * d * d + 2 * Ks * 3 * d + 2 * d * d  # projections, featurizer FIR, out_filter_dense
    by_hand = {
        "S": gated + 2 * 7 * d,                 # direct FIR, 7 taps
        "D": gated + fft,                       # 128 taps: FFT convolution
        "H": gated + fft + 2 * N * d / B,       # modal filter: FFT convolution + its taps from N modes
        "*": 6 * d * d + 4 * L * d + 2 * d * d,
    }
    total = sum(by_hand.values()) + 4 * 6 * d * di + 2 * d * V
    assert info.forward_flops_per_token == pytest.approx(total, rel=1e-12)
    assert info.forward_flops_per_token == pytest.approx(flops_per_token(cfg, L, B), rel=1e-12)
    assert info.train_flops_per_token == pytest.approx(3 * total, rel=1e-12)
    assert info.activation_bytes == pytest.approx(info.activation_bytes_per_token * L * B)


def test_model_info_command(tmp_path, capsys) -> None:
    out = tmp_path / "info.json"
    assert run(["model", "info", "model=stripedhyena", "preset=1b-8k", "seq_len=8192", f"out={out}"]) == 0
    data = json.loads(out.read_text())
    assert data["params"] == 1_107_989_760 and data["family"] == "stripedhyena"
    assert data["forward_flops_per_token"] == pytest.approx(flops_per_token(PRESETS["1b-8k"], 8192))
    assert "1,107,989,760" in capsys.readouterr().out

