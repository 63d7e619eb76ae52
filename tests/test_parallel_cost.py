"""A parallel run logs the cost model's inputs (dnibench/parallel/cost.py), measured in its own processes
before the training clock starts, and the report's parallel section predicts that run from them."""
import pandas as pd
import pytest
import torch

from dnibench.data import ImageData
from dnibench.methods import get_method
from dnibench.parallel import cost, worker
from dnibench.report import parallel as report
from dnibench.suite import ParallelSettings, RunSpec, TrainSettings
from dnibench.train import train_ff
from report_fixtures import parallel_row

STEPS, BATCH = 6, 32


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return ImageData(torch.rand(128, 1, 8, 8, generator=g), torch.randint(0, 10, (128,), generator=g),
                     torch.rand(50, 1, 8, 8, generator=g), torch.randint(0, 10, (50,), generator=g), 10, "fake")


def spec(workers: int) -> RunSpec:
    return RunSpec(suite="parallel", profile="smoke", task="mnist", model="fcn4", method="cdni",
                   method_args=get_method("cdni").Settings().model_dump(),
                   train=TrainSettings(steps=STEPS, batch_size=BATCH, lr=1e-2, lr_decay_at=[], eval_every=STEPS,
                                       log_every=3),
                   seed=0, device="cpu",
                   parallel=ParallelSettings(workers=workers, schedule="decoupled", max_in_flight=2))


def _row(method: str, schedule: str, k: int, metrics: dict, run_id: str | None = None) -> dict:
    return parallel_row(method, schedule, k, metrics, model="fcn4", batch=BATCH, run_id=run_id or f"r{k}")


@pytest.fixture(scope="module")
def summaries(data):
    return {k: train_ff(spec(k), data, lambda row, step: None) for k in (1, 2)}


def test_runs_log_stage_costs_and_the_link(summaries):
    two = summaries[2]
    logged = cost.costs_from_metrics(two)
    assert logged is not None
    stages, link = logged
    assert len(stages) == 4                                       # fcn4: every stage, not only worker 0's
    for i, stage in enumerate(stages):
        assert stage.forward > 0 and stage.backward > 0 and stage.update > 0
        assert (stage.synth > 0) == (i < 3)                       # cDNI: a synthesizer on every output but the last
        assert stage.out_bytes == BATCH * (10 if i == 3 else 256) * 4
    assert link is not None and link.latency_s >= 0 and link.bandwidth_Bps > 0   # 0: busy_s < the bytes at bandwidth
    assert two["cost/link_fitted"] in (0.0, 1.0)
    # the split the run trained with: the one minimising the slower worker's measured total, timed with
    # both workers busy (K = 1 timed alone)
    assert cost.split_from_metrics(two, 2) == cost.partition([s.total for s in stages], 2)
    assert two["cost/contended"] == 1.0 and summaries[1]["cost/contended"] == 0.0
    # the model charges a message of the boundary's size what it cost next to busy compute (where the bytes at
    # the ping-pong's bandwidth alone take longer, that)
    assert two["cost/link_busy_s"] > 0 and two["cost/link_busy_bytes"] == BATCH * 256 * 4
    assert link.message(two["cost/link_busy_bytes"]) == pytest.approx(max(
        two["cost/link_busy_s"], two["cost/link_busy_bytes"] / two["cost/link_bandwidth_Bps"]))
    assert two["load_1m/start"] >= 0 and two["load_1m/end"] >= 0
    # measured once, outside the training clock: at least the two steps each worker times for a fixed span (K = 2
    # decoupled), and not a loop that runs away (how cheap it is belongs in make bench, not here)
    assert 2 * worker.STEP_TIMING_S <= two["cost/measure_s"] < 60
    one = cost.costs_from_metrics(summaries[1])
    assert one is not None and len(one[0]) == 4 and one[1] is None   # one process: no link


def test_report_predicts_from_the_logged_inputs(summaries):
    runs = report.prepare(pd.DataFrame([_row("cdni", "decoupled", k, summary) for k, summary in summaries.items()]))
    assert runs["samples_per_s"].notna().all()
    got = report.predictions(runs).set_index(runs["workers"])
    stages, link = cost.costs_from_metrics(summaries[2])
    split = cost.split_from_metrics(summaries[2], 2)
    sends = [link.message(stages[split[0][1] - 1].out_bytes)] * 2     # one message each way across the boundary
    # each worker timed its own decoupled step before the run (next to the other): the model's compute per worker
    steps = [summaries[2][f"cost/worker{k}/step_s"] for k in (0, 1)]
    assert all(step > 0 for step in steps) and summaries[1]["cost/worker0/step_s"] > 0
    assert got.loc[2, "source"] == ("each worker's step timed next to a busy peer before the run, run's split, "
                                    "logged link, messages timed next to busy compute")
    assert got.loc[2, "predicted"] == pytest.approx(BATCH / max(w + m for w, m in zip(steps, sends)))
    assert got.loc[1, "source"] == "the step timed before the run"
    assert got.loc[1, "predicted"] == pytest.approx(BATCH / summaries[1]["cost/worker0/step_s"])
    # runs without the workers' steps (logged before they were timed): the stage costs timed next to a busy peer
    # times the K = 1 run's whole-step factor
    runs = runs.drop(columns=[c for c in runs if c.endswith("/step_s")])
    got = report.predictions(runs).set_index(runs["workers"])
    alone, _ = cost.costs_from_metrics(summaries[1])
    one_step = BATCH / runs.set_index("workers").loc[1, "samples_per_s"]
    factor = one_step / sum(s.total for s in alone)          # K = 1 step over its stages timed alone
    assert got.loc[2, "source"] == (f"stage costs timed next to a busy peer x K=1 whole-step factor {factor:.2f}, "
                                    "run's split, logged link, messages timed next to busy compute")
    assert got.loc[1, "source"] == "logged stage costs, uncalibrated (K=1 is the calibration point)"
    per_worker = [sum(s.total for s in stages[lo:hi]) * factor for lo, hi in split]
    assert got.loc[2, "predicted"] == pytest.approx(BATCH / max(w + m for w, m in zip(per_worker, sends)))
    # without a K = 1 run's stage costs: the old calibration (K = 1 predicted as measured)
    runs_old = runs.assign(**{f"metric.cost/stage{i}/forward": [float("nan"), runs.iloc[1][f"metric.cost/stage{i}/forward"]]
                              for i in range(4)}) if runs.iloc[0]["workers"] == 1 else None
    if runs_old is not None:
        old = report.predictions(runs_old).set_index(runs_old["workers"])
        assert old.loc[2, "source"].startswith("logged stage costs calibrated to K=1")
        assert old.loc[2, "predicted"] == pytest.approx(cost.throughput(
            "cdni", cost.calibrate(stages, "cdni", one_step), 2, link, BATCH, split=split))
    table = report.speedup_table(runs)
    two = table[table["K"] == 2].iloc[0]
    assert two["split"] == " ".join(f"{lo}:{hi}" for lo, hi in split)
    assert two["load start/end"].count("/") == 1


def test_efficiency_is_balance_times_work_times_executor(summaries):
    # made-up numbers: one process 10 ms a step; workers 6 and 8 ms before the run; the run 100 samples in 10 ms
    parts = report.efficiency_parts(rate=1e4, one_rate=1e4, steps=[6e-3, 8e-3], batch=100)
    assert parts["balance"] == pytest.approx(14 / 16) and parts["work"] == pytest.approx(10 / 14)
    assert parts["executor"] == pytest.approx(0.8) and parts["efficiency"] == pytest.approx(0.5)
    assert parts["bound"] == pytest.approx(10 / 16)        # one step over K x the slowest: a free executor's
    assert parts["contention"] != parts["contention"] and parts["split"] != parts["split"]   # NaN: not timed
    # with the one-process step timed on the workers at once (11 and 13 ms: 12 on average): work = contention x split
    parts = report.efficiency_parts(rate=1e4, one_rate=1e4, steps=[6e-3, 8e-3], batch=100, whole=[11e-3, 13e-3])
    assert parts["contention"] == pytest.approx(10 / 12) and parts["split"] == pytest.approx(12 / 14)
    assert parts["work"] == pytest.approx(10 / 14) and parts["bound"] == pytest.approx(10 / 16)
    assert parts["loop"] != parts["loop"]                  # NaN: the K = 1 run did not time its step
    # the K = 1 run's step timed alone, 8 ms: its loop kept 0.8 of that step's rate; the one-process step is 8 ms, and
    # the executor is counted against that loop (the run's 0.8 of the slowest worker's rate over the one process's 0.8)
    parts = report.efficiency_parts(rate=1e4, one_rate=1e4, steps=[6e-3, 8e-3], batch=100, whole=[11e-3, 13e-3],
                                    one_step=8e-3)
    assert parts["loop"] == pytest.approx(0.8) and parts["executor"] == pytest.approx(1.0)
    assert parts["work"] == pytest.approx(8 / 14) and parts["contention"] == pytest.approx(8 / 12)
    assert parts["split"] == pytest.approx(12 / 14) and parts["balance"] == pytest.approx(14 / 16)
    assert parts["bound"] == pytest.approx(8 / 16) and parts["efficiency"] == pytest.approx(0.5)
    # from the runs: one row for cDNI at K = 2, whose factors multiply to its efficiency
    table = report.efficiency_table(report.prepare(pd.DataFrame([_row("cdni", "decoupled", k, summary)
                                                                 for k, summary in summaries.items()])))
    assert list(table["K"]) == [2] and list(table["runs"]) == [1]
    got = {key: float(table.iloc[0][key]) for key in ("efficiency", "balance", "work", "executor", "contention", "split")}
    expected = summaries[2]["mean_samples_per_s"] / (2 * summaries[1]["mean_samples_per_s"])
    assert got["efficiency"] == pytest.approx(expected, abs=0.005)
    # the table's values are rounded to 0.01: a product of rounded factors is off by at most half a unit of each
    # times the others, plus the rounding of the value it is compared with
    b, w, e = got["balance"], got["work"], got["executor"]
    assert b * w * e == pytest.approx(got["efficiency"], abs=0.005 * (w * e + b * e + b * w + 1) + 1e-9)
    assert 0.5 <= got["balance"] <= 1.0
    c, s = got["contention"], got["split"]
    assert c * s == pytest.approx(w, abs=0.005 * (c + s + 1) + 1e-9)
    # the K = 1 run timed its step: the loop's share is its rate over that step's
    one_step = summaries[1]["cost/worker0/step_s"]
    assert float(table.iloc[0]["loop"]) == pytest.approx(
        one_step * summaries[1]["mean_samples_per_s"] / BATCH, abs=0.005)
    assert got["work"] == pytest.approx(one_step / sum(cost.worker_steps_from_metrics(summaries[2], 2)), abs=0.005)


def test_a_decoupled_run_times_the_whole_step_on_every_worker(summaries):
    # K = 2: the one-process step, timed on both workers at once before the run; K = 1 has nothing to compare it to
    whole = cost.worker_whole_steps_from_metrics(summaries[2], 2)
    assert whole is not None and all(t > 0 for t in whole)
    assert cost.worker_whole_steps_from_metrics(summaries[1], 1) is None


def record_timing(monkeypatch, returns=(0.5,)) -> list[tuple]:
    """cost.median_seconds replaced: each function it is given runs once, and how it would be timed (device, at least
    how many, over what span, after how many unmeasured) is recorded; the n-th call returns ``returns[n]`` (the last
    one after that)."""
    timed = []

    def median_seconds(fn, device, repeats, seconds, warmup):
        timed.append((str(device), repeats, seconds, warmup))
        fn()
        return returns[min(len(timed), len(returns)) - 1]
    monkeypatch.setattr(cost, "median_seconds", median_seconds)
    return timed


def test_the_whole_step_timed_is_the_one_process_step_on_a_copy(data, monkeypatch):
    """Worker.time_whole_step times the method's own fused step over every stage, at the run's batch, on a copy: the
    run's stages are left as they were."""
    import types

    from dnibench.methods import Setup
    from dnibench.methods.dni import DNI
    from dnibench.models import build_stages, stage_output_shapes
    from dnibench.parallel import worker

    torch.manual_seed(0)
    stages = build_stages("fcn4", (1, 8, 8), 10)
    setup = Setup(10, (1, 8, 8), stage_output_shapes(stages, (1, 8, 8)), 1e-2, torch.device("cpu"), fused_step=False)
    run_method = get_method("cdni")(stages, get_method("cdni").Settings(), setup)
    before = [p.detach().clone() for p in stages.parameters()]
    seen, step = [], DNI.step

    def spy(self, x, y):
        seen.append((self is run_method, self.fused, len(self.stages), tuple(x.shape), tuple(y.shape)))
        return step(self, x, y)
    monkeypatch.setattr(DNI, "step", spy)
    timed = record_timing(monkeypatch)
    me = types.SimpleNamespace(setup=setup, method=run_method, stages=stages, batch=BATCH, in_shape=(1, 8, 8),
                               device=torch.device("cpu"))
    assert worker.Worker.time_whole_step(me, seconds=0.25) == 0.5
    assert timed == [("cpu", 5, 0.25, 5)]               # at least 5 steps in the span, after 5 unmeasured
    assert seen == [(False, True, 4, (BATCH, 1, 8, 8), (BATCH,))]
    assert all(torch.equal(a, b) for a, b in zip(before, stages.parameters()))


@pytest.mark.parametrize("model,lo,hi,microbatches", [("fcn4", 0, 2, 4), ("fcn4", 1, 3, 2), ("fcn4", 2, 4, 8),
                                                      ("fcn4", 0, 4, None), ("cnn3", 0, 2, 4)],
                         ids=["first", "middle", "last", "one worker", "cnn first"])
def test_the_pipeline_chunks_timed_are_a_micro_batchs_forward_and_backward_through_the_workers_stages(
        monkeypatch, model, lo, hi, microbatches):
    """Worker.time_pipeline_chunks (a pipelined run's compute per micro-batch and worker, the model's chunks): a forward
    of one micro-batch through the worker's stages, then a forward and backward, each timed over half the span; the
    backward is their difference. The input is a micro-batch of the images on the first worker, of the activation below
    elsewhere, and gets a gradient where the pipeline sends one down; the backward starts from the loss on the last
    worker and from a gradient of the group's output shape elsewhere. On a copy: the run's stages are left as they
    were."""
    import types

    from dnibench.methods import Setup
    from dnibench.models import build_stages, stage_output_shapes

    torch.manual_seed(0)
    stages = build_stages(model, (1, 8, 8), 10, 4)         # a CNN's stages differ in shape, an FCN's hidden ones do not
    setup = Setup(10, (1, 8, 8), stage_output_shapes(stages, (1, 8, 8)), 1e-2, torch.device("cpu"))
    before = [p.detach().clone() for p in stages.parameters()]
    inputs, outputs = [], []                    # what each timed call fed the worker's first stage, and its output
    stages[lo].register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    stages[hi - 1].register_forward_hook(lambda module, args, out: outputs.append((module, out)))
    timed = record_timing(monkeypatch, returns=(0.2, 0.5))
    me = types.SimpleNamespace(stages=stages, lo=lo, hi=hi, first=lo == 0, last=hi == len(stages), batch=BATCH,
                               in_shape=(1, 8, 8), setup=setup, device=torch.device("cpu"),
                               par=types.SimpleNamespace(microbatches=microbatches))
    assert worker.Worker.time_pipeline_chunks(me, seconds=0.5, warmup=3) == (0.2, pytest.approx(0.3))
    assert timed == [("cpu", 5, 0.25, 3), ("cpu", 5, 0.25, 3)]
    mb = BATCH // (microbatches or 1)
    shape = (mb, 1, 8, 8) if lo == 0 else (mb, *setup.stage_shapes[lo - 1])
    assert [tuple(x.shape) for x in inputs] == [shape, shape] and inputs[0] is inputs[1]
    assert (inputs[0].grad is not None) == (lo > 0)             # the input's gradient, where one goes down
    copy_out = outputs[1][0]                                    # the copy's last stage, after forward and backward
    assert copy_out is not stages[hi - 1] and all(p.grad is not None for p in copy_out.parameters())
    if hi < len(stages):                                        # a gradient of the output's shape from above
        assert tuple(outputs[1][1].shape) == (mb, *setup.stage_shapes[hi - 1])
    assert all(torch.equal(a, b) for a, b in zip(before, stages.parameters()))
    assert all(p.grad is None for p in stages.parameters())


@pytest.mark.parametrize("method,lo,hi", [("cdni", 1, 3), ("cdni", 0, 2), ("cdni", 2, 4), ("unlock_cdni", 1, 3),
                                          ("cdni", 0, 4), ("dni", 1, 3)],
                         ids=["middle", "first", "last", "unlock middle", "one worker", "dni middle"])
def test_the_decoupled_step_timed_is_the_workers_own_on_a_copy(monkeypatch, method, lo, hi):
    """Worker.time_decoupled_step (the cost model's compute per worker, the efficiency's balance) times what the worker
    does in a step, on a copy of the method: trains its group on a batch (from the input below, or the images where it
    is first), regresses its boundary synthesizer on a target from above (not the last worker), and with complete
    unlock regresses its synthetic input models (a real input from below, not the first); one worker alone runs the
    method's own step. The run's parameters are left as they were."""
    import types

    from dnibench.methods import Setup
    from dnibench.methods.dni import DNI
    from dnibench.methods.units import StageGroup
    from dnibench.models import build_stages, stage_output_shapes
    from dnibench.parallel import worker

    torch.manual_seed(0)
    stages = build_stages("fcn4", (1, 8, 8), 10)
    unlock = method.startswith("unlock")
    setup = Setup(10, (1, 8, 8), stage_output_shapes(stages, (1, 8, 8)), 1e-2, torch.device("cpu"),
                  fused_step=not unlock)
    cls = get_method(method)
    run_method = cls(stages, cls.Settings(**({"input_hidden_layers": 0} if unlock else {})), setup)
    before = [p.detach().clone() for opt in run_method.optimizers() for g in opt.param_groups for p in g["params"]]
    seen = []

    def spy(name):
        original = getattr(StageGroup, name)

        def record(self, *args, **kwargs):
            first = args[0]                     # the input, target, or real inputs by the stage they come out of
            context = args[2] if name in ("train", "train_fused", "train_unlocked") else kwargs.get("context")
            h = kwargs.get("h")                 # regress: the kept output the synthesizer predicts again at
            seen.append((name, self.method is run_method, (self.lo, self.hi),
                         tuple(sorted(first)) if isinstance(first, dict) else tuple(first.shape),
                         kwargs.get("fresh", False), None if h is None else tuple(h.shape), context is not None))
            return original(self, *args, **kwargs)
        monkeypatch.setattr(StageGroup, name, record)
    for name in ("train", "train_fused", "regress", "train_unlocked", "regress_inputs"):
        spy(name)
    whole = DNI.step
    monkeypatch.setattr(DNI, "step", lambda self, x, y: seen.append(("step", self is run_method, tuple(x.shape)))
                        or whole(self, x, y))
    timed = record_timing(monkeypatch)
    world = 1 if (lo, hi) == (0, 4) else 2
    me = types.SimpleNamespace(method=run_method, setup=setup, batch=BATCH, in_shape=(1, 8, 8), device=torch.device("cpu"),
                               lo=lo, hi=hi, first=lo == 0, last=hi == 4, world=world)
    me.shape_in = lambda: worker.Worker.shape_in(me)
    me.shape_out = lambda: worker.Worker.shape_out(me)
    assert worker.Worker.time_decoupled_step(me, seconds=0.25) == 0.5
    assert timed == [("cpu", 5, 0.25, 5)]               # at least 5 steps in the span, after 5 unmeasured
    x, h_in, out = (BATCH, 1, 8, 8), (BATCH, *setup.stage_shapes[lo - 1]), (BATCH, *setup.stage_shapes[hi - 1])
    c = method != "dni"                                 # a label context for conditioned synthesizers only
    if world == 1:                                      # the method's own step (which trains the whole net fused)
        expected = [("step", False, x), ("train_fused", False, (0, 4), x, False, None, c)]
    elif unlock:        # the group's own synthetic inputs, the boundary synthesizer, then I at stage lo's input
        expected = [("train_unlocked", False, (lo, hi), x, False, None, c),
                    ("regress_inputs", False, (lo, hi), tuple(range(lo, hi)), False, None, False),
                    ("regress", False, (lo, hi), out, False, out, c),
                    ("regress_inputs", False, (lo, hi), (lo - 1,), True, None, False)]
    else:               # a target from above regressed at a kept output, predicted again there (as on_target does)
        expected = [("train_fused", False, (lo, hi), x if lo == 0 else h_in, False, None, c)]
        expected += [] if hi == 4 else [("regress", False, (lo, hi), out, False, out, c)]
    assert seen == expected
    after = [p.detach() for opt in run_method.optimizers() for g in opt.param_groups for p in g["params"]]
    assert len(before) == len(after) and all(torch.equal(a, b) for a, b in zip(before, after))


def test_locked_workers_that_block_pay_the_blocked_message():
    stages = [cost.StageCost(forward=1e-3, backward=2e-3, update=1e-4, out_bytes=4000) for _ in range(4)]
    inputs = {**cost.cost_metrics(stages, cost.Link(1e-5, 1e9)), **cost.split_metrics([(0, 2), (2, 4)]),
              "cost/link_busy_s": 2e-4, "cost/link_busy_bytes": 4000.0, "cost/link_blocked_s": 6e-4,
              "cost/contended": 1.0}
    runs = report.prepare(pd.DataFrame([
        _row("bprop", "locked", k, {**inputs, "mean_samples_per_s": rate, "wait_polls": polls}, run_id=f"r{k}{polls}")
        for k, rate, polls in ((1, 20000.0, 0.0), (2, 15000.0, 1.0), (2, 15000.0, 0.0))]))
    got = report.predictions(runs)
    polled, blocked = got.iloc[1], got.iloc[2]
    assert polled["source"].endswith("messages timed next to busy compute")
    assert blocked["source"].endswith("messages timed to a blocked receiver")
    # the same compute, two messages a step: each 0.4 ms dearer when the receiver blocks
    assert BATCH / blocked["predicted"] - BATCH / polled["predicted"] == pytest.approx(2 * 4e-4)


def test_scale_groups_gives_each_worker_its_measured_step():
    stages = [cost.StageCost(forward=f, backward=2 * f, synth=s, out_bytes=1000)
              for f, s in ((3.0, 1.0), (1.0, 1.0), (1.0, 1.0), (1.0, 0.0))]    # totals 10, 4, 4, 3
    split = [(0, 2), (2, 4)]
    scaled = cost.scale_groups(stages, split, [21.0, 14.0])
    assert [round(s.total, 9) for s in scaled] == [15.0, 6.0, 8.0, 6.0]     # x1.5 and x2: proportions kept per group
    assert [s.out_bytes for s in scaled] == [1000] * 4
    free = cost.Link(0.0, float("inf"))
    assert cost.step_time("cdni", scaled, 2, free, split=split) == pytest.approx(21.0)   # the slower worker
    assert cost.worker_steps_from_metrics({"metric.cost/worker0/step_s": 0.5, "cost/worker1/step_s": 0.25}, 2) == [0.5, 0.25]
    assert cost.worker_steps_from_metrics({"cost/worker0/step_s": 0.5}, 2) is None
    assert cost.worker_steps_from_metrics({"cost/worker0/step_s": float("nan")}, 1) is None
    with pytest.raises(ValueError, match="2 worker steps for a split into 1 groups"):
        cost.scale_groups(stages, [(0, 4)], [1.0, 2.0])


def test_the_model_takes_a_runs_own_split():
    stages = [cost.StageCost(forward=f, backward=2 * f, out_bytes=1000) for f in (3.0, 1.0, 1.0, 1.0)]
    free = cost.Link(0.0, float("inf"))
    assert cost.partition([3 * s.forward for s in stages], 2) == [(0, 1), (1, 4)]          # 9 | 9
    assert cost.step_time("dni", stages, 2, free) == pytest.approx(9.0)
    # a run that split 2 | 2 (by parameters) is as slow as its heavier group: 12 s, not 9
    assert cost.step_time("dni", stages, 2, free, split=[(0, 2), (2, 4)]) == pytest.approx(12.0)
    assert cost.split_from_metrics(cost.split_metrics([(0, 2), (2, 4)]), 2) == [(0, 2), (2, 4)]
    assert cost.split_from_metrics({}, 2) is None
    # a noisy ping-pong whose fitted line crosses 0 below the smallest size: that size's time is the latency
    link, fitted = cost.link_from_times({4: 1e-6, 50_000: 2e-4, 100_000: 6e-4})
    assert cost.fit_link({4: 1e-6, 50_000: 2e-4, 100_000: 6e-4}).latency_s == 0.0
    assert fitted and link.latency_s == 1e-6 and link.bandwidth_Bps == pytest.approx(1 / 5.99e-9, rel=0.01)
    link, fitted = cost.link_from_times({4: 3e-5, 1000: 1e-5, 4000: 2e-5})    # no growth: latency only
    assert not fitted and link.latency_s == 2e-5 and link.bandwidth_Bps == float("inf")
    with pytest.raises(ValueError, match="does not give 2 workers the 4 stages"):
        cost.step_time("dni", stages, 2, free, split=[(0, 2), (2, 3)])
