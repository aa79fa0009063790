"""LoRA: which parameters train, frozen base weights, adapter save/load and merging."""

from __future__ import annotations

import json

import pytest
import torch

from dnalm.errors import ConfigError, InputError
from dnalm.models.heads import SequenceClassifier
from dnalm.models.hyena import HyenaConfig, HyenaLM
from dnalm.models.lora import (
    ADAPTER_CONFIG,
    LoraSettings,
    apply_lora,
    load_adapter,
    merge_and_unload,
    merge_lora,
    resolve_targets,
    save_adapter,
)
from dnalm.models.transformer import TransformerConfig, TransformerLM

CFG = HyenaConfig(d_model=16, n_layer=2, d_inner=32, l_max=26, filter_order=8, embed_dropout=0.0)


def _classifier(seed: int = 0) -> SequenceClassifier:
    torch.manual_seed(seed)
    return SequenceClassifier(HyenaLM(CFG), 2, pooling="mean", dropout=0.0)


def _motif_batch(n: int = 32, L: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random bases; label 1 rows carry GGGG... at a random place (ids: A7 C8 G9 T10)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, 9, (n, L), generator=g)  # A/C background
    labels = torch.arange(n) % 2
    for i in range(n):
        if labels[i]:
            s = int(torch.randint(0, L - 6, (1,), generator=g))
            ids[i, s:s + 6] = 9
    return ids, labels


def _train(model: torch.nn.Module, steps: int = 30, lr: float = 5e-3) -> list[float]:
    ids, labels = _motif_batch()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model.loss(model(ids), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_presets_and_groups() -> None:
    model = _classifier()
    assert resolve_targets(model, None) == ["in_proj", "out_proj", "fc1", "fc2"]
    assert resolve_targets(model, ["mlp"]) == ["fc1", "fc2"]
    tf = TransformerLM(TransformerConfig(d_model=16, n_layer=1, n_head=2, d_inner=32, max_len=32))
    assert resolve_targets(tf, None) == ["in_proj", "out_proj"]
    with pytest.raises(ConfigError, match="no Linear"):
        resolve_targets(model, ["q_proj"])
    with pytest.raises(ConfigError, match="lora.r"):
        LoraSettings(r=0)


def test_only_adapters_and_head_train_and_base_is_untouched() -> None:
    model = _classifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, LoraSettings(enabled=True, r=4, alpha=8.0))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    lora = {n for n in trainable if ".lora_A." in n or ".lora_B." in n}
    assert trainable == lora | {"head.weight", "head.bias"}
    # 2 layers x 4 targets x (A, B)
    assert len(lora) == 16
    assert all(any(f".{t}.lora_" in n for t in ("in_proj", "out_proj", "fc1", "fc2")) for n in lora)
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    losses = _train(model)
    assert sum(losses[-5:]) / 5 < 0.6 * losses[0]
    after = model.state_dict()
    for k, v in before.items():
        key = k if k in after else k.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        if k.startswith("head."):
            assert not torch.equal(after[key], v), k
        else:
            assert torch.equal(after[key], v), f"base tensor {k} changed"
    for n, p in model.named_parameters():
        if ".lora_B." in n or n.startswith("head."):
            assert not torch.equal(p, start[n]), n


def test_merge_equals_adapter_model_and_formula() -> None:
    model = _classifier()
    apply_lora(model, LoraSettings(enabled=True, r=4, alpha=8.0))
    _train(model, steps=10, lr=2e-2)
    model.eval()
    ids, _ = _motif_batch(8, seed=3)
    mask = torch.ones_like(ids)
    mask[:3, 15:] = 0
    with torch.no_grad():
        expected = model(ids, mask)
    layer = model.backbone.backbone.layers[1].mlp.fc1
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    W = layer.base_layer.weight + (8.0 / 4) * B @ A
    merged = merge_and_unload(model)
    assert not any("lora" in k or "base_layer" in k for k in merged.state_dict())
    assert isinstance(merged.backbone.backbone.layers[1].mlp.fc1, torch.nn.Linear)
    torch.testing.assert_close(merged.backbone.backbone.layers[1].mlp.fc1.weight, W, atol=1e-6, rtol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(merged(ids, mask), expected, atol=1e-5, rtol=1e-5)


def test_adapter_roundtrip_and_merge_lora(tmp_path) -> None:
    model = _classifier(seed=1)
    settings = LoraSettings(enabled=True, r=2, alpha=4.0, target_modules=["mixer"])
    apply_lora(model, settings)
    _train(model, steps=8, lr=2e-2)
    model.eval()
    ids, _ = _motif_batch(6, seed=5)
    with torch.no_grad():
        expected = model(ids)
    out = save_adapter(model, tmp_path / "adapter", settings, base_model="some/base",
                       head=model.head_config(["neg", "pos"]))
    config = json.loads((out / ADAPTER_CONFIG).read_text())
    assert config["target_modules"] == ["in_proj", "out_proj"] and config["base_model"] == "some/base"
    from safetensors.torch import load_file

    keys = set(load_file(str(out / "adapter.safetensors")))
    assert keys == {n for n, p in model.named_parameters() if p.requires_grad}

    fresh = _classifier(seed=1)  # same base weights and head init as before training
    load_adapter(fresh, out)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(ids), expected)

    torch.manual_seed(1)
    base_lm = HyenaLM(CFG)
    merged = merge_lora(base_lm, out)
    assert isinstance(merged, SequenceClassifier) and merged.classes == ["neg", "pos"]
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(ids), expected, atol=1e-5, rtol=1e-5)


def test_lm_adapter_without_head(tmp_path) -> None:
    torch.manual_seed(0)
    lm = HyenaLM(CFG)
    settings = LoraSettings(enabled=True, r=2, trainable=[])
    apply_lora(lm, settings)
    assert all(".lora_" in n for n, p in lm.named_parameters() if p.requires_grad)
    with torch.no_grad():
        for n, p in lm.named_parameters():
            if ".lora_B." in n:
                p.normal_()
    ids = torch.randint(7, 12, (2, 20))
    with torch.no_grad():
        expected = lm.eval()(ids)
    save_adapter(lm, tmp_path / "a", settings)
    torch.manual_seed(0)
    merged = merge_lora(HyenaLM(CFG), tmp_path / "a")
    assert isinstance(merged, HyenaLM)
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(ids), expected, atol=1e-5, rtol=1e-5)


def test_bad_adapters(tmp_path) -> None:
    with pytest.raises(InputError, match="adapter_config.json"):
        merge_lora(HyenaLM(CFG), tmp_path)
    model = _classifier()
    settings = LoraSettings(enabled=True, r=2)
    apply_lora(model, settings)
    save_adapter(model, tmp_path / "a", settings, head=model.head_config())
    wider = SequenceClassifier(HyenaLM(HyenaConfig(d_model=32, n_layer=2, d_inner=32, l_max=26, filter_order=8)), 2)
    with pytest.raises(InputError, match="shape"):
        load_adapter(wider, tmp_path / "a")
    with pytest.raises(ConfigError, match="already"):
        apply_lora(model, settings)


def test_merge_lora_command_on_hyenadna_checkpoint(tmp_path, hyena_fixture) -> None:
    from dnalm.cli import main, run
    from dnalm.models.heads import load_classifier
    from dnalm.models.io import load_pretrained

    base_path = hyena_fixture / "hub_lightning"
    torch.manual_seed(0)
    model = SequenceClassifier(load_pretrained(base_path), 2, pooling="last", dropout=0.0)
    settings = LoraSettings(enabled=True, r=2, alpha=4.0)
    apply_lora(model, settings)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(std=0.05)
    model.eval()
    ids = torch.randint(7, 11, (3, 30))
    with torch.no_grad():
        expected = model(ids)
    save_adapter(model, tmp_path / "adapter", settings, base_model=str(base_path),
                 head=model.head_config(["0", "1"]))
    assert run(["merge-lora", f"adapter={tmp_path / 'adapter'}", f"out={tmp_path / 'merged'}"]) == 0
    merged = load_classifier(tmp_path / "merged")
    assert merged.classes == ["0", "1"] and merged.pooling == "last"
    with torch.no_grad():
        torch.testing.assert_close(merged(ids), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(SystemExit) as exc:
        main(["merge-lora", f"adapter={tmp_path / 'missing'}", f"out={tmp_path / 'x'}"])
    assert exc.value.code == 2
