"""Methods (learning rules) by name. A method is one file in this package, or one file anywhere
named in a suite as ``path/to/file.py`` (loaded with ``load_method_file``).

The protocol is small: a subclass of ``Method`` with a ``name``, a pydantic ``Settings`` model
(its hyperparameters, validated from the suite), and ``step(x, y) -> metrics``; see base.py.

A method file is executed once per process, keyed by its resolved path: every grid point, run and
plan after the first reuses its class. A file whose content changed since it was loaded is executed
again (its old registration is dropped first), so a long-lived process never runs stale code.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path

from ..errors import SuiteError

# The built-in methods, name -> (module, family, description), readable without importing torch, for
# `dnibench list` (tests/test_harness.py checks it against the registry). The method files themselves
# are imported, and torch with them, the first time the registry is used: REGISTRY, get_method,
# register or load_method_file (PEP 562 ``__getattr__`` below).
BUILTIN = {
    "bprop": ("bprop", "ff", "end-to-end backpropagation (update-locked)"),
    "bptt": ("bptt", "rnn", "LSTM with truncated BPTT over windows of T steps"),
    "cdni": ("cdni", "ff", "DNI with label-conditioned synthesizers"),
    "dni": ("dni", "ff", "synthetic gradients between every layer, bootstrapped targets"),
    "dni_bptt": ("dni_bptt", "rnn", "truncated BPTT + synthetic gradient for the LSTM state at every window boundary"),
    "dni_bptt_aux": ("dni_bptt", "rnn",
                     "recurrent DNI + the auxiliary task of predicting the synthetic gradient T steps ahead"),
    "nobprop": ("nobprop", "ff", "only the last layer learns (lower layers stay random)"),
    "unlock_dni": ("unlock", "ff", "complete unlock: synthetic inputs and synthetic gradients for every layer"),
    "unlock_cdni": ("unlock", "ff", "complete unlock with label-conditioned synthesizers (cDNI)"),
}

_REGISTRY: dict[str, type[Method]] = {}
_discovered = False
# resolved path of a method file -> (sha256 of its content, the class it registered)
_FILES: dict[Path, tuple[str, type[Method]]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available by its ``name``."""
    if not cls.__module__.startswith(f"{__name__}."):
        _discover()                         # a plug-in's name must not shadow a built-in's
    # (not for a built-in: its module may be imported first, e.g. `from dnibench.methods.dni import DNI` in a
    # script, and discovering the others from inside it imported cdni, which imports dni half-made: ImportError)
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise SuiteError(f"method name {cls.name!r} is registered twice "
                         f"({_REGISTRY[cls.name].__module__} and {cls.__module__})")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True                      # first: the modules imported here call register()
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


def __getattr__(name: str):
    if name == "REGISTRY":
        _discover()
        return _REGISTRY
    if name in ("Method", "MethodSettings", "Setup"):     # the protocol, re-exported
        from . import base
        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def find_method_file(name: str, suite_dir: str | Path | None = None) -> Path:
    """The file a suite means by ``method: name``: an absolute path as it is; a relative one relative
    to the suite file's folder first, then to the working directory. Returned resolved (absolute,
    symlinks followed), so every process that loads it later loads the same file."""
    path = Path(name).expanduser()
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = ([Path(suite_dir) / path] if suite_dir is not None else []) + [Path.cwd() / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise SuiteError(f"method file {name} does not exist (looked for {', '.join(str(c) for c in candidates)})")


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_method_file(path: str | Path, sha256: str | None = None) -> tuple[type[Method], str]:
    """(the class a method file registers, the sha256 of the file it came from). Executes the file
    only the first time (or when its content changed); it must register exactly one method.
    With ``sha256`` the file must still have that content (a run planned from it must run it)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise SuiteError(f"method file {path} does not exist")
    digest = file_sha256(path)
    _discover()
    if sha256 is not None and digest != sha256:
        raise SuiteError(f"method file {path} changed since the run was planned (sha256 {digest[:12]}, "
                         f"planned {sha256[:12]}); plan the suite again")
    if path in _FILES and _FILES[path][0] == digest:
        return _FILES[path][1], digest
    previous = _FILES.pop(path, None)
    if previous is not None:                     # edited since it was loaded: its new version replaces it
        _REGISTRY.pop(previous[1].name, None)
    before = dict(_REGISTRY)
    # One module name per file (two files may share a stem); in sys.modules while it runs, as pydantic
    # needs it to resolve a Settings class's postponed annotations.
    module_name = f"dnibench_method_file_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
        new = [name for name in _REGISTRY if name not in before]
        if len(new) != 1:
            found = f"registered {', '.join(repr(n) for n in new)}" if new else "registered none"
            raise SuiteError(f"must register exactly one method (a Method subclass decorated with @register), {found}")
    except Exception as err:  # the file's own bug: name the file, keep it one line
        _REGISTRY.clear()
        _REGISTRY.update(before)                  # nothing half-registered stays behind
        sys.modules.pop(module_name, None)
        if previous is not None:
            _REGISTRY[previous[1].name] = previous[1]
            _FILES[path] = previous
        detail = str(err) if isinstance(err, SuiteError) else f"{type(err).__name__}: {err}"
        raise SuiteError(f"method file {path}: {' '.join(detail.split())}") from err
    cls = _REGISTRY[new[0]]
    _FILES[path] = (digest, cls)
    return cls, digest


def get_method(name: str) -> type[Method]:
    """A registered method by name, or the method a ``.py`` file registers (a relative path is
    taken from the working directory; suites resolve theirs with ``find_method_file``)."""
    if name.endswith(".py"):
        return load_method_file(find_method_file(name))[0]
    _discover()
    if name not in _REGISTRY:
        raise SuiteError(f"unknown method {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
