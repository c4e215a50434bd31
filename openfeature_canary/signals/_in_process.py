"""Windowed signals (spec §6) from OpenTelemetry metrics: the numbers the policy judges.

A :class:`SignalSource` answers "what was the canary's P95 over the last minute?" with a
:class:`SignalReading` that carries the value *and* the number of samples behind it, so that a
gate can tell "inconclusive" (no value, or too few samples) from "pass".

:class:`InProcessSignalSource` reads the application's own ``MeterProvider`` through an
``InMemoryMetricReader``: each :meth:`~InProcessSignalSource.snapshot` stores the cumulative
state at the caller's time, and a window is the difference of two snapshots::

    reader = InMemoryMetricReader()            # CUMULATIVE temporality, the default
    provider = MeterProvider(metric_readers=[reader], views=[...])
    source = InProcessSignalSource(reader)
    source.snapshot(clock.now())               # every policy tick
    source.read("dataservice-read-canary", "latency_p95_ms", 60, clock.now())

Quantiles follow Prometheus' ``histogram_quantile`` (:func:`histogram_quantile`); counter and
histogram resets follow ``increase()``. ``docs/signals.md`` has the full rules.
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType
from typing import TYPE_CHECKING

from opentelemetry.metrics import MeterProvider, get_meter_provider

from openfeature_canary.instrumentation._instruments import INSTRUMENTS
from openfeature_canary.signals._snapshots import (
    Accumulator,
    Snapshot,
)

if TYPE_CHECKING:
    from openfeature_canary.plan import RolloutPlan
from openfeature_canary.signals._protocol import (
    MetricsDataReader,
)
from openfeature_canary.signals._snapshot_reads import SnapshotReads

__all__ = ["InProcessSignalSource"]


class InProcessSignalSource(SnapshotReads):
    """Signals from this process's ``MeterProvider``, through an ``InMemoryMetricReader``.

    Use it for a single process (the demo, tests, one worker); for a fleet, each process
    publishes its snapshots (``Publisher``) and the decider reads a ``FleetSignalSource`` (or
    a Prometheus source). The reader should use CUMULATIVE temporality
    (``InMemoryMetricReader()``'s default); DELTA also works, because every collection becomes
    an increase either way. Histograms must use explicit bucket bounds (a ``View`` with
    ``ExplicitBucketHistogramAggregation``) with every plan threshold as a bound, so "P95 > T"
    is exact. Thread-safe.

    Snapshots hold only the instruments of spec §6. They are kept for ``retention_s`` (plus the
    one anchoring a window of exactly that length), at most ``max_snapshots`` of them. Given
    ``plan``, the retention is what the plan's reads need (:func:`retention_for_plan`: its
    longest window plus two ticks) instead of :data:`DEFAULT_RETENTION_S`; an explicit
    ``retention_s`` must then cover it. Once a snapshot has been dropped, a read whose window
    starts before the oldest snapshot kept has no value and an ``error`` saying "not enough
    data", never a value over a shorter span than asked.

    ``meter_provider`` is the provider ``reader`` is attached to (``None``: OpenTelemetry's
    global one at each snapshot): the units its ``record_request(..., unit=)`` and
    ``CanaryMiddleware`` logged for 5xx responses fill ``counts_between``'s ``error_units``
    (docs/signals.md, "Erroring units"). A span whose 5xx were not all logged with a unit, or
    that needs entries the bounded log dropped, has ``error_units=None``.

    >>> from opentelemetry.sdk.metrics import MeterProvider
    >>> from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    >>> reader = InMemoryMetricReader()
    >>> provider = MeterProvider(metric_readers=[reader])
    >>> source = InProcessSignalSource(reader)
    >>> source.snapshot(0.0)
    >>> source.read("my-flag", "requests", 60, 0.0).value is None   # no span yet
    True
    """

    _WHAT = "in-process metric reader"

    def __init__(
        self,
        reader: MetricsDataReader,
        *,
        retention_s: float | None = None,
        max_snapshots: int = 10_000,
        plan: RolloutPlan | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        super().__init__(retention_s=retention_s, max_snapshots=max_snapshots, plan=plan)
        self._reader = reader
        self._meter_provider = meter_provider
        self._acc = Accumulator()

    def snapshot(self, now: float) -> None:
        """Collect from the reader once and store the cumulative state at ``now``.

        Raises ``SignalSourceError`` when the reader fails: nothing is stored, and until a
        snapshot succeeds again every reading that reaches ``now`` carries the error.
        Raises ``ValueError`` when ``now`` is before the newest snapshot.
        """
        super().snapshot(now)

    def flag_keys(self) -> tuple[str, ...]:
        """Flag keys seen so far in request durations or ledger mismatches, sorted."""
        with self._lock:
            return tuple(sorted(self._acc.flags))

    def _collect(self, now: float) -> Snapshot:
        snap = self._acc.ingest(self._reader.get_metrics_data(), now)
        # A request logged between the two reads falls on two sides of this snapshot: both
        # spans then read as unknown (``UnitLog.between`` checks the counts), never wrong.
        provider = self._meter_provider or get_meter_provider()
        units = INSTRUMENTS.get(provider).units.logs()
        return replace(snap, units=MappingProxyType(units)) if units else snap
