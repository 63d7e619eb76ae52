"""The runner end to end on tiny fake MNIST: MLflow runs, tags, metrics; resume; determinism; bad input."""
import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from cli_processes import wait_for
from dnibench.runner import ROLE, run_suites

SUITE = """
name: tiny
task: mnist
train: {steps: 6, batch_size: 8, lr: 1.0e-3, lr_decay_at: [], eval_every: 3, log_every: 2}
profiles: {smoke: {}, quick: {}, paper: {}}
entries:
  - model: [fcn3, cnn3]
    method: [nobprop, bprop, dni, cdni]
    train: {cnn_filters: 4}
    args: {dni: {synth_hidden_layers: 1, synth_width: 16}}
"""


@pytest.fixture
def suite_path(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(SUITE)
    return path


def child_runs(uri):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny")
    return client, client.search_runs([exp.experiment_id], filter_string=f"tags.`{ROLE}` = 'child'")


def test_smoke_suite_writes_runs_tags_metrics_and_resumes(tmp_path, suite_path, fake_mnist_data_dir):
    uri = f"sqlite:///{tmp_path}/m.db"
    out = run_suites([str(suite_path)], "smoke", device="cpu", seeds=2, tracking_uri=uri,
                     data_dir=fake_mnist_data_dir, progress=False)
    assert (out.ran, out.skipped) == (16, 0)
    client, runs = child_runs(uri)
    assert len(runs) == 16 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        for key in ["method", "task", "model", "profile", "seed", "device", "suite", "config_hash",
                    "git_commit", "git_dirty", "torch_version", "cpu_model", "gpu_model", "mlflow.parentRunId"]:
            assert tags.get(key), key
        assert tags["task"] == "mnist" and tags["profile"] == "smoke" and tags["device"] == "cpu"
        # the data it trained on: the verified cache's source and sizes (the fake IDX set: 12 train, 5 test)
        assert tags["data.source"].startswith("IDX files in ") and tags["data.source"].endswith("/idx")
        assert (tags["data.train"], tags["data.test"]) == ("12", "5")
        for key in ["train_loss", "test_error", "final_test_error", "samples_per_s", "wall_s/train", "wall_s/eval",
                    "cpu_util_pct_mean"]:
            assert key in metrics, key
        assert 0.0 <= metrics["final_test_error"] <= 100.0
        assert run.data.params["train.steps"] == "6"
        history = client.get_metric_history(run.info.run_id, "test_error")
        assert [m.step for m in history] == [3, 6]
        if tags["method"] in ("dni", "cdni"):
            assert {"synth_loss/h1", "synth_loss/h2"} <= set(metrics)
        if tags["method"] == "nobprop":
            assert metrics["updates/stage1"] == 0 and metrics["updates/stage3"] == 6
    parents = client.search_runs([runs[0].info.experiment_id], filter_string=f"tags.`{ROLE}` = 'parent'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id, "environment")}
    assert artifacts == {"environment/packages.txt", "environment/machine.json", "environment/suite.json"}

    again = run_suites([str(suite_path)], "smoke", device="cpu", seeds=2, tracking_uri=uri,
                       data_dir=fake_mnist_data_dir, progress=False)
    assert (again.ran, again.skipped) == (0, 16)
    assert len(child_runs(uri)[1]) == 16                    # nothing duplicated


def test_interrupted_suite_resumes_without_duplicates(tmp_path, suite_path, fake_mnist_data_dir, monkeypatch):
    import dnibench.train as train
    uri = f"sqlite:///{tmp_path}/m.db"
    real, calls = train.train_ff, {"n": 0}

    def interrupt_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "train_ff", interrupt_third)
    with pytest.raises(KeyboardInterrupt):
        run_suites([str(suite_path)], "smoke", device="cpu", tracking_uri=uri, data_dir=fake_mnist_data_dir,
                   progress=False)
    client, runs = child_runs(uri)
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED", "KILLED"]
    monkeypatch.setattr(train, "train_ff", real)
    out = run_suites([str(suite_path)], "smoke", device="cpu", tracking_uri=uri, data_dir=fake_mnist_data_dir,
                     progress=False)
    assert (out.ran, out.skipped) == (6, 2)
    _, runs = child_runs(uri)
    finished = [r.data.tags["config_hash"] for r in runs if r.info.status == "FINISHED"]
    assert len(finished) == 8 == len(set(finished))


def test_same_seed_twice_gives_identical_metrics(tmp_path, suite_path, fake_mnist_data_dir):
    uris = [f"sqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/b.db"]
    for uri in uris:
        run_suites([str(suite_path)], "smoke", device="cpu", tracking_uri=uri, data_dir=fake_mnist_data_dir,
                   progress=False)
    deterministic = ("train_loss", "test_error", "final_test_error", "synth_loss/h1", "synth_loss/h2")

    def values(uri):
        _, runs = child_runs(uri)
        return {r.data.tags["config_hash"]: {k: v for k, v in r.data.metrics.items() if k in deterministic}
                for r in runs}

    a, b = values(uris[0]), values(uris[1])
    assert a == b and len(a) == 8
    assert len({v["train_loss"] for v in a.values()}) == 8        # not trivially equal


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "dnibench.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("edit, needle", [
    (("method: [nobprop, bprop, dni, cdni]", "method: [sgd_magic]"), "unknown method 'sgd_magic'"),
    (("entries:", "entries: [\n"), "malformed YAML"),
    (("steps: 6", "steps: six"), "field 'steps'"),
])
def test_cli_bad_suite_is_one_line_nonzero_and_leaves_no_run(tmp_path, suite_path, fake_mnist_data_dir, edit, needle):
    suite_path.write_text(SUITE.replace(*edit))
    uri = f"sqlite:///{tmp_path}/m.db"
    result = run_cli("run", str(suite_path), "--profile", "smoke", "--device", "cpu", "--tracking-uri", uri,
                     "--data-dir", str(fake_mnist_data_dir), "--no-progress")
    assert result.returncode == 2
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "m.db").exists()                  # validated before any run was created


def test_cli_missing_suite_and_corrupt_data(tmp_path, suite_path, fake_mnist_data_dir):
    uri = f"sqlite:///{tmp_path}/m.db"
    result = run_cli("run", str(tmp_path / "absent.yaml"), "--tracking-uri", uri)
    assert result.returncode == 2 and "absent.yaml: suite file does not exist" in result.stderr
    cache = fake_mnist_data_dir / "mnist.npz"
    blob = bytearray(cache.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    cache.write_bytes(bytes(blob))
    result = run_cli("run", str(suite_path), "--profile", "smoke", "--device", "cpu", "--tracking-uri", uri,
                     "--data-dir", str(fake_mnist_data_dir), "--no-progress")
    assert result.returncode == 2 and "checksum" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "m.db").exists()


def test_cli_list_shows_methods_and_suites():
    result = run_cli("list")
    assert result.returncode == 0
    for name in ["bprop", "nobprop", "dni", "cdni", "suites/mnist_ff.yaml"]:
        assert name in result.stdout


@pytest.mark.parametrize("group", [False, True], ids=["SIGTERM to the process", "Ctrl-C: SIGINT to its group"])
def test_sigterm_marks_the_running_runs_killed(tmp_path, fake_mnist_data_dir, group):
    """As the README says: Ctrl-C or SIGTERM stops the current run at its next step, ends it and its parent KILLED
    with the signal named (``failure``), and exits 130. A terminal's Ctrl-C reaches the whole process group."""
    import signal
    slow = SUITE.replace("steps: 6", "steps: 100000").replace("eval_every: 3", "eval_every: 100000")
    path = tmp_path / "slow.yaml"
    path.write_text(slow)
    db = tmp_path / "m.db"
    uri = f"sqlite:///{db}"
    proc = subprocess.Popen([sys.executable, "-m", "dnibench.cli", "run", str(path), "--profile", "smoke",
                             "--device", "cpu", "--tracking-uri", uri, "--data-dir", str(fake_mnist_data_dir),
                             "--no-progress"], stderr=subprocess.PIPE, text=True, start_new_session=group)

    def running_child():
        # No client before the run has made the store: MlflowClient's constructor would create it in place, racing
        # the run's own creation (CI: "table ... already exists"). The run links a whole store, so one that exists
        # is complete.
        if not db.exists():
            return None
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("tiny")
        running = exp and client.search_runs([exp.experiment_id], filter_string=f"tags.`{ROLE}` = 'child'")
        return running and (client, exp)

    client, exp = wait_for(running_child, proc)
    if group:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "rerun to resume" in err, err[-3000:]
    ended = {(r.info.status, r.data.tags.get("failure")) for r in client.search_runs([exp.experiment_id])}
    assert ended == {("KILLED", f"stopped by {'SIGINT' if group else 'SIGTERM'}")}   # parent and child


def test_torchrun_processes_split_a_suite_without_overlap(tmp_path, suite_path, fake_mnist_data_dir):
    """Two real processes under torchrun (one creates the store under its file lock, the other waits) share one
    sqlite store: every run once, none twice."""
    uri = f"sqlite:///{tmp_path}/m.db"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = subprocess.run(torchrun + ["-m", "dnibench.cli", "run", str(suite_path), "--profile", "smoke",
                                        "--device", "cpu", "--tracking-uri", uri, "--data-dir",
                                        str(fake_mnist_data_dir), "--no-progress"],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("4 run(s) done") == 2
    _, runs = child_runs(uri)
    hashes = [r.data.tags["config_hash"] for r in runs]
    assert len(hashes) == 8 == len(set(hashes)) and all(r.info.status == "FINISHED" for r in runs)


def test_shard_flag_is_validated(tmp_path, suite_path):
    result = run_cli("run", str(suite_path), "--shard", "3/2", "--tracking-uri", f"sqlite:///{tmp_path}/m.db")
    assert result.returncode == 2 and "--shard 3/2" in result.stderr
    result = run_cli("run", str(suite_path), "--shard", "x", "--tracking-uri", f"sqlite:///{tmp_path}/m.db")
    assert result.returncode == 2 and "expected I/N" in result.stderr


def test_run_and_report_default_to_the_embedded_store_and_reports_here(tmp_path, suite_path, fake_mnist_data_dir,
                                                                         monkeypatch):
    """README: without --tracking-uri the store is `sqlite:///results/mlflow.db` (where the command runs; the
    environment's MLFLOW_TRACKING_URI, where set, instead), and `dnibench report` writes `reports/` from it."""
    import sqlite3

    from dnibench.cli import main
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = ["--profile", "smoke", "--device", "cpu", "--data-dir", str(fake_mnist_data_dir), "--no-progress"]
    assert main(["run", str(suite_path), *args]) == 0
    with sqlite3.connect(tmp_path / "results" / "mlflow.db") as con:
        assert con.execute("select count(*) from runs where status = 'FINISHED'").fetchone()[0] == 9   # 8 + parent
    assert main(["report"]) == 0
    assert "tiny" in (tmp_path / "reports" / "README.md").read_text()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/elsewhere.db")
    assert main(["run", str(suite_path), *args, "--seeds", "1"]) == 0
    with sqlite3.connect(tmp_path / "elsewhere.db") as con:
        assert con.execute("select count(*) from runs where status = 'FINISHED'").fetchone()[0] > 1
