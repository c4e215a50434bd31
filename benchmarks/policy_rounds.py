"""A policy round per flag, for 1, 10 and 100 flags (part 4 of ``bench_policy.py``).

A round is what the background thread does every tick: ``BackgroundRunner.run_once`` (read
the store if it changed, then every due flag's tick: one snapshot of the metrics, which runs
every observable callback of the meter provider, the signal reads, ``decide``). The plan is
``n`` copies of the reference flag, all running at stage 1, on the real ``setup_telemetry(plan)``
meter provider with the controller's own metrics registered (as ``CanaryProvider(plan,
telemetry=…)`` does) and an ``InProcessSignalSource(reader, plan=plan)``. Between rounds
(untimed), every flag's two cohorts get two requests each through ``record_request``. Per
size: the mean round of ``rounds`` (after ``warmup``; the mean, because the gates' work comes
in some rounds only, at different rounds for different flags; each size alone in the process,
in three passes over the sizes), per flag, and the points one
collection holds, the controller's own (scope ``openfeature_canary.controller``) apart.
"""

from __future__ import annotations

import copy
import gc
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import tomllib

from openfeature_canary import ManualClock, Rollout, parse_plan
from openfeature_canary.instrumentation import record_request
from openfeature_canary.policy import Autopilot, BackgroundRunner
from openfeature_canary.signals import InProcessSignalSource
from openfeature_canary.telemetry import Telemetry, setup_telemetry

__all__ = ["RoundCost", "bench_rounds", "measure_rounds"]

ROOT = Path(__file__).resolve().parent.parent
PLAN = ROOT / "examples" / "canary_plan.toml"
FLAG = "dataservice-read-canary"
START = 1_800_000_000.0
CONTROLLER_SCOPE = "openfeature_canary.controller"


@dataclass(frozen=True)
class RoundCost:
    """One size's figures."""

    flags: int
    round_s: float
    controller_points: int
    other_points: int


def plan_with(n: int) -> Any:
    """The reference plan with ``n`` copies of its first flag (no env override)."""
    data = tomllib.loads(PLAN.read_text())
    flag = data["flags"][FLAG]
    data["flags"] = {f"flag-{i:03d}": copy.deepcopy(flag) for i in range(n)}
    for value in data["flags"].values():
        value.pop("env_override", None)
        value.pop("after", None)
    return parse_plan(data, source="bench")


def _points(telemetry: Telemetry) -> tuple[int, int]:
    data = telemetry.reader.get_metrics_data()
    mine = other = 0
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            n = sum(len(m.data.data_points) for m in sm.metrics)
            if sm.scope.name == CONTROLLER_SCOPE:
                mine += n
            else:
                other += n
    return mine, other


class _World:
    """``n`` flags running at stage 1 under the policy, on their own telemetry (see module)."""

    def __init__(self, n: int) -> None:
        self.n = n
        plan = plan_with(n)
        self.clock = ManualClock(start=START)
        self.telemetry = setup_telemetry(plan)
        self.mp = self.telemetry.meter_provider
        source = InProcessSignalSource(self.telemetry.reader, plan=plan)
        rollout = Rollout(plan, clock=self.clock, policy=Autopilot(source), meter_provider=self.mp)
        rollout.load()
        self.keys = [ctl.key for ctl in rollout.controllers()]
        for ctl in rollout.controllers():
            ctl.start(force=True)
        self.runner = BackgroundRunner(rollout)
        self.times: list[float] = []

    def step(self, timed: bool) -> None:
        """Traffic of one tick (untimed), then one round."""
        for key in self.keys:
            for variant in ("on", "off", "on", "off"):
                record_request(key, variant, 0.05, 200, meter_provider=self.mp)
        self.clock.advance(10)
        t0 = time.perf_counter()
        self.runner.run_once()
        if timed:
            self.times.append(time.perf_counter() - t0)

    def cost(self) -> RoundCost:
        mine, other = _points(self.telemetry)
        return RoundCost(self.n, statistics.fmean(self.times), mine, other)


def measure_rounds(
    sizes: Sequence[int], rounds: int, warmup: int, passes: int = 3
) -> list[RoundCost]:
    """The mean round of each size. Each world runs alone in the process (another world's heap
    would weigh on its garbage collections), in ``passes`` passes over the sizes, so that a
    load coming and going on the machine weighs on every size alike."""
    times: dict[int, list[float]] = {n: [] for n in sizes}
    costs: dict[int, RoundCost] = {}
    for _ in range(passes):
        for n in sizes:
            world = _World(n)
            try:
                for i in range(warmup + rounds // passes):
                    world.step(timed=i >= warmup)
                times[n] += world.times
                costs[n] = world.cost()
            finally:
                world.telemetry.shutdown()
            del world
            gc.collect()
    return [replace(costs[n], round_s=statistics.fmean(times[n])) for n in sizes]


def bench_rounds(sizes: Sequence[int], rounds: int, warmup: int = 5) -> list[RoundCost]:
    """Measure and print each size; the ratio of each round to the 1-flag round."""
    costs = measure_rounds(sizes, rounds, warmup)
    base = costs[0]
    print(f"4. a policy round per flag: mean of {rounds} rounds (BackgroundRunner.run_once)")
    print("   flags   round ms   per flag µs   ÷ first round   points (controller + other)")
    for c in costs:
        print(
            f"   {c.flags:5d}  {c.round_s * 1e3:9.2f}   {c.round_s / c.flags * 1e6:11.1f}   "
            f"{c.round_s / base.round_s:13.1f}x   {c.controller_points:6d} + {c.other_points}"
        )
    last = costs[-1]
    scale = last.flags / base.flags
    ratio = last.round_s / base.round_s
    verdict = "ok" if ratio <= scale else "MISSED"
    print(
        f"   {last.flags} flags ÷ {base.flags}: {ratio:.1f}x for {scale:g}x the flags "
        f"(target ≤ {scale:g}x) {verdict}"
    )
    return costs
