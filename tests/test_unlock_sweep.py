"""Complete unlock against p_update (paper §3.1, its complete-unlock figure): one coin gates a layer's
forward and backward together; the suite sweeps p_update for the unlocked and the locked methods; the
report draws final test error against p_update."""
import pytest
import torch
from torch import nn

from dnibench.suite import load_suite, plan
from tiny_methods import build_method, random_batch

IN_SHAPE = (1, 6, 6)


def state(module: nn.Module) -> list[torch.Tensor]:
    """Parameters and buffers (BatchNorm's running statistics move with every forward pass)."""
    return [t.detach().clone() for t in [*module.parameters(), *module.buffers()]]


def changed(before, module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, state(module)))


@pytest.mark.parametrize("name", ["unlock_dni", "unlock_cdni"])
def test_one_coin_gates_a_layers_forward_backward_and_its_models(name):
    x, y = random_batch(IN_SHAPE)
    method = build_method(name, IN_SHAPE, "fcn4", synth_hidden_layers=0, input_hidden_layers=0, p_update=0.5)
    for synth in method.synthesizers:                    # non-zero synthetic gradients from the first step
        nn.init.normal_(synth.net[-1].weight, std=0.1)
    coins = [True, False, True, True]                    # layer 2 (index 1) sits this step out
    method.coins = lambda: list(coins)
    stages = [state(s) for s in method.stages]
    inputs = [state(i.model) for i in method.inputs]     # inputs[j] feeds stage j+1
    synths = [state(s) for s in method.synthesizers]     # synthesizers[j] sits on h_{j+1}, regressed at stage j+1
    method.step(x, y)
    assert [changed(b, s) for b, s in zip(stages, method.stages)] == coins
    assert method.update_counts == [int(c) for c in coins]
    # I for stage 2 learns from the real h_1 (stage 1 ran) although stage 2 did not run;
    # I for stage 3 needs the real h_2, which was never computed.
    assert [changed(b, i.model) for b, i in zip(inputs, method.inputs)] == [True, False, True]
    # M at stage i+1's own input is regressed only when stage i+1 ran.
    assert [changed(b, s) for b, s in zip(synths, method.synthesizers)] == [False, True, True]


def test_shipped_unlock_suite_sweeps_p_update_for_unlocked_and_locked_methods():
    suite = load_suite("suites/mnist_unlock.yaml")
    methods = {"bprop", "dni", "cdni", "unlock_dni", "unlock_cdni"}
    async_suite = load_suite("suites/mnist_async.yaml")
    async_quick = {s.method_args["p_update"] for s in plan(async_suite, "quick")}
    async_fixed = {s.method_args["p_update"] for s in plan(async_suite, "paper") if s.method == "bprop"}
    for profile, at_least_below_one in [("smoke", 1), ("quick", 1), ("paper", 6)]:
        grid: dict[str, set[float]] = {}
        for spec in plan(suite, profile):
            grid.setdefault(spec.method, set()).add(spec.method_args["p_update"])
        assert set(grid) == methods
        values = grid["unlock_dni"]
        assert all(g == values for g in grid.values()), profile      # every method at the same p_update values
        assert 1.0 in values and len([p for p in values if p < 1]) >= at_least_below_one, profile
        if profile == "paper":
            assert values == async_fixed
        if profile == "quick":          # the locked methods' runs are mnist_async's, shared (same configuration)
            assert values <= async_quick


def test_report_draws_final_error_against_p_update(tmp_path):
    import pandas as pd
    from test_async import fake_report_context

    from dnibench.report import unlock as unlock_report
    level = {"bprop": 1.6, "dni": 2.0, "cdni": 1.8, "unlock_dni": 2.6, "unlock_cdni": 2.3}
    rows = [{"suite": "mnist_unlock", "profile": "quick", "method": m, "model": "fcn4", "seed": seed,
             "param.method_args.p_update": str(p), "param.train.steps": "5000",
             # backprop degrades fastest as p_update falls (its lower layers need every coin above)
             "metric.final_test_error": base + (1 - p) * (8.0 if m == "bprop" else 2.0) + 0.1 * seed}
            for m, base in level.items() for p in (0.1, 0.2, 0.5, 0.75, 1.0) for seed in (0, 1)]
    ctx = fake_report_context(tmp_path, rows)
    ctx.runs["variant"] = ctx.runs["method"] + ctx.runs["param.method_args.p_update"]   # seeds share a config
    section = unlock_report.render(ctx)
    for suffix in ("png", "pdf"):
        assert (tmp_path / f"unlock_p_update_quick.{suffix}").stat().st_size > 10_000
    table = pd.read_csv(tmp_path / "unlock_p_update_quick.csv").set_index("p_update")
    assert table.loc[0.1, "Bprop"] == pytest.approx(1.6 + 0.9 * 8 + 0.05)
    assert table.loc[0.5, "DNI, complete unlock"] == pytest.approx(2.6 + 1.0 + 0.05)
    assert list(table.index) == [0.1, 0.2, 0.5, 0.75, 1.0]
    assert "unlock_p_update_quick.png" in section.body
    # the curves and the claim use the p_update = 1 runs only: 2 seeds per method
    finals = pd.read_csv(tmp_path / "unlock_claims_quick.csv")
    assert finals["Final test error"].str.contains(r"2\.65").any()            # unlock_dni at p=1: 2.6, 2.7
    assert "(10 runs," in section.body
