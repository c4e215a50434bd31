"""Effects happen once per transition, in the process that made it; shared tick schedule;
an unreadable store does not stop the policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from openfeature_canary import (
    ManualClock,
    Rollout,
    RolloutState,
    StateStoreError,
    Status,
    load_plan,
)
from openfeature_canary._effects import Effects

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "canary_plan.toml"
FLAG = "dataservice-read-canary"


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def enqueue(self, event_name: str, properties: Any) -> None:
        self.events.append((event_name, dict(properties)))


def test_rollback_seen_through_a_shared_store_is_announced_only_by_its_author(
    tmp_path: Path,
) -> None:
    plan = load_plan(EXAMPLE)
    store = f"file://{tmp_path}/state.json"
    author, watcher = Rollout(plan, store=store), Rollout(plan, store=store)
    sinks = {"author": Sink(), "watcher": Sink()}
    seen: list[RolloutState] = []
    author.add_listener(Effects(events=sinks["author"]), local_only=True)
    watcher.add_listener(Effects(events=sinks["watcher"]), local_only=True)
    watcher.add_listener(lambda _old, new: seen.append(new))  # e.g. the provider's snapshot

    author.controller(FLAG).start()
    author.controller(FLAG).rollback("p95_breach")
    watcher.refresh()

    assert [n for n, _ in sinks["author"].events] == ["canary_stage_advanced", "canary_rollback"]
    assert sinks["watcher"].events == []
    assert seen and seen[-1].status is Status.ROLLED_BACK


def test_tick_if_due_ticks_once_per_period_whoever_calls(tmp_path: Path) -> None:
    clock = ManualClock(start=0.0)
    rollout = Rollout(load_plan(EXAMPLE), clock=clock)
    ctl = rollout.controller(FLAG)
    calls: list[float] = []
    ctl.decider = lambda _ctl, now: calls.append(now)  # type: ignore[assignment,func-returns-value]
    for _ in range(3):  # the runner and a hook, both asking in the same period
        ctl.tick_if_due()
    clock.advance(9.9)
    ctl.tick_if_due()
    clock.advance(0.1)
    ctl.tick_if_due()
    ctl.tick_if_due()
    assert calls == [0.0, 10.0]


def test_tick_decides_on_the_last_known_state_when_the_store_is_unreadable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.json"
    rollout = Rollout(load_plan(EXAMPLE), store=f"file://{path}", clock=ManualClock())
    ctl = rollout.controller(FLAG)
    ctl.start()
    path.write_text("{ not json")  # the store becomes unreadable
    decided: list[Status] = []

    def decider(c: Any, now: float) -> RolloutState:
        decided.append(c.state.status)
        return c.state.evolve(status=Status.ROLLED_BACK, percent=0.0, stage=0, reason="t")

    ctl.decider = decider
    with pytest.raises(StateStoreError):  # the rollback cannot be persisted: alarm
        ctl.tick()
    assert decided == [Status.RUNNING]
    assert ctl.state.status is Status.ROLLED_BACK  # but it took effect in this process
