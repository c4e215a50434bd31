"""The sequential stage gates, scenario by scenario: the pure ``decide`` fed hand-made counts
each 10 s tick on the reference plan, the state built as the autopilot builds it."""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import NormalDist
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest
import tomllib

from openfeature_canary import RolloutState, Status, load_plan
from openfeature_canary.cli._format import power_lines, rps_value
from openfeature_canary.errors import PlanError
from openfeature_canary.plan import FlagPlan, parse_plan
from openfeature_canary.policy._commands import resumed
from openfeature_canary.policy._decide import Action, Decision, Memory, Reading, Readings, decide
from openfeature_canary.policy._gates import current_evidence, fold, judge, stage_power
from openfeature_canary.policy._stats import (
    line_log_e,
    line_power,
    log_mean_exp,
    ratio_log_increment,
    requests_needed,
)
from openfeature_canary.policy._windows import windows_due
from openfeature_canary.policy.transitions import from_decision
from openfeature_canary.signals._counts import CohortCounts, CountsReading, unit_digest
from openfeature_canary.stores import open_store
from openfeature_canary.telemetry import histogram_bounds_s

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "canary_plan.toml"
KEY = "dataservice-read-canary"
PLAN = load_plan(EXAMPLE)
FLAG = PLAN.flag(KEY)
#: The budget (5 %) over 14 tests: 4 stages x 2 lines, the error ratio and latency tail in
#: stages 1 to 3 (the 100 % stage has no live baseline, so no comparison).
ALPHA = 0.05 / 14
BOUNDS = tuple(round(b * 1000, 6) for b in histogram_bounds_s(PLAN))
SIGMA = math.log(105 / 60) / NormalDist().inv_cdf(0.95)  # median 60 ms, P95 105 ms
GOLDEN = (math.sqrt(5) - 1) / 2


@dataclass(frozen=True)
class R:
    """A trigger reading."""

    value: float | None
    n: int = 1000
    error: str | None = None


QUIET: Mapping[str, Reading] = MappingProxyType(
    {
        "p95_breach": R(100.0),
        "error_rate_breach": R(0.0),
        "ledger_mismatch": R(0.0),
        "telemetry_acceptance": R(1.0),
        "event_loop_lag": R(0.0),
    }
)


@dataclass(frozen=True)
class Cohort:
    """Deterministic traffic: ``rps`` requests a second, evenly spaced 5xx at ``error_rate``,
    latency lognormal (``slowdown`` times median 60 ms, P95 105 ms) spread over the buckets by
    a low-discrepancy sequence. Counts over consecutive spans add up exactly."""

    rps: float
    error_rate: float = 0.0002
    slowdown: float = 1.0

    def served(self, t: float) -> int:
        """Requests served from time 0 to ``t``."""
        return math.floor(self.rps * t + 1e-9)

    def between(self, start: float, end: float) -> CohortCounts:
        """The increase over ``[start, end]``."""
        lo, hi = self.served(start), self.served(end)
        median = 60.0 * self.slowdown
        cdf = [NormalDist().cdf(math.log(b / median) / SIGMA) for b in BOUNDS]
        quantiles = (np.arange(lo + 1, hi + 1, dtype=np.float64) * GOLDEN) % 1.0
        counts = np.bincount(np.searchsorted(cdf, quantiles), minlength=len(BOUNDS) + 1)
        errors = math.floor(hi * self.error_rate + 1e-9) - math.floor(lo * self.error_rate + 1e-9)
        return CohortCounts(hi - lo, errors, BOUNDS, tuple(int(c) for c in counts))


@dataclass(frozen=True)
class Traffic:
    canary: Cohort
    baseline: Cohort

    def between(self, start: float, end: float) -> CountsReading:
        return CountsReading(
            self.canary.between(start, end), self.baseline.between(start, end), start, end
        )


def split(
    total_rps: float,
    percent: float,
    error_rate: float = 0.0002,
    canary_error: float | None = None,
    slowdown: float = 1.0,
) -> Traffic:
    """``percent`` of ``total_rps`` to the canary; both cohorts alike but for ``canary_error``
    and ``slowdown``."""
    share = total_rps * percent / 100
    canary = Cohort(share, error_rate if canary_error is None else canary_error, slowdown)
    return Traffic(canary, Cohort(total_rps - share, error_rate))


def running(stage: int = 1, since: float = 0.0, flag: FlagPlan = FLAG) -> RolloutState:
    return RolloutState(
        flag.key, Status.RUNNING, stage, flag.serving_percent(stage), since, "started", 1
    )


@dataclass
class Run:
    """Ticks a flag as the autopilot does: counts read from the evidence's ``through``."""

    flag: FlagPlan
    state: RolloutState
    traffic: Traffic
    now: float = 0.0
    memory: Memory = field(default_factory=Memory)
    triggers: Mapping[str, Reading] = field(default_factory=lambda: QUIET)
    baselines: Mapping[str, Reading] = field(default_factory=dict)

    def tick(self) -> Decision:
        self.now += 10.0
        state, now = self.state, self.now
        evidence = current_evidence(state.stage, state.since, state.evidence)
        windows = {
            s.index: self.traffic.between(s.start, s.end)
            for s in windows_due(self.flag, state, now)
        }
        readings = Readings(
            self.triggers,
            self.baselines,
            self.traffic.between(evidence.through, now),
            MappingProxyType(windows),
        )
        d = decide(self.flag, state, readings, self.memory, now)
        self.memory = d.memory
        if d.changes_state:
            self.state = from_decision(self.flag, state, d, now)
        return d

    def until_action(self, limit: float) -> Decision:
        """Tick until the first decision other than a hold; fail if none comes by ``limit``."""
        while self.now < limit:
            d = self.tick()
            if d.action != Action.HOLD:
                return d
        raise AssertionError(f"only holds until {limit}")


def num(d: Decision, key: str) -> float:
    """A number of the decision log (not ``None`` or text)."""
    value = d.numbers[key]
    assert isinstance(value, int | float), f"{key} = {value!r}"
    return value


def plan_with(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    data = tomllib.loads(EXAMPLE.read_text())
    change(data)
    return data


def flag_with(change: Callable[[dict[str, Any]], None]) -> FlagPlan:
    return parse_plan(plan_with(change), source="plan.toml").flag(KEY)


# --------------------------------------------------------------------------- pass / fail


def test_gate_healthy_stage_holds_for_its_duration_then_advances_with_power() -> None:
    run = Run(FLAG, running(), split(100, 5))
    d = run.until_action(2000)
    assert (run.now, d.action, d.reason) == (600.0, Action.ADVANCE, "gate_passed")
    assert d.numbers["samples"] == 3000
    assert num(d, "power_error_line") == round(line_power(3000, 0.001, 0.05, ALPHA), 4)
    assert num(d, "power_error_line") >= 0.99
    assert num(d, "power_p95_line") >= 0.99
    assert run.state.stage == 2 and run.state.percent == 25.0


def _first_error_crossing(traffic: Traffic, line: float) -> tuple[float, str]:
    """From the statistics alone: the first tick at which the 5xx line test or the error
    ratio test (margin 1.25) reaches 1/alpha, and which (the line is judged first)."""
    boundary, ratio = math.log(1 / ALPHA), np.zeros(5)
    for now in range(10, 610, 10):
        c, b = traffic.canary.between(now - 10, now), traffic.baseline.between(now - 10, now)
        ratio += ratio_log_increment(c.errors, b.errors, c.n, b.n, 1.25)
        total = traffic.canary.between(0, now)
        if line_log_e(total.n, total.errors, line) >= boundary:
            return now, "error_line"
        if log_mean_exp(list(ratio)) >= boundary:
            return now, "error_ratio"
    raise AssertionError("never crosses")


def test_gate_canary_5xx_above_the_line_rolls_back_at_the_first_crossing_tick() -> None:
    traffic = split(100, 5, canary_error=0.02)  # canary 2 %, line 0.1 %, baseline 0.02 %
    at, test = _first_error_crossing(traffic, 0.001)
    run = Run(FLAG, running(), traffic)
    d = run.until_action(600)
    assert (run.now, d.action, d.reason) == (at, Action.ROLLBACK, "gate_no_go")
    assert run.now < 600  # acts at once, not at the stage's end
    assert d.numbers["test"] == test
    n = traffic.canary.served(at)
    assert d.numbers["n"] == n
    assert num(d, "e_boundary") == pytest.approx(1 / ALPHA)
    assert num(d, "e_value") >= num(d, "e_boundary")
    assert run.state.status is Status.ROLLED_BACK and run.state.percent == 0.0


def test_gate_latency_regression_under_every_line_is_caught_by_latency_tail() -> None:
    # 30 % slower: P95 ~137 ms under the 150 ms line and trigger, 2.7 % of requests over it
    # against the baseline's 0.4 %: the same tick's baseline shows the tail moved.
    traffic = split(100, 5, slowdown=1.3)
    run = Run(FLAG, running(), traffic, triggers={**QUIET, "p95_breach": R(137.0)})
    d = run.until_action(600)
    assert (d.action, d.reason) == (Action.ROLLBACK, "gate_no_go")
    assert d.numbers["test"] == "latency_tail"
    assert run.now < 600
    assert num(d, "observed_p95_ms") < 150
    assert num(d, "value") > num(d, "threshold") == 2.0


# --------------------------------------------------------------------------- baseline aware


@pytest.mark.parametrize(
    ("baseline_rate", "outcome"),
    [(0.0025, (Action.ADVANCE, "gate_passed")), (0.0, (Action.ROLLBACK, "gate_no_go"))],
)
def test_gate_errors_hitting_both_cohorts_do_not_count_against_the_canary(
    baseline_rate: float, outcome: tuple[str, str]
) -> None:
    # Stage 3 (50 %, line 0.3 %) at 500 rps: the canary at 0.25 %, under the 0.5 % trigger.
    traffic = split(500, 50, error_rate=baseline_rate, canary_error=0.0025)
    run = Run(FLAG, running(3), traffic)
    d = run.until_action(3600)
    assert (d.action, d.reason) == outcome
    if d.action == Action.ROLLBACK:  # the same canary against a clean baseline: caught
        assert d.numbers["test"] == "error_ratio"
    else:
        assert run.now == 3600.0
        assert d.numbers["samples"] == 900_000


def test_gate_line_breached_by_both_cohorts_pauses_and_stays_paused() -> None:
    # 0.45 % 5xx in both cohorts: over stage 1's 0.1 % line, under the 0.5 % trigger.
    run = Run(FLAG, running(), split(100, 5, error_rate=0.0045))
    d = run.until_action(600)
    assert (d.action, d.reason) == (Action.PAUSE, "gate_no_go: the baseline breaches the line too")
    assert d.numbers["test"] == "error_line" and run.now < 600
    assert run.state.status is Status.PAUSED
    assert [run.tick().action for _ in range(6)] == [Action.HOLD] * 6
    assert run.state.status is Status.PAUSED


# --------------------------------------------------------------------------- more data


def test_gate_too_little_traffic_extends_pauses_then_resume_keeps_the_evidence() -> None:
    # 2 rps in total: 0.1 canary request a second, 60 by the end of stage 1 (198 are needed).
    traffic = split(2, 5)
    run = Run(FLAG, running(), traffic)
    extend = run.until_action(4000)
    assert (run.now, extend.action) == (600.0, Action.EXTEND)
    assert extend.reason == "too little information"
    pause = run.until_action(4000)
    assert (run.now, pause.action, pause.reason) == (1200.0, Action.PAUSE, "gate_inconclusive")
    needed = requests_needed(0.001, 0.05, ALPHA, 0.99)
    assert pause.numbers["needed"] == needed - traffic.canary.served(1200) > 0
    for _ in range(3):  # paused, the canary still serves and its evidence keeps growing
        assert run.tick().action == Action.HOLD
    before = run.state.evidence
    run.state = resumed(run.state, run.now)
    assert run.state.evidence == before and run.state.status is Status.RUNNING
    # Resumed at 1230: the stage is held 600 s more, then goes once 198 requests are in,
    # counting those from before the pause (a fresh start would need until 1230 + 1980).
    extend = run.until_action(4000)
    assert (run.now, extend.action) == (1830.0, Action.EXTEND)
    go = run.until_action(4000)
    first = next(t for t in range(10, 4000, 10) if traffic.canary.served(t) >= needed)
    assert (run.now, go.action, go.reason) == (first, Action.ADVANCE, "gate_passed")
    assert go.numbers["samples"] == traffic.canary.served(run.now)


# --------------------------------------------------------------------------- triggers


def _pause_if_baseline(data: dict[str, Any]) -> None:
    data["flags"][KEY]["triggers"][0]["if_baseline_breaches"] = "pause"


@pytest.mark.parametrize(
    ("baseline_p95", "action", "reason"),
    [
        (165.0, Action.PAUSE, "p95_breach: the baseline breaches too"),
        (100.0, Action.ROLLBACK, "p95_breach"),
    ],
)
def test_trigger_if_baseline_breaches_pause(baseline_p95: float, action: str, reason: str) -> None:
    flag = flag_with(_pause_if_baseline)
    triggers = {**QUIET, "p95_breach": R(170.0)}
    run = Run(flag, running(flag=flag), split(100, 5), triggers=triggers)
    run.baselines = {"p95_breach": R(baseline_p95)}
    d = run.until_action(600)
    assert (run.now, d.action, d.reason) == (310.0, action, reason)  # 5 min after the onset


# --------------------------------------------------------------------------- restart


def _stage2(state: RolloutState, now: float) -> Run:
    # 5xx at 0.1 % in both cohorts, the canary 2 % slower: every e-value moves, none crosses.
    traffic = split(100, 25, error_rate=0.001, slowdown=1.02)
    return Run(FLAG, state, traffic, now=now)


def test_restart_mid_stage_continues_with_identical_evidence(tmp_path: Path) -> None:
    whole = _stage2(running(2), 0.0)
    history = [(whole.tick(), whole.state.evidence) for _ in range(180)]
    assert history[-1][0].action == Action.ADVANCE

    first = _stage2(running(2), 0.0)
    before = [(first.tick(), first.state.evidence) for _ in range(77)]
    restored = RolloutState.from_dict(json.loads(json.dumps(first.state.to_dict())))
    assert restored == first.state
    store = open_store(f"file://{tmp_path}/state.json")
    store.save(restored, expected_version=0)
    loaded = open_store(f"file://{tmp_path}/state.json").load(KEY)  # a new process
    assert loaded == first.state and loaded.evidence is not None
    assert loaded.evidence.through == 770.0  # where the next reading starts
    second = _stage2(loaded, 770.0)  # a restart: the trigger memory starts afresh
    after = [(second.tick(), second.state.evidence) for _ in range(103)]

    assert before + after == history
    final = history[-1][1]  # the evidence the go was decided on
    assert final is not None
    assert final.canary.n == second.traffic.canary.served(1800)  # nothing doubled, nothing lost
    assert final.baseline.errors == second.traffic.baseline.between(0, 1800).errors


def test_evidence_size_does_not_grow_with_the_stage_length() -> None:
    day_stage = replace(
        FLAG, stages=(replace(FLAG.stages[0], duration_s=86400.0), *FLAG.stages[1:])
    )
    run = Run(day_stage, running(flag=day_stage), split(100, 5, error_rate=0.0005))
    sizes = {}
    for i in range(1, 8001):
        assert run.tick().action == Action.HOLD
        if i in (100, 8000):
            assert run.state.evidence is not None
            sizes[i] = run.state.evidence.to_dict()
    small, big = sizes[100], sizes[8000]
    shape = {k: len(v) if isinstance(v, list | dict) else 1 for k, v in small.items()}
    assert shape == {k: len(v) if isinstance(v, list | dict) else 1 for k, v in big.items()}
    assert big["canary"]["n"] == 80 * small["canary"]["n"]
    # 80x the data: the same values, only the counts' digits grow (measured 1147 -> 1229 bytes).
    assert len(json.dumps(big)) < 1.1 * len(json.dumps(small))


# --------------------------------------------------------------------------- plan


#: Values each ``[decisions]`` key refuses (out of range, not a number, not a key).
BAD_DECISIONS = {
    "false_rollback_budget": (0.0, 0.6),
    "power": (1.0, 0.4, True, math.nan),
    "detect_error_rate": (0.0, 1.0),
    "error_ratio_margin": (0.5,),
    "latency_margin": (0.6,),
    "latency_ratio_margin": (0.5, "2"),
    "holdback": (50, "5"),
    "min_samples": (60,),
}


@pytest.mark.parametrize(("key", "value"), [(k, v) for k, vs in BAD_DECISIONS.items() for v in vs])
@pytest.mark.parametrize("where", ["top", "flag"])
def test_plan_decisions_bad_value_names_the_key(key: str, value: Any, where: str) -> None:
    def change(data: dict[str, Any]) -> None:
        table = data if where == "top" else data["flags"][KEY]
        table["decisions"] = {key: value}

    prefix = "decisions" if where == "top" else f"flags.{KEY}.decisions"
    with pytest.raises(PlanError, match=rf"^plan\.toml: {prefix}\.{key}: ") as info:
        parse_plan(plan_with(change), source="plan.toml")
    assert info.value.path.endswith(f"decisions.{key}")


@pytest.mark.parametrize(
    ("path", "value", "rule"),
    [
        (("stages", 0, "min_samples"), 60, "was replaced by evidence accumulated over the stage"),
        (("triggers", 2, "if_baseline_breaches"), "pause", "ledger_mismatches has no baseline"),
        (("decisions", "detect_slow_share"), 0.05, "must be above the 5% of requests stage 1's"),
        (("decisions", "detect_error_rate"), 0.004, "must be above stage 4's max_error_rate"),
    ],
)
def test_plan_refuses_a_flag_key_naming_it(
    path: tuple[str | int, ...], value: Any, rule: str
) -> None:
    """A stage's ``min_samples`` (replaced by the decisions), the baseline option on a signal
    without a baseline, a regression to detect that a line already allows."""

    def change(data: dict[str, Any]) -> None:
        table = data["flags"][KEY]
        for step in path[:-1]:
            table = table.setdefault(step, {}) if isinstance(step, str) else table[step]
        table[path[-1]] = value

    where = ".".join(f"[{p}]" if isinstance(p, int) else p for p in path).replace(".[", "[")
    with pytest.raises(PlanError, match=re.escape(f"plan.toml: flags.{KEY}.{where}: {rule}")):
        parse_plan(plan_with(change), source="plan.toml")


# --------------------------------------------------------------------------- holdback


def test_holdback_final_stage_serves_95_then_completion_serves_100() -> None:
    def change(data: dict[str, Any]) -> None:
        data["decisions"] = {"holdback": 5}
        data["flags"][KEY]["stages"][3].update(duration="10m", window="5m")  # a short final stage

    flag = flag_with(change)
    assert [flag.serving_percent(i) for i in (1, 2, 3, 4)] == [5.0, 25.0, 50.0, 95.0]
    run = Run(flag, running(3, flag=flag), split(100, 50))
    assert run.until_action(4000).action == Action.ADVANCE
    assert (run.state.stage, run.state.percent) == (4, 95.0)
    run.traffic = split(100, 95)  # the 5 % held back are the final stage's live baseline
    d = run.until_action(5000)
    assert (run.now, d.action, d.reason) == (4200.0, Action.COMPLETE, "gate_passed")
    assert d.numbers["baseline_samples"] == 5 * 600
    assert (run.state.status, run.state.percent) == (Status.COMPLETED, 100.0)


def test_evidence_leaning_towards_a_breach_holds_the_stage_up_to_its_duration_again() -> None:
    # Enough requests to go, but the error-ratio test is past half-way to its boundary
    # (e-value >= sqrt(1/alpha)): the stage waits, so that evidence is not thrown away.
    from openfeature_canary.evidence import StageEvidence, Tally

    half_way = 0.6 * math.log(1 / ALPHA)
    evidence = StageEvidence(
        stage=1,
        started=0.0,
        through=600.0,
        canary=Tally(600, 0, BOUNDS, (600, *([0] * len(BOUNDS)))),
        baseline=Tally(11400, 3, BOUNDS, (11400, *([0] * len(BOUNDS)))),
        ratio_log_e=(half_way,) * 5,
        tail_log_e=(0.0,) * 5,
    )
    state = replace(running(), evidence=evidence)
    quiet = Readings(QUIET)
    extend = decide(FLAG, state, quiet, Memory(), 600.0)
    assert (extend.action, extend.reason) == (
        Action.EXTEND,
        "evidence leaning towards a breach (error_ratio)",
    )
    assert extend.numbers["leaning"] == "error_ratio"
    assert decide(FLAG, state, quiet, extend.memory, 900.0).action == Action.HOLD
    # At twice the duration it goes (its information suffices; the lean never became a breach).
    assert decide(FLAG, state, quiet, extend.memory, 1200.0).action == Action.ADVANCE
    # Without the lean it goes at its duration.
    calm = replace(state, evidence=replace(evidence, ratio_log_e=(0.0,) * 5))
    assert decide(FLAG, calm, quiet, Memory(), 600.0).action == Action.ADVANCE


# --------------------------------------------------------------------------- real traffic


def _shares(bounds: tuple[float, ...], slowdown: float, tail: float = 0.0) -> Any:
    """Bucket shares of the lognormal model (median 60 ms x ``slowdown``, P95 105 ms), with a
    share ``tail`` of the requests 100 ms slower."""
    x = np.array([*bounds, math.inf])
    base = np.array([NormalDist().cdf(math.log(b / (60 * slowdown)) / SIGMA) for b in x[:-1]])
    late = np.array(
        [
            NormalDist().cdf(math.log((b - 100) / (60 * slowdown)) / SIGMA) if b > 100 else 0.0
            for b in x[:-1]
        ]
    )
    cdf = (1 - tail) * base + tail * late
    return np.diff(np.concatenate([[0.0], cdf, [1.0]]))


def _draw(rng: Any, n: int, shares: Any, error_rate: float) -> CohortCounts:
    counts = rng.multinomial(n, shares)
    return CohortCounts(n, int(rng.binomial(n, error_rate)), BOUNDS, tuple(int(c) for c in counts))


def _judged(flag: FlagPlan, index: int, ticks: list[tuple[CohortCounts, CohortCounts]]) -> Any:
    evidence = current_evidence(index, 0.0, None)
    for i, (c, b) in enumerate(ticks):
        evidence = fold(flag, evidence, CountsReading(c, b, 10.0 * i, 10.0 * (i + 1)))
    return {t.name: t for t in judge(flag, index, evidence).tests}


def test_a_shared_step_in_both_cohorts_leaves_every_comparison_below_1_in_expectation() -> None:
    """Stage 2 (25 %) at 100 rps for its 30 minutes; half-way both cohorts become 1.3x slower
    and 5x as error-prone (a shared incident). Over 300 seeded runs the comparisons' final
    e-values average below 1 and none reaches its boundary."""
    rng = np.random.default_rng(15)
    before, after = _shares(BOUNDS, 1.0), _shares(BOUNDS, 1.3)
    finals: dict[str, list[float]] = {"error_ratio": [], "latency_tail": []}
    for _ in range(300):
        ticks = []
        for i in range(180):
            shares, rate = (before, 0.0005) if i < 90 else (after, 0.0025)
            n_c, n_b = rng.poisson(250), rng.poisson(750)
            ticks.append((_draw(rng, n_c, shares, rate), _draw(rng, n_b, shares, rate)))
        tests = _judged(FLAG, 2, ticks)
        for name, values in finals.items():
            assert not tests[name].breached
            values.append(tests[name].e_value)
    for name, values in finals.items():
        assert float(np.mean(values)) < 1.0, name
    # The same step in the canary alone is caught: the simulation can fail.
    ticks = [
        (_draw(rng, 250, after if i >= 90 else before, 0.0005), _draw(rng, 750, before, 0.0005))
        for i in range(180)
    ]
    assert _judged(FLAG, 2, ticks)["latency_tail"].breached


def test_a_tail_only_regression_breaches_the_latency_comparison_not_the_lines() -> None:
    """5 % of the canary's requests 100 ms slower (median unchanged, P95 under the 150 ms
    line): stage 1 at 20 rps catches it within the stage in 19 of 20 seeded runs or more."""
    rng = np.random.default_rng(16)
    healthy, tail = _shares(BOUNDS, 1.0), _shares(BOUNDS, 1.0, tail=0.05)
    caught = 0
    for _ in range(20):
        ticks = [
            (
                _draw(rng, rng.poisson(10), tail, 0.0005),
                _draw(rng, rng.poisson(190), healthy, 0.0005),
            )
            for _ in range(60)
        ]
        tests = _judged(FLAG, 1, ticks)
        assert not tests["p95_line"].breached
        caught += tests["latency_tail"].breached
    assert caught >= 19


def test_a_repeat_user_error_pattern_does_not_breach_the_error_comparison() -> None:
    """Bucketing by user: 20 000 users, 5 of the 10 broken ones (a failed request every 400 s
    each: 2.5x the 5xx of all other users together) happen to be in the canary (25 %, stage 2).
    Counted in units (the targeting key reaches the counts) nothing breaches over 8 hours;
    the same counts read as independent requests breach."""
    rng = np.random.default_rng(17)
    broken = [f"broken-{i}" for i in range(10)]
    ticks_units, ticks_requests = [], []
    for _ in range(2880):  # 8 h of 10 s ticks, 20 rps
        cohorts = []
        for share, mine in ((0.25, broken[:5]), (0.75, broken[5:])):
            n = int(rng.poisson(200 * share))
            units = {
                unit_digest(f"user-{u}") for u in rng.integers(0, 20_000, rng.binomial(n, 0.0005))
            }
            healthy_errors = len(units)
            bad = [u for u in mine if rng.random() < 0.025]  # a failed request per 400 s
            units |= {unit_digest(u) for u in bad}
            errors = min(n, healthy_errors + len(bad))
            counts = (n, *([0] * len(BOUNDS)))
            cohorts.append((CohortCounts(n, errors, BOUNDS, counts, frozenset(units)), errors))
        (c, _), (b, _) = cohorts
        ticks_units.append((c, b))
        ticks_requests.append((replace(c, error_units=None), replace(b, error_units=None)))
    assert not _judged(FLAG, 2, ticks_units)["error_ratio"].breached
    assert _judged(FLAG, 2, ticks_requests)["error_ratio"].breached


def test_plan_check_rps_states_per_stage_what_it_can_detect_and_how_long_it_needs() -> None:
    """Stage 1 at 20 rps: 600 canary requests, about 1 % power against 5xx at 3x its 0.1 %
    line, and the time the plan's 99 % would need at its canary rate (hours, not minutes)."""
    sp = stage_power(FLAG, 1, 20.0)
    assert sp.canary == 600
    error = next(i for i in sp.lines if i.name == "error_line")
    assert error.power_3x == pytest.approx(line_power(600, 0.001, 0.003, ALPHA))
    assert error.power_3x is not None and error.power_3x < 0.05
    assert error.needed_3x == requests_needed(0.001, 0.003, ALPHA, 0.99)
    assert sp.seconds_needed(error) == pytest.approx(error.needed_3x / 1.0)
    lines = power_lines(FLAG, 20.0)
    assert len(lines) == 4 and lines[0].startswith("  stage 1 (5% for 10m) at 20 rps: 600 canary")
    assert (
        "error_line (5xx 0.3 %): power 1.03 %, 99 % needs 4h38m50s (over twice the stage)"
        in (lines[0])
    )
    with pytest.raises(argparse.ArgumentTypeError, match="above 0, got '-3'"):
        rps_value("-3")


def test_evidence_keeps_erroring_units_through_json_and_refuses_bad_ones_naming_them() -> None:
    from openfeature_canary.errors import StateStoreError
    from openfeature_canary.evidence import MAX_ERROR_UNITS, StageEvidence

    units = ((unit_digest("u-1"), unit_digest("u-2")), (unit_digest("u-3"),))
    evidence = StageEvidence(2, 0.0, 10.0, error_units=units, tail_log_e=(0.5,) * 5)
    data = json.loads(json.dumps(evidence.to_dict()))
    assert StageEvidence.from_dict(data) == evidence
    # State written before the tail comparison loads, its comparisons starting afresh.
    old = {**data, "rank_log_e": [0.1] * 4, "reference": {"n": 5, "errors": 0}}
    assert StageEvidence.from_dict(old).error_units == units
    for bad, where in (
        ([["a"]], "evidence.error_units: must be two arrays"),
        ([["a"], [3]], r"evidence.error_units\[1\]\[0\]: must be a string"),
        ([["a"] * (MAX_ERROR_UNITS + 1), []], r"evidence.error_units\[0\]: must hold at most"),
    ):
        with pytest.raises(StateStoreError, match=where):
            StageEvidence.from_dict({**data, "error_units": bad}, path="evidence")
    with pytest.raises(ValueError, match="2 erroring units for 1 errors"):
        CohortCounts(5, 1, (), (5,), frozenset({"a", "b"}))
