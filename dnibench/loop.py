"""The shared training helpers, low in the package (torch and dnibench.errors only): the device, seeds,
batch order, test error, the learning-rate schedule and divergence checks that the feed-forward loop
(dnibench/train.py), the recurrent loops (dnibench/rnn/train.py) and the parallel workers use alike.
Nothing here imports a suite, a task or a training loop, so any of them can import it."""
from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from .errors import DnibenchError, Diverged

if TYPE_CHECKING:
    from .suite import RunSpec


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DnibenchError(f"--device {name}: CUDA is not available on this machine (torch {torch.__version__})")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Batches:
    """Shuffled mini-batches without replacement, reshuffled every epoch, from a seeded CPU generator."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, device: torch.device):
        self.n, self.batch_size, self.generator, self.device = n, min(batch_size, n), generator, device
        self._order, self._pos = None, n

    def next(self) -> torch.Tensor:
        if self._pos + self.batch_size > self.n:
            self._order = torch.randperm(self.n, generator=self.generator).to(self.device)
            self._pos = 0
        idx = self._order[self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        return idx


@torch.no_grad()
def test_error(stages: torch.nn.ModuleList, x: torch.Tensor, y: torch.Tensor, batch: int = 2000) -> float:
    """Percent of misclassified examples, batch-norm in inference mode."""
    stages.eval()
    wrong = torch.zeros((), dtype=torch.long, device=x.device)
    for start in range(0, x.shape[0], batch):
        h = x[start:start + batch]
        for stage in stages:
            h = stage(h)
        wrong += (h.argmax(1) != y[start:start + batch]).sum()
    stages.train()
    return 100.0 * wrong.item() / x.shape[0]      # .item(): the one sync of an evaluation


def lr_factor(spec: RunSpec, step: int) -> float:
    """The schedule as a multiplier: lr_decay_factor once per decay point passed."""
    return spec.train.lr_decay_factor ** sum(step >= at for at in spec.train.lr_decay_at)


def apply_schedule(optimizers: list[torch.optim.Optimizer], factor: float) -> None:
    """Scale every parameter group's own base rate (a synthesizer's synth_lr, a synthetic input
    model's input_lr, ...) by the schedule's factor; the base rate is the one it was built with."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor


def lr_metrics(roles: dict[str, list[torch.optim.Optimizer]], optimizers: list[torch.optim.Optimizer]) -> dict[str, float]:
    """The learning rate each role's optimizers actually use: ``lr/<role>``, or ``lr/<role><i>`` per
    parameter group where a role's groups differ. Optimizers outside every role count as "other"."""
    named = {id(opt) for opts in roles.values() for opt in opts}
    other = [opt for opt in optimizers if id(opt) not in named]
    row = {}
    for role, opts in {**roles, **({"other": other} if other else {})}.items():
        rates = [group["lr"] for opt in opts for group in opt.param_groups]
        if len(set(rates)) == 1:
            row[f"lr/{role}"] = rates[0]
        else:
            row.update({f"lr/{role}{i + 1}": rate for i, rate in enumerate(rates)})
    return row


class DivergenceWatch:
    """Stops a run whose loss became non-finite. Per step one device-side isfinite over the step's
    metrics (no host sync); at a log point, where the loop syncs anyway, ``check`` raises Diverged
    naming the first step whose metrics were not finite (a diverged run is not a result)."""

    def __init__(self):
        self._flags: list[tuple[int, torch.Tensor]] = []

    def add(self, step: int, metrics: dict[str, torch.Tensor]) -> None:
        if metrics:
            # A sum is non-finite when any of its terms is: one small tensor per step, no sync.
            values = torch.stack([(v if v.dim() == 0 else v.sum()).detach().float() for v in metrics.values()])
            self._flags.append((step, torch.isfinite(values).all()))

    def check(self) -> None:
        flags, self._flags = self._flags, []
        if flags:
            finite = torch.stack([flag for _, flag in flags]).cpu()
            if not bool(finite.all()):
                raise Diverged(flags[int((~finite).nonzero()[0])][0])


class LogWindow:
    """The skeleton the feed-forward loop (dnibench/train.py) and the parallel workers
    (dnibench/parallel/worker.py) share between two log points: the learning-rate schedule applied to the
    optimizers where it changes, device-side running sums of each step's metrics (no host sync per step),
    divergence flags, the training clock (synchronised on CUDA before each read), and at a log point the
    window's averages, step count and seconds."""

    def __init__(self, spec: RunSpec, optimizers: list[torch.optim.Optimizer], device: torch.device):
        self.spec, self.optimizers, self.device = spec, optimizers, device
        self.t0 = 0.0
        self.factor: float | None = None
        self.watch = DivergenceWatch()
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.steps = 0

    def lr(self, step: int) -> float:
        """The learning rate of ``step``; the optimizers' rates change only at a decay point."""
        factor = lr_factor(self.spec, step)
        if factor != self.factor:
            apply_schedule(self.optimizers, factor)
            self.factor = factor
        return self.spec.train.lr * factor

    def add(self, step: int, metrics: dict[str, torch.Tensor]) -> None:
        self.watch.add(step, metrics)
        for key, value in metrics.items():
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
            self.counts[key] = self.counts.get(key, 0) + 1
        self.steps += 1

    def points(self, step: int) -> tuple[bool, bool]:
        """Whether ``step`` ends a log window, and whether it is an evaluation point (always the last step)."""
        cfg = self.spec.train
        is_eval = step % cfg.eval_every == 0 or step == cfg.steps
        return step % cfg.log_every == 0 or is_eval, is_eval

    def start(self) -> None:
        """The training clock starts (again, after a log point's logging and evaluation)."""
        sync(self.device)
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        sync(self.device)
        return time.perf_counter() - self.t0

    def close(self) -> tuple[dict[str, float], int, float]:
        """At a log point: the window's training seconds (the clock stops here), then Diverged for a non-finite
        step, else the window's metric averages (one host sync each) and step count; the next window starts
        empty (its clock at ``start``)."""
        seconds = self.elapsed()
        self.watch.check()
        row = {key: (self.sums[key] / self.counts[key]).item() for key in self.sums}
        steps, self.sums, self.counts, self.steps = self.steps, {}, {}, 0
        return row, steps, seconds
