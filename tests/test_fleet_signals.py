"""Tests of openfeature_canary.signals._fleet: records, the fleet merge, the publisher.

Each "process" is a real OpenTelemetry ``MeterProvider`` with a real ``InMemoryMetricReader``, an
``InProcessSignalSource`` and a ``Publisher``; they share one dict-backed fake of the
``FleetStore`` seam (the real stores have their own tests). The fleet's readings are compared
with those of ONE in-process source that saw all the traffic in one ``MeterProvider``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import random
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

from openfeature_canary.errors import SignalSourceError, StateStoreError
from openfeature_canary.evidence import Tracked
from openfeature_canary.instrumentation._tracking import tracking_recorder
from openfeature_canary.signals import (
    FleetSignalSource,
    InProcessSignalSource,
    Publisher,
    SignalSource,
    Snapshot,
    new_process_id,
    snapshot_from_record,
    snapshot_record,
)

FLAG = "dataservice-read-canary"
OTHER = "dataservice-user-read-canary"
REQUEST_BOUNDS = (0.025, 0.05, 0.1, *(round(0.1 + 0.01 * i, 3) for i in range(1, 21)), 0.5, 1.0)
LAG_BOUNDS = (0.01, 0.05, 0.1, 0.3, 0.5, 1.0)
TICK = 10.0


class FakeFleetStore:
    """The FleetStore seam as dicts; records go through JSON like every real store's."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[float, Mapping[str, Any]]] = {}
        self.failing = False
        self.forgotten: list[str] = []

    def publish(self, process_id: str, record: Mapping[str, Any], now: float) -> None:
        if self.failing:
            raise StateStoreError("fake store is down")
        self.data[process_id] = (now, json.loads(json.dumps(record, allow_nan=False)))

    def records(self) -> dict[str, tuple[float, Mapping[str, Any]]]:
        if self.failing:
            raise StateStoreError("fake store is down")
        return dict(self.data)

    def forget(self, process_id: str) -> None:
        self.forgotten.append(process_id)
        self.data.pop(process_id, None)

    def try_lease(self, holder: str, ttl_s: float, now: float) -> bool:
        return True

    def release_lease(self, holder: str) -> None:
        return None

    def lease_holder(self, now: float) -> str | None:
        return None


@dataclass
class App:
    """One process's instruments on a real MeterProvider, named as spec §6 says."""

    reader: InMemoryMetricReader = field(default_factory=InMemoryMetricReader)
    failing: bool = False

    def __post_init__(self) -> None:
        views = [
            View(
                instrument_name="http.server.request.duration",
                aggregation=ExplicitBucketHistogramAggregation(REQUEST_BOUNDS),
            ),
            View(
                instrument_name="canary.event_loop.lag",
                aggregation=ExplicitBucketHistogramAggregation(LAG_BOUNDS),
            ),
        ]
        self.provider = MeterProvider(metric_readers=[self.reader], views=views)
        meter = self.provider.get_meter("test-app")
        self.duration = meter.create_histogram("http.server.request.duration", unit="s")
        self.mismatches = meter.create_counter("canary.ledger.mismatches")
        self.sent = meter.create_counter("canary.telemetry.sent")
        self.accepted = meter.create_counter("canary.telemetry.accepted")
        self.lag = meter.create_histogram("canary.event_loop.lag", unit="s")
        self.tracking = tracking_recorder(self.provider)  # what CanaryProvider.track() records
        self.source = InProcessSignalSource(self)

    def get_metrics_data(self) -> MetricsData | None:
        """The source's reader: a collector crash is a fault the SDK cannot produce on demand."""
        if self.failing:
            raise RuntimeError("collector is gone")
        return self.reader.get_metrics_data()

    def request(self, seconds: float, variant: str, status: int = 200, flag: str = FLAG) -> None:
        attrs = {
            "feature_flag.key": flag,
            "feature_flag.result.variant": variant,
            "http.response.status_code": status,
            "http.route": "/api/items",
        }
        self.duration.record(seconds, attrs)


def traffic(seed: int, n: int) -> list[Callable[[App], None]]:
    """``n`` seeded events (requests of both flags and cohorts, 5xx, mismatches, telemetry,
    lag), each replayable into any app; about a third of the requests track an event (values
    in quarters: their sums are exact in any order)."""
    rng = random.Random(seed)
    tracks = random.Random(seed + 10_000)  # its own stream: the other events stay as they were
    events: list[Callable[[App], None]] = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.85:
            variant = rng.choice(("on", "off"))
            seconds = rng.lognormvariate(math.log(0.12 if variant == "on" else 0.1), 0.4)
            status = 503 if rng.random() < 0.03 else 200
            flag = FLAG if rng.random() < 0.8 else OTHER
            events.append(lambda a, s=seconds, v=variant, c=status, f=flag: a.request(s, v, c, f))
            if tracks.random() < 0.35:
                event = tracks.choice(("opened", "viewed"))
                value = tracks.choice((None, 0.25, 1.0, 2.5))
                events.append(
                    lambda a, f=flag, v=variant, e=event, x=value: a.tracking.record(f, v, e, x)
                )
        elif kind < 0.9:
            flag = rng.choice((FLAG, OTHER))
            events.append(lambda a, f=flag: a.mismatches.add(1, {"feature_flag.key": f}))
        elif kind < 0.95:
            ok = rng.random() < 0.9
            events.append(lambda a, ok=ok: (a.sent.add(1), a.accepted.add(1 if ok else 0)))
        else:
            lag = rng.uniform(0.0, 0.6)
            events.append(lambda a, s=lag: a.lag.record(s))
    return events


def replay(events: Iterable[Callable[[App], None]], *apps: App) -> None:
    for event in events:
        for app in apps:
            event(app)


READS = [
    "requests",
    "baseline_requests",
    "latency_p95_ms",
    "baseline_latency_p95_ms",
    "latency_p50_ms",
    "error_rate",
    "baseline_error_rate",
    "ledger_mismatches",
    "telemetry_acceptance",
    "event_loop_lag_ms",
]


def assert_same_readings(fleet: SignalSource, one: SignalSource, now: float) -> None:
    """Every read the policy makes gives the same answer from the fleet and from one process."""
    for flag in (FLAG, OTHER):
        for start in (0.0, now - TICK, now - 3 * TICK):
            assert fleet.counts_between(flag, start, now) == one.counts_between(flag, start, now)
        for signal in READS:
            for window in (TICK, 3 * TICK, now or TICK):
                assert fleet.read(flag, signal, window, now) == one.read(flag, signal, window, now)
            assert fleet.read_between(flag, signal, 0.0, now) == one.read_between(
                flag, signal, 0.0, now
            )
        for signal, threshold in (("latency_p95_ms", 150.0), ("event_loop_lag_ms", 300.0)):
            for inclusive in (True, False):
                got = fleet.count_beyond(flag, signal, threshold, inclusive, 2 * TICK, now)
                assert got == one.count_beyond(flag, signal, threshold, inclusive, 2 * TICK, now)


# -------------------------------------------------------------------------- records


def test_snapshot_record_round_trip_through_json_equals_local_totals() -> None:
    app = App()
    replay(traffic(1, 400), app)
    app.duration.record(0.2, {"feature_flag.key": FLAG, "feature_flag.result.variant": "on"})
    app.source.snapshot(5.0)
    original = app.source.latest()
    assert original is not None and original.requests and original.lag and original.counters

    text = json.dumps(snapshot_record(original), allow_nan=False)
    back = snapshot_from_record(json.loads(text))

    assert back == dataclasses.replace(original, t=0.0)


def test_snapshot_from_record_empty_snapshot_round_trips() -> None:
    app = App()
    app.source.snapshot(0.0)
    original = app.source.latest()
    assert original is not None
    assert snapshot_from_record(snapshot_record(original)) == dataclasses.replace(original, t=0.0)


def _valid_record() -> dict[str, Any]:
    app = App()
    replay(traffic(2, 60), app)
    app.sent.add(2)
    app.lag.record(0.2)
    app.source.snapshot(1.0)
    snap = app.source.latest()
    assert snap is not None
    return json.loads(json.dumps(snapshot_record(snap)))


VALID = _valid_record()


def _set(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    record = copy.deepcopy(VALID)
    target: Any = record
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return record


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("format",), 2, "record.format"),
        (("format",), True, "record.format"),
        (("requests",), "nope", "record.requests: expected a list"),
        (("requests", 0), [], "record.requests[0]: expected an object"),
        (("requests", 0, "flag"), 7, "record.requests[0].flag: expected a string"),
        (("requests", 0, "errors"), -1, "record.requests[0].errors"),
        (("requests", 0, "errors"), 10**9, "record.requests[0].errors: 1000000000 errors"),
        (("requests", 0, "hist", 0, "counts", 2), -3, "record.requests[0].hist[0].counts[2]"),
        (("requests", 0, "hist", 0, "counts", 2), 1.5, "record.requests[0].hist[0].counts[2]"),
        (("requests", 0, "hist", 0, "counts", 2), True, "record.requests[0].hist[0].counts[2]"),
        (("requests", 0, "hist", 0, "counts", 2), 2**64, "record.requests[0].hist[0].counts[2]"),
        (("requests", 0, "hist", 0, "counts"), [1, 2], "record.requests[0].hist[0].counts: 2"),
        (("requests", 0, "hist", 0, "bounds", 1), 1.0, "record.requests[0].hist[0].bounds[1]"),
        (("requests", 0, "hist", 0, "bounds", 1), math.nan, "record.requests[0].hist[0].bounds[1]"),
        (("requests", 0, "hist", 0, "bounds", 1), 10**400, "record.requests[0].hist[0].bounds[1]"),
        pytest.param(
            ("requests", 0, "hist", 0, "counts", 0),
            10**5000,  # more digits than Python's int-to-str limit
            "counts[0]: a number too large",
            id="count-with-5000-digits",
        ),
        (("format",), 10**400, "record.format: a number too large"),
        (("format",), [[1]], "record.format: an array is not"),
        (("counters", 0, "value"), 10**400, "record.counters[0].value: a number too large"),
        (("lag", 0, "counts", 0), "1", "record.lag[0].counts[0]"),
        (("lag", 0, "extra"), 1, "record.lag[0]: unexpected 'extra'"),
        (("counters", 0, "value"), math.nan, "record.counters[0].value"),
        (("counters", 0, "value"), -1.0, "record.counters[0].value"),
        (("counters", 0, "value"), math.inf, "record.counters[0].value"),
        (("counters", 0, "name"), "http.server.active", "record.counters[0].name"),
        (("tracked", 0, "count"), -1, "record.tracked[0].count"),
        (("tracked", 0, "valued"), 10**6, "record.tracked[0].valued: 1000000 valued events"),
        (("tracked", 0, "total"), math.nan, "record.tracked[0].total"),
        (("tracked", 0, "squares"), -2.0, "record.tracked[0].squares"),
        (("tracked", 0, "event"), "", "record.tracked[0].event: expected 1 to 256"),
        (("tracked", 0, "flag"), None, "record.tracked[0].flag: expected a string"),
        (("tracked", 0, "extra"), 1, "record.tracked[0]: unexpected 'extra'"),
        (("tracked",), {}, "record.tracked: expected a list"),
    ],
)
def test_snapshot_from_record_bad_field_raises_value_error_naming_path(
    path: tuple[Any, ...], value: Any, named: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        snapshot_from_record(_set(path, value))


def test_snapshot_from_record_duplicates_and_missing_keys_are_named() -> None:
    twice = copy.deepcopy(VALID)
    twice["requests"].append(twice["requests"][0])
    with pytest.raises(ValueError, match=r"record\.requests\[\d+\]: flag .* appears twice"):
        snapshot_from_record(twice)
    missing = copy.deepcopy(VALID)
    del missing["counters"]
    with pytest.raises(ValueError, match="record: missing counters"):
        snapshot_from_record(missing)
    tracked = copy.deepcopy(VALID)
    tracked["tracked"].append(tracked["tracked"][0])
    with pytest.raises(ValueError, match=r"record\.tracked\[\d+\]: flag .* twice"):
        snapshot_from_record(tracked)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    items: Iterable[tuple[Any, Any]] = ()
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    found = [prefix] if prefix else []
    for key, child in items:
        found += _paths(child, (*prefix, key))
    return found


def _parse_or_path_error(data: Any) -> None:
    try:
        result = snapshot_from_record(data)
    except ValueError as exc:
        assert str(exc).startswith("record"), str(exc)
        assert "\n" not in str(exc)
    else:
        assert isinstance(result, Snapshot)


@given(JSON)
@settings(max_examples=150, deadline=None)
def test_snapshot_from_record_any_json_value_gives_snapshot_or_value_error(data: Any) -> None:
    _parse_or_path_error(data)


@given(st.sampled_from(_paths(VALID)), JSON)
@settings(max_examples=300, deadline=None)
def test_snapshot_from_record_any_field_replaced_gives_snapshot_or_value_error(
    path: tuple[Any, ...], value: Any
) -> None:
    _parse_or_path_error(_set(path, value))


# ---------------------------------------------------------------------------- fleet


@dataclass
class Fleet:
    """Three processes publishing to one fake store, and one app that sees all the traffic."""

    store: FakeFleetStore = field(default_factory=FakeFleetStore)
    apps: dict[str, App] = field(default_factory=dict)
    publishers: dict[str, Publisher] = field(default_factory=dict)
    one: App = field(default_factory=App)

    def start(self, process_id: str) -> App:
        app = self.apps[process_id] = App()
        self.publishers[process_id] = Publisher(app.source, self.store, process_id)
        return app

    def tick(self, now: float, fleet: FleetSignalSource, publishing: Iterable[str]) -> None:
        for process_id in publishing:
            self.publishers[process_id].publish(now)
        fleet.snapshot(now)
        self.one.source.snapshot(now)


def test_fleet_three_processes_read_exactly_what_one_process_sees() -> None:
    world = Fleet()
    ids = ("web-1:101:aa", "web-1:102:bb", "web-2:7:cc")
    for process_id in ids:
        world.start(process_id)
    fleet = FleetSignalSource(world.store)
    rng = random.Random(10)
    for step in range(7):
        now = step * TICK
        for i, process_id in enumerate(ids):
            replay(traffic(100 * step + i, rng.randint(0, 250)), world.apps[process_id], world.one)
        world.tick(now, fleet, ids)
        assert fleet.processes == 3
        assert_same_readings(fleet, world.one.source, now)
    assert fleet.read(FLAG, "requests", 60, 60.0).n > 500
    for signal in ("latency_p95_ms", "baseline_latency_p95_ms", "telemetry_acceptance"):
        assert fleet.read(FLAG, signal, 60, 60.0).value is not None
    assert fleet.read(FLAG, "ledger_mismatches", 60, 60.0).n > 0


def test_fleet_two_processes_tracked_events_sum_into_one_counts_reading() -> None:
    world = Fleet()
    a, b = world.start("web-1:1:aa"), world.start("web-2:2:bb")
    fleet = FleetSignalSource(world.store)
    world.tick(0.0, fleet, ("web-1:1:aa", "web-2:2:bb"))
    for app, n in ((a, 3), (b, 5)):  # one record each through JSON, as every store does
        for i in range(n):
            app.tracking.record(FLAG, "on", "opened", float(i))
            app.tracking.record(FLAG, "off", "opened", None)
        app.request(0.1, "on")
    world.tick(TICK, fleet, ("web-1:1:aa", "web-2:2:bb"))
    counts = fleet.counts_between(FLAG, 0.0, TICK)
    assert counts.error is None and counts.canary.n == 2
    # 0+1+2 and 0+1+2+3+4: 8 events with values, their sum 13 and sum of squares 5 + 30.
    assert dict(counts.canary.tracked) == {"opened": Tracked(8, 8, 13.0, 35.0)}
    assert dict(counts.baseline.tracked) == {"opened": Tracked(8, 0, 0.0, 0.0)}
    assert fleet.counts_between(OTHER, 0.0, TICK).canary.tracked == {}


def test_fleet_process_that_stops_publishing_keeps_its_totals() -> None:
    world = Fleet()
    for process_id in ("a", "b", "c"):
        world.start(process_id)
    fleet = FleetSignalSource(world.store, stale_after_s=25)
    for step in range(8):
        now = step * TICK
        alive = ("a", "b", "c") if step < 3 else ("a", "b")
        for i, process_id in enumerate(alive):
            replay(traffic(step * 10 + i, 80), world.apps[process_id], world.one)
        world.tick(now, fleet, alive)
        assert_same_readings(fleet, world.one.source, now)
        for start in range(0, step):
            window = fleet.counts_between(FLAG, start * TICK, now)
            assert window.canary.n >= 0 and window.baseline.n >= 0
    # c's last heartbeat was at 20: stale (not counted) from 50 on, its traffic still summed
    assert fleet.processes == 2


def test_fleet_process_restarted_in_place_counts_its_new_totals_as_increase() -> None:
    world = Fleet()
    for process_id in ("a", "b"):
        world.start(process_id)
    fleet = FleetSignalSource(world.store)
    replay(traffic(1, 300), world.apps["a"], world.one)
    replay(traffic(2, 300), world.apps["b"], world.one)
    world.tick(0.0, fleet, ("a", "b"))
    replay(traffic(3, 200), world.apps["b"], world.one)
    world.tick(10.0, fleet, ("a", "b"))
    before = fleet.read(FLAG, "requests", 10, 10.0).value
    assert before is not None and before > 0

    world.start("b")  # a new MeterProvider under the same id: every total of "b" drops
    replay(traffic(4, 50), world.apps["b"], world.one)
    world.tick(20.0, fleet, ("a", "b"))
    replay(traffic(5, 120), world.apps["b"], world.one)
    world.tick(30.0, fleet, ("a", "b"))

    # The merged totals grew by exactly the restarted process's new traffic: the same
    # windows, P95s and counters as one process that saw everything.
    for now in (20.0, 30.0):
        assert_same_readings(fleet, world.one.source, now)
    assert (
        fleet.read(FLAG, "requests", 30, 30.0).value
        == world.one.source.read(FLAG, "requests", 30, 30.0).value
    )


def test_fleet_forget_after_drops_gone_record_from_store_and_keeps_its_totals() -> None:
    world = Fleet()
    for process_id in ("a", "gone"):
        world.start(process_id)
    fleet = FleetSignalSource(world.store, stale_after_s=15, forget_after_s=45)
    for step in range(10):
        now = step * TICK
        alive = ("a", "gone") if step < 2 else ("a",)
        for i, process_id in enumerate(alive):
            replay(traffic(step * 2 + i, 60), world.apps[process_id], world.one)
        world.tick(now, fleet, alive)
        assert_same_readings(fleet, world.one.source, now)
    # "gone" last published at 10: forgotten once its heartbeat was older than 45 s (at 60)
    assert world.store.forgotten == ["gone"]
    assert set(world.store.data) == {"a"}
    assert fleet.processes == 1


def test_fleet_bad_record_is_skipped_with_one_warning_and_the_rest_merge(
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = Fleet()
    for process_id in ("a", "b"):
        world.start(process_id)
    fleet = FleetSignalSource(world.store)
    caplog.set_level(logging.WARNING, logger="openfeature_canary")
    for step in range(3):
        now = step * TICK
        for i, process_id in enumerate(("a", "b")):
            replay(traffic(step * 2 + i, 100), world.apps[process_id], world.one)
        world.store.data["torn"] = (now, {**VALID, "requests": [{"flag": FLAG}]})
        world.tick(now, fleet, ("a", "b"))
        assert_same_readings(fleet, world.one.source, now)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "torn" in warnings[0] and "record.requests[0]: missing variant" in warnings[0]
    assert fleet.processes == 2


def test_fleet_store_failure_marks_readings_and_raises_signal_source_error() -> None:
    world = Fleet()
    world.start("a")
    fleet = FleetSignalSource(world.store)
    replay(traffic(1, 50), world.apps["a"])
    world.tick(0.0, fleet, ("a",))
    world.tick(10.0, fleet, ("a",))
    world.store.failing = True
    with pytest.raises(SignalSourceError, match=r"fleet store failed: .*fake store is down"):
        fleet.snapshot(20.0)
    reading = fleet.read(FLAG, "requests", 10, 20.0)
    assert reading.value is None and reading.error is not None
    assert "fake store is down" in reading.error
    world.store.failing = False
    fleet.snapshot(30.0)
    assert fleet.read(FLAG, "requests", 10, 30.0).error is None


def test_fleet_source_is_a_signal_source_and_checks_its_arguments() -> None:
    assert isinstance(FleetSignalSource(FakeFleetStore()), SignalSource)
    with pytest.raises(ValueError, match="stale_after_s"):
        FleetSignalSource(FakeFleetStore(), stale_after_s=0)
    with pytest.raises(ValueError, match="forget_after_s"):
        FleetSignalSource(FakeFleetStore(), forget_after_s=math.nan)


# ------------------------------------------------------------------------ publisher


def test_publisher_failing_reader_publishes_nothing_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FakeFleetStore()
    app = App()
    publisher = Publisher(app.source, store, "web-1")
    replay(traffic(1, 20), app)
    publisher.publish(0.0)
    published = store.data["web-1"]
    app.failing = True
    caplog.set_level(logging.WARNING, logger="openfeature_canary")
    publisher.publish(10.0)
    publisher.publish(20.0)
    assert store.data["web-1"] == published
    assert len([r for r in caplog.records if "not publishing" in r.getMessage()]) == 1
    app.failing = False
    publisher.publish(30.0)
    assert store.data["web-1"][0] == 30.0


def test_publisher_store_error_propagates_as_state_store_error() -> None:
    store = FakeFleetStore()
    store.failing = True
    with pytest.raises(StateStoreError):
        Publisher(App().source, store, "web-1").publish(0.0)


def test_new_process_id_is_unique_and_store_safe() -> None:
    ids = {new_process_id() for _ in range(50)}
    assert len(ids) == 50
    for process_id in ids:
        assert re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", process_id)
        assert f":{os.getpid()}:" in process_id


def test_publisher_in_forked_child_publishes_under_a_new_id() -> None:
    publisher = Publisher(App().source, FakeFleetStore(), "parent-id")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its id and leave without running pytest's teardown
        try:
            os.write(write_end, publisher.process_id.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    child_id = os.read(read_end, 256).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    assert publisher.process_id == "parent-id"
    assert child_id != "parent-id" and f":{pid}:" in child_id
