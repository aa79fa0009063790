"""Detect a classifier that learned nothing ("collapse") and say so loudly.

A classifier whose training diverged or never started predicts the class prior whatever the input:
its training loss sits at the loss of the best constant prediction
(:func:`dnalm.training.imbalance.constant_loss`, the class-prior entropy ``H(p)`` for unweighted,
natural sampling: ln 2 = 0.693 for two balanced classes) and its dev metrics at chance. After every
epoch :class:`CollapseMonitor` applies two rules:

* **training loss**: the mean training loss of the epoch is not below ``(1 - TRAIN_MARGIN) * H``
  (2% under the constant-prediction loss, 0.679 for ``H = ln 2``);
* **dev at chance**: dev MCC ``< 2 / sqrt(n)`` (two null standard errors: the MCC of an uninformative
  classifier has standard error about ``1 / sqrt(n)`` on ``n`` examples) *and* dev accuracy
  ``< m + 2 sqrt(m (1 - m) / n)`` with ``m`` the dev majority-class rate (the accuracy of always
  answering the majority class, plus two binomial standard errors).

Either rule holding is a collapse at that epoch. The warning is given once (one line on stderr and
an entry in :attr:`CollapseMonitor.warnings`, written to ``metrics.json`` by the recipe): at the
third of ``PATIENCE`` = 3 consecutive collapsed epochs (a learnable task often spends its first one
or two epochs, partly in warm-up, at the prior: measured in ``benchmarks/RESULTS.md``), or at the end
of fitting when the last epoch collapsed. The entry lists every epoch that met
a rule and whether the last one did.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import lightning as L
import numpy as np

TRAIN_MARGIN = 0.02
PATIENCE = 3
NULL_SE = 2.0
ADVICE = ("try optim.lr=auto (a learning-rate range test), a smaller optim.lr with optim.warmup_fraction=0.1, "
          "or a search: dnalm tune search=finetune")


def dev_at_chance(mcc: float, accuracy: float, majority: float, n: int) -> bool:
    """The dev rule of the module docstring (NaN MCC, as for constant predictions, counts as 0)."""
    if n < 1:
        return False
    mcc = 0.0 if mcc is None or math.isnan(mcc) else mcc
    return mcc < NULL_SE / math.sqrt(n) and accuracy < majority + NULL_SE * math.sqrt(majority * (1 - majority) / n)


def train_at_prior(train_loss: float, baseline: float) -> bool:
    """The training-loss rule of the module docstring (a NaN loss counts as collapse)."""
    return math.isnan(train_loss) or train_loss >= (1.0 - TRAIN_MARGIN) * baseline


class CollapseMonitor(L.Callback):
    """Checks every epoch of a classification fine-tuning run against the rules of the module docstring.

    ``baseline``: the constant-prediction training loss (nats); ``dev_labels``: the dev split's class
    ids (None without a dev split). ``epochs``: per epoch, the figures and which rules held;
    ``warnings``: at most one ``{"kind": "collapse", ...}`` entry.
    """

    def __init__(self, baseline: float, dev_labels: np.ndarray | None = None, stream: Any = None):
        self.baseline = float(baseline)
        if dev_labels is not None and len(dev_labels):
            counts = np.bincount(np.asarray(dev_labels, dtype=np.int64))
            self.dev_majority, self.dev_n = float(counts.max() / counts.sum()), int(counts.sum())
        else:
            self.dev_majority, self.dev_n = None, 0
        self.stream = stream
        self.epochs: list[dict[str, Any]] = []
        self.warnings: list[dict[str, Any]] = []
        self._sum, self._count, self._checked_epoch = 0.0, 0, -1

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sum, self._count = 0.0, 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            self._sum += float(loss.detach())
            self._count += 1

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self._count == 0:
            return
        dev = getattr(pl_module, "last_metrics", {}).get("val")
        self._check(trainer, dev)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._checked_epoch < trainer.current_epoch and self._count:
            self._check(trainer, None)  # no validation this epoch

    def _check(self, trainer: L.Trainer, dev: dict[str, float] | None) -> None:
        epoch = trainer.current_epoch
        train_loss = self._sum / self._count
        record: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss, "baseline": self.baseline,
                                  "train_at_prior": train_at_prior(train_loss, self.baseline)}
        if dev is not None and self.dev_majority is not None:
            record.update(dev_mcc=dev.get("mcc"), dev_accuracy=dev.get("accuracy"), dev_majority=self.dev_majority,
                          dev_at_chance=dev_at_chance(dev.get("mcc", math.nan), dev.get("accuracy", 0.0),
                                                      self.dev_majority, int(dev.get("n", self.dev_n))))
        record["collapse"] = bool(record["train_at_prior"] or record.get("dev_at_chance", False))
        self._checked_epoch = epoch
        self.epochs.append(record)
        recent = self.epochs[-PATIENCE:]
        if not self.warnings and len(recent) == PATIENCE and all(r["collapse"] for r in recent):
            self._warn(record, trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.warnings and self.epochs and self.epochs[-1]["collapse"]:
            self._warn(self.epochs[-1], trainer)
        if self.warnings:
            self.warnings[0]["epochs"] = [r["epoch"] for r in self.epochs if r["collapse"]]
            self.warnings[0]["last_epoch"] = bool(self.epochs[-1]["collapse"])

    def _warn(self, record: dict[str, Any], trainer: L.Trainer) -> None:
        text = message(record)
        self.warnings.append({"kind": "collapse", **record, "message": text})
        if trainer.is_global_zero:
            print(text, file=self.stream or sys.stderr, flush=True)


def message(record: dict[str, Any]) -> str:
    """The one-line warning of a collapsed epoch ``record`` (see :class:`CollapseMonitor`)."""
    parts = [f"training loss {record['train_loss']:.4f}"
             + (" has not gone below" if record["train_at_prior"] else " is below")
             + f" the constant-prediction loss {record['baseline']:.4f} by {TRAIN_MARGIN:.0%}"]
    if "dev_at_chance" in record:
        mcc = record["dev_mcc"] if record["dev_mcc"] is not None else math.nan
        parts.append(f"dev MCC {mcc:.3f}, accuracy {record['dev_accuracy']:.3f} "
                     f"(majority class {record['dev_majority']:.3f})"
                     + (" at chance" if record["dev_at_chance"] else ""))
    return (f"dnalm: WARNING: collapse at epoch {record['epoch']}: the classifier predicts the class prior: "
            + "; ".join(parts) + f"; {ADVICE}")
