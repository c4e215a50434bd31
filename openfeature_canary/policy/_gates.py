"""The stage gates as sequential tests: fold each tick's counts in, judge, weigh information.

Pure functions of (plan, stage, evidence, counts); ``docs/decisions.md`` is the method:

- **Lines** (``max_error_rate``, ``max_p95_ms``, ``max_p99_ms``): the share of 5xx, of requests
  over the P95 line (at most 5 %), over the P99 line (at most 1 %) — each a one-sample mixture
  SPRT against the line (:func:`~._stats.line_log_e`) on the stage's totals.
- **Canary against baseline**, tick by tick against the baseline served in the same tick, so
  that what moves both cohorts cancels: the 5xx ratio (:func:`~._stats.ratio_log_increment`,
  or counted in erroring units when the source knows them: :func:`~._stats.unit_log_increment`)
  and the latency tail (:func:`~._stats.tail_log_increment`: the requests over the stage's
  latency line). Only where a live baseline is served: a final stage at 100 % has none unless
  the plan keeps a ``holdback``, and is then judged on its lines and triggers alone.
- **Budget**: the plan's ``false_rollback_budget`` is shared equally by every test of every
  stage; a test is breached when its e-value reaches ``1 / alpha``.
- **Information**: a stage goes once each line test would have caught the stated gross
  regression (``detect_error_rate``, ``detect_slow_share``) with probability ``power``; its
  power against three times each line (the effect the docs state) is reported with it.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass, replace
from typing import Final, Protocol

from openfeature_canary.evidence import MAX_ERROR_UNITS, StageEvidence, Tally
from openfeature_canary.plan import FlagPlan, Stage
from openfeature_canary.policy._guards import fold_guards, guard_of, guard_tests, judge_guard
from openfeature_canary.policy._judgement import GateTest, Information, Judgement
from openfeature_canary.policy._stats import (
    RATIO_MULTIPLIERS,
    line_log_e,
    line_power,
    log_mean_exp,
    ratio_log_increment,
    requests_needed,
    tail_log_increment,
    unit_log_increment,
)
from openfeature_canary.signals._counts import CohortCounts, CountsReading
from openfeature_canary.signals._histogram import count_above, histogram_quantile

__all__ = [
    "Cohort",
    "GateTest",
    "Information",
    "Judgement",
    "StagePower",
    "alpha_per_test",
    "current_evidence",
    "fold",
    "information",
    "judge",
    "line_counts",
    "quantile",
    "requests_to_go",
    "stage_lines",
    "stage_power",
    "stage_tests",
    "tail_bound",
]

# The test names in decision-log numbers (``test=<name>``), and the signal each judges:
#   error_line   -> error_rate      (canary 5xx share against the stage's max_error_rate)
#   p95_line     -> latency_p95_ms  (canary share over max_p95_ms against 5 %)
#   p99_line     -> latency_p99_ms  (canary share over max_p99_ms against 1 %)
#   error_ratio  -> error_rate      (canary 5xx against the same tick's baseline; in units
#                                    when the source knows them)
#   latency_tail -> latency_p95_ms  (canary share over the tail bound against the same tick's
#                                    baseline; replaces latency_rank)
#: The comparisons of a stage with a live baseline.
COMPARISONS: Final = ("error_ratio", "latency_tail")

#: The share of requests a latency line allows above it.
_ALLOWED_ABOVE: Final = {"p95_line": 0.05, "p99_line": 0.01}


def stage_lines(stage: Stage) -> tuple[str, ...]:
    """The line tests of ``stage``: one per line it sets."""
    names = []
    if stage.max_error_rate is not None:
        names.append("error_line")
    if stage.max_p95_ms is not None:
        names.append("p95_line")
    if stage.max_p99_ms is not None:
        names.append("p99_line")
    return tuple(names)


def stage_tests(flag: FlagPlan, index: int) -> tuple[str, ...]:
    """The tests of stage ``index``: its lines, then the comparisons where a live baseline is
    served (below 100 %, or with a ``holdback``): the 5xx ratio, the latency tail and one per
    guard (``guard:<event>``, :mod:`._guards`); ``latency_margin = 0.5`` turns the latency
    comparison off, as it did the rank test it replaces."""
    if flag.serving_percent(index) >= 100.0:
        return stage_lines(flag.stage(index))
    latency = () if flag.decisions.latency_margin >= 0.5 else ("latency_tail",)
    return (*stage_lines(flag.stage(index)), "error_ratio", *latency, *guard_tests(flag, index))


def tail_bound(stage: Stage, bounds: tuple[float, ...]) -> float | None:
    """The latency bound of the tail comparison: the smallest histogram bound at or above the
    stage's P95 line (else its P99 line); ``None`` without a latency line or a bound above it.
    Counts over a bound are exact (no interpolation inside a bucket)."""
    line = stage.max_p95_ms if stage.max_p95_ms is not None else stage.max_p99_ms
    if line is None:
        return None
    i = bisect_left(bounds, line - 1e-9)
    return bounds[i] if i < len(bounds) else None


def _over(bound: float, bounds: tuple[float, ...], counts: tuple[int, ...]) -> int:
    """Requests in the buckets above ``bound`` (a histogram bound)."""
    return sum(counts[bisect_left(bounds, bound - 1e-9) + 1 :])


def alpha_per_test(flag: FlagPlan) -> float:
    """The false-rollback budget shared equally by every test of every stage."""
    count = sum(len(stage_tests(flag, i)) for i in range(1, len(flag.stages) + 1))
    return flag.decisions.false_rollback_budget / count


# --------------------------------------------------------------------------- folding


def current_evidence(
    state_stage: int, since: float, evidence: StageEvidence | None
) -> StageEvidence:
    """The evidence of the stage a flag is in: what is persisted for it, or a fresh record
    from the stage's start (no reference is carried over: earlier stages' baseline was served
    at another time of day)."""
    if evidence is not None and evidence.stage == state_stage:
        return evidence
    zeros = tuple(0.0 for _ in RATIO_MULTIPLIERS)
    return StageEvidence(
        stage=state_stage, started=since, through=since, ratio_log_e=zeros, tail_log_e=zeros
    )


def fold(
    flag: FlagPlan,
    evidence: StageEvidence,
    counts: CountsReading | None,
    served_percent: float | None = None,
) -> StageEvidence:
    """``evidence`` with one reading's counts folded in (unchanged when the reading failed,
    is empty, or starts before ``evidence.through``: its span is read again at the next tick,
    so nothing is lost or doubled). ``served_percent``: the canary's share of units actually
    served (a dry run keeps its own), by default what the stage serves."""
    if counts is None or counts.error is not None:
        return evidence
    folded = (
        evidence.canary.n > 0
        or evidence.baseline.n > 0
        or any(g.canary.count or g.baseline.count for g in evidence.guards)
    )
    if folded and counts.start < evidence.through - 1e-6:
        # Data from before what is folded in already would count twice: refuse it (the safe
        # side: less evidence, never false evidence). The first reading of a stage may start
        # at the last snapshot before the stage began: nothing is folded in yet.
        return evidence
    c, b = counts.canary, counts.baseline
    if c.n == 0 and b.n == 0 and not c.tracked and not b.tracked:
        return evidence
    if served_percent is None:
        served_percent = flag.serving_percent(evidence.stage)
    ratio, units = _error_step(flag, evidence, c, b, served_percent / 100.0)
    return replace(
        evidence,
        through=max(evidence.through, counts.end),
        canary=evidence.canary.add(c.n, c.errors, c.bounds, c.counts),
        baseline=evidence.baseline.add(b.n, b.errors, b.bounds, b.counts),
        ratio_log_e=_plus(evidence.ratio_log_e, ratio),
        tail_log_e=_plus(evidence.tail_log_e, _tail_step(flag, evidence.stage, c, b)),
        error_units=units,
        guards=fold_guards(flag, evidence, c, b),
    )


def _plus(running: tuple[float, ...], step: tuple[float, ...]) -> tuple[float, ...]:
    if not running:
        running = tuple(0.0 for _ in step)
    return tuple(a + d for a, d in zip(running, step, strict=True))


def _error_step(
    flag: FlagPlan, evidence: StageEvidence, c: CohortCounts, b: CohortCounts, share: float
) -> tuple[tuple[float, ...], tuple[tuple[str, ...], tuple[str, ...]]]:
    """One tick of the error comparison and the erroring units seen so far. With units known
    in both cohorts, each unit counts once, at its first 5xx of the stage; otherwise each
    request counts (the independent-request assumption)."""
    margin = flag.decisions.error_ratio_margin
    seen = evidence.error_units
    if c.error_units is None or b.error_units is None:
        return ratio_log_increment(c.errors, b.errors, c.n, b.n, margin), seen
    new_c, new_b = c.error_units - set(seen[0]), b.error_units - set(seen[1])
    if len(seen[0]) + len(new_c) > MAX_ERROR_UNITS or len(seen[1]) + len(new_b) > MAX_ERROR_UNITS:
        return tuple(0.0 for _ in RATIO_MULTIPLIERS), seen  # full: no more evidence
    step = unit_log_increment(len(new_c), len(new_b), share, margin)
    return step, (tuple(sorted({*seen[0], *new_c})), tuple(sorted({*seen[1], *new_b})))


def _tail_step(flag: FlagPlan, index: int, c: CohortCounts, b: CohortCounts) -> tuple[float, ...]:
    """One tick of the tail comparison: the requests over the tail bound in this tick."""
    bound = tail_bound(flag.stage(index), c.bounds)
    n_c, n_b = sum(c.counts), sum(b.counts)
    if bound is None or c.bounds != b.bounds or n_c == 0 or n_b == 0:
        return tuple(0.0 for _ in RATIO_MULTIPLIERS)
    return tail_log_increment(
        _over(bound, c.bounds, c.counts),
        _over(bound, b.bounds, b.counts),
        n_c,
        n_b,
        flag.decisions.latency_ratio_margin,
    )


# --------------------------------------------------------------------------- judging


def judge(flag: FlagPlan, index: int, evidence: StageEvidence) -> Judgement:
    """Every test of stage ``index`` on ``evidence``."""
    alpha = alpha_per_test(flag)
    boundary = math.log(1 / alpha)
    stage = flag.stage(index)
    tests: list[GateTest] = []
    for name in stage_tests(flag, index):
        if name == "error_ratio":
            tests.append(_ratio_test(flag, evidence, boundary))
        elif name == "latency_tail":
            tests.append(_tail_test(flag, index, evidence, boundary))
        elif (guard := guard_of(flag, name)) is not None:
            tests.append(judge_guard(guard, evidence, boundary))
        else:
            tests.append(_line_test(name, stage, evidence, boundary))
    return Judgement(tuple(tests), alpha)


class Cohort(Protocol):
    """A cohort's counts: a stage's :class:`Tally` or a window's ``CohortCounts``."""

    @property
    def n(self) -> int: ...

    @property
    def errors(self) -> int: ...

    @property
    def bounds(self) -> tuple[float, ...]: ...

    @property
    def counts(self) -> tuple[int, ...]: ...


def line_counts(name: str, stage: Stage, cohort: Cohort) -> tuple[int, int, float]:
    """(n, occurrences, allowed share) of line test ``name`` on one cohort's counts: the 5xx
    among all requests, or the requests over the latency line among those in the buckets."""
    if name == "error_line":
        assert stage.max_error_rate is not None
        return cohort.n, cohort.errors, stage.max_error_rate
    line_ms = stage.max_p95_ms if name == "p95_line" else stage.max_p99_ms
    assert line_ms is not None
    n = sum(cohort.counts)
    above = int(count_above(line_ms, cohort.bounds, cohort.counts)) if n else 0
    return n, above, _ALLOWED_ABOVE[name]


def quantile(q: float, cohort: Cohort) -> float | None:
    """The cohort's ``q`` quantile in ms (``histogram_quantile``); ``None`` without data."""
    if sum(cohort.counts) == 0:
        return None
    return histogram_quantile(q, cohort.bounds, cohort.counts)


def _line_test(name: str, stage: Stage, evidence: StageEvidence, boundary: float) -> GateTest:
    n, k, p0 = line_counts(name, stage, evidence.canary)
    b_n, b_k, _ = line_counts(name, stage, evidence.baseline)
    return GateTest(
        name,
        line_log_e(n, k, p0),
        boundary,
        k / n if n else None,
        p0,
        n,
        baseline_breached=b_n > 0 and line_log_e(b_n, b_k, p0) >= boundary,
    )


def _ratio_test(flag: FlagPlan, evidence: StageEvidence, boundary: float) -> GateTest:
    c, b = evidence.canary, evidence.baseline
    log_e = log_mean_exp(evidence.ratio_log_e) if evidence.ratio_log_e else 0.0
    estimate = None
    if c.n and b.n and b.errors:
        estimate = (c.errors / c.n) / (b.errors / b.n)
    return GateTest(
        "error_ratio", log_e, boundary, estimate, flag.decisions.error_ratio_margin, c.n
    )


def _tail_test(flag: FlagPlan, index: int, evidence: StageEvidence, boundary: float) -> GateTest:
    c, b = evidence.canary, evidence.baseline
    log_e = log_mean_exp(evidence.tail_log_e) if evidence.tail_log_e else 0.0
    estimate = None
    bound = tail_bound(flag.stage(index), c.bounds)
    if bound is not None and c.bounds == b.bounds and c.latency_n and b.latency_n:
        over_b = _over(bound, b.bounds, b.counts) / b.latency_n
        if over_b > 0:
            estimate = (_over(bound, c.bounds, c.counts) / c.latency_n) / over_b
    margin = flag.decisions.latency_ratio_margin
    return GateTest("latency_tail", log_e, boundary, estimate, margin, c.latency_n)


# --------------------------------------------------------------------------- information


@dataclass(frozen=True)
class StagePower:
    """What stage ``index`` can detect at ``rps`` requests/s within its duration: ``canary``
    requests, and per line its :class:`Information` (power against three times the line, the
    canary requests that would reach the plan's power against it)."""

    index: int
    rps: float
    canary: int
    duration_s: float
    lines: tuple[Information, ...]

    def seconds_needed(self, info: Information) -> float | None:
        """The time the stage's canary traffic takes to reach ``info.needed_3x``."""
        rate = self.canary / self.duration_s if self.duration_s > 0 else 0.0
        if info.needed_3x is None or rate <= 0:
            return None
        return info.needed_3x / rate


def stage_power(flag: FlagPlan, index: int, rps: float) -> StagePower:
    """:class:`StagePower` of stage ``index`` at a steady ``rps`` (``plan check --rps``)."""
    stage = flag.stage(index)
    n = int(rps * flag.serving_percent(index) / 100.0 * stage.duration_s)
    tally = Tally(n, 0, (), (n,))
    infos = information(flag, index, StageEvidence(index, 0.0, 0.0, canary=tally))
    return StagePower(index, rps, n, stage.duration_s, infos)


def requests_to_go(flag: FlagPlan, index: int) -> int:
    """The canary requests stage ``index`` needs before it can go (its information)."""
    empty = StageEvidence(index, 0.0, 0.0)
    return max(info.needed for info in information(flag, index, empty))


def information(flag: FlagPlan, index: int, evidence: StageEvidence) -> tuple[Information, ...]:
    """Per line of stage ``index``: the power to have caught its stated regression.

    A stage without lines is held to a 5xx line at a tenth of ``detect_error_rate``, so that
    silence never passes.
    """
    stage = flag.stage(index)
    rules = flag.decisions
    alpha = alpha_per_test(flag)
    out = []
    for name in stage_lines(stage) or ("error_line",):
        if name == "error_line":
            line = stage.max_error_rate
            detect = rules.detect_error_rate_for(line if line is not None else 0.0)
            p0 = line if line is not None else detect / 10
            n = evidence.canary.n
        else:
            p0, detect = _ALLOWED_ABOVE[name], rules.detect_slow_share
            n = evidence.canary.latency_n
        power = line_power(n, p0, detect, alpha)
        needed = 0 if power >= rules.power else requests_needed(p0, detect, alpha, rules.power)
        triple = needed_3x = None
        if p0 > 0 and 3 * p0 < 1:
            triple = line_power(n, p0, 3 * p0, alpha)
            needed_3x = requests_needed(p0, 3 * p0, alpha, rules.power)
        out.append(Information(name, detect, power, n, needed, triple, needed_3x, p0))
    return tuple(out)
