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


def test_each_method_module_imports_first_in_a_fresh_interpreter():
    """`from dnibench.methods.dni import DNI` as the first line of a script or a variant file (the README's way to
    build on a method): registering a built-in discovers no others, which imported cdni while dni was half made
    (ImportError). Every built-in method module, each first in its own interpreter, all at once."""
    from dnibench.methods import BUILTIN
    modules = sorted({module for module, _, _ in BUILTIN.values()})
    procs = {m: subprocess.Popen([sys.executable, "-c", f"import dnibench.methods.{m} as m; "
                                  "from dnibench.methods import get_method; "
                                  "print(sorted(get_method(n).__module__ for n in ('dni', 'cdni', 'unlock_cdni')))"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for m in modules}
    for module, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, (module, err[-1500:])
        assert out.strip() == "['dnibench.methods.cdni', 'dnibench.methods.dni', 'dnibench.methods.unlock']", module
