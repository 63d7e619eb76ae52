"""The recurrent DNI core (paper §3.2): an LSTM unrolled in windows of T steps, trained with
truncated BPTT, and a synthesizer that predicts the gradient of all future losses with respect to
the LSTM state at every window boundary.

One window, from state s_in (the last state of the previous window) over inputs x_1..x_T:
  1. forward T steps:  s_out = F(s_in; x_1..x_T), window loss L = sum_t mean_batch l_t
  2. backward  L + <scale * delta_hat(s_out), s_out>    -- with DNI, the synthetic gradient for the
     future beyond the window is injected at s_out; plain truncated BPTT injects nothing
  3. the *bootstrapped target* for delta_hat(s_in) is the gradient at s_in of
     L + <discount * delta_hat(s_out), s_out>: the true gradient inside the window plus the next
     boundary's synthetic gradient back-propagated
  4. update the LSTM at once, regress the synthesizer (L2) towards the target, carry s_out on.

State: cell and hidden together, s = [h, c] of size 2H (the paper's synthesizer sees both).
Scales follow dnibench.dni: L is a batch mean, so synthesizers predict per-example gradients; the
injected batch gradient is prediction * scale / B and targets are batch gradients * B.

Two separate numbers (dnibench/methods/dni_bptt.py settings ``synth_scale``, ``target_discount``):
  - the injection *scale* (0.1 as reimplementations use) multiplies only what the LSTM's update sees;
  - the target *discount* multiplies the next synthetic gradient inside the bootstrapped target.
The paper's target (§3.2) is sum of the true gradients in the window + delta_hat(s_out) ds_out/ds_in,
undiscounted: discount 1, the methods' default. With discount = scale (what one backward pass gives,
and dnibench's behaviour before the two were split) a gradient from k windows ahead is shrunk by
scale^k. When they differ, the synthetic part's gradient at s_in is taken once more by autograd and
added with weight (discount - scale): one forward pass, no second graph.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from torch import nn

from ..dni import BackwardInterface, Synthesizer, synthetic_gradient_loss
from ..fields import Real

LN2 = math.log(2.0)
LossFn = Callable[[torch.Tensor], torch.Tensor]          # logits [T, B, O] -> per-position loss [T, B] (nats)


class LSTMCore(nn.Module):
    """One LSTM layer and a linear read-out; the recurrent state is one tensor s = [h, c] (B, 2H)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.hidden = hidden
        self.lstm = nn.LSTM(in_dim, hidden)
        self.readout = nn.Linear(hidden, out_dim)

    @property
    def state_dim(self) -> int:
        return 2 * self.hidden

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.zeros(batch, self.state_dim, device=device)

    def forward(self, x: torch.Tensor, s: torch.Tensor, reset: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [T, B, in] from state s [B, 2H] -> (logits [T, B, out], last state [B, 2H], outputs h_1..h_T).

        ``reset`` [T, B] (1: the stream starts a new episode at that step): the state entering that
        step is multiplied by 0, so the step starts from zeros and autograd carries no gradient back
        across the reset (an episodic task). None: the state runs on (continuous streams)."""
        if reset is None:
            return self._run(x, s)
        keep = (1.0 - reset).to(s.device, s.dtype)
        # One LSTM call per stretch between steps where some stream restarts. The cut points are read on
        # the host: pass ``reset`` as the episode streams make it, on the CPU, so a GPU run does not sync.
        cuts = [t for t, any_reset in enumerate(reset.any(1).tolist()) if any_reset]
        bounds = sorted({0, *cuts, x.shape[0]})
        outputs = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            if a in cuts:
                s = s * keep[a][:, None]
            _, s, out = self._run(x[a:b], s, readout=False)
            outputs.append(out)
        outputs = torch.cat(outputs, 0)
        return self.readout(outputs), s, outputs

    def _run(self, x: torch.Tensor, s: torch.Tensor, readout: bool = True):
        h, c = s.split(self.hidden, dim=1)
        outputs, (h_n, c_n) = self.lstm(x, (h.unsqueeze(0).contiguous(), c.unsqueeze(0).contiguous()))
        return self.readout(outputs) if readout else None, torch.cat([h_n[0], c_n[0]], dim=1), outputs


@dataclass
class WindowResult:
    losses: torch.Tensor                  # per-position task loss [T, B], nats, detached
    state: torch.Tensor                   # s_out, detached: the next window starts here
    target: torch.Tensor | None           # bootstrapped target at s_in, per example (DNI only)
    synthetic: torch.Tensor | None        # the synthesizer's prediction at s_out, per example
    aux_loss: torch.Tensor | None = None


def backward_window(core: LSTMCore, s_in: torch.Tensor, x: torch.Tensor, loss_fn: LossFn,
                    synthetic_gradient: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    scale: float = 1.0, aux_head: nn.Module | None = None, aux_weight: float = 1.0,
                    discount: float | None = None, reset: torch.Tensor | None = None) -> WindowResult:
    """Steps 1-3 above: forward, backward, bootstrapped target. Parameter gradients accumulate in
    ``.grad``; no optimizer steps here, so a test can sum windows and compare with autograd.

    ``synthetic_gradient(s)`` returns the per-example predicted gradient at a state (None: plain
    truncated BPTT). ``scale`` weighs it in the LSTM's gradient, ``discount`` in the bootstrapped
    target (None: the same as ``scale``, the single-backward reading). ``aux_head`` (DNI+Aux) reads
    the LSTM output after the window's first step and is regressed towards the synthetic gradient at
    s_out, T steps further on; its loss trains the LSTM but is kept out of the bootstrapped target.
    ``reset`` [T, B] (LSTMCore.forward): a stream that restarts its episode inside the window gets
    a target of the true gradient before the restart only, since nothing after it depends on s_in.
    """
    batch = s_in.shape[0]
    dni = synthetic_gradient is not None
    s_in = s_in.detach().requires_grad_(dni)
    logits, s_out, outputs = core(x, s_in, reset)
    losses = loss_fn(logits)
    objective = losses.sum(0).mean()                     # sum over the window's steps, mean over the batch
    delta_out = None
    if dni:
        delta_out = synthetic_gradient(s_out.detach()).detach()
        # d/ds_out of <s_out, g> is g: the injected batch gradient is prediction * scale / B.
        objective = objective + (s_out * delta_out).sum() * (scale / batch)
    aux_loss = None
    if aux_head is not None:
        if delta_out is None:
            raise ValueError("the auxiliary task predicts a synthetic gradient: it needs a synthesizer")
        # The first step again, from a detached s_in: the same gradient for the LSTM's weights as through
        # outputs[0], but none reaches s_in, so the bootstrapped target stays the task's alone.
        first = core(x[:1], s_in.detach(), None if reset is None else reset[:1])[2][0]
        aux_loss = aux_weight * synthetic_gradient_loss(aux_head(first), delta_out)
        objective = objective + aux_loss
        aux_loss = aux_loss.detach()
    correction = None
    if dni and discount is not None and discount != scale:
        # The target wants the next synthetic gradient at weight `discount`, the backward below gives it
        # at `scale`: add the difference, back-propagated from s_out to s_in alone (no parameter grads).
        correction = torch.autograd.grad(s_out, s_in, grad_outputs=delta_out * ((discount - scale) / batch),
                                         retain_graph=True)[0]
    objective.backward()
    target = None
    if dni:
        target = (s_in.grad if correction is None else s_in.grad + correction) * batch
    return WindowResult(losses.detach(), s_out.detach(), target, delta_out, aux_loss)


class StateSynthesizer:
    """The synthesizer on the LSTM state with its own optimizer: ``predict`` at a window's last
    state, ``regress`` its prediction at the window's first state towards the bootstrapped target."""

    def __init__(self, state_dim: int, hidden_layers: int, width: int, lr: float, device: torch.device | str):
        # Final layer zero-initialised (dnibench.dni.Synthesizer): it starts by predicting zero, i.e. as BPTT.
        self.synthesizer = Synthesizer((state_dim,), hidden_layers, width).to(device)
        from ..methods.base import adam                  # at call time: methods/ imports this module
        self.optimizer = adam(self.synthesizer.parameters(), lr)

    @torch.no_grad()
    def predict(self, s: torch.Tensor) -> torch.Tensor:
        return self.synthesizer(s)

    def regress(self, s: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = synthetic_gradient_loss(self.synthesizer(s.detach()), target.detach())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


class RNNSettings(BaseModel):
    """Settings every recurrent method has: the truncation T (paper §3.2: T = 2, 3, 4, 5, 8)."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)   # .inf / .nan in a suite: one-line error
    T: StrictInt = Field(5, ge=1, le=1000)
    clip_norm: Real | None = Field(None, gt=0)           # gradient-norm clipping of the LSTM (None: off)


class RecurrentMethod:
    """The protocol of family "rnn": a method owns the LSTM's optimizer and the carried state and
    trains one window per ``window(x, loss_fn)`` call. Plain truncated BPTT is this class as is;
    DNI subclasses supply ``synthetic_gradient`` and learn from the bootstrapped target."""
    name: ClassVar[str]
    family: ClassVar[str] = "rnn"
    Settings: ClassVar[type[RNNSettings]] = RNNSettings
    description: ClassVar[str] = ""

    def __init__(self, core: LSTMCore, settings: RNNSettings, lr: float, device: torch.device | str = "cpu"):
        self.core, self.settings, self.lr, self.device = core, settings, lr, device
        self.extra_modules: list[nn.Module] = []             # trained with the LSTM (the DNI+Aux head)
        self.state: torch.Tensor | None = None
        self.setup()
        from ..methods.base import adam                  # at call time: methods/ imports this module
        self.optimizer = adam(self.trained_parameters(), lr)

    def setup(self) -> None:
        """Build what the method adds to the LSTM (synthesizers, heads) before the optimizer exists."""

    def trained_parameters(self) -> list[nn.Parameter]:
        return [p for m in [self.core, *self.extra_modules] for p in m.parameters()]

    def optimizer_roles(self) -> dict[str, list[torch.optim.Optimizer]]:
        """Every optimizer by what it trains; the loop scales each one's own base rate and logs ``lr/<role>``."""
        return {"lstm": [self.optimizer]}

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [opt for opts in self.optimizer_roles().values() for opt in opts]

    def synthetic_gradient(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        return None                                          # truncated BPTT: nothing beyond the window

    def message_interface(self, dim: int) -> BackwardInterface | None:
        """Between two networks (the two-timescale system): None means the sender waits for the
        receiver's true gradient; DNI returns a synthetic-gradient interface on the message."""
        return None

    def learn_boundary(self, s_in: torch.Tensor, result: WindowResult) -> dict[str, torch.Tensor]:
        return {}

    def window(self, x: torch.Tensor, loss_fn: LossFn, reset: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Train one window of T steps (x: [T, B, in]); returns 0-d/[T, B] tensors, no host sync
        (with ``reset``, the episode restarts of LSTMCore.forward, one read per window)."""
        batch = x.shape[1]
        if self.state is None or self.state.shape[0] != batch:
            self.state = self.core.initial_state(batch, x.device)
        s_in = self.state
        aux_head, aux_weight = self.aux()
        result = backward_window(self.core, s_in, x, loss_fn, self.synthetic_gradient(),
                                 scale=getattr(self.settings, "synth_scale", 1.0), aux_head=aux_head,
                                 aux_weight=aux_weight, discount=getattr(self.settings, "target_discount", None),
                                 reset=reset)
        metrics = {"losses": result.losses, **self.learn_boundary(s_in, result)}
        if result.aux_loss is not None:
            metrics["aux_loss"] = result.aux_loss
        if self.settings.clip_norm is not None:
            nn.utils.clip_grad_norm_(self.trained_parameters(), self.settings.clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state = result.state
        return metrics

    def aux(self) -> tuple[nn.Module | None, float]:
        return None, 1.0
