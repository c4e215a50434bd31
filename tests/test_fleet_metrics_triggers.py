"""Trigger readings on every process's ``/metrics``: the decider publishes them with its record.

Two processes share one file store, each with its own real OpenTelemetry SDK and Prometheus
reader; a real :class:`Fleet` with a real :class:`Publisher` decides in one of them. Whichever
process a scrape reaches shows the decider's readings; a process that does not decide
publishes none; a record with bad readings is refused, naming the field.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from test_fleet_metrics import FLAG, _record, _Scrape

from openfeature_canary.plan import RolloutPlan, load_plan
from openfeature_canary.policy import Fleet
from openfeature_canary.policy._fleet_metrics import FleetMetrics
from openfeature_canary.signals import (
    InProcessSignalSource,
    Publisher,
    TriggerReading,
    snapshot_from_record,
    trigger_readings,
)
from openfeature_canary.stores import FileStateStore

TTL = 8.0


@pytest.fixture
def plan(tmp_path: Path) -> RolloutPlan:
    path = tmp_path / "plan.toml"
    path.write_text(
        f"""
[flags.{FLAG}]
tick = "1s"

[[flags.{FLAG}.stages]]
percent = 100
duration = "10m"
window = "1m"
max_error_rate = 0.01

[[flags.{FLAG}.triggers]]
name = "p95_breach"
signal = "latency_p95_ms"
above = 300
"""
    )
    return load_plan(path)


@pytest.fixture
def scrapes() -> Iterator[tuple[_Scrape, _Scrape]]:
    pair = (_Scrape(), _Scrape())
    yield pair
    for s in pair:
        s.provider.shutdown()


def _fleet(store: FileStateStore, process_id: str, *, decide: bool) -> Fleet:
    publisher = Publisher(InProcessSignalSource(InMemoryMetricReader()), store, process_id)
    return Fleet(store, process_id, publisher=publisher, decide=decide, lease_ttl_s=TTL)


def _metrics(plan: RolloutPlan, store: FileStateStore, scrape: _Scrape) -> FleetMetrics:
    return FleetMetrics(plan, store, scrape.provider, list, every_s=1.0)


def test_every_process_shows_the_deciders_trigger_readings(
    plan: RolloutPlan, tmp_path: Path, scrapes: tuple[_Scrape, _Scrape]
) -> None:
    path = tmp_path / "state.json"
    decider_store, other_store = FileStateStore(path), FileStateStore(path)
    decider = _fleet(decider_store, "web-1", decide=True)
    other = _fleet(other_store, "web-2", decide=False)
    decider.readings = lambda: {
        (FLAG, "p95_breach"): TriggerReading(412.5, True, 10.0),
        (FLAG, "lag"): TriggerReading(None, False, 10.0),
    }
    # The non-decider's own (stale) readings must never reach the store.
    other.readings = lambda: {(FLAG, "p95_breach"): TriggerReading(1.0, False, 10.0)}
    assert decider.round(10.0) is True  # published before it held the lease: no readings yet
    assert other.round(10.0) is False
    assert "triggers" not in decider_store.records()["web-1"][1]
    assert decider.round(11.0) is True
    other.round(11.0)
    records = decider_store.records()
    assert "triggers" not in records["web-2"][1]
    assert trigger_readings(records["web-1"][1])[(FLAG, "p95_breach")].value == 412.5

    shown = []
    for store, scrape in zip((decider_store, other_store), scrapes, strict=True):
        _metrics(plan, store, scrape).refresh(11.0)
        value = scrape.value("canary_fleet_trigger_value", trigger="p95_breach")
        breached = scrape.value("canary_trigger_breached", trigger="p95_breach")
        # A reading without a value: breached 0, and no value series (no data is not 0).
        no_data = (
            scrape.value("canary_fleet_trigger_value", trigger="lag"),
            scrape.value("canary_trigger_breached", trigger="lag"),
        )
        shown.append((value, breached, no_data))
    assert shown == [(412.5, 1.0, (None, 0.0))] * 2


def test_a_record_of_a_process_that_does_not_hold_the_lease_is_ignored(
    plan: RolloutPlan, tmp_path: Path, scrapes: tuple[_Scrape, _Scrape]
) -> None:
    store = FileStateStore(tmp_path / "state.json")
    record = _record((10, 0), (100, 0))
    record["triggers"] = [
        {"flag": FLAG, "trigger": "p95_breach", "value": 500.0, "breached": 1, "at": 1.0}
    ]
    store.publish("old-decider", record, 1.0)
    assert store.try_lease("web-1", TTL, 1.0)  # someone else decides, with no readings yet
    store.publish("web-1", _record((1, 0), (1, 0)), 1.0)
    metrics = _metrics(plan, store, scrapes[0])
    metrics.refresh(1.0)
    assert scrapes[0].value("canary_fleet_trigger_value", trigger="p95_breach") is None
    assert scrapes[0].value("canary_trigger_breached", trigger="p95_breach") is None
    # The old decider takes the lease back: its readings are the fleet's again.
    store.release_lease("web-1")
    assert store.try_lease("old-decider", TTL, 2.0)
    metrics.refresh(2.0)
    assert scrapes[0].value("canary_fleet_trigger_value", trigger="p95_breach") == 500.0
    assert scrapes[0].value("canary_trigger_breached", trigger="p95_breach") == 1


@pytest.mark.parametrize(
    ("triggers", "detail"),
    [
        ("x", "record.triggers: expected a list, got str"),
        ([{"flag": FLAG}], "record.triggers[0]: missing trigger, value, breached, at"),
        (
            [{"flag": FLAG, "trigger": "t", "value": "1", "breached": 0, "at": 1}],
            "record.triggers[0].value: expected a number, got str",
        ),
        (
            [{"flag": FLAG, "trigger": "t", "value": 1, "breached": 2, "at": 1}],
            "record.triggers[0].breached: 2 is not 0 or 1",
        ),
        (
            [{"flag": FLAG, "trigger": "t", "value": None, "breached": 1, "at": 1}],
            "record.triggers[0].breached: 1 without a value",
        ),
        (
            [{"flag": FLAG, "trigger": "", "value": 1, "breached": 0, "at": 1}],
            "record.triggers[0].trigger: expected 1 to 256 characters, got 0",
        ),
        (
            [
                {"flag": FLAG, "trigger": f"t{i}", "value": 1, "breached": 0, "at": 1}
                for i in range(513)
            ],
            "record.triggers: 513 readings (at most 512)",
        ),
    ],
)
def test_a_bad_triggers_record_is_refused_naming_the_field(
    plan: RolloutPlan,
    tmp_path: Path,
    scrapes: tuple[_Scrape, _Scrape],
    caplog: pytest.LogCaptureFixture,
    triggers: Any,
    detail: str,
) -> None:
    record = _record((10, 0), (100, 0))
    record["triggers"] = triggers
    with pytest.raises(ValueError) as info:
        trigger_readings(record)
    assert str(info.value) == detail
    with pytest.raises(ValueError) as info:  # the whole record: the decider refuses it too
        snapshot_from_record(record)
    assert str(info.value) == detail
    store = FileStateStore(tmp_path / "state.json")
    store.publish("web-1", record, 1.0)
    assert store.try_lease("web-1", TTL, 1.0)
    with caplog.at_level(logging.WARNING, logger="openfeature_canary"):
        _metrics(plan, store, scrapes[0]).refresh(1.0)
    assert scrapes[0].value("canary_trigger_breached") is None
    assert detail in caplog.text
