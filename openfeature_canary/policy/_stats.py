"""Closed-form statistics of the gates: e-values and power (no numeric dependency).

Every function is a pure function of counts, with its formula and source below; the tests
compare them with scipy and statsmodels and check the error guarantee by seeded simulation
(``tests/test_stats.py``). ``docs/decisions.md`` explains how the policy uses them.

**E-values and Ville's inequality.** A test statistic ``E_t >= 0`` with ``E_0 = 1`` that is a
supermartingale under the null hypothesis satisfies ``P(sup_t E_t >= 1/alpha) <= alpha``
(Ville 1939; Ramdas et al., "Game-theoretic statistics and safe anytime-valid inference",
Statistical Science 2023). The policy may therefore look at every tick, for a day, and reject
only when ``E_t >= 1/alpha``: the chance of a false rejection stays below ``alpha``. A mixture
(an average) of such supermartingales is one too (Robbins 1970), which lets one test be
powerful against regressions of unknown size. Everything here is in logarithms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from statistics import NormalDist
from typing import Final

__all__ = [
    "LINE_MULTIPLIERS",
    "RATIO_MULTIPLIERS",
    "auc",
    "binomial_tail",
    "line_alternatives",
    "line_log_e",
    "line_power",
    "log_mean_exp",
    "mann_whitney_z",
    "ratio_log_increment",
    "requests_needed",
    "tail_log_increment",
    "threshold_count",
    "unit_log_increment",
    "wilson_interval",
]

#: Alternatives of the line test, as multiples of the line (those below 1 are kept).
LINE_MULTIPLIERS: Final = (1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0)
#: Alternatives of the canary/baseline error-ratio test, as multiples of the margin.
RATIO_MULTIPLIERS: Final = (2.0, 4.0, 8.0, 16.0, 32.0)
#: Above this many errors the power sum switches to a normal approximation (cost bound).
_EXACT_TAIL_MAX: Final = 5000


def log_mean_exp(values: Sequence[float]) -> float:
    """``ln(mean(exp(v)))`` without overflow: the log of a mixture of e-values."""
    if not values:
        return 0.0
    top = max(values)
    if math.isinf(top):
        return top
    return top + math.log(sum(math.exp(v - top) for v in values) / len(values))


# --------------------------------------------------------------------------- a line


def line_alternatives(p0: float) -> tuple[float, ...]:
    """The alternatives ``p1 > p0`` mixed by :func:`line_log_e` (``p0`` times
    :data:`LINE_MULTIPLIERS`, below 1)."""
    return tuple(p0 * m for m in LINE_MULTIPLIERS if p0 * m < 1.0)


def line_log_e(n: int, k: int, p0: float) -> float:
    """Log e-value against "the true share is at most ``p0``", after ``k`` of ``n``.

    The mixture sequential probability ratio test (Wald 1945; Robbins 1970)::

        E = (1/K) sum_j (p_j / p0)^k ((1 - p_j) / (1 - p0))^(n - k),   p_j in line_alternatives

    Each term is a likelihood ratio of a larger share against ``p0``; under any true share
    ``p <= p0`` its expectation per request is at most 1, so ``E`` is a non-negative
    supermartingale and Ville's inequality bounds the chance it ever reaches ``1/alpha``.
    ``p0 = 0`` ("none allowed"): one occurrence is certain evidence (``inf``). ``p0 >= 1``:
    no evidence is possible (0).

    >>> round(line_log_e(60, 1, 0.001), 2)    # one 5xx in 60 requests: E = 3.5, far from 1/alpha
    1.27
    """
    if p0 <= 0.0:
        return math.inf if k > 0 else 0.0
    alternatives = line_alternatives(p0)
    if not alternatives or n <= 0:
        return 0.0
    return log_mean_exp(
        [
            k * math.log(p1 / p0) + (n - k) * math.log1p(-p1) - (n - k) * math.log1p(-p0)
            for p1 in alternatives
        ]
    )


def threshold_count(n: int, p0: float, log_boundary: float) -> int:
    """The fewest occurrences among ``n`` that make :func:`line_log_e` reach the boundary
    (``n + 1`` when none do). ``line_log_e`` grows with ``k``, so this is a bisection."""
    if line_log_e(n, n, p0) < log_boundary:
        return n + 1
    low, high = 0, n  # line_log_e(n, high) >= boundary
    while low < high:
        mid = (low + high) // 2
        if line_log_e(n, mid, p0) >= log_boundary:
            high = mid
        else:
            low = mid + 1
    return low


def binomial_tail(n: int, p: float, k: int) -> float:
    """``P(X >= k)`` for ``X ~ Binomial(n, p)``: an exact sum of the probabilities below
    ``k`` in logarithms (``math.lgamma``), or a normal approximation with continuity
    correction beyond :data:`_EXACT_TAIL_MAX` terms (its error is then below 0.5 %)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    if k > _EXACT_TAIL_MAX:
        sd = math.sqrt(n * p * (1 - p))
        return 1.0 - NormalDist(n * p, sd).cdf(k - 0.5)
    log_p, log_q = math.log(p), math.log1p(-p)
    base = math.lgamma(n + 1)
    below = math.fsum(
        math.exp(base - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * log_p + (n - j) * log_q)
        for j in range(k)
    )
    return min(1.0, max(0.0, 1.0 - below))


def line_power(n: int, p0: float, p1: float, alpha: float) -> float:
    """The chance that the line test at level ``alpha`` has fired by ``n`` requests when the
    true share is ``p1``: ``P(Binomial(n, p1) >= k*)`` with ``k*`` from :func:`threshold_count`.

    A lower bound on the power of the sequential test (it may also have fired earlier and
    the share fallen back since, which this does not count)."""
    if n <= 0:
        return 0.0
    return binomial_tail(n, p1, threshold_count(n, p0, math.log(1 / alpha)))


@lru_cache(maxsize=256)  # a pure function of a few plan numbers, asked at every tick
def requests_needed(p0: float, p1: float, alpha: float, power: float, *, limit: int = 10**9) -> int:
    """The fewest requests with which :func:`line_power` reaches ``power`` (``limit`` when
    even that many do not). The power is not monotone in ``n`` step by step (``k*`` moves in
    integers), so the search doubles, then bisects, then walks to the first ``n`` that holds."""
    if line_power(limit, p0, p1, alpha) < power:
        return limit
    high = 1
    while line_power(high, p0, p1, alpha) < power:
        high *= 2
    low = high // 2
    while low + 1 < high:
        mid = (low + high) // 2
        if line_power(mid, p0, p1, alpha) >= power:
            high = mid
        else:
            low = mid
    return high


def wilson_interval(n: int, k: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval for a share ``k / n`` (Wilson 1927): a window's interval in
    the decision log and the reports (a fixed-sample interval, not a decision rule).
    ``(0, 1)`` when ``n`` is 0."""
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


# --------------------------------------------------------------------------- canary vs baseline


def ratio_log_increment(
    errors_canary: int, errors_baseline: int, n_canary: float, n_baseline: float, rho0: float
) -> tuple[float, ...]:
    """One tick's log-likelihood ratios of the error-ratio test, one per alternative.

    Null: the canary's 5xx share is at most ``rho0`` times the baseline's. Given the tick's
    ``e = e_c + e_b`` errors, ``e_c ~ Binomial(e, pi(rho))`` with
    ``pi(rho) = rho n_c / (rho n_c + n_b)`` (the conditional test of two Poisson or binomial
    rates, Lehmann & Romano, *Testing Statistical Hypotheses*, 4.5). For each alternative
    ``rho_j = rho0 * m`` (:data:`RATIO_MULTIPLIERS`)::

        ln LR_j = e_c ln(pi(rho_j) / pi(rho0)) + e_b ln((1 - pi(rho_j)) / (1 - pi(rho0)))

    ``pi`` grows with ``rho``, so under any ``rho <= rho0`` the ratio's expectation is at most
    1: the running sums, exponentiated and averaged over ``j``, form an e-value. A tick where
    either cohort served nothing carries no information (zeros). ``n_canary`` and ``n_baseline``
    are only weights: the tick's request counts, or the cohorts' unit shares
    (:func:`unit_log_increment`).
    """
    if n_canary <= 0 or n_baseline <= 0 or errors_canary + errors_baseline == 0:
        return tuple(0.0 for _ in RATIO_MULTIPLIERS)

    def share(rho: float) -> float:
        return rho * n_canary / (rho * n_canary + n_baseline)

    pi0 = share(rho0)
    out = []
    for m in RATIO_MULTIPLIERS:
        pi1 = share(rho0 * m)
        out.append(
            errors_canary * math.log(pi1 / pi0)
            + errors_baseline * (math.log1p(-pi1) - math.log1p(-pi0))
        )
    return tuple(out)


def tail_log_increment(
    above_canary: int, above_baseline: int, n_canary: int, n_baseline: int, rho0: float
) -> tuple[float, ...]:
    """One tick's log-likelihood ratios of the latency tail comparison, one per alternative.

    Null: the canary's share of requests over a latency bound ``T`` is at most ``rho0`` times
    the baseline's *in the same tick*. Given the tick's ``a = a_c + a_b`` requests over ``T``,
    ``a_c ~ Binomial(a, pi(rho))``, ``pi(rho) = rho n_c / (rho n_c + n_b)``: the conditional
    test of :func:`ratio_log_increment` on the counts over the bound: the construction of
    Lindon & Malek, "Anytime-valid inference for multinomial count data" (NeurIPS 2022) and
    Lindon, Sanden & Shirikian, "Rapid regression detection in software deployments through
    sequential testing" (KDD 2022), for one cell. Whatever moves both cohorts' latency in the
    tick (a shared incident, the time of day) moves ``a`` and cancels from ``pi``; a regression
    of the tail only raises ``a_c / a`` and shows.
    """
    return ratio_log_increment(above_canary, above_baseline, n_canary, n_baseline, rho0)


def unit_log_increment(
    new_canary: int, new_baseline: int, unit_share: float, rho0: float
) -> tuple[float, ...]:
    """One tick's log-likelihood ratios of the error comparison counted in units.

    With bucketing by a unit (a user id), a unit's cohort is drawn once, Bernoulli(``q``) with
    ``q`` the canary's unit share, independently of how that unit behaves. Count each unit once,
    at its first 5xx in the stage: under "the canary does not change any unit's errors" each
    new erroring unit is in the canary with probability ``q``, under "its units err up to
    ``rho0`` times as often" with at most ``pi(rho0) = rho0 q / (rho0 q + 1 - q)``. The
    likelihood ratios are :func:`ratio_log_increment` with the weights ``q`` and ``1 - q``: an
    exact e-process over the randomisation (a design-based test; Howard et al. 2021 for the
    mixture), in which one unit failing again and again counts once.
    """
    if not 0.0 < unit_share < 1.0:
        return tuple(0.0 for _ in RATIO_MULTIPLIERS)
    return ratio_log_increment(new_canary, new_baseline, unit_share, 1.0 - unit_share, rho0)


def auc(canary: Sequence[int], baseline: Sequence[int]) -> float | None:
    """``P(canary > baseline) + P(tie) / 2`` from two histograms with the same bounds: the
    Mann-Whitney ``U / (n_c n_b)`` with mid-ranks. ``None`` when either is empty."""
    n_c, n_b = sum(canary), sum(baseline)
    if n_c <= 0 or n_b <= 0:
        return None
    psi, below = [], 0
    for r in baseline:  # mid-rank placement of each bucket: ties count one half
        psi.append((below + r / 2) / n_b)
        below += r
    return sum(c * p for c, p in zip(canary, psi, strict=True)) / n_c


def mann_whitney_z(canary: Sequence[int], baseline: Sequence[int]) -> float | None:
    """The Mann-Whitney z statistic of two histograms (ties by mid-rank, tie-corrected
    variance, no continuity correction): ``(U - n_c n_b / 2) / sd(U)`` with
    ``Var(U) = n_c n_b / 12 [(N + 1) - sum(t^3 - t) / (N (N - 1))]``. Positive: the canary
    is slower. ``None`` when it is undefined (an empty cohort, or every value tied)."""
    n_c, n_b = sum(canary), sum(baseline)
    big_n = n_c + n_b
    effect = auc(canary, baseline)
    if effect is None or big_n < 2:
        return None
    ties = sum((c + b) ** 3 - (c + b) for c, b in zip(canary, baseline, strict=True))
    var = n_c * n_b / 12 * ((big_n + 1) - ties / (big_n * (big_n - 1)))
    if var <= 0:
        return None
    return (effect * n_c * n_b - n_c * n_b / 2) / math.sqrt(var)
