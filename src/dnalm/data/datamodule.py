"""Lightning DataModules: genome windows for pretraining, labeled sequences for fine-tuning.

Both modules build datasets and loaders only (never models). Their loaders draw whole batches
at once: :class:`EpochBatchSampler` yields batch keys ``(epoch, indices, padding)`` and the
dataset gathers all windows of a key with one vectorised call (``get_batch``). The epoch travels
inside the key, so worker processes (persistent or not) need no shared state, and a resumed run
sees exactly the batches it would have seen.

Distributed runs: the sampler shards batches by rank itself. It subclasses
:class:`~torch.utils.data.distributed.DistributedSampler` only so that Lightning keeps it instead
of wrapping it (Lightning's wrapper would not forward ``set_epoch``). Training ranks get the same
number of batches (the remainder is dropped); evaluation ranks are evened out with copies of a
batch whose ``loss_weight`` is zero (windows) so that no base is counted twice.

Sequence-length warm-up (HyenaDNA's staged training): call
:meth:`GenomeDataModule.set_length` between stages; with a Lightning ``Trainer`` set
``reload_dataloaders_every_n_epochs=1`` (or start a new ``fit`` per stage) so that the new length
takes effect. The current length and batch size are saved in checkpoints (``state_dict``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from dnalm.data.datasets import (
    LabeledCollator,
    LabeledSequenceDataset,
    MaskedLMWindows,
    SequenceTokenizer,
    WindowDataset,
    iter_split_files,
)
from dnalm.data.prepared import PreparedGenome
from dnalm.errors import ConfigError, InputError
from dnalm.tokenizers import PAD_ID

BatchKey = tuple[int, np.ndarray, bool]
"""``(epoch, sample indices (B,), padding)``: what :class:`EpochBatchSampler` yields."""


class EpochBatchSampler(DistributedSampler):
    """Batches of sample indices for one rank, as :data:`BatchKey` tuples.

    Args:
        indices: the samples to visit, ``(N,)`` (an int ``N`` means ``0 .. N-1``).
        batch_size: samples per batch.
        shuffle: visit the samples in a fresh order each epoch (a function of ``(seed, epoch)``).
        drop_last: drop a last incomplete batch, and give every rank the same number of batches by
            dropping the remainder (training); otherwise ranks are evened out with padding batches,
            copies of the last batch flagged ``padding=True`` (evaluation).
        num_replicas, rank: the distributed world (default: a single process).
    """

    def __init__(self, indices: int | np.ndarray, batch_size: int, shuffle: bool = False, drop_last: bool = False,
                 seed: int = 0, num_replicas: int = 1, rank: int = 0):
        self.indices = np.arange(indices, dtype=np.int64) if np.isscalar(indices) else np.asarray(indices, np.int64)
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        super().__init__(range(len(self.indices)), num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=drop_last)
        self.batch_size = int(batch_size)

    def _all_batches(self) -> list[np.ndarray]:
        order = self.indices
        if self.shuffle:
            order = order[np.random.default_rng([self.seed, self.epoch]).permutation(len(order))]
        n_full = len(order) // self.batch_size
        n = n_full if self.drop_last else math.ceil(len(order) / self.batch_size)
        return [order[i * self.batch_size:(i + 1) * self.batch_size] for i in range(n)]

    def _rank_batches(self) -> list[tuple[np.ndarray, bool]]:
        batches = self._all_batches()
        world = self.num_replicas
        if self.drop_last:
            batches = batches[: len(batches) // world * world]
            return [(b, False) for b in batches[self.rank::world]]
        per_rank = math.ceil(len(batches) / world)
        mine = [(b, False) for b in batches[self.rank::world]]
        return mine + [(batches[-1], True)] * (per_rank - len(mine))

    def __iter__(self) -> Iterator[BatchKey]:
        for batch, padding in self._rank_batches():
            yield self.epoch, batch, padding

    def __len__(self) -> int:
        n_batches = len(self.indices) // self.batch_size if self.drop_last else \
            math.ceil(len(self.indices) / self.batch_size)
        return n_batches // self.num_replicas if self.drop_last else math.ceil(n_batches / self.num_replicas)


class BalancedBatchSampler(EpochBatchSampler):
    """:class:`EpochBatchSampler` whose epochs draw classes evenly (``task.sampling=balanced``).

    Each epoch has as many samples as ``labels`` ``(N,)``; each sample is a class drawn uniformly among the
    classes present, then one of that class's examples drawn uniformly (with replacement), all a function of
    ``(seed, epoch)``. Rare classes are repeated and common ones subsampled; the expected class counts
    of an epoch are ``N / C`` each.
    """

    def __init__(self, labels: np.ndarray, batch_size: int, drop_last: bool = False, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0):
        labels = np.asarray(labels, dtype=np.int64)
        super().__init__(len(labels), batch_size, shuffle=True, drop_last=drop_last, seed=seed,
                         num_replicas=num_replicas, rank=rank)
        self.members = [np.flatnonzero(labels == c) for c in np.unique(labels)]

    def _all_batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch, 1])
        drawn = rng.integers(len(self.members), size=len(self.indices))
        order = np.empty(len(self.indices), dtype=np.int64)
        for k, members in enumerate(self.members):
            where = np.flatnonzero(drawn == k)
            order[where] = members[rng.integers(len(members), size=where.size)]
        n_full = len(order) // self.batch_size
        n = n_full if self.drop_last else math.ceil(len(order) / self.batch_size)
        return [order[i * self.batch_size:(i + 1) * self.batch_size] for i in range(n)]


class BatchedView(Dataset):
    """A map-style dataset over :data:`BatchKey` keys: ``view[key]`` is a whole batch.

    Used with ``DataLoader(view, batch_size=None, sampler=EpochBatchSampler(...))``.
    """

    def __init__(self, dataset: WindowDataset | MaskedLMWindows | LabeledSequenceDataset,
                 collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]] | None = None):
        self.dataset, self.collate = dataset, collate

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: BatchKey) -> dict[str, torch.Tensor]:
        epoch, indices, padding = key
        if self.collate is None:  # genome windows gather their batch themselves
            return self.dataset.get_batch(indices, epoch, zero_weight=padding)
        batch = self.collate(self.dataset.get_batch(indices, epoch))
        batch["padding"] = torch.full((len(indices),), padding, dtype=torch.bool)
        return batch


def _world(module: L.LightningDataModule) -> tuple[int, int]:
    """(number of replicas, rank) from the attached Trainer or torch.distributed."""
    trainer = getattr(module, "trainer", None)
    if trainer is not None:
        return int(trainer.world_size), int(trainer.global_rank)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def _loader(view: BatchedView, sampler: EpochBatchSampler, num_workers: int, pin_memory: bool) -> DataLoader:
    # pinned host memory only helps copies to a GPU (and warns without one)
    pin_memory = pin_memory and torch.cuda.is_available()
    return DataLoader(view, batch_size=None, sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0)


# ---------------------------------------------------------------------------------------------
# Pretraining on a prepared genome
# ---------------------------------------------------------------------------------------------


@dataclass
class GenomeDataConfig:
    """Options of :class:`GenomeDataModule` (the ``data`` node of ``dnalm train``).

    ``eval_length``/``eval_stride`` default to ``length`` and to non-overlapping windows;
    ``eval_max_windows`` evaluates an evenly spaced subset of the strided windows (for long splits).
    ``samples_per_epoch`` defaults to the training split's bases divided by ``length``.
    ``max_tokens``: masked-LM windows are tokenized and padded or truncated to this many tokens (None: to
    the longest window of each batch; see :class:`~dnalm.data.datasets.MaskedLMWindows`).
    """

    path: str
    length: int = 1024
    batch_size: int = 8
    eval_batch_size: int | None = None
    num_workers: int = 0
    pin_memory: bool = False
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    rc_aug: bool = False
    rc_prob: float = 0.5
    max_n_frac: float = 0.5
    add_eos: bool = False
    softmask_weight: float = 1.0
    n_weight: float = 0.0
    seed: int = 0
    samples_per_epoch: int | None = None
    eval_length: int | None = None
    eval_stride: int | None = None
    eval_max_windows: int | None = None
    max_tokens: int | None = None


class GenomeDataModule(L.LightningDataModule):
    """Random training windows and strided evaluation windows of a prepared genome.

    Batches are dicts of ``input_ids``, ``targets``, ``regions`` ``(B, L)`` int64 and ``loss_weight``
    ``(B, L)`` float32 (see :class:`~dnalm.data.datasets.WindowDataset`), with ids translated by
    ``token_map`` (:func:`~dnalm.data.datasets.genome_token_map`) for a model with its own vocabulary.
    With ``masked_tokenizer`` the windows are tokenized for masked-LM training instead
    (:class:`~dnalm.data.datasets.MaskedLMWindows`: ``input_ids``, ``attention_mask``, ``padding``).
    """

    def __init__(self, config: GenomeDataConfig, prepared: PreparedGenome | None = None,
                 token_map: np.ndarray | None = None, masked_tokenizer: Any | None = None):
        super().__init__()
        self.config = config
        self.token_map, self.masked_tokenizer = token_map, masked_tokenizer
        self._prepared = prepared
        self._datasets: dict[str, WindowDataset | None] = {}
        self._samplers: dict[str, EpochBatchSampler] = {}

    @property
    def prepared(self) -> PreparedGenome:
        if self._prepared is None:
            self._prepared = PreparedGenome(self.config.path)
        return self._prepared

    def set_length(self, length: int, batch_size: int | None = None) -> None:
        """Change the training window length (and batch size) for a warm-up stage."""
        kw: dict[str, Any] = {"length": int(length)}
        if batch_size is not None:
            kw["batch_size"] = int(batch_size)
        self.config = replace(self.config, **kw)
        self._datasets.pop("train", None)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of the training loader's sampler (Lightning does this itself)."""
        if "train" in self._samplers:
            self._samplers["train"].set_epoch(epoch)

    def dataset(self, stage: str) -> WindowDataset | MaskedLMWindows | None:
        """The dataset of ``stage`` ('train', 'val' or 'test'); None when the split is absent or empty."""
        if stage not in self._datasets:
            c = self.config
            split = {"train": c.train_split, "val": c.val_split, "test": c.test_split}[stage]
            if stage == "train":
                ds = WindowDataset(self.prepared, split, c.length, mode="random", rc_aug=c.rc_aug,
                                   rc_prob=c.rc_prob, max_n_frac=c.max_n_frac, add_eos=c.add_eos,
                                   softmask_weight=c.softmask_weight, n_weight=c.n_weight, seed=c.seed,
                                   samples_per_epoch=c.samples_per_epoch, token_map=self.token_map)
            elif split not in self.prepared.split_names or not self.prepared.intervals(split):
                ds = None
            else:
                ds = WindowDataset(self.prepared, split, c.eval_length or c.length, mode="strided",
                                   stride=c.eval_stride, max_n_frac=c.max_n_frac, add_eos=c.add_eos,
                                   softmask_weight=c.softmask_weight, n_weight=c.n_weight, seed=c.seed,
                                   token_map=self.token_map)
            if ds is not None and self.masked_tokenizer is not None:
                ds = MaskedLMWindows(ds, self.masked_tokenizer, c.max_tokens)
            self._datasets[stage] = ds
        return self._datasets[stage]

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            if self.config.train_split not in self.prepared.split_names:
                raise InputError(f"{self.prepared.path}: no split '{self.config.train_split}' to train on "
                                 f"(has: {', '.join(self.prepared.split_names)})")
            self.dataset("train")

    def _loader_for(self, stage: str) -> DataLoader | list:
        ds = self.dataset(stage)
        if ds is None:
            return []
        c = self.config
        world, rank = _world(self)
        if stage == "train":
            sampler = EpochBatchSampler(len(ds), c.batch_size, drop_last=True, seed=c.seed,
                                        num_replicas=world, rank=rank)
            if len(sampler) == 0:
                raise ConfigError(f"samples_per_epoch={len(ds)} gives no full batch of {c.batch_size} "
                                  f"on each of {world} ranks")
        else:
            idx = np.arange(len(ds))
            if c.eval_max_windows is not None and len(ds) > c.eval_max_windows:
                idx = np.unique(np.linspace(0, len(ds) - 1, c.eval_max_windows).round().astype(np.int64))
            sampler = EpochBatchSampler(idx, c.eval_batch_size or c.batch_size, num_replicas=world, rank=rank)
        self._samplers[stage] = sampler
        return _loader(BatchedView(ds), sampler, c.num_workers, c.pin_memory)

    def train_dataloader(self) -> DataLoader:
        return self._loader_for("train")

    def val_dataloader(self) -> DataLoader | list:
        return self._loader_for("val")

    def test_dataloader(self) -> DataLoader | list:
        return self._loader_for("test")

    def state_dict(self) -> dict[str, Any]:
        return {"length": self.config.length, "batch_size": self.config.batch_size}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.set_length(int(state_dict["length"]), int(state_dict["batch_size"]))


# ---------------------------------------------------------------------------------------------
# Fine-tuning on labeled sequences
# ---------------------------------------------------------------------------------------------


@dataclass
class LabeledDataConfig:
    """Options of :class:`LabeledDataModule` (the ``data`` node of ``dnalm finetune``).

    ``path`` is a folder with ``train``/``dev``/``test`` files (GUE: ``train.csv``, ``dev.csv``,
    ``test.csv``; ``val``/``valid`` count as dev; each may also be a labeled FASTA or a folder of
    class folders) or the training file itself, with ``dev``/``test`` given separately.
    ``rc_eval``: dev and test batches also carry the reverse complements (``rc_input_ids``), which the
    task module scores too and averages with the forward strand.
    """

    path: str
    dev: str | None = None
    test: str | None = None
    task: str = "classification"
    sequence_column: str = "sequence"
    label_column: str = "label"
    batch_size: int = 32
    eval_batch_size: int | None = None
    num_workers: int = 0
    pin_memory: bool = False
    padding_side: str = "right"
    pad_to_multiple_of: int | None = None
    max_length: int | None = None
    rc_aug: bool = False
    rc_prob: float = 0.5
    rc_eval: bool = False
    shuffle: bool = True
    seed: int = 0


class LabeledDataModule(L.LightningDataModule):
    """Train/dev/test labeled sequences; batches come from :class:`LabeledCollator` (``input_ids``,
    ``attention_mask``, ``labels``, ``lengths``, plus ``padding`` ``(B,)`` bool, true on the copies
    that even out distributed evaluation). ``sampling="balanced"`` draws training classes evenly
    (:class:`BalancedBatchSampler`)."""

    def __init__(self, config: LabeledDataConfig, tokenizer: SequenceTokenizer, sampling: str = "natural"):
        super().__init__()
        if sampling not in ("natural", "balanced"):
            raise ConfigError(f"task.sampling must be natural or balanced, got {sampling!r}")
        self.config, self.tokenizer, self.sampling = config, tokenizer, sampling
        self.collate = LabeledCollator(pad_id=getattr(tokenizer, "pad_id", PAD_ID), padding_side=config.padding_side,
                                       pad_to_multiple_of=config.pad_to_multiple_of)
        self._datasets: dict[str, LabeledSequenceDataset | None] = {}

    def paths(self) -> dict[str, str | None]:
        """Files (or folders) of the train, dev and test splits."""
        from pathlib import Path

        c, root = self.config, Path(self.config.path)
        if root.is_dir() and c.dev is None and c.test is None:
            found = {split: str(p) for split, p in iter_split_files(root)}
            if "train" in found:
                return {"train": found["train"], "dev": found.get("dev"), "test": found.get("test")}
        if not root.exists():
            raise InputError(f"{root}: labeled data not found")
        return {"train": str(root), "dev": c.dev, "test": c.test}

    def dataset(self, split: str) -> LabeledSequenceDataset | None:
        """The dataset of 'train', 'dev' or 'test' (None when that split has no file)."""
        if split not in self._datasets:
            c, paths = self.config, self.paths()
            classes = None
            if split != "train" and c.task == "classification":
                classes = self.dataset("train").classes
            path = paths[split]
            self._datasets[split] = None if path is None else LabeledSequenceDataset.from_path(
                path, self.tokenizer, task=c.task, classes=classes, sequence_column=c.sequence_column,
                label_column=c.label_column, rc_aug=c.rc_aug and split == "train", rc_prob=c.rc_prob,
                seed=c.seed, max_length=c.max_length, rc_both=c.rc_eval and split != "train")
        return self._datasets[split]

    @property
    def classes(self) -> list[str] | None:
        return self.dataset("train").classes

    @property
    def num_classes(self) -> int:
        return self.dataset("train").num_classes

    def setup(self, stage: str | None = None) -> None:
        self.dataset("train")

    def _loader_for(self, split: str) -> DataLoader | list:
        ds = self.dataset(split)
        if ds is None:
            return []
        c = self.config
        world, rank = _world(self)
        if split == "train" and self.sampling == "balanced":
            sampler = BalancedBatchSampler(ds.labels, c.batch_size, drop_last=world > 1, seed=c.seed,
                                           num_replicas=world, rank=rank)
        elif split == "train":
            sampler = EpochBatchSampler(len(ds), c.batch_size, shuffle=c.shuffle, drop_last=world > 1,
                                        seed=c.seed, num_replicas=world, rank=rank)
        else:
            sampler = EpochBatchSampler(len(ds), c.eval_batch_size or c.batch_size, num_replicas=world, rank=rank)
        return _loader(BatchedView(ds, self.collate), sampler, c.num_workers, c.pin_memory)

    def train_dataloader(self) -> DataLoader:
        return self._loader_for("train")

    def val_dataloader(self) -> DataLoader | list:
        return self._loader_for("dev")

    def test_dataloader(self) -> DataLoader | list:
        return self._loader_for("test")
