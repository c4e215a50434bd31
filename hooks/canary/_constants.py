"""Instrument and attribute names of the OpenFeature hooks, in one place (spec §9).

The instrument names are the ones the other OpenFeature SDKs' OpenTelemetry hooks use; the
attribute keys follow the OpenTelemetry semantic conventions for feature flags.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ACTIVE_COUNT",
    "DURATION",
    "DURATION_BOUNDS_S",
    "ERROR_TOTAL",
    "ERROR_TYPE",
    "FLAG_KEY",
    "METER_NAME",
    "PROVIDER_NAME",
    "REQUESTS_TOTAL",
    "RESULT_REASON",
    "RESULT_VARIANT",
    "SUCCESS_TOTAL",
]

#: Instrumentation scope of the hooks' meter.
METER_NAME: Final = "openfeature.contrib.hook.canary"

REQUESTS_TOTAL: Final = "feature_flag.evaluation_requests_total"
SUCCESS_TOTAL: Final = "feature_flag.evaluation_success_total"
ERROR_TOTAL: Final = "feature_flag.evaluation_error_total"
ACTIVE_COUNT: Final = "feature_flag.evaluation_active_count"
DURATION: Final = "feature_flag.evaluation.duration"

FLAG_KEY: Final = "feature_flag.key"
PROVIDER_NAME: Final = "feature_flag.provider.name"
RESULT_VARIANT: Final = "feature_flag.result.variant"
RESULT_REASON: Final = "feature_flag.result.reason"
ERROR_TYPE: Final = "error.type"

#: Bounds (seconds) of the evaluation-duration histogram: an in-process evaluation takes
#: microseconds, a remote one (flagd RPC, a vendor's HTTP call) milliseconds.
DURATION_BOUNDS_S: Final[tuple[float, ...]] = (
    0.000005,
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
