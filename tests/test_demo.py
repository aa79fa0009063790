"""The README's main job (`dnalm demo`) end to end, at reduced sizes."""

from __future__ import annotations

import csv
import json

from dnalm.cli import run


def _hydra_list(items: list[str]) -> str:
    return "[" + ",".join(f"'{item}'" for item in items) + "]"


def test_demo_runs_every_step_and_writes_the_report(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = [
        "demo", f"out={out}",
        "synth=" + _hydra_list(["n_chromosomes=4", "chromosome_length=20000", "ploidy=3"]),
        "train=" + _hydra_list(["experiment=synthetic/hyena_demo", "trainer.max_steps=6",
                                "trainer.val_check_interval=3", "data.length=128", "data.eval_max_windows=4",
                                "model.d_model=16", "model.d_inner=32", "logger=[csv]"]),
        "benchmark=" + _hydra_list(["next_base.window=128", "next_base.min_context=32", "next_base.max_bases=4000",
                                    "promoters.max_promoters=10", "promoters.window=100", "probes.window=100",
                                    "probes.train_per_class=10",
                                    "probes.test_per_class=5", "generation.n_prompts=3", "generation.n_cds_prompts=3",
                                    "generation.prompt_length=64", "generation.length=16", "markov.orders=[1,2,3]",
                                    "tsne_points=40"]),
    ]
    assert run(argv) == 0
    printed = capsys.readouterr().out
    for step in ("synth", "prepare", "train", "benchmark"):
        assert f"== {step} done" in printed

    # prepare: the homology split keeps each chromosome's copies together (Chr3A-C in val, Chr4A-C in test)
    splits = json.loads((out / "prepared" / "splits.json").read_text())
    assert splits["strategy"] == "homology"
    held = {record: split for split, intervals in splits["splits"].items() for record, _, _ in intervals}
    assert held == {f"Chr{c}{h}": {"3": "val", "4": "test"}.get(str(c), "train") for c in range(1, 5) for h in "ABC"}

    # train: the demo model, then its row and the Markov baseline's on the leaderboard
    assert (out / "train" / "model" / "model.safetensors").is_file()
    with open(out / "benchmark" / "leaderboard.csv") as fh:
        rows = {r["model"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"train", "markov"}
    for row in rows.values():
        assert 1.0 < float(row["bits_per_base"]) < 2.5
    html = (out / "benchmark" / "report.html").read_text()
    assert "<img" in html and "leaderboard" in html.lower()
