"""The guards on traffic that has what production traffic has (issue 18).

Run: ``python benchmarks/bench_guards.py [--runs 200] [--seed 18]``.

The pure policy (``decide``, ``from_decision``) on the reference plan plus one guard
(``provider_detail_opened`` per request, ``max_drop`` 0.05), a tick every 10 s, 20 rps, the
event on 30 % of requests, stages 1 to 3 (the 100 % stage has no live baseline, so no guard).
Each scenario changes the traffic tick by tick:

- ``independent``: every request clicks with the same chance in both cohorts;
- ``daily``: both cohorts' click rate x (1 + 0.3 sin(2 pi t / 24 h)) and traffic
  x (1 + 0.5 sin(...)), from a random time of day;
- ``shared``: both cohorts click half as often for 10 minutes at a random moment of each stage;
- ``users``: bucketing by user: 5 000 users of lognormal activity (sigma 1) and their own click
  propensity (Beta, mean 0.3, sd 0.15), each in the canary by a uniform draw as murmur3 would:
  the unit that was bucketed is not the unit of the events;
- ``drop20``: the canary clicks 20 % less from stage 2 on (target: rolled back within stage 2);
- ``segment``: 20 % of the canary's users (by user) never click from stage 1 on: a 20 % drop
  that only part of the users see.

Printed: the share of runs rolled back (and in which stage), with its 95 % Wilson interval.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import tomllib

from openfeature_canary import RolloutState, Status
from openfeature_canary.evidence import Tracked
from openfeature_canary.plan import FlagPlan, parse_plan
from openfeature_canary.policy._decide import Action, Memory, Readings, decide
from openfeature_canary.policy._stats import wilson_interval
from openfeature_canary.policy.transitions import from_decision
from openfeature_canary.signals import CohortCounts, CountsReading

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "canary_plan.toml"
KEY = "dataservice-read-canary"
EVENT = "provider_detail_opened"
DAY_S = 86_400.0
RPS, CLICK, TICK = 20.0, 0.3, 10.0
USERS = 5_000
SCENARIOS = ("independent", "daily", "shared", "users", "drop20", "segment")


def guarded_flag() -> FlagPlan:
    """The reference plan's first flag plus one guard, triggers off (the guard is measured)."""
    data: dict[str, Any] = tomllib.loads(EXAMPLE.read_text())
    data["flags"][KEY]["guards"] = [{"event": EVENT}]
    data["flags"][KEY]["triggers"] = []
    return parse_plan(data).flag(KEY)


@dataclass
class Traffic:
    """One run's traffic for ``scenario``: counts per cohort for each tick."""

    scenario: str
    rng: np.random.Generator
    start_of_day: float = 0.0
    incidents: dict[int, float] = field(default_factory=dict)
    users: Any = None

    def __post_init__(self) -> None:
        self.start_of_day = float(self.rng.uniform(0, DAY_S))
        self.incidents = {stage: float(self.rng.uniform(0, 600)) for stage in (1, 2, 3)}
        if self.scenario in ("users", "segment"):
            activity = self.rng.lognormal(0.0, 1.0, USERS)
            a = CLICK * (CLICK * (1 - CLICK) / 0.15**2 - 1)
            b = a * (1 - CLICK) / CLICK
            self.users = (
                np.cumsum(activity / activity.sum()),  # who sends a request
                self.rng.beta(a, b, USERS),  # how often they click
                self.rng.uniform(0, 100, USERS),  # their bucket, as a percent
                self.rng.uniform(0, 1, USERS) < 0.2,  # the segment that breaks
            )

    def counts(self, t: float, stage: int, since: float, percent: float) -> CountsReading:
        day = math.sin(2 * math.pi * (self.start_of_day + t) / DAY_S)
        n = int(self.rng.poisson(RPS * TICK * (1 + 0.5 * day if self.scenario == "daily" else 1)))
        rate = CLICK * (1 + 0.3 * day if self.scenario == "daily" else 1)
        if self.scenario == "shared" and 0 <= t - since - self.incidents[stage] < 600:
            rate *= 0.5
        drop = 0.2 if self.scenario == "drop20" and stage >= 2 else 0.0
        if self.users is None:
            n_c = int(self.rng.binomial(n, percent / 100))
            k_c = int(self.rng.binomial(n_c, rate * (1 - drop)))
            k_b = int(self.rng.binomial(n - n_c, rate))
        else:
            cum, propensity, bucket, segment = self.users
            who = np.minimum(np.searchsorted(cum, self.rng.uniform(0, 1, n)), USERS - 1)
            canary = bucket[who] < percent
            p = propensity[who] * (rate / CLICK)
            if self.scenario == "segment":
                p = np.where(canary & segment[who], 0.0, p)
            clicks = self.rng.uniform(0, 1, n) < p
            n_c, k_c, k_b = int(canary.sum()), int((clicks & canary).sum()), 0
            k_b = int(clicks.sum()) - k_c
        return CountsReading(_cohort(n_c, k_c), _cohort(n - n_c, k_b), t - TICK, t)


def _cohort(n: int, clicks: int) -> CohortCounts:
    return CohortCounts(n, 0, (100.0,), (n, 0), tracked={EVENT: Tracked(clicks)})


def one_run(flag: FlagPlan, scenario: str, seed: int) -> tuple[str, int]:
    """One rollout through stage 3: how it ended (``rolled_back``, ``paused: <reason>``,
    ``passed``) and the stage it ended in."""
    rng = np.random.default_rng(seed)
    traffic = Traffic(scenario, rng)
    state = RolloutState(KEY, Status.RUNNING, 1, flag.serving_percent(1), 0.0, "started", 1)
    memory, now = Memory(), 0.0
    quiet: Any = MappingProxyType({})
    while state.stage <= 3:
        now += TICK
        counts = traffic.counts(now, state.stage, state.since, state.percent)
        d = decide(flag, state, Readings(quiet, quiet, counts, quiet), memory, now)
        memory = d.memory
        if d.action is Action.ROLLBACK:
            return "rolled_back", state.stage
        if d.action is Action.PAUSE:
            return f"paused: {d.reason}", state.stage
        if d.changes_state:
            state = from_decision(flag, state, d, now)
    return "passed", 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--scenarios", nargs="*", default=list(SCENARIOS))
    args = parser.parse_args()
    flag = guarded_flag()
    print(f"reference plan + guard {EVENT} (max_drop 0.05), {RPS:g} rps, {CLICK:.0%} click")
    print(f"{'scenario':<12} {'rolled back':>12} {'95 % interval':>16} {'paused':>7}  by stage")
    for scenario in args.scenarios:
        began = time.perf_counter()
        ends = [one_run(flag, scenario, args.seed * 100_003 + i) for i in range(args.runs)]
        back = [stage for how, stage in ends if how == "rolled_back"]
        low, high = wilson_interval(args.runs, len(back))
        paused = Counter(f"{how[8:]} in stage {s}" for how, s in ends if how.startswith("paused"))
        stages = ", ".join(f"{s}: {c}" for s, c in sorted(Counter(back).items()))
        print(
            f"{scenario:<12} {len(back) / args.runs:>11.1%} [{low:>6.1%}, {high:>6.1%}]"
            f" {paused.total() / args.runs:>7.1%}  {stages or '-'}"
            f"   ({time.perf_counter() - began:.0f} s)"
        )
        for why, count in sorted(paused.items()):
            print(f"{'':<12} paused {count}: {why}")


if __name__ == "__main__":
    main()
