"""The naive metrics hook ``bench_hooks.py`` compares ``MetricsHook`` with: five synchronous
OpenTelemetry instruments touched per evaluation (active count up and down, requests, success
or error, duration), as a straight port of the other SDKs' metrics hooks would."""

from __future__ import annotations

import time

from openfeature.flag_evaluation import FlagEvaluationDetails, FlagValueType
from openfeature.hook import Hook, HookContext, HookHints
from opentelemetry.metrics import MeterProvider

__all__ = ["NaiveMetricsHook"]

_START = "bench.naive.start"


class NaiveMetricsHook(Hook):
    """Five synchronous OpenTelemetry instruments touched per evaluation."""

    def __init__(self, meter_provider: MeterProvider) -> None:
        meter = meter_provider.get_meter("bench.naive")
        self.active = meter.create_up_down_counter("feature_flag.evaluation_active_count")
        self.requests = meter.create_counter("feature_flag.evaluation_requests_total")
        self.success = meter.create_counter("feature_flag.evaluation_success_total")
        self.errors = meter.create_counter("feature_flag.evaluation_error_total")
        self.duration = meter.create_histogram(
            "feature_flag.evaluation.duration",
            unit="s",
            explicit_bucket_boundaries_advisory=(0.00001, 0.0001, 0.001, 0.01, 0.1, 1.0),
        )

    def _flag_attrs(self, hook_context: HookContext) -> dict[str, str]:
        pm = hook_context.provider_metadata
        return {
            "feature_flag.key": hook_context.flag_key,
            "feature_flag.provider.name": pm.name if pm else "unknown",
        }

    def before(self, hook_context: HookContext, hints: HookHints) -> None:
        attrs = self._flag_attrs(hook_context)
        self.active.add(1, attrs)
        self.requests.add(1, attrs)
        hook_context.hook_data[_START] = time.perf_counter()

    def after(
        self,
        hook_context: HookContext,
        details: FlagEvaluationDetails[FlagValueType],
        hints: HookHints,
    ) -> None:
        attrs = self._flag_attrs(hook_context)
        attrs["feature_flag.result.variant"] = str(details.variant)
        attrs["feature_flag.result.reason"] = str(details.reason).lower()
        self.success.add(1, attrs)

    def error(self, hook_context: HookContext, exception: Exception, hints: HookHints) -> None:
        attrs = self._flag_attrs(hook_context)
        attrs["error.type"] = type(exception).__name__
        self.errors.add(1, attrs)

    def finally_after(
        self,
        hook_context: HookContext,
        details: FlagEvaluationDetails[FlagValueType],
        hints: HookHints,
    ) -> None:
        attrs = self._flag_attrs(hook_context)
        self.active.add(-1, attrs)
        start = hook_context.hook_data.get(_START)
        if start is not None:
            self.duration.record(time.perf_counter() - start, attrs)
