"""dnalm: DNA language models from genome to benchmark.

The package imports nothing heavy at top level so that ``dnalm --help`` stays fast;
``dnalm.load`` is resolved lazily.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def __getattr__(name: str):
    if name == "load":
        from dnalm.inference.api import load

        return load
    raise AttributeError(f"module 'dnalm' has no attribute {name!r}")
