"""What ``MetricsHook`` costs per flag evaluation, measured the way a service runs.

Run: ``python benchmarks/bench_hooks.py [--rounds 15] [--size 2000] [--threads 2000]
[--scale-threads 8] [--baseline OLD_METRICS_PY]``

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
  other SDKs' metrics hooks would;
* ``canary+baseline`` (with ``--baseline FILE``): the ``MetricsHook`` of another version of
  ``hooks/canary/metrics.py``, e.g. ``git show HEAD:hooks/canary/metrics.py > /tmp/old.py``,
  so that a change to the hook is measured in the same process, round after round.

Then, scaling: the floor and ``canary+MetricsHook`` evaluate the same ``size`` evaluations
with 1 thread and split over ``--scale-threads`` (8) threads, interleaved round after round
(plus the collection and scrape); a scenario's scaling is its 8-thread rate ÷ its 1-thread
rate, and the hook's scaling ÷ the floor's is the target (≥ 0.8): the GIL lets no Python
workload scale past one core, so the floor's scaling is what "no added contention" looks like.

Then, threads: what one collection (both readers) costs with one evaluating thread, and again
after ``--threads`` short-lived threads (run in batches) evaluated a few times each and ended,
as under a thread-per-request server (and the same for the baseline hook); the ratio should
stay near 1 (the counts of ended threads are folded into one total) and the counts must stay
exact.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from naive_hook import NaiveMetricsHook
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.contrib.hook.canary import MetricsHook
from openfeature.contrib.provider.canary import CanaryProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.hook import Hook
from openfeature.provider import FeatureProvider
from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider
from opentelemetry.exporter.prometheus import PrometheusMetricReader
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
    api.set_provider_and_wait(provider, domain=name)
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


def _threaded_round(
    s: Scenario, contexts: list[EvaluationContext], threads: int
) -> tuple[float, float]:
    """Wall and process CPU seconds for ``contexts`` evaluations split over ``threads``
    threads, plus a collection and a scrape; the threads start before the clocks and are
    released together."""
    get = s.client.get_boolean_value
    flag = s.flag
    share = len(contexts) // threads
    gate = threading.Barrier(threads + 1)

    def work(mine: list[EvaluationContext]) -> None:
        gate.wait()
        for ctx in mine:
            get(flag, False, ctx)

    workers = [
        threading.Thread(target=work, args=(contexts[i * share : (i + 1) * share],))
        for i in range(threads)
    ]
    for w in workers:
        w.start()
    gate.wait()
    start, cpu = time.perf_counter(), time.process_time()
    for w in workers:
        w.join()
    s.reader.get_metrics_data()
    generate_latest(s.registry)
    s.evaluations += share * threads
    return time.perf_counter() - start, time.process_time() - cpu


def bench_scaling(
    scenarios: list[Scenario], contexts: list[EvaluationContext], threads: int, rounds: int
) -> dict[str, float]:
    """Each scenario's evaluation rate with ``threads`` threads ÷ with one (median rounds), by
    the wall clock (the target), and per CPU second of the process (what the threads burn
    contending, whatever else the machine runs: a loaded machine skews the wall clock's)."""
    n = len(contexts) // threads * threads
    timed: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for _ in range(rounds):
        for s in scenarios:
            for count in (1, threads):
                timed.setdefault((s.name, count), []).append(
                    _threaded_round(s, contexts[:n], count)
                )
    print(
        f"\nscaling: {n} evaluations on 1 thread and on {threads} threads (+ 1 collection "
        f"+ 1 scrape), median of {rounds} interleaved rounds; wall clock, and per CPU second"
    )
    scaling = {}
    for s in scenarios:
        one, many = timed[(s.name, 1)], timed[(s.name, threads)]
        wall = statistics.median(w for w, _ in one) / statistics.median(w for w, _ in many)
        cpu = statistics.median(c for _, c in one) / statistics.median(c for _, c in many)
        scaling[s.name] = wall
        print(
            f"  {s.name:<22} 1 thread {n / statistics.median(w for w, _ in one):9.0f}/s   "
            f"{threads} threads {n / statistics.median(w for w, _ in many):9.0f}/s   "
            f"scaling {wall:5.2f}   per CPU second {cpu:5.2f}"
        )
    return scaling


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


def _collect_s(s: Scenario) -> float:
    """Seconds one collection takes: the in-memory reader's and a Prometheus scrape."""
    start = time.perf_counter()
    s.reader.get_metrics_data()
    generate_latest(s.registry)
    return time.perf_counter() - start


def _median_collect_us(s: Scenario, repeats: int) -> float:
    return statistics.median(_collect_s(s) for _ in range(repeats)) * 1e6


def _load_hook(path: Path) -> Callable[[MeterProvider], Hook]:
    """``MetricsHook`` of another version of the hook's module (it imports as the real one)."""
    spec = importlib.util.spec_from_file_location("bench_baseline_metrics", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    hook: Callable[[MeterProvider], Hook] = module.MetricsHook
    return hook


def bench_threads(
    label: str,
    hook: Callable[[MeterProvider], Hook],
    threads: int,
    batch: int = 50,
    per_thread: int = 5,
    repeats: int = 200,
) -> bool:
    """Collection cost with one evaluating thread, then after ``threads`` short-lived ones."""
    provider = CanaryProvider(PLAN, name="CanaryProvider")
    provider.controller(FLAG).start()
    s = _scenario(f"threads+{label}", provider, FLAG, hook)
    get = s.client.get_boolean_value
    user = iter(range(10**9))

    def evaluate(times: int = per_thread) -> None:
        for _ in range(times):
            get(FLAG, False, EvaluationContext(targeting_key=f"user-{next(user)}"))

    # The collecting thread evaluates too, as a service's main thread may, enough to have
    # seen both variants: the time series are then the same before and after the threads.
    evaluate(400)
    one_thread = _median_collect_us(s, repeats)
    for first in range(0, threads, batch):
        workers = [threading.Thread(target=evaluate) for _ in range(min(batch, threads - first))]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    first_after = _collect_s(s) * 1e6  # the first collection also folds the ended threads
    after = _median_collect_us(s, repeats)

    print(
        f"  {label:<12} 1 evaluating thread {one_thread:6.0f} µs; after them {after:6.0f} µs "
        f"({after / one_thread:5.2f}x); the first collection after them {first_after:6.0f} µs"
    )
    evaluations = 400 + threads * per_thread
    requests = _sum_points(s.reader, "feature_flag.evaluation_requests_total")
    timed = _sum_points(s.reader, "feature_flag.evaluation.duration")
    active = _sum_points(s.reader, "feature_flag.evaluation_active_count")
    exact = requests == timed == evaluations and active == 0
    print(
        f"  {'':<12} {evaluations} evaluations, {requests:.0f} counted, {timed:.0f} timed, "
        f"{active:.0f} in flight -> {'exact' if exact else 'MISMATCH'}"
    )
    return exact


def _ok(met: bool) -> str:
    return "ok" if met else "MISSED"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds per scenario")
    parser.add_argument("--size", type=int, default=2000, help="evaluations per round")
    parser.add_argument(
        "--threads", type=int, default=2000, help="short-lived threads (0: skip that part)"
    )
    parser.add_argument(
        "--scale-threads", type=int, default=8, help="threads of the scaling part (0: skip)"
    )
    parser.add_argument(
        "--baseline", type=Path, help="another metrics.py whose MetricsHook to compare with"
    )
    args = parser.parse_args(argv)
    baseline = _load_hook(args.baseline) if args.baseline else None

    in_memory = InMemoryProvider({FLAG: InMemoryFlag("on", {"on": True, "off": False})})
    canary = [CanaryProvider(PLAN, name="CanaryProvider") for _ in range(4)]
    for provider in canary:
        provider.controller(FLAG).start()  # 5 %: both variants are served
    scenarios = [
        _scenario("floor", in_memory, FLAG, None),
        _scenario("canary", canary[0], FLAG, None),
        _scenario("canary+MetricsHook", canary[1], FLAG, MetricsHook),
        _scenario("canary+naive", canary[2], FLAG, NaiveMetricsHook),
    ]
    if baseline is not None:
        scenarios.append(_scenario("canary+baseline", canary[3], FLAG, baseline))
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
    if baseline is not None:
        old = per_eval["canary+baseline"] - base
        print(f"  added by baseline      {old:7.2f} µs")
        print(
            f"  MetricsHook/baseline: whole evaluation "
            f"{per_eval['canary+MetricsHook'] / per_eval['canary+baseline']:.3f}, "
            f"added cost {ours / old:.3f}"
        )

    ratio = per_eval["canary+MetricsHook"] / floor
    print(f"  canary+MetricsHook ÷ floor: {ratio:.2f}   target ≤ 2.5 {_ok(ratio <= 2.5)}")
    if args.scale_threads:
        # floor, canary+MetricsHook (and canary+baseline)
        scaled = [scenarios[0], scenarios[2], *scenarios[4:]]
        scaling = bench_scaling(scaled, contexts, args.scale_threads, args.rounds)
        for s in scaled[1:]:
            relative = scaling[s.name] / scaling["floor"]
            print(
                f"  scaling {s.name} ÷ floor: {relative:.2f}   target ≥ 0.8 {_ok(relative >= 0.8)}"
            )

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
    if args.threads:
        print(
            f"\none collection (2 readers), median of 200, before and after {args.threads} "
            "short-lived threads (50 at a time, 5 evaluations each) evaluated and ended"
        )
        ok &= bench_threads("MetricsHook", MetricsHook, args.threads)
        if baseline is not None:
            bench_threads("baseline", baseline, args.threads)  # its counts: informative only
    api.shutdown()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
