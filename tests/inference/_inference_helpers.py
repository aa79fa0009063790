"""Tiny random models for the inference tests, their fixtures, and independent references of the models
beyond their context. Test modules import the fixtures they use from here.

The weights are perturbed away from the initialisation (which makes every output nearly uniform)
so that a wrong history, window or padding shows up far above float rounding.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dnalm.models.hyena import HyenaConfig, HyenaLM
from dnalm.models.io import save_pretrained
from dnalm.models.transformer import TransformerConfig, TransformerLM
from dnalm.tokenizers import CharTokenizer

HYENA_L_MAX = 64
ATTENTION_WINDOW = 48


def write_fasta(path: Path, records: dict[str, str]) -> Path:
    """A FASTA of ``records`` (name -> sequence) at ``path``."""
    path.write_text("".join(f">{k}\n{v}\n" for k, v in records.items()))
    return path


def cli(*argv: str) -> int:
    """A dnalm command on the CPU (its exit status)."""
    from dnalm.cli import run

    return run([*argv, "device=cpu"])


def _perturb(model: torch.nn.Module, seed: int, scale: float = 0.3) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval()


def tiny_hyena(seed: int = 0, l_max: int = HYENA_L_MAX, d_model: int = 16, scale: float = 0.3) -> HyenaLM:
    torch.manual_seed(seed)
    cfg = HyenaConfig(d_model=d_model, n_layer=2, d_inner=2 * d_model, l_max=l_max, filter_order=16,
                      embed_dropout=0.0)
    return _perturb(HyenaLM(cfg), seed, scale)


def tiny_transformer(seed: int = 0, max_len: int = ATTENTION_WINDOW) -> TransformerLM:
    torch.manual_seed(seed)
    return _perturb(TransformerLM(TransformerConfig(d_model=16, n_layer=2, n_head=2, d_inner=32, max_len=max_len)),
                    seed)


def truncated_filter_reference(model: HyenaLM, length: int) -> HyenaLM:
    """A copy whose plain forward runs at ``length`` > l_max with every filter truncated to l_max taps
    and zero-padded (one full-length FFT convolution per layer)."""
    ref = copy.deepcopy(model)
    for op in ref.mixers:
        k = op.filter_fn.filter(op.l_max).detach()  # (D, l_max)
        op.filter_fn.filter = lambda n, k=k: F.pad(k, (0, max(n - k.shape[1], 0)))[:, :n]
        op.l_max = max(length, op.l_max)
    return ref


def sliding_window_reference(model: TransformerLM, window: int) -> TransformerLM:
    """A copy whose attention is an explicit softmax over the keys ``t - window + 1 .. t`` of each query t."""
    ref = copy.deepcopy(model)
    for attn in ref.mixers:
        def forward(u, state=None, offset=0, attn=attn):
            q, k, v = attn._qkv(u, 0)
            L = u.shape[1]
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            i = torch.arange(L)[:, None]
            j = torch.arange(L)[None, :]
            scores = scores.masked_fill(~((j <= i) & (i - j < window)), float("-inf"))
            return attn._out(scores.softmax(-1) @ v)
        attn.forward = forward
    return ref


@pytest.fixture(scope="session", name="hyena")
def tiny_hyena_fixture() -> HyenaLM:
    return tiny_hyena()


@pytest.fixture(scope="session", name="transformer")
def tiny_transformer_fixture() -> TransformerLM:
    return tiny_transformer()


@pytest.fixture(scope="session", name="model_dirs")
def saved_models_fixture(tmp_path_factory, hyena, transformer) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"hyena": save_pretrained(hyena, root / "hyena", tokenizer=CharTokenizer()),
            "transformer": save_pretrained(transformer, root / "transformer", tokenizer=CharTokenizer())}
