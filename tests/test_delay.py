"""The update-delay option of DNI/cDNI: with delay k a stage's injected synthetic gradient comes from
its synthesizer's parameters at the start of step t - k; delay 0 is the undelayed method."""
import copy

import pydantic
import pytest
import torch
from torch import nn

from dnibench.methods import get_method
from tiny_methods import build_method

IN_SHAPE = (1, 6, 6)



def make(method="dni", seed=0, **settings):
    dni = build_method(method, IN_SHAPE, "fcn3", seed, synth_hidden_layers=1, synth_width=32, **settings)
    for synth in dni.synthesizers:
        nn.init.normal_(synth.net[-1].weight, std=0.1)     # non-zero predictions from the first step
    return dni


def injected_into_first_stage(dni, steps, batches):
    """Per step: the synthesizer M_2 as it was at the start of the step, the first stage's output
    h_1, and the gradient the step injected into h_1."""
    record = {}

    def hook(module, inputs, output):
        record["h"] = output.detach().clone()
        if output.requires_grad:
            output.register_hook(lambda g: record.__setitem__("g", g.clone()))

    dni.stages[0].register_forward_hook(hook)
    out = []
    for t in range(steps):
        snapshot = copy.deepcopy(dni.synthesizers[0])
        x, y = batches[t]
        dni.step(x, y)
        out.append((snapshot, record["h"], record["g"], y))
    return out


def batches(n):
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(16, *IN_SHAPE, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(n)]


def prediction(synth, h, y, conditioned):
    context = nn.functional.one_hot(y, 10).float() if conditioned else None
    with torch.no_grad():
        return synth(h, context) / h.shape[0]


@pytest.mark.parametrize("method", ["dni", "cdni"])
@pytest.mark.parametrize("delay", [0, 2])
def test_injected_gradient_comes_from_the_synthesizer_k_steps_ago(method, delay):
    steps = 6
    dni = make(method, delay=delay)
    seen = injected_into_first_stage(dni, steps, batches(steps))
    conditioned = method == "cdni"
    for t, (_, h, g, y) in enumerate(seen):
        stale_synth = seen[max(0, t - delay)][0]            # the synthesizer at the start of step t - k
        torch.testing.assert_close(g, prediction(stale_synth, h, y, conditioned), rtol=0, atol=1e-7)
        if delay and t > delay:                             # ... and not the current one: the test can fail
            assert not torch.allclose(g, prediction(seen[t][0], h, y, conditioned), atol=1e-6)
    assert (dni.stale == []) == (delay == 0)                # delay 0 keeps no history: the undelayed method


def test_a_delayed_synthesizer_still_learns_from_fresh_targets():
    dni = make(delay=3)
    before = [p.detach().clone() for p in dni.synthesizers[0].parameters()]
    for x, y in batches(2):
        dni.step(x, y)
    assert any(not torch.equal(p, q) for p, q in zip(before, dni.synthesizers[0].parameters()))
    assert len(dni.stale[0].states) == 2                    # one state per step so far, at most k + 1


def test_negative_delay_is_rejected():
    with pytest.raises(pydantic.ValidationError):
        get_method("dni").Settings(delay=-1)


def test_delay_report_tabulates_final_error_against_delay(tmp_path):
    from test_async import fake_report_context

    from dnibench.report import delay as delay_report
    rows = [{"suite": "mnist_delay", "profile": "quick", "method": m, "model": "fcn4", "seed": 0,
             "param.method_args.delay": str(k), "param.train.steps": "3000", "metric.final_test_error": err}
            for m, k, err in [("dni", 0, 3.0), ("dni", 30, 4.0), ("cdni", 0, 2.5), ("cdni", 30, 2.754)]]
    rows.append({**rows[0], "profile": "smoke", "param.train.steps": "20"})
    section = delay_report.render(fake_report_context(tmp_path, rows))
    assert section.title == "Stale synthesizers: test error against update delay"
    assert "### Profile `smoke` (1 runs, 20 iterations)" in section.body.splitlines()
    assert {"delay_smoke.png", "delay_smoke.csv"} <= {p.name for p in section.files}
    assert (tmp_path / "delay_quick.csv").read_text().splitlines() == [
        "delay,DNI final test error (%),cDNI final test error (%)", "0,3.0,2.5", "30,4.0,2.75"]     # 2 decimals
    assert (tmp_path / "delay_quick.png").stat().st_size > 10_000 and "delay_quick.png" in section.body
    assert section.body.startswith("FCN-4 on MNIST with DNI and cDNI") and "### Profile `quick` (4 runs, 3000 iterations)" in section.body
    assert {"delay_quick.png", "delay_quick.pdf", "delay_quick.csv", "delay_quick.md"} <= {p.name for p in section.files}


def test_delay_summary_and_figure_mean_over_seeds_with_their_ci(tmp_path):
    import matplotlib.pyplot as plt
    import numpy as np
    from report_fixtures import capture_figures
    from test_async import fake_report_context

    from dnibench.report import delay as delay_report

    def row(method, k, err, seed=0, **extra):
        return {"suite": "mnist_delay", "profile": "quick", "method": method, "model": "fcn4", "seed": seed,
                "variant": f"{method}{k}", "param.method_args.delay": str(k), "param.train.steps": "3000",
                "metric.final_test_error": err, **extra}
    rows = [row("dni", 0, 3.0, 0), row("dni", 0, 3.2, 1), row("dni", 0, 3.4, 2), row("dni", 10, 4.0),
            row("cdni", 10, 2.0), row("dni", 10, 9.0, 1, variant="old", start_time=-1),       # an older configuration
            row("bprop", 10, 9.0), row("dni", 10, 9.0, suite="mnist_async")]                  # neither is a delay run
    ctx = fake_report_context(tmp_path, rows)
    ctx.runs["start_time"] = [1, 1, 1, 1, 1, 0, 1, 1]
    figures = capture_figures(ctx)
    delay_report.render(ctx)
    table = delay_report.summary(ctx.runs[ctx.runs["suite"] == "mnist_delay"].assign(
        delay=lambda r: r["param.method_args.delay"].astype(int)).iloc[:5])
    dni0 = table[(table["method"] == "dni") & (table["delay"] == 0)].iloc[0]
    assert (dni0["seeds"], round(dni0["mean"], 6), round(dni0["ci95"], 3)) == (3, 3.2, 0.497)   # t(2) * 0.2 / sqrt(3)
    (ax,) = figures["delay_quick"].axes
    lines = {c.get_label(): np.round(c.lines[0].get_xydata(), 6).tolist() for c in ax.containers}   # an errorbar per method
    assert lines == {"DNI": [[0, 3.2], [10, 4.0]], "cDNI": [[10, 2.0]]}                  # the old run and others left out
    bars = [c for c in ax.collections]                                                     # error bars: the CI, 0 for one seed
    assert np.allclose(bars[0].get_segments()[0][:, 1], [3.2 - 0.4968, 3.2 + 0.4968], atol=1e-3)
    assert np.allclose(bars[0].get_segments()[1][:, 1], [4.0, 4.0])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "10"]
    plt.close("all")
