"""Measured against published: a mean with its 95% confidence interval over seeds, and a verdict.

A published cell is an interval, published ± tolerance (the transcription is trusted to
``tolerance_points``); a measurement is an interval, mean ± the 95% CI half-width. They agree when
the two intervals overlap. Only the paper profile runs the paper's setup, so only its cells are
compared; the other profiles say so instead of pretending.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
from scipy import stats

WITHIN = "within tolerance"
OUTSIDE = "outside"
NOT_COMPARABLE = "not comparable at this profile"
NO_RUNS = "no runs"
NO_DATA = "data not provided"
NO_PUBLISHED = "no published value"


def mean_ci(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, 95% CI half-width, n) of the finite values, with Student's t (n-1 degrees of freedom).
    One value has no spread to estimate: its half-width is NaN; no values give (NaN, NaN, 0)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(x[0]), math.nan, 1
    half = stats.t.ppf(0.975, n - 1) * x.std(ddof=1) / math.sqrt(n)
    return float(x.mean()), float(half), n


def verdict(measured_mean: float, ci_halfwidth: float, published: float | None, tolerance: float,
            comparable: bool) -> str:
    """'within tolerance' when [mean ± ci] overlaps [published ± tolerance], else 'outside'; a single
    seed (NaN half-width) counts as a point. 'not comparable at this profile' when the runs did not
    use the paper's setup; 'no runs' without a measurement; 'no published value' without one."""
    if measured_mean is None or not math.isfinite(measured_mean):
        return NO_RUNS
    if not comparable:
        return NOT_COMPARABLE
    if published is None or not math.isfinite(published):
        return NO_PUBLISHED
    half = ci_halfwidth if ci_halfwidth is not None and math.isfinite(ci_halfwidth) else 0.0
    overlap = measured_mean - half <= published + tolerance and measured_mean + half >= published - tolerance
    return WITHIN if overlap else OUTSIDE
