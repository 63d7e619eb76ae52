"""Sporadic updates (p_update): the coins, the per-layer update counts the loop logs, and the suite
``sweep`` that makes the p_update grid."""
import math

import pytest
import torch
from torch import nn

from dnibench.data import ImageData
from dnibench.errors import SuiteError
from dnibench.methods import get_method
from dnibench.suite import RunSpec, TrainSettings, load_suite, plan
from dnibench.train import train_ff
from tiny_methods import build_method, random_batch

IN_SHAPE = (1, 4, 4)                    # tiny images: the coins, not the digits, are under test



def make(method, seed=0, **settings):
    return build_method(method, IN_SHAPE, "fcn4", seed, lr=1e-3, coin_seed=seed, **settings)


def batch(n=8):
    return random_batch(IN_SHAPE, n)


def stage_params(method):
    """Each stage's last parameter (a bias): it moves with every Adam step that has a gradient."""
    return [list(stage.parameters())[-1].detach().clone() for stage in method.stages]


def run_and_record(method, steps):
    """Per step: which stages the method counted as updated, and which actually changed."""
    x, y = batch()
    counted, changed = [], []
    for _ in range(steps):
        before_counts, before = list(method.update_counts), stage_params(method)
        method.step(x, y)
        counted.append([a != b for a, b in zip(method.update_counts, before_counts)])
        changed.append([not torch.equal(a, b) for a, b in zip(stage_params(method), before)])
    return counted, changed


def within_binomial(count, steps, p, sigmas=4.5):
    return abs(count - steps * p) <= sigmas * math.sqrt(steps * p * (1 - p)) + 1


def test_bprop_layer_updates_only_when_every_layer_above_did():
    steps, p = 200, 0.6
    bprop = make("bprop", p_update=p)
    counted, changed = run_and_record(bprop, steps)
    assert counted == changed                      # a counted update is a real parameter change, and only then
    for row in counted:                            # the updated stages are always a top suffix: backward stops at the first "no"
        lowest = row.index(True) if any(row) else len(row)
        assert all(row[lowest:]) and not any(row[:lowest])
    counts = bprop.update_counts
    assert counts == sorted(counts)                # non-decreasing towards the top
    n = len(counts)
    for i, count in enumerate(counts):             # stage i (0-based) of n: p^(n - i)
        assert within_binomial(count, steps, p ** (n - i)), (i, count, steps * p ** (n - i))


@pytest.mark.parametrize("method", ["dni", "cdni"])
def test_dni_layers_update_on_their_own_coins(method):
    steps, p = 200, 0.3
    dni = make(method, p_update=p, synth_hidden_layers=0)
    for synth in dni.synthesizers:                 # non-zero synthesizers: every counted update moves the stage
        nn.init.normal_(synth.net[-1].weight, std=0.1)
    counted, changed = run_and_record(dni, steps)
    assert counted == changed
    for count in dni.update_counts:
        assert within_binomial(count, steps, p)
    # Decoupled: a lower layer updates in steps where the top one does not (never possible with bprop).
    assert any(row[0] and not row[-1] for row in counted)


def test_training_loop_logs_updates_per_stage():
    g = torch.Generator().manual_seed(0)
    data = ImageData(torch.rand(64, *IN_SHAPE, generator=g), torch.randint(0, 10, (64,), generator=g),
                     torch.rand(16, *IN_SHAPE, generator=g), torch.randint(0, 10, (16,), generator=g), 10, "random")
    spec = RunSpec(suite="t", profile="smoke", task="mnist", model="fcn4", method="bprop",
                   method_args=get_method("bprop").Settings(p_update=0.5).model_dump(),
                   train=TrainSettings(steps=120, batch_size=8, lr=1e-3, lr_decay_at=[], eval_every=60, log_every=30),
                   seed=0, device="cpu")
    logged = {}
    train_ff(spec, data, lambda metrics, step: logged.setdefault(step, {}).update(metrics))
    last = logged[120]
    counts = [last[f"updates/stage{i}"] for i in range(1, 5)]
    assert counts == sorted(counts) and counts[-1] > counts[0]
    assert within_binomial(counts[-1], 120, 0.5)
    assert [logged[s]["updates/stage4"] for s in (30, 60, 90, 120)] == sorted(logged[s]["updates/stage4"] for s in (30, 60, 90, 120))


SWEEP_SUITE = """
name: sweep
task: mnist
profiles: {smoke: {}, quick: {}, paper: {}}
entries:
  - model: fcn4
    method: [bprop, dni]
    sweep: {p_update: [0.1, 0.5, 1.0]}
  - model: fcn4
    method: cdni
    sweep: {p_update: {uniform: [0.01, 1.0], samples: 5, seed: 3}}
"""


def test_sweep_makes_one_run_per_value_and_uniform_samples_are_seeded(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP_SUITE)
    specs = plan(load_suite(path), "smoke")
    assert sorted((s.method, s.method_args["p_update"]) for s in specs if s.method != "cdni") == \
        [("bprop", 0.1), ("bprop", 0.5), ("bprop", 1.0), ("dni", 0.1), ("dni", 0.5), ("dni", 1.0)]
    uniform = [s.method_args["p_update"] for s in specs if s.method == "cdni"]
    assert len(set(uniform)) == 5 and all(0.01 <= p <= 1.0 for p in uniform)
    assert uniform == [s.method_args["p_update"] for s in plan(load_suite(path), "smoke") if s.method == "cdni"]
    assert len({s.config_hash for s in specs}) == len(specs) == 11


def test_sweep_value_out_of_range_names_entry_and_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(SWEEP_SUITE.replace("[0.1, 0.5, 1.0]", "[0.1, 1.5]"))
    with pytest.raises(SuiteError, match=r"bad.yaml: entries\[0\] \(fcn4, bprop\): field 'p_update'"):
        plan(load_suite(path), "smoke")


def test_shipped_async_suite_has_the_p_update_grid():
    suite = load_suite("suites/mnist_async.yaml")
    grid = {(s.method, s.method_args["p_update"]) for s in plan(suite, "quick")}
    assert grid == {(m, p) for m in ("bprop", "dni", "cdni") for p in (0.05, 0.2, 0.5, 1.0)}
    fixed = {(s.method, s.method_args["p_update"]) for s in plan(suite, "paper") if s.seed == 0}
    assert {(m, p) for m in ("bprop", "dni", "cdni") for p in (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)} <= fixed
    paper = [s for s in plan(suite, "paper") if s.method_args["p_update"] not in {0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0}]
    assert len(paper) == 40 * 3                    # 20 uniform samples x (dni, cdni) x 3 seeds
    assert {s.seed for s in paper} == {0, 1, 2}


def fake_report_context(tmp_path, rows, final_key="metric.final_test_error"):
    """A ReportContext over made-up finished runs: each row's test error falls linearly to its final value."""
    import pandas as pd

    from report_fixtures import report_context
    ctx = report_context(tmp_path, rows)
    runs = ctx.runs
    for row in runs.itertuples():
        steps = int(runs.at[row.Index, "param.train.steps"])
        final = runs.at[row.Index, final_key]
        ctx._histories[(row.run_id, "test_error")] = pd.DataFrame(
            {"step": [steps // 2, steps], "value": [final + 5.0, final], "timestamp": [0, 1]})
    return ctx


def async_row(profile, method, p, final, steps=500_000, seed=0):
    return {"suite": "mnist_async", "profile": profile, "method": method, "model": "fcn4", "seed": seed,
            "variant": f"{profile}-{method}-{p}",
            "param.method_args.p_update": str(p), "param.train.steps": str(steps), "metric.final_test_error": final,
            **{f"metric.updates/stage{i}": steps * p ** (5 - i if method == "bprop" else 1) for i in range(1, 5)}}


def test_async_report_judges_the_two_claims_from_the_runs(tmp_path):
    from dnibench.report import async_updates
    seeds = lambda profile, method, p, finals, steps=500_000: [  # noqa: E731
        async_row(profile, method, p, f, steps, seed) for seed, f in enumerate(finals)]
    rows = [*seeds("paper", "dni", 0.2, [1.5, 1.6, 1.4]), *seeds("paper", "dni", 1.0, [1.9, 1.8]),
            *seeds("paper", "cdni", 0.05, [2.6, 2.7, 2.5]), *seeds("paper", "cdni", 1.0, [1.9, 1.8, 2.0]),
            async_row("paper", "bprop", 0.2, 9.0), async_row("paper", "bprop", 1.0, 1.8),
            async_row("quick", "dni", 0.2, 2.1, 3000), *seeds("quick", "cdni", 0.05, [2.0, 2.02], 3000),
            *seeds("quick", "cdni", 1.0, [1.9, 1.9], 3000)]
    section = async_updates.render(fake_report_context(tmp_path, rows))
    paper = (tmp_path / "async_claims_paper.csv").read_text()
    assert "1.50% ± 0.25 (3 seeds)" in paper.splitlines()[1]          # one-sided: 1.5% reaches "about 2%"
    assert paper.splitlines()[1].endswith(",holds")
    assert paper.splitlines()[2].endswith("does not hold")             # cDNI 2.6 - 1.9 = 0.7 > 0.5 (CI ±0.23)
    quick = (tmp_path / "async_claims_quick.csv").read_text().splitlines()
    assert quick[1].endswith("not comparable at this profile (the rule would say: 1 seed: inconclusive)")
    assert "2.10% (1 seed)" in quick[1]
    assert quick[2].endswith("not comparable at this profile (the rule would say: holds)")   # 0.11 + CI 0.13 <= 0.5
    for stem in ("async_p_update", "async_curves", "async_updates"):
        assert (tmp_path / f"{stem}_paper.png").stat().st_size > 10_000
    assert "Profile `quick`" in section.body and "Departures" in section.body
    # a paper run on a 12-image cache (its data tags): the claims stand aside, the rule's answer shown
    rows[0] = {**rows[0], "task": "mnist", "data.source": "IDX files in /x", "data.train": "12", "data.test": "5"}
    async_updates.render(fake_report_context(tmp_path, rows))
    paper = (tmp_path / "async_claims_paper.csv").read_text().splitlines()
    assert paper[1].endswith("not comparable: trained on less than the full data set (the rule would say: holds)")


def test_async_claims_each_column_and_the_runs_they_read(tmp_path):
    from dnibench.report import async_updates
    rows = [async_row("paper", "dni", 0.2, f, seed=s) for s, f in enumerate([2.0, 2.1, 2.2])]
    rows += [async_row("paper", "cdni", 0.05, f, seed=s) for s, f in enumerate([2.2, 2.4])]
    rows += [async_row("paper", "cdni", 1.0, f, seed=s) for s, f in enumerate([2.0, 2.0])]
    rows += [{**async_row("paper", "cdni", 1.0, 9.0, seed=5), "variant": "old"},          # an older configuration
             {**async_row("paper", "dni", 0.2, 9.0), "suite": "mnist_unlock"},              # another suite's run
             {**async_row("paper", "unlock_dni", 0.2, 9.0)}]                                # not one of its methods
    ctx = fake_report_context(tmp_path, rows)
    ctx.runs["start_time"] = [1] * 7 + [0, 1, 1]                       # "old" ran first
    runs = async_updates._runs(ctx)
    assert len(runs) == 7 and set(runs["method"]) == {"dni", "cdni"} and runs["steps"].tolist() == [500_000] * 7
    table = async_updates.claims(ctx, runs[runs["profile"] == "paper"], "paper").set_index("Claim (as published)")
    one = table.loc["DNI still reaches about 2% test error at p_update = 0.2"]
    assert one["Measured (final test error)"] == "2.10% ± 0.25 (3 seeds)" and one["Verdict"] == "holds"
    assert one["Rule"] == "final test error at most 2% + 0.3 points (one-sided; inconclusive when the CI half-width exceeds 0.3)"
    two = table.loc['cDNI trains "perfectly" at p_update = 0.05']
    assert two["Measured (final test error)"] == "2.30% ± 1.27 (2 seeds) at p_update=0.05; 2.00% ± 0.00 (2 seeds) at p_update=1"
    assert two["Verdict"].startswith("inconclusive (CI ±1.27 > tolerance 0.5")        # 0.3 above, but 2 seeds are wide
    tight = [{**r, "metric.final_test_error": f} for r, f in zip(rows[3:5], [2.39, 2.41])]
    close = fake_report_context(tmp_path, rows[:3] + tight + rows[5:7])
    state = async_updates.claims(close, async_updates._runs(close), "quick").set_index("Claim (as published)")["Verdict"]
    assert state.iloc[1] == "not comparable at this profile (the rule would say: holds)"   # 0.4 ± 0.127 <= 0.5
    no_ref = async_updates.claims(ctx, runs[runs["p_update"] < 1], "paper")["Verdict"].tolist()
    assert no_ref == ["holds", "no runs"]                              # cDNI's own p_update = 1 runs are missing
    empty = async_updates.claims(ctx, runs.iloc[:0], "paper")
    assert empty["Measured (final test error)"].tolist() == ["no run", "no run at p_update=0.05; no run at p_update=1"]
    assert empty["Verdict"].tolist() == ["no runs", "no runs"]


def test_async_updates_figure_plots_each_layers_rate_and_the_expected_one(tmp_path):
    import matplotlib.pyplot as plt
    import numpy as np

    from dnibench.report import async_updates
    from report_fixtures import capture_figures
    rows = [async_row("quick", m, p, 2.0, steps=1000) for m in ("bprop", "dni") for p in (0.5, 0.2)]
    ctx = fake_report_context(tmp_path, rows)
    figures = capture_figures(ctx)
    async_updates.updates_figure(ctx, async_updates._runs(ctx), "quick")
    fig = figures["async_updates_quick"]
    bprop, dni = fig.axes
    assert list(figures) == ["async_updates_quick"] and bprop.get_title() == "Bprop: p^(N-i+1) expected"
    for ax, rate in ((bprop, lambda p, i: p ** (5 - i)), (dni, lambda p, i: p)):
        measured = {l.get_label(): l.get_xydata() for l in ax.lines if l.get_label().startswith("layer")}
        assert sorted(measured) == ["layer 1", "layer 2", "layer 3", "layer 4"]
        for i in range(1, 5):               # updates / iterations at each p_update, in p_update order
            assert np.allclose(measured[f"layer {i}"], [[0.2, rate(0.2, i)], [0.5, rate(0.5, i)]])
        expected = [l.get_xydata() for l in ax.lines if l.get_linestyle() == "--"]
        assert len(expected) == 4 and all(np.allclose(e[:, 1], rate(e[:, 0], i)) for i, e in enumerate(expected, 1))
    plt.close(fig)


def test_async_claims_with_one_seed_and_without_the_suites_runs(tmp_path):
    from types import SimpleNamespace

    from dnibench.report import async_updates
    rows = [async_row("paper", "dni", 0.2, 1.9), async_row("paper", "cdni", 0.05, 2.3),
            *[async_row("paper", "cdni", 1.0, f, seed=s) for s, f in enumerate([2.0, 2.2])]]
    ctx = fake_report_context(tmp_path, rows)
    table = async_updates.claims(ctx, async_updates._runs(ctx), "paper")
    assert table["Verdict"].tolist() == ["1 seed: inconclusive", "1 seed: inconclusive"]   # not "no runs"
    assert table["Rule"].iloc[1] == ("final error at p_update=0.05 ≤ final error at p_update=1 + 0.5 points (one-sided, "
                                     "on the Welch CI of the difference; inconclusive when it is wider than ±0.5)")
    profile = SimpleNamespace(single_seed=True, single_seed_reason="costly")
    ctx.suites = {"mnist_async": SimpleNamespace(name="mnist_async", profiles={"paper": profile})}
    single = async_updates.claims(ctx, async_updates._runs(ctx)[lambda r: r["seed"] == 0], "paper")
    assert single["Verdict"].tolist() == ["holds", "holds"]          # points: 1.9 <= 2.3, and 2.3 - 2.0 <= 0.5
    ctx.runs = ctx.runs.drop(columns="param.method_args.p_update")   # no run of this suite logged a p_update
    assert async_updates._runs(ctx).empty and async_updates.render(ctx) is None


def test_async_report_lists_every_profiles_files_and_the_suites_departures(tmp_path):
    import pandas as pd

    from dnibench.report import async_updates
    from dnibench.suite import load_suite
    rows = [async_row(profile, m, p, f, steps) for profile, steps in (("quick", 3000), ("paper", 500_000))
            for m, p, f in (("dni", 0.2, 2.123), ("dni", 1.0, 1.8), ("cdni", 0.05, 2.5))]
    section = async_updates.render(fake_report_context(tmp_path, rows))
    names = {p.name for p in section.files}
    for profile in ("quick", "paper"):
        assert {f"async_{stem}_{profile}.{ext}" for stem in ("p_update", "curves", "updates") for ext in ("png", "pdf")} | \
            {f"async_claims_{profile}.csv", f"async_final_error_{profile}.csv"} <= names, profile
    table = pd.read_csv(tmp_path / "async_final_error_quick.csv")
    assert table.columns.tolist() == ["p_update", "DNI", "cDNI"] and table["p_update"].tolist() == [0.05, 0.2, 1.0]
    assert table["DNI"].tolist()[1:] == [2.12, 1.8] and table["cDNI"].tolist()[0] == 2.5     # means at 2 decimals
    assert table["DNI"].isna().tolist() == [True, False, False]
    assert section.title == "Sporadic updates: test error against p_update"
    assert "### Profile `quick` (3 runs, 3000 iterations)" in section.body.splitlines()
    quick, paper = section.body.split("### Profile `paper`")
    departure = load_suite("suites/mnist_async.yaml").profiles["quick"].departures[0]
    assert "Not the paper's schedule" in quick and f"- {departure}" in quick
    assert "Not the paper's schedule" not in paper and "(3 runs, 500000 iterations)" in paper
    ctx = fake_report_context(tmp_path, rows)
    ctx.suites = {}                                                    # a suite file since renamed: no departures
    assert "Not the paper's schedule" in async_updates.render(ctx).body


def test_async_p_update_and_curve_figures_draw_every_evaluation(tmp_path):
    import matplotlib.pyplot as plt
    import numpy as np

    from dnibench.report import async_updates
    from report_fixtures import capture_figures
    rows = [async_row("quick", "dni", p, f, steps=1000, seed=s) for p, f, s in ((0.2, 3.0, 0), (0.2, 3.4, 1), (0.3, 4.0, 0))]
    ctx = fake_report_context(tmp_path, rows)                # each run: final + 5 at step 500, final at step 1000
    figures = capture_figures(ctx)
    runs = async_updates._runs(ctx)
    async_updates.p_update_figure(ctx, runs, "quick")
    async_updates.curves_figure(ctx, runs, "quick")
    p_fig, c_fig = figures["async_p_update_quick"], figures["async_curves_quick"]
    ax = p_fig.axes[0]
    points = [c.get_offsets().tolist() for c in ax.collections]
    assert points == [[[0.2, 8.0], [0.2, 3.0]], [[0.2, 3.0]], [[0.2, 8.4], [0.2, 3.4]], [[0.2, 3.4]],
                      [[0.3, 9.0], [0.3, 4.0]], [[0.3, 4.0]]]              # every evaluation, then the final ringed
    assert np.allclose(ax.collections[0].get_array(), [500, 1000])          # coloured by iteration
    assert ax.get_title() == "DNI"
    ax = c_fig.axes[0]                                                     # curves at the CURVE_P values only (not 0.3)
    assert [l.get_xydata().tolist() for l in ax.lines] == [[[500, 8.0], [1000, 3.0]], [[500, 8.4], [1000, 3.4]]]
    assert [l.get_label() for l in ax.lines if not l.get_label().startswith("_")] == ["p_update=0.2"]   # one per p_update
    plt.close("all")
