"""A model family as one unit: what every other module needs to know about it, in one object.

Each family module (``hyena.py``, ``transformer.py``, ...) ends with ``FAMILY = Family(...)``;
:mod:`dnalm.models.families` lists them in one explicit tuple. Nothing else in the package keeps a
map from family names to classes: it asks :func:`dnalm.models.families.family` or
:func:`dnalm.models.families.family_of`.

``objective`` says how the family is trained and scored:

* ``"causal"``: next-token LM; ``model(ids) -> logits`` where position t predicts token t+1;
  prefill + step decoding, generation, chunked inference of any length.
* ``"masked"``: bidirectional encoder with an MLM head; position t predicts token t itself when it
  is masked. Scores are pseudo-log-likelihoods; nothing is generated.

An :class:`Alphabet` gives the token ids a family's tokenizer uses for the four bases, N and the
specials, so code that scores or samples bases never assumes fixed ids.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

CAUSAL = "causal"
MASKED = "masked"
#: Weight files of the Hugging Face hub layout, in the order they are looked for.
HUB_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class Alphabet:
    """Token ids of a vocabulary for what DNA code needs: the bases A, C, G, T (in that order), N and
    the specials (None where the vocabulary has none). ``vocab_size``: ids are ``0 .. vocab_size-1``."""

    acgt: tuple[int, int, int, int]
    n: int | None
    pad: int | None
    bos: int | None
    eos: int | None
    mask: int | None
    unk: int | None
    vocab_size: int

    def base_id(self, base: str) -> int:
        """The id of ``base`` (one of ``ACGT``, either case)."""
        return self.acgt["ACGT".index(base.upper())]


@dataclass(frozen=True)
class Importer:
    """One published checkpoint layout a family reads.

    ``detect(path, meta)`` says whether ``path`` (a directory or a weight file; ``meta`` is the parsed
    ``config.json`` of the directory, or None) holds this layout; ``load(path, map_location,
    overrides)`` returns the model (an :class:`~dnalm.errors.InputError` naming the file for anything
    unreadable). ``fallback``: the layout is recognised by elimination (a bare weight file), so every
    other matching importer is tried first.
    """

    name: str
    detect: Callable[[Path, Any], bool]
    load: Callable[[Path, str | torch.device, Mapping[str, Any]], nn.Module]
    fallback: bool = False


@dataclass(frozen=True)
class Family:
    """Everything generic code needs of one model family (see the module docstring).

    ``config_cls`` is a frozen dataclass; ``model_cls(config, device=None, dtype=None)`` builds the model,
    which carries ``.config``, ``family`` (this object's ``name``) and ``causal``. ``presets``: named configs
    (``config_cls.preset(name, **overrides)`` builds one with fields replaced), ``"tiny"`` among them (the
    size the generic family tests run). ``context_field``:
    the config field holding the trained context length, if any. ``lora_targets``: module-name
    suffixes LoRA adapts by default. ``tokenizer(config)``: the family's default tokenizer for a
    config. ``importers``: published checkpoint layouts besides dnalm's own. ``info(config, length,
    batch)``: parameter/FLOP/memory accounting (:mod:`dnalm.models.info`), None if not modelled.
    ``window_tokens`` (masked families): the longest row inference reads in one pass; a longer one is read in
    overlapping windows of that many tokens (:mod:`dnalm.inference.masked`); None = any length in one pass.
    """

    name: str
    config_cls: type
    model_cls: type[nn.Module]
    presets: Mapping[str, Any]
    objective: str
    lora_targets: tuple[str, ...]
    tokenizer: Callable[[Any], Any]
    context_field: str | None = None
    importers: tuple[Importer, ...] = ()
    info: Callable[..., Any] | None = None
    window_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.objective not in (CAUSAL, MASKED):
            raise ValueError(f"family {self.name}: objective must be {CAUSAL!r} or {MASKED!r}")

    @property
    def causal(self) -> bool:
        return self.objective == CAUSAL

    def context_length(self, config: Any) -> int | None:
        """The trained context length of ``config`` (None where the family has none)."""
        return None if self.context_field is None else int(getattr(config, self.context_field))

    def build(self, config: Any, device: torch.device | None = None, dtype: torch.dtype | None = None) -> nn.Module:
        return self.model_cls(config, device=device, dtype=dtype)
