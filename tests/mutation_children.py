"""Run mutmut 3's mutants of code that only child processes execute (the parallel workers: worker.py), one fresh
pytest per mutant: mutmut's own runner picks each mutant's tests from the calls it saw in the test process, and
a worker's calls happen in processes it never sees, so it reports them "no tests".

mutmut's trampolines pick the mutant named in MUTANT_UNDER_TEST at every call, in whatever process: a worker
process started by a pytest that has the variable inherits it (the forkserver is started by that pytest, so it
carries the variable too; one forkserver per mutant is why each mutant needs its own pytest, not one process
as tests/mutation_sweep.py uses). Each mutant is "killed" (a test failed: pytest -x stops at the first),
"survived" (all passed), "timeout" (past --timeout: a hang, which the tests' own limits should have caught) or
"error <rc>" (pytest could not run: a collection error, no tests selected).

Usage, from a clone's mutants/ folder after ``mutmut run`` has generated the mutants:

    OMP_NUM_THREADS=1 python ../tests/mutation_children.py NAMES RESULTS [--jobs 2] [--timeout 150] \\
        -- tests/test_parallel.py -k "lockstep or staleness"

NAMES holds one mutant name per line (``dnibench.parallel.worker.`` may be left off); RESULTS gets
"<name> <outcome> <seconds>" lines, appended, so a stopped run resumes from a list without the names already there.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MODULE = "dnibench.parallel.worker"


def outcome(name: str, pytest_args: list[str], timeout: float, logs: Path) -> tuple[str, float]:
    full = name if name.startswith("dnibench.") else f"{MODULE}.{name}"
    env = {**os.environ, "MUTANT_UNDER_TEST": full}
    start = time.monotonic()
    with open(logs / f"{name}.log", "w") as log:
        try:
            rc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *pytest_args],
                                env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return "timeout", time.monotonic() - start
    return {0: "survived", 1: "killed"}.get(rc, f"error {rc}"), time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", type=Path)
    parser.add_argument("results", type=Path)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=150.0)
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    pytest_args = argv[cut + 1:]                    # after --: the tests to run per mutant
    done = {line.split()[0] for line in args.results.read_text().splitlines() if line.strip()} \
        if args.results.exists() else set()
    names = [n for n in args.names.read_text().split() if n not in done]
    logs = args.results.parent / f"{args.results.stem}-logs"
    logs.mkdir(exist_ok=True)
    print(f"{len(names)} mutants to run ({len(done)} already in {args.results}), {args.jobs} at a time", flush=True)

    def one(name: str) -> None:
        result, seconds = outcome(name, pytest_args, args.timeout, logs)
        with open(args.results, "a") as out:
            out.write(f"{name} {result} {seconds:.0f}\n")
        print(f"{name} {result} {seconds:.0f} s", flush=True)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(one, names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
