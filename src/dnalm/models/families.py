"""The model families dnalm knows, in one explicit tuple.

Adding a family means: its file under ``dnalm/models/`` ending with ``FAMILY = Family(...)``
(:mod:`dnalm.models.family`), one entry in :data:`FAMILIES`, its YAML under ``conf/model/`` and its
test file. Every other module asks :func:`family` / :func:`family_of`; none keeps a name map.
The order matters only for checkpoint detection (:func:`dnalm.models.io.load_pretrained`).
"""

from __future__ import annotations

from typing import Any

from dnalm.errors import ConfigError
from dnalm.models import dnabert2, hyena, mamba, stripedhyena, transformer
from dnalm.models.family import Family

FAMILIES: tuple[Family, ...] = (hyena.FAMILY, transformer.FAMILY, dnabert2.FAMILY, stripedhyena.FAMILY, mamba.FAMILY,
                                mamba.CADUCEUS_FAMILY)


def names() -> list[str]:
    return [f.name for f in FAMILIES]


def family(name: str) -> Family:
    """The family called ``name`` (ConfigError listing the known ones otherwise)."""
    for f in FAMILIES:
        if f.name == name:
            return f
    raise ConfigError(f"unknown model family {name!r} (known: {', '.join(names())})")


def family_of(model: Any) -> Family:
    """The family of a model instance (by its ``family`` name) or of a config instance."""
    for f in FAMILIES:
        if isinstance(model, f.model_cls) or isinstance(model, f.config_cls):
            return f
    name = getattr(model, "family", None)
    if isinstance(name, str):
        return family(name)
    raise ConfigError(f"{type(model).__name__} belongs to no model family (known: {', '.join(names())})")
