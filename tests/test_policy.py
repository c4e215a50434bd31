"""The pure policy: decide(plan, state, readings, memory, now) by value, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import pytest

from openfeature_canary import RolloutState, Status, load_plan
from openfeature_canary.plan import FlagPlan, parse_plan
from openfeature_canary.policy._decide import Action, Memory, Readings, decide

FLAG = "dataservice-read-canary"
PHASE2 = "dataservice-user-read-canary"


@dataclass(frozen=True)
class R:
    value: float | None
    n: int = 1000
    error: str | None = None


QUIET = {
    "p95_breach": R(100.0),
    "error_rate_breach": R(0.0),
    "ledger_mismatch": R(0.0),
    "telemetry_acceptance": R(1.0),
    "event_loop_lag": R(0.0),
}


@pytest.fixture(scope="module")
def example_plan_path_module() -> Path:
    return Path(__file__).resolve().parent.parent / "examples" / "canary_plan.toml"


@pytest.fixture(scope="module")
def flag(example_plan_path_module: Path) -> FlagPlan:
    return load_plan(example_plan_path_module).flag(FLAG)


def running(stage: int = 1, since: float = 0.0, pct: float = 5.0) -> RolloutState:
    return RolloutState(FLAG, Status.RUNNING, stage, pct, since, "started", 1)


def readings(**overrides: R) -> Readings:
    return Readings(MappingProxyType({**QUIET, **overrides}))


def run_ticks(
    flag: FlagPlan, state: RolloutState, series: list[tuple[float, Readings]]
) -> list[tuple[float, str, str]]:
    """Feed readings tick by tick; return (now, action, reason) of each non-hold decision."""
    memory = Memory()
    out = []
    for now, r in series:
        d = decide(flag, state, r, memory, now)
        memory = d.memory
        if d.action not in (Action.HOLD, Action.EXTEND):  # gates are tested below
            out.append((now, d.action, d.reason))
            if d.action == Action.ROLLBACK:
                break
    return out


def test_decide_p95_sustained_breach_rolls_back_exactly_at_for(flag: FlagPlan) -> None:
    state = running(stage=1, since=0.0)
    onset = 100.0
    ticks = [(t, readings(p95_breach=R(162.0))) for t in range(100, 500, 10)]
    out = run_ticks(flag, state, [(float(t), r) for t, r in ticks])
    assert out[0][1:] == (Action.ROLLBACK, "p95_breach")
    assert out[0][0] == onset + 300


def test_decide_p95_breach_recovering_before_for_does_not_roll_back(flag: FlagPlan) -> None:
    state = running(since=0.0)
    series = [(float(t), readings(p95_breach=R(162.0))) for t in range(100, 390, 10)]
    series.append((390.0, readings(p95_breach=R(120.0))))  # recovered at 4m50s
    series += [(float(t), readings(p95_breach=R(162.0))) for t in range(400, 690, 10)]
    assert run_ticks(flag, state, series) == []


def test_decide_no_data_resets_a_sustained_breach(flag: FlagPlan) -> None:
    state = running(since=0.0)
    series = [(float(t), readings(p95_breach=R(162.0))) for t in range(0, 200, 10)]
    series.append((200.0, readings(p95_breach=R(None, n=0))))
    series += [(float(t), readings(p95_breach=R(162.0))) for t in range(210, 600, 10)]
    out = run_ticks(flag, state, series)
    assert out == [(510.0, Action.ROLLBACK, "p95_breach")]


def test_decide_ledger_mismatch_rolls_back_on_first_mismatch(flag: FlagPlan) -> None:
    d = decide(flag, running(), readings(ledger_mismatch=R(1.0, n=1)), Memory(), 30.0)
    assert (d.action, d.reason) == (Action.ROLLBACK, "ledger_mismatch")
    assert d.numbers["value"] == 1.0 and d.numbers["threshold"] == 0


def test_decide_event_loop_lag_fires_on_second_lag_not_first(flag: FlagPlan) -> None:
    first = decide(flag, running(), readings(event_loop_lag=R(1.0, n=50)), Memory(), 30.0)
    assert first.action == Action.HOLD
    second = decide(flag, running(), readings(event_loop_lag=R(2.0, n=50)), Memory(), 40.0)
    assert (second.action, second.reason) == (Action.ROLLBACK, "event_loop_lag")


def test_decide_telemetry_acceptance_below_floor_rolls_back(flag: FlagPlan) -> None:
    d = decide(flag, running(), readings(telemetry_acceptance=R(0.98, n=150)), Memory(), 30.0)
    assert (d.action, d.reason) == (Action.ROLLBACK, "telemetry_acceptance")
    # Two events not accepted out of 100 are below the trigger's min_events (3): no breach.
    few = decide(flag, running(), readings(telemetry_acceptance=R(0.98, n=100)), Memory(), 30.0)
    assert few.action == Action.HOLD
    quiet = decide(flag, running(), readings(telemetry_acceptance=R(None, n=0)), Memory(), 30.0)
    assert quiet.action == Action.HOLD


def test_decide_error_rate_sustained_two_minutes(flag: FlagPlan) -> None:
    series = [(float(t), readings(error_rate_breach=R(0.01))) for t in range(0, 300, 10)]
    out = run_ticks(flag, running(), series)
    assert out[0] == (120.0, Action.ROLLBACK, "error_rate_breach")


def test_decide_failing_source_rolls_back_after_a_minute(flag: FlagPlan) -> None:
    bad = R(None, n=0, error="reader failed")
    series = [(float(t), readings(p95_breach=bad)) for t in range(0, 120, 10)]
    out = run_ticks(flag, running(), series)
    assert out[0] == (60.0, Action.ROLLBACK, "signal_source_error")


def test_decide_failing_source_with_on_error_ignore_holds() -> None:
    plan = parse_plan(
        {
            "flags": {
                "f": {
                    "stages": [{"percent": 5, "duration": "10m"}],
                    "triggers": [
                        {"name": "t", "signal": "latency_p95_ms", "above": 1, "on_error": "ignore"}
                    ],
                }
            }
        }
    )
    flag = plan.flag("f")
    state = RolloutState("f", Status.RUNNING, 1, 5.0, 0.0, "", 1)
    bad = Readings(MappingProxyType({"t": R(None, 0, "boom")}))
    out = run_ticks(flag, state, [(float(t), bad) for t in range(0, 300, 10)])
    assert out == []


def test_pending_phase2_waits_for_phase1_then_starts_when_baseline_quiet(
    example_plan_path_module: Path,
) -> None:
    flag = load_plan(example_plan_path_module).flag(PHASE2)
    pending = RolloutState(PHASE2)
    waiting = decide(flag, pending, readings(), Memory(), 0.0, after_completed=False)
    assert waiting.action == Action.HOLD and FLAG in waiting.reason
    loud = decide(
        flag, pending, readings(ledger_mismatch=R(3.0)), Memory(), 0.0, after_completed=True
    )
    assert loud.action == Action.HOLD and "ledger_mismatch" in loud.reason
    go = decide(flag, pending, readings(), Memory(), 0.0, after_completed=True)
    assert go.action == Action.START


def test_rolled_back_is_sticky(flag: FlagPlan) -> None:
    state = RolloutState(FLAG, Status.ROLLED_BACK, 0, 0.0, 0.0, "p95_breach", 3)
    d = decide(flag, state, readings(), Memory(), 99999.0)
    assert d.action == Action.HOLD
