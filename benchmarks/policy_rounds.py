"""A policy round per flag, for 1, 10 and 100 flags (part 4 of ``bench_policy.py``).

A round is what the background thread does every tick: ``BackgroundRunner.run_once`` (read
the store if it changed, then every due flag's tick: one snapshot of the metrics, which runs
every observable callback of the meter provider, the signal reads, ``decide``). The plan is
``n`` copies of the reference flag, all running at stage 1, on the real ``setup_telemetry(plan)``
meter provider with the controller's own metrics registered (as ``CanaryProvider(plan,
telemetry=…)`` does) and an ``InProcessSignalSource(reader, plan=plan)``. Between rounds
(untimed), every flag's two cohorts get two requests each through ``record_request``. Per
size: the mean round of ``rounds`` (after ``warmup``; the mean, because the gates' work comes
in some rounds only, at different rounds for different flags), per flag, and the points one
collection holds, the controller's own (scope ``openfeature_canary.controller``) apart.
"""

from __future__ import annotations

import copy
import gc
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from openfeature_canary import ManualClock, Rollout, parse_plan
from openfeature_canary.instrumentation import record_request
from openfeature_canary.policy import Autopilot, BackgroundRunner
from openfeature_canary.signals import InProcessSignalSource
from openfeature_canary.telemetry import Telemetry, setup_telemetry

__all__ = ["RoundCost", "bench_rounds", "measure_round"]

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


def measure_round(n: int, rounds: int, warmup: int) -> RoundCost:
    """The mean round of ``n`` flags (see the module docstring)."""
    plan = plan_with(n)
    clock = ManualClock(start=START)
    telemetry = setup_telemetry(plan)
    mp = telemetry.meter_provider
    try:
        source = InProcessSignalSource(telemetry.reader, plan=plan)
        rollout = Rollout(plan, clock=clock, policy=Autopilot(source), meter_provider=mp)
        rollout.load()
        keys = [ctl.key for ctl in rollout.controllers()]
        for ctl in rollout.controllers():
            ctl.start(force=True)
        runner = BackgroundRunner(rollout)
        times = []
        gc.collect()
        for i in range(warmup + rounds):
            for key in keys:  # traffic of one tick, untimed
                for variant in ("on", "off", "on", "off"):
                    record_request(key, variant, 0.05, 200, meter_provider=mp)
            clock.advance(10)
            t0 = time.perf_counter()
            runner.run_once()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        mine, other = _points(telemetry)
    finally:
        telemetry.shutdown()
    return RoundCost(n, statistics.fmean(times), mine, other)


def bench_rounds(sizes: Sequence[int], rounds: int, warmup: int = 5) -> list[RoundCost]:
    """Measure and print each size; the ratio of each round to the 1-flag round."""
    costs = [measure_round(n, rounds, warmup) for n in sizes]
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
