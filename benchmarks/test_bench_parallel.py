"""Stages in worker processes (issue 10): cDNI, locked bprop and pipelined bprop on FCN-6 at batch 256,
in one process (1 and 2 threads) and through the parallel executor (dnibench/parallel, one thread per
worker) at K = 1 and K = 2, with the cost model's prediction for each K = 2 case.

Printed per K = 2 case (cDNI, DNI, complete unlock cDNI, locked and pipelined bprop): samples/s, parallel efficiency (K = 2 over 2x the same method in one process with
one thread; issue 10's target for cDNI is >= 0.85), the ratio to the best single process (1 or 2 threads),
the ratio to the executor at K = 1, and the cost model's samples/s with its relative error (target:
within 15%), from the stage costs as measured and calibrated to the case's measured K = 1 step
(cost.calibrate: one factor on all compute, so the K = 2 error is the model's), and the report's prediction
from the inputs the executor runs logged themselves (``report_model_*``: the number the report's table shows). The cost model's
inputs are measured here: per-stage compute in this process with one thread
(cost.measure_stage_costs) and the gloo link between two processes (cost.ping_pong + fit_link).

Single runs on a shared 2-core machine move by 10-20 % between runs, so the two targets are also measured over
repeats: ``test_cdni_efficiency_interleaved`` (cDNI's efficiency in one-process / K = 2 pairs, each split into
balance x contention x split x executor, report.parallel.efficiency_parts) and ``test_cost_model_interleaved`` (the report's
prediction of every K = 2 case of the suite over rounds, with the measured rate's spread beside the error).

CPU only (the executor's transport here is gloo); on a shared machine the load average is printed with
every row, since a neighbour's load falls on K = 2's second core first.
"""
import os
import statistics

import pytest
import torch

from dnibench.data import ImageData
from dnibench.methods import Setup, get_method
from dnibench.models import build_stages, stage_output_shapes
from dnibench.parallel import cost
from dnibench.report import parallel as report
from dnibench.tracking import RunThreads

IN_SHAPE, MODEL, CLASSES, BATCH = (1, 28, 28), "fcn6", 10, 256
STEPS = 200                        # executor steps per run (after its start-up, which is not timed)
ROUNDS, WARMUP = 40, 5             # one-process steps timed / not timed
RATES: dict[tuple, float] = {}     # (case, where) -> samples/s, measured in this session
COST: dict[str, object] = {}

# (label, method, schedule, microbatches): the one-process method of each is the method itself
CASES = [("cdni", "cdni", "decoupled", None), ("dni", "dni", "decoupled", None),
         ("unlock_cdni", "unlock_cdni", "decoupled", None), ("bprop locked", "bprop", "locked", None),
         ("bprop pipelined M=4", "bprop", "pipelined", 4)]
SUMMARIES: dict[tuple, dict] = {}  # (case, K) -> the executor's summary (with the cost model's logged inputs)


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _trainer(method: str):
    torch.manual_seed(0)
    stages = build_stages(MODEL, IN_SHAPE, CLASSES)
    cls = get_method(method)
    return cls(stages, cls.Settings(), Setup(CLASSES, IN_SHAPE, stage_output_shapes(stages, IN_SHAPE), 3e-4,
                                             torch.device("cpu")))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("method", ["cdni", "bprop"])
def test_one_process(benchmark, record, method, threads):
    trainer = _trainer(method)
    x, y = torch.rand(BATCH, *IN_SHAPE), torch.randint(0, CLASSES, (BATCH,))
    with RunThreads(threads=threads):
        benchmark.pedantic(lambda: trainer.step(x, y), rounds=ROUNDS, iterations=1, warmup_rounds=WARMUP)
    rate = BATCH / benchmark.stats.stats.median
    RATES[(method, f"{threads} thread")] = rate
    benchmark.extra_info.update(samples_per_s=rate)
    record(case=f"{method} one process, {threads} thread(s)", samples_per_s=rate, load=_load())


def _ping(rank: int, rendezvous: str, out: str) -> None:
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=2)
    try:
        # up to 16x the activation (256 x 256 floats): small messages alone cannot separate the
        # bandwidth from the latency
        sizes = [4, BATCH * 256 * 4, 4 * BATCH * 256 * 4, 16 * BATCH * 256 * 4]
        torch.save(cost.ping_pong(rank, 1 - rank, sizes, repeats=30),
                   f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_cost_model_inputs(benchmark, record, tmp_path):
    """Per-stage costs of cDNI's FCN-6 (linear synthesizers with the label, as the suite's) with one
    thread, and the gloo link between two processes on this machine."""
    import torch.multiprocessing as mp

    def measure():
        with RunThreads(threads=1):
            torch.manual_seed(0)
            stages = build_stages(MODEL, IN_SHAPE, CLASSES)
            COST["cdni"] = cost.measure_stage_costs(stages, IN_SHAPE, BATCH, CLASSES, synth_hidden_layers=0,
                                                    context=True, repeats=15, lr=3e-4)
        mp.start_processes(_ping, args=(f"file://{tmp_path}/rdzv", str(tmp_path / "ping")), nprocs=2,
                           join=True, start_method="spawn")
        times = torch.load(tmp_path / "ping.0")
        COST["one_way"] = times
        try:
            COST["link"], COST["link_kind"] = cost.fit_link(times), "fit"
        except ValueError:
            # on a loaded machine a wake-up costs more than the bytes: every size takes about the
            # same time, so the link is that time per message, whatever its size
            COST["link"] = cost.Link(sorted(times.values())[len(times) // 2], float("inf"))
            COST["link_kind"] = "latency only (times did not grow with size)"
    benchmark.pedantic(measure, rounds=1, iterations=1)
    link = COST["link"]
    per_stage = [round(1000 * (s.forward + s.backward + s.update + s.synth), 2) for s in COST["cdni"]]
    benchmark.extra_info.update(latency_s=link.latency_s, bandwidth_Bps=link.bandwidth_Bps, stage_ms=per_stage)
    one_way = {n: round(1e3 * t, 2) for n, t in COST["one_way"].items()}
    record(case="cost model inputs", samples_per_s="", load=_load(),
           note=f"link {COST['link_kind']} {1e6 * link.latency_s:.0f} us + {link.bandwidth_Bps / 1e9:.2f} GB/s "
                f"(one-way ms by bytes "
                f"{one_way}); cDNI stage ms {per_stage}")


def _spec(method: str, schedule: str, workers: int, microbatches, pipeline: str = "gpipe", steps: int = STEPS):
    from dnibench.suite import load_suite, plan

    specs = plan(load_suite("suites/parallel.yaml"), "quick")
    match = [s for s in specs if s.model == MODEL and s.method == method and s.parallel is not None
             and s.parallel.schedule == schedule and s.parallel.workers == workers
             and (microbatches is None or s.parallel.microbatches == microbatches)
             and s.parallel.threads == 1 and (s.parallel.pipeline_schedule or "gpipe") == pipeline]   # one thread
    if not match:
        pytest.skip(f"suites/parallel.yaml at quick has no {method} {schedule} K={workers} M={microbatches} {pipeline}")
    train = match[0].train.model_copy(update={"steps": steps, "eval_every": steps, "log_every": steps // 4,
                                              "lr_decay_at": [], "train_subset": None, "test_subset": 512})
    return match[0].model_copy(update={"train": train})


def _fake_mnist() -> ImageData:
    g = torch.Generator().manual_seed(0)
    return ImageData(torch.rand(BATCH * 8, *IN_SHAPE, generator=g), torch.randint(0, CLASSES, (BATCH * 8,), generator=g),
                     torch.rand(512, *IN_SHAPE, generator=g), torch.randint(0, CLASSES, (512,), generator=g),
                     CLASSES, "random images (throughput only)")


def _predict(label: str, schedule: str, microbatches, workers: int) -> tuple[float | None, float | None]:
    """The cost model's samples/s from the stage costs as measured, and calibrated to this case's
    measured K = 1 executor step (cost.calibrate; None where K = 1 was not measured)."""
    if "cdni" not in COST or (schedule == "decoupled" and label != "cdni"):   # measured here: cDNI's stages
        return None, None
    stages, link = COST["cdni"], COST["link"]
    if schedule == "decoupled":
        kind = "cdni"
    else:       # bprop: the same stage costs without the synthesizers
        stages = [cost.StageCost(s.forward, s.backward, s.update, out_bytes=s.out_bytes) for s in stages]
        kind = "gpipe" if schedule == "pipelined" else "locked"
    m = microbatches or 1
    raw = cost.throughput(kind, stages, workers, link, BATCH, m)
    k1 = RATES.get((label, "K=1"))
    calibrated = cost.throughput(kind, cost.calibrate(stages, kind, BATCH / k1, m), workers, link, BATCH, m) if k1 else None
    return raw, calibrated


def _report_row(run_id: str, method: str, schedule: str, k: int, microbatches, pipeline: str, summary: dict) -> dict:
    """An executor summary as a row of the report's run table (report.parallel.prepare's input)."""
    return {"suite": "parallel", "method": method, "model": MODEL, "task": "mnist", "run_id": run_id,
            "param.workers": str(k), "param.schedule": schedule, "param.microbatches": str(microbatches or ""),
            "param.pipeline_schedule": pipeline if schedule == "pipelined" else "", "param.lockstep": "false",
            "param.train.batch_size": str(BATCH), **{f"metric.{key}": value for key, value in summary.items()}}


def _report_prediction(label: str, method: str, schedule: str, microbatches, workers: int) -> tuple[float | None, str]:
    """The cost model's samples/s for this case as the report computes it (report.parallel.predictions) from
    the executor summaries of this case at K = 1 and ``workers``."""
    import pandas as pd

    if any((label, k) not in SUMMARIES for k in {1, workers}):
        return None, ""
    runs = report.prepare(pd.DataFrame([_report_row(f"{label}-{k}", method, schedule, k, microbatches, "gpipe",
                                                    SUMMARIES[(label, k)]) for k in sorted({1, workers})]))
    got = report.predictions(runs).set_index(runs["workers"])
    value = got.loc[workers, "predicted"]
    return (float(value) if value == value else None), got.loc[workers, "source"]


# K = 1 before K = 2 of each case: the K = 2 row divides by it
EXECUTOR = [(*case, k) for case in CASES for k in (1, 2)]


@pytest.mark.parametrize("label,method,schedule,microbatches,workers", EXECUTOR,
                         ids=[f"{c[0].replace(' ', '-')}-K{c[4]}" for c in EXECUTOR])
def test_executor(benchmark, record, label, method, schedule, microbatches, workers):
    from dnibench.parallel import train_parallel

    spec = _spec(method, schedule, workers, microbatches)
    data = _fake_mnist()
    summary = {}

    def run():
        summary.update(train_parallel(spec, data, lambda row, step: None))
    benchmark.pedantic(run, rounds=1, iterations=1)
    rate = summary["mean_samples_per_s"]
    RATES[(label, f"K={workers}")] = rate
    one = RATES.get((method, "1 thread"))
    best = max((RATES.get((method, t)) or 0.0) for t in ("1 thread", "2 thread")) or None
    SUMMARIES[(label, workers)] = summary
    k1 = RATES.get((label, "K=1"))
    predicted, calibrated = _predict(label, schedule, microbatches, workers)
    as_report, inputs = _report_prediction(label, method, schedule, microbatches, workers)
    row = {"case": f"{label} executor K={workers}", "samples_per_s": rate, "load": _load(),
           "efficiency_vs_1thread": rate / (workers * one) if one else "",
           "vs_best_one_process": rate / best if best else "",
           "vs_executor_K1": rate / k1 if k1 and workers > 1 else "",
           "model_samples_per_s": predicted if predicted else "",
           "model_error": (predicted - rate) / rate if predicted else "",
           "calibrated_model_samples_per_s": calibrated if calibrated else "",
           "calibrated_model_error": (calibrated - rate) / rate if calibrated else "",
           # the report's cost model from the inputs this run and its K = 1 run logged (stage times next to a
           # busy peer, the K = 1 whole-step factor, messages timed next to busy compute, the run's split)
           "report_model_samples_per_s": as_report if as_report else "",
           "report_model_error": (as_report - rate) / rate if as_report else "", "report_model_inputs": inputs,
           "split": " ".join(f"{int(summary.get(f'cost/worker{k}/stages_end', 0))}" for k in range(workers))}
    busy = [summary.get(f"total_worker{k}/busy_frac") for k in range(workers)]
    row["busy_frac"] = "/".join(f"{b:.2f}" for b in busy if b is not None)
    benchmark.extra_info.update({k: v for k, v in row.items() if k != "case"})
    record(**row)


PAIRS = 3                          # interleaved (one process, K = 2) pairs for the efficiency's spread
PAIR_STEPS = 900                   # the executor's steps per pair: the parallel suite's quick run


def test_cdni_efficiency_interleaved(benchmark, record):
    """Issue 10's target measured as pairs, cDNI in one process with one thread then the executor at K = 2, back
    to back, PAIRS times: each pair's efficiency (K = 2 samples/s over twice the one process's) and their median
    and range. The one process is the parallel suite's K = 1 run of cDNI (the method's own step in one worker
    process, one thread: the baseline the report divides by), so both halves of a pair are measured alike: the
    same loop, batches gathered by index, PAIR_STEPS steps over their wall-clock (a median step leaves out the
    slow steps a run's total counts: 1-2 % of cDNI's one-process rate here). One pair's ratio moves with the
    machine's load between its two halves (a K = 1 run alone spread 13267-16443 samples/s in one session); pairs
    taken close together drift less than separate single runs, and the range says how far to trust the median."""
    from dnibench.parallel import train_parallel

    data = _fake_mnist()

    def steps(spec):
        return spec.model_copy(update={"train": spec.train.model_copy(update={
            "steps": PAIR_STEPS, "eval_every": PAIR_STEPS, "log_every": PAIR_STEPS // 4})})
    one_spec, spec = steps(_spec("cdni", "decoupled", 1, None)), steps(_spec("cdni", "decoupled", 2, None))
    pairs = []

    def measure():
        for _ in range(PAIRS):
            alone = train_parallel(one_spec, data, lambda row, step: None)
            one = alone["mean_samples_per_s"]
            summary = train_parallel(spec, data, lambda row, step: None)
            two = summary["mean_samples_per_s"]
            steps = cost.worker_steps_from_metrics(summary, 2)
            parts = (report.efficiency_parts(two, one, steps, BATCH, cost.worker_whole_steps_from_metrics(summary, 2),
                                             alone.get("cost/worker0/step_s")) if steps else {})
            pairs.append((one, two, two / (2 * one), _load(), parts))
    benchmark.pedantic(measure, rounds=1, iterations=1)
    effs = sorted(p[2] for p in pairs)
    benchmark.extra_info.update(efficiencies=[round(e, 3) for e in effs])

    def parts(p):       # where the efficiency went (report.parallel.efficiency_parts): balance x work x executor,
        # work = contention x split (the machine's share: the one-process step timed on both workers at once); and
        # the K = 1 loop's share of its step's rate, against which the executor is counted
        keys = ("balance", "contention", "split", "executor", "loop")
        return "/".join(f"{p[4][key]:.3f}" for key in keys) if p[4] else "-"
    record(case=f"cdni K=2 efficiency, {PAIRS} interleaved pairs", samples_per_s=statistics.median(p[1] for p in pairs),
           load=pairs[-1][3], efficiency_vs_1thread=statistics.median(effs),
           note="pairs (K=1 one thread, K=2, efficiency, balance/contention/split/executor/K=1 loop, load): " + "; ".join(
               f"{p[0]:.0f}, {p[1]:.0f}, {p[2]:.3f}, {parts(p)}, {p[3]}" for p in pairs)
           + f"; range {effs[0]:.3f}-{effs[-1]:.3f}")


MODEL_ROUNDS, MODEL_STEPS = 3, 300
# every K = 2 case of the parallel suite at quick, with the K = 1 run each one's prediction and speed-up need
MODEL_CASES = [("bprop", "locked", None, "gpipe"), ("bprop", "pipelined", 4, "gpipe"), ("bprop", "pipelined", 8, "gpipe"),
               ("bprop", "pipelined", 4, "1f1b"), ("dni", "decoupled", None, "gpipe"),
               ("cdni", "decoupled", None, "gpipe"), ("unlock_cdni", "decoupled", None, "gpipe")]
if os.environ.get("DNIBENCH_BENCH_SCHEDULES"):      # e.g. "pipelined": a subset of the cases, while working on one model
    MODEL_CASES = [c for c in MODEL_CASES if c[1] in os.environ["DNIBENCH_BENCH_SCHEDULES"].split(",")]


def test_cost_model_interleaved(benchmark, record):
    """Issue 10's "cost model within 15 % of the measured K = 2 throughput", judged over repeated runs: MODEL_ROUNDS
    rounds, each running every case of MODEL_CASES at K = 1 (where the suite has one) and K = 2 back to back
    (MODEL_STEPS steps, fake data), and the report's prediction (report.parallel.predictions, from the inputs the
    runs logged) for each K = 2 run from its own round's runs. Per case: the errors by round, their median, and the
    spread of the measured K = 2 rate over the rounds (max/min - 1): a single run's error is within that noise."""
    import pandas as pd

    from dnibench.parallel import train_parallel

    data = _fake_mnist()
    runs: list[tuple[int, dict]] = []                    # (round, the run as a report row)

    def measure():
        for r in range(MODEL_ROUNDS):
            for method, schedule, m, pipeline in MODEL_CASES:
                for k in (1, 2):
                    if k == 1 and pipeline == "1f1b":
                        continue                          # the report's baseline for 1F1B: GPipe of the same M at K = 1
                    spec = _spec(method, schedule, k, m, pipeline, steps=MODEL_STEPS)
                    summary = train_parallel(spec, data, lambda row, step: None)
                    runs.append((r, _report_row(str(len(runs)), method, schedule, k, m, pipeline, summary)))
    benchmark.pedantic(measure, rounds=1, iterations=1)
    by_case: dict[str, list[tuple[float, float, float | None]]] = {}   # rate, error, its K = 1 rate
    for r in range(MODEL_ROUNDS):
        frame = report.prepare(pd.DataFrame([row for rr, row in runs if rr == r]))
        frame = frame.join(report.predictions(frame))
        for row in frame[frame["workers"] == 2].to_dict("records"):
            rate = row["samples_per_s"]
            one = frame[(frame["workers"] == 1) & (frame["label"] == report.baseline_label(frame, row["label"]))]
            by_case.setdefault(row["label"], []).append((rate, (row["predicted"] - rate) / rate,
                                                        float(one["samples_per_s"].mean()) if len(one) else None))
    within = 0
    for label, got in by_case.items():
        errors = [e for _, e, _ in got]
        rates = [rate for rate, _, _ in got]
        ones = [one for _, _, one in got if one]
        median = statistics.median(errors)
        within += abs(median) <= 0.15
        # the K = 1 run calibrates the prediction (its step, a pipeline's overhead): its spread is the model's too
        record(case=f"cost model K=2, {label}, {len(got)} rounds", samples_per_s=statistics.median(rates), load=_load(),
               model_error=median, note="errors by round " + " ".join(f"{e:+.0%}" for e in errors)
               + f"; measured K=2 spread {max(rates) / min(rates) - 1:.0%}"
               + (f", its K=1 run's {max(ones) / min(ones) - 1:.0%}" if ones else ""))
    benchmark.extra_info.update(cases_within_15pct=within, cases=len(by_case))
