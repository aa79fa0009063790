"""Old vs new from-scratch fine-tuning recipe on a variety of classification tasks (CPU-sized or --full on a GPU).

Tasks (each written as ``OUT/tasks/<name>/{train,dev,test}.csv``; sizes: ``SIZES`` (default) / ``FULL``):

* ``synth_regions``: windows of a synthetic genome (:mod:`dnalm.genome.synth`, seed 1) labelled by the
  region class of their centre base, CDS / intron / intergenic (3 classes at their natural, unequal
  frequencies); chromosome 1 trains, chromosome 2's two halves are dev and test;
* ``yeast_promoter``: yeast S288C windows centred in a promoter (500 bp upstream of a transcript start,
  :func:`dnalm.genome.regions.region_track`) vs in intergenic sequence (1:1); chromosome XIV is dev,
  XV and XVI test, the rest train;
* ``motif_strong`` / ``motif_weak`` / ``motif_rare`` / ``motif_long``: uniform random sequence (GC 0.42)
  with a 10-mer planted in a fraction ``strength`` of the positives (with up to ``mismatches``
  substitutions per copy) and in 2% of the negatives: strong (0.95, 0 mismatches), weak (0.6, 2
  mismatches), rare (10% positives) and long (1,000 bp, 0.8, 1 mismatch) variants of several sizes;
* ``gue_prom_core_all`` and ``gue_tf0``: the GUE tasks from ``--data-root`` (random subsets at CPU sizes).

Arms (the from-scratch model of ``benchmarks/gpu_yeast_gue.sh``, 4 x 256 HyenaDNA, 3.3M parameters, with
``--full``; a tiny 2 x 32 HyenaDNA otherwise), all with ``optim.weight_decay=0.1 data.rc_aug=true``, 4 epochs
(6 with ``--full``), patience 3, seed 0:

* ``old``: ``optim.lr=1e-3``, no warm-up, cosine decay (the recipe of the user report);
* ``new``: the shipped defaults of ``dnalm finetune`` (``conf/finetune.yaml``: learning rate and warm-up);
  when a ``GRID`` arm has the same settings its runs are shared;
* ``auto``: ``optim.lr=auto`` (the learning-rate range test) with the shipped warm-up;
* ``GRID`` arms (``lr3e-4+wu0.1``, ``lr1e-3+wu0.1``, ``lr3e-3+wu0.1``), named with ``--arms``: the measurement
  the shipped defaults were chosen from.

For each run the table gives test MCC, the final epoch's mean training loss against the constant-prediction
loss (the class-prior entropy), whether the collapse warning fired, and for ``auto`` the chosen rate::

    python benchmarks/finetune_recipes.py --data-root ../shared/data --out runs/recipes          # CPU, small
    python benchmarks/finetune_recipes.py --data-root ../shared/data --out runs/recipes --full   # GPU, ~5 min

Writes ``OUT/results.json`` (every run's metrics) and ``OUT/results.md`` (the table); a run whose
``metrics.json`` exists is reused (``--table-only`` runs nothing). CPU runs go one at a time on one thread
unless ``--jobs N``; ``--full`` runs 8 at a time on the GPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

# task -> (n_train, n_dev, n_test, length); CPU sizes and --full sizes
SIZES = {
    "synth_regions": (2000, 300, 500, 150), "yeast_promoter": (2000, 300, 500, 200),
    "motif_strong": (2000, 300, 500, 100), "motif_weak": (3000, 300, 500, 200),
    "motif_rare": (3000, 300, 500, 150), "motif_long": (2000, 300, 500, 300),
    "gue_prom_core_all": (3000, 500, 1000, 70), "gue_tf0": (3000, 500, 1000, 101),
}
FULL = {
    "synth_regions": (20000, 2000, 2000, 500), "yeast_promoter": (20000, 2000, 2000, 500),
    "motif_strong": (2000, 1000, 1000, 100), "motif_weak": (50000, 2000, 2000, 300),
    "motif_rare": (20000, 2000, 2000, 200), "motif_long": (10000, 1000, 1000, 1000),
    "gue_prom_core_all": (None, None, None, 70), "gue_tf0": (None, None, None, 101),
}
MOTIF = "TGACGTCAGC"
MOTIFS = {  # strength (fraction of positives carrying the motif), mismatches per copy, fraction of positives
    "motif_strong": (0.95, 0, 0.5), "motif_weak": (0.6, 2, 0.5), "motif_rare": (0.9, 1, 0.1),
    "motif_long": (0.8, 1, 0.5),
}
COMMON = ["optim.weight_decay=0.1", "data.rc_aug=true", "trainer.progress_bar=false", "save_model=false"]
ARMS = {
    "old": ["optim.lr=1e-3", "optim.warmup_steps=0", "optim.warmup_fraction=null", "optim.decay=cosine"],
    "new": [],
    "auto": ["optim.lr=auto"],
}
# the measurement behind the shipped defaults: learning rates with a 10% linear warm-up and cosine decay
GRID = {f"lr{lr}+wu0.1": [f"optim.lr={lr}", "optim.warmup_steps=0", "optim.warmup_fraction=0.1",
                          "optim.decay=cosine"] for lr in ("3e-4", "1e-3", "3e-3")}
BASES = np.frombuffer(b"ACGT", dtype=np.uint8)


def write_csv(path: Path, seqs: list[str], labels: list) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sequence", "label"])
        w.writerows(zip(seqs, labels))


def motif_task(out: Path, name: str, sizes: tuple, seed: int) -> None:
    strength, mismatches, pos_frac = MOTIFS[name]
    n_tr, n_dev, n_te, length = sizes
    rng = np.random.default_rng(seed)
    motif = np.frombuffer(MOTIF.encode(), dtype=np.uint8)
    p = np.array([0.29, 0.21, 0.21, 0.29])
    for split, n in (("train", n_tr), ("dev", n_dev), ("test", n_te)):
        x = BASES[rng.choice(4, size=(n, length), p=p)]
        y = (rng.random(n) < pos_frac).astype(int)
        plant = np.where(y == 1, rng.random(n) < strength, rng.random(n) < 0.02)
        for i in np.flatnonzero(plant):
            copy = motif.copy()
            for j in rng.choice(len(copy), size=mismatches, replace=False):
                copy[j] = BASES[rng.integers(4)]
            if rng.random() < 0.5:  # either strand
                copy = np.frombuffer(bytes(copy[::-1]).translate(bytes.maketrans(b"ACGT", b"TGCA")), dtype=np.uint8)
            s = rng.integers(0, length - len(copy) + 1)
            x[i, s:s + len(copy)] = copy
        write_csv(out / f"{split}.csv", [bytes(r).decode() for r in x], y.tolist())


def _windows(seq: bytes, track: np.ndarray, wanted: dict[int, str], n: int, length: int,
             rng: np.random.Generator, balanced: bool) -> tuple[list[str], list[str]]:
    """``n`` windows of ``length`` whose centre class is in ``wanted`` (uniform over positions, or 1:1 per class)."""
    cls = track & 0x7F
    half = length // 2
    pos = np.arange(half, len(seq) - length + half)
    keep = np.isin(cls[pos], list(wanted))
    pos = pos[keep]
    if balanced:
        per = [pos[cls[pos] == c] for c in wanted]
        picks = np.concatenate([rng.choice(p, size=n // len(per)) for p in per if len(p)])
    else:
        picks = rng.choice(pos, size=n)
    seqs, labels = [], []
    for c in picks:
        w = seq[c - half:c - half + length].upper()
        if b"N" in w:
            continue
        seqs.append(w.decode())
        labels.append(wanted[int(cls[c])])
    order = rng.permutation(len(seqs))
    return [seqs[i] for i in order], [labels[i] for i in order]


def synth_task(out: Path, sizes: tuple, seed: int, work: Path) -> None:
    from dnalm.genome.fasta import iter_records
    from dnalm.genome.gff import read_gff3
    from dnalm.genome.regions import CLASS_IDS, region_track
    from dnalm.genome.synth import SynthConfig, synthesize

    n_tr, n_dev, n_te, length = sizes
    paths = synthesize(SynthConfig(seed=1, n_chromosomes=2, chromosome_length=300_000, ploidy=1), work / "synth")
    ann = read_gff3(paths["gff3"])
    recs = list(iter_records(paths["fasta"]))
    wanted = {CLASS_IDS["CDS"]: "CDS", CLASS_IDS["intron"]: "intron", CLASS_IDS["intergenic"]: "intergenic"}
    rng = np.random.default_rng(seed)
    tracks = [region_track(ann, r.name, len(r.seq), r.seq) for r in recs]
    write_csv(out / "train.csv", *_windows(recs[0].seq, tracks[0], wanted, n_tr, length, rng, False))
    mid = len(recs[1].seq) // 2
    write_csv(out / "dev.csv", *_windows(recs[1].seq[:mid], tracks[1][:mid], wanted, n_dev, length, rng, False))
    write_csv(out / "test.csv", *_windows(recs[1].seq[mid:], tracks[1][mid:], wanted, n_te, length, rng, False))


def yeast_task(out: Path, sizes: tuple, seed: int, data_root: Path) -> None:
    from dnalm.genome.fasta import iter_records
    from dnalm.genome.gff import read_gff3
    from dnalm.genome.regions import CLASS_IDS, region_track

    n_tr, n_dev, n_te, length = sizes
    base = data_root / "yeast_r64"
    ann = read_gff3(base / "GCA_000146045.2_R64_genomic.gff.gz")
    recs = [r for r in iter_records(base / "GCA_000146045.2_R64_genomic.fna.gz") if len(r.seq) > 100_000]
    dev, test = {"BK006947.3"}, {"BK006948.2", "BK006949.2"}
    wanted = {CLASS_IDS["promoter"]: "promoter", CLASS_IDS["intergenic"]: "intergenic"}
    rng = np.random.default_rng(seed)
    for split, names, n in (("train", None, n_tr), ("dev", dev, n_dev), ("test", test, n_te)):
        chosen = [r for r in recs if (r.name in names if names else r.name not in dev | test)]
        total = sum(len(r.seq) for r in chosen)
        seqs, labels = [], []
        for r in chosen:
            track = region_track(ann, r.name, len(r.seq), r.seq, promoter_window=500)
            s, lab = _windows(r.seq, track, wanted, max(2, round(n * len(r.seq) / total)), length, rng, True)
            seqs += s
            labels += lab
        order = rng.permutation(len(seqs))
        write_csv(out / f"{split}.csv", [seqs[i] for i in order], [labels[i] for i in order])


def gue_task(out: Path, name: str, sizes: tuple, seed: int, data_root: Path) -> None:
    src = data_root / "gue" / {"gue_prom_core_all": "prom/prom_core_all", "gue_tf0": "tf/0"}[name]
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "dev", "test"), sizes[:3]):
        with open(src / f"{split}.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        if n is not None and n < len(rows):
            rows = [rows[i] for i in sorted(rng.choice(len(rows), size=n, replace=False))]
        write_csv(out / f"{split}.csv", [r["sequence"] for r in rows], [r["label"] for r in rows])


def build_task(name: str, sizes: tuple, out: Path, data_root: Path, work: Path) -> Path:
    task_dir = out / "tasks" / name
    if (task_dir / "test.csv").exists():
        return task_dir
    tmp = task_dir.with_name(name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    if name in MOTIFS:
        motif_task(tmp, name, sizes, seed=7)
    elif name == "synth_regions":
        synth_task(tmp, sizes, 7, work)
    elif name == "yeast_promoter":
        yeast_task(tmp, sizes, 7, data_root)
    else:
        gue_task(tmp, name, sizes, 7, data_root)
    tmp.rename(task_dir)
    return task_dir


def make_model(path: Path, full: bool, l_max: int) -> None:
    import torch

    from dnalm.models.hyena import HyenaConfig, HyenaLM
    from dnalm.models.io import save_pretrained
    from dnalm.tokenizers import CharTokenizer

    if (path / "config.json").exists():
        return
    torch.manual_seed(0)
    cfg = HyenaConfig(d_model=256, n_layer=4, d_inner=1024, l_max=l_max) if full else \
        HyenaConfig(d_model=32, n_layer=2, d_inner=64, l_max=l_max, filter_order=16)
    save_pretrained(HyenaLM(cfg), path, tokenizer=CharTokenizer())


def shipped_arm() -> str | None:
    """The grid arm whose learning rate and warm-up are the shipped defaults of ``dnalm finetune`` (None: none)."""
    from dnalm.config import compose

    optim = compose("finetune", []).optim
    for name, overrides in GRID.items():
        lr = float(overrides[0].split("=")[1])
        if optim.lr != "auto" and float(optim.lr) == lr and optim.warmup_fraction == 0.1 and not optim.warmup_steps:
            return name
    return None


def run_one(args: list[str], log: Path, in_process: bool) -> float:
    start = time.time()
    if in_process:
        from contextlib import redirect_stderr, redirect_stdout

        from dnalm.cli import run

        with open(log, "w") as fh, redirect_stdout(fh), redirect_stderr(fh):
            rc = run(args)
    else:
        cmd = [sys.executable, "-c", "import sys; from dnalm.cli import main; sys.exit(main(sys.argv[1:]))", *args]
        with open(log, "w") as fh:
            rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if rc != 0:
        print(f"FAILED ({rc}): {log}", file=sys.stderr, flush=True)
    return time.time() - start


def warned(checks: list[dict]) -> bool:
    """Whether :class:`~dnalm.training.collapse.CollapseMonitor` warns on these per-epoch checks (``PATIENCE``
    consecutive collapsed epochs, or a collapsed last one): recomputed, so that runs of earlier versions read
    alike."""
    from dnalm.training.collapse import PATIENCE

    flags = [bool(c.get("collapse")) for c in checks]
    runs = any(all(flags[i:i + PATIENCE]) for i in range(len(flags) - PATIENCE + 1))
    return bool(flags and flags[-1]) or runs


def summarize(name: str, arm: str, metrics: dict) -> dict:
    checks = metrics.get("collapse_checks") or [{}]
    prior = metrics.get("class_prior") or {}
    rt = metrics.get("lr_range_test") or {}
    return {"task": name, "arm": arm, "test_mcc": (metrics.get("test") or {}).get("mcc"),
            "test_accuracy": (metrics.get("test") or {}).get("accuracy"),
            "best_dev_mcc": metrics.get("best_score"), "epochs": metrics.get("epochs"),
            "final_train_loss": checks[-1].get("train_loss"), "prior_entropy": prior.get("entropy_nats"),
            "majority_rate": prior.get("majority_rate"), "warned": warned(checks),
            "last_epoch_collapsed": bool(checks[-1].get("collapse")),
            "lr": metrics.get("lr"), "lr_min_loss": rt.get("lr_min_loss"), "seconds": metrics.get("train_seconds"),
            "n_train": metrics.get("n_train")}


def table(rows: list[dict]) -> str:
    by = {(r["task"], r["arm"]): r for r in rows}
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    arms = [a for a in [*ARMS, *GRID] if any(r["arm"] == a for r in rows)]
    head = ["task", "n train", "prior H (nats)"]
    for a in arms:
        head += [f"{a}: test MCC", f"{a}: final train loss", f"{a}: warned"]
    head.append("auto lr")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(x, d=3):
        return "" if x is None else f"{x:.{d}f}"

    for t in tasks:
        first = next(by[(t, a)] for a in arms if (t, a) in by)
        cells = [t, f"{first['n_train']:,}", f(first["prior_entropy"])]
        for a in arms:
            r = by.get((t, a), {})
            cells += [f(r.get("test_mcc")), f(r.get("final_train_loss")), ("yes" if r["warned"] else "no") if r else ""]
        auto = by.get((t, "auto"), {})
        cells.append("" if auto.get("lr") is None else f"{auto['lr']:.2g}")
        lines.append("| " + " | ".join(cells) + " |")
    common = [t for t in tasks if all((t, a) in by for a in arms)]
    means = [f"mean of the {len(common)} tasks every arm ran", "", ""]
    for a in arms:
        vals = [by[(t, a)]["test_mcc"] for t in common if by[(t, a)]["test_mcc"] is not None]
        warned = sum(by[(t, a)]["warned"] for t in common)
        means += [f(float(np.mean(vals))) if vals else "", "", f"{warned} of {len(common)}"]
    means.append("")
    lines.append("| " + " | ".join(means) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--out", default="runs/finetune_recipes")
    ap.add_argument("--full", action="store_true", help="real sizes, the 4 x 256 model, trainer=gpu")
    ap.add_argument("--tasks", nargs="*", default=list(SIZES))
    ap.add_argument("--arms", nargs="*", default=list(ARMS), help=f"of {', '.join([*ARMS, *GRID])}")
    ap.add_argument("--epochs", type=int, default=None, help="default: 4 (CPU), 6 (--full)")
    ap.add_argument("--jobs", type=int, default=None, help="runs at a time (default: 1 on CPU, 8 with --full)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--extra", nargs="*", default=[], help="overrides added to every run")
    ap.add_argument("--table-only", action="store_true", help="only tabulate the runs already done")
    a = ap.parse_args()
    out, data_root = Path(a.out), Path(a.data_root)
    out.mkdir(parents=True, exist_ok=True)
    sizes = FULL if a.full else SIZES
    epochs = a.epochs or (6 if a.full else 4)
    jobs = a.jobs or (8 if a.full else 1)
    t0 = time.time()
    task_dirs = {name: build_task(name, sizes[name], out, data_root, out / "work") for name in a.tasks}
    print(f"tasks built in {time.time() - t0:.0f} s", flush=True)
    l_max = max(sizes[n][3] for n in a.tasks) + 2
    model = out / ("model_full" if a.full else "model_tiny")
    make_model(model, a.full, l_max)
    trainer = ["trainer=gpu"] if a.full else ["trainer=cpu", "trainer.accelerator=cpu", "data.batch_size=32"]
    plan = []
    alias = shipped_arm() if "new" in a.arms else None
    for name, task_dir in task_dirs.items():
        for arm in a.arms:
            run_dir = out / "runs" / name / (alias if arm == "new" and alias else arm)
            args = ["finetune", f"checkpoint={model}", f"data.path={task_dir}", f"out={run_dir}", f"seed={a.seed}",
                    f"trainer.max_epochs={epochs}", "task.patience=3", *trainer, *COMMON, *{**ARMS, **GRID}[arm],
                    *a.extra]
            plan.append((name, arm, run_dir, args))
    todo = [] if a.table_only else list({p[2]: p for p in plan if not (p[2] / "metrics.json").exists()}.values())
    print(f"{len(plan)} runs, {len(todo)} to do, {jobs} at a time", flush=True)

    def go(item):
        name, arm, run_dir, args = item
        run_dir.mkdir(parents=True, exist_ok=True)
        took = run_one(args, run_dir.parent / f"{run_dir.name}.log", in_process=jobs == 1)
        print(f"  {name} / {arm}: {took:.0f} s", flush=True)

    if jobs == 1:
        if not a.full:
            import torch

            torch.set_num_threads(1)
        for item in todo:
            go(item)
    else:
        os.environ.setdefault("OMP_NUM_THREADS", "2" if a.full else "1")
        with ThreadPoolExecutor(jobs) as pool:
            list(pool.map(go, todo))
    rows = []
    for name, arm, run_dir, _ in plan:
        if (run_dir / "metrics.json").exists():
            rows.append(summarize(name, arm, json.loads((run_dir / "metrics.json").read_text())))
    (out / "results.json").write_text(json.dumps({"full": a.full, "epochs": epochs, "rows": rows,
                                                  "seconds": round(time.time() - t0, 1)}, indent=2) + "\n")
    md = table(rows)
    (out / "results.md").write_text(md)
    print(md)
    print(f"total {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
