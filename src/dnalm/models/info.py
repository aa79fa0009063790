"""Parameters, FLOPs and training activation memory of a model, from its config alone.

Each model is described by rows (one per kind of module): how many instances, parameters per
instance, forward FLOPs per token and bytes saved for backward per token. Everything is
computed from the config's fields, without building the model, so ``large-1m`` costs nothing;
tests check the rows against the real modules.

Notation: ``B`` batch, ``L`` sequence length, ``d`` = d_model, ``d_i`` = d_inner (MLP width),
``V`` padded vocabulary, ``H`` heads, ``K`` short-filter taps, ``F`` filter MLP width,
``e`` positional-feature width, ``b`` bytes per element of the compute dtype.

FLOPs (forward, per token of a batch of ``B`` sequences of length ``L``)
    * A matmul of (m, k) by (k, n) costs ``2 m n k`` (one multiply and one add per term);
      a Linear d_in -> d_out therefore costs ``2 d_in d_out`` per token (bias adds ignored).
    * Attention counts both matmuls of the full L x L square, ``q k^T`` and ``A v``:
      ``4 L d`` per token per layer (the convention of Hoffmann et al. 2022, "Training
      Compute-Optimal Large Language Models", Appendix F). A causal kernel skips about half.
    * The depthwise short convolution: ``2 K`` per channel per output, over the ``L + K - 1``
      outputs the padded convolution computes (3d channels).
    * The FFT long convolution (FFT size ``n = 2L``): a real FFT of ``n`` points costs
      ``c n log2 n`` with ``c = 2.5`` (:data:`FFT_FLOPS_COEF`; the convention of FFTW's
      benchmarks, 5 n log2 n for a complex FFT, half that for real data). Per channel and
      sequence: the forward FFT of the input and the inverse FFT (``2 c n log2 n``), the
      spectral product (``6 (L + 1)``: L + 1 complex bins, 6 real FLOPs each), and the FFT of the
      filter (``c n log2 n``, shared by the batch). Per token: ``10 log2(2L) + 6 (L+1)/L +
      5 log2(2L)/B`` per channel.
    * The implicit filter MLP runs once per forward on ``L`` positions, shared by the batch:
      ``2 (e F + 2 F^2 + F d) / B`` per token.
    * Not counted: normalisation, activation functions, softmax, gating products, rotary
      embeddings, the filter's decay window and residual additions (elementwise, O(d) each).
    * Training = 3 x forward (the backward pass computes two matmuls per forward matmul: the
      gradients of the input and of the weight; Kaplan et al. 2020, "Scaling Laws for Neural
      Language Models", section 2.1).

Activation memory (training, per token of one sequence, bytes)
    The tensors autograd saves for backward in this implementation, counted once per storage
    (a view saved twice counts once), under autocast to the compute dtype (``b`` bytes; float32
    means no autocast). The residual stream is float32 (``residual_in_fp32``). Per block:

    * each LayerNorm (two per block, one final): its float32 input ``4d`` plus mean and
      reciprocal std ``8``;
    * each Linear: its input in the compute dtype ``b d_in`` (for the MLP: fc1 input ``b d``,
      the tanh-GELU input ``b d_i`` and fc2 input ``b d_i``);
    * attention: the qkv projection output ``3 b d`` (kept alive by ``v``, a view of it), the
      rotated ``q`` and ``k`` ``2 b d``, the attention output ``b d``, its row log-sum-exp
      ``4 H`` (FlashAttention-style kernels keep no L x L matrix) and the re-laid-out output
      given to out_proj ``b d`` (in float32 on CUDA the memory-efficient kernel returns its
      output in that layout already, so this copy is a view and ``b d`` less is kept);
    * Hyena: the short-convolution input ``3 b d`` and output ``3 b d (L+K-1)/L``, the
      zero-padded float32 FFT input ``8 d``, its spectrum (complex64) ``8 d (L+1)/L``, the
      float32 input of the skip term ``4 d``, the long-convolution output ``b d`` and the
      out_proj input ``b d``; once per sequence batch (so divided by ``B``), the filter MLP
      ``3 F (2b + 4)`` (each Sin keeps its input, the float32 product ``freq * x`` and the
      Linear input), the float32 decay window ``4 d``, the padded filter ``8 d`` and its
      spectrum ``8 d (L+1)/L``;
    * dropout with p > 0 keeps a 1-byte mask per element (GPU kernels; PyTorch's CPU dropout
      keeps a mask in the input's dtype); attention dropout keeps only a random seed.

    Outside the blocks: the token ids ``8``; the LM head input ``b d``; the loss keeps the
    float32 log-probabilities ``4 V``, the int64 targets ``8`` and, under autocast on CUDA, the
    low-precision logits ``b V`` (PyTorch's CPU autocast does not keep them). Constant tensors
    (weights and their low-precision copies, rotary tables, positional features) are not
    activations and are left out.

    The tests compare these numbers with the storages autograd actually saves (on CPU); on an
    H100 (PyTorch 2.11, FlashAttention kernels) they matched exactly in bf16 for both families
    and in float32 for Hyena.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from dnalm.errors import ConfigError
from dnalm.models.hyena import HyenaConfig
from dnalm.models.transformer import TransformerConfig

#: Real FLOPs of a real-input FFT of n points per ``n log2 n`` (FFTW's benchmark convention).
FFT_FLOPS_COEF = 2.5

#: Training FLOPs per forward FLOP (forward + backward of input and weight gradients).
TRAIN_FLOPS_FACTOR = 3

#: Bytes per parameter kept by mixed-precision AdamW training: float32 weight, gradient and
#: the two moment estimates.
TRAIN_STATE_BYTES_PER_PARAM = 16

_DTYPE_BYTES: dict[str, int] = {
    "fp32": 4, "float32": 4, "32": 4, "32-true": 4,
    "bf16": 2, "bfloat16": 2, "bf16-mixed": 2, "bf16-true": 2,
    "fp16": 2, "float16": 2, "16": 2, "16-mixed": 2, "16-true": 2,
}


def dtype_bytes(dtype: str | torch.dtype) -> int:
    """Bytes per element of a compute dtype given as a torch dtype or a name ('bf16', '16-mixed', ...)."""
    if isinstance(dtype, torch.dtype):
        return torch.empty((), dtype=dtype).element_size()
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPE_BYTES:
        raise ConfigError(f"unknown dtype '{dtype}' (choose from: {', '.join(_DTYPE_BYTES)})")
    return _DTYPE_BYTES[key]


@dataclass(frozen=True)
class Row:
    """One kind of module: ``count`` instances, each with ``params`` parameters, ``flops`` forward
    FLOPs per token and ``act_bytes`` bytes saved for backward per token."""

    name: str
    count: int
    params: int
    flops: float
    act_bytes: float


@dataclass(frozen=True)
class ModelInfo:
    """Costs of a model at ``seq_len`` tokens per sequence and ``batch_size`` sequences."""

    family: str
    seq_len: int
    batch_size: int
    dtype_bytes: int
    rows: tuple[Row, ...]

    @property
    def params(self) -> int:
        """Unique parameters (a tied LM head counts once)."""
        return sum(r.count * r.params for r in self.rows)

    @property
    def forward_flops_per_token(self) -> float:
        return sum(r.count * r.flops for r in self.rows)

    @property
    def train_flops_per_token(self) -> float:
        return TRAIN_FLOPS_FACTOR * self.forward_flops_per_token

    @property
    def activation_bytes_per_token(self) -> float:
        return sum(r.count * r.act_bytes for r in self.rows)

    @property
    def activation_bytes(self) -> float:
        """Activation memory of one training batch: per token x B x L."""
        return self.activation_bytes_per_token * self.batch_size * self.seq_len

    @property
    def train_state_bytes(self) -> int:
        """Weights, gradients and AdamW moments in float32."""
        return TRAIN_STATE_BYTES_PER_PARAM * self.params

    def to_dict(self) -> dict:
        return {"family": self.family, "seq_len": self.seq_len, "batch_size": self.batch_size,
                "dtype_bytes": self.dtype_bytes, "params": self.params,
                "forward_flops_per_token": self.forward_flops_per_token,
                "train_flops_per_token": self.train_flops_per_token,
                "activation_bytes_per_token": self.activation_bytes_per_token,
                "activation_bytes": self.activation_bytes, "train_state_bytes": self.train_state_bytes,
                "rows": [asdict(r) for r in self.rows]}


def _check_sizes(seq_len: int, batch_size: int) -> None:
    if seq_len < 1 or batch_size < 1:
        raise ConfigError(f"model info needs seq_len >= 1 and batch_size >= 1, got {seq_len} and {batch_size}")


def _common_rows(d: int, d_inner: int, V: int, n_layer: int, b: int, mlp_bias: bool,
                 dropout_bytes: float) -> tuple[list[Row], list[Row]]:
    """Rows shared by every LM of :mod:`dnalm.models.blocks`: (before the mixers, after them)."""
    norm_act = 4 * d + 8
    head = [Row("embedding (tied head)", 1, V * d, 0.0, 8.0)]
    tail = [
        Row("norms (2 per block)", n_layer, 4 * d, 0.0, 2 * norm_act),
        Row("mlp", n_layer, 2 * d * d_inner + (d_inner + d if mlp_bias else 0), 4.0 * d * d_inner,
            b * d + 2 * b * d_inner),
        Row("final norm", 1, 2 * d, 0.0, norm_act),
        Row("LM head + loss", 1, 0, 2.0 * d * V, b * d + (b * V if b < 4 else 0) + 4 * V + 8),
    ]
    if dropout_bytes:
        tail.append(Row("dropout masks", 1, 0, 0.0, dropout_bytes))
    return head, tail


def transformer_info(cfg: TransformerConfig, seq_len: int, batch_size: int = 1,
                     dtype: str | torch.dtype = "bf16") -> ModelInfo:
    """Rows of :class:`~dnalm.models.transformer.TransformerLM` (see the module docstring)."""
    _check_sizes(seq_len, batch_size)
    d, L, H, n, b = cfg.d_model, seq_len, cfg.n_head, cfg.n_layer, dtype_bytes(dtype)
    bias = cfg.bias
    drop = (d + 2 * n * d) if cfg.dropout > 0 else 0
    head, tail = _common_rows(d, cfg.d_inner, cfg.padded_vocab_size, n, b, bias, drop)
    mixer = [
        Row("attn in_proj (qkv)", n, 3 * d * d + (3 * d if bias else 0), 6.0 * d * d, b * d),
        Row("attn q k^T, A v (L^2)", n, 0, 4.0 * L * d, 6 * b * d + 4 * H),
        Row("attn out_proj", n, d * d + (d if bias else 0), 2.0 * d * d, b * d),
    ]
    return ModelInfo("transformer", L, batch_size, b, tuple(head + mixer + tail))


def hyena_info(cfg: HyenaConfig, seq_len: int, batch_size: int = 1, dtype: str | torch.dtype = "bf16") -> ModelInfo:
    """Rows of :class:`~dnalm.models.hyena.HyenaLM` (see the module docstring)."""
    _check_sizes(seq_len, batch_size)
    if seq_len > cfg.l_max:
        raise ConfigError(f"hyena: seq_len {seq_len} exceeds the model's l_max {cfg.l_max}")
    d, L, n, B, b = cfg.d_model, seq_len, cfg.n_layer, batch_size, dtype_bytes(dtype)
    K, F, e = cfg.short_filter_order, cfg.filter_order, cfg.emb_dim
    log_n = math.log2(2 * L)
    bins = (L + 1) / L  # rfft bins of the 2L-point transform per token
    drop = ((d if cfg.embed_dropout > 0 else 0) + (2 * n * d if cfg.resid_dropout > 0 else 0)
            + (n * d if cfg.hyena_dropout > 0 else 0))
    head, tail = _common_rows(d, cfg.d_inner, cfg.padded_vocab_size, n, b, True, drop)
    fft_flops = d * (2 * 2 * FFT_FLOPS_COEF * log_n + 6 * bins + 2 * FFT_FLOPS_COEF * log_n / B)
    filter_params = (e * F + F) + 2 * (F * F + F) + F * d + F + (cfg.l_max * e if cfg.train_pos_emb else 0)
    mixer = [
        Row("hyena in_proj", n, 3 * d * d + 3 * d, 6.0 * d * d, b * d),
        Row("hyena short conv", n, 3 * d * K + 3 * d, 2.0 * K * 3 * d * (L + K - 1) / L,
            3 * b * d + 3 * b * d * (L + K - 1) / L),
        Row("hyena long conv FFT", n, d, fft_flops,
            8 * d + 8 * d * bins + 4 * d + b * d + (8 * d + 8 * d * bins) / B),
        Row("hyena filter MLP", n, filter_params, 2.0 * (e * F + 2 * F * F + F * d) / B,
            (3 * F * (2 * b + 4) + 4 * d) / B),
        Row("hyena out_proj", n, d * d + d, 2.0 * d * d, b * d),
    ]
    return ModelInfo("hyena", L, batch_size, b, tuple(head + mixer + tail))


def stripedhyena_info(cfg: Any, seq_len: int, batch_size: int = 1, dtype: str | torch.dtype = "bf16") -> ModelInfo:
    """Rows of :class:`~dnalm.models.stripedhyena.StripedHyenaLM` (StripedHyena 2 / Evo 2), one group per block type.

    FLOPs per token (the conventions above; ``c`` = :data:`FFT_FLOPS_COEF`, ``B`` batch, ``d`` width):

    * every gated-convolution block (S = HCS, D = HCM, H = HCL): projections ``2 d 3d``, the featurizer FIR
      of ``K_s`` taps on 3d channels ``2 K_s 3d``, ``out_filter_dense`` ``2 d^2``;
    * S, the inner explicit FIR of ``K`` < 128 taps computed directly: ``2 K d``;
    * D, the inner explicit filter of ``K`` >= 128 taps (128 in Evo 2) computed by FFT (size ``n = 2L``):
      ``d (4 c log2 n + 6 (L + 1) / L + 2 c log2 n / B)`` (input FFT and inverse, spectral product, the
      filter's FFT shared by the batch);
    * H, the long modal filter: the same FFT convolution plus building its ``L`` taps from ``N`` modes,
      ``2 N d / B`` (a multiply-add per mode and tap, shared by the batch; exponentials not counted);
    * attention (*): ``2 d 3d`` (qkv) + ``4 L d`` (both matmuls of the full square) + ``2 d^2`` (output);
    * every block's gated MLP ``l3(act(l1 z) * l2 z)``: ``6 d d_i``; the unembedding ``2 d V``.

    These are the terms of :func:`dnalm.models.stripedhyena.flops_per_token`, split by row. Parameters are
    exact (a tied unembedding counts once; the rotary ``inv_freq`` is a buffer). Activation memory is an
    estimate in the conventions above, not measured against autograd as for Hyena and the Transformer: per
    block the two RMSNorms (float32 input and normalised output, ``8 d + 4`` each), the Linear inputs in the
    compute dtype, the float32 featurizer window and output (``4 * 3d (L + K_s - 1) / L + 4 * 3d``), the gate
    products (``3 * 4 d``), the inner filter's saved inputs (a direct FIR its window ``4 d (L + K - 1) / L``;
    an FFT convolution its padded input ``8 d`` and spectrum ``8 d (L + 1) / L``), attention as the
    Transformer's rows, the MLP's ``b d + 3 b d_i``; the head and loss as in :func:`transformer_info`.
    """
    from dnalm.models.stripedhyena import FFT_FIR_MIN_TAPS

    _check_sizes(seq_len, batch_size)
    d, L, B, b = cfg.hidden_size, seq_len, batch_size, dtype_bytes(dtype)
    V, di, Ks, H = cfg.vocab_size, cfg.inner_mlp_size, cfg.short_filter_length, cfg.num_attention_heads
    kinds = cfg.layer_kinds
    n = {k: kinds.count(k) for k in ("hcs", "hcm", "hcl", "attn")}
    n_hyena = n["hcs"] + n["hcm"] + n["hcl"]
    log_n = math.log2(2 * L)
    bins = (L + 1) / L
    fft_flops = d * (4 * FFT_FLOPS_COEF * log_n + 6 * bins + 2 * FFT_FLOPS_COEF * log_n / B)
    fft_act = 8 * d + 8 * d * bins
    norm_act = 8 * d + 4

    def explicit(taps: int, groups: int) -> tuple[int, float, float]:
        """(params, flops, act bytes) of an explicit inner filter."""
        if taps >= FFT_FIR_MIN_TAPS:
            return groups * taps + d, fft_flops, fft_act
        return groups * taps, 2.0 * taps * d, 4 * d * (L + taps - 1) / L

    rows = [Row("embedding (tied head)" if cfg.tie_embeddings else "embedding", 1, V * d, 0.0, 8.0)]
    if n_hyena:
        rows += [
            Row("hyena projections", n_hyena, 3 * d * d, 6.0 * d * d, b * d),
            Row("hyena featurizer FIR", n_hyena, 3 * d * Ks, 2.0 * Ks * 3 * d,
                4 * 3 * d * (L + Ks - 1) / L + 4 * 3 * d + 3 * 4 * d),
            Row("hyena out_filter_dense", n_hyena, d * d + (d if cfg.hyena_out_proj_bias else 0),
                2.0 * d * d, b * d),
        ]
    if n["hcs"]:
        p, f, a = explicit(cfg.hcs_filter_length, cfg.hcs_filter_groups)
        how = "FFT" if cfg.hcs_filter_length >= FFT_FIR_MIN_TAPS else "direct"
        rows.append(Row(f"HCS FIR {cfg.hcs_filter_length} taps ({how})", n["hcs"], p, f, a))
    if n["hcm"]:
        p, f, a = explicit(cfg.hcm_filter_length, cfg.hcm_filter_groups)
        how = "FFT" if cfg.hcm_filter_length >= FFT_FIR_MIN_TAPS else "direct"
        rows.append(Row(f"HCM FIR {cfg.hcm_filter_length} taps ({how})", n["hcm"], p, f, a))
    if n["hcl"]:
        N = cfg.state_size
        rows.append(Row(f"HCL modal FFT ({N} modes)", n["hcl"], 2 * d * N + d,
                        fft_flops + 2.0 * N * d / B, fft_act))
    if n["attn"]:
        qkv_bias, out_bias = cfg.qkv_proj_bias, cfg.mha_out_proj_bias
        rows += [
            Row("attn in_proj (qkv)", n["attn"], 3 * d * d + (3 * d if qkv_bias else 0), 6.0 * d * d, b * d),
            Row("attn q k^T, A v (L^2)", n["attn"], 0, 4.0 * L * d, 6 * b * d + 4 * H),
            Row("attn out_proj", n["attn"], d * d + (d if out_bias else 0), 2.0 * d * d, b * d),
        ]
    rows += [
        Row("norms (2 per block)", cfg.num_layers, 2 * d, 0.0, 2 * norm_act),
        Row("gated mlp", cfg.num_layers, 3 * d * di, 6.0 * d * di, b * d + 3 * b * di),
    ]
    if cfg.final_norm:
        rows.append(Row("final norm", 1, d, 0.0, norm_act))
    rows.append(Row("LM head + loss", 1, 0 if cfg.tie_embeddings else V * d, 2.0 * d * V,
                    b * d + (b * V if b < 4 else 0) + 4 * V + 8))
    return ModelInfo("stripedhyena", L, batch_size, b, tuple(rows))


def family_config(family: str, preset: str, **overrides) -> Any:
    """The config of preset ``preset`` of ``family`` (a name of :data:`dnalm.models.families.FAMILIES`)
    with fields replaced."""
    from dnalm.models.families import family as family_named

    try:
        fam = family_named(family)
    except ConfigError:
        from dnalm.models.families import names

        raise ConfigError(f"unknown model '{family}' (choose from: {', '.join(names())})") from None
    return fam.config_cls.preset(preset, **overrides)


def model_info(config: Any, seq_len: int, batch_size: int = 1, dtype: str | torch.dtype = "bf16") -> ModelInfo:
    """Rows and totals of the model ``config`` describes (any family with a cost model)."""
    from dnalm.models.families import family_of

    try:
        fam = family_of(config)
    except ConfigError:
        fam = None
    if fam is None or fam.info is None:
        raise ConfigError(f"model info: no cost model for {type(config).__name__}")
    return fam.info(config, seq_len, batch_size, dtype)


def _si(x: float, unit: str = "") -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def _bytes(x: float) -> str:
    for scale, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g} B"


def print_info(info: ModelInfo, title: str = "", console=None) -> None:
    """Print the rows and totals of ``info`` as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=max(Console().width, 100))
    table = Table(title=title or f"{info.family}: L = {info.seq_len:,}, B = {info.batch_size}, "
                  f"{info.dtype_bytes}-byte activations")
    for col in ("module", "x", "params", "%", "fwd FLOP/tok", "%", "act. B/tok", "%"):
        table.add_column(col, justify="left" if col == "module" else "right", no_wrap=True)
    P, Fl, A = info.params, info.forward_flops_per_token, info.activation_bytes_per_token
    for r in info.rows:
        table.add_row(r.name, str(r.count), f"{r.count * r.params:,}", f"{100 * r.count * r.params / P:.1f}",
                      _si(r.count * r.flops), f"{100 * r.count * r.flops / Fl:.1f}" if Fl else "-",
                      f"{r.count * r.act_bytes:,.0f}", f"{100 * r.count * r.act_bytes / A:.1f}")
    table.add_row("total", "", f"{P:,}", "100", _si(Fl), "100", f"{A:,.0f}", "100", style="bold")
    console.print(table)
    tokens = info.seq_len * info.batch_size
    summary = Table(show_header=False, box=None)
    summary.add_row("parameters", f"{P:,}")
    summary.add_row("forward FLOPs per token", _si(Fl, "FLOP"))
    summary.add_row(f"training FLOPs per token ({TRAIN_FLOPS_FACTOR} x forward)", _si(info.train_flops_per_token,
                                                                                     "FLOP"))
    summary.add_row(f"training FLOPs per batch ({tokens:,} tokens)", _si(info.train_flops_per_token * tokens,
                                                                          "FLOP"))
    summary.add_row("activation memory per batch", _bytes(info.activation_bytes))
    summary.add_row(f"weights + grads + AdamW ({TRAIN_STATE_BYTES_PER_PARAM} B/param)",
                    _bytes(info.train_state_bytes))
    console.print(summary)


#: FLOPs per inner channel, state dimension and token of the selective scan (see :func:`ssm_info`).
SCAN_FLOPS_PER_STATE = 9


def ssm_info(cfg: Any, seq_len: int, batch_size: int = 1, dtype: str | torch.dtype = "bf16") -> ModelInfo:
    """Rows of :class:`~dnalm.models.mamba.MambaLM` and :class:`~dnalm.models.mamba.CaduceusLM`.

    Notation: ``D`` = d_model, ``E`` = d_inner, ``N`` = d_state, ``K`` = d_conv, ``R`` = dt_rank, ``V`` padded
    vocabulary. FLOPs per token of one Mamba (one direction, one stream), the conventions above:

    * ``in_proj`` ``2 D 2E``, ``x_proj`` ``2 E (R + 2N)``, ``dt_proj`` ``2 R E``, ``out_proj`` ``2 E D``;
    * the depthwise causal convolution ``2 K E``;
    * the selective scan ``9 E N`` (:data:`SCAN_FLOPS_PER_STATE`): per channel and state ``delta A`` (1), its
      exponential (counted 1), ``delta u B`` (2), ``h = a h + b`` (2) and ``<h, C>`` (2, multiply and add), plus
      ``delta u`` shared by the states (counted in the 9); softplus, ``D u``, the SiLU gates left out;
    * the LM head ``2 D V``.

    Caduceus's BiMamba runs two Mambas per layer (the reverse one on the flipped input); RCPS runs the whole
    network on the sequence and on its reverse complement (two streams) and the head on both, so every FLOP
    row is multiplied by the directions and the streams (row names: ``2 dir``, ``2 RC``). Parameters are exact
    (the tied head and, with ``bidirectional_weight_tie``, the shared ``in_proj``/``out_proj`` count once; the
    same total as :func:`dnalm.models.mamba.count_parameters_of_config`). Activation memory is an estimate, not
    measured: per Mamba the Linear inputs in the compute dtype (``b (D + E + R + E)``), the convolution window
    ``b E (L + K - 1) / L``, the scan inputs a fused kernel keeps (``x``, ``delta``, ``z``: ``3 b E``; ``B``,
    ``C``: ``2 b N``); per block the RMSNorm's float32 input and reciprocal RMS ``4 D + 4``; the head input
    ``b D`` per stream and the loss as in :func:`transformer_info`. (The plain PyTorch scans keep more.)
    """
    from dnalm.models.mamba import CaduceusConfig

    _check_sizes(seq_len, batch_size)
    D, E, N, K, R, V = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.d_conv, cfg.dt_rank, cfg.padded_vocab_size
    n, L, b = cfg.n_layer, seq_len, dtype_bytes(dtype)
    caduceus = isinstance(cfg, CaduceusConfig)
    dirs = 2 if caduceus and cfg.bidirectional else 1
    streams = 2 if caduceus and cfg.rcps else 1
    tied = dirs == 1 or cfg.bidirectional_weight_tie
    proj_count = n if tied else n * dirs
    proj_runs = (dirs if tied else 1) * streams  # runs of one stored projection per token
    runs = streams  # runs of one stored per-direction module per token
    times = ", ".join((["2 dir"] if dirs > 1 else []) + (["2 RC"] if streams > 1 else []))
    times = f" ({times})" if times else ""
    family = "caduceus" if caduceus else "mamba"
    rows = [
        Row("embedding (tied head)", 1, V * D, 0.0, 8.0),
        Row("mamba in_proj" + times, proj_count, 2 * D * E + (2 * E if cfg.bias else 0),
            proj_runs * 4.0 * D * E, proj_runs * b * D),
        Row("mamba conv" + times, n * dirs, E * K + (E if cfg.conv_bias else 0), runs * 2.0 * K * E,
            runs * b * E * (L + K - 1) / L),
        Row("mamba x_proj" + times, n * dirs, E * (R + 2 * N), runs * 2.0 * E * (R + 2 * N), runs * b * E),
        Row("mamba dt_proj" + times, n * dirs, R * E + E, runs * 2.0 * R * E, runs * b * R),
        Row("selective scan" + times, n * dirs, E * N + E, runs * float(SCAN_FLOPS_PER_STATE * E * N),
            runs * b * (3 * E + 2 * N)),
        Row("mamba out_proj" + times, proj_count, E * D + (D if cfg.bias else 0), proj_runs * 2.0 * E * D,
            proj_runs * b * E),
        Row("norms (1 per block)", n, D, 0.0, streams * (4 * D + 4)),
        Row("final norm", 1, D, 0.0, streams * (4 * D + 4)),
        Row("LM head + loss" + (" (2 RC)" if streams > 1 else ""), 1, 0, streams * 2.0 * D * V,
            streams * b * D + (b * V if b < 4 else 0) + 4 * V + 8),
    ]
    return ModelInfo(family, L, batch_size, b, tuple(rows))
