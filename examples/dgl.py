"""Decoupled Greedy Learning (DGL; Belilovsky, Eickenberg & Oyallon, "Decoupled Greedy Learning of
CNNs", ICML 2020): a worked example of a variant in one file, named in a suite by its path.

Every stage learns from a loss of its own instead of from the layers above: a small auxiliary
classifier a_i reads the stage's output h_i, and stage i with a_i descends the local loss
    L_i = CE(a_i(h_i), y),   h_i = f_i(h_{i-1}),   h_{i-1} detached,
so no gradient ever crosses from one stage to the one below. The output stage learns from the task
loss on its (detached) input. Like DNI, a stage is update-unlocked: it updates as soon as its own
forward pass is done. Unlike DNI it never learns what the layers above need; it learns features that
its own linear read-out can already classify. On a CIFAR-10 CNN the DGL paper reports test accuracy
close to backprop's and far above DNI's (dnibench/published/jaderberg2016.yaml, `dgl`, as published);
examples/dgl.yaml measures the same comparison on MNIST, against `bprop`, `dni` and `cdni`.

Scope: the stages run one after another on the same batch, the greedy update that DGL distributes
over devices; its pipelined and asynchronous (replay buffer) schedules are not modelled. The
auxiliary classifier is linear by default (``aux_width`` > 0 adds one hidden ReLU layer); conv
features are average-pooled to ``aux_pool`` x ``aux_pool`` first, which keeps it small.
Each stage's optimizer holds the stage and its auxiliary classifier, so a stage with everything it
needs could live in a process of its own. ``p_update`` gates each stage on its own coin.
"""
from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from dnibench.methods import register
from dnibench.methods.base import Method, MethodSettings, task_loss


class DGLSettings(MethodSettings):
    aux_width: int = Field(0, ge=0)        # 0: a linear classifier; else one hidden ReLU layer this wide
    aux_pool: int = Field(2, ge=1)         # conv features: average-pooled to aux_pool x aux_pool


def auxiliary_classifier(shape: tuple[int, ...], num_classes: int, width: int, pool: int) -> nn.Sequential:
    """a_i for a stage whose per-example output has ``shape`` (features, or channels x H x W)."""
    layers: list[nn.Module] = []
    if len(shape) == 3:
        layers.append(nn.AdaptiveAvgPool2d(pool))
        features = shape[0] * pool * pool
    else:
        features = math.prod(shape)
    layers.append(nn.Flatten())
    if width:
        layers += [nn.Linear(features, width), nn.ReLU()]
        features = width
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)


@register
class DecoupledGreedy(Method):
    name = "dgl"
    description = "example: each stage learns from its own auxiliary classifier (Belilovsky et al. 2020)"
    Settings = DGLSettings

    def __init__(self, stages, settings, setup):
        super().__init__(stages, settings, setup)
        self.auxiliary = nn.ModuleList(
            auxiliary_classifier(shape, setup.num_classes, settings.aux_width, settings.aux_pool)
            for shape in setup.stage_shapes[:-1]).to(setup.device)     # the output stage needs none
        # One optimizer per stage, over the stage and its auxiliary classifier (they learn together).
        self.stage_optimizers = [setup.adam([*stage.parameters(), *aux.parameters()])
                                 for stage, aux in zip(stages, self.auxiliary)] + [setup.adam(stages[-1].parameters())]

    def step(self, x, y):
        coins = self.coins()
        metrics: dict[str, torch.Tensor] = {}
        top = len(self.stages) - 1
        h = x
        for i, stage in enumerate(self.stages):
            learns = coins[i]
            with torch.set_grad_enabled(learns):
                h_out = stage(h.detach())          # detached: no gradient reaches the stage below
                if i == top:
                    loss = task_loss(h_out, y)
                    metrics["train_loss"] = loss.detach()
                else:
                    loss = task_loss(self.auxiliary[i](h_out), y)
                    metrics[f"aux_loss/h{i + 1}"] = loss.detach()
            if learns:
                loss.backward()
                self.apply_update(i)
            h = h_out.detach()
        return metrics
