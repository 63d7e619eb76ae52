"""Reports: one query of MLflow into a DataFrame -> tables and figures under reports/.

Report code never trains. Each section of the report is one module in this package exposing
``render(ctx: ReportContext) -> Section | None`` (None when it has no runs to show); SECTIONS
lists them in the order they appear in reports/README.md.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

# Section modules, in report order. A new section: add a module here and its name to this list.
SECTIONS: list[str] = ["data_used", "table1", "curves", "async_updates", "unlock", "delay", "rnn", "rnn_claim", "parallel", "comparisons", "failed"]


@dataclass
class Section:
    title: str
    body: str                                  # Markdown for reports/README.md (may link files)
    files: list[Path] = field(default_factory=list)


from .context import ReportContext, load_runs, record_generated  # noqa: E402  (needs Section defined first)


def write_report(tracking_uri: str, out: Path, suites_dir: Path = Path("suites")) -> list[Path]:
    ctx = ReportContext.build(tracking_uri, out, suites_dir)
    sections = []
    for name in SECTIONS:
        section = importlib.import_module(f"{__name__}.{name}").render(ctx)
        if section is not None:
            sections.append(section)
    written = ctx.write_index(sections)
    record_generated(ctx.out, written)
    return written


__all__ = ["Section", "ReportContext", "load_runs", "write_report", "SECTIONS", "pd"]
