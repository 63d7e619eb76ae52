"""No Bprop (Table 1, first column): only the output stage learns; the stages below keep their
random initialisation (batch-norm statistics still track the data). It is the floor that shows
DNI really teaches the lower layers."""
from __future__ import annotations

import torch

from . import register
from .base import Method, task_loss


@register
class NoBackprop(Method):
    name = "nobprop"
    description = "only the last layer learns (lower layers stay random)"

    def step(self, x, y):
        learns = self.coins()[-1]                # p_update gates the one stage that learns
        with torch.no_grad():
            h = x
            for stage in list(self.stages)[:-1]:   # a list: slicing the ModuleList builds a new Module
                h = stage(h)
        with torch.set_grad_enabled(learns):
            loss = task_loss(self.stages[-1](h), y)
        if learns:
            loss.backward()
            self.apply_update(len(self.stages) - 1)
        return {"train_loss": loss.detach()}
