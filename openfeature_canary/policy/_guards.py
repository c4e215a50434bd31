"""The guards as sequential tests: fold each tick's tracked events in, judge, weigh information.

Pure functions of (plan, stage, evidence, counts), the twin of :mod:`._gates` for the business
metrics an application reports with OpenFeature's ``track()`` (``docs/guards.md``):

- a **rate** guard (events per request served, or per another tracked event) is compared tick
  by tick with the baseline of the same tick (:func:`~._guard_stats.rate_log_increment`);
- a **mean** guard (of ``details.value``) on the stage's totals
  (:func:`~._guard_stats.mean_log_e`).

Both share the flag's false-rollback budget with the gates (one test per guard per stage with
a live baseline, counted by :func:`._gates.alpha_per_test`), act with the stage's ``on_no_go``
and say ``guard_breach``. A stage goes once each guard would have caught its ``detect_drop``
with the plan's power; too few events extend it, then pause it, saying how many more it needs.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Final

from openfeature_canary.evidence import GuardTally, StageEvidence, Tracked
from openfeature_canary.plan import FlagPlan, Guard
from openfeature_canary.plan._guards import PER_REQUEST
from openfeature_canary.policy._guard_stats import (
    MIN_VALUED,
    mean_log_e,
    mean_needed,
    mean_power,
    rate_log_increment,
    rate_needed,
    rate_power,
)
from openfeature_canary.policy._judgement import GateTest, Information
from openfeature_canary.policy._stats import log_mean_exp
from openfeature_canary.signals._counts import CohortCounts

__all__ = [
    "fold_guards",
    "guard_estimate",
    "guard_information",
    "guard_of",
    "guard_tests",
    "judge_guard",
    "null_ratio",
]

_NOTHING: Final = Tracked()


def guard_tests(flag: FlagPlan, index: int) -> tuple[str, ...]:
    """The guard tests of stage ``index``: one per guard where a live baseline is served
    (below 100 %, or with a ``holdback``); a final stage at 100 % has nothing to compare with."""
    if not flag.guards or flag.serving_percent(index) >= 100.0:
        return ()
    return tuple(guard.rule for guard in flag.guards)


def guard_of(flag: FlagPlan, name: str) -> Guard | None:
    """The guard a test name (``guard:<event>``) stands for."""
    return next((g for g in flag.guards if g.rule == name), None)


def null_ratio(guard: Guard) -> float:
    """The edge of the guard's null: the canary's rate (or mean) over the baseline's that is
    still healthy (``1 - max_drop``, or ``1 + max_drop`` when lower is better)."""
    return 1.0 - guard.max_drop if guard.higher_is_better else 1.0 + guard.max_drop


def _detect_ratio(guard: Guard) -> float:
    return 1.0 - guard.detect_drop if guard.higher_is_better else 1.0 + guard.detect_drop


def _tau(guard: Guard) -> float:
    """The normal mixture's spread for a mean guard: the distance from the null to the
    change a stage must be able to catch (the test is most powerful about there)."""
    return abs(math.log(_detect_ratio(guard)) - math.log(null_ratio(guard)))


# --------------------------------------------------------------------------- folding


def _exposures(guard: Guard, c: CohortCounts, b: CohortCounts) -> tuple[int, int]:
    if guard.per == PER_REQUEST:
        return c.n, b.n
    return c.tracked.get(guard.per, _NOTHING).count, b.tracked.get(guard.per, _NOTHING).count


def fold_guards(
    flag: FlagPlan, evidence: StageEvidence, c: CohortCounts, b: CohortCounts
) -> tuple[GuardTally, ...]:
    """Each guard's evidence with one reading's tracked events folded in (the caller has
    checked that the reading is new: see :func:`._gates.fold`)."""
    if not guard_tests(flag, evidence.stage):
        return evidence.guards
    out = []
    for guard in flag.guards:
        tally = evidence.guard(guard.event)
        ec, eb = c.tracked.get(guard.event, _NOTHING), b.tracked.get(guard.event, _NOTHING)
        xc, xb = _exposures(guard, c, b)
        log_e = tally.log_e
        if guard.measure == "rate":
            step = rate_log_increment(
                ec.count, eb.count, xc, xb, null_ratio(guard), guard.higher_is_better
            )
            log_e = tuple(a + d for a, d in zip(log_e or (0.0,) * len(step), step, strict=True))
        out.append(
            replace(
                tally,
                canary=tally.canary.plus(ec),
                baseline=tally.baseline.plus(eb),
                canary_exposure=tally.canary_exposure + xc,
                baseline_exposure=tally.baseline_exposure + xb,
                log_e=log_e,
            )
        )
    return tuple(out)


# --------------------------------------------------------------------------- judging


def guard_estimate(guard: Guard, tally: GuardTally) -> tuple[float | None, float | None]:
    """The canary's and the baseline's rate (events per exposure) or mean over the stage."""
    if guard.measure == "mean":
        return tally.canary.mean, tally.baseline.mean
    c = tally.canary.count / tally.canary_exposure if tally.canary_exposure else None
    b = tally.baseline.count / tally.baseline_exposure if tally.baseline_exposure else None
    return c, b


def judge_guard(guard: Guard, evidence: StageEvidence, boundary: float) -> GateTest:
    """The guard's standing on the stage's evidence: its e-value against ``boundary``."""
    tally = evidence.guard(guard.event)
    rho0 = null_ratio(guard)
    if guard.measure == "mean":
        c, b = tally.canary, tally.baseline
        log_e = mean_log_e(
            (c.valued, c.total, c.squares),
            (b.valued, b.total, b.squares),
            rho0,
            _tau(guard),
            guard.higher_is_better,
        )
        n = c.valued
    else:
        log_e = log_mean_exp(tally.log_e) if tally.log_e else 0.0
        n = tally.canary.count
    canary, baseline = guard_estimate(guard, tally)
    ratio = canary / baseline if canary is not None and baseline else None
    return GateTest(guard.rule, log_e, boundary, ratio, rho0, n)


# --------------------------------------------------------------------------- information


def guard_information(
    flag: FlagPlan, index: int, evidence: StageEvidence, alpha: float
) -> tuple[Information, ...]:
    """Per guard of stage ``index``: the power to have caught its ``detect_drop``, the events
    it has (``n``) and those it needs (``needed``) to reach the plan's power."""
    out = []
    power_wanted = flag.decisions.power
    default_q = flag.serving_percent(index) / 100.0
    if not guard_tests(flag, index):
        return ()
    for guard in flag.guards:
        name = guard.rule
        tally = evidence.guard(guard.event)
        xc, xb = tally.canary_exposure, tally.baseline_exposure
        q = xc / (xc + xb) if xc > 0 and xb > 0 else default_q
        q = min(0.999, max(0.001, round(q, 3)))  # a few cached shapes, not one per tick
        rho0, rho1 = null_ratio(guard), _detect_ratio(guard)
        if guard.measure == "rate":
            k = tally.canary.count + tally.baseline.count
            power = rate_power(k, q, rho0, rho1, guard.higher_is_better, alpha)
            needed = 0
            if power < power_wanted:
                needed = rate_needed(q, rho0, rho1, guard.higher_is_better, alpha, power_wanted)
            out.append(Information(name, guard.detect_drop, power, k, needed, line=rho0))
            continue
        c, b = tally.canary, tally.baseline
        valued = c.valued + b.valued
        q_valued = c.valued / valued if c.valued and b.valued else default_q
        shape = (_cv2(c, b), min(0.999, max(0.001, q_valued)), rho0, rho1, _tau(guard), alpha)
        power = mean_power(c.valued, *shape)
        needed = 0 if power >= power_wanted else mean_needed(*shape, power_wanted)
        out.append(Information(name, guard.detect_drop, power, c.valued, needed, line=rho0))
    return tuple(out)


def _cv2(c: Tracked, b: Tracked) -> float:
    """The values' squared coefficient of variation, pooled over both cohorts (1 — an
    exponential's — until there are enough values to estimate it)."""
    valued, total, squares = c.valued + b.valued, c.total + b.total, c.squares + b.squares
    if valued < 2 * MIN_VALUED or total <= 0:
        return 1.0
    mean = total / valued
    return max(squares / valued - mean * mean, 0.0) / (mean * mean) or 1.0
