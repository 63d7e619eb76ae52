"""Real `dnibench run` processes for the fault and --jobs tests: start one on a suite, wait for a
condition on the store while it runs, collect its exit status and output."""
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def start_run(suite: Path, db: Path, data_dir: Path, seeds: int, *extra: str, session: bool = False) -> subprocess.Popen:
    """`dnibench run SUITE --profile smoke` on CPU with one thread, in the suite's folder, with no
    tracking URI, torchrun rank or job count inherited from the environment; ``session``: in a process group of
    its own (for a signal to the group, as a terminal's Ctrl-C sends)."""
    env = run_env(PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "dnibench.cli", "run", str(suite), "--profile", "smoke",
                             "--seeds", str(seeds), "--device", "cpu", "--tracking-uri", f"sqlite:///{db}",
                             "--data-dir", str(data_dir), "--no-progress", *extra],
                            cwd=suite.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=session)


def run_env(**extra: str) -> dict[str, str]:
    """This process's environment for a `dnibench` child: one thread, and no tracking URI, torchrun rank, job count
    or outer make's flags inherited; then ``extra``."""
    drop = ("MLFLOW_TRACKING_URI", "WORLD_SIZE", "RANK", "DNIBENCH_JOBS", "MAKEFLAGS", "MAKELEVEL")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "OMP_NUM_THREADS": "1", **extra}


def finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120):
    """Poll ``condition()`` until it is truthy (and return it), failing if the process ends first."""
    deadline = time.time() + timeout
    while not (found := condition()):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline, "timed out waiting"
        time.sleep(0.02)
    return found


def alive(processes) -> list:
    """Those of ``processes`` (psutil.Process) still running and not zombies; one that exits while asked is gone."""
    import psutil
    out = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                out.append(process)
        except psutil.NoSuchProcess:
            pass
    return out
