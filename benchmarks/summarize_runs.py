"""Markdown tables of the yeast pretraining and GUE fine-tuning runs of ``benchmarks/gpu_yeast_gue.sh``.

    python benchmarks/summarize_runs.py RUNS_DIR

RUNS_DIR holds ``yeast_<name>/metrics.json`` (``dnalm train ... test=true``) and
``gue_<task>/seed<k>/metrics.json`` (``dnalm finetune``). Yeast: steps, training time, the validation step
chosen, validation and test bits/base of that checkpoint. GUE: test MCC per seed (model of the best dev
epoch), their mean and standard deviation, and the mean test AUROC.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch

from dnalm.models.blocks import count_parameters
from dnalm.models.hyena import HyenaConfig, HyenaLM
from dnalm.models.io import read_pretrained_info


def _shell(model_dir: Path) -> HyenaLM:
    """The saved Hyena model's architecture, without its weights (which need not have been kept)."""
    return HyenaLM(HyenaConfig(**read_pretrained_info(model_dir)["config"]), device=torch.device("meta"))


def yeast_table(root: Path) -> list[str]:
    rows = ["| run | parameters | steps | training s | best step | val bits/base (best) | test bits/base "
            "| model/ holds |", "|---|---|---|---|---|---|---|---|"]
    for path in sorted(root.glob("yeast_*/metrics.json")):
        m = json.loads(path.read_text())
        model = path.parent / "model"
        params = f"{count_parameters(_shell(model)):,}" if (model / "config.json").is_file() else ""
        best = m.get("best", {})
        val_bpb = best.get("val/loss")
        val_bpb = f"{val_bpb / 0.6931471805599453:.4f}" if val_bpb is not None else "-"
        test = (m.get("test") or {}).get("bits_per_base")
        rows.append(f"| {path.parent.name.removeprefix('yeast_')} | {params} | {m['global_step']} | "
                    f"{m['train_seconds']:.0f} | {best.get('step')} | {val_bpb} | "
                    f"{'-' if test is None else f'{test:.4f}'} | {m.get('model', '-')} |")
    return rows


def gue_table(root: Path) -> list[str]:
    rows = ["| task | test MCC per seed | mean MCC | sd | mean AUROC | epochs (best) |", "|---|---|---|---|---|---|"]
    for task_dir in sorted(p for p in root.glob("gue_*") if p.is_dir()):
        runs = [json.loads(p.read_text()) for p in sorted(task_dir.glob("seed*/metrics.json"))]
        if not runs:
            continue
        mcc = [r["test"]["mcc"] for r in runs]
        auroc = [r["test"]["auroc"] for r in runs]
        sd = statistics.stdev(mcc) if len(mcc) > 1 else 0.0
        epochs = ", ".join(f"{r['epochs']} ({r['best_epoch']})" for r in runs)
        rows.append(f"| {task_dir.name.removeprefix('gue_')} | {' / '.join(f'{v:.3f}' for v in mcc)} | "
                    f"{statistics.mean(mcc):.3f} | {sd:.3f} | {statistics.mean(auroc):.3f} | {epochs} |")
    return rows


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python benchmarks/summarize_runs.py RUNS_DIR", file=sys.stderr)
        return 2
    root = Path(argv[0])
    print("\n".join(yeast_table(root) + [""] + gue_table(root)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
