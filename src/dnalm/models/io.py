"""Saving and loading models: dnalm's own format and the published layouts of each family.

dnalm's format (a directory)::

    model.safetensors   every tensor of ``model.state_dict()``, tied/shared tensors stored once
    config.json         {"format": "dnalm-model/1", "family": "hyena", "config": {...}, "extra": {...}}
    tokenizer.json      when a tokenizer was given (read it with dnalm.tokenizers.load_tokenizer)

:func:`load_pretrained` also reads the published checkpoint layouts each model family lists
(:class:`dnalm.models.family.Importer`; e.g. HyenaDNA's Lightning, ``-hf`` and plain state-dict
layouts in :mod:`dnalm.models.hyena`, DNABERT-2's hub layout in :mod:`dnalm.models.dnabert2`).
The families are asked in the order of :data:`dnalm.models.families.FAMILIES`; an importer marked
``fallback`` (a bare weight file whose config is read off the tensor shapes) is tried last.

Pickled files (``.ckpt``, ``.bin``, ``.pt``) are read with PyTorch's restricted unpickler
(``weights_only=True``). Besides tensors and plain containers it accepts only the names in
:data:`INERT_PREFIXES` (OmegaConf, typing, pathlib, numpy objects found in Lightning
checkpoints, byte buffers in vortex checkpoints), which are replaced by inert stand-ins that run
no code; any other global (a function a malicious pickle would call) makes the load fail with
:class:`InputError`.
"""

from __future__ import annotations

import dataclasses
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
from dnalm.models.family import HUB_WEIGHTS
from dnalm.utils import atomic_dir, torch_load_reason

log = logging.getLogger(__name__)

FORMAT = "dnalm-model/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

#: Weight files looked for, in this order, when ``load_pretrained`` is given a directory.
WEIGHT_NAMES = ("model.safetensors", "weights.ckpt", "pytorch_model.bin", "model.bin", "model.pt",
                "pytorch_model.pt", "state_dict.pt", "model.pth")

#: Pickled globals that are replaced by inert stand-ins when reading a checkpoint (``_io.BytesIO``: the
#: Transformer Engine ``_extra_state`` entries of Evo 2's vortex files, which are dropped).
INERT_PREFIXES = ("omegaconf.", "typing.", "pathlib.", "numpy.", "_io.BytesIO")


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------


def save_pretrained(model: nn.Module, path: str | os.PathLike, tokenizer: Any | None = None,
                    extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` (and ``tokenizer``, ``extra`` JSON metadata) to the directory ``path``.

    The directory is written under a temporary name and replaces ``path`` only when complete.
    ``model`` needs the ``family`` name of one of :data:`dnalm.models.families.FAMILIES` and a dataclass
    ``config``.
    ``tokenizer`` is anything with ``save(directory)`` writing ``tokenizer.json``.
    """
    from safetensors.torch import save_model

    from dnalm import __version__
    from dnalm.models.families import FAMILIES

    family = getattr(model, "family", "")
    config = getattr(model, "config", None)
    if family not in {f.name for f in FAMILIES} or not dataclasses.is_dataclass(config):
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


def read_json(path: Path) -> Any:
    """The parsed JSON of ``path`` (InputError naming the file when unreadable)."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read JSON ({exc})") from None


def read_hub_layout(path: str | os.PathLike) -> tuple[Mapping[str, Any], Path, Path]:
    """A checkpoint in the hub layout: ``path`` is its directory (``config.json`` + one of :data:`HUB_WEIGHTS`)
    or a weight file beside its ``config.json``. Returns (the config object, its file, the weight file);
    an :class:`InputError` names what is missing or unreadable."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    directory = path if path.is_dir() else path.parent
    cfg_file = directory / "config.json"
    if not cfg_file.is_file():
        raise InputError(f"{directory}: no config.json beside the weights")
    meta = read_json(cfg_file)
    if not isinstance(meta, Mapping):
        raise InputError(f"{cfg_file}: expected a JSON object")
    if not path.is_dir():
        return meta, cfg_file, path
    file = next((path / n for n in HUB_WEIGHTS if (path / n).is_file()), None)
    if file is None:
        raise InputError(f"{path}: no weights ({' or '.join(HUB_WEIGHTS)})")
    return meta, cfg_file, file


def read_format_json(file: str | os.PathLike, fmt: str, what: str) -> dict[str, Any]:
    """The JSON object in ``file``, which must exist and say ``"format": fmt``; ``what`` names the kind of
    directory it belongs to in the error (e.g. 'a saved sequence classifier')."""
    file = Path(file)
    if not file.is_file():
        raise InputError(f"{file.parent}: no {file.name} (not {what})")
    config = read_json(file)
    if not isinstance(config, dict) or config.get("format") != fmt:
        raise InputError(f"{file}: format is not {fmt}")
    return config


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


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


def check_fits(model_cls: type, config: Any, sd: Mapping[str, Tensor], where: Path) -> None:
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


def load_state_into(model: nn.Module, sd: dict[str, Tensor], where: Path) -> None:
    """Load ``sd`` into ``model`` strictly; shape mismatches, missing and unexpected keys raise InputError
    naming ``where`` (tied tensors may be stored under any of their names)."""
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


def read_weights(file: Path) -> Mapping[str, Tensor]:
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

    from dnalm.models.families import FAMILIES

    cfg_path = directory / CONFIG_FILE
    name = meta.get("family")
    fam = next((f for f in FAMILIES if f.name == name), None)
    if fam is None:
        raise InputError(f"{cfg_path}: unknown model family {name!r} (known: {', '.join(f.name for f in FAMILIES)})")
    try:
        config = fam.config_cls(**{**dict(meta.get("config") or {}), **overrides})
    except (TypeError, ValueError, ConfigError) as exc:
        raise InputError(f"{cfg_path}: bad model config ({exc})") from None
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise InputError(f"{weights}: missing (named by {cfg_path})")
    sd = dict(read_weights(weights))
    check_fits(fam.model_cls, config, sd, weights)
    model = fam.build(config)
    load_state_into(model, sd, weights)
    return model.to(map_location)


def read_pretrained_info(path: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a model saved by :func:`save_pretrained` (family, config, extra)."""
    path = Path(path)
    file = path / CONFIG_FILE if path.is_dir() else path
    meta = read_json(file)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"{file}: not a dnalm model config (no format '{FORMAT}')")
    return meta


def read_config_json(directory: Path) -> Any:
    """The parsed ``config.json`` of ``directory``, or None when there is none."""
    file = directory / CONFIG_FILE
    return read_json(file) if file.is_file() else None


def load_pretrained(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    overrides: Mapping[str, Any] | None = None) -> nn.Module:
    """Load a model saved by :func:`save_pretrained` or a published checkpoint (see the module doc).

    ``path``: a directory or a weight file. ``overrides``: config fields to replace (e.g.
    ``{"shift": 0.0}`` for HyenaDNA's training-code filters). The model is returned in eval mode
    on ``map_location``. Unknown layouts raise InputError.
    """
    from dnalm.models.families import FAMILIES

    path = Path(path)
    overrides = dict(overrides or {})
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    directory = path if path.is_dir() else path.parent
    meta = read_config_json(directory)
    if path.is_dir() and isinstance(meta, Mapping) and meta.get("format") == FORMAT:
        return _load_dnalm(path, meta, map_location, overrides).eval()
    importers = [imp for fam in FAMILIES for imp in fam.importers if imp.detect(path, meta)]
    importers.sort(key=lambda imp: imp.fallback)
    if not importers:
        raise InputError(f"{path}: unknown model layout (no {CONFIG_FILE} of dnalm and no published layout of "
                         f"{', '.join(f.name for f in FAMILIES)})")
    return importers[0].load(path, map_location, overrides).eval()


# ---------------------------------------------------------------------------------------------
# The tokenizer of a checkpoint
# ---------------------------------------------------------------------------------------------

#: Files whose presence beside a checkpoint means it brings its own tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "dnalm_tokenizer.json", "tokenizer_config.json")


def checkpoint_tokenizer(path: str | os.PathLike, model: nn.Module, default: Any | None = None) -> Any:
    """The tokenizer of the checkpoint ``path`` holding ``model``.

    The tokenizer saved beside it when there is one (an unreadable one is an InputError, never replaced);
    otherwise the family's default tokenizer for the model's config (``Family.tokenizer``), or ``default``
    when that is a tokenizer of the same type (a caller's variant of the same vocabulary, e.g. HyenaDNA's
    own character tokenizer). A family whose tokenizer is data (DNABERT-2's trained BPE) and a checkpoint
    without one give an InputError naming the directory.
    """
    from dnalm.models.families import family_of
    from dnalm.tokenizers import load_tokenizer

    path = Path(path)
    directory = path if path.is_dir() else path.parent
    if any((directory / name).is_file() for name in TOKENIZER_FILES):
        return load_tokenizer(directory)
    fam = family_of(model)
    tokenizer = fam.tokenizer(model.config)
    if tokenizer is None:
        raise InputError(f"{directory}: no tokenizer.json beside the checkpoint (a {fam.name} model's tokenizer "
                         "comes with its checkpoint)")
    if default is not None and getattr(default, "type", None) == getattr(tokenizer, "type", None):
        return default
    return tokenizer
