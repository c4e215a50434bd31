"""The gates on traffic that has what production traffic has (issue 15, item 8).

Run: ``python benchmarks/bench_real_traffic.py [--runs 50] [--workers 2] [--seed 15]``.

Same engine, plan and virtual-time loop as ``bench_decisions.py`` (the reference plan, a tick
every 10 s, ``Rollout`` + ``Autopilot``), with a source whose traffic changes tick by tick:

- ``daily``: both cohorts' latency x e^(0.10 sin(2 pi t / 24 h)), traffic x (1 + 0.5 sin(...)),
  the rollout starting at a random time of day; the whole 24 h soak is run.
- ``incident``: both cohorts x 1.3 slower for 5 minutes at a random moment of each of stages
  1 to 3.
- ``users``: bucketing by user: 20 000 users, 10 of them failing half their requests
  (together half of the service's 5xx), each bucketed by a uniform draw as murmur3 would; the
  erroring units reach the counts (``CohortCounts.error_units``).
- ``tenants``: bucketing by tenant: 500 tenants of equal traffic, each with its own latency
  factor e^N(0, 0.2).
- ``tail``: 5 % of the canary's requests 100 ms slower (median unchanged) from the start.
- ``independent``: none of the above (the independent, stationary model), for comparison.

Healthy scenarios other than ``daily`` are judged through stage 3: their 100 % stage has no
live baseline (no comparison) and serves the independent model's traffic, whose soak
``bench_decisions.py`` measures (0 % rolled back).
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from bench_decisions import (
    FLAG,
    MEDIAN_MS,
    SIGMA,
    START,
    SimulatedSignalSource,
    reference,
    share,
)

from openfeature_canary import ManualClock, Rollout, Status
from openfeature_canary.policy import Autopilot
from openfeature_canary.signals import EMPTY_COHORT, CohortCounts, CountsReading

DAY_S = 86_400.0
USERS, BROKEN = 20_000, 10
TENANTS, TENANT_SIGMA = 500, 0.2
BASE_5XX = 0.0005


def shares(bounds: Sequence[float], factor: float, tail: float = 0.0) -> np.ndarray:
    """Bucket shares of the lognormal model x ``factor``; a share ``tail`` 100 ms slower."""
    mu = math.log(MEDIAN_MS * factor)
    cdf = np.array([NormalDist().cdf((math.log(b) - mu) / SIGMA) for b in bounds])
    if tail:
        late = np.array(
            [NormalDist().cdf((math.log(b - 100) - mu) / SIGMA) if b > 100 else 0.0 for b in bounds]
        )
        cdf = (1 - tail) * cdf + tail * late
    out = np.diff(np.concatenate([[0.0], cdf, [1.0]]))
    return out / out.sum()


@dataclass(frozen=True)
class Case:
    """One cell: a scenario at ``rps``; ``healthy`` False only for ``tail``."""

    scenario: str
    rps: float


class RealSource(SimulatedSignalSource):
    """:class:`SimulatedSignalSource` drawn one tick at a time from a scenario's model, with
    the erroring units of each tick when the scenario buckets by user."""

    def __init__(self, case: Case, bounds: Sequence[float], rng: np.random.Generator, ticks: int):
        super().__init__(FLAG, bounds, rng, ticks)
        self.case = case
        self.rng = rng
        self.phase = rng.uniform(0, DAY_S)
        self.incidents: dict[int, float] = {}
        self.user_bucket = rng.random(BROKEN)  # the broken users' bucket values
        self.tenant_bucket = rng.random(TENANTS)
        factors = np.exp(rng.normal(0.0, TENANT_SIGMA, TENANTS))
        self.tenant_shares = np.array([shares(bounds, f) for f in factors])
        self.units: list[tuple[frozenset[str], frozenset[str]]] = [(frozenset(), frozenset())]
        self._cache_pct: tuple[float, np.ndarray] | None = None

    def _pvals(self, t: float, stage: int, percent: float) -> np.ndarray:
        """Per cohort (canary, baseline) bucket shares at time ``t``."""
        scenario, bounds = self.case.scenario, self.bounds
        if scenario == "tenants":
            if self._cache_pct is None or self._cache_pct[0] != percent:
                on = self.tenant_bucket < percent / 100.0
                pair = [
                    self.tenant_shares[m].mean(axis=0) if m.any() else shares(bounds, 1.0)
                    for m in (on, ~on)
                ]
                self._cache_pct = (percent, np.stack(pair))
            return self._cache_pct[1]
        factor = 1.0
        if scenario == "daily":
            factor = math.exp(0.10 * math.sin(2 * math.pi * (t + self.phase) / DAY_S))
        if scenario == "incident" and stage in self.incidents:
            at = self.incidents[stage]
            factor = 1.3 if at <= t < at + 300 else 1.0
        tail = 0.05 if scenario == "tail" else 0.0
        return np.stack([shares(bounds, factor, tail), shares(bounds, factor)])

    def serve_tick(self, t: float, seconds: float, stage: int, percent: float) -> None:
        """Serve one tick at time ``t`` (seconds since the rollout began)."""
        rps = self.case.rps
        if self.case.scenario == "daily":
            rps *= 1 + 0.5 * math.sin(2 * math.pi * (t + self.phase) / DAY_S)
        q = percent / 100.0
        pvals = self._pvals(t, stage, percent)
        n = self.rng.poisson((rps * seconds * q, rps * seconds * (1 - q)))
        rate = BASE_5XX
        units: list[set[str]] = [set(), set()]
        extra = np.zeros((2, len(self.bounds) + 2), dtype=np.int64)
        if self.case.scenario == "users":
            rate = BASE_5XX / 2  # the broken users make the other half
            for i, u in enumerate(self.user_bucket):
                k = self.rng.poisson(rps * seconds / USERS)
                if k:
                    cohort = 0 if u < q else 1
                    errors = self.rng.binomial(k, 0.5)
                    extra[cohort, :-1] += self.rng.multinomial(k, pvals[cohort])
                    extra[cohort, -1] += errors
                    if errors:
                        units[cohort].add(f"broken-{i}")
        tick = np.empty((2, len(self.bounds) + 2), dtype=np.int64)
        tick[:, :-1] = [self.rng.multinomial(n[c], pvals[c]) for c in range(2)]
        tick[:, -1] = self.rng.binomial(n, rate)
        if self.case.scenario == "users":
            edge = int(q * USERS)
            for c, (lo, hi) in enumerate(((0, edge), (edge, USERS))):
                if tick[c, -1] and hi > lo:
                    units[c] |= {f"user-{k}" for k in self.rng.integers(lo, hi, tick[c, -1])}
            tick += extra
        row = self._row
        self._cum[row + 1] = self._cum[row] + tick
        self._row = self._drawn = row + 1
        self.units.append((frozenset(units[0]), frozenset(units[1])))

    def counts_between(self, flag_key: str, start: float, end: float) -> CountsReading:
        """As the parent, with the erroring units of the span's ticks (``users`` only)."""
        reading = super().counts_between(flag_key, start, end)
        span = self._span(start, end)
        if self.case.scenario != "users" or span is None or reading.canary is EMPTY_COHORT:
            return reading
        lo, hi = self._rows[span[0]], self._rows[span[1]]
        cohorts = []
        for c, cohort in enumerate((reading.canary, reading.baseline)):
            found = frozenset().union(*(self.units[r][c] for r in range(lo + 1, hi + 1)))
            cohorts.append(
                CohortCounts(cohort.n, cohort.errors, cohort.bounds, cohort.counts, found)
                if cohort.n
                else cohort
            )
        return CountsReading(cohorts[0], cohorts[1], reading.start, reading.end)


def simulate(case: Case, seed: Sequence[int]) -> tuple[str, int, str]:
    """One rollout: (status, stage it ended in, reason)."""
    plan, bounds = reference()
    flag = plan.flag(FLAG)
    full = case.scenario in ("daily", "tail")
    stages = len(flag.stages) if full else len(flag.stages) - 1
    cap = int(2 * sum(s.duration_s for s in flag.stages[:stages]) / flag.tick_s)
    source = RealSource(case, bounds, np.random.default_rng(list(seed)), cap + 2)
    clock = ManualClock(start=START)
    ctl = Rollout(plan, store="memory://", clock=clock, policy=Autopilot(source)).controller(FLAG)
    source.snapshot(clock.now())
    ctl.start(force=True)
    began = clock.now()
    stage_began = {1: 0.0}
    for _ in range(cap):
        state = ctl.state
        t = clock.now() - began
        if state.stage not in stage_began:
            stage_began[state.stage] = t
        if (
            case.scenario == "incident"
            and state.stage in (1, 2, 3)
            and t == stage_began[state.stage]
        ):
            duration = flag.stage(state.stage).duration_s
            source.incidents[state.stage] = t + source.rng.uniform(0, duration - 300)
        if not full and state.stage > stages:
            return "completed", state.stage, "through stage 3"
        source.serve_tick(t, flag.tick_s, state.stage, state.percent)
        clock.advance(flag.tick_s)
        ctl.tick(refresh=False)
        if ctl.state.status is not Status.RUNNING:
            break
    state = ctl.state
    entry = state.last_decision
    test = entry.numbers.get("test") if entry is not None else None
    reason = f"{state.reason}:{test}" if test else state.reason
    if state.status is Status.ROLLED_BACK:
        stage = int(entry.numbers.get("from_stage") or 0) if entry is not None else 0
        return "rolled_back", stage, reason
    if state.status is Status.RUNNING:
        return "unfinished", state.stage, reason
    return state.status.value, state.stage, reason


def run_task(task: tuple[int, Case, tuple[int, ...]]) -> tuple[int, tuple[str, int, str]]:
    index, case, seed = task
    return index, simulate(case, seed)


CELLS = [
    *(Case(s, rps) for s in ("daily", "incident", "users", "tenants") for rps in (20.0, 100.0)),
    Case("tail", 20.0),
    *(Case("independent", rps) for rps in (20.0, 100.0)),
]


def row(case: Case, outcomes: Sequence[tuple[str, int, str]]) -> str:
    n = len(outcomes)
    back = [o for o in outcomes if o[0] == "rolled_back"]
    paused = [o for o in outcomes if o[0] == "paused"]
    reasons = Counter(f"s{o[1]} {o[2]}" for o in (*back, *paused))
    if case.scenario == "tail":
        early = sum(o[1] <= 2 for o in back)
        target, ok = "rolled back before 50 % ≥ 95 %", early >= 0.95 * n
        result = share(early, n)
    else:
        target = "rolled back ≤ 2 %, paused ≤ 2 %"
        ok = len(back) <= 0.02 * n and len(paused) <= 0.02 * n
        result = f"{share(len(back), n)}; paused {share(len(paused), n)}"
    detail = "; ".join(f"{k} x{v}" for k, v in sorted(reasons.items())) or "—"
    verdict = "yes" if ok else "**no**"
    return f"| {case.scenario} | {case.rps:g} | {n} | {result} | {target} | {verdict} | {detail} |"


def main(argv: list[str] | None = None) -> int:
    """Run the cells, print a Markdown table; exit 1 when a target is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--scenario", action="append", help="only these scenarios")
    args = parser.parse_args(argv)
    logging.getLogger("openfeature_canary").setLevel(logging.CRITICAL)
    chosen = [c for c in CELLS if not args.scenario or c.scenario in args.scenario]
    tasks = [(i, c, (args.seed, i, r)) for i, c in enumerate(chosen) for r in range(args.runs)]
    results: list[list[tuple[str, int, str]]] = [[] for _ in chosen]
    started = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(args.workers) as pool:
        for done, (i, outcome) in enumerate(pool.imap_unordered(run_task, tasks), 1):
            results[i].append(outcome)
            if done % max(1, len(tasks) // 20) == 0:
                print(
                    f"  {done}/{len(tasks)} ({time.perf_counter() - started:.0f} s)",
                    file=sys.stderr,
                )
    lines = [
        f"{args.runs} seeded runs a cell (seed {args.seed}), reference plan, flag `{FLAG}`.",
        "",
        "| scenario | rps | runs | result [95 % Wilson] | target | met | by (stage, reason) |",
        "|---|---|---|---|---|---|---|",
        *(row(c, r) for c, r in zip(chosen, results, strict=True)),
        "",
        f"Total wall time: {time.perf_counter() - started:.0f} s ({args.workers} workers).",
    ]
    print("\n".join(lines))
    return 0 if "**no**" not in "\n".join(lines) else 1


if __name__ == "__main__":
    sys.exit(main())
