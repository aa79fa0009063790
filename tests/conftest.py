"""Shared test fixtures: paths to the golden HyenaDNA fixture and to ../shared/data."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# torch.compile's on-disk cache is shared by every process of the machine under /tmp; a cache left by an
# earlier run (another torch build, a killed process) can crash the compiled decoding tests. Each test
# process compiles into a fresh directory of its own.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="dnalm-test-inductor-"))

# Several test processes (pytest -n N) share the machine's cores: each gets its share of intra-op threads, set
# before torch starts its thread pool (child processes inherit it). Oversubscribed OpenMP threads spin against
# each other: measured on 2 cores with -n 2, chunked-inference tests took 95 s instead of 0.6 s.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
if _WORKERS > 1:
    _share = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, _share)
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()
#: Tests of ``torch.compile`` on the CPU: Inductor builds C++ there.
needs_cxx = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None,
                               reason="torch.compile on the CPU needs a C++ compiler (g++ or $CXX)")


@pytest.fixture(scope="session")
def hyena_fixture() -> Path:
    """The reference HyenaDNA tiny-1k fixture (weights and exact outputs)."""
    return FIXTURES / "hyenadna_tiny1k"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the repository; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (real genomes live beside the repository)")
    return SHARED_DATA


def shared_file(*parts: str) -> Path:
    """A file under ../shared/data, or skip the calling test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found (real data lives in ../shared/data beside the repository)")
    return path


@pytest.fixture
def one_thread():
    """Run a test with one intra-op thread (tiny models: thread start-up costs more than it saves)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
