"""Timings that mean something: a run's thread count from the free cores, the machine's load and steal
next to the CPU utilisation, and the step-time dispersion that marks a run's timing as disturbed."""
from pathlib import Path

import pytest
import torch

from dnibench.data import ImageData
from dnibench.methods import get_method
from dnibench.suite import RunSpec, TrainSettings
from dnibench.tracking import DISTURBED, ResourceSampler, RunThreads, StepTimes, run_threads
from dnibench.train import train_ff


@pytest.mark.parametrize("cores,busy,jobs,want", [
    (2, 0.0, 1, 2),        # a quiet 2-core machine: both cores
    (2, 1.0, 1, 1),        # one core busy elsewhere: one thread, not two fighting over it
    (2, 1.4, 1, 1),        # never below one
    (2, 3.0, 1, 1),
    (8, 0.2, 2, 4),        # two runs at once share the free cores
    (8, 0.0, 3, 2),        # never more threads than cores for all runs: 3 x 2 <= 8
    (2, 0.0, 4, 1),        # more runs than cores: one thread each
    (16, 6.0, 1, 10),
])
def test_run_threads_never_oversubscribe(monkeypatch, cores, busy, jobs, want):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    got = run_threads(jobs, cores=cores, busy=busy)
    assert got == want
    assert got * jobs <= max(cores, jobs)


def test_omp_num_threads_caps_the_choice(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert run_threads(1, cores=8, busy=0.0) == 1
    import dnibench.tracking as tracking
    measure = tracking.busy_cores
    monkeypatch.setattr(tracking, "busy_cores", lambda: pytest.fail("measured the load for a capped answer"))
    assert run_threads(1, cores=8) == 1                                  # capped at one: the load is not read
    monkeypatch.setattr(tracking, "busy_cores", measure)
    monkeypatch.setenv("OMP_NUM_THREADS", "0")                           # not a cap: torch would refuse 0 threads
    assert run_threads(1, cores=8, busy=0.0) == 8
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert run_threads(cores=8, busy=0.0) == 8                            # one run unless told otherwise
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert run_threads(1, cores=8, busy=0.0) == 3


def test_run_threads_from_the_machine_is_within_its_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    import os
    assert 1 <= run_threads() <= len(os.sched_getaffinity(0))


def fake_proc(root, running: int, states: list[str]):
    """A /proc with ``running`` runnable tasks on the machine and this process's threads in ``states``."""
    root.mkdir(exist_ok=True)
    (root / "stat").write_text(f"cpu  1 2 3 4\nprocs_running {running}\nprocs_blocked 0\n")
    for i, state in enumerate(states):
        (root / "self" / "task" / str(i)).mkdir(parents=True)
        # a command name with a parenthesis, a space and another state in it: the state is read after the last ')'
        decoy = "S" if state == "R" else "R"
        (root / "self" / "task" / str(i) / "stat").write_text(f"{100 + i} (py (x) {decoy}) {state} 1 2 3\n")
    return root


def test_busy_cores_are_the_machines_runnable_tasks_less_this_processs(tmp_path):
    from dnibench.tracking import busy_cores
    proc = fake_proc(tmp_path, running=5, states=["R", "S", "R", "D"])
    assert busy_cores(samples=3, gap_s=0, proc=proc) == 3.0
    assert busy_cores(samples=1, gap_s=0, proc=fake_proc(tmp_path / "b", running=1, states=["R", "R"])) == 0.0
    assert busy_cores(proc=tmp_path / "none") is None                 # no /proc: the caller falls back
    gone = fake_proc(tmp_path / "c", running=4, states=["R", "R", "R"])
    (gone / "self" / "task" / "0" / "stat").unlink()                   # a thread that ended as it was listed
    assert busy_cores(samples=1, gap_s=0, proc=gone) == 2.0            # the others still count


def test_busy_cores_take_the_median_reading(tmp_path, monkeypatch):
    from dnibench import tracking
    readings = iter([(4, 1), (9, 1), (2, 1), (3, 1), (3, 1)])        # a momentary burst does not count
    monkeypatch.setattr(tracking, "_running", lambda proc: next(readings))
    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    assert tracking.busy_cores(samples=5) == 2.0


def test_run_threads_count_what_runs_now_not_the_load_average(monkeypatch):
    """A fresh clone's first run took 1 thread of 2 free ones: the 1-minute load average still held pip's install."""
    from dnibench import tracking
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(tracking.os, "getloadavg", lambda: (1.3, 0.0, 0.0))     # the 1-minute one is the first
    monkeypatch.setattr(tracking, "busy_cores", lambda: 0.0)
    assert tracking.run_threads(1, cores=2) == 2
    monkeypatch.setattr(tracking, "busy_cores", lambda: 1.0)
    assert tracking.run_threads(1, cores=2) == 1
    monkeypatch.setattr(tracking, "busy_cores", lambda: None)            # no /proc: the load average,
    monkeypatch.setattr(tracking._SELF, "cpu_percent", lambda interval: 0.0)   # less this process's own share
    assert tracking.run_threads(1, cores=2) == 1
    monkeypatch.setattr(tracking._SELF, "cpu_percent", lambda interval: 100.0)
    assert tracking.run_threads(1, cores=2) == 2                          # 1.3 - 1.0 busy: 1.7 free, rounded
    monkeypatch.setattr(tracking.os, "getloadavg", lambda: (1.5, 0.0, 0.0))
    assert tracking.run_threads(1, cores=2) == 2                          # 0.5 busy: 1.5 + 0.5 free, exactly 2
    monkeypatch.setattr(tracking._SELF, "cpu_percent", lambda interval: 99.0)
    assert tracking.run_threads(1, cores=2) == 1                          # 0.51 busy: just under 2


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads /proc")
def test_a_busy_neighbour_is_seen_at_once():
    """A process spinning on a core counts as soon as it runs (the load average would take about a minute)."""
    import subprocess
    import sys

    from dnibench.tracking import busy_cores
    hog = subprocess.Popen([sys.executable, "-c", "import sys; print(1, flush=True)\nwhile True: pass"],
                           stdout=subprocess.PIPE)
    try:
        assert hog.stdout.readline().strip() == b"1"                      # it is spinning
        assert busy_cores() >= 1.0
    finally:
        hog.kill()
        hog.wait()


def test_thread_count_is_set_for_the_run_and_restored():
    before = torch.get_num_threads()
    with RunThreads(threads=2) as threads:
        assert threads == 2 and torch.get_num_threads() == 2
    assert torch.get_num_threads() == before


def test_jobs_come_from_the_environment_a_parallel_runner_sets(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("DNIBENCH_JOBS", "64")          # more runs than any CI box has cores
    assert RunThreads().threads == 1


def step_times(per_interval: list[list[float]]) -> StepTimes:
    """A StepTimes fed with known per-step durations, interval by interval (the clock is not read)."""
    times = StepTimes(torch.device("cpu"))
    for interval in per_interval:
        times.steps.extend(interval)
        times.window(sum(interval), len(interval))
    return times


def test_dispersion_of_steady_steps_is_one():
    s = step_times([[0.010] * 10 for _ in range(5)]).summary()
    assert s["wall_step_median_ms"] == pytest.approx(10.0)
    assert s["wall_step_p95_over_median"] == pytest.approx(1.0)
    assert s["wall_step_dispersion"] == pytest.approx(1.0) and s["wall_step_dispersion"] <= DISTURBED


def test_a_slowed_interval_is_the_worst_window():
    # Intervals 2..5 at 10 ms, interval 4 slowed 3x by a neighbour: worst window 30/10 = 3 (disturbed).
    s = step_times([[0.050] * 10, [0.010] * 10, [0.010] * 10, [0.030] * 10, [0.010] * 10]).summary()
    assert s["wall_step_worst_window"] == pytest.approx(3.0)
    assert s["wall_step_dispersion"] > DISTURBED
    # The first interval (warm-up, 50 ms steps) is not counted in either figure.
    assert s["wall_step_median_ms"] == pytest.approx(10.0)
    assert s["wall_step_p95_over_median"] == pytest.approx(3.0)


def test_only_the_first_window_is_warm_up_and_only_when_there_are_others():
    """A short run's windows: one window is all there is (kept); with two or more only the first is left out."""
    one = step_times([[0.050] * 4]).summary()
    assert one["wall_step_median_ms"] == pytest.approx(50.0) and one["wall_step_worst_window"] == pytest.approx(1.0)
    two = step_times([[0.050] * 4, [0.010] * 4]).summary()
    assert two["wall_step_median_ms"] == pytest.approx(10.0) and two["wall_step_p95_over_median"] == pytest.approx(1.0)
    assert two["wall_step_worst_window"] == pytest.approx(1.0)
    three = step_times([[0.050] * 4, [0.030] * 4, [0.010] * 4]).summary()   # the second window counts
    assert three["wall_step_worst_window"] == pytest.approx(0.030 / 0.020)
    assert three["wall_step_median_ms"] == pytest.approx(20.0)          # median of four 30 ms and four 10 ms steps


def test_one_window_keeps_its_own_steps():
    """With one window its steps are the per-step times (not the window's mean), and the worst window is 1."""
    one = step_times([[0.010, 0.010, 0.010, 0.050]]).summary()
    assert one["wall_step_median_ms"] == pytest.approx(10.0) and one["wall_step_p95_over_median"] == pytest.approx(5.0)
    assert one["wall_step_worst_window"] == 1.0


def test_p95_is_not_the_slowest_step():
    steps = [0.010] * 94 + [0.020] * 5 + [0.100]        # the 95th percentile of 100 steps is the 96th slowest
    s = step_times([[0.010] * 3, steps]).summary()
    assert s["wall_step_p95_over_median"] == pytest.approx(2.0)
    two = step_times([[0.010] * 3, [0.010, 0.030]]).summary()    # of two steps: the slower (index int(1.9) = 1)
    assert two["wall_step_p95_over_median"] == pytest.approx(0.030 / 0.020)


def test_windows_are_time_per_step_whatever_their_length():
    """A window is its seconds over its steps: a short last window at the same pace is not a slow one; a window of
    one step counts, one of none is ignored; on CUDA the windows are all there is."""
    s = step_times([[0.010] * 3, [0.010] * 10, [0.010] * 5, [0.010]]).summary()
    assert s["wall_step_worst_window"] == pytest.approx(1.0)
    cuda = StepTimes(torch.device("cuda"))
    for seconds, steps in ((9.0, 3), (0.20, 10), (0.10, 5), (0.03, 1), (5.0, 0)):
        cuda.window(seconds, steps)
    summary = cuda.summary()
    assert summary["wall_step_median_ms"] == pytest.approx(20.0)           # windows 2-4: 20, 20, 30 ms per step
    assert summary["wall_step_worst_window"] == pytest.approx(1.5)
    assert StepTimes(torch.device("cuda")).summary() == {}                 # nothing timed: nothing said
    steps_only = StepTimes(torch.device("cpu"))
    steps_only.steps.extend([0.01, 0.02, 0.03])
    assert steps_only.summary()["wall_step_worst_window"] == 1.0          # no log point reached: no window to blame


def test_sampler_means_per_interval_and_over_the_run():
    """``since(mark)``: each series' mean over the samples after the mark; ``summary``: each series' mean and 95th
    percentile over the run."""
    sampler = ResourceSampler(torch.device("cpu"))
    sampler.samples = {"cpu_util_pct": [10.0, 20.0, 90.0, 30.0], "cpu_load_avg_1m": [1.0, 2.0]}
    mark = {"cpu_util_pct": 2}                                             # a series missing from the mark: from 0
    assert sampler.since(mark) == {"cpu_util_pct": pytest.approx(60.0), "cpu_load_avg_1m": pytest.approx(1.5)}
    sampler.samples["gpu_util_pct"] = []
    assert "gpu_util_pct" not in sampler.since(sampler.mark())            # no sample since: no mean
    summary = sampler.summary()
    assert summary["cpu_util_pct_mean"] == pytest.approx(37.5) and summary["cpu_util_pct_p95"] == 90.0
    assert summary["cpu_load_avg_1m_p95"] == 2.0 and "gpu_util_pct_mean" not in summary
    sampler.samples = {"cpu_util_pct": [float(v) for v in range(40)]}
    assert sampler.summary()["cpu_util_pct_p95"] == 38.0                   # index int(0.95 x 40) = 38, not the max


def test_a_few_slow_steps_raise_p95_not_the_window_verdict():
    steps = [0.010] * 90 + [0.040] * 10          # 10% of the steps 4x slower, spread evenly
    s = step_times([steps[i::5] for i in range(5)]).summary()
    assert s["wall_step_p95_over_median"] == pytest.approx(4.0)
    assert s["wall_step_worst_window"] == pytest.approx(1.0)


def test_on_cuda_only_intervals_are_timed():
    times = StepTimes(torch.device("cuda"))       # nothing runs on the device: the class only decides
    times.step()
    assert times.steps == []


def test_sampler_records_load_and_steal_next_to_utilisation():
    with ResourceSampler(torch.device("cpu"), interval=0.01) as sampler:
        torch.randn(200, 200) @ torch.randn(200, 200)
    summary = sampler.summary()
    assert summary["cpu_load_avg_1m_mean"] >= 0 and "cpu_util_pct_mean" in summary
    assert 0 <= summary["cpu_steal_pct_mean"] <= 100


def test_training_run_logs_threads_load_and_dispersion():
    g = torch.Generator().manual_seed(0)
    shape = (1, 6, 6)
    data = ImageData(torch.rand(64, *shape, generator=g), torch.randint(0, 10, (64,), generator=g),
                     torch.rand(16, *shape, generator=g), torch.randint(0, 10, (16,), generator=g), 10, "random")
    spec = RunSpec(suite="t", profile="smoke", task="mnist", model="fcn3", method="cdni",
                   method_args=get_method("cdni").Settings().model_dump(),
                   train=TrainSettings(steps=40, batch_size=8, lr=1e-3, lr_decay_at=[], eval_every=20, log_every=10),
                   seed=0, device="cpu")
    logged = {}
    before = torch.get_num_threads()
    summary = train_ff(spec, data, lambda metrics, step: logged.setdefault(step, {}).update(metrics))
    assert torch.get_num_threads() == before
    assert summary["cpu_threads"] >= 1 and logged[10]["cpu_threads"] == summary["cpu_threads"]
    assert summary["cpu_load_avg_1m_mean"] >= 0 and "cpu_util_pct_mean" in summary   # an interval here is < 0.25 s
    assert summary["wall_step_dispersion"] >= 1.0 and summary["wall_step_p95_over_median"] >= 1.0
    assert 0 < summary["wall_step_median_ms"] < 1000 * summary["total_wall_s/train"]
    assert_throughput_is_steps_over_training_time(logged, summary, batch=8, steps=40, log_every=10)


def assert_throughput_is_steps_over_training_time(logged: dict, summary: dict, batch: int, steps: int, log_every: int,
                                                  drain_s: float = 1e-9):
    """The recorded rates are the examples trained over the training clock: each log row's samples/s over its own
    window (the growth of wall_s/train since the last row), the run's mean over its whole training time; the clock
    only grows, and evaluation has a clock of its own."""
    rows = [logged[step] for step in sorted(logged) if "samples_per_s" in logged[step]]
    walls = [0.0] + [row["wall_s/train"] for row in rows]
    assert len(rows) == steps // log_every and all(b > a for a, b in zip(walls, walls[1:]))
    for row, before, after in zip(rows, walls, walls[1:]):
        assert row["samples_per_s"] * (after - before) == pytest.approx(log_every * batch, rel=1e-6)
    # the run's training time is its last row's plus what came after it: nothing in one process, the draining of the
    # last messages in a parallel run (two gloo processes on a busy core: not held to a fixed few ms)
    assert walls[-1] <= summary["total_wall_s/train"] <= walls[-1] + drain_s
    assert summary["mean_samples_per_s"] * summary["total_wall_s/train"] == pytest.approx(steps * batch, rel=1e-6)
    evals = [row["wall_s/eval"] for row in rows if "wall_s/eval" in row]
    assert evals and all(b > a for a, b in zip(evals, evals[1:])) and summary["total_wall_s/eval"] == evals[-1]


def runs_frame(dispersions, speeds, method="cdni"):
    import pandas as pd
    return pd.DataFrame({"model": "fcn4", "label": method, "method": method, "device": "cpu",
                         "metric.wall_step_dispersion": dispersions, "metric.mean_samples_per_s": speeds,
                         "metric.total_wall_s/train": [10.0] * len(speeds), "metric.final_test_error": [2.0] * len(speeds)})


def test_report_and_compare_never_show_a_disturbed_runs_throughput():
    from dnibench.compare import _no_speed, _speed
    from dnibench.report.curves import TIMING_DISTURBED_ABOVE, wallclock_table
    assert TIMING_DISTURBED_ABOVE == DISTURBED
    mixed = runs_frame([1.1, 3.5, 1.3], [1000.0, 90.0, 1200.0])       # seed 2 ran next to a busy process
    assert _speed(mixed) == pytest.approx(1100.0)
    row = wallclock_table(mixed).iloc[0]
    assert row["samples/s"] == "1100" and "1 of 3" in row["Timing"]
    every = runs_frame([2.5, 4.0], [100.0, 80.0])
    assert _no_speed(every) == "disturbed" and wallclock_table(every).iloc[0]["samples/s"] == "disturbed"
    assert wallclock_table(every).iloc[0]["train s"] == "disturbed"
    clean = runs_frame([1.0, 2.0], [500.0, 700.0])                    # exactly 2 is not above 2
    assert _speed(clean) == pytest.approx(600.0) and wallclock_table(clean).iloc[0]["Timing"] == ""
