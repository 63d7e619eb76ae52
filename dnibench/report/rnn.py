"""Recurrent DNI (paper §3.2): the RNN table in the paper's layout (rows Copy, Repeat Copy, PTB;
columns T per method), measured next to published with verdicts; the data-efficiency figure
(samples seen against length solved); PTB validation BPC against iterations and wall-clock per T;
the two-timescale learning curves.

Verdicts are given at the paper profile only (the others change the LSTM size and the budget), with
verdict.verdict's rule (distance of the mean; inconclusive when the seeds disagree by more than the
tolerance). Tolerances are ours, not the paper's, and live in the published yaml with their reasons:
one curriculum step for Copy and Repeat Copy (a length is a curriculum level; the published BPTT -> DNI
gaps are 4 steps or more), 0.005 bits per character for PTB (the table's rounding; the published
BPTT -> DNI gap is itself 0.02, so a looser tolerance could not tell the columns apart). PTB is also
judged as the paired claim the paper makes, DNI (and DNI+Aux) lower than BPTT at the same T, on the
Welch CI of the difference (verdict.lower_than).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from . import Section, conventions
from .context import PUBLISHED_PATH, ReportContext, latest_variant, markdown_table
from .data_used import comparable
from .verdict import NO_RUNS, lower_than, mean_ci, single_seed_note, verdict, welch_ci, why_not_comparable
from ..errors import DnibenchError
from ..rnn.tasks import Curriculum
from ..suite import PROFILES, plan, skipped_entries

TASKS = {"copy": ("Copy", "rnn_copy"), "repeat_copy": ("Repeat Copy", "rnn_repeat_copy"), "ptb": ("PTB", "rnn_ptb")}
# The opt-in suites of the claim at LSTM-256 on a 10000-step budget (report/rnn_claim.py): their runs have a
# section of their own and never enter the RNN table, whose cells are the main suites' schedules.
CLAIM_SUITES = {"rnn_copy_lstm256": "copy", "rnn_repeat_copy_lstm256": "repeat_copy"}
METHODS = {"bptt": ("BPTT", "bptt", [2, 3, 4, 5, 8]), "dni_bptt": ("DNI", "dni", [2, 3, 4, 5]),
           "dni_bptt_aux": ("DNI+Aux", "dni_aux", [2, 3, 4, 5])}
METRIC = {"copy": "metric.max_len_solved", "repeat_copy": "metric.max_len_solved", "ptb": "metric.test_bpc"}
COLOURS = {"bptt": "#000000", "dni_bptt": "#1f77b4", "dni_bptt_aux": "#2ca02c"}
MARKERS = {2: "o", 3: "s", 4: "^", 5: "D", 8: "v"}
MULTISCALE = {"bptt": "A waits for B's gradient (BPTT)", "dni_bptt": "DNI on the A->B message",
              "none": "A gets no gradient from B"}


def curriculum_level(task: str, length: float) -> float:
    """A length as its curriculum step, counted by the tasks' own Curriculum: Copy N = L - 3; Repeat Copy
    (1,1), (2,1), (2,2), (3,2), ... from 1; 0 for a run that solved nothing (length 0), as for a length
    below the first step. A length between two steps counts as the step below it (a run's longest
    length solved is always a step); NaN for a length that is not a number or not finite."""
    if not math.isfinite(length):
        return math.nan
    steps, curriculum = 0, Curriculum(repeat=task != "copy")
    while curriculum.length <= length:
        steps += 1
        curriculum.advance(0)
    return float(steps)


DISCOUNT_KEY = "param.method_args.target_discount"
SCALE_KEY = "param.method_args.synth_scale"
DNI_METHODS = ("dni_bptt", "dni_bptt_aux")


def target_discount(runs: pd.DataFrame) -> pd.Series:
    """Each recurrent DNI run's bootstrapped-target discount (NaN for BPTT). Runs logged before the
    discount was a setting of its own used the injection scale for it (one backward pass for both)."""
    out = pd.Series(np.nan, index=runs.index)
    dni = runs["method"].isin(DNI_METHODS)
    if DISCOUNT_KEY in runs:
        out[dni] = pd.to_numeric(runs.loc[dni, DISCOUNT_KEY], errors="coerce")
    if SCALE_KEY in runs:
        missing = dni & out.isna()
        out[missing] = pd.to_numeric(runs.loc[missing, SCALE_KEY], errors="coerce")
    return out


def default_discount() -> float:
    from ..methods import get_method
    return float(get_method("dni_bptt").Settings().target_discount)


def suite_discount(ctx: ReportContext, task: str, profile: str) -> float:
    """The bootstrapped-target discount of a task's main DNI runs at a profile: the default (the paper's)
    where its suite plans DNI runs with it, else the largest one the suite plans instead (rnn_ptb at smoke
    and quick, where the undiscounted target diverged: its departures say so)."""
    default = default_discount()
    suite = ctx.suites.get(TASKS[task][1])
    if suite is None:
        return default
    try:
        specs = plan(suite, profile)
    except DnibenchError:
        return default
    planned = {float(s.method_args["target_discount"]) for s in specs if s.method in DNI_METHODS}
    if not planned or any(np.isclose(d, default) for d in planned):
        return default
    return max(planned)


def main_reading(runs: pd.DataFrame, discounts: dict[str, float] | None = None) -> pd.DataFrame:
    """The runs the RNN table uses: BPTT, and DNI with the task's main discount (``discounts``, by task;
    default: the paper's undiscounted target); the default reading of the other conventions too (the
    Copy length)."""
    runs = conventions.default_reading(runs)
    discount = target_discount(runs)
    wanted = runs["task"].map(lambda task: (discounts or {}).get(task, default_discount())).astype(float)
    return runs[~runs["method"].isin(DNI_METHODS) | np.isclose(discount, wanted)]


def _readings_table(at: pd.DataFrame, tasks: tuple[str, ...], first: float) -> tuple[pd.DataFrame, list[float]]:
    """Per (task, method, T): the mean result over seeds under each discount run (``first`` leftmost)."""
    others = sorted(d for d in at.loc[at["task"].isin(tasks), "discount"].dropna().unique() if not np.isclose(d, first))
    rows = []
    for task in tasks:
        for (method, T), group in at[at["task"] == task].groupby(["method", "param.method_args.T"]):
            group, _ = latest_variant(group, ["discount"])
            row = {"task": TASKS[task][0], "method": METHODS[method][0], "T": T}
            for d in [first, *others]:
                values = group.loc[np.isclose(group["discount"], d), METRIC[task]].astype(float).tolist()
                mean, _, n = mean_ci(values)
                row[f"discount {d:g}"] = f"{_fmt(task, mean)} ({n} seed{'s' if n != 1 else ''})" if n else "·"
            rows.append(row)
    table = pd.DataFrame(rows)
    order = lambda c: c.astype(float) if c.name == "T" else c.map(str)    # noqa: E731  (T numerically: 2 before 10)
    return (table.sort_values(["task", "method", "T"], key=order) if rows else table), others


def discount_note(runs: pd.DataFrame, profile: str, discounts: dict[str, float] | None = None) -> list[str]:
    """Under the RNN table: which target discount its DNI numbers use (``discounts``: a task's main
    discount where it is not the default, suite_discount), and what every other discount run at this
    profile gave, cell by cell (mean over seeds): Copy and Repeat Copy, and PTB where it ran two."""
    dni = runs[(runs["profile"] == profile) & runs["method"].isin(DNI_METHODS)].copy()
    dni["discount"] = target_discount(dni)
    default = default_discount()
    lines = [f"DNI and DNI+Aux numbers use the bootstrapped target with discount {default:g} (the paper's "
             "equation: the true gradient in the window plus the next synthetic gradient back-propagated, "
             "undiscounted); the injected synthetic gradient is scaled by `synth_scale` separately."]
    moved = {task: d for task, d in (discounts or {}).items() if not np.isclose(d, default) and (dni["task"] == task).any()}
    if moved:
        lines.append("Except " + "; ".join(f"{TASKS[task][0]} at `{profile}`: discount {d:g} (the undiscounted target "
                                           "diverged there; the suite's departures give the numbers)"
                                           for task, d in moved.items()) + ".")
    out = []
    if (dni["task"] == "ptb").any():
        table, others = _readings_table(dni, ("ptb",), moved.get("ptb", default))
        if others:
            out = ["PTB test BPC under each reading of the bootstrapped target run at this profile:", "",
                   markdown_table(table), ""]
    at = dni[dni["task"].isin(["copy", "repeat_copy"])]
    if at.empty:
        return lines + [""] + out
    table, others = _readings_table(at, ("copy", "repeat_copy"), default)
    if not others:
        return lines + ["The other reading (discount = the injection scale) was not run at this profile.", ""] + out
    return lines + ["Longest length solved under each reading of the bootstrapped target (discount "
                    f"{', '.join(f'{d:g}' for d in others)}: a gradient from k windows ahead shrunk by that "
                    "factor to the power k):", "", markdown_table(table), ""] + out


RESET_KEY = "param.task_args.reset_state"


def episode_note(runs: pd.DataFrame) -> list[str]:
    """Under the RNN table: how Copy / Repeat Copy episodes follow each other in these runs (the
    paper is silent; dnibench/rnn/tasks.py). Runs logged before the setting existed ran on."""
    copy = runs[runs["task"] != "ptb"]
    if copy.empty:
        return []
    reset = copy.get(RESET_KEY, pd.Series("False", index=copy.index)).fillna("False").astype(str).str.lower() == "true"
    layouts = {False: "the LSTM state runs on from one episode into the next (task_args.reset_state false)",
               True: "the LSTM state is zeroed at each episode start (task_args.reset_state true: independent episodes)"}
    seen = sorted(set(reset))
    if len(seen) == 1:
        return [f"Copy / Repeat Copy episodes: {layouts[seen[0]]}.", ""]
    return [f"Copy / Repeat Copy episodes: both layouts among these runs ({reset.sum()} of {len(reset)} runs with "
            f"the state zeroed at each episode start, the others running on); the table does not separate them.", ""]


def published_cell(ctx: ReportContext, task: str, method: str, T: int) -> float | None:
    cell = ctx.published.get("rnn", {}).get(task, {}).get(METHODS[method][1], {})
    if "range" in cell:                                   # DNI+Aux PTB: "about 1.34-1.36" for every T
        return float(np.mean(cell["range"]))
    value = cell.get(T)
    return None if value is None else float(value)


def tolerance(ctx: ReportContext, task: str, method: str) -> float:
    """A cell's tolerance from the published yaml: curriculum steps for Copy / Repeat Copy, bits per
    character for PTB, widened by half the range where the paper gives a range (DNI+Aux on PTB)."""
    cfg = ctx.published.get("rnn", {}).get(task, {})
    key = "tolerance_bpc" if task == "ptb" else "tolerance_steps"
    if key not in cfg:
        raise DnibenchError(f"{PUBLISHED_PATH}: rnn.{task}.{key} is missing (the tolerance of its cells)")
    cell = cfg.get(METHODS[method][1], {})
    spread = (max(cell["range"]) - min(cell["range"])) / 2 if "range" in cell else 0.0
    return float(cfg[key]) + spread


def _single_seed(ctx: ReportContext, task: str, profile: str) -> str | None:
    return single_seed_note(getattr(ctx, "suites", {}).get(TASKS[task][1]), profile)


def _fmt(task: str, value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    if task == "ptb":
        return f"{value:.3f}"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"    # a mean over seeds may fall between


def cells(ctx: ReportContext, runs: pd.DataFrame, profile: str) -> pd.DataFrame:
    """One row per (task, method, T): measured mean ± CI over seeds, published, verdict."""
    rows = []
    for task, (label, _) in TASKS.items():
        here = runs[(runs["task"] == task) & (runs["profile"] == profile)]
        here, _ = latest_variant(here, ["model", "method", "param.method_args.T"])
        for method, (method_label, _, grid) in METHODS.items():
            for T in grid:
                at = here[(here["method"] == method) & (here["param.method_args.T"] == str(T))]
                values = at[METRIC[task]].astype(float).tolist() if METRIC[task] in at else []
                mean, half, n = mean_ci(values)
                published = published_cell(ctx, task, method, T)
                tol, single = tolerance(ctx, task, method), _single_seed(ctx, task, profile) is not None
                if task == "ptb":
                    v = verdict(mean, half, n, published, tol, comparable(at, profile), single)
                else:                                    # compare curriculum steps
                    level = [curriculum_level(task, x) for x in values]
                    lm, lh, _ = mean_ci(level)
                    v = verdict(lm, lh, n, None if published is None else curriculum_level(task, published),
                                tol, comparable(at, profile), single)
                rows.append({"task": label, "model": ", ".join(sorted(set(at["model"]))) or "", "method": method_label,
                             "T": T, "measured": _fmt(task, mean) if n else "", "ci95": _fmt(task, half) if n > 1 else "",
                             "seeds": n, "published": _fmt(task, published), "verdict": v if n else NO_RUNS})
    return pd.DataFrame(rows)


def ptb_paired(ctx: ReportContext, runs: pd.DataFrame, profile: str) -> pd.DataFrame:
    """The paper's PTB claim per T: DNI (and DNI+Aux) reach lower test BPC than BPTT at the same T,
    judged on the Welch 95% CI of the difference (verdict.lower_than), next to the published gap."""
    here = runs[(runs["task"] == "ptb") & (runs["profile"] == profile)]
    if here.empty:
        return pd.DataFrame()
    here, _ = latest_variant(here, ["model", "method", "param.method_args.T"])
    single = _single_seed(ctx, "ptb", profile) is not None

    def values(method: str, T: int) -> list[float]:
        at = here[(here["method"] == method) & (here["param.method_args.T"] == str(T))]
        return at[METRIC["ptb"]].astype(float).tolist() if METRIC["ptb"] in at else []

    rows = []
    for method in DNI_METHODS:
        label, tol = METHODS[method][0], tolerance(ctx, "ptb", "bptt")
        for T in METHODS[method][2]:
            mine, bptt = values(method, T), values("bptt", T)
            diff, half, n_mine, n_bptt = welch_ci(mine, bptt)
            state = lower_than(mine, bptt, tol, True, single)
            pair = here[(here["param.method_args.T"] == str(T)) & here["method"].isin([method, "bptt"])]
            reason = why_not_comparable(comparable(pair, profile))
            if reason and n_mine and n_bptt:
                state = f"{reason} (measured: {state})"
            pub_mine, pub_bptt = published_cell(ctx, "ptb", method, T), published_cell(ctx, "ptb", "bptt", T)
            measured = "" if not (n_mine and n_bptt) else f"{diff:+.3f}" + (f" ± {half:.3f}" if math.isfinite(half) else "")
            rows.append({"claim": f"{label} lower than BPTT at T={T}", "measured difference (BPC)": measured,
                         "seeds": f"{n_mine} vs {n_bptt}",
                         "published difference": "–" if None in (pub_mine, pub_bptt) else f"{pub_mine - pub_bptt:+.3f}",
                         "verdict": state})
    return pd.DataFrame(rows)


def paper_layout(table: pd.DataFrame) -> pd.DataFrame:
    """Rows Copy, Repeat Copy, PTB; a column per (method, T); cells 'measured (published)'."""
    out = []
    for task in dict.fromkeys(table["task"]):
        at = table[table["task"] == task]
        models = (m for cell in at["model"] for m in cell.split(", ") if m)       # a cell may hold several
        row = {"task": task, "model": ", ".join(dict.fromkeys(models))}
        for r in at.itertuples():
            row[f"{r.method} T={r.T}"] = f"{r.measured or '·'} ({r.published})"
        out.append(row)
    return pd.DataFrame(out)


def _efficiency_figure(runs: pd.DataFrame, profile: str) -> Figure | None:
    tasks = [t for t in ("copy", "repeat_copy") if ((runs["task"] == t) & (runs["profile"] == profile)).any()]
    if not tasks:
        return None
    fig = Figure(figsize=(5.2 * len(tasks), 4.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(tasks)))
    for ax, task in zip(axes, tasks):
        at = runs[(runs["task"] == task) & (runs["profile"] == profile)]
        keys = sorted([c for c in at.columns if c.startswith("metric.samples_at_len/")], key=lambda c: int(c.rsplit("/", 1)[1]))
        for (method, T), group in at.groupby(["method", "param.method_args.T"]):
            lengths = [int(k.rsplit("/", 1)[1]) for k in keys]
            samples = group[keys].astype(float).mean(axis=0).to_numpy() if keys else np.array([])
            solved = [(s, L) for s, L in zip(samples, lengths) if math.isfinite(s)]
            if not solved:
                continue
            xs, ys = zip(*solved)
            ax.step(xs, ys, where="post", color=COLOURS.get(method, "C7"), marker=MARKERS.get(int(T), "x"),
                    markersize=4, linewidth=1.3, linestyle="-" if method != "bptt" else "--",
                    label=f"{METHODS[method][0]} T={T}")
        ax.set_title(f"{TASKS[task][0]} ({profile}, {', '.join(sorted(set(at['model'])))})")
        ax.set_xlabel("samples (episodes) seen")
        ax.set_ylabel("length solved")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, ncol=2)
    return fig


def _history_frame(ctx: ReportContext, run_ids: list[str], key: str) -> pd.DataFrame:
    """key's history averaged over runs, with the training seconds at each step."""
    values, walls = {}, {}
    for run_id in run_ids:
        v = ctx.history(run_id, key).drop_duplicates("step", keep="last").set_index("step")["value"]
        w = ctx.history(run_id, "wall_s/train").drop_duplicates("step", keep="last").set_index("step")["value"]
        values[run_id], walls[run_id] = v, w.reindex(v.index)
    v, w = pd.DataFrame(values), pd.DataFrame(walls)
    return pd.DataFrame({"step": v.index, "wall_s": w.mean(axis=1).to_numpy(), "value": v.mean(axis=1).to_numpy()}).dropna()


def _ptb_figure(ctx: ReportContext, runs: pd.DataFrame) -> Figure | None:
    if runs.empty:
        return None
    Ts = sorted({int(t) for t in runs["param.method_args.T"]})
    fig = Figure(figsize=(3.0 * len(Ts), 5.4), layout="constrained")
    axes = np.array(fig.subplots(2, len(Ts), squeeze=False))
    for col, T in enumerate(Ts):
        at = runs[runs["param.method_args.T"] == str(T)]
        for method, group in at.groupby("method"):
            curve = _history_frame(ctx, group["run_id"].tolist(), "valid_bpc")
            for ax, x in zip(axes[:, col], ("step", "wall_s")):
                ax.plot(curve[x], curve["value"], color=COLOURS.get(method, "C7"), marker="o", markersize=2.5,
                        linewidth=1.3, label=METHODS.get(method, (method,))[0])
        axes[0, col].set_title(f"T = {T}")
        axes[0, col].set_xlabel("iterations")
        axes[1, col].set_xlabel("training wall-clock (s)")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("validation BPC")
    axes[1, 0].set_ylabel("validation BPC")
    axes[0, 0].legend(fontsize=7)
    return fig


def _multiscale_figure(ctx: ReportContext, runs: pd.DataFrame) -> Figure | None:
    if runs.empty:
        return None
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for key, group in runs.groupby("curve"):
        curve = _history_frame(ctx, group["run_id"].tolist(), "b_error")
        colour = {"none": "#7f7f7f"}.get(key, COLOURS.get(key, "C7"))
        for ax, x in zip(axes, ("step", "wall_s")):
            ax.plot(curve[x], curve["value"], color=colour, linewidth=1.4, label=f"{MULTISCALE[key]} ({len(group)} seed(s))")
    axes[0].set_xlabel("iterations (windows of T steps)")
    axes[1].set_xlabel("training wall-clock (s)")
    for ax in axes:
        ax.set_ylabel("B's error (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return fig


def render(ctx: ReportContext) -> Section | None:
    runs = ctx.runs
    if runs.empty or not runs["task"].isin([*TASKS, "multiscale"]).any():
        return None
    runs = runs[runs["task"].isin([*TASKS, "multiscale"]) & ~runs["suite"].isin(list(CLAIM_SUITES))].copy()
    if runs.empty:
        return None
    body, files = [], []
    ptb_tol = ctx.published.get("rnn", {}).get("ptb", {}).get("tolerance_bpc")
    tol_note = ("Verdicts only at the paper profile, on the distance of the mean from the published value "
                "(*inconclusive* when the 95% CI half-width exceeds the tolerance; one seed is *1 seed: "
                "inconclusive*); tolerance one curriculum step for Copy/Repeat Copy, "
                f"{ptb_tol} BPC for PTB (ours; reasons in the published yaml). Cells: measured (published); "
                "0 no length solved, '·' no run, '–' no published value.")
    for profile in PROFILES:
        at = runs[(runs["profile"] == profile) & runs["task"].isin(list(TASKS))]
        if at.empty:
            continue
        discounts = {task: suite_discount(ctx, task, profile) for task in TASKS}
        table = cells(ctx, main_reading(at, discounts), profile)
        files += ctx.write_table(paper_layout(table), f"rnn_table_{profile}")
        files += ctx.write_table(table, f"rnn_table_{profile}_cells")
        paired = ptb_paired(ctx, main_reading(at, discounts), profile)
        if not paired.empty:
            files += ctx.write_table(paired, f"rnn_ptb_paired_{profile}")
        body += [f"### RNN table at `{profile}`", "", "Copy and Repeat Copy: longest length solved (N+3, N*R+3); "
                 "PTB: test bits per character at the best-validation parameters. " + tol_note, "",
                 markdown_table(paper_layout(table)), ""]
        if profile == "paper":                  # elsewhere every cell would read "not comparable"
            run_cells = table[table["seeds"] > 0]
            body += ["Verdict per cell (Copy / Repeat Copy judged in curriculum steps; ci95 on the raw values):",
                     "", markdown_table(run_cells), ""]
        notes = [_single_seed(ctx, task, profile) for task in TASKS if (at["task"] == task).any()]
        body += [f"- {note}" for note in dict.fromkeys(n for n in notes if n)]
        if not paired.empty:
            body += [f"PTB, the paper's paired claim at `{profile}`: DNI (and DNI+Aux) reach lower test BPC than BPTT "
                     "at the same T. Measured difference: mean(DNI) − mean(BPTT) ± the Welch 95% CI; *holds* when the "
                     "whole CI is below 0, *does not hold* when it is at or above 0 or narrower than the tolerance "
                     f"({ptb_tol} BPC) around a difference it cannot resolve, *inconclusive* otherwise.", "",
                     markdown_table(paired), ""]
        if profile != "paper" and at["task"].isin(list(CLAIM_SUITES.values())).any():
            claimed = ctx.runs["suite"].isin(list(CLAIM_SUITES)).any()
            body += [f"- Copy and Repeat Copy at the paper's LSTM-256 (BPTT against DNI at T = 3, 4, 5, 10000 steps): the "
                     f"opt-in suites {', '.join(f'`suites/{s}.yaml`' for s in CLAIM_SUITES)}, "
                     + ("in their own section below." if claimed else "not run in this store."), ""]
        body += discount_note(at, profile, discounts)
        body += episode_note(at)
        body += conventions.notes(ctx.published, "rnn") + [""]
        body += conventions.other_readings(at[at["task"] != "ptb"], "metric.max_len_solved", "longest length solved")
        for task, (label, suite_name) in TASKS.items():
            suite = ctx.suites.get(suite_name)
            if suite is not None and ((at["task"] == task).any()):
                deps = suite.profiles[profile].departures
                if deps:
                    body.append(f"- {label} at `{profile}` departs from the paper: " + "; ".join(deps))
                for reason in dict.fromkeys(s["reason"] for s in skipped_entries(suite, profile)):
                    body.append(f"- {label}: entries left out at `{profile}`: {reason}")
        body.append("")
        fig = _efficiency_figure(main_reading(at, discounts), profile)
        if fig is not None:
            paths = ctx.save_figure(fig, f"rnn_data_efficiency_{profile}")
            files += paths
            body += [f"Data efficiency at `{profile}`: samples (episodes) seen when each length was first solved "
                     "(mean over the seeds that reached it; a run that solved no length has no line).", "",
                     f"![data efficiency]({paths[0].name})", ""]
        fig = _ptb_figure(ctx, main_reading(at[at["task"] == "ptb"], discounts))
        if fig is not None:
            paths = ctx.save_figure(fig, f"rnn_ptb_curves_{profile}")
            files += paths
            body += [f"PTB validation BPC per T at `{profile}`, against iterations (top) and training wall-clock "
                     "(bottom; one window of T characters per stream is one iteration).", "",
                     f"![PTB learning curves]({paths[0].name})", ""]
    ms = runs[runs["task"] == "multiscale"].copy()
    if not ms.empty:
        cut = ms.get("param.task_args.message_gradient", pd.Series("method", index=ms.index)) == "none"
        ms["curve"] = np.where(cut, "none", ms["method"])
        ms, _ = latest_variant(ms, ["profile", "curve"])       # a since-edited suite: each curve's latest configuration
        for profile in PROFILES:
            here = ms[ms["profile"] == profile]
            fig = _multiscale_figure(ctx, here)
            if fig is None:
                continue
            paths = ctx.save_figure(fig, f"rnn_multiscale_{profile}")
            files += paths
            final = here.groupby("curve")["metric.final_b_error"].apply(lambda v: mean_ci(v.astype(float).tolist()))
            summary = pd.DataFrame([{"A learns from B": MULTISCALE[k], "final B error %": f"{m:.1f}", "seeds": n}
                                    for k, (m, _, n) in final.items()])
            body += [f"### Two-timescale system at `{profile}`", "",
                     "Our concrete task (the paper leaves it unspecified here; see suites/rnn_multiscale.yaml): B reads "
                     "A's message every T steps and counts the odd digits of the last T. In this single-process run "
                     "'waiting' costs A no iterations; the wall-clock panel shows what each way costs to compute. At one seed "
                     "every way starts A, its message and B from the same weights (task_args.paired_init).", "",
                     markdown_table(summary), "", f"![two-timescale curves]({paths[0].name})", ""]
    return Section("Recurrent DNI: Copy, Repeat Copy, Penn Treebank, two-timescale system (paper §3.2)",
                   "\n".join(body), files)
