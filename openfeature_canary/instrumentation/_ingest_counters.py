"""Counters of the telemetry-ingest client: events sent and accepted."""

from __future__ import annotations

from opentelemetry.metrics import MeterProvider, get_meter_provider

from openfeature_canary.instrumentation._names import (
    METER_NAME,
    TELEMETRY_ACCEPTED_NAME,
    TELEMETRY_SENT_NAME,
)

__all__ = ["IngestInstruments"]


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
