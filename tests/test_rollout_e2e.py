"""The reference plan running by itself, in virtual time, through real components."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from e2e_world import FLAG, PHASE2, START, World, make_world
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import Reason

from openfeature_canary import (
    MemoryStateStore,
    RolloutPlan,
    RolloutState,
    StateStoreError,
    Status,
    TransitionError,
    load_plan,
)
from openfeature_canary.demo._simulation import Fault
from openfeature_canary.plan import FlagPlan

STAGE_ACTIONS = ("start", "advance", "complete")
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "canary_plan.toml"


@pytest.fixture(scope="module")
def plan() -> RolloutPlan:
    return load_plan(EXAMPLE)


@pytest.fixture
def worlds() -> Iterator[list[World]]:
    made: list[World] = []
    yield made
    for world in made:
        world.close()


def with_flag(plan: RolloutPlan, key: str, **changes: object) -> RolloutPlan:
    flags = dict(plan.flags)
    flags[key] = replace(plan.flag(key), **changes)  # type: ignore[arg-type]
    return replace(plan, flags=flags)


# Two days of virtual time through the real SDK and OpenTelemetry: ~1 min of CPU on a quiet
# machine, several under a loaded one; the default 300 s timeout is for hangs, not for this.
@pytest.mark.timeout(900)
def test_healthy_traffic_completes_both_phases_at_the_planned_times(
    plan: RolloutPlan, tmp_path: Path, worlds: list[World]
) -> None:
    world = make_world(plan, tmp_path)
    worlds.append(world)
    world.provider.controller(FLAG).start()
    assert world.run_until_status(Status.COMPLETED, 60 * 3600, flag=PHASE2)

    for key in (FLAG, PHASE2):
        assert world.state(key).status is Status.COMPLETED
        assert world.state(key).percent == 100
    # Stage ends, from the decision log: 10 min, +30 min, +60 min, +24 h; phase 2 right after.
    starts = {
        key: [(a, at) for f, a, _, at in world.decisions if f == key and a in STAGE_ACTIONS]
        for key in (FLAG, PHASE2)
    }
    end1 = 600 + 1800 + 3600 + 86400
    assert starts[FLAG] == [
        ("start", 0),
        ("advance", 600),
        ("advance", 2400),
        ("advance", 6000),
        ("complete", end1),
    ]
    assert [a for a, _ in starts[PHASE2]] == ["start", "advance", "advance", "advance", "complete"]
    assert starts[PHASE2][0][1] == end1
    assert starts[PHASE2][-1][1] == 2 * end1

    results = (world.reports / "canary_results.md").read_text()
    for key in (FLAG, PHASE2):
        assert key in results
    assert results.count("gate_passed") == 8
    assert world.provider.flush_events(10.0)
    names = [e["event_name"] for e in world.server.events]
    assert names.count("canary_completed") == 2
    assert "canary_rollback" not in names


# trigger -> (fault, earliest, latest) detection after the fault's onset, in virtual seconds
TRIGGERS = {
    "p95_breach": ("latency", 300, 310),  # sustained 5 min: not before, by 5 min + one tick
    "error_rate_breach": ("errors", 120, 130),
    "event_loop_lag": ("lag", 60, 70),  # the second stall comes 60 s after the first
    "telemetry_acceptance": ("ingest", 0, 10),
}
#: The gate tests that may catch a fault before its trigger does.
GATE_TESTS = {
    "latency": {"p95_line", "latency_tail"},
    "errors": {"error_line", "error_ratio"},
    "lag": set(),
    "ingest": set(),
    "mismatch": set(),
}


@pytest.mark.parametrize("stage", [1, 2, 3, 4])
@pytest.mark.parametrize("trigger", [*TRIGGERS, "ledger_mismatch"])
def test_each_trigger_at_each_stage_rolls_back_within_its_rule(
    plan: RolloutPlan, tmp_path: Path, worlds: list[World], trigger: str, stage: int
) -> None:
    kind = TRIGGERS[trigger][0] if trigger in TRIGGERS else "mismatch"
    world = make_world(plan, tmp_path, fault=Fault(kind, FLAG, at_stage=stage, after_s=120))  # type: ignore[arg-type]
    worlds.append(world)
    world.promote_to(stage)
    from_pct = world.state().percent

    at = world.run_until_status(Status.ROLLED_BACK, 900)

    assert at is not None, f"{trigger} never rolled back at stage {stage}"
    state = world.state()
    assert (state.percent, state.stage) == (0.0, 0)
    # The stage's sequential gate may see the regression before the hard trigger's rule has
    # run its course: then the gate test that saw it is the rule, and it acted sooner; the
    # reason names the signal either way.
    rule = state.log[-1].rule
    assert state.reason == trigger
    if rule.startswith("gate:"):
        assert state.log[-1].numbers["test"] in GATE_TESTS[kind], state.log[-1].numbers
        assert rule == f"gate:{state.log[-1].numbers['test']}"
    else:
        assert rule == f"trigger:{trigger}"
    onset = world.service.onset_at
    assert onset is not None
    if trigger == "ledger_mismatch":
        # Immediate: at the first tick after the first discrepancy was counted.
        assert world.service.first_mismatch_at is not None
        assert at == world.service.first_mismatch_at + world.sim.tick_s
    else:
        earliest, latest = TRIGGERS[trigger][1:]
        if rule == f"trigger:{trigger}":
            assert earliest <= at - onset <= latest, (trigger, stage, at - onset)
        else:
            assert at - onset <= latest, (trigger, stage, at - onset)
    rollback = state.log[-1]
    assert rollback.numbers["from_pct"] == from_pct
    assert rollback.numbers["threshold"] is not None


def test_p95_breach_that_recovers_before_its_for_does_not_roll_back(
    plan: RolloutPlan, tmp_path: Path, worlds: list[World]
) -> None:
    fault = Fault("latency", FLAG, at_stage=2, after_s=120, duration_s=240)
    world = make_world(plan, tmp_path, fault=fault)
    worlds.append(world)
    world.promote_to(2)
    world.run_for(20 * 60)
    assert world.service.onset_at is not None
    # The trigger's ``for`` is respected: a 4-minute breach never fires it. (The gate may
    # still judge the canary's slowdown a regression on its evidence: that is its job.)
    assert all(e.rule != "trigger:p95_breach" for e in world.state().log)


def test_event_loop_lag_fires_on_the_second_stall_not_the_first(
    plan: RolloutPlan, tmp_path: Path, worlds: list[World]
) -> None:
    world = make_world(plan, tmp_path, fault=Fault("lag", FLAG, at_stage=3, after_s=60))
    worlds.append(world)
    world.promote_to(3)
    world.run_for(60 + 30)  # the first stall has happened
    assert world.service.onset_at is not None
    assert world.state().status is Status.RUNNING
    at = world.run_until_status(Status.ROLLED_BACK, 120)
    assert at is not None and at - world.service.onset_at == 70


def test_low_traffic_never_passes_extends_then_pauses(
    plan: RolloutPlan, tmp_path: Path, worlds: list[World]
) -> None:
    # 2 rps: 0.1 canary rps, 120 canary requests in twice the stage's 10 minutes, fewer than
    # the ~200 stage 1 needs to have caught a 5 % error rate with 99 % power.
    world = make_world(plan, tmp_path, max_rps=2, min_canary_rps=0)
    worlds.append(world)
    world.provider.controller(FLAG).start()
    at = world.run_until_status(Status.PAUSED, 3600)
    assert at == START + 2 * 600  # the stage's duration, then as long again of extension
    state = world.state()
    assert (state.stage, state.percent, state.reason) == (1, 5.0, "gate_inconclusive")
    actions = [e.action for e in state.log]
    assert "advance" not in actions and "extend" in actions
    assert all(w.verdict.value == "inconclusive" for w in state.windows)
    pause = state.log[-1]
    assert pause.numbers["needed"] > 0 and pause.numbers["power_error_line"] < 0.99


def test_gate_breach_below_hard_trigger_is_no_go_within_the_stage(
    plan: RolloutPlan, tmp_path: Path, worlds: list[World]
) -> None:
    # Canary P95 ~145 ms at stage 2: over its 140 ms gate, under the 150 ms hard trigger.
    world = make_world(plan, tmp_path, fault=Fault("slow-gate", FLAG, at_stage=2))
    worlds.append(world)
    world.provider.controller(FLAG).start()
    at = world.run_until_status(Status.ROLLED_BACK, 3 * 3600)
    # Decided at the tick the evidence crossed its boundary, not at the stage's end.
    assert at is not None and START + 600 < at < START + 600 + 1800
    assert world.state().reason == "p95_breach"
    numbers = world.state().log[-1].numbers
    assert numbers["test"] in ("p95_line", "latency_tail")
    assert numbers["e_value"] >= numbers["e_boundary"]
    results = (world.reports / "canary_results.md").read_text()
    assert "p95_breach (gate:" in results and "gate_no_go" not in results


def test_gate_breach_pauses_when_on_no_go_is_pause(
    plan: RolloutPlan, tmp_path: Path, worlds: list[World]
) -> None:
    flag: FlagPlan = plan.flag(FLAG)
    stages = tuple(replace(s, on_no_go="pause") for s in flag.stages)
    world = make_world(
        with_flag(plan, FLAG, stages=stages), tmp_path, fault=Fault("slow-gate", FLAG, at_stage=2)
    )
    worlds.append(world)
    world.provider.controller(FLAG).start()
    at = world.run_until_status(Status.PAUSED, 3 * 3600)
    assert at is not None and START + 600 < at < START + 600 + 1800
    assert (world.state().reason, world.state().percent) == ("p95_breach", 25.0)
    assert world.state().log[-1].rule.startswith("gate:")


def test_dry_run_logs_the_same_decisions_and_keeps_its_percentage(
    plan: RolloutPlan, tmp_path: Path, worlds: list[World]
) -> None:
    decisions = {}
    for dry in (False, True):
        world = make_world(
            with_flag(plan, FLAG, dry_run=dry),
            tmp_path / str(dry),
            fault=Fault("slow-gate", FLAG, at_stage=2),
        )
        worlds.append(world)
        world.provider.controller(FLAG).start()
        world.run_for(600 + 300)
        log = world.state().log
        decisions[dry] = [(e.action, e.reason, e.at) for e in log if not e.action.startswith("w")]
        # Up to the first rollback: a dry run then observes afresh (and rolls back again).
        first = next(i for i, d in enumerate(decisions[dry]) if d[0] == "rollback")
        decisions[dry] = decisions[dry][: first + 1]
        if dry:
            assert world.state().status is Status.RUNNING
            assert world.state().percent == 5.0  # never changed by the policy
            policy = [e for e in log if e.action not in ("start",) and not e.action.startswith("w")]
            assert policy and all(e.numbers.get("dry_run") == 1 for e in policy)
            assert "(dry run)" in (world.reports / "canary_results.md").read_text()
    # The same decisions; their times may differ by a few ticks: the latency comparison weighs
    # the canary against the baseline actually served, 95 % in the dry run, 75 % in the real one.
    assert [d[:2] for d in decisions[True]] == [d[:2] for d in decisions[False]]
    assert abs(decisions[True][-1][2] - decisions[False][-1][2]) <= 120.0


def test_after_rollback_every_thread_gets_off_disabled_and_the_event_fired(
    plan: RolloutPlan, tmp_path: Path, worlds: list[World]
) -> None:
    world = make_world(plan, tmp_path, fault=Fault("mismatch", FLAG, at_stage=3))
    worlds.append(world)
    world.promote_to(3)
    assert world.run_until_status(Status.ROLLED_BACK, 900)
    client = api.get_client()
    answers: list[tuple[object, object, object]] = []
    lock = threading.Lock()

    def evaluate(offset: int) -> None:
        for i in range(500):
            d = client.get_boolean_details(FLAG, True, EvaluationContext(f"u-{offset}-{i}"))
            with lock:
                answers.append((d.value, d.variant, d.reason))

    threads = [threading.Thread(target=evaluate, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 4000
    assert set(answers) == {(False, "off", Reason.DISABLED)}
    details = client.get_boolean_details(FLAG, True, EvaluationContext("x"))
    assert details.flag_metadata["trigger"] == "ledger_mismatch"
    # The SDK may deliver provider events from another thread: wait briefly for it.
    pause = threading.Event()
    for _ in range(100):
        if any(FLAG in (e.flags_changed or []) for e in world.events):
            break
        pause.wait(0.02)
    assert any(FLAG in (e.flags_changed or []) for e in world.events)


def test_ingest_receives_exactly_one_rollback_with_the_spec_body(
    plan: RolloutPlan, tmp_path: Path, worlds: list[World]
) -> None:
    world = make_world(plan, tmp_path, fault=Fault("latency", FLAG, at_stage=2, after_s=60))
    worlds.append(world)
    world.promote_to(2)
    assert world.run_until_status(Status.ROLLED_BACK, 900)
    assert world.provider.flush_events(10.0)
    rollbacks = world.server.named("canary_rollback")
    assert len(rollbacks) == 1
    event = rollbacks[0]
    assert (event["app"], event["event_name"]) == ("scholarship_api", "canary_rollback")
    props = event["properties"]
    assert (props["from_pct"], props["flag"], props["stage"]) == (25, FLAG, 2)
    # The hard trigger (P95 > 150 ms for 5 min) or, sooner, the stage's P95 line (140 ms).
    assert props["reason"] == "p95_breach"
    threshold = 150 if props["rule"] == "trigger:p95_breach" else 140
    assert props["threshold"] == threshold and props["value"] > threshold
    assert props["at"].endswith("Z")


def test_ingest_down_then_back_delivers_the_rollback_also_after_a_restart(
    plan: RolloutPlan, tmp_path: Path, worlds: list[World]
) -> None:
    store = f"file://{tmp_path}/state.json"
    world = make_world(plan, tmp_path, store=store, fault=Fault("errors", FLAG, at_stage=2))
    worlds.append(world)
    world.server.fail_with = 500
    world.promote_to(2)
    assert world.run_until_status(Status.ROLLED_BACK, 900)
    # The ingest refusing our own events is itself a trigger (telemetry_acceptance); either
    # that or the injected 5xx rolls the flag back first.
    reason = world.state().reason
    assert reason in ("error_rate_breach", "telemetry_acceptance")
    assert not world.provider.flush_events(1.0)  # the ingest answers 500: the event stays queued
    assert world.server.named("canary_rollback") == []
    assert world.server.requests >= 1
    world.close()
    worlds.remove(world)

    # A new process (provider) over the same store and outbox, with the ingest back.
    again = make_world(plan, tmp_path, store=store)
    worlds.append(again)
    assert again.state().status is Status.ROLLED_BACK  # sticky across the restart
    assert again.provider.flush_events(10.0)
    rollbacks = again.server.named("canary_rollback")
    assert len(rollbacks) == 1
    assert rollbacks[0]["properties"]["reason"] == reason


class _StoreThatCannotPersistRollbacks(MemoryStateStore):
    """A store whose disk is gone just when a rollback must be written (a fault a real store
    cannot produce on demand)."""

    def save(self, state: RolloutState, expected_version: int) -> None:
        if state.status is Status.ROLLED_BACK:
            raise StateStoreError("memory://: disk full (injected)")
        super().save(state, expected_version)


def test_store_failing_to_persist_a_rollback_still_stops_the_canary_and_alarms(
    plan: RolloutPlan, tmp_path: Path, worlds: list[World], caplog: pytest.LogCaptureFixture
) -> None:
    store = _StoreThatCannotPersistRollbacks()
    world = make_world(plan, tmp_path, store=store, fault=Fault("mismatch", FLAG, at_stage=2))
    worlds.append(world)
    world.promote_to(2)
    with (
        caplog.at_level(logging.CRITICAL, logger="openfeature_canary"),
        pytest.raises(StateStoreError, match="disk full"),
    ):
        world.run_for(900)
    assert world.state().status is Status.ROLLED_BACK  # off in this process
    assert store.load(FLAG).status is Status.RUNNING  # type: ignore[union-attr]
    client = api.get_client()
    details = client.get_boolean_details(FLAG, True, EvaluationContext("anyone"))
    assert (details.value, details.variant, details.reason) == (False, "off", Reason.DISABLED)
    assert any("ALARM" in r.getMessage() for r in caplog.records)
    # Later ticks keep it off: the local rollback is not undone by the stale store.
    world.run_for(60)
    assert world.state().status is Status.ROLLED_BACK


def test_start_is_refused_while_a_trigger_is_loud_on_the_baseline(
    plan: RolloutPlan, tmp_path: Path, worlds: list[World]
) -> None:
    world = make_world(plan, tmp_path)
    worlds.append(world)
    world.run_for(60)  # healthy baseline traffic, flag pending
    # The ingest refuses half of the service's events: telemetry_acceptance is loud.
    world.service._ingest.sent(100)
    world.service._ingest.accepted(50)
    world.clock.advance(1)
    ctl = world.provider.controller(FLAG)
    with pytest.raises(TransitionError, match=r"baseline is not quiet \(telemetry_acceptance"):
        ctl.start()
    assert ctl.state.status is Status.PENDING
    assert ctl.start(force=True).status is Status.RUNNING


def test_start_on_a_quiet_baseline_is_allowed(
    plan: RolloutPlan, tmp_path: Path, worlds: list[World]
) -> None:
    world = make_world(plan, tmp_path)
    worlds.append(world)
    world.run_for(60)
    assert world.provider.controller(FLAG).start().status is Status.RUNNING


def test_cli_start_is_deferred_while_the_policy_process_sees_a_loud_baseline(
    plan: RolloutPlan, tmp_path: Path, worlds: list[World]
) -> None:
    import io

    from openfeature_canary.cli import run

    store = f"file://{tmp_path}/state.json"
    world = make_world(plan, tmp_path, store=store)
    worlds.append(world)
    world.run_for(60)
    world.service._ingest.sent(100)  # the ingest refuses half: telemetry_acceptance is loud
    world.service._ingest.accepted(50)
    out = io.StringIO()
    argv = ["start", FLAG, "--plan", str(plan.source), "--store", store]
    assert run(argv, out=out, err=io.StringIO()) == 0
    assert "start requested" in out.getvalue()
    world.run_for(30)  # the service's ticks: the baseline is loud, the start waits
    assert world.state().status is Status.PENDING
    assert world.state().requested == "start"
    # The ingest accepts again; acceptance recovers over the trigger's window.
    world.service._ingest.sent(10_000)
    world.service._ingest.accepted(10_000)
    started_at = world.run_until_status(Status.RUNNING, 3600)
    assert started_at is not None
    assert world.state().requested == ""
    assert world.state().last_decision is not None
    assert world.state().last_decision.reason == "start requested; baseline quiet"
