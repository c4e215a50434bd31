"""The gates' statistics, checked: closed forms against scipy and statsmodels, the always-valid
error guarantee by seeded simulation, and the power numbers a stage reports (STYLE rule 13)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from scipy import special, stats
from statsmodels.stats.proportion import proportion_confint

from openfeature_canary.policy._stats import (
    LINE_MULTIPLIERS,
    auc,
    binomial_tail,
    line_log_e,
    line_power,
    log_mean_exp,
    mann_whitney_z,
    ratio_log_increment,
    requests_needed,
    tail_log_increment,
    threshold_count,
    unit_log_increment,
    wilson_interval,
)

#: The level of the simulated tests; the guarantee is a false-alarm rate at most this.
ALPHA = 0.05
#: Room above ALPHA for the observed rate's 95 % Wilson upper bound (simulation noise only).
SLACK = 0.01
#: A day of 10 s ticks: the longest stage of the reference plan, read at every tick.
DAY_TICKS = 8640

Ints = npt.NDArray[np.int64]


def _assert_within_budget(hits: int, runs: int) -> None:
    """The observed false-alarm rate's Wilson upper bound stays below ALPHA + SLACK."""
    upper = proportion_confint(hits, runs, alpha=0.05, method="wilson")[1]
    assert upper < ALPHA + SLACK, f"{hits}/{runs} false alarms (upper bound {upper:.4f})"


# --------------------------------------------------------------------------- closed forms


def _tail_cases(ns: tuple[int, ...]) -> list[tuple[int, float, int]]:
    cases: list[tuple[int, float, int]] = []
    for n in ns:
        for p in (1e-5, 1e-3, 0.01, 0.05, 0.25, 0.5, 0.9):
            mu, sd = n * p, math.sqrt(n * p * (1 - p))
            ks = {0, 1, 2, n, n + 1, *(int(mu + z * sd) for z in (-4, -2, -1, 0, 0.5, 1, 2, 4, 6))}
            cases.extend((n, p, k) for k in sorted(ks) if k >= 0)
    return cases


def test_binomial_tail_matches_scipy_sf_to_1e_7_in_the_exact_branch() -> None:
    for n, p, k in _tail_cases((1, 2, 10, 60, 300, 1000, 10**4, 10**5, 10**6, 10**7)):
        if k <= 5000:
            assert binomial_tail(n, p, k) == pytest.approx(stats.binom.sf(k - 1, n, p), abs=1e-7)


def test_binomial_tail_normal_branch_is_within_half_a_percent_of_scipy() -> None:
    # Beyond 5000 terms the runtime uses a normal approximation; its docstring promises 0.5 %.
    cases = [c for c in _tail_cases((10**4, 10**5, 10**6, 10**7)) if c[2] > 5000]
    assert len(cases) > 50
    for n, p, k in cases:
        assert binomial_tail(n, p, k) == pytest.approx(stats.binom.sf(k - 1, n, p), abs=5e-3)


def test_binomial_tail_edges() -> None:
    assert binomial_tail(10, 0.3, 0) == 1.0
    assert binomial_tail(10, 0.3, 11) == 0.0
    assert binomial_tail(10, 0.0, 1) == 0.0
    assert binomial_tail(10, 1.0, 10) == 1.0


def test_wilson_interval_matches_statsmodels() -> None:
    for n in (1, 7, 60, 300, 10**4, 10**6):
        for k in sorted({0, 1, n // 100, n // 3, n - 1, n}):
            for confidence in (0.9, 0.95, 0.995):
                expected = proportion_confint(k, n, alpha=1 - confidence, method="wilson")
                assert wilson_interval(n, k, confidence) == pytest.approx(expected, abs=1e-12)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def _expand(hist: Ints) -> Ints:
    """One value per request: its bucket's index (requests in one bucket are tied)."""
    return np.repeat(np.arange(len(hist)), hist)


@pytest.mark.parametrize("seed", range(8))
def test_auc_and_mann_whitney_z_match_scipy_on_expanded_samples(seed: int) -> None:
    rng = np.random.default_rng(seed)
    buckets = int(rng.integers(2, 15))
    canary = rng.integers(0, 40, buckets) * (rng.random(buckets) < 0.8)
    baseline = rng.integers(0, 400, buckets) * (rng.random(buckets) < 0.8)
    canary[0] += 1  # neither cohort empty
    baseline[-1] += 1
    c, b = [int(x) for x in canary], [int(x) for x in baseline]
    result = stats.mannwhitneyu(
        _expand(canary), _expand(baseline), use_continuity=False, method="asymptotic"
    )
    u = float(result.statistic)
    effect, z = auc(c, b), mann_whitney_z(c, b)
    assert effect is not None and z is not None
    assert effect * sum(c) * sum(b) == pytest.approx(u, rel=1e-12)
    expected_z = math.copysign(stats.norm.isf(result.pvalue / 2), u - sum(c) * sum(b) / 2)
    assert z == pytest.approx(expected_z, rel=1e-7, abs=1e-9)


def test_auc_and_mann_whitney_z_undefined_without_data_or_spread() -> None:
    assert auc([0, 0], [3, 1]) is None
    assert mann_whitney_z([0, 0], [3, 1]) is None
    assert mann_whitney_z([0, 4, 0], [0, 9, 0]) is None  # every value tied: no variance


def _mixture_log_e(n: int, k: int, p0: float) -> float:
    """E = mean_j Binom(k; n, p_j) / Binom(k; n, p0), the p_j the line times each multiplier."""
    alternatives = [p0 * m for m in LINE_MULTIPLIERS if p0 * m < 1]
    ratios = [stats.binom.logpmf(k, n, p1) - stats.binom.logpmf(k, n, p0) for p1 in alternatives]
    return float(special.logsumexp(ratios) - math.log(len(ratios)))


@pytest.mark.parametrize("p0", [0.0005, 0.001, 0.005, 0.01, 0.05, 0.3])
def test_line_log_e_equals_the_mixture_of_binomial_likelihood_ratios(p0: float) -> None:
    for n in (1, 10, 60, 300, 3000, 10**5):
        for k in {0, 1, 2, int(n * p0), int(3 * n * p0), n // 10, n}:
            if k <= n:
                assert line_log_e(n, k, p0) == pytest.approx(_mixture_log_e(n, k, p0), abs=1e-7)


def test_line_log_e_edges() -> None:
    assert line_log_e(60, 0, 0.0) == 0.0
    assert line_log_e(60, 1, 0.0) == math.inf  # none allowed: one occurrence is proof
    assert line_log_e(60, 60, 1.0) == 0.0  # everything allowed: no evidence possible
    assert line_log_e(0, 0, 0.001) == 0.0


def test_threshold_count_is_the_first_count_whose_e_value_reaches_the_boundary() -> None:
    boundary = math.log(320)
    for p0 in (0.001, 0.05):
        for n in (5, 60, 200, 3000):
            k = threshold_count(n, p0, boundary)
            assert k == n + 1 or line_log_e(n, k, p0) >= boundary
            assert k == 0 or line_log_e(n, k - 1, p0) < boundary


def test_ratio_log_increment_is_the_conditional_binomial_likelihood_ratio() -> None:
    # Given e errors, the canary's share is Binomial(e, rho n_c / (rho n_c + n_b)).
    for e_c, e_b, n_c, n_b, rho0 in [(1, 0, 50, 950, 1.5), (3, 7, 500, 500, 1.0), (0, 4, 9, 1, 2)]:
        share0 = rho0 * n_c / (rho0 * n_c + n_b)
        got = ratio_log_increment(e_c, e_b, n_c, n_b, rho0)
        for m, value in zip((2.0, 4.0, 8.0, 16.0, 32.0), got, strict=True):
            share1 = rho0 * m * n_c / (rho0 * m * n_c + n_b)
            expected = stats.binom.logpmf(e_c, e_c + e_b, share1) - stats.binom.logpmf(
                e_c, e_c + e_b, share0
            )
            assert value == pytest.approx(expected, abs=1e-9)
    assert ratio_log_increment(0, 0, 50, 950, 1.5) == (0.0,) * 5
    assert ratio_log_increment(2, 1, 0, 950, 1.5) == (0.0,) * 5


def test_tail_and_unit_increments_are_the_conditional_binomial_likelihood_ratios() -> None:
    # Over the bound: given a = a_c + a_b, a_c ~ Binomial(a, rho n_c / (rho n_c + n_b)).
    # In units: each new erroring unit is the canary's with chance rho q / (rho q + 1 - q).
    for a_c, a_b, n_c, n_b, q, rho0 in [(4, 3, 60, 1140, 0.05, 2.0), (0, 9, 500, 500, 0.5, 1.25)]:
        tail = tail_log_increment(a_c, a_b, n_c, n_b, rho0)
        unit = unit_log_increment(a_c, a_b, q, rho0)
        for m, t, u in zip((2.0, 4.0, 8.0, 16.0, 32.0), tail, unit, strict=True):
            for got, w_c, w_b in ((t, n_c, n_b), (u, q, 1 - q)):
                share0 = rho0 * w_c / (rho0 * w_c + w_b)
                share1 = rho0 * m * w_c / (rho0 * m * w_c + w_b)
                expected = stats.binom.logpmf(a_c, a_c + a_b, share1) - stats.binom.logpmf(
                    a_c, a_c + a_b, share0
                )
                assert got == pytest.approx(expected, abs=1e-9)
    assert unit_log_increment(3, 1, 1.0, 1.25) == (0.0,) * 5  # no baseline units: no test


def test_log_mean_exp_matches_scipy() -> None:
    for values in ([0.0], [-1e4, 3.0, 700.0, 710.0], [-5.0, -5.0]):
        expected = special.logsumexp(values) - math.log(len(values))
        assert log_mean_exp(values) == pytest.approx(expected, abs=1e-9)
    assert log_mean_exp([]) == 0.0


# --------------------------------------------------------------------------- always valid


@pytest.mark.parametrize(
    ("p0", "per_tick", "alpha", "ticks"),
    [(0.001, 50, 0.05, DAY_TICKS), (0.05, 50, 0.05, DAY_TICKS), (0.001, 50, 0.05 / 14, 1440)],
)
def test_line_test_read_every_tick_for_a_day_at_the_line_stays_within_alpha(
    p0: float, per_tick: int, alpha: float, ticks: int
) -> None:
    """5xx at exactly the 0.1 % line / 5 % of requests over the P95 line, 50 canary requests
    a tick, read at all 8640 ticks (4 h at the reference plan's own level, 0.05 / 14); the
    e-value grows with k, so "reached 1/alpha" is ``k >= threshold_count(n)``, computed by the
    runtime for each tick's n."""
    boundary = math.log(1 / alpha)
    ns = np.arange(1, ticks + 1) * per_tick
    thresholds = np.array([threshold_count(int(n), p0, boundary) for n in ns])
    rng = np.random.default_rng(9)
    runs, hits = 10_000 if alpha == ALPHA else 20_000, 0
    for _ in range(10):
        k = rng.binomial(per_tick, p0, size=(runs // 10, ticks)).cumsum(axis=1)
        hits += int((k >= thresholds).any(axis=1).sum())
    if alpha == ALPHA:
        assert hits > 0  # the simulation can see false alarms at all
        _assert_within_budget(hits, runs)
    assert hits / runs <= alpha
    _assert_within(hits, runs, alpha)


@pytest.mark.parametrize(
    ("rho0", "n_c", "n_b", "alpha"),
    [
        (1.0, 50, 950, 0.05),
        (1.5, 50, 950, 0.05),
        (1.0, 500, 500, 0.05),
        (1.25, 50, 950, 0.05 / 14),
    ],
)
def test_ratio_test_read_after_every_error_stays_within_alpha(
    rho0: float, n_c: int, n_b: int, alpha: float
) -> None:
    """The canary's 5xx share exactly ``rho0`` times the baseline's (equal rates with margin 1),
    traffic split as in stage 1 (5 %) or 50/50. Given the split, each error is the canary's
    with a fixed chance and adds a fixed increment (the runtime's, from one error of each
    cohort), so reading after each of 10 000 errors is reading more often than every tick."""
    canary_step = np.array(ratio_log_increment(1, 0, n_c, n_b, rho0))
    baseline_step = np.array(ratio_log_increment(0, 1, n_c, n_b, rho0))
    assert ratio_log_increment(3, 5, n_c, n_b, rho0) == pytest.approx(
        tuple(3 * canary_step + 5 * baseline_step)
    )
    share = rho0 * n_c / (rho0 * n_c + n_b)
    rng = np.random.default_rng(4)
    runs, errors, hits = (4000, 10_000, 0) if alpha == ALPHA else (20_000, 2000, 0)
    for _ in range(4 if alpha == ALPHA else 20):
        is_canary = rng.random((runs // (4 if alpha == ALPHA else 20), errors)) < share
        e_c = is_canary.cumsum(axis=1)
        e_b = np.arange(1, errors + 1) - e_c
        rows, cols = np.nonzero(is_canary)  # the e-value only rises with a canary error
        x, y = e_c[rows, cols], e_b[rows, cols]
        e = sum(np.exp(x * a + y * b) for a, b in zip(canary_step, baseline_step, strict=True))
        hits += len(np.unique(rows[e / len(canary_step) >= 1 / alpha]))
    if alpha == ALPHA:
        assert hits > 0
        _assert_within_budget(hits, runs)
    assert hits / runs <= alpha
    _assert_within(hits, runs, alpha)


#: The reference plan's level per test: its 5 % budget over its 14 tests (4 stages x 2 lines,
#: 2 comparisons in stages 1 to 3; none at 100 % without a holdback).
REFERENCE_ALPHA = 0.05 / 14


def _conditional_hits(
    k_c: Ints, k_b: Ints, w_c: Any, w_b: Any, rho0: float, alpha: float
) -> tuple[int, Any]:
    """Runs (rows) whose running mixture e-value ever reaches ``1/alpha``, each column a tick:
    the increments of :func:`ratio_log_increment`, vectorised (and the last tick's steps)."""
    total = np.zeros(k_c.shape[0])
    running = []
    steps = []
    for m in (2.0, 4.0, 8.0, 16.0, 32.0):
        pi0 = rho0 * w_c / (rho0 * w_c + w_b)
        pi1 = rho0 * m * w_c / (rho0 * m * w_c + w_b)
        step = k_c * np.log(pi1 / pi0) + k_b * (np.log1p(-pi1) - np.log1p(-pi0))
        steps.append(step)
        running.append(np.cumsum(step, axis=1))
    e = sum(np.exp(r) for r in running) / len(running)
    total = (e >= 1 / alpha).any(axis=1)
    return int(total.sum()), steps


@pytest.mark.parametrize("alpha", [ALPHA, REFERENCE_ALPHA])
def test_tail_test_read_every_tick_at_the_null_edge_stays_within_alpha(alpha: float) -> None:
    """Stage 1 at 100 rps (5 canary, 95 baseline requests/s, 10 s ticks), the canary's share
    over the bound exactly ``rho0 = 2`` times the baseline's 1 %, every tick read for 2 hours,
    at 5 % and at the reference plan's own level. The vectorised step is the runtime's."""
    rng = np.random.default_rng(21)
    rho0, share, ticks = 2.0, 0.01, 720
    runs, chunk, hits = 20_000 if alpha < ALPHA else 4000, 1000, 0
    for _ in range(runs // chunk):
        n_c = rng.poisson(50, size=(chunk, ticks))
        n_b = rng.poisson(950, size=(chunk, ticks))
        a_c, a_b = rng.binomial(n_c, rho0 * share), rng.binomial(n_b, share)
        with np.errstate(divide="ignore", invalid="ignore"):
            got, steps = _conditional_hits(a_c, a_b, n_c, n_b, rho0, alpha)
        hits += got
    runtime = tail_log_increment(
        int(a_c[0, 0]), int(a_b[0, 0]), int(n_c[0, 0]), int(n_b[0, 0]), rho0
    )
    assert [float(s[0, 0]) for s in steps] == pytest.approx(runtime, abs=1e-9)
    if alpha == ALPHA:
        assert hits > 0  # the simulation sees false alarms at all
    assert hits / runs <= alpha
    _assert_within(hits, runs, alpha)


@pytest.mark.parametrize("alpha", [ALPHA, REFERENCE_ALPHA])
def test_unit_test_read_after_every_new_erroring_unit_stays_within_alpha(alpha: float) -> None:
    """The canary's units err ``rho0 = 1.25`` times as often as the baseline's (the null's
    edge), 5 % of units on the canary: each new erroring unit is the canary's with chance
    ``pi(rho0)``; read after each of 3000 units."""
    rng = np.random.default_rng(5)
    rho0, q, units = 1.25, 0.05, 3000
    pi0 = rho0 * q / (rho0 * q + 1 - q)
    runs, chunk, hits = 20_000 if alpha < ALPHA else 4000, 500, 0
    for _ in range(runs // chunk):
        is_canary = (rng.random((chunk, units)) < pi0).astype(np.int64)
        got, steps = _conditional_hits(is_canary, 1 - is_canary, q, 1 - q, rho0, alpha)
        hits += got
    c0 = int(is_canary[0, 0])
    assert [float(s[0, 0]) for s in steps] == pytest.approx(
        unit_log_increment(c0, 1 - c0, q, rho0), abs=1e-12
    )
    if alpha == ALPHA:
        assert hits > 0
    assert hits / runs <= alpha
    _assert_within(hits, runs, alpha)


def _assert_within(hits: int, runs: int, alpha: float) -> None:
    """The observed rate's 95 % Wilson upper bound stays below ``alpha`` plus a fifth of it."""
    upper = proportion_confint(hits, runs, alpha=0.05, method="wilson")[1]
    assert upper < 1.2 * alpha + 3.0 / runs, f"{hits}/{runs} false alarms (upper {upper:.5f})"


# --------------------------------------------------------------------------- power

#: Stage 1's lines against their default detectable regressions, at 1/16 of a 5 % budget.
STAGE1_LINES = [(0.001, 0.05), (0.05, 0.25), (0.005, 0.05), (0.001, 0.003)]
STAGE_ALPHA = 0.05 / 16


@pytest.mark.parametrize(("p0", "p1"), STAGE1_LINES)
def test_line_power_grows_with_n(p0: float, p1: float) -> None:
    doubling = [line_power(25 * 2**i, p0, p1, STAGE_ALPHA) for i in range(14)]
    assert doubling[0] < 0.5 < 0.999 < doubling[-1]
    # k* moves in integers, so the power dips a little step by step; doubling n never loses
    # more than 2 points.
    for n in [*range(1, 3000, 7), *(25 * 2**i for i in range(13))]:
        assert line_power(2 * n, p0, p1, STAGE_ALPHA) >= line_power(n, p0, p1, STAGE_ALPHA) - 0.02


@pytest.mark.parametrize(
    ("p0", "p1", "n"), [(0.001, 0.05, 100), (0.001, 0.05, 198), (0.05, 0.25, 60)]
)
def test_line_power_matches_a_simulation_of_the_fixed_n_rule(p0: float, p1: float, n: int) -> None:
    rng = np.random.default_rng(5)
    draws = rng.binomial(n, p1, size=20_000)
    boundary = math.log(1 / STAGE_ALPHA)
    fires = {int(k): line_log_e(n, int(k), p0) >= boundary for k in np.unique(draws)}
    observed = float(np.mean([fires[int(k)] for k in draws]))
    assert observed == pytest.approx(line_power(n, p0, p1, STAGE_ALPHA), abs=0.02)


@pytest.mark.parametrize(("p0", "p1"), STAGE1_LINES)
@pytest.mark.parametrize("power", [0.8, 0.99])
def test_requests_needed_reaches_the_power(p0: float, p1: float, power: float) -> None:
    n = requests_needed(p0, p1, STAGE_ALPHA, power)
    assert n < 10**6
    assert line_power(n, p0, p1, STAGE_ALPHA) >= power


def test_requests_needed_unreachable_returns_the_limit() -> None:
    assert requests_needed(0.001, 0.0011, STAGE_ALPHA, 0.99, limit=1000) == 1000
