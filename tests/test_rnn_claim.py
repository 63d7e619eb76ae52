"""The opt-in suites of the RNN claim at the paper's LSTM-256 (suites/rnn_copy_lstm256.yaml,
rnn_repeat_copy_lstm256.yaml): run from the CLI as the README says and reported in a section of their own
(dnibench/report/rnn_claim.py), never mixed into the RNN table; the claim's verdict per T."""
import pandas as pd

from dnibench.cli import main
from dnibench.report import rnn as rnn_report
from dnibench.report import rnn_claim
from dnibench.suite import load_suite, plan
from report_fixtures import report_context

CLAIM = ["suites/rnn_copy_lstm256.yaml", "suites/rnn_repeat_copy_lstm256.yaml"]


def test_claim_suites_run_the_paper_model_at_t_3_4_5_and_stay_out_of_reproduce():
    for path, task in zip(CLAIM, ["copy", "repeat_copy"]):
        suite = load_suite(path)
        assert suite.task == task and rnn_report.CLAIM_SUITES[suite.name] == task
        specs = plan(suite, "quick")
        assert sorted((s.method, s.method_args["T"]) for s in specs) == \
            [(m, T) for m in ("bptt", "dni_bptt") for T in (3, 4, 5)]
        for s in specs:      # the paper's schedule but for the budget (the departures)
            assert (s.model, s.train.batch_size, s.train.lr, s.train.steps) == ("lstm256", 256, 1e-3, 10_000)
            assert s.task_args["reset_state"] is True and s.task_args["threshold_bpc"] == 0.15
            assert s.method != "dni_bptt" or (s.method_args["target_discount"], s.method_args["synth_scale"]) == (1.0, 0.1)
        assert suite.profiles["quick"].single_seed and len(plan(suite, "paper")) == 18
    makefile = open("Makefile").read()
    assert "lstm256.yaml" not in makefile.split("SUITES ?=")[1].split("\n\n")[0]


def _row(suite, task, method, T, length, seed=0, profile="quick"):
    return {"suite": suite, "task": task, "profile": profile, "model": "lstm256", "method": method, "seed": seed,
            "param.method_args.T": str(T), "metric.max_len_solved": float(length), "metric.total_wall_s/train": 100.0,
            **({"param.method_args.target_discount": "1.0", "param.method_args.synth_scale": "0.1"}
               if method == "dni_bptt" else {})}


def test_claim_verdict_per_t_and_the_rnn_table_leaves_the_claim_runs_out(tmp_path):
    rows = [_row("rnn_copy_lstm256", "copy", "bptt", 3, 5), _row("rnn_copy_lstm256", "copy", "dni_bptt", 3, 6),
            _row("rnn_copy_lstm256", "copy", "bptt", 4, 6), _row("rnn_copy_lstm256", "copy", "dni_bptt", 4, 6),
            _row("rnn_repeat_copy_lstm256", "repeat_copy", "bptt", 5, 9),
            _row("rnn_repeat_copy_lstm256", "repeat_copy", "dni_bptt", 5, 7),
            # the main suite's run at the same (task, method, T): the RNN table's only cell there
            {**_row("rnn_copy", "copy", "dni_bptt", 3, 4), "model": "lstm64"}]
    ctx = report_context(tmp_path, rows)
    table = rnn_claim.claim_table(ctx, ctx.runs, "quick").set_index(["task", "T"])
    verdict = "verdict (DNI longer than BPTT)"
    assert table.loc[("Copy", 3), verdict] == "holds"           # single-seed profile: the run as a point
    assert table.loc[("Copy", 3), "DNI − BPTT (curriculum steps)"] == "+1"
    assert table.loc[("Copy", 4), verdict].startswith("does not hold")
    assert table.loc[("Repeat Copy", 5), verdict] == "does not hold"     # 9 -> step 4 (3,2), 7 -> step 3 (2,2)
    assert (table.loc[("Copy", 3), "BPTT"], table.loc[("Copy", 3), "DNI"]) == ("5", "6")
    assert table.loc[("Copy", 3), "published BPTT / DNI (100k steps)"] == "8 / 14"
    section = rnn_claim.render(ctx)
    assert "single-seed" in section.body.lower() and "10000 steps instead of 100k" in section.body
    main = rnn_report.render(ctx)
    assert "`suites/rnn_copy_lstm256.yaml`" in main.body and "in their own section below" in main.body
    cells = pd.read_csv(tmp_path / "rnn_table_quick_cells.csv").set_index(["task", "method", "T"])
    assert cells.loc[("Copy", "DNI", 3), "measured"] == 4 and cells.loc[("Copy", "DNI", 3), "seeds"] == 1
    assert cells.loc[("Copy", "BPTT", 3), "seeds"] == 0


def test_claim_over_seeds_is_judged_on_the_welch_interval(tmp_path):
    rows = [{**_row("rnn_copy_lstm256", "copy", m, 5, L, seed=s, profile="paper"), "variant": m}
            for m, lengths in (("bptt", [6, 6, 6]), ("dni_bptt", [8, 9, 8])) for s, L in enumerate(lengths)]
    ctx = report_context(tmp_path, rows)
    table = rnn_claim.claim_table(ctx, ctx.runs, "paper")
    assert table.loc[0, "verdict (DNI longer than BPTT)"] == "holds" and table.loc[0, "seeds"] == "3 vs 3"
    assert table.loc[0, "BPTT"] == "6, 6, 6" and table.loc[0, "DNI"] == "8, 9, 8"
    rows[4]["metric.max_len_solved"] = 5.0                  # one DNI seed behind BPTT: the interval spans 0
    ctx = report_context(tmp_path, rows)
    assert rnn_claim.claim_table(ctx, ctx.runs, "paper").loc[0, "verdict (DNI longer than BPTT)"].startswith("inconclusive")


def test_claim_suites_from_the_cli_as_the_readme_says(tmp_path, one_thread):
    # README: dnibench run suites/rnn_copy_lstm256.yaml suites/rnn_repeat_copy_lstm256.yaml --jobs 2 && dnibench report
    db, out = tmp_path / "m.db", tmp_path / "reports"
    uri = f"sqlite:///{db}"
    assert main(["run", *CLAIM, "--profile", "smoke", "--jobs", "2", "--tracking-uri", uri, "--no-progress"]) == 0
    assert main(["report", "--tracking-uri", uri, "--out", str(out)]) == 0
    readme = (out / "README.md").read_text()
    assert "The RNN claim at the paper's LSTM-256" in readme and "Other suites" not in readme
    assert "### RNN table" not in readme                    # the claim runs never enter the RNN table
    table = pd.read_csv(out / "rnn_claim_smoke.csv")
    assert sorted(zip(table["task"], table["T"])) == [(t, T) for t in ("Copy", "Repeat Copy") for T in (3, 4, 5)]
    assert (table["seeds"] == "1 vs 1").all() and (out / "rnn_claim_data_efficiency_smoke.png").stat().st_size > 0


def test_claim_table_wall_clock_blanks_and_suites_without_runs(tmp_path):
    rows = [{**_row("rnn_repeat_copy_lstm256", "repeat_copy", m, 3, L, seed=s), "variant": m, **wall}
            for m, L, s, wall in (("bptt", 5, 0, {"metric.total_wall_s/train": 200.0}),
                                  ("bptt", 7, 1, {"metric.total_wall_s/train": 220.0}),
                                  ("dni_bptt", 7, 0, {"metric.total_wall_s/train": float("nan")}))]   # DNI's not logged
    rows.append({**_row("rnn_repeat_copy_lstm256", "repeat_copy", "bptt", 4, 7), "variant": "t4"})   # DNI never ran at T=4
    ctx = report_context(tmp_path, rows)
    table = rnn_claim.claim_table(ctx, ctx.runs, "quick").set_index("T")     # rnn_copy_lstm256 has no runs: skipped
    assert list(table.index) == [3, 4] and set(table["task"]) == {"Repeat Copy"}
    assert table.at[3, "train s (BPTT / DNI)"] == "210 / ·"                  # the mean over seeds, not its CI
    assert table.at[3, "BPTT"] == "5, 7" and table.at[3, "seeds"] == "2 vs 1"
    assert table.at[4, "DNI"] == "·" and table.at[4, "DNI − BPTT (curriculum steps)"] == ""
    assert table.at[4, "verdict (DNI longer than BPTT)"] == "no runs"
    assert table.at[3, "published BPTT / DNI (100k steps)"] == "5 / 33"


def test_claim_section_per_profile_with_notes_files_and_figure(tmp_path):
    rows = [{**_row("rnn_copy_lstm256", "copy", m, 3, L, profile=p), "metric.samples_at_len/4": 64.0, "variant": m + p}
            for p in ("smoke", "quick") for m, L in (("bptt", 4), ("dni_bptt", 5))]
    rows.append({**_row("rnn_copy", "copy", "bptt", 3, 4), "model": "lstm64"})      # a main suite's run: not here
    section = rnn_claim.render(report_context(tmp_path, rows))
    assert section.title == "The RNN claim at the paper's LSTM-256 (Copy, Repeat Copy; opt-in suites)"
    lines = section.body.splitlines()
    assert "### At `smoke`" in lines and "### At `quick`" in lines
    quick = section.body.split("### At `quick`")[1]
    assert "- Single-seed profile (`rnn_copy_lstm256` at `quick`)" in quick and "rnn_repeat_copy_lstm256" not in quick
    assert "- `rnn_copy_lstm256` at `quick` departs from the paper: " in quick
    assert {f"rnn_claim_{p}.csv" for p in ("smoke", "quick")} | {f"rnn_claim_data_efficiency_{p}.png" for p in ("smoke", "quick")} \
        <= {p.name for p in section.files}
    assert "![data efficiency at LSTM-256](rnn_claim_data_efficiency_quick.png)" in quick
    assert rnn_claim.render(report_context(tmp_path, rows[-1:])) is None             # no claim-suite runs: no section
