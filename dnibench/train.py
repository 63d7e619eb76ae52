"""The feed-forward training loop: one run from a RunSpec, metrics out through a callback.

Training code never touches MLflow or plots; it calls ``log(metrics, step)``. Timing is honest:
on CUDA every clock read is preceded by torch.cuda.synchronize(), the training clock excludes
evaluation, and the step itself contains no host sync (metrics stay on the device until a log point).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

import torch

from .conventions import ImageSettings
# The shared helpers live low in the package (dnibench/loop.py); re-exported for existing callers.
from .loop import (Batches, DivergenceWatch, LogWindow, apply_schedule, lr_factor, lr_metrics,  # noqa: F401
                   resolve_device, seed_everything, sync, test_error)
from .methods import Setup
from .models import build_stages, stage_output_shapes
from .tracking import ResourceSampler, RunThreads, StepTimes

if TYPE_CHECKING:      # types only: importing the suite here closed the circle tasks -> train -> suite -> tasks
    from .data import ImageData
    from .suite import RunSpec

LogFn = Callable[[dict[str, float], int], None]


def train_ff(spec: RunSpec, data: ImageData, log: LogFn, on_step: Callable[[int], None] = lambda n: None) -> dict:
    if spec.parallel is not None:        # stages in worker processes (dnibench/parallel/)
        from .parallel import train_parallel
        return train_parallel(spec, data, log, on_step)
    cfg = spec.train
    device = resolve_device(spec.device)
    seed_everything(spec.seed)
    in_shape = tuple(data.x_train.shape[1:])
    conventions = ImageSettings.model_validate(spec.task_args)   # layer count, pooling stride (mnist, cifar10)
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

    train_s = eval_s = 0.0
    final: dict[str, float] = {}
    window = LogWindow(spec, optimizers, device)  # schedule, metric sums, clock, log-point averages (loop.py)
    timer = StepTimes(device)
    with RunThreads() as threads, ResourceSampler(device) as sampler:
        mark = sampler.mark()
        window.start()
        timer.start()
        for step in range(1, cfg.steps + 1):
            lr = window.lr(step)
            idx = batches.next()
            metrics = method.step(x_train[idx], y_train[idx])
            timer.step()                              # CPU only: a clock read, no sync
            window.add(step, metrics)                 # kept for the log point: no kernel, no sync here
            on_step(step)
            is_log, is_eval = window.points(step)
            if is_log:
                row, interval_steps, elapsed = window.close()
                train_s += elapsed
                timer.window(elapsed, interval_steps)
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
                mark = sampler.mark()
                window.start()
                timer.start()
    summary = {"final_test_error": final["test_error"], "final_train_loss": final.get("train_loss", float("nan")),
               "total_wall_s/train": train_s, "total_wall_s/eval": eval_s,
               "mean_samples_per_s": cfg.steps * batches.batch_size / max(train_s, 1e-9)}
    summary.update(sampler.summary())
    summary.update(timer.summary(), cpu_threads=float(threads))
    log(summary, cfg.steps)
    return summary
