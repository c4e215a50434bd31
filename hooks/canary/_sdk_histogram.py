"""Pre-aggregated durations added into the OpenTelemetry SDK's histogram when a reader collects.

Why: one ``Histogram.record`` costs 7 to 10 µs (hashing the attributes, the exemplar filter, then
per reader an aggregation's lock and an exemplar reservoir's), and with several evaluating
threads they queue on those locks: with 8 threads, evaluation throughput fell to 0.31 times one
thread's. So ``MetricsHook`` counts each thread's durations in plain bucket arrays of its own
(``_shards.py``) and, at collection, this module adds what is new since the last collection
into the histogram's aggregations, as ``record`` would have left them: the same instrument, the
same attribute sets, the same buckets, every view and reader storage of the meter provider.
What a reader exports is unchanged, except exemplars (none are sampled; the Prometheus
exposition has none).

How: per (view-instrument match, attribute set), the totals already added are kept beside the
match and updated under the match's lock, in the same step as the aggregation (under its own
lock, as the SDK's ``aggregate`` does), so a fork (which waits for both, ``_forksafe``) never
separates them, and a collection that discards delta aggregations is continued correctly.
Adding is done outside ``MetricsHook``'s lock: no hook lock is held while waiting for an SDK
lock (the fork takes them in the other order).

This reads SDK internals (``_measurement_consumer``, reader storages, view-instrument matches,
``_ExplicitBucketHistogramAggregation``), as ``_forksafe`` does. :meth:`SdkHistogramSink.attach`
checks them and every view of the instrument; when anything differs (another SDK version, a
view with other buckets or another aggregation, not an SDK meter provider) it returns None and
the hook records every duration itself, as before.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from openfeature.contrib.hook.canary._shards import DurationTotal
from opentelemetry.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider

try:  # private SDK helpers: without them, the hook records each duration itself
    from opentelemetry.sdk.metrics._internal._view_instrument_match import _hash_attributes
    from opentelemetry.sdk.metrics._internal.aggregation import (
        _ExplicitBucketHistogramAggregation,
    )
except ImportError:  # pragma: no cover - other opentelemetry-sdk versions
    _hash_attributes = None  # type: ignore[assignment]
    _ExplicitBucketHistogramAggregation = None  # type: ignore[assignment,misc]

__all__ = ["SdkHistogramSink"]

log = logging.getLogger("openfeature_canary")

_AGGREGATION_FIELDS = ("_lock", "_value", "_sum", "_min", "_max", "_record_min_max", "_boundaries")


@dataclass(frozen=True)
class _Added:
    """What has been added into one aggregation key of one match: cumulative totals."""

    buckets: tuple[int, ...]
    sum: float
    count: int


class SdkHistogramSink:
    """Adds cumulative duration totals into an SDK histogram's aggregations (see module)."""

    def __init__(self, consumer: Any, instrument: Any, bounds: Sequence[float]) -> None:
        self._consumer = consumer
        self._instrument = instrument
        self._bounds = tuple(bounds)
        # Per match: what was added, by aggregation key (written under the match's lock).
        self._added: weakref.WeakKeyDictionary[Any, dict[Any, _Added]] = weakref.WeakKeyDictionary()
        self._skipped: weakref.WeakSet[Any] = weakref.WeakSet()

    @classmethod
    def attach(
        cls, meter_provider: MeterProvider, histogram: Histogram, bounds: Sequence[float]
    ) -> SdkHistogramSink | None:
        """A sink for ``histogram``, or None if the hook must record every duration itself."""
        if _hash_attributes is None or not isinstance(meter_provider, SdkMeterProvider):
            return None
        consumer = getattr(meter_provider, "_measurement_consumer", None)
        if not isinstance(getattr(consumer, "_reader_storages", None), Mapping):
            return None
        sink = cls(consumer, histogram, bounds)
        try:
            matches = [m for s in sink._storages() for m in sink._matches(s)]
        except AttributeError:
            return None
        return sink if all(sink._compatible(m) for m in matches) else None

    def _storages(self) -> tuple[Any, ...]:
        # Replaced whole (never mutated) when a reader is added or removed: safe to read.
        return tuple(self._consumer._reader_storages.values())

    def _matches(self, storage: Any) -> list[Any]:
        # The SDK creates a storage's matches for an instrument at its first measurement.
        matches: list[Any] = storage._get_or_init_view_instrument_match(self._instrument)
        return matches

    def _compatible(self, match: Any) -> bool:
        """Whether ``match`` aggregates explicit buckets with these bounds (as ``record`` would)."""
        agg = getattr(match, "_aggregation", None)
        view = getattr(match, "_view", None)
        return (
            type(agg) is _ExplicitBucketHistogramAggregation
            and all(hasattr(agg, name) for name in _AGGREGATION_FIELDS)
            and tuple(agg._boundaries) == self._bounds
            and hasattr(view, "_attribute_keys")
            and hasattr(match, "_lock")
            and hasattr(match, "_get_or_create_aggregation")
        )

    def add(self, totals: Iterable[DurationTotal]) -> None:
        """Add what ``totals`` (cumulative, per duration attribute set) hold beyond what was
        added before, into every reader's aggregations. Called by a collection's callback."""
        is_enabled = getattr(self._instrument, "_is_enabled", None)
        if is_enabled is not None and not is_enabled():  # a meter configurator disabled it
            return
        totals = tuple(totals)
        for storage in self._storages():
            for match in self._matches(storage):
                if self._compatible(match):
                    self._add_to_match(match, totals)
                elif match not in self._skipped:  # a reader added later, with other buckets
                    self._skipped.add(match)
                    log.warning(
                        "MetricsHook: a reader aggregates %s differently; its durations are "
                        "not exported to that reader",
                        getattr(self._instrument, "name", "the duration histogram"),
                    )

    def _add_to_match(self, match: Any, totals: tuple[DurationTotal, ...]) -> None:
        keys = match._view._attribute_keys
        grouped: dict[Any, DurationTotal] = {}
        for total in totals:
            attributes = dict(total.attributes)
            if keys is not None:  # a view keeping some attributes: several sets become one
                attributes = {k: v for k, v in attributes.items() if k in keys}
            key = _hash_attributes(attributes)
            group = grouped.get(key)
            if group is None:
                group = grouped[key] = DurationTotal(attributes)
            group.add_total(total)
        with match._lock:
            added = self._added.get(match)
            if added is None:
                added = self._added[match] = {}
            for key, group in grouped.items():
                before = added.get(key)
                count = group.count
                if count == 0 or (before is not None and count <= before.count):
                    continue  # nothing new (or an older reading than the last one added)
                agg = match._get_or_create_aggregation(key, group.attributes)
                if type(agg) is not _ExplicitBucketHistogramAggregation:  # pragma: no cover
                    continue  # checked by _compatible; an SDK change is not a crash
                _add_to_aggregation(agg, group, before)
                added[key] = _Added(tuple(group.buckets), group.sum, count)


def _add_to_aggregation(agg: Any, total: DurationTotal, before: _Added | None) -> None:
    """What ``aggregate`` does for each measurement, for the difference ``total - before``."""
    with agg._lock:
        value = agg._value
        if value is None:
            value = agg._value = [0] * len(total.buckets)
        if before is None:
            for i, n in enumerate(total.buckets):
                value[i] += n
            agg._sum += total.sum
        else:
            for i, (n, was) in enumerate(zip(total.buckets, before.buckets, strict=True)):
                value[i] += n - was
            agg._sum += total.sum - before.sum
        if agg._record_min_max:
            # All-time extremes: what a cumulative reader reports; a delta reader's min and
            # max are those since the start, not of the interval (none of ours reads them).
            agg._min = min(agg._min, total.min)
            agg._max = max(agg._max, total.max)
