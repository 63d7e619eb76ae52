"""The DNI core: synthesizers, the backward interface, label conditioning (paper §2-3).

Notation follows the paper. Stage i computes h_i = f_i(h_{i-1}). The synthesizer M_{i+1} that sits
on h_i predicts the error gradient delta_i = dL/dh_i from h_i (and, for cDNI, the context c = one-hot
label). The stage below updates at once with the prediction; M_{i+1} is regressed (L2) towards a
target that arrives later: the true gradient at the top interface, and elsewhere the *bootstrapped*
target  delta_i = delta_hat_{i+1} * dh_{i+1}/dh_i  (the next synthetic gradient back-propagated
through stage i+1).

Scale convention (documented, explicit): L is the batch-mean task loss, so the batch gradient
dL/dh_n of example n is (per-example gradient)/B. Synthesizers predict the per-example gradient
d l_n / d h_n, which does not depend on the batch size; the gradient injected into a stage is the
prediction divided by B, and targets are multiplied by B before the regression.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


class Synthesizer(nn.Module):
    """M(h, c): 0, 1 or 2 hidden layers (Linear-BN-ReLU, or 5x5 Conv-BN-ReLU for conv features),
    then a final layer initialised to zero weights and bias, so it starts by predicting zero."""

    def __init__(self, shape: tuple[int, ...], hidden_layers: int = 0, width: int = 1024,
                 context_dim: int = 0):
        super().__init__()
        self.shape = tuple(shape)
        self.context_dim = context_dim
        self.conv = len(shape) == 3
        layers: list[nn.Module] = []
        if self.conv:
            channels = shape[0] + context_dim          # cDNI: the label as extra constant channels
            hidden = shape[0]
            for _ in range(hidden_layers):
                layers += [nn.Conv2d(channels, hidden, 5, padding=2), nn.BatchNorm2d(hidden), nn.ReLU()]
                channels = hidden
            final = nn.Conv2d(channels, shape[0], 5, padding=2)
        else:
            features = shape[0] + context_dim         # cDNI: concatenated one-hot label
            for _ in range(hidden_layers):
                layers += [nn.Linear(features, width), nn.BatchNorm1d(width), nn.ReLU()]
                features = width
            final = nn.Linear(features, shape[0])
        nn.init.zeros_(final.weight)
        nn.init.zeros_(final.bias)
        self.net = nn.Sequential(*layers, final)

    def forward(self, h: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.context_dim:
            if context is None:
                raise ValueError("this synthesizer is conditioned (cDNI) and needs a context")
            if self.conv:
                context = context[:, :, None, None].expand(-1, -1, *h.shape[2:])
            h = torch.cat([h, context.to(h.dtype)], dim=1)
        return self.net(h)


def synthetic_gradient_loss(prediction: torch.Tensor, target: torch.Tensor,
                            reduction: Literal["mean", "sum"] = "mean") -> torch.Tensor:
    """L2 regression: squared error summed over features, then mean (or sum) over the batch."""
    per_example = (prediction - target).pow(2).flatten(1).sum(1)
    return per_example.mean() if reduction == "mean" else per_example.sum()


class _Regression:
    """What both interfaces share: one model's prediction, held from ``send`` until its target is known,
    then regressed (L2) towards it by ``receive`` with the interface's own optimizer."""

    def __init__(self, optimizer: torch.optim.Optimizer | None, loss_weight: float,
                 reduction: Literal["mean", "sum"]):
        self.optimizer = optimizer
        self.loss_weight = loss_weight
        self.reduction = reduction
        self._prediction: torch.Tensor | None = None
        # A list, set by a method's fused step: receive() leaves its loss there for the method to
        # back-propagate with the others and to step the (shared) optimizer once. None: update at once.
        self.pending: list[torch.Tensor] | None = None

    def receive(self, target: torch.Tensor) -> torch.Tensor:
        """Regress the held prediction towards ``target`` (see ``regression_loss``); return the loss."""
        loss = self.regression_loss(target)
        if self.optimizer is not None and loss.requires_grad:
            if self.pending is not None:         # a fused step back-propagates every interface's loss at once
                self.pending.append(loss)
            else:
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
        return loss.detach()

    def regression_loss(self, target: torch.Tensor) -> torch.Tensor:
        """The held prediction's L2 loss towards the target, not yet back-propagated."""
        if self._prediction is None:
            raise RuntimeError("receive() without a preceding send()")
        prediction, self._prediction = self._prediction, None
        loss = synthetic_gradient_loss(prediction, self.regression_target(target.detach()), self.reduction)
        # Weight 1 (the default) skips the multiply and its backward: two kernels per interface and step.
        return loss if self.loss_weight == 1.0 else self.loss_weight * loss

    def regression_target(self, target: torch.Tensor) -> torch.Tensor:
        return target


class BackwardInterface(_Regression):
    """A synthetic-gradient interface on one activation h_i: the synthesizer M_{i+1}, its own
    optimizer, and the prediction waiting for its (possibly bootstrapped) target.

    ``send`` is called by the stage below as soon as h_i exists; ``receive`` when the target for
    that same h_i is known (a batch gradient). Between the two the interface holds one prediction,
    nothing global.
    """

    def __init__(self, synthesizer: nn.Module, optimizer: torch.optim.Optimizer | None,
                 loss_weight: float = 1.0, reduction: Literal["mean", "sum"] = "mean",
                 grad_scale: float = 1.0):
        super().__init__(optimizer, loss_weight, reduction)
        self.synthesizer = synthesizer
        # Multiplier on the injected gradient (1.0 for the feed-forward paper; RNN reimplementations use 0.1).
        self.grad_scale = grad_scale

    def send(self, h: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the per-example gradient for h; return the batch gradient to inject into h."""
        self._prediction = self.synthesizer(h.detach(), context)
        return self._prediction.detach() * (self.grad_scale / h.shape[0])

    def regression_target(self, batch_gradient: torch.Tensor) -> torch.Tensor:
        """The synthesizer predicts the per-example gradient: the batch gradient times B."""
        return batch_gradient * batch_gradient.shape[0]


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(labels, num_classes).float()


# ---- Complete unlock: synthetic inputs (paper §3.1, "Complete Unlock") ----------------------------

class SyntheticInputModel(nn.Module):
    """I_i(x): predicts a stage's input h_{i-1} from the network input x. Flattened x, 0-2 hidden
    layers (Linear-BN-ReLU), then a linear layer with the default initialisation: unlike a
    synthesizer there is no safe constant to start from (a zero input would stall the stage)."""

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], hidden_layers: int = 2,
                 width: int = 1024):
        super().__init__()
        self.out_shape = tuple(out_shape)
        features = int(torch.tensor(in_shape).prod())
        layers: list[nn.Module] = [nn.Flatten()]
        for _ in range(hidden_layers):
            layers += [nn.Linear(features, width), nn.BatchNorm1d(width), nn.ReLU()]
            features = width
        layers.append(nn.Linear(features, int(torch.tensor(out_shape).prod())))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(x.shape[0], *self.out_shape)


class ForwardInterface(_Regression):
    """A synthetic-input interface in front of one stage: the model I_i, its own optimizer, and the
    prediction waiting for the real input.

    ``send(x)`` gives the stage its synthetic input at once (detached: the stage's gradient never
    trains I_i); ``receive(h)`` regresses the held prediction (L2) towards the real h_{i-1}, when the
    stage below has produced it.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, loss_weight: float = 1.0,
                 reduction: Literal["mean", "sum"] = "mean"):
        super().__init__(optimizer, loss_weight, reduction)
        self.model = model

    def send(self, x: torch.Tensor) -> torch.Tensor:
        self._prediction = self.model(x)
        return self._prediction.detach()
