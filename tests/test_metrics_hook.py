"""MetricsHook through a real OpenFeature client, a real OpenTelemetry SDK and a real
Prometheus scrape on 127.0.0.1 (spec §9): exact counts, labels, errors, any provider."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.contrib.hook.canary import MetricsHook
from openfeature.contrib.hook.canary import __all__ as hook_exports
from openfeature.contrib.hook.canary._constants import DURATION_BOUNDS_S
from openfeature.contrib.provider.canary import CanaryProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode, ProviderFatalError
from openfeature.flag_evaluation import FlagResolutionDetails
from openfeature.provider import AbstractProvider, Metadata
from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from otel_points import points
from prometheus_client.parser import text_string_to_metric_families

from openfeature_canary import load_plan
from openfeature_canary.bucketing import in_rollout
from openfeature_canary.instrumentation import current_variant, variant_scope
from openfeature_canary.telemetry import Telemetry, setup_telemetry

FLAG = "dataservice-read-canary"
PROVIDER = "CanaryProvider"


def value(reader: InMemoryMetricReader, name: str, **attrs: Any) -> float:
    """The value (or histogram count) of the point of ``name`` with exactly ``attrs``."""
    want = {k.replace("__", "."): v for k, v in attrs.items()}
    matches = [p for a, p in points(reader, name) if a == want]
    assert len(matches) == 1, f"{name} {want}: {[a for a, _ in points(reader, name)]}"
    p = matches[0]
    return float(p.count if isinstance(p, HistogramDataPoint) else p.value)


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Fetch /metrics and parse it: {(sample name, labels without otel_scope_*): value}."""
    text = httpx.get(url, timeout=5).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = frozenset(
                (k, v) for k, v in s.labels.items() if not k.startswith("otel_scope_") and v != ""
            )
            samples[(s.name, labels)] = s.value
    return samples


@pytest.fixture
def telemetry(example_plan_path: Path) -> Iterator[Telemetry]:
    t = setup_telemetry(load_plan(example_plan_path), prometheus_port=0)
    yield t
    t.shutdown()


@pytest.fixture
def canary_client(example_plan_path: Path, telemetry: Telemetry) -> OpenFeatureClient:
    provider = CanaryProvider(example_plan_path)
    api.set_provider_and_wait(provider)
    provider.controller(FLAG).start()  # 5 %
    api.add_hooks([MetricsHook(telemetry.meter_provider)])
    return api.get_client()


def test_metrics_hook_package_exports_metrics_hook() -> None:
    assert "MetricsHook" in hook_exports


def test_metrics_hook_after_evaluations_scrape_has_exact_counts_and_labels(
    canary_client: OpenFeatureClient, telemetry: Telemetry
) -> None:
    units = [f"user-{i}" for i in range(400)]
    expected_on = sum(in_rollout(FLAG, u, 5) for u in units)
    assert 0 < expected_on < len(units)
    for u in units:
        canary_client.get_boolean_value(FLAG, False, EvaluationContext(targeting_key=u))
    for _ in range(3):  # no targeting key at 5 %
        canary_client.get_boolean_value(FLAG, False, EvaluationContext())
    for _ in range(2):
        canary_client.get_boolean_value("no-such-flag", False, EvaluationContext("u"))

    assert telemetry.metrics_url is not None
    m = scrape(telemetry.metrics_url)
    key = ("feature_flag_key", FLAG)
    prov = ("feature_flag_provider_name", PROVIDER)

    def split(variant: str) -> frozenset[tuple[str, str]]:
        return frozenset(
            {key, prov, ("feature_flag_result_variant", variant)}
            | {("feature_flag_result_reason", "split")}
        )

    assert m[("feature_flag_evaluation_requests_total", frozenset({key, prov}))] == 403
    assert m[("feature_flag_evaluation_success_total", split("on"))] == expected_on
    assert m[("feature_flag_evaluation_success_total", split("off"))] == 400 - expected_on
    missing = frozenset({key, prov, ("error_type", "targeting_key_missing")})
    assert m[("feature_flag_evaluation_error_total", missing)] == 3
    unknown_flag = frozenset(
        {("feature_flag_key", "no-such-flag"), prov, ("error_type", "flag_not_found")}
    )
    assert m[("feature_flag_evaluation_error_total", unknown_flag)] == 2
    assert m[("feature_flag_evaluation_active_count", frozenset({key}))] == 0
    assert m[("feature_flag_evaluation_duration_seconds_count", frozenset({key}))] == 400
    assert m[("feature_flag_evaluation_duration_seconds_bucket", frozenset({key, ("le", "+Inf")}))]
    missing_timed = frozenset({key, ("error_type", "targeting_key_missing")})
    assert m[("feature_flag_evaluation_duration_seconds_count", missing_timed)] == 3
    # Evaluations take microseconds: almost all fall in the sub-millisecond buckets.
    sub_ms = m[
        ("feature_flag_evaluation_duration_seconds_bucket", frozenset({key, ("le", "0.001")}))
    ]
    assert sub_ms >= 360


def test_metrics_hook_with_in_memory_provider_records_static_reason() -> None:
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader])
    api.set_provider_and_wait(
        InMemoryProvider({"color": InMemoryFlag("blue", {"blue": "#00f", "red": "#f00"})})
    )
    client = api.get_client()
    client.add_hooks([MetricsHook(mp)])
    for _ in range(5):
        assert client.get_string_value("color", "x") == "#00f"
    client.get_integer_value("color", 0)  # wrong type

    provider = "In-Memory Provider"
    assert value(
        reader, "feature_flag.evaluation_requests_total",
        feature_flag__key="color", feature_flag__provider__name=provider,
    ) == 6  # fmt: skip
    assert value(
        reader, "feature_flag.evaluation_success_total",
        feature_flag__key="color", feature_flag__provider__name=provider,
        feature_flag__result__variant="blue", feature_flag__result__reason="static",
    ) == 5  # fmt: skip
    assert value(
        reader, "feature_flag.evaluation_error_total",
        feature_flag__key="color", feature_flag__provider__name=provider,
        error__type="type_mismatch",
    ) == 1  # fmt: skip
    durations = points(reader, "feature_flag.evaluation.duration")
    assert sum(p.count for _, p in durations) == 6
    assert all(tuple(p.explicit_bounds) == DURATION_BOUNDS_S for _, p in durations)


class _FatalProvider(AbstractProvider):
    """A provider whose initialisation fails for good: the SDK refuses before any hook."""

    def get_metadata(self) -> Metadata:
        return Metadata(name="fatal")

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        raise ProviderFatalError("no backend")

    def resolve_boolean_details(
        self, flag_key: str, default_value: bool, evaluation_context: Any = None
    ) -> FlagResolutionDetails[bool]:
        raise AssertionError("never resolved")

    resolve_string_details = resolve_integer_details = resolve_boolean_details  # type: ignore[assignment]
    resolve_float_details = resolve_object_details = resolve_boolean_details  # type: ignore[assignment]


def test_metrics_hook_provider_fatal_counts_error_without_timing_or_negative_active() -> None:
    reader = InMemoryMetricReader()
    with pytest.raises(ProviderFatalError):
        api.set_provider_and_wait(_FatalProvider())
    client = api.get_client()
    client.add_hooks([MetricsHook(MeterProvider(metric_readers=[reader]))])

    details = client.get_boolean_details("f", True)

    assert details.error_code == ErrorCode.PROVIDER_FATAL
    assert value(
        reader, "feature_flag.evaluation_error_total",
        feature_flag__key="f", feature_flag__provider__name="fatal", error__type="provider_fatal",
    ) == 1  # fmt: skip
    assert points(reader, "feature_flag.evaluation.duration") == []
    assert all(p.value == 0 for _, p in points(reader, "feature_flag.evaluation_active_count"))


class _GateProvider(InMemoryProvider):
    """Blocks resolution until released, to observe an evaluation in flight."""

    def __init__(self) -> None:
        super().__init__({"slow": InMemoryFlag("on", {"on": True, "off": False})})
        self.entered = threading.Event()
        self.release = threading.Event()

    def resolve_boolean_details(self, *args: Any, **kwargs: Any) -> FlagResolutionDetails[bool]:
        self.entered.set()
        assert self.release.wait(5)
        return super().resolve_boolean_details(*args, **kwargs)


def test_metrics_hook_evaluation_in_flight_active_count_is_one_then_zero() -> None:
    reader = InMemoryMetricReader()
    provider = _GateProvider()
    api.set_provider_and_wait(provider)
    client = api.get_client()
    client.add_hooks([MetricsHook(MeterProvider(metric_readers=[reader]))])
    worker = threading.Thread(target=client.get_boolean_value, args=("slow", False))
    worker.start()
    try:
        assert provider.entered.wait(5)
        assert value(reader, "feature_flag.evaluation_active_count", feature_flag__key="slow") == 1
    finally:
        provider.release.set()
        worker.join(5)
    assert value(reader, "feature_flag.evaluation_active_count", feature_flag__key="slow") == 0


def test_metrics_hook_many_threads_counts_every_evaluation_exactly() -> None:
    reader = InMemoryMetricReader()
    api.set_provider_and_wait(InMemoryProvider({"f": InMemoryFlag("on", {"on": True})}))
    client = api.get_client()
    client.add_hooks([MetricsHook(MeterProvider(metric_readers=[reader]))])
    collected: list[float] = []

    def work() -> None:
        for _ in range(500):
            client.get_boolean_value("f", False)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):  # collect concurrently with the writers
        collected.append(
            sum(p.value for _, p in points(reader, "feature_flag.evaluation_requests_total"))
        )
    for t in threads:
        t.join()

    assert collected == sorted(collected)  # a cumulative counter never goes back
    assert value(
        reader, "feature_flag.evaluation_requests_total",
        feature_flag__key="f", feature_flag__provider__name="In-Memory Provider",
    ) == 2000  # fmt: skip
    assert value(reader, "feature_flag.evaluation.duration", feature_flag__key="f") == 2000


def test_metrics_hook_evaluation_remembers_variant_and_error_clears_it(
    canary_client: OpenFeatureClient,
) -> None:
    on_unit = next(u for u in (f"u{i}" for i in range(1000)) if in_rollout(FLAG, u, 5))
    with variant_scope():
        assert current_variant(FLAG) is None
        canary_client.get_boolean_value(FLAG, False, EvaluationContext(targeting_key=on_unit))
        assert current_variant(FLAG) == "on"
        canary_client.get_boolean_value(FLAG, False, EvaluationContext())  # error: default
        assert current_variant(FLAG) is None
    assert current_variant(FLAG) is None  # the scope is closed


def test_metrics_hook_async_evaluation_counts_and_times() -> None:
    reader = InMemoryMetricReader()
    api.set_provider_and_wait(InMemoryProvider({"f": InMemoryFlag("on", {"on": True})}))
    client = api.get_client()
    client.add_hooks([MetricsHook(MeterProvider(metric_readers=[reader]))])

    async def evaluate() -> list[bool]:
        return [await client.get_boolean_value_async("f", False) for _ in range(3)]

    assert asyncio.run(evaluate()) == [True, True, True]

    assert value(reader, "feature_flag.evaluation.duration", feature_flag__key="f") == 3
