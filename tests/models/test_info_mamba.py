"""Costs of Mamba and Caduceus (:func:`dnalm.models.info.ssm_info`): parameters against the real modules, FLOPs by
hand and the matmul FLOPs against PyTorch's counter, the command's rows."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dnalm.cli import run
from dnalm.models.info import model_info
from dnalm.models.mamba import (
    CADUCEUS_PRESETS,
    MAMBA_PRESETS,
    CaduceusConfig,
    CaduceusLM,
    MambaConfig,
    MambaLM,
    count_parameters_of_config,
)

#: rows whose FLOPs are matrix products (what FlopCounterMode counts); the conv and the scan are elementwise here
MATMUL_ROWS = ("in_proj", "x_proj", "dt_proj", "out_proj", "LM head")

CONFIGS = [
    *[(MambaLM, c) for c in MAMBA_PRESETS.values()],
    *[(CaduceusLM, c) for c in CADUCEUS_PRESETS.values()],
    (MambaLM, MambaConfig(d_model=24, n_layer=2, d_state=4, d_conv=3, expand=3, dt_rank=5, bias=True,
                          conv_bias=False)),
    (CaduceusLM, CaduceusConfig(d_model=16, n_layer=3, rcps=False, bidirectional_weight_tie=False, bias=True)),
    (CaduceusLM, CaduceusConfig(d_model=16, n_layer=1, bidirectional=False, rcps=True)),
]


@pytest.mark.parametrize(("model_cls", "cfg"), CONFIGS)
def test_parameters_are_the_real_models(model_cls, cfg):
    """Every preset and some odd configs: the table's total is the sum of the built model's numel (tied tensors
    once) and the closed form of count_parameters_of_config."""
    model = model_cls(cfg, device="meta")
    info = model_info(cfg, seq_len=64)
    assert info.params == sum(p.numel() for p in model.parameters()) == count_parameters_of_config(cfg)


def test_mamba_and_caduceus_flops_by_hand():
    cfg = MambaConfig(d_model=32, n_layer=3, d_state=8, d_conv=4, expand=2)
    D, E, N, K, R, V, n = 32, 64, 8, 4, 2, 16, 3
    per_mamba = 2 * D * 2 * E + 2 * K * E + 2 * E * (R + 2 * N) + 2 * R * E + 9 * E * N + 2 * E * D
    fwd = n * per_mamba + 2 * D * V
    assert model_info(cfg, 100).forward_flops_per_token == pytest.approx(fwd, rel=1e-12)
    cad = CaduceusConfig(**{f: getattr(cfg, f) for f in ("d_model", "n_layer", "d_state", "d_conv", "expand")},
                         rcps=True)
    # two directions per layer, two RC streams, the head on both streams
    assert model_info(cad, 100).forward_flops_per_token == pytest.approx(4 * n * per_mamba + 2 * 2 * D * V, rel=1e-12)
    one_way = replace(cad, bidirectional=False, rcps=False)
    assert model_info(one_way, 100).forward_flops_per_token == pytest.approx(fwd, rel=1e-12)
    assert model_info(cad, 100).train_flops_per_token == pytest.approx(3 * (4 * n * per_mamba + 4 * D * V))


@pytest.mark.parametrize(("model_cls", "cfg"), [
    (MambaLM, MambaConfig(d_model=16, n_layer=2, d_state=4)),
    (CaduceusLM, CaduceusConfig(d_model=16, n_layer=2, d_state=4, rcps=True)),
    (CaduceusLM, CaduceusConfig(d_model=16, n_layer=1, d_state=4, rcps=False, bidirectional_weight_tie=False)),
])
def test_matmul_flops_agree_with_flop_counter(model_cls, cfg):
    """The projection and head rows are what PyTorch's FLOP counter sees in a forward (the convolution and the
    scan run as elementwise products on the CPU, which it does not count)."""
    torch.manual_seed(0)
    model = model_cls(cfg).eval()
    B, L = 2, 12
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randint(7, 11, (B, L)))
    info = model_info(cfg, L, B)
    expected = sum(r.count * r.flops for r in info.rows if any(k in r.name for k in MATMUL_ROWS))
    assert counter.get_total_flops() == pytest.approx(expected * B * L, rel=1e-12)


def test_command_covers_both_families(tmp_path, capsys):
    for family, preset in (("mamba", "small"), ("caduceus", "small")):
        out = tmp_path / f"{family}.json"
        assert run(["model", "info", f"model={family}", f"preset={preset}", "seq_len=1024", "d_model=64",
                    f"out={out}"]) == 0
        data = json.loads(out.read_text())
        cfg = (MambaConfig if family == "mamba" else CaduceusConfig).preset(preset, d_model=64)
        assert data["family"] == family and data["params"] == count_parameters_of_config(cfg)
        assert "selective scan" in capsys.readouterr().out
