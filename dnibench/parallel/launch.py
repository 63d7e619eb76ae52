"""The parent side of a parallel run: start K worker processes, relay their rows to the run's log, and end
the run FAILED with a one-line reason (never a hang, never an orphan) when one of them dies or raises.

- Workers are forked from the forkserver (torch imported once; spawn where there is none), one pipe each
  to the parent (a worker killed while holding a shared queue's lock would hang the others). They meet
  through a gloo file rendezvous in a temporary folder, with a timeout: a peer that never answers is an
  error in the worker that waits for it, not a hang.
- The run's data are written once to that folder and memory-mapped by every worker: each loads the data
  itself, and only activations and gradients travel between workers.
- A worker that exits without reporting, or reports an error, stops the run: the parent kills every other
  worker, waits for each, and raises WorkerFailed naming the first cause (a worker that died before its
  peers' "connection closed" errors). A signal on the parent (SIGTERM/SIGINT) stops the run the same way.
- Rows: each worker sends its rows at its log points; the last worker's rows carry the loss, throughput,
  training wall-clock and test error, the others their own synthesizer losses and timings.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import time
from multiprocessing.connection import wait as wait_any
from pathlib import Path

import torch

from ..errors import Diverged, WorkerFailed

GLOO_TIMEOUT_S = 300.0              # a peer silent this long is an error (a CNN-4 step on CPU is well under it)
REPORT_GRACE_S = 2.0                # after a first failure: how long the others may take to say why they stopped


def _context():
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        # torch._dynamo: the first Adam imports it (fused or foreach), ~3-5 s that every worker would pay
        ctx.set_forkserver_preload(["dnibench.parallel.worker", "dnibench.runner", "torch._dynamo"])
        return ctx
    return mp.get_context("spawn")


def _hooks() -> dict:
    """Test hooks from the environment (read here: forkserver workers do not see later changes to it):
    DNIBENCH_TEST_WORKER_DELAY=rank:seconds (a slow worker), DNIBENCH_TEST_WORKER_EXIT=rank:step (a worker
    that dies), DNIBENCH_TEST_PARALLEL_DUMP=dir (each worker saves its parameters there)."""
    hooks: dict = {}
    for key, name, cast in (("delay", "DNIBENCH_TEST_WORKER_DELAY", float), ("exit", "DNIBENCH_TEST_WORKER_EXIT", int)):
        value = os.environ.get(name)
        if value:
            rank, amount = value.split(":")
            hooks[key] = {int(rank): cast(amount)}
    if os.environ.get("DNIBENCH_TEST_PARALLEL_DUMP"):
        hooks["dump"] = os.environ["DNIBENCH_TEST_PARALLEL_DUMP"]
    return hooks


def _exit_text(code) -> str:
    from ..pool import _exit_text as text
    return text(code)


def train_parallel(spec, data, log, on_step=lambda n: None) -> dict:
    """Run ``spec`` (whose ``parallel`` is set) in its worker processes; same contract as train_ff."""
    from .. import interrupt
    from ..loop import resolve_device
    from ..tracking import ResourceSampler
    from .worker import worker_main
    par, cfg = spec.parallel, spec.train
    world = par.workers
    timeout_s = float(os.environ.get("DNIBENCH_GLOO_TIMEOUT_S", GLOO_TIMEOUT_S))
    n_train = min(cfg.train_subset or len(data.y_train), len(data.y_train))
    n_test = min(cfg.test_subset or len(data.y_test), len(data.y_test))
    ctx = _context()
    load_start = os.getloadavg()[0]                    # the machine's load as the run starts (the report shows it)
    procs: list = []
    conns: list = []
    with tempfile.TemporaryDirectory(prefix="dnibench-parallel-") as tmp:
        data_path = str(Path(tmp) / "data.pt")
        torch.save({"x_train": data.x_train[:n_train].contiguous(), "y_train": data.y_train[:n_train].contiguous(),
                    "x_test": data.x_test[:n_test].contiguous(), "y_test": data.y_test[:n_test].contiguous(),
                    "num_classes": data.num_classes}, data_path)
        rendezvous = str(Path(tmp) / "rendezvous")
        hooks = _hooks()
        finished = False
        try:
            for rank in range(world):
                mine, theirs = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=worker_main, name=f"dnibench-stage-worker{rank}", daemon=True,
                                   args=(rank, spec.model_dump_json(), data_path, rendezvous, theirs, hooks, timeout_s))
                proc.start()
                theirs.close()
                procs.append(proc)
                conns.append(mine)
            with ResourceSampler(resolve_device(spec.device)) as sampler:
                summaries = _relay(procs, conns, world, log, on_step, interrupt, timeout_s)
            finished = True
        finally:                                       # a failure or a signal: the workers are killed at once
            _stop(procs, grace_s=5.0 if finished else 0.0)
            for conn in conns:
                conn.close()
    summary: dict[str, float] = {}
    for rank in range(world):
        summary.update(summaries[rank])
    summary.update(sampler.summary())
    summary.setdefault("cpu_threads", float(par.threads))   # per worker (the workers say what torch ran)
    summary["load_1m/start"], summary["load_1m/end"] = load_start, os.getloadavg()[0]
    log(summary, cfg.steps)
    return summary


def _relay(procs, conns, world: int, log, on_step, interrupt, timeout_s: float) -> dict[int, dict]:
    """Log the workers' rows as they come; return their summaries, or raise on the first failure."""
    done: dict[int, dict] = {}
    errors: dict[int, str] = {}
    closed: set[int] = set()
    progress, last_heard = 0, time.monotonic()
    failed_at = None
    while len(done) < world:
        interrupt.check()                              # SIGTERM/SIGINT: KeyboardInterrupt, workers stopped by the caller
        live = [c for r, c in enumerate(conns) if r not in closed]
        # an exited worker's sentinel says nothing new: waiting on it would return at once, every time (a spin)
        wait_any(live + [p.sentinel for r, p in enumerate(procs) if r not in done and p.is_alive()], timeout=0.5)
        # Exited or not, asked before the pipes are read: a worker's last word is in its pipe once it has exited,
        # and one that sends it ("error") and exits between the read and the question is no silent death.
        exited = [r for r, p in enumerate(procs) if not p.is_alive()]
        for rank, conn in enumerate(conns):
            while rank not in closed:
                try:
                    if not conn.poll():
                        break
                    message = conn.recv()
                except (EOFError, OSError):
                    closed.add(rank)
                    break
                last_heard = time.monotonic()
                kind = message[0]
                if kind == "row":
                    _, _, step, row = message
                    log(row, step)
                    if rank == world - 1:
                        for n in range(progress + 1, step + 1):
                            on_step(n)
                        progress = max(progress, step)
                elif kind == "beat":                   # alive between log points
                    pass
                elif kind == "done":
                    done[rank] = message[2]
                elif kind == "diverged":
                    raise Diverged(message[2])
                else:
                    errors[rank] = f"worker {rank}: {message[2]}"
                    failed_at = failed_at or time.monotonic()
        # exit code 0 without a "done" is a death only once its pipe is closed (read to its end)
        died = {r: procs[r] for r in exited if r not in done and r not in errors
                and (procs[r].exitcode != 0 or r in closed)}
        for rank in died:
            closed.add(rank)
            failed_at = failed_at or time.monotonic()
        if failed_at is not None and (time.monotonic() - failed_at > REPORT_GRACE_S or len(died) + len(errors) + len(done) >= world):
            # A worker that died without a word is the cause; the others' errors then only say their peer vanished.
            silent = [r for r in died if r not in errors]
            if silent:
                rank = silent[0]
                proc = procs[rank]
                raise WorkerFailed(f"parallel worker {rank} (pid {proc.pid}) died ({_exit_text(proc.exitcode)}) "
                                   f"after step {progress} of the last worker")
            rank = min(errors)
            raise WorkerFailed(errors[rank])
        if time.monotonic() - last_heard > timeout_s + 60:
            # workers beat every BEAT_S and time out waiting on a peer after timeout_s: silence is a hang
            raise WorkerFailed(f"no word from any parallel worker in {timeout_s + 60:.0f} s (after step {progress})")
    return done


def _stop(procs, grace_s: float = 0.0) -> None:
    """Kill every worker still running and wait for each: no orphan outlives its run."""
    deadline = time.monotonic() + grace_s
    for proc in procs:                                 # a finished worker is leaving gloo: a moment to exit
        proc.join(timeout=max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            proc.kill()
    for proc in procs:
        proc.join(timeout=30)
