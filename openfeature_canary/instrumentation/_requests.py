"""Recording HTTP requests: :func:`record_request` by hand, :class:`CanaryMiddleware` for an
ASGI app."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from time import perf_counter
from typing import Any

from opentelemetry.metrics import MeterProvider
from opentelemetry.util.types import AttributeValue

from openfeature_canary.instrumentation._instruments import INSTRUMENTS, _Instruments
from openfeature_canary.instrumentation._names import (
    ATTR_FLAG_KEY,
    ATTR_METHOD,
    ATTR_ROUTE,
    ATTR_STATUS,
    ATTR_VARIANT,
)
from openfeature_canary.instrumentation._variants import (
    SCOPE_KEY,
    VARIANTS,
    Remembered,
)

__all__ = ["ASGIApp", "CanaryMiddleware", "Message", "Receive", "Scope", "Send", "record_request"]

log = logging.getLogger("openfeature_canary")


def _request_attributes(
    flag_key: str,
    variant: str | None,
    status_code: int,
    method: str | None,
    route: str | None,
    extra: Mapping[str, AttributeValue],
) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {ATTR_FLAG_KEY: flag_key, ATTR_STATUS: int(status_code)}
    if variant is not None:
        attributes[ATTR_VARIANT] = variant
    if method is not None:
        attributes[ATTR_METHOD] = method
    if route is not None:
        attributes[ATTR_ROUTE] = route
    attributes.update(extra)
    return attributes


def _record(
    instruments: _Instruments,
    flag_key: str,
    duration_s: float,
    attributes: dict[str, AttributeValue],
    variant: str | None,
    status_code: int,
    unit: str | None,
) -> None:
    """The histogram point, then (5xx of a cohort only) the unit's log entry."""
    instruments.request_duration.record(duration_s, attributes)
    if variant is not None and int(status_code) // 100 == 5:
        instruments.units.record(flag_key, variant, unit)


def record_request(
    flag_key: str,
    variant: str | None,
    duration_s: float,
    status_code: int,
    *,
    meter_provider: MeterProvider | None = None,
    method: str | None = None,
    route: str | None = None,
    unit: str | None = None,
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

    ``unit`` is the unit the flag bucketed this request by (its targeting key, or the plan's
    ``bucket_by`` attribute; :func:`current_unit` knows it). It is never an attribute: for a
    5xx response only, its hash (``unit_digest``) goes to a small bounded per-process log, so
    the error comparison counts a user who fails again and again once. Without it, every 5xx
    counts as its own unit (docs/signals.md, "Erroring units").

    >>> record_request("dataservice-read-canary", "on", 0.042, 200, method="GET",
    ...                route="/api/v6/providers/{id}/dashboard", unit="user-42")  # doctest: +SKIP
    """
    attrs = _request_attributes(flag_key, variant, status_code, method, route, attributes)
    _record(
        INSTRUMENTS.get(meter_provider), flag_key, duration_s, attrs, variant, status_code, unit
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
    ``flag_key`` gave this request (remembered by the ``MetricsHook``) labels the measurement,
    and the unit the hook remembered with it is logged, hashed, when the answer is a 5xx (see
    :func:`record_request`'s ``unit``).
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
        self._instruments = INSTRUMENTS.get(meter_provider)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app for one ASGI connection; HTTP requests are measured."""
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        box: dict[str, Remembered] | None = scope.get(SCOPE_KEY)
        if box is None:
            box = {}
            scope[SCOPE_KEY] = box
        token = VARIANTS.set(box)
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
            VARIANTS.reset(token)

    def _record(
        self, scope: Scope, box: dict[str, Remembered], status: int, duration_s: float
    ) -> None:
        variant, unit = box.get(self.flag_key, (None, None))
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
            _record(self._instruments, self.flag_key, duration_s, attributes, variant, status, unit)
        except Exception:  # a metric must never replace the app's answer or exception
            log.exception("could not record the request of %s", self.flag_key)
