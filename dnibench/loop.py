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
    """Stops a run whose loss became non-finite. Per step it only keeps the step's metric tensors (no kernel, no
    host sync); at a log point, where the loop syncs anyway, ``check`` raises Diverged naming the first step whose
    metrics were not finite (a diverged run is not a result). One isfinite over the whole window instead of four
    small kernels per step: the per-step ones cost a parallel worker 0.1-0.15 ms of a 10 ms step."""

    def __init__(self):
        self._steps: list[tuple[int, list[torch.Tensor]]] = []

    def add(self, step: int, metrics: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Keep the step's metrics, detached (no graph kept till the check), a tensor (an RNN window's losses) by its
        sum: non-finite when any term is. Returns what it kept, in ``metrics``' order."""
        kept = [v.detach() if v.dim() == 0 else v.detach().sum() for v in metrics.values()]
        if kept:
            self._steps.append((step, kept))
        return kept

    def finite(self) -> tuple[list[int], torch.Tensor] | None:
        """The window's flags, device-side (no sync), and the window is cleared: per metric value since the last
        check its step and whether it is finite; None for an empty window."""
        steps, self._steps = self._steps, []
        if not steps:
            return None
        owners = [step for step, values in steps for _ in values]
        values = torch.stack([v.float() for _, vs in steps for v in vs])
        return owners, torch.isfinite(values)

    def check(self, finite: tuple[list[int], torch.Tensor] | None = None) -> None:
        """Raise Diverged for the first step with a non-finite metric: of ``finite`` (a window's ``finite()``, taken
        earlier), else of the steps added since the last check."""
        owners, flags = finite if finite is not None else (self.finite() or (None, None))
        if flags is not None:
            flags = flags.cpu()
            if not bool(flags.all()):
                raise Diverged(owners[int((~flags).nonzero()[0])])


class LogWindow:
    """The skeleton the feed-forward loop (dnibench/train.py) and the parallel workers
    (dnibench/parallel/worker.py) share between two log points: the learning-rate schedule applied to the
    optimizers where it changes, each step's metric tensors kept as they are (no kernel, no host sync per step)
    and reduced on the device at the log point with the divergence flags, the training clock (synchronised on CUDA
    before each read), and at a log point the window's averages, step count and seconds."""

    def __init__(self, spec: RunSpec, optimizers: list[torch.optim.Optimizer], device: torch.device):
        self.spec, self.optimizers, self.device = spec, optimizers, device
        self.t0 = 0.0
        self.factor: float | None = None
        self.watch = DivergenceWatch()
        self.values: dict[str, list[torch.Tensor]] = {}     # per metric, the window's step values (no kernel per step)
        self.steps = 0

    def lr(self, step: int) -> float:
        """The learning rate of ``step``; the optimizers' rates change only at a decay point."""
        factor = lr_factor(self.spec, step)
        if factor != self.factor:
            apply_schedule(self.optimizers, factor)
            self.factor = factor
        return self.spec.train.lr * factor

    def add(self, step: int, metrics: dict[str, torch.Tensor]) -> None:
        for key, value in zip(metrics, self.watch.add(step, metrics)):   # detached once, for both
            self.values.setdefault(key, []).append(value)
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
        """At a log point: the window's metric means and divergence flags reduced on the device, then its training
        seconds (the clock stops here: the reductions are the window's work), then Diverged for a non-finite step,
        else the means (one host sync each) and the step count; the next window starts empty (its clock at
        ``start``)."""
        means = {key: torch.stack(values).sum() / len(values) for key, values in self.values.items()}
        finite = self.watch.finite()
        seconds = self.elapsed()
        steps, self.values, self.steps = self.steps, {}, 0
        self.watch.check(finite)
        return {key: mean.item() for key, mean in means.items()}, steps, seconds
