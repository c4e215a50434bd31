"""The stage gates as sequential tests: fold each tick's counts in, judge, weigh information.

Pure functions of (plan, stage, evidence, counts); ``docs/decisions.md`` is the method:

- **Lines** (``max_error_rate``, ``max_p95_ms``, ``max_p99_ms``): the share of 5xx, of requests
  over the P95 line (at most 5 %), over the P99 line (at most 1 %) — each a one-sample mixture
  SPRT against the line (:func:`~._stats.line_log_e`) on the stage's totals.
- **Canary against baseline**: the 5xx ratio (:func:`~._stats.ratio_log_increment`) and the
  latency rank (:func:`~._stats.rank_log_increment`), tick by tick against the baseline cohort
  served at the same time; in a final stage without a live baseline, against the pooled
  baseline of the earlier stages (the reference).
- **Budget**: the plan's ``false_rollback_budget`` is shared equally by every test of every
  stage; a test is breached when its e-value reaches ``1 / alpha``.
- **Information**: a stage goes once each line test would have caught the stated regression
  (``detect_error_rate``, ``detect_slow_share``) with probability ``power``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Final, Protocol

from openfeature_canary.evidence import StageEvidence, Tally
from openfeature_canary.plan import FlagPlan, Stage
from openfeature_canary.policy._stats import (
    RANK_FRACTIONS,
    RATIO_MULTIPLIERS,
    auc,
    line_log_e,
    line_power,
    log_mean_exp,
    placements,
    rank_log_increment,
    ratio_log_increment,
    requests_needed,
    wilson_interval,
)
from openfeature_canary.signals._counts import CohortCounts, CountsReading
from openfeature_canary.signals._histogram import count_above, histogram_quantile

__all__ = [
    "Cohort",
    "GateTest",
    "Information",
    "Judgement",
    "alpha_per_test",
    "current_evidence",
    "fold",
    "information",
    "judge",
    "line_counts",
    "quantile",
    "requests_to_go",
    "stage_lines",
    "stage_tests",
]

#: The share of requests a latency line allows above it.
_ALLOWED_ABOVE: Final = {"p95_line": 0.05, "p99_line": 0.01}


@dataclass(frozen=True)
class GateTest:
    """One test's standing: ``log_e`` against the ``boundary`` ``ln(1/alpha)``.

    ``estimate`` is the canary's share (lines), error ratio or AUC (comparisons); ``line`` is
    the null's edge (the line, or the margin); ``n`` the requests behind it.
    ``baseline_breached``: a line the baseline cohort breaches too, on its own evidence.
    """

    name: str
    log_e: float
    boundary: float
    estimate: float | None
    line: float
    n: int
    baseline_breached: bool = False

    @property
    def breached(self) -> bool:
        """True once the evidence has crossed the boundary."""
        return self.log_e >= self.boundary

    @property
    def e_value(self) -> float:
        """``exp(log_e)``, capped for display."""
        return math.exp(min(self.log_e, 700.0))


@dataclass(frozen=True)
class Judgement:
    """Every test of a stage at one tick."""

    tests: tuple[GateTest, ...]
    alpha: float

    @property
    def breach(self) -> GateTest | None:
        """The first breached test, if any."""
        return next((t for t in self.tests if t.breached), None)


@dataclass(frozen=True)
class Information:
    """What a line test could have caught: ``power`` against ``detect`` with ``n`` requests;
    ``needed`` requests would reach the plan's power. ``power_3x``: against three times the
    line (the 5xx line only; reported, not required)."""

    name: str
    detect: float
    power: float
    n: int
    needed: int
    power_3x: float | None = None


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
    """The tests of stage ``index``: its lines, then the two comparisons."""
    return (*stage_lines(flag.stage(index)), "error_ratio", "latency_rank")


def alpha_per_test(flag: FlagPlan) -> float:
    """The false-rollback budget shared equally by every test of every stage."""
    count = sum(len(stage_tests(flag, i)) for i in range(1, len(flag.stages) + 1))
    return flag.decisions.false_rollback_budget / count


# --------------------------------------------------------------------------- folding


def current_evidence(
    state_stage: int, since: float, evidence: StageEvidence | None
) -> StageEvidence:
    """The evidence of the stage a flag is in: what is persisted for it, or a fresh record
    from the stage's start that carries the earlier stages' baseline as its reference."""
    if evidence is not None and evidence.stage == state_stage:
        return evidence
    reference = None
    if evidence is not None and evidence.stage < state_stage:
        earlier = evidence.reference
        pooled = evidence.baseline if earlier is None else earlier.plus(evidence.baseline)
        reference = pooled if pooled.n > 0 else None
    return StageEvidence(
        stage=state_stage,
        started=since,
        through=since,
        ratio_log_e=tuple(0.0 for _ in RATIO_MULTIPLIERS),
        rank_log_e=tuple(0.0 for _ in RANK_FRACTIONS),
        reference=reference,
    )


def fold(flag: FlagPlan, evidence: StageEvidence, counts: CountsReading | None) -> StageEvidence:
    """``evidence`` with one reading's counts folded in (unchanged when the reading failed,
    is empty, or starts before ``evidence.through``: its span is read again at the next tick,
    so nothing is lost or doubled)."""
    if counts is None or counts.error is not None:
        return evidence
    folded = evidence.canary.n > 0 or evidence.baseline.n > 0
    if folded and counts.start < evidence.through - 1e-6:
        # Data from before what is folded in already would count twice: refuse it (the safe
        # side: less evidence, never false evidence). The first reading of a stage may start
        # at the last snapshot before the stage began: nothing is folded in yet.
        return evidence
    c, b = counts.canary, counts.baseline
    if c.n == 0 and b.n == 0:
        return evidence
    rules = flag.decisions
    baseline = evidence.baseline.add(b.n, b.errors, b.bounds, b.counts)
    ratio = tuple(
        a + d
        for a, d in zip(
            evidence.ratio_log_e,
            ratio_log_increment(c.errors, b.errors, c.n, b.n, rules.error_ratio_margin),
            strict=True,
        )
    )
    rank = evidence.rank_log_e
    against = _rank_reference(baseline, evidence.reference, c)
    if against is not None and c.n > 0:
        steps = rank_log_increment(c.counts, placements(against), rules.latency_margin)
        rank = tuple(a + d for a, d in zip(rank, steps, strict=True))
    return replace(
        evidence,
        through=max(evidence.through, counts.end),
        canary=evidence.canary.add(c.n, c.errors, c.bounds, c.counts),
        baseline=baseline,
        ratio_log_e=ratio,
        rank_log_e=rank,
    )


def _rank_reference(
    baseline: Tally, reference: Tally | None, canary: CohortCounts
) -> tuple[int, ...] | None:
    """The baseline the canary's latencies are placed against: the stage's own (this tick's
    included: it is independent of the canary's requests), else the reference."""
    for tally in (baseline, reference):
        if tally is not None and tally.latency_n > 0 and tally.bounds == canary.bounds:
            return tally.counts
    return None


# --------------------------------------------------------------------------- judging


def judge(flag: FlagPlan, index: int, evidence: StageEvidence) -> Judgement:
    """Every test of stage ``index`` on ``evidence``."""
    alpha = alpha_per_test(flag)
    boundary = math.log(1 / alpha)
    stage = flag.stage(index)
    tests: list[GateTest] = []
    for name in stage_tests(flag, index):
        if name == "error_ratio":
            tests.append(_ratio_test(flag, evidence, alpha))
        elif name == "latency_rank":
            log_e = log_mean_exp(evidence.rank_log_e) if evidence.rank_log_e else 0.0
            tests.append(
                GateTest(
                    name,
                    log_e,
                    boundary,
                    _auc(evidence),
                    0.5 + flag.decisions.latency_margin,
                    evidence.canary.latency_n,
                )
            )
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


def _ratio_test(flag: FlagPlan, evidence: StageEvidence, alpha: float) -> GateTest:
    margin = flag.decisions.error_ratio_margin
    c, b, ref = evidence.canary, evidence.baseline, evidence.reference
    boundary = math.log(1 / alpha)
    if b.n == 0 and ref is not None and ref.n > 0:
        # No live baseline (100 %): a line at margin x the reference's upper bound. Half the
        # test's alpha goes to that bound, half to the test.
        high = wilson_interval(ref.n, ref.errors, 1 - alpha)[1]
        line = min(0.999, margin * high)
        log_e = line_log_e(c.n, c.errors, line)
        estimate = (c.errors / c.n) / (ref.errors / ref.n) if c.n and ref.errors else None
        return GateTest("error_ratio", log_e, math.log(2 / alpha), estimate, margin, c.n)
    log_e = log_mean_exp(evidence.ratio_log_e) if evidence.ratio_log_e else 0.0
    estimate = None
    if c.n and b.n and b.errors:
        estimate = (c.errors / c.n) / (b.errors / b.n)
    return GateTest("error_ratio", log_e, boundary, estimate, margin, c.n)


def _auc(evidence: StageEvidence) -> float | None:
    c = evidence.canary
    against = evidence.baseline if evidence.baseline.latency_n else evidence.reference
    if against is None or against.bounds != c.bounds:
        return None
    return auc(c.counts, against.counts)


# --------------------------------------------------------------------------- information


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
        triple = None
        if name == "error_line" and p0 > 0 and 3 * p0 < 1:
            triple = line_power(n, p0, 3 * p0, alpha)
        out.append(Information(name, detect, power, n, needed, triple))
    return tuple(out)
