"""The harness around training: batched metric writes (dnibench/metric_log.py), a resume with nothing
left to run, and a `dnibench list` that does not import torch."""
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from dnibench import runner
from dnibench.metric_log import MAX_METRICS_PER_CALL, MetricBuffer
from dnibench.runner import ROLE, run_suites

SUITE = """
name: harness
task: mnist
train: {steps: 8, batch_size: 4, lr: 1.0e-3, lr_decay_at: [], eval_every: 3, log_every: 2}
profiles: {smoke: {}, quick: {}, paper: {}}
entries:
  - model: [fcn3]
    method: [dni]
    args: {dni: {synth_hidden_layers: 1, synth_width: 8}}
"""


class RecordingBuffer(MetricBuffer):
    """The buffer the runner uses, also keeping every (key, value, step) it was given: the unbatched
    reference, i.e. what one log_batch per row wrote before."""
    instances = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.flush_every_s = float("inf")   # no write by time (a cold first step past 10 s): the counts below fixed
        self.rows = []
        RecordingBuffer.instances.append(self)

    def log(self, metrics, step):
        self.rows.extend((k, float(v), step) for k, v in metrics.items())
        super().log(metrics, step)

    __call__ = log


def stored(client, run_id):
    """Every metric point of a run as (key, value, step), in a fixed order."""
    keys = client.get_run(run_id).data.metrics
    return sorted((m.key, m.value, m.step) for key in keys for m in client.get_metric_history(run_id, key))


@pytest.fixture
def suite_path(tmp_path):
    path = tmp_path / "harness.yaml"
    path.write_text(SUITE)
    return path


def test_batched_writes_store_exactly_the_logged_rows_in_fewer_calls(tmp_path, suite_path, fake_mnist_data_dir,
                                                                     monkeypatch):
    RecordingBuffer.instances = []
    monkeypatch.setattr(runner, "MetricBuffer", RecordingBuffer)
    uri = f"sqlite:///{tmp_path}/m.db"
    out = run_suites([str(suite_path)], "smoke", device="cpu", seeds=1, tracking_uri=uri,
                     data_dir=fake_mnist_data_dir, progress=False)
    assert (out.ran, out.failed) == (1, 0)
    [buffer] = RecordingBuffer.instances
    client = MlflowClient(uri)
    assert stored(client, buffer.run_id) == sorted(buffer.rows)
    steps = sorted({step for key, _, step in buffer.rows if key == "train_loss"})
    assert steps == [2, 3, 4, 6, 8]                       # log_every 2, eval_every 3, and the last step
    # 6 rows (steps 2, 3, 4, 6, 8 and the summary) in 4 writes: at the evaluation points 3, 6 and 8
    # (the last step evaluates) and the summary at the end
    assert buffer.calls == 4 and buffer.pending == []


def test_a_killed_run_keeps_its_metrics_up_to_the_last_log_point(tmp_path, suite_path, fake_mnist_data_dir,
                                                                 monkeypatch):
    RecordingBuffer.instances = []
    monkeypatch.setattr(runner, "MetricBuffer", RecordingBuffer)
    steps_seen = []

    def stop_at_step_5():
        steps_seen.append(1)
        if len(steps_seen) == 6:          # the runner's check before the run, then on_step(1..5): stop at
            raise KeyboardInterrupt       # step 5, after the rows of steps 2, 3 (evaluation) and 4

    monkeypatch.setattr(runner.interrupt, "check", stop_at_step_5)
    uri = f"sqlite:///{tmp_path}/m.db"
    with pytest.raises(KeyboardInterrupt):
        run_suites([str(suite_path)], "smoke", device="cpu", seeds=1, tracking_uri=uri,
                   data_dir=fake_mnist_data_dir, progress=False)
    [buffer] = RecordingBuffer.instances
    client = MlflowClient(uri)
    run = client.get_run(buffer.run_id)
    assert run.info.status == "KILLED" and run.data.tags[ROLE] == "child"
    assert [m.step for m in client.get_metric_history(buffer.run_id, "train_loss")] == [2, 3, 4]
    assert stored(client, buffer.run_id) == sorted(buffer.rows)     # step 4's row was still pending at the stop
    assert "final_test_error" not in run.data.metrics


class FakeClient:
    def __init__(self):
        self.batches = []

    def log_batch(self, run_id, metrics=()):
        self.batches.append([(m.key, m.value, m.step, m.timestamp) for m in metrics])


def test_buffer_flushes_at_evaluation_rows_by_time_and_in_chunks_of_the_mlflow_limit(monkeypatch):
    client = FakeClient()
    buffer = MetricBuffer(client, "r", flush_every_s=3600)
    buffer.log({"train_loss": 1.0}, 1)
    buffer.log({"train_loss": 0.5}, 2)
    assert client.batches == []
    buffer.log({"train_loss": 0.25, "test_error": 9.0}, 3)          # an evaluation point: written at once
    assert [[(k, v, s) for k, v, s, _ in b] for b in client.batches] == [
        [("train_loss", 1.0, 1), ("train_loss", 0.5, 2), ("train_loss", 0.25, 3), ("test_error", 9.0, 3)]]
    buffer.log({f"m{i}": float(i) for i in range(2 * MAX_METRICS_PER_CALL + 5)}, 4)
    assert [len(b) for b in client.batches[1:]] == [MAX_METRICS_PER_CALL, MAX_METRICS_PER_CALL, 5]
    slow = MetricBuffer(client, "r", flush_every_s=0.0)                # every row once the interval has passed
    slow.log({"a": 1.0}, 1)
    assert client.batches[-1][0][:3] == ("a", 1.0, 1)
    clock = iter([1000.0, 1000.5])                                   # the row's own time, not the write's
    monkeypatch.setattr("dnibench.metric_log.time.time", lambda: next(clock))
    timed = MetricBuffer(client, "r", flush_every_s=3600)
    timed.log({"b": 2.0}, 7)
    timed.close()
    assert client.batches[-1] == [("b", 2.0, 7, 1000000)]


def test_list_does_not_import_torch():
    code = ("import sys, contextlib, io; from dnibench.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out: rc = main(['list'])\n"
            "assert rc == 0 and 'dni' in out.getvalue(), out.getvalue()\n"
            "assert 'torch' not in sys.modules and 'mlflow' not in sys.modules, 'imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_static_listing_matches_the_registry():
    from dnibench.cli import TASK_NAMES
    from dnibench.methods import BUILTIN, REGISTRY
    from dnibench.tasks import TASKS
    builtin = {name: (cls.__module__.rsplit(".", 1)[1], cls.family, cls.description)
               for name, cls in REGISTRY.items() if cls.__module__.startswith("dnibench.methods.")}
    assert BUILTIN == builtin
    assert TASK_NAMES == tuple(sorted(TASKS))
