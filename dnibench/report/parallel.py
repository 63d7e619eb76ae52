"""Stages in worker processes (issue 10), from the ``parallel`` suite: what decoupling buys in wall-clock.

Runs carry the params ``workers`` (K), ``schedule`` (locked | pipelined | decoupled), ``microbatches``
(pipelined: M), ``pipeline_schedule`` (pipelined: gpipe | 1f1b; runs without it are GPipe), ``threads``
(per worker; runs without it had 1) and ``lockstep``. Lockstep runs wait for every target by construction (they check that
the parallel code computes the one-process learning rule), so they are left out of the throughput
figure and table. Throughput is the run's ``mean_samples_per_s`` (whole training), else its last
``samples_per_s``; runs marked timing disturbed (curves.timing_disturbed) give no throughput.

The cost model (dnibench/parallel/cost.py) predicts each measured K from the per-stage costs a run
logged (``cost/stage{i}/...``, ``cost/link_*``, timed next to a busy peer where K > 1: ``cost/contended``).
A decoupled run also timed each worker's whole step before its clock started, all workers at once
(``cost/worker{k}/step_s``): each worker's stages are scaled to it (cost.scale_groups) and the model adds the
messages. Otherwise the stage costs are scaled by the same method's K = 1 whole-step factor (its measured step over its stages timed alone;
locked bprop uses the K = 1 stage times, its workers take turns); runs without a K = 1 run's stage costs
are scaled so that the model predicts the measured K = 1 (cost.calibrate); where none were logged it
splits the K = 1 run's measured step time over the stages in proportion to their weights (FCN only).
The table says which, with the run's split of the stages and the machine's load average.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter

from . import Section
from .context import ReportContext, display_name, latest_variant, markdown_table, parallel_run_label
from .curves import timing_disturbed
from ..suite import PROFILES

SUITE = "parallel"
TARGET_MARGIN = 0.5            # points of test error above bprop's that count as "reached"
EFFICIENCY_TARGET = 0.85       # issue 10: cDNI's parallel efficiency at K = 2, one thread per worker
DRIFT_TOLERANCE = 0.02         # contention above 1 + this: the machine's speed moved between the K = 1 and K = K runs
FEATURES = {"mnist": 784, "cifar10": 3072}


def _param(runs: pd.DataFrame, name: str) -> pd.Series:
    column = f"param.{name}"
    return runs[column] if column in runs else pd.Series("", index=runs.index)


def _metric(runs: pd.DataFrame, name: str) -> pd.Series:
    column = f"metric.{name}"
    return runs[column].astype(float) if column in runs else pd.Series(np.nan, index=runs.index)


def prepare(runs: pd.DataFrame) -> pd.DataFrame:
    """The parallel suite's non-lockstep runs with columns workers, schedule, microbatches, label,
    samples_per_s (NaN where the timing was disturbed) and disturbed."""
    runs = runs[(runs["suite"] == SUITE)].copy()
    runs = runs[pd.to_numeric(_param(runs, "workers"), errors="coerce").notna()]
    runs = runs[_param(runs, "lockstep").astype(str).str.lower() != "true"]
    if runs.empty:
        return runs
    runs["workers"] = _param(runs, "workers").astype(int)
    runs["schedule"] = _param(runs, "schedule").fillna("").astype(str)
    runs["microbatches"] = _param(runs, "microbatches").fillna("").astype(str)
    runs["pipeline_schedule"] = _param(runs, "pipeline_schedule").fillna("").astype(str)
    runs["threads"] = pd.to_numeric(_param(runs, "threads"), errors="coerce").fillna(1).astype(int)
    runs["label"] = [parallel_run_label(run) for _, run in runs.iterrows()]
    rate = _metric(runs, "mean_samples_per_s").fillna(_metric(runs, "samples_per_s"))
    runs["disturbed"] = timing_disturbed(runs)
    runs["samples_per_s"] = rate.where(~runs["disturbed"])
    return runs


def baseline_label(runs: pd.DataFrame, name: str) -> str:
    """The label whose K = 1 run is ``name``'s baseline: its own, else for a 1F1B pipeline without one the GPipe
    pipeline of the same M (one worker runs the same micro-batches through the same stage either way)."""
    if ((runs["label"] == name) & (runs["workers"] == 1)).any() or "pipelined 1F1B" not in name:
        return name
    return name.replace("pipelined 1F1B", "pipelined")


def _batch(row: dict) -> int:
    """A run's batch size (the parallel suite's 256 where a run did not log it)."""
    return int(row.get("param.train.batch_size") or 256)


def _cost_schedule(method: str, schedule: str, microbatches: str, pipeline: str = "") -> tuple[str, int]:
    if schedule == "locked":
        return "locked", 1
    if schedule == "pipelined":
        return ("1f1b" if pipeline == "1f1b" else "gpipe"), int(microbatches or 1)
    return ("unlock" if method.startswith("unlock") else "cdni" if method == "cdni" else "dni"), 1


def _weight_split(model: str, task: str, batch: int, total_s: float):
    """Stage costs from a one-process step time: split in proportion to the FCN's weights (784x256,
    256x256, ..., 256x10), a third forward and two thirds backward; activations of 256 floats."""
    from ..parallel.cost import StageCost

    if not model.startswith("fcn") or task not in FEATURES:
        return None
    depth = int(model[3:])
    sizes = [FEATURES[task]] + [256] * (depth - 1) + [10]
    weights = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    share = [total_s * w / sum(weights) for w in weights]
    return [StageCost(forward=s / 3, backward=2 * s / 3, out_bytes=batch * out * 4)
            for s, out in zip(share, sizes[1:])]


def predictions(runs: pd.DataFrame) -> pd.Series:
    """The cost model's samples/s for each run (NaN where it has no inputs), and its source."""
    from ..parallel import cost

    records = runs.to_dict("records")
    schedules = [_cost_schedule(row["method"], row["schedule"], row["microbatches"], row["pipeline_schedule"])
                 for row in records]
    # every schedule's messages as they cost between workers that compute (cost.py: what a message costs)
    logged_all = [cost.costs_from_metrics(row) for row in records]
    measured_link = next((got[1] for got in logged_all if got and got[1]), None)
    predicted, sources = [], []
    for row, logged, (schedule, m) in zip(records, logged_all, schedules):
        batch = _batch(row)
        k = int(row["workers"])
        stages, source = None, ""
        one = runs[(runs["label"] == baseline_label(runs, row["label"])) & (runs["workers"] == 1)
                   & runs["samples_per_s"].notna()]
        one_step_s = batch / one["samples_per_s"].mean() if len(one) else None
        alone = next((got[0] for got in map(cost.costs_from_metrics, one.to_dict("records")) if got), None)
        contended = bool(row.get("metric.cost/contended", 0) == 1)
        overhead = 0.0
        # the K = 1 run of the same configuration logged stages like this run's: its step calibrates the model
        calibrated = bool(logged and k > 1 and one_step_s and alone is not None and len(alone) == len(logged[0]))
        split = cost.split_from_metrics(row, k) if logged else None       # the stages each worker trained
        if split is not None and split[-1][1] != len(logged[0]):
            split = None
        # a decoupled run timed each worker's whole step before its clock started: the model's compute per worker
        steps = cost.worker_steps_from_metrics(row, k) if split and schedule in cost.DECOUPLED else None
        # a pipelined run timed each worker's micro-batch forward and backward before its clock started
        chunks = cost.worker_chunks_from_metrics(row, k) if schedule in cost.PIPELINES else None
        one_chunks = next((got for got in (cost.worker_chunks_from_metrics(r, 1) for r in one.to_dict("records"))
                           if got), None) if chunks else None
        if steps:
            stages = cost.scale_groups(logged[0], split, steps)
            source = ("each worker's step timed next to a busy peer before the run" if k > 1
                      else "the step timed before the run")
        elif calibrated and schedule in cost.PIPELINES and split and chunks and one_chunks:
            # a pipeline whose workers timed their micro-batch's forward and backward before the run: the model's
            # chunks; what the library adds per micro-batch, which every worker pays, from the K = 1 run's step
            # beyond its own timed chunks (the same M, one worker)
            stages = cost.chunk_groups(logged[0], split, *chunks, m)
            overhead = cost.microbatch_overhead(cost.chunk_groups(alone, [(0, len(alone))], *one_chunks, m),
                                                one_step_s, m)
            source = ("each worker's micro-batch forward and backward timed next to a busy peer before the run"
                      f" + K=1 pipeline overhead {1e3 * overhead:.2f} ms per micro-batch and worker")
        elif calibrated and schedule in cost.PIPELINES:
            # a pipeline: its stages as timed in the run (next to a busy peer where K > 1) at the whole batch, and
            # its own time per micro-batch, which every worker pays, from the same M in one worker
            overhead = cost.microbatch_overhead(alone, one_step_s, m)
            stages = logged[0]
            source = ("stage costs timed next to a busy peer" if contended else "logged stage costs") + (
                f" + K=1 pipeline overhead {1e3 * overhead:.2f} ms per micro-batch and worker")
        elif calibrated and (contended or schedule == "locked"):
            # A whole step's overhead from the K = 1 run (its measured step over its stages timed alone);
            # the stage times: timed next to a busy peer, except locked bprop's (its workers take turns).
            factor = cost.whole_step_factor(alone, schedule, one_step_s, m)
            if schedule == "locked":
                stages, source = cost.scale(alone, factor), "K=1 stage costs (workers take turns)"
            else:
                stages, source = cost.scale(logged[0], factor), "stage costs timed next to a busy peer"
            source += f" x K=1 whole-step factor {factor:.2f}"
        elif logged:
            stages, source = logged[0], "logged stage costs"
            if one_step_s and k > 1:          # one factor on all compute: K = 1 predicted as measured
                stages, source = cost.calibrate(stages, schedule, one_step_s, m), source + " calibrated to K=1"
        elif one_step_s:
            stages = _weight_split(row["model"], row["task"], batch, one_step_s)
            source = "K=1 time split by weights"
        own_link = logged[1] if logged and logged[1] else None
        # locked workers that block (more workers than cores: no polling) wait with their core asleep
        blocked = bool(schedule == "locked" and own_link and row.get("metric.wait_polls") == 0
                       and pd.notna(row.get("metric.cost/link_blocked_s")))
        if blocked:
            own_link = cost.costs_from_metrics(row, blocked=True)[1]
        link = own_link or measured_link or cost.Link(0.0, float("inf"))
        if stages is None or k > len(stages):
            predicted.append(np.nan)
            sources.append("")
            continue
        predicted.append(cost.throughput(schedule, stages, k, link, batch, m, split, overhead))
        if k == 1 and logged and not steps:
            source += ", uncalibrated (K=1 is the calibration point)"
        if split is not None and k > 1:
            source += ", run's split"
        if k > 1:                               # K = 1 sends nothing: no link to name
            busy = (", messages timed to a blocked receiver" if blocked else ", messages timed next to busy compute"
                    if pd.notna(row.get("metric.cost/link_busy_s")) else "")
            source += (", logged link" + busy if own_link else ", link of another run" if measured_link
                       else ", messages free (no link measured)")
        sources.append(source)
    return pd.DataFrame({"predicted": predicted, "source": sources}, index=runs.index)


def speedup_table(runs: pd.DataFrame) -> pd.DataFrame:
    from ..parallel import cost

    runs = runs.join(predictions(runs))
    rows = []
    for (name, k), group in runs.groupby(["label", "workers"], sort=True):
        base = runs[(runs["label"] == baseline_label(runs, name)) & (runs["workers"] == 1)]["samples_per_s"].mean()
        rate = group["samples_per_s"].mean()
        workers = range(k)

        def per_worker(metric: str, fmt: str) -> str:
            # the executor's summary (total_: the whole run) where logged, else the last logged row
            values = [_metric(group, f"total_worker{i}/{metric}").fillna(_metric(group, f"worker{i}/{metric}")).mean()
                      for i in workers]
            return "/".join(fmt.format(v) for v in values) if any(v == v for v in values) else ""

        stale = sorted({c.split("/")[1].rsplit("_", 1)[0] for c in group.columns
                        if c.startswith("metric.staleness/") and group[c].notna().any()})
        predicted = group["predicted"].mean()
        split = cost.split_from_metrics(group.iloc[-1].to_dict(), int(k))
        load = [_metric(group, f"load_1m/{when}").mean() for when in ("start", "end")]
        rows.append({
            "method": name, "K": int(k), "seeds": len(group),
            "samples/s": "disturbed" if rate != rate else f"{rate:.0f}",
            "speed-up": f"{rate / base:.2f}" if rate == rate and base == base else "",
            "efficiency": f"{rate / (k * base):.2f}" if rate == rate and base == base else "",
            "busy fraction": per_worker("busy_frac", "{:.2f}"),
            "wait input (s)": per_worker("wait_input_s", "{:.1f}"),
            "wait grad (s)": per_worker("wait_grad_s", "{:.1f}"),
            "comm (s)": per_worker("comm_s", "{:.1f}"),
            "staleness mean/max": " ".join(
                f"{h}:{_metric(group, f'staleness/{h}_mean').mean():.1f}/{_metric(group, f'staleness/{h}_max').max():.0f}"
                for h in stale),
            "model samples/s": f"{predicted:.0f}" if predicted == predicted else "",
            "model error": f"{(predicted - rate) / rate:+.0%}" if predicted == predicted and rate == rate else "",
            "model inputs": ", ".join(sorted(set(group["source"]) - {""})),
            # stages [lo:hi) per worker as trained (chosen from the stage times measured in the run)
            "split": " ".join(f"{lo}:{hi}" for lo, hi in split) if split else "",
            # the machine's 1-minute load average when the run started / ended (K = 2 on 2 cores: a neighbour's
            # load falls on the second worker)
            "load start/end": "/".join(f"{v:.1f}" for v in load) if all(v == v for v in load) else "",
        })
    return pd.DataFrame(rows)


def efficiency_parts(rate: float, one_rate: float, steps: list[float], batch: int,
                     whole: list[float] | None = None, one_step: float | None = None) -> dict[str, float]:
    """A decoupled run's parallel efficiency as the product of three measured factors (``steps``: each worker's
    step timed before the run, cost/worker{k}/step_s; ``one_rate``: the same method's K = 1 samples/s;
    ``one_step``: that K = 1 run's own step timed alone before it, its cost/worker0/step_s):
    ``balance`` = sum of the steps / (K x the slowest), what the split of the stages leaves; ``work`` = the one
    process's step / the sum of the workers' steps, what splitting a step costs (each worker's own step overhead,
    the boundary synthesizer's second prediction, the neighbour on the other core); ``executor`` = the run's
    samples/s over the slowest worker's rate from its step, what the messages and the waiting cost. ``bound`` =
    balance x work, the efficiency an executor that cost nothing would reach with this split and these steps.

    Both runs pay a loop around their steps (gathering each batch, the metrics, the log points, the slower steps a
    median leaves out): with ``one_step``, the one process's step is that timed step, and the executor is taken
    relative to the one process's loop (the run's samples/s over the slowest worker's rate, over the K = 1 run's
    samples/s over its step's rate), so that overhead counts once, in neither factor; ``loop`` = the K = 1 run's
    samples/s over its step's rate says how large it was. Without (runs logged before K = 1 timed its step), the
    one process's step is its run's seconds per step, loop included, and ``loop`` is NaN.

    With ``whole`` (cost/worker{k}/whole_step_s: the one-process step timed on every worker at once before the run)
    work is itself two measured factors: ``contention`` = the one process's step alone / that step timed next to
    the busy neighbours (their mean), what the machine takes when every worker computes (shared cache and memory
    bandwidth; shared cores past one worker a core), and ``split`` = contention's step / the workers' steps added
    up, what cutting the step into K pieces costs beyond that. Without, both are NaN."""
    k, slowest, total = len(steps), max(steps), sum(steps)
    run_step = batch / one_rate                     # the K = 1 run's seconds per step, its loop included
    step = one_step or run_step                     # the one process's step: timed alone where it was
    parts = {"balance": total / (k * slowest), "work": step / total,
             "executor": rate * slowest / batch * run_step / step, "loop": step / run_step if one_step else float("nan")}
    contended = sum(whole) / len(whole) if whole else float("nan")
    parts["contention"], parts["split"] = step / contended, contended / total
    parts["efficiency"] = rate / (k * one_rate)     # = balance x work x executor
    parts["bound"] = parts["balance"] * parts["work"]
    return parts


def efficiency_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per decoupled label and K > 1 whose runs timed their workers' steps: ``efficiency_parts`` (means over
    seeds of each run against the label's mean K = 1 rate and, where they timed it, mean K = 1 step)."""
    from ..parallel import cost

    rows = []
    for (name, k), group in runs[runs["workers"] > 1].groupby(["label", "workers"], sort=True):
        ones = runs[(runs["label"] == baseline_label(runs, name)) & (runs["workers"] == 1)]
        one = ones["samples_per_s"].mean()
        timed = [cost.worker_steps_from_metrics(row, 1) for row in ones[ones["samples_per_s"].notna()].to_dict("records")]
        one_step = float(np.mean([t[0] for t in timed])) if timed and all(timed) else None
        parts = []
        for row in group.to_dict("records"):
            steps = cost.worker_steps_from_metrics(row, int(k))
            if steps and row["samples_per_s"] == row["samples_per_s"] and one == one:
                parts.append(efficiency_parts(row["samples_per_s"], one, steps, _batch(row),
                                              cost.worker_whole_steps_from_metrics(row, int(k)), one_step))
        if parts:
            mean = {key: float(np.mean([p[key] for p in parts])) for key in parts[0]}   # NaN unless every run has it
            rows.append({"method": name, "K": int(k), "runs": len(parts),
                         **{key: f"{mean[key]:.2f}" if mean[key] == mean[key] else ""
                            for key in ("efficiency", "balance", "work", "contention", "split", "executor", "bound",
                                        "loop")}})
    return pd.DataFrame(rows)


SCALE_K = [1, 2, 4, 8, 16, 32, 64]


def modelled_scaling(runs: pd.DataFrame) -> pd.DataFrame:
    """The cost model's speed-up for K = 1..64 on the two cluster presets, per method/schedule, from
    its K = 1 runs: logged stage costs calibrated to the measured K = 1 step, else that step split by
    the FCN's weights. Beyond the network's N stages it is deepened (cost.deepen), so a row past N is
    about a deeper network of the same layers (column ``stages``)."""
    from ..parallel import cost

    rows = []
    for name, group in runs.groupby("label", sort=True):
        one = group[(group["workers"] == 1) & group["samples_per_s"].notna()]
        if one.empty:
            continue
        first = one.iloc[-1]
        schedule, m = _cost_schedule(first["method"], first["schedule"], first["microbatches"], first["pipeline_schedule"])
        batch = _batch(first)
        step_s = batch / one["samples_per_s"].mean()
        logged = next((got for got in map(cost.costs_from_metrics, group.to_dict("records")) if got), None)
        overhead = 0.0
        if logged and schedule in cost.PIPELINES:    # a pipeline's own time per micro-batch: every worker pays it
            stages, overhead = logged[0], cost.microbatch_overhead(logged[0], step_s, m)
        else:
            stages = (cost.calibrate(logged[0], schedule, step_s, m) if logged
                      else _weight_split(first["model"], first["task"], batch, step_s))
        if stages is None:
            continue
        kwargs = {"schedule": schedule, **({"microbatches": m, "overhead_s": overhead} if schedule in cost.PIPELINES else {})}
        for cluster in (cost.CPU_CLUSTER, cost.GPU_CLUSTER):
            for row in cost.predict_scaling(stages, batch, cluster, SCALE_K, {name: kwargs}):
                rows.append({**row, "cluster": cluster.name, "inputs": "logged, calibrated" if logged else "K=1 split"})
    return pd.DataFrame(rows)


def scaling_figure(ctx: ReportContext, table: pd.DataFrame, stem: str, title: str) -> list:
    clusters = list(dict.fromkeys(table["cluster"]))
    fig, axes = plt.subplots(1, len(clusters), figsize=(5.0 * len(clusters), 3.8), squeeze=False)
    for ax, cluster in zip(axes[0], clusters):
        at = table[table["cluster"] == cluster]
        for name, group in at.groupby("schedule", sort=True):
            ax.plot(group["workers"], group["speedup"], "o-", markersize=3, label=name)
        ax.plot(SCALE_K, SCALE_K, "k:", lw=0.8, label="ideal (K)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xticks(SCALE_K, [str(k) for k in SCALE_K])
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("workers K")
        ax.set_ylabel("modelled speed-up over one worker")
        ax.grid(alpha=0.3, which="both")
        ax.set_title(cluster)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    return ctx.save_figure(fig, stem)


def throughput_figure(ctx: ReportContext, runs: pd.DataFrame, stem: str, title: str) -> list:
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    predicted = predictions(runs)["predicted"]
    for i, (name, group) in enumerate(runs.groupby("label", sort=True)):
        colour = colours[i % len(colours)]
        at = group.groupby("workers")["samples_per_s"].mean().dropna().sort_index()
        if at.empty:
            continue
        ax.plot(at.index, at.values, "o-", color=colour, label=name)
        # the cost model at each measured K > 1 (K = 1 is its calibration point)
        model = predicted[group.index].groupby(group["workers"]).mean().dropna()
        model = model[model.index > 1]
        ax.plot(model.index, model.values, "x", color=colour, markersize=8, mew=1.5)
        if 1 in at.index and len(at) > 1:          # a K = 1-only series (e.g. one process at 2 threads): no line
            ks = np.array(sorted(runs["workers"].unique()))
            ax.plot(ks, ks * at.loc[1], ":", color=colour, alpha=0.6)
    ks = sorted(runs["workers"].unique())
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    # room either side: the markers at the smallest and largest K are not cut by the frame
    ax.set_xlim(ks[0] / 2 ** 0.08, ks[-1] * 2 ** 0.08)
    ax.set_xlabel("workers K")
    ax.set_ylabel("samples / s")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title="dotted: ideal K x (K=1); x: cost model", title_fontsize=7)
    ax.set_title(title)
    return ctx.save_figure(fig, stem)


def _curve(ctx: ReportContext, run_id: str) -> pd.DataFrame:
    error = ctx.history(run_id, "test_error")
    for key in ("wall_s", "wall_s/train"):
        wall = ctx.history(run_id, key)
        if not wall.empty:
            break
    if error.empty or wall.empty:
        return pd.DataFrame(columns=["wall", "error"])
    both = error.merge(wall, on="step", suffixes=("_e", "_w"))
    return pd.DataFrame({"wall": both["value_w"], "error": both["value_e"]})


def time_to(curve: pd.DataFrame, target: float) -> float:
    hit = curve[curve["error"] <= target]
    return float(hit["wall"].iloc[0]) if len(hit) else float("nan")


def wallclock_figure(ctx: ReportContext, runs: pd.DataFrame, k: int, target: float | None, stem: str,
                     title: str) -> list:
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, group) in enumerate(runs[runs["workers"] == k].groupby("label", sort=True)):
        for j, run_id in enumerate(group["run_id"]):
            curve = _curve(ctx, run_id)
            if len(curve):
                ax.plot(curve["wall"], curve["error"], "-", color=colours[i % len(colours)],
                        label=name if j == 0 else None, alpha=0.9 if j == 0 else 0.5)
    if target is not None:
        ax.axhline(target, color="grey", ls="--", lw=0.8, label=f"Bprop + {TARGET_MARGIN:g} points")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("wall-clock (s)")
    ax.set_ylabel("test error (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    ax.set_title(title)
    return ctx.save_figure(fig, stem)


def race(ctx: ReportContext, runs: pd.DataFrame, all_runs: pd.DataFrame, k: int) -> tuple[str, float | None]:
    """The sentence: did cDNI reach bprop's test error + 0.5 points in less wall-clock than pipelined
    bprop at K workers? bprop's error: the mean final test error of locked bprop at K = 1 (the
    one-process learning rule; micro-batches change BatchNorm's statistics), else of any bprop run."""
    bprop = all_runs[(all_runs["method"] == "bprop") & (all_runs["workers"] == 1) & (all_runs["schedule"] == "locked")]
    if bprop.empty:
        bprop = all_runs[all_runs["method"] == "bprop"]
    errors = _metric(bprop, "final_test_error").dropna()
    if errors.empty:
        return "No bprop run with a final test error: no target to race to.", None
    target = float(errors.mean()) + TARGET_MARGIN

    def fastest(mask) -> tuple[float, str]:
        best = (float("nan"), "")
        for name, group in runs[mask & (runs["workers"] == k)].groupby("label"):
            reached = [t for t in (time_to(_curve(ctx, r), target) for r in group["run_id"]) if t == t]
            t = float(np.mean(reached)) if reached else float("nan")      # NaN: no run of it got there
            if t == t and not (best[0] == best[0] and best[0] <= t):
                best = (t, name)
        return best

    with np.errstate(all="ignore"):
        cdni_t, _ = fastest(runs["method"] == "cdni")
        pipe_t, pipe_name = fastest((runs["method"] == "bprop") & (runs["schedule"] == "pipelined"))
    head = f"Target: bprop's final test error {target - TARGET_MARGIN:.2f}% + {TARGET_MARGIN:g} = {target:.2f}%, at K = {k}. "
    if cdni_t != cdni_t:
        return head + "cDNI did not reach it" + (
            f"; pipelined bprop ({pipe_name}) did, in {pipe_t:.1f} s." if pipe_t == pipe_t else "; neither did pipelined bprop."), target
    if pipe_t != pipe_t:
        return head + f"cDNI reached it in {cdni_t:.1f} s; pipelined bprop did not reach it.", target
    verdict = "less" if cdni_t < pipe_t else "not less"
    return head + (f"cDNI reached it in {cdni_t:.1f} s, pipelined bprop ({pipe_name}) in {pipe_t:.1f} s: "
                   f"cDNI took {verdict} wall-clock ({cdni_t / pipe_t:.2f}x)."), target


def one_thread_rates(runs: pd.DataFrame, k: int, method: str) -> tuple[float, float]:
    """``method``'s mean samples/s at K = ``k`` workers and in one process, one thread per worker each (NaN where it
    has no such run)."""
    one_thread = runs[(runs["method"] == method) & (runs["threads"] == 1)]
    return (one_thread[one_thread["workers"] == k]["samples_per_s"].mean(),
            one_thread[one_thread["workers"] == 1]["samples_per_s"].mean())


def efficiency_target(runs: pd.DataFrame, parts: pd.DataFrame, k: int = 2, method: str = "cdni") -> str:
    """The sentence on issue 10's efficiency target: ``method`` at K = ``k`` workers with one thread each against
    ``EFFICIENCY_TARGET``, met or not, and where its workers timed their steps (``parts``, ``efficiency_table``)
    what this split allows an executor that cost nothing. Empty without both runs."""
    rate, one = one_thread_rates(runs, k, method)
    if rate != rate or one != one:
        return ""
    name, efficiency = display_name(method), rate / (k * one)
    text = (f"Target (issue 10): {name} at K = {k} with one thread per worker, parallel efficiency >= "
            f"{EFFICIENCY_TARGET:.2f} (throughput >= {k * EFFICIENCY_TARGET:.2f}x one process at one thread): "
            f"{efficiency:.2f}, {'met' if efficiency >= EFFICIENCY_TARGET else 'not met'}.")
    row = parts[(parts["method"] == name) & (parts["K"] == k)] if not parts.empty else parts
    if len(row):
        row = row.iloc[0]
        beyond = " beyond the one process's own loop" if row.get("loop") else ""
        text += (f" With this split and its workers' steps timed before the run, an executor that cost nothing{beyond} "
                 f"would reach {row['bound']} (balance {row['balance']} x work {row['work']}); the executor kept "
                 f"{row['executor']} of it.")
        if row.get("loop"):
            text += (f" Both runs' training loops cost their steps some speed (the one process kept {row['loop']} of "
                     f"its step's rate timed alone): the executor's share is counted against the one process's loop.")
        if row.get("contention"):
            text += (f" Work {row['work']} = contention {row['contention']} x split {row['split']}: timed on every "
                     f"worker at once, the one-process step ran at {row['contention']} of its speed alone (what the "
                     f"machine takes when every worker computes, before any split or message), and cutting it into "
                     f"{k} pieces kept {row['split']} of that.")
            drift = float(row["contention"])
            if drift > 1 + DRIFT_TOLERANCE:
                text += (f" Contention above 1 is not something sharing the machine does: the same step ran {drift:.2f}x "
                         f"as fast during the K = {k} run as during the K = 1 run, so the machine's speed moved between "
                         f"them and the efficiency above is inflated by about that much; counting contention as 1, "
                         f"it would be about {efficiency / drift:.3f} "
                         f"({'met' if efficiency / drift >= EFFICIENCY_TARGET else 'not met'}). `make bench` measures "
                         f"it as interleaved pairs.")
    return text


def single_process_ratio(runs: pd.DataFrame, k: int, method: str = "cdni") -> str:
    """The sentence: ``method`` at K workers (one thread each) against its best run in one process (one
    worker at one or more threads: issue 10 asks for both), and against the fastest one-process run of any
    method. Empty when there is no such pair."""
    rate, one = one_thread_rates(runs, k, method)
    single = runs[(runs["workers"] == 1) & runs["samples_per_s"].notna()].groupby("label")["samples_per_s"].mean()
    own = single[[name for name in single.index
                  if (runs.loc[runs["label"] == name, "method"] == method).all()]]
    if k < 2 or rate != rate or own.empty:
        return ""
    name = display_name(method)
    text = f"{name} at K = {k} (one thread each): {rate:.0f} samples/s"
    if one == one:
        text += f", {rate / one:.2f}x {name} in one process at one thread ({one:.0f})"
    text += f"; {rate / own.max():.2f}x its best single process ({own.idxmax()} at K = 1: {own.max():.0f})"
    if single.idxmax() != own.idxmax():
        text += f"; {rate / single.max():.2f}x the fastest single process of any method ({single.idxmax()}: {single.max():.0f})"
    return text + "."


def render(ctx: ReportContext) -> Section | None:
    if ctx.runs.empty:
        return None
    runs = prepare(ctx.runs)
    if runs.empty:
        return None
    runs, _ = latest_variant(runs, ["profile", "model", "label", "workers"])
    body = ["Each method's stages in K worker processes (gloo point-to-point; one thread per worker unless the "
            "row says threads). Locked bprop waits for the gradient from above; pipelined bprop runs M micro-batches "
            "through PyTorch's pipeline schedules (GPipe unless the row says 1F1B); DNI and cDNI update at once from their synthesizers and never wait "
            "for a gradient. Speed-up and efficiency are against the same method at K = 1 (1F1B: GPipe of the same M "
            "where it has no K = 1 run of its own); the ideal line is "
            "K times that. Busy fraction and waits are per worker (worker 0 first). Staleness: batches between "
            "a synthesizer's prediction and its target, per interface (mean/max). The cost model "
            "(dnibench/parallel/cost.py) is shown next to each measured K with its relative error and its inputs. "
            "Split: the stages [lo:hi) of each worker, chosen from stage times measured in the run; load: the "
            "machine's 1-minute load average as the run started and ended (with 2 workers on 2 cores any other "
            "load slows the run).", ""]
    disturbed = int(runs["disturbed"].sum())
    if disturbed:
        body += [f"{disturbed} run(s) marked timing disturbed give no throughput.", ""]
    files = []
    for profile in [p for p in PROFILES if p in set(runs["profile"])]:
        for model in sorted(set(runs.loc[runs["profile"] == profile, "model"])):
            at = runs[(runs["profile"] == profile) & (runs["model"] == model)]
            stem = f"parallel_{model}_{profile}"
            where = f"{display_name(model)} {at['task'].iloc[0]} ({profile})"
            files += throughput_figure(ctx, at, f"{stem}_throughput", f"{where}: throughput")
            k = int(at["workers"].max())
            sentence, target = race(ctx, at, at, k)
            files += wallclock_figure(ctx, at, k, target, f"{stem}_wallclock", f"{where}: K = {k}")
            table = speedup_table(at)
            files += ctx.write_table(table, f"{stem}_speedup")
            body += [f"### {where}", "", f"![throughput]({stem}_throughput.png) ![wall-clock]({stem}_wallclock.png)",
                     "", markdown_table(table), "", sentence, ""]
            ratio = single_process_ratio(at, k)
            if ratio:
                body += [ratio, ""]
            parts = efficiency_table(at)
            goal = efficiency_target(at, parts)
            if goal:
                body += [goal, ""]
            if not parts.empty:
                files += ctx.write_table(parts, f"{stem}_efficiency")
                body += ["Where a decoupled run's efficiency goes: efficiency = balance x work x executor, from each "
                         "worker's step timed before the run (all workers at once). Balance: the workers' steps added "
                         "up over K times the slowest (what the split of the stages leaves). Work: the one-process "
                         "step (its K = 1 run) over the workers' steps added up (what splitting a step costs: each "
                         "worker's own overhead, the boundary synthesizer's second prediction, the neighbour on the "
                         "other core; with more workers than cores they share cores and each step is timed the "
                         "longer for it, about cores/K). Where the run also timed the one-process step on every worker "
                         "at once, work = contention x split: contention, the K = 1 run's step over that step timed next "
                         "to the busy neighbours (what the machine takes, before any split or message); split, that step "
                         "over the workers' steps added up (what cutting the step costs). Executor: the run's samples/s over the slowest worker's rate from its step "
                         "alone (what messages and waiting cost). Bound: balance x work, what an executor that cost "
                         "nothing would reach with this split. Loop: the K = 1 run's samples/s over its own step's rate "
                         "timed alone before it (what the training loop around the step costs: gathering each batch, "
                         "the metrics, the log points, the slow steps a median leaves out). Where the K = 1 run timed "
                         "its step, the one-process step above is that step, and the executor is counted against the "
                         "one process's loop (its rate over the slowest worker's, over the K = 1 run's loop), so the "
                         "loop's cost, which both runs pay, is in neither factor.", "", markdown_table(parts), ""]
            scale = modelled_scaling(at)
            if not scale.empty:
                files += scaling_figure(ctx, scale, f"{stem}_modelled", f"{where}: cost model, K = 1..64")
                wide = scale.pivot_table(index=["cluster", "schedule"], columns="workers", values="speedup").round(2)
                wide.columns = [f"K={k}" for k in wide.columns]
                wide = wide.reset_index()
                files += ctx.write_table(wide, f"{stem}_modelled")
                n = len(_weight_split(at["model"].iloc[0], at["task"].iloc[0], 1, 1.0) or []) or "N"
                body += ["Modelled beyond this machine (dnibench/parallel/cost.py): speed-up over one worker of each "
                         "method/schedule for K up to 64 (pipelined bprop: over one-process bprop, so its K = 1 column "
                         "is what its micro-batches cost), from its measured K = 1 step (logged stage costs scaled to "
                         "it, a pipeline's own time per micro-batch and worker from it, or the step split by the "
                         "layers' weights) and the two presets' links (CPU cluster: "
                         "10 GbE; GPU cluster: NVLink in a node of 8, InfiniBand between nodes; the figures in "
                         "cost.py are assumptions with their sources). Compute stays as measured on this run's "
                         f"device, so the GPU case shows only what faster links change. Past the network's {n} "
                         "stages the model deepens the network with copies of a hidden layer: those rows are about "
                         "a deeper network, not this one.", "",
                         f"![modelled]({stem}_modelled.png)", "", markdown_table(wide), ""]
    return Section(title="Stages in worker processes: throughput and wall-clock", body="\n".join(body), files=files)
