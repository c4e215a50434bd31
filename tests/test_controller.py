"""Operator commands of a flag's controller, from every status (spec §7)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from openfeature_canary import (
    Controller,
    ManualClock,
    MemoryStateStore,
    Rollout,
    RolloutPlan,
    RolloutState,
    StateStoreError,
    Status,
    TransitionError,
    UnknownFlagError,
    load_plan,
)
from openfeature_canary.policy import ALLOWED

F1 = "dataservice-read-canary"
F2 = "dataservice-user-read-canary"
T0 = 1000.0
COMMANDS = ("start", "pause", "resume", "promote", "rollback", "reset")

Decide = Callable[[Controller, float], RolloutState | None]


class FakePolicy:
    """A policy whose decisions a test scripts (the ``Policy`` protocol): ``decide`` calls
    ``decide_fn`` (nothing to do by default); the baseline's ``loud`` triggers are fixed."""

    def __init__(self, decide_fn: Decide | None = None, loud: tuple[str, ...] = ()) -> None:
        self.decide_fn = decide_fn
        self.loud = loud

    def decide(self, ctl: Controller, now: float) -> RolloutState | None:
        return None if self.decide_fn is None else self.decide_fn(ctl, now)

    def baseline_loud(self, ctl: Controller, now: float) -> list[str]:
        return list(self.loud)


def _no_evidence(planned_p95_ms: float, planned_error_rate: float) -> dict[str, object]:
    """The stage evidence numbers of a stage that gathered no window."""
    return {
        "planned_p95_ms": planned_p95_ms,
        "observed_p95_ms": None,
        "planned_error_rate": planned_error_rate,
        "observed_error_rate": None,
        "samples": 0,
        "windows_passed": 0,
        "windows_failed": 0,
        "windows_inconclusive": 0,
        "baseline_samples": 0,
        "baseline_p95_ms": None,
        "baseline_error_rate": None,
    }


@pytest.fixture
def plan(example_plan_path: Path) -> RolloutPlan:
    return load_plan(example_plan_path)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=T0)


@pytest.fixture
def rollout(plan: RolloutPlan, clock: ManualClock) -> Rollout:
    return Rollout(plan, store="memory://", clock=clock)


def _bring_to(ctl: Controller, clock: ManualClock, status: Status) -> None:
    """Drive the flag into ``status`` with operator commands, one virtual minute apart."""
    steps: dict[Status, list[Callable[[], object]]] = {
        Status.PENDING: [],
        Status.RUNNING: [ctl.start, ctl.promote],  # stage 2, 25 %
        Status.PAUSED: [ctl.start, ctl.promote, ctl.pause],
        Status.COMPLETED: [ctl.start, ctl.promote, ctl.promote, ctl.promote, ctl.promote],
        Status.ROLLED_BACK: [ctl.start, ctl.promote, lambda: ctl.rollback("p95_breach")],
    }
    for step in steps[status]:
        step()
        clock.advance(60)
    assert ctl.state.status is status


def _run(ctl: Controller, command: str) -> RolloutState:
    if command == "rollback":
        return ctl.rollback("error_rate_breach", {"value": 0.007, "threshold": 0.005})
    result: RolloutState = getattr(ctl, command)()
    return result


# (command, from status) -> (status, stage, percent, reason, log action)
EXPECTED: dict[tuple[str, Status], tuple[Status, int, float, str, str]] = {
    ("start", Status.PENDING): (Status.RUNNING, 1, 5.0, "started", "start"),
    ("pause", Status.RUNNING): (Status.PAUSED, 2, 25.0, "operator", "pause"),
    ("resume", Status.PAUSED): (Status.RUNNING, 2, 25.0, "resumed", "resume"),
    ("promote", Status.RUNNING): (Status.RUNNING, 3, 50.0, "operator", "advance"),
    ("promote", Status.PAUSED): (Status.RUNNING, 3, 50.0, "operator", "advance"),
    ("rollback", Status.PENDING): (Status.ROLLED_BACK, 0, 0.0, "error_rate_breach", "rollback"),
    ("rollback", Status.RUNNING): (Status.ROLLED_BACK, 0, 0.0, "error_rate_breach", "rollback"),
    ("rollback", Status.PAUSED): (Status.ROLLED_BACK, 0, 0.0, "error_rate_breach", "rollback"),
    ("rollback", Status.COMPLETED): (Status.ROLLED_BACK, 0, 0.0, "error_rate_breach", "rollback"),
    ("reset", Status.RUNNING): (Status.PENDING, 0, 0.0, "reset", "reset"),
    ("reset", Status.PAUSED): (Status.PENDING, 0, 0.0, "reset", "reset"),
    ("reset", Status.COMPLETED): (Status.PENDING, 0, 0.0, "reset", "reset"),
    ("reset", Status.ROLLED_BACK): (Status.PENDING, 0, 0.0, "reset", "reset"),
}

# (command, from status) -> what the refusal must say besides "cannot <command> <flag>: it is <s>"
REFUSED: dict[tuple[str, Status], str] = {
    ("start", Status.RUNNING): "already",
    ("start", Status.PAUSED): "resume it first",
    ("start", Status.COMPLETED): "reset it to run again",
    ("start", Status.ROLLED_BACK): "(reason: p95_breach); reset it first",
    ("pause", Status.PENDING): "start it first",
    ("pause", Status.PAUSED): "already",
    ("pause", Status.COMPLETED): "reset it to run again",
    ("pause", Status.ROLLED_BACK): "reset it first",
    ("resume", Status.PENDING): "start it first",
    ("resume", Status.RUNNING): "",
    ("resume", Status.COMPLETED): "reset it to run again",
    ("resume", Status.ROLLED_BACK): "reset it first",
    ("promote", Status.PENDING): "start it first",
    ("promote", Status.COMPLETED): "reset it to run again",
    ("promote", Status.ROLLED_BACK): "(reason: p95_breach); reset it first",
    ("rollback", Status.ROLLED_BACK): "already",
    ("reset", Status.PENDING): "already",
}


def test_command_tables_cover_every_command_from_every_status() -> None:
    pairs = {(c, s) for c in COMMANDS for s in Status}
    assert set(EXPECTED) | set(REFUSED) == pairs
    assert not set(EXPECTED) & set(REFUSED)
    assert {k for k in pairs if k[1] in ALLOWED[k[0]]} == set(EXPECTED)


@pytest.mark.parametrize(("command", "status"), list(EXPECTED), ids=lambda v: str(v))
def test_controller_allowed_command_moves_state_persists_and_logs(
    rollout: Rollout, clock: ManualClock, command: str, status: Status
) -> None:
    ctl = rollout.controller(F1)
    _bring_to(ctl, clock, status)
    before = ctl.state
    seen: list[tuple[RolloutState, RolloutState]] = []
    rollout.add_observer(lambda old, new: seen.append((old, new)))
    now = clock.advance(30)

    new = _run(ctl, command)

    want_status, want_stage, want_pct, want_reason, want_action = EXPECTED[command, status]
    assert (new.status, new.stage, new.percent, new.reason) == (
        want_status,
        want_stage,
        want_pct,
        want_reason,
    )
    assert new.since == now
    assert new.version == before.version + 1
    assert new.log[:-1] == before.log
    entry = new.log[-1]
    assert (entry.at, entry.action) == (now, want_action)
    assert ctl.state == new
    assert rollout.store.load(F1) == new
    assert seen == [(before, new)]


@pytest.mark.parametrize(("command", "status"), list(REFUSED), ids=lambda v: str(v))
def test_controller_disallowed_command_raises_transition_error_and_changes_nothing(
    rollout: Rollout, clock: ManualClock, command: str, status: Status
) -> None:
    ctl = rollout.controller(F1)
    _bring_to(ctl, clock, status)
    before = ctl.state
    with pytest.raises(TransitionError) as info:
        _run(ctl, command)
    message = str(info.value)
    assert message.startswith(f"cannot {command} {F1}: it is {status.value}")
    assert REFUSED[command, status] in message
    assert ctl.state == before
    assert (rollout.store.load(F1) or RolloutState(flag_key=F1)) == before


def test_controller_promote_when_rolled_back_tells_to_reset(
    rollout: Rollout, clock: ManualClock
) -> None:
    ctl = rollout.controller(F1)
    _bring_to(ctl, clock, Status.ROLLED_BACK)
    with pytest.raises(TransitionError, match=r"rolled_back.*reset"):
        ctl.promote()


def test_controller_promote_through_every_stage_then_completes(
    rollout: Rollout, clock: ManualClock
) -> None:
    ctl = rollout.controller(F1)
    seen = [(ctl.start().stage, ctl.state.percent)]
    for _ in range(3):
        clock.advance(600)
        state = ctl.promote()
        seen.append((state.stage, state.percent))
    assert seen == [(1, 5.0), (2, 25.0), (3, 50.0), (4, 100.0)]
    clock.advance(86400)
    done = ctl.promote()
    assert (done.status, done.stage, done.percent, done.since) == (
        Status.COMPLETED,
        4,
        100.0,
        T0 + 1800 + 86400,
    )
    assert done.log[-1].action == "complete"
    assert [e.action for e in done.log] == ["start", "advance", "advance", "advance", "complete"]


def test_controller_advance_log_entry_carries_stage_numbers(
    rollout: Rollout, clock: ManualClock
) -> None:
    ctl = rollout.controller(F1)
    ctl.start()
    entry = ctl.promote("gate passed", by="erin").log[-1]
    # A command's reason is "operator"; the operator's words are its note.
    assert (entry.reason, entry.rule, entry.by) == ("operator", "command:promote", "operator:erin")
    # The stage numbers, and the evidence of the stage it ended (its results row is built
    # from these): stage 1 plans P95 <= 150 ms and 5xx <= 0.1 %, and saw no window here.
    assert dict(entry.numbers) == {
        "from_stage": 1,
        "to_stage": 2,
        "to_pct": 25.0,
        **_no_evidence(150.0, 0.001),
        "note": "gate passed",
    }


def test_controller_rollback_records_from_stage_and_numbers(
    rollout: Rollout, clock: ManualClock
) -> None:
    ctl = rollout.controller(F1)
    _bring_to(ctl, clock, Status.RUNNING)
    entry = ctl.rollback("p95_breach", {"value": 162.0, "threshold": 150}).log[-1]
    assert (entry.action, entry.reason, entry.rule) == ("rollback", "operator", "command:rollback")
    assert entry.by.startswith("operator:")  # the login name by default
    assert ctl.state.reason == "p95_breach"  # the state shows the operator's words
    assert dict(entry.numbers) == {
        "from_stage": 2,
        "from_pct": 25.0,
        **_no_evidence(140.0, 0.002),
        "note": "p95_breach",
        "value": 162.0,
        "threshold": 150,
    }


@pytest.mark.parametrize("reason", ["", "   "])
def test_controller_rollback_without_reason_raises_value_error(
    rollout: Rollout, reason: str
) -> None:
    ctl = rollout.controller(F1)
    ctl.start()
    with pytest.raises(ValueError, match="reason"):
        ctl.rollback(reason)
    assert ctl.state.status is Status.RUNNING


def test_controller_pause_keeps_reason_and_percent(rollout: Rollout, clock: ManualClock) -> None:
    ctl = rollout.controller(F1)
    ctl.start()
    state = ctl.pause("waiting for the on-call")
    assert (state.status, state.percent, state.reason) == (
        Status.PAUSED,
        5.0,
        "waiting for the on-call",
    )


# ------------------------------------------------------------------ phases


@pytest.mark.parametrize("phase1", [Status.PENDING, Status.RUNNING, Status.PAUSED])
def test_controller_phase_two_start_before_phase_one_completes_raises(
    rollout: Rollout, clock: ManualClock, phase1: Status
) -> None:
    _bring_to(rollout.controller(F1), clock, phase1)
    with pytest.raises(TransitionError) as info:
        rollout.controller(F2).start()
    assert str(info.value) == f"cannot start {F2}: it runs after {F1}, which is {phase1.value}"
    assert rollout.controller(F2).state.status is Status.PENDING


def test_controller_phase_two_starts_once_phase_one_completed(
    rollout: Rollout, clock: ManualClock
) -> None:
    _bring_to(rollout.controller(F1), clock, Status.COMPLETED)
    state = rollout.controller(F2).start()
    assert (state.status, state.stage, state.percent) == (Status.RUNNING, 1, 5.0)


def test_controller_phase_two_sees_phase_one_completed_by_another_process(
    plan: RolloutPlan, clock: ManualClock
) -> None:
    store = MemoryStateStore()
    here = Rollout(plan, store=store, clock=clock)
    there = Rollout(plan, store=store, clock=clock)
    _bring_to(there.controller(F1), clock, Status.COMPLETED)
    assert here.controller(F2).start().status is Status.RUNNING


# ------------------------------------------------------------------ concurrency, store, clock


def test_controller_command_on_stale_view_applies_to_latest_state(
    plan: RolloutPlan, clock: ManualClock
) -> None:
    store = MemoryStateStore()
    a = Rollout(plan, store=store, clock=clock)
    b = Rollout(plan, store=store, clock=clock)
    a.controller(F1).start()
    # b still believes the flag is pending; its promote must build on a's start.
    state = b.controller(F1).promote()
    assert (state.stage, state.version) == (2, 2)


def test_controller_command_on_stale_view_respects_other_rollback(
    plan: RolloutPlan, clock: ManualClock
) -> None:
    store = MemoryStateStore()
    a = Rollout(plan, store=store, clock=clock)
    b = Rollout(plan, store=store, clock=clock)
    b.controller(F1).start()
    a.controller(F1).refresh()
    b.controller(F1).rollback("ledger_mismatch")
    with pytest.raises(TransitionError, match=r"rolled_back \(reason: ledger_mismatch\)"):
        a.controller(F1).promote()
    assert store.load(F1) == b.controller(F1).state


class _UnwritableStore(MemoryStateStore):
    """A store whose disk is gone: reads work, writes fail (a fault on demand)."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = False

    def save(self, state: RolloutState, expected_version: int) -> None:
        if self.broken:
            raise StateStoreError(f"{self.url}: cannot write: No space left on device")
        super().save(state, expected_version)


def test_controller_rollback_when_store_fails_still_turns_flag_off_here(
    plan: RolloutPlan, clock: ManualClock
) -> None:
    store = _UnwritableStore()
    rollout = Rollout(plan, store=store, clock=clock)
    seen: list[Status] = []
    rollout.add_observer(lambda _old, new: seen.append(new.status))
    ctl = rollout.controller(F1)
    ctl.start()
    store.broken = True
    with pytest.raises(StateStoreError, match="No space left"):
        ctl.rollback("p95_breach")
    assert (ctl.state.status, ctl.state.percent) == (Status.ROLLED_BACK, 0.0)
    assert seen == [Status.RUNNING, Status.ROLLED_BACK]
    # Other commands are not forced locally: the store stays the truth for them.
    store.broken = False
    assert store.load(F1) is not None and store.load(F1).status is Status.RUNNING  # type: ignore[union-attr]


def test_controller_promote_when_store_fails_changes_nothing(
    plan: RolloutPlan, clock: ManualClock
) -> None:
    store = _UnwritableStore()
    ctl = Rollout(plan, store=store, clock=clock).controller(F1)
    ctl.start()
    store.broken = True
    before = ctl.state
    with pytest.raises(StateStoreError):
        ctl.promote()
    assert ctl.state == before


def test_controller_since_follows_manual_clock(rollout: Rollout, clock: ManualClock) -> None:
    ctl = rollout.controller(F1)
    assert ctl.start().since == T0
    clock.advance(600)
    assert ctl.pause().since == T0 + 600
    clock.set(T0 + 5400)
    assert ctl.resume().since == T0 + 5400


def test_rollout_reopened_on_same_store_continues_from_persisted_state(
    plan: RolloutPlan, clock: ManualClock
) -> None:
    store = MemoryStateStore()
    first = Rollout(plan, store=store, clock=clock)
    first.controller(F1).start()
    first.controller(F1).promote()
    reopened = Rollout(plan, store=store, clock=clock)
    # Building a rollout reads nothing: the flag is pending (the safe side) until load().
    assert reopened.controller(F1).state == RolloutState(flag_key=F1)
    reopened.load()
    again = reopened.controller(F1).state
    assert (again.status, again.stage, again.version) == (Status.RUNNING, 2, 2)
    # The next command builds on the persisted state.
    assert reopened.controller(F1).promote().version == 3


def test_controller_tick_applies_policy_target_with_now(
    plan: RolloutPlan, clock: ManualClock
) -> None:
    store = MemoryStateStore()
    calls: list[float] = []

    def decide(c: Controller, now: float) -> RolloutState | None:
        calls.append(now)
        return None if len(calls) == 1 else c.state.evolve(c.state.log[-1], reason="decided")

    plain = Rollout(plan, store=store, clock=clock)
    plain.controller(F1).start()
    assert plain.controller(F1).tick() is None  # no policy: a tick only re-reads the store
    rollout = Rollout(plan, store=store, clock=clock, policy=FakePolicy(decide))
    ctl = rollout.controller(F1)
    clock.advance(10)
    assert ctl.tick() is None
    decided = ctl.tick()
    assert decided is not None and decided.reason == "decided"
    assert ctl.state == decided == rollout.store.load(F1)
    assert calls == [T0 + 10, T0 + 10]


def test_controller_tick_without_policy_adopts_another_writers_state(
    plan: RolloutPlan, clock: ManualClock
) -> None:
    store = MemoryStateStore()
    here = Rollout(plan, store=store, clock=clock)
    seen: list[tuple[RolloutState, RolloutState]] = []
    here.add_observer(lambda old, new: seen.append((old, new)))
    there = Rollout(plan, store=store, clock=clock)
    started = there.controller(F1).start()

    assert here.controller(F1).tick() is None

    assert here.controller(F1).state == started
    assert seen == [(RolloutState(flag_key=F1), started)]


def test_controller_tick_losing_compare_and_set_returns_none_and_adopts_winner(
    plan: RolloutPlan, clock: ManualClock
) -> None:
    store = MemoryStateStore()
    other = Rollout(plan, store=store, clock=clock)  # another process on the same store

    def decide(c: Controller, now: float) -> RolloutState | None:
        target = c.state.evolve(c.state.log[-1], reason="decided")
        other.controller(F1).rollback("ledger_mismatch")  # it writes while we decide
        return target

    rollout = Rollout(plan, store=store, clock=clock, policy=FakePolicy(decide))
    ctl = rollout.controller(F1)
    ctl.start()
    seen: list[Status] = []
    rollout.add_observer(lambda _old, new: seen.append(new.status))

    assert ctl.tick() is None  # no StaleStateError: the other writer's word wins

    winner = store.load(F1)
    assert winner is not None
    assert (winner.status, winner.reason, winner.version) == (
        Status.ROLLED_BACK,
        "ledger_mismatch",
        2,
    )
    assert ctl.state == winner
    assert seen == [Status.ROLLED_BACK]


def test_controller_start_with_policy_and_loud_baseline_raises_unless_forced(
    plan: RolloutPlan, clock: ManualClock
) -> None:
    policy = FakePolicy(loud=("p95_breach", "error_rate_breach"))
    rollout = Rollout(plan, clock=clock, policy=policy)
    ctl = rollout.controller(F1)

    with pytest.raises(TransitionError) as info:
        ctl.start()

    assert str(info.value) == (
        f"cannot start {F1}: the baseline is not quiet (p95_breach, error_rate_breach); "
        "fix it or start with force"
    )
    assert ctl.state.status is Status.PENDING
    assert rollout.store.load(F1) is None
    forced = ctl.start(force=True)
    assert (forced.status, forced.stage, forced.percent) == (Status.RUNNING, 1, 5.0)
    policy.loud = ()
    ctl.reset()
    assert ctl.start().status is Status.RUNNING  # a quiet baseline: the gate passes


def test_controller_request_start_records_request_and_stays_pending(
    rollout: Rollout, clock: ManualClock
) -> None:
    ctl = rollout.controller(F1)
    now = clock.advance(5)

    requested = ctl.request_start()

    assert (requested.status, requested.percent, requested.requested, requested.version) == (
        Status.PENDING,
        0.0,
        "start",
        1,
    )
    assert (requested.log[-1].at, requested.log[-1].action) == (now, "request_start")
    assert rollout.store.load(F1) == requested
    with pytest.raises(TransitionError, match="a start is requested already"):
        ctl.request_start()
    started = ctl.start()
    assert (started.status, started.requested) == (Status.RUNNING, "")


def test_controller_request_start_phase_two_before_phase_one_completes_raises(
    rollout: Rollout,
) -> None:
    with pytest.raises(TransitionError, match=f"it runs after {F1}, which is pending"):
        rollout.controller(F2).request_start()
    assert rollout.store.load(F2) is None


def test_rollout_unknown_flag_raises_unknown_flag_error(rollout: Rollout) -> None:
    with pytest.raises(UnknownFlagError, match="unknown flag 'nope'"):
        rollout.controller("nope")
    assert [c.key for c in rollout.controllers()] == [F1, F2]
