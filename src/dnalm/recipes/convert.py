"""``dnalm convert src=PATH out=DIR [shift=...]``: a checkpoint in dnalm's format."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from dnalm.config import to_dataclass
from dnalm.errors import ConfigError, InputError
from dnalm.models.blocks import count_parameters
from dnalm.models.io import load_pretrained, save_pretrained
from dnalm.tokenizers import CharTokenizer, load_tokenizer


@dataclass
class ConvertConfig:
    src: str | None = None
    out: str | None = None
    shift: float | None = None


def main(cfg: DictConfig) -> int | None:
    cc = to_dataclass(cfg, ConvertConfig, where="convert")
    if not cc.src or not cc.out:
        raise ConfigError("convert: set src=PATH (checkpoint) and out=DIR (output directory)")
    src = Path(cc.src)
    overrides = {} if cc.shift is None else {"shift": cc.shift}
    model = load_pretrained(src, overrides=overrides)
    directory = src if src.is_dir() else src.parent
    try:
        tokenizer = load_tokenizer(directory)
    except InputError:
        tokenizer = CharTokenizer.hyenadna()
    extra = {"converted_from": str(src.resolve())}
    path = save_pretrained(model, cc.out, tokenizer=tokenizer, extra=extra)
    config = model.config
    print(f"convert: {src} -> {path}/ ({type(model).__name__}, {count_parameters(model):,} parameters"
          + (f", l_max {config.l_max}, shift {config.shift}" if hasattr(config, "shift") else "") + ")")
    return 0
