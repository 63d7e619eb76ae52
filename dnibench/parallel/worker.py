"""One worker process of a parallel run: a contiguous group of stages, trained on its own schedule.

Every worker builds the whole network and method exactly as the one-process loop does (same seed, so the
same initial parameters; models are small), keeps training only its own stages [lo, hi), and draws the
same batch order from the same seeded generator, so a batch is named by its step: only activations and
gradients travel, through torch.distributed point-to-point messages (gloo), one tag per direction.

Schedules (``ParallelSettings.schedule``):
- ``locked`` (bprop): wait for h_in(t), forward, send h_out up, wait for the gradient from above,
  backward, send the gradient at the input down, update. Naive model parallelism: the locking.
- ``pipelined`` (bprop): dnibench/parallel/pipelined.py (torch.distributed.pipelining) with M micro-batches.
- ``decoupled`` (dni, cdni): train batch t as soon as h_in(t) is here, with the one-process rule on the
  group (methods/units.py: the same code), send h_out(t) up and the gradient at the input (the bootstrapped
  target of the synthesizer below) down, and regress the group's output synthesizer whenever a target comes
  down (polled, never waited for, except for flow control: ``max_in_flight``).
- ``decoupled`` (unlock_dni, unlock_cdni): as dni, but stage lo starts batch t from its synthetic input I(x)
  at once; the real h_in(t) regresses I whenever it arrives. No worker waits for anything but data.

Time is counted by cause per worker: ``busy`` (compute), ``wait_input`` (an activation from below, or
flow control on real inputs), ``wait_grad`` (a gradient from above, or flow control on targets), ``comm``
(posting sends and receives, waiting for sends to complete). A worker waits for a message by polling where every
worker has cores of its own (``spins``; logged as ``wait_polls``), else blocks; there it is also bound to its cores
(``pinned_cores``; logged as ``cores_bound``). Evaluation is not training time, nor
is the measurement of the cost model's inputs before the clocks start (``Worker.measure_costs``: every worker times
the stages at once, the split of the stages is chosen from those times, worker 0 logs them).
"""
from __future__ import annotations

import os
import queue
import signal
import threading
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist

from . import cost

UP, DOWN, EVAL, COST = 1, 2, 3, 4   # message tags: activations up, gradients (targets) down, test-set activations,
                                    # the cost model's measurements
EVAL_CHUNK = 2000
BEAT_S = 30.0                       # a worker says it is alive at least this often (launch.py's watchdog)
BURSTS = 3                          # a message measurement's rounds in 3 bursts, the median burst (cost.message_rounds,
                                    # Worker.time_stand_in)
STAND_IN_STEPS = 30                 # a stand-in pipeline's timed steps, alone and then all workers (0.6 s at K = 2,
                                    # M = 8)
STAND_IN_WORK_S = 5e-4              # its compute per chunk, each way: the message cost solved from it was 0.39, 0.42
                                    # and 0.41 ms at 0.25, 0.5 and 1 ms (GPipe M = 8, K = 2, 2026-12-02)
STEP_TIMING_S = 0.75                # how long every worker times its decoupled step (a pipelined one: its micro-batch's
                                    # forward and backward) before the run: the cost model's input


class Clock:
    """Seconds by cause: ``with clock("busy"): ...``."""

    def __init__(self):
        self.seconds = {"busy": 0.0, "wait_input": 0.0, "wait_grad": 0.0, "comm": 0.0}
        self._cause, self._start = None, 0.0

    def __call__(self, cause: str):
        self._cause = cause
        return self

    def __enter__(self):
        self._start = time.perf_counter()

    def __exit__(self, *exc):
        self.seconds[self._cause] += time.perf_counter() - self._start


class Inbox:
    """Messages of one shape from one peer on one tag, in order: the n-th belongs to step n; at most ``total``.

    A receiving thread waits for them (``Work.wait`` releases the GIL) and queues them, so ``poll`` takes a
    message that has arrived without blocking. Gloo's point-to-point works say ``is_completed()`` only once
    ``wait()`` has returned, so polling the work itself never saw a message: every target waited for flow
    control, at the largest staleness the window allows. A failed receive (a peer gone, gloo's timeout)
    is raised by the ``poll`` or ``take`` that reaches it."""

    def __init__(self, src: int, tag: int, shape: tuple[int, ...], total: int, device: torch.device,
                 spin: bool = False):
        self.src, self.tag, self.shape, self.total, self.device = src, tag, shape, total, device
        self.spin = spin                            # ``take`` polls instead of blocking (``spins``)
        self.count = 0                              # messages taken
        self._ready: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._receive, name=f"inbox-{src}-{tag}", daemon=True).start()

    def _receive(self) -> None:
        try:
            for _ in range(self.total):
                buf = torch.empty(self.shape)       # a fresh buffer per message: the one taken stays valid
                dist.recv(buf, src=self.src, tag=self.tag)
                self._ready.put(buf)
        except BaseException as err:                # noqa: BLE001 -- handed to the loop, which raises it
            self._ready.put(err)

    def _got(self, msg) -> torch.Tensor:
        if isinstance(msg, BaseException):
            raise msg
        self.count += 1
        return msg.to(self.device)                  # gloo moves CPU tensors: a GPU worker copies in

    def poll(self) -> torch.Tensor | None:
        if self.count >= self.total:
            return None
        try:
            return self._got(self._ready.get_nowait())
        except queue.Empty:
            return None

    def take(self) -> torch.Tensor:
        if self.spin:
            # Poll, yielding the core and the GIL between polls (sleep(0)): a worker that blocks lets its idle
            # core sleep, and waking it costs each message; locked bprop at K = 2 ran 10-20 % slower blocked
            while True:
                try:
                    return self._got(self._ready.get_nowait())
                except queue.Empty:
                    time.sleep(0)
        return self._got(self._ready.get())


def spins(workers: int, threads: int, cores: int) -> bool:
    """Whether a worker waits for a message by polling (``Inbox.take``): only where every worker's threads have
    cores of their own; more workers than cores (K = 4 on 2 cores) would take them from the workers computing."""
    return workers > 1 and workers * threads <= cores


def pinned_cores(rank: int, workers: int, threads: int, cores: list[int]) -> set[int] | None:
    """The cores worker ``rank`` is bound to, where every worker's threads have cores of their own (``spins``): its
    ``threads`` of the process's usable ``cores`` in order, else None (more workers than cores share them all; one
    worker is left where it is). Bound, a worker's compute and its message threads stay on its core: cDNI at K = 2
    on 2 cores ran 2 % faster (4 of 4 runs), and 24 % faster next to a busy one-process run, where unbound workers
    and the neighbour were moved between the cores (2026-12-01, 900 steps each)."""
    if not spins(workers, threads, len(cores)):
        return None
    return set(cores[rank * threads:(rank + 1) * threads])


class Outbox:
    """Sends in flight (isend): their tensors are kept until the send completed (gloo's send works say
    complete only once waited for: the oldest are waited for, long done, beyond ``KEEP`` in flight)."""
    KEEP = 16

    def __init__(self):
        self.pending: list[tuple[object, torch.Tensor]] = []

    def send(self, tensor: torch.Tensor, dst: int, tag: int) -> None:
        tensor = tensor.detach().to("cpu").contiguous()   # gloo moves CPU tensors
        self.pending.append((dist.isend(tensor, dst=dst, tag=tag), tensor))
        while len(self.pending) > self.KEEP:
            self.pending.pop(0)[0].wait()

    def drain(self) -> None:
        for work, _ in self.pending:
            work.wait()
        self.pending = []


class Stats:
    """Staleness of targets (steps between the batch a target belongs to and the regression) per interface."""

    def __init__(self):
        self.values: dict[str, list[int]] = {}

    def add(self, name: str, value: int) -> None:
        self.values.setdefault(name, []).append(value)

    def summary(self) -> dict[str, float]:
        out = {}
        for name, values in self.values.items():
            out[f"{name}_mean"] = sum(values) / len(values)
            out[f"{name}_max"] = float(max(values))
        return out


def train_group(group, h_in: torch.Tensor, y: torch.Tensor, context, metrics: dict):
    """A decoupled worker's training of its stage group on a real input: the fused rule where its method was built
    fused, else the per-stage one (every coin up: the plan refuses p_update < 1). Returns (h_out, target below)."""
    if group.method.fused:
        return group.train_fused(h_in, y, context, metrics)
    return group.train(h_in, y, context, [True] * len(group.method.stages), metrics)


def _is_unlock(method_cls) -> bool:
    from ..methods.unlock import UnlockDNI
    return issubclass(method_cls, UnlockDNI)


def _die_with_parent() -> None:
    from ..pool import _die_with_parent as die
    die()


def worker_main(rank: int, spec_json: str, data_path: str, rendezvous: str, conn, hooks: dict,
                timeout_s: float) -> None:
    """Process entry point: runs the worker, tells the parent ("row" ..., then "done"/"diverged"/"error")."""
    _die_with_parent()             # and Worker watches its pipe to the parent once bound (pool.watch_parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)       # Ctrl-C reaches the group: the parent stops the workers
    from ..errors import Diverged
    # Every way out is os._exit once the parent has been told: every message was taken and every send
    # completed before "done" (Worker.finish), and gloo's teardown would wait on peers that may be gone.
    try:
        summary = Worker(rank, spec_json, data_path, rendezvous, conn, hooks, timeout_s).run()
        conn.send(("done", rank, summary))
        code = 0
    except Diverged as err:
        conn.send(("diverged", rank, err.step))
        code = 0
    except BaseException as err:                       # noqa: BLE001 -- everything goes to the parent
        first = (str(err).splitlines() or [""])[0]
        conn.send(("error", rank, f"{type(err).__name__}: {first}"[:400], traceback.format_exc()))
        code = 1
    conn.close()
    os._exit(code)


class Worker:
    def __init__(self, rank: int, spec_json: str, data_path: str, rendezvous: str, conn, hooks: dict,
                 timeout_s: float):
        from ..suite import RunSpec
        self.rank, self.conn, self.hooks, self.rendezvous = rank, conn, hooks, rendezvous
        self.spec = spec = RunSpec.model_validate_json(spec_json)
        self.par = par = spec.parallel
        self.world = par.workers
        # the process's cores before binding: where each worker has cores of its own it polls (spins) and is bound to
        # them, before gloo and the inbox threads start (a thread inherits its creator's cores)
        bound = None
        if hasattr(os, "sched_setaffinity"):          # Linux
            usable = sorted(os.sched_getaffinity(0))
            self.cores, bound = len(usable), pinned_cores(rank, self.world, par.threads, usable)
            if bound:
                os.sched_setaffinity(0, bound)
        else:
            from ..tracking import usable_cores
            self.cores = usable_cores()
        from ..pool import watch_parent
        watch_parent(conn)                             # the parent's death, kill -9 included, stops this worker at once
        self.bound = bool(bound)
        torch.set_num_threads(par.threads)             # one thread per worker unless the suite says otherwise
        self.data = torch.load(data_path, mmap=True)
        if self.world > 1:
            dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                                    world_size=self.world, timeout=timedelta(seconds=timeout_s))

    # ---- the network and method, exactly as train_ff builds them ------------------------------------
    def build(self):
        from ..conventions import ImageSettings
        from ..loop import resolve_device, seed_everything
        from ..methods import Setup
        from ..models import build_stages, stage_output_shapes
        spec, data, cfg = self.spec, self.data, self.spec.train
        self.device = device = resolve_device(spec.device)
        seed_everything(spec.seed)
        in_shape = tuple(data["x_train"].shape[1:])
        conventions = ImageSettings.model_validate(spec.task_args)
        stages = build_stages(spec.model, in_shape, data["num_classes"], cfg.cnn_filters,
                              conventions.layer_count, conventions.pool_stride).to(device)
        method_cls = spec.method_class()
        # K = 1: the method's own step (fused where it has one), i.e. exactly the one-process run. K > 1: a
        # slice of the per-stage path; decoupled DNI/cDNI on the method's fused optimizers (train_fused), locked
        # bprop on its one optimizer over every stage (one update call per worker and step, not one per stage).
        fused = (self.world == 1 or self.par.schedule == "locked"
                 or (self.par.schedule == "decoupled" and not _is_unlock(method_cls)))
        setup = Setup(num_classes=data["num_classes"], in_shape=in_shape,
                      stage_shapes=stage_output_shapes(stages, in_shape), lr=cfg.lr, device=device,
                      generator=torch.Generator().manual_seed(10_000 + spec.seed), fused_step=fused)
        self.method = method_cls(stages, method_cls.Settings.model_validate(spec.method_args), setup)
        self.stages, self.setup, self.in_shape = stages, setup, in_shape
        # equal stage counts until measure_costs has timed the stages and chosen the split from those times
        self.groups = cost.partition([1.0] * len(stages), self.world)
        self.lo, self.hi = self.groups[self.rank]

    # ---- the loop -----------------------------------------------------------------------------------
    def run(self) -> dict:
        from ..loop import Batches, LogWindow
        self.build()
        spec, cfg, device = self.spec, self.spec.train, self.device
        data = self.data
        n_train = data["x_train"].shape[0]
        x_train, y_train = data["x_train"].to(device), data["y_train"].to(device)
        self.x_test, self.y_test = data["x_test"].to(device), data["y_test"].to(device)
        batches = Batches(n_train, cfg.batch_size, torch.Generator().manual_seed(spec.seed), device)
        self.batch = batches.batch_size
        self.first, self.last = self.rank == 0, self.rank == self.world - 1
        self.clock, self.stats = Clock(), Stats()
        self.cost_inputs = self.measure_costs()        # before the clocks start: not training time
        step_fn = self.schedule_step()
        # Only the first worker feeds the images in (complete unlock: every worker, for its synthetic inputs; one
        # worker: the whole net); the others would gather a batch of them each step for nothing.
        reads_x = self.first or self.world == 1 or getattr(self, "unlocked", False)
        optimizers = self.method.optimizers() + getattr(self, "extra_optimizers", [])
        delay_s = self.hooks.get("delay", {}).get(self.rank, 0.0)
        exit_at = self.hooks.get("exit", {}).get(self.rank)
        window = LogWindow(spec, optimizers, device)  # as train_ff: schedule, metric sums, clock, log-point averages
        train_s = eval_s = 0.0
        final: dict[str, float] = {}
        self.last_word = time.monotonic()
        if self.world > 1:
            dist.barrier()                             # every worker has built its model: the clocks start together
        window.start()
        for step in range(1, cfg.steps + 1):
            if exit_at is not None and step == exit_at:
                os._exit(3)                            # test hook: a worker that dies mid-run
            lr = window.lr(step)
            idx = batches.next()
            if delay_s:
                time.sleep(delay_s)                    # test hook: a slow worker
            metrics = step_fn(step, x_train[idx] if reads_x else None, y_train[idx])
            if time.monotonic() - self.last_word > BEAT_S:   # alive between distant log points (the parent's watchdog)
                self.conn.send(("beat", self.rank))
                self.last_word = time.monotonic()
            window.add(step, metrics)
            is_log, is_eval = window.points(step)
            if is_log:
                row, interval_steps, elapsed = window.close()
                train_s += elapsed
                if self.last:
                    row["samples_per_s"] = interval_steps * self.batch / max(elapsed, 1e-9)
                    row["wall_s/train"] = train_s
                    row["lr"] = lr
                row.update(self.worker_metrics(train_s))
                if is_eval:
                    e0 = time.perf_counter()
                    error = self.evaluate()
                    eval_s += time.perf_counter() - e0
                    if self.last:
                        row["test_error"] = error
                        row["wall_s/eval"] = eval_s
                        final = dict(row)
                self.conn.send(("row", self.rank, step, row))
                self.last_word = time.monotonic()
                window.start()
        self.finish()
        train_s += window.elapsed()                    # draining the last messages is the run's time too
        summary = {f"total_{k}": v for k, v in self.worker_metrics(train_s).items()}
        if self.last:
            summary.update({"final_test_error": final["test_error"],
                            "final_train_loss": final.get("train_loss", float("nan")),
                            "total_wall_s/train": train_s, "total_wall_s/eval": eval_s,
                            "mean_samples_per_s": cfg.steps * self.batch / max(train_s, 1e-9)})
        summary.update(self.stats.summary())
        summary["cpu_threads"] = float(torch.get_num_threads())   # per worker, as torch ran it
        summary["wait_polls"] = float(self.spin)      # waits for messages polled (1) or blocked (0): Inbox.take
        summary["cores_bound"] = float(self.bound)     # each worker bound to cores of its own (1): pinned_cores
        summary.update(self.cost_inputs)
        self.dump()
        return summary

    def measure_costs(self) -> dict[str, float]:
        """The cost model's inputs (cost.py) measured in this run's processes at its real sizes, and the split
        of the stages chosen from them, before the clocks start (worker 0 logs them as ``cost.cost_metrics``;
        the others return nothing):

        - every stage's compute (forward, backward, Adam update, its synthesizer's regression, its synthetic
          input model's) on each worker's one thread, all workers at once: with K > 1 a stage is timed next
          to a peer doing the same kind of work, as in the run (a core's neighbour slows it: shared cache,
          memory bandwidth, the machine's other load), and the workers' times are averaged;
        - the split: contiguous groups minimising the slowest worker's total (``cost.partition``), worker 0's
          choice broadcast so that every worker takes the same; logged as ``cost/worker{k}/stages_end``;
        - the one-way gloo time between workers 0 and 1 at a tiny message and at the activation across their
          boundary (also 1/M of it when pipelined, and 4x to separate bandwidth from latency), and what a
          send and a receive of that activation cost while both workers compute (``cost.busy_ping``);
        - a decoupled worker's whole step (``time_decoupled_step``), a pipelined worker's forward and backward of one
          micro-batch (``time_pipeline_chunks``), all workers at once.

        The stages are timed on copies, with the random streams put back afterwards: the run's parameters,
        batch order and synthesizers are as if nothing had been measured."""
        import copy

        from ..methods.dni import DNI
        start, out, link = time.perf_counter(), {}, None
        m, settings = self.method, self.method.settings
        dni = isinstance(m, DNI)
        unlocked = hasattr(m, "inputs")
        if self.world > 1:
            # every worker times its stages at the same moment: next to a peer timing its own (as in the run),
            # not next to a peer still starting up (a run's stage times came out 1.7x its training's)
            dist.barrier()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            stages = cost.measure_stage_costs(
                copy.deepcopy(self.stages), self.in_shape, self.batch, self.setup.num_classes,
                synth_hidden_layers=settings.synth_hidden_layers if dni else None,
                synth_width=getattr(settings, "synth_width", 1024), context=bool(getattr(m, "conditioned", False)),
                synth_input_layers=settings.input_hidden_layers if unlocked else None,
                synth_input_width=getattr(settings, "input_width", 1024), repeats=7, lr=self.spec.train.lr,
                device=self.device)
        if self.world > 1:
            table = torch.tensor([[float(getattr(s, f)) for f in cost.STAGE_FIELDS] for s in stages], dtype=torch.float64)
            dist.all_reduce(table)                     # the workers' mean: one set of costs for everyone
            table /= self.world
            stages = [cost.StageCost(*row[:-1].tolist(), out_bytes=int(row[-1])) for row in table]
            ends = torch.tensor([hi for _, hi in cost.partition([s.total for s in stages], self.world)])
            dist.broadcast(ends, 0)                    # the same split on every worker, whatever rounding did
            ends = ends.tolist()
            self.groups = list(zip([0] + ends[:-1], ends))
            self.lo, self.hi = self.groups[self.rank]
        act = self.batch * int(torch.Size(self.setup.stage_shapes[self.groups[0][1] - 1]).numel()) * 4
        busy_bytes = act // (self.par.microbatches or 1)
        if self.world > 1 and self.rank <= 1:
            sizes = {4, busy_bytes, act, 4 * act}         # busy_bytes: a micro-batch's activation when pipelined
            times = cost.ping_pong(self.rank, 1 - self.rank, sorted(sizes), repeats=10)
            link, fitted = cost.link_from_times(times)
            out["cost/link_fitted"] = float(fitted)
            # and as a message costs in the run, both workers computing between messages, at the size the schedule
            # sends (a micro-batch's activation when pipelined); the model charges it to every message of that size
            # (costs_from_metrics). In the schedule's pattern: a pipeline's through the library's own schedule with
            # stand-in stages (time_stand_in, below), locked bprop's a round trip, the decoupled schedules' an exchange
            # (cost.busy_ping: each round's later poster, no phase skew in it), the last two between workers 0 and 1;
            # 60 rounds in 3 bursts, the median burst
            if self.par.schedule == "locked":
                # a locked step's messages: round trips through the executor's own inbox, each receiver idle first
                # and waiting as the run's workers do (polling where every worker has its cores, worker.py spins);
                # and to a receiver waiting blocked (cost/link_blocked_s: where locked workers do not poll)
                polled = spins(self.world, self.par.threads, self.cores)
                trip = self.round_trip_ping(busy_bytes, repeats=30, spin=True) if polled else None
                blocked = self.round_trip_ping(busy_bytes, repeats=12, spin=False)
                if self.rank == 0:
                    out["cost/link_busy_s"] = trip if polled else blocked
                    out["cost/link_blocked_s"] = blocked
            elif self.par.schedule != "pipelined":
                rounds = cost.busy_ping(self.rank, 1 - self.rank, busy_bytes, repeats=60, bursts=BURSTS, gap_s=0.1)
                mine = torch.tensor(rounds, dtype=torch.float64)
                peer = torch.zeros_like(mine)
                if self.rank == 1:
                    dist.send(mine, 0)
                else:
                    dist.recv(peer, 1)
                out["cost/link_busy_s"] = cost.message_rounds(mine.tolist(), peer.tolist(), bursts=BURSTS)
            out["cost/link_busy_bytes"] = float(busy_bytes)
        if self.world > 1 and self.par.schedule == "pipelined":
            # a pipeline's messages as the library's own schedule sends them: a stand-in pipeline of the run's schedule,
            # M and message size, a known compute per chunk, one worker alone and then all of them (time_stand_in)
            one_s, step_s = self.time_stand_in(busy_bytes)
            if self.rank == 0:
                out["cost/link_busy_s"] = cost.pipeline_message(self.par.pipeline_schedule or "gpipe", self.world,
                                                                self.par.microbatches, one_s, step_s)
                out.update({"cost/stand_in_one_s": one_s, "cost/stand_in_step_s": step_s})
        if self.par.schedule == "decoupled" and not self.par.lockstep:
            # and this worker's whole step, as the decoupled loop runs it, next to its busy peers; with K > 1 then the
            # method's one-process step on every worker at once: what the machine leaves of that step's speed alone
            # when every worker computes (the efficiency's contention, report.parallel.efficiency_parts)
            if self.world > 1:
                step_s, whole_s = self.timed_at_once(lambda: (self.time_decoupled_step(seconds=STEP_TIMING_S),
                                                              self.time_whole_step(seconds=STEP_TIMING_S)))
                out.update({f"cost/worker{k}/whole_step_s": t for k, t in enumerate(whole_s)})
            else:
                step_s, = self.timed_at_once(lambda: (self.time_decoupled_step(seconds=STEP_TIMING_S),))
            out.update({f"cost/worker{k}/step_s": t for k, t in enumerate(step_s)})
        if self.par.schedule == "pipelined":
            # and each worker's forward and backward of one micro-batch through its stages: the pipeline's chunks
            forward, backward = self.timed_at_once(lambda: self.time_pipeline_chunks(seconds=STEP_TIMING_S))
            out.update({f"cost/worker{k}/chunk_forward_s": t for k, t in enumerate(forward)})
            out.update({f"cost/worker{k}/chunk_backward_s": t for k, t in enumerate(backward)})
        if self.rank != 0:
            return {}
        out.update(cost.cost_metrics(stages, link))
        out["cost/contended"] = float(self.world > 1)  # timed next to a busy peer (K > 1) or alone (K = 1)
        out.update(cost.split_metrics(self.groups))   # the split this run trained with (the model predicts it)
        out["cost/measure_s"] = time.perf_counter() - start
        return out

    def timed_at_once(self, measure) -> list[list[float]]:
        """Every worker runs ``measure`` (its seconds, a tuple) at the same moment, after a barrier, each for the same
        span and next to its busy peers, with the random streams put back afterwards; returns, per value, every
        worker's (``[value][worker]``), for worker 0 to log."""
        if self.world > 1:
            dist.barrier()                             # the workers start together and time for as long
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            mine = measure()
        table = torch.zeros(len(mine), self.world, dtype=torch.float64)
        table[:, self.rank] = torch.tensor(mine, dtype=torch.float64)
        if self.world > 1:
            dist.all_reduce(table)
        return table.tolist()

    def time_stand_in(self, nbytes: int) -> tuple[float, float]:
        """Seconds per step of a stand-in pipeline (pipelined.time_stand_in) of the run's schedule and micro-batches,
        micro-batch messages of ``nbytes`` between workers: first a one-worker pipeline on each of the first workers at
        once, one per core (each in a group of its own, next to its busy peers; with more workers than cores a
        pipeline keeps about that many busy), their mean; then one through all the workers. Each is the mean step of
        the median one of BURSTS bursts (a burst can land in a moment when every message is held up)."""
        import statistics

        from .pipelined import time_stand_in
        schedule, m = self.par.pipeline_schedule or "gpipe", self.par.microbatches
        alone = [dist.new_group([rank]) for rank in range(self.world)]     # every worker creates every group

        def burst_mean(seconds: list[float]) -> float:
            return cost.median_burst(seconds, BURSTS, statistics.mean)
        runners = min(self.world, self.cores)
        ones = self.timed_at_once(lambda: (
            burst_mean(time_stand_in(0, 1, schedule, m, self.batch, nbytes, STAND_IN_WORK_S, STAND_IN_STEPS,
                                     group=alone[self.rank])) if self.rank < runners else 0.0,))[0][:runners]
        steps = burst_mean(time_stand_in(self.rank, self.world, schedule, m, self.batch, nbytes, STAND_IN_WORK_S,
                                         STAND_IN_STEPS))
        return statistics.mean(ones), steps

    def round_trip_ping(self, nbytes: int, repeats: int, spin: bool, work_s: float = 2e-3) -> float:
        """One-way seconds of a message of ``nbytes`` to a receiver that waits for it in the executor's own Inbox,
        polling (``spin``) or blocked, between workers 0 and 1: each round one computes for ``work_s`` while the
        other waits, then sends; a round trip less both computes, halved. Worker 0 returns the median (the first
        round sets up the connection), worker 1 returns 0."""
        import statistics

        peer, n = 1 - self.rank, max(nbytes // 4, 2)
        inbox = Inbox(peer, COST, (n,), repeats + 1, torch.device("cpu"), spin=spin)
        samples = []
        for _ in range(repeats + 1):
            if self.rank == 0:
                start = time.perf_counter()
                mine = cost.busy_compute(work_s)
                dist.send(torch.zeros(n), peer, tag=COST)
                reply = inbox.take()
                samples.append((time.perf_counter() - start - mine - float(reply[0])) / 2)
            else:
                inbox.take()
                reply = torch.zeros(n)
                reply[0] = cost.busy_compute(work_s)
                dist.send(reply, peer, tag=COST)
        return statistics.median(samples[1:]) if samples else 0.0

    def time_pipeline_chunks(self, seconds: float, warmup: int = 5) -> tuple[float, float]:
        """Seconds of one micro-batch's forward, and of its backward, through this worker's stages on a copy of
        them: the compute of the chunks the pipeline runs (M of each per step), at the micro-batch's size. Each is
        the median over half of ``seconds`` (every worker times for the same span, next to its peers); the
        backward is a forward and backward less the forward, from the loss on the last worker and from a random
        gradient on the others, with the input's gradient where the pipeline sends one down. What the library
        adds per chunk (its bookkeeping, the messages) is not in it: cost.py's pipeline overhead."""
        import copy

        from ..methods.base import task_loss
        module = copy.deepcopy(torch.nn.Sequential(*self.stages[self.lo:self.hi])).train()
        mb = self.batch // (self.par.microbatches or 1)
        gen = torch.Generator().manual_seed(1)
        in_shape = self.in_shape if self.first else tuple(self.setup.stage_shapes[self.lo - 1])
        x = torch.rand(mb, *in_shape, generator=gen).to(self.device).requires_grad_(not self.first)
        y = torch.randint(0, self.setup.num_classes, (mb,), generator=gen).to(self.device)
        grad = torch.randn(mb, *self.setup.stage_shapes[self.hi - 1], generator=gen).to(self.device)

        def forward_backward():
            out = module(x)
            if self.last:
                task_loss(out, y).backward()
            else:
                out.backward(grad)
        half = seconds / 2
        forward = cost.median_seconds(lambda: module(x), self.device, repeats=5, seconds=half, warmup=warmup)
        both = cost.median_seconds(forward_backward, self.device, repeats=5, seconds=half, warmup=warmup)
        return forward, max(both - forward, 1e-9)

    def time_decoupled_step(self, seconds: float, warmup: int = 5, least: int = 5) -> float:
        """Seconds of compute per step of this worker's decoupled loop, on a copy of the method: the median of the
        steps run in ``seconds`` (at least ``least``) after ``warmup`` steps. Every worker times for the same span,
        so each step is timed next to its peers' (a count of steps would leave the slowest worker's last ones
        alone). A step trains the group on a batch (``decoupled_step``'s compute) and takes one message of each
        kind the worker receives (``on_target``: the boundary synthesizer predicts again at the kept output and
        is regressed; complete unlock, ``on_real_input``: I regressed towards a real input), random tensors of the
        messages' shapes standing in for them; one worker runs the method's own step. Nothing is sent: the run
        adds its messages and the executor's own time (cost.py: the decoupled schedules)."""
        import copy

        from ..dni import one_hot
        from ..methods.units import StageGroup
        method = copy.deepcopy(self.method)
        group, unlocked = StageGroup(method, self.lo, self.hi), hasattr(method, "inputs")
        gen = torch.Generator().manual_seed(1)
        x = torch.rand(self.batch, *self.in_shape, generator=gen).to(self.device)
        y = torch.randint(0, self.setup.num_classes, (self.batch,), generator=gen).to(self.device)
        context = one_hot(y, self.setup.num_classes) if method.conditioned else None
        h_in = None if self.first else torch.randn(self.shape_in(), generator=gen).to(self.device)
        out = torch.randn(self.shape_out(), generator=gen).to(self.device)
        target = 1e-3 * torch.randn(self.shape_out(), generator=gen).to(self.device)
        coins = [True] * len(method.stages)

        def step():
            metrics: dict = {}
            if self.world == 1:                        # the whole network: the method's own step, as the loop runs it
                method.step(x, y)
                return
            if unlocked:
                real, _ = group.train_unlocked(x, y, context, coins, metrics)
                group.regress_inputs(real, x, coins, metrics)
                if not self.last:
                    group.regress(target, metrics, h=out, context=context)
                if not self.first:
                    group.regress_inputs({self.lo - 1: h_in}, x, coins, metrics, fresh=True)
                return
            train_group(group, x if self.first else h_in, y, context, metrics)
            if not self.last:
                group.regress(target, metrics, h=out, context=context)

        return cost.median_seconds(step, self.device, repeats=least, seconds=seconds, warmup=warmup)

    def time_whole_step(self, seconds: float, warmup: int = 5, least: int = 5) -> float:
        """Seconds of the method's one-process step over the whole network (fused where the method has a fused step,
        as a K = 1 run trains it) on a copy, with this worker's threads, at the run's batch: the median of the steps
        run in ``seconds`` (at least ``least``) after ``warmup``. Every worker times it at once (``timed_at_once``), so
        against the K = 1 run's step it measures what the neighbours cost a step (shared cache, memory bandwidth,
        shared cores), apart from what splitting the step costs."""
        import copy
        import dataclasses

        setup = dataclasses.replace(self.setup, fused_step=True, generator=torch.Generator().manual_seed(1))
        method = type(self.method)(copy.deepcopy(self.stages), self.method.settings, setup)
        gen = torch.Generator().manual_seed(1)
        x = torch.rand(self.batch, *self.in_shape, generator=gen).to(self.device)
        y = torch.randint(0, self.setup.num_classes, (self.batch,), generator=gen).to(self.device)
        return cost.median_seconds(lambda: method.step(x, y), self.device, repeats=least, seconds=seconds,
                                   warmup=warmup)

    def worker_metrics(self, train_s: float) -> dict[str, float]:
        k, s = self.rank, self.clock.seconds
        return {f"worker{k}/busy_frac": s["busy"] / max(train_s, 1e-9), f"worker{k}/wait_input_s": s["wait_input"],
                f"worker{k}/wait_grad_s": s["wait_grad"], f"worker{k}/comm_s": s["comm"]}

    def dump(self) -> None:
        """Test hook: this worker's stages and boundary models after training, for the parity test, and the cores each
        of its threads may run on (rank{k}.cores.json: its compute, gloo's and the inboxes' threads; Linux)."""
        where = self.hooks.get("dump")
        if where:
            state = {f"stage{i}": self.stages[i].state_dict() for i in range(self.lo, self.hi)}
            for i in range(self.lo, self.hi):
                if i < len(getattr(self.method, "interfaces", [])):
                    state[f"synth{i}"] = self.method.interfaces[i].synthesizer.state_dict()
                if 0 < i <= len(getattr(self.method, "inputs", [])):     # I on stage i's input
                    state[f"input{i}"] = self.method.inputs[i - 1].model.state_dict()
            torch.save(state, os.path.join(where, f"rank{self.rank}.pt"))
            if os.path.isdir("/proc/self/task"):
                import json
                cores = [sorted(os.sched_getaffinity(int(tid))) for tid in os.listdir("/proc/self/task")]
                with open(os.path.join(where, f"rank{self.rank}.cores.json"), "w") as f:
                    json.dump(cores, f)

    # ---- schedules ----------------------------------------------------------------------------------
    def shape_in(self) -> tuple[int, ...]:
        return (self.batch, *self.setup.stage_shapes[self.lo - 1])

    def shape_out(self) -> tuple[int, ...]:
        return (self.batch, *self.setup.stage_shapes[self.hi - 1])

    def schedule_step(self):
        from ..methods.dni import DNI
        from ..methods.units import StageGroup
        schedule, steps = self.par.schedule, self.spec.train.steps
        self.outbox = Outbox()
        self.up = self.down = None
        # torch's pipelining waits in its own way: polling applies to this module's schedules
        self.spin = schedule != "pipelined" and spins(self.world, self.par.threads, self.cores)
        if schedule == "pipelined":
            return self.pipelined_step()
        if self.world == 1:                            # the whole network here: the method's own step
            def whole(_step, x, y):
                with self.clock("busy"):
                    return self.method.step(x, y)
            return whole
        if schedule == "locked":
            if not self.first:
                self.up = Inbox(self.rank - 1, UP, self.shape_in(), steps, self.device, self.spin)
            if not self.last:
                self.down = Inbox(self.rank + 1, DOWN, self.shape_out(), steps, self.device, self.spin)
            return self.locked_step
        if not isinstance(self.method, DNI):
            raise TypeError(f"schedule decoupled needs a DNI-family method, not {self.spec.method}")
        self.group = StageGroup(self.method, self.lo, self.hi)
        self.unlocked = hasattr(self.method, "inputs")
        pair = (2,) if self.unlocked else ()           # complete unlock sends (input, gradient) down
        if not self.first:
            self.up = Inbox(self.rank - 1, UP, self.shape_in(), steps, self.device, self.spin)
        if not self.last:
            self.down = Inbox(self.rank + 1, DOWN, pair + self.shape_out(), steps, self.device, self.spin)
        self.in_flight = self.par.max_in_flight
        self.held_step = None                          # the step whose prediction the boundary synthesizer holds
        self.kept: dict[int, tuple] = {}               # per step: what a late target or real input needs
        self.trained = 0
        return self.decoupled_step

    def locked_step(self, step: int, x: torch.Tensor, y: torch.Tensor) -> dict:
        from ..methods.base import task_loss
        m, clock, metrics = self.method, self.clock, {}
        if self.first:
            h_in = x
        else:
            with clock("wait_input"):
                h_in = self.up.take()
            h_in.requires_grad_(True)
        with clock("busy"):
            h = h_in
            for i in range(self.lo, self.hi):
                h = self.stages[i](h)
            if self.last:
                loss = task_loss(h, y)
                metrics["train_loss"] = loss.detach()
                loss.backward()
        if not self.last:
            with clock("comm"):
                self.outbox.send(h, self.rank + 1, UP)
            with clock("wait_grad"):
                grad = self.down.take()
            with clock("busy"):
                h.backward(grad)
        if not self.first:
            with clock("comm"):
                self.outbox.send(h_in.grad, self.rank - 1, DOWN)
        with clock("busy"):
            if m.fused:                                # one optimizer over every stage: only ours have gradients
                m.apply_all_updates()
            else:
                for i in range(self.lo, self.hi):
                    m.apply_update(i)
        return metrics

    def pipelined_step(self):
        try:
            from .pipelined import PipelinedBprop
        except ImportError as err:
            from ..errors import DnibenchError
            raise DnibenchError(f"schedule pipelined is not available: {err}") from None
        module = torch.nn.Sequential(*self.stages[self.lo:self.hi])
        optimizer = self.setup.adam(module.parameters())
        self.extra_optimizers = [optimizer]
        in_shape = self.in_shape if self.first else tuple(self.setup.stage_shapes[self.lo - 1])
        if self.world == 1:
            # the library's pipeline needs a process group even for one stage
            dist.init_process_group("gloo", init_method=f"file://{self.rendezvous}", rank=0, world_size=1)
        pipe = PipelinedBprop(module, self.rank, self.world, self.par.microbatches, self.batch, in_shape, optimizer,
                              device=self.device, schedule=self.par.pipeline_schedule or "gpipe")

        def step(_step, x, y):
            before = dict(pipe.timings)
            loss = pipe.step(x if self.first else None, y if self.last else None)
            self.clock.seconds["busy"] += pipe.timings["busy"] - before["busy"]
            # the library does not say why it waited: a pipeline's wait is for activations or gradients
            self.clock.seconds["comm"] += pipe.timings["wait"] - before["wait"]
            return {"train_loss": loss} if loss is not None else {}
        return step

    def decoupled_step(self, step: int, x: torch.Tensor, y: torch.Tensor) -> dict:
        from ..dni import one_hot
        m, clock, group, metrics = self.method, self.clock, self.group, {}
        coins = [True] * len(self.stages)              # p_update = 1 (plan refuses anything else)
        context = one_hot(y, self.setup.num_classes) if m.conditioned else None
        if self.unlocked:
            with clock("busy"):
                real, pair = group.train_unlocked(x, y, context, coins, metrics)
                group.regress_inputs(real, x, coins, metrics)   # the inputs inside the group: local
            h_out = real.get(self.hi - 1)
            down = None if pair is None else torch.stack(pair)
            self.kept[step] = (x, context)
        else:
            if self.first:
                h_in = x
            else:
                with clock("wait_input"):
                    h_in = self.up.take()
            with clock("busy"):
                h_out, down = train_group(group, h_in, y, context, metrics)
            if not self.last:
                self.kept[step] = (h_out, context)
                self.held_step = step
        self.trained = step
        with clock("comm"):
            if not self.last:
                self.outbox.send(h_out, self.rank + 1, UP)
            if not self.first:
                self.outbox.send(down, self.rank - 1, DOWN)
        self.poll(metrics)
        # Flow control, at the end of the step: at most max_in_flight - 1 batches left without their target
        # before the next one starts (lockstep, 1: this batch's target is regressed within this step, at
        # this step's learning rate, exactly the one-process order).
        if self.down is not None:
            while self.trained - self.down.count > self.in_flight - 1:
                with clock("wait_grad"):
                    target = self.down.take()
                self.on_target(target, metrics)
        if self.unlocked and self.up is not None:
            while self.trained - self.up.count > self.in_flight - 1:
                with clock("wait_input"):
                    real = self.up.take()
                self.on_real_input(real, metrics)
        return metrics

    def poll(self, metrics: dict) -> None:
        """Whatever came in meanwhile: targets from above, real inputs from below (complete unlock), for batches
        this worker has trained (with complete unlock a neighbour may be ahead: its message waits its turn)."""
        while self.down is not None and self.down.count < self.trained:
            with self.clock("comm"):
                target = self.down.poll()
            if target is None:
                break
            self.on_target(target, metrics)
        while self.unlocked and self.up is not None and self.up.count < self.trained:
            with self.clock("comm"):
                real = self.up.poll()
            if real is None:
                break
            self.on_real_input(real, metrics)

    def on_target(self, target: torch.Tensor, metrics: dict) -> None:
        """Regress the boundary synthesizer on the target of batch s = the n-th target received."""
        s = self.down.count
        self.stats.add(f"staleness/h{self.hi}", self.trained - s)
        with self.clock("busy"):
            if self.unlocked:                          # at the stage above's synthetic input, as one process does
                _, context = self.kept[s]
                self.group.regress(target[1], metrics, h=target[0], context=context)
            elif s == self.held_step:                  # nothing predicted since: its own prediction (lockstep)
                self.group.regress(target, metrics)
            else:
                # The synthesizer may have learnt since it predicted for batch s: the prediction is made
                # again from the kept (h_out, c) of batch s with its current parameters, so the regression
                # moves today's synthesizer (in lockstep nothing changed in between: the one-process rule).
                h, context = self.kept[s]
                self.group.regress(target, metrics, h=h, context=context)
            self.held_step = None
        if not self.unlocked or self.first:
            self.kept.pop(s, None)
        elif s <= self.up.count:                       # unlock: kept until its real input came too
            self.kept.pop(s, None)

    def on_real_input(self, real: torch.Tensor, metrics: dict) -> None:
        """Complete unlock: regress I on h_{lo-1} towards the real input of batch s (made again from x_s)."""
        s = self.up.count
        self.stats.add(f"input_staleness/h{self.lo}", self.trained - s)
        x, _ = self.kept[s]
        with self.clock("busy"):
            self.group.regress_inputs({self.lo - 1: real}, x, [True] * len(self.stages), metrics, fresh=True)
        if self.down is None or s <= self.down.count:
            self.kept.pop(s, None)

    def finish(self) -> None:
        """After the last step: the targets (and real inputs) still coming train their models as in one process
        (the last batch's target too), then every send is waited for."""
        metrics: dict = {}
        for inbox, on in ((self.down, getattr(self, "on_target", None)),
                          (self.up, self.on_real_input if getattr(self, "unlocked", False) else None)):
            while inbox is not None and inbox.count < inbox.total:
                with self.clock("wait_grad" if inbox is self.down else "wait_input"):
                    message = inbox.take()
                if on is not None and self.par.schedule == "decoupled":
                    on(message, metrics)
        left = sorted(getattr(self, "kept", {}))
        if left:        # each batch's state goes once its target (and real input) came: a leak, or a mispairing
            raise RuntimeError(f"worker {self.rank}: the state of batches {left[:5]} was still kept after the run")
        with self.clock("comm"):
            self.outbox.drain()
            if self.world > 1:
                dist.barrier()                         # nobody leaves while a peer still needs it

    # ---- evaluation ---------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Test error of the real forward chain through every worker's stages as they are after this step
        (batch-norm in inference mode); the last worker returns it, the others None."""
        own = [self.stages[i] for i in range(self.lo, self.hi)]
        for stage in own:
            stage.eval()
        n = self.x_test.shape[0]
        wrong = 0
        for start in range(0, n, EVAL_CHUNK):
            size = min(EVAL_CHUNK, n - start)
            if self.first:
                h = self.x_test[start:start + size]
            else:
                h = torch.empty(size, *self.setup.stage_shapes[self.lo - 1])
                dist.recv(h, src=self.rank - 1, tag=EVAL)
                h = h.to(self.device)
            for stage in own:
                h = stage(h)
            if self.last:
                wrong += int((h.argmax(1) != self.y_test[start:start + size]).sum())
            else:
                dist.send(h.to("cpu").contiguous(), dst=self.rank + 1, tag=EVAL)
        for stage in own:
            stage.train()
        return 100.0 * wrong / n if self.last else None
