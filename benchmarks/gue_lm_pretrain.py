"""Does in-domain next-token pretraining help GUE prom_core_all fine-tuning from scratch (CPU, matched budget)?

Arms, per seed (one randomly initialised tiny-1k HyenaDNA, 2 x 128, 0.44M parameters, shared by all runs):

* ``baseline``: ``dnalm finetune task=gue_prom_core_all`` from the random model for ``--baseline-time``.
* ``pretrain``: next-token pretraining (``dnalm finetune task=lm``) on the task's *training* sequences only
  (concatenated, separated by runs of N, which carry no loss), ``--pretrain-time``; then the same
  fine-tuning recipe from the pretrained model for ``--finetune-time``. The dev sequences, built the same
  way, are the LM validation record; the test split is used by nothing but the final fine-tuning metrics.

    python benchmarks/gue_lm_pretrain.py --data-root ../shared/data --out runs/gue_lm --seeds 0 1

Writes ``OUT/lm.fa``, ``OUT/prepared/``, ``OUT/init/``, ``OUT/seedS/{lm,ft_pretrained,ft_baseline}/``,
``OUT/results.json`` and prints a table (epochs, best dev MCC, test MCC, test AUROC, wall time per part).
Runs one training process at a time; a run whose ``metrics.json`` exists is reused (``--force`` redoes it).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

TASK = "gue_prom_core_all"
RECIPE = ["trainer.max_epochs=20", "optim.lr=1e-3", "optim.weight_decay=0.1", "data.rc_aug=true",
          "task.patience=3", "trainer.progress_bar=false"]


def dnalm(args: list[str], log: Path) -> float:
    """Run ``dnalm ARGS`` in a subprocess (output to ``log``); return the wall time in seconds."""
    cmd = [sys.executable, "-c", "import sys; from dnalm.cli import main; sys.exit(main(sys.argv[1:]))", *args]
    print("$ dnalm " + " ".join(args), flush=True)
    start = time.time()
    with open(log, "w") as fh:
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT)
    took = time.time() - start
    if rc != 0:
        tail = log.read_text().strip().splitlines()[-5:]
        raise SystemExit(f"dnalm {args[0]} failed (exit {rc}, {log}):\n" + "\n".join(tail))
    print(f"  done in {took:.0f} s", flush=True)
    return took


def build_fasta(task_dir: Path, fasta: Path, n_sep: int) -> dict[str, int]:
    """One record per split (``train``, ``dev``): its sequences joined by ``n_sep`` Ns."""
    sizes = {}
    with open(fasta, "w") as out:
        for split in ("train", "dev"):
            with open(task_dir / f"{split}.csv", newline="") as fh:
                seqs = [row["sequence"].upper() for row in csv.DictReader(fh)]
            record = ("N" * n_sep).join(seqs)
            sizes[split] = len(record)
            out.write(f">{split}\n")
            for i in range(0, len(record), 80):
                out.write(record[i:i + 80] + "\n")
    return sizes


def make_init(path: Path, seed: int) -> None:
    """A randomly initialised tiny-1k HyenaDNA (2 layers, width 128) in dnalm format."""
    import torch

    from dnalm.models.hyena import HyenaConfig, HyenaLM
    from dnalm.models.io import save_pretrained
    from dnalm.tokenizers import CharTokenizer

    torch.manual_seed(seed)
    model = HyenaLM(HyenaConfig(d_model=128, n_layer=2, d_inner=512, l_max=1026))
    save_pretrained(model, path, tokenizer=CharTokenizer())


def summary(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    dev, test = m.get("dev") or {}, m.get("test") or {}
    return {"epochs": m.get("epochs"), "best_epoch": m.get("best_epoch"), "dev_mcc": dev.get("mcc"),
            "test_mcc": test.get("mcc"), "test_auroc": test.get("auroc"), "train_seconds": m.get("train_seconds")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--out", default="runs/gue_lm")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--arms", nargs="+", default=["pretrain", "baseline"], choices=["pretrain", "baseline"])
    p.add_argument("--pretrain-time", default="00:00:04:00", help="DD:HH:MM:SS")
    p.add_argument("--finetune-time", default="00:00:05:00", help="fine-tuning after pretraining")
    p.add_argument("--baseline-time", default="00:00:09:00", help="fine-tuning from the random model")
    p.add_argument("--length", type=int, default=128, help="LM pretraining window")
    p.add_argument("--lm-batch-size", type=int, default=64)
    p.add_argument("--lm-lr", default="1e-3")
    p.add_argument("--lm-val-every", type=int, default=200, help="LM validation interval (steps)")
    p.add_argument("--n-sep", type=int, default=8, help="Ns between concatenated sequences")
    p.add_argument("--init-seed", type=int, default=0, help="seed of the random initial weights")
    p.add_argument("--extra", nargs="*", default=[], help="overrides added to every fine-tuning command")
    p.add_argument("--lm-extra", nargs="*", default=[], help="overrides added to the pretraining command")
    p.add_argument("--force", action="store_true", help="redo runs that already have metrics.json")
    a = p.parse_args(argv)

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    task_dir = Path(a.data_root) / "gue" / "prom" / "prom_core_all"
    times: dict[str, float] = {}

    prepared = out / "prepared"
    if a.force or not prepared.is_dir() or "pretrain" in a.arms and not any(prepared.iterdir()):
        start = time.time()
        sizes = build_fasta(task_dir, out / "lm.fa", a.n_sep)
        print(f"lm.fa: train {sizes['train']:,} bases, dev {sizes['dev']:,} bases", flush=True)
        times["prepare"] = time.time() - start + dnalm(
            ["prepare", f"genome={out / 'lm.fa'}", f"out={prepared}", "name=gue_prom_core_all_lm",
             "split.strategy=records", "split.val=[dev]", "split.test=[]"], out / "prepare.log")
    init = out / "init"
    if a.force or not (init / "config.json").exists():
        make_init(init, a.init_seed)

    results: dict[str, dict] = {}
    for seed in a.seeds:
        base = out / f"seed{seed}"
        base.mkdir(exist_ok=True)
        common = [f"task={TASK}", f"data_root={a.data_root}", f"seed={seed}", "save_model=false", *RECIPE, *a.extra]
        if "pretrain" in a.arms:
            lm = base / "lm"
            if a.force or not (lm / "model").is_dir():
                times[f"seed{seed}/pretrain"] = dnalm(
                    ["finetune", f"checkpoint={init}", "task=lm", f"data.prepared={prepared}", f"out={lm}",
                     f"seed={seed}", f"data.length={a.length}", f"data.batch_size={a.lm_batch_size}",
                     "data.eval_batch_size=256", "data.rc_aug=true", f"optim.lr={a.lm_lr}", "optim.warmup_steps=100",
                     "optim.horizon=time", "trainer.max_steps=1000000", f"trainer.max_time={a.pretrain_time}",
                     f"trainer.val_check_interval={a.lm_val_every}", "trainer.progress_bar=false", *a.lm_extra],
                    base / "lm.log")
            ft = base / "ft_pretrained"
            if a.force or not (ft / "metrics.json").exists():
                times[f"seed{seed}/ft_pretrained"] = dnalm(
                    ["finetune", f"checkpoint={lm / 'model'}", f"out={ft}", f"trainer.max_time={a.finetune_time}",
                     *common], base / "ft_pretrained.log")
            results[f"pretrain seed {seed}"] = summary(ft)
        if "baseline" in a.arms:
            ft = base / "ft_baseline"
            if a.force or not (ft / "metrics.json").exists():
                times[f"seed{seed}/ft_baseline"] = dnalm(
                    ["finetune", f"checkpoint={init}", f"out={ft}", f"trainer.max_time={a.baseline_time}", *common],
                    base / "ft_baseline.log")
            results[f"baseline seed {seed}"] = summary(ft)

    (out / "results.json").write_text(json.dumps({"results": results, "wall_seconds": times}, indent=2) + "\n")
    print("\n| arm | epochs | best epoch | best dev MCC | test MCC | test AUROC | fine-tune s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        cells = [r["epochs"], r["best_epoch"]] + [f"{r[k]:.4f}" if r[k] is not None else "-"
                                                 for k in ("dev_mcc", "test_mcc", "test_auroc")]
        print(f"| {name} | " + " | ".join(str(c) for c in cells) + f" | {r['train_seconds']} |")
    for name, s in times.items():
        print(f"{name}: {s:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
