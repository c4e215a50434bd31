"""The statistics of the guards: a rate compared tick by tick, a mean on the stage's totals.

Pure functions of counts, like :mod:`._stats` (whose Ville-inequality argument they share);
``docs/guards.md`` explains how the policy uses them.

**A rate** (events per exposure: per request served, or per another tracked event). Given a
tick's ``k = k_c + k_b`` events and exposures ``n_c``, ``n_b``, ``k_c ~ Binomial(k, pi(rho))``
with ``pi(rho) = rho n_c / (rho n_c + n_b)`` and ``rho`` the canary's rate over the baseline's
in that tick — the conditional test of two Poisson rates (Lehmann & Romano 4.5) that the 5xx
ratio uses, so whatever moves both cohorts' rate in the tick cancels. A guard's null is
"``rho >= rho0 = 1 - max_drop``" (higher is better) or "``rho <= rho0 = 1 + max_drop``"; the
alternatives lie beyond ``rho0`` (:func:`rate_alternatives`). Each likelihood ratio of an
alternative against ``rho0`` has expectation at most 1 under any null ``rho``, so the running
sums, exponentiated and averaged, form an e-process valid at every tick.

**A mean** (of ``details.value``). On the stage's totals (the split is fixed within a stage,
so both cohorts' totals cover the same moments): ``theta = ln(mean_c / mean_b)`` with the
delta-method variance ``V = s_c^2 / (v_c m_c^2) + s_b^2 / (v_b m_b^2)``, judged by the normal
mixture sequential test (Robbins 1970; the "mSPRT" of Johari et al. 2017, GrowthBook's and
Optimizely's sequential mode): ``ln E = 1/2 ln(V / (V + tau^2)) + tau^2 S^2 / (2 V (V + tau^2))``
with ``S = theta0 - theta`` on the wrong side of ``theta0``. Asymptotically valid (a normal
approximation of the means): it needs :data:`MIN_VALUED` valued events in each cohort first.
"""

from __future__ import annotations

import math
from functools import lru_cache
from statistics import NormalDist
from typing import Final

from openfeature_canary.policy._stats import binomial_tail, log_mean_exp

__all__ = [
    "DROP_STEPS",
    "MIN_VALUED",
    "RISE_STEPS",
    "mean_log_e",
    "mean_needed",
    "mean_power",
    "rate_alternatives",
    "rate_log_increment",
    "rate_needed",
    "rate_power",
]

#: Alternatives of a higher-is-better rate: ``rho0`` times these (10 % to 75 % beyond it).
DROP_STEPS: Final = (0.9, 0.8, 0.65, 0.5, 0.25)
#: Alternatives of a lower-is-better rate: ``rho0`` times these.
RISE_STEPS: Final = (1.1, 1.25, 1.5, 2.0, 4.0)
#: Valued events each cohort needs before a mean is judged (the normal approximation).
MIN_VALUED: Final = 30


def rate_alternatives(rho0: float, higher_is_better: bool) -> tuple[float, ...]:
    """The ratios beyond the null ``rho0`` that :func:`rate_log_increment` mixes."""
    return tuple(rho0 * m for m in (DROP_STEPS if higher_is_better else RISE_STEPS))


def rate_log_increment(
    events_canary: int,
    events_baseline: int,
    exposure_canary: float,
    exposure_baseline: float,
    rho0: float,
    higher_is_better: bool,
) -> tuple[float, ...]:
    """One tick's log-likelihood ratios of a rate guard, one per alternative::

        ln LR_j = k_c ln(pi(rho_j) / pi(rho0)) + k_b ln((1 - pi(rho_j)) / (1 - pi(rho0)))

    A tick where a cohort had no exposure, or no event happened, carries no information.
    """
    alternatives = rate_alternatives(rho0, higher_is_better)
    if exposure_canary <= 0 or exposure_baseline <= 0 or events_canary + events_baseline == 0:
        return tuple(0.0 for _ in alternatives)
    q = exposure_canary / (exposure_canary + exposure_baseline)
    pi0 = _share(rho0, q)
    out = []
    for rho in alternatives:
        pi1 = _share(rho, q)
        out.append(
            events_canary * math.log(pi1 / pi0)
            + events_baseline * (math.log1p(-pi1) - math.log1p(-pi0))
        )
    return tuple(out)


def _share(rho: float, q: float) -> float:
    """The canary's share of the events when its rate is ``rho`` times the baseline's and
    its share of the exposure is ``q``."""
    return rho * q / (rho * q + 1.0 - q)


def _threshold(k: int, q: float, rho0: float, higher: bool, boundary: float) -> int | None:
    """The canary event count at which the pooled test over ``k`` events reaches ``boundary``
    (the largest such count when higher is better, the smallest otherwise); ``None``: none."""

    def log_e(x: int) -> float:  # the e-value pooled over one split: q of the exposure
        return log_mean_exp(rate_log_increment(x, k - x, q, 1.0 - q, rho0, higher))

    # log_e falls with x when the alternatives lie below rho0 (rises otherwise).
    if log_e(0 if higher else k) < boundary:
        return None
    low, high = 0, k
    if higher:  # the largest x with log_e(x) >= boundary
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if log_e(mid) >= boundary else (low, mid - 1)
        return low
    while low < high:  # the smallest x with log_e(x) >= boundary
        mid = (low + high) // 2
        low, high = (low, mid) if log_e(mid) >= boundary else (mid + 1, high)
    return low


def rate_power(k: int, q: float, rho0: float, rho1: float, higher: bool, alpha: float) -> float:
    """The chance that a rate guard has fired once ``k`` events (both cohorts) are counted,
    when the canary's rate is ``rho1`` times the baseline's and its share of exposure ``q``
    (the test pooled over a constant split; a lower bound, as :func:`._stats.line_power`)."""
    if k <= 0 or not 0.0 < q < 1.0:
        return 0.0
    x = _threshold(k, q, rho0, higher, math.log(1 / alpha))
    if x is None:
        return 0.0
    pi1 = _share(rho1, q)
    if higher:
        return 1.0 - binomial_tail(k, pi1, x + 1)
    return binomial_tail(k, pi1, x)


@lru_cache(maxsize=256)  # a pure function of plan numbers and a rounded share, asked per tick
def rate_needed(
    q: float, rho0: float, rho1: float, higher: bool, alpha: float, power: float
) -> int:
    """The fewest events (both cohorts) with which :func:`rate_power` reaches ``power``
    (``10**8`` when even that many do not)."""
    limit = 10**8
    if rate_power(limit, q, rho0, rho1, higher, alpha) < power:
        return limit
    high = 16
    while rate_power(high, q, rho0, rho1, higher, alpha) < power:
        high *= 2
    low = high // 2
    while low + 1 < high:
        mid = (low + high) // 2
        if rate_power(mid, q, rho0, rho1, higher, alpha) >= power:
            high = mid
        else:
            low = mid
    return high


def _log_ratio_and_variance(
    n_c: int, sum_c: float, sq_c: float, n_b: int, sum_b: float, sq_b: float
) -> tuple[float, float] | None:
    """``ln(mean_c / mean_b)`` and its delta-method variance; ``None`` when undefined."""
    if n_c < 2 or n_b < 2 or sum_c <= 0 or sum_b <= 0:
        return None
    m_c, m_b = sum_c / n_c, sum_b / n_b
    var_c = max(sq_c / n_c - m_c * m_c, 0.0) * n_c / (n_c - 1)
    var_b = max(sq_b / n_b - m_b * m_b, 0.0) * n_b / (n_b - 1)
    v = var_c / (n_c * m_c * m_c) + var_b / (n_b * m_b * m_b)
    if v <= 0:
        return None
    return math.log(m_c / m_b), v


def mean_log_e(
    canary: tuple[int, float, float],
    baseline: tuple[int, float, float],
    rho0: float,
    tau: float,
    higher_is_better: bool,
) -> float:
    """Log e-value of a mean guard on the stage's totals (``(valued, total, squares)`` per
    cohort): the normal mixture test of ``ln(mean_c / mean_b)`` against ``ln(rho0)``, counted
    only on the wrong side (0 otherwise, and before :data:`MIN_VALUED` valued events each)."""
    if min(canary[0], baseline[0]) < MIN_VALUED:
        return 0.0
    found = _log_ratio_and_variance(*canary, *baseline)
    if found is None:
        return 0.0
    theta, v = found
    s = math.log(rho0) - theta if higher_is_better else theta - math.log(rho0)
    if s <= 0:
        return 0.0
    t2 = tau * tau
    return 0.5 * math.log(v / (v + t2)) + t2 * s * s / (2 * v * (v + t2))


def mean_power(
    n_canary: int, cv2: float, q: float, rho0: float, rho1: float, tau: float, alpha: float
) -> float:
    """The chance that a mean guard has fired with ``n_canary`` canary valued events (and the
    baseline's in proportion, ``q`` the canary's share) when the canary's mean is ``rho1``
    times the baseline's: the normal approximation of its statistic against the boundary,
    for a squared coefficient of variation ``cv2`` of the values in both cohorts."""
    if n_canary < MIN_VALUED or not 0.0 < q < 1.0 or cv2 <= 0:
        return 0.0
    effect = abs(math.log(rho0) - math.log(rho1))
    v = cv2 / n_canary + cv2 * q / (n_canary * (1 - q))
    t2 = tau * tau
    crit = math.sqrt(2 * v * (v + t2) / t2 * (math.log(1 / alpha) + 0.5 * math.log((v + t2) / v)))
    return NormalDist().cdf((effect - crit) / math.sqrt(v))


def mean_needed(
    cv2: float, q: float, rho0: float, rho1: float, tau: float, alpha: float, power: float
) -> int:
    """The fewest canary valued events with which :func:`mean_power` reaches ``power``."""
    if not 0.0 < q < 1.0 or cv2 <= 0:
        return MIN_VALUED

    def enough(n: int) -> bool:
        return mean_power(n, cv2, q, rho0, rho1, tau, alpha) >= power

    high = MIN_VALUED
    while not enough(high):
        high *= 2
        if high > 10**9:
            return high
    low = high // 2
    while low + 1 < high:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return max(high, MIN_VALUED)
