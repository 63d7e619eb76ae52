"""Table 1 of the paper (arXiv v1): test error of FCN-3..6 and CNN-3..4 on MNIST and CIFAR-10 with
No Bprop, Bprop, DNI and cDNI, measured (mean ± 95% CI over seeds) next to the published value,
one table per profile that has runs.

Only the paper profile runs the paper's setup, so only its cells get a verdict against the paper.
The smoke and quick profiles get a pattern check instead: is No Bprop the worst at every depth,
and do DNI and cDNI close at least half of the gap from No Bprop down to Bprop (what shows that the
synthetic gradients teach the lower layers, paper §3.1)?
"""
from __future__ import annotations

import math

import pandas as pd

from . import Section, conventions
from .context import ReportContext, display_name, latest_variant, markdown_table
from .data_used import comparable
from .verdict import NO_DATA, NO_RUNS, mean_ci, single_seed_note, verdict
from ..suite import PROFILES, skipped_entries

# The suites that reproduce Table 1, by task. Other suites on the same data (p_update sweeps,
# complete unlock) change other settings, so their runs must not land in these cells.
TABLE1_SUITES = {"mnist": "mnist_ff", "cifar10": "cifar10_ff"}
DATASET_NAMES = {"mnist": "MNIST", "cifar10": "CIFAR-10"}
METRIC = "metric.final_test_error"
LEFT_OUT = "left out at this profile"


def _fmt(value: float, digits: int = 2) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _measured_text(mean: float, half: float, n: int) -> str:
    if n == 1:
        return f"{mean:.2f} (1 seed)"
    return f"{mean:.2f} ± {half:.2f} ({n} seeds)"


def cells(ctx: ReportContext, runs: pd.DataFrame, profile: str) -> tuple[pd.DataFrame, list[str]]:
    """One row per (dataset, model, method) at a profile: measured mean, CI, seeds, published value,
    verdict. Also returns notes for the section (skip reasons, superseded runs)."""
    table1 = ctx.published["table1"]
    tolerance = ctx.published["tolerance_points"]
    methods = table1["methods"]
    rows, notes = [], []
    for dataset, suite_name in TABLE1_SUITES.items():
        here = runs[(runs["task"] == dataset) & (runs["profile"] == profile)]
        here, dropped = latest_variant(here, ["model", "method"])
        if dropped:
            notes.append(f"{DATASET_NAMES[dataset]}: {dropped} older run(s) with a since-changed configuration "
                         "are not counted (each cell uses the configuration run last).")
        suite = ctx.suites.get(suite_name)
        skipped = {(s["model"], s["method"]): s["reason"] for s in skipped_entries(suite, profile)} if suite else {}
        if not here.empty and single_seed_note(suite, profile):
            notes.append(f"{DATASET_NAMES[dataset]}: {single_seed_note(suite, profile)}")
        for reason in dict.fromkeys(skipped.values()):
            models = sorted({display_name(m) for (m, _), r in skipped.items() if r == reason})
            notes.append(f"{DATASET_NAMES[dataset]} {', '.join(models)} left out at `{profile}`: {reason}")
        published = table1.get(dataset, {})
        models = list(published) + sorted(set(here["model"]) - set(published))
        for model in models:
            for method in methods:
                runs_cell = here[(here["model"] == model) & (here["method"] == method)]
                mean, half, n = mean_ci(runs_cell[METRIC].tolist() if METRIC in runs_cell else [])
                pub = published.get(model, {}).get(method, math.nan)
                if n:
                    state = verdict(mean, half, n, pub, tolerance, comparable=comparable(runs_cell, profile),
                                    single_seed=single_seed_note(suite, profile) is not None)
                elif here.empty and dataset == "cifar10":
                    state = NO_DATA            # CIFAR-10 cannot be fetched here; the user supplies it
                elif (model, method) in skipped:
                    state = LEFT_OUT
                else:
                    state = NO_RUNS
                rows.append({"dataset": dataset, "model": model, "method": method, "measured_mean": mean,
                             "ci95_halfwidth": half, "seeds": n, "published": pub, "verdict": state,
                             "measured": _measured_text(mean, half, n) if n else state})
    return pd.DataFrame(rows), notes


def wide(cell_rows: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    """Rows models, columns methods; each method gets measured, paper and verdict columns."""
    out = []
    for (dataset, model), group in cell_rows.groupby(["dataset", "model"], sort=False):
        row = {"Dataset": DATASET_NAMES[dataset], "Model": display_name(model)}
        by_method = group.set_index("method")
        for method in methods:
            name = display_name(method)
            row[name] = by_method.at[method, "measured"]
            row[f"{name} paper"] = _fmt(by_method.at[method, "published"], 1)
            row[f"{name} verdict"] = by_method.at[method, "verdict"]
        out.append(row)
    return pd.DataFrame(out)


def _far_below(method: str, value: float, nobprop: float, bprop: float) -> tuple[str, str]:
    """(evidence, yes/no): does `method` close at least half the gap from No Bprop to Bprop?"""
    name = display_name(method)
    if nobprop <= bprop:
        return f"No Bprop {nobprop:.2f} is not above Bprop {bprop:.2f}: no gap to close", "no"
    halfway = (nobprop + bprop) / 2
    evidence = f"{name} {value:.2f} vs halfway {halfway:.2f} (No Bprop {nobprop:.2f}, Bprop {bprop:.2f})"
    return evidence, "yes" if value <= halfway else "no"


def _checks(means: dict[str, float]) -> list[tuple[str, str, str]]:
    """(check, evidence, yes/no) for one depth, from mean test errors per method."""
    if not (math.isfinite(means.get("nobprop", math.nan)) and math.isfinite(means.get("bprop", math.nan))):
        return []
    others = {m: v for m, v in means.items() if m != "nobprop" and math.isfinite(v)}
    listing = ", ".join(f"{display_name(m)} {v:.2f}" for m, v in others.items())
    worst = all(means["nobprop"] > v for v in others.values())
    out = [("No Bprop is the worst", f"No Bprop {means['nobprop']:.2f} vs {listing}", "yes" if worst else "no")]
    for method in ("dni", "cdni"):
        if math.isfinite(means.get(method, math.nan)):
            out.append((f"{display_name(method)} far below No Bprop",
                        *_far_below(method, means[method], means["nobprop"], means["bprop"])))
    return out


def pattern(cell_rows: pd.DataFrame, published: dict) -> pd.DataFrame:
    """The paper's qualitative pattern per depth, measured, with the same check on the published numbers."""
    rows = []
    for (dataset, model), group in cell_rows.groupby(["dataset", "model"], sort=False):
        means = dict(zip(group["method"], group["measured_mean"]))
        paper = {c: holds for c, _, holds in _checks(published.get(dataset, {}).get(model, {}))}
        for check, evidence, holds in _checks(means):
            rows.append({"Dataset": DATASET_NAMES[dataset], "Model": display_name(model), "Check": check,
                         "Measured (mean test error %)": evidence, "Holds": holds, "Paper": paper.get(check, "")})
    return pd.DataFrame(rows, columns=["Dataset", "Model", "Check", "Measured (mean test error %)", "Holds", "Paper"])


def _profile_text(ctx: ReportContext, runs: pd.DataFrame, profile: str) -> list[str]:
    lines = []
    for suite_name in sorted(set(runs["suite"])):
        suite = ctx.suites.get(suite_name)
        if suite is None:
            lines.append(f"Suite `{suite_name}`: its file is not in the suites folder, so its departures are unknown.")
            continue
        prof = suite.profiles[profile]
        lines.append(f"Suite `{suite_name}` at `{profile}`: {prof.description or 'no description'}.")
        if prof.departures:
            lines.append("Departures from the paper's setup:")
            lines += [f"- {d}" for d in prof.departures]
        elif profile != "paper":
            lines.append("The suite lists no departures for this profile.")
    lines.append("")
    return lines


def render(ctx: ReportContext) -> Section | None:
    table1 = ctx.published["table1"]
    runs = ctx.runs
    runs = runs[runs["suite"].isin(TABLE1_SUITES.values()) & runs["task"].isin(TABLE1_SUITES)
                & runs["method"].isin(table1["methods"])]
    if runs.empty:
        return None
    every_reading, runs = runs, conventions.default_reading(runs)     # the cells: the default conventions only
    body = [f"Test error (%) at the last step: measured mean ± 95% CI over seeds (Student's t), next to the "
            f"paper's value ({ctx.published['status']}). A cell is judged on the distance of the mean from the "
            f"published value, with tolerance τ = {ctx.published['tolerance_points']} points: *outside* when even "
            "the CI's nearest end is more than τ away; *inconclusive* (with about how many seeds would settle it) "
            "when the CI half-width exceeds τ, i.e. the seeds disagree by more than the tolerance; otherwise "
            "*within tolerance* when the mean is within τ, else *outside*. One seed is *1 seed: inconclusive* "
            "unless the suite's profile is declared single-seed. Only the `paper` profile runs the paper's "
            "setup, so the others are *not comparable* cell by cell and get the pattern check instead.", ""]
    files = []
    for profile in [p for p in PROFILES if p in set(runs["profile"])]:
        at = runs[runs["profile"] == profile]
        cell_rows, notes = cells(ctx, at, profile)
        table = wide(cell_rows, table1["methods"])
        files += ctx.write_table(table, f"table1_{profile}")
        numeric = cell_rows.drop(columns="measured")
        numeric.to_csv(ctx.path(f"table1_{profile}_cells.csv"), index=False)
        files.append(ctx.path(f"table1_{profile}_cells.csv"))
        checks = pattern(cell_rows, table1)
        body += [f"### Profile `{profile}`", "", *_profile_text(ctx, at, profile), markdown_table(table)]
        body += [f"- {note}" for note in notes] + ([""] if notes else [])
        body += conventions.notes(ctx.published, "table1") + [""]
        body += conventions.other_readings(every_reading[every_reading["profile"] == profile], METRIC,
                                           "test error (%)")
        if not checks.empty:
            files += ctx.write_table(checks, f"table1_{profile}_pattern")
            held = (checks["Holds"] == "yes").sum()
            body += ["Pattern (the paper's claim: No Bprop clearly worst at every depth, DNI and cDNI far below "
                     "it, where *far* means at least halfway from No Bprop's error down to Bprop's): "
                     f"**{held} of {len(checks)} checks hold** at `{profile}`.", "", markdown_table(checks)]
    return Section(title="Table 1: feed-forward test error (MNIST, CIFAR-10)", body="\n".join(body), files=files)
