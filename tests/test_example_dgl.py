"""The worked example examples/dgl.py (Decoupled Greedy Learning): each stage's update is the
gradient of its own auxiliary loss and nothing else; p_update gates stages independently; its suite
examples/dgl.yaml plans at every profile with the variant as its own method."""
import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dnibench.methods import load_method_file
from dnibench.suite import load_suite, plan, skipped_entries
from tiny_methods import build_method, random_batch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def dgl():
    return load_method_file(EXAMPLES / "dgl.py")[0]


def capture_updates(method):
    """Record, at each stage's update, the gradients of the stage's and its classifier's parameters."""
    captured, original, top = {}, method.apply_update, len(method.stages) - 1

    def capture(i):
        params = [*method.stages[i].parameters(), *(method.auxiliary[i].parameters() if i < top else [])]
        captured[i] = [p.grad.clone() for p in params]
        original(i)

    method.apply_update = capture
    return captured


@pytest.mark.parametrize("model, in_shape, settings", [
    ("fcn4", (1, 28, 28), {}),
    ("fcn3", (1, 28, 28), {"aux_width": 8}),
    ("cnn3", (1, 12, 12), {"aux_pool": 2}),
], ids=["fcn4-linear", "fcn3-hidden", "cnn3-pooled"])
def test_each_stage_descends_its_own_auxiliary_loss_only(dgl, model, in_shape, settings):
    method = build_method("dgl", in_shape, model=model, **settings)
    stages, auxiliary = copy.deepcopy(method.stages), copy.deepcopy(method.auxiliary)
    x, y = random_batch(in_shape)
    captured = capture_updates(method)
    method.step(x, y)

    # Independently: stage i's loss is the cross-entropy of a_i(f_i(h_{i-1})) with h_{i-1} a constant;
    # the output stage's is the task loss. Every input comes from the network before this step's updates.
    h, top = x, len(stages) - 1
    for i, stage in enumerate(stages):
        h = stage(h.detach())
        params = [*stage.parameters(), *(auxiliary[i].parameters() if i < top else [])]
        loss = F.cross_entropy(h if i == top else auxiliary[i](h), y)
        expected = torch.autograd.grad(loss, params)
        assert len(captured[i]) == len(expected)
        for got, want in zip(captured[i], expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    # No stage left a gradient on a stage below it (every update clears its own).
    assert all(p.grad is None for p in [*method.stages.parameters(), *method.auxiliary.parameters()])
    assert method.update_counts == [1] * len(stages)


def test_auxiliary_classifier_learns_with_its_stage(dgl):
    """Each stage's optimizer holds the stage and its classifier: both move in one update."""
    method = build_method("dgl", (1, 28, 28), model="fcn3")
    assert len(method.optimizers()) == 3 and len(method.auxiliary) == 2
    aux_before = [p.detach().clone() for p in method.auxiliary.parameters()]
    x, y = random_batch((1, 28, 28), n=32)
    losses = [method.step(x, y) for _ in range(40)]
    assert all(not torch.equal(a, b) for a, b in zip(aux_before, method.auxiliary.parameters()))
    for key in ("aux_loss/h1", "aux_loss/h2", "train_loss"):   # one fixed batch: every local loss falls
        assert losses[-1][key] < 0.5 * losses[0][key], key


def test_p_update_gates_each_stage_on_its_own_coin(dgl):
    """Unlike backprop (a stage updates only when every stage above did), a DGL stage needs nothing
    from above: each updates on p_update's coin alone, also when the stage above does not."""
    method = build_method("dgl", (1, 28, 28), model="fcn3", coin_seed=3, p_update=0.5)
    x, y = random_batch((1, 28, 28), n=8)
    bottom_without_top = 0
    for _ in range(300):
        before = list(method.update_counts)
        method.step(x, y)
        moved = [a - b for a, b in zip(method.update_counts, before)]
        bottom_without_top += moved[0] == 1 and moved[-1] == 0
    assert all(110 <= n <= 190 for n in method.update_counts), method.update_counts   # 300 x 0.5 ± 4.6 sd
    assert 40 <= bottom_without_top <= 110                                            # about 300 x 0.25


def test_example_suite_compares_dgl_with_the_baselines_at_every_profile(dgl):
    suite = load_suite(EXAMPLES / "dgl.yaml")
    for profile in ("smoke", "quick", "paper"):
        specs = plan(suite, profile)
        assert {s.method for s in specs} == {"bprop", "dni", "cdni", "dgl"}
        files = {s.method_file.path for s in specs if s.method_file}
        assert files == {str((EXAMPLES / "dgl.py").resolve())}
        assert all(s.method_file is None for s in specs if s.method != "dgl")
    paper = plan(suite, "paper")
    assert {s.model for s in paper} == {"fcn3", "fcn4", "fcn5", "fcn6", "cnn3", "cnn4"}
    assert {s.seed for s in paper} == {0, 1, 2} and paper[0].train.steps == 500_000
    assert {e["model"] for e in skipped_entries(suite, "quick")} == {"cnn3", "cnn4"}


def test_the_readmes_command_runs_the_example_then_compares_it(tmp_path, capsys):
    """README, word for word but for the store and the data (random digits, as many as the smoke profile reads):
    `dnibench run examples/dgl.yaml --profile smoke && dnibench compare mnist_dgl`: every run of the example finishes,
    the variant is compared with each baseline, and the report gives the suite's table under "Other suites" (it has
    no section of its own)."""
    from dnibench.cli import main
    from fake_data import fake_mnist
    fake_mnist(tmp_path, 1000, 200)
    uri, out = f"sqlite:///{tmp_path}/m.db", tmp_path / "reports"
    assert main(["run", str(EXAMPLES / "dgl.yaml"), "--profile", "smoke", "--device", "cpu", "--tracking-uri", uri,
                 "--data-dir", str(tmp_path / "data"), "--no-progress"]) == 0
    assert "24 run(s) done" in capsys.readouterr().out
    assert main(["compare", "mnist_dgl", "--tracking-uri", uri, "--out", str(out)]) == 0
    compared = capsys.readouterr().out
    for model in ("fcn3", "fcn4", "fcn5", "fcn6", "cnn3", "cnn4"):          # the variant beside each baseline, each net
        assert all(f"| {model} | {name} | 1 |" in compared for name in ("Bprop", "DNI", "cDNI", "dgl")), compared
    assert main(["report", "--tracking-uri", uri, "--out", str(out)]) == 0
    readme = (out / "README.md").read_text()
    other = readme[readme.index("Other suites: variants against the baselines"):]
    assert "mnist_dgl" in other and "dgl" in other
