"""Tasks by name: which data a suite trains on and which training loop drives it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pydantic import BaseModel, ConfigDict

from .conventions import ConventionSettings, ImageSettings  # noqa: F401  (re-exported)
from .errors import SuiteError
from .models import parse_model_name


def _check_ff_model(model: str) -> None:
    parse_model_name(model)


def _check_image_args(model: str, args: dict) -> None:
    if parse_model_name(model)[0] == "fcn" and args.get("pool_stride", 2) != 2:
        raise SuiteError(f"task_args.pool_stride {args['pool_stride']}: model {model!r} has no pooling "
                         "(pool_stride applies to cnnN models)")


def _no_arg_check(model: str, args: dict) -> None:
    pass


def _train_ff(*args, **kwargs):
    from .train import train_ff
    return train_ff(*args, **kwargs)


class NoTaskSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


@dataclass(frozen=True)
class Task:
    """A task: its data loader, its model-name check, its training loop, and its own settings
    (``task_args`` in a suite, validated by ``Settings``)."""
    name: str
    family: str                                     # "ff" (image classification) or "rnn"
    loader: Callable[..., object]                   # (data_dir, cifar_dir) -> data
    check_model: Callable[[str], None] = _check_ff_model
    train: Callable[..., dict] = _train_ff          # (spec, data, log, on_step) -> summary metrics
    Settings: type[BaseModel] = NoTaskSettings
    check_args: Callable[[str, dict], None] = _no_arg_check   # (model, task_args): a setting the model cannot use
    # Training settings this task's loop never reads: a suite that names one is refused (it would be ignored).
    unused_train: tuple[str, ...] = ()

    def load(self, data_dir: Path | None, cifar_dir: Path | None = None):
        return self.loader(data_dir, cifar_dir)


def _mnist(data_dir, _cifar_dir):
    from .data import load_mnist
    return load_mnist(data_dir)


def _cifar10(_data_dir, cifar_dir):
    from .data import load_cifar10
    from .errors import DataNotProvided
    if cifar_dir is None:
        raise DataNotProvided("CIFAR-10 is not obtainable here: pass --cifar-dir DIR (the cifar-10-batches-py folder)")
    return load_cifar10(cifar_dir)


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("mnist", "ff", _mnist, Settings=ImageSettings, check_args=_check_image_args),
    Task("cifar10", "ff", _cifar10, Settings=ImageSettings, check_args=_check_image_args)]}


def register_task(task: Task) -> Task:
    TASKS[task.name] = task
    return task


def get_task(name: str, where: Path | str = "suite") -> Task:
    if name not in TASKS:
        raise SuiteError(f"{where}: field 'task': unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[name]

# The recurrent tasks (copy, repeat_copy, ptb, multiscale) register themselves; imported last (it imports Task from here).
from .rnn import tasks as _rnn_tasks  # noqa: E402,F401
