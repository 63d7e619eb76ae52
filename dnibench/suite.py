"""Suite files: YAML validated against a schema, resolved into a plan of runs.

suite file -> Suite (validated) -> plan(profile, seeds, device) -> [RunSpec] (one per run, each with a
stable config hash). Errors name the file, the field and what was expected, in one line.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import DnibenchError, SuiteError

PROFILES = ("smoke", "quick", "paper")


class Strict(BaseModel):
    # Unknown fields and non-finite numbers (YAML .inf / .nan) are errors: an lr of .inf is not a setting.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TrainSettings(Strict):
    """The training schedule. Paper defaults: Adam, batch 256, lr 3e-5 x0.1 at 300k and 400k, 500k steps."""
    steps: int = Field(500_000, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(3e-5, gt=0)
    lr_decay_at: list[int] = Field(default_factory=lambda: [300_000, 400_000])
    lr_decay_factor: float = Field(0.1, gt=0, le=1)
    eval_every: int = Field(5_000, ge=1)
    log_every: int = Field(100, ge=1)
    train_subset: int | None = Field(None, ge=1)   # first N training examples only (smoke runs)
    test_subset: int | None = Field(None, ge=1)    # first N test examples only (smoke runs)
    cnn_filters: int = Field(64, ge=1)


class Profile(Strict):
    description: str = ""
    departures: list[str] = Field(default_factory=list)   # how this profile departs from the paper
    seeds: int = Field(1, ge=1)
    train: dict[str, Any] = Field(default_factory=dict)   # overrides of TrainSettings
    method_args: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per method name
    task_args: dict[str, Any] = Field(default_factory=dict)
    # A profile that deliberately runs one seed (e.g. too costly for more) opts in here, with its
    # reason; only then does the report judge a single run as a point instead of "1 seed: inconclusive".
    single_seed: bool = False
    single_seed_reason: str = ""

    @model_validator(mode="after")
    def _single_seed_has_a_reason(self):
        if self.single_seed and not self.single_seed_reason.strip():
            raise ValueError("single_seed: true needs a single_seed_reason saying why one seed is enough")
        if self.single_seed and self.seeds != 1:
            raise ValueError(f"single_seed: true with seeds: {self.seeds}; a single-seed profile runs 1 seed")
        return self


class UniformSweep(Strict):
    """``samples`` values drawn uniformly from [low, high] with a fixed seed (the paper samples
    p_update uniformly), rounded to 4 decimals so they read cleanly as run parameters."""
    uniform: tuple[float, float]
    samples: int = Field(ge=1)
    seed: int = 0

    def values(self) -> list[float]:
        low, high = self.uniform
        return sorted(round(float(v), 4) for v in np.random.default_rng(self.seed).uniform(low, high, self.samples))


class Entry(Strict):
    model: str | list[str]
    method: str | list[str]
    args: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per method name: its settings
    # A grid over method settings, applied to every method of the entry: one run per combination,
    # e.g. {p_update: [0.1, 0.5, 1.0]} or {p_update: {uniform: [0.02, 1.0], samples: 20, seed: 0}}.
    sweep: dict[str, Annotated[list[Any], Field(min_length=1)] | UniformSweep] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    task_args: dict[str, Any] = Field(default_factory=dict)
    profiles: list[str] | None = None                     # run only at these profiles (default: all)
    skip_reason: str = ""                                 # said in the report where the entry is left out

    @field_validator("profiles")
    @classmethod
    def _known_profiles(cls, value):
        for name in value or []:
            if name not in PROFILES:
                raise ValueError(f"unknown profile {name!r}; expected one of {', '.join(PROFILES)}")
        return value

    def grid(self) -> list[tuple[str, str]]:
        models = [self.model] if isinstance(self.model, str) else self.model
        methods = [self.method] if isinstance(self.method, str) else self.method
        return [(model, method) for model in models for method in methods]

    def sweep_points(self) -> list[dict[str, Any]]:
        """Every combination of the swept settings ([{}] without a sweep)."""
        points: list[dict[str, Any]] = [{}]
        for key, values in self.sweep.items():
            values = values.values() if isinstance(values, UniformSweep) else values
            points = [{**point, key: value} for point in points for value in values]
        return points


class Suite(Strict):
    name: str = Field(pattern=r"^[a-z0-9_]+$")
    description: str = ""
    task: str
    train: dict[str, Any] = Field(default_factory=dict)
    task_args: dict[str, Any] = Field(default_factory=dict)   # validated by the task's Settings
    profiles: dict[str, Profile]
    entries: list[Entry] = Field(min_length=1)
    path: str = ""

    @model_validator(mode="after")
    def _all_profiles(self):
        missing = [p for p in PROFILES if p not in self.profiles]
        if missing:
            raise ValueError(f"profiles: missing {', '.join(missing)} (every suite defines {', '.join(PROFILES)})")
        return self


class MethodFile(BaseModel):
    """A method a suite names by a ``.py`` path: where every process loads it from, and its content."""
    model_config = ConfigDict(frozen=True)
    path: str                   # absolute and resolved (see methods.find_method_file)
    sha256: str                 # of the file: an edited file is a new configuration


class RunSpec(BaseModel):
    """One run: everything that determines its result (and so its config hash)."""
    model_config = ConfigDict(frozen=True)
    suite: str
    profile: str
    task: str
    model: str
    method: str                 # the registered name, also for a method from a file
    method_args: dict[str, Any]
    task_args: dict[str, Any] = Field(default_factory=dict)
    train: TrainSettings
    seed: int
    device: str
    method_file: MethodFile | None = None

    def resolved(self) -> dict[str, Any]:
        data = json.loads(self.model_dump_json())
        if data["method_file"] is None:       # built-in methods keep the hashes they had before files
            del data["method_file"]
        return data

    @property
    def config_hash(self) -> str:
        data = self.resolved()
        if "method_file" in data:             # the file's content counts, not where the checkout lives
            data["method_file"] = {"sha256": data["method_file"]["sha256"]}
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def method_class(self):
        """The method's class, in whatever process runs it (a file is loaded from its planned path
        and must still have its planned content)."""
        from .methods import get_method, load_method_file
        if self.method_file is None:
            return get_method(self.method)
        return load_method_file(self.method_file.path, self.method_file.sha256)[0]

    @property
    def label(self) -> str:
        return f"{self.suite}/{self.model}/{self.method}/seed{self.seed}"


def _format_validation(path: Path, err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    extra = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    got = first.get("input")
    got_text = f"; got {got!r}" if not isinstance(got, dict) and got is not None else ""
    return f"{path}: field '{where}': {first['msg']}{got_text}{extra}"


def load_suite(path: str | Path) -> Suite:
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"{path}: suite file does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SuiteError(f"{path}: malformed YAML{where}: {getattr(err, 'problem', err)}") from None
    if not isinstance(raw, dict):
        raise SuiteError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        suite = Suite.model_validate({**raw, "path": str(path)})
    except ValidationError as err:
        raise SuiteError(_format_validation(path, err)) from None
    return suite


def plan(suite: Suite, profile: str, seeds: int | None = None, device: str = "cpu") -> list[RunSpec]:
    """Resolve a suite at a profile into runs. Validates method names and settings up front, so a
    bad suite fails before anything is started or logged."""
    from .methods import find_method_file, get_method, load_method_file
    from .tasks import get_task

    where = Path(suite.path or suite.name)
    if profile not in PROFILES:
        raise SuiteError(f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}")
    task = get_task(suite.task, where)
    prof = suite.profiles[profile]
    n_seeds = seeds or prof.seeds
    specs = []
    for e_index, entry in enumerate(suite.entries):
        if entry.profiles is not None and profile not in entry.profiles:
            continue
        for (model, method_name), point in itertools.product(entry.grid(), entry.sweep_points()):
            try:
                method_file = None
                if method_name.endswith(".py"):   # a relative path: from the suite's folder, else the cwd
                    path = find_method_file(method_name, Path(suite.path).parent if suite.path else None)
                    method, digest = load_method_file(path)
                    method_file = MethodFile(path=str(path), sha256=digest)
                else:
                    method = get_method(method_name)
                train = TrainSettings.model_validate({**suite.train, **prof.train, **entry.train})
                # A file's settings may be given under its path as written or its registered name.
                args = {**entry.args.get(method.name, {}), **entry.args.get(method_name, {}),
                        **prof.method_args.get(method.name, {}), **prof.method_args.get(method_name, {}), **point}
                settings = method.Settings.model_validate(args).model_dump()
                task_args = task.Settings.model_validate({**suite.task_args, **prof.task_args,
                                                          **entry.task_args}).model_dump()
            except ValidationError as err:
                msg = _format_validation(where, err).split(": ", 1)[1]
                raise SuiteError(f"{where}: entries[{e_index}] ({model}, {method_name}): {msg}") from None
            except DnibenchError as err:
                raise SuiteError(f"{where}: entries[{e_index}]: {err}") from None
            if method.family != task.family:
                raise SuiteError(f"{where}: entries[{e_index}]: method {method_name!r} is for {method.family!r} "
                                 f"tasks, task {task.name!r} is {task.family!r}")
            try:
                task.check_model(model)
                task.check_args(model, task_args)        # a task setting this model cannot use
            except DnibenchError as err:
                raise SuiteError(f"{where}: entries[{e_index}]: {err}") from None
            for seed in range(n_seeds):
                specs.append(RunSpec(suite=suite.name, profile=profile, task=suite.task, model=model,
                                     method=method.name, method_args=settings, task_args=task_args, train=train,
                                     seed=seed, device=device, method_file=method_file))
    hashes = [s.config_hash for s in specs]
    if len(set(hashes)) != len(hashes):
        raise SuiteError(f"{where}: the same run appears twice at profile {profile!r} (duplicate entries)")
    return specs


def skipped_entries(suite: Suite, profile: str) -> list[dict[str, str]]:
    """Entries a profile leaves out, with the suite's reason, for the report."""
    out = []
    for entry in suite.entries:
        if entry.profiles is not None and profile not in entry.profiles:
            for model, method in entry.grid():
                out.append({"model": model, "method": method, "reason": entry.skip_reason or "not in this profile"})
    return out
