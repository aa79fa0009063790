"""Low-rank adaptation (LoRA) of dnalm models through ``peft``.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") freezes a pretrained
weight ``W0`` (d_out, d_in) and learns a low-rank update::

    h = W0 x + (alpha / r) · B A dropout(x),   A: (r, d_in), B: (d_out, r), B = 0 at the start

on the Linear layers named by ``target_modules``. The adapters are injected in place with
:func:`peft.inject_adapter_in_model`, which works on any ``nn.Module`` (dnalm's models are plain
modules): each targeted ``nn.Linear`` becomes a ``peft`` LoRA layer whose ``base_layer`` is the
original Linear, so base weights are never copied or changed while training.

Target presets (each family's ``lora_targets``, :mod:`dnalm.models.families`), by module names:
Hyena: the mixer's ``in_proj``/``out_proj`` and the MLP's ``fc1``/``fc2``; Transformer: the
attention projections ``in_proj`` (fused q, k, v) and ``out_proj``. The implicit Hyena filter
and the tied embedding/LM head are not adapted. Modules listed in ``trainable`` (the sequence
head, by default) stay fully trainable.

Adapter checkpoints are a directory with ``adapter.safetensors`` (the LoRA matrices and the
fully trainable modules, under the names of the adapted model) and ``adapter_config.json``
(format, LoRA options, a reference to the base checkpoint, and the head options when the
adapter was trained with a sequence head). :func:`merge_lora` folds an adapter into its base:
``W = W0 + (alpha / r) B A``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dnalm.errors import ConfigError, InputError
from dnalm.models.io import read_format_json

ADAPTER_FORMAT = "dnalm-lora/1"
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_NAME = "default"

#: Named target groups usable in ``target_modules``.
TARGET_GROUPS: dict[str, tuple[str, ...]] = {
    "mixer": ("in_proj", "out_proj"),
    "attention": ("in_proj", "out_proj"),
    "mlp": ("fc1", "fc2"),
}


@dataclass
class LoraSettings:
    """LoRA options (the ``lora`` node of ``dnalm finetune``).

    ``r``: rank; ``alpha``: scale numerator (update scaled by ``alpha / r``); ``dropout``: dropout on
    the adapter's input; ``target_modules``: Linear module names (or groups ``mixer``, ``attention``,
    ``mlp``), None for the family preset; ``trainable``: names of modules kept fully trainable
    (``head``: the sequence head); ``bias``: ``none``, ``lora_only`` or ``all`` (which biases train).
    """

    enabled: bool = False
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | None = None
    trainable: list[str] = field(default_factory=lambda: ["head"])
    bias: str = "none"

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ConfigError(f"lora.r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise ConfigError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if self.bias not in ("none", "lora_only", "all"):
            raise ConfigError(f"lora.bias must be none, lora_only or all, got {self.bias!r}")


def _family(model: nn.Module) -> str:
    inner = getattr(model, "backbone", None)
    for m in (model, inner):
        fam = getattr(m, "family", "")
        if fam:
            return fam
    return ""


def resolve_targets(model: nn.Module, target_modules: list[str] | None) -> list[str]:
    """Linear module names to adapt: the family preset when None, groups expanded; each must exist in ``model``."""
    if target_modules is None:
        from dnalm.models.families import family as family_named

        name = _family(model)
        try:
            names = list(family_named(name).lora_targets)
        except ConfigError:
            raise ConfigError(f"no LoRA target preset for model family '{name or type(model).__name__}'; "
                              "set lora.target_modules") from None
    else:
        names = []
        for t in target_modules:
            for n in TARGET_GROUPS.get(t, (t,)):
                if n not in names:
                    names.append(n)
    if not names:
        raise ConfigError("lora.target_modules is empty")
    linear = {n.removesuffix(".base_layer").rsplit(".", 1)[-1] for n, m in model.named_modules()
              if isinstance(m, nn.Linear)}
    missing = [n for n in names if n not in linear]
    if missing:
        raise ConfigError(f"lora.target_modules {missing} match no Linear layer of {type(model).__name__} "
                          f"(Linear layers: {', '.join(sorted(linear))})")
    return names


def is_lora_model(model: nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def apply_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """Inject LoRA adapters into ``model`` in place and return it.

    Afterwards only the LoRA matrices (plus biases per ``settings.bias``) and the modules named in
    ``settings.trainable`` have ``requires_grad``; every other parameter is frozen.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if is_lora_model(model):
        raise ConfigError("model already has LoRA adapters")
    targets = resolve_targets(model, settings.target_modules)
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=targets, bias=settings.bias)
    inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    modules = dict(model.named_modules())
    for name in settings.trainable:
        if name not in modules:
            raise ConfigError(f"lora.trainable: model has no module '{name}'")
        for p in modules[name].parameters():
            p.requires_grad_(True)
    return model


def adapter_state_dict(model: nn.Module, trainable: list[str] | None = None) -> dict[str, Tensor]:
    """The adapter's tensors: LoRA matrices, adapted biases and the modules named in ``trainable``."""
    from peft import get_peft_model_state_dict

    if not is_lora_model(model):
        raise ConfigError("model has no LoRA adapters")
    state = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    peft_state = get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME)
    biases = {k for k in peft_state if "lora_" not in k}
    state.update({k: v for k, v in model.state_dict().items() if k in biases})
    for name in trainable or []:
        prefix = name + "."
        state.update({k: v for k, v in model.state_dict().items() if k.startswith(prefix)})
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_adapter(model: nn.Module, path: str | os.PathLike, settings: LoraSettings, base_model: str | None = None,
                 head: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                 tokenizer: Any | None = None) -> Path:
    """Write the adapter directory ``path/`` atomically (``adapter.safetensors`` + ``adapter_config.json``).

    ``base_model``: the checkpoint the adapter was trained on (a path); ``head``: the head options of
    a :class:`~dnalm.models.heads.SequenceClassifier` (its ``head_config()``), None for a bare LM;
    ``tokenizer``: saved beside (``tokenizer.json``) when given.
    """
    from safetensors.torch import save_file

    from dnalm.utils import atomic_dir

    targets = resolve_targets(model, settings.target_modules)
    state = adapter_state_dict(model, settings.trainable)
    config = {
        "format": ADAPTER_FORMAT, "base_model": base_model, "family": _family(model),
        "r": settings.r, "alpha": settings.alpha, "dropout": settings.dropout,
        "target_modules": targets, "trainable": list(settings.trainable),
        "bias": settings.bias, "head": head, **(extra or {}),
    }
    path = Path(path)
    with atomic_dir(path) as tmp:
        save_file(state, str(tmp / ADAPTER_WEIGHTS), metadata={"format": ADAPTER_FORMAT})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save(tmp)
    return path


def read_adapter_config(path: str | os.PathLike) -> dict[str, Any]:
    """``adapter_config.json`` of an adapter directory, checked for its format."""
    file = Path(path) / ADAPTER_CONFIG
    config = read_format_json(file, ADAPTER_FORMAT, "a dnalm LoRA adapter directory")
    for key in ("r", "alpha", "dropout", "target_modules", "trainable", "bias"):
        if key not in config:
            raise InputError(f"{file}: missing key '{key}'")
    return config


def settings_from_config(config: dict[str, Any]) -> LoraSettings:
    return LoraSettings(enabled=True, r=int(config["r"]), alpha=float(config["alpha"]),
                        dropout=float(config["dropout"]), target_modules=list(config["target_modules"]),
                        trainable=list(config["trainable"]), bias=str(config["bias"]))


def load_adapter(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Inject the adapter of ``path`` into ``model`` (the base it was trained on, with its head) and load it."""
    from safetensors.torch import load_file

    config = read_adapter_config(path)
    apply_lora(model, settings_from_config(config))
    file = Path(path) / ADAPTER_WEIGHTS
    if not file.is_file():
        raise InputError(f"{path}: no {ADAPTER_WEIGHTS}")
    device = next(model.parameters()).device
    state = load_file(str(file), device=str(device))
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        raise InputError(f"{file}: tensor '{unknown[0]}' does not exist in the base model (wrong base?)")
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise InputError(f"{file}: tensor '{k}' has shape {tuple(v.shape)}, the model {tuple(own[k].shape)}")
    missing = [k for k in adapter_state_dict(model, config["trainable"]) if k not in state]
    if missing:
        raise InputError(f"{file}: missing tensor '{missing[0]}'")
    model.load_state_dict(state, strict=False)
    return model


@torch.no_grad()
def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base Linear (``W0 + (alpha / r) B A``) and remove the adapters, in place.

    Parameters keep their ``requires_grad`` flags (base weights stay frozen as :func:`apply_lora` left them).
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in layers:
        layer.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    return model


def merge_lora(base: nn.Module | str | os.PathLike, adapter: str | os.PathLike) -> nn.Module:
    """The base model with the adapter merged in: a plain LM, or a
    :class:`~dnalm.models.heads.SequenceClassifier` when the adapter was trained with a head.

    ``base`` is a loaded model or a checkpoint path (any layout :func:`dnalm.models.io.load_pretrained` reads).
    """
    config = read_adapter_config(adapter)
    if not isinstance(base, nn.Module):
        from dnalm.models.io import load_pretrained

        base = load_pretrained(base)
    model = base
    head = config.get("head")
    if head:
        from dnalm.models.heads import SequenceClassifier

        model = SequenceClassifier.from_head_config(base, head, Path(adapter) / ADAPTER_CONFIG)
    load_adapter(model, adapter)
    return merge_and_unload(model)
