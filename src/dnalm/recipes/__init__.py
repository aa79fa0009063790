"""dnalm.recipes: one module per command (``main(cfg)``), plain functions that read like a script."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class InferenceRun:
    """Options shared by the inference commands (predict, embed, score-variants): the model, where it
    runs, and how inputs are batched (rows, padded tokens and chunk length per forward)."""

    checkpoint: str | None = None
    out: str | None = None
    prepend_bos: bool = False
    batch_size: int = 16
    max_tokens: int = 262144
    chunk_size: int | None = None
    device: str = "auto"
    dtype: str = "fp32"
