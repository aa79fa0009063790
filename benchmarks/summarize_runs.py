"""Markdown tables of the yeast pretraining and GUE fine-tuning runs of ``benchmarks/gpu_yeast_gue.sh`` and
``benchmarks/gpu_families.sh``.

    python benchmarks/summarize_runs.py RUNS_DIR

RUNS_DIR holds ``yeast_<name>/metrics.json`` (``dnalm train ... test=true``) and GUE runs (``dnalm finetune``)
as ``gue_<task>/seed<k>/metrics.json`` or ``gue_<model>/<task>_seed<k>/metrics.json``. Yeast: family,
parameters, steps, training time, the validation step chosen, validation and test figures of that
checkpoint: bits/base for a next-token model, bits per masked base and masked-token accuracy for a masked
LM (the two are not comparable); test bits/base per region class of the next-token runs. GUE: test MCC per
seed (model of the best dev epoch), their mean and standard deviation, and the mean test AUROC.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from dnalm.models.blocks import count_parameters
from dnalm.models.families import family
from dnalm.models.io import read_pretrained_info
from dnalm.recipes.train import build_model


def _family_and_parameters(run_dir: Path) -> tuple[str, str]:
    """The run's model family and parameter count, its architecture built without weights (which need not
    have been kept) from the saved ``model/config.json``, else from the run's ``config.yaml``; empty strings
    without either."""
    meta_file, run_config = run_dir / "model" / "config.json", run_dir / "config.yaml"
    if meta_file.is_file():
        meta = read_pretrained_info(meta_file.parent)
        fam = family(meta.get("family", "hyena"))
        shell = fam.build(fam.config_cls(**meta["config"]), device=torch.device("meta"))
    elif run_config.is_file():
        cfg = OmegaConf.to_container(OmegaConf.load(run_config), resolve=False)
        fam = family(cfg["model"]["family"])
        shell = build_model(cfg["model"], int(cfg["data"]["length"]), device=torch.device("meta"))
    else:
        return "", ""
    return fam.name, f"{count_parameters(shell):,}"


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def yeast_table(root: Path) -> list[str]:
    rows = ["| run | family | parameters | steps | training s | best step | val (best) | test | test accuracy "
            "| model/ holds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(root.glob("yeast_*/metrics.json")):
        m = json.loads(path.read_text())
        name, params = _family_and_parameters(path.parent)
        best, test = m.get("best", {}), m.get("test") or {}
        val_loss = best.get("val/loss")
        val_bits = _fmt(None if val_loss is None else val_loss / math.log(2))
        if m.get("objective") == "masked":  # bits per masked base, and how often the masked token is recovered
            val = f"{val_bits} bits/masked token"
            test_fig = f"{_fmt(test.get('bits_per_masked_base'))} bits/masked base"
            acc = _fmt(test.get("acc"))
        else:
            val = f"{val_bits} bits/base"
            test_fig, acc = f"{_fmt(test.get('bits_per_base'))} bits/base", "-"
        rows.append(f"| {path.parent.name.removeprefix('yeast_')} | {name} | {params} | {m['global_step']} | "
                    f"{m['train_seconds']:.0f} | {best.get('step')} | {val} | {test_fig} | {acc} | "
                    f"{m.get('model', '-')} |")
    return rows


REGIONS = ("CDS", "UTR", "exon_other", "intergenic", "intron", "promoter", "repeat")


def region_table(root: Path) -> list[str]:
    """Test bits/base of the next-token yeast runs per region class (``dnalm prepare``'s GFF3 labels), each
    column's lowest in bold."""
    runs = []
    for path in sorted(root.glob("yeast_*/metrics.json")):
        m = json.loads(path.read_text())
        test = m.get("test") or {}
        if m.get("objective") != "masked" and "bits_per_base" in test:
            figures = [test["bits_per_base"]] + [test.get(f"bits_per_base/{r}") for r in REGIONS]
            runs.append((path.parent.name.removeprefix("yeast_"), figures))
    rows = ["| run | all | " + " | ".join(REGIONS) + " |", "|---|" + "---|" * (len(REGIONS) + 1)]
    for name, figures in runs:
        cells = []
        for j, x in enumerate(figures):
            column = [f[j] for _, f in runs if f[j] is not None]
            cells.append(f"**{x:.4f}**" if x is not None and x == min(column) and len(column) > 1 else _fmt(x))
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows if runs else []


def _gue_groups(root: Path) -> dict[str, list[Path]]:
    """Metrics files of the GUE runs grouped by (model, task): ``gue_<task>/seed<k>`` (one model) and
    ``gue_<model>/<task>_seed<k>``."""
    groups: dict[str, list[Path]] = {}
    for path in sorted(root.glob("gue_*/*/metrics.json")):
        top, run = path.parent.parent.name.removeprefix("gue_"), path.parent.name
        named = re.fullmatch(r"(.+)_seed\d+", run)
        groups.setdefault(f"{top} {named.group(1)}" if named else top, []).append(path)
    return groups


def gue_table(root: Path) -> list[str]:
    rows = ["| task | test MCC per seed | mean MCC | sd | mean AUROC | epochs (best) |", "|---|---|---|---|---|---|"]
    for group, paths in _gue_groups(root).items():
        runs = [json.loads(p.read_text()) for p in paths]
        mcc = [r["test"]["mcc"] for r in runs]
        auroc = [r["test"]["auroc"] for r in runs]
        sd = statistics.stdev(mcc) if len(mcc) > 1 else 0.0
        epochs = ", ".join(f"{r['epochs']} ({r['best_epoch']})" for r in runs)
        rows.append(f"| {group} | {' / '.join(f'{v:.3f}' for v in mcc)} | "
                    f"{statistics.mean(mcc):.3f} | {sd:.3f} | {statistics.mean(auroc):.3f} | {epochs} |")
    return rows


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python benchmarks/summarize_runs.py RUNS_DIR", file=sys.stderr)
        return 2
    root = Path(argv[0])
    print("\n".join(yeast_table(root) + [""] + region_table(root) + [""] + gue_table(root)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
