"""The RNN table's verdicts at the paper profile, against the published cells (no training)."""
from types import SimpleNamespace

import pandas as pd

from dnibench.report.context import load_published
from dnibench.report.rnn import cells, paper_layout


def fake_runs(rows):
    return pd.DataFrame([{"run_id": f"r{i}", "profile": "paper", "model": "lstm256", "start_time": i, "variant": "v",
                          **row} for i, row in enumerate(rows)])


def test_paper_profile_verdicts():
    ctx = SimpleNamespace(published=load_published())
    runs = fake_runs([
        {"task": "copy", "method": "dni_bptt", "param.method_args.T": "2", "metric.max_len_solved": 16.0},
        {"task": "copy", "method": "dni_bptt", "param.method_args.T": "2", "metric.max_len_solved": 17.0},
        {"task": "copy", "method": "bptt", "param.method_args.T": "3", "metric.max_len_solved": 12.0},
        {"task": "repeat_copy", "method": "dni_bptt_aux", "param.method_args.T": "4", "metric.max_len_solved": 59.0},
        {"task": "repeat_copy", "method": "dni_bptt_aux", "param.method_args.T": "3", "metric.max_len_solved": 39.0},
        {"task": "ptb", "method": "bptt", "param.method_args.T": "8", "metric.test_bpc": 1.362},
        {"task": "ptb", "method": "dni_bptt_aux", "param.method_args.T": "2", "metric.test_bpc": 1.39},
    ])
    table = cells(ctx, runs, "paper").set_index(["task", "method", "T"])
    assert table.loc[("Copy", "DNI", 2), "measured"] == "16.5" and table.loc[("Copy", "DNI", 2), "seeds"] == 2
    assert table.loc[("Copy", "DNI", 2), "verdict"] == "within tolerance"
    assert table.loc[("Copy", "BPTT", 3), "verdict"] == "outside"                 # 12 vs 8: four steps apart
    assert table.loc[("Repeat Copy", "DNI+Aux", 4), "verdict"] == "within tolerance"  # 59 vs 67: one step
    assert table.loc[("Repeat Copy", "DNI+Aux", 3), "verdict"] == "outside"       # 39 vs 59: four steps
    assert table.loc[("PTB", "BPTT", 8), "verdict"] == "within tolerance"
    assert table.loc[("PTB", "DNI+Aux", 2), "verdict"] == "outside"               # 1.39 vs 1.34-1.36
    assert table.loc[("Copy", "BPTT", 8), "published"] == "–" and table.loc[("PTB", "DNI", 5), "verdict"] == "no runs"
    wide = paper_layout(table.reset_index())
    assert list(wide["task"]) == ["Copy", "Repeat Copy", "PTB"] and wide.loc[0, "DNI T=2"] == "16.5 (16)"
    assert cells(ctx, runs.assign(profile="quick"), "quick").set_index(["task", "method", "T"]).loc[
        ("Copy", "DNI", 2), "verdict"] == "not comparable at this profile"
