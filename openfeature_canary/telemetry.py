"""One call to set up OpenTelemetry metrics for a canary: :func:`setup_telemetry`.

It builds the application's ``MeterProvider`` with

* an ``InMemoryMetricReader`` (cumulative) that the in-process signals read;
* optionally one ``PrometheusMetricReader`` on its **own** ``CollectorRegistry`` (never the
  global ``REGISTRY``: two readers on one registry make a duplicate, invalid exposition),
  served on ``http://127.0.0.1:<port>/metrics``;
* Views giving ``http.server.request.duration`` and ``canary.event_loop.lag`` explicit bounds
  in seconds: dense from 100 to 300 ms, plus every millisecond threshold of the plan, so that
  "P95 > 150 ms" is decided on a bucket boundary, exactly. (OpenTelemetry's default bounds
  are for milliseconds, and exponential histograms break the Prometheus scrape.)

>>> telemetry = setup_telemetry(load_plan("canary_plan.toml"), prometheus_port=0)
... # doctest: +SKIP
>>> telemetry.metrics_url                                   # doctest: +SKIP
'http://127.0.0.1:41873/metrics'

With a ``MeterProvider`` of your own, add the same pieces to it::

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader, *yours], views=canary_views(plan))
    # or, to an existing provider (its views cannot change any more):
    existing_provider.add_metric_reader(reader)
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, start_http_server

from openfeature_canary.instrumentation import (
    DEFAULT_LATENCY_BOUNDS_S,
    EVENT_LOOP_LAG_NAME,
    REQUEST_DURATION_NAME,
)
from openfeature_canary.plan import RolloutPlan

__all__ = ["Telemetry", "canary_views", "histogram_bounds_s", "setup_telemetry"]

#: The histograms whose bounds the plan's thresholds refine.
_LATENCY_HISTOGRAMS = (REQUEST_DURATION_NAME, EVENT_LOOP_LAG_NAME)


def histogram_bounds_s(plan: RolloutPlan | None = None) -> tuple[float, ...]:
    """Histogram bounds in seconds: the defaults plus every ms threshold of ``plan``.

    >>> from openfeature_canary import load_plan
    >>> 0.15 in histogram_bounds_s(load_plan("examples/canary_plan.toml"))  # doctest: +SKIP
    True
    """
    bounds = set(DEFAULT_LATENCY_BOUNDS_S)
    if plan is not None:
        bounds.update(t / 1000 for t in plan.thresholds_ms() if math.isfinite(t) and t > 0)
    return tuple(sorted(bounds))


def canary_views(plan: RolloutPlan | None = None) -> tuple[View, ...]:
    """The Views that give the latency histograms :func:`histogram_bounds_s` as bounds.

    Pass them to your own ``MeterProvider(views=...)`` when you do not use
    :func:`setup_telemetry`.
    """
    return tuple(_views(histogram_bounds_s(plan)))


@dataclass(frozen=True)
class Telemetry:
    """What :func:`setup_telemetry` built. Call :meth:`shutdown` when the process stops.

    ``reader`` is the in-process reader the signals read; ``metrics_url`` is where Prometheus
    scrapes (``None`` without ``prometheus_port``); ``bounds_s`` are the latency histograms'
    bounds in seconds.
    """

    meter_provider: MeterProvider
    reader: InMemoryMetricReader
    metrics_url: str | None
    bounds_s: tuple[float, ...]
    registry: CollectorRegistry | None = None
    _server: WSGIServer | None = field(default=None, repr=False, compare=False)
    _thread: threading.Thread | None = field(default=None, repr=False, compare=False)
    _closed: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    def shutdown(self) -> None:
        """Stop the ``/metrics`` server and shut the meter provider down (idempotent)."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.meter_provider.shutdown()


def setup_telemetry(
    plan: RolloutPlan | None = None,
    *,
    prometheus_port: int | None = None,
    prometheus_addr: str = "127.0.0.1",
    extra_readers: Iterable[MetricReader] = (),
    resource: Resource | None = None,
    set_global: bool = False,
) -> Telemetry:
    """Build the application's ``MeterProvider`` for a canary (see the module docstring).

    ``prometheus_port`` serves ``/metrics`` there (``0`` picks a free port; the actual URL is
    ``Telemetry.metrics_url``), on ``prometheus_addr`` (loopback by default: pass another
    address deliberately). ``extra_readers`` are added as they are (an OTLP exporter, say).
    ``set_global`` makes it OpenTelemetry's global meter provider, which the helpers of
    ``openfeature_canary.instrumentation`` use by default; OpenTelemetry accepts that only
    once per process.

    Raises ``OSError`` when the port cannot be bound.
    """
    bounds = histogram_bounds_s(plan)
    reader = InMemoryMetricReader()
    readers: list[MetricReader] = [reader, *extra_readers]
    registry: CollectorRegistry | None = None
    if prometheus_port is not None:
        registry = CollectorRegistry(auto_describe=True)
        readers.append(PrometheusMetricReader(registry=registry))
    provider = MeterProvider(
        metric_readers=readers,
        views=_views(bounds),
        resource=resource,
    )
    server: WSGIServer | None = None
    thread: threading.Thread | None = None
    url: str | None = None
    if registry is not None and prometheus_port is not None:
        try:
            server, thread = start_http_server(
                prometheus_port, addr=prometheus_addr, registry=registry
            )
        except OSError:
            provider.shutdown()
            raise
        host = prometheus_addr if ":" not in prometheus_addr else f"[{prometheus_addr}]"
        url = f"http://{host}:{server.server_port}/metrics"
    if set_global:
        metrics.set_meter_provider(provider)
    return Telemetry(
        meter_provider=provider,
        reader=reader,
        metrics_url=url,
        bounds_s=bounds,
        registry=registry,
        _server=server,
        _thread=thread,
    )


def _views(bounds: Sequence[float]) -> list[View]:
    aggregation = ExplicitBucketHistogramAggregation(boundaries=bounds)
    return [View(instrument_name=name, aggregation=aggregation) for name in _LATENCY_HISTOGRAMS]
