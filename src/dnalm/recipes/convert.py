"""``dnalm convert src=PATH out=DIR [shift=...]``: a checkpoint in dnalm's format.

Any layout :func:`~dnalm.models.io.load_pretrained` reads (HyenaDNA's, DNABERT-2's hub directory, Evo 2's
vortex ``.pt`` with its config) becomes ``model.safetensors`` + ``config.json`` + the tokenizer (the one beside
the source, else the family's: Evo 2's byte tokenizer for a vortex file). Tensors are written as loaded
(dtypes kept: a vortex file's bf16 weights and float32 poles stay so). A DNABERT-2 classifier in the hub layout
(``BertForSequenceClassification``) becomes a dnalm fine-tuned classifier (the backbone plus ``head.json`` and
``head.safetensors``: :func:`~dnalm.models.heads.save_classifier`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from dnalm.config import to_dataclass
from dnalm.errors import ConfigError
from dnalm.models.blocks import count_parameters
from dnalm.models.io import checkpoint_tokenizer, load_pretrained, save_pretrained
from dnalm.tokenizers import CharTokenizer


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
    from dnalm.models.dnabert2 import is_hub_classifier_dir

    if is_hub_classifier_dir(src):
        return _convert_hub_classifier(src, Path(cc.out))
    overrides = {} if cc.shift is None else {"shift": cc.shift}
    model = load_pretrained(src, overrides=overrides)
    tokenizer = checkpoint_tokenizer(src, model, default=CharTokenizer.hyenadna())
    extra = {"converted_from": str(src.resolve())}
    path = save_pretrained(model, cc.out, tokenizer=tokenizer, extra=extra)
    config = model.config
    print(f"convert: {src} -> {path}/ ({type(model).__name__}, {count_parameters(model):,} parameters"
          + (f", l_max {config.l_max}, shift {config.shift}" if hasattr(config, "shift") else "") + ")")
    return 0


def _convert_hub_classifier(src: Path, out: Path) -> int:
    from dnalm.models.dnabert2 import load_hub_classifier
    from dnalm.models.heads import save_classifier

    model = load_hub_classifier(src)
    tokenizer = checkpoint_tokenizer(src, model.backbone)
    path = save_classifier(model, out, tokenizer=tokenizer, classes=model.classes,
                           extra={"converted_from": str(src.resolve())})
    print(f"convert: {src} -> {path}/ (DNABERT-2 sequence classifier, {model.n_outputs} outputs, "
          f"{count_parameters(model):,} parameters)")
    return 0
