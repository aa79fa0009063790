"""``dnalm train`` end to end on a small synthetic genome: the loss falls, outputs are complete and loadable,
a run killed with SIGKILL resumes to the very same model, sequence-length warm-up switches windows and
accumulation, user mistakes fail with one line."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from dnalm.cli import main as cli_main
from dnalm.cli import run as cli_run
from dnalm.config import compose
from dnalm.data.prepare import GenomeSpec, prepare
from dnalm.errors import InputError
from dnalm.genome.splits import SplitSpec
from dnalm.genome.synth import SynthConfig, synthesize
from dnalm.models.io import load_pretrained, read_pretrained_info
from dnalm.training.checkpoint import data_position, read_training_state
from dnalm.training.schedules import warmup_cosine

REPO = Path(__file__).resolve().parents[2]
STEPS, EVERY, LR, WARMUP = 40, 10, 2e-3, 5


pytestmark = pytest.mark.usefixtures("one_thread")  # small models run faster on one thread


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    files = synthesize(SynthConfig(n_chromosomes=3, chromosome_length=20_000, seed=3), root / "genome")
    return prepare([GenomeSpec("synthetic", str(files["fasta"]), str(files["gff3"]))], root / "prepared",
                   SplitSpec(strategy="records", val=["Chr3"], test=["Chr2"]))


def overrides(prepared: Path, out: Path, *extra: str) -> list[str]:
    return ["experiment=synthetic/hyena_demo", f"data.prepared={prepared}", f"out={out}", "model.d_model=32",
            "model.d_inner=64", "data.length=128", "data.batch_size=8", "data.eval_max_windows=null",
            "trainer.log_every_n_steps=1", "trainer.progress_bar=false", f"trainer.max_steps={STEPS}",
            f"trainer.val_check_interval={EVERY}", f"checkpoint.every_n_steps={EVERY}", f"optim.lr={LR}",
            f"optim.warmup_steps={WARMUP}", "logger=[csv]", *extra]


def rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def column(run_dir: Path, key: str) -> dict[int, float]:
    """step -> value of ``key``; a step logged twice fails the test."""
    out: dict[int, float] = {}
    for r in rows(run_dir):
        if r.get(key):
            step = int(r["step"])
            assert step not in out, f"{key} logged twice at step {step}"
            out[step] = float(r[key])
    return out


def leftovers(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.rglob("*") if p.name.endswith((".tmp", ".old"))]


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "uninterrupted"
    torch.set_num_threads(1)
    assert cli_run(["train", *overrides(prepared, out)]) == 0
    return out


def test_validation_loss_falls_and_outputs_are_complete(trained, prepared):
    val = column(trained, "val/loss")
    assert sorted(val) == [EVERY * k - 1 for k in range(1, STEPS // EVERY + 1)]
    losses = [val[s] for s in sorted(val)]
    assert losses[-1] < losses[0] - 0.1, losses
    assert column(trained, "val/bits_per_base")[STEPS - 1] == pytest.approx(losses[-1] / math.log(2), rel=1e-5)
    region_cols = [k for k in rows(trained)[0] if k.startswith("val/bits_per_base/")]
    assert {"val/bits_per_base/CDS", "val/bits_per_base/intergenic"} <= set(region_cols)

    assert sorted(p.name for p in (trained / "checkpoints").iterdir()) == ["last", f"step-{STEPS:08d}"]
    assert (trained / "checkpoints" / "last").resolve().name == f"step-{STEPS:08d}"
    assert not leftovers(trained)
    for name in ("model", "best", "checkpoints/last"):
        assert isinstance(load_pretrained(trained / name), torch.nn.Module)
        assert (trained / name / "tokenizer.json").is_file()
    # model/ holds the weights chosen on validation (a copy of best/); the final ones are checkpoints/last
    model = load_pretrained(trained / "model").state_dict()
    best = load_pretrained(trained / "best").state_dict()
    assert all(torch.equal(model[k], best[k]) for k in model)
    info = read_pretrained_info(trained / "best")["extra"]
    assert info["best"]["val/loss"] == pytest.approx(min(losses), rel=1e-6)
    assert read_pretrained_info(trained / "model")["extra"] == info
    summary = json.loads((trained / "metrics.json").read_text())
    assert summary["global_step"] == STEPS and summary["total_steps"] == STEPS
    assert summary["model"] == f"best (step {info['best']['step']})"
    assert read_pretrained_info(trained / "checkpoints" / "last")["extra"]["global_step"] == STEPS
    config = (trained / "config.yaml").read_text()
    assert f"prepared: {prepared}" in config and "name: hyena_demo" in config
    assert (trained / "metrics.csv").is_file() and not (trained / "tensorboard").exists()


def test_without_best_the_model_is_the_final_weights(prepared, tmp_path):
    out = tmp_path / "nobest"
    assert cli_run(["train", *overrides(prepared, out, "checkpoint.save_best=false", "trainer.max_steps=4")]) == 0
    model = load_pretrained(out / "model").state_dict()
    last = load_pretrained(out / "checkpoints" / "last").state_dict()
    assert all(torch.equal(model[k], last[k]) for k in model) and not (out / "best").exists()
    assert json.loads((out / "metrics.json").read_text())["model"] == "final (step 4)"


def test_killed_run_resumes_to_the_same_model(trained, prepared, tmp_path):
    """SIGKILL after the first checkpoint, then resume=auto: same final step, the same per-step losses
    (same data order and dropout masks), the lr of every step on the schedule, the same final weights."""
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "dnalm.cli", "train", *overrides(prepared, out)], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = out / "checkpoints" / f"step-{EVERY:08d}" / "training_state.pt"
    deadline = time.monotonic() + 120
    while proc.poll() is None and not first.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    finished_early = proc.poll() is not None
    proc.kill()
    _, err = proc.communicate()
    assert not finished_early, f"the run ended before it could be killed: {err.decode()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL and not (out / "model").exists()

    assert cli_run(["train", *overrides(prepared, out)]) == 0
    state = read_training_state(out / "checkpoints" / "last")
    assert state["global_step"] == STEPS and data_position(state) is not None
    a, b = load_pretrained(trained / "model").state_dict(), load_pretrained(out / "model").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert column(out, "train/loss") == column(trained, "train/loss")
    assert column(out, "val/loss") == column(trained, "val/loss")
    lr = column(out, "train/lr")
    assert sorted(lr) == list(range(STEPS))
    for step, value in lr.items():
        assert value == pytest.approx(LR * warmup_cosine(step, STEPS, WARMUP, 0.1), rel=1e-6)
    assert json.loads((out / "metrics.json").read_text())["resumed_from"].endswith(f"step-{EVERY:08d}")
    assert not leftovers(out)


def test_a_run_killed_before_its_first_checkpoint_starts_its_log_again(prepared, tmp_path):
    """resume=auto finds no checkpoint and starts from step 0; the rows the killed attempt logged go."""
    out = tmp_path / "early"
    out.mkdir()
    (out / "metrics.csv").write_text("epoch,step,train/loss\n0,0,9.5\n0,1,9.25\n")
    assert cli_run(["train", *overrides(prepared, out, "trainer.max_steps=3")]) == 0
    loss = column(out, "train/loss")  # fails on a step logged twice
    assert sorted(loss) == [0, 1, 2] and 9.25 not in loss.values() and 9.5 not in loss.values()


def test_a_run_killed_after_its_final_checkpoint_reports_the_same_metrics(trained, prepared, tmp_path):
    """Killed while writing model/ and metrics.json: the resumed run has nothing left to train or validate,
    and reports the final validation of the checkpoint (it reported none)."""
    import shutil

    out = tmp_path / "late"
    shutil.copytree(trained, out, symlinks=True)
    shutil.rmtree(out / "model")
    (out / "metrics.json").unlink()
    assert cli_run(["train", *overrides(prepared, out)]) == 0
    want, got = (json.loads((d / "metrics.json").read_text()) for d in (trained, out))
    assert got["global_step"] == want["global_step"] == STEPS
    assert got["val"] == want["val"]
    assert got["val"]["loss"] == pytest.approx(column(trained, "val/loss")[STEPS - 1], rel=1e-6)  # logged as float32
    assert got["best"] == want["best"] and got["model"] == want["model"]


class Recorder(L.Callback):
    def __init__(self):
        self.batches: list[tuple[int, tuple[int, ...], int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append((trainer.global_step, tuple(batch["input_ids"].shape), trainer.accumulate_grad_batches))


def test_sequence_length_warmup_switches_windows_and_accumulation(prepared, tmp_path):
    from dnalm.recipes.train import run

    cfg = compose("train", overrides(prepared, tmp_path / "staged", "trainer.max_steps=-1", "global_batch_size=8",
                                     "stages=[{length: 64, batch_size: 8, steps: 3}, {length: 128, batch_size: 4, "
                                     "steps: 2}]", "trainer.val_check_interval=5", "checkpoint.every_n_steps=0",
                                     "test=true"))
    rec = Recorder()
    result = run(cfg, callbacks=[rec])
    assert result.global_step == 5 and result.total_steps == 5
    assert rec.batches == [(0, (8, 64), 1), (1, (8, 64), 1), (2, (8, 64), 1),
                           (3, (4, 128), 2), (3, (4, 128), 2), (4, (4, 128), 2), (4, (4, 128), 2)]
    lr = column(tmp_path / "staged", "train/lr")
    assert lr[4] == pytest.approx(LR * warmup_cosine(4, 5, WARMUP, 0.1), rel=1e-6)
    assert read_pretrained_info(result.model_dir)["config"]["l_max"] == 130
    metrics = json.loads((tmp_path / "staged" / "metrics.json").read_text())
    test = metrics["test"]
    assert metrics["model"] == f"best (step {metrics['best']['step']})"
    assert test["bits_per_base"] == pytest.approx(test["loss"] / math.log(2)) and 0 < test["acc"] < 1


def test_time_horizon_anneals_within_max_time(prepared, tmp_path):
    """optim.horizon=time with a step budget far beyond what 3 s allow: the lr still decays to its floor
    by the time limit, never above the step-based schedule, and never rises after the warm-up."""
    out = tmp_path / "timed"
    assert cli_run(["train", *overrides(prepared, out, "trainer.max_steps=1000000", "trainer.max_time=00:00:00:03",
                                        "optim.horizon=time", "trainer.val_check_interval=1000000",
                                        "checkpoint.every_n_steps=1000000", "test=false")]) == 0
    lr = column(out, "train/lr")
    steps = sorted(lr)
    assert len(steps) > WARMUP + 5
    after = [lr[s] for s in steps if s >= WARMUP]
    assert all(b <= a * (1 + 1e-6) for a, b in zip(after, after[1:]))
    assert all(lr[s] <= LR * warmup_cosine(s, 1000000, WARMUP, 0.1) * (1 + 1e-6) for s in steps)  # float32 log
    assert after[-1] < 0.5 * LR  # the step-based schedule would still be at 1.0 * LR


def test_init_from_starts_from_the_given_weights(trained, prepared, tmp_path):
    """With lr 0 (and so no decay either) one step leaves the initial weights: they must be the given ones."""
    out = tmp_path / "continued"
    assert cli_run(["train", *overrides(prepared, out, f"init_from={trained / 'model'}", "optim.lr=0",
                                        "trainer.max_steps=2", "model.d_model=8")]) == 0
    a, b = load_pretrained(trained / "model").state_dict(), load_pretrained(out / "model").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_user_mistakes_fail_with_one_line(trained, prepared, tmp_path, capsys):
    cases = [
        (overrides(tmp_path / "nowhere", tmp_path / "r1"), "not a prepared dataset directory"),
        (overrides(prepared, tmp_path / "r2", "model.l_max=100"), "model.l_max=100 is shorter"),
        (overrides(prepared, tmp_path / "r3", "trainer.max_steps=-1"), "set trainer.max_steps or trainer.max_epochs"),
        (overrides(prepared, tmp_path / "r4", "logger=[csv,mlflow]"), "unknown logger 'mlflow'"),
        (overrides(prepared, tmp_path / "r5", "global_batch_size=12"), "not a multiple of batch_size 8"),
        (overrides(prepared, tmp_path / "r6", "seed=-1"), "seed=-1 must be in [0, 2^32)"),
        (overrides(prepared, tmp_path / "r7", f"seed={2**32}"), "seed=4294967296 must be in [0, 2^32)"),
        (overrides(prepared, tmp_path / "r8", "data.batch_size=100000"), "give no full batch of data.batch_size"),
        (overrides(prepared, tmp_path / ("x" * 300)), "not a usable path (File name too long)"),
        (overrides(prepared, tmp_path / "afile" / "run"), "afile/run: cannot create this directory (Not a directory)"),
    ]
    (tmp_path / "afile").write_text("")
    for argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            cli_main(["train", *argv])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err and err.count("\n") == 1, err
    assert not any((tmp_path / f"r{i}").exists() for i in range(1, 9))  # nothing written
    assert (tmp_path / "afile").read_text() == ""


def test_an_unreadable_resume_checkpoint_fails_before_training_starts(trained, prepared, tmp_path, monkeypatch):
    """The training state is read before the Trainer is made (whose start-up lines would precede the error)."""
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree((trained / "checkpoints" / "last").resolve(), ckpt)
    (ckpt / "training_state.pt").write_bytes(b"not a checkpoint")

    def no_trainer(*args, **kwargs):
        raise AssertionError("a Trainer was made before the resume checkpoint was read")

    monkeypatch.setattr(L, "Trainer", no_trainer)
    with pytest.raises(InputError, match=r"ckpt/training_state\.pt: cannot read the training state"):
        cli_run(["train", *overrides(prepared, tmp_path / "run", f"resume={ckpt}")])


@pytest.mark.slow
def test_two_process_ddp_on_cpu(prepared, tmp_path):
    """Lightning's DDP strategy with two CPU processes (gloo) trains to the end, rank 0 alone writes the outputs,
    and at the same global batch it takes the very steps of one process accumulating two micro-batches
    (the ranks' batches are the micro-batches of the single process; dropout off so that both are deterministic)."""
    same = ("global_batch_size=16", "trainer.max_steps=6", "trainer.val_check_interval=3", "checkpoint.every_n_steps=3",
            "model.embed_dropout=0.0", "model.resid_dropout=0.0")
    out, single = tmp_path / "ddp", tmp_path / "single"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    argv = [sys.executable, "-m", "dnalm.cli", "train",
            *overrides(prepared, out, "trainer.strategy=ddp", "trainer.devices=2", *same)]
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("train: 6 steps") == 1
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["global_step"] == 6 and summary["total_steps"] == 6
    assert read_training_state(out / "checkpoints" / "last")["global_step"] == 6
    assert isinstance(load_pretrained(out / "model"), torch.nn.Module) and not leftovers(out)

    assert cli_run(["train", *overrides(prepared, single, *same)]) == 0
    ddp_weights, one_weights = (load_pretrained(d / "checkpoints" / "last").state_dict() for d in (out, single))
    assert ddp_weights.keys() == one_weights.keys()
    val = column(single, "val/loss")
    assert sorted(val) == [2, 5] and val[5] != val[2]  # rows of steps 3 and 6 (0-based); the weights moved
    assert column(out, "val/loss") == pytest.approx(val, rel=1e-5)  # the same validation losses
    for key, value in one_weights.items():
        torch.testing.assert_close(ddp_weights[key], value, rtol=1e-4, atol=1e-5, msg=key)


# The README's yeast command, at sizes a test affords (the run's length, steps, width and loaders).
TINY_YEAST = ("data.length=128", "data.batch_size=8", "data.eval_max_windows=4", "data.num_workers=0",
              "trainer.max_steps=4", "trainer.val_check_interval=2", "checkpoint.every_n_steps=2", "logger=[csv]",
              "trainer.progress_bar=false")


def _no_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_gpu_experiment_runs_on_a_machine_without_a_gpu(prepared, tmp_path, monkeypatch, capsys):
    """dnalm train experiment=yeast/hyena_small data.prepared=... (trainer=gpu in the experiment) on a CPU-only
    machine: it trains on the CPU in 32-bit precision and says so, instead of Lightning's 'No supported gpu
    backend found!' traceback; several GPUs fail in one line naming trainer=cpu."""
    _no_gpu(monkeypatch)
    out = tmp_path / "yeast"
    assert cli_run(["train", "experiment=yeast/hyena_small", f"data.prepared={prepared}", "model.d_model=16",
                    f"out={out}", *TINY_YEAST]) == 0
    printed = capsys.readouterr().out
    assert "train: no GPU found, running on the CPU with precision 32-true" in printed
    config = read_pretrained_info(out / "model")["config"]
    assert config["d_model"] == 16 and config["d_inner"] == 64  # d_inner follows d_model (4 x)
    with pytest.raises(SystemExit) as exc:
        cli_main(["train", "experiment=yeast/hyena_small", f"data.prepared={prepared}", "trainer=ddp",
                  "trainer.devices=4", f"out={tmp_path / 'ddp'}"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "no GPU" in err and "use trainer=cpu" in err


def test_changed_model_size_in_the_same_run_folder_says_how_to_go_on(prepared, tmp_path, capsys):
    """Re-running the yeast command with another model.d_model into the same folder: resume=auto would load a
    checkpoint of the old size (a raw 'size mismatch' RuntimeError); it fails in one line naming the changed
    field, out= and resume=never, and resume=never then starts over in that folder."""
    out = tmp_path / "yeast"
    argv = ["train", "experiment=yeast/hyena_small", f"data.prepared={prepared}", f"out={out}", *TINY_YEAST,
            "trainer=cpu"]
    assert cli_run([*argv, "model.d_model=16"]) == 0
    assert (out / "checkpoints" / "step-00000004").is_dir()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli_main([*argv, "model.d_model=32"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1, err
    assert "model.d_model 16 -> 32" in err and "out=" in err and "resume=never" in err
    assert read_pretrained_info(out / "model")["config"]["d_model"] == 16  # nothing was touched

    assert cli_run([*argv, "model.d_model=32", "resume=never", "trainer.max_steps=2"]) == 0
    assert "resume=never: starting over" in capsys.readouterr().out
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["resumed_from"] is None and summary["global_step"] == 2
    assert read_pretrained_info(out / "model")["config"]["d_model"] == 32
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last", "step-00000002"]
    assert sorted(column(out, "val/loss")) == [1]  # the old run's rows (steps 1 and 3) are gone
    assert cli_run([*argv, "model.d_model=32", "trainer.max_steps=3", "model.resid_dropout=0.2"]) == 0  # resumes
    assert json.loads((out / "metrics.json").read_text())["resumed_from"].endswith("step-00000002")


def test_shipped_genome_away_from_the_repo_root_names_data_root(tmp_path, monkeypatch, capsys):
    """dnalm train experiment=yeast/hyena_small (no data.prepared) from another folder: one line naming data_root=."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        cli_main(["train", "experiment=yeast/hyena_small"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1, err
    assert "yeast_r64/GCA_000146045.2_R64_genomic.fna.gz: genome FASTA not found" in err
    assert "data_root=../shared/data" in err and "pass data_root=DIR" in err and "data.prepared=DIR" in err
    assert not (tmp_path / "runs").exists()


def test_a_masked_family_without_a_tokenizer_stops_in_one_line(prepared, tmp_path, capsys):
    """dnalm train model=bert_small (masked LM over a trained BPE) without model.tokenizer: one line naming the
    family and the way out, exit 2, no run folder written (tests/training/test_train_families.py trains it)."""
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        cli_main(["train", "model=bert_small", f"data.prepared={prepared}", f"out={out}", "trainer=cpu",
                  "trainer.max_steps=2"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "model.family=dnabert2" in err and "Traceback" not in err
    assert "model.tokenizer=PATH" in err and not (out / "model").exists()
