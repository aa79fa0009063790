"""`dnalm tune`: Optuna trials over a declared search space, SQLite storage, pruning, results and best config."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from dnalm.errors import ConfigError
from dnalm.models.hyena import HyenaConfig, HyenaLM
from dnalm.recipes.tune import SearchSpace, check_space, override_value

TINY = HyenaConfig(d_model=16, n_layer=1, d_inner=32, l_max=50, filter_order=8, embed_dropout=0.0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from dnalm.models.io import save_pretrained
    from dnalm.tokenizers import CharTokenizer

    root = tmp_path_factory.mktemp("tune")
    torch.manual_seed(0)
    save_pretrained(HyenaLM(TINY), root / "ckpt", tokenizer=CharTokenizer())
    rng = np.random.default_rng(0)
    data = root / "data"
    data.mkdir()
    for split, n in (("train", 96), ("dev", 48)):
        rows = ["sequence,label"]
        for i in range(n):
            seq = "".join(rng.choice(list("ACGT"), 32))
            if i % 2:
                seq = seq[:10] + "GGGGGGGG" + seq[18:]
            rows.append(f"{seq},{i % 2}")
        (data / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root


def _fixed(root) -> str:
    items = [f"checkpoint={root / 'ckpt'}", f"data.path={root / 'data'}", "trainer.max_epochs=2",
             "trainer.progress_bar=false", "trainer.accelerator=cpu", "data.batch_size=16", "save_model=false"]
    return "overrides=[" + ",".join(f'"{i}"' for i in items) + "]"


def test_three_trials_sqlite_results_consistent(tmp_path, setup) -> None:
    import optuna

    from dnalm.cli import run

    db = tmp_path / "db" / "tune.db"
    out = tmp_path / "out"
    assert run(["tune", "search=finetune", "n_trials=3", f"storage=sqlite:///{db}", "study_name=s1",
                f"out={out}", _fixed(setup), "pruner=none"]) == 0
    results = pd.read_csv(out / "results.csv")
    assert list(results["trial"]) == [0, 1, 2] and set(results["state"]) == {"COMPLETE"}
    for key in ("optim.lr", "optim.weight_decay", "task.head_lr", "task.dropout", "task.pooling"):
        assert results[key].notna().all()
    assert results["optim.lr"].between(1e-5, 3e-3).all()
    assert set(results["task.pooling"]) <= {"mean", "last", "max"}
    # the objective is the trial's best dev MCC, which its own metrics.json reports
    for _, row in results.iterrows():
        metrics = json.loads((out / f"trial_{int(row['trial']):04d}" / "metrics.json").read_text())
        assert row["value"] == pytest.approx(metrics["best_score"]) and row["dev_mcc"] == pytest.approx(row["value"])
    best = OmegaConf.load(out / "best.yaml")
    assert best.value == pytest.approx(results["value"].max()) and best.direction == "maximize"
    assert best.trial == int(results.loc[results["value"].idxmax(), "trial"])
    assert best.metric == "val/mcc" and best.config.optim.lr == pytest.approx(best.params["optim.lr"])
    assert f"task.pooling={best.params['task.pooling']}" in best.overrides
    study = optuna.load_study(study_name="s1", storage=f"sqlite:///{db}")
    assert [t.value for t in study.trials] == pytest.approx(list(results["value"]))
    # the study resumes from the database
    assert run(["tune", "search=finetune", "n_trials=1", f"storage=sqlite:///{db}", "study_name=s1",
                f"out={out}", _fixed(setup), "pruner=none", "sampler=random"]) == 0
    assert len(pd.read_csv(out / "results.csv")) == 4


def test_pruning_callback_stops_a_trial(tmp_path, setup) -> None:
    import optuna

    from dnalm.config import compose
    from dnalm.recipes import finetune
    from dnalm.recipes.tune import PruningCallback

    # a pruner that prunes any MCC below 2 (all of them) at the first report
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    trial = study.ask()
    cfg = compose("finetune", [f"checkpoint={setup / 'ckpt'}", f"data.path={setup / 'data'}", f"out={tmp_path}",
                               "trainer.max_epochs=3", "trainer.progress_bar=false", "trainer.accelerator=cpu",
                               "data.batch_size=16"])
    callback = PruningCallback(trial, "val/mcc")
    result = finetune.run(cfg, callbacks=[callback])
    assert callback.pruned and result.metrics["epochs"] == 1
    assert list(study._storage.get_trial(trial._trial_id).intermediate_values) == [0]
    assert not (tmp_path / "metrics.json").exists()


def test_search_space_validation_and_overrides() -> None:
    from dnalm.config import compose, to_dataclass

    for name in ("finetune", "lora"):
        space = to_dataclass(compose("tune", [f"search={name}"]).search, SearchSpace, where="search")
        check_space(space)
    bad = [{"params": {}}, {"command": "train", "params": {"a": {"type": "float", "low": 0, "high": 1}}},
           {"params": {"a": {"type": "float", "low": 1, "high": 1}}},
           {"params": {"a": {"type": "float", "low": 0, "high": 1, "log": True}}},
           {"params": {"a": {"type": "categorical", "choices": []}}},
           {"params": {"a": {"type": "normal", "low": 0, "high": 1}}}]
    for node in bad:
        space = to_dataclass(node, SearchSpace, where="search")
        with pytest.raises(ConfigError):
            check_space(space)
    assert override_value(None) == "null" and override_value(True) == "true" and override_value(1e-4) == "0.0001"
    assert override_value(["mixer", "mlp"]) == "[mixer,mlp]" and override_value("a b") == "'a b'"
    assert override_value("null") == "'null'"
    cfg = compose("finetune", ["checkpoint=x", f"task.pooling={override_value('a b')}",
                               f"lora.target_modules={override_value(['mixer'])}"])
    assert cfg.task.pooling == "a b" and list(cfg.lora.target_modules) == ["mixer"]


def test_tune_user_errors(tmp_path, setup) -> None:
    from dnalm.cli import run

    with pytest.raises(ConfigError, match="n_trials"):
        run(["tune", "n_trials=0", f"out={tmp_path}", _fixed(setup)])
    with pytest.raises(ConfigError, match="out"):
        run(["tune", "n_trials=1", "storage=null", 'overrides=["out=x"]'])


def test_unknown_search_key_fails_before_any_trial(tmp_path, setup) -> None:
    import optuna

    from dnalm.cli import run

    space = tmp_path / "conf" / "search"
    space.mkdir(parents=True)
    (space / "bad.yaml").write_text("command: finetune\nparams:\n"
                                    "  optim.learning_rate: {type: float, low: 0.1, high: 1}\n")
    db = tmp_path / "t.db"
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        run(["tune", "--config-dir", str(tmp_path / "conf"), "search=bad", f"storage=sqlite:///{db}",
             "study_name=bad", f"out={tmp_path / 'out'}", _fixed(setup)])
    assert not db.exists() or not optuna.get_all_study_names(f"sqlite:///{db}")
