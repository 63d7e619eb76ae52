"""`dnibench run` with nothing left to run, answered without torch or MLflow (issue 9, §3).

Planning a suite loads the method and task code (their settings' defaults are part of every run's config
hash), and torch with it; the store is opened through MLflow: about 4 s before a single run can be skipped.
So an invocation that plans remembers its plan: each suite's config hashes, in ``.<db>.plans.json`` next to
its sqlite store, under a key of everything the plan is made from (the suite files' bytes and paths, the
method files they name, the profile, seeds, device, shard and data flags, dnibench's own source, the
pydantic, PyYAML and numpy versions). A later invocation with the same key reads the FINISHED runs' hashes from
the sqlite file (read-only, as MLflow's own readers do) and, when no run is left, says so without
importing torch or MLflow. Anything else takes the full path, which is always right: no entry, another key,
a RUNNING run of this host (the full path sweeps those of dead owners), a store it cannot read, --force,
a server URI. The file is only a shortcut to the full path's own answer, never a source of results.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from . import store
from .errors import DnibenchError
from .suite import Suite, load_suite

FORMAT = 1
MAX_ENTRIES = 64                    # plans remembered per store; the oldest are dropped
PACKAGE = Path(__file__).resolve().parent
CHILD_ROLE = ("dnibench.role", "child")     # as runner.ROLE (runner imports torch)


@dataclass
class Outcome:
    """As runner.Outcome, for an invocation with nothing to run."""
    ran: int = 0
    skipped: int = 0                # aliases of another suite's run (runner.py) are FINISHED runs too
    shared: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


def plans_file(tracking_uri: str) -> Path | None:
    db = store.sqlite_path(tracking_uri)
    return None if db is None else db.parent / f".{db.name}.plans.json"


def _source_digest() -> str:
    """dnibench's own code and data files: method and task defaults live there."""
    h = hashlib.sha256()
    for path in sorted(p for p in PACKAGE.rglob("*") if p.suffix in (".py", ".yaml") and p.is_file()):
        h.update(str(path.relative_to(PACKAGE)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""


def plan_key(suites: list[Suite], profile: str, seeds: int | None, device: str, shard: tuple[int, int] | None,
             data_dir, cifar_dir) -> str:
    """A digest of everything ``runner.run_suites`` plans from, as given on the command line (the device
    and shard before torchrun's environment is applied: that environment is part of the key)."""
    from .methods import file_sha256, find_method_file      # torch-free: method modules load lazily
    parts = {"format": FORMAT, "profile": profile, "seeds": seeds, "device": device, "shard": shard,
             "data_dir": str(Path(data_dir).resolve()) if data_dir else None,
             "cifar_dir": str(Path(cifar_dir).resolve()) if cifar_dir else None,
             "env": {k: os.environ.get(k) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "CUDA_VISIBLE_DEVICES")},
             "python": sys.version, "pydantic": _version("pydantic"), "pyyaml": _version("PyYAML"),
             "numpy": _version("numpy"),                    # draws the uniform sweeps' values
             "source": _source_digest(), "suites": []}
    if device != "cpu":             # what "auto" or "cuda" resolves to depends on the torch build and the driver
        parts.update(torch=_version("torch"), nvidia=os.path.exists("/dev/nvidiactl"), host=platform.node())
    for suite in suites:
        path = Path(suite.path).resolve()
        methods = sorted({m for e in suite.entries for _, m in e.grid() if m.endswith(".py")})
        files = [(m, str(f), file_sha256(f)) for m in methods
                 for f in [find_method_file(m, Path(suite.path).parent if suite.path else None)]]
        parts["suites"].append({"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                                "method_files": files})
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("format") == FORMAT else {}


def remember(tracking_uri: str, key: str, suites: list[tuple[str, list[str], str | None]]) -> None:
    """Record a plan: per suite (name, config hashes, why its data was not provided or None). Written
    atomically; a failure to write (a read-only folder) costs only the shortcut."""
    path = plans_file(tracking_uri)
    if path is None or not path.parent.is_dir():
        return
    data = _read(path)
    plans = data.get("plans", {})
    plans[key] = {"written": time.time(),
                  "suites": [{"name": n, "hashes": list(h), "not_provided": r} for n, h, r in suites]}
    if len(plans) > MAX_ENTRIES:
        plans = dict(sorted(plans.items(), key=lambda kv: kv[1].get("written", 0))[-MAX_ENTRIES:])
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.")
        with os.fdopen(fd, "w") as f:
            json.dump({"format": FORMAT, "plans": plans}, f)
        os.chmod(tmp, 0o644)        # mkstemp makes 0600; a store may be shared
        os.replace(tmp, path)
    except OSError:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _finished(conn: sqlite3.Connection, name: str) -> set[str] | None:
    """The config hashes of the FINISHED child runs of experiment ``name`` (runner.finished_runs, read
    from the file); None when the name is ambiguous (MLflow workspaces)."""
    ids = [row[0] for row in conn.execute("SELECT experiment_id FROM experiments WHERE name = ?", (name,))]
    if len(ids) > 1:
        return None
    if not ids:
        return set()
    rows = conn.execute(
        "SELECT h.value FROM runs r JOIN tags h ON h.run_uuid = r.run_uuid AND h.key = 'config_hash' "
        "JOIN tags c ON c.run_uuid = r.run_uuid AND c.key = ? AND c.value = ? "
        "WHERE r.experiment_id = ? AND r.status = 'FINISHED' AND r.lifecycle_stage = 'active'",
        (*CHILD_ROLE, ids[0]))
    return {row[0] for row in rows}


def _running_here(conn: sqlite3.Connection) -> bool:
    """A RUNNING run owned by this host: alive (another invocation) or dead (to be marked KILLED)."""
    row = conn.execute("SELECT 1 FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = ? "
                       "WHERE r.status = 'RUNNING' AND t.value = ? LIMIT 1", (store.OWNER_HOST, platform.node()))
    return row.fetchone() is not None


def nothing_left(paths: list[str], profile: str, device: str, seeds: int | None, tracking_uri: str,
                 data_dir=None, cifar_dir=None, shard: tuple[int, int] | None = None) -> Outcome | None:
    """The outcome of ``run_suites`` when a remembered plan shows no run left to do, else None (then the
    caller runs the full path). Prints what the full path prints for a suite whose data is not provided."""
    cache = plans_file(tracking_uri)
    db = store.sqlite_path(tracking_uri)
    if cache is None or not cache.is_file() or not db.is_file():
        return None
    entry = _read(cache).get("plans", {}).get(
        plan_key([load_suite(p) for p in paths], profile, seeds, device, shard, data_dir, cifar_dir))
    if not entry:
        return None
    store.check_uri(tracking_uri, write=True)       # the full path's checks of the store, same errors
    try:
        conn = store.connect(db)
        try:
            if _running_here(conn):
                return None
            finished = [_finished(conn, s["name"]) for s in entry["suites"]]
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    outcome, messages = Outcome(), []
    for suite, done in zip(entry["suites"], finished):
        if done is None:
            return None
        hashes = suite["hashes"]
        outcome.skipped += sum(h in done for h in hashes)
        if all(h in done for h in hashes):
            continue
        if suite["not_provided"] is None:
            return None                             # a run to do: the full path does it
        messages.append(f"dnibench: skipping suite {suite['name']}: data not provided ({suite['not_provided']})")
    for line in messages:
        print(line, file=sys.stderr)
    return outcome
