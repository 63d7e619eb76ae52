"""Recurrent DNI details that `make mutation` (tests/MUTATION.md) showed no other test pinned: the
state carried from window to window, the zero initial state, the two-timescale message interface,
the auxiliary loss reported, backward_window's defaults and errors. Each number is computed by hand."""
import copy

import pytest
import torch

from dnibench.dni import BackwardInterface, synthetic_gradient_loss
from dnibench.methods import get_method
from dnibench.rnn.core import LSTMCore, backward_window
from tiny_methods import window_loss

T, B, IN, H, OUT = 3, 5, 4, 6, 3




def data(windows, batch=B, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(windows, T, batch, IN, generator=g), torch.randint(0, OUT, (windows, T, batch), generator=g)


def test_core_is_the_lstm_with_state_h_then_c_and_a_linear_readout():
    torch.manual_seed(0)
    core = LSTMCore(IN, H, OUT)
    x, _ = data(1)
    h, c = torch.randn(B, H), torch.randn(B, H)
    logits, s_out, outputs = core(x[0], torch.cat([h, c], 1))
    want_out, (h_n, c_n) = core.lstm(x[0], (h[None], c[None]))
    torch.testing.assert_close(outputs, want_out)
    torch.testing.assert_close(logits, core.readout(want_out))
    torch.testing.assert_close(s_out, torch.cat([h_n[0], c_n[0]], 1))
    zero = core.initial_state(2)
    assert zero.shape == (2, 2 * H) and zero.device.type == "cpu" and not zero.any()
    assert core.initial_state(2, "meta").device.type == "meta"


@pytest.mark.parametrize("name", ["bptt", "dni_bptt", "dni_bptt_aux"])
def test_windows_carry_the_state_and_each_update_sees_one_window(name):
    """Three windows of the method against the protocol written out: backward_window from the carried
    state (zero at first), regress the synthesizer at the window's first state, one Adam step of the
    LSTM on this window's gradient alone, carry the last state on."""
    x, y = data(3)
    torch.manual_seed(0)
    cls = get_method(name)
    settings = cls.Settings(T=T, synth_scale=0.5, target_discount=0.7) if name != "bptt" else cls.Settings(T=T)
    method = cls(LSTMCore(IN, H, OUT), settings, lr=1e-2)
    core = copy.deepcopy(method.core)
    head = copy.deepcopy(getattr(method, "aux_head", None))
    synth = copy.deepcopy(method.synth.synthesizer) if name != "bptt" else None
    params = [*core.parameters(), *([] if head is None else head.parameters())]
    opt = torch.optim.Adam(params, lr=1e-2)
    synth_opt = None if synth is None else torch.optim.Adam(synth.parameters(), lr=1e-2)
    s = torch.zeros(B, 2 * H)
    for k in range(3):
        got = method.window(x[k], window_loss(y[k]))
        predict = None if synth is None else (lambda st: synth(st).detach())
        kw = {} if synth is None else {"scale": 0.5, "discount": 0.7}
        result = backward_window(core, s, x[k], window_loss(y[k]), predict, aux_head=head, **kw)
        if synth is not None:
            loss = synthetic_gradient_loss(synth(s), result.target)
            synth_opt.zero_grad()
            loss.backward()
            synth_opt.step()
            torch.testing.assert_close(got["synth_loss"], loss.detach(), rtol=1e-4, atol=1e-6)
        opt.step()
        opt.zero_grad()
        s = result.state
        torch.testing.assert_close(got["losses"], result.losses, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(method.state, s, rtol=1e-4, atol=1e-6)
    for a, b in zip(method.trained_parameters(), params):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-4, atol=1e-6)
    assert s.abs().max() > 0.05                                   # a carried state that matters


def test_new_batch_size_starts_from_the_zero_state_on_the_inputs_device():
    x, y = data(1)
    x3, y3 = data(1, batch=3, seed=1)
    cls = get_method("dni_bptt")
    method = cls(LSTMCore(IN, H, OUT), cls.Settings(T=T), lr=1e-2)
    method.window(x[0], window_loss(y[0]))
    before = copy.deepcopy(method.core)
    seen = []
    initial_state = method.core.initial_state
    method.core.initial_state = lambda batch, device: (seen.append(device), initial_state(batch, device))[1]
    got = method.window(x3[0], window_loss(y3[0]))
    assert seen == [x3.device] and method.state.shape == (3, 2 * H)
    with torch.no_grad():
        want = window_loss(y3[0])(before(x3[0], torch.zeros(3, 2 * H))[0])
    torch.testing.assert_close(got["losses"], want)


def test_aux_loss_is_reported():
    """First window: the synthesizer predicts zero at s_out, so the auxiliary loss is
    aux_weight * mean_n ||head(LSTM output after step 1)||^2."""
    x, y = data(1)
    torch.manual_seed(0)
    cls = get_method("dni_bptt_aux")
    method = cls(LSTMCore(IN, H, OUT), cls.Settings(T=T, aux_weight=0.5), lr=1e-2)
    core, head = copy.deepcopy(method.core), copy.deepcopy(method.aux_head)
    got = method.window(x[0], window_loss(y[0]))
    with torch.no_grad():
        first = core(x[0][:1], torch.zeros(B, 2 * H))[2][0]
        want = 0.5 * head(first).pow(2).sum(1).mean()
    torch.testing.assert_close(got["aux_loss"], want)
    assert "aux_loss" not in get_method("dni_bptt")(LSTMCore(IN, H, OUT), get_method("dni_bptt").Settings(T=T),
                                                    lr=1e-2).window(x[0], window_loss(y[0]))


@pytest.mark.parametrize("synth_lr", [None, 0.05])
def test_message_interface_follows_the_settings(synth_lr):
    """The two-timescale system's A->B message: a synthesizer with the method's architecture, its own
    Adam at synth_lr (default: the run's lr), injecting prediction * synth_scale / B."""
    cls = get_method("dni_bptt")
    method = cls(LSTMCore(IN, H, OUT), cls.Settings(T=T, synth_hidden_layers=1, synth_width=8, synth_scale=0.3,
                                                    synth_lr=synth_lr), lr=1e-2)
    iface = method.message_interface(7)
    assert isinstance(iface, BackwardInterface) and iface.grad_scale == 0.3
    first = iface.synthesizer.net[0]
    assert (first.in_features, first.out_features) == (7, 8) and iface.synthesizer.net[-1].out_features == 7
    assert iface.optimizer.param_groups[0]["lr"] == (synth_lr or 1e-2)
    assert {id(p) for g in iface.optimizer.param_groups for p in g["params"]} == \
        {id(p) for p in iface.synthesizer.parameters()}
    torch.nn.init.normal_(iface.synthesizer.net[-1].weight)
    h = torch.randn(4, 7)
    injected = iface.send(h)
    with torch.no_grad():                                        # train-mode BN: batch statistics again
        torch.testing.assert_close(injected, iface.synthesizer(h) * 0.3 / 4)
    assert get_method("bptt")(LSTMCore(IN, H, OUT), get_method("bptt").Settings(T=T), lr=1e-2).message_interface(7) is None


def test_state_synthesizer_architecture_follows_the_settings():
    cls = get_method("dni_bptt")
    method = cls(LSTMCore(IN, H, OUT), cls.Settings(T=T, synth_hidden_layers=1, synth_width=8), lr=1e-2)
    net = method.synth.synthesizer.net
    assert (net[0].in_features, net[0].out_features, net[-1].out_features) == (2 * H, 8, 2 * H)


def test_backward_window_defaults_and_errors():
    """Defaults: injection scale 1, discount = scale, aux weight 1; plain truncated BPTT has no target;
    the auxiliary task without a synthesizer is refused."""
    torch.manual_seed(0)
    core = LSTMCore(IN, H, OUT).double()
    x, y = data(1)
    x, s0 = x[0].double(), torch.randn(B, 2 * H, dtype=torch.float64)
    weight = torch.randn(2 * H, 2 * H, dtype=torch.float64)
    head = torch.nn.Linear(H, 2 * H).double()

    def run(**kw):
        core.zero_grad(set_to_none=True)
        head.zero_grad(set_to_none=True)
        result = backward_window(core, s0, x, window_loss(y[0]), lambda s: s @ weight, aux_head=head, **kw)
        return result, [p.grad.clone() for p in [*core.parameters(), *head.parameters()]]

    default, default_grads = run()
    explicit, explicit_grads = run(scale=1.0, discount=1.0, aux_weight=1.0)
    torch.testing.assert_close(default.target, explicit.target)
    torch.testing.assert_close(default.aux_loss, explicit.aux_loss)
    for a, b in zip(default_grads, explicit_grads):
        torch.testing.assert_close(a, b)
    plain = backward_window(core, s0, x, window_loss(y[0]))
    assert plain.target is None and plain.synthetic is None and plain.aux_loss is None
    with pytest.raises(ValueError, match="needs a synthesizer"):
        backward_window(core, s0, x, window_loss(y[0]), aux_head=head)


def test_reset_in_a_window_longer_than_the_batch_is_one_step_at_a_time():
    """LSTMCore.forward with episode resets, T = 7 steps > B = 2 streams (the stretches end at T, not B):
    the same as stepping one step at a time and zeroing a stream's state where its episode restarts."""
    torch.manual_seed(0)
    core = LSTMCore(IN, H, OUT)
    steps, streams = 7, 2
    x = torch.randn(steps, streams, IN, generator=torch.Generator().manual_seed(1))
    reset = torch.zeros(steps, streams)
    reset[1, 0] = reset[5, 1] = 1.0
    s0 = torch.randn(streams, 2 * H)
    logits, s_out, outputs = core(x, s0, reset)
    s, want = s0, []
    for t in range(steps):
        s = s * (1 - reset[t])[:, None]
        _, s, out = core(x[t:t + 1], s)
        want.append(out)
    assert outputs.shape == (steps, streams, H)
    torch.testing.assert_close(outputs, torch.cat(want), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s_out, s, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits, core.readout(torch.cat(want)), rtol=1e-5, atol=1e-6)
