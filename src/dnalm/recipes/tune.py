"""``dnalm tune search=<space> n_trials=N [storage=URL] 'overrides=["checkpoint=...","data.path=..."]'``.

Hyperparameter search with Optuna (Akiba et al. 2019, "Optuna: A Next-generation Hyperparameter
Optimization Framework"). A search space ``conf/search/<space>.yaml`` declares::

    command: finetune                      # the command each trial runs (its recipe's run())
    overrides: [trainer.max_epochs=5]      # fixed overrides of every trial
    params:                                # override key -> distribution
      optim.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
      data.batch_size: {type: int, low: 16, high: 64, step: 16}
      task.pooling: {type: categorical, choices: [mean, last]}

Each trial samples the params, composes the command's config with Hydra (:func:`dnalm.config.compose`)
from ``search.overrides + overrides + sampled values + out=<out>/trial_<n>``, runs it, and returns the
best dev score of the command's monitored metric (``val/mcc`` for classification, ``val/mse`` for
regression), never a test score. After every validation epoch the score is reported to the
pruner (median rule: stop a trial whose score is worse than the median of earlier trials at the
same epoch). The study lives in ``storage`` (SQLite by default, any SQLAlchemy URL), so a search can
be resumed or run from several processes with the same ``study_name``.

Outputs (rewritten atomically after every trial): ``<out>/results.csv`` (one row per trial of the
study: number, state, value, params, dev and test metrics, output folder) and ``<out>/best.yaml``
(the best trial's value, params, full override list and composed config).
"""

from __future__ import annotations

import math
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from dnalm.config import compose, to_dataclass
from dnalm.errors import ConfigError, DnalmError
from dnalm.utils import atomic_file, json_safe, track

TUNABLE = ("finetune",)
PARAM_TYPES = ("float", "int", "categorical")


@dataclass
class ParamSpec:
    """One dimension of a search space (``type`` float/int: ``low``, ``high``, optional ``log``/``step``;
    categorical: ``choices``)."""

    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None


@dataclass
class SearchSpace:
    command: str = "finetune"
    overrides: list[str] = field(default_factory=list)
    params: dict[str, ParamSpec] = field(default_factory=dict)


@dataclass
class TuneConfig:
    n_trials: int = 20
    timeout: float | None = None
    storage: str | None = "sqlite:///runs/tune.db"
    study_name: str | None = None
    out: str = "runs/tune"
    overrides: list[str] = field(default_factory=list)
    sampler: str = "tpe"
    seed: int | None = 0
    pruner: str = "median"
    pruner_startup_trials: int = 2
    pruner_warmup_epochs: int = 0


def check_space(space: SearchSpace) -> None:
    """Raise ConfigError naming the first malformed parameter of ``space``."""
    if space.command not in TUNABLE:
        raise ConfigError(f"search.command must be one of {', '.join(TUNABLE)}, got {space.command!r}")
    if not space.params:
        raise ConfigError("search.params is empty: declare at least one parameter to tune")
    for key, p in space.params.items():
        where = f"search.params.{key}"
        if p.type not in PARAM_TYPES:
            raise ConfigError(f"{where}.type must be one of {', '.join(PARAM_TYPES)}, got {p.type!r}")
        if p.type == "categorical":
            if not p.choices:
                raise ConfigError(f"{where}: categorical needs a non-empty 'choices' list")
            continue
        if p.low is None or p.high is None or not p.low < p.high:
            raise ConfigError(f"{where}: needs low < high, got low={p.low}, high={p.high}")
        if p.log and p.low <= 0:
            raise ConfigError(f"{where}: log scale needs low > 0, got {p.low}")
        if p.log and p.step is not None:
            raise ConfigError(f"{where}: step cannot be combined with log")
        if p.type == "int" and (p.low != int(p.low) or p.high != int(p.high)):
            raise ConfigError(f"{where}: int bounds must be integers, got {p.low}, {p.high}")


def sample(trial: Any, space: SearchSpace) -> dict[str, str]:
    """Sampled values of every parameter of ``space`` for an Optuna ``trial``, as override texts.

    A categorical parameter whose choices include lists (``[[mixer], [mlp]]``) is sampled among the
    choices' override texts, so that Optuna records it as a readable string (``[mixer]``).
    """
    values: dict[str, str] = {}
    for key, p in space.params.items():
        if p.type == "float":
            value = trial.suggest_float(key, float(p.low), float(p.high), log=p.log,
                                        step=None if p.step is None else float(p.step))
        elif p.type == "int":
            value = trial.suggest_int(key, int(p.low), int(p.high), log=p.log,
                                      step=1 if p.step is None else int(p.step))
        elif all(c is None or isinstance(c, (bool, int, float, str)) for c in p.choices):
            value = trial.suggest_categorical(key, list(p.choices))
        else:
            values[key] = trial.suggest_categorical(key, [override_value(c) for c in p.choices])
            continue
        values[key] = override_value(value)
    return values


def override_value(value: Any) -> str:
    """A Python value written in Hydra's override grammar (``None`` -> ``null``, quoted strings when needed)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    text = str(value)
    if text and all(c.isalnum() or c in "_-./:" for c in text) and text not in ("null", "true", "false"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class PruningCallback(L.Callback):
    """Report the monitored dev score to an Optuna ``trial`` after each validation epoch.

    When the pruner says so it asks the Trainer to stop and sets ``pruned``; the recipe then raises
    ``optuna.TrialPruned`` (raising inside Lightning's loop would be reported as a crash).
    """

    def __init__(self, trial: Any, monitor: str):
        self.trial, self.monitor, self.pruned = trial, monitor, False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        self.trial.report(float(value), step=trainer.current_epoch)
        if self.trial.should_prune():
            self.pruned = True
            trainer.should_stop = True


def _storage(url: str | None) -> str | None:
    if not url:
        return None
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    return url


def _sampler(tc: TuneConfig):
    import optuna

    if tc.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=tc.seed)
    if tc.sampler == "random":
        return optuna.samplers.RandomSampler(seed=tc.seed)
    raise ConfigError(f"sampler must be 'tpe' or 'random', got {tc.sampler!r}")


def _pruner(tc: TuneConfig):
    import optuna

    if tc.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=tc.pruner_startup_trials,
                                           n_warmup_steps=tc.pruner_warmup_epochs)
    if tc.pruner == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"pruner must be 'median' or 'none', got {tc.pruner!r}")


def _flat(prefix: str, metrics: Any) -> dict[str, Any]:
    if not isinstance(metrics, dict):
        return {}
    return {f"{prefix}_{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def write_results(study: Any, out: Path, space: SearchSpace, command: str) -> None:
    """``results.csv`` (one row per trial) and ``best.yaml`` (the best completed trial), both atomic."""
    import optuna
    import pandas as pd

    rows = []
    for t in study.trials:
        row = {"trial": t.number, "state": t.state.name, "value": t.value,
               "duration_s": None if t.duration is None else round(t.duration.total_seconds(), 3)}
        row.update({k: t.params.get(k) for k in space.params})
        row.update(_flat("dev", t.user_attrs.get("dev")))
        row.update(_flat("test", t.user_attrs.get("test")))
        row["out"] = t.user_attrs.get("out")
        rows.append(row)
    with atomic_file(out / "results.csv") as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return
    best = study.best_trial
    overrides = list(best.user_attrs.get("overrides", []))
    doc = {
        "study": study.study_name, "direction": study.direction.name.lower(),
        "metric": best.user_attrs.get("monitor"), "value": best.value, "trial": best.number,
        "params": dict(best.params), "overrides": overrides,
        "command": " ".join(["dnalm", command, *(shlex.quote(o) for o in overrides)]),
        "dev": best.user_attrs.get("dev"), "test": best.user_attrs.get("test"),
        "config": best.user_attrs.get("config"),
    }
    with atomic_file(out / "best.yaml") as tmp:
        tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(doc)))


def _probe(space: SearchSpace) -> list[str]:
    """Overrides that set every parameter of ``space`` to a value of its range (to check the keys once)."""
    out = []
    for key, p in space.params.items():
        if p.type == "categorical":
            out.append(f"{key}={override_value(p.choices[0])}")
        else:
            out.append(f"{key}={override_value(int(p.low) if p.type == 'int' else float(p.low))}")
    return out


def _direction(command: str, overrides: list[str], config_dir: str | None) -> tuple[str, str]:
    """The monitored metric and Optuna direction of the trials; checks their settings once, before any trial."""
    from dnalm.recipes import finetune

    try:
        cfg = finetune.resolved(compose(command, overrides, config_dir))
        _, task, _, _ = finetune.parse(cfg)
    except DnalmError as exc:
        raise type(exc)(f"tune: {exc} (every trial's fixed settings go in 'overrides=[\"checkpoint=PATH\", ...]')"
                        ) from None
    monitor, mode = finetune._monitor(task)
    return monitor, "maximize" if mode == "max" else "minimize"


def run(cfg: DictConfig, config_dir: str | None = None) -> Any:
    """The search; returns the Optuna study."""
    import optuna

    from dnalm.recipes import finetune

    tc = to_dataclass({k: v for k, v in cfg.items() if k != "search"}, TuneConfig, where="tune")
    space = to_dataclass(cfg.get("search"), SearchSpace, where="search")
    check_space(space)
    if tc.n_trials < 1:
        raise ConfigError(f"n_trials must be >= 1, got {tc.n_trials}")
    out = Path(tc.out)
    fixed = list(space.overrides) + list(tc.overrides)
    reserved = [o for o in fixed if o.split("=", 1)[0].lstrip("+~") == "out"]
    if reserved:
        raise ConfigError("tune: 'out' is set per trial (<out>/trial_<n>); set the search's out= instead")
    monitor, direction = _direction(space.command, fixed + _probe(space), config_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=_storage(tc.storage), study_name=tc.study_name, direction=direction,
                                sampler=_sampler(tc), pruner=_pruner(tc), load_if_exists=tc.study_name is not None)
    if study.direction.name.lower() != direction:
        raise ConfigError(f"study '{study.study_name}' in {tc.storage} was created to {study.direction.name.lower()}, "
                          f"but {monitor} must be {direction}d")

    def objective(trial: Any) -> float:
        values = sample(trial, space)
        trial_out = out / f"trial_{trial.number:04d}"
        overrides = fixed + [f"{k}={v}" for k, v in values.items()] + [f"out={trial_out}"]
        trial_cfg = compose(space.command, overrides, config_dir)
        trial.set_user_attr("overrides", overrides[:-1])
        trial.set_user_attr("out", str(trial_out))
        trial.set_user_attr("monitor", monitor)
        trial.set_user_attr("config", OmegaConf.to_container(trial_cfg, resolve=False))
        pruning = PruningCallback(trial, monitor)
        result = finetune.run(trial_cfg, callbacks=[pruning])
        trial.set_user_attr("dev", json_safe(result.metrics.get("dev")))
        if pruning.pruned:
            raise optuna.TrialPruned()
        trial.set_user_attr("test", json_safe(result.metrics.get("test")))
        if result.best_score is None or not math.isfinite(result.best_score):
            raise ConfigError(f"tune: trial {trial.number} produced no {monitor} (does the data have a dev split?)")
        return float(result.best_score)

    def after_trial(study: Any, trial: Any) -> None:
        write_results(study, out, space, space.command)

    start = time.monotonic()
    for _ in track(range(tc.n_trials), total=tc.n_trials, desc="trials", unit="trial"):
        if tc.timeout is not None and time.monotonic() - start >= tc.timeout:
            break
        study.optimize(objective, n_trials=1, callbacks=[after_trial])
    return study


def main(cfg: DictConfig) -> int | None:
    study = run(cfg)
    out = Path(cfg.out)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    pruned = sum(t.state.name == "PRUNED" for t in study.trials)
    if done:
        best = study.best_trial
        print(f"tune: {len(study.trials)} trials ({pruned} pruned); best trial {best.number}: "
              f"{best.user_attrs.get('monitor')} {best.value:.4f} {best.params}; "
              f"see {out}/results.csv, {out}/best.yaml")
    else:
        print(f"tune: {len(study.trials)} trials, none completed; see {out}/results.csv")
    return 0
