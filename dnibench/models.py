"""The paper's feed-forward networks, built as a list of layers ("stages").

Each stage is one layer h_i = f_i(h_{i-1}); DNI sits between consecutive stages (paper §3.1,
Table 1 setup). Two conventions of the paper's setup (``conventions`` in
dnibench/published/jaderberg2016.yaml; task settings in dnibench/tasks.py):
  - ``layer_count``: by default ("with_output") the N of FCN-N / CNN-N includes the output layer:
    FCN-4 is three hidden layers plus the classifier, CNN-3 two convolutional layers plus the
    classifier; "hidden_only" reads N as the hidden layers, one more stage each;
  - ``pool_stride``: the CNN's 3x3 pooling (padding 1) has stride 2 by default (halves the resolution);
    1 keeps the resolution.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from .errors import SuiteError

FCN_WIDTH = 256


def _fcn(depth: int, in_shape: tuple[int, ...], num_classes: int) -> list[nn.Module]:
    in_features = int(torch.tensor(in_shape).prod())
    stages: list[nn.Module] = []
    width = in_features
    for i in range(depth - 1):
        layers = [nn.Flatten()] if i == 0 else []
        layers += [nn.Linear(width, FCN_WIDTH), nn.BatchNorm1d(FCN_WIDTH), nn.ReLU()]
        stages.append(nn.Sequential(*layers))
        width = FCN_WIDTH
    top = [nn.Flatten()] if depth == 1 else []
    stages.append(nn.Sequential(*top, nn.Linear(width, num_classes)))
    return stages


def _cnn(depth: int, in_shape: tuple[int, ...], num_classes: int, filters: int,
         pool_stride: int) -> list[nn.Module]:
    channels, height, width = in_shape
    stages: list[nn.Module] = []
    for i in range(depth - 1):
        # 5x5 "same" convolutions; 3x3 max-pool after the first layer, average pool after the others.
        pool = (nn.MaxPool2d if i == 0 else nn.AvgPool2d)(3, stride=pool_stride, padding=1)
        stages.append(nn.Sequential(
            nn.Conv2d(channels, filters, 5, padding=2), nn.BatchNorm2d(filters), nn.ReLU(), pool))
        channels = filters
        height, width = (height - 1) // pool_stride + 1, (width - 1) // pool_stride + 1
    stages.append(nn.Sequential(nn.Flatten(), nn.Linear(channels * height * width, num_classes)))
    return stages


MODEL_PATTERN = re.compile(r"^(fcn|cnn)(\d+)$")


def parse_model_name(name: str) -> tuple[str, int]:
    match = MODEL_PATTERN.match(name)
    if not match:
        raise SuiteError(f"unknown model {name!r}: expected fcnN (N in 1..10) or cnnN (N in 2..6)")
    kind, depth = match.group(1), int(match.group(2))
    if (kind == "fcn" and not 1 <= depth <= 10) or (kind == "cnn" and not 2 <= depth <= 6):
        raise SuiteError(f"model {name!r}: depth {depth} out of range (fcn 1..10, cnn 2..6)")
    return kind, depth


LAYER_COUNTS = ("with_output", "hidden_only")


def stage_count(depth: int, layer_count: str = "with_output") -> int:
    """How many stages (layers, with DNI between each) the N of a model name means."""
    if layer_count not in LAYER_COUNTS:
        raise SuiteError(f"layer_count {layer_count!r}: expected one of {', '.join(LAYER_COUNTS)}")
    return depth if layer_count == "with_output" else depth + 1


def build_stages(name: str, in_shape: tuple[int, ...], num_classes: int, cnn_filters: int = 64,
                 layer_count: str = "with_output", pool_stride: int = 2) -> nn.ModuleList:
    kind, depth = parse_model_name(name)
    stages = stage_count(depth, layer_count)
    if kind == "fcn":
        return nn.ModuleList(_fcn(stages, in_shape, num_classes))
    return nn.ModuleList(_cnn(stages, in_shape, num_classes, cnn_filters, pool_stride))


@torch.no_grad()
def stage_output_shapes(stages: nn.ModuleList, in_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Per-example output shape of every stage (what a synthesizer at that interface sees)."""
    was_training = stages.training
    stages.eval()
    # On the stages' own device: on CUDA a probe made on the CPU failed every run (found on the first GPU run).
    param = next(stages.parameters(), None)
    h = torch.zeros(1, *in_shape, device=param.device if param is not None else None)
    shapes = []
    for stage in stages:
        h = stage(h)
        shapes.append(tuple(h.shape[1:]))
    stages.train(was_training)
    return shapes
