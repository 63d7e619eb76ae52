"""Complete unlock: with oracle synthetic inputs a step is exactly a locked DNI step, with oracle
synthetic gradients too exactly a backprop step; the synthetic inputs learn; p_update gates a layer."""
import pytest
import torch
from torch import nn

from dnibench.dni import ForwardInterface, SyntheticInputModel
from tiny_methods import build_method, random_batch, true_forward

IN_SHAPE = (1, 6, 6)                 # tiny images keep these tests fast; the equations do not care



def make(method, seed=0, model="fcn4", **settings):
    return build_method(method, IN_SHAPE, model, seed, **settings)


def batch(n=16, seed=1):
    return random_batch(IN_SHAPE, n, seed)


class Given(nn.Module):
    """An oracle: returns the tensor it was given (scaled per example for a synthesizer)."""

    def __init__(self, value, per_example=False):
        super().__init__()
        self.value, self.per_example = value, per_example

    def forward(self, h, context=None):
        return self.value * h.shape[0] if self.per_example else self.value


def all_params(method, synthesizers=True):
    modules = list(method.stages) + (method.synthesizers if synthesizers else [])
    return [p.detach().clone() for m in modules for p in m.parameters()]


@pytest.mark.parametrize("locked_name,unlocked_name", [("dni", "unlock_dni"), ("cdni", "unlock_cdni")])
def test_oracle_inputs_give_exactly_the_locked_dni_update(locked_name, unlocked_name):
    x, y = batch()
    locked = make(locked_name, synth_hidden_layers=1, synth_width=32)
    unlocked = make(unlocked_name, synth_hidden_layers=1, synth_width=32, input_hidden_layers=0)
    unlocked.stages.load_state_dict(locked.stages.state_dict())
    for a, b in zip(locked.synthesizers, unlocked.synthesizers):
        nn.init.normal_(a.net[-1].weight, std=0.1)          # non-zero synthetic gradients from the start
        b.load_state_dict(a.state_dict())
    for _ in range(3):                                      # Adam states must evolve identically too
        real, _ = true_forward(unlocked.stages, x, y)
        for iface, h in zip(unlocked.inputs, real[:-1]):    # I_{i+1}(x) = the true h_i
            iface.model, iface.optimizer = Given(h), None
        locked.step(x, y)
        unlocked.step(x, y)
        for a, b in zip(all_params(locked), all_params(unlocked)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(all_params(locked), all_params(make(locked_name))))


def test_oracle_inputs_and_gradients_give_exactly_the_backprop_update():
    x, y = batch()
    bprop, unlocked = make("bprop"), make("unlock_dni", input_hidden_layers=0)
    unlocked.stages.load_state_dict(bprop.stages.state_dict())
    for _ in range(3):
        real, grads = true_forward(unlocked.stages, x, y)
        for iface, h in zip(unlocked.inputs, real[:-1]):
            iface.model, iface.optimizer = Given(h), None
        for iface, g in zip(unlocked.interfaces, grads):
            iface.synthesizer, iface.optimizer = Given(g, per_example=True), None
        bprop.step(x, y)
        unlocked.step(x, y)
        for a, b in zip(all_params(bprop, False), all_params(unlocked, False)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_synthetic_input_loss_decreases_on_a_tiny_problem():
    x, y = batch(n=32)
    unlocked = make("unlock_cdni", input_hidden_layers=1, input_width=64)
    first = last = None
    for step in range(60):
        metrics = unlocked.step(x, y)
        loss = sum(metrics[f"input_loss/h{i}"].item() for i in (1, 2, 3))
        first = loss if first is None else first
        last = loss
    assert last < 0.5 * first, (first, last)


def test_forward_interface_regresses_towards_the_real_input():
    torch.manual_seed(0)
    model = SyntheticInputModel(IN_SHAPE, (5,), hidden_layers=0)
    iface = ForwardInterface(model, torch.optim.SGD(model.parameters(), lr=0.01))
    x, real = torch.rand(8, *IN_SHAPE), torch.rand(8, 5)
    synthetic = iface.send(x)
    assert synthetic.shape == real.shape and not synthetic.requires_grad
    expected = (model(x) - real).pow(2).sum(1).mean()      # L2: summed over features, mean over the batch
    torch.testing.assert_close(iface.receive(real), expected.detach())
    iface.send(x)
    assert iface.receive(real) < expected                  # one SGD step moved I towards the real input
    with pytest.raises(RuntimeError):
        iface.receive(real)


def test_p_update_gates_a_layers_forward_and_backward():
    x, y = batch()
    unlocked = make("unlock_dni", p_update=0.5, synth_hidden_layers=0, input_hidden_layers=0)
    calls = [0] * len(unlocked.stages)
    for i, stage in enumerate(unlocked.stages):
        stage.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    for _ in range(40):
        unlocked.step(x, y)
    assert calls == unlocked.update_counts                 # a layer runs forward exactly when it updates
    assert all(8 <= c <= 32 for c in calls), calls


def test_unlock_report_judges_level_and_speed_from_the_runs(tmp_path):
    from test_async import fake_report_context

    from dnibench.report import unlock as unlock_report
    row = lambda method, final, seed=0: {"suite": "mnist_unlock", "profile": "paper", "method": method,  # noqa: E731
                                         "model": "fcn4", "seed": seed, "variant": method,
                                         "param.train.steps": "500000", "metric.final_test_error": final}
    rows = [row("bprop", 1.5, 0), row("bprop", 1.5, 1), row("dni", 2.0), row("cdni", 1.9),
            *[row("unlock_dni", f, s) for s, f in enumerate([2.15, 2.2, 2.25])],
            *[row("unlock_cdni", f, s) for s, f in enumerate([4.4, 4.5, 4.6])]]
    ctx = fake_report_context(tmp_path, rows)
    for run_id in ("r0", "r1"):                                  # Bprop reaches 3% (2x its final) half-way,
        ctx._histories[(run_id, "test_error")]["value"] = [2.5, 1.5]   # unlock_dni (9.x then 2.x) only at the end
    section = unlock_report.render(ctx)
    lines = (tmp_path / "unlock_claims_paper.csv").read_text().splitlines()
    assert "2.20% ± 0.12 (3 seeds),holds," in lines[1] and lines[1].endswith(",holds")  # at most 2 + 0.3; slower
    assert "4.50% ± 0.25 (3 seeds),does not hold," in lines[2]                        # 4.5 is not about 2
    assert lines[2].endswith(",did not reach the target (3 of 3 seeds)")              # never reached 3%: not "slower"
    assert lines[1].split(",")[-2] == "iteration 500000; Bprop iteration 250000 (mean curves); DNI iteration 500000"
    assert (tmp_path / "unlock_curves_paper.png").stat().st_size > 10_000
    table = section.body.split("| Method | Final test error (%) | Seeds |")[1]
    assert [line.split(" | ")[0] for line in table.strip().splitlines()[1:6]] == \
        ["| Bprop", "| DNI", "| cDNI", "| DNI, complete unlock", "| cDNI, complete unlock"]    # the paper's order


def test_unlock_claims_judge_the_level_and_the_first_reach_per_seed(tmp_path):
    """Each column of the claim, from made-up runs evaluated at iterations 100, 150, 300 (uneven: the
    tolerance of "slower" is the smallest interval, 50)."""
    import pandas as pd
    from report_fixtures import report_context

    from dnibench.report import unlock as unlock_report
    finals = {"bprop": [1.0, 1.2, 1.4], "dni": [2.0], "unlock_dni": [2.0, 2.1, 2.2], "unlock_cdni": [2.5, 2.6]}
    early = {"bprop": [[5, 2.0]] * 3, "dni": [[4, 3.0]], "unlock_dni": [[6, 3.0]] * 3, "unlock_cdni": [[6, 5]] * 2}
    rows = [{"suite": "mnist_unlock", "profile": "paper", "method": m, "model": "fcn4", "seed": s, "variant": m,
             "param.train.steps": "300", "metric.final_test_error": f} for m, fs in finals.items() for s, f in enumerate(fs)]

    def claims(early, profile="paper", drop=()):
        ctx = report_context(tmp_path, rows)
        for run, (method, seed) in zip(ctx.runs["run_id"], zip(ctx.runs["method"], ctx.runs["seed"])):
            values = early[method][seed] + [finals[method][seed]]
            ctx._histories[(run, "test_error")] = pd.DataFrame({"step": [100, 150, 300], "value": values, "timestamp": 0})
        runs = ctx.runs[~ctx.runs["method"].isin(drop)]
        curves = {m: unlock_report.mean_curve(ctx, runs[runs["method"] == m]) for m in unlock_report.METHODS
                  if m in set(runs["method"])}
        return unlock_report.claims(ctx, runs, curves, profile).set_index("Method")

    table = claims(early)                                   # Bprop's final 1.2: the target is 2.4
    dni, cdni = table.loc["DNI, complete unlock"], table.loc["cDNI, complete unlock"]
    assert dni["Final test error"] == "2.10% ± 0.25 (3 seeds)" and dni["At most about 2% (+0.3)"] == "holds"
    assert dni["Reaches 2.40% (2x Bprop's final error)"] == "iteration 300; Bprop iteration 150 (mean curves); DNI iteration 300"
    assert dni["More slowly than Bprop"] == "holds"         # every seed at 300 against every Bprop seed at 150
    assert cdni["Reaches 2.40% (2x Bprop's final error)"] == "never; Bprop iteration 150 (mean curves)"   # no locked cDNI run
    assert cdni["More slowly than Bprop"] == "did not reach the target (2 of 2 seeds)"
    assert cdni["At most about 2% (+0.3)"].startswith("inconclusive (CI ±0.635 > tolerance 0.3")
    assert cdni["Final test error"] == "2.55% ± 0.64 (2 seeds)"
    mixed = claims({**early, "unlock_dni": [[6, 2.0], [6, 3.0], [6, 3.0]]})   # one seed as fast as Bprop
    assert mixed.loc["DNI, complete unlock", "More slowly than Bprop"].startswith("inconclusive (CI ±215 > tolerance 50;")
    quick = claims(early, "quick")
    assert quick.loc["DNI, complete unlock", "More slowly than Bprop"] == "not comparable at this profile (measured: holds)"
    assert quick.loc["DNI, complete unlock", "At most about 2% (+0.3)"] == "not comparable at this profile (measured: holds)"
    partial = {"task": "mnist", "data.source": "IDX files in /x", "data.train": "12", "data.test": "5"}   # one run on a 12-image cache
    rows[0] = {**rows[0], **partial}
    small = claims(early)
    assert small.loc["DNI, complete unlock", "More slowly than Bprop"] == (
        "not comparable: trained on less than the full data set (measured: holds)")
    assert small.loc["DNI, complete unlock", "At most about 2% (+0.3)"] == (
        "not comparable: trained on less than the full data set (measured: holds)")
    rows[0] = {k: v for k, v in rows[0].items() if k not in partial}
    alone = claims(early, drop=("bprop",))
    assert list(alone["More slowly than Bprop"]) == ["no runs", "no runs"]
    assert alone.loc["DNI, complete unlock", "Reaches 2x Bprop's final error"] == "no runs to compare"
    none = claims(early, drop=("unlock_cdni",)).loc["cDNI, complete unlock"]
    assert (none["Final test error"], none["At most about 2% (+0.3)"]) == ("no run", "no runs")
    slow_bprop = {**finals, "bprop": [1.0, 1.0, 5.0]}                  # target 4.67: Bprop's third seed never gets there
    rows[:3] = [{**r, "metric.final_test_error": f} for r, f in zip(rows[:3], slow_bprop["bprop"])]
    finals.update(slow_bprop)
    early = {**early, "bprop": [[5, 2.0], [5, 2.0], [6, 5.5]]}
    assert claims(early).loc["DNI, complete unlock", "More slowly than Bprop"] == \
        "Bprop did not reach the target (1 of 3 seeds): no comparison"


def test_unlock_claims_of_a_single_seed_profile(tmp_path):
    """One seed each, evaluated once: a point verdict where the profile opts in to one seed, '(1 seed)'."""
    from types import SimpleNamespace

    import pandas as pd
    from report_fixtures import report_context

    from dnibench.report import unlock as unlock_report
    rows = [{"suite": "mnist_unlock", "profile": "paper", "method": m, "model": "fcn4", "seed": 0,
             "param.train.steps": "300", "metric.final_test_error": f} for m, f in (("bprop", 1.0), ("unlock_dni", 1.9))]
    ctx = report_context(tmp_path, rows)
    for run, final in zip(ctx.runs["run_id"], (1.0, 1.9)):
        ctx._histories[(run, "test_error")] = pd.DataFrame({"step": [300], "value": [final], "timestamp": 0})
    curves = {m: unlock_report.mean_curve(ctx, ctx.runs[ctx.runs["method"] == m]) for m in ("bprop", "unlock_dni")}
    plain = unlock_report.claims(ctx, ctx.runs, curves, "paper").set_index("Method").loc["DNI, complete unlock"]
    assert plain["Final test error"] == "1.90% (1 seed)"
    assert plain["At most about 2% (+0.3)"] == plain["More slowly than Bprop"] == "1 seed: inconclusive"
    profile = SimpleNamespace(single_seed=True, single_seed_reason="costly")
    ctx.suites = {"mnist_unlock": SimpleNamespace(name="mnist_unlock", profiles={"paper": profile})}
    opted = unlock_report.claims(ctx, ctx.runs, curves, "paper").set_index("Method").loc["DNI, complete unlock"]
    assert opted["At most about 2% (+0.3)"] == "holds"                   # 1.9 <= 2.3 as a point
    assert opted["More slowly than Bprop"] == "does not hold"            # both at 300, the one evaluation: not slower


def test_unlock_report_reads_its_suite_only_and_tables_any_p_update_sweep(tmp_path):
    import pandas as pd
    from test_async import fake_report_context

    from dnibench.report import unlock as unlock_report
    rows = [{"suite": "mnist_unlock", "profile": "quick", "method": m, "model": "fcn4", "seed": 0, "variant": f"{m}{p}",
             "param.method_args.p_update": str(p), "param.train.steps": "1000", "metric.final_test_error": e}
            for m, p, e in (("bprop", 1.0, 1.5), ("unlock_dni", 1.0, 2.346), ("unlock_dni", 0.5, 3.0))]
    rows += [{**rows[0], "suite": "mnist_async", "method": "dni", "variant": "async"},     # another suite's DNI run
             {**rows[0], "profile": "smoke", "param.train.steps": "20", "variant": "smoke"}]
    ctx = fake_report_context(tmp_path, rows)
    section = unlock_report.render(ctx)
    assert section.title == "Complete unlock: synthetic inputs and synthetic gradients"
    assert section.body.startswith("FCN-4 on MNIST. *Complete unlock*")
    assert "### Profile `smoke` (1 runs, 20 iterations)" in section.body.splitlines()
    assert "### Profile `quick` (2 runs, 1000 iterations)" in section.body              # the p_update = 1 runs of its suite
    assert "| Bprop | 1.5 | 1 |\n| DNI, complete unlock | 2.35 | 1 |" in section.body  # final error (2 decimals), seeds
    from dnibench.suite import load_suite
    departure = load_suite("suites/mnist_unlock.yaml").profiles["quick"].departures[0]
    quick = section.body.split("### Profile `quick`")[1]
    assert "Not the paper's schedule, so the claim is *not comparable*" in quick and f"- {departure}" in quick
    table = pd.read_csv(tmp_path / "unlock_p_update_quick.csv")                          # two p_update values: a sweep
    assert table.columns.tolist() == ["p_update", "Bprop", "DNI, complete unlock"]
    assert table["p_update"].tolist() == [0.5, 1.0] and table["DNI, complete unlock"].tolist() == [3.0, 2.35]   # 2 decimals
    assert table["Bprop"].isna().tolist() == [True, False] and table.at[1, "Bprop"] == 1.5
    ctx.suites = {}                                                    # a suite file since renamed: no departures
    assert "Not the paper's schedule, so the claim is *not comparable*" in unlock_report.render(ctx).body
    names = {p.name for p in section.files}
    assert {"unlock_p_update_quick.png", "unlock_p_update_quick.pdf", "unlock_p_update_quick.csv",
            "unlock_curves_quick.png", "unlock_claims_quick.csv", "unlock_curves_smoke.png", "unlock_claims_smoke.csv"} <= names


def test_unlock_mean_curve_first_reach_and_p_update_column():
    import math

    import pandas as pd
    from types import SimpleNamespace

    from dnibench.report import unlock as unlock_report
    histories = {"a": pd.DataFrame({"step": [10, 20], "value": [4.0, 2.0]}),
                 "b": pd.DataFrame({"step": [10, 20, 30], "value": [6.0, 3.0, 1.0]})}
    ctx = SimpleNamespace(history=lambda run, key: histories[run] if key == "test_error" else None)
    curve = unlock_report.mean_curve(ctx, pd.DataFrame({"run_id": ["a", "b"]}))
    assert curve.to_dict() == {10: 5.0, 20: 2.5, 30: 1.0}
    assert unlock_report.mean_curve(ctx, pd.DataFrame({"run_id": []})).empty
    assert unlock_report.first_reach(curve, 2.5) == 20 and unlock_report.first_reach(curve, 2.4) == 30   # at or below
    assert math.isinf(unlock_report.first_reach(curve, 0.5))
    runs = pd.DataFrame({"param.method_args.p_update": ["0.2", None]})
    assert unlock_report.with_p_update(runs)["p_update"].tolist() == [0.2, 1.0]      # not logged: every step
    assert unlock_report.with_p_update(pd.DataFrame({"method": ["dni"]}))["p_update"].tolist() == [1.0]
    assert "p_update" not in runs                                                    # the caller's frame is kept


def test_unlock_figures_draw_the_mean_curves_and_the_p_update_finals(tmp_path):
    import matplotlib.pyplot as plt
    import pandas as pd
    from report_fixtures import capture_figures
    from test_async import fake_report_context

    from dnibench.report import unlock as unlock_report
    rows = [{"suite": "mnist_unlock", "profile": "quick", "method": m, "model": "fcn4", "seed": s, "variant": f"{m}{p}",
             "param.method_args.p_update": str(p), "param.train.steps": "1000", "metric.final_test_error": e + s}
            for m, p, e in (("bprop", 1.0, 1.0), ("unlock_dni", 1.0, 2.0), ("unlock_dni", 0.5, 3.0), ("dni", 0.5, 2.5))
            for s in (0, 1)]
    ctx = fake_report_context(tmp_path, rows)                # each run: final + 5 at step 500, final at step 1000
    figures = capture_figures(ctx)
    unlock_report.render(ctx)
    curves, sweep = figures["unlock_curves_quick"], figures["unlock_p_update_quick"]
    lines = {l.get_label(): l for l in curves.axes[0].lines}
    assert lines["Bprop"].get_xydata().tolist() == [[500, 6.5], [1000, 1.5]]               # the mean over both seeds
    assert lines["DNI, complete unlock"].get_xydata().tolist() == [[500, 7.5], [1000, 2.5]]
    assert (lines["Bprop"].get_color(), lines["DNI, complete unlock"].get_linestyle()) == ("k", "--")
    panel = sweep.axes[0]                                                                  # one panel: DNI's kind
    finals = {l.get_label(): l.get_xydata().tolist() for l in panel.lines}
    assert finals == {"DNI, complete unlock: final (mean)": [[0.5, 3.5], [1.0, 2.5]], "DNI: final (mean)": [[0.5, 3.0]],
                      "Bprop: final (mean)": [[1.0, 1.5]]}
    assert len(sweep.axes) == 2 and panel.get_title() == "DNI, complete unlock"           # (the second axis: the colour bar)
    plt.close("all")
