"""Bad tracking URIs and damaged stores through the real CLI: one line naming the problem, exit 2, no
traceback, nothing written (the contract in conftest.py). A damaged store is named and kept."""
import random
import socket

import pytest

SUITE = """
name: tiny
task: mnist
train: {steps: 2, batch_size: 4, lr: 1.0e-3, lr_decay_at: [], eval_every: 2, log_every: 1}
profiles: {smoke: {}, quick: {}, paper: {}}
entries:
  - model: [fcn3]
    method: [bprop]
"""


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


URIS = {
    "garbage": (lambda cwd: "garbage", r"'garbage': expected sqlite:///PATH"),
    "unknown scheme": (lambda cwd: "foo://x", r"'foo://x': expected sqlite:///PATH"),
    "in-memory": (lambda cwd: "sqlite://", r"in-memory store throws the results away"),
    "in-memory named": (lambda cwd: "sqlite:///:memory:", r"in-memory store"),
    "under a regular file": (lambda cwd: f"sqlite:///{cwd}/afile/m.db", r"afile is a file"),
    "a directory": (lambda cwd: f"sqlite:///{cwd}/adir", r"adir is a directory"),
    "unwritable directory": (lambda cwd: "sqlite:////proc/dnibench/m.db", r"cannot write in /proc"),
    "unreachable server": (lambda cwd: f"http://127.0.0.1:{closed_port()}", r"cannot reach the MLflow server"),
}


@pytest.mark.parametrize("case", list(URIS))
def test_bad_tracking_uri_for_run(sandbox, case):
    make_uri, match = URIS[case]
    suite = sandbox.write("tiny.yaml", SUITE)
    (sandbox.cwd / "afile").write_text("x")
    (sandbox.cwd / "adir").mkdir()
    sandbox.reject("run", suite, "--profile", "smoke", "--device", "cpu", "--tracking-uri", make_uri(sandbox.cwd),
                   match=match, timeout=30)
    assert not (sandbox.cwd / "mlruns").exists()


def damage(path, how: str) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    if how == "random bytes":
        blob = random.Random(0).randbytes(30_000)
    elif how == "empty":
        blob = b""
    else:                                   # a truncated SQLite file: a valid header, half the pages gone
        blob = b"SQLite format 3\x00\x10\x00\x01\x01\x00\x40\x20\x20" + bytes(2000)
    path.write_bytes(blob)
    return blob


@pytest.mark.parametrize("command,how", [("run", "random bytes"), ("report", "truncated"), ("compare", "empty")])
def test_damaged_store_is_named_and_kept(sandbox, command, how):
    blob = damage(sandbox.store, how)
    args = {"run": ["run", sandbox.write("tiny.yaml", SUITE), "--profile", "smoke", "--device", "cpu"],
            "report": ["report", "--out", sandbox.cwd / "reports"],       # not even --out is created
            "compare": ["compare", "tiny", "--out", sandbox.cwd / "reports"]}[command]
    line = sandbox.reject(*args, match=rf"the MLflow store {sandbox.store} is damaged .*move it aside", timeout=30)
    assert line.endswith("and rerun for a new store; dnibench deletes nothing")
    assert sandbox.store.read_bytes() == blob          # kept as it was, for the user to inspect
    assert not (sandbox.cwd / "reports").exists()


def test_a_bad_store_is_answered_before_torch_or_mlflow_is_imported(sandbox, contract):
    """A typo in --tracking-uri or a damaged store costs the user a fraction of a second, not the seconds
    of importing torch and MLflow: `run`, `report` and `compare` check the store first."""
    suite = sandbox.write("tiny.yaml", SUITE)
    damage(sandbox.store, "random bytes")
    calls = [f"run {suite} --profile smoke --tracking-uri garbage",
             f"run {suite} --profile smoke --tracking-uri sqlite:///{sandbox.store}",
             f"report --out {sandbox.cwd / 'reports'} --tracking-uri sqlite://",
             f"report --out {sandbox.cwd / 'reports'} --tracking-uri sqlite:///{sandbox.store}",
             f"compare tiny --out {sandbox.cwd / 'reports'} --tracking-uri foo://x",
             f"compare tiny --out {sandbox.cwd / 'reports'} --tracking-uri sqlite:///{sandbox.store}"]
    results, errors = contract.imports_after(sandbox.cwd, sandbox.env, calls)
    assert results == [("2", "False", "False", "False")] * len(calls), results
    assert len(errors) == len(calls) and all(line.startswith("dnibench: error: --tracking-uri") or
                                             "is damaged" in line for line in errors), errors
    assert not (sandbox.cwd / "reports").exists()
