"""The paper's feed-forward networks, built as a list of layers ("stages").

Each stage is one layer h_i = f_i(h_{i-1}); DNI sits between consecutive stages (paper §3.1,
Table 1 setup). The layer count includes the output layer: FCN-4 is three hidden layers plus the
classifier, CNN-3 is two convolutional layers plus the classifier.
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


def _cnn(depth: int, in_shape: tuple[int, ...], num_classes: int, filters: int) -> list[nn.Module]:
    channels, height, width = in_shape
    stages: list[nn.Module] = []
    for i in range(depth - 1):
        # 5x5 "same" convolutions; 3x3 max-pool after the first layer, average pool after the others.
        pool = nn.MaxPool2d(3, stride=2, padding=1) if i == 0 else nn.AvgPool2d(3, stride=2, padding=1)
        stages.append(nn.Sequential(
            nn.Conv2d(channels, filters, 5, padding=2), nn.BatchNorm2d(filters), nn.ReLU(), pool))
        channels = filters
        height, width = (height + 1) // 2, (width + 1) // 2
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


def build_stages(name: str, in_shape: tuple[int, ...], num_classes: int, cnn_filters: int = 64) -> nn.ModuleList:
    kind, depth = parse_model_name(name)
    if kind == "fcn":
        return nn.ModuleList(_fcn(depth, in_shape, num_classes))
    return nn.ModuleList(_cnn(depth, in_shape, num_classes, cnn_filters))


@torch.no_grad()
def stage_output_shapes(stages: nn.ModuleList, in_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Per-example output shape of every stage (what a synthesizer at that interface sees)."""
    was_training = stages.training
    stages.eval()
    h = torch.zeros(1, *in_shape)
    shapes = []
    for stage in stages:
        h = stage(h)
        shapes.append(tuple(h.shape[1:]))
    stages.train(was_training)
    return shapes
