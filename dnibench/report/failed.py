"""Failed runs: every child run the store holds as FAILED or KILLED (and never FINISHED for the same
configuration), with the reason the runner tagged, e.g. "diverged at step 12" or "owner process 123 on
host died". Such a run is not a result, so no table above uses it; this section says it was tried
instead of dropping it silently, and counts the store's child runs by status.
"""
from __future__ import annotations

from . import Section
from .context import ReportContext, display_name

COLUMNS = ["suite", "profile", "model", "method", "seed", "status", "reason", "config_hash"]


def render(ctx: ReportContext) -> Section | None:
    if ctx.failed.empty:
        return None
    table = ctx.failed[COLUMNS].copy()
    table["model"] = table["model"].map(display_name)
    table["method"] = table["method"].map(display_name)
    files = ctx.write_table(table, "failed_runs")
    counts = ctx.failed.attrs.get("status_counts", {})
    body = (f"{len(table)} run(s) FAILED or KILLED and are left out of every table and figure above (the "
            "runner stops a run whose loss becomes non-finite, or that was interrupted, and tags why). "
            "Rerunning the suite retries them. Child runs in the store by status: "
            + ", ".join(f"{status} {n}" for status, n in sorted(counts.items())) + ".\n\n"
            + files[0].read_text())
    return Section("Failed runs", body, files)
