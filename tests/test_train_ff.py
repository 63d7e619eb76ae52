"""The feed-forward loop (dnibench/train.py ``train_ff``) called as the runner calls it, each thing it was given
held against what it did: the model built from the run's settings, the test subset evaluated, the same seed giving
the same run (batch order and p_update coins), the learning-rate schedule and the per-stage update counts in every
row, the evaluation clock within the run's own time. Found by a mutation run over train.py (tests/MUTATION.md)."""
import time

import pytest

import dnibench.train as train
from dnibench.suite import RunSpec, TrainSettings
from dnibench.tasks import get_task


def spec(model="fcn3", method="cdni", steps=6, task_args=None, **method_args) -> RunSpec:
    return RunSpec(suite="t", profile="smoke", task="mnist", model=model, method=method, method_args=method_args,
                   task_args=task_args or {}, seed=3, device="cpu",
                   train=TrainSettings(steps=steps, batch_size=8, lr=1e-3, lr_decay_at=[4], lr_decay_factor=0.1,
                                       eval_every=3, log_every=2, test_subset=3, cnn_filters=5))


def run(run_spec: RunSpec, data) -> tuple[dict, dict[int, dict]]:
    logged = []
    start = time.perf_counter()
    summary = get_task("mnist").train(run_spec, data, lambda metrics, step: logged.append((step, dict(metrics))))
    took = time.perf_counter() - start
    assert logged[-1] == (run_spec.train.steps, summary)
    assert 0 < summary["total_wall_s/train"] + summary["total_wall_s/eval"] < took
    return summary, {step: row for step, row in logged[:-1]}


@pytest.fixture
def data(fake_mnist_data_dir):
    return get_task("mnist").load(fake_mnist_data_dir)


def test_rows_carry_the_schedule_and_each_stages_updates_and_the_test_subset_is_evaluated(data, monkeypatch):
    seen = []
    real = train.test_error
    monkeypatch.setattr(train, "test_error", lambda stages, x, y: seen.append(len(y)) or real(stages, x, y))
    summary, rows = run(spec(p_update=0.5), data)
    assert sorted(rows) == [2, 3, 4, 6] and seen == [3, 3]              # eval at steps 3 and 6, on the 3 of the subset
    assert [rows[s]["lr"] for s in (2, 3, 4, 6)] == [1e-3, 1e-3, pytest.approx(1e-4), pytest.approx(1e-4)]
    counts = [[rows[s][f"updates/stage{k}"] for k in (1, 2, 3)] for s in (2, 6)]
    assert all(0 <= c <= s for row, s in zip(counts, (2, 6)) for c in row) and counts[1] != [6.0] * 3
    assert not any(f"updates/stage{k}" in rows[2] for k in (0, 4))
    assert summary["final_test_error"] == rows[6]["test_error"] and summary["final_train_loss"] == rows[6]["train_loss"]


def test_the_same_seed_is_the_same_run(data):
    """Batch order and the p_update coins come from the run's seed: two runs agree to the bit."""
    first, rows = run(spec(p_update=0.5), data)
    again, rows_again = run(spec(p_update=0.5), data)
    keys = ["final_test_error", "final_train_loss"]
    assert [first[k] for k in keys] == [again[k] for k in keys]
    assert all(rows[s]["train_loss"] == rows_again[s]["train_loss"] and
               rows[s]["updates/stage2"] == rows_again[s]["updates/stage2"] for s in rows)


def test_the_model_is_built_from_the_runs_settings(data, monkeypatch):
    built = []
    real = train.build_stages
    monkeypatch.setattr(train, "build_stages", lambda *args: built.append(args) or real(*args))
    run(spec(model="cnn3", method="bprop", task_args={"layer_count": "hidden_only", "pool_stride": 1}), data)
    assert built == [("cnn3", (1, 28, 28), 10, 5, "hidden_only", 1)], built


def test_p_update_coins_follow_the_runs_seed(data):
    """Another seed draws other coins (a generator seeded alike for every run would give every seed one sequence)."""
    def coins(seed):
        summary, rows = run(spec(p_update=0.5).model_copy(update={"seed": seed}), data)
        return [rows[s][f"updates/stage{k}"] for s in sorted(rows) for k in (1, 2, 3)]
    assert coins(3) != coins(4)
