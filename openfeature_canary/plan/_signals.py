"""The signal vocabulary (spec §6): the built-in signal names, the two cohorts' variants and the
quantile each latency signal reads; shared by the plan validator, the sources and the reports."""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

__all__ = [
    "BASELINE",
    "BASELINE_PREFIX",
    "CANARY",
    "COHORT_SIGNALS",
    "FLAG_SIGNALS",
    "KNOWN_SIGNALS",
    "MS_SIGNALS",
    "QUANTILES",
    "RATE_SIGNALS",
    "split_signal",
]

#: The canary cohort's variant (the flag serves the new path).
CANARY: Final = "on"
#: The baseline cohort's variant (the old path).
BASELINE: Final = "off"
#: A cohort signal's name with this prefix is read on the baseline cohort.
BASELINE_PREFIX: Final = "baseline_"

#: Signals computed per flag and cohort; the bare name is the canary cohort (variant ``on``),
#: ``baseline_<name>`` the ``off`` cohort.
COHORT_SIGNALS: Final = (
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "error_rate",
    "requests",
)
#: Signals that belong to the flag or the process, not to a cohort.
FLAG_SIGNALS: Final = ("ledger_mismatches", "telemetry_acceptance", "event_loop_lag_ms")
KNOWN_SIGNALS: Final = frozenset(
    (*COHORT_SIGNALS, *(f"{BASELINE_PREFIX}{s}" for s in COHORT_SIGNALS), *FLAG_SIGNALS)
)
#: Signals measured in milliseconds (their thresholds become histogram bounds).
MS_SIGNALS: Final = frozenset(s for s in KNOWN_SIGNALS if s.endswith("_ms"))
#: Signals that are ratios in [0, 1].
RATE_SIGNALS: Final = frozenset(("error_rate", "baseline_error_rate", "telemetry_acceptance"))
#: The quantile each latency signal reads.
QUANTILES: Final = MappingProxyType(
    {"latency_p50_ms": 0.5, "latency_p95_ms": 0.95, "latency_p99_ms": 0.99}
)


def split_signal(signal: str) -> tuple[str, str]:
    """``(variant, base name)`` of a built-in signal; ``ValueError`` for an unknown name.

    >>> split_signal("baseline_error_rate")
    ('off', 'error_rate')
    """
    if signal not in KNOWN_SIGNALS:
        raise ValueError(f"unknown signal {signal!r} (known: {', '.join(sorted(KNOWN_SIGNALS))})")
    if signal.startswith(BASELINE_PREFIX):
        return BASELINE, signal[len(BASELINE_PREFIX) :]
    return CANARY, signal
