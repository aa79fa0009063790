"""One self-contained HTML report of a results directory.

:func:`write_report` gathers, from anywhere under the directory:
  * leaderboards: ``leaderboard.md`` (the benchmark's explained table), or ``leaderboard.csv`` where no
    Markdown sits beside it (a CSV of more than 10 columns is shown with one row per column);
  * cards: ``dataset_card.md``, ``split_report.md``, ``model_card.md`` (Markdown rendered with
    markdown-it-py in CommonMark mode plus tables, with raw HTML escaped and relative images embedded);
  * metrics: ``metrics.json`` and ``*_metrics.json`` (nested objects become tables);
  * figures: every ``*.png``, grouped by folder, captioned from ``captions.json`` in that folder
    (``{"file.png": "caption"}``; figures follow its order, the others come after by name) or else
    from the file name.

The page has inline CSS and every image as a base64 ``data:`` URI: no scripts, fonts, style sheets or
images are fetched from anywhere, and all text taken from the files is HTML-escaped.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import math
import struct
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from dnalm.errors import InputError
from dnalm.utils import atomic_file

CARD_NAMES = ("dataset_card.md", "split_report.md", "model_card.md")
MAX_IMAGE_BYTES = 25 * 1024 * 1024
MAX_TABLE_ROWS = 500
MAX_TABLE_COLUMNS = 10
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
                ".svg": "image/svg+xml", ".webp": "image/webp"}
_WIDE_PX = 800

CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f6f7f9; color: #1d2433;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 1.5rem 1.25rem 3rem; background: #fff; min-height: 100vh; }
h1 { font-size: 1.7rem; margin: 0 0 .25rem; }
h2 { font-size: 1.35rem; margin: 2rem 0 .75rem; padding-bottom: .25rem; border-bottom: 2px solid #e3e6eb; }
h3 { font-size: 1.1rem; margin: 1.5rem 0 .5rem; }
h4, h5, h6 { font-size: 1rem; margin: 1rem 0 .4rem; }
.meta, .note, figcaption { color: #5b6475; font-size: .9rem; }
.path { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .85rem;
  color: #5b6475; }
nav ul { columns: 2; margin: .25rem 0; padding-left: 1.2rem; }
a { color: #1f5fbf; }
.table-wrap { overflow-x: auto; margin: .5rem 0 1rem; }
table { border-collapse: collapse; font-size: .9rem; }
th, td { border: 1px solid #d9dde3; padding: .25rem .6rem; text-align: left; vertical-align: top; }
th { background: #eef1f5; }
tbody tr:nth-child(even) td { background: #fafbfc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.md table { display: block; overflow-x: auto; max-width: 100%; }
pre { background: #f3f4f6; padding: .6rem .8rem; overflow-x: auto; border-radius: 4px; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .88em; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 1rem; }
figure { margin: 0; padding: .5rem; border: 1px solid #e3e6eb; border-radius: 4px; background: #fff; }
figure.wide { grid-column: 1 / -1; }
figure img, .md img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { margin-top: .35rem; text-align: center; }
details > summary { cursor: pointer; font-weight: 600; }
@media (max-width: 640px) { .grid { grid-template-columns: 1fr; } nav ul { columns: 1; } }
"""


@dataclass
class _Section:
    anchor: str
    title: str
    body: list[str] = field(default_factory=list)


def _visible(path: Path, root: Path) -> bool:
    """Not inside a hidden folder and not hidden itself (atomic writers use hidden temporary names)."""
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def _find(root: Path, pattern: str, exclude: Path | None = None) -> list[Path]:
    found = [p for p in root.rglob(pattern) if p.is_file() and _visible(p, root) and p != exclude]
    return sorted(found, key=lambda p: (len(p.relative_to(root).parts), str(p.relative_to(root))))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from None


def _anchor(text: str, used: set[str]) -> str:
    base = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-") or "section"
    name, i = base, 2
    while name in used:
        name, i = f"{base}-{i}", i + 1
    used.add(name)
    return name


# ----------------------------------------------------------------------------- values and tables


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _fmt(v: Any) -> str:
    if v is None:
        return "\u2013"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if v.is_integer() and abs(v) < 1e15:
            return str(int(v))
        return f"{v:.4g}"
    return str(v)


def _cell(v: Any) -> str:
    numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
    return f'<td class="num">{escape(_fmt(v))}</td>' if numeric else f"<td>{escape(_fmt(v))}</td>"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    """An escaped HTML table; rows beyond MAX_TABLE_ROWS are left out with a note."""
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in r) + "</tr>" for r in rows[:MAX_TABLE_ROWS])
    note = ""
    if len(rows) > MAX_TABLE_ROWS:
        note = f'<p class="note">first {MAX_TABLE_ROWS} of {len(rows)} rows shown</p>'
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="table-wrap">{table}</div>{note}'


def _json_html(obj: Any, depth: int = 0) -> str:
    """Nested JSON as tables: objects of scalars -> key/value table; objects of objects of scalars ->
    a matrix (rows = outer keys, columns = inner keys); lists of objects of scalars -> a records table."""
    if _is_scalar(obj):
        return f"<p>{escape(_fmt(obj))}</p>"
    if depth > 6:
        return f"<pre><code>{escape(json.dumps(obj, indent=1)[:20000])}</code></pre>"
    level = min(3 + depth, 6)
    if isinstance(obj, dict):
        if obj and all(isinstance(v, dict) and v and all(map(_is_scalar, v.values())) for v in obj.values()):
            cols: list[str] = []
            for v in obj.values():
                cols += [k for k in v if k not in cols]
            return _table([""] + cols, [[k] + [v.get(c) for c in cols] for k, v in obj.items()])
        scalars = [[k, v] for k, v in obj.items() if _is_scalar(v)]
        scalar_lists = [[k, ", ".join(_fmt(x) for x in v[:20]) + (f", \u2026 ({len(v)} values)" if len(v) > 20
                                                                     else "")]
                        for k, v in obj.items() if isinstance(v, list) and all(_is_scalar(x) for x in v)]
        parts = [_table(["key", "value"], scalars + scalar_lists)] if scalars or scalar_lists else []
        for k, v in obj.items():
            if _is_scalar(v) or (isinstance(v, list) and all(_is_scalar(x) for x in v)):
                continue
            parts.append(f"<h{level + 1}>{escape(str(k))}</h{level + 1}>{_json_html(v, depth + 1)}")
        return "".join(parts)
    if isinstance(obj, list):
        if obj and all(isinstance(r, dict) and all(_is_scalar(x) for x in r.values()) for r in obj):
            cols = []
            for r in obj:
                cols += [k for k in r if k not in cols]
            return _table(cols, [[r.get(c) for c in cols] for r in obj])
        return "<ol>" + "".join(f"<li>{_json_html(v, depth + 1)}</li>" for v in obj) + "</ol>"
    return f"<p>{escape(str(obj))}</p>"


def _csv_table(path: Path) -> str:
    """A CSV as a table; one wider than :data:`MAX_TABLE_COLUMNS` with few rows is turned on its side (one row per
    column, the first column's values as the header), so that the page never scrolls sideways."""
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable CSV ({' '.join(str(exc).split())})") from None
    rows = [[None if (isinstance(v, float) and math.isnan(v)) else v for v in r]
            for r in df.astype(object).itertuples(index=False, name=None)]
    header = [str(c) for c in df.columns]
    if len(header) > MAX_TABLE_COLUMNS and len(rows) < len(header):
        return _table([header[0]] + [str(r[0]) for r in rows], [[h] + [r[i] for r in rows]
                                                                for i, h in enumerate(header) if i > 0])
    return _table(header, rows)


# ----------------------------------------------------------------------------- markdown and images


def _data_uri(path: Path) -> str:
    mime = _IMAGE_TYPES[path.suffix.lower()]
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _embeddable(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return (path.is_file() and path.suffix.lower() in _IMAGE_TYPES
            and path.stat().st_size <= MAX_IMAGE_BYTES)


def render_markdown(text: str, base_dir: Path | None = None, root: Path | None = None,
                    heading_offset: int = 0) -> str:
    """Markdown -> HTML (CommonMark + tables + strikethrough), raw HTML escaped, unsafe links dropped.

    Images with a relative path to a file under ``root`` are embedded as data URIs (resolved against
    ``base_dir``); any other image becomes its alt text, so the page never loads a remote resource.
    Headings move down by ``heading_offset`` levels (at most h6).
    """
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])
    tokens = md.parse(text)
    for tok in tokens:
        if tok.type in ("heading_open", "heading_close") and heading_offset:
            tok.tag = f"h{min(6, int(tok.tag[1]) + heading_offset)}"
        for child in tok.children or []:
            if child.type != "image":
                continue
            src = str(child.attrs.get("src", ""))
            local = base_dir / src if base_dir is not None and src and "://" not in src else None
            if local is not None and root is not None and _embeddable(local, root):
                child.attrs["src"] = _data_uri(local)
            else:
                child.type, child.tag, child.attrs, child.children = "text", "", {}, None
                child.content = f"[image not embedded: {child.content or src}]"
    return md.renderer.render(tokens, md.options, {})


def _markdown_block(path: Path, root: Path) -> str:
    return f'<div class="md">{render_markdown(_read_text(path), path.parent, root, heading_offset=2)}</div>'


def _leaderboard_block(path: Path, root: Path) -> str:
    """A Markdown leaderboard without its title (the section has one); its ``##`` sections (the full table of a
    benchmark) folded into ``<details>`` under the headline part."""
    text = _read_text(path)
    lines = text.splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    parts = "\n".join(lines).split("\n## ")
    html = [f'<div class="md">{render_markdown(parts[0], path.parent, root, heading_offset=2)}</div>']
    for part in parts[1:]:
        title, _, body = part.partition("\n")
        html.append(f"<details><summary>{escape(title.strip())}</summary><div class=\"md\">"
                    f"{render_markdown(body, path.parent, root, heading_offset=2)}</div></details>")
    return "".join(html)


def _png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, or None when ``data`` is not a PNG."""
    if len(data) < 24 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def _caption(path: Path, captions: dict[str, str]) -> str:
    return captions.get(path.name) or captions.get(path.stem) or path.stem.replace("_", " ").replace("-", " ")


def _captions(folder: Path) -> dict[str, str]:
    path = folder / "captions.json"
    if not path.is_file():
        return {}
    data = _read_json(path)
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise InputError(f"{path}: expected an object mapping file names to caption strings")
    return data


# ----------------------------------------------------------------------------- the report


def write_report(results_dir: str | Path, out_html: str | Path | None = None,
                 title: str = "dnalm report", location: str | Path | None = None) -> Path:
    """Write one self-contained HTML page summarising ``results_dir``; returns its path.

    Sections: leaderboard, figures, cards (dataset, split, model), metrics. ``location`` is the path the
    page names for the results (default ``results_dir``; a directory written under a temporary name
    passes its final one).

    ``out_html`` defaults to ``results_dir/report.html``. Raises :class:`InputError` when the folder
    does not exist, holds nothing to report, or a file in it is malformed (naming the file).
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise InputError(f"{root}: results directory not found")
    out = Path(out_html) if out_html is not None else root / "report.html"
    used: set[str] = set()
    sections: list[_Section] = []
    skipped: list[str] = []

    def rel(p: Path) -> str:
        return str(p.relative_to(root))

    boards = _find(root, "leaderboard.md") + [p for p in _find(root, "leaderboard.csv")
                                               if not p.with_suffix(".md").is_file()]
    if boards:
        sec = _Section(_anchor("leaderboard", used), "Leaderboard")
        for path in sorted(boards, key=lambda p: rel(p)):
            sec.body.append(f'<p class="path">{escape(rel(path))}</p>')
            if path.suffix == ".csv":
                sec.body.append(_csv_table(path))
            else:
                sec.body.append(_leaderboard_block(path, root))
        sections.append(sec)

    for name in CARD_NAMES:
        for path in _find(root, name):
            heading = name.removesuffix(".md").replace("_", " ").capitalize()
            sec = _Section(_anchor(f"{heading} {rel(path.parent)}", used), heading)
            sec.body.append(f'<p class="path">{escape(rel(path))}</p>')
            sec.body.append(_markdown_block(path, root))
            sections.append(sec)

    metric_files = _find(root, "metrics.json") + _find(root, "*_metrics.json")
    if metric_files:
        sec = _Section(_anchor("metrics", used), "Metrics")
        for path in sorted(set(metric_files), key=lambda p: rel(p)):
            sec.body.append(f"<h3>{escape(rel(path))}</h3>{_json_html(_read_json(path))}")
        sections.append(sec)

    pngs = _find(root, "*.png")
    if pngs:
        sec = _Section(_anchor("figures", used), "Figures")
        folders: dict[Path, list[Path]] = {}
        for path in pngs:
            folders.setdefault(path.parent, []).append(path)
        for folder in sorted(folders, key=lambda f: (f != root, rel(f))):
            captions = _captions(folder)
            label = "top level" if folder == root else rel(folder)
            sec.body.append(f"<h3>{escape(label)}</h3>")
            figs = []
            listed = {name: i for i, name in enumerate(captions)}  # captions.json's order, then by name
            for path in sorted(folders[folder],
                               key=lambda p: (listed.get(p.name, listed.get(p.stem, len(listed))), p.name)):
                if path.stat().st_size > MAX_IMAGE_BYTES:
                    skipped.append(f"{rel(path)} (larger than {MAX_IMAGE_BYTES >> 20} MiB)")
                    continue
                data = path.read_bytes()
                size = _png_size(data)
                if size is None:
                    skipped.append(f"{rel(path)} (not a PNG file)")
                    continue
                cap = _caption(path, captions)
                wide = ' class="wide"' if size[0] > _WIDE_PX else ""
                uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
                figs.append(f'<figure{wide}><img src="{uri}" alt="{escape(cap)}" width="{size[0]}" '
                            f'height="{size[1]}"><figcaption>{escape(cap)}</figcaption></figure>')
            if figs:
                sec.body.append(f'<div class="grid">{"".join(figs)}</div>')
        sections.append(sec)

    if not sections:
        raise InputError(f"{root}: nothing to report (no leaderboard, {', '.join(CARD_NAMES)}, metrics.json "
                         "or PNG files)")
    if skipped:
        sec = _Section(_anchor("skipped", used), "Skipped files")
        sec.body.append("<ul>" + "".join(f"<li>{escape(s)}</li>" for s in skipped) + "</ul>")
        sections.append(sec)

    order = {"Leaderboard": 0, "Figures": 1, "Metrics": 3, "Skipped files": 4}
    sections.sort(key=lambda sec: order.get(sec.title, 2))  # stable: cards keep their order
    html = _page(title, Path(location) if location is not None else root, sections)
    with atomic_file(out) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return out


def _page(title: str, root: Path, sections: list[_Section]) -> str:
    from dnalm import __version__

    when = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    toc = "".join(f'<li><a href="#{s.anchor}">{escape(s.title)}</a></li>' for s in sections)
    body = "".join(f'<section id="{s.anchor}"><h2>{escape(s.title)}</h2>{"".join(s.body)}</section>'
                   for s in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body><main>"
            f"<header><h1>{escape(title)}</h1><p class=\"meta\">results: <span class=\"path\">"
            f"{escape(str(root.resolve()))}</span> &middot; {escape(when)} &middot; "
            f"dnalm {escape(__version__)}"
            f"</p></header><nav><ul>{toc}</ul></nav>{body}</main></body></html>\n")
