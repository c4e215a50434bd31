"""The provider's constructor arguments that cannot all be honoured, each a one-line error."""

from __future__ import annotations

from opentelemetry.metrics import MeterProvider

from openfeature_canary.signals import SignalSource
from openfeature_canary.telemetry import Telemetry

__all__ = ["check_arguments"]


def check_arguments(
    telemetry: Telemetry | None,
    signals: SignalSource | None,
    meter_provider: MeterProvider | None,
    max_staleness: float,
    refresh_interval: float | None,
) -> None:
    """Arguments that could not all be honoured are an error, named in one line."""
    if telemetry is not None and not isinstance(telemetry, Telemetry):
        raise TypeError(
            "CanaryProvider: telemetry= takes what setup_telemetry() returns, got "
            f"{type(telemetry).__name__}"
        )
    if telemetry is not None and signals is not None:
        raise ValueError("CanaryProvider: give telemetry= or signals=, not both")
    if telemetry is not None and meter_provider not in (None, telemetry.meter_provider):
        raise ValueError(
            "CanaryProvider: meter_provider= differs from telemetry.meter_provider; "
            "give telemetry= alone"
        )
    if max_staleness < 0 or (refresh_interval is not None and refresh_interval <= 0):
        raise ValueError(
            "CanaryProvider: max_staleness must be >= 0 and refresh_interval > 0, got "
            f"{max_staleness} and {refresh_interval}"
        )
