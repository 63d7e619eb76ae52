"""A variant in one file, named in a suite by its path (README, "Adding a variant"): loaded once per
process, bad files rejected in one line naming the file, and end to end through the CLI into
`dnibench compare` and `dnibench report` as its own row with its own label."""
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from dnibench.errors import SuiteError
from dnibench.methods import REGISTRY, file_sha256, find_method_file, get_method, load_method_file
from dnibench.suite import load_suite, plan

# A real (if small) variant: backprop whose lowest stage never learns. Each execution of the file
# appends a line to <file>.executions, so a test can count how often it was executed.
VARIANT = """
from pathlib import Path

from dnibench.methods import register
from dnibench.methods.bprop import Backprop

Path(__file__).with_suffix(".executions").open("a").write("executed\\n")


@register
class {cls}(Backprop):
    name = "{name}"
    description = "backprop with the first stage frozen at its initialisation"

    def apply_update(self, index):
        if index == 0:
            self.stage_optimizers[0].zero_grad(set_to_none=True)
            return
        super().apply_update(index)
"""

SUITE = """
name: {suite}
task: mnist
train: {{steps: 2, batch_size: 8, lr: 1.0e-3, lr_decay_at: [], eval_every: 2, log_every: 2}}
profiles: {{smoke: {{}}, quick: {{}}, paper: {{}}}}
entries:
  - model: [fcn3, fcn4]
    method: [bprop, cdni, {method}]
"""


def write_variant(folder, name, cls="FrozenFirst", filename=None):
    path = folder / (filename or f"{name}.py")
    path.write_text(VARIANT.format(cls=cls, name=name))
    return path


def executions(path):
    counter = path.with_suffix(".executions")
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def write_suite(folder, method, suite="variant_suite"):
    path = folder / f"{suite}.yaml"
    path.write_text(SUITE.format(suite=suite, method=method))
    return path


@pytest.fixture
def registry():
    """Each test registers methods of its own; drop them afterwards so names can be reused."""
    before = dict(REGISTRY)
    yield
    REGISTRY.clear()
    REGISTRY.update(before)


def test_file_is_executed_once_for_every_grid_point_seed_and_plan(tmp_path, registry):
    variant = write_variant(tmp_path, "frozen_once")
    suite = load_suite(write_suite(tmp_path, "frozen_once.py"))
    first = plan(suite, "smoke", seeds=3)
    second = plan(suite, "smoke", seeds=2)            # a second plan in the same process
    assert executions(variant) == 1
    runs = [s for s in first if s.method_file is not None]
    assert len(runs) == 2 * 3 and {s.method for s in runs} == {"frozen_once"}
    assert {s.method_file.path for s in runs} == {str(variant.resolve())}
    assert len({s.config_hash for s in first}) == len(first) == 3 * 2 * 3
    assert {s.config_hash for s in second} < {s.config_hash for s in first}
    assert runs[0].method_class() is REGISTRY["frozen_once"] is get_method(str(variant))
    assert executions(variant) == 1


def test_loaded_class_trains_and_differs_from_backprop(tmp_path, registry):
    """The variant does what its file says: the frozen first stage keeps its initial weights."""
    import torch

    from tiny_methods import build_method, random_batch
    write_variant(tmp_path, "frozen_trains")
    load_method_file(tmp_path / "frozen_trains.py")
    method = build_method("frozen_trains", (1, 28, 28), model="fcn3")
    before = [p.detach().clone() for p in method.stages.parameters()]
    x, y = random_batch((1, 28, 28))
    for _ in range(3):
        method.step(x, y)
    after = list(method.stages.parameters())
    n_first = len(list(method.stages[0].parameters()))
    assert all(torch.equal(a, b) for a, b in zip(before[:n_first], after[:n_first]))
    assert not torch.equal(before[-1], after[-1])
    assert method.update_counts == [0, 3, 3]


def test_edited_file_is_a_new_configuration_and_must_not_change_under_a_planned_run(tmp_path, registry):
    variant = write_variant(tmp_path, "frozen_edit")
    suite = load_suite(write_suite(tmp_path, "frozen_edit.py"))
    before = {s.label: s for s in plan(suite, "smoke")}
    variant.write_text(variant.read_text() + "\n# an edit\n")
    with pytest.raises(SuiteError, match=r"frozen_edit\.py changed since the run was planned"):
        before["variant_suite/fcn3/frozen_edit/seed0"].method_class()
    after = {s.label: s for s in plan(suite, "smoke")}
    assert executions(variant) == 2                   # the new content was executed, once
    changed = [label for label in after if before[label].config_hash != after[label].config_hash]
    assert sorted(changed) == ["variant_suite/fcn3/frozen_edit/seed0", "variant_suite/fcn4/frozen_edit/seed0"]
    assert after["variant_suite/fcn3/frozen_edit/seed0"].method_class().name == "frozen_edit"


def test_hash_counts_the_content_not_where_the_checkout_lives(tmp_path, registry):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for folder in (a, b):
        write_variant(folder, "frozen_moved")
        write_suite(folder, "frozen_moved.py")
    spec_a = next(s for s in plan(load_suite(a / "variant_suite.yaml"), "smoke") if s.method_file)
    REGISTRY.pop("frozen_moved")                      # the same method from another clone, in a fresh process
    spec_b = next(s for s in plan(load_suite(b / "variant_suite.yaml"), "smoke") if s.method_file)
    assert spec_a.method_file.path != spec_b.method_file.path
    assert spec_a.config_hash == spec_b.config_hash


def test_relative_path_is_taken_from_the_suite_folder_then_the_working_directory(tmp_path, monkeypatch, registry):
    suites, cwd = tmp_path / "suites", tmp_path / "work"
    (suites / "methods").mkdir(parents=True), cwd.mkdir()
    next_to_suite = write_variant(suites / "methods", "frozen_rel")
    write_variant(cwd, "frozen_cwd_only")
    (cwd / "methods").mkdir()
    write_variant(cwd / "methods", "frozen_rel", cls="Shadow")     # same relative path, cwd: loses
    monkeypatch.chdir(cwd)
    assert find_method_file("methods/frozen_rel.py", suites) == next_to_suite.resolve()
    assert find_method_file("frozen_cwd_only.py", suites) == (cwd / "frozen_cwd_only.py").resolve()
    assert find_method_file(str(next_to_suite), None) == next_to_suite.resolve()
    # no suite folder (get_method of a path given on its own): the working directory only
    assert find_method_file("frozen_cwd_only.py", None) == (cwd / "frozen_cwd_only.py").resolve()
    assert get_method("frozen_cwd_only.py").name == "frozen_cwd_only"
    with pytest.raises(SuiteError, match=r"method file nowhere\.py does not exist \(looked for .*suites/nowhere\.py, "
                                         r".*work/nowhere\.py\)"):
        find_method_file("nowhere.py", suites)
    specs = plan(load_suite(write_suite(suites, "methods/frozen_rel.py")), "smoke")
    assert {s.method_file.path for s in specs if s.method_file} == {str(next_to_suite.resolve())}


def test_settings_given_under_the_path_or_the_registered_name(tmp_path, registry):
    (tmp_path / "frozen_args.py").write_text(VARIANT.format(cls="FrozenArgs", name="frozen_args"))
    suite_text = SUITE.format(suite="args_suite", method="frozen_args.py") + \
        "    args: {frozen_args.py: {p_update: 0.5}}\n"
    specs = plan(load_suite(write_suite_text(tmp_path, suite_text)), "smoke")
    assert {s.method_args["p_update"] for s in specs if s.method == "frozen_args"} == {0.5}
    suite_text = SUITE.format(suite="args_suite", method="frozen_args.py") + "    args: {frozen_args: {p_update: 0.25}}\n"
    specs = plan(load_suite(write_suite_text(tmp_path, suite_text)), "smoke")
    assert {s.method_args["p_update"] for s in specs if s.method == "frozen_args"} == {0.25}


def write_suite_text(folder, text):
    path = folder / "suite.yaml"
    path.write_text(text)
    return path


NO_METHOD = "x = 1\n"
TWO_METHODS = VARIANT.format(cls="One", name="bad_one") + VARIANT.format(cls="Two", name="bad_two")
RAISES = "raise RuntimeError('the variant is broken\\nacross two lines')\n"
SYNTAX = "def step(:\n"
TAKEN_NAME = VARIANT.format(cls="Clash", name="dni")


@pytest.mark.parametrize("text, needle", [
    (NO_METHOD, r"must register exactly one method .*registered none"),
    (TWO_METHODS, r"must register exactly one method .*registered 'bad_one', 'bad_two'"),
    (RAISES, r"RuntimeError: the variant is broken across two lines"),
    (SYNTAX, r"SyntaxError"),
    (TAKEN_NAME, r"method name 'dni' is registered twice"),
], ids=["registers-nothing", "registers-two", "raises", "syntax-error", "name-taken"])
def test_bad_method_file_is_one_line_naming_the_file(tmp_path, registry, text, needle):
    path = tmp_path / "bad_variant.py"
    path.write_text(text)
    names = set(REGISTRY)
    with pytest.raises(SuiteError, match=needle) as err:
        load_method_file(path)
    message = str(err.value)
    assert "\n" not in message and str(path.resolve()) in message
    assert set(REGISTRY) == names and REGISTRY["dni"].__module__ == "dnibench.methods.dni"   # nothing left half-registered
    assert not [m for m in sys.modules if m.startswith("dnibench_method_file_bad_variant_")]   # nor its module
    # Through a suite too: one line naming the suite, the entry and the file.
    suite = load_suite(write_suite(tmp_path, "bad_variant.py"))
    with pytest.raises(SuiteError, match=r"variant_suite\.yaml: entries\[0\]: method file .*bad_variant\.py: "):
        plan(suite, "smoke")


def test_method_file_messages_in_full(tmp_path, registry):
    missing = tmp_path / "missing.py"
    with pytest.raises(SuiteError) as err:
        load_method_file(missing)
    assert str(err.value) == f"method file {missing.resolve()} does not exist"
    empty = tmp_path / "empty.py"
    empty.write_text(NO_METHOD)
    with pytest.raises(SuiteError) as err:
        load_method_file(empty)
    assert str(err.value) == (f"method file {empty.resolve()}: must register exactly one method "
                              "(a Method subclass decorated with @register), registered none")
    variant = write_variant(tmp_path, "frozen_digest")
    planned = file_sha256(variant)
    variant.write_text(variant.read_text() + "# edited\n")
    with pytest.raises(SuiteError) as err:
        load_method_file(variant, planned)
    assert str(err.value) == (f"method file {variant.resolve()} changed since the run was planned "
                              f"(sha256 {file_sha256(variant)[:12]}, planned {planned[:12]}); plan the suite again")
    with pytest.raises(SuiteError) as err:
        get_method("no_such_method")
    assert str(err.value) == f"unknown method 'no_such_method'; known: {', '.join(sorted(REGISTRY))}"
    assert str(err.value).startswith("unknown method 'no_such_method'; known: bprop, bptt, cdni, ")   # sorted


def test_a_broken_edit_keeps_the_version_that_worked(tmp_path, registry):
    """A file edited into one that fails to load is refused; the method it registered before stays, and the
    file edited back is that method again, not executed a third time."""
    variant = write_variant(tmp_path, "frozen_kept")
    first, _ = load_method_file(variant)
    good = variant.read_text()
    variant.write_text(RAISES)
    with pytest.raises(SuiteError, match="the variant is broken"):
        load_method_file(variant)
    assert REGISTRY["frozen_kept"] is first
    variant.write_text(good)
    assert load_method_file(variant)[0] is first and executions(variant) == 1


# A variant with settings of its own, its annotations postponed (pydantic resolves them in the file's module)
WITH_SETTINGS = """
from __future__ import annotations

from pydantic import Field

from dnibench.fields import Real
from dnibench.methods import register
from dnibench.methods.base import MethodSettings
from dnibench.methods.bprop import Backprop


class SlowSettings(MethodSettings):
    slowdown: Real = Field(2.0, gt=0.0)


@register
class Slow(Backprop):
    name = "slow_settings"
    Settings = SlowSettings
"""


def test_a_method_files_own_settings_with_postponed_annotations(tmp_path, registry):
    path = tmp_path / "slow.py"
    path.write_text(WITH_SETTINGS)
    cls, _ = load_method_file(path)
    assert cls.Settings().slowdown == 2.0 and cls.Settings(slowdown=0.5).slowdown == 0.5
    with pytest.raises(ValueError, match="greater than 0"):
        cls.Settings(slowdown=0.0)
    with pytest.raises(ValueError, match="is not a number"):   # fields.Real: true/false is not a number
        cls.Settings(slowdown=True)


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "dnibench.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_runs_a_variant_file_and_compare_and_report_show_it(tmp_path, fake_mnist_data_dir):
    """Exactly what the README says: a new method file in a temporary folder, named by its path in a
    suite next to bprop and cdni for two models, run at smoke with 2 seeds, then compare and report."""
    variant_dir, elsewhere = tmp_path / "my_variants", tmp_path / "elsewhere"
    variant_dir.mkdir(), elsewhere.mkdir()
    write_variant(variant_dir, "frozen_first")
    suite = write_suite(variant_dir, "frozen_first.py", suite="my_variant")
    uri = f"sqlite:///{tmp_path}/m.db"
    # From another working directory: the relative path is taken from the suite's folder.
    ran = run_cli("run", str(suite), "--profile", "smoke", "--seeds", "2", "--device", "cpu", "--tracking-uri", uri,
                  "--data-dir", str(fake_mnist_data_dir), "--no-progress", cwd=elsewhere)
    assert ran.returncode == 0, ran.stderr
    assert "12 run(s) done" in ran.stdout
    # what the runs train on, said before they start: the fixture's 12 images are not the full MNIST
    assert (f"dnibench: mnist: 12 train and 5 test examples from IDX files in {(tmp_path / 'idx').resolve()} (not the "
            "full data set: the report gives these runs no verdict)\n") in ran.stdout
    assert executions(variant_dir / "frozen_first.py") == 1       # one process: planned and run from one load

    compared = run_cli("compare", "my_variant", "--tracking-uri", uri, "--out", str(tmp_path / "cmp"), cwd=elsewhere)
    assert compared.returncode == 0, compared.stderr
    table = pd.read_csv(tmp_path / "cmp" / "compare_my_variant_smoke.csv")
    assert sorted(table["method"].unique()) == ["Bprop", "cDNI", "frozen_first"]
    rows = table[table["method"] == "frozen_first"]
    assert sorted(rows["model"]) == ["fcn3", "fcn4"] and (rows["seeds"] == 2).all()
    assert (table["seeds"] == 2).all() and len(table) == 6
    assert rows["vs bprop"].str.match(r"^-?\d+\.\d\d ± \d+\.\d\d$").all()     # a difference with its CI
    assert "| fcn3 | frozen_first | 2 |" in compared.stdout

    reported = run_cli("report", "--tracking-uri", uri, "--out", str(tmp_path / "reports"),
                       "--suites-dir", str(variant_dir), cwd=elsewhere)
    assert reported.returncode == 0, reported.stderr
    readme = (tmp_path / "reports" / "README.md").read_text()
    section = readme.split("`my_variant` at `smoke`")[-1]
    for model in ("fcn3", "fcn4"):
        assert f"| {model} | frozen_first | 2 |" in readme
    assert "frozen_first" in section
    # and, first, what the runs trained on (their data tags): the fixture's fake 12-image MNIST, not the full set
    assert [line for line in readme.splitlines() if line.startswith("## ")][0] == "## Data"
    assert f"| mnist | IDX files in {(tmp_path / 'idx').resolve()} | 12 | 5 | no | 12 |" in readme
    assert "**12 run(s) trained on data other than the full set**" in readme
    generic = pd.read_csv(tmp_path / "reports" / "compare_my_variant_smoke.csv")
    pd.testing.assert_frame_equal(generic[["model", "method", "seeds"]], table[["model", "method", "seeds"]])
