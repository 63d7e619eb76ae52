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
