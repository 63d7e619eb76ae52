"""Decoupling for real (issue 10): a feed-forward run's stages in K worker processes.

- ``launch.py``: the parent side (``train_parallel``, called by train_ff for a RunSpec with ``parallel``):
  starts the workers, relays their rows to the run's log, ends the run FAILED when one dies.
- ``worker.py``: one worker: its group of stages and the schedule (locked or pipelined bprop, decoupled
  DNI / cDNI / complete unlock), time by cause, target staleness, evaluation through the workers.
- ``pipelined.py``: pipelined bprop through torch.distributed.pipelining.
The suite setting is ``parallel:`` (dnibench/suite.py: ParallelSettings, ParallelBlock).
"""
from __future__ import annotations


def train_parallel(spec, data, log, on_step=lambda n: None) -> dict:
    from .launch import train_parallel as run
    return run(spec, data, log, on_step)
