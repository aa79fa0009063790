"""``dnalm model info model=hyena preset=large-1m seq_len=1024``: parameters, FLOPs, activation memory."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from dnalm.config import to_dataclass
from dnalm.errors import ConfigError, InputError
from dnalm.models.info import family_config, model_info, print_info
from dnalm.utils import atomic_file


@dataclass
class ModelInfoConfig:
    family: str = "hyena"
    preset: str = "tiny-1k"
    checkpoint: str | None = None
    seq_len: int | None = None
    batch_size: int = 1
    dtype: str = "bf16"
    d_model: int | None = None
    n_layer: int | None = None
    d_inner: int | None = None
    n_head: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    out: str | None = None


def _fitting(config_cls: type, overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` without the implied ``d_inner=None`` where the config has no such field (Mamba's d_inner is
    ``expand * d_model`` already)."""
    from dataclasses import fields

    if overrides.get("d_inner", 0) is None and "d_inner" not in {f.name for f in fields(config_cls)}:
        return {k: v for k, v in overrides.items() if k != "d_inner"}
    return overrides


def _checkpoint_config(path: str, overrides: dict[str, Any]):
    from dnalm.models.families import family
    from dnalm.models.hyena import is_hyenadna_config, load_hyenadna_config
    from dnalm.models.io import CONFIG_FILE, read_pretrained_info

    directory = Path(path)
    file = directory / CONFIG_FILE if directory.is_dir() else directory
    if not file.is_file():
        raise InputError(f"{file}: no such model config")
    raw = json.loads(file.read_text())
    if is_hyenadna_config(raw):
        return load_hyenadna_config(file, **overrides)
    meta = read_pretrained_info(file)
    try:
        fam = family(str(meta.get("family")))
    except ConfigError as exc:
        raise InputError(f"{file}: {exc}") from None
    try:
        return fam.config_cls(**{**meta.get("config", {}), **_fitting(fam.config_cls, overrides)})
    except (TypeError, ConfigError) as exc:
        raise InputError(f"{file}: bad {fam.name} config: {exc}") from None


def main(cfg: DictConfig) -> int | None:
    mc = to_dataclass(cfg, ModelInfoConfig, where="model_info")
    overrides = {k: getattr(mc, k) for k in ("d_model", "n_layer", "d_inner", "n_head") if getattr(mc, k) is not None}
    overrides.update(mc.overrides)
    if "d_model" in overrides and "d_inner" not in overrides:
        overrides["d_inner"] = None  # a new width gets its MLP width 4 x d_model, not the preset's
    if mc.checkpoint:
        config = _checkpoint_config(mc.checkpoint, overrides)
        name = mc.checkpoint
    else:
        if mc.family == "hyena" and "n_head" in overrides:
            raise ConfigError("model_info: n_head applies to model=transformer only")
        from dnalm.models.families import family

        try:
            overrides = _fitting(family(mc.family).config_cls, overrides)
        except ConfigError:
            pass  # family_config names the unknown model
        config = family_config(mc.family, mc.preset, **overrides)
        name = mc.preset
    from dnalm.models.families import family_of

    seq_len = mc.seq_len or family_of(config).context_length(config) or 512
    info = model_info(config, seq_len, mc.batch_size, mc.dtype)
    print_info(info, title=f"{info.family} {name}: L = {seq_len:,}, B = {mc.batch_size}, {mc.dtype} activations")
    if mc.out:
        with atomic_file(mc.out) as tmp:
            tmp.write_text(json.dumps({"name": name, "config": vars(config), **info.to_dict()}, indent=2) + "\n")
        print(f"model info: wrote {mc.out}")
    return 0
