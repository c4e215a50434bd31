"""Per-cohort request counts over a span: the raw evidence the sequential gates fold in.

A :class:`CountsReading` is what :meth:`SignalSource.counts_between` returns: for the canary
(variant ``on``) and the baseline (variant ``off``) cohort of one flag, how many requests were
served between two times, how many of them answered 5xx, and how they spread over the request
duration histogram's buckets (bounds in milliseconds, the last bucket ``+Inf``). The gates
(``policy/_gates.py``, their totals persisted as ``evidence.StageEvidence``) need counts, not
quantiles: "P95 above 150 ms" is "more than 5 % of requests above the 150 ms bound", a
binomial proportion like the 5xx share.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from openfeature_canary.evidence import Tracked

# Hashed where the unit is recorded (instrumentation); re-exported where the evidence reads it.
from openfeature_canary.instrumentation import unit_digest

__all__ = ["EMPTY_COHORT", "NO_EVENTS", "CohortCounts", "CountsReading", "Tracked", "unit_digest"]

#: No tracked event (the default of :attr:`CohortCounts.tracked`).
NO_EVENTS: Final[Mapping[str, Tracked]] = MappingProxyType({})


@dataclass(frozen=True)
class CohortCounts:
    """One cohort's increase over a span.

    ``bounds`` are the histogram's finite upper bounds in milliseconds (ascending);
    ``counts`` has one more entry than ``bounds`` (the last is the ``+Inf`` bucket) and sums to
    ``n``. ``errors`` counts responses with status >= 500 (``0 <= errors <= n``).

    ``error_units``: the distinct units (:func:`unit_digest` of the targeting key the cohort was
    bucketed by) among those 5xx, when the source knows them; ``None`` when it cannot (a
    Prometheus source; an in-process or fleet span whose 5xx were not all recorded with their
    unit, or overran the per-cohort log: then the gates treat every request as its own unit,
    which holds when bucketing is by request and overstates the evidence when units repeat).

    ``tracked``: per event name the plan's guards read, what ``track()`` recorded for this
    cohort over the span (:class:`Tracked`); an event nobody tracked is absent.

    >>> CohortCounts(3, 1, (100.0,), (2, 1)).n
    3
    """

    n: int
    errors: int
    bounds: tuple[float, ...] = ()
    counts: tuple[int, ...] = (0,)
    error_units: frozenset[str] | None = None
    tracked: Mapping[str, Tracked] = field(default_factory=lambda: NO_EVENTS)

    def __post_init__(self) -> None:
        if len(self.counts) != len(self.bounds) + 1:
            raise ValueError(
                f"counts has {len(self.counts)} buckets for {len(self.bounds)} bounds "
                "(expected one more, the +Inf bucket)"
            )
        if self.n < 0 or not 0 <= self.errors <= max(self.n, 0):
            raise ValueError(f"inconsistent counts: n={self.n}, errors={self.errors}")
        if self.error_units is not None and len(self.error_units) > self.errors:
            raise ValueError(
                f"{len(self.error_units)} erroring units for {self.errors} errors "
                "(at most one each)"
            )


#: A cohort that served nothing.
EMPTY_COHORT: Final = CohortCounts(0, 0)


@dataclass(frozen=True)
class CountsReading:
    """Both cohorts of one flag between the snapshots at ``start`` and ``end``.

    ``start``/``end`` are the times of the data actually used (a source may start later than
    asked when its history does not reach back, never earlier); ``error`` says why the source
    could not read (then both cohorts are empty).
    """

    canary: CohortCounts
    baseline: CohortCounts
    start: float
    end: float
    error: str | None = None
