"""Feed-forward DNI details that `make mutation` (tests/MUTATION.md) showed no other test pinned:
architecture defaults, the L2 reduction and weight, an interface without an optimizer, the device
every created model lives on, and the task loss a step reports. Each number is computed by hand."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dnibench.dni import BackwardInterface, ForwardInterface, Synthesizer, SyntheticInputModel, one_hot
from dnibench.methods import Setup, get_method
from dnibench.models import build_stages, stage_output_shapes
from dnibench.rnn.core import LSTMCore
from tiny_methods import build_method, random_batch

IN_SHAPE = (1, 28, 28)


def test_synthesizer_architecture():
    linear = Synthesizer((4,))                          # default: linear, the paper's 0 hidden layers
    assert [type(m) for m in linear.net] == [nn.Linear] and linear.net[0].in_features == 4
    assert Synthesizer((4,), hidden_layers=1).net[0].out_features == 1024     # paper: 1024 units
    conv = Synthesizer((4, 7, 7), hidden_layers=2)
    assert conv.shape == (4, 7, 7)
    convs = [m for m in conv.net if isinstance(m, nn.Conv2d)]
    # Hidden 5x5 convs keep the feature map's channel count and resolution.
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [(4, 4, (5, 5), (2, 2))] * 3


def test_synthetic_input_model_default_is_two_hidden_layers_of_1024():
    model = SyntheticInputModel((1, 28, 28), (16,))
    linears = [m for m in model.net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 1024), (1024, 1024), (1024, 16)]


def test_conditioned_synthesizer_keeps_the_feature_dtype():
    """The one-hot context is cast to the features' dtype, so a bfloat16 synthesizer works."""
    synth = Synthesizer((4,), context_dim=10).to(torch.bfloat16)
    out = synth(torch.randn(3, 4, dtype=torch.bfloat16), one_hot(torch.tensor([0, 1, 2]), 10))
    assert out.dtype == torch.bfloat16


def test_one_hot_has_the_number_of_classes_given():
    assert one_hot(torch.tensor([0, 1]), 10).shape == (2, 10)


@pytest.mark.parametrize("kind", ["backward", "forward"])
def test_receive_without_send_is_refused(kind):
    iface = (BackwardInterface(Synthesizer((3,)), None) if kind == "backward"
             else ForwardInterface(SyntheticInputModel((3,), (3,), hidden_layers=0), None))
    with pytest.raises(RuntimeError, match=r"receive\(\) without a preceding send\(\)"):
        iface.receive(torch.zeros(2, 3))


@pytest.mark.parametrize("kind", ["backward", "forward"])
@pytest.mark.parametrize("reduction, weight", [("mean", 1.0), ("sum", 1.0), ("sum", 0.5), ("mean", 0.25)])
def test_interface_loss_reduction_weight_and_no_optimizer(kind, reduction, weight):
    """loss = weight * (mean or sum over the batch of the squared error summed over features); an
    interface without an optimizer measures it and leaves its model unchanged."""
    g = torch.Generator().manual_seed(0)
    x, target = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    model = Synthesizer((3,)) if kind == "backward" else SyntheticInputModel((3,), (3,), hidden_layers=0)
    nn.init.normal_(model.net[-1].weight)
    before = copy.deepcopy(model.state_dict())
    iface = (BackwardInterface(model, None, weight, reduction) if kind == "backward"
             else ForwardInterface(model, None, weight, reduction))
    iface.send(x)
    with torch.no_grad():
        prediction = model(x)
    # The backward interface regresses towards the per-example gradient: it is given target / B.
    loss = iface.receive(target / 6 if kind == "backward" else target)
    per_example = (prediction - target).pow(2).sum(1)
    want = weight * (per_example.mean() if reduction == "mean" else per_example.sum())
    torch.testing.assert_close(loss, want)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", ["dni", "cdni", "unlock_dni", "unlock_cdni"])
def test_every_model_a_method_creates_is_on_the_setup_device(name):
    """On the 'meta' device nothing is computed, but a model left on the CPU would show."""
    stages = build_stages("fcn4", IN_SHAPE, 10)
    setup = Setup(10, IN_SHAPE, stage_output_shapes(stages, IN_SHAPE), lr=1e-2, device=torch.device("meta"))
    cls = get_method(name)
    method = cls(stages, cls.Settings(), setup)
    models = method.synthesizers + [f.model for f in getattr(method, "inputs", [])]
    assert len(models) == (6 if name.startswith("unlock") else 3)
    assert all(p.device.type == "meta" for m in models for p in m.parameters())


@pytest.mark.parametrize("name", ["dni_bptt", "dni_bptt_aux"])
def test_recurrent_models_are_on_the_method_device(name):
    cls = get_method(name)
    method = cls(LSTMCore(3, 4, 2), cls.Settings(), lr=1e-2, device="meta")
    models = [method.synth.synthesizer, method.message_interface(5).synthesizer, *method.extra_modules]
    assert all(p.device.type == "meta" for m in models for p in m.parameters())


def top_input_gradient(stages, x, y):
    """dL/dh at the top stage's input, by autograd on the untouched network (train mode)."""
    h = x
    for stage in stages[:-1]:
        h = stage(h)
    h = h.detach().requires_grad_(True)
    loss = F.cross_entropy(stages[-1](h), y)
    return loss, torch.autograd.grad(loss, h)[0]


@pytest.mark.parametrize("name", ["dni", "cdni"])
@pytest.mark.parametrize("reduction, weight", [("mean", 1.0), ("sum", 0.5), ("mean", 2.0)])
def test_dni_step_reports_task_loss_and_top_synthesizer_loss(name, reduction, weight):
    """First step from zero-initialised synthesizers: the lower stages do not move, so the top
    interface's loss is weight * reduce_n ||B * dL/dh_n||^2 and the task loss is the network's."""
    x, y = random_batch(IN_SHAPE, 8)
    method = build_method(name, IN_SHAPE, "fcn4", synth_reduction=reduction, synth_loss_weight=weight)
    loss, grad = top_input_gradient(copy.deepcopy(method.stages), x, y)
    metrics = method.step(x, y)
    per_example = (grad * 8).pow(2).sum(1)
    want = weight * (per_example.mean() if reduction == "mean" else per_example.sum())
    torch.testing.assert_close(metrics["train_loss"], loss.detach())
    torch.testing.assert_close(metrics[f"synth_loss/h{len(method.stages) - 1}"], want)


@pytest.mark.parametrize("name", ["unlock_dni", "unlock_cdni"])
@pytest.mark.parametrize("reduction, weight", [("mean", 1.0), ("sum", 0.5)])
def test_unlock_step_reports_task_loss_and_input_loss(name, reduction, weight):
    """The task loss is the top stage's on its synthetic input; I_2 is regressed towards the first
    stage's real output: weight * reduce_n ||I_2(x) - f_1(x)||^2 (synth_reduction for both kinds)."""
    x, y = random_batch(IN_SHAPE, 8)
    method = build_method(name, IN_SHAPE, "fcn4", synth_reduction=reduction, input_loss_weight=weight)
    before = copy.deepcopy(method)
    metrics = method.step(x, y)
    with torch.no_grad():
        task = F.cross_entropy(before.stages[-1](before.inputs[-1].model(x)), y)
        per_example = (before.inputs[0].model(x) - before.stages[0](x)).pow(2).sum(1)
    torch.testing.assert_close(metrics["train_loss"], task)
    want = weight * (per_example.mean() if reduction == "mean" else per_example.sum())
    torch.testing.assert_close(metrics["input_loss/h1"], want)


@pytest.mark.parametrize("name", ["dni", "cdni", "unlock_dni", "unlock_cdni"])
@pytest.mark.parametrize("p_update", [1.0, 0.5])
def test_optimizers_per_role_their_models_and_rates(name, p_update):
    """The fused step (p_update = 1) has one optimizer per role over all its models; the per-stage
    path (p_update < 1) one per interface, over exactly that interface's model. Either way at the
    role's own rate (synth_lr, input_lr), and every one of them is in optimizer_roles (the schedule
    scales only those)."""
    unlock = name.startswith("unlock")
    method = build_method(name, IN_SHAPE, "fcn4", lr=1e-2, p_update=p_update, synth_lr=0.05,
                          **({"input_lr": 0.02} if unlock else {}))
    roles = method.optimizer_roles()
    kinds = [("synth", [i.optimizer for i in method.interfaces], method.synthesizers, 0.05)]
    if unlock:
        kinds.append(("input", [f.optimizer for f in method.inputs], [f.model for f in method.inputs], 0.02))
    for role, optimizers, models, lr in kinds:
        assert [g["lr"] for opt in roles[role] for g in opt.param_groups] == [lr] * len(roles[role])
        held = [{id(p) for g in opt.param_groups for p in g["params"]} for opt in roles[role]]
        if p_update == 1.0:
            assert len(roles[role]) == 1 and all(opt is roles[role][0] for opt in optimizers)
            assert held == [{id(p) for m in models for p in m.parameters()}]
        else:
            assert [id(o) for o in roles[role]] == [id(o) for o in optimizers] and len(set(map(id, optimizers))) == 3
            assert held == [{id(p) for p in m.parameters()} for m in models]
