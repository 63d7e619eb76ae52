"""The feed-forward training loop: one run from a RunSpec, metrics out through a callback.

Training code never touches MLflow or plots; it calls ``log(metrics, step)``. Timing is honest:
on CUDA every clock read is preceded by torch.cuda.synchronize(), the training clock excludes
evaluation, and the step itself contains no host sync (metrics stay on the device until a log point).
"""
from __future__ import annotations

import random
import time
from typing import Callable

import numpy as np
import torch

from .data import ImageData
from .errors import Diverged
from .methods import Setup
from .models import build_stages, stage_output_shapes
from .suite import RunSpec
from .tasks import get_task
from .tracking import ResourceSampler, RunThreads, StepTimes

LogFn = Callable[[dict[str, float], int], None]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        from .errors import DnibenchError
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


def train_ff(spec: RunSpec, data: ImageData, log: LogFn, on_step: Callable[[int], None] = lambda n: None) -> dict:
    cfg = spec.train
    device = resolve_device(spec.device)
    seed_everything(spec.seed)
    in_shape = tuple(data.x_train.shape[1:])
    conventions = get_task(spec.task).Settings.model_validate(spec.task_args)   # layer count, pooling stride
    stages = build_stages(spec.model, in_shape, data.num_classes, cfg.cnn_filters,
                          conventions.layer_count, conventions.pool_stride).to(device)
    method_cls = spec.method_class()      # a method file is loaded (once) in this process too
    setup = Setup(num_classes=data.num_classes, in_shape=in_shape,
                  stage_shapes=stage_output_shapes(stages, in_shape), lr=cfg.lr, device=device,
                  generator=torch.Generator().manual_seed(10_000 + spec.seed))
    method = method_cls(stages, method_cls.Settings.model_validate(spec.method_args), setup)
    optimizers = method.optimizers()

    n_train = min(cfg.train_subset or len(data.y_train), len(data.y_train))
    n_test = min(cfg.test_subset or len(data.y_test), len(data.y_test))
    x_train, y_train = data.x_train[:n_train].to(device), data.y_train[:n_train].to(device)
    x_test, y_test = data.x_test[:n_test].to(device), data.y_test[:n_test].to(device)
    batches = Batches(n_train, cfg.batch_size, torch.Generator().manual_seed(spec.seed), device)

    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    train_s = eval_s = 0.0
    final: dict[str, float] = {}
    current_factor = None
    watch = DivergenceWatch()
    timer = StepTimes(device)
    with RunThreads() as threads, ResourceSampler(device) as sampler:
        mark, interval_steps = sampler.mark(), 0
        sync(device)
        t0 = time.perf_counter()
        timer.start()
        for step in range(1, cfg.steps + 1):
            factor = lr_factor(spec, step)
            if factor != current_factor:             # the optimizers' rates change only at a decay point
                apply_schedule(optimizers, factor)
                current_factor = factor
            lr = cfg.lr * factor
            idx = batches.next()
            metrics = method.step(x_train[idx], y_train[idx])
            timer.step()                              # CPU only: a clock read, no sync
            watch.add(step, metrics)
            for key, value in metrics.items():        # device-side running sums: no sync here
                sums[key] = sums[key] + value if key in sums else value.clone()
                counts[key] = counts.get(key, 0) + 1
            interval_steps += 1
            on_step(step)
            is_eval = step % cfg.eval_every == 0 or step == cfg.steps
            if step % cfg.log_every == 0 or is_eval:
                sync(device)
                elapsed = time.perf_counter() - t0
                train_s += elapsed
                timer.window(elapsed, interval_steps)
                watch.check()
                row = {key: (sums[key] / counts[key]).item() for key in sums}
                row["samples_per_s"] = interval_steps * batches.batch_size / max(elapsed, 1e-9)
                row["cpu_threads"] = float(threads)
                row["wall_s/train"] = train_s
                row["lr"] = lr
                row.update(lr_metrics(method.optimizer_roles(), optimizers))
                row.update(sampler.since(mark))
                row.update({f"updates/stage{i + 1}": float(n) for i, n in enumerate(method.update_counts)})
                if is_eval:
                    e0 = time.perf_counter()
                    row["test_error"] = test_error(stages, x_test, y_test)
                    eval_s += time.perf_counter() - e0
                    row["wall_s/eval"] = eval_s
                    final = dict(row)
                log(row, step)
                sums, counts, interval_steps, mark = {}, {}, 0, sampler.mark()
                sync(device)
                t0 = time.perf_counter()
                timer.start()
    summary = {"final_test_error": final["test_error"], "final_train_loss": final.get("train_loss", float("nan")),
               "total_wall_s/train": train_s, "total_wall_s/eval": eval_s,
               "mean_samples_per_s": cfg.steps * batches.batch_size / max(train_s, 1e-9)}
    summary.update(sampler.summary())
    summary.update(timer.summary(), cpu_threads=float(threads))
    log(summary, cfg.steps)
    return summary
