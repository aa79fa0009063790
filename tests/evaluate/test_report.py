"""The HTML report: content gathered, everything embedded and escaped, and it renders in a browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from dnalm.cli import main, run
from dnalm.errors import InputError
from dnalm.evaluate.report import render_markdown, write_report

CARD = """# Yeast R64 dataset card

Held-out chromosomes & a <script>alert("x")</script> tag.

| split | records | bases |
|---|---|---|
| train | 14 | 10,912,000 |
| test | 2 | 1,158,000 |

- soft-masked: **12.7%**
- local figure: ![GC histogram](figures/gc_content.png)
- remote figure: ![remote](https://example.org/x.png)

```
dnalm prepare genome=yeast_r64
```

Source: [NCBI](https://www.ncbi.nlm.nih.gov/assembly/GCA_000146045.2)
"""


class Collect(HTMLParser):
    """Tags with their attributes, and the text of every table cell, per table."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse(html: str) -> Collect:
    p = Collect()
    p.feed(html)
    return p


def save_png(path: Path, kind: str) -> None:
    fig = Figure(figsize=(4, 3), dpi=60)
    ax = fig.add_subplot()
    x = np.linspace(0, 6, 50)
    ax.plot(x, np.sin(x)) if kind == "line" else ax.hist(np.cos(x), bins=8)
    ax.set_title(kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")


@pytest.fixture
def results(tmp_path) -> Path:
    d = tmp_path / "results"
    d.mkdir()
    (d / "leaderboard.csv").write_text("model,bits_per_base,mcc\nhyena-tiny,1.9134,0.52\ntransformer,1.95,\n")
    (d / "dataset_card.md").write_text(CARD)
    (d / "metrics.json").write_text(json.dumps({
        "n_windows": 1200, "per_region": {"CDS": {"bits_per_base": 1.87, "bases": 4000},
                                          "intron": {"bits_per_base": 1.96, "bases": 900}}}))
    save_png(d / "figures" / "gc_content.png", "hist")
    save_png(d / "figures" / "loss_curve.png", "line")
    (d / "figures" / "captions.json").write_text(json.dumps({"loss_curve.png": "Training loss <per step>"}))
    (d / "figures" / ".loss_curve.png.x.tmp").write_bytes(b"half-written")
    return d


def test_report_embeds_and_escapes_everything(results, tmp_path):
    out = write_report(results, tmp_path / "out" / "report.html", title="Yeast <benchmark>")
    html = out.read_text(encoding="utf-8")
    doc = parse(html)
    imgs = [a for t, a in doc.tags if t == "img"]
    assert html.count("data:image/png;base64,") == 3 == len(imgs)
    assert all(a["src"].startswith("data:image/png;base64,") for a in imgs)
    assert {a["alt"] for a in imgs} == {"Training loss <per step>", "gc content", "GC histogram"}
    assert "http://" not in html
    external = re.findall(r"""(\w+)=["']?https://""", html)
    assert external == ["href"] and 'href="https://www.ncbi.nlm.nih.gov/' in html
    assert not [t for t, _ in doc.tags if t in ("script", "link", "iframe", "object", "embed")]
    assert "url(" not in html and "@import" not in html and "[image not embedded: remote]" in html
    assert "&lt;script&gt;" in html and "<script>" not in html
    assert "<title>Yeast &lt;benchmark&gt;</title>" in html
    board = next(t for t in doc.tables if t[0] == ["model", "bits_per_base", "mcc"])
    assert board[1:] == [["hyena-tiny", "1.913", "0.52"], ["transformer", "1.95", "\u2013"]]
    card = next(t for t in doc.tables if t[0] == ["split", "records", "bases"])
    assert card[1:] == [["train", "14", "10,912,000"], ["test", "2", "1,158,000"]]
    regions = next(t for t in doc.tables if t[0] == ["", "bits_per_base", "bases"])
    assert regions[1:] == [["CDS", "1.87", "4000"], ["intron", "1.96", "900"]]
    assert ["n_windows", "1200"] in next(t for t in doc.tables if t[0] == ["key", "value"])
    assert "<h3>Yeast R64 dataset card</h3>" in html
    assert "<code>dnalm prepare genome=yeast_r64\n</code>" in html
    assert not list(out.parent.glob(".*"))


def test_report_default_location_and_markdown_leaderboard(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / "leaderboard.md").write_text("| model | bpb |\n|---|---|\n| a | 1.9 |\n")
    out = write_report(d)
    assert out == d / "report.html"
    assert parse(out.read_text()).tables == [[["model", "bpb"], ["a", "1.9"]]]


def test_report_user_errors(tmp_path, results):
    with pytest.raises(InputError, match="results directory not found"):
        write_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="nothing to report"):
        write_report(tmp_path / "empty")
    (results / "metrics.json").write_text('{"a": 1,\n "b": }\n')
    with pytest.raises(InputError, match=r"metrics\.json: line 2: invalid JSON"):
        write_report(results, tmp_path / "bad.html")
    assert not (tmp_path / "bad.html").exists() and not list(tmp_path.glob(".bad.html*"))
    (results / "metrics.json").unlink()
    (results / "figures" / "captions.json").write_text('["not", "a", "mapping"]')
    with pytest.raises(InputError, match=r"captions\.json: expected an object"):
        write_report(results)


def test_render_markdown_drops_unsafe_links_and_outside_images(tmp_path):
    outside = tmp_path / "outside.png"
    save_png(outside, "line")
    root = tmp_path / "root"
    root.mkdir()
    text = "# T\n\n[x](javascript:alert(1)) ![o](../outside.png) [ok](notes.md)"
    html = render_markdown(text, root, root, heading_offset=1)
    assert html.startswith("<h2>T</h2>")
    assert [(t, a) for t, a in parse(html).tags if t in ("a", "img")] == [("a", {"href": "notes.md"})]
    assert "[image not embedded: o]" in html


def test_report_command(results, tmp_path, capsys):
    out = tmp_path / "cmd.html"
    assert run(["report", f"results={results}", f"out={out}"]) == 0
    assert out.is_file() and "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["report"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "dnalm: error: report: set results=DIR (the results directory to summarise)"


CHECK_SCRIPT = """<script>
window.addEventListener("error", () => { document.body.dataset.errors = "1"; });
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  document.body.dataset.images = imgs.length;
  document.body.dataset.broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;
  document.body.dataset.overflow = document.documentElement.scrollWidth > window.innerWidth ? "1" : "0";
  const boxes = Array.from(document.querySelectorAll(".table-wrap, .md table, details"));
  document.body.dataset.sideways = boxes.filter(e => e.scrollWidth > e.clientWidth + 1).length;
});
</script>"""


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _browse(report: Path, tmp_path: Path) -> tuple[str, str]:
    """The <body> tag of the report once loaded in headless Chromium (with CHECK_SCRIPT's findings) and the
    browser's log."""
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium not installed (Debian: apt-get install -y chromium)")
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text(encoding="utf-8").replace("</body>", CHECK_SCRIPT + "</body>"))
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={tmp_path / 'profile'}",
             "--window-size=1280,2000", "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run(flags + ["--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=60)
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body is not None, dom.stderr[-2000:]
    return body.group(0), dom.stderr


def test_wide_leaderboard_does_not_scroll_sideways(tmp_path):
    """A benchmark's 30-column leaderboard: leaderboard.md's headline and its full table (metrics as rows, folded)
    win over the CSV; a CSV alone of more than 10 columns is shown with one row per column; in Chromium no
    table scrolls sideways."""
    d = tmp_path / "bench"
    d.mkdir()
    columns = ["model"] + [f"metric_with_a_long_name_{i}" for i in range(29)]
    (d / "leaderboard.csv").write_text(",".join(columns) + "\n" + "".join(
        f"model_{m}," + ",".join(f"{1.5 + 0.01 * i + m:.4f}" for i in range(29)) + "\n" for m in range(3)))
    doc = parse(write_report(d, d / "csv.html").read_text())
    board = doc.tables[0]
    assert board[0] == ["model", "model_0", "model_1", "model_2"] and len(board) == 30  # turned on its side
    assert board[1] == ["metric_with_a_long_name_0", "1.5", "2.5", "3.5"]
    (d / "leaderboard.md").write_text("# Leaderboard\n\nHeadline.\n\n| model | bits/base (95% CI) |\n|---|---|\n"
                                      "| model_0 | 1.912 (1.905–1.919) |\n\n- Bits per base: lower is better.\n\n"
                                      "## Every metric\n\n| metric | model_0 |\n|---|---|\n| x | 1 |\n")
    report = write_report(d, d / "report.html")
    html = report.read_text()
    assert "<details><summary>Every metric</summary>" in html and "<h3>Leaderboard</h3>" not in html
    assert parse(html).tables[0][0] == ["model", "bits/base (95% CI)"]
    body, log = _browse(report, tmp_path)
    assert 'data-overflow="0"' in body and 'data-sideways="0"' in body and "data-errors" not in body, body
    (d / "leaderboard.md").unlink()
    body, _ = _browse(write_report(d, d / "wide.html"), tmp_path)
    assert 'data-overflow="0"' in body and 'data-sideways="0"' in body, body


def test_report_renders_in_headless_chromium(results, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium not installed (Debian: apt-get install -y chromium)")
    report = write_report(results, tmp_path / "report.html")
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text(encoding="utf-8").replace("</body>", CHECK_SCRIPT + "</body>"))
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={tmp_path / 'profile'}",
             "--window-size=1280,2000", "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run(flags + ["--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=60)
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body is not None, dom.stderr[-2000:]
    assert 'data-images="3"' in body.group(0) and 'data-broken="0"' in body.group(0), body.group(0)
    assert 'data-overflow="0"' in body.group(0) and "data-errors" not in body.group(0)
    assert ":CONSOLE" not in dom.stderr, [ln for ln in dom.stderr.splitlines() if ":CONSOLE" in ln]
    shot = tmp_path / "shot.png"
    subprocess.run(flags + [f"--screenshot={shot}", report.as_uri()], capture_output=True, timeout=60)
    img = imread(shot)
    assert img.shape[:2] == (2000, 1280)
    assert float(img[..., :3].std()) > 0.05
    assert float((img[..., :3].mean(axis=-1) < 0.5).mean()) > 0.01
