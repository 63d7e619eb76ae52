"""The package's import structure: the shared training helpers sit low (dnibench/loop.py) and the
training loops do not import the suite or the task registry, which import them (the circle
tasks -> train -> suite -> tasks is gone). Each check runs in a fresh interpreter: sys.modules of the
test process already holds everything."""
import subprocess
import sys

import pytest


def imported_by(module: str) -> set[str]:
    code = (f"import sys, {module}; "
            "print(' '.join(sorted(k for k in sys.modules if k.startswith('dnibench'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_loop_is_low_in_the_package():
    assert imported_by("dnibench.loop") == {"dnibench", "dnibench.loop", "dnibench.errors"}


@pytest.mark.parametrize("module", ["dnibench.train", "dnibench.rnn.train", "dnibench.loop", "dnibench.conventions"])
def test_training_loops_do_not_import_the_suite(module):
    assert "dnibench.suite" not in imported_by(module)


def test_ff_loop_does_not_import_the_task_registry():
    assert "dnibench.tasks" not in imported_by("dnibench.train")
