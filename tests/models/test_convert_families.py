"""`dnalm convert` of DNABERT-2's hub layout and Evo 2's vortex layout into dnalm's format: bit-exact round trips."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dnalm.cli import run
from dnalm.models.io import load_pretrained
from dnalm.tokenizers import load_tokenizer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SEQ = "ACGTTGCAGGATTACANNACGTGGCCAATTGCGCATATGC"


def _source(tmp_path: Path, family: str) -> Path:
    if family == "dnabert2":
        return FIXTURES / "dnabert2_tiny"
    d = tmp_path / "vortex"
    d.mkdir()
    for name in ("model.pt", "config.json"):
        shutil.copy(FIXTURES / "stripedhyena2_tiny" / name, d / name)
    return d


@pytest.mark.parametrize("family", ["dnabert2", "stripedhyena"])
def test_convert_round_trip_is_bit_exact(tmp_path, family: str) -> None:
    """Every tensor (values and dtype) and the logits of the converted model equal the source's; the tokenizer
    comes along (the hub's BPE; Evo 2's byte tokenizer for a vortex file, which has none) and encodes alike;
    converting the converted directory again writes the same tensors."""
    src = _source(tmp_path, family)
    assert run(["convert", f"src={src}", f"out={tmp_path / 'a'}"]) == 0
    assert run(["convert", f"src={tmp_path / 'a'}", f"out={tmp_path / 'b'}"]) == 0
    original, converted = load_pretrained(src), load_pretrained(tmp_path / "a")
    assert type(converted) is type(original) and converted.config == original.config
    a, b = original.state_dict(), converted.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    tokenizer = load_tokenizer(tmp_path / "a")
    assert tokenizer.type == ("dnabert2" if family == "dnabert2" else "byte")
    ids = torch.as_tensor(np.asarray(tokenizer.encode(SEQ), dtype=np.int64))[None]
    with torch.no_grad():
        assert torch.equal(original(ids), converted(ids))
    if family == "dnabert2":
        np.testing.assert_array_equal(tokenizer.encode(SEQ), load_tokenizer(src).encode(SEQ))
    first, second = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("a", "b"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
