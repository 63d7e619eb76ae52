"""Sporadic, asynchronous updates (paper §3.1, its p_update figure), from the mnist_async suite.

Three figures per profile: final test error against p_update in the paper's style (one panel per
method, every evaluation of every run drawn as a point coloured by its training iteration, so the
run's last point is its final error); test error against iterations for a few p_update values; and
how many updates each layer actually made. Then the paper's two claims with a verdict each:
  1. DNI still reaches about 2% test error at p_update = 0.2: a one-sided claim (reaching 1.5% is
     reaching about 2%), judged by verdict.at_most against 2% + tolerance;
  2. cDNI trains "perfectly" at p_update = 0.05. "Trains" is defined here, numerically: the final
     test error at p_update = 0.05 is at most TRAINS_MARGIN points above cDNI's own final error at
     p_update = 1.0 under the same schedule (sporadic updates cost it at most half a point), judged
     one-sided on the Welch CI of the difference (verdict.at_most with the margin as tolerance).
Only the paper profile runs the paper's schedule, so only there is a claim judged against the paper;
at smoke and quick the measured numbers are reported with "not comparable at this profile".
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from . import Section
from .context import ReportContext, display_name, latest_variant, markdown_table
from .data_used import comparable
from .verdict import NO_RUNS, at_most, mean_ci, single_seed_note, welch_ci, why_not_comparable
from ..suite import PROFILES

SUITE = "mnist_async"
METHODS = ["bprop", "dni", "cdni"]
P_KEY = "param.method_args.p_update"
CURVE_P = [0.05, 0.2, 0.5, 1.0]          # the p_update values drawn as learning curves
TRAINS_MARGIN = 0.5                      # points of test error; see claim 2 above


def error_axis(ax) -> None:
    """Test error on a log axis, labelled in plain percent (the paper's figures span 1-90%)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(FixedLocator([0.5, 1, 2, 5, 10, 20, 50, 100]))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(alpha=0.3, which="both")


def _runs(ctx: ReportContext) -> pd.DataFrame:
    runs = ctx.runs
    if runs.empty or P_KEY not in runs:
        return runs.iloc[0:0]
    runs = runs[(runs["suite"] == SUITE) & runs["method"].isin(METHODS)].copy()
    runs["p_update"] = runs[P_KEY].astype(float)
    runs["steps"] = runs["param.train.steps"].astype(int)
    # A suite edited between invocations: each point uses only the configuration run last.
    runs, _ = latest_variant(runs, ["profile", "method", "p_update"])
    return runs


def _values(runs: pd.DataFrame, method: str, p: float) -> list[float]:
    """The final test error of each seed of `method` at p_update = p."""
    at = runs[(runs["method"] == method) & np.isclose(runs["p_update"], p)]
    return at["metric.final_test_error"].tolist() if "metric.final_test_error" in at else []


def _final(runs: pd.DataFrame, method: str, p: float) -> tuple[float, float, int]:
    return mean_ci(_values(runs, method, p))


def _fmt(mean: float, half: float, n: int) -> str:
    if n == 0:
        return "no run"
    return f"{mean:.2f}%" + (f" ± {half:.2f} ({n} seeds)" if n > 1 else " (1 seed)")


def iteration_norm(steps: int) -> LogNorm:
    """The colour scale of training iterations in the p_update figures (log: early evaluations spread out)."""
    return LogNorm(vmin=max(1, steps / 100), vmax=steps)


def evaluation_points(ax, ctx: ReportContext, runs: pd.DataFrame, norm: LogNorm, marker: str = "o") -> None:
    """The paper's p_update style: every evaluation of every run at its p_update, coloured by its
    iteration, the run's final error ringed. ``runs`` needs ``run_id`` and ``p_update``."""
    for run in runs.itertuples():
        curve = ctx.history(run.run_id, "test_error")
        ax.scatter(np.full(len(curve), run.p_update), curve["value"], c=curve["step"].clip(lower=1),
                   cmap="viridis", norm=norm, s=14, linewidths=0, marker=marker)
        if len(curve):          # the final error, ringed
            ax.scatter([run.p_update], curve["value"].iloc[-1:], s=40, facecolors="none", edgecolors="k", lw=0.8,
                       marker=marker)


def p_update_figure(ctx: ReportContext, runs: pd.DataFrame, profile: str):
    methods = [m for m in METHODS if m in set(runs["method"])]
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.6), sharey=True, squeeze=False)
    norm = iteration_norm(runs["steps"].max())
    for ax, method in zip(axes[0], methods):
        evaluation_points(ax, ctx, runs[runs["method"] == method], norm)
        ax.set_title(display_name(method))
        ax.set_xlabel("p_update")
        ax.set_xlim(0, 1.05)
        error_axis(ax)
    axes[0][0].set_ylabel("test error (%)")
    bar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=axes[0].tolist(), pad=0.01)
    bar.set_label("training iteration")
    fig.suptitle(f"FCN-4 MNIST, sporadic updates ({profile}); ringed: final", y=1.02)
    return ctx.save_figure(fig, f"async_p_update_{profile}")


def curves_figure(ctx: ReportContext, runs: pd.DataFrame, profile: str):
    methods = [m for m in METHODS if m in set(runs["method"])]
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.4), sharey=True, squeeze=False)
    colours = plt.cm.plasma(np.linspace(0, 0.85, len(CURVE_P)))
    for ax, method in zip(axes[0], methods):
        for p, colour in zip(CURVE_P, colours):
            at = runs[(runs["method"] == method) & np.isclose(runs["p_update"], p)]
            for k, run in enumerate(at.itertuples()):
                curve = ctx.history(run.run_id, "test_error")
                ax.plot(curve["step"], curve["value"], color=colour, lw=1.2, label=f"p_update={p:g}" if k == 0 else None)
        ax.set_title(display_name(method))
        ax.set_xlabel("iteration")
        error_axis(ax)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("test error (%)")
    fig.suptitle(f"FCN-4 MNIST, test error against iterations ({profile})", y=1.02)
    return ctx.save_figure(fig, f"async_curves_{profile}")


def updates_figure(ctx: ReportContext, runs: pd.DataFrame, profile: str):
    """Fraction of steps in which each layer updated, against p_update, with the expected rates:
    p_update for DNI/cDNI, p_update^(N-i+1) for layer i of N with backprop."""
    methods = [m for m in METHODS if m in set(runs["method"])]
    layers = sorted(int(c.split("stage")[1]) for c in runs if c.startswith("metric.updates/stage"))
    n = max(layers)
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.4), sharey=True, squeeze=False)
    grid = np.linspace(0.01, 1, 100)
    colours = plt.cm.viridis(np.linspace(0, 0.85, n))
    for ax, method in zip(axes[0], methods):
        at = runs[runs["method"] == method].sort_values("p_update")
        for layer, colour in zip(layers, colours):
            ax.plot(at["p_update"], at[f"metric.updates/stage{layer}"] / at["steps"], "o", ms=4, color=colour,
                    label=f"layer {layer}")
            expected = grid ** (n - layer + 1) if method == "bprop" else grid
            ax.plot(grid, expected, "--", lw=0.8, color=colour if method == "bprop" else "grey")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(1e-5, 1.5)
        ax.set_title(display_name(method) + (": p^(N-i+1) expected" if method == "bprop" else ": p expected"))
        ax.set_xlabel("p_update")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("updates / iterations")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Updates each layer made ({profile}); dashed: expected rate", y=1.02)
    return ctx.save_figure(fig, f"async_updates_{profile}")


def claims(ctx: ReportContext, runs: pd.DataFrame, profile: str) -> pd.DataFrame:
    published = ctx.published["p_update"]["claims"]
    tolerance = ctx.published["tolerance_points"]
    reason = why_not_comparable(comparable(runs, profile))   # None: verdicts apply
    single_seed = single_seed_note(ctx.suites.get(SUITE), profile) is not None
    rows = []
    for claim in published:
        method, p = claim["method"], float(claim["p_update"])
        mean, half, n = _final(runs, method, p)
        if claim.get("test_error_about") is not None:      # claim 1: reaches a level, one-sided
            about = float(claim["test_error_about"])
            measured = _fmt(mean, half, n)
            state = at_most(mean, half, n, about, tolerance, True, single_seed)
            if reason and n:
                state = f"{reason} (the rule would say: {state})"
            rule = (f"final test error at most {about:g}% + {tolerance} points (one-sided; inconclusive when "
                    f"the CI half-width exceeds {tolerance})")
        else:                                              # claim 2: "trains" at a small p_update
            ref_mean, ref_half, ref_n = _final(runs, method, 1.0)
            measured = f"{_fmt(mean, half, n)} at p_update={p:g}; {_fmt(ref_mean, ref_half, ref_n)} at p_update=1"
            if n == 0 or ref_n == 0:
                state = NO_RUNS
            else:                                          # one-sided on the Welch CI of the difference
                diff, diff_half, n_p, n_ref = welch_ci(_values(runs, method, p), _values(runs, method, 1.0))
                state = at_most(diff, diff_half, min(n_p, n_ref), 0.0, TRAINS_MARGIN, True, single_seed)
                if reason:
                    state = f"{reason} (the rule would say: {state})"
            rule = (f"final error at p_update={p:g} ≤ final error at p_update=1 + {TRAINS_MARGIN} points "
                    f"(one-sided, on the Welch CI of the difference; inconclusive when it is wider than ±{TRAINS_MARGIN})")
        rows.append({"Claim (as published)": claim["text"], "Measured (final test error)": measured,
                     "Rule": rule, "Verdict": state})
    return pd.DataFrame(rows)


def render(ctx: ReportContext) -> Section | None:
    runs = _runs(ctx)
    if runs.empty:
        return None
    body = ["FCN-4 on MNIST; after each forward pass every layer runs its backward pass and update with "
            "probability p_update. With backprop a layer's gradient exists only when every layer above it ran "
            "its backward, so layer i of N updates at rate p_update^(N-i+1); with DNI and cDNI every layer "
            "depends on its own coin only (paper §3.1). Claim 2's *trains* is defined numerically: cDNI's final "
            f"test error at p_update = 0.05 is at most {TRAINS_MARGIN} points above its own at p_update = 1 "
            "under the same schedule.", ""]
    files = []
    for profile in [p for p in PROFILES if p in set(runs["profile"])]:
        at = runs[runs["profile"] == profile]
        files += p_update_figure(ctx, at, profile)
        files += curves_figure(ctx, at, profile)
        files += updates_figure(ctx, at, profile)
        table = claims(ctx, at, profile)
        files += ctx.write_table(table, f"async_claims_{profile}")
        finals = (at.groupby(["method", "p_update"])["metric.final_test_error"].mean().unstack("method")
                  .reindex(columns=[m for m in METHODS if m in set(at["method"])]))
        finals.columns = [display_name(m) for m in finals.columns]
        finals = finals.reset_index().round(2)
        files += ctx.write_table(finals, f"async_final_error_{profile}")
        suite = ctx.suites.get(SUITE)
        departures = suite.profiles[profile].departures if suite else []
        body += [f"### Profile `{profile}` ({len(at)} runs, {at['steps'].max()} iterations)", ""]
        if profile != "paper":
            body += ["Not the paper's schedule, so the claims are *not comparable*; the measured numbers are "
                     "reported as they are. Departures:", *[f"- {d}" for d in departures], ""]
        body += [f"![p_update](async_p_update_{profile}.png)", "", f"![curves](async_curves_{profile}.png)", "",
                 f"![updates](async_updates_{profile}.png)", "", "Claims:", "", markdown_table(table), "",
                 "Final test error (%) by p_update (mean over seeds):", "", markdown_table(finals)]
    return Section(title="Sporadic updates: test error against p_update", body="\n".join(body), files=files)
