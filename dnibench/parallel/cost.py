"""A cost model of the parallel schedules: steady-state throughput for K workers (issue 10).

Measured where we can (K = 1, 2 and 4 here), modelled beyond: from per-stage compute times measured
in one process (``measure_stage_costs``) and a link's latency and bandwidth (``ping_pong`` +
``fit_link`` on the real transport, or a cluster preset below), ``predict`` gives samples/s per
schedule for any K. The report puts the prediction next to each measured K with its relative error.

Per step of a batch of B examples, with the N stages split over K workers into contiguous groups
(``partition``: the split minimising the slowest group), worker k's group has forward time F_k,
backward time B_k, optimizer update U_k, synthesizer time S_k (its synthesizer's forward, backward
and regression update: dni/cdni/unlock) and synthetic-input model time I_k (unlock), and a message
across boundary b (activation up, or its gradient down: same size) takes m_b = latency + bytes/bandwidth:

- **locked bprop**: everything in series: T = sum_k (F_k + B_k) + 2 sum_b m_b + max_k U_k
  (a worker's update overlaps the backward of the workers below; the largest one is charged).
- **pipelined bprop, GPipe with M micro-batches**: per-micro-batch costs f_k = F_k/M + o/2,
  b_k = B_k/M + o/2, messages of 1/M the bytes. The forward phase is one micro-batch's trip through all
  workers plus M-1 intervals of the slowest worker, likewise the backward:
  T = [sum f + sum m + (M-1) max_k (f_k + r_k)] + [sum b + sum m + (M-1) max_k (b_k + r'_k)] + max_k U_k,
  with r_k (r'_k) the message worker k receives in the forward (backward) phase: torch's pipelining posts
  a micro-batch's receive only when it is about to use it, so a worker that is never idle still waits
  for gloo's rendezvous with its busy peer each micro-batch, while a sender only posts (the ``busy_ping``
  cost, see below). For equal stages, o = 0 and free messages this is (M+K-1) (f+b): the bubble
  (K-1)/(M+K-1). At M = 1 it is the locked formula. ``o`` (``overhead_s``) is the schedule's own time
  per micro-batch and worker (the library's bookkeeping of a chunk, its autograd calls on small
  tensors): every worker pays it for every micro-batch, however few stages it holds, so it is not a
  share of the compute; ``microbatch_overhead`` measures it from the same M in one worker (a K = 1
  pipelined step less its stages' compute, per micro-batch). **1F1B** (``1f1b``, torch's Schedule1F1B)
  reorders the same M forwards and backwards per worker so that at most K micro-batches are in flight
  (memory), with the same bubble, and in its steady state posts a micro-batch's send and the next receive
  as one batch of operations (a forward's send with a backward's receive, and the other way round): each
  forward-backward pair waits for one rendezvous, not two. So the fill and drain are GPipe's first
  micro-batch and the M-1 steady pairs cost max_k (f_k + b_k + max(r_k, r'_k)):
  T = sum f + sum b + 2 sum m + (M-1) max_k (f_k + b_k + max(r_k, r'_k)) + max_k U_k. With free messages
  it equals GPipe's; GPipe's formula for 1F1B under-predicted its K = 2 runs by 16-21 % (three rounds of
  make bench, 2026-11-30), where 1F1B ran 1.27x GPipe's samples/s at M = 4.
- **decoupled dni / cdni / unlock**: nothing waits for a gradient (unlock: nor for an input), so in
  the steady state each worker runs at its own pace and the slowest sets the rate:
  T = max_k (F_k + B_k + U_k + S_k + I_k + sends_k), sends_k = the activation up plus the gradient
  (dni's bootstrapped target) down. For dni/cdni the forward still flows through the workers, which
  adds latency but not a rate limit in the steady state.

**What a message costs.** A ping-pong in a tight loop (``ping_pong``) keeps both ends awake: on this
2-core machine it says 0.05-0.3 ms for an FCN-6 activation, while the same message between two workers
that compute between messages costs 0.5-1.5 ms (the receiving thread, and gloo's, must be woken and
get a core; torch's pipelining posts each micro-batch's receive only when it needs it, so gloo's
rendezvous adds a round trip to the peer's busy core). ``busy_ping`` measures that before the run's
clock starts (both workers computing about a millisecond between a send and a receive) at the size
the schedule sends (a micro-batch's activation when pipelined), in three bursts (the median burst: one burst
can land in a moment when every message is held up), and the model charges it to every message of every schedule
(``costs_from_metrics``; other sizes by the ping-pong's time per byte, ``busy_link``). A pipeline's messages are
measured in the library's own schedule instead (``pipeline_message``, from pipelined.time_stand_in run by worker.py
``Worker.time_stand_in``): a stand-in pipeline of the run's schedule, M and message size whose chunks compute a known
0.5 ms each way, first one worker alone (on as many workers at once as there are cores), then through all of them;
the message time that makes ``step_time`` give the stand-in's step from its one-worker step is the message's cost.
It holds what a message costs a pipeline beyond its wire time: torch's pipelining posts and waits on each micro-batch's
send and receive (about 0.1 ms of bookkeeping a call on this machine, 2026-12-01), and gloo's transport thread, on the
worker's own core, can spin there: a GPipe M = 8 step at K = 2 of 18 ms had a 3-5 ms stall in about half its steps,
nearly always in posting the phase's second send, and perf sched showed gloo's loop thread on the CPU, in epoll_wait,
for 4.5 ms while both workers' compute threads waited (2026-12-02; its event handler skips a pair whose lock another
thread holds, and epoll reports the same event again). GPipe M = 8 at K = 2:
0.39-0.44 ms a message, at compute per chunk of 0.25, 0.5 and 1 ms alike. It replaced a relay of plain isend/irecv
micro-batch messages through the workers (0.21-0.24 ms a message), which left all of that out: three rounds of
make bench each (``DNIBENCH_BENCH_SCHEDULES=pipelined``, 2026-12-02), model errors at K = 2 with the relay +43, +36,
+15 % (GPipe M = 4), -8, +51, +43 % (M = 8), -12, -5, -8 % (1F1B M = 4); with the stand-in +16, +1, -8 %; +3, +8,
+4 %; +11, -4, +3 %. At K = 4 on 2 cores (more workers than cores, two pairs each) the stand-in predicts 13-20 % slow
(GPipe M = 4: -13, -14 %; M = 8: -15, -20 %) where the relay was +6, +1 % and +11, +5 %: four workers time-share
two cores, which the model's per-message cost does not separate from the compute. Locked bprop's are measured as round
trips through the executor's own inbox, the receiver waiting as the run's workers do (worker.py ``round_trip_ping``;
six rounds each way on 2026-11-30: exchange errors +16, +21, -3, +8, +7, -14 %, the last from a 2.0 ms exchange; round trips
+0, +21, +15, +3, +5, +2 %). Where locked workers wait blocked (more workers than
cores, so they do not poll: worker.py ``spins``) their messages cost what a locked run measured for a receiver
waiting blocked (worker.py ``round_trip_ping``, ``cost/link_blocked_s``). With the ping-pong alone it over-predicted locked
bprop at K = 2 by 22-28 % and pipelined bprop by 39-98 % (issue 10's runs of 2026-11-30).

**Measured where it runs.** A parallel run times its stages in its own worker processes, all workers at
once (dnibench/parallel/worker.py ``measure_costs``): with two workers on two cores a stage's time is the one
it has next to a busy neighbour (shared cache and memory bandwidth, the machine's other load), which is
what the decoupled and pipelined schedules see. A decoupled run also times each worker's whole step before its
clock starts (worker.py ``time_decoupled_step``: its group's training step and the regressions its messages
trigger, all workers at once for the same span), and the report scales each worker's stages to that step
(``scale_groups``): the fused backward, the boundary synthesizer's second prediction and the neighbour's effect
are then each worker's own, and the K = 2 error is the messages' and the executor's. Locked bprop's stage
times (and a decoupled run's logged before its workers' steps were timed) are scaled by the one-worker run's
``whole_step_factor`` (its measured step over the sum of its stages timed alone: a step's bookkeeping grows
with its compute); locked bprop uses the one-worker stage times, its workers take turns. A pipelined run times each worker's forward and backward
of one micro-batch through its stages before its clock starts, all workers at once (worker.py ``time_pipeline_chunks``):
the model's per-micro-batch compute (``chunk_groups``), at the micro-batch's size, where small products run slower per
example than the whole batch's (FCN-6 at K = 1: 8 chunks of 32 took 13.3 ms against 8.4 ms for the batch of 256). What
the library adds to each micro-batch beyond the timed chunk (its bookkeeping inside and between chunks) is the K = 1
run's step beyond its own timed chunks and update, per micro-batch (``microbatch_overhead``; 0.4-0.8 ms), which every
worker pays. Runs logged before the chunks were timed use the whole-batch stage costs and the K = 1 step's whole excess
over them per micro-batch: that charged each K = 2 worker 2.5-3 ms per step more than its measured chunk time (GPipe
M = 8: 12.7 and 13.1 ms modelled against 8.3 and 10.0 ms of chunks), and the error hid the messages' stalls. What the
chunk model leaves out: at K = 2 under GPipe M = 8 most steps took 14-15.5 ms, as predicted, and some 17-21 ms, a gloo
send or receive held up 3-6 ms (worker threads and gloo's on two cores; 2026-11-30 timelines). The split
is the one the run trained with. None of these inputs comes from the run being predicted: its stage and message times are
measured before its clock starts, and the factor and overhead come from its one-worker run.

**More workers than stages.** FCN-6 has 6 stages and a stage cannot be split, so K > N workers do not
fit the paper's network. ``predict_scaling`` answers "what if the net were as deep as the cluster":
for K > N it deepens the network to K stages by repeating its middle (hidden) stage, the costs and
message size of a 256-unit hidden layer, and reports the throughput of that deeper network with its
own one-process throughput for the efficiency. K <= N uses the real network's stages.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

SCHEDULES = ("locked", "gpipe", "1f1b", "dni", "cdni", "unlock")
PIPELINES = ("gpipe", "1f1b")
DECOUPLED = ("dni", "cdni", "unlock")


@dataclass(frozen=True)
class StageCost:
    """Seconds per batch for one stage (whole batch), and the bytes of its output activation."""
    forward: float
    backward: float
    update: float = 0.0
    synth: float = 0.0           # synthesizer on this stage's output: forward, backward, regression update
    synth_input: float = 0.0     # synthetic-input model of this stage's input (unlock)
    out_bytes: int = 0           # the activation (and its gradient) sent to the next stage

    @property
    def total(self) -> float:
        """Compute per batch a worker spends on this stage (what a split balances)."""
        return self.forward + self.backward + self.update + self.synth + self.synth_input


@dataclass(frozen=True)
class Link:
    latency_s: float
    bandwidth_Bps: float

    def message(self, nbytes: float) -> float:
        return self.latency_s + nbytes / self.bandwidth_Bps


@dataclass(frozen=True)
class Cluster:
    """Links between neighbouring workers: ``intra`` inside a node of ``per_node`` workers, else ``inter``."""
    name: str
    intra: Link
    inter: Link
    per_node: int

    def link(self, boundary: int) -> Link:
        # boundary b is between workers b and b+1
        return self.intra if (boundary // self.per_node) == ((boundary + 1) // self.per_node) else self.inter


# Assumptions, not measurements (facts from vendor specifications; latencies are typical figures):
# - CPU cluster: 10 Gigabit Ethernet (IEEE 802.3ae line rate 10 Gb/s = 1.25 GB/s; taken as 1.1 GB/s
#   after TCP/IP framing) with gloo over TCP, 50 us one-way latency (kernel TCP stack, a switch hop);
#   one worker per node (a node's cores run one worker's intra-op threads).
# - GPU cluster: 8 GPUs per node on NVLink 4 (NVIDIA H100 SXM datasheet: 900 GB/s total per GPU,
#   i.e. 450 GB/s each way; 10 us per NCCL p2p message), nodes on InfiniBand NDR (NVIDIA ConnectX-7
#   product brief: 400 Gb/s = 50 GB/s per port; 5 us with NCCL's per-message overhead).
CPU_CLUSTER = Cluster("cpu-10gbe", intra=Link(50e-6, 1.1e9), inter=Link(50e-6, 1.1e9), per_node=1)
GPU_CLUSTER = Cluster("gpu-nvlink-ib", intra=Link(10e-6, 450e9), inter=Link(5e-6, 50e9), per_node=8)
PRESETS = {c.name: c for c in (CPU_CLUSTER, GPU_CLUSTER)}


def partition(costs: list[float], k: int) -> list[tuple[int, int]]:
    """Contiguous split of len(costs) stages into k non-empty groups minimising the largest group's cost, ties
    broken by the most even stage counts (exact, by dynamic programming; N is small). Returns [start, end) per
    group. The parallel executor splits a run's stages with it (worker.py) and the model predicts with it."""
    n = len(costs)
    if not 1 <= k <= n:
        raise ValueError(f"{k} workers cannot each own a stage of a {n}-stage network")
    best: dict[tuple[int, int], tuple[tuple[float, int], list[int]]] = {}

    def solve(start: int, groups: int):             # the best cuts of stages[start:] into ``groups`` groups
        if (start, groups) not in best:
            if groups == 1:
                best[(start, groups)] = ((sum(costs[start:]), n - start), [n])
            else:
                options = []
                for end in range(start + 1, n - groups + 2):
                    (rest, rest_len), cuts = solve(end, groups - 1)
                    options.append(((max(sum(costs[start:end]), rest), max(end - start, rest_len)), [end] + cuts))
                best[(start, groups)] = min(options, key=lambda option: option[0])
        return best[(start, groups)]

    cuts = solve(0, k)[1]
    return list(zip([0] + cuts[:-1], cuts))


def _group(stages: list[StageCost], lo: int, hi: int) -> StageCost:
    part = stages[lo:hi]
    return StageCost(forward=sum(s.forward for s in part), backward=sum(s.backward for s in part),
                     update=sum(s.update for s in part), synth=sum(s.synth for s in part),
                     synth_input=sum(s.synth_input for s in part), out_bytes=part[-1].out_bytes)


def step_time(schedule: str, stages: list[StageCost], k: int, cluster: Cluster | Link,
              microbatches: int = 1, split: list[tuple[int, int]] | None = None, overhead_s: float = 0.0) -> float:
    """Predicted seconds per batch in the steady state (see the module doc for each formula). ``split``:
    the [lo, hi) of stages per worker a measured run used (its own rule, by parameters), else ``partition``.
    ``overhead_s``: a pipeline's own seconds per micro-batch and worker (forward and backward together)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r}: expected one of {', '.join(SCHEDULES)}")
    if microbatches < 1:
        raise ValueError(f"microbatches {microbatches}: expected at least 1")
    if schedule not in PIPELINES and microbatches != 1:
        raise ValueError(f"micro-batches apply to gpipe and 1f1b only, not {schedule}")
    if split is not None and (len(split) != k or split[0][0] != 0 or split[-1][1] != len(stages)):
        raise ValueError(f"split {split} does not give {k} workers the {len(stages)} stages")
    groups = [_group(stages, lo, hi) for lo, hi in
              split or partition([s.total for s in stages], k)]

    def link(b: int) -> Link:
        return cluster.link(b) if isinstance(cluster, Cluster) else cluster

    # message time across boundary b (between workers b and b+1) for a batch / micro-batch
    msg = [link(b).message(groups[b].out_bytes / microbatches) for b in range(k - 1)]
    update = max(g.update for g in groups)
    if schedule in ("locked", *PIPELINES):
        m = microbatches
        f = [g.forward / m + overhead_s / 2 for g in groups]
        b = [g.backward / m + overhead_s / 2 for g in groups]
        from_below = [msg[i - 1] if i > 0 else 0.0 for i in range(k)]   # activation worker i receives
        from_above = [msg[i] if i < k - 1 else 0.0 for i in range(k)]   # gradient worker i receives
        if schedule == "1f1b":      # steady pairs: one forward, one backward, one fused exchange (module doc)
            pairs = max(fi + bi + max(ri, si) for fi, bi, ri, si in zip(f, b, from_below, from_above))
            return sum(f) + sum(b) + 2 * sum(msg) + (m - 1) * pairs + update
        forward = sum(f) + sum(msg) + (m - 1) * max(fi + ri for fi, ri in zip(f, from_below))
        backward = sum(b) + sum(msg) + (m - 1) * max(bi + ri for bi, ri in zip(b, from_above))
        return forward + backward + update
    per_worker = []
    for i, g in enumerate(groups):
        sends = (msg[i] if i < k - 1 else 0.0) + (msg[i - 1] if i > 0 else 0.0)
        synth_input = g.synth_input if schedule == "unlock" else 0.0
        per_worker.append(g.forward + g.backward + g.update + g.synth + synth_input + sends)
    return max(per_worker)


def throughput(schedule: str, stages: list[StageCost], k: int, cluster: Cluster | Link,
               batch_size: int, microbatches: int = 1, split: list[tuple[int, int]] | None = None,
               overhead_s: float = 0.0) -> float:
    """Predicted samples per second."""
    return batch_size / step_time(schedule, stages, k, cluster, microbatches, split, overhead_s)


def microbatch_overhead(stages: list[StageCost], measured_step_s: float, microbatches: int) -> float:
    """A pipeline's own seconds per micro-batch and worker (``step_time``'s ``overhead_s``), from a one-worker
    pipelined step of ``microbatches`` micro-batches: what the step took beyond its stages' compute timed at
    the whole batch, per micro-batch (0 where the stages took longer)."""
    base = step_time("gpipe", stages, 1, Link(0.0, float("inf")), microbatches)
    return max(measured_step_s - base, 0.0) / microbatches


def whole_step_factor(stages: list[StageCost], schedule: str, measured_step_s: float, microbatches: int = 1) -> float:
    """Measured one-worker step time over the one-worker prediction of ``schedule`` from ``stages``: what a
    whole step adds to its stages timed one by one (the method's bookkeeping, caches gone cold between
    stages, small micro-batches)."""
    base = step_time(schedule, stages, 1, Link(0.0, float("inf")), microbatches)
    if not measured_step_s > 0 or not base > 0:
        raise ValueError("calibration needs a positive measured and predicted step time")
    return measured_step_s / base


def scale(stages: list[StageCost], factor: float) -> list[StageCost]:
    """Every compute time multiplied by ``factor`` (bytes unchanged)."""
    return [replace(s, forward=s.forward * factor, backward=s.backward * factor, update=s.update * factor,
                    synth=s.synth * factor, synth_input=s.synth_input * factor) for s in stages]


def calibrate(stages: list[StageCost], schedule: str, measured_step_s: float,
              microbatches: int = 1) -> list[StageCost]:
    """The stages with every compute time scaled by one factor (``whole_step_factor``), so that the
    one-worker prediction of ``schedule`` equals a measured one-worker step time (a one-worker step sends
    no messages). The factor keeps the stages' proportions and spreads a whole step's overhead over them,
    so what remains of the K > 1 error is the model's, not the measurement's."""
    return scale(stages, whole_step_factor(stages, schedule, measured_step_s, microbatches))


def deepen(stages: list[StageCost], depth: int) -> list[StageCost]:
    """The network made ``depth`` stages deep by repeating its middle stage (a hidden layer: the
    first stage reads the data, the last is the classifier), for K > N (see the module doc)."""
    if depth <= len(stages):
        return list(stages)
    if len(stages) < 3:
        raise ValueError("deepening needs a network with a hidden stage between the first and the last")
    middle = stages[len(stages) // 2]
    return stages[:-1] + [middle] * (depth - len(stages)) + stages[-1:]


def predict_scaling(stages: list[StageCost], batch_size: int, cluster: Cluster | Link,
                    workers=range(1, 65), schedules: dict[str, dict] | None = None) -> list[dict]:
    """One row per (K, schedule label): predicted samples/s, the one-process samples/s of the same
    network, speed-up and parallel efficiency. ``schedules`` maps a label to step_time keywords
    (default: locked, gpipe M=4 and M=8, dni, cdni, unlock). For K > N the network is deepened
    (``deepen``): the row says how many stages it modelled."""
    schedules = schedules or {"locked": {"schedule": "locked"},
                              "gpipe_m4": {"schedule": "gpipe", "microbatches": 4},
                              "gpipe_m8": {"schedule": "gpipe", "microbatches": 8},
                              "dni": {"schedule": "dni"}, "cdni": {"schedule": "cdni"},
                              "unlock": {"schedule": "unlock"}}
    rows = []
    for k in workers:
        net = deepen(stages, k)
        for label, kw in schedules.items():
            kw = dict(kw)
            schedule = kw.pop("schedule")
            rate = throughput(schedule, net, k, cluster, batch_size, **kw)
            # the one-process reference of the same network and method: locked bprop for the bprop
            # schedules (a single process runs no pipeline), the method itself otherwise
            serial = throughput("locked" if schedule in ("locked", *PIPELINES) else schedule, net, 1, cluster,
                                batch_size)
            rows.append({"workers": k, "schedule": label, "stages": len(net), "samples_per_s": rate,
                         "serial_samples_per_s": serial, "speedup": rate / serial,
                         "efficiency": rate / (k * serial)})
    return rows


# --- measurement -------------------------------------------------------------------------------

def measure_stage_costs(stages, in_shape: tuple[int, ...], batch_size: int, num_classes: int,
                        synth_hidden_layers: int | None = None, synth_width: int = 1024,
                        context: bool = False, synth_input_layers: int | None = None,
                        repeats: int = 5, lr: float = 3e-5, synth_input_width: int = 1024,
                        device=None) -> list[StageCost]:
    """Per-stage compute times of ``stages`` (an nn.ModuleList) in this process, median of
    ``repeats`` after one warm-up: forward, backward from a given output gradient, Adam update;
    with ``synth_hidden_layers`` also the synthesizer on each stage's output but the last (forward,
    backward, regression, Adam update; ``context``: cDNI's label input), and with
    ``synth_input_layers`` a synthetic-input model of each stage's input but the first. ``device``: where
    ``stages`` live (CUDA is synchronised around each timed call: its kernels run asynchronously)."""
    import torch

    from ..dni import Synthesizer, SyntheticInputModel, one_hot
    from ..methods.base import adam

    device = torch.device(device or "cpu")

    def timed(fn) -> float:
        return median_seconds(fn, device, repeats=repeats)

    gen = torch.Generator().manual_seed(0)
    data = torch.rand(batch_size, *in_shape, generator=gen).to(device)
    x = data                                     # the stage's input, the data for the first
    c = (one_hot(torch.randint(0, num_classes, (batch_size,), generator=gen), num_classes).to(device)
         if context else None)
    costs = []
    for i, stage in enumerate(stages):
        stage.train()
        opt = adam(stage.parameters(), lr)
        h_in = x.detach().requires_grad_(i > 0)
        with torch.no_grad():
            out_shape = stage(h_in).shape
        grad = torch.randn(out_shape, generator=gen).to(device)
        forward = timed(lambda: stage(h_in))

        def fwd_bwd():
            opt.zero_grad(set_to_none=True)
            out = stage(h_in)
            out.backward(grad)
        backward = max(timed(fwd_bwd) - forward, 0.0)
        fwd_bwd()
        update = timed(opt.step)
        synth = 0.0
        if synth_hidden_layers is not None and i < len(stages) - 1:
            model = Synthesizer(tuple(out_shape[1:]), synth_hidden_layers, synth_width,
                                context_dim=num_classes if context else 0).to(device)
            s_opt = adam(model.parameters(), lr)
            h = torch.randn(out_shape, generator=gen).to(device)

            def synth_step():
                s_opt.zero_grad(set_to_none=True)
                pred = model(h, c)
                torch.nn.functional.mse_loss(pred, grad).backward()
                s_opt.step()
            synth = timed(synth_step)
        synth_input = 0.0
        if synth_input_layers is not None and i > 0:
            model = SyntheticInputModel(tuple(in_shape), tuple(h_in.shape[1:]), synth_input_layers,
                                        synth_input_width).to(device)
            i_opt = adam(model.parameters(), lr)
            target = h_in.detach()

            def input_step():
                i_opt.zero_grad(set_to_none=True)
                torch.nn.functional.mse_loss(model(data), target).backward()
                i_opt.step()
            synth_input = timed(input_step)
        costs.append(StageCost(forward=forward, backward=backward, update=update, synth=synth,
                               synth_input=synth_input,
                               out_bytes=int(torch.Size(out_shape).numel()) * 4))
        x = stage(h_in).detach()
    return costs


def median_seconds(fn, device=None, repeats: int = 0, seconds: float = 0.0, warmup: int = 1) -> float:
    """Median seconds of a call of ``fn`` after ``warmup`` calls: over ``repeats`` calls, and at least as many as
    fit in ``seconds`` (a span: workers timing at once all stay busy while they time). CUDA is synchronised around
    each timed call (its kernels run asynchronously)."""
    import statistics

    import torch

    cuda = device is not None and torch.device(device).type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    end = time.perf_counter() + seconds
    while len(samples) < max(repeats, 1) or time.perf_counter() < end:
        sync()
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


_WORK: list = []                                 # busy_compute's matrices, made once per process


def busy_compute(seconds: float) -> float:
    """Compute on this thread for ``seconds`` (products of small matrices): the work between a message measurement's
    messages, which keeps the core busy as a run's compute does. Returns the seconds it took."""
    import torch

    if not _WORK:
        _WORK.extend((torch.randn(64, 256), torch.randn(256, 256)))
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(*_WORK)
    return time.perf_counter() - start


def median_burst(rounds: list[float], bursts: int, summary) -> float:
    """``rounds`` in ``bursts`` equal runs in order, ``summary`` of each, their median: a burst can land in a moment
    when every message is held up, and the median burst leaves it out."""
    import statistics

    if bursts < 1 or not rounds or len(rounds) % bursts:
        raise ValueError(f"{len(rounds)} rounds do not split into {bursts} bursts")
    size = len(rounds) // bursts
    return statistics.median(summary(rounds[i:i + size]) for i in range(0, len(rounds), size))


def ping_pong(rank: int, peer: int, sizes: list[int], repeats: int = 20, group=None) -> dict[int, float]:
    """One-way message time in seconds by message size in bytes (float32 tensors), half the median
    round trip between ``rank`` and ``peer`` over torch.distributed (both ranks call it; the lower
    rank starts). Returns the times on both ranks."""
    import statistics

    import torch
    import torch.distributed as dist

    result = {}
    for size in sizes:
        buf = torch.zeros(max(size // 4, 1))
        samples = []
        for i in range(repeats + 1):
            start = time.perf_counter()
            if rank < peer:
                dist.send(buf, peer, group=group)
                dist.recv(buf, peer, group=group)
            else:
                dist.recv(buf, peer, group=group)
                dist.send(buf, peer, group=group)
            if i:                                    # the first round trip sets up the connection
                samples.append(time.perf_counter() - start)
        result[size] = statistics.median(samples) / 2
    return result


def busy_ping(rank: int, peer: int, nbytes: int, repeats: int = 20, work=None, group=None, bursts: int = 1,
              gap_s: float = 0.0) -> list[float]:
    """Seconds per round that a worker spends on messages while both workers compute, one per round: each
    round both ranks run ``work`` (default: about a millisecond of matrix products, one thread), post a send
    of ``nbytes`` to the peer and a receive from it, and wait for both; the time of the posts and the wait is
    the round's. On few cores a message costs more than its ping-pong time next to busy compute: gloo's
    threads wait for the core. A decoupled worker sends and receives one message per step per boundary,
    which is what a round does. The rank that posts first in a round also waits out the rest of its peer's
    work (their phase skew): ``message_rounds`` takes that out with the peer's rounds. ``bursts``: the rounds in
    that many runs of ``repeats`` / ``bursts``, ``gap_s`` of compute apart (``message_rounds`` takes the median
    burst: a burst can land in a moment when every message is held up for milliseconds, see there)."""
    import torch
    import torch.distributed as dist

    if work is None:
        a, w = torch.randn(256, 256), torch.randn(256, 256)

        def work():
            for _ in range(6):
                torch.mm(a, w)
    send, recv = torch.zeros(max(nbytes // 4, 1)), torch.zeros(max(nbytes // 4, 1))
    samples = []
    for burst in range(bursts):
        if burst:
            busy_compute(gap_s)
        for i in range(repeats // bursts + 1):
            work()
            start = time.perf_counter()
            jobs = [dist.isend(send, peer, group=group), dist.irecv(recv, peer, group=group)]
            for job in jobs:
                job.wait()
            if i:                                    # a burst's first round sets up the connection, or catches up
                samples.append(time.perf_counter() - start)
    return samples


def pipeline_message(schedule: str, workers: int, microbatches: int, one_step_s: float, step_s: float) -> float:
    """A pipeline message's cost from stand-in steps (pipelined.time_stand_in): ``one_step_s``, one worker's step
    through one stand-in stage (its chunks and the library's own time per micro-batch, no messages), and ``step_s``,
    the step of ``workers`` such stages, one per worker. The message time m that makes ``step_time`` of ``workers``
    stages of the one-worker step's compute give ``step_s`` (0 where the messages cost nothing)."""
    if schedule not in PIPELINES:
        raise ValueError(f"schedule {schedule!r}: a stand-in pipeline runs {' or '.join(PIPELINES)}")
    if workers < 2 or not one_step_s > 0 or not step_s > 0:
        raise ValueError("a message's cost needs two or more workers and positive step times")
    stages = [StageCost(forward=one_step_s / 2, backward=one_step_s / 2)] * workers

    def step(message_s: float) -> float:
        return step_time(schedule, stages, workers, Link(message_s, float("inf")), microbatches)
    low, high = 0.0, step_s                          # a message costs at most the whole step
    if step(low) >= step_s:
        return 0.0
    for _ in range(100):                              # bisection: step() grows with the message time
        middle = (low + high) / 2
        low, high = (middle, high) if step(middle) < step_s else (low, middle)
    return (low + high) / 2


def message_rounds(mine: list[float], peer: list[float], bursts: int = 1) -> float:
    """A message's cost next to busy compute from both ranks' ``busy_ping`` rounds: the median over rounds of
    the smaller of the two. In a round the rank that posts last waits only for the messages; the one that
    posts first waits for its peer's compute as well, which in a run is waiting for a neighbour (counted as
    waiting for input or for a gradient), not the message. Each rank's own median mixed the two: 0.22 and
    2.19 ms in two runs of the same case, as the machine's load shifted the ranks' phases. With ``bursts`` (the
    rounds in that many equal runs, ``busy_ping``'s), the median burst of those medians: in one run of 60 rounds
    in a row every round took 2.0 ms where the same case's other runs took 0.16-0.62 ms, and the run itself was
    its case's fastest (2026-11-30): one moment of the machine, which put the report's prediction 54 % low."""
    import statistics

    if len(mine) != len(peer) or not mine:
        raise ValueError(f"busy_ping rounds: {len(mine)} against {len(peer)}; both ranks run the same rounds")
    if bursts < 1 or len(mine) % bursts:
        raise ValueError(f"{len(mine)} busy_ping rounds do not split into {bursts} bursts")
    return median_burst([min(a, b) for a, b in zip(mine, peer)], bursts, statistics.median)


def busy_link(link: Link, busy_s: float, nbytes: int) -> Link:
    """``link`` with a message of ``nbytes`` costing what ``busy_ping`` measured for it next to busy compute, and
    other sizes that plus the ping-pong's time per byte (the latency is what is left of ``busy_s`` after the
    bytes, at least 0). The ping-pong's own latency is not a floor: 10 round trips in a row, it once measured
    1.32 ms per message where the 60 busy rounds in 3 bursts measured 0.25 ms, and the run's messages took about
    that (GPipe M = 4 at K = 2, predicted 34 % slow, 2026-11-30)."""
    return Link(max(busy_s - nbytes / link.bandwidth_Bps, 0.0), link.bandwidth_Bps)


def fit_link(times: dict[int, float]) -> Link:
    """Latency and bandwidth from one-way times at two or more sizes: least squares of
    t = latency + bytes / bandwidth (latency clipped at 0; bandwidth from the slope)."""
    if len(times) < 2:
        raise ValueError("fit_link needs times at two or more message sizes")
    xs, ys = list(times), list(times.values())
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    if slope <= 0:
        raise ValueError("message times do not grow with size: measure larger messages")
    return Link(latency_s=max(my - slope * mx, 0.0), bandwidth_Bps=1.0 / slope)


def link_from_times(times: dict[int, float]) -> tuple[Link, bool]:
    """``fit_link``, and whether it fitted. On a loaded machine a wake-up can cost more than the bytes:
    when the times do not grow with size the link is their median per message, whatever its size
    (infinite bandwidth), and the flag is False. A fit whose latency was clipped at 0 (noise made the
    line's intercept negative) takes the smallest message's time as the latency: a message costs at least that."""
    try:
        link = fit_link(times)
    except ValueError:
        return Link(sorted(times.values())[len(times) // 2], float("inf")), False
    if link.latency_s <= 0:
        link = Link(times[min(times)], link.bandwidth_Bps)
    return link, True


# --- the cost model's inputs as run metrics (a run logs them; the report predicts from them) ----

STAGE_FIELDS = ("forward", "backward", "update", "synth", "synth_input", "out_bytes")


def cost_metrics(stages: list[StageCost], link: Link | None = None) -> dict[str, float]:
    """``cost/stage{i}/{field}`` (seconds per batch; bytes) and ``cost/link_latency_s``,
    ``cost/link_bandwidth_Bps``: what ``costs_from_metrics`` reads back."""
    out = {f"cost/stage{i}/{name}": float(getattr(s, name)) for i, s in enumerate(stages) for name in STAGE_FIELDS}
    if link is not None:
        out.update({"cost/link_latency_s": link.latency_s, "cost/link_bandwidth_Bps": link.bandwidth_Bps})
    return out


def costs_from_metrics(metrics: dict, busy: bool = True,
                       blocked: bool = False) -> tuple[list[StageCost], Link | None] | None:
    """Stage costs (and the link, where logged) from a mapping with ``cost_metrics`` keys, optionally
    prefixed ``metric.`` (a report row); None when no stage was logged. ``busy``: messages as they cost
    between workers that compute between messages, where that was measured (``busy_ping``; what every
    schedule's messages cost in a run, see the module doc), else the ping-pong's. ``blocked``: as they cost a
    receiver that waits blocked (``cost/link_blocked_s``, a locked run's worker.round_trip_ping), where measured."""
    def get(key):
        for name in (key, f"metric.{key}"):
            value = metrics.get(name)
            if value is not None and value == value:           # NaN: a column another run filled
                return float(value)
        return None

    stages, i = [], 0
    while get(f"cost/stage{i}/forward") is not None:
        values = {name: get(f"cost/stage{i}/{name}") or 0.0 for name in STAGE_FIELDS}
        values["out_bytes"] = int(values["out_bytes"])
        stages.append(StageCost(**values))
        i += 1
    if not stages:
        return None
    latency, bandwidth = get("cost/link_latency_s"), get("cost/link_bandwidth_Bps")
    link = Link(latency, bandwidth) if latency is not None and bandwidth else None
    busy_s, busy_bytes = get("cost/link_busy_s"), get("cost/link_busy_bytes")
    blocked_s = get("cost/link_blocked_s")
    if link is not None and blocked and blocked_s is not None and busy_bytes is not None:
        link = busy_link(link, blocked_s, int(busy_bytes))  # messages as they cost a receiver waiting blocked
    elif link is not None and busy and busy_s is not None and busy_bytes is not None:
        link = busy_link(link, busy_s, int(busy_bytes))     # messages as they cost next to busy compute
    return stages, link


def split_metrics(split: list[tuple[int, int]]) -> dict[str, float]:
    """``cost/worker{k}/stages_end``: where each worker's stages end (they start where the previous end)."""
    return {f"cost/worker{k}/stages_end": float(hi) for k, (_, hi) in enumerate(split)}


def split_from_metrics(metrics: dict, k: int) -> list[tuple[int, int]] | None:
    """The split ``split_metrics`` logged for ``k`` workers (keys optionally prefixed ``metric.``), else None."""
    ends = []
    for i in range(k):
        value = next((metrics.get(name) for name in (f"cost/worker{i}/stages_end", f"metric.cost/worker{i}/stages_end")
                      if metrics.get(name) is not None), None)
        if value is None or value != value:
            return None
        ends.append(int(value))
    return list(zip([0] + ends[:-1], ends))


def _per_worker(metrics: dict, k: int, name: str) -> list[float] | None:
    """``cost/worker{i}/{name}`` for the ``k`` workers (keys optionally prefixed ``metric.``), each positive, else None."""
    values = []
    for i in range(k):
        value = next((metrics.get(key) for key in (f"cost/worker{i}/{name}", f"metric.cost/worker{i}/{name}")
                      if metrics.get(key) is not None), None)
        if value is None or value != value or value <= 0:
            return None
        values.append(float(value))
    return values


def worker_steps_from_metrics(metrics: dict, k: int) -> list[float] | None:
    """``cost/worker{i}/step_s`` for the ``k`` workers (keys optionally prefixed ``metric.``): each worker's
    decoupled step timed before the run (worker.py ``time_decoupled_step``), else None."""
    return _per_worker(metrics, k, "step_s")


def worker_whole_steps_from_metrics(metrics: dict, k: int) -> list[float] | None:
    """``cost/worker{i}/whole_step_s`` for the ``k`` workers: the method's one-process step timed on every worker
    of a decoupled run at once before the run (worker.py ``time_whole_step``), else None (K = 1, older runs)."""
    return _per_worker(metrics, k, "whole_step_s")


def worker_chunks_from_metrics(metrics: dict, k: int) -> tuple[list[float], list[float]] | None:
    """``cost/worker{i}/chunk_forward_s`` and ``chunk_backward_s`` for the ``k`` workers: each pipelined worker's
    forward and backward of one micro-batch through its stages, timed before the run (worker.py
    ``time_pipeline_chunks``), else None."""
    forward, backward = _per_worker(metrics, k, "chunk_forward_s"), _per_worker(metrics, k, "chunk_backward_s")
    return (forward, backward) if forward and backward else None


def chunk_groups(stages: list[StageCost], split: list[tuple[int, int]], forward: list[float],
                 backward: list[float], microbatches: int) -> list[StageCost]:
    """The stages with each worker's forward and backward scaled so that its group's forward (backward) is
    ``microbatches`` times the micro-batch forward (backward) that worker timed (``worker_chunks_from_metrics``):
    ``step_time``'s per-micro-batch F_k/M is then the timed chunk, at the micro-batch's own size (small
    products run slower per example than the whole batch's) and next to the run's peers. Updates, synthesizers
    and bytes stay as logged."""
    if not len(split) == len(forward) == len(backward):
        raise ValueError(f"{len(forward)}/{len(backward)} worker chunk times for a split into {len(split)} groups")
    out = []
    for (lo, hi), f, b in zip(split, forward, backward):
        group = stages[lo:hi]
        f_sum, b_sum = sum(s.forward for s in group), sum(s.backward for s in group)
        if not (f_sum > 0 and b_sum > 0 and f > 0 and b > 0):
            raise ValueError("scaling a group to its chunks needs positive stage and chunk times")
        out.extend(replace(s, forward=s.forward * microbatches * f / f_sum,
                           backward=s.backward * microbatches * b / b_sum) for s in group)
    return out


def scale_groups(stages: list[StageCost], split: list[tuple[int, int]], steps: list[float]) -> list[StageCost]:
    """The stages with each worker's group scaled by its own factor so that the group's compute equals the
    step that worker measured (``worker_steps_from_metrics``): the stages' proportions inside a group stay,
    and what a whole step adds to them (the fused backward, the boundary synthesizer's second prediction, a
    neighbour's effect on this core) is that worker's own."""
    if len(split) != len(steps):
        raise ValueError(f"{len(steps)} worker steps for a split into {len(split)} groups")
    out = []
    for (lo, hi), step in zip(split, steps):
        total = sum(s.total for s in stages[lo:hi])
        if not total > 0 or not step > 0:
            raise ValueError("scaling a group needs positive stage costs and a positive step time")
        out.extend(scale(stages[lo:hi], step / total))
    return out
