"""A fast sample of the fuzz harness (``benchmarks/fuzz_inputs.py``): malformed and hostile inputs of every
format through the library entry points give no traceback, hang, partial output or executed payload, every
error is one line naming its input, and no input built to be valid is refused (nor a malformed one accepted)."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _harness():
    spec = importlib.util.spec_from_file_location("fuzz_inputs", REPO / "benchmarks" / "fuzz_inputs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fuzz_inputs", module)
    spec.loader.exec_module(module)
    return module


def test_a_sample_of_hostile_inputs_fails_cleanly(tmp_path):
    fuzz = _harness()
    results, _ = fuzz.run_all(seed=1, scale=0.11, cli=0, timeout=20, cli_timeout=0, work=tmp_path, progress=False)
    assert len(results) >= 150
    assert {r["fmt"] for r in results} == set(fuzz.COUNTS)
    counts = Counter(r["outcome"] for r in results)
    assert counts["accepted"] > 30 and counts["clean"] > 75, counts
    bad = fuzz.problems(results)
    assert not bad, "\n" + fuzz.problem_lines(bad)
