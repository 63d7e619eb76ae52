"""The shipped CIFAR-10 suite: it runs at smoke on data in the standard format, and without the data
the runner skips it with a one-line notice instead of failing the whole invocation."""
import pytest
from mlflow.tracking import MlflowClient

from dnibench.errors import DataError
from dnibench.runner import ROLE, run_suites

SUITE = "suites/cifar10_ff.yaml"



def test_cifar10_suite_runs_at_smoke_on_cifar_format_data(tmp_path, fake_cifar_dir, capsys):
    import pickle
    folder = fake_cifar_dir[0] / "cifar-10-batches-py"
    for i in range(1, 6):          # 5 x 13 rows: the smoke batch (64) is refused above the training set's size
        batch = pickle.loads((folder / f"data_batch_{i}").read_bytes())
        batch[b"data"], batch[b"labels"] = batch[b"data"][[0, 1, 2] * 4 + [0]], (batch[b"labels"] * 5)[:13]
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    uri = f"sqlite:///{tmp_path}/m.db"
    from dnibench.cli import main                               # as the README says: --cifar-dir, the pickles' folder
    assert main(["run", SUITE, "--profile", "smoke", "--device", "cpu", "--tracking-uri", uri, "--cifar-dir",
                 str(folder), "--no-progress"]) == 0
    assert "dnibench: 8 run(s) done, 0 already finished (skipped)" in capsys.readouterr().out   # FCN-3, CNN-3 x 4
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("cifar10_ff")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{ROLE}` = 'child'")
    assert {(r.data.tags["model"], r.data.tags["method"]) for r in runs} == \
        {(m, k) for m in ("fcn3", "cnn3") for k in ("nobprop", "bprop", "dni", "cdni")}
    assert all(r.info.status == "FINISHED" and r.data.tags["task"] == "cifar10" for r in runs)
    assert all(0 <= r.data.metrics["final_test_error"] <= 100 for r in runs)


def test_without_cifar_dir_the_suite_is_skipped_with_a_notice(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/m.db"
    out = run_suites([SUITE], "smoke", device="cpu", tracking_uri=uri, progress=False)
    assert out.ran == 0
    notices = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dnibench:")]
    assert notices == ["dnibench: skipping suite cifar10_ff: data not provided (CIFAR-10 is not obtainable here: "
                   "pass --cifar-dir DIR (the cifar-10-batches-py folder))"]


def test_a_wrong_cifar_dir_is_still_an_error(tmp_path):
    with pytest.raises(DataError, match="no such directory"):
        run_suites([SUITE], "smoke", device="cpu", tracking_uri=f"sqlite:///{tmp_path}/m.db",
                   cifar_dir=tmp_path / "absent", progress=False)
