"""The RNN table's verdicts at the paper profile, against the published cells (no training)."""
from types import SimpleNamespace

import pandas as pd

from dnibench.report.context import load_published
from dnibench.report.rnn import cells, paper_layout, ptb_paired


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
