"""Every other suite: the `dnibench compare` table, per (suite, profile), for each suite in the store
that no section of its own renders (a variant's suite, e.g. examples/dgl.yaml). Each method
configuration is its own row under its own label: mean ± 95% CI over seeds, the difference to
backprop with Welch's CI, throughput. A method loaded from a file is listed with the file's sha256,
so a reader can tell which version of the code produced the row.
"""
from __future__ import annotations

import pandas as pd

from . import Section, async_updates, delay, parallel, rnn, table1, unlock
from .context import ReportContext
from ..errors import DnibenchError
from ..suite import PROFILES

BASELINE = "bprop"


def dedicated_suites() -> set[str]:
    """Suites a section of their own already tabulates against the paper."""
    return {*table1.TABLE1_SUITES.values(), async_updates.SUITE, unlock.SUITE, delay.SUITE,
            *(suite for _, suite in rnn.TASKS.values()), *rnn.CLAIM_SUITES, "rnn_multiscale", parallel.SUITE}


def method_files(runs: pd.DataFrame) -> list[str]:
    """'name: path (sha256 abc…)' for each method a suite's runs loaded from a file."""
    if "param.method_file.path" not in runs:
        return []
    files = runs.dropna(subset=["param.method_file.path"])
    files = files[["method", "param.method_file.path", "param.method_file.sha256"]].drop_duplicates()
    return [f"`{row.method}`: `{row[1]}` (sha256 {row[2][:12]})" for row in files.itertuples(index=False)]


def render(ctx: ReportContext) -> Section | None:
    from ..compare import compare, render as render_comparison

    runs = ctx.runs
    if runs.empty:
        return None
    runs = runs[~runs["suite"].isin(dedicated_suites())]
    groups = [(s, p) for s in sorted(set(runs["suite"])) for p in PROFILES
              if ((runs["suite"] == s) & (runs["profile"] == p)).any()]
    if not groups:
        return None
    body, files = ["Suites without a section of their own (variants named in a suite, e.g. "
                   "`examples/dgl.yaml`), as `dnibench compare SUITE --profile P` shows them.",
                   ""], []
    for suite, profile in groups:
        body += [f"### `{suite}` at `{profile}`", ""]
        described = ctx.suites.get(suite)
        if described is not None and described.description:
            body += [described.description.strip(), ""]
        try:
            table, metric, _ = compare(ctx.tracking_uri, suite, profile, baseline=BASELINE)
        except DnibenchError as err:          # e.g. a suite whose runs logged no headline metric
            body += [f"Not tabulated: {err}.", ""]
            continue
        files += ctx.write_table(table, f"compare_{suite}_{profile}")
        body += [render_comparison(table, suite, profile, metric, BASELINE).rstrip(), ""]
        listed = method_files(runs[(runs["suite"] == suite) & (runs["profile"] == profile)])
        if listed:
            body += ["Methods loaded from files: " + "; ".join(listed) + ".", ""]
    return Section(title="Other suites: variants against the baselines", body="\n".join(body), files=files)

