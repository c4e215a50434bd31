"""Compact, reset-free cumulative snapshots of the canary instruments, and their ring buffer.

``Accumulator.ingest`` turns one ``MetricsData`` collection into a :class:`Snapshot`: every
OpenTelemetry series of the instruments we read is reduced to its increase since the previous
collection (Prometheus ``increase()`` semantics: after a reset the new value counts from zero)
and added into running totals per compact key, (flag, variant, status class, bounds) for the
request histogram. The totals only grow, so a window is the plain difference of two snapshots,
and a reset inside one series is never masked by growth in the others it is summed with.
``SnapshotRing`` keeps the timestamped snapshots, bounded by a retention and a maximum count.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from operator import add, sub
from types import MappingProxyType
from typing import Final

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    MetricsData,
    Sum,
)
from opentelemetry.util.types import Attributes

from openfeature_canary.instrumentation import (
    EVENT_LOOP_LAG_NAME,
    LEDGER_MISMATCHES_NAME,
    REQUEST_DURATION_NAME,
    TELEMETRY_ACCEPTED_NAME,
    TELEMETRY_SENT_NAME,
)

__all__ = [
    "EVENT_LOOP_LAG",
    "INSTRUMENTS",
    "LEDGER_MISMATCHES",
    "REQUEST_DURATION",
    "TELEMETRY_ACCEPTED",
    "TELEMETRY_SENT",
    "Accumulator",
    "Bounds",
    "CohortKey",
    "Counts",
    "Snapshot",
    "SnapshotRing",
]

# One source of truth for the names: the instrumentation that records them.
REQUEST_DURATION: Final = REQUEST_DURATION_NAME
LEDGER_MISMATCHES: Final = LEDGER_MISMATCHES_NAME
TELEMETRY_SENT: Final = TELEMETRY_SENT_NAME
TELEMETRY_ACCEPTED: Final = TELEMETRY_ACCEPTED_NAME
EVENT_LOOP_LAG: Final = EVENT_LOOP_LAG_NAME
_HISTOGRAMS: Final = frozenset((REQUEST_DURATION, EVENT_LOOP_LAG))
_COUNTERS: Final = frozenset((LEDGER_MISMATCHES, TELEMETRY_SENT, TELEMETRY_ACCEPTED))
INSTRUMENTS: Final = _HISTOGRAMS | _COUNTERS

_FLAG: Final = "feature_flag.key"
_VARIANT: Final = "feature_flag.result.variant"
_STATUS: Final = "http.response.status_code"
#: Seconds -> milliseconds per histogram unit; bounds are stored in milliseconds.
_UNIT_TO_MS: Final = {None: 1000.0, "": 1000.0, "s": 1000.0, "ms": 1.0}

#: Histogram bounds in milliseconds (rounded to the picosecond so ``0.15 s`` is ``150.0``).
Bounds = tuple[float, ...]
#: Per-bucket (non-cumulative) counts, ``len(bounds) + 1`` of them.
Counts = tuple[int, ...]
#: (flag key, variant) of a request-histogram cohort.
CohortKey = tuple[str, str]
#: (status class: ``status // 100``, 0 if absent; bounds) inside a cohort.
_ClassKey = tuple[int, Bounds]
_SeriesKey = tuple[str, str, str, Hashable]


@dataclass(frozen=True)
class Snapshot:
    """Reset-free running totals at the caller's time ``t`` (all counts only ever grow).

    ``requests[(flag, variant)][(status_class, bounds_ms)]`` are request-duration bucket
    counts, ``lag[bounds_ms]`` event-loop lag bucket counts, ``counters[(instrument, flag)]``
    counter totals (flag ``""`` for process-wide counters). ``problems`` maps an instrument
    name to what was wrong with its data in this collection (wrong type, unit, shape).
    """

    t: float
    requests: Mapping[CohortKey, Mapping[_ClassKey, Counts]]
    lag: Mapping[Bounds, Counts]
    counters: Mapping[tuple[str, str], float]
    problems: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


def _attrs_key(attrs: Attributes) -> Hashable:
    if not attrs:
        return ()
    try:
        return frozenset(attrs.items())
    except TypeError:  # a list-valued attribute from a non-SDK producer
        return repr(sorted(attrs.items()))


def _status_class(value: object) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value // 100
    if isinstance(value, str) and value.isdigit():
        return int(value) // 100
    return 0


class Accumulator:
    """Folds successive collections into monotonic totals; one per signal source.

    Not thread-safe: the owning source serialises calls.
    """

    def __init__(self) -> None:
        # Last cumulative value per OpenTelemetry series: (start time, bounds, counts).
        self._last_hist: dict[_SeriesKey, tuple[int, Bounds, Counts]] = {}
        self._last_counter: dict[_SeriesKey, tuple[int, float]] = {}
        self._requests: dict[CohortKey, dict[_ClassKey, list[int]]] = {}
        self._lag: dict[Bounds, list[int]] = {}
        self._counters: dict[tuple[str, str], float] = {}
        self._bounds_ms: dict[tuple[float, tuple[float, ...]], Bounds] = {}
        self.flags: set[str] = set()

    def ingest(self, data: MetricsData | None, t: float) -> Snapshot:
        """Add one collection's increases to the totals and return the snapshot at ``t``."""
        problems: dict[str, str] = {}
        seen_hist: dict[_SeriesKey, tuple[int, Bounds, Counts]] = {}
        seen_counter: dict[_SeriesKey, tuple[int, float]] = {}
        for rm in data.resource_metrics if data is not None else ():
            for sm in rm.scope_metrics:
                scope = (sm.scope.name, sm.scope.version or "")
                for metric in sm.metrics:
                    name = metric.name
                    if name not in INSTRUMENTS:
                        continue
                    prefix = (*scope, name)
                    if name in _HISTOGRAMS:
                        self._histogram(metric.data, metric.unit, prefix, seen_hist, problems)
                    else:
                        self._counter(metric.data, prefix, seen_counter, problems)
        # Series absent from this collection are forgotten: the SDK reports every cumulative
        # series on each collection, so one comes back only after a restart (new start time).
        self._last_hist = seen_hist
        self._last_counter = seen_counter
        return Snapshot(
            t=t,
            requests=MappingProxyType(
                {
                    cohort: MappingProxyType({k: tuple(v) for k, v in classes.items()})
                    for cohort, classes in self._requests.items()
                }
            ),
            lag=MappingProxyType({k: tuple(v) for k, v in self._lag.items()}),
            counters=MappingProxyType(dict(self._counters)),
            problems=MappingProxyType(problems),
        )

    def _to_ms(self, scale: float, bounds: tuple[float, ...]) -> Bounds:
        key = (scale, bounds)
        cached = self._bounds_ms.get(key)
        if cached is None:
            cached = tuple(round(b * scale, 9) for b in bounds)
            self._bounds_ms[key] = cached
        return cached

    def _histogram(
        self,
        data: object,
        unit: str | None,
        prefix: tuple[str, str, str],
        seen: dict[_SeriesKey, tuple[int, Bounds, Counts]],
        problems: dict[str, str],
    ) -> None:
        name = prefix[2]
        if not isinstance(data, Histogram):
            problems[name] = (
                f"{name} is a {type(data).__name__}, not an explicit-bucket Histogram "
                "(configure ExplicitBucketHistogramAggregation in a View)"
            )
            return
        scale = _UNIT_TO_MS.get(unit)
        if scale is None:
            problems[name] = f"{name} has unit {unit!r}; expected 's' or 'ms'"
            return
        delta = data.aggregation_temporality == AggregationTemporality.DELTA
        requests = name == REQUEST_DURATION
        raw_bounds: object = None
        bounds: Bounds = ()
        for point in data.data_points:
            attrs = point.attributes or {}
            cohort: CohortKey | None = None
            if requests:
                flag, variant = attrs.get(_FLAG), attrs.get(_VARIANT)
                if not isinstance(flag, str) or not isinstance(variant, str):
                    continue  # a request no canary flag decided: not ours to judge
                cohort = (flag, variant)
            if point.explicit_bounds is not raw_bounds:  # the SDK shares one tuple per view
                raw_bounds = point.explicit_bounds
                bounds = self._to_ms(scale, tuple(point.explicit_bounds))
            counts: Counts = tuple(point.bucket_counts)
            if len(counts) != len(bounds) + 1:
                problems[name] = f"{name} has {len(counts)} bucket counts for {len(bounds)} bounds"
                continue
            increase = counts
            if not delta:
                key = (*prefix, _attrs_key(attrs))
                start = point.start_time_unix_nano
                seen[key] = (start, bounds, counts)
                last = self._last_hist.get(key)
                if last is not None and last[0] == start and last[1] == bounds:
                    if counts == last[2]:
                        continue  # an idle series: nothing to add
                    diff = tuple(map(sub, counts, last[2]))
                    if min(diff) >= 0:  # any bucket going down is a reset
                        increase = diff
            if cohort is not None:
                self.flags.add(cohort[0])
                classes = self._requests.setdefault(cohort, {})
                class_key = (_status_class(attrs.get(_STATUS)), bounds)
                total = classes.get(class_key)
                if total is None:
                    total = classes[class_key] = [0] * len(counts)
            else:
                total = self._lag.get(bounds)
                if total is None:
                    total = self._lag[bounds] = [0] * len(counts)
            total[:] = map(add, total, increase)

    def _counter(
        self,
        data: object,
        prefix: tuple[str, str, str],
        seen: dict[_SeriesKey, tuple[int, float]],
        problems: dict[str, str],
    ) -> None:
        name = prefix[2]
        if not isinstance(data, Sum):
            problems[name] = f"{name} is a {type(data).__name__}, not a counter (Sum)"
            return
        delta = data.aggregation_temporality == AggregationTemporality.DELTA
        for point in data.data_points:
            attrs = point.attributes or {}
            value = float(point.value)
            if not math.isfinite(value):
                problems[name] = f"{name} has a non-finite value {value}"
                continue
            flag = ""
            if name == LEDGER_MISMATCHES:
                raw = attrs.get(_FLAG)
                if not isinstance(raw, str):
                    continue
                flag = raw
                self.flags.add(flag)
            increase = value
            if not delta:
                key = (*prefix, _attrs_key(attrs))
                start = point.start_time_unix_nano
                seen[key] = (start, value)
                last = self._last_counter.get(key)
                if last is not None and last[0] == start and value >= last[1]:
                    increase = value - last[1]
            self._counters[(name, flag)] = self._counters.get((name, flag), 0.0) + increase


class SnapshotRing:
    """Timestamped snapshots, oldest first, bounded by ``retention_s`` and ``max_snapshots``.

    The newest snapshot at or before ``newest - retention_s`` is kept as the anchor of the
    longest window. Not thread-safe: the owning source serialises calls.
    """

    def __init__(self, retention_s: float, max_snapshots: int) -> None:
        if not (retention_s > 0 and math.isfinite(retention_s)):
            raise ValueError(f"retention_s must be a positive number of seconds, got {retention_s}")
        if max_snapshots < 2:
            raise ValueError(f"max_snapshots must be at least 2, got {max_snapshots}")
        self.retention_s = float(retention_s)
        self.max_snapshots = max_snapshots
        self._times: list[float] = []
        self._snaps: list[Snapshot] = []

    def __len__(self) -> int:
        return len(self._snaps)

    def __getitem__(self, index: int) -> Snapshot:
        return self._snaps[index]

    def add(self, snap: Snapshot) -> None:
        """Append ``snap``; one at the same time as the newest replaces it."""
        if self._times and snap.t < self._times[-1]:
            raise ValueError(
                f"snapshot time {snap.t} is before the newest snapshot {self._times[-1]}"
            )
        if self._times and snap.t == self._times[-1]:
            self._snaps[-1] = snap
            return
        self._times.append(snap.t)
        self._snaps.append(snap)
        cutoff = snap.t - self.retention_s
        drop = max(bisect_right(self._times, cutoff) - 1, len(self._snaps) - self.max_snapshots)
        if drop > 0:
            del self._times[:drop]
            del self._snaps[:drop]

    def at_or_before(self, t: float) -> int | None:
        """Index of the newest snapshot taken at or before ``t``, or ``None``."""
        i = bisect_right(self._times, t) - 1
        return i if i >= 0 else None
