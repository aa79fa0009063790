"""``dnalm tokenizer train data.prepared=DIR vocab_size=N out=DIR``: a BPE vocabulary learnt from a genome.

Reads the bases of one split (default ``train``) of a prepared genome (or of the genome a ``data`` option
prepares, e.g. ``data=yeast``), soft-masked bases as lowercase characters, and learns a byte-pair
encoding of at most ``vocab_size`` tokens:

* ``style=dnabert2`` (default): DNABERT-2's recipe and ids (:func:`dnalm.models.dnabert2.train_bpe`:
  ``[UNK] [CLS] [SEP] [PAD] [MASK]`` at 0-4, bases upper-cased, pieces cut at every non-ACGT character and
  every ``chunk_length`` bases); for ``model=bert_small model.tokenizer=DIR``.
* ``style=bpe``: dnalm's :class:`~dnalm.tokenizers.BpeTokenizer` (HyenaDNA's special ids 0-6).

Writes ``out/tokenizer.json`` (the Hugging Face file) and ``out/dnalm_tokenizer.json`` (the options), read
back by :func:`dnalm.tokenizers.load_tokenizer`, atomically. ``max_bases`` caps the bases read (evenly
spread over the split's intervals). Progress lines go to stdout while the split is read.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dnalm.config import to_dataclass
from dnalm.errors import ConfigError, InputError
from dnalm.utils import atomic_dir

STYLES = ("dnabert2", "bpe")
PIECE = 1 << 20  # bases read from the memory map at a time


@dataclass
class TokenizerTrainConfig:
    out: str | None = None
    vocab_size: int = 4096
    style: str = "dnabert2"
    split: str = "train"
    min_frequency: int = 2
    chunk_length: int = 1000
    max_token_length: int | None = None
    max_bases: int | None = None
    progress_every: float = 10.0


def split_texts(prepared: Any, split: str = "train", max_bases: int | None = None,
                progress_every: float | None = None) -> Iterator[str]:
    """The bases of ``split`` as strings of at most 1 Mb (soft-masked bases lowercase, N as N), interval by
    interval; with ``max_bases`` an evenly spaced share of every interval. Prints a progress line every
    ``progress_every`` seconds (None: never)."""
    import numpy as np

    from dnalm.data.datasets import window_texts

    if split not in prepared.split_names:
        raise InputError(f"{prepared.path}: no split '{split}' (has: {', '.join(prepared.split_names)})")
    intervals = prepared.intervals(split)
    total = sum(iv.length for iv in intervals)
    if total == 0:
        raise InputError(f"{prepared.path}: split '{split}' holds no bases")
    share = 1.0 if not max_bases else min(1.0, max_bases / total)
    wanted = int(total * share)
    done, last, start = 0, time.monotonic(), time.monotonic()
    for iv in intervals:
        take = int(round(iv.length * share))
        for a in range(iv.start, iv.start + take, PIECE):
            b = min(a + PIECE, iv.start + take)
            tok = np.asarray(prepared.tokens[a:b])[None]
            reg = np.asarray(prepared.regions[a:b])[None]
            yield window_texts(tok, reg)[0]
            done += b - a
            if progress_every is not None and time.monotonic() - last >= progress_every:
                last = time.monotonic()
                print(f"tokenizer: read {done / 1e6:.1f} of {wanted / 1e6:.1f} Mb "
                      f"({time.monotonic() - start:.0f} s)", flush=True)
    if progress_every is not None:
        print(f"tokenizer: read {done / 1e6:.1f} Mb in {time.monotonic() - start:.0f} s; learning the merges",
              flush=True)


def train_on_prepared(prepared: Any, out: str | Path, vocab_size: int, split: str = "train", style: str = "dnabert2",
                      min_frequency: int = 2, chunk_length: int = 1000, max_token_length: int | None = None,
                      max_bases: int | None = None, progress_every: float | None = 10.0) -> Any:
    """Learn a BPE tokenizer from a prepared genome's ``split`` and save it into ``out`` (atomically)."""
    from dnalm.data.prepared import PreparedGenome

    if style not in STYLES:
        raise ConfigError(f"style={style!r} must be one of {', '.join(STYLES)}")
    if not isinstance(prepared, PreparedGenome):
        prepared = PreparedGenome(prepared)
    texts = split_texts(prepared, split, max_bases, progress_every)
    bar = sys.stderr.isatty()
    if style == "dnabert2":
        from dnalm.models.dnabert2 import train_bpe

        tok = train_bpe(texts, vocab_size, min_frequency=min_frequency, chunk_length=chunk_length,
                        max_token_length=max_token_length, show_progress=bar)
    else:
        from dnalm.tokenizers import BpeTokenizer

        tok = BpeTokenizer.train(texts, vocab_size, min_frequency=min_frequency, chunk_length=chunk_length,
                                 max_token_length=max_token_length, show_progress=bar)
    with atomic_dir(Path(out)) as tmp:
        tok.save(tmp)
    return tok


def main(cfg: DictConfig) -> int:
    from dnalm.recipes.train import DATA_SOURCE_KEYS, DataSource, ensure_prepared

    node = OmegaConf.to_container(cfg, resolve=True)
    data = node.pop("data", None) or {}
    data_root = node.pop("data_root", None)
    node.pop("seed", None)  # only the data options read it
    c = to_dataclass(node, TokenizerTrainConfig, where="tokenizer train")
    if not c.out:
        raise ConfigError("tokenizer train: set out=DIR (where tokenizer.json is written)")
    if c.vocab_size < 9:
        raise ConfigError(f"vocab_size={c.vocab_size} must be at least 9 (the specials and A C G T)")
    if c.style not in STYLES:
        raise ConfigError(f"style={c.style!r} must be one of {', '.join(STYLES)}")
    source = to_dataclass({k: data[k] for k in DATA_SOURCE_KEYS if k in data}, DataSource, where="data")
    prepared = ensure_prepared(source, data_root)
    start = time.monotonic()
    print(f"tokenizer: learning a {c.style} BPE of {c.vocab_size} tokens from split '{c.split}' of {prepared}",
          flush=True)
    tok = train_on_prepared(prepared, c.out, c.vocab_size, c.split, c.style, c.min_frequency, c.chunk_length,
                            c.max_token_length, c.max_bases, c.progress_every)
    print(f"tokenizer: {tok.vocab_size} tokens -> {c.out}/tokenizer.json ({time.monotonic() - start:.0f} s)")
    return 0
