"""MetricsHook's pre-aggregated durations reach the exposition exactly: what the per-thread
buckets hand the SDK at collection equals what ``Histogram.record`` per evaluation gives, per
attribute set and bucket, for cumulative and delta readers and a Prometheus scrape; across many
threads, ended threads, collections during heavy recording, and a fork."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import traceback
import warnings
from bisect import bisect_left
from typing import Any

import pytest
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.contrib.hook.canary import MetricsHook
from openfeature.contrib.hook.canary._constants import DURATION, DURATION_BOUNDS_S
from openfeature.contrib.hook.canary._sdk_histogram import SdkHistogramSink
from openfeature.contrib.hook.canary._shards import DurationTotal
from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    MeterProvider,
    ObservableCounter,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    HistogramDataPoint,
    InMemoryMetricReader,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from otel_points import points
from prometheus_client import CollectorRegistry, generate_latest

REQUESTS = "feature_flag.evaluation_requests_total"
Key = tuple[tuple[str, Any], ...]

# Durations on, below, between and above the bounds (5 µs is a bound: bucket 0 holds it).
DURATIONS = [0.000001, 0.000005, 0.0000051, 0.00003, 0.0013, 0.0013, 0.5, 1.0, 2.0, 7.5]
ATTRS: list[dict[str, Any]] = [
    {"feature_flag.key": "a"},
    {"feature_flag.key": "b", "error.type": "flag_not_found"},
]


def _delta_reader() -> InMemoryMetricReader:
    kinds = (Counter, Histogram, ObservableCounter, ObservableUpDownCounter, UpDownCounter)
    return InMemoryMetricReader(
        preferred_temporality=dict.fromkeys(kinds, AggregationTemporality.DELTA)
    )


class _Setup:
    """A meter provider with a cumulative, a delta and a Prometheus reader."""

    def __init__(self) -> None:
        self.cumulative = InMemoryMetricReader()
        self.delta = _delta_reader()
        self.registry = CollectorRegistry()
        self.mp = MeterProvider(
            metric_readers=[
                self.cumulative,
                self.delta,
                PrometheusMetricReader(registry=self.registry),
            ]
        )
        meter = self.mp.get_meter("openfeature.contrib.hook.canary")
        self.histogram = meter.create_histogram(
            DURATION, unit="s", explicit_bucket_boundaries_advisory=DURATION_BOUNDS_S
        )


def _histograms(reader: InMemoryMetricReader) -> dict[Key, HistogramDataPoint]:
    return {
        tuple(sorted(a.items())): p
        for a, p in points(reader, DURATION)
        if isinstance(p, HistogramDataPoint)
    }


def _same(
    got: dict[Key, HistogramDataPoint], want: dict[Key, HistogramDataPoint], delta: bool = False
) -> None:
    """Equal points; a delta reader's min and max are the all-time ones (they bound the
    interval's: the sink has cumulative totals only, and Prometheus exports neither)."""
    assert got.keys() == want.keys()
    for key, p in want.items():
        q = got[key]
        assert (q.count, q.bucket_counts, q.explicit_bounds) == (
            p.count,
            p.bucket_counts,
            p.explicit_bounds,
        ), key
        if delta:
            assert q.min <= p.min and q.max >= p.max, key
        else:
            assert (q.min, q.max) == (p.min, p.max), key
        assert q.sum == pytest.approx(p.sum, rel=1e-12), key


def test_sink_adds_exactly_what_record_would_per_attribute_set_bucket_and_reader() -> None:
    recorded, added = _Setup(), _Setup()
    sink = SdkHistogramSink.attach(added.mp, added.histogram, DURATION_BOUNDS_S)
    assert sink is not None
    totals = {tuple(a.items()): DurationTotal(a) for a in ATTRS}
    cumulative: dict[Key, DurationTotal] = {}  # what a hook's shards would hold by now
    for rnd in range(3):  # three collections, new durations before each
        for i, d in enumerate(DURATIONS[rnd:]):
            attrs = ATTRS[i % 2]
            recorded.histogram.record(d, attrs)
            t = totals[tuple(attrs.items())]
            t.buckets[bisect_left(DURATION_BOUNDS_S, d)] += 1
            t.sum += d
            t.min, t.max = min(t.min, d), max(t.max, d)
        # The totals are cumulative: hand fresh copies, as a collection reads them.
        for key, t in totals.items():
            cumulative[key] = copy = DurationTotal(t.attributes)
            copy.add_total(t)
        sink.add(cumulative.values())
        sink.add(cumulative.values())  # nothing new: adds nothing
        _same(_histograms(added.cumulative), _histograms(recorded.cumulative))
        _same(_histograms(added.delta), _histograms(recorded.delta), delta=True)
        got, want = _scrape(added.registry), _scrape(recorded.registry)
        assert got.keys() == want.keys()
        for sample, v in want.items():  # a float sum is added in another order: approx
            assert got[sample] == (pytest.approx(v, rel=1e-12) if "_sum" in sample else v)


def _scrape(registry: CollectorRegistry) -> dict[str, float]:
    """The Prometheus exposition, sample by sample: {name and labels: value}."""
    text = generate_latest(registry).decode()
    lines = [ln.rsplit(" ", 1) for ln in text.splitlines() if not ln.startswith("#")]
    return {name: float(v) for name, v in lines if not name.startswith("target_info")}


def test_sink_older_totals_after_newer_ones_add_nothing() -> None:
    s = _Setup()
    sink = SdkHistogramSink.attach(s.mp, s.histogram, DURATION_BOUNDS_S)
    assert sink is not None
    old, new = DurationTotal(ATTRS[0]), DurationTotal(ATTRS[0])
    old.buckets[1], old.sum, old.min, old.max = 1, 0.000007, 0.000007, 0.000007
    new.add_total(old)
    new.buckets[3] += 2
    new.sum += 0.0001
    new.max = 0.00005
    sink.add([new])
    sink.add([old])
    (p,) = _histograms(s.cumulative).values()
    assert (p.count, p.bucket_counts[:4]) == (3, (0, 1, 0, 2))


def test_sink_not_attached_for_no_sdk_or_a_view_with_other_buckets() -> None:
    assert SdkHistogramSink.attach(NoOpMeterProvider(), _Setup().histogram, (1.0,)) is None
    mp = MeterProvider(
        metric_readers=[InMemoryMetricReader()],
        views=[View(instrument_name=DURATION, aggregation=ExplicitBucketHistogramAggregation())],
    )
    histogram = mp.get_meter("m").create_histogram(DURATION)
    assert SdkHistogramSink.attach(mp, histogram, DURATION_BOUNDS_S) is None


def test_metrics_hook_with_a_view_of_other_buckets_records_each_duration_itself() -> None:
    reader = InMemoryMetricReader()
    bounds = (0.5, 1.0)
    mp = MeterProvider(
        metric_readers=[reader],
        views=[
            View(
                instrument_name=DURATION,
                aggregation=ExplicitBucketHistogramAggregation(boundaries=bounds),
            )
        ],
    )
    client = _client(MetricsHook(mp))
    for _ in range(5):
        client.get_boolean_value("f", False)
    ((_, p),) = points(reader, DURATION)
    assert (p.count, p.explicit_bounds, p.bucket_counts) == (5, bounds, (5, 0, 0))


def _client(hook: MetricsHook) -> OpenFeatureClient:
    api.set_provider_and_wait(InMemoryProvider({"f": InMemoryFlag("on", {"on": True})}))
    client = api.get_client()
    client.add_hooks([hook])
    return client


def _evaluate(client: OpenFeatureClient, n: int) -> None:
    for i in range(n):
        if i % 10 == 0:
            client.get_boolean_value("missing", False)  # an error: its own attribute set
        else:
            client.get_boolean_value("f", False)


def _counts(reader: InMemoryMetricReader) -> tuple[dict[Key, float], dict[Key, float]]:
    """One collection of each: requests per flag, and duration counts per flag and error."""
    data = reader.get_metrics_data()
    requests: dict[Key, float] = {}
    durations: dict[Key, float] = {}
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                for p in m.data.data_points:
                    key = tuple(sorted((p.attributes or {}).items()))
                    if m.name == REQUESTS:
                        requests[key] = p.value
                    elif m.name == DURATION:
                        assert p.count == sum(p.bucket_counts)
                        durations[key] = p.count
    return requests, durations


def _expected(evaluations: int) -> tuple[float, float]:
    errors = (evaluations + 9) // 10 if evaluations else 0
    return evaluations - errors, errors


def test_metrics_hook_many_threads_and_ended_ones_exact_per_attribute_set() -> None:
    reader = InMemoryMetricReader()
    client = _client(MetricsHook(MeterProvider(metric_readers=[reader])))
    go, stop = threading.Event(), threading.Event()

    def live() -> None:  # still alive at collection, with its shard
        _evaluate(client, 200)
        go.set()
        stop.wait(10)

    ended = [threading.Thread(target=_evaluate, args=(client, 200)) for _ in range(8)]
    alive = threading.Thread(target=live)
    for t in [*ended, alive]:
        t.start()
    for t in ended:
        t.join()
    try:
        assert go.wait(10)
        ok, errors = _expected(200)
        requests, durations = _counts(reader)
        assert durations == {
            (("feature_flag.key", "f"),): 9 * ok,
            (("error.type", "flag_not_found"), ("feature_flag.key", "missing")): 9 * errors,
        }
        assert sum(requests.values()) == 9 * 200
    finally:
        stop.set()
        alive.join(5)


def test_metrics_hook_collections_during_heavy_recording_lose_nothing() -> None:
    cumulative, delta = InMemoryMetricReader(), _delta_reader()
    client = _client(MetricsHook(MeterProvider(metric_readers=[cumulative, delta])))
    workers = [threading.Thread(target=_evaluate, args=(client, 1500)) for _ in range(4)]
    for t in workers:
        t.start()
    seen: list[float] = []
    delta_total = 0
    while any(t.is_alive() for t in workers) or len(seen) < 3:
        seen.append(sum(_counts(cumulative)[1].values()))
        delta_total += sum(p.count for _, p in points(delta, DURATION))
    for t in workers:
        t.join()
    seen.append(sum(_counts(cumulative)[1].values()))
    delta_total += sum(p.count for _, p in points(delta, DURATION))
    assert seen == sorted(seen)  # cumulative: never back
    assert seen[-1] == delta_total == 4 * 1500  # every duration once, in each reader


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_metrics_hook_forked_child_exports_every_ended_duration_exactly() -> None:
    reader = InMemoryMetricReader()
    client = _client(MetricsHook(MeterProvider(metric_readers=[reader])))
    _evaluate(client, 50)
    _counts(reader)  # some durations already added before the fork, some not
    idle, stop = threading.Event(), threading.Event()

    def live_idle() -> None:
        _evaluate(client, 30)
        idle.set()
        stop.wait(10)

    threads = [threading.Thread(target=_evaluate, args=(client, 40)) for _ in range(3)]
    threads.append(threading.Thread(target=live_idle))
    for t in threads:
        t.start()
    for t in threads[:3]:
        t.join()
    try:
        assert idle.wait(5)
        read_end, write_end = os.pipe()
        with warnings.catch_warnings():  # "multi-threaded process" (3.12+): on purpose
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: only this thread exists
            report = "the child crashed"
            try:
                os.close(read_end)
                _evaluate(client, 10)
                requests, durations = _counts(reader)
                report = json.dumps([sum(requests.values()), sum(durations.values())])
            except BaseException:
                report = traceback.format_exc()
            finally:
                os.write(write_end, report.encode())
                os._exit(0)
        os.close(write_end)
        deadline = time.monotonic() + 15
        while not os.waitpid(pid, os.WNOHANG)[0]:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssertionError("the forked child hung")
            time.sleep(0.02)
        with os.fdopen(read_end) as child:
            report = child.read()
        total = 50 + 3 * 40 + 30 + 10
        assert json.loads(report) == [total, total], report
    finally:
        stop.set()
        threads[3].join(5)
    requests, durations = _counts(reader)  # the parent: all but the child's
    assert sum(requests.values()) == sum(durations.values()) == total - 10


def test_metrics_hook_evaluations_hand_nothing_to_the_sdk_until_a_collection() -> None:
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader])
    client = _client(MetricsHook(mp))
    storage = mp._measurement_consumer._reader_storages[reader]  # what record() would fill

    def recorded() -> int:
        matches = storage._instrument_view_instrument_matches.items()
        return sum(len(m._attributes_aggregation) for i, ms in matches for m in ms)

    _evaluate(client, 100)
    assert recorded() == 0  # no SDK aggregation (nor its lock) touched per evaluation
    requests, durations = _counts(reader)
    assert sum(requests.values()) == sum(durations.values()) == 100
