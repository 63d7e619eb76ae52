"""The bad-input corpus, part 1: suite files and `run` flags, each through the real CLI (issue 8).

Most cases fail while the suite file and the flags are checked, before torch or MLflow is imported
(about 0.3 s a process); the few that need the method registry or the data are grouped at the end."""
from __future__ import annotations

import os
import re

import pytest


MINIMAL = """\
name: tiny
task: mnist
train: {steps: 2, batch_size: 4, eval_every: 1, log_every: 1, train_subset: 8, test_subset: 4}
profiles: {smoke: {}, quick: {}, paper: {}}
entries:
  - model: fcn3
    method: [bprop, dni]
    args: {dni: {synth_hidden_layers: 1, synth_width: 8}}
"""


def _bomb() -> str:
    lines = ['a0: &a0 ["xxxxxxxx", "xxxxxxxx", "xxxxxxxx", "xxxxxxxx", "xxxxxxxx", "xxxxxxxx", "xxxxxxxx", "xxxxxxxx", "xxxxxxxx"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


def swap(old: str, new: str) -> str:
    assert old in MINIMAL, old
    return MINIMAL.replace(old, new, 1)


# (id, suite text, a regex the one error line must match). Each is a suite a person could write.
SUITE_CASES = [
    ("empty-file", "", r"expected a mapping"),
    ("top-level-list", "- a\n- b\n", r"expected a mapping"),
    ("top-level-scalar", "just words\n", r"expected a mapping"),
    ("unclosed-bracket", "name: [tiny\n", r"malformed YAML at line"),
    ("tab-indent", "name: tiny\n\ttask: mnist\n", r"malformed YAML"),
    ("bad-indent", "name: tiny\n  task: mnist\n task: x\n", r"malformed YAML"),
    ("duplicate-task", MINIMAL + "task: copy\n", r"duplicate key 'task' \(first at line 2\)"),
    ("duplicate-name", "name: other\n" + MINIMAL, r"duplicate key 'name'"),
    ("duplicate-nested-key", swap("train: {steps: 2,", "train: {steps: 2, steps: 3,"), r"duplicate key 'steps'"),
    ("duplicate-profile", swap("profiles: {smoke: {},", "profiles: {smoke: {}, smoke: {seeds: 2},"),
     r"duplicate key 'smoke'"),
    ("alias-bomb-1kb", _bomb(), r"alias bomb"),
    ("recursive-alias", "a: &a [*a]\n", r"recursive"),
    ("deep-nesting", "[" * 3000 + "]" * 3000 + "\n", r"nested too deeply"),
    ("unknown-alias", "name: *nope\n", r"malformed YAML.*alias"),
    ("over-1mb", MINIMAL + "#" + "x" * 1_100_000 + "\n", r"at most 1000000"),
    ("unknown-top-field", MINIMAL + "colour: blue\n", r"field 'colour': Extra inputs"),
    ("missing-name", MINIMAL.replace("name: tiny\n", ""), r"field 'name': Field required"),
    ("name-with-path", swap("name: tiny", "name: ../../evil"), r"field 'name'.*pattern"),
    ("name-megabyte-value", swap("name: tiny", "name: " + "Q" * 200_000), r"field 'name'.*\.\.\."),
    ("missing-profiles", swap("profiles: {smoke: {}, quick: {}, paper: {}}\n", ""), r"field 'profiles'"),
    ("missing-paper-profile", swap(", paper: {}}", "}"), r"missing paper"),
    ("no-entries", MINIMAL.split("entries:")[0] + "entries: []\n", r"field 'entries'"),
    ("entry-without-model", swap("  - model: fcn3\n    method", "  - method"), r"entries.0.model.*required"),
    ("steps-true", swap("steps: 2", "steps: true"), r"steps.*valid integer; got True"),
    ("steps-zero", swap("steps: 2", "steps: 0"), r"steps.*greater than or equal to 1"),
    ("steps-negative", swap("steps: 2", "steps: -5"), r"steps"),
    ("steps-1e12", swap("steps: 2", "steps: 1000000000000"), r"steps.*less than or equal to 10000000"),
    ("steps-word", swap("steps: 2", "steps: four"), r"steps.*valid integer"),
    ("steps-fraction", swap("steps: 2", "steps: 5.5"), r"steps.*valid integer"),
    ("batch-1e12", swap("batch_size: 4", "batch_size: 1000000000000"), r"batch_size.*less than or equal"),
    ("batch-over-subset", swap("batch_size: 4", "batch_size: 16"), r"batch_size 16 is larger than train_subset 8"),
    ("lr-inf", swap("steps: 2,", "steps: 2, lr: .inf,"), r"lr.*finite"),
    ("lr-negative", swap("steps: 2,", "steps: 2, lr: -0.1,"), r"lr.*greater than 0"),
    ("decay-after-last-step", swap("steps: 2,", "steps: 2, lr_decay_at: [3],"),
     r"lr_decay_at 3 is after the run's last step \(2\): the decay would never apply"),
    ("decay-at-step-0", swap("steps: 2,", "steps: 2, lr_decay_at: [0],"), r"lr_decay_at 0: steps count from 1"),
    ("lr-true", swap("steps: 2,", "steps: 2, lr: true,"), r"lr.*expected a number; got True"),
    ("decay-factor-yes", swap("steps: 2,", "steps: 2, lr_decay_factor: yes,"), r"lr_decay_factor.*expected a number"),
    ("single-seed-one", swap("quick: {}", "quick: {single_seed: 1, single_seed_reason: costly}"), r"single_seed.*valid boolean"),
    ("decay-factor-2", swap("steps: 2,", "steps: 2, lr_decay_factor: 2,"), r"lr_decay_factor"),
    ("eval-every-0", swap("eval_every: 1", "eval_every: 0"), r"eval_every"),
    ("cnn-filters-huge", swap("steps: 2,", "steps: 2, cnn_filters: 10000000,"), r"cnn_filters"),
    ("subset-zero", swap("train_subset: 8", "train_subset: 0"), r"train_subset"),
    ("unknown-train-field", swap("steps: 2,", "steps: 2, epochs: 3,"), r"epochs.*Extra inputs"),
    ("profile-seeds-1e9", swap("quick: {}", "quick: {seeds: 1000000000}"), r"seeds.*less than or equal to 1000"),
    ("profile-seeds-true", swap("quick: {}", "quick: {seeds: true}"), r"seeds.*valid integer"),
    ("profile-unknown-field", swap("quick: {}", "quick: {speed: 3}"), r"speed.*Extra inputs"),
    ("single-seed-no-reason", swap("paper: {}", "paper: {single_seed: true}"), r"single_seed_reason"),
    # a value only the paper profile uses fails at load, whatever profile is run
    ("paper-only-bad-steps", swap("paper: {}", "paper: {train: {steps: 0}}"), r"at profile paper.*steps"),
    ("entry-unknown-profile", MINIMAL + "    profiles: [smoke, nightly]\n", r"unknown profile 'nightly'"),
    ("empty-sweep", MINIMAL + "    sweep: {p_update: []}\n", r"sweep"),
    ("sweep-samples-1e9", MINIMAL + "    sweep: {p_update: {uniform: [0.1, 1.0], samples: 1000000000}}\n",
     r"field 'entries.0.sweep.p_update"),
    ("binary-file", None, r"not a UTF-8 text file"),
]


@pytest.mark.parametrize("case_id,text,match", SUITE_CASES, ids=[c[0] for c in SUITE_CASES])
def test_bad_suite_file(outcomes, case_id, text, match):
    outcomes[f"suite-{case_id}"].check(match)


# (id, arguments after `run suite.yaml`, environment, regex). The suite itself is valid.
FLAG_CASES = [
    ("device-nope", ["--device", "nope"], {}, r"--device 'nope'"),
    ("device-meta", ["--device", "meta"], {}, r"--device 'meta'.*auto, cpu, cuda or cuda:N"),
    ("device-injection", ["--device", "cpu; rm -rf /"], {}, r"--device"),
    ("seeds-zero", ["--seeds", "0"], {}, r"--seeds 0"),
    ("seeds-1e9", ["--seeds", "1000000000"], {}, r"--seeds 1000000000: expected 1..1000"),
    ("seeds-word", ["--seeds", "abc"], {}, r"invalid int value"),
    ("profile-unknown", ["--profile", "nightly"], {}, r"invalid choice: 'nightly'"),
    ("shard-zero-count", ["--shard", "1/0"], {}, r"--shard 1/0"),
    ("shard-negative", ["--shard", "-1/2"], {}, r"--shard"),
    ("shard-words", ["--shard", "a/b"], {}, r"--shard 'a/b'"),
    ("shard-index-too-big", ["--shard", "2/2"], {}, r"--shard 2/2"),
    ("shard-fraction", ["--shard", "1.5/2"], {}, r"--shard"),
    ("shard-three-parts", ["--shard", "0/2/3"], {}, r"--shard"),
    ("unknown-flag", ["--fast"], {}, r"unrecognized arguments: --fast"),
]


@pytest.mark.parametrize("case_id,args,env,match", FLAG_CASES, ids=[c[0] for c in FLAG_CASES])
def test_bad_run_flag(outcomes, case_id, args, env, match):
    outcomes[f"flag-{case_id}"].check(match)


CLI_CASES = [
    ("missing-suite", ["run", "nope.yaml"], r"nope.yaml: suite file does not exist"),
    ("suite-is-directory", ["run", "adir"], r"adir: is a directory"),
    ("no-suite", ["run"], r"arguments are required: suites"),
    ("unknown-command", ["train"], r"invalid choice: 'train'"),
    ("no-command", [], r"required: command"),
    ("report-out-is-file", ["report", "--out", "afile.txt"], r"--out afile.txt: afile.txt is not a directory"),
    ("report-out-under-file", ["report", "--out", "afile.txt/sub"], r"afile.txt is not a directory"),
    ("compare-out-is-file", ["compare", "tiny", "--out", "afile.txt"], r"is not a directory"),
    ("data-unknown-set", ["data", "fetch", "imagenet"], r"invalid choice: 'imagenet'"),
    ("data-no-action", ["data"], r"required: action"),
    ("run-data-dir-is-file", ["run", "good.yaml", "--data-dir", "afile.txt"], r"--data-dir afile.txt: afile.txt is not a dir"),
    ("run-cifar-dir-is-file", ["run", "good.yaml", "--cifar-dir", "afile.txt/x"], r"--cifar-dir .*is not a directory"),
    ("fetch-data-dir-is-file", ["data", "fetch", "mnist", "--data-dir", "afile.txt"], r"--data-dir afile.txt"),
    ("fetch-from-missing-idx", ["data", "fetch", "mnist", "--from-idx", "nope"], r"--from-idx nope: no such directory"),
    ("fetch-from-empty-idx", ["data", "fetch", "mnist", "--from-idx", "adir"], r"adir: missing MNIST IDX file"),
    ("report-bad-suite-in-suites-dir", ["report", "--out", "rep", "--suites-dir", "sdir"], r"sdir/bad.yaml: field 'task'"),
    ("compare-unknown-suite", ["compare", "nosuch"], r"no finished runs of suite 'nosuch'"),
    ("report-missing-suites-dir", ["report", "--out", "rep", "--suites-dir", "nodir"], r"--suites-dir nodir: not a directory"),
]


@pytest.mark.parametrize("case_id,args,match", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_bad_command_line(outcomes, case_id, args, match):
    outcomes[f"cli-{case_id}"].check(match)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file anyway")
def test_unreadable_suite(sandbox):
    path = sandbox.write("suite.yaml", MINIMAL)
    path.chmod(0)
    try:
        sandbox.reject("run", "suite.yaml", "--no-progress", match=r"permission denied")
    finally:
        path.chmod(0o644)


COPY = """\
name: tiny
task: copy
train: {steps: 2, batch_size: 4, lr_decay_at: []}
profiles: {smoke: {}, quick: {}, paper: {}}
entries:
  - model: lstm64
    method: bptt
"""

# These need the method registry, the task code or the launcher environment (torch is imported):
# seconds each, so only the cases that cannot fail earlier.
LATE_CASES = [
    ("unknown-method", swap("method: [bprop, dni]", "method: [bprop, dnii]"), {}, r"unknown method 'dnii'"),
    ("unknown-task", swap("task: mnist", "task: imagenet"), {}, r"unknown task 'imagenet'"),
    ("unknown-model", swap("model: fcn3", "model: fcn999"), {}, r"fcn999"),
    ("synth-layers-true", swap("synth_hidden_layers: 1", "synth_hidden_layers: true"), {},
     r"synth_hidden_layers.*valid integer; got True"),
    ("synth-width-1e9", swap("synth_width: 8", "synth_width: 1000000000"), {}, r"synth_width.*less than or equal"),
    ("args-for-another-method", swap("args: {dni:", "args: {dnii:"), {},
     r"entries\[0\]\.args: 'dnii' is not a method of this entry \(bprop, dni\); its settings would be ignored"),
    ("profile-args-for-no-method", swap("quick: {}", "quick: {method_args: {cdni: {synth_width: 3}}}"), {},
     r"profiles\.quick\.method_args: 'cdni' is not a method of any entry \(bprop, dni\).*\(at profile quick\)"),
    ("profile-parallel-for-no-entry", swap("quick: {}", "quick: {parallel: {workers: [1, 2]}}"), {},
     r"profiles\.quick\.parallel: no entry has a parallel block.*it would be ignored"),
    ("copy-eval-every", COPY.replace("steps: 2,", "steps: 2, eval_every: 1,"), {},
     r"entries\[0\]: train\.eval_every: task 'copy' does not use it; it would be ignored"),
    ("copy-train-subset", COPY.replace("quick: {}", "quick: {train: {train_subset: 100}}"), {},
     r"train\.train_subset: task 'copy' does not use it.*\(at profile quick\)"),
    ("ptb-train-subset", COPY.replace("task: copy", "task: ptb").replace("quick: {}", "quick: {train: {train_subset: 100}}"),
     {}, r"train\.train_subset: task 'ptb' does not use it.*\(at profile quick\)"),
    ("cnn-filters-without-a-cnn", swap("steps: 2,", "steps: 2, cnn_filters: 8,"), {},
     r"train\.cnn_filters: no entry has a CNN; it would be ignored"),
    ("p-update-true", swap("synth_width: 8", "synth_width: 8, p_update: true"), {}, r"p_update.*expected a number; got True"),
    ("synth-lr-on", swap("synth_width: 8", "synth_width: 8, synth_lr: on"), {}, r"synth_lr.*expected a number"),
    ("quick-only-bad-setting", swap("quick: {}", "quick: {method_args: {dni: {synth_hidden_layers: 7}}}"), {},
     r"synth_hidden_layers.*\(at profile quick\)"),
    ("sweep-too-many-runs", MINIMAL + "    sweep: {p_update: [" + ", ".join(["0.5"] * 400) + "], delay: ["
     + ", ".join(map(str, range(400))) + "]}\n", {}, r"runs at profile 'smoke'.*at most 100000"),
    ("method-file-missing", swap("method: [bprop, dni]", "method: [bprop, variants/nope.py]"), {},
     r"method file variants/nope.py does not exist"),
    ("recurrent-method-on-mnist", swap("method: [bprop, dni]", "method: [bprop, bptt]"), {}, r"'bptt' is for 'rnn'"),
    ("world-size-without-rank", MINIMAL, {"WORLD_SIZE": "2"}, r"WORLD_SIZE=2 but RANK is not set"),
    ("world-size-word", MINIMAL, {"WORLD_SIZE": "two"}, r"WORLD_SIZE='two'"),
    ("rank-too-big", MINIMAL, {"WORLD_SIZE": "2", "RANK": "5"}, r"RANK='5'"),
]


LAUNCHER_CASES = [case for case in LATE_CASES if case[2]]


@pytest.mark.parametrize("case_id,text,env,match", LAUNCHER_CASES, ids=[c[0] for c in LAUNCHER_CASES])
def test_bad_launcher_environment_found_at_plan_time(outcomes, case_id, text, env, match):
    outcomes[f"late-{case_id}"].check(match)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, contract):
    """Every case of this file, run once, two (one per CPU) at a time; each test checks its own."""
    Case = contract.Case
    run = ["run", "suite.yaml", "--profile", "smoke", "--no-progress"]
    cases = [Case(f"suite-{i}", run, m, files={"suite.yaml": b"name: \xff\xfe\x00tiny\n" if t is None else t})
             for i, t, m in SUITE_CASES]
    cases += [Case(f"flag-{i}", ["run", "suite.yaml", "--no-progress", *a], m, files={"suite.yaml": MINIMAL}, env=e)
              for i, a, e, m in FLAG_CASES]
    cli_files = {"adir": None, "afile.txt": "a user's file\n", "good.yaml": MINIMAL, "sdir/bad.yaml": "name: bad\n"}
    cases += [Case(f"cli-{i}", a, m, files=cli_files) for i, a, m in CLI_CASES]
    cases += [Case(f"late-{i}", run, m, files={"suite.yaml": t}, env=e) for i, t, e, m in LATE_CASES if e]
    # The slow ones (torch imported) first, so the pool is not left waiting on one at the end.
    cases.sort(key=lambda c: not c.id.startswith(("late-", "cli-")))
    return contract.run_cases(tmp_path_factory.mktemp("cases"), cases)


def test_bad_input_found_at_plan_time_before_mlflow_is_imported(sandbox, contract):
    """The plan-time cases without a launcher environment, each through `dnibench run`'s main() in one
    interpreter (one process each would cost seconds of imports apiece): one error line each, exit 2, nothing
    written. A bad method, task or setting needs the method files (torch), not MLflow: `run` plans every
    suite before it imports the runner, so such a typo is answered seconds sooner, with the runner's line."""
    cases = [(case_id, text, match) for case_id, text, env, match in LATE_CASES if not env]
    calls = [f"run {sandbox.write(f'{case_id}.yaml', text)} --profile smoke --no-progress" for case_id, text, _ in cases]
    before = contract.snapshot(sandbox.cwd)
    results, errors = contract.imports_after(sandbox.cwd, sandbox.env, calls)
    contract.assert_no_writes(sandbox.cwd, before, ())
    assert len(cases) >= 9 and results == [("2", "True", "False", "False")] * len(calls), results
    assert len(errors) == len(cases)
    for line, (case_id, _, match) in zip(errors, cases):
        assert line.startswith("dnibench: error: ") and re.search(match, line), (case_id, line)
    assert not sandbox.store.exists()


def test_every_bad_suite_gets_its_line_from_main_in_this_process(tmp_path):
    """The suite cases and the late ones without a launcher environment, through `dnibench run`'s main() called in
    this interpreter: exit 2 and the same line as through a process (the tests above), nothing written. In one
    process the planner's refusals are traced by a mutation tester (mutmut follows no subprocess), so a refusal
    that stops refusing is a killed mutant, not only a failed CLI case."""
    import contextlib
    import io

    from dnibench.cli import main

    cases = [(i, t, m) for i, t, m in SUITE_CASES] + [(i, t, m) for i, t, e, m in LATE_CASES if not e]
    store = tmp_path / "store.db"
    for case_id, text, match in cases:
        path = tmp_path / f"{case_id}.yaml"
        path.write_bytes(b"name: \xff\xfe\x00tiny\n" if text is None else text.encode())
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["run", str(path), "--profile", "smoke", "--no-progress", "--tracking-uri", f"sqlite:///{store}"])
        lines = err.getvalue().splitlines()
        assert code == 2 and len(lines) == 1, (case_id, code, lines)
        assert lines[0].startswith("dnibench: error: ") and re.search(match, lines[0]), (case_id, lines[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{c[0]}.yaml" for c in cases)
