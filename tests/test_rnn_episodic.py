"""Episodic Copy tasks (task_args.reset_state): a stream's LSTM state is zeroed as it starts an
episode, inside the window, so autograd cuts the gradient at the restart and the bootstrapped
target of a restarting stream is the true gradient before the restart alone."""
import pytest
import torch
import yaml

from dnibench.dni import synthetic_gradient_loss
from dnibench.errors import SuiteError
from dnibench.rnn.core import LSTMCore, backward_window
from dnibench.rnn.tasks import Curriculum, EpisodeStreams
from dnibench.suite import load_suite, plan
from dnibench.tasks import get_task
from tiny_methods import window_loss

T, B, IN, H, OUT = 4, 5, 3, 6, 2
# stream 0 restarts at step 2, stream 1 at step 0, stream 3 at steps 1 and 3; streams 2 and 4 run on
RESET = torch.zeros(T, B, dtype=torch.float64)
RESET[2, 0] = RESET[0, 1] = RESET[1, 3] = RESET[3, 3] = 1
RESTARTS, RUNS_ON = [0, 1, 3], [2, 4]


@pytest.fixture
def problem():
    torch.manual_seed(0)
    core = LSTMCore(IN, H, OUT).double()
    x = torch.randn(T, B, IN, dtype=torch.float64)
    y = torch.randint(0, OUT, (T, B))
    s_in = torch.randn(B, 2 * H, dtype=torch.float64)
    return core, x, window_loss(y), s_in


def test_reset_starts_the_step_from_zeros(problem):
    core, x, _, s_in = problem
    logits, s_out, _ = core(x, s_in, RESET)
    zeros = core.initial_state(1).double()
    fresh_logits, fresh_out, _ = core(x[2:, :1], zeros)            # stream 0 from its restart at step 2
    torch.testing.assert_close(logits[2:, :1], fresh_logits, rtol=0, atol=1e-12)
    torch.testing.assert_close(s_out[:1], fresh_out, rtol=0, atol=1e-12)
    on_logits, on_out, _ = core(x[:, 2:3], s_in[2:3])              # stream 2 runs on from s_in
    torch.testing.assert_close(logits[:, 2:3], on_logits, rtol=0, atol=1e-12)


def test_no_gradient_reaches_the_input_state_across_a_reset(problem):
    core, x, _, s_in = problem
    s_in = s_in.clone().requires_grad_(True)
    _, s_out, _ = core(x, s_in, RESET)
    grad = torch.autograd.grad(s_out.sum(), s_in)[0]
    assert torch.equal(grad[RESTARTS], torch.zeros_like(grad[RESTARTS]))
    assert (grad[RUNS_ON].abs().sum(1) > 1e-3).all()


@pytest.mark.parametrize("scale,discount", [(0.1, 1.0), (0.1, None), (1.0, 1.0)])
def test_target_of_a_restarting_stream_is_the_in_window_gradient(problem, scale, discount):
    core, x, loss_fn, s_in = problem
    delta = torch.randn(B, 2 * H, dtype=torch.float64)
    result = backward_window(core, s_in, x, loss_fn, lambda s: delta, scale=scale, discount=discount, reset=RESET)
    # Autograd: the window's loss alone, and the loss plus the next synthetic gradient at weight discount.
    s = s_in.clone().requires_grad_(True)
    logits, s_out, _ = core(x, s, RESET)
    in_window = torch.autograd.grad(loss_fn(logits).sum(0).mean(), s, retain_graph=True)[0] * B
    bootstrap = torch.autograd.grad((s_out * delta).sum() * (scale if discount is None else discount), s)[0]
    torch.testing.assert_close(result.target[RESTARTS], in_window[RESTARTS], rtol=0, atol=1e-12)
    torch.testing.assert_close(result.target[RUNS_ON], in_window[RUNS_ON] + bootstrap[RUNS_ON], rtol=1e-9, atol=1e-12)
    assert (bootstrap[RUNS_ON].abs().sum(1) > 1e-3).all()        # the comparison above can tell them apart
    assert in_window[0].abs().sum() > 1e-3                         # stream 0 has losses before its restart
    assert torch.equal(in_window[1], torch.zeros_like(in_window[1]))   # stream 1 restarts at once


def test_aux_first_step_sees_the_reset(problem):
    core, x, loss_fn, s_in = problem
    delta = torch.randn(B, 2 * H, dtype=torch.float64)
    head = torch.nn.Linear(H, 2 * H).double()
    result = backward_window(core, s_in, x, loss_fn, lambda s: delta, scale=0.1, discount=1.0,
                             aux_head=head, reset=RESET)
    first = core(x[:1], s_in, RESET[:1])[2][0]                     # stream 1 restarts at step 0
    torch.testing.assert_close(result.aux_loss, synthetic_gradient_loss(head(first), delta).detach())
    carried = core(x[:1], s_in)[2][0]                              # without the reset: another value
    assert not torch.allclose(synthetic_gradient_loss(head(carried), delta), result.aux_loss)


def test_streams_mark_episode_starts_after_each_end_marker():
    cur = Curriculum(repeat=False)
    streams = EpisodeStreams(6, 3, cur, torch.Generator().manual_seed(0))
    x, y, mask, _ = streams.window(30)
    end = y[:, :, -1]
    assert streams.starts.shape == (30, 6)
    first = streams.starts.argmax(0)                               # the first start, after the idle steps
    expected = torch.zeros(30, 6)
    expected[1:] = end[:-1]                                        # then the step after each end marker
    expected[first, torch.arange(6)] = 1
    torch.testing.assert_close(streams.starts, expected, rtol=0, atol=0)
    assert end.sum() >= 6 * 5                                      # episodes of 4 steps: many restarts seen
    for b in range(6):
        assert x[:first[b], b].abs().sum() == 0                    # nothing is read before a stream starts


def _suite(tmp_path, task_args):
    suite = {"name": "ep", "task": "copy", "train": {"steps": 12, "batch_size": 4, "lr": 3e-3, "log_every": 4},
             "task_args": {"threshold_bpc": 8.5, "check_every": 3, **task_args},
             "profiles": {"smoke": {}, "quick": {}, "paper": {}},
             "entries": [{"model": "lstm8", "method": "dni_bptt_aux", "args": {"dni_bptt_aux": {"T": 3}}}]}
    path = tmp_path / "ep.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def _rows(tmp_path, task_args):
    spec = plan(load_suite(_suite(tmp_path, task_args)), "smoke", device="cpu")[0]
    rows = []
    get_task("copy").train(spec, None, lambda row, step: rows.append((step, {k: v for k, v in row.items()
                                                                              if "bpc" in k or "synth" in k})))
    return rows


def test_default_runs_on_and_reset_changes_training(tmp_path):
    default = _rows(tmp_path, {})
    assert _rows(tmp_path, {"reset_state": False}) == default     # the default is the running-on layout
    assert _rows(tmp_path, {"reset_state": True}) != default


def test_reset_state_must_be_a_boolean(tmp_path):
    with pytest.raises(SuiteError) as err:
        plan(load_suite(_suite(tmp_path, {"reset_state": "yes"})), "smoke")
    assert "reset_state" in str(err.value) and "\n" not in str(err.value)


def test_shipped_copy_suites_start_each_episode_from_zero():
    # The README: Copy and Repeat Copy episodes each start from a zero LSTM state, the suites' setting.
    for path in ("suites/rnn_copy.yaml", "suites/rnn_repeat_copy.yaml"):
        for profile in ("smoke", "quick", "paper"):
            specs = plan(load_suite(path), profile)
            assert specs and all(s.task_args.get("reset_state") is True for s in specs), (path, profile)
