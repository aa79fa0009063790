"""``dnalm report results=DIR out=report.html``: a self-contained HTML report of a results directory."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from dnalm.config import to_dataclass
from dnalm.errors import ConfigError
from dnalm.evaluate.report import write_report


@dataclass
class ReportConfig:
    results: str | None = None
    out: str | None = None
    title: str = "dnalm report"


def main(cfg: DictConfig) -> int | None:
    rc = to_dataclass(cfg, ReportConfig, where="report")
    if not rc.results:
        raise ConfigError("report: set results=DIR (the results directory to summarise)")
    path = write_report(rc.results, rc.out, title=rc.title)
    print(f"wrote {path}")
    return 0
