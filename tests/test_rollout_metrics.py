"""The controller's own metrics (spec §7) as Prometheus scrapes them from ``/metrics``.

A whole world in virtual time (e2e_world: real OpenFeature client, CanaryProvider, OpenTelemetry
SDK, policy) with the telemetry of ``setup_telemetry(plan, prometheus_port=0)``: a real
``/metrics`` on 127.0.0.1, fetched with httpx and parsed with prometheus_client. The names are
those the OpenTelemetry Prometheus exporter produces: dots become underscores, the counter gets
``_total``, and the ``%`` unit adds no suffix to a name that already ends in ``percent``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import e2e_world
import httpx
import pytest
from e2e_world import FLAG, PHASE2, World, make_world
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from otel_points import points
from prometheus_client.parser import text_string_to_metric_families

from openfeature_canary import (
    Autopilot,
    MemoryStateStore,
    Rollout,
    RolloutPlan,
    Status,
    load_plan,
)
from openfeature_canary.demo._simulation import Fault
from openfeature_canary.policy import RolloutMetrics
from openfeature_canary.telemetry import Telemetry, setup_telemetry

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "canary_plan.toml"
TRIGGERS = (
    "p95_breach",
    "error_rate_breach",
    "ledger_mismatch",
    "telemetry_acceptance",
    "event_loop_lag",
)
GAUGES = (
    "canary_rollout_percent",
    "canary_rollout_stage",
    "canary_rollout_status",
    "canary_trigger_value",
    "canary_trigger_threshold",
)

#: (sample name, labels without the otel_scope_* ones) -> value
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def plan() -> RolloutPlan:
    return load_plan(EXAMPLE)


@pytest.fixture
def world(plan: RolloutPlan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """Canary 5xx from 120 s into stage 2 on: ``error_rate_breach`` after 2 min more."""

    def with_prometheus(p: RolloutPlan) -> Telemetry:
        return setup_telemetry(p, prometheus_port=0)

    monkeypatch.setattr(e2e_world, "setup_telemetry", with_prometheus)
    made = make_world(plan, tmp_path, fault=Fault("mismatch", FLAG, at_stage=2, after_s=120))
    yield made
    made.close()


def scrape(world: World) -> tuple[Samples, dict[str, str]]:
    """The samples of the exposition, and each canary family's type."""
    url = world.telemetry.metrics_url
    assert url is not None and url.startswith("http://127.0.0.1:")
    response = httpx.get(url, timeout=5.0)
    assert response.status_code == 200
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(response.text):
        if not family.name.startswith("canary_"):
            continue
        types[family.name] = family.type
        for s in family.samples:
            labels = frozenset((k, v) for k, v in s.labels.items() if not k.startswith("otel_"))
            key = (s.name, labels)
            assert key not in samples, f"duplicate series {key}"
            samples[key] = s.value
    return samples, types


def flag_labels(flag: str, **extra: str) -> frozenset[tuple[str, str]]:
    return frozenset({("feature_flag_key", flag), *extra.items()})


def trigger_labels(flag: str, trigger: str) -> frozenset[tuple[str, str]]:
    return flag_labels(flag, canary_trigger_name=trigger)


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def assert_status(samples: Samples, flag: str, current: Status) -> None:
    for status in Status:
        labels = flag_labels(flag, canary_rollout_status=status.value)
        assert samples[("canary_rollout_status", labels)] == int(status is current), status


def test_rollout_metrics_after_promote_show_stage_percent_status_and_triggers(
    world: World, plan: RolloutPlan
) -> None:
    world.promote_to(2)
    world.run_for(60)  # healthy ticks before the fault's onset

    samples, types = scrape(world)

    assert {name: types[name] for name in GAUGES} == dict.fromkeys(GAUGES, "gauge")
    assert series(samples, "canary_rollout_percent") == {
        flag_labels(FLAG): 25.0,
        flag_labels(PHASE2): 0.0,
    }
    assert series(samples, "canary_rollout_stage") == {
        flag_labels(FLAG): 2.0,
        flag_labels(PHASE2): 0.0,
    }
    assert len(series(samples, "canary_rollout_status")) == 2 * len(Status)
    assert_status(samples, FLAG, Status.RUNNING)
    assert_status(samples, PHASE2, Status.PENDING)
    thresholds = {
        trigger_labels(key, t.name): t.threshold
        for key in (FLAG, PHASE2)
        for t in plan.flag(key).triggers
    }
    assert series(samples, "canary_trigger_threshold") == thresholds
    assert {dict(labels)["canary_trigger_name"] for labels in thresholds} == set(TRIGGERS)
    # Each trigger's last reading, as the policy saw it at its last tick.
    policy = world.provider.rollout.policy
    assert isinstance(policy, Autopilot)
    last = policy.last(FLAG)
    assert last is not None and last.at == world.clock.now()
    expected = {
        trigger_labels(FLAG, name): r.value
        for name, r in last.triggers.items()
        if r.value is not None
    }
    values = {
        k: v
        for k, v in series(samples, "canary_trigger_value").items()
        if (("feature_flag_key", FLAG) in k)
    }
    assert values == expected
    assert values[trigger_labels(FLAG, "p95_breach")] < 150  # healthy canary
    assert values[trigger_labels(FLAG, "error_rate_breach")] == 0.0
    assert series(samples, "canary_rollbacks_total") == {}


def test_rollout_metrics_after_rollback_count_the_trigger_exactly_once(world: World) -> None:
    world.promote_to(2)
    assert world.run_until_status(Status.ROLLED_BACK, 900) is not None
    decision = world.state().log[-1]
    assert (decision.action, decision.reason) == ("rollback", "ledger_mismatch")

    samples, types = scrape(world)

    assert types["canary_rollbacks"] == "counter"
    assert series(samples, "canary_rollbacks_total") == {
        trigger_labels(FLAG, "ledger_mismatch"): 1.0
    }
    assert samples[("canary_rollout_percent", flag_labels(FLAG))] == 0.0
    assert samples[("canary_rollout_stage", flag_labels(FLAG))] == 0.0
    assert_status(samples, FLAG, Status.ROLLED_BACK)
    assert_status(samples, PHASE2, Status.PENDING)
    # The gauge holds the reading that fired, the same number the decision log has.
    value = samples[("canary_trigger_value", trigger_labels(FLAG, "ledger_mismatch"))]
    assert value == decision.numbers["value"]
    assert value > samples[("canary_trigger_threshold", trigger_labels(FLAG, "ledger_mismatch"))]

    world.run_for(120)  # the rollback is sticky: later ticks count nothing more
    samples, _ = scrape(world)
    assert series(samples, "canary_rollbacks_total") == {
        trigger_labels(FLAG, "ledger_mismatch"): 1.0
    }
    assert_status(samples, FLAG, Status.ROLLED_BACK)


def test_rollout_metrics_each_rollback_counts_under_its_own_trigger(world: World) -> None:
    world.promote_to(2)
    assert world.run_until_status(Status.ROLLED_BACK, 900) is not None
    ctl = world.provider.controller(FLAG)
    ctl.reset()
    ctl.start(force=True)  # the mismatches go on: the baseline is not quiet
    ctl.rollback("p95_breach")  # an operator acting on what they saw
    ctl.reset()

    samples, _ = scrape(world)

    assert series(samples, "canary_rollbacks_total") == {
        trigger_labels(FLAG, "ledger_mismatch"): 1.0,
        trigger_labels(FLAG, "p95_breach"): 1.0,
    }
    assert_status(samples, FLAG, Status.PENDING)
    assert samples[("canary_rollout_percent", flag_labels(FLAG))] == 0.0


def in_memory_metrics(
    plan: RolloutPlan, store: MemoryStateStore
) -> tuple[Rollout, InMemoryMetricReader]:
    """A rollout whose controller metrics (step 5 of its pipeline) go to an in-memory reader."""
    reader = InMemoryMetricReader()
    rollout = Rollout(plan, store=store, meter_provider=MeterProvider(metric_readers=[reader]))
    return rollout, reader


def test_rollout_metrics_operator_free_text_reason_counts_under_operator(
    plan: RolloutPlan,
) -> None:
    rollout, reader = in_memory_metrics(plan, MemoryStateStore())
    assert isinstance(rollout.metrics, RolloutMetrics)
    rollout.controller(FLAG).start()
    rollout.controller(FLAG).rollback("saw odd numbers on the dashboard at 3am")
    rollbacks = points(reader, "canary.rollbacks")
    assert [(a["canary.trigger.name"], p.value) for a, p in rollbacks] == [("operator", 1)]


def test_rollout_metrics_rollback_by_another_process_is_not_counted_here(
    plan: RolloutPlan,
) -> None:
    store = MemoryStateStore()
    here, here_reader = in_memory_metrics(plan, store)
    there, there_reader = in_memory_metrics(plan, store)
    there.controller(FLAG).start()
    there.controller(FLAG).rollback("p95_breach")

    here.load()  # this process sees the rollback in the store

    assert here.controller(FLAG).state.status is Status.ROLLED_BACK
    assert points(here_reader, "canary.rollbacks") == []  # counted once, where it was made
    rollbacks = points(there_reader, "canary.rollbacks")
    assert [(a["canary.trigger.name"], p.value) for a, p in rollbacks] == [("p95_breach", 1)]
    # The gauges show the state this process knows, wherever it came from.
    current = {
        a["feature_flag.key"]: a["canary.rollout.status"]
        for a, p in points(here_reader, "canary.rollout.status")
        if p.value == 1
    }
    assert current == {FLAG: "rolled_back", PHASE2: "pending"}


def test_rollout_without_meter_provider_has_no_metrics(plan: RolloutPlan) -> None:
    rollout = Rollout(plan)
    assert rollout.metrics is None
    assert rollout.pipeline.metrics is None
    rollout.controller(FLAG).start()
    assert rollout.controller(FLAG).rollback("p95_breach").status is Status.ROLLED_BACK


def test_rollout_metrics_reader_added_later_gets_every_gauge_at_its_first_collection(
    plan: RolloutPlan,
) -> None:
    first = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[first])
    rollout = Rollout(plan, store=MemoryStateStore(), meter_provider=mp)
    rollout.controller(FLAG).start()
    assert points(first, "canary.rollout.percent")  # collected: the values are set
    later = InMemoryMetricReader()
    mp.add_metric_reader(later)

    thresholds = {
        (a["feature_flag.key"], a["canary.trigger.name"]): p.value
        for a, p in points(later, "canary.trigger.threshold")
    }
    assert thresholds == {
        (key, t.name): t.threshold for key, f in plan.flags.items() for t in f.triggers
    }
    percent = {a["feature_flag.key"]: p.value for a, p in points(later, "canary.rollout.percent")}
    assert percent == {FLAG: rollout.controller(FLAG).state.percent, PHASE2: 0}
    statuses = {
        (a["feature_flag.key"], a["canary.rollout.status"]): p.value
        for a, p in points(later, "canary.rollout.status")
    }
    assert statuses == {
        (key, s.value): int(s is rollout.controller(key).state.status)
        for key in plan.flags
        for s in Status
    }


def test_rollout_metrics_gauges_follow_each_transition_between_collections(
    plan: RolloutPlan,
) -> None:
    rollout, reader = in_memory_metrics(plan, MemoryStateStore())
    ctl = rollout.controller(FLAG)

    def shown() -> tuple[float, float, set[str]]:
        (percent,) = [
            p.value
            for a, p in points(reader, "canary.rollout.percent")
            if a == {"feature_flag.key": FLAG}
        ]
        (stage,) = [
            p.value
            for a, p in points(reader, "canary.rollout.stage")
            if a == {"feature_flag.key": FLAG}
        ]
        current = {
            a["canary.rollout.status"]
            for a, p in points(reader, "canary.rollout.status")
            if a["feature_flag.key"] == FLAG and p.value == 1
        }
        return percent, stage, current

    assert shown() == (0, 0, {"pending"})
    ctl.start()
    ctl.promote()  # two transitions between collections: the last state shows
    assert shown() == (ctl.state.percent, 2, {"running"})
    ctl.rollback("p95_breach")
    assert shown() == (0, 0, {"rolled_back"})
    ctl.reset()
    assert shown() == (0, 0, {"pending"})
