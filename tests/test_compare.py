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
