"""Learning curves: test error against iterations and against training wall-clock, one figure per
(suite, profile), a row of panels per model, one line per method (mean over seeds; the band spans
the seeds' min..max). A wall-clock table per (suite, profile) gives each method's throughput.

Wall-clock is ``wall_s/train``, the training clock the runner logs at every evaluation step (it
excludes evaluation), so the right-hand panels compare what each method costs to reach an error.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter

from . import Section
from .context import DISPLAY_NAMES, ReportContext, display_name, markdown_table, parallel_run_label
from ..suite import PROFILES

COLOURS = {"nobprop": "#7f7f7f", "bprop": "#000000", "dni": "#1f77b4", "cdni": "#d62728"}
OTHER_COLOURS = ["#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]   # other methods
LINESTYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D"]            # a method's 5th to 8th variant: the line styles again, another marker
METHOD_ORDER = list(DISPLAY_NAMES)


def _model_key(model: str):
    # FCNs before CNNs, then by depth, as in the paper's Table 1.
    digits = "".join(ch for ch in model if ch.isdigit())
    return (not model.startswith("fcn"), model.rstrip("0123456789"), int(digits) if digits else 0, model)


def _text(value) -> str:
    """A param's value as a label shows it: "unset" where a run did not log it (older code, another kind of run)."""
    return "unset" if pd.isna(value) else str(value)


def _run_name(run: pd.Series) -> str:
    """The method's name; a parallel run's (it logged ``workers``) with its schedule, micro-batches, threads and K."""
    workers = _text(run.get("param.workers"))
    if workers == "unset":
        return display_name(run["method"])
    name = parallel_run_label(run)
    lockstep = _text(run.get("param.lockstep")).lower() == "true"
    return f"{name}, K={workers}" + (", lockstep" if lockstep else "")


def line_labels(runs: pd.DataFrame) -> pd.Series:
    """A label per run that names exactly one configuration (``variant``) of its model: the method's name
    (``_run_name``), plus, where one name covers several configurations (several p_update values, say), the params
    that tell them apart, a param only where it tells more of them apart than those before it (in column order).
    Seeds of two configurations are never drawn or averaged as one line; configurations no param tells apart get
    their variant hash."""
    labels = pd.Series([_run_name(run) for _, run in runs.iterrows()], index=runs.index, dtype=object)
    params = [c for c in runs.columns if c.startswith("param.") and c != "param.seed"]
    for _, group in runs.groupby("model", sort=False):
        def variants(key: pd.Series) -> pd.Series:     # configurations per distinct key
            return group.groupby(key.to_numpy())["variant"].nunique()
        names = labels[group.index]
        shared = variants(names)
        if (shared <= 1).all():
            continue
        values = group[params].apply(lambda col: col.map(_text))
        key, chosen = names.copy(), []
        for column in params:
            if (variants(key) <= 1).all():
                break
            finer = key + "\0" + values[column]
            if finer.nunique() > key.nunique():
                key, chosen = finer, chosen + [column]
        left = variants(key)
        for index in group.index:
            if shared[names[index]] > 1:
                parts = [f"{c.rsplit('.', 1)[-1]}={values.at[index, c]}" for c in chosen]
                parts += [f"variant {group.at[index, 'variant']}"] if left[key[index]] > 1 else []
                labels[index] = f"{names[index]} ({', '.join(parts)})"
    return labels


def mean_curve(ctx: ReportContext, run_ids: list[str]) -> pd.DataFrame:
    """DataFrame[step, wall_s, mean, lo, hi]: test error averaged over runs at each evaluation step,
    with the training seconds at that step (mean over runs)."""
    errors, walls = {}, {}
    for run_id in run_ids:
        err = ctx.history(run_id, "test_error").set_index("step")["value"]
        wall = ctx.history(run_id, "wall_s/train").drop_duplicates("step", keep="last").set_index("step")["value"]
        errors[run_id], walls[run_id] = err, wall.reindex(err.index)
    err, wall = pd.DataFrame(errors), pd.DataFrame(walls)
    return pd.DataFrame({"step": err.index, "wall_s": wall.mean(axis=1).to_numpy(), "mean": err.mean(axis=1).to_numpy(),
                         "lo": err.min(axis=1).to_numpy(), "hi": err.max(axis=1).to_numpy()}).dropna(subset=["mean"])


def _figure(ctx: ReportContext, runs: pd.DataFrame, title: str) -> Figure:
    models = sorted(set(runs["model"]), key=_model_key)
    fig = Figure(figsize=(10, 2.7 * len(models) + 0.6), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(models), 2, squeeze=False))
    handles = {}
    for row, model in zip(axes, models):
        at = runs[runs["model"] == model]
        for label, group in sorted(at.groupby("label"), key=lambda kv: _method_rank(kv[1])):
            method = group["method"].iloc[0]
            variant = _variant_index(runs, group)
            style = dict(color=_colour(runs, method), linestyle=LINESTYLES[variant % len(LINESTYLES)])
            marker = MARKERS[variant // len(LINESTYLES) % len(MARKERS)]
            curve = mean_curve(ctx, group["run_id"].tolist())
            seeds = len(group)
            for ax, x in zip(row, ("step", "wall_s")):
                (line,) = ax.plot(curve[x], curve["mean"], marker=marker, markersize=2.5 if marker == "o" else 4,
                                  linewidth=1.4, **style)
                if seeds > 1:
                    ax.fill_between(curve[x], curve["lo"], curve["hi"], alpha=0.15, color=style["color"], linewidth=0)
                handles.setdefault(label, line)
        row[0].set_ylabel(f"{display_name(model)}\ntest error (%)")
        for ax in row:
            ax.set_yscale("log")     # No Bprop sits several times above the rest; log keeps both readable
            ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
            ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
            ax.grid(True, which="both", alpha=0.3)
    axes[-1][0].set_xlabel("iteration")
    axes[-1][1].set_xlabel("training wall-clock (s)")
    axes[0][0].set_title("against iterations")
    axes[0][1].set_title("against training wall-clock")
    fig.suptitle(title)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=min(4, len(handles)))
    return fig


def _method_rank(group: pd.DataFrame):
    method = group["method"].iloc[0]
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method, group["label"].iloc[0])


def _colour(runs: pd.DataFrame, method: str) -> str:
    """A method's colour, the same for each of its variants and in every panel: the paper's four fixed, any other
    method (complete unlock, a variant file's) the next unused one by name."""
    if method in COLOURS:
        return COLOURS[method]
    others = sorted(set(runs["method"]) - set(COLOURS))
    return OTHER_COLOURS[others.index(method) % len(OTHER_COLOURS)]


def _variant_index(runs: pd.DataFrame, group: pd.DataFrame) -> int:
    """The line style of a method's variant: by its label across the whole figure, so one label
    keeps one style in every panel."""
    labels = sorted(set(runs.loc[runs["method"] == group["method"].iloc[0], "label"]))
    return labels.index(group["label"].iloc[0])


# Same threshold as dnibench.tracking.DISTURBED (kept apart: reports do not import torch).
TIMING_DISTURBED_ABOVE = 2.0
TIMED = ("metric.mean_samples_per_s", "metric.total_wall_s/train")     # what a disturbed run may not show


def timing_disturbed(runs: pd.DataFrame) -> pd.Series:
    """Runs whose step-time dispersion (the slowest log interval's time per step over the median
    interval's) is above 2: something outside the run slowed it, so its throughput is not the method's
    cost. Runs that did not log it (older ones) count as undisturbed."""
    if "metric.wall_step_dispersion" not in runs:
        return pd.Series(False, index=runs.index)
    return runs["metric.wall_step_dispersion"].astype(float) > TIMING_DISTURBED_ABOVE


def timing_note(group: pd.DataFrame) -> str:
    """"" when every run's timing is clean, else which share of them was disturbed."""
    n = int(timing_disturbed(group).sum())
    if n == 0:
        return ""
    return "timing disturbed" if n == len(group) else f"timing disturbed in {n} of {len(group)} runs (throughput from the others)"


def wallclock_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per model and method: seeds, device, mean samples/s, total training seconds, final test error
    (means over seeds), and the sampled utilisation where the runs logged it. Throughput and training
    time are means over the runs whose timing was not disturbed; "disturbed" where none was clean. The CPU
    threads each row's runs trained with, where the rows differ (a parallel run's: per worker)."""
    columns = {"metric.mean_samples_per_s": ("samples/s", "{:.0f}"), "metric.total_wall_s/train": ("train s", "{:.3g}"),
               "metric.final_test_error": ("final test error %", "{:.2f}"),
               "metric.cpu_util_pct_mean": ("CPU util %", "{:.0f}"), "metric.gpu_util_pct_mean": ("GPU util %", "{:.0f}"),
               "metric.gpu_mem_mb_mean": ("GPU mem MB", "{:.0f}")}
    rows = []
    for (model, label), group in runs.groupby(["model", "label"], sort=False):
        row = {"Model": display_name(model), "Method": label, "Seeds": len(group),
               "Device": ", ".join(sorted(set(group["device"])))}
        clean = group[~timing_disturbed(group)]
        for column, (name, fmt) in columns.items():
            if column in group and group[column].notna().any():
                if column in TIMED:
                    row[name] = fmt.format(clean[column].mean()) if clean[column].notna().any() else "disturbed"
                else:
                    row[name] = fmt.format(group[column].mean())
        if "metric.wall_step_dispersion" in group:
            row["Timing"] = timing_note(group)
        if "metric.cpu_threads" in group and group["metric.cpu_threads"].notna().any():
            row["CPU threads"] = "/".join(f"{t:g}" for t in sorted(set(group["metric.cpu_threads"].dropna())))
        rows.append(row)
    table = pd.DataFrame(rows)
    if "CPU threads" in table and table["CPU threads"].nunique() <= 1:
        table = table.drop(columns="CPU threads")      # said only where the rows differ: their rates are not alike
    return table.fillna("")


OWN_SECTION_SUITES = ("mnist_async", "mnist_unlock", "mnist_delay")


def render(ctx: ReportContext) -> Section | None:
    runs = ctx.runs
    if runs.empty or "metric.test_error" not in runs:
        return None
    # Suites with a section of their own (p_update, unlock, delay) draw their curves there.
    runs = runs[runs["metric.test_error"].notna() & ~runs["suite"].isin(OWN_SECTION_SUITES)]
    if runs.empty:
        return None
    body, files = ["Test error (log scale) at each evaluation, mean over seeds (band: min..max over seeds), "
                   "against iterations (left) and training wall-clock (right, evaluation time excluded).", ""], []
    groups = [(s, p) for s in sorted(set(runs["suite"])) for p in PROFILES
              if ((runs["suite"] == s) & (runs["profile"] == p)).any()]
    for suite, profile in groups:
        at = runs[(runs["suite"] == suite) & (runs["profile"] == profile)].copy()
        at["label"] = line_labels(at)
        order = sorted(at.index, key=lambda i: (_model_key(at.at[i, "model"]), _method_rank(at.loc[[i]])))
        at = at.loc[order]
        stem = f"curves_{suite}_{profile}"
        fig = _figure(ctx, at, f"{suite}, profile {profile}: test error")
        figure_files = ctx.save_figure(fig, stem)
        table = wallclock_table(at)
        table_files = ctx.write_table(table, f"{stem}_wallclock")
        files += figure_files + table_files
        devices = ", ".join(sorted(set(at["device"])))
        body += [f"### `{suite}` at `{profile}`", "", f"![learning curves]({figure_files[0].name})", "",
                 f"Wall-clock per method ({devices}; means over seeds; samples/s counts training examples "
                 "per second of training time; a run whose slowest log interval took over "
                 f"{TIMING_DISTURBED_ABOVE:g}x the median interval's time per step is marked timing disturbed and "
                 "its throughput is left out):", "", markdown_table(table), ""]
    return Section(title="Learning curves and wall-clock", body="\n".join(body), files=files)
