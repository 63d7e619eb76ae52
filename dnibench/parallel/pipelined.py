"""Pipelined backprop: one rank's stage group driven by ``torch.distributed.pipelining``.

The standard engineering answer to update locking (issue 10): split the batch into M micro-batches
and pipeline them through the K stage groups with GPipe (all forwards, then all backwards) or 1F1B
(one forward, one backward in the steady state). It still waits for true gradients, so it pays the
pipeline bubble (K-1)/(M+K-1) per step; the decoupled executor is compared against it.

Transport is whatever process group the caller initialised (gloo on CPU in the tests and suites).
PyTorch's own ``PipelineStage`` / ``ScheduleGPipe`` / ``Schedule1F1B`` run the schedule; this module
only fixes the things the library leaves to its user:

- **The loss scale.** The library calls ``loss_fn`` once per micro-batch and, with its default
  ``scale_grads=True``, divides the summed gradients by M, which is the full-batch gradient only
  when the loss is a per-micro-batch mean and every micro-batch has the same size. Here the
  per-micro-batch loss is ``sum of cross-entropies / whole batch size`` and ``scale_grads=False``,
  so the summed micro-batch gradients are exactly the gradient of the batch-mean cross-entropy
  (``dnibench.methods.base.task_loss``) and the summed losses are the batch-mean loss.
- **Static shapes.** Without example shapes the library infers them at the first step by running
  the stage's forward on the first micro-batch (on stages > 0, on uninitialised tensors): with
  BatchNorm in train mode that forward would move the running statistics once more than training
  does. The shapes are therefore given up front (``in_shape``; the output shape is found once by
  an eval-mode forward, which leaves BatchNorm's buffers alone), so the library runs in its static
  mode and never touches the module outside the schedule. In static mode the examples'
  ``requires_grad`` is what tells the library which gradients travel: without it on the output
  example no stage receives a gradient from above (its backward fails with "grad can be implicitly
  created only for scalar outputs").

The library works on gloo and CPU in torch 2.13 (tests/test_pipelined.py runs it in two processes);
1F1B needs at least as many micro-batches as workers (the library's check), GPipe any M >= 1.

**Departure from one-process bprop (BatchNorm).** The paper's FCN and CNN have BatchNorm. With M > 1
micro-batches each BatchNorm normalises over B/M examples, not B, and updates its running
statistics M times per step. The gradient is then the sum of the micro-batch gradients, which equals
one process doing the same micro-batch gradient accumulation (what tests/test_pipelined.py checks),
not a whole-batch bprop step. With M = 1 (or a network without BatchNorm) it is exactly bprop.

**Yielding to gloo after a send.** A send that the library posts after a chunk is pushed out by gloo's own
thread, which on a core busy with the next chunk waits for that chunk's time slice: on this 2-core machine a
stream of 32 KB micro-batch messages, each after 0.6 ms of compute, reached the waiting receiver 0.57-0.77 ms
late on average, and 0.21-0.25 ms late when the sender slept 20 us after posting each send (sched_yield did not
help; two processes, one sending 8 messages each after its compute, the other waiting for each, 2026-11-30). So under GPipe a rank that posted a
send after its last chunk sleeps ``send_yield_s`` (20 us) before its next chunk; the sleep is waiting time, not busy.
GPipe M = 8 at K = 2 (FCN-6, batch 256): 10 839-12 066 samples/s without, 13 667-14 597 with, three interleaved pairs;
M = 4 moved by 0.96-1.18x in five pairs (median 0.98x). 1F1B is left alone: it waits on each send at once, batched
with the next receive, so its core is free for gloo then anyway (two pairs with the sleep: 0.95x and 0.85x).

**A stand-in pipeline** (``time_stand_in``) runs the same schedule through stages of known compute: what a step takes
beyond its chunks is then the library's and its messages', the cost model's measure of a pipeline's message
(cost.pipeline_message).

``step`` returns only after the schedule finished: the library waits on every send and receive it
posted before ``step`` returns, so no pipelining communication is outstanding between steps.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .cost import busy_compute

SCHEDULES = ("gpipe", "1f1b")
SEND_YIELD_S = 20e-6     # GPipe: a rank's sleep after posting a send, before its next chunk (module doc)


def batch_mean_microbatch_loss(batch_size: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """One micro-batch's share of the batch-mean cross-entropy (see the module doc): the sum over
    micro-batches of these is ``task_loss`` on the whole batch, for any split."""
    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, reduction="sum") / batch_size
    return loss


@torch.no_grad()
def _output_shape(module: nn.Module, in_shape: tuple[int, ...], dtype: torch.dtype,
                  device: torch.device) -> tuple[int, ...]:
    # eval(): BatchNorm uses (and does not update) its running statistics, so this probe changes nothing
    was_training = module.training
    module.eval()
    try:
        out = module(torch.zeros(2, *in_shape, dtype=dtype, device=device))
    finally:
        module.train(was_training)
    return tuple(out.shape[1:])


class PipelinedBprop:
    """This rank's part of a K-rank pipelined bprop step (see the module doc).

    ``module``: this rank's contiguous stage group (rank r holds pipeline stage r of ``world``);
    ``in_shape``: per-example shape of its input (the data on rank 0, the activation below otherwise);
    ``optimizer``: over ``module``'s parameters; the loss of a micro-batch is its share of the
    batch-mean cross-entropy (``batch_mean_microbatch_loss``); ``group``: the process group
    (default: the world group) in which ``rank`` is this rank's group rank.
    """

    def __init__(self, module: nn.Module, rank: int, world: int, microbatches: int, batch_size: int,
                 in_shape: tuple[int, ...], optimizer: torch.optim.Optimizer,
                 device: torch.device | str = "cpu", group=None, schedule: str = "gpipe",
                 dtype: torch.dtype = torch.float32, send_yield_s: float = SEND_YIELD_S):
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        if schedule not in SCHEDULES:
            raise ValueError(f"schedule {schedule!r}: expected one of {', '.join(SCHEDULES)}")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} out of range for {world} workers")
        if microbatches < 1 or batch_size % microbatches:
            raise ValueError(f"batch size {batch_size} does not split into {microbatches} equal micro-batches")
        if schedule == "1f1b" and microbatches < world:
            # the library's 1F1B warm-up needs a micro-batch per stage in flight
            raise ValueError(f"1f1b needs at least as many micro-batches as workers "
                             f"({microbatches} < {world}); use gpipe")
        if torch.device(device).type == "cuda" and world > 1 and dist.get_backend(group) == "gloo":
            # Found on the first GPU run: the library hands gloo the CUDA tensors themselves ("writev: Bad
            # address"); it needs NCCL, i.e. one GPU per worker, which the executor does not set up yet.
            from ..errors import DnibenchError
            raise DnibenchError("schedule pipelined on CUDA needs NCCL and one GPU per worker; the executor's "
                                "gloo transport carries only host tensors (run it with --device cpu)")
        self.rank, self.world, self.microbatches, self.batch_size = rank, world, microbatches, batch_size
        self.device = torch.device(device)
        self.module, self.optimizer = module, optimizer
        self.timings: dict[str, float] = {"busy": 0.0, "wait": 0.0}
        mb = batch_size // microbatches
        out_shape = _output_shape(module, tuple(in_shape), dtype, self.device)
        self.stage = PipelineStage(
            module, rank, world, self.device,
            # requires_grad in the examples is what tells the library which gradients travel: the
            # output's gradient comes down to every stage but the last, the input's goes down from
            # every stage but the first (the data needs none)
            input_args=torch.empty(mb, *in_shape, dtype=dtype, device=self.device).requires_grad_(rank > 0),
            output_args=torch.empty(mb, *out_shape, dtype=dtype, device=self.device).requires_grad_(True),
            group=group)
        self._loss_fn = batch_mean_microbatch_loss(batch_size)
        cls = ScheduleGPipe if schedule == "gpipe" else Schedule1F1B
        # every rank gets the loss: the library runs backward only where a loss_fn is set, and calls
        # it on the last stage only
        self.schedule = cls(self.stage, microbatches, loss_fn=self._loss, scale_grads=False)
        self._busy = 0.0
        # 1F1B waits right after each send (it is batched with the next receive): its core is free anyway
        self.send_yield_s = send_yield_s if schedule == "gpipe" else 0.0
        self._sent = False                   # the last chunk posted a send (module doc: yielding to gloo)
        self._wrap_compute()

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = self._loss_fn(logits, y)
        self._busy += time.perf_counter() - start
        return out

    def _wrap_compute(self) -> None:
        # The library exposes no timings: wrap the stage's two compute entry points on this instance
        # so "busy" is forward + backward compute; everything else in a step (receives, waits on
        # sends, the bubble) is "wait".
        # after a forward chunk every rank but the last sends its activation up, after a backward chunk every
        # rank but the first sends its input's gradient down
        stage = self.stage
        sends = {"forward_one_chunk": self.rank < self.world - 1, "backward_one_chunk": self.rank > 0}
        for name in ("forward_one_chunk", "backward_one_chunk"):
            inner = getattr(stage, name)

            def timed(*args, _inner=inner, _sends=sends[name], **kwargs):
                if self._sent and self.send_yield_s:
                    time.sleep(self.send_yield_s)      # gloo's thread pushes the send posted after the last chunk
                self._sent = _sends
                start = time.perf_counter()
                try:
                    return _inner(*args, **kwargs)
                finally:
                    self._busy += time.perf_counter() - start
            setattr(stage, name, timed)

    def step(self, x: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor | None:
        """One training step on the whole batch: ``x`` on rank 0 (None elsewhere), ``y`` on the last
        rank (None elsewhere). Zeroes the gradients, runs the schedule, steps the optimizer; returns
        the batch-mean loss (detached) on the last rank, None elsewhere."""
        first, last = self.rank == 0, self.rank == self.world - 1
        if first and (x is None or x.shape[0] != self.batch_size):
            raise ValueError(f"rank 0 needs the batch x of {self.batch_size} examples")
        if last and (y is None or y.shape[0] != self.batch_size):
            raise ValueError(f"the last rank needs the labels y of {self.batch_size} examples")
        start = time.perf_counter()
        self._busy = 0.0
        self._sent = False
        self.optimizer.zero_grad(set_to_none=True)
        losses: list[torch.Tensor] | None = [] if last else None
        args = (x.to(self.device),) if first else ()
        target = y.to(self.device) if last else None
        self.schedule.step(*args, target=target, losses=losses, return_outputs=False)
        opt_start = time.perf_counter()
        self.optimizer.step()
        end = time.perf_counter()
        busy = self._busy + (end - opt_start)
        self.timings["busy"] += busy
        self.timings["wait"] += (end - start) - busy
        if last:
            return torch.stack([loss.detach() for loss in losses]).sum()
        return None


# --- a stand-in pipeline: what a message costs in the library's own schedule (the cost model's input) ----------------

class _StandInChunk(torch.autograd.Function):
    """``x * scale`` with ``work_s`` of compute (cost.busy_compute, this thread) in the forward and again in the
    backward: a stage whose time is known and whose activation and gradient have the run's shape."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor, work_s: float) -> torch.Tensor:
        busy_compute(work_s)
        ctx.save_for_backward(x, scale)
        ctx.work_s = work_s
        return x * scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        busy_compute(ctx.work_s)
        x, scale = ctx.saved_tensors
        return grad * scale, (grad * x).sum().reshape(1), None


class StandInStage(nn.Module):
    """One worker's stand-in stage group (``time_stand_in``): ``work_s`` per chunk forward and backward, the input
    passed on scaled by one parameter (the last worker's output goes to the loss as it is: its features are the
    classes)."""

    def __init__(self, work_s: float):
        super().__init__()
        self.work_s = work_s
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _StandInChunk.apply(x, self.scale, self.work_s)


def time_stand_in(rank: int, world: int, schedule: str, microbatches: int, batch_size: int, nbytes: int,
                  work_s: float, steps: int, warmup: int = 3, group=None) -> list[float]:
    """Seconds of each of ``steps`` steps (after ``warmup``) of a pipelined bprop step through ``world`` stand-in
    stages (``StandInStage``: ``work_s`` per chunk each way), micro-batch messages of ``nbytes`` between them (float32,
    rounded down to whole floats per example, at least one), in ``group`` (every rank in it calls this at once; ``rank``
    is this rank's group rank). The library's schedule, its bookkeeping and its messages are the run's; only the
    compute is a stand-in of known length, so what a step takes beyond its chunks is the schedule's own (one worker) or
    its messages' (several): cost.pipeline_message solves it."""
    features = max(nbytes // (4 * (batch_size // microbatches)), 1)
    module = StandInStage(work_s)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.0)     # the inputs are zeros: so is the scale's gradient
    pipe = PipelinedBprop(module, rank, world, microbatches, batch_size, (features,), optimizer, group=group,
                          schedule=schedule)
    x = torch.zeros(batch_size, features) if rank == 0 else None
    y = torch.zeros(batch_size, dtype=torch.long) if rank == world - 1 else None
    seconds = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        pipe.step(x, y)
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
    return seconds
