"""The genome benchmark: one protocol for every model of a prepared genome, and its leaderboard.

Models are causal language models saved with :func:`dnalm.models.io.save_pretrained` (or any layout
:func:`~dnalm.models.io.load_pretrained` reads, or a saved :class:`~dnalm.models.markov.MarkovModel`),
plus the order-k Markov baseline, whose order is chosen on the validation split and whose counts come
from the train split (both strands; :func:`dnalm.models.markov.select_order`). Every task reads the
held-out split (``test`` by default), and every probability is the model's next-token distribution
renormalised over A, C, G, T: ``p(b | x_<t) = softmax(z_t[A, C, G, T])_b``, so a model is neither
rewarded nor penalised for mass on N or special tokens and all models share the four-letter alphabet
of the Markov chain.

Tasks
-----
(a) **Next-base prediction** (:func:`next_base_plan`, :func:`evaluate_next_base`). Windows of
    ``window`` bases overlap by ``min_context``: window ``j`` of an interval scores the targets
    ``[a_j, a_j + S)`` with ``S = window - min_context`` and ``a_j = start + min_context + j S``, and
    begins ``min_context`` bases before them (shifted left, never past the interval start, so that the
    last window ends flush with the interval). Every scored base therefore has at least ``min_context``
    preceding bases inside its window, every base of an interval after its first ``min_context`` is
    scored exactly once, and no window crosses a record or split boundary. With ``max_bases`` an
    evenly spaced subset of the windows is scored (at most ``max_bases`` targets). Only targets that
    are A, C, G or T are scored: an N target is skipped (it counts nowhere), while an N in the context
    is given to the model as the N token. Reported: bits per base ``mean(-log2 p(x_t | x_<t))``,
    accuracy of the most probable base, perplexity ``2 ** bits``, overall and per region class of the
    target (:data:`dnalm.genome.regions.REGION_CLASSES`).
(b) **Zero-shot promoter identification** (:func:`promoter_task`). Positive windows are the
    ``window`` bases upstream of annotated transcript starts (before the start on ``+``; after the end
    on ``-``, reverse complemented so that every window reads 5'->3' toward its transcript), on the
    held-out split, N-free, of which at least ``min_promoter_frac`` is labelled promoter in the region
    track (so windows swallowed by a neighbouring gene are left out). Background windows have the same
    length, lie in the same split, have at least ``min_background_frac`` intergenic bases, no N, a
    random strand, and a GC fraction within ``gc_tolerance`` of their promoter's (drawn without
    replacement; a promoter without a match is dropped). Scores: the log-likelihood
    ``sum_{t>=1} log2 p(x_t | x_<t)`` of the window, and its ratio to the Markov baseline
    ``LL_model - LL_markov``; AUROC with promoters as positives (below 0.5: promoters score lower).
(c) **Frozen-embedding probes** (:func:`probe_windows`, :func:`run_probe`). Windows drawn at random
    from the train and the held-out split, labelled by the majority region class of their bases (at
    least ``min_majority`` of them; no N), up to ``*_per_class`` per class; classes with fewer than
    ``min_per_class`` windows in either split are dropped. Features: the mean over positions of the
    hidden state of layer ``layer``; for the Markov baseline, the window's k-mer frequency profile
    (``kmer``). A multinomial logistic regression on standardised features (scikit-learn) is fitted on
    the train windows and scored on the held-out ones: MCC, macro-F1, one-vs-rest macro AUROC.
(d) **Generation** (:func:`generation_prompts`, :func:`cds_prompts`, :func:`sample`). Prompts of
    ``prompt_length`` real bases from the held-out split are continued by ``length`` bases sampled from
    the model (temperature, optional top-k over A/C/G/T) and compared with the real continuations: GC
    fraction of all continuation bases, and the Jensen–Shannon divergence in bits (the *divergence*,
    i.e. the square of SciPy's Jensen–Shannon distance, :func:`dnalm.evaluate.metrics.js_divergence`)
    between the pooled k-mer spectra of generated and real continuations for ``k = kmin .. kmax``.
    CDS prompts end inside an annotated CDS, oriented along the gene, exactly before a codon (from the
    CDS coordinates and phase). For them, the *in-frame stop rate* is the fraction of continuations
    holding a stop codon (TAA, TAG, TGA) among their whole codons read from the first base, for the
    generated and for the real continuations; the *stop agreement* is, among prompts whose real
    continuation holds a stop, the fraction of generated continuations whose first stop is at the same
    codon.
(e) A dataset card, the leaderboard (one row per model, the Markov baseline included) as CSV,
    Markdown and JSON, per-model ``metrics.json``, scores and generated sequences, plots, and the HTML
    report (:func:`dnalm.evaluate.report.write_report`).

Randomness (window draws, matching, sampling) is seeded by ``seed``; the task data are drawn once and
shared by every model.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dnalm.data.prepared import PreparedGenome
from dnalm.errors import ConfigError, InputError
from dnalm.evaluate.metrics import (
    LN2,
    NextBaseAccumulator,
    NextBaseMetrics,
    auroc,
    auroc_ci,
    base_codes,
    classification_metrics,
    first_in_frame_stop,
    gc_fraction_ids,
    js_divergence,
    kmer_counts,
)
from dnalm.genome.gff import CDS_TYPES, GENE_TYPES, Feature, is_transcript_type, read_gff3
from dnalm.genome.regions import CLASS_IDS, CLASS_MASK
from dnalm.models.markov import MarkovModel, select_order
from dnalm.tokenizers import A_ID, COMPLEMENT_IDS, CharTokenizer
from dnalm.utils import atomic_dir, json_safe, sha256_file, track

MARKOV_NAME = "markov"
_PROMOTER = CLASS_IDS["promoter"]
_INTERGENIC = CLASS_IDS["intergenic"]
_N_CLASS = CLASS_IDS["N"]


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


@dataclass
class MarkovSpec:
    """The Markov baseline: candidate ``orders`` (chosen on split ``split``), smoothing ``alpha``."""

    enabled: bool = True
    orders: list[int] = field(default_factory=lambda: list(range(1, 11)))
    alpha: float = 1.0
    split: str = "val"


@dataclass
class NextBaseSpec:
    """Task (a): ``window`` bases per forward, at least ``min_context`` bases before each scored one."""

    enabled: bool = True
    split: str = "test"
    window: int = 1024
    min_context: int = 512
    max_bases: int = 1_000_000
    min_class_bases: int = 1000  # region classes with fewer scored bases are left out of the chart and leaderboard


@dataclass
class PromoterSpec:
    """Task (b): promoter windows of ``window`` bases vs GC-matched intergenic background."""

    enabled: bool = True
    split: str = "test"
    window: int = 300
    max_promoters: int = 500
    min_promoter_frac: float = 0.5
    background_per_promoter: int = 1
    gc_tolerance: float = 0.02
    background_stride: int = 50
    min_background_frac: float = 1.0


@dataclass
class ProbeSpec:
    """Task (c): logistic-regression probes on mean-pooled embeddings of labelled windows."""

    enabled: bool = True
    train_split: str = "train"
    test_split: str = "test"
    window: int = 200
    train_per_class: int = 200
    test_per_class: int = 100
    min_majority: float = 0.5
    min_per_class: int = 5
    classes: list[str] = field(default_factory=list)
    layer: int = -1
    kmer: int = 4
    max_iter: int = 2000


@dataclass
class GenerationSpec:
    """Task (d): continuations of real prompts, compared with the real continuations."""

    enabled: bool = True
    split: str = "test"
    n_prompts: int = 64
    n_cds_prompts: int = 64
    prompt_length: int = 256
    length: int = 128
    temperature: float = 1.0
    top_k: int = 0
    kmin: int = 3
    kmax: int = 6


@dataclass
class BenchmarkSpec:
    """Every setting of the benchmark (the task nodes of ``conf/benchmark.yaml``)."""

    markov: MarkovSpec = field(default_factory=MarkovSpec)
    next_base: NextBaseSpec = field(default_factory=NextBaseSpec)
    promoters: PromoterSpec = field(default_factory=PromoterSpec)
    probes: ProbeSpec = field(default_factory=ProbeSpec)
    generation: GenerationSpec = field(default_factory=GenerationSpec)
    batch_size: int = 16
    device: str = "auto"
    seed: int = 0
    plots: bool = True
    tsne_points: int = 500
    logo_positions: int = 30

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad option."""
        nb, pr, pb, gen = self.next_base, self.promoters, self.probes, self.generation
        checks = [
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("next_base.window", nb.window >= 2, "must be >= 2"),
            ("next_base.min_context", 1 <= nb.min_context < nb.window, f"must lie in [1, window={nb.window})"),
            ("next_base.max_bases", nb.max_bases >= 1, "must be >= 1"),
            ("promoters.window", pr.window >= 2, "must be >= 2"),
            ("promoters.max_promoters", pr.max_promoters >= 1, "must be >= 1"),
            ("promoters.min_promoter_frac", 0.0 <= pr.min_promoter_frac <= 1.0, "must lie in [0, 1]"),
            ("promoters.min_background_frac", 0.0 <= pr.min_background_frac <= 1.0, "must lie in [0, 1]"),
            ("promoters.background_per_promoter", pr.background_per_promoter >= 1, "must be >= 1"),
            ("promoters.gc_tolerance", pr.gc_tolerance >= 0.0, "must be >= 0"),
            ("promoters.background_stride", pr.background_stride >= 1, "must be >= 1"),
            ("probes.window", pb.window >= 1, "must be >= 1"),
            ("probes.train_per_class", pb.train_per_class >= 2, "must be >= 2"),
            ("probes.test_per_class", pb.test_per_class >= 1, "must be >= 1"),
            ("probes.min_majority", 0.0 <= pb.min_majority <= 1.0, "must lie in [0, 1]"),
            ("probes.kmer", 1 <= pb.kmer <= 8, "must lie in [1, 8]"),
            ("generation.n_prompts", gen.n_prompts >= 0, "must be >= 0"),
            ("generation.n_cds_prompts", gen.n_cds_prompts >= 0, "must be >= 0"),
            ("generation.prompt_length", gen.prompt_length >= 1, "must be >= 1"),
            ("generation.length", gen.length >= 3, "must be >= 3"),
            ("generation.temperature", gen.temperature >= 0.0, "must be >= 0 (0: greedy)"),
            ("generation.top_k", 0 <= gen.top_k <= 4, "must lie in [0, 4] (0: no top-k)"),
            ("generation.kmin", 1 <= gen.kmin <= gen.kmax <= 8, "kmin <= kmax must lie in [1, 8]"),
            ("markov.alpha", self.markov.alpha > 0.0, "must be > 0"),
            ("markov.orders", bool(self.markov.orders) or not self.markov.enabled, "must not be empty"),
        ]
        for key, ok, why in checks:
            if not ok:
                raise ConfigError(f"benchmark: {key} {why}")
        unknown = [c for c in pb.classes if c not in CLASS_IDS or c == "N"]
        if unknown:
            names = ", ".join(c for c in CLASS_IDS if c != "N")
            raise ConfigError(f"benchmark: probes.classes: unknown class '{unknown[0]}' (classes: {names})")


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is passed to :class:`torch.device`."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"benchmark: device '{device}' is not a torch device ({exc})") from None


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


@dataclass
class BenchModel:
    """A model under test: a causal LM (``forward(ids (B, L)) -> logits (B, L, V)`` with CharTokenizer
    ids) or a :class:`MarkovModel`. ``context``: most tokens per forward (None: unlimited)."""

    name: str
    model: Any
    family: str
    context: int | None
    n_parameters: int
    path: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    tokenizer: Any = None

    @property
    def is_markov(self) -> bool:
        return isinstance(self.model, MarkovModel)

    @property
    def is_masked(self) -> bool:
        """A masked LM (DNABERT-2): no next-base distribution; scored by pseudo-log-likelihood."""
        return not self.is_markov and not getattr(self.model, "causal", True)

    def model_ids(self, ids: np.ndarray) -> np.ndarray:
        """Prepared-genome token ids (CharTokenizer's) -> the model's ids for the same bases (its tokenizer's
        alphabet: e.g. bytes for StripedHyena 2); unchanged for a character-level model."""
        table = _id_table(self.tokenizer)
        return np.asarray(ids) if table is None else table[np.asarray(ids, dtype=np.int64)]

    def base_columns(self) -> list[int]:
        """Vocabulary ids of A, C, G, T in the model's logits."""
        alphabet = getattr(self.tokenizer, "alphabet", None)
        return list(alphabet.acgt) if alphabet is not None else list(range(A_ID, A_ID + 4))


def _id_table(tokenizer: Any) -> np.ndarray | None:
    """Lookup table CharTokenizer id -> ``tokenizer``'s id (A, C, G, T and N; other ids to N), None when the
    ids agree."""
    from dnalm.tokenizers import N_ID

    alphabet = getattr(tokenizer, "alphabet", None)
    if alphabet is None or (tuple(alphabet.acgt) == tuple(range(A_ID, A_ID + 4)) and alphabet.n == N_ID):
        return None
    n = alphabet.n if alphabet.n is not None else alphabet.unk
    table = np.full(256, n if n is not None else alphabet.acgt[0], dtype=np.int64)
    table[A_ID: A_ID + 4] = alphabet.acgt
    return table


def wrap_model(model: Any, name: str, path: str | None = None, tokenizer: Any = None) -> BenchModel:
    """Describe a loaded LM (with its tokenizer; None: dnalm's character ids) or Markov model as a
    :class:`BenchModel` (LMs are put in eval mode)."""
    if isinstance(model, MarkovModel):
        return BenchModel(name, model, "markov", None, 3 * 4**model.order, path,
                          {"order": model.order, "alpha": model.alpha})
    from dnalm.inference.chunked import context_length

    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    context = context_length(model) if getattr(model, "causal", True) else None
    return BenchModel(name, model, getattr(model, "family", type(model).__name__), context, n_params,
                      path, tokenizer=tokenizer)


def load_model(path: str | os.PathLike, name: str | None = None, device: torch.device | str = "cpu") -> BenchModel:
    """Load a checkpoint directory (or weight file) or a saved Markov model for the benchmark.

    A causal model needs one token per base (the prepared genome's ids are translated to its tokenizer's:
    :meth:`BenchModel.model_ids`): a k-mer or BPE causal model is refused with :class:`ConfigError`. A masked
    model (DNABERT-2) keeps its own tokenizer (BPE) and runs the tasks that do not need a next-base
    distribution (:func:`evaluate_model`).
    """
    from dnalm.models.io import load_pretrained
    from dnalm.models.markov import CONFIG_FILE as MARKOV_CONFIG
    from dnalm.models.markov import FORMAT as MARKOV_FORMAT
    from dnalm.tokenizers import CharTokenizer

    p = Path(path)
    name = name or p.name.removesuffix(".safetensors") or "model"
    cfg = p / MARKOV_CONFIG if p.is_dir() else None
    if cfg is not None and cfg.is_file():
        try:
            fmt = json.loads(cfg.read_text()).get("format")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            fmt = None
        if fmt == MARKOV_FORMAT:
            return wrap_model(MarkovModel.load(p), name, str(p))
    from dnalm.models.io import checkpoint_tokenizer

    model = load_pretrained(p, map_location=device)
    tok = checkpoint_tokenizer(p, model, default=CharTokenizer())
    if getattr(model, "causal", True):
        try:
            _ = tok.alphabet
        except ConfigError:
            raise ConfigError(f"benchmark: model {p} uses a {type(tok).__name__}; the genome benchmark scores "
                              "a causal model base by base and needs one token per base") from None
    return wrap_model(model, name, str(p), tok)


def fit_markov(prepared: PreparedGenome, spec: MarkovSpec) -> BenchModel:
    """The Markov baseline: counts from the train split (both strands), order with the lowest bits per
    base on ``spec.split`` among ``spec.orders``."""
    orders = sorted(set(int(o) for o in spec.orders))
    if len(orders) > 1 and not prepared.intervals(spec.split):
        raise ConfigError(f"benchmark: markov.split '{spec.split}' is empty, so no Markov order can be chosen "
                          "(hold out a validation split, or give a single order: markov.orders=[6])")
    if len(orders) == 1:
        model = MarkovModel(orders[0], spec.alpha).fit_prepared(prepared, "train", both_strands=True)
        scores: dict[int, float] = {}
    else:
        model, scores = select_order(prepared, orders, split=spec.split, alpha=spec.alpha, both_strands=True)
    bm = wrap_model(model, MARKOV_NAME)
    bm.info["selection_bits_per_base"] = {str(k): v for k, v in scores.items()}
    bm.info["selection_split"] = spec.split
    return bm


def _check_context(bm: BenchModel, needed: int, what: str) -> None:
    if bm.context is not None and needed > bm.context:
        raise ConfigError(f"benchmark: {what} needs {needed} tokens per forward but model '{bm.name}' takes at "
                          f"most {bm.context} (lower the window or prompt lengths)")


def check_contexts(bm: BenchModel, spec: BenchmarkSpec) -> None:
    """Raise :class:`ConfigError` when an enabled task needs longer inputs than ``bm`` takes."""
    gen = spec.generation
    for on, needed, what in ((spec.next_base.enabled, spec.next_base.window, "next_base.window"),
                             (spec.promoters.enabled, spec.promoters.window, "promoters.window"),
                             (spec.probes.enabled, spec.probes.window, "probes.window"),
                             (gen.enabled, gen.prompt_length + gen.length, "generation.prompt_length + length")):
        if on:
            _check_context(bm, needed, what)


def next_log_probs(bm: BenchModel, ids: np.ndarray) -> np.ndarray:
    """Natural-log probabilities of the next base: token ids ``(B, L)`` -> ``(B, L, 4)`` float64.

    ``out[b, t]`` is ``log p(x_{t+1} = A, C, G, T | x_0 .. x_t)`` of row ``b``, renormalised over the four
    bases; contexts never reach before the row. The Markov baseline is computed in float64.
    """
    ids = np.asarray(ids)
    if bm.is_markov:
        out = np.empty(ids.shape + (4,), dtype=np.float64)
        for b, row in enumerate(ids):
            out[b] = bm.model.log_probs(np.append(row.astype(np.uint8), np.uint8(A_ID)))[1:]
        return out
    param = next(iter(bm.model.parameters()), None)
    with torch.inference_mode():
        x = torch.from_numpy(bm.model_ids(ids).astype(np.int64)).to(param.device if param is not None else "cpu")
        logits = bm.model(x)[..., bm.base_columns()].float()
        return torch.log_softmax(logits, dim=-1).double().cpu().numpy()


def _gather(array: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """Rows ``array[s : s + length]`` for every start: ``(N, length)`` uint8."""
    if len(starts) == 0:
        return np.zeros((0, length), dtype=np.uint8)
    return np.array(np.lib.stride_tricks.sliding_window_view(array, length)[np.asarray(starts, np.int64)])


def _batches(n: int, size: int) -> list[np.ndarray]:
    return [np.arange(a, min(n, a + size)) for a in range(0, n, size)]


# ---------------------------------------------------------------------------------------------
# (a) next-base prediction
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowPlan:
    """Windows of task (a): ``starts`` (W,) global offsets in ``tokens.u8``, ``lengths`` (W,) tokens per
    window, and the scored target offsets ``[score_from, score_to)`` (W,) within each window."""

    starts: np.ndarray
    lengths: np.ndarray
    score_from: np.ndarray
    score_to: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def n_targets(self) -> int:
        """Targets in the scored ranges (N targets among them are skipped when scoring)."""
        return int((self.score_to - self.score_from).sum())

    def positions(self) -> np.ndarray:
        """Global positions of the scored targets, window by window: ``(n_targets,)`` int64."""
        parts = [np.arange(s + a, s + b) for s, a, b in zip(self.starts, self.score_from, self.score_to)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def next_base_plan(prepared: PreparedGenome, split: str, window: int, min_context: int,
                   max_bases: int | None = None) -> WindowPlan:
    """Plan the windows of task (a) on ``split`` (see the module docstring)."""
    if not 1 <= min_context < window:
        raise ConfigError(f"benchmark: next_base.min_context={min_context} must lie in [1, window={window})")
    S = window - min_context
    parts: list[tuple[np.ndarray, ...]] = []
    for iv in prepared.intervals(split):
        if iv.length <= min_context:
            continue
        a = np.arange(iv.start + min_context, iv.end, S, dtype=np.int64)
        b = np.minimum(a + S, iv.end)
        ws = np.maximum(np.minimum(a - min_context, iv.end - window), iv.start)
        we = np.minimum(ws + window, iv.end)
        parts.append((ws, we - ws, a - ws, b - ws))
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return WindowPlan(empty, empty, empty, empty)
    starts, lengths, lo, hi = (np.concatenate([p[i] for p in parts]) for i in range(4))
    if max_bases is not None and int((hi - lo).sum()) > max_bases:
        n = max(1, min(len(starts), max_bases // S))
        keep = np.unique(np.round(np.linspace(0, len(starts) - 1, n)).astype(np.int64))
        starts, lengths, lo, hi = starts[keep], lengths[keep], lo[keep], hi[keep]
    return WindowPlan(starts, lengths, lo, hi)


def evaluate_next_base(bm: BenchModel, prepared: PreparedGenome, plan: WindowPlan, batch_size: int = 16
                       ) -> NextBaseMetrics:
    """Bits per base, accuracy and perplexity of ``bm`` on the targets of ``plan`` (A/C/G/T targets only)."""
    acc = NextBaseAccumulator()
    if len(plan):
        _check_context(bm, int(plan.lengths.max()), "next_base.window")
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(plan.lengths.tolist()):
        groups.setdefault(n, []).append(i)
    batches = [np.asarray(idx[a:a + batch_size]) for n, idx in groups.items()
               for a in range(0, len(idx), batch_size)]
    for idx in track(batches, desc=f"{bm.name}: next base", unit="batch"):
        L = int(plan.lengths[idx[0]])
        tok = _gather(prepared.tokens, plan.starts[idx], L)
        reg = _gather(prepared.regions, plan.starts[idx], L)
        lp = next_log_probs(bm, tok)[:, :-1]  # (B, L-1, 4): predicts offsets 1 .. L-1
        code = base_codes(tok[:, 1:])
        offs = np.arange(1, L)[None, :]
        mask = (offs >= plan.score_from[idx, None]) & (offs < plan.score_to[idx, None]) & (code >= 0)
        picked = np.take_along_axis(lp, np.maximum(code, 0)[..., None], axis=-1)[..., 0]
        bits = -picked[mask] / LN2
        correct = (np.argmax(lp, axis=-1) == code)[mask]
        windows = np.broadcast_to(np.asarray(idx)[:, None], mask.shape)[mask]
        acc.add(bits, correct, reg[:, 1:][mask] & CLASS_MASK, windows)
    return acc.result(prepared.region_classes)


# ---------------------------------------------------------------------------------------------
# Annotation
# ---------------------------------------------------------------------------------------------


def read_annotations(prepared: PreparedGenome, check_sha256: bool = True) -> dict[str, list[Feature]]:
    """GFF3 features per prepared record name, from the annotations named in the manifest.

    Record names of a blend (``<genome>:<record>``) are matched to the GFF3 seqids of their genome.
    Genomes without an annotation contribute nothing. A missing annotation file, or one whose SHA-256
    differs from the manifest's, raises :class:`InputError`.
    """
    manifest_file = prepared.path / "manifest.json"
    genomes = prepared.manifest.get("genomes", []) or []
    blend = len(genomes) > 1
    out: dict[str, list[Feature]] = {}
    for g in genomes:
        path = g.get("annotation")
        if not path:
            continue
        file = Path(path)
        if not file.is_file():
            raise InputError(f"{manifest_file}: annotation '{path}' of genome '{g.get('name')}' not found "
                             "(the benchmark reads transcript starts and CDS phases from it)")
        want = g.get("annotation_sha256")
        if check_sha256 and want and sha256_file(file) != want:
            raise InputError(f"{file}: its SHA-256 differs from the one recorded in {manifest_file} "
                             "(the annotation changed since 'dnalm prepare'; prepare again)")
        annotation = read_gff3(file)
        for seqid in annotation.seqids:
            rec = f"{g.get('name')}:{seqid}" if blend else seqid
            if rec in prepared.records:
                out[rec] = annotation.on(seqid)
    return out


def transcript_starts(features: Sequence[Feature]) -> list[tuple[int, str]]:
    """Transcript starts ``(position, strand)`` of one record's features, sorted and without duplicates.

    Transcripts are features of a transcript type (mRNA, tRNA, ncRNA, ...) and genes without transcript
    children. ``position`` is the 0-based first base on ``+`` and the exclusive end on ``-``; features
    without a strand are skipped.
    """
    has_transcript = {p for f in features if is_transcript_type(f.type) for p in f.parents}
    out = set()
    for f in features:
        if f.strand not in ("+", "-"):
            continue
        if is_transcript_type(f.type) or (f.type in GENE_TYPES and (f.id is None or f.id not in has_transcript)):
            out.add((f.start, "+") if f.strand == "+" else (f.end, "-"))
    return sorted(out)


def _split_intervals(prepared: PreparedGenome, split: str) -> dict[str, list[tuple[int, int]]]:
    """Record -> global ``(start, end)`` intervals of ``split``."""
    out: dict[str, list[tuple[int, int]]] = {}
    for iv in prepared.intervals(split):
        out.setdefault(iv.record, []).append((iv.start, iv.end))
    return out


def _inside(intervals: Sequence[tuple[int, int]], start: int, end: int) -> bool:
    return any(s <= start and end <= e for s, e in intervals)


def _oriented(ids: np.ndarray, strands: np.ndarray) -> np.ndarray:
    """Rows ``(N, L)`` of ids with those on strand ``-`` reverse complemented."""
    out = ids.copy()
    minus = np.asarray(strands) == "-"
    if minus.any():
        out[minus] = COMPLEMENT_IDS[ids[minus][:, ::-1]]
    return out


# ---------------------------------------------------------------------------------------------
# (b) promoters vs background
# ---------------------------------------------------------------------------------------------


@dataclass
class ElementWindows:
    """Windows of task (b): ``ids`` (N, W) uint8 oriented 5'->3', ``label`` (N,) 1 promoter / 0 background,
    ``record`` (N,), ``start`` (N,) record coordinate of the window's leftmost base, ``strand`` (N,),
    ``gc`` (N,), ``match`` (N,) the row of the promoter a background window was matched to (-1 on
    promoter rows); ``info`` counts what was found and dropped."""

    ids: np.ndarray
    label: np.ndarray
    record: np.ndarray
    start: np.ndarray
    strand: np.ndarray
    gc: np.ndarray
    match: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def _window_stats(prepared: PreparedGenome, starts: np.ndarray, W: int, classes: Sequence[int]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per window of ``W`` bases: fraction of bases in ``classes``, number of N, GC fraction: ``(N,)`` each."""
    tok = _gather(prepared.tokens, starts, W)
    cls = _gather(prepared.regions, starts, W) & CLASS_MASK
    frac = np.isin(cls, list(classes)).mean(axis=1) if len(starts) else np.zeros(0)
    n_count = (base_codes(tok) < 0).sum(axis=1)
    gc = np.array([gc_fraction_ids(r) for r in tok]) if len(starts) else np.zeros(0)
    return frac, n_count, gc


def _prefix(x: np.ndarray) -> np.ndarray:
    """Prefix sums ``(n + 1,)`` int64 of ``(n,)`` values, starting at 0."""
    return np.concatenate([[0], np.cumsum(x, dtype=np.int64)])


def _background_candidates(prepared: PreparedGenome, split: str, W: int, stride: int, min_frac: float,
                           chunk: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
    """Global starts ``(M,)`` and GC fractions ``(M,)`` of N-free windows with at least ``min_frac``
    intergenic bases, every ``stride`` bases of ``split`` (prefix sums, in chunks of ``chunk`` bases)."""
    starts_out, gc_out = [], []
    for iv in prepared.intervals(split):
        if iv.length < W:
            continue
        s_all = np.arange(iv.start, iv.end - W + 1, stride, dtype=np.int64)
        for a in range(0, len(s_all), max(1, chunk // stride)):
            s = s_all[a:a + max(1, chunk // stride)]
            lo, hi = int(s[0]), int(s[-1]) + W
            tok = np.asarray(prepared.tokens[lo:hi])
            cls = np.asarray(prepared.regions[lo:hi]) & CLASS_MASK
            code = base_codes(tok)
            inter, n_bad, gc = _prefix(cls == _INTERGENIC), _prefix(code < 0), _prefix((code == 1) | (code == 2))
            r = s - lo
            frac = (inter[r + W] - inter[r]) / W
            ok = (frac >= min_frac - 1e-12) & (n_bad[r + W] - n_bad[r] == 0)
            starts_out.append(s[ok])
            gc_out.append((gc[r + W] - gc[r])[ok] / W)
    if not starts_out:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    return np.concatenate(starts_out), np.concatenate(gc_out)


def promoter_task(prepared: PreparedGenome, annotations: Mapping[str, Sequence[Feature]], spec: PromoterSpec,
                  seed: int = 0) -> ElementWindows:
    """Promoter windows and GC-matched background windows of ``spec.split`` (module docstring, task (b))."""
    rng = np.random.default_rng([seed, 2])
    W = spec.window
    where = _split_intervals(prepared, spec.split)
    cand_rec, cand_start, cand_strand = [], [], []
    n_tss = 0
    for rec, feats in annotations.items():
        if rec not in where:
            continue
        offset, length = prepared.record(rec).offset, prepared.record(rec).length
        for pos, strand in transcript_starts(feats):
            lo = pos - W if strand == "+" else pos
            if lo < 0 or lo + W > length:
                continue
            n_tss += 1
            if _inside(where[rec], offset + lo, offset + lo + W):
                cand_rec.append(rec)
                cand_start.append(offset + lo)
                cand_strand.append(strand)
    g_start = np.asarray(cand_start, dtype=np.int64)
    frac, n_count, gc = _window_stats(prepared, g_start, W, [_PROMOTER])
    keep = (frac >= spec.min_promoter_frac - 1e-12) & (n_count == 0)
    info: dict[str, Any] = {"transcript_starts": n_tss, "in_split": len(g_start), "promoter_windows": int(keep.sum())}
    idx = np.flatnonzero(keep)
    if len(idx) > spec.max_promoters:
        idx = np.sort(rng.choice(idx, spec.max_promoters, replace=False))
    bg_start, bg_gc = _background_candidates(prepared, spec.split, W, spec.background_stride,
                                             spec.min_background_frac)
    info["background_candidates"] = len(bg_start)
    order = np.argsort(bg_gc, kind="stable")
    bg_start, bg_gc = bg_start[order], bg_gc[order]
    used = np.zeros(len(bg_start), dtype=bool)
    pos_sel, neg_sel, neg_of = [], [], []
    for i in rng.permutation(idx):
        lo = np.searchsorted(bg_gc, gc[i] - spec.gc_tolerance - 1e-12, side="left")
        hi = np.searchsorted(bg_gc, gc[i] + spec.gc_tolerance + 1e-12, side="right")
        free = lo + np.flatnonzero(~used[lo:hi])
        if len(free) < spec.background_per_promoter:
            continue
        pick = rng.choice(free, spec.background_per_promoter, replace=False)
        used[pick] = True
        pos_sel.append(i)
        neg_sel.extend(pick.tolist())
        neg_of.extend([i] * len(pick))
    info["dropped_without_match"] = len(idx) - len(pos_sel)
    pos_sel_a = np.sort(np.asarray(pos_sel, dtype=np.int64))
    neg_sel_a = np.asarray(neg_sel, dtype=np.int64)
    neg_strand = np.where(rng.random(len(neg_sel_a)) < 0.5, "+", "-")
    starts = np.concatenate([g_start[pos_sel_a], bg_start[neg_sel_a]]).astype(np.int64)
    strands = np.concatenate([np.asarray(cand_strand, dtype=object)[pos_sel_a] if len(pos_sel_a)
                              else np.zeros(0, dtype=object), neg_strand.astype(object)])
    records = record_of(prepared, starts)
    ids = _oriented(_gather(prepared.tokens, starts, W), strands)
    label = np.concatenate([np.ones(len(pos_sel_a), np.int64), np.zeros(len(neg_sel_a), np.int64)])
    local = starts - np.array([prepared.record(r).offset for r in records], dtype=np.int64)
    gcs = np.concatenate([gc[pos_sel_a], bg_gc[neg_sel_a]]) if len(starts) else np.zeros(0)
    row_of = {int(i): r for r, i in enumerate(pos_sel_a)}
    match = np.concatenate([np.full(len(pos_sel_a), -1, np.int64),
                            np.array([row_of[i] for i in neg_of], dtype=np.int64)])
    info["promoters"] = int(label.sum())
    info["backgrounds"] = int((label == 0).sum())
    return ElementWindows(ids, label, records, local, strands, gcs, match, info)


def record_of(prepared: PreparedGenome, positions: np.ndarray) -> np.ndarray:
    """Names of the records holding global positions ``(N,)`` of ``tokens.u8``: ``(N,)`` object array."""
    names = list(prepared.records)
    offsets = np.array([prepared.records[n].offset for n in names], dtype=np.int64)
    idx = np.searchsorted(offsets, np.asarray(positions, dtype=np.int64), side="right") - 1
    return np.asarray(names, dtype=object)[idx] if len(idx) else np.zeros(0, dtype=object)


def sequence_log_likelihood(bm: BenchModel, ids: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """``sum_{t>=1} log2 p(x_t | x_<t)`` of each row of ``ids`` ``(N, W)`` over its A/C/G/T targets: ``(N,)`` bits."""
    ids = np.asarray(ids)
    out = np.zeros(len(ids), dtype=np.float64)
    if bm.is_masked:
        return pseudo_log_likelihood_bits(bm, ids, batch_size)
    if len(ids):
        _check_context(bm, ids.shape[1], "promoters.window")
    for idx in track(_batches(len(ids), batch_size), desc=f"{bm.name}: windows", unit="batch"):
        lp = next_log_probs(bm, ids[idx])[:, :-1]
        code = base_codes(ids[idx, 1:])
        picked = np.take_along_axis(lp, np.maximum(code, 0)[..., None], axis=-1)[..., 0]
        out[idx] = np.where(code >= 0, picked, 0.0).sum(axis=1) / LN2
    return out


def _texts(ids: np.ndarray) -> list[str]:
    return [CharTokenizer().decode(np.asarray(row, dtype=np.int64)) for row in ids]


def pseudo_log_likelihood_bits(bm: BenchModel, ids: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """A masked LM's pseudo-log-likelihood (:func:`dnalm.inference.masked.pseudo_log_likelihoods`) of each row of
    ``ids`` ``(N, W)`` (prepared-genome ids, decoded to bases and encoded with the model's tokenizer), in bits:
    ``(N,)``. The promoter task's score for a masked model."""
    from dnalm.inference.masked import encode_tokens, pseudo_log_likelihoods

    rows = [encode_tokens(bm.tokenizer, t).ids for t in _texts(ids)]
    lps = pseudo_log_likelihoods(bm.model, rows, bm.tokenizer.alphabet, batch_size=batch_size)
    return np.array([np.nansum(lp) for lp in lps], dtype=np.float64) / LN2


# ---------------------------------------------------------------------------------------------
# (c) embedding probes
# ---------------------------------------------------------------------------------------------


def probe_windows(prepared: PreparedGenome, split: str, window: int, per_class: int, min_majority: float,
                  classes: Sequence[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random N-free windows of ``split`` labelled by their majority region class.

    Returns global starts ``(N,)`` int64 and labels ``(N,)`` int64 (class ids among ``classes``), at most
    ``per_class`` per class, each window's majority class covering at least ``min_majority`` of it.
    """
    ivs = [iv for iv in prepared.intervals(split) if iv.length >= window]
    if not ivs:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([seed, 3, sum(map(ord, split))])
    counts = np.array([iv.length - window + 1 for iv in ivs], dtype=np.int64)
    total = int(counts.sum())
    pool = int(min(total, max(2000, 40 * per_class * max(1, len(classes))), 200_000))
    flat = np.sort(rng.choice(total, pool, replace=False)) if pool < total else np.arange(total)
    cum = np.concatenate([[0], np.cumsum(counts)])
    which = np.searchsorted(cum, flat, side="right") - 1
    starts = np.array([iv.start for iv in ivs], dtype=np.int64)[which] + (flat - cum[which])
    starts = starts[rng.permutation(len(starts))]
    labels = np.full(len(starts), -1, dtype=np.int64)
    for idx in _batches(len(starts), 4096):
        cls = _gather(prepared.regions, starts[idx], window) & CLASS_MASK
        n_per = np.stack([(cls == c).sum(axis=1) for c in range(_N_CLASS + 1)], axis=1)
        best = n_per.argmax(axis=1)
        ok = (n_per[:, _N_CLASS] == 0) & (n_per.max(axis=1) >= min_majority * window - 1e-9)
        labels[idx] = np.where(ok, best, -1)
    keep = []
    for c in classes:
        keep.extend(np.flatnonzero(labels == c)[:per_class].tolist())
    keep_a = np.sort(np.asarray(keep, dtype=np.int64))
    return starts[keep_a], labels[keep_a]


def embed_windows(bm: BenchModel, ids: np.ndarray, layer: int = -1, kmer: int = 4, batch_size: int = 16
                  ) -> np.ndarray:
    """Mean-pooled hidden states of layer ``layer`` (:func:`dnalm.inference.embed.embed_pooled`): ids ``(N, P)``
    -> ``(N, D)`` float64.

    The Markov baseline has no hidden states: its features are each window's k-mer frequencies
    ``(N, 4**kmer)`` (k-mer counts over the window divided by their sum).
    """
    ids = np.asarray(ids)
    if bm.is_markov:
        feats = np.stack([kmer_counts([row], kmer) for row in ids]).astype(np.float64) if len(ids) else \
            np.zeros((0, 4**kmer))
        return feats / np.maximum(feats.sum(axis=1, keepdims=True), 1.0)
    from dnalm.inference.embed import embed_pooled

    if bm.is_masked:
        from dnalm.inference.masked import embed_masked, encode_tokens

        rows = [encode_tokens(bm.tokenizer, t) for t in _texts(ids)]
        return embed_masked(bm.model, rows, bm.model._layer_indices([layer])[0], "mean",
                            bm.tokenizer.alphabet.pad or 0, batch_size=batch_size).astype(np.float64)
    _check_context(bm, ids.shape[1], "probes.window")
    rows = [bm.model_ids(row).astype(np.int64) for row in ids]
    return embed_pooled(bm.model, rows, layer, "mean", batch_size=batch_size).astype(np.float64)


@dataclass
class ProbeResult:
    """Held-out metrics of a probe and the class names of its labels."""

    mcc: float
    macro_f1: float
    auroc: float
    accuracy: float
    classes: list[str]
    n_train: int
    n_test: int


def run_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
              class_names: Sequence[str], max_iter: int = 2000, seed: int = 0) -> tuple[ProbeResult, np.ndarray]:
    """Fit standardisation + multinomial logistic regression on ``(N, D)`` train features and labels; score
    the test features. Returns the metrics and the test class probabilities ``(M, C)``."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_train, y_train)
        proba = clf.predict_proba(x_test)
    classes = clf.classes_
    m = classification_metrics(y_test, proba, classes)
    names = [class_names[int(c)] for c in classes]
    return ProbeResult(m["mcc"], m["macro_f1"], m["auroc"], m["accuracy"], names, len(y_train), len(y_test)), proba


# ---------------------------------------------------------------------------------------------
# (d) generation
# ---------------------------------------------------------------------------------------------


def generation_prompts(prepared: PreparedGenome, split: str, n: int, prompt_length: int, length: int,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` N-free prompts ``(n', P)`` and their real continuations ``(n', G)`` (forward strand) at random
    positions of ``split`` (fewer when the split has too few places)."""
    span = prompt_length + length
    ivs = [iv for iv in prepared.intervals(split) if iv.length >= span]
    if not ivs or n == 0:
        return np.zeros((0, prompt_length), np.uint8), np.zeros((0, length), np.uint8)
    rng = np.random.default_rng([seed, 4])
    counts = np.array([iv.length - span + 1 for iv in ivs], dtype=np.int64)
    cum = np.concatenate([[0], np.cumsum(counts)])
    flat = rng.choice(int(cum[-1]), min(int(cum[-1]), 8 * n), replace=False)
    which = np.searchsorted(cum, flat, side="right") - 1
    starts = np.array([iv.start for iv in ivs], dtype=np.int64)[which] + (flat - cum[which])
    rows = _gather(prepared.tokens, starts, span)
    rows = rows[(base_codes(rows) >= 0).all(axis=1)][:n]
    return rows[:, :prompt_length], rows[:, prompt_length:]


def cds_prompts(prepared: PreparedGenome, annotations: Mapping[str, Sequence[Feature]], split: str, n: int,
                prompt_length: int, length: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Prompts ending inside an annotated CDS, exactly before a codon, oriented along the gene.

    A CDS feature ``[s, e)`` of phase ``phi`` has codons starting at ``s + phi + 3m`` on ``+`` (read
    rightwards) and at ``e - 1 - phi - 3m`` on ``-`` (read leftwards on the complement). One codon per
    chosen feature is drawn such that the prompt's last base and the whole first codon of the
    continuation lie in the feature, and prompt + continuation lie in one interval of ``split`` without N.
    Returns prompts ``(n', P)`` and real continuations ``(n', G)`` (minus-strand ones reverse complemented).
    """
    rng = np.random.default_rng([seed, 5])
    where = _split_intervals(prepared, split)
    cds = [(rec, f) for rec, feats in annotations.items() if rec in where for f in feats
           if f.type in CDS_TYPES and f.strand in ("+", "-") and len(f) >= 6]
    P, G = prompt_length, length
    prompts, conts = [], []
    for j in rng.permutation(len(cds)) if n else []:
        rec, f = cds[j]
        off = prepared.record(rec).offset
        phi = f.phase or 0
        if f.strand == "+":
            # continuation starts at codon c (first codon base) with s < c and c + 3 <= e
            first = f.start + phi
            codons = np.arange(first, f.end - 2, 3)
            codons = codons[codons > f.start]
            lo_of = codons - P
        else:
            # codon occupies p-2..p on the genome, read on the complement; prompt is p+1 .. p+P
            first = f.end - 1 - phi
            codons = np.arange(first, f.start + 1, -3)
            codons = codons[(codons + 1 <= f.end - 1) & (codons - 2 >= f.start)]
            lo_of = codons + 1 - G
        if not len(codons):
            continue
        k = int(rng.integers(len(codons)))
        lo = off + int(lo_of[k])
        if not _inside(where[rec], lo, lo + P + G):
            continue
        row = np.asarray(prepared.tokens[lo:lo + P + G])
        if (base_codes(row) < 0).any():
            continue
        if f.strand == "-":
            row = COMPLEMENT_IDS[row[::-1]]
        prompts.append(row[:P])
        conts.append(row[P:])
        if len(prompts) >= n:
            break
    if not prompts:
        return np.zeros((0, P), np.uint8), np.zeros((0, G), np.uint8)
    return np.stack(prompts).astype(np.uint8), np.stack(conts).astype(np.uint8)


def sample(bm: BenchModel, prompts: np.ndarray, length: int, temperature: float = 1.0, top_k: int = 0,
           seed: int = 0, batch_size: int = 16) -> np.ndarray:
    """Continue each prompt ``(B, P)`` by ``length`` bases drawn from A/C/G/T: ``(B, length)`` uint8.

    Causal LMs decode step by step through :func:`dnalm.inference.generate.generate`; the Markov baseline
    draws from its conditional of the last ``k`` bases with the same sampler
    (:func:`~dnalm.inference.generate.sample_next`, one generator per prompt seeded by ``(seed, prompt)``).
    ``temperature`` 0 is greedy decoding.
    """
    from dnalm.inference.generate import GenerationOptions, generate, row_generator, sample_next

    prompts = np.asarray(prompts)
    if not len(prompts):
        return np.zeros((0, length), dtype=np.uint8)
    _check_context(bm, prompts.shape[1] + length, "generation.prompt_length + generation.length")
    options = GenerationOptions(max_new_tokens=length, temperature=temperature, top_k=top_k, seed=seed,
                                acgt_only=True, batch_size=batch_size)
    if not bm.is_markov:
        table = _id_table(bm.tokenizer)
        if table is not None:
            options = replace(options, acgt=tuple(bm.base_columns()))
        out = generate(bm.model, [bm.model_ids(row).astype(np.int64) for row in prompts], options, progress=True)
        new = np.stack([g.token_ids for g in out]).astype(np.int64)
        if table is not None:  # back to the prepared genome's ids
            back = np.full(max(int(new.max()) + 1, 256), A_ID, dtype=np.int64)
            back[list(bm.base_columns())] = np.arange(A_ID, A_ID + 4)
            new = back[new]
        return new.astype(np.uint8)
    k = max(1, bm.model.order)
    seq = prompts.astype(np.int64)
    generators = [row_generator(seed, i, 0) for i in range(len(seq))]
    for _ in track(range(length), desc=f"{bm.name}: generate", unit="base"):
        logits = torch.from_numpy(np.asarray(bm.model.forward(seq[:, -k:]))[:, -1])  # (B, V)
        seq = np.concatenate([seq, sample_next(logits, options, generators).numpy()[:, None]], axis=1)
    return seq[:, prompts.shape[1]:].astype(np.uint8)


def generation_metrics(generated: np.ndarray, real: np.ndarray, kmin: int = 3, kmax: int = 6) -> dict[str, float]:
    """GC of generated and real continuations ``(N, G)`` (pooled bases) and k-mer JS divergences (bits)."""
    gen_gc, real_gc = gc_fraction_ids(generated), gc_fraction_ids(real)
    out = {"gc_generated": gen_gc, "gc_real": real_gc, "gc_abs_diff": abs(gen_gc - real_gc),
           "n_prompts": len(generated)}
    for k in range(kmin, kmax + 1):
        out[f"js_k{k}"] = js_divergence(kmer_counts(generated, k), kmer_counts(real, k))
    return out


def cds_stop_metrics(generated: np.ndarray, real: np.ndarray) -> dict[str, float]:
    """In-frame stop rates of generated and real CDS continuations ``(N, G)`` and the stop agreement."""
    g = np.array([first_in_frame_stop(r) for r in generated], dtype=np.int64)
    r = np.array([first_in_frame_stop(x) for x in real], dtype=np.int64)
    has_real = r >= 0
    return {
        "n_cds_prompts": len(g),
        "stop_rate_generated": float((g >= 0).mean()) if len(g) else math.nan,
        "stop_rate_real": float(has_real.mean()) if len(r) else math.nan,
        "stop_agreement": float((g[has_real] == r[has_real]).mean()) if has_real.any() else math.nan,
        "n_real_with_stop": int(has_real.sum()),
    }


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------


@dataclass
class TaskData:
    """Everything drawn from the genome once and shared by the models."""

    plan: WindowPlan | None = None
    elements: ElementWindows | None = None
    probe_train: tuple[np.ndarray, np.ndarray] | None = None  # starts, labels
    probe_test: tuple[np.ndarray, np.ndarray] | None = None
    prompts: tuple[np.ndarray, np.ndarray] | None = None  # prompts, real continuations
    cds: tuple[np.ndarray, np.ndarray] | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class ModelResult:
    """Everything measured for one model (``None`` where a task did not run)."""

    name: str
    family: str
    n_parameters: int
    context: int | None
    path: str | None
    info: dict[str, Any]
    next_base: NextBaseMetrics | None = None
    promoters: dict[str, Any] | None = None
    probes: ProbeResult | None = None
    generation: dict[str, Any] | None = None
    cds: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.name, "family": self.family, "parameters": self.n_parameters,
                "context": self.context, "path": self.path, "info": self.info,
                "next_base": self.next_base.to_dict() if self.next_base else None,
                "promoters": self.promoters, "probes": asdict(self.probes) if self.probes else None,
                "generation": self.generation, "cds_generation": self.cds}


def prepare_tasks(prepared: PreparedGenome, spec: BenchmarkSpec,
                  annotations: Mapping[str, Sequence[Feature]] | None = None) -> TaskData:
    """Draw the windows, element sets and prompts of every enabled task (once, for all models)."""
    data = TaskData()
    if annotations is None:
        annotations = read_annotations(prepared)
    nb, pr, pb, gen = spec.next_base, spec.promoters, spec.probes, spec.generation
    for which, on in ((nb.split, nb.enabled), (pr.split, pr.enabled), (pb.train_split, pb.enabled),
                      (pb.test_split, pb.enabled), (gen.split, gen.enabled)):
        if on:
            prepared.intervals(which)  # unknown split names fail here
    if nb.enabled:
        data.plan = next_base_plan(prepared, nb.split, nb.window, nb.min_context, nb.max_bases)
        if not len(data.plan):
            data.notes.append(f"next-base prediction: split '{nb.split}' has no interval longer than "
                              f"min_context={nb.min_context}")
    if pr.enabled:
        if not annotations:
            data.notes.append("promoter identification skipped: the prepared genome has no annotation")
        else:
            data.elements = promoter_task(prepared, annotations, pr, spec.seed)
            if data.elements.info["promoters"] == 0:
                data.notes.append(f"promoter identification: no promoter window with a GC-matched background in "
                                  f"split '{pr.split}' ({data.elements.info})")
    if pb.enabled:
        names = pb.classes or [c for c in prepared.region_classes if c != "N"]
        ids = [prepared.region_classes.index(c) for c in names if c in prepared.region_classes]
        tr = probe_windows(prepared, pb.train_split, pb.window, pb.train_per_class, pb.min_majority, ids, spec.seed)
        te = probe_windows(prepared, pb.test_split, pb.window, pb.test_per_class, pb.min_majority, ids, spec.seed)
        ok = [c for c in ids if (tr[1] == c).sum() >= pb.min_per_class and (te[1] == c).sum() >= pb.min_per_class]
        if len(ok) < 2:
            data.notes.append(f"embedding probes skipped: fewer than two region classes have {pb.min_per_class} "
                              f"windows in both '{pb.train_split}' and '{pb.test_split}'")
        else:
            data.probe_train = (tr[0][np.isin(tr[1], ok)], tr[1][np.isin(tr[1], ok)])
            data.probe_test = (te[0][np.isin(te[1], ok)], te[1][np.isin(te[1], ok)])
    if gen.enabled:
        data.prompts = generation_prompts(prepared, gen.split, gen.n_prompts, gen.prompt_length, gen.length,
                                          spec.seed)
        if annotations and gen.n_cds_prompts:
            data.cds = cds_prompts(prepared, annotations, gen.split, gen.n_cds_prompts, gen.prompt_length,
                                   gen.length, spec.seed)
        if not len(data.prompts[0]):
            data.notes.append(f"generation: split '{gen.split}' has no N-free place for a prompt of "
                              f"{gen.prompt_length} + {gen.length} bases")
    return data


def evaluate_model(bm: BenchModel, prepared: PreparedGenome, data: TaskData, spec: BenchmarkSpec,
                   markov_ll: np.ndarray | None = None
                   ) -> tuple[ModelResult, dict[str, np.ndarray]]:
    """Run every prepared task on one model. Returns its results and raw arrays for the output files:
    ``ll`` (promoter-task log-likelihoods), ``emb_test``, ``generated``, ``cds_generated``."""
    res = ModelResult(bm.name, bm.family, bm.n_parameters, bm.context, bm.path, dict(bm.info))
    raw: dict[str, np.ndarray] = {}
    bs = spec.batch_size
    if bm.is_masked:
        res.info["skipped"] = ("next-base prediction and generation (a masked LM has no next-base distribution); "
                               "promoter scores are pseudo-log-likelihoods")
    if data.plan is not None and len(data.plan) and not bm.is_masked:
        res.next_base = evaluate_next_base(bm, prepared, data.plan, bs)
    el = data.elements
    if el is not None and el.info["promoters"]:
        ll = sequence_log_likelihood(bm, el.ids, bs)
        raw["ll"] = ll
        n_pos, n_neg = int(el.label.sum()), int((el.label == 0).sum())
        area = auroc(el.label, ll)
        res.promoters = {"auroc_ll": area, "auroc_ll_ci95": list(auroc_ci(area, n_pos, n_neg)),
                         "n_promoters": n_pos, "n_background": n_neg,
                         "mean_ll_promoter": float(ll[el.label == 1].mean()),
                         "mean_ll_background": float(ll[el.label == 0].mean())}
        if markov_ll is not None and not bm.is_markov:
            llr = ll - markov_ll
            raw["llr"] = llr
            area = auroc(el.label, llr)
            res.promoters["auroc_llr"] = area
            res.promoters["auroc_llr_ci95"] = list(auroc_ci(area, n_pos, n_neg))
    if data.probe_train is not None and data.probe_test is not None:
        pb = spec.probes
        tr_ids = _gather(prepared.tokens, data.probe_train[0], pb.window)
        te_ids = _gather(prepared.tokens, data.probe_test[0], pb.window)
        x_tr = embed_windows(bm, tr_ids, pb.layer, pb.kmer, bs)
        x_te = embed_windows(bm, te_ids, pb.layer, pb.kmer, bs)
        res.probes, _ = run_probe(x_tr, data.probe_train[1], x_te, data.probe_test[1], prepared.region_classes,
                                  pb.max_iter, spec.seed)
        raw["emb_test"] = x_te
    gen = spec.generation
    if data.prompts is not None and len(data.prompts[0]) and not bm.is_masked:
        g = sample(bm, data.prompts[0], gen.length, gen.temperature, gen.top_k, spec.seed, bs)
        raw["generated"] = g
        res.generation = generation_metrics(g, data.prompts[1], gen.kmin, gen.kmax)
    if data.cds is not None and len(data.cds[0]) and not bm.is_masked:
        g = sample(bm, data.cds[0], gen.length, gen.temperature, gen.top_k, spec.seed + 1, bs)
        raw["cds_generated"] = g
        res.cds = cds_stop_metrics(g, data.cds[1])
    return res, raw


def run_benchmark(prepared: PreparedGenome, models: Sequence[BenchModel], spec: BenchmarkSpec,
                  out_dir: str | os.PathLike, shown_as: str | os.PathLike | None = None) -> list[ModelResult]:
    """Benchmark ``models`` (and the Markov baseline when ``spec.markov.enabled``) on ``prepared`` and write
    every output into the existing directory ``out_dir`` (see :func:`write_outputs`); the report names
    ``shown_as`` (default ``out_dir``) as the results' location."""
    spec.validate()
    device = resolve_device(spec.device)
    names = [m.name for m in models]
    if len(set(names)) != len(names) or (spec.markov.enabled and MARKOV_NAME in names):
        raise ConfigError(f"benchmark: model names must be distinct and not '{MARKOV_NAME}' (got {', '.join(names)})")
    for m in models:
        check_contexts(m, spec)
        if not m.is_markov:
            m.model.to(device)
    data = prepare_tasks(prepared, spec)
    everyone = list(models)
    if spec.markov.enabled:
        everyone.insert(0, fit_markov(prepared, spec.markov))
    results, raws = [], {}
    markov_ll = None
    for bm in everyone:
        res, raw = evaluate_model(bm, prepared, data, spec, markov_ll)
        if bm.name == MARKOV_NAME and "ll" in raw:
            markov_ll = raw["ll"]
        results.append(res)
        raws[bm.name] = raw
    write_outputs(Path(out_dir), prepared, data, results, raws, spec, shown_as)
    return results


def benchmark(out: str | os.PathLike, model_paths: Sequence[str], spec: BenchmarkSpec,
              prepared: str | os.PathLike | None = None, genomes: Sequence[Any] | None = None,
              split: Any | None = None, promoter_window: int = 1000, keep_prepared: bool = False) -> Path:
    """Write the benchmark of ``model_paths`` into the directory ``out`` (replaced only once complete).

    Give either ``prepared`` (a directory written by ``dnalm prepare``) or ``genomes``
    (:class:`~dnalm.data.prepare.GenomeSpec` list) with a ``split``
    (:class:`~dnalm.genome.splits.SplitSpec`): the genome is then prepared inside the output (kept as
    ``out/prepared`` with ``keep_prepared``). Returns ``out``.
    """
    from dnalm.data.prepare import prepare

    spec.validate()
    out = Path(out)
    if (prepared is None) == (not genomes):
        raise ConfigError("benchmark: give either prepared=DIR or genome=FASTA (with annotation=GFF3)")
    if prepared is not None:
        p = Path(prepared).resolve()
        if p == out.resolve() or out.resolve() in p.parents:
            raise ConfigError(f"benchmark: prepared={prepared} lies inside out={out}, which is replaced")
    device = resolve_device(spec.device)
    names = _model_names(model_paths)
    models = [load_model(p, n, device) for p, n in zip(model_paths, names)]
    for m in models:
        check_contexts(m, spec)
    with atomic_dir(out) as tmp:
        if prepared is None:
            prepared = prepare(list(genomes or []), tmp / ".prepared", split, promoter_window=promoter_window)
        pg = PreparedGenome(prepared)
        run_benchmark(pg, models, spec, tmp, shown_as=out.resolve())
        if Path(prepared) == tmp / ".prepared":
            del pg
            if keep_prepared:
                os.replace(tmp / ".prepared", tmp / "prepared")
            else:
                shutil.rmtree(tmp / ".prepared")
    return out


# directory names that a training run gives its exported weights: the run's name says more
RUN_SUBDIRS = {"model", "best", "last"}


def _model_names(paths: Sequence[str]) -> list[str]:
    """Leaderboard names: the checkpoint's file or directory name, or its run's for ``<run>/model``."""
    out: list[str] = []
    for p in paths:
        path = Path(str(p).rstrip("/"))
        if path.name in RUN_SUBDIRS and path.parent.name:
            path = path.parent
        base = path.name.removesuffix(".safetensors") or "model"
        base = "".join(c if c.isalnum() or c in "-_." else "_" for c in base)
        if base == MARKOV_NAME:
            base = "markov_model"
        name, i = base, 2
        while name in out:
            name, i = f"{base}-{i}", i + 1
        out.append(name)
    return out


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------


def shown_classes(results: Sequence[ModelResult], class_names: Sequence[str], min_bases: int = 0) -> list[str]:
    """Region classes (in ``class_names`` order, N left out) with at least ``min_bases`` scored bases: the
    classes whose bits per base mean something (a class scored on a handful of bases does not)."""
    return [c for c in class_names if c != "N" and any(
        r.next_base and c in r.next_base.per_class and r.next_base.per_class[c].n_bases >= max(min_bases, 1)
        for r in results)]


def leaderboard_rows(results: Sequence[ModelResult], class_names: Sequence[str],
                     min_class_bases: int = 0) -> list[dict[str, Any]]:
    """One flat row per model: the leaderboard's columns (NaN where a task did not run), with 95% confidence
    intervals and the numbers they rest on; per-class bits per base for the classes of :func:`shown_classes`."""
    nan = math.nan
    present = shown_classes(results, class_names, min_class_bases)
    kmers = sorted({k for r in results if r.generation for k in r.generation if k.startswith("js_k")},
                   key=lambda k: int(k[4:]))
    rows = []
    for r in results:
        nb = r.next_base
        row: dict[str, Any] = {"model": r.name, "family": r.family, "parameters": r.n_parameters,
                               "bits_per_base": nb.bits_per_base if nb else nan,
                               "bits_per_base_ci_low": nb.ci_low if nb else nan,
                               "bits_per_base_ci_high": nb.ci_high if nb else nan,
                               "n_bases": nb.n_bases if nb else 0,
                               "accuracy": nb.accuracy if nb else nan,
                               "perplexity": nb.perplexity if nb else nan}
        for c in present:
            row[f"bpb_{c}"] = nb.per_class[c].bits_per_base if nb and c in nb.per_class else nan
        pr = r.promoters or {}
        for key in ("auroc_ll", "auroc_llr"):
            row[f"promoter_{key}"] = pr.get(key, nan)
            low, high = pr.get(f"{key}_ci95", (nan, nan))
            row[f"promoter_{key}_ci_low"], row[f"promoter_{key}_ci_high"] = low, high
        row["n_promoters"], row["n_background"] = pr.get("n_promoters", 0), pr.get("n_background", 0)
        row["probe_mcc"] = r.probes.mcc if r.probes else nan
        row["probe_macro_f1"] = r.probes.macro_f1 if r.probes else nan
        row["probe_auroc"] = r.probes.auroc if r.probes else nan
        g = r.generation or {}
        row["gen_gc"] = g.get("gc_generated", nan)
        row["real_gc"] = g.get("gc_real", nan)
        for k in kmers:
            row[f"gen_{k}"] = g.get(k, nan)
        c = r.cds or {}
        row["cds_stop_rate_gen"] = c.get("stop_rate_generated", nan)
        row["cds_stop_rate_real"] = c.get("stop_rate_real", nan)
        row["cds_stop_agreement"] = c.get("stop_agreement", nan)
        rows.append(row)
    return rows


def _with_ci(value: Any, low: Any, high: Any, digits: int = 3) -> str:
    if not isinstance(value, float) or not math.isfinite(value):
        return "–"
    if isinstance(low, float) and isinstance(high, float) and math.isfinite(low) and math.isfinite(high):
        return f"{value:.{digits}f} ({low:.{digits}f}–{high:.{digits}f})"
    return f"{value:.{digits}f}"


def headline_table(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The few columns a reader compares first (header, rows of text): bits per base and promoter AUROCs with
    95% confidence intervals, probe MCC and the k-mer divergence of generated bases (largest k)."""
    js = sorted((k for k in (rows[0] if rows else {}) if k.startswith("gen_js_k")), key=lambda k: int(k[8:]))
    header = ["model", "parameters", "bits/base (95% CI)", "promoter AUROC (95% CI)",
              "AUROC vs Markov (95% CI)", "probe MCC"] + ([f"k-mer JS, k={js[-1][8:]}"] if js else [])
    out = []
    for row in rows:
        cells = [str(row["model"]), f"{int(row['parameters']):,}",
                 _with_ci(row["bits_per_base"], row["bits_per_base_ci_low"], row["bits_per_base_ci_high"]),
                 _with_ci(row["promoter_auroc_ll"], row["promoter_auroc_ll_ci_low"], row["promoter_auroc_ll_ci_high"],
                          2),
                 _with_ci(row["promoter_auroc_llr"], row["promoter_auroc_llr_ci_low"],
                          row["promoter_auroc_llr_ci_high"], 2),
                 _with_ci(row["probe_mcc"], None, None)]
        if js:
            cells.append(_with_ci(row[js[-1]], None, None))
        out.append(cells)
    return header, out


#: One sentence per leaderboard quantity (leaderboard.md, the report).
EXPLANATIONS = {
    "bits/base": "Bits per base: how many bits the model needs, on average, to encode each held-out base given the "
                 "bases before it (lower is better; 2.0 is a uniform guess over A, C, G, T).",
    "promoter AUROC": "Promoter AUROC: the probability that a promoter window (upstream of a transcript start) gets a "
                      "higher log-likelihood than a GC-matched intergenic window; 0.5 is chance, and a value below "
                      "0.5 means the model finds promoters less likely than background, not that it detects them.",
    "AUROC vs Markov": "AUROC vs Markov: the same ranking by the log-likelihood minus the Markov baseline's, which "
                       "removes what short k-mers already explain.",
    "probe MCC": "Probe MCC: Matthews correlation of a logistic regression that predicts a window's region class "
                 "from the model's frozen mean-pooled embedding (0 is chance, 1 perfect).",
    "k-mer JS": "k-mer JS: Jensen–Shannon divergence in bits between the k-mer spectra of generated and real "
                "continuations of the same prompts (0 is identical).",
}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "–" if not math.isfinite(v) else f"{v:.4g}"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    return str(v)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table (cells formatted with 4 significant digits)."""
    esc = [[_fmt(v).replace("|", "\\|") for v in row] for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in esc]
    return "\n".join(lines) + "\n"


def leaderboard_markdown(rows: Sequence[Mapping[str, Any]], results: Sequence[ModelResult], prepared: PreparedGenome,
                         data: TaskData, spec: BenchmarkSpec) -> str:
    """``leaderboard.md``: the headline table with confidence intervals and the counts behind them, one
    sentence per quantity, and every column of ``leaderboard.csv`` with metrics as rows (so that it never
    grows sideways with the number of metrics)."""
    nb = next((r.next_base for r in results if r.next_base), None)
    counts = []
    if nb is not None:
        counts.append(f"{nb.n_bases:,} bases in {nb.n_windows:,} windows of split '{spec.next_base.split}'")
    pr = next((r.promoters for r in results if r.promoters), None)
    if pr:
        counts.append(f"{pr['n_promoters']:,} promoter and {pr['n_background']:,} background windows")
    hidden = [c for c in prepared.region_classes if c != "N" and nb is not None and c in nb.per_class
              and nb.per_class[c].n_bases < spec.next_base.min_class_bases]
    header, table = headline_table(rows)
    lines = ["# Leaderboard", "", f"Genome {_genome_names(prepared)}; " + "; ".join(counts) + ". "
             "Intervals are 95% confidence intervals (bits/base: over windows; AUROC: Hanley & McNeil).", "",
             markdown_table(header, table)]
    lines += [f"- {text}" for key, text in EXPLANATIONS.items() if any(h.startswith(key) for h in header)]
    if hidden:
        lines += [f"- Region classes with fewer than {spec.next_base.min_class_bases:,} scored bases are not shown "
                  f"({', '.join(f'{c}: {nb.per_class[c].n_bases:,}' for c in hidden)}); see "
                  "models/<name>/metrics.json."]
    if data.notes:
        lines += [f"- Note: {n}" for n in data.notes]
    full = [[key] + [row[key] for row in rows] for key in (rows[0] if rows else {}) if key != "model"]
    lines += ["", "## Every metric", "", "The columns of `leaderboard.csv`, one row per metric.", "",
              markdown_table(["metric"] + [str(r["model"]) for r in rows], full)]
    return "\n".join(lines)


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(obj), indent=1) + "\n")


def _demote(markdown: str, levels: int = 2) -> str:
    return "\n".join("#" * levels + line if line.startswith("#") else line for line in markdown.splitlines())


def _genome_names(prepared: PreparedGenome) -> str:
    return ", ".join(str(g.get("name")) for g in prepared.manifest.get("genomes", [])) or prepared.path.name


def dataset_card(prepared: PreparedGenome, data: TaskData, spec: BenchmarkSpec) -> str:
    """``dataset_card.md``: sources with checksums, split, leakage, class counts and task sizes."""
    m = prepared.manifest
    where = ("prepared by this benchmark" if prepared.path.name.startswith(".")
             else f"prepared directory `{prepared.path}`")
    lines = ["# Dataset card", "",
             f"Genome {_genome_names(prepared)}, {where} ({m.get('format')}, dnalm {m.get('dnalm_version', '?')}): "
             f"{len(prepared.records)} records, {prepared.total_length:,} bases.", "", "## Sources", ""]
    lines.append(markdown_table(
        ["genome", "FASTA", "FASTA sha256", "annotation", "annotation sha256", "weight"],
        [[g.get("name"), Path(g.get("fasta") or "").name, f"`{g.get('fasta_sha256')}`",
          Path(g["annotation"]).name if g.get("annotation") else "–",
          f"`{g.get('annotation_sha256')}`" if g.get("annotation_sha256") else "–", g.get("weight", 1.0)]
         for g in m.get("genomes", [])]))
    lines += ["## Split", "", f"Strategy: **{prepared.split_info.get('strategy', '?')}**.", ""]
    rows = []
    for which in prepared.split_names:
        recs = list(dict.fromkeys(iv.record for iv in prepared.intervals(which)))
        shown = ", ".join(recs[:12]) + (f", ... ({len(recs)} in all)" if len(recs) > 12 else "")
        rows.append([which, len(recs), prepared.split_length(which), shown])
    lines.append(markdown_table(["split", "records", "bases", "records held"], rows))
    lines += ["## Region classes (whole genome)", ""]
    counts = m.get("class_counts", {})
    total = sum(counts.values()) or 1
    lines.append(markdown_table(["class", "bases", "share"],
                                [[c, n, f"{n / total:.2%}"] for c, n in counts.items()]))
    report = prepared.path / "split_report.md"
    if report.is_file():
        lines += ["## Split and leakage report", "", _demote(report.read_text()), ""]
    lines += ["## Benchmark tasks", ""]
    task_rows = []
    if data.plan is not None:
        nb = spec.next_base
        task_rows.append(["next-base prediction", f"{len(data.plan):,} windows of {nb.window} bases, "
                          f"{data.plan.n_targets:,} targets with >= {nb.min_context} bases of context "
                          f"(split {nb.split})"])
    if data.elements is not None:
        task_rows.append(["promoter identification", ", ".join(f"{k} {v}" for k, v in data.elements.info.items())
                          + f" (windows of {spec.promoters.window} bases, split {spec.promoters.split})"])
    if data.probe_train is not None and data.probe_test is not None:
        def per_class(labels: np.ndarray) -> str:
            return ", ".join(f"{prepared.region_classes[c]} {int((labels == c).sum())}" for c in np.unique(labels))
        task_rows.append(["embedding probes", f"train ({spec.probes.train_split}): {per_class(data.probe_train[1])};"
                          f" test ({spec.probes.test_split}): {per_class(data.probe_test[1])}"])
    if data.prompts is not None:
        n_cds = len(data.cds[0]) if data.cds is not None else 0
        task_rows.append(["generation", f"{len(data.prompts[0])} prompts and {n_cds} CDS prompts of "
                          f"{spec.generation.prompt_length} bases, continuations of {spec.generation.length}"])
    lines.append(markdown_table(["task", "data"], task_rows))
    if data.notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in data.notes] + [""]
    return "\n".join(lines) + "\n"


def _seq(row: np.ndarray) -> str:
    """Bases of a row of token ids ``(L,)`` as a string."""
    return CharTokenizer().decode(np.asarray(row, dtype=np.int64))


def _fasta(path: Path, names: Sequence[str], rows: np.ndarray) -> None:
    with open(path, "w") as fh:
        for name, row in zip(names, rows):
            fh.write(f">{name}\n{_seq(row)}\n")


def write_outputs(out: Path, prepared: PreparedGenome, data: TaskData, results: Sequence[ModelResult],
                  raws: Mapping[str, Mapping[str, np.ndarray]], spec: BenchmarkSpec,
                  shown_as: str | os.PathLike | None = None) -> None:
    """Write the benchmark's files into ``out`` (``shown_as``: the location the report names):

    ``leaderboard.{csv,md,json}``, ``dataset_card.md``, ``models/<name>/metrics.json``,
    ``scores/promoter_scores.tsv``, ``generated/<name>.fa`` (+ ``real.fa``, ``cds_*.fa``), ``plots/*.png``
    (with ``captions.json``) and ``report.html``.
    """
    from dnalm.evaluate import plots as P
    from dnalm.evaluate.report import write_report

    rows = leaderboard_rows(results, prepared.region_classes, spec.next_base.min_class_bases)
    header = list(rows[0]) if rows else ["model"]
    with open(out / "leaderboard.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for row in rows:
            w.writerow(["" if isinstance(row[h], float) and not math.isfinite(row[h]) else row[h] for h in header])
    (out / "leaderboard.md").write_text(leaderboard_markdown(rows, results, prepared, data, spec))
    _write_json(out / "leaderboard.json", {"settings": asdict(spec), "rows": rows,
                                           "classes": list(prepared.region_classes), "notes": data.notes})
    (out / "dataset_card.md").write_text(dataset_card(prepared, data, spec))
    for r in results:
        _write_json(out / "models" / r.name / "metrics.json", r.to_dict())

    el = data.elements
    if el is not None and el.info["promoters"]:
        (out / "scores").mkdir(exist_ok=True)
        with open(out / "scores" / "promoter_scores.tsv", "w", newline="") as fh:
            w = csv.writer(fh, delimiter="\t")
            cols = [(f"ll_{r.name}", raws[r.name]["ll"]) for r in results if "ll" in raws[r.name]]
            cols += [(f"llr_{r.name}", raws[r.name]["llr"]) for r in results if "llr" in raws[r.name]]
            w.writerow(["row", "record", "start", "end", "strand", "label", "matched_to", "gc"] + [c for c, _ in cols])
            for i in range(len(el.label)):
                w.writerow([i, el.record[i], int(el.start[i]), int(el.start[i]) + el.ids.shape[1], el.strand[i],
                            "promoter" if el.label[i] else "background", int(el.match[i]), f"{el.gc[i]:.4f}"]
                           + [repr(float(v[i])) for _, v in cols])
    if data.prompts is not None and len(data.prompts[0]):
        gdir = out / "generated"
        gdir.mkdir(exist_ok=True)
        n = len(data.prompts[0])
        _fasta(gdir / "prompts.fa", [f"prompt_{i}" for i in range(n)], data.prompts[0])
        _fasta(gdir / "real.fa", [f"real_{i}" for i in range(n)], data.prompts[1])
        if data.cds is not None and len(data.cds[0]):
            _fasta(gdir / "cds_real.fa", [f"cds_real_{i}" for i in range(len(data.cds[1]))], data.cds[1])
        for r in results:
            if "generated" in raws[r.name]:
                _fasta(gdir / f"{r.name}.fa", [f"{r.name}_{i}" for i in range(n)], raws[r.name]["generated"])
            if "cds_generated" in raws[r.name]:
                g = raws[r.name]["cds_generated"]
                _fasta(gdir / f"cds_{r.name}.fa", [f"cds_{r.name}_{i}" for i in range(len(g))], g)

    if spec.plots:
        _plots(out / "plots", prepared, data, results, raws, spec, P)
    write_report(out, out / "report.html", title=f"dnalm genome benchmark: {_genome_names(prepared)}",
                 location=shown_as)


def _plots(pdir: Path, prepared: PreparedGenome, data: TaskData, results: Sequence[ModelResult],
           raws: Mapping[str, Mapping[str, np.ndarray]], spec: BenchmarkSpec, P: Any) -> None:
    from threadpoolctl import threadpool_limits

    pdir.mkdir(parents=True, exist_ok=True)
    captions: dict[str, str] = {}
    shown = shown_classes(results, prepared.region_classes, spec.next_base.min_class_bases)
    scored = [r for r in results if r.next_base is not None]
    if scored:
        regions = shown + ["overall"]
        values = {r.name: {c: r.next_base.per_class[c].bits_per_base for c in shown if c in r.next_base.per_class}
                  | {"overall": r.next_base.bits_per_base} for r in scored}
        intervals = {r.name: {c: (m.ci_low, m.ci_high) for c, m in r.next_base.per_class.items()}
                     | {"overall": (r.next_base.ci_low, r.next_base.ci_high)} for r in scored}
        nb = scored[0].next_base
        counts = {c: nb.per_class[c].n_bases for c in shown if c in nb.per_class} | {"overall": nb.n_bases}
        P.region_bars({m: {c: v.get(c, math.nan) for c in regions} for m, v in values.items()},
                      pdir / "region_bits.png", regions=regions, intervals=intervals, counts=counts,
                      reference=2.0, reference_label="uniform guess (2 bits)",
                      title=f"bits per base by region class (split '{spec.next_base.split}'; lower is better)")
        hidden = [c for c in prepared.region_classes if c != "N" and c not in shown and c in nb.per_class]
        captions["region_bits.png"] = (
            "How many bits each model needs per held-out base, by the region class of the base (lower is better; "
            "2 bits is a uniform guess); error bars are 95% confidence intervals over windows and each class is "
            "labelled with the number of bases it rests on"
            + (f"; classes with fewer than {spec.next_base.min_class_bases:,} bases ({', '.join(hidden)}) are "
               "not shown." if hidden else "."))
    el = data.elements
    rng = np.random.default_rng([spec.seed, 6])
    for r in results:
        raw = raws[r.name]
        if "ll" in raw and el is not None:
            groups = np.where(el.label == 1, "promoter", "background")
            f = f"promoter_ll_{r.name}.png"
            P.score_histogram(raw["ll"], pdir / f, groups=groups, xlabel="log-likelihood (bits)",
                              title=f"{r.name}: promoter vs background windows")
            pr = r.promoters or {}
            captions[f] = (f"{r.name}: log-likelihood of {pr.get('n_promoters', 0)} promoter windows and "
                           f"{pr.get('n_background', 0)} GC-matched background windows; AUROC "
                           f"{_with_ci(pr.get('auroc_ll'), *pr.get('auroc_ll_ci95', (None, None)), digits=2)} is "
                           "the chance that a promoter scores above a background window (0.5 = chance; below 0.5 "
                           "the model finds promoters less likely).")
            if "llr" in raw:
                f = f"promoter_llr_{r.name}.png"
                P.score_histogram(raw["llr"], pdir / f, groups=groups, xlabel="log-likelihood ratio to Markov (bits)",
                                  title=f"{r.name}: promoter vs background, ratio to the Markov baseline")
                captions[f] = (f"{r.name}: the same windows scored by log-likelihood minus the Markov baseline's "
                               "(what the model adds to short k-mers); AUROC "
                               f"{_with_ci(pr.get('auroc_llr'), *pr.get('auroc_llr_ci95', (None, None)), digits=2)}.")
        if "emb_test" in raw and data.probe_test is not None and len(raw["emb_test"]) >= 3:
            x, lab = raw["emb_test"], data.probe_test[1]
            if len(x) > spec.tsne_points:
                sel = np.sort(rng.choice(len(x), spec.tsne_points, replace=False))
                x, lab = x[sel], lab[sel]
            keep = np.ptp(x, axis=0) > 0
            if keep.any():
                f = f"tsne_{r.name}.png"
                # a few hundred points: one OpenMP thread is fast, and immune to oversubscribed cores
                with threadpool_limits(1, user_api="openmp"):
                    P.embedding_tsne(x[:, keep], np.array([prepared.region_classes[c] for c in lab]), pdir / f,
                                     seed=spec.seed, title=f"{r.name}: t-SNE of window embeddings",
                                     label_name="region class")
                captions[f] = (f"{r.name}: t-SNE of the frozen, mean-pooled embeddings of {len(x)} held-out "
                               "windows, coloured by their main region class; separate colours mean the embeddings "
                               "carry region information (the probe MCC measures how much).")
        if "generated" in raw and data.prompts is not None:
            gen, real = raw["generated"], data.prompts[1]
            gc = np.array([gc_fraction_ids(x) for x in gen] + [gc_fraction_ids(x) for x in real])
            groups = np.array(["generated"] * len(gen) + ["real"] * len(real))
            f = f"gc_{r.name}.png"
            P.score_histogram(gc, pdir / f, groups=groups, xlabel="GC fraction",
                              title=f"{r.name}: GC of generated vs real continuations")
            captions[f] = (f"{r.name}: GC fraction of {len(gen)} generated and {len(real)} real continuations of "
                           "the same prompts; a model that has learned the genome's composition overlaps the "
                           "real histogram.")
            f = f"logo_{r.name}.png"
            P.sequence_logo([_seq(x[:spec.logo_positions]) for x in gen], pdir / f,
                            title=f"{r.name}: first {min(spec.logo_positions, gen.shape[1])} generated bases")
            captions[f] = (f"{r.name}: sequence logo of the first generated bases after each of the {len(gen)} "
                           "prompts; tall letters mark positions where the samples agree (a model stuck in a "
                           "repeat shows a pattern).")
    (pdir / "captions.json").write_text(json.dumps(captions, indent=1) + "\n")
