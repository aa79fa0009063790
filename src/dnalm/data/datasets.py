"""Datasets: next-token windows over a prepared genome, and labeled sequences.

:class:`WindowDataset`
    Windows of a split of a :class:`~dnalm.data.prepared.PreparedGenome` for next-token prediction
    (HyenaDNA's hg38 loader and BioNeMo's Evo2 pretraining data in one). A window never straddles
    two split intervals, so it never crosses a record or a split boundary.
:class:`LabeledSequenceDataset`
    Sequences with a class or a number (DNABERT-2's GUE layout, labeled FASTA, one folder per class)
    for fine-tuning, and :class:`LabeledCollator` to pad them into batches.

Randomness (window positions, reverse-complement flips) is a pure function of
``(seed, epoch, index)`` through a counter-based hash (SplitMix64, Steele, Lea & Flood 2014,
"Fast splittable pseudorandom number generators"), so sample ``i`` of epoch ``e`` is the same
in every worker process, on every rank and after a resumed run, and a batch of windows is drawn
with a few vectorised numpy operations.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from dnalm.data.prepared import PreparedGenome
from dnalm.errors import ConfigError, InputError
from dnalm.genome.regions import CLASS_MASK
from dnalm.tokenizers import A_ID, C_ID, EOS_ID, G_ID, N_ID, PAD_ID, T_ID, reverse_complement
from dnalm.utils import allow_long_csv_fields, open_text

IGNORE_REGION = -1
"""Region value of targets that are not bases (EOS, padding)."""

_U53 = float(2**-53)
_MASK64 = (1 << 64) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser applied elementwise to a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def hash_uniform(*keys: int | np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1), a deterministic function of integer ``keys`` (broadcast together).

    Each key is folded into the state by one SplitMix64 round: ``(seed, epoch, index)`` -> a float.
    """
    state = np.zeros((), dtype=np.uint64)
    for key in keys:
        if isinstance(key, (int, np.integer)):
            k = np.asarray(int(key) & _MASK64, dtype=np.uint64)
        else:
            k = np.asarray(key, dtype=np.int64).astype(np.uint64)
        state = _splitmix64(state ^ k)
    return (state >> np.uint64(11)).astype(np.float64) * _U53


# ---------------------------------------------------------------------------------------------
# Windows over a prepared genome
# ---------------------------------------------------------------------------------------------


class WindowDataset(torch.utils.data.Dataset):
    """Next-token windows of one split of a prepared genome.

    Each sample reads a window of ``L + 1`` tokens ``x_0 .. x_L`` (``L`` tokens and EOS with
    ``add_eos``) and returns

    * ``input_ids`` ``(L,)`` int64: ``x_0 .. x_{L-1}``;
    * ``targets`` ``(L,)`` int64: ``x_1 .. x_L`` (the input shifted by one);
    * ``regions`` ``(L,)`` int64: region class (0-7, soft-mask bit stripped) of each target base,
      ``IGNORE_REGION`` (-1) where the target is EOS or padding;
    * ``loss_weight`` ``(L,)`` float32: weight of each target in the loss, 1 by default,
      ``softmask_weight`` on soft-masked bases (Evo2 uses 0.1), ``n_weight`` on N targets, 1 on EOS
      and 0 on padding.

    N targets get ``n_weight=0`` by default: an N run predicts itself, so counting it rewards a
    model for nothing and inflates accuracy. HyenaDNA trains on N targets; reproduce it with
    ``n_weight=1``. N inputs stay in the windows either way, and windows whose share of N bases
    exceeds ``max_n_frac`` are skipped.

    Modes:

    * ``'random'``: ``samples_per_epoch`` windows (default: the split's bases divided by ``L``),
      each at a uniformly random start position of the split. A genome's manifest ``weight``
      multiplies the chance of each of its start positions: with weights 1 and 3, a base of the
      second genome starts a window three times as often as one of the first. Positions depend
      only on ``(seed, epoch, index)``; call :meth:`set_epoch` at the start of every epoch. A
      window that holds more than ``max_n_frac`` N is redrawn. With ``rc_aug`` a window is
      reverse complemented with probability ``rc_prob`` (ids A<->T, C<->G, N kept; regions and
      soft-mask reversed).
    * ``'strided'``: deterministic windows for evaluation, every ``stride`` bases (default ``L``, or
      ``L - 1`` with EOS) from the start of each interval, plus a last window flush with the end of
      the interval; an interval shorter than a window gets one window padded with ``[PAD]``.
      Targets that an earlier window of the same interval already covered get weight 0, so across
      the dataset every base after the first of each interval is scored exactly once (windows
      skipped for N excepted).

    :meth:`get_batch` gathers a whole batch with one fancy index on a sliding-window view of the
    memmap; the DataModule calls it through :class:`~dnalm.data.datamodule.EpochBatchSampler`.

    ``token_map`` (from :func:`genome_token_map`) translates ``input_ids`` and ``targets`` into a model's
    own vocabulary (Evo 2's bytes, ...); N detection, loss weights and regions still read the genome's ids.
    """

    def __init__(self, prepared: PreparedGenome | str | os.PathLike, split: str, length: int,
                 mode: str = "random", stride: int | None = None, rc_aug: bool = False, rc_prob: float = 0.5,
                 max_n_frac: float = 0.5, add_eos: bool = False, softmask_weight: float = 1.0,
                 n_weight: float = 0.0, seed: int = 0, samples_per_epoch: int | None = None,
                 token_map: np.ndarray | None = None):
        self.prepared = prepared if isinstance(prepared, PreparedGenome) else PreparedGenome(prepared)
        self.token_map = token_map
        if mode not in ("random", "strided"):
            raise ConfigError(f"window mode must be 'random' or 'strided', got {mode!r}")
        if length < 1:
            raise ConfigError(f"window length must be >= 1, got {length}")
        if not 0.0 <= max_n_frac <= 1.0:
            raise ConfigError(f"max_n_frac must lie in [0, 1], got {max_n_frac}")
        if not 0.0 <= rc_prob <= 1.0:
            raise ConfigError(f"rc_prob must lie in [0, 1], got {rc_prob}")
        self.split, self.length, self.mode = split, int(length), mode
        self.add_eos, self.rc_aug, self.rc_prob = add_eos, rc_aug, float(rc_prob)
        self.max_n_frac, self.seed, self.epoch = float(max_n_frac), int(seed), 0
        self.span = self.length if add_eos else self.length + 1  # genome tokens per full window
        self.stride = int(stride) if stride is not None else self.span - 1
        if self.stride < 1:
            raise ConfigError(f"stride must be >= 1, got {self.stride}")
        self._max_n = int(np.floor(self.max_n_frac * self.span + 1e-9))
        self.softmask_weight, self.n_weight = float(softmask_weight), float(n_weight)
        # weight by key = soft-masked + 2 * N
        self._weight_of_key = np.array([1.0, softmask_weight, n_weight, n_weight], dtype=np.float32)
        self.intervals = self.prepared.intervals(split)
        if mode == "random":
            self._init_random(samples_per_epoch)
        else:
            self._init_strided()

    # -------------------------------------------------------------------- random windows
    def _init_random(self, samples_per_epoch: int | None) -> None:
        ok = [iv for iv in self.intervals if iv.length >= self.span]
        if not ok:
            longest = max((iv.length for iv in self.intervals), default=0)
            raise ConfigError(f"split '{self.split}' of {self.prepared.path} has no interval of {self.span} "
                              f"bases for windows of length {self.length} (longest: {longest})")
        self._iv_start = np.array([iv.start for iv in ok], dtype=np.int64)
        self._iv_count = np.array([iv.length - self.span + 1 for iv in ok], dtype=np.int64)  # start positions
        self._iv_weight = np.array([self.prepared.genome_weight(iv.record) for iv in ok], dtype=np.float64)
        mass = self._iv_count * self._iv_weight
        if mass.sum() <= 0:
            raise InputError(f"{self.prepared.path}: every genome of split '{self.split}' has weight 0")
        self._cum_mass = np.cumsum(mass)
        bases = int(sum(iv.length for iv in ok))
        self.samples_per_epoch = int(samples_per_epoch) if samples_per_epoch else max(1, bases // self.length)

    def _draw_starts(self, epoch: int, index: np.ndarray, attempt: int) -> np.ndarray:
        x = hash_uniform(self.seed, epoch, 0, attempt, index) * self._cum_mass[-1]
        j = np.minimum(np.searchsorted(self._cum_mass, x, side="right"), len(self._cum_mass) - 1)
        below = self._cum_mass[j] - self._iv_count[j] * self._iv_weight[j]
        offset = np.floor((x - below) / self._iv_weight[j]).astype(np.int64)
        return self._iv_start[j] + np.clip(offset, 0, self._iv_count[j] - 1)

    # -------------------------------------------------------------------- strided windows
    def _init_strided(self) -> None:
        starts, valid, first_new = [], [], []
        for iv in self.intervals:
            if iv.length < 2:
                continue
            if iv.length <= self.span:
                s = np.array([iv.start], dtype=np.int64)
            else:
                s = np.arange(iv.start, iv.end - self.span + 1, self.stride, dtype=np.int64)
                if s[-1] + self.span < iv.end:
                    s = np.append(s, iv.end - self.span)
            v = np.minimum(iv.end - s, self.span)
            keep = self._n_count(s, v) <= np.floor(self.max_n_frac * v + 1e-9)
            s, v = s[keep], v[keep]
            if not len(s):
                continue
            covered = np.concatenate([[s[0]], (s + v)[:-1]])  # exclusive end of the targets already scored
            starts.append(s)
            valid.append(v)
            first_new.append(np.maximum(covered - (s + 1), 0))
        cat = (lambda a: np.concatenate(a)) if starts else (lambda a: np.zeros(0, dtype=np.int64))
        self._starts, self._valid, self._first_new = cat(starts), cat(valid), cat(first_new)

    def _n_count(self, starts: np.ndarray, valid: np.ndarray, chunk: int = 1 << 24) -> np.ndarray:
        """Number of N among the ``valid`` tokens of each window: ``(W,)`` int64, in bounded memory."""
        out = np.zeros(len(starts), dtype=np.int64)
        if self.max_n_frac >= 1.0:
            return out
        full = np.flatnonzero(valid == self.span)
        per = max(1, chunk // self.span)
        for a in range(0, len(full), per):
            rows = full[a:a + per]
            out[rows] = np.count_nonzero(self._gather(self.prepared.tokens, starts[rows]) == N_ID, axis=1)
        for i in np.flatnonzero(valid < self.span):
            out[i] = np.count_nonzero(self.prepared.tokens[starts[i]:starts[i] + valid[i]] == N_ID)
        return out

    # -------------------------------------------------------------------- sampling API
    def __len__(self) -> int:
        return self.samples_per_epoch if self.mode == "random" else len(self._starts)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose windows ``__getitem__`` returns (random mode; no effect when strided)."""
        self.epoch = int(epoch)

    def window_starts(self, indices: Sequence[int] | np.ndarray, epoch: int | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
        """Global start offsets in ``tokens.u8`` ``(B,)`` int64 and reverse-complement flags ``(B,)`` bool
        of samples ``indices`` of ``epoch`` (default: the current one)."""
        starts, rc, _ = self._locate(np.asarray(indices, dtype=np.int64).reshape(-1), epoch)
        return starts, rc

    def _locate(self, idx: np.ndarray, epoch: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Starts, RC flags and (random mode) the gathered ``(B, span)`` token rows of samples ``idx``."""
        n = len(self)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"window index out of range [0, {n}) for split '{self.split}'")
        epoch = self.epoch if epoch is None else int(epoch)
        if self.mode == "strided":
            return self._starts[idx], np.zeros(idx.size, dtype=bool), None
        starts = self._draw_starts(epoch, idx, 0)
        tok = self._gather(self.prepared.tokens, starts)
        if self._max_n < self.span:
            todo = np.flatnonzero(np.count_nonzero(tok == N_ID, axis=1) > self._max_n)
            attempt = 0
            while todo.size:
                attempt += 1
                if attempt > 100:
                    raise ConfigError(f"split '{self.split}' of {self.prepared.path}: 100 draws found no window "
                                      f"with at most {self.max_n_frac:.0%} N; raise max_n_frac")
                starts[todo] = self._draw_starts(epoch, idx[todo], attempt)
                tok[todo] = self._gather(self.prepared.tokens, starts[todo])
                todo = todo[np.count_nonzero(tok[todo] == N_ID, axis=1) > self._max_n]
        if self.rc_aug:
            rc = hash_uniform(self.seed, epoch, 1, idx) < self.rc_prob
        else:
            rc = np.zeros(idx.size, dtype=bool)
        return starts, rc, tok

    def _gather(self, array: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """Rows ``array[s : s + span]`` for every start: ``(B, span)`` uint8 (one fancy index)."""
        view = np.lib.stride_tricks.sliding_window_view(array, self.span)
        return view[starts]

    def rows(self, indices: Sequence[int] | np.ndarray, epoch: int | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Token and region bytes ``(B, L + 1)`` uint8 of samples ``indices`` (prepared-genome ids, EOS and
        PAD included; regions with the soft-mask bit), reverse complemented where drawn, and the number of
        genome bases of each strided window ``(B,)`` (None in random mode)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        starts, rc, tok = self._locate(idx, epoch)
        B = len(starts)
        if self.mode == "strided":
            valid = self._valid[idx]
            tok, reg = self._gather_padded(starts, valid)
            return tok, reg, valid
        reg = self._gather(self.prepared.regions, starts)
        if rc.any():
            rows = tok[rc][:, ::-1]
            comp = np.subtract(A_ID + T_ID, rows, dtype=np.uint8)  # tokens.u8 holds only A C G T N
            np.copyto(comp, rows, where=rows == N_ID)
            tok[rc] = comp
            reg[rc] = reg[rc][:, ::-1]
        if self.add_eos:
            tok = np.concatenate([tok, np.full((B, 1), EOS_ID, dtype=np.uint8)], axis=1)
            reg = np.concatenate([reg, np.zeros((B, 1), dtype=np.uint8)], axis=1)
        return tok, reg, None

    def get_batch(self, indices: Sequence[int] | np.ndarray, epoch: int | None = None,
                  zero_weight: bool = False) -> dict[str, torch.Tensor]:
        """Samples ``indices`` of ``epoch`` as one batch: ``input_ids``, ``targets``, ``regions`` ``(B, L)``
        int64 and ``loss_weight`` ``(B, L)`` float32 (all zero with ``zero_weight``, for padding batches).
        With a ``token_map`` the ids are those of the model's vocabulary (see :func:`genome_token_map`)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        tok, reg, valid = self.rows(idx, epoch)
        L = self.length
        target_reg = reg[:, 1:]
        regions = (target_reg & CLASS_MASK).astype(np.int64)
        weight = self._target_weight(tok[:, 1:], target_reg)
        if self.mode == "strided":
            self._mask_strided(idx, valid, regions, weight)
        elif self.add_eos:
            regions[:, -1] = IGNORE_REGION
        if zero_weight:
            weight[:] = 0.0
        ids = tok.astype(np.int64) if self.token_map is None else self.token_map[reg >> 7, tok]
        return {"input_ids": torch.from_numpy(np.ascontiguousarray(ids[:, :L])),
                "targets": torch.from_numpy(np.ascontiguousarray(ids[:, 1:])),
                "regions": torch.from_numpy(regions), "loss_weight": torch.from_numpy(weight)}

    def _target_weight(self, targets: np.ndarray, target_reg: np.ndarray) -> np.ndarray:
        """Loss weight ``(B, L)`` float32 of target ids and region bytes ``(B, L)`` uint8 (EOS and PAD get 1)."""
        is_n = targets == N_ID
        if self.softmask_weight == 1.0:
            if self.n_weight == 0.0:
                return (~is_n).astype(np.float32)
            if self.n_weight == 1.0:
                return np.ones(targets.shape, dtype=np.float32)
        key = target_reg >> 7  # 1 on soft-masked targets
        key |= is_n.view(np.uint8) << 1
        return self._weight_of_key[key]

    def _gather_padded(self, starts: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Token and region rows ``(B, L + 1)`` uint8 of strided windows: the ``valid`` bases, EOS after them
        with ``add_eos``, PAD (region byte 0) to the end."""
        B, span = len(starts), self.span
        tok = np.full((B, self.length + 1), PAD_ID, dtype=np.uint8)
        reg = np.zeros((B, self.length + 1), dtype=np.uint8)
        full = valid == span
        if full.any():
            tok[full, :span] = self._gather(self.prepared.tokens, starts[full])
            reg[full, :span] = self._gather(self.prepared.regions, starts[full])
        for i in np.flatnonzero(~full):
            s, v = starts[i], valid[i]
            tok[i, :v] = self.prepared.tokens[s:s + v]
            reg[i, :v] = self.prepared.regions[s:s + v]
        if self.add_eos:
            tok[np.arange(B), valid] = EOS_ID
        return tok, reg

    def _mask_strided(self, idx: np.ndarray, valid: np.ndarray, regions: np.ndarray, weight: np.ndarray) -> None:
        """Targets that are not bases (EOS, PAD) get region -1, PAD targets and targets an earlier window
        already scored get weight 0."""
        j = np.arange(self.length)[None, :]
        first_pad_or_eos = (valid - 1)[:, None]
        np.copyto(regions, IGNORE_REGION, where=j >= first_pad_or_eos)
        drop = (j >= first_pad_or_eos + int(self.add_eos)) | (j < self._first_new[idx][:, None])
        np.copyto(weight, np.float32(0.0), where=drop)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.get_batch([index]).items()}

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        batch = self.get_batch(indices)
        return [{k: v[i] for k, v in batch.items()} for i in range(len(indices))]


def genome_token_map(tokenizer: Any) -> np.ndarray | None:
    """The ids ``tokenizer`` gives to what a prepared genome stores, as a lookup ``(2, 256)`` int64:
    ``map[soft, genome_id]`` for the bases A C G T N (row 1: soft-masked, i.e. the lowercase character),
    EOS and PAD (the tokenizer's ``eos_id`` / ``pad_id``); -1 elsewhere. None when every id is its own
    (dnalm's character tokenizer), so windows need no translation.

    Each character is encoded by the tokenizer itself, so case folding, an N token or ``[UNK]`` are the
    tokenizer's choice. ConfigError when a base is not exactly one token (a k-mer or BPE vocabulary:
    next-token training on a genome predicts one base per position).
    """
    table = np.full((2, 256), -1, dtype=np.int64)
    for genome_id, base in zip(range(A_ID, N_ID + 1), "ACGTN"):
        for soft, char in ((0, base), (1, base.lower())):
            try:
                ids = np.asarray(tokenizer.encode(char, add_special_tokens=False)).reshape(-1)
            except InputError as exc:
                raise ConfigError(f"the {getattr(tokenizer, 'type', type(tokenizer).__name__)} tokenizer cannot "
                                  f"encode the base {char!r} ({exc})") from None
            if ids.size != 1:
                raise ConfigError(f"the {getattr(tokenizer, 'type', type(tokenizer).__name__)} tokenizer encodes the "
                                  f"base {char!r} as {ids.size} tokens; next-token training on a genome needs one "
                                  "token per base")
            table[soft, genome_id] = int(ids[0])
    for genome_id, name in ((EOS_ID, "eos_id"), (PAD_ID, "pad_id")):
        value = getattr(tokenizer, name, None)
        if value is not None:
            table[:, genome_id] = int(value)
    used = [A_ID, C_ID, G_ID, T_ID, N_ID, EOS_ID, PAD_ID]
    return None if all((table[:, i] == i).all() for i in used) else table


#: ``_ASCII[soft, genome_id]``: the character of a genome id (lowercase where soft-masked), 0 for non-bases.
_ASCII = np.zeros((2, 256), dtype=np.uint8)
for _i, _b in zip(range(A_ID, N_ID + 1), "ACGTN"):
    _ASCII[0, _i], _ASCII[1, _i] = ord(_b), ord(_b.lower())


def window_texts(tok: np.ndarray, reg: np.ndarray) -> list[str]:
    """Genome ids and region bytes ``(B, W)`` uint8 -> B strings of their bases (lowercase where soft-masked;
    EOS and PAD dropped)."""
    chars = _ASCII[reg >> 7, tok]  # (B, W)
    return [row[row > 0].tobytes().decode("ascii") for row in chars]


def token_base_counts(tokenizer: Any) -> np.ndarray | None:
    """Bases each token id stands for ``(V,)`` int64: the length of its string for sequence tokens, 1 for
    ``[UNK]`` (one character), 0 for the other specials; None when the tokenizer lists no vocabulary."""
    vocab = getattr(tokenizer, "vocab", None)
    if not isinstance(vocab, dict):
        return None
    counts = np.zeros(int(tokenizer.vocab_size), dtype=np.int64)
    for token, i in vocab.items():
        if 0 <= i < len(counts) and token.upper().strip("ACGTN") == "":
            counts[i] = len(token)
    unk = getattr(tokenizer, "unk_id", None)
    if unk is not None:
        counts[unk] = 1
    return counts


class MaskedLMWindows(torch.utils.data.Dataset):
    """The windows of a :class:`WindowDataset` for masked-LM training: each window's bases (soft-masked ones
    lowercase, so the tokenizer decides their ids) encoded by a sequence tokenizer (DNABERT-2's BPE, ...).

    Batches: ``input_ids`` and ``attention_mask`` ``(B, T)`` int64 from ``tokenizer.encode_batch`` (special
    tokens added; ``T = max_tokens`` with truncation, or the longest row when ``max_tokens`` is None) and
    ``padding`` ``(B,)`` bool (true on the copies that even out distributed evaluation: not to be scored).
    Masking is the training module's (it draws it on the device). The window of ``length`` bases is the
    input part of the next-token window (``length + 1`` genome bases are read, the last is unused).
    """

    def __init__(self, windows: WindowDataset, tokenizer: Any, max_tokens: int | None = None):
        if max_tokens is not None and max_tokens < 3:
            raise ConfigError(f"data.max_tokens={max_tokens} must be at least 3 ([CLS], a token, [SEP])")
        self.windows, self.tokenizer, self.max_tokens = windows, tokenizer, max_tokens
        self.length = windows.length

    def __len__(self) -> int:
        return len(self.windows)

    def set_epoch(self, epoch: int) -> None:
        self.windows.set_epoch(epoch)

    def texts(self, indices: Sequence[int] | np.ndarray, epoch: int | None = None) -> list[str]:
        """The bases of windows ``indices`` as strings."""
        tok, reg, _ = self.windows.rows(indices, epoch)
        L = self.length
        return window_texts(tok[:, :L], reg[:, :L])

    def get_batch(self, indices: Sequence[int] | np.ndarray, epoch: int | None = None,
                  zero_weight: bool = False) -> dict[str, torch.Tensor]:
        texts = self.texts(indices, epoch)
        enc = self.tokenizer.encode_batch(texts, max_length=self.max_tokens,
                                          padding="max_length" if self.max_tokens else True, truncation=True,
                                          return_tensors="pt")
        return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long(),
                "padding": torch.full((len(texts),), zero_weight, dtype=torch.bool)}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.get_batch([index]).items()}


# ---------------------------------------------------------------------------------------------
# Labeled sequences
# ---------------------------------------------------------------------------------------------


class SequenceTokenizer(Protocol):
    """What a labeled dataset needs of a tokenizer (``dnalm.tokenizers`` provides it)."""

    def encode(self, seq: str) -> Any: ...


FASTA_SUFFIXES = (".fa", ".fasta", ".fna", ".fas")
CSV_SUFFIXES = (".csv", ".tsv")
TASKS = ("classification", "regression")


@dataclass(frozen=True)
class _Row:
    sequence: str
    label: str
    where: str  # "file:line" or "file: record name", for error messages


def _strip_gz(path: Path) -> str:
    return path.name[:-3].lower() if path.name.lower().endswith(".gz") else path.name.lower()


def read_csv_rows(path: Path, sequence_column: str = "sequence", label_column: str = "label") -> list[_Row]:
    """Rows of a CSV (TSV when the name ends in ``.tsv``) with a header naming both columns."""
    delimiter = "\t" if _strip_gz(path).endswith(".tsv") else ","
    rows = []
    allow_long_csv_fields()
    try:
        with open_text(path) as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            columns = reader.fieldnames or []
            for col in (sequence_column, label_column):
                if col not in columns:
                    raise InputError(f"{path}:1: missing column '{col}' (columns: {', '.join(columns) or 'none'})")
            for row in reader:
                where = f"{path}:{reader.line_num}"
                seq, label = row.get(sequence_column), row.get(label_column)
                if seq is None or label is None:
                    raise InputError(f"{where}: row has fewer fields than the header")
                rows.append(_Row(seq.strip(), label.strip(), where))
    except (UnicodeDecodeError, csv.Error, OSError, EOFError) as exc:
        raise InputError(f"{path}: cannot read as {'TSV' if delimiter == chr(9) else 'CSV'} ({exc})") from None
    return rows


def read_fasta_rows(path: Path) -> list[_Row]:
    """Records of a FASTA whose header ends in the label: ``>id|label`` or ``>id label`` (the last field
    after splitting the header on ``|`` and whitespace)."""
    from dnalm.genome.fasta import iter_records

    rows = []
    for rec in iter_records(path):
        fields = [f for f in re.split(r"[|\s]+", f"{rec.name} {rec.description}".strip()) if f]
        if len(fields) < 2:
            raise InputError(f"{path}: record '{rec.name}' has no label (headers are '>id|label' or '>id label')")
        rows.append(_Row(rec.seq.decode("ascii"), fields[-1], f"{path}: record '{rec.name}'"))
    return rows


def read_class_folders(root: Path) -> list[_Row]:
    """Sequences under ``root/<class name>/``: each file is FASTA (first character ``>``) or holds one
    sequence per line. Folders and files are read in sorted name order; hidden ones are skipped."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise InputError(f"{root}: no class folders (expected {root}/<class name>/<files of sequences>)")
    rows = []
    for name in classes:
        files = sorted(p for p in (root / name).iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise InputError(f"{root / name}: class folder holds no files")
        for file in files:
            try:
                with open_text(file) as f:
                    head = f.read(1)
                if head == ">":
                    rows.extend(_Row(r.sequence, name, r.where) for r in read_fasta_rows_unlabeled(file))
                    continue
                with open_text(file) as f:
                    for line_no, line in enumerate(f, 1):
                        if line.strip():
                            rows.append(_Row(line.strip(), name, f"{file}:{line_no}"))
            except (UnicodeDecodeError, OSError, EOFError) as exc:
                raise InputError(f"{file}: cannot read as sequences ({exc})") from None
    return rows


def read_fasta_rows_unlabeled(path: Path) -> list[_Row]:
    from dnalm.genome.fasta import iter_records

    return [_Row(r.seq.decode("ascii"), "", f"{path}: record '{r.name}'") for r in iter_records(path)]


def read_labeled_rows(path: str | os.PathLike, sequence_column: str = "sequence",
                      label_column: str = "label") -> list[_Row]:
    """Rows of any supported layout, chosen from the path: a directory of class folders, a CSV/TSV,
    or a FASTA (each optionally gzipped)."""
    path = Path(path)
    if path.is_dir():
        return read_class_folders(path)
    if not path.is_file():
        raise InputError(f"{path}: labeled sequence file not found")
    name = _strip_gz(path)
    if name.endswith(CSV_SUFFIXES):
        return read_csv_rows(path, sequence_column, label_column)
    if name.endswith(FASTA_SUFFIXES):
        return read_fasta_rows(path)
    raise InputError(f"{path}: unknown labeled layout (use .csv/.tsv, .fa/.fasta/.fna, or a folder per class)")


_INT_LABEL = re.compile(r"^\+?\d+$")


def _class_ids(rows: list[_Row], classes: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    labels = [r.label for r in rows]
    if classes is None:
        if labels and all(_INT_LABEL.match(x) for x in labels):
            top = max(int(x) for x in labels)
            classes = [str(i) for i in range(top + 1)]
        else:
            classes = sorted(set(labels))
    classes = [str(c) for c in classes]
    lookup = {c: i for i, c in enumerate(classes)}
    if all(_INT_LABEL.match(c) for c in classes):
        lookup.update({str(int(c)): i for i, c in enumerate(classes)})
    ids = np.empty(len(rows), dtype=np.int64)
    for i, r in enumerate(rows):
        key = r.label if r.label in lookup else (str(int(r.label)) if _INT_LABEL.match(r.label) else r.label)
        if key not in lookup:
            raise InputError(f"{r.where}: label '{r.label}' is not a known class ({', '.join(classes[:20])})")
        ids[i] = lookup[key]
    return ids, classes


def _float_labels(rows: list[_Row]) -> np.ndarray:
    out = np.empty(len(rows), dtype=np.float32)
    for i, r in enumerate(rows):
        try:
            out[i] = float(r.label)
        except ValueError:
            raise InputError(f"{r.where}: label '{r.label}' is not a number (task is regression)") from None
        if not np.isfinite(out[i]):
            raise InputError(f"{r.where}: label '{r.label}' is not a finite number")
    return out


def truncate_tokens(ids: np.ndarray, max_length: int | None, tokenizer: Any) -> np.ndarray:
    """The first ``max_length`` tokens of an encoding (T,); an end token the tokenizer appended
    (``tokenizer.eos_id`` last: ``[SEP]``, which no base encodes to) stays last, as Hugging Face tokenizers
    truncate (DNABERT-2's ``model_max_length`` counts ``[CLS]`` and ``[SEP]``)."""
    if max_length is None or len(ids) <= max_length:
        return ids
    if max_length < 1:
        raise ConfigError(f"max_length must be >= 1, got {max_length}")
    eos = getattr(tokenizer, "eos_id", None)
    if eos is not None and max_length > 1 and int(ids[-1]) == int(eos):
        return np.concatenate([ids[: max_length - 1], ids[-1:]])
    return ids[:max_length]


class LabeledSequenceDataset(torch.utils.data.Dataset):
    """Sequences with a class id or a regression target.

    Items are ``{"input_ids": (T,) int64, "labels": int64 or float32 scalar}``; batch them with
    :class:`LabeledCollator`. Sequences are tokenised when read (``tokenizer.encode(seq)``, so the
    tokenizer's own ``add_bos``/``add_eos`` apply); with ``max_length`` the first ``max_length``
    tokens are kept, an appended end token among them (:func:`truncate_tokens`).

    Classes: integer labels (GUE's 0/1) are their own ids (``classes = ['0', ..., str(max)]``);
    any other labels are named classes whose ids follow the sorted names. Pass ``classes`` (the
    training set's :attr:`classes`) so that dev and test use the same ids.

    With ``rc_aug`` the sequence is reverse complemented (as a string, before tokenising, so it
    works with every tokenizer) with probability ``rc_prob``, a function of ``(seed, epoch, index)``.
    With ``rc_both`` every item also carries ``rc_input_ids``, the tokens of its reverse complement, so that
    a model can be scored on both strands (:class:`~dnalm.training.classify.SequenceTaskModule`).
    """

    def __init__(self, sequences: Sequence[str], labels: np.ndarray, tokenizer: SequenceTokenizer,
                 task: str = "classification", classes: Sequence[str] | None = None, rc_aug: bool = False,
                 rc_prob: float = 0.5, seed: int = 0, max_length: int | None = None,
                 where: Sequence[str] | None = None, rc_both: bool = False):
        if task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        if len(sequences) != len(labels):
            raise ConfigError(f"{len(sequences)} sequences but {len(labels)} labels")
        self.sequences = list(sequences)
        self.labels = np.asarray(labels, dtype=np.int64 if task == "classification" else np.float32)
        self.tokenizer, self.task = tokenizer, task
        self.classes = list(classes) if classes is not None else None
        self.rc_aug, self.rc_prob, self.seed, self.epoch = rc_aug, float(rc_prob), int(seed), 0
        self.max_length, self.rc_both = max_length, bool(rc_both)
        self.where = list(where) if where is not None else [f"sequence {i}" for i in range(len(self.sequences))]
        for seq, w in zip(self.sequences, self.where):
            if not seq:
                raise InputError(f"{w}: empty sequence")

    @classmethod
    def from_path(cls, path: str | os.PathLike, tokenizer: SequenceTokenizer, task: str = "classification",
                  classes: Sequence[str] | None = None, sequence_column: str = "sequence",
                  label_column: str = "label", **kwargs: Any) -> LabeledSequenceDataset:
        """Read a CSV/TSV (``sequence,label`` columns), a labeled FASTA or a folder of class folders."""
        if task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        rows = read_labeled_rows(path, sequence_column, label_column)
        if not rows:
            raise InputError(f"{path}: no sequences")
        for r in rows:
            if not r.sequence:
                raise InputError(f"{r.where}: empty sequence")
        if task == "classification":
            labels, classes = _class_ids(rows, classes)
        else:
            labels, classes = _float_labels(rows), None
        return cls([r.sequence for r in rows], labels, tokenizer, task=task, classes=classes,
                   where=[r.where for r in rows], **kwargs)

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes is not None else 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.sequences)

    def item(self, index: int, epoch: int | None = None) -> dict[str, Any]:
        seq = self.sequences[index]
        if self.rc_aug:
            epoch = self.epoch if epoch is None else epoch
            if hash_uniform(self.seed, epoch, 2, index) < self.rc_prob:
                seq = reverse_complement(seq)
        item = {"input_ids": self._encode(seq, index), "labels": torch.tensor(self.labels[index])}
        if self.rc_both:
            item["rc_input_ids"] = self._encode(reverse_complement(seq), index)
        return item

    def _encode(self, seq: str, index: int) -> torch.Tensor:
        try:
            ids = np.asarray(self.tokenizer.encode(seq), dtype=np.int64)
        except InputError as exc:
            raise InputError(f"{self.where[index]}: {exc}") from None
        return torch.from_numpy(truncate_tokens(ids, self.max_length, self.tokenizer))

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.item(int(index))

    def get_batch(self, indices: Sequence[int] | np.ndarray, epoch: int | None = None) -> list[dict[str, Any]]:
        return [self.item(int(i), epoch) for i in np.asarray(indices).reshape(-1)]


class LabeledCollator:
    """Pad labeled items into a batch.

    Returns ``input_ids`` ``(B, T)`` int64 padded with ``pad_id`` on ``padding_side``,
    ``attention_mask`` ``(B, T)`` int64 (1 on tokens), ``labels`` ``(B,)`` (int64 classes or float32
    targets) and ``lengths`` ``(B,)`` int64. ``T`` is the longest item, rounded up to
    ``pad_to_multiple_of``. Items with ``rc_input_ids`` add ``rc_input_ids`` and ``rc_attention_mask``,
    padded alike.
    """

    def __init__(self, pad_id: int = PAD_ID, padding_side: str = "right", pad_to_multiple_of: int | None = None):
        if padding_side not in ("left", "right"):
            raise ConfigError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.pad_id, self.padding_side, self.multiple = pad_id, padding_side, pad_to_multiple_of

    def _pad(self, seqs: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
        T = int(lengths.max()) if len(seqs) else 0
        if self.multiple:
            T = -(-T // self.multiple) * self.multiple
        ids = torch.full((len(seqs), T), self.pad_id, dtype=torch.int64)
        mask = torch.zeros((len(seqs), T), dtype=torch.int64)
        for i, s in enumerate(seqs):
            n = int(lengths[i])
            cols = slice(0, n) if self.padding_side == "right" else slice(T - n, T)
            ids[i, cols] = torch.as_tensor(s)
            mask[i, cols] = 1
        return ids, mask, lengths

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids, mask, lengths = self._pad([it["input_ids"] for it in items])
        labels = torch.stack([torch.as_tensor(it["labels"]) for it in items])
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels, "lengths": lengths}
        if items and "rc_input_ids" in items[0]:
            batch["rc_input_ids"], batch["rc_attention_mask"], _ = self._pad([it["rc_input_ids"] for it in items])
        return batch


def iter_split_files(root: str | os.PathLike) -> Iterator[tuple[str, Path]]:
    """``(split, path)`` for the train/dev/test files or folders directly under ``root`` (GUE layout:
    ``train.csv``, ``dev.csv``, ``test.csv``; ``val``/``valid`` count as dev)."""
    root = Path(root)
    aliases = {"train": ("train",), "dev": ("dev", "val", "valid", "validation"), "test": ("test",)}
    suffixes = [s + gz for s in CSV_SUFFIXES + FASTA_SUFFIXES for gz in ("", ".gz")]
    for split, names in aliases.items():
        for name in names:
            hits = [root / (name + s) for s in suffixes if (root / (name + s)).is_file()]
            if not hits and (root / name).is_dir():
                hits = [root / name]
            if hits:
                yield split, hits[0]
                break
