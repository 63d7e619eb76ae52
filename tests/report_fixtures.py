"""A ReportContext over made-up finished runs, for report tests that need no store."""
import pandas as pd

from dnibench.report.context import ReportContext, load_published, load_suites


def report_context(tmp_path, rows) -> ReportContext:
    """Each row a finished run (ids and start times in row order) of the shipped suites. Rows that name a
    ``variant`` are seeds of one configuration; the others each a configuration of their own."""
    runs = pd.DataFrame(rows)
    runs["run_id"] = [f"r{i}" for i in range(len(runs))]
    runs["start_time"] = range(len(runs))
    runs["variant"] = runs["variant"].fillna(runs["run_id"]) if "variant" in runs else runs["run_id"]
    return ReportContext(tracking_uri="sqlite:///none", out=tmp_path, runs=runs, published=load_published(),
                         suites=load_suites("suites"))
