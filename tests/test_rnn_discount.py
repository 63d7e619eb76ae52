"""Recurrent DNI's two numbers (paper §3.2): the injection scale weighs the synthetic gradient in the
LSTM's update, the target discount weighs it in the bootstrapped target. Checked against autograd
on one window in float64."""
import pytest
import torch

from dnibench.methods import get_method
from dnibench.rnn.core import LSTMCore, backward_window
from tiny_methods import window_loss

T, B, IN, H, OUT = 3, 5, 4, 6, 3




@pytest.fixture
def window():
    torch.manual_seed(1)
    core = LSTMCore(IN, H, OUT).double()
    x = torch.randn(T, B, IN, dtype=torch.float64)
    y = torch.randint(0, OUT, (T, B))
    s0 = torch.randn(B, 2 * H, dtype=torch.float64) * 0.5
    weight = torch.randn(2 * H, 2 * H, dtype=torch.float64)
    return core, x, y, s0, (lambda s: s @ weight)         # a non-trivial linear synthesizer


def autograd_reference(core, x, y, s0, synth, weight_on_synthetic):
    """Gradients of  window loss + w * <delta_hat(s_out), s_out> / B  at s_in (per example) and at the
    LSTM's parameters, by plain autograd on a fresh graph."""
    s_in = s0.clone().requires_grad_(True)
    logits, s_out, _ = core(x, s_in)
    objective = window_loss(y)(logits).sum(0).mean() + weight_on_synthetic * (s_out * synth(s_out.detach())).sum() / B
    params = list(core.parameters())
    grads = torch.autograd.grad(objective, [s_in, *params])
    return grads[0] * B, list(grads[1:])


def run_window(core, x, y, s0, synth, **kw):
    core.zero_grad(set_to_none=True)
    result = backward_window(core, s0, x, window_loss(y), synth, **kw)
    return result, [p.grad.clone() for p in core.parameters()]


def test_undiscounted_target_and_scaled_lstm_gradient(window):
    core, x, y, s0, synth = window
    result, lstm_grads = run_window(core, x, y, s0, synth, scale=0.1, discount=1.0)
    target, _ = autograd_reference(core, x, y, s0, synth, 1.0)          # the paper's target
    _, want_grads = autograd_reference(core, x, y, s0, synth, 0.1)      # the LSTM sees 0.1 of the future
    torch.testing.assert_close(result.target, target, rtol=1e-9, atol=1e-12)
    for got, want in zip(lstm_grads, want_grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    # The two readings really differ here: the discounted target is a different number.
    discounted, _ = autograd_reference(core, x, y, s0, synth, 0.1)
    assert float((target - discounted).abs().max()) > 1e-3


def test_discount_equal_to_scale_is_the_single_backward_reading(window):
    core, x, y, s0, synth = window
    coupled, coupled_grads = run_window(core, x, y, s0, synth, scale=0.1)          # discount None: = scale
    explicit, explicit_grads = run_window(core, x, y, s0, synth, scale=0.1, discount=0.1)
    target, want_grads = autograd_reference(core, x, y, s0, synth, 0.1)
    for result in (coupled, explicit):
        torch.testing.assert_close(result.target, target, rtol=1e-9, atol=1e-12)
    for a, b, want in zip(coupled_grads, explicit_grads, want_grads):
        torch.testing.assert_close(a, want, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(b, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("scale, discount", [(0.1, 0.0), (0.5, 0.25), (1.0, 0.3)])
def test_any_scale_and_discount_against_autograd(window, scale, discount):
    core, x, y, s0, synth = window
    result, lstm_grads = run_window(core, x, y, s0, synth, scale=scale, discount=discount)
    target, _ = autograd_reference(core, x, y, s0, synth, discount)
    _, want_grads = autograd_reference(core, x, y, s0, synth, scale)
    torch.testing.assert_close(result.target, target, rtol=1e-9, atol=1e-12)
    for got, want in zip(lstm_grads, want_grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_aux_stays_out_of_the_discounted_target(window):
    core, x, y, s0, synth = window
    plain, _ = run_window(core, x, y, s0, synth, scale=0.1, discount=1.0)
    head = torch.nn.Linear(H, 2 * H).double()
    aux, _ = run_window(core, x, y, s0, synth, scale=0.1, discount=1.0, aux_head=head)
    torch.testing.assert_close(aux.target, plain.target, rtol=1e-12, atol=1e-14)


def test_method_default_is_the_papers_undiscounted_target():
    settings = get_method("dni_bptt").Settings()
    assert settings.target_discount == 1.0 and settings.synth_scale == 0.1
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            get_method("dni_bptt").Settings(target_discount=bad)


@pytest.mark.parametrize("name", ["dni_bptt", "dni_bptt_aux"])
def test_method_passes_its_discount_to_the_target(name):
    """Two windows (the first trains the zero-initialised synthesizer, so the second one's synthetic
    gradient is non-zero): the synthesizer's second regression target must follow target_discount."""
    torch.manual_seed(0)
    x = torch.randn(2, T, B, IN)
    y = torch.randint(0, OUT, (2, T, B))
    losses = {}
    for discount in (1.0, 0.1):
        torch.manual_seed(0)
        cls = get_method(name)
        method = cls(LSTMCore(IN, H, OUT), cls.Settings(T=T, target_discount=discount), lr=1e-2)
        seen = []
        regress = method.synth.regress
        method.synth.regress = lambda s, target: (seen.append(target.clone()), regress(s, target))[1]
        for k in range(2):
            method.window(x[k], window_loss(y[k]))
        losses[discount] = seen
    torch.testing.assert_close(losses[1.0][0], losses[0.1][0])      # first window: the synthesizer says 0
    assert float((losses[1.0][1] - losses[0.1][1]).abs().max()) > 1e-6


def test_report_table_uses_the_default_reading_and_shows_the_other(tmp_path):
    import pandas as pd

    from dnibench.report import rnn as rnn_report
    from report_fixtures import report_context

    def row(method, T, length, discount=None, scale="0.1"):
        extra = {} if method == "bptt" else {"param.method_args.synth_scale": scale}
        if discount is not None:
            extra["param.method_args.target_discount"] = discount
        return {"task": "copy", "suite": "rnn_copy", "profile": "quick", "model": "lstm64", "method": method,
                "seed": 0, "param.method_args.T": str(T), "metric.max_len_solved": float(length), **extra}

    ctx = report_context(tmp_path, [row("bptt", 2, 6), row("dni_bptt", 2, 11, "1.0"), row("dni_bptt", 2, 7, "0.1"),
                                    row("dni_bptt_aux", 3, 12, "1.0"),
                                    row("dni_bptt_aux", 3, 8)])     # logged before the split: discount = synth_scale
    section = rnn_report.render(ctx)
    cells = pd.read_csv(tmp_path / "rnn_table_quick_cells.csv").set_index(["task", "method", "T"])
    assert cells.loc[("Copy", "DNI", 2), "measured"] == 11 and cells.loc[("Copy", "DNI", 2), "seeds"] == 1
    assert cells.loc[("Copy", "DNI+Aux", 3), "measured"] == 12
    assert "discount 1 (the paper's equation" in section.body
    note = section.body.split("Longest length solved under each reading")[1]
    assert "| Copy | DNI | 2 | 11 (1 seed) | 7 (1 seed) |" in note
    assert "| Copy | DNI+Aux | 3 | 12 (1 seed) | 8 (1 seed) |" in note
    assert "state runs on from one episode into the next" in section.body     # no reset_state logged: ran on
    ctx.runs["param.task_args.reset_state"] = "True"
    assert "zeroed at each episode start" in rnn_report.render(ctx).body
