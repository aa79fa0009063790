"""Sequence heads: padding-aware pooling against explicit per-row loops, losses, the classifier module."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dnalm.errors import ConfigError
from dnalm.models.heads import SequenceClassifier, head_loss, pool
from dnalm.models.hyena import HyenaConfig, HyenaLM


def _random_batch(seed: int, side: str) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    g = torch.Generator().manual_seed(seed)
    B, L, D = 5, 9, 4
    hidden = torch.randn(B, L, D, generator=g)
    lengths = [9, 1, 4, 7, 2]
    mask = torch.zeros(B, L, dtype=torch.int64)
    for i, n in enumerate(lengths):
        if side == "right":
            mask[i, :n] = 1
        else:
            mask[i, L - n:] = 1
    return hidden, mask, lengths


def _loop_pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    rows = []
    for b in range(hidden.shape[0]):
        real = [t for t in range(hidden.shape[1]) if mask[b, t] == 1]
        vectors = [hidden[b, t] for t in real]
        if mode == "mean":
            acc = torch.zeros(hidden.shape[2])
            for v in vectors:
                acc = acc + v
            rows.append(acc / len(vectors))
        elif mode == "max":
            rows.append(torch.tensor([max(float(v[d]) for v in vectors) for d in range(hidden.shape[2])]))
        elif mode == "last":
            rows.append(hidden[b, real[-1]])
        else:
            rows.append(hidden[b, real[0]])
    return torch.stack(rows)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("mode", ["mean", "max", "last", "cls"])
def test_pool_matches_loops(mode: str, side: str) -> None:
    hidden, mask, _ = _random_batch(0, side)
    torch.testing.assert_close(pool(hidden, mask, mode), _loop_pool(hidden, mask, mode), atol=1e-6, rtol=1e-6)


def test_pool_ignores_padding_values() -> None:
    hidden, mask, _ = _random_batch(1, "right")
    noisy = hidden.clone()
    noisy[mask == 0] = 1e4
    for mode in ("mean", "max", "last", "cls"):
        torch.testing.assert_close(pool(noisy, mask, mode), pool(hidden, mask, mode))


def test_pool_without_mask_and_empty_rows() -> None:
    hidden, _, _ = _random_batch(2, "right")
    torch.testing.assert_close(pool(hidden, None, "mean"), hidden.mean(1))
    torch.testing.assert_close(pool(hidden, None, "last"), hidden[:, -1])
    torch.testing.assert_close(pool(hidden, None, "cls"), hidden[:, 0])
    mask = torch.ones(hidden.shape[:2], dtype=torch.int64)
    mask[3] = 0
    for mode in ("mean", "max", "last", "cls"):
        assert torch.equal(pool(hidden, mask, mode)[3], torch.zeros(hidden.shape[2]))
    with pytest.raises(ConfigError, match="pooling"):
        pool(hidden, None, "median")


def test_losses_against_formulas() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    labels = torch.tensor([0, 2])
    expected = -(torch.log_softmax(logits, -1)[0, 0] + torch.log_softmax(logits, -1)[1, 2]) / 2
    torch.testing.assert_close(head_loss(logits, labels, "classification"), expected)
    out = torch.tensor([[1.0], [3.0]])
    torch.testing.assert_close(head_loss(out, torch.tensor([0.0, 1.0]), "regression"), torch.tensor(2.5))
    with pytest.raises(ConfigError):
        head_loss(out, torch.zeros(3), "regression")


def _tiny_hyena(seed: int = 0) -> HyenaLM:
    torch.manual_seed(seed)
    cfg = HyenaConfig(d_model=16, n_layer=2, d_inner=32, l_max=34, filter_order=8, embed_dropout=0.0)
    return HyenaLM(cfg).eval()


def test_classifier_equals_manual_composition() -> None:
    lm = _tiny_hyena()
    model = SequenceClassifier(lm, 3, pooling="last", dropout=0.0, layer=1).eval()
    ids = torch.randint(7, 11, (4, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    mask[2, 3:] = 0
    with torch.no_grad():
        out = model(ids, mask)
        # causal model, right padding: the last real token of row b sees exactly its own sequence
        for b in range(4):
            n = int(mask[b].sum())
            h = lm.hidden_states(ids[b:b + 1, :n], [1])[0][0, -1]
            torch.testing.assert_close(out[b], F.linear(h, model.head.weight, model.head.bias), atol=1e-5, rtol=1e-5)
    assert out.shape == (4, 3)


def test_classifier_regression_and_validation() -> None:
    lm = _tiny_hyena()
    model = SequenceClassifier(lm, 1, task="regression", pooling="mean", dropout=0.0)
    ids = torch.randint(7, 11, (3, 10))
    out = model(ids)
    assert out.shape == (3, 1)
    loss = model.loss(out, torch.tensor([0.5, -1.0, 2.0]))
    loss.backward()
    assert model.head.weight.grad is not None and model.backbone.backbone.ln_f.weight.grad is not None
    with pytest.raises(ConfigError, match="2 classes"):
        SequenceClassifier(lm, 1, task="classification")
    with pytest.raises(ConfigError, match="pooling"):
        SequenceClassifier(lm, 2, pooling="sum")
    with pytest.raises(ConfigError, match="hidden_states"):
        SequenceClassifier(torch.nn.Linear(2, 2), 2, d_model=2)


def test_bert_pooler_head_by_hand_and_saved(tmp_path) -> None:
    """pooler=True: y = W dropout(tanh(W_p p + b_p)) + b on the pooled vector (eval: no dropout), by hand in
    float64; the saved classifier keeps the pooler, a head.json of before the option (no 'pooler' key) loads a
    head without one, and LoRA keeps the pooler trainable with the head."""
    import json

    from dnalm.models.heads import HEAD_CONFIG, load_classifier, save_classifier
    from dnalm.models.lora import LoraSettings, apply_lora

    lm = _tiny_hyena().double()
    model = SequenceClassifier(lm, 3, pooling="mean", dropout=0.1, pooler=True).double().eval()
    with torch.no_grad():
        model.head.pooler.weight.normal_(0, 0.5)
    ids = torch.randint(7, 11, (4, 12))
    with torch.no_grad():
        out = model(ids)
        p = model.features(ids)  # the pooled vector (pooling is tested above)
        expected = F.linear(torch.tanh(F.linear(p, model.head.pooler.weight, model.head.pooler.bias)),
                            model.head.weight, model.head.bias)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    assert SequenceClassifier(lm, 3).head.pooler is None

    saved = save_classifier(model.float(), tmp_path / "clf")
    config = json.loads((saved / HEAD_CONFIG).read_text())
    assert config["pooler"] is True
    again = load_classifier(saved).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids), model.float()(ids), atol=0, rtol=0)
    plain = save_classifier(SequenceClassifier(lm.float(), 3), tmp_path / "plain")
    del config
    config = json.loads((plain / HEAD_CONFIG).read_text())
    config.pop("pooler")
    (plain / HEAD_CONFIG).write_text(json.dumps(config))
    assert load_classifier(plain).head.pooler is None

    lora_model = SequenceClassifier(_tiny_hyena(), 2, pooler=True)
    apply_lora(lora_model, LoraSettings(enabled=True, r=2))
    trainable = {n for n, q in lora_model.named_parameters() if q.requires_grad}
    assert {"head.pooler.weight", "head.pooler.bias", "head.weight"} <= trainable


def test_head_config_round_trip_and_missing_key(tmp_path) -> None:
    """from_head_config rebuilds what head_config describes (without d_model: the backbone's width); a config
    without one of its keys is a one-line InputError naming the file and the key."""
    import json

    from dnalm.errors import InputError
    from dnalm.models.heads import HEAD_CONFIG, load_classifier, save_classifier

    lm = _tiny_hyena()
    model = SequenceClassifier(lm, 4, task="classification", pooling="max", dropout=0.2, layer=1)
    config = model.head_config(["a", "b", "c", "d"])
    del config["d_model"]
    again = SequenceClassifier.from_head_config(lm, config, "head.json")
    assert again.head_config(["a", "b", "c", "d"]) == model.head_config(["a", "b", "c", "d"])
    assert again.classes == ["a", "b", "c", "d"]

    saved = save_classifier(model, tmp_path / "clf")
    config = json.loads((saved / HEAD_CONFIG).read_text())
    config.pop("pooling")
    (saved / HEAD_CONFIG).write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"head\.json: head misses key 'pooling'"):
        load_classifier(saved)
