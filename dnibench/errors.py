"""User-facing errors: the CLI prints ``str(err)`` as one line and exits non-zero, no traceback."""


class DnibenchError(Exception):
    """Base for every error caused by input a person gave (suite, flags, data files)."""


class SuiteError(DnibenchError):
    """A suite file that is missing, malformed, or names something that does not exist."""


class DataError(DnibenchError):
    """A data file that is missing, fails its checksum, or is not in the expected format."""


class DataNotProvided(DataError):
    """A data set that cannot be fetched here and was not given (CIFAR-10 without --cifar-dir):
    the runner skips its suites with a notice instead of failing the whole invocation."""


class RunFailed(DnibenchError):
    """A run that cannot give a result: it is stopped and marked FAILED with ``reason`` (one line) as
    its ``failure`` tag, and the suite goes on to the next run."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        super().__init__(f"{reason} ({detail})" if detail else reason)


class Diverged(RunFailed):
    """A run whose loss became non-finite (a diverged run is not a result)."""

    def __init__(self, step: int, what: str = "loss"):
        self.step = step
        super().__init__(f"diverged at step {step}", f"non-finite {what}")


class WorkerFailed(RunFailed):
    """A parallel run (dnibench/parallel/) one of whose worker processes died, raised, or timed out
    waiting for a peer: the other workers are killed and the run ends FAILED with the reason."""
