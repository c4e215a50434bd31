"""A window as the difference of two cumulative snapshots: a histogram's increase per bucket
layout and its 5xx increase, and the counts the gates read from it. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from operator import sub
from types import MappingProxyType
from typing import Final

from openfeature_canary.signals._counts import EMPTY_COHORT, CohortCounts
from openfeature_canary.signals._snapshots import Bounds, CohortTotals, Counts

__all__ = ["NOTHING", "HistWindow", "cohort_counts", "cohort_window", "window"]


@dataclass(frozen=True)
class HistWindow:
    """A histogram's increase over a window, bucket counts grouped by bound layout."""

    n: int
    errors: int
    by_bounds: Mapping[Bounds, Counts]


def _subtract(new: Counts, old: Counts | None) -> Counts:
    return new if old is None else tuple(map(sub, new, old))


def window(
    new: Iterable[tuple[Bounds, Counts]], old: Iterable[tuple[Bounds, Counts]], errors: int
) -> HistWindow:
    """The increase of histogram totals between two snapshots (``errors``: the 5xx increase)."""
    before = dict(old)
    by_bounds: dict[Bounds, Counts] = {}
    n = 0
    for bounds, counts in new:
        diff = _subtract(counts, before.get(bounds))
        total = sum(diff)
        if total:
            n += total
            by_bounds[bounds] = diff
    return HistWindow(n, errors, by_bounds)


NOTHING: Final = HistWindow(0, 0, MappingProxyType({}))


def cohort_window(new: CohortTotals | None, old: CohortTotals | None) -> HistWindow:
    """A cohort's increase between two snapshots (``None``: never seen)."""
    if new is None or new is old:  # never seen, or unchanged (shared between snapshots)
        return NOTHING
    if old is None:
        return window(new.hist, (), new.errors)
    return window(new.hist, old.hist, new.errors - old.errors)


def cohort_counts(hist: HistWindow) -> CohortCounts:
    """The window's counts as the gates read them: the bucket layout that saw most requests."""
    if not hist.by_bounds:
        return EMPTY_COHORT
    bounds, counts = max(hist.by_bounds.items(), key=lambda item: sum(item[1]))
    n = sum(counts)
    return CohortCounts(n, min(max(hist.errors, 0), n), tuple(bounds), tuple(counts))
