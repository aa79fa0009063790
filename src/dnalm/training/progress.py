"""Training progress a person can read: a bar on a terminal, a line every few seconds in a log file.

On a terminal (stderr is a TTY) the Trainer gets Lightning's bar with an honest title: Lightning writes
``Epoch 0/-2`` when a run is bounded by steps (``max_epochs=-1``); :class:`EpochBar` writes ``Epoch 0`` and
the step budget. When stderr goes to a file (``dnalm train ... 2> train.log``, a batch job), a bar is
useless, so :class:`ProgressLog` writes one line every ``every`` seconds instead::

    train: step 1,200/10,000 (12.0%), epoch 0, 4.12 steps/s, loss 1.934, elapsed 0:04:51, ETA 0:35:35

(the ETA is the smaller of the steps left at the current rate and what remains of ``trainer.max_time``),
and one line after each validation with its loss. :func:`progress_callbacks` picks one of them.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

from dnalm.utils import format_seconds, progress_every


def _title(trainer: L.Trainer, epoch: int) -> str:
    text = f"Epoch {epoch}"
    if trainer.max_epochs is not None and trainer.max_epochs > 0:
        text += f"/{trainer.max_epochs - 1}"
    if trainer.max_steps and trainer.max_steps > 0:
        text += f" ({trainer.max_steps:,} steps)"
    return text


class EpochBar(RichProgressBar):
    """Lightning's rich bar, titled ``Epoch 3/9`` or, for a run bounded by steps, ``Epoch 0 (1,000 steps)``."""

    def _get_train_description(self, current_epoch: int) -> str:
        text = _title(self.trainer, current_epoch)
        return f"{text:{len(self.validation_description)}}" if len(self.validation_description) > len(text) \
            else text


class EpochTQDMBar(TQDMProgressBar):
    """Lightning's tqdm bar (when rich is missing), titled as :class:`EpochBar`."""

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(_title(trainer, trainer.current_epoch))


def _time_left(trainer: L.Trainer) -> float | None:
    from lightning.pytorch.callbacks import Timer

    for callback in trainer.callbacks:
        if isinstance(callback, Timer):
            return callback.time_remaining("train")
    return None


def _number(value: Any) -> str:
    value = float(value)
    return f"{value:.4g}"


class ProgressLog(ProgressBar):
    """One line of progress every ``every`` seconds (and after each validation) on stderr; see the module doc."""

    def __init__(self, every: float = 30.0, name: str = "train"):
        super().__init__()
        self.every, self.name = float(every), name
        self._enabled = True
        self._start = self._last = 0.0
        self._first_step = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _write(self, text: str) -> None:
        if self._enabled and self.trainer.is_global_zero:
            print(f"{self.name}: {text}", file=sys.stderr, flush=True)

    def total_steps(self) -> int | None:
        trainer = self.trainer
        if trainer.max_steps and trainer.max_steps > 0:
            return int(trainer.max_steps)
        try:
            total = trainer.estimated_stepping_batches
        except Exception:  # noqa: BLE001 - unknown before the loaders exist; then no total
            return None
        return int(total) if total != float("inf") else None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last = time.monotonic()
        self._first_step = trainer.global_step

    def line(self, trainer: L.Trainer, pl_module: L.LightningModule) -> str:
        """The progress line of the current step."""
        step, total = trainer.global_step, self.total_steps()
        elapsed = time.monotonic() - self._start
        rate = (step - self._first_step) / elapsed if elapsed > 0 else 0.0
        parts = [f"step {step:,}/{total:,} ({100 * step / total:.1f}%)" if total else f"step {step:,}",
                 f"epoch {trainer.current_epoch}", f"{rate:.3g} steps/s"]
        metrics = self.get_metrics(trainer, pl_module)
        parts += [f"{k} {_number(v)}" for k, v in metrics.items() if k != "v_num" and isinstance(v, (int, float))]
        parts.append(f"elapsed {format_seconds(elapsed)}")
        left = [(total - step) / rate] if total and rate > 0 else []
        remaining = _time_left(trainer)
        if remaining is not None:
            left.append(remaining)
        if left:
            parts.append(f"ETA {format_seconds(min(left))}")
        return ", ".join(parts)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self._write(self.line(trainer, pl_module))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        shown = {k: v for k, v in trainer.callback_metrics.items()
                 if k.startswith("val/") and k.count("/") == 1 and getattr(v, "numel", lambda: 1)() == 1}
        if shown:
            self._write(f"validation at step {trainer.global_step:,}: "
                        + ", ".join(f"{k} {_number(v)}" for k, v in sorted(shown.items())))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(self.line(trainer, pl_module) + " (done)")


def progress_callbacks(enabled: bool, every: float | None = None, name: str = "train") -> list[ProgressBar]:
    """The progress callback for a Trainer: none when ``enabled`` is false (pass ``enable_progress_bar=False``),
    a bar when stderr is a terminal, else :class:`ProgressLog` every ``every`` seconds (default
    :func:`dnalm.utils.progress_every`)."""
    if not enabled:
        return []
    if sys.stderr.isatty():
        return [EpochBar() if _RICH_AVAILABLE else EpochTQDMBar()]
    return [ProgressLog(progress_every() if every is None else every, name)]
