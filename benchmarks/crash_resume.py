"""SIGKILL a training run at random moments; every ``resume=auto`` must finish where an uninterrupted run does.

On a small synthetic genome (``dnalm synth`` + ``dnalm prepare``) a tiny HyenaDNA is trained on the CPU with
``dnalm train`` (checkpoints and validation every ``--every`` steps). First one uninterrupted run gives the
reference: its wall time, final step, final validation loss, per-step losses and final weights. Then each
of ``--kills`` runs is started in a fresh run directory, killed with SIGKILL after a seeded random delay
drawn uniformly over the reference's wall time (start-up, training, validation, checkpoint writes and the
final outputs all get hit), and resumed with ``resume=auto`` until a run exits with status 0. ``--late N``
adds N kills 0-0.3 s after the final checkpoint is complete, while the run writes ``model/`` and
``metrics.json`` (a window too short for random moments to hit often); ``--in-save N`` N kills at the
first checkpoint write after a random delay, while its temporary directory exists.

After every kill, every checkpoint directory left in the run directory (``checkpoints/step-*``, ``last``,
``best/``, ``model/``) is loaded (``load_pretrained``, and ``read_training_state`` for full checkpoints);
one that fails is counted as unreadable (unfinished temporaries, ``.name.*.tmp``, are counted apart: the
next run deletes them). The finished run must match the reference exactly (bitwise): final step, final
validation loss, the validation loss of every validation, the training loss of every step, and the final
weights.

    python benchmarks/crash_resume.py --kills 20 --late 5 --in-save 5 --steps 400 --every 25 --out DIR

writes ``crash_resume.json`` and ``crash_resume.md``. One training process at a time (``--jobs 2`` runs two
killed runs side by side), each with one thread.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))


def train_argv(prepared: Path, out: Path, steps: int, every: int, seed: int) -> list[str]:
    return ["train", "experiment=synthetic/hyena_demo", f"data.prepared={prepared}", f"out={out}", f"seed={seed}",
            "model.d_model=32", "model.d_inner=64", "data.length=128", "data.batch_size=8",
            "data.eval_max_windows=null", "trainer.log_every_n_steps=1", "trainer.progress_bar=false",
            f"trainer.max_steps={steps}", f"trainer.val_check_interval={every}", f"checkpoint.every_n_steps={every}",
            "checkpoint.keep=2", "optim.lr=2e-3", "optim.warmup_steps=5", "logger=[csv]", "resume=auto"]


def prepare_genome(root: Path) -> Path:
    from dnalm.data.prepare import GenomeSpec, prepare
    from dnalm.genome.splits import SplitSpec
    from dnalm.genome.synth import SynthConfig, synthesize

    files = synthesize(SynthConfig(n_chromosomes=3, chromosome_length=20_000, seed=3), root / "genome")
    return prepare([GenomeSpec("synthetic", str(files["fasta"]), str(files["gff3"]))], root / "prepared",
                   SplitSpec(strategy="records", val=["Chr3"], test=["Chr2"]))


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONWARNINGS": "ignore"}


def start(argv: list[str], log: Path) -> subprocess.Popen:
    f = open(log, "ab")
    return subprocess.Popen([sys.executable, "-m", "dnalm.cli", *argv], cwd=REPO, env=_env(), stdout=f,
                            stderr=subprocess.STDOUT)


def column(run_dir: Path, key: str) -> dict[int, float]:
    """step -> value of ``key`` in metrics.csv (a step logged twice is an error: a resumed run re-logged it)."""
    out: dict[int, float] = {}
    with open(run_dir / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row.get(key):
                step = int(row["step"])
                if step in out:
                    raise AssertionError(f"{key} logged twice at step {step}")
                out[step] = float(row[key])
    return out


def outcome(run_dir: Path) -> dict[str, Any]:
    """Final step, final validation loss, per-step losses and a digest of the final weights of a finished run."""
    import hashlib

    from dnalm.models.io import load_pretrained

    metrics = json.loads((run_dir / "metrics.json").read_text())
    sd = load_pretrained(run_dir / "checkpoints" / "last").state_dict()
    digest = hashlib.sha256(b"".join(sd[k].contiguous().numpy().tobytes() for k in sorted(sd))).hexdigest()
    return {"global_step": metrics.get("global_step"), "val_loss": (metrics.get("val") or {}).get("loss"),
            "val_losses": column(run_dir, "val/loss"), "train_losses": column(run_dir, "train/loss"),
            "weights_sha256": digest, "model": metrics.get("model")}


def check_checkpoints(run_dir: Path) -> dict[str, Any]:
    """Load every checkpoint directory in ``run_dir``; the names of those that do not load, and temporaries."""
    from dnalm.models.io import load_pretrained
    from dnalm.training.checkpoint import read_training_state

    found, unreadable, temporaries = [], [], []
    places = [run_dir / "checkpoints"] if (run_dir / "checkpoints").is_dir() else []
    candidates = [p for d in places for p in sorted(d.iterdir())] + [run_dir / "best", run_dir / "model"]
    for p in candidates:
        if p.name.startswith("."):
            temporaries.append(str(p.relative_to(run_dir)))
            continue
        if not (p.exists() or p.is_symlink()):
            continue
        found.append(str(p.relative_to(run_dir)))
        try:
            load_pretrained(p)
            if p.parent.name == "checkpoints":
                read_training_state(p)
        except Exception as exc:  # noqa: BLE001 - every failure counts
            unreadable.append(f"{p.relative_to(run_dir)}: {type(exc).__name__}: {str(exc)[:200]}")
    for d in (run_dir, *places):
        if d.is_dir():
            temporaries += [str(p.relative_to(run_dir)) for p in d.iterdir()
                            if p.name.startswith(".") and p.name.endswith((".tmp", ".old"))
                            and str(p.relative_to(run_dir)) not in temporaries]
    return {"checkpoints": found, "unreadable": unreadable, "temporaries": temporaries}


def reference_run(prepared: Path, work: Path, steps: int, every: int, seed: int) -> tuple[dict, float]:
    out = work / "reference"
    t0 = time.perf_counter()
    proc = start(train_argv(prepared, out, steps, every, seed), work / "reference.log")
    code = proc.wait()
    seconds = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"the reference run failed (status {code}); see {work / 'reference.log'}")
    return outcome(out), seconds


def _writing(out: Path) -> bool:
    """Whether a checkpoint, best/ or model/ is being written (its temporary directory exists)."""
    for d in (out, out / "checkpoints"):
        try:
            if any(p.name.startswith(".") and p.name.endswith(".tmp") and p.is_dir() for p in d.iterdir()):
                return True
        except OSError:
            pass
    return False


def killed_run(i: int, delay: float, prepared: Path, work: Path, steps: int, every: int, seed: int,
               reference: dict, max_resumes: int, timeout: float, late: bool = False,
               in_save: bool = False) -> dict[str, Any]:
    """Start a run, SIGKILL it after ``delay`` seconds (``late``: ``delay`` seconds after its final checkpoint
    is complete, while it writes best/, model/ and metrics.json; ``in_save``: at the first checkpoint write
    after ``delay`` seconds, while its temporary directory exists), check its checkpoints and resume it."""
    work.mkdir(parents=True, exist_ok=True)
    out = work / f"run{i:02d}"
    log = work / f"run{i:02d}.log"
    argv = train_argv(prepared, out, steps, every, seed)
    proc = start(argv, log)
    t0 = time.perf_counter()
    if late:
        final = out / "checkpoints" / f"step-{steps:08d}" / "training_state.pt"
        while proc.poll() is None and not final.exists():
            time.sleep(0.002)
        t0 = time.perf_counter()
    while proc.poll() is None and time.perf_counter() - t0 < delay:
        time.sleep(0.002)
    while in_save and proc.poll() is None and not _writing(out):
        time.sleep(0.0005)
    finished_first = proc.poll() is not None
    ran_s = time.perf_counter() - t0
    if not finished_first:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    result: dict[str, Any] = {"run": i, "kill_after_s": round(delay, 3), "late": late, "in_save": in_save,
                              "exit_before_kill": finished_first, "first_status": proc.returncode,
                              "ran_s": round(ran_s, 3)}
    result["after_kill"] = check_checkpoints(out) if out.exists() else {"checkpoints": [], "unreadable": [],
                                                                         "temporaries": []}
    resumes, status = 0, proc.returncode
    while status != 0 and resumes < max_resumes:
        resumes += 1
        p = start(argv, log)
        try:
            status = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            status = p.wait()
    result.update(resumes=resumes, finished=status == 0)
    if status != 0:
        result["problem"] = f"did not finish after {resumes} resume(s) (status {status}); see {log.name}"
        return result
    try:
        got = outcome(out)
    except Exception as exc:  # noqa: BLE001
        result.update(finished=False, problem=f"finished, but its outputs do not read: {type(exc).__name__}: {exc}")
        return result
    result["global_step"], result["val_loss"] = got["global_step"], got["val_loss"]
    diffs = [key for key in ("global_step", "val_loss", "val_losses", "train_losses", "weights_sha256")
             if got[key] != reference[key]]
    result["same_as_reference"] = not diffs
    if diffs:
        result["differs"] = diffs
        result["detail"] = {k: [str(got[k])[:300], str(reference[k])[:300]] for k in diffs}
    result["after_finish"] = check_checkpoints(out)
    return result


def summarize(results: list[dict], reference: dict, ref_seconds: float, args: argparse.Namespace) -> dict:
    return {
        "kills": len(results),
        "late_kills": sum(bool(r.get("late")) for r in results),
        "in_save_kills": sum(bool(r.get("in_save")) for r in results),
        "killed_before_exit": sum(not r["exit_before_kill"] for r in results),
        "finished": sum(bool(r.get("finished")) for r in results),
        "same_final_step": sum(r.get("global_step") == reference["global_step"] for r in results),
        "same_final_val_loss": sum(r.get("val_loss") == reference["val_loss"] for r in results),
        "identical_to_reference": sum(bool(r.get("same_as_reference")) for r in results),
        "checkpoints_checked": sum(len(r["after_kill"]["checkpoints"]) + len(r.get("after_finish", {}).get(
            "checkpoints", [])) for r in results),
        "unreadable_checkpoints": sum(len(r["after_kill"]["unreadable"]) + len(r.get("after_finish", {}).get(
            "unreadable", [])) for r in results),
        "temporaries_after_kill": sum(len(r["after_kill"]["temporaries"]) for r in results),
        "resumes": sum(r.get("resumes", 0) for r in results),
        "reference": {"global_step": reference["global_step"], "val_loss": reference["val_loss"],
                      "wall_s": round(ref_seconds, 1), "model": reference["model"]},
        "settings": {"steps": args.steps, "every": args.every, "seed": args.seed, "kill_seed": args.kill_seed,
                     "late": args.late, "in_save": args.in_save},
    }


def markdown(s: dict, results: list[dict]) -> str:
    ref = s["reference"]
    lines = [f"# Crash and resume ({s['kills']} SIGKILLs: {s['late_kills']} after the final checkpoint, "
             f"{s['in_save_kills']} while a checkpoint was written)", "",
             f"Reference: {s['settings']['steps']} steps (checkpoint and validation every {s['settings']['every']}),"
             f" {ref['wall_s']} s, final val loss {ref['val_loss']!r}.", "",
             "| killed | finished | same final step | same final val loss | bitwise identical run | "
             "checkpoints loaded | unreadable | temporaries left by a kill | resumes |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| {s['killed_before_exit']}/{s['kills']} | {s['finished']} | {s['same_final_step']} | "
             f"{s['same_final_val_loss']} | {s['identical_to_reference']} | {s['checkpoints_checked']} | "
             f"{s['unreadable_checkpoints']} | {s['temporaries_after_kill']} | {s['resumes']} |", "",
             "| run | killed after (s) | checkpoints at the kill | final step | final val loss | identical |",
             "|---|---|---|---|---|---|"]
    for r in results:
        cks = ", ".join(r["after_kill"]["checkpoints"]) or "-"
        killed = (f"{r['kill_after_s']}" + (" after the final checkpoint" if r.get("late") else "")
                  + (", then in a checkpoint write" if r.get("in_save") else "")
                  + (" (had exited)" if r["exit_before_kill"] else ""))
        lines.append(f"| {r['run']} | {killed} | {cks} | {r.get('global_step')} | {r.get('val_loss')} | "
                     f"{'yes' if r.get('same_as_reference') else 'NO: ' + ', '.join(r.get('differs', [])) or '-'} |")
    problems = [f"- run {r['run']}: {r.get('problem') or r.get('detail') or r['after_kill']['unreadable']}"
                for r in results if r.get("problem") or r.get("differs") or r["after_kill"]["unreadable"]]
    return "\n".join(lines + ["", "Problems:", *(problems or ["none"])]) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kills", type=int, default=20, help="kills at random moments of a run")
    p.add_argument("--late", type=int, default=0, help="further kills 0-0.3 s after the final checkpoint")
    p.add_argument("--in-save", type=int, default=0, help="further kills while a checkpoint is being written")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--kill-seed", type=int, default=0, help="seed of the kill moments")
    p.add_argument("--jobs", type=int, default=1, help="killed runs side by side")
    p.add_argument("--max-resumes", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--keep", type=Path, default=None, help="keep the run directories here")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="dnalm-crash-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    try:
        prepared = prepare_genome(work)
        reference, ref_seconds = reference_run(prepared, work, args.steps, args.every, args.seed)
        print(f"reference: step {reference['global_step']}, val loss {reference['val_loss']!r}, "
              f"{ref_seconds:.1f} s", flush=True)
        rng = random.Random(args.kill_seed)
        delays = [rng.uniform(0.0, ref_seconds) for _ in range(args.kills)]
        delays += [rng.uniform(0.0, 0.3) for _ in range(args.late)]
        delays += [rng.uniform(0.0, 0.9 * ref_seconds) for _ in range(args.in_save)]
        n = len(delays)

        def one(i: int) -> dict:
            late, in_save = args.kills <= i < args.kills + args.late, i >= args.kills + args.late
            delay, redraw = delays[i], random.Random(args.kill_seed * 100_003 + i)
            for attempt in range(4):
                r = killed_run(i, delay, prepared, work / f"try{attempt}", args.steps, args.every, args.seed,
                               reference, args.max_resumes, timeout=10 * ref_seconds + 60, late=late,
                               in_save=in_save)
                # a run that ended before its moment (the machine ran faster than the reference did) is
                # started again with a moment drawn over its own duration, so that every kill hits a live run
                if not r["exit_before_kill"] or late:
                    break
                delay = redraw.uniform(0.0, 0.95 * r["ran_s"])
            r["attempts"] = attempt + 1
            print(f"run {i}: killed after {r['kill_after_s']} s, checkpoints {r['after_kill']['checkpoints']}, "
                  f"temporaries {r['after_kill']['temporaries']}, unreadable {len(r['after_kill']['unreadable'])}, "
                  f"resumes {r.get('resumes')}, "
                  f"identical {r.get('same_as_reference')}", flush=True)
            return r

        with ThreadPoolExecutor(max_workers=args.jobs) as ex:
            results = list(ex.map(one, range(n)))
        summary = summarize(results, reference, ref_seconds, args)
        text = markdown(summary, results)
        print(text)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "crash_resume.json").write_text(json.dumps({"summary": summary, "runs": results,
                                                                     "reference": reference}, indent=1,
                                                                    default=str) + "\n")
            (args.out / "crash_resume.md").write_text(text)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    ok = (summary["finished"] == summary["identical_to_reference"] == len(results)
          and summary["unreadable_checkpoints"] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
