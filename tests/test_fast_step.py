"""The fused step (p_update = 1, no delay: one backward over every stage, one over the summed
synthesizer losses, one update per role) against the per-stage path, and the optimizer factory's
fused Adam against torch's default Adam."""
import copy

import pytest
import torch

from dnibench.methods import Setup, get_method
from dnibench.methods.base import adam, adam_impl
from dnibench.models import build_stages, stage_output_shapes

from tiny_methods import random_batch

IN_SHAPE = (1, 6, 6)


def build(method: str, fused: bool, model: str = "fcn4", **settings):
    torch.manual_seed(0)
    stages = build_stages(model, IN_SHAPE, 10, cnn_filters=4)
    cls = get_method(method)
    setup = Setup(10, IN_SHAPE, stage_output_shapes(stages, IN_SHAPE), lr=1e-2, device=torch.device("cpu"),
                  fused_step=fused)
    return cls(stages, cls.Settings(**settings), setup)


def every_parameter(method) -> dict[str, torch.Tensor]:
    """Stages, synthesizers and synthetic input models, with batch-norm buffers."""
    out = {f"stage{i}.{k}": v for i, s in enumerate(method.stages) for k, v in s.state_dict().items()}
    for i, synth in enumerate(getattr(method, "synthesizers", [])):
        out.update({f"synth{i}.{k}": v for k, v in synth.state_dict().items()})
    for i, iface in enumerate(getattr(method, "inputs", [])):
        out.update({f"input{i}.{k}": v for k, v in iface.model.state_dict().items()})
    return out


CASES = [("bprop", "fcn4", {}), ("nobprop", "fcn4", {}), ("dni", "fcn4", {"synth_width": 16}),
         ("dni", "fcn4", {"synth_hidden_layers": 0}), ("cdni", "fcn4", {}), ("cdni", "cnn3", {}),
         ("unlock_dni", "fcn4", {"synth_width": 16, "input_width": 16}), ("unlock_cdni", "fcn4", {"input_hidden_layers": 0})]


@pytest.mark.parametrize("method,model,settings", CASES, ids=[f"{m}-{n}-{len(s)}" for m, n, s in CASES])
def test_fused_step_equals_per_stage_step(method, model, settings):
    fused, per_stage = build(method, True, model, **settings), build(method, False, model, **settings)
    assert fused.fused == (method != "nobprop") and not per_stage.fused
    if fused.fused:                          # the point of the path: fewer optimizers to call
        assert len(fused.stage_optimizers) == 1 < len(per_stage.stage_optimizers)
    for step in range(6):
        x, y = random_batch(IN_SHAPE, seed=step)
        got, want = fused.step(x, y), per_stage.step(x, y)
        assert got.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=1e-7, msg=f"{key} at step {step}")
    a, b = every_parameter(fused), every_parameter(per_stage)
    assert a.keys() == b.keys()
    for key in b:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7, msg=key)
    start = every_parameter(build(method, False, model, **settings))
    moved = sum(not torch.equal(start[k], b[k]) for k in b if b[k].is_floating_point())
    assert moved > len(b) // 4               # both paths really trained (a frozen pair would agree too)
    assert fused.update_counts == per_stage.update_counts


@pytest.mark.parametrize("settings", [{"p_update": 0.5}, {"delay": 2}])
def test_sporadic_and_delayed_updates_keep_the_per_stage_path(settings):
    method = build("dni", True, synth_hidden_layers=0, **settings)
    assert not method.fused and len(method.stage_optimizers) == len(method.stages)


def test_a_shared_synthesizer_optimizer_is_scheduled_once():
    # At the stages' rate the fused step's synthesizers share the stage optimizer: one Adam call a step,
    # listed once for the schedule, and stepped once by update_all (twice would move every parameter twice).
    method = build("dni", True, synth_hidden_layers=0)
    roles = method.optimizer_roles()
    assert roles["synth"] == roles["stage"] and len(roles["stage"]) == 1
    assert len(method.optimizers()) == 1
    steps = []
    roles["stage"][0].register_step_post_hook(lambda *_: steps.append(1))
    method.step(torch.rand(4, *IN_SHAPE), torch.randint(0, 10, (4,)))
    assert len(steps) == 1
    # A synthesizer rate of its own: an optimizer of its own, both scheduled, each stepped once.
    own = build("dni", True, synth_hidden_layers=0, synth_lr=3e-3)
    assert own.optimizer_roles()["synth"] != own.optimizer_roles()["stage"] and len(own.optimizers()) == 2
    assert own.optimizer_roles()["synth"][0].param_groups[0]["lr"] == 3e-3
    steps.clear()
    for opt in own.optimizers():
        opt.register_step_post_hook(lambda *_: steps.append(1))
    own.step(torch.rand(4, *IN_SHAPE), torch.randint(0, 10, (4,)))
    assert len(steps) == 2
    # Both ways the step leaves no gradient behind (freed, not zeroed: a zero gradient is one Adam steps on).
    for m in (method, own):
        assert all(p.grad is None for opt in m.optimizers() for g in opt.param_groups for p in g["params"])


def test_factory_picks_the_fused_kernel_on_cpu():
    assert adam_impl("cpu") == "fused" and adam_impl("meta") == "default"
    opt = adam([torch.nn.Parameter(torch.ones(3))], 1e-3)
    assert opt.defaults["fused"] is True and opt.param_groups[0]["lr"] == 1e-3


@pytest.mark.parametrize("method,settings", [("bprop", {}), ("cdni", {}),
                                             ("unlock_dni", {"synth_width": 16, "input_width": 16})])
def test_fused_adam_matches_default_adam_to_float_tolerance(method, settings):
    """From the same state after 8 steps, a step with the factory's fused Adam and one with torch's default
    (for-loop) Adam give the same parameters to float rounding. (Whole runs drift apart further: a linear
    bias in front of batch norm has a gradient of pure rounding noise, which Adam scales up to +-lr.)"""
    fast = build(method, True, **settings)
    for step in range(8):
        fast.step(*random_batch(IN_SHAPE, seed=step))
    plain = copy.deepcopy(fast)
    for opt in plain.optimizers():
        assert opt.defaults["fused"] is True
        for group in opt.param_groups:       # Adam reads these per step: the same state, the default kernel
            group["fused"], group["foreach"] = False, False
    before = {k: v.clone() for k, v in every_parameter(fast).items()}
    x, y = random_batch(IN_SHAPE, seed=99)
    fast.step(x, y)
    plain.step(x, y)
    a, b = every_parameter(fast), every_parameter(plain)
    for key in b:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    assert sum(not torch.equal(a[k], before[k]) for k in a) > len(a) // 4    # the step moved them
