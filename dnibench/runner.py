"""The runner: a plan of runs -> MLflow. One parent run per invocation, one child run per
(suite entry, seed). A child already FINISHED with the same config hash is skipped, so an
interrupted invocation resumes where it stopped; a run that fails or is interrupted is marked
FAILED/KILLED, never left RUNNING.

A run is trained once per computation, not once per suite: a spec whose identity (its config hash
without the suite name) a FINISHED run of any suite already computed gets an alias in its own suite
(a FINISHED child with its own tags, the original's params and final metrics, ``shared_from`` = the
original's run id, no histories). Within one invocation a spec whose identity an earlier suite trains
waits for it: suites run in order, so it is aliased if that run FINISHED, else trained here.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import torch
from mlflow.tracking import MlflowClient
from tqdm import tqdm

from . import interrupt, resume, store
from .data import data_tags, describe
from .errors import DataNotProvided, DnibenchError, RunFailed
from .metric_log import MetricBuffer
from .pool import MAX_JOBS, WorkerPool
from .suite import RunSpec, Suite, check_all_profiles, load_suite, plan
from .tasks import get_task
from .tracking import installed_packages, machine_description, run_tags, write_json
from .loop import resolve_device

ROLE = "dnibench.role"
IDENTITY = "identity"                       # RunSpec.identity: the computation, whichever suite planned it
SHARED_FROM = "shared_from"                 # on an alias: the run id of the run that trained it
SHARED_FROM_SUITE = "shared_from_suite"     # ... and that run's suite
DEFAULT_TRACKING_URI = "sqlite:///results/mlflow.db"


def artifact_root(tracking_uri: str) -> str | None:
    """Keep artifacts next to a local sqlite store, not in ./mlruns: results/mlflow.db ->
    results/mlflow-artifacts/, one folder per store (two stores in one folder once shared one
    artifacts/ folder, so deleting one store's deleted the other's). Only new experiments use it:
    MLflow keeps each experiment's artifact location, so older results stay readable where they are."""
    db = store.sqlite_path(tracking_uri)        # without the URI's query string
    return None if db is None else (db.parent.resolve() / f"{db.stem}-artifacts").as_uri()


def experiment_id(client: MlflowClient, name: str, tracking_uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    root = artifact_root(tracking_uri)
    try:
        return client.create_experiment(name, artifact_location=f"{root}/{name}" if root else None)
    except mlflow.exceptions.MlflowException:       # another shard created it first
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def shard_from_env() -> tuple[int, int] | None:
    """(index, count) when launched by torchrun (RANK / WORLD_SIZE), else None."""
    world, rank = os.environ.get("WORLD_SIZE", "1").strip(), os.environ.get("RANK")
    if not world.isdigit() or int(world) < 1:
        raise DnibenchError(f"WORLD_SIZE={world[:20]!r}: expected a positive integer (set by torchrun)")
    if int(world) == 1:
        return None
    if rank is None:
        raise DnibenchError(f"WORLD_SIZE={world} but RANK is not set: launch with torchrun, or use --shard I/N")
    if not rank.strip().isdigit() or not int(rank) < int(world):
        raise DnibenchError(f"RANK={rank[:20]!r}: expected an integer in 0..{int(world) - 1} (WORLD_SIZE={world})")
    return int(rank), int(world)


def finished_runs(client: MlflowClient, experiment_ids: list[str] | None = None) -> list:
    """The FINISHED child runs of these experiments (default: every experiment of the store)."""
    if experiment_ids is None:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
    found, token = [], None
    while experiment_ids:
        page = client.search_runs(experiment_ids, filter_string=f"tags.`{ROLE}` = 'child' and "
                                  "attributes.status = 'FINISHED'", max_results=50_000, page_token=token)
        found += list(page)
        token = page.token
        if not token:
            break
    return found


def originals(runs: list, identity_of_hash: dict[str, str]) -> dict:
    """identity -> the latest of ``runs`` that trained it. An alias is never an original (its
    ``shared_from`` is). A run logged before identities were tagged is known by its config hash
    when a spec of this plan has it."""
    out = {}
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):
        tags = run.data.tags
        identity = tags.get(IDENTITY) or identity_of_hash.get(tags.get("config_hash"))
        if identity and SHARED_FROM not in tags:
            out[identity] = run
    return out


def flatten(prefix: str, value, out: dict) -> dict:
    if isinstance(value, dict):
        for key, sub in value.items():
            flatten(f"{prefix}.{key}" if prefix else key, sub, out)
    else:
        out[prefix] = value
    return out


def prepare_store(tracking_uri: str) -> MlflowClient:
    """Open the store (a missing sqlite store is created under a file lock, atomically: see
    dnibench/store.py; that also serialises torchrun's ranks) and mark the runs of dead owners KILLED.
    Each suite's experiment is made when its runs are about to start (``experiment_id``)."""
    client = store.open_store(tracking_uri, write=True, artifact_root=artifact_root(tracking_uri), checked=True)
    mlflow.set_tracking_uri(tracking_uri)
    for run_id in store.mark_dead_runs_killed(client):
        print(f"dnibench: run {run_id} was left RUNNING by a process that died: marked KILLED", file=sys.stderr)
    return client


def _check_batch_sizes(suite: Suite, specs: list[RunSpec], data) -> None:
    """A batch larger than the training examples a run uses is refused, not silently shrunk (its
    params would say a batch it never trained with)."""
    n_train = len(getattr(data, "y_train", ()))
    if not n_train:                 # sequence tasks: a batch is that many streams, not examples
        return
    for spec in specs:
        usable = min(n_train, spec.train.train_subset or n_train)
        if spec.train.batch_size > usable:
            raise DnibenchError(f"{suite.path or suite.name}: {spec.model}/{spec.method}: batch_size "
                                f"{spec.train.batch_size} is larger than the {usable} training examples")


@dataclass
class Outcome:
    ran: int = 0
    skipped: int = 0
    shared: int = 0                 # aliases of a run another suite trained (not trained again)
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)   # (run label, reason), e.g. diverged runs


def run_suites(paths: list[str], profile: str, device: str = "auto", seeds: int | None = None,
               tracking_uri: str = DEFAULT_TRACKING_URI, force: bool = False, data_dir: Path | None = None,
               cifar_dir: Path | None = None, progress: bool = True,
               shard: tuple[int, int] | None = None, jobs: int = 1) -> Outcome:
    """Run the suites' plans. ``shard=(i, n)`` (or torchrun's RANK/WORLD_SIZE) keeps every n-th run
    starting at i, so n processes or machines sharing one tracking store split a suite without overlap.
    ``jobs``: child runs at once, each in a worker process (dnibench/pool.py); the parent runs stay here."""
    if not 1 <= jobs <= MAX_JOBS:
        raise DnibenchError(f"--jobs {jobs}: expected 1..{MAX_JOBS}")
    # Everything that can be wrong with the input is checked before a single run is created.
    given = (device, shard)         # as asked, before torchrun's environment: the plan's key (resume.py)
    shard = shard or shard_from_env()
    if device == "auto" and "LOCAL_RANK" in os.environ and torch.cuda.is_available():
        device = f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"   # one GPU per process
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DnibenchError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    suites: list[Suite] = [load_suite(p) for p in paths]
    store.check_uri(tracking_uri, write=True)
    plans = [(suite, plan(suite, profile, seeds, dev.type)) for suite in suites]
    for suite in suites:            # a bad value that only another profile uses fails now, not later
        check_all_profiles(suite, seeds)
    if shard is not None:
        index, count = shard
        if not 0 <= index < count:
            raise DnibenchError(f"--shard {index}/{count}: the index must be in 0..{count - 1}")
        counter = iter(range(sum(len(specs) for _, specs in plans)))
        plans = [(suite, [s for s in specs if next(counter) % count == index]) for suite, specs in plans]
    # A store that exists is asked first which runs are FINISHED, so a resume with nothing left loads no
    # data; a store not yet created is created only once the data has loaded and been checked.
    path = store.sqlite_path(tracking_uri)
    client = prepare_store(tracking_uri) if path is None or path.exists() else None
    outcome = Outcome()
    # The store's FINISHED runs, once: what each suite has done, and what any suite computed (--force
    # trains everything again, so it looks at neither).
    stored = [] if force or client is None else finished_runs(client)
    identity_of_hash = {s.config_hash: s.identity for _, specs in plans for s in specs}
    shareable = originals(stored, identity_of_hash)
    left = []                       # (suite, runs not yet FINISHED): only their data is loaded
    for suite, specs in plans:
        exp = None if force or client is None else client.get_experiment_by_name(suite.name)
        done = {r.data.tags.get("config_hash") for r in stored if exp is not None
                and r.info.experiment_id == exp.experiment_id}
        left.append((suite, [s for s in specs if s.config_hash not in done]))
        outcome.skipped += len(specs) - len(left[-1][1])
    datasets, not_provided = {}, {}
    for suite, todo in left:
        try:                        # a suite whose every run is an alias needs no data
            if any(s.identity not in shareable for s in todo) and suite.task not in datasets:
                datasets[suite.task] = get_task(suite.task).load(data_dir, cifar_dir)
                line = describe(suite.task, datasets[suite.task])
                if line:
                    print(f"dnibench: {line}", flush=True)
        except DataNotProvided as err:      # e.g. CIFAR-10 without --cifar-dir: skip, the report says so
            print(f"dnibench: skipping suite {suite.name}: data not provided ({err})", file=sys.stderr)
            not_provided[suite.name] = str(err)
    left = [(suite, todo) for suite, todo in left if todo and suite.name not in not_provided]
    for suite, todo in left:        # all checked before a single run is created
        if suite.task in datasets:
            _check_batch_sizes(suite, todo, datasets[suite.task])
    client = client or prepare_store(tracking_uri)
    if path is not None:            # a later invocation with nothing left answers from it without torch
        resume.remember(tracking_uri, resume.plan_key(suites, profile, seeds, *given, data_dir, cifar_dir),
                        [(s.name, [x.config_hash for x in specs], not_provided.get(s.name)) for s, specs in plans])
    todos = [(suite, experiment_id(client, suite.name, tracking_uri), todo) for suite, todo in left]
    bar = tqdm(total=outcome.skipped + sum(len(todo) for _, _, todo in todos), initial=outcome.skipped,
               desc="runs", unit="run", position=0, disable=not progress, file=sys.stderr)
    workers = min(jobs, sum(force or s.identity not in shareable for _, _, todo in todos for s in todo))
    pool = WorkerPool(workers, tracking_uri, str(dev), data_dir, cifar_dir, client) if workers > 1 else None

    def record(spec: RunSpec, failure: str | None, shared: bool = False) -> None:
        if shared:
            outcome.shared += 1
        elif failure is None:
            outcome.ran += 1
        else:                                   # a diverged run: recorded FAILED, the suite goes on
            outcome.failed += 1
            outcome.failures.append((spec.label, failure))
            tqdm.write(f"dnibench: {spec.label} FAILED: {failure}", file=sys.stderr)
        bar.update(1)

    trained = set()                 # identities that earlier suites of this invocation tried to train
    try:
        for suite, exp_id, todo in todos:
            if todo:
                if not force and any(s.identity in trained for s in todo):
                    # An earlier suite trained it, and its runs have all ended (each suite's runs end
                    # before the next suite starts): alias it if it FINISHED, else train it here.
                    shareable.update(originals(finished_runs(client), identity_of_hash))
                shared = {} if force else {s.config_hash: shareable[s.identity] for s in todo
                                           if s.identity in shareable}
                trained |= {s.identity for s in todo if s.config_hash not in shared}
                # A suite with parallel runs runs here, one run at a time: each starts its own worker
                # processes (a pool worker is a daemon and may not) and wants the cores for them.
                here = any(s.parallel is not None for s in todo)
                _run_suite(client, suite, exp_id, todo, profile, dev, datasets.get(suite.task),
                           None if here else pool, record, bar, progress, shared)
    finally:
        if pool is not None:
            pool.close()
    bar.close()
    return outcome


def _run_suite(client: MlflowClient, suite: Suite, exp_id: str, todo: list[RunSpec], profile: str, dev, data,
               pool, record, bar, progress: bool, shared: dict | None = None) -> None:
    """One suite's parent run and its children: here one after another, or on ``pool``'s workers.
    ``shared``: config hash -> the FINISHED run of another suite that computed it (an alias is logged)."""
    shared = shared or {}
    parent = client.create_run(exp_id, run_name=f"{suite.name}-{profile}-{time.strftime('%Y%m%d-%H%M%S')}",
                               tags={ROLE: "parent", "suite": suite.name, "profile": profile,
                                     "device": dev.type, **run_tags(dev), **store.owner_tags()})
    status = "FAILED"
    try:
        _log_parent_artifacts(client, parent.info.run_id, suite, dev)
        for path in sorted({s.method_file.path for s in todo if s.method_file}):   # the variant code that ran
            client.log_artifact(parent.info.run_id, path, artifact_path="method_files")
        for spec in todo:
            if spec.config_hash in shared:
                interrupt.check()
                _alias_child(client, exp_id, parent.info.run_id, spec, shared[spec.config_hash], dev)
                record(spec, None, shared=True)
        todo = [s for s in todo if s.config_hash not in shared]
        if pool is not None and todo:
            bar.set_postfix_str(suite.name)
            pool.run(exp_id, parent.info.run_id, todo, record)
        for spec in todo if pool is None else ():
            interrupt.check()
            bar.set_postfix_str(spec.label)
            record(spec, _run_child(client, exp_id, parent.info.run_id, spec, data, dev, progress))
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        client.set_tag(parent.info.run_id, FAILURE_TAG, interrupt.reason())
        raise
    finally:
        if pool is not None and status != "FINISHED":   # the workers' runs end before the parent's
            pool.close()
        client.set_terminated(parent.info.run_id, status)


def _log_parent_artifacts(client: MlflowClient, run_id: str, suite: Suite, device) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "packages.txt").write_text(installed_packages())
        write_json(tmp / "machine.json", machine_description(device))
        write_json(tmp / "suite.json", suite.model_dump())
        for name in ("packages.txt", "machine.json", "suite.json"):
            client.log_artifact(run_id, str(tmp / name), artifact_path="environment")


FAILURE_TAG = store.FAILURE_TAG             # why a child run is FAILED, e.g. "diverged at step 12"


def _run_child(client: MlflowClient, exp_id: str, parent_id: str, spec: RunSpec, data, device,
               progress: bool) -> str | None:
    """One child run. Returns None when it FINISHED, or the reason it FAILED when it diverged (the
    suite goes on). Any other error is tagged on the run and raised: a bug stops the suite."""
    tags = {**_child_tags(spec, parent_id, device), **data_tags(data), **run_tags(device), **store.owner_tags()}
    run = client.create_run(exp_id, run_name=spec.label, tags=tags)
    run_id = run.info.run_id
    status = "FAILED"
    log = None
    try:
        _log_params(client, run_id, _spec_params(spec))

        log = MetricBuffer(client, run_id)          # written at evaluation points, every ~10 s and at the end
        bar = tqdm(total=spec.train.steps, desc=spec.label, unit="step", position=1, leave=False,
                   disable=not progress, file=sys.stderr, mininterval=0.5)
        def on_step(n: int) -> None:
            bar.update(1)
            interrupt.check()               # a SIGTERM/SIGINT stops the run here, between steps

        get_task(spec.task).train(spec, data, log, on_step=on_step)
        bar.close()
        status = "FINISHED"
    except RunFailed as err:              # diverged, or a parallel run's worker died
        bar.close()
        client.set_tag(run_id, FAILURE_TAG, err.reason)
        return err.reason
    except KeyboardInterrupt:
        status = "KILLED"
        client.set_tag(run_id, FAILURE_TAG, interrupt.reason())
        raise
    except Exception as err:
        first_line = (str(err).splitlines() or [""])[0]
        client.set_tag(run_id, FAILURE_TAG, f"error: {type(err).__name__}: {first_line}"[:500])
        raise
    finally:
        try:
            if log is not None:
                log.close()                 # a FAILED or KILLED run keeps the rows it logged
        finally:
            client.set_terminated(run_id, status)
    return None


def _child_tags(spec: RunSpec, parent_id: str, device) -> dict[str, str]:
    """The tags that place a child run: its suite, configuration and identity."""
    return {ROLE: "child", "mlflow.parentRunId": parent_id, "suite": spec.suite, "profile": spec.profile,
            "task": spec.task, "model": spec.model, "method": spec.method, "seed": str(spec.seed),
            "device": device.type, "config_hash": spec.config_hash, IDENTITY: spec.identity}


def _spec_params(spec: RunSpec) -> dict[str, str]:
    params = flatten("", spec.resolved(), {})
    if spec.parallel is not None:               # also under the short names: workers, schedule, ...
        params.update(spec.parallel.params())
    return {k: str(v) for k, v in params.items()}


def _log_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    items = list(params.items())
    for start in range(0, len(items), 100):     # MLflow accepts at most 100 params per batch
        client.log_batch(run_id, params=[mlflow.entities.Param(k, v) for k, v in items[start:start + 100]])


def _alias_child(client: MlflowClient, exp_id: str, parent_id: str, spec: RunSpec, original, device) -> str:
    """A FINISHED child run of ``spec``'s suite for what ``original`` (another suite's run with the same
    identity) computed: its params (this suite's own for the spec's settings) and its final metric
    values, at their steps; no histories (the report follows ``shared_from`` for curves). Tags: how
    the original ran (git commit, machine, optimizer), then this suite's own. Returns the run id."""
    how = {k: v for k, v in original.data.tags.items()
           if not k.startswith(("mlflow.", "dnibench.owner.")) and k != FAILURE_TAG}
    tags = {**how, **_child_tags(spec, parent_id, device), **store.owner_tags(),
            SHARED_FROM: original.info.run_id, SHARED_FROM_SUITE: original.data.tags.get("suite", "")}
    run_id = client.create_run(exp_id, run_name=spec.label, tags=tags).info.run_id
    status = "FAILED"
    try:
        _log_params(client, run_id, {**original.data.params, **_spec_params(spec)})
        now = int(time.time() * 1000)
        metrics = [mlflow.entities.Metric(m.key, m.value, now, m.step) for m in original.data.to_proto().metrics]
        for start in range(0, len(metrics), 1000):  # MLflow accepts at most 1000 metrics per batch
            client.log_batch(run_id, metrics=metrics[start:start + 1000])
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        client.set_terminated(run_id, status)
    return run_id
