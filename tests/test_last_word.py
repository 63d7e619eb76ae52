"""A worker's last word is read even when it exits right after saying it.

The parent of ``--jobs`` (pool.WorkerPool.run) and of a parallel run (parallel/launch._relay) reads each worker's
pipe, then asks whether the worker is alive. A worker that sends its last message ("error" with its traceback,
"killed", "done") and exits between those two moments is dead with its message still unread in the pipe. Both
parents must read it, not take the worker for one that died without a word. The fake worker below does exactly
that, deterministically: its message and its exit happen during the parent's first read of its pipe, which
finds nothing. Everything runs in this process (real pipes, no training).
"""
import multiprocessing

import pytest

from dnibench.errors import WorkerFailed

PID = 424242


class LastWord:
    """A worker process (``is_alive``, ``exitcode``, ``pid``, ``sentinel``, ``join``) and the parent's end of its pipe
    (``poll``, ``recv``, ``send``, ``close``, ``fileno``): alive until the parent's first ``poll``, which finds the
    pipe empty; in that moment the worker sends ``message`` and exits with ``exitcode``."""

    def __init__(self, message, exitcode: int):
        self.reader, self.writer = multiprocessing.Pipe(duplex=False)
        self.exited, self.running = multiprocessing.Pipe(duplex=False)   # the sentinel: readable once it exited
        self.message, self.code = message, exitcode
        self.alive, self.exitcode, self.pid, self.polls = True, None, PID, 0
        self.sent_to_worker: list = []

    # the process
    def is_alive(self) -> bool:
        return self.alive

    @property
    def sentinel(self) -> int:
        return self.exited.fileno()

    def join(self, timeout=None) -> None:
        assert not self.alive, "joined a live worker"

    # the parent's end of the pipe
    def poll(self) -> bool:
        self.polls += 1
        if self.polls == 1:
            if self.message is not None:               # the last word (None: none), then the exit: after this read
                self.writer.send(self.message)
            self.writer.close()
            self.running.close()
            self.alive, self.exitcode = False, self.code
            return False
        return self.reader.poll()

    def recv(self):
        return self.reader.recv()

    def send(self, message) -> None:
        self.sent_to_worker.append(message)

    def fileno(self) -> int:
        return self.reader.fileno()

    def close(self) -> None:
        self.reader.close()
        self.exited.close()


class Spec:
    label = "fcn3 dni seed 0"


def _pool_with(worker: LastWord):
    from dnibench import pool
    workers = pool.WorkerPool.__new__(pool.WorkerPool)  # no processes: one fake worker, ready for a task
    slot = pool._Worker(worker, worker)
    slot.ready = slot.started = True
    workers.workers, workers.killed, workers.started = [slot], [], 0

    def mark_killed(pid, reason):
        workers.killed.append((pid, reason))

    def start():                                       # a replacement: alive, and ready once it says so
        workers.started += 1
        fresh = Working()
        return pool._Worker(fresh, fresh)
    workers._mark_killed, workers._start = mark_killed, start
    return workers


def test_the_pool_raises_a_worker_error_said_just_before_it_exited():
    """--jobs: a run that raised in its worker stops the suite with the worker's traceback, even when the worker
    exited before the parent asked whether it was alive (it was reported as "died (exit code 0) during the run;
    the other runs went on", the traceback lost)."""
    worker = LastWord(("error", 0, "Traceback (most recent call last):\nValueError: boom"), 0)
    workers, results, specs = _pool_with(worker), [], [Spec()]
    with pytest.raises(RuntimeError) as err:
        workers.run("1", "parent", specs, lambda spec, failure: results.append(failure))
    assert str(err.value) == (f"fcn3 dni seed 0: the run raised in worker process {PID}:\n"
                              "Traceback (most recent call last):\nValueError: boom")
    assert worker.sent_to_worker == [(0, "1", "parent", specs[0])]
    assert results == [] and workers.killed == [] and workers.started == 0


def test_the_pool_reports_a_worker_stopped_by_a_signal_in_its_own_words():
    """A worker stopped by a signal of its own says "killed" and exits: its run is reported once, as stopped by a
    signal (its run already KILLED by the worker), and a new worker takes its place."""
    worker = LastWord(("killed", 0, None), 0)
    workers, results = _pool_with(worker), []
    workers.run("1", "parent", [Spec()], lambda spec, failure: results.append((spec.label, failure)))
    assert results == [("fcn3 dni seed 0", f"worker process {PID} was stopped by a signal: run KILLED")]
    assert workers.killed == [] and workers.started == 1


class Interrupt:
    @staticmethod
    def check() -> None:
        pass


def test_a_parallel_workers_error_said_just_before_it_exited_is_the_reason():
    """A parallel run whose worker raised fails with the worker's error, not "died (exit code 1)", when the worker
    exited before the parent asked (at K = 1, or once every other worker is accounted for, the parent gives the
    reason at once)."""
    from dnibench.parallel.launch import _relay
    worker = LastWord(("error", 0, "ValueError: boom", "Traceback ..."), 1)
    with pytest.raises(WorkerFailed) as err:
        _relay([worker], [worker], 1, lambda row, step: None, lambda n: None, Interrupt, timeout_s=60)
    assert str(err.value) == "worker 0: ValueError: boom"


def test_a_parallel_workers_summary_said_just_before_it_exited_is_its_summary():
    """A worker that sends "done" and exits with code 0 before the parent asked finished: its summary is returned."""
    from dnibench.parallel.launch import _relay
    worker = LastWord(("done", 0, {"mean_samples_per_s": 123.0}), 0)
    assert _relay([worker], [worker], 1, lambda row, step: None, lambda n: None, Interrupt,
                  timeout_s=60) == {0: {"mean_samples_per_s": 123.0}}


def test_a_parallel_worker_that_exits_without_a_word_died():
    """Exit code 0 and a closed pipe with no "done" in it: the worker died, and the run says so."""
    from dnibench.parallel.launch import _relay
    worker = LastWord(("beat", 0), 0)                  # alive between log points, then gone without its summary
    with pytest.raises(WorkerFailed) as err:
        _relay([worker], [worker], 1, lambda row, step: None, lambda n: None, Interrupt, timeout_s=60)
    assert str(err.value) == f"parallel worker 0 (pid {PID}) died (exit code 0) after step 0 of the last worker"


class Working(LastWord):
    """A worker that says "ready" once started and "done" for each task it is sent; it never exits on its own."""

    def __init__(self):
        super().__init__(None, 0)
        self.writer.send(("ready", None, None))

    def poll(self) -> bool:
        self.polls += 1
        assert self.polls < 50, "the parent kept polling a worker with nothing more to say"   # a failure, not a hang
        return self.reader.poll()

    def send(self, message) -> None:
        self.sent_to_worker.append(message)
        if message is not None:
            self.writer.send(("done", message[0], None))


def test_the_pool_gives_a_ready_worker_each_run_in_turn_and_reports_each_finished():
    worker = Working()
    workers, results, specs = _pool_with(worker), [], [Spec(), Spec(), Spec()]
    workers.workers[0].ready = workers.workers[0].started = False      # not ready until it says so
    workers.run("7", "parent", specs, lambda spec, failure: results.append((spec, failure)))
    assert worker.sent_to_worker == [(i, "7", "parent", specs[i]) for i in range(3)]
    assert results == [(spec, None) for spec in specs]
    assert workers.workers[0].task is None and workers.workers[0].ready and workers.workers[0].started
    assert workers.killed == [] and workers.started == 0


def test_a_worker_that_dies_without_a_word_costs_its_run_only():
    """A worker killed mid-run (kill -9, out of memory): its run is marked KILLED with the reason and reported failed
    with it, a new worker takes its place, and the pool goes on."""
    worker = LastWord(None, -9)
    workers, results = _pool_with(worker), []
    workers.run("1", "parent", [Spec()], lambda spec, failure: results.append((spec.label, failure)))
    reason = f"worker process {PID} died (signal SIGKILL) during the run; the other runs went on"
    assert workers.killed == [(PID, reason)] and results == [("fcn3 dni seed 0", reason)]
    assert workers.started == 1 and workers.workers[0].proc is not worker
