"""Sampling sequences from prompts with step-by-step decoding.

Each prompt is prefilled once through the model's :class:`~dnalm.inference.state.InferenceState`;
after that every new token costs one single-token ``step`` (never a full recompute).

Sampling from the next-token logits ``l`` (V,) follows the usual order (Holtzman et al. 2020,
"The Curious Case of Neural Text Degeneration", for nucleus sampling):

1. ``acgt_only``: every id but A, C, G, T gets probability 0;
2. ``temperature`` T: ``l / T``; ``T = 0`` means greedy decoding (argmax, no randomness);
3. ``top_k`` k > 0: keep the k largest;
4. ``top_p`` p < 1: keep the smallest set of most likely tokens whose probability reaches p;
5. draw from the renormalised distribution by inverting its CDF with one uniform number.

Reported log-probabilities: for every generated token, ``log softmax(l)[token]`` of the model's
**unmodified** distribution (no temperature, top-k, top-p or A/C/G/T restriction), i.e. exactly
what :mod:`dnalm.inference.scoring` gives for that token of the finished sequence.

Batching and randomness: prompts (times ``n_samples``) are grouped by length. Rows of a batch
are prefilled up to the shortest prompt; longer prompts then feed their remaining tokens
through the same steps (teacher forcing) while shorter ones already sample. Each row draws its
uniform numbers from its own generator seeded by ``(seed, prompt index, sample index)``, so a
sample does not depend on which other prompts share its batch, and a fixed seed reproduces the
output. Prompt plus new tokens must fit the model's context (HyenaDNA's ``l_max``). With a
static-shape decoding step (``decode`` static, graph or compiled) the sampling itself runs on the
model's device from uniform numbers drawn beforehand from the same generators, so that no step
waits for the host; the host loop of the eager mode is its reference (the same tokens on the CPU).

API: ``generate(model, prompts, options) -> list[Generation]``; ``decode_loop(...)`` (one batch after its
prefill); ``sample_next(logits, options, generators)``; ``sample_at(logits, options, u)``; :class:`GenerationOptions`;
``prompt_ids(tokenizer, prompt, prepend_bos)``; ``check_acgt_tokenizer(tokenizer, acgt_only)``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from dnalm.errors import ConfigError
from dnalm.inference.chunked import context_length
from dnalm.inference.decode import MODES as DECODE_MODES
from dnalm.inference.decode import Stepper, resolve_mode
from dnalm.inference.scoring import encode_sequence
from dnalm.inference.state import InferenceState
from dnalm.models.blocks import CausalLM
from dnalm.tokenizers import A_ID, C_ID, G_ID, T_ID
from dnalm.utils import track

#: The ids of A, C, G, T in dnalm's character vocabulary (the default of ``GenerationOptions.acgt``).
ACGT_IDS = (A_ID, C_ID, G_ID, T_ID)


@dataclass(frozen=True)
class GenerationOptions:
    """Sampling options (see the module docstring).

    ``max_new_tokens`` per sample; ``temperature`` >= 0 (0 = greedy); ``top_k`` (0 = off);
    ``top_p`` in (0, 1] (1 = off); ``n_samples`` per prompt; ``seed``; ``acgt_only``: sample only the
    ids ``acgt`` (the model's alphabet: :func:`check_acgt_tokenizer` gives them for a tokenizer);
    ``batch_size`` rows decoded together; ``decode``: how each step runs (:mod:`dnalm.inference.decode`:
    auto, eager, static, graph, compiled).
    """

    max_new_tokens: int = 100
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    n_samples: int = 1
    seed: int = 0
    acgt_only: bool = True
    acgt: tuple[int, ...] = ACGT_IDS
    batch_size: int = 16
    decode: str = "auto"

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.decode not in DECODE_MODES:
            raise ConfigError(f"decode must be one of {', '.join(DECODE_MODES)}, got {self.decode!r}")
        if self.n_samples < 1 or self.batch_size < 1:
            raise ConfigError(f"n_samples and batch_size must be >= 1, got {self.n_samples} and {self.batch_size}")


@dataclass
class Generation:
    """One sample: ``token_ids`` (max_new_tokens,) after prompt ``prompt_index`` (its ``prompt_ids``),
    and ``log_probs`` (max_new_tokens,) float32 of those tokens under the unmodified model."""

    prompt_index: int
    sample: int
    prompt_ids: np.ndarray
    token_ids: np.ndarray
    log_probs: np.ndarray


def row_generator(seed: int, prompt_index: int, sample: int) -> torch.Generator:
    """The CPU generator of one sample, seeded from ``(seed, prompt_index, sample)``."""
    seed %= 2**64
    words = np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, prompt_index, sample]).generate_state(2)
    g = torch.Generator()
    g.manual_seed((int(words[0]) | (int(words[1]) << 32)) & 0x7FFFFFFFFFFFFFFF)
    return g


@functools.lru_cache(maxsize=16)
def _drop_mask(vocab: int, device: str, acgt: tuple[int, ...] = ACGT_IDS) -> Tensor:
    """(V,) bool, True for every id but ``acgt`` (A, C, G, T), made once per device (a copy from the host
    at every step would make each step wait for the previous one)."""
    drop = torch.ones(vocab, dtype=torch.bool)
    drop[list(acgt)] = False
    return drop.to(device)


def filter_logits(logits: Tensor, options: GenerationOptions) -> Tensor:
    """Steps 1-4 of the module docstring on logits (B, V) float32 -> masked, scaled logits (B, V)."""
    out = logits.clone()
    if options.acgt_only:
        out = out.masked_fill(_drop_mask(out.shape[-1], str(out.device), tuple(options.acgt)), float("-inf"))
    if options.temperature > 0:
        out = out / options.temperature
    if options.top_k > 0 and options.top_k < out.shape[-1]:
        kth = out.topk(options.top_k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if options.top_p < 1.0:
        probs, order = out.softmax(-1).sort(dim=-1, descending=True)
        before = probs.cumsum(-1) - probs  # mass of the more likely tokens
        drop_sorted = before >= options.top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


def sample_next(logits: Tensor, options: GenerationOptions, generators: Sequence[torch.Generator]) -> Tensor:
    """Next token of every row: logits (B, V) -> ids (B,) (on the CPU).

    Greedy for ``temperature == 0``; otherwise the inverse CDF of the filtered distribution at
    one uniform number drawn from the row's own generator.
    """
    u = None
    if options.temperature != 0:
        u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])
    return sample_at(logits.float().cpu(), options, u)


def sample_at(logits: Tensor, options: GenerationOptions, u: Tensor | None) -> Tensor:
    """Next token of every row from logits (B, V) float32 and uniform numbers u (B,) float64 (None when
    greedy), on the logits' device: steps 1-5 of the module docstring."""
    filtered = filter_logits(logits, options)
    if options.temperature == 0:
        return filtered.argmax(-1)
    probs = filtered.softmax(-1).double()
    cdf = probs.cumsum(-1)
    ids = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    last = probs.shape[-1] - 1 - (probs.flip(-1) > 0).to(torch.int8).argmax(-1)  # last id with p > 0
    return torch.minimum(ids, last)


def check_acgt_tokenizer(tokenizer: object, acgt_only: bool) -> tuple[int, ...]:
    """The ids of A, C, G, T in ``tokenizer``'s alphabet (dnalm's character ids without a tokenizer), to which
    ``acgt_only`` restricts sampling; a tokenizer without single-base tokens cannot."""
    if tokenizer is None:
        return ACGT_IDS
    try:
        return tuple(tokenizer.alphabet.acgt)
    except (ConfigError, AttributeError):
        if acgt_only:
            raise ConfigError(f"acgt_only=true needs one token per base, this model uses "
                              f"'{getattr(tokenizer, 'type', type(tokenizer).__name__)}' tokens (set acgt_only=false)"
                              ) from None
        return ACGT_IDS


def prompt_ids(tokenizer, prompt: str, prepend_bos: bool = False, where: str = "prompt") -> np.ndarray:
    """Token ids (n,) of a prompt; an empty prompt is allowed when it gets a ``[BOS]``."""
    if not prompt:
        return np.array([tokenizer.bos_id] if prepend_bos else [], dtype=np.int64)
    return encode_sequence(tokenizer, prompt, prepend_bos, where)


def _check_prompts(model: CausalLM, prompts: Sequence[np.ndarray], options: GenerationOptions) -> None:
    context = context_length(model)
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ConfigError(f"prompt {i} is empty: give at least one base or set prepend_bos=true")
        if context is not None and len(p) + options.max_new_tokens > context:
            raise ConfigError(f"prompt {i} ({len(p)} tokens) + max_new_tokens {options.max_new_tokens} exceed the "
                              f"model's context of {context} tokens")


@torch.inference_mode()
def _generate_batch(model: CausalLM, prompts: Sequence[np.ndarray], rows: Sequence[tuple[int, int]],
                    options: GenerationOptions) -> list[Generation]:
    device = model.lm_head.weight.device
    lengths = [len(prompts[p]) for p, _ in rows]
    B, start, end = len(rows), min(lengths), max(lengths) + options.max_new_tokens
    forced = np.zeros((B, end), dtype=np.int64)
    for b, (p, _) in enumerate(rows):
        forced[b, : lengths[b]] = prompts[p]
    generators = [row_generator(options.seed, p, s) for p, s in rows]
    state = model.allocate_state(B, end - 1)
    logits = model(torch.from_numpy(forced[:, :start]).to(device), state=state)[:, -1]  # (B, V)
    tokens, log_probs = decode_loop(model, state, logits, forced, lengths, generators, options)
    out = []
    for b, (p, s) in enumerate(rows):
        new = slice(lengths[b], lengths[b] + options.max_new_tokens)
        out.append(Generation(p, s, np.asarray(prompts[p], dtype=np.int64), tokens[b, new].copy(),
                              log_probs[b, new].copy()))
    return out


def decode_loop(model: CausalLM, state: InferenceState, logits: Tensor, forced: np.ndarray, lengths: list[int],
                generators: Sequence[torch.Generator], options: GenerationOptions) -> tuple[np.ndarray, np.ndarray]:
    """Tokens (B, end) and their log-probs (B, end) of one batch after its prefill: ``forced`` (B, end) holds the
    prompts (row b's first ``lengths[b]`` ids), ``logits`` (B, V) are the prefill's last, ``state`` is at the
    shortest prompt's end. The host loop for eager decoding, the device loop otherwise."""
    loop = _host_loop if resolve_mode(model, options.decode) == "eager" else _device_loop
    return loop(model, state, logits, forced, lengths, generators, options)


def _host_loop(model: CausalLM, state: InferenceState, logits: Tensor, forced: np.ndarray, lengths: list[int],
               generators: Sequence[torch.Generator], options: GenerationOptions) -> tuple[np.ndarray, np.ndarray]:
    """Tokens (B, end) and their log-probs of one batch, sampling on the host after every step (the
    reference loop). ``forced`` (B, end) holds the prompts; ``logits`` (B, V) are those after the prefill."""
    device = logits.device
    step = Stepper(model, state, options.decode)
    B, end = forced.shape
    tokens = forced.copy()
    log_probs = np.zeros((B, end), dtype=np.float32)
    for pos in range(min(lengths), end):
        host = logits.float().cpu()  # (B, V): the one device-to-host copy of a step
        lp = host.log_softmax(-1)  # unmodified distribution
        nxt = forced[:, pos].copy()
        free = np.flatnonzero([pos >= n for n in lengths])  # rows past their prompt draw a token
        if free.size:
            picked = host if free.size == B else host[torch.from_numpy(free)]
            nxt[free] = sample_next(picked, options, [generators[b] for b in free]).numpy()
        tokens[:, pos] = nxt
        log_probs[:, pos] = lp.gather(-1, torch.from_numpy(nxt)[:, None])[:, 0].numpy()
        if pos + 1 < end:
            logits = step(torch.from_numpy(nxt[:, None]).to(device))
    return tokens, log_probs


def _device_loop(model: CausalLM, state: InferenceState, logits: Tensor, forced: np.ndarray, lengths: list[int],
                 generators: Sequence[torch.Generator], options: GenerationOptions) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_host_loop` with sampling on the model's device: each row's uniform numbers are drawn
    beforehand (one per position past its prompt, in order: the numbers the host loop would draw), and
    each step's token is picked on the device at the step's offset (:class:`Stepper` ``pick``; in a graph
    mode, inside the step's graph), so no step waits for the host and the tokens and log-probs are copied
    back once at the end."""
    device = logits.device
    B, end = forced.shape
    free = np.arange(end)[None, :] >= np.asarray(lengths)[:, None]  # (B, end): positions a row samples
    u = np.zeros((B, end), dtype=np.float64)
    if options.temperature != 0:
        for b, g in enumerate(generators):
            n = int(free[b].sum())
            u[b, free[b]] = torch.rand(n, generator=g, dtype=torch.float64).numpy() if n else []
    forced_d = torch.from_numpy(forced).to(device)
    free_d, u_d = torch.from_numpy(free).to(device), torch.from_numpy(u).to(device)
    tokens = forced_d.clone()
    log_probs = torch.zeros(B, end, dtype=torch.float32, device=device)

    def pick(logits: Tensor, pos: Tensor) -> Tensor:
        """The token of position ``pos`` (a (1,) tensor) of every row from the logits before it, recorded."""
        def at(t: Tensor) -> Tensor:
            return t.index_select(1, pos)[:, 0]

        logits = logits.float()
        nxt = torch.where(at(free_d), sample_at(logits, options, at(u_d)), at(forced_d))
        tokens.index_copy_(1, pos, nxt[:, None])
        log_probs.index_copy_(1, pos, logits.log_softmax(-1).gather(-1, nxt[:, None]))
        return nxt[:, None]

    step = Stepper(model, state, options.decode, pick=pick)
    for _ in range(min(lengths), end - 1):
        logits = step(logits)
    pick(logits, torch.tensor([end - 1], device=device))  # the last token: no step after it
    return tokens.cpu().numpy(), log_probs.cpu().numpy()


def generate(model: CausalLM, prompts: Sequence[np.ndarray], options: GenerationOptions | None = None,
             progress: bool = False) -> list[Generation]:
    """``options.n_samples`` samples of ``options.max_new_tokens`` tokens after each prompt (ids (n_i,)).

    Returns the generations ordered by prompt, then sample. See the module docstring.
    """
    options = options or GenerationOptions()
    _check_prompts(model, prompts, options)
    rows = [(p, s) for p in range(len(prompts)) for s in range(options.n_samples)]
    rows.sort(key=lambda r: (len(prompts[r[0]]), r))
    batches = [rows[i: i + options.batch_size] for i in range(0, len(rows), options.batch_size)]
    it = track(batches, total=len(batches), desc="generating", unit="batch") if progress else batches
    results = []
    for batch in it:
        results.extend(_generate_batch(model, prompts, batch, options))
    results.sort(key=lambda g: (g.prompt_index, g.sample))
    return results
