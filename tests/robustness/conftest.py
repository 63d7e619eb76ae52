"""The bad-input contract (issue 8), checked through the real CLI in a subprocess.

Every bad input must give: a non-zero exit, exactly one short line on stderr naming the problem, no
traceback, no MLflow run left RUNNING in the store used, and no file written outside the store and
the data cache. ``sandbox.reject(*args, match=...)`` runs ``python -m dnibench.cli ARGS`` with the
working directory, the default store and the data cache all inside a fresh tmp dir, and checks all
of it; ``run_cli`` and the ``assert_*`` helpers are the pieces, for tests that need something else.
"""
from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAX_LINE = 400          # an error line a person can read (the alias bomb once printed 28 MB)


def run_cli(*args, cwd, env=None, timeout=60) -> subprocess.CompletedProcess:
    """``python -m dnibench.cli ARGS`` in ``cwd``; ``env`` adds to (a copy of) this process's
    environment, a value of None removes that variable."""
    full = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for key in ("MLFLOW_TRACKING_URI", "WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR"):
        full.pop(key, None)      # the caller's own store / launcher must not leak into a test
    for key, value in (env or {}).items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = str(value)
    return subprocess.run([sys.executable, "-m", "dnibench.cli", *map(str, args)], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=timeout)


# Each call's exit status and whether torch, MLflow and pandas had been imported by then: in one fresh interpreter.
_IMPORTS_DRIVER = """
import sys
from dnibench.cli import main
for argv in map(str.split, sys.argv[1:]):
    code = main(argv)
    print(code, *("torch" in sys.modules, "mlflow" in sys.modules, "pandas" in sys.modules))
"""


def imports_after(cwd: Path, env: dict, calls: list[str]) -> tuple[list[tuple[str, ...]], list[str]]:
    """Run CLI calls (space-separated argument strings) one after another in one fresh interpreter:
    ([(exit status, torch imported, mlflow imported, pandas imported) per call], its stderr lines)."""
    full = {**os.environ, **env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", _IMPORTS_DRIVER, *calls], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [tuple(line.split()) for line in proc.stdout.splitlines()], proc.stderr.splitlines()


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root: relative path -> (size, mtime_ns)."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            try:
                st = path.lstat()
            except OSError:
                continue
            out[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def assert_one_line_error(proc: subprocess.CompletedProcess, match: str | None = None) -> str:
    """Exit 2 (the README: input errors exit 2), one line on stderr (matching ``match``, a regex), no traceback.
    Returns the line."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (f"exit {proc.returncode} for bad input; stdout={proc.stdout[-500:]!r} "
                                  f"stderr={proc.stderr[-500:]!r}")
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {proc.stderr[-2000:]!r}"
    line = lines[0]
    assert len(line) <= MAX_LINE, f"error line of {len(line)} characters: {line[:300]!r}..."
    assert line.startswith("dnibench: "), line
    if match is not None:
        assert re.search(match, line), f"{line!r} does not match {match!r}"
    return line


def assert_no_running_runs(db: Path) -> None:
    """No run in the sqlite store ``db`` is RUNNING (read with sqlite3: no MLflow import needed)."""
    if not Path(db).is_file() or Path(db).stat().st_size == 0:
        return
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            rows = con.execute("SELECT name, status FROM runs WHERE status = 'RUNNING'").fetchall()
    except sqlite3.DatabaseError:      # not a store (a damaged-store case): it has no runs to leave
        return
    assert not rows, f"runs left RUNNING in {db}: {rows}"


def assert_no_writes(root: Path, before: dict, allowed: tuple[str, ...] = ()) -> None:
    """No file under root was created or changed, except under the ``allowed`` relative prefixes."""
    after = snapshot(root)
    changed = sorted(p for p in set(after) | set(before) if after.get(p) != before.get(p) and p in after)
    bad = [p for p in changed if not any(p == a or p.startswith(a.rstrip("/") + "/") for a in allowed)]
    assert not bad, f"files written outside the store and the data cache: {bad}"


@dataclass
class Sandbox:
    """A tmp working dir whose default store (``store/mlflow.db``, via MLFLOW_TRACKING_URI) and data
    cache (``data/``, via DNIBENCH_DATA) are inside it, so every write the CLI makes is visible."""
    cwd: Path
    env: dict = field(default_factory=dict)

    @property
    def store(self) -> Path:
        return self.cwd / "store" / "mlflow.db"

    @property
    def data(self) -> Path:
        return self.cwd / "data"

    def write(self, name: str, text: str) -> Path:
        path = self.cwd / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def run(self, *args, env=None, timeout=60) -> subprocess.CompletedProcess:
        return run_cli(*args, cwd=self.cwd, env={**self.env, **(env or {})}, timeout=timeout)

    def snapshot(self) -> dict:
        return snapshot(self.cwd)

    def assert_no_writes(self, before: dict, allowed: tuple[str, ...] = ("store", "data")) -> None:
        assert_no_writes(self.cwd, before, allowed)

    def reject(self, *args, match: str | None = None, env=None, timeout=60,
               store: Path | None = None, allowed: tuple[str, ...] = ("store", "data")) -> str:
        """Run the CLI with bad input and assert the whole contract; returns the error line."""
        before = snapshot(self.cwd)
        proc = self.run(*args, env=env, timeout=timeout)
        line = assert_one_line_error(proc, match)
        assert_no_running_runs(store or self.store)
        assert_no_writes(self.cwd, before, allowed)
        return line


def make_sandbox(tmp_path: Path) -> Sandbox:
    cwd = tmp_path / "cwd"
    cwd.mkdir(parents=True)
    return Sandbox(cwd, env={"MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'store' / 'mlflow.db'}",
                             "DNIBENCH_DATA": str(cwd / "data"), "HOME": str(tmp_path / "home")})


@pytest.fixture
def sandbox(tmp_path) -> Sandbox:
    return make_sandbox(tmp_path)


@dataclass
class Case:
    """One bad input: the files its sandbox holds (text, bytes, or None for an empty folder), the
    CLI arguments, extra environment, and the regex the error line must match."""
    id: str
    args: list
    match: str
    files: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)


@dataclass
class Outcome:
    sandbox: Sandbox
    before: dict
    proc: subprocess.CompletedProcess

    def check(self, match: str | None, allowed: tuple[str, ...] = ("store", "data")) -> str:
        """The whole contract, for a case already run."""
        line = assert_one_line_error(self.proc, match)
        assert_no_running_runs(self.sandbox.store)
        assert_no_writes(self.sandbox.cwd, self.before, allowed)
        return line


def run_cases(root: Path, cases: list[Case], workers: int | None = None) -> dict[str, Outcome]:
    """Run every case in its own sandbox under root, ``workers`` processes at a time (default: one per
    CPU): each case is still one CLI process, but a 2-core box checks two at once."""
    from concurrent.futures import ThreadPoolExecutor

    def one(case: Case) -> tuple[str, Outcome]:
        box = make_sandbox(root / case.id)
        for name, content in case.files.items():
            path = box.cwd / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if content is None:
                path.mkdir()
            elif isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
        before = snapshot(box.cwd)
        return case.id, Outcome(box, before, box.run(*case.args, env=case.env))

    ids = [case.id for case in cases]
    assert len(set(ids)) == len(ids), "case ids must be unique"
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2) as pool:   # subprocesses: no GIL contention
        return dict(pool.map(one, cases))


@pytest.fixture(scope="session")
def contract():
    """The helpers above for test modules (``import conftest`` by name is ambiguous: tests/ has one too)."""
    import types
    return types.SimpleNamespace(Case=Case, Outcome=Outcome, run_cases=run_cases, make_sandbox=make_sandbox,
                                 snapshot=snapshot, imports_after=imports_after,
                                 assert_one_line_error=assert_one_line_error, assert_no_writes=assert_no_writes,
                                 assert_no_running_runs=assert_no_running_runs)
