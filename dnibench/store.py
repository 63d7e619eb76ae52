"""The MLflow tracking store: checking a tracking URI, creating a new sqlite store safely, opening it,
and recording who owns a run.

A new ``sqlite:///`` store is created under an exclusive file lock (``<db>.lock`` next to it) and
atomically: the schema is migrated in a temporary file next to the target, which is then renamed, so
an interrupted creation leaves either no store or a whole one, and two processes starting on one
fresh store (``--shard I/N``) never migrate it twice. A store that MLflow itself is creating in place (a
notebook's ``MlflowClient``, ``mlflow ui``, started at the same moment) is waited for (check_damaged,
``settle``), neither called damaged half-made nor migrated a second time over the other creator. Servers
(``http(s)://``) are checked, never created. Each run carries its owner (host, pid, process start time);
a RUNNING run whose owner on this host is gone (kill -9, power loss of the process) is marked KILLED by
the next invocation.
"""
from __future__ import annotations

import glob
import os
import platform
import sqlite3
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
from filelock import FileLock, Timeout

from .errors import DnibenchError

SQLITE = "sqlite:///"
SERVER_TIMEOUT_S = 5.0
LOCK_TIMEOUT_S = 300.0           # creating a store takes ~1 s; a holder this slow is stuck
OWNER_HOST, OWNER_PID, OWNER_START = "dnibench.owner.host", "dnibench.owner.pid", "dnibench.owner.start"
FAILURE_TAG = "failure"          # why a run is FAILED or KILLED (the runner, the pool, the dead-owner sweep)
SQLITE_MAGIC = b"SQLite format 3\x00"
SETTLE_QUIET_S = 1.0             # a store file (and journal) unchanged this long is not being created in place
SETTLE_MAX_S = 60.0              # how long a store still changing is waited for, at most


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URI (query string dropped), else None."""
    if not tracking_uri.startswith(SQLITE):
        return None
    return Path(tracking_uri[len(SQLITE):].split("?", 1)[0])


def forget_engines(db: Path) -> None:
    """Drop this process's MLflow connections to the sqlite file ``db`` before it is deleted. MLflow keeps, for the
    life of the process, one SQLAlchemy engine per store URI (``SqlAlchemyStore._engine_map``) and one store per URI
    holding its engine (the tracking store registry's cache); SQLAlchemy binds a relative sqlite path to the working
    folder of the engine's creation. Their pooled connection would go on writing to the deleted file ("attempt to
    write a readonly database"), and the same URI opened again in this process (after clean, or from another folder)
    would reach the old file. Nothing to do where MLflow's store was never imported (a separate `dnibench clean`)."""
    module = sys.modules.get("mlflow.store.tracking.sqlalchemy_store")
    engines = getattr(getattr(module, "SqlAlchemyStore", None), "_engine_map", None) or {}
    target = db.resolve()
    for uri in list(engines):
        path = sqlite_path(uri)
        if path is not None and path.resolve() == target:
            engines.pop(uri).dispose()
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    registry = getattr(utils, "_tracking_store_registry", None)
    getattr(getattr(registry, "_get_store_with_resolved_uri", None), "cache_clear", lambda: None)()


def check_uri(tracking_uri: str, write: bool) -> None:
    """Raise a one-line DnibenchError for a URI that cannot hold results: in-memory sqlite, an unknown
    scheme, a sqlite path under a regular file or in a directory this process cannot write (``write``),
    a damaged sqlite store, an MLflow server that does not answer within a few seconds. Creates nothing."""
    uri = tracking_uri
    if uri in ("sqlite://", SQLITE) or uri.startswith(SQLITE + ":memory:"):
        raise DnibenchError(f"--tracking-uri {uri}: an in-memory store throws the results away; "
                            "use sqlite:///PATH, e.g. sqlite:///results/mlflow.db")
    path = sqlite_path(uri)
    if path is not None:
        _check_sqlite_path(uri, path, write)
    elif uri.startswith(("http://", "https://")):
        _check_server(uri)
    else:
        raise DnibenchError(f"--tracking-uri {uri!r}: expected sqlite:///PATH (a local store, e.g. "
                            "sqlite:///results/mlflow.db) or http(s)://HOST:PORT (an MLflow server)")


def _check_sqlite_path(uri: str, path: Path, write: bool) -> None:
    if path.is_dir():
        raise DnibenchError(f"--tracking-uri {uri}: {path} is a directory, not a database file")
    ancestor = path.parent                  # Path("m.db").parent is Path(".")
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise DnibenchError(f"--tracking-uri {uri}: {ancestor} is a file, so {path} cannot be created under it")
    if path.exists():
        if not os.access(path, os.R_OK | (os.W_OK if write else 0)):
            raise DnibenchError(f"--tracking-uri {uri}: {path} is not {'writable' if write else 'readable'} "
                                "by this user")
        check_damaged(path)
    if write:
        try:   # a real write, not os.access: root passes os.access on read-only file systems
            fd, probe = tempfile.mkstemp(prefix=".dnibench-probe-", dir=ancestor)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise DnibenchError(f"--tracking-uri {uri}: cannot write in {ancestor} ({err.strerror})") from None


def _check_server(uri: str) -> None:
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=SERVER_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return                              # it answered: reachable (the client reports what it refuses)
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise DnibenchError(f"--tracking-uri {uri}: cannot reach the MLflow server ({reason}; waited at most "
                            f"{SERVER_TIMEOUT_S:.0f} s)") from None


def connect(path: Path, mode: str = "ro") -> sqlite3.Connection:
    """sqlite3 on a store's file by its file URI (a "#", "%" or space in the path is the path, not URI
    syntax), read-only unless ``mode`` says otherwise; waits up to a minute for a writer's lock."""
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode={mode}", uri=True, timeout=60)


def check_damaged(path: Path) -> None:
    """Raise a one-line DnibenchError naming ``path`` when it is not a whole MLflow sqlite store. A file that looks
    half-made (empty, or no MLflow tables yet) while it is still being written is another process's creation in
    place (MLflow's own client: a notebook, ``mlflow ui``): waited for until it is whole or quiet for
    SETTLE_QUIET_S (then damaged), at most SETTLE_MAX_S."""
    deadline = time.monotonic() + SETTLE_MAX_S
    while True:
        why, half_made = _damage(path)
        if why is None:
            return
        if not (half_made and _changed_within(path, SETTLE_QUIET_S) and time.monotonic() < deadline):
            raise DnibenchError(f"the MLflow store {path} is damaged ({why}): move it aside (e.g. rename it to "
                                f"{path.name}.damaged) and rerun for a new store; dnibench deletes nothing")
        time.sleep(0.05)


def _damage(path: Path) -> tuple[str | None, bool]:
    """What is wrong with the store file (None: nothing), and whether it is what a creation in place passes through."""
    with open(path, "rb") as f:
        head = f.read(len(SQLITE_MAGIC))
    if head != SQLITE_MAGIC:
        return ("empty file", True) if not head else ("not an SQLite database", False)
    # Read-write when allowed: a kill -9 mid-transaction leaves a hot journal that only a writer rolls back.
    mode = "rw" if os.access(path, os.W_OK) else "ro"
    try:
        conn = connect(path, mode)
        try:
            problems = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    except sqlite3.DatabaseError as err:
        return str(err), False
    if problems != ["ok"]:
        return "integrity check: " + " ".join(problems[0].split()), False   # its first problem, on one line
    if not {"alembic_version", "runs", "experiments"} <= tables:
        return "an SQLite file without MLflow's tables", True
    return None, False


def settle(path: Path) -> None:
    """Wait while another process creates the store at ``path`` in place, past check_damaged's half-made states:
    MLflow's own client makes a missing sqlite store where it stands (an empty file, its first tables, then each
    migration), and a store opened before its last migration would be migrated a second time over the other
    creator ("table ... already exists", or the other one fails). Returns at once for a store whose schema is at
    MLflow's head revision or a file quiet for SETTLE_QUIET_S (an older store: MLflow upgrades it, as before); else
    waits, at most SETTLE_MAX_S. Imports MLflow's store: for the path that opens it."""
    deadline, head = time.monotonic() + SETTLE_MAX_S, _head_revision()
    while time.monotonic() < deadline and _changed_within(path, SETTLE_QUIET_S) and not _at_head(path, head):
        time.sleep(0.05)


def _changed_within(path: Path, seconds: float) -> bool:
    """Whether the store file or its rollback journal was written in the last ``seconds``."""
    newest = 0.0
    for file in (path, path.parent / f"{path.name}-journal"):
        try:
            newest = max(newest, file.stat().st_mtime)
        except FileNotFoundError:
            pass
    return time.time() - newest < seconds


def _head_revision() -> str | None:
    """MLflow's latest schema revision (None from an MLflow without the function: quietness alone decides)."""
    from mlflow.store.db import utils
    latest = getattr(utils, "_get_latest_schema_revision", None)
    return None if latest is None else latest()


def _at_head(path: Path, head: str | None) -> bool:
    """Whether the store's schema is at revision ``head``: its creation (in place or here) is over."""
    if head is None:
        return False
    try:
        conn = connect(path)
        try:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:                   # not (yet) an SQLite file, no alembic_version yet
        return False
    return row is not None and row[0] == head


def creation_lock(path: Path) -> Path:
    """The lock file a new store at ``path`` is created under; empty, left next to the store."""
    return path.parent / f"{path.name}.lock"


def create_sqlite_store(path: Path, artifact_root: str | None) -> None:
    """Create and migrate a new store at ``path`` unless it exists: under ``<path>.lock``, in a
    temporary file next to it, renamed into place when whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(creation_lock(path)))
    try:
        lock.acquire(timeout=LOCK_TIMEOUT_S)
    except Timeout:
        raise DnibenchError(f"another process has held {lock.lock_file} for {LOCK_TIMEOUT_S:.0f} s while "
                            f"creating {path}; is it stuck?") from None
    try:
        for stale in path.parent.glob(f".{glob.escape(path.name)}.creating-*"):
            stale.unlink(missing_ok=True)   # left by a creator that died; under the lock nobody else is creating
        if path.exists():                   # another process created it while this one waited
            return
        tmp = path.parent / f".{path.name}.creating-{os.getpid()}"
        _migrate(tmp, artifact_root)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        try:    # a hard link never replaces a store something else (mlflow ui) created meanwhile
            os.link(tmp, path)
            tmp.unlink()
        except FileExistsError:
            tmp.unlink()
            return
        except OSError:                     # a file system without hard links: rename
            os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        lock.release()


def _migrate(tmp: Path, artifact_root: str | None) -> None:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    uri = SQLITE + str(tmp)
    try:
        SqlAlchemyStore(uri, artifact_root or tmp.parent.resolve().as_uri())
    finally:
        forget_engines(tmp)                 # closes the file before the rename


def open_store(tracking_uri: str, write: bool, artifact_root: str | None = None, checked: bool = False):
    """An MlflowClient on a checked store, or None for a sqlite store that does not exist and is only
    read (``write=False``: nothing to read, nothing created). ``write`` creates a missing sqlite store.
    ``checked``: check_uri already passed in this invocation."""
    from mlflow.tracking import MlflowClient
    if not checked:
        check_uri(tracking_uri, write)
    path = sqlite_path(tracking_uri)
    if path is not None:
        if not path.exists():
            if not write:
                return None
            create_sqlite_store(path, artifact_root)
        settle(path)                        # a store MLflow made in place meanwhile (create_sqlite_store then kept it)
    try:
        client = MlflowClient(tracking_uri)  # a sqlite store's schema is checked here
        client.search_experiments(max_results=1)
    except Exception as err:                # e.g. a store written by a newer MLflow (schema ahead of ours)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise DnibenchError(f"--tracking-uri {tracking_uri}: cannot open the store: {first}") from None
    return client


def owner_tags() -> dict[str, str]:
    """Who runs this process: the tags that let a later invocation tell a live run from a dead one."""
    me = psutil.Process()
    return {OWNER_HOST: platform.node(), OWNER_PID: str(me.pid), OWNER_START: f"{me.create_time():.3f}"}


def owner_alive(tags: dict[str, str]) -> bool:
    """False when the owner ran on this host and its process is gone (or the pid now belongs to another
    process: its start time differs); True otherwise (another host, or no owner recorded: unknown)."""
    if tags.get(OWNER_HOST) != platform.node() or OWNER_PID not in tags:
        return True
    try:
        proc = psutil.Process(int(tags[OWNER_PID]))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if OWNER_START not in tags:         # a live pid, but no start time to tell the owner from a reuse
            return True
        return abs(proc.create_time() - float(tags[OWNER_START])) < 1.0
    except psutil.NoSuchProcess:
        return False
    except (psutil.Error, ValueError):
        return True                         # cannot tell: never kill a run on a guess


def running_here(client, also: str = "") -> list:
    """Every RUNNING run of the store whose owner is on this host (``also``: more of the search's filter, e.g. a
    pid), every page read before the caller changes one: a page token is an offset into the runs the filter
    matches at the time of asking, and a run marked KILLED leaves them. The host is part of the filter: another
    machine sharing the store can have a run whose owner has the same pid."""
    from mlflow.entities import ViewType
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    host = platform.node().replace("'", "")
    found, token = [], None
    while experiments:
        page = client.search_runs(experiments, filter_string=f"attributes.status = 'RUNNING' and "
                                  f"tags.`{OWNER_HOST}` = '{host}'" + (f" and {also}" if also else ""),
                                  run_view_type=ViewType.ALL, max_results=1000, page_token=token)
        found += page
        token = page.token
        if not token:
            break
    return found


def mark_killed(client, run_id: str, reason: str) -> None:
    client.set_tag(run_id, FAILURE_TAG, reason)
    client.set_terminated(run_id, "KILLED")


def mark_dead_runs_killed(client) -> list[str]:
    """Mark KILLED every RUNNING run of the store whose owner on this host died, with a ``failure`` tag
    saying so. Returns their run ids."""
    marked = []
    for run in running_here(client):
        tags = run.data.tags
        if not owner_alive(tags):
            mark_killed(client, run.info.run_id, f"owner process {tags[OWNER_PID]} on {tags[OWNER_HOST]} died "
                        "(found by a later invocation)")
            marked.append(run.info.run_id)
    return marked
