"""``CanaryProvider.track()`` through the real OpenFeature SDK and the real OpenTelemetry SDK.

Each tracked event must land in the cohort its unit's own evaluation returned (same unit, same
bucketing, same snapshot), be exported by the four tracking counters and read back by
``InProcessSignalSource.counts_between``; flags not under a live split or without a guard on
the event record nothing; bad input never raises and is said once; threads lose nothing; a
forked child counts only its own events.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomllib
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.contrib.provider.canary import CanaryProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.track import TrackingEventDetails
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from openfeature_canary import ManualClock, RolloutPlan, parse_plan
from openfeature_canary.evidence import Tracked
from openfeature_canary.instrumentation._tracking import TrackingRecorder, tracking_recorder
from openfeature_canary.policy import Autopilot
from openfeature_canary.signals import InProcessSignalSource
from openfeature_canary.telemetry import setup_telemetry

ROOT = Path(__file__).resolve().parent.parent
F1 = "dataservice-read-canary"
F2 = "dataservice-user-read-canary"
EVENTS = "feature_flag.tracking.events"

Key = tuple[str, str, str]


def guarded_plan(*, holdback: float = 0.0, bucket_by: str | None = None) -> RolloutPlan:
    """The reference plan with guards on F1: ``opened`` per ``viewed``, the mean of ``basket``."""
    data = tomllib.loads((ROOT / "examples" / "canary_plan.toml").read_text())
    flag = data["flags"][F1]
    flag["guards"] = [
        {"event": "opened", "per": "viewed"},
        {"event": "basket", "measure": "mean"},
    ]
    if bucket_by is not None:
        flag["bucket_by"] = bucket_by
    if holdback:
        data["decisions"] = {"holdback": holdback}
    return parse_plan(data)


@dataclass
class World:
    provider: CanaryProvider
    client: OpenFeatureClient
    reader: InMemoryMetricReader
    source: InProcessSignalSource
    recorder: TrackingRecorder

    def to_stage(self, stage: int, flag: str = F1) -> None:
        ctl = self.provider.controller(flag)
        ctl.start()
        for _ in range(stage - 1):
            ctl.promote()

    def exported(self, name: str = EVENTS) -> dict[Key, float]:
        """One collection's points of a tracking counter, per (flag, variant, event)."""
        found: dict[Key, float] = {}
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data is not None else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        for point in metric.data.data_points:
                            a = point.attributes or {}
                            key = (
                                str(a["feature_flag.key"]),
                                str(a["feature_flag.result.variant"]),
                                str(a["feature_flag.tracking.event"]),
                            )
                            found[key] = point.value  # type: ignore[union-attr]
        return found


MakeWorld = Callable[..., World]


@pytest.fixture
def make_world() -> Iterator[MakeWorld]:
    def make(plan: RolloutPlan | None = None, *, register: bool = True) -> World:
        reader = InMemoryMetricReader()
        meter_provider = MeterProvider(metric_readers=[reader])
        provider = CanaryProvider(
            plan or guarded_plan(),
            clock=ManualClock(start=1000.0),
            environ={},
            meter_provider=meter_provider,
        )
        if register:
            api.set_provider_and_wait(provider)
        source = InProcessSignalSource(reader, meter_provider=meter_provider)
        return World(provider, api.get_client(), reader, source, tracking_recorder(meter_provider))

    yield make


def _ctx(unit: str, **attributes: Any) -> EvaluationContext:
    return EvaluationContext(targeting_key=unit, attributes=attributes)


# ------------------------------------------------------------------ the cohorts


@pytest.mark.parametrize(("stage", "percent"), [(1, 5), (2, 25), (3, 50)])
def test_track_lands_in_the_cohort_each_units_evaluation_returned(
    make_world: MakeWorld, stage: int, percent: int
) -> None:
    world = make_world()
    world.to_stage(stage)
    world.source.snapshot(0.0)
    expected: dict[Key, list[float]] = {}
    for i in range(10_000):
        ctx = _ctx(f"user-{i}")
        variant = world.client.get_boolean_details(F1, False, ctx).variant
        assert variant in ("on", "off")
        events: list[tuple[str, float | None]] = [("viewed", None)]
        if i % 3 == 0:
            events.append(("opened", None))
        if i % 4 == 0:
            events.append(("basket", (i % 7) * 0.5))
        for event, value in events:
            world.client.track(event, ctx, TrackingEventDetails(value=value))
            total = expected.setdefault((F1, variant, event), [0, 0, 0.0, 0.0])
            total[0] += 1
            if value is not None:
                total[1:] = [total[1] + 1, total[2] + value, total[3] + value * value]
    world.source.snapshot(1.0)

    want = {k: Tracked(int(c), int(v), t, s) for k, (c, v, t, s) in expected.items()}
    on = want[(F1, "on", "viewed")].count
    assert abs(on / 10_000 - percent / 100) < 0.015  # the split served, not a constant
    assert world.recorder.totals() == want
    exported = world.exported()
    assert exported == {k: t.count for k, t in want.items()}
    assert world.exported("feature_flag.tracking.value") == {
        k: t.total for k, t in want.items() if k[2] == "basket"
    } | {k: 0.0 for k in want if k[2] != "basket"}
    counts = world.source.counts_between(F1, 0.0, 1.0)
    for variant, cohort in (("on", counts.canary), ("off", counts.baseline)):
        assert dict(cohort.tracked) == {e: t for (_, v, e), t in want.items() if v == variant}


def test_track_buckets_by_the_flags_unit_attribute_not_the_targeting_key(
    make_world: MakeWorld,
) -> None:
    world = make_world(guarded_plan(bucket_by="sessionId"))
    world.to_stage(3)
    cohorts: dict[str, int] = {}
    for i in range(2_000):
        session = f"session-{i}"
        variant = world.client.get_boolean_details(F1, False, _ctx(f"req-{i}", sessionId=session))
        assert variant.variant is not None
        cohorts[variant.variant] = cohorts.get(variant.variant, 0) + 1
        # Another request of the same session: another targeting key, the same cohort.
        world.client.track("opened", _ctx(f"other-{i}", sessionId=session))
    totals = world.recorder.totals()
    assert {v: totals[(F1, v, "opened")].count for v in ("on", "off")} == cohorts


def test_track_values_sum_and_bad_values_count_as_events_without_a_value(
    make_world: MakeWorld,
) -> None:
    world = make_world()
    world.to_stage(3)
    unit = next(
        f"u{i}"
        for i in range(100)
        if world.provider.resolve_boolean_details(F1, False, _ctx(f"u{i}")).variant == "on"
    )
    good = [0, 0.5, 2, 3.25]
    bad: list[Any] = [math.nan, math.inf, -1.0, True, False, "3", None, 10**400, [1.0]]
    for value in good + bad:
        world.client.track("basket", _ctx(unit), TrackingEventDetails(value=value))
    world.provider.track("basket", _ctx(unit), "not details")  # type: ignore[arg-type]
    world.provider.track("basket", _ctx(unit), None)
    expected = Tracked(len(good) + len(bad) + 2, len(good), 5.75, 0.25 + 4 + 10.5625)
    assert world.recorder.totals() == {(F1, "on", "basket"): expected}
    invalid = len(bad) - 1  # None is no value, not a bad one
    assert world.recorder.dropped() == {"invalid_value": invalid}


def test_track_with_telemetry_reaches_the_policys_own_signal_source() -> None:
    telemetry = setup_telemetry(guarded_plan())
    try:
        provider = CanaryProvider(
            guarded_plan(),
            clock=ManualClock(start=1000.0),
            environ={},
            telemetry=telemetry,
            background=False,
        )
        api.set_provider_and_wait(provider)
        provider.controller(F1).start(force=True)
        policy = provider.rollout.policy
        assert isinstance(policy, Autopilot)
        source = policy.source
        source.snapshot(1000.0)
        client = api.get_client()
        cohorts = {"on": 0, "off": 0}
        for i in range(400):
            ctx = _ctx(f"user-{i}")
            variant = client.get_boolean_details(F1, False, ctx).variant
            assert variant is not None
            cohorts[variant] += 1
            client.track("viewed", ctx)
        source.snapshot(1001.0)
        counts = source.counts_between(F1, 1000.0, 1001.0)
        assert counts.canary.tracked["viewed"].count == cohorts["on"] > 0
        assert counts.baseline.tracked["viewed"].count == cohorts["off"]
    finally:
        telemetry.shutdown()


# ------------------------------------------------------------------ nothing to record


@pytest.mark.parametrize("where", ["pending", "full", "rolled-back", "unguarded-event", "F2"])
def test_track_records_nothing_outside_a_live_split_or_a_guard(
    make_world: MakeWorld, where: str
) -> None:
    world = make_world()
    event = "opened"
    if where == "full":
        world.to_stage(4)
    elif where == "rolled-back":
        world.to_stage(2)
        world.provider.controller(F1).rollback("test")
    elif where == "unguarded-event":
        world.to_stage(2)
        event = "checkout"
    elif where == "F2":  # a flag without guards at 50 % (it runs after F1, complete)
        world.to_stage(4)
        world.provider.controller(F1).promote()
        world.to_stage(3, flag=F2)
        assert world.provider.view(F2).percent == 50
    for i in range(500):
        world.client.track(event, _ctx(f"user-{i}"), TrackingEventDetails(value=1.0))
    assert world.recorder.totals() == {}
    assert world.recorder.dropped() == {}
    assert world.exported() == {}


def test_track_at_the_final_stage_with_holdback_records_both_cohorts(
    make_world: MakeWorld,
) -> None:
    world = make_world(guarded_plan(holdback=10))
    world.to_stage(4)
    for i in range(2_000):
        world.client.track("opened", _ctx(f"user-{i}"))
    totals = world.recorder.totals()
    off = totals[(F1, "off", "opened")].count
    assert totals[(F1, "on", "opened")].count + off == 2_000 and 120 < off < 280


# ------------------------------------------------------------------ bad input


def test_track_bad_input_never_raises_drops_and_says_each_reason_once(
    make_world: MakeWorld, caplog: pytest.LogCaptureFixture
) -> None:
    world = make_world(register=False)
    caplog.set_level(logging.WARNING, "openfeature_canary")
    for _ in range(3):  # not initialised yet
        world.provider.track("opened", _ctx("user-1"))
    api.set_provider_and_wait(world.provider)
    world.to_stage(2)
    client = world.client
    for _ in range(3):
        client.track("opened")  # no context at all
        client.track("opened", EvaluationContext())  # no targeting key
        client.track("opened", _ctx(""))
        client.track("opened", _ctx("\ud800"))  # a lone surrogate: never given to mmh3
        world.provider.track("opened", None)
        world.provider.track("opened", "not a context")  # type: ignore[arg-type]
        world.provider.track(42, _ctx("user-1"))  # type: ignore[arg-type]
        world.provider.track("\ud800", _ctx("user-1"))
        client.track("opened", _ctx("user-1"), TrackingEventDetails(value=math.nan))
    world.provider.shutdown()
    world.provider.track("opened", _ctx("user-1"))  # shut down
    dropped = world.recorder.dropped()
    assert dropped == {"not_ready": 4, "no_unit": 15, "invalid_unit": 3, "invalid_value": 3}
    said = [r.getMessage() for r in caplog.records if "canary.tracking.dropped" in r.getMessage()]
    assert len(said) == 4 and all("\n" not in line for line in said)
    assert world.recorder.totals() == {
        (F1, "on" if _on(world, "user-1") else "off", "opened"): (Tracked(3, 0, 0.0, 0.0))
    }


def _on(world: World, unit: str) -> bool:
    return world.provider.resolve_boolean_details(F1, False, _ctx(unit)).variant == "on"


def test_track_unexpected_failure_is_dropped_not_raised(
    make_world: MakeWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = make_world()
    world.to_stage(2)

    def broken(*args: Any) -> None:  # a fault no real part produces on demand
        raise RuntimeError("disk full")

    monkeypatch.setattr(world.recorder, "record", broken)
    world.client.track("opened", _ctx("user-1"))
    assert world.recorder.dropped() == {"error": 1}


def test_track_drops_are_exported_by_reason(make_world: MakeWorld) -> None:
    world = make_world()
    world.to_stage(2)
    world.client.track("opened", EvaluationContext())
    world.client.track("opened", _ctx("\udfff"))
    data = world.reader.get_metrics_data()
    assert data is not None
    points = {
        p.attributes["reason"]: p.value  # type: ignore[index, union-attr]
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "canary.tracking.dropped"
        for p in m.data.data_points
    }
    assert points == {"no_unit": 1, "invalid_unit": 1}


# ------------------------------------------------------------------ threads and forks


def test_track_from_eight_threads_loses_nothing_and_ended_threads_keep_their_counts(
    make_world: MakeWorld,
) -> None:
    world = make_world()
    world.to_stage(3)
    per_thread = 3_000
    expected = {"on": 0, "off": 0}
    for t in range(8):
        for i in range(per_thread):
            expected["on" if _on(world, f"t{t}-{i}") else "off"] += 1
    done = threading.Event()
    collected: list[int] = []

    def collect() -> None:  # collections while the threads track
        while not done.is_set():
            collected.append(int(sum(world.exported().values())))

    def work(t: int) -> None:
        for i in range(per_thread):
            world.client.track("opened", _ctx(f"t{t}-{i}"), TrackingEventDetails(value=1.0))

    collector = threading.Thread(target=collect)
    collector.start()
    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    collector.join()
    del threads
    gc.collect()
    totals = world.recorder.totals()
    for variant, n in expected.items():
        assert totals[(F1, variant, "opened")] == Tracked(n, n, float(n), float(n))
    assert collected == sorted(collected)  # cumulative: never goes back
    assert sum(world.exported().values()) == 8 * per_thread


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_track_in_a_forked_child_counts_only_the_childs_events(make_world: MakeWorld) -> None:
    world = make_world()
    world.to_stage(3)
    for i in range(50):
        world.client.track("opened", _ctx(f"parent-{i}"))
    before = world.recorder.totals()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: 7 events of its own, then its totals to the parent
        try:
            for i in range(7):
                world.provider.track("opened", _ctx(f"child-{i}"))
            counts = {v: t.count for (_, v, _), t in world.recorder.totals().items()}
            os.write(write, json.dumps(counts).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = json.loads(pipe.read())
    os.waitpid(pid, 0)
    assert sum(child.values()) == 7
    assert world.recorder.totals() == before
