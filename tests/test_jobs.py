"""`dnibench run --jobs N` in real CLI processes on tiny fake-MNIST suites: the same results as --jobs 1
(diverged runs included), kill -9 of one worker mid-suite then a rerun, SIGTERM on the parent. The
store is read with sqlite3 directly, so a check never goes through the code under test."""
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from cli_processes import alive, finish, start_run, wait_for

# bprop at lr 1e30 diverges (NaN from its second step, see test_divergence.py): FAILED, the others go on.
SUITE = """
name: jobs
task: mnist
train: {steps: 3, batch_size: 4, lr: 1.0e-3, lr_decay_at: [], eval_every: 3, log_every: 1}
profiles: {smoke: {}, quick: {}, paper: {}}
entries:
  - model: fcn3
    method: [bprop, dni]
    args: {dni: {synth_hidden_layers: 0}}
  - model: fcn3
    method: bprop
    train: {lr: 1.0e30}
"""
SEEDS = 2


def start(suite: Path, db: Path, data_dir: Path, jobs: int, seeds: int = SEEDS) -> subprocess.Popen:
    return start_run(suite, db, data_dir, seeds, "--jobs", str(jobs))


def children(db: Path, timeout: float = 30) -> list[dict]:
    """Every child run: id, status, and its tags (config_hash, owner pid, failure); none before the store exists."""
    if not db.exists():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=timeout) as conn:
        rows = conn.execute("SELECT r.run_uuid, r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                            "AND t.key = 'dnibench.role' AND t.value = 'child'").fetchall()
        out = []
        for run_id, status in rows:
            tags = dict(conn.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (run_id,)).fetchall())
            metrics = dict(conn.execute("SELECT key, value FROM latest_metrics WHERE run_uuid = ?", (run_id,)).fetchall())
            out.append({"id": run_id, "status": status, "hash": tags["config_hash"], "pid": int(tags["dnibench.owner.pid"]),
                        "failure": tags.get("failure"), "metrics": metrics})
        return out


def frozen_owner(db: Path) -> int | None:
    """The pid of a worker that owns a RUNNING run, stopped (SIGSTOP) while it still does; None (and no process left
    stopped) if none does. Without the stop, a worker of these 3-step runs could finish its run between the read
    and the kill, and die between runs."""
    pid = next((r["pid"] for r in children(db) if r["status"] == "RUNNING"), None)
    if pid is None:
        return None
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:              # it finished its last run and exited since the read
        return None
    try:
        if any(r["pid"] == pid and r["status"] == "RUNNING" for r in children(db, timeout=1)):
            return pid
    except sqlite3.OperationalError:        # stopped inside a write: its lock stays until it goes on
        pass
    os.kill(pid, signal.SIGCONT)
    return None


def suite_file(tmp_path: Path, diverging: bool = True) -> Path:
    path = tmp_path / "jobs.yaml"
    path.write_text(SUITE if diverging else SUITE[:SUITE.index("  - model: fcn3\n    method: bprop\n")])
    return path


def test_jobs_2_gives_the_results_of_jobs_1(tmp_path, fake_mnist_data_dir):
    suite = suite_file(tmp_path)
    procs = {jobs: start(suite, tmp_path / f"j{jobs}.db", fake_mnist_data_dir, jobs) for jobs in (1, 2)}
    results = {jobs: finish(proc) for jobs, proc in procs.items()}
    runs = {}
    for jobs, (code, out, err) in results.items():
        assert code == 1 and "Traceback" not in err, err[-2000:]     # 1: the diverged runs FAILED, the rest ran
        assert f"{2 * SEEDS} run(s) done, 0 already finished (skipped), {SEEDS} FAILED" in out, out
        runs[jobs] = {r["hash"]: r for r in children(tmp_path / f"j{jobs}.db")}
    assert len(runs[1]) == len(runs[2]) == 3 * SEEDS
    assert runs[1].keys() == runs[2].keys()
    for config_hash, one in runs[1].items():
        two = runs[2][config_hash]
        assert one["status"] == two["status"] and one["failure"] == two["failure"], (one, two)
        if one["status"] == "FINISHED":     # same seeds, one thread each: bit-identical numbers
            for key in ("final_test_error", "train_loss", "test_error"):
                assert one["metrics"][key] == two["metrics"][key], (key, one, two)
        else:
            assert one["status"] == "FAILED" and "diverged" in one["failure"]
    # With --jobs 2 the workers own the child runs: their pids, not the CLI's; with --jobs 1 the CLI does.
    assert {r["pid"] for r in runs[1].values()} == {procs[1].pid}
    assert procs[2].pid not in {r["pid"] for r in runs[2].values()}
    assert 1 <= len({r["pid"] for r in runs[2].values()}) <= 2


def test_kill_9_of_one_worker_costs_only_its_run_and_a_rerun_completes_it(tmp_path, fake_mnist_data_dir):
    suite = suite_file(tmp_path, diverging=False)
    db = tmp_path / "m.db"
    proc = start(suite, db, fake_mnist_data_dir, jobs=2, seeds=3)       # 6 runs
    pid = wait_for(lambda: frozen_owner(db), proc)
    assert pid != proc.pid                  # a worker owns the run
    os.kill(pid, signal.SIGKILL)            # stopped while it owned a RUNNING run: that run is the one it dies in
    code, out, err = finish(proc)
    assert code == 1 and "Traceback" not in err, err[-2000:]
    after = children(db)
    # The run the worker held when it died (that one, or its next if it had just finished one).
    [victim] = [r for r in after if r["status"] == "KILLED"]
    assert victim["pid"] == pid and victim["failure"].startswith(f"worker process {pid} died (signal SIGKILL)"), victim
    assert not [r for r in after if r["status"] == "RUNNING"]
    others = [r for r in after if r["hash"] != victim["hash"]]
    assert len(others) == 5 and all(r["status"] == "FINISHED" for r in others), others
    assert "5 run(s) done, 0 already finished (skipped), 1 FAILED" in out, out
    assert f"worker process {pid} died" in out, out

    code, out, err = finish(start(suite, db, fake_mnist_data_dir, jobs=2, seeds=3))
    assert code == 0 and "Traceback" not in err, err[-2000:]
    assert "1 run(s) done, 5 already finished (skipped)" in out, out
    rows = children(db)
    finished = [r["hash"] for r in rows if r["status"] == "FINISHED"]
    assert len(finished) == 6 == len(set(finished)) and victim["hash"] in finished, rows
    assert not [r for r in rows if r["status"] == "RUNNING"]


@pytest.mark.parametrize("group", [False, True], ids=["SIGTERM to the parent", "Ctrl-C: SIGINT to the group"])
def test_sigterm_on_the_parent_stops_the_workers_and_kills_their_runs(tmp_path, fake_mnist_data_dir, group):
    """The parent stops each busy worker with one SIGTERM (a terminal's Ctrl-C reaches the workers too, which ignore
    it): their runs end KILLED, tagged with that SIGTERM, and the command exits 130."""
    suite = suite_file(tmp_path, diverging=False)
    suite.write_text(suite.read_text().replace("steps: 3,", "steps: 100000,"))   # runs that never end alone
    db = tmp_path / "m.db"
    proc = start_run(suite, db, fake_mnist_data_dir, SEEDS, "--jobs", "2", session=group)
    wait_for(lambda: len([r for r in children(db) if r["status"] == "RUNNING"]) == 2, proc)
    workers = psutil.Process(proc.pid).children(recursive=True)   # forkserver's too
    if group:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    code, _, err = finish(proc)
    assert code == 130 and "rerun to resume" in err and "Traceback" not in err, err[-2000:]
    rows = children(db)
    assert [(r["status"], r["failure"]) for r in rows] == [("KILLED", "stopped by SIGTERM")] * 2, rows
    assert {r["pid"] for r in rows} <= {p.pid for p in workers}
    deadline = time.monotonic() + 30
    while alive(workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(workers)


def test_kill_9_of_the_parent_stops_the_workers_and_kills_their_runs(tmp_path, fake_mnist_data_dir):
    """kill -9 of `dnibench run --jobs 2` itself mid-suite: nothing in the parent can act, so each worker must notice
    by itself (its pipe to the parent closed) and stop its run at the next step, KILLED with the reason, rather than
    train it to the end as an orphan and mark it FINISHED behind a rerun's back."""
    suite = suite_file(tmp_path, diverging=False)
    suite.write_text(suite.read_text().replace("steps: 3,", "steps: 100000,"))   # runs that never end alone
    db = tmp_path / "m.db"
    proc = start(suite, db, fake_mnist_data_dir, jobs=2)
    wait_for(lambda: len([r for r in children(db) if r["status"] == "RUNNING"]) == 2, proc)
    workers = psutil.Process(proc.pid).children(recursive=True)   # forkserver's too
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)             # not its output: the workers hold that pipe open while they live
    deadline = time.monotonic() + 30
    while (alive(workers) or [r for r in children(db) if r["status"] == "RUNNING"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.stdout.close(), proc.stderr.close()
    rows = children(db)
    assert [r["status"] for r in rows] == ["KILLED", "KILLED"], rows
    assert {r["failure"] for r in rows} == {"the process that started this worker died (its pipe to it closed)"}, rows
    assert not alive(workers)


@pytest.mark.parametrize("jobs", ["0", "257", "x"])
def test_bad_jobs_is_one_line(tmp_path, jobs, capsys):
    from dnibench.cli import main
    suite = suite_file(tmp_path)
    with pytest.raises(SystemExit) if jobs == "x" else _nothing():
        assert main(["run", str(suite), "--jobs", jobs, "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--jobs" in err
    assert not (tmp_path / "m.db").exists()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_dead_forkserver_falls_back_to_spawn(monkeypatch, capsys):
    """Seen once on a GPU machine: the forkserver died while forking a worker (EOFError). The pool then
    starts its workers with spawn, says so in one line, and goes on."""
    import multiprocessing as mp

    from dnibench import pool
    if "forkserver" not in mp.get_all_start_methods():
        pytest.skip("no forkserver on this platform")
    started = []

    def start_in(self, ctx):
        started.append(ctx.get_start_method())
        if ctx.get_start_method() == "forkserver":
            raise EOFError("unexpected EOF")
        return "worker"
    monkeypatch.setattr(pool.WorkerPool, "_start_in", start_in)
    workers = pool.WorkerPool(2, "sqlite:///unused.db", "cpu", None, None, client=None)
    assert workers.workers == ["worker", "worker"] and started == ["forkserver", "spawn", "spawn"]
    assert workers.ctx.get_start_method() == "spawn"
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dnibench: the forkserver failed to start a worker (EOFError); starting workers with spawn instead"]


def test_a_spawn_that_fails_is_raised_as_it_is(monkeypatch, capsys):
    """Only a forkserver's failure falls back (to spawn); spawn's own is the error, raised once, with no retry."""
    import multiprocessing as mp

    from dnibench import pool
    started = []

    def start_in(self, ctx):
        started.append(ctx.get_start_method())
        raise ConnectionError("refused")
    monkeypatch.setattr(pool, "_context", lambda: mp.get_context("spawn"))
    monkeypatch.setattr(pool.WorkerPool, "_start_in", start_in)
    with pytest.raises(ConnectionError, match="refused"):
        pool.WorkerPool(2, "sqlite:///unused.db", "cpu", None, None, client=None)
    assert started == ["spawn"] and capsys.readouterr().err == ""
