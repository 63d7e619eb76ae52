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


def parallel_row(method: str, schedule: str, k: int, metrics: dict, *, model: str, batch: int, run_id: str,
                 microbatches: str = "", pipeline: str | None = None, threads: str | None = None) -> dict:
    """One parallel run as a row of the report's run table (report.parallel.prepare's input), with these logged
    metrics (``metric.`` prefixed) and params."""
    params = {"param.workers": str(k), "param.schedule": schedule, "param.microbatches": microbatches,
              "param.lockstep": "false", "param.train.batch_size": str(batch),
              **({"param.pipeline_schedule": pipeline} if pipeline is not None else {}),
              **({"param.threads": threads} if threads is not None else {})}
    return {"suite": "parallel", "method": method, "model": model, "task": "mnist", "run_id": run_id, **params,
            **{f"metric.{key}": value for key, value in metrics.items()}}


def capture_figures(ctx: ReportContext, save: bool = False) -> dict:
    """Keep each figure the report hands to ``save_figure``, by stem, for a test to read its data; with ``save``
    the files are written too (else nothing is, and the figure stays open until the test closes it)."""
    figures, write = {}, ctx.save_figure

    def keep(fig, stem):
        figures[stem] = fig
        return write(fig, stem) if save else []
    ctx.save_figure = keep
    return figures
