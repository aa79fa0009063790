"""Evaluation plots: each function takes plain arrays and an output path, writes one PNG and returns
the numbers it drew, so that callers and tests can check them.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas (no pyplot, no
global backend switch, no display needed) and written atomically with :func:`dnalm.utils.atomic_file`.

Conventions:
  * ``N`` sequences or points, ``L`` positions, ``V`` vocabulary size, ``D`` embedding width.
  * Logits over a vocabulary larger than the DNA alphabet are reduced to the A/C/G/T columns given
    by ``columns`` (for :class:`dnalm.tokenizers.CharTokenizer` ids these are ``(7, 8, 9, 10)``)
    and re-normalised over those columns.
  * Information content follows Schneider & Stephens, "Sequence logos: a new way to display
    consensus sequences", Nucleic Acids Res. 18 (1990): ``R_l = log2 4 - H_l`` bits at position ``l``
    with ``H_l = -sum_b p_lb log2 p_lb``, and each letter is drawn with height ``p_lb * R_l``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dnalm.errors import ConfigError, InputError
from dnalm.utils import atomic_file

DPI = 110
DNA = "ACGT"
CHAR_TOKENIZER_ACGT = (7, 8, 9, 10)
_MAX_CATEGORIES = 20
LOGO_ROW = 50  # positions per row of a sequence logo
LOGO_MAX = 500  # positions drawn at most (ten rows)
UMAP_MISSING = ("plot: kind=umap needs umap-learn, an optional extra that is not installed: pip install "
                "'dnalm[umap]' (or pip install umap-learn); kind=tsne needs nothing more")


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class LogoMatrix:
    """Letter counts and the matrix drawn by :func:`sequence_logo`.

    ``counts``: (L, 4) DataFrame, columns A C G T, index positions 0..L-1.
    ``matrix``: (L, 4) probabilities or bits (``kind``).
    """

    counts: pd.DataFrame
    matrix: pd.DataFrame
    kind: str
    n_sequences: int
    n_drawn: int = 0  # positions drawn (the first ones)
    n_rows: int = 1  # rows the drawn positions wrap into


@dataclass(frozen=True)
class Histogram:
    """``values`` (N,) the finite values drawn, ``bin_edges`` (B + 1,), ``counts`` (B,)."""

    values: np.ndarray
    bin_edges: np.ndarray
    counts: np.ndarray
    mean: float
    median: float
    n_skipped: int = 0


@dataclass(frozen=True)
class Heatmap:
    """``matrix`` (4, L): rows A C G T, in the units named by ``values``."""

    matrix: np.ndarray
    values: str


@dataclass(frozen=True)
class EntropyCurve:
    """``entropy`` (L,) in bits; ``max_bits`` = log2 of the alphabet size."""

    entropy: np.ndarray
    max_bits: float
    mean: float


@dataclass(frozen=True)
class Correlation:
    """Pearson and Spearman correlation of model scores with experimental values over ``n`` pairs."""

    n: int
    pearson_r: float
    pearson_p: float
    spearman_rho: float
    spearman_p: float


@dataclass(frozen=True)
class GroupSummary:
    """Per group (in ``groups`` order): size, median and quartiles of the finite scores."""

    groups: tuple[str, ...]
    n: tuple[int, ...]
    median: np.ndarray
    q1: np.ndarray
    q3: np.ndarray


@dataclass(frozen=True)
class Ranking:
    """The ``k`` best and ``k`` worst rows; columns rank, name, score (and sequence when given)."""

    top: pd.DataFrame
    bottom: pd.DataFrame


@dataclass(frozen=True)
class Projection:
    """``coords`` (N, 2) of a 2-D embedding projection; ``None`` with a ``note`` when it was skipped."""

    coords: np.ndarray | None
    labels: np.ndarray
    method: str
    note: str | None = None


@dataclass(frozen=True)
class Curves:
    """``series`` name -> (x (n,), y (n,)) with missing values removed; ``panels``: panel title -> the series
    drawn in it; ``left_out``: series read but not drawn (beyond a panel's limit)."""

    series: dict[str, tuple[np.ndarray, np.ndarray]]
    x: str
    panels: dict[str, list[str]] = field(default_factory=dict)
    left_out: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Bars:
    """``values`` (M, R): one row per model, one column per region class (NaN where absent)."""

    models: tuple[str, ...]
    regions: tuple[str, ...]
    values: np.ndarray


# ----------------------------------------------------------------------------- helpers


def _figure(width: float, height: float, layout: str | None = "tight") -> Figure:
    """A figure of ``width`` x ``height`` inches drawn by the Agg canvas."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out: str | Path) -> Path:
    out = Path(out)
    with atomic_file(out) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return out


def _vector(x: Any, name: str) -> np.ndarray:
    """A 1-D float64 array (N,) or an InputError naming ``name``."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: expected numbers ({exc})") from None
    if arr.ndim != 1:
        raise InputError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    return arr


def _labels(labels: Any, n: int, name: str = "labels") -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or len(arr) != n:
        raise InputError(f"{name}: expected {n} values, got shape {arr.shape}")
    return arr


def _dna_logits(logits: Any, columns: Sequence[int] | None, name: str = "logits") -> np.ndarray:
    """Select the A/C/G/T columns: (L, V) -> (L, 4) float64 (or (L, V) when ``columns`` is None)."""
    arr = np.asarray(logits, dtype=np.float64)
    if arr.ndim != 2:
        raise InputError(f"{name}: expected an (L, V) array, got shape {arr.shape}")
    if columns is None:
        return arr
    cols = list(columns)
    if len(cols) != len(DNA):
        raise ConfigError(f"columns: expected the {len(DNA)} column indices of A, C, G, T, got {cols}")
    if max(cols) >= arr.shape[1] or min(cols) < -arr.shape[1]:
        raise InputError(f"{name}: columns {cols} out of range for vocabulary size {arr.shape[1]}")
    return arr[:, cols]


def _log_softmax(z: np.ndarray) -> np.ndarray:
    """Natural-log softmax over the last axis: (..., K) -> (..., K)."""
    from scipy.special import log_softmax

    return log_softmax(z, axis=-1)


def _is_categorical(labels: np.ndarray) -> bool:
    """Strings and booleans are categories; so are numbers with few distinct integer values."""
    if labels.dtype.kind in "OUSb":
        return True
    if labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
        return False
    return len(np.unique(labels)) <= _MAX_CATEGORIES


def _scatter_by_label(fig: Figure, ax: Any, coords: np.ndarray, labels: np.ndarray, label_name: str) -> None:
    """Colour points (N, 2) by categorical labels (legend) or numeric labels (colour bar)."""
    if _is_categorical(labels):
        cats = sorted(set(labels.tolist()), key=str)
        cmap = colormaps["tab10" if len(cats) <= 10 else "tab20"]
        for i, cat in enumerate(cats):
            sel = labels == cat
            ax.scatter(coords[sel, 0], coords[sel, 1], s=14, alpha=0.8, color=cmap(i % cmap.N),
                       label=str(cat), edgecolors="none")
        if len(cats) <= _MAX_CATEGORIES:
            ax.legend(title=label_name, fontsize=8, markerscale=1.5, loc="best", frameon=False)
    else:
        sc = ax.scatter(coords[:, 0], coords[:, 1], s=14, alpha=0.8, c=labels.astype(float), cmap="viridis",
                        edgecolors="none")
        fig.colorbar(sc, ax=ax, label=label_name)


def _fmt_p(p: float) -> str:
    return "nan" if not np.isfinite(p) else f"{p:.2g}"


# ----------------------------------------------------------------------------- sequences


def sequence_logo(sequences: Sequence[str], out: str | Path, kind: Literal["information", "probability"] =
                  "information", pseudocount: float = 0.0, title: str | None = None,
                  first_position: int = 1, row_length: int = LOGO_ROW, max_positions: int = LOGO_MAX) -> LogoMatrix:
    """Sequence logo of ``N`` equal-length sequences (Schneider & Stephens 1990).

    Letters other than A/C/G/T (N, IUPAC codes, gaps) are not counted; lower case counts as upper case.
    ``kind="probability"`` draws p_lb = (c_lb + pseudocount) / sum_b (c_lb + pseudocount); ``"information"``
    draws p_lb * (2 - H_l) bits. A position with no A/C/G/T at all is drawn empty. Letters stay legible at
    any length: a logo longer than ``row_length`` positions wraps into rows of that many, and at most
    ``max_positions`` are drawn (the first ones; the title says so; choose others with ``start``/``end`` of
    ``dnalm plot``). The returned counts cover every position.
    """
    import logomaker

    if kind not in ("information", "probability"):
        raise ConfigError(f"logo kind must be 'information' or 'probability', got '{kind}'")
    seqs = [str(s).upper() for s in sequences]
    if not seqs:
        raise InputError("sequence logo: no sequences")
    length = len(seqs[0])
    for i, s in enumerate(seqs):
        if len(s) != length:
            raise InputError(f"sequence logo: sequence {i} has length {len(s)}, sequence 0 has {length} "
                             "(a logo needs equal-length sequences)")
    if length == 0:
        raise InputError("sequence logo: sequences are empty")
    ignore = "".join(sorted(set("".join(seqs)) - set(DNA))) or "."
    counts = logomaker.alignment_to_matrix(seqs, to_type="counts", characters_to_ignore=ignore)
    counts = counts.reindex(columns=list(DNA), fill_value=0).astype(float)
    counts.index = pd.RangeIndex(length, name="pos")
    matrix = pd.DataFrame(0.0, index=counts.index, columns=counts.columns)
    seen = (counts.sum(axis=1) > 0).to_numpy()
    if seen.any():
        matrix.loc[seen] = logomaker.transform_matrix(counts.loc[seen], from_type="counts", to_type=kind,
                                                      pseudocount=pseudocount).to_numpy()
    n_shown = min(length, max_positions)
    n_rows = -(-n_shown // row_length)
    per_row = min(n_shown, row_length)
    fig = _figure(min(max(0.3 * per_row + 1.5, 6.0), 24.0), 0.6 + 2.2 * n_rows)
    for r in range(n_rows):
        ax = fig.add_subplot(n_rows, 1, r + 1)
        piece = matrix.iloc[r * row_length: min((r + 1) * row_length, n_shown)].copy()
        piece.index = piece.index + first_position
        logomaker.Logo(piece, ax=ax, color_scheme="classic")
        ax.set_xlim(piece.index[0] - 0.5, piece.index[0] + per_row - 0.5)  # rows share one scale
        ax.set_ylabel("bits" if kind == "information" else "probability")
        ax.set_ylim(0, 2 if kind == "information" else 1)
        if r == n_rows - 1:
            ax.set_xlabel("position")
    heading = title or f"sequence logo ({len(seqs)} sequences)"
    if n_shown < length:
        heading += f"; positions {first_position}-{first_position + n_shown - 1} of {length} drawn"
    fig.suptitle(heading)
    _save(fig, out)
    return LogoMatrix(counts=counts, matrix=matrix, kind=kind, n_sequences=len(seqs), n_drawn=n_shown,
                      n_rows=n_rows)


def gc_fraction(sequence: str) -> float:
    """(G + C) / (A + C + G + T), case-insensitive; NaN when the sequence has no A/C/G/T."""
    s = sequence.upper()
    gc = s.count("G") + s.count("C")
    acgt = gc + s.count("A") + s.count("T")
    return gc / acgt if acgt else math.nan


def _histogram(values: np.ndarray, out: str | Path, bins: int | Sequence[float], xlabel: str, title: str,
               n_skipped: int = 0, log_x: bool = False) -> Histogram:
    if values.size == 0:
        raise InputError(f"{title}: no values to plot")
    edges: int | Sequence[float] | np.ndarray = bins
    if log_x and isinstance(bins, int):
        lo, hi = float(values.min()), float(values.max())
        if lo <= 0:
            raise InputError(f"{title}: a logarithmic axis needs positive values")
        edges = np.geomspace(lo, max(hi, lo * 1.01), bins + 1)
    counts, edges = np.histogram(values, bins=edges)
    fig = _figure(6.4, 4.0)
    ax = fig.add_subplot()
    ax.hist(values, bins=edges, color="#4477aa", edgecolor="white", linewidth=0.5)
    mean, median = float(values.mean()), float(np.median(values))
    ax.axvline(mean, color="#cc3311", linestyle="--", linewidth=1, label=f"mean {mean:.3g}")
    ax.axvline(median, color="#222222", linestyle=":", linewidth=1, label=f"median {median:.3g}")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(f"{title} (n = {values.size})")
    ax.legend(frameon=False, fontsize=8)
    _save(fig, out)
    return Histogram(values=values, bin_edges=edges, counts=counts, mean=mean, median=median,
                     n_skipped=n_skipped)


def gc_content(sequences: Sequence[str], out: str | Path, bins: int = 30,
               title: str = "GC content") -> Histogram:
    """Histogram of the GC fraction of each sequence (:func:`gc_fraction`).

    ``values`` (N',) holds the fractions of the sequences that contain A/C/G/T, in input order;
    ``n_skipped`` counts the others.
    """
    frac = np.array([gc_fraction(str(s)) for s in sequences], dtype=np.float64)
    keep = np.isfinite(frac)
    return _histogram(frac[keep], out, np.linspace(0.0, 1.0, bins + 1), "GC fraction", title,
                      n_skipped=int((~keep).sum()))


def length_histogram(sequences_or_lengths: Sequence[str] | Sequence[int] | np.ndarray, out: str | Path,
                     bins: int = 30, log_x: bool = False, title: str = "sequence length") -> Histogram:
    """Histogram of sequence lengths; accepts the sequences themselves or their lengths (N,)."""
    items = list(sequences_or_lengths)
    if items and isinstance(items[0], str):
        lengths = np.array([len(s) for s in items], dtype=np.float64)
    else:
        lengths = _vector(items, "lengths")
    return _histogram(lengths, out, bins, "length (bases)", title, log_x=log_x)


# ----------------------------------------------------------------------------- per-position model outputs


def logit_heatmap(logits: Any, out: str | Path, columns: Sequence[int] | None = None,
                  values: Literal["logits", "probability", "log2_probability"] = "probability",
                  sequence: str | None = None, first_position: int = 1, title: str | None = None) -> Heatmap:
    """Heatmap of A/C/G/T x position from ``logits`` (L, 4), or (L, V) with the A/C/G/T ``columns``.

    ``values="probability"`` shows softmax over the four bases, ``"log2_probability"`` its log2, and
    ``"logits"`` the raw logits. When ``sequence`` (length L) is given, the observed base at each position
    is marked. Returns ``matrix`` (4, L).
    """
    if values not in ("logits", "probability", "log2_probability"):
        raise ConfigError(f"heatmap values must be logits, probability or log2_probability, got '{values}'")
    z = _dna_logits(logits, columns)
    if z.shape[1] != len(DNA):
        raise InputError(f"logits: expected 4 columns (A, C, G, T) or columns=..., got {z.shape[1]}")
    length = z.shape[0]
    if values == "logits":
        m = z
    elif values == "probability":
        m = np.exp(_log_softmax(z))
    else:
        m = _log_softmax(z) / math.log(2.0)
    matrix = m.T.copy()
    fig = _figure(min(max(0.12 * length + 2.5, 6.4), 24.0), 2.8)
    ax = fig.add_subplot()
    cmap = "magma" if values != "logits" else "RdBu_r"
    kw: dict[str, Any] = {"vmin": 0.0, "vmax": 1.0} if values == "probability" else {}
    if values == "logits":
        lim = float(np.abs(matrix).max()) or 1.0
        kw = {"vmin": -lim, "vmax": lim}
    im = ax.imshow(matrix, aspect="auto", interpolation="nearest", cmap=cmap,
                   extent=(first_position - 0.5, first_position + length - 0.5, 3.5, -0.5), **kw)
    ax.set_yticks(range(4), list(DNA))
    if sequence is not None:
        seq = sequence.upper()
        if len(seq) != length:
            raise InputError(f"sequence has length {len(seq)} but logits have {length} positions")
        pos = [i for i, b in enumerate(seq) if b in DNA]
        ax.scatter([first_position + i for i in pos], [DNA.index(seq[i]) for i in pos], marker="o", s=10,
                   facecolors="none", edgecolors="#00cc66", linewidths=0.8, label="observed base")
        ax.legend(loc="upper right", fontsize=7, frameon=False, bbox_to_anchor=(1.0, 1.25))
    ax.set_xlabel("position")
    ax.set_ylabel("base")
    unit = {"logits": "logit", "probability": "p", "log2_probability": "log2 p"}[values]
    fig.colorbar(im, ax=ax, label=unit, fraction=0.05, pad=0.01)
    ax.set_title(title or f"per-position {values.replace('_', ' ')}")
    _save(fig, out)
    return Heatmap(matrix=matrix, values=values)


def entropy_curve(logits: Any, out: str | Path, columns: Sequence[int] | None = None, first_position: int = 1,
                  title: str | None = None) -> EntropyCurve:
    """Per-position predictive entropy H_l = -sum_b p_lb log2 p_lb with p_l = softmax(logits_l).

    ``logits`` (L, V); with ``columns`` the softmax runs over those columns only (the DNA alphabet).
    Returns ``entropy`` (L,) in bits, at most log2 of the number of columns.
    """
    z = _dna_logits(logits, columns)
    logp = _log_softmax(z)
    p = np.exp(logp)
    h = -(p * logp).sum(axis=1) / math.log(2.0)
    h = np.maximum(h, 0.0)
    max_bits = math.log2(z.shape[1])
    x = np.arange(first_position, first_position + len(h))
    fig = _figure(min(max(0.05 * len(h) + 4.0, 6.4), 16.0), 3.6)
    ax = fig.add_subplot()
    ax.plot(x, h, color="#4477aa", linewidth=1.0, label="entropy")
    ax.axhline(max_bits, color="#999999", linestyle="--", linewidth=0.8, label=f"maximum {max_bits:.3g} bits")
    ax.set_ylim(0, max_bits * 1.05)
    ax.set_xlabel("position")
    ax.set_ylabel("entropy (bits)")
    ax.set_title(title or f"per-position entropy (mean {h.mean():.3f} bits)")
    ax.legend(frameon=False, fontsize=8, loc="lower right")
    _save(fig, out)
    return EntropyCurve(entropy=h, max_bits=max_bits, mean=float(h.mean()))


# ----------------------------------------------------------------------------- scores


def score_scatter(scores: Any, experimental: Any, out: str | Path, xlabel: str = "experimental value",
                  ylabel: str = "model score", title: str | None = None) -> Correlation:
    """Model score (N,) against experimental value (N,) with Pearson r and Spearman rho and p-values.

    Pairs where either value is not finite are left out; at least 3 pairs are needed.
    """
    from scipy import stats

    s, e = _vector(scores, "scores"), _vector(experimental, "experimental values")
    if len(s) != len(e):
        raise InputError(f"scores ({len(s)}) and experimental values ({len(e)}) differ in length")
    keep = np.isfinite(s) & np.isfinite(e)
    s, e = s[keep], e[keep]
    if len(s) < 3:
        raise InputError(f"score vs experimental value: need at least 3 finite pairs, got {len(s)}")
    if np.ptp(s) == 0 or np.ptp(e) == 0:
        r = pr = rho = prho = math.nan
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r, pr = stats.pearsonr(e, s)
            rho, prho = stats.spearmanr(e, s)
    res = Correlation(n=len(s), pearson_r=float(r), pearson_p=float(pr), spearman_rho=float(rho),
                      spearman_p=float(prho))
    fig = _figure(5.6, 5.0)
    ax = fig.add_subplot()
    ax.scatter(e, s, s=12, alpha=0.6, color="#4477aa", edgecolors="none")
    if np.ptp(e) > 0:
        slope, intercept = np.polyfit(e, s, 1)
        xs = np.array([e.min(), e.max()])
        ax.plot(xs, slope * xs + intercept, color="#cc3311", linewidth=1.0, label="least squares")
        ax.legend(frameon=False, fontsize=8, loc="lower right")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    head = f"{title}\n" if title else ""
    ax.set_title(f"{head}Pearson r = {res.pearson_r:.3f} (p = {_fmt_p(res.pearson_p)}), "
                 f"Spearman \u03c1 = {res.spearman_rho:.3f} (p = {_fmt_p(res.spearman_p)}), n = {res.n}",
                 fontsize=9)
    _save(fig, out)
    return res


def _groups(scores: Any, groups: Any | None,
            order: Sequence[str] | None) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """Finite scores (N',) and (group name, its scores) pairs, empty groups left out."""
    s = _vector(scores, "scores")
    if groups is None:
        g = np.array(["all"] * len(s), dtype=object)
    else:
        g = _labels(groups, len(s), "groups").astype(str)
    keep = np.isfinite(s)
    s, g = s[keep], g[keep]
    names = list(order) if order is not None else sorted(set(g.tolist()))
    out = [(name, s[g == name]) for name in names]
    out = [(name, v) for name, v in out if v.size]
    if not out:
        raise InputError("scores: no finite values to plot")
    return s, out


def score_histogram(scores: Any, out: str | Path, groups: Any | None = None, bins: int = 40,
                    xlabel: str = "score", title: str = "score distribution") -> dict[str, Histogram]:
    """Histogram of scores (N,), overlaid per group when ``groups`` (N,) is given, on shared bins.

    Returns group name -> :class:`Histogram` (the single key ``"all"`` without groups).
    """
    s, parts = _groups(scores, groups, None)
    edges = np.histogram_bin_edges(s, bins=bins)
    fig = _figure(6.4, 4.0)
    ax = fig.add_subplot()
    result = {}
    for name, v in parts:
        counts, _ = np.histogram(v, bins=edges)
        ax.hist(v, bins=edges, histtype="stepfilled" if len(parts) == 1 else "step", linewidth=1.2,
                alpha=0.9, label=f"{name} (n = {v.size})")
        result[name] = Histogram(values=v, bin_edges=edges, counts=counts, mean=float(v.mean()),
                                 median=float(np.median(v)))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=8)
    _save(fig, out)
    return result


def score_violin(scores: Any, groups: Any, out: str | Path, order: Sequence[str] | None = None,
                 ylabel: str = "score", title: str = "scores by group") -> GroupSummary:
    """Violin plot of scores (N,) per group (N,), with medians and quartiles marked.

    Groups appear in ``order`` or sorted by name; groups with no finite score are left out.
    """
    _, parts = _groups(scores, groups, order)
    names = [n for n, _ in parts]
    med = np.array([np.median(v) for _, v in parts])
    q1 = np.array([np.percentile(v, 25) for _, v in parts])
    q3 = np.array([np.percentile(v, 75) for _, v in parts])
    fig = _figure(max(4.0, 1.1 * len(parts) + 2.0), 4.4)
    ax = fig.add_subplot()
    pos = np.arange(1, len(parts) + 1)
    spread = [i for i, (_, v) in enumerate(parts) if np.ptp(v) > 0]
    if spread:
        bodies = ax.violinplot([parts[i][1] for i in spread], positions=pos[spread], showextrema=False,
                               widths=0.8)
        for b in bodies["bodies"]:
            b.set_facecolor("#88ccee")
            b.set_edgecolor("#4477aa")
            b.set_alpha(0.8)
    ax.vlines(pos, q1, q3, color="#222222", linewidth=4)
    ax.scatter(pos, med, color="white", edgecolors="#222222", zorder=3, s=24, label="median")
    ax.set_xticks(pos, [f"{n}\n(n = {v.size})" for n, v in parts], fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    _save(fig, out)
    return GroupSummary(groups=tuple(names), n=tuple(int(v.size) for _, v in parts), median=med, q1=q1, q3=q3)


def _short(s: str, width: int) -> str:
    return s if len(s) <= width else s[: width - 1] + "\u2026"


def ranked_table(names: Sequence[str], scores: Any, out: str | Path, k: int = 10,
                 sequences: Sequence[str] | None = None, higher_is_better: bool = True, max_chars: int = 40,
                 title: str = "ranked sequences") -> Ranking:
    """The ``k`` best and ``k`` worst of N named items by score, as a PNG table or an HTML table.

    The format follows the suffix of ``out`` (``.png`` or ``.html``). Ranks count from 1 = best;
    ties keep input order; items with a non-finite score are left out. When N <= 2k every item is
    listed in ``top`` and ``bottom`` is empty.
    """
    s = _vector(scores, "scores")
    names_arr = _labels(list(map(str, names)), len(s), "names")
    seqs = None if sequences is None else _labels(list(map(str, sequences)), len(s), "sequences")
    if k < 1:
        raise ConfigError(f"ranked table: k must be >= 1, got {k}")
    suffix = Path(out).suffix.lower()
    if suffix not in (".png", ".html"):
        raise ConfigError(f"ranked table: output must end in .png or .html, got '{out}'")
    idx = np.flatnonzero(np.isfinite(s))
    key = -s[idx] if higher_is_better else s[idx]
    idx = idx[np.argsort(key, kind="stable")]
    table = pd.DataFrame({"rank": np.arange(1, len(idx) + 1), "name": names_arr[idx], "score": s[idx]})
    if seqs is not None:
        table["sequence"] = seqs[idx]
    if len(table) <= 2 * k:
        top, bottom = table.reset_index(drop=True), table.iloc[0:0].reset_index(drop=True)
    else:
        top, bottom = table.iloc[:k].reset_index(drop=True), table.iloc[-k:].reset_index(drop=True)
    if suffix == ".html":
        _ranked_html(top, bottom, out, title, max_chars)
    else:
        _ranked_png(top, bottom, out, title, max_chars)
    return Ranking(top=top, bottom=bottom)


def _display(df: pd.DataFrame, max_chars: int) -> pd.DataFrame:
    shown = df.copy()
    shown["score"] = [f"{v:.4g}" for v in shown["score"]]
    shown["name"] = [_short(v, max_chars) for v in shown["name"]]
    if "sequence" in shown:
        shown["sequence"] = [_short(v, max_chars) for v in shown["sequence"]]
    return shown


def _ranked_html(top: pd.DataFrame, bottom: pd.DataFrame, out: str | Path, title: str,
                 max_chars: int) -> None:
    from html import escape

    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;margin-bottom:1em}"
             "td,th{border:1px solid #ccc;padding:2px 8px}td{font-family:monospace}</style></head><body>",
             f"<h2>{escape(title)}</h2>"]
    for caption, df in (("best", top), ("worst", bottom)):
        if len(df):
            parts.append(f"<h3>{caption}</h3>")
            parts.append(_display(df, max_chars).to_html(index=False, escape=True, border=0))
    parts.append("</body></html>\n")
    with atomic_file(out) as tmp:
        tmp.write_text("".join(parts), encoding="utf-8")


def _ranked_png(top: pd.DataFrame, bottom: pd.DataFrame, out: str | Path, title: str, max_chars: int) -> None:
    """One table: the best rows, a row of ellipses, the worst rows."""
    shown = _display(top, max_chars).astype(str)
    if len(bottom):
        gap = pd.DataFrame([["\u2026"] * shown.shape[1]], columns=shown.columns)
        shown = pd.concat([shown, gap, _display(bottom, max_chars).astype(str)], ignore_index=True)
    height = 0.24 * (len(shown) + 1) + 0.5
    fig = _figure(7.5 if "sequence" in shown else 4.5, height, layout=None)
    ax = fig.add_axes((0.02, 0.02, 0.96, 1 - 0.45 / height))
    ax.axis("off")
    fig.suptitle(title, y=1 - 0.08 / height, va="top")
    cols = list(shown.columns)
    tab = ax.table(cellText=shown.to_numpy().tolist(), colLabels=cols, cellLoc="left", colLoc="left",
                   bbox=(0.0, 0.0, 1.0, 1.0))
    tab.auto_set_font_size(False)
    tab.set_fontsize(8)
    share = {"rank": 0.08, "name": 0.22, "score": 0.12, "sequence": 0.58}
    total = sum(share[c] for c in cols)
    for (row, col), cell in tab.get_celld().items():
        cell.set_width(share[cols[col]] / total)
        cell.PAD = 0.03
        if row == 0:
            cell.set_facecolor("#e8e8e8")
            cell.get_text().set_fontweight("bold")
        elif cols[col] == "sequence":
            cell.get_text().set_fontfamily("monospace")
    _save(fig, out)


# ----------------------------------------------------------------------------- embeddings


def _embedding_input(embeddings: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise InputError(f"embeddings: expected an (N, D) array, got shape {x.shape}")
    if x.shape[0] < 3:
        raise InputError(f"embeddings: need at least 3 points for a 2-D projection, got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise InputError("embeddings: contain NaN or infinite values")
    return x, _labels(labels, x.shape[0])


def _projection_plot(coords: np.ndarray, labels: np.ndarray, out: str | Path, method: str, title: str | None,
                     label_name: str) -> None:
    fig = _figure(6.4, 5.4)
    ax = fig.add_subplot()
    _scatter_by_label(fig, ax, coords, labels, label_name)
    ax.set_xlabel(f"{method} 1")
    ax.set_ylabel(f"{method} 2")
    ax.set_title(title or f"{method} of embeddings (n = {len(coords)})")
    _save(fig, out)


def embedding_tsne(embeddings: Any, labels: Any, out: str | Path, perplexity: float = 30.0, seed: int = 0,
                   title: str | None = None, label_name: str = "label") -> Projection:
    """t-SNE (van der Maaten & Hinton, JMLR 9, 2008) of embeddings (N, D), coloured by labels (N,).

    The perplexity is lowered to (N - 1) / 3 for small N (it must stay below N). Returns coords (N, 2).
    """
    from sklearn.manifold import TSNE

    x, lab = _embedding_input(embeddings, labels)
    perp = float(min(perplexity, max(1.0, (x.shape[0] - 1) / 3.0)))
    coords = TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(x)
    _projection_plot(coords, lab, out, "t-SNE", title, label_name)
    return Projection(coords=coords, labels=lab, method="t-SNE")


def embedding_umap(embeddings: Any, labels: Any, out: str | Path, n_neighbors: int = 15,
                   min_dist: float = 0.1, seed: int = 0, title: str | None = None,
                   label_name: str = "label") -> Projection:
    """UMAP (McInnes, Healy & Melville, arXiv:1802.03426) of embeddings (N, D), coloured by labels (N,).

    umap-learn is an optional extra: without it this raises a one-line :class:`ConfigError` naming the install
    command (``pip install 'dnalm[umap]'``) and writes nothing.
    """
    x, lab = _embedding_input(embeddings, labels)
    try:
        import umap
    except ImportError:
        raise ConfigError(UMAP_MISSING) from None
    reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, x.shape[0] - 1), min_dist=min_dist,
                        random_state=seed)
    coords = np.asarray(reducer.fit_transform(x))
    _projection_plot(coords, lab, out, "UMAP", title, label_name)
    return Projection(coords=coords, labels=lab, method="UMAP")


# ----------------------------------------------------------------------------- training and benchmark


_SKIP_SERIES = {"step", "epoch", "global_step", "time", "wall_time"}

#: Panels of :func:`learning_curves`: (title, test on a lower-cased series name), the first that matches.
#: Quantities on different scales (nats, bits, a 0-1 score, tokens per second, a learning rate) never share
#: an axis.
CURVE_PANELS: tuple[tuple[str, Any], ...] = (
    ("loss (nats)", lambda n: "loss" in n),
    ("bits per base", lambda n: "bits_per_base" in n or n.endswith("bpb")),
    ("perplexity", lambda n: "ppl" in n or "perplexity" in n),
    ("accuracy and scores (0-1)", lambda n: any(k in n for k in ("acc", "mcc", "f1", "auroc", "r2", "pearson",
                                                                 "spearman"))),
    ("learning rate", lambda n: n.endswith("lr") or "learning_rate" in n),
    ("throughput (per second)", lambda n: "per_s" in n or "/s" in n or "throughput" in n),
)
#: Series drawn in one panel at most; further ones are left out with a note (name them with series=[...]).
MAX_SERIES_PER_PANEL = 8


def _panel_of(name: str) -> str:
    low = name.lower()
    return next((title for title, test in CURVE_PANELS if test(low)), "other")


def learning_curves(metrics: str | Path | pd.DataFrame, out: str | Path, x: str = "step",
                    series: Sequence[str] | None = None, log_y: bool = False,
                    title: str = "learning curves") -> Curves:
    """Step (or another column ``x``) against the logged series of a metrics CSV or DataFrame.

    Rows where a series is empty (e.g. validation metrics logged less often, as Lightning's CSVLogger
    writes them) are dropped per series. Each kind of quantity gets its own panel (:data:`CURVE_PANELS`:
    loss, bits/base, perplexity, 0-1 scores, learning rate on a log axis, throughput, other), so that tokens
    per second never share an axis with an accuracy. By default every numeric column other than
    step/epoch/time is drawn except per-class breakdowns (names with two ``/``, e.g.
    ``val/bits_per_base/CDS``), which ``series=[...]`` draws when named; a panel shows at most
    :data:`MAX_SERIES_PER_PANEL` series (the others are listed in ``Curves.left_out``).
    """
    where = str(metrics) if not isinstance(metrics, pd.DataFrame) else "metrics"
    if isinstance(metrics, pd.DataFrame):
        df = metrics
    else:
        path = Path(metrics)
        if not path.is_file():
            raise InputError(f"{path}: metrics CSV not found")
        try:
            df = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not a readable CSV ({' '.join(str(exc).split())})") from None
    if x not in df.columns:
        raise InputError(f"{where}: no column '{x}' (columns: {', '.join(map(str, df.columns))})")
    if series is None:
        names = [c for c in df.columns if c != x and str(c) not in _SKIP_SERIES and str(c).count("/") < 2
                 and pd.api.types.is_numeric_dtype(df[c]) and df[c].notna().any()]
    else:
        missing = [c for c in series if c not in df.columns]
        if missing:
            raise InputError(f"{where}: no column {', '.join(map(repr, missing))} "
                             f"(columns: {', '.join(map(str, df.columns))})")
        names = list(series)
    if not names:
        raise InputError(f"{where}: no numeric series to plot besides '{x}'")
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in names:
        xs = pd.to_numeric(df[x], errors="coerce").to_numpy(dtype=np.float64)
        ys = pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=np.float64)
        keep = np.isfinite(xs) & np.isfinite(ys)
        curves[str(name)] = (xs[keep], ys[keep])
    order = [t for t, _ in CURVE_PANELS] + ["other"]
    panels: dict[str, list[str]] = {}
    for name in curves:
        panels.setdefault(_panel_of(name), []).append(name)
    panels = {t: panels[t] for t in order if t in panels}
    left_out = [n for names_in in panels.values() for n in names_in[MAX_SERIES_PER_PANEL:]]
    panels = {t: v[:MAX_SERIES_PER_PANEL] for t, v in panels.items()}
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = _figure(5.2 * cols, 3.6 * rows + (0.3 if left_out else 0.0))
    for i, (panel, names_in_panel) in enumerate(panels.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        for name in names_in_panel:
            xs, ys = curves[name]
            style = "-" if len(xs) > 1 else "o"
            ax.plot(xs, ys, style, linewidth=1.2, markersize=4, label=name)
        if log_y or (panel == "learning rate" and all((curves[n][1] > 0).all() for n in names_in_panel)):
            ax.set_yscale("log")
        ax.set_xlabel(x)
        ax.set_title(panel, fontsize=10)
        ax.legend(frameon=False, fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title + (f" ({len(left_out)} more series not drawn: name them with series=[...])" if left_out
                          else ""))
    _save(fig, out)
    return Curves(series=curves, x=x, panels=panels, left_out=left_out)


def region_bars(values: Mapping[str, Mapping[str, float]] | pd.DataFrame, out: str | Path,
                regions: Sequence[str] | None = None, ylabel: str = "bits per base",
                title: str = "bits per base by region class",
                intervals: Mapping[str, Mapping[str, tuple[float, float]]] | None = None,
                counts: Mapping[str, int] | None = None, reference: float | None = None,
                reference_label: str = "") -> Bars:
    """Grouped bars of a per-region quantity (e.g. bits/base) for several models.

    ``values``: model -> region -> value, or a DataFrame with one row per model and one column per region.
    Regions appear in ``regions`` order or in order of first appearance. ``intervals`` (model -> region ->
    (low, high)) draws error bars; ``counts`` (region -> number) goes under each region's name (how many
    bases a bar stands on); ``reference`` draws a dashed line (e.g. 2 bits, a uniform guess) named
    ``reference_label``. Returns ``values`` (M, R).
    """
    df = values.copy() if isinstance(values, pd.DataFrame) else pd.DataFrame.from_dict(
        {m: dict(v) for m, v in values.items()}, orient="index")
    if df.empty:
        raise InputError("region bars: no values")
    if regions is not None:
        unknown = [r for r in regions if r not in df.columns]
        if unknown:
            raise InputError(f"region bars: no values for region(s) {', '.join(unknown)}")
        df = df[list(regions)]
    mat = df.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    models, regs = tuple(map(str, df.index)), tuple(map(str, df.columns))
    m, r = mat.shape
    fig = _figure(max(6.4, 0.35 * m * r + 2.5), 4.2)
    ax = fig.add_subplot()
    width = 0.8 / m
    pos = np.arange(r)
    for i, model in enumerate(models):
        yerr = None
        if intervals is not None and model in intervals:
            lo_hi = np.array([intervals[model].get(reg, (np.nan, np.nan)) for reg in regs], dtype=np.float64)
            yerr = np.nan_to_num(np.abs(lo_hi - mat[i][:, None]).T, nan=0.0)  # (2, R)
        bars = ax.bar(pos + (i - (m - 1) / 2) * width, np.nan_to_num(mat[i], nan=0.0), width, label=model,
                      yerr=yerr, capsize=2 if yerr is not None else 0, error_kw={"elinewidth": 0.8})
        if m * r <= 40:
            ax.bar_label(bars, labels=["" if not np.isfinite(v) else f"{v:.3g}" for v in mat[i]], fontsize=7,
                         padding=1)
    names = [f"{reg}\n{counts[reg]:,} bases" if counts and reg in counts else reg for reg in regs]
    ax.set_xticks(pos, names, rotation=30 if r > 6 else 0, ha="right" if r > 6 else "center", fontsize=8)
    if reference is not None:
        ax.axhline(reference, color="0.4", linestyle="--", linewidth=0.8, label=reference_label or None)
    finite = mat[np.isfinite(mat)]
    if finite.size and finite.min() > 0 and np.ptp(finite) < 0.25 * finite.min():
        # close values (bits/base of 1.9 vs 2.0): start the axis near them so that differences show
        ax.set_ylim(bottom=max(0.0, np.floor((finite.min() - 0.5 * max(np.ptp(finite), 0.05)) * 20) / 20))
        ylabel += " (axis does not start at 0)"
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    _save(fig, out)
    return Bars(models=models, regions=regs, values=mat)
