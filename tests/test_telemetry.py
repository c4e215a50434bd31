"""setup_telemetry: the MeterProvider, the in-process reader, /metrics on 127.0.0.1 on its own
registry, and histogram bounds in seconds holding every plan threshold."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from otel_points import points
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from openfeature_canary import RolloutPlan, load_plan, parse_plan
from openfeature_canary.instrumentation import record_request
from openfeature_canary.telemetry import (
    Telemetry,
    canary_views,
    histogram_bounds_s,
    setup_telemetry,
)

FLAG = "dataservice-read-canary"


@pytest.fixture
def plan(example_plan_path: Path) -> RolloutPlan:
    return load_plan(example_plan_path)


@pytest.fixture
def started() -> Iterator[list[Telemetry]]:
    """Telemetry objects to shut down after the test."""
    objects: list[Telemetry] = []
    yield objects
    for t in objects:
        t.shutdown()


def _histogram_points(reader: InMemoryMetricReader, name: str) -> list[HistogramDataPoint]:
    return [p for _, p in points(reader, name)]


def test_histogram_bounds_s_holds_every_plan_threshold_in_seconds(plan: RolloutPlan) -> None:
    bounds = histogram_bounds_s(plan)

    assert plan.thresholds_ms() == (120, 130, 140, 150, 300)
    for ms in plan.thresholds_ms():
        assert ms / 1000 in bounds
    assert list(bounds) == sorted(set(bounds))  # strictly increasing
    dense = [b for b in bounds if 0.1 <= b <= 0.3]
    assert len(dense) >= 20  # at least every 10 ms between 100 and 300 ms


def test_histogram_bounds_s_odd_threshold_is_added() -> None:
    odd = parse_plan(
        {
            "flags": {
                "f": {
                    "stages": [{"percent": 5, "duration": "1m", "max_p95_ms": 137.5}],
                    "triggers": [{"name": "t", "signal": "latency_p99_ms", "above": 4200}],
                }
            }
        }
    )
    bounds = histogram_bounds_s(odd)
    assert 0.1375 in bounds and 4.2 in bounds
    assert 0.1375 not in histogram_bounds_s(None)


def test_setup_telemetry_request_histogram_uses_plan_bounds_not_exponential(
    plan: RolloutPlan, started: list[Telemetry]
) -> None:
    t = setup_telemetry(plan)
    started.append(t)
    record_request(FLAG, "on", 0.151, 200, meter_provider=t.meter_provider)

    (point,) = _histogram_points(t.reader, "http.server.request.duration")
    assert isinstance(point, HistogramDataPoint)
    assert tuple(point.explicit_bounds) == t.bounds_s == histogram_bounds_s(plan)
    # 151 ms lands just above the 150 ms bound: "P95 > 150 ms" is decided on a boundary.
    i = t.bounds_s.index(0.15)
    assert point.bucket_counts[i + 1] == 1
    assert t.metrics_url is None


def test_setup_telemetry_event_loop_lag_uses_plan_bounds(
    plan: RolloutPlan, started: list[Telemetry]
) -> None:
    t = setup_telemetry(plan)
    started.append(t)
    # The View matches the instrument by name, whoever creates it.
    lag = t.meter_provider.get_meter("any").create_histogram("canary.event_loop.lag", unit="s")
    lag.record(0.31)

    (point,) = _histogram_points(t.reader, "canary.event_loop.lag")
    assert tuple(point.explicit_bounds) == t.bounds_s
    assert 0.3 in point.explicit_bounds


def test_setup_telemetry_prometheus_port_zero_serves_metrics_on_loopback(
    plan: RolloutPlan, started: list[Telemetry]
) -> None:
    t = setup_telemetry(plan, prometheus_port=0, resource=Resource.create({"service.name": "a6"}))
    started.append(t)
    record_request(FLAG, "on", 0.151, 200, meter_provider=t.meter_provider)

    assert t.metrics_url is not None and t.metrics_url.startswith("http://127.0.0.1:")
    assert not t.metrics_url.endswith(":0/metrics")
    text = httpx.get(t.metrics_url, timeout=5).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    duration = families["http_server_request_duration_seconds"]
    assert duration.type == "histogram"
    buckets = {
        s.labels["le"]: s.value
        for s in duration.samples
        if s.name.endswith("_bucket") and s.labels["feature_flag_result_variant"] == "on"
    }
    assert buckets["0.15"] == 0 and buckets["0.16"] == 1 and buckets["+Inf"] == 1
    assert 'service_name="a6"' in text


def test_setup_telemetry_two_setups_use_own_registries_not_global(
    plan: RolloutPlan, started: list[Telemetry]
) -> None:
    before = {m.name for m in REGISTRY.collect()}  # the global registry is left alone
    a = setup_telemetry(plan, prometheus_port=0)
    b = setup_telemetry(plan, prometheus_port=0)
    started += [a, b]
    record_request(FLAG, "on", 0.05, 200, meter_provider=a.meter_provider)

    assert {m.name for m in REGISTRY.collect()} == before
    assert a.registry is not None and a.registry is not b.registry
    assert a.metrics_url and b.metrics_url and a.metrics_url != b.metrics_url
    assert "http_server_request_duration" in httpx.get(a.metrics_url, timeout=5).text
    assert "http_server_request_duration" not in httpx.get(b.metrics_url, timeout=5).text


def test_setup_telemetry_shutdown_stops_server_and_is_idempotent(plan: RolloutPlan) -> None:
    t = setup_telemetry(plan, prometheus_port=0)
    assert t.metrics_url is not None
    assert httpx.get(t.metrics_url, timeout=5).status_code == 200

    t.shutdown()
    t.shutdown()

    with pytest.raises(httpx.ConnectError):
        httpx.get(t.metrics_url, timeout=2)


def test_setup_telemetry_busy_port_raises_oserror(
    plan: RolloutPlan, started: list[Telemetry]
) -> None:
    first = setup_telemetry(plan, prometheus_port=0)
    started.append(first)
    assert first.metrics_url is not None
    port = int(first.metrics_url.rsplit(":", 1)[1].split("/")[0])

    with pytest.raises(OSError):
        setup_telemetry(plan, prometheus_port=port)


def test_setup_telemetry_extra_reader_receives_the_same_metrics(
    plan: RolloutPlan, started: list[Telemetry]
) -> None:
    extra = InMemoryMetricReader()
    t = setup_telemetry(plan, extra_readers=[extra])
    started.append(t)
    record_request(FLAG, "off", 0.02, 200, meter_provider=t.meter_provider)

    assert [p.count for p in _histogram_points(extra, "http.server.request.duration")] == [1]


def test_canary_views_on_own_meter_provider_give_the_same_bounds(plan: RolloutPlan) -> None:
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader], views=canary_views(plan))
    record_request(FLAG, "on", 0.1, 200, meter_provider=mp)

    (point,) = _histogram_points(reader, "http.server.request.duration")
    assert tuple(point.explicit_bounds) == histogram_bounds_s(plan)
    mp.shutdown()
