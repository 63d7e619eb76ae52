"""A shared MLflow tracking server, as the README offers it for scale-out (`--tracking-uri http://host:5000`): a real
`mlflow server` (one worker, no job runner) on this machine, two `dnibench run --shard I/2` processes started at once
against it, then a rerun and `dnibench report`, all through the CLI."""
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from cli_processes import REPO, run_env

SUITE = """
name: served
task: mnist
train: {steps: 4, batch_size: 4, lr: 1.0e-3, lr_decay_at: [], eval_every: 4, log_every: 2}
profiles: {smoke: {}, quick: {}, paper: {}}
entries:
  - model: fcn3
    method: [bprop, nobprop, dni, cdni]
"""


@pytest.fixture
def server(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = run_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
                             "--default-artifact-root", str(tmp_path / "server-artifacts")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                break
        except OSError:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "mlflow server did not answer /health in 120 s"
            time.sleep(0.5)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def dnibench(*args: str, cwd) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dnibench.cli", *args], cwd=cwd, env=run_env(PYTHONPATH=str(REPO)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_shards_on_a_tracking_server_run_each_run_once_then_resume_and_report(server, tmp_path, fake_mnist_data_dir):
    from mlflow.tracking import MlflowClient
    suite = tmp_path / "served.yaml"
    suite.write_text(SUITE)
    run = ["run", str(suite), "--profile", "smoke", "--device", "cpu", "--tracking-uri", server,
           "--data-dir", str(fake_mnist_data_dir), "--no-progress"]
    shards = [dnibench(*run, "--shard", f"{i}/2", cwd=tmp_path) for i in (0, 1)]
    outs = [p.communicate(timeout=300) for p in shards]
    assert [p.returncode for p in shards] == [0, 0], [err[-2000:] for _, err in outs]
    assert sorted(out.splitlines()[-1] for out, _ in outs) == ["dnibench: 2 run(s) done, 0 already finished (skipped)"] * 2

    client = MlflowClient(server)
    exp = client.get_experiment_by_name("served")
    children = client.search_runs([exp.experiment_id], filter_string="tags.`dnibench.role` = 'child'")
    assert sorted(r.data.tags["method"] for r in children) == ["bprop", "cdni", "dni", "nobprop"]
    assert {r.info.status for r in children} == {"FINISHED"} and all("test_error" in r.data.metrics for r in children)

    again = dnibench(*run, cwd=tmp_path)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0 and out.splitlines()[-1] == "dnibench: 0 run(s) done, 4 already finished (skipped)", err
    report = dnibench("report", "--tracking-uri", server, "--out", str(tmp_path / "reports"), cwd=tmp_path)
    out, err = report.communicate(timeout=300)
    assert report.returncode == 0, err[-2000:]
    readme = (tmp_path / "reports" / "README.md").read_text()
    assert "4 finished runs: served at smoke (4)." in readme and "![learning curves](curves_served_smoke.png)" in readme
