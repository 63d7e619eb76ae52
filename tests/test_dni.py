"""The DNI core against autograd: oracle synthesizers reproduce backprop exactly, bootstrapped
targets equal the next synthetic gradient back-propagated, zero-initialised synthesizers predict zero."""
import copy

import pytest
import torch
from torch import nn

from dnibench.dni import BackwardInterface, Synthesizer, synthetic_gradient_loss
from tiny_methods import build_method, random_batch, true_forward

IN_SHAPE = (1, 28, 28)


def make(method: str, model: str = "fcn4", seed: int = 0, **settings):
    return build_method(method, IN_SHAPE, model, seed, **settings)


def batch(n=16, seed=1):
    return random_batch(IN_SHAPE, n, seed)


class Oracle(nn.Module):
    """A 'synthesizer' that returns the true per-example gradient (B * dL/dh) it was given."""

    def __init__(self, gradient):
        super().__init__()
        self.gradient = gradient

    def forward(self, h, context=None):
        return self.gradient * h.shape[0]


def params(method):
    return [p.detach().clone() for p in method.stages.parameters()]


@pytest.mark.parametrize("model", ["fcn4", "fcn6", "cnn3"])
def test_oracle_synthesizer_reproduces_backprop_updates(model):
    x, y = batch()
    bprop, dni = make("bprop", model), make("dni", model)
    dni.stages.load_state_dict(bprop.stages.state_dict())
    for step in range(3):                      # several steps: Adam state must evolve identically too
        _, grads = true_forward(dni.stages, x, y)
        for iface, grad in zip(dni.interfaces, grads):
            iface.synthesizer, iface.optimizer = Oracle(grad), None
        bprop.step(x, y)
        dni.step(x, y)
        for a, b in zip(params(bprop), params(dni)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bootstrapped_target_is_next_synthetic_gradient_backpropagated():
    x, y = batch()
    dni = make("dni", "fcn4", synth_hidden_layers=1, synth_width=32)
    for synth in dni.synthesizers:             # non-zero synthesizers, so the targets are not trivial
        nn.init.normal_(synth.net[-1].weight, std=0.1)
    before = copy.deepcopy(dni)
    received = {}
    for i, iface in enumerate(dni.interfaces):
        original = iface.receive
        iface.receive = lambda g, i=i, original=original: (received.__setitem__(i, g.clone()), original(g))[1]
    dni.step(x, y)

    # Expected, by autograd on the untouched copy: forward to h_{i-1}, then the synthetic gradient at h_i
    # (M_{i+1}(h_i) / B) pulled back through stage i; at the top, the true loss gradient.
    hs, h = [x], x
    for stage in before.stages:
        h = stage(h)
        hs.append(h)
    top = len(before.stages) - 1
    for i in range(1, len(before.stages)):
        h_in = hs[i].detach().requires_grad_(True)
        h_out = before.stages[i](h_in)
        if i == top:
            expected, = torch.autograd.grad(nn.functional.cross_entropy(h_out, y), h_in)
        else:
            synthetic = before.synthesizers[i](h_out.detach()) / x.shape[0]
            expected, = torch.autograd.grad(h_out, h_in, synthetic)
        assert expected.abs().sum() > 0
        torch.testing.assert_close(received[i - 1], expected, rtol=1e-5, atol=1e-7)


def test_zero_initialised_synthesizers_leave_lower_stages_unchanged_on_first_step():
    x, y = batch()
    dni = make("dni", "fcn4")
    for synth in dni.synthesizers:
        assert synth.net[-1].weight.abs().sum() == 0 and synth.net[-1].bias.abs().sum() == 0
    before = [copy.deepcopy(s.state_dict()) for s in dni.stages]
    dni.step(x, y)
    for i, stage in enumerate(dni.stages):
        changed = any(not torch.equal(before[i][k], v) for k, v in stage.state_dict().items() if "running" not in k
                      and "num_batches" not in k)
        assert changed == (i == len(dni.stages) - 1), f"stage {i}"
    # ... and the synthesizers did learn from their targets, so the second step moves the lower stages.
    assert any(s.net[-1].weight.abs().sum() > 0 for s in dni.synthesizers)


def test_nobprop_changes_only_the_last_layer():
    x, y = batch()
    method = make("nobprop", "fcn5")
    before = [copy.deepcopy(s) for s in method.stages]
    for _ in range(3):
        method.step(x, y)
    for i, (old, new) in enumerate(zip(before, method.stages)):
        same = all(torch.equal(a, b) for a, b in zip(old.parameters(), new.parameters()))
        assert same == (i < len(method.stages) - 1), f"stage {i}"


def test_cdni_synthesizer_sees_the_label():
    x, y = batch()
    cdni = make("cdni", "fcn4")
    synth = cdni.synthesizers[0]
    assert synth.context_dim == 10
    nn.init.normal_(synth.net[-1].weight)
    h = cdni.stages[0](x)
    other = (y + 1) % 10
    out_y = cdni.interfaces[0].send(h, nn.functional.one_hot(y, 10).float())
    out_other = cdni.interfaces[0].send(h, nn.functional.one_hot(other, 10).float())
    assert not torch.allclose(out_y, out_other)
    with pytest.raises(ValueError, match="context"):
        synth(h)


def test_conv_synthesizer_with_label_channels():
    synth = Synthesizer((4, 7, 7), hidden_layers=2, context_dim=10)
    nn.init.normal_(synth.net[-1].weight)
    h = torch.randn(3, 4, 7, 7)
    c = nn.functional.one_hot(torch.tensor([0, 1, 2]), 10).float()
    out = synth(h, c)
    assert out.shape == h.shape
    assert synth.net[0].in_channels == 14       # 4 feature channels + 10 constant label channels


def test_synthetic_gradient_loss_reductions():
    pred, target = torch.zeros(4, 3), torch.ones(4, 3)
    assert synthetic_gradient_loss(pred, target, "mean").item() == pytest.approx(3.0)
    assert synthetic_gradient_loss(pred, target, "sum").item() == pytest.approx(12.0)


def test_interface_regresses_towards_its_target():
    torch.manual_seed(0)
    synth = Synthesizer((5,), hidden_layers=0)
    iface = BackwardInterface(synth, torch.optim.SGD(synth.parameters(), lr=0.1))
    h = torch.randn(32, 5)
    target = h @ torch.randn(5, 5) / 32           # a linear map a linear synthesizer can learn (batch gradient)
    losses = []
    for _ in range(200):
        iface.send(h)
        losses.append(iface.receive(target).item())
    assert losses[-1] < 0.01 * losses[0]


@pytest.mark.parametrize("B", [4, 16])
def test_regression_target_is_the_per_example_gradient(B):
    """The interface receives a batch gradient (per-example gradient / B, as L is a batch mean) and
    must regress towards the per-example gradient itself: one SGD step from a zero synthesizer,
    checked against the hand-computed loss and step with target = batch_gradient * B."""
    g = torch.Generator().manual_seed(B)
    h, per_example = torch.randn(B, 5, generator=g), torch.randn(B, 5, generator=g)
    synth = Synthesizer((5,), hidden_layers=0)
    lr = 0.1
    iface = BackwardInterface(synth, torch.optim.SGD(synth.parameters(), lr=lr))
    iface.send(h)
    loss = iface.receive(per_example / B)
    # Zero prediction: loss = mean_n ||p_n||^2; d/dW = -2/B sum_n p_n h_n^T; d/db = -2 mean_n p_n.
    assert loss.item() == pytest.approx(per_example.pow(2).sum(1).mean().item(), rel=1e-6)
    torch.testing.assert_close(synth.net[-1].bias.detach(), 2 * lr * per_example.mean(0))
    torch.testing.assert_close(synth.net[-1].weight.detach(), 2 * lr * per_example.T @ h / B)


def test_trained_synthesizer_predicts_the_per_example_gradient_whatever_the_batch_size():
    """A linear per-example gradient p = h A: trained on batch gradients at B = 4 and B = 16, the
    synthesizer converges to the same prediction h A (not to h A / B), and the gradient it then
    injects is the batch gradient h A / B."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(4, 4, generator=g) * 0.5
    probe = torch.randn(16, 4, generator=g)
    for B in (4, 16):
        torch.manual_seed(0)
        synth = Synthesizer((4,), hidden_layers=0)
        iface = BackwardInterface(synth, torch.optim.SGD(synth.parameters(), lr=0.05))
        for _ in range(400):
            h = torch.randn(B, 4, generator=g)
            iface.send(h)
            iface.receive(h @ A / B)
        with torch.no_grad():
            torch.testing.assert_close(synth(probe), probe @ A, rtol=0, atol=2e-3)
            torch.testing.assert_close(iface.send(probe[:B]), probe[:B] @ A / B, rtol=0, atol=2e-3 / B)
