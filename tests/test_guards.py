"""Guards in the plan and in the policy: ``[[flags.X.guards]]`` validated at load, the
business-metric tests judged like the gates (sequential, same-tick baseline, shared budget),
their decisions in the plan's words (``guard_breach``), their information rule."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest
import tomllib

from openfeature_canary import RolloutState, Status, load_plan
from openfeature_canary.errors import PlanError, StateStoreError
from openfeature_canary.evidence import GuardTally, StageEvidence, Tracked
from openfeature_canary.plan import FlagPlan, parse_plan
from openfeature_canary.policy._decide import Action, Decision, Memory, Readings, decide
from openfeature_canary.policy._gates import alpha_per_test, current_evidence, fold, judge
from openfeature_canary.policy._guard_stats import (
    mean_log_e,
    rate_log_increment,
    rate_needed,
    rate_power,
)
from openfeature_canary.policy._guards import guard_information
from openfeature_canary.policy._reasons import explain
from openfeature_canary.policy.transitions import from_decision
from openfeature_canary.signals._counts import CohortCounts, CountsReading

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "canary_plan.toml"
KEY = "dataservice-read-canary"
QUIET: Mapping[str, Any] = MappingProxyType({})


def plan_data(guards: list[dict[str, Any]], **decisions: float) -> dict[str, Any]:
    data = tomllib.loads(EXAMPLE.read_text())
    data["flags"][KEY]["guards"] = guards
    data["flags"][KEY]["triggers"] = []  # the gates and guards alone
    if decisions:
        data["flags"][KEY]["decisions"] = decisions
    return data


def guarded(guards: list[dict[str, Any]] | None = None, **decisions: float) -> FlagPlan:
    guards = guards if guards is not None else [{"event": "clicked"}]
    return parse_plan(plan_data(guards, **decisions), source="plan.toml").flag(KEY)


# --------------------------------------------------------------------------- the plan


def test_plan_guard_keys_and_defaults() -> None:
    flag = guarded(
        [
            {"event": "provider_detail_opened", "per": "dashboard_viewed"},
            {"event": "basket_value", "measure": "mean", "max_drop": 0.1, "detect_drop": 0.3},
            {"event": "support_ticket", "higher_is_better": False},
        ]
    )
    click, basket, ticket = flag.guards
    assert (click.per, click.measure, click.max_drop, click.detect_drop) == (
        "dashboard_viewed",
        "rate",
        0.05,
        0.5,
    )
    assert click.events == ("provider_detail_opened", "dashboard_viewed")
    assert (basket.measure, basket.per, basket.events) == ("mean", "request", ("basket_value",))
    assert not ticket.higher_is_better and ticket.rule == "guard:support_ticket"
    assert flag.tracked_events() == {
        "provider_detail_opened",
        "dashboard_viewed",
        "basket_value",
        "support_ticket",
    }


@pytest.mark.parametrize(
    ("guard", "where", "words"),
    [
        ({}, "guards[0].event", "is required"),
        ({"event": "9lives"}, "guards[0].event", "must be an event name"),
        ({"event": "a b"}, "guards[0].event", "must be an event name"),
        ({"event": "x", "per": "x"}, "guards[0].per", "must differ from event"),
        ({"event": "x", "per": 3}, "guards[0].per", "must be an event name"),
        (
            {"event": "x", "measure": "mean", "per": "y"},
            "guards[0].per",
            'applies to measure = "rate" only',
        ),
        ({"event": "x", "measure": "median"}, "guards[0].measure", "must be one of rate, mean"),
        ({"event": "x", "max_drop": 0}, "guards[0].max_drop", "in (0, 1)"),
        ({"event": "x", "max_drop": 1.5}, "guards[0].max_drop", "in (0, 1)"),
        ({"event": "x", "max_drop": 0.3, "detect_drop": 0.2}, "guards[0].detect_drop", "greater"),
        ({"event": "x", "higher_is_better": "yes"}, "guards[0].higher_is_better", "true or"),
        ({"event": "x", "threshold": 1}, "guards[0].threshold", "unknown key"),
    ],
)
def test_plan_refuses_a_bad_guard_naming_the_key(
    guard: dict[str, Any], where: str, words: str
) -> None:
    with pytest.raises(PlanError) as err:
        parse_plan(plan_data([guard]), source="plan.toml")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("plan.toml") and f"flags.{KEY}.{where}" in message, message
    assert words in message, message


def test_plan_refuses_a_guard_twice() -> None:
    with pytest.raises(PlanError, match=r"guards\[1\].event: 'x' is guarded twice"):
        parse_plan(plan_data([{"event": "x"}, {"event": "x", "max_drop": 0.1}]))


# --------------------------------------------------------------------------- the statistics


def test_rate_e_process_stays_within_alpha_at_the_null_edge_read_at_every_tick() -> None:
    # The canary's rate exactly 5 % under the baseline's (the edge of "healthy"), 30 % events
    # per request, 50 requests a tick at 25 %, read at each of 180 ticks: the chance of ever
    # crossing 1/alpha stays under alpha (Ville), here with alpha = 0.05 over 2000 runs.
    rng = np.random.default_rng(7)
    runs, ticks, alpha = 2000, 180, 0.05
    n_c = rng.binomial(50, 0.25, size=(runs, ticks))
    n_b = 50 - n_c
    k_c = rng.binomial(n_c, 0.3 * 0.95)
    k_b = rng.binomial(n_b, 0.3)
    crossed = 0
    for r in range(runs):
        running = np.zeros(5)
        for t in range(ticks):
            step = rate_log_increment(
                int(k_c[r, t]), int(k_b[r, t]), int(n_c[r, t]), int(n_b[r, t]), 0.95, True
            )
            running += step
            top = running.max()
            if top + math.log(np.exp(running - top).mean()) >= math.log(1 / alpha):
                crossed += 1
                break
    assert crossed / runs <= alpha, crossed / runs


def test_rate_power_matches_a_seeded_simulation_of_the_pooled_test() -> None:
    q, alpha, k = 0.25, 0.003, 6000
    predicted = rate_power(k, q, 0.95, 0.8, True, alpha)
    rng = np.random.default_rng(3)
    pi = 0.8 * q / (0.8 * q + 1 - q)
    hits = 0
    for _ in range(2000):
        x = int(rng.binomial(k, pi))
        steps = rate_log_increment(x, k - x, q, 1 - q, 0.95, True)
        top = max(steps)
        hits += top + math.log(sum(math.exp(s - top) for s in steps) / 5) >= math.log(1 / alpha)
    assert abs(hits / 2000 - predicted) < 0.03, (hits / 2000, predicted)
    assert rate_needed(q, 0.95, 0.8, True, alpha, 0.99) <= k * 2


def test_mean_test_false_alarms_within_alpha_and_catches_a_30_percent_drop() -> None:
    rng = np.random.default_rng(11)
    alpha, tau = 0.05, math.log(0.95 / 0.5)

    def crossed(canary_scale: float) -> bool:
        total = np.zeros((2, 3))
        for _ in range(60):  # 60 ticks of 20 valued events per cohort, read at each
            for i, scale in enumerate((canary_scale, 1.0)):
                v = rng.exponential(scale, size=20)
                total[i] += (v.size, v.sum(), (v * v).sum())
            c, b = total
            log_e = mean_log_e((int(c[0]), c[1], c[2]), (int(b[0]), b[1], b[2]), 0.95, tau, True)
            if log_e >= math.log(1 / alpha):
                return True
        return False

    null = sum(crossed(0.95) for _ in range(600)) / 600
    assert null <= alpha, null
    assert sum(crossed(0.7) for _ in range(100)) >= 90


# --------------------------------------------------------------------------- in the policy


@dataclass
class Traffic:
    """Each 10 s: ``rps`` requests split by the stage's share, ``rate`` of them followed by
    the guarded event (the canary's ``drop`` lower), and ``shared`` scaling both cohorts'
    rate between ``incident`` times (an incident both see)."""

    rng: np.random.Generator
    percent: float
    rps: float = 20.0
    rate: float = 0.3
    drop: float = 0.0
    shared: float = 1.0
    incident: tuple[float, float] = (0.0, 0.0)

    def between(self, start: float, end: float) -> CountsReading:
        n = round(self.rps * (end - start))
        n_c = int(self.rng.binomial(n, self.percent / 100))
        f = self.shared if self.incident[0] <= start < self.incident[1] else 1.0
        k_c = int(self.rng.binomial(n_c, self.rate * (1 - self.drop) * f))
        k_b = int(self.rng.binomial(n - n_c, self.rate * f))
        c = CohortCounts(n_c, 0, (100.0,), (n_c, 0), tracked={"clicked": Tracked(k_c)})
        b = CohortCounts(n - n_c, 0, (100.0,), (n - n_c, 0), tracked={"clicked": Tracked(k_b)})
        return CountsReading(c, b, start, end)


@dataclass
class Run:
    flag: FlagPlan
    traffic: Traffic
    stage: int = 2
    now: float = 0.0
    memory: Memory = field(default_factory=Memory)
    state: RolloutState = field(init=False)

    def __post_init__(self) -> None:
        percent = self.flag.serving_percent(self.stage)
        self.state = RolloutState(KEY, Status.RUNNING, self.stage, percent, 0.0, "started", 1)

    def tick(self) -> Decision:
        self.now += 10.0
        evidence = current_evidence(self.state.stage, self.state.since, self.state.evidence)
        counts = self.traffic.between(evidence.through, self.now)
        readings = Readings(QUIET, QUIET, counts, MappingProxyType({}))
        d = decide(self.flag, self.state, readings, self.memory, self.now)
        self.memory = d.memory
        if d.changes_state:
            self.state = from_decision(self.flag, self.state, d, self.now)
        return d

    def until_action(self, limit: float) -> Decision:
        while self.now < limit:
            d = self.tick()
            if d.action != Action.HOLD:
                return d
        raise AssertionError(f"only holds until {limit}")


def test_a_guard_is_one_more_test_of_each_stage_with_a_live_baseline_sharing_the_budget() -> None:
    plain, flag = load_plan(EXAMPLE).flag(KEY), guarded()
    # 14 tests without guards; one per stage with a live baseline (1 to 3) adds 3.
    assert alpha_per_test(plain) == pytest.approx(0.05 / 14)
    assert alpha_per_test(flag) == pytest.approx(0.05 / 17)
    names = [t.name for t in judge(flag, 2, current_evidence(2, 0.0, None)).tests]
    assert names[-1] == "guard:clicked"
    assert "guard:clicked" not in [t.name for t in judge(flag, 4, StageEvidence(4, 0, 0)).tests]
    held = guarded(holdback=5.0)  # a holdback keeps a live baseline at 100 %
    assert "guard:clicked" in [t.name for t in judge(held, 4, StageEvidence(4, 0, 0)).tests]


def test_a_20_percent_drop_in_the_canary_rolls_back_within_stage_2_saying_guard_breach() -> None:
    flag = guarded()
    run = Run(flag, Traffic(np.random.default_rng(5), 25.0, drop=0.2))
    d = run.until_action(flag.stage(2).duration_s)
    assert d.action is Action.ROLLBACK
    explained = explain(flag, d.reason, d.numbers)
    assert (explained.reason, explained.rule) == ("guard_breach", "guard:clicked")
    nums = explained.numbers
    assert nums["event"] == "clicked" and nums["unit"] == "relative drop"
    assert nums["threshold"] == 0.05
    assert 0.1 < float(nums["value"]) < 0.35  # type: ignore[arg-type]
    assert float(nums["canary_value"]) < float(nums["baseline_value"])  # type: ignore[arg-type]
    assert float(nums["e_value"]) >= float(nums["e_boundary"])  # type: ignore[arg-type]


def test_a_guard_on_on_no_go_pause_pauses() -> None:
    data = plan_data([{"event": "clicked"}])
    for stage in data["flags"][KEY]["stages"]:
        stage["on_no_go"] = "pause"
    flag = parse_plan(data).flag(KEY)
    d = Run(flag, Traffic(np.random.default_rng(5), 25.0, drop=0.3)).until_action(1800)
    assert d.action is Action.PAUSE
    assert explain(flag, d.reason, d.numbers).reason == "guard_breach"


@pytest.mark.parametrize(
    "traffic",
    [
        {"drop": 0.0},
        {"drop": 0.0, "shared": 0.5, "incident": (300.0, 900.0)},  # both cohorts click less
        {"drop": 0.03},  # within max_drop
    ],
    ids=["same-rate", "shared-drop", "within-max-drop"],
)
def test_a_healthy_canary_passes_stage_2(traffic: dict[str, Any]) -> None:
    flag = guarded()
    run = Run(flag, Traffic(np.random.default_rng(2), 25.0, **traffic))
    d = run.until_action(3 * 1800)
    assert (d.action, d.reason) == (Action.ADVANCE, "gate_passed"), (d.reason, d.numbers)
    assert run.now == flag.stage(2).duration_s
    assert float(d.numbers["power_guard:clicked"]) >= 0.99  # type: ignore[arg-type]


def test_too_few_events_extend_then_pause_saying_how_many_more_events() -> None:
    # 0.5 rps at 25 %, 30 % clicking: ~270 events by the end of stage 2, ~540 by twice its
    # duration; catching a 50 % drop at a 25 % split needs ~600.
    flag = guarded()
    run = Run(flag, Traffic(np.random.default_rng(4), 25.0, rps=0.5))
    extend = run.until_action(10_000)
    assert (run.now, extend.action, extend.reason) == (
        1800.0,
        Action.EXTEND,
        "too little information",
    )
    assert extend.numbers["needed_unit"] == "canary requests"  # the lines need more too
    pause = run.until_action(10_000)
    assert (run.now, pause.action, pause.reason) == (3600.0, Action.PAUSE, "gate_inconclusive")
    more = pause.numbers["needed_guard:clicked"]
    assert isinstance(more, int) and more > 0
    assert pause.numbers["needed_s"] > 0  # type: ignore[operator]


def test_only_a_guard_short_says_its_events() -> None:
    # Lines met (lots of requests), but the guarded event is rare: the need is in events.
    flag = guarded()
    run = Run(flag, Traffic(np.random.default_rng(4), 25.0, rps=20.0, rate=0.01))
    extend = run.until_action(10_000)
    assert extend.action is Action.EXTEND
    assert extend.numbers["needed_unit"] == "clicked events"
    assert extend.numbers["needed"] == extend.numbers["needed_guard:clicked"]


def test_guard_per_event_and_lower_is_better() -> None:
    flag = guarded(
        [
            {"event": "clicked", "per": "viewed"},
            {"event": "complaint", "higher_is_better": False, "max_drop": 0.1},
        ]
    )
    ev = current_evidence(2, 0.0, None)
    for t in range(180):
        # Views: equal rate; clicks per view healthy; complaints twice as frequent in the canary.
        c = CohortCounts(
            50,
            0,
            (100.0,),
            (50, 0),
            tracked={"viewed": Tracked(40), "clicked": Tracked(12), "complaint": Tracked(4)},
        )
        b = CohortCounts(
            150,
            0,
            (100.0,),
            (150, 0),
            tracked={"viewed": Tracked(120), "clicked": Tracked(36), "complaint": Tracked(6)},
        )
        ev = fold(flag, ev, CountsReading(c, b, t * 10.0, t * 10.0 + 10))
    tests = {t.name: t for t in judge(flag, 2, ev).tests}
    assert not tests["guard:clicked"].breached
    assert tests["guard:clicked"].estimate == pytest.approx(1.0)
    assert tests["guard:complaint"].breached and tests["guard:complaint"].estimate == 2.0
    assert ev.guard("clicked").canary_exposure == 40 * 180  # per view, not per request


def test_guard_evidence_survives_json_and_refuses_bad_fields_naming_them() -> None:
    tally = GuardTally("clicked", Tracked(5, 2, 3.5, 7.25), Tracked(9), 40, 120, (0.5, -1.0))
    evidence = StageEvidence(2, 0.0, 10.0, guards=(tally,))
    again = StageEvidence.from_dict(json.loads(json.dumps(evidence.to_dict())))
    assert again == evidence
    bad: Callable[[dict[str, Any]], None]
    for bad, words in [
        (lambda g: g["canary"].update(valued=9), "guards[0].canary.valued"),
        (lambda g: g.update(event=3), "guards[0].event"),
        (lambda g: g["baseline"].update(total=-1.0), "guards[0].baseline"),
        (lambda g: g.update(log_e=["x"]), "guards[0].log_e[0]"),
    ]:
        data = evidence.to_dict()
        bad(data["guards"][0])
        with pytest.raises(StateStoreError, match=re.escape(words)):
            StageEvidence.from_dict(data)


def test_guard_information_in_events_at_each_reference_stage() -> None:
    flag = guarded()
    alpha = alpha_per_test(flag)
    needs = {}
    for stage in (1, 2, 3):
        info = guard_information(flag, stage, StageEvidence(stage, 0.0, 0.0), alpha)[0]
        assert info.power == 0.0 and info.needed > 0
        needs[stage] = info.needed
    # The more even the split, the fewer events a comparison needs.
    assert needs[1] > needs[2] > needs[3]


def test_plan_check_rps_states_what_each_guard_needs(tmp_path: Path) -> None:
    from openfeature_canary.cli._format import power_lines

    flag = guarded([{"event": "clicked"}, {"event": "basket", "measure": "mean"}])
    lines = power_lines(flag, 20.0)
    alpha = alpha_per_test(flag)
    needed = rate_needed(0.25, 0.95, 0.5, True, alpha, 0.99)
    assert f"guard:clicked (a 50 % drop): needs {needed} clicked events in 30m" in lines[1]
    assert f"{needed / 1800:.3g}/s, {100 * needed / 1800 / 20:.3g} % of the requests" in lines[1]
    assert "guard:basket (a 50 % drop): needs" in lines[1] and "canary values" in lines[1]
    assert "guard:" not in lines[3]  # 100 % without a holdback: nothing to compare with


def test_plan_check_and_render_show_the_guards() -> None:
    from openfeature_canary.cli._format import flag_summary
    from openfeature_canary.events import render_plan_markdown

    data = plan_data(
        [
            {"event": "opened", "per": "viewed"},
            {"event": "complaint", "higher_is_better": False, "max_drop": 0.1},
        ]
    )
    plan = parse_plan(data, source="plan.toml")
    summary = flag_summary(plan.flag(KEY))
    assert "2 guards (opened per viewed, drop <= 5%, complaint per request, rise <= 10%)" in summary
    text = render_plan_markdown(plan)
    assert "| `guard:opened` | opened per viewed | canary at most 5 % below the baseline |" in text
    assert "| `guard:complaint` | complaint per request | canary at most 10 % above" in text
    assert "a rise of 50 %" in text and "a drop of 50 %" in text
    assert "### Guards" not in render_plan_markdown(load_plan(EXAMPLE))
