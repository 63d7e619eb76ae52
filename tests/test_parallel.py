"""The parallel executor (dnibench/parallel/): real worker processes talking gloo on tiny networks.

Lockstep K = 2 computes exactly the one-process learning rule (dni, cdni, unlock_cdni); a decoupled run finishes,
logs target staleness within its flow-control bound, survives a slow worker, and a worker that dies
ends the run FAILED with the reason and leaves no process behind; `dnibench run` drives it end to end."""
import json
import os
import sqlite3
import time

import psutil
import pytest
import torch

from dnibench.data import ImageData
from dnibench.errors import Diverged, WorkerFailed
from dnibench.methods import get_method
from dnibench.parallel import cost
from dnibench.suite import ParallelSettings, RunSpec, TrainSettings
from dnibench.train import train_ff

STEPS = 12


def images(n_test: int, seed: int = 0) -> ImageData:
    """256 random 8 x 8 training images and ``n_test`` test images, 10 classes."""
    g = torch.Generator().manual_seed(seed)
    return ImageData(torch.rand(256, 1, 8, 8, generator=g), torch.randint(0, 10, (256,), generator=g),
                     torch.rand(n_test, 1, 8, 8, generator=g), torch.randint(0, 10, (n_test,), generator=g), 10, "fake")


@pytest.fixture(scope="module")
def data():
    return images(100)


def spec(method: str, workers: int, schedule: str = "decoupled", lockstep: bool = False, max_in_flight=None,
         steps: int = STEPS, **settings) -> RunSpec:
    if schedule == "decoupled":
        max_in_flight = 1 if lockstep else (max_in_flight or 3)
    par = ParallelSettings(workers=workers, schedule=schedule, lockstep=lockstep, max_in_flight=max_in_flight,
                           microbatches=2 if schedule == "pipelined" else None)
    return RunSpec(suite="t", profile="smoke", task="mnist", model="fcn4", method=method,
                   method_args=get_method(method).Settings(**settings).model_dump(),
                   train=TrainSettings(steps=steps, batch_size=32, lr=1e-2, lr_decay_at=[steps // 2], eval_every=6,
                                       log_every=3),
                   seed=0, device="cpu", parallel=par)


def run(run_spec, data):
    rows = []
    summary = train_ff(run_spec, data, lambda row, step: rows.append((step, row)))
    return summary, rows


def boundary(summary) -> int:
    """The interface between workers 0 and 1: where worker 0's stages end (the split is chosen from the
    stage times measured in the run, so it may differ between runs of a tiny network)."""
    return int(summary["cost/worker0/stages_end"])


def dumped(folder):
    state = {}
    for path in sorted(folder.glob("rank*.pt")):
        state.update(torch.load(path))
    return state


@pytest.mark.parametrize("method,settings", [("dni", {"synth_hidden_layers": 1, "synth_width": 16}), ("cdni", {}),
                                             ("unlock_cdni", {"input_hidden_layers": 0})])
def test_lockstep_two_workers_equal_one_process(method, settings, data, tmp_path, monkeypatch):
    """K = 2, and K = 3 (a middle worker, which both receives targets and sends its own down; more workers than
    the 2 cores here, so they block instead of polling); and every K logs the losses and test error of the method's
    own one-process loop (no executor), learning-rate cut at step 6 included."""
    def curve(summary, rows):
        return [row["train_loss"] for _, row in rows if "train_loss" in row] + [summary["final_test_error"],
                                                                               summary["final_train_loss"]]
    states, curves = {}, {}
    curves[None] = curve(*run(spec(method, 1, lockstep=True, **settings).model_copy(update={"parallel": None}), data))
    for workers in (1, 2, 3):
        folder = tmp_path / f"k{workers}"
        folder.mkdir()
        monkeypatch.setenv("DNIBENCH_TEST_PARALLEL_DUMP", str(folder))
        summary, rows = run(spec(method, workers, lockstep=True, **settings), data)
        states[workers] = dumped(folder)
        curves[workers] = curve(summary, rows)
        assert curves[workers] == pytest.approx(curves[None], rel=1e-5), workers
        if workers > 1:
            assert summary[f"staleness/h{boundary(summary)}_max"] == 0.0          # lockstep: every target before the next step
    assert len(curves[None]) == STEPS // 3 + 2 and curves[None][-1] == curves[None][-3]   # the last row's loss
    one = states[1]
    # 4 stages, 3 synthesizers (and 3 synthetic input models)
    assert len(one) == 4 + 3 + (3 if method.startswith("unlock") else 0)
    for workers in (2, 3):
        many = states[workers]
        assert set(many) == set(one)
        for name in one:
            for key in one[name]:
                torch.testing.assert_close(many[name][key], one[name][key], rtol=1e-5, atol=1e-6,
                                           msg=lambda m: f"K = {workers}: {name}.{key}: {m}")
    # the parameters moved (a run that learnt nothing would compare equal trivially)
    assert not torch.allclose(states_at_start()["stage0"]["1.weight"], one["stage0"]["1.weight"])


def test_a_test_set_of_several_evaluation_chunks_gives_the_one_process_error():
    """The workers pass the test set up in chunks of EVAL_CHUNK images (MNIST's 10 000 are five); the test sets
    above fit in one. Two whole chunks and a part, at K = 2 and 3 (a middle worker relays each chunk), give the
    method's own one-process loop's test error at every evaluation point."""
    from dnibench.parallel.worker import EVAL_CHUNK
    n_test = 2 * EVAL_CHUNK + 500
    big = images(n_test, seed=3)

    def errors(run_spec):
        summary, rows = run(run_spec, big)
        return [(step, row["test_error"]) for step, row in rows if "test_error" in row] + [summary["final_test_error"]]
    one = errors(spec("cdni", 1, lockstep=True).model_copy(update={"parallel": None}))
    assert [step for step, _ in one[:-1]] == [6, 12]
    for workers in (2, 3):
        # the parameters agree to float tolerance, so an example on an argmax tie could flip: 2 of n_test allowed
        got = errors(spec("cdni", workers, lockstep=True))
        assert [step for step, _ in got[:-1]] == [6, 12]
        assert [e for _, e in got[:-1]] + got[-1:] == pytest.approx([e for _, e in one[:-1]] + one[-1:],
                                                                     abs=100 * 2 / n_test), workers


PER_STAGE = """
from dnibench.methods import register
from {module} import {base}


@register
class PerStage({base}):
    \"\"\"{base} without its fused step (as a variant with an update rule of its own would be).\"\"\"
    name = "{name}"
    supports_fused_step = False
"""


def states_at_start() -> dict:
    torch.manual_seed(0)
    from dnibench.models import build_stages
    return {"stage0": build_stages("fcn4", (1, 8, 8), 10)[0].state_dict()}


@pytest.mark.parametrize("method,base,schedule,models", [("cdni", "dnibench.methods.cdni.ConditionedDNI", "decoupled", 4 + 3),
                                                         ("bprop", "dnibench.methods.bprop.Backprop", "locked", 4)])
def test_two_workers_equal_one_process_on_the_per_stage_path(method, base, schedule, models, data, tmp_path,
                                                             monkeypatch):
    """A variant without the fused step (a variant file's own update rule forces it) is trained by the per-stage
    rule in every worker (decoupled: train_group's other branch; locked: an update per stage): K = 2 (lockstep
    where decoupled) equals K = 1 there too."""
    from dnibench.methods import file_sha256
    from dnibench.suite import MethodFile
    path = (tmp_path / "per_stage.py").resolve()
    module, _, cls = base.rpartition(".")
    path.write_text(PER_STAGE.format(module=module, base=cls, name=f"{method}_per_stage"))
    base_spec = spec(method, 1, schedule, lockstep=schedule == "decoupled")
    states = {}
    for workers in (1, 2):
        folder = tmp_path / f"k{workers}"
        folder.mkdir()
        monkeypatch.setenv("DNIBENCH_TEST_PARALLEL_DUMP", str(folder))
        run_spec = base_spec.model_copy(update={
            "method": f"{method}_per_stage", "method_file": MethodFile(path=str(path), sha256=file_sha256(path)),
            "parallel": base_spec.parallel.model_copy(update={"workers": workers})})
        run(run_spec, data)
        states[workers] = dumped(folder)
    one, two = states[1], states[2]
    assert set(one) == set(two) and len(one) == models
    for name in one:
        for key in one[name]:
            torch.testing.assert_close(two[name][key], one[name][key], rtol=1e-5, atol=1e-6,
                                       msg=lambda m: f"{name}.{key}: {m}")
    assert not torch.equal(one["stage0"]["1.weight"], states_at_start()["stage0"]["1.weight"])    # it learnt


def test_decoupled_run_logs_staleness_within_its_flow_control_bound(data):
    start = time.monotonic()
    summary, rows = run(spec("cdni", 2, max_in_flight=3), data)
    outer = time.monotonic() - start
    # the run's training and evaluation clocks are parts of its time, seen from outside (workers' start included)
    assert 0 < summary["total_wall_s/train"] and 0 < summary["total_wall_s/eval"]
    assert summary["total_wall_s/train"] + summary["total_wall_s/eval"] < outer
    h = boundary(summary)
    assert 0.0 <= summary[f"staleness/h{h}_mean"] <= summary[f"staleness/h{h}_max"] <= 2.0    # max_in_flight - 1
    evals = [(step, row) for step, row in rows if "test_error" in row]
    assert [step for step, _ in evals] == [6, 12]
    assert all(0 <= row["test_error"] <= 100 and row["wall_s/train"] > 0 for _, row in evals)
    assert evals[0][1]["wall_s/train"] < evals[1][1]["wall_s/train"]
    for k in (0, 1):
        assert 0 < summary[f"total_worker{k}/busy_frac"] <= 1
    assert summary["mean_samples_per_s"] > 0 and summary["final_test_error"] == evals[-1][1]["test_error"]
    from test_timing import assert_throughput_is_steps_over_training_time
    logged = {}
    for step, row in rows:
        logged.setdefault(step, {}).update(row)
    assert_throughput_is_steps_over_training_time(logged, summary, batch=32, steps=STEPS, log_every=3, drain_s=1.0)
    # each row's learning rate is its step's: cut by lr_decay_factor from step 6 (lr_decay_at)
    cut = 1e-2 * spec("cdni", 2).train.lr_decay_factor
    assert [(step, row["lr"]) for step, row in rows if "lr" in row] == [
        (3, 1e-2), (6, pytest.approx(cut)), (9, pytest.approx(cut)), (12, pytest.approx(cut))]


@pytest.mark.parametrize("method,schedule", [("unlock_cdni", "decoupled"), ("bprop", "locked"),
                                             ("bprop", "pipelined")])
def test_every_schedule_finishes_with_two_workers(method, schedule, data):
    settings = {"input_hidden_layers": 0} if method.startswith("unlock") else {}
    summary, rows = run(spec(method, 2, schedule, steps=6, **settings), data)
    assert summary["final_train_loss"] == summary["final_train_loss"]      # finite, not NaN
    if method == "unlock_cdni":
        assert summary[f"input_staleness/h{boundary(summary)}_max"] <= 2.0
        # the stage costs the split and the model use, averaged over the workers: a synthetic-input model on the
        # input of every stage but the first
        assert [summary[f"cost/stage{i}/synth_input"] > 0 for i in range(4)] == [False, True, True, True]
    # only a decoupled run times its workers' steps before it starts (the cost model's compute per worker)
    steps = [summary.get(f"cost/worker{k}/step_s") for k in (0, 1)]
    assert all(step is not None and step > 0 for step in steps) == (schedule == "decoupled")
    # every schedule times a message as its run sends them, next to busy compute, for the cost model; a pipeline's is
    # solved from a stand-in pipeline of its schedule, run on each worker alone and then through both
    assert summary["cost/link_busy_bytes"] > 0
    if schedule == "pipelined":
        one_s, step_s = summary["cost/stand_in_one_s"], summary["cost/stand_in_step_s"]
        assert one_s > 0 and step_s > 0
        assert summary["cost/link_busy_s"] == cost.pipeline_message("gpipe", 2, 2, one_s, step_s)
    else:
        assert summary["cost/link_busy_s"] > 0 and "cost/stand_in_step_s" not in summary
    # and only a pipelined one each worker's forward and backward of a micro-batch (the pipeline model's chunks)
    chunks = [summary.get(f"cost/worker{k}/chunk_{part}_s") for k in (0, 1) for part in ("forward", "backward")]
    if schedule == "pipelined":
        assert all(chunk is not None and chunk > 0 for chunk in chunks), chunks
    else:
        assert chunks == [None] * 4, chunks


def test_locked_bprop_two_workers_equal_one_process(data):
    one, _ = run(spec("bprop", 1, "locked", steps=6), data)
    two, _ = run(spec("bprop", 2, "locked", steps=6), data)
    assert two["final_train_loss"] == pytest.approx(one["final_train_loss"], rel=1e-5)
    assert two["final_test_error"] == one["final_test_error"]


def test_a_slow_worker_throttles_the_other_and_the_run_finishes(data, monkeypatch):
    monkeypatch.setenv("DNIBENCH_TEST_WORKER_DELAY", "1:0.05")
    summary, _ = run(spec("cdni", 2, max_in_flight=2), data)
    # worker 0 may run at most 1 batch ahead of its targets: it waits on the slow worker 1
    assert summary["total_worker0/wait_grad_s"] > 0.15          # about 0.5 s; nothing at all without flow control
    assert summary[f"staleness/h{boundary(summary)}_max"] <= 1.0


def test_targets_that_came_are_taken_without_waiting_for_flow_control(data, monkeypatch):
    # worker 0 slow: each target is back before worker 0's next step ends, so it is regressed one step after
    # its batch, not at the window's edge (max_in_flight - 1 = 2, what every target got while polling never
    # saw a message)
    monkeypatch.setenv("DNIBENCH_TEST_WORKER_DELAY", "0:0.03")
    summary, _ = run(spec("cdni", 2, max_in_flight=3), data)
    h = boundary(summary)
    # (polling that never sees a message gives every target 2.0; a target late by a scheduling hiccup on a busy
    # box, 2 now and then)
    assert summary[f"staleness/h{h}_mean"] < 1.9 and summary[f"staleness/h{h}_max"] <= 2.0
    assert summary["total_worker0/wait_grad_s"] < 0.3


def test_complete_unlock_takes_each_real_input_once_its_batch_is_trained(data, monkeypatch):
    """Worker 1 slow under complete unlock: worker 0 runs ahead, so the real input of batch s is there before
    worker 1 has trained s. It is taken right after that step (staleness 0 each time the queue is polled), never
    before: a real input for a batch not trained yet has nothing kept to regress against."""
    monkeypatch.setenv("DNIBENCH_TEST_WORKER_DELAY", "1:0.03")
    summary, _ = run(spec("unlock_cdni", 2, max_in_flight=3, input_hidden_layers=0), data)
    h = boundary(summary)
    assert summary[f"input_staleness/h{h}_mean"] < 0.5 and summary[f"input_staleness/h{h}_max"] <= 2.0


def test_complete_unlock_regresses_the_real_inputs_still_coming_after_the_last_step(data, monkeypatch):
    """Worker 0 slow under complete unlock: worker 1, which waits for no input, runs ahead to the flow-control edge
    (max_in_flight - 1 = 2 batches), so the last real inputs reach it after its last step; finish() takes and
    regresses them (the time counted as waiting for input), as one process regresses every batch's."""
    monkeypatch.setenv("DNIBENCH_TEST_WORKER_DELAY", "0:0.03")
    summary, _ = run(spec("unlock_cdni", 2, max_in_flight=3, input_hidden_layers=0), data)
    h = boundary(summary)
    assert 1.0 <= summary[f"input_staleness/h{h}_max"] <= 2.0
    assert summary["total_worker1/wait_input_s"] > 0.0


def _grandchildren():
    """Processes below this one's children (the forkserver's workers), alive."""
    out = []
    for child in psutil.Process().children():
        try:
            out += [p for p in child.children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]
        except psutil.NoSuchProcess:
            pass
    return out


def test_a_parallel_run_that_diverges_fails_at_its_first_non_finite_step_and_leaves_no_process(data):
    """A learning rate far too large: the workers' losses become non-finite, the run fails as diverged at the step
    the worker saw first (a step of the run: it checks at its log points, every 3 steps), not as a crash."""
    diverging = spec("cdni", 2)
    diverging = diverging.model_copy(update={"train": diverging.train.model_copy(update={"lr": 1e12})})
    with pytest.raises(Diverged) as err:
        run(diverging, data)
    assert isinstance(err.value.step, int) and 1 <= err.value.step <= STEPS, err.value.step
    assert str(err.value) == f"diverged at step {err.value.step} (non-finite loss)"
    assert _grandchildren() == []


def test_a_worker_that_dies_fails_the_run_with_the_reason_and_leaves_no_process(data, monkeypatch):
    monkeypatch.setenv("DNIBENCH_TEST_WORKER_EXIT", "1:5")
    with pytest.raises(WorkerFailed) as err:
        run(spec("cdni", 2), data)
    assert "parallel worker 1" in err.value.reason and "died (exit code 3)" in err.value.reason
    assert "\n" not in err.value.reason
    assert _grandchildren() == []


def test_a_peer_silent_past_the_gloo_timeout_fails_the_run_with_the_timeout(data, monkeypatch):
    """README: a worker that times out (DNIBENCH_GLOO_TIMEOUT_S) ends the run FAILED with its error, and the others are
    killed. Worker 1 sleeps 30 s before each step (it is killed long before); worker 0 runs ahead to its flow-control
    edge and waits 3 s for a target that does not come."""
    monkeypatch.setenv("DNIBENCH_GLOO_TIMEOUT_S", "3")
    monkeypatch.setenv("DNIBENCH_TEST_WORKER_DELAY", "1:30")
    with pytest.raises(WorkerFailed) as err:
        run(spec("cdni", 2), data)
    assert err.value.reason.startswith("worker 0: RuntimeError: ") and "Timed out waiting 3000ms" in err.value.reason
    assert "\n" not in err.value.reason
    assert _grandchildren() == []


SUITE = """
name: par
task: mnist
train: {steps: 6, batch_size: 4, lr: 1.0e-3, lr_decay_at: [], eval_every: 3, log_every: 3}
profiles: {smoke: {}, quick: {}, paper: {}}
entries:
  - model: fcn3
    method: cdni
    parallel: {workers: 2}
"""


def test_dnibench_run_drives_a_parallel_suite_and_logs_its_params(tmp_path, fake_mnist_data_dir, monkeypatch):
    from dnibench.cli import main
    suite = tmp_path / "par.yaml"
    suite.write_text(SUITE)
    db = tmp_path / "m.db"
    args = ["run", str(suite), "--profile", "smoke", "--device", "cpu", "--tracking-uri", f"sqlite:///{db}",
            "--data-dir", str(fake_mnist_data_dir), "--no-progress"]
    # in this process (the CLI's main, not a new interpreter): the forkserver is warm from the tests above
    assert main(args) == 0
    # a second seed whose worker 1 dies at step 2: that run ends FAILED with the reason, the command exits 1
    monkeypatch.setenv("DNIBENCH_TEST_WORKER_EXIT", "1:2")
    assert main(args + ["--seeds", "2"]) == 1
    with sqlite3.connect(db) as con:
        (failure,), = con.execute("select t.value from runs r join tags t on t.run_uuid = r.run_uuid "
                                  "where r.status = 'FAILED' and t.key = 'failure'").fetchall()
    assert failure.startswith("parallel worker 1 (pid ") and "died (exit code 3)" in failure
    assert _grandchildren() == []
    with sqlite3.connect(db) as con:
        (run_id, status), = con.execute("select r.run_uuid, r.status from runs r join tags t on t.run_uuid = r.run_uuid "
                                        "where t.key = 'dnibench.role' and t.value = 'child' and r.status != 'FAILED'"
                                        ).fetchall()
        params = dict(con.execute("select key, value from params where run_uuid = ?", (run_id,)).fetchall())
        metrics = {k for (k,) in con.execute("select distinct key from metrics where run_uuid = ?", (run_id,))}
    assert status == "FINISHED"
    assert (params["workers"], params["schedule"], params["max_in_flight"]) == ("2", "decoupled", "4")
    assert {"test_error", "samples_per_s", "wall_s/train", "worker1/busy_frac", "worker0/wait_grad_s",
            "staleness/h1_mean", "staleness/h1_max"} <= metrics
    # as the README says: how the workers waited, and each worker's step timed before the run (the cost model's)
    assert {"wait_polls", "cost/worker0/step_s", "cost/worker1/step_s"} <= metrics
    # and whether each worker was bound to its cores, and the one-process step timed on every worker at once
    assert {"cores_bound", "cost/worker0/whole_step_s", "cost/worker1/whole_step_s"} <= metrics


def test_under_jobs_a_suite_with_parallel_runs_runs_them_one_at_a_time_in_the_main_process(tmp_path, fake_mnist_data_dir):
    """README: a suite with parallel runs runs them one at a time in the main process, also under `--jobs N` (each
    starts its own workers and wants the cores for them; a --jobs worker is a daemon and may not start processes)."""
    from dnibench.cli import main
    suite = tmp_path / "par.yaml"
    suite.write_text(SUITE.replace("    parallel: {workers: 2}\n", "    parallel: {workers: [1, 2]}\n")
                     + "  - model: fcn3\n    method: bprop\n")
    db = tmp_path / "m.db"
    assert main(["run", str(suite), "--profile", "smoke", "--device", "cpu", "--tracking-uri", f"sqlite:///{db}",
                 "--data-dir", str(fake_mnist_data_dir), "--no-progress", "--jobs", "2"]) == 0
    with sqlite3.connect(db) as con:
        runs = con.execute("select r.status, r.start_time, r.end_time, t.value from runs r join tags t "
                           "on t.run_uuid = r.run_uuid and t.key = 'dnibench.owner.pid' join tags c "
                           "on c.run_uuid = r.run_uuid and c.key = 'dnibench.role' and c.value = 'child' "
                           "order by r.start_time").fetchall()
    assert len(runs) == 3 and {(status, int(pid)) for status, _, _, pid in runs} == {("FINISHED", os.getpid())}
    assert all(later[1] >= earlier[2] for earlier, later in zip(runs, runs[1:])), runs   # one at a time


def test_kill_9_of_dnibench_run_leaves_no_worker_behind(tmp_path, fake_mnist_data_dir):
    """kill -9 of the `dnibench run` process itself, mid-way through a parallel run: nothing can stop the workers
    from the parent, so they must go by themselves. Their parent is the forkserver, which outlives the killed process
    while they live, so each watches its own pipe to the killed process (pool.watch_parent) and stops when it closes;
    the forkserver and the resource tracker then exit too. Every process below the killed one is gone within seconds:
    none trains on, holding a core, until its next message to the parent fails (no log point in this run; a beat
    after BEAT_S = 30 s)."""
    import signal

    from cli_processes import alive, start_run, wait_for
    suite = tmp_path / "par.yaml"
    suite.write_text(SUITE.replace("steps: 6,", "steps: 1000000,").replace(
        "eval_every: 3, log_every: 3", "eval_every: 1000000, log_every: 1000000"))   # never ends, never logs
    db = tmp_path / "m.db"
    proc = start_run(suite, db, fake_mnist_data_dir, 1)

    def training():                   # both workers (the forkserver's children) have built, measured and trained
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.ppid() != proc.pid]
        return len(workers) == 2 and all(sum(p.cpu_times()[:2]) > 4.0 for p in workers)
    wait_for(training, proc)
    below = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)             # not its output: the workers hold that pipe open while they live
    deadline = time.monotonic() + 30
    while (left := alive(below)) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.stdout.close(), proc.stderr.close()
    assert left == [], [p.pid for p in left]


def test_the_parallel_suite_plans_at_every_profile_and_one_process_runs_keep_their_hash():
    from dnibench.suite import check_all_profiles, load_suite, plan
    suite = load_suite("suites/parallel.yaml")
    check_all_profiles(suite)
    quick = plan(suite, "quick")
    assert sorted((s.method, s.parallel.schedule, s.parallel.workers, s.parallel.microbatches, s.parallel.pipeline_schedule,
                   s.parallel.threads) for s in quick) == sorted(
        [("bprop", "locked", k, None, None, 1) for k in (1, 2)]
        + [("bprop", "pipelined", k, m, "gpipe", 1) for k in (1, 2) for m in (4, 8)] + [("bprop", "pipelined", 2, 4, "1f1b", 1)]
        + [(m, "decoupled", k, None, None, 1) for m in ("dni", "cdni", "unlock_cdni") for k in (1, 2)]
        + [("cdni", "decoupled", 1, None, None, 2)])                 # the best single process on two cores
    assert all(s.model == "fcn6" and s.train.batch_size == 256 for s in quick)
    assert {s.model for s in plan(suite, "paper")} == {"fcn6", "cnn4"}
    one = quick[0].model_copy(update={"parallel": None})
    assert "parallel" not in one.resolved() and "parallel" in quick[0].resolved()


@pytest.mark.parametrize("entry,message", [
    ("{model: fcn4, method: dni, parallel: {workers: 2, schedule: pipelined, microbatches: 2}}",
     "schedule 'pipelined' does not apply to 'dni'"),
    ("{model: fcn3, method: cdni, parallel: {workers: 4}}", "workers 4 is more than the 3 stages"),
    ("{model: fcn4, method: bprop, parallel: {workers: 2, microbatches: 2}}", "microbatches applies to schedule pipelined"),
    ("{model: fcn4, method: bprop, parallel: {workers: 2, schedule: pipelined, microbatches: 3}}", "does not split the batch"),
    ("{model: fcn4, method: bprop, parallel: {workers: 2, lockstep: true}}", "apply to schedule decoupled only"),
    ("{model: fcn4, method: nobprop, parallel: {workers: 2}}", "has no parallel schedule"),
    ("{model: fcn4, method: dni, args: {dni: {p_update: 0.5}}, parallel: {workers: 2}}", "p_update < 1"),
    ("{model: fcn4, method: cdni, parallel: {workers: 2, lockstep: true, max_in_flight: 3}}", "lockstep waits"),
    ("{model: fcn4, method: cdni, parallel: {workers: 0}}", "greater than or equal to 1"),
])
def test_combinations_the_executor_does_not_run_are_one_line(tmp_path, entry, message):
    from dnibench.errors import SuiteError
    from dnibench.suite import load_suite, plan
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: bad\ntask: mnist\ntrain: {{batch_size: 8}}\nprofiles: {{smoke: {{}}, quick: {{}}, paper: {{}}}}\n"
                    f"entries:\n  - {entry}\n")
    with pytest.raises(SuiteError) as err:
        plan(load_suite(path), "smoke")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_each_worker_is_bound_to_cores_of_its_own_where_there_are_enough(data, tmp_path, monkeypatch):
    from dnibench.parallel.worker import pinned_cores
    assert pinned_cores(0, 2, 1, [0, 1]) == {0} and pinned_cores(1, 2, 1, [0, 1]) == {1}
    assert pinned_cores(1, 2, 2, [3, 5, 6, 7, 9]) == {6, 7}  # the process's usable cores, in order, threads each
    assert pinned_cores(0, 4, 1, [0, 1]) is None and pinned_cores(0, 1, 1, [0, 1]) is None   # shared, or alone
    # in a run: each worker on its own core, every thread of it (compute, gloo's, the inboxes') with it
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one usable core: nothing to bind")
    monkeypatch.setenv("DNIBENCH_TEST_PARALLEL_DUMP", str(tmp_path))
    summary, _ = run(spec("cdni", 2, steps=4), data)
    assert summary["cores_bound"] == 1.0
    usable = sorted(os.sched_getaffinity(0))
    for rank in (0, 1):
        threads = json.loads((tmp_path / f"rank{rank}.cores.json").read_text())
        assert len(threads) >= 3 and all(cores == [usable[rank]] for cores in threads), threads
    one, _ = run(spec("cdni", 1, steps=4), data)
    assert one["cores_bound"] == 0.0                        # one worker is left where it is


def test_workers_poll_for_messages_only_where_each_has_its_cores(data):
    from dnibench.parallel.worker import spins
    from dnibench.tracking import usable_cores
    assert spins(2, 1, 2) and spins(4, 2, 8)
    assert not spins(4, 1, 2) and not spins(2, 2, 2)         # oversubscribed: polling would take the peers' cores
    assert not spins(1, 1, 2)                                # one worker receives nothing
    summary, _ = run(spec("bprop", 2, schedule="locked"), data)
    assert summary["wait_polls"] == float(spins(2, 1, usable_cores()))
    assert summary["cores_bound"] == summary["wait_polls"]   # where each worker has its cores, bound to them
    assert summary["cost/link_blocked_s"] > 0                # what a message costs a receiver waiting blocked
    # a locked step's messages: round trips with the receiver waiting as the run's workers do (polling here, a
    # measurement of its own; where they block, the blocked one)
    assert summary["cost/link_busy_s"] > 0
    assert (summary["cost/link_busy_s"] != summary["cost/link_blocked_s"]) == bool(summary["wait_polls"])
    summary, _ = run(spec("bprop", 2, schedule="pipelined"), data)
    assert summary["wait_polls"] == 0.0                      # torch's pipelining waits its own way
    assert "cost/link_blocked_s" not in summary               # measured for locked runs only


def test_finish_fails_a_worker_that_still_keeps_a_batchs_state():
    """A batch's kept output (and context) goes once its target, and under complete unlock its real input, came. One
    still kept after the last message is a leak that grows with the run, or a target paired with the wrong batch:
    finish() raises, naming the first batches, after taking what was still coming (in process, on a stand-in)."""
    from types import SimpleNamespace as NS

    from dnibench.parallel.worker import Clock, Worker

    drained = []
    stand_in = NS(down=None, up=None, rank=1, world=1, par=NS(schedule="decoupled"), clock=Clock(),
                  outbox=NS(drain=lambda: drained.append(1)))
    for kept in ({}, {3: "h3"}, {i: f"h{i}" for i in range(9, 2, -1)}):
        stand_in.kept = dict(kept)
        if not kept:
            Worker.finish(stand_in)
            assert drained == [1]
            continue
        with pytest.raises(RuntimeError) as err:
            Worker.finish(stand_in)
        first = sorted(kept)[:5]
        assert str(err.value) == f"worker 1: the state of batches {first} was still kept after the run"
    Worker.finish(NS(**{k: v for k, v in vars(stand_in).items() if k != "kept"}))   # a worker that keeps nothing


def test_a_workers_clock_adds_each_span_to_its_cause(monkeypatch):
    """Busy fraction and waiting time by cause come from these sums (a clock that moves by 1 at each reading), and a
    worker's metrics from them."""
    import itertools
    import types

    from dnibench.parallel import worker
    ticks = itertools.count()
    monkeypatch.setattr(worker, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    clock = worker.Clock()
    assert clock.seconds == {"busy": 0.0, "wait_input": 0.0, "wait_grad": 0.0, "comm": 0.0}
    for cause in ("busy", "wait_input", "busy", "wait_grad", "comm", "busy"):
        with clock(cause):
            next(ticks)                                # something that takes one tick besides the clock's readings
    assert clock.seconds == {"busy": 6.0, "wait_input": 2.0, "wait_grad": 2.0, "comm": 2.0}
    # and what a worker logs of them: the busy share of its training time, and the waits in seconds
    me = types.SimpleNamespace(rank=1, clock=clock)
    assert worker.Worker.worker_metrics(me, 8.0) == {"worker1/busy_frac": 6.0 / 8, "worker1/wait_input_s": 2.0,
                                                          "worker1/wait_grad_s": 2.0, "worker1/comm_s": 2.0}
    assert worker.Worker.worker_metrics(me, 0.5)["worker1/busy_frac"] == 12.0     # a training time under 1 s


@pytest.mark.parametrize("method,schedule,workers,fused", [
    ("cdni", "decoupled", 1, True), ("cdni", "decoupled", 2, True), ("dni", "decoupled", 3, True),
    ("unlock_cdni", "decoupled", 1, True), ("unlock_cdni", "decoupled", 2, False), ("bprop", "locked", 2, True),
    ("bprop", "pipelined", 1, True), ("bprop", "pipelined", 2, False)])
def test_a_worker_builds_the_one_process_network_and_takes_the_fused_step_where_it_can(method, schedule, workers,
                                                                                       fused):
    """Worker.build, on a stand-in: the network one process builds (a CNN here, with the run's filters and both
    conventions away from their defaults, seeded alike), and the method's fused step (one backward and one optimizer
    call per worker and step, where the per-stage path makes one per stage; the same parameters, faster) everywhere
    but where a worker runs part of a step the fused step cannot (complete unlock's groups, a pipeline's micro-batches)
    at K > 1."""
    import types

    from dnibench.loop import seed_everything
    from dnibench.models import build_stages
    from dnibench.parallel import worker
    par = ParallelSettings(workers=workers, schedule=schedule, microbatches=2 if schedule == "pipelined" else None)
    run_spec = RunSpec(suite="t", profile="smoke", task="mnist", model="cnn3", method=method,
                       method_args=get_method(method).Settings().model_dump(),
                       task_args={"layer_count": "hidden_only", "pool_stride": 1},
                       train=TrainSettings(steps=2, batch_size=8, lr=1e-3, cnn_filters=4), seed=5, device="cpu",
                       parallel=par)
    g = torch.Generator().manual_seed(0)
    data = {"x_train": torch.rand(16, 1, 8, 8, generator=g), "y_train": torch.randint(0, 10, (16,), generator=g),
            "num_classes": 10}
    me = types.SimpleNamespace(spec=run_spec, data=data, par=par, world=workers, rank=0)
    worker.Worker.build(me)
    assert me.setup.fused_step is fused
    assert me.in_shape == (1, 8, 8) and me.setup.num_classes == 10 and me.setup.lr == 1e-3
    seed_everything(5)
    want = build_stages("cnn3", (1, 8, 8), 10, 4, "hidden_only", 1)
    assert len(me.stages) == len(want) == 4                  # hidden_only: 3 hidden stages and the classifier
    for got, ref in zip(me.stages, want):
        assert got.state_dict().keys() == ref.state_dict().keys()
        assert all(torch.equal(got.state_dict()[k], ref.state_dict()[k]) for k in ref.state_dict())
    assert me.setup.stage_shapes[0] == (4, 8, 8)             # 4 filters, pooling at stride 1 keeps 8 x 8
    assert me.method.stages is me.stages


@pytest.mark.parametrize("outcome", ["done", "diverged", "long error", "empty error"])
def test_a_worker_process_tells_the_parent_how_it_ended_then_exits(outcome):
    """worker_main's last word on its pipe, then its exit code: "done" with the summary (0), "diverged" with the step
    (0), or "error" with the exception's first line, cut to 400 characters, and the traceback (1). A forked process
    with a stand-in Worker, since worker_main ends the process."""
    import multiprocessing as mp

    from dnibench.parallel import worker

    class StandIn:
        def __init__(self, rank, *args):
            pass

        def run(self):
            if outcome == "done":
                return {"samples_per_s": 1.5}
            if outcome == "diverged":
                raise Diverged(7)
            raise ValueError("" if outcome == "empty error" else "y" * 500 + "\nthe second line")

    def child(conn):
        worker.Worker = StandIn
        worker.worker_main(3, "{}", "", "", conn, {}, 1.0)

    ctx = mp.get_context("fork")
    mine, theirs = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=child, args=(theirs,))
    proc.start()
    theirs.close()
    message = mine.recv()
    proc.join(30)
    if outcome == "done":
        assert message == ("done", 3, {"samples_per_s": 1.5}) and proc.exitcode == 0
    elif outcome == "diverged":
        assert message == ("diverged", 3, 7) and proc.exitcode == 0
    else:
        kind, rank, reason, trace = message
        assert (kind, rank, proc.exitcode) == ("error", 3, 1)
        assert reason == ("ValueError: " if outcome == "empty error" else ("ValueError: " + "y" * 500)[:400])
        assert trace.startswith("Traceback") and "ValueError" in trace
    with pytest.raises(EOFError):                    # nothing after the last word
        mine.recv()
