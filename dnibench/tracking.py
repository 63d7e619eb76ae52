"""What every run records about where it ran, and a sampler of CPU/GPU utilisation.

The sampler runs in a background thread so the training step never waits for it; NVML
(nvidia-ml-py) is only touched when the run is on CUDA.
"""
from __future__ import annotations

import json
import platform
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
    sha, dirty = git_state()
    return {"git_commit": sha, "git_dirty": str(dirty).lower(), "torch_version": torch.__version__,
            "cpu_model": cpu_model(), "gpu_model": gpu_model(device)}


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))


class ResourceSampler:
    """Samples system CPU utilisation (percent of all cores) and, on CUDA, GPU utilisation and
    memory through NVML, every `interval` seconds, until stopped."""

    def __init__(self, device: torch.device, interval: float = 0.25):
        self.interval = interval
        self.samples: dict[str, list[float]] = {"cpu_util_pct": []}
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
        if self._handle is not None:
            import pynvml
            self.samples["gpu_util_pct"].append(float(pynvml.nvmlDeviceGetUtilizationRates(self._handle).gpu))
            self.samples["gpu_mem_mb"].append(pynvml.nvmlDeviceGetMemoryInfo(self._handle).used / 2**20)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self):
        psutil.cpu_percent(interval=None)        # starts psutil's measurement window
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
