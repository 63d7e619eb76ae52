"""The parallel cost model (dnibench/parallel/cost.py) on synthetic inputs with known answers."""
from __future__ import annotations

import math
import statistics
from dataclasses import replace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dnibench.parallel import cost
from dnibench.parallel.cost import Link, StageCost

FREE = Link(0.0, math.inf)
# four unequal stages, 1 MB activations
STAGES = [StageCost(forward=f, backward=2 * f, update=0.1 * f, synth=0.5 * f, synth_input=0.3 * f,
                    out_bytes=1_000_000) for f in (1.0, 3.0, 2.0, 0.5)]
SLOW_LINK = Link(0.01, 1e8)                   # 10 ms + 10 ms per MB


def test_partition_minimises_the_largest_group():
    assert cost.partition([1, 2, 3, 4, 5], 2) == [(0, 3), (3, 5)]          # 6 | 9 (not 10 | 5)
    assert cost.partition([5, 1, 1, 1, 5], 3) == [(0, 1), (1, 4), (4, 5)]
    assert cost.partition([1, 1], 1) == [(0, 2)]
    assert cost.partition([1.0] * 6, 2) == [(0, 3), (3, 6)]
    assert cost.partition([4.0, 1.0, 1.0, 1.0, 1.0], 2) == [(0, 1), (1, 5)]
    assert cost.partition([1.0, 1.0, 1.0], 3) == [(0, 1), (1, 2), (2, 3)]
    # ties on the largest group (5 | 3 and 3 | 5): the most even stage counts, 2 | 3 rather than 1 | 4
    assert cost.partition([3.0, 2.0, 1.0, 1.0, 1.0], 2) == [(0, 2), (2, 5)]
    # and among the groups after the first: 2 | 2 | 1 stages rather than 1 | 3 | 1 (the largest costs 3 either way)
    assert cost.partition([1.0, 1.0, 1.0, 1.0, 3.0], 3) == [(0, 2), (2, 4), (4, 5)]
    with pytest.raises(ValueError, match="cannot each own a stage"):
        cost.partition([1, 1], 3)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_gpipe_with_one_microbatch_is_locked(k):
    locked = cost.step_time("locked", STAGES, k, SLOW_LINK)
    assert cost.step_time("gpipe", STAGES, k, SLOW_LINK, microbatches=1) == pytest.approx(locked)
    # locked: all compute in series plus two messages per boundary, plus the largest update
    groups = cost.partition([s.forward + s.backward + s.synth + s.synth_input for s in STAGES], k)
    updates = [sum(s.update for s in STAGES[lo:hi]) for lo, hi in groups]
    expected = sum(s.forward + s.backward for s in STAGES) + 2 * (k - 1) * SLOW_LINK.message(1e6) + max(updates)
    assert locked == pytest.approx(expected)


@pytest.mark.parametrize("k,m", [(2, 4), (4, 4), (4, 8), (3, 1)])
def test_1f1b_pays_one_exchange_per_steady_pair(k, m):
    stages = [StageCost(forward=1.0, backward=2.0, out_bytes=1e6)] * k
    # free messages: the same bubble as GPipe
    assert cost.step_time("1f1b", stages, k, FREE, microbatches=m) == pytest.approx(
        cost.step_time("gpipe", stages, k, FREE, microbatches=m))
    # with messages of cost c: fill and drain 2 (K-1) c, then M-1 pairs of f + b + c (an inner worker receives
    # from both sides, but the pair's send and receive are posted together: one c), against GPipe's 2 c per pair
    c = SLOW_LINK.message(1e6 / m)
    f, b = 1.0 / m, 2.0 / m
    pair = f + b + (c if k > 1 else 0.0)
    assert cost.step_time("1f1b", stages, k, SLOW_LINK, microbatches=m) == pytest.approx(
        k * (f + b) + 2 * (k - 1) * c + (m - 1) * pair)
    if k > 1 and m > 1:
        assert cost.step_time("1f1b", stages, k, SLOW_LINK, microbatches=m) < cost.step_time(
            "gpipe", stages, k, SLOW_LINK, microbatches=m)


@pytest.mark.parametrize("k,m", [(2, 4), (4, 4), (4, 8), (3, 1)])
def test_gpipe_bubble_on_equal_stages(k, m):
    stages = [StageCost(forward=1.0, backward=2.0)] * k
    t = cost.step_time("gpipe", stages, k, FREE, microbatches=m)
    # (M + K - 1) micro-batch slots of 3/M seconds: the bubble is (K-1)/(M+K-1) of the step
    assert t == pytest.approx((m + k - 1) * 3.0 / m)
    ideal = 3.0 * k / k                         # the whole batch's work spread over K workers
    assert 1 - ideal / t == pytest.approx((k - 1) / (m + k - 1))


def test_decoupled_with_free_messages_is_the_slowest_worker():
    k = len(STAGES)
    for schedule in ("dni", "cdni"):
        t = cost.step_time(schedule, STAGES, k, FREE)
        assert t == pytest.approx(max(s.forward + s.backward + s.update + s.synth for s in STAGES))
    unlock = cost.step_time("unlock", STAGES, k, FREE)
    assert unlock == pytest.approx(max(s.forward + s.backward + s.update + s.synth + s.synth_input for s in STAGES))
    # messages: the middle worker sends up and down
    t = cost.step_time("dni", STAGES, k, SLOW_LINK)
    assert t == pytest.approx(3.0 + 6.0 + 0.3 + 1.5 + 2 * SLOW_LINK.message(1e6))


# three workers, one stage each, unequal compute and unequal messages across the two boundaries (1 MB, 3 MB):
# which message each worker waits for, and what it sends, changes the answer
THREE = [StageCost(forward=1.0, backward=2.0, update=0.1, synth=0.5, out_bytes=1_000_000),
         StageCost(forward=2.0, backward=4.0, update=0.3, synth=0.5, out_bytes=3_000_000),
         StageCost(forward=1.0, backward=2.0, update=0.2, out_bytes=0)]


def test_pipelines_charge_each_worker_the_message_it_receives_worked_by_hand():
    # M = 2: messages of half the bytes on SLOW_LINK, 0.015 s across boundary 0 and 0.025 s across boundary 1;
    # f = [0.5, 1, 0.5], b = [1, 2, 1]; worker i waits for boundary i - 1's activation and boundary i's gradient
    forward = 2.0 + 0.04 + max(0.5, 1.0 + 0.015, 0.5 + 0.025)
    backward = 4.0 + 0.04 + max(1.0 + 0.015, 2.0 + 0.025, 1.0)
    assert cost.step_time("gpipe", THREE, 3, SLOW_LINK, microbatches=2) == pytest.approx(forward + backward + 0.3)
    # 1F1B: one steady pair of f + b + the larger of the two messages the worker receives
    pair = max(1.5 + 0.015, 3.0 + 0.025, 1.5 + 0.025)
    assert cost.step_time("1f1b", THREE, 3, SLOW_LINK, microbatches=2) == pytest.approx(
        2.0 + 4.0 + 2 * 0.04 + pair + 0.3)
    # the schedule's own 0.2 s per micro-batch and worker, half in each phase: f = [0.6, 1.1, 0.6], b = [1.1, 2.1, 1.1]
    forward = 2.3 + 0.04 + max(0.6, 1.1 + 0.015, 0.6 + 0.025)
    backward = 4.3 + 0.04 + max(1.1 + 0.015, 2.1 + 0.025, 1.1)
    assert cost.step_time("gpipe", THREE, 3, SLOW_LINK, microbatches=2, overhead_s=0.2) == pytest.approx(
        forward + backward + 0.3)
    assert cost.throughput("gpipe", THREE, 3, SLOW_LINK, 256, microbatches=2, overhead_s=0.2) == pytest.approx(
        256 / (forward + backward + 0.3))


def test_decoupled_workers_send_across_their_own_boundaries_worked_by_hand():
    # each worker: forward + backward + update + synthesizer + a message across each of its boundaries
    # (0.02 s for 1 MB, 0.04 s for 3 MB); the middle worker is the slowest
    assert cost.step_time("dni", THREE, 3, SLOW_LINK) == pytest.approx(2.0 + 4.0 + 0.3 + 0.5 + 0.02 + 0.04)
    # a given split: stages 0-1 on worker 0 (it sends the 3 MB boundary only), stage 2 on worker 1
    assert cost.step_time("dni", THREE, 2, SLOW_LINK, split=[(0, 2), (2, 3)]) == pytest.approx(
        3.0 + 6.0 + 0.4 + 1.0 + 0.04)
    assert cost.throughput("dni", THREE, 2, SLOW_LINK, 100, split=[(0, 2), (2, 3)]) == pytest.approx(
        100 / (3.0 + 6.0 + 0.4 + 1.0 + 0.04))


@pytest.mark.parametrize("split", [[(0, 1), (1, 3), (3, 3)], [(1, 2), (2, 3)], [(0, 1), (1, 2)], [(0, 2)]])
def test_a_split_that_does_not_cover_the_stages_is_refused(split):
    with pytest.raises(ValueError, match=r"does not give 2 workers the 3 stages"):
        cost.step_time("dni", THREE, 2, FREE, split=split)


def test_microbatches_below_one_are_refused():
    with pytest.raises(ValueError, match="microbatches 0: expected at least 1"):
        cost.step_time("gpipe", THREE, 2, FREE, microbatches=0)


def test_throughput_and_scaling_rows():
    assert cost.throughput("dni", STAGES, 1, FREE, 256) == pytest.approx(256 / sum(
        s.forward + s.backward + s.update + s.synth for s in STAGES))
    rows = cost.predict_scaling(STAGES, 256, cost.CPU_CLUSTER, workers=[1, 2, 8])
    by = {(r["workers"], r["schedule"]): r for r in rows}
    assert by[(1, "cdni")]["efficiency"] == pytest.approx(1.0)
    assert by[(8, "cdni")]["stages"] == 8 and by[(2, "cdni")]["stages"] == 4
    # the decoupled schedule scales; locked bprop gains only from overlapping the workers' updates
    # (with free updates it never beats one process: it adds messages and overlaps nothing)
    assert by[(8, "cdni")]["speedup"] > 2.0
    no_update = [replace(s, update=0.0) for s in STAGES]
    locked = cost.predict_scaling(no_update, 256, cost.CPU_CLUSTER, workers=[2], schedules={"l": {"schedule": "locked"}})
    assert locked[0]["speedup"] < 1.0
    assert by[(8, "gpipe_m8")]["speedup"] > by[(8, "gpipe_m4")]["speedup"] > by[(8, "locked")]["speedup"]
    # every default schedule in every K; each row's numbers are step_time's for that schedule, against one process
    # running the same (deepened) network: locked bprop for the pipelines, the method itself for the others
    assert {label for _, label in by} == {"locked", "gpipe_m4", "gpipe_m8", "dni", "cdni", "unlock"}
    net = cost.deepen(STAGES, 8)
    for label, schedule, m in (("gpipe_m4", "gpipe", 4), ("gpipe_m8", "gpipe", 8), ("unlock", "unlock", 1)):
        row = by[(8, label)]
        serial = cost.throughput("locked" if m > 1 else schedule, net, 1, cost.CPU_CLUSTER, 256)
        assert row["samples_per_s"] == pytest.approx(
            cost.throughput(schedule, net, 8, cost.CPU_CLUSTER, 256, microbatches=m))
        assert row["serial_samples_per_s"] == pytest.approx(serial)
        assert row["speedup"] == pytest.approx(row["samples_per_s"] / serial)
        assert row["efficiency"] == pytest.approx(row["speedup"] / 8)


def test_deepen_repeats_a_hidden_stage():
    deep = cost.deepen(STAGES, 7)
    assert len(deep) == 7 and deep[0] == STAGES[0] and deep[-1] == STAGES[-1]
    assert deep[3:6] == [STAGES[2]] * 3
    assert cost.deepen(STAGES, 3) == STAGES
    assert cost.deepen(STAGES, 4) == STAGES
    three = STAGES[:2] + STAGES[-1:]                                  # the smallest network with a hidden stage
    assert cost.deepen(three, 5) == [STAGES[0], STAGES[1], STAGES[1], STAGES[1], STAGES[-1]]
    with pytest.raises(ValueError, match="a hidden stage between the first and the last"):
        cost.deepen(STAGES[:2], 3)


def test_cluster_links_and_bad_input():
    gpu = cost.GPU_CLUSTER
    # 8 workers a node: boundary b (workers b, b + 1) leaves the node only where b + 1 starts the next one
    assert [b for b in range(17) if gpu.link(b) == gpu.inter] == [7, 15]
    assert all(gpu.link(b) == gpu.intra for b in (0, 3, 6, 8, 14, 16))
    assert cost.CPU_CLUSTER.link(0) == cost.CPU_CLUSTER.inter          # one worker a node: every boundary
    with pytest.raises(ValueError, match="schedule 'pipe'"):
        cost.step_time("pipe", STAGES, 2, FREE)
    with pytest.raises(ValueError, match="gpipe and 1f1b only"):
        cost.step_time("dni", STAGES, 2, FREE, microbatches=4)


def test_fit_link_recovers_latency_and_bandwidth():
    link = Link(2e-4, 5e8)
    fitted = cost.fit_link({n: link.message(n) for n in (4, 65536, 1 << 20)})
    assert fitted.latency_s == pytest.approx(2e-4, rel=1e-6)
    assert fitted.bandwidth_Bps == pytest.approx(5e8, rel=1e-6)
    with pytest.raises(ValueError, match="two or more"):
        cost.fit_link({4: 1e-4})
    two = cost.fit_link({4: link.message(4), 1 << 20: link.message(1 << 20)})     # two sizes are enough
    assert (two.latency_s, two.bandwidth_Bps) == (pytest.approx(2e-4, rel=1e-6), pytest.approx(5e8, rel=1e-6))
    with pytest.raises(ValueError, match="do not grow with size"):
        cost.fit_link({4: 1e-4, 1 << 20: 1e-4})


def test_measure_stage_costs_on_a_tiny_fcn():
    from dnibench.models import build_stages
    torch.manual_seed(0)
    stages = build_stages("fcn3", (8,), 4)
    costs = cost.measure_stage_costs(stages, (8,), 32, 4, synth_hidden_layers=0, context=True,
                                     synth_input_layers=0, repeats=2)
    assert len(costs) == 3
    assert all(c.forward > 0 and c.update > 0 for c in costs)
    assert [c.out_bytes for c in costs] == [32 * 256 * 4, 32 * 256 * 4, 32 * 4 * 4]
    assert costs[0].synth > 0 and costs[-1].synth == 0.0            # no synthesizer on the logits
    assert costs[0].synth_input == 0.0 and costs[1].synth_input > 0  # no synthetic input for the data


def test_measure_stage_costs_puts_each_timing_in_its_field(monkeypatch):
    """With a scripted clock (each timed call takes a fixed time by what it runs): forward, backward = forward and
    backward less the forward, the update, the synthesizer's regression step, the synthetic input's; every call
    is run once, on real tensors."""
    from dnibench.models import build_stages
    seconds = {"<lambda>": 1e-3, "fwd_bwd": 1.5e-3, "step": 0.25e-3, "synth_step": 0.7e-3, "input_step": 0.9e-3}
    calls = []

    def scripted(fn, device=None, repeats=0, seconds_=0.0, warmup=1):
        out = fn()
        if fn.__name__ == "<lambda>":                           # the forward: the stage's output, computed
            assert isinstance(out, torch.Tensor) and out.shape[0] == 32
        calls.append(fn.__name__)
        return seconds[fn.__name__]
    monkeypatch.setattr(cost, "median_seconds", scripted)
    costs = cost.measure_stage_costs(build_stages("fcn3", (8,), 4), (8,), 32, 4, synth_hidden_layers=0,
                                     context=True, synth_input_layers=0, repeats=2)
    hidden = StageCost(forward=1e-3, backward=0.5e-3, update=0.25e-3, synth=0.7e-3, out_bytes=32 * 256 * 4)
    assert costs == [hidden, replace(hidden, synth_input=0.9e-3),     # no synthetic input for the data
                     StageCost(forward=1e-3, backward=0.5e-3, update=0.25e-3, synth_input=0.9e-3, out_bytes=32 * 4 * 4)]
    assert calls.count("synth_step") == 2 and calls.count("input_step") == 2   # none on the logits, none for the data
    # a backward timed shorter than the forward (noise) is 0, not negative
    seconds["fwd_bwd"] = 0.5e-3
    costs = cost.measure_stage_costs(build_stages("fcn3", (8,), 4), (8,), 32, 4, repeats=2)
    assert [c.backward for c in costs] == [0.0] * 3 and all(c.synth == 0.0 for c in costs)


def test_median_seconds_times_the_calls_after_the_warm_up():
    import time
    calls = []

    def nap():
        calls.append(1)
        time.sleep(2e-3)
    t = cost.median_seconds(nap, repeats=3, warmup=2)
    assert len(calls) == 5 and 2e-3 <= t < 0.2                # two warm-up calls, three timed
    calls.clear()
    assert cost.median_seconds(nap, warmup=0) >= 2e-3 and len(calls) == 1     # at least one timed call
    calls.clear()
    cost.median_seconds(nap)
    assert len(calls) == 2                                    # by default one warm-up call and one timed
    calls.clear()
    start = time.perf_counter()
    cost.median_seconds(nap, repeats=1, seconds=0.03, warmup=0)   # and as many as fit in the span
    assert time.perf_counter() - start >= 0.03 and len(calls) >= 5


def test_link_from_times_keeps_a_fit_with_a_small_latency_and_falls_back_to_the_median():
    link = Link(1e-4, 1e9)
    fitted_link, fitted = cost.link_from_times({n: link.message(n) for n in (4, 1 << 16, 1 << 20)})
    assert fitted and fitted_link.latency_s == pytest.approx(1e-4, rel=1e-6)
    # four sizes whose times do not grow: the median per message (the upper of the middle two), any size
    flat, fitted = cost.link_from_times({4: 4e-5, 1000: 1e-5, 4000: 3e-5, 16000: 2e-5})
    assert not fitted and flat == Link(3e-5, float("inf"))


@pytest.mark.parametrize("bad", ["f_sum", "b_sum", "f", "b"])
def test_chunk_groups_needs_positive_times(bad):
    stages = [StageCost(forward=0.0 if bad == "f_sum" else 1e-3, backward=0.0 if bad == "b_sum" else 2e-3)]
    forward, backward = (0.0 if bad == "f" else 1e-3), (0.0 if bad == "b" else 1e-3)
    with pytest.raises(ValueError, match="needs positive stage and chunk times"):
        cost.chunk_groups(stages, [(0, 1)], [forward], [backward], 2)


def _in_gloo(rank: int, rdzv: str, world: int, measure, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=rdzv, rank=rank, world_size=world)
    try:
        torch.save(measure(rank), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def gloo_ranks(tmp_path, world: int, measure) -> list:
    """``measure(rank)`` in each of ``world`` forked processes joined in one gloo group, one thread each; what each
    rank returned, in rank order."""
    mp.start_processes(_in_gloo, args=(f"file://{tmp_path}/rdzv", world, measure, str(tmp_path / "out")), nprocs=world,
                       join=True, start_method="fork")
    return [torch.load(tmp_path / f"out.{rank}") for rank in range(world)]


def test_ping_pong_over_gloo(tmp_path):
    for times in gloo_ranks(tmp_path, 2, lambda rank: cost.ping_pong(rank, 1 - rank, [4, 1 << 20], repeats=3)):
        assert set(times) == {4, 1 << 20}
        assert all(0 < t < 1.0 for t in times.values())


def _busy(rank: int) -> tuple[list[float], int]:
    work = []                                           # each round's compute: counted, not timed as a message
    return cost.busy_ping(rank, 1 - rank, 4096, repeats=6, work=lambda: work.append(cost.busy_compute(0.05)),
                          bursts=2, gap_s=1e-3), len(work)


def test_busy_ping_over_gloo_times_each_rounds_messages_not_its_compute(tmp_path):
    """Two real gloo processes: 6 rounds in 2 bursts, each burst's first round left out (it sets up the connection,
    or catches up): 6 samples per rank from 8 rounds of 50 ms compute; a sample is the round's posts and waits, not the
    compute before them."""
    rounds = gloo_ranks(tmp_path, 2, _busy)
    for samples, computed in rounds:
        assert computed == 8 and len(samples) == 6 and all(0 < t < 0.5 for t in samples)
    # the rank that posts first also waits out its peer's compute (up to 50 ms here); the later poster waits for
    # the messages only (0.1-5 ms here): with the compute inside, every round would take 50 ms or more
    assert 0 < cost.message_rounds(rounds[0][0], rounds[1][0], bursts=2) < 0.045


def test_cost_metrics_round_trip():
    link = Link(1e-4, 2e9)
    metrics = cost.cost_metrics(STAGES, link)
    assert cost.costs_from_metrics(metrics) == (STAGES, link)
    row = {f"metric.{k}": v for k, v in cost.cost_metrics(STAGES).items()}      # a report row, no link
    assert cost.costs_from_metrics(row) == (STAGES, None)
    assert cost.costs_from_metrics({"metric.test_error": 2.0}) is None


def test_calibrate_matches_one_worker_and_keeps_proportions():
    measured = 12.0
    for schedule, m in (("cdni", 1), ("locked", 1), ("gpipe", 4), ("unlock", 1)):
        scaled = cost.calibrate(STAGES, schedule, measured, m)
        assert cost.step_time(schedule, scaled, 1, FREE, m) == pytest.approx(measured)
    scaled = cost.calibrate(STAGES, "cdni", measured)
    factor = measured / sum(s.forward + s.backward + s.update + s.synth for s in STAGES)
    assert cost.step_time("cdni", scaled, 4, FREE) == pytest.approx(factor * cost.step_time("cdni", STAGES, 4, FREE))
    assert [s.out_bytes for s in scaled] == [s.out_bytes for s in STAGES]      # messages are not compute
    with pytest.raises(ValueError, match="positive"):
        cost.calibrate(STAGES, "cdni", 0.0)
    # a real step takes milliseconds
    fast = cost.calibrate(STAGES, "cdni", 0.0165)
    assert cost.step_time("cdni", fast, 1, FREE) == pytest.approx(0.0165)


def test_busy_link_charges_a_message_what_it_cost_next_to_busy_compute():
    link = cost.Link(1e-4, 1e9)
    # 1 MB: 1.1 ms by the ping-pong; 3 ms next to busy compute -> 1.9 ms more on every message
    busy = cost.busy_link(link, 3e-3, 1_000_000)
    assert busy.message(1_000_000) == pytest.approx(3e-3)
    assert busy.message(0) == pytest.approx(2e-3) and busy.bandwidth_Bps == 1e9
    # a ping-pong held up (1.3 ms per message, its sizes no longer fit a line: infinite bandwidth) is no floor:
    # the busy rounds' 0.25 ms is what a message costs
    slow = cost.busy_link(cost.Link(1.3e-3, float("inf")), 2.5e-4, 65536)
    assert slow.message(65536) == pytest.approx(2.5e-4) and slow.message(4) == pytest.approx(2.5e-4)
    # the bytes alone at the ping-pong's bandwidth take longer than the busy message: no negative latency
    assert cost.busy_link(link, 5e-4, 1_000_000) == cost.Link(0.0, 1e9)
    metrics = {**cost.cost_metrics([cost.StageCost(1.0, 2.0, out_bytes=8)], link),
               "cost/link_busy_s": 3e-3, "cost/link_busy_bytes": 1e6}
    assert cost.costs_from_metrics(metrics)[1] == busy
    assert cost.costs_from_metrics(metrics, busy=False)[1] == link     # locked / pipelined: the ping-pong's


def test_median_burst_summarises_each_run_of_rounds_in_order_and_takes_the_middle_one():
    # bursts [1, 1, 10], [30, 30, 30], [3, 3, 3]: means 4, 30, 3 -> 4 (their medians 1, 30, 3 would give 3; rounds
    # taken every third instead of in runs, 11.3)
    rounds = [1.0, 1.0, 10.0, 30.0, 30.0, 30.0, 3.0, 3.0, 3.0]
    assert cost.median_burst(rounds, 3, statistics.mean) == 4.0
    assert cost.median_burst(rounds, 3, statistics.median) == 3.0
    assert cost.median_burst(rounds, 1, statistics.mean) == pytest.approx(111 / 9)
    for bad, bursts in ((rounds[:8], 3), ([], 1), (rounds, 0)):
        with pytest.raises(ValueError, match=f"{len(bad)} rounds do not split into {bursts} bursts"):
            cost.median_burst(bad, bursts, statistics.mean)


def test_message_rounds_takes_each_rounds_later_poster():
    # Rank 0 finishes its work 2 ms early in the first rounds, rank 1 in the last: the rank that posted first
    # waited out its peer's compute as well; the message itself took 0.3 ms in every round.
    mine = [2.3e-3] * 5 + [0.3e-3] * 4
    peer = [0.3e-3] * 5 + [2.3e-3] * 4
    assert cost.message_rounds(mine, peer) == pytest.approx(0.3e-3)
    assert cost.message_rounds(peer, mine) == pytest.approx(0.3e-3)
    # each rank's own median mixes in the skew (rank 0: 2.3 ms, where the message costs 0.3)
    assert sorted(mine)[len(mine) // 2] == pytest.approx(2.3e-3)
    assert cost.message_rounds([1e-3, 3e-3, 2e-3], [4e-3, 1e-3, 5e-3]) == pytest.approx(1e-3)   # min 1, 1, 2
    with pytest.raises(ValueError, match="same rounds"):
        cost.message_rounds([1e-3], [1e-3, 2e-3])
    # in bursts: one burst in a moment when every message took 2 ms does not set the cost (the median burst does)
    held_up = [2e-3] * 4
    rounds = [0.2e-3, 0.3e-3, 0.2e-3, 0.25e-3] + held_up + [0.3e-3, 0.35e-3, 0.3e-3, 0.3e-3]
    assert cost.message_rounds(rounds, rounds) == pytest.approx(0.3e-3)                 # one burst of 12: its median
    assert cost.message_rounds(rounds, rounds, bursts=3) == pytest.approx(0.3e-3)       # medians 0.225, 2, 0.3
    assert cost.message_rounds(held_up * 2 + rounds[:4], held_up * 2 + rounds[:4], bursts=3) == pytest.approx(2e-3)
    with pytest.raises(ValueError, match="12 busy_ping rounds do not split into 5 bursts"):
        cost.message_rounds(rounds, rounds, bursts=5)


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize("workers, microbatches", [(2, 4), (2, 8), (3, 4), (4, 6)])
def test_pipeline_message_is_the_message_time_that_gives_the_stand_in_step(schedule, workers, microbatches):
    """Worked by hand for GPipe, K = 2, M = 4: a one-worker step of 8 ms is per micro-batch 1 ms each way, so K = 2 with
    messages of m runs (K + M - 1) 1 ms + (K + M - 2) m each way: 10 ms + 8 m. A step of 12 ms is m = 0.25 ms. For every
    schedule and K the model's own step for stand-in stages of that compute and the solved m gives the step back."""
    if schedule == "gpipe" and (workers, microbatches) == (2, 4):
        assert cost.pipeline_message("gpipe", 2, 4, 8e-3, 12e-3) == pytest.approx(0.25e-3, rel=1e-9)
    one_s, message_s = 8e-3, 0.37e-3
    stages = [cost.StageCost(forward=one_s / 2, backward=one_s / 2)] * workers
    step_s = cost.step_time(schedule, stages, workers, cost.Link(message_s, float("inf")), microbatches)
    assert cost.pipeline_message(schedule, workers, microbatches, one_s, step_s) == pytest.approx(message_s, rel=1e-9)
    # a step no slower than the free messages' costs them nothing (noise can make the stand-in that fast)
    free_s = cost.step_time(schedule, stages, workers, cost.Link(0.0, float("inf")), microbatches)
    assert cost.pipeline_message(schedule, workers, microbatches, one_s, free_s) == 0.0
    assert cost.pipeline_message(schedule, workers, microbatches, one_s, free_s * 0.9) == 0.0


def test_a_stand_in_chunk_passes_its_input_on_scaled_with_autograds_gradients():
    from dnibench.parallel.pipelined import _StandInChunk

    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor([1.7], dtype=torch.float64, requires_grad=True)
    assert torch.equal(_StandInChunk.apply(x, scale, 0.0), x * scale)
    assert torch.autograd.gradcheck(lambda a, b: _StandInChunk.apply(a, b, 0.0), (x, scale))


def _stand_in(rank: int) -> tuple[list[float], list[float], list[tuple]]:
    from dnibench.parallel import pipelined

    built = []                                  # each stand-in pipeline's schedule and per-example shape

    class Recorded(pipelined.PipelinedBprop):
        def __init__(self, *args, **kwargs):
            built.append((kwargs.get("schedule", "gpipe"), args[5]))      # gpipe: the default when none is given
            super().__init__(*args, **kwargs)
    pipelined.PipelinedBprop = Recorded          # this forked process's module only
    alone = [dist.new_group([r]) for r in range(2)]
    # micro-batches of 32 / 4 = 8 examples: 515 bytes are 16 floats an example (the 3 left over round down)
    one = pipelined.time_stand_in(0, 1, "gpipe", 4, 32, 515, work_s=1e-3, steps=3, group=alone[rank])
    return one, pipelined.time_stand_in(rank, 2, "1f1b", 4, 32, 8, work_s=1e-3, steps=3, warmup=1), built


def test_time_stand_in_times_each_step_of_the_librarys_pipeline_through_chunks_of_known_compute(tmp_path):
    """Two real gloo processes: a one-worker stand-in pipeline on each (in a group of its own, GPipe), then one through
    both (1F1B). Each worker runs M forward and M backward chunks of work_s a step, so every step takes at least 2 M
    work_s; the warm-up steps are not among the ones returned; each pipeline runs the schedule it was given, with
    messages of the bytes asked for (at least one float an example)."""
    for one, two, built in gloo_ranks(tmp_path, 2, _stand_in):
        assert len(one) == len(two) == 3
        assert min(one + two) >= 2 * 4 * 1e-3
        assert max(one + two) < 5.0
        assert built == [("gpipe", (16,)), ("1f1b", (1,))]


def _round_trips(rank: int) -> tuple[list[float], list[int]]:
    import types

    from dnibench.parallel import worker

    sizes, send = [], worker.dist.send                  # the floats of each message this rank sends

    def recorded(tensor, *args, **kwargs):
        sizes.append(tensor.numel())
        return send(tensor, *args, **kwargs)
    worker.dist.send = recorded                         # this forked process's module only
    me = types.SimpleNamespace(rank=rank)
    times = [worker.Worker.round_trip_ping(me, 4096, repeats=4, spin=spin, work_s=0.05) for spin in (True, False)]
    worker.Worker.round_trip_ping(me, 4, repeats=1, spin=True, work_s=0.0)   # a message smaller than two floats
    # worker 1 reports 100 ms of compute it does not do, worker 0 reports none: half the round trip less that
    worker.cost.busy_compute = lambda seconds: seconds if rank == 1 else 0.0
    times.append(worker.Worker.round_trip_ping(me, 4096, repeats=4, spin=True, work_s=0.1))
    return times, sizes


def test_round_trip_ping_is_the_one_way_message_time_less_both_computes(tmp_path):
    """Two real gloo processes, worker 0 and 1, each computing 50 ms before it sends: worker 0 gets half of each round
    trip less both computes, a message's time (well under the 25 ms that half of one compute left in would add), for
    a receiver polling and one blocked; worker 1 gets 0. Every message is the size asked for (4096 bytes: 1024
    floats; at least 2, which carry the reply's compute time), in 5 rounds a call (the first sets up the connection).
    A peer that reports 100 ms of compute it did not do gives half a round trip less that: -50 ms and a message (a
    round trip of up to 20 ms allowed: a busy machine)."""
    (zero, sent0), (one, sent1) = gloo_ranks(tmp_path, 2, _round_trips)
    assert one == [0.0, 0.0, 0.0]
    assert all(0.0 < t < 0.02 for t in zero[:2]), zero
    assert -0.05 < zero[2] < -0.04, zero
    assert sent0 == sent1 == [1024] * 10 + [2] * 2 + [1024] * 5


def test_pipeline_message_refuses_what_it_cannot_solve():
    with pytest.raises(ValueError, match="a stand-in pipeline runs gpipe or 1f1b"):
        cost.pipeline_message("locked", 2, 4, 8e-3, 12e-3)
    for workers, one_s, step_s in ((1, 8e-3, 12e-3), (2, 0.0, 12e-3), (2, 8e-3, 0.0), (2, float("nan"), 12e-3)):
        with pytest.raises(ValueError, match="two or more workers and positive step times"):
            cost.pipeline_message("gpipe", workers, 4, one_s, step_s)
