"""Methods (learning rules) by name. A method is one file in this package, or one file anywhere
named in a suite as ``path/to/file.py`` (loaded with ``load_method_file``).

The protocol is small: a subclass of ``Method`` with a ``name``, a pydantic ``Settings`` model
(its hyperparameters, validated from the suite), and ``step(x, y) -> metrics``; see base.py.
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from pathlib import Path

from ..errors import SuiteError
from .base import Method, MethodSettings, Setup  # noqa: F401  (the protocol, re-exported)

REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available by its ``name``."""
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise SuiteError(f"method name {cls.name!r} is registered twice "
                         f"({REGISTRY[cls.name].__module__} and {cls.__module__})")
    REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


def load_method_file(path: str | Path) -> None:
    """Import a variant defined in a file outside the package; it registers itself."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"method file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"dnibench_plugin_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # a plugin's own bug: name the file, keep it one line
        raise SuiteError(f"method file {path}: {type(err).__name__}: {err}") from err


def get_method(name: str) -> type[Method]:
    if name.endswith(".py"):
        before = set(REGISTRY)
        load_method_file(name)
        new = set(REGISTRY) - before
        if len(new) != 1:
            raise SuiteError(f"method file {name} must register exactly one method, registered {sorted(new)}")
        return REGISTRY[new.pop()]
    if name not in REGISTRY:
        raise SuiteError(f"unknown method {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


_discover()
