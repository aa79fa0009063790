"""``dnalm merge-lora adapter=DIR out=DIR [base=PATH]``: an adapter merged into its base, in dnalm's format."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from dnalm.config import to_dataclass
from dnalm.errors import ConfigError, InputError
from dnalm.models.heads import SequenceClassifier, save_classifier
from dnalm.models.io import save_pretrained
from dnalm.models.lora import merge_lora, read_adapter_config
from dnalm.tokenizers import CharTokenizer, load_tokenizer


@dataclass
class MergeLoraConfig:
    adapter: str | None = None
    base: str | None = None
    out: str | None = None


def _tokenizer(*directories: Path):
    for d in directories:
        try:
            return load_tokenizer(d)
        except InputError:
            continue
    return CharTokenizer.hyenadna()


def main(cfg: DictConfig) -> int | None:
    mc = to_dataclass(cfg, MergeLoraConfig, where="merge-lora")
    if not mc.adapter or not mc.out:
        raise ConfigError("merge-lora: set adapter=DIR (LoRA adapter) and out=DIR (output directory)")
    adapter = Path(mc.adapter)
    info = read_adapter_config(adapter)
    base = mc.base or info.get("base_model")
    if not base:
        raise ConfigError(f"merge-lora: {adapter} records no base model; set base=PATH")
    if not Path(base).exists():
        raise InputError(f"{base}: base model not found (set base=PATH)")
    model = merge_lora(base, adapter)
    base_dir = Path(base) if Path(base).is_dir() else Path(base).parent
    tokenizer = _tokenizer(adapter, base_dir)
    extra = {"merged_from": {"base": str(Path(base).resolve()), "adapter": str(adapter.resolve())},
             **{k: info[k] for k in ("metrics", "inputs") if k in info}}
    if isinstance(model, SequenceClassifier):
        path = save_classifier(model, mc.out, tokenizer=tokenizer, classes=model.classes, extra=extra)
        kind = f"{model.task} model ({model.n_outputs} outputs, {model.pooling} pooling)"
    else:
        path = save_pretrained(model, mc.out, tokenizer=tokenizer, extra=extra)
        kind = f"{type(model).__name__}"
    print(f"merge-lora: {adapter} + {base} -> {path}/ ({kind}, rank {info['r']}, "
          f"targets {', '.join(info['target_modules'])})")
    return 0
