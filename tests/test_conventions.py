"""Conventions that move whole rows (``conventions`` in jaderberg2016.yaml): what FCN-N / CNN-N count,
the CNN's pooling stride, the Copy length. Each is a setting; the other reading changes the model or
the reported length; the default reading keeps the runs' config hashes; the report says which it uses."""
import pandas as pd
import pytest
import torch

from dnibench.data import ImageData
from dnibench.errors import SuiteError
from dnibench.methods import get_method
from dnibench.models import build_stages
from dnibench.rnn.tasks import Curriculum
from dnibench.suite import RunSpec, TrainSettings, load_suite, plan
from dnibench.tasks import get_task
from report_fixtures import report_context

MNIST = (1, 28, 28)


def n_params(stages) -> int:
    return sum(p.numel() for p in stages.parameters())


def test_hidden_only_layer_count_adds_one_hidden_layer():
    fcn3 = build_stages("fcn3", MNIST, 10)
    deeper = build_stages("fcn3", MNIST, 10, layer_count="hidden_only")
    assert (len(fcn3), len(deeper)) == (3, 4)
    # exactly one more 256-unit hidden layer: Linear(256, 256) and BatchNorm's scale and shift
    assert n_params(deeper) - n_params(fcn3) == 256 * 256 + 256 + 2 * 256
    assert n_params(build_stages("fcn4", MNIST, 10)) == n_params(deeper)
    cnn3 = build_stages("cnn3", MNIST, 10, cnn_filters=8, layer_count="hidden_only")
    convs = [m for m in cnn3.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(cnn3) == 4 and len(convs) == 3
    with pytest.raises(SuiteError, match="layer_count 'all'"):
        build_stages("fcn3", MNIST, 10, layer_count="all")


def test_pool_stride_one_keeps_the_resolution_up_to_the_classifier():
    halved = build_stages("cnn3", MNIST, 10, cnn_filters=8)
    kept = build_stages("cnn3", MNIST, 10, cnn_filters=8, pool_stride=1)
    assert halved[-1][1].in_features == 8 * 7 * 7 and kept[-1][1].in_features == 8 * 28 * 28
    x = torch.rand(2, *MNIST)
    for stages, side in [(halved, 14), (kept, 28)]:
        assert stages[0](x).shape == (2, 8, side, side)
    assert build_stages("cnn3", (3, 32, 32), 10, cnn_filters=4, pool_stride=3)[-1][1].in_features == 4 * 4 * 4


SUITE = """
name: conv
task: mnist
train: {{steps: 2}}
task_args: {task_args}
profiles: {{smoke: {{}}, quick: {{}}, paper: {{}}}}
entries:
  - model: {model}
    method: bprop
"""


def specs(tmp_path, model="fcn3", task_args="{}"):
    path = tmp_path / "conv.yaml"
    path.write_text(SUITE.format(model=model, task_args=task_args))
    return plan(load_suite(path), "smoke")


def test_conventions_are_validated_recorded_and_default_keeps_the_hash(tmp_path):
    default = specs(tmp_path)[0]
    explicit = specs(tmp_path, task_args="{layer_count: with_output, pool_stride: 2}")[0]
    assert default.task_args == {} and explicit.config_hash == default.config_hash   # as before the setting
    other = specs(tmp_path, task_args="{layer_count: hidden_only}")[0]
    assert other.task_args == {"layer_count": "hidden_only"} and other.config_hash != default.config_hash
    cnn = specs(tmp_path, model="cnn3", task_args="{pool_stride: 1}")[0]
    assert cnn.task_args == {"pool_stride": 1}
    with pytest.raises(SuiteError, match=r"conv.yaml: entries\[0\].*pool_stride 1: model 'fcn3' has no pooling"):
        specs(tmp_path, task_args="{pool_stride: 1}")
    with pytest.raises(SuiteError, match=r"field 'layer_count'"):
        specs(tmp_path, task_args="{layer_count: outputs}")
    with pytest.raises(SuiteError, match=r"field 'pool_stride'"):
        specs(tmp_path, model="cnn3", task_args="{pool_stride: 0}")


def test_training_builds_the_model_the_convention_says(one_thread):
    from dnibench.train import train_ff
    g = torch.Generator().manual_seed(0)
    data = ImageData(torch.rand(32, 1, 4, 4, generator=g), torch.randint(0, 10, (32,), generator=g),
                     torch.rand(8, 1, 4, 4, generator=g), torch.randint(0, 10, (8,), generator=g), 10, "random")
    logged = {}
    for reading in ("with_output", "hidden_only"):
        spec = RunSpec(suite="t", profile="smoke", task="mnist", model="fcn3", method="bprop",
                       method_args=get_method("bprop").Settings().model_dump(),
                       task_args=get_task("mnist").Settings(layer_count=reading).model_dump(),
                       train=TrainSettings(steps=4, batch_size=8, lr=1e-3, lr_decay_at=[], eval_every=4, log_every=4),
                       seed=0, device="cpu")
        rows = {}
        train_ff(spec, data, lambda metrics, step: rows.update(metrics))
        logged[reading] = {k for k in rows if k.startswith("updates/stage")}
    assert logged["with_output"] == {f"updates/stage{i}" for i in (1, 2, 3)}
    assert logged["hidden_only"] == {f"updates/stage{i}" for i in (1, 2, 3, 4)}


def test_copy_length_counts_n_or_n_plus_3():
    # Copy from N = 2: N 2 -> 3 -> 4; Repeat Copy from (2, 1): (2, 1) -> (2, 2) -> (3, 2)
    for repeat, offset, (n, r), solved in [(False, 3, (4, 1), [5, 6]), (False, 0, (4, 1), [2, 3]),
                                           (True, 3, (3, 2), [5, 7]), (True, 0, (3, 2), [2, 4])]:
        cur = Curriculum(repeat, start_n=2, offset=offset)
        cur.advance(10)
        cur.advance(20)
        assert (cur.n, cur.r, cur.length) == (n, r, n * r + offset)
        assert cur.solved == list(zip(solved, [10, 20])) and cur.max_len_solved == solved[-1]
    settings = get_task("copy").Settings
    assert settings().length_offset == 3 and settings(length_counts="N").length_offset == 0
    assert settings().model_dump().get("length_counts") is None                       # default: not recorded
    assert get_task("repeat_copy").Settings(length_counts="N*R").length_offset == 0
    with pytest.raises(ValueError):
        get_task("repeat_copy").Settings(length_counts="N")
    with pytest.raises(ValueError):
        settings(length_counts="N*R+3")


def test_copy_run_reports_the_length_its_convention_counts(one_thread):
    """The same training under either reading; only the lengths logged differ, by exactly 3."""
    spec = [s for s in plan(load_suite("suites/rnn_copy.yaml"), "smoke") if s.method == "bptt"][0]
    runs = {}
    for counts in ("N+3", "N"):
        args = get_task("copy").Settings.model_validate({**spec.task_args, "length_counts": counts}).model_dump()
        rows = []
        get_task("copy").train(spec.model_copy(update={"task_args": args}), None, lambda m, step: rows.append(m))
        runs[counts] = rows[-1]
    assert runs["N+3"]["max_len_solved"] >= 4                       # the smoke threshold lets it advance
    assert runs["N+3"]["max_len_solved"] - runs["N"]["max_len_solved"] == 3
    assert runs["N+3"]["final_len"] - runs["N"]["final_len"] == 3


def test_table1_uses_the_default_reading_and_shows_the_conventions(tmp_path):
    from dnibench.report import table1
    row = lambda error, **conv: {"suite": "mnist_ff", "task": "mnist", "profile": "quick", "model": "fcn3",  # noqa: E731
                                 "method": "bprop", "seed": 0, "param.train.steps": "5000",
                                 "metric.final_test_error": error, **{f"param.task_args.{k}": v for k, v in conv.items()}}
    ctx = report_context(tmp_path, [row(2.5), row(7.0, layer_count="hidden_only")])   # the other reading ran last
    section = table1.render(ctx)
    cells = pd.read_csv(tmp_path / "table1_quick_cells.csv")
    bprop = cells[(cells["dataset"] == "mnist") & (cells["model"] == "fcn3") & (cells["method"] == "bprop")]
    assert bprop["measured_mean"].tolist() == [2.5]
    assert "Convention `layer_count` (default: with_output" in section.body
    assert "Convention `pool_stride`" in section.body and "Convention `copy_length`" not in section.body
    assert "| mnist | fcn3 | bprop | layer_count=hidden_only | 7.0 | 1 |" in section.body


def test_rnn_table_shows_the_copy_length_convention(tmp_path):
    from dnibench.report import rnn
    row = lambda length, **conv: {"suite": "rnn_copy", "task": "copy", "profile": "quick", "model": "lstm64",  # noqa: E731
                                  "method": "bptt", "seed": 0, "param.method_args.T": "2",
                                  "metric.max_len_solved": float(length),
                                  **{f"param.task_args.{k}": v for k, v in conv.items()}}
    ctx = report_context(tmp_path, [row(9), row(6, length_counts="N")])
    section = rnn.render(ctx)
    cells = pd.read_csv(tmp_path / "rnn_table_quick_cells.csv").set_index(["task", "method", "T"])
    assert cells.loc[("Copy", "BPTT", 2), "measured"] == 9
    assert "Convention `copy_length`" in section.body and "Convention `rnn_target_discount`" in section.body
    assert "Convention `layer_count`" not in section.body
    assert "| copy | lstm64 | bptt | 2 | length_counts=N | 6.0 | 1 |" in section.body
