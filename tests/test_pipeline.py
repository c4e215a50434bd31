"""The one transition pipeline: persisted first, then served, announced, reported, counted;
effects once per transition in the process that made it; results rows only from what was
persisted; one tick schedule; an unreadable store does not stop the policy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from openfeature_canary import (
    ManualClock,
    Rollout,
    RolloutState,
    StateStoreError,
    Status,
    TransitionError,
    load_plan,
)
from openfeature_canary.events import OutboxError, ReportWriter
from openfeature_canary.policy import BackgroundRunner, Controller
from openfeature_canary.policy._gates import current_evidence
from openfeature_canary.policy._numbers import stage_summary
from openfeature_canary.state import LogEntry

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "canary_plan.toml"
FLAG = "dataservice-read-canary"
PHASE2 = "dataservice-user-read-canary"


class Sink:
    def __init__(self, journal: list[str] | None = None) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.journal = journal

    def enqueue(self, event_name: str, properties: Any) -> None:
        self.events.append((event_name, dict(properties)))
        if self.journal is not None:
            self.journal.append(f"event {event_name}")


class Reports:
    def __init__(self, journal: list[str]) -> None:
        self.journal = journal

    def record_stage(self, result: Any) -> None:
        self.journal.append(f"row {result.decision}")

    def append_abort(self, record: Any) -> None:
        self.journal.append(f"abort {record.trigger}")


class FakePolicy:
    """A policy whose decisions a test scripts: ``decide`` calls ``script(ctl, now)``."""

    def __init__(self, script: Any) -> None:
        self.script = script
        self.calls: list[float] = []

    def decide(self, ctl: Controller, now: float) -> RolloutState | None:
        self.calls.append(now)
        result: RolloutState | None = self.script(ctl, now)
        return result

    def baseline_loud(self, ctl: Controller, now: float) -> list[str]:
        return []


def gate_passed_target(ctl: Controller, now: float) -> RolloutState:
    """What the autopilot builds for a passed stage-1 gate: advance, the evidence logged."""
    cur = ctl.state
    evidence = stage_summary(
        ctl.flag, cur.stage, current_evidence(cur.stage, cur.since, cur.evidence)
    )
    entry = LogEntry(now, "advance", "gate_passed", {**evidence, "to_stage": 2})
    return cur.evolve(entry, stage=2, percent=25.0, since=now, windows=())


def test_rollback_seen_through_a_shared_store_is_announced_only_by_its_author(
    tmp_path: Path,
) -> None:
    plan = load_plan(EXAMPLE)
    store = f"file://{tmp_path}/state.json"
    sinks = {"author": Sink(), "watcher": Sink()}
    seen: list[RolloutState] = []
    author = Rollout(plan, store=store, events=sinks["author"])
    watcher = Rollout(
        plan, store=store, events=sinks["watcher"], serve=lambda _o, n: seen.append(n)
    )

    author.controller(FLAG).start()
    author.controller(FLAG).rollback("p95_breach")
    watcher.refresh()

    assert [n for n, _ in sinks["author"].events] == ["canary_stage_advanced", "canary_rollback"]
    assert sinks["watcher"].events == []
    assert seen and seen[-1].status is Status.ROLLED_BACK


def test_rollback_effects_run_in_the_spec_order_after_the_state_is_persisted(
    tmp_path: Path,
) -> None:
    journal: list[str] = []
    plan = load_plan(EXAMPLE)
    store = f"file://{tmp_path}/state.json"
    probe = Rollout(plan, store=store)

    def serve(_old: RolloutState, new: RolloutState) -> None:
        # By the time the flag serves the new state, any other process can read it.
        persisted = probe.store.load(new.flag_key)
        assert persisted is not None and persisted.version == new.version
        journal.append(f"serve {new.status.value}")

    rollout = Rollout(
        plan,
        store=store,
        serve=serve,
        events=Sink(journal),
        reports=Reports(journal),
        meter_provider=None,
    )
    rollout.add_observer(lambda _old, new: journal.append(f"observer {new.status.value}"))
    rollout.controller(FLAG).start()
    journal.clear()
    rollout.controller(FLAG).rollback("p95_breach")
    assert journal == [
        "serve rolled_back",
        "event canary_rollback",
        "row rollback",
        "abort operator",
        "observer rolled_back",
    ]


def test_tick_losing_its_compare_and_set_leaves_no_row_and_a_later_rollback_writes_one(
    tmp_path: Path,
) -> None:
    plan = load_plan(EXAMPLE)
    store = f"file://{tmp_path}/state.json"
    clock = ManualClock(start=1000.0)
    other = Rollout(plan, store=store, clock=clock)  # an operator in another process

    def advance_after_someone_else_wrote(ctl: Controller, now: float) -> RolloutState:
        target = gate_passed_target(ctl, now)  # decided from the state read at the tick
        other.controller(FLAG).pause("investigating")  # ... which then changes underneath
        return target

    writer = ReportWriter(tmp_path / "reports")
    policy = FakePolicy(advance_after_someone_else_wrote)
    rollout = Rollout(plan, store=store, clock=clock, policy=policy, reports=writer)
    rollout.controller(FLAG).start()
    clock.advance(600)

    assert rollout.controller(FLAG).tick() is None  # lost the race: no traceback, no effect
    assert rollout.controller(FLAG).state.status is Status.PAUSED  # their word wins
    assert writer.results() == ()

    clock.advance(30)
    rollout.controller(FLAG).rollback("bad dashboards")
    rows = writer.results()
    assert len(rows) == 1
    (row,) = rows
    assert (row.stage, row.percent, row.decision, row.reason) == (
        1,
        5.0,
        "rollback",
        "operator: bad dashboards (command:rollback)",
    )
    assert row.ended_at == 1630.0
    assert "gate_passed" not in writer.results_path.read_text()


def test_tick_if_due_ticks_once_per_period_whoever_calls() -> None:
    clock = ManualClock(start=0.0)
    policy = FakePolicy(lambda _ctl, _now: None)
    rollout = Rollout(load_plan(EXAMPLE), clock=clock, policy=policy)
    ctl = rollout.controller(FLAG)
    for _ in range(3):  # the runner and a hook, both asking in the same period
        ctl.tick_if_due()
    clock.advance(9.9)
    ctl.tick_if_due()
    clock.advance(0.1)
    ctl.tick_if_due()
    ctl.tick_if_due()
    assert policy.calls == [0.0, 10.0]


def test_tick_decides_on_the_last_known_state_when_the_store_is_unreadable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.json"
    decided: list[Status] = []

    def rollback(c: Controller, now: float) -> RolloutState:
        decided.append(c.state.status)
        return c.state.evolve(status=Status.ROLLED_BACK, percent=0.0, stage=0, reason="t")

    rollout = Rollout(
        load_plan(EXAMPLE), store=f"file://{path}", clock=ManualClock(), policy=FakePolicy(rollback)
    )
    ctl = rollout.controller(FLAG)
    ctl.start(force=True)
    path.write_text("{ not json")  # the store becomes unreadable
    with pytest.raises(StateStoreError):  # the rollback cannot be persisted: alarm
        ctl.tick()
    assert decided == [Status.RUNNING]
    assert ctl.state.status is Status.ROLLED_BACK  # but it took effect in this process


def test_background_round_one_flag_failing_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ticked: list[str] = []

    def script(ctl: Controller, _now: float) -> None:
        if ctl.key == FLAG:
            raise RuntimeError("boom")
        ticked.append(ctl.key)

    rollout = Rollout(load_plan(EXAMPLE), clock=ManualClock(), policy=FakePolicy(script))
    BackgroundRunner(rollout).run_once()
    assert ticked == [PHASE2]
    assert f"the policy tick of {FLAG} failed" in caplog.text


def test_rollout_construction_reads_nothing_until_load(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    Rollout(load_plan(EXAMPLE), store=f"file://{path}").controller(FLAG).start()
    rollout = Rollout(load_plan(EXAMPLE), store=f"file://{path}")
    assert rollout.controller(FLAG).state.status is Status.PENDING  # not read yet
    rollout.load()
    assert rollout.controller(FLAG).state.status is Status.RUNNING


def test_request_start_is_carried_out_by_the_policy_once_the_baseline_is_quiet(
    tmp_path: Path,
) -> None:
    from openfeature_canary.policy import Autopilot

    class Quiet:
        def snapshot(self, now: float) -> None: ...

        def read(self, _flag: str, signal: str, *_a: Any) -> Any:
            value = 1.0 if signal.endswith("acceptance") else 0.0  # all quiet
            return type("R", (), {"value": value, "n": 1000, "error": None})()

        read_between = read

        def count_beyond(self, flag: str, signal: str, *_a: Any) -> Any:
            return self.read(flag, signal)

    plan = load_plan(EXAMPLE)
    store = f"file://{tmp_path}/state.json"
    cli = Rollout(plan, store=store)  # the command line: no signals
    state = cli.controller(FLAG).request_start()
    assert (state.status, state.requested) == (Status.PENDING, "start")
    service = Rollout(plan, store=store, clock=ManualClock(start=5.0), policy=Autopilot(Quiet()))
    started = service.controller(FLAG).tick()
    assert started is not None
    assert (started.status, started.stage, started.requested) == (Status.RUNNING, 1, "")
    assert started.last_decision is not None
    assert started.last_decision.reason == "start requested; baseline quiet"


def test_reset_withdraws_a_requested_start(tmp_path: Path) -> None:
    rollout = Rollout(load_plan(EXAMPLE), store=f"file://{tmp_path}/state.json")
    ctl = rollout.controller(FLAG)
    ctl.request_start()
    state = ctl.reset()
    assert (state.status, state.requested) == (Status.PENDING, "")
    with pytest.raises(TransitionError, match="pending already"):
        ctl.reset()


def test_rollback_forced_on_an_unwritable_store_is_persisted_once_it_is_repaired(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.json"
    plan = load_plan(EXAMPLE)
    journal: list[str] = []
    rollout = Rollout(plan, store=f"file://{path}", events=Sink(journal))
    ctl = rollout.controller(FLAG)
    ctl.start()
    while ctl.state.stage < 4:
        ctl.promote()
    good = path.read_bytes()
    path.write_text("{ not json")
    with pytest.raises(StateStoreError):
        ctl.rollback("ops saw errors")
    assert ctl.state.status is Status.ROLLED_BACK  # off here at once
    path.write_bytes(good)  # the store is restored from a copy taken before the rollback
    rollout.load()
    # Repairing the store did not turn the canary back on: the rollback is written there now,
    # without announcing it a second time.
    fresh = Rollout(plan, store=f"file://{path}")
    fresh.load()
    assert fresh.controller(FLAG).state.status is Status.ROLLED_BACK
    assert fresh.controller(FLAG).state.reason == "ops saw errors"
    assert ctl.state.version == fresh.controller(FLAG).state.version
    assert journal.count("event canary_rollback") == 1


class DownOutbox(Sink):
    """An outbox that lives in the store: it cannot queue while the store is down (an
    OutboxError is what a Redis outbox raises then; a real store cannot be failed on cue)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def enqueue(self, event_name: str, properties: Any) -> None:
        if self.down:
            raise OutboxError("redis://127.0.0.1:1/0: outbox: cannot queue an event: down")
        super().enqueue(event_name, properties)


def test_rollback_forced_while_the_outbox_is_down_is_announced_once_it_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.json"
    outbox = DownOutbox()
    rollout = Rollout(load_plan(EXAMPLE), store=f"file://{path}", events=outbox)
    ctl = rollout.controller(FLAG)
    ctl.start()
    good = path.read_bytes()
    path.write_text("{ not json")
    outbox.down = True
    with pytest.raises(StateStoreError):
        ctl.rollback("ops saw errors")
    assert [name for name, _ in outbox.events] == ["canary_stage_advanced"]
    # One line says why, no traceback.
    failed = [r for r in caplog.records if "queueing the telemetry event failed" in r.message]
    assert failed and all(r.exc_info is None for r in failed)
    path.write_bytes(good)
    outbox.down = False
    rollout.load()  # the forced rollback is persisted now, and its event queued
    assert [name for name, _ in outbox.events] == ["canary_stage_advanced", "canary_rollback"]
    rollout.load()
    assert [name for name, _ in outbox.events].count("canary_rollback") == 1


def test_load_refuses_a_stage_beyond_the_plan_before_adopting_any_flag(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    plan = load_plan(EXAMPLE)
    Rollout(plan, store=f"file://{path}").controller(FLAG).start()
    data = json.loads(path.read_text())
    data["flags"][FLAG]["stage"] = 99
    path.write_text(json.dumps(data))
    rollout = Rollout(plan, store=f"file://{path}")
    with pytest.raises(StateStoreError, match=r"stage: must be in 0\.\.4"):
        rollout.load()
    assert rollout.controller(FLAG).state.status is Status.PENDING  # nothing adopted
