"""A run is identified by its configuration, not by its suite (issue 9): a computation two suites plan is
trained once; the later suite logs an alias (FINISHED, the original's final metrics, ``shared_from``) whose
curves the report reads from the original. Tiny fake MNIST, 4 steps per run."""
import contextlib
import io

import pytest
from mlflow.tracking import MlflowClient

from dnibench import resume
from dnibench.cli import main
from dnibench.compare import compare
from dnibench.report import write_report
from dnibench.report.context import ReportContext, load_runs
from dnibench.runner import IDENTITY, ROLE, SHARED_FROM, SHARED_FROM_SUITE
from dnibench.suite import load_suite, plan

TRAIN = "train: {steps: 4, batch_size: 8, lr: 1.0e-3, lr_decay_at: [], eval_every: 2, log_every: 2}"
# Named as the real suites so the report's FF and p_update sections render them.
FF = f"""
name: mnist_ff
task: mnist
{TRAIN}
profiles: {{smoke: {{}}, quick: {{}}, paper: {{}}}}
entries:
  - model: fcn3
    method: [bprop, cdni]
"""
# bprop at p_update 1.0 is mnist_ff's bprop (p_update left at its default there); the cdni entry differs
# from mnist_ff's in one setting (lr), so it is not shared.
ASYNC = f"""
name: mnist_async
task: mnist
{TRAIN}
profiles: {{smoke: {{}}, quick: {{}}, paper: {{}}}}
entries:
  - model: fcn3
    method: bprop
    sweep: {{p_update: [0.5, 1.0]}}
  - model: fcn3
    method: cdni
    train: {{lr: 2.0e-3}}
"""

# A third suite planning the same bprop run: its alias points at the run that trained it, not at an alias.
THIRD = FF.replace("name: mnist_ff", "name: third").replace("[bprop, cdni]", "bprop")


@pytest.fixture
def suites(tmp_path, fake_mnist_data_dir, monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    folder = tmp_path / "suites"
    folder.mkdir()
    (folder / "mnist_ff.yaml").write_text(FF)
    (folder / "mnist_async.yaml").write_text(ASYNC)
    (folder / "third.yaml").write_text(THIRD)
    return folder, f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}", fake_mnist_data_dir


@pytest.fixture
def trainings(monkeypatch):
    """How many times a run was actually trained (in this process: --jobs 1)."""
    import dnibench.train as train
    real, calls = train.train_ff, []

    def counted(spec, *args, **kwargs):
        calls.append(spec.suite)
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(train, "train_ff", counted)
    return calls


def run(folder, uri, data_dir, *names, extra=()):
    args = ["run", *(str(folder / f"{n}.yaml") for n in names), "--profile", "smoke", "--device", "cpu",
            "--tracking-uri", uri, "--data-dir", str(data_dir), "--no-progress", *extra]
    with contextlib.redirect_stdout(io.StringIO()) as out:
        rc = main(args)
    return rc, out.getvalue()


def children(uri):
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string=f"tags.`{ROLE}` = 'child'")
    return client, runs


def test_identity_ignores_the_suite_and_defaults_are_canonical(tmp_path):
    (tmp_path / "a.yaml").write_text(FF.replace("[bprop, cdni]", "[bprop, dni]"))
    (tmp_path / "b.yaml").write_text(ASYNC.replace("name: mnist_async", "name: other") + """
  - model: fcn3
    method: dni
    sweep: {delay: [0, 3]}
""")
    a = {s.method: s for s in plan(load_suite(tmp_path / "a.yaml"), "smoke")}
    b = plan(load_suite(tmp_path / "b.yaml"), "smoke")
    p05, p10, cdni, delay0, delay3 = b
    assert (p05.method_args["p_update"], p10.method_args["p_update"], delay3.method_args["delay"]) == (0.5, 1.0, 3)
    # no p_update given == p_update 1.0 given; no delay == delay 0: one computation, two suites
    assert a["bprop"].identity == p10.identity and a["bprop"].config_hash != p10.config_hash
    assert a["dni"].identity == delay0.identity and a["dni"].config_hash != delay0.config_hash
    assert len({a["bprop"].identity, a["dni"].identity, p05.identity, cdni.identity, delay3.identity}) == 5
    assert plan(load_suite(tmp_path / "a.yaml"), "smoke", device="cuda")[0].identity != a["bprop"].identity


def test_originals_are_trained_runs_latest_first_and_known_by_hash_before_identities_were_tagged():
    from types import SimpleNamespace as NS

    from dnibench.runner import originals

    def run(run_id, start, **tags):
        return NS(info=NS(run_id=run_id, start_time=start), data=NS(tags=tags))
    runs = [run("new", 3, identity="i1"), run("old", 1, identity="i1"),
            run("alias", 5, identity="i1", shared_from="old"),                 # an alias is never an original
            run("untagged", 2, config_hash="h2"), run("stranger", 4, config_hash="h3")]
    found = originals(runs, {"h2": "i2"})
    assert {k: v.info.run_id for k, v in found.items()} == {"i1": "new", "i2": "untagged"}


def test_two_suites_train_a_shared_configuration_once(suites, trainings, tmp_path):
    folder, uri, data_dir = suites
    rc, out = run(folder, uri, data_dir, "mnist_ff", "mnist_async", "third")
    assert rc == 0 and "dnibench: 4 run(s) done, 2 shared, 0 already finished (skipped)" in out, out
    assert sorted(trainings) == ["mnist_async", "mnist_async", "mnist_ff", "mnist_ff"]

    client, runs = children(uri)
    assert len(runs) == 6 and all(r.info.status == "FINISHED" for r in runs)
    aliases = {r.data.tags["suite"]: r for r in runs if SHARED_FROM in r.data.tags}
    assert sorted(aliases) == ["mnist_async", "third"]
    alias = aliases["mnist_async"]
    original = client.get_run(alias.data.tags[SHARED_FROM])
    assert aliases["third"].data.tags[SHARED_FROM] == original.info.run_id
    at, ot = alias.data.tags, original.data.tags
    assert (ot["suite"], ot["method"], at[SHARED_FROM_SUITE]) == ("mnist_ff", "bprop", "mnist_ff")
    assert at["suite"] == "mnist_async" and at[IDENTITY] == ot[IDENTITY] and at["config_hash"] != ot["config_hash"]
    assert at["mlflow.parentRunId"] != ot["mlflow.parentRunId"]        # a child of mnist_async's parent run
    assert alias.data.metrics == original.data.metrics and len(alias.data.metrics) > 10
    assert alias.data.params["suite"] == "mnist_async" and alias.data.params["method_args.p_update"] == "1.0"
    assert {k: v for k, v in alias.data.params.items() if k != "suite"} == \
        {k: v for k, v in original.data.params.items() if k != "suite"}
    # no histories copied: the alias holds the final value; the report reads the original's curve
    assert [m.step for m in client.get_metric_history(alias.info.run_id, "test_error")] == [4]
    ctx = ReportContext.build(uri, tmp_path / "reports", folder)
    curve = ctx.history(alias.info.run_id, "test_error")
    assert curve["step"].tolist() == [2, 4]
    assert curve["value"].tolist() == [m.value for m in sorted(
        client.get_metric_history(original.info.run_id, "test_error"), key=lambda m: m.step)]
    assert curve["value"].iloc[-1] == alias.data.metrics["test_error"]

    # Each suite counts the run once, in its own suite; report and compare render both.
    table = load_runs(uri)
    assert table.groupby("suite").size().to_dict() == {"mnist_async": 3, "mnist_ff": 2, "third": 1}
    assert table.loc[table["run_id"] == alias.info.run_id, "suite"].tolist() == ["mnist_async"]
    assert compare(uri, "mnist_async")[0]["seeds"].tolist() == [1, 1, 1]
    assert len(compare(uri, "mnist_ff")[0]) == 2
    written = {p.name for p in write_report(uri, tmp_path / "reports", suites_dir=folder)}
    assert {"async_curves_smoke.png", "README.md"} <= written

    # A resume does nothing, and its fast path (no torch) counts the alias as FINISHED.
    rc, out = run(folder, uri, data_dir, "mnist_ff", "mnist_async", "third")
    assert rc == 0 and "dnibench: 0 run(s) done, 6 already finished (skipped)" in out, out
    paths = [str(folder / f"{name}.yaml") for name in ("mnist_ff", "mnist_async", "third")]
    assert resume.nothing_left(paths, "smoke", "cpu", None, uri, data_dir).skipped == 6
    assert len(trainings) == 4 and len(children(uri)[1]) == 6

    # --force trains every run again and makes no alias.
    rc, out = run(folder, uri, data_dir, "mnist_ff", "mnist_async", "third", extra=["--force"])
    assert rc == 0 and "dnibench: 6 run(s) done, 0 already finished (skipped)" in out, out
    assert len(trainings) == 10
    runs = children(uri)[1]
    assert len(runs) == 12 and sum(SHARED_FROM in r.data.tags for r in runs) == 2


def test_under_jobs_the_later_suites_wait_for_the_earlier_ones_run_and_share_it(suites):
    """README: within one invocation the later suite waits for the earlier one's run, also with --jobs 2 (each
    suite's runs end on the workers before the next suite plans its aliases): trained once, aliased twice."""
    import os
    folder, uri, data_dir = suites
    rc, out = run(folder, uri, data_dir, "mnist_ff", "mnist_async", "third", extra=["--jobs", "2"])
    assert rc == 0 and "dnibench: 4 run(s) done, 2 shared, 0 already finished (skipped)" in out, out
    _, runs = children(uri)
    assert len(runs) == 6 and all(r.info.status == "FINISHED" for r in runs)
    trained = [r for r in runs if SHARED_FROM not in r.data.tags]
    assert sorted(r.data.tags["suite"] for r in trained) == ["mnist_async", "mnist_async", "mnist_ff", "mnist_ff"]
    assert all(r.data.tags["dnibench.owner.pid"] != str(os.getpid()) for r in trained)   # on the workers
    original = next(r for r in trained if (r.data.tags["suite"], r.data.tags["method"]) == ("mnist_ff", "bprop"))
    assert sorted((r.data.tags["suite"], r.data.tags[SHARED_FROM]) for r in runs if SHARED_FROM in r.data.tags) == [
        ("mnist_async", original.info.run_id), ("third", original.info.run_id)]


def test_a_failed_original_is_not_shared_the_later_suite_trains_it(suites, trainings):
    folder, uri, data_dir = suites
    # bprop at lr 1e30 diverges (tests/test_divergence.py): mnist_ff's run FAILS, so mnist_async's run of
    # the same configuration is trained, not aliased.
    (folder / "mnist_ff.yaml").write_text(FF.replace("lr: 1.0e-3", "lr: 1.0e30").replace("[bprop, cdni]", "bprop"))
    (folder / "mnist_async.yaml").write_text(
        ASYNC.replace("lr: 1.0e-3", "lr: 1.0e30").replace("[0.5, 1.0]", "[1.0]").split("  - model: fcn3\n    method: cdni")[0])
    rc, out = run(folder, uri, data_dir, "mnist_ff", "mnist_async")
    assert rc == 1 and "dnibench: 0 run(s) done, 0 already finished (skipped), 2 FAILED" in out, out
    assert trainings == ["mnist_ff", "mnist_async"]
    runs = children(uri)[1]
    assert sorted(r.info.status for r in runs) == ["FAILED", "FAILED"]
    assert not any(SHARED_FROM in r.data.tags for r in runs)


def test_shards_never_lose_a_shared_run(suites, trainings):
    """Shard 0 trains mnist_ff's bprop; shard 1, a later invocation, aliases mnist_async's p_update 1.0 run
    (run the other way round it would train it twice: never lost); a full rerun finds nothing left."""
    folder, uri, data_dir = suites
    rc, out = run(folder, uri, data_dir, "mnist_ff", "mnist_async", extra=["--shard", "0/2"])
    assert rc == 0 and "dnibench: 3 run(s) done, 0 already finished (skipped)" in out, out
    rc, out = run(folder, uri, data_dir, "mnist_ff", "mnist_async", extra=["--shard", "1/2"])
    assert rc == 0 and "dnibench: 1 run(s) done, 1 shared, 0 already finished (skipped)" in out, out
    rc, out = run(folder, uri, data_dir, "mnist_ff", "mnist_async")
    assert rc == 0 and "dnibench: 0 run(s) done, 5 already finished (skipped)" in out, out
    assert len(trainings) == 4
