"""Fine-tuning on labeled sequences: a thin LightningModule, epoch-level metrics, parameter groups.

:class:`SequenceTaskModule` wraps a :class:`~dnalm.models.heads.SequenceClassifier` and its loss
(cross-entropy or MSE, :func:`dnalm.models.heads.head_loss`); it builds neither model nor data.
Validation and test metrics are computed once per epoch on all of the epoch's predictions (gathered
across ranks), not averaged over batches:

* classification (DNABERT-2's GUE metrics, Zhou et al. 2023), from
  :func:`dnalm.evaluate.metrics.classification_metrics`: ``accuracy``, ``macro_f1``, ``mcc``
  (Matthews correlation, multiclass form of Gorodkin 2004), ``auroc`` (one-vs-rest, macro; for two
  classes the AUROC of the positive class, ranked by the logit margin ``log p1 - log p0``, which
  orders like ``p1`` but does not saturate);
* regression: ``mse``, ``mae``, ``r2``, ``pearson``, ``spearman`` (averaged over outputs).

Logged names are ``<stage>/<metric>`` (``val/mcc``, ``test/auroc``, ``val/loss``, ``train/loss``).
:class:`BestWeights` keeps the weights of the best validation epoch in memory and puts them back
at the end of fitting, so that the test set is evaluated with the model selected on dev.

Rows flagged by the batch's ``padding`` (copies that even out distributed evaluation, see
:mod:`dnalm.data.datamodule`) are left out of losses and metrics.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
import torchmetrics.functional as TMF
from torch import Tensor, nn
from torchmetrics import CatMetric, MeanMetric

from dnalm.errors import ConfigError
from dnalm.evaluate.metrics import auroc, classification_metrics
from dnalm.models.heads import SequenceClassifier
from dnalm.training.optim import param_groups

OptimizerFactory = Callable[[nn.Module], Any]
"""``f(model) -> what LightningModule.configure_optimizers returns`` (an optimizer, or a dict with a scheduler)."""

#: Metric monitored by default and whether larger is better, per task.
DEFAULT_MONITOR: dict[str, tuple[str, str]] = {"classification": ("val/mcc", "max"), "regression": ("val/mse", "min")}


def regression_metrics(preds: Tensor, targets: Tensor) -> dict[str, float]:
    """MSE, MAE, R², Pearson and Spearman correlation of ``preds`` against ``targets``, both (N, K) or (N,).

    Correlations and R² are computed per output column and averaged.
    """
    preds = preds.float().reshape(preds.shape[0], -1)
    targets = targets.float().reshape(preds.shape)
    out = {"mse": float(TMF.mean_squared_error(preds, targets)), "mae": float(TMF.mean_absolute_error(preds, targets))}
    cols = range(preds.shape[1])
    if preds.shape[0] < 2:
        out.update(r2=math.nan, pearson=math.nan, spearman=math.nan)
        return out
    out["r2"] = sum(float(TMF.r2_score(preds[:, k], targets[:, k])) for k in cols) / preds.shape[1]
    out["pearson"] = sum(float(TMF.pearson_corrcoef(preds[:, k], targets[:, k])) for k in cols) / preds.shape[1]
    out["spearman"] = sum(float(TMF.spearman_corrcoef(preds[:, k], targets[:, k])) for k in cols) / preds.shape[1]
    return out


def both_strands(forward: Tensor, reverse: Tensor, task: str) -> Tensor:
    """Combine a model's outputs on a sequence and on its reverse complement.

    Classification: the mean of the two strands' class log-probabilities (a normalised geometric mean of
    the probabilities; returned as logits, so that softmax and cross-entropy apply unchanged); regression:
    the mean of the outputs. Scoring both strands of a model trained with reverse-complement augmentation
    is the "post-hoc conjoining" of Schiff et al. 2024 (Caduceus).
    """
    if task == "classification":
        return 0.5 * (forward.float().log_softmax(-1) + reverse.float().log_softmax(-1))
    return 0.5 * (forward + reverse)


def finetune_param_groups(model: SequenceClassifier, lr: float, weight_decay: float, head_lr: float | None = None,
                          filter_lr: float | None = None, filter_weight_decay: float = 0.0,
                          layer_decay: float = 1.0) -> list[dict[str, Any]]:
    """Optimizer groups of a classifier: :func:`~dnalm.training.optim.param_groups` of each part.

    The head gets ``head_lr`` (default ``lr``). With ``layer_decay`` < 1 (layer-wise learning-rate
    decay, Clark et al. 2020, "ELECTRA", appendix), block ``i`` (1..n) gets ``lr · decay^(n - i)``,
    the embedding (layer 0) ``lr · decay^n``, the final norm ``lr``. Implicit filters get ``filter_lr``
    (scaled alike) and ``filter_weight_decay``. Group names are ``<part>.<group>``.
    Frozen parameters (LoRA) are in no group.
    """
    if not 0.0 < layer_decay <= 1.0:
        raise ConfigError(f"layer_decay must be in (0, 1], got {layer_decay}")

    def scaled(part: str, module: nn.Module, scale: float) -> list[dict[str, Any]]:
        groups = param_groups(module, weight_decay, lr * scale, None if filter_lr is None else filter_lr * scale,
                              filter_weight_decay)
        return [{**g, "name": f"{part}.{g['name']}"} for g in groups]

    groups: list[dict[str, Any]] = []
    inner = getattr(model.backbone, "backbone", None)
    layers = getattr(inner, "layers", None)
    if layer_decay < 1.0 and layers is None:
        raise ConfigError(f"task.layer_decay={layer_decay} needs a backbone with embeddings and a list of blocks "
                          f"(backbone.layers); {type(model.backbone).__name__} has none: use layer_decay=1.0")
    if layer_decay < 1.0 and layers is not None:
        n = len(layers)
        groups += scaled("embeddings", inner.embeddings, layer_decay**n)
        for i, block in enumerate(layers):
            groups += scaled(f"layers.{i}", block, layer_decay ** (n - 1 - i))
        seen = {id(p) for g in groups for p in g["params"]}
        rest = nn.ParameterList([p for p in model.backbone.parameters() if id(p) not in seen])
        groups += scaled("backbone", rest, 1.0)
    else:
        groups += scaled("backbone", model.backbone, 1.0)
    head = param_groups(model.head, weight_decay, lr if head_lr is None else head_lr)
    groups += [{**g, "name": f"head.{g['name']}"} for g in head]
    return groups


class SequenceTaskModule(L.LightningModule):
    """Lightning shell around a :class:`SequenceClassifier` (see the module docstring).

    Batches: ``input_ids`` (B, T), ``attention_mask`` (B, T), ``labels`` (B,) and optionally ``padding`` (B,).
    Validation and test batches with ``rc_input_ids`` (and ``rc_attention_mask``) are scored on both
    strands (:func:`both_strands`).
    ``optimizer_factory(model)`` returns what ``configure_optimizers`` should return; the default is
    AdamW over :func:`finetune_param_groups` with lr 1e-3 and no weight decay.
    After each validation/test epoch the metrics are in ``self.last_metrics[stage]``.
    ``class_weights`` ``(C,)``: weights of the training cross-entropy (PyTorch's weighted mean,
    :func:`dnalm.training.imbalance.class_weights`); validation and test losses stay unweighted.
    """

    def __init__(self, model: SequenceClassifier, optimizer_factory: OptimizerFactory | None = None,
                 class_weights: Any = None):
        super().__init__()
        self.model = model
        self.task = model.task
        self.optimizer_factory = optimizer_factory
        weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)
        self.last_metrics: dict[str, dict[str, float]] = {}
        self._outputs = nn.ModuleDict({s: CatMetric() for s in ("val", "test")})
        self._targets = nn.ModuleDict({s: CatMetric() for s in ("val", "test")})
        self._losses = nn.ModuleDict({s: MeanMetric() for s in ("val", "test")})

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.model(input_ids, attention_mask)

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is not None:
            return self.optimizer_factory(self.model)
        return torch.optim.AdamW(finetune_param_groups(self.model, lr=1e-3, weight_decay=0.0))

    @staticmethod
    def _keep(batch: dict[str, Tensor]) -> Tensor | None:
        padding = batch.get("padding")
        return None if padding is None or not bool(padding.any()) else ~padding.bool()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self.model(batch["input_ids"], batch.get("attention_mask"))
        labels = batch["labels"]
        keep = self._keep(batch)
        if keep is not None:
            out, labels = out[keep], labels[keep]
        if self.class_weights is not None:
            loss = nn.functional.cross_entropy(out.float(), labels.long(), weight=self.class_weights)
        else:
            loss = self.model.loss(out, labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=labels.shape[0])
        return loss

    def _eval_step(self, stage: str, batch: dict[str, Tensor]) -> None:
        out = self.model(batch["input_ids"], batch.get("attention_mask"))
        if "rc_input_ids" in batch:
            out = both_strands(out, self.model(batch["rc_input_ids"], batch.get("rc_attention_mask")), self.task)
        labels = batch["labels"]
        keep = self._keep(batch)
        if keep is not None:
            out, labels = out[keep], labels[keep]
        if labels.shape[0] == 0:
            return
        loss = self.model.loss(out, labels)
        self._losses[stage].update(loss.detach(), weight=labels.shape[0])
        value = out.float().log_softmax(-1) if self.task == "classification" else out.float()
        self._outputs[stage].update(value.detach())
        self._targets[stage].update(labels.detach())

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _eval_epoch_end(self, stage: str) -> None:
        if self._losses[stage].update_count == 0:
            return
        outputs, targets = self._outputs[stage].compute(), self._targets[stage].compute()
        if self.task == "classification":
            logp, y = outputs.cpu().double(), targets.cpu().numpy()
            metrics = classification_metrics(y, logp.exp().numpy(), np.arange(logp.shape[1]))
            if logp.shape[1] == 2:
                # rank by log p1 - log p0 (the logit margin): probabilities saturate at 1.0 in float32
                metrics["auroc"] = auroc(y, (logp[:, 1] - logp[:, 0]).numpy())
        else:
            metrics = regression_metrics(outputs, targets)
        metrics["loss"] = float(self._losses[stage].compute())
        metrics["n"] = int(targets.shape[0])
        for m in (self._outputs[stage], self._targets[stage], self._losses[stage]):
            m.reset()
        self.last_metrics[stage] = metrics
        self.log_dict({f"{stage}/{k}": float(v) for k, v in metrics.items() if k != "n"}, prog_bar=stage == "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")


class BestWeights(L.Callback):
    """Keep the model's weights of the best validation epoch (by ``monitor``) and restore them when fitting ends.

    ``best_score``, ``best_epoch`` and ``best_metrics`` (all validation metrics of that epoch) describe it.
    Only parameters that train (and buffers) are copied, so a LoRA run keeps just its adapters and head.
    """

    def __init__(self, monitor: str, mode: str = "max"):
        if mode not in ("max", "min"):
            raise ConfigError(f"monitor mode must be 'max' or 'min', got {mode!r}")
        self.monitor, self.mode = monitor, mode
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.best_metrics: dict[str, float] = {}
        self._state: dict[str, Tensor] | None = None

    def _better(self, score: float) -> bool:
        if math.isnan(score):
            return False
        if self.best_score is None:
            return True
        return score > self.best_score if self.mode == "max" else score < self.best_score

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            available = ", ".join(sorted(trainer.callback_metrics)) or "none"
            raise ConfigError(f"monitor '{self.monitor}' was not logged (logged: {available})")
        score = float(value)
        if self._better(score):
            self.best_score, self.best_epoch = score, trainer.current_epoch
            stage_metrics = getattr(pl_module, "last_metrics", {}).get("val", {})
            self.best_metrics = dict(stage_metrics)
            params = dict(pl_module.named_parameters(remove_duplicate=False))
            self._state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()
                           if k not in params or params[k].requires_grad}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._state is not None:
            pl_module.load_state_dict(self._state, strict=False)
