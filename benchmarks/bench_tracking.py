"""How much does ``client.track(...)`` cost, against an evaluation with ``MetricsHook``?

Run: ``python benchmarks/bench_tracking.py [--calls N] [--repeats R]``

Measures, in one run and on the same machine state (one real OpenTelemetry SDK meter provider
with an in-memory reader):

- ``client.get_boolean_value`` through ``CanaryProvider`` at 5 % with ``MetricsHook`` (the
  provider's own, ``telemetry``-style) — the reference;
- ``client.track("opened", ctx, TrackingEventDetails(value=…))`` with one guarded flag under a
  live split, and with two guarded flags (both hashed, both recorded);

and prints each ``track`` cost as a ratio of the reference (target ≤ 1.0: the issue's "cost per
``track()`` call ≤ the cost of one evaluation with MetricsHook"). Batches of the subjects are
interleaved; each figure is the median of the repeats after a warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomllib
from bench_provider import time_per_call_ns
from openfeature import api
from openfeature.contrib.hook.canary import MetricsHook
from openfeature.contrib.provider.canary import CanaryProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.track import TrackingEventDetails
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from openfeature_canary import ManualClock, parse_plan
from openfeature_canary.instrumentation._tracking import TrackingRecorder, tracking_recorder

F1 = "dataservice-read-canary"
F2 = "dataservice-user-read-canary"
PLAN = Path(__file__).resolve().parent.parent / "examples" / "canary_plan.toml"
TARGET_RATIO = 1.0


def _client(guarded: tuple[str, ...], domain: str, hook: bool) -> tuple[Any, TrackingRecorder]:
    data = tomllib.loads(PLAN.read_text())
    for key in guarded:
        data["flags"][key]["guards"] = [{"event": "opened"}]
    data["flags"][F2].pop("after", None)  # both flags under a split at once
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    provider = CanaryProvider(
        parse_plan(data),
        clock=ManualClock(),
        environ={},
        meter_provider=meter_provider,
        reports_dir=tempfile.mkdtemp(prefix="bench-tracking-"),  # not the current folder
    )
    api.set_provider_and_wait(provider, domain=domain)
    for key in (F1, F2):
        provider.controller(key).start()  # stage 1, 5 %: the SPLIT path
    client = api.get_client(domain)
    if hook:
        client.add_hooks([MetricsHook(meter_provider)])
    return client, tracking_recorder(meter_provider)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a short table; exit 1 when the target is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=20_000, help="calls per timed batch")
    parser.add_argument("--repeats", type=int, default=9, help="timed batches per subject")
    parser.add_argument("--units", type=int, default=1000, help="distinct targeting keys")
    args = parser.parse_args(argv)

    api.clear_hooks()
    evaluating, _ = _client((F1,), "bench-eval", hook=True)
    one, _ = _client((F1,), "bench-track-1", hook=False)
    two, recorder = _client((F1, F2), "bench-track-2", hook=False)
    ctxs = [EvaluationContext(targeting_key=f"req-{i:08x}") for i in range(args.units)]
    details = TrackingEventDetails(value=2.5)
    subjects: dict[str, Callable[[Any], object]] = {
        "get_boolean_value + MetricsHook": lambda c: evaluating.get_boolean_value(F1, False, c),
        "track, 1 guarded flag": lambda c: one.track("opened", c, details),
        "track, 2 guarded flags": lambda c: two.track("opened", c, details),
    }
    for call in subjects.values():  # warm-up
        time_per_call_ns(call, ctxs, args.calls // 4)
    samples: dict[str, list[float]] = {name: [] for name in subjects}
    for _ in range(args.repeats):
        for name, call in subjects.items():
            samples[name].append(time_per_call_ns(call, ctxs, args.calls))
    medians = {name: statistics.median(s) / 1000 for name, s in samples.items()}
    reference = medians["get_boolean_value + MetricsHook"]
    print(f"{'subject':<34} {'µs/call':>8} {'ratio':>6}")
    missed = False
    for name, us in medians.items():
        ratio = us / reference
        print(f"{name:<34} {us:8.2f} {ratio:6.2f}")
        missed |= name.startswith("track") and ratio > TARGET_RATIO
    recorded = {flag for flag, _, _ in recorder.totals()}
    assert recorded == {F1, F2}, f"both flags must record (a live split), got {recorded}"
    print(f"target: each track ratio <= {TARGET_RATIO:.2f}: {'MISSED' if missed else 'met'}")
    api.shutdown()
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
