"""Class balance of a classification task: the class prior, loss weights, and the loss of a model that learned nothing.

* :func:`class_prior`: the fraction of each class among the training labels, ``p_c = n_c / N``.
* :func:`class_weights` (``task.class_weights``): ``auto`` gives inverse-frequency weights
  ``w_c = N / (C n_c)`` (King & Zeng 2001; scikit-learn's ``class_weight="balanced"``), which average to 1
  over the training examples (``sum_c p_c w_c = 1``) and give every class the same total weight; a list
  gives the weights as they are; ``none`` none.
* :func:`constant_loss`: the cross-entropy of the best *constant* prediction under the training
  objective, the level a training loss sits at when the model predicts the prior whatever the input.
  Batches drawn with class distribution ``s`` (the prior under ``natural`` sampling, uniform over the
  classes present under ``balanced``) and a loss with class weights ``w`` (PyTorch's weighted mean,
  ``sum_i w_(y_i) l_i / sum_i w_(y_i)``) reach their minimum over constant predictions ``q`` at
  ``q = s~`` with ``s~_c = s_c w_c / sum_k s_k w_k``, where the loss equals the entropy ``H(s~)``
  in nats. Unweighted natural sampling gives the class-prior entropy ``H(p)`` (ln 2 = 0.693 for two
  balanced classes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dnalm.errors import ConfigError

SAMPLINGS = ("natural", "balanced")


def class_counts(labels: Sequence[int] | np.ndarray, n_classes: int) -> np.ndarray:
    """Examples per class ``(C,)`` of integer ``labels`` ``(N,)`` in ``0 .. n_classes - 1``."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)[:n_classes]


def class_prior(labels: Sequence[int] | np.ndarray, n_classes: int) -> np.ndarray:
    """The fraction of each class among ``labels`` ``(C,)`` (float64)."""
    counts = class_counts(labels, n_classes).astype(np.float64)
    return counts / max(1.0, counts.sum())


def entropy(p: Sequence[float] | np.ndarray) -> float:
    """Shannon entropy of the distribution ``p`` in nats (``0 log 0 = 0``)."""
    p = np.asarray(p, dtype=np.float64)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log(p)).sum())


def class_weights(spec: str | Sequence[float] | None, counts: Sequence[int] | np.ndarray,
                  where: str = "task.class_weights") -> np.ndarray | None:
    """Loss weights ``(C,)`` per class from ``spec``: ``auto`` (inverse frequency ``N / (C n_c)``; a class
    absent from training gets 0), ``none``/None (no weights) or a list of C non-negative numbers."""
    counts = np.asarray(counts, dtype=np.float64)
    n_classes = len(counts)
    if spec is None or (isinstance(spec, str) and spec.lower() == "none"):
        return None
    if isinstance(spec, str):
        if spec.lower() != "auto":
            raise ConfigError(f"{where} must be auto, none or a list of {n_classes} numbers, got {spec!r}")
        present = counts > 0
        weights = np.zeros(n_classes)
        weights[present] = counts.sum() / (present.sum() * counts[present])
        return weights
    try:
        weights = np.asarray([float(w) for w in spec], dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be auto, none or a list of {n_classes} numbers, got {spec!r}") from None
    if weights.shape != (n_classes,):
        raise ConfigError(f"{where} has {weights.size} weights, the task has {n_classes} classes")
    if (weights < 0).any() or not np.isfinite(weights).all() or not (weights * counts).sum() > 0:
        raise ConfigError(f"{where} must be finite, >= 0 and positive on some class present in training, "
                          f"got {weights.tolist()}")
    return weights


def sampled_distribution(prior: Sequence[float] | np.ndarray, sampling: str = "natural") -> np.ndarray:
    """Class distribution of training batches: ``prior`` (``natural``) or uniform over the classes present
    (``balanced``)."""
    prior = np.asarray(prior, dtype=np.float64)
    if sampling not in SAMPLINGS:
        raise ConfigError(f"task.sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
    if sampling == "natural":
        return prior
    present = (prior > 0).astype(np.float64)
    return present / present.sum()


def constant_loss(prior: Sequence[float] | np.ndarray, weights: np.ndarray | None = None,
                  sampling: str = "natural") -> float:
    """Cross-entropy (nats) of the best constant prediction under the training objective (module docstring)."""
    s = sampled_distribution(prior, sampling)
    if weights is not None:
        s = s * np.asarray(weights, dtype=np.float64)
    return entropy(s)
