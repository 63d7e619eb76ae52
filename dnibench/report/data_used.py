"""Data: what every finished run trained on, from the tags the runner puts on each run (dnibench.data.data_tags):
the verified cache's source and its sizes, per task. The published numbers are for the full data sets; a run on
anything else (a cache built from other IDX files, a handful of images a test left in a cache) is named here, so
no table rests on it unseen. Tasks that generate their data (Copy, Repeat Copy, the two-timescale system) have
no such tags and no row; a run logged before the tags existed shows as "not recorded".
"""
from __future__ import annotations

import pandas as pd

from . import Section
from .context import ReportContext, display_name
from .verdict import NOT_FULL_DATA
from ..data import DATA_TAGS, FULL_SIZES, is_full

UNRECORDED = "not recorded"


def not_full(runs: pd.DataFrame) -> pd.Series:
    """Per run: True where it recorded data of a task whose full size is known and that data was not the full set
    (a run that recorded nothing, or of a task that generates its data, is False)."""
    if not set(DATA_TAGS + ["task"]) <= set(runs.columns) or runs.empty:
        return pd.Series(False, index=runs.index)
    return pd.Series([pd.notna(source) and is_full(task, train, test) is False for task, source, train, test
                      in zip(runs["task"], *(runs[key] for key in DATA_TAGS))], index=runs.index, dtype=bool)


def comparable(runs: pd.DataFrame, profile: str) -> bool | str:
    """Whether verdicts against the published numbers apply to ``runs`` (one cell's, or one claim's) at ``profile``:
    only at the paper's, and only where none of them trained on less than the full data set (NOT_FULL_DATA, the
    state that stands in for the verdict then). For verdict.verdict, at_most, lower_than and slower_than."""
    if profile != "paper":
        return False
    return NOT_FULL_DATA if bool(not_full(runs).any()) else True


def data_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per task and data (source, train, test): the finished runs, and whether that data is the full set."""
    runs = runs[runs["task"].isin(FULL_SIZES) | runs["data.source"].notna()] if "data.source" in runs else runs.iloc[:0]
    if runs.empty:
        return pd.DataFrame(columns=["task", "source", "train", "test", "full data set", "runs"])
    keys = runs[["task", *DATA_TAGS]].fillna(UNRECORDED).astype(str)
    rows = []
    for (task, source, train, test), group in keys.groupby(["task", *DATA_TAGS], sort=True):
        full = None if source == UNRECORDED else is_full(task, train, test)
        rows.append({"task": display_name(task), "source": source, "train": train, "test": test,
                     "full data set": "" if full is None else ("yes" if full else "no"), "runs": len(group)})
    return pd.DataFrame(rows)


def render(ctx: ReportContext) -> Section | None:
    table = data_table(ctx.runs)
    if table.empty:
        return None
    files = ctx.write_table(table, "data")
    partial = int(table.loc[table["full data set"] == "no", "runs"].sum())
    unknown = int(table.loc[table["source"] == UNRECORDED, "runs"].sum())
    body = ["What every finished run trained on, from the tags the runner records on each run: where its verified "
            "cache came from and its sizes (examples; symbols for Penn Treebank). The published numbers are for the "
            "full data sets."]
    if partial:
        body.append(f"**{partial} run(s) trained on data other than the full set**: every table below includes them; "
                    "their rows here say what they had, and no verdict against the published numbers rests on them "
                    f"(\"{NOT_FULL_DATA}\").")
    if unknown:
        body.append(f"{unknown} run(s) were logged before runs recorded their data.")
    return Section("Data", " ".join(body) + "\n\n" + files[0].read_text(), files)
