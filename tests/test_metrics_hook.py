"""MetricsHook through a real OpenFeature client, a real OpenTelemetry SDK and a real
Prometheus scrape on 127.0.0.1 (spec §9): exact counts, labels, errors, any provider."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
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
    """Blocks boolean resolution until released, to observe an evaluation in flight; the
    string flag ``fast`` is not held."""

    def __init__(self) -> None:
        super().__init__(
            {
                "slow": InMemoryFlag("on", {"on": True, "off": False}),
                "fast": InMemoryFlag("a", {"a": "A"}),
            }
        )
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


# ---------------------------------------------------------------- short-lived threads


def held_shards(hook: MetricsHook) -> int:
    """Per-thread shards the hook holds, which every collection adds up: live threads', new
    ones not yet taken in, ended ones not yet folded."""
    threads = hook._threads
    return len({*threads._live, *threads._joined, *threads._ended})


def run_threads(target: Callable[[], object], count: int, batch: int = 100) -> None:
    """``count`` short-lived threads running ``target``, ``batch`` at a time, all ended."""
    for first in range(0, count, batch):
        threads = [threading.Thread(target=target) for _ in range(min(batch, count - first))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def totals(reader: InMemoryMetricReader) -> dict[str, float]:
    """One collection: each instrument's points added up (a histogram's counts)."""
    data = reader.get_metrics_data()
    found: dict[str, float] = {}
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                found[metric.name] = found.get(metric.name, 0) + sum(
                    p.count if isinstance(p, HistogramDataPoint) else p.value
                    for p in metric.data.data_points
                )
    return found


def collection_s(reader: InMemoryMetricReader, repeats: int = 30) -> float:
    """The fastest of ``repeats`` collections (the least disturbed by other processes)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        reader.get_metrics_data()
        best = min(best, time.perf_counter() - start)
    return best


def hooked_client(reader: InMemoryMetricReader) -> tuple[OpenFeatureClient, MetricsHook]:
    api.set_provider_and_wait(InMemoryProvider({"f": InMemoryFlag("on", {"on": True})}))
    client = api.get_client()
    hook = MetricsHook(MeterProvider(metric_readers=[reader]))
    client.add_hooks([hook])
    return client, hook


def test_metrics_hook_2000_short_lived_threads_fold_into_one_total_counts_exact() -> None:
    reader = InMemoryMetricReader()
    client, hook = hooked_client(reader)

    def work() -> None:  # 2 successes and 1 error
        client.get_boolean_value("f", False)
        client.get_boolean_value("f", False)
        client.get_boolean_value("no-such-flag", False)

    work()  # the collecting thread evaluates too
    assert held_shards(hook) == 1
    one_thread_s = collection_s(reader)

    run_threads(work, 2000)

    # Every ended thread's counts are folded as it ends: what a collection adds up is the
    # same as with a single thread (the old hook kept 2001 shards here).
    assert held_shards(hook) == 1
    provider = "In-Memory Provider"
    evaluations = 2001
    assert value(
        reader, "feature_flag.evaluation_requests_total",
        feature_flag__key="f", feature_flag__provider__name=provider,
    ) == 2 * evaluations  # fmt: skip
    assert value(
        reader, "feature_flag.evaluation_success_total",
        feature_flag__key="f", feature_flag__provider__name=provider,
        feature_flag__result__variant="on", feature_flag__result__reason="static",
    ) == 2 * evaluations  # fmt: skip
    assert value(
        reader, "feature_flag.evaluation_requests_total",
        feature_flag__key="no-such-flag", feature_flag__provider__name=provider,
    ) == evaluations  # fmt: skip
    assert value(
        reader, "feature_flag.evaluation_error_total",
        feature_flag__key="no-such-flag", feature_flag__provider__name=provider,
        error__type="flag_not_found",
    ) == evaluations  # fmt: skip
    assert len(points(reader, "feature_flag.evaluation_success_total")) == 1  # nothing else
    assert len(points(reader, "feature_flag.evaluation_error_total")) == 1
    assert value(reader, "feature_flag.evaluation_active_count", feature_flag__key="f") == 0
    assert (
        value(reader, "feature_flag.evaluation_active_count", feature_flag__key="no-such-flag") == 0
    )
    assert value(reader, "feature_flag.evaluation.duration", feature_flag__key="f") == 4002
    assert len(hook._threads._live) == 1  # after collections too: only the live thread's shard
    # Timing, generously bounded (the assertion above is the one that cannot flake).
    assert collection_s(reader) < 2 * one_thread_s


def test_metrics_hook_threads_ending_between_collections_totals_monotone_and_exact() -> None:
    reader = InMemoryMetricReader()
    client, hook = hooked_client(reader)

    def work() -> None:
        for _ in range(3):
            client.get_boolean_value("f", False)

    seen = [totals(reader).get("feature_flag.evaluation_requests_total", 0)]
    for _ in range(5):
        run_threads(work, 40, batch=20)
        t = totals(reader)
        seen.append(t["feature_flag.evaluation_requests_total"])
        assert t["feature_flag.evaluation.duration"] == seen[-1]
        assert t["feature_flag.evaluation_active_count"] == 0
        assert held_shards(hook) == 0

    assert seen == [0, 120, 240, 360, 480, 600]


def test_metrics_hook_collecting_while_threads_end_never_loses_or_double_counts() -> None:
    reader = InMemoryMetricReader()
    client, hook = hooked_client(reader)
    done = threading.Event()
    seen: list[dict[str, float]] = []

    def collect() -> None:  # collections race with threads ending (and being folded)
        while not done.is_set():
            seen.append(totals(reader))

    def work() -> None:
        for _ in range(5):
            client.get_boolean_value("f", False)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: more interleavings
    collector = threading.Thread(target=collect)
    collector.start()
    try:
        run_threads(work, 600, batch=30)
    finally:
        done.set()
        collector.join()
        sys.setswitchinterval(switch)
    seen.append(totals(reader))

    requests = [t.get("feature_flag.evaluation_requests_total", 0) for t in seen]
    timed = [t.get("feature_flag.evaluation.duration", 0) for t in seen]
    assert len(seen) > 2
    assert requests == sorted(requests)  # cumulative: never back (no shard counted twice)
    assert timed == sorted(timed)
    assert all(0 <= t.get("feature_flag.evaluation_active_count", 0) <= 30 for t in seen)
    assert requests[-1] == timed[-1] == 3000
    assert seen[-1]["feature_flag.evaluation_active_count"] == 0
    assert held_shards(hook) == 0


def test_metrics_hook_threads_ending_during_collection_never_wait_then_are_folded() -> None:
    reader = InMemoryMetricReader()
    client, hook = hooked_client(reader)
    with hook._threads.lock:  # as a collection under way holds it
        threads = [
            threading.Thread(target=client.get_boolean_value, args=("f", False)) for _ in range(50)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
        assert not any(t.is_alive() for t in threads)  # none waited for the lock
        assert len(hook._threads._ended) == 50  # queued for whoever holds the lock next

    run_threads(lambda: client.get_boolean_value("f", False), 1)  # the next thread to end
    assert held_shards(hook) == 0  # folded them all, no collection needed
    t = totals(reader)
    assert t["feature_flag.evaluation_requests_total"] == 51
    assert t["feature_flag.evaluation.duration"] == 51
    assert t["feature_flag.evaluation_active_count"] == 0
    assert held_shards(hook) == 0


def test_metrics_hook_thread_folded_before_its_shard_is_taken_in_is_counted_once() -> None:
    reader = InMemoryMetricReader()
    client, hook = hooked_client(reader)
    with hook._threads.lock:  # a collection under way: the thread's shard waits in both queues
        run_threads(lambda: client.get_boolean_value("f", False), 1)
        assert len(hook._threads._joined) == len(hook._threads._ended) == 1
        # What a collection meets when a thread begins after it took the new shards in and
        # ends before it folds the ended ones: folded first, taken in after.
        hook._threads.fold(hook._threads._ended.popleft())

    t = totals(reader)
    assert t["feature_flag.evaluation_requests_total"] == 1
    assert t["feature_flag.evaluation.duration"] == 1
    assert held_shards(hook) == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_metrics_hook_forked_child_folds_other_threads_counts_exact_none_in_flight() -> None:
    reader = InMemoryMetricReader()
    provider = _GateProvider()
    api.set_provider_and_wait(provider)
    client = api.get_client()
    hook = MetricsHook(MeterProvider(metric_readers=[reader]))
    client.add_hooks([hook])
    client.get_string_value("fast", "x")  # this thread's shard
    run_threads(lambda: [client.get_string_value("fast", "x") for _ in range(3)], 10)
    idle, stop = threading.Event(), threading.Event()
    kept = []

    def live_idle() -> None:  # alive at the fork, with a shard
        client.get_string_value("fast", "x")
        # CPython (3.10 to 3.13) frees the other threads' storage in a child (the callbacks then
        # fold their shards), but not what their stacks still refer to: keep this thread's
        # token alive, so that the child must tell by itself that this thread is gone.
        kept.append(hook._local.token)
        idle.set()
        stop.wait(10)

    threads = [
        threading.Thread(target=live_idle),
        threading.Thread(target=client.get_boolean_value, args=("slow", False)),
    ]
    for t in threads:
        t.start()
    try:
        assert idle.wait(5) and provider.entered.wait(5)
        assert held_shards(hook) == 3
        assert value(reader, "feature_flag.evaluation_active_count", feature_flag__key="slow") == 1
        read_end, write_end = os.pipe()
        with warnings.catch_warnings():  # "multi-threaded process" (3.12+): on purpose
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: only this thread exists
            report = "the child crashed"
            try:
                os.close(read_end)
                client.get_string_value("fast", "x")
                t = totals(reader)
                report = json.dumps(
                    {
                        "held": held_shards(hook),
                        "requests": t["feature_flag.evaluation_requests_total"],
                        "active": t["feature_flag.evaluation_active_count"],
                    }
                )
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
        # In the child: this thread's shard only; every evaluation that ended before the fork
        # (this thread's, 10 ended threads', the idle one's) and the child's own; the one in
        # flight at the fork never ends there, so it is neither counted nor in flight.
        assert json.loads(report) == {"held": 1, "requests": 1 + 30 + 1 + 1, "active": 0}, report
    finally:
        provider.release.set()
        stop.set()
        for t in threads:
            t.join(5)

    # The parent still has every thread's counts; the evaluation in flight has finished.
    t = totals(reader)
    assert t["feature_flag.evaluation_requests_total"] == 1 + 30 + 1 + 1
    assert t["feature_flag.evaluation_active_count"] == 0
    kept.clear()  # the ended thread's token dies only now: its shard is folded now
    assert held_shards(hook) == 1
