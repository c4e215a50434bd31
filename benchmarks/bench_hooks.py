"""What ``MetricsHook`` costs per flag evaluation, measured the way a service runs.

Run: ``python benchmarks/bench_hooks.py [--rounds 15] [--size 2000]``

Every scenario evaluates a boolean flag through a real OpenFeature client, with the
application's ``MeterProvider`` holding two readers (an ``InMemoryMetricReader``, as the canary
signals use, and a ``PrometheusMetricReader`` on its own registry). A timed round is ``size``
evaluations **plus** one collection (``reader.get_metrics_data()``) **plus** one scrape
(``generate_latest(registry)``), so work deferred to collection time is paid for. Every
evaluation is counted and timed (no sampling); the script checks the exported counts at the
end. Scenarios run interleaved, round after round, and the median round is reported.

Scenarios:

* ``floor``: bare SDK with the SDK's ``InMemoryProvider``, no hook;
* ``canary``: ``CanaryProvider`` (flag at 5 %), no hook;
* ``canary+MetricsHook``: ours;
* ``canary+naive``: a hook that records five OpenTelemetry instruments per evaluation
  (active count up and down, requests, success, duration), as a straightforward port of the
  other SDKs' metrics hooks would.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.contrib.hook.canary import MetricsHook
from openfeature.contrib.provider.canary import CanaryProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import FlagEvaluationDetails, FlagValueType
from openfeature.hook import Hook, HookContext, HookHints
from openfeature.provider import FeatureProvider
from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import MeterProvider as APIMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)
from prometheus_client import CollectorRegistry, generate_latest

ROOT = Path(__file__).resolve().parent.parent
PLAN = ROOT / "examples" / "canary_plan.toml"
FLAG = "dataservice-read-canary"

_START = "bench.naive.start"


class NaiveMetricsHook(Hook):
    """Five synchronous OpenTelemetry instruments touched per evaluation."""

    def __init__(self, meter_provider: APIMeterProvider) -> None:
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


@dataclass
class Scenario:
    """One client with its own provider, hooks and application meter provider."""

    name: str
    client: OpenFeatureClient
    reader: InMemoryMetricReader
    registry: CollectorRegistry
    flag: str
    rounds_s: list[float] = field(default_factory=list)
    evaluations: int = 0


def _scenario(
    name: str, provider: FeatureProvider, flag: str, hook: Callable[[MeterProvider], Hook] | None
) -> Scenario:
    registry = CollectorRegistry()
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader, PrometheusMetricReader(registry=registry)])
    api.set_provider(provider, domain=name)
    client = api.get_client(domain=name)
    if hook is not None:
        client.add_hooks([hook(mp)])
    return Scenario(name, client, reader, registry, flag)


def _round(s: Scenario, contexts: list[EvaluationContext]) -> None:
    get = s.client.get_boolean_value
    flag = s.flag
    start = time.perf_counter()
    for ctx in contexts:
        get(flag, False, ctx)
    s.reader.get_metrics_data()
    generate_latest(s.registry)
    s.rounds_s.append(time.perf_counter() - start)
    s.evaluations += len(contexts)


def _sum_points(reader: InMemoryMetricReader, name: str) -> float:
    data = reader.get_metrics_data()
    total = 0.0
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name != name:
                    continue
                for point in metric.data.data_points:
                    if isinstance(point, HistogramDataPoint):
                        total += point.count
                    elif isinstance(point, NumberDataPoint):
                        total += point.value
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds per scenario")
    parser.add_argument("--size", type=int, default=2000, help="evaluations per round")
    args = parser.parse_args(argv)

    in_memory = InMemoryProvider({FLAG: InMemoryFlag("on", {"on": True, "off": False})})
    canary = [CanaryProvider(PLAN, name="CanaryProvider") for _ in range(3)]
    for provider in canary:
        provider.controller(FLAG).start()  # 5 %: both variants are served
    scenarios = [
        _scenario("floor", in_memory, FLAG, None),
        _scenario("canary", canary[0], FLAG, None),
        _scenario("canary+MetricsHook", canary[1], FLAG, MetricsHook),
        _scenario("canary+naive", canary[2], FLAG, NaiveMetricsHook),
    ]
    contexts = [EvaluationContext(targeting_key=f"user-{i}") for i in range(args.size)]
    for s in scenarios:  # warm-up: first-seen attribute sets, caches
        _round(s, contexts)
        s.rounds_s.clear()
    for _ in range(args.rounds):
        for s in scenarios:
            _round(s, contexts)

    per_eval = {s.name: statistics.median(s.rounds_s) / args.size * 1e6 for s in scenarios}
    floor = per_eval["floor"]
    print(
        f"per evaluation, median of {args.rounds} rounds of {args.size} evaluations "
        "+ 1 collection + 1 scrape (2 readers)"
    )
    for name, us in per_eval.items():
        print(f"  {name:<22} {us:7.2f} µs   {us / floor:5.2f}x floor")
    base = per_eval["canary"]
    ours = per_eval["canary+MetricsHook"] - base
    naive = per_eval["canary+naive"] - base
    print(f"  added by MetricsHook   {ours:7.2f} µs")
    print(f"  added by naive hook    {naive:7.2f} µs")
    print(f"  added-cost ratio ours/naive: {ours / naive:.2f}")

    ok = True
    for s in scenarios[2:]:
        requests = _sum_points(s.reader, "feature_flag.evaluation_requests_total")
        timed = _sum_points(s.reader, "feature_flag.evaluation.duration")
        exact = requests == timed == s.evaluations
        ok &= exact
        print(
            f"  {s.name}: {s.evaluations} evaluations, {requests:.0f} counted, "
            f"{timed:.0f} timed -> {'exact' if exact else 'MISMATCH'}"
        )
    api.shutdown()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
