"""How much does one policy tick's signal work cost?

Run: ``python benchmarks/bench_signals.py [--rounds N] [--repeats R]``

A round is what the policy does every tick: ``InProcessSignalSource.snapshot(now)`` (one
``InMemoryMetricReader`` collection, folded into the snapshot ring) and then every built-in signal
for 2 flags (both cohorts' latency P50/P95/P99, error rate and requests, ledger mismatches,
telemetry acceptance, event-loop lag, and one ``count_beyond`` on the lag) over a 60 s window.

Two setups are measured in one run, rounds interleaved so that machine noise hits both alike:

- ``2x2``: 2 flags x 2 cohorts, one attribute set each (4 request-duration series);
- ``300``: the same flags and cohorts spread over 75 attribute sets each (routes x methods x
  status codes), 300 request-duration series.

Between rounds (untimed) every series gets a new measurement, so each snapshot has work to do.
The SDK's own collection (``reader.get_metrics_data()`` alone) is timed too, to separate its cost
from ours. Figures are medians of the per-round times, in microseconds.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

from openfeature_canary._signal_names import KNOWN_SIGNALS
from openfeature_canary.clock import ManualClock
from openfeature_canary.signals import InProcessSignalSource

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200, help="timed rounds per setup")
    parser.add_argument("--warmup", type=int, default=20)
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


if __name__ == "__main__":
    main()
