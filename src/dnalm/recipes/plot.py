"""``dnalm plot kind=<kind> input=FILE out=FILE.png``: one plot from the outputs of the inference commands.

Inputs are read as the inference commands write them (:mod:`dnalm.inference.io`):

* ``predict``: Parquet with ``id``, ``length``, ``n_scored`` and ``log_likelihood`` (``loglik``) or
  ``log_probs`` (``per_token``); with ``output_type=logits`` a ``key`` column naming arrays of the NPZ
  beside it (``(n_scored, C)`` logits of the vocabulary ids listed in the Parquet metadata ``columns``);
* ``generate``: FASTA of the completions and JSONL with ``prompt`` and ``completion``;
* ``embed``: a directory with ``embeddings.npy`` ``(N, D)`` and ``sequences.parquet`` (``row``, ``id``);
* ``score-variants``: TSV with ``chrom pos id ref alt ... ref_score alt_score delta``;

and, generally, FASTA, CSV/TSV (optionally gzip), Parquet, JSONL, NPY and NPZ. :func:`draw` reads the
input, calls the plot function of :mod:`dnalm.evaluate.plots` and returns the numbers it drew.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from dnalm.config import to_dataclass
from dnalm.errors import ConfigError, InputError

KINDS = ("logo", "gc", "lengths", "heatmap", "entropy", "scatter", "histogram", "violin", "ranked", "tsne",
         "umap", "curves")
SEQUENCE_COLUMNS = ("sequence", "seq", "completion")
SCORE_COLUMNS = ("score", "delta", "log_likelihood", "mean_log_prob")
NAME_COLUMNS = ("id", "name")
LENGTH_COLUMNS = ("length",)
EXPERIMENTAL_COLUMNS = ("experimental", "value", "label", "y")
ACGT = ("A", "C", "G", "T")
CHAR_ACGT_IDS = (7, 8, 9, 10)


@dataclass
class PlotConfig:
    """The options of ``conf/plot.yaml``."""

    kind: str | None = None
    input: str | None = None
    out: str | None = None
    title: str | None = None
    sequence_column: str | None = None
    score_column: str | None = None
    group_column: str | None = None
    name_column: str | None = None
    length_column: str | None = None
    experimental: str | None = None
    experimental_column: str | None = None
    join_column: str = "id"
    labels: str | None = None
    label_column: str = "label"
    key: str | None = None
    index: int = 0
    id: str | None = None
    columns: list[int] | None = None
    input_values: str = "logits"
    values: str = "probability"
    sequence: str | None = None
    start: int = 0
    end: int | None = None
    first_position: int | None = None
    logo_kind: str = "information"
    bins: int = 30
    log_x: bool = False
    k: int = 10
    higher_is_better: bool = True
    order: list[str] = field(default_factory=list)
    perplexity: float = 30.0
    n_neighbors: int = 15
    seed: int = 0
    x: str = "step"
    series: list[str] = field(default_factory=list)
    log_y: bool = False


# ----------------------------------------------------------------------------- readers


def _suffixes(path: Path) -> list[str]:
    return [s.lower() for s in path.suffixes if s.lower() not in (".gz", ".bgz")]


def _is_parquet(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == b"PAR1"


def read_table(path: str | Path) -> Any:
    """A pandas DataFrame of a Parquet, JSONL, CSV or TSV file (gzip allowed for text)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    sfx = _suffixes(path)
    try:
        if _is_parquet(path):
            return pd.read_parquet(path)
        if sfx and sfx[-1] in (".jsonl", ".ndjson"):
            return pd.read_json(path, lines=True)
        sep = "\t" if sfx and sfx[-1] in (".tsv", ".tab", ".txt") else ","
        return pd.read_csv(path, sep=sep, comment=None)
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"{path}: not a readable table ({' '.join(str(exc).split())})") from None


def _column(df: Any, wanted: str | None, candidates: Sequence[str], what: str, where: str | Path) -> str:
    """The column ``wanted``, or the first of ``candidates`` present (case-insensitive)."""
    cols = [str(c) for c in df.columns]
    if wanted is not None:
        if wanted not in cols:
            raise InputError(f"{where}: no column '{wanted}' (columns: {', '.join(cols)})")
        return wanted
    lower = {c.lower(): c for c in cols}
    for c in candidates:
        if c in lower:
            return lower[c]
    raise InputError(f"{where}: no {what} column (looked for {', '.join(candidates)}; columns: {', '.join(cols)}); "
                     f"name it with {what}_column=...")


def read_sequences(path: str | Path, column: str | None = None) -> tuple[list[str], list[str]]:
    """Names and sequences of a FASTA file or of a table's sequence column."""
    from dnalm.inference.io import read_sequences as read_inference_sequences

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if _is_fasta(path):
        seqs = read_inference_sequences(path, uppercase=True)
        return [s.id for s in seqs], [s.seq for s in seqs]
    df = read_table(path)
    col = _column(df, column, SEQUENCE_COLUMNS, "sequence", path)
    name_col = next((c for c in df.columns if str(c).lower() in NAME_COLUMNS), None)
    seqs = [str(s).upper() for s in df[col]]
    names = [str(n) for n in df[name_col]] if name_col is not None else [f"row{i}" for i in range(len(seqs))]
    if not seqs:
        raise InputError(f"{path}: no sequences")
    return names, seqs


@dataclass
class Logits:
    """Logits ``(L, C)`` of one sequence, the A/C/G/T ``columns`` among C (None: C is A, C, G, T), and
    the 1-based genome position of row 0."""

    values: np.ndarray
    columns: list[int] | None
    first_position: int


def _dna_columns(n_cols: int, given: list[int] | None, where: str | Path) -> list[int] | None:
    if given is not None:
        return list(given)
    if n_cols == 4:
        return None
    if n_cols > max(CHAR_ACGT_IDS):
        return list(CHAR_ACGT_IDS)
    raise InputError(f"{where}: logits have {n_cols} columns; give the A, C, G, T columns with columns=[...]")


def read_logits(pc: PlotConfig) -> Logits:
    """The logits of one sequence from predict's Parquet (+ NPZ), an NPZ, an NPY or an A/C/G/T table."""
    path = Path(str(pc.input))
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    sfx = _suffixes(path)
    first = 1
    cols = pc.columns
    if _is_parquet(path):
        import pyarrow.parquet as pq

        meta = json.loads((pq.read_schema(path).metadata or {}).get(b"dnalm", b"{}"))
        df = read_table(path)
        if "npz" in meta and "key" in df.columns:
            row = _pick_row(df, pc, path)
            npz = path.parent / meta["npz"]
            if not npz.is_file():
                raise InputError(f"{path}: its logits file {npz} is missing")
            with np.load(npz, allow_pickle=False) as z:
                values = np.asarray(z[str(df["key"].iloc[row])], dtype=np.float64)
            stored = [int(c) for c in meta.get("columns", [])]
            if cols is None and len(stored) == values.shape[1] and set(CHAR_ACGT_IDS) <= set(stored):
                cols = None if stored == list(CHAR_ACGT_IDS) else [stored.index(c) for c in CHAR_ACGT_IDS]
            first = int(meta.get("first_position", 0)) + 1
            return Logits(values, _dna_columns(values.shape[1], cols, path), first)
        values = _acgt_table(df, path)
    elif sfx and sfx[-1] == ".npz":
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            key = pc.key or (keys[0] if len(keys) == 1 else f"seq{pc.index}")
            if key not in keys:
                raise InputError(f"{path}: no array '{key}' (arrays: {', '.join(keys[:10])})")
            values = np.asarray(z[key], dtype=np.float64)
    elif sfx and sfx[-1] == ".npy":
        values = np.load(path, allow_pickle=False).astype(np.float64)
        if values.ndim == 3:
            if not 0 <= pc.index < values.shape[0]:
                raise ConfigError(f"plot: index={pc.index} out of range for {values.shape[0]} sequences in {path}")
            values = values[pc.index]
    else:
        values = _acgt_table(read_table(path), path)
    if values.ndim != 2:
        raise InputError(f"{path}: expected logits of shape (L, V), got {values.shape}")
    return Logits(values, _dna_columns(values.shape[1], cols, path), first)


def _acgt_table(df: Any, path: Path) -> np.ndarray:
    missing = [b for b in ACGT if b not in df.columns]
    if missing:
        raise InputError(f"{path}: a logits table needs columns A, C, G, T (missing {', '.join(missing)})")
    return df[list(ACGT)].to_numpy(dtype=np.float64)


def _pick_row(df: Any, pc: PlotConfig, path: Path) -> int:
    if pc.id is not None:
        if "id" not in df.columns:
            raise InputError(f"{path}: no 'id' column to select id={pc.id}")
        hits = np.flatnonzero(df["id"].astype(str).to_numpy() == pc.id)
        if not len(hits):
            raise ConfigError(f"plot: no sequence with id '{pc.id}' in {path}")
        return int(hits[0])
    if not 0 <= pc.index < len(df):
        raise ConfigError(f"plot: index={pc.index} out of range for {len(df)} sequences in {path}")
    return pc.index


def read_embeddings(path: str | Path, key: str | None = None) -> tuple[np.ndarray, list[str] | None]:
    """Embeddings ``(N, D)`` and their ids (when known) from embed's directory, an NPY, an NPZ or a table."""
    path = Path(path)
    if path.is_dir():
        emb = path / "embeddings.npy"
        if not emb.is_file():
            per_base = (path / "embed.json").is_file()
            raise InputError(f"{path}: no embeddings.npy" + (" (embedded with pool=none; pool the embeddings "
                                                              "to plot them)" if per_base else ""))
        x = np.load(emb, allow_pickle=False)
        ids = None
        if (path / "sequences.parquet").is_file():
            ids = [str(i) for i in read_table(path / "sequences.parquet")["id"]]
        return np.asarray(x, dtype=np.float64), ids
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    sfx = _suffixes(path)
    if sfx and sfx[-1] == ".npy":
        return np.asarray(np.load(path, allow_pickle=False), dtype=np.float64), None
    if sfx and sfx[-1] == ".npz":
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            k = key or ("embeddings" if "embeddings" in keys else keys[0])
            if k not in keys:
                raise InputError(f"{path}: no array '{k}' (arrays: {', '.join(keys)})")
            return np.asarray(z[k], dtype=np.float64), None
    df = read_table(path)
    numeric = [c for c in df.columns if str(c).lower() not in NAME_COLUMNS and np.issubdtype(df[c].dtype, np.number)]
    if not numeric:
        raise InputError(f"{path}: no numeric columns to use as embeddings")
    name_col = next((c for c in df.columns if str(c).lower() in NAME_COLUMNS), None)
    ids = [str(i) for i in df[name_col]] if name_col is not None else None
    return df[numeric].to_numpy(dtype=np.float64), ids


def read_labels(path: str | Path, column: str, n: int, ids: list[str] | None, join: str) -> np.ndarray:
    """``n`` labels from a table: joined on ``join`` when both sides have ids, else in row order."""
    path = Path(path)
    if _is_fasta(path):
        raise InputError(f"{path}: labels must be a table with a '{column}' column, not FASTA")
    df = read_table(path)
    col = _column(df, column, (), "label", path)
    if ids is not None and join in df.columns:
        lookup = dict(zip(df[join].astype(str), df[col]))
        missing = [i for i in ids if i not in lookup]
        if missing:
            raise InputError(f"{path}: no label for id '{missing[0]}' ({len(missing)} ids without a label)")
        return np.asarray([lookup[i] for i in ids])
    if len(df) != n:
        raise InputError(f"{path}: {len(df)} labels for {n} embeddings (give a '{join}' column to join on)")
    return df[col].to_numpy()


# ----------------------------------------------------------------------------- drawing


def _sliced(seqs: list[str], pc: PlotConfig) -> list[str]:
    if pc.start == 0 and pc.end is None:
        return seqs
    return [s[pc.start:pc.end] for s in seqs]


def _scores(pc: PlotConfig) -> tuple[Any, str, Path]:
    path = Path(str(pc.input))
    sfx = _suffixes(path)
    if sfx and sfx[-1] == ".npy":
        import pandas as pd

        arr = np.load(path, allow_pickle=False)
        return pd.DataFrame({"score": np.asarray(arr, dtype=np.float64).reshape(-1)}), "score", path
    df = read_table(path)
    return df, _column(df, pc.score_column, SCORE_COLUMNS, "score", path), path


def draw(pc: PlotConfig) -> Any:
    """Read ``pc.input``, draw the plot ``pc.kind`` into ``pc.out`` and return what
    :mod:`dnalm.evaluate.plots` returned (the numbers drawn)."""
    from dnalm.evaluate import plots as P

    if pc.kind not in KINDS:
        raise ConfigError(f"plot: kind={pc.kind!r} must be one of {', '.join(KINDS)}")
    if not pc.input:
        raise ConfigError("plot: set input=FILE (the file to plot, e.g. an output of predict/generate/embed)")
    if not pc.out:
        raise ConfigError("plot: set out=FILE.png (ranked also takes FILE.html)")
    if pc.input_values not in ("logits", "log_probs", "probs"):
        raise ConfigError(f"plot: input_values={pc.input_values!r} must be logits, log_probs or probs")
    kw = {"title": pc.title} if pc.title else {}
    out = Path(pc.out)
    if pc.kind == "lengths":
        lengths = _lengths(pc)
        if lengths is not None:
            return P.length_histogram(lengths, out, bins=pc.bins, log_x=pc.log_x, **kw)
    if pc.kind in ("logo", "gc", "lengths"):
        _, seqs = read_sequences(pc.input, pc.sequence_column)
        if pc.kind == "logo":
            first = (pc.first_position or 1) + pc.start
            return P.sequence_logo(_sliced(seqs, pc), out, kind=pc.logo_kind, first_position=first, **kw)
        if pc.kind == "gc":
            return P.gc_content(seqs, out, bins=pc.bins, **kw)
        return P.length_histogram(seqs, out, bins=pc.bins, log_x=pc.log_x, **kw)
    if pc.kind in ("heatmap", "entropy"):
        lg = read_logits(pc)
        z = lg.values[pc.start:pc.end]
        if not len(z):
            raise ConfigError(f"plot: start={pc.start} end={pc.end} select no position of {len(lg.values)}")
        if pc.input_values == "probs":
            with np.errstate(divide="ignore"):
                z = np.log(z)
        first = (pc.first_position if pc.first_position is not None else lg.first_position) + pc.start
        if pc.kind == "entropy":
            return P.entropy_curve(z, out, columns=lg.columns, first_position=first, **kw)
        return P.logit_heatmap(z, out, columns=lg.columns, values=pc.values, sequence=pc.sequence,
                               first_position=first, **kw)
    if pc.kind == "scatter":
        df, score_col, path = _scores(pc)
        if pc.experimental:
            ex = read_table(pc.experimental)
            ex_col = _column(ex, pc.experimental_column, EXPERIMENTAL_COLUMNS, "experimental", pc.experimental)
            for side, frame, where in (("input", df, path), ("experimental", ex, pc.experimental)):
                if pc.join_column not in frame.columns:
                    raise InputError(f"{where}: no column '{pc.join_column}' to join the {side} on "
                                     "(set join_column=...)")
            merged = df[[pc.join_column, score_col]].merge(
                ex[[pc.join_column, ex_col]].rename(columns={ex_col: "__experimental"}), on=pc.join_column,
                how="inner")
            if merged.empty:
                raise InputError(f"{path} and {pc.experimental}: no '{pc.join_column}' in common")
            exp = merged["__experimental"].to_numpy(dtype=np.float64)
            scores = merged[score_col].to_numpy(dtype=np.float64)
        else:
            ex_col = _column(df, pc.experimental_column, EXPERIMENTAL_COLUMNS, "experimental", path)
            exp = df[ex_col].to_numpy(dtype=np.float64)
            scores = df[score_col].to_numpy(dtype=np.float64)
        return P.score_scatter(scores, exp, out, xlabel=ex_col, ylabel=score_col, **kw)
    if pc.kind in ("histogram", "violin"):
        df, score_col, path = _scores(pc)
        groups = None
        if pc.group_column is not None:
            groups = df[_column(df, pc.group_column, (), "group", path)].astype(str).to_numpy()
        elif pc.kind == "violin":
            raise ConfigError("plot: a violin plot needs group_column=... (the column naming each score's group)")
        scores = df[score_col].to_numpy(dtype=np.float64)
        if pc.kind == "histogram":
            return P.score_histogram(scores, out, groups=groups, bins=pc.bins, xlabel=score_col, **kw)
        return P.score_violin(scores, groups, out, order=pc.order or None, ylabel=score_col, **kw)
    if pc.kind == "ranked":
        df, score_col, path = _scores(pc)
        name_col = _column(df, pc.name_column, NAME_COLUMNS, "name", path)
        seq_col = pc.sequence_column or next((c for c in df.columns if str(c).lower() in SEQUENCE_COLUMNS), None)
        seqs = [str(s) for s in df[seq_col]] if seq_col is not None else None
        return P.ranked_table([str(n) for n in df[name_col]], df[score_col].to_numpy(dtype=np.float64), out,
                              k=pc.k, sequences=seqs, higher_is_better=pc.higher_is_better, **kw)
    if pc.kind in ("tsne", "umap"):
        x, ids = read_embeddings(pc.input, pc.key)
        if x.ndim != 2:
            raise InputError(f"{pc.input}: expected embeddings of shape (N, D), got {x.shape}")
        labels = (read_labels(pc.labels, pc.label_column, len(x), ids, pc.join_column) if pc.labels
                  else np.array(["all"] * len(x)))
        name = pc.label_column if pc.labels else "label"
        if pc.kind == "tsne":
            return P.embedding_tsne(x, labels, out, perplexity=pc.perplexity, seed=pc.seed, label_name=name, **kw)
        return P.embedding_umap(x, labels, out, n_neighbors=pc.n_neighbors, seed=pc.seed, label_name=name, **kw)
    return P.learning_curves(pc.input, out, x=pc.x, series=pc.series or None, log_y=pc.log_y, **kw)


def _is_fasta(path: Path) -> bool:
    from dnalm.inference.io import is_fasta

    return path.is_file() and not _is_parquet(path) and is_fasta(path)


def _lengths(pc: PlotConfig) -> np.ndarray | None:
    """A table's numeric length column (``length_column``, or ``length`` when the table holds no sequences);
    None when lengths come from sequences."""
    path = Path(str(pc.input))
    if pc.length_column is None and (pc.sequence_column is not None or not path.is_file() or _is_fasta(path)):
        return None
    df = read_table(path)
    if pc.length_column is None and any(str(c).lower() in SEQUENCE_COLUMNS for c in df.columns):
        return None
    return df[_column(df, pc.length_column, LENGTH_COLUMNS, "length", path)].to_numpy(dtype=np.float64)


def _summary(res: Any) -> str:
    from dnalm.evaluate import plots as P

    if isinstance(res, P.Histogram):
        return f"n = {res.values.size}, mean {res.mean:.4g}, median {res.median:.4g}"
    if isinstance(res, dict):
        return "; ".join(f"{g}: n = {h.values.size}, mean {h.mean:.4g}" for g, h in res.items())
    if isinstance(res, P.Correlation):
        return f"n = {res.n}, Pearson r = {res.pearson_r:.3f}, Spearman rho = {res.spearman_rho:.3f}"
    if isinstance(res, P.LogoMatrix):
        drawn = "" if res.n_drawn in (0, len(res.counts)) else \
            f"; the first {res.n_drawn} drawn (start=/end= pick others)"
        rows = f" in {res.n_rows} rows" if res.n_rows > 1 else ""
        return f"{res.n_sequences} sequences, {len(res.counts)} positions{rows}{drawn}"
    if isinstance(res, P.EntropyCurve):
        return f"{len(res.entropy)} positions, mean entropy {res.mean:.3f} bits"
    if isinstance(res, P.Heatmap):
        return f"{res.matrix.shape[1]} positions"
    if isinstance(res, P.GroupSummary):
        return ", ".join(f"{g}: n = {n}" for g, n in zip(res.groups, res.n))
    if isinstance(res, P.Projection):
        return f"{len(res.labels)} points"
    if isinstance(res, P.Ranking):
        return f"top {len(res.top)}, bottom {len(res.bottom)}"
    if isinstance(res, P.Curves):
        text = "; ".join(f"{panel}: {', '.join(names)}" for panel, names in res.panels.items())
        return text + (f"; {len(res.left_out)} more series not drawn" if res.left_out else "")
    return ""


def main(cfg: DictConfig) -> int:
    pc = to_dataclass(cfg, PlotConfig, where="plot")
    res = draw(pc)
    summary = _summary(res)
    print(f"plot: wrote {pc.out}" + (f" ({summary})" if summary else ""))
    return 0
