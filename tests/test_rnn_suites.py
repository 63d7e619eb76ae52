"""The shipped recurrent suites at the smoke profile, end to end: MLflow runs with the RNN metrics, the
report section with its tables and figures; determinism; bad input (a PTB cache failing its checksum)."""
import hashlib
import random
import time

import pytest
import torch
from mlflow.tracking import MlflowClient

from dnibench import data
from dnibench.cli import main
from dnibench.report import write_report
from dnibench.runner import ROLE, run_suites
from dnibench.suite import load_suite, plan
from dnibench.tasks import get_task

SUITES = ["suites/rnn_copy.yaml", "suites/rnn_repeat_copy.yaml", "suites/rnn_ptb.yaml", "suites/rnn_multiscale.yaml"]


@pytest.fixture(scope="module")
def fake_ptb(tmp_path_factory, monkeypatch_module):
    """A data dir with a PTB cache in the canonical layout (small random text, its own md5s)."""
    rng = random.Random(0)
    words = ["the", "a", "<unk>", "n", "market", "of", "$", "N", "stock", "'s"]
    texts = {name: "".join(" " + " ".join(rng.choice(words) for _ in range(12)) + " \n" for _ in range(lines))
             for name, lines in [("train", 600), ("valid", 80), ("test", 80)]}
    folder = tmp_path_factory.mktemp("data") / "ptb"
    folder.mkdir()
    for name, text in texts.items():
        (folder / f"{name}.txt").write_text(text)
    monkeypatch_module.setattr(data, "PTB_MD5", {n: hashlib.md5(t.encode()).hexdigest() for n, t in texts.items()})
    return folder.parent


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp



@pytest.fixture(scope="module")
def smoke_store(tmp_path_factory, fake_ptb, one_thread):
    root = tmp_path_factory.mktemp("rnn")
    uri = f"sqlite:///{root}/m.db"
    t0 = time.perf_counter()
    out = run_suites(SUITES, "smoke", device="cpu", tracking_uri=uri, data_dir=fake_ptb, progress=False)
    return root, uri, out, time.perf_counter() - t0


def runs_of(uri, suite):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(suite)
    return client, client.search_runs([exp.experiment_id], filter_string=f"tags.`{ROLE}` = 'child'")


def test_smoke_suites_log_the_rnn_metrics(smoke_store):
    _, uri, out, seconds = smoke_store
    assert (out.ran, out.failed) == (58, 0)
    print(f"four RNN suites at smoke: {seconds:.1f} s")
    for suite in ["rnn_copy", "rnn_repeat_copy"]:
        client, runs = runs_of(uri, suite)
        assert len(runs) == 21 and all(r.info.status == "FINISHED" for r in runs)
        # both readings of the bootstrapped target: 8 DNI runs each (2 methods x 4 T)
        discounts = [r.data.params.get("method_args.target_discount") for r in runs]
        assert discounts.count("1.0") == 8 and discounts.count("0.1") == 8
        assert sorted((r.data.tags["method"], r.data.params["method_args.T"]) for r in runs)[:2] == \
            [("bptt", "2"), ("bptt", "3")]
        for run in runs:
            m = run.data.metrics
            assert {"train_bpc", "current_len", "max_len_solved", "samples_per_s", "wall_s/train"} <= set(m)
            assert 0 < m["train_bpc"] < 12
            if run.data.tags["method"] != "bptt":
                assert "synth_loss" in m
        # the smoke threshold (8.5 bits) lets the curriculum advance: its record is logged
        solved = [r for r in runs if r.data.metrics["max_len_solved"] >= 4]
        assert solved and all("samples_at_len/4" in r.data.metrics for r in solved)
        assert all(r.data.metrics["current_len"] > r.data.metrics["max_len_solved"] for r in runs)
    client, runs = runs_of(uri, "rnn_ptb")
    assert len(runs) == 13
    for run in runs:
        m = run.data.metrics
        assert {"valid_bpc", "test_bpc", "best_valid_bpc", "train_bpc"} <= set(m) and 0 < m["test_bpc"] < 8
        assert [p.step for p in client.get_metric_history(run.info.run_id, "valid_bpc")] == [5, 10]
    client, runs = runs_of(uri, "rnn_multiscale")
    assert sorted(r.data.params["task_args.message_gradient"] for r in runs) == ["method", "method", "none"]
    assert all(0 <= r.data.metrics["final_b_error"] <= 100 for r in runs)


def test_report_section_writes_tables_and_figures(smoke_store):
    root, uri, _, _ = smoke_store
    out = root / "reports"
    written = {p.name for p in write_report(uri, out)}
    for name in ["rnn_table_smoke.md", "rnn_table_smoke_cells.csv", "rnn_data_efficiency_smoke.png",
                 "rnn_ptb_curves_smoke.png", "rnn_ptb_curves_smoke.pdf", "rnn_multiscale_smoke.png"]:
        assert name in written and (out / name).stat().st_size > 0, name
    readme = (out / "README.md").read_text()
    assert "Recurrent DNI" in readme and "rnn_table_smoke" in readme
    table = (out / "rnn_table_smoke.md").read_text()
    assert "| Copy |" in table and "| Repeat Copy |" in table and "| PTB |" in table and "DNI+Aux T=5" in table
    cells = (out / "rnn_table_smoke_cells.csv").read_text()
    assert "not comparable at this profile" in cells and "within tolerance" not in cells


@pytest.mark.parametrize("suite", ["suites/rnn_repeat_copy.yaml", "suites/rnn_ptb.yaml", "suites/rnn_multiscale.yaml"])
def test_same_seed_same_metrics(suite, fake_ptb, one_thread):
    spec = [s for s in plan(load_suite(suite), "smoke") if s.method != "bptt"][0]
    task = get_task(spec.task)
    loaded = task.load(fake_ptb)

    def run():
        rows = []
        task.train(spec, loaded, lambda m, step: rows.append((step, {k: v for k, v in m.items()
                                                                      if "wall" not in k and "per_s" not in k and "cpu" not in k})))
        return rows
    first, second = run(), run()
    assert first == second and len(first) > 2


def test_ptb_checksum_failure_is_one_line_and_writes_nothing(tmp_path, fake_ptb, capsys):
    bad = tmp_path / "data" / "ptb"
    bad.mkdir(parents=True)
    for name in ["train", "valid", "test"]:
        (bad / f"{name}.txt").write_bytes((fake_ptb / "ptb" / f"{name}.txt").read_bytes())
    with open(bad / "valid.txt", "a") as f:
        f.write("tampered\n")
    db = tmp_path / "m.db"
    code = main(["run", "suites/rnn_ptb.yaml", "--profile", "smoke", "--device", "cpu", "--no-progress",
                 "--tracking-uri", f"sqlite:///{db}", "--data-dir", str(tmp_path / "data")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "valid.txt" in err and "md5" in err
    assert not db.exists()
