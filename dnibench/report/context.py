"""What every report section reads: one query of MLflow into a DataFrame, the published numbers,
the suites, and the writers for figures, tables and reports/README.md.

The store is queried once for the FINISHED child runs (and once for the FAILED/KILLED ones, which are listed
by reason, never used as results); a config run more than once (``--force``) counts once, with its
latest run. Metric histories are fetched lazily and cached. A run another suite shared (runner.py: an
alias, tagged ``shared_from``) is a row of its own suite; its curves are its original's.
"""
from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import pandas as pd
import yaml
from mlflow.tracking import MlflowClient

from .. import store
from ..data import DATA_TAGS
from ..errors import DnibenchError
from ..suite import Suite, load_suite

PUBLISHED_PATH = Path(__file__).resolve().parent.parent / "published" / "jaderberg2016.yaml"
ROLE = "dnibench.role"                     # the runner's tag for parent/child runs
TAG_COLUMNS = ["suite", "profile", "task", "model", "method", "seed", "device", "config_hash", "git_commit"]
SHARED_FROM = "shared_from"                # the runner's tag on an alias: the run id that trained it

# How the report names things: the paper's column names and model names.
DISPLAY_NAMES = {"nobprop": "No Bprop", "bprop": "Bprop", "dni": "DNI", "cdni": "cDNI",
                 "unlock_dni": "DNI, complete unlock", "unlock_cdni": "cDNI, complete unlock"}


def display_name(name: str) -> str:
    """'cdni' -> 'cDNI', 'fcn4' -> 'FCN-4'; anything else unchanged."""
    if name in DISPLAY_NAMES:
        return DISPLAY_NAMES[name]
    for prefix in ("fcn", "cnn"):
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            return f"{prefix.upper()}-{name[len(prefix):]}"
    return name


def parallel_label(method: str, schedule: str, microbatches: str, pipeline: str = "", threads: int = 1) -> str:
    """A parallel run's method as the report names it: 'Bprop locked', 'Bprop pipelined 1F1B M=4', 'cDNI, 2 threads'."""
    name = display_name(method)
    if schedule == "pipelined":
        kind = "pipelined 1F1B" if pipeline == "1f1b" else "pipelined"      # GPipe unless it says 1F1B
        name = f"{name} {kind} M={microbatches}" if microbatches else f"{name} {kind}"
    elif schedule == "locked":
        name = f"{name} locked"
    return f"{name}, {threads} threads" if threads > 1 else name


def parallel_run_label(run) -> str:
    """``parallel_label`` of one run (a row of ``load_runs``) from its logged params; a param it did not log is
    the default (one thread, no schedule named). The report's parallel section and every curve, table and
    ``dnibench compare`` row name a parallel run through this one reading."""
    def param(name: str) -> str:
        value = run.get(f"param.{name}")
        return "" if value is None or pd.isna(value) else str(value)
    threads = pd.to_numeric(param("threads"), errors="coerce")
    return parallel_label(run["method"], param("schedule"), param("microbatches"), param("pipeline_schedule"),
                          1 if pd.isna(threads) else int(threads))


def load_published(path: Path = PUBLISHED_PATH) -> dict:
    """The paper's numbers (the one data file that holds them), parsed."""
    try:
        published = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise DnibenchError(f"{path}: cannot read the published numbers: {err}") from None
    if not isinstance(published, dict) or "tolerance_points" not in published or "status" not in published:
        raise DnibenchError(f"{path}: expected a mapping with 'status' and 'tolerance_points'")
    return published


def _store_missing(tracking_uri: str) -> bool:
    """A local sqlite store that does not exist has no runs; opening it would create an empty database."""
    path = store.sqlite_path(tracking_uri)      # without the URI's query string
    return path is not None and not path.exists()


def open_client(tracking_uri: str) -> MlflowClient | None:
    """A client on the checked store (a bad URI or a damaged store: one-line DnibenchError), or None when
    the sqlite store does not exist (nothing is created). Runs left RUNNING by a dead process on this
    host are marked KILLED first, where the store is writable, so the report shows them as they are."""
    client = store.open_store(tracking_uri, write=False)
    path = store.sqlite_path(tracking_uri)
    if client is not None and (path is None or os.access(path, os.W_OK)):
        store.mark_dead_runs_killed(client)
    return client


def _empty_runs() -> pd.DataFrame:
    return pd.DataFrame(columns=["run_id", "experiment", *TAG_COLUMNS, SHARED_FROM, *DATA_TAGS, "start_time", "variant"])


def load_runs(tracking_uri: str, client: MlflowClient | None = None) -> pd.DataFrame:
    """One row per FINISHED child run (the latest per config_hash) of every experiment in the store.

    Columns: run_id, experiment, the runner's tags (suite, profile, task, model, method, seed (int),
    device, config_hash, git_commit), shared_from (an alias: the run that trained it, else None), the data it
    trained on (``data.source``, ``data.train``, ``data.test``; None for generated tasks and older runs),
    start_time, ``param.<flat key>`` (strings as logged),
    ``metric.<key>`` (the latest value), and ``variant``: a hash of every param but the seed, so the
    seeds of one configuration share it (a suite edited between invocations gives a new variant).
    """
    if _store_missing(tracking_uri):
        return _empty_runs()
    client = client or open_client(tracking_uri)
    if client is None:
        return _empty_runs()
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    rows, token = [], None
    while experiments:
        page = client.search_runs(list(experiments), filter_string=f"tags.`{ROLE}` = 'child' and "
                                  "attributes.status = 'FINISHED'", max_results=10_000, page_token=token)
        for run in page:
            tags = run.data.tags
            row = {"run_id": run.info.run_id, "experiment": experiments[run.info.experiment_id],
                   **{key: tags.get(key) for key in TAG_COLUMNS}, SHARED_FROM: tags.get(SHARED_FROM),
                   **{key: tags.get(key) for key in DATA_TAGS}, "start_time": run.info.start_time}
            row.update({f"param.{k}": v for k, v in run.data.params.items()})
            row.update({f"metric.{k}": v for k, v in run.data.metrics.items()})
            rows.append(row)
        token = page.token
        if not token:
            break
    if not rows:
        return _empty_runs()
    runs = pd.DataFrame(rows).sort_values("start_time", kind="stable")
    runs = runs.drop_duplicates("config_hash", keep="last")       # a --force rerun replaces the old run
    runs["seed"] = runs["seed"].astype(int)
    params = sorted(c for c in runs.columns if c.startswith("param.") and c != "param.seed")
    runs["variant"] = [hashlib.sha256(repr(tuple(row)).encode()).hexdigest()[:12]
                       for row in runs[params].itertuples(index=False)]
    return runs.sort_values(["suite", "profile", "model", "method", "seed"]).reset_index(drop=True)


FAILURE_TAG = store.FAILURE_TAG            # the runner's tag on a FAILED child run: why it failed


def load_failed_runs(tracking_uri: str, client: MlflowClient | None = None) -> pd.DataFrame:
    """One row per FAILED or KILLED child run (the latest per config_hash) whose configuration has no
    FINISHED run: a diverged or interrupted run is not a result, but the report and ``compare`` say it
    was tried and why it stopped. Columns: run_id, experiment, the runner's tags, start_time, status,
    reason. ``.attrs["status_counts"]``: every child run of the store counted by status."""
    columns = ["run_id", "experiment", *TAG_COLUMNS, "start_time", "status", "reason"]

    def empty(counts: dict | None = None) -> pd.DataFrame:
        frame = pd.DataFrame(columns=columns)
        frame.attrs["status_counts"] = counts or {}
        return frame

    if _store_missing(tracking_uri):
        return empty()
    client = client or open_client(tracking_uri)
    if client is None:
        return empty()
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    if not experiments:
        return empty()

    def search(status: str) -> list:
        found, token = [], None
        while True:
            page = client.search_runs(list(experiments), filter_string=f"tags.`{ROLE}` = 'child' and "
                                      f"attributes.status = '{status}'", max_results=10_000, page_token=token)
            found += list(page)
            token = page.token
            if not token:
                return found

    by_status = {status: search(status) for status in ("FINISHED", "FAILED", "KILLED", "RUNNING", "SCHEDULED")}
    counts = {status: len(found) for status, found in by_status.items() if found}
    finished = {run.data.tags.get("config_hash") for run in by_status["FINISHED"]}
    rows = [{"run_id": run.info.run_id, "experiment": experiments[run.info.experiment_id],
             **{key: run.data.tags.get(key) for key in TAG_COLUMNS}, "start_time": run.info.start_time,
             "status": run.info.status, "reason": run.data.tags.get(FAILURE_TAG, "no reason recorded")}
            for run in by_status["FAILED"] + by_status["KILLED"] if run.data.tags.get("config_hash") not in finished]
    if not rows:
        return empty(counts)
    failed = pd.DataFrame(rows, columns=columns).sort_values("start_time", kind="stable")
    failed = failed.drop_duplicates("config_hash", keep="last")
    failed = failed.sort_values(["suite", "profile", "model", "method", "seed"]).reset_index(drop=True)
    failed.attrs["status_counts"] = counts
    return failed


def latest_variant(runs: pd.DataFrame, by: list[str]) -> tuple[pd.DataFrame, int]:
    """Within each group of ``by`` (e.g. one table cell), keep only the seeds of the configuration
    run last, so a mean never mixes an old schedule with a new one. Returns (kept, number dropped)."""
    if runs.empty:
        return runs, 0
    latest = runs.sort_values("start_time", kind="stable").groupby(by, sort=False)["variant"].last()
    keep = runs.join(latest.rename("latest_variant"), on=by)
    kept = runs[keep["variant"] == keep["latest_variant"]]
    return kept, len(runs) - len(kept)


def load_suites(suites_dir: Path) -> dict[str, Suite]:
    """Every suite file under suites_dir, by suite name (for departures and skip reasons)."""
    suites_dir = Path(suites_dir)
    if not suites_dir.is_dir():
        return {}
    suites = (load_suite(path) for path in sorted(suites_dir.glob("*.y*ml")))
    return {suite.name: suite for suite in suites}


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pandas' to_markdown needs `tabulate`, not a dependency)."""
    def cell(value) -> str:
        text = "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    header = [cell(c) for c in df.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


MANIFEST = ".manifest"          # in the report folder: the files `dnibench report` wrote (for `dnibench clean`)


def safe_file_name(name: str) -> str:
    """A file name with no folder in it: every character but letters, digits, '.', '_', '-' becomes
    '_', a leading '.' too (no hidden files, no '..'), at most 150 characters."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", str(name))
    safe = re.sub(r"^\.", "_", safe)[:150]
    return safe or "_"


def record_generated(out: Path, paths: list[Path]) -> Path:
    """Add ``paths`` (files under ``out``) to out/.manifest, so a clean deletes what dnibench wrote
    and nothing else (reports/README.md's tracked sibling files, a user's notes)."""
    manifest = Path(out) / MANIFEST
    names = set(manifest.read_text().split("\n")) if manifest.is_file() else set()
    for path in paths:
        try:
            names.add(Path(path).resolve().relative_to(Path(out).resolve()).as_posix())
        except ValueError:
            continue
    manifest.write_text("".join(f"{n}\n" for n in sorted(n for n in names if n)))
    return manifest


@dataclass
class ReportContext:
    tracking_uri: str
    out: Path
    runs: pd.DataFrame
    published: dict
    suites: dict[str, Suite]
    generated_at: str = ""
    failed: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["run_id", *TAG_COLUMNS, "status", "reason"]))
    _client: MlflowClient | None = field(default=None, repr=False)
    _histories: dict[tuple[str, str], pd.DataFrame] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, tracking_uri: str, out: Path, suites_dir: Path = Path("suites")) -> ReportContext:
        # Reports are rendered to files, never shown: a headless backend, whatever the machine has.
        matplotlib.use("Agg")
        out = Path(out)
        client = open_client(tracking_uri)      # a bad URI or damaged store: nothing written, not even out/
        out.mkdir(parents=True, exist_ok=True)
        return cls(tracking_uri=tracking_uri, out=out, runs=load_runs(tracking_uri, client),
                   published=load_published(), suites=load_suites(suites_dir),
                   generated_at=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                   failed=load_failed_runs(tracking_uri, client), _client=client)

    def history(self, run_id: str, key: str) -> pd.DataFrame:
        """A metric's full history: DataFrame[step, value, timestamp], sorted by step (cached). An alias
        logged only final values: its history is the run it was shared from."""
        run_id = self.trained_by(run_id)
        if (run_id, key) not in self._histories:
            points = self._client.get_metric_history(run_id, key) if self._client else []
            frame = pd.DataFrame([(m.step, m.value, m.timestamp) for m in points],
                                 columns=["step", "value", "timestamp"])
            self._histories[(run_id, key)] = frame.sort_values("step", kind="stable").reset_index(drop=True)
        return self._histories[(run_id, key)]

    def trained_by(self, run_id: str) -> str:
        """The run that trained ``run_id``: itself, or for an alias its ``shared_from``."""
        if SHARED_FROM not in self.runs:
            return run_id
        origin = self.runs.loc[self.runs["run_id"] == run_id, SHARED_FROM]
        return origin.iloc[0] if len(origin) and isinstance(origin.iloc[0], str) and origin.iloc[0] else run_id

    def path(self, name: str) -> Path:
        """out/<name> with ``name`` made a safe file name: stems are built from suite, profile and
        model names read from the store, which is untrusted input (a shared tracking server); a name
        like "../../x" must never write outside ``out``."""
        return self.out / safe_file_name(name)

    def save_figure(self, fig, stem: str) -> list[Path]:
        """Write out/<stem>.png (150 dpi) and out/<stem>.pdf, then close the figure."""
        import matplotlib.pyplot as plt

        paths = [self.path(f"{stem}.png"), self.path(f"{stem}.pdf")]
        fig.savefig(paths[0], dpi=150, bbox_inches="tight")
        fig.savefig(paths[1], bbox_inches="tight")
        plt.close(fig)
        return paths

    def write_table(self, df: pd.DataFrame, stem: str) -> list[Path]:
        """Write out/<stem>.md, .csv and .tex from the same DataFrame (its index is not written)."""
        paths = [self.path(f"{stem}.md"), self.path(f"{stem}.csv"), self.path(f"{stem}.tex")]
        paths[0].write_text(markdown_table(df))
        df.to_csv(paths[1], index=False)
        latex = df.to_latex(index=False, escape=True, na_rep="")
        paths[2].write_text(latex.replace("±", r"$\pm$"))
        return paths

    def write_index(self, sections: list) -> list[Path]:
        """Write out/README.md (title, provenance, each section with links to its files); returns
        every file the report wrote, README last."""
        runs = self.runs
        lines = ["# dnibench report", "",
                 f"Generated {self.generated_at} from the MLflow store `{self.tracking_uri}` (reads MLflow only; "
                 "`dnibench report` re-renders it).", ""]
        if runs.empty:
            lines += [f"**No finished runs in `{self.tracking_uri}`.** Run a suite first, e.g. "
                      "`dnibench run suites/mnist_ff.yaml --profile smoke`.", ""]
        else:
            per = runs.groupby(["suite", "profile"]).size()
            listing = ", ".join(f"{suite} at {profile} ({n})" for (suite, profile), n in per.items())
            commits = ", ".join(sorted(c[:10] for c in runs["git_commit"].dropna().unique()))
            lines += [f"{len(runs)} finished runs: {listing}. Code: git {commits}. "
                      f"Devices: {', '.join(sorted(runs['device'].dropna().unique()))}.", ""]
        counts = self.failed.attrs.get("status_counts", {})
        if set(counts) - {"FINISHED"}:          # any run that did not finish: say how many, by status
            lines += ["Child runs in the store by status: "
                      + ", ".join(f"{status} {n}" for status, n in sorted(counts.items())) + ".", ""]
        if not self.failed.empty:
            lines += [f"**{len(self.failed)} run(s) FAILED or KILLED** and are left out of every table: see "
                      "[Failed runs](#failed-runs).", ""]
        lines += [f"Published values come from `dnibench/published/{PUBLISHED_PATH.name}`, "
                  f"{self.published['status']}.", ""]
        files: list[Path] = []
        for section in sections:
            lines += [f"## {section.title}", "", section.body.rstrip(), ""]
            if section.files:
                links = " · ".join(f"[{p.name}]({self._relative(p)})" for p in section.files)
                lines += [f"Files: {links}", ""]
            files += list(section.files)
        readme = self.out / "README.md"
        readme.write_text("\n".join(lines))
        return files + [readme]

    def _relative(self, path: Path) -> str:
        try:
            return Path(path).resolve().relative_to(self.out.resolve()).as_posix()
        except ValueError:
            return Path(path).as_posix()
