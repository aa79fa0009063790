"""Tolerances of float32 comparisons, derived from the length and scale of the computation.

Two float32 evaluations of the same network that differ only in summation order, FFT algorithm or
vector width (another CPU, another MKL code path, a fused kernel against its reference) agree to
within rounding, and rounding grows with the computation:

* an FFT convolution of length n is backward stable with a relative error of about eps * log2(n)
  (each of the log2(n) butterfly stages rounds once);
* each layer adds its own rounding on top of the error it was handed;
* the errors are absolute on the scale of the largest values in the computation (the residual
  stream or the logits): a LayerNorm divides the residual stream's error by its spread, so a
  normalised output is not accurate relative to its own size, only to that scale.

Hence the rule used by the float32 tests::

    atol = C * eps32 * log2(n) * depth * S,   rtol = 0

with ``n`` the longest FFT of either computation, ``depth`` the number of layers, ``S`` the largest
magnitude of every reference tensor compared, and ``C = 16``. The worst ratio measured over the
chunked-inference cases of ``tests/inference/test_chunked.py`` on one machine under MKL's SSE4.2,
AVX2 and AVX-512 code paths and ATen's default and AVX-512 kernels was 5.7 (``C`` leaves 2.8x;
benchmarks/RESULTS.md).
Exactness itself is proven by the same comparisons in float64 at ``FLOAT64_ATOL``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

EPS32 = torch.finfo(torch.float32).eps
C = 16.0
#: Absolute tolerance of the float64 twins of the float32 checks: the same computations agree to
#: ~1e-13 there, so anything but float rounding (a wrong history, window or tap) fails.
FLOAT64_ATOL = 1e-10


def scale_of(tensors: Iterable[torch.Tensor]) -> float:
    """The largest magnitude in ``tensors`` (the ``S`` of the rule)."""
    return max(float(t.detach().abs().max()) for t in tensors if t.numel())


def float32_tolerance(n_fft: int, depth: int, scale: float) -> dict[str, float]:
    """``assert_close`` keyword arguments for float32 results (see the module docstring)."""
    return {"atol": C * EPS32 * math.log2(max(n_fft, 2)) * max(depth, 1) * scale, "rtol": 0.0}


def tolerance_for(dtype: torch.dtype, n_fft: int, depth: int, reference: Iterable[torch.Tensor]) -> dict[str, float]:
    """float64: ``FLOAT64_ATOL``; float32: :func:`float32_tolerance` on the scale of ``reference``."""
    if dtype == torch.float64:
        return {"atol": FLOAT64_ATOL, "rtol": 0.0}
    return float32_tolerance(n_fft, depth, scale_of(reference))
