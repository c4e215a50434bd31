"""The request and shadow-compare instruments, created once per meter provider."""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Final

from opentelemetry.metrics import Counter, Histogram, MeterProvider, get_meter_provider

from openfeature_canary._forksafe import renew_locks_after_fork
from openfeature_canary.instrumentation._names import (
    DEFAULT_LATENCY_BOUNDS_S,
    LEDGER_COMPARISONS_NAME,
    LEDGER_MISMATCHES_NAME,
    METER_NAME,
    REQUEST_DURATION_NAME,
)
from openfeature_canary.instrumentation._units import UnitRecorder

__all__ = ["INSTRUMENTS"]


@dataclass(frozen=True)
class _Instruments:
    request_duration: Histogram
    comparisons: Counter
    mismatches: Counter
    #: The 5xx responses' units, next to the histogram that counts them (same provider).
    units: UnitRecorder


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
        units=UnitRecorder(),
    )


class _InstrumentCache:
    """Instruments per meter provider, created once.

    The instruments are a cache (a miss recreates the same ones), needed because the API's
    proxy meter provider (before an SDK one is set) keeps every meter it hands out, so asking
    it per request would grow without bound. The unit recorder lives as long as its provider
    (weakly keyed), like the provider's own aggregation state.
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


INSTRUMENTS: Final = _InstrumentCache()
