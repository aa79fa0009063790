"""Learning-rate schedule and sequence-length warm-up stages of pretraining.

Learning rate of optimizer step ``s = 0, 1, ...`` (the lr that step ``s`` uses) with base rate
``lr``, ``W`` warm-up steps, ``T`` total steps and floor ``r = min_lr_ratio``::

    lr_s = lr * (s + 1) / W                                   s < W     (linear warm-up)
    lr_s = lr * (r + (1 - r) * (1 + cos(pi * t)) / 2),        t = min(1, (s - W) / max(1, T - W))

or, with ``decay="linear"``, ``lr_s = lr * (r + (1 - r) * (1 - t))`` (the Hugging Face Trainer's default
decay, DNABERT-2's recipe), or, with ``decay="constant"``, ``lr_s = lr`` after the warm-up (linear warm-up,
Goyal et al. 2017; cosine decay, Loshchilov & Hutter 2017, "SGDR"), applied per optimizer step; HyenaDNA decays to
``0.1 * lr`` (``shared/reference/hyenadna.md`` §9). The warm-up may be given as a fraction of the
run's steps (:func:`warmup_steps_of`).

A run limited by wall-clock time (``trainer.max_time``) rather than steps does not know ``T`` in
advance: with ``optim.horizon=time`` the decay follows ``t = max(t_steps, elapsed / max_time)``, so
the rate reaches its floor at whichever of the two budgets runs out first (the elapsed training
time is Lightning's ``Timer``'s, which a resumed run carries over).

Sequence-length warm-up (Nguyen et al. 2023, "HyenaDNA", section 3.2; the repository's
``hg38_hyena_seqlen_warmup_reload.yaml``: 1k/bs256 -> 2k/128 -> 4k/64 -> 8k/32 -> 16k/16 -> 32k/8 with a
global batch of 256): training runs through :class:`Stage` s of growing window length and shrinking
per-device batch, each for some epochs or steps. The global batch stays fixed by gradient
accumulation, ``accumulate = global_batch_size // (batch_size * world_size)``. :func:`plan_stages`
lays the stages out on the epoch axis: a stage given in ``epochs`` covers that many epochs of the
data's usual size; a stage given in ``steps`` is one epoch of exactly that many optimizer steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dnalm.errors import ConfigError

DECAYS = ("cosine", "linear", "constant")


def warmup_cosine(step: int, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0,
                  progress: float = 0.0, decay: str = "cosine") -> float:
    """The factor ``lr_s / lr`` of optimizer step ``step`` (see the module docstring).

    ``progress``: a floor on the decay's progress ``t`` in [0, 1] (the fraction of a time budget spent).
    ``decay``: ``cosine``, ``linear`` or ``constant`` (no decay after the warm-up).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "constant":
        return 1.0
    t = min(1.0, max(0.0, (step - warmup_steps) / max(1, total_steps - warmup_steps), progress))
    if decay == "linear":
        return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - t)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def warmup_steps_of(total_steps: int, warmup_steps: int = 0, warmup_fraction: float | None = None) -> int:
    """Warm-up length in optimizer steps: ``warmup_steps`` when > 0, else ``round(warmup_fraction * total_steps)``
    (0 without either)."""
    if warmup_steps > 0 or not warmup_fraction:
        return max(0, warmup_steps)
    if not 0.0 <= warmup_fraction < 1.0:
        raise ConfigError(f"optim.warmup_fraction must be in [0, 1), got {warmup_fraction}")
    return int(round(warmup_fraction * total_steps))


def warmup_cosine_scheduler(optimizer, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0,
                            time_fraction: Callable[[], float] | None = None, decay: str = "cosine"):
    """A per-step ``LambdaLR`` following :func:`warmup_cosine` (every group keeps its own base lr).

    ``time_fraction``: called at every step, the fraction of the time budget spent (``horizon=time``).
    """
    import torch

    if total_steps < 1:
        raise ConfigError(f"the lr schedule needs at least one step, got total_steps={total_steps}")
    if warmup_steps < 0:
        raise ConfigError(f"optim.warmup_steps must be >= 0, got {warmup_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ConfigError(f"optim.min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    if decay not in DECAYS:
        raise ConfigError(f"optim.decay must be one of {', '.join(DECAYS)}, got {decay!r}")

    def factor(step: int) -> float:
        progress = float(time_fraction()) if time_fraction is not None else 0.0
        return warmup_cosine(step, total_steps, warmup_steps, min_lr_ratio, progress, decay)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class Stage:
    """One stage of sequence-length warm-up: windows of ``length`` in batches of ``batch_size`` per
    device, for ``epochs`` epochs or ``steps`` optimizer steps (exactly one of the two)."""

    length: int
    batch_size: int
    epochs: int | None = None
    steps: int | None = None


@dataclass(frozen=True)
class StagePlan:
    """A stage placed on the epoch axis: epochs ``first_epoch .. first_epoch + n_epochs - 1``.

    ``samples_per_epoch``: training windows per epoch (all devices); ``steps_per_epoch``: optimizer steps
    per epoch; ``accumulate``: micro-batches per optimizer step.
    """

    index: int
    length: int
    batch_size: int
    accumulate: int
    first_epoch: int
    n_epochs: int
    samples_per_epoch: int
    steps_per_epoch: int

    @property
    def steps(self) -> int:
        return self.n_epochs * self.steps_per_epoch

    @property
    def end_epoch(self) -> int:
        return self.first_epoch + self.n_epochs


def accumulation(global_batch_size: int | None, batch_size: int, world_size: int) -> int:
    """Micro-batches per optimizer step so that ``batch_size * world_size * accumulate = global_batch_size``."""
    if global_batch_size is None:
        return 1
    per_step = batch_size * world_size
    if global_batch_size < per_step or global_batch_size % per_step:
        raise ConfigError(f"global_batch_size={global_batch_size} is not a multiple of batch_size {batch_size} x "
                          f"{world_size} device(s) = {per_step}")
    return global_batch_size // per_step


def steps_per_epoch(samples: int, batch_size: int, world_size: int, accumulate: int) -> int:
    """Optimizer steps of an epoch of ``samples`` windows: each device gets ``samples // batch_size //
    world_size`` full batches and steps every ``accumulate`` of them (and after the last one)."""
    batches = samples // batch_size // world_size
    return math.ceil(batches / accumulate)


def plan_stages(stages: Sequence[Stage], world_size: int, global_batch_size: int | None,
                default_samples: Callable[[int], int]) -> list[StagePlan]:
    """Place ``stages`` one after another on the epoch axis.

    ``default_samples(length)`` is the number of training windows of an epoch at that length (the
    data's ``samples_per_epoch``, or its default). Raises ConfigError on an inconsistent stage.
    """
    if not stages:
        raise ConfigError("sequence-length warm-up needs at least one stage")
    plans, epoch = [], 0
    for i, st in enumerate(stages):
        where = f"stages[{i}]"
        if st.length < 1 or st.batch_size < 1:
            raise ConfigError(f"{where}: length and batch_size must be >= 1, got {st.length}, {st.batch_size}")
        if (st.epochs is None) == (st.steps is None):
            raise ConfigError(f"{where}: give exactly one of epochs or steps")
        acc = accumulation(global_batch_size, st.batch_size, world_size)
        if st.steps is not None:
            if st.steps < 1:
                raise ConfigError(f"{where}: steps must be >= 1, got {st.steps}")
            samples, n_epochs = st.steps * acc * st.batch_size * world_size, 1
        else:
            if st.epochs < 1:
                raise ConfigError(f"{where}: epochs must be >= 1, got {st.epochs}")
            samples, n_epochs = int(default_samples(st.length)), st.epochs
        per_epoch = steps_per_epoch(samples, st.batch_size, world_size, acc)
        if per_epoch < 1:
            raise ConfigError(f"{where}: an epoch of {samples} windows gives no full batch of {st.batch_size} on "
                              f"each of {world_size} device(s)")
        plans.append(StagePlan(i, st.length, st.batch_size, acc, epoch, n_epochs, samples, per_epoch))
        epoch += n_epochs
    return plans


def stage_at(plans: Sequence[StagePlan], epoch: int) -> StagePlan:
    """The stage that epoch ``epoch`` belongs to (the last one past the end)."""
    for plan in plans:
        if epoch < plan.end_epoch:
            return plan
    return plans[-1]
