"""The fleet view → ``/metrics`` exposition, with the real OpenTelemetry SDK and Prometheus reader.

Each process's record in the store (as ``Publisher`` writes it) and the persisted states are
the input; the text a Prometheus scrape gets is checked, series by series.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType as M
from typing import Any

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, generate_latest

from openfeature_canary.errors import StateStoreError
from openfeature_canary.evidence import Tracked
from openfeature_canary.plan import RolloutPlan, load_plan
from openfeature_canary.policy._fleet_metrics import FleetMetrics, gate_thresholds
from openfeature_canary.signals import snapshot_from_record, snapshot_record
from openfeature_canary.signals._snapshots import CohortTotals, Snapshot
from openfeature_canary.state import LOG_LIMIT, LogEntry, RolloutState, Status
from openfeature_canary.stores import MemoryStateStore

FLAG = "checkout"
BOUNDS = (100.0, 200.0)


@pytest.fixture
def plan(tmp_path: Path) -> RolloutPlan:
    path = tmp_path / "plan.toml"
    path.write_text(
        f"""
[flags.{FLAG}]
tick = "1s"

[[flags.{FLAG}.stages]]
percent = 5
duration = "10m"
window = "1m"
max_p95_ms = 150
max_error_rate = 0.01

[[flags.{FLAG}.stages]]
percent = 100
duration = "1h"
window = "1m"
max_error_rate = 0.02

[[flags.{FLAG}.triggers]]
name = "p95_breach"
signal = "latency_p95_ms"
above = 300
"""
    )
    return load_plan(path)


class _Scrape:
    """A real Prometheus reader on its own registry: ``text()`` is what a scrape gets."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.provider = MeterProvider(
            metric_readers=[PrometheusMetricReader(registry=self.registry)]
        )

    def text(self) -> str:
        return generate_latest(self.registry).decode()

    def value(self, name: str, **labels: str) -> float | None:
        """The one sample of ``name`` whose labels include ``labels`` (None: no such)."""
        found = []
        for line in self.text().splitlines():
            match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
            if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
                found.append(float(match.group(2)))
        assert len(found) <= 1, (name, labels, found)
        return found[0] if found else None


@pytest.fixture
def scrape() -> Iterator[_Scrape]:
    s = _Scrape()
    yield s
    s.provider.shutdown()


def _record(canary: tuple[int, int], baseline: tuple[int, int]) -> dict[str, Any]:
    """A process's record: (requests, 5xx) per cohort, the requests split over two buckets."""

    def totals(n: int, errors: int) -> CohortTotals:
        return CohortTotals(errors, ((BOUNDS, (n // 2, n - n // 2, 0)),))

    requests = {(FLAG, "on"): totals(*canary), (FLAG, "off"): totals(*baseline)}
    return snapshot_record(Snapshot(0.0, M(requests), M({}), M({})))


def _metrics(
    plan: RolloutPlan,
    store: Any,
    scrape: _Scrape,
    states: list[RolloutState] | None = None,
) -> FleetMetrics:
    return FleetMetrics(
        plan,
        store,
        scrape.provider,
        lambda: states or [],
        every_s=1.0,
    )


def test_requests_are_summed_over_every_process_record(plan: RolloutPlan, scrape: _Scrape) -> None:
    store = MemoryStateStore()
    store.publish("web-1", _record((10, 1), (200, 2)), 0.0)
    store.publish("web-2", _record((7, 0), (150, 3)), 0.0)
    metrics = _metrics(plan, store, scrape)
    metrics.refresh(0.0)
    series = "canary_fleet_requests_total"
    assert scrape.value(series, feature_flag_key=FLAG, cohort="canary") == 17
    assert scrape.value(series, feature_flag_key=FLAG, cohort="baseline") == 350
    assert scrape.value("canary_fleet_errors_total", cohort="canary") == 1
    assert scrape.value("canary_fleet_errors_total", cohort="baseline") == 5
    # No process label: one series per flag and cohort, whoever published.
    assert "process=" not in scrape.text()


def test_a_dead_process_keeps_what_it_contributed(plan: RolloutPlan, scrape: _Scrape) -> None:
    store = MemoryStateStore()
    store.publish("web-1", _record((10, 1), (100, 0)), 0.0)
    store.publish("web-2", _record((5, 0), (50, 0)), 0.0)
    metrics = _metrics(plan, store, scrape)
    metrics.refresh(0.0)
    store.forget("web-2")  # its heartbeat grew old: the decider dropped its record
    store.publish("web-1", _record((12, 1), (120, 0)), 1.0)
    metrics.refresh(1.0)
    assert scrape.value("canary_fleet_requests_total", cohort="canary") == 17
    assert scrape.value("canary_fleet_requests_total", cohort="baseline") == 170


class _TornStore(MemoryStateStore):
    """Leaves one record out of one read, as a torn file read does."""

    hide: str | None = None

    def records(self) -> dict[str, tuple[float, Mapping[str, Any]]]:
        found = super().records()
        if self.hide is not None:
            found.pop(self.hide, None)
            self.hide = None
        return found


def test_a_record_missing_from_one_read_is_not_counted_twice(
    plan: RolloutPlan, scrape: _Scrape
) -> None:
    store = _TornStore()
    store.publish("web-1", _record((10, 0), (100, 0)), 0.0)
    store.publish("web-2", _record((5, 0), (50, 0)), 0.0)
    metrics = _metrics(plan, store, scrape)
    metrics.refresh(0.0)
    store.hide = "web-2"
    metrics.refresh(1.0)
    assert scrape.value("canary_fleet_requests_total", cohort="canary") == 15
    store.publish("web-2", _record((6, 0), (60, 0)), 2.0)
    metrics.refresh(2.0)
    assert scrape.value("canary_fleet_requests_total", cohort="canary") == 16


def test_the_view_is_refreshed_once_per_period(plan: RolloutPlan, scrape: _Scrape) -> None:
    store = MemoryStateStore()
    store.publish("web-1", _record((4, 0), (40, 0)), 0.0)
    metrics = _metrics(plan, store, scrape)
    metrics.refresh(10.0)
    store.publish("web-1", _record((6, 0), (60, 0)), 10.5)
    metrics.refresh(10.5)  # within every_s: the collection still shows the view of 10.0
    assert scrape.value("canary_fleet_requests_total", cohort="canary") == 4
    metrics.refresh(11.0)
    assert scrape.value("canary_fleet_requests_total", cohort="canary") == 6


class _DownStore(MemoryStateStore):
    down = False

    def records(self) -> dict[str, tuple[float, Mapping[str, Any]]]:
        if self.down:
            raise StateStoreError("redis://127.0.0.1:1: connection refused")
        return super().records()


def test_a_store_that_cannot_be_read_keeps_the_last_view(
    plan: RolloutPlan, scrape: _Scrape
) -> None:
    store = _DownStore()
    store.publish("web-1", _record((3, 0), (30, 0)), 0.0)
    metrics = _metrics(plan, store, scrape)
    metrics.refresh(0.0)
    store.down = True
    metrics.refresh(5.0)
    assert scrape.value("canary_fleet_requests_total", cohort="canary") == 3


def test_rollbacks_come_from_the_persisted_log(plan: RolloutPlan, scrape: _Scrape) -> None:
    state = RolloutState(flag_key=FLAG).evolve(
        LogEntry(1.0, "start", "operator"),
        LogEntry(5.0, "rollback", "error_rate_breach", rule="gate:error_ratio"),
        LogEntry(9.0, "reset", "operator"),
        LogEntry(12.0, "start", "operator"),
        LogEntry(20.0, "rollback", "error_rate_breach", rule="gate:error_ratio"),
        LogEntry(30.0, "rollback", "p95_breach", rule="trigger:p95_breach"),
        status=Status.ROLLED_BACK,
    )
    metrics = _metrics(plan, MemoryStateStore(), scrape, states=[state])
    metrics.refresh(0.0)
    series = "canary_fleet_rollbacks_total"
    assert scrape.value(series, feature_flag_key=FLAG, reason="error_rate_breach") == 2
    assert scrape.value(series, feature_flag_key=FLAG, reason="p95_breach") == 1


def test_rollbacks_do_not_go_down_when_the_log_drops_old_entries(
    plan: RolloutPlan, scrape: _Scrape
) -> None:
    rolled_back = RolloutState(flag_key=FLAG).evolve(
        LogEntry(5.0, "rollback", "p95_breach"), status=Status.ROLLED_BACK
    )
    states = [rolled_back]
    metrics = _metrics(plan, MemoryStateStore(), scrape, states=states)
    metrics.refresh(0.0)
    # LOG_LIMIT later entries push the rollback out of the persisted log.
    states[0] = rolled_back.evolve(
        *(LogEntry(10.0 + i, "extend", "operator") for i in range(LOG_LIMIT))
    )
    assert not any(e.action == "rollback" for e in states[0].log)
    metrics.refresh(1.0)
    assert scrape.value("canary_fleet_rollbacks_total", reason="p95_breach") == 1


def test_gate_lines_come_from_the_plan(plan: RolloutPlan, scrape: _Scrape) -> None:
    assert gate_thresholds(plan) == {
        (FLAG, 1, "p95_ms"): 150.0,
        (FLAG, 1, "error_rate"): 0.01,
        (FLAG, 2, "error_rate"): 0.02,
    }
    _metrics(plan, MemoryStateStore(), scrape)  # shown before any refresh: the plan's
    series = "canary_gate_threshold"
    assert scrape.value(series, stage="1", signal="p95_ms") == 150
    assert scrape.value(series, stage="1", signal="error_rate") == 0.01
    assert scrape.value(series, stage="2", signal="error_rate") == 0.02
    assert scrape.value(series, stage="2", signal="p95_ms") is None


def test_tracked_events_are_summed_over_every_process_record(
    plan: RolloutPlan, scrape: _Scrape
) -> None:
    def with_events(record: dict[str, Any], on: int, off: int) -> dict[str, Any]:
        snap = snapshot_from_record(record)
        tracked = {
            (FLAG, "on", "clicked"): Tracked(on),
            (FLAG, "off", "clicked"): Tracked(off),
        }
        return snapshot_record(replace(snap, tracked=M(tracked)))

    store = MemoryStateStore()
    store.publish("web-1", with_events(_record((10, 0), (200, 0)), 3, 61), 0.0)
    store.publish("web-2", with_events(_record((7, 0), (150, 0)), 2, 44), 0.0)
    metrics = _metrics(plan, store, scrape)
    metrics.refresh(0.0)
    series = "canary_fleet_tracked_total"
    assert scrape.value(series, feature_flag_key=FLAG, cohort="canary", event="clicked") == 5
    assert scrape.value(series, feature_flag_key=FLAG, cohort="baseline", event="clicked") == 105
