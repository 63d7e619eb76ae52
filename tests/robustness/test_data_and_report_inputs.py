"""The bad-input corpus, part 2: damaged data caches (and their repair by `dnibench data fetch`),
crafted store contents read by `report`/`compare`, and `dnibench clean` (issue 8)."""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


REPO = Path(__file__).resolve().parents[2]
SUITE = """\
name: tiny
task: mnist
train: {steps: 2, batch_size: 4, eval_every: 1, log_every: 1, train_subset: 8, test_subset: 4}
profiles: {smoke: {}, quick: {}, paper: {}}
entries:
  - model: fcn3
    method: bprop
"""


def _forge(cache):
    """Replace the cache with other arrays and write the sidecar that matches them."""
    buf = io.BytesIO()
    np.savez(buf, source=np.array("forged"), x_train=np.zeros((3, 5), np.float32))
    cache.write_bytes(buf.getvalue())
    cache.with_name("mnist.npz.sha256").write_text(f"{hashlib.sha256(buf.getvalue()).hexdigest()}  mnist.npz\n")


def _cache_dir(cache):
    cache.unlink()
    cache.mkdir()
    (cache / "something").write_text("x")


def _sidecar_dir(cache):
    side = cache.with_name("mnist.npz.sha256")
    side.unlink()
    side.mkdir()


DAMAGE = [
    ("empty-sidecar", lambda c: c.with_name("mnist.npz.sha256").write_text(""), r"mnist.npz: checksum does not match"),
    ("garbage-sidecar", lambda c: c.with_name("mnist.npz.sha256").write_text("not a checksum at all\n"),
     r"checksum does not match its sidecar \(expected no sha256"),
    ("cache-is-a-directory", _cache_dir, r"mnist.npz: not a regular file"),
    ("sidecar-is-a-directory", _sidecar_dir, r"mnist.npz.sha256: not a regular file"),
    ("truncated-cache", lambda c: c.write_bytes(c.read_bytes()[:1000]), r"checksum does not match"),
    ("forged-cache-and-sidecar", _forge, r"not an MNIST cache"),
]


def _fake_idx(folder):
    """MNIST IDX files of 12 train and 5 test random digits (the format tests/conftest.py writes)."""
    import struct
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for name, shape in (("train-images-idx3-ubyte", (12, 28, 28)), ("train-labels-idx1-ubyte", (12,)),
                        ("t10k-images-idx3-ubyte", (5, 28, 28)), ("t10k-labels-idx1-ubyte", (5,))):
        arr = rng.integers(0, 10 if len(shape) == 1 else 256, shape, dtype=np.uint8)
        (folder / name).write_bytes(struct.pack(f">4B{arr.ndim}I", 0, 0, 8, arr.ndim, *arr.shape) + arr.tobytes())
    return folder


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, contract):
    """Each damaged cache run through `run`, then through `data fetch` (the repair), two cases at a
    time; the PTB cases too. Returns id -> (outcome of run, result of fetch or None)."""
    from concurrent.futures import ThreadPoolExecutor

    from dnibench.data import fetch_mnist

    root = tmp_path_factory.mktemp("damaged")
    idx = _fake_idx(root / "idx")
    good = fetch_mnist(root / "good", idx_dir=idx, log=lambda *_: None)

    def mnist(case):
        case_id, damage, _ = case
        box = contract.make_sandbox(root / case_id)
        box.data.mkdir()
        for path in (good, good.with_name("mnist.npz.sha256")):
            shutil.copyfile(path, box.data / path.name)
        damage(box.data / "mnist.npz")
        box.write("suite.yaml", SUITE)
        before = contract.snapshot(box.cwd)
        outcome = contract.Outcome(box, before, box.run("run", "suite.yaml", "--profile", "smoke", "--no-progress"))
        return case_id, (outcome, box.run("data", "fetch", "mnist", "--from-idx", idx))

    def ptb(damage):
        box = contract.make_sandbox(root / f"ptb-{damage}")
        folder = box.data / "ptb"
        folder.mkdir(parents=True)
        for name in ("valid", "test"):
            (folder / f"{name}.txt").write_text(" a b \n")
        if damage == "directory":
            (folder / "train.txt").mkdir()
        else:
            (folder / "train.txt").write_text(" forged text \n")
        before = contract.snapshot(box.cwd)
        suite = str(REPO / "suites" / "rnn_ptb.yaml")
        proc = box.run("run", suite, "--profile", "smoke", "--no-progress")
        return f"ptb-{damage}", (contract.Outcome(box, before, proc), None)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        jobs = [pool.submit(mnist, case) for case in DAMAGE] + [pool.submit(ptb, d) for d in PTB_DAMAGE]
        return dict(job.result() for job in jobs)


@pytest.mark.parametrize("case_id,damage,match", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_damaged_mnist_cache_is_one_line_then_fetch_repairs_it(damaged, case_id, damage, match):
    from dnibench.data import load_mnist

    outcome, repaired = damaged[case_id]
    outcome.check(match)
    assert not outcome.sandbox.store.exists(), "a run store was created before the data was checked"
    assert repaired.returncode == 0, repaired.stderr[-2000:]
    assert "rebuilding the damaged MNIST cache" in repaired.stdout
    assert len(load_mnist(outcome.sandbox.data, fetch=False).y_train) == 12


PTB_DAMAGE = {"directory": r"ptb/train.txt: not a regular file.*dnibench data fetch ptb",
              "wrong-text": r"ptb/train.txt: md5 of PTB train is .*dnibench data fetch ptb"}


@pytest.mark.parametrize("damage", sorted(PTB_DAMAGE))
def test_damaged_ptb_cache_is_one_line(damaged, damage):
    damaged[f"ptb-{damage}"][0].check(PTB_DAMAGE[damage])


EVIL = ["../../evil", "/tmp/evil_abs", "..", "a/../../b"]


@pytest.fixture(scope="module")
def runs_store(tmp_path_factory):
    """A store written the way a shared tracking server could hold it: FINISHED child runs whose
    suite names come from whoever logged them. Made once (creating a store takes seconds), in a
    child process (the test process keeps MLflow out); each test copies it."""
    folder = tmp_path_factory.mktemp("runs_store")
    suites = {"tiny": ["bprop", "dni"], **{name: ["bprop", "dni"] for name in EVIL}}
    code = f"""
from mlflow.tracking import MlflowClient
client = MlflowClient({f"sqlite:///{folder / 'mlflow.db'}"!r})
for n, (suite, methods) in enumerate({suites!r}.items()):
    exp = client.create_experiment("exp" + str(n), artifact_location={(folder / "artifacts").as_uri()!r} + "/" + str(n))
    for i, method in enumerate(methods):
        run = client.create_run(exp, tags={{"dnibench.role": "child", "suite": suite, "profile": "smoke",
                                            "task": "mnist", "model": "fcn3", "method": method, "seed": "0",
                                            "device": "cpu", "config_hash": suite + method}})
        client.log_metric(run.info.run_id, "final_test_error", 10.0 + i)
        client.set_terminated(run.info.run_id, "FINISHED")
"""
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=folder)
    return folder / "mlflow.db"


def _store_with_runs(sandbox, runs_store) -> None:
    sandbox.store.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(runs_store, sandbox.store)


def test_crafted_suite_names_in_the_store_never_write_outside_out(sandbox, runs_store):
    evil = EVIL
    _store_with_runs(sandbox, runs_store)
    before = sandbox.snapshot()
    proc = sandbox.run("report", "--out", "out/rep")
    assert proc.returncode == 0, proc.stderr[-3000:]
    sandbox.assert_no_writes(before, allowed=("out/rep", "store"))
    assert not (sandbox.cwd.parent / "evil.png").exists()
    for name in evil[:2]:               # compare writes its CSV under --out too, whatever the name
        proc = sandbox.run("compare", name, "--out", "out/cmp")
        assert proc.returncode == 0, proc.stderr[-3000:]
    sandbox.assert_no_writes(before, allowed=("out/rep", "out/cmp", "store"))
    assert all(p.parent == sandbox.cwd / "out" / "cmp" for p in (sandbox.cwd / "out" / "cmp").rglob("*"))


def test_compare_baseline_not_in_the_store(sandbox, runs_store):
    _store_with_runs(sandbox, runs_store)
    sandbox.reject("compare", "tiny", "--baseline", "nope", match=r"--baseline 'nope'.*methods present: bprop, dni")


def test_clean_deletes_only_what_dnibench_wrote(sandbox, runs_store):
    _store_with_runs(sandbox, runs_store)
    (sandbox.cwd / "reports").mkdir()
    keep = [sandbox.write("reports/NOTES.md", "mine"), sandbox.write("store/other-artifacts/x", "other store")]
    proc = sandbox.run("report", "--out", "reports")
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = (sandbox.cwd / "reports" / ".manifest").read_text().split()
    assert "README.md" in written and "NOTES.md" not in written
    proc = sandbox.run("clean", "--out", "reports")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"deleted {sandbox.store}" in proc.stdout and "deleted reports/README.md" in proc.stdout
    assert not sandbox.store.exists() and not (sandbox.cwd / "reports" / "README.md").exists()
    assert all(p.exists() for p in keep)
