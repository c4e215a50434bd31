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

``CanaryProvider.track()`` records tracked events (``_tracking.py``; docs/metrics.md):
``feature_flag.tracking.events``, ``.valued``, ``.value`` and ``.value_squares`` (observable
counters by ``feature_flag.key``, ``feature_flag.result.variant`` and
``feature_flag.tracking.event``), and ``canary.tracking.dropped`` by ``reason``.

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
* The unit a request was bucketed by (``record_request(..., unit=)``, or the one the
  ``MetricsHook`` remembered for ``CanaryMiddleware``) is logged, hashed with
  :func:`unit_digest`, for 5xx responses only, in a small bounded per-process
  :class:`UnitRecorder` (never an attribute: one series per user would explode the metric);
  the in-process and fleet signal sources turn it into ``CohortCounts.error_units``.

Every helper takes ``meter_provider``; ``None`` means OpenTelemetry's global one
(``opentelemetry.metrics.get_meter_provider()``) at the time of the call or construction.
Histograms carry advisory bounds in seconds (:data:`DEFAULT_LATENCY_BOUNDS_S`);
``openfeature_canary.telemetry.setup_telemetry`` replaces them with Views that add every plan
threshold.
"""

from __future__ import annotations

from openfeature_canary.instrumentation._ingest_counters import IngestInstruments
from openfeature_canary.instrumentation._lag import EventLoopLagMonitor
from openfeature_canary.instrumentation._names import (
    DEFAULT_LATENCY_BOUNDS_S,
    EVENT_LOOP_LAG_NAME,
    LEDGER_COMPARISONS_NAME,
    LEDGER_MISMATCHES_NAME,
    METER_NAME,
    REQUEST_DURATION_NAME,
    TELEMETRY_ACCEPTED_NAME,
    TELEMETRY_SENT_NAME,
)
from openfeature_canary.instrumentation._requests import (
    ASGIApp,
    CanaryMiddleware,
    Message,
    Receive,
    Scope,
    Send,
    record_request,
)
from openfeature_canary.instrumentation._shadow import SupportsRandom, shadow_compare
from openfeature_canary.instrumentation._units import UnitLog, UnitRecorder, unit_digest
from openfeature_canary.instrumentation._variants import (
    UnitContext,
    bucketing_unit,
    current_unit,
    current_variant,
    remember_variant,
    variant_scope,
)

__all__ = [
    "DEFAULT_LATENCY_BOUNDS_S",
    "EVENT_LOOP_LAG_NAME",
    "LEDGER_COMPARISONS_NAME",
    "LEDGER_MISMATCHES_NAME",
    "METER_NAME",
    "REQUEST_DURATION_NAME",
    "TELEMETRY_ACCEPTED_NAME",
    "TELEMETRY_SENT_NAME",
    "ASGIApp",
    "CanaryMiddleware",
    "EventLoopLagMonitor",
    "IngestInstruments",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "SupportsRandom",
    "UnitContext",
    "UnitLog",
    "UnitRecorder",
    "bucketing_unit",
    "current_unit",
    "current_variant",
    "record_request",
    "remember_variant",
    "shadow_compare",
    "unit_digest",
    "variant_scope",
]
