"""The names of the built-in signals (spec §6), shared by the plan validator and the sources."""

from __future__ import annotations

from typing import Final

__all__ = ["COHORT_SIGNALS", "FLAG_SIGNALS", "KNOWN_SIGNALS", "MS_SIGNALS", "RATE_SIGNALS"]

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
    (*COHORT_SIGNALS, *(f"baseline_{s}" for s in COHORT_SIGNALS), *FLAG_SIGNALS)
)
#: Signals measured in milliseconds (their thresholds become histogram bounds).
MS_SIGNALS: Final = frozenset(s for s in KNOWN_SIGNALS if s.endswith("_ms"))
#: Signals that are ratios in [0, 1].
RATE_SIGNALS: Final = frozenset(("error_rate", "baseline_error_rate", "telemetry_acceptance"))
