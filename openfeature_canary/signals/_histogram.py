"""Pure histogram math: Prometheus' ``histogram_quantile`` on OpenTelemetry explicit buckets.

OpenTelemetry explicit-bucket histograms carry ``len(bounds) + 1`` per-bucket (non-cumulative)
counts: bucket ``i`` holds samples in ``(bounds[i-1], bounds[i]]`` (the SDK files a sample equal
to a bound under that bound, like Prometheus' inclusive ``le``), and the last bucket holds
``(bounds[-1], +Inf)``. The functions here turn them into Prometheus' cumulative ``le`` buckets
and apply its rules (``promql/quantile.go``, ``bucketQuantile``). No I/O, no clock.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from itertools import accumulate

__all__ = [
    "count_above",
    "count_at_least",
    "histogram_quantile",
    "line_not_a_bound",
    "snap_to_bound",
]

#: A threshold this close to a bound (relative) is that bound: plans write ``150`` ms while
#: bounds may be stored as ``0.15`` s and converted, which is not always bit-exact.
_SNAP_REL = 1e-9


def _check(bounds: Sequence[float], counts: Sequence[float]) -> None:
    if len(counts) != len(bounds) + 1:
        raise ValueError(
            f"a histogram with {len(bounds)} bounds needs {len(bounds) + 1} bucket counts, "
            f"got {len(counts)}"
        )
    previous = -math.inf
    for bound in bounds:
        if not math.isfinite(bound) or bound <= previous:
            raise ValueError(f"bounds must be finite and strictly increasing, got {list(bounds)}")
        previous = bound
    if any(c < 0 for c in counts):
        raise ValueError(f"bucket counts must not be negative, got {list(counts)}")


def histogram_quantile(
    q: float, bounds: Sequence[float], bucket_counts: Sequence[float]
) -> float | None:
    """Estimate the ``q``-quantile of an explicit-bucket histogram exactly as PromQL does.

    ``bounds`` are the finite upper bounds (strictly increasing), ``bucket_counts`` the
    per-bucket counts of an OpenTelemetry ``HistogramDataPoint`` (``len(bounds) + 1`` of them,
    the last one the ``+Inf`` bucket). The rules are Prometheus' ``histogram_quantile``:

    - linear interpolation inside the bucket where the rank ``q * total`` falls;
    - the lowest bucket starts at 0 when its upper bound is positive (if that bound is
      ``<= 0`` the bound itself is returned);
    - a quantile in the ``+Inf`` bucket returns the highest finite bound;
    - ``q < 0`` gives ``-inf`` and ``q > 1`` gives ``+inf`` (checked first, as in PromQL);
    - where PromQL returns ``NaN`` we return ``None`` ("no value"): no observations, no
      finite bound, ``q`` NaN, and ``q == 0`` with an empty lowest bucket.

    >>> histogram_quantile(0.5, [1.0, 2.0], [0, 10, 0])   # all ten samples in (1, 2]
    1.5
    >>> histogram_quantile(0.99, [1.0, 2.0], [0, 0, 5])   # in the +Inf bucket
    2.0
    """
    _check(bounds, bucket_counts)
    if math.isnan(q):
        return None
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    if not bounds:
        return None
    cumulative = list(accumulate(bucket_counts))
    total = cumulative[-1]
    if total == 0:
        return None
    rank = q * total
    # First finite bucket whose cumulative count reaches the rank (PromQL's sort.Search).
    b = bisect_left(cumulative, rank, 0, len(bounds))
    if b == len(bounds):
        return float(bounds[-1])
    if b == 0 and bounds[0] <= 0:
        return float(bounds[0])
    start = 0.0
    count = cumulative[b]
    if b > 0:
        start = bounds[b - 1]
        count -= cumulative[b - 1]
        rank -= cumulative[b - 1]
    if count == 0:
        # Only q == 0 over an empty lowest bucket gets here: PromQL computes 0/0 = NaN.
        return None
    return float(start + (bounds[b] - start) * (rank / count))


def snap_to_bound(threshold: float, bounds: Sequence[float]) -> float:
    """Return the bound within a relative 1e-9 of ``threshold``, or ``threshold`` itself.

    Use it before comparing a plan threshold with histogram bounds, so that ``150`` ms meets a
    bound stored as ``0.15 * 1000 == 150.00000000000003``.
    """
    i = bisect_left(bounds, threshold)
    for j in (i - 1, i):
        if 0 <= j < len(bounds):
            bound = bounds[j]
            if abs(bound - threshold) <= _SNAP_REL * max(1.0, abs(bound)):
                return float(bound)
    return threshold


def count_above(threshold: float, bounds: Sequence[float], bucket_counts: Sequence[float]) -> float:
    """Number of samples greater than ``threshold``; exact when ``threshold`` is a bound.

    Use it for "how many requests took longer than 150 ms" when 150 ms is a histogram bound:
    every bucket is then wholly above or wholly below. A threshold between bounds takes the
    linearly interpolated share of its bucket (as PromQL's ``histogram_fraction``), the lowest
    bucket starting at 0 when its upper bound is positive. The ``+Inf`` bucket counts as wholly
    above any threshold inside it (its width is unknown; counting it is the safe side), and a
    lowest bucket with a bound ``<= 0`` counts as a point at that bound.

    >>> count_above(0.2, [0.1, 0.2, 0.3], [4, 3, 2, 1])    # (0.2, 0.3] and (0.3, +Inf)
    3.0
    """
    _check(bounds, bucket_counts)
    if math.isnan(threshold):
        raise ValueError("threshold must not be NaN")
    threshold = snap_to_bound(threshold, bounds)
    # Buckets whose lower edge is at or above the threshold are wholly above it.
    i = bisect_left(bounds, threshold)  # bucket i is the first with upper bound >= threshold
    if i < len(bounds) and bounds[i] == threshold:
        return float(sum(bucket_counts[i + 1 :]))
    above = float(sum(bucket_counts[i + 1 :]))
    if i == len(bounds):
        return above + float(bucket_counts[i])  # inside the +Inf bucket
    upper = bounds[i]
    if i == 0:
        if upper <= 0:
            return above + float(bucket_counts[0])
        lower = 0.0
    else:
        lower = bounds[i - 1]
    if threshold <= lower:
        return above + float(bucket_counts[i])
    return above + float(bucket_counts[i]) * (upper - threshold) / (upper - lower)


def count_at_least(
    threshold: float, bounds: Sequence[float], bucket_counts: Sequence[float]
) -> float:
    """Number of samples greater than or equal to ``threshold`` (the ``at_least`` rule).

    A bucket ``(lower, upper]`` cannot tell a sample equal to ``upper`` from one just below it,
    so at a bound this is the count strictly above it: exact for every sample except one that
    equals the bound to the last bit, which measured durations practically never do. Between
    bounds it interpolates like :func:`count_above` (where ``>=`` and ``>`` coincide).

    >>> count_at_least(0.3, [0.1, 0.3, 0.5], [0, 1, 2, 0])  # the two lags in (0.3, 0.5]
    2.0
    """
    return count_above(threshold, bounds, bucket_counts)


def line_not_a_bound(
    lines: Mapping[str, float], bounds: Sequence[float], histogram: str
) -> str | None:
    """Why a histogram with ``bounds`` cannot judge ``lines`` (``None``: every line is a bound).

    ``lines`` maps what a line is (``"the P95 line of stage 2"``) to its value, in the unit of
    ``bounds``. A line between two bounds could only be interpolated: with bounds 100/250 ms a
    healthy service whose true share over 130 ms is 1.2 % reads 5.3 %, a false breach. The
    answer is one line naming the first such line and every bound the histogram has.

    >>> line_not_a_bound({"the P95 line of stage 1": 130.0}, [100.0, 250.0], "h")
    'the P95 line of stage 1 (130 ms) is not a bound of h (its bounds: 100, 250 ms)'
    """
    for what, line in lines.items():
        if snap_to_bound(line, bounds) not in bounds:
            shown = (
                f"its bounds: {', '.join(f'{b:g}' for b in bounds)} ms" if bounds else "no bounds"
            )
            return f"{what} ({line:g} ms) is not a bound of {histogram} ({shown})"
    return None
