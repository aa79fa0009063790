"""``dnalm train [experiment=NAME] [data.prepared=DIR] [key=value ...]``: pretraining on a genome.

The model family's ``objective`` chooses the training (:func:`genome_vocabulary`): a causal family
(HyenaDNA, Transformer, StripedHyena 2 / Evo 2, Mamba) learns next-token prediction, the prepared genome's
character ids translated into the family's tokenizer ids when they differ (Evo 2's bytes; soft-masked
bases and N become whatever the tokenizer makes of ``a``/``N``), with per-region bits/base; a masked
family learns masked LM on windows tokenized by its tokenizer (DNABERT-2: a BPE, ``model.tokenizer=DIR``,
from ``dnalm tokenizer train``; learnt on the training split when the directory does not exist yet;
Caduceus: dnalm's character tokenizer, nothing to learn), ``mask_rate`` of the tokens masked 80/10/10,
validated by masked-token loss, accuracy, perplexity and bits per masked base (not comparable with causal
bits/base).

Setup -> fit -> save, on a prepared genome (``dnalm prepare``); with ``data.prepared=null`` the data
group's ``source`` (a FASTA + GFF3 genome) or ``synthetic`` (a synthetic genome) is prepared first
into ``data.cache`` and reused by later runs. Everything goes to the run directory ``out``
(default ``runs/<name>``)::

    config.yaml          the composed configuration
    metrics.csv          per-step training and per-validation metrics (CSV logger)
    tensorboard/         TensorBoard logs (logger list: csv, tensorboard, wandb)
    checkpoints/         step-NNNNNNNN/ full checkpoints (newest checkpoint.keep) and a 'last' link
    best/                the model with the best validation loss (dnalm format)
    model/               the model to use (dnalm format: model.safetensors, config.json, tokenizer.json):
                         a copy of best/, or the final weights when nothing was validated
    metrics.json         the objective, final step, best and last validation metrics, which weights model/
                         holds (``model``) and, with ``test=true``, the test metrics of model/

``resume=auto`` (default) continues from the newest complete checkpoint of the run directory, with
the same data order, schedule and dropout masks, and refuses (in one line) a checkpoint of another model
config; ``resume=never`` starts over, replacing the outputs of an earlier run in the directory;
``resume=PATH`` continues from that checkpoint. ``stages`` turn on sequence-length
warm-up, ``global_batch_size`` gradient accumulation (see dnalm.training.schedules). Several GPUs:
``trainer=ddp trainer.devices=N`` or ``trainer=fsdp`` (Lightning's strategies).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dnalm.config import to_dataclass
from dnalm.errors import ConfigError, InputError
from dnalm.models.families import family, family_of
from dnalm.models.families import names as family_names
from dnalm.utils import atomic_dir, atomic_file, json_safe, make_dir

GROUPS = ("model", "data", "trainer", "optim")
DATA_SOURCE_KEYS = ("prepared", "cache", "source", "synthetic")
LOGGERS = ("csv", "tensorboard", "wandb")


# ---------------------------------------------------------------------------------------------
# Typed configuration
# ---------------------------------------------------------------------------------------------


@dataclass
class StageConfig:
    """One sequence-length warm-up stage (see dnalm.training.schedules.Stage)."""

    length: int
    batch_size: int
    epochs: int | None = None
    steps: int | None = None


@dataclass
class CheckpointConfig:
    """``every_n_steps``: full checkpoint period in optimizer steps (0: only at the end); ``keep``: full
    checkpoints kept; ``save_best``: keep ``best/`` by ``monitor`` (lower is better)."""

    every_n_steps: int = 500
    keep: int = 1
    save_best: bool = True
    monitor: str = "val/loss"


@dataclass
class EarlyStoppingConfig:
    """Stop when ``checkpoint.monitor`` has not improved by ``min_delta`` for ``patience`` validations."""

    enabled: bool = False
    patience: int = 5
    min_delta: float = 0.0


@dataclass
class TrainConfig:
    """Top-level keys of ``conf/train.yaml``."""

    name: str = "dnalm"
    out: str = "runs/dnalm"
    seed: int = 0
    data_root: str = "../shared/data"
    resume: str = "auto"
    init_from: str | None = None
    global_batch_size: int | None = None
    stages: list[StageConfig] = field(default_factory=list)
    activation_checkpointing: bool = False
    compile: bool = False
    mask_rate: float = 0.15
    logger: list[str] = field(default_factory=lambda: ["csv", "tensorboard"])
    test: bool = False
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)


@dataclass
class TrainerConfig:
    """Options of ``lightning.Trainer`` (the ``trainer`` group). ``strategy``: auto, ddp, fsdp or any
    strategy name Lightning knows; ``accumulate_grad_batches`` applies when ``global_batch_size`` is null."""

    accelerator: str = "cpu"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    max_steps: int = -1
    max_epochs: int | None = None
    max_time: str | None = None  # wall-clock limit "DD:HH:MM:SS" (training stops cleanly, best/ and model/ kept)
    val_check_interval: int | float | None = 1.0
    check_val_every_n_epoch: int | None = 1
    limit_val_batches: int | float = 1.0
    log_every_n_steps: int = 50
    num_sanity_val_steps: int = 0
    accumulate_grad_batches: int = 1
    deterministic: bool = False
    progress_bar: bool = True
    progress_every: float | None = None  # seconds between progress lines when stderr is a file (None: 30)


@dataclass
class GenomeSource:
    """A genome to prepare when ``data.prepared`` is null: FASTA, optional GFF3, held-out records."""

    fasta: str
    annotation: str | None = None
    name: str | None = None
    val: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    promoter_window: int = 1000


@dataclass
class DataSource:
    """Where the prepared genome comes from (the ``data`` keys besides the window options)."""

    prepared: str | None = None
    cache: str = "runs/prepared"
    source: GenomeSource | None = None
    synthetic: dict[str, Any] | None = None


@dataclass
class ParsedConfig:
    top: TrainConfig
    model: dict[str, Any]
    source: DataSource
    data: dict[str, Any]
    trainer: TrainerConfig
    optim: Any


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """``cfg`` as plain containers with interpolations resolved."""
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
    except MissingMandatoryValue as exc:
        raise ConfigError(f"train: set {exc.full_key}=... (it has no default)") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"train: {str(exc).splitlines()[0]}") from None


def parse(cfg: DictConfig | dict[str, Any]) -> ParsedConfig:
    """Check and type every part of a composed ``train`` config (no file is touched)."""
    from dnalm.data.datamodule import GenomeDataConfig
    from dnalm.training.lightning import OptimConfig

    node = resolved(cfg) if isinstance(cfg, DictConfig) else dict(cfg)
    top = to_dataclass({k: v for k, v in node.items() if k not in GROUPS}, TrainConfig, where="train")
    for name in top.logger:
        if name not in LOGGERS:
            raise ConfigError(f"logger: unknown logger '{name}' (choose from {', '.join(LOGGERS)})")
    try:
        Path(top.out).exists()
    except OSError as exc:  # a name longer than the file system allows, a loop of links
        raise ConfigError(f"out={top.out}: not a usable path ({exc.strerror or exc})") from None
    if not 0.0 < top.mask_rate < 1.0:
        raise ConfigError(f"mask_rate={top.mask_rate} must be in (0, 1)")
    if not 0 <= top.seed < 2**32:
        raise ConfigError(f"seed={top.seed} must be in [0, 2^32)")
    if top.resume not in ("auto", "never") and not Path(top.resume).exists():
        raise ConfigError(f"resume={top.resume}: no such checkpoint (use auto, never or a checkpoint directory)")
    model = dict(node.get("model") or {})
    if model.get("family") not in family_names():
        raise ConfigError(f"model.family must be one of {', '.join(family_names())}, got {model.get('family')!r}")
    data_node = dict(node.get("data") or {})
    source = to_dataclass({k: data_node.pop(k) for k in DATA_SOURCE_KEYS if k in data_node}, DataSource,
                          where="data")
    to_dataclass({**data_node, "path": source.prepared or ""}, GenomeDataConfig, where="data")
    trainer = to_dataclass(node.get("trainer"), TrainerConfig, where="trainer")
    optim = to_dataclass(node.get("optim"), OptimConfig, where="optim")
    if optim.lr == "auto":
        raise ConfigError("optim.lr=auto (a learning-rate range test) is a dnalm finetune option; give train a number")
    return ParsedConfig(top, model, source, data_node, trainer, optim)


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------

def model_config(node: dict[str, Any], max_length: int):
    """The model family and its frozen config from the ``model`` node; a null context length
    (``l_max``, ``max_len``: the family's ``context_field``) becomes ``max_length + 2`` (HyenaDNA: the
    training length + 2)."""
    node = dict(node)
    node.pop("tokenizer", None)  # read by train_tokenizer
    name = node.pop("family", None)
    if name not in family_names():
        raise ConfigError(f"model.family must be one of {', '.join(family_names())}, got {name!r}")
    fam = family(name)
    if fam.context_field is not None and node.get(fam.context_field) is None:
        node[fam.context_field] = max_length + 2
    config = to_dataclass(node, fam.config_cls, where="model")
    context = fam.context_length(config)
    if name == "hyena" and context is not None and context < max_length:
        raise ConfigError(f"model.l_max={context} is shorter than the longest training or evaluation window "
                          f"({max_length}); set model.l_max={max_length + 2} (or null)")
    return name, config


@dataclass
class GenomeVocabulary:
    """How a model reads a prepared genome (:func:`genome_vocabulary`).

    ``tokenizer``: the model's tokenizer (saved with every checkpoint); ``token_map``: causal models,
    the lookup from the genome's character ids to the tokenizer's (None: the ids are the model's own,
    see :func:`dnalm.data.datasets.genome_token_map`); ``masked``: masked models, windows are tokenized
    by ``tokenizer`` and masked (:class:`dnalm.training.lightning.MaskedLM`).
    """

    tokenizer: Any
    token_map: Any = None
    masked: bool = False


def train_tokenizer(model: Any, path: str | None = None, init_from: str | None = None) -> Any:
    """The tokenizer a model trains with: the one saved at ``path`` (``model.tokenizer=PATH``), else the
    family's own for the config, else the one saved with the ``init_from`` checkpoint; None when there is
    none (a family whose tokenizer is trained data, such as DNABERT-2's BPE)."""
    from dnalm.tokenizers import CONFIG_FILE, load_tokenizer

    if path:
        if not Path(path).exists():
            raise InputError(f"model.tokenizer={path}: no such tokenizer (make one with 'dnalm tokenizer train')")
        return load_tokenizer(path)
    tok = family_of(model).tokenizer(model.config)
    if tok is None and init_from:
        directory = Path(init_from) if Path(init_from).is_dir() else Path(init_from).parent
        if (directory / CONFIG_FILE).is_file():
            tok = load_tokenizer(directory)
    return tok


def genome_vocabulary(model: Any, tokenizer: Any) -> GenomeVocabulary:
    """Check that ``model`` can be trained on a prepared genome with ``tokenizer`` and say how (one-line
    ConfigError otherwise). The family's ``objective`` decides: a causal model predicts the next base and
    needs one token per base (its ids come from the genome's through a lookup); a masked model reads
    each window tokenized by its tokenizer, which needs a ``[MASK]`` token."""
    from dnalm.data.datasets import genome_token_map

    fam = family_of(model)
    where = f"model.family={fam.name}"
    if tokenizer is None:
        raise ConfigError(f"{where}: the family has no built-in tokenizer; set model.tokenizer=PATH (make one with "
                          "'dnalm tokenizer train data.prepared=DIR vocab_size=N out=DIR')")
    vocab = getattr(model.config, "vocab_size", None)
    if vocab is not None and tokenizer.vocab_size > vocab:
        raise ConfigError(f"{where}: model.vocab_size={vocab} is smaller than the tokenizer's {tokenizer.vocab_size} "
                          "tokens")
    if fam.causal:
        try:
            return GenomeVocabulary(tokenizer, genome_token_map(tokenizer))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    alphabet = getattr(tokenizer, "alphabet", None)
    if getattr(alphabet, "mask", None) is None:
        raise ConfigError(f"{where}: masked-LM training needs a tokenizer with a [MASK] token; the "
                          f"{getattr(tokenizer, 'type', type(tokenizer).__name__)} tokenizer has none")
    return GenomeVocabulary(tokenizer, None, masked=True)


def check_trainable_on_genome(model: Any, tokenizer: Any = None) -> GenomeVocabulary:
    """:func:`genome_vocabulary` with the family's tokenizer when none is given."""
    return genome_vocabulary(model, train_tokenizer(model) if tokenizer is None else tokenizer)


def build_model(node: dict[str, Any], max_length: int, device: Any = None):
    """Build the model of the ``model`` node (on ``device``, e.g. 'meta' to check a large config)."""
    name, config = model_config(node, max_length)
    return family(name).build(config, device=device)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def _is_rank_zero() -> bool:
    return all(int(os.environ.get(k, "0") or 0) == 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def _synthetic_dir(cache: Path, node: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(node, sort_keys=True).encode()).hexdigest()[:12]
    return cache / f"synthetic-{digest}"


def ensure_prepared(source: DataSource, data_root: str | None = None) -> Path:
    """The prepared directory to train on, preparing ``source.source`` or ``source.synthetic`` into
    ``source.cache`` when ``source.prepared`` is null (kept and reused by later runs)."""
    from dnalm.data.prepare import GenomeSpec, default_genome_name, prepare
    from dnalm.genome.splits import SplitSpec

    if source.prepared:
        path = Path(source.prepared)
        if not (path / "manifest.json").is_file():
            raise InputError(f"{path}: not a prepared dataset directory (no manifest.json; make one with "
                             "'dnalm prepare')")
        return path
    cache = Path(source.cache)
    if source.source is not None:
        g = source.source
        if not Path(g.fasta).is_file():
            raise InputError(f"{g.fasta}: genome FASTA not found: the data option reads it under data_root="
                             f"{data_root} (relative to the working directory {Path.cwd()}); pass data_root=DIR, "
                             "or data.prepared=DIR for a genome prepared with 'dnalm prepare'")
        name = g.name or default_genome_name(g.fasta)
        out = cache / name
        if not (out / "manifest.json").is_file() and _is_rank_zero():
            print(f"train: preparing {g.fasta} into {out}", flush=True)
            prepare([GenomeSpec(name, g.fasta, g.annotation)], out, SplitSpec(strategy="records", val=list(g.val),
                    test=list(g.test)), promoter_window=g.promoter_window)
        return out
    if source.synthetic is not None:
        from dnalm.genome.synth import SynthConfig, synthesize

        node = dict(source.synthetic)
        val, test = list(node.pop("val", []) or []), list(node.pop("test", []) or [])
        synth = to_dataclass(node, SynthConfig, where="data.synthetic")
        out = _synthetic_dir(cache, {**asdict(synth), "val": val, "test": test})
        if not (out / "manifest.json").is_file() and _is_rank_zero():
            print(f"train: writing a synthetic genome into {out}", flush=True)
            files = synthesize(synth, out.with_name(out.name + "-genome"))
            prepare([GenomeSpec("synthetic", str(files["fasta"]), str(files["gff3"]))], out,
                    SplitSpec(strategy="records", val=val, test=test))
        return out
    raise ConfigError("train: set data.prepared=DIR (a directory made by 'dnalm prepare'), or data.source / "
                      "data.synthetic to prepare one")


def _tokenizer(prepared):
    from dnalm.tokenizers import CharTokenizer, tokenizer_from_config

    config = prepared.manifest.get("tokenizer")
    return tokenizer_from_config(config) if isinstance(config, dict) and config.get("type") else \
        CharTokenizer.hyenadna()


# ---------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------


GPU_ACCELERATORS = ("gpu", "cuda", "mps")
MIXED_PRECISIONS = ("bf16-mixed", "16-mixed", "bf16", "16", "bf16-true", "16-true")


def _has_gpu(accelerator: str) -> bool:
    import torch

    if torch.cuda.is_available():
        return True
    mps = getattr(torch.backends, "mps", None)
    return accelerator != "cuda" and mps is not None and mps.is_available()


def available_trainer(tc: TrainerConfig, command: str = "train") -> TrainerConfig:
    """``tc`` for the machine it runs on: a one-device GPU trainer (``trainer=gpu``, the shipped experiments'
    choice) runs on the CPU in 32-bit precision when there is no GPU, saying so in one line; several GPUs
    (``trainer=ddp``, ``fsdp``, ``devices>1``) without a GPU are a ConfigError naming ``trainer=cpu``."""
    if tc.accelerator not in GPU_ACCELERATORS or _has_gpu(tc.accelerator):
        return tc
    single = str(tc.devices) in ("1", "auto", "-1") and tc.num_nodes == 1 and tc.strategy in ("auto", "single_device")
    if not single:
        raise ConfigError(f"{command}: this machine has no GPU for trainer.accelerator={tc.accelerator} with "
                          f"{tc.devices} device(s) and strategy {tc.strategy}; use trainer=cpu (one process) or "
                          "trainer=cpu trainer.strategy=ddp trainer.devices=N (N CPU processes)")
    precision = "32-true" if tc.precision in MIXED_PRECISIONS else tc.precision
    print(f"{command}: no GPU found, running on the CPU with precision {precision} (as trainer=cpu; set it to "
          "silence this note)", flush=True)
    return replace(tc, accelerator="cpu", devices=1, precision=precision)


def lightning_strategy(tc: TrainerConfig):
    if tc.strategy == "fsdp":
        from dnalm.models.blocks import Block
        from dnalm.training.checkpoint import DirectoryFSDPStrategy

        return DirectoryFSDPStrategy(auto_wrap_policy={Block})
    return tc.strategy


def _loggers(top: TrainConfig, run_dir: Path) -> list:
    from lightning.pytorch.loggers import TensorBoardLogger

    from dnalm.training.lightning import ResumableCSVLogger

    out = []
    for name in top.logger:
        if name == "csv":
            out.append(ResumableCSVLogger(run_dir))
        elif name == "tensorboard":
            out.append(TensorBoardLogger(str(run_dir), name="tensorboard", version="", default_hp_metric=False))
        elif name == "wandb":
            try:
                import wandb  # noqa: F401
            except ImportError:
                raise ConfigError("logger: wandb was asked for but is not installed (pip install wandb)") from None
            from lightning.pytorch.loggers import WandbLogger

            out.append(WandbLogger(name=top.name, save_dir=str(run_dir)))
    return out


def _resume_from(top: TrainConfig, run_dir: Path) -> Path | None:
    from dnalm.training.checkpoint import find_resume_checkpoint, is_complete

    if top.resume == "auto":
        return find_resume_checkpoint(run_dir)
    if top.resume == "never":
        return None
    path = Path(top.resume)
    if not is_complete(path):
        raise InputError(f"{path}: not a complete checkpoint (model.safetensors, config.json, training_state.pt)")
    return path


#: What a finished or interrupted run leaves in its directory (``resume=never`` removes it before starting over).
RUN_OUTPUTS = ("checkpoints", "best", "model", "metrics.csv", "metrics.json", "tensorboard", "hparams.yaml")
#: Model config fields that change neither the weights nor their shapes: a run may resume with other values.
RUNTIME_FIELDS = ("fast_path", "embed_dropout", "resid_dropout", "hyena_dropout", "dropout")


def start_over(run_dir: Path) -> list[str]:
    """Remove a previous run's outputs from ``run_dir`` (``resume=never``); returns the names removed."""
    removed = []
    for name in RUN_OUTPUTS:
        path = run_dir / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
        else:
            continue
        removed.append(name)
    return removed


def check_resumable(model: Any, checkpoint: Path, run_dir: Path) -> None:
    """Refuse to resume ``checkpoint`` into ``model`` when their configs differ (in one line that names the
    changed fields and the two ways out), instead of a state-dict size-mismatch traceback."""
    from dnalm.models.io import read_pretrained_info

    saved = read_pretrained_info(checkpoint)
    now = json.loads(json.dumps(json_safe(asdict(model.config))))  # as saved: tuples are JSON lists
    family = getattr(model, "family", None)
    changes = [f"model.family {saved.get('family')} -> {family}"] if saved.get("family") != family else []
    old = saved.get("config") or {}
    changes += [f"model.{k} {old.get(k)} -> {now.get(k)}" for k in sorted(set(old) | set(now))
                if k not in RUNTIME_FIELDS and old.get(k) != now.get(k)]
    if changes:
        where = f"{run_dir}" if checkpoint.parent.parent == run_dir else f"{checkpoint}"
        raise ConfigError(f"train: {where} holds a run of another model ({', '.join(changes[:4])}"
                          f"{', ...' if len(changes) > 4 else ''}), so it cannot be resumed; pass out=DIR to "
                          "train the new model in its own folder, or resume=never to start over in this one")


@dataclass
class TrainResult:
    """What :func:`run` returns."""

    run_dir: Path
    model_dir: Path | None
    global_step: int
    epoch: int
    total_steps: int
    resumed_from: Path | None
    metrics: dict[str, Any]


def pretraining_module(model: Any, vocab: GenomeVocabulary, optim: Any, total: int, region_classes: Sequence[str],
                       seed: int = 0, activation_checkpointing: bool = False, compile: bool = False,
                       mask_rate: float = 0.15):
    """The LightningModule of the model's objective: :class:`~dnalm.training.lightning.NextTokenLM` for a
    causal model, :class:`~dnalm.training.lightning.MaskedLM` for a masked one."""
    from dnalm.data.datasets import token_base_counts
    from dnalm.training.lightning import MaskedLM, NextTokenLM

    if vocab.masked:
        return MaskedLM(model, optim, total, vocab.tokenizer.alphabet, mask_rate, token_base_counts(vocab.tokenizer),
                        seed=seed, activation_checkpointing=activation_checkpointing, compile=compile)
    return NextTokenLM(model, optim, total, region_classes=region_classes, seed=seed,
                       activation_checkpointing=activation_checkpointing, compile=compile)


def run(cfg: DictConfig, callbacks: Sequence[Any] = (), lora: Any = None) -> TrainResult:
    """The recipe as a function (``callbacks`` are added to the Trainer). ``lora``
    (:class:`dnalm.models.lora.LoraSettings`): train LoRA adapters of the ``init_from`` model only; checkpoints
    then hold the merged weights (``model.safetensors``) and the adapter (``adapter/``)."""
    p = parse(cfg)
    top, tc = p.top, available_trainer(p.trainer)

    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping

    from dnalm.data.datamodule import GenomeDataConfig
    from dnalm.data.datasets import WindowDataset
    from dnalm.data.prepared import PreparedGenome
    from dnalm.models.io import load_pretrained
    from dnalm.training.checkpoint import (
        DirectoryCheckpointIO,
        ResumableGenomeDataModule,
        RunCheckpoints,
        find_resume_checkpoint,
        read_training_state,
        recover_run_dir,
    )
    from dnalm.training.lightning import SeqLenWarmup, truncate_metrics
    from dnalm.training.progress import progress_callbacks
    from dnalm.training.schedules import Stage, accumulation, plan_stages, steps_per_epoch

    run_dir = Path(top.out)
    if _is_rank_zero() and run_dir.is_dir():
        recover_run_dir(run_dir)
    resume = _resume_from(top, run_dir)
    start_fresh = top.resume == "never" and _is_rank_zero() and find_resume_checkpoint(run_dir) is not None
    resumed_step = int(read_training_state(resume).get("global_step", 0)) if resume is not None else 0
    prepared_path = ensure_prepared(p.source, top.data_root)
    prepared = PreparedGenome(prepared_path)
    data = to_dataclass({**p.data, "path": str(prepared_path)}, GenomeDataConfig, where="data")
    stages = [Stage(s.length, s.batch_size, s.epochs, s.steps) for s in top.stages]
    if stages:
        data = GenomeDataConfig(**{**asdict(data), "length": stages[0].length, "batch_size": stages[0].batch_size})
    max_length = max([data.length, data.eval_length or 0] + [s.length for s in stages])
    L.seed_everything(top.seed, workers=True, verbose=False)
    if top.init_from:
        model = load_pretrained(top.init_from).train()
    else:
        model = build_model(p.model, max_length)
    tokenizer_path = p.model.get("tokenizer") if not top.init_from else None
    if tokenizer_path and not Path(tokenizer_path).exists() and train_tokenizer(model) is None:
        from dnalm.recipes.tokenizer_train import train_on_prepared

        vocab_size = int(model.config.vocab_size)
        if _is_rank_zero():
            print(f"train: no tokenizer at {tokenizer_path}: training a {vocab_size}-token BPE on the "
                  f"'{data.train_split}' split of {prepared_path}", flush=True)
            train_on_prepared(prepared, tokenizer_path, vocab_size, split=data.train_split)
    vocab = genome_vocabulary(model, train_tokenizer(model, tokenizer_path, top.init_from))
    if resume is not None:
        check_resumable(model, resume, run_dir)
    if lora is not None:
        from dnalm.models.lora import apply_lora

        apply_lora(model, lora)
    # a model that reads the genome's own ids keeps the prepared genome's tokenizer, as before
    tokenizer = _tokenizer(prepared) if not vocab.masked and vocab.token_map is None else vocab.tokenizer

    dm = ResumableGenomeDataModule(data, prepared, token_map=vocab.token_map,
                                   masked_tokenizer=vocab.tokenizer if vocab.masked else None)
    ckpt = RunCheckpoints(run_dir, top.checkpoint.every_n_steps, top.checkpoint.keep, top.checkpoint.monitor,
                          "min", top.checkpoint.save_best)
    cbs: list[Any] = [ckpt]
    if top.early_stopping.enabled:
        cbs.append(EarlyStopping(monitor=top.checkpoint.monitor, mode="min", patience=top.early_stopping.patience,
                                 min_delta=top.early_stopping.min_delta, check_finite=False,
                                 check_on_train_epoch_end=False))
    io = DirectoryCheckpointIO(model, tokenizer, extra={"run": top.name, "prepared": str(prepared_path.resolve()),
                                                        "length": max_length, "objective": family_of(model).objective},
                               lora=lora, base_model=top.init_from)
    trainer = L.Trainer(
        accelerator=tc.accelerator, devices=tc.devices, num_nodes=tc.num_nodes, strategy=lightning_strategy(tc),
        precision=tc.precision, max_steps=tc.max_steps, max_epochs=tc.max_epochs, max_time=tc.max_time,
        val_check_interval=tc.val_check_interval, check_val_every_n_epoch=tc.check_val_every_n_epoch,
        limit_val_batches=0 if dm.dataset("val") is None else None if tc.limit_val_batches == 1.0 else
        tc.limit_val_batches,
        log_every_n_steps=tc.log_every_n_steps, num_sanity_val_steps=tc.num_sanity_val_steps,
        gradient_clip_val=p.optim.grad_clip,
        deterministic=tc.deterministic, enable_progress_bar=tc.progress_bar, enable_model_summary=False,
        logger=_loggers(top, run_dir) or False,
        callbacks=cbs + list(callbacks) + progress_callbacks(tc.progress_bar, tc.progress_every, "train"), plugins=[io],
        default_root_dir=str(run_dir), use_distributed_sampler=False,
        reload_dataloaders_every_n_epochs=1 if len(stages) > 1 else 0)
    world = trainer.world_size

    if stages:
        def default_samples(length: int) -> int:
            if data.samples_per_epoch:
                return data.samples_per_epoch
            return len(WindowDataset(prepared, data.train_split, length, add_eos=data.add_eos))

        plans = plan_stages(stages, world, top.global_batch_size, default_samples)
        trainer.callbacks.insert(0, SeqLenWarmup(plans))
        n_epochs = plans[-1].end_epoch
        trainer.fit_loop.max_epochs = n_epochs if tc.max_epochs is None else min(n_epochs, tc.max_epochs)
        total = sum(pl.steps for pl in plans if pl.first_epoch < trainer.fit_loop.max_epochs)
    else:
        acc = accumulation(top.global_batch_size, data.batch_size, world) if top.global_batch_size else \
            tc.accumulate_grad_batches
        trainer.accumulate_grad_batches = acc
        if isinstance(tc.val_check_interval, int) and acc > 1:
            # Lightning counts training batches; dnalm's interval is in optimizer steps
            trainer.val_check_interval = tc.val_check_interval * acc
        per_epoch = steps_per_epoch(len(dm.dataset("train")), data.batch_size, world, acc)
        if per_epoch < 1:
            raise ConfigError(f"train: {len(dm.dataset('train'))} training windows give no full batch of "
                              f"data.batch_size={data.batch_size} on each of {world} device(s)")
        if tc.max_epochs is None and tc.max_steps <= 0:
            raise ConfigError("train: set trainer.max_steps or trainer.max_epochs (or stages)")
        total = per_epoch * tc.max_epochs if tc.max_epochs is not None else tc.max_steps
    if tc.max_steps > 0:
        total = min(total, tc.max_steps)
    if total < 1:
        raise ConfigError("train: the run has no optimizer step (check trainer.max_steps, max_epochs, batch sizes)")

    module = pretraining_module(model, vocab, p.optim, total, prepared.region_classes, seed=top.seed,
                                activation_checkpointing=top.activation_checkpointing, compile=top.compile,
                                mask_rate=top.mask_rate)
    if trainer.is_global_zero:
        if start_fresh:
            removed = start_over(run_dir)
            print(f"train: resume=never: starting over in {run_dir} (removed the previous run's "
                  f"{', '.join(removed)})", flush=True)
        make_dir(run_dir)
        with atomic_file(run_dir / "config.yaml") as tmp:
            OmegaConf.save(OmegaConf.create(resolved(cfg) if isinstance(cfg, DictConfig) else cfg), tmp)
        # rows logged after the checkpoint (all of them when a killed run never wrote one) are logged again
        truncate_metrics(run_dir / "metrics.csv", resumed_step)
        if resume is not None:
            print(f"train: resuming from {resume} (step {resumed_step})", flush=True)
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume is not None else None)
    metrics: dict[str, Any] = {"objective": family_of(model).objective,
                               "global_step": trainer.global_step, "epoch": trainer.current_epoch,
                               "total_steps": total, "train_seconds": round(time.perf_counter() - start, 2),
                               "resumed_from": str(resume) if resume else None,
                               "best": {top.checkpoint.monitor: ckpt.best_score, "step": ckpt.best_step},
                               "val": module.last_metrics.get("val")}
    if trainer.interrupted:
        return TrainResult(run_dir, None, trainer.global_step, trainer.current_epoch, total, resume, metrics)
    ckpt.save_last(trainer)
    model_dir = run_dir / "model"
    best_dir = run_dir / "best"
    if ckpt.best_step is not None and best_dir.is_dir():
        # the model to use is the one chosen on validation; the final weights stay in checkpoints/last
        if trainer.is_global_zero:
            with atomic_dir(model_dir) as tmp:
                shutil.copytree(best_dir, tmp, dirs_exist_ok=True)
        trainer.strategy.barrier("model")
        metrics["model"] = f"best (step {ckpt.best_step})"
    else:
        trainer.save_checkpoint(model_dir, weights_only=True, storage_options={"extra": ckpt.best_extra()})
        metrics["model"] = f"final (step {trainer.global_step})"
    if top.test and dm.dataset("test") is not None:
        # a fresh module around the saved model: a sharded (FSDP) module is not reusable after fit
        final = pretraining_module(load_pretrained(model_dir), vocab, p.optim, total, prepared.region_classes,
                                   mask_rate=top.mask_rate)
        trainer.test(final, datamodule=dm, verbose=False)
        metrics["test"] = final.last_metrics.get("test")
    if trainer.is_global_zero:
        with atomic_file(run_dir / "metrics.json") as tmp:
            tmp.write_text(json.dumps(json_safe(metrics), indent=2) + "\n")
    return TrainResult(run_dir, model_dir, trainer.global_step, trainer.current_epoch, total, resume, metrics)


def main(cfg: DictConfig) -> int | None:
    result = run(cfg)
    if not _is_rank_zero():
        return 0
    val = result.metrics.get("val") or {}
    shown = f", val bits/base {val['bits_per_base']:.4f}" if val.get("bits_per_base") is not None else ""
    if val.get("bits_per_base") is None and val.get("acc") is not None:  # a masked LM
        shown = f", val masked-token loss {val['loss']:.4f}, accuracy {val['acc']:.4f}"
    if result.model_dir is None:
        print(f"train: interrupted at step {result.global_step}; resume with resume=auto out={result.run_dir}")
        return 130
    print(f"train: {result.global_step} steps{shown} -> {result.model_dir}/")
    return 0
