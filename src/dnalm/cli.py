"""``dnalm <command> [hydra overrides]``.

The command table below is the only place that names commands. Each command ``X`` is the
function ``main(cfg)`` of module ``dnalm.recipes.<x>`` and has its primary config at
``conf/<x>.yaml``. A command whose recipe is not present in this build is not listed.
Heavy modules (torch, lightning) are imported inside the recipes, so ``--help`` is fast.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from dnalm.errors import ConfigError, DnalmError

USAGE = "usage: dnalm <command> [--config-dir DIR] [key=value ...]"


@dataclass(frozen=True)
class Command:
    module: str
    help: str


COMMANDS: dict[str, Command] = {
    "demo": Command("dnalm.recipes.demo", "the built-in default: synth -> prepare -> train -> evaluate -> report"),
    "synth": Command("dnalm.recipes.synth", "write a synthetic genome (FASTA + GFF3 + homology TSV)"),
    "prepare": Command("dnalm.recipes.prepare", "turn FASTA + GFF3 genomes into a prepared, split training set"),
    "tokenizer train": Command("dnalm.recipes.tokenizer_train", "learn a BPE tokenizer from a prepared genome"),
    "train": Command("dnalm.recipes.train", "pretrain a language model (next-token or masked, by its family)"),
    "finetune": Command("dnalm.recipes.finetune", "fine-tune a checkpoint (LM, classification, regression; LoRA)"),
    "tune": Command("dnalm.recipes.tune", "hyperparameter search with Optuna"),
    "merge-lora": Command("dnalm.recipes.merge_lora", "merge a LoRA adapter into its base model"),
    "convert": Command("dnalm.recipes.convert", "convert a HyenaDNA checkpoint to dnalm's format"),
    "model info": Command("dnalm.recipes.model_info", "parameters, FLOPs and activation memory of a model"),
    "predict": Command("dnalm.recipes.predict", "log-likelihoods, log-probabilities or logits of sequences"),
    "classify": Command("dnalm.recipes.classify", "class probabilities of sequences under a fine-tuned classifier"),
    "generate": Command("dnalm.recipes.generate", "sample sequences from prompts"),
    "embed": Command("dnalm.recipes.embed", "hidden states of any layer, pooled or per base, at any length"),
    "score-variants": Command("dnalm.recipes.score_variants", "delta log-likelihood of variants (VCF/TSV)"),
    "benchmark": Command("dnalm.recipes.benchmark", "the genome benchmark: per-region bits/base, zero-shot, probes"),
    "plot": Command("dnalm.recipes.plot", "draw a plot from predict/generate/embed/score-variants outputs"),
    "report": Command("dnalm.recipes.report", "write a self-contained HTML report of a results directory"),
    "speed": Command("dnalm.recipes.speed", "training and inference throughput across sequence lengths"),
}


def available() -> dict[str, Command]:
    return {n: c for n, c in COMMANDS.items() if importlib.util.find_spec(c.module) is not None}


def _print_help() -> None:
    cmds = available()
    width = max([len(n) for n in cmds] + [len("config show")]) + 2
    print(USAGE)
    print("\ncommands:")
    for name, cmd in cmds.items():
        print(f"  {name:<{width}}{cmd.help}")
    print(f"  {'config show':<{width}}print the fully composed config of a command: config show <command> [k=v ...]")
    print(f"  {'cp config':<{width}}copy a shipped config for local editing: cp config <name> <dest>")
    print("\n'dnalm <command> --help' lists a command's config groups and their options.")


def _command_help(name: str) -> None:
    from dnalm.config import CONF_DIR, config_name, groups_of, list_options

    print(f"usage: dnalm {name} [--config-dir DIR] [key=value ...]\n\n{COMMANDS[name].help}\n")
    header, keys = _config_text(CONF_DIR / f"{config_name(name)}.yaml")
    if header:
        print("\n".join(header) + "\n")
    groups = groups_of(name)
    if groups:
        print("config groups (choose with group=option):")
        for group, default in groups:
            opts = list_options(group)
            print(f"  {group} (default: {default}): {', '.join(opts) if opts else '-'}")
        print()
    if keys:
        print("keys (key=value; default, then meaning):")
        print("\n".join(f"  {line}" for line in keys))
    print(f"\nsee the fully composed config with: dnalm config show {name} [key=value ...]")


def _config_text(path: Path) -> tuple[list[str], list[str]]:
    """A shipped config's leading comment block and its lines after the defaults list, as written."""
    if not path.is_file():
        return [], []
    lines = path.read_text().splitlines()
    header = []
    while lines and lines[0].startswith("#"):
        header.append(lines.pop(0)[1:].removeprefix(" "))
    keys, in_defaults = [], False
    for line in lines:
        if line.startswith("defaults:"):
            in_defaults = True
            continue
        if in_defaults and (line.startswith((" ", "-")) or not line.strip()):
            continue
        in_defaults = False
        if line.strip():
            keys.append(line)
    return header, keys


def _split_command(args: list[str]) -> tuple[str, list[str]]:
    if len(args) >= 2 and f"{args[0]} {args[1]}" in COMMANDS:
        return f"{args[0]} {args[1]}", args[2:]
    if args[0] in COMMANDS:
        return args[0], args[1:]
    known = ", ".join(list(available()) + ["config show", "cp config"])
    raise ConfigError(f"unknown command '{' '.join(args[:1])}' (commands: {known})")


def _pop_config_dir(args: list[str]) -> tuple[str | None, list[str]]:
    out, config_dir, i = [], None, 0
    while i < len(args):
        a = args[i]
        if a == "--config-dir":
            if i + 1 >= len(args):
                raise ConfigError("--config-dir needs a directory")
            config_dir, i = args[i + 1], i + 2
            continue
        if a.startswith("--config-dir="):
            config_dir = a.split("=", 1)[1]
        elif a.startswith("-"):
            raise ConfigError(f"unknown option '{a}' (options are key=value overrides; see --help)")
        else:
            out.append(a)
        i += 1
    return config_dir, out


def _config_show(args: list[str]) -> None:
    from omegaconf import OmegaConf

    from dnalm.config import compose

    if not args:
        raise ConfigError("usage: dnalm config show <command> [key=value ...]")
    name, rest = _split_command(args)
    config_dir, overrides = _pop_config_dir(rest)
    print(OmegaConf.to_yaml(compose(name, overrides, config_dir), resolve=True), end="")


def _cp_config(args: list[str]) -> None:
    from dnalm.config import CONF_DIR

    if len(args) != 2:
        raise ConfigError("usage: dnalm cp config <name> <dest>  (e.g. cp config experiment/yeast/hyena_tiny my.yaml)")
    name, dest = args
    src = CONF_DIR / (name.removesuffix(".yaml").replace("-", "_") + ".yaml")
    if not src.is_file():
        src = CONF_DIR / (name.removesuffix(".yaml") + ".yaml")
    if not src.is_file():
        raise ConfigError(f"no shipped config named '{name}' (try e.g. 'train' or 'experiment/synthetic/hyena_demo')")
    target = Path(dest)
    if target.is_dir():
        target = target / src.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, target)
    print(f"copied {src.relative_to(CONF_DIR)} -> {target}")


def run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        _print_help()
        return 0
    if argv[0] == "--version":
        from dnalm import __version__

        print(f"dnalm {__version__}")
        return 0
    if argv[:2] == ["config", "show"]:
        _config_show(argv[2:])
        return 0
    if argv[:2] == ["cp", "config"]:
        _cp_config(argv[2:])
        return 0
    name, rest = _split_command(argv)
    if name not in available():
        raise ConfigError(f"command '{name}' is not available in this build of dnalm")
    if any(a in ("-h", "--help") for a in rest):
        _command_help(name)
        return 0
    config_dir, overrides = _pop_config_dir(rest)
    if name == "plot" and overrides and "=" not in overrides[0]:
        overrides[0] = f"kind={overrides[0]}"  # dnalm plot logo input=... reads naturally
    from dnalm.config import compose

    cfg = compose(name, overrides, config_dir)
    module = importlib.import_module(COMMANDS[name].module)
    result = module.main(cfg)
    return int(result or 0)


# Third-party notices that users cannot act on: Lightning's own use of torch's pytree API, its
# advertising tips, and its note that an epoch-based validation interval validates once per epoch.
QUIET_WARNINGS = (r".*isinstance\(treespec, LeafSpec\).*",)
QUIET_LOG_LINES = ("Tip:", "was configured so validation will run at the end of the training epoch")


class _Quiet(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not any(part in text for part in QUIET_LOG_LINES)


def _quiet_third_parties() -> None:
    import warnings

    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _Quiet) for f in logger.filters):
        logger.addFilter(_Quiet())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _quiet_third_parties()
    try:
        code = run(argv)
    except DnalmError as exc:
        print(f"dnalm: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print("dnalm: interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:  # output piped into a reader that stopped early (dnalm train --help | head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)


if __name__ == "__main__":
    main()
