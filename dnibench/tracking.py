"""What every run records about where it ran, and a sampler of CPU/GPU utilisation.

The sampler runs in a background thread so the training step never waits for it; NVML
(nvidia-ml-py) is only touched when the run is on CUDA.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import threading
import time
from importlib import metadata
from pathlib import Path

import psutil
import torch


def git_state(root: Path | None = None) -> tuple[str, bool]:
    """(commit sha, dirty). Run outputs under results/ and reports/ do not make the tree dirty."""
    root = root or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--", ".", ":!results", ":!reports"],
                                cwd=root, capture_output=True, text=True, check=True).stdout
        return sha, bool(status.strip())
    except (OSError, subprocess.CalledProcessError):
        return "unknown", True


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_model(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "none"


def machine_description(device: torch.device) -> dict:
    sha, dirty = git_state()
    desc = {
        "hostname": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
        "cpu_model": cpu_model(), "cpu_count": psutil.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(), "gpu_model": gpu_model(device),
        "git_commit": sha, "git_dirty": dirty,
    }
    if device.type == "cuda":
        desc["cuda"] = torch.version.cuda
        desc["cudnn"] = torch.backends.cudnn.version()
        try:
            import pynvml
            pynvml.nvmlInit()
            desc["nvidia_driver"] = pynvml.nvmlSystemGetDriverVersion()
        except Exception:  # NVML missing on the host: the description says so instead of failing
            desc["nvidia_driver"] = "unavailable"
    return desc


def installed_packages() -> str:
    rows = sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata["Name"])
    return "\n".join(rows) + "\n"


def run_tags(device: torch.device) -> dict[str, str]:
    from .methods.base import adam_impl     # lazy: methods/ loads every method file
    sha, dirty = git_state()
    return {"git_commit": sha, "git_dirty": str(dirty).lower(), "torch_version": torch.__version__,
            "cpu_model": cpu_model(), "gpu_model": gpu_model(device), "optimizer_impl": f"adam-{adam_impl(device)}"}


_SELF = psutil.Process()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                   # not Linux
        return psutil.cpu_count() or 1


def _running(proc: Path) -> tuple[int, int] | None:
    """(tasks runnable on the machine now, this process's own) from /proc: ``procs_running`` of /proc/stat, and the
    threads of /proc/self/task in state R (the reader among them). None where /proc does not say."""
    try:
        machine = next(int(line.split()[1]) for line in (proc / "stat").read_text().splitlines()
                       if line.startswith("procs_running"))
        own = 0
        for task in sorted((proc / "self" / "task").iterdir()):
            try:
                stat = (task / "stat").read_text()
            except OSError:                  # the thread ended between the listing and the read
                continue
            own += stat[stat.rindex(")") + 2] == "R"    # the state follows the command name's closing parenthesis
        return machine, own
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def busy_cores(samples: int = 5, gap_s: float = 0.01, proc: Path = Path("/proc")) -> float | None:
    """Cores other processes keep busy now: the median over ``samples`` readings ``gap_s`` apart of the tasks
    runnable on the machine less this process's own (``_running``). None where /proc does not say (not Linux).

    Not the load average: it is a 1-minute decaying mean, so right after a busy minute (an install, the previous
    run) it still counts cores that are free, and a neighbour that started seconds ago only in part. The first run
    of a fresh-clone ``make reproduce`` took 1 thread of 2 free ones (load 1.2 left by pip), 2026-11-30."""
    counts = []
    for i in range(samples):
        reading = _running(proc)
        if reading is None:
            return None
        counts.append(max(0, reading[0] - reading[1]))
        if i + 1 < samples:
            time.sleep(gap_s)
    return float(statistics.median(counts))


def run_threads(jobs: int = 1, cores: int | None = None, busy: float | None = None) -> int:
    """Threads for one of ``jobs`` runs at once: the cores nobody else is using, shared between the
    runs, at least 1, and never more threads than cores for all runs together. OpenMP threads
    on a busy core wait for each other: a FCN-4 step with 2 threads went from 1.9 to 20.8 ms next to
    one other 2-thread process, with 1 thread from 3.2 to 4.4 ms (issue 9; `make bench` measures it).
    ``busy``: cores in use by other processes (default: ``busy_cores``, what runs now; where /proc does not say,
    the 1-minute load average less this process's own share since the last call). OMP_NUM_THREADS in the
    environment caps the result."""
    cores = cores or usable_cores()
    cap = os.environ.get("OMP_NUM_THREADS", "")
    if busy is None and cap == "1":
        return 1                                        # nothing to measure: one thread whatever the load
    if busy is None:
        busy = busy_cores()
    if busy is None:
        own = _SELF.cpu_percent(interval=None) / 100    # this process since the last call; 0 the first time
        busy = max(0.0, os.getloadavg()[0] - own) if hasattr(os, "getloadavg") else 0.0
    free = max(1, int(cores - busy + 0.5))
    threads = max(1, min(cores, free) // max(1, jobs))
    if cap.isdigit() and int(cap) > 0:
        threads = min(threads, int(cap))
    return threads


class RunThreads:
    """``with RunThreads(jobs) as threads:`` sets torch's intra-op threads for one run and restores
    the previous count after it. ``jobs`` None: the DNIBENCH_JOBS environment variable (what a
    runner starting several runs at once sets for its workers), else 1."""

    def __init__(self, jobs: int | None = None, threads: int | None = None):
        if jobs is None:
            jobs = int(os.environ["DNIBENCH_JOBS"]) if os.environ.get("DNIBENCH_JOBS", "").isdigit() else 1
        self.threads = threads or run_threads(jobs)

    def __enter__(self) -> int:
        self._before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        return self.threads

    def __exit__(self, *exc):
        torch.set_num_threads(self._before)


DISTURBED = 2.0                              # step-time dispersion above which a run's timing is not its cost


class StepTimes:
    """Step-time dispersion of a run. Per log interval: the interval's time per step (the loop syncs
    there anyway); on CPU also every step's own time (free: no device to wait for). On CUDA a per-step
    clock would need a host sync per step, so only intervals are timed.

    Summary: ``wall_step_p95_over_median`` (per step on CPU, per interval on CUDA),
    ``wall_step_worst_window`` (the slowest interval's time per step / the median interval's) and
    ``wall_step_dispersion`` = the worst window: a run above DISTURBED was slowed by something outside it
    (another process, a throttled CPU) and its throughput is not the method's cost. Per-step p95 is
    not used for the verdict: with p_update < 1 a step's work varies by design. The first interval
    (warm-up: allocations, lazy initialisation) is left out when there are others."""

    def __init__(self, device: torch.device):
        self.per_step = device.type != "cuda"
        self.steps: list[float] = []
        self.windows: list[float] = []
        self._first_window_steps = None
        self._last = time.perf_counter()

    def start(self) -> None:
        """The clock (re)starts: after a log point, evaluation is not a step."""
        self._last = time.perf_counter()

    def step(self) -> None:
        if self.per_step:
            now = time.perf_counter()
            self.steps.append(now - self._last)
            self._last = now

    def window(self, elapsed_s: float, steps: int) -> None:
        if steps > 0:
            if not self.windows:
                self._first_window_steps = len(self.steps)
            self.windows.append(elapsed_s / steps)

    def summary(self) -> dict[str, float]:
        windows = self.windows[1:] if len(self.windows) > 1 else self.windows
        steps = self.steps[self._first_window_steps or 0:] if len(self.windows) > 1 else self.steps
        per_step = steps if self.per_step and steps else windows
        if not per_step:
            return {}
        median = statistics.median(per_step)
        ordered = sorted(per_step)
        p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        worst = max(windows) / statistics.median(windows) if windows else 1.0
        return {"wall_step_median_ms": 1000 * median, "wall_step_p95_over_median": p95 / max(median, 1e-12),
                "wall_step_worst_window": worst, "wall_step_dispersion": worst}


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))


class ResourceSampler:
    """Samples system CPU utilisation (percent of all cores) and, on CUDA, GPU utilisation and
    memory through NVML, every `interval` seconds, until stopped."""

    def __init__(self, device: torch.device, interval: float = 0.25):
        self.interval = interval
        # What else ran: the load average (runnable processes, all of the machine's) and the CPU time
        # the hypervisor gave to other guests (steal; Linux only), next to the utilisation.
        self.samples: dict[str, list[float]] = {"cpu_util_pct": [], "cpu_load_avg_1m": []}
        self._steal = hasattr(psutil.cpu_times_percent(interval=None), "steal")
        if self._steal:
            self.samples["cpu_steal_pct"] = []
        self._handle = None
        if device.type == "cuda":
            try:
                import pynvml
                pynvml.nvmlInit()
                index = device.index if device.index is not None else torch.cuda.current_device()
                self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                self.samples.update(gpu_util_pct=[], gpu_mem_mb=[])
            except Exception:  # no NVML: GPU metrics are absent rather than invented
                self._handle = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        self.samples["cpu_util_pct"].append(psutil.cpu_percent(interval=None))
        if hasattr(os, "getloadavg"):
            self.samples["cpu_load_avg_1m"].append(os.getloadavg()[0])
        if self._steal:
            self.samples["cpu_steal_pct"].append(psutil.cpu_times_percent(interval=None).steal)
        if self._handle is not None:
            import pynvml
            self.samples["gpu_util_pct"].append(float(pynvml.nvmlDeviceGetUtilizationRates(self._handle).gpu))
            self.samples["gpu_mem_mb"].append(pynvml.nvmlDeviceGetMemoryInfo(self._handle).used / 2**20)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self):
        psutil.cpu_percent(interval=None)        # starts psutil's measurement windows
        psutil.cpu_times_percent(interval=None)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()                           # a run shorter than one interval still gets one reading

    def mark(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.samples.items()}

    def since(self, mark: dict[str, int]) -> dict[str, float]:
        """Mean of each series since `mark` (an interval's utilisation)."""
        out = {}
        for key, values in self.samples.items():
            window = values[mark.get(key, 0):]
            if window:
                out[key] = sum(window) / len(window)
        return out

    def summary(self) -> dict[str, float]:
        out = {}
        for key, values in self.samples.items():
            if values:
                ordered = sorted(values)
                out[f"{key}_mean"] = sum(values) / len(values)
                out[f"{key}_p95"] = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        return out
