"""Request instrumentation (spec §6): record_request, CanaryMiddleware under a real uvicorn
server on 127.0.0.1, shadow_compare, EventLoopLagMonitor, IngestInstruments, current_variant."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.contrib.hook.canary import MetricsHook
from openfeature.contrib.provider.canary import CanaryProvider
from openfeature.evaluation_context import EvaluationContext
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from otel_points import points
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from openfeature_canary.bucketing import in_rollout
from openfeature_canary.instrumentation import (
    CanaryMiddleware,
    EventLoopLagMonitor,
    IngestInstruments,
    Message,
    Receive,
    Scope,
    Send,
    current_variant,
    record_request,
    remember_variant,
    shadow_compare,
    variant_scope,
)

FLAG = "dataservice-read-canary"
DURATION = "http.server.request.duration"


def counts(reader: InMemoryMetricReader, name: str) -> dict[frozenset[tuple[str, Any]], float]:
    """{attributes: value or histogram count} of metric ``name``."""
    return {
        frozenset(a.items()): float(p.count if isinstance(p, HistogramDataPoint) else p.value)
        for a, p in points(reader, name)
    }


def settled_counts(
    reader: InMemoryMetricReader, name: str, total: float
) -> dict[frozenset[tuple[str, Any]], float]:
    """``counts`` once they add up to ``total``: the server records a request after the
    client already has the whole response, so the last one may land a moment later."""
    deadline = time.monotonic() + 5
    while True:
        got = counts(reader, name)
        if sum(got.values()) >= total or time.monotonic() > deadline:
            return got
        time.sleep(0.005)


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def mp(reader: InMemoryMetricReader) -> MeterProvider:
    return MeterProvider(metric_readers=[reader])


# --------------------------------------------------------------------------- current variant


def test_current_variant_scope_isolates_and_restores() -> None:
    with variant_scope():
        remember_variant(FLAG, "on")
        with variant_scope():
            assert current_variant(FLAG) is None
            remember_variant(FLAG, "off")
            assert current_variant(FLAG) == "off"
        assert current_variant(FLAG) == "on"
        remember_variant(FLAG, None)
        assert current_variant(FLAG) is None


# --------------------------------------------------------------------------- record_request


def test_record_request_given_attributes_records_histogram_point(
    reader: InMemoryMetricReader, mp: MeterProvider
) -> None:
    record_request(
        FLAG, "on", 0.120, 200, meter_provider=mp, method="GET", route="/api/v6/{id}",
        **{"server.address": "a6"},
    )  # fmt: skip
    record_request(FLAG, "on", 0.180, 503, meter_provider=mp)
    record_request(FLAG, None, 0.010, 200, meter_provider=mp)

    (ok_attrs, ok_point), *_ = [(a, p) for a, p in points(reader, DURATION) if "http.route" in a]
    assert ok_attrs == {
        "feature_flag.key": FLAG,
        "feature_flag.result.variant": "on",
        "http.response.status_code": 200,
        "http.request.method": "GET",
        "http.route": "/api/v6/{id}",
        "server.address": "a6",
    }
    assert ok_point.count == 1 and ok_point.sum == pytest.approx(0.120)
    assert 0.15 in ok_point.explicit_bounds  # seconds, not the SDK's ms defaults
    got = counts(reader, DURATION)
    five_xx = {"feature_flag.key": FLAG, "feature_flag.result.variant": "on"}
    assert got[frozenset({**five_xx, "http.response.status_code": 503}.items())] == 1
    no_variant = {"feature_flag.key": FLAG, "http.response.status_code": 200}
    assert got[frozenset(no_variant.items())] == 1


# --------------------------------------------------------------------------- middleware


async def _boom_app(scope: Scope, receive: Receive, send: Send) -> None:
    remember_variant(FLAG, "on")
    raise RuntimeError("backend down")


def test_canary_middleware_app_raises_records_500_and_reraises(
    reader: InMemoryMetricReader, mp: MeterProvider
) -> None:
    app = CanaryMiddleware(_boom_app, flag_key=FLAG, meter_provider=mp)

    async def call() -> None:
        async def receive() -> Message:
            return {"type": "http.request", "body": b""}

        async def send(message: Message) -> None:
            pass

        await app({"type": "http", "method": "GET", "path": "/"}, receive, send)

    with pytest.raises(RuntimeError, match="backend down"):
        asyncio.run(call())
    attrs = {
        "feature_flag.key": FLAG,
        "feature_flag.result.variant": "on",
        "http.response.status_code": 500,
        "http.request.method": "GET",
    }
    assert counts(reader, DURATION) == {frozenset(attrs.items()): 1}


def test_canary_middleware_non_http_scope_passes_through_unrecorded(
    reader: InMemoryMetricReader, mp: MeterProvider
) -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    async def receive() -> Message:
        return {}

    async def send(message: Message) -> None:
        pass

    middleware = CanaryMiddleware(app, flag_key=FLAG, meter_provider=mp)
    asyncio.run(middleware({"type": "lifespan"}, receive, send))
    assert seen == ["lifespan"]
    assert points(reader, DURATION) == []


@pytest.fixture
def client(example_plan_path: Path, mp: MeterProvider) -> OpenFeatureClient:
    provider = CanaryProvider(example_plan_path)
    api.set_provider_and_wait(provider)
    provider.controller(FLAG).start()  # 5 %
    api.add_hooks([MetricsHook(mp)])
    return api.get_client()


def _starlette(client: OpenFeatureClient) -> Starlette:
    def evaluate(request: Request) -> bool:
        ctx = EvaluationContext(targeting_key=request.path_params["user"])
        return client.get_boolean_value(FLAG, False, ctx)

    async def dash(request: Request) -> PlainTextResponse:
        return PlainTextResponse("new" if evaluate(request) else "old")

    def dash_sync(request: Request) -> PlainTextResponse:  # runs in a worker thread
        return PlainTextResponse("new" if evaluate(request) else "old")

    async def fail(request: Request) -> PlainTextResponse:
        evaluate(request)
        return PlainTextResponse("unavailable", status_code=503)

    async def boom(request: Request) -> PlainTextResponse:
        evaluate(request)
        raise RuntimeError("boom")

    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            Route("/dash/{user}", dash),
            Route("/sync/{user}", dash_sync),
            Route("/fail/{user}", fail),
            Route("/boom/{user}", boom),
            Route("/health", health),
        ]
    )


@pytest.fixture
def serve() -> Iterator[Any]:
    """Serve an ASGI app with uvicorn on 127.0.0.1 (free port) in a thread; stop it after."""
    servers: list[tuple[uvicorn.Server, threading.Thread, socket.socket]] = []

    def start(app: Any) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="critical"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        servers.append((server, thread, sock))
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    yield start
    for server, thread, sock in servers:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_canary_middleware_under_uvicorn_records_variant_status_and_route(
    client: OpenFeatureClient, reader: InMemoryMetricReader, mp: MeterProvider, serve: Any
) -> None:
    units = [f"user-{i}" for i in range(2000)]
    on = next(u for u in units if in_rollout(FLAG, u, 5))
    off = next(u for u in units if not in_rollout(FLAG, u, 5))
    base = serve(CanaryMiddleware(_starlette(client), flag_key=FLAG, meter_provider=mp))

    with httpx.Client(base_url=base, timeout=10) as http:
        assert http.get("/health").status_code == 200  # first, so a wrong record would show
        assert http.get(f"/dash/{on}").text == "new"
        assert http.get(f"/dash/{off}").text == "old"
        assert http.get(f"/dash/{off}").text == "old"
        assert http.get(f"/sync/{on}").text == "new"
        assert http.get(f"/fail/{off}").status_code == 503
        assert http.get(f"/boom/{on}").status_code == 500

    def key(variant: str, status: int, route: str) -> frozenset[tuple[str, Any]]:
        return frozenset(
            {
                "feature_flag.key": FLAG,
                "feature_flag.result.variant": variant,
                "http.response.status_code": status,
                "http.request.method": "GET",
                "http.route": route,
            }.items()
        )

    assert settled_counts(reader, DURATION, 6) == {
        key("on", 200, "/dash/{user}"): 1,
        key("off", 200, "/dash/{user}"): 2,
        key("on", 200, "/sync/{user}"): 1,
        key("off", 503, "/fail/{user}"): 1,
        key("on", 500, "/boom/{user}"): 1,  # once, although Starlette answers and re-raises
    }  # /health never evaluated the flag: not recorded


def test_canary_middleware_record_unevaluated_records_without_variant(
    reader: InMemoryMetricReader, mp: MeterProvider, client: OpenFeatureClient, serve: Any
) -> None:
    app = CanaryMiddleware(
        _starlette(client), flag_key=FLAG, meter_provider=mp, record_unevaluated=True
    )
    base = serve(app)
    assert httpx.get(f"{base}/health", timeout=10).status_code == 200
    attrs = {
        "feature_flag.key": FLAG,
        "http.response.status_code": 200,
        "http.request.method": "GET",
        "http.route": "/health",
    }
    assert settled_counts(reader, DURATION, 1) == {frozenset(attrs.items()): 1}


# --------------------------------------------------------------------------- shadow compare


def _ledger(reader: InMemoryMetricReader) -> tuple[float, float]:
    attrs = frozenset({"feature_flag.key": FLAG}.items())
    return (
        counts(reader, "canary.ledger.comparisons").get(attrs, 0),
        counts(reader, "canary.ledger.mismatches").get(attrs, 0),
    )


def test_shadow_compare_mismatch_counted_primary_returned(
    reader: InMemoryMetricReader, mp: MeterProvider
) -> None:
    primary = {"id": 7, "name": "A6"}
    assert shadow_compare(FLAG, primary, {"id": 7, "name": "A6"}, meter_provider=mp) is primary
    assert (
        shadow_compare(FLAG, primary, lambda: {"id": 7, "name": "B"}, meter_provider=mp) is primary
    )
    assert _ledger(reader) == (2, 1)


def test_shadow_compare_shadow_or_compare_raises_counts_mismatch_never_raises(
    reader: InMemoryMetricReader, mp: MeterProvider
) -> None:
    def broken() -> object:
        raise TimeoutError("DataService timed out")

    def bad_compare(a: object, b: object) -> bool:
        raise TypeError("incomparable")

    assert shadow_compare(FLAG, 1, broken, meter_provider=mp) == 1
    assert shadow_compare(FLAG, 1, 1, compare=bad_compare, meter_provider=mp) == 1
    assert _ledger(reader) == (2, 2)


def test_shadow_compare_sample_rate_compares_exactly_the_sampled_calls(
    reader: InMemoryMetricReader, mp: MeterProvider
) -> None:
    calls = 0

    def shadow() -> int:
        nonlocal calls
        calls += 1
        return 2  # always differs

    twin = random.Random(11)
    expected = sum(twin.random() < 0.25 for _ in range(400))
    rng = random.Random(11)
    for _ in range(400):
        assert shadow_compare(FLAG, 1, shadow, sample_rate=0.25, meter_provider=mp, rng=rng) == 1

    assert 60 < expected < 140
    assert calls == expected
    assert _ledger(reader) == (expected, expected)


@pytest.mark.parametrize("rate", [0.0, -1.0, float("nan")])
def test_shadow_compare_rate_zero_or_invalid_never_calls_shadow(
    rate: float, reader: InMemoryMetricReader, mp: MeterProvider
) -> None:
    def shadow() -> int:
        raise AssertionError("must not run")

    assert shadow_compare(FLAG, "x", shadow, sample_rate=rate, meter_provider=mp) == "x"
    assert _ledger(reader) == (0, 0)


# --------------------------------------------------------------------------- event loop lag


def test_event_loop_lag_monitor_blocked_loop_reports_lag_over_300ms(
    reader: InMemoryMetricReader, mp: MeterProvider
) -> None:
    monitor = EventLoopLagMonitor(0.05, meter_provider=mp)

    async def scenario() -> None:
        await monitor.start()
        await asyncio.sleep(0.12)  # a few quiet ticks
        time.sleep(0.4)  # blocks the loop
        await asyncio.sleep(0.08)
        await monitor.stop()
        assert not monitor.running

    asyncio.run(scenario())

    assert monitor.max_lag_s >= 0.3
    ((attrs, point),) = points(reader, "canary.event_loop.lag")
    assert attrs == {}
    assert point.max >= 0.3 and point.count >= 3
    above_300ms = sum(
        n
        for bound, n in zip((0.0, *point.explicit_bounds), point.bucket_counts, strict=True)
        if bound >= 0.3
    )
    assert above_300ms == 1


def test_event_loop_lag_monitor_bad_interval_raises() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        EventLoopLagMonitor(0)


# --------------------------------------------------------------------------- ingest counters


def test_ingest_instruments_counts_sent_and_accepted(
    reader: InMemoryMetricReader, mp: MeterProvider
) -> None:
    ingest = IngestInstruments(mp)
    ingest.sent(3)
    ingest.sent()
    ingest.accepted(3)

    assert counts(reader, "canary.telemetry.sent") == {frozenset(): 4}
    assert counts(reader, "canary.telemetry.accepted") == {frozenset(): 3}
    with pytest.raises(ValueError, match="negative"):
        ingest.accepted(-1)
