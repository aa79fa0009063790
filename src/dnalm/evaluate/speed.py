"""Training and inference throughput across sequence lengths, with the GPU's own ceilings beside it.

At a fixed token budget per step (batch = budget / length), each model is timed for a training
step (forward, next-token cross-entropy, backward, AdamW step) and a forward pass, under bf16
autocast, in one process. Models: ``hyena`` (dnalm's HyenaDNA with the fused kernels),
``hyena-ref`` (the same weights through dnalm's reference path, ``fast_path=reference``),
``transformer`` (dnalm's Transformer baseline) and ``gpt`` (:class:`PlainGPT`, a plain PyTorch
SDPA GPT of the same size with the same rotary attention, the yardstick for ``transformer``),
``mamba`` and ``caduceus`` (dnalm's selective-state-space families, at the preset's ``d_model`` and ``n_layer``
when the family has no preset of that name; Caduceus, a masked LM, is timed with the same cross-entropy over
every position). Attention costs O(L^2): the attention models run only up to ``attention_cap`` tokens.

The ceilings are measured at the start: device-to-device copy bandwidth (bytes read + written)
and a bf16 8192^3 matrix product. Each row reports the matmul FLOP rate as a fraction of the
latter (FLOPs of the Linear layers, the LM head and, for attention, the causal half of ``q k^T``
and ``A v``; for the other families, every FLOP of the family's cost model, :mod:`dnalm.models.info`;
training = 3 x forward) and, for Hyena, the traffic of the fused design's kernels
(:func:`hyena_traffic_bytes`) as a fraction of the former.

Library API: :func:`ceilings`, :func:`run_speed` (returns :class:`SpeedRow` objects),
:func:`markdown_table`. Front ends: ``dnalm speed`` and ``benchmarks/speed.py``.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MODELS = ("hyena", "hyena-ref", "transformer", "gpt", "mamba", "caduceus")
MODES = ("train", "forward")


@dataclass
class Ceilings:
    copy_gbs: float  # device-to-device copy, GB/s counting bytes read plus bytes written
    matmul_tflops: float  # bf16 8192^3 matrix product


@dataclass
class SpeedRow:
    model: str
    mode: str
    length: int
    batch: int
    tokens_per_s: float | None
    step_ms: float | None
    peak_gib: float | None
    matmul_frac: float | None
    bw_frac: float | None
    note: str = ""


def device_description() -> dict[str, str]:
    """GPU name, driver, CUDA and torch versions."""
    out = {"torch": torch.__version__, "cuda": str(torch.version.cuda)}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.strip()
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = "none"
    return out


def _time_ms(fn: Callable[[], object], reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def ceilings(device: torch.device | str = "cuda") -> Ceilings:
    """Measure the copy bandwidth (2 GiB buffers) and the bf16 matmul rate (8192^3) on ``device``."""
    n, m = 1 << 30, 8192
    bufs = [torch.randn(n, device=device, dtype=torch.bfloat16), torch.empty(n, device=device, dtype=torch.bfloat16)]
    _time_ms(lambda: bufs[1].copy_(bufs[0]), 3)
    copy_ms = statistics.median(_time_ms(lambda: bufs[1].copy_(bufs[0]), 10))
    bufs = [torch.randn(m, m, device=device, dtype=torch.bfloat16) for _ in range(2)]
    _time_ms(lambda: bufs[0] @ bufs[1], 3)
    mm_ms = statistics.median(_time_ms(lambda: bufs[0] @ bufs[1], 10))
    bufs.clear()
    return Ceilings(copy_gbs=2 * 2 * n / copy_ms / 1e6, matmul_tflops=2 * m ** 3 / mm_ms / 1e9)


class PlainGPT(nn.Module):
    """A plain pre-LN GPT: embedding, ``n_layer`` x (SDPA causal attention with rotary embeddings, GELU MLP),
    final LayerNorm, tied head. input_ids (B, L) -> logits (B, L, V). The size and math of dnalm's
    Transformer (rotate-half rotary, head width d / n_head), written the shortest way."""

    def __init__(self, d: int, n_layer: int, n_head: int, d_inner: int, vocab: int, base: float = 10000.0):
        super().__init__()
        self.n_head, self.base = n_head, base
        self.emb = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(nn.ModuleDict({
            "ln1": nn.LayerNorm(d), "qkv": nn.Linear(d, 3 * d), "out": nn.Linear(d, d), "ln2": nn.LayerNorm(d),
            "fc1": nn.Linear(d, d_inner), "fc2": nn.Linear(d_inner, d)}) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, ids: Tensor) -> Tensor:
        B, L = ids.shape
        hd = self.emb.embedding_dim // self.n_head
        inv = self.base ** (-torch.arange(0, hd, 2, device=ids.device, dtype=torch.float32) / hd)
        ang = torch.arange(L, device=ids.device, dtype=torch.float32)[:, None] * inv
        cos, sin = ang.cos().repeat(1, 2), ang.sin().repeat(1, 2)  # (L, hd)
        x = self.emb(ids)
        for p in self.layers:
            q, k, v = p["qkv"](p["ln1"](x)).view(B, L, 3, self.n_head, hd).permute(2, 0, 3, 1, 4)
            q, k = (t * cos + torch.cat([-t[..., hd // 2:], t[..., :hd // 2]], -1) * sin for t in (q, k))
            o = F.scaled_dot_product_attention(q.to(v.dtype), k.to(v.dtype), v, is_causal=True)
            x = x + p["out"](o.transpose(1, 2).reshape(B, L, -1))
            x = x + p["fc2"](F.gelu(p["fc1"](p["ln2"](x)), approximate="tanh"))
        return self.ln_f(x) @ self.emb.weight.t()


def build_model(name: str, preset: str, max_len: int, device: torch.device | str = "cuda") -> nn.Module:
    """One of :data:`MODELS` (or any causal family by name) at the size of preset ``preset``, float32
    weights on ``device``. ``hyena-ref``: Hyena on its reference code path; ``gpt``: :class:`PlainGPT` at
    the Transformer preset's size."""
    from dnalm.models.families import family

    fam = family("hyena" if name == "hyena-ref" else "transformer" if name == "gpt" else name)
    overrides: dict = {}
    if preset not in fam.presets:  # a family with presets of its own: the size of the Hyena preset
        overrides = _size_of(preset)
        preset = "small"
    default = fam.config_cls.preset(preset, **overrides)
    if fam.context_field is not None:
        overrides[fam.context_field] = max(max_len + 2, fam.context_length(default) if fam.name == "hyena" else 0)
    if name.startswith("hyena"):
        overrides["fast_path"] = "reference" if name == "hyena-ref" else "auto"
    cfg = fam.config_cls.preset(preset, **overrides)
    if name == "gpt":
        return PlainGPT(cfg.d_model, cfg.n_layer, cfg.n_head, cfg.d_inner, cfg.padded_vocab_size).to(device)
    return fam.build(cfg, device=device)


def _size_of(preset: str) -> dict[str, int]:
    """``d_model`` and ``n_layer`` of Hyena's preset ``preset`` (the size other families are timed at)."""
    from dnalm.models.hyena import HyenaConfig

    cfg = HyenaConfig.preset(preset)
    return {"d_model": cfg.d_model, "n_layer": cfg.n_layer}


def matmul_flops_per_token(name: str, preset: str, length: int) -> float:
    """Forward matmul FLOPs per token: Linear layers, LM head and (attention) the causal half of the scores; for a
    family besides Hyena and the Transformers, the forward FLOPs of its cost model (:mod:`dnalm.models.info`)."""
    from dnalm.models.hyena import HyenaConfig

    if name not in ("hyena", "hyena-ref", "transformer", "gpt"):
        from dnalm.models.families import family

        fam = family(name)
        cfg = fam.config_cls.preset(preset) if preset in fam.presets else \
            fam.config_cls.preset("small", **_size_of(preset))
        return fam.info(cfg, length, 1, "bf16").forward_flops_per_token

    cfg = HyenaConfig.preset(preset)
    d, di, n = cfg.d_model, cfg.d_inner, cfg.n_layer
    per_layer = 2 * (3 * d * d + d * d + 2 * d * di)
    if not name.startswith("hyena"):
        per_layer += 2 * length * d  # causal q k^T and A v: 4 L d / 2
    return n * per_layer + 2 * d * cfg.padded_vocab_size


def hyena_traffic_bytes(preset: str, train: bool) -> float:
    """Bytes per token that the fused Hyena design's kernels move through memory (LM head and optimizer left out).

    Per layer, in bytes per channel (D = d_model; I-terms per MLP channel, I = d_inner), bf16
    activations, float32 FFT buffers at n = 2L, each FFT counted as one read and one write:
    forward LN1 6, in_proj 8, prologue 12, rfft 16, spectral product 16, irfft 16, epilogue 14,
    out_proj 4, LN2 8, fc1 2 + 2I, GELU 4I, fc2 2 + 2I, residual 12 (116 D + 8 I);
    backward dy 4, prologue 28, dW_out 4, two FFTs 32, spectral step 24, inverse FFT 16, short-conv
    gradient 20 and its transpose 12, LN1 recompute 6, in_proj grads 16, LN1 backward 10,
    residual-gradient sum 12, MLP 44 (228 D + 16 I). (Complex FFTs of n/2 points: the same bytes as real ones.)
    """
    from dnalm.models.hyena import HyenaConfig

    cfg = HyenaConfig.preset(preset)
    D, Di = cfg.d_model, cfg.d_inner
    fwd, bwd = 116 * D + 8 * Di, 228 * D + 16 * Di
    return cfg.n_layer * (fwd + bwd if train else fwd)


def step_fn(model: nn.Module, mode: str, ids: Tensor, targets: Tensor) -> Callable[[], None]:
    if mode == "forward":
        def forward() -> None:
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                model(ids)
        return forward
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def train() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(ids)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return train


def measure(model: nn.Module, name: str, mode: str, length: int, budget: int, preset: str, ceil: Ceilings,
            steps: int = 3, warmup: int = 1) -> SpeedRow:
    """Time one (model, mode, length) configuration; an out-of-memory error gives a row with a note."""
    batch = max(1, budget // length)
    note = ""
    gen = torch.Generator(device="cuda").manual_seed(length)
    ids = torch.randint(7, 11, (batch, length), device="cuda", generator=gen)
    targets = torch.randint(7, 11, (batch, length), device="cuda", generator=gen)
    model.train(mode == "train")
    try:
        step = step_fn(model, mode, ids, targets)
        for _ in range(warmup):
            step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        ms = statistics.median(_time_ms(step, steps))
        peak = torch.cuda.max_memory_allocated() / 2 ** 30
    except torch.OutOfMemoryError:
        for p in model.parameters():
            p.grad = None
        return SpeedRow(name, mode, length, batch, None, None, None, None, None, "out of memory")
    finally:
        del ids, targets
        torch.cuda.empty_cache()
    tps = batch * length / ms * 1e3
    factor = 3 if mode == "train" else 1
    mm = factor * matmul_flops_per_token(name, preset, length) * tps / (ceil.matmul_tflops * 1e12)
    bw = None
    if name == "hyena":
        bw = hyena_traffic_bytes(preset, mode == "train") * tps / (ceil.copy_gbs * 1e9)
    return SpeedRow(name, mode, length, batch, tps, ms, peak, mm, bw, note)


def run_speed(models: Sequence[str], modes: Sequence[str], lengths: Sequence[int], budget: int = 1 << 20,
              preset: str = "large-1m", attention_cap: int = 65536, ref_checkpoint_from: int = 524288,
              steps: int = 3, warmup: int = 1, ceil: Ceilings | None = None,
              report: Callable[[SpeedRow], None] | None = None,
              mixer_checkpoint_from: int = 2 * 1048576) -> list[SpeedRow]:
    """Measure every (model, length, mode); ``report`` is called with each row as it completes.

    ``hyena-ref`` trains with activation checkpointing of every block from ``ref_checkpoint_from``
    tokens on; every dnalm model but ``hyena`` does wherever it runs out of memory without it (noted in the
    row; :func:`dnalm.training.lightning.checkpoint_blocks`); ``hyena`` checkpoints only its mixers (selective
    checkpointing) from ``mixer_checkpoint_from`` tokens on.
    """
    from dnalm.training.lightning import checkpoint_blocks

    ceil = ceil or ceilings()
    rows = []
    for name in models:
        for length in lengths:
            if name in ("transformer", "gpt") and length > attention_cap:
                continue
            torch.manual_seed(0)
            model = build_model(name, preset, max(lengths))
            if name == "hyena-ref" and length >= ref_checkpoint_from:
                checkpoint_blocks(model)
            checkpointed = name == "hyena-ref" and length >= ref_checkpoint_from
            if name == "hyena" and length >= mixer_checkpoint_from:
                for mixer in model.mixers:
                    mixer.checkpoint_mixer = True
            for mode in modes:
                row = measure(model, name, mode, length, budget, preset, ceil, steps, warmup)
                if name not in ("hyena", "gpt") and mode == "train" and row.tokens_per_s is None and not checkpointed:
                    checkpoint_blocks(model)  # e.g. the reference or Mamba at 1M tokens; the fused path never did
                    checkpointed = True
                    row = measure(model, name, mode, length, budget, preset, ceil, steps, warmup)
                if checkpointed and mode == "train":
                    row.note = (row.note + "; " if row.note else "") + "activation checkpointing"
                if name == "hyena" and length >= mixer_checkpoint_from and mode == "train":
                    row.note = (row.note + "; " if row.note else "") + "mixer checkpointing"
                rows.append(row)
                if report:
                    report(row)
            del model
            torch.cuda.empty_cache()
    return rows


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def length_label(n: int) -> str:
    """1024 -> '1k', 1048576 -> '1M'."""
    for unit, size in (("M", 1 << 20), ("k", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def parse_length(text: str) -> int:
    """'1k' -> 1024, '1M' -> 1048576, '4096' -> 4096."""
    text = text.strip()
    scale = {"k": 1 << 10, "K": 1 << 10, "m": 1 << 20, "M": 1 << 20}.get(text[-1:], 1)
    return int(text[:-1] if scale > 1 else text) * scale


def markdown_table(rows: Sequence[SpeedRow]) -> str:
    """One line per row, plus the Hyena speed-up over its reference at each (mode, length)."""
    ref = {(r.mode, r.length): r.tokens_per_s for r in rows if r.model == "hyena-ref"}
    gpt = {(r.mode, r.length): r.tokens_per_s for r in rows if r.model == "gpt"}
    lines = ["| model | mode | length | batch | tokens/s | step ms | peak GiB | matmul % | bandwidth % | vs ref "
             "| note |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = ref if r.model == "hyena" else gpt if r.model == "transformer" else {}
        b = base.get((r.mode, r.length))
        ratio = f"{r.tokens_per_s / b:.2f}x" if b and r.tokens_per_s else "-"
        lines.append(f"| {r.model} | {r.mode} | {length_label(r.length)} | {r.batch} | "
                     f"{_fmt(r.tokens_per_s and r.tokens_per_s / 1e6, '.2f')}M | {_fmt(r.step_ms, '.1f')} | "
                     f"{_fmt(r.peak_gib, '.1f')} | {_fmt(r.matmul_frac and 100 * r.matmul_frac, '.1f')} | "
                     f"{_fmt(r.bw_frac and 100 * r.bw_frac, '.1f')} | {ratio} | {r.note} |")
    return "\n".join(lines)


def geometric_lengths(lo: int, hi: int) -> list[int]:
    """Powers of two from lo to hi."""
    return [1 << k for k in range(int(math.log2(lo)), int(math.log2(hi)) + 1)]
