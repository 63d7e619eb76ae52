"""Backprop (Bprop): every stage is update-locked behind the whole network's forward and backward.

With p_update < 1 a stage's gradient exists only if every stage above it also ran its backward pass
in this step (paper §3.2), so stage i updates with probability p_update^(N-i).
"""
from __future__ import annotations

import torch

from . import register
from .base import Method, task_loss


@register
class Backprop(Method):
    name = "bprop"
    description = "end-to-end backpropagation (update-locked)"
    supports_fused_step = True               # p_update = 1: one optimizer over every stage

    def step(self, x, y):
        coins = self.coins()
        # The lowest stage that receives a gradient: the chain of backward passes stops at the
        # first stage (from the top) whose coin says no.
        lowest = len(coins)
        while lowest > 0 and coins[lowest - 1]:
            lowest -= 1
        h, stages = x, list(self.stages)    # a list: slicing the ModuleList builds a new Module (~15 us)
        with torch.no_grad():               # stages below `lowest` get no gradient this step
            for stage in stages[:lowest]:
                h = stage(h)
        for stage in stages[lowest:]:
            h = stage(h)
        loss = task_loss(h, y)
        if lowest < len(coins):
            loss.backward()
            if self.fused:
                self.apply_all_updates()
            else:
                for i in range(lowest, len(coins)):
                    self.apply_update(i)
        return {"train_loss": loss.detach()}
