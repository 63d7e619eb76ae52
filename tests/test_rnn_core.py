"""The recurrent DNI window against autograd on a fully unrolled LSTM (paper §3.2):
an oracle synthesizer (the true future gradient) gives full BPTT's gradient, a zero synthesizer gives
truncated BPTT's, and the bootstrapped target is the true gradient inside the window plus the next
synthetic gradient back-propagated."""
import pytest
import torch
import torch.nn.functional as F

from dnibench.methods import get_method
from dnibench.rnn.core import LSTMCore, backward_window

T, WINDOWS, B, IN, H, OUT = 3, 4, 5, 4, 6, 3


def loss_fn_for(y):
    return lambda logits: F.cross_entropy(logits.reshape(-1, OUT), y.reshape(-1), reduction="none").view(y.shape)


@pytest.fixture
def problem():
    torch.manual_seed(0)
    core = LSTMCore(IN, H, OUT).double()
    x = torch.randn(WINDOWS, T, B, IN, dtype=torch.float64)
    y = torch.randint(0, OUT, (WINDOWS, T, B))
    s0 = torch.randn(B, 2 * H, dtype=torch.float64) * 0.5
    return core, x, y, s0


def unrolled(core, x, y, s0):
    """Full BPTT: every window in one graph. Returns the total loss and the boundary states s_1..s_K."""
    s, total, boundaries = s0, 0.0, []
    for k in range(WINDOWS):
        logits, s, _ = core(x[k], s)
        boundaries.append(s)
        total = total + loss_fn_for(y[k])(logits).sum(0).mean()
    return total, boundaries


def grads(core):
    out = [p.grad.clone() for p in core.parameters()]
    core.zero_grad(set_to_none=True)
    return out


def test_oracle_synthesizer_gives_full_bptt(problem):
    core, x, y, s0 = problem
    total, boundaries = unrolled(core, x, y, s0)
    full = torch.autograd.grad(total, list(core.parameters()), retain_graph=True)
    # The oracle: the true per-example gradient of all later losses at each boundary state.
    # The last boundary has no future inside the sequence: its true gradient is zero.
    oracle = [torch.zeros_like(s) if g is None else g * B
              for s, g in zip(boundaries, torch.autograd.grad(total, boundaries, allow_unused=True))]
    s, targets = s0, []
    for k in range(WINDOWS):
        result = backward_window(core, s, x[k], loss_fn_for(y[k]), lambda _s, k=k: oracle[k], scale=1.0)
        targets.append(result.target)
        s = result.state
    for got, want in zip(grads(core), full):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    # With an exact synthesizer the bootstrapped target at s_k is the true gradient there too.
    for k in range(1, WINDOWS):
        torch.testing.assert_close(targets[k], oracle[k - 1], rtol=1e-9, atol=1e-12)
    assert max(float(g.abs().max()) for g in oracle[:-1]) > 1e-3     # the oracle carries real signal


def test_zero_synthesizer_gives_truncated_bptt(problem):
    core, x, y, s0 = problem
    want = [torch.zeros_like(p) for p in core.parameters()]
    s = s0
    for k in range(WINDOWS):                       # truncated BPTT by hand: the state detached per window
        logits, s_next, _ = core(x[k], s.detach())
        for acc, g in zip(want, torch.autograd.grad(loss_fn_for(y[k])(logits).sum(0).mean(), list(core.parameters()))):
            acc += g
        s = s_next
    s = s0
    for k in range(WINDOWS):
        s = backward_window(core, s, x[k], loss_fn_for(y[k]), lambda st: torch.zeros_like(st), scale=0.1).state
    got = grads(core)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)
    total, _ = unrolled(core, x, y, s0)            # and truncated BPTT is not full BPTT here
    full = torch.autograd.grad(total, list(core.parameters()))
    assert any(not torch.allclose(g, f, rtol=1e-3) for g, f in zip(got, full))


@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_bootstrapped_target(problem, scale):
    core, x, y, s0 = problem
    weight = torch.randn(2 * H, 2 * H, dtype=torch.float64)
    synth = lambda s: s @ weight                   # a non-trivial linear synthesizer  # noqa: E731
    result = backward_window(core, s0, x[0], loss_fn_for(y[0]), synth, scale=scale)
    s_in = s0.clone().requires_grad_(True)
    logits, s_out, _ = core(x[0], s_in)
    inside = torch.autograd.grad(loss_fn_for(y[0])(logits).sum(0).mean(), s_in, retain_graph=True)[0]
    through = torch.autograd.grad(s_out, s_in, grad_outputs=scale * synth(s_out.detach()) / B)[0]
    torch.testing.assert_close(result.target, (inside + through) * B, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(result.synthetic, synth(s_out.detach()))
    assert float((through * B).abs().max()) > 1e-4     # the synthetic part is really there


def test_aux_trains_the_lstm_but_not_the_target(problem):
    core, x, y, s0 = problem
    synth = lambda s: s * 0.3                      # noqa: E731
    plain = backward_window(core, s0, x[0], loss_fn_for(y[0]), synth, scale=0.1)
    g_plain = grads(core)
    head = torch.nn.Linear(H, 2 * H).double()
    aux = backward_window(core, s0, x[0], loss_fn_for(y[0]), synth, scale=0.1, aux_head=head, aux_weight=1.0)
    g_aux = grads(core)
    torch.testing.assert_close(aux.target, plain.target)
    assert aux.aux_loss > 0 and head.weight.grad is not None
    h1 = core(x[0][:1], s0)[2][0]
    want = torch.autograd.grad(((head(h1) - synth(plain.state)) ** 2).sum(1).mean(), list(core.parameters()),
                               allow_unused=True)                 # the read-out plays no part in the aux task
    for ga, gp, w in zip(g_aux, g_plain, want):
        w = torch.zeros_like(ga) if w is None else w
        torch.testing.assert_close(ga - gp, w, rtol=1e-7, atol=1e-10)


def test_fresh_dni_takes_the_bptt_step():
    """The synthesizer starts at zero (zero-initialised final layer), so DNI's first update is BPTT's."""
    x = torch.randn(T, B, IN)
    y = torch.randint(0, OUT, (T, B))
    params = {}
    for name in ["bptt", "dni_bptt", "dni_bptt_aux"]:
        torch.manual_seed(0)
        core = LSTMCore(IN, H, OUT)
        cls = get_method(name)
        method = cls(core, cls.Settings(T=T), lr=1e-2)
        metrics = method.window(x, loss_fn_for(y))
        assert metrics["losses"].shape == (T, B)
        params[name] = [p.detach().clone() for p in core.parameters()]
    for a, b in zip(params["bptt"], params["dni_bptt"]):
        torch.testing.assert_close(a, b)
    # The aux loss is zero against a zero synthetic gradient only if the head predicts zero: it does not,
    # so DNI+Aux moves the LSTM differently from the first step on.
    assert any(not torch.allclose(a, b) for a, b in zip(params["bptt"], params["dni_bptt_aux"]))


# ---- The method's window: which state the synthesizer learns at, and the settings it must obey ----

def sgd_method(name, s0, **settings):
    """``name`` on a seeded float32 LSTM, every optimizer swapped for SGD(lr=1) so that a step is
    exactly minus the gradient, the carried state set to ``s0``; and an untouched copy of the LSTM."""
    import copy

    torch.manual_seed(0)
    core = LSTMCore(IN, H, OUT)
    cls = get_method(name)
    method = cls(core, cls.Settings(T=T, **settings), lr=1e-3)
    method.optimizer = torch.optim.SGD(method.trained_parameters(), lr=1.0)
    if hasattr(method, "synth"):
        method.synth.optimizer = torch.optim.SGD(method.synth.synthesizer.parameters(), lr=1.0)
    method.state = s0.clone()
    return method, copy.deepcopy(core)


def window_data(seed=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(T, B, IN, generator=g), torch.randint(0, OUT, (T, B), generator=g),
            torch.randn(B, 2 * H, generator=g))


def test_synthesizer_is_regressed_at_the_windows_start_state():
    """delta_hat(s_in) is what the target at s_in trains: the regression input is the state the window
    started from, not the one it ended in. Zero-initialised synthesizer, so the target is the true
    in-window gradient alone (B * dL/ds_in), and one SGD step of the linear synthesizer from zero is
    W = 2/B * target^T s_in, b = 2 * mean(target)."""
    x, y, s0 = window_data()
    method, before = sgd_method("dni_bptt", s0)
    metrics = method.window(x, loss_fn_for(y))
    s_in = s0.clone().requires_grad_(True)
    logits, _, _ = before(x, s_in)
    target = torch.autograd.grad(loss_fn_for(y)(logits).sum(0).mean(), s_in)[0] * B
    final = method.synth.synthesizer.net[-1]
    torch.testing.assert_close(metrics["synth_loss"], target.pow(2).sum(1).mean(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(final.weight.detach(), 2 * target.T @ s0 / B, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(final.bias.detach(), 2 * target.mean(0), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("scale", [0.1, 0.5])
def test_method_injects_its_synth_scale(scale):
    """The LSTM's step is minus the gradient of  L + synth_scale * <delta_hat(s_out), s_out> / B."""
    x, y, s0 = window_data()
    method, before = sgd_method("dni_bptt", s0, synth_scale=scale)
    weight = torch.randn(2 * H, 2 * H, generator=torch.Generator().manual_seed(5)) * 0.5
    with torch.no_grad():
        method.synth.synthesizer.net[-1].weight.copy_(weight)        # a non-zero synthetic gradient
    method.window(x, loss_fn_for(y))
    logits, s_out, _ = before(x, s0)
    synthetic = s_out.detach() @ weight.T
    objective = loss_fn_for(y)(logits).sum(0).mean() + scale * (s_out * synthetic).sum() / B
    want = torch.autograd.grad(objective, list(before.parameters()))
    for old, new, g in zip(before.parameters(), method.core.parameters(), want):
        torch.testing.assert_close(new.detach(), old.detach() - g, rtol=1e-4, atol=1e-6)
    assert float(synthetic.abs().max()) > 1e-2                          # the scaled part is really there


@pytest.mark.parametrize("name", ["bptt", "dni_bptt_aux"])
def test_clip_norm_bounds_the_lstm_step(name):
    """clip_norm rescales the whole gradient of the trained parameters (LSTM, read-out, DNI+Aux head)
    to that norm when it is larger: with SGD(lr=1) the step has exactly that norm and the gradient's
    direction; a bound above the gradient's norm leaves the step as it is."""
    x, y, s0 = window_data()
    steps = {}
    for clip in (None, 1e-2, 1e3):
        method, _ = sgd_method(name, s0, **({} if clip is None else {"clip_norm": clip}))
        old = [p.detach().clone() for p in method.trained_parameters()]
        method.window(x, loss_fn_for(y))
        steps[clip] = torch.cat([(p.detach() - o).flatten() for p, o in zip(method.trained_parameters(), old)])
    full = steps[None]
    assert float(full.norm()) > 0.1
    torch.testing.assert_close(steps[1e-2].norm(), torch.tensor(1e-2), rtol=1e-4, atol=0)
    torch.testing.assert_close(steps[1e-2], full * (1e-2 / full.norm()), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(steps[1e3], full)
