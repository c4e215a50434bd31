"""Tracked events in snapshots: running totals per (flag, variant, event) and their spans.

What ``CanaryProvider.track()`` records (``instrumentation/_tracking.py``: four monotonic
counters) is folded like the request counters: every series' increase since the previous
collection is added into reset-free running totals, one :class:`Tracked` per (flag, variant,
event). A span is the difference of two snapshots' totals (:func:`tracked_between`), which is
what ``counts_between`` puts in ``CohortCounts.tracked``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from openfeature_canary.evidence import Tracked
from openfeature_canary.instrumentation._names import (
    TRACKING_EVENTS_NAME,
    TRACKING_VALUE_NAME,
    TRACKING_VALUE_SQUARES_NAME,
    TRACKING_VALUED_NAME,
)

__all__ = [
    "NO_TRACKED",
    "TRACKING_FIELDS",
    "TrackedKey",
    "TrackedTotals",
    "tracked_between",
    "tracked_increase",
]

#: (flag key, variant, event name).
TrackedKey = tuple[str, str, str]
#: Each tracking counter and the :class:`Tracked` field it fills (by position).
TRACKING_FIELDS: Final[Mapping[str, int]] = MappingProxyType(
    {
        TRACKING_EVENTS_NAME: 0,
        TRACKING_VALUED_NAME: 1,
        TRACKING_VALUE_NAME: 2,
        TRACKING_VALUE_SQUARES_NAME: 3,
    }
)
#: No tracked event.
NO_TRACKED: Final[Mapping[TrackedKey, Tracked]] = MappingProxyType({})
_NO_EVENTS: Final[Mapping[str, Tracked]] = MappingProxyType({})


def _fields(t: Tracked) -> tuple[float, float, float, float]:
    return float(t.count), float(t.valued), t.total, t.squares


def _tracked(values: list[float]) -> Tracked:
    count, valued = round(values[0]), round(values[1])
    # The counters are collected one after the other: an event in flight may show in
    # ``valued`` before ``count``; never more valued events than events.
    return Tracked(count, min(valued, count), max(values[2], 0.0), max(values[3], 0.0))


class TrackedTotals:
    """Reset-free running totals per (flag, variant, event); the frozen view is rebuilt only
    when something changed, so unchanged snapshots share it. Not thread-safe (the owning
    source serialises calls)."""

    def __init__(self) -> None:
        self._totals: dict[TrackedKey, list[float]] = {}
        self._dirty = False
        self._view: Mapping[TrackedKey, Tracked] = NO_TRACKED

    def add(self, key: TrackedKey, field: int, increase: float) -> None:
        """Add one counter's increase (``field``: its position in :data:`TRACKING_FIELDS`)."""
        total = self._totals.get(key)
        if total is None:
            total = self._totals[key] = [0.0, 0.0, 0.0, 0.0]
        elif not increase:
            return
        total[field] += increase
        self._dirty = True

    def add_tracked(self, key: TrackedKey, increase: Tracked) -> None:
        """Add a whole :class:`Tracked` increase (a fleet process's growth)."""
        for field, value in enumerate(_fields(increase)):
            self.add(key, field, value)

    def freeze(self) -> Mapping[TrackedKey, Tracked]:
        """The totals now (the previous object when nothing changed)."""
        if self._dirty:
            self._dirty = False
            self._view = MappingProxyType({k: _tracked(v) for k, v in self._totals.items()})
        return self._view


def tracked_increase(new: Tracked, old: Tracked | None) -> Tracked:
    """What one process's totals grew by since ``old``; a total that went down means the
    process restarted in place, and its whole value is new (``increase()`` semantics)."""
    if old is None or new.count < old.count or new.valued < old.valued:
        return new
    if new.total < old.total or new.squares < old.squares:
        return new
    return Tracked(
        new.count - old.count,
        new.valued - old.valued,
        new.total - old.total,
        new.squares - old.squares,
    )


def tracked_between(
    new: Mapping[TrackedKey, Tracked],
    old: Mapping[TrackedKey, Tracked],
    flag: str,
    variant: str,
) -> Mapping[str, Tracked]:
    """Per event name, what the cohort ``(flag, variant)`` tracked between two snapshots'
    totals (which only grow); events with no growth are absent."""
    if new is old:
        return _NO_EVENTS
    out: dict[str, Tracked] = {}
    for (f, v, event), total in new.items():
        if f != flag or v != variant:
            continue
        before = old.get((f, v, event))
        grown = total if before is None else tracked_increase(total, before)
        if grown.count:
            valued = min(grown.valued, grown.count)
            out[event] = Tracked(grown.count, valued, grown.total, grown.squares)
    return MappingProxyType(out) if out else _NO_EVENTS
