"""The trainable Triton selective scan (dnalm.kernels.selective_scan_triton.selective_scan_triton_train): outputs
and the gradients of every input against the chunked PyTorch reference ``selective_scan_ref``.

On CUDA where a GPU is present, else through Triton's interpreter on the CPU. ``TRITON_INTERPRET=1`` takes effect
only if it is set before triton is first imported (``triton.language``'s own functions, ``tl.sum`` among them,
are decorated then): this module sets it before importing triton, which suffices when it is collected before
anything else imports triton (as in a plain ``pytest`` run). Where triton was already imported without it, the
tests that run the kernels skip and ``test_in_a_fresh_process_under_the_interpreter`` runs two of them in a new
process. Everything skips where Triton is not installed.

Tolerances: the reference runs in float64 on the same inputs. float64 runs of the kernels (they compute in the
inputs' dtype, float32 or float64) agree with it to ``FLOAT64_ATOL`` (exactness). float32 runs follow
tests/tolerance.py's rule ``atol = 16 eps32 log2(n) depth S`` with n = L (the length of the recurrence stands
in for the FFT's: every state and every gradient of A, B, C and delta is a sum over up to L positions), depth 1
and S the largest magnitude of the reference tensor compared. Measured worst ratio of error to
``eps32 log2(L) S`` over five shapes (L 19-150) and four seeds: 1.03 (dA; 0.84 d delta_bias, at most 0.51 for the
rest), so C = 16 leaves 15x. The float32 reference is the less accurate of the two: its own ratio reaches 7.3
(d delta_bias) and 6.2 (dA), sums over batch and length that cancel, which is why the comparison is with float64.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

import triton.language as tl  # noqa: E402

import dnalm.kernels.selective_scan_triton as sst  # noqa: E402
from dnalm.models.mamba import selective_scan, selective_scan_ref  # noqa: E402
from tolerance import tolerance_for  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
#: Whether the kernels run in this process: on a GPU, or with triton and the kernels decorated for the interpreter.
IN_PROCESS = DEV == "cuda" or all(type(f).__name__ == "InterpretedFunction" for f in (tl.sum, sst._scan_fwd_core))
runs_kernels = pytest.mark.skipif(not IN_PROCESS, reason="triton was imported in this process without "
                                  "TRITON_INTERPRET=1; test_in_a_fresh_process_under_the_interpreter checks instead")


def _inputs(b, E, N, L, dtype, full=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device=DEV, dtype=dtype)

    A = (-torch.rand(E, N, generator=g, dtype=torch.float64) * 4 - 0.1).to(device=DEV, dtype=dtype)
    x = dict(u=r(b, E, L), delta=r(b, E, L), A=A, B=r(b, N, L), C=r(b, N, L))
    if full:
        x.update(D=r(E), z=r(b, E, L), delta_bias=r(E), state=r(b, E, N))
    return x


def _outputs_and_grads(fn, x, seed=1):
    """y, the last state and the gradients, with respect to every input, of a random linear function of both (so a
    gradient flows in through the last state too)."""
    x = {k: v.detach().clone().requires_grad_() for k, v in x.items()}
    y, h = fn(**x)
    g = torch.Generator().manual_seed(seed)
    wy = torch.randn(y.shape, generator=g, dtype=torch.float32).to(y)
    wh = torch.randn(h.shape, generator=g, dtype=torch.float32).to(h)
    grads = torch.autograd.grad((y * wy).sum() + (h * wh).sum(), list(x.values()))
    return {"y": y, "h": h, **{f"d{k}": v for k, v in zip(x, grads, strict=True)}}


def _assert_matches(got, want, dtype, L):
    """got: results in ``dtype``; want: the reference's in float64 on the same inputs."""
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == dtype, name
        assert torch.isfinite(got[name]).all(), name
        torch.testing.assert_close(got[name].double(), want[name], **tolerance_for(dtype, L, 1, [want[name]]),
                                   msg=lambda m, name=name: f"{name}: {m}")


def _reference(x):
    return _outputs_and_grads(selective_scan_ref, {k: v.double() for k, v in x.items()})


def _check(b, E, N, L, dtype, full=True, block_e=None, block_t=16, **overrides):
    x = {**_inputs(b, E, N, L, dtype, full), **overrides}
    got = _outputs_and_grads(lambda **kw: sst.selective_scan_triton_train(**kw, block_e=block_e, block_t=block_t), x)
    _assert_matches(got, _reference(x), dtype, L)


@runs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("b, E, N, L, block_e, block_t, full", [
    (2, 40, 16, 37, 32, 16, True),  # E not a multiple of BLOCK_E, L not one of BLOCK_T, N = 16
    (3, 7, 5, 21, 4, 8, True),  # N not a power of two, several channel blocks
    (2, 9, 16, 19, 8, 16, False),  # no D, gate, delta bias or initial state
])
def test_values_and_gradients_match_the_reference(b, E, N, L, block_e, block_t, full, dtype):
    _check(b, E, N, L, dtype, full, block_e, block_t)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a larger case for a GPU (the interpreter is slow)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values_and_gradients_match_the_reference_on_cuda_at_a_larger_size(dtype):
    _check(3, 70, 16, 1001, dtype)


@runs_kernels
def test_large_decays_give_finite_gradients():
    """exp(dt A) underflows to 0 for a large delta: the states reset, nothing overflows, gradients stay exact."""
    _check(1, 6, 4, 40, torch.float64, block_e=4, block_t=16,
           delta_bias=torch.full((6,), 200.0, dtype=torch.float64, device=DEV))


@runs_kernels
def test_the_backward_pass_is_deterministic():
    """dB and dC are summed from per-channel-block shares (no atomics): two runs give the same bits."""
    x = _inputs(2, 20, 4, 13, torch.float32)
    fn = lambda **kw: sst.selective_scan_triton_train(**kw, block_e=8, block_t=8)  # noqa: E731
    first, second = _outputs_and_grads(fn, x), _outputs_and_grads(fn, x)
    for name in first:
        assert torch.equal(first[name], second[name]), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the dispatcher takes Triton paths on CUDA only")
def test_selective_scan_trains_through_the_triton_path_on_cuda(monkeypatch):
    calls = []
    train = sst.selective_scan_triton_train

    def spy(*args, **kwargs):
        calls.append(1)
        return train(*args, **kwargs)

    monkeypatch.setattr(sst, "selective_scan_triton_train", spy)
    x = _inputs(2, 40, 16, 37, torch.float32)
    got = _outputs_and_grads(lambda **kw: selective_scan(**kw, fast_path="triton"), x)
    assert calls
    _assert_matches(got, _reference(x), torch.float32, 37)


@pytest.mark.skipif(IN_PROCESS, reason="the kernels run in this process (the tests above)")
def test_in_a_fresh_process_under_the_interpreter():
    repo = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-p", "no:cacheprovider", __file__,
               "-k", "match_the_reference and 37-32"]  # the (2, 40, 16, 37) case in float32 and float64
    done = subprocess.run(command, cwd=repo, env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "2 passed" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
