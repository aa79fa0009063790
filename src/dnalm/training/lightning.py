"""Pretraining in Lightning: thin LightningModules (next-token and masked LM) and the sequence-length warm-up.

:class:`NextTokenLM` wraps a built causal LM (``model(input_ids (B, L)) -> logits (B, L, V)``) and
one loss function (:func:`dnalm.training.losses.lm_loss`); it builds neither model nor data. It
trains with AdamW over :func:`dnalm.training.optim.param_groups` and the per-step linear warm-up +
cosine schedule of :mod:`dnalm.training.schedules`. Gradient clipping, precision (``32-true``,
``bf16-mixed``, ``16-mixed``), accumulation and devices are the Lightning ``Trainer``'s.

Logged per training step: ``train/loss``, ``train/acc``, ``train/bits_per_base``, ``train/ppl``,
``train/lr`` (of the first parameter group) and ``train/tokens_per_s`` (all devices); per evaluation
epoch, over all of its tokens: ``val/loss``, ``val/acc``, ``val/bits_per_base``, ``val/ppl`` and
``val/loss/<class>``, ``val/bits_per_base/<class>`` per region class (``test/...`` likewise).

:class:`MaskedLM` is the masked-LM twin (BERT's masking, :func:`dnalm.training.losses.masked_lm_loss`,
:class:`~dnalm.training.losses.MaskedLMMetrics`); the recipe picks one by the family's ``objective``.

Dropout randomness is reseeded before every micro-batch from ``(seed, epoch, batch index, rank)``, so
a run resumed from a checkpoint draws the same dropout masks as the uninterrupted run.
Activation checkpointing (:func:`checkpoint_blocks`) recomputes each block in the backward pass;
it wraps the blocks' ``forward`` at call time, so state-dict keys do not change. ``compile=True``
compiles the model in place (``nn.Module.compile``), which also keeps the keys.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from torch import Tensor, nn

from dnalm.errors import ConfigError
from dnalm.genome.regions import REGION_CLASSES
from dnalm.training.losses import LMLoss, MaskedLMMetrics, NextTokenMetrics, lm_loss, masked_lm_loss
from dnalm.training.optim import param_groups
from dnalm.training.schedules import DECAYS, StagePlan, stage_at, warmup_cosine_scheduler, warmup_steps_of
from dnalm.utils import atomic_file

LossFn = Callable[[Tensor, Tensor, Tensor | None], LMLoss]


@dataclass
class OptimConfig:
    """AdamW and its schedule (the ``optim`` node of ``dnalm train``).

    ``filter_lr`` / ``filter_weight_decay``: Hyena's implicit filters (HyenaDNA gives them weight
    decay 0); ``grad_clip``: maximum gradient norm (None: no clipping); ``warmup_steps`` and
    ``min_lr_ratio`` shape the schedule (see :mod:`dnalm.training.schedules`); ``horizon``: ``steps``
    (the cosine spans ``max_steps``) or ``time`` (it ends at ``max_steps`` or ``trainer.max_time``,
    whichever comes first); ``warmup_fraction``: the warm-up as a fraction of the run's steps (used when
    ``warmup_steps`` is 0); ``decay``: ``cosine`` or ``constant`` after the warm-up. ``lr`` is a number, or
    ``auto`` where the recipe runs a learning-rate range test (``dnalm finetune``, see
    :mod:`dnalm.training.lr_range`).
    """

    lr: Any = 6e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    warmup_fraction: float | None = None
    decay: str = "cosine"
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0
    filter_lr: float | None = None
    filter_weight_decay: float = 0.0
    horizon: str = "steps"

    def __post_init__(self) -> None:
        if self.lr != "auto":
            try:
                self.lr = float(self.lr)
            except (TypeError, ValueError):
                raise ConfigError(f"optim.lr must be a number or 'auto', got {self.lr!r}") from None
            if not self.lr >= 0:
                raise ConfigError(f"optim.lr must be >= 0, got {self.lr}")
        if self.decay not in DECAYS:
            raise ConfigError(f"optim.decay must be one of {', '.join(DECAYS)}, got {self.decay!r}")
        if self.horizon not in HORIZONS:
            raise ConfigError(f"optim.horizon must be one of {', '.join(HORIZONS)}, got '{self.horizon}'")


HORIZONS = ("steps", "time")


def time_budget_fraction(trainer: L.Trainer | None) -> float:
    """The fraction of ``trainer.max_time`` spent in training so far (0 without a time limit)."""
    if trainer is None:
        return 0.0
    from lightning.pytorch.callbacks import Timer

    for callback in trainer.callbacks:
        remaining = callback.time_remaining("train") if isinstance(callback, Timer) else None
        if remaining is not None:
            elapsed = callback.time_elapsed("train")
            return min(1.0, elapsed / max(elapsed + remaining, 1e-9))
    return 0.0


def step_seed(seed: int, epoch: int, batch_idx: int, rank: int) -> int:
    """A 63-bit seed that is a function of its arguments only (one per micro-batch and rank)."""
    return int(np.random.SeedSequence([seed, epoch, batch_idx, rank]).generate_state(1, np.uint64)[0] >> 1)


def model_blocks(model: nn.Module) -> nn.ModuleList:
    """The list of ``model``'s repeated blocks: its outermost ``nn.ModuleList`` of ``model.n_layer`` modules
    (every dnalm model carries ``n_layer``: Hyena's and StripedHyena's ``backbone.layers``, DNABERT-2's
    ``bert.encoder.layer``). ConfigError when there is none."""
    n = getattr(model, "n_layer", None)
    for module in model.modules():  # pre-order: outer lists come first
        if isinstance(module, nn.ModuleList) and n is not None and len(module) == n:
            return module
    raise ConfigError(f"{type(model).__name__}: no list of {n} blocks to checkpoint (the model needs an n_layer "
                      "and an nn.ModuleList of that many blocks)")


def _stateless(args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
    """True when a block call carries only tensors, numbers and None (no inference state object)."""
    return all(a is None or isinstance(a, (Tensor, int, float, bool)) for a in (*args, *kwargs.values())) and \
        all(kwargs.get(k) is None for k in ("state", "layer_state"))


def checkpoint_blocks(model: nn.Module) -> int:
    """Recompute the activations of every block of ``model`` (:func:`model_blocks`) in the backward pass.

    Each block's ``forward`` is replaced by a call through ``torch.utils.checkpoint`` (non-reentrant,
    RNG state preserved, so dropout masks match) when it trains without an inference state (its
    arguments are tensors, numbers or None); the modules and so the state-dict keys stay as they are.
    Returns the number of blocks wrapped.
    """
    from torch.utils.checkpoint import checkpoint

    wrapped = 0
    for block in model_blocks(model):
        if getattr(block, "_checkpointed", False):
            continue
        forward = block.forward

        def run(*args: Any, _forward=forward, _block=block, **kwargs: Any):
            if _block.training and torch.is_grad_enabled() and _stateless(args, kwargs):
                return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
            return _forward(*args, **kwargs)

        block.forward = run
        block._checkpointed = True
        wrapped += 1
    return wrapped


class _Pretraining(L.LightningModule):
    """What next-token and masked-LM pretraining share: AdamW over :func:`param_groups` with the warm-up +
    cosine schedule, FSDP-aware gradient clipping, per-micro-batch dropout seeds, training logs, epoch
    metrics and the last validation metrics kept in checkpoints. Subclasses set ``val_metrics`` /
    ``test_metrics`` and implement ``training_step`` and ``_eval_step``."""

    def __init__(self, model: nn.Module, optim: OptimConfig, total_steps: int, seed: int = 0,
                 activation_checkpointing: bool = False, compile: bool = False):
        super().__init__()
        self.model = model
        self.optim = optim
        self.total_steps = int(total_steps)
        self.seed = int(seed)
        if activation_checkpointing:
            checkpoint_blocks(model)
        if compile:
            model.compile()
        self.last_metrics: dict[str, dict[str, float]] = {}
        self._last_batch_time: float | None = None
        self._last_batch_tokens = 0

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.optim
        groups = param_groups(self.model, o.weight_decay, o.lr, o.filter_lr, o.filter_weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
        clock = (lambda: time_budget_fraction(self._trainer)) if o.horizon == "time" else None
        scheduler = warmup_cosine_scheduler(optimizer, self.total_steps,
                                            warmup_steps_of(self.total_steps, o.warmup_steps, o.warmup_fraction),
                                            o.min_lr_ratio, clock, o.decay)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        wrapper = self.trainer.model if self._trainer is not None else None
        if gradient_clip_val and hasattr(wrapper, "clip_grad_norm_"):
            # FSDP: the norm over all shards, computed by the wrapper (Lightning's default refuses FSDP)
            wrapper.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_train_batch_start(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        torch.manual_seed(step_seed(self.seed, self.current_epoch, batch_idx, self.global_rank))

    def _log_train(self, log: dict[str, Tensor], loss: Tensor, tokens: int, batch_size: int) -> None:
        """Log the step's metrics with the learning rate and the throughput (``tokens`` of this micro-batch)."""
        optimizer = self.trainer.optimizers[0] if self._trainer is not None and self.trainer.optimizers else None
        if optimizer is not None:
            log["train/lr"] = torch.tensor(optimizer.param_groups[0]["lr"])
        now = time.perf_counter()
        if self._last_batch_time is not None and now > self._last_batch_time:
            log["train/tokens_per_s"] = torch.tensor(self._last_batch_tokens / (now - self._last_batch_time))
        self._last_batch_time = now
        self._last_batch_tokens = tokens * (self.trainer.world_size if self._trainer else 1)
        self.log_dict(log, on_step=True, on_epoch=False, prog_bar=False, batch_size=batch_size)
        self.log("loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True, logger=False,
                 batch_size=batch_size)

    def _eval_step(self, metrics: Any, batch: dict[str, Tensor], batch_idx: int) -> None:
        raise NotImplementedError

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(self.val_metrics, batch, batch_idx)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(self.test_metrics, batch, batch_idx)

    def _eval_epoch_end(self, stage: str, metrics: Any) -> None:
        if float(metrics.count) == 0 and float(getattr(metrics, "weight_sum", 0)) == 0:
            metrics.reset()
            return
        values = metrics.compute()
        metrics.reset()
        self.last_metrics[stage] = values
        # the values are already reduced over ranks (torchmetrics); sync_dist averages identical numbers
        self.log_dict({f"{stage}/{k}": float(v) for k, v in values.items()}, prog_bar=False, sync_dist=True)
        self.log(f"{stage}_loss", float(values["loss"]), prog_bar=True, logger=False, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test", self.test_metrics)

    def on_train_epoch_start(self) -> None:
        self._last_batch_time = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # a run resumed from its final checkpoint validates no more: it reports these
        checkpoint["last_metrics"] = {stage: {k: float(v) for k, v in values.items()}
                                      for stage, values in self.last_metrics.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.last_metrics = {stage: dict(values) for stage, values in (checkpoint.get("last_metrics") or {}).items()}


class NextTokenLM(_Pretraining):
    """Lightning shell of next-token pretraining (see the module docstring).

    Args:
        model: a causal LM, ``model(input_ids (B, L)) -> logits (B, L, V)``.
        optim: optimizer and schedule settings.
        total_steps: optimizer steps of the whole run (length of the cosine schedule).
        loss_fn: ``loss_fn(logits, targets, loss_weight) -> LMLoss``.
        region_classes: names of the region class ids in the batches' ``regions``.
        seed: base of the per-micro-batch dropout seeds.
        activation_checkpointing: see :func:`checkpoint_blocks`.
        compile: compile the model in place with ``torch.compile``.

    Batches: ``input_ids``, ``targets``, ``regions`` (B, L) int64 and ``loss_weight`` (B, L) float32.
    """

    def __init__(self, model: nn.Module, optim: OptimConfig, total_steps: int, loss_fn: LossFn = lm_loss,
                 region_classes: Sequence[str] = REGION_CLASSES, seed: int = 0,
                 activation_checkpointing: bool = False, compile: bool = False):
        super().__init__(model, optim, total_steps, seed, activation_checkpointing, compile)
        self.loss_fn = loss_fn
        self.val_metrics = NextTokenMetrics(region_classes)
        self.test_metrics = NextTokenMetrics(region_classes)

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.model(input_ids)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits = self.model(batch["input_ids"])
        out = self.loss_fn(logits, batch["targets"], batch.get("loss_weight"))
        log = {"train/loss": out.loss.detach(), "train/acc": out.accuracy, "train/bits_per_base": out.bits_per_base,
               "train/ppl": out.perplexity}
        self._log_train(log, out.loss, batch["input_ids"].numel(), batch["input_ids"].shape[0])
        return out.loss

    def _eval_step(self, metrics: NextTokenMetrics, batch: dict[str, Tensor], batch_idx: int) -> None:
        logits = self.model(batch["input_ids"])
        metrics.update(self.loss_fn(logits, batch["targets"], batch.get("loss_weight")), batch.get("regions"))


class MaskedLM(_Pretraining):
    """Lightning shell of masked-LM pretraining (BERT's objective; DNABERT-2's and Caduceus's training).

    Args:
        model: a masked LM, ``model(input_ids (B, T), attention_mask (B, T)) -> logits (B, T, V)``.
        optim, total_steps, seed, activation_checkpointing, compile: as :class:`NextTokenLM`.
        alphabet: the vocabulary's :class:`~dnalm.models.family.Alphabet` (its ``[MASK]`` and specials).
        mask_rate: the share of tokens picked; of those 80 % become ``[MASK]``, 10 % a random token,
            10 % stay (:func:`dnalm.models.dnabert2.mlm_mask`).
        token_bases: ``(V,)`` bases of each token id (for ``bits_per_masked_base``), or None.

    Batches: ``input_ids``, ``attention_mask`` (B, T) int64 and ``padding`` (B,) bool (rows not scored).
    Training masks are drawn from the per-micro-batch seed; evaluation masks from a generator seeded with
    ``(seed, batch index, rank)``, so every validation scores the same masked tokens.
    Logged: ``train/loss``, ``train/acc`` (masked tokens), ``train/ppl``, ``train/lr``, ``train/tokens_per_s``;
    per evaluation epoch ``val/loss``, ``val/acc``, ``val/ppl`` and ``val/bits_per_masked_base``
    (:class:`~dnalm.training.losses.MaskedLMMetrics`; not comparable to a causal model's bits/base).
    """

    EVAL_STREAM = 2**31  # the "epoch" key of evaluation mask seeds, apart from every training epoch

    def __init__(self, model: nn.Module, optim: OptimConfig, total_steps: int, alphabet: Any,
                 mask_rate: float = 0.15, token_bases: Tensor | np.ndarray | None = None, seed: int = 0,
                 activation_checkpointing: bool = False, compile: bool = False):
        super().__init__(model, optim, total_steps, seed, activation_checkpointing, compile)
        if not 0.0 < mask_rate < 1.0:
            raise ConfigError(f"mask_rate must be in (0, 1), got {mask_rate}")
        if getattr(alphabet, "mask", None) is None:
            raise ConfigError("masked-LM training needs a vocabulary with a [MASK] token")
        self.alphabet, self.mask_rate = alphabet, float(mask_rate)
        bases = None if token_bases is None else torch.as_tensor(np.asarray(token_bases), dtype=torch.float32)
        self.register_buffer("token_bases", bases, persistent=False)
        self.val_metrics = MaskedLMMetrics()
        self.test_metrics = MaskedLMMetrics()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.model(input_ids, attention_mask)

    def _masked(self, batch: dict[str, Tensor], generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        from dnalm.models.dnabert2 import mlm_mask

        mask = batch["attention_mask"]
        if "padding" in batch:
            mask = mask * (~batch["padding"].to(mask.device))[:, None]
        return mlm_mask(batch["input_ids"], self.alphabet, self.mask_rate, generator=generator, attention_mask=mask)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        ids, labels = self._masked(batch, None)
        out = masked_lm_loss(self.model(ids, batch["attention_mask"]), labels)
        log = {"train/loss": out.loss.detach(), "train/acc": out.accuracy, "train/ppl": out.perplexity}
        self._log_train(log, out.loss, int(batch["attention_mask"].sum()), ids.shape[0])
        return out.loss

    def _eval_step(self, metrics: MaskedLMMetrics, batch: dict[str, Tensor], batch_idx: int) -> None:
        generator = torch.Generator(device="cpu")
        generator.manual_seed(step_seed(self.seed, self.EVAL_STREAM, batch_idx, self.global_rank))
        ids, labels = self._masked(batch, generator)
        out = masked_lm_loss(self.model(ids, batch["attention_mask"]), labels)
        bases = None if self.token_bases is None else self.token_bases[batch["input_ids"]]
        metrics.update(out, bases)


class SeqLenWarmup(L.Callback):
    """Sequence-length warm-up: switch window length, batch size and accumulation at stage boundaries.

    ``plans`` come from :func:`dnalm.training.schedules.plan_stages`. The Trainer needs
    ``reload_dataloaders_every_n_epochs=1`` and a datamodule with ``set_length(length, batch_size)``
    and a ``config`` holding ``samples_per_epoch`` (:class:`~dnalm.data.datamodule.GenomeDataModule`).
    The epoch reached is part of the callback's checkpointed state, so a resumed run picks up its stage.
    """

    def __init__(self, plans: Sequence[StagePlan]):
        self.plans = list(plans)
        self.epoch = 0

    def current(self) -> StagePlan:
        return stage_at(self.plans, self.epoch)

    def _apply_data(self, trainer: L.Trainer, plan: StagePlan) -> None:
        dm = trainer.datamodule
        c = dm.config
        if (c.length, c.batch_size, c.samples_per_epoch) != (plan.length, plan.batch_size, plan.samples_per_epoch):
            dm.config = replace(c, samples_per_epoch=plan.samples_per_epoch)
            dm.set_length(plan.length, plan.batch_size)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        plan = self.current()
        self._apply_data(trainer, plan)
        trainer.accumulate_grad_batches = plan.accumulate

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch = trainer.current_epoch
        trainer.accumulate_grad_batches = self.current().accumulate

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch = trainer.current_epoch + 1
        self._apply_data(trainer, self.current())

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epoch = int(state_dict.get("epoch", 0))


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSV logger writing ``<save_dir>/metrics.csv``, continuing an existing file.

    Lightning's own writer deletes ``metrics.csv`` whenever its directory is not empty and appends
    in place; this one keeps the rows already there (a resumed run adds to them; :func:`truncate_metrics`
    first drops the rows logged after the checkpoint the run resumes from) and replaces the file
    atomically on each save.
    """

    def __init__(self, save_dir: str | os.PathLike):
        super().__init__(save_dir=str(save_dir), name="", version="")

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class _AppendingWriter(ExperimentWriter):
    """Keeps an existing ``metrics.csv`` and rewrites it atomically on every save, so that a run killed
    while logging never leaves a truncated file."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))

    def save(self) -> None:
        if not self.metrics:
            return
        self._record_new_keys()
        path = Path(self.metrics_file_path)
        old: list[dict[str, str]] = []
        if path.is_file():
            with open(path, newline="") as f:
                old = list(csv.DictReader(f))
        with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(old)
            writer.writerows(self.metrics)
        self.metrics = []


def truncate_metrics(path: str | os.PathLike, step: int) -> int:
    """Drop the rows of a ``metrics.csv`` whose ``step`` is ``step`` or later; returns the rows dropped.

    A run resumed at global step ``step`` logs those steps again.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        rows = list(reader)
    keep = [r for r in rows if not r.get("step") or int(float(r["step"])) < step]
    if len(keep) != len(rows):
        with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(keep)
    return len(rows) - len(keep)
