"""Progress a person can read: lines with rate and ETA when stderr is a log file (training and the inference
loops), and bar titles without Lightning's ``Epoch 0/-2`` on a terminal."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from dnalm.cli import run
from dnalm.data.prepare import GenomeSpec, prepare
from dnalm.genome.splits import SplitSpec
from dnalm.genome.synth import SynthConfig, synthesize
from dnalm.training.progress import EpochBar, EpochTQDMBar, progress_callbacks
from dnalm.utils import format_seconds, track

pytestmark = pytest.mark.usefixtures("one_thread")
LINE = re.compile(r"^train: step (\d+)/6 \([\d.]+%\), epoch \d+, [\d.e+-]+ steps/s, loss [\d.]+, "
                  r"(val_loss [\d.]+, )?elapsed \d+:\d\d:\d\d, ETA \d+:\d\d:\d\d")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    files = synthesize(SynthConfig(n_chromosomes=3, chromosome_length=12_000, seed=5), root / "genome")
    return prepare([GenomeSpec("synthetic", str(files["fasta"]), str(files["gff3"]))], root / "prepared",
                   SplitSpec(strategy="records", val=["Chr3"], test=["Chr2"]))


def test_training_into_a_log_file_writes_progress_lines(prepared, tmp_path, capsys):
    """dnalm train experiment=yeast/hyena_small data.prepared=... 2> train.log: a line per interval with the step,
    rate, loss and ETA, one per validation, none of Lightning's bar (stderr here is not a terminal)."""
    assert run(["train", "experiment=yeast/hyena_small", f"data.prepared={prepared}", "trainer=cpu",
                "model.d_model=16", "data.length=64", "data.batch_size=4", "data.eval_max_windows=2",
                "data.num_workers=0", "trainer.max_steps=6", "trainer.val_check_interval=3", "logger=[csv]",
                "trainer.progress_every=0", f"out={tmp_path / 'run'}"]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("train: step")]
    assert [int(LINE.match(ln).group(1)) for ln in lines] == [1, 2, 3, 4, 5, 6, 6], err
    assert lines[-1].endswith("ETA 0:00:00 (done)")
    validations = [ln for ln in err.splitlines() if ln.startswith("train: validation at step")]
    assert [ln.split(":")[1] for ln in validations] == [" validation at step 3", " validation at step 6"]
    assert "val/bits_per_base" in validations[0] and "Epoch 0/-2" not in err and "━" not in err


def test_bar_titles_on_a_terminal_name_the_epoch_and_the_step_budget():
    bar = EpochBar()
    bar._trainer = SimpleNamespace(max_epochs=-1, max_steps=10_000)  # dnalm train: bounded by steps
    assert bar._get_train_description(0).strip() == "Epoch 0 (10,000 steps)"
    bar._trainer = SimpleNamespace(max_epochs=10, max_steps=-1)  # dnalm finetune: bounded by epochs
    assert bar._get_train_description(3).strip() == "Epoch 3/9"
    assert progress_callbacks(False) == []
    assert type(progress_callbacks(True)[0]).__name__ == "ProgressLog"  # pytest's stderr is not a terminal
    assert issubclass(EpochTQDMBar, object)


def test_inference_loops_into_a_log_file_write_rate_and_eta(capsys):
    import time

    done = []
    for i in track(range(5), total=5, desc="scoring", unit="batch", every=0.0):
        time.sleep(0.01)
        done.append(i)
    err = capsys.readouterr().err.splitlines()
    assert done == list(range(5)) and len(err) == 4  # after items 1..4 (the last one is the command's summary)
    assert re.match(r"^scoring: 1/5 batch \(20\.0%\), [\d.]+ batch/s, elapsed 0:00:00, ETA 0:00:00$", err[0])
    assert list(track(iter([1, 2]), desc="x", every=1e9)) == [1, 2] and capsys.readouterr().err == ""
    assert format_seconds(3725.4) == "1:02:05" and format_seconds(-3) == "0:00:00"


def test_predict_into_a_log_file_reports_its_tokens(tmp_path, monkeypatch, capsys):
    """dnalm predict ... 2> predict.log with DNALM_PROGRESS_EVERY=0: a line per chunk (here one per sequence)
    but the last, counting the tokens scored so far out of all."""
    import torch

    from dnalm.models.hyena import HyenaConfig, HyenaLM
    from dnalm.models.io import save_pretrained

    torch.manual_seed(0)
    save_pretrained(HyenaLM(HyenaConfig(d_model=8, n_layer=1, l_max=40, filter_order=8)), tmp_path / "m")
    (tmp_path / "seqs.fa").write_text("".join(f">s{i}\nACGTACGGTA{'C' * i}\n" for i in range(4)))
    monkeypatch.setenv("DNALM_PROGRESS_EVERY", "0")
    assert run(["predict", f"checkpoint={tmp_path / 'm'}", f"input={tmp_path / 'seqs.fa'}", "batch_size=1",
                f"out={tmp_path / 'll.parquet'}", "device=cpu"]) == 0
    lines = capsys.readouterr().err.splitlines()
    counts = [re.match(r"^scoring: ([\d.]+)/([\d.]+) token \(", ln) for ln in lines]
    assert len(lines) == 3 and all(counts)
    done = [float(m.group(1)) for m in counts]
    total = {float(m.group(2)) for m in counts}
    assert len(total) == 1 and done == sorted(done) and len(set(done)) == 3 and max(done) < min(total)


def test_one_long_row_reports_every_chunk(capsys):
    """A single row longer than a chunk reports as its chunks go (not once per batch): every 16 tokens of 100."""
    import numpy as np
    import torch

    from dnalm.inference.scoring import score_rows
    from dnalm.models.hyena import HyenaConfig, HyenaLM

    torch.manual_seed(0)
    model = HyenaLM(HyenaConfig(d_model=8, n_layer=1, l_max=200, filter_order=8)).eval()
    row = np.random.default_rng(0).integers(7, 11, 100)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DNALM_PROGRESS_EVERY", "0")
        score_rows(model, [row], chunk_size=16, progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert [ln.split(" (")[0] for ln in lines] == [f"scoring: {k * 16}/100 token" for k in range(1, 7)]
