"""dnalm.evaluate.speed: the plain GPT baseline, model builders, length parsing and the table (CPU)."""

from __future__ import annotations

import torch

from dnalm.evaluate.speed import (
    SpeedRow,
    build_model,
    hyena_traffic_bytes,
    length_label,
    markdown_table,
    matmul_flops_per_token,
    parse_length,
)
from dnalm.models.blocks import count_parameters
from dnalm.training.lightning import checkpoint_blocks


def test_plain_gpt_has_the_transformer_size_and_runs():
    gpt = build_model("gpt", "tiny-1k", 64, device="cpu")
    ours = build_model("transformer", "tiny-1k", 64, device="cpu")
    assert count_parameters(gpt) == count_parameters(ours)
    assert gpt(torch.randint(0, 12, (2, 33))).shape == (2, 33, 16)


def test_hyena_builders_pick_the_path():
    assert build_model("hyena-ref", "tiny-1k", 2048, device="cpu").config.fast_path == "reference"
    model = build_model("hyena", "tiny-1k", 2048, device="cpu")
    assert model.config.fast_path == "auto" and model.config.l_max == 2050


def test_ssm_families_at_the_hyena_preset_size():
    """mamba and caduceus have presets of their own: they are timed at the Hyena preset's d_model and n_layer, and
    their FLOPs per token are those of their cost model."""
    from dnalm.models.hyena import HyenaConfig
    from dnalm.models.info import model_info

    size = HyenaConfig.preset("tiny-1k")
    for name in ("mamba", "caduceus"):
        model = build_model(name, "tiny-1k", 64, device="cpu")
        assert (model.config.d_model, model.config.n_layer) == (size.d_model, size.n_layer)
        assert model(torch.randint(7, 11, (1, 9))).shape == (1, 9, 16)
        assert matmul_flops_per_token(name, "tiny-1k", 1024) == model_info(model.config, 1024).forward_flops_per_token


def test_checkpointing_of_the_models_that_run_out_of_memory_keeps_the_gradients():
    """The fallback for a training step out of memory (every model but the fused Hyena): every block recomputed
    in the backward pass, with the gradients of the plain model (float64: the same operations, so equal to
    rounding)."""
    for name in ("mamba", "caduceus", "hyena-ref", "transformer"):
        torch.manual_seed(0)
        plain = build_model(name, "tiny-1k", 64, device="cpu").double()
        wrapped = build_model(name, "tiny-1k", 64, device="cpu").double()
        wrapped.load_state_dict(plain.state_dict())
        assert checkpoint_blocks(wrapped) == plain.config.n_layer
        ids = torch.randint(7, 11, (1, 9))
        for model in (plain, wrapped):
            model.train()
            torch.manual_seed(1)  # the same dropout masks
            model(ids).logsumexp(-1).sum().backward()
        for (key, p), q in zip(plain.named_parameters(), wrapped.parameters(), strict=True):
            torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=1e-10, msg=f"{name} {key}")


def test_lengths_and_table():
    assert [parse_length(t) for t in ("1k", "1M", "4096")] == [1024, 1 << 20, 4096]
    assert [length_label(n) for n in (1024, 1 << 20, 1000)] == ["1k", "1M", "1000"]
    assert matmul_flops_per_token("transformer", "large-1m", 1024) > matmul_flops_per_token("hyena", "large-1m", 1024)
    assert hyena_traffic_bytes("large-1m", True) > hyena_traffic_bytes("large-1m", False)
    rows = [SpeedRow("hyena-ref", "train", 1024, 1024, 1e6, 1.0, 2.0, 0.1, None),
            SpeedRow("hyena", "train", 1024, 1024, 4e6, 0.25, 1.0, 0.4, 0.5),
            SpeedRow("hyena", "train", 1 << 20, 1, None, None, None, None, None, "out of memory")]
    table = markdown_table(rows)
    assert "| hyena | train | 1k | 1024 | 4.00M |" in table and "4.00x" in table and "out of memory" in table


def test_speed_command_checks_options_then_needs_a_gpu(capsys):
    import pytest

    from dnalm.cli import main

    for args, message in ((["models=[hyena,nope]"], "unknown model 'nope'"), (["lengths=[1x]"], "integers"),
                          ([], "CUDA GPU")):
        if message == "CUDA GPU" and torch.cuda.is_available():
            continue
        with pytest.raises(SystemExit) as exc:
            main(["speed", *args])
        assert exc.value.code == 2 and message in capsys.readouterr().err
