"""The Python API: ``m = dnalm.load(path)``, then score, log-probabilities, generation and embeddings.

Example::

    import dnalm
    m = dnalm.load("runs/hyena/model")              # any checkpoint load_pretrained reads
    m.score(["ACGTACGT", "GGGCCC"])                  # (2,) mean log-likelihood per base (reduce="sum": total)
    m.log_probs("ACGTACGT")                          # (7,) log p(x_i | x_<i), i = 1..7
    m.generate(["ACGT"], max_new_tokens=50, temperature=0.8, seed=1)
    m.embed(["ACGT" * 100], layer="final", pool="mean")   # (1, d_model)

A masked LM (DNABERT-2, Caduceus) scores by pseudo-log-likelihood (``score``; ``reduce='mean'`` per base) and
embeds over its tokens (``embed``, pools mean | max | cls | none); ``log_probs``, ``logits`` and ``generate`` need
a causal LM (a one-line ConfigError otherwise).

Every method of a causal LM works at any length (chunked, exact; see :mod:`dnalm.inference.chunked`); the
semantics are those of :mod:`~dnalm.inference.scoring`, :mod:`~dnalm.inference.generate` and
:mod:`~dnalm.inference.embed`. Sequences are upper-cased before tokenization (soft-masked bases
are ordinary bases to the models).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dnalm.errors import ConfigError, InputError
from dnalm.inference.embed import embed_per_base, embed_pooled, resolve_layer
from dnalm.inference.generate import GenerationOptions, check_acgt_tokenizer, generate, prompt_ids
from dnalm.inference.scoring import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_TOKENS,
    ambiguous_targets,
    encode_sequence,
    logit_columns,
    reduce_log_probs,
    score_rows,
)
from dnalm.models.family import CAUSAL, MASKED

#: Names accepted for the compute dtype.
TORCH_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
                "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``'auto'`` -> CUDA when available, else CPU; anything else as ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device={device!r} is not a device (auto, cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r}: CUDA is not available on this machine")
    return dev


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in TORCH_DTYPES:
        raise ConfigError(f"dtype={dtype!r} must be one of {', '.join(TORCH_DTYPES)}")
    return TORCH_DTYPES[dtype]


def load_model(path: str | os.PathLike, device: str | torch.device = "auto",
               dtype: str | torch.dtype = "fp32") -> tuple[nn.Module, object]:
    """A language model of any family (causal or masked: ask ``family_of(model).objective``) in eval mode and
    its tokenizer (``tokenizer.json`` beside it, else the family's default, dnalm's character tokenizer for
    the character-level families; a tokenizer file that cannot be read is an InputError, never silently
    replaced by the default; see :func:`dnalm.models.io.checkpoint_tokenizer`)."""
    from dnalm.models.families import family_of
    from dnalm.models.io import checkpoint_tokenizer, load_pretrained
    from dnalm.tokenizers import CharTokenizer

    path = Path(path)
    model = load_pretrained(path, map_location="cpu")
    try:
        family_of(model)
    except ConfigError:
        raise InputError(f"{path}: holds a {type(model).__name__}, not a language model") from None
    model = model.to(device=resolve_device(device), dtype=resolve_dtype(dtype)).eval()
    tokenizer = checkpoint_tokenizer(path, model, default=CharTokenizer())
    return model, tokenizer


@dataclass
class Sample:
    """One generated sample: its prompt (index and bases), the new bases ``completion`` and the
    model's log-probabilities (len(completion),) of the new tokens (unmodified distribution)."""

    prompt_index: int
    sample: int
    prompt: str
    completion: str
    log_probs: np.ndarray

    def __str__(self) -> str:
        return self.completion


class DnaLM:
    """A loaded model with its tokenizer (see the module docstring).

    ``batch_size``/``max_tokens``: rows and padded tokens per batch; ``chunk_size``: tokens per
    chunk for long sequences (None: :func:`dnalm.inference.chunked.default_chunk_size`); for a masked LM, tokens
    per window (None: its family's ``window_tokens``; :mod:`dnalm.inference.masked`).
    """

    def __init__(self, model: nn.Module, tokenizer, batch_size: int = DEFAULT_BATCH_SIZE,
                 max_tokens: int = DEFAULT_MAX_TOKENS, chunk_size: int | None = None):
        from dnalm.inference.masked import objective_of

        self.model = model.eval()
        self.objective = objective_of(model)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.chunk_size = chunk_size

    def __repr__(self) -> str:
        return f"DnaLM({type(self.model).__name__}, {type(self.tokenizer).__name__})"

    def _kw(self) -> dict:
        return {"batch_size": self.batch_size, "max_tokens": self.max_tokens, "chunk_size": self.chunk_size}

    def encode(self, seq: str, prepend_bos: bool = False) -> np.ndarray:
        """Token ids (n,) of ``seq`` (upper-cased), ``[BOS]`` first when asked."""
        return encode_sequence(self.tokenizer, seq.upper(), prepend_bos)

    def _rows(self, seqs: Sequence[str], prepend_bos: bool) -> list[np.ndarray]:
        return [encode_sequence(self.tokenizer, s.upper(), prepend_bos, where=f"sequence {i}")
                for i, s in enumerate(seqs)]

    def score(self, seqs: str | Sequence[str], reduce: str = "mean", prepend_bos: bool = False,
              skip_n: bool = True) -> np.ndarray | float:
        """Log-likelihood of each sequence, averaged (``reduce='mean'``) or summed over its scored tokens, N and
        IUPAC ambiguity codes left out unless ``skip_n=False`` (as ``dnalm predict``): (N,) float64 (a float
        for a single string)."""
        single = isinstance(seqs, str)
        if self.objective == MASKED:
            out = self._pseudo_scores([seqs] if single else list(seqs), reduce, prepend_bos, skip_n)
            return float(out[0]) if single else out
        rows = self._rows([seqs] if single else seqs, prepend_bos)
        scores = score_rows(self.model, rows, **self._kw())
        out = np.array([reduce_log_probs(r.log_probs, reduce, ~ambiguous_targets(row, self.tokenizer) if skip_n
                                         else None) for r, row in zip(scores, rows, strict=True)], dtype=np.float64)
        return float(out[0]) if single else out

    def _pseudo_scores(self, seqs: Sequence[str], reduce: str, prepend_bos: bool, skip_n: bool) -> np.ndarray:
        """A masked LM's pseudo-log-likelihoods (:mod:`dnalm.inference.masked`): sums, or per base."""
        from dnalm.inference.masked import check_objective, encode_tokens, pseudo_log_likelihoods

        if prepend_bos:
            check_objective(self.model, CAUSAL, "prepend_bos=True")
        rows = [encode_tokens(self.tokenizer, s.upper(), where=f"sequence {i}") for i, s in enumerate(seqs)]
        lps = pseudo_log_likelihoods(self.model, [r.ids for r in rows], self.tokenizer.alphabet, skip_n=skip_n,
                                     batch_size=self.batch_size, max_tokens=self.max_tokens, window=self.chunk_size)
        out = []
        for r, lp in zip(rows, lps, strict=True):
            keep = ~np.isnan(lp)
            bases = int(r.n_bases[keep].sum())
            total = float(lp[keep].sum())
            out.append(total if reduce == "sum" else (total / bases if bases else float("nan")))
        return np.array(out, dtype=np.float64)

    def _causal(self, what: str) -> None:
        from dnalm.inference.masked import check_objective

        check_objective(self.model, CAUSAL, what)

    def log_probs(self, seq: str, prepend_bos: bool = False) -> np.ndarray:
        """``log p(x_i | x_<i)`` of each scored token of one sequence: (n-1,) float32, or (n,) with BOS."""
        self._causal("log_probs")
        return score_rows(self.model, self._rows([seq], prepend_bos), **self._kw())[0].log_probs

    def logits(self, seq: str, tokens: str = "acgt", prepend_bos: bool = False) -> np.ndarray:
        """Logits predicting each scored token (rows as in :meth:`log_probs`): (n-1, 4) for
        ``tokens='acgt'`` (columns A, C, G, T) or (n-1, V) for ``'all'``."""
        self._causal("logits")
        cols = logit_columns(self.model, tokens, self.tokenizer)
        return score_rows(self.model, self._rows([seq], prepend_bos), logits_columns=cols, **self._kw())[0].logits

    def generate(self, prompts: str | Sequence[str], max_new_tokens: int = 100, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, n_samples: int = 1, seed: int = 0, acgt_only: bool = True,
                 prepend_bos: bool = False) -> list[Sample]:
        """``n_samples`` continuations of each prompt, ordered by prompt then sample."""
        self._causal("generate")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        acgt = check_acgt_tokenizer(self.tokenizer, acgt_only)
        options = GenerationOptions(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                    top_p=top_p, n_samples=n_samples, seed=seed, acgt_only=acgt_only, acgt=acgt,
                                    batch_size=self.batch_size)
        rows = [prompt_ids(self.tokenizer, p.upper(), prepend_bos, where=f"prompt {i}") for i, p in enumerate(prompts)]
        out = []
        for g in generate(self.model, rows, options):
            out.append(Sample(g.prompt_index, g.sample, prompts[g.prompt_index].upper(),
                              self.tokenizer.decode(g.token_ids), g.log_probs))
        return out

    def embed(self, seqs: str | Sequence[str], layer: int | str = -1, pool: str = "mean",
              prepend_bos: bool = False, precision: str | int = "32") -> np.ndarray | list[np.ndarray]:
        """Embeddings of layer ``layer`` (0 = embedding, i = after block i, -1/'final' = after the final
        norm): (N, D) float32 for pool mean|max|last; for ``pool='none'`` a list of (n_i, D) per-base
        arrays (held in memory: use :func:`dnalm.inference.embed.embed_to_directory` for chromosomes).
        ``precision``: ``'32'`` or ``'bf16'`` (the chunks under bf16 autocast)."""
        single = isinstance(seqs, str)
        if self.objective == MASKED:
            return self._embed_masked([seqs] if single else list(seqs), layer, pool, prepend_bos, single)
        rows = self._rows([seqs] if single else seqs, prepend_bos)
        skip = int(prepend_bos)
        if pool == "none":
            D = self.model.backbone.embeddings.word_embeddings.embedding_dim
            outs = [np.empty((len(r) - skip, D), dtype=np.float32) for r in rows]

            def write(i: int, start: int, block: np.ndarray) -> None:
                outs[i][start: start + len(block)] = block

            embed_per_base(self.model, rows, resolve_layer(self.model, layer), write, skip=skip,
                           precision=precision, **self._kw())
            return outs[0] if single else outs
        out = embed_pooled(self.model, rows, layer, pool, skip=skip, precision=precision, **self._kw())
        return out[0] if single else out

    def _embed_masked(self, seqs: list[str], layer: int | str, pool: str, prepend_bos: bool,
                      single: bool) -> np.ndarray | list[np.ndarray]:
        from dnalm.inference.masked import embed_masked, encode_tokens
        from dnalm.models.heads import backbone_width

        if prepend_bos:
            self._causal("prepend_bos=True")
        rows = [encode_tokens(self.tokenizer, s.upper(), where=f"sequence {i}") for i, s in enumerate(seqs)]
        D = backbone_width(self.model)
        outs = [np.empty((int(r.n_bases.sum()), D), dtype=np.float32) for r in rows] if pool == "none" else []

        def write(i: int, start: int, block: np.ndarray) -> None:
            outs[i][start: start + len(block)] = block

        vectors = embed_masked(self.model, rows, resolve_layer(self.model, layer), pool,
                               self.tokenizer.alphabet.pad or 0, write=write if pool == "none" else None,
                               batch_size=self.batch_size, max_tokens=self.max_tokens, window=self.chunk_size)
        result = outs if pool == "none" else vectors
        return result[0] if single else result


def load(path: str | os.PathLike, device: str | torch.device = "auto", dtype: str | torch.dtype = "fp32",
         batch_size: int = DEFAULT_BATCH_SIZE, max_tokens: int = DEFAULT_MAX_TOKENS,
         chunk_size: int | None = None) -> DnaLM:
    """Load a checkpoint (dnalm directory or HyenaDNA layout) for inference; see :class:`DnaLM`."""
    model, tokenizer = load_model(path, device, dtype)
    return DnaLM(model, tokenizer, batch_size=batch_size, max_tokens=max_tokens, chunk_size=chunk_size)
