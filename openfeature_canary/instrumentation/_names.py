"""What the application records is called: the instruments' and attributes' names, and the
default latency bounds."""

from __future__ import annotations

from typing import Final

__all__ = [
    "ATTR_DROP_REASON",
    "ATTR_FLAG_KEY",
    "ATTR_METHOD",
    "ATTR_ROUTE",
    "ATTR_STATUS",
    "ATTR_TRACKING_EVENT",
    "ATTR_VARIANT",
    "DEFAULT_LATENCY_BOUNDS_S",
    "EVENT_LOOP_LAG_NAME",
    "LEDGER_COMPARISONS_NAME",
    "LEDGER_MISMATCHES_NAME",
    "METER_NAME",
    "REQUEST_DURATION_NAME",
    "TELEMETRY_ACCEPTED_NAME",
    "TELEMETRY_SENT_NAME",
    "TRACKING_DROPPED_NAME",
    "TRACKING_EVENTS_NAME",
    "TRACKING_VALUED_NAME",
    "TRACKING_VALUE_NAME",
    "TRACKING_VALUE_SQUARES_NAME",
]

#: Instrumentation scope of the engine's meter.
METER_NAME: Final = "openfeature_canary"
REQUEST_DURATION_NAME: Final = "http.server.request.duration"
LEDGER_COMPARISONS_NAME: Final = "canary.ledger.comparisons"
LEDGER_MISMATCHES_NAME: Final = "canary.ledger.mismatches"
EVENT_LOOP_LAG_NAME: Final = "canary.event_loop.lag"
TELEMETRY_SENT_NAME: Final = "canary.telemetry.sent"
TELEMETRY_ACCEPTED_NAME: Final = "canary.telemetry.accepted"
#: What ``CanaryProvider.track()`` records per (flag, variant, event): events, events with a
#: value, the sum of the values and the sum of their squares (monotonic counters).
TRACKING_EVENTS_NAME: Final = "feature_flag.tracking.events"
TRACKING_VALUED_NAME: Final = "feature_flag.tracking.valued"
TRACKING_VALUE_NAME: Final = "feature_flag.tracking.value"
TRACKING_VALUE_SQUARES_NAME: Final = "feature_flag.tracking.value_squares"
#: Tracked events (or values) ``track()`` could not attribute, by ``reason``.
TRACKING_DROPPED_NAME: Final = "canary.tracking.dropped"

ATTR_FLAG_KEY: Final = "feature_flag.key"
ATTR_VARIANT: Final = "feature_flag.result.variant"
ATTR_STATUS: Final = "http.response.status_code"
ATTR_METHOD: Final = "http.request.method"
ATTR_ROUTE: Final = "http.route"
ATTR_TRACKING_EVENT: Final = "feature_flag.tracking.event"
ATTR_DROP_REASON: Final = "reason"


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
