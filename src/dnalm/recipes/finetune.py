"""``dnalm finetune checkpoint=PATH task=classification data.path=DIR``: fine-tune a pretrained LM.

``task=classification`` / ``task=regression`` (or a shipped task such as ``task=gue_prom_core_all``)
puts a sequence head on the checkpoint's backbone, trains on the ``train`` split, keeps the weights
of the best dev epoch (``task.monitor``, default ``val/mcc`` / ``val/mse``), stops early after
``task.patience`` epochs without improvement, evaluates the test split and writes ``out/``::

    metrics.json     dev metrics of the best epoch and test metrics (written last, atomically)
    model/           the fine-tuned classifier (dnalm checkpoint + head.safetensors + head.json), or
    adapter/         with lora.enabled: the LoRA adapter and head only (merge with `dnalm merge-lora`)
    config.yaml      the composed configuration

``trainer`` and ``optim`` are the config groups of ``dnalm train`` (``trainer=gpu``, ``optim.lr=...``);
fine-tuning counts epochs and validates once per epoch unless told otherwise. ``task.head_lr`` and
``task.layer_decay`` give the head its own learning rate and lower layers smaller ones.
``optim.lr=auto`` picks the learning rate by a range test on the training split
(:mod:`dnalm.training.lr_range`); ``optim.warmup_fraction`` / ``optim.decay`` shape the schedule.
Classification reports the class prior (log and ``metrics.json``: ``class_prior``), takes
``task.class_weights=none|auto|[...]`` and ``task.sampling=natural|balanced``
(:mod:`dnalm.training.imbalance`), and warns when the classifier predicts the prior (one line on stderr,
``warnings`` in ``metrics.json``; :mod:`dnalm.training.collapse`).

``task=lm`` continues next-token pretraining from the checkpoint: the ``data`` node is then a genome
``data`` option of ``dnalm train`` (default ``prepared``: ``data.prepared=DIR``) and the run is
``dnalm train init_from=<checkpoint>`` (:func:`dnalm.recipes.train.run`) with this config's
``data``, ``trainer``, ``optim``, ``out`` and ``seed``; its outputs are those of ``dnalm train``. Any family
trains so (causal ones next-token, in their own vocabulary, masked ones by masked LM; Evo 2 / StripedHyena
continued pretraining on a new genome). With ``lora.enabled`` only LoRA adapters of the family's
``lora_targets`` train; ``model/`` then holds the merged weights and ``model/adapter/`` the adapter.
:func:`run` is the whole recipe as a function; ``dnalm tune`` calls it once per trial.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dnalm.config import to_dataclass
from dnalm.errors import ConfigError, InputError
from dnalm.recipes.train import TrainerConfig
from dnalm.training.lightning import OptimConfig, time_budget_fraction
from dnalm.utils import atomic_file, json_safe, make_dir

TASK_KINDS = ("classification", "regression", "lm")


@dataclass
class TaskConfig:
    """The ``task`` node: what to fine-tune for, how the head pools (see dnalm.models.heads), model selection
    (``monitor``, ``mode``, early-stopping ``patience``) and learning rates of the head and of lower layers."""

    kind: str = "classification"
    pooling: str = "mean"
    pooler: bool = False
    layer: int = -1
    dropout: float = 0.1
    monitor: str | None = None
    mode: str | None = None
    patience: int | None = 5
    head_lr: float | None = None
    layer_decay: float = 1.0
    class_weights: Any = "none"
    sampling: str = "natural"


@dataclass
class FinetuneConfig:
    checkpoint: str | None = None
    out: str = "runs/finetune"
    data_root: str = "../shared/data"
    seed: int = 0
    save_model: bool = True


@dataclass
class FinetuneResult:
    """What :func:`run` returns: the monitored dev score, all metrics and where outputs went."""

    monitor: str
    mode: str
    best_score: float | None
    metrics: dict[str, Any]
    out: Path
    extra: dict[str, Any] = field(default_factory=dict)


def _optimizer(model, opt: OptimConfig, task: TaskConfig):
    import torch

    from dnalm.training.classify import finetune_param_groups

    groups = finetune_param_groups(model, lr=opt.lr, weight_decay=opt.weight_decay, head_lr=task.head_lr,
                                   filter_lr=opt.filter_lr, filter_weight_decay=opt.filter_weight_decay,
                                   layer_decay=task.layer_decay)
    return torch.optim.AdamW(groups, lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps)


def _optimizer_factory(opt: OptimConfig, task: TaskConfig, total_steps: int, clock=None):
    from dnalm.training.schedules import warmup_cosine_scheduler, warmup_steps_of

    def build(model):
        optimizer = _optimizer(model, opt, task)
        scheduler = warmup_cosine_scheduler(optimizer, total_steps,
                                            warmup_steps_of(total_steps, opt.warmup_steps, opt.warmup_fraction),
                                            opt.min_lr_ratio, clock if opt.horizon == "time" else None, opt.decay)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    return build


def _tokenizer_of(checkpoint: Path, model: Any):
    """The checkpoint's tokenizer, else its family's (HyenaDNA's character tokenizer for a bare HyenaDNA file)."""
    from dnalm.models.io import checkpoint_tokenizer
    from dnalm.tokenizers import CharTokenizer

    return checkpoint_tokenizer(checkpoint, model, default=CharTokenizer.hyenadna())


def _labeled_data(cfg: DictConfig, kind: str, data_root: str):
    from dnalm.data.datamodule import LabeledDataConfig

    node = cfg.get("data")
    if node is None or node.get("path") in (None, ""):
        raise ConfigError("finetune: set data.path=DIR (train/dev/test files) or choose a task such as "
                          "task=gue_prom_core_all")
    data = to_dataclass(node, LabeledDataConfig, where="data")
    path = Path(data.path)
    if not path.exists() and Path(data_root) in path.parents:
        raise InputError(f"{path}: the task's data is not there: shipped tasks read it under data_root={data_root} "
                         f"(relative to the working directory {Path.cwd()}); pass data_root=DIR (the folder holding "
                         f"{path.relative_to(data_root)}) or data.path=DIR")
    return replace(data, task=kind)


def resolved(cfg: DictConfig) -> DictConfig:
    """``cfg`` with interpolations (``${data_root}``) resolved, so that sub-nodes convert on their own."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"finetune: {str(exc).splitlines()[0]}") from None


def parse(cfg: DictConfig) -> tuple[FinetuneConfig, TaskConfig, OptimConfig, TrainerConfig]:
    """Check and type the parts of a composed ``finetune`` config (the checkpoint must exist)."""
    top = to_dataclass({k: cfg.get(k) for k in ("checkpoint", "out", "data_root", "seed", "save_model")},
                       FinetuneConfig, where="finetune")
    task = to_dataclass(cfg.get("task"), TaskConfig, where="task")
    if task.kind not in TASK_KINDS:
        raise ConfigError(f"task.kind must be one of {', '.join(TASK_KINDS)}, got {task.kind!r}")
    optim = to_dataclass(cfg.get("optim"), OptimConfig, where="optim")
    trainer = to_dataclass(cfg.get("trainer"), TrainerConfig, where="trainer")
    if not top.checkpoint:
        raise ConfigError("finetune: set checkpoint=PATH (a dnalm model directory or a HyenaDNA checkpoint)")
    if not Path(top.checkpoint).exists():
        raise InputError(f"{top.checkpoint}: checkpoint not found")
    return top, task, optim, trainer


def _monitor(task: TaskConfig) -> tuple[str, str]:
    from dnalm.training.classify import DEFAULT_MONITOR

    if task.kind == "lm":
        return "val/loss", "min"
    name, mode = DEFAULT_MONITOR[task.kind]
    name = task.monitor or name
    if not name.startswith("val/"):
        name = f"val/{name}"
    mode = task.mode or (mode if task.monitor is None else ("min" if name.endswith(("loss", "mse", "mae")) else "max"))
    if mode not in ("min", "max"):
        raise ConfigError(f"task.mode must be 'min' or 'max', got {mode!r}")
    return name, mode


def _trainer(tc: TrainerConfig, opt: OptimConfig, out: Path, callbacks: list, has_dev: bool):
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from dnalm.recipes.train import available_trainer, lightning_strategy
    from dnalm.training.progress import progress_callbacks

    tc = available_trainer(tc, "finetune")
    limit_val = (None if tc.limit_val_batches == 1.0 else tc.limit_val_batches) if has_dev else 0
    return L.Trainer(accelerator=tc.accelerator, devices=tc.devices, num_nodes=tc.num_nodes,
                     strategy=lightning_strategy(tc),
                     precision=tc.precision, max_steps=tc.max_steps, max_epochs=tc.max_epochs,
                     max_time=tc.max_time, val_check_interval=tc.val_check_interval if has_dev else None,
                     check_val_every_n_epoch=tc.check_val_every_n_epoch,
                     limit_val_batches=limit_val,
                     log_every_n_steps=tc.log_every_n_steps, num_sanity_val_steps=tc.num_sanity_val_steps,
                     accumulate_grad_batches=tc.accumulate_grad_batches, gradient_clip_val=opt.grad_clip,
                     deterministic=tc.deterministic, enable_progress_bar=tc.progress_bar, enable_model_summary=False,
                     enable_checkpointing=False, logger=CSVLogger(str(out), name="logs", version=""),
                     callbacks=callbacks + progress_callbacks(tc.progress_bar, tc.progress_every, "finetune"),
                     default_root_dir=str(out))


def _check_context(ds: Any, l_max: int | None) -> None:
    """InputError naming the first sequence of ``ds`` whose tokens are more than a model with a fixed context
    (``l_max``: Hyena's filters are defined for that many positions) reads. A token covers at least one base
    and at most two specials are added, so only sequences longer than ``l_max - 2`` bases are tokenized."""
    if ds is None or l_max is None:
        return
    for i, seq in enumerate(ds.sequences):
        if len(seq) + 2 > l_max and (n := len(ds[i]["input_ids"])) > l_max:
            raise InputError(f"{ds.where[i]}: {n:,} tokens, more than the model's context l_max={l_max} "
                             f"(set data.max_length={l_max} to truncate)")


def run(cfg: DictConfig, callbacks: Sequence[Any] = ()) -> FinetuneResult:
    """The recipe: parse ``cfg``, fine-tune, evaluate, write ``out/``; ``callbacks`` are added to the Trainer."""
    cfg = resolved(cfg)
    top, task, optim, tc = parse(cfg)
    if task.kind == "lm":
        return _run_lm(cfg, top, callbacks)
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping

    from dnalm.data.datamodule import LabeledDataModule
    from dnalm.models.heads import SequenceClassifier, save_classifier
    from dnalm.models.io import load_pretrained
    from dnalm.models.lora import LoraSettings, apply_lora, save_adapter
    from dnalm.training.classify import BestWeights, SequenceTaskModule
    from dnalm.training.preflight import auto_lr, class_balance, collapse_monitor
    from dnalm.training.schedules import steps_per_epoch

    data = _labeled_data(cfg, task.kind, top.data_root)
    lora = to_dataclass(cfg.get("lora"), LoraSettings, where="lora")
    monitor, mode = _monitor(task)
    out = Path(top.out)
    L.seed_everything(top.seed, workers=True, verbose=False)

    checkpoint = Path(top.checkpoint)
    base = load_pretrained(checkpoint)
    tokenizer = _tokenizer_of(checkpoint, base)
    if task.kind != "classification" and (task.sampling != "natural" or str(task.class_weights) != "none"):
        raise ConfigError("task.class_weights and task.sampling=balanced apply to classification only")
    dm = LabeledDataModule(data, tokenizer, sampling=task.sampling)
    paths = dm.paths()
    n_outputs = dm.num_classes if task.kind == "classification" else 1
    classes = dm.classes if task.kind == "classification" else None
    if task.kind == "classification" and n_outputs < 2:
        raise InputError(f"{paths['train']}: classification needs at least 2 classes, found {n_outputs}")
    model = SequenceClassifier(base, n_outputs, task=task.kind, pooling=task.pooling, dropout=task.dropout,
                               layer=task.layer, pooler=task.pooler)
    model.classes = classes
    model.train()  # load_pretrained returns eval mode; dropout should be active while fine-tuning
    if lora.enabled:
        apply_lora(model, lora)
    for split in ("train", "dev", "test"):  # every input is read and checked before anything is written
        _check_context(dm.dataset(split), getattr(base.config, "l_max", None))
    balance = None
    if task.kind == "classification":  # class prior and loss weights
        balance = class_balance(dm.dataset("train").labels, classes, task.class_weights, task.sampling)
        print(balance.line(), file=sys.stderr, flush=True)
    make_dir(out)

    has_dev = paths["dev"] is not None
    if tc.max_epochs is None and tc.max_steps <= 0:
        raise ConfigError("finetune: set trainer.max_epochs or trainer.max_steps")
    best = BestWeights(monitor, mode)
    cbs: list[Any] = [best] if has_dev else []
    watch = None
    if balance is not None:  # the collapse warning
        watch = collapse_monitor(balance, dm.dataset("dev").labels if has_dev else None)
        cbs.append(watch)
    if has_dev and task.patience:
        cbs.append(EarlyStopping(monitor=monitor, mode=mode, patience=task.patience, check_finite=False,
                                 check_on_train_epoch_end=False))
    cbs.extend(callbacks)
    trainer = _trainer(tc, optim, out, cbs, has_dev)
    per_epoch = steps_per_epoch(len(dm.dataset("train")), data.batch_size, trainer.world_size,
                                tc.accumulate_grad_batches)
    total = per_epoch * tc.max_epochs if tc.max_epochs is not None else tc.max_steps
    if tc.max_steps > 0:
        total = min(total, tc.max_steps)
    range_test = None
    if optim.lr == "auto":
        range_test = auto_lr(model, dm.train_dataloader, lambda m: _optimizer(m, replace(optim, lr=1.0), task),
                             trainer.strategy.root_device, tc.precision, optim.grad_clip,
                             balance.weights if balance else None)
        optim = replace(optim, lr=range_test.lr)
    module = SequenceTaskModule(model, _optimizer_factory(optim, task, max(1, total),
                                                          lambda: time_budget_fraction(trainer)),
                                class_weights=balance.weights if balance else None)
    OmegaConf.save(cfg, out / "config.yaml")
    start = time.time()
    trainer.fit(module, datamodule=dm)
    if has_dev and best.best_score is None and not trainer.interrupted:
        # training stopped (max_steps) before any validation: evaluate the final weights on dev
        trainer.validate(module, datamodule=dm, verbose=False)
    metrics: dict[str, Any] = {
        "task": task.kind, "checkpoint": str(checkpoint.resolve()), "monitor": monitor, "mode": mode,
        "best_score": best.best_score, "best_epoch": best.best_epoch, "dev": best.best_metrics,
        "epochs": trainer.current_epoch, "steps": trainer.global_step, "train_seconds": round(time.time() - start, 2),
        "n_train": len(dm.dataset("train")), "classes": classes, "lora": lora.enabled,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "lr": optim.lr, "lr_range_test": range_test.summary() if range_test else None,
        "class_prior": balance.summary() if balance else None,
        "collapse_checks": watch.epochs if watch else None, "warnings": watch.warnings if watch else [],
    }
    if getattr(trainer, "should_stop", False) and any(getattr(c, "pruned", False) for c in callbacks):
        return FinetuneResult(monitor, mode, best.best_score, metrics, out)
    if paths["test"] is not None:
        trainer.test(module, datamodule=dm, verbose=False)
        metrics["test"] = module.last_metrics.get("test", {})
    if trainer.is_global_zero:
        if top.save_model:
            extra = {"metrics": json_safe({"dev": best.best_metrics, "test": metrics.get("test")}),
                     "inputs": {"both_strands": data.rc_eval, "max_length": data.max_length}}
            if lora.enabled:
                save_adapter(model, out / "adapter", lora, base_model=str(checkpoint.resolve()),
                             head=model.head_config(classes), extra=extra, tokenizer=tokenizer)
            else:
                save_classifier(model, out / "model", tokenizer=tokenizer, classes=classes, extra=extra)
        with atomic_file(out / "metrics.json") as tmp:
            tmp.write_text(json.dumps(json_safe(metrics), indent=2) + "\n")
    return FinetuneResult(monitor, mode, best.best_score, metrics, out)


def _run_lm(cfg: DictConfig, top: FinetuneConfig, callbacks: Sequence[Any]) -> FinetuneResult:
    """Continued pretraining: ``dnalm train init_from=<checkpoint>`` with this config's data, trainer, optim."""
    from dnalm.config import compose
    from dnalm.models.lora import LoraSettings
    from dnalm.recipes import train

    lora = to_dataclass(cfg.get("lora"), LoraSettings, where="lora") if cfg.get("lora") is not None else None
    if lora is not None and lora.enabled:
        # a bare LM has no sequence head: 'head' (the default of lora.trainable) names nothing here
        lora = replace(lora, trainable=[name for name in lora.trainable if name != "head"])
    else:
        lora = None
    data = OmegaConf.to_container(cfg.data)
    if data.get("prepared") in (None, "???") and not data.get("source") and not data.get("synthetic"):
        raise ConfigError("finetune: task=lm needs a prepared genome: set data.prepared=DIR (made by dnalm prepare)")
    node = OmegaConf.to_container(compose("train", []), resolve=False)
    node.update(name="finetune-lm", out=top.out, seed=top.seed, data_root=top.data_root, init_from=top.checkpoint,
                test=True, data=data, trainer=OmegaConf.to_container(cfg.trainer),
                optim=OmegaConf.to_container(cfg.optim))
    result = train.run(OmegaConf.create(node), callbacks=callbacks, lora=lora)
    best = (result.metrics.get("best") or {}).get("val/loss")
    metrics = {"task": "lm", "checkpoint": str(Path(top.checkpoint).resolve()), "lora": lora is not None,
               **result.metrics}
    return FinetuneResult("val/loss", "min", best, metrics, result.run_dir, {"model_dir": result.model_dir})


def _summary(result: FinetuneResult) -> str:
    m = result.metrics
    parts = [f"finetune: {m.get('task')} -> {result.out}/"]
    if result.best_score is not None:
        parts.append(f"best {result.monitor} {result.best_score:.4f} (epoch {m.get('best_epoch')})")
    test = m.get("test") or {}
    if m.get("task") == "classification":
        shown = ("mcc", "accuracy", "macro_f1", "auroc")
    else:
        shown = ("mse", "pearson", "spearman")
    if test:
        parts.append("test " + " ".join(f"{k} {test[k]:.4f}" for k in shown if k in test))
    if m.get("warnings"):
        parts.append("WARNING: " + ", ".join(w["kind"] for w in m["warnings"]) + " (see warnings in metrics.json)")
    return "; ".join(parts)


def main(cfg: DictConfig) -> int | None:
    result = run(cfg)
    print(_summary(result))
    return 0
