"""DNI: a synthetic gradient between every pair of stages, bootstrapped targets (paper §3.1).

One step, stage by stage from the bottom (this is what each stage would do in its own process):
  1. h_i = f_i(h_{i-1})                                 forward with the input received from below
  2. inject  delta_hat_i = M_{i+1}(h_i, c)  into h_i       (the top stage uses the true loss gradient)
     and update theta_i at once                          -- stage i is update-unlocked
  3. the gradient that reached h_{i-1} is  delta_hat_i * dh_i/dh_{i-1}:  the bootstrapped target for M_i
With p_update < 1 each stage does 2-3 on its own coin; M_i learns only when stage i ran its backward.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ..dni import BackwardInterface, Synthesizer, one_hot
from . import register
from .base import Method, MethodSettings, task_loss


class DNISettings(MethodSettings):
    synth_hidden_layers: int = Field(2, ge=0, le=2)      # paper: FCN DNI 2x1024 hidden, cDNI linear
    synth_width: int = Field(1024, ge=1)
    synth_loss_weight: float = Field(1.0, gt=0)          # task : synthesizer loss weighted 1:1
    synth_reduction: Literal["mean", "sum"] = "mean"     # over the batch; features are always summed
    synth_lr: float | None = Field(None, gt=0)           # default: the run's lr


@register
class DNI(Method):
    name = "dni"
    description = "synthetic gradients between every layer, bootstrapped targets"
    Settings = DNISettings
    conditioned = False                                  # cDNI: synthesizers also see the label

    def __init__(self, stages, settings, setup):
        super().__init__(stages, settings, setup)
        context_dim = setup.num_classes if self.conditioned else 0
        self.interfaces: list[BackwardInterface] = []
        self.synth_optimizers = []
        for shape in setup.stage_shapes[:-1]:             # one interface on every h_i below the output
            synth = Synthesizer(shape, settings.synth_hidden_layers, settings.synth_width, context_dim).to(setup.device)
            opt = torch.optim.Adam(synth.parameters(), lr=settings.synth_lr or setup.lr)
            self.synth_optimizers.append(opt)
            self.interfaces.append(BackwardInterface(synth, opt, settings.synth_loss_weight, settings.synth_reduction))

    @property
    def synthesizers(self):
        return [iface.synthesizer for iface in self.interfaces]

    def optimizers(self):
        return self.stage_optimizers + self.synth_optimizers

    def train(self, mode: bool = True) -> None:
        for synth in self.synthesizers:
            synth.train(mode)

    def step(self, x, y):
        coins = self.coins()
        context = one_hot(y, self.setup.num_classes) if self.conditioned else None
        metrics: dict[str, torch.Tensor] = {}
        top = len(self.stages) - 1
        h = x
        for i, stage in enumerate(self.stages):
            learns = coins[i]
            # The input arrives detached: no gradient ever flows to the stage below through it.
            # It needs a gradient only to produce the target for the interface below (M_i).
            h_in = h.detach().requires_grad_(learns and i > 0)
            with torch.set_grad_enabled(learns):
                h_out = stage(h_in)
            if i == top:
                loss = task_loss(h_out, y)
                metrics["train_loss"] = loss.detach()
                if learns:
                    loss.backward()
            else:
                synthetic_gradient = self.interfaces[i].send(h_out, context)
                if learns:
                    h_out.backward(synthetic_gradient)
            if learns:
                self.apply_update(i)
                if i > 0:                                  # bootstrapped (or, at the top, true) target for M_i
                    metrics[f"synth_loss/h{i}"] = self.interfaces[i - 1].receive(h_in.grad)
            h = h_out.detach()
        return metrics
