"""Faults injected into real `dnibench run` processes on tiny fake-MNIST suites: kill -9 at a random
moment then a rerun, two processes starting on one fresh store, SIGTERM while the store is created.
The store is read with sqlite3 directly, so a check never goes through the code under test."""
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from cli_processes import finish, start_run, wait_for

from dnibench.store import check_damaged

SUITE = """
name: faults
task: mnist
train: {steps: 3, batch_size: 4, lr: 1.0e-3, lr_decay_at: [], eval_every: 3, log_every: 1}
profiles: {smoke: {}, quick: {}, paper: {}}
entries:
  - model: [fcn3]
    method: [bprop, dni]
    args: {dni: {synth_hidden_layers: 0}}
"""
SEEDS = 2                                   # 2 methods x 2 seeds: 4 runs


def start(suite: Path, db: Path, data_dir: Path, *extra) -> subprocess.Popen:
    return start_run(suite, db, data_dir, SEEDS, *extra)


def _open(db: Path) -> sqlite3.Connection:
    """The store as the next dnibench process opens it: read-write (never created: mode=rw), so that a journal a
    killed process left behind is rolled back. Read-only, that rollback cannot happen: after a kill -9 in the middle
    of a write the read failed with "attempt to write a readonly database" (a fresh clone's make test, 2026-11-30)."""
    return sqlite3.connect(f"file:{db}?mode=rw", uri=True, timeout=30)


def runs(db: Path) -> list[tuple[str, str, str | None]]:
    """(run id, status, config_hash or None for a parent) of every run in the store."""
    with _open(db) as conn:
        return conn.execute("SELECT r.run_uuid, r.status, t.value FROM runs r LEFT JOIN tags t "
                            "ON t.run_uuid = r.run_uuid AND t.key = 'config_hash'").fetchall()


def assert_complete(db: Path) -> None:
    """Every planned run FINISHED exactly once, nothing RUNNING, the database whole."""
    rows = runs(db)
    finished = [h for _, status, h in rows if status == "FINISHED" and h is not None]
    assert len(finished) == 2 * SEEDS == len(set(finished)), rows
    assert not [r for r in rows if r[1] == "RUNNING"], rows
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


@pytest.fixture
def suite(tmp_path) -> Path:
    path = tmp_path / "faults.yaml"
    path.write_text(SUITE)
    return path


def test_two_processes_on_one_fresh_store_both_finish(tmp_path, suite, fake_mnist_data_dir):
    # Each trial is a fresh race (the two start together; who creates the store varies with the start-up
    # jitter); 3 trials, not 5: each costs two CLI starts (~15 s on a 2-core box) and make test's budget.
    for trial in range(3):
        db = tmp_path / f"m{trial}.db"
        procs = [start(suite, db, fake_mnist_data_dir, "--shard", f"{i}/2") for i in range(2)]
        results = [finish(p) for p in procs]
        for code, out, err in results:
            assert code == 0 and "Traceback" not in err, f"trial {trial}: {err[-2000:]}"
        assert sorted(out.split(" run(s) done")[0].split()[-1] for _, out, _ in results) == [str(SEEDS)] * 2
        assert_complete(db)


def failure_tags(db: Path) -> dict[str, str]:
    with _open(db) as conn:
        return dict(conn.execute("SELECT run_uuid, value FROM tags WHERE key = 'failure'").fetchall())


def test_sigterm_during_creation_then_kill_9_at_a_random_moment_then_rerun(tmp_path, suite, fake_mnist_data_dir):
    """One store through three processes (each fault on its own would cost a CLI start and a store
    creation more): SIGTERM while the store is created, kill -9 anywhere in the suite, a rerun."""
    db = tmp_path / "m.db"
    proc = start(suite, db, fake_mnist_data_dir)
    wait_for(lambda: bool(list(tmp_path.glob(".m.db.creating-*"))), proc)
    proc.send_signal(signal.SIGTERM)
    code, _, err = finish(proc)
    assert code == 130 and "rerun to resume" in err and "Traceback" not in err, err[-2000:]
    check_damaged(db)                       # the creation finished whole; the runs then stopped
    assert {status for _, status, _ in runs(db)} == {"KILLED"}

    delay = random.Random().uniform(0.0, 2.0)   # after its first run exists: anywhere in the suite
    existing = len(runs(db))
    proc = start(suite, db, fake_mnist_data_dir)
    wait_for(lambda: len(runs(db)) > existing, proc)
    time.sleep(delay)
    proc.kill()
    proc.wait()
    before = {run_id for run_id, status, h in runs(db) if status == "FINISHED" and h}
    left_running = {run_id for run_id, status, _ in runs(db) if status == "RUNNING"}

    code, out, err = finish(start(suite, db, fake_mnist_data_dir))
    assert code == 0, f"delay {delay:.2f} s: {err[-2000:]}"
    assert f"{len(before)} already finished" in out, out
    assert before <= {run_id for run_id, status, h in runs(db) if status == "FINISHED" and h}, "finished runs lost"
    assert_complete(db)
    statuses, reasons = {run_id: status for run_id, status, _ in runs(db)}, failure_tags(db)
    for run_id in left_running:             # what kill -9 left RUNNING: KILLED by the rerun, with the reason
        assert statuses[run_id] == "KILLED" and reasons[run_id].startswith(f"owner process {proc.pid} on ")
