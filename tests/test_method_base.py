"""The baselines' steps and the base every method shares (methods/base.py, bprop.py, nobprop.py): which coin
gates which stage under sporadic updates, the loss each step reports, the gradients it leaves, and the Adam
each optimizer gets."""
import pytest
import torch
import torch.nn.functional as F

from dnibench.methods import base
from dnibench.methods.base import adam, adam_impl
from tiny_methods import build_method, random_batch, true_forward

IN_SHAPE = (1, 6, 6)


def step_with_coins(method, coins: list[bool]):
    """One step with the coins given (p_update < 1, so the per-stage path): which stages updated, the loss."""
    method.coins = lambda: list(coins)
    before = list(method.update_counts)
    metrics = method.step(*random_batch(IN_SHAPE))
    return [a != b for a, b in zip(method.update_counts, before)], metrics


@pytest.mark.parametrize("coins,updated", [
    ([True, False, True, True], [False, False, True, True]),     # the chain stops at stage 1's "no"
    ([True, True, True, False], [False] * 4),                   # the top's "no": no backward at all
    ([False, True, True, True], [False, True, True, True]),
    ([True] * 4, [True] * 4)])
def test_bprop_stage_i_reads_its_own_coin_down_from_the_top(coins, updated):
    bprop = build_method("bprop", IN_SHAPE, p_update=0.5)
    assert step_with_coins(bprop, coins)[0] == updated


@pytest.mark.parametrize("top_coin", [True, False])
def test_nobprop_learns_only_on_the_top_stages_coin(top_coin):
    nobprop = build_method("nobprop", IN_SHAPE, p_update=0.5)
    assert step_with_coins(nobprop, [not top_coin] * 3 + [top_coin])[0] == [False, False, False, top_coin]


@pytest.mark.parametrize("method", ["bprop", "nobprop"])
def test_the_reported_loss_is_the_whole_networks_before_the_update(method):
    """train_loss is the cross-entropy of the full forward pass (every stage, in training mode) on the step's
    batch, with the parameters the step started from."""
    m = build_method(method, IN_SHAPE)
    x, y = random_batch(IN_SHAPE)
    hs, _ = true_forward(m.stages, x, y)            # on a copy: the step's stages are left as they were
    expected = F.cross_entropy(hs[-1], y)
    metrics = m.step(x, y)
    assert set(metrics) == {"train_loss"}
    torch.testing.assert_close(metrics["train_loss"], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method,fused", [("bprop", True), ("bprop", False), ("nobprop", False)])
def test_a_step_leaves_no_gradient_behind(method, fused):
    """Freed, not zeroed, on the per-stage path too: a zero gradient is one Adam would step on."""
    m = build_method(method, IN_SHAPE, fused_step=fused)
    assert m.fused is fused
    for _ in range(2):
        m.step(*random_batch(IN_SHAPE))
    assert all(p.grad is None for p in m.stages.parameters())


@pytest.mark.parametrize("device,impl", [("cpu", "fused"), ("cuda", "fused"), ("cuda:1", "fused"), ("mps", "foreach"),
                                         ("xpu", "foreach"), ("meta", "default")])
def test_adam_implementation_per_device(device, impl):
    assert adam_impl(device) == impl and adam_impl(torch.device(device)) == impl


@pytest.mark.parametrize("impl,flags", [("fused", (True, None)), ("foreach", (None, True)), ("default", (None, None))])
def test_adam_factory_passes_the_implementations_flag(monkeypatch, impl, flags):
    monkeypatch.setattr(base, "adam_impl", lambda device: impl)
    opt = adam([torch.nn.Parameter(torch.ones(3))], 1e-3)
    assert (opt.defaults["fused"], opt.defaults["foreach"]) == flags and opt.defaults["lr"] == 1e-3


def test_adam_factory_takes_parameter_groups_and_refuses_nothing_to_train():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    opt = adam([{"params": [a]}, {"params": [b], "lr": 0.5}], 1e-3)   # groups: the device of their tensors
    assert opt.defaults["fused"] is True and [g["lr"] for g in opt.param_groups] == [1e-3, 0.5]
    with pytest.raises(ValueError, match="empty parameter list"):
        adam([], 1e-3)


def test_the_package_re_exports_the_protocol_and_names_what_it_lacks():
    import dnibench.methods as methods
    assert (methods.Method, methods.MethodSettings, methods.Setup) == (base.Method, base.MethodSettings, base.Setup)
    with pytest.raises(AttributeError) as err:
        methods.Stage
    assert str(err.value) == "module 'dnibench.methods' has no attribute 'Stage'"
