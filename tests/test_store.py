"""The tracking store (dnibench/store.py): URI checks, damaged stores, atomic creation under a lock,
run owners and the runs a dead owner left RUNNING."""
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from cli_processes import wait_for
from dnibench import interrupt, store
from dnibench.errors import DnibenchError
from dnibench.report.context import load_failed_runs

REPO = Path(__file__).resolve().parent.parent


def one_line_error(call) -> str:
    with pytest.raises(DnibenchError) as info:
        call()
    text = str(info.value)
    assert "\n" not in text and len(text) < 400, text
    return text


@pytest.fixture(scope="module")
def whole_store(tmp_path_factory) -> Path:
    """A freshly created store (its bytes are copied by tests that damage or fill one)."""
    path = tmp_path_factory.mktemp("store") / "m.db"
    store.create_sqlite_store(path, None)
    return path


def store_copy(whole_store: Path, folder: Path) -> Path:
    """A whole store of one's own to change: the module's fresh store copied byte for byte."""
    path = folder / "m.db"
    path.write_bytes(whole_store.read_bytes())
    return path


def gone_pid() -> int:
    """The pid of a process that has exited and been waited for."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def closed_port() -> int:
    import socket
    with socket.socket() as sock:          # a port nobody listens on once this socket is closed
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_bad_tracking_uris_are_one_line_errors_and_create_nothing(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir.db").mkdir()
    cases = {"garbage": "expected sqlite:///PATH", "foo://x": "expected sqlite:///PATH",
             "sqlite://": "in-memory", "sqlite:///:memory:": "in-memory",
             f"sqlite:///{tmp_path}/afile/sub/m.db": "afile is a file",
             f"sqlite:///{tmp_path}/adir.db": "is a directory",
             "sqlite:////proc/dnibench-test/m.db": "cannot write in /proc"}
    for uri, needle in cases.items():
        assert needle in one_line_error(lambda: store.check_uri(uri, write=True)), uri
    before = time.monotonic()
    text = one_line_error(lambda: store.check_uri(f"http://127.0.0.1:{closed_port()}", write=True))
    assert "cannot reach the MLflow server" in text and time.monotonic() - before < store.SERVER_TIMEOUT_S + 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.db", "afile"]


def test_a_server_is_asked_for_its_health_and_given_at_most_its_timeout(monkeypatch):
    """`--tracking-uri http://...`: GET /health (a trailing slash or a path kept), any HTTP answer counts as
    reachable (the client says what it refuses), no answer within SERVER_TIMEOUT_S is one line with the reason."""
    import http.server
    import socket
    import threading
    paths = []

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            paths.append(self.requestline.split()[1])     # as sent (self.path has "//" made "/")
            self.send_response(200 if paths[-1] == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        for uri in (url, url + "/", url + "/mlflow"):
            store.check_uri(uri, write=True)
        assert paths == ["/health", "/health", "/mlflow/health"]
    finally:
        server.shutdown()
        server.server_close()
    refused = one_line_error(lambda: store.check_uri(f"http://127.0.0.1:{closed_port()}", write=True))
    assert "cannot reach the MLflow server (" in refused and "Connection refused" in refused
    assert "urlopen error" not in refused                # the reason, not urllib's wrapper around it
    monkeypatch.setattr(store, "SERVER_TIMEOUT_S", 1.0)
    with socket.socket() as silent:                 # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        errors = []
        check = threading.Thread(target=lambda: errors.append(one_line_error(
            lambda: store.check_uri(f"http://127.0.0.1:{silent.getsockname()[1]}", write=True))), daemon=True)
        started = time.monotonic()
        check.start()
        check.join(20)
        assert not check.is_alive() and time.monotonic() - started < 10
    assert "timed out" in errors[0] and errors[0].endswith("waited at most 1 s)")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in any directory")
def test_unwritable_directory_is_refused_at_once(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert "cannot write in" in one_line_error(lambda: store.check_uri(f"sqlite:///{locked}/m.db", write=True))
        store.check_uri(f"sqlite:///{locked}/m.db", write=False)      # reading a missing store is fine
    finally:
        locked.chmod(0o700)


def test_uri_messages_name_the_uri_and_what_this_user_may_not_do(tmp_path, monkeypatch, whole_store):
    for uri in ("sqlite://", "sqlite:///:memory:"):
        assert one_line_error(lambda: store.check_uri(uri, write=True)) == (
            f"--tracking-uri {uri}: an in-memory store throws the results away; "
            "use sqlite:///PATH, e.g. sqlite:///results/mlflow.db")
    path = store_copy(whole_store, tmp_path)
    uri = f"sqlite:///{path}"
    assert one_line_error(lambda: store.check_uri(f"sqlite:///{tmp_path}", write=False)) == (
        f"--tracking-uri sqlite:///{tmp_path}: {tmp_path} is a directory, not a database file")
    # os.access as a user without write permission sees it (root, which these tests may run as, sees none)
    monkeypatch.setattr(store.os, "access", lambda p, mode: not mode & os.W_OK)
    assert one_line_error(lambda: store.check_uri(uri, write=True)) == (
        f"--tracking-uri {uri}: {path} is not writable by this user")
    store.check_uri(uri, write=False)                         # reading needs only R_OK
    monkeypatch.setattr(store.os, "access", lambda p, mode: False)
    assert one_line_error(lambda: store.check_uri(uri, write=False)) == (
        f"--tracking-uri {uri}: {path} is not readable by this user")


def test_a_store_of_another_schema_is_one_line_naming_the_store(tmp_path, whole_store, capsys):
    """A store written by a newer MLflow (its schema ahead of this one's): MLflow refuses it when the client is
    made, which was outside the check and ended `dnibench report` in a traceback."""
    from dnibench.cli import main
    path = store_copy(whole_store, tmp_path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    uri = f"sqlite:///{path}"
    with pytest.raises(DnibenchError) as info:
        store.open_store(uri, write=False)
    text, prefix = str(info.value), f"--tracking-uri {uri}: cannot open the store: "
    assert "\n" not in text
    assert text.startswith(prefix + "Detected out-of-date database schema (found version ffffffffffff")
    assert len(text) - len(prefix) == 300          # its first line, cut
    assert main(["report", "--tracking-uri", uri, "--out", str(tmp_path / "reports")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot open the store: Detected out-of-date database schema" in err[0]
    assert not (tmp_path / "reports").exists()


def test_a_new_store_keeps_artifacts_where_it_is_told(tmp_path):
    root = (tmp_path / "artifacts").as_uri()
    client = store.open_store(f"sqlite:///{tmp_path / 'm.db'}", write=True, artifact_root=root)
    assert client.get_experiment("0").artifact_location == f"{root}/0"      # MLflow adds the experiment's id


def test_dead_runs_are_looked_for_on_every_page_of_every_experiment(monkeypatch):
    """mark_dead_runs_killed asks for this host's RUNNING runs (its name without quotes, deleted experiments and
    runs too) page by page until the last, and marks the dead owners' runs KILLED with the reason."""
    from types import SimpleNamespace as NS

    from mlflow.entities import ViewType
    monkeypatch.setattr(store.platform, "node", lambda: "o'host")
    gone = gone_pid()
    dead = {store.OWNER_HOST: "o'host", store.OWNER_PID: str(gone), store.OWNER_START: "1.000"}

    def run(run_id, tags):
        return NS(info=NS(run_id=run_id), data=NS(tags=tags))

    class Page(list):
        def __init__(self, runs, token):
            super().__init__(runs)
            self.token = token
    pages = {None: Page([run("r1", dead), run("r2", {})], "p2"), "p2": Page([run("r3", dead)], "")}
    calls, done = [], []

    class Client:
        def search_experiments(self, view_type):
            assert view_type == ViewType.ALL
            return [NS(experiment_id="1"), NS(experiment_id="2")]

        def search_runs(self, experiments, filter_string, run_view_type, max_results, page_token):
            calls.append((experiments, filter_string, run_view_type, max_results, page_token))
            return pages[page_token]

        def set_tag(self, run_id, key, value):
            done.append((run_id, key, value))

        def set_terminated(self, run_id, status):
            done.append((run_id, status))
    assert store.mark_dead_runs_killed(Client()) == ["r1", "r3"]
    query = "attributes.status = 'RUNNING' and tags.`dnibench.owner.host` = 'ohost'"
    assert calls == [(["1", "2"], query, ViewType.ALL, 1000, None), (["1", "2"], query, ViewType.ALL, 1000, "p2")]
    why = f"owner process {gone} on o'host died (found by a later invocation)"
    assert done == [("r1", "failure", why), ("r1", "KILLED"), ("r3", "failure", why), ("r3", "KILLED")]


def test_uri_forms_paths_and_schemes(tmp_path):
    assert store.sqlite_path("sqlite:///results/m.db") == Path("results/m.db")
    assert store.sqlite_path("sqlite:////abs/m.db?mode=ro") == Path("/abs/m.db")
    assert store.sqlite_path("sqlite:///a b/m.db?x=1?y") == Path("a b/m.db")        # the first "?" ends the path
    assert store.sqlite_path("http://host:5000") is None and store.sqlite_path("sqlite://") is None
    assert one_line_error(lambda: store.check_uri("ftp://host/m.db", write=False)) == (
        "--tracking-uri 'ftp://host/m.db': expected sqlite:///PATH (a local store, e.g. sqlite:///results/mlflow.db) "
        "or http(s)://HOST:PORT (an MLflow server)")
    for scheme in ("http", "https"):          # a server either way: asked, not refused as an unknown scheme
        assert "cannot reach the MLflow server" in one_line_error(
            lambda: store.check_uri(f"{scheme}://127.0.0.1:{closed_port()}", write=False))
    client = store.open_store(f"sqlite:///{tmp_path}/a/b/c/m.db", write=True)    # missing folders are made
    assert client is not None and (tmp_path / "a" / "b" / "c" / "m.db").is_file()
    empty = tmp_path / "empty.db"
    empty.touch()
    assert one_line_error(lambda: store.check_damaged(empty)).startswith(
        f"the MLflow store {empty} is damaged (empty file): move it aside")


def test_a_missing_store_is_not_created_by_readers(tmp_path):
    uri = f"sqlite:///{tmp_path}/none/m.db"
    assert store.open_store(uri, write=False) is None
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("damage", ["truncated", "random", "empty", "foreign", "freelist"])
def test_a_damaged_store_names_the_file_and_is_kept(tmp_path, whole_store, damage):
    path = tmp_path / "mlflow.db"
    whole = whole_store.read_bytes()
    if damage == "truncated":
        path.write_bytes(whole[:len(whole) // 2])
    elif damage == "random":
        path.write_bytes(random.Random(0).randbytes(20_000))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "freelist":              # opens and reads, but its header counts 3 free pages it does not have
        path.write_bytes(whole[:36] + (3).to_bytes(4, "big") + whole[40:])
    else:                                   # an SQLite file, but not MLflow's
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE t (x)")
    before = path.read_bytes()
    text = one_line_error(lambda: store.open_store(f"sqlite:///{path}", write=True))
    why = {"truncated": "database disk image is malformed", "random": "not an SQLite database", "empty": "empty file",
           "foreign": "an SQLite file without MLflow's tables",
           "freelist": "integrity check: *** in database main *** Main freelist: size is 0 but should be 3"}[damage]
    assert f"MLflow store {path} is damaged ({why}): move it aside (e.g. rename it to mlflow.db.damaged)" in text
    assert path.read_bytes() == before      # never repaired or deleted behind the user's back


def test_interrupted_creation_leaves_no_store_and_the_next_one_succeeds(tmp_path, monkeypatch):
    path = tmp_path / "m.db"
    real = store._migrate

    def half_then_fail(tmp, root):
        tmp.write_bytes(b"SQLite format 3\x00 half a migration")
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "_migrate", half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        store.create_sqlite_store(path, None)
    assert not path.exists()                # the half-migrated file never took the store's name
    monkeypatch.setattr(store, "_migrate", real)
    client = store.open_store(f"sqlite:///{path}", write=True)
    assert [e.name for e in client.search_experiments()] == ["Default"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.db", "m.db.lock"]   # the leftover is gone


def test_kill_9_during_creation_leaves_no_store_or_a_whole_one(tmp_path):
    """A real process creating a store is killed while the migration runs."""
    path = tmp_path / "m.db"
    code = f"from pathlib import Path; from dnibench.store import create_sqlite_store; create_sqlite_store(Path({str(path)!r}), None)"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not list(tmp_path.glob(".m.db.creating-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    delay = random.Random(os.getpid()).uniform(0, 0.5)
    time.sleep(delay)
    proc.kill()
    proc.wait()
    try:
        if path.exists():                       # the rename happened before the kill: it must be whole
            store.check_damaged(path)
        store.create_sqlite_store(path, None)   # either way the next invocation gets a whole store
        store.check_damaged(path)
        assert not list(tmp_path.glob(".m.db.creating-*"))
    except BaseException as err:                # a failure says at which moment the kill came, to redo it
        err.add_note(f"killed {delay:.3f} s after the temporary store appeared")
        raise


def test_marking_runs_killed_reads_every_page_before_it_changes_one():
    """MLflow's page token is an offset into the runs the filter matches now: a run marked KILLED leaves that set,
    so marking page by page skipped as many runs as the first page held. All pages are read first."""
    from types import SimpleNamespace as NS
    gone = gone_pid()
    runs = {f"r{i}": NS(info=NS(run_id=f"r{i}", status="RUNNING"), data=NS(tags={
        store.OWNER_HOST: store.platform.node(), store.OWNER_PID: str(gone)})) for i in range(5)}

    class Page(list):
        token = None

    class Client:                   # pages of 2 over the runs RUNNING at the time of asking
        def search_experiments(self, view_type):
            return [NS(experiment_id="1")]

        def search_runs(self, experiments, filter_string, run_view_type, max_results, page_token):
            running = [r for r in runs.values() if r.info.status == "RUNNING"]
            start = int(page_token or 0)
            page = Page(running[start:start + 2])
            page.token = str(start + 2) if start + 2 < len(running) else ""
            return page

        def set_tag(self, run_id, key, value):
            pass

        def set_terminated(self, run_id, status):
            runs[run_id].info.status = status
    assert store.mark_dead_runs_killed(Client()) == list(runs)
    assert {r.info.status for r in runs.values()} == {"KILLED"}


def test_a_dead_workers_runs_are_the_ones_of_its_pid_on_this_host(tmp_path, whole_store):
    """The pool (--jobs) marks KILLED the RUNNING runs its dead worker owned: its pid on this host, not a run
    of another machine sharing the store whose owner has the same pid, nor a finished one."""
    from dnibench.pool import WorkerPool
    client = store.open_store(f"sqlite:///{store_copy(whole_store, tmp_path)}", write=True)
    exp = client.create_experiment("jobs")
    me = store.owner_tags()
    owners = {"mine": me, "other host": {**me, store.OWNER_HOST: "another-host"},
              "other pid": {**me, store.OWNER_PID: str(int(me[store.OWNER_PID]) + 1)}, "finished": me}
    ids = {name: client.create_run(exp, tags=tags).info.run_id for name, tags in owners.items()}
    client.set_terminated(ids["finished"], "FINISHED")
    workers = WorkerPool.__new__(WorkerPool)             # no processes: only the marking
    workers.client = client
    workers._mark_killed(int(me[store.OWNER_PID]), "worker process died")
    status = {name: client.get_run(run_id).info.status for name, run_id in ids.items()}
    assert status == {"mine": "KILLED", "other host": "RUNNING", "other pid": "RUNNING", "finished": "FINISHED"}
    assert client.get_run(ids["mine"]).data.tags["failure"] == "worker process died"
    assert "failure" not in client.get_run(ids["other host"]).data.tags


def test_dead_owners_running_runs_are_marked_killed(tmp_path, whole_store):
    path = store_copy(whole_store, tmp_path)
    uri = f"sqlite:///{path}"
    client = store.open_store(uri, write=True)
    exp = client.create_experiment("tiny")
    gone = gone_pid()
    me = store.owner_tags()
    owners = {"dead": {**me, store.OWNER_PID: str(gone)},
              "reused": {**me, store.OWNER_START: f"{float(me[store.OWNER_START]) - 100:.3f}"},  # pid now another process
              "alive": me,
              "elsewhere": {**me, store.OWNER_HOST: "another-host", store.OWNER_PID: str(gone)},
              "unknown": {}}
    ids = {}
    for name, owner in owners.items():
        tags = {"dnibench.role": "child", "suite": "tiny", "profile": "smoke", "model": "fcn3", "method": name,
                "seed": "0", "config_hash": name, **owner}
        ids[name] = client.create_run(exp, tags=tags).info.run_id
    # `dnibench report`, as a user runs it after a kill -9: it marks them first (load_failed_runs, which compare reads too)
    from dnibench.cli import main
    (tmp_path / "no_suites").mkdir()
    assert main(["report", "--tracking-uri", uri, "--out", str(tmp_path / "reports"),
                 "--suites-dir", str(tmp_path / "no_suites")]) == 0
    for name, run_id in ids.items():
        run = client.get_run(run_id)
        assert run.info.status == ("KILLED" if name in ("dead", "reused") else "RUNNING"), name
    reason = client.get_run(ids["dead"]).data.tags["failure"]
    assert reason == f"owner process {gone} on {me[store.OWNER_HOST]} died (found by a later invocation)"
    readme = (tmp_path / "reports" / "README.md").read_text()
    assert "Child runs in the store by status: KILLED 2, RUNNING 3." in readme
    assert "2 run(s) FAILED or KILLED" in readme and f"| KILLED | {reason} |" in readme
    failed = load_failed_runs(uri)
    assert sorted(failed["method"]) == ["dead", "reused"] and set(failed["status"]) == {"KILLED"}
    assert failed.attrs["status_counts"] == {"KILLED": 2, "RUNNING": 3}
    assert store.mark_dead_runs_killed(client) == []            # marked once


def test_owner_alive_decides_only_what_it_can_tell():
    """Dead only when the owner ran on this host and its pid is gone, a zombie, or now another process's (its
    start time differs by a second or more); alive for another host, no pid, or a start time it cannot read."""
    me = store.owner_tags()
    gone = gone_pid()
    start = float(me[store.OWNER_START])
    assert store.owner_alive(me)
    assert store.owner_alive({**me, store.OWNER_START: f"{start + 0.4:.3f}"})    # the tag keeps 3 decimals
    assert not store.owner_alive({**me, store.OWNER_START: f"{start + 1.5:.3f}"})   # the pid was reused
    assert not store.owner_alive({**me, store.OWNER_PID: str(gone)})
    assert store.owner_alive({**me, store.OWNER_HOST: "another-host", store.OWNER_PID: str(gone)})
    assert store.owner_alive({**me, store.OWNER_HOST: "another-host"})
    assert store.owner_alive({store.OWNER_HOST: me[store.OWNER_HOST]})            # no pid: unknown
    assert store.owner_alive({}) and store.owner_alive({store.OWNER_PID: str(gone)})
    no_start = {k: v for k, v in me.items() if k != store.OWNER_START}
    assert store.owner_alive(no_start)                                            # live pid, no start: unknown
    assert not store.owner_alive({**no_start, store.OWNER_PID: str(gone)})    # but a gone pid is gone
    assert store.owner_alive({**me, store.OWNER_START: "yesterday"})              # unreadable: never kill on a guess
    assert store.owner_alive({**me, store.OWNER_PID: "not-a-pid"})
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])                      # exited, not yet waited for
    try:
        deadline = time.monotonic() + 30
        while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.02)
        zombie_tags = {**me, store.OWNER_PID: str(zombie.pid),
                       store.OWNER_START: f"{psutil.Process(zombie.pid).create_time():.3f}"}
        assert not store.owner_alive(zombie_tags)
    finally:
        zombie.wait()


def test_a_signal_is_recorded_and_raised_only_at_a_safe_point():
    previous = interrupt.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)    # the handler must not raise: it could land in a GC callback
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
    finally:
        interrupt.restore(previous)
    assert signal.getsignal(signal.SIGTERM) is previous[signal.SIGTERM]
    interrupt.check()                       # the signal stopped that invocation, not the next one in this process


def test_forgetting_a_stores_engines_drops_only_those_on_its_file(tmp_path, monkeypatch):
    """store.forget_engines (dnibench clean): MLflow's engines on the deleted file are disposed of and dropped, every
    spelling of its URI; another file's and a server's are kept; MLflow's store cache is cleared."""
    import sys
    import types
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking._tracking_service import utils

    class Engine:
        disposed = False

        def dispose(self):
            self.disposed = True
    db, other = tmp_path / "m.db", tmp_path / "other.db"
    monkeypatch.chdir(tmp_path)
    engines = {f"sqlite:///{db}": Engine(), "sqlite:///m.db?timeout=5": Engine(), f"sqlite:///{other}": Engine(),
               "postgresql://host/db": Engine()}
    kept = {key: engines[key] for key in (f"sqlite:///{other}", "postgresql://host/db")}
    gone = [engines[f"sqlite:///{db}"], engines["sqlite:///m.db?timeout=5"]]
    monkeypatch.setattr(SqlAlchemyStore, "_engine_map", engines)
    cleared = []
    monkeypatch.setattr(utils._tracking_store_registry, "_get_store_with_resolved_uri",
                        types.SimpleNamespace(cache_clear=lambda: cleared.append(True)))
    store.forget_engines(db)
    assert engines == kept and all(e.disposed for e in gone) and not any(e.disposed for e in kept.values())
    assert cleared == [True]
    # an MLflow without these internals: nothing to forget, no error
    for name in ("mlflow.store.tracking.sqlalchemy_store", "mlflow.tracking._tracking_service.utils"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    store.forget_engines(db)
    bare = types.ModuleType("utils")
    bare._tracking_store_registry = types.SimpleNamespace(_get_store_with_resolved_uri=object())
    monkeypatch.setitem(sys.modules, "mlflow.tracking._tracking_service.utils", bare)
    store.forget_engines(db)


def test_a_store_that_cannot_be_opened_is_named_with_its_first_line(tmp_path, monkeypatch, whole_store):
    import mlflow.tracking

    class Refusing:
        def __init__(self, uri):
            pass

        def search_experiments(self, max_results):
            raise self.error
    path = store_copy(whole_store, tmp_path)
    monkeypatch.setattr(mlflow.tracking, "MlflowClient", Refusing)
    for error, first in [(RuntimeError("schema ahead\nmore"), "schema ahead"), (KeyError(), "KeyError")]:
        Refusing.error = error
        with pytest.raises(DnibenchError) as err:
            store.open_store(f"sqlite:///{path}", write=False)
        assert str(err.value) == f"--tracking-uri sqlite:///{path}: cannot open the store: {first}"


def test_a_creation_lock_held_too_long_is_one_line_naming_the_lock_and_the_store(tmp_path, monkeypatch):
    from filelock import FileLock
    path = tmp_path / "m.db"
    monkeypatch.setattr(store, "LOCK_TIMEOUT_S", 1.0)
    with FileLock(str(tmp_path / "m.db.lock")):      # flock: another holder even in this process
        start = time.monotonic()
        text = one_line_error(lambda: store.create_sqlite_store(path, None))
        waited = time.monotonic() - start
    assert text == f"another process has held {tmp_path / 'm.db.lock'} for 1 s while creating {path}; is it stuck?"
    assert 1.0 <= waited < 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.db.lock"]       # nothing created
    store.create_sqlite_store(path, None)                                   # released: the next one creates it
    store.check_damaged(path)


def test_a_file_system_without_hard_links_gets_the_store_by_rename(tmp_path, monkeypatch):
    path = tmp_path / "m.db"

    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")     # e.g. some network and FAT file systems

    monkeypatch.setattr(store.os, "link", no_links)
    store.create_sqlite_store(path, None)
    store.check_damaged(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.db", "m.db.lock"]   # the temporary file became it


@pytest.mark.parametrize("checked", [False, True], ids=["checked-here", "checked-before-it-appeared"])
def test_a_store_mlflow_is_creating_in_place_is_waited_for_not_called_damaged(tmp_path, checked, monkeypatch):
    """MLflow's own client (a notebook, `mlflow ui`) makes a missing store where it stands: tables, then each migration.
    One started at the same moment as a run is waited for; before settle, it was called damaged ("empty file" or "an
    SQLite file without MLflow's tables") or migrated a second time ("table ... already exists"). ``checked``: the
    URI was checked before the store appeared (the CLI checks it first), so only the open waits."""
    db = tmp_path / "m.db"
    uri = f"sqlite:///{db}"
    slow = ("import time, mlflow.store.db.utils as u\n"
            "real = u._upgrade_db\n"
            "def upgrade(engine):\n"
            "    time.sleep(0.5)                 # the first tables are made; the migrations come after a pause\n"
            "    real(engine)\n"
            "u._upgrade_db = upgrade\n"
            "from mlflow.tracking import MlflowClient\n"
            f"MlflowClient({uri!r}).search_experiments()\n")
    foreign = subprocess.Popen([sys.executable, "-c", slow], cwd=REPO, stderr=subprocess.PIPE, text=True)

    def half_made():
        if not db.exists():
            return False
        try:
            with closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as conn:
                return bool(conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs'").fetchone())
        except sqlite3.Error:
            return False
    wait_for(half_made, foreign)
    # quiet for 5 s, not 1: the other creator's gap of 0.5 s plus its migrations' start, on a busy box; a settle that
    # does not wait is still caught by that 0.5 s, and settle returns once the store is at MLflow's head revision
    monkeypatch.setattr(store, "SETTLE_QUIET_S", 5.0)
    client = store.open_store(uri, write=True, checked=checked)     # while the other is migrating
    assert [e.name for e in client.search_experiments()] == ["Default"]
    assert foreign.wait(timeout=120) == 0, foreign.stderr.read()[-2000:]    # the other creator was not disturbed
    store.check_damaged(db)
    store.forget_engines(db)


def test_settle_returns_at_once_for_a_whole_or_a_quiet_store_and_waits_only_while_one_changes(tmp_path, whole_store,
                                                                                             monkeypatch):
    monkeypatch.setattr(store, "SETTLE_QUIET_S", 0.5)

    def timed(call, path):
        start = time.monotonic()
        call(path)
        return time.monotonic() - start

    def waited_after_write(call, path):
        """(seconds the call took, seconds from the file's last write to the call's return). The wait counts from
        that write, made before the call began, so only the second can be held to SETTLE_QUIET_S."""
        start, written = time.monotonic(), path.stat().st_mtime
        call(path)
        return time.monotonic() - start, time.time() - written
    whole = store_copy(whole_store, tmp_path)               # just written, at MLflow's head revision
    assert timed(store.settle, whole) < 0.4
    (tmp_path / "older").mkdir()
    older = store_copy(whole_store, tmp_path / "older")     # a store of an older MLflow: another revision
    with closing(sqlite3.connect(older)) as conn, conn:
        conn.execute("UPDATE alembic_version SET version_num = 'an-older-one'")
    took, quiet = waited_after_write(store.settle, older)   # still changing: waited for until quiet
    assert quiet >= 0.5 and took < 3
    os.utime(older, (time.time() - 10, time.time() - 10))
    assert timed(store.settle, older) < 0.4                 # quiet: MLflow upgrades it, as before
    monkeypatch.setattr(store, "_head_revision", lambda: None)     # an MLflow without the revision function
    os.utime(whole)                                         # written just now
    assert waited_after_write(store.settle, whole)[1] >= 0.5    # quietness alone decides

    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    took, quiet = waited_after_write(lambda p: one_line_error(lambda: store.check_damaged(p)), empty)  # being made?
    assert quiet >= 0.5 and took < 3
    os.utime(empty, (time.time() - 10, time.time() - 10))
    assert timed(lambda p: one_line_error(lambda: store.check_damaged(p)), empty) < 0.4        # damaged at once
