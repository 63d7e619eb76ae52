"""`dnibench clean`: delete what dnibench generated and nothing else.

The files `dnibench report`/`compare` listed in <out>/.manifest, then a local sqlite store, the
artifact folders its experiments recorded (read from the store itself, so another store's artifacts
in the same folder are never touched), its remembered plans and its creation lock. Each deleted path
is printed.
"""
from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from pathlib import Path
from urllib.parse import unquote, urlparse

from . import store
from .errors import DnibenchError
from .report.context import MANIFEST
from .resume import plans_file


def _artifact_dirs(db: Path) -> list[Path]:
    try:
        with closing(store.connect(db)) as con:
            rows = con.execute("SELECT artifact_location FROM experiments").fetchall()
    except sqlite3.DatabaseError as err:
        raise DnibenchError(f"{db}: not a readable MLflow store ({err}); the store and its artifacts "
                            "were not deleted (move it aside yourself)") from None
    out = []
    for (location,) in rows:
        parsed = urlparse(location or "")
        if parsed.scheme == "file":
            out.append(Path(unquote(parsed.path)))
    return out


class _Deleted(list):
    """The paths deleted so far, each said as it goes (an error half way still says what went)."""

    def __init__(self, log):
        super().__init__()
        self.log = log

    def append(self, path: Path) -> None:
        super().append(path)
        self.log(f"deleted {path}")


def clean(out: Path, tracking_uri: str, log=print) -> list[Path]:
    deleted = _Deleted(log)
    out = Path(out)
    manifest = out / MANIFEST
    if manifest.is_file():
        for name in manifest.read_text().split("\n"):
            path = out / name
            # Only plain files inside out: a manifest line is never followed out of the folder.
            if name and path.is_file() and out.resolve() in path.resolve().parents:
                path.unlink()
                deleted.append(path)
        manifest.unlink()
        deleted.append(manifest)
    db = store.sqlite_path(tracking_uri)             # the file, without the URI's query string
    if db is not None and db.is_file():
        for folder in _artifact_dirs(db):
            # An experiment folder is deleted; its parent (e.g. results/mlflow-artifacts/) if then empty.
            if folder.is_dir():
                shutil.rmtree(folder)
                deleted.append(folder)
                if folder.parent.is_dir() and not any(folder.parent.iterdir()):
                    folder.parent.rmdir()
                    deleted.append(folder.parent)
        store.forget_engines(db)
        db.unlink()
        deleted.append(db)
        # the store's remembered plans (resume.py) and the lock it was created under (store.py)
        for path in (plans_file(tracking_uri), store.creation_lock(db)):
            if path.is_file():
                path.unlink()
                deleted.append(path)
    if not deleted:
        log("dnibench: nothing to delete")
    return list(deleted)
