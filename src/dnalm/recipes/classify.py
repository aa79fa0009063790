"""``dnalm classify checkpoint=FINETUNED input=FASTA|CSV out=FILE.csv``: class probabilities of new sequences.

The model is a ``dnalm finetune`` output (see :mod:`dnalm.inference.classify`); every input sequence is run
as fine-tuning evaluated its dev and test sets. The table has ``id``, ``length``, then ``predicted`` and
``p_<class>`` (probabilities, summing to 1 per row) for a classifier, or ``prediction`` (``prediction_<k>``
for several outputs) for a regressor, and the input's ``label`` column when it has one.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from dnalm.config import to_dataclass
from dnalm.errors import ConfigError, InputError

STRANDS = ("auto", "forward", "both")


@dataclass
class ClassifyConfig:
    checkpoint: str | None = None
    base: str | None = None
    input: str | None = None
    out: str | None = None
    strand: str = "auto"
    label_column: str = "label"
    uppercase: bool = True
    batch_size: int = 64
    device: str = "auto"


def _labels(path: Path, column: str, n: int) -> list[str] | None:
    """The ``column`` of a CSV/TSV input (None for FASTA or a table without it), one value per sequence."""
    from dnalm.inference.io import is_fasta
    from dnalm.utils import open_text

    if is_fasta(path):
        return None
    delimiter = "\t" if {".tsv", ".txt"} & {s.lower() for s in path.suffixes} else ","
    with open_text(path) as f:
        rows = [r for r in csv.reader(f, delimiter=delimiter) if r and any(c.strip() for c in r)]
    names = [h.strip().lower() for h in rows[0]]
    if column.lower() not in names:
        return None
    k = names.index(column.lower())
    values = [r[k].strip() for r in rows[1:]]
    return values if len(values) == n else None


def _write_table(path: Path, columns: dict[str, list]) -> None:
    from dnalm.inference.io import write_parquet
    from dnalm.utils import atomic_file

    if path.suffix.lower() == ".parquet":
        write_parquet(path, {k: np.asarray(v) if not isinstance(v[0], str) else v for k, v in columns.items()})
        return
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter, lineterminator="\n")
        writer.writerow(list(columns))
        for row in zip(*columns.values(), strict=True):
            writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])


def main(cfg: DictConfig) -> int | None:
    cc = to_dataclass(cfg, ClassifyConfig, where="classify")
    if not cc.checkpoint or not cc.input or not cc.out:
        raise ConfigError("classify: set checkpoint=DIR (a model fine-tuned by dnalm finetune), input=FILE "
                          "(FASTA or CSV) and out=FILE.csv")
    if cc.strand not in STRANDS:
        raise ConfigError(f"classify: strand={cc.strand!r} must be one of {', '.join(STRANDS)}")
    from dnalm.data.datasets import truncate_tokens
    from dnalm.evaluate.metrics import classification_metrics
    from dnalm.inference.api import resolve_device
    from dnalm.inference.classify import classify_rows, context_of, load_sequence_model
    from dnalm.inference.io import read_sequences
    from dnalm.tokenizers import reverse_complement

    seqs = read_sequences(cc.input, uppercase=cc.uppercase)
    loaded = load_sequence_model(cc.checkpoint, cc.base)
    model = loaded.model.to(resolve_device(cc.device))
    both = loaded.both_strands if cc.strand == "auto" else cc.strand == "both"
    context = context_of(model)

    def encode(seq: str, where: str) -> np.ndarray:
        try:
            ids = np.asarray(loaded.tokenizer.encode(seq), dtype=np.int64)
        except InputError as exc:
            raise InputError(f"{where}: {str(exc).removeprefix('sequence: ')}") from None
        ids = truncate_tokens(ids, loaded.max_length, loaded.tokenizer)
        if context is not None and len(ids) > context:
            raise InputError(f"{where}: {len(ids):,} tokens, more than the model's context of {context:,} "
                             "(cut the sequences to the length the model was fine-tuned on)")
        return ids

    rows = [encode(s.seq, s.where) for s in seqs]
    rc_rows = [encode(reverse_complement(s.seq), s.where) for s in seqs] if both else None
    pad = getattr(getattr(loaded.tokenizer, "alphabet", None), "pad", None)
    outputs = classify_rows(model, rows, rc_rows, batch_size=cc.batch_size, progress=True,
                            **({} if pad is None else {"pad_id": pad}))
    columns: dict[str, list] = {"id": [s.id for s in seqs], "length": [len(s.seq) for s in seqs]}
    labels = _labels(Path(cc.input), cc.label_column, len(seqs))
    score = ""
    if model.task == "classification":
        classes = loaded.classes or [str(k) for k in range(model.n_outputs)]
        probs = np.exp(outputs)
        probs /= probs.sum(axis=1, keepdims=True)
        columns["predicted"] = [classes[k] for k in outputs.argmax(1)]
        for k, name in enumerate(classes):
            columns[f"p_{name}"] = [float(p) for p in probs[:, k]]
        if labels is not None:
            columns[cc.label_column] = labels
            known = [i for i, v in enumerate(labels) if v in classes]
            if known:
                y = np.array([classes.index(labels[i]) for i in known])
                m = classification_metrics(y, probs[known], np.arange(len(classes)))
                score = f"; against '{cc.label_column}': accuracy {m['accuracy']:.4f}, MCC {m['mcc']:.4f}"
        what = f"classes {', '.join(classes)}"
    else:
        names = ["prediction"] if model.n_outputs == 1 else [f"prediction_{k}" for k in range(model.n_outputs)]
        for k, name in enumerate(names):
            columns[name] = [float(v) for v in outputs[:, k]]
        if labels is not None:
            columns[cc.label_column] = labels
        what = "regression"
    _write_table(Path(cc.out), columns)
    strands = "both strands" if both else "forward strand"
    print(f"classify: {len(seqs)} sequences ({what}; {strands}){score} -> {cc.out}")
    return 0
