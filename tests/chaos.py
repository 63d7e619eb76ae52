"""`make chaos`: the faults of tests/test_faults.py repeated many times at random offsets (not in CI).

Each round takes a fresh store and a tiny fake-MNIST suite, then injects faults into real `dnibench
run` processes: kill -9, SIGTERM or SIGINT at a random moment of a process's life (start-up, store
creation, training, between runs), chained on one store, or two processes started on the fresh store
at once (one of them killed at a random moment too). After the round a clean rerun must finish, and
the store is checked with sqlite3: every planned run FINISHED exactly once, every run FINISHED before
an injection still FINISHED (lost otherwise), nothing RUNNING, integrity_check ok. Every process's
stderr is scanned for tracebacks; a SIGTERM/SIGINT after which the process still started a run counts
as not honoured. Prints the counts; exits 1 if any is not zero.

    python tests/chaos.py --injections 50 [--seed S] [--max-offset 12]
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))
from fake_data import write_idx as _write_idx  # noqa: E402  (the tests' fake IDX writer)
from dnibench.data import fetch_mnist  # noqa: E402

SUITE = """
name: chaos
task: mnist
train: {steps: 4, batch_size: 4, lr: 1.0e-3, lr_decay_at: [], eval_every: 4, log_every: 1}
profiles: {smoke: {}, quick: {}, paper: {}}
entries:
  - model: [fcn3]
    method: [bprop, dni, cdni]
    args: {dni: {synth_hidden_layers: 0}, cdni: {synth_hidden_layers: 0}}
"""
SEEDS = 2
PLANNED = 3 * SEEDS


def fake_data(root: Path) -> Path:
    rng = np.random.default_rng(0)
    idx = root / "idx"
    idx.mkdir()
    _write_idx(idx / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (12, 28, 28)))
    _write_idx(idx / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 12))
    _write_idx(idx / "t10k-images-idx3-ubyte", rng.integers(0, 256, (5, 28, 28)))
    _write_idx(idx / "t10k-labels-idx1-ubyte", rng.integers(0, 10, 5))
    fetch_mnist(root / "data", idx_dir=idx, log=lambda *_: None)
    return root / "data"


class Chaos:
    def __init__(self, root: Path, seed: int, max_offset: float):
        self.root, self.rng, self.max_offset = root, random.Random(seed), max_offset
        self.suite = root / "chaos.yaml"
        self.suite.write_text(SUITE)
        self.data = fake_data(root)
        self.counts = Counter()
        self.exits = Counter()

    def start(self, db: Path, *extra) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "WORLD_SIZE", "RANK")}
        env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), DNIBENCH_DATA=str(self.root / "default-data"))
        return subprocess.Popen([sys.executable, "-m", "dnibench.cli", "run", str(self.suite), "--profile", "smoke",
                                 "--seeds", str(SEEDS), "--device", "cpu", "--tracking-uri", f"sqlite:///{db}",
                                 "--data-dir", str(self.data), "--no-progress", *extra],
                                cwd=self.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def collect(self, proc: subprocess.Popen, what: str) -> tuple[int, str]:
        _, err = proc.communicate(timeout=300)
        if "Traceback" in err:
            self.counts["tracebacks"] += 1
            print(f"  traceback after {what}:\n" + "\n".join(err.splitlines()[-8:]), flush=True)
        self.exits[f"{what} -> {proc.returncode}"] += 1
        return proc.returncode, err

    def inject(self, proc: subprocess.Popen, kind: str) -> float | None:
        """Wait a random offset into the process's life, then deliver the fault (if it still runs).
        Returns when it was delivered (epoch seconds), None when the process had already ended."""
        offset = self.rng.uniform(0, self.max_offset)
        deadline = time.time() + offset
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        sent = None
        if proc.poll() is None:
            sent = time.time()
            proc.send_signal({"kill-9": signal.SIGKILL, "SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}[kind])
        self.counts["injections"] += 1
        self.counts[f"injections: {kind}"] += 1
        return sent

    @staticmethod
    def rows(db: Path) -> list[tuple[str, str, str | None]]:
        if not db.exists():
            return []
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60) as conn:
            return conn.execute("SELECT r.run_uuid, r.status, t.value FROM runs r LEFT JOIN tags t "
                                "ON t.run_uuid = r.run_uuid AND t.key = 'config_hash'").fetchall()

    @staticmethod
    def started_after(db: Path, when: float) -> int:
        """Child runs started after ``when`` (epoch seconds)."""
        if not db.exists():
            return 0
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60) as conn:
            return conn.execute("SELECT count(*) FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid AND "
                                "t.key = 'dnibench.role' AND t.value = 'child' WHERE r.start_time > ?",
                                (int(when * 1000),)).fetchone()[0]

    def finished(self, db: Path) -> set[str]:
        return {run_id for run_id, status, h in self.rows(db) if status == "FINISHED" and h}

    def round(self, number: int) -> None:
        db = self.root / f"round{number}" / "mlflow.db"
        seen: set[str] = set()
        if self.rng.random() < 0.25:        # two processes on the fresh store at once, one also faulted
            procs = [self.start(db, "--shard", f"{i}/2") for i in range(2)]
            self.counts["injections"] += 1
            self.counts["injections: concurrent start"] += 1
            self.inject(procs[self.rng.randrange(2)], self.rng.choice(["kill-9", "SIGTERM", "SIGINT"]))
            for proc in procs:
                self.collect(proc, "concurrent")
        else:
            for _ in range(self.rng.randint(1, 3)):     # faults chained on one store
                seen |= self.finished(db)
                kind = self.rng.choice(["kill-9", "SIGTERM", "SIGINT"])
                proc = self.start(db)
                sent = self.inject(proc, kind)
                self.collect(proc, kind)
                if sent is not None and kind != "kill-9" and self.started_after(db, sent + 0.2):
                    self.counts["signals not honoured"] += 1    # a run began after the stop request
        seen |= self.finished(db)
        code, err = self.collect(self.start(db), "clean rerun")
        if code != 0:
            self.counts["failed reruns"] += 1
            print(f"  round {number}: the clean rerun exited {code}: {err.strip().splitlines()[-1:]}", flush=True)
        rows = self.rows(db)
        finished = [h for _, status, h in rows if status == "FINISHED" and h]
        self.counts["lost runs"] += len(seen - self.finished(db)) + max(0, PLANNED - len(set(finished)))
        self.counts["duplicated runs"] += len(finished) - len(set(finished))
        self.counts["RUNNING left"] += sum(status == "RUNNING" for _, status, _ in rows)
        with sqlite3.connect(db) as conn:
            if conn.execute("PRAGMA integrity_check").fetchall() != [("ok",)]:
                self.counts["damaged stores"] += 1
        self.counts["marked KILLED by a later invocation"] += sum(
            1 for _ in sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute(
                "SELECT 1 FROM tags WHERE key = 'failure' AND value LIKE 'owner process %'"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--injections", type=int, default=50)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-offset", type=float, default=12.0, help="latest injection, seconds after start")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    print(f"chaos: seed {seed}, at least {args.injections} injections", flush=True)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="dnibench-chaos-") as tmp:
        chaos = Chaos(Path(tmp), seed, args.max_offset)
        number = 0
        while chaos.counts["injections"] < args.injections:
            chaos.round(number)
            number += 1
            print(f"  round {number}: {chaos.counts['injections']} injections, {time.time() - started:.0f} s", flush=True)
    counts = chaos.counts
    print(f"chaos: {number} rounds in {time.time() - started:.0f} s (seed {seed})")
    for key in sorted(k for k in counts if k.startswith("injections")) + [
            "lost runs", "duplicated runs", "RUNNING left", "tracebacks", "failed reruns", "damaged stores",
            "signals not honoured", "marked KILLED by a later invocation"]:
        print(f"  {key}: {counts[key]}")
    print("  exit codes: " + ", ".join(f"{k} ({n})" for k, n in sorted(chaos.exits.items())))
    bad = sum(counts[k] for k in ("lost runs", "duplicated runs", "RUNNING left", "tracebacks", "failed reruns",
                                  "damaged stores", "signals not honoured"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
