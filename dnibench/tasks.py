"""Tasks by name: which data a suite trains on and which training loop drives it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_serializer

from .errors import SuiteError
from .models import parse_model_name


def _check_ff_model(model: str) -> None:
    parse_model_name(model)


class ConventionSettings(BaseModel):
    """Task settings some of whose fields are *conventions*: readings of the paper that move a whole
    row when read the other way (``conventions`` in dnibench/published/jaderberg2016.yaml). A
    convention at its default is left out of the dump, so it enters a run's params and config hash
    only when it departs from the default reading, and runs logged before it was a setting keep their
    hashes; readers of ``task_args`` validate them back through the class (a missing one is the default)."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    CONVENTIONS: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _drop_default_conventions(self, handler):
        data = handler(self)
        for name in self.CONVENTIONS:
            if name in data and data[name] == type(self).model_fields[name].default:
                del data[name]
        return data


class ImageSettings(ConventionSettings):
    """MNIST / CIFAR-10 ``task_args``: the two conventions of the paper's Table 1 models (dnibench/models.py)."""
    CONVENTIONS = ("layer_count", "pool_stride")
    # What the N of FCN-N / CNN-N counts: with_output (hidden layers + the output layer, e.g. FCN-3 is
    # two hidden layers and the classifier) or hidden_only (N hidden layers, then the classifier).
    layer_count: Literal["with_output", "hidden_only"] = "with_output"
    # Stride of the CNN's 3x3 pooling (padding 1): 2 halves the resolution, 1 keeps it.
    pool_stride: StrictInt = Field(2, ge=1, le=3)


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
