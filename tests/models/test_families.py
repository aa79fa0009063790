"""Every model family through the same checks (dnalm.models.families.FAMILIES).

A family added to the tuple is tested here without a line of this file changing: its tiny preset
builds, saves and loads, LoRA adapts only its adapters, its shipped configs compose, and a causal
family's full forward equals prefill + steps, each of its mixers' chunks equal the mixer's one pass, and
its chunked forward equals one pass (all in float64, where the computations are exact but for rounding).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from dnalm.models.families import FAMILIES, family, family_of
from dnalm.models.io import load_pretrained, save_pretrained
from dnalm.models.lora import LoraSettings, apply_lora
from tolerance import FLOAT64_ATOL

CONF = Path(__file__).resolve().parents[2] / "src" / "dnalm" / "conf" / "model"
IDS = [f.name for f in FAMILIES]


def _perturb(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Move the weights off their initialisation (zero-initialised layers would hide wrong wiring)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model.eval()


def _tiny(fam, dtype=torch.float32):
    torch.manual_seed(0)
    return _perturb(fam.build(fam.config_cls.preset("tiny")).to(dtype))


def _ids(fam, model, B: int, L: int, seed: int = 0) -> torch.Tensor:
    """Random base ids of the family's alphabet (any non-special id where the tokenizer is data, e.g. BPE)."""
    g = torch.Generator().manual_seed(seed)
    tok = fam.tokenizer(model.config)
    if tok is not None:
        acgt = torch.tensor(tok.alphabet.acgt)
        return acgt[torch.randint(0, 4, (B, L), generator=g)]
    return torch.randint(5, model.config.vocab_size, (B, L), generator=g)


@pytest.mark.parametrize("fam", FAMILIES, ids=IDS)
def test_family_object_describes_its_model(fam):
    model = fam.build(fam.config_cls.preset("tiny"), device="meta")
    assert model.family == fam.name and family(fam.name) is fam
    assert family_of(model) is fam and family_of(model.config) is fam
    assert model.causal == fam.causal
    if fam.context_field is not None:
        assert fam.context_length(model.config) >= 1
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(fam.lora_targets) & names, "no default LoRA target exists in the model"
    tok = fam.tokenizer(model.config)
    if tok is not None:
        acgt = tok.alphabet.acgt
        assert len(set(acgt)) == 4 and max(acgt) < model.config.vocab_size
        assert tok.decode([acgt[0], acgt[1], acgt[2], acgt[3]]) == "ACGT"


@pytest.mark.parametrize("fam", FAMILIES, ids=IDS)
def test_save_load_round_trip(fam, tmp_path):
    model = _tiny(fam)
    save_pretrained(model, tmp_path / "m", tokenizer=fam.tokenizer(model.config))
    back = load_pretrained(tmp_path / "m")
    assert type(back) is type(model) and back.config == model.config
    ids = _ids(fam, model, 2, 33)
    with torch.no_grad():
        torch.testing.assert_close(back(ids), model(ids), rtol=0, atol=0)


@pytest.mark.parametrize("fam", FAMILIES, ids=IDS)
def test_lora_changes_only_the_adapters(fam):
    model = _tiny(fam).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, LoraSettings(enabled=True, r=2, alpha=4.0, trainable=[]))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    ids = _ids(fam, model, 2, 24)
    for _ in range(2):  # the first step moves B off zero, the second gives A a gradient too
        opt.zero_grad()
        model(ids).float().logsumexp(-1).mean().backward()
        opt.step()
    after = model.state_dict()
    for k, v in before.items():
        key = k if k in after else k.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(after[key], v), f"base tensor {k} changed"
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in model.named_parameters() if ".lora_B." in n)


CAUSAL = [f for f in FAMILIES if f.causal]


@pytest.mark.parametrize("fam", CAUSAL, ids=[f.name for f in CAUSAL])
@pytest.mark.parametrize("prompt", [1, 9])
def test_full_forward_equals_prefill_then_steps(fam, prompt):
    model = _tiny(fam, torch.float64)
    L = 24
    ids = _ids(fam, model, 2, L, seed=prompt)
    with torch.no_grad():
        want = model(ids)
        state = model.allocate_state(2, L)
        got = [model(ids[:, :prompt], state=state)]
        for t in range(prompt, L):
            got.append(model(ids[:, t: t + 1], state=state))
    torch.testing.assert_close(torch.cat(got, dim=1), want, rtol=0, atol=FLOAT64_ATOL)


@pytest.mark.parametrize("fam", CAUSAL, ids=[f.name for f in CAUSAL])
@pytest.mark.parametrize("chunk", [1, 7, 40])
def test_chunked_equals_one_pass(fam, chunk):
    from dnalm.inference.chunked import chunked_forward

    model = _tiny(fam, torch.float64)
    ids = _ids(fam, model, 2, 57, seed=chunk)
    with torch.no_grad():
        want, (want_h,) = model.forward_with_hidden(ids, [-1])
    got, (got_h,) = chunked_forward(model, ids, chunk, [-1])
    torch.testing.assert_close(got, want, rtol=0, atol=FLOAT64_ATOL)
    torch.testing.assert_close(got_h, want_h, rtol=0, atol=FLOAT64_ATOL)


def _random_splits(L: int, seed: int) -> list[tuple[int, int]]:
    """Consecutive (start, end) pieces of 0..L of random lengths (single tokens among them)."""
    g = torch.Generator().manual_seed(seed)
    cuts = sorted(set(torch.randint(1, L, (L // 4,), generator=g).tolist()) | {1})
    bounds = [0, *cuts, L]
    return list(zip(bounds[:-1], bounds[1:]))


@pytest.mark.parametrize("fam", CAUSAL, ids=[f.name for f in CAUSAL])
def test_every_mixer_chunk_equals_its_one_pass_forward(fam):
    """The chunk contract (dnalm.models.mixer): within the trained context, a mixer's chunks, one after
    another with one carry, are its one-pass forward (float64); the same chunks with a fresh carry each are
    not (the carry is what makes them exact)."""
    from dnalm.models.mixer import chunker

    model = _tiny(fam, torch.float64)
    context = fam.context_length(model.config)
    L = 45 if context is None else min(45, context)  # a recurrent family has no trained context limit
    for i, block in enumerate(model.backbone.layers):
        mixer = chunker(block.mixer)
        g = torch.Generator().manual_seed(i)
        u = torch.randn(2, L, model.lm_head.weight.shape[1], generator=g, dtype=torch.float64)
        splits = _random_splits(L, seed=i)
        with torch.no_grad():
            want = block.mixer(u)
            carry = mixer.chunk_carry(2, L, context, u.device, u.dtype)
            got = torch.cat([mixer.chunk(u[:, a:b], carry, a) for a, b in splits], dim=1)
            fresh = torch.cat([mixer.chunk(u[:, a:b], mixer.chunk_carry(2, L, context, u.device, u.dtype), a)
                               for a, b in splits], dim=1)
        torch.testing.assert_close(got, want, rtol=0, atol=FLOAT64_ATOL, msg=lambda m, i=i: f"layer {i}: {m}")
        assert (fresh - want).abs().max() > 1e-6, f"layer {i}: chunks without the carry agree"


def test_every_family_has_a_shipped_config():
    shipped = {yaml.safe_load(p.read_text()).get("family") for p in CONF.rglob("*.yaml")}
    assert set(IDS) <= shipped, f"families without a conf/model YAML: {set(IDS) - shipped}"


@pytest.mark.parametrize("path", sorted(CONF.rglob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_model_config_composes_and_builds(path):
    from dnalm.recipes.train import build_model

    node = yaml.safe_load(path.read_text())
    model = build_model(node, max_length=1024, device="meta")
    assert model.family == node["family"]
