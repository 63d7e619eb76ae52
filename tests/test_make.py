"""`make reproduce` as the README tells a user to run it, on a tiny fake-MNIST suite (the virtual environment is this
one: `make -o` keeps make from reinstalling it): the report is written when runs FAILED (diverged), the command still
fails, and a rerun retries the failed run; an input error stops before any run or report."""
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from cli_processes import REPO, run_env

VENV = Path(sys.executable).parent.parent

# bprop at lr 1e30 diverges (NaN from its second step, see test_divergence.py): FAILED, the other run goes on.
SUITE = """
name: made
task: mnist
train: {steps: 3, batch_size: 4, lr: 1.0e-3, lr_decay_at: [], eval_every: 3, log_every: 1}
profiles: {smoke: {}, quick: {}, paper: {}}
entries:
  - model: fcn3
    method: bprop
  - model: fcn3
    method: bprop
    train: {lr: 1.0e30}
"""

pytestmark = pytest.mark.skipif(shutil.which("make") is None or not (VENV / "bin" / "dnibench").exists(),
                                reason="needs make and the dnibench entry point in this environment")


def make_reproduce(tmp_path: Path, suite: Path, data_dir: Path) -> subprocess.CompletedProcess:
    env = run_env(DNIBENCH_DATA=str(data_dir))
    return subprocess.run(["make", "-C", str(REPO), "-o", f"{VENV}/.installed", "reproduce", f"VENV={VENV}",
                           f"SUITES={suite}", "PROFILE=smoke", "DEVICE=cpu", f"TRACKING_URI=sqlite:///{tmp_path}/m.db",
                           f"REPORTS={tmp_path}/reports", "RUN_FLAGS=--no-progress"],
                          env=env, capture_output=True, text=True, timeout=600)


def statuses(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return sorted(con.execute("SELECT r.status, p.value FROM runs r JOIN params p ON p.run_uuid = r.run_uuid "
                                  "AND p.key = 'train.lr'").fetchall())


def test_make_reproduce_writes_the_report_when_a_run_failed_and_a_rerun_retries_it(tmp_path, fake_mnist_data_dir):
    suite = tmp_path / "made.yaml"
    suite.write_text(SUITE)
    done = make_reproduce(tmp_path, suite, fake_mnist_data_dir)
    # dnibench run exits 1 (a run FAILED): the report is still written, then make fails on that 1
    assert done.returncode != 0 and "Error 1" in done.stderr, done.stderr[-3000:]
    assert "1 FAILED" in done.stdout, done.stdout[-3000:]
    report = (tmp_path / "reports" / "README.md").read_text()
    assert "Failed runs" in report and "diverged at step" in report
    assert statuses(tmp_path / "m.db") == [("FAILED", "1e+30"), ("FINISHED", "0.001")]
    # the rerun skips the finished run and retries the failed one (which fails again, the same way)
    again = make_reproduce(tmp_path, suite, fake_mnist_data_dir)
    assert again.returncode != 0 and "Error 1" in again.stderr, again.stderr[-3000:]
    assert "0 run(s) done, 1 already finished (skipped), 1 FAILED" in again.stdout, again.stdout[-3000:]
    assert statuses(tmp_path / "m.db") == [("FAILED", "1e+30"), ("FAILED", "1e+30"), ("FINISHED", "0.001")]


def test_make_reproduce_stops_on_an_input_error_before_any_run_or_report(tmp_path, fake_mnist_data_dir):
    suite = tmp_path / "made.yaml"
    suite.write_text(SUITE.replace("method: bprop\n  - model", "method: bprpo\n  - model"))
    done = make_reproduce(tmp_path, suite, fake_mnist_data_dir)
    assert done.returncode != 0 and "Error 2" in done.stderr, done.stderr[-3000:]
    assert [line for line in done.stderr.splitlines() if line.startswith("dnibench: ")] == [
        next(line for line in done.stderr.splitlines() if "bprpo" in line)]
    assert not (tmp_path / "reports").exists() and not (tmp_path / "m.db").exists()
