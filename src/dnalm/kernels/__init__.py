"""Fast paths, each beside its plain PyTorch reference twin.

* :mod:`dnalm.kernels.hyena_block`: the fused HyenaDNA block (two autograd functions with a
  memory plan that recomputes elementwise products and the implicit filter in the backward pass);
  twin of :class:`dnalm.models.blocks.Block` with :class:`dnalm.models.hyena.HyenaOperator`.
* :mod:`dnalm.kernels.hyena_torch`: its elementwise pieces in plain PyTorch (CPU, any device).
* :mod:`dnalm.kernels.hyena_triton`: the same pieces as Triton kernels (CUDA).
* :mod:`dnalm.kernels.selective_scan_triton`: Mamba's selective scan as Triton kernels (CUDA), forward-only
  and trainable (an autograd function over a forward and a backward kernel); twin of
  :func:`dnalm.models.mamba.selective_scan_ref`, picked by :func:`dnalm.models.mamba.selective_scan`.

:func:`select_ops` picks the implementation for a ``fast_path`` setting and a device.
"""

from __future__ import annotations

import functools
import importlib.util

import torch


@functools.cache
def triton_available() -> bool:
    """Whether Triton can be imported (CUDA kernels)."""
    return importlib.util.find_spec("triton") is not None


def select_ops(fast_path: str, device: torch.device):
    """The elementwise ops for ``fast_path`` ('auto', 'fused', 'reference') on ``device``, or None.

    'auto': the Triton kernels on CUDA, None (the reference code) elsewhere; 'fused': the Triton
    kernels on CUDA, the plain PyTorch twins elsewhere; 'reference': None.
    """
    if fast_path == "reference":
        return None
    if device.type == "cuda" and triton_available():
        from dnalm.kernels.hyena_triton import TritonOps

        return TritonOps
    if fast_path == "fused":
        from dnalm.kernels.hyena_torch import TorchOps

        return TorchOps
    return None
