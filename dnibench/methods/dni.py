"""DNI: a synthetic gradient between every pair of stages, bootstrapped targets (paper §3.1).

One step, stage by stage from the bottom (this is what each stage would do in its own process):
  1. h_i = f_i(h_{i-1})                                 forward with the input received from below
  2. inject  delta_hat_i = M_{i+1}(h_i, c)  into h_i       (the top stage uses the true loss gradient)
     and update theta_i at once                          -- stage i is update-unlocked
  3. the gradient that reached h_{i-1} is  delta_hat_i * dh_i/dh_{i-1}:  the bootstrapped target for M_i
With p_update < 1 each stage does 2-3 on its own coin; M_i learns only when stage i ran its backward.

Update delay (beyond the paper): with ``delay = k > 0`` the gradient injected in step 2 comes from a
copy of M_{i+1} holding the parameters M_{i+1} had at the start of step t - k (the initial ones
while t <= k); M_{i+1} itself keeps regressing on fresh targets with its current parameters.
"Staleness" is therefore of the synthesizer's *parameters*, applied to the current h_i: this is
what a stage sees when its synthesizer is trained elsewhere and its parameters reach the stage k
steps late. A queue of old *predictions* would instead pair a gradient with a different batch.
Memory grows with k: k+1 copies of every synthesizer's state are kept.
"""
from __future__ import annotations

import copy
from collections import deque
from typing import Literal

import torch
from pydantic import Field, StrictInt, model_validator
from torch import nn

from ..dni import BackwardInterface, Synthesizer, one_hot
from ..fields import Real
from . import register
from .base import Method, MethodSettings, require_hidden_layers_for_width
from .units import StageGroup


class DNISettings(MethodSettings):
    synth_hidden_layers: StrictInt = Field(2, ge=0, le=2)  # paper: FCN DNI 2x1024 hidden, cDNI linear
    synth_width: StrictInt = Field(1024, ge=1, le=16_384)   # fully connected synthesizers only: conv ones keep
                                                             # the stage's channels (the paper's CNN synthesizers)
    synth_loss_weight: Real = Field(1.0, gt=0)           # task : synthesizer loss weighted 1:1
    synth_reduction: Literal["mean", "sum"] = "mean"     # over the batch; features are always summed
    synth_lr: Real | None = Field(None, gt=0)            # default: the run's lr
    delay: StrictInt = Field(0, ge=0, le=10_000)       # k: stages use synthesizer parameters k steps old

    @model_validator(mode="after")
    def _width_needs_hidden_layers(self):
        require_hidden_layers_for_width(self, "synth_hidden_layers", "synth_width", "synthesizer")
        return self


class StaleSynthesizer:
    """The parameter states one synthesizer had at the start of the last k+1 steps, and a frozen
    copy loaded with the oldest of them: the synthesizer as a stage k steps behind sees it."""

    def __init__(self, synthesizer: nn.Module, delay: int):
        self.copy = copy.deepcopy(synthesizer).requires_grad_(False)
        self.states: deque[dict[str, torch.Tensor]] = deque(maxlen=delay + 1)

    def record(self, synthesizer: nn.Module) -> None:
        """Called at the start of every step, before anything in the step updates the synthesizer."""
        self.states.append({k: v.detach().clone() for k, v in synthesizer.state_dict().items()})

    def oldest(self) -> nn.Module:
        self.copy.load_state_dict(self.states[0])
        return self.copy


@register
class DNI(Method):
    name = "dni"
    description = "synthetic gradients between every layer, bootstrapped targets"
    Settings = DNISettings
    conditioned = False                                  # cDNI: synthesizers also see the label
    supports_fused_step = True

    def __init__(self, stages, settings, setup):
        super().__init__(stages, settings, setup)
        context_dim = setup.num_classes if self.conditioned else 0
        synths = [Synthesizer(shape, settings.synth_hidden_layers, settings.synth_width, context_dim).to(setup.device)
                  for shape in setup.stage_shapes[:-1]]  # one interface on every h_i below the output
        lr = settings.synth_lr or setup.lr
        shared: torch.optim.Optimizer | None = None
        if self.fused:
            # Fused: one optimizer shared by every synthesizer (only the fused step calls it). At the
            # stages' own rate it is the stage optimizer itself, rebuilt over both: one Adam call per step
            # instead of two. Adam keeps its state per parameter, so this computes what two optimizers do.
            synth_params = [p for synth in synths for p in synth.parameters()]
            if lr == setup.lr:
                stage_params = [p for s in stages for p in s.parameters()]
                self.stage_optimizers = [shared] = [setup.adam(stage_params + synth_params)]
            else:
                shared = setup.adam(synth_params, lr)
        self.interfaces: list[BackwardInterface] = [
            BackwardInterface(synth, shared if shared is not None else setup.adam(synth.parameters(), lr),
                              settings.synth_loss_weight,
                              settings.synth_reduction) for synth in synths]
        self.pending: list[torch.Tensor] = []             # the fused step's regression losses
        for iface in self.interfaces if self.fused else []:
            iface.pending = self.pending
        # delay = 0 keeps no history: the stage uses the synthesizer itself, exactly as without the option.
        self.stale = [StaleSynthesizer(s, settings.delay) for s in self.synthesizers] if settings.delay else []
        self.groups = [StageGroup(self, i, i + 1) for i in range(len(stages))]   # the per-stage path's units

    @property
    def synthesizers(self):
        return [iface.synthesizer for iface in self.interfaces]

    def nothing_forces_per_stage(self) -> bool:
        return super().nothing_forces_per_stage() and not self.settings.delay

    def optimizer_roles(self):
        synth = {id(i.optimizer): i.optimizer for i in self.interfaces if i.optimizer is not None}   # shared once
        return {**super().optimizer_roles(), "synth": list(synth.values())}

    def record_synthesizers(self) -> None:
        """Start of a step: remember the synthesizers' parameters for the delayed stages."""
        for history, synth in zip(self.stale, self.synthesizers):
            history.record(synth)

    def synthetic_gradient(self, i: int, h: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """M_{i+1}'s prediction for h (held for its regression) and the gradient to inject into h:
        from M_{i+1} itself, or with a delay from its parameters k steps ago."""
        gradient = self.interfaces[i].send(h, context)
        if not self.stale:
            return gradient
        with torch.no_grad():
            stale = self.stale[i].oldest()(h.detach(), context)
        return stale * (self.interfaces[i].grad_scale / h.shape[0])

    def context(self, y: torch.Tensor) -> torch.Tensor | None:
        """What the synthesizers see besides h: the one-hot label for cDNI, nothing for DNI."""
        return one_hot(y, self.setup.num_classes) if self.conditioned else None

    def step(self, x, y):
        if self.fused:
            return self.fused_step(x, y)
        coins = self.coins()
        self.record_synthesizers()
        metrics: dict[str, torch.Tensor] = {}
        self.per_stage_step(x, y, self.context(y), coins, metrics)
        return metrics

    def per_stage_step(self, x, y, context, coins: list[bool], metrics: dict) -> None:
        h = x
        # One group per stage (methods/units.py: the rule a parallel worker runs on its slice too); the
        # target a group returns is handed to the synthesizer of the group below at once.
        for k, group in enumerate(self.groups):
            h, target = group.train(h, y, context, coins, metrics)
            if target is not None:
                self.groups[k - 1].regress(target, metrics)

    def fused_step(self, x, y):
        """The per-stage step above with p_update = 1 and no delay, in three calls instead of 3N: every
        stage's forward (and its synthesizer's prediction, from the parameters the step started with),
        one backward over all stage outputs with their injected gradients, one over the summed
        synthesizer losses, then one optimizer step over stages and synthesizers (two where synth_lr
        differs). Stage inputs are detached leaves, so each stage's gradient and each bootstrapped target
        (the gradient at h_{i-1}: M_{i+1}'s prediction back through stage i) are exactly those of the
        per-stage path."""
        metrics: dict[str, torch.Tensor] = {}
        # The one fused rule, over one group of every stage (a parallel worker runs it on its slice).
        StageGroup(self, 0, len(self.stages)).train_fused(x, y, self.context(y), metrics)
        return metrics

    def update_all(self) -> None:
        """The fused step's end: the losses every interface left pending in one backward, then one
        update of every stage and one of every other model (synthesizers, synthetic inputs)."""
        if self.pending:
            torch.autograd.backward(self.pending)
            self.pending.clear()
        self.apply_all_updates()
        stages = {id(opt) for opt in self.stage_optimizers}
        for opt in self.optimizers():                   # each optimizer once, whatever roles it has
            if id(opt) not in stages:
                opt.step()
                opt.zero_grad(set_to_none=True)
