"""``dnalm speed [models=[...]] [lengths=[...]] [out=speed.md]``: throughput across sequence lengths on one GPU."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

from dnalm.config import to_dataclass
from dnalm.errors import ConfigError
from dnalm.utils import atomic_file


@dataclass
class SpeedConfig:
    models: list[str] = field(default_factory=lambda: ["hyena", "hyena-ref", "transformer", "gpt"])
    modes: list[str] = field(default_factory=lambda: ["train", "forward"])
    lengths: list[str] = field(default_factory=lambda: ["1k", "2k", "4k", "8k", "16k", "32k", "64k", "128k", "256k",
                                                        "512k", "1M"])
    budget: str = "1M"
    preset: str = "large-1m"
    attention_cap: str = "64k"
    ref_checkpoint_from: str = "512k"
    steps: int = 3
    warmup: int = 1
    out: str = "speed.md"


def main(cfg: DictConfig) -> int | None:
    sc = to_dataclass(OmegaConf.to_container(cfg, resolve=True), SpeedConfig, where="speed")
    import torch

    from dnalm.evaluate.speed import (
        MODELS,
        MODES,
        ceilings,
        device_description,
        length_label,
        markdown_table,
        parse_length,
        run_speed,
    )
    from dnalm.models.hyena import PRESETS

    for name in sc.models:
        if name not in MODELS:
            raise ConfigError(f"speed.models: unknown model '{name}' (choose from {', '.join(MODELS)})")
    for mode in sc.modes:
        if mode not in MODES:
            raise ConfigError(f"speed.modes: unknown mode '{mode}' (choose from {', '.join(MODES)})")
    if sc.preset not in PRESETS:
        raise ConfigError(f"speed.preset: unknown preset '{sc.preset}' (presets: {', '.join(PRESETS)})")
    try:
        lengths = [parse_length(str(x)) for x in sc.lengths]
        budget, cap, ref_from = (parse_length(str(x)) for x in (sc.budget, sc.attention_cap, sc.ref_checkpoint_from))
    except ValueError as exc:
        raise ConfigError(f"speed: lengths are integers with an optional k or M suffix ({exc})") from None
    if not torch.cuda.is_available():
        raise ConfigError("dnalm speed measures a CUDA GPU, and none is visible")
    dev = device_description()
    ceil = ceilings()
    print(f"{dev.get('gpu')}: copy {ceil.copy_gbs:.0f} GB/s, bf16 matmul {ceil.matmul_tflops:.0f} TFLOP/s", flush=True)
    rows = run_speed(sc.models, sc.modes, lengths, budget, sc.preset, cap, ref_from, sc.steps, sc.warmup, ceil,
                     report=lambda r: print(f"{r.model} {r.mode} {length_label(r.length)}: "
                                            f"{(r.tokens_per_s or 0) / 1e6:.2f}M tokens/s {r.note}", flush=True))
    text = (f"GPU: {dev.get('gpu')}, driver {dev.get('driver')}, torch {dev['torch']} (CUDA {dev['cuda']}), "
            f"triton {dev['triton']}\nCeilings measured: copy {ceil.copy_gbs:.0f} GB/s, bf16 matmul "
            f"{ceil.matmul_tflops:.0f} TFLOP/s\n\n{markdown_table(rows)}\n")
    with atomic_file(sc.out) as tmp:
        tmp.write_text(text)
    print(text)
    print(f"speed: wrote {sc.out}")
    return 0
