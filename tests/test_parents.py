"""The parents of a parallel run (parallel/launch._relay) and of `--jobs` (pool.WorkerPool) on every path a real
worker takes: rows and progress, a summary, a divergence, errors from several workers, a death without a word, a
silent hang, a worker that dies between runs or before it was ready. Everything runs in this process with fake
workers over real pipes (tests/test_last_word.py), so each path is checked line by line, not only through the
real processes of test_parallel and test_jobs.
"""
import multiprocessing
import time

import pytest
import torch

from dnibench import pool
from dnibench.errors import Diverged, WorkerFailed
from dnibench.parallel import launch
from test_last_word import PID, Interrupt, LastWord, Spec, Working, _pool_with


class Says(LastWord):
    """A worker whose messages are all in its pipe from the start. ``exitcode`` None: it stays alive (its pipe
    open); otherwise it exits with that code at the parent's first read of its pipe."""

    def __init__(self, messages, exitcode=None, pid=PID):
        super().__init__(None, exitcode)
        for message in messages:
            self.writer.send(message)
        self.pid = pid

    def poll(self) -> bool:
        self.polls += 1
        assert self.polls < 200, "the parent kept polling a worker with nothing more to say"
        if self.alive and self.code is not None:
            self.writer.close()
            self.running.close()
            self.alive, self.exitcode = False, self.code
        return self.reader.poll()


def relay(workers, *, timeout_s=60.0):
    """_relay over ``workers``: returns (its result, the rows logged, the steps reported)."""
    rows, steps = [], []
    done = launch._relay(workers, workers, len(workers), lambda row, step: rows.append((row, step)), steps.append,
                         Interrupt, timeout_s=timeout_s)
    return done, rows, steps


def test_relay_logs_every_workers_rows_and_counts_progress_by_the_last_worker():
    first = Says([("row", 0, 4, {"synth_loss/0": 0.5}), ("row", 0, 8, {"synth_loss/0": 0.25}),
                  ("done", 0, {"busy/0": 0.9})], exitcode=0)
    last = Says([("beat", 1), ("row", 1, 3, {"loss": 2.0}), ("row", 1, 6, {"loss": 1.0}), ("beat", 1),
                 ("row", 1, 6, {"test_error": 0.3}), ("done", 1, {"busy/1": 0.8})], exitcode=0)
    done, rows, steps = relay([first, last])
    assert done == {0: {"busy/0": 0.9}, 1: {"busy/1": 0.8}}
    assert rows == [({"synth_loss/0": 0.5}, 4), ({"synth_loss/0": 0.25}, 8),
                    ({"loss": 2.0}, 3), ({"loss": 1.0}, 6), ({"test_error": 0.3}, 6)]
    assert steps == [1, 2, 3, 4, 5, 6]                 # each step once, and only the last worker's


def test_relay_waits_for_a_worker_that_has_not_finished():
    """A finished worker's summary is kept while the other is still at work; its rows keep coming."""
    first = Says([("done", 0, {"a": 1.0})], exitcode=0)

    class Later(Says):                                 # says "done" at the parent's fifth read only
        def poll(self):
            if self.polls == 4:
                self.writer.send(("row", 1, 2, {"loss": 1.0}))
                self.writer.send(("done", 1, {"b": 2.0}))
            return super().poll()
    done, rows, steps = relay([first, Later([("row", 1, 1, {"loss": 3.0})])])
    assert done == {0: {"a": 1.0}, 1: {"b": 2.0}}
    assert rows == [({"loss": 3.0}, 1), ({"loss": 1.0}, 2)] and steps == [1, 2]


def test_relay_raises_a_divergence_as_diverged():
    with pytest.raises(Diverged) as err:
        relay([Says([("row", 0, 2, {"loss": 1.0}), ("diverged", 0, 3)])])
    assert str(err.value) == "diverged at step 3 (non-finite loss)"


def test_relay_names_the_first_workers_error_when_several_fail(monkeypatch):
    """Every worker accounted for (one done, two failed): the reason at once, without the grace period."""
    monkeypatch.setattr(launch, "REPORT_GRACE_S", 30.0)
    start = time.monotonic()
    errors = [Says([("error", rank, f"RuntimeError: stop {rank}", "Traceback ...")], exitcode=1) for rank in (1, 2)]
    with pytest.raises(WorkerFailed) as err:
        relay([Says([("done", 0, {})], exitcode=0)] + errors)
    assert str(err.value) == "worker 1: RuntimeError: stop 1" and time.monotonic() - start < 10


def test_relay_blames_a_worker_that_died_without_a_word_over_its_peers_errors():
    """Its peers' errors only say the connection closed: the cause is the worker that died."""
    peer = Says([("error", 0, "RuntimeError: Connection closed by peer", "Traceback ...")], exitcode=1)
    dead = Says([("row", 1, 7, {"loss": 1.0})], exitcode=-9, pid=31337)
    with pytest.raises(WorkerFailed) as err:
        relay([peer, dead])
    assert str(err.value) == "parallel worker 1 (pid 31337) died (signal SIGKILL) after step 7 of the last worker"


def test_relay_gives_the_others_a_moment_to_say_why_they_stopped(monkeypatch):
    """An error while another worker is still alive and silent: the run fails once REPORT_GRACE_S has passed."""
    monkeypatch.setattr(launch, "REPORT_GRACE_S", 0.3)
    start = time.monotonic()
    with pytest.raises(WorkerFailed) as err:
        relay([Says([("error", 0, "ValueError: boom", "Traceback ...")], exitcode=1), Says([])])
    assert str(err.value) == "worker 0: ValueError: boom"
    assert 0.3 <= time.monotonic() - start < 5


def test_relay_fails_a_run_whose_workers_all_fall_silent():
    start = time.monotonic()
    with pytest.raises(WorkerFailed) as err:
        relay([Says([("row", 0, 5, {"loss": 1.0})])], timeout_s=-59.9)      # silence allowed: timeout_s + 60 = 0.1 s
    assert str(err.value) == "no word from any parallel worker in 0 s (after step 5)"
    assert 0.1 <= time.monotonic() - start < 5          # at the first look after the limit: each look waits 0.5 s


def test_relay_hears_a_beat_as_a_sign_of_life():
    """Beats between log points keep a run alive past the silence limit."""
    class Beats(Says):                                 # a beat at every read for 0.8 s, then its summary
        def poll(self):
            if time.monotonic() - self.born > 0.8:
                self.writer.send(("done", 0, {"ok": 1.0}))
                self.code = 0
            elif not self.reader.poll():
                time.sleep(0.1)
                self.writer.send(("beat", 0))
            return super().poll()
    worker = Beats([])
    worker.born = time.monotonic()
    assert relay([worker], timeout_s=-59.6)[0] == {0: {"ok": 1.0}}


def test_a_worker_that_exits_cleanly_with_its_pipe_still_open_is_not_yet_dead():
    """Exit code 0 with its pipe not yet read to its end: its summary may still be on the way."""
    class Slow(Says):                                  # exited, its summary arriving at the parent's third read
        def poll(self):
            self.polls += 1
            if self.polls == 3:
                self.writer.send(("done", 0, {"late": 1.0}))
                self.writer.close()
            return self.reader.poll()
    worker = Slow([])
    worker.alive, worker.exitcode = False, 0
    worker.running.close()
    assert relay([worker])[0] == {0: {"late": 1.0}}


# ---- the pool of `--jobs` ----------------------------------------------------------------------------------------

def test_the_pool_reports_each_runs_failure_as_its_worker_gave_it():
    class Fails(Working):
        def send(self, message):
            self.sent_to_worker.append(message)
            self.writer.send(("done", message[0], f"diverged at step {message[0]}"))
    worker = Fails()
    workers, results, specs = _pool_with(worker), [], [Spec(), Spec()]
    workers.run("1", "parent", specs, lambda spec, failure: results.append((spec, failure)))
    assert results == [(specs[0], "diverged at step 0"), (specs[1], "diverged at step 1")]


def test_the_pool_shares_the_runs_among_its_workers():
    a, b = Working(), Working()
    workers, results, specs = _pool_with(a), [], [Spec() for _ in range(4)]
    workers.workers.append(pool._Worker(b, b))
    workers.workers[1].ready = workers.workers[1].started = True
    workers.run("1", "parent", specs, lambda spec, failure: results.append(spec))
    assert [m[0] for m in a.sent_to_worker] == [0, 2] and [m[0] for m in b.sent_to_worker] == [1, 3]
    assert sorted(map(id, results)) == sorted(map(id, specs))


def test_a_worker_that_dies_between_runs_costs_nothing():
    """Dead while idle (it exited right after its run): nothing to mark or report, it is given no run it would never
    start; a new worker takes its place and gets the next run."""
    class OneRun(Working):                             # exits as the parent reads its "done"
        def poll(self):
            if self.sent_to_worker and self.alive:
                self.writer.close()
                self.running.close()
                self.alive, self.exitcode = False, -9
            return self.reader.poll()
    first = OneRun()
    workers, results, specs = _pool_with(first), [], [Spec(), Spec()]
    workers.run("1", "parent", specs, lambda spec, failure: results.append((spec, failure)))
    assert results == [(specs[0], None), (specs[1], None)] and workers.killed == [] and workers.started == 1
    fresh = workers.workers[0].proc
    assert first.sent_to_worker == [(0, "1", "parent", specs[0])]
    assert fresh is not first and fresh.sent_to_worker == [(1, "1", "parent", specs[1])]


def test_a_worker_that_never_became_ready_stops_the_pool():
    """A worker that exits before it was ever ready is a broken install: every worker would do the same."""
    broken = Says([], exitcode=1)
    workers = _pool_with(broken)
    workers.workers[0].ready = workers.workers[0].started = False
    with pytest.raises(RuntimeError) as err:
        workers.run("1", "parent", [Spec()], lambda spec, failure: None)
    assert str(err.value) == f"worker process {PID} exited with code 1 before it was ready (its error is above)"
    assert workers.started == 0


def test_a_run_sent_to_a_worker_that_just_died_is_reported_with_its_death():
    class Gone(Says):
        def send(self, message):
            raise BrokenPipeError
    workers, results = _pool_with(Gone([], exitcode=-9)), []
    workers.run("1", "parent", [Spec()], lambda spec, failure: results.append(failure))
    reason = f"worker process {PID} died (signal SIGKILL) during the run; the other runs went on"
    assert results == [reason] and workers.killed == [(PID, reason)] and workers.started == 1


@pytest.mark.parametrize("code, text", [(-9, "signal SIGKILL"), (-15, "signal SIGTERM"), (-200, "signal 200"),
                                        (3, "exit code 3"), (0, "exit code 0"), (None, "exit code None")])
def test_a_workers_exit_is_said_in_words(code, text):
    assert pool._exit_text(code) == text and launch._exit_text(code) == text


class Proc:
    """A worker process for the stopping paths: ``stops`` says whether it exits when joined (a SIGTERM'd worker
    ending its run at the next step) or stays until killed."""

    def __init__(self, pid: int, alive: bool = True, stops: bool = True):
        self.pid, self.alive, self.stops = pid, alive, stops
        self.joins, self.killed = [], False

    def is_alive(self) -> bool:
        return self.alive

    def join(self, timeout=None) -> None:
        self.joins.append(timeout)
        if self.stops:
            self.alive = False

    def kill(self) -> None:
        self.killed, self.alive = True, False


class Parent:
    """The worker's end of its pipe: hands it ``tasks`` in turn (an exception is raised at that read; past the end,
    EOFError: the parent is gone), keeps what it is sent, and whether it was closed."""

    def __init__(self, tasks=()):
        self.tasks, self.said, self.closed = list(tasks), [], False

    def send(self, message) -> None:
        self.said.append(message)

    def recv(self):
        if not self.tasks:
            raise EOFError
        task = self.tasks.pop(0)
        if isinstance(task, BaseException):
            raise task
        return task

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("grace", [30.0, 0.0])
def test_closing_the_pool_stops_busy_workers_by_signal_and_idle_ones_by_word(monkeypatch, grace):
    """Busy workers (and one never ready) get one SIGTERM, every live one is told to exit; one still alive after
    STOP_GRACE_S is killed and its run marked KILLED; every pipe is closed and the pool is empty."""
    signals = []
    monkeypatch.setattr(pool.os, "kill", lambda pid, sig: signals.append((pid, sig)))
    monkeypatch.setattr(pool, "STOP_GRACE_S", grace)
    workers = _pool_with(Working())
    slots = []
    for pid, alive, stops, task, started in [(11, True, True, 3, True), (12, True, True, None, True),
                                             (13, True, True, None, False), (14, False, True, None, True),
                                             (15, True, False, 5, True)]:
        slot = pool._Worker(Proc(pid, alive, stops), Parent())
        slot.task, slot.started = task, started
        slots.append(slot)
    workers.workers = list(slots)
    workers.close()
    assert signals == [(11, pool.signal.SIGTERM), (13, pool.signal.SIGTERM), (15, pool.signal.SIGTERM)]
    assert [s.conn.said for s in slots] == [[None], [None], [None], [], [None]]
    assert [s.proc.killed for s in slots] == [False, False, False, False, True]
    assert workers.killed == [(15, f"worker process 15 did not stop within {grace:.0f} s of the stop: killed")]
    assert all(s.conn.closed for s in slots) and workers.workers == []
    assert all(s.proc.joins and max(0, grace - 1) <= s.proc.joins[0] <= grace for s in slots)   # counted once for all


def test_closing_the_pool_forgives_a_worker_gone_before_its_signal(monkeypatch):
    def gone(pid, sig):
        raise ProcessLookupError
    monkeypatch.setattr(pool.os, "kill", gone)
    workers = _pool_with(Working())
    slot = pool._Worker(Proc(21), Parent())
    slot.task, slot.started = 0, True
    workers.workers = [slot]
    workers.close()
    assert slot.conn.said == [None] and slot.conn.closed and not slot.proc.killed and workers.killed == []


def test_a_parallel_runs_workers_are_stopped_and_each_waited_for():
    """Finished workers get the grace to leave gloo; any still alive then is killed; each is joined at the end."""
    done, stuck = Proc(1), Proc(2, stops=False)
    launch._stop([done, stuck], grace_s=0.2)
    assert not done.killed and stuck.killed
    assert 0.0 < done.joins[0] <= 0.2 and 0.0 <= stuck.joins[0] <= 0.2 and done.joins[-1] == stuck.joins[-1] == 30
    now = Proc(3, stops=False)
    launch._stop([now])                                # a failure: no grace
    assert now.killed and now.joins == [0.0, 30]


def test_the_test_hooks_are_read_from_the_environment(monkeypatch):
    for name in ("DNIBENCH_TEST_WORKER_DELAY", "DNIBENCH_TEST_WORKER_EXIT", "DNIBENCH_TEST_PARALLEL_DUMP"):
        monkeypatch.delenv(name, raising=False)
    assert launch._hooks() == {}
    monkeypatch.setenv("DNIBENCH_TEST_WORKER_DELAY", "1:0.25")
    monkeypatch.setenv("DNIBENCH_TEST_WORKER_EXIT", "0:7")
    monkeypatch.setenv("DNIBENCH_TEST_PARALLEL_DUMP", "/some/dir")
    hooks = launch._hooks()
    assert hooks == {"delay": {1: 0.25}, "exit": {0: 7}, "dump": "/some/dir"}
    assert type(hooks["exit"][0]) is int and type(hooks["delay"][1]) is float


class Started:
    """A worker process of a parallel run, started by ``Context`` below: at ``start`` it reads what the parent gave
    it (its arguments, the data file) and says ``messages(rank)`` on its pipe, then has exited with ``exitcode``."""

    def __init__(self, ctx, target, name, daemon, args):
        self.ctx, self.target, self.name, self.daemon, self.args = ctx, target, name, daemon, args
        self.pid, self.exitcode, self.killed, self.joins = 5000 + args[0], None, False, []
        self._exited, self._gone = multiprocessing.Pipe(duplex=False)

    def start(self) -> None:
        rank, spec_json, data_path, rendezvous, conn, hooks, timeout_s = self.args
        self.ctx.seen.append({"rank": rank, "name": self.name, "daemon": self.daemon, "target": self.target,
                              "spec": spec_json, "data": torch.load(data_path), "data_path": data_path,
                              "rendezvous": rendezvous, "hooks": hooks, "timeout_s": timeout_s})
        for message in self.ctx.messages(rank):
            conn.send(message)
        conn.close()
        self._gone.close()
        self.exitcode = self.ctx.exitcode

    def is_alive(self) -> bool:
        return self.exitcode is None

    @property
    def sentinel(self) -> int:
        return self._exited.fileno()

    def join(self, timeout=None) -> None:
        self.joins.append(timeout)

    def kill(self) -> None:
        self.killed = True


class Context:
    def __init__(self, messages, exitcode=0):
        self.messages, self.exitcode, self.seen, self.procs = messages, exitcode, [], []

    def Pipe(self, duplex=True):
        return multiprocessing.Pipe(duplex=duplex)

    def Process(self, target, name, daemon, args):
        self.procs.append(Started(self, target, name, daemon, args))
        return self.procs[-1]


def two_workers(train_subset=None, test_subset=None):
    """A parallel cdni spec at K = 2 on 64 training and 20 test examples, with these subsets (a subset past the data:
    all of it), and the sizes each worker must be given."""
    from test_parallel import spec
    from dnibench.data import ImageData
    g = torch.Generator().manual_seed(0)
    data = ImageData(torch.rand(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g),
                     torch.rand(20, 1, 8, 8, generator=g), torch.randint(0, 10, (20,), generator=g), 10, "fake")
    run_spec = spec("cdni", 2)
    run_spec.train.train_subset, run_spec.train.test_subset = train_subset, test_subset
    return run_spec, data, {"train": min(train_subset or 64, 64), "test": min(test_subset or 20, 20)}


@pytest.mark.parametrize("subsets", [(40, 500), (500, 8), (None, None)], ids=["train-subset", "test-subset", "all"])
def test_a_parallel_run_hands_each_worker_its_part_and_merges_what_they_say(subsets, monkeypatch):
    """Each worker gets its rank, the spec, the data subset in one file, the rendezvous, the hooks and gloo's
    timeout; the run logs every row, counts the last worker's steps, and logs and returns the workers' summaries
    merged (the last worker's word last), the sampler's, the threads and the machine's load."""
    run_spec, data, sizes = two_workers(*subsets)
    monkeypatch.setattr(launch.os, "getloadavg", lambda: (1.5, 5.5, 15.5))
    monkeypatch.setenv("DNIBENCH_GLOO_TIMEOUT_S", "12.5")
    monkeypatch.setenv("DNIBENCH_TEST_WORKER_DELAY", "1:0.5")

    def messages(rank):
        return [("row", rank, 6, {f"synth_loss/{rank}": 0.5}),
                ("done", rank, {"shared": float(rank), f"busy/{rank}": 0.9} | ({"cpu_threads": 3.0} if rank else {}))]
    ctx = Context(messages)
    monkeypatch.setattr(launch, "_context", lambda: ctx)
    rows, steps = [], []
    summary = launch.train_parallel(run_spec, data, lambda row, step: rows.append((row, step)), steps.append)
    from dnibench.parallel.worker import worker_main
    assert [(s["rank"], s["name"], s["daemon"], s["target"]) for s in ctx.seen] == [
        (rank, f"dnibench-stage-worker{rank}", True, worker_main) for rank in (0, 1)]
    for seen in ctx.seen:
        assert seen["spec"] == run_spec.model_dump_json() and seen["timeout_s"] == 12.5
        assert seen["hooks"] == {"delay": {1: 0.5}}
        assert seen["rendezvous"] == str(launch.Path(seen["data_path"]).parent / "rendezvous")
        given = seen["data"]
        assert set(given) == {"x_train", "y_train", "x_test", "y_test", "num_classes"} and given["num_classes"] == 10
        for key, n in (("x_train", sizes["train"]), ("y_train", sizes["train"]), ("x_test", sizes["test"]),
                       ("y_test", sizes["test"])):
            assert torch.equal(given[key], getattr(data, key)[:n])
    folder = launch.Path(ctx.seen[0]["data_path"]).parent
    assert folder.name.startswith("dnibench-parallel-") and not folder.exists()   # named for what it is, and gone
    assert rows[:2] == [({"synth_loss/0": 0.5}, 6), ({"synth_loss/1": 0.5}, 6)] and steps == [1, 2, 3, 4, 5, 6]
    assert rows[-1] == (summary, run_spec.train.steps) and len(rows) == 3
    assert summary["shared"] == 1.0 and summary["busy/0"] == summary["busy/1"] == 0.9
    assert summary["cpu_threads"] == 3.0                                      # what the workers said torch ran
    assert {"cpu_util_pct_mean", "cpu_load_avg_1m_mean"} <= set(summary)
    assert summary["load_1m/start"] == summary["load_1m/end"] == 1.5         # the one-minute load, at start and end
    assert all(p.joins and 0 < p.joins[0] <= 5.0 and not p.killed for p in ctx.procs)   # a moment to leave gloo


def test_a_parallel_run_without_a_word_on_threads_logs_its_settings(monkeypatch):
    run_spec, data, _ = two_workers()
    ctx = Context(lambda rank: [("done", rank, {})])
    monkeypatch.setattr(launch, "_context", lambda: ctx)
    summary = launch.train_parallel(run_spec, data, lambda row, step: None)
    assert summary["cpu_threads"] == float(run_spec.parallel.threads) == 1.0


def test_a_failed_parallel_run_kills_its_workers_at_once_and_leaves_no_folder(monkeypatch):
    run_spec, data, _ = two_workers()
    ctx = Context(lambda rank: [("error", rank, f"RuntimeError: rank {rank}", "Traceback ...")], exitcode=1)
    monkeypatch.setattr(launch, "_context", lambda: ctx)
    with pytest.raises(WorkerFailed) as err:
        launch.train_parallel(run_spec, data, lambda row, step: None)
    assert str(err.value) == "worker 0: RuntimeError: rank 0"
    assert all(p.joins[0] == 0.0 for p in ctx.procs)                          # no grace after a failure
    assert not launch.Path(ctx.seen[0]["data_path"]).parent.exists()


def test_a_worker_stopped_by_a_signal_gets_no_run_while_it_exits():
    """A worker that said "killed" is on its way out: the next run waits for its replacement."""
    class Exiting(Says):                               # still alive for its first three reads after saying it
        def poll(self):
            if self.polls == 3:
                self.code = -15
            return super().poll()
    dying = Exiting([("killed", 0, None)])
    workers, results, specs = _pool_with(dying), [], [Spec(), Spec()]
    workers.run("1", "parent", specs, lambda spec, failure: results.append((spec, failure)))
    assert [m[0] for m in dying.sent_to_worker] == [0] and [m[0] for m in workers.workers[0].proc.sent_to_worker] == [1]
    assert results == [(specs[0], f"worker process {PID} was stopped by a signal: run KILLED"), (specs[1], None)]


def test_relay_waits_on_the_pipes_and_on_the_workers_not_yet_seen_exited(monkeypatch):
    """A worker's death wakes the parent through its sentinel even while its pipe stays open (a child of it holding
    the pipe); a worker seen exited, or done, is not waited on again (its sentinel would wake the parent at once)."""
    waits = []
    real = launch.wait_any

    def wait_any(objects, timeout):
        waits.append(list(objects))
        return real(objects, timeout)
    monkeypatch.setattr(launch, "wait_any", wait_any)
    done = Says([("done", 0, {})], exitcode=0)
    error = Says([("error", 1, "ValueError: boom", "Traceback ...")], exitcode=1)
    alive = Says([])
    monkeypatch.setattr(launch, "REPORT_GRACE_S", 1.2)        # each look waits 0.5 s: a third look unless 0.7 s late
    with pytest.raises(WorkerFailed):
        relay([done, error, alive])
    assert waits[0] == [done, error, alive, done.sentinel, error.sentinel, alive.sentinel]
    assert all(w == [alive, alive.sentinel] for w in waits[2:]) and len(waits) >= 3


def test_the_pool_and_a_parallel_run_start_workers_from_a_forkserver_that_preloads_them():
    """forkserver where there is one, its preloaded modules ones that exist (a wrong name would be skipped silently,
    and every worker would import it all itself); spawn elsewhere."""
    import importlib
    from multiprocessing import forkserver
    if "forkserver" not in multiprocessing.get_all_start_methods():
        pytest.skip("no forkserver on this platform")
    for module in (pool, launch):
        ctx = module._context()
        assert ctx.get_start_method() == "forkserver"
        preload = forkserver._forkserver._preload_modules
        assert "dnibench.runner" in preload
        for name in preload:
            importlib.import_module(name)
    assert set(forkserver._forkserver._preload_modules) == {"dnibench.parallel.worker", "dnibench.runner", "torch._dynamo"}
    pool._context()
    assert set(forkserver._forkserver._preload_modules) == {"dnibench.runner", "dnibench.pool"}


def test_without_a_forkserver_workers_are_spawned(monkeypatch):
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["fork", "spawn"])
    for module in (pool, launch):
        assert module._context().get_start_method() == "spawn"


class Born:
    """A process as a start context makes it: what it was given, and whether it was started."""

    def __init__(self, target, args, daemon, name):
        self.target, self.args, self.daemon, self.name, self.started = target, args, daemon, name, False

    def start(self):
        self.started = True


def test_a_pools_workers_are_started_with_its_settings_and_not_yet_ready(monkeypatch):
    pipes = []

    class Ctx:
        def Pipe(self):
            pipes.append(multiprocessing.Pipe())
            return pipes[-1]

        Process = Born

        @staticmethod
        def get_start_method():
            return "forkserver"
    monkeypatch.setattr(pool, "_context", Ctx)
    workers = pool.WorkerPool(2, "sqlite:///m.db", "cuda", "data", "cifar", client="client")
    assert len(workers.workers) == 2 and workers.client == "client" and workers.jobs == 2
    for slot, (mine, theirs) in zip(workers.workers, pipes):
        proc = slot.proc
        assert proc.started and proc.target is pool._worker and proc.daemon and proc.name == "dnibench-worker"
        assert proc.args == (theirs, "sqlite:///m.db", "cuda", "data", "cifar", 2)
        assert slot.conn is mine and theirs.closed and not mine.closed
        assert (slot.ready, slot.started, slot.task) == (False, False, None)


def test_a_worker_dies_with_the_process_that_started_it():
    """Linux: the kernel sends the worker SIGTERM when its parent dies (PR_SET_PDEATHSIG), so no orphan trains on."""
    import ctypes
    import signal
    import sys
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux only")
    libc = ctypes.CDLL(None, use_errno=True)
    value = ctypes.c_int(-1)
    try:
        pool._die_with_parent()
        assert libc.prctl(2, ctypes.byref(value)) == 0            # PR_GET_PDEATHSIG
        assert value.value == signal.SIGTERM
    finally:
        libc.prctl(1, 0)                                         # this test process: as it was


@pytest.mark.parametrize("duplex", [True, False], ids=["jobs worker's socket pair", "parallel worker's pipe"])
def test_a_worker_is_signalled_once_its_parents_end_of_the_pipe_closes(monkeypatch, duplex):
    """Started by the forkserver, a worker's parent is the forkserver, which outlives a killed `dnibench run` while its
    workers live: the kernel's parent-death signal never comes. watch_parent waits on the worker's own end of its pipe
    instead: SIGTERM to itself, with the cause said, once the parent's end closes, and not before (not on a message)."""
    import multiprocessing as mp
    import signal
    import time
    from dnibench import interrupt
    sent = []
    monkeypatch.setattr(pool.os, "kill", lambda pid, signum: sent.append((pid, signum, interrupt.reason())))
    parents_end, workers_end = mp.Pipe(duplex=duplex)

    def wait_for_signal():
        deadline = time.monotonic() + 5
        while not sent and time.monotonic() < deadline:
            time.sleep(0.01)
    try:
        pool.watch_parent(workers_end)
        if duplex:
            parents_end.send(("a task",))                            # readable: no reason to stop
        time.sleep(0.3)
        assert sent == []
        parents_end.close()                                          # as a kill -9 of the parent does
        wait_for_signal()
        assert sent == [(pool.os.getpid(), signal.SIGTERM,
                         "the process that started this worker died (its pipe to it closed)")]
    finally:                    # the watch ends here, while os.kill is still the stand-in, whatever failed above
        parents_end.close()
        wait_for_signal()
        workers_end.close()
        interrupt._cause.clear()


# ---- a `--jobs` worker's own loop (pool._worker), in this process ---------------------------------------------------

@pytest.fixture
def worker_in_process(monkeypatch):
    """pool._worker with its process-wide effects recorded instead of made (signals, PDEATHSIG, MLflow's URI), the
    data sets and the runs stood in for: ``(run, calls)``; ``run(tasks, outcomes)`` runs the loop to its end and
    returns what it said. ``outcomes[i]``: run i's failure, or an exception it raises."""
    import signal
    import mlflow
    import mlflow.tracking
    from dnibench import interrupt, runner, tasks as task_registry
    calls = {"signals": [], "loads": [], "runs": [], "checks": 0}
    monkeypatch.setenv("DNIBENCH_JOBS", "1")
    monkeypatch.setattr(pool, "_die_with_parent", lambda conn: calls.__setitem__("orphan_guard", conn))
    monkeypatch.setattr(interrupt, "install", lambda: calls.__setitem__("installed", True))
    monkeypatch.setattr(signal, "signal", lambda signum, handler: calls["signals"].append((signum, handler)))
    monkeypatch.setattr(mlflow, "set_tracking_uri", lambda uri: calls.__setitem__("uri", uri))

    class Client:
        def __init__(self, uri):
            calls["client_uri"] = uri
    monkeypatch.setattr(mlflow.tracking, "MlflowClient", Client)

    class Task:
        def __init__(self, name):
            self.name = name

        def load(self, data_dir, cifar_dir):
            calls["loads"].append((self.name, data_dir, cifar_dir))
            return f"{self.name} data"
    monkeypatch.setattr(task_registry, "get_task", Task)

    def run(tasks, outcomes, interrupt_at=None):
        def run_child(client, exp_id, parent_id, spec, data, dev, progress):
            calls["runs"].append((type(client).__name__, exp_id, parent_id, spec.name, data, str(dev), progress))
            outcome = outcomes[len(calls["runs"]) - 1]
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        monkeypatch.setattr(runner, "_run_child", run_child)

        def check():
            calls["checks"] += 1
            if calls["checks"] == interrupt_at:
                raise KeyboardInterrupt
        monkeypatch.setattr(interrupt, "check", check)
        parent = Parent(tasks)
        pool._worker(parent, "sqlite:///w.db", "cpu", "data-dir", "cifar-dir", 3)
        calls["jobs_env"] = pool.os.environ["DNIBENCH_JOBS"]
        return parent.said
    return run, calls


def spec_of(name, task):
    from types import SimpleNamespace
    return SimpleNamespace(name=name, task=task)


def test_a_pool_worker_says_ready_then_runs_each_task_on_its_data_loaded_once(worker_in_process):
    import signal
    run, calls = worker_in_process
    tasks = [(0, "e1", "p1", spec_of("a", "mnist")), (1, "e1", "p1", spec_of("b", "mnist")),
             (2, "e2", "p2", spec_of("c", "cifar10")), None, (3, "e2", "p2", spec_of("never", "mnist"))]
    said = run(tasks, [None, "diverged at step 4 (non-finite loss)", None])
    assert said == [("ready", None, None), ("done", 0, None), ("done", 1, "diverged at step 4 (non-finite loss)"),
                    ("done", 2, None)]
    assert calls["runs"] == [("Client", "e1", "p1", "a", "mnist data", "cpu", False),
                             ("Client", "e1", "p1", "b", "mnist data", "cpu", False),
                             ("Client", "e2", "p2", "c", "cifar10 data", "cpu", False)]
    assert calls["loads"] == [("mnist", "data-dir", "cifar-dir"), ("cifar10", "data-dir", "cifar-dir")]
    assert calls["checks"] == 3 and calls["jobs_env"] == "3"
    assert calls["uri"] == calls["client_uri"] == "sqlite:///w.db"
    assert calls["installed"] and calls["signals"] == [(signal.SIGINT, signal.SIG_IGN)]
    assert isinstance(calls["orphan_guard"], Parent)                # it watches its own pipe to the parent


def test_a_pool_worker_whose_parent_is_gone_returns(worker_in_process):
    run, calls = worker_in_process
    assert run([(0, "e", "p", spec_of("a", "mnist"))], [None]) == [("ready", None, None), ("done", 0, None)]
    assert run([OSError("closed")], []) == [("ready", None, None)]


@pytest.mark.parametrize("stop", ["run", "check"])
def test_a_pool_worker_stopped_by_a_signal_says_killed_and_exits(worker_in_process, stop):
    run, calls = worker_in_process
    tasks = [(0, "e", "p", spec_of("a", "mnist")), (5, "e", "p", spec_of("b", "mnist")),
             (6, "e", "p", spec_of("c", "mnist"))]
    if stop == "run":
        said = run(tasks, [None, KeyboardInterrupt()])
        assert len(calls["runs"]) == 2
    else:
        said = run(tasks, [None], interrupt_at=2)
        assert len(calls["runs"]) == 1
    assert said == [("ready", None, None), ("done", 0, None), ("killed", 5, None)]


def test_a_pool_worker_whose_run_raises_says_so_with_its_traceback_and_exits(worker_in_process):
    run, calls = worker_in_process
    tasks = [(4, "e", "p", spec_of("a", "mnist")), (5, "e", "p", spec_of("b", "mnist"))]
    said = run(tasks, [ValueError("boom")])
    assert said[0] == ("ready", None, None) and len(said) == 2 and len(calls["runs"]) == 1
    kind, index, text = said[1]
    assert (kind, index) == ("error", 4)
    assert text.startswith("Traceback (most recent call last):\n") and text.endswith("ValueError: boom\n")


@pytest.mark.parametrize("error", [BrokenPipeError, EOFError, OSError])
def test_a_word_to_a_parent_that_is_gone_is_dropped(error):
    class Gone:
        def send(self, message):
            raise error
    pool._send(Gone(), ("done", 1, None))                 # nobody to tell: no error
    parent = Parent([])
    pool._send(parent, ("done", 1, "why"))
    assert parent.said == [("done", 1, "why")]
