"""The runner's helpers in process, without training: torchrun's shard from the environment, the batch-size
refusal, the paging of finished runs, where a new experiment keeps its artifacts and the race of two shards
creating it. test_runner.py runs the same paths end to end in real processes, which a mutation tester cannot see."""
from pathlib import Path
from types import SimpleNamespace as NS

import mlflow
import pytest

from dnibench import runner, store
from dnibench.errors import DnibenchError


def refusal(call) -> str:
    with pytest.raises(DnibenchError) as err:
        call()
    return str(err.value)


@pytest.mark.parametrize("env, expected", [
    ({}, None), ({"WORLD_SIZE": "1"}, None), ({"WORLD_SIZE": " 1 ", "RANK": "0"}, None),
    ({"WORLD_SIZE": "4", "RANK": "3"}, (3, 4)), ({"WORLD_SIZE": " 2\n", "RANK": " 0 "}, (0, 2)),
])
def test_the_shard_torchrun_gives(monkeypatch, env, expected):
    for key in ("WORLD_SIZE", "RANK", "world_size", "rank"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("world_size", "9")           # only torchrun's own names count
    monkeypatch.setenv("rank", "8")
    assert runner.shard_from_env() == expected


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0': expected a positive integer (set by torchrun)"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two': expected a positive integer (set by torchrun)"),
    ({"WORLD_SIZE": "-2"}, "WORLD_SIZE='-2': expected a positive integer (set by torchrun)"),
    ({"WORLD_SIZE": "9" * 30}, f"WORLD_SIZE={'9' * 30} but RANK is not set: launch with torchrun, or use --shard I/N"),
    ({"WORLD_SIZE": "x" * 30}, f"WORLD_SIZE='{'x' * 20}': expected a positive integer (set by torchrun)"),
    ({"WORLD_SIZE": "3"}, "WORLD_SIZE=3 but RANK is not set: launch with torchrun, or use --shard I/N"),
    ({"WORLD_SIZE": "3", "RANK": "3"}, "RANK='3': expected an integer in 0..2 (WORLD_SIZE=3)"),
    ({"WORLD_SIZE": "3", "RANK": "-1"}, "RANK='-1': expected an integer in 0..2 (WORLD_SIZE=3)"),
    ({"WORLD_SIZE": "3", "RANK": "y" * 30}, f"RANK='{'y' * 20}': expected an integer in 0..2 (WORLD_SIZE=3)"),
])
def test_a_bad_torchrun_environment_is_one_line(monkeypatch, env, message):
    for key in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert refusal(runner.shard_from_env) == message


def test_a_batch_larger_than_the_examples_a_run_uses_is_refused():
    def spec(batch, subset=None):
        return NS(model="fcn3", method="dni", train=NS(batch_size=batch, train_subset=subset))
    data = NS(y_train=list(range(100)))
    suite = NS(path=Path("suites/x.yaml"), name="x")
    runner._check_batch_sizes(suite, [spec(100), spec(10, subset=10)], data)          # exactly all: allowed
    assert refusal(lambda: runner._check_batch_sizes(suite, [spec(10), spec(101)], data)) == (
        "suites/x.yaml: fcn3/dni: batch_size 101 is larger than the 100 training examples")
    assert refusal(lambda: runner._check_batch_sizes(NS(path=None, name="x"), [spec(11, subset=10)], data)) == (
        "x: fcn3/dni: batch_size 11 is larger than the 10 training examples")
    runner._check_batch_sizes(suite, [spec(10_000)], NS())              # a sequence task: streams, not examples


def test_finished_runs_are_read_on_every_page():
    pages = {None: (["a", "b"], "p2"), "p2": (["c"], "p3"), "p3": (["d"], "")}
    calls = []

    class Page(list):
        token = None

    class Client:
        def search_experiments(self):
            return [NS(experiment_id="1"), NS(experiment_id="2")]

        def search_runs(self, experiments, filter_string, max_results, page_token):
            calls.append((experiments, filter_string, max_results, page_token))
            page = Page(pages[page_token][0])
            page.token = pages[page_token][1]
            return page
    assert runner.finished_runs(Client()) == ["a", "b", "c", "d"]
    query = "tags.`dnibench.role` = 'child' and attributes.status = 'FINISHED'"
    assert calls == [(["1", "2"], query, 50_000, None), (["1", "2"], query, 50_000, "p2"),
                     (["1", "2"], query, 50_000, "p3")]
    assert runner.finished_runs(Client(), ["7"]) == ["a", "b", "c", "d"] and calls[-1][0] == ["7"]
    assert runner.finished_runs(Client(), []) == []


def test_a_new_experiment_keeps_its_artifacts_next_to_the_store(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    client = store.open_store(uri, write=True)
    exp_id = runner.experiment_id(client, "tiny", uri)
    assert client.get_experiment(exp_id).artifact_location == (tmp_path / "m-artifacts").as_uri() + "/tiny"
    assert runner.experiment_id(client, "tiny", uri) == exp_id                  # found, not made again
    assert client.get_experiment_by_name("tiny").experiment_id == exp_id


def test_two_shards_creating_one_experiment_both_get_it():
    """torchrun's ranks: the other one created it between this one's look and its create."""
    made = NS(experiment_id="5")

    class Client:
        looks = 0

        def get_experiment_by_name(self, name):
            assert name == "tiny"
            self.looks += 1
            return None if self.looks == 1 else made

        def create_experiment(self, name, artifact_location):
            assert artifact_location is None                    # a server keeps artifacts where it says
            raise mlflow.exceptions.MlflowException("already exists")
    assert runner.experiment_id(Client(), "tiny", "http://127.0.0.1:5000") == "5"

    class Nobody(Client):
        def get_experiment_by_name(self, name):
            return None
    with pytest.raises(mlflow.exceptions.MlflowException, match="already exists"):
        runner.experiment_id(Nobody(), "tiny", "http://127.0.0.1:5000")


def test_prepare_store_creates_the_store_with_its_artifact_root_and_ends_dead_runs(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/m.db"
    client = runner.prepare_store(uri)
    assert mlflow.get_tracking_uri() == uri
    default = client.get_experiment("0")            # MLflow's own first experiment, made with the store
    assert default.artifact_location == (tmp_path / "m-artifacts").as_uri() + "/0"
    exp = client.create_experiment("tiny")
    dead = client.create_run(exp, tags={**store.owner_tags(), store.OWNER_PID: "999999999"}).info.run_id
    capsys.readouterr()                             # MLflow's own lines on creating the store
    runner.prepare_store(uri)
    assert capsys.readouterr().err == f"dnibench: run {dead} was left RUNNING by a process that died: marked KILLED\n"
    assert client.get_run(dead).info.status == "KILLED"


SUITE = """
name: {name}
task: mnist
train: {{steps: 2, batch_size: 4, lr: 1.0e-3, lr_decay_at: [], eval_every: 2, log_every: 1}}
profiles: {{smoke: {{}}, quick: {{}}, paper: {{}}}}
entries:
  - model: fcn3
    method: dni
"""


def alias_setup(tmp_path, metrics: int = 3):
    """A store with an original run of suite 'first' (its tags, params and ``metrics`` final values, as the
    runner leaves them) and the spec of suite 'second' that computes the same."""
    from dnibench.suite import load_suite, plan
    specs = {}
    for name in ("first", "second"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(SUITE.format(name=name))
        specs[name] = plan(load_suite(path), "smoke")[0]
    assert specs["first"].identity == specs["second"].identity
    client = runner.prepare_store(f"sqlite:///{tmp_path}/m.db")
    first, second = client.create_experiment("first"), client.create_experiment("second")
    original = client.create_run(first, tags={**runner._child_tags(specs["first"], "p0", NS(type="cpu")),
                                              "git_commit": "c0ffee", "cpu_model": "some cpu",
                                              store.FAILURE_TAG: "an earlier note", **store.owner_tags(),
                                              "mlflow.note.content": "the original's own"}).info.run_id
    runner._log_params(client, original, {**runner._spec_params(specs["first"]), "extra": "kept"})
    logged = [mlflow.entities.Metric(f"m{i}", float(i), 1, i % 7) for i in range(metrics)]
    for start in range(0, len(logged), 1000):
        client.log_batch(original, metrics=logged[start:start + 1000])
    client.set_terminated(original, "FINISHED")
    parent = client.create_run(second, tags={runner.ROLE: "parent"}).info.run_id
    return client, second, parent, specs["second"], client.get_run(original)


def test_an_alias_is_the_originals_result_under_this_suites_name(tmp_path):
    import time
    client, exp, parent, spec, original = alias_setup(tmp_path, metrics=1001)
    before = int(time.time() * 1000)
    alias = client.get_run(runner._alias_child(client, exp, parent, spec, original, NS(type="cpu")))
    after = int(time.time() * 1000)
    tags = alias.data.tags
    assert alias.info.status == "FINISHED" and alias.info.run_name == spec.label == "second/fcn3/dni/seed0"
    assert tags["mlflow.parentRunId"] == parent and tags["suite"] == "second" and tags[runner.ROLE] == "child"
    assert tags[runner.SHARED_FROM] == original.info.run_id and tags[runner.SHARED_FROM_SUITE] == "first"
    assert tags["git_commit"] == "c0ffee" and tags["cpu_model"] == "some cpu"      # how the original ran
    assert store.FAILURE_TAG not in tags and "mlflow.note.content" not in tags
    assert tags[store.OWNER_PID] == store.owner_tags()[store.OWNER_PID]
    assert tags["config_hash"] == spec.config_hash != original.data.tags["config_hash"]
    assert alias.data.params["extra"] == "kept" and alias.data.params["suite"] == "second"
    assert alias.data.metrics == original.data.metrics and len(alias.data.metrics) == 1001
    history = client.get_metric_history(alias.info.run_id, "m8")
    assert [(m.value, m.step) for m in history] == [(8.0, 1)] and before <= history[0].timestamp <= after


@pytest.mark.parametrize("error, status", [(RuntimeError("store gone"), "FAILED"), (KeyboardInterrupt(), "KILLED")])
def test_an_alias_that_cannot_be_written_ends_failed_or_killed(tmp_path, monkeypatch, error, status):
    client, exp, parent, spec, original = alias_setup(tmp_path)
    made = []
    create_run = client.create_run

    def create(*args, **kwargs):
        run = create_run(*args, **kwargs)
        made.append(run.info.run_id)
        return run

    def log_batch(*args, **kwargs):
        raise error
    monkeypatch.setattr(client, "create_run", create)
    monkeypatch.setattr(client, "log_batch", log_batch)
    with pytest.raises(type(error)):
        runner._alias_child(client, exp, parent, spec, original, NS(type="cpu"))
    assert client.get_run(made[0]).info.status == status
