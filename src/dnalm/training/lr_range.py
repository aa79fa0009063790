"""Learning-rate range test (``optim.lr=auto``): pick a fine-tuning learning rate from a short probe run.

The probe (Smith 2017, "Cyclical Learning Rates for Training Neural Networks", section 3.3) trains
a copy of the model's weights for ``steps`` optimizer steps on training batches while the learning
rate grows exponentially from ``lr_start`` to ``lr_end``, ``lr_k = lr_start (lr_end / lr_start)^(k / (steps - 1))``,
with the recipe's own optimizer (parameter groups keep their ratios to the base rate). The
per-step losses are smoothed by a bias-corrected exponential moving average (``SMOOTHING`` = 0.9).
The starting loss ``l0`` is the mean raw loss of the first ``START_FRACTION`` = 10% of the steps (at
least 3). The probe has *diverged* at the first step whose smoothed loss is not finite, exceeds
``(1 + RISE) l0`` (``RISE`` = 0.1: a classifier pushed too hard climbs above the loss it started from,
the class-prior entropy) or exceeds ``DIVERGENCE`` = 4 times its minimum so far; it stops there.
Afterwards the weights are restored exactly.

**Rule** (:func:`pick_lr`): ``lr = lr_div / 100`` (``lr_div``: the rate at divergence, ``lr_end`` when
none was reached), and when the loss fell clearly (its smoothed minimum before divergence is below
``(1 - DROP) l0``, ``DROP`` = 0.1), no more than ``lr_min / 10`` with ``lr_min`` the rate of that minimum;
kept within ``[lr_start, lr_end]``. In a few dozen steps a hard classification task barely moves
from ``l0``, so its minimum is noise and only the divergence point carries information; a task whose
loss does fall is read at a tenth of the rate of its lowest loss (Smith 2017's "where the loss still
falls"). The factor 100 is measured: with 30 the picks were 2 to 16 times the rate that did best (1e-3) on the
tasks of ``benchmarks/finetune_recipes.py`` (``benchmarks/RESULTS.md``).
Also reported: ``lr_steepest``, the rate of the steepest descent of the smoothed loss against
``log lr`` up to ``lr_min``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dnalm.errors import ConfigError
from dnalm.utils import track

SMOOTHING = 0.9
DIVERGENCE = 4.0
RISE = 0.1
DROP = 0.1
START_FRACTION = 0.1
DIV_FACTOR = 100.0
MIN_FACTOR = 10.0
RULE = ("lr = lr_div / 100 (lr_div: where the smoothed loss first exceeds 1.1 x the starting loss or 4 x its "
        "minimum; lr_end if never), at most lr_min / 10 when the loss fell by 10% (lr_min: rate of its minimum)")


@dataclass
class RangeTest:
    """Outcome of :func:`lr_range_test`: the chosen ``lr`` and the curve it was read from."""

    lr: float
    lr_min_loss: float
    lr_steepest: float
    lr_diverged: float | None
    steps: int
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    rule: str = RULE

    def summary(self) -> dict[str, Any]:
        """JSON-able description (for ``metrics.json``)."""
        return asdict(self)


def smooth(losses: Iterable[float], beta: float = SMOOTHING) -> list[float]:
    """Bias-corrected exponential moving average ``a_k / (1 - beta^(k+1))``, ``a_k = beta a_(k-1) + (1 - beta) x_k``."""
    out, avg = [], 0.0
    for k, x in enumerate(losses):
        avg = beta * avg + (1.0 - beta) * x
        out.append(avg / (1.0 - beta ** (k + 1)))
    return out


def start_loss(losses: list[float]) -> float:
    """Mean of the first ``START_FRACTION`` of ``losses`` (at least 3 of them)."""
    k = max(3, int(round(START_FRACTION * len(losses))))
    head = [x for x in losses[:k] if math.isfinite(x)]
    return float(np.mean(head)) if head else math.inf


def diverged_at(smoothed: list[float], start: float) -> int | None:
    """Index of the first smoothed loss that is not finite, above ``(1 + RISE) start`` or above ``DIVERGENCE`` x
    the minimum so far (None: none)."""
    best = math.inf
    for k, value in enumerate(smoothed):
        if not math.isfinite(value) or value > (1.0 + RISE) * start or (k > 0 and value > DIVERGENCE * best):
            return k
        best = min(best, value)
    return None


def pick_lr(lrs: list[float], losses: list[float], lr_start: float | None = None,
            lr_end: float | None = None) -> tuple[float, float, float, float | None]:
    """``(lr, lr_min_loss, lr_steepest, lr_diverged)`` from the raw per-step ``losses`` at rates ``lrs`` by the
    rule of the module docstring."""
    if len(lrs) != len(losses) or not lrs:
        raise ValueError(f"pick_lr needs as many losses as rates, got {len(losses)} and {len(lrs)}")
    smoothed = smooth(losses)
    start = start_loss(losses)
    stop = diverged_at(smoothed, start)
    n = len(lrs) if stop is None else max(1, stop)
    values = np.asarray(smoothed[:n], dtype=np.float64)
    i_min = int(np.nanargmin(values)) if np.isfinite(values).any() else 0
    if i_min >= 1:
        slopes = np.gradient(values[: i_min + 1], np.log10(np.asarray(lrs[: i_min + 1], dtype=np.float64)))
        i_steep = int(np.argmin(slopes))
    else:
        i_steep = 0
    lo = lrs[0] if lr_start is None else lr_start
    hi = lrs[-1] if lr_end is None else lr_end
    lr = (hi if stop is None else lrs[stop]) / DIV_FACTOR
    if values[i_min] < (1.0 - DROP) * start:
        lr = min(lr, lrs[i_min] / MIN_FACTOR)
    lr = float(min(max(lr, lo), hi))
    return lr, float(lrs[i_min]), float(lrs[i_steep]), None if stop is None else float(lrs[stop])


def _cycle(batches: Callable[[], Iterable[dict[str, Tensor]]]) -> Iterator[dict[str, Tensor]]:
    while True:
        empty = True
        for batch in batches():
            empty = False
            yield batch
        if empty:
            raise ConfigError("learning-rate range test: the training split gives no batch")


def lr_range_test(model: nn.Module, loss_fn: Callable[[nn.Module, dict[str, Tensor]], Tensor],
                  batches: Callable[[], Iterable[dict[str, Tensor]]],
                  build_optimizer: Callable[[nn.Module], torch.optim.Optimizer], lr_start: float = 1e-5,
                  lr_end: float = 1.0, steps: int = 80, device: str | torch.device = "cpu",
                  autocast_dtype: torch.dtype | None = None, grad_clip: float | None = None,
                  desc: str = "lr range test") -> RangeTest:
    """Run the probe of the module docstring and return its :class:`RangeTest`; ``model``'s weights, its
    train/eval mode and device are the same afterwards.

    ``batches()``: an iterable of training batches (called again when it runs out); ``loss_fn(model, batch)``:
    the training loss of a batch already on ``device``; ``build_optimizer(model)``: the recipe's optimizer
    with base learning rate 1 (each group's ``lr`` is its ratio to the base rate).
    """
    if not 0 < lr_start < lr_end:
        raise ConfigError(f"learning-rate range test needs 0 < lr_start < lr_end, got {lr_start}, {lr_end}")
    if steps < 2:
        raise ConfigError(f"learning-rate range test needs at least 2 steps, got {steps}")
    first = next(iter(model.parameters()))
    home, was_training = first.device, model.training
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    device = torch.device(device)
    model.to(device).train()
    optimizer = build_optimizer(model)
    ratios = [float(g["lr"]) for g in optimizer.param_groups]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    lrs = [float(lr_start * (lr_end / lr_start) ** (k / (steps - 1))) for k in range(steps)]
    seen_lrs: list[float] = []
    losses: list[float] = []
    stream = _cycle(batches)
    try:
        for k in track(range(steps), total=steps, desc=desc, unit="step"):
            for group, ratio in zip(optimizer.param_groups, ratios):
                group["lr"] = ratio * lrs[k]
            batch = {key: v.to(device) if isinstance(v, Tensor) else v for key, v in next(stream).items()}
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                loss = loss_fn(model, batch)
            value = float(loss.detach())
            seen_lrs.append(lrs[k])
            losses.append(value)
            if len(losses) > 3 and diverged_at(smooth(losses), start_loss(losses)) is not None:
                break
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
    finally:
        model.load_state_dict(saved)
        model.to(home).train(was_training)
        optimizer.zero_grad(set_to_none=True)
    lr, lr_min, lr_steep, lr_div = pick_lr(seen_lrs, losses, lr_start, lr_end)
    return RangeTest(lr, lr_min, lr_steep, lr_div, len(losses), seen_lrs, losses, smooth(losses))
