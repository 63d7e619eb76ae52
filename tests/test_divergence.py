"""A run that diverges is not a result (issue 7 §5): non-finite settings are refused before anything
runs; a run whose loss becomes non-finite stops, is FAILED with its reason, the suite goes on, and
`compare` and the report list it."""
import math
import re

import pytest
import torch
from mlflow.tracking import MlflowClient

from dnibench.cli import main
from dnibench.errors import Diverged, SuiteError
from dnibench.report import write_report
from dnibench.runner import ROLE
from dnibench.suite import load_suite, plan
from dnibench.tasks import get_task
from dnibench.train import DivergenceWatch

# bprop at lr 1e30 has a NaN loss from its second step on (one Adam step of 1e30 per weight); the
# dni run after it is ordinary. log_every 3: the divergence must be caught at step 3 at the latest.
SUITE = """
name: tiny_div
task: mnist
train: {steps: 6, batch_size: 8, lr: 1.0e-3, lr_decay_at: [], eval_every: 3, log_every: 3}
profiles: {smoke: {}, quick: {}, paper: {}}
entries:
  - model: fcn3
    method: bprop
    train: {lr: 1.0e30}
  - model: fcn3
    method: dni
    args: {dni: {synth_hidden_layers: 1, synth_width: 16}}
"""

# Recurrent DNI at lr 1e30: the synthetic gradient is NaN from the second window on. (Plain BPTT at
# this lr has a loss of ~1e30 bits per character but finite: only non-finite losses count as diverged.)
RNN_SUITE = """
name: tiny_rnn_div
task: copy
train: {steps: 6, batch_size: 4, lr: 1.0e30, lr_decay_at: [], log_every: 3}
task_args: {bits: 4, check_every: 100}
profiles: {smoke: {}, quick: {}, paper: {}}
entries:
  - model: lstm8
    method: [dni_bptt, dni_bptt_aux]
    args: {dni_bptt: {T: 3}, dni_bptt_aux: {T: 3}}
"""


def test_watch_names_the_first_non_finite_step():
    watch = DivergenceWatch()
    for step in range(1, 5):
        watch.add(step, {"train_loss": torch.tensor(1.0), "synth_loss/h1": torch.tensor([0.5, 2.0])})
    watch.check()                                            # all finite: nothing raised
    watch.add(5, {"train_loss": torch.tensor(1.0), "synth_loss/h1": torch.tensor([0.5, math.inf])})
    watch.add(6, {"train_loss": torch.tensor(math.nan)})
    watch.add(7, {})                                         # a step without metrics (every coin said no)
    with pytest.raises(Diverged) as err:
        watch.check()
    assert err.value.step == 5 and err.value.reason == "diverged at step 5"
    watch.add(8, {"train_loss": torch.tensor(2.0)})
    watch.check()                                            # the interval was cleared


def test_train_stops_at_the_first_log_point(tmp_path, fake_mnist_data_dir):
    path = tmp_path / "tiny_div.yaml"
    path.write_text(SUITE)
    spec = plan(load_suite(path), "smoke", device="cpu")[0]
    assert spec.method == "bprop" and spec.train.lr == 1e30
    task = get_task("mnist")
    steps, logged = [], []
    with pytest.raises(Diverged) as err:
        task.train(spec, task.load(fake_mnist_data_dir), lambda row, step: logged.append(step), on_step=steps.append)
    assert 1 <= err.value.step <= 3                          # found by the log point at step 3
    assert steps == [1, 2, 3] and logged == []               # stopped there; no non-finite row was logged


def test_diverged_run_fails_with_its_reason_and_the_suite_goes_on(tmp_path, fake_mnist_data_dir, capsys):
    path = tmp_path / "tiny_div.yaml"
    path.write_text(SUITE)
    uri = f"sqlite:///{tmp_path}/m.db"
    common = ["--tracking-uri", uri]
    code = main(["run", str(path), "--profile", "smoke", "--device", "cpu", "--data-dir", str(fake_mnist_data_dir),
                 "--no-progress", *common])
    out = capsys.readouterr().out
    assert code == 1                                         # finished, but not every run is a result
    assert "1 run(s) done" in out and "1 FAILED" in out
    assert re.search(r"FAILED tiny_div/fcn3/bprop/seed0: diverged at step [123]\b", out)

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny_div")
    runs = {r.data.tags["method"]: r for r in client.search_runs([exp.experiment_id], f"tags.`{ROLE}` = 'child'")}
    assert runs["bprop"].info.status == "FAILED"
    reason = runs["bprop"].data.tags["failure"]
    assert re.fullmatch(r"diverged at step [123]", reason)
    assert "final_test_error" not in runs["bprop"].data.metrics
    assert runs["dni"].info.status == "FINISHED" and math.isfinite(runs["dni"].data.metrics["final_test_error"])
    parent = client.search_runs([exp.experiment_id], f"tags.`{ROLE}` = 'parent'")[0]
    assert parent.info.status == "FINISHED"

    assert main(["compare", "tiny_div", "--baseline", "dni", "--out", str(tmp_path / "cmp"), *common]) == 0
    out = capsys.readouterr().out
    assert "1 run(s) FAILED" in out and f"| fcn3 | bprop | 0 | FAILED | {reason} |" in out

    write_report(uri, tmp_path / "reports", suites_dir=tmp_path / "no_suites")
    readme = (tmp_path / "reports" / "README.md").read_text()
    assert "## Failed runs" in readme and f"| FCN-3 | Bprop | 0 | FAILED | {reason} |" in readme
    assert "1 run(s) FAILED" in readme
    assert "Child runs in the store by status: FAILED 1, FINISHED 1." in readme


def test_rnn_runs_diverge_too(tmp_path):
    path = tmp_path / "tiny_rnn_div.yaml"
    path.write_text(RNN_SUITE)
    task = get_task("copy")
    for spec in plan(load_suite(path), "smoke", device="cpu"):
        steps = []
        with pytest.raises(Diverged) as err:
            task.train(spec, task.load(None), lambda row, step: None, on_step=steps.append)
        assert 1 <= err.value.step <= 3 and steps == [1, 2, 3], spec.method


BAD_SUITE = """
name: tiny_bad
task: mnist
train: {steps: 6, batch_size: 8, lr: 1.0e-3, lr_decay_at: []}
profiles: {smoke: {}, quick: {}, paper: {}}
entries:
  - model: fcn3
    method: dni
    %s
"""


@pytest.mark.parametrize("field, entry", [
    ("lr", "train: {lr: .inf}"),
    ("lr", "train: {lr: .nan}"),
    ("synth_lr", "args: {dni: {synth_lr: .inf}}"),
    ("synth_loss_weight", "args: {dni: {synth_loss_weight: .inf}}"),
    ("p_update", "sweep: {p_update: [0.5, .nan]}"),
])
def test_non_finite_settings_are_refused_before_anything_runs(tmp_path, field, entry, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_SUITE % entry)
    with pytest.raises(SuiteError, match=f"field '{field}'"):
        plan(load_suite(path), "smoke")
    db = tmp_path / "m.db"
    assert main(["run", str(path), "--profile", "smoke", "--device", "cpu", "--no-progress",
                 "--tracking-uri", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"field '{field}'" in err and "finite" in err, err
    assert not db.exists()                                   # refused before a single MLflow run


def test_any_other_error_stops_the_suite_and_is_listed_with_its_reason(tmp_path, fake_mnist_data_dir, monkeypatch):
    """Only divergence is contained: a bug (here a method raising) stops the suite, after tagging why."""
    import dnibench.train as train
    path = tmp_path / "tiny_div.yaml"
    path.write_text(SUITE.replace("train: {lr: 1.0e30}", "train: {lr: 1.0e-3}"))
    uri = f"sqlite:///{tmp_path}/m.db"
    real = train.train_ff

    def broken(spec, *args, **kwargs):
        if spec.method == "bprop":
            raise RuntimeError("a bug in the method\nsecond line")
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(train, "train_ff", broken)
    from dnibench.runner import run_suites
    with pytest.raises(RuntimeError, match="a bug"):
        run_suites([str(path)], "smoke", device="cpu", tracking_uri=uri, data_dir=fake_mnist_data_dir, progress=False)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny_div")
    runs = client.search_runs([exp.experiment_id], f"tags.`{ROLE}` = 'child'")
    assert len(runs) == 1 and runs[0].info.status == "FAILED"     # the dni run after it never started
    assert runs[0].data.tags["failure"] == "error: RuntimeError: a bug in the method"


def test_every_settings_model_refuses_non_finite_numbers():
    """Suite schema, every method's Settings and every task's Settings: a model added later is covered."""
    from dnibench import suite
    from dnibench.methods import REGISTRY
    from dnibench.tasks import TASKS
    models = [suite.Suite, suite.Profile, suite.Entry, suite.UniformSweep, suite.TrainSettings,
              *(cls.Settings for cls in REGISTRY.values()), *(task.Settings for task in TASKS.values())]
    lenient = [m.__qualname__ for m in models if m.model_config.get("allow_inf_nan", True)]
    assert not lenient, f"settings models that accept .inf/.nan: {lenient}"
