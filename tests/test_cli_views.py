"""The operator views by value: time left in a stage, the next decision (with what the gate
needs from the decision log), the short last decision, the history lines."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from openfeature_canary import load_plan
from openfeature_canary.cli._views import (
    SHORT_DECISION_MAX,
    history_json,
    history_lines,
    left_text,
    next_decision,
    short_decision,
    stage_clock,
)
from openfeature_canary.evidence import StageEvidence
from openfeature_canary.plan import FlagPlan
from openfeature_canary.state import LogEntry, Number, RolloutState, Status

READ = "dataservice-read-canary"
T0 = 1_767_225_600.0


@pytest.fixture
def flag(example_plan_path) -> FlagPlan:
    return load_plan(example_plan_path).flag(READ)


def _entry(at: float, action: str, reason: str, **numbers: Number) -> LogEntry:
    return LogEntry(at=at, action=action, reason=reason, numbers=MappingProxyType(numbers))


def _running(
    stage: int, since: float, *log: LogEntry, through: float | None = None
) -> RolloutState:
    evidence = (
        None if through is None else StageEvidence(stage=stage, started=since, through=through)
    )
    return RolloutState(
        flag_key=READ,
        status=Status.RUNNING,
        stage=stage,
        percent=5.0,
        since=since,
        version=len(log) + 1,
        log=log,
        evidence=evidence,
    )


def test_stage_clock_time_left_and_next_tick(flag):
    state = _running(1, T0, through=T0 + 120)
    clock = stage_clock(flag, state, T0 + 125)
    assert clock is not None
    assert (clock.left_s, clock.next_tick_at) == (475.0, T0 + 130)  # 10m stage, tick 10s
    assert left_text(flag, state, T0 + 125) == "7m55s"
    assert left_text(flag, state, T0 + 601) == "gate due"
    paused = RolloutState(flag_key=READ, status=Status.PAUSED, stage=1, since=T0)
    assert stage_clock(flag, paused, T0) is None
    assert left_text(flag, paused, T0) == "-"


def test_next_decision_says_what_the_gate_needs(flag):
    short = _entry(T0 + 600, "extend", "too little information", needed=412, needed_s=190)
    state = _running(1, T0, short, through=T0 + 600)
    line = next_decision(flag, state, T0 + 603)
    assert line == (
        "next tick in 7s; gate due at each tick; gate needs 412 more canary requests "
        "(~3m10s at this rate)"
    )
    # what an earlier stage needed is not this stage's
    assert "needs" not in next_decision(flag, _running(2, T0 + 601, short), T0 + 700)
    # a guard short of events says so in its events
    guard = _entry(
        T0 + 600,
        "extend",
        "too little information",
        needed=606,
        needed_unit="provider_detail_opened events",
        needed_s=420,
    )
    line = next_decision(flag, _running(1, T0, guard, through=T0 + 600), T0 + 603)
    assert line.endswith("gate needs 606 more provider_detail_opened events (~7m at this rate)")


def test_next_decision_outside_a_running_stage(flag):
    assert next_decision(flag, RolloutState(flag_key=READ), T0) == "pending"
    requested = RolloutState(flag_key=READ, requested="start")
    assert next_decision(flag, requested, T0) == "start requested: waits for a quiet baseline"
    done = RolloutState(flag_key=READ, status=Status.ROLLED_BACK)
    assert next_decision(flag, done, T0) == "rolled_back: nothing more is decided until a reset"


def test_short_decision_value_vs_threshold_and_cut_to_the_limit():
    e = _entry(T0, "rollback", "p95_breach", value=162.5, threshold=150, n=1204)
    assert short_decision(e) == "rollback p95_breach 162.5 vs 150"
    assert short_decision(_entry(T0, "advance", "gate_passed", value=None)) == "advance gate_passed"
    long = _entry(T0, "extend", "evidence leaning towards a breach " * 5, value=1.5, threshold=1)
    text = short_decision(long)
    assert SHORT_DECISION_MAX - 2 <= len(text) <= SHORT_DECISION_MAX
    assert text.startswith("extend evidence leaning") and text.endswith("… 1.5 vs 1")
    assert short_decision(None) == "-"


def test_history_marks_transitions_and_filters_them(flag):
    log = (
        _entry(T0, "start", "operator", to_stage=1, to_pct=5),
        _entry(T0 + 60, "window_pass", "ok", n=300, p95_ms=101.5, error_rate=None),
        _entry(T0 + 600, "advance", "gate_passed", from_stage=1, to_stage=2, to_pct=25),
    )
    state = _running(2, T0 + 600, *log)
    lines = history_lines(flag, state)
    assert lines[1:] == [
        "2026-01-01T00:00:00Z * start (operator)  to_stage=1 to_pct=5",
        "2026-01-01T00:01:00Z   window_pass (ok)  n=300 p95_ms=101.5",
        "2026-01-01T00:10:00Z * advance (gate_passed)  from_stage=1 to_stage=2 to_pct=25",
    ]
    only = history_lines(flag, state, transitions_only=True)
    assert [x.split()[2] for x in only[1:]] == ["start", "advance"]
    data = history_json(flag, state)
    assert [e["transition"] for e in data["entries"]] == [True, False, True]
    assert data["entries"][1]["numbers"] == {"n": 300, "p95_ms": 101.5, "error_rate": None}
