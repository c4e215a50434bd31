"""How much does one policy tick's signal work cost, and how much memory do snapshots hold?

Run: ``python benchmarks/bench_signals.py [--rounds N] [--warmup W] [--flags F] [--hours H]
[--ticks T]`` (about 70 s; ``--flags 0`` skips the memory part)

**Tick cost.** A round is what the policy does every tick: ``InProcessSignalSource.snapshot(now)``
(one ``InMemoryMetricReader`` collection, folded into the snapshot ring) and then every built-in
signal for 2 flags (both cohorts' latency P50/P95/P99, error rate and requests, ledger
mismatches, telemetry acceptance, event-loop lag, and one ``count_beyond`` on the lag) over a 60 s
window. Two setups are measured in one run, rounds interleaved so that machine noise hits both
alike:

- ``2x2``: 2 flags x 2 cohorts, one attribute set each (4 request-duration series);
- ``300``: the same flags and cohorts spread over 75 attribute sets each (routes x methods x
  status codes), 300 request-duration series.

Between rounds (untimed) every series gets a new measurement, so each snapshot has work to do.
The SDK's own collection (``reader.get_metrics_data()`` alone) is timed too, to separate its cost
from ours. Figures are medians of the per-round times, in microseconds.

**Snapshot memory at scale.** ``--flags`` flags (100) with the reference plan's stages and
triggers, on the real ``setup_telemetry(plan)`` provider, which also carries what the signals do
not read: the controller's gauges (``canary.rollout.*``, ``canary.trigger.*``) and the hook's
``feature_flag.evaluation_*`` instruments, for every flag (collected once and added to every
collection: see :class:`Fleet`). Every 10 s of virtual time each flag's two cohorts get 2
requests (and now and then a 404 or a 503). Two sources snapshot the same collection at every
tick:

- ``default``: built as ``CanaryProvider`` builds it (``InProcessSignalSource(reader)``): 2 h of
  retention whatever the plan;
- ``plan``: ``InProcessSignalSource(reader, plan=plan)``: the plan's longest window plus two
  ticks (920 s for the reference plan).

After ``--hours`` (2) of virtual history under ``tracemalloc``, a source's memory is what is
freed when it is dropped (its snapshot ring and running totals). Then, with ``tracemalloc`` off,
``--ticks`` ticks are timed per source, interleaved: ``snapshot(now)`` on the tick's collection
(the SDK's collection is timed apart, for reference) and every read the policy makes for every
flag: each trigger over its window, plus the stage-4 gate's P95 and error rate over 15 min at
every tick (an upper bound: a gate is read once per window). Run against an older checkout
(``PYTHONPATH=<checkout> python <this file>``), the ``plan`` row is skipped when the source has
no ``plan=``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

from openfeature_canary import load_plan
from openfeature_canary.clock import ManualClock
from openfeature_canary.plan import RolloutPlan
from openfeature_canary.plan._signals import KNOWN_SIGNALS
from openfeature_canary.policy._decide import counts_samples
from openfeature_canary.signals import InProcessSignalSource
from openfeature_canary.telemetry import setup_telemetry

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "canary_plan.toml"

FLAGS = ("dataservice-read-canary", "dataservice-user-read-canary")
BOUNDS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    *(round(0.1 + 0.005 * i, 3) for i in range(41)),
    0.5,
    1.0,
    2.5,
)
LAG_BOUNDS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
SIGNALS = sorted(KNOWN_SIGNALS)


@dataclass
class Setup:
    """An application with ``per_cohort`` request series per (flag, cohort), and its source."""

    name: str
    per_cohort: int

    def __post_init__(self) -> None:
        self.reader = InMemoryMetricReader()
        views = [
            View(
                instrument_name="http.server.request.duration",
                aggregation=ExplicitBucketHistogramAggregation(BOUNDS),
            ),
            View(
                instrument_name="canary.event_loop.lag",
                aggregation=ExplicitBucketHistogramAggregation(LAG_BOUNDS),
            ),
        ]
        self.provider = MeterProvider(metric_readers=[self.reader], views=views)
        meter = self.provider.get_meter("bench")
        self.duration = meter.create_histogram("http.server.request.duration", unit="s")
        self.mismatches = meter.create_counter("canary.ledger.mismatches")
        self.sent = meter.create_counter("canary.telemetry.sent")
        self.accepted = meter.create_counter("canary.telemetry.accepted")
        self.lag = meter.create_histogram("canary.event_loop.lag", unit="s")
        routes = [f"/api/v{v}/r{r}" for v in range(5) for r in range(5)]
        methods = ("GET", "POST", "HEAD")
        statuses = (200, 404, 503)
        combos = [
            (route, method, status) for route in routes for method in methods for status in statuses
        ]
        self.attrs = [
            {
                "feature_flag.key": flag,
                "feature_flag.result.variant": variant,
                "http.route": route,
                "http.request.method": method,
                "http.response.status_code": status,
            }
            for flag in FLAGS
            for variant in ("on", "off")
            for route, method, status in combos[: self.per_cohort]
        ]
        self.clock = ManualClock()
        self.source = InProcessSignalSource(self.reader)
        self.step = 0

    @property
    def series(self) -> int:
        return len(self.attrs)

    def record(self) -> None:
        """One measurement per series and per counter (untimed)."""
        self.step += 1
        for i, attrs in enumerate(self.attrs):
            self.duration.record(0.1 + ((self.step + i) % 40) * 0.005, attrs)
        for flag in FLAGS:
            self.mismatches.add(1, {"feature_flag.key": flag})
        self.sent.add(10)
        self.accepted.add(10)
        self.lag.record(0.02 * (self.step % 20))

    def tick(self) -> None:
        """The timed work of one policy tick."""
        now = self.clock.advance(10)
        self.source.snapshot(now)
        for flag in FLAGS:
            for signal in SIGNALS:
                self.source.read(flag, signal, 60, now)
            self.source.count_beyond(flag, "event_loop_lag_ms", 300, True, 60, now)

    def collect_only(self) -> None:
        self.reader.get_metrics_data()


def _time_us(fn: Callable[[], None]) -> float:
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        fn()
        return (time.perf_counter_ns() - start) / 1000
    finally:
        if gc_was_enabled:
            gc.enable()


# --------------------------------------------------------------------------- memory at scale

TICK_S = 10.0
GATE_WINDOW_S = 900.0  # the reference plan's stage-4 gate window (its longest)
LATENCIES = (0.012, 0.031, 0.064, 0.087, 0.104, 0.117, 0.123, 0.138, 0.146, 0.171, 0.22, 0.61)


def many_flags(plan: RolloutPlan, count: int) -> RolloutPlan:
    """The reference plan's first flag, ``count`` times over (independent flags)."""
    template = next(iter(plan.flags.values()))
    keys = [f"flag-{i:03d}" for i in range(count)]
    return replace(plan, flags={k: replace(template, key=k, after=None) for k in keys})


class Fleet:
    """``count`` flags of traffic on a real ``setup_telemetry`` provider; the sources' reader.

    What the signals never read (the controller's gauges, the hook's evaluation instruments,
    for every flag) lives on a provider of its own, collected once and added to every
    collection the sources see: re-collecting it at each tick would only slow the run, since
    the sources skip it before copying anything.
    """

    def __init__(self, count: int) -> None:
        self.plan = many_flags(load_plan(EXAMPLE), count)
        self.keys = list(self.plan.flags)
        self.telemetry = setup_telemetry(self.plan)
        app = self.telemetry.meter_provider.get_meter("bench-app")
        self.duration = app.create_histogram("http.server.request.duration", unit="s")
        self.mismatches = app.create_counter("canary.ledger.mismatches")
        self.sent = app.create_counter("canary.telemetry.sent")
        self.accepted = app.create_counter("canary.telemetry.accepted")
        self.lag = app.create_histogram("canary.event_loop.lag", unit="s")
        self.others_reader = InMemoryMetricReader()
        self.others_provider = MeterProvider(metric_readers=[self.others_reader])
        controller = self.others_provider.get_meter("openfeature_canary.controller")
        for name in ("canary.rollout.percent", "canary.rollout.stage"):
            controller.create_observable_gauge(name, [self._per_flag])
        controller.create_observable_gauge("canary.rollout.status", [self._per_status])
        for name in ("canary.trigger.value", "canary.trigger.threshold"):
            controller.create_observable_gauge(name, [self._per_trigger])
        hook = self.others_provider.get_meter("openfeature.contrib.hook.canary")
        evaluations = hook.create_counter("feature_flag.evaluation_requests_total")
        evaluation_time = hook.create_histogram("feature_flag.evaluation.duration", unit="s")
        for key in self.keys:
            evaluations.add(6, {"feature_flag.key": key})
            evaluation_time.record(0.00002, {"feature_flag.key": key})
        self.others = self.others_reader.get_metrics_data()
        self.collected: MetricsData | None = None
        self.rng = random.Random(20261126)
        self.attrs = {
            (key, variant, status): {
                "feature_flag.key": key,
                "feature_flag.result.variant": variant,
                "http.response.status_code": status,
                "http.route": "/api/v1/providers/{id}",
            }
            for key in self.keys
            for variant in ("on", "off")
            for status in (200, 404, 503)
        }
        self.now = 0.0

    def _per_flag(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(25, {"feature_flag.key": k}) for k in self.keys]

    def _per_status(self, _options: CallbackOptions) -> Iterable[Observation]:
        statuses = ("pending", "running", "paused", "completed", "rolled_back")
        return [
            Observation(int(s == "running"), {"feature_flag.key": k, "canary.rollout.status": s})
            for k in self.keys
            for s in statuses
        ]

    def _per_trigger(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(1.0, {"feature_flag.key": k, "canary.trigger.name": t.name})
            for k, flag in self.plan.flags.items()
            for t in flag.triggers
        ]

    def traffic(self) -> None:
        """One tick of traffic: 2 requests per cohort, now and then a 404 or a 503."""
        rng = self.rng
        for key in self.keys:
            for variant in ("on", "off"):
                ok = self.attrs[(key, variant, 200)]
                self.duration.record(rng.choice(LATENCIES), ok)
                self.duration.record(rng.choice(LATENCIES), ok)
                roll = rng.random()
                if roll < 0.1:
                    status = 404 if roll < 0.07 else 503
                    self.duration.record(rng.choice(LATENCIES), self.attrs[(key, variant, status)])
        self.sent.add(10)
        self.accepted.add(10)
        self.lag.record(rng.choice((0.002, 0.004, 0.011)))

    def collect(self) -> None:
        """One collection, which every source then snapshots."""
        app = self.telemetry.reader.get_metrics_data()
        assert app is not None and self.others is not None
        self.collected = MetricsData([*app.resource_metrics, *self.others.resource_metrics])

    def collect_all(self) -> None:
        """What the SDK's collections of all of it cost (timed for reference)."""
        self.telemetry.reader.get_metrics_data()
        self.others_reader.get_metrics_data()

    def get_metrics_data(self) -> MetricsData | None:
        return self.collected

    def tick(self, sources: dict[str, InProcessSignalSource]) -> None:
        """Traffic, one collection and a snapshot by every source (untimed)."""
        self.traffic()
        self.collect()
        for source in sources.values():
            source.snapshot(self.now)
        self.now += TICK_S

    def reads(self, source: InProcessSignalSource, now: float) -> None:
        """The reads one policy tick makes for every flag (the gate's at every tick)."""
        for key, flag in self.plan.flags.items():
            for t in flag.triggers:
                if counts_samples(t):
                    inclusive = t.op == "at_least"
                    source.count_beyond(key, t.signal, t.threshold, inclusive, t.window_s, now)
                else:
                    source.read(key, t.signal, t.window_s, now)
            source.read_between(key, "latency_p95_ms", now - GATE_WINDOW_S, now)
            source.read_between(key, "error_rate", now - GATE_WINDOW_S, now)


def _sources(fleet: Fleet) -> dict[str, InProcessSignalSource]:
    sources = {"default": InProcessSignalSource(fleet)}
    kwargs: dict[str, Any] = {"plan": fleet.plan}
    with contextlib.suppress(TypeError):  # an older checkout: no plan= yet
        sources["plan"] = InProcessSignalSource(fleet, **kwargs)
    return sources


def _held_mb(sources: dict[str, InProcessSignalSource], name: str) -> float:
    """Memory freed when the source ``name`` is dropped (tracemalloc must be tracing)."""
    source = sources.pop(name)
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    del source
    gc.collect()
    return (before - tracemalloc.get_traced_memory()[0]) / 1e6


def memory_and_cost(count: int, hours: float, ticks: int) -> None:
    fleet = Fleet(count)
    tracemalloc.start()
    sources = _sources(fleet)
    for _ in range(round(hours * 3600 / TICK_S) + 1):
        fleet.tick(sources)
    fleet.collected = None
    kept = {name: (s.retention_s, len(s._ring)) for name, s in sources.items()}
    held = {name: _held_mb(sources, name) for name in list(sources)}
    tracemalloc.stop()

    # Cost, tracemalloc off: fresh sources, filled past the plan's retention first.
    sources = _sources(fleet)
    for _ in range(round(1200 / TICK_S)):
        fleet.tick(sources)
    snap_us: dict[str, list[float]] = {name: [] for name in sources}
    read_us: dict[str, list[float]] = {name: [] for name in sources}
    collect_us: list[float] = []
    for _ in range(ticks):
        fleet.traffic()
        collect_us.append(_time_us(fleet.collect_all))
        fleet.collect()
        for name, source in sources.items():  # interleaved: noise hits both alike
            snap_us[name].append(_time_us(lambda s=source, t=fleet.now: s.snapshot(t)))
            read_us[name].append(_time_us(lambda s=source, t=fleet.now: fleet.reads(s, t)))
        fleet.now += TICK_S
    fleet.telemetry.shutdown()
    fleet.others_provider.shutdown()

    print()
    print(
        f"{count} flags, {hours:g} h of virtual history, a tick every {TICK_S:g} s; "
        f"cost: median of {ticks} ticks, SDK collection excluded"
    )
    print(
        f"{'source':<8} {'retention s':>11} {'snapshots':>9} {'held MB':>8} {'ratio':>6} "
        f"{'snapshot µs':>11} {'reads µs':>9} {'tick µs':>9} {'ratio':>6}"
    )
    base_tick = statistics.median(snap_us["default"]) + statistics.median(read_us["default"])
    for name, mb in held.items():
        snap, read = statistics.median(snap_us[name]), statistics.median(read_us[name])
        retention, snapshots = kept[name]
        print(
            f"{name:<8} {retention:>11g} {snapshots:>9} {mb:>8.1f} {mb / held['default']:>6.2f} "
            f"{snap:>11.0f} {read:>9.0f} {snap + read:>9.0f} {(snap + read) / base_tick:>6.2f}"
        )
    print(f"SDK collection of everything, for reference: {statistics.median(collect_us):.0f} µs")
    if "plan" in held:
        verdict = "ok" if held["plan"] <= 20 else "MISSED"
        print(f"plan source holds {held['plan']:.1f} MB: target ≤ 20 MB {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200, help="timed rounds per setup")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--flags", type=int, default=100, help="flags of the memory run")
    parser.add_argument("--hours", type=float, default=2.0, help="virtual history kept")
    parser.add_argument("--ticks", type=int, default=100, help="timed ticks of the memory run")
    args = parser.parse_args()

    setups = [Setup("2x2", 1), Setup("300", 75)]
    rounds: dict[str, list[float]] = {s.name: [] for s in setups}
    collects: dict[str, list[float]] = {s.name: [] for s in setups}
    for i in range(args.warmup + args.rounds):
        for setup in setups:  # interleaved: noise hits both alike
            setup.record()
            took = _time_us(setup.tick)
            setup.record()
            collect = _time_us(setup.collect_only)
            if i >= args.warmup:
                rounds[setup.name].append(took)
                collects[setup.name].append(collect)

    base = statistics.median(rounds["2x2"])
    print(f"signals per round: {len(SIGNALS)} x {len(FLAGS)} flags + 2 count_beyond, window 60 s")
    print(f"{'setup':<6} {'series':>6} {'round µs':>10} {'ratio':>6} {'SDK collect µs':>15}")
    for setup in setups:
        median = statistics.median(rounds[setup.name])
        collect = statistics.median(collects[setup.name])
        print(
            f"{setup.name:<6} {setup.series:>6} {median:>10.1f} {median / base:>6.2f} "
            f"{collect:>15.1f}"
        )
    if args.flags > 0:
        memory_and_cost(args.flags, args.hours, args.ticks)


if __name__ == "__main__":
    main()
