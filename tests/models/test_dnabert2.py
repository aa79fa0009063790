"""DNABERT-2: the reference fixture (official remote code, random weights), ALiBi attention against an explicit
twin, padding, the hub layout, the tokenizer, MLM masking/loss and pseudo-log-likelihood.

Tolerances: float32 comparisons with the fixture use atol = rtol = 1e-5 (a 2-layer, width-64 network whose
outputs are O(1): float32 rounding of its ~10^3-term sums stays near 1e-6); exactness is shown in float64
(1e-10 for different orders of summation, SDPA vs explicit softmax).
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dnalm.errors import ConfigError, InputError
from dnalm.models.blocks import count_parameters
from dnalm.models.dnabert2 import (
    FAMILY,
    PRESETS,
    Dnabert2Config,
    Dnabert2Model,
    Dnabert2Tokenizer,
    alibi_attention,
    alibi_attention_reference,
    alibi_slopes,
    attention_bias,
    detect_hub,
    load_hub,
    mlm_loss,
    mlm_mask,
    pseudo_log_likelihood,
    train_bpe,
)
from dnalm.models.family import MASKED, Alphabet

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "dnabert2_tiny"
SMALL = Dnabert2Config(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
                       hidden_dropout_prob=0.0)


@pytest.fixture(scope="module")
def outputs() -> dict:
    return torch.load(FIXTURE / "outputs.pt", weights_only=True)


@pytest.fixture(scope="module")
def hub_model() -> Dnabert2Model:
    return load_hub(FIXTURE)


@pytest.fixture(scope="module")
def model64() -> Dnabert2Model:
    """A small random model in float64 with non-trivial LayerNorm and bias parameters."""
    torch.manual_seed(0)
    model = Dnabert2Model(SMALL, dtype=torch.float64).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layernorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def _ids(rows: list[list[int]], pad: int = 3, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, r in enumerate(rows):
        cols = slice(0, len(r)) if side == "right" else slice(width - len(r), width)
        ids[b, cols] = torch.tensor(r)
        mask[b, cols] = 1
    return ids, mask


# ---------------------------------------------------------------------------------------------
# The reference fixture
# ---------------------------------------------------------------------------------------------


def test_fixture_tokenizer_ids(outputs):
    tok = Dnabert2Tokenizer.load(FIXTURE)
    enc = tok.encode_batch(outputs["sequences"])
    assert torch.equal(enc["input_ids"], outputs["input_ids"])
    assert torch.equal(enc["attention_mask"], outputs["attention_mask"])


def test_tokenizer_edge_cases_match_the_released_file():
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(FIXTURE / "tokenizer.json"))
    tok = Dnabert2Tokenizer.load(FIXTURE)
    cases = ["", "A", "N", "NNNN", "acgt", "ACGTacgtNNACGT", "ACGTRYKM", "TTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTT",
             "ACGT ACGT", "GATTACA" * 20]
    for seq in cases:
        assert tok.encode(seq).tolist() == hf.encode(seq).ids, seq
    # lowercase and N are [UNK] (0), one per character, between [CLS] (1) and [SEP] (2)
    assert tok.encode("nacgt").tolist() == [1, 0, 0, 0, 0, 0, 2]
    assert Dnabert2Tokenizer.load(FIXTURE, uppercase=True).encode("acgt").tolist() == tok.encode("ACGT").tolist()
    assert tok.alphabet == Alphabet(acgt=(5, 6, 7, 8), n=0, pad=3, bos=1, eos=2, mask=4, unk=0, vocab_size=4096)
    assert tok.decode(tok.encode("ACGTNNacGGTT")) == "ACGTNNNNGGTT"
    assert tok.decode([1, 5, 2, 3], skip_special_tokens=False) == "[CLS]A[SEP][PAD]"


def test_fixture_logits_and_hidden_states(hub_model, outputs):
    ids, mask = outputs["input_ids"], outputs["attention_mask"]
    with torch.no_grad():
        logits, (last,) = hub_model.forward_with_hidden(ids, [-1], attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(logits[real], outputs["logits"][real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(last[real], outputs["last_hidden_state"][real], atol=1e-5, rtol=1e-5)
    # as the reference: padded positions hold zeros, and the head reads those zeros
    assert (last[~real] == 0).all()
    torch.testing.assert_close(logits[~real], outputs["logits"][~real], atol=1e-5, rtol=1e-5)


def test_hub_keys_load_directly_and_round_trip_through_safetensors(tmp_path, hub_model, outputs):
    from safetensors.torch import load_model, save_model

    stored = torch.load(FIXTURE / "pytorch_model.bin", weights_only=True)
    assert set(stored) == set(hub_model.state_dict())
    save_model(hub_model, str(tmp_path / "model.safetensors"))
    fresh = Dnabert2Model(hub_model.config).eval()
    load_model(fresh, str(tmp_path / "model.safetensors"))
    assert fresh.cls.predictions.decoder.weight is fresh.bert.embeddings.word_embeddings.weight
    ids, mask = outputs["input_ids"], outputs["attention_mask"]
    with torch.no_grad():
        assert torch.equal(fresh(ids, mask), hub_model(ids, mask))


def test_load_hub_safetensors_without_tied_decoder_and_with_a_pooler(tmp_path, hub_model, outputs):
    from safetensors.torch import save_file

    sd = {k: v.clone() for k, v in torch.load(FIXTURE / "pytorch_model.bin", weights_only=True).items()}
    del sd["cls.predictions.decoder.weight"]  # Hugging Face stores a tied tensor once
    sd["bert.pooler.dense.weight"] = torch.zeros(64, 64)  # BertModel's pooler: not part of the MLM model
    save_file(sd, str(tmp_path / "model.safetensors"))
    shutil.copy(FIXTURE / "config.json", tmp_path / "config.json")
    model = load_hub(tmp_path)
    with torch.no_grad():
        ids, mask = outputs["input_ids"], outputs["attention_mask"]
        assert torch.equal(model(ids, mask), hub_model(ids, mask))


@pytest.mark.parametrize("edit, message", [
    (lambda sd: sd.pop("bert.encoder.layer.1.mlp.wo.bias"), "missing: bert.encoder.layer.1.mlp.wo.bias"),
    (lambda sd: sd.__setitem__("bert.encoder.layer.2.mlp.wo.bias", torch.zeros(64)),
     "unexpected: bert.encoder.layer.2.mlp.wo.bias"),
    (lambda sd: sd.__setitem__("cls.predictions.decoder.weight", torch.zeros(4096, 64)),
     "'cls.predictions.decoder.weight' differs from 'bert.embeddings.word_embeddings.weight'"),
])
def test_load_hub_names_the_file_and_the_key(tmp_path, edit, message):
    sd = dict(torch.load(FIXTURE / "pytorch_model.bin", weights_only=True))
    sd = {k: v.clone() for k, v in sd.items()}
    edit(sd)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    shutil.copy(FIXTURE / "config.json", tmp_path / "config.json")
    with pytest.raises(InputError) as err:
        load_hub(tmp_path)
    assert str(tmp_path / "pytorch_model.bin") in str(err.value) and message in str(err.value)


def test_load_hub_refuses_pickled_code_and_bad_configs(tmp_path):
    torch.save({"x": os.system}, tmp_path / "pytorch_model.bin")
    shutil.copy(FIXTURE / "config.json", tmp_path / "config.json")
    with pytest.raises(InputError, match="refusing to unpickle"):
        load_hub(tmp_path)
    meta = json.loads((FIXTURE / "config.json").read_text())
    without_width = {k: v for k, v in meta.items() if k != "hidden_size"}
    for bad, message in (({**meta, "num_attention_heads": 5}, "divisible"),
                         ({**meta, "hidden_act": "relu"}, "hidden_act"),
                         (without_width, "missing field 'hidden_size'")):
        (tmp_path / "config.json").write_text(json.dumps(bad))
        with pytest.raises(InputError, match=message):
            load_hub(tmp_path)


def test_detect_hub(tmp_path):
    meta = json.loads((FIXTURE / "config.json").read_text())
    assert detect_hub(FIXTURE, meta)
    assert not detect_hub(tmp_path, meta)  # no weights
    assert not detect_hub(FIXTURE, None)
    assert not detect_hub(FIXTURE, {"format": "dnalm-model/1", "family": "dnabert2"})
    assert not detect_hub(FIXTURE, {"model_type": "hyenadna", "d_model": 128})
    importer, = FAMILY.importers
    assert importer.detect is detect_hub and importer.load is load_hub
    assert FAMILY.objective == MASKED and FAMILY.model_cls is Dnabert2Model and FAMILY.tokenizer(SMALL) is None


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


def _hand_count(c: Dnabert2Config) -> int:
    D, I, V = c.hidden_size, c.intermediate_size, c.vocab_size
    layer = (3 * D * D + 3 * D) + (D * D + D) + 2 * D + 2 * I * D + (I * D + D) + 2 * D
    return V * D + c.type_vocab_size * D + 2 * D + c.num_hidden_layers * layer + (D * D + D + 2 * D) + V


def test_presets_and_parameter_counts():
    for config in PRESETS.values():
        assert count_parameters(Dnabert2Model(config, device="meta")) == _hand_count(config)
    assert _hand_count(PRESETS["117m"]) == 117_074_176  # the published "117M"
    assert _hand_count(PRESETS["small"]) <= 7_000_000 and _hand_count(PRESETS["tiny"]) <= 7_000_000
    c = Dnabert2Config.preset("tiny", vocab_size=512)
    assert (c.vocab_size, c.d_model, c.n_layer, c.head_dim) == (512, 128, 4, 64)


@pytest.mark.parametrize("kwargs", [dict(num_attention_heads=5), dict(hidden_size=0), dict(hidden_dropout_prob=1.0),
                                    dict(layer_norm_eps=0.0), dict(pad_token_id=4096), dict(vocab_size=2.5)])
def test_config_validation(kwargs):
    with pytest.raises(ConfigError):
        Dnabert2Config(**kwargs)


def test_preset_errors():
    with pytest.raises(ConfigError, match="unknown dnabert2 preset"):
        Dnabert2Config.preset("huge")
    with pytest.raises(ConfigError, match="d_model"):
        Dnabert2Config.preset("tiny", d_model=4)


def test_init_weights():
    torch.manual_seed(0)
    model = Dnabert2Model(Dnabert2Config.preset("tiny", pad_token_id=3))
    emb = model.bert.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.weight is emb
    assert (emb[3] == 0).all() and abs(emb[4:].std().item() - 0.02) < 1e-3
    w = model.bert.encoder.layer[0].mlp.gated_layers.weight
    assert abs(w.std().item() - 0.02) < 1e-3 and abs(w.mean().item()) < 1e-3
    assert (model.bert.encoder.layer[1].attention.output.LayerNorm.weight == 1).all()
    assert (model.cls.predictions.decoder.bias == 0).all() and (model.bert.encoder.layer[0].mlp.wo.bias == 0).all()


def test_lora_targets_are_linear_layers():
    from dnalm.models.lora import resolve_targets

    assert resolve_targets(Dnabert2Model(SMALL), list(FAMILY.lora_targets)) == list(FAMILY.lora_targets)


# ---------------------------------------------------------------------------------------------
# ALiBi attention
# ---------------------------------------------------------------------------------------------


def test_alibi_slopes_by_hand():
    assert alibi_slopes(8) == [2.0 ** -i for i in range(1, 9)]
    assert alibi_slopes(4) == [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8]
    assert alibi_slopes(1) == [2.0 ** -8]
    # 12 heads (DNABERT-2-117M): the 8 slopes of 8 heads, then slopes 0, 2, 4, 6 of 16 heads (2^-k/2)
    expected = [2.0 ** -i for i in range(1, 9)] + [2.0 ** -0.5, 2.0 ** -1.5, 2.0 ** -2.5, 2.0 ** -3.5]
    assert alibi_slopes(12) == pytest.approx(expected, rel=1e-15)
    assert alibi_slopes(6) == pytest.approx([2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3])


def test_attention_bias_by_hand():
    bias = attention_bias(2, 3, torch.tensor([[1, 1, 0]]), dtype=torch.float64)
    head0 = -0.0625 * torch.tensor([[0.0, 1, 2], [1, 0, 1], [2, 1, 0]], dtype=torch.float64)
    assert bias.shape == (1, 2, 3, 3)
    pad = torch.tensor([0.0, 0, -10000], dtype=torch.float64)
    torch.testing.assert_close(bias[0, 0], head0 + pad, rtol=0, atol=0)
    torch.testing.assert_close(bias[0, 1], head0 / 16 + pad, rtol=0, atol=0)
    assert attention_bias(2, 3).shape == (1, 2, 3, 3)


def test_sdpa_matches_the_explicit_softmax_in_float64():
    torch.manual_seed(1)
    B, H, L, d = 3, 4, 11, 8
    q, k, v = (torch.randn(B, H, L, d, dtype=torch.float64) for _ in range(3))
    _, mask = _ids([[5] * 11, [5] * 7, [5] * 2])
    bias = attention_bias(H, L, mask, dtype=torch.float64)
    out = alibi_attention(q, k, v, bias)
    torch.testing.assert_close(out, alibi_attention_reference(q, k, v, bias), rtol=0, atol=1e-10)


def _explicit_forward(model: Dnabert2Model, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An independent forward pass from the state dict, one row and one head at a time (float64)."""
    sd = {k: v.double() for k, v in model.state_dict().items()}
    c = model.config
    H, dh, eps = c.num_attention_heads, c.head_dim, c.layer_norm_eps
    slopes = [2.0 ** (-8.0 * (h + 1) / H) for h in range(H)]  # a power-of-two head count

    def ln(x, prefix, e=eps):
        return F.layer_norm(x, (x.shape[-1],), sd[prefix + ".weight"], sd[prefix + ".bias"], e)

    def lin(x, prefix):
        b = sd.get(prefix + ".bias")
        return x @ sd[prefix + ".weight"].T + (0 if b is None else b)

    hidden, logits = [], []
    for b in range(ids.shape[0]):
        row = ids[b][mask[b].bool()]  # only the real tokens, as the reference's unpadding
        n = len(row)
        emb = sd["bert.embeddings.word_embeddings.weight"][row] + sd["bert.embeddings.token_type_embeddings.weight"][0]
        x = ln(emb, "bert.embeddings.LayerNorm")
        dist = (torch.arange(n)[None, :] - torch.arange(n)[:, None]).abs().double()
        for i in range(c.num_hidden_layers):
            p = f"bert.encoder.layer.{i}."
            qkv = lin(x, p + "attention.self.Wqkv")
            heads = []
            for h in range(H):
                q = qkv[:, h * dh:(h + 1) * dh]
                k = qkv[:, c.hidden_size + h * dh: c.hidden_size + (h + 1) * dh]
                v = qkv[:, 2 * c.hidden_size + h * dh: 2 * c.hidden_size + (h + 1) * dh]
                heads.append(torch.softmax(q @ k.T / math.sqrt(dh) - slopes[h] * dist, dim=-1) @ v)
            x = ln(x + lin(torch.cat(heads, dim=-1), p + "attention.output.dense"), p + "attention.output.LayerNorm")
            gu = lin(x, p + "mlp.gated_layers")
            g, u = gu[:, : c.intermediate_size], gu[:, c.intermediate_size:]
            x = ln(x + lin(0.5 * g * (1 + torch.erf(g / math.sqrt(2))) * u, p + "mlp.wo"), p + "mlp.layernorm")
        t = lin(x, "cls.predictions.transform.dense")
        t = ln(0.5 * t * (1 + torch.erf(t / math.sqrt(2))), "cls.predictions.transform.LayerNorm", 1e-12)
        hidden.append(x)
        logits.append(t @ sd["bert.embeddings.word_embeddings.weight"].T + sd["cls.predictions.decoder.bias"])
    return torch.cat(hidden), torch.cat(logits)


@pytest.mark.parametrize("side", ["right", "left"])
def test_model_matches_explicit_forward_and_rows_alone_in_float64(model64, side):
    rows = [[1, 5, 9, 12, 30, 7, 2], [1, 8, 8, 2], [1, 39, 2]]
    ids, mask = _ids(rows, side=side)
    with torch.no_grad():
        logits, (last,) = model64.forward_with_hidden(ids, [-1], mask)
    real = mask.bool()
    want_hidden, want_logits = _explicit_forward(model64, ids, mask)
    torch.testing.assert_close(last[real], want_hidden, rtol=0, atol=1e-10)
    torch.testing.assert_close(logits[real], want_logits, rtol=0, atol=1e-10)
    for b, row in enumerate(rows):
        with torch.no_grad():
            alone = model64(torch.tensor([row]))[0]
        torch.testing.assert_close(logits[b][real[b]], alone, rtol=0, atol=1e-12)


def test_hidden_state_indices(model64):
    ids, mask = _ids([[1, 5, 6, 7, 2], [1, 9, 2]])
    with torch.no_grad():
        everything = model64.hidden_states(ids, attention_mask=mask)
        logits, picked = model64.forward_with_hidden(ids, [0, 1, -1], mask)
        emb = model64.bert.embeddings(ids)
        last = model64.encode(ids, mask)
    assert len(everything) == SMALL.num_hidden_layers + 1
    torch.testing.assert_close(picked[0][mask.bool()], emb[mask.bool()], rtol=0, atol=0)
    for got, want in zip(picked, (everything[0], everything[1], everything[2]), strict=True):
        assert torch.equal(got, want)
    assert torch.equal(last, everything[-1]) and (everything[0][~mask.bool()] == 0).all()
    with pytest.raises(ConfigError, match="out of range"):
        model64.hidden_states(ids, [3])
    with pytest.raises(ConfigError, match="attention_mask"):
        model64(ids, mask[:, :2])


def test_pool():
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert Dnabert2Model.pool(hidden, mask).tolist() == [[2.0, 3.0], [7.0, 8.0]]
    assert Dnabert2Model.pool(hidden, mask, how="cls").tolist() == [[0.0, 1.0], [6.0, 7.0]]
    with pytest.raises(ConfigError):
        Dnabert2Model.pool(hidden, mask, how="max")


# ---------------------------------------------------------------------------------------------
# Masked LM: masking, loss, training, pseudo-log-likelihood
# ---------------------------------------------------------------------------------------------

ALPHABET = Alphabet(acgt=(5, 6, 7, 8), n=0, pad=3, bos=1, eos=2, mask=4, unk=0, vocab_size=40)


def test_mlm_mask_is_exact_on_specials_and_statistically_right():
    g = torch.Generator().manual_seed(0)
    B, L = 64, 512
    ids = torch.randint(5, 40, (B, L), generator=g)
    ids[:, 0], ids[:, 100], ids[:, 200] = 1, 2, 0  # [CLS], [SEP], [UNK]
    lengths = torch.randint(300, L + 1, (B,), generator=g)
    mask = (torch.arange(L)[None, :] < lengths[:, None]).long()
    ids[mask == 0] = 3
    masked, labels = mlm_mask(ids, ALPHABET, rate=0.15, generator=g, attention_mask=mask)
    special = torch.isin(ids, torch.tensor([0, 1, 2, 3, 4])) | (mask == 0)
    picked = labels != -100
    assert not picked[special].any() and torch.equal(masked[~picked], ids[~picked])
    assert torch.equal(labels[picked], ids[picked])
    n = int((~special).sum())

    def within(count: int, trials: int, p: float) -> bool:  # 5 binomial standard deviations
        return abs(count - trials * p) <= 5 * math.sqrt(trials * p * (1 - p))

    k = int(picked.sum())
    assert within(k, n, 0.15)
    to_mask = masked[picked] == 4
    changed = ~to_mask & (masked[picked] != ids[picked])
    assert within(int(to_mask.sum()), k, 0.8)
    assert within(int(changed.sum()), k, 0.1 * (1 - 1 / 35))  # a random token equals the original 1 in 35
    replaced = masked[picked][changed]
    assert ((replaced >= 5) & (replaced < 40)).all()  # random tokens are never specials
    g2 = torch.Generator().manual_seed(1)
    first = mlm_mask(ids, ALPHABET, generator=g2, attention_mask=mask)
    second = mlm_mask(ids, ALPHABET, generator=g2.manual_seed(1), attention_mask=mask)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))  # seeded: reproducible
    with pytest.raises(ConfigError):
        mlm_mask(ids, ALPHABET, rate=0.0)


def test_mlm_loss_matches_full_logits(model64):
    ids, mask = _ids([[1, 5, 9, 12, 30, 7, 2], [1, 8, 8, 2]])
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[0, 4], labels[1, 1] = 9, 30, 8
    masked = ids.clone()
    masked[labels != -100] = 4
    out = mlm_loss(model64, {"input_ids": masked, "labels": labels, "attention_mask": mask})
    with torch.no_grad():
        logits = model64(masked, mask)
    want = F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), labels.view(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss.detach(), want, rtol=1e-6, atol=1e-6)
    assert out.weight.sum() == 3 and out.ce[labels == -100].eq(0).all()
    empty = mlm_loss(model64, {"input_ids": ids, "labels": torch.full_like(ids, -100), "attention_mask": mask})
    assert empty.loss.item() == 0.0


def test_mlm_training_learns_from_context(one_thread):
    """A repeated motif: a context-free predictor cannot beat the motif's unigram entropy; training must."""
    torch.manual_seed(0)
    config = Dnabert2Config(vocab_size=12, hidden_size=32, num_hidden_layers=1, num_attention_heads=8,
                            intermediate_size=32, hidden_dropout_prob=0.0)
    model = Dnabert2Model(config)
    alphabet = Alphabet(acgt=(5, 6, 7, 8), n=0, pad=3, bos=1, eos=2, mask=4, unk=0, vocab_size=12)
    motif = [5, 6, 7, 8, 8, 7, 9, 10, 11, 5]
    unigram_entropy = -sum(motif.count(t) / 10 * math.log(motif.count(t) / 10) for t in set(motif))  # 1.887 nats
    ids = torch.tensor([1, *motif * 4, 2]).repeat(16, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(80):
        masked, labels = mlm_mask(ids, alphabet, rate=0.15, generator=g)
        loss = mlm_loss(model, {"input_ids": masked, "labels": labels}).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    early, late = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert late < early and late < unigram_entropy - 0.4


def test_pseudo_log_likelihood_matches_a_loop(model64):
    rows = [[1, 5, 9, 0, 12, 7, 2], [1, 8, 30, 2]]
    ids, mask = _ids(rows)
    per_token = pseudo_log_likelihood(model64, ids, mask, batch_of_masks=3, reduce="none")
    want = torch.zeros(ids.shape, dtype=torch.float64)
    with torch.no_grad():
        for b, row in enumerate(rows):
            for t, token in enumerate(row):
                if token in (0, 1, 2, 3, 4):
                    continue
                copy = torch.tensor([row])
                copy[0, t] = 4
                want[b, t] = model64(copy)[0, t].log_softmax(-1)[token]
    torch.testing.assert_close(per_token, want, rtol=0, atol=1e-12)
    assert (per_token[:, 0] == 0).all() and (per_token[0, 3] == 0).all()  # [CLS] and [UNK] are not scored
    torch.testing.assert_close(pseudo_log_likelihood(model64, ids, mask), want.sum(1), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Tokenizer persistence and training
# ---------------------------------------------------------------------------------------------


def test_tokenizer_save_load_and_batch_options(tmp_path):
    tok = Dnabert2Tokenizer.load(FIXTURE, uppercase=True, padding_side="left")
    tok.save(tmp_path)
    back = Dnabert2Tokenizer.load(tmp_path)
    assert (back.uppercase, back.padding_side) == (True, "left")
    seqs = ["ACGTACGGTTAGGCAT", "acgtNN", ""]
    a, b = tok.encode_batch(seqs), back.encode_batch(seqs)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["attention_mask"], b["attention_mask"])
    assert a["input_ids"][2].tolist()[-2:] == [1, 2] and a["attention_mask"][2].sum() == 2  # left padding
    cut = tok.encode_batch(["GATTACA" * 30], max_length=6)["input_ids"][0].tolist()
    assert len(cut) == 6 and cut[0] == 1 and cut[-1] == 2 and cut[1:5] == tok.encode("GATTACA" * 30).tolist()[1:5]
    with pytest.raises(InputError, match="exceed max_length"):
        tok.encode_batch(["GATTACA" * 30], max_length=6, truncation=False)
    assert Dnabert2Tokenizer.from_config(tok.to_config()).to_config() == tok.to_config()
    (tmp_path / "dnalm_tokenizer.json").write_text(json.dumps({"type": "bpe"}))
    with pytest.raises(InputError, match="not a DNABERT-2 tokenizer"):
        Dnabert2Tokenizer.load(tmp_path)


def test_tokenizer_rejects_other_special_ids(tmp_path):
    from dnalm.tokenizers import BpeTokenizer

    BpeTokenizer.train(["ACGTACGTTTGACAGG" * 20], vocab_size=20).save(tmp_path)  # HyenaDNA's specials 0-6
    (tmp_path / "dnalm_tokenizer.json").unlink()  # the bare Hugging Face file
    with pytest.raises(InputError, match=r"tokenizer.json: DNABERT-2 tokenizer: special token \[UNK\] must have id 0"):
        Dnabert2Tokenizer.load(tmp_path / "tokenizer.json")


def test_train_bpe_layout(tmp_path):
    g = torch.Generator().manual_seed(0)
    genome = "".join("ACGT"[i] for i in torch.randint(0, 4, (20_000,), generator=g).tolist())
    seqs = [genome[:8000] + "NNNN" + genome[8000:15000].lower(), genome[15000:]]
    tok = train_bpe(seqs, vocab_size=64, min_frequency=2)
    vocab = tok.vocab
    assert [vocab[t] for t in ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]", "A", "C", "G", "T")] == list(range(9))
    assert tok.vocab_size == 64 and "N" not in vocab and tok.uppercase
    ids = tok.encode(genome[:300])
    assert ids[0] == 1 and ids[-1] == 2 and len(ids) < 302  # merges shorten the sequence
    assert tok.decode(ids) == genome[:300] and tok.decode(tok.encode("acgN")) == "ACGN"
    tok.save(tmp_path)
    assert torch.equal(Dnabert2Tokenizer.load(tmp_path).encode(genome[:300], return_tensors="pt"),
                       torch.from_numpy(ids))
    with pytest.raises(ConfigError):
        train_bpe(seqs, vocab_size=8)


def test_mlm_mask_never_picks_or_writes_n():
    """With a vocabulary that has an N token (dnalm's character ids), N positions are never picked and no random
    replacement is N: a gap is not a base to learn."""
    from dnalm.tokenizers import CharTokenizer

    alphabet = CharTokenizer().alphabet
    g = torch.Generator().manual_seed(3)
    ids = torch.tensor(alphabet.acgt)[torch.randint(0, 4, (32, 400), generator=g)]
    ids[:, 100:160] = alphabet.n  # an N gap in every row
    masked, labels = mlm_mask(ids, alphabet, rate=0.3, generator=g)
    picked = labels != -100
    assert not picked[:, 100:160].any() and picked.float().mean() > 0.2
    assert torch.isin(masked[picked], torch.tensor([*alphabet.acgt, alphabet.mask])).all()


def _hub_classifier(directory: Path, n_labels: int = 3) -> tuple[Path, dict]:
    """The fixture turned into what the hub's BertForSequenceClassification saves: its encoder, a random
    pooler and classifier, no MLM head, ``architectures`` and ``id2label`` in config.json."""
    from safetensors.torch import save_file

    directory.mkdir()
    meta = json.loads((FIXTURE / "config.json").read_text())
    meta.update(architectures=["BertForSequenceClassification"], id2label={str(i): f"c{i}" for i in range(n_labels)})
    (directory / "config.json").write_text(json.dumps(meta))
    shutil.copy(FIXTURE / "tokenizer.json", directory / "tokenizer.json")
    state = {k: v for k, v in torch.load(FIXTURE / "pytorch_model.bin", weights_only=True).items()
             if not k.startswith("cls.")}
    g = torch.Generator().manual_seed(2)
    D = meta["hidden_size"]
    head = {"bert.pooler.dense.weight": 0.3 * torch.randn(D, D, generator=g),
            "bert.pooler.dense.bias": torch.randn(D, generator=g),
            "classifier.weight": torch.randn(n_labels, D, generator=g),
            "classifier.bias": torch.randn(n_labels, generator=g)}
    save_file({**state, **head}, str(directory / "model.safetensors"))
    return directory, head


def test_hub_sequence_classifier_loads_and_classifies(tmp_path, hub_model) -> None:
    """A DNABERT-2 classifier in the hub layout (BertForSequenceClassification) is a dnalm sequence classifier:
    its logits are classifier(tanh(pooler(h_[CLS]))) of the fixture's encoder, by hand in float64 (1e-10);
    `dnalm classify` reads it with its tokenizer and class names; the masked-LM loader refuses it in one line."""
    from dnalm.cli import run
    from dnalm.inference.classify import is_sequence_model, load_sequence_model

    directory, head = _hub_classifier(tmp_path / "clf")
    assert is_sequence_model(directory) and not is_sequence_model(FIXTURE)
    loaded = load_sequence_model(directory)
    assert loaded.classes == ["c0", "c1", "c2"] and loaded.model.head.pooler is not None
    model = loaded.model.double().eval()
    encoder = copy.deepcopy(hub_model).double().eval()
    seqs = ["ACGTAGCTAGCTAGGATCCGATCGAT", "TTGACAGGCTAGCTATAATG"]
    ids = [torch.as_tensor(loaded.tokenizer.encode(s)) for s in seqs]
    with torch.no_grad():
        for row in ids:
            got = model(row[None])[0]
            h = encoder.hidden_states(row[None], [-1])[0][0, 0]  # [CLS]
            pooled = torch.tanh(head["bert.pooler.dense.weight"].double() @ h + head["bert.pooler.dense.bias"].double())
            expected = head["classifier.weight"].double() @ pooled + head["classifier.bias"].double()
            torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)
    fasta = tmp_path / "in.fa"
    fasta.write_text("".join(f">s{i}\n{s}\n" for i, s in enumerate(seqs)))
    assert run(["classify", f"checkpoint={directory}", f"input={fasta}", f"out={tmp_path / 'p.csv'}",
                "device=cpu"]) == 0
    table = (tmp_path / "p.csv").read_text().splitlines()
    assert table[0] == "id,length,predicted,p_c0,p_c1,p_c2" and len(table) == 3
    with pytest.raises(InputError, match="dnalm classify"):
        load_hub(directory)
    # dnalm convert writes it as a dnalm classifier: same outputs, classes and tokenizer
    assert run(["convert", f"src={directory}", f"out={tmp_path / 'conv'}"]) == 0
    converted = load_sequence_model(tmp_path / "conv")
    assert converted.classes == loaded.classes and converted.model.head.pooler is not None
    with torch.no_grad():
        row = torch.as_tensor(converted.tokenizer.encode(seqs[0]))[None]
        torch.testing.assert_close(converted.model.double()(row), model(row), atol=0, rtol=0)
