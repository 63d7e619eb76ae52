"""Tasks by name: which data a suite trains on and which training loop drives it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import SuiteError
from .models import parse_model_name


@dataclass(frozen=True)
class Task:
    name: str
    family: str                           # "ff" (image classification) or "rnn"
    loader: Callable[..., object]         # (data_dir, options) -> data
    models: tuple[str, ...] = ("fcn", "cnn")

    def check_model(self, model: str) -> None:
        kind, _ = parse_model_name(model)
        if kind not in self.models:
            raise SuiteError(f"task {self.name!r} has no model {model!r}")

    def load(self, data_dir: Path | None, cifar_dir: Path | None = None):
        return self.loader(data_dir, cifar_dir)


def _mnist(data_dir, _cifar_dir):
    from .data import load_mnist
    return load_mnist(data_dir)


def _cifar10(_data_dir, cifar_dir):
    from .data import load_cifar10
    from .errors import DataError
    if cifar_dir is None:
        raise DataError("CIFAR-10 is not obtainable here: pass --cifar-dir DIR (the cifar-10-batches-py folder)")
    return load_cifar10(cifar_dir)


TASKS = {t.name: t for t in [Task("mnist", "ff", _mnist), Task("cifar10", "ff", _cifar10)]}


def get_task(name: str, where: Path | str = "suite") -> Task:
    if name not in TASKS:
        raise SuiteError(f"{where}: field 'task': unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[name]
