"""Tests of openfeature_canary.signals: Prometheus quantile rules, windows, resets, signals.

The in-process source is driven by a real OpenTelemetry ``MeterProvider`` with a real
``InMemoryMetricReader`` and explicit bucket bounds; times come from a ``ManualClock``.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import Counter, MeterProvider
from opentelemetry.sdk.metrics import Histogram as HistogramInstrument
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.metrics.view import (
    ExplicitBucketHistogramAggregation,
    ExponentialBucketHistogramAggregation,
    View,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from openfeature_canary import SignalSourceError, load_plan
from openfeature_canary.clock import ManualClock
from openfeature_canary.plan import RolloutPlan, parse_plan
from openfeature_canary.plan._signals import KNOWN_SIGNALS
from openfeature_canary.signals import (
    DEFAULT_RETENTION_S,
    InProcessSignalSource,
    SignalReading,
    SignalSource,
    count_above,
    count_at_least,
    histogram_quantile,
    retention_for_plan,
)

FLAG = "dataservice-read-canary"
OTHER = "dataservice-user-read-canary"
# Dense 5 ms buckets from 100 to 300 ms (every plan threshold is a bound), coarse elsewhere.
REQUEST_BOUNDS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    *(round(0.1 + 0.005 * i, 3) for i in range(41)),
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
)
LAG_BOUNDS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
EXAMPLE_PLAN = Path(__file__).resolve().parent.parent / "examples" / "canary_plan.toml"


@dataclass
class App:
    """An application's instruments on a real MeterProvider, recorded by name as spec §6 says."""

    reader: InMemoryMetricReader = field(default_factory=InMemoryMetricReader)
    request_aggregation: Any = None

    def __post_init__(self) -> None:
        views = [
            View(
                instrument_name="http.server.request.duration",
                aggregation=self.request_aggregation
                or ExplicitBucketHistogramAggregation(REQUEST_BOUNDS),
            ),
            View(
                instrument_name="canary.event_loop.lag",
                aggregation=ExplicitBucketHistogramAggregation(LAG_BOUNDS),
            ),
        ]
        self.provider = MeterProvider(metric_readers=[self.reader], views=views)
        meter = self.provider.get_meter("test-app")
        self.duration = meter.create_histogram("http.server.request.duration", unit="s")
        self.mismatches = meter.create_counter("canary.ledger.mismatches")
        self.sent = meter.create_counter("canary.telemetry.sent")
        self.accepted = meter.create_counter("canary.telemetry.accepted")
        self.lag = meter.create_histogram("canary.event_loop.lag", unit="s")

    def request(
        self,
        seconds: float,
        *,
        variant: str = "on",
        status: int = 200,
        flag: str = FLAG,
        route: str = "/api/v6/providers/{id}/dashboard",
        method: str = "GET",
    ) -> None:
        self.duration.record(
            seconds,
            {
                "feature_flag.key": flag,
                "feature_flag.result.variant": variant,
                "http.response.status_code": status,
                "http.route": route,
                "http.request.method": method,
            },
        )

    def requests(self, samples: Sequence[float], **kwargs: Any) -> None:
        for s in samples:
            self.request(s, **kwargs)


class SwitchingReader:
    """Stands for "the application's reader": a restart swaps in a new provider's reader."""

    def __init__(self, reader: InMemoryMetricReader) -> None:
        self.reader = reader

    def get_metrics_data(self) -> MetricsData | None:
        return self.reader.get_metrics_data()


class ScriptedReader:
    """Replays fabricated collections: for a same-start decrease the real SDK cannot produce."""

    def __init__(self, collections: Sequence[MetricsData]) -> None:
        self._collections = list(collections)

    def get_metrics_data(self) -> MetricsData | None:
        return self._collections.pop(0)


class FlakyReader:
    """A real reader that can be made to fail: a collector crash is not producible on demand."""

    def __init__(self, reader: InMemoryMetricReader) -> None:
        self.reader = reader
        self.failing = False

    def get_metrics_data(self) -> MetricsData | None:
        if self.failing:
            raise RuntimeError("collector is gone")
        return self.reader.get_metrics_data()


def _collection(
    points: Sequence[tuple[str, int, Sequence[int]]], bounds: Sequence[float] = (0.1, 0.2)
) -> MetricsData:
    """One collection of the request histogram: (route, start time, per-bucket counts) each."""
    data_points = [
        HistogramDataPoint(
            attributes={
                "feature_flag.key": FLAG,
                "feature_flag.result.variant": "on",
                "http.response.status_code": 200,
                "http.route": route,
            },
            start_time_unix_nano=start,
            time_unix_nano=start + 1,
            count=sum(counts),
            sum=0.0,
            bucket_counts=tuple(counts),
            explicit_bounds=tuple(bounds),
            min=0.0,
            max=0.0,
        )
        for route, start, counts in points
    ]
    metric = Metric(
        name="http.server.request.duration",
        description=None,
        unit="s",
        data=Histogram(data_points, AggregationTemporality.CUMULATIVE),
    )
    scope = ScopeMetrics(InstrumentationScope("scripted"), [metric], "")
    return MetricsData([ResourceMetrics(Resource.create({}), [scope], "")])


def _exact_quantile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of raw samples: the value at rank ceil(q * n)."""
    ordered = sorted(samples)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


# -- histogram_quantile: Prometheus' rules -------------------------------------------------

# Transcribed from Prometheus' promql/testdata/histograms.test ("testhistogram" at 50m and the
# aggregated request_duration_seconds), converted from cumulative ``le`` buckets to
# OpenTelemetry per-bucket counts.
PROMETHEUS_CASES = [
    # start="positive": le 0.1 -> 50, 0.2 -> 70, 1 -> 110, +Inf -> 120
    ((0.1, 0.2, 1.0), (50, 20, 40, 10), -0.1, -math.inf),
    ((0.1, 0.2, 1.0), (50, 20, 40, 10), 1.01, math.inf),
    ((0.1, 0.2, 1.0), (50, 20, 40, 10), 0.0, 0.0),
    ((0.1, 0.2, 1.0), (50, 20, 40, 10), 1.0, 1.0),
    ((0.1, 0.2, 1.0), (50, 20, 40, 10), 0.2, 0.048),
    ((0.1, 0.2, 1.0), (50, 20, 40, 10), 0.5, 0.15),
    ((0.1, 0.2, 1.0), (50, 20, 40, 10), 0.8, 0.72),
    # start="negative": le -0.2 -> 10, -0.1 -> 20, 0.3 -> 20, +Inf -> 30
    ((-0.2, -0.1, 0.3), (10, 10, 0, 10), -0.1, -math.inf),
    ((-0.2, -0.1, 0.3), (10, 10, 0, 10), 1.01, math.inf),
    ((-0.2, -0.1, 0.3), (10, 10, 0, 10), 0.0, -0.2),
    ((-0.2, -0.1, 0.3), (10, 10, 0, 10), 1.0, 0.3),
    ((-0.2, -0.1, 0.3), (10, 10, 0, 10), 0.2, -0.2),
    ((-0.2, -0.1, 0.3), (10, 10, 0, 10), 0.5, -0.15),
    ((-0.2, -0.1, 0.3), (10, 10, 0, 10), 0.8, 0.3),
    # sum(rate(request_duration_seconds_bucket[5m])) by (le): le 0.1 -> 10, 0.2 -> 19, +Inf -> 25
    ((0.1, 0.2), (10, 9, 6), 0.3, 0.075),
    ((0.1, 0.2), (10, 9, 6), 0.5, 0.1277777777777778),
    # ... by (le, job): job1 = 3, 5, 10 / job2 = 7, 4, 4 (cumulative 3, 8, 10 and 7, 11, 15)
    ((0.1, 0.2), (3, 5, 2), 0.3, 0.1),
    ((0.1, 0.2), (3, 5, 2), 0.5, 0.14),
    ((0.1, 0.2), (7, 4, 4), 0.3, 0.0642857142857143),
    ((0.1, 0.2), (7, 4, 4), 0.5, 0.1125),
    # ... by (le, job, instance)
    ((0.1, 0.2), (1, 2, 1), 0.3, 0.11),
    ((0.1, 0.2), (2, 3, 1), 0.3, 0.09),
    ((0.1, 0.2), (3, 1, 2), 0.3, 0.06),
    ((0.1, 0.2), (4, 3, 2), 0.3, 0.0675),
    ((0.1, 0.2), (1, 2, 1), 0.5, 0.15),
    ((0.1, 0.2), (2, 3, 1), 0.5, 0.1333333333333333),
    ((0.1, 0.2), (3, 1, 2), 0.5, 0.1),
    ((0.1, 0.2), (4, 3, 2), 0.5, 0.1166666666666667),
]


@pytest.mark.parametrize(("bounds", "counts", "q", "expected"), PROMETHEUS_CASES)
def test_histogram_quantile_prometheus_examples_match(
    bounds: tuple[float, ...], counts: tuple[int, ...], q: float, expected: float
) -> None:
    got = histogram_quantile(q, bounds, counts)
    assert got is not None
    if math.isinf(expected):
        assert got == expected
    else:
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(
    ("bounds", "counts", "q", "expected"),
    [
        # quantile in the +Inf bucket: the highest finite bound, however far out the samples are
        ((0.1, 0.2), (0, 0, 7), 0.5, 0.2),
        ((0.1, 0.2), (10, 0, 1), 0.99, 0.2),
        # lowest bucket interpolates from 0 when its bound is positive
        ((0.1, 0.2), (4, 0, 0), 0.5, 0.05),
        ((0.1, 0.2), (4, 0, 0), 1.0, 0.1),
        # a single finite bucket
        ((0.2,), (10, 0), 0.5, 0.1),
        ((0.2,), (10, 0), 0.95, 0.19),
        ((0.2,), (0, 3), 0.5, 0.2),
        # a rank on a bucket edge takes the lower bucket's upper bound
        ((0.1, 0.2, 0.3), (5, 5, 0, 0), 0.5, 0.1),
    ],
)
def test_histogram_quantile_edge_buckets_follow_prometheus(
    bounds: tuple[float, ...], counts: tuple[int, ...], q: float, expected: float
) -> None:
    assert histogram_quantile(q, bounds, counts) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("bounds", "counts", "q"),
    [
        ((0.1, 0.2), (0, 0, 0), 0.95),  # no observations
        ((), (5,), 0.5),  # only the +Inf bucket: no finite bound
        ((0.1, 0.2), (1, 1, 1), math.nan),
        ((0.1, 0.2), (0, 3, 0), 0.0),  # PromQL's 0/0 in an empty lowest bucket
    ],
)
def test_histogram_quantile_no_value_cases_return_none(
    bounds: tuple[float, ...], counts: tuple[int, ...], q: float
) -> None:
    assert histogram_quantile(q, bounds, counts) is None


@pytest.mark.parametrize(
    ("bounds", "counts"),
    [
        ((0.1, 0.2), (1, 2)),
        ((0.2, 0.1), (1, 2, 3)),
        ((0.1, math.inf), (1, 2, 3)),
        ((0.1,), (-1, 2)),
    ],
)
def test_histogram_quantile_malformed_histogram_raises_value_error(
    bounds: tuple[float, ...], counts: tuple[int, ...]
) -> None:
    with pytest.raises(ValueError):
        histogram_quantile(0.5, bounds, counts)


@given(
    counts=st.lists(st.integers(min_value=0, max_value=50), min_size=6, max_size=6),
    k=st.integers(min_value=0, max_value=3),  # every threshold below the highest bound
    q=st.sampled_from([0.5, 0.9, 0.95, 0.99]),
)
def test_histogram_quantile_threshold_on_bound_decides_exactly(
    counts: list[int], k: int, q: float
) -> None:
    bounds = (0.1, 0.12, 0.14, 0.15, 0.2)
    total = sum(counts)
    value = histogram_quantile(q, bounds, counts)
    if total == 0:
        assert value is None
        return
    assert value is not None
    at_or_below = sum(counts[: k + 1])
    # the quantile is above T = bounds[k] exactly when fewer than q * total samples are <= T
    assert (value > bounds[k]) == (at_or_below < q * total)
    assert count_above(bounds[k], bounds, counts) == total - at_or_below


def test_count_above_between_bounds_interpolates_and_inf_bucket_counts_whole() -> None:
    bounds, counts = (0.1, 0.2, 0.3), (4, 10, 2, 3)
    assert count_above(0.15, bounds, counts) == pytest.approx(5 + 2 + 3)
    assert count_above(0.05, bounds, counts) == pytest.approx(2 + 10 + 2 + 3)
    assert count_above(0.5, bounds, counts) == 3  # unknown width: the whole +Inf bucket
    assert count_above(-1.0, bounds, counts) == 19
    assert count_at_least(0.3, bounds, counts) == 3


def test_count_above_threshold_off_by_float_noise_snaps_to_bound() -> None:
    bounds, counts = (100.0, 150.00000000000003, 200.0), (1, 2, 3, 4)
    assert count_above(150.0, bounds, counts) == 7
    assert count_at_least(150.0, bounds, counts) == 7


# -- the in-process source -----------------------------------------------------------------


def test_source_satisfies_signal_source_protocol() -> None:
    assert isinstance(InProcessSignalSource(App().reader), SignalSource)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_read_p95_random_samples_within_bucket_width_of_exact(seed: int) -> None:
    rng = random.Random(seed)
    app, clock = App(), ManualClock()
    source = InProcessSignalSource(app.reader)
    source.snapshot(clock.now())
    samples = [rng.uniform(0.09, 0.29) for _ in range(rng.randint(200, 800))]
    app.requests(samples)
    source.snapshot(clock.advance(60))
    for signal, q in (("latency_p50_ms", 0.5), ("latency_p95_ms", 0.95), ("latency_p99_ms", 0.99)):
        reading = source.read(FLAG, signal, 60, clock.now())
        assert reading.n == len(samples)
        assert reading.value is not None
        assert reading.value == pytest.approx(_exact_quantile(samples, q) * 1000, abs=5.0)


@pytest.mark.parametrize(
    ("below", "above", "breached"),
    [(95, 5, False), (94, 6, True), (100, 0, False), (0, 100, True)],
)
def test_read_p95_threshold_is_bound_breach_is_exact(
    below: int, above: int, breached: bool
) -> None:
    app, clock = App(), ManualClock()
    source = InProcessSignalSource(app.reader)
    source.snapshot(clock.now())
    app.requests([0.1499] * below)
    app.requests([0.1501] * above)
    source.snapshot(clock.advance(60))
    p95 = source.read(FLAG, "latency_p95_ms", 60, clock.now())
    assert p95.value is not None
    assert (p95.value > 150) is breached
    assert (_exact_quantile([0.1499] * below + [0.1501] * above, 0.95) > 0.15) is breached
    beyond = source.count_beyond(FLAG, "latency_p95_ms", 150, False, 60, clock.now())
    assert (beyond.value, beyond.n) == (above, 100)


def test_read_p95_samples_exactly_on_threshold_are_not_above_it() -> None:
    app, clock = App(), ManualClock()
    source = InProcessSignalSource(app.reader)
    source.snapshot(clock.now())
    app.requests([0.15] * 100)
    source.snapshot(clock.advance(60))
    p95 = source.read(FLAG, "latency_p95_ms", 60, clock.now()).value
    assert p95 == pytest.approx(145 + 5 * 0.95)  # interpolated inside (145, 150]
    assert source.count_beyond(FLAG, "latency_p95_ms", 150, False, 60, clock.now()).value == 0


def test_read_empty_window_gives_no_value_and_zero_samples() -> None:
    app, clock = App(), ManualClock()
    source = InProcessSignalSource(app.reader)
    app.requests([0.2] * 10)
    source.snapshot(clock.now())
    source.snapshot(clock.advance(60))  # nothing recorded between the two snapshots
    for signal in ("latency_p95_ms", "error_rate", "event_loop_lag_ms", "telemetry_acceptance"):
        reading = source.read(FLAG, signal, 60, clock.now())
        assert (reading.value, reading.n, reading.window_s) == (None, 0, 60.0), signal
    # counts over a covered window are a true zero
    assert source.read(FLAG, "requests", 60, clock.now()).value == 0.0
    assert source.read(FLAG, "ledger_mismatches", 60, clock.now()).value == 0.0


def test_read_before_two_snapshots_gives_no_value_for_every_signal() -> None:
    app, clock = App(), ManualClock(start=100.0)
    source = InProcessSignalSource(app.reader)
    app.requests([0.2] * 10)
    for signal in sorted(KNOWN_SIGNALS):
        assert source.read(FLAG, signal, 60, clock.now()) == SignalReading(
            signal, None, 0, 0.0, 100.0, 100.0
        )
    source.snapshot(clock.now())
    for signal in sorted(KNOWN_SIGNALS):
        reading = source.read(FLAG, signal, 60, clock.now())
        assert (reading.value, reading.n) == (None, 0), signal


def test_read_window_excludes_samples_older_than_window() -> None:
    app, clock = App(), ManualClock()
    source = InProcessSignalSource(app.reader)
    source.snapshot(clock.now())
    app.requests([2.0] * 50, status=503)  # a bad minute long ago
    source.snapshot(clock.advance(60))
    app.requests([0.11] * 40)
    source.snapshot(clock.advance(60))
    recent = source.read(FLAG, "latency_p99_ms", 60, clock.now())
    assert recent.value is not None and recent.value <= 110
    assert (recent.n, recent.start, recent.end) == (40, 60.0, 120.0)
    assert source.read(FLAG, "error_rate", 60, clock.now()).value == 0.0
    both = source.read(FLAG, "error_rate", 120, clock.now())
    assert both.value == pytest.approx(50 / 90)
    assert both.n == 90


def test_read_window_longer_than_history_reports_covered_span() -> None:
    app, clock = App(), ManualClock(start=1000.0)
    source = InProcessSignalSource(app.reader)
    source.snapshot(clock.now())
    app.requests([0.1] * 3)
    source.snapshot(clock.advance(30))
    reading = source.read(FLAG, "requests", 600, clock.now())
    assert (reading.value, reading.window_s, reading.start, reading.end) == (3.0, 30.0, 1000, 1030)


def test_read_between_arbitrary_closed_windows_uses_snapshots_at_or_before_edges() -> None:
    app, clock = App(), ManualClock()
    source = InProcessSignalSource(app.reader)
    source.snapshot(clock.now())
    for minute in range(1, 6):  # minute m brings m requests
        app.requests([0.12] * minute)
        source.snapshot(clock.advance(60))
    exact = source.read_between(FLAG, "requests", 60, 180)
    assert (exact.value, exact.start, exact.end, exact.window_s) == (2 + 3, 60, 180, 120)
    ragged = source.read_between(FLAG, "requests", 90, 200)
    assert (ragged.value, ragged.start, ragged.end) == (2 + 3, 60, 180)
    inside = source.read_between(FLAG, "requests", 70, 110)  # one snapshot: no span
    assert (inside.value, inside.n) == (None, 0)
    assert source.read_between(FLAG, "requests", -50, 300).value == 15
    with pytest.raises(ValueError, match="after end"):
        source.read_between(FLAG, "requests", 200, 100)


def test_snapshot_new_provider_mid_stream_counts_from_zero() -> None:
    first, clock = App(), ManualClock()
    reader = SwitchingReader(first.reader)
    source = InProcessSignalSource(reader)
    first.requests([0.12] * 100)
    first.mismatches.add(4, {"feature_flag.key": FLAG})
    source.snapshot(clock.now())
    first.requests([0.12] * 50)
    first.mismatches.add(1, {"feature_flag.key": FLAG})
    source.snapshot(clock.advance(60))
    restarted = App()  # the process restarted: a new provider, counts from zero
    restarted.requests([0.12] * 30)
    restarted.requests([0.5] * 3, status=500)
    restarted.mismatches.add(2, {"feature_flag.key": FLAG})
    reader.reader = restarted.reader
    source.snapshot(clock.advance(60))
    assert source.read(FLAG, "requests", 60, clock.now()).value == 33
    assert source.read(FLAG, "requests", 120, clock.now()).value == 50 + 33
    assert source.read(FLAG, "ledger_mismatches", 120, clock.now()).value == 1 + 2
    rate = source.read(FLAG, "error_rate", 60, clock.now())
    assert rate.value == pytest.approx(3 / 33)
    assert rate.n == 33


def test_snapshot_one_series_resets_while_others_grow_is_not_masked() -> None:
    reader = ScriptedReader(
        [
            _collection([("/a", 1, (60, 40, 0)), ("/b", 1, (10, 0, 0))]),
            # /a dropped to 5 (a reset, same start time); /b grew by 200: the sum still grows
            _collection([("/a", 1, (5, 0, 0)), ("/b", 1, (210, 0, 0))]),
            # /b restarted with a new start time although its count grew
            _collection([("/a", 1, (5, 0, 0)), ("/b", 2, (215, 0, 0))]),
        ]
    )
    source = InProcessSignalSource(reader)
    for t in (0.0, 60.0, 120.0):
        source.snapshot(t)
    assert source.read_between(FLAG, "requests", 0, 60).value == 5 + 200
    assert source.read_between(FLAG, "requests", 60, 120).value == 215


def test_read_cohorts_error_rate_and_latency_are_separated_per_variant_and_flag() -> None:
    app, clock = App(), ManualClock()
    source = InProcessSignalSource(app.reader)
    source.snapshot(clock.now())
    # canary: 990 fast OKs over two routes and methods, 10 server errors, 20 client errors
    app.requests([0.12] * 500, route="/r1")
    app.requests([0.12] * 490, route="/r2", method="HEAD")
    app.requests([0.25] * 10, status=503)
    app.requests([0.12] * 20, status=404)
    app.requests([0.2] * 1000, variant="off")
    app.requests([0.1] * 7, status=500, flag=OTHER)
    source.snapshot(clock.advance(120))
    now = clock.now()

    def value(signal: str, flag: str = FLAG) -> tuple[float | None, int]:
        reading = source.read(flag, signal, 120, now)
        return reading.value, reading.n

    assert value("error_rate") == (10 / 1020, 1020)
    assert value("requests") == (1020, 1020)
    assert value("baseline_error_rate") == (0.0, 1000)
    assert value("baseline_requests") == (1000, 1000)
    p95, _ = value("latency_p95_ms")
    base_p95, _ = value("baseline_latency_p95_ms")
    assert p95 is not None and 115 < p95 <= 120
    assert base_p95 is not None and 195 < base_p95 <= 200
    assert value("error_rate", OTHER) == (1.0, 7)
    assert value("baseline_requests", OTHER) == (0.0, 0)
    assert source.flag_keys() == (FLAG, OTHER)


def test_read_ledger_mismatches_counts_window_per_flag() -> None:
    app, clock = App(), ManualClock()
    source = InProcessSignalSource(app.reader)
    app.mismatches.add(9, {"feature_flag.key": FLAG})
    source.snapshot(clock.now())
    app.mismatches.add(1, {"feature_flag.key": FLAG, "ledger.table": "providers"})
    app.mismatches.add(2, {"feature_flag.key": FLAG, "ledger.table": "users"})
    app.mismatches.add(5, {"feature_flag.key": OTHER})
    source.snapshot(clock.advance(60))
    reading = source.read(FLAG, "ledger_mismatches", 60, clock.now())
    assert (reading.value, reading.n) == (3.0, 3)
    assert source.read(OTHER, "ledger_mismatches", 60, clock.now()).value == 5.0


def test_read_telemetry_acceptance_is_accepted_over_sent_in_window() -> None:
    app, clock = App(), ManualClock()
    source = InProcessSignalSource(app.reader)
    app.sent.add(1000)
    app.accepted.add(10)  # a bad start, outside the window
    source.snapshot(clock.now())
    app.sent.add(200)
    app.accepted.add(198)
    source.snapshot(clock.advance(60))
    reading = source.read(FLAG, "telemetry_acceptance", 60, clock.now())
    assert reading.value == pytest.approx(0.99)
    assert reading.n == 200
    source.snapshot(clock.advance(60))
    quiet = source.read(FLAG, "telemetry_acceptance", 60, clock.now())
    assert (quiet.value, quiet.n) == (None, 0)


def test_read_event_loop_lag_max_and_count_at_least_300ms() -> None:
    app, clock = App(), ManualClock()
    source = InProcessSignalSource(app.reader)
    source.snapshot(clock.now())
    for seconds in (0.004, 0.05, 0.12, 0.2999, 0.31, 0.35):
        app.lag.record(seconds)
    source.snapshot(clock.advance(60))
    now = clock.now()
    lag = source.read(FLAG, "event_loop_lag_ms", 60, now)
    assert (lag.value, lag.n) == (500.0, 6)  # upper bound of (300, 500], the highest non-empty
    twice = source.count_beyond(FLAG, "event_loop_lag_ms", 300, True, 60, now)
    assert (twice.value, twice.n) == (2.0, 6)
    assert source.count_beyond(FLAG, "event_loop_lag_ms", 100, False, 60, now).value == 4
    app.lag.record(3.0)  # beyond the highest bound: reported as that bound
    source.snapshot(clock.advance(60))
    assert source.read(FLAG, "event_loop_lag_ms", 60, clock.now()).value == 1000.0


def test_read_delta_temporality_reader_gives_same_signals() -> None:
    delta: dict[type, AggregationTemporality] = {
        HistogramInstrument: AggregationTemporality.DELTA,
        Counter: AggregationTemporality.DELTA,
    }
    app, clock = App(reader=InMemoryMetricReader(preferred_temporality=delta)), ManualClock()
    source = InProcessSignalSource(app.reader)
    app.requests([0.5] * 10)
    source.snapshot(clock.now())
    app.requests([0.12] * 19)
    app.requests([0.13] * 1, status=502)
    app.mismatches.add(2, {"feature_flag.key": FLAG})
    source.snapshot(clock.advance(60))
    source.snapshot(clock.advance(60))
    assert source.read(FLAG, "error_rate", 120, clock.now()).value == pytest.approx(0.05)
    # rank 10 of 20 falls in (115, 120], which holds 19 samples
    p50 = source.read(FLAG, "latency_p50_ms", 120, clock.now()).value
    assert p50 == pytest.approx(115 + 5 * 10 / 19)
    assert source.read(FLAG, "ledger_mismatches", 120, clock.now()).value == 2


def test_read_exponential_histogram_reports_error_naming_the_fix() -> None:
    app = App(request_aggregation=ExponentialBucketHistogramAggregation())
    clock = ManualClock()
    source = InProcessSignalSource(app.reader)
    source.snapshot(clock.now())
    app.requests([0.12] * 10)
    app.mismatches.add(1, {"feature_flag.key": FLAG})
    source.snapshot(clock.advance(60))
    reading = source.read(FLAG, "latency_p95_ms", 60, clock.now())
    assert reading.value is None
    assert reading.error is not None and "ExplicitBucketHistogramAggregation" in reading.error
    assert source.read(FLAG, "ledger_mismatches", 60, clock.now()).value == 1  # others still work


def test_retention_drops_old_snapshots_but_keeps_window_anchor() -> None:
    app, clock = App(), ManualClock()
    source = InProcessSignalSource(app.reader, retention_s=120)
    for _ in range(10):
        app.requests([0.12])
        source.snapshot(clock.advance(60))
    reading = source.read(FLAG, "requests", 120, clock.now())
    assert (reading.value, reading.window_s, reading.error) == (2.0, 120.0, None)
    # Longer than what is kept: the span kept is reported, but no value over it.
    longer = source.read(FLAG, "requests", 3600, clock.now())
    assert (longer.value, longer.window_s) == (None, 120.0)
    assert longer.error is not None and "not enough data" in longer.error
    capped = InProcessSignalSource(App().reader, max_snapshots=3)
    for t in range(10):
        capped.snapshot(float(t))
    assert capped.read(FLAG, "requests", 100, 9.0).window_s == 2.0


def test_snapshot_reader_failure_raises_and_marks_readings_until_recovery() -> None:
    app, clock = App(), ManualClock()
    reader = FlakyReader(app.reader)
    source = InProcessSignalSource(reader)
    source.snapshot(clock.now())
    app.requests([0.12] * 10)
    source.snapshot(clock.advance(60))
    reader.failing = True
    with pytest.raises(SignalSourceError, match="collector is gone") as info:
        source.snapshot(clock.advance(60))
    assert isinstance(info.value.__cause__, RuntimeError)
    now = clock.now()
    # the stale history must not look like a quiet minute: every current reading has the error
    stale = source.read(FLAG, "requests", 120, now)
    assert stale.value is None and stale.error is not None and "collector is gone" in stale.error
    lag = source.count_beyond(FLAG, "event_loop_lag_ms", 300, True, 60, now)
    assert lag.error is not None
    # a window that closed before the failure can still be judged
    assert source.read_between(FLAG, "requests", 0, 60).value == 10
    assert source.read_between(FLAG, "requests", 0, now).error is not None
    reader.failing = False
    source.snapshot(clock.advance(60))
    recovered = source.read(FLAG, "requests", 180, clock.now())
    assert (recovered.value, recovered.error) == (10, None)


def test_snapshot_time_going_backwards_raises_value_error() -> None:
    source = InProcessSignalSource(App().reader)
    source.snapshot(10.0)
    with pytest.raises(ValueError, match="before the newest"):
        source.snapshot(9.0)


def test_read_unknown_signal_raises_value_error_naming_it() -> None:
    source = InProcessSignalSource(App().reader)
    with pytest.raises(ValueError, match="'latency_p95'"):
        source.read(FLAG, "latency_p95", 60, 0.0)
    with pytest.raises(ValueError, match="'error_rate'"):
        source.count_beyond(FLAG, "error_rate", 0.1, True, 60, 0.0)
    with pytest.raises(ValueError, match="window_s"):
        source.read(FLAG, "requests", 0, 0.0)


# -- retention from the plan, stored instruments, not enough data ------------------------


def _plan(*, trigger_for: str = "3m", trigger_window: str = "4m", tick: str = "10s") -> RolloutPlan:
    """A plan whose longest window is stage 2's 5 min gate window (unless the triggers say)."""
    return parse_plan(
        {
            "flags": {
                FLAG: {
                    "tick": tick,
                    "stages": [
                        {"percent": 5, "duration": "10m", "window": "1m"},
                        {"percent": 50, "duration": "30m", "window": "5m"},
                    ],
                    "triggers": [
                        {
                            "name": "p95",
                            "signal": "latency_p95_ms",
                            "above": 150,
                            "for": trigger_for,
                        },
                        {
                            "name": "lag",
                            "signal": "event_loop_lag_ms",
                            "at_least": 300,
                            "occurrences": 2,
                            "window": trigger_window,
                        },
                    ],
                }
            }
        }
    )


def test_retention_for_plan_longest_window_of_stages_and_triggers_plus_two_ticks() -> None:
    assert retention_for_plan(_plan()) == 300 + 2 * 10  # stage 2's gate window
    assert retention_for_plan(_plan(trigger_for="6m")) == 360 + 20  # a trigger's for
    assert retention_for_plan(_plan(trigger_window="8m", tick="30s")) == 480 + 60
    assert retention_for_plan(_plan(), margin_ticks=0) == 300
    # the reference plan: stage 4's 15 min gate window, ticks of 10 s
    assert retention_for_plan(load_plan(EXAMPLE_PLAN)) == 900 + 20


def test_source_plan_given_retention_from_plan_else_default() -> None:
    reader = App().reader
    assert InProcessSignalSource(reader).retention_s == DEFAULT_RETENTION_S == 7200
    assert InProcessSignalSource(reader, plan=_plan()).retention_s == 320
    assert InProcessSignalSource(reader, plan=_plan(), retention_s=900).retention_s == 900
    with pytest.raises(ValueError, match="shorter than the 320 s"):
        InProcessSignalSource(reader, plan=_plan(), retention_s=300)


def test_ring_span_long_run_bounded_by_plan_longest_window_plus_margin() -> None:
    app, clock = App(), ManualClock()
    source = InProcessSignalSource(app.reader, plan=_plan())  # keeps 320 s
    source.snapshot(clock.now())
    spans = []
    for tick in range(1, 6 * 360 + 1):  # 6 hours of 10 s ticks
        app.request(0.12)
        source.snapshot(clock.advance(10))
        spans.append(source.history_s)
        if tick % 360 == 0:  # every hour: the longest window is still whole and exact
            longest = source.read(FLAG, "requests", 300, clock.now())
            assert (longest.value, longest.window_s, longest.error) == (30.0, 300.0, None)
    assert max(spans) <= 320 + 10  # the window's anchor is at most one tick older
    assert spans[-1] == spans[len(spans) // 6] == 320.0  # the same after 1 h and after 6 h


def test_ring_irregular_snapshots_keep_anchor_of_every_plan_window() -> None:
    app = App()
    source = InProcessSignalSource(app.reader, plan=_plan())
    rng = random.Random(7)
    t, times = 0.0, []
    for _ in range(400):
        t += rng.choice((0.5, 3.0, 10.0, 17.0))
        app.request(0.12)
        source.snapshot(t)
        times.append(t)
    # Every read the plan makes (windows up to 300 s) finds its anchor, a tick late included.
    for window in (60.0, 180.0, 240.0, 300.0, 310.0):
        reading = source.read(FLAG, "requests", window, t)
        anchor = max(x for x in times if x <= t - window)
        assert reading.error is None
        assert (reading.start, reading.value) == (anchor, float(sum(x > anchor for x in times)))


def test_snapshot_instruments_the_signals_do_not_read_are_not_stored() -> None:
    app, clock = App(), ManualClock()
    controller = app.provider.get_meter("openfeature_canary.controller")
    flags = [f"gauge-only-{i}" for i in range(100)]

    def per_flag(_options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(5, {"feature_flag.key": f}) for f in flags]

    for name in ("canary.rollout.percent", "canary.rollout.stage", "canary.trigger.value"):
        controller.create_observable_gauge(name, [per_flag])
    hook = app.provider.get_meter("openfeature.contrib.hook.canary")
    evaluations = hook.create_counter("feature_flag.evaluation_requests_total")
    durations = hook.create_histogram("feature_flag.evaluation.duration", unit="s")
    other = app.provider.get_meter("the-app").create_counter("app.orders")
    source = InProcessSignalSource(app.reader)
    for _ in range(3):
        for f in flags:
            evaluations.add(1, {"feature_flag.key": f})
            durations.record(0.001, {"feature_flag.key": f, "feature_flag.result.variant": "on"})
        other.add(1, {"feature_flag.key": "orders"})
        app.duration.record(0.2, {"http.route": "/health"})  # no canary flag decided it
        app.request(0.12)
        app.mismatches.add(1, {"feature_flag.key": FLAG})
        app.sent.add(2)
        app.accepted.add(2)
        app.lag.record(0.02)
        source.snapshot(clock.advance(10))
    snap = source._ring[-1]  # what is stored: only spec §6 instruments, only canary cohorts
    assert set(snap.requests) == {(FLAG, "on")}
    assert set(snap.counters) == {
        ("canary.ledger.mismatches", FLAG),
        ("canary.telemetry.sent", ""),
        ("canary.telemetry.accepted", ""),
    }
    assert len(snap.lag) == 1 and not snap.problems
    assert source.flag_keys() == (FLAG,)
    assert source.read(FLAG, "requests", 20, clock.now()).value == 2


def test_snapshot_unchanged_cohort_shared_and_reads_true_zero() -> None:
    app, clock = App(), ManualClock()
    source = InProcessSignalSource(app.reader)
    app.request(0.12)
    app.request(0.3, flag=OTHER)
    source.snapshot(clock.now())
    app.request(0.12)  # only FLAG's canary cohort moves
    source.snapshot(clock.advance(10))
    old, new = source._ring[0], source._ring[1]
    assert new.requests[(OTHER, "on")] is old.requests[(OTHER, "on")]
    assert new.requests[(FLAG, "on")] is not old.requests[(FLAG, "on")]
    assert new.lag is old.lag and new.counters is old.counters
    idle = source.read(OTHER, "requests", 10, clock.now())
    assert (idle.value, idle.n, idle.error) == (0.0, 0, None)
    assert source.read(OTHER, "latency_p95_ms", 10, clock.now()).value is None
    assert source.read(FLAG, "requests", 10, clock.now()).value == 1


def test_read_window_starting_before_retained_snapshots_reports_not_enough_data() -> None:
    app, clock = App(), ManualClock()
    source = InProcessSignalSource(app.reader, plan=_plan())  # keeps 320 s
    source.snapshot(clock.now())
    for _ in range(120):  # 20 minutes: the first 16 are dropped
        app.request(0.12)
        app.lag.record(0.4)
        source.snapshot(clock.advance(10))
    now = clock.now()
    readings = [
        source.read(FLAG, "requests", 600, now),
        source.read(FLAG, "latency_p95_ms", 600, now),
        source.read(FLAG, "ledger_mismatches", 600, now),
        source.count_beyond(FLAG, "event_loop_lag_ms", 300, True, 600, now),
        source.read_between(FLAG, "requests", now - 600, now),
        source.read_between(FLAG, "error_rate", 0, 60),  # wholly before what is kept
    ]
    for reading in readings:
        assert (reading.value, reading.n) == (None, 0), reading
        assert reading.error is not None and "not enough data" in reading.error, reading
    kept = source.read(FLAG, "requests", 320, now)
    assert (kept.value, kept.window_s, kept.error) == (32.0, 320.0, None)
    lag = source.count_beyond(FLAG, "event_loop_lag_ms", 300, True, 300, now)
    assert (lag.value, lag.n) == (30.0, 30)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_read_random_traffic_long_run_every_window_equals_ground_truth(seed: int) -> None:
    rng = random.Random(seed)
    app, clock = App(), ManualClock()
    source = InProcessSignalSource(app.reader, plan=_plan())
    bounds_ms = tuple(round(b * 1000, 9) for b in REQUEST_BOUNDS)
    # per tick, per (flag, variant): (bucket counts, requests, 5xx)
    truth: list[dict[tuple[str, str], tuple[list[int], int, int]]] = []
    source.snapshot(clock.now())
    for _ in range(150):
        tick: dict[tuple[str, str], tuple[list[int], int, int]] = {}
        for cohort in ((FLAG, "on"), (FLAG, "off"), (OTHER, "on")):
            counts, n, errors = [0] * (len(bounds_ms) + 1), 0, 0
            if rng.random() < 0.6:  # cohorts go idle now and then
                for _ in range(rng.randint(1, 8)):
                    seconds = rng.choice((0.0123, 0.1234, 0.1467, 0.1523, 0.2871, 0.61, 3.0))
                    status = rng.choice((200, 200, 200, 404, 503))
                    app.request(seconds, flag=cohort[0], variant=cohort[1], status=status)
                    counts[bisect_left(REQUEST_BOUNDS, seconds)] += 1
                    n += 1
                    errors += status == 503
            tick[cohort] = (counts, n, errors)
        truth.append(tick)
        source.snapshot(clock.advance(10))
    now = clock.now()
    for window in (10, 60, 120, 240, 300, 320):
        ticks = truth[-window // 10 :]
        for cohort in ((FLAG, "on"), (FLAG, "off"), (OTHER, "on")):
            prefix = "" if cohort[1] == "on" else "baseline_"
            counts = [sum(t[cohort][0][i] for t in ticks) for i in range(len(bounds_ms) + 1)]
            n = sum(t[cohort][1] for t in ticks)
            errors = sum(t[cohort][2] for t in ticks)
            requests = source.read(cohort[0], f"{prefix}requests", window, now)
            assert (requests.value, requests.n) == (n, n)
            rate = source.read(cohort[0], f"{prefix}error_rate", window, now)
            assert rate.value == (errors / n if n else None)
            p95 = source.read(cohort[0], f"{prefix}latency_p95_ms", window, now)
            assert p95.value == (histogram_quantile(0.95, bounds_ms, counts) if n else None)


def test_read_bucket_layout_changed_inside_window_reports_error_counts_still_add_up() -> None:
    reader = ScriptedReader(
        [
            _collection([("/a", 1, (1, 1, 0))]),
            _collection([("/a", 1, (3, 1, 0))]),
            # the View changed: a new stream with a new layout (and a new start time)
            _collection([("/a", 2, (5, 0, 0, 0))], bounds=(0.1, 0.15, 0.2)),
        ]
    )
    source = InProcessSignalSource(reader)
    for t in (0.0, 60.0, 120.0):
        source.snapshot(t)
    assert source.read_between(FLAG, "requests", 0, 120).value == 2 + 5
    mixed = source.read_between(FLAG, "latency_p95_ms", 0, 120)
    assert mixed.value is None and mixed.error is not None and "bounds changed" in mixed.error
    after = source.read_between(FLAG, "latency_p95_ms", 60, 120)
    assert after.error is None and after.value == pytest.approx(95.0)


def test_counts_between_gives_both_cohorts_buckets_and_errors() -> None:
    app = App()
    source = InProcessSignalSource(app.reader)
    source.snapshot(0.0)
    app.requests([0.05, 0.12, 0.2], variant="on")
    app.request(0.3, variant="on", status=503)
    app.requests([0.05, 0.05], variant="off")
    source.snapshot(10.0)
    reading = source.counts_between(FLAG, 0.0, 10.0)
    assert reading.error is None and (reading.start, reading.end) == (0.0, 10.0)
    assert (reading.canary.n, reading.canary.errors) == (4, 1)
    assert (reading.baseline.n, reading.baseline.errors) == (2, 0)
    assert sum(reading.canary.counts) == 4
    assert len(reading.canary.counts) == len(reading.canary.bounds) + 1
    # Bounds are milliseconds; 300 ms lands above the 250 ms bound.
    above_250 = sum(
        c
        for b, c in zip((*reading.canary.bounds, math.inf), reading.canary.counts, strict=True)
        if b > 250
    )
    assert above_250 == 1


def test_counts_between_start_before_history_uses_oldest_snapshot_never_twice() -> None:
    app = App()
    source = InProcessSignalSource(app.reader)
    app.requests([0.05] * 5, variant="on")  # before the first snapshot: the source's baseline
    source.snapshot(100.0)
    app.requests([0.05] * 2, variant="on")
    source.snapshot(110.0)
    reading = source.counts_between(FLAG, 50.0, 110.0)
    assert reading.start == 100.0 and reading.canary.n == 2


def test_counts_between_failed_snapshot_reads_as_error() -> None:
    app = App()
    flaky = FlakyReader(app.reader)
    source = InProcessSignalSource(flaky)
    source.snapshot(0.0)
    flaky.failing = True
    with pytest.raises(SignalSourceError):
        source.snapshot(10.0)
    reading = source.counts_between(FLAG, 0.0, 10.0)
    assert reading.error and reading.canary.n == 0
