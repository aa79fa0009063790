"""The next-token loss of a causal DNA language model and its metrics.

For logits ``z`` (B, L, V), targets ``y`` (B, L) and per-token weights ``w`` (B, L) (from
:class:`~dnalm.data.datasets.WindowDataset`: soft-masked bases may be down-weighted, N targets,
padding and bases already scored by an earlier evaluation window get 0)::

    ce_i          = -log softmax(z_i)[y_i]              # nats, one per predicted token
    loss          = sum_i w_i ce_i / sum_i w_i           # over all predicted tokens of the batch
    accuracy      = #{i : w_i > 0, argmax z_i = y_i} / #{i : w_i > 0}
    bits_per_base = loss / ln 2
    perplexity    = exp(loss)

Loss and accuracy are taken over every predicted token of the batch at once, not averaged per
sequence: HyenaDNA's batch-level definition (flattened cross-entropy and accuracy; Nguyen et al.
2023, see ``shared/reference/hyenadna.md`` §8). Accuracy counts every token that has a positive
weight once, whatever its weight.

:func:`lm_loss` is the one loss of pretraining; :class:`NextTokenMetrics` accumulates its sums
over an evaluation epoch (synchronised across processes by torchmetrics), overall and per region
class (``CDS``, ``intron``, ``promoter``, ... of :data:`dnalm.genome.regions.REGION_CLASSES`), so
that an epoch's loss is the exact weighted mean over all of its tokens, not a mean of batch means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from dnalm.genome.regions import REGION_CLASSES

LN2 = math.log(2.0)


@dataclass(frozen=True)
class LMLoss:
    """What :func:`lm_loss` returns.

    ``loss``: the scalar weighted mean cross-entropy (differentiable); ``ce`` (B, L) float32 per-token
    cross-entropy in nats (detached); ``weight`` (B, L) float32; ``correct`` (B, L) bool, argmax equals
    the target.
    """

    loss: Tensor
    ce: Tensor
    weight: Tensor
    correct: Tensor

    @property
    def n_tokens(self) -> Tensor:
        """Number of tokens with positive weight (scalar)."""
        return (self.weight > 0).sum()

    @property
    def accuracy(self) -> Tensor:
        scored = self.weight > 0
        return (self.correct & scored).sum() / scored.sum().clamp_min(1)

    @property
    def bits_per_base(self) -> Tensor:
        return self.loss.detach() / LN2

    @property
    def perplexity(self) -> Tensor:
        return self.loss.detach().exp()


def token_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-token cross-entropy in nats: logits (B, L, V), targets (B, L) -> (B, L) float32."""
    B, L, V = logits.shape
    ce = F.cross_entropy(logits.reshape(B * L, V).float(), targets.reshape(B * L), reduction="none")
    return ce.view(B, L)


def lm_loss(logits: Tensor, targets: Tensor, loss_weight: Tensor | None = None) -> LMLoss:
    """Weighted next-token cross-entropy over all predicted tokens of a batch (see the module docstring).

    Args:
        logits: (B, L, V) model outputs.
        targets: (B, L) int64 token ids (the input shifted by one).
        loss_weight: (B, L) per-token weights; None weighs every token 1.

    A batch whose weights are all zero (a padding batch of distributed evaluation) has loss 0.
    """
    ce = token_cross_entropy(logits, targets)
    weight = torch.ones_like(ce) if loss_weight is None else loss_weight.to(ce.dtype)
    loss = (ce * weight).sum() / weight.sum().clamp_min(torch.finfo(ce.dtype).tiny)
    correct = logits.detach().argmax(dim=-1) == targets
    return LMLoss(loss=loss, ce=ce.detach(), weight=weight.detach(), correct=correct)


def summarize(loss_sum: float, weight_sum: float, correct: float | None = None,
              count: float | None = None) -> dict[str, float]:
    """``loss``, ``bits_per_base``, ``ppl`` (and ``acc``) from the sums ``sum w ce``, ``sum w``,
    correct tokens and scored tokens; NaN when nothing was scored."""
    loss = loss_sum / weight_sum if weight_sum > 0 else math.nan
    out = {"loss": loss, "bits_per_base": loss / LN2, "ppl": math.exp(loss) if loss < 700 else math.inf}
    if correct is not None and count is not None:
        out["acc"] = correct / count if count > 0 else math.nan
    return out


class NextTokenMetrics(Metric):
    """Epoch-level loss, accuracy, bits/base and perplexity, overall and per region class.

    ``update(out, regions)`` takes an :class:`LMLoss` and the region class of each target, (B, L)
    int64 (``-1`` for targets that are not bases: EOS, padding; they count overall but in no class).
    ``compute()`` returns ``{"loss", "acc", "bits_per_base", "ppl"}`` plus ``"loss/<class>"`` and
    ``"bits_per_base/<class>"`` for every class with scored tokens.
    """

    full_state_update = False

    def __init__(self, region_classes: Sequence[str] = REGION_CLASSES, **kwargs):
        super().__init__(**kwargs)
        self.region_classes = list(region_classes)
        C = len(self.region_classes)
        for name in ("loss_sum", "weight_sum", "correct", "count"):
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("region_loss", default=torch.zeros(C, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("region_weight", default=torch.zeros(C, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, out: LMLoss, regions: Tensor | None = None) -> None:
        wce = (out.ce * out.weight).double()
        scored = out.weight > 0
        self.loss_sum += wce.sum()
        self.weight_sum += out.weight.double().sum()
        self.correct += (out.correct & scored).sum().double()
        self.count += scored.sum().double()
        if regions is not None:
            C = len(self.region_classes)
            keep = (regions >= 0) & (regions < C)
            idx = regions[keep]
            self.region_loss += torch.bincount(idx, weights=wce[keep], minlength=C)[:C]
            self.region_weight += torch.bincount(idx, weights=out.weight[keep].double(), minlength=C)[:C]

    def compute(self) -> dict[str, float]:
        out = summarize(float(self.loss_sum), float(self.weight_sum), float(self.correct), float(self.count))
        for c, name in enumerate(self.region_classes):
            w = float(self.region_weight[c])
            if w > 0:
                part = summarize(float(self.region_loss[c]), w)
                out[f"loss/{name}"] = part["loss"]
                out[f"bits_per_base/{name}"] = part["bits_per_base"]
        return out


# ---------------------------------------------------------------------------------------------
# Masked language modelling
# ---------------------------------------------------------------------------------------------

IGNORE_INDEX = -100
"""Label of positions a masked LM does not predict."""


def masked_lm_loss(logits: Tensor, labels: Tensor) -> LMLoss:
    """Masked-LM cross-entropy: logits (B, T, V) and labels (B, T), the original token where masked and
    ``IGNORE_INDEX`` elsewhere. ``loss`` is the mean over masked tokens (0 when none is masked); ``ce``,
    ``weight`` (1 on masked tokens) and ``correct`` are (B, T) as for :func:`lm_loss`."""
    return masked_lm_loss_at_labels(logits[labels != IGNORE_INDEX], labels)


def masked_lm_loss_at_labels(chosen: Tensor, labels: Tensor) -> LMLoss:
    """:func:`masked_lm_loss` from the logits of the labelled positions only: ``chosen`` (N, V), in the order of
    ``labels != IGNORE_INDEX`` (a head run on those positions alone)."""
    picked = labels != IGNORE_INDEX  # (B, T)
    chosen = chosen.float()
    targets = labels[picked]
    ce_picked = F.cross_entropy(chosen, targets, reduction="none")  # (N,)
    loss = ce_picked.mean() if targets.numel() else chosen.sum() * 0.0
    ce = torch.zeros(labels.shape, dtype=torch.float32, device=labels.device)
    ce[picked] = ce_picked.detach()
    correct = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    correct[picked] = chosen.detach().argmax(dim=-1) == targets
    return LMLoss(loss=loss, ce=ce, weight=picked.float(), correct=correct)


class MaskedLMMetrics(Metric):
    """Epoch-level masked-LM metrics over every masked token of an evaluation epoch.

    ``compute()`` returns ``loss`` (mean cross-entropy of the masked tokens, nats), ``acc`` (masked-token
    accuracy), ``ppl`` (``exp(loss)``) and, given the bases of each masked token, ``bits_per_masked_base``:
    the masked tokens' cross-entropy in bits divided by the bases they cover. It is the cost of the
    masked spans given both sides of their context, so it is *not* comparable to a causal model's
    bits/base (the cost of a whole sequence, one base after another).
    """

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name in ("loss_sum", "count", "correct", "bases"):
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, out: LMLoss, bases: Tensor | None = None) -> None:
        """``out`` from :func:`masked_lm_loss`; ``bases`` (B, T): bases of each labelled token (or None)."""
        scored = out.weight > 0
        self.loss_sum += (out.ce * out.weight).double().sum()
        self.count += scored.sum().double()
        self.correct += (out.correct & scored).sum().double()
        if bases is not None:
            self.bases += (bases * scored).double().sum()

    def compute(self) -> dict[str, float]:
        count = float(self.count)
        loss = float(self.loss_sum) / count if count > 0 else math.nan
        out = {"loss": loss, "acc": float(self.correct) / count if count > 0 else math.nan,
               "ppl": math.exp(loss) if loss < 700 else math.inf}
        if float(self.bases) > 0:
            out["bits_per_masked_base"] = float(self.loss_sum) / float(self.bases) / LN2
        return out
