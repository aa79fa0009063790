"""param_groups: membership by independent name rules, and AdamW's decoupled decay per group."""

from __future__ import annotations

import pytest
import torch

from dnalm.models.hyena import HyenaConfig, HyenaLM
from dnalm.training.optim import param_groups


def _model(**kw) -> HyenaLM:
    torch.manual_seed(0)
    return HyenaLM(HyenaConfig(d_model=16, n_layer=2, d_inner=32, filter_order=8, l_max=20, **kw))


def _expected_group(name: str, p: torch.Tensor) -> str:
    if ".implicit_filter." in name or name.endswith("pos_emb.z"):
        return "filter"
    if p.ndim < 2 or "embeddings" in name:
        return "no_decay"
    return "decay"


@pytest.mark.parametrize("train_pos_emb", [False, True])
def test_membership(train_pos_emb):
    model = _model(train_pos_emb=train_pos_emb)
    model.backbone.layers[1].mlp.fc1.weight.requires_grad_(False)
    groups = param_groups(model, weight_decay=0.1, lr=1e-3, filter_lr=5e-4)
    by_name = {g["name"]: g for g in groups}
    assert [g["name"] for g in groups] == ["decay", "no_decay", "filter"]
    assert (by_name["decay"]["lr"], by_name["decay"]["weight_decay"]) == (1e-3, 0.1)
    assert (by_name["no_decay"]["lr"], by_name["no_decay"]["weight_decay"]) == (1e-3, 0.0)
    assert (by_name["filter"]["lr"], by_name["filter"]["weight_decay"]) == (5e-4, 0.0)
    got = {id(p): g["name"] for g in groups for p in g["params"]}
    assert len(got) == sum(len(g["params"]) for g in groups)  # no parameter twice
    expected = {id(p): _expected_group(n, p) for n, p in model.named_parameters() if p.requires_grad}
    assert got == expected
    z = model.backbone.layers[0].mixer.filter_fn.pos_emb.z
    assert (id(z) in got) == train_pos_emb
    assert id(model.backbone.layers[1].mlp.fc1.weight) not in got
    # per layer: the filter MLP (4 weights, 3 biases), one shared freq, and z when trainable
    assert len(by_name["filter"]["params"]) == 2 * (4 + 3 + 1 + int(train_pos_emb))


def test_defaults_and_empty_groups_dropped():
    groups = param_groups(torch.nn.LayerNorm(4), weight_decay=0.1, lr=0.01)
    assert [g["name"] for g in groups] == ["no_decay"]
    groups = param_groups(_model(), weight_decay=0.1, lr=0.01, filter_weight_decay=0.2)
    f = next(g for g in groups if g["name"] == "filter")
    assert (f["lr"], f["weight_decay"]) == (0.01, 0.2)


def test_adamw_decays_only_the_decay_group():
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(param_groups(model, weight_decay=0.5, lr=0.1), betas=(0.9, 0.999))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        factor = 1 - 0.1 * 0.5 if _expected_group(n, p) == "decay" else 1.0
        torch.testing.assert_close(p.detach(), before[n] * factor, msg=n)
