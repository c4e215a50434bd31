"""How often the sequential gates roll back a healthy canary, and how fast they catch a bad one.

Run: ``python benchmarks/bench_decisions.py [--runs 200] [--quick] [--workers 2] [--seed 9]``
(about 30 min on two cores for 200 runs a cell; ``--quick``: 10 runs a cell, ~1.5 min).

The benchmark of issue 9, on ``examples/canary_plan.toml`` (flag ``dataservice-read-canary``):
every run drives the real engine (``Rollout`` with ``Autopilot``, a ``memory://`` store and a
``ManualClock``) tick by tick in virtual time, every 10 s, through the 24 h soak, reading a
:class:`SimulatedSignalSource` fed with seeded traffic:

- Poisson traffic of R requests/s; the canary draws Poisson(R x tick x percent served), the
  baseline the rest (bucketing itself is measured in ``bench_bucketing.py``);
- latency lognormal with median 60 ms and P95 105 ms in both cohorts, binned into the
  request-duration bounds the engine uses (``telemetry.histogram_bounds_s``); 5xx independent
  of latency;
- a fault "from the start of stage k" is switched on when stage k starts, after healthy
  stages 1 to k-1 (``--promote``: promote to stage k at once); it counts as caught only when
  rolled back within stage k (the table says what became of the others).

It prints a Markdown table per case family (the one in ``docs/decisions.md``) with the
issue's target next to each figure, 95 % Wilson intervals in brackets. Traffic that is not
independent and stationary (a daily cycle, a shared incident, users and tenants that repeat, a
tail regression) is ``bench_real_traffic.py``, which reuses this file's source and plan.
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing
import sys
import time
from bisect import bisect_right
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

from openfeature_canary import (
    Autopilot,
    Controller,
    ManualClock,
    Rollout,
    RolloutPlan,
    RolloutState,
    Status,
    load_plan,
)
from openfeature_canary.plan._signals import KNOWN_SIGNALS
from openfeature_canary.policy._stats import wilson_interval
from openfeature_canary.signals import (
    EMPTY_COHORT,
    CohortCounts,
    CountsReading,
    SignalReading,
    count_above,
    histogram_quantile,
)
from openfeature_canary.telemetry import histogram_bounds_s

PLAN = Path(__file__).resolve().parent.parent / "examples" / "canary_plan.toml"
FLAG = "dataservice-read-canary"
START = 1_800_000_000.0
MEDIAN_MS = 60.0
SIGMA = math.log(105.0 / 60.0) / NormalDist().inv_cdf(0.95)
#: Ticks drawn per numpy call (about 43 min at 10 s).
_BLOCK_TICKS = 256
_QUANTILES = {"latency_p50_ms": 0.5, "latency_p95_ms": 0.95, "latency_p99_ms": 0.99}

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@cache
def reference() -> tuple[RolloutPlan, tuple[float, ...]]:
    """The reference plan and its request-duration bounds in ms (loaded once per process)."""
    plan = load_plan(PLAN)
    return plan, tuple(round(b * 1000, 9) for b in histogram_bounds_s(plan))


def bucket_shares(bounds_ms: Sequence[float], slowdown: float) -> FloatArray:
    """The share of requests per bucket (``+Inf`` last) of the lognormal latency model."""
    mu = math.log(MEDIAN_MS * slowdown)
    cdf = [NormalDist().cdf((math.log(b) - mu) / SIGMA) for b in bounds_ms]
    shares = np.diff(np.array([0.0, *cdf, 1.0]))
    return np.asarray(shares / shares.sum(), dtype=np.float64)


@dataclass(frozen=True, eq=False)
class Traffic:
    """One run's traffic model: ``pvals`` and ``error_rates`` per cohort (canary, baseline)."""

    rps: float
    pvals: FloatArray
    error_rates: FloatArray


class SimulatedSignalSource:
    """A ``SignalSource`` over simulated traffic: cumulative per-tick counts of both cohorts.

    :meth:`serve` draws the requests of one tick; :meth:`snapshot` marks the counts served so
    far at a time. Reads compute what ``InProcessSignalSource`` computes from OpenTelemetry
    snapshots (quantiles with ``histogram_quantile``, 5xx share, counts); the flag-level signals
    are quiet (no ledger mismatch, every telemetry event accepted, no event-loop lag).
    """

    def __init__(
        self, flag_key: str, bounds_ms: Sequence[float], rng: np.random.Generator, ticks: int
    ) -> None:
        self.flag_key = flag_key
        self.bounds = tuple(bounds_ms)
        self._rng = rng
        # [row, cohort (canary, baseline), buckets... then 5xx]; row 0 is "nothing served".
        self._cum: IntArray = np.zeros((ticks + 2, 2, len(self.bounds) + 2), dtype=np.int64)
        self._row = 0
        self._drawn = 0
        self._block: tuple[float, float, Traffic | None] = (0.0, 0.0, None)
        self._times: list[float] = []
        self._rows: list[int] = []
        self._cache: dict[tuple[int, int], list[list[int]]] = {}

    def serve(self, seconds: float, percent: float, traffic: Traffic) -> None:
        """Serve ``seconds`` of traffic with ``percent`` of it on the canary (one tick)."""
        block = (seconds, percent, traffic)
        if self._row >= self._drawn or block != self._block:
            self._draw(seconds, percent, traffic)
            self._block = block
        self._row += 1

    def _draw(self, seconds: float, percent: float, traffic: Traffic) -> None:
        """Draw the next ticks at once: numpy's per-call cost dwarfs one tick's draws. Ticks
        drawn but not served (the percent changed first) are dropped; draws are independent."""
        row = self._row
        k = min(_BLOCK_TICKS, len(self._cum) - 1 - row)
        if k <= 0:
            raise ValueError(f"the source holds {len(self._cum) - 1} ticks; all are served")
        mean, share = traffic.rps * seconds, percent / 100.0
        n = self._rng.poisson((mean * share, mean * (1.0 - share)), size=(k, 2))
        ticks = np.empty((k, *self._cum.shape[1:]), dtype=np.int64)
        ticks[:, :, :-1] = self._rng.multinomial(n, traffic.pvals)
        ticks[:, :, -1] = self._rng.binomial(n, traffic.error_rates)
        self._cum[row + 1 : row + 1 + k] = self._cum[row] + np.cumsum(ticks, axis=0)
        self._drawn = row + k

    def snapshot(self, now: float) -> None:
        """Mark what has been served so far as the state at ``now``."""
        if self._times and now < self._times[-1]:
            raise ValueError(f"snapshot at {now} is before the newest one at {self._times[-1]}")
        self._times.append(now)
        self._rows.append(self._row)
        self._cache.clear()

    def _span(self, start: float, end: float) -> tuple[int, int] | None:
        """Snapshot indexes at or before ``start`` (the oldest when none) and ``end``."""
        last = bisect_right(self._times, end) - 1
        if last < 0:
            return None
        return max(bisect_right(self._times, start) - 1, 0), last

    def _diff(self, old: int, new: int) -> list[list[int]]:
        key = (self._rows[old], self._rows[new])
        diff = self._cache.get(key)
        if diff is None:
            raw: list[list[int]] = (self._cum[key[1]] - self._cum[key[0]]).tolist()
            diff = self._cache[key] = raw
        return diff

    def _reading(
        self, signal: str, value: float | None, n: int, span: tuple[int, int]
    ) -> SignalReading:
        t0, t1 = self._times[span[0]], self._times[span[1]]
        return SignalReading(signal, value, n, t1 - t0, t0, t1)

    def _empty(self, signal: str, span: tuple[int, int] | None, at: float) -> SignalReading:
        """No value: no snapshot yet, or both ends of the window on the same one."""
        if span is None:
            return SignalReading(signal, None, 0, 0.0, at, at)
        return self._reading(signal, None, 0, span)

    def read(self, flag_key: str, signal: str, window_s: float, now: float) -> SignalReading:
        """``signal`` over the trailing ``window_s`` seconds before ``now``."""
        return self.read_between(flag_key, signal, now - window_s, now)

    def read_between(self, flag_key: str, signal: str, start: float, end: float) -> SignalReading:
        """``signal`` between the snapshots at or before ``start`` and ``end``."""
        if signal not in KNOWN_SIGNALS:
            raise ValueError(f"unknown signal {signal!r}")
        span = self._span(start, end)
        if span is None or span[0] == span[1]:
            return self._empty(signal, span, end)
        if signal in ("ledger_mismatches", "telemetry_acceptance", "event_loop_lag_ms"):
            seconds = int(self._times[span[1]] - self._times[span[0]])
            if signal == "ledger_mismatches":  # like the in-process source: 0, n = 0
                return self._reading(signal, 0.0, 0, span)
            return self._reading(signal, 1.0 if signal[0] == "t" else 0.0, seconds, span)
        cohort = self._diff(*span)[1 if signal.startswith("baseline_") else 0]
        base = signal.removeprefix("baseline_")
        counts, n = cohort[:-1], sum(cohort[:-1]) if flag_key == self.flag_key else 0
        if base == "requests":
            return self._reading(signal, float(n), n, span)
        if n == 0:
            return self._reading(signal, None, 0, span)
        if base == "error_rate":
            return self._reading(signal, cohort[-1] / n, n, span)
        return self._reading(
            signal, histogram_quantile(_QUANTILES[base], self.bounds, counts), n, span
        )

    def count_beyond(
        self,
        flag_key: str,
        signal: str,
        threshold: float,
        inclusive: bool,
        window_s: float,
        now: float,
    ) -> SignalReading:
        """Samples of a histogram signal above ``threshold`` in the trailing window."""
        span = self._span(now - window_s, now)
        if span is None or span[0] == span[1]:
            return self._empty(signal, span, now)
        if signal == "event_loop_lag_ms":
            return self._reading(signal, 0.0, int(window_s), span)
        if signal.removeprefix("baseline_") not in _QUANTILES:
            raise ValueError(f"count_beyond needs a histogram signal, not {signal!r}")
        cohort = self._diff(*span)[1 if signal.startswith("baseline_") else 0][:-1]
        n = sum(cohort) if flag_key == self.flag_key else 0
        if n == 0:
            return self._reading(signal, None, 0, span)
        return self._reading(signal, count_above(threshold, self.bounds, cohort), n, span)

    def counts_between(self, flag_key: str, start: float, end: float) -> CountsReading:
        """Both cohorts' buckets and 5xx between the snapshots at or before ``start``, ``end``."""
        span = self._span(start, end)
        if span is None or flag_key != self.flag_key:
            return CountsReading(EMPTY_COHORT, EMPTY_COHORT, start, end)
        cohorts = [self._cohort(c) for c in self._diff(*span)]
        return CountsReading(cohorts[0], cohorts[1], self._times[span[0]], self._times[span[1]])

    def _cohort(self, raw: list[int]) -> CohortCounts:
        n = sum(raw[:-1])
        if n == 0:
            return EMPTY_COHORT
        return CohortCounts(n, raw[-1], self.bounds, tuple(raw[:-1]))


# --------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class Case:
    """One cell: total ``rps``, each cohort's 5xx share, the canary's latency ``slowdown``, and
    the stage whose start switches the canary's fault on (0: a healthy rollout)."""

    family: str
    rps: float
    baseline_5xx: float
    canary_5xx: float
    slowdown: float = 1.0
    stage: int = 0

    def traffic(self, bounds_ms: Sequence[float], *, faulty: bool) -> Traffic:
        """The per-cohort draws: the canary's fault on, or both cohorts like the baseline."""
        slowdown, rate = (self.slowdown, self.canary_5xx) if faulty else (1.0, self.baseline_5xx)
        pvals = np.stack([bucket_shares(bounds_ms, slowdown), bucket_shares(bounds_ms, 1.0)])
        return Traffic(self.rps, pvals, np.array([rate, self.baseline_5xx], dtype=np.float64))


@dataclass(frozen=True)
class Outcome:
    """How one run ended, in which ``stage``, ``after_s`` seconds from that stage's start.

    ``status``: rolled_back, paused, completed, ``unfinished`` (the cap: twice the plan's
    length), or ``lead_in`` (the healthy stages before a fault's ended the rollout).
    ``evidence_kept``: a pause's ``resume`` kept the stage's evidence.
    """

    status: str
    stage: int
    after_s: float
    reason: str
    needed: int | None = None
    evidence_kept: bool = True
    attempts: int = 1


def simulate(case: Case, seed: Sequence[int], *, promote: bool = False) -> Outcome:
    """Drive one rollout of ``case`` through the engine, tick by tick, until it ends.

    A fault starts with stage ``case.stage``: reached by running healthy through the stages
    before it (their evidence is the final stage's reference), or with ``promote`` at once.
    """
    plan, bounds = reference()
    flag = plan.flag(FLAG)
    cap = int(2 * sum(s.duration_s for s in flag.stages) / flag.tick_s)
    source = SimulatedSignalSource(FLAG, bounds, np.random.default_rng(list(seed)), cap)
    healthy, faulty = case.traffic(bounds, faulty=False), case.traffic(bounds, faulty=True)
    clock = ManualClock(start=START)
    ctl = Rollout(plan, store="memory://", clock=clock, policy=Autopilot(source)).controller(FLAG)
    source.snapshot(clock.now())
    ctl.start(force=True)
    while promote and ctl.state.stage < case.stage:
        ctl.promote("benchmark: the fault starts with this stage")
    stage, began = ctl.state.stage, clock.now()
    for _ in range(cap):
        source.serve(flag.tick_s, ctl.state.percent, faulty if stage >= case.stage else healthy)
        clock.advance(flag.tick_s)
        ctl.tick(refresh=False)
        state = ctl.state
        if state.status is not Status.RUNNING:
            break
        if state.stage != stage:
            stage, began = state.stage, clock.now()
    outcome = _outcome(ctl.state, clock.now() - began, ctl)
    return replace(outcome, status="lead_in") if outcome.stage < case.stage else outcome


def _outcome(state: RolloutState, after_s: float, ctl: Controller) -> Outcome:
    entry = state.last_decision
    numbers = entry.numbers if entry is not None else {}
    if state.status is Status.ROLLED_BACK:
        test = numbers.get("test")
        reason = f"{state.reason}:{test}" if test else state.reason
        return Outcome("rolled_back", int(numbers.get("from_stage") or 0), after_s, reason)
    if state.status is Status.PAUSED:
        needed = numbers.get("needed")
        before = state.evidence
        kept = before is not None and ctl.resume().evidence == before
        n = int(needed) if isinstance(needed, int | float) else None
        return Outcome("paused", state.stage, after_s, state.reason, n, kept)
    status = "completed" if state.status is Status.COMPLETED else "unfinished"
    return Outcome(status, state.stage, after_s, state.reason)


#: Seeds tried per fault run when the healthy stages before the fault end the rollout.
_LEAD_IN_ATTEMPTS = 5


def run_task(task: tuple[int, Case, tuple[int, ...], bool]) -> tuple[int, Outcome]:
    """One run of a cell (in a worker process): ``(cell index, outcome)``."""
    index, case, seed, promote = task
    outcome = simulate(case, seed, promote=promote)
    attempt = 1
    while outcome.status == "lead_in" and attempt < _LEAD_IN_ATTEMPTS:
        outcome = simulate(case, (*seed, attempt), promote=promote)
        attempt += 1
    return index, replace(outcome, attempts=attempt)


# --------------------------------------------------------------------------- cells


#: The baseline's 5xx share in the fault cases: the higher of the two healthy shares, the
#: harder case for the canary/baseline ratio.
FAULT_BASELINE_5XX = 0.0005
#: The issue's "no later than today's 5 min + 1 tick" for a canary twice as slow.
SLOW_DEADLINE_S = 310.0
FAMILIES = {
    "healthy": "1. Healthy service (same in both cohorts): outcome of the whole rollout",
    "slow": "2. Canary P95 x 2 (every canary latency doubled) from the start of a stage",
    "errors_1": "3. Canary 5xx 1 % from the start of a stage",
    "errors_03": "4. Canary 5xx 0.3 % from the start of a stage",
}


def cells() -> list[Case]:
    """Every cell of the benchmark, in table order."""
    out = [
        Case("healthy", rps, rate, rate)
        for rate in (0.0002, 0.0005)
        for rps in (5.0, 20.0, 100.0, 500.0)
    ]
    b = FAULT_BASELINE_5XX
    out += [Case("slow", rps, b, b, 2.0, k) for rps in (20.0, 100.0) for k in (1, 2, 3, 4)]
    out += [Case("errors_1", 20.0, b, 0.01, 1.0, k) for k in (2, 3, 4)]
    out += [Case("errors_1", 100.0, b, 0.01, 1.0, k) for k in (1, 2, 3, 4)]
    out += [Case("errors_03", 20.0, b, 0.003, 1.0, k) for k in (2, 3, 4)]
    return out


def share(k: int, n: int) -> str:
    """``k / n`` as a percentage with its 95 % Wilson interval."""
    if n == 0:
        return "—"
    lo, hi = wilson_interval(n, k, 0.95)
    return f"{100 * k / n:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]"


def tally(outcomes: Sequence[Outcome], status: str, *, needed: bool = False) -> str:
    """The outcomes of one status by stage and reason (``needed``: a pause's median need)."""
    groups: Counter[tuple[int, str]] = Counter(
        (o.stage, o.reason) for o in outcomes if o.status == status
    )
    parts = []
    for (stage, reason), count in sorted(groups.items()):
        text = f"s{stage} {reason} x{count}"
        wants = sorted(
            o.needed
            for o in outcomes
            if o.status == status and (o.stage, o.reason) == (stage, reason) and o.needed
        )
        if needed and wants:
            text += f" (needed {wants[len(wants) // 2]} more canary requests, median)"
        parts.append(text)
    return "; ".join(parts) or "—"


def _verdict(ok: bool) -> str:
    return "yes" if ok else "**no**"


def healthy_row(case: Case, outcomes: Sequence[Outcome]) -> str:
    """One table row of a healthy cell, against the issue's targets."""
    n = len(outcomes)
    back = sum(o.status == "rolled_back" for o in outcomes)
    paused = [o for o in outcomes if o.status == "paused"]
    done = sum(o.status == "completed" for o in outcomes)
    if case.rps >= 20:
        target = "rolled back ≤ 2 %, paused ≤ 2 %"
        ok = back <= 0.02 * n and len(paused) <= 0.02 * n
    else:
        target = "rolled back ≤ 2 %; a pause names what it needs; resume keeps the evidence"
        ok = back <= 0.02 * n and all(o.needed and o.evidence_kept for o in paused)
    cols = [
        f"{100 * case.canary_5xx:g} %",
        f"{case.rps:g}",
        str(n),
        share(back, n),
        share(len(paused), n),
        share(done, n),
        target,
        _verdict(ok),
        tally(outcomes, "rolled_back"),
        tally(outcomes, "paused", needed=True),
    ]
    return "| " + " | ".join(cols) + " |"


def _seconds(outcomes: Sequence[Outcome]) -> str:
    """Median / p99 / max (nearest rank) of the runs' ``after_s``."""
    times = sorted(o.after_s for o in outcomes)
    if not times:
        return "—"
    p50, p99 = (times[min(len(times) - 1, math.ceil(q * len(times)) - 1)] for q in (0.5, 0.99))
    return f"{p50:.0f} / {p99:.0f} / {times[-1]:.0f} s"


def fault_row(case: Case, outcomes: Sequence[Outcome]) -> str:
    """One table row of a fault cell: caught within its stage, how fast, by what; and what
    became of the runs it was not caught in (the fault stays on in the later stages)."""
    n = len(outcomes)
    back = [o for o in outcomes if o.status == "rolled_back"]
    caught = [o for o in back if o.stage == case.stage]
    later = [o for o in back if o.stage > case.stage]
    rest = Counter(o.status for o in outcomes if o.status != "rolled_back")
    ok = len(caught) >= 0.99 * n
    target = "≥ 99 %"
    if case.family == "slow":
        target += f", ≤ {SLOW_DEADLINE_S:.0f} s"
        ok = ok and all(o.after_s <= SLOW_DEADLINE_S for o in caught)
    missed = [tally(later, "rolled_back"), *(f"{k} x{v}" for k, v in sorted(rest.items()))]
    cols = [
        f"{case.rps:g}",
        str(case.stage),
        str(n),
        share(len(caught), n),
        _seconds(caught),
        target,
        _verdict(ok),
        tally(caught, "rolled_back"),
        "; ".join(m for m in missed if m != "—") or "—",
        str(sum(o.attempts - 1 for o in outcomes)),
    ]
    return "| " + " | ".join(cols) + " |"


def table(family: str, rows: Sequence[tuple[Case, Sequence[Outcome]]]) -> list[str]:
    """A family's Markdown table."""
    lines = [f"### {FAMILIES[family]}", ""]
    if family == "healthy":
        lines += [
            "| 5xx | rps | runs | rolled back | paused | completed | target | met "
            "| rollbacks (stage, reason) | pauses (stage, reason) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [healthy_row(case, outcomes) for case, outcomes in rows]
    else:
        lines += [
            "| rps | from stage | runs | rolled back in the stage "
            "| from the stage start: median / p99 / max | target | met | by (stage, reason) "
            "| not caught in the stage: later (stage, reason) or never | lead-ins redrawn |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [fault_row(case, outcomes) for case, outcomes in rows]
    return [*lines, ""]


# --------------------------------------------------------------------------- running


def run_all(
    chosen: Sequence[Case], runs: int, workers: int, seed: int, promote: bool
) -> list[list[Outcome]]:
    """Every run of every chosen cell on ``workers`` processes, progress on stderr."""
    tasks = [(i, case, (seed, i, r), promote) for i, case in enumerate(chosen) for r in range(runs)]
    results: list[list[Outcome]] = [[] for _ in chosen]
    started = time.perf_counter()
    step = max(1, len(tasks) // 50)
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for done, (i, outcome) in enumerate(pool.imap_unordered(run_task, tasks), 1):
            results[i].append(outcome)
            if len(results[i]) == runs:
                case = chosen[i]
                print(
                    f"  cell {i + 1}/{len(chosen)} done: {case.family} {case.rps:g} rps "
                    f"stage {case.stage} ({time.perf_counter() - started:.0f} s)",
                    file=sys.stderr,
                )
            elif done % step == 0:
                print(
                    f"  {done}/{len(tasks)} runs ({time.perf_counter() - started:.0f} s)",
                    file=sys.stderr,
                )
    return results


def header(runs: int, seed: int, promote: bool) -> list[str]:
    """What was simulated, above the tables."""
    lead = "promoted to at once" if promote else "reached by running healthy until it starts"
    return [
        f"## Decisions benchmark: `{PLAN.name}`, flag `{FLAG}`",
        "",
        f"{runs} seeded runs a cell (seed {seed}) through the real engine (`Rollout` + "
        "`Autopilot`, `memory://` store, `ManualClock`), a tick every 10 s until the rollout "
        "completes, rolls back or pauses, the 24 h soak kept. Poisson traffic, the canary "
        "getting the stage's percent of it; latency lognormal (median 60 ms, P95 105 ms) in "
        "both cohorts, binned into the engine's request-duration bounds; 5xx independent of "
        f"latency. Fault cases: the baseline's 5xx share is {100 * FAULT_BASELINE_5XX:g} %, "
        f"the fault's stage is {lead} and the fault stays on after it; it counts as caught "
        "only when rolled back within that stage. A lead-in ended by a false rollback or a "
        "pause is redrawn with a new seed. 95 % Wilson intervals in brackets; `met` compares "
        "the point estimate with the issue's target.",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    """Run the cells, print the Markdown tables; exit 1 when a target is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="runs per cell (default 200)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 10 runs per cell")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--seed", type=int, default=9, help="base seed (default 9)")
    parser.add_argument(
        "--promote", action="store_true", help="reach a fault's stage by promotion, not healthy"
    )
    parser.add_argument("--family", choices=sorted(FAMILIES), action="append", help="only these")
    args = parser.parse_args(argv)
    runs = 10 if args.quick else args.runs
    if runs < 1 or args.workers < 1:
        parser.error("--runs and --workers must be at least 1")
    logging.getLogger("openfeature_canary").setLevel(logging.CRITICAL)
    chosen = [c for c in cells() if not args.family or c.family in args.family]
    started = time.perf_counter()
    results = run_all(chosen, runs, args.workers, args.seed, args.promote)
    lines = header(runs, args.seed, args.promote)
    for family in FAMILIES:
        rows = [(c, r) for c, r in zip(chosen, results, strict=True) if c.family == family]
        if rows:
            lines += table(family, rows)
    wall = time.perf_counter() - started
    lines.append(f"Total wall time: {wall:.0f} s ({args.workers} workers).")
    print("\n".join(lines))
    return 0 if "**no**" not in "\n".join(lines) else 1


if __name__ == "__main__":
    sys.exit(main())
