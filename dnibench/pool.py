"""`dnibench run --jobs N`: N child runs at once in N worker processes (forkserver or spawn, so CUDA works
and no lock held by the parent is copied into a worker).

- The parent run of each suite stays in the main process; each worker creates its child runs itself
  (``runner._run_child``), so a run's owner tags name the worker's pid and the store's dead-owner sweep
  is right about it. Each worker opens its own MlflowClient on the same store (sqlite serialises the
  writers; its busy timeout covers the short transactions of a few workers).
- Each worker gets its tasks through its own pipe, never a shared queue: a worker killed while holding
  a shared queue's lock would hang the others.
- Threads: the worker sets DNIBENCH_JOBS=N, so ``tracking.RunThreads`` gives each run its share of the
  free cores (one thread each on a 2-core machine); seeds are per run (``train.seed_everything``), so
  results are those of ``--jobs 1``.
- Stop (Ctrl-C/SIGTERM on the parent): workers ignore SIGINT; the parent sends each busy worker one
  SIGTERM, which its ``interrupt`` handler turns into a stop at the next training step (run KILLED), then
  waits for every worker to exit. A worker still alive after STOP_GRACE_S is killed and its run marked
  KILLED by the parent. A worker whose parent process dies, kill -9 included, gets SIGTERM (``_die_with_parent``):
  its run ends KILLED at its next step, and no orphan trains on (before, the forkserver outlived the parent while its
  workers lived, and they finished their runs after their parent's death).
- A worker that dies (kill -9, out of memory) costs only its run: the parent marks that run KILLED with
  the reason, counts it as failed, starts a new worker and goes on; a rerun redoes the run (resume by
  config hash). A run is never re-queued in the same invocation: a run that kills its worker would loop.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import select
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import wait as wait_any

STOP_GRACE_S = 60.0         # a step of the paper's CNNs on CPU takes well under this
MAX_JOBS = 256


def _die_with_parent(conn=None) -> None:
    """SIGTERM this worker when the process that started it dies, kill -9 included (a --jobs worker's run then ends
    KILLED at its next step; a parallel run's worker exits). Two ways, for the two start methods:
    - spawn: the kernel's parent-death signal (Linux), the parent being that process;
    - forkserver: the worker's parent is the forkserver, which outlives that process as long as any worker it forked
      lives (each holds the forkserver's liveness pipe), so that signal never comes: ``watch_parent(conn)``."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            ctypes.CDLL(None).prctl(1, signal.SIGTERM)     # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    watch_parent(conn)


def watch_parent(conn) -> None:
    """A thread that SIGTERMs this process once the far end of ``conn`` (its pipe to the process that started it)
    has closed: POLLHUP/POLLERR, every reader gone, which a kill -9 of that process does too. No ``conn``: nothing."""
    if conn is not None and hasattr(select, "poll"):
        fd = os.dup(conn.fileno())                  # its own copy: never closed under the waiting poll
        threading.Thread(target=_signal_when_closed, args=(fd,), name="parent-watch", daemon=True).start()


def _signal_when_closed(fd: int) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLHUP | select.POLLERR)   # the far end's close; never this end's data
    while not any(events & (select.POLLHUP | select.POLLERR) for _, events in poller.poll()):
        pass
    from . import interrupt
    interrupt.because("the process that started this worker died (its pipe to it closed)")
    os.kill(os.getpid(), signal.SIGTERM)


def _context():
    """forkserver where there is one: one fresh process imports torch and MLflow once and forks each worker
    from it (~5 s of CPU less per extra worker than spawn's import in each), and no lock or CUDA state of the
    parent is copied. Elsewhere spawn."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["dnibench.runner", "dnibench.pool"])
    return ctx


def _send(conn, message) -> None:
    try:
        conn.send(message)
    except (BrokenPipeError, EOFError, OSError):    # the parent is gone: nobody to tell
        pass


def _worker(conn, tracking_uri: str, device: str, data_dir, cifar_dir, jobs: int) -> None:
    _die_with_parent(conn)
    os.environ["DNIBENCH_JOBS"] = str(jobs)
    from . import interrupt
    interrupt.install()
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C reaches the whole group: the parent forwards one stop
    import mlflow
    from mlflow.tracking import MlflowClient

    from .runner import _run_child
    from .tasks import get_task
    from .loop import resolve_device
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    dev = resolve_device(device)
    datasets = {}
    _send(conn, ("ready", None, None))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        index, exp_id, parent_id, spec = task
        try:
            interrupt.check()
            if spec.task not in datasets:
                datasets[spec.task] = get_task(spec.task).load(data_dir, cifar_dir)
            failure = _run_child(client, exp_id, parent_id, spec, datasets[spec.task], dev, progress=False)
        except KeyboardInterrupt:
            _send(conn, ("killed", index, None))
            return
        except BaseException:
            _send(conn, ("error", index, traceback.format_exc()))
            return
        _send(conn, ("done", index, failure))


class _Worker:
    def __init__(self, proc, conn):
        self.proc, self.conn = proc, conn
        self.ready = False                      # takes tasks
        self.started = False                    # was ready once (a worker that never was: a broken install)
        self.task: int | None = None            # index into the current batch of specs


class WorkerPool:
    """``with WorkerPool(jobs, ...) as pool: pool.run(...)`` once per suite; workers live across suites."""

    def __init__(self, jobs: int, tracking_uri: str, device: str, data_dir, cifar_dir, client):
        self.jobs, self.client = jobs, client
        self.args = (tracking_uri, device, data_dir, cifar_dir, jobs)
        self.ctx = _context()
        self.workers: list[_Worker] = [self._start() for _ in range(jobs)]

    def _start(self) -> _Worker:
        try:
            return self._start_in(self.ctx)
        except (EOFError, ConnectionError) as err:
            if self.ctx.get_start_method() == "spawn":
                raise
            # The forkserver died under us (seen once on a GPU machine: EOFError while forking a worker):
            # spawn works wherever Python does; only the start-up is slower.
            print(f"dnibench: the forkserver failed to start a worker ({type(err).__name__}); "
                  "starting workers with spawn instead", file=sys.stderr)
            self.ctx = mp.get_context("spawn")
            return self._start_in(self.ctx)

    def _start_in(self, ctx) -> _Worker:
        mine, theirs = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(theirs, *self.args), daemon=True, name="dnibench-worker")
        proc.start()
        theirs.close()
        return _Worker(proc, mine)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def run(self, exp_id: str, parent_id: str, specs: list, on_result) -> None:
        """Run ``specs`` (each once), calling ``on_result(spec, failure)`` in the parent as each ends:
        failure None (FINISHED) or the reason (diverged, or its worker died). A run that raised any other
        error stops the suite: RuntimeError with the worker's traceback. A signal on the parent:
        KeyboardInterrupt (``close`` then stops the workers)."""
        from . import interrupt
        pending = list(range(len(specs)))
        while pending or any(w.task is not None for w in self.workers):
            interrupt.check()
            for w in self.workers:
                # a worker that exited since its last run gets none (replaced below), not one it never started
                if pending and w.ready and w.task is None and w.proc.is_alive():
                    w.task = pending.pop(0)
                    try:
                        w.conn.send((w.task, exp_id, parent_id, specs[w.task]))
                    except (BrokenPipeError, OSError):
                        pass                    # it died: found below through its sentinel
            wait_any([w.conn for w in self.workers] + [w.proc.sentinel for w in self.workers], timeout=0.5)
            for w in list(self.workers):
                # Alive or not, asked before its pipe is read: a worker that sends its last word ("error", "killed")
                # and exits between the read and the question would be taken for one that died without a word.
                alive = w.proc.is_alive()
                while True:
                    try:
                        if not w.conn.poll():
                            break
                        kind, index, payload = w.conn.recv()
                    except (EOFError, OSError):         # it died: its end of the pipe closed
                        break
                    if kind == "ready":
                        w.ready = w.started = True
                    elif kind == "done":
                        w.task = None
                        on_result(specs[index], payload)
                    elif kind == "killed":      # stopped by a signal sent to the worker alone
                        w.task, w.ready = None, False   # it exits: replaced below
                        on_result(specs[index], f"worker process {w.proc.pid} was stopped by a signal: run KILLED")
                    else:
                        raise RuntimeError(f"{specs[index].label}: the run raised in worker process "
                                           f"{w.proc.pid}:\n{payload}")
                if not alive:
                    self._replace(w, specs, on_result)

    def _replace(self, w: _Worker, specs: list, on_result) -> None:
        w.proc.join()
        if not w.started:
            raise RuntimeError(f"worker process {w.proc.pid} exited with code {w.proc.exitcode} before it was "
                               "ready (its error is above)")
        if w.task is not None:
            reason = f"worker process {w.proc.pid} died ({_exit_text(w.proc.exitcode)}) during the run; the other runs went on"
            self._mark_killed(w.proc.pid, reason)
            on_result(specs[w.task], reason)
        w.conn.close()
        self.workers[self.workers.index(w)] = self._start()

    def _mark_killed(self, pid: int, reason: str) -> None:
        """End as KILLED the runs the worker ``pid`` of this host left RUNNING (none when it died between runs)."""
        from .store import OWNER_PID, mark_killed, running_here
        for run in running_here(self.client, f"tags.`{OWNER_PID}` = '{pid}'"):
            mark_killed(self.client, run.info.run_id, reason)

    def close(self) -> None:
        """Stop every worker: busy ones get one SIGTERM (their run ends KILLED at the next step), idle
        ones are told to exit; any left after STOP_GRACE_S (or at a second Ctrl-C) are killed."""
        for w in self.workers:
            if w.proc.is_alive():
                if w.task is not None or not w.started:
                    try:
                        os.kill(w.proc.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
                _send(w.conn, None)
        deadline = time.monotonic() + STOP_GRACE_S
        try:
            for w in self.workers:
                w.proc.join(max(0.0, deadline - time.monotonic()))
        finally:                                # also on a second Ctrl-C while waiting
            for w in self.workers:
                if w.proc.is_alive():
                    w.proc.kill()
                    w.proc.join()
                    self._mark_killed(w.proc.pid, f"worker process {w.proc.pid} did not stop within "
                                      f"{STOP_GRACE_S:.0f} s of the stop: killed")
                w.conn.close()
            self.workers = []


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
