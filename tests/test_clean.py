"""`dnibench clean` deletes what dnibench wrote and nothing else: the files the report's manifest names inside
--out, a local sqlite store, the artifact folders its own experiments recorded (an emptied parent too), the
store's remembered plans and the lock it was created under; each path said as it goes. In process, so a
mutation tester sees it (the subprocess form is tests/robustness/test_data_and_report_inputs.py)."""
import sqlite3
from pathlib import Path

import pytest

from dnibench import store
from dnibench.clean import clean
from dnibench.cli import main
from dnibench.errors import DnibenchError
from dnibench.resume import plans_file


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """A wrong clean deletes the working folder's files (a mutant did: an empty artifact location is "."):
    here that is the test's own folder."""
    monkeypatch.chdir(tmp_path)


def cleaned(out: Path, uri: str) -> tuple[list[Path], list[str]]:
    said: list[str] = []
    return clean(out, uri, log=said.append), said


def bare_store(db: Path, locations: list[str | None]) -> Path:
    """A sqlite file with only what clean reads of an MLflow store: experiments.artifact_location."""
    db.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE experiments (experiment_id INTEGER, artifact_location TEXT)")
        con.executemany("INSERT INTO experiments VALUES (?, ?)", list(enumerate(locations)))
    con.close()
    return db


def folder_with_file(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "artifact.txt").write_text("x")
    return path


def test_only_the_manifests_files_inside_out_are_deleted_then_the_manifest(tmp_path):
    out, elsewhere = tmp_path / "reports", tmp_path / "elsewhere"
    for name in ("a.png", "fig 2.pdf", "sub/b.csv", "NOTES.md", "dir/kept.txt"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(name)
    elsewhere.mkdir()
    outside = elsewhere / "outside.txt"
    outside.write_text("not dnibench's")
    (out / "link.txt").symlink_to(outside)                  # inside out by name, outside by target
    lines = ["a.png", "fig 2.pdf", "", "sub/b.csv", "../elsewhere/outside.txt", str(outside), "link.txt", "dir",
             "missing.md", "."]
    (out / ".manifest").write_text("\n".join(lines) + "\n")
    deleted, said = cleaned(out, "http://127.0.0.1:1")      # a server's store is never touched (nor asked)
    assert deleted == [out / "a.png", out / "fig 2.pdf", out / "sub" / "b.csv", out / ".manifest"]
    assert said == [f"deleted {p}" for p in deleted]
    assert outside.read_text() == "not dnibench's" and (out / "link.txt").is_symlink()
    assert sorted(p.name for p in out.rglob("*")) == ["NOTES.md", "dir", "kept.txt", "link.txt", "sub"]


def test_the_store_its_experiments_artifacts_and_its_plans_go_and_nothing_of_another_store(tmp_path):
    root = tmp_path / "artifacts"
    db = tmp_path / "results" / "mlflow.db"
    uri = f"sqlite:///{db}"
    client = store.open_store(uri, write=True, artifact_root=root.as_uri())
    spaced = client.create_experiment("spaced", artifact_location=(root / "with space").as_uri())
    elsewhere = client.create_experiment("remote", artifact_location="s3://bucket/x")
    run = client.create_run(spaced)
    client.log_text(run.info.run_id, "hello", "note.txt")
    assert (root / "with space" / run.info.run_id / "artifacts" / "note.txt").is_file()
    assert client.get_experiment(elsewhere).artifact_location == "s3://bucket/x"
    other = folder_with_file(root / "another-store-s")      # the same artifact root, another store's folder
    plans = plans_file(uri)
    plans.write_text("{}")
    lock = db.parent / "mlflow.db.lock"                     # the store was created under it
    assert lock.is_file()
    deleted, said = cleaned(tmp_path / "no-reports", uri)
    assert deleted == [root / "with space", db, plans, lock]   # experiment 0's folder was never made: not said
    assert said == [f"deleted {p}" for p in deleted]
    assert not db.exists() and not plans.exists() and not (root / "with space").exists()
    assert (other / "artifact.txt").read_text() == "x" and root.is_dir() and list(db.parent.iterdir()) == []


def test_an_emptied_artifact_root_goes_too_and_a_query_string_still_names_the_store(tmp_path):
    root = tmp_path / "mlflow-artifacts"
    db = bare_store(tmp_path / "m.db", [(root / "0").as_uri(), (root / "1").as_uri(), None, "mlflow-artifacts:/2",
                                        (tmp_path / "never-made").as_uri()])
    folder_with_file(root / "0")
    folder_with_file(root / "1")
    folder_with_file(tmp_path / "2")        # a folder of the name a non-file location would give: not touched
    deleted, said = cleaned(tmp_path / "reports", f"sqlite:///{db}?timeout=5")
    assert deleted == [root / "0", root / "1", root, db]
    assert said == [f"deleted {p}" for p in deleted] and (tmp_path / "2" / "artifact.txt").is_file()


def test_odd_characters_in_the_stores_path(tmp_path):
    folder = tmp_path / "run #1 100%"
    db = bare_store(folder / "m.db", [(folder / "art" / "0").as_uri()])
    folder_with_file(folder / "art" / "0")
    deleted, _ = cleaned(tmp_path / "reports", f"sqlite:///{db}")
    assert deleted == [folder / "art" / "0", folder / "art", db]


@pytest.mark.parametrize("content", [b"not a database at all, just some bytes" * 200, b""])
def test_a_store_that_cannot_be_read_is_kept_after_the_reports_files_went(tmp_path, content):
    db = tmp_path / "m.db"
    if content:
        db.write_bytes(content)
    else:                                   # a real sqlite file without MLflow's tables
        with sqlite3.connect(db) as con:
            con.execute("CREATE TABLE t (x)")
        con.close()
    out = tmp_path / "reports"
    out.mkdir()
    (out / "a.png").write_text("x")
    (out / ".manifest").write_text("a.png\n")
    said: list[str] = []
    with pytest.raises(DnibenchError) as err:
        clean(out, f"sqlite:///{db}", log=said.append)
    reason = "file is not a database" if content else "no such table: experiments"
    assert str(err.value) == (f"{db}: not a readable MLflow store ({reason}); the store and its artifacts were "
                              "not deleted (move it aside yourself)")
    assert said == [f"deleted {out / 'a.png'}", f"deleted {out / '.manifest'}"] and db.is_file()


def test_nothing_there_is_said_and_nothing_is_made(tmp_path):
    deleted, said = cleaned(tmp_path / "reports", f"sqlite:///{tmp_path}/m.db")
    assert deleted == [] and said == ["dnibench: nothing to delete"] and list(tmp_path.iterdir()) == []


def test_the_cli_clean_command(tmp_path, capsys):
    """As `make clean-results` runs it (README: the store, its artifacts, its remembered plans and creation lock,
    and the files the report listed)."""
    uri = "sqlite:///results/mlflow.db"
    client = store.open_store(uri, write=True, artifact_root=(tmp_path / "results" / "mlflow-artifacts").as_uri())
    client.log_text(client.create_run("0").info.run_id, "x", "note.txt")
    plans_file(uri).write_text("{}")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "README.md").write_text("a report")
    (tmp_path / "reports" / ".manifest").write_text("README.md\n")
    db = Path("results/mlflow.db")
    assert main(["clean", "--out", "reports", "--tracking-uri", uri]) == 0
    assert capsys.readouterr().out == "".join(f"deleted {p}\n" for p in [
        Path("reports/README.md"), Path("reports/.manifest"), tmp_path / "results" / "mlflow-artifacts" / "0",
        tmp_path / "results" / "mlflow-artifacts", db, plans_file(uri), store.creation_lock(db)])
    assert list((tmp_path / "results").iterdir()) == [] and list((tmp_path / "reports").iterdir()) == []
    bare_store(db, []).write_bytes(b"garbage" * 100)
    assert main(["clean", "--out", "reports", "--tracking-uri", "sqlite:///results/mlflow.db"]) == 2
    assert capsys.readouterr().err == ("dnibench: error: results/mlflow.db: not a readable MLflow store (file is not "
                                       "a database); the store and its artifacts were not deleted (move it aside "
                                       "yourself)\n")


def test_a_store_cleaned_in_this_process_is_made_anew_by_the_next_open(tmp_path, monkeypatch):
    """MLflow keeps, for the life of the process, one SQLAlchemy engine and one store per store URI, a relative sqlite
    path bound to the folder it was first opened from. Once clean deleted the file, the next store made under the same
    URI in this process (a notebook, tests run twice in one process) was written through the old engine: "attempt to
    write a readonly database" in the same folder, the old folder's file from another one."""
    uri = "sqlite:///results/mlflow.db"
    for round_, folder in enumerate(["a", "a", "b"]):
        (tmp_path / folder).mkdir(exist_ok=True)
        monkeypatch.chdir(tmp_path / folder)
        client = store.open_store(uri, write=True, artifact_root=(tmp_path / folder / "art").as_uri())
        run_id = client.create_run("0").info.run_id
        client.log_metric(run_id, "round", round_)
        assert [m.value for m in client.get_metric_history(run_id, "round")] == [round_]
        with sqlite3.connect(tmp_path / folder / "results" / "mlflow.db") as conn:     # this folder's file has it
            assert conn.execute("SELECT run_uuid FROM runs").fetchall() == [(run_id,)]
        assert main(["clean", "--out", "reports", "--tracking-uri", uri]) == 0
        assert not Path("results/mlflow.db").exists()
