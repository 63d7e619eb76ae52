"""The paper's central RNN claim at the paper's model size, on a budget a CPU can pay
(suites/rnn_copy_lstm256.yaml and rnn_repeat_copy_lstm256.yaml; opt-in, not in `make reproduce`):
DNI lets a truncated-BPTT LSTM solve longer Copy / Repeat Copy sequences than BPTT at the same T.

Judged per T as the paired claim "BPTT's curriculum step is lower than DNI's" (verdict.lower_than on
each side's seeds, tolerance one curriculum step as in the RNN table); a single-seed profile judges the
one run as a point and says so. The published lengths come from 100k steps and are shown beside it, not
compared: these suites run 10000.
"""
from __future__ import annotations

import pandas as pd

from . import Section
from .context import ReportContext, latest_variant, markdown_table
from .rnn import CLAIM_SUITES, METRIC, TASKS, _efficiency_figure, curriculum_level, main_reading, published_cell, tolerance
from .verdict import NO_RUNS, is_single_seed, lower_than, mean_ci, single_seed_note
from ..suite import PROFILES

CLAIM = "DNI longer than BPTT"


def _by_seed(at: pd.DataFrame, column: str) -> list[float]:
    if column not in at:
        return []
    return at.sort_values("seed")[column].astype(float).tolist()


def _lengths(values: list[float]) -> str:
    return ", ".join(f"{v:.0f}" for v in values) if values else "·"


def claim_table(ctx: ReportContext, runs: pd.DataFrame, profile: str) -> pd.DataFrame:
    """One row per (task, T): each side's longest length per seed, the mean difference in curriculum
    steps, the verdict on the claim, training wall-clock per run, the published lengths."""
    rows = []
    for suite_name, task in CLAIM_SUITES.items():
        here = runs[(runs["suite"] == suite_name) & (runs["profile"] == profile)]
        if here.empty:
            continue
        here, _ = latest_variant(main_reading(here), ["model", "method", "param.method_args.T"])
        single = is_single_seed(ctx.suites.get(suite_name), profile)
        for T in sorted({int(t) for t in here["param.method_args.T"]}):
            side = {m: here[(here["method"] == m) & (here["param.method_args.T"] == str(T))] for m in ("bptt", "dni_bptt")}
            lengths = {m: _by_seed(at, METRIC[task]) for m, at in side.items()}
            levels = {m: [curriculum_level(task, v) for v in lengths[m]] for m in side}
            walls = {m: mean_ci(_by_seed(at, "metric.total_wall_s/train"))[0] for m, at in side.items()}
            have = all(levels.values())
            diff = mean_ci(levels["dni_bptt"])[0] - mean_ci(levels["bptt"])[0] if have else float("nan")
            pub = [published_cell(ctx, task, m, T) for m in side]
            rows.append({
                "task": TASKS[task][0], "T": T, "BPTT": _lengths(lengths["bptt"]), "DNI": _lengths(lengths["dni_bptt"]),
                "seeds": f"{len(lengths['bptt'])} vs {len(lengths['dni_bptt'])}",
                "DNI − BPTT (curriculum steps)": f"{diff:+.2g}" if have else "",
                "train s (BPTT / DNI)": " / ".join(f"{w:.3g}" if w == w else "·" for w in walls.values()),
                "published BPTT / DNI (100k steps)": " / ".join("–" if p is None else f"{p:g}" for p in pub),
                f"verdict ({CLAIM})": lower_than(levels["bptt"], levels["dni_bptt"], tolerance(ctx, task, "dni_bptt"),
                                                True, single) if have else NO_RUNS})
    return pd.DataFrame(rows)


def render(ctx: ReportContext) -> Section | None:
    runs = ctx.runs
    if runs.empty or not runs["suite"].isin(list(CLAIM_SUITES)).any():
        return None
    runs = runs[runs["suite"].isin(list(CLAIM_SUITES))]
    body, files = [], []
    for profile in PROFILES:
        table = claim_table(ctx, runs, profile)
        if table.empty:
            continue
        files += ctx.write_table(table, f"rnn_claim_{profile}")
        body += [f"### At `{profile}`", "", "Longest length solved per seed (Copy N+3, Repeat Copy N*R+3). "
                 f"*{CLAIM}* holds when BPTT's curriculum step is below DNI's beyond the Welch 95% CI (a single-seed "
                 "profile: the one run as a point); the published lengths are from 100k steps, shown, not compared.",
                 "", markdown_table(table), ""]
        for suite_name in CLAIM_SUITES:
            suite = ctx.suites.get(suite_name)
            if suite is None or not (runs["suite"] == suite_name).any():
                continue
            note = single_seed_note(suite, profile)
            deps = suite.profiles[profile].departures
            body += [f"- {note}"] if note else []
            body += [f"- `{suite_name}` at `{profile}` departs from the paper: " + "; ".join(deps)] if deps else []
        body.append("")
        fig = _efficiency_figure(main_reading(runs[runs["profile"] == profile]), profile)
        if fig is not None:
            paths = ctx.save_figure(fig, f"rnn_claim_data_efficiency_{profile}")
            files += paths
            body += [f"Samples (episodes) seen when each length was first solved at `{profile}` (mean over the seeds "
                     "that reached it).", "", f"![data efficiency at LSTM-256]({paths[0].name})", ""]
    if not body:
        return None
    return Section("The RNN claim at the paper's LSTM-256 (Copy, Repeat Copy; opt-in suites)", "\n".join(body), files)
