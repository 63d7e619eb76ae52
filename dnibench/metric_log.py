"""Metric rows -> one MLflow run, in batches. A synchronous ``log_batch`` per log point cost ~16 ms on a
sqlite store (101 of them per quick run); the rows are kept here, each with the wall-clock time and
step of its ``log`` call, and written in few calls: at an evaluation point, when ``flush_every_s`` has
passed since the last write, and on ``close`` (the runner calls it in a ``finally``, so a FAILED or
KILLED run keeps every row it logged). A process killed outright (SIGKILL, power loss) loses at most
the rows since the last write: ``flush_every_s`` seconds, or back to the last evaluation point.
"""
from __future__ import annotations

import time

from mlflow.entities import Metric

MAX_METRICS_PER_CALL = 1000            # MLflow's limit for one log_batch
# A row holding one of these is an evaluation point (train.py: test_error; rnn/train.py: valid_bpc):
# the result a reader waits for is written at once.
EVAL_KEYS = frozenset({"test_error", "valid_bpc"})


class MetricBuffer:
    """``log(metrics, step)`` for the training loops, writing to ``run_id`` through ``client`` in batches."""

    def __init__(self, client, run_id: str, flush_every_s: float = 10.0, eval_keys=EVAL_KEYS):
        self.client, self.run_id = client, run_id
        self.flush_every_s, self.eval_keys = flush_every_s, frozenset(eval_keys)
        self.pending: list[Metric] = []
        self.calls = 0                                  # log_batch calls made, for the tests and the bench
        self._last_flush = time.monotonic()

    def log(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)                   # the row's own time, as when each row was written at once
        self.pending.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        if (not self.eval_keys.isdisjoint(metrics) or len(self.pending) >= MAX_METRICS_PER_CALL
                or time.monotonic() - self._last_flush >= self.flush_every_s):
            self.flush()

    __call__ = log

    def flush(self) -> None:
        while self.pending:
            chunk = self.pending[:MAX_METRICS_PER_CALL]
            self.client.log_batch(self.run_id, metrics=chunk)
            self.calls += 1
            del self.pending[:len(chunk)]               # dropped only once written: a failed write can be retried
        self._last_flush = time.monotonic()

    close = flush
