"""Verdicts that noise cannot pass: the cases of issue 7 §2, the rule's boundaries, and a real MLflow
store of widely scattered seeds whose rendered report has no "within tolerance" cell anywhere."""
import math

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from scipy import stats

from dnibench.methods import get_method
from dnibench.report import write_report
from dnibench.report.context import ReportContext, load_published
from dnibench.report.verdict import (FAILS, HOLDS, NO_RUNS, NOT_COMPARABLE, NOT_REACHED, ONE_SEED, OUTSIDE, WITHIN,
                                     at_most, is_inconclusive, is_single_seed, judge, lower_than, mean_ci, seeds_needed,
                                     single_seed_note, slower_than, verdict, welch_ci)
from dnibench.runner import ROLE
from dnibench.suite import Suite

TOL = 0.3


def overlaps(values, published, tolerance=TOL):
    """The rule this module replaced: the CI touches published ± tolerance (a wider spread passes more)."""
    mean, half, n = mean_ci(values)
    half = half if n > 1 else 0.0
    return mean - half <= published + tolerance and mean + half >= published - tolerance


# --- the cases of the issue -------------------------------------------------------------------------

def test_spread_seeds_are_inconclusive_not_within():
    for values in ([2, 4, 6], [1, 9]):
        assert overlaps(values, 2.2)                        # the old rule passed them
        label = judge(values, 2.2, TOL)
        assert label != WITHIN and label.startswith("inconclusive (CI ±"), label
    assert judge([2, 4, 6], 2.2, TOL) == "inconclusive (CI ±4.97 > tolerance 0.3; about 174 seeds needed)"


def test_tight_seeds_far_from_published_are_outside():
    assert not overlaps([2.9, 3.0, 3.1], 2.2)
    assert judge([2.9, 3.0, 3.1], 2.2, TOL) == OUTSIDE          # |3.0 - 2.2| = 0.8 > 0.3


def test_far_mean_is_outside_even_with_a_wide_ci():
    assert judge([8, 10, 12], 2.2, TOL) == OUTSIDE             # 10 - 4.97 is still 7.5 past 2.2 + 0.3


def test_one_seed_is_inconclusive_unless_the_profile_is_single_seed():
    assert judge([2.2], 2.2, TOL) == ONE_SEED == "1 seed: inconclusive"
    assert judge([2.2], 2.2, TOL, single_seed=True) == WITHIN
    assert judge([3.0], 2.2, TOL, single_seed=True) == OUTSIDE
    assert at_most(1.5, math.nan, 1, 2.0, TOL) == ONE_SEED


def test_one_sided_about_two_percent_holds_at_one_and_a_half():
    assert at_most(*mean_ci([1.4, 1.5, 1.6]), 2.0, TOL) == HOLDS
    assert at_most(1.5, math.nan, 1, 2.0, TOL, single_seed=True) == HOLDS
    assert judge([1.4, 1.5, 1.6], 2.0, TOL) == OUTSIDE          # as a two-sided cell it would not
    assert at_most(*mean_ci([2.8, 2.9, 3.0]), 2.0, TOL) == FAILS
    assert at_most(*mean_ci([0, 2, 4]), 2.0, TOL).startswith("inconclusive")
    assert at_most(*mean_ci([0.5, 1.0, 1.5]), 2.0, TOL) == HOLDS    # CI wide, but all of it under 2.3


def test_unlock_that_never_reaches_the_target_is_not_slower():
    assert slower_than([math.inf, math.inf], [100, 100], 10) == f"{NOT_REACHED} (2 of 2 seeds)"
    assert slower_than([500, math.inf, 500], [100, 100, 100], 10) == f"{NOT_REACHED} (1 of 3 seeds)"
    assert slower_than([500, 510, 490], [100, 110, 90], 10) == HOLDS
    assert slower_than([100, 100, 100], [100, 100, 100], 10) == FAILS     # same iteration: not slower
    assert slower_than([500, 510], [math.inf, math.inf], 10, reference="Bprop").startswith("Bprop did not reach")


# --- the rule's pieces ------------------------------------------------------------------------------

def test_mean_ci_uses_student_t():
    mean, half, n = mean_ci([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3) and half == pytest.approx(4.30265273 / math.sqrt(3))
    assert mean_ci([5.0, float("nan")])[::2] == (5.0, 1) and math.isnan(mean_ci([5.0])[1])
    assert mean_ci([])[2] == 0


@pytest.mark.parametrize("mean, half, n, published, comparable, expected", [
    (2.2, 0.1, 3, 2.0, True, WITHIN),
    (2.3, 0.0, 3, 2.0, True, WITHIN),              # exactly at published + tolerance
    (2.5, 0.3, 3, 2.2, True, WITHIN),              # half-width exactly the tolerance: still decides
    (2.7, 0.25, 3, 2.2, True, OUTSIDE),            # mean 0.5 away; the CI touching the band does not help
    (1.5, 0.15, 3, 2.2, True, OUTSIDE),            # below, too
    (2.2, 0.31, 3, 2.2, True, "inconclusive"),     # on the value, but the seeds disagree by more than 0.3
    (2.0, 0.1, 3, 2.0, False, NOT_COMPARABLE),
    (float("nan"), float("nan"), 0, 2.0, True, NO_RUNS),
    (2.0, 0.1, 3, None, True, "no published value"),
])
def test_verdict(mean, half, n, published, comparable, expected):
    assert verdict(mean, half, n, published, TOL, comparable).split(" (")[0] == expected


def test_seeds_needed_is_the_first_n_whose_ci_fits_the_tolerance():
    sd = 2.0
    n = seeds_needed(sd, TOL)
    half = lambda k: stats.t.ppf(0.975, k - 1) * sd / math.sqrt(k)  # noqa: E731
    assert half(n) <= TOL < half(n - 1) and n == 174
    assert seeds_needed(1e6, TOL) is None                     # past the cap: "more than"
    assert "more than 100000 seeds needed" in judge([0, 2e6], 1e6, TOL)


def test_welch_ci_matches_scipy_and_lower_than_reads_it():
    a, b = [1.360, 1.361, 1.359, 1.362], [1.380, 1.383, 1.379]
    diff, half, na, nb = welch_ci(a, b)
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval()
    assert (na, nb) == (4, 3) and diff - half == pytest.approx(ci.low) and diff + half == pytest.approx(ci.high)
    assert lower_than(a, b, 0.005) == HOLDS and lower_than(b, a, 0.005) == FAILS
    assert lower_than([1.37, 1.3701, 1.3699], [1.37, 1.3702, 1.3698], 0.005).startswith(f"{FAILS} (no difference")
    assert lower_than([1.30, 1.44], [1.31, 1.45], 0.005).startswith("inconclusive")
    assert lower_than([1.3], [1.4], 0.005) == ONE_SEED and lower_than([1.3], [1.4], 0.005, single_seed=True) == HOLDS


def test_at_most_between_the_two_ends_is_decided_by_the_mean_when_the_ci_is_narrow():
    # bound 2.0 + 0.3 = 2.3; the CI straddles it and is no wider than the tolerance: the mean decides
    assert at_most(2.2, 0.2, 3, 2.0, TOL) == HOLDS            # 2.0 .. 2.4, mean under the bound
    assert at_most(2.4, 0.2, 3, 2.0, TOL) == FAILS            # 2.2 .. 2.6, mean over it
    assert at_most(2.0, 0.3, 3, 2.0, TOL) == HOLDS            # the CI's top exactly at the bound
    # two seeds: their half-width counts (as a point, 2.0 would hold); wider than the tolerance, inconclusive, with
    # the seeds its spread would need: sd = 0.8 sqrt(2) / t(0.975, 1) = 0.089, and at n = 3 the CI is
    # t(0.975, 2) 0.089 / sqrt(3) = 0.22 <= 0.3
    sd = 0.8 * math.sqrt(2) / stats.t.ppf(0.975, 1)
    assert seeds_needed(sd, TOL) == 3
    assert at_most(2.0, 0.8, 2, 2.0, TOL) == "inconclusive (CI ±0.8 > tolerance 0.3; about 3 seeds needed)"


def test_seeds_needed_worked_by_hand():
    # one arm: t(0.975, n - 1) sd / sqrt(n) <= tolerance, first n from 2
    assert seeds_needed(1.0, 1.0) == 7           # n = 6: 2.571 / 2.449 = 1.05; n = 7: 2.447 / 2.646 = 0.92
    assert seeds_needed(0.5, 1.0) == 4           # n = 3: 4.303 * 0.5 / 1.732 = 1.24; n = 4: 3.182 * 0.5 / 2 = 0.80
    assert seeds_needed(0.01, 1.0) == 2          # two seeds are the least a spread needs
    assert seeds_needed(0.0, 1.0) == 2           # no spread
    # two arms of n seeds each: df = 2 (n - 1); n = 5: 2.306 / 2.236 = 1.03; n = 6: 2.228 / 2.449 = 0.91
    assert seeds_needed(1.0, 1.0, arms=2) == 6


def test_lower_than_says_how_many_seeds_a_side_would_need():
    # diff -1, each side's variance 2: the Welch CI (df 2) is far wider than 1; the two-arm spread is
    # sqrt(2 + 2) = 2, whose CI at n seeds a side falls to 1 at n = 17 (t(0.975, 32) 2 / sqrt(17) = 0.988;
    # n = 16: t(0.975, 30) 2 / 4 = 1.021)
    label = lower_than([0.0, 2.0], [1.0, 3.0], 1.0)
    assert label.startswith("inconclusive (CI ±") and label.endswith("; about 17 seeds needed)")
    # variances 0.5 each: spread 1, two arms (df 2 (n - 1)): n = 5 gives 2.306 / 2.236 = 1.03, n = 6 gives 0.91
    # (one arm would need 7, three arms 5)
    assert lower_than([0.0, 1.0], [1.0, 2.0], 1.0).endswith("; about 6 seeds needed)")


def test_slower_than_hands_its_tolerance_and_profile_to_lower_than():
    # a difference of 2 iterations with a spread of 2.5: within a tolerance of 10 iterations, no difference
    assert slower_than([102, 104, 100], [100, 101, 99], 10).startswith(f"{FAILS} (no difference")
    assert slower_than([102, 104, 100], [100, 101, 99], 1).startswith("inconclusive")
    assert slower_than([500], [100], 10) == ONE_SEED
    assert slower_than([500], [100], 10, single_seed=True) == HOLDS
    assert slower_than([500], [math.inf], 10) == "the reference did not reach the target (1 of 1 seeds): no comparison"
    assert slower_than([], [100], 10) == NO_RUNS == slower_than([100], [], 10)


def test_defaults_judge_a_comparable_multi_seed_cell():
    assert verdict(2.2, 0.1, 3, 2.0, TOL) == WITHIN
    assert verdict(2.2, math.nan, 1, 2.0, TOL) == ONE_SEED
    assert at_most(1.5, 0.1, 3, 2.0, TOL) == HOLDS and at_most(1.5, math.nan, 1, 2.0, TOL) == ONE_SEED


def test_a_mean_that_is_not_a_number_is_no_runs():
    assert verdict(math.nan, 0.1, 3, 2.0, TOL) == NO_RUNS
    assert verdict(None, 0.1, 3, 2.0, TOL) == NO_RUNS
    assert at_most(math.inf, 0.1, 3, 2.0, TOL) == NO_RUNS


def test_welch_ci_of_two_constant_sides_is_exact():
    assert welch_ci([1.0, 1.0], [2.0, 2.0]) == (-1.0, 0.0, 2, 2)
    assert lower_than([1.0, 1.0], [2.0, 2.0], TOL) == HOLDS


def test_float_noise_is_forgiven_relative_to_the_values():
    from dnibench.report.verdict import _le
    assert _le(2.5 - 2.2, 0.3) and _le(0.3, 0.3)
    assert _le(1e-3 + 5e-10, 1e-3)               # 1e-9 absolute near 0
    assert _le(1e6 + 1e-4, 1e6)                   # 1e-9 of the values when they are large
    assert not _le(1.0 + 1.5e-9, 1.0) and not _le(2.31, 2.3)


def test_single_seed_note_needs_a_profile_that_says_so():
    from types import SimpleNamespace
    assert single_seed_note(None, "quick") is None
    assert single_seed_note(SimpleNamespace(name="s"), "quick") is None            # no profiles at all
    suite = SimpleNamespace(name="s", profiles={"quick": SimpleNamespace(single_seed_reason="r")})
    assert single_seed_note(suite, "quick") is None                                 # not marked single-seed
    assert not is_single_seed(suite, "quick")
    suite.profiles["quick"].single_seed = True
    assert single_seed_note(suite, "quick").endswith("Reason given by the suite: r")
    assert is_single_seed(suite, "quick") and not is_single_seed(suite, "paper")


def test_is_inconclusive_reads_the_label():
    assert is_inconclusive(judge([2, 4, 6], 2.2, TOL)) and is_inconclusive(ONE_SEED)
    assert not is_inconclusive(WITHIN) and not is_inconclusive(FAILS)


def test_single_seed_profile_needs_a_reason_and_the_report_says_so():
    base = {"name": "s", "task": "mnist", "entries": [{"model": "fcn3", "method": "bprop"}]}
    suite = lambda paper: Suite.model_validate({**base, "profiles": {"smoke": {}, "quick": {}, "paper": paper}})  # noqa: E731
    with pytest.raises(ValueError, match="single_seed_reason"):
        suite({"single_seed": True})
    with pytest.raises(ValueError, match="seeds: 3"):
        suite({"single_seed": True, "single_seed_reason": "x", "seeds": 3})
    suite = suite({"single_seed": True, "single_seed_reason": "one GPU-week per run"})
    assert "one GPU-week per run" in single_seed_note(suite, "paper") and single_seed_note(suite, "quick") is None


# --- a real store of widely scattered seeds ---------------------------------------------------------

SPREAD = {"ff": 2.0, "copy": 8.0, "ptb": 0.1}      # each cell's seeds: published - s, published, published + s


def _store_run(client, exp_id, tags, params, finals, curve_key, k):
    """One FINISHED child run as the runner logs it: tags, params, a metric history ending at its final."""
    run = client.create_run(exp_id, tags={ROLE: "child", "device": "cpu", "git_commit": "0" * 40,
                                          "config_hash": f"h{k}", **tags})
    steps = int(params["train.steps"])
    final = next(iter(finals.values()))
    history = [Metric(curve_key, final + 5.0, 0, steps // 2), Metric(curve_key, final, 0, steps)]
    history += [Metric("wall_s/train", w, 0, s) for s, w in ((steps // 2, 1.0), (steps, 2.0))]
    metrics = [Metric(key, value, 0, steps) for key, value in finals.items()]
    client.log_batch(run.info.run_id, metrics=history + metrics,
                     params=[Param(key, str(value)) for key, value in params.items()])
    client.set_terminated(run.info.run_id, "FINISHED")


@pytest.fixture(scope="module")
def scattered_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("scattered")
    uri = f"sqlite:///{root}/m.db"
    client = MlflowClient(uri)
    published = load_published()
    cells = []          # (suite, task, model, method, extra params, metric key, published value, spread)
    for model in ("fcn3",):
        for method in published["table1"]["methods"]:
            cells.append(("mnist_ff", "mnist", model, method, {}, "final_test_error",
                          published["table1"]["mnist"][model][method], SPREAD["ff"]))
    cells += [("mnist_async", "mnist", "fcn4", "dni", {"method_args.p_update": 0.2}, "final_test_error", 2.0, 2.0),
              ("mnist_async", "mnist", "fcn4", "cdni", {"method_args.p_update": 0.05}, "final_test_error", 2.0, 2.0),
              ("mnist_async", "mnist", "fcn4", "cdni", {"method_args.p_update": 1.0}, "final_test_error", 2.0, 2.0)]
    cells += [("mnist_unlock", "mnist", "fcn4", m, {"method_args.p_update": 1.0}, "final_test_error", 2.0, 2.0)
              for m in ("bprop", "unlock_dni", "unlock_cdni")]
    rnn = published["rnn"]
    for method, key in (("bptt", "bptt"), ("dni_bptt", "dni")):
        cells.append(("rnn_copy", "copy", "lstm256", method, {"method_args.T": 3}, "max_len_solved",
                      rnn["copy"][key][3], SPREAD["copy"]))
        cells.append(("rnn_ptb", "ptb", "lstm1024", method, {"method_args.T": 3}, "test_bpc",
                      rnn["ptb"][key][3], SPREAD["ptb"]))
    experiments, k = {}, 0
    for suite, task, model, method, extra, key, value, spread in cells:
        if suite not in experiments:
            experiments[suite] = client.create_experiment(suite)
        for seed, final in enumerate([value - spread, value, value + spread]):
            tags = {"suite": suite, "profile": "paper", "task": task, "model": model, "method": method, "seed": str(seed)}
            params = {"train.steps": 1000, "seed": seed, **extra}
            if method == "dni_bptt":          # its settings as the runner logs them (the report reads some)
                defaults = get_method(method).Settings().model_dump()
                params.update({f"method_args.{k}": v for k, v in defaults.items() if f"method_args.{k}" not in params})
            finals = {key: final}
            if task == "mnist":
                finals.update({f"updates/stage{i}": 500.0 for i in range(1, 5)}, test_error=final)
            curve = "valid_bpc" if task == "ptb" else "test_error"
            _store_run(client, experiments[suite], tags, params, finals, curve, k)
            k += 1
            assert overlaps([value - spread, value, value + spread], value)   # the old rule passed every cell
    out = root / "reports"
    with pytest.MonkeyPatch.context() as patch:         # verdicts are under test, not drawing: skip rasterizing
        patch.setattr(ReportContext, "save_figure", _figure_not_drawn)
        write_report(uri, out, suites_dir="suites")
    return out


def _figure_not_drawn(self, fig, stem):
    import matplotlib.pyplot as plt

    plt.close(fig)
    paths = [self.out / f"{stem}.png", self.out / f"{stem}.pdf"]
    for path in paths:
        path.touch()
    return paths


def _table_lines(text):
    return [line for line in text.splitlines() if line.startswith("|")]


def test_scattered_seeds_never_render_within_tolerance(scattered_report):
    readme = (scattered_report / "README.md").read_text()
    tables = _table_lines(readme)
    assert len(tables) > 25
    assert not [line for line in tables if WITHIN in line]
    for csv in scattered_report.glob("*.csv"):
        assert WITHIN not in csv.read_text(), csv.name
    # ... and each section says why: its verdict cells read "inconclusive", with the seeds needed.
    sections = {title: body for title, body in
                (part.split("\n", 1) for part in readme.split("\n## ")[1:])}
    expected = {"Table 1": 4, "Sporadic updates": 2, "Complete unlock": 2, "Recurrent DNI": 5}
    for prefix, count in expected.items():
        body = next(body for title, body in sections.items() if title.startswith(prefix))
        rows = [line for line in _table_lines(body) if "inconclusive (CI ±" in line]
        assert sum(line.count("inconclusive (CI ±") for line in rows) >= count, prefix
        assert "seeds needed" in body


def test_scattered_seeds_tables_hold_their_labels(scattered_report):
    import pandas as pd

    table1 = pd.read_csv(scattered_report / "table1_paper.csv", keep_default_na=False)
    verdicts = table1[[c for c in table1 if c.endswith(" verdict")]]
    mnist = verdicts[table1["Dataset"] == "MNIST"].iloc[:1]
    assert mnist.map(lambda v: v.startswith("inconclusive (CI ±4.97 > tolerance 0.3")).all().all()
    rnn = pd.read_csv(scattered_report / "rnn_table_paper_cells.csv", keep_default_na=False)
    ran = rnn[rnn["seeds"] == 3]
    assert len(ran) == 4 and ran["verdict"].str.startswith("inconclusive").all()
    paired = pd.read_csv(scattered_report / "rnn_ptb_paired_paper.csv", keep_default_na=False)
    assert paired.set_index("claim").at["DNI lower than BPTT at T=3", "verdict"].startswith("inconclusive")
    unlock = pd.read_csv(scattered_report / "unlock_claims_paper.csv", keep_default_na=False)
    assert unlock.iloc[:, 3].str.startswith("inconclusive").all()


def test_single_seed_profile_is_judged_as_a_point_and_said_under_table1(tmp_path):
    import pandas as pd

    from dnibench.report.table1 import render

    suite = Suite.model_validate({"name": "mnist_ff", "task": "mnist", "entries": [{"model": "fcn3", "method": "dni"}],
                                  "profiles": {"smoke": {}, "quick": {}, "paper": {
                                      "single_seed": True, "single_seed_reason": "one GPU-week per run"}}})
    runs = pd.DataFrame([{"suite": "mnist_ff", "profile": "paper", "task": "mnist", "model": "fcn3", "method": m,
                          "seed": 0, "variant": m, "run_id": f"r{i}", "start_time": i, "metric.final_test_error": v}
                         for i, (m, v) in enumerate([("dni", 2.0), ("bprop", 2.5)])])
    ctx = ReportContext(tracking_uri="none", out=tmp_path, runs=runs, published=load_published(),
                        suites={"mnist_ff": suite})
    section = render(ctx)
    table = pd.read_csv(tmp_path / "table1_paper.csv", keep_default_na=False)
    fcn3 = table[(table["Dataset"] == "MNIST") & (table["Model"] == "FCN-3")].iloc[0]
    assert fcn3["DNI verdict"] == WITHIN and fcn3["Bprop verdict"] == OUTSIDE      # 2.0 vs 1.9; 2.5 vs 2.0
    assert "Single-seed profile (`mnist_ff` at `paper`)" in section.body and "one GPU-week per run" in section.body
    ctx.suites = {}                                   # the same runs without the opt-in: one seed decides nothing
    render(ctx)
    table = pd.read_csv(tmp_path / "table1_paper.csv", keep_default_na=False)
    assert (table.iloc[0][["DNI verdict", "Bprop verdict"]] == ONE_SEED).all()
