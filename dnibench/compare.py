"""`dnibench compare`: a variant against the baselines over seeds, from MLflow only.

For one suite (and profile) it tabulates, per model and method configuration: the seeds, the metric's
mean ± 95% CI, the difference to the baseline method with its Welch 95% CI, training throughput and its
ratio to the baseline's, and GPU utilisation where logged.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .errors import DnibenchError
from .report.context import (latest_variant, load_failed_runs, load_runs, markdown_table, record_generated,
                             safe_file_name)
from .report.curves import line_labels, timing_disturbed, timing_note
from .report.verdict import mean_ci, welch_ci


def _pm(mean: float, half: float, digits: int = 2) -> str:
    if not math.isfinite(mean):
        return "—"
    return f"{mean:.{digits}f}" + (f" ± {half:.{digits}f}" if math.isfinite(half) else "")


def compare(tracking_uri: str, suite: str, profile: str | None = None, baseline: str = "bprop",
            metric: str | None = None) -> tuple[pd.DataFrame, str, str]:
    """(table, metric, profile) for one suite; raises DnibenchError when there is nothing to compare."""
    runs = load_runs(tracking_uri)
    runs = runs[runs["suite"] == suite]
    if runs.empty:
        failed = failed_runs(tracking_uri, suite)
        reasons = "; ".join(f"{r.model}/{r.method}/seed{r.seed}: {r.reason}" for r in failed.head(5).itertuples())
        raise DnibenchError(f"no finished runs of suite {suite!r} in {tracking_uri}"
                            + (f" ({len(failed)} FAILED or KILLED: {reasons})" if len(failed) else ""))
    if profile is None:
        profile = runs.sort_values("start_time")["profile"].iloc[-1]
    runs = runs[runs["profile"] == profile]
    if runs.empty:
        raise DnibenchError(f"no finished runs of suite {suite!r} at profile {profile!r} in {tracking_uri}")
    if metric is None:
        metric = next((m for m in ("final_test_error", "max_len_solved", "test_bpc") if f"metric.{m}" in runs), None)
    if metric is None or f"metric.{metric}" not in runs:
        raise DnibenchError(f"metric {metric!r} was not logged by suite {suite!r}")
    if not (runs["method"] == baseline).any():
        methods = ", ".join(sorted(runs["method"].dropna().unique()))
        raise DnibenchError(f"--baseline {baseline[:60]!r}: no finished runs of that method in suite {suite!r} "
                            f"at profile {profile!r}; methods present: {methods}")
    runs = runs.assign(label=line_labels(runs))
    rows = []
    for model, by_model in runs.groupby("model", sort=True):
        base, _ = latest_variant(by_model[by_model["method"] == baseline], ["model"])
        base_values = base[f"metric.{metric}"].dropna().tolist()
        base_speed = _speed(base)
        for label, group in by_model.groupby("label", sort=False):
            values = group[f"metric.{metric}"].dropna().tolist()
            mean, half, n = mean_ci(values)
            diff, diff_half, _, _ = welch_ci(values, base_values)     # NaN where a side has no value (< 2: no CI)
            speed = _speed(group)
            gpu = group["metric.gpu_util_pct_mean"].mean() if "metric.gpu_util_pct_mean" in group else math.nan
            rows.append({"model": model, "method": label, "seeds": n, metric: _pm(mean, half),
                         f"vs {baseline}": "baseline" if set(group["variant"]) <= set(base["variant"])
                         else _pm(diff, diff_half),
                         "samples/s": f"{speed:.0f}" if math.isfinite(speed) else _no_speed(group),
                         f"speed vs {baseline}": f"{speed / base_speed:.2f}x"
                         if math.isfinite(speed) and math.isfinite(base_speed) and base_speed else "—",
                         "GPU util %": f"{gpu:.0f}" if math.isfinite(gpu) else "—",
                         "timing": timing_note(group) or "ok"})
    return pd.DataFrame(rows), metric, profile


def _speed(runs: pd.DataFrame) -> float:
    """Mean samples/s over the runs whose timing was not disturbed (a disturbed run's throughput
    measures its neighbours, not the method); NaN when there is none."""
    if "metric.mean_samples_per_s" not in runs:
        return math.nan
    return float(runs.loc[~timing_disturbed(runs), "metric.mean_samples_per_s"].mean())


def _no_speed(runs: pd.DataFrame) -> str:
    return "disturbed" if len(runs) and timing_disturbed(runs).all() else "—"


def failed_runs(tracking_uri: str, suite: str, profile: str | None = None) -> pd.DataFrame:
    """The suite's FAILED and KILLED runs (at the profile, if given) with their reasons: model, method,
    seed, status, reason."""
    failed = load_failed_runs(tracking_uri)
    failed = failed[failed["suite"] == suite]
    if profile is not None:
        failed = failed[failed["profile"] == profile]
    return failed[["model", "method", "seed", "status", "reason"]].reset_index(drop=True)


def write_comparison(table: pd.DataFrame, out: Path, suite: str, profile: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / safe_file_name(f"compare_{suite}_{profile}.csv")   # names typed or read from the store
    table.to_csv(path, index=False)
    record_generated(out, [path])
    return path


def render(table: pd.DataFrame, suite: str, profile: str, metric: str, baseline: str,
           failed: pd.DataFrame | None = None) -> str:
    head = (f"Suite `{suite}` at `{profile}`: {metric} (mean ± 95% CI over seeds); difference to `{baseline}` "
            f"with Welch's 95% CI (where `{baseline}` ran in several configurations, the one run last is the baseline: "
            f"its row says so); samples/s = training throughput, over the runs whose timing "
            f"was not disturbed (timing: a run whose slowest log interval ran over 2x the median's time per "
            f"step was slowed from outside).\n\n")
    text = head + markdown_table(table)
    if failed is not None and not failed.empty:      # not results, but never dropped silently
        text += f"\n{len(failed)} run(s) FAILED or KILLED and are not in the table above:\n\n" + markdown_table(failed)
    return text
