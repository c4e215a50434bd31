"""Issue 15 §5-7 through the public API in virtual time: lines are histogram bounds, rate
triggers need evidence, a stage goes only on evidence that covers it."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from coverage_world import World, make_world, plan_with

from openfeature_canary import PlanError, Status, parse_plan

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
