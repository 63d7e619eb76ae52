"""The RNN table's verdicts at the paper profile, against the published cells (no training)."""
import copy
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from dnibench.errors import DnibenchError
from dnibench.report import rnn as rnn_report
from dnibench.report.context import load_published
from dnibench.report.rnn import cells, curriculum_level, paper_layout, ptb_paired
from dnibench.rnn.tasks import Curriculum
from dnibench.suite import load_suite
from report_fixtures import capture_figures, report_context


def fake_runs(rows):
    return pd.DataFrame([{"run_id": f"r{i}", "profile": "paper", "model": "lstm256", "start_time": i, "variant": "v",
                          **row} for i, row in enumerate(rows)])


def seeds(task, method, T, values):
    key = "metric.test_bpc" if task == "ptb" else "metric.max_len_solved"
    return [{"task": task, "method": method, "param.method_args.T": str(T), key: v} for v in values]


def test_paper_profile_verdicts():
    ctx = SimpleNamespace(published=load_published())
    runs = fake_runs([
        *seeds("copy", "dni_bptt", 2, [16, 16, 16, 17, 17]),       # levels 13.4 ± 0.68 vs 13: within one step
        *seeds("copy", "dni_bptt", 3, [14, 17]),                   # levels 12.5 ± 19 vs 11: inconclusive
        *seeds("copy", "bptt", 3, [12, 12, 13]),                   # levels 9.3 ± 1.4 vs 5: outside despite the CI
        *seeds("repeat_copy", "dni_bptt_aux", 4, [59, 59, 59]),    # 59 vs 67: one curriculum step
        *seeds("repeat_copy", "dni_bptt_aux", 3, [39]),            # one seed
        *seeds("ptb", "bptt", 8, [1.349, 1.351, 1.350]),           # 1.350 ± 0.0025 vs 1.35
        *seeds("ptb", "dni_bptt", 2, [1.375, 1.385]),              # ± 0.064: far wider than 0.005
        *seeds("ptb", "dni_bptt_aux", 2, [1.39, 1.391, 1.389]),    # vs 1.34-1.36 (1.35 ± 0.015)
    ])
    table = cells(ctx, runs, "paper").set_index(["task", "method", "T"])
    verdict = lambda *cell: table.loc[cell, "verdict"]  # noqa: E731
    assert table.loc[("Copy", "DNI", 2), "measured"] == "16.4" and table.loc[("Copy", "DNI", 2), "seeds"] == 5
    assert verdict("Copy", "DNI", 2) == "within tolerance"
    assert verdict("Copy", "DNI", 3).startswith("inconclusive (CI ±")
    assert verdict("Copy", "BPTT", 3) == "outside"
    assert verdict("Repeat Copy", "DNI+Aux", 4) == "within tolerance"
    assert verdict("Repeat Copy", "DNI+Aux", 3) == "1 seed: inconclusive"
    assert verdict("PTB", "BPTT", 8) == "within tolerance"
    assert verdict("PTB", "DNI", 2) == "inconclusive (CI ±0.0635 > tolerance 0.005; about 11 seeds needed)"
    assert verdict("PTB", "DNI+Aux", 2) == "outside"
    assert table.loc[("Copy", "BPTT", 8), "published"] == "–" and verdict("PTB", "DNI", 5) == "no runs"
    wide = paper_layout(table.reset_index())
    assert list(wide["task"]) == ["Copy", "Repeat Copy", "PTB"] and wide.loc[0, "DNI T=2"] == "16.4 (16)"
    assert cells(ctx, runs.assign(profile="quick"), "quick").set_index(["task", "method", "T"]).loc[
        ("Copy", "DNI", 2), "verdict"] == "not comparable at this profile"
    # PTB runs on a shortened corpus (their data tags): no verdict on them; Copy generates its data and is judged
    small = runs.assign(**{"data.source": "elsewhere", "data.train": "1000", "data.test": "100"})
    table = cells(ctx, small, "paper").set_index(["task", "method", "T"])
    assert table.loc[("PTB", "BPTT", 8), "verdict"] == "not comparable: trained on less than the full data set"
    assert table.loc[("Copy", "DNI", 2), "verdict"] == "within tolerance"


def test_ptb_tolerance_tells_the_published_columns_apart():
    """Published BPTT and DNI at the same T are 0.02 BPC apart: as measurements they must not both pass."""
    published = load_published()["rnn"]["ptb"]
    ctx = SimpleNamespace(published=load_published())
    for T, dni in published["dni"].items():
        runs = fake_runs(seeds("ptb", "dni_bptt", T, [dni] * 3) + seeds("ptb", "bptt", T, [dni] * 3))
        table = cells(ctx, runs, "paper").set_index(["task", "method", "T"])
        assert table.loc[("PTB", "DNI", T), "verdict"] == "within tolerance"
        assert table.loc[("PTB", "BPTT", T), "verdict"] == "outside", T    # DNI's number is not BPTT's


def test_ptb_paired_claim_dni_lower_than_bptt():
    ctx = SimpleNamespace(published=load_published())
    runs = fake_runs([
        *seeds("ptb", "bptt", 2, [1.39, 1.36]), *seeds("ptb", "dni_bptt", 2, [1.375, 1.385]),
        *seeds("ptb", "bptt", 3, [1.380, 1.381, 1.379]), *seeds("ptb", "dni_bptt", 3, [1.360, 1.361, 1.359]),
        *seeds("ptb", "bptt", 4, [1.370, 1.371, 1.369]), *seeds("ptb", "dni_bptt", 4, [1.3705, 1.3695, 1.370]),
        *seeds("ptb", "bptt", 5, [1.370, 1.371, 1.369]), *seeds("ptb", "dni_bptt", 5, [1.40, 1.401, 1.399]),
    ])
    paired = ptb_paired(ctx, runs, "paper").set_index("claim")
    assert paired.at["DNI lower than BPTT at T=2", "verdict"].startswith("inconclusive")
    assert paired.at["DNI lower than BPTT at T=3", "verdict"] == "holds"
    assert paired.at["DNI lower than BPTT at T=3", "measured difference (BPC)"] == "-0.020 ± 0.002"   # Welch: t(4) * sqrt(2e-6 / 3)
    assert paired.at["DNI lower than BPTT at T=3", "published difference"] == "-0.020"
    assert paired.at["DNI lower than BPTT at T=4", "verdict"].startswith("does not hold (no difference beyond")
    assert paired.at["DNI lower than BPTT at T=5", "verdict"] == "does not hold"
    assert paired.at["DNI+Aux lower than BPTT at T=2", "verdict"] == "no runs"
    quick = ptb_paired(ctx, runs.assign(profile="quick"), "quick").set_index("claim")
    assert quick.at["DNI lower than BPTT at T=3", "verdict"] == "not comparable at this profile (measured: holds)"
    small = runs.assign(**{"data.source": "elsewhere", "data.train": "1000", "data.test": "100"})
    assert ptb_paired(ctx, small, "paper").set_index("claim").at["DNI lower than BPTT at T=3", "verdict"] == (
        "not comparable: trained on less than the full data set (measured: holds)")


def test_curriculum_level_counts_the_tasks_own_steps():
    # Repeat Copy's (N, R): (1,1) (2,1) (2,2) (3,2) (3,3) ... as lengths N*R + 3, written out
    assert [curriculum_level("repeat_copy", L) for L in (4, 5, 7, 9, 12, 15, 19)] == [1, 2, 3, 4, 5, 6, 7]
    assert curriculum_level("repeat_copy", 67) == 15                    # (8, 8): the paper's longest
    assert [curriculum_level("copy", L) for L in (4, 5, 16)] == [1, 2, 13]
    for task in ("copy", "repeat_copy"):                               # nothing solved, or below the first step
        assert curriculum_level(task, 0) == 0 and curriculum_level(task, 3) == 0
    assert curriculum_level("repeat_copy", 6) == 2 and curriculum_level("repeat_copy", 8) == 3    # the step below
    assert math.isnan(curriculum_level("copy", math.inf)) and math.isnan(curriculum_level("repeat_copy", math.nan))
    curriculum = Curriculum(repeat=True)                               # the same steps the task trains through
    for step in range(1, 30):
        assert curriculum_level("repeat_copy", curriculum.length) == step
        curriculum.advance(0)


def dni_row(task, method, discount=None, scale=None, **extra):
    row = {"task": task, "method": method, **extra}
    if discount is not None:
        row["param.method_args.target_discount"] = discount
    if scale is not None:
        row["param.method_args.synth_scale"] = scale
    return row


def test_target_discount_per_run_with_the_older_runs_reading():
    runs = pd.DataFrame([dni_row("copy", "bptt", scale="0.1"),               # BPTT: no discount, whatever it logged
                         dni_row("copy", "dni_bptt", "0.5", "0.1"),          # the discount logged
                         dni_row("copy", "dni_bptt_aux", None, "0.1"),       # logged before the setting: the scale
                         dni_row("copy", "dni_bptt", "1.0"),
                         dni_row("copy", "dni_bptt"),                        # neither
                         dni_row("copy", "dni_bptt", "oops", "0.3"),         # unreadable: the scale, not an error
                         dni_row("copy", "dni_bptt", None, "oops")])         # nothing readable: NaN, not an error
    out = rnn_report.target_discount(runs)
    assert out.index.equals(runs.index)
    assert math.isnan(out[0]) and out[1] == 0.5 and out[2] == 0.1 and out[3] == 1.0 and math.isnan(out[4])
    assert out[5] == 0.3 and math.isnan(out[6]) and out.dtype == float
    only_scale = rnn_report.target_discount(runs.drop(columns="param.method_args.target_discount"))
    assert only_scale[1] == 0.1 and math.isnan(only_scale[3]) and math.isnan(only_scale[0])
    assert rnn_report.target_discount(runs[["task", "method"]]).isna().all()
    assert rnn_report.default_discount() == 1.0                            # the paper's undiscounted equation


def test_main_reading_keeps_bptt_and_each_tasks_main_discount():
    runs = pd.DataFrame([dni_row("copy", "bptt"), dni_row("copy", "dni_bptt", "1.0"), dni_row("copy", "dni_bptt", "0.1"),
                         dni_row("ptb", "bptt"), dni_row("ptb", "dni_bptt", "1.0"), dni_row("ptb", "dni_bptt_aux", "0.1"),
                         dni_row("ptb", "dni_bptt_aux", None, "0.1")])
    kept = rnn_report.main_reading(runs)                                   # default: the paper's discount everywhere
    assert list(kept.index) == [0, 1, 3, 4]
    kept = rnn_report.main_reading(runs, {"ptb": 0.1})                     # PTB's suite runs 0.1; Copy keeps the default
    assert list(kept.index) == [0, 1, 3, 5, 6]
    lengths = pd.DataFrame([dni_row("copy", "bptt", **{"param.task_args.length_counts": counts}) for counts in ("N", None)])
    assert list(rnn_report.main_reading(lengths).index) == [1]             # the Copy length's default (not logged) only


def suite_file(tmp_path, discounts, name="rnn_copy", dni=True):
    entries = ["  - {model: lstm64, method: bptt, sweep: {T: [2]}}"]
    if dni:
        entries.append(f"  - {{model: lstm64, method: [dni_bptt, dni_bptt_aux], sweep: {{T: [2], target_discount: {discounts}}}, "
                       "profiles: [quick]}")
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\ntask: copy\ntrain: {{steps: 10, batch_size: 8, lr: 1.0e-3}}\n"
                    "profiles: {smoke: {}, quick: {}, paper: {}}\nentries:\n" + "\n".join(entries) + "\n")
    return load_suite(path)


def test_suite_discount_is_the_default_where_planned_else_the_largest_planned(tmp_path):
    def discount(suite, profile="quick", task="copy"):
        return rnn_report.suite_discount(SimpleNamespace(suites={} if suite is None else {suite.name: suite}), task, profile)

    assert discount(None) == 1.0                                           # no suite file: the paper's
    assert discount(suite_file(tmp_path, [0.1, 0.5])) == 0.5               # not the first, not the smallest
    assert discount(suite_file(tmp_path, [0.5, 0.1])) == 0.5
    assert discount(suite_file(tmp_path, [0.1, 1.0, 0.5])) == 1.0          # the default planned: the default
    assert discount(suite_file(tmp_path, [0.1]), profile="smoke") == 1.0   # no DNI planned at smoke
    assert discount(suite_file(tmp_path, [0.1], dni=False)) == 1.0
    assert discount(suite_file(tmp_path, [0.1]), profile="nonesuch") == 1.0    # a profile the suite refuses
    assert discount(suite_file(tmp_path, [0.1]), task="ptb") == 1.0        # another task's suite is not read
    assert discount(suite_file(tmp_path, [0.1], name="rnn_ptb"), task="ptb") == 0.1


def reading_run(task, method, T, value, discount=None, scale=None, profile="quick", variant="v", start=0):
    key = "metric.test_bpc" if task == "ptb" else "metric.max_len_solved"
    return {"task": task, "method": method, "profile": profile, "param.method_args.T": str(T), key: value,
            "variant": variant, "start_time": start, **dni_row(task, method, discount, scale)}


def test_discount_note_tables_every_reading_run_at_the_profile():
    runs = pd.DataFrame([
        reading_run("copy", "bptt", 2, 6),                                              # BPTT: no reading of its own
        reading_run("copy", "dni_bptt", 2, 11, "1.0"), reading_run("copy", "dni_bptt", 2, 9, "1.0"),
        reading_run("copy", "dni_bptt", 2, 30, "1.0", variant="old", start=-1),          # an older configuration: left out
        reading_run("copy", "dni_bptt", 2, 7, "0.1"), reading_run("copy", "dni_bptt", 2, 8, "0.5"),
        reading_run("copy", "dni_bptt", 10, 5, "1.0"),
        reading_run("repeat_copy", "dni_bptt_aux", 3, 12, None, "0.1"),                  # logged before the split
        reading_run("copy", "dni_bptt", 3, 30, "0.3", profile="paper"),                  # another profile
        reading_run("ptb", "dni_bptt", 2, 2.4567, "0.1"), reading_run("ptb", "dni_bptt", 2, 2.5, "1.0")])
    def note(frame, discounts=None, profile="quick"):
        return "\n".join(rnn_report.discount_note(frame, profile, discounts)).split("\n")   # tables as their lines

    lines = note(runs, {"ptb": 0.1, "copy": 1.0})
    assert lines[0].startswith("DNI and DNI+Aux numbers use the bootstrapped target with discount 1 (the paper's")
    assert lines[1] == ("Except PTB at `quick`: discount 0.1 (the undiscounted target diverged there; the suite's "
                        "departures give the numbers).")
    assert lines[2].startswith("Longest length solved under each reading of the bootstrapped target (discount 0.1, 0.5:")
    copy = lines[lines.index("| task | method | T | discount 1 | discount 0.1 | discount 0.5 |"):]
    assert copy[2:5] == ["| Copy | DNI | 2 | 10 (2 seeds) | 7 (1 seed) | 8 (1 seed) |",
                         "| Copy | DNI | 10 | 5 (1 seed) | · | · |",
                         "| Repeat Copy | DNI+Aux | 3 | · | 12 (1 seed) | · |"]
    assert "PTB test BPC under each reading of the bootstrapped target run at this profile:" in lines
    ptb = lines[lines.index("| task | method | T | discount 0.1 | discount 1 |"):]     # PTB's main reading first
    assert ptb[2] == "| PTB | DNI | 2 | 2.457 (1 seed) | 2.500 (1 seed) |"
    assert not any("0.3" in line for line in lines)
    both = note(runs, {"ptb": 0.1, "copy": 0.5})
    assert both[1] == ("Except PTB at `quick`: discount 0.1 (the undiscounted target diverged there; the suite's departures "
                       "give the numbers); Copy at `quick`: discount 0.5 (the undiscounted target diverged there; the "
                       "suite's departures give the numbers).")

    alone = note(runs[runs["task"] == "ptb"])       # PTB at the default: 1 first
    assert "| PTB | DNI | 2 | 2.500 (1 seed) | 2.457 (1 seed) |" in alone and not any(l.startswith("Except") for l in alone)
    one = note(runs[(runs["task"] == "copy") & (runs["profile"] == "quick")
                    & (runs["param.method_args.target_discount"] == "1.0")], {"copy": 0.1})
    assert one[1:] == ["Except Copy at `quick`: discount 0.1 (the undiscounted target diverged there; the suite's "
                       "departures give the numbers).",
                       "The other reading (discount = the injection scale) was not run at this profile.", ""]
    assert note(runs[runs["task"] == "copy"], {"copy": 0.1}, "smoke")[1:] == [""]     # no DNI at smoke: nothing moved


def test_episode_note_names_the_layout_or_the_mix():
    def note(*resets):
        return rnn_report.episode_note(pd.DataFrame([{"task": "copy", RESET: r} for r in resets]
                                                    + [{"task": "ptb", RESET: "True"}]))
    RESET = "param.task_args.reset_state"
    assert note(None, None) == ["Copy / Repeat Copy episodes: the LSTM state runs on from one episode into the next "
                                "(task_args.reset_state false).", ""]
    assert note("True", "true") == ["Copy / Repeat Copy episodes: the LSTM state is zeroed at each episode start "
                                    "(task_args.reset_state true: independent episodes).", ""]
    assert note("True", None, "False")[0] == ("Copy / Repeat Copy episodes: both layouts among these runs (1 of 3 runs "
                                              "with the state zeroed at each episode start, the others running on); "
                                              "the table does not separate them.")
    assert rnn_report.episode_note(pd.DataFrame([{"task": "copy"}])) == note(None)           # never logged: ran on
    assert rnn_report.episode_note(pd.DataFrame([{"task": "ptb", RESET: "True"}])) == []      # PTB has no episodes


def test_published_cell_and_tolerance_read_the_published_yaml():
    ctx = SimpleNamespace(published=load_published())
    assert rnn_report.published_cell(ctx, "repeat_copy", "dni_bptt_aux", 4) == 67
    assert rnn_report.published_cell(ctx, "ptb", "dni_bptt_aux", 3) == 1.35        # "about 1.34-1.36": the middle
    assert rnn_report.published_cell(ctx, "copy", "bptt", 8) is None               # the paper's table leaves it empty
    assert rnn_report.published_cell(ctx, "copy", "dni_bptt", 8) is None           # not in the paper's grid
    for partial in ({}, {"rnn": {}}, {"rnn": {"copy": {}}}):                        # a published file without the cell
        assert rnn_report.published_cell(SimpleNamespace(published=partial), "copy", "dni_bptt", 2) is None
    assert rnn_report.tolerance(ctx, "copy", "dni_bptt") == 1 and rnn_report.tolerance(ctx, "ptb", "bptt") == 0.005
    assert math.isclose(rnn_report.tolerance(ctx, "ptb", "dni_bptt_aux"), 0.015)   # widened by half the range
    with pytest.raises(DnibenchError, match=r"jaderberg2016.yaml: rnn\.ptb\.tolerance_bpc is missing \(the tolerance of its cells\)$"):
        rnn_report.tolerance(SimpleNamespace(published={"rnn": {"ptb": {"tolerance_steps": 1}}}), "ptb", "bptt")
    for partial in ({}, {"rnn": {}}):
        with pytest.raises(DnibenchError, match=r"rnn\.copy\.tolerance_steps is missing"):
            rnn_report.tolerance(SimpleNamespace(published=partial), "copy", "bptt")
    assert rnn_report.tolerance(SimpleNamespace(published={"rnn": {"copy": {"tolerance_steps": 2}}}), "copy", "dni_bptt") == 2


def with_histories(ctx, histories):
    """Give a report context metric histories without a store: {(run_id, key): [(step, value), ...]}."""
    for key, points in histories.items():
        ctx._histories[key] = pd.DataFrame([(s, v, 0) for s, v in points], columns=["step", "value", "timestamp"])
    return ctx


def test_history_frame_averages_runs_step_by_step_with_their_clock(tmp_path):
    ctx = with_histories(report_context(tmp_path, [{"task": "ptb"}, {"task": "ptb"}]), {
        ("r0", "valid_bpc"): [(5, 2.0), (7, 1.95), (10, 1.8), (10, 1.7)],    # step 10 logged twice: the last counts
        ("r0", "wall_s/train"): [(5, 1.0), (10, 9.0), (10, 2.0)],            # step 7 has no clock: left out
        ("r1", "valid_bpc"): [(5, 2.2), (10, 2.0), (15, 1.9)],
        ("r1", "wall_s/train"): [(5, 1.5), (10, 3.0), (15, 4.5)]})
    frame = rnn_report._history_frame(ctx, ["r0", "r1"], "valid_bpc")
    assert list(frame["step"]) == [5, 10, 15]
    assert np.allclose(frame["value"], [2.1, 1.85, 1.9]) and np.allclose(frame["wall_s"], [1.25, 2.5, 4.5])


def test_data_efficiency_figure_plots_the_mean_samples_per_length_solved():
    def run(method, T, samples, profile="quick"):
        return {"task": "copy", "profile": profile, "model": "lstm64", "method": method, "param.method_args.T": str(T),
                **{f"metric.samples_at_len/{L}": s for L, s in samples.items()}}
    runs = pd.DataFrame([run("bptt", 2, {4: 100, 5: 300}), run("bptt", 2, {4: 200}),    # the second never reached 5
                         run("bptt", 3, {}),                                             # no length solved: no line
                         run("dni_bptt", 2, {4: 50, 5: 70, 10: 90}),
                         run("bptt", 2, {4: 1}, profile="smoke")])
    fig = rnn_report._efficiency_figure(runs, "quick")
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.lines}
    assert set(lines) == {"BPTT T=2", "DNI T=2"}
    assert lines["BPTT T=2"].get_xydata().tolist() == [[150, 4], [300, 5]]      # the mean over the seeds that reached it
    assert lines["DNI T=2"].get_xydata().tolist() == [[50, 4], [70, 5], [90, 10]]     # lengths in numeric order
    assert [(l.get_color(), l.get_linestyle(), l.get_marker()) for l in (lines["BPTT T=2"], lines["DNI T=2"])] == \
        [("#000000", "--", "o"), ("#1f77b4", "-", "o")]                  # BPTT dashed; a colour per method, a marker per T
    assert ax.get_title() == "Copy (quick, lstm64)"
    assert rnn_report._efficiency_figure(runs, "paper") is None
    both = rnn_report._efficiency_figure(pd.concat([runs, pd.DataFrame([{**run("dni_bptt_aux", 3, {4: 10}), "task": "repeat_copy"}])]),
                                         "quick")
    assert [ax.get_title() for ax in both.axes] == ["Copy (quick, lstm64)", "Repeat Copy (quick, lstm64)"]
    assert [(l.get_label(), l.get_color(), l.get_marker()) for l in both.axes[1].lines] == [("DNI+Aux T=3", "#2ca02c", "s")]


def test_two_timescale_summary_is_the_mean_final_error_per_way_a_learns(tmp_path):
    def run(method, error, gradient="method"):
        return {"task": "multiscale", "suite": "rnn_multiscale", "profile": "smoke", "model": "lstm64", "method": method,
                "param.task_args.message_gradient": gradient, "metric.final_b_error": error}
    ctx = report_context(tmp_path, [{**run("bptt", 90.0), "variant": "before"},            # an older configuration
                                     *[{**run("bptt", e), "variant": "paired"} for e in (10.0, 20.0)], run("dni_bptt", 12.0),
                                     run("dni_bptt", 40.0, "none")])     # the message cut: its own curve whatever the method
    with_histories(ctx, {key: [(1, 50.0), (2, 30.0)] for r in range(5) for key in ((f"r{r}", "b_error"), (f"r{r}", "wall_s/train"))})
    section = rnn_report.render(ctx)
    body = section.body
    assert "### Two-timescale system at `smoke`" in body
    assert "| A waits for B's gradient (BPTT) | 15.0 | 2 |" in body
    assert "| DNI on the A->B message | 12.0 | 1 |" in body
    assert "| A gets no gradient from B | 40.0 | 1 |" in body
    assert (tmp_path / "rnn_multiscale_smoke.png").stat().st_size > 0 and not (tmp_path / "rnn_multiscale_quick.png").exists()
    later = report_context(tmp_path, [{**run("bptt", 30.0), "profile": "quick"}, {**run("dni_bptt", 20.0), "profile": "paper"},
                                      {**run("bptt", 9.0), "task": "copy", "suite": "rnn_copy", "profile": "quick",
                                       "param.method_args.T": "3", "metric.max_len_solved": 5.0}])
    with_histories(later, {key: [(1, 50.0)] for r in range(3) for key in ((f"r{r}", "b_error"), (f"r{r}", "wall_s/train"))})
    section = rnn_report.render(later)                           # no smoke runs: quick and paper still drawn
    assert "### Two-timescale system at `quick`" in section.body and "### Two-timescale system at `paper`" in section.body
    assert "### RNN table at `quick`" in section.body            # the tables before the two-timescale part are kept
    assert {"rnn_multiscale_quick.png", "rnn_multiscale_paper.png", "rnn_table_quick.csv"} <= {p.name for p in section.files}
    unlabelled = report_context(tmp_path, [{k: v for k, v in run(m, 10.0).items() if k != "param.task_args.message_gradient"}
                                           for m in ("bptt", "dni_bptt")])      # logged before message_gradient existed
    with_histories(unlabelled, {key: [(1, 50.0)] for r in range(2) for key in ((f"r{r}", "b_error"), (f"r{r}", "wall_s/train"))})
    body = rnn_report.render(unlabelled).body
    assert "| A waits for B's gradient (BPTT) | 10.0 | 1 |" in body and "| DNI on the A->B message | 10.0 | 1 |" in body


def single_seed_suites(tmp_path):
    """rnn_copy and rnn_ptb whose paper profile opts in to one seed (report: a point, not '1 seed: inconclusive')."""
    suites = {}
    for name, task in (("rnn_copy", "copy"), ("rnn_ptb", "ptb")):
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"name: {name}\ntask: {task}\ntrain: {{steps: 10, batch_size: 8, lr: 1.0e-3}}\n"
                        "profiles: {smoke: {}, quick: {}, paper: {single_seed: true, single_seed_reason: costly}}\n"
                        "entries:\n  - {model: lstm64, method: bptt, sweep: {T: [2]}}\n")
        suites[name] = load_suite(path)
    return suites


def test_a_single_seed_profile_judges_its_one_run_as_a_point(tmp_path):
    runs = fake_runs([*seeds("copy", "dni_bptt", 2, [16]), *seeds("ptb", "bptt", 8, [1.35]),
                      *seeds("ptb", "bptt", 3, [1.40]), *seeds("ptb", "dni_bptt", 3, [1.36])])
    plain = SimpleNamespace(published=load_published(), suites={})
    opted = SimpleNamespace(published=load_published(), suites=single_seed_suites(tmp_path))
    before = cells(plain, runs, "paper").set_index(["task", "method", "T"])["verdict"]
    after = cells(opted, runs, "paper").set_index(["task", "method", "T"])["verdict"]
    assert before[("Copy", "DNI", 2)] == before[("PTB", "BPTT", 8)] == "1 seed: inconclusive"
    assert after[("Copy", "DNI", 2)] == after[("PTB", "BPTT", 8)] == "within tolerance"
    claim = "DNI lower than BPTT at T=3"
    assert ptb_paired(plain, runs, "paper").set_index("claim").at[claim, "verdict"] == "1 seed: inconclusive"
    paired = ptb_paired(opted, runs, "paper").set_index("claim")
    assert paired.at[claim, "verdict"] == "holds" and paired.at[claim, "measured difference (BPC)"] == "-0.040"
    assert paired.at[claim, "seeds"] == "1 vs 1"                   # no CI to print for one seed each


def test_cells_and_paired_rows_leave_blank_what_was_not_measured():
    ctx = SimpleNamespace(published=load_published())
    runs = fake_runs([*seeds("copy", "bptt", 2, [7, 8]), *seeds("copy", "bptt", 3, [8]),
                      *seeds("ptb", "dni_bptt", 2, [1.36, 1.37]), *seeds("ptb", "bptt", 3, [1.38]),
                      {**seeds("ptb", "bptt", 3, [1.39])[0], "model": "lstm128"},                 # a cell of two models
                      {**seeds("copy", "bptt", 2, [9])[0], "model": "lstm64", "profile": "quick"}])   # another profile
    table = cells(ctx, runs, "paper").set_index(["task", "method", "T"])
    assert table.loc[("Copy", "BPTT", 2)].to_dict() == {"model": "lstm256", "measured": "7.5", "ci95": "6.4", "seeds": 2,
                                                       "published": "7", "verdict": table.loc[("Copy", "BPTT", 2), "verdict"]}
    assert table.loc[("Copy", "BPTT", 3), ["measured", "ci95", "seeds"]].tolist() == ["8", "", 1]    # one seed: no CI
    assert table.loc[("Copy", "DNI", 2), ["model", "measured", "ci95", "seeds", "verdict"]].tolist() == ["", "", "", 0, "no runs"]
    assert table.loc[("PTB", "DNI", 2), ["measured", "ci95", "published"]].tolist() == ["1.365", "0.064", "1.370"]
    wide = paper_layout(table.reset_index())
    assert wide.loc[0, "model"] == "lstm256" and wide.loc[0, "BPTT T=2"] == "7.5 (7)" and wide.loc[0, "DNI T=2"] == "· (16)"
    assert table.loc[("PTB", "BPTT", 3), "model"] == "lstm128, lstm256" and wide.loc[2, "model"] == "lstm128, lstm256"
    assert wide.loc[2, "DNI+Aux T=5"] == "· (1.350)"
    paired = ptb_paired(ctx, runs, "paper").set_index("claim")
    assert paired.at["DNI lower than BPTT at T=2", "measured difference (BPC)"] == ""            # no BPTT at T=2
    assert paired.at["DNI lower than BPTT at T=2", "seeds"] == "2 vs 0"
    assert paired.at["DNI+Aux lower than BPTT at T=3", "published difference"] == "-0.030"      # the range's middle
    assert ptb_paired(ctx, runs[runs["task"] == "copy"], "paper").empty
    unlogged = ptb_paired(ctx, runs[runs["task"] == "ptb"].drop(columns="metric.test_bpc"), "paper")   # no BPC logged
    assert set(unlogged["verdict"]) == {"no runs"} and set(unlogged["seeds"]) == {"0 vs 0"}
    published = copy.deepcopy(load_published())
    del published["rnn"]["ptb"]["dni"][2]
    gap = ptb_paired(SimpleNamespace(published=published), runs, "paper").set_index("claim")["published difference"]
    assert gap["DNI lower than BPTT at T=2"] == "–" and gap["DNI lower than BPTT at T=3"] == "-0.020"
    quick_ptb = {**seeds("ptb", "bptt", 2, [1.5])[0], "profile": "quick"}
    assert ptb_paired(ctx, fake_runs([*seeds("copy", "bptt", 2, [7]), quick_ptb]), "paper").empty   # PTB at paper only


def test_ptb_figure_plots_each_methods_mean_validation_curve_per_t(tmp_path):
    rows = [{"task": "ptb", "method": m, "param.method_args.T": T} for m, T in
            (("bptt", "3"), ("bptt", "3"), ("dni_bptt", "3"), ("bptt", "10"))]
    ctx = with_histories(report_context(tmp_path, rows), {
        ("r0", "valid_bpc"): [(5, 2.0), (10, 1.8)], ("r0", "wall_s/train"): [(5, 1.0), (10, 2.0)],
        ("r1", "valid_bpc"): [(5, 2.2), (10, 2.0)], ("r1", "wall_s/train"): [(5, 3.0), (10, 4.0)],
        ("r2", "valid_bpc"): [(5, 1.9)], ("r2", "wall_s/train"): [(5, 7.0)],
        ("r3", "valid_bpc"): [(5, 2.5)], ("r3", "wall_s/train"): [(5, 0.5)]})
    fig = rnn_report._ptb_figure(ctx, ctx.runs)
    top, bottom = fig.axes[:2], fig.axes[2:]
    assert [ax.get_title() for ax in top] == ["T = 3", "T = 10"]              # T in numeric order
    by_label = {line.get_label(): line for line in top[0].lines}
    assert by_label["BPTT"].get_xydata().tolist() == [[5, 2.1], [10, 1.9]]   # iterations: the mean of both seeds
    assert by_label["DNI"].get_xydata().tolist() == [[5, 1.9]] and by_label["DNI"].get_color() == "#1f77b4"
    walls = {line.get_label(): line.get_xydata().tolist() for line in bottom[0].lines}
    assert walls["BPTT"] == [[2.0, 2.1], [3.0, 1.9]]                          # against the mean training clock
    assert [line.get_xydata().tolist() for line in top[1].lines] == [[[5, 2.5]]]
    assert (top[0].get_xlabel(), bottom[0].get_xlabel(), top[0].get_ylabel(), bottom[0].get_ylabel()) == \
        ("iterations", "training wall-clock (s)", "validation BPC", "validation BPC")
    assert rnn_report._ptb_figure(ctx, ctx.runs.iloc[:0]) is None


def test_multiscale_figure_plots_b_error_per_way_a_learns(tmp_path):
    rows = [{"task": "multiscale", "method": m, "curve": c} for m, c in (("bptt", "bptt"), ("bptt", "bptt"),
                                                                          ("dni_bptt", "none"))]
    ctx = with_histories(report_context(tmp_path, rows), {
        ("r0", "b_error"): [(1, 50.0), (2, 30.0)], ("r0", "wall_s/train"): [(1, 1.0), (2, 2.0)],
        ("r1", "b_error"): [(1, 40.0), (2, 20.0)], ("r1", "wall_s/train"): [(1, 3.0), (2, 4.0)],
        ("r2", "b_error"): [(1, 60.0)], ("r2", "wall_s/train"): [(1, 0.5)]})
    steps, walls = rnn_report._multiscale_figure(ctx, ctx.runs).axes
    lines = {line.get_label(): line for line in steps.lines}
    waits = "A waits for B's gradient (BPTT) (2 seed(s))"
    assert set(lines) == {waits, "A gets no gradient from B (1 seed(s))"}
    assert lines[waits].get_xydata().tolist() == [[1, 45.0], [2, 25.0]] and lines[waits].get_color() == "#000000"
    assert lines["A gets no gradient from B (1 seed(s))"].get_color() == "#7f7f7f"     # the cut message in grey
    assert {l.get_label(): l.get_xydata().tolist() for l in walls.lines}[waits] == [[2.0, 45.0], [3.0, 25.0]]
    assert (steps.get_xlabel(), walls.get_xlabel(), steps.get_ylabel()) == \
        ("iterations (windows of T steps)", "training wall-clock (s)", "B's error (%)")
    assert rnn_report._multiscale_figure(ctx, ctx.runs.iloc[:0]) is None


def test_render_writes_each_profiles_tables_and_judges_at_paper_only(tmp_path):
    def run(task, method, T, value, profile, discount=None):
        suite, metric = {"ptb": ("rnn_ptb", "metric.test_bpc"), "copy": ("rnn_copy", "metric.max_len_solved")}[task]
        extra = {} if discount is None else {"param.method_args.synth_scale": "0.1",
                                             "param.method_args.target_discount": discount}
        return {"task": task, "suite": suite, "profile": profile, "model": "lstm128", "method": method, "seed": 0,
                "param.method_args.T": str(T), metric: value, **extra}
    rows = [run("ptb", "bptt", 3, 2.34, "quick"), run("ptb", "dni_bptt", 3, 2.30, "quick", "0.1"),   # the suite's quick discount
            {**run("copy", "bptt", 3, 5, "quick"), "metric.samples_at_len/4": 640.0},
            run("copy", "bptt", 3, 8, "paper"), run("copy", "dni_bptt", 3, 14, "paper", "1.0"),
            run("ptb", "bptt", 3, 1.38, "paper"), run("ptb", "dni_bptt", 3, 1.36, "paper", "1.0")]
    ctx = report_context(tmp_path, rows)
    figures = capture_figures(ctx, save=True)
    section = rnn_report.render(ctx)
    drawn = {stem: [l.get_label() for ax in fig.axes for l in ax.lines] for stem, fig in figures.items()}
    assert set(drawn["rnn_ptb_curves_quick"]) == {"BPTT", "DNI"}          # DNI at the suite's quick discount, drawn
    assert set(drawn["rnn_data_efficiency_quick"]) == {"BPTT T=3"}
    names = {p.name for p in section.files}
    for profile in ("quick", "paper"):
        assert {f"rnn_table_{profile}.md", f"rnn_table_{profile}.csv", f"rnn_table_{profile}_cells.csv",
                f"rnn_ptb_paired_{profile}.csv", f"rnn_ptb_curves_{profile}.png"} <= names, profile
        assert f"### RNN table at `{profile}`" in section.body
        assert f"PTB, the paper's paired claim at `{profile}`" in section.body
    assert "rnn_data_efficiency_quick.png" in names and "![data efficiency](rnn_data_efficiency_quick.png)" in section.body
    quick_body = section.body.split("### RNN table at `paper`")[0]
    assert "the opt-in suites `suites/rnn_copy_lstm256.yaml`, `suites/rnn_repeat_copy_lstm256.yaml`, not run in this store." \
        in quick_body
    assert "- PTB at `quick` departs from the paper: LSTM-128 instead of 1024" in quick_body
    assert "- PTB: entries left out at `quick`: the paper's LSTM-1024 at batch 256" in quick_body
    assert "- Copy: entries left out at `quick`: the paper's LSTM-256 at batch 256" in quick_body
    quick = pd.read_csv(tmp_path / "rnn_ptb_paired_quick.csv").set_index("claim")
    assert quick.at["DNI lower than BPTT at T=3", "measured difference (BPC)"] == -0.04           # DNI at discount 0.1
    assert section.body.count("Verdict per cell") == 1                                            # the paper profile's
    paper = section.body.split("### RNN table at `paper`")[1]
    assert "Verdict per cell" in paper and "0.005 BPC for PTB" in paper
    verdicts = paper.split("Verdict per cell")[1].split("\n\n")[1].splitlines()
    assert len(verdicts) == 2 + 4                                       # the cells with runs only, under a header
    assert "opt-in suites" not in paper and "- Copy: entries left out at `paper`: the paper profile runs" in paper
    opted = report_context(tmp_path, rows)
    opted.suites = {**opted.suites, **single_seed_suites(tmp_path)}
    assert "- Single-seed profile (`rnn_copy` at `paper`)" in rnn_report.render(opted).body
    assert "| Copy | lstm128 | DNI | 3 | 14 |  | 1 | 14 | 1 seed: inconclusive |" in paper          # no CI for one seed
