"""Two CPU traps that make a wall-clock lie (issue 9, §1), measured as ratios in this session:

- contention: a quick FCN-4 cDNI step (batch 256) alone and next to a busy process (a second Python
  process multiplying matrices non-stop), the step and the neighbour both with 1, then both with 2
  threads. OpenMP threads that share a core with another process wait for each other at every barrier.
- late training: the same step on a state from late training (a few hundred steps at the quick lr on a
  learnable synthetic task) against a fresh one, the subnormal floats counted in parameters, gradients
  and Adam's state, and the cost of subnormal operands with and without torch.set_flush_denormal.

"Alone" means without our neighbour, not on an idle machine: the load average is recorded with each row."""
import os
import statistics
import subprocess
import sys
import time

import pytest
import torch

from dnibench.methods import Setup, get_method
from dnibench.models import build_stages, stage_output_shapes

IN_SHAPE, CLASSES, BATCH, QUICK_LR = (1, 28, 28), 10, 256, 3e-4
BUSY = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
a = torch.randn(512, 512)
print("ready", flush=True)
while True:
    a @ a
"""


def cdni(seed=0):
    torch.manual_seed(seed)
    stages = build_stages("fcn4", IN_SHAPE, CLASSES)
    cls = get_method("cdni")
    return cls(stages, cls.Settings(), Setup(CLASSES, IN_SHAPE, stage_output_shapes(stages, IN_SHAPE), QUICK_LR,
                                             torch.device("cpu")))


def teacher_batches(n_batches, seed=1):
    """A learnable task: labels of a fixed random linear teacher, so training drives the loss (and the
    gradients) down as it would on real data."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(IN_SHAPE[1] * IN_SHAPE[2], CLASSES, generator=g)
    for _ in range(n_batches):
        x = torch.rand(BATCH, *IN_SHAPE, generator=g)
        yield x, (x.flatten(1) @ teacher).argmax(1)


def step_times(method, x, y, n):
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        method.step(x, y)
        out.append(time.perf_counter() - t0)
    return out


class Busy:
    """A second process spinning a matmul on ``threads`` threads, until the block ends."""

    def __init__(self, threads):
        self.threads = threads

    def __enter__(self):
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
        self.proc = subprocess.Popen([sys.executable, "-c", BUSY, str(self.threads)], stdout=subprocess.PIPE,
                                     env=env, text=True)
        assert self.proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)                              # let it reach its loop
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


@pytest.mark.parametrize("threads", [1, 2])
def test_contention(benchmark, record, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        method = cdni()
        x, y = next(teacher_batches(1))
        step_times(method, x, y, 10)                 # warm-up
        result = {}

        def measure():
            alone = step_times(method, x, y, 40)
            with Busy(threads):
                contended = step_times(method, x, y, 40)
            after = step_times(method, x, y, 40)     # alone again: the machine's own drift, both sides
            result.update(alone=statistics.median(alone + after), contended=statistics.median(contended))
        benchmark.pedantic(measure, rounds=1, iterations=1)
    finally:
        torch.set_num_threads(before)
    ratio = result["contended"] / result["alone"]
    benchmark.extra_info.update(alone_ms=1e3 * result["alone"], contended_ms=1e3 * result["contended"], ratio=ratio)
    record(case=f"fcn4 cdni batch {BATCH}: {threads} thread(s), neighbour {threads} thread(s)",
           alone_ms=1e3 * result["alone"], contended_ms=1e3 * result["contended"], contended_vs_alone=ratio,
           load_avg_1m=os.getloadavg()[0], cores=len(os.sched_getaffinity(0)))


def subnormals(tensors) -> int:
    return sum(int(((t != 0) & (t.abs() < torch.finfo(t.dtype).tiny)).sum())
               for t in tensors if t is not None and t.is_floating_point())


def every_tensor(method):
    for model in [*method.stages, *method.synthesizers]:
        for p in model.parameters():
            yield p
            yield p.grad
    for opt in method.optimizers():
        for state in opt.state.values():
            yield from (v for v in state.values() if torch.is_tensor(v))


def test_late_training(benchmark, record):
    late, fresh = cdni(), cdni()
    batches = list(teacher_batches(400))
    for x, y in batches:                             # "late": 400 steps at the quick lr
        metrics = late.step(x, y)
    late_loss = float(metrics["train_loss"])
    x, y = batches[-1]
    counted = subnormals(every_tensor(late))
    result = {}

    def measure():
        t_late, t_fresh, t_flush = [], [], []
        for _ in range(30):                          # interleaved: late, fresh, late with flush-to-zero
            t_late += step_times(late, x, y, 1)
            t_fresh += step_times(fresh, x, y, 1)
            torch.set_flush_denormal(True)
            t_flush += step_times(late, x, y, 1)
            torch.set_flush_denormal(False)
        result.update(late=statistics.median(t_late), fresh=statistics.median(t_fresh),
                      flush=statistics.median(t_flush))
    benchmark.pedantic(measure, rounds=1, iterations=1)
    # The trap itself: a matmul whose products are subnormal (as with a subnormal Adam state or
    # activation), against the same matmul on normal values, and with flush-to-zero.
    tiny, normal, ones = torch.full((256, 256), 1e-39), torch.full((256, 256), 1e-3), torch.ones(256, 256)
    slow = statistics.median(_time(lambda: tiny @ ones) for _ in range(9))
    fast = statistics.median(_time(lambda: normal @ ones) for _ in range(9))
    torch.set_flush_denormal(True)
    flushed = statistics.median(_time(lambda: tiny @ ones) for _ in range(9))
    torch.set_flush_denormal(False)
    elementwise = statistics.median(_time(lambda: tiny * 0.5) for _ in range(9)) / \
        statistics.median(_time(lambda: normal * 0.5) for _ in range(9))
    benchmark.extra_info.update(subnormals=counted, late_vs_fresh=result["late"] / result["fresh"])
    record(case=f"fcn4 cdni batch {BATCH}, after 400 steps at lr {QUICK_LR:g} (train loss {late_loss:.3f})",
           subnormal_values=counted, late_vs_fresh=result["late"] / result["fresh"],
           flush_vs_not=result["flush"] / result["late"], load_avg_1m=os.getloadavg()[0])
    record(case="matmul 256x256 with subnormal products", subnormal_vs_normal=slow / fast,
           flushed_vs_normal=flushed / fast, load_avg_1m=os.getloadavg()[0])
    record(case="elementwise x 0.5 on 256x256 subnormals", subnormal_vs_normal=elementwise,
           load_avg_1m=os.getloadavg()[0])
    assert late_loss < 2.0                           # it did train: the state is a late one


def _time(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
