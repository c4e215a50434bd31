"""Issue 15 §5-7 through the public API in virtual time: lines are histogram bounds, rate
triggers need evidence, a stage goes only on evidence that covers it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from coverage_world import KEY, World, make_world, plan_with
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from openfeature_canary import InProcessSignalSource, PlanError, Status, parse_plan
from openfeature_canary.signals._histogram import line_not_a_bound

ERROR_TRIGGER = {
    "name": "error_rate_breach",
    "signal": "error_rate",
    "at_least": 0.005,
    "window": "1m",
}
LONG_STAGE = {"percent": 50, "duration": "1h", "window": "10m"}


@pytest.fixture
def worlds() -> Iterator[list[World]]:
    made: list[World] = []
    yield made
    for world in made:
        world.close()


@pytest.mark.parametrize(("errors", "fires"), [(1, False), (2, False), (3, True)])
def test_an_error_rate_trigger_needs_three_5xx(
    worlds: list[World], errors: int, fires: bool
) -> None:
    # 150 canary requests in the trigger's minute: one 5xx reads 0.67 % >= 0.5 %, which
    # rolled back 2 of 200 healthy rollouts at 5 rps; three (2 %) are evidence.
    world = make_world(plan_with([LONG_STAGE], [ERROR_TRIGGER]))
    worlds.append(world)
    world.serve("on", 150 - errors)
    world.serve("on", errors, status=503)
    world.serve("off", 150)
    world.tick()
    state = world.ctl.state
    if fires:
        assert (state.status, state.reason) == (Status.ROLLED_BACK, "error_rate_breach")
        assert state.log[-1].numbers["value"] == pytest.approx(0.02)
    else:
        assert state.status is Status.RUNNING, state.reason


def test_three_5xx_under_the_line_do_not_fire(worlds: list[World]) -> None:
    world = make_world(plan_with([LONG_STAGE], [ERROR_TRIGGER]))
    worlds.append(world)
    world.serve("on", 997)
    world.serve("on", 3, status=500)  # 0.3 % < 0.5 %
    world.tick()
    assert world.ctl.state.status is Status.RUNNING


def test_min_events_is_a_plan_key(worlds: list[World]) -> None:
    world = make_world(plan_with([LONG_STAGE], [{**ERROR_TRIGGER, "min_events": 1}]))
    worlds.append(world)
    world.serve("on", 149)
    world.serve("on", 1, status=500)
    world.tick()
    assert world.ctl.state.reason == "error_rate_breach"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"min_events": 0}, "flags.f.triggers[0].min_events: must be >= 1, got 0"),
        ({"min_events": 2.5}, "min_events: must be an integer, got float"),
        (
            {"signal": "latency_p95_ms", "at_least": 150, "min_events": 3},
            "min_events: counts the events behind a rate; latency_p95_ms is not one",
        ),
    ],
)
def test_min_events_is_validated(changes: dict[str, object], message: str) -> None:
    with pytest.raises(PlanError, match=re.escape(message)):
        parse_plan(
            {"flags": {"f": {"stages": [LONG_STAGE], "triggers": [{**ERROR_TRIGGER, **changes}]}}}
        )


# --------------------------------------------------------------- a stage goes on evidence


class FlakyReader(InMemoryMetricReader):
    """An in-memory reader whose collection fails while ``failing`` is set (the fault a real
    reader cannot produce on demand: an exporter or a collector that breaks)."""

    failing = False

    def get_metrics_data(self) -> Any:
        if self.failing:
            raise RuntimeError("collector down")
        return super().get_metrics_data()


STAGE_ACTIONS = ("extend", "advance", "complete", "pause", "rollback")
SHORT_STAGES = [
    {"percent": 50, "duration": "30s", "window": "10s", "max_p95_ms": 150},
    {"percent": 100, "duration": "30s", "window": "10s", "max_p95_ms": 150},
]


def healthy_second(world: World, rps: int = 20) -> None:
    world.serve("on", rps, 0.06)
    world.serve("off", rps, 0.06)


def test_a_source_failing_over_the_end_of_a_stage_holds_it(worlds: list[World]) -> None:
    reader = FlakyReader()
    plan = plan_with(SHORT_STAGES)
    world = make_world(plan, source=InProcessSignalSource(reader, plan=plan), reader=reader)
    worlds.append(world)
    for second in range(1, 61):
        # Down for the last 20 s of stage 1 and 15 s after its end.
        reader.failing = 10 <= second < 45
        healthy_second(world)
        world.tick()
        state = world.ctl.state
        if second < 45:
            assert (state.stage, state.status) == (1, Status.RUNNING), (second, world.reasons)
    actions = [(a, r, at) for a, r, at in world.reasons if a in STAGE_ACTIONS]
    assert actions[0][:1] == ("extend",) and "signal source error" in actions[0][1], actions
    assert actions[0][2] == 30
    # Recovered at 45 s: the counts of 9..45 s are read, and the stage goes on them.
    assert ("advance", "gate_passed", 45.0) in actions, actions


def test_a_breach_in_the_last_seconds_of_a_stage_is_not_followed_by_complete(
    worlds: list[World],
) -> None:
    # The issue's case: a 300 ms fault 2.7 s before the end of the last stage failed its
    # window, and 0.1 s later the flag went complete. Here the fault is 30 slow requests in
    # the stage's last 3 s: 13 % of the last window over the P95 line, 2.5 % of the stage.
    stage = {"percent": 100, "duration": "60s", "window": "10s", "max_p95_ms": 150}
    world = make_world(plan_with([stage]))
    worlds.append(world)
    for second in range(1, 91):
        healthy_second(world)
        if 57 <= second <= 59:
            world.serve("on", 10, 0.4)
        world.tick()
        if world.ctl.state.status is not Status.RUNNING:
            break
    actions = [(a, r, at) for a, r, at in world.reasons if a in STAGE_ACTIONS]
    assert actions[0][0] == "extend" and actions[0][2] == 60, actions
    assert actions[0][1].startswith("the last window fails (over P95 line"), actions
    # It completes once the fault has left the trailing window (10 s), not before.
    assert actions[-1][:2] == ("complete", "gate_passed"), actions
    assert actions[-1][2] >= 68, actions


# --------------------------------------------------------------- lines are bounds

UNBOUNDED = (
    "the P95 line of stage 1 (130 ms) is not a bound of the request-duration histogram "
    "(its bounds: 100, 250 ms)"
)
P95_TRIGGER = {"name": "p95_breach", "signal": "latency_p95_ms", "above": 150, "for": "5m"}


def test_a_line_between_histogram_bounds_is_refused_in_process(
    worlds: list[World], caplog: pytest.LogCaptureFixture
) -> None:
    # The issue's case: bounds 100/250 ms and a 130 ms line; a healthy service (1.2 % over
    # 130 ms) read 5.3 % by interpolation, a false breach.
    stage = {"percent": 50, "duration": "10s", "window": "5s", "max_p95_ms": 130}
    world = make_world(plan_with([stage], [P95_TRIGGER]), bounds_s=(0.1, 0.25))
    worlds.append(world)
    for _ in range(20):
        healthy_second(world)
        world.tick()
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refusals == [f"{KEY}: refused: {UNBOUNDED}"]  # once, one line
    state = world.ctl.state
    # Held (no evidence, no go), then paused once held for its duration again.
    assert (state.stage, state.status) == (1, Status.PAUSED)
    actions = [(a, r) for a, r, _ in world.reasons if a in STAGE_ACTIONS]
    held = f"holding: the stage's signals do not reach its end (signal source error: {UNBOUNDED})"
    assert actions == [("extend", held), ("pause", held)]
    last = world.autopilot.last(KEY)
    assert last is not None and last.triggers["p95_breach"].error == UNBOUNDED


def test_setup_telemetry_views_make_every_line_a_bound(worlds: list[World]) -> None:
    stage = {"percent": 100, "duration": "10s", "window": "5s", "max_p95_ms": 133}
    world = make_world(plan_with([stage], [{**P95_TRIGGER, "above": 137}]))
    worlds.append(world)
    for _ in range(11):
        healthy_second(world)
        world.tick()
    assert world.ctl.state.status is Status.COMPLETED, world.reasons


def test_line_not_a_bound_takes_a_bound_stored_in_seconds_and_names_the_first_miss() -> None:
    bounds_ms = [b * 1000 for b in (0.1, 0.13, 0.15)]  # 0.15 * 1000 == 150.00000000000003
    lines = {"the P95 line of stage 1": 150.0, "trigger p99's threshold": 130.0}
    assert line_not_a_bound(lines, bounds_ms, "h") is None
    missing = {**lines, "the P99 line of stage 2": 250.0, "trigger x's threshold": 99.0}
    assert line_not_a_bound(missing, bounds_ms, "h") == (
        "the P99 line of stage 2 (250 ms) is not a bound of h (its bounds: 100, 130, 150 ms)"
    )
    assert line_not_a_bound({"a": 1.0}, [], "h") == "a (1 ms) is not a bound of h (no bounds)"
