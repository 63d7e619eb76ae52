"""dnibench/loop.py LogWindow: the loop skeleton train_ff and the parallel workers share (schedule,
metric sums, log-point averages, divergence)."""
import pytest
import torch

from dnibench.errors import Diverged
from dnibench.loop import LogWindow
from dnibench.suite import RunSpec, TrainSettings


def spec(steps=10) -> RunSpec:
    return RunSpec(suite="t", profile="smoke", task="mnist", model="fcn3", method="bprop", method_args={},
                   train=TrainSettings(steps=steps, batch_size=8, lr=0.1, lr_decay_at=[4, 8], lr_decay_factor=0.5,
                                       eval_every=5, log_every=3),
                   seed=0, device="cpu")


def test_schedule_sums_and_log_points():
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [w], "lr": 0.1}, {"params": [], "lr": 0.02}])
    window = LogWindow(spec(), [opt], torch.device("cpu"))
    rates, rows = [], []
    for step in range(1, 11):
        rates.append(window.lr(step))
        window.add(step, {"loss": torch.tensor(float(step))})
        is_log, is_eval = window.points(step)
        if is_log:
            row, n, seconds = window.close()
            assert seconds >= 0
            rows.append((step, is_eval, row, n))
    assert rates == pytest.approx([0.1] * 3 + [0.05] * 4 + [0.025] * 3)
    # every group scaled from its own base rate
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.025, 0.005])
    # log every 3, evaluate every 5 and at the last step: averages over each window and its step count
    assert [(s, e, n) for s, e, _, n in rows] == [(3, False, 3), (5, True, 2), (6, False, 1), (9, False, 3),
                                                  (10, True, 1)]
    assert [r["loss"] for _, _, r, _ in rows] == pytest.approx([2.0, 4.5, 6.0, 8.0, 10.0])


def test_a_non_finite_step_is_named_at_the_log_point():
    window = LogWindow(spec(), [], torch.device("cpu"))
    window.add(1, {"loss": torch.tensor(1.0)})
    window.add(2, {"loss": torch.tensor(float("nan"))})
    with pytest.raises(Diverged) as err:
        window.close()
    assert err.value.step == 2
