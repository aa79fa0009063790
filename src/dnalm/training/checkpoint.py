"""Self-describing, atomic training checkpoints that a killed run resumes from.

A checkpoint is a directory::

    model.safetensors  config.json  tokenizer.json   the model in dnalm's format (dnalm.models.io.save_pretrained):
                                                     load_pretrained(directory) reads it as it is
    training_state.pt                                what else resuming needs: optimizer and lr-scheduler
                                                     states, global step, epoch and loop progress, the
                                                     position of the training data in its epoch, callback
                                                     and datamodule states (window length), RNG states;
                                                     absent from weights-only saves
    adapter/                                         LoRA runs only: the adapter (dnalm.models.lora.save_adapter);
                                                     model.safetensors then holds the merged weights

It is written under a temporary name and renamed when complete (:func:`dnalm.utils.atomic_dir`), so a
run killed while saving leaves the previous checkpoint intact. The file ``training_state.pt`` holds
only tensors and plain containers and is read back with ``torch.load(weights_only=True)``.

Lightning writes and reads checkpoints through :class:`DirectoryCheckpointIO` (a ``CheckpointIO``
plugin), so ``trainer.fit(ckpt_path=<directory>)`` restores everything with Lightning's own loop
restoration. :class:`ResumableLoader` makes the training loader stateful: it records how many
batches of the current epoch were consumed and, after a restart, skips them (cheaply, at the level
of batch keys), so the resumed run sees exactly the batches the uninterrupted one would have seen.

Run directory (``runs/<name>/``) as kept by :class:`RunCheckpoints`::

    checkpoints/step-00000500/   full checkpoints, the newest ``keep`` of them
    checkpoints/last             symbolic link to the newest, replaced atomically
    best/                        weights only, the best validation loss so far
    model/                       weights only, written when training ends
"""

from __future__ import annotations

import math
import os
import random
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io import CheckpointIO
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn
from torch.utils.data import DataLoader, Sampler

from dnalm.data.datamodule import GenomeDataModule
from dnalm.errors import InputError
from dnalm.models.io import WEIGHTS_FILE, load_pretrained, save_pretrained
from dnalm.utils import atomic_dir, json_safe, torch_load_reason

TRAINING_STATE = "training_state.pt"
STEP_DIR = re.compile(r"^step-(\d+)$")
MODEL_PREFIX = "model."
ADAPTER_DIR = "adapter"


# ---------------------------------------------------------------------------------------------
# RNG states
# ---------------------------------------------------------------------------------------------


def rng_states() -> dict[str, Any]:
    """The states of Python's, numpy's and torch's (CPU and CUDA) random generators, as plain data."""
    version, state, gauss = random.getstate()
    np_state = np.random.get_state()
    out: dict[str, Any] = {
        "python": [version, list(state), gauss],
        "numpy": [np_state[0], torch.from_numpy(np.asarray(np_state[1])), *map(float, np_state[2:])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    if "python" in states:
        version, state, gauss = states["python"]
        random.setstate((version, tuple(state), gauss))
    if "numpy" in states:
        name, keys, pos, has_gauss, cached = states["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


# ---------------------------------------------------------------------------------------------
# Directory checkpoints through Lightning
# ---------------------------------------------------------------------------------------------


class DirectoryCheckpointIO(CheckpointIO):
    """Lightning ``CheckpointIO`` that writes and reads checkpoint directories (see the module docstring).

    Args:
        model: the trained model (its class and ``config`` describe the weights in a Lightning
            checkpoint, whose keys are the model's own prefixed with ``model.``).
        tokenizer: saved beside the weights (``tokenizer.json``).
        extra: JSON metadata stored in every ``config.json`` (under ``extra``), with the global step,
            the epoch and what ``storage_options={"extra": {...}}`` of a save adds.
        lora: the :class:`~dnalm.models.lora.LoraSettings` of a model trained through LoRA adapters, whose
            base weights are those of ``base_model``: a checkpoint holds the merged weights and the adapter
            (``adapter/``), and is read back as the base with the adapter.
    """

    def __init__(self, model: nn.Module, tokenizer: Any | None = None, extra: Mapping[str, Any] | None = None,
                 lora: Any | None = None, base_model: str | None = None):
        self.model_cls = type(model)
        self.model_config = model.config
        self.tokenizer = tokenizer
        self.extra = dict(extra or {})
        self.lora, self.base_model = lora, base_model
        if lora is not None and base_model is None:
            raise ValueError("a LoRA checkpoint needs its base model")

    def _model_with(self, weights: Mapping[str, torch.Tensor]) -> nn.Module:
        """A model of the trained class whose tensors are ``weights`` (built on the meta device, no copy;
        with LoRA adapters injected when the run trains some)."""
        shell = self.model_cls(self.model_config, device=torch.device("meta"))
        if self.lora is not None:
            from dnalm.models.lora import apply_lora

            apply_lora(shell, self.lora)
        shell.load_state_dict(weights, strict=True, assign=True)
        return shell

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        path = Path(path)
        weights = {k[len(MODEL_PREFIX):]: v.detach().cpu() for k, v in checkpoint["state_dict"].items()
                   if k.startswith(MODEL_PREFIX)}
        extra = {**self.extra, "global_step": checkpoint.get("global_step"), "epoch": checkpoint.get("epoch")}
        if isinstance(storage_options, Mapping):
            extra.update(storage_options.get("extra") or {})
        state = {k: v for k, v in checkpoint.items() if k != "state_dict"}
        with atomic_dir(path) as tmp:
            if self.lora is None:
                save_pretrained(self._model_with(weights), tmp, tokenizer=self.tokenizer, extra=json_safe(extra))
            else:
                from dnalm.models.lora import merge_and_unload, save_adapter

                # a safe merge writes W0 + (alpha / r) B A into new tensors: the trained ones stay as they are
                save_pretrained(merge_and_unload(self._model_with(weights)), tmp, tokenizer=self.tokenizer,
                                extra=json_safe(extra))
                save_adapter(self._model_with(weights), tmp / ADAPTER_DIR, self.lora,
                             base_model=str(Path(self.base_model).resolve()), tokenizer=self.tokenizer)
            if "optimizer_states" in checkpoint:
                torch.save(state, tmp / TRAINING_STATE)

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        path = Path(path)
        checkpoint = read_training_state(path)
        if self.lora is not None:
            from dnalm.models.lora import load_adapter

            if not (path / ADAPTER_DIR).is_dir():
                raise InputError(f"{path}: no {ADAPTER_DIR}/ to resume the LoRA run from")
            model = load_adapter(load_pretrained(self.base_model), path / ADAPTER_DIR)
        else:
            model = load_pretrained(path)
        checkpoint["state_dict"] = {MODEL_PREFIX + k: v for k, v in model.state_dict().items()}
        return checkpoint

    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        shutil.rmtree(path, ignore_errors=True)


class DirectoryFSDPStrategy(FSDPStrategy):
    """Lightning's FSDP with full state dicts, writing and reading checkpoint directories.

    Lightning gathers the full model and optimizer states on rank 0 (``state_dict_type="full"``);
    :class:`DirectoryCheckpointIO` writes them there. To resume, every rank reads the whole directory
    and FSDP keeps the shards of the model and optimizer states that are its own.
    """

    def __init__(self, **kwargs: Any):
        super().__init__(state_dict_type="full", **kwargs)

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if self.is_global_zero:
            self.checkpoint_io.save_checkpoint(checkpoint, filepath, storage_options=storage_options)

    def load_checkpoint(self, checkpoint_path: str | os.PathLike, weights_only: bool | None = None) -> dict[str, Any]:
        from lightning.fabric.strategies.fsdp import _get_full_state_dict_context
        from lightning.fabric.strategies.model_parallel import _load_raw_module_state
        from lightning.pytorch.trainer.states import TrainerFn
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp import OptimStateKeyType

        path = Path(self.broadcast(str(checkpoint_path)))
        if not path.is_dir():
            return super().load_checkpoint(path, weights_only=weights_only)
        checkpoint = self.checkpoint_io.load_checkpoint(path)
        # every rank holds the full state; FSDP keeps the shard of each rank
        _load_raw_module_state(checkpoint.pop("state_dict"), module=self.model, world_size=self.world_size,
                               strict=self.lightning_module.strict_loading)
        states = checkpoint.get("optimizer_states")
        if not states or self.lightning_module.trainer.state.fn != TrainerFn.FITTING:
            return checkpoint
        with _get_full_state_dict_context(self.model, world_size=self.world_size, rank0_only=False):
            for optimizer, state in zip(self.optimizers, states, strict=True):
                if state["state"] and isinstance(next(iter(state["state"])), int):
                    state = FSDP.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_NAME, self.model)
                optimizer.load_state_dict(FSDP.optim_state_dict_to_load(model=self.model, optim=optimizer,
                                                                        optim_state_dict=state))
        return checkpoint


#: Keys of a training state that Lightning needs to resume.
TRAINING_STATE_KEYS = ("pytorch-lightning_version", "global_step", "epoch", "loops", "optimizer_states")


def read_training_state(path: str | os.PathLike) -> dict[str, Any]:
    """The ``training_state.pt`` of a checkpoint directory (never unpickles code); InputError for a file
    that cannot be read or lacks what resuming needs (:data:`TRAINING_STATE_KEYS`)."""
    file = Path(path) / TRAINING_STATE
    if not file.is_file():
        raise InputError(f"{path}: not a resumable checkpoint (no {TRAINING_STATE})")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise InputError(f"{file}: cannot read the training state ({torch_load_reason(exc)})") from None
    missing = [k for k in TRAINING_STATE_KEYS if k not in state] if isinstance(state, dict) else None
    if missing is None or missing:
        what = f"missing {', '.join(missing)}" if missing else f"holds a {type(state).__name__}"
        raise InputError(f"{file}: not a training state written by dnalm ({what})")
    return state


def data_position(state: Mapping[str, Any]) -> dict[str, int] | None:
    """``{"epoch", "batches"}``: where the training data of a saved run continues (None if not recorded)."""
    loaders = state.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader") or []
    return dict(loaders[0]) if loaders else None


def is_complete(path: Path) -> bool:
    """Whether ``path`` is a checkpoint directory with weights, config and training state."""
    return all((path / name).is_file() for name in (WEIGHTS_FILE, "config.json", TRAINING_STATE))


def find_resume_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run directory (by step), or None."""
    directory = Path(run_dir) / "checkpoints"
    if not directory.is_dir():
        return None
    found = []
    for p in directory.iterdir():
        m = STEP_DIR.match(p.name)
        if m and p.is_dir() and not p.is_symlink() and is_complete(p):
            found.append((int(m.group(1)), p))
    if found:
        return max(found)[1]
    last = directory / "last"
    return last.resolve() if last.exists() and is_complete(last) else None


def recover_run_dir(run_dir: str | os.PathLike) -> list[Path]:
    """Tidy a run directory after a crash: delete unfinished temporary directories and put back an
    output that was being replaced (``.best.old`` -> ``best``). Returns the paths removed."""
    run_dir = Path(run_dir)
    removed = []
    for directory in (run_dir, run_dir / "checkpoints"):
        if not directory.is_dir():
            continue
        for p in directory.iterdir():
            if p.name.startswith(".") and p.name.endswith(".tmp"):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(p)
            elif p.name.startswith(".") and p.name.endswith(".old"):
                target = p.with_name(p.name[1:-4])
                if not target.exists():
                    os.replace(p, target)
                else:
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p)
    return removed


def _validation_follows(trainer: L.Trainer) -> bool:
    """Whether Lightning validates right after the current training batch.

    A checkpoint due at such a step is written after that validation: Lightning resumes a checkpoint
    written at the end of a training batch without the validation that followed it.
    """
    loop = trainer.fit_loop.epoch_loop
    check = getattr(loop, "_should_check_val_fx", None)
    fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
    if check is None or fetcher is None or not trainer.enable_validation:
        return False
    return bool(check(fetcher))


def _point_last(directory: Path, target: Path) -> None:
    """Make ``directory/last`` a symbolic link to ``target`` (replaced atomically)."""
    tmp = directory / f".last.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(target.name, tmp)
    os.replace(tmp, directory / "last")


class RunCheckpoints(Checkpoint):
    """Keep ``checkpoints/step-*`` (newest ``keep``) with a ``last`` link, and ``best/`` by ``monitor``.

    Saves every ``every_n_steps`` optimizer steps, right after the step, or when a validation or the
    end of the epoch follows that step, after them (the points Lightning resumes from exactly); and
    through :meth:`save_last`. With
    ``save_best``, every validation that improves ``monitor`` rewrites ``best/`` (weights only, the
    score in its ``config.json``). Needs :class:`DirectoryCheckpointIO` as the Trainer's checkpoint IO.
    """

    def __init__(self, run_dir: str | os.PathLike, every_n_steps: int = 0, keep: int = 1,
                 monitor: str = "val/loss", mode: str = "min", save_best: bool = True):
        self.run_dir = Path(run_dir)
        self.directory = self.run_dir / "checkpoints"
        self.every_n_steps = int(every_n_steps)
        self.keep = max(1, int(keep))
        self.monitor, self.mode, self.save_best = monitor, mode, save_best
        self.best_score: float | None = None
        self.best_step: int | None = None
        self.last_saved_step = -1
        self._pending: str | None = None

    # -- saving
    def save_last(self, trainer: L.Trainer) -> Path | None:
        """Write a full checkpoint of the current step, point ``last`` at it and prune older ones."""
        step = trainer.global_step
        if step == self.last_saved_step:
            return None
        target = self.directory / f"step-{step:08d}"
        trainer.save_checkpoint(target, weights_only=False, storage_options={"extra": self.best_extra()})
        self.last_saved_step = step
        if trainer.is_global_zero:
            _point_last(self.directory, target)
            steps = sorted((int(m.group(1)), p) for p in self.directory.iterdir()
                           if (m := STEP_DIR.match(p.name)) and p != target)
            for _, old in steps[: max(0, len(steps) - (self.keep - 1))]:
                shutil.rmtree(old, ignore_errors=True)
        return target

    def best_extra(self) -> dict[str, Any]:
        """``{"best": {monitor: score, "step": step}}`` once a validation has run, for ``config.json``."""
        if self.best_score is None:
            return {}
        return {"best": {self.monitor: self.best_score, "step": self.best_step}}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._pending == "validation":  # the validation did not run (no validation batches)
            self._pending = None
            self.save_last(trainer)
        step = trainer.global_step
        if self.every_n_steps <= 0 or step == 0 or step % self.every_n_steps or step == self.last_saved_step:
            return
        if _validation_follows(trainer):
            self._pending = "validation"
        elif batch_idx + 1 >= trainer.num_training_batches:
            self._pending = "epoch"
        else:
            self.save_last(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is not None:
            self._pending = None
            self.save_last(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self._update_best(trainer)
        if self._pending == "validation":
            self._pending = None
            self.save_last(trainer)

    def _update_best(self, trainer: L.Trainer) -> None:
        if not self.save_best:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        score = float(value)
        better = self.best_score is None or (score < self.best_score if self.mode == "min" else score > self.best_score)
        if better:
            self.best_score, self.best_step = score, trainer.global_step
            trainer.save_checkpoint(self.run_dir / "best", weights_only=True,
                                    storage_options={"extra": self.best_extra()})

    # -- state
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_step": self.best_step, "last_saved_step": self.last_saved_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = state_dict.get("best_score")
        self.best_step = state_dict.get("best_step")
        self.last_saved_step = int(state_dict.get("last_saved_step", -1))


# ---------------------------------------------------------------------------------------------
# A training loader that resumes mid-epoch
# ---------------------------------------------------------------------------------------------


class _SkipSampler(Sampler):
    """Yields the keys of ``sampler``, leaving out the first ``skip`` of epoch ``skip_epoch`` once."""

    def __init__(self, sampler: Any):
        self.sampler = sampler
        self.skip_epoch: int | None = None
        self.skip = 0

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Any]:
        it = iter(self.sampler)
        if self.skip_epoch is not None and self.skip_epoch == self.sampler.epoch:
            for _ in range(self.skip):
                next(it, None)
        self.skip_epoch, self.skip = None, 0
        yield from it


class ResumableLoader:
    """A training loader (an iterable for Lightning) with ``state_dict``/``load_state_dict``.

    Wraps a loader built as ``DataLoader(view, batch_size=None, sampler=EpochBatchSampler)`` (see
    :mod:`dnalm.data.datamodule`). Its state is ``{"epoch", "batches"}``: the batches of the epoch
    handed out so far (Lightning does not prefetch from loaders of known length, so these are the
    batches trained on). ``len()`` is the whole epoch; after ``load_state_dict`` the next epoch
    ``epoch`` begins at batch ``batches``.
    """

    def __init__(self, loader: DataLoader):
        self.sampler = loader.sampler
        self._skip = _SkipSampler(loader.sampler)
        self.loader = DataLoader(loader.dataset, batch_size=None, sampler=self._skip, num_workers=loader.num_workers,
                                 pin_memory=loader.pin_memory, persistent_workers=loader.persistent_workers)
        self.consumed = 0

    @property
    def dataset(self) -> Any:
        return self.loader.dataset

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch = self.sampler.epoch
        self.consumed = self._skip.skip if self._skip.skip_epoch == epoch else 0
        for batch in self.loader:
            self.consumed += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        epoch, done = int(self.sampler.epoch), int(self.consumed)
        if done >= len(self):
            epoch, done = epoch + 1, 0
        return {"epoch": epoch, "batches": done}

    def load_state_dict(self, state_dict: Mapping[str, int]) -> None:
        epoch = int(state_dict["epoch"])
        self.sampler.set_epoch(epoch)
        self._skip.skip_epoch, self._skip.skip = epoch, int(state_dict["batches"])


class ResumableGenomeDataModule(GenomeDataModule):
    """:class:`~dnalm.data.datamodule.GenomeDataModule` whose training loader is a :class:`ResumableLoader`."""

    def train_dataloader(self) -> ResumableLoader:
        return ResumableLoader(super().train_dataloader())
