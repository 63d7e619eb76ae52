"""Measured against published: a mean with its 95% confidence interval over seeds, and a verdict
that noise cannot pass.

A cell is judged on the *distance* of the measured mean from the published value, never on whether
two intervals touch (an overlap rule lets a wider seed spread pass more easily). With m the mean over
n seeds, h the 95% CI half-width (Student's t, n-1 degrees of freedom), p the published value and
tau the tolerance (``tolerance_points`` in ``dnibench/published/jaderberg2016.yaml``, or a section's
own), the rule for a table cell (:func:`verdict`) is, in this order:

  1. **outside** when |m - p| - h > tau: even the nearest end of the CI lies beyond the tolerance band
     p +- tau, so the mean is far off however widely the seeds scatter;
  2. **inconclusive** when h > tau: the seeds disagree by more than the tolerance itself, so the run
     cannot tell a pass from a fail; the label gives about how many seeds would bring h under tau
     (:func:`seeds_needed`: the sample sd held fixed, the t quantile recomputed for each n);
  3. **within tolerance** when |m - p| <= tau;
  4. **outside** otherwise.

One seed has no spread to estimate: it is "1 seed: inconclusive", unless the suite's profile is
explicitly single-seed (``single_seed: true`` with a ``single_seed_reason``), where the one value is
judged as a point (h = 0) and the report says so under the table.

One-sided claims are judged one-sided. "DNI still reaches about 2%" is an *at most* claim
(:func:`at_most`): with bound b = value + tau it **holds** when the whole CI is at or below b (m + h <= b),
**does not hold** when the whole CI is above it (m - h > b), is **inconclusive** when h > tau, and
otherwise holds when m <= b. A paired claim "A lower than B" (:func:`lower_than`, e.g. DNI's PTB
bits per character below BPTT's at the same T) is judged on the Welch 95% CI of mean(A) - mean(B):
it **holds** when the whole CI is below 0, **does not hold** when the whole CI is at or above 0, or
when it straddles 0 but is narrower than the tolerance (no difference the tolerance could resolve),
and is **inconclusive** otherwise. Welch rather than a paired t: runs that share a seed number share
no randomness that matters across methods, so pairing them would assume a correlation that is not
there. "Trains more slowly than backprop" (:func:`slower_than`) first needs every unlocked seed to
reach the target at all; otherwise the verdict is "did not reach the target", never "holds".

Only the paper profile runs the paper's setup, so only its cells are compared; the other profiles
say so instead of pretending.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
from scipy import stats

WITHIN = "within tolerance"
OUTSIDE = "outside"
INCONCLUSIVE = "inconclusive"
ONE_SEED = "1 seed: inconclusive"
HOLDS = "holds"
FAILS = "does not hold"
NOT_REACHED = "did not reach the target"
NOT_COMPARABLE = "not comparable at this profile"
NOT_FULL_DATA = "not comparable: trained on less than the full data set"   # report/data_used.comparable
NO_RUNS = "no runs"
NO_DATA = "data not provided"
NO_PUBLISHED = "no published value"
SEEDS_CAP = 100_000          # beyond this many seeds the estimate is reported as "more than"
SINGLE_SEED_NOTE = ("Single-seed profile (`{suite}` at `{profile}`): each cell is one run judged as a point, "
                    "with no estimate of the seed-to-seed spread. Reason given by the suite: {reason}")


def mean_ci(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, 95% CI half-width, n) of the finite values, with Student's t (n-1 degrees of freedom).
    One value has no spread to estimate: its half-width is NaN; no values give (NaN, NaN, 0)."""
    x = _finite(values)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(x[0]), math.nan, 1
    half = stats.t.ppf(0.975, n - 1) * x.std(ddof=1) / math.sqrt(n)
    return float(x.mean()), float(half), n


def _finite(values: Iterable[float]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)


def _le(a: float, b: float) -> bool:
    """a <= b, forgiving float noise (2.5 - 2.2 is 0.30000000000000027)."""
    return a <= b + 1e-9 * max(1.0, abs(a), abs(b))


def seeds_needed(sd: float, tolerance: float, arms: int = 1) -> int | None:
    """The smallest n (seeds per arm) at which the 95% CI half-width, t(df) * sd / sqrt(n), falls to
    the tolerance, assuming the spread stays at the sample sd. One arm: a mean, df = n - 1; two arms:
    a difference of two means with n seeds each, sd = sqrt(sd_a^2 + sd_b^2), df = 2(n - 1). None past
    SEEDS_CAP."""
    if not sd > 0:
        return 2
    n = np.arange(2, SEEDS_CAP + 1)
    half = stats.t.ppf(0.975, arms * (n - 1)) * sd / np.sqrt(n)
    ok = np.flatnonzero(half <= tolerance)
    return int(n[ok[0]]) if len(ok) else None


def _inconclusive(half: float, tolerance: float, needed: int | None) -> str:
    more = f"about {needed} seeds needed" if needed else f"more than {SEEDS_CAP} seeds needed"
    return f"{INCONCLUSIVE} (CI ±{half:.3g} > tolerance {tolerance:g}; {more})"


def _sd(half: float, n: int) -> float:
    """The sample sd back from a CI half-width over n seeds."""
    return half * math.sqrt(n) / stats.t.ppf(0.975, n - 1)


def is_inconclusive(label: str) -> bool:
    return INCONCLUSIVE in label


def why_not_comparable(comparable: bool | str) -> str | None:
    """None where verdicts apply (``comparable`` True), else the state that stands in for them: NOT_COMPARABLE for
    False (not the paper's profile), or the reason a string gives (NOT_FULL_DATA: report/data_used.comparable)."""
    if isinstance(comparable, str):
        return comparable
    return None if comparable else NOT_COMPARABLE


def _gate(mean: float, n: int, comparable: bool | str, single_seed: bool) -> str | None:
    """The verdicts decided before looking at the numbers, or None."""
    if n == 0 or mean is None or not math.isfinite(mean):
        return NO_RUNS
    reason = why_not_comparable(comparable)
    if reason:
        return reason
    if n == 1 and not single_seed:
        return ONE_SEED
    return None


def verdict(mean: float, half: float, n: int, published: float | None, tolerance: float,
            comparable: bool | str = True, single_seed: bool = False) -> str:
    """A table cell: 'within tolerance', 'outside', 'inconclusive (...)', '1 seed: inconclusive',
    'not comparable at this profile', NOT_FULL_DATA, 'no runs' or 'no published value' (rule in the module docstring)."""
    early = _gate(mean, n, comparable, single_seed)
    if early:
        return early
    if published is None or not math.isfinite(published):
        return NO_PUBLISHED
    half = half if n > 1 else 0.0
    distance = abs(mean - published)
    if not _le(distance - half, tolerance):
        return OUTSIDE
    if not _le(half, tolerance):
        return _inconclusive(half, tolerance, seeds_needed(_sd(half, n), tolerance))
    return WITHIN if _le(distance, tolerance) else OUTSIDE


def judge(values: Iterable[float], published: float | None, tolerance: float, comparable: bool | str = True,
          single_seed: bool = False) -> str:
    """:func:`verdict` straight from the seeds' values."""
    return verdict(*mean_ci(values), published, tolerance, comparable, single_seed)


def at_most(mean: float, half: float, n: int, value: float, tolerance: float, comparable: bool | str = True,
            single_seed: bool = False) -> str:
    """A one-sided claim "reaches about `value`" (lower is better): 'holds', 'does not hold' or
    'inconclusive (...)' against the bound value + tolerance (rule in the module docstring)."""
    early = _gate(mean, n, comparable, single_seed)
    if early:
        return early
    half = half if n > 1 else 0.0
    bound = value + tolerance
    if _le(mean + half, bound):
        return HOLDS
    if not _le(mean - half, bound):
        return FAILS
    if not _le(half, tolerance):
        return _inconclusive(half, tolerance, seeds_needed(_sd(half, n), tolerance))
    return HOLDS if _le(mean, bound) else FAILS


def welch_ci(a: Iterable[float], b: Iterable[float]) -> tuple[float, float, int, int]:
    """(mean(a) - mean(b), Welch 95% CI half-width, n_a, n_b) over the finite values; the half-width
    is NaN when either side has fewer than 2 values, 0 when neither has any spread."""
    a, b = _finite(a), _finite(b)
    if len(a) == 0 or len(b) == 0:
        return math.nan, math.nan, len(a), len(b)
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return diff, math.nan, len(a), len(b)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se2 = va + vb
    if se2 == 0:
        return diff, 0.0, len(a), len(b)
    df = se2 ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))    # Welch-Satterthwaite
    return diff, float(stats.t.ppf(0.975, df) * math.sqrt(se2)), len(a), len(b)


def lower_than(a: Iterable[float], b: Iterable[float], tolerance: float, comparable: bool | str = True,
               single_seed: bool = False) -> str:
    """The paired claim "A is lower than B" from each side's seeds: 'holds', 'does not hold' or
    'inconclusive (...)' on the Welch CI of mean(A) - mean(B) (rule in the module docstring)."""
    a, b = _finite(a), _finite(b)
    diff, half, na, nb = welch_ci(a, b)
    early = _gate(diff, min(na, nb), comparable, single_seed)
    if early:
        return early
    half = half if math.isfinite(half) else 0.0           # single-seed profile: a point
    if diff + half < 0:
        return HOLDS
    if diff - half >= 0:
        return FAILS
    if _le(half, tolerance):
        return f"{FAILS} (no difference beyond ±{half:.3g})"
    sd = math.sqrt(a.var(ddof=1) + b.var(ddof=1))
    return _inconclusive(half, tolerance, seeds_needed(sd, tolerance, arms=2))


def slower_than(steps: Iterable[float], reference_steps: Iterable[float], tolerance: float,
                comparable: bool | str = True, single_seed: bool = False, reference: str = "the reference") -> str:
    """"Trains more slowly than the reference": each seed's first iteration at the target (inf: never).
    Every seed must reach the target, else 'did not reach the target (k of n seeds)'; then the claim
    is the reference reaching it earlier, :func:`lower_than` on the iterations with ``tolerance``
    (e.g. one evaluation interval, the resolution of a first-reach iteration)."""
    steps, reference_steps = list(steps), list(reference_steps)
    if not steps or not reference_steps:
        return NO_RUNS
    missed = sum(not math.isfinite(s) for s in steps)
    if missed:
        return f"{NOT_REACHED} ({missed} of {len(steps)} seeds)"
    ref_missed = sum(not math.isfinite(s) for s in reference_steps)
    if ref_missed:
        return f"{reference} {NOT_REACHED} ({ref_missed} of {len(reference_steps)} seeds): no comparison"
    return lower_than(reference_steps, steps, tolerance, comparable, single_seed)


def single_seed_note(suite, profile: str) -> str | None:
    """The line the report prints under a table whose profile is explicitly single-seed, or None."""
    prof = getattr(suite, "profiles", {}).get(profile) if suite is not None else None
    if prof is None or not getattr(prof, "single_seed", False):
        return None
    return SINGLE_SEED_NOTE.format(suite=suite.name, profile=profile, reason=prof.single_seed_reason)


def is_single_seed(suite, profile: str) -> bool:
    return single_seed_note(suite, profile) is not None
