"""dnalm.inference.api.load_model: the model and the tokenizer saved beside it."""

from __future__ import annotations

import pytest
from _inference_helpers import tiny_hyena

from dnalm.errors import InputError
from dnalm.inference.api import load_model
from dnalm.models.io import save_pretrained
from dnalm.tokenizers import CharTokenizer, KmerTokenizer


def test_the_saved_tokenizer_is_used_and_a_corrupt_one_is_an_error(tmp_path):
    model = tiny_hyena()
    save_pretrained(model, tmp_path / "kmer", tokenizer=KmerTokenizer(k=3))
    assert load_model(tmp_path / "kmer", "cpu")[1] == KmerTokenizer(k=3)
    save_pretrained(model, tmp_path / "none")
    assert load_model(tmp_path / "none", "cpu")[1] == CharTokenizer()  # nothing saved: the default
    for content in (b"{broken", b'{"type": "nosuch"}'):
        (tmp_path / "kmer" / "tokenizer.json").write_bytes(content)
        with pytest.raises(InputError, match=r"kmer/tokenizer\.json: "):
            load_model(tmp_path / "kmer", "cpu")
