"""PTB's DNI at smoke and quick bootstraps with the discounted target (suites/rnn_ptb.yaml's quick
departures: the paper's undiscounted one diverged there), the paper profile keeps the paper's; the
RNN report's table takes each task's DNI cells from the discount its suite runs at that profile."""
import pandas as pd

from dnibench.report import rnn as rnn_report
from dnibench.suite import load_suite, plan
from report_fixtures import report_context


def test_ptb_suite_discounts_the_target_at_smoke_and_quick_only():
    suite = load_suite("suites/rnn_ptb.yaml")
    for profile, want in (("smoke", 0.1), ("quick", 0.1), ("paper", 1.0)):
        specs = plan(suite, profile, seeds=1)
        dni = [s for s in specs if s.method in ("dni_bptt", "dni_bptt_aux")]
        assert len(dni) == 8, profile                         # both DNI methods at T = 2..5
        assert {s.method_args["target_discount"] for s in dni} == {want}, profile
        assert {s.method_args["synth_scale"] for s in dni} == {0.1}, profile
        assert sorted(s.method_args["T"] for s in specs if s.method == "bptt") == [2, 3, 4, 5, 8], profile
    assert any("target_discount 0.1" in d for d in suite.profiles["quick"].departures)
    assert any("target_discount 0.1" in d for d in suite.profiles["smoke"].departures)


def test_report_takes_ptb_quick_dni_from_the_suites_discount(tmp_path):
    def run(task, method, T, value, discount=None):
        suite, model, metric = {"ptb": ("rnn_ptb", "lstm128", "metric.test_bpc"),
                                "copy": ("rnn_copy", "lstm64", "metric.max_len_solved")}[task]
        extra = {} if discount is None else {"param.method_args.synth_scale": "0.1",
                                             "param.method_args.target_discount": discount}
        return {"task": task, "suite": suite, "profile": "quick", "model": model, "method": method,
                "seed": 0, "param.method_args.T": str(T), metric: float(value), **extra}

    ctx = report_context(tmp_path, [run("ptb", "bptt", 3, 2.339), run("ptb", "dni_bptt", 3, 2.337, "0.1"),
                                    run("ptb", "dni_bptt", 3, 4.36, "1.0"),   # an older run at the paper's discount
                                    run("copy", "bptt", 3, 7), run("copy", "dni_bptt", 3, 8, "1.0"),
                                    run("copy", "dni_bptt", 3, 5, "0.1")])
    assert rnn_report.suite_discount(ctx, "ptb", "quick") == 0.1
    assert rnn_report.suite_discount(ctx, "ptb", "paper") == 1.0
    assert rnn_report.suite_discount(ctx, "copy", "quick") == 1.0
    section = rnn_report.render(ctx)
    cells = pd.read_csv(tmp_path / "rnn_table_quick_cells.csv").set_index(["task", "method", "T"])
    assert cells.loc[("PTB", "DNI", 3), "measured"] == 2.337 and cells.loc[("PTB", "DNI", 3), "seeds"] == 1
    assert cells.loc[("Copy", "DNI", 3), "measured"] == 8          # Copy keeps the paper's discount
    assert "PTB at `quick`: discount 0.1" in section.body
    note = section.body.split("PTB test BPC under each reading")[1]
    assert "| PTB | DNI | 3 | 2.337 (1 seed) | 4.360 (1 seed) |" in note
