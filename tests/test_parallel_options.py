"""Suite options of the parallel executor: ``pipeline_schedule`` (GPipe or 1F1B through torch.distributed.pipelining)
and ``threads`` per worker; the cost model's message cost for the bprop schedules; the report's labels and its
cDNI-against-one-process sentence."""
import pandas as pd
import pytest
import torch

from dnibench.data import ImageData
from dnibench.errors import SuiteError, WorkerFailed
from dnibench.methods import get_method
from dnibench.parallel import cost
from dnibench.report import parallel as report
from dnibench.suite import ParallelSettings, RunSpec, TrainSettings, load_suite, plan
from dnibench.train import train_ff
from report_fixtures import parallel_row

SUITE = """
name: t
description: d
task: mnist
train: {{steps: 4, batch_size: 32, lr: 1.0e-3, lr_decay_at: [], eval_every: 4, log_every: 2}}
profiles: {{smoke: {{}}, quick: {{}}, paper: {{}}}}
entries:
  - model: fcn4
    method: {method}
    parallel: {parallel}
"""


def planned(tmp_path, parallel: str, method: str = "bprop"):
    path = tmp_path / "t.yaml"
    path.write_text(SUITE.format(method=method, parallel=parallel))
    return plan(load_suite(path), "smoke")


def test_suite_options_plan_validate_and_keep_old_hashes(tmp_path):
    specs = planned(tmp_path, "{workers: 2, schedule: pipelined, microbatches: [2, 4], pipeline_schedule: [gpipe, 1f1b]}")
    got = sorted((s.parallel.microbatches, s.parallel.pipeline_schedule) for s in specs)
    assert got == [(2, "1f1b"), (2, "gpipe"), (4, "1f1b"), (4, "gpipe")]
    assert {s.parallel.params()["pipeline_schedule"] for s in specs} == {"gpipe", "1f1b"}
    one = planned(tmp_path, "{workers: 1, threads: 2}", method="cdni")[0]
    assert one.parallel.threads == 2 and one.parallel.params()["threads"] == "2" and one.label.endswith("-t2/seed0")
    # the defaults of the later fields leave a run's hash as it was before them (resume finds old runs)
    base = dict(workers=2, schedule="pipelined", microbatches=4)
    spec = planned(tmp_path, "{workers: 2, schedule: pipelined, microbatches: 4}")[0]
    assert spec.parallel.pipeline_schedule == "gpipe"
    old = spec.model_copy(update={"parallel": ParallelSettings(**base)})        # pipeline_schedule None, threads 1
    assert spec.config_hash == old.config_hash
    assert spec.model_copy(update={"parallel": ParallelSettings(**base, pipeline_schedule="1f1b")}).config_hash != old.config_hash
    assert spec.model_copy(update={"parallel": ParallelSettings(**base, threads=2)}).config_hash != old.config_hash
    for parallel, message in [
            ("{workers: 2, schedule: pipelined, microbatches: 4, pipeline_schedule: zerobubble}", "pipeline_schedule"),
            ("{workers: 2, schedule: locked, pipeline_schedule: 1f1b}", "pipeline_schedule applies to schedule pipelined only"),
            ("{workers: 2, schedule: pipelined, microbatches: 1, pipeline_schedule: 1f1b}", "1f1b needs microbatches >= workers"),
            ("{workers: 1, threads: 0}", "threads")]:
        with pytest.raises(SuiteError, match=message) as err:
            planned(tmp_path, parallel)
        assert "\n" not in str(err.value)


def test_a_profiles_parallel_block_replaces_those_fields_of_every_entrys(tmp_path):
    """As the README says: a profile's ``parallel:`` replaces those fields of every entry's block (the others stay the
    entry's), and an entry without a block stays one process."""
    path = tmp_path / "p.yaml"
    path.write_text("""
name: p
task: mnist
train: {steps: 4, batch_size: 8, lr: 1.0e-3, lr_decay_at: [], eval_every: 4, log_every: 2}
profiles:
  smoke: {}
  quick: {parallel: {workers: [1, 2, 4]}}
  paper: {parallel: {threads: 2}}
entries:
  - model: fcn6
    method: bprop
    parallel: {workers: [1, 2], schedule: pipelined, microbatches: 4}
  - model: fcn6
    method: cdni
    parallel: {workers: 2, max_in_flight: 3}
  - model: fcn6
    method: dni
""")
    suite = load_suite(path)

    def runs(profile):
        return sorted((s.method, *((s.parallel.workers, s.parallel.schedule, s.parallel.microbatches,
                                    s.parallel.max_in_flight, s.parallel.threads) if s.parallel else ()))
                      for s in plan(suite, profile))
    assert runs("smoke") == [("bprop", 1, "pipelined", 4, None, 1), ("bprop", 2, "pipelined", 4, None, 1),
                             ("cdni", 2, "decoupled", None, 3, 1), ("dni",)]
    assert runs("quick") == [("bprop", k, "pipelined", 4, None, 1) for k in (1, 2, 4)] + [
        ("cdni", k, "decoupled", None, 3, 1) for k in (1, 2, 4)] + [("dni",)]
    assert runs("paper") == [("bprop", 1, "pipelined", 4, None, 2), ("bprop", 2, "pipelined", 4, None, 2),
                             ("cdni", 2, "decoupled", None, 3, 2), ("dni",)]


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return ImageData(torch.rand(128, 1, 8, 8, generator=g), torch.randint(0, 10, (128,), generator=g),
                     torch.rand(40, 1, 8, 8, generator=g), torch.randint(0, 10, (40,), generator=g), 10, "fake")


def spec(method: str, workers: int, **parallel) -> RunSpec:
    return RunSpec(suite="t", profile="smoke", task="mnist", model="fcn4", method=method,
                   method_args=get_method(method).Settings().model_dump(),
                   train=TrainSettings(steps=6, batch_size=32, lr=1e-2, lr_decay_at=[], eval_every=6, log_every=3),
                   seed=0, device="cpu", parallel=ParallelSettings(workers=workers, **parallel))


def test_1f1b_run_equals_gpipe(data, tmp_path, monkeypatch):
    """1F1B and GPipe compute the same micro-batch gradients in another order, and GPipe over two workers the same as in
    one (the worker's pipelined step: its stages, optimizer and shapes): the same parameters and loss."""
    states, losses = {}, {}
    for pipe, workers in (("gpipe", 2), ("1f1b", 2), ("gpipe", 1)):
        folder = tmp_path / f"{pipe}{workers}"
        folder.mkdir()
        monkeypatch.setenv("DNIBENCH_TEST_PARALLEL_DUMP", str(folder))
        rows = []
        train_ff(spec("bprop", workers, schedule="pipelined", microbatches=2, pipeline_schedule=pipe), data,
                 lambda row, step: rows.append(row))
        case = pipe if workers == 2 else "one worker"
        losses[case] = [row["train_loss"] for row in rows if "train_loss" in row]
        states[case] = {}
        for path in sorted(folder.glob("rank*.pt")):
            states[case].update(torch.load(path))
    assert losses["gpipe"][0] != losses["gpipe"][1]          # it trained
    gpipe = states["gpipe"]
    for case in ("1f1b", "one worker"):
        assert len(losses["gpipe"]) == 2 and losses["gpipe"] == pytest.approx(losses[case], rel=1e-5), case
        assert set(gpipe) == set(states[case]) == {f"stage{i}" for i in range(4)}
        for name in gpipe:
            for key, value in gpipe[name].items():
                torch.testing.assert_close(states[case][name][key], value, rtol=1e-5, atol=1e-6)
    # and the option reaches the library: its 1F1B (not GPipe) refuses fewer micro-batches than workers
    with pytest.raises(WorkerFailed, match="1f1b needs at least as many micro-batches as workers"):
        train_ff(spec("bprop", 2, schedule="pipelined", microbatches=1, pipeline_schedule="1f1b"), data,
                 lambda row, step: None)


def test_a_pipelined_run_of_one_micro_batch_is_bprop_learning_rate_schedule_included(data):
    """One micro-batch makes the pipeline a plain forward and backward of the whole batch: on one worker or two it
    trains exactly what bprop in one process does, with the learning rate cut at step 3 (the pipeline's own Adam is
    the run's, under the run's schedule). With more micro-batches Adam's eps makes the sums differ slightly."""
    losses = {}
    for workers in (None, 1, 2):
        run_spec = spec("bprop", workers or 1, schedule="pipelined", microbatches=1, pipeline_schedule="gpipe")
        run_spec = run_spec.model_copy(update={"train": run_spec.train.model_copy(update={"lr_decay_at": [3]}),
                                               **({"parallel": None} if workers is None else {})})
        rows = []
        summary = train_ff(run_spec, data, lambda row, step: rows.append(row))
        losses[workers] = [row["train_loss"] for row in rows if "train_loss" in row] + [summary["final_test_error"]]
    assert len(losses[None]) == 3 and losses[None][0] != losses[None][1]
    assert losses[1] == pytest.approx(losses[None], rel=1e-6) and losses[2] == pytest.approx(losses[None], rel=1e-6)


@pytest.mark.parametrize("rank", [0, 1])
def test_a_pipelined_worker_hands_its_stages_to_the_pipeline_and_counts_its_time(monkeypatch, rank):
    """Worker.pipelined_step, on a stand-in worker of two with a stand-in pipeline: the worker's own stages in order
    with one Adam over them (updated by the pipeline, stepped with the run's schedule), the input shape of its first
    stage, the run's micro-batches and schedule; each step feeds the images to the first worker and the labels to the
    last, and counts the pipeline's compute as busy and its waiting as comm, per step."""
    import types

    from dnibench.methods import Setup
    from dnibench.models import build_stages, stage_output_shapes
    from dnibench.parallel import pipelined, worker
    from dnibench.parallel.worker import Clock

    stages = build_stages("cnn3", (1, 8, 8), 10, 4)           # stage shapes that differ from one another
    shapes = stage_output_shapes(stages, (1, 8, 8))
    setup = Setup(10, (1, 8, 8), shapes, 1e-2, torch.device("cpu"))
    made = []

    class Pipe:
        def __init__(self, module, rank, world, microbatches, batch, in_shape, optimizer, device, schedule):
            made.append((list(module), rank, world, microbatches, batch, in_shape, optimizer, str(device), schedule))
            self.timings = {"busy": 0.0, "wait": 0.0}
            self.calls = 0

        def step(self, x, y):
            self.calls += 1
            self.timings["busy"] += 0.25 * self.calls
            self.timings["wait"] += 0.5
            seen.append((x, y))
            return torch.tensor(float(self.calls)) if y is not None else None
    seen = []
    monkeypatch.setattr(pipelined, "PipelinedBprop", Pipe)
    lo, hi = (0, 1) if rank == 0 else (1, 3)                 # cnn3: 3 stages
    me = types.SimpleNamespace(stages=stages, lo=lo, hi=hi, setup=setup, in_shape=(1, 8, 8), first=rank == 0,
                               last=rank == 1, world=2, rank=rank, batch=32, device=torch.device("cpu"),
                               par=ParallelSettings(workers=2, schedule="pipelined", microbatches=4), clock=Clock())
    step = worker.Worker.pipelined_step(me)
    (module, got_rank, world, micro, batch, in_shape, optimizer, device, schedule), = made
    assert module == list(stages[lo:hi]) and (got_rank, world, micro, batch, device) == (rank, 2, 4, 32, "cpu")
    assert in_shape == ((1, 8, 8) if rank == 0 else tuple(shapes[lo - 1])) and schedule == "gpipe"
    assert me.extra_optimizers == [optimizer] and isinstance(optimizer, torch.optim.Adam)
    assert [p for g in optimizer.param_groups for p in g["params"]] == [p for s in stages[lo:hi] for p in s.parameters()]
    x, y = torch.zeros(32, 1, 8, 8), torch.zeros(32, dtype=torch.long)
    rows = [step(n, x, y) for n in (1, 2, 3)]
    assert seen == [(x if rank == 0 else None, y if rank == 1 else None)] * 3
    assert rows == ([{}] * 3 if rank == 0 else [{"train_loss": torch.tensor(float(n))} for n in (1, 2, 3)])
    assert me.clock.seconds == {"busy": 1.5, "wait_input": 0.0, "wait_grad": 0.0, "comm": 1.5}   # 0.25 + 0.5 + 0.75


def test_threads_setting_reaches_torch(tmp_path):
    """A worker runs torch at the suite's threads (built here in-process: a whole run at 2 threads takes seconds on
    a loaded 2-core machine, where two OpenMP threads wait for each other)."""
    from dnibench.parallel.worker import Worker
    g = torch.Generator().manual_seed(0)
    torch.save({"x_train": torch.rand(64, 1, 8, 8, generator=g), "y_train": torch.randint(0, 10, (64,), generator=g),
                "x_test": torch.rand(8, 1, 8, 8, generator=g), "y_test": torch.randint(0, 10, (8,), generator=g),
                "num_classes": 10}, tmp_path / "data.pt")
    before = torch.get_num_threads()
    try:
        for threads in (2, 1):
            Worker(0, spec("cdni", 1, schedule="decoupled", max_in_flight=4, threads=threads).model_dump_json(),
                   str(tmp_path / "data.pt"), str(tmp_path / "rdzv"), None, {}, 10.0)
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


def _row(method, k, rate, schedule="decoupled", micro="", pipe="", threads="1", **metrics):
    return parallel_row(method, schedule, k, {"mean_samples_per_s": rate, **metrics}, model="fcn6", batch=256,
                        run_id=f"{method}{k}{pipe}{threads}", microbatches=micro, pipeline=pipe, threads=threads)


def test_locked_bprop_charges_each_message_its_busy_cost():
    """Locked bprop at K = 2: two messages per step in series, each at what busy_ping measured (the ping-pong's
    0.1 ms would predict 22-28 % too fast on this machine)."""
    stages = [cost.StageCost(forward=1e-3, backward=2e-3, update=1e-4, out_bytes=262144) for _ in range(4)]
    metrics = cost.cost_metrics(stages, cost.Link(1e-4, 1e10))
    one = _row("bprop", 1, 256 / 0.0125, schedule="locked", **cost.cost_metrics(stages))
    two = _row("bprop", 2, 20000.0, schedule="locked", **metrics, **{"cost/link_busy_s": 9e-4,
               "cost/link_busy_bytes": 262144.0, "cost/contended": 1.0}, **cost.split_metrics([(0, 2), (2, 4)]))
    runs = report.prepare(pd.DataFrame([one, two]))
    got = report.predictions(runs)["predicted"].tolist()
    factor = 0.0125 / (4 * 3e-3 + 4e-4)                    # K = 1 measured over its stages (one update of all four)
    # K = 2: every stage's forward and backward in series, the larger worker's update (two stages), two messages
    assert got[1] == pytest.approx(256 / (factor * (4 * 3e-3 + 2e-4) + 2 * 9e-4))


def test_labels_baselines_and_the_single_process_sentence():
    rows = [_row("bprop", 1, 17000.0, "pipelined", "4", "gpipe"), _row("bprop", 2, 15000.0, "pipelined", "4", "gpipe"),
            _row("bprop", 2, 16000.0, "pipelined", "4", "1f1b"), _row("bprop", 1, 25000.0, "locked"),
            _row("cdni", 1, 14000.0), _row("cdni", 2, 23800.0), _row("cdni", 1, 17000.0, threads="2")]
    runs = report.prepare(pd.DataFrame(rows))
    assert list(runs["label"]) == ["Bprop pipelined M=4", "Bprop pipelined M=4", "Bprop pipelined 1F1B M=4",
                                   "Bprop locked", "cDNI", "cDNI", "cDNI, 2 threads"]
    # 1F1B without a K = 1 run of its own: GPipe of the same M is its baseline
    assert report.baseline_label(runs, "Bprop pipelined 1F1B M=4") == "Bprop pipelined M=4"
    table = report.speedup_table(runs).set_index(["method", "K"])
    assert table.loc[("Bprop pipelined 1F1B M=4", 2), "speed-up"] == f"{16000 / 17000:.2f}"
    assert report.single_process_ratio(runs, 2) == (
        "cDNI at K = 2 (one thread each): 23800 samples/s, 1.70x cDNI in one process at one thread (14000); "
        "1.40x its best single process (cDNI, 2 threads at K = 1: 17000); 0.95x the fastest single process of "
        "any method (Bprop locked: 25000).")
    assert report.single_process_ratio(runs[runs["method"] != "cdni"], 2) == ""


def test_pipeline_charges_each_micro_batch_its_receive_and_the_schedules_overhead():
    """GPipe/1F1B at K = 2, M = 4: a micro-batch's message is charged to the worker that receives it (the library
    posts each receive when it needs it), and every worker pays the schedule's own time per micro-batch."""
    stages = [cost.StageCost(forward=4e-3, backward=8e-3, out_bytes=1000), cost.StageCost(forward=2e-3, backward=4e-3, out_bytes=10)]
    link = cost.Link(1e-3, float("inf"))
    # f = [1.5, 1.0] ms, b = [2.5, 1.5] ms (compute / 4 + half the 1 ms overhead), messages 1 ms:
    # GPipe: forward 2.5 + 1 + 3 max(1.5, 1.0 + 1) = 9.5 ms; backward 4 + 1 + 3 max(2.5 + 1, 1.5) = 15.5 ms
    assert cost.step_time("gpipe", stages, 2, link, 4, overhead_s=1e-3) == pytest.approx(25e-3)
    # 1F1B: the first micro-batch through and back 2.5 + 4 + 2, then 3 steady pairs, each with one fused
    # exchange: 3 max(1.5 + 2.5 + 1, 1.0 + 1.5 + 1) = 15 ms
    assert cost.step_time("1f1b", stages, 2, link, 4, overhead_s=1e-3) == pytest.approx(23.5e-3)
    # the overhead from one worker's step of the same M: 22 ms measured over 18 ms of compute, per micro-batch
    overhead = cost.microbatch_overhead(stages, 22e-3, 4)
    assert overhead == pytest.approx(1e-3)
    assert cost.step_time("gpipe", stages, 1, link, 4, overhead_s=overhead) == pytest.approx(22e-3)
    assert cost.microbatch_overhead(stages, 10e-3, 4) == 0.0
    with pytest.raises(ValueError, match="micro-batches apply to gpipe and 1f1b only"):
        cost.step_time("locked", stages, 2, link, 4)


def test_pipeline_model_takes_each_workers_timed_chunks():
    """A pipelined run times each worker's micro-batch forward and backward before its clock (worker.py
    ``time_pipeline_chunks``): the model's per-micro-batch compute is that chunk, and the schedule's own time per
    micro-batch is what the K = 1 run of the same M took beyond its own timed chunks and its update."""
    stages = [cost.StageCost(forward=4e-3, backward=8e-3, update=1e-4, out_bytes=1000),
              cost.StageCost(forward=2e-3, backward=4e-3, update=1e-4, out_bytes=10)]
    # each group's forward (backward) becomes M x its timed chunk: worker 0 1.5 / 2.5 ms, worker 1 1.0 / 2.0 ms
    chunked = cost.chunk_groups(stages, [(0, 1), (1, 2)], [1.5e-3, 1.0e-3], [2.5e-3, 2.0e-3], 4)
    assert [(s.forward, s.backward) for s in chunked] == [pytest.approx((6e-3, 10e-3)), pytest.approx((4e-3, 8e-3))]
    assert [(s.update, s.out_bytes) for s in chunked] == [(1e-4, 1000), (1e-4, 10)]
    one = cost.chunk_groups(stages, [(0, 2)], [2.0e-3], [3.0e-3], 4)     # within a group the proportions stay
    assert [(s.forward, s.backward) for s in one] == [pytest.approx((16e-3 / 3, 8e-3)), pytest.approx((8e-3 / 3, 4e-3))]
    with pytest.raises(ValueError, match="2/2 worker chunk times for a split into 1 groups"):
        cost.chunk_groups(stages, [(0, 2)], [1e-3, 1e-3], [1e-3, 1e-3], 4)
    assert cost.worker_chunks_from_metrics({"cost/worker0/chunk_forward_s": 1e-3}, 1) is None

    link = cost.Link(1e-4, 1e10)
    chunks = lambda k, f, b: {f"cost/worker{k}/chunk_forward_s": f, f"cost/worker{k}/chunk_backward_s": b}  # noqa: E731
    # K = 1: 4 chunks of 2 + 3 ms and the 0.2 ms update in a 24.2 ms step: the library's own 1 ms per micro-batch
    k1 = _row("bprop", 1, 256 / 24.2e-3, "pipelined", "4", "gpipe", **cost.cost_metrics(stages), **chunks(0, 2e-3, 3e-3))
    k2 = _row("bprop", 2, 18000.0, "pipelined", "4", "gpipe", **cost.cost_metrics(stages, link),
              **{"cost/link_busy_s": 5e-4, "cost/link_busy_bytes": 250.0, "cost/contended": 1.0},
              **cost.split_metrics([(0, 1), (1, 2)]), **chunks(0, 1.5e-3, 2.5e-3), **chunks(1, 1.0e-3, 2.0e-3))
    runs = report.prepare(pd.DataFrame([k1, k2]))
    got = report.predictions(runs).set_index(runs["workers"])
    assert cost.microbatch_overhead(one, 24.2e-3, 4) == pytest.approx(1e-3)
    busy = cost.busy_link(link, 5e-4, 250)
    assert got.loc[2, "predicted"] == pytest.approx(cost.throughput(
        "gpipe", chunked, 2, busy, 256, 4, [(0, 1), (1, 2)], overhead_s=1e-3))
    # by hand: f = [2.0, 1.5] ms, b = [3.0, 2.5] ms (chunk + half the 1 ms), messages 0.5 ms, update 0.1 ms:
    # forward 3.5 + 0.5 + 3 max(2.0, 1.5 + 0.5) = 10 ms; backward 5.5 + 0.5 + 3 max(3.0 + 0.5, 2.5) = 16.5 ms
    assert got.loc[2, "predicted"] == pytest.approx(256 / 26.6e-3)
    assert got.loc[2, "source"].startswith("each worker's micro-batch forward and backward timed next to a busy peer "
                                           "before the run + K=1 pipeline overhead 1.00 ms per micro-batch and worker")
    # a run logged before the chunks were timed: the stages at the whole batch and the old overhead
    old = report.prepare(pd.DataFrame([{k: v for k, v in row.items() if "chunk_" not in k} for row in (k1, k2)]))
    assert report.predictions(old).set_index(old["workers"]).loc[2, "source"].startswith(
        "stage costs timed next to a busy peer + K=1 pipeline overhead")


def test_dnibench_run_takes_both_options_from_a_suite(tmp_path, fake_mnist_data_dir):
    """As the README tells a user: the options in a suite file, then ``dnibench run``; each run logs what ran."""
    import sqlite3

    from dnibench.cli import main
    suite = tmp_path / "opts.yaml"
    suite.write_text("""
name: opts
task: mnist
train: {steps: 4, batch_size: 8, lr: 1.0e-3, lr_decay_at: [], eval_every: 4, log_every: 2}
profiles: {smoke: {}, quick: {}, paper: {}}
entries:
  - model: fcn3
    method: bprop
    parallel: {workers: 2, schedule: pipelined, microbatches: 2, pipeline_schedule: 1f1b}
  - model: fcn3
    method: cdni
    parallel: {workers: 1, threads: 2}
""")
    db = tmp_path / "m.db"
    assert main(["run", str(suite), "--profile", "smoke", "--device", "cpu", "--tracking-uri", f"sqlite:///{db}",
                 "--data-dir", str(fake_mnist_data_dir), "--no-progress"]) == 0
    with sqlite3.connect(db) as con:
        children = con.execute("select r.run_uuid, r.status from runs r join tags t on t.run_uuid = r.run_uuid "
                               "where t.key = 'dnibench.role' and t.value = 'child'").fetchall()
        logged = {}
        for run_id, status in children:
            assert status == "FINISHED"
            params = dict(con.execute("select key, value from params where run_uuid = ?", (run_id,)).fetchall())
            (threads,), = con.execute("select value from latest_metrics where run_uuid = ? and key = 'cpu_threads'",
                                      (run_id,)).fetchall()
            logged[params["method"]] = (params["schedule"], params["pipeline_schedule"], params["threads"], threads)
            if params["method"] == "bprop":     # each worker's micro-batch chunks, timed before the run (the model's)
                chunks = dict(con.execute("select key, value from latest_metrics where run_uuid = ? and key like "
                                          "'cost/worker%/chunk_%'", (run_id,)).fetchall())
                assert set(chunks) == {f"cost/worker{k}/chunk_{d}_s" for k in (0, 1) for d in ("forward", "backward")}
                assert all(v > 0 for v in chunks.values())
    assert logged == {"bprop": ("pipelined", "1f1b", "1", 1.0), "cdni": ("decoupled", "", "2", 2.0)}
