"""StripedHyena 2 (Evo 2) against vortex's golden fixture, independent references and its own recurrent forms.

Tolerances. Float64 checks of identities that are exact in real arithmetic (parallel == prefill + steps,
chunked == unchunked, recurrence == convolution) use 1e-10. Float32 runs of the same identities use
``16 eps32 sqrt(L) max|logits|``: rounding errors of the sums over up to L positions (FFT convolutions,
modal states, attention) grow like sqrt(L), 16 covers the dozen roundings per block, and logits set the scale.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from conftest import needs_cxx
from dnalm.errors import ConfigError, InputError
from dnalm.inference.state import InferenceState
from dnalm.models.blocks import CausalLM, count_parameters
from dnalm.models.family import Family
from dnalm.models.stripedhyena import (
    BYTE_ALPHABET,
    FAMILY,
    PRESETS,
    ByteTokenizer,
    ExplicitFilter,
    GatedMLP,
    ModalFilter,
    RMSNorm,
    RotaryAttention,
    StripedHyenaConfig,
    StripedHyenaLM,
    causal_fir,
    count_parameters_of_config,
    detect_vortex,
    fir_step,
    flops_per_token,
    load_vortex,
    pattern_fields,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads cost more than they save

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "stripedhyena2_tiny"
EPS32 = torch.finfo(torch.float32).eps
EXACT = {"atol": 1e-10, "rtol": 0.0}


def _tol32(L: int, reference: torch.Tensor) -> dict[str, float]:
    return {"atol": 16 * EPS32 * math.sqrt(L) * reference.abs().max().item(), "rtol": 0.0}


@pytest.fixture(scope="module")
def outputs() -> dict:
    return torch.load(FIXTURE / "outputs.pt", weights_only=True)


@pytest.fixture(scope="module")
def fixture_model() -> StripedHyenaLM:
    # model.pt is vortex's state_dict(): Wqkv rows already in (q|k|v, head, d_h) order (see its README)
    return load_vortex(FIXTURE / "model.pt", overrides={"column_split": False})


def _small(pattern: str, **overrides) -> StripedHyenaConfig:
    fields = {"hidden_size": 32, "num_attention_heads": 2, "inner_mlp_size": 48, "hcs_filter_groups": 4,
              "hcm_filter_groups": 4, "state_size": 4, "max_seqlen": 256, **overrides}
    return StripedHyenaConfig.preset("tiny", pattern=pattern, **fields)


@torch.no_grad()
def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights at scales where every path moves the logits: unit-variance activations, decaying poles."""
    g = torch.Generator().manual_seed(seed)

    def draw(shape, std=1.0):
        return torch.randn(shape, generator=g, dtype=torch.float64) * std

    for name, p in model.named_parameters():
        if name.endswith("log_poles"):
            p.copy_(-torch.empty(p.shape, dtype=torch.float64).uniform_(0.01, 0.5, generator=g))
        elif name.endswith("residues"):
            p.copy_(draw(p.shape, 0.5))
        elif p.ndim == 2:
            p.copy_(draw(p.shape, 1 / math.sqrt(p.shape[1])))
        elif name.endswith((".h", "short_filter_weight")):
            p.copy_(draw(p.shape, 0.4))
        elif name.endswith(("norm.weight", "ln_f.weight")):
            p.copy_(1 + draw(p.shape, 0.1))
        else:
            p.copy_(draw(p.shape))
    return model


def _model(pattern: str, dtype: torch.dtype = torch.float64, seed: int = 0, **overrides) -> StripedHyenaLM:
    torch.manual_seed(seed)
    return _randomize(StripedHyenaLM(_small(pattern, **overrides), dtype=dtype), seed).eval()


def _ids(B: int, L: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 512, (B, L), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# The vortex fixture
# ---------------------------------------------------------------------------------------------


def test_fixture_parallel_logits(fixture_model, outputs):
    with torch.no_grad():
        logits = fixture_model(outputs["input_ids"])
    torch.testing.assert_close(logits, outputs["logits"], atol=1e-5, rtol=1e-5)


def test_fixture_prefill_then_steps(fixture_model, outputs):
    ids, P = outputs["input_ids"], int(outputs["prefill"])
    state = fixture_model.allocate_state(ids.shape[0], ids.shape[1])
    with torch.no_grad():
        chunks = [fixture_model(ids[:, :P], state)]
        chunks += [fixture_model(ids[:, t: t + 1], state) for t in range(P, ids.shape[1])]
    assert state.offset == ids.shape[1]
    torch.testing.assert_close(torch.cat(chunks, 1), outputs["cached_logits"], atol=1e-4, rtol=1e-4)


def test_fixture_config_fields(fixture_model):
    cfg = fixture_model.config
    assert cfg.pattern == "SDH*S" and cfg.hidden_size == 64 and cfg.num_attention_heads == 4
    assert cfg.hcm_filter_length == 128 and cfg.state_size == 16 and cfg.eps == 1e-6
    assert fixture_model.lm_head.weight is fixture_model.backbone.embeddings.word_embeddings.weight
    assert not fixture_model.training


def _checkpoint_layout(sd: dict, heads: int) -> dict:
    """The fixture's state dict as the released files hold it: Wqkv rows in Megatron's (head, q|k|v, d_h)
    order, a Transformer Engine ``_extra_state`` byte buffer, the exporter's ``unembed.weight``."""
    out = {}
    for key, value in sd.items():
        if key.endswith("inner_mha_cls.Wqkv.weight"):
            d = value.shape[1]
            value = value.reshape(3, heads, d // heads, d).transpose(0, 1).reshape(3 * d, d).contiguous()
        out[key] = value
    out["blocks.0.projections._extra_state"] = io.BytesIO(b"fp8 metadata")
    out["unembed.weight"] = sd["embedding_layer.weight"].clone()
    return out


@pytest.fixture(scope="module")
def released_layout(tmp_path_factory) -> Path:
    """A directory like a released checkpoint: evo2-*.yml (YAML, column_split true) + one .pt file."""
    directory = tmp_path_factory.mktemp("vortex")
    cfg = json.loads((FIXTURE / "config.json").read_text())
    sd = torch.load(FIXTURE / "model.pt", weights_only=True)
    torch.save(_checkpoint_layout(sd, cfg["num_attention_heads"]), directory / "evo2_tiny_base.pt")
    (directory / "evo2-tiny.yml").write_text(yaml.safe_dump(cfg))
    return directory


def test_released_layout_loads_like_vortex(released_layout, outputs):
    assert detect_vortex(released_layout, None)
    model = load_vortex(released_layout)
    with torch.no_grad():
        torch.testing.assert_close(model(outputs["input_ids"]), outputs["logits"], atol=1e-5, rtol=1e-5)
        # control: without the row reordering the same file gives other logits
        wrong = load_vortex(released_layout, overrides={"column_split": False})(outputs["input_ids"])
    assert (wrong - outputs["logits"]).abs().max() > 0.1


def test_detect_vortex(tmp_path, released_layout):
    cfg = json.loads((FIXTURE / "config.json").read_text())
    assert detect_vortex(FIXTURE, cfg)
    assert not detect_vortex(tmp_path, None)
    (tmp_path / "model.pt").write_bytes(b"")
    assert not detect_vortex(tmp_path, {"format": "dnalm-model/1", "family": "hyena", "config": {}})
    assert not detect_vortex(released_layout / "evo2_tiny_base.pt", None)


def _write(directory: Path, sd: dict, cfg: dict | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    cfg = cfg if cfg is not None else json.loads((FIXTURE / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(cfg))
    torch.save(sd, directory / "model.pt")
    return directory / "model.pt"


@pytest.mark.parametrize("change, message", [
    (lambda sd, cfg: sd.pop("blocks.2.filter.residues"), "missing key blocks.2.filter.residues"),
    (lambda sd, cfg: sd.__setitem__("blocks.1.filter.h", torch.zeros(16, 1, 64)), "key blocks.1.filter.h: shape"),
    (lambda sd, cfg: sd.__setitem__("blocks.9.filter.h", torch.zeros(1)), "key blocks.9.filter.h does not fit"),
    (lambda sd, cfg: sd.__setitem__("blocks.0.extra.weight", torch.zeros(1)), "unexpected key blocks.0.extra"),
    (lambda sd, cfg: sd.__setitem__("norm.scale", [1.0, 2.0]), "key norm.scale: expected a tensor"),
    (lambda sd, cfg: cfg.pop("hcl_layer_idxs") and cfg.__setitem__("hcl_layer_idxs", None), "hcl_layer_idxs"),
    (lambda sd, cfg: cfg.pop("state_size"), "missing vortex config field 'state_size'"),
    (lambda sd, cfg: cfg.__setitem__("proj_groups", 2), "proj_groups: 2 is not supported"),
    (lambda sd, cfg: cfg.__setitem__("num_filters", 7), "num_filters"),
])
def test_bad_checkpoints_name_file_and_key(tmp_path, change, message):
    sd = torch.load(FIXTURE / "model.pt", weights_only=True)
    cfg = json.loads((FIXTURE / "config.json").read_text())
    change(sd, cfg)
    file = _write(tmp_path / "ckpt", sd, cfg)
    with pytest.raises(InputError, match=message) as info:
        load_vortex(file)
    assert str(tmp_path / "ckpt") in str(info.value) and "\n" not in str(info.value)


def test_other_layouts_and_unsafe_files_are_refused(tmp_path):
    savanna = _write(tmp_path / "savanna", {"sequential.0.word_embeddings.weight": torch.zeros(512, 64)})
    with pytest.raises(InputError, match="savanna"):
        load_vortex(savanna)
    nemo = _write(tmp_path / "nemo", {"decoder.layers.0.mixer.dense.weight": torch.zeros(64, 64)})
    with pytest.raises(InputError, match="NeMo2"):
        load_vortex(nemo)
    (tmp_path / "dcp" / "weights").mkdir(parents=True)
    with pytest.raises(InputError, match="torch_dist"):
        load_vortex(tmp_path / "dcp")
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "evo2_7b.pt.part0").write_bytes(b"x")
    with pytest.raises(InputError, match="join the parts"):
        load_vortex(shards)
    evil = _write(tmp_path / "evil", {"x": math.floor})
    with pytest.raises(InputError, match="refusing to unpickle"):
        load_vortex(evil)
    junk = tmp_path / "junk" / "model.pt"
    _write(junk.parent, {})
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=str(junk)):
        load_vortex(junk)
    with pytest.raises(ConfigError, match="unknown override 'hiden_size'"):
        load_vortex(FIXTURE / "model.pt", overrides={"hiden_size": 8})
    bad_yaml = tmp_path / "yaml"
    bad_yaml.mkdir()
    (bad_yaml / "model.pt").write_bytes(b"")
    (bad_yaml / "evo2.yml").write_text("hidden_size: [1\n")
    with pytest.raises(InputError, match="no vortex config"):
        load_vortex(bad_yaml)


# ---------------------------------------------------------------------------------------------
# Exactness of the recurrent and chunked forms
# ---------------------------------------------------------------------------------------------

PATTERNS = ["SS", "DD", "HH", "**", "SDH*"]


def _prefill_then_steps(model: StripedHyenaLM, ids: torch.Tensor, prefill: int) -> torch.Tensor:
    state = model.allocate_state(ids.shape[0], ids.shape[1])
    out = [model(ids[:, :prefill], state)]
    out += [model(ids[:, t: t + 1], state) for t in range(prefill, ids.shape[1])]
    return torch.cat(out, 1)


def _chunked(model: StripedHyenaLM, ids: torch.Tensor, sizes: list[int], carry: bool = True) -> torch.Tensor:
    state = model.allocate_state(ids.shape[0], ids.shape[1]) if carry else None
    out, start = [], 0
    for size in sizes:
        out.append(model(ids[:, start: start + size], state))
        start += size
    assert start == ids.shape[1]
    return torch.cat(out, 1)


# 140 tokens: longer than the 128-tap medium filters, so their truncation and history both matter
@pytest.mark.parametrize("pattern", PATTERNS)
def test_parallel_equals_prefill_and_steps_float64(pattern):
    model, ids = _model(pattern), _ids(2, 140)
    with torch.no_grad():
        full = model(ids)
        torch.testing.assert_close(_prefill_then_steps(model, ids, 125), full, **EXACT)


@pytest.mark.parametrize("pattern", ["SDH*"])
def test_parallel_equals_prefill_and_steps_float32(pattern):
    model, ids = _model(pattern, dtype=torch.float32), _ids(2, 140)
    with torch.no_grad():
        full = model(ids)
        torch.testing.assert_close(_prefill_then_steps(model, ids, 125), full, **_tol32(140, full))


@pytest.mark.parametrize("pattern", PATTERNS)
def test_chunked_equals_unchunked_float64(pattern):
    model, ids = _model(pattern), _ids(2, 140)
    sizes = [5, 1, 17, 2, 60, 55]
    with torch.no_grad():
        full = model(ids)
        torch.testing.assert_close(_chunked(model, ids, sizes), full, **EXACT)
        # control: chunks without the carried state differ
        assert (_chunked(model, ids, sizes, carry=False) - full).abs().max() > 1e-2


def test_hidden_states_through_chunks_float64():
    model, ids = _model("SDH*"), _ids(1, 60)
    with torch.no_grad():
        logits, hidden = model.forward_with_hidden(ids, None)
        state = model.allocate_state(1, 60)
        first = model.forward_with_hidden(ids[:, :23], None, state)
        second = model.forward_with_hidden(ids[:, 23:], None, state)
    torch.testing.assert_close(torch.cat([first[0], second[0]], 1), logits, **EXACT)
    assert len(hidden) == model.config.num_layers + 2
    for i, h in enumerate(hidden):
        torch.testing.assert_close(torch.cat([first[1][i], second[1][i]], 1), h, **EXACT)
    torch.testing.assert_close(model.lm_head(hidden[-1]), logits, **EXACT)
    torch.testing.assert_close(model.hidden_states(ids, [0])[0],
                               model.backbone.embeddings(ids), **EXACT)


def test_state_select_keeps_rows():
    model, ids = _model("SDH*"), _ids(3, 30)
    with torch.no_grad():
        full = model(ids)
        state = model.allocate_state(3, 30)
        model(ids[:, :20], state)
        picked = state.select(torch.tensor([2, 0]))
        rest = model(ids[[2, 0], 20:], picked)
    torch.testing.assert_close(rest, full[[2, 0], 20:], **EXACT)
    assert isinstance(state, InferenceState)


def test_attention_cache_is_bounded():
    model, ids = _model("SH*"), _ids(1, 10)
    state = model.allocate_state(1, 8)
    with pytest.raises(ConfigError, match="max_len 8"), torch.no_grad():
        model(ids, state)


# ---------------------------------------------------------------------------------------------
# Operators against independent references
# ---------------------------------------------------------------------------------------------


def _toeplitz_conv(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """y[b, c, t] = sum_{s <= t} h[c, t - s] x[b, c, s] by an explicit lower-triangular matrix."""
    L = x.shape[-1]
    lag = torch.arange(L)[:, None] - torch.arange(L)[None, :]  # t - s
    T = torch.where(lag >= 0, h[:, lag.clamp(min=0)], torch.zeros(()))  # (C, L, L)
    return torch.einsum("cts,bcs->bct", T, x)


@pytest.mark.parametrize("block", [1, 4, 7, None])  # positions per block of the stateful path (None: default)
def test_modal_filter_recurrence_equals_fft_convolution(monkeypatch, block):
    import dnalm.models.stripedhyena as sh

    if block is not None:  # 7 divides neither piece (31, 39): the padded last block
        monkeypatch.setattr(sh, "MODAL_BLOCK", block)
    torch.manual_seed(0)
    d, N, L = 6, 5, 70
    f = ModalFilter(d, N, dtype=torch.float64)
    with torch.no_grad():
        f.log_poles.copy_(-torch.rand(d, N, 1, dtype=torch.float64) * 0.3 - 0.005)
        f.residues.copy_(torch.randn(d, N, dtype=torch.float64))
        f.D.copy_(torch.randn(d, dtype=torch.float64))
        x = torch.randn(2, d, L, dtype=torch.float64)
        fft = f(x)
        # independent: the filter from its definition, all modes at once, and a direct convolution
        t = torch.arange(L, dtype=torch.float64)
        h = (f.residues[..., None] * torch.exp(f.log_poles * t)).sum(1)
        torch.testing.assert_close(f.filter(L, torch.float64), h, **EXACT)
        torch.testing.assert_close(fft, _toeplitz_conv(x, h) + f.D[:, None] * x, **EXACT)
        state = f.allocate(2, x.device, torch.float64)
        steps = torch.stack([f.step(x[..., i], state) for i in range(L)], -1)
        torch.testing.assert_close(steps, fft, **EXACT)
        # the state after the steps is the definition sum_t' p^(L-1-t') x_t'
        s_ref = torch.einsum("bdl,dnl->bdn", x, torch.exp(f.log_poles * (L - 1 - t)))
        torch.testing.assert_close(state, s_ref, **EXACT)
        # a chunk after a prefill: the prefill's state and its contribution to the chunk
        state = f.allocate(2, x.device, torch.float64)
        split = torch.cat([f(x[..., :31], state), f(x[..., 31:], state)], -1)
        torch.testing.assert_close(split, fft, **EXACT)
        torch.testing.assert_close(state, s_ref, **EXACT)
        # pieces shorter and longer than a block, one position among them
        state = f.allocate(2, x.device, torch.float64)
        cuts = [0, 1, 3, 12, 13, 45, L]
        pieces = torch.cat([f(x[..., a:e], state) for a, e in zip(cuts, cuts[1:], strict=False)], -1)
        torch.testing.assert_close(pieces, fft, **EXACT)
        torch.testing.assert_close(state, s_ref, **EXACT)


def test_explicit_filter_tap_orders():
    """Short filters are cross-correlations (h[-1] weights the current input), from 128 taps on true
    convolutions (h[0] does) plus D: the impulse responses show both (vortex model.py:205-209, 366)."""
    impulse = torch.zeros(1, 4, 200, dtype=torch.float64)
    impulse[..., 0] = 1.0
    short = ExplicitFilter(4, 2, 7, dtype=torch.float64)
    medium = ExplicitFilter(4, 2, 128, dtype=torch.float64)
    with torch.no_grad():
        short.h.copy_(torch.randn(2, 1, 7, dtype=torch.float64))
        medium.h.copy_(torch.randn(2, 1, 128, dtype=torch.float64))
        medium.D.copy_(torch.randn(4, dtype=torch.float64))
        ys, ym = short(impulse), medium(impulse)
    assert short.D is None
    h_s = short.h[:, 0].repeat_interleave(2, 0)  # channels 0, 1 share group 0
    torch.testing.assert_close(ys[0, :, :7], h_s.flip(-1), **EXACT)
    assert ys[0, :, 7:].abs().max() == 0
    h_m = medium.h[:, 0].repeat_interleave(2, 0).clone()
    h_m[:, 0] += medium.D
    torch.testing.assert_close(ym[0, :, :128], h_m, **EXACT)
    assert ym[0, :, 128:].abs().max() < 1e-12


def test_featurizer_orientation():
    x = torch.arange(1.0, 6.0, dtype=torch.float64).reshape(1, 1, 5)
    w = torch.tensor([[0.5, 2.0, 10.0]], dtype=torch.float64)  # w[-1] weights the current input
    y = causal_fir(x, w)
    expected = torch.tensor([10.0, 22.0, 34.5, 47.0, 59.5], dtype=torch.float64)  # 10 x_t + 2 x_{t-1} + .5 x_{t-2}
    torch.testing.assert_close(y[0, 0], expected, **EXACT)
    # the shifted multiply-adds against PyTorch's depthwise convolution
    x, w = torch.randn(2, 6, 20), torch.randn(6, 3)
    torch.testing.assert_close(causal_fir(x, w), F.conv1d(F.pad(x, (2, 0)), w[:, None], groups=6),
                               atol=1e-6, rtol=0)
    x = torch.arange(1.0, 6.0, dtype=torch.float64).reshape(1, 1, 5)
    w = torch.tensor([[0.5, 2.0, 10.0]], dtype=torch.float64)
    history = torch.tensor([[[7.0, 8.0]]], dtype=torch.float64)
    y = causal_fir(x[..., :1], w, history)
    assert y.item() == 0.5 * 7 + 2 * 8 + 10 * 1 and history.tolist() == [[[8.0, 1.0]]]
    # pieces with a history, shorter and longer than the taps, against one depthwise convolution (float64)
    for K in (1, 3, 7):
        x, w = torch.randn(2, 5, 40, dtype=torch.float64), torch.randn(5, K, dtype=torch.float64)
        history = torch.zeros(2, 5, K - 1, dtype=torch.float64)
        cuts = [0, 1, 3, 4, 15, 16, 40]
        pieces = torch.cat([causal_fir(x[..., a:e], w, history) for a, e in zip(cuts, cuts[1:], strict=False)], -1)
        torch.testing.assert_close(pieces, F.conv1d(F.pad(x, (K - 1, 0)), w[:, None], groups=5), **EXACT)
        torch.testing.assert_close(history, x[..., 40 - (K - 1):], **EXACT)


def test_rmsnorm_adds_eps_to_the_rms():
    norm = RMSNorm(2, eps=0.5, dtype=torch.float64)
    y = norm(torch.tensor([3.0, 4.0], dtype=torch.float64))
    rms = 5 / math.sqrt(2)
    torch.testing.assert_close(y, torch.tensor([3 / (rms + 0.5), 4 / (rms + 0.5)], dtype=torch.float64), **EXACT)


def test_mlp_activation_only_in_layer_zero():
    model = _model("SDH*")
    gelus = [block.mlp.gelu for block in model.backbone.layers]
    assert gelus == [True, False, False, False]
    assert all(b.mlp.gelu for b in _model("SDH*", evo2_style_activations=False).backbone.layers)
    mlp = GatedMLP(3, 4, gelu=False, dtype=torch.float64)
    z = torch.randn(2, 3, dtype=torch.float64)
    ref = ((z @ mlp.l1.weight.T) * (z @ mlp.l2.weight.T)) @ mlp.l3.weight.T
    torch.testing.assert_close(mlp(z), ref, **EXACT)


def test_rotary_interpolation_divides_positions():
    base = _small("*", use_interpolated_rotary_pos_emb=True, rotary_emb_scaling_factor=8.0)
    scaled = RotaryAttention(base, dtype=torch.float64)
    plain = RotaryAttention(_small("*"), dtype=torch.float64)
    plain.load_state_dict(scaled.state_dict())
    with torch.no_grad():
        plain.inv_freq.div_(8.0)  # angle m theta / 8 == (m / 8) theta
        u = torch.randn(1, 20, 32, dtype=torch.float64)
        torch.testing.assert_close(scaled(u), plain(u), atol=1e-6, rtol=0)  # rotary tables are float32
        assert (scaled(u) - RotaryAttention(_small("*"), dtype=torch.float64).eval()(u)).abs().max() > 1e-3


def test_gates_interleaved_and_flipped():
    """Projection rows 3i, 3i+1, 3i+2 are x2 (post-gate), x1, v (§A.3); hyena_flip_x1x2 swaps x1 and x2."""
    model = _model("S")
    mixer = model.backbone.layers[0].mixer
    z = torch.arange(6.0).reshape(1, 6, 1)  # d = 2 rows of three
    mixer.d = 2
    x2, x1, v = mixer._gates(z)
    assert x2.flatten().tolist() == [0, 3] and x1.flatten().tolist() == [1, 4] and v.flatten().tolist() == [2, 5]
    mixer.flip_x1x2 = True
    x2, x1, _ = mixer._gates(z)
    assert x2.flatten().tolist() == [1, 4] and x1.flatten().tolist() == [0, 3]


# ---------------------------------------------------------------------------------------------
# Precision
# ---------------------------------------------------------------------------------------------


def test_bf16_autocast_close_to_float32(fixture_model, outputs):
    ids = outputs["input_ids"]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = fixture_model(ids)
    assert low.dtype == torch.bfloat16
    rel = ((low.float() - outputs["logits"]).norm() / outputs["logits"].norm()).item()
    # bf16's unit roundoff u = 2^-8; every block rounds its matmul operands and outputs a few times, which
    # adds about u of relative error per block (0.021 measured for 5 blocks): allow 2u per block and the head
    u = 2.0**-8
    assert rel < 2 * u * (fixture_model.config.num_layers + 1)
    assert rel > u / 4  # control: autocast did round
    # the states of decoding stay float32 under autocast
    state = fixture_model.allocate_state(2, 48)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fixture_model(ids[:, :20], state)
        fixture_model(ids[:, 20:21], state)
    assert state.layers[2].inner.dtype == torch.float32


@pytest.mark.parametrize("pattern", ["S", "D", "H"])
def test_gated_convolution_interior_ignores_autocast(pattern):
    """Inside bf16 autocast only the projections round: the FIRs, the modal state and the gates of the
    chunk and step paths compute exactly what they compute in float32."""
    mixer = _model(pattern, dtype=torch.float32).backbone.layers[0].mixer
    z = torch.randn(2, 3 * 32, 40)
    results = []
    for amp in (False, True):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            state = mixer.allocate_state(2, 40)
            x2, x1, v = mixer._gates(causal_fir(z[..., :30], mixer.short_filter_weight[:, 0], state.short))
            chunk = x2 * mixer.filter(x1 * v, state.inner)
            x2, x1, v = mixer._gates(causal_fir(z[..., 30:], mixer.short_filter_weight[:, 0], state.short))
            chunk2 = x2 * mixer.filter(x1 * v, state.inner)
            x2, x1, v = mixer._gates(fir_step(z[..., 0], mixer.short_filter_weight[:, 0], state.short))
            step = x2 * mixer.filter.step(x1 * v, state.inner)
        results.append((chunk, chunk2, step, state.inner.clone()))
    for a, b in zip(*results):
        assert a.dtype == torch.float32 and torch.equal(a, b)


def test_cast_to_bf16_keeps_poles_and_rotary_frequencies():
    model = _model("SH*", dtype=torch.float32).to(torch.bfloat16)
    modal = model.backbone.layers[1].mixer.filter
    assert modal.log_poles.dtype == torch.float32 and modal.residues.dtype == torch.float32
    assert model.backbone.layers[2].mixer.inv_freq.dtype == torch.float32
    assert model.backbone.layers[2].mixer.in_proj.weight.dtype == torch.bfloat16
    assert model.backbone.layers[0].mixer.projections.weight.dtype == torch.bfloat16
    with torch.no_grad():
        assert model(_ids(1, 12)).dtype == torch.bfloat16
    assert model.to(torch.float64).backbone.layers[1].mixer.filter.log_poles.dtype == torch.float64


def test_backward_reaches_every_parameter_and_loss_falls():
    """bf16 autocast training on a repeated toy sequence: every parameter gets a finite gradient, and a few
    Adam steps lower the next-token loss (the convolutions stay float32 inside autocast)."""
    torch.manual_seed(0)
    model = StripedHyenaLM(_small("SDH*"))
    ids = torch.tensor(ByteTokenizer().encode("ACGGTCATTG" * 7))[None]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(ids[:, :-1])
            loss = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
            loss.backward()
        except RuntimeError as exc:  # a CPU whose kernels lack bf16 attention (oneDNN without AVX-512 here)
            pytest.skip(f"bf16 autocast training on this CPU: {exc}")
        if not losses:
            for name, p in model.named_parameters():
                assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().max() > 0, name
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 5.5 and losses[-1] < 1.0  # from ln(512) = 6.2 to a learnt period-10 repeat


# ---------------------------------------------------------------------------------------------
# Config, presets, counts
# ---------------------------------------------------------------------------------------------


def test_patterns_and_presets():
    assert pattern_fields("SDH*S")["hcs_layer_idxs"] == (0, 4)
    assert PRESETS["1b-8k"].pattern == "SDH*SDHSDH*SDHSDH*SDHSDH*"
    assert PRESETS["7b-8k"].attn_layer_idxs == (3, 10, 17, 24, 31)
    assert PRESETS["7b-8k"].hcs_layer_idxs == (0, 4, 7, 11, 14, 18, 21, 25, 28)
    assert PRESETS["40b-1m"].attn_layer_idxs == (3, 10, 17, 24, 31, 35, 42, 49)
    assert PRESETS["40b-1m"].hcl_layer_idxs == (2, 6, 9, 13, 16, 20, 23, 27, 30, 34, 38, 41, 45, 48)
    assert PRESETS["7b-1m"].rotary_position_scale == 128 and PRESETS["7b-8k"].rotary_position_scale == 1
    cfg = StripedHyenaConfig.preset("tiny", pattern="HH*", hidden_size=64)
    assert cfg.layer_kinds == ("hcl", "hcl", "attn") and cfg.hidden_size == 64
    assert StripedHyenaConfig(**{**cfg.__dict__, "hcl_layer_idxs": [0, 1]}) == cfg  # lists from JSON/Hydra


@pytest.mark.parametrize("overrides, message", [
    ({"hcs_layer_idxs": (0, 1)}, "layer 1 is in both"),
    ({"attn_layer_idxs": ()}, r"layers \[3, 7\] are in none"),
    ({"hcl_layer_idxs": (2, 9)}, "outside 0..7"),
    ({"num_attention_heads": 5}, "heads"),
    ({"hcs_filter_groups": 7}, "divisible by hcs_filter_groups"),
    ({"mlp_activation": "relu"}, "mlp_activation"),
    ({"state_size": 0}, "state_size must be >= 1"),
])
def test_config_validation(overrides, message):
    with pytest.raises(ConfigError, match=message):
        StripedHyenaConfig.preset("tiny", **overrides)
    with pytest.raises(ConfigError, match="unknown stripedhyena preset"):
        StripedHyenaConfig.preset("3b")
    with pytest.raises(ConfigError, match="layer pattern"):
        StripedHyenaConfig.preset("tiny", pattern="SDX")


@pytest.mark.parametrize("config", [
    PRESETS["tiny"], PRESETS["small"], _small("SDH*S", tie_embeddings=False, qkv_proj_bias=True,
                                              hyena_out_proj_bias=False, hcs_filter_length=130),
])
def test_parameter_count_of_config_matches_the_model(config):
    assert count_parameters_of_config(config) == count_parameters(StripedHyenaLM(config), trainable_only=False)


def test_preset_parameter_counts():
    counts = {name: count_parameters_of_config(cfg) for name, cfg in PRESETS.items()}
    for name in ("1b-8k", "7b-1m", "40b-1m"):
        assert counts[name] == count_parameters(StripedHyenaLM(PRESETS[name], device="meta"), trainable_only=False)
    assert counts["small"] <= 7_000_000
    assert 1.05e9 < counts["1b-8k"] < 1.15e9  # "1B"
    assert 6.4e9 < counts["7b-8k"] < counts["7b-1m"] < 6.7e9  # "7B"; the 1M model's MLP is wider
    assert 40.0e9 < counts["40b-8k"] < counts["40b-1m"] < 41.5e9  # "40B"


def test_flops_match_counted_matmuls():
    """The matmul terms equal what PyTorch's FLOP counter sees (linears, the attention square); the FFT
    convolutions and the short FIRs (elementwise multiply-adds) it does not count follow the documented
    convention."""
    L = 64
    cfg = _small("S*D", hcs_filter_length=7)
    model = StripedHyenaLM(cfg).eval()
    # the math attention backend: the counter does not see the fused CPU attention kernel
    with torch.no_grad(), FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        model(_ids(1, L))
    d, c = cfg.hidden_size, 2.5
    log_n = math.log2(2 * L)
    fft = d * (4 * c * log_n + 6 * (L + 1) / L + 2 * c * log_n)
    featurizers = 2 * 2 * cfg.short_filter_length * 3 * d + 2 * cfg.hcs_filter_length * d  # not matmuls
    expected = flops_per_token(cfg, L) - fft - featurizers
    assert counter.get_total_flops() / L == pytest.approx(expected, rel=1e-9)


# ---------------------------------------------------------------------------------------------
# Tokenizer and family
# ---------------------------------------------------------------------------------------------


def test_byte_tokenizer():
    tok = ByteTokenizer()
    assert tok.encode("ACGTNacgt").tolist() == [65, 67, 71, 84, 78, 65, 67, 71, 84]
    assert ByteTokenizer(case="keep").encode("acgt").tolist() == [97, 99, 103, 116]
    assert ByteTokenizer(add_bos=True, add_eos=True).encode("A").tolist() == [0, 65, 0]
    batch = tok.encode_batch(["ACG", "T"])
    assert batch["input_ids"].tolist() == [[65, 67, 71], [84, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert tok.decode(batch["input_ids"][1]) == "T"
    assert tok.decode([0, 65, 1, 300], skip_special_tokens=False) == " A ?"
    with pytest.raises(InputError, match="sequence 1: non-ASCII byte 195 at position 1"):
        tok.encode_batch(["A", "Aé"])
    with pytest.raises(InputError, match="outside the vocabulary"):
        tok.decode([512])
    alphabet = tok.alphabet
    assert alphabet.acgt == tuple(tok.encode("ACGT").tolist()) and alphabet.n == 78
    assert (alphabet.pad, alphabet.eos, alphabet.vocab_size) == (1, 0, 512)
    assert ByteTokenizer.from_config(ByteTokenizer(case="keep").to_config()) == ByteTokenizer(case="keep")
    with pytest.raises(ConfigError, match="case"):
        ByteTokenizer(case="lower")


def test_byte_tokenizer_save(tmp_path):
    path = ByteTokenizer(add_eos=True).save(tmp_path)
    data = json.loads(path.read_text())
    assert data["type"] == "byte" and data["add_eos"] is True and data["format"].startswith("dnalm-tokenizer")


def test_family():
    assert isinstance(FAMILY, Family) and FAMILY.causal and FAMILY.name == StripedHyenaLM.family
    assert FAMILY.tokenizer(PRESETS["tiny"]).alphabet == BYTE_ALPHABET
    assert FAMILY.context_length(PRESETS["7b-1m"]) == 1_048_576
    assert [imp.name for imp in FAMILY.importers] == ["vortex"]
    model = FAMILY.build(_small("SDH*"))
    assert isinstance(model, CausalLM) and model.config == _small("SDH*")
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(FAMILY.lora_targets) <= names
    assert len(model.mixers) == 4 and model.allocate_state(1).max_len == 256
    ids = np.array(ByteTokenizer().encode("ACGTAC"))
    with torch.no_grad():
        assert model(torch.from_numpy(ids)[None]).shape == (1, 6, 512)


def _windowed_reference(model: StripedHyenaLM, ids: torch.Tensor, window: int) -> torch.Tensor:
    """One pass in which every attention layer attends over its last ``window`` positions (explicit softmax
    under a band mask), the convolutions over the whole sequence: what chunked inference computes past the
    trained context."""
    bb = model.backbone
    L = ids.shape[1]
    i = torch.arange(L)
    band = (i[:, None] - i[None, :] >= 0) & (i[:, None] - i[None, :] < window)
    x = bb.embeddings(ids)
    for block in bb.layers:
        h = block.pre_norm(x)
        if isinstance(block.mixer, RotaryAttention):
            q, k, v = block.mixer._qkv(h, 0)
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            o = torch.softmax(scores.masked_fill(~band, float("-inf")), dim=-1) @ v
            x = x + block.mixer._out(o)
        else:
            x = x + block.mixer(h)
        x = x + block.mlp(block.post_norm(x))
    return model.lm_head(bb.ln_f(x))


@pytest.mark.parametrize("chunk", [1, 9, 32, 50])
def test_chunked_inference_past_the_context_is_a_sliding_window_float64(chunk):
    from dnalm.inference.chunked import chunked_forward

    model, ids = _model("SDH*", max_seqlen=32), _ids(2, 140)
    with torch.no_grad():
        reference = _windowed_reference(model, ids, 32)
        got, _ = chunked_forward(model, ids, chunk)
        torch.testing.assert_close(got, reference, **EXACT)
        # control: within the window this is the full causal pass; past it, the full pass differs
        torch.testing.assert_close(got[:, :32], model(ids[:, :32]), **EXACT)
        assert (model(ids)[:, 32:] - reference[:, 32:]).abs().max() > 1e-3


@needs_cxx
def test_compiled_chunks_equal_eager_chunks_float64():
    """``compiled_blocks`` (Inductor's fused kernels, the fast path of long inference on a GPU) computes what the
    eager modules compute: chunks past the context through every block kind, in float64; the modules are
    compiled inside and restored after. (One chunk length: each length compiles again, ~25 s on a CPU.)"""
    from dnalm.inference.chunked import chunked_forward, compiled_blocks

    model, ids = _model("SDH*", max_seqlen=32), _ids(2, 96)
    children = [m for block in model.backbone.layers for m in block.children()]
    with torch.no_grad():
        eager, _ = chunked_forward(model, ids, 48)
        with compiled_blocks(model):
            assert all(m._compiled_call_impl is not None for m in children)
            got, _ = chunked_forward(model, ids, 48)
    assert all(m._compiled_call_impl is None for m in children)
    torch.testing.assert_close(got, eager, **EXACT)
    # control: the chunks are not all the same computation (the carried state moves the outputs)
    assert (eager[:, 48:96] - eager[:, :48]).abs().max() > 1e-3
