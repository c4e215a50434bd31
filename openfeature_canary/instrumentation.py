"""Helpers an application uses to produce the signals a canary is judged on (spec §6).

The policy reads these OpenTelemetry instruments (names in the ``*_NAME`` constants):

============================== ========= ==========================================================
instrument                     kind      attributes
============================== ========= ==========================================================
``http.server.request.duration`` histogram ``feature_flag.key``, ``feature_flag.result.variant``,
                                         ``http.response.status_code`` (+ ``http.request.method``,
                                         ``http.route`` when known); unit ``s``
``canary.ledger.comparisons``  counter   ``feature_flag.key``
``canary.ledger.mismatches``   counter   ``feature_flag.key``
``canary.event_loop.lag``      histogram none; unit ``s``
``canary.telemetry.sent``      counter   none
``canary.telemetry.accepted``  counter   none
============================== ========= ==========================================================

What to use when:

* :class:`CanaryMiddleware` wraps an ASGI app and records every HTTP request with the variant
  the flag gave that request; :func:`record_request` does the same by hand (other servers, or
  a single code path rather than a whole app).
* :func:`shadow_compare` runs the new path in the shadow of the old one and counts discrepancies
  (the ``ledger_mismatch`` trigger).
* :class:`EventLoopLagMonitor` measures how late the asyncio loop wakes up (``event_loop_lag``).
* :class:`IngestInstruments` counts events sent to and accepted by the telemetry ingest.
* :func:`current_variant` tells which variant a flag gave the current request; the
  ``MetricsHook`` fills it in with :func:`remember_variant`; :func:`variant_scope` starts a
  fresh per-request scope where no middleware does it.

Every helper takes ``meter_provider``; ``None`` means OpenTelemetry's global one
(``opentelemetry.metrics.get_meter_provider()``) at the time of the call or construction.
Histograms carry advisory bounds in seconds (:data:`DEFAULT_LATENCY_BOUNDS_S`);
``openfeature_canary.telemetry.setup_telemetry`` replaces them with Views that add every plan
threshold.
"""

from __future__ import annotations

import asyncio
import logging
import math
import operator
import random
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from time import perf_counter
from types import TracebackType
from typing import Any, Final, Protocol, TypeVar

from opentelemetry.metrics import Counter, Histogram, MeterProvider, get_meter_provider
from opentelemetry.util.types import AttributeValue

from openfeature_canary._forksafe import renew_locks_after_fork

__all__ = [
    "DEFAULT_LATENCY_BOUNDS_S",
    "EVENT_LOOP_LAG_NAME",
    "LEDGER_COMPARISONS_NAME",
    "LEDGER_MISMATCHES_NAME",
    "METER_NAME",
    "REQUEST_DURATION_NAME",
    "TELEMETRY_ACCEPTED_NAME",
    "TELEMETRY_SENT_NAME",
    "CanaryMiddleware",
    "EventLoopLagMonitor",
    "IngestInstruments",
    "SupportsRandom",
    "current_variant",
    "record_request",
    "remember_variant",
    "shadow_compare",
    "variant_scope",
]

log = logging.getLogger("openfeature_canary")

T = TypeVar("T")

#: Instrumentation scope of the engine's meter.
METER_NAME: Final = "openfeature_canary"
REQUEST_DURATION_NAME: Final = "http.server.request.duration"
LEDGER_COMPARISONS_NAME: Final = "canary.ledger.comparisons"
LEDGER_MISMATCHES_NAME: Final = "canary.ledger.mismatches"
EVENT_LOOP_LAG_NAME: Final = "canary.event_loop.lag"
TELEMETRY_SENT_NAME: Final = "canary.telemetry.sent"
TELEMETRY_ACCEPTED_NAME: Final = "canary.telemetry.accepted"

_FLAG_KEY: Final = "feature_flag.key"
_VARIANT: Final = "feature_flag.result.variant"
_STATUS: Final = "http.response.status_code"
_METHOD: Final = "http.request.method"
_ROUTE: Final = "http.route"


def _ms(*values: float) -> tuple[float, ...]:
    # Divide integers of milliseconds so that bounds print exactly (0.15, not 0.15000000000000002).
    return tuple(v / 1000 for v in values)


#: Default histogram bounds in seconds: fine below 100 ms, every 10 ms from 100 to 300 ms
#: (where the reference plan's gates and triggers sit), coarse above.
DEFAULT_LATENCY_BOUNDS_S: Final[tuple[float, ...]] = _ms(
    1, 2.5, 5, 10, 25, 50, 75,
    *range(100, 301, 10),
    350, 400, 500, 750, 1000, 2500, 5000, 10000,
)  # fmt: skip


# --------------------------------------------------------------------------- current variant

#: The variants the flags gave the current request. The value is a mutable dict shared by
#: every copy of the context (a sync endpoint runs in a thread with a *copy* of the request's
#: context): the hook writes into it, the middleware reads it after the app ran.
_VARIANTS: ContextVar[dict[str, str] | None] = ContextVar(
    "openfeature_canary_variants", default=None
)
_SCOPE_KEY: Final = "openfeature_canary.variants"


def current_variant(flag_key: str) -> str | None:
    """The variant ``flag_key`` gave the current request, or ``None`` if it was not evaluated.

    Filled in by the ``MetricsHook`` (``openfeature.contrib.hook.canary``) on every evaluation;
    the latest evaluation of the flag in this scope wins, and an evaluation that errored (the
    caller got its default, which is neither cohort) clears it. Scopes are opened per request
    by :class:`CanaryMiddleware` or by :func:`variant_scope`.

    >>> with variant_scope():
    ...     remember_variant("dataservice-read-canary", "on")
    ...     current_variant("dataservice-read-canary")
    'on'
    """
    box = _VARIANTS.get()
    return None if box is None else box.get(flag_key)


def remember_variant(flag_key: str, variant: str | None) -> None:
    """Remember the variant ``flag_key`` gave the current request (``None`` forgets it).

    The ``MetricsHook`` calls this; call it yourself only for a hand-rolled hook. Outside any
    scope it opens one in the current context, so :func:`current_variant` works in a script;
    in a server, open a scope per request (middleware or :func:`variant_scope`) or a request
    could see the variant of an earlier request served by the same context.
    """
    box = _VARIANTS.get()
    if box is None:
        box = {}
        _VARIANTS.set(box)
    if variant is None:
        box.pop(flag_key, None)
    else:
        box[flag_key] = variant


@contextmanager
def variant_scope() -> Iterator[None]:
    """Open a fresh per-request scope for :func:`current_variant`.

    Use it around one request's handling where :class:`CanaryMiddleware` does not run (a WSGI
    app, a queue consumer)::

        with variant_scope():
            handle(request)
            record_request(FLAG, current_variant(FLAG), elapsed, status)
    """
    token = _VARIANTS.set({})
    try:
        yield
    finally:
        _VARIANTS.reset(token)


# --------------------------------------------------------------------------- instruments


@dataclass(frozen=True)
class _Instruments:
    request_duration: Histogram
    comparisons: Counter
    mismatches: Counter


def _create_instruments(meter_provider: MeterProvider) -> _Instruments:
    meter = meter_provider.get_meter(METER_NAME)
    return _Instruments(
        request_duration=meter.create_histogram(
            REQUEST_DURATION_NAME,
            unit="s",
            description="Duration of HTTP server requests, by flag variant and status code.",
            explicit_bucket_boundaries_advisory=DEFAULT_LATENCY_BOUNDS_S,
        ),
        comparisons=meter.create_counter(
            LEDGER_COMPARISONS_NAME,
            unit="{comparison}",
            description="Shadow comparisons made (sampled).",
        ),
        mismatches=meter.create_counter(
            LEDGER_MISMATCHES_NAME,
            unit="{mismatch}",
            description="Shadow comparisons whose shadow result differed or failed.",
        ),
    )


class _InstrumentCache:
    """Instruments per meter provider, created once.

    A cache, not state: a miss recreates the same instruments. It is needed because the API's
    proxy meter provider (before an SDK one is set) keeps every meter it hands out, so asking
    it per request would grow without bound.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        renew_locks_after_fork(self, "_lock")
        self._by_provider: weakref.WeakKeyDictionary[MeterProvider, _Instruments] = (
            weakref.WeakKeyDictionary()
        )

    def get(self, meter_provider: MeterProvider | None) -> _Instruments:
        mp = meter_provider if meter_provider is not None else get_meter_provider()
        found = self._by_provider.get(mp)
        if found is None:
            with self._lock:
                found = self._by_provider.get(mp)
                if found is None:
                    found = _create_instruments(mp)
                    self._by_provider[mp] = found
        return found


_INSTRUMENTS: Final = _InstrumentCache()


# --------------------------------------------------------------------------- requests


def _request_attributes(
    flag_key: str,
    variant: str | None,
    status_code: int,
    method: str | None,
    route: str | None,
    extra: Mapping[str, AttributeValue],
) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {_FLAG_KEY: flag_key, _STATUS: int(status_code)}
    if variant is not None:
        attributes[_VARIANT] = variant
    if method is not None:
        attributes[_METHOD] = method
    if route is not None:
        attributes[_ROUTE] = route
    attributes.update(extra)
    return attributes


def record_request(
    flag_key: str,
    variant: str | None,
    duration_s: float,
    status_code: int,
    *,
    meter_provider: MeterProvider | None = None,
    method: str | None = None,
    route: str | None = None,
    **attributes: AttributeValue,
) -> None:
    """Record one served request in ``http.server.request.duration`` (seconds).

    Use it where :class:`CanaryMiddleware` does not fit: another server, or to time only the
    code path the flag switches. ``variant`` is the variant the flag gave this request
    (``"on"`` is the canary cohort, ``"off"`` the baseline; :func:`current_variant` knows it);
    ``None`` records the request without a variant, which no cohort signal counts.
    ``method`` and ``route`` fill ``http.request.method`` and ``http.route``; other
    semantic-convention attributes go in ``attributes`` (their names hold dots, so pass them
    as ``**{"server.address": "a6"}``).

    >>> record_request("dataservice-read-canary", "on", 0.042, 200, method="GET",
    ...                route="/api/v6/providers/{id}/dashboard")  # doctest: +SKIP
    """
    _INSTRUMENTS.get(meter_provider).request_duration.record(
        duration_s, _request_attributes(flag_key, variant, status_code, method, route, attributes)
    )


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class CanaryMiddleware:
    """Pure-ASGI middleware: records ``http.server.request.duration`` per request, by variant.

    Wrap the application (any ASGI framework, no dependency on one)::

        app = CanaryMiddleware(app, flag_key="dataservice-read-canary")

    Each HTTP request gets a fresh :func:`variant_scope`; after the app ran, the variant that
    ``flag_key`` gave this request (remembered by the ``MetricsHook``) labels the measurement.
    The status is the one the app sent; an exception is recorded as 500 and re-raised; a
    request cancelled before completion (the client went away) is not recorded.

    Requests that never evaluated the flag (health checks, other routes) are not recorded by
    default: they belong to neither cohort, and a series labelled with a flag they never
    asked would mislead. ``record_unevaluated=True`` records them without a variant.
    Several middlewares (one per flag) share one scope per request.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        flag_key: str,
        meter_provider: MeterProvider | None = None,
        record_unevaluated: bool = False,
    ) -> None:
        self.app = app
        self.flag_key = flag_key
        self.record_unevaluated = record_unevaluated
        self._histogram = _INSTRUMENTS.get(meter_provider).request_duration

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app for one ASGI connection; HTTP requests are measured."""
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        box: dict[str, str] | None = scope.get(_SCOPE_KEY)
        if box is None:
            box = {}
            scope[_SCOPE_KEY] = box
        token = _VARIANTS.set(box)
        status: int | None = None

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message.get("type") == "http.response.start":
                status = int(message.get("status", 500))
            await send(message)

        start = perf_counter()
        try:
            await self.app(scope, receive, send_and_watch)
        except Exception:
            self._record(scope, box, 500, perf_counter() - start)
            raise
        else:
            # An app that returned without starting a response gets a 500 from the server.
            self._record(scope, box, 500 if status is None else status, perf_counter() - start)
        finally:
            _VARIANTS.reset(token)

    def _record(self, scope: Scope, box: dict[str, str], status: int, duration_s: float) -> None:
        variant = box.get(self.flag_key)
        if variant is None and not self.record_unevaluated:
            return
        try:
            route = getattr(scope.get("route"), "path", None)  # Starlette/FastAPI set it
            method = scope.get("method")
            attributes = _request_attributes(
                self.flag_key,
                variant,
                status,
                method if isinstance(method, str) else None,
                route if isinstance(route, str) else None,
                {},
            )
            self._histogram.record(duration_s, attributes)
        except Exception:  # a metric must never replace the app's answer or exception
            log.exception("could not record the request of %s", self.flag_key)


# --------------------------------------------------------------------------- shadow compare


class SupportsRandom(Protocol):
    """What :func:`shadow_compare` needs of ``rng``: ``random.Random`` fits."""

    def random(self) -> float:
        """A float in [0, 1)."""
        ...


class _ModuleRandom:
    """The ``random`` module's shared generator as a :class:`SupportsRandom`."""

    def random(self) -> float:
        return random.random()


_RANDOM: Final[SupportsRandom] = _ModuleRandom()


def shadow_compare(
    flag_key: str,
    primary: T,
    shadow: Callable[[], object] | object,
    *,
    compare: Callable[[Any, Any], object] = operator.eq,
    sample_rate: float = 1.0,
    meter_provider: MeterProvider | None = None,
    rng: SupportsRandom | None = None,
) -> T:
    """Compare the served result with the other path's and count discrepancies; return ``primary``.

    Use it while a canary runs to prove the new path answers like the old one: serve
    ``primary``, give the other path as ``shadow`` (a value, or a zero-argument callable that
    is only called when this call is sampled). A sampled call adds 1 to
    ``canary.ledger.comparisons``; it adds 1 to ``canary.ledger.mismatches`` when
    ``compare(primary, shadow_value)`` is false, **or when the shadow (or ``compare``) raises**:
    a path that fails where the served one succeeded is a discrepancy, and the
    ``ledger_mismatch`` trigger should see it. Values are never logged (they may be personal
    data); the exception type is.

    It never changes what the caller returns and never raises into the request: any error is
    logged and counted. ``sample_rate`` (clamped to [0, 1]) is the share of calls compared;
    ``rng`` (``random.Random`` by default) makes sampling reproducible in tests.

    >>> rows = shadow_compare("dataservice-read-canary", sql_rows,
    ...                       lambda: dataservice.get(provider_id), sample_rate=0.1)
    ... # doctest: +SKIP
    """
    try:
        if not sample_rate > 0.0:  # also NaN
            return primary
        if sample_rate < 1.0 and (rng or _RANDOM).random() >= sample_rate:
            return primary
        instruments = _INSTRUMENTS.get(meter_provider)
        attributes = {_FLAG_KEY: flag_key}
        instruments.comparisons.add(1, attributes)
        try:
            value = shadow() if callable(shadow) else shadow
            same = bool(compare(primary, value))
        except Exception as exc:
            log.warning(
                "%s: shadow path failed (%s): counted as a mismatch", flag_key, type(exc).__name__
            )
            same = False
        if not same:
            log.warning("%s: shadow result differs from the served one", flag_key)
            instruments.mismatches.add(1, attributes)
    except Exception:
        log.exception("%s: shadow comparison could not be recorded", flag_key)
    return primary


# --------------------------------------------------------------------------- event loop lag


class EventLoopLagMonitor:
    """Measure asyncio event-loop lag: how much later than asked a sleep wakes up.

    A task sleeps ``interval_s`` in a loop and records each oversleep in the histogram
    ``canary.event_loop.lag`` (seconds); ``max_lag_s`` is the worst seen since ``start()``.
    Blocking code on the loop (a sync driver, CPU work) shows up here before it shows in
    request latency. Start it inside the running loop, e.g. in the app's lifespan::

        monitor = EventLoopLagMonitor()
        await monitor.start()
        ...
        await monitor.stop()

    or ``async with EventLoopLagMonitor():``.
    """

    def __init__(
        self, interval_s: float = 0.1, *, meter_provider: MeterProvider | None = None
    ) -> None:
        if not interval_s > 0 or math.isinf(interval_s):
            raise ValueError(f"interval_s must be a positive number of seconds, got {interval_s}")
        self.interval_s = float(interval_s)
        mp = meter_provider if meter_provider is not None else get_meter_provider()
        self._histogram = mp.get_meter(METER_NAME).create_histogram(
            EVENT_LOOP_LAG_NAME,
            unit="s",
            description="How much later than asked the event loop woke a sleeping task.",
            explicit_bucket_boundaries_advisory=DEFAULT_LATENCY_BOUNDS_S,
        )
        self._task: asyncio.Task[None] | None = None
        self._max_lag_s = 0.0

    @property
    def max_lag_s(self) -> float:
        """The largest lag measured since the last ``start()`` (0.0 before any)."""
        return self._max_lag_s

    @property
    def running(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start measuring on the running loop (a second call while running does nothing)."""
        if self.running:
            return
        self._max_lag_s = 0.0
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="openfeature-canary-event-loop-lag"
        )

    async def stop(self) -> None:
        """Stop measuring and wait for the task to end."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():  # the caller itself is being cancelled
                raise

    async def __aenter__(self) -> EventLoopLagMonitor:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.interval_s
        while True:
            start = loop.time()
            await asyncio.sleep(interval)
            lag = max(0.0, loop.time() - start - interval)
            if lag > self._max_lag_s:
                self._max_lag_s = lag
            self._histogram.record(lag)


# --------------------------------------------------------------------------- telemetry ingest


class IngestInstruments:
    """Counters of the telemetry-ingest client: events sent and events accepted.

    The ``telemetry_acceptance`` signal is ``accepted / sent``; the ingest client calls
    ``sent(n)`` when it posts a batch of ``n`` events and ``accepted(n)`` for those the
    ingest acknowledged::

        counters = IngestInstruments(meter_provider)
        counters.sent(len(batch))
        counters.accepted(len(batch))     # after a 2xx
    """

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        mp = meter_provider if meter_provider is not None else get_meter_provider()
        meter = mp.get_meter(METER_NAME)
        self._sent = meter.create_counter(
            TELEMETRY_SENT_NAME, unit="{event}", description="Events posted to the ingest."
        )
        self._accepted = meter.create_counter(
            TELEMETRY_ACCEPTED_NAME,
            unit="{event}",
            description="Events the ingest acknowledged.",
        )

    def sent(self, count: int = 1) -> None:
        """Count ``count`` events posted (``ValueError`` if negative)."""
        self._sent.add(_count(count))

    def accepted(self, count: int = 1) -> None:
        """Count ``count`` events acknowledged (``ValueError`` if negative)."""
        self._accepted.add(_count(count))


def _count(count: int) -> int:
    if count < 0:
        raise ValueError(f"an event count cannot be negative, got {count}")
    return count
