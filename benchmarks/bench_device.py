"""The device the benchmarks run on: DNIBENCH_BENCH_DEVICE=cuda (or cuda:N) for a GPU, default cpu, so
`make bench` gives the CPU figures the README quotes on any machine and a GPU is measured only when asked.
On CUDA every timed call is bracketed by synchronize(): a step is finished when the device is."""
import os

import pytest
import torch

NAME = os.environ.get("DNIBENCH_BENCH_DEVICE", "cpu").strip() or "cpu"
DEVICE = torch.device(NAME)
if DEVICE.type == "cuda" and not torch.cuda.is_available():
    raise pytest.UsageError(f"DNIBENCH_BENCH_DEVICE={NAME}: torch sees no CUDA device here")
if DEVICE.type not in ("cpu", "cuda"):
    raise pytest.UsageError(f"DNIBENCH_BENCH_DEVICE={NAME}: expected cpu, cuda or cuda:N")


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)
