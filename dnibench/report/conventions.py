"""The conventions a table depends on (``conventions`` in dnibench/published/jaderberg2016.yaml):
notes under the table, and which runs follow the default reading.

A convention setting at its default is left out of a run's ``task_args`` (dnibench.tasks.
ConventionSettings), so a run that logged one departs from the default reading. Tables are built
from the default reading only; runs under another reading are listed under the table instead of
being mixed into its cells.
"""
from __future__ import annotations

import pandas as pd

from .context import markdown_table

TASK_CONVENTIONS = ("layer_count", "pool_stride", "length_counts")     # task_args that are conventions


def notes(published: dict, table: str) -> list[str]:
    """One bullet per convention the table depends on: the reading used, its setting, and why."""
    lines = []
    for name, entry in published.get("conventions", {}).items():
        if table in entry.get("affects", []):
            lines.append(f"- Convention `{name}` (default: {entry['default']}; setting `{entry['setting']}`): "
                         f"{entry['text']} Why: {entry['source']}")
    return lines


def departures(runs: pd.DataFrame) -> pd.Series:
    """Per run, the conventions it departs from as 'name=value' text ('' for the default reading)."""
    parts = []
    for name in TASK_CONVENTIONS:
        column = f"param.task_args.{name}"
        if column in runs:
            given = runs[column].notna() & (runs[column].astype(str) != "")
            parts.append((f"{name}=" + runs[column].astype(str)).where(given, ""))
    if not parts or runs.empty:
        return pd.Series("", index=runs.index, dtype=object)
    return pd.concat(parts, axis=1).apply(lambda row: "; ".join(v for v in row if v), axis=1)


def default_reading(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[departures(runs) == ""]


def other_readings(runs: pd.DataFrame, metric: str, label: str) -> list[str]:
    """A short table of the runs under another reading (mean over seeds), or nothing."""
    reading = departures(runs)
    others = runs[reading != ""].assign(reading=reading[reading != ""])
    if others.empty or metric not in others:
        return []
    keys = [k for k in ("task", "model", "method", "param.method_args.T") if k in others]
    table = (others.groupby(keys + ["reading"])[metric].agg(lambda v: v.astype(float).mean()).round(2)
             .reset_index().rename(columns={metric: label, "param.method_args.T": "T"}))
    table["seeds"] = others.groupby(keys + ["reading"])[metric].size().to_numpy()
    return ["Runs under another reading of a convention (not in the table above; mean over seeds):", "",
            markdown_table(table), ""]
