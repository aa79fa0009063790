"""What a fine-tuning recipe works out around ``fit``: class balance, ``optim.lr=auto``, the collapse watch.

* :func:`class_balance`: the training split's class counts and prior, the loss weights of
  ``task.class_weights``, and the constant-prediction loss under ``task.sampling``
  (:mod:`dnalm.training.imbalance`), printed as one line and kept for ``metrics.json``;
* :func:`auto_lr`: the learning-rate range test of :mod:`dnalm.training.lr_range` on the training split,
  with the recipe's optimizer groups, printed as one line;
* :class:`~dnalm.training.collapse.CollapseMonitor` (built by :func:`collapse_monitor`): the warning
  when the classifier predicts the prior.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dnalm.errors import ConfigError
from dnalm.training.collapse import CollapseMonitor
from dnalm.training.imbalance import SAMPLINGS, class_counts, class_weights, constant_loss, entropy
from dnalm.training.lr_range import RangeTest, lr_range_test


@dataclass
class ClassBalance:
    """Class counts ``(C,)``, prior ``(C,)``, loss weights ``(C,)`` or None, the class-prior entropy and the
    constant-prediction loss of the training objective (nats)."""

    classes: list[str]
    counts: np.ndarray
    prior: np.ndarray
    weights: np.ndarray | None
    sampling: str
    prior_entropy: float
    baseline: float

    def summary(self) -> dict[str, Any]:
        """JSON-able description (``metrics.json``: ``class_prior``)."""
        return {"classes": self.classes, "counts": self.counts.tolist(), "prior": self.prior.round(6).tolist(),
                "majority_rate": float(self.prior.max()), "entropy_nats": self.prior_entropy,
                "class_weights": None if self.weights is None else self.weights.round(6).tolist(),
                "sampling": self.sampling, "constant_prediction_loss": self.baseline}

    def line(self) -> str:
        shown = ", ".join(f"{c} {p:.3f}" for c, p in zip(self.classes, self.prior))
        text = f"finetune: class prior {shown} (n={int(self.counts.sum()):,}, entropy {self.prior_entropy:.4f} nats)"
        if self.weights is not None:
            text += "; class weights " + ", ".join(f"{w:.3g}" for w in self.weights)
        if self.sampling != "natural":
            text += f"; {self.sampling} sampling"
        return text


def class_balance(labels: np.ndarray, classes: list[str] | None, weights_spec: Any, sampling: str) -> ClassBalance:
    """:class:`ClassBalance` of the training ``labels`` ``(N,)`` under ``task.class_weights`` / ``task.sampling``."""
    if sampling not in SAMPLINGS:
        raise ConfigError(f"task.sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
    n_classes = len(classes) if classes is not None else int(np.max(labels)) + 1
    names = list(classes) if classes is not None else [str(c) for c in range(n_classes)]
    counts = class_counts(labels, n_classes)
    prior = counts / max(1, counts.sum())
    weights = class_weights(weights_spec, counts)
    return ClassBalance(names, counts, prior, weights, sampling, entropy(prior),
                        constant_loss(prior, weights, sampling))


def collapse_monitor(balance: ClassBalance, dev_labels: np.ndarray | None) -> CollapseMonitor:
    """The collapse watch of a classification run (its baseline: ``balance.baseline``)."""
    return CollapseMonitor(balance.baseline, dev_labels)


def _autocast_dtype(precision: str) -> torch.dtype | None:
    return torch.bfloat16 if str(precision).startswith("bf16") else None


def auto_lr(model: nn.Module, batches: Callable[[], Any], build_optimizer: Callable[[nn.Module], Any],
            device: torch.device | str, precision: str = "32-true", grad_clip: float | None = None,
            class_weights_: np.ndarray | None = None, steps: int = 80, lr_start: float = 1e-5,
            lr_end: float = 1.0) -> RangeTest:
    """``optim.lr=auto``: the range test on training batches (``batches()``), with the classifier's training loss
    (weighted like training when ``class_weights_`` is given); prints the chosen rate on stderr."""
    weight = None if class_weights_ is None else torch.as_tensor(class_weights_, dtype=torch.float32)

    def loss_fn(m: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = m(batch["input_ids"], batch.get("attention_mask"))
        if weight is not None:
            return nn.functional.cross_entropy(out.float(), batch["labels"].long(), weight=weight.to(out.device))
        return m.loss(out, batch["labels"])

    result = lr_range_test(model, loss_fn, batches, build_optimizer, lr_start=lr_start, lr_end=lr_end, steps=steps,
                           device=device, autocast_dtype=_autocast_dtype(precision), grad_clip=grad_clip,
                           desc="finetune: lr range test")
    div = "not reached" if result.lr_diverged is None else f"{result.lr_diverged:.3g}"
    print(f"finetune: optim.lr=auto -> {result.lr:.3g} (range test, {result.steps} steps from {lr_start:g} to "
          f"{lr_end:g}: lowest smoothed loss at {result.lr_min_loss:.3g}, steepest descent at "
          f"{result.lr_steepest:.3g}, divergence {div}; rule: {result.rule})", file=sys.stderr, flush=True)
    return result
