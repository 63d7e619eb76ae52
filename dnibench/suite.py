"""Suite files: YAML validated against a schema, resolved into a plan of runs.

suite file -> Suite (validated) -> plan(profile, seeds, device) -> [RunSpec] (one per run, each with a
stable config hash). Errors name the file, the field and what was expected, in one line.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, field_validator,
                      model_validator)

from .errors import DnibenchError, SuiteError
from .fields import Real

PROFILES = ("smoke", "quick", "paper")

# Sane upper bounds: far above any real use (the paper runs 500k steps of batch 256, 3 seeds), low enough
# that a typo (an extra digit, 1e9) is refused up front instead of hanging while memory grows.
MAX_SEEDS = 1000
MAX_STEPS = 10_000_000
MAX_BATCH = 65_536
MAX_EXAMPLES = 100_000_000
MAX_RUNS = 100_000                 # runs in one suite's plan at one profile
MAX_SUITE_BYTES = 1_000_000        # a suite is a few KB of YAML
MAX_YAML_NODES = 100_000           # after expanding aliases (a 1 KB alias bomb expands to billions)


class Strict(BaseModel):
    # Unknown fields and non-finite numbers (YAML .inf / .nan) are errors: an lr of .inf is not a setting.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TrainSettings(Strict):
    """The training schedule. Paper defaults: Adam, batch 256, lr 3e-5 x0.1 at 300k and 400k, 500k steps."""
    # StrictInt: `steps: true` is not 1 step, and `steps: 5.5` is not 5.
    steps: StrictInt = Field(500_000, ge=1, le=MAX_STEPS)
    batch_size: StrictInt = Field(256, ge=1, le=MAX_BATCH)  # also at most the training set (runner)
    lr: Real = Field(3e-5, gt=0)
    lr_decay_at: list[StrictInt] = Field(default_factory=lambda: [300_000, 400_000], max_length=100)
    lr_decay_factor: Real = Field(0.1, gt=0, le=1)
    eval_every: StrictInt = Field(5_000, ge=1, le=MAX_STEPS)
    log_every: StrictInt = Field(100, ge=1, le=MAX_STEPS)
    train_subset: StrictInt | None = Field(None, ge=1, le=MAX_EXAMPLES)  # first N training examples only (smoke runs)
    test_subset: StrictInt | None = Field(None, ge=1, le=MAX_EXAMPLES)   # first N test examples only (smoke runs)
    cnn_filters: StrictInt = Field(64, ge=1, le=4096)

    @model_validator(mode="after")
    def _batch_within_subset(self):
        if self.train_subset is not None and self.batch_size > self.train_subset:
            raise ValueError(f"batch_size {self.batch_size} is larger than train_subset {self.train_subset}")
        return self

    @model_validator(mode="after")
    def _decay_points_within_the_run(self):
        """A decay point given (at any level of the suite) past the last step would never apply: e.g. a
        profile that shortens ``steps`` and keeps the paper's decay points. The paper's defaults, when no
        level names ``lr_decay_at``, are left alone: they describe the paper's schedule, not this run."""
        if "lr_decay_at" in self.model_fields_set:
            for point in self.lr_decay_at:
                if point > self.steps:
                    raise ValueError(f"lr_decay_at {point} is after the run's last step ({self.steps}): the decay "
                                     "would never apply (set lr_decay_at for this profile, or [] for none)")
                if point < 1:
                    raise ValueError(f"lr_decay_at {point}: steps count from 1 (a decay from the first step is a "
                                     "smaller lr: set lr instead)")
        return self


MAX_WORKERS = 64
MAX_MICROBATCHES = 4096
MAX_THREADS = 256
SCHEDULES = ("locked", "pipelined", "decoupled")
PipelineSchedule = Literal["gpipe", "1f1b"]     # torch.distributed.pipelining's schedules a suite can name
DEFAULT_MAX_IN_FLIGHT = 4


class ParallelSettings(Strict):
    """How one run's stages are spread over worker processes (dnibench/parallel/). Resolved per run by
    ``plan`` (schedule and max_in_flight filled in from the method), so it is complete in the hash."""
    workers: StrictInt = Field(ge=1, le=MAX_WORKERS)    # K processes, each a contiguous group of stages
    # bprop: locked (naive model parallelism) or pipelined (micro-batches); DNI family: decoupled
    schedule: Literal["locked", "pipelined", "decoupled"]
    microbatches: StrictInt | None = Field(None, ge=1, le=MAX_MICROBATCHES)   # pipelined only: M
    lockstep: StrictBool = False        # decoupled only: wait for every target (equals one process)
    # Decoupled only, flow control: a worker trains batch t only while at most max_in_flight - 1 of its
    # earlier batches still wait for their target from above (with complete unlock: also for their
    # real input from below); a wait on it counts as waiting for a gradient (input). lockstep = 1.
    max_in_flight: StrictInt | None = Field(None, ge=1, le=10_000)
    # pipelined only: torch.distributed.pipelining's schedule (GPipe: all forwards, then all backwards;
    # 1F1B: one forward, one backward in the steady state; the same gradient)
    pipeline_schedule: PipelineSchedule | None = None
    threads: StrictInt = Field(1, ge=1, le=MAX_THREADS)   # torch intra-op threads per worker

    def params(self) -> dict[str, str]:
        """The run parameters a parallel run logs under their short names."""
        return {"workers": str(self.workers), "schedule": self.schedule,
                "microbatches": str(self.microbatches or ""), "lockstep": str(self.lockstep).lower(),
                "max_in_flight": str(self.max_in_flight or ""), "pipeline_schedule": self.pipeline_schedule or "",
                "threads": str(self.threads)}


class ParallelBlock(Strict):
    """``parallel:`` in a suite entry (or a profile, whose fields replace the entry's): lists of
    ``workers`` and ``microbatches`` expand to one run each, like a sweep."""
    workers: StrictInt | Annotated[list[StrictInt], Field(min_length=1, max_length=64)]
    schedule: Literal["locked", "pipelined", "decoupled"] | None = None   # default: from the method
    microbatches: StrictInt | Annotated[list[StrictInt], Field(min_length=1, max_length=64)] | None = None
    lockstep: StrictBool | None = None
    max_in_flight: StrictInt | None = None
    pipeline_schedule: (PipelineSchedule | Annotated[list[PipelineSchedule], Field(min_length=1, max_length=2)]
                        | None) = None        # pipelined only; default gpipe
    threads: StrictInt | None = None          # per worker; default 1

    def points(self) -> list[dict[str, Any]]:
        workers = self.workers if isinstance(self.workers, list) else [self.workers]
        micro = self.microbatches if isinstance(self.microbatches, list) else [self.microbatches]
        pipes = self.pipeline_schedule if isinstance(self.pipeline_schedule, list) else [self.pipeline_schedule]
        rest = self.model_dump(exclude={"workers", "microbatches", "pipeline_schedule"}, exclude_none=True)
        return [{**rest, "workers": k, **({"microbatches": m} if m is not None else {}),
                 **({"pipeline_schedule": p} if p is not None else {})}
                for k in workers for m in micro for p in pipes]


class Profile(Strict):
    description: str = ""
    departures: list[str] = Field(default_factory=list)   # how this profile departs from the paper
    seeds: StrictInt = Field(1, ge=1, le=MAX_SEEDS)
    train: dict[str, Any] = Field(default_factory=dict)   # overrides of TrainSettings
    method_args: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per method name
    task_args: dict[str, Any] = Field(default_factory=dict)
    # A profile that deliberately runs one seed (e.g. too costly for more) opts in here, with its
    # reason; only then does the report judge a single run as a point instead of "1 seed: inconclusive".
    single_seed: StrictBool = False
    single_seed_reason: str = ""
    # Replaces these fields of every entry's ``parallel`` block at this profile (entries without one stay
    # one process), e.g. {workers: [1, 2, 4]} where there are more cores.
    parallel: dict[str, Any] = Field(default_factory=dict)

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
    uniform: tuple[Real, Real]
    samples: StrictInt = Field(ge=1, le=10_000)
    seed: StrictInt = Field(0, ge=0, le=2**32 - 1)

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
    parallel: ParallelBlock | None = None                 # stages in worker processes (dnibench/parallel/)

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

    def size(self) -> int:
        """Runs per seed, counted without building them (a sweep of several long lists multiplies)."""
        count = len(self.grid())
        for values in self.sweep.values():
            count *= values.samples if isinstance(values, UniformSweep) else len(values)
        return count * (len(self.parallel.points()) if self.parallel else 1)

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
    parallel: ParallelSettings | None = None

    def resolved(self) -> dict[str, Any]:
        data = json.loads(self.model_dump_json())
        if data["method_file"] is None:       # built-in methods keep the hashes they had before files
            del data["method_file"]
        if data["parallel"] is None:          # one-process runs keep the hashes they had before workers
            del data["parallel"]
        else:                                 # and parallel runs at the defaults of later fields theirs
            if data["parallel"].get("pipeline_schedule") in (None, "gpipe"):
                data["parallel"].pop("pipeline_schedule", None)
            if data["parallel"].get("threads") == 1:
                data["parallel"].pop("threads", None)
        return data

    @property
    def config_hash(self) -> str:
        """The run in its suite: what resume looks for in the suite's experiment."""
        return self._digest(self.resolved())

    @property
    def identity(self) -> str:
        """The computation, whichever suite plans it: the config hash without the suite name. Settings
        are complete (``plan`` fills every default), so mnist_ff's bprop with no p_update and
        mnist_async's at p_update 1.0 have one identity; two suites planning it share one training
        run (runner: the later one logs an alias)."""
        data = self.resolved()
        del data["suite"]
        return self._digest(data)

    @staticmethod
    def _digest(data: dict[str, Any]) -> str:
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
        par = self.parallel
        where = "" if par is None else (f"/{par.schedule}-k{par.workers}" + (f"-m{par.microbatches}" if par.microbatches else "")
                                        + (f"-{par.pipeline_schedule}" if par.pipeline_schedule == "1f1b" else "")
                                        + (f"-t{par.threads}" if par.threads > 1 else ""))
        return f"{self.suite}/{self.model}/{self.method}{where}/seed{self.seed}"


def _short(text: str, limit: int) -> str:
    """One line of at most ``limit`` characters: values from a file can be megabytes long."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _format_validation(path: Path, err: ValidationError) -> str:
    first = err.errors()[0]
    where = _short(".".join(str(part) for part in first["loc"]) or "(top level)", 100)
    extra = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    got = first.get("input")
    got_text = f"; got {_short(repr(got), 120)}" if not isinstance(got, dict) and got is not None else ""
    return f"{_short(path, 120)}: field '{where}': {_short(first['msg'], 160)}{got_text}{extra}"


class _SuiteLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (YAML would silently keep the
    last: a second `task:` replaced the first)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:               # an unhashable key: the base class says so
                    break
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {_short(repr(key), 60)} (first at line {first})",
                        key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _expanded_nodes(node, memo: dict, active: set) -> int:
    """How many nodes the document has once every alias is expanded (shared nodes counted each time)."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise yaml.YAMLError("an alias refers to the node that contains it (recursive anchor)")
    active.add(key)
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_nodes(child, memo, active) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_nodes(k, memo, active) + _expanded_nodes(v, memo, active) for k, v in node.value)
    else:
        size = 1
    active.discard(key)
    memo[key] = size = min(size, MAX_YAML_NODES + 1)
    return size


def _read_yaml(path: Path, text: str):
    loader = _SuiteLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_nodes(node, {}, set()) > MAX_YAML_NODES:
            raise SuiteError(f"{path}: more than {MAX_YAML_NODES} YAML nodes once aliases are expanded "
                             "(an alias bomb?); write the suite out without nested aliases")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_suite(path: str | Path) -> Suite:
    path = Path(path)
    if path.is_dir():
        raise SuiteError(f"{path}: is a directory, not a suite file")
    if not path.exists():
        raise SuiteError(f"{path}: suite file does not exist")
    try:
        if path.stat().st_size > MAX_SUITE_BYTES:
            raise SuiteError(f"{path}: {path.stat().st_size} bytes; a suite file is at most {MAX_SUITE_BYTES}")
        text = path.read_bytes().decode("utf-8")
    except PermissionError:
        raise SuiteError(f"{path}: permission denied (cannot read the suite file)") from None
    except UnicodeDecodeError as err:
        raise SuiteError(f"{path}: not a UTF-8 text file (byte {err.start})") from None
    except OSError as err:
        raise SuiteError(f"{path}: cannot read the suite file ({err.strerror or err})") from None
    try:
        raw = _read_yaml(path, text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SuiteError(f"{path}: malformed YAML{where}: {_short(getattr(err, 'problem', None) or err, 200)}") from None
    except RecursionError:
        raise SuiteError(f"{path}: YAML nested too deeply") from None
    if not isinstance(raw, dict):
        raise SuiteError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        suite = Suite.model_validate({**raw, "path": str(path)})
    except ValidationError as err:
        raise SuiteError(_format_validation(path, err)) from None
    # The training schedule needs no method or task code: check it at every profile now (cheap), so a
    # bad `steps` fails at load whichever profile overrides it.
    for profile in PROFILES:
        for e_index, entry in enumerate(suite.entries):
            try:
                TrainSettings.model_validate({**suite.train, **suite.profiles[profile].train, **entry.train})
            except ValidationError as err:
                msg = _format_validation(path, err).split(": ", 1)[1]
                raise SuiteError(f"{_short(path, 120)}: entries[{e_index}] at profile {profile}: {msg}") from None
    return suite


def check_suite_files(paths: list[str | Path]) -> list[Suite]:
    """Load and validate every suite file (YAML and schema only: no torch), the first error raised."""
    return [load_suite(path) for path in paths]


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
    n_runs = sum(e.size() for e in suite.entries if e.profiles is None or profile in e.profiles) * n_seeds
    if n_runs > MAX_RUNS:
        raise SuiteError(f"{where}: {n_runs} runs at profile {profile!r} ({n_seeds} seed(s)); "
                         f"at most {MAX_RUNS} per suite (split the sweep or use fewer seeds)")
    specs = []
    for e_index, entry in enumerate(suite.entries):
        if entry.profiles is not None and profile not in entry.profiles:
            continue
        names = set()                       # the entry's methods as written and as registered (a file's)
        for (model, method_name), point in itertools.product(entry.grid(), entry.sweep_points()):
            try:
                method_file = None
                if method_name.endswith(".py"):   # a relative path: from the suite's folder, else the cwd
                    path = find_method_file(method_name, Path(suite.path).parent if suite.path else None)
                    method, digest = load_method_file(path)
                    method_file = MethodFile(path=str(path), sha256=digest)
                else:
                    method = get_method(method_name)
                names.update((method_name, method.name))
                train = TrainSettings.model_validate({**suite.train, **prof.train, **entry.train})
                unused = [name for name in task.unused_train if name in train.model_fields_set]
                if unused:
                    raise SuiteError(f"train.{unused[0]}: task {task.name!r} does not use it; it would be ignored")
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
            for parallel in _parallel_settings(where, e_index, entry, prof, model, method, method_name, settings,
                                               task_args, train):
                for seed in range(n_seeds):
                    specs.append(RunSpec(suite=suite.name, profile=profile, task=suite.task, model=model,
                                         method=method.name, method_args=settings, task_args=task_args,
                                         train=train, seed=seed, device=device, method_file=method_file,
                                         parallel=parallel))
        _check_args_keys(where, f"entries[{e_index}].args", entry.args, names)
    _check_args_keys(where, f"profiles.{profile}.method_args", prof.method_args, _method_names(suite))
    _check_cnn_filters(where, suite, prof, profile)
    if prof.parallel and all(entry.parallel is None for entry in suite.entries):
        raise SuiteError(f"{where}: profiles.{profile}.parallel: no entry has a parallel block for it to change "
                         "(entries without one run in one process); it would be ignored")
    hashes = [s.config_hash for s in specs]
    if len(set(hashes)) != len(hashes):
        raise SuiteError(f"{where}: the same run appears twice at profile {profile!r} (duplicate entries)")
    return specs


def _check_cnn_filters(where: Path, suite: Suite, prof: Profile, profile: str) -> None:
    """``cnn_filters`` where no model it could reach is a CNN would be ignored: refused for an entry whose
    models are all FCNs, and for the suite or a profile when no entry has a CNN (a suite-wide value may
    serve the suite's CNN entries while its FCN entries ignore it, as parallel.yaml's smoke profile does)."""
    def has_cnn(entries) -> bool:
        return any(model.startswith("cnn") for entry in entries for model, _ in entry.grid())

    for e_index, entry in enumerate(suite.entries):
        if "cnn_filters" in entry.train and not has_cnn([entry]):
            raise SuiteError(f"{where}: entries[{e_index}].train.cnn_filters: no model of this entry is a CNN; "
                             "it would be ignored")
    for field, train in (("train", suite.train), (f"profiles.{profile}.train", prof.train)):
        if "cnn_filters" in train and not has_cnn(suite.entries):
            raise SuiteError(f"{where}: {field}.cnn_filters: no entry has a CNN; it would be ignored")


def _method_names(suite: Suite) -> set[str]:
    """The names every entry's methods take settings under, at any profile: as written, and a method file's
    registered name (a file that cannot be loaded is skipped: its entry reports it where it is planned)."""
    from .methods import find_method_file, load_method_file
    names = set()
    for entry in suite.entries:
        for _, name in entry.grid():
            names.add(name)
            if name.endswith(".py"):
                try:
                    names.add(load_method_file(find_method_file(name, Path(suite.path).parent if suite.path
                                                                else None))[0].name)
                except DnibenchError:
                    pass
    return names


def _check_args_keys(where: Path, field: str, args: dict[str, Any], methods: set[str]) -> None:
    """Settings under a name that is none of the methods they could reach would be ignored: refused."""
    whose = "this entry" if field.startswith("entries") else "any entry"
    for key in args:
        if key not in methods:
            raise SuiteError(f"{where}: {field}: {key!r} is not a method of {whose} ({', '.join(sorted(methods))}); "
                             "its settings would be ignored")


def _parallel_settings(where: Path, e_index: int, entry: Entry, prof: Profile, model: str, method, method_name: str,
                       settings: dict, task_args: dict, train: TrainSettings) -> list[ParallelSettings | None]:
    """The entry's ``parallel`` block at this profile, one ParallelSettings per point ([None]: one process).
    Combinations the executor does not run are refused here, in one line."""
    if entry.parallel is None:
        return [None]
    from .methods.bprop import Backprop
    from .methods.dni import DNI
    from .models import stage_count
    at = f"{where}: entries[{e_index}] ({model}, {method_name}): parallel"
    try:
        block = ParallelBlock.model_validate({**entry.parallel.model_dump(exclude_none=True), **prof.parallel})
    except ValidationError as err:
        raise SuiteError(f"{at}: {_format_validation(where, err).split(': ', 1)[1]}") from None
    if issubclass(method, Backprop):
        default, allowed = "locked", ("locked", "pipelined")
    elif issubclass(method, DNI):
        default, allowed = "decoupled", ("decoupled",)
    else:
        raise SuiteError(f"{at}: method {method_name!r} has no parallel schedule (bprop: locked or pipelined; "
                         "dni, cdni, unlock_dni, unlock_cdni: decoupled)")
    n_stages = stage_count(parse_depth(model), task_args.get("layer_count", "with_output"))
    out = []
    for point in block.points():
        schedule = point.get("schedule") or default
        if schedule not in allowed:
            raise SuiteError(f"{at}: schedule {schedule!r} does not apply to {method_name!r} "
                             f"(expected {' or '.join(allowed)})")
        if point["workers"] > n_stages:
            raise SuiteError(f"{at}: workers {point['workers']} is more than the {n_stages} stages of {model}")
        micro = point.get("microbatches")
        if schedule == "pipelined":
            if micro is None:
                raise SuiteError(f"{at}: schedule pipelined needs microbatches (M)")
            if train.batch_size % micro:
                raise SuiteError(f"{at}: microbatches {micro} does not split the batch of {train.batch_size} evenly")
        elif micro is not None:
            raise SuiteError(f"{at}: microbatches applies to schedule pipelined only (this is {schedule})")
        pipe = point.get("pipeline_schedule")
        if schedule != "pipelined" and pipe is not None:
            raise SuiteError(f"{at}: pipeline_schedule applies to schedule pipelined only (this is {schedule})")
        if schedule == "pipelined":
            pipe = pipe or "gpipe"
            if pipe == "1f1b" and micro < point["workers"]:   # the library's 1F1B keeps a micro-batch per worker in flight
                raise SuiteError(f"{at}: pipeline_schedule 1f1b needs microbatches >= workers ({micro} < {point['workers']})")
        lockstep, in_flight = point.get("lockstep", False), point.get("max_in_flight")
        if schedule != "decoupled" and (lockstep or in_flight is not None):
            raise SuiteError(f"{at}: lockstep and max_in_flight apply to schedule decoupled only (this is {schedule})")
        if schedule == "decoupled":
            if lockstep and in_flight not in (None, 1):
                raise SuiteError(f"{at}: lockstep waits for every target (max_in_flight 1); got max_in_flight {in_flight}")
            in_flight = 1 if lockstep else (in_flight or DEFAULT_MAX_IN_FLIGHT)
        if settings.get("p_update", 1.0) < 1.0 or settings.get("delay", 0):
            raise SuiteError(f"{at}: p_update < 1 and delay are not run by the parallel executor")
        try:
            out.append(ParallelSettings(workers=point["workers"], schedule=schedule, microbatches=micro,
                                        lockstep=lockstep, max_in_flight=in_flight, pipeline_schedule=pipe,
                                        threads=point.get("threads", 1)))
        except ValidationError as err:
            raise SuiteError(f"{at}: {_format_validation(where, err).split(': ', 1)[1]}") from None
    return out


def parse_depth(model: str) -> int:
    from .models import parse_model_name
    return parse_model_name(model)[1]


def check_all_profiles(suite: Suite, seeds: int | None = None) -> None:
    """Plan the suite at every profile: an invalid value in an entry that one profile overrides fails
    now, whichever profile is run, not hours later when someone runs that profile."""
    for profile in PROFILES:
        try:
            plan(suite, profile, seeds)
        except SuiteError as err:
            raise SuiteError(f"{err} (at profile {profile})") from None


def skipped_entries(suite: Suite, profile: str) -> list[dict[str, str]]:
    """Entries a profile leaves out, with the suite's reason, for the report."""
    out = []
    for entry in suite.entries:
        if entry.profiles is not None and profile not in entry.profiles:
            for model, method in entry.grid():
                out.append({"model": model, "method": method, "reason": entry.skip_reason or "not in this profile"})
    return out
