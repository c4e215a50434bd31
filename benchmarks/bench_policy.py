"""What the canary policy costs, and how fast it detects each hard trigger.

Run: ``python benchmarks/bench_policy.py [--ticks 150] [--rounds 25] [--size 2000]
[--flags 1,10,100] [--flag-rounds 60]``

Four measurements, in one run, with real components (OpenFeature client, ``CanaryProvider``,
``MetricsHook``, the OpenTelemetry SDK with its in-process reader, ``InProcessSignalSource``,
the policy) and the simulated service of the demo in virtual time:

1. **One policy tick** of the reference plan (spec §2): both flags, ``dataservice-read-canary``
   running at stage 2 (25 %) with healthy traffic between ticks (untimed), phase 2 pending.
   A tick is what the background thread does every ``tick``: one snapshot of the metrics, the
   signal reads of both flags (triggers, and gate windows as they close), ``decide`` and, when a
   window closes, persisting its verdict. Split by a timing wrapper around the signal source.
   ``decide()`` alone is timed too, with the readings of the last tick prebuilt.
2. **Detection latency** of each of the five hard triggers: the fault of ``--fault`` in the demo,
   injected 120 s into stage 2, from its onset to the flag being off (virtual time), against the
   rule's own minimum (P95: sustained 5 min; 5xx: 2 min; ledger and acceptance: immediate, i.e.
   the next tick; lag: the second stall, 60 s after the first), as "latency / minimum" and the
   excess in ticks.
3. **PolicyHook per evaluation**: ``client.get_boolean_value`` through ``CanaryProvider`` with
   no hook, with a hook that does nothing (the SDK's own charge for a registered hook) and with
   ``PolicyHook`` (no tick due), rounds interleaved, medians; and the hook's two methods
   called directly.
4. **A policy round per flag** for 1, 10 and 100 flags (``policy_rounds.py``): the background
   runner's round with the controller's own metrics registered, per flag, and the points one
   collection holds (the controller's own apart).
"""

from __future__ import annotations

import argparse
import gc
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.contrib.hook.canary import MetricsHook, PolicyHook
from openfeature.contrib.provider.canary import CanaryProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import FlagEvaluationDetails, FlagType, Reason
from openfeature.hook import Hook, HookContext, HookHints
from policy_rounds import bench_rounds

from openfeature_canary import Autopilot, ManualClock, RolloutPlan, Status, load_plan
from openfeature_canary.demo._simulation import Fault, FaultKind, SimulatedService, Simulation
from openfeature_canary.policy._decide import Memory, Readings, decide
from openfeature_canary.signals import CountsReading, InProcessSignalSource, SignalReading
from openfeature_canary.telemetry import Telemetry, setup_telemetry

ROOT = Path(__file__).resolve().parent.parent
PLAN = ROOT / "examples" / "canary_plan.toml"
FLAG = "dataservice-read-canary"
START = 1_800_000_000.0

#: trigger -> (fault kind, the rule's minimum detection latency in s, what the minimum is)
TRIGGERS: Mapping[str, tuple[FaultKind, float, str]] = {
    "p95_breach": ("latency", 300.0, "sustained 5 min"),
    "error_rate_breach": ("errors", 120.0, "sustained 2 min"),
    "ledger_mismatch": ("mismatch", 0.0, "immediate (next tick)"),
    "telemetry_acceptance": ("ingest", 0.0, "immediate (next tick)"),
    "event_loop_lag": ("lag", 60.0, "second stall"),
}


class _Events:
    """Telemetry events kept in memory (the ingest is not what is measured here)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Mapping[str, Any]]] = []

    def enqueue(self, event_name: str, properties: Mapping[str, Any]) -> None:
        self.events.append((event_name, properties))


@dataclass
class TimedSource:
    """The signal source, with the time spent in snapshots and in reads."""

    inner: InProcessSignalSource
    snapshot_s: float = 0.0
    read_s: float = 0.0
    reads: int = 0

    def snapshot(self, now: float) -> None:
        t0 = time.perf_counter()
        try:
            self.inner.snapshot(now)
        finally:
            self.snapshot_s += time.perf_counter() - t0

    def _timed(self, fn: Any, *args: Any) -> SignalReading:
        t0 = time.perf_counter()
        try:
            return fn(*args)  # type: ignore[no-any-return]
        finally:
            self.read_s += time.perf_counter() - t0
            self.reads += 1

    def read(self, flag_key: str, signal: str, window_s: float, now: float) -> SignalReading:
        return self._timed(self.inner.read, flag_key, signal, window_s, now)

    def read_between(self, flag_key: str, signal: str, start: float, end: float) -> SignalReading:
        return self._timed(self.inner.read_between, flag_key, signal, start, end)

    def count_beyond(
        self,
        flag_key: str,
        signal: str,
        threshold: float,
        inclusive: bool,
        window_s: float,
        now: float,
    ) -> SignalReading:
        return self._timed(
            self.inner.count_beyond, flag_key, signal, threshold, inclusive, window_s, now
        )

    def counts_between(self, flag_key: str, start: float, end: float) -> CountsReading:
        t0 = time.perf_counter()
        try:
            return self.inner.counts_between(flag_key, start, end)
        finally:
            self.read_s += time.perf_counter() - t0
            self.reads += 1


@dataclass
class World:
    """A rollout in virtual time with the demo's simulated service (see tests/e2e_world.py)."""

    clock: ManualClock
    telemetry: Telemetry
    provider: CanaryProvider
    service: SimulatedService
    sim: Simulation
    source: TimedSource
    folder: tempfile.TemporaryDirectory[str] = field(repr=False)

    def close(self) -> None:
        self.telemetry.shutdown()
        self.folder.cleanup()


def make_world(plan: RolloutPlan, domain: str, fault: Fault | None = None) -> World:
    clock = ManualClock(start=START)
    telemetry = setup_telemetry(plan)
    source = TimedSource(InProcessSignalSource(telemetry.reader))
    folder = tempfile.TemporaryDirectory(prefix="bench-policy-")
    provider = CanaryProvider(
        plan,
        clock=clock,
        meter_provider=telemetry.meter_provider,
        environ={},
        signals=source,
        events=_Events(),
        reports_dir=folder.name,
        background=False,
    )
    api.set_provider_and_wait(provider, domain=domain)
    client = api.get_client(domain=domain)
    client.add_hooks([MetricsHook(meter_provider=telemetry.meter_provider)])
    service = SimulatedService(
        client, provider.rollout, meter_provider=telemetry.meter_provider, fault=fault
    )
    sim = Simulation(provider.rollout, clock, service)
    return World(clock, telemetry, provider, service, sim, source, folder)


def promote_to(world: World, stage: int) -> None:
    ctl = world.provider.controller(FLAG)
    ctl.start()
    while ctl.state.stage < stage:
        ctl.promote()


# --------------------------------------------------------------------------- 1. tick cost


def bench_tick(plan: RolloutPlan, ticks: int, warmup: int) -> None:
    world = make_world(plan, "tick")
    try:
        promote_to(world, 2)
        for _ in range(warmup):  # history for the trigger windows, caches
            world.sim.step()
        controllers = world.provider.rollout.controllers()
        sim, service, source = world.sim, world.service, world.source
        tick_s = sim.tick_s
        rounds: list[float] = []
        snap_s = read_s = 0.0
        reads = 0
        gc.collect()
        for _ in range(ticks):
            for ctl in controllers:  # traffic of one tick, untimed
                service.serve(ctl.key, max(1, round(sim.rate(ctl.flag) * tick_s)))
            service.tick_process(False)
            world.clock.advance(tick_s)
            source.snapshot_s = source.read_s = 0.0
            source.reads = 0
            t0 = time.perf_counter()
            for ctl in controllers:
                ctl.tick()
            rounds.append(time.perf_counter() - t0)
            snap_s += source.snapshot_s
            read_s += source.read_s
            reads += source.reads
        state = world.provider.controller(FLAG).state
        assert (state.status, state.stage) == (Status.RUNNING, 2), state
        judged = len(state.windows)

        policy = world.provider.rollout.policy
        assert isinstance(policy, Autopilot)
        last = policy.last(FLAG)
        assert last is not None
        flag = plan.flag(FLAG)
        readings = Readings(triggers=last.triggers)
        now = world.clock.now()
        calls = 20_000
        per_call: list[float] = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(calls):
                decide(flag, state, readings, Memory(), now)
            per_call.append((time.perf_counter() - t0) / calls)
    finally:
        world.close()

    median = statistics.median(rounds) * 1e6
    mean = statistics.fmean(rounds) * 1e6
    snap = snap_s / ticks * 1e6
    read = read_s / ticks * 1e6
    rest = mean - snap - read
    decide_us = statistics.median(per_call) * 1e6
    print(f"1. one policy tick, reference plan: 2 flags, {FLAG} at stage 2 (25 %)")
    print(f"   {ticks} ticks of 10 s virtual time, healthy traffic between them (untimed)")
    print(f"   tick (both flags)       median {median:8.1f} µs   mean {mean:8.1f} µs")
    print(f"     snapshot              mean   {snap:8.1f} µs   ({snap / mean:4.0%} of the mean)")
    print(
        f"     signal reads          mean   {read:8.1f} µs   ({read / mean:4.0%}; "
        f"{reads / ticks:.1f} reads per tick)"
    )
    print(
        f"     decide + apply + rest mean   {rest:8.1f} µs   ({rest / mean:4.0%}; "
        f"{judged} gate windows judged and persisted in these ticks)"
    )
    print(
        f"   decide() alone          median {decide_us:8.2f} µs   "
        f"({decide_us / median:.1%} of a tick; readings of the last tick prebuilt)"
    )


# --------------------------------------------------------------------------- 2. detection


def bench_detection(plan: RolloutPlan) -> bool:
    print("2. detection latency: fault injected 120 s into stage 2, onset -> flag off (virtual s)")
    print(
        f"   {'trigger':<22} {'latency':>8} {'minimum':>8}  {'latency/min':>11} "
        f"{'excess ticks':>12}  rule"
    )
    ok = True
    for trigger, (kind, minimum, rule) in TRIGGERS.items():
        world = make_world(plan, f"detect-{trigger}", Fault(kind, FLAG, at_stage=2, after_s=120))
        try:
            promote_to(world, 2)
            ctl = world.provider.controller(FLAG)
            deadline = world.clock.now() + 900
            while ctl.state.status is not Status.ROLLED_BACK and world.clock.now() < deadline:
                world.sim.step()
            done = ctl.state.status is Status.ROLLED_BACK
            state = ctl.state
            onset = world.service.onset_at
            tick_s = world.sim.tick_s
        finally:
            world.close()
        if not done or onset is None or state.reason != trigger:
            ok = False
            print(f"   {trigger:<22} NOT DETECTED (status {state.status}, reason {state.reason})")
            continue
        latency = state.since - onset
        excess = (latency - minimum) / tick_s
        ratio = f"{latency / minimum:11.3f}" if minimum else f"{'—':>11}"
        print(f"   {trigger:<22} {latency:7.0f}s {minimum:7.0f}s  {ratio} {excess:12.1f}  {rule}")
    print(
        "   The excess is the sampling floor: traffic served during a tick is judged at the\n"
        "   next tick (10 s), so one tick past the rule's minimum is the fastest possible."
    )
    return ok


# --------------------------------------------------------------------------- 3. hook cost


class NoopHook(Hook):
    """A registered hook that does nothing: what the SDK itself charges per hook."""


@dataclass
class Scenario:
    name: str
    client: OpenFeatureClient
    rounds_s: list[float] = field(default_factory=list)


def _scenario(plan: RolloutPlan, name: str, hook: str | None) -> Scenario:
    provider = CanaryProvider(plan, clock=ManualClock(start=START), background=False)
    provider.controller(FLAG).start()  # 5 %: both variants served
    api.set_provider_and_wait(provider, domain=name)
    client = api.get_client(domain=name)
    if hook == "noop":
        client.add_hooks([NoopHook()])
    elif hook == "policy":
        policy = PolicyHook(provider)
        assert policy._runner is provider.runner  # no second thread
        client.add_hooks([policy])
    return Scenario(name, client)


def _direct_us(plan: RolloutPlan, calls: int) -> float:
    """``PolicyHook.before`` + ``finally_after`` called directly, as the SDK calls them."""
    provider = CanaryProvider(plan, clock=ManualClock(start=START), background=False)
    provider.controller(FLAG).start()
    hook = PolicyHook(provider)
    ctx = HookContext(
        FLAG, FlagType.BOOLEAN, False, EvaluationContext("u-1"), None, provider.get_metadata()
    )
    details = FlagEvaluationDetails(FLAG, True, "on", reason=Reason.SPLIT)
    hints: HookHints = {}
    before, after = hook.before, hook.finally_after
    after(ctx, details, hints)  # the one due tick
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            before(ctx, hints)
            after(ctx, details, hints)
        best = min(best, (time.perf_counter() - t0) / calls)
    return best * 1e6


def bench_hook(plan: RolloutPlan, rounds: int, size: int) -> None:
    scenarios = [
        _scenario(plan, "no hook", None),
        _scenario(plan, "no-op hook", "noop"),
        _scenario(plan, "PolicyHook", "policy"),
    ]
    contexts = [EvaluationContext(targeting_key=f"user-{i}") for i in range(size)]

    def run(s: Scenario) -> float:
        get = s.client.get_boolean_value
        t0 = time.perf_counter()
        for ctx in contexts:
            get(FLAG, False, ctx)
        return time.perf_counter() - t0

    for s in scenarios:  # warm-up; PolicyHook's first evaluation runs its one due tick
        run(s)
    gc.collect()
    for i in range(rounds):
        for s in scenarios[i % 3 :] + scenarios[: i % 3]:  # rotate who runs first
            s.rounds_s.append(run(s))
    us = {s.name: statistics.median(s.rounds_s) / size * 1e6 for s in scenarios}
    base = us["no hook"]
    print(
        f"3. client.get_boolean_value through CanaryProvider (5 %), median of {rounds} rounds "
        f"of {size}, no tick due"
    )
    for name, value in us.items():
        print(f"   {name:<12} {value:6.2f} µs   {value / base:5.2f}x no hook")
    sdk = us["no-op hook"] - base
    own = us["PolicyHook"] - us["no-op hook"]
    print(f"   SDK charge for one registered hook: {sdk:5.2f} µs (no-op hook - no hook)")
    print(f"   PolicyHook's own work:              {own:5.2f} µs (PolicyHook - no-op hook)")
    print(
        f"   PolicyHook before + finally_after called directly: {_direct_us(plan, 100_000):.3f} µs"
        " (best of 5 x 100 000)"
    )
    print(
        "   The SDK charges ~4 µs per registered hook whatever it does. Register PolicyHook\n"
        "   only when it is needed: in front of a foreign provider (flagd, env var, a vendor),\n"
        "   where it is what turns a rollback into the caller's default, or when no background\n"
        "   thread can be relied on (background=False, workers that freeze idle threads).\n"
        "   With CanaryProvider's own runner ticking, the provider needs no hook."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=150, help="timed policy ticks (<= 170)")
    parser.add_argument("--rounds", type=int, default=25, help="timed rounds per hook scenario")
    parser.add_argument("--size", type=int, default=2000, help="evaluations per round")
    parser.add_argument("--flags", default="1,10,100", help="plan sizes of part 4 ('': skip)")
    parser.add_argument("--flag-rounds", type=int, default=60, help="timed rounds of part 4")
    parser.add_argument("--only-rounds", action="store_true", help="part 4 only")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.flags.split(",") if n.strip()]
    # Stage 2 lasts 30 min = 180 ticks: stay inside it so that every tick is "observing".
    ticks = max(1, min(args.ticks, 170))
    warmup = min(10, 175 - ticks)
    plan = load_plan(PLAN)
    # The faults log every shadow mismatch and rollback; the figures are what matters here.
    logging.getLogger("openfeature_canary").setLevel(logging.ERROR)
    started = time.perf_counter()
    try:
        ok = True
        if not args.only_rounds:
            bench_tick(plan, ticks, warmup)
            ok = bench_detection(plan)
            bench_hook(plan, args.rounds, args.size)
        if sizes:
            costs = bench_rounds(sizes, args.flag_rounds)
            ok &= costs[-1].round_s / costs[0].round_s <= costs[-1].flags / costs[0].flags
    finally:
        api.shutdown()
    print(f"({time.perf_counter() - started:.1f} s wall)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
