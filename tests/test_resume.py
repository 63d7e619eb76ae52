"""A rerun with every run FINISHED is answered from the plan remembered next to the store, without importing
torch or MLflow (issue 9, §3: it took ~4 s), and gives way to the full path whenever the answer could differ:
another suite file, a run left to do, a RUNNING run of this host. The store is read with sqlite3 directly."""
import json
import os
import platform
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from dnibench import resume, store
from dnibench.runner import run_suites

REPO = Path(__file__).resolve().parent.parent
MNIST = """
name: resume_ff
task: mnist
train: {steps: 2, batch_size: 4, lr: 1.0e-3, lr_decay_at: [], eval_every: 2, log_every: 1}
profiles: {smoke: {}, quick: {}, paper: {}}
entries:
  - model: fcn3
    method: [bprop, cdni]
"""
# CIFAR-10 without --cifar-dir is skipped with a message (as `make reproduce` does by default), and must
# not make a finished resume take the full path.
CIFAR = MNIST.replace("resume_ff", "resume_cifar").replace("task: mnist", "task: cifar10")

DRIVER = """
import contextlib, io, sys
from dnibench.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    rc = main(sys.argv[1:])
print(out.getvalue(), end="")
print("rc", rc, "torch", "torch" in sys.modules, "mlflow" in sys.modules)
"""


@pytest.fixture
def finished(tmp_path, fake_mnist_data_dir, monkeypatch):
    """Two suite files and a store in which every smoke run of them is FINISHED (a full run, in process)."""
    for name in ("WORLD_SIZE", "RANK", "MLFLOW_TRACKING_URI"):      # part of the plan's key
        monkeypatch.delenv(name, raising=False)
    suites = [tmp_path / "ff.yaml", tmp_path / "cifar.yaml"]
    suites[0].write_text(MNIST)
    suites[1].write_text(CIFAR)
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    outcome = run_suites([str(p) for p in suites], "smoke", "cpu", None, uri, data_dir=fake_mnist_data_dir,
                         progress=False)
    assert (outcome.ran, outcome.skipped, outcome.failed) == (2, 0, 0)
    return suites, uri, fake_mnist_data_dir


def rerun(suites, uri, data_dir, *extra):
    drop = ("MLFLOW_TRACKING_URI", "WORLD_SIZE", "RANK", "DNIBENCH_JOBS")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    args = ["run", *map(str, suites), "--profile", "smoke", "--device", "cpu", "--tracking-uri", uri,
            "--data-dir", str(data_dir), "--no-progress", *extra]
    proc = subprocess.run([sys.executable, "-c", DRIVER, *args], capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr


def child_runs(uri: str) -> list[tuple[str, str]]:
    db = uri[len("sqlite:///"):]
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return sorted(conn.execute("SELECT r.run_uuid, r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                                   "AND t.key = 'dnibench.role' AND t.value = 'child'").fetchall())


def test_a_finished_rerun_skips_everything_without_torch_or_mlflow(finished):
    suites, uri, data_dir = finished
    before = child_runs(uri)
    out, err = rerun(suites, uri, data_dir)
    assert "dnibench: 0 run(s) done, 2 already finished (skipped)" in out
    assert "rc 0 torch False False" in out, out
    assert "skipping suite resume_cifar: data not provided" in err     # as the full path says it
    assert child_runs(uri) == before                                   # nothing written to the store

    # Anything that could change the answer takes the full path (None). One fixture for all: each full run
    # costs seconds of imports.
    paths = [str(p) for p in suites]
    assert resume.nothing_left(paths, "smoke", "cpu", None, uri, data_dir).skipped == 2
    assert resume.nothing_left(paths, "smoke", "cpu", 2, uri, data_dir) is None        # another seed: runs left
    assert resume.nothing_left(paths, "smoke", "auto", None, uri, data_dir) is None    # another device flag
    assert resume.nothing_left(paths, "smoke", "cpu", None, uri, data_dir, shard=(0, 2)) is None
    # CIFAR-10 given now: its suite has runs to do, not the "data not provided" the plan remembered
    assert resume.nothing_left(paths, "smoke", "cpu", None, uri, data_dir, cifar_dir=data_dir) is None
    suites[0].write_text(MNIST.replace("lr: 1.0e-3", "lr: 2.0e-3"))     # the suite changed: another plan
    assert resume.nothing_left(paths, "smoke", "cpu", None, uri, data_dir) is None
    suites[0].write_text(MNIST)
    assert resume.nothing_left(paths, "smoke", "cpu", None, uri, data_dir).skipped == 2
    db = uri[len("sqlite:///"):]
    with sqlite3.connect(db) as conn:       # a RUNNING run of this host (the full path sweeps dead owners')
        conn.execute("UPDATE runs SET status = 'RUNNING' WHERE run_uuid = ?", (before[0][0],))
    assert resume.nothing_left(paths, "smoke", "cpu", None, uri, data_dir) is None

    from dnibench.clean import clean
    plans = resume.plans_file(uri)
    assert plans.is_file() and plans in clean(suites[0].parent / "reports", uri, log=lambda *_: None)
    assert not plans.exists()                                          # dnibench clean deletes it with the store


def test_the_shortcut_needs_a_sqlite_store_and_a_plan(tmp_path):
    suite = tmp_path / "ff.yaml"
    suite.write_text(MNIST)
    assert resume.nothing_left([str(suite)], "smoke", "cpu", None, "http://localhost:1") is None
    assert resume.nothing_left([str(suite)], "smoke", "cpu", None, f"sqlite:///{tmp_path / 'none.db'}") is None
    assert resume.plans_file(f"sqlite:///{tmp_path / 'a.db'}") == tmp_path / ".a.db.plans.json"
    (tmp_path / "a.db").touch()
    for text in ("{not json", '{"format": 99}', "[]"):      # a plans file it cannot read: the full path
        resume.plans_file(f"sqlite:///{tmp_path / 'a.db'}").write_text(text)
        assert resume.nothing_left([str(suite)], "smoke", "cpu", None, f"sqlite:///{tmp_path / 'a.db'}") is None


def test_the_plan_key_changes_with_everything_the_plan_is_made_from(tmp_path, monkeypatch):
    from dnibench.suite import load_suite
    launch_env = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "CUDA_VISIBLE_DEVICES")    # torchrun's and the GPUs' say
    for name in launch_env:
        monkeypatch.delenv(name, raising=False)
    suite_text, variant_text = MNIST.replace("[bprop, cdni]", "[bprop, variant.py]"), "# only its bytes count here\n"
    path, variant = tmp_path / "ff.yaml", tmp_path / "variant.py"
    path.write_text(suite_text)
    variant.write_text(variant_text)
    monkeypatch.chdir(tmp_path)

    def key(profile="smoke", seeds=None, device="cpu", shard=None, data_dir="data", cifar_dir=None):
        return resume.plan_key([load_suite(path)], profile, seeds, device, shard, data_dir, cifar_dir)

    base = key()
    assert key() == base and key(data_dir=tmp_path / "data") == base           # a data folder counts resolved
    others = [key(profile="quick"), key(seeds=2), key(device="auto"), key(shard=(0, 2)), key(data_dir="other"),
              key(data_dir=None), key(cifar_dir="cifar")]
    for name in launch_env:
        monkeypatch.setenv(name, "1")
        others.append(key())
        monkeypatch.delenv(name)
    variant.write_text("# edited\n")
    others.append(key())
    variant.write_text(variant_text)
    path.write_text(suite_text + "# a comment\n")
    others.append(key())
    assert len(set(others)) == len(others) and base not in others
    # What "auto" resolves to depends on the torch build: its version is in the key, not in a CPU run's
    path.write_text(suite_text)
    assert key() == base
    auto, real_version = key(device="auto"), resume._version
    monkeypatch.setattr(resume, "_version", lambda name: "9.9" if name == "torch" else real_version(name))
    assert key(device="auto") != auto and key() == base
    auto, real_exists = key(device="auto"), resume.os.path.exists      # and whether a driver is there, and the host
    monkeypatch.setattr(resume.os.path, "exists",
                        lambda p: (not real_exists(p)) if p == "/dev/nvidiactl" else real_exists(p))
    assert key(device="auto") != auto and key() == base
    auto = key(device="auto")
    monkeypatch.setattr(resume.platform, "node", lambda: "another-host")
    assert key(device="auto") != auto and key() == base


def test_the_source_digest_reads_the_packages_code_and_data_files(tmp_path, monkeypatch):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    files = {package / "a.py": "x = 1\n", package / "sub" / "b.yaml": "k: 1\n", package / "notes.txt": "n\n"}
    for path, text in files.items():
        path.write_text(text)
    monkeypatch.setattr(resume, "PACKAGE", package)
    base = resume._source_digest()
    (package / "notes.txt").write_text("other\n")
    assert resume._source_digest() == base                     # neither code nor a settings file
    for path in (package / "a.py", package / "sub" / "b.yaml"):
        path.write_text(files[path] + "# edited\n")
        assert resume._source_digest() != base, path.name
        path.write_text(files[path])
        assert resume._source_digest() == base
    (package / "a.py").rename(package / "c.py")                # the same bytes under another name
    assert resume._source_digest() != base


def test_finished_and_running_read_only_the_runs_that_count():
    """_finished: the config hashes of FINISHED, active child runs of one experiment name (None when the name
    is ambiguous); _running_here: a RUNNING run owned by this host. On the tables' columns they read."""
    conn = sqlite3.connect(":memory:")
    conn.executescript("CREATE TABLE experiments (experiment_id INTEGER, name TEXT);"
                       "CREATE TABLE runs (run_uuid TEXT, experiment_id INTEGER, status TEXT, lifecycle_stage TEXT);"
                       "CREATE TABLE tags (key TEXT, value TEXT, run_uuid TEXT);")
    conn.executemany("INSERT INTO experiments VALUES (?, ?)", [(1, "a"), (2, "twice"), (3, "twice"), (4, "other")])
    runs = [("done", 1, "FINISHED", "active", "child"), ("running", 1, "RUNNING", "active", "child"),
            ("deleted", 1, "FINISHED", "deleted", "child"), ("parent", 1, "FINISHED", "active", "parent"),
            ("failed", 1, "FAILED", "active", "child"), ("elsewhere", 4, "FINISHED", "active", "child")]
    for uuid, exp, status, stage, role in runs:
        conn.execute("INSERT INTO runs VALUES (?, ?, ?, ?)", (uuid, exp, status, stage))
        conn.executemany("INSERT INTO tags VALUES (?, ?, ?)", [("config_hash", f"h-{uuid}", uuid),
                                                               ("dnibench.role", role, uuid)])
    conn.execute("INSERT INTO runs VALUES ('norole', 1, 'FINISHED', 'active')")
    conn.execute("INSERT INTO tags VALUES ('config_hash', 'h-norole', 'norole')")
    assert resume._finished(conn, "a") == {"h-done"}
    assert resume._finished(conn, "twice") is None and resume._finished(conn, "none") == set()
    assert not resume._running_here(conn)                                  # RUNNING, but no owner here
    conn.execute("INSERT INTO tags VALUES (?, 'another-host', 'running')", (store.OWNER_HOST,))
    conn.execute("INSERT INTO tags VALUES (?, ?, 'done')", (store.OWNER_HOST, platform.node()))
    assert not resume._running_here(conn)                                  # another host's; a FINISHED one here
    conn.execute("UPDATE tags SET value = ? WHERE run_uuid = 'running' AND key = ?",
                 (platform.node(), store.OWNER_HOST))
    assert resume._running_here(conn)


def test_remembered_plans_keep_the_newest_entries_of_this_format(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = resume.plans_file(uri)
    clock = iter([50.0, 10.0, 30.0, 40.0, 60.0])          # written out of key order
    monkeypatch.setattr(resume.time, "time", lambda: next(clock))
    monkeypatch.setattr(resume, "MAX_ENTRIES", 3)
    for key in ("a", "b", "c"):
        resume.remember(uri, key, [("suite", ["h1", "h2"], None)])
    plans = json.loads(path.read_text())["plans"]
    assert sorted(plans) == ["a", "b", "c"] and plans["a"]["suites"] == [{"name": "suite", "hashes": ["h1", "h2"],
                                                                          "not_provided": None}]
    assert oct(path.stat().st_mode & 0o777) == "0o644"       # a store may be shared
    resume.remember(uri, "d", [("suite", [], "no --cifar-dir")])
    assert sorted(json.loads(path.read_text())["plans"]) == ["a", "c", "d"]    # b, the oldest written, dropped
    resume.remember(uri, "c", [("suite", ["h3"], None)])      # the same key again: replaced, none dropped
    plans = json.loads(path.read_text())["plans"]
    assert sorted(plans) == ["a", "c", "d"] and plans["c"]["suites"][0]["hashes"] == ["h3"]
    assert not list(tmp_path.glob(f"{path.name}.*"))          # no temporary file left
    # Another format (or not a mapping) is not read: remembering starts afresh
    for text in ('{"format": 99, "plans": {"old": {}}}', "[1, 2]", "{not json"):
        path.write_text(text)
        assert resume._read(path) == {}
        monkeypatch.setattr(resume.time, "time", lambda: 70.0)
        resume.remember(uri, "e", [])
        assert list(json.loads(path.read_text())["plans"]) == ["e"]


def test_a_plan_is_written_next_to_the_store_and_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = resume.plans_file(uri)
    resume.remember(uri, "a", [])
    moved, real_replace = [], resume.os.replace

    def replace(src, dst):
        moved.append((Path(src), Path(dst)))
        real_replace(src, dst)
    monkeypatch.setattr(resume.os, "replace", replace)
    resume.remember(uri, "b", [])
    (src, dst), = moved                     # written beside the store, under the plans file's name, then renamed
    assert src.parent == path.parent and src.name.startswith(f"{path.name}.") and dst == path
    before = path.read_text()

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(resume.os, "replace", full_disk)
    resume.remember(uri, "c", [])           # costs only the shortcut: no error, no temporary file, the old plans
    assert path.read_text() == before and sorted(json.loads(before)["plans"]) == ["a", "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
