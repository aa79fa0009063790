"""Saving and loading models: dnalm's own format and HyenaDNA's published layouts.

dnalm's format (a directory)::

    model.safetensors   every tensor of ``model.state_dict()``, tied/shared tensors stored once
    config.json         {"format": "dnalm-model/1", "family": "hyena", "config": {...}, "extra": {...}}
    tokenizer.json      when a tokenizer was given (read it with dnalm.tokenizers.load_tokenizer)

:func:`load_pretrained` also reads HyenaDNA checkpoints (``shared/reference/hyenadna.md`` §5):

* Lightning (``LongSafari/hyenadna-*-seqlen``): ``weights.ckpt`` + ``config.json``; keys
  ``model.backbone...``, with or without the ``.mixer.layer.`` / ``.mlp.layer.`` infix of
  activation checkpointing; the file also pickles OmegaConf objects and optimizer state;
* ``-hf`` (``LongSafari/hyenadna-*-seqlen-hf``): ``model.safetensors`` or ``pytorch_model.bin`` +
  ``config.json`` (``model_type: hyenadna``); keys ``hyena.backbone...`` and a separate
  ``lm_head.weight``; the shared Sin ``freq`` may be stored under only some of its names;
* a plain state dict (``.pt``/``.pth``/``.bin``/``.safetensors``) with ``backbone...`` keys.

Without a recognised ``config.json`` beside the weights, the configuration is read off the
tensor shapes. The modulation ``shift`` is stored in none of HyenaDNA's layouts; it defaults to
0.05 (standalone and ``-hf`` code) and can be overridden (``overrides={"shift": 0.0}``).

Pickled files (``.ckpt``, ``.bin``, ``.pt``) are read with PyTorch's restricted unpickler
(``weights_only=True``). Besides tensors and plain containers it accepts only the names in
:data:`INERT_PREFIXES` (OmegaConf, typing, pathlib, numpy objects found in Lightning
checkpoints), which are replaced by inert stand-ins that run no code; any other global (a
function a malicious pickle would call) makes the load fail with :class:`InputError`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dnalm.errors import ConfigError, InputError
from dnalm.models.hyena import HyenaConfig, HyenaLM
from dnalm.utils import atomic_dir, torch_load_reason

log = logging.getLogger(__name__)

FORMAT = "dnalm-model/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

#: family name -> (module, config class, model class); model classes take ``(config)`` and carry
#: ``.config`` and a ``family`` class attribute.
FAMILIES: dict[str, tuple[str, str, str]] = {
    "hyena": ("dnalm.models.hyena", "HyenaConfig", "HyenaLM"),
    "transformer": ("dnalm.models.transformer", "TransformerConfig", "TransformerLM"),
}

#: Weight files looked for, in this order, when ``load_pretrained`` is given a directory.
WEIGHT_NAMES = ("model.safetensors", "weights.ckpt", "pytorch_model.bin", "model.bin", "model.pt",
                "pytorch_model.pt", "state_dict.pt", "model.pth")

#: Pickled globals that are replaced by inert stand-ins when reading a checkpoint.
INERT_PREFIXES = ("omegaconf.", "typing.", "pathlib.", "numpy.")


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------


def save_pretrained(model: nn.Module, path: str | os.PathLike, tokenizer: Any | None = None,
                    extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` (and ``tokenizer``, ``extra`` JSON metadata) to the directory ``path``.

    The directory is written under a temporary name and replaces ``path`` only when complete.
    ``model`` needs a ``family`` listed in :data:`FAMILIES` and a dataclass ``config``.
    ``tokenizer`` is anything with ``save(directory)`` writing ``tokenizer.json``.
    """
    from safetensors.torch import save_model

    from dnalm import __version__

    family = getattr(model, "family", "")
    config = getattr(model, "config", None)
    if family not in FAMILIES or not dataclasses.is_dataclass(config):
        raise ValueError(f"save_pretrained: {type(model).__name__} has no known family and dataclass config")
    meta = {"format": FORMAT, "family": family, "dnalm_version": __version__,
            "config": dataclasses.asdict(config), "extra": dict(extra or {})}
    path = Path(path)
    with atomic_dir(path) as tmp:
        save_model(model, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "family": family})
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save(tmp)
    return path


# ---------------------------------------------------------------------------------------------
# Restricted unpickling
# ---------------------------------------------------------------------------------------------


class _Inert:
    """Stand-in for a pickled class: keeps its arguments and state, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _plain_dict(*args: Any) -> dict:
    """Stand-in for ``collections.defaultdict``: an empty dict (its default factory is dropped)."""
    return {}


_PLAIN_GLOBALS: dict[str, Any] = {
    "builtins.int": int, "builtins.float": float, "builtins.str": str, "builtins.bool": bool,
    "builtins.dict": dict, "builtins.list": list, "builtins.tuple": tuple, "builtins.set": set,
    "builtins.frozenset": frozenset, "__builtin__.set": set, "collections.OrderedDict": OrderedDict,
    "collections.defaultdict": _plain_dict,
}
_STAND_INS: dict[str, type] = {}


def _safe_global(name: str) -> Any | None:
    if name in _PLAIN_GLOBALS:
        return _PLAIN_GLOBALS[name]
    if name.startswith(INERT_PREFIXES):
        if name not in _STAND_INS:
            _STAND_INS[name] = type(name.rsplit(".", 1)[-1], (_Inert,), {"__module__": __name__})
        return _STAND_INS[name]
    return None


def safe_torch_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` that also accepts Lightning's OmegaConf objects.

    Globals outside PyTorch's own allow-list are accepted only when :func:`_safe_global` maps
    them to a plain container type or an inert stand-in; otherwise :class:`InputError` names them
    and nothing is unpickled.
    """
    import pickle

    path = Path(path)
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # legacy (non-zip) files: the restricted unpickler alone decides
        names = []
    refused = [n for n in names if _safe_global(n) is None]
    if refused:
        raise InputError(f"{path}: refusing to unpickle {', '.join(refused)} (a checkpoint may only hold "
                         "tensors and plain data; loading never runs code)")
    allowed = [(_safe_global(n), n) for n in names]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError(f"{path}: refused by the restricted unpickler ({torch_load_reason(exc)})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable PyTorch file ({torch_load_reason(exc)})") from None


# ---------------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read JSON ({exc})") from None


def read_format_json(file: str | os.PathLike, fmt: str, what: str) -> dict[str, Any]:
    """The JSON object in ``file``, which must exist and say ``"format": fmt``; ``what`` names the kind of
    directory it belongs to in the error (e.g. 'a saved sequence classifier')."""
    file = Path(file)
    if not file.is_file():
        raise InputError(f"{file.parent}: no {file.name} (not {what})")
    config = _read_json(file)
    if not isinstance(config, dict) or config.get("format") != fmt:
        raise InputError(f"{file}: format is not {fmt}")
    return config


def _hyena_fields_from_original(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """HyenaDNA's own config.json (standalone constructor arguments, §5a).

    Absent layer fields take the values every released config sets (emb_dim 5, w 10, ...).
    """
    layer = cfg.get("layer") or {}
    if layer.get("bidirectional"):
        raise ConfigError("bidirectional Hyena layers are not supported")
    d_model = cfg["d_model"]
    out = {
        "d_model": d_model,
        "n_layer": cfg["n_layer"],
        "d_inner": cfg.get("d_inner") or 4 * d_model,
        "vocab_size": cfg.get("vocab_size", 12),
        "pad_vocab_size_multiple": cfg.get("pad_vocab_size_multiple", 8),
        "embed_dropout": cfg.get("embed_dropout", 0.1),
        "resid_dropout": cfg.get("resid_dropout", 0.0),
        "residual_in_fp32": cfg.get("residual_in_fp32", True),
        "l_max": layer["l_max"],
        "emb_dim": layer.get("emb_dim", 5),
        "filter_order": layer.get("filter_order", 64),
        "w": layer.get("w", 10),
        "modulate": layer.get("modulate", True),
        "train_pos_emb": bool(layer.get("lr_pos_emb", 0.0)),
    }
    # The reference ignores ``local_order`` (its short convolution always has 3 taps).
    for key in ("shift", "fast_decay_pct", "slow_decay_pct", "target"):
        if key in layer:
            out["decay_target" if key == "target" else key] = layer[key]
    return out


def _hyena_fields_from_hf(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``-hf`` port's flat config.json (§5b)."""
    for key, want in (("hyena_order", 2), ("num_inner_mlps", 2), ("use_bias", True)):
        if cfg.get(key, want) != want:
            raise ConfigError(f"{key}={cfg[key]!r} is not supported (only {want!r})")
    return {
        "d_model": cfg["d_model"],
        "n_layer": cfg["n_layer"],
        "d_inner": cfg.get("d_inner") or 4 * cfg["d_model"],
        "vocab_size": cfg.get("vocab_size", 12),
        "pad_vocab_size_multiple": cfg.get("pad_vocab_size_multiple", 8),
        "l_max": cfg["max_seq_len"],
        "emb_dim": cfg.get("emb_dim", 5),
        "filter_order": cfg.get("filter_order", 64),
        "short_filter_order": cfg.get("short_filter_order", 3),
        "w": cfg.get("activation_freq", 10),
        "train_freq": cfg.get("train_freq", True),
        "embed_dropout": cfg.get("embed_dropout", 0.1),
        "hyena_dropout": cfg.get("hyena_dropout", 0.0),
        "layer_norm_eps": cfg.get("layer_norm_epsilon", 1e-5),
        "initializer_range": cfg.get("initializer_range", 0.02),
    }


def is_hyenadna_config(cfg: Any) -> bool:
    """Whether a parsed config.json is HyenaDNA's original or ``-hf`` layout."""
    if not isinstance(cfg, Mapping):
        return False
    return cfg.get("model_type") == "hyenadna" or (isinstance(cfg.get("layer"), Mapping) and "d_model" in cfg)


def load_hyenadna_config(source: str | os.PathLike | Mapping[str, Any], **overrides: Any) -> HyenaConfig:
    """A :class:`HyenaConfig` from HyenaDNA's ``config.json`` (original or ``-hf`` layout).

    ``source``: the file, its directory, or the parsed dict. Field mapping (§5): original
    ``layer.l_max``/``layer.w``/``layer.lr_pos_emb > 0`` -> ``l_max``/``w``/``train_pos_emb``;
    ``-hf`` ``max_seq_len``/``activation_freq``/``layer_norm_epsilon`` -> ``l_max``/``w``/
    ``layer_norm_eps``. ``overrides`` replace fields (e.g. ``shift=0.0``).
    """
    where = "config"
    if isinstance(source, Mapping):
        cfg = source
    else:
        path = Path(source)
        path = path / CONFIG_FILE if path.is_dir() else path
        where = str(path)
        cfg = _read_json(path)
    if not is_hyenadna_config(cfg):
        raise InputError(f"{where}: not a HyenaDNA config (expected 'layer' with 'd_model', or model_type "
                         "'hyenadna')")
    try:
        fields = _hyena_fields_from_hf(cfg) if cfg.get("model_type") == "hyenadna" else \
            _hyena_fields_from_original(cfg)
        fields.update(overrides)
        return HyenaConfig(**fields)
    except KeyError as exc:
        raise InputError(f"{where}: missing field {exc}") from None
    except (TypeError, ValueError, ConfigError) as exc:
        raise InputError(f"{where}: {exc}") from None


def infer_hyena_config(state_dict: Mapping[str, Tensor], **overrides: Any) -> HyenaConfig:
    """A :class:`HyenaConfig` read off the tensor shapes of a (normalised) HyenaDNA state dict.

    Keys as in :mod:`dnalm.models.blocks`. Fields the shapes do not determine (dropouts, shift)
    keep their defaults unless given in ``overrides``.
    """
    emb = state_dict["backbone.embeddings.word_embeddings.weight"]  # (V, D)
    V, d = emb.shape
    layers = {int(k.split(".")[2]) for k in state_dict if k.startswith("backbone.layers.")}
    p = "backbone.layers.0."
    z = state_dict[p + "mixer.filter_fn.pos_emb.z"]  # (1, l_max, emb_dim)
    fields = {
        "d_model": d, "n_layer": len(layers), "vocab_size": 12 if V == 16 else V,
        "pad_vocab_size_multiple": 8 if V % 8 == 0 else 1,
        "d_inner": state_dict[p + "mlp.fc1.weight"].shape[0],
        "l_max": z.shape[1], "emb_dim": z.shape[2],
        "filter_order": state_dict[p + "mixer.filter_fn.implicit_filter.0.weight"].shape[0],
        "short_filter_order": state_dict[p + "mixer.short_filter.weight"].shape[-1],
    }
    fields.update(overrides)
    return HyenaConfig(**fields)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _normalise_hyenadna_keys(sd: Mapping[str, Tensor], where: Path) -> dict[str, Tensor]:
    """Lightning/-hf/checkpointed keys -> dnalm keys; task heads and metrics are dropped."""
    out: dict[str, Tensor] = {}
    dropped = []
    for key, value in sd.items():
        if not isinstance(value, Tensor):
            continue
        k = key
        for prefix in ("model.", "hyena."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        k = k.replace(".mixer.layer.", ".mixer.").replace(".mlp.layer.", ".mlp.")
        if k.startswith(("backbone.", "lm_head.")):
            out[k] = value
        else:
            dropped.append(key)
    if not any(k.startswith("backbone.layers.") for k in out):
        raise InputError(f"{where}: unknown checkpoint layout (no HyenaDNA 'backbone.layers.*' weights; "
                         f"first keys: {', '.join(list(sd)[:3])})")
    if dropped:
        log.info("%s: ignored %d tensors outside the LM (%s ...)", where, len(dropped), dropped[0])
    return out


def _fill_aliases(model: nn.Module, sd: dict[str, Tensor], where: Path) -> dict[str, Tensor]:
    """Give every name of a tensor the model shares (tied head, shared ``freq``) the stored value.

    A tensor stored under several of its names must hold the same values under each.
    """
    groups: dict[tuple, list[str]] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        groups.setdefault((t.device, t.data_ptr()), []).append(name)
    sd = dict(sd)
    for names in groups.values():
        present = [n for n in names if n in sd]
        if len(names) < 2 or not present:
            continue
        ref = sd[present[0]]
        for n in present[1:]:
            if sd[n].shape != ref.shape or not torch.equal(sd[n], ref):
                raise InputError(f"{where}: '{n}' differs from '{present[0]}', but the model ties them")
        for n in names:
            sd.setdefault(n, ref)
    return sd


def _check_fits(model_cls: type, config: Any, sd: Mapping[str, Tensor], where: Path) -> None:
    """Raise InputError when ``sd`` cannot hold the weights of ``model_cls(config)``, before any memory is
    allocated for the model: a config that claims a huge model (a hostile or corrupt config.json) fails at
    once instead of exhausting memory. Each block has tensors of its own, so ``n_layer`` is at most the
    number of tensors; the shapes are compared on a model built on the meta device."""
    n_layer = getattr(config, "n_layer", None)
    if isinstance(n_layer, int) and n_layer > len(sd):
        raise InputError(f"{where}: weights do not fit the model config: n_layer={n_layer:,} but only "
                         f"{len(sd)} tensors are stored")
    try:
        own = model_cls(config, device=torch.device("meta")).state_dict()
    except (RuntimeError, ValueError, OverflowError) as exc:  # sizes beyond what a tensor can have
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{where}: weights do not fit the model config: it cannot be built ({first})") from None
    bad = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in sd.items()
           if k in own and v.shape != own[k].shape]
    if bad:
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        raise InputError(f"{where}: weights do not fit the model config: shape mismatch: {', '.join(bad[:3])}{more}")


def _load_into(model: nn.Module, sd: dict[str, Tensor], where: Path) -> None:
    sd = _fill_aliases(model, sd, where)
    own = model.state_dict()
    bad = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in sd.items()
           if k in own and v.shape != own[k].shape]
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    for what, items in (("shape mismatch", bad), ("missing", missing), ("unexpected", unexpected)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            raise InputError(f"{where}: weights do not fit the model config: {what}: "
                             f"{', '.join(items[:3])}{more}")
    with torch.no_grad():
        model.load_state_dict(sd, strict=True)


def _read_weights(file: Path) -> Mapping[str, Tensor]:
    """The tensors of a weight file (on the CPU); a Lightning checkpoint gives its ``state_dict``."""
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(file), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise InputError(f"{file}: not a readable safetensors file ({exc})") from None
    obj = safe_torch_load(file, map_location="cpu")
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise InputError(f"{file}: expected a state dict or a Lightning checkpoint, "
                         f"found {type(obj).__name__}")
    return obj


def _load_dnalm(directory: Path, meta: Mapping[str, Any], map_location: str | torch.device,
                overrides: Mapping[str, Any]) -> nn.Module:
    cfg_path = directory / CONFIG_FILE
    family = meta.get("family")
    if family not in FAMILIES:
        raise InputError(f"{cfg_path}: unknown model family {family!r} (known: {', '.join(FAMILIES)})")
    module_name, cfg_name, model_name = FAMILIES[family]
    module = importlib.import_module(module_name)
    config_cls, model_cls = getattr(module, cfg_name), getattr(module, model_name)
    try:
        config = config_cls(**{**dict(meta.get("config") or {}), **overrides})
    except (TypeError, ValueError, ConfigError) as exc:
        raise InputError(f"{cfg_path}: bad model config ({exc})") from None
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise InputError(f"{weights}: missing (named by {cfg_path})")
    sd = dict(_read_weights(weights))
    _check_fits(model_cls, config, sd, weights)
    model = model_cls(config)
    _load_into(model, sd, weights)
    return model.to(map_location)


def read_pretrained_info(path: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a model saved by :func:`save_pretrained` (family, config, extra)."""
    path = Path(path)
    file = path / CONFIG_FILE if path.is_dir() else path
    meta = _read_json(file)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"{file}: not a dnalm model config (no format '{FORMAT}')")
    return meta


def load_pretrained(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    overrides: Mapping[str, Any] | None = None) -> nn.Module:
    """Load a model saved by :func:`save_pretrained` or a HyenaDNA checkpoint (see the module doc).

    ``path``: a directory or a weight file. ``overrides``: config fields to replace (e.g.
    ``{"shift": 0.0}`` for HyenaDNA's training-code filters). The model is returned in eval mode
    on ``map_location``, in float32 for HyenaDNA checkpoints. Unknown layouts raise InputError.
    """
    path = Path(path)
    overrides = dict(overrides or {})
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    directory = path if path.is_dir() else path.parent
    meta = _read_json(directory / CONFIG_FILE) if (directory / CONFIG_FILE).is_file() else None
    if path.is_dir():
        if isinstance(meta, Mapping) and meta.get("format") == FORMAT:
            return _load_dnalm(path, meta, map_location, overrides).eval()
        file = next((path / n for n in WEIGHT_NAMES if (path / n).is_file()), None)
        if file is None:
            raise InputError(f"{path}: unknown model layout (no {CONFIG_FILE} of dnalm and none of "
                             f"{', '.join(WEIGHT_NAMES)})")
    else:
        file = path
    sd = _normalise_hyenadna_keys(_read_weights(file), file)
    try:
        if is_hyenadna_config(meta):
            config = load_hyenadna_config(directory / CONFIG_FILE, **overrides)
        else:
            config = infer_hyena_config(sd, **overrides)
    except KeyError as exc:
        raise InputError(f"{file}: cannot infer the model config, missing tensor {exc}") from None
    except (TypeError, ConfigError) as exc:
        raise InputError(f"{file}: {exc}") from None
    _check_fits(HyenaLM, config, sd, file)
    model = HyenaLM(config)
    _load_into(model, sd, file)
    return model.to(map_location).eval()

