"""Check chunked inference through the fused Hyena block against the reference chunks, on a GPU.

    python benchmarks/check_fused_chunks.py [--device cpu --fast-path fused]

For small random HyenaLMs (several widths, short-filter sizes and contexts) and several lengths, chunk
sizes and batches, prints the largest difference (relative to each tensor's largest value) between
the chunks of the fused block
(``--fast-path auto``: the Triton kernels on CUDA; ``fused``: their PyTorch twins off CUDA) and the
reference chunks (``fast_path='reference'``) over the logits and two hidden states in float32, and
``||bf16 - fp32|| / ||fp32||`` of a hidden state under ``precision='bf16'``. Where the whole sequence
fits the context, also against the unchunked fused forward. Float32 differences should stay at
rounding level (below 1e-4: the perturbed weights amplify rounding; a wrong history gives 1e-1).
"""

from __future__ import annotations

import argparse
import copy

import torch

from dnalm.inference.chunked import chunked_forward
from dnalm.models.hyena import HyenaConfig, HyenaLM


def perturbed(cfg: HyenaConfig, seed: int, device: torch.device) -> HyenaLM:
    """A model whose weights are moved away from the initialisation (whose outputs are nearly uniform)."""
    torch.manual_seed(seed)
    model = HyenaLM(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model.to(device).eval()


def with_fast_path(model: HyenaLM, fast_path: str) -> HyenaLM:
    out = copy.deepcopy(model)
    for op in out.mixers:
        op.fast_path = fast_path
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--fast-path", default="auto", help="of the fused side: auto (Triton on CUDA) or fused")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    worst = 0.0
    for d, K, l_max in [(16, 3, 64), (96, 3, 300), (64, 4, 50), (256, 3, 1000)]:
        cfg = HyenaConfig(d_model=d, n_layer=2, d_inner=2 * d, l_max=l_max, filter_order=16, short_filter_order=K,
                          embed_dropout=0.0)
        base = perturbed(cfg, 0, device)
        ref, fused = with_fast_path(base, "reference"), with_fast_path(base, args.fast_path)
        for L, T, B in [(10, 3, 2), (l_max, 1, 1), (3 * l_max + 7, 17, 3), (3 * l_max + 7, l_max, 2),
                        (5 * l_max, 2 * l_max + 3, 1), (l_max // 2, 1000, 2)]:
            ids = torch.randint(7, 12, (B, L), device=device)
            a, ha = chunked_forward(ref, ids, T, [1, -1])
            b, hb = chunked_forward(fused, ids, T, [1, -1])
            # per tensor, relative to its largest value (the residual stream of these weights grows large)
            err = max(((x - y).abs().max() / x.abs().max()).item() for x, y in zip([a, *ha], [b, *hb], strict=True))
            worst = max(worst, err)
            _, hc = chunked_forward(fused, ids, T, [1, -1], precision="bf16")
            bf16 = ((hc[0] - ha[0]).norm() / ha[0].norm()).item()
            line = (f"d={d} K={K} l_max={l_max} L={L} T={T} B={B}: fused - reference {err:.2e}, "
                    f"bf16 {bf16:.2e}")
            if L <= l_max:
                with torch.no_grad():
                    line += f", unchunked fused {((fused(ids) - b).abs().max() / b.abs().max()).item():.2e}"
            print(line, flush=True)
    print(f"largest difference relative to the outputs' scale: {worst:.2e}")
    return 0 if worst < 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
