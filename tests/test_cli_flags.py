"""`dnibench run`'s flags and its summary through ``main()`` in this process: each refusal's line in full and its
edge, the directory flags of run, report and data, and what run prints and returns for an outcome. The runner and
the resume shortcut are replaced by recorders (what they are given is checked), so nothing trains. The same
refusals in real processes: tests/robustness/test_suite_and_flag_inputs.py."""
from pathlib import Path

import pytest

from dnibench import resume, runner
from dnibench.cli import main
from dnibench.runner import Outcome

SUITE = """
name: flags
task: mnist
train: {steps: 2, batch_size: 4, lr: 1.0e-3, lr_decay_at: [], eval_every: 2, log_every: 1}
profiles: {smoke: {}, quick: {}, paper: {}}
entries:
  - model: fcn3
    method: bprop
"""


@pytest.fixture
def suite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "flags.yaml"
    path.write_text(SUITE)
    return path


@pytest.fixture
def calls(monkeypatch):
    """The shortcut answers ``calls["outcome"]`` (None: the runner runs, and returns the same outcome)."""
    seen = {"outcome": Outcome(ran=1)}

    def nothing_left(*args, **kwargs):
        seen["nothing_left"] = args
        return seen["outcome"] if seen.get("shortcut", True) else None

    def run_suites(*args, **kwargs):
        seen["run_suites"] = (args, kwargs)
        return seen["outcome"]
    monkeypatch.setattr(resume, "nothing_left", nothing_left)
    monkeypatch.setattr(runner, "run_suites", run_suites)
    return seen


def refused(capsys, argv) -> str:
    assert main(argv) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.endswith("\n") and out.err.count("\n") == 1
    return out.err.removeprefix("dnibench: error: ").rstrip("\n")


def run(suite, *flags) -> list[str]:
    return ["run", str(suite), "--tracking-uri", "sqlite:///results/m.db", *flags]


def report_in(monkeypatch, tmp_path, write_report) -> list[str]:
    """``dnibench report`` on a store in ``tmp_path`` (run from there) with its suites' loading skipped and
    ``write_report`` in place of the report's: the command line to give main."""
    from dnibench import report
    from dnibench.report import context
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(context, "load_suites", lambda d: None)
    monkeypatch.setattr(report, "write_report", write_report)
    return ["report", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]


def test_run_flag_refusals_in_full(suite, calls, capsys, tmp_path):
    assert refused(capsys, run(suite, "--device", "g" * 50)) == (
        f"--device '{'g' * 40}': expected auto, cpu, cuda or cuda:N")
    for jobs in ("0", "257"):
        assert refused(capsys, run(suite, "--jobs", jobs)) == f"--jobs {jobs}: expected 1..256"
    for seeds in ("0", "1001"):
        assert refused(capsys, run(suite, "--seeds", seeds)) == f"--seeds {seeds}: expected 1..1000"
    (tmp_path / "afile").write_text("x")
    for flag in ("--data-dir", "--cifar-dir"):
        assert refused(capsys, run(suite, flag, "afile/sub")) == f"{flag} afile/sub: afile is not a directory"
        assert refused(capsys, run(suite, flag, "afile")) == f"{flag} afile: afile is not a directory"
    assert "nothing_left" not in calls and not (tmp_path / "results").exists()


def test_run_flags_at_their_edges_are_taken_and_passed_on(suite, calls, capsys, tmp_path):
    for flags in (["--jobs", "1"], ["--jobs", "256"], ["--seeds", "1"], ["--seeds", "1000"],
                  ["--data-dir", "not/yet/made", "--cifar-dir", "cifar", "--device", "cuda:12"]):
        assert main(run(suite, *flags)) == 0, capsys.readouterr().err
    assert calls["nothing_left"] == ([str(suite)], "quick", "cuda:12", None, "sqlite:///results/m.db",
                                     Path("not/yet/made"), Path("cifar"), None)
    calls["shortcut"] = False
    assert main(run(suite, "--profile", "smoke", "--seeds", "3", "--shard", " 1 / 2 ", "--jobs", "2", "--no-progress",
                    "--device", "cpu", "--data-dir", "d", "--cifar-dir", "c")) == 0
    assert calls["nothing_left"] == ([str(suite)], "smoke", "cpu", 3, "sqlite:///results/m.db", Path("d"), Path("c"),
                                     (1, 2))
    assert calls["run_suites"] == (([str(suite)], "smoke", "cpu", 3, "sqlite:///results/m.db", False, Path("d"),
                                    Path("c")), {"progress": False, "shard": (1, 2), "jobs": 2})
    del calls["nothing_left"]
    assert main(run(suite, "--force")) == 0                 # --force never asks the shortcut
    assert "nothing_left" not in calls                      # the defaults: quick, auto, every seed, no folders
    assert calls["run_suites"][0] == ([str(suite)], "quick", "auto", None, "sqlite:///results/m.db", True, None, None)
    assert calls["run_suites"][1] == {"progress": True, "shard": None, "jobs": 1}


def test_run_says_what_it_did_and_exits_1_when_a_run_failed(suite, calls, capsys):
    assert main(run(suite)) == 0
    assert capsys.readouterr().out == "dnibench: 1 run(s) done, 0 already finished (skipped)\n"
    calls["outcome"] = Outcome(ran=2, skipped=3, shared=4, failed=2,
                               failures=[("flags/fcn3/bprop/seed0", "diverged at step 2"), ("x/y", "z")])
    assert main(run(suite)) == 1
    assert capsys.readouterr().out == ("dnibench: 2 run(s) done, 4 shared, 3 already finished (skipped), 2 FAILED\n"
                                       "dnibench: FAILED flags/fcn3/bprop/seed0: diverged at step 2\n"
                                       "dnibench: FAILED x/y: z\n")


def test_a_setting_only_another_profile_uses_is_refused_before_the_runner(suite, calls, capsys):
    suite.write_text(SUITE.replace("paper: {}", "paper: {train: {batch_size: 0}}"))
    calls["shortcut"] = False
    assert refused(capsys, run(suite, "--profile", "smoke", "--seeds", "2")) == (
        f"{suite}: entries[0] at profile paper: field 'batch_size': Input should be greater than or equal to 1; got 0")
    assert "run_suites" not in calls


def test_report_and_data_directory_flags(suite, capsys, tmp_path):
    (tmp_path / "afile").write_text("x")
    assert refused(capsys, ["report", "--out", "afile/rep"]) == "--out afile/rep: afile is not a directory"
    assert refused(capsys, ["compare", "flags", "--out", "afile"]) == "--out afile: afile is not a directory"
    assert refused(capsys, ["report", "--suites-dir", "nowhere"]) == "--suites-dir nowhere: not a directory"
    fetch = ["data", "fetch", "mnist"]
    assert refused(capsys, [*fetch, "--from-idx", "nowhere"]) == "--from-idx nowhere: no such directory"
    assert refused(capsys, [*fetch, "--from-idx", "afile"]) == "--from-idx afile: afile is not a directory"
    assert refused(capsys, [*fetch, "--data-dir", "afile/d"]) == "--data-dir afile/d: afile is not a directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "flags.yaml"]


def test_shard_flag_forms_and_refusals(suite, calls, capsys):
    calls["shortcut"] = False
    for text, shard in (("0/1", (0, 1)), ("3/4", (3, 4)), (" 0 / 2 ", (0, 2))):
        assert main(run(suite, "--shard", text)) == 0 and calls["run_suites"][1]["shard"] == shard
    capsys.readouterr()
    for text in ("1/1", "4/4", "0/0"):
        index, count = text.split("/")
        assert refused(capsys, run(suite, "--shard", text)) == f"--shard {index}/{count}: expected 0 <= I < N (N >= 1)"
    for text in ("-1/2", "1/x", "z" * 50):
        assert refused(capsys, run(suite, f"--shard={text}")) == (
            f"--shard {text[:40]!r}: expected I/N with integers 0 <= I < N, e.g. 0/4")


def test_data_fetch_fetches_and_verifies_where_it_is_told(monkeypatch, capsys, tmp_path):
    from dnibench import data
    seen = []
    monkeypatch.setattr(data, "fetch_mnist", lambda d, idx_dir: seen.append(("fetch_mnist", d, idx_dir)) or "m/path")
    monkeypatch.setattr(data, "check_mnist_cache", lambda d: seen.append(("check_mnist_cache", d)))
    monkeypatch.setattr(data, "fetch_ptb", lambda d: seen.append(("fetch_ptb", d)) or "p/path")
    monkeypatch.setattr(data, "load_ptb", lambda d, fetch: seen.append(("load_ptb", d, fetch)))
    (tmp_path / "idx").mkdir()
    assert main(["data", "fetch", "mnist", "--data-dir", str(tmp_path / "c"), "--from-idx", str(tmp_path / "idx")]) == 0
    assert seen == [("fetch_mnist", tmp_path / "c", tmp_path / "idx"), ("check_mnist_cache", tmp_path / "c")]
    assert capsys.readouterr().out == "dnibench: mnist verified at m/path\n"
    seen.clear()
    assert main(["data", "fetch", "ptb", "--data-dir", str(tmp_path / "c")]) == 0
    assert seen == [("fetch_ptb", tmp_path / "c"), ("load_ptb", tmp_path / "c", False)]
    assert capsys.readouterr().out == "dnibench: ptb verified at p/path\n"


def test_report_and_compare_hand_on_what_they_were_given(monkeypatch, capsys, tmp_path):
    from dnibench import compare, report
    from dnibench.report import context
    monkeypatch.chdir(tmp_path)
    seen = []
    monkeypatch.setattr(context, "load_suites", lambda d: seen.append(("load_suites", d)))
    monkeypatch.setattr(report, "write_report",
                        lambda uri, out, suites_dir: seen.append((uri, out, suites_dir)) or [1, 2])
    uri = f"sqlite:///{tmp_path}/m.db"
    assert main(["report", "--tracking-uri", uri, "--out", "rep"]) == 0     # no suites/ here: no departures, fine
    assert seen == [("load_suites", Path("suites")), (uri, Path("rep"), Path("suites"))]
    assert capsys.readouterr().out == "dnibench: report written to rep/ (2 files)\n"
    (tmp_path / "mine").mkdir()
    seen.clear()
    assert main(["report", "--tracking-uri", uri, "--suites-dir", "mine"]) == 0
    assert seen == [("load_suites", Path("mine")), (uri, Path("reports"), Path("mine"))]
    capsys.readouterr()

    monkeypatch.setattr(compare, "compare", lambda *args: seen.append(("compare", *args)) or ("T", "M", "P"))
    monkeypatch.setattr(compare, "failed_runs", lambda *args: seen.append(("failed_runs", *args)) or "F")
    monkeypatch.setattr(compare, "render", lambda *args, failed: f"render{args} failed={failed}")
    monkeypatch.setattr(compare, "write_comparison", lambda *args: seen.append(("write", *args)) or "rep/cmp.csv")
    seen.clear()
    assert main(["compare", "s1", "--tracking-uri", uri, "--profile", "smoke", "--baseline", "dni",
                 "--metric", "loss", "--out", "rep"]) == 0
    assert seen == [("compare", uri, "s1", "smoke", "dni", "loss"), ("failed_runs", uri, "s1", "P"),
                    ("write", "T", Path("rep"), "s1", "P")]
    assert capsys.readouterr().out == ("render('T', 's1', 'P', 'M', 'dni') failed=F\n"
                                       "\n(also written to rep/cmp.csv)\n")
    seen.clear()
    assert main(["compare", "s1", "--tracking-uri", uri]) == 0
    assert seen[0] == ("compare", uri, "s1", None, "bprop", None)


def test_one_line_keeps_360_characters():
    from dnibench.cli import _one_line
    assert _one_line("a\n  b\tc ") == "a b c"
    assert _one_line("x" * 360) == "x" * 360
    assert _one_line("x" * 361) == "x" * 357 + "..."


@pytest.mark.parametrize("error, line", [
    (PermissionError(13, "Permission denied", "rep/fig.png"), "rep/fig.png: Permission denied"),
    (OSError(28, "No space left on device"), "No space left on device"),
    (OSError("the disk went away"), "the disk went away"),
])
def test_an_os_error_is_one_line_naming_the_file(monkeypatch, capsys, tmp_path, error, line):
    def write_report(*args, **kwargs):
        raise error
    assert refused(capsys, report_in(monkeypatch, tmp_path, write_report)) == line


def test_signals_during_a_command_and_after_it(monkeypatch, capsys, tmp_path, suite, calls):
    """run records SIGTERM (the runner stops at its next step); report stops at once; either way the caller's
    handlers are back when main returns. An interrupt ends the process at once with 130."""
    import signal

    from dnibench import cli, interrupt, report
    handlers = []
    report_cmd = report_in(monkeypatch, tmp_path,
                           lambda *a, **k: handlers.append(signal.getsignal(signal.SIGTERM)) or [])
    monkeypatch.setattr(resume, "nothing_left",
                        lambda *a: handlers.append(signal.getsignal(signal.SIGTERM)) or Outcome())
    before = signal.getsignal(signal.SIGTERM)
    assert main(report_cmd) == 0
    assert main(run(suite)) == 0
    assert handlers == [cli._interrupt, interrupt._handler] and signal.getsignal(signal.SIGTERM) is before

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    def exit_now(code):
        raise SystemExit(f"os._exit({code})")
    monkeypatch.setattr(report, "write_report", interrupted)
    monkeypatch.setattr(cli.os, "_exit", exit_now)
    capsys.readouterr()
    with pytest.raises(SystemExit, match=r"os\._exit\(130\)"):
        main(report_cmd)
    assert capsys.readouterr().err == "dnibench: interrupted; finished runs are kept, rerun to resume\n"
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_first_signal_is_recorded_with_its_name_and_a_second_raises_at_once():
    """README: the first Ctrl-C/SIGTERM stops at the next step (recorded; the run's failure tag names it), a second
    stops at once (raised in the handler); a cause said before the signal (a worker's parent gone) is the reason."""
    import signal

    from dnibench import interrupt
    previous = interrupt.install()
    try:
        assert interrupt.reason() == "interrupted"             # a KeyboardInterrupt that no signal sent
        interrupt._handler(signal.SIGINT, None)
        assert interrupt.reason() == "stopped by SIGINT"
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
        with pytest.raises(KeyboardInterrupt):
            interrupt._handler(signal.SIGTERM, None)
        assert interrupt.reason() == "stopped by SIGINT"         # the first one's name
        interrupt.because("its parent died")
        assert interrupt.reason() == "its parent died"
    finally:
        interrupt.restore(previous)
    assert interrupt.reason() == "interrupted"                 # forgotten with the handlers


def test_main_in_another_thread_touches_no_handler(monkeypatch, tmp_path):
    """Signal handlers can be set from the main thread only: elsewhere main leaves them alone."""
    import threading
    report_cmd = report_in(monkeypatch, tmp_path, lambda *a, **k: [])
    codes = []
    thread = threading.Thread(target=lambda: codes.append(main(report_cmd)))
    thread.start()
    thread.join()
    assert codes == [0]


def test_list_prints_every_method_task_and_suite(capsys, tmp_path):
    from dnibench.methods import BUILTIN
    for name in ("b.yaml", "a.yaml", "notes.txt"):
        (tmp_path / name).write_text("")
    assert main(["list", "--suites-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    methods = [f"  {name:14s} [{family}] {text}" for name, (_, family, text) in sorted(BUILTIN.items())]
    assert lines == ["methods:", *methods, "tasks:   cifar10, copy, mnist, multiscale, ptb, repeat_copy",
                     f"suites:  {tmp_path / 'a.yaml'}, {tmp_path / 'b.yaml'}"]
    assert "  dni            [ff] synthetic gradients between every layer, bootstrapped targets" in lines


def test_a_usage_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as code:
        main(["run", "x.yaml", "--jobs", "two"])
    assert code.value.code == 2
    assert capsys.readouterr().err == ("dnibench: error: argument --jobs: invalid int value: 'two' "
                                       "(see 'dnibench run --help')\n")
