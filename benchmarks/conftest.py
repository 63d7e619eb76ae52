"""Benchmarks (make bench): timed with pytest-benchmark, warm-up excluded, CUDA synchronised.
Every benchmark stores its derived figures in ``benchmark.extra_info``; this hook prints them as
one table at the end, ratios computed from measurements taken in the same session."""
import pytest

SUMMARY: list[dict] = []


@pytest.fixture
def record():
    def add(**row):
        SUMMARY.append(row)
    return add


def pytest_terminal_summary(terminalreporter):
    if not SUMMARY:
        return
    terminalreporter.section("dnibench figures (this session)")
    keys = list(dict.fromkeys(k for row in SUMMARY for k in row))
    terminalreporter.write_line(" | ".join(keys))
    for row in SUMMARY:
        terminalreporter.write_line(" | ".join(_fmt(row.get(k, "")) for k in keys))


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
