"""The unit of decoupled training: a contiguous group of stages with everything that learns with them.

A ``StageGroup`` owns stages [lo, hi) of a DNI-family method: their optimizers, the interfaces inside the
group, the synthesizer on its *output* boundary (M on h_{hi-1}, absent at the top) and, for complete
unlock, the synthetic-input model on its *input* boundary (I on h_{lo-1}, absent at the bottom). It is
the one place the per-stage learning rule is written: the one-process methods (DNI.step and
UnlockDNI.step, per-stage path) run a loop over one group per stage, and a parallel worker
(dnibench/parallel/worker.py) runs the same ``train`` on its own slice, with the boundary messages
(h_out up, the target at its input down) travelling between processes instead of between loop turns.

The group keeps no state of its own: it reads and updates the method's stages, optimizers and
interfaces, so a worker that built the whole method with the run's seed and trains only its slice
computes exactly what the one-process method computes for those stages.
"""
from __future__ import annotations

import torch

from .base import task_loss


class StageGroup:
    def __init__(self, method, lo: int, hi: int):
        if not 0 <= lo < hi <= len(method.stages):
            raise ValueError(f"stage group [{lo}, {hi}) outside the {len(method.stages)} stages")
        self.method, self.lo, self.hi = method, lo, hi
        self.top = len(method.stages) - 1

    @property
    def is_top(self) -> bool:
        return self.hi - 1 == self.top

    # ---- DNI: real inputs, synthetic gradients ------------------------------------------------------
    def train(self, h: torch.Tensor, y: torch.Tensor, context: torch.Tensor | None, coins: list[bool],
              metrics: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One step of stages lo..hi-1 on the real input ``h`` of stage lo (x when lo = 0), each stage
        updated at once from the synthetic gradient on its output (the top stage: the true loss).
        Interfaces inside the group are regressed here; the gradient that reached the group's input
        (the bootstrapped target of the synthesizer on h_{lo-1}, owned by the group below) is returned
        with the detached output h_{hi-1}: ``(h_out, target or None)``."""
        m = self.method
        down = None
        for i in range(self.lo, self.hi):
            learns = coins[i]
            # The input arrives detached: no gradient ever flows to the stage below through it.
            # It needs a gradient only to produce the target for the interface below (M_i).
            h_in = h.detach().requires_grad_(learns and i > 0)
            with torch.set_grad_enabled(learns):
                h_out = m.stages[i](h_in)
            if i == self.top:
                loss = task_loss(h_out, y)
                metrics["train_loss"] = loss.detach()
                if learns:
                    loss.backward()
            else:
                synthetic_gradient = m.synthetic_gradient(i, h_out, context)
                if learns:
                    h_out.backward(synthetic_gradient)
            if learns:
                m.apply_update(i)
                if i > self.lo:                            # bootstrapped (or, at the top, true) target for M_i
                    metrics[f"synth_loss/h{i}"] = m.interfaces[i - 1].receive(h_in.grad)
                elif i > 0:
                    down = h_in.grad
            h = h_out.detach()
        return h, down

    def train_fused(self, h: torch.Tensor, y: torch.Tensor, context: torch.Tensor | None,
                    metrics: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``train`` with every coin up and no delay, for a method built with its fused step (DNI.fused_step
        on the group's stages): every stage's forward and prediction, one backward over the group's
        outputs with their injected gradients, the internal interfaces' losses in one backward, one
        step of each optimizer. The method's optimizers span every stage and synthesizer, but only this
        group's parameters have gradients, and Adam leaves a parameter without one alone."""
        m = self.method
        inputs, outputs, gradients = [], [], []
        for i in range(self.lo, self.hi):
            h_in = h.detach().requires_grad_(i > 0)
            h_out = m.stages[i](h_in)
            inputs.append(h_in)
            if i == self.top:
                loss = task_loss(h_out, y)
                metrics["train_loss"] = loss.detach()
                outputs.append(loss)
                gradients.append(None)
            else:
                outputs.append(h_out)
                gradients.append(m.interfaces[i].send(h_out, context))
            h = h_out.detach()
        torch.autograd.backward(outputs, gradients)
        for j, i in enumerate(range(self.lo + 1, self.hi), start=1):   # each receive() leaves its loss pending
            metrics[f"synth_loss/h{i}"] = m.interfaces[i - 1].receive(inputs[j].grad)
        m.update_all()
        return h, (inputs[0].grad if self.lo > 0 else None)

    def regress(self, target: torch.Tensor, metrics: dict, h: torch.Tensor | None = None,
                context: torch.Tensor | None = None) -> None:
        """Regress the synthesizer on this group's output (M on h_{hi-1}) towards ``target``. With ``h``
        its prediction is first made again at ``h`` from its *current* parameters (complete unlock: at
        the synthetic input of the stage above; a parallel worker: at an older h_out, since the
        synthesizer may have learnt since); without, the prediction it holds from its last ``send``."""
        iface = self.method.interfaces[self.hi - 1]
        if h is not None:
            iface.send(h, context)
        metrics[f"synth_loss/h{self.hi}"] = iface.receive(target)
        if iface.pending:                 # a fused method's interface: its loss waits for the step; update now
            torch.autograd.backward(iface.pending)
            iface.pending.clear()
            iface.optimizer.step()
            iface.optimizer.zero_grad(set_to_none=True)

    # ---- Complete unlock: synthetic inputs too ------------------------------------------------------
    def train_unlocked(self, x: torch.Tensor, y: torch.Tensor, context: torch.Tensor | None, coins: list[bool],
                       metrics: dict) -> tuple[dict[int, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]:
        """One step of stages lo..hi-1, each from its synthetic input I_i(x) (stage 0 from x): steps 1-3 of
        methods/unlock.py. Returns the real outputs ``{i: h_i}`` of the stages that ran (below the top),
        and for the synthesizer on h_{lo-1} (owned by the group below) the pair (stage lo's input, the
        gradient that reached it), or None."""
        m = self.method
        real: dict[int, torch.Tensor] = {}
        down = None
        for i in range(self.lo, self.hi):
            if not coins[i]:                               # p_update gates forward and backward together
                continue
            h_in = x if i == 0 else m.inputs[i - 1].send(x).requires_grad_(True)
            h_out = m.stages[i](h_in)
            if i == self.top:
                loss = task_loss(h_out, y)
                metrics["train_loss"] = loss.detach()
                loss.backward()
            else:
                h_out.backward(m.synthetic_gradient(i, h_out, context))
                real[i] = h_out.detach()
            m.apply_update(i)
            if i > self.lo:                                # M_i at this stage's own (synthetic) input
                m.interfaces[i - 1].send(h_in, context)
                metrics[f"synth_loss/h{i}"] = m.interfaces[i - 1].receive(h_in.grad)
            elif i > 0:
                down = (h_in.detach(), h_in.grad)
        return real, down

    def regress_inputs(self, real: dict[int, torch.Tensor], x: torch.Tensor, coins: list[bool], metrics: dict,
                       fresh: bool = False) -> None:
        """Step 4 of methods/unlock.py for this group's synthetic-input models (I on h_{lo-1} .. h_{hi-2}):
        each regressed towards the real h_i in ``real`` that feeds one of its stages. ``fresh``: make the
        prediction I(x) again from the current parameters (a parallel worker, whose real input arrives
        steps later), else the prediction held from this step's ``send`` (made now if the stage did not run)."""
        m = self.method
        for i in range(max(self.lo - 1, 0), self.hi - 1):
            if i not in real:
                continue
            if fresh or not coins[i + 1]:                  # stage i+1 did not ask for a synthetic input
                m.inputs[i].send(x)
            metrics[f"input_loss/h{i + 1}"] = m.inputs[i].receive(real[i])
