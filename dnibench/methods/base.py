"""The method protocol, and the feed-forward base every FF method shares.

A method owns the stages' optimizers (one per stage: each layer group steps on its own, so a
group with its synthesizer and optimizer can later live in its own process) and implements
``step(x, y)``. It returns its metrics as 0-d tensors so the training loop decides when to sync.

When nothing forces stages to run one by one (p_update = 1, no delay) a method may declare
``supports_fused_step`` and then gets ``self.fused``: one optimizer over all stages' parameters
instead of one per stage, so a step makes one backward and one optimizer call where the per-stage
path makes N. Adam's update is elementwise, so the two give the same parameters.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..fields import Real


class MethodSettings(BaseModel):
    """Hyperparameters common to every method; a method extends this with its own."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)   # .inf / .nan in a suite: one-line error
    # Sporadic updates (paper §3.2): each stage does its backward pass and update with this probability.
    p_update: Real = Field(1.0, gt=0.0, le=1.0)


def adam_impl(device: torch.device | str) -> str:
    """The fastest correct Adam for parameters on ``device``: the fused kernel (one kernel over all
    tensors; torch >= 2.4 has it on CPU and CUDA; 1.14-1.29x on whole steps here), else the
    multi-tensor ``foreach`` path, else torch's default for-loop (e.g. on 'meta': no kernels)."""
    kind = torch.device(device).type
    if kind in ("cpu", "cuda"):
        return "fused"
    if kind in ("mps", "xpu"):
        return "foreach"
    return "default"


def adam(params, lr: float) -> torch.optim.Optimizer:
    """The one optimizer factory for every stage, synthesizer and synthetic input model."""
    params = list(params)
    tensors = [p for g in params for p in g["params"]] if params and isinstance(params[0], dict) else params
    impl = adam_impl(tensors[0].device) if tensors else "default"
    flags = {"fused": {"fused": True}, "foreach": {"foreach": True}}.get(impl, {})
    return torch.optim.Adam(params, lr=lr, **flags)


def require_hidden_layers_for_width(settings: BaseModel, layers: str, width: str, what: str) -> None:
    """A model with 0 hidden layers is linear and has no hidden width: a width given for it would be
    silently ignored, so it is refused (``what`` names the model in the message)."""
    value = getattr(settings, width)
    if getattr(settings, layers) == 0 and value != type(settings).model_fields[width].default:
        raise ValueError(f"{width} {value} has no effect with {layers} = 0 "
                         f"(a linear {what}); leave it out or add hidden layers")


@dataclass
class Setup:
    """What a method needs to know about the run, fixed before training starts."""
    num_classes: int
    in_shape: tuple[int, ...]
    stage_shapes: list[tuple[int, ...]]      # per-example output shape of each stage
    lr: float
    device: torch.device
    generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))  # coins, on CPU
    fused_step: bool = True                  # False: always the per-stage path (a test compares the two)

    def adam(self, params, lr: float | None = None) -> torch.optim.Optimizer:
        return adam(params, self.lr if lr is None else lr)


class Method:
    name: ClassVar[str]
    family: ClassVar[str] = "ff"             # which training loop drives it
    Settings: ClassVar[type[MethodSettings]] = MethodSettings
    description: ClassVar[str] = ""
    supports_fused_step: ClassVar[bool] = False  # the method's step() has a fused path (see the module doc)

    def __init__(self, stages: nn.ModuleList, settings: MethodSettings, setup: Setup):
        self.stages = stages
        self.settings = settings
        self.setup = setup
        self.fused = self.supports_fused_step and setup.fused_step and self.nothing_forces_per_stage()
        if self.fused:
            self.stage_optimizers = [setup.adam([p for s in stages for p in s.parameters()])]
        else:
            self.stage_optimizers = [setup.adam(s.parameters()) for s in stages]
        self.update_counts = [0] * len(stages)

    def nothing_forces_per_stage(self) -> bool:
        """True when every stage updates in every step from current parameters (p_update = 1), and
        no variant changed how one stage updates (an ``apply_update`` of its own)."""
        return self.settings.p_update >= 1.0 and type(self).apply_update is Method.apply_update

    def optimizer_roles(self) -> dict[str, list[torch.optim.Optimizer]]:
        """Every optimizer by what it trains ("stage", "synth", "input"): the loop scales each one's
        own base rate by the schedule and logs the rate each role actually used as ``lr/<role>``."""
        return {"stage": list(self.stage_optimizers)}

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Every optimizer, so the loop can apply the learning-rate schedule to all of them."""
        every = {id(opt): opt for opts in self.optimizer_roles().values() for opt in opts}   # one in two roles: once
        return list(every.values())

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def coins(self) -> list[bool]:
        """One Bernoulli(p_update) draw per stage, on a CPU generator (no device sync)."""
        p = self.settings.p_update
        if p >= 1.0:
            return [True] * len(self.stages)
        return (torch.rand(len(self.stages), generator=self.setup.generator) < p).tolist()

    def apply_update(self, index: int) -> None:
        self.stage_optimizers[index].step()
        self.stage_optimizers[index].zero_grad(set_to_none=True)
        self.update_counts[index] += 1

    def apply_all_updates(self) -> None:
        """The fused path: every stage updates at once through the one stage optimizer."""
        for opt in self.stage_optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        self.update_counts = [n + 1 for n in self.update_counts]


def task_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y)
