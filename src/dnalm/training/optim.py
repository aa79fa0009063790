"""Optimizer parameter groups, shared by every recipe.

Three groups (empty ones are left out), each a dict for ``torch.optim`` with a ``name`` key:

``decay``     matrices of linear layers and convolution kernels: ``weight_decay``, ``lr``;
``no_decay``  every parameter with fewer than 2 dimensions (biases, LayerNorm weights and
              biases, Hyena's skip gain ``D``) and embedding tables (with the tied LM head):
              weight decay 0, ``lr``;
``filter``    implicit long-convolution filters (HyenaDNA: the filter MLP with its shared Sin
              ``freq``, and the positional features ``z`` when trainable), as returned by any
              submodule's ``filter_parameters()`` method: ``filter_lr`` (default ``lr``) and
              ``filter_weight_decay`` (default 0), as in HyenaDNA's training code (its
              ``layer.lr`` / ``layer.wd``; hyenadna.md §3.4).

HyenaDNA's own recipe decays every other parameter, LayerNorm and biases included (§9); dnalm
exempts 1-D parameters and embeddings, the usual practice since GPT-2/nanoGPT.
Frozen parameters (``requires_grad=False``) are in no group; a shared tensor appears once.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def param_groups(model: nn.Module, weight_decay: float, lr: float, filter_lr: float | None = None,
                 filter_weight_decay: float = 0.0) -> list[dict[str, Any]]:
    """Parameter groups ``decay``, ``no_decay`` and ``filter`` of ``model`` (see the module docstring)."""
    filter_ids: set[int] = set()
    embedding_ids: set[int] = set()
    for module in model.modules():
        get = getattr(module, "filter_parameters", None)
        if callable(get):
            filter_ids.update(id(p) for p in get())
        if isinstance(module, nn.Embedding):
            embedding_ids.add(id(module.weight))
    groups: dict[str, list[nn.Parameter]] = {"decay": [], "no_decay": [], "filter": []}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if id(p) in filter_ids:
            groups["filter"].append(p)
        elif p.ndim < 2 or id(p) in embedding_ids:
            groups["no_decay"].append(p)
        else:
            groups["decay"].append(p)
    settings = {"decay": (lr, weight_decay), "no_decay": (lr, 0.0),
                "filter": (lr if filter_lr is None else filter_lr, filter_weight_decay)}
    return [{"name": name, "params": params, "lr": settings[name][0], "weight_decay": settings[name][1]}
            for name, params in groups.items() if params]
