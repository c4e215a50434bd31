"""Compact, reset-free cumulative snapshots of the canary instruments, and their ring buffer.

``Accumulator.ingest`` turns one ``MetricsData`` collection into a :class:`Snapshot`. Only the
instruments the signals read (:data:`INSTRUMENTS`) are looked at; anything else the
application's ``MeterProvider`` reports (the controller's own ``canary.rollout.*`` and
``canary.trigger.*`` gauges, ``feature_flag.evaluation_*``, the application's metrics) is
skipped before a single value is copied. Every OpenTelemetry series read is reduced to its
increase since the previous collection (Prometheus ``increase()`` semantics: after a reset the
new value counts from zero) and added into running totals per compact key: per (flag, variant)
cohort, the request-duration bucket counts per bucket layout (every status merged) and the
count of 5xx responses. The totals only grow, so a window is the plain difference of two
snapshots, and a reset inside one series is never masked by growth in the others it is summed
with.

Snapshots share structure: a cohort (or the lag histogram, or the counters) that did not change
since the previous collection is the very same object in both snapshots, so a snapshot costs
memory only for what changed. ``SnapshotRing`` (``_ring.py``) keeps the timestamped
snapshots, bounded by a retention and a maximum count, and remembers whether it ever dropped
one, so that a window reaching before the retained history is reported as "not enough data"
instead of silently shrinking.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from operator import add, sub
from types import MappingProxyType
from typing import Final, NamedTuple

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    MetricsData,
    NumberDataPoint,
    Sum,
)
from opentelemetry.util.types import Attributes

from openfeature_canary.evidence import Tracked
from openfeature_canary.instrumentation import (
    EVENT_LOOP_LAG_NAME,
    LEDGER_MISMATCHES_NAME,
    REQUEST_DURATION_NAME,
    TELEMETRY_ACCEPTED_NAME,
    TELEMETRY_SENT_NAME,
    UnitLog,
)
from openfeature_canary.instrumentation._names import ATTR_TRACKING_EVENT
from openfeature_canary.signals._tracked import (
    NO_TRACKED,
    TRACKING_FIELDS,
    TrackedKey,
    TrackedTotals,
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
    "CohortTotals",
    "Counts",
    "Snapshot",
]

# One source of truth for the names: the instrumentation that records them.
REQUEST_DURATION: Final = REQUEST_DURATION_NAME
LEDGER_MISMATCHES: Final = LEDGER_MISMATCHES_NAME
TELEMETRY_SENT: Final = TELEMETRY_SENT_NAME
TELEMETRY_ACCEPTED: Final = TELEMETRY_ACCEPTED_NAME
EVENT_LOOP_LAG: Final = EVENT_LOOP_LAG_NAME
_HISTOGRAMS: Final = frozenset((REQUEST_DURATION, EVENT_LOOP_LAG))
_COUNTERS: Final = frozenset((LEDGER_MISMATCHES, TELEMETRY_SENT, TELEMETRY_ACCEPTED))
#: The only instruments a snapshot stores anything of (spec §6, and the tracked events).
INSTRUMENTS: Final = _HISTOGRAMS | _COUNTERS | frozenset(TRACKING_FIELDS)

_FLAG: Final = "feature_flag.key"
_VARIANT: Final = "feature_flag.result.variant"
_STATUS: Final = "http.response.status_code"
#: Seconds -> milliseconds per histogram unit; bounds are stored in milliseconds.
_UNIT_TO_MS: Final = {None: 1000.0, "": 1000.0, "s": 1000.0, "ms": 1.0}
_NO_PROBLEMS: Final[Mapping[str, str]] = MappingProxyType({})
_NO_UNITS: Final[Mapping[tuple[str, str], UnitLog]] = MappingProxyType({})

#: Histogram bounds in milliseconds (rounded to the picosecond so ``0.15 s`` is ``150.0``).
Bounds = tuple[float, ...]
#: Per-bucket (non-cumulative) counts, ``len(bounds) + 1`` of them.
Counts = tuple[int, ...]
#: (flag key, variant) of a request-histogram cohort.
CohortKey = tuple[str, str]
_SeriesKey = tuple[str, str, str, Hashable]
#: Where a histogram series' increases go: (cohort, or ``None`` for the lag histogram; the
#: running bucket totals; whether the series counts 5xx responses).
_Dest = tuple[CohortKey | None, list[int], bool]
#: A histogram series as last collected: (start time, bounds, counts, destination).
_LastHist = tuple[int, Bounds, Counts, _Dest]


class CohortTotals(NamedTuple):
    """A cohort's request-duration totals: 5xx count, bucket counts per bucket layout.

    ``hist`` holds one ``(bounds_ms, counts)`` pair per bucket layout seen (one, unless the
    application changed its View), the counts of every status merged.
    """

    errors: int
    hist: tuple[tuple[Bounds, Counts], ...]


@dataclass(frozen=True)
class Snapshot:
    """Reset-free running totals at the caller's time ``t`` (all counts only ever grow).

    ``requests[(flag, variant)]`` are request-duration totals, ``lag[bounds_ms]`` event-loop lag
    bucket counts, ``counters[(instrument, flag)]`` counter totals (flag ``""`` for
    process-wide counters). ``problems`` maps an instrument name to what was wrong with its data
    in this collection (wrong type, unit, shape). ``units[(flag, variant)]`` is the cohort's
    cumulative log of erroring units (hashed; ``instrumentation.UnitLog``), when recorded.
    ``tracked[(flag, variant, event)]`` are the totals of the events ``track()`` recorded.
    Unchanged parts are shared between snapshots.
    """

    t: float
    requests: Mapping[CohortKey, CohortTotals]
    lag: Mapping[Bounds, Counts]
    counters: Mapping[tuple[str, str], float]
    problems: Mapping[str, str] = field(default_factory=lambda: _NO_PROBLEMS)
    units: Mapping[tuple[str, str], UnitLog] = field(default_factory=lambda: _NO_UNITS)
    tracked: Mapping[TrackedKey, Tracked] = field(default_factory=lambda: NO_TRACKED)


def _attrs_key(attrs: Attributes) -> Hashable:
    if not attrs:
        return ()
    try:
        return frozenset(attrs.items())
    except TypeError:  # a list-valued attribute from a non-SDK producer
        return repr(sorted(attrs.items()))


def _is_5xx(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value // 100 == 5
    if isinstance(value, str) and value.isdigit():
        return int(value) // 100 == 5
    return False


class Accumulator:
    """Folds successive collections into monotonic totals; one per signal source.

    Not thread-safe: the owning source serialises calls.
    """

    def __init__(self) -> None:
        # Last cumulative value per OpenTelemetry series, and where its increases go.
        self._last_hist: dict[_SeriesKey, _LastHist] = {}
        self._last_counter: dict[_SeriesKey, tuple[int, float]] = {}
        # Running totals, and the cohorts / parts that changed since the last snapshot.
        self._requests: dict[CohortKey, dict[Bounds, list[int]]] = {}
        self._errors: dict[CohortKey, int] = {}
        self._lag: dict[Bounds, list[int]] = {}
        self._counters: dict[tuple[str, str], float] = {}
        self._tracked = TrackedTotals()
        self._dirty: set[CohortKey] = set()
        self._lag_dirty = False
        self._counters_dirty = False
        # The frozen views handed to snapshots; rebuilt only where something changed.
        self._frozen: dict[CohortKey, CohortTotals] = {}
        self._requests_view: Mapping[CohortKey, CohortTotals] = MappingProxyType({})
        self._lag_view: Mapping[Bounds, Counts] = MappingProxyType({})
        self._counters_view: Mapping[tuple[str, str], float] = MappingProxyType({})
        self._bounds_ms: dict[tuple[float, tuple[float, ...]], Bounds] = {}
        self._canonical: dict[Bounds, Bounds] = {}  # one object per layout: ``is`` compares
        self.flags: set[str] = set()

    def ingest(self, data: MetricsData | None, t: float) -> Snapshot:
        """Add one collection's increases to the totals and return the snapshot at ``t``."""
        problems: dict[str, str] = {}
        seen_hist: dict[_SeriesKey, _LastHist] = {}
        seen_counter: dict[_SeriesKey, tuple[int, float]] = {}
        for rm in data.resource_metrics if data is not None else ():
            for sm in rm.scope_metrics:
                scope = (sm.scope.name, sm.scope.version or "")
                for metric in sm.metrics:
                    name = metric.name
                    if name not in INSTRUMENTS:
                        continue  # not read by any signal: never copied
                    prefix = (*scope, name)
                    if name in _HISTOGRAMS:
                        self._histogram(metric.data, metric.unit, prefix, seen_hist, problems)
                    elif name in TRACKING_FIELDS:
                        self._tracking(metric.data, prefix, seen_counter, problems)
                    else:
                        self._counter(metric.data, prefix, seen_counter, problems)
        # Series absent from this collection are forgotten: the SDK reports every cumulative
        # series on each collection, so one comes back only after a restart (new start time).
        self._last_hist = seen_hist
        self._last_counter = seen_counter
        return Snapshot(
            t=t,
            requests=self._freeze_requests(),
            lag=self._freeze_lag(),
            counters=self._freeze_counters(),
            problems=MappingProxyType(problems) if problems else _NO_PROBLEMS,
            tracked=self._tracked.freeze(),
        )

    def _freeze_requests(self) -> Mapping[CohortKey, CohortTotals]:
        if self._dirty:
            for cohort in self._dirty:
                self._frozen[cohort] = CohortTotals(
                    self._errors.get(cohort, 0),
                    tuple((b, tuple(c)) for b, c in self._requests[cohort].items()),
                )
            self._dirty.clear()
            self._requests_view = MappingProxyType(dict(self._frozen))
        return self._requests_view

    def _freeze_lag(self) -> Mapping[Bounds, Counts]:
        if self._lag_dirty:
            self._lag_dirty = False
            self._lag_view = MappingProxyType({b: tuple(c) for b, c in self._lag.items()})
        return self._lag_view

    def _freeze_counters(self) -> Mapping[tuple[str, str], float]:
        if self._counters_dirty:
            self._counters_dirty = False
            self._counters_view = MappingProxyType(dict(self._counters))
        return self._counters_view

    def _to_ms(self, scale: float, bounds: tuple[float, ...]) -> Bounds:
        key = (scale, bounds)
        cached = self._bounds_ms.get(key)
        if cached is None:
            ms = tuple(round(b * scale, 9) for b in bounds)
            cached = self._bounds_ms[key] = self._canonical.setdefault(ms, ms)
        return cached

    def _dest(self, cohort: CohortKey | None, status: object, bounds: Bounds, width: int) -> _Dest:
        """Where a series newly seen (or with a new layout) adds its increases."""
        if cohort is None:
            totals = self._lag
        else:
            self.flags.add(cohort[0])
            totals = self._requests.setdefault(cohort, {})
            self._errors.setdefault(cohort, 0)
        total = totals.get(bounds)
        if total is None:
            total = totals[bounds] = [0] * width
        return cohort, total, cohort is not None and _is_5xx(status)

    def _histogram(
        self,
        data: object,
        unit: str | None,
        prefix: tuple[str, str, str],
        seen: dict[_SeriesKey, _LastHist],
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
            if delta:
                dest = self._dest(cohort, attrs.get(_STATUS), bounds, len(counts))
            else:
                key = (*prefix, _attrs_key(attrs))
                start = point.start_time_unix_nano
                last = self._last_hist.get(key)
                if last is not None and last[1] is bounds:  # canonical bounds: ``is`` is ``==``
                    dest = last[3]
                    seen[key] = (start, bounds, counts, dest)
                    if last[0] == start:
                        if counts == last[2]:
                            continue  # an idle series: nothing to add
                        diff = tuple(map(sub, counts, last[2]))
                        if min(diff) >= 0:  # any bucket going down is a reset
                            increase = diff
                else:  # a new series, or a new layout: its whole value is the increase
                    dest = self._dest(cohort, attrs.get(_STATUS), bounds, len(counts))
                    seen[key] = (start, bounds, counts, dest)
            cohort, total, errors = dest
            total[:] = map(add, total, increase)
            if cohort is None:
                self._lag_dirty = True
            else:
                self._dirty.add(cohort)
                if errors:
                    self._errors[cohort] += sum(increase)

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
            increase = value if delta else self._increase(prefix, attrs, point, value, seen)
            if increase or (name, flag) not in self._counters:
                self._counters[(name, flag)] = self._counters.get((name, flag), 0.0) + increase
                self._counters_dirty = True

    def _tracking(
        self,
        data: object,
        prefix: tuple[str, str, str],
        seen: dict[_SeriesKey, tuple[int, float]],
        problems: dict[str, str],
    ) -> None:
        """One tracking counter (``instrumentation/_tracking.py``) into the tracked totals."""
        name = prefix[2]
        if not isinstance(data, Sum):
            problems[name] = f"{name} is a {type(data).__name__}, not a counter (Sum)"
            return
        delta = data.aggregation_temporality == AggregationTemporality.DELTA
        index = TRACKING_FIELDS[name]
        for point in data.data_points:
            attrs = point.attributes or {}
            flag, variant = attrs.get(_FLAG), attrs.get(_VARIANT)
            event = attrs.get(ATTR_TRACKING_EVENT)
            if not (isinstance(flag, str) and isinstance(variant, str) and isinstance(event, str)):
                continue  # not what track() records
            value = float(point.value)
            if not (math.isfinite(value) and value >= 0):
                problems[name] = f"{name} has a value of {value}"
                continue
            increase = value if delta else self._increase(prefix, attrs, point, value, seen)
            self._tracked.add((flag, variant, event), index, increase)

    def _increase(
        self,
        prefix: tuple[str, str, str],
        attrs: Attributes,
        point: NumberDataPoint,
        value: float,
        seen: dict[_SeriesKey, tuple[int, float]],
    ) -> float:
        """A cumulative counter point's increase since the last collection (all of it when
        the series is new or restarted: a new start time, or a value that went down)."""
        key = (*prefix, _attrs_key(attrs))
        start = point.start_time_unix_nano
        seen[key] = (start, value)
        last = self._last_counter.get(key)
        if last is not None and last[0] == start and value >= last[1]:
            return value - last[1]
        return value
