"""Signals: what the policy reads about a flag's traffic, per cohort, over a window.

A :class:`SignalSource` answers ``read`` / ``read_between`` / ``count_beyond`` for the built-in
signals of spec §6 (``latency_p95_ms``, ``error_rate``, ``requests`` …; ``baseline_`` prefixed
for the ``off`` cohort). :class:`InProcessSignalSource` computes them from cumulative
OpenTelemetry snapshots of this process (windows are differences of snapshots; quantiles follow
Prometheus' ``histogram_quantile``), keeping the history the plan's longest window needs
(:func:`retention_for_plan`). In a fleet, every process's :class:`Publisher` writes its
:class:`Snapshot` to the state store and the decider's :class:`FleetSignalSource` reads the
merged traffic of all of them the same way.
"""

from __future__ import annotations

from openfeature_canary.plan._promql import validate_queries
from openfeature_canary.signals._counts import EMPTY_COHORT, CohortCounts, CountsReading
from openfeature_canary.signals._fleet import (
    FleetSignalSource,
    Publisher,
    new_process_id,
    snapshot_from_record,
    snapshot_record,
)
from openfeature_canary.signals._histogram import count_above, count_at_least, histogram_quantile
from openfeature_canary.signals._in_process import InProcessSignalSource
from openfeature_canary.signals._protocol import (
    DEFAULT_RETENTION_S,
    MetricsDataReader,
    SignalReading,
    SignalSource,
    retention_for_plan,
)
from openfeature_canary.signals._records import TriggerReading, trigger_readings
from openfeature_canary.signals._snapshot_reads import SnapshotReads
from openfeature_canary.signals._snapshots import CohortTotals, Snapshot
from openfeature_canary.signals.prometheus import (
    DEFAULT_PROMETHEUS_TIMEOUT_S,
    PrometheusNames,
    PrometheusSignalSource,
    default_queries,
)

__all__ = [
    "DEFAULT_PROMETHEUS_TIMEOUT_S",
    "DEFAULT_RETENTION_S",
    "EMPTY_COHORT",
    "CohortCounts",
    "CohortTotals",
    "CountsReading",
    "FleetSignalSource",
    "InProcessSignalSource",
    "MetricsDataReader",
    "PrometheusNames",
    "PrometheusSignalSource",
    "Publisher",
    "SignalReading",
    "SignalSource",
    "Snapshot",
    "SnapshotReads",
    "TriggerReading",
    "count_above",
    "count_at_least",
    "default_queries",
    "histogram_quantile",
    "new_process_id",
    "retention_for_plan",
    "snapshot_from_record",
    "snapshot_record",
    "trigger_readings",
    "validate_queries",
]
