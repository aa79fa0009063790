"""Mamba and Caduceus (dnalm.models.mamba): the scans against a sequential loop, the models against fixtures
made with mamba_ssm's own modules (tests/fixtures/mamba_tiny/README.md), exact RC-equivariance, the hub layout
and parameter counts of the released configs. Generic checks (save/load, LoRA, prefill + steps, chunked
inference) are in test_families.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dnalm.errors import InputError
from dnalm.models.blocks import count_parameters
from dnalm.models.io import load_pretrained
from dnalm.models.mamba import (
    BiMamba,
    CaduceusConfig,
    CaduceusLM,
    MambaConfig,
    MambaLM,
    count_parameters_of_config,
    selective_scan,
    selective_scan_cumsum,
    selective_scan_ref,
    selective_scan_sequential,
    to_caduceus_hub_state_dict,
)
from tolerance import FLOAT64_ATOL

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mamba_tiny"


def _scan_inputs(b=2, E=6, N=4, L=37, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)

    A = -torch.rand(E, N, generator=g, dtype=torch.float64).to(device=device) * 4 - 0.1
    return dict(u=r(b, E, L), delta=r(b, E, L), A=A, B=r(b, N, L), C=r(b, N, L), D=r(E), z=r(b, E, L),
                delta_bias=r(E))


@pytest.mark.parametrize("chunk", [1, 4, 16, 64])
def test_chunked_scan_equals_the_sequential_loop(chunk):
    x = _scan_inputs()
    state = torch.randn(2, 6, 4, dtype=torch.float64)
    want, want_h = selective_scan_sequential(**x, state=state)
    got, got_h = selective_scan_ref(**x, state=state, chunk=chunk)
    torch.testing.assert_close(got, want, rtol=0, atol=FLOAT64_ATOL)
    torch.testing.assert_close(got_h, want_h, rtol=0, atol=FLOAT64_ATOL)


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_cumsum_scan_equals_the_sequential_loop(chunk):
    """The cumulative-sum scan (CPU inference) against the sequential one in float64 (1e-10), with a state;
    with decays so steep that every chunk must be halved down to single positions, still equal; in float32,
    equal to float32 rounding; and selective_scan takes it on a CPU without gradients, the sequential loop
    with them."""
    x = _scan_inputs(L=150)
    state = torch.randn(2, 6, 4, dtype=torch.float64)
    want, want_h = selective_scan_sequential(**x, state=state)
    got, got_h = selective_scan_cumsum(**x, state=state, chunk=chunk)
    torch.testing.assert_close(got, want, rtol=0, atol=FLOAT64_ATOL)
    torch.testing.assert_close(got_h, want_h, rtol=0, atol=FLOAT64_ATOL)
    steep = {**x, "A": x["A"] * 400, "delta_bias": x["delta_bias"].abs() + 2}  # |delta A| of hundreds per step
    torch.testing.assert_close(selective_scan_cumsum(**steep, chunk=chunk)[0], selective_scan_sequential(**steep)[0],
                               rtol=0, atol=FLOAT64_ATOL)
    x32 = {k: v.float() for k, v in x.items()}
    want32 = selective_scan_sequential(**x32)[0]
    torch.testing.assert_close(selective_scan_cumsum(**x32, chunk=chunk)[0], want32, rtol=1e-5,
                               atol=1e-5 * float(want32.abs().max()))
    with torch.no_grad():
        torch.testing.assert_close(selective_scan(**x)[0], selective_scan_cumsum(**x)[0], rtol=0, atol=0)
    grad_u = x["u"].clone().requires_grad_(True)
    y, _ = selective_scan(**{**x, "u": grad_u})
    assert y.requires_grad
    torch.testing.assert_close(y.detach(), selective_scan_sequential(**x)[0], rtol=0, atol=0)


def test_scan_continues_from_its_last_state():
    x = _scan_inputs(L=30)
    want, want_h = selective_scan_ref(**x)
    first = {k: (v[..., :11] if v.dim() == 3 else v) for k, v in x.items()}
    rest = {k: (v[..., 11:] if v.dim() == 3 else v) for k, v in x.items()}
    y1, h1 = selective_scan_ref(**first)
    y2, h2 = selective_scan_ref(**rest, state=h1)
    torch.testing.assert_close(torch.cat([y1, y2], -1), want, rtol=0, atol=FLOAT64_ATOL)
    torch.testing.assert_close(h2, want_h, rtol=0, atol=FLOAT64_ATOL)


def test_chunked_scan_gradients_equal_the_loop():
    x = {k: v.requires_grad_() for k, v in _scan_inputs(L=13).items()}
    grads = []
    for fn in (selective_scan_sequential, lambda **kw: selective_scan_ref(**kw, chunk=5)):
        y, _ = fn(**x)
        grads.append(torch.autograd.grad((y * y.detach().sin()).sum(), list(x.values())))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=FLOAT64_ATOL)


def test_large_decays_do_not_overflow():
    """exp(S_t - S_s) is formed only for s <= t: a chunk whose cumulative decay is -1e4 gives zeros, not NaN."""
    x = _scan_inputs(L=40, dtype=torch.float32)
    x["delta_bias"] = torch.full((6,), 200.0)
    want, _ = selective_scan_sequential(**x)
    got, _ = selective_scan_ref(**x, chunk=40)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton scan runs on CUDA only")
@pytest.mark.parametrize("with_state", [False, True])
def test_triton_scan_matches_the_reference_on_cuda(with_state):
    pytest.importorskip("triton")
    from dnalm.kernels.selective_scan_triton import selective_scan_triton

    x = _scan_inputs(b=3, E=70, N=16, L=101, dtype=torch.float32, device="cuda")
    state = torch.randn(3, 70, 16, device="cuda") if with_state else None
    want, want_h = selective_scan_ref(**x, state=state)
    got, got_h = selective_scan_triton(**x, state=state)
    scale = float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * max(scale, 1.0))
    torch.testing.assert_close(got_h, want_h, rtol=0, atol=1e-5 * max(float(want_h.abs().max()), 1.0))
    with torch.no_grad():  # the dispatcher picks a CUDA path (mamba_ssm or Triton) and agrees too
        y, _ = selective_scan(**x, state=state)
    torch.testing.assert_close(y, want, rtol=0, atol=1e-5 * max(scale, 1.0))


# ---------------------------------------------------------------------------------------------
# Fixtures from mamba_ssm
# ---------------------------------------------------------------------------------------------


def test_mamba_matches_the_mamba_ssm_fixture_in_one_pass_and_step_by_step():
    model = load_pretrained(FIXTURES / "mamba")
    assert isinstance(model, MambaLM) and model.config.padded_vocab_size == 16
    e = load_file(FIXTURES / "mamba" / "expected.safetensors")
    ids = e["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(ids), e["logits"], rtol=0, atol=1e-5)
        state = model.allocate_state(2)
        steps = [model(ids[:, :5], state=state)] + [model(ids[:, t: t + 1], state=state) for t in range(5, 24)]
    torch.testing.assert_close(torch.cat(steps, 1), e["step_logits"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name, rcps, fused", [("caduceus_ph", False, False), ("caduceus_ps", True, False),
                                               ("caduceus_ps_fused", True, True)])
def test_caduceus_matches_the_fixture(name, rcps, fused):
    model = load_pretrained(FIXTURES / name)
    assert isinstance(model, CaduceusLM)
    assert (model.config.rcps, model.config.fused_add_norm) == (rcps, fused)
    e = load_file(FIXTURES / name / "expected.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(model(e["input_ids"]), e["logits"], rtol=0, atol=1e-5)


def test_convert_caduceus_hub_checkpoint_to_dnalm_format(tmp_path, capsys):
    from omegaconf import OmegaConf

    from dnalm.recipes.convert import main

    out = tmp_path / "converted"
    assert main(OmegaConf.create({"src": str(FIXTURES / "caduceus_ps"), "out": str(out)})) == 0
    assert "CaduceusLM" in capsys.readouterr().out
    model = load_pretrained(out)
    e = load_file(FIXTURES / "caduceus_ps" / "expected.safetensors")
    assert json.loads((out / "config.json").read_text())["family"] == "caduceus"
    with torch.no_grad():
        torch.testing.assert_close(model(e["input_ids"]), e["logits"], rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Caduceus
# ---------------------------------------------------------------------------------------------


def _caduceus(**overrides) -> CaduceusLM:
    torch.manual_seed(0)
    model = CaduceusLM(CaduceusConfig.preset("tiny", **overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("fused", [False, True])
def test_rcps_outputs_are_exactly_reverse_complement_equivariant(fused):
    """Equal by construction: the reverse complement reruns the same computations, at mirrored positions. A
    BLAS kernel may round a row by its position in the matrix (AVX2 paths do), so this is checked in float64
    at the exactness bound rather than bit for bit."""
    model = _caduceus(rcps=True, fused_add_norm=fused).double()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 12, (3, 41), generator=g)  # bases, N and specials (their own complements)
    rc = model.reverse_complement(ids)
    assert torch.equal(rc[0], torch.tensor([{7: 10, 10: 7, 8: 9, 9: 8}.get(int(i), int(i)) for i in ids[0].flip(0)]))
    with torch.no_grad():
        logits, (emb, h) = model.forward_with_hidden(ids, [0, -1])
        logits_rc, (emb_rc, h_rc) = model.forward_with_hidden(rc, [0, -1])
    comp = model.complement
    exact = {"rtol": 0.0, "atol": FLOAT64_ATOL}
    # logits(rc x)[t, v] = logits(x)[L-1-t, comp v]
    torch.testing.assert_close(logits_rc, logits.flip(1)[..., comp], **exact)
    torch.testing.assert_close(h_rc, h.flip(1, 2), **exact)  # the 2D layout [s1, flip(s2)]: rc flips it whole
    assert (logits_rc - logits.flip(1)).abs().max() > 1e-3  # without the complement it does not hold
    assert h.shape[-1] == 2 * model.config.d_model


def test_without_rcps_outputs_are_not_equivariant():
    model = _caduceus(rcps=False)
    ids = torch.randint(7, 11, (2, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        gap = (model(model.reverse_complement(ids)) - model(ids).flip(1)[..., model.complement]).abs().max()
    assert gap > 1e-3


def test_bimamba_ties_projections_and_combines_both_directions():
    cfg = CaduceusConfig.preset("tiny", bidirectional_strategy="ew_multiply").__class__(
        d_model=16, n_layer=1, bidirectional_strategy="ew_multiply")
    torch.manual_seed(3)
    mixer = BiMamba(cfg).double()
    assert mixer.mamba_rev.projections() == (mixer.mamba_fwd.in_proj, mixer.mamba_fwd.out_proj)
    assert not hasattr(mixer.mamba_rev, "in_proj") and mixer.mamba_rev.x_proj is not mixer.mamba_fwd.x_proj
    u = torch.randn(2, 9, 16, dtype=torch.double)
    with torch.no_grad():
        want = mixer.mamba_fwd(u) * mixer.mamba_rev(u.flip(1)).flip(1)
        torch.testing.assert_close(mixer(u), want, rtol=0, atol=0)
    untied = BiMamba(CaduceusConfig(d_model=16, n_layer=1, bidirectional_weight_tie=False))
    assert untied.mamba_rev.in_proj is not untied.mamba_fwd.in_proj


def test_lora_on_tied_projections_serves_both_directions():
    from dnalm.models.lora import LoraSettings, apply_lora

    model = _caduceus()
    apply_lora(model, LoraSettings(enabled=True, r=2, alpha=4.0, trainable=[]))
    mixer = model.backbone.layers[0].mixer
    assert mixer.mamba_rev.projections() == (mixer.mamba_fwd.in_proj, mixer.mamba_fwd.out_proj)
    assert hasattr(mixer.mamba_fwd.in_proj, "lora_A")
    with torch.no_grad():
        mixer.mamba_fwd.in_proj.lora_B["default"].weight.normal_()
    u = torch.randn(1, 7, model.config.d_model)
    y = mixer.mamba_rev(u)
    y.sum().backward()
    assert mixer.mamba_fwd.in_proj.lora_A["default"].weight.grad.abs().sum() > 0


def test_padded_rows_equal_the_rows_alone():
    model = _caduceus(rcps=True).double()
    ids = torch.randint(7, 11, (2, 20), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, :6] = 0  # left padding
    with torch.no_grad():
        got = model(ids, attention_mask=mask)
        alone = model(ids[1:, 6:])
        full = model(ids[:1])
    # float64 at the exactness bound: a kernel may round a row by the batch it is in
    torch.testing.assert_close(got[1, 6:], alone[0], rtol=0, atol=FLOAT64_ATOL)
    torch.testing.assert_close(got[0], full[0], rtol=0, atol=FLOAT64_ATOL)
    assert torch.equal(got[1, :6], torch.zeros_like(got[1, :6]))


def test_hub_layout_round_trip_for_every_variant(tmp_path):
    for i, (rcps, fused) in enumerate([(False, False), (True, False), (True, True)]):
        model = _caduceus(rcps=rcps, fused_add_norm=fused)
        d = tmp_path / f"v{i}"
        d.mkdir()
        sd = {k: v.contiguous().clone() for k, v in to_caduceus_hub_state_dict(model).items()}
        assert ("caduceus.backbone.layers.0.mixer.submodule.mamba_rev.in_proj.weight" in sd) == rcps
        assert ("caduceus.backbone.layers.0.norm.submodule.weight" in sd) == (rcps and not fused)
        save_file(sd, str(d / "model.safetensors"))
        cfg = model.config
        (d / "config.json").write_text(json.dumps({
            "model_type": "caduceus", "d_model": cfg.d_model, "n_layer": cfg.n_layer, "vocab_size": cfg.vocab_size,
            "ssm_cfg": {"d_state": cfg.d_state, "dt_rank": "auto"}, "rms_norm": True, "fused_add_norm": fused,
            "residual_in_fp32": True, "rcps": rcps, "bidirectional": True, "bidirectional_weight_tie": True,
            "complement_map": {"7": 10, "8": 9, "9": 8, "10": 7}}))
        back = load_pretrained(d)
        ids = torch.randint(7, 12, (2, 15))
        with torch.no_grad():
            torch.testing.assert_close(back(ids), model(ids), rtol=0, atol=0)


def test_hub_config_errors_name_the_file(tmp_path):
    src = FIXTURES / "caduceus_ph"
    (tmp_path / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    meta = json.loads((src / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**meta, "rms_norm": False}))
    with pytest.raises(InputError, match="config.json: rms_norm false"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**meta, "complement_map": {"7": 8}}))
    with pytest.raises(InputError, match="config.json: .*complement_map"):
        load_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------------


def test_parameter_counts_of_released_and_shipped_sizes():
    # caduceus-ps/ph 131k (d 256, 16 layers, E 512, N 16, R 16, K 4, vocab 16), by hand:
    shared = 256 * 1024 + 512 * 256                                  # in_proj + out_proj, tied
    per_direction = 512 * 4 + 512 + 512 * (16 + 32) + 16 * 512 + 512 + 512 * 16 + 512  # conv, x/dt_proj, A_log, D
    want = 16 * 256 + 16 * (shared + 2 * per_direction + 256) + 256  # embedding (head tied), layers, norm_f
    assert want == 7_725_312
    for name in ("ps-131k", "ph-131k"):
        cfg = CaduceusConfig.preset(name)
        assert count_parameters_of_config(cfg) == want
        assert count_parameters(CaduceusLM(cfg, device="meta")) == want
    # the CPU fixture size of the reference notes (d 32, 2 layers): about 28 k
    assert count_parameters(CaduceusLM(CaduceusConfig.preset("tiny"))) == 28_000
    for cls, cfg_cls in ((MambaLM, MambaConfig), (CaduceusLM, CaduceusConfig)):
        for name in cfg_cls.presets():
            cfg = cfg_cls.preset(name)
            assert count_parameters(cls(cfg, device="meta")) == count_parameters_of_config(cfg)
    for cfg in (MambaConfig(d_model=24, n_layer=3, bias=True, conv_bias=False, dt_rank=5, d_state=7, expand=3),
                CaduceusConfig(d_model=24, n_layer=2, bias=True, bidirectional_weight_tie=False),
                CaduceusConfig(d_model=24, n_layer=2, bidirectional=False)):
        model = (MambaLM if isinstance(cfg, MambaConfig) else CaduceusLM)(cfg, device="meta")
        assert count_parameters(model) == count_parameters_of_config(cfg)
    # the shipped small configs are about HyenaDNA-small's size (0.87 M) and far below 7 M
    assert count_parameters_of_config(MambaConfig.preset("small")) == 818_432
    assert count_parameters_of_config(CaduceusConfig.preset("small")) == 810_880


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["mamba", "caduceus"])
def test_loss_falls_on_a_periodic_sequence(family):
    """A few Adam steps on a period-5 sequence: next-token loss (mamba) or masked-token loss (caduceus, BERT
    masking of dnalm.models.dnabert2.mlm_mask with the tokenizer's alphabet) falls well below its start."""
    from dnalm.models.dnabert2 import mlm_mask
    from dnalm.models.families import family as family_named

    fam = family_named(family)
    torch.manual_seed(0)
    model = fam.build(fam.config_cls.preset("tiny")).train()
    alphabet = fam.tokenizer(model.config).alphabet
    motif = torch.tensor([alphabet.base_id(b) for b in "ACGTT"])
    ids = motif.repeat(4, 5)[:, :24]  # (4, 24)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(15):
        if fam.causal:
            logits = model(ids[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        else:
            masked, labels = mlm_mask(ids, alphabet, rate=0.25, generator=g)
            loss = torch.nn.functional.cross_entropy(model(masked).flatten(0, 1), labels.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses
