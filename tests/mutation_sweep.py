"""Run mutmut 3's mutants against plain test functions, called directly: the by-hand mutation runs of
tests/MUTATION.md (report sections, data, loops), where mutmut's own runner spends most of its time in
pytest's collection and module-scoped fixtures.

mutmut's trampolines pick the mutant named in MUTANT_UNDER_TEST at every call, so one process imports the
mutated package and the test modules once, then for each mutant sets the variable and calls the tests
until one fails (killed), a 30 s alarm rings (timeout) or none fails (survived). The test that killed a
function's last mutant runs first for the next one. Only test functions whose arguments are ``tmp_path``
or nothing are collected (TESTS_MATCH, a regex on their names, narrows them further); run a survivor
through pytest (``MUTANT_UNDER_TEST=NAME python -m pytest -x FILE`` inside mutants/) before writing a test
for it. With FAST_FIGURES=1 the report's figures are closed unsaved and stand-in files written (their
drawing is not what these tests check).

Usage, from a clone's mutants/ folder after ``mutmut run`` has generated the mutants:

    MUTANT_UNDER_TEST=x OMP_NUM_THREADS=1 python ../tests/mutation_sweep.py NAMES RESULTS test_module ...

NAMES holds one mutant name per line (``mutmut results --all true``); RESULTS gets "<name> <outcome>"
lines, appended, so a stopped sweep resumes from a list without the names already there.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import os
import pathlib
import re
import signal
import sys
import tempfile


class Timeout(Exception):
    pass


def _alarm(*_):
    raise Timeout()


def collect(modules: list[str], pattern: str) -> list[tuple[str, object]]:
    tests = []
    for module in modules:
        for name, fn in vars(importlib.import_module(module)).items():
            if (name.startswith("test_") and inspect.isfunction(fn) and re.search(pattern, name)
                    and set(inspect.signature(fn).parameters) <= {"tmp_path"}):
                tests.append((f"{module}::{name}", fn))
    return tests


def call(fn) -> None:
    with tempfile.TemporaryDirectory() as folder:
        fn(**({"tmp_path": pathlib.Path(folder)} if inspect.signature(fn).parameters else {}))


def fast_figures() -> None:
    import matplotlib.pyplot as plt

    from dnibench.report import context

    def save_figure(self, fig, stem):
        paths = [self.path(f"{stem}.png"), self.path(f"{stem}.pdf")]
        for path in paths:
            path.write_bytes(b"x" * 20_000)
        plt.close(fig)
        return paths
    context.ReportContext.save_figure = save_figure


def main(names_file: str, results_file: str, modules: list[str]) -> None:
    here = os.getcwd()
    sys.path[:0] = [here, os.path.join(here, "tests")]        # the mutated copy, not an installed dnibench
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import report_fixtures                                    # the suite files are not mutated: read them once
    report_fixtures.load_suites = functools.lru_cache(maxsize=None)(report_fixtures.load_suites)
    if os.environ.get("FAST_FIGURES"):
        fast_figures()
    tests = collect(modules, os.environ.get("TESTS_MATCH", ""))
    # the tests run here without conftest's no_user_data_cache: a mutant that ignores data_dir must not reach the
    # user's data cache (one once left a fake 12-image MNIST in ~/.cache/dnibench)
    os.environ["DNIBENCH_DATA"] = tempfile.mkdtemp(prefix="sweep-default-data-")
    os.environ["MUTANT_UNDER_TEST"] = "none"
    for _, fn in tests:                                       # every test passes unmutated, or the sweep is void
        call(fn)
    print(f"{len(tests)} tests", file=sys.stderr)
    names = [line.strip() for line in open(names_file) if line.strip()]
    killer: dict[str, str] = {}
    signal.signal(signal.SIGALRM, _alarm)
    with open(results_file, "a", buffering=1) as out:
        for name in names:
            function = name.rsplit("__mutmut_", 1)[0]
            os.environ["MUTANT_UNDER_TEST"] = name
            outcome, current = "survived", None
            signal.alarm(30)
            try:
                for label, fn in sorted(tests, key=lambda t: t[0] != killer.get(function)):
                    current = label
                    call(fn)
            except Timeout:
                outcome = "timeout"
            except BaseException:                             # an assertion, or the mutant's own crash
                outcome = "killed"
                killer[function] = current
            finally:
                signal.alarm(0)
                plt.close("all")
            out.write(f"{name} {outcome}\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
