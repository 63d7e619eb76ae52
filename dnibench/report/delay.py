"""Stale synthesizers (beyond the paper), from the mnist_delay suite: final test error against the
update delay k, for DNI and cDNI. With delay k a layer applies synthetic gradients from its
synthesizer's parameters of k steps ago (methods/dni.py says why parameters, not predictions).
There is no published number to compare with; the figure shows how staleness, as opposed to the
sparsity of p_update, costs each method.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import NullLocator

from . import Section
from .context import ReportContext, display_name, latest_variant, markdown_table
from .verdict import mean_ci
from ..suite import PROFILES

SUITE = "mnist_delay"
METHODS = ["dni", "cdni"]
DELAY_KEY = "param.method_args.delay"


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (method, delay), group in runs.groupby(["method", "delay"]):
        mean, half, n = mean_ci(group["metric.final_test_error"].tolist())
        rows.append({"method": method, "delay": int(delay), "mean": mean, "ci95": half, "seeds": n})
    return pd.DataFrame(rows, columns=["method", "delay", "mean", "ci95", "seeds"])


def figure(ctx: ReportContext, table: pd.DataFrame, profile: str):
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for method, colour in zip(METHODS, ["tab:blue", "tab:orange"]):
        at = table[table["method"] == method].sort_values("delay")
        if at.empty:
            continue
        err = np.nan_to_num(at["ci95"].to_numpy(), nan=0.0)
        ax.errorbar(at["delay"], at["mean"], yerr=err, fmt="o-", color=colour, capsize=3, label=display_name(method))
    ax.set_xscale("symlog", linthresh=1)             # delay 0 sits on the axis, then log spacing
    delays = sorted(table["delay"].unique())
    ax.set_xticks(delays, [str(d) for d in delays])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("synthesizer delay k (steps)")
    ax.set_ylabel("final test error (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"FCN-4 MNIST, stale synthesizers ({profile})")
    return ctx.save_figure(fig, f"delay_{profile}")


def render(ctx: ReportContext) -> Section | None:
    runs = ctx.runs
    if runs.empty or DELAY_KEY not in runs:
        return None
    runs = runs[(runs["suite"] == SUITE) & runs["method"].isin(METHODS)].copy()
    if runs.empty:
        return None
    runs["delay"] = runs[DELAY_KEY].astype(int)
    runs, _ = latest_variant(runs, ["profile", "method", "delay"])   # a since-edited suite: its latest configuration
    body = ["FCN-4 on MNIST with DNI and cDNI where every layer applies synthetic gradients from its "
            "synthesizer's parameters of k steps ago, while the synthesizer keeps regressing on fresh "
            "targets (not in the paper: it measures staleness, where p_update measures sparsity). "
            "Mean ± 95% CI over seeds where there are several.", ""]
    files = []
    for profile in [p for p in PROFILES if p in set(runs["profile"])]:
        at = runs[runs["profile"] == profile]
        table = summary(at)
        files += figure(ctx, table, profile)
        wide = table.pivot(index="delay", columns="method", values="mean").round(2)
        wide = wide.reindex(columns=[m for m in METHODS if m in wide.columns])
        wide.columns = [f"{display_name(m)} final test error (%)" for m in wide.columns]
        wide = wide.reset_index()
        files += ctx.write_table(wide, f"delay_{profile}")
        steps = int(at["param.train.steps"].astype(int).max())
        body += [f"### Profile `{profile}` ({len(at)} runs, {steps} iterations)", "",
                 f"![delay](delay_{profile}.png)", "", markdown_table(wide)]
    return Section(title="Stale synthesizers: test error against update delay", body="\n".join(body), files=files)
