"""Hydra at the edge: compose a command's config and turn it into typed dataclasses.

Only :mod:`dnalm.cli` and :mod:`dnalm.recipes` use this module; library code takes plain
arguments. Every command ``X`` has a primary config ``conf/X.yaml`` (dashes become
underscores) whose defaults list pulls one option from each config group it uses.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, TypeVar

from dnalm.errors import ConfigError

T = TypeVar("T")

CONF_DIR = Path(__file__).parent / "conf"


def config_name(command: str) -> str:
    return command.replace("-", "_").replace(" ", "_")


# Command-line spellings mapped to config keys: plain keys of a command that share their name with a config
# group (Hydra would read ``model=x`` as a group choice), and older names of keys.
# ``output=`` is the older spelling of ``out=`` in the inference commands (every command now writes to ``out``).
KEY_ALIASES = {"model_info": {"model": "family"}, "predict": {"output": "out"}, "embed": {"output": "out"},
               "generate": {"output": "out"}, "score_variants": {"output": "out"}}


def _alias(name: str, overrides: list[str]) -> list[str]:
    aliases = KEY_ALIASES.get(name, {})
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        out.append(f"{aliases[key]}={value}" if sep and key in aliases else item)
    return out


def compose(command: str, overrides: list[str], config_dir: str | None = None):
    """Compose ``conf/<command>.yaml`` with Hydra overrides; raise a one-line ConfigError."""
    import yaml
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    name = config_name(command)
    if not (CONF_DIR / f"{name}.yaml").exists():
        raise ConfigError(f"command '{command}' has no config (expected conf/{name}.yaml)")
    overrides = _alias(name, list(overrides))
    user_dir: Path | None = None
    if config_dir is not None:
        user_dir = Path(config_dir).resolve()
        if not user_dir.is_dir():
            raise ConfigError(f"--config-dir {config_dir}: not a directory")
    GlobalHydra.instance().clear()
    try:
        if user_dir is not None and (user_dir / f"{name}.yaml").is_file():
            # The user's copy of the primary config wins; groups still come from the package too.
            overrides.append("hydra.searchpath=[pkg://dnalm.conf]")
            init = initialize_config_dir(str(user_dir), version_base=None)
        else:
            if user_dir is not None:
                overrides.append(f"hydra.searchpath=[file://{user_dir}]")
            init = initialize_config_module("dnalm.conf", version_base=None)
        with init:
            cfg = hydra_compose(config_name=name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(_explain(exc, command)) from None
    except yaml.YAMLError as exc:  # a config file of --config-dir that is not YAML (the message names it)
        raise ConfigError(f"{command}: not a valid YAML config: {' '.join(str(exc).split())}") from None
    finally:
        GlobalHydra.instance().clear()
    try:  # every interpolation resolves (a recipe that resolves later would raise outside the ConfigError)
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise ConfigError(f"{command}: bad value for '{key}': {str(exc).splitlines()[0]}") from None
    return cfg


def _explain(exc: BaseException, command: str) -> str:
    """One line out of Hydra's multi-line messages (it often hides the cause)."""
    parts = []
    while exc is not None:
        text = " ".join(str(exc).split())
        if text and text not in parts:
            parts.append(text)
        exc = exc.__cause__ or exc.__context__
    msg = parts[-1] if parts else "invalid configuration"
    m = re.search(r"Could not override '([^']+)'", " ".join(parts))
    if m or "not in struct" in msg:
        key = m.group(1) if m else msg
        return f"unknown config key '{key}' for '{command}' (see: dnalm config show {command})"
    m = re.search(r"Could not find '([^']+)'", " ".join(parts))
    if m:
        path = m.group(1)
        for group in sorted({g for g, _ in groups_of(command)}, key=len, reverse=True):
            if path.startswith(group + "/"):
                options = ", ".join(list_options(group)) or "none"
                return (f"unknown option '{path[len(group) + 1:]}' for config group '{group}' of '{command}' "
                        f"(choose from: {options})")
        return f"{command}: no config '{path}'"
    m = re.search(r"Could not load '([^']+)'", " ".join(parts))
    if m:
        group = m.group(1).rsplit("/", 1)[0]
        return f"unknown config option '{m.group(1)}' (see: dnalm {command} --help for the options of '{group}')"
    return f"{command}: {parts[0] if parts else msg}"


def to_dataclass(node: Any, cls: type[T], where: str) -> T:
    """Validate a config node against dataclass ``cls`` and return an instance.

    Unknown keys and values of the wrong type fail with a one-line :class:`ConfigError`
    naming ``where.key``. Interpolations such as ``${data_root}`` point at the root config: pass a node
    taken from ``OmegaConf.to_container(cfg, resolve=True)`` (resolved as a whole) rather than a bare
    sub-node of the composed config.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if node is None:
        node = {}
    try:
        schema = OmegaConf.structured(cls)
        merged = OmegaConf.merge(schema, node)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or "?"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "not in struct" in first or "Key '" in first and "not in" in first:
            allowed = ", ".join(f.name for f in dataclasses.fields(cls))
            raise ConfigError(f"unknown config key '{where}.{key}' (allowed: {allowed})") from None
        raise ConfigError(f"bad value for '{where}.{key}': {first}") from None


def list_options(group: str) -> list[str]:
    """Options of a config group, e.g. ``experiment`` -> ['synthetic/hyena_demo', ...]."""
    base = CONF_DIR / group
    if not base.is_dir():
        return []
    return sorted(str(p.relative_to(base).with_suffix("")) for p in base.rglob("*.yaml"))


def groups_of(command: str) -> list[tuple[str, str | None]]:
    """(group, default option) pairs from the defaults list of a command's primary config."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONF_DIR / f"{config_name(command)}.yaml")
    out = []
    for item in cfg.get("defaults", []) or []:
        if isinstance(item, str) or item is None:
            continue
        for key, value in item.items():
            group = str(key).removeprefix("optional ").removeprefix("override ").strip()
            out.append((group, None if value is None else str(value)))
    return out
