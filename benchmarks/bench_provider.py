"""How much does a canary flag cost per evaluation?

Run: ``python benchmarks/bench_provider.py [--calls N] [--repeats R]``

Measures, in one run and on the same machine state:

- ``client.get_boolean_value`` through ``CanaryProvider`` at 5 % (the SPLIT path: a murmur3 hash
  per call, targeting keys varied) against the same call through the SDK's ``InMemoryProvider``
  serving a static flag, both with no hooks registered; their ratio has a target of ≤ 1.10
  (the canary must cost about what any flag costs);
- ``CanaryProvider.resolve_boolean_details`` called directly (target ≤ 1.5 µs per call).

Evaluation contexts are built before the timed loops. Each figure is the median of several
repeats after a warm-up; batches of the two clients are interleaved so that frequency scaling or
a noisy neighbour hits both alike.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from openfeature import api
from openfeature.contrib.provider.canary import CanaryProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider

from openfeature_canary import ManualClock, load_plan

FLAG = "dataservice-read-canary"
PLAN = Path(__file__).resolve().parent.parent / "examples" / "canary_plan.toml"
TARGET_RATIO = 1.10
TARGET_RAW_US = 1.5


def time_per_call_ns(call: Callable[[Any], object], items: list[Any], calls: int) -> float:
    """Nanoseconds per call of ``call`` over ``calls`` calls cycling through ``items``
    (garbage collection off while timing). Shared with ``bench_bucketing.py``."""
    n = len(items)
    rounds, rest = divmod(calls, n)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        for _ in range(rounds):
            for item in items:
                call(item)
        for item in items[:rest]:
            call(item)
        elapsed = time.perf_counter_ns() - start
    finally:
        if gc_was_enabled:
            gc.enable()
    return elapsed / calls


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a short table; exit 1 when a target is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=20_000, help="calls per timed batch")
    parser.add_argument("--repeats", type=int, default=9, help="timed batches per subject")
    parser.add_argument("--units", type=int, default=1000, help="distinct targeting keys")
    args = parser.parse_args(argv)

    canary = CanaryProvider(load_plan(PLAN), clock=ManualClock(), environ={})
    canary.controller(FLAG).start()  # stage 1, 5 %: the SPLIT path
    static = InMemoryProvider({FLAG: InMemoryFlag("on", {"on": True, "off": False})})
    api.clear_hooks()
    api.set_provider_and_wait(canary, domain="bench-canary")
    api.set_provider_and_wait(static, domain="bench-static")
    canary_client = api.get_client("bench-canary")
    static_client = api.get_client("bench-static")

    ctxs = [EvaluationContext(targeting_key=f"req-{i:08x}") for i in range(args.units)]
    probe = [canary.resolve_boolean_details(FLAG, False, c) for c in ctxs]
    assert {str(d.reason) for d in probe} == {"SPLIT"}, "the canary is not on its SPLIT path"
    share = sum(d.value for d in probe) / len(probe)

    def via_canary(ctx: EvaluationContext) -> object:
        return canary_client.get_boolean_value(FLAG, False, ctx)

    def via_static(ctx: EvaluationContext) -> object:
        return static_client.get_boolean_value(FLAG, False, ctx)

    resolve = canary.resolve_boolean_details

    def raw(ctx: EvaluationContext) -> object:
        return resolve(FLAG, False, ctx)

    subjects = {"canary": via_canary, "static": via_static, "raw": raw}
    for fn in subjects.values():  # warm-up
        time_per_call_ns(fn, ctxs, args.calls // 4)
    samples: dict[str, list[float]] = {k: [] for k in subjects}
    for _ in range(args.repeats):
        for name, fn in subjects.items():
            calls = args.calls * 10 if name == "raw" else args.calls
            samples[name].append(time_per_call_ns(fn, ctxs, calls))
    api.shutdown()
    api.clear_providers()

    med = {k: statistics.median(v) for k, v in samples.items()}
    ratio = med["canary"] / med["static"]
    raw_us = med["raw"] / 1000
    rows = [
        ("client.get_boolean_value, CanaryProvider 5 %", med["canary"], samples["canary"]),
        ("client.get_boolean_value, InMemoryProvider", med["static"], samples["static"]),
        ("CanaryProvider.resolve_boolean_details", med["raw"], samples["raw"]),
    ]
    print(
        f"python {sys.version.split()[0]}, {args.repeats} repeats x {args.calls} calls, "
        f"{args.units} targeting keys, canary share on this sample {share:.1%}"
    )
    print(f"{'subject':<48} {'median µs':>10} {'min µs':>8} {'max µs':>8}")
    for label, m, s in rows:
        print(f"{label:<48} {m / 1000:>10.3f} {min(s) / 1000:>8.3f} {max(s) / 1000:>8.3f}")
    ok_ratio = ratio <= TARGET_RATIO
    ok_raw = raw_us <= TARGET_RAW_US
    print(
        f"{'ratio canary / in-memory':<48} {ratio:>10.3f}   target ≤ {TARGET_RATIO:.2f} "
        f"{'ok' if ok_ratio else 'MISSED'}"
    )
    print(
        f"{'raw resolve (µs)':<48} {raw_us:>10.3f}   target ≤ {TARGET_RAW_US:.2f} "
        f"{'ok' if ok_raw else 'MISSED'}"
    )
    return 0 if ok_ratio and ok_raw else 1


if __name__ == "__main__":
    sys.exit(main())
