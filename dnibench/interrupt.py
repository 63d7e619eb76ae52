"""SIGTERM and SIGINT during `dnibench run`: the handler only records the signal; the runner stops at
the next safe point (between training steps, between runs) by raising KeyboardInterrupt there.

Raising in the handler itself could land anywhere, e.g. in a garbage-collection callback that swallows
it (the process then ran every remaining run and exited 0). A second signal raises at once, for a
process stuck outside the training loop.
"""
from __future__ import annotations

import signal

_received: list[int] = []
_cause: list[str] = []          # why the signal came, where its sender said so (pool.watch_parent)


def _handler(signum, frame):
    _received.append(signum)
    if len(_received) > 1:
        raise KeyboardInterrupt


def install() -> dict:
    """Call from the main thread. Returns the handlers it replaced (for ``restore``)."""
    _received.clear()
    return {signum: signal.signal(signum, _handler) for signum in (signal.SIGTERM, signal.SIGINT)}


def restore(previous: dict) -> None:
    """Put back the handlers ``install`` replaced and forget the signals it recorded: they stopped that
    invocation, not a later one in the same process (``run_suites`` called again, e.g. by a test)."""
    for signum, handler in previous.items():
        signal.signal(signum, handler)
    _received.clear()
    _cause.clear()


def check() -> None:
    """A safe point: stop here if a signal arrived."""
    if _received:
        raise KeyboardInterrupt


def because(cause: str) -> None:
    """Say why the signal about to be sent to this process comes (before sending it)."""
    _cause[:] = [cause]


def reason() -> str:
    """Why this process stopped, for a KILLED run's ``failure`` tag."""
    if _cause:
        return _cause[0]
    if _received:
        return f"stopped by {signal.Signals(_received[0]).name}"
    return "interrupted"
