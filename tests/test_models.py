"""The paper's networks, layer by layer (MISSION.md, Table 1 setup: FCN of 256 units with BN and ReLU; CNN of
5x5 convolutions with "same" padding, BN, ReLU, a 3x3 max-pool after the first layer and average pools after
the others), and the model names a suite may use (dnibench/models.py)."""
import pytest
import torch
from torch import nn

from dnibench.errors import SuiteError
from dnibench.models import build_stages, parse_model_name, stage_count, stage_output_shapes

MNIST, CIFAR = (1, 28, 28), (3, 32, 32)


def describe(module: nn.Module) -> tuple:
    """A layer as its type and the sizes that define it."""
    if isinstance(module, nn.Linear):
        return ("Linear", module.in_features, module.out_features)
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return (type(module).__name__, module.num_features)
    if isinstance(module, nn.Conv2d):
        return ("Conv2d", module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding)
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        return (type(module).__name__, module.kernel_size, module.stride, module.padding)
    return (type(module).__name__,)


def layers(stages: nn.ModuleList) -> list[list[tuple]]:
    return [[describe(m) for m in stage] for stage in stages]


HIDDEN = [("Linear", 256, 256), ("BatchNorm1d", 256), ("ReLU",)]


def test_fcn_is_256_unit_bn_relu_layers_then_a_linear_classifier():
    first = [("Flatten",), ("Linear", 784, 256), ("BatchNorm1d", 256), ("ReLU",)]
    assert layers(build_stages("fcn4", MNIST, 10)) == [first, HIDDEN, HIDDEN, [("Linear", 256, 10)]]
    assert layers(build_stages("fcn2", MNIST, 10)) == [first, [("Linear", 256, 10)]]
    # the top flattens only where it is the whole network
    assert layers(build_stages("fcn1", MNIST, 10)) == [[("Flatten",), ("Linear", 784, 10)]]
    cifar = layers(build_stages("fcn10", CIFAR, 10))
    assert len(cifar) == 10 and cifar[0][:2] == [("Flatten",), ("Linear", 3 * 32 * 32, 256)]
    assert cifar[1:-1] == [HIDDEN] * 8 and cifar[-1] == [("Linear", 256, 10)]


def test_fcn_runs_on_images_and_reports_each_stages_shape():
    for name, shapes in (("fcn1", [(10,)]), ("fcn3", [(256,), (256,), (10,)])):
        stages = build_stages(name, MNIST, 10)
        h = torch.rand(2, *MNIST)
        for stage in stages:
            h = stage(h)
        assert h.shape == (2, 10) and stage_output_shapes(stages, MNIST) == shapes


def test_cnn_is_5x5_same_convolutions_with_max_then_average_pools():
    conv = lambda c_in, c_out: ("Conv2d", c_in, c_out, (5, 5), (1, 1), (2, 2))   # noqa: E731
    block = lambda c_in, pool: [conv(c_in, 64), ("BatchNorm2d", 64), ("ReLU",), (pool, 3, 2, 1)]   # noqa: E731
    stages = build_stages("cnn4", MNIST, 10)          # 64 filters unless the suite says otherwise
    assert layers(stages) == [block(1, "MaxPool2d"), block(64, "AvgPool2d"), block(64, "AvgPool2d"),
                              [("Flatten",), ("Linear", 64 * 4 * 4, 10)]]
    # stride 2 halves the resolution, rounding up: 28 -> 14 -> 7 -> 4
    assert stage_output_shapes(stages, MNIST) == [(64, 14, 14), (64, 7, 7), (64, 4, 4), (10,)]
    assert stages[0](torch.rand(2, *MNIST)).shape == (2, 64, 14, 14)
    wide = build_stages("cnn2", CIFAR, 10, cnn_filters=128)
    assert layers(wide)[0][0] == conv(3, 128) and layers(wide)[1] == [("Flatten",), ("Linear", 128 * 16 * 16, 10)]


@pytest.mark.parametrize("name,parsed", [("fcn1", ("fcn", 1)), ("fcn10", ("fcn", 10)), ("cnn2", ("cnn", 2)),
                                         ("cnn6", ("cnn", 6))])
def test_model_names_at_the_ends_of_each_range(name, parsed):
    assert parse_model_name(name) == parsed


@pytest.mark.parametrize("name,depth", [("fcn0", 0), ("fcn11", 11), ("cnn1", 1), ("cnn7", 7)])
def test_model_depth_out_of_range_is_refused_with_the_ranges(name, depth):
    with pytest.raises(SuiteError) as err:
        parse_model_name(name)
    assert str(err.value) == f"model {name!r}: depth {depth} out of range (fcn 1..10, cnn 2..6)"


@pytest.mark.parametrize("name", ["FCN3", "mlp3", "fcn", "cnn3x", " fcn3"])
def test_unknown_model_name_is_refused(name):
    with pytest.raises(SuiteError) as err:
        parse_model_name(name)
    assert str(err.value) == f"unknown model {name!r}: expected fcnN (N in 1..10) or cnnN (N in 2..6)"


def test_stage_count_reads_n_with_the_output_layer_by_default():
    assert stage_count(3) == 3 and stage_count(3, "with_output") == 3 and stage_count(3, "hidden_only") == 4
    with pytest.raises(SuiteError) as err:
        stage_count(3, "all")
    assert str(err.value) == "layer_count 'all': expected one of with_output, hidden_only"
