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


def test_means_per_metric_over_the_steps_that_logged_it_and_no_graph_kept():
    """Each metric's mean is over the steps that logged it (a synthesizer's loss may be missing on some steps),
    and a step's value is kept without its graph until the log point."""
    window = LogWindow(spec(), [], torch.device("cpu"))
    w = torch.nn.Parameter(torch.tensor(2.0))
    for step in range(1, 5):
        metrics = {"train_loss": w * step}                    # with a graph: 2, 4, 6, 8
        if step % 2 == 0:
            metrics["synth_loss/h1"] = torch.tensor(float(10 * step))   # steps 2 and 4 only: 20, 40
        window.add(step, metrics)
    assert not any(v.requires_grad for values in window.values.values() for v in values)
    row, steps, _ = window.close()
    assert steps == 4 and row == pytest.approx({"train_loss": 5.0, "synth_loss/h1": 30.0})
    row, steps, _ = window.close()                            # the next window starts empty
    assert steps == 0 and row == {}


def test_the_first_non_finite_step_of_a_window_is_named_whichever_metric():
    window = LogWindow(spec(), [], torch.device("cpu"))
    for step in range(1, 7):
        window.add(step, {"train_loss": torch.tensor(1.0 if step < 5 else float("nan")),
                          "synth_loss/h1": torch.tensor(float("inf") if step == 3 else 1.0)})
    with pytest.raises(Diverged) as err:
        window.close()
    assert err.value.step == 3
    window.add(7, {"train_loss": torch.tensor(2.0)})         # the failed window was cleared
    assert window.close()[0] == {"train_loss": 2.0}


def test_batches_are_every_example_once_per_epoch_in_a_seeded_order():
    """Batches: each epoch a fresh permutation from the run's generator, taken batch by batch without replacement;
    an epoch's leftover short of a batch is dropped (the next batch starts a new epoch)."""
    from dnibench.loop import Batches

    def draw(seed, n=10, batch=3, count=9):
        batches = Batches(n, batch, torch.Generator().manual_seed(seed), torch.device("cpu"))
        return [batches.next().tolist() for _ in range(count)]
    got = draw(0)
    for epoch in range(3):
        seen = sum(got[3 * epoch:3 * epoch + 3], [])
        assert len(seen) == 9 and len(set(seen)) == 9                      # 3 batches of 3, none repeated
    assert got[:3] != got[3:6]                                              # reshuffled each epoch
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0)).tolist()
    assert sum(got[:3], []) == order[:9]                                    # the generator's permutation, from 0
    assert draw(0) == got and draw(1) != got                                # the seed names the order
    exact = Batches(6, 3, torch.Generator().manual_seed(0), torch.device("cpu"))
    first = [exact.next().tolist() for _ in range(2)]
    assert sorted(sum(first, [])) == list(range(6))                         # an epoch that divides: no batch lost
    assert Batches(4, 8, torch.Generator(), torch.device("cpu")).next().numel() == 4    # batch capped at n


def test_seed_everything_seeds_every_generator_a_variant_may_use():
    import random

    import numpy as np

    from dnibench.loop import seed_everything
    seed_everything(5)
    first = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    seed_everything(5)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == first


def test_a_window_is_timed_from_its_start_to_its_close():
    import time
    window = LogWindow(spec(), [], torch.device("cpu"))
    window.start()
    time.sleep(0.3)
    window.add(1, {"train_loss": torch.tensor(1.0)})
    _, steps, seconds = window.close()
    assert steps == 1 and 0.3 <= seconds < 5.0
    before = time.perf_counter()
    window.start()
    assert 0.0 <= window.elapsed() <= time.perf_counter() - before      # the clock restarted


def test_devices_resolve_or_are_refused_in_one_line():
    from dnibench.errors import DnibenchError
    from dnibench.loop import resolve_device
    assert resolve_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cuda")
    else:
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(DnibenchError, match="--device cuda:1: CUDA is not available"):
            resolve_device("cuda:1")
