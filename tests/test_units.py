"""Evidence at the unit that was randomised (issue 15 §3): the targeting key of a 5xx reaches
the stage evidence hashed, once per unit, through the public API and the fleet records.

Real: the OpenFeature client, CanaryProvider and its MetricsHook, the OpenTelemetry SDK,
CanaryMiddleware (called as ASGI), the file store and its fleet records. Virtual: the clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.contrib.hook.canary import MetricsHook
from openfeature.contrib.provider.canary import CanaryProvider
from openfeature.evaluation_context import EvaluationContext
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from openfeature_canary import FileStateStore, ManualClock, load_plan
from openfeature_canary.instrumentation import (
    CanaryMiddleware,
    Message,
    Receive,
    Scope,
    Send,
    current_unit,
    current_variant,
    record_request,
    variant_scope,
)
from openfeature_canary.instrumentation._units import UNIT_LOG_CAP
from openfeature_canary.policy._gates import current_evidence, fold
from openfeature_canary.signals import FleetSignalSource, InProcessSignalSource, Publisher
from openfeature_canary.signals._counts import unit_digest
from openfeature_canary.signals._records import snapshot_from_record
from openfeature_canary.telemetry import setup_telemetry

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "canary_plan.toml"
FLAG = "dataservice-read-canary"
START = 1_800_000_000.0


@pytest.fixture
def cleanup() -> Iterator[list[Any]]:
    closers: list[Any] = []
    yield closers
    for close in reversed(closers):
        close()
    api.clear_hooks()
    api.shutdown()


def _user_in(client: OpenFeatureClient, variant: str, prefix: str) -> str:
    """The first ``prefix-i`` the flag buckets into ``variant`` (outside any request scope)."""
    for i in range(10_000):
        user = f"{prefix}-{i}"
        with variant_scope():
            details = client.get_boolean_details(FLAG, False, EvaluationContext(user))
        if details.variant == variant:
            return user
    raise AssertionError(f"no {prefix} user in {variant}")


def _serve(client: OpenFeatureClient, mp: Any, user: str, status: int) -> None:
    """One request of ``user`` handled by hand: evaluate, then record with the unit."""
    with variant_scope():
        client.get_boolean_value(FLAG, False, EvaluationContext(user))
        record_request(
            FLAG, current_variant(FLAG), 0.02, status, meter_provider=mp, unit=current_unit(FLAG)
        )


def test_a_unit_failing_half_its_requests_counts_once_in_the_stage_evidence(
    tmp_path: Path, cleanup: list[Any]
) -> None:
    plan = load_plan(EXAMPLE)
    clock = ManualClock(start=START)
    telemetry = setup_telemetry(plan)
    cleanup.append(telemetry.shutdown)
    state_path = tmp_path / "state.json"
    provider = CanaryProvider(
        plan, store=f"file://{state_path}", clock=clock, telemetry=telemetry, background=False
    )
    cleanup.append(provider.shutdown)
    api.set_provider_and_wait(provider)
    client = api.get_client()
    mp = telemetry.meter_provider
    bad = _user_in(client, "off", "flaky")  # a baseline user: no canary line is at stake
    ctl = provider.controller(FLAG)
    ctl.start()
    ticks = 30
    for tick in range(ticks):
        for i in range(200):
            _serve(client, mp, f"user-{i}", 200)
        _serve(client, mp, bad, 500)  # half of its requests fail, tick after tick
        _serve(client, mp, bad, 200)
        if tick % 10 == 0:
            _serve(client, mp, f"user-{tick}", 503)  # a few other units fail once
        clock.advance(plan.flag(FLAG).tick_s)
        ctl.tick()

    state = ctl.state
    assert state.stage == 1
    evidence = current_evidence(state.stage, state.since, state.evidence)
    # Its 5xx are all in the evidence's request counts, its unit only once.
    assert evidence.baseline.errors + evidence.canary.errors >= ticks
    units = set(evidence.error_units[0]) | set(evidence.error_units[1])
    assert unit_digest(bad) in evidence.error_units[1]
    assert len(units) <= 1 + 3
    assert evidence.baseline.errors > len(evidence.error_units[1])
    # What the state file keeps is the hash, never the raw id.
    text = state_path.read_text("utf-8")
    assert unit_digest(bad) in text
    assert bad not in text and "user-1" not in text


def test_canary_middleware_logs_the_unit_the_hook_remembered_for_a_5xx(
    cleanup: list[Any],
) -> None:
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader])
    cleanup.append(mp.shutdown)
    canary = CanaryProvider(load_plan(EXAMPLE))
    cleanup.append(canary.shutdown)
    api.set_provider_and_wait(canary)
    api.add_hooks([MetricsHook(mp)])
    client = api.get_client()
    canary.controller(FLAG).start()
    source = InProcessSignalSource(reader, meter_provider=mp)
    source.snapshot(0.0)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        user = scope["path"].rsplit("/", 1)[-1]
        client.get_boolean_value(FLAG, False, EvaluationContext(user))
        status = 500 if user.startswith("flaky") else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = CanaryMiddleware(app, flag_key=FLAG, meter_provider=mp)

    async def call(user: str) -> None:
        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            return None

        scope = {"type": "http", "method": "GET", "path": f"/dash/{user}", "headers": []}
        await middleware(scope, receive, send)

    flaky = [f"flaky-{i}" for i in range(40)]

    async def traffic() -> None:
        for _ in range(5):  # every flaky user fails five times
            for user in flaky:
                await call(user)
            for i in range(50):
                await call(f"user-{i}")

    asyncio.run(traffic())
    source.snapshot(10.0)
    reading = source.counts_between(FLAG, 0.0, 10.0)
    c, b = reading.canary, reading.baseline
    assert c.errors + b.errors == 5 * len(flaky)
    assert c.error_units is not None and b.error_units is not None
    assert c.error_units | b.error_units == {unit_digest(u) for u in flaky}
    assert len(c.error_units) + len(b.error_units) == len(flaky)


def test_a_span_beyond_the_cap_is_unknown_and_the_next_one_known_again(
    cleanup: list[Any],
) -> None:
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader])
    cleanup.append(mp.shutdown)
    source = InProcessSignalSource(reader, meter_provider=mp)
    source.snapshot(0.0)
    for i in range(UNIT_LOG_CAP + 1):
        record_request(FLAG, "on", 0.01, 500, meter_provider=mp, unit=f"u-{i}")
    record_request(FLAG, "off", 0.01, 500, meter_provider=mp, unit="b-1")
    source.snapshot(10.0)
    over = source.counts_between(FLAG, 0.0, 10.0)
    assert over.canary.errors == UNIT_LOG_CAP + 1
    assert over.canary.error_units is None  # unknown: the gate counts requests, not fewer units
    assert over.baseline.error_units == {unit_digest("b-1")}
    for _ in range(3):
        record_request(FLAG, "on", 0.01, 500, meter_provider=mp, unit="again")
    record_request(FLAG, "on", 0.01, 200, meter_provider=mp, unit="fine")
    source.snapshot(20.0)
    after = source.counts_between(FLAG, 10.0, 20.0)
    assert after.canary.errors == 3
    assert after.canary.error_units == {unit_digest("again")}
    assert after.baseline.error_units == frozenset()


def test_a_5xx_without_its_unit_makes_the_span_unknown(cleanup: list[Any]) -> None:
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader])
    cleanup.append(mp.shutdown)
    source = InProcessSignalSource(reader, meter_provider=mp)
    source.snapshot(0.0)
    record_request(FLAG, "on", 0.01, 500, meter_provider=mp, unit="known")
    record_request(FLAG, "on", 0.01, 500, meter_provider=mp)  # no unit given
    source.snapshot(10.0)
    assert source.counts_between(FLAG, 0.0, 10.0).canary.error_units is None


def test_error_units_reach_the_decider_through_the_fleet_records(tmp_path: Path) -> None:
    plan = load_plan(EXAMPLE)
    flag = plan.flag(FLAG)
    state_path = tmp_path / "state.json"
    store = FileStateStore(state_path)
    processes = []
    for name in ("web-1", "web-2"):
        reader = InMemoryMetricReader()
        mp = MeterProvider(metric_readers=[reader])
        source = InProcessSignalSource(reader, meter_provider=mp)
        processes.append((mp, Publisher(source, store, name)))
    decider = FleetSignalSource(store)
    for _, publisher in processes:
        publisher.publish(0.0)
    decider.snapshot(0.0)

    evidence = current_evidence(1, 0.0, None)
    for t in (10.0, 20.0, 30.0):
        for k, (mp, publisher) in enumerate(processes):
            for i in range(100):
                record_request(FLAG, "off", 0.02, 200, meter_provider=mp, unit=f"u-{i}")
            for i in range(5):
                record_request(FLAG, "on", 0.02, 200, meter_provider=mp, unit=f"c-{i}")
            # The same flaky user reaches both processes and fails on each, every tick.
            record_request(FLAG, "off", 0.02, 500, meter_provider=mp, unit="flaky-user")
            record_request(FLAG, "off", 0.02, 500, meter_provider=mp, unit=f"once-{k}-{t}")
            publisher.publish(t)
        decider.snapshot(t)
        reading = decider.counts_between(FLAG, t - 10.0, t)
        assert reading.baseline.errors == 4
        assert reading.baseline.error_units == {
            unit_digest("flaky-user"),
            unit_digest(f"once-0-{t}"),
            unit_digest(f"once-1-{t}"),
        }
        assert reading.canary.error_units == frozenset()
        evidence = fold(flag, evidence, reading)
    assert evidence.baseline.errors == 12
    assert len(evidence.error_units[1]) == 1 + 6  # the flaky user once, each one-off once
    assert unit_digest("flaky-user") in evidence.error_units[1]
    # The records in the store hold hashes only.
    written = "".join(p.read_text("utf-8") for p in tmp_path.rglob("*") if p.is_file())
    assert unit_digest("flaky-user") in written
    assert "flaky-user" not in written and "once-0" not in written
    for mp, _ in processes:
        mp.shutdown()


def test_the_hook_remembers_the_bucket_by_attribute_as_the_unit(cleanup: list[Any]) -> None:
    plan = load_plan(EXAMPLE)
    flags = dict(plan.flags)
    flags[FLAG] = replace(plan.flag(FLAG), bucket_by="tenant")
    plan = replace(plan, flags=flags)
    mp = MeterProvider(metric_readers=[InMemoryMetricReader()])
    cleanup.append(mp.shutdown)
    canary = CanaryProvider(plan)
    cleanup.append(canary.shutdown)
    api.set_provider_and_wait(canary)
    api.add_hooks([MetricsHook(mp)])
    canary.controller(FLAG).start()
    client = api.get_client()
    with variant_scope():
        details = client.get_boolean_details(
            FLAG, False, EvaluationContext("request-1", {"tenant": "acme"})
        )
        assert details.flag_metadata["bucket_by"] == "tenant"
        assert current_unit(FLAG) == "acme"
    with variant_scope():  # no unit to bucket by: the default, and no unit remembered
        client.get_boolean_details(FLAG, False, EvaluationContext("request-2"))
        assert current_unit(FLAG) is None


def test_a_process_that_logged_past_the_cap_between_reads_makes_the_fleet_span_unknown(
    tmp_path: Path,
) -> None:
    store = FileStateStore(tmp_path / "state.json")
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader])
    publisher = Publisher(InProcessSignalSource(reader, meter_provider=mp), store, "web-1")
    decider = FleetSignalSource(store)
    publisher.publish(0.0)
    decider.snapshot(0.0)
    for i in range(UNIT_LOG_CAP + 10):
        record_request(FLAG, "on", 0.01, 500, meter_provider=mp, unit=f"u-{i}")
    publisher.publish(10.0)
    decider.snapshot(10.0)
    assert decider.counts_between(FLAG, 0.0, 10.0).canary.error_units is None
    record_request(FLAG, "on", 0.01, 500, meter_provider=mp, unit="next")
    publisher.publish(20.0)
    decider.snapshot(20.0)
    assert decider.counts_between(FLAG, 10.0, 20.0).canary.error_units == {unit_digest("next")}
    mp.shutdown()


@pytest.mark.parametrize(
    ("units", "message"),
    [
        ("x", "record.units: expected a list"),
        ([{"flag": FLAG, "variant": "on", "total": 1}], r"record.units\[0\]: missing recent"),
        (
            [{"flag": FLAG, "variant": "on", "total": 1, "recent": [3]}],
            r"record.units\[0\].recent\[0\]: expected a unit digest or null",
        ),
        (
            [{"flag": FLAG, "variant": "on", "total": 1, "recent": ["a", "b"]}],
            r"record.units\[0\].recent: 2 entries for a total of 1",
        ),
        (
            [{"flag": FLAG, "variant": "on", "total": -1, "recent": []}],
            r"record.units\[0\].total",
        ),
    ],
)
def test_a_bad_units_entry_in_a_fleet_record_is_refused_naming_it(units: Any, message: str) -> None:
    record = {"format": 1, "requests": [], "lag": [], "counters": [], "units": units}
    with pytest.raises(ValueError, match=message):
        snapshot_from_record(record)
