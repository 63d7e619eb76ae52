"""The report's store readers (report/context.py) on a store written by hand with MLflow's own client: which runs
load_runs and load_failed_runs keep, the columns they give, the variant hash, and which run an alias points to.
No training: every run here is a few tags, params and metrics, so each rule is checked on runs built to test it."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from dnibench.report.context import (DATA_TAGS, ROLE, SHARED_FROM, TAG_COLUMNS, ReportContext, latest_variant,
                                     load_failed_runs, load_runs)


# load_runs' own columns, in order, before the params and metrics
RUN_COLUMNS = ["run_id", "experiment", *TAG_COLUMNS, SHARED_FROM, *DATA_TAGS, "start_time", "variant"]


class Store:
    def __init__(self, tmp_path):
        self.uri = f"sqlite:///{tmp_path}/runs.db"
        self.client = MlflowClient(self.uri)
        self.experiments = {}

    def run(self, *, suite="s", method="dni", seed=0, config_hash=None, params=None, metrics=None, status="FINISHED",
            role="child", start=0, model="fcn3", profile="smoke", tags=None) -> str:
        if suite not in self.experiments:
            self.experiments[suite] = self.client.create_experiment(suite)
        base = {ROLE: role, "suite": suite, "profile": profile, "task": "mnist", "model": model, "method": method,
                "seed": str(seed), "device": "cpu", "config_hash": config_hash or f"{suite}-{method}-{seed}-{model}",
                "git_commit": "c0ffee"}
        run = self.client.create_run(self.experiments[suite], start_time=start, tags={**base, **(tags or {})})
        run_id = run.info.run_id
        for key, value in {"lr": "0.001", "seed": str(seed), **(params or {})}.items():
            self.client.log_param(run_id, key, value)
        for key, value in (metrics or {"final_test_error": 5.0}).items():
            self.client.log_metric(run_id, key, value)
        if status != "RUNNING":
            self.client.set_terminated(run_id, status)
        return run_id


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path)


def test_load_runs_keeps_finished_child_runs_the_latest_per_configuration(store):
    first = store.run(seed=0, config_hash="h0", metrics={"final_test_error": 9.0}, start=100)
    rerun = store.run(seed=0, config_hash="h0", metrics={"final_test_error": 4.0}, start=200)   # a --force rerun
    store.run(seed=1, config_hash="h1", status="FAILED", start=300)
    store.run(seed=2, config_hash="h2", status="KILLED", start=310)
    store.run(seed=3, config_hash="h3", status="RUNNING", start=320)
    store.run(seed=4, config_hash="h4", role="parent", start=330)
    other = store.run(suite="t", seed=5, config_hash="h5", start=50)
    runs = load_runs(store.uri)
    assert sorted(runs["run_id"]) == sorted([rerun, other]) and first not in set(runs["run_id"])
    row = runs.set_index("run_id").loc[rerun]
    assert row["metric.final_test_error"] == 4.0 and row["experiment"] == "s" and row["start_time"] == 200
    assert runs.set_index("run_id").loc[other, "experiment"] == "t"


def test_load_runs_columns_types_and_order(store):
    store.run(method="dni", seed=1, start=1, tags={"data.source": "wheel", "data.train": "60000", "data.test": "10000"})
    store.run(method="dni", seed=0, start=2)
    store.run(method="bprop", seed=0, start=3, tags={SHARED_FROM: "abc"})
    store.run(suite="a", method="dni", seed=0, start=4)
    runs = load_runs(store.uri)
    assert list(zip(runs["suite"], runs["method"], runs["seed"])) == [("a", "dni", 0), ("s", "bprop", 0),
                                                                      ("s", "dni", 0), ("s", "dni", 1)]
    assert runs["seed"].dtype.kind == "i" and list(runs.index) == [0, 1, 2, 3]
    assert runs["param.lr"].tolist() == ["0.001"] * 4                       # params as logged: strings
    text = lambda column: [v if isinstance(v, str) else None for v in runs[column]]   # noqa: E731 (absent: NaN)
    assert text(SHARED_FROM) == [None, "abc", None, None]
    assert text("data.source") == [None, None, None, "wheel"] and runs["data.train"].iloc[3] == "60000"
    assert runs["data.test"].iloc[3] == "10000" and runs["git_commit"].tolist() == ["c0ffee"] * 4
    fixed = [c for c in runs.columns if not c.startswith(("param.", "metric."))]
    assert fixed == RUN_COLUMNS


def test_load_runs_on_no_runs_has_the_columns_of_a_store_with_runs(store, tmp_path):
    missing = load_runs(f"sqlite:///{tmp_path}/absent.db")
    assert missing.empty and not (tmp_path / "absent.db").exists()          # nothing created
    store.run(role="parent")                                                 # a store with no child run
    for empty in (missing, load_runs(store.uri)):
        assert list(empty.columns) == RUN_COLUMNS


def test_variant_is_shared_by_the_seeds_of_one_configuration(store):
    store.run(seed=0, params={"synth_width": "8"}, start=1)
    store.run(seed=1, params={"synth_width": "8"}, start=2)
    store.run(seed=2, params={"synth_width": "16"}, start=3)
    store.run(seed=3, params={"synth_width": "8", "extra": "1"}, start=4)
    variant = load_runs(store.uri).set_index("seed")["variant"]
    assert variant[0] == variant[1] and len({variant[0], variant[2], variant[3]}) == 3
    assert all(isinstance(v, str) and len(v) == 12 for v in variant)


def test_latest_variant_keeps_the_configuration_run_last_per_group():
    runs = pd.DataFrame({"cell": ["a", "a", "a", "b", "b"], "variant": ["old", "new", "new", "x", "y"],
                         "start_time": [1, 5, 6, 9, 2], "seed": [0, 0, 1, 0, 1]})
    kept, dropped = latest_variant(runs, ["cell"])
    assert dropped == 2 and kept["variant"].tolist() == ["new", "new", "x"] and kept["seed"].tolist() == [0, 1, 0]
    empty = runs.iloc[:0]
    assert latest_variant(empty, ["cell"])[1] == 0 and latest_variant(empty, ["cell"])[0] is empty


def test_load_failed_runs_lists_what_never_finished_with_its_reason(store, tmp_path):
    store.run(seed=0, config_hash="h0", status="FAILED", start=1, tags={"failure": "diverged: loss nan"})
    store.run(seed=0, config_hash="h0", status="FINISHED", start=2)         # tried again and finished: not listed
    store.run(seed=1, config_hash="h1", status="FAILED", start=3, tags={"failure": "first try"})
    late = store.run(seed=1, config_hash="h1", status="KILLED", start=4)     # the latest try of h1, no reason
    store.run(seed=2, config_hash="h2", status="RUNNING", start=5)
    store.run(seed=3, config_hash="h3", status="FAILED", role="parent", start=6)
    store.run(suite="a", seed=4, config_hash="h4", status="FAILED", start=7, tags={"failure": "x"})
    failed = load_failed_runs(store.uri)
    assert failed["config_hash"].tolist() == ["h4", "h1"]                    # sorted by suite: a before s
    row = failed.set_index("config_hash").loc["h1"]
    assert (row["run_id"], row["status"], row["reason"], row["start_time"]) == (late, "KILLED", "no reason recorded", 4)
    assert failed.set_index("config_hash").loc["h4", "reason"] == "x" and list(failed.index) == [0, 1]
    assert failed.attrs["status_counts"] == {"FINISHED": 1, "FAILED": 3, "KILLED": 1, "RUNNING": 1}
    assert list(failed.columns) == ["run_id", "experiment", *TAG_COLUMNS, "start_time", "status", "reason"]
    missing = load_failed_runs(f"sqlite:///{tmp_path}/absent.db")
    assert missing.empty and missing.attrs["status_counts"] == {} and list(missing.columns) == list(failed.columns)


def test_an_alias_is_trained_by_its_original(tmp_path):
    runs = pd.DataFrame({"run_id": ["orig", "alias", "blank"], SHARED_FROM: [None, "orig", ""]})
    ctx = ReportContext(runs=runs, failed=runs.iloc[:0], published={}, suites={}, out=tmp_path, tracking_uri="")
    assert [ctx.trained_by(r) for r in ("orig", "alias", "blank", "unknown")] == ["orig", "orig", "blank", "unknown"]
    without = ReportContext(runs=runs.drop(columns=[SHARED_FROM]), failed=runs.iloc[:0], published={}, suites={},
                            out=tmp_path, tracking_uri="")
    assert without.trained_by("alias") == "alias"


def test_a_query_string_on_the_sqlite_uri_names_the_same_store(store, tmp_path):
    """sqlite:///PATH?timeout=30 is PATH (MLflow passes the query to the driver): its runs are read, not taken
    for a missing store's none, and its artifacts go where PATH's would."""
    from dnibench.runner import artifact_root
    finished = store.run(seed=0, config_hash="h0")
    failed = store.run(seed=1, config_hash="h1", status="FAILED")
    uri = store.uri + "?timeout=30"
    assert list(load_runs(uri)["run_id"]) == [finished] and list(load_failed_runs(uri)["run_id"]) == [failed]
    assert artifact_root(f"sqlite:///{tmp_path}/m.v2.db?timeout=30") == (tmp_path / "m.v2-artifacts").as_uri()
    assert artifact_root("sqlite:///m.db") == (Path.cwd() / "m-artifacts").as_uri()
    assert artifact_root("http://127.0.0.1:5000") is None
