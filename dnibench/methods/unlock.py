"""Complete unlock: synthetic inputs and synthetic gradients for every stage (paper §3.1, "Complete
Unlock"). No stage waits for another in either direction.

Every stage i > 1 has a synthetic input model I_i(x) that predicts its input h_{i-1} from the network
input x (stage 1's input is x itself). One step, stage by stage (each could be its own process):
  1. h_in = I_i(x)                                       the synthetic input, at once
  2. h_i = f_i(h_in); inject delta_hat_i = M_{i+1}(h_i, c)  (the top stage: the true loss gradient)
     and update theta_i                                    -- exactly DNI's step 2, on h_in
  3. M_i is regressed at this stage's own input: M_i(h_in, c) towards the gradient that reached h_in,
     delta_hat_i * dh_i/dh_in (bootstrapped as in DNI). The pair (input, gradient at that input) is
     always local to stage i, so M_i learns whenever stage i ran, whether or not stage i-1 did.
  4. h_i, the *real* input of stage i+1, is sent up: I_{i+1} is regressed (L2) towards it.
With p_update < 1 one coin per stage gates steps 1-4 (its forward and its backward together); I_{i+1}
learns whenever stage i produced a real h_i, whatever stage i+1's own coin said.

Test error is measured on the real forward chain (train.test_error): synthetic inputs exist only to
train. With oracle inputs (I_i(x) = the true h_{i-1}) a step is exactly a DNI step, and with oracle
synthetic gradients too, exactly a backprop step (tests/test_unlock.py).
"""
from __future__ import annotations

import torch
from pydantic import Field, StrictInt, model_validator

from ..dni import ForwardInterface, SyntheticInputModel
from ..fields import Real
from . import register
from .base import require_hidden_layers_for_width, task_loss
from .dni import DNI, DNISettings


class UnlockSettings(DNISettings):
    # The paper does not give I_i's architecture in the text we have; it mirrors the DNI synthesizer
    # (2 hidden layers of 1024, Linear-BN-ReLU) and can be changed per suite.
    input_hidden_layers: StrictInt = Field(2, ge=0, le=2)
    input_width: StrictInt = Field(1024, ge=1, le=16_384)
    input_loss_weight: Real = Field(1.0, gt=0)
    input_lr: Real | None = Field(None, gt=0)            # default: the run's lr

    @model_validator(mode="after")
    def _input_width_needs_hidden_layers(self):
        require_hidden_layers_for_width(self, "input_hidden_layers", "input_width", "synthetic input model")
        return self


class UnlockCDNISettings(UnlockSettings):
    synth_hidden_layers: StrictInt = Field(0, ge=0, le=2)  # as cDNI: linear synthesizers


@register
class UnlockDNI(DNI):
    name = "unlock_dni"
    description = "complete unlock: synthetic inputs and synthetic gradients for every layer"
    Settings = UnlockSettings

    def __init__(self, stages, settings, setup):
        super().__init__(stages, settings, setup)
        models = [SyntheticInputModel(setup.in_shape, shape, settings.input_hidden_layers,
                                      settings.input_width).to(setup.device) for shape in setup.stage_shapes[:-1]]
        lr = settings.input_lr or setup.lr
        # Fused: one optimizer over every synthetic input model (only the fused step calls it).
        self.input_optimizers = ([setup.adam([p for m in models for p in m.parameters()], lr)] if self.fused
                                 else [setup.adam(m.parameters(), lr) for m in models])
        # inputs[j] feeds stage j+1 (I_{j+2} in the paper's 1-based names)
        self.inputs: list[ForwardInterface] = [
            ForwardInterface(m, self.input_optimizers[0 if self.fused else j], settings.input_loss_weight,
                             settings.synth_reduction) for j, m in enumerate(models)]

        for model in self.inputs if self.fused else []:
            model.pending = self.pending

    def optimizer_roles(self):
        return {**super().optimizer_roles(), "input": list(self.input_optimizers)}

    def per_stage_step(self, x, y, context, coins: list[bool], metrics: dict) -> None:
        real: dict[int, torch.Tensor] = {}                 # real outputs h_i of the stages that ran
        # One group per stage (methods/units.py: the rule a parallel worker runs on its slice too); the
        # (input, gradient) pair a group returns trains the synthesizer of the group below at once.
        for k, group in enumerate(self.groups):
            outputs, pair = group.train_unlocked(x, y, context, coins, metrics)
            real.update(outputs)
            if pair is not None:
                self.groups[k - 1].regress(pair[1], metrics, h=pair[0], context=context)
        # The real inputs arrive after every stage has used its synthetic one (no stage waited).
        for group in self.groups:
            group.regress_inputs(real, x, coins, metrics)

    def fused_step(self, x, y):
        """The step above with every coin up (p_update = 1, no delay), in three calls (see DNI.fused_step):
        each stage on its synthetic input; one backward of every stage; M_i regressed at stage i's
        own input and I_{i+1} at the real h_i, their losses in one backward; one update per role."""
        context = self.context(y)
        top = len(self.stages) - 1
        inputs, outputs, gradients = [], [], []
        for i, stage in enumerate(self.stages):
            h_in = x if i == 0 else self.inputs[i - 1].send(x).requires_grad_(True)
            h_out = stage(h_in)
            inputs.append(h_in)
            if i == top:
                loss = task_loss(h_out, y)
                outputs.append(loss)
                gradients.append(None)
            else:
                outputs.append(h_out)
                gradients.append(self.synthetic_gradient(i, h_out, context))
        torch.autograd.backward(outputs, gradients)
        metrics = {"train_loss": loss.detach()}
        for i in range(1, top + 1):                        # M_i at stage i's own (synthetic) input
            self.interfaces[i - 1].send(inputs[i], context)
            metrics[f"synth_loss/h{i}"] = self.interfaces[i - 1].receive(inputs[i].grad)
        for i in range(top):                               # the real h_i reaches I_{i+1}
            metrics[f"input_loss/h{i + 1}"] = self.inputs[i].receive(outputs[i].detach())
        self.update_all()                                  # every receive() above left its loss pending
        return metrics


@register
class UnlockCDNI(UnlockDNI):
    name = "unlock_cdni"
    description = "complete unlock with label-conditioned synthesizers (cDNI)"
    Settings = UnlockCDNISettings
    conditioned = True
