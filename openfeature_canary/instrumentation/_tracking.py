"""What ``CanaryProvider.track()`` records: tracked events per flag, cohort and event name.

Four monotonic counters (docs/metrics.md), attributes ``feature_flag.key``,
``feature_flag.result.variant`` (``on``/``off``) and ``feature_flag.tracking.event``:

* ``feature_flag.tracking.events``: tracked events;
* ``feature_flag.tracking.valued``: those that carried a ``value`` (finite, >= 0);
* ``feature_flag.tracking.value``: the sum of those values;
* ``feature_flag.tracking.value_squares``: the sum of their squares (a mean's variance);

and ``canary.tracking.dropped`` by ``reason``: events (or values) that could not be attributed.

Why no OpenTelemetry call per event: a ``Counter.add`` with attributes costs about as much as a
whole flag evaluation and takes the SDK's locks. As ``MetricsHook`` does for evaluations, each
thread adds into plain Python numbers of its own (a *shard*: no lock, no contention, exact), and
the counters are *observable*: their callbacks add the shards up when a reader collects. An
ended thread's shard is folded into one shared total (``_perthread.PerThread``, the same
mechanism as the hook's), so short-lived threads cost nothing once gone.

A forked child starts from zero: its counts are its own, so a fleet that adds every process's
records up never counts the parent's events twice (the parent keeps reporting them).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Final

from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from openfeature_canary._forksafe import (
    HOOKS,
    hold_opentelemetry_across_fork,
    on_fork,
    renew_locks_after_fork,
)
from openfeature_canary._perthread import PerThread
from openfeature_canary.evidence import Tracked
from openfeature_canary.instrumentation._names import (
    ATTR_DROP_REASON,
    ATTR_FLAG_KEY,
    ATTR_TRACKING_EVENT,
    ATTR_VARIANT,
    METER_NAME,
    TRACKING_DROPPED_NAME,
    TRACKING_EVENTS_NAME,
    TRACKING_VALUE_NAME,
    TRACKING_VALUE_SQUARES_NAME,
    TRACKING_VALUED_NAME,
)

__all__ = ["DROP_REASONS", "TrackedKey", "TrackingRecorder", "tracking_recorder"]

log = logging.getLogger("openfeature_canary")

#: (flag key, variant, event name): one series of each tracking counter.
TrackedKey = tuple[str, str, str]

#: Why ``track()`` dropped an event (or only its value), as the ``reason`` attribute says.
DROP_REASONS: Final = {
    "not_ready": "the provider is not initialised or was shut down; tracked events dropped",
    "no_unit": "a tracked event without the unit its flag buckets by; dropped",
    "invalid_unit": "a tracked event whose unit cannot be bucketed (not text or a number, or "
    "text that is not valid Unicode); dropped",
    "invalid_value": "a tracked value that is not a finite number >= 0 (or is a bool); the "
    "event is counted without a value",
    "error": "track() failed unexpectedly; the event was dropped",
}


class _Cell:
    """One series' counts in one thread. The writer adds count, valued, total, squares in
    that order and readers read them in reverse, so a read never shows a value whose event
    it does not count."""

    __slots__ = ("count", "squares", "total", "valued")

    def __init__(self) -> None:
        self.count = 0
        self.valued = 0
        self.total = 0.0
        self.squares = 0.0


class _Shard:
    """One live thread's counts; only its thread writes."""

    __slots__ = ("cells", "dropped", "token")

    def __init__(self) -> None:
        self.cells: dict[TrackedKey, _Cell] = {}
        self.dropped: dict[str, int] = {}
        #: Weak reference to the thread's token (kept so its callback runs); None once folded.
        self.token: weakref.ref[Any] | None = None


def _read(cell: _Cell) -> tuple[int, int, float, float]:
    squares, total, valued = cell.squares, cell.total, cell.valued
    return cell.count, valued, total, squares


class TrackingRecorder:
    """Per-thread counts of tracked events, reported by observable counters at collection.

    One per meter provider (OpenTelemetry keeps only the first callbacks of an instrument
    name): get it with :func:`tracking_recorder`. :meth:`record` and :meth:`drop` are the hot
    path (no lock, no OpenTelemetry call); :meth:`totals` and :meth:`dropped` read the sums.
    """

    def __init__(self, meter_provider: MeterProvider) -> None:
        meter = meter_provider.get_meter(METER_NAME)
        self._threads = PerThread(_Shard, self._fold, "TrackingRecorder")
        self._folded: dict[TrackedKey, list[float]] = {}
        self._folded_dropped: dict[str, int] = {}
        self._warned: set[str] = set()
        self._warn_lock = threading.Lock()
        # The first callback of a collection reads every shard once; the other three report
        # the same totals, so one collection's four counters agree with each other.
        self._collected: dict[TrackedKey, Tracked] = {}
        for name, unit, what, index in (
            (TRACKING_EVENTS_NAME, "{event}", "Tracked events", 0),
            (TRACKING_VALUED_NAME, "{event}", "Tracked events that carried a value", 1),
            (TRACKING_VALUE_NAME, "", "Sum of the tracked events' values", 2),
            (TRACKING_VALUE_SQUARES_NAME, "", "Sum of the squares of the values", 3),
        ):
            meter.create_observable_counter(
                name,
                callbacks=[self._callback(index)],
                unit=unit,
                description=f"{what}, by flag, variant (cohort) and event name.",
            )
        meter.create_observable_counter(
            TRACKING_DROPPED_NAME,
            callbacks=[self._observe_dropped],
            unit="{event}",
            description="Tracked events (or values) track() could not attribute, by reason.",
        )
        hold_opentelemetry_across_fork(meter_provider)
        on_fork(
            self,
            level=HOOKS,
            before=TrackingRecorder._before_fork,
            after_in_parent=TrackingRecorder._after_fork_in_parent,
            after_in_child=TrackingRecorder._after_fork_in_child,
        )

    # ------------------------------------------------------------------ hot path

    def _shard(self) -> _Shard:
        try:
            shard: _Shard = self._threads.local.shard
        except AttributeError:
            shard = self._threads.join()
        return shard

    def record(self, flag_key: str, variant: str, event: str, value: float | None) -> None:
        """Count one tracked event of ``flag_key``'s ``variant`` cohort, with its value (a
        finite float >= 0, checked by the caller) or ``None``."""
        cells = self._shard().cells
        key = (flag_key, variant, event)
        cell = cells.get(key)
        if cell is None:
            cell = cells[key] = _Cell()
        cell.count += 1
        if value is not None:
            cell.valued += 1
            cell.total += value
            cell.squares += value * value

    def drop(self, reason: str) -> None:
        """Count one drop for ``reason`` (a :data:`DROP_REASONS` key) and say it once."""
        dropped = self._shard().dropped
        dropped[reason] = dropped.get(reason, 0) + 1
        if reason not in self._warned:
            with self._warn_lock:
                if reason in self._warned:
                    return
                self._warned.add(reason)
            log.warning(
                "openfeature-canary: %s (counted in %s{reason=%s}; said once per process)",
                DROP_REASONS.get(reason, reason),
                TRACKING_DROPPED_NAME,
                reason,
            )

    # ------------------------------------------------------------------ ended threads

    def _fold(self, shard: _Shard) -> None:
        """An ended thread's final counts into the total (``PerThread`` holds the lock)."""
        for key, cell in shard.cells.items():
            total = self._folded.setdefault(key, [0, 0, 0.0, 0.0])
            for i, v in enumerate(_read(cell)):
                total[i] += v
        for reason, n in shard.dropped.items():
            self._folded_dropped[reason] = self._folded_dropped.get(reason, 0) + n

    # ------------------------------------------------------------------ reading

    def totals(self) -> dict[TrackedKey, Tracked]:
        """Every series' cumulative counts: the ended threads' and each live thread's."""
        sums: dict[TrackedKey, list[float]] = {}
        threads = self._threads
        with threads.lock:
            for key, folded in self._folded.items():
                sums[key] = list(folded)
            for shard in threads.settle():
                for key, cell in tuple(shard.cells.items()):
                    total = sums.setdefault(key, [0, 0, 0.0, 0.0])
                    for i, v in enumerate(_read(cell)):
                        total[i] += v
        threads.fold_ended()  # a thread that ended while the lock was held
        return {k: Tracked(int(c), int(v), float(t), float(s)) for k, (c, v, t, s) in sums.items()}

    def dropped(self) -> dict[str, int]:
        """Drops so far per reason (cumulative)."""
        threads = self._threads
        with threads.lock:
            out = dict(self._folded_dropped)
            for shard in threads.settle():
                for reason, n in tuple(shard.dropped.items()):
                    out[reason] = out.get(reason, 0) + n
        threads.fold_ended()
        return out

    def _callback(self, index: int) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            if index == 0:
                self._collected = self.totals()
            return [
                Observation(
                    (t.count, t.valued, t.total, t.squares)[index],
                    {ATTR_FLAG_KEY: flag, ATTR_VARIANT: variant, ATTR_TRACKING_EVENT: event},
                )
                for (flag, variant, event), t in self._collected.items()
            ]

        return observe

    def _observe_dropped(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {ATTR_DROP_REASON: r}) for r, n in self.dropped().items()]

    # ------------------------------------------------------------------ fork

    def _before_fork(self, deadline: float) -> None:
        self._threads.before_fork(deadline)

    def _after_fork_in_parent(self) -> None:
        self._threads.after_fork_in_parent()

    def _after_fork_in_child(self) -> None:
        # The child's counts start at zero: the parent keeps reporting its own.
        self._threads.after_fork_in_child()
        self._threads.forget()
        self._warn_lock = threading.Lock()
        self._folded.clear()
        self._folded_dropped.clear()
        self._collected = {}
        self._warned.clear()


class _RecorderCache:
    """One recorder per meter provider, created on first use and kept as long as the provider
    (weakly keyed): two canary providers on one meter provider share its counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        renew_locks_after_fork(self, "_lock")
        self._by_provider: weakref.WeakKeyDictionary[MeterProvider, TrackingRecorder] = (
            weakref.WeakKeyDictionary()
        )

    def get(self, meter_provider: MeterProvider) -> TrackingRecorder:
        found = self._by_provider.get(meter_provider)
        if found is None:
            with self._lock:
                found = self._by_provider.get(meter_provider)
                if found is None:
                    found = self._by_provider[meter_provider] = TrackingRecorder(meter_provider)
        return found


_RECORDERS: Final = _RecorderCache()


def tracking_recorder(meter_provider: MeterProvider) -> TrackingRecorder:
    """The :class:`TrackingRecorder` of ``meter_provider`` (created once)."""
    return _RECORDERS.get(meter_provider)
