"""Reasons that say what broke, who decided, one log line per transition (issue 16 §1, §3).

Whichever rule acted, a decision speaks the cutover plan's words (``p95_breach``,
``error_rate_breach``, ``operator`` …), names its rule (``gate:<test>``, ``trigger:<name>``,
``command:<command>``), gives ``value`` and ``threshold`` in the signal's unit, and says who
decided (``by``); the event, the abort report, the results row and the log line all read those
fields from the one decision-log entry. Real parts: the OpenFeature client and provider, the
OpenTelemetry SDK, the ingest server on 127.0.0.1, file stores; only the clock is virtual.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_world import FLAG, World, make_world

from openfeature_canary import JsonLogFormatter, ManualClock, RolloutPlan, Status, load_plan
from openfeature_canary.demo._simulation import Fault
from openfeature_canary.engine import Engine, EngineOptions, build_engine
from openfeature_canary.policy import Rollout
from openfeature_canary.policy._reasons import GATE_SIGNALS, explain, reason_of_test
from openfeature_canary.state import LogEntry, RolloutState

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


# --------------------------------------------------------------------------- the table


@pytest.mark.parametrize(
    ("test", "reason"),
    [
        ("error_line", "error_rate_breach"),
        ("error_ratio", "error_rate_breach"),
        ("p95_line", "p95_breach"),
        ("latency_rank", "p95_breach"),
        ("p99_line", "p99_breach"),
    ],
)
def test_each_gate_test_maps_to_the_plans_reason_by_its_signal(test: str, reason: str) -> None:
    assert test in GATE_SIGNALS
    assert reason_of_test(test) == reason


def test_an_unknown_gate_test_is_named_by_its_lines_signal_never_gate_no_go(
    plan: RolloutPlan,
) -> None:
    assert reason_of_test("slow_share", "latency_p99_ms") == "p99_breach"
    assert reason_of_test("fresh_5xx_test") == "error_rate_breach"
    numbers = {"test": "mystery", "signal": None, "value": None, "threshold": None}
    why = explain(plan.flag(FLAG), "gate_no_go", numbers)
    assert why.reason != "gate_no_go" and why.rule == "gate:mystery"
    assert isinstance(why.numbers["value"], float) and isinstance(why.numbers["threshold"], float)


def test_a_ratio_no_go_gives_the_canarys_rate_against_margin_times_the_baseline(
    plan: RolloutPlan,
) -> None:
    numbers = {
        "test": "error_ratio",
        "signal": None,
        "value": None,  # the ratio test has no value of its own when the baseline is clean
        "threshold": 1.25,
        "estimate": None,
        "null": 1.25,
        "observed_error_rate": 0.012,
        "baseline_error_rate": 0.004,
        "planned_error_rate": 0.002,
    }
    why = explain(plan.flag(FLAG), "gate_no_go", numbers)
    assert (why.reason, why.rule) == ("error_rate_breach", "gate:error_ratio")
    assert why.numbers["value"] == 0.012
    assert why.numbers["threshold"] == pytest.approx(0.005)
    assert (why.numbers["unit"], why.numbers["threshold_of"]) == ("fraction", "baseline")


def test_an_entry_persisted_before_rule_and_by_loads_and_round_trips() -> None:
    old = {"at": 1.0, "action": "rollback", "reason": "p95_breach", "numbers": {"value": 162}}
    entry = LogEntry.from_dict(old)
    assert (entry.rule, entry.by, entry.value) == ("", "", 162)
    assert "rule" not in entry.to_dict()
    new = LogEntry(2.0, "rollback", "operator", {}, rule="command:rollback", by="operator:al")
    assert LogEntry.from_dict(new.to_dict()) == new
    state = RolloutState.from_dict(
        {"flag_key": "f", "status": "pending", "stage": 0, "percent": 0, "since": 0,
         "version": 1, "log": [old], "windows": []}
    )  # fmt: skip
    assert state.log[0] == entry


# --------------------------------------------------------------------------- end to end


def test_a_5xx_regression_rolled_back_by_a_gate_names_the_signal_everywhere(
    plan: RolloutPlan, tmp_path: Path, worlds: list[World], caplog: pytest.LogCaptureFixture
) -> None:
    # 25 % 5xx at stage 2: the stage's gate sees it long before the hard trigger's 2 minutes.
    world = make_world(plan, tmp_path, fault=Fault("errors", FLAG, at_stage=2, after_s=5))
    worlds.append(world)
    world.promote_to(2)
    with caplog.at_level(logging.INFO, logger="openfeature_canary"):
        assert world.run_until_status(Status.ROLLED_BACK, 600) is not None
    entry = world.state().log[-1]
    assert entry.rule.startswith("gate:"), entry  # a gate acted, not the trigger
    assert entry.reason == "error_rate_breach"
    assert world.provider.flush_events(10.0)
    (event,) = world.server.named("canary_rollback")
    props = event["properties"]
    assert props["reason"] == "error_rate_breach"
    assert props["rule"] == entry.rule and props["rule"] in {"gate:error_line", "gate:error_ratio"}
    assert isinstance(props["value"], float) and isinstance(props["threshold"], float)
    assert props["unit"] == "fraction" and props["value"] > props["threshold"]
    assert props["by"] and props["by"] == entry.by and str(props["by"]).count(":") >= 1
    abort = (world.reports / "canary_abort.md").read_text("utf-8")
    summary = next(line for line in abort.splitlines() if line.startswith("## "))
    assert "error_rate_breach" in summary and " % vs " in summary, summary
    assert f"| Rule | `{entry.rule}` |" in abort
    results = (world.reports / "canary_results.md").read_text("utf-8")
    assert f"error_rate_breach ({entry.rule}: " in results and "gate_no_go" not in results
    lines = [r.getMessage() for r in caplog.records if "-> rolled_back" in r.getMessage()]
    assert len(lines) == 1
    assert f"reason=error_rate_breach rule={entry.rule} value=" in lines[0]
    assert lines[0].endswith(f"by={entry.by}")


def test_a_latency_rollback_by_a_gate_says_p95_breach_in_ms(
    plan: RolloutPlan, tmp_path: Path, worlds: list[World]
) -> None:
    # Canary P95 ~145 ms at stage 2: over its 140 ms line, under the 150 ms hard trigger.
    world = make_world(plan, tmp_path, fault=Fault("slow-gate", FLAG, at_stage=2))
    worlds.append(world)
    world.provider.controller(FLAG).start()
    assert world.run_until_status(Status.ROLLED_BACK, 3 * 3600) is not None
    entry = world.state().log[-1]
    assert (entry.reason, entry.unit) == ("p95_breach", "ms")
    assert entry.rule in ("gate:p95_line", "gate:latency_tail")
    assert isinstance(entry.value, float) and isinstance(entry.threshold, float)
    assert world.state().reason == "p95_breach"
    assert world.provider.flush_events(10.0)
    (event,) = world.server.named("canary_rollback")
    assert (event["properties"]["reason"], event["properties"]["unit"]) == ("p95_breach", "ms")


def test_an_operator_rollback_says_operator_and_who(
    plan: RolloutPlan, tmp_path: Path, worlds: list[World]
) -> None:
    world = make_world(plan, tmp_path)
    worlds.append(world)
    world.promote_to(1)
    world.provider.controller(FLAG).rollback("bad dashboards", by="alice")
    entry = world.state().log[-1]
    assert (entry.reason, entry.rule, entry.by) == (
        "operator",
        "command:rollback",
        "operator:alice",
    )
    assert world.state().reason == "bad dashboards"  # status shows the operator's words
    assert world.provider.flush_events(10.0)
    (event,) = world.server.named("canary_rollback")
    props = event["properties"]
    assert (props["reason"], props["by"], props["note"]) == (
        "operator",
        "operator:alice",
        "bad dashboards",
    )
    abort = (world.reports / "canary_abort.md").read_text("utf-8")
    assert "operator (bad dashboards)" in abort and "| Decided by | operator:alice |" in abort


# --------------------------------------------------------------------------- the log lines


def _engine(plan: RolloutPlan, url: str, clock: ManualClock) -> Engine:
    """A process that only decides, on the records the fleet publishes (none here)."""
    options = EngineOptions(store=url, clock=clock, fleet=True, effects=False, lease_ttl=30.0)
    return build_engine(plan, options)


def test_a_fleet_logs_one_info_line_per_transition_by_its_decider(
    plan: RolloutPlan, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"file://{tmp_path}/state.json"
    clock = ManualClock(start=1_000.0)
    a, b = _engine(plan, url, clock), _engine(plan, url, clock)
    operator = Rollout(plan, store=url, clock=clock)
    try:
        with caplog.at_level(logging.DEBUG, logger="openfeature_canary"):
            operator.load()
            operator.controller(FLAG).request_start(by="bob")
            a.runner.run_once()  # takes the lease, then starts the flag (baseline quiet)
            b.runner.run_once()  # sees the start: DEBUG only
            # No traffic: the stage cannot pass; at its end it is extended, then paused.
            stage_s = plan.flag(FLAG).stages[0].duration_s
            while a.rollout.controller(FLAG).state.status is not Status.PAUSED:
                clock.advance(10.0)
                a.runner.run_once()
                b.runner.run_once()
                assert clock.now() < 1_000.0 + 3 * stage_s + 60
            # A process that starts now reads the store: nothing happened, nothing at INFO.
            mark = len(caplog.records)
            c = _engine(plan, url, clock)
            c.runner.read_store()
            late = [r for r in caplog.records[mark:] if r.levelno >= logging.INFO]
            assert late == [], [r.getMessage() for r in late]
            c.stop()
            a.stop()  # gives the lease up: "stops deciding"
    finally:
        a.stop()
        b.stop()
    infos = [r for r in caplog.records if r.levelno == logging.INFO and hasattr(r, "canary")]
    actions = [(r.canary["action"], r.canary["by"]) for r in infos]  # type: ignore[attr-defined]
    decider = a.fleet.process_id if a.fleet is not None else ""
    assert actions == [
        ("request_start", "operator:bob"),
        ("start", decider),
        ("extend", decider),
        ("pause", decider),
    ]
    # Every INFO transition line is one transition: no second line from the observer.
    assert len({r.canary["version"] for r in infos}) == len(infos)  # type: ignore[attr-defined]
    roles = [r.getMessage() for r in caplog.records if "decid" in r.getMessage()]
    assert roles[0].endswith(f"process {decider} decides")
    assert any(f"process {decider} stops deciding" in m for m in roles)  # a.stop()
    pause = infos[-1].canary  # type: ignore[attr-defined]
    assert (pause["reason"], pause["rule"], pause["unit"]) == (
        "gate_inconclusive",
        "gate:information",
        "fraction",
    )


def test_json_log_lines_parse_and_carry_the_transitions_fields(
    plan: RolloutPlan, tmp_path: Path, worlds: list[World]
) -> None:
    world = make_world(plan, tmp_path)
    worlds.append(world)
    logger = logging.getLogger("openfeature_canary")
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Keep()
    handler.setFormatter(JsonLogFormatter())
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        world.provider.controller(FLAG).start(by="carol")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    parsed = [json.loads(line) for line in lines]
    (start,) = [p for p in parsed if p.get("action") == "start"]
    assert (start["flag"], start["by"], start["reason"], start["rule"]) == (
        FLAG,
        "operator:carol",
        "operator",
        "command:start",
    )
    assert (start["from"], start["to"]) == ("pending stage 0 (0%)", "running stage 1 (5%)")
    assert start["level"] == "INFO" and start["time"].endswith("Z")


def test_the_cli_logs_json_lines_with_log_format_json(tmp_path: Path) -> None:
    import io

    from openfeature_canary.cli._main import run

    common = ["--plan", str(EXAMPLE), "--store", f"file://{tmp_path}/state.json"]
    out, err = io.StringIO(), io.StringIO()
    assert run(["start", FLAG, "--force", "--by", "dana", *common], out=out, err=err) == 0
    argv = ["rollback", FLAG, "--reason", "smoke test", "--by", "dana", "--log-format", "json"]
    out, err = io.StringIO(), io.StringIO()
    assert run([*argv, *common], out=out, err=err) == 0
    parsed = [json.loads(line) for line in err.getvalue().splitlines() if line.strip()]
    (rollback,) = [p for p in parsed if p.get("action") == "rollback"]
    assert (rollback["reason"], rollback["rule"], rollback["by"], rollback["note"]) == (
        "operator",
        "command:rollback",
        "operator:dana",
        "smoke test",
    )
    assert logging.getLogger("openfeature_canary").handlers == []  # removed after the command
