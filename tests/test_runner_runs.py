"""The runner's MLflow records, in process: a suite's parent run (its name, tags, environment and the variant code
that ran, and how it ends) and its children's (tags, params, status and failure tag, rows kept), with real training
on tiny fake MNIST, and the hand-off to a ``--jobs`` pool. test_runner.py runs these paths through real processes
(the CLI, torchrun, SIGTERM), which a mutation tester does not follow."""
import json
import re
from types import SimpleNamespace as NS

import pytest
import torch
from mlflow.tracking import MlflowClient

from dnibench import runner, store
from dnibench.errors import Diverged
from dnibench.methods import REGISTRY
from dnibench.suite import load_suite, plan
from dnibench.tracking import installed_packages, machine_description

TRAIN = "train: {steps: 2, batch_size: 8, lr: 1.0e-3, lr_decay_at: [], eval_every: 2, log_every: 1}"
SUITE = f"""
name: tiny
task: mnist
{TRAIN}
profiles: {{smoke: {{}}, quick: {{}}, paper: {{}}}}
entries:
  - model: fcn3
    method: [bprop, frozen_first.py]
"""
# A second suite planning tiny's bprop again: an alias in its own suite
AGAIN = SUITE.replace("name: tiny", "name: again").replace("[bprop, frozen_first.py]", "bprop")
VARIANT = '''
from dnibench.methods import register
from dnibench.methods.bprop import Backprop


@register
class FrozenFirst(Backprop):
    name = "frozen_first"
    description = "backprop with the first stage frozen"

    def apply_update(self, index):
        if index == 0:
            self.stage_optimizers[0].zero_grad(set_to_none=True)
            return
        super().apply_update(index)
'''


@pytest.fixture
def folder(tmp_path, monkeypatch, fake_mnist_data_dir):
    for name in ("WORLD_SIZE", "RANK", "MLFLOW_TRACKING_URI", "DNIBENCH_JOBS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    before = dict(REGISTRY)
    (tmp_path / "tiny.yaml").write_text(SUITE)
    (tmp_path / "again.yaml").write_text(AGAIN)
    (tmp_path / "frozen_first.py").write_text(VARIANT)
    yield tmp_path
    REGISTRY.clear()
    REGISTRY.update(before)


def uri_of(folder) -> str:
    return f"sqlite:///{folder / 'store' / 'mlflow.db'}"


def run(folder, *names, progress=False):
    uri = uri_of(folder)
    outcome = runner.run_suites([str(folder / f"{n}.yaml") for n in names], "smoke", device="cpu", tracking_uri=uri,
                                data_dir=folder / "data", progress=progress)
    return uri, outcome


def runs_of(uri, role):
    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    return client, client.search_runs(exps, filter_string=f"tags.`{runner.ROLE}` = '{role}'", order_by=["start_time ASC"])


def artifact_text(client, run_id, path) -> str:
    return open(client.download_artifacts(run_id, path), encoding="utf-8").read()


def test_a_suites_parent_run_is_named_tagged_and_keeps_its_environment_and_variant_code(folder):
    """The parent run of each suite: ``<suite>-<profile>-<YYYYmmdd-HHMMSS>``, tagged with its role, suite, profile,
    device and owner, FINISHED, with the machine, the packages, the suite and the variant file that ran
    (README: "the file is stored with the runs in MLflow (method_files/ of the invocation's parent run)"). Its
    children, trained or aliased, name it as their parent."""
    uri, outcome = run(folder, "tiny", "again")
    assert (outcome.ran, outcome.shared, outcome.failed) == (2, 1, 0)
    client, parents = runs_of(uri, "parent")
    assert [p.data.tags["suite"] for p in parents] == ["tiny", "again"]
    me = store.owner_tags()
    for parent, name in zip(parents, ["tiny", "again"]):
        tags = parent.data.tags
        assert re.fullmatch(rf"{name}-smoke-20\d{{6}}-\d{{6}}", parent.info.run_name), parent.info.run_name
        assert parent.info.status == "FINISHED"
        assert (tags["profile"], tags["device"]) == ("smoke", "cpu")
        assert {k: tags[k] for k in me} == me
        machine = json.loads(artifact_text(client, parent.info.run_id, "environment/machine.json"))
        assert machine == json.loads(json.dumps(machine_description(torch.device("cpu")), default=str))
        assert artifact_text(client, parent.info.run_id, "environment/packages.txt") == installed_packages()
        suite = json.loads(artifact_text(client, parent.info.run_id, "environment/suite.json"))
        assert suite == json.loads(json.dumps(load_suite(folder / f"{name}.yaml").model_dump(), default=str))
    tiny, again = parents
    assert [a.path for a in client.list_artifacts(tiny.info.run_id, "method_files")] == ["method_files/frozen_first.py"]
    assert artifact_text(client, tiny.info.run_id, "method_files/frozen_first.py") == VARIANT
    assert client.list_artifacts(again.info.run_id, "method_files") == []     # no variant in that suite
    _, kids = runs_of(uri, "child")
    labels = {s.method: s.label for s in plan(load_suite(folder / "tiny.yaml"), "smoke")}
    assert {k.data.tags["method"]: k.info.run_name for k in kids if k.data.tags["suite"] == "tiny"} == labels
    parent_of = {(k.data.tags["suite"], k.data.tags["method"]): k.data.tags["mlflow.parentRunId"] for k in kids}
    assert parent_of == {("tiny", "bprop"): tiny.info.run_id, ("tiny", "frozen_first"): tiny.info.run_id,
                         ("again", "bprop"): again.info.run_id}


@pytest.fixture
def variant_fails(monkeypatch):
    """The variant's training logs one row at step 1, then raises what the test sets (bprop trains for real)."""
    import dnibench.train as train
    real, raised = train.train_ff, []

    def training(spec, data, log, on_step=lambda n: None):
        if spec.method != "frozen_first":
            return real(spec, data, log, on_step=on_step)
        on_step(1)
        log({"train_loss": 2.5}, 1)
        raise raised[0]
    monkeypatch.setattr(train, "train_ff", training)
    return raised


def statuses(uri):
    client, kids = runs_of(uri, "child")
    _, parents = runs_of(uri, "parent")
    return ({k.data.tags["method"]: (k.info.status, k.data.tags.get("failure")) for k in kids},
            [p.info.status for p in parents], client, kids)


def test_a_diverged_run_ends_failed_with_its_reason_and_the_suite_goes_on(folder, variant_fails):
    variant_fails.append(Diverged(1))
    uri, outcome = run(folder, "tiny")
    children, parents, client, kids = statuses(uri)
    assert children == {"bprop": ("FINISHED", None), "frozen_first": ("FAILED", "diverged at step 1")}
    assert parents == ["FINISHED"]
    label = next(s.label for s in plan(load_suite(folder / "tiny.yaml"), "smoke") if s.method == "frozen_first")
    assert (outcome.ran, outcome.failed, outcome.failures) == (1, 1, [(label, "diverged at step 1")])
    failed = next(k for k in kids if k.data.tags["method"] == "frozen_first")
    assert [(m.step, m.value) for m in client.get_metric_history(failed.info.run_id, "train_loss")] == [(1, 2.5)]


@pytest.mark.parametrize("error, child, parent, failure", [
    (RuntimeError("boom\nsecond line"), "FAILED", "FAILED", "error: RuntimeError: boom"),
    (ValueError(), "FAILED", "FAILED", "error: ValueError: "),
    (RuntimeError("x" * 600), "FAILED", "FAILED", ("error: RuntimeError: " + "x" * 600)[:500]),
    (KeyboardInterrupt(), "KILLED", "KILLED", "interrupted"),
])
def test_a_run_that_raises_stops_the_suite_and_every_run_ends(folder, variant_fails, error, child, parent, failure):
    """Any other error is a bug: the run is tagged with its first line and FAILED, the suite's parent FAILED, and it
    is raised. An interrupt ends the run and its parent KILLED, the run tagged so. Either way the rows logged so far are kept."""
    variant_fails.append(error)
    with pytest.raises(type(error)):
        run(folder, "tiny")
    children, parents, client, kids = statuses(uri_of(folder))
    assert children == {"bprop": ("FINISHED", None), "frozen_first": (child, failure)}
    assert parents == [parent]
    stopped = next(k for k in kids if k.data.tags["method"] == "frozen_first")
    assert [(m.step, m.value) for m in client.get_metric_history(stopped.info.run_id, "train_loss")] == [(1, 2.5)]


class Pool:
    """--jobs' WorkerPool as _run_suite sees it: ``run`` records its arguments and reports each run FINISHED, or
    raises ``error``; ``close`` is counted."""

    def __init__(self, error=None):
        self.calls, self.closed, self.error = [], 0, error

    def run(self, exp_id, parent_id, specs, on_result):
        self.calls.append((exp_id, parent_id, [s.config_hash for s in specs]))
        if self.error:
            raise self.error
        for spec in specs:
            on_result(spec, None)

    def close(self):
        self.closed += 1


@pytest.mark.parametrize("error", [None, RuntimeError("a worker raised")])
def test_a_suite_on_a_pool_hands_it_the_runs_it_does_not_alias(folder, error):
    """With --jobs, a suite's parent run stays here: the runs another suite already computed are aliased here (each
    reported as shared), the rest go to the pool in one call with this suite's experiment and parent run. A pool that
    raises ends the parent FAILED and is closed before it (the workers' runs end first)."""
    (folder / "again.yaml").write_text(AGAIN.replace("method: bprop", "method: [bprop, cdni]"))
    uri, _ = run(folder, "tiny")
    client = runner.prepare_store(uri)
    original = next(r for r in runs_of(uri, "child")[1] if r.data.tags["method"] == "bprop")
    suite = load_suite(folder / "again.yaml")
    todo = plan(suite, "smoke")
    bprop, cdni = sorted(todo, key=lambda s: s.method)
    exp_id = runner.experiment_id(client, suite.name, uri)
    pool, results, postfix = Pool(error), [], []
    bar = NS(set_postfix_str=postfix.append)

    def call():
        runner._run_suite(client, suite, exp_id, todo, "smoke", torch.device("cpu"), None, pool,
                          lambda spec, failure, shared=False: results.append((spec.method, failure, shared)), bar,
                          False, {bprop.config_hash: original})
    if error:
        with pytest.raises(RuntimeError):
            call()
    else:
        call()
    parent = next(p for p in runs_of(uri, "parent")[1] if p.data.tags["suite"] == "again")
    assert pool.calls == [(exp_id, parent.info.run_id, [cdni.config_hash])]
    assert postfix == ["again"]
    alias = next(r for r in runs_of(uri, "child")[1] if r.data.tags["suite"] == "again")
    assert (alias.data.tags[runner.SHARED_FROM], alias.data.tags["mlflow.parentRunId"]) == (
        original.info.run_id, parent.info.run_id)
    assert results == [("bprop", None, True)] + ([] if error else [("cdni", None, False)])
    assert (parent.info.status, pool.closed) == (("FAILED", 1) if error else ("FINISHED", 0))


def test_a_run_that_fails_before_training_ends_failed_with_that_error(folder, monkeypatch):
    """An error while its params are written (before anything is logged) is the run's failure and is raised as it
    was, not replaced by one from closing a metric buffer that was never opened."""
    def refused(client, run_id, params):
        raise RuntimeError("params refused")
    monkeypatch.setattr(runner, "_log_params", refused)
    with pytest.raises(RuntimeError, match="^params refused$"):
        run(folder, "tiny")
    children, parents, _, _ = statuses(uri_of(folder))
    assert children == {"bprop": ("FAILED", "error: RuntimeError: params refused")} and parents == ["FAILED"]


@pytest.mark.parametrize("progress", [True, False])
def test_each_run_has_a_progress_bar_of_its_steps_only_when_asked(folder, capsys, progress):
    """--no-progress: nothing on stderr. Otherwise each run's bar counts its steps under its label (the suite's
    bar above it counts runs). Its first frame is checked: later ones come at most every 0.5 s."""
    (folder / "tiny.yaml").write_text(SUITE.replace("[bprop, frozen_first.py]", "bprop"))
    run(folder, "tiny", progress=progress)
    err = capsys.readouterr().err
    label = plan(load_suite(folder / "tiny.yaml"), "smoke")[0].label
    bars = [line for line in re.split(r"[\r\n]", err) if line.startswith(label)]
    if progress:
        assert bars[0].startswith(f"{label}:   0%|          | 0/2 [00:00<?, ?step/s]"), err[-2000:]
        assert re.search(r"runs: 100%.* 1/1 ", err), err[-2000:]
    else:
        assert bars == [] and "runs:" not in err


def test_a_signal_stops_a_run_at_its_next_step(folder, monkeypatch):
    """SIGTERM/SIGINT during training (interrupt.py records it) stops the run at its next step: KILLED, tagged with the
    signal, with the rows it logged, and nothing after that step is trained or logged."""
    import signal

    import dnibench.train as train
    from dnibench import interrupt
    (folder / "tiny.yaml").write_text(SUITE.replace("[bprop, frozen_first.py]", "frozen_first.py"))
    steps = []

    def training(spec, data, log, on_step=lambda n: None):
        for step in (1, 2):
            log({"train_loss": float(step)}, step)
            steps.append(step)
            if step == 1:
                interrupt._handler(signal.SIGTERM, None)   # as the signal does: recorded, raised at a safe point
            on_step(step)
        return {}
    monkeypatch.setattr(train, "train_ff", training)
    try:
        with pytest.raises(KeyboardInterrupt):
            run(folder, "tiny")
    finally:
        interrupt._received.clear()
    children, parents, client, kids = statuses(uri_of(folder))
    assert (children, parents, steps) == ({"frozen_first": ("KILLED", "stopped by SIGTERM")}, ["KILLED"], [1])
    assert [p.data.tags.get("failure") for p in runs_of(uri_of(folder), "parent")[1]] == ["stopped by SIGTERM"]
    assert [m.step for m in client.get_metric_history(kids[0].info.run_id, "train_loss")] == [1]


def test_a_parallel_runs_params_are_also_under_their_short_names():
    spec = next(s for s in plan(load_suite("suites/parallel.yaml"), "smoke")
                if s.parallel is not None and s.parallel.workers == 2 and s.method == "cdni")
    params = runner._spec_params(spec)
    assert {k: params[k] for k in ("workers", "schedule", "lockstep", "threads")} == {
        "workers": "2", "schedule": "decoupled", "lockstep": "false", "threads": "1"}
    assert params["parallel.workers"] == "2" and params["train.steps"] == str(spec.train.steps)
    assert all(isinstance(v, str) for v in params.values())
    one_process = plan(load_suite("suites/mnist_ff.yaml"), "smoke")[0]
    assert one_process.parallel is None and not {"workers", "schedule"} & set(runner._spec_params(one_process))


def test_params_are_written_in_batches_of_at_most_100_each_once():
    """MLflow takes at most 100 params per call: 250 go in three calls, every one exactly once, in order."""
    calls = []
    client = NS(log_batch=lambda run_id, params: calls.append((run_id, [(p.key, p.value) for p in params])))
    items = {f"p{i:03d}": str(i) for i in range(250)}
    runner._log_params(client, "r1", items)
    assert [len(batch) for _, batch in calls] == [100, 100, 50] and {run_id for run_id, _ in calls} == {"r1"}
    assert [kv for _, batch in calls for kv in batch] == list(items.items())
