"""A gate test's standing, a stage's judgement, and a test's information: the values the
gates (:mod:`._gates`) and the guards (:mod:`._guards`) both return."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["GateTest", "Information", "Judgement"]


@dataclass(frozen=True)
class GateTest:
    """One test's standing: ``log_e`` against the ``boundary`` ``ln(1/alpha)``.

    ``estimate`` is the canary's share (lines), or its ratio to the baseline's (comparisons: 5xx
    share, or share over the tail bound); ``line`` is the null's edge (the line, or the
    margin); ``n`` the requests behind it. A guard (``guard:<event>``): the canary's rate or mean
    over the baseline's, the null's ratio (``1 - max_drop``, or ``1 + max_drop``), and the
    canary's events.
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
    ``needed`` requests would reach the plan's power (required). ``power_3x`` and
    ``needed_3x``: the same against three times the line (a 5xx share 3x ``max_error_rate``; 15 %
    over a P95 line, 3 % over a P99 line): the effect the docs state, reported, not required.
    ``line``: the share the line allows (the null's edge). A guard's ``n`` and ``needed`` count
    events (both cohorts' for a rate, the canary's valued events for a mean), ``detect`` is its
    ``detect_drop`` and ``line`` its null ratio."""

    name: str
    detect: float
    power: float
    n: int
    needed: int
    power_3x: float | None = None
    needed_3x: int | None = None
    line: float = 0.0
