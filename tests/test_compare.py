"""`dnibench compare`: a variant against a baseline over seeds, numbers straight from MLflow."""
import math

import pytest

from dnibench.cli import main
from dnibench.compare import compare
from dnibench.errors import DnibenchError
from dnibench.report.context import load_runs
from dnibench.report.verdict import welch_ci
from dnibench.runner import run_suites

SUITE = """
name: cmp
task: mnist
train: {steps: 4, batch_size: 8, lr: 1.0e-3, lr_decay_at: [], eval_every: 2, log_every: 2}
profiles: {smoke: {seeds: 3}, quick: {}, paper: {}}
entries:
  - model: fcn3
    method: [bprop, cdni]
"""


def test_compare_over_seeds(tmp_path, fake_mnist_data_dir, capsys):
    suite = tmp_path / "cmp.yaml"
    suite.write_text(SUITE)
    uri = f"sqlite:///{tmp_path}/m.db"
    run_suites([str(suite)], "smoke", device="cpu", tracking_uri=uri, data_dir=fake_mnist_data_dir, progress=False)
    table, metric, profile = compare(uri, "cmp")
    assert (metric, profile) == ("final_test_error", "smoke")
    assert list(table["seeds"]) == [3, 3]
    runs = load_runs(uri)
    errors = {m: runs[runs.method == m]["metric.final_test_error"].tolist() for m in ("bprop", "cdni")}
    row = table[table["method"] == "cDNI"].iloc[0]
    diff, half, _, _ = welch_ci(errors["cdni"], errors["bprop"])          # tested against scipy in test_verdict
    expected = f"{diff:.2f}" + (f" ± {half:.2f}" if math.isfinite(half) else "")
    assert row["vs bprop"] == expected
    assert table[table["method"] == "Bprop"].iloc[0]["vs bprop"] == "baseline"
    assert main(["compare", "cmp", "--tracking-uri", uri, "--out", str(tmp_path / "out")]) == 0
    assert "| fcn3 | cDNI | 3 |" in capsys.readouterr().out
    assert (tmp_path / "out" / "compare_cmp_smoke.csv").is_file()
    with pytest.raises(DnibenchError, match="no finished runs of suite 'absent'"):
        compare(uri, "absent")


def test_compare_columns_worked_by_hand(monkeypatch):
    """The table's speed, GPU and timing columns from crafted runs (the store's loader replaced): samples/s over the
    runs whose timing was clean, its ratio to the baseline's, the mean GPU utilisation, and which runs were
    disturbed; without --profile, the profile run last."""
    import pandas as pd

    import dnibench.compare as cmp

    def run(method, seed, error, speed, gpu, dispersion, profile="smoke", start=0):
        return {"suite": "cmp", "profile": profile, "model": "fcn3", "method": method, "variant": "v", "seed": seed,
                "start_time": start + seed, "metric.final_test_error": error, "metric.mean_samples_per_s": speed,
                "metric.gpu_util_pct_mean": gpu, "metric.wall_step_dispersion": dispersion}
    runs = pd.DataFrame([run("bprop", 0, 2.0, 1000.0, 50.0, 1.1), run("bprop", 1, 2.2, 1200.0, 70.0, 1.2),
                         run("cdni", 0, 2.5, 500.0, 30.0, 1.0), run("cdni", 1, 2.7, 9000.0, 40.0, 5.0),  # disturbed
                         run("cdni", 2, 9.9, 1.0, 1.0, 1.0, profile="old", start=-10)])             # an older profile
    monkeypatch.setattr(cmp, "load_runs", lambda uri: runs)
    table, metric, profile = cmp.compare("sqlite:///unused", "cmp")
    assert (metric, profile) == ("final_test_error", "smoke")
    rows = table.set_index("method")
    assert rows.loc["Bprop", "samples/s"] == "1100" and rows.loc["Bprop", "speed vs bprop"] == "1.00x"
    assert rows.loc["Bprop", "GPU util %"] == "60" and rows.loc["Bprop", "timing"] == "ok"
    assert rows.loc["cDNI", "samples/s"] == "500" and rows.loc["cDNI", "speed vs bprop"] == "0.45x"   # 500 / 1100
    assert rows.loc["cDNI", "GPU util %"] == "35" and rows.loc["cDNI", "seeds"] == 2
    assert rows.loc["cDNI", "timing"] == "timing disturbed in 1 of 2 runs (throughput from the others)"
    assert rows.loc["cDNI", "final_test_error"].startswith("2.60 ± ")
    # the baseline method in two configurations: the one run last is the baseline; the other is compared with it
    other = [dict(run("bprop", s, e, 800.0, 0.0, 1.0, start=-5), variant="w", **{"param.microbatches": "4"})
             for s, e in ((0, 3.0), (1, 3.4))]
    runs = pd.concat([runs.assign(**{"param.microbatches": "1"}), pd.DataFrame(other)], ignore_index=True)
    rows = cmp.compare("sqlite:///unused", "cmp")[0].set_index("method")
    assert rows.loc["Bprop (microbatches=1)", "vs bprop"] == "baseline"
    diff, half, _, _ = welch_ci([3.0, 3.4], [2.0, 2.2])
    assert rows.loc["Bprop (microbatches=4)", "vs bprop"] == f"{diff:.2f} ± {half:.2f}"
    assert rows.loc["Bprop (microbatches=4)", "speed vs bprop"] == "0.73x"                           # 800 / 1100


def _crafted(method, seed, model="fcn3", profile="smoke", start=0, variant=None, suite="cmp", **metrics):
    """One finished run as load_runs gives it; metrics by name (final_test_error=2.0 -> metric.final_test_error)."""
    return {"suite": suite, "profile": profile, "model": model, "method": method, "variant": variant or method,
            "seed": seed, "start_time": start + seed, **{f"metric.{k}": v for k, v in metrics.items()}}


def _failed(suite, profile, method, seed, reason):
    return {"run_id": f"{suite}{profile}{method}{seed}", "experiment": suite, "suite": suite, "profile": profile,
            "model": "fcn3", "method": method, "seed": seed, "variant": method, "start_time": seed,
            "status": "FAILED", "reason": reason}


def _store(monkeypatch, runs, failed=()):
    """compare's two loaders replaced by crafted frames (what the store would give)."""
    import pandas as pd

    import dnibench.compare as cmp
    columns = ["run_id", "experiment", "suite", "profile", "model", "method", "seed", "variant", "start_time",
               "status", "reason"]
    monkeypatch.setattr(cmp, "load_runs", lambda uri: pd.DataFrame(runs))
    monkeypatch.setattr(cmp, "load_failed_runs", lambda uri: pd.DataFrame(list(failed), columns=columns))
    return cmp


def test_compare_names_what_is_missing_and_why(monkeypatch):
    """Each refusal says what was asked and what there is: a suite without finished runs lists its own failed runs
    (the first five, with their reasons), a profile, metric or baseline that is not there is named."""
    failed = [_failed("cmp", "smoke", "cdni", s, f"diverged at step {s + 1}") for s in range(6)]
    failed.append(_failed("other", "smoke", "dni", 0, "worker died"))
    cmp = _store(monkeypatch, [_crafted("bprop", 0, suite="other", final_test_error=2.0)], failed)
    with pytest.raises(DnibenchError) as err:
        cmp.compare("sqlite:///u", "cmp")
    reasons = "; ".join(f"fcn3/cdni/seed{s}: diverged at step {s + 1}" for s in range(5))
    assert str(err.value) == f"no finished runs of suite 'cmp' in sqlite:///u (6 FAILED or KILLED: {reasons})"
    cmp = _store(monkeypatch, [_crafted("bprop", 0, final_test_error=2.0)], failed[-1:])   # another suite's failure
    with pytest.raises(DnibenchError) as err:
        cmp.compare("sqlite:///u", "absent")
    assert str(err.value) == "no finished runs of suite 'absent' in sqlite:///u"
    with pytest.raises(DnibenchError) as err:
        cmp.compare("sqlite:///u", "cmp", profile="paper")
    assert str(err.value) == "no finished runs of suite 'cmp' at profile 'paper' in sqlite:///u"
    with pytest.raises(DnibenchError) as err:
        cmp.compare("sqlite:///u", "cmp", metric="test_bpc")
    assert str(err.value) == "metric 'test_bpc' was not logged by suite 'cmp'"
    cmp = _store(monkeypatch, [_crafted("bprop", 0, wall=1.0)])
    with pytest.raises(DnibenchError) as err:
        cmp.compare("sqlite:///u", "cmp")
    assert str(err.value) == "metric None was not logged by suite 'cmp'"
    cmp = _store(monkeypatch, [_crafted("dni", 0, final_test_error=2.0), _crafted("cdni", 0, final_test_error=2.0)])
    with pytest.raises(DnibenchError) as err:
        cmp.compare("sqlite:///u", "cmp", baseline="b" * 70)
    assert str(err.value) == (f"--baseline {'b' * 60!r}: no finished runs of that method in suite 'cmp' at profile "
                              f"'smoke'; methods present: cdni, dni")


@pytest.mark.parametrize("metric", ["max_len_solved", "test_bpc"])
def test_compare_defaults_to_the_metric_the_suite_logged(monkeypatch, metric):
    cmp = _store(monkeypatch, [_crafted("bprop", s, **{metric: 1.0 + s}) for s in range(2)])
    table, chosen, _ = cmp.compare("sqlite:///u", "cmp")
    assert chosen == metric and table[metric].tolist() == [_pm_of([1.0, 2.0])]


def _pm_of(values):
    from dnibench.report.verdict import mean_ci
    mean, half, _ = mean_ci(values)
    return f"{mean:.2f} ± {half:.2f}"


def test_compare_rows_blanks_and_order(monkeypatch):
    """Rows by model (sorted), then in the store's order; a single seed has no ± and no difference CI; a
    configuration whose every run was disturbed says so instead of a rate, and no ratio is made to or from a rate
    that is not there; a store without GPU numbers shows blanks; the latest profile is the default."""
    runs = [_crafted("cdni", 0, model="fcn6", final_test_error=3.0, mean_samples_per_s=10.0,
                     wall_step_dispersion=9.0),                                       # disturbed: no rate
            _crafted("bprop", 0, model="fcn6", final_test_error=2.0, mean_samples_per_s=20.0),
            _crafted("dni", 0, model="fcn3", final_test_error=4.0, mean_samples_per_s=30.0),
            _crafted("bprop", 0, model="fcn3", final_test_error=1.0, wall_step_dispersion=9.0,
                     mean_samples_per_s=40.0),                                        # the baseline's rate disturbed
            _crafted("dni", 0, model="fcn3", profile="older", start=-20, final_test_error=9.0),
            _crafted("dni", 0, model="fcn3", profile="old", start=-10, final_test_error=8.0)]
    cmp = _store(monkeypatch, runs)
    table, _, profile = cmp.compare("sqlite:///u", "cmp")
    assert profile == "smoke"
    assert list(table.columns) == ["model", "method", "seeds", "final_test_error", "vs bprop", "samples/s",
                                   "speed vs bprop", "GPU util %", "timing"]
    assert table[["model", "method"]].values.tolist() == [["fcn3", "DNI"], ["fcn3", "Bprop"], ["fcn6", "cDNI"],
                                                          ["fcn6", "Bprop"]]
    assert table["final_test_error"].tolist() == ["4.00", "1.00", "3.00", "2.00"]
    assert table["vs bprop"].tolist() == ["3.00", "baseline", "1.00", "baseline"]
    assert table["samples/s"].tolist() == ["30", "disturbed", "disturbed", "20"]
    assert table["speed vs bprop"].tolist() == ["—", "—", "—", "1.00x"]
    assert table["GPU util %"].tolist() == ["—"] * 4
    no_rate = _store(monkeypatch, [_crafted("bprop", 0, final_test_error=1.0), _crafted("dni", 0, wall=1.0)])
    rows = no_rate.compare("sqlite:///u", "cmp")[0]
    assert rows["samples/s"].tolist() == ["—", "—"]
    assert rows[["seeds", "final_test_error", "vs bprop"]].values.tolist() == [[1, "1.00", "baseline"], [0, "—", "—"]]


def test_failed_runs_are_the_suites_at_the_profile_and_rendered_below_the_table(monkeypatch, tmp_path):
    failed = [_failed("cmp", "smoke", "cdni", 0, "diverged at step 3"), _failed("cmp", "quick", "dni", 1, "killed"),
              _failed("other", "smoke", "dni", 2, "worker died")]
    cmp = _store(monkeypatch, [_crafted("bprop", 0, final_test_error=1.0)], failed)
    assert cmp.failed_runs("sqlite:///u", "cmp", "smoke").to_dict("records") == [
        {"model": "fcn3", "method": "cdni", "seed": 0, "status": "FAILED", "reason": "diverged at step 3"}]
    both = cmp.failed_runs("sqlite:///u", "cmp")
    assert both["seed"].tolist() == [0, 1] and list(both.index) == [0, 1]
    assert list(cmp.failed_runs("sqlite:///u", "other").index) == [0]          # numbered afresh, not its store row
    table = cmp.compare("sqlite:///u", "cmp")[0]
    text = cmp.render(table, "cmp", "smoke", "final_test_error", "bprop", failed=both)
    head, rest = text.split("\n\n", 1)
    assert head.startswith("Suite `cmp` at `smoke`: final_test_error (mean ± 95% CI over seeds)")
    assert rest.startswith("| model | method | seeds |")
    assert rest.endswith("2 run(s) FAILED or KILLED and are not in the table above:\n\n"
                         "| model | method | seed | status | reason |\n|---|---|---|---|---|\n"
                         "| fcn3 | cdni | 0 | FAILED | diverged at step 3 |\n| fcn3 | dni | 1 | FAILED | killed |\n")
    for none in (None, both.iloc[:0]):
        assert "FAILED" not in cmp.render(table, "cmp", "smoke", "final_test_error", "bprop", failed=none)
    out = tmp_path / "new" / "dir"
    for _ in range(2):                                                        # made, then written again
        path = cmp.write_comparison(table, out, "cmp", "smoke")
    import pandas as pd
    assert path == out / "compare_cmp_smoke.csv"
    assert pd.read_csv(path, dtype=str).columns.tolist() == table.columns.tolist()       # no index column
