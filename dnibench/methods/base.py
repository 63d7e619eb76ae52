"""The method protocol, and the feed-forward base every FF method shares.

A method owns the stages' optimizers (one per stage: each layer group steps on its own, so a
group with its synthesizer and optimizer can later live in its own process) and implements
``step(x, y)``. It returns its metrics as 0-d tensors so the training loop decides when to sync.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class MethodSettings(BaseModel):
    """Hyperparameters common to every method; a method extends this with its own."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)   # .inf / .nan in a suite: one-line error
    # Sporadic updates (paper §3.2): each stage does its backward pass and update with this probability.
    p_update: float = Field(1.0, gt=0.0, le=1.0)


@dataclass
class Setup:
    """What a method needs to know about the run, fixed before training starts."""
    num_classes: int
    in_shape: tuple[int, ...]
    stage_shapes: list[tuple[int, ...]]      # per-example output shape of each stage
    lr: float
    device: torch.device
    generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))  # coins, on CPU

    def adam(self, params) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=self.lr)


class Method:
    name: ClassVar[str]
    family: ClassVar[str] = "ff"             # which training loop drives it
    Settings: ClassVar[type[MethodSettings]] = MethodSettings
    description: ClassVar[str] = ""

    def __init__(self, stages: nn.ModuleList, settings: MethodSettings, setup: Setup):
        self.stages = stages
        self.settings = settings
        self.setup = setup
        self.stage_optimizers = [setup.adam(s.parameters()) for s in stages]
        self.update_counts = [0] * len(stages)

    def optimizer_roles(self) -> dict[str, list[torch.optim.Optimizer]]:
        """Every optimizer by what it trains ("stage", "synth", "input"): the loop scales each one's
        own base rate by the schedule and logs the rate each role actually used as ``lr/<role>``."""
        return {"stage": list(self.stage_optimizers)}

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Every optimizer, so the loop can apply the learning-rate schedule to all of them."""
        return [opt for opts in self.optimizer_roles().values() for opt in opts]

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


def task_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y)
