"""Checkpoint loading from every HyenaDNA layout, dnalm's own format, and refusal of unsafe pickles."""

from __future__ import annotations

import builtins
import json
import os
import pickle
import shutil

import pytest
import torch
from safetensors.torch import save_file

from dnalm.cli import run
from dnalm.errors import ConfigError, InputError
from dnalm.models.hyena import PRESETS, HyenaConfig, HyenaLM, infer_hyena_config, load_hyenadna_config
from dnalm.models.io import (
    load_pretrained,
    read_pretrained_info,
    safe_torch_load,
    save_pretrained,
)
from dnalm.tokenizers import CharTokenizer, load_tokenizer

TOL = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture(scope="module")
def reference(hyena_fixture):
    def load(name):
        return torch.load(hyena_fixture / name, weights_only=True)
    return {"ids": load("input_ids.pt"), "logits": load("logits.pt"), "hidden": load("hidden_states.pt"),
            "shift0": load("logits_trainingcode_shift0.pt"), "state_dict": load("state_dict.pt")}


def _assert_reproduces(model, reference, logits_key="logits"):
    assert not model.training
    with torch.no_grad():
        logits, (hidden,) = model.forward_with_hidden(reference["ids"], [-1])
    torch.testing.assert_close(logits, reference[logits_key], **TOL)
    if logits_key == "logits":
        torch.testing.assert_close(hidden, reference["hidden"], **TOL)


@pytest.mark.parametrize("layout", ["state_dict.pt", "hub_lightning", "hub_lightning/weights.ckpt", "hub_hf",
                                    "hub_hf/pytorch_model.bin"])
def test_every_fixture_layout_reproduces_reference(hyena_fixture, reference, layout):
    model = load_pretrained(hyena_fixture / layout)
    assert isinstance(model, HyenaLM)
    assert model.config == PRESETS["tiny-1k"]
    _assert_reproduces(model, reference)


def test_shift_override_gives_training_code_outputs(hyena_fixture, reference):
    model = load_pretrained(hyena_fixture / "hub_lightning", overrides={"shift": 0.0})
    _assert_reproduces(model, reference, "shift0")


def test_configs_from_both_hub_layouts_and_from_shapes(hyena_fixture, reference):
    original = load_hyenadna_config(hyena_fixture / "config.json")
    hf = load_hyenadna_config(hyena_fixture / "config_hf.json")
    assert original == hf == PRESETS["tiny-1k"]
    assert infer_hyena_config({f"{k}": v for k, v in reference["state_dict"].items()}) == PRESETS["tiny-1k"]
    assert load_hyenadna_config(hyena_fixture, shift=0.0).shift == 0.0


def test_save_and_reload_dnalm_format(tmp_path, hyena_fixture, reference):
    model = load_pretrained(hyena_fixture / "hub_hf")
    out = save_pretrained(model, tmp_path / "m", tokenizer=CharTokenizer.hyenadna(), extra={"note": "x"})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    info = read_pretrained_info(out)
    assert info["family"] == "hyena" and info["extra"] == {"note": "x"} and info["config"]["l_max"] == 1026
    again = load_pretrained(out)
    assert again.config == model.config
    assert list(again.state_dict()) == list(model.state_dict())
    assert again.lm_head.weight is again.backbone.embeddings.word_embeddings.weight
    _assert_reproduces(again, reference)
    assert load_tokenizer(out) == CharTokenizer.hyenadna()
    # overwriting leaves a complete directory and no temporary files beside it
    save_pretrained(again, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_save_is_atomic_on_failure(tmp_path, hyena_fixture):
    model = load_pretrained(hyena_fixture / "hub_hf")
    save_pretrained(model, tmp_path / "m")
    before = (tmp_path / "m" / "model.safetensors").read_bytes()

    class BrokenTokenizer:
        def save(self, directory):
            raise OSError("disk full")

    with pytest.raises(OSError):
        save_pretrained(model, tmp_path / "m", tokenizer=BrokenTokenizer())
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_convert_command_then_reload(tmp_path, hyena_fixture, reference):
    assert run(["convert", f"src={hyena_fixture / 'hub_lightning'}", f"out={tmp_path / 'a'}"]) == 0
    _assert_reproduces(load_pretrained(tmp_path / "a"), reference)
    assert load_tokenizer(tmp_path / "a") == CharTokenizer.hyenadna()
    src = hyena_fixture / "state_dict.pt"
    assert run(["convert", f"src={src}", f"out={tmp_path / 'b'}", "shift=0.0"]) == 0
    _assert_reproduces(load_pretrained(tmp_path / "b"), reference, "shift0")


def test_convert_command_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        run(["convert", f"src={tmp_path / 'missing'}", f"out={tmp_path / 'o'}"])
    with pytest.raises(ConfigError, match="src=PATH"):
        run(["convert", f"out={tmp_path / 'o'}"])
    assert not (tmp_path / "o").exists()


def test_lightning_with_checkpointing_infix_and_omegaconf_objects(tmp_path, hyena_fixture, reference):
    from omegaconf import OmegaConf

    sd = {}
    for k, v in reference["state_dict"].items():
        k = k.replace(".mixer.", ".mixer.layer.").replace(".mlp.", ".mlp.layer.")
        sd["model." + k] = v
    sd["model.lm_head.weight"] = reference["state_dict"]["backbone.embeddings.word_embeddings.weight"]
    sd["train_torchmetrics.perplexity.total"] = torch.tensor(3.0)
    ckpt = {"state_dict": sd, "epoch": 3,
            "hyper_parameters": OmegaConf.create({"model": {"d_model": 128, "layer": {"l_max": 1026}},
                                                 "callbacks": [{"monitor": "val/loss"}]}),
            "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}},
                                  "param_groups": [{"lr": 6e-4, "betas": (0.9, 0.999)}]}]}
    (tmp_path / "ck").mkdir()
    torch.save(ckpt, tmp_path / "ck" / "weights.ckpt")
    config = json.loads((hyena_fixture / "hub_lightning" / "config.json").read_text())
    config.update(checkpoint_mixer=True, checkpoint_mlp=True)
    (tmp_path / "ck" / "config.json").write_text(json.dumps(config))
    with pytest.raises(pickle.UnpicklingError):  # the plain restricted unpickler refuses OmegaConf objects
        torch.load(tmp_path / "ck" / "weights.ckpt", weights_only=True)
    _assert_reproduces(load_pretrained(tmp_path / "ck"), reference)


@pytest.mark.parametrize("kept", [[1], [5], [3, 5], []])
def test_hf_safetensors_with_partial_freq(tmp_path, hyena_fixture, reference, kept):
    sd = {}
    for k, v in reference["state_dict"].items():
        index = k.split(".implicit_filter.")[-1].split(".")[0] if k.endswith(".freq") else None
        if index is not None and int(index) not in kept:
            continue
        sd["hyena." + k] = v.clone()
    sd["lm_head.weight"] = reference["state_dict"]["backbone.embeddings.word_embeddings.weight"].clone()
    save_file(sd, str(tmp_path / "model.safetensors"))
    shutil.copy(hyena_fixture / "config_hf.json", tmp_path / "config.json")
    if not kept:  # no stored freq at all: the file is incomplete (the initial w is not the trained value)
        with pytest.raises(InputError, match=r"missing: backbone\.layers\.0\.mixer\.filter_fn\..*\.1\.freq"):
            load_pretrained(tmp_path)
        return
    _assert_reproduces(load_pretrained(tmp_path), reference)


class _RunsCode:
    """A pickle payload that would call ``fn(arg)`` when unpickled."""

    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


@pytest.mark.parametrize("how", ["os.system", "builtins.exec"])
def test_code_in_a_checkpoint_never_runs(tmp_path, reference, how):
    marker = tmp_path / "marker"
    if how == "os.system":
        payload = _RunsCode(os.system, f"touch {marker}")
    else:
        payload = _RunsCode(builtins.exec, f"open({str(marker)!r}, 'w').close()")
    sd = {"model." + k: v for k, v in reference["state_dict"].items()}
    (tmp_path / "ck").mkdir()
    torch.save({"state_dict": sd, "hyper_parameters": payload}, tmp_path / "ck" / "weights.ckpt")
    with pytest.raises(InputError, match=r"weights\.ckpt.*refus"):
        load_pretrained(tmp_path / "ck")
    with pytest.raises(InputError, match="refus"):
        safe_torch_load(tmp_path / "ck" / "weights.ckpt")
    assert not marker.exists()


def test_a_raw_pickle_is_refused_with_its_reason(tmp_path):
    """A plain pickle (no zip container) reaches the restricted unpickler itself; the error names what it
    refused, without PyTorch's advice to load the file unsafely."""
    marker = tmp_path / "marker"
    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps(_RunsCode(os.system, f"touch {marker}"), protocol=2))
    with pytest.raises(InputError, match=r"pytorch_model\.bin: refused by the restricted unpickler \(.*posix\.system"
                       ) as err:
        load_pretrained(tmp_path)
    assert "weights_only" not in str(err.value) and not marker.exists()
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(InputError, match=r"not a readable PyTorch file \(unexpected end of file"):
        load_pretrained(tmp_path)


def test_unknown_layouts_and_mismatches(tmp_path, hyena_fixture, reference):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: unknown model layout"):
        load_pretrained(tmp_path / "empty")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=r"junk\.pt"):
        load_pretrained(tmp_path / "junk.pt")
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(InputError, match=r"other\.pt: unknown checkpoint layout"):
        load_pretrained(tmp_path / "other.pt")
    # config.json that disagrees with the weights
    (tmp_path / "bad").mkdir()
    shutil.copy(hyena_fixture / "state_dict.pt", tmp_path / "bad" / "state_dict.pt")
    config = json.loads((hyena_fixture / "config.json").read_text())
    config["d_model"] = 256
    (tmp_path / "bad" / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="do not fit the model config"):
        load_pretrained(tmp_path / "bad")
    # an LM head that is not the embedding cannot be tied
    sd = dict(reference["state_dict"])
    sd["lm_head.weight"] = torch.zeros(16, 128)
    torch.save(sd, tmp_path / "untied.pt")
    with pytest.raises(InputError, match="lm_head.weight' differs"):
        load_pretrained(tmp_path / "untied.pt")


def _tiny_dnalm_dir(path):
    torch.manual_seed(0)
    return save_pretrained(HyenaLM(HyenaConfig(d_model=16, n_layer=2, d_inner=32, l_max=66, filter_order=8)), path)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("d_model", 1 << 20, r"shape mismatch: backbone\.embeddings\.word_embeddings\.weight \(16, 16\) vs "
                         r"\(16, 1048576\)"),
    ("l_max", 1 << 40, r"shape mismatch: .*pos_emb\.t \(1, 66, 1\) vs \(1, 1099511627776, 1\)"),
    ("n_layer", 10**5, r"n_layer=100,000 but only \d+ tensors are stored"),
    ("d_model", 10**9, r"it cannot be built \(Storage size calculation overflowed"),
])
def test_a_config_that_claims_a_huge_model_fails_before_allocating(tmp_path, field, value, message):
    """The weights file bounds the model: a config.json that disagrees is refused on the meta device, not after
    trying to allocate terabytes (or building 10^5 layers)."""
    model_dir = _tiny_dnalm_dir(tmp_path / "m")
    meta = json.loads((model_dir / "config.json").read_text())
    meta["config"][field] = value
    (model_dir / "config.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"model\.safetensors: weights do not fit the model config: " + message):
        load_pretrained(model_dir)


@pytest.mark.parametrize("edit", ["truncate", "empty", "header"])
def test_an_unreadable_dnalm_weights_file_is_an_input_error(tmp_path, edit):
    model_dir = _tiny_dnalm_dir(tmp_path / "m")
    file = model_dir / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes({"truncate": data[: len(data) // 2], "empty": b"", "header": (10**12).to_bytes(8, "little")
                      + data[8:]}[edit])
    with pytest.raises(InputError, match=r"model\.safetensors: not a readable safetensors file"):
        load_pretrained(model_dir)


def test_save_requires_a_family(tmp_path):
    with pytest.raises(ValueError):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path / "x")


def test_config_errors_name_the_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"d_model": 8, "layer": {"emb_dim": 5}}))
    with pytest.raises(InputError, match=r"config\.json: missing field 'n_layer'"):
        load_hyenadna_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(InputError, match="not a HyenaDNA config"):
        load_hyenadna_config(tmp_path / "config.json")
    assert HyenaConfig() == PRESETS["tiny-1k"]
