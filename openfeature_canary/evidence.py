"""What a stage has gathered, persisted with the state so a restart keeps it.

A :class:`StageEvidence` holds, for the stage a flag is in, the running totals of both cohorts
(requests, 5xx and request-duration bucket counts: a :class:`Tally` each), the running log
e-values of the two canary-against-baseline tests, whose ticks cannot be recomputed from totals,
the hashed units that answered a 5xx (each counts once: errors are rare, the set is capped
at :data:`MAX_ERROR_UNITS` per cohort), and per guard the tracked event's totals
(:class:`GuardTally`). Its size does not grow with the stage's length. The
tests themselves are in :mod:`openfeature_canary.policy`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from openfeature_canary._validate import _bad, _finite, _integer, _join, _object, _show

__all__ = ["MAX_ERROR_UNITS", "GuardTally", "StageEvidence", "Tally", "Tracked"]

#: Erroring units kept per cohort and stage (hashed ids, 16 hex digits each). Once either set is
#: full the unit-level error comparison stops counting (less evidence, never false evidence);
#: a regression that errs for this many units is far over every 5xx line by then.
MAX_ERROR_UNITS = 256


@dataclass(frozen=True)
class Tally:
    """One cohort's totals: ``n`` requests, ``errors`` of them 5xx, and the request-duration
    histogram (``bounds`` in ms, ``counts`` with the ``+Inf`` bucket last).

    ``sum(counts)`` equals ``n`` unless the bucket layout changed during the stage: the
    buckets then restart with the new layout (the latency tests use ``sum(counts)``).
    """

    n: int = 0
    errors: int = 0
    bounds: tuple[float, ...] = ()
    counts: tuple[int, ...] = (0,)

    @property
    def latency_n(self) -> int:
        """Requests behind the bucket counts."""
        return sum(self.counts)

    def add(self, n: int, errors: int, bounds: Sequence[float], counts: Sequence[int]) -> Tally:
        """These totals plus an increase (a new bucket layout restarts the buckets)."""
        if n <= 0:
            return self
        if tuple(bounds) == self.bounds:
            merged = tuple(a + b for a, b in zip(self.counts, counts, strict=True))
        else:
            merged = tuple(counts)
        return Tally(self.n + n, self.errors + errors, tuple(bounds), merged)

    def plus(self, other: Tally) -> Tally:
        """The sum of two tallies (pooling the baselines of several stages)."""
        return self.add(other.n, other.errors, other.bounds, other.counts)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "n": self.n,
            "errors": self.errors,
            "bounds": list(self.bounds),
            "counts": list(self.counts),
        }

    @classmethod
    def from_dict(cls, data: Any, *, path: str = "") -> Tally:
        """Inverse of :meth:`to_dict`; ``StateStoreError`` naming the field otherwise."""
        t = _object(data, path)
        n, errors = _integer(t, path, "n"), _integer(t, path, "errors")
        if errors > n:
            _bad(_join(path, "errors"), f"must not exceed n ({n}), got {errors}")
        bounds = _numbers(t, path, "bounds", integer=False)
        counts = _numbers(t, path, "counts", integer=True)
        if len(counts) != len(bounds) + 1:
            _bad(
                _join(path, "counts"),
                f"must have one more entry than bounds ({len(bounds) + 1}), got {len(counts)}",
            )
        if any(b >= a for a, b in zip(bounds[1:], bounds, strict=False)):
            _bad(_join(path, "bounds"), "must be increasing")
        return cls(n, errors, tuple(float(b) for b in bounds), tuple(int(c) for c in counts))


@dataclass(frozen=True)
class Tracked:
    """One tracked event's totals in one cohort (what ``track()`` recorded): ``count`` events,
    ``valued`` of them with a ``value`` (finite, >= 0), whose sum is ``total`` and sum of
    squares ``squares`` (a mean and its variance, without keeping the values).

    >>> Tracked(3, 2, 5.0, 13.0).plus(Tracked(1, 1, 1.0, 1.0)).mean
    2.0
    """

    count: int = 0
    valued: int = 0
    total: float = 0.0
    squares: float = 0.0

    @property
    def mean(self) -> float | None:
        """The mean ``value`` (``None`` with no valued event)."""
        return self.total / self.valued if self.valued else None

    def plus(self, other: Tracked) -> Tracked:
        """The sum of two totals."""
        return Tracked(
            self.count + other.count,
            self.valued + other.valued,
            self.total + other.total,
            self.squares + other.squares,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "count": self.count,
            "valued": self.valued,
            "total": self.total,
            "squares": self.squares,
        }

    @classmethod
    def from_dict(cls, data: Any, *, path: str = "") -> Tracked:
        """Inverse of :meth:`to_dict`; ``StateStoreError`` naming the field otherwise."""
        t = _object(data, path)
        count, valued = _integer(t, path, "count"), _integer(t, path, "valued")
        if valued > count:
            _bad(_join(path, "valued"), f"must not exceed count ({count}), got {valued}")
        total, squares = _finite(t, path, "total"), _finite(t, path, "squares")
        if total < 0 or squares < 0:
            _bad(path, f"total and squares must be >= 0, got {total:g} and {squares:g}")
        return cls(count, valued, total, squares)


@dataclass(frozen=True)
class GuardTally:
    """One guard's evidence in a stage: the guarded event's totals per cohort, the exposures
    its rate is per (requests, or the ``per`` event's count) and the running log e-values of
    its canary-against-baseline comparison, one per alternative (a rate is tested tick by
    tick; a mean on the totals, so its ``log_e`` stays empty)."""

    event: str
    canary: Tracked = Tracked()
    baseline: Tracked = Tracked()
    canary_exposure: int = 0
    baseline_exposure: int = 0
    log_e: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "event": self.event,
            "canary": self.canary.to_dict(),
            "baseline": self.baseline.to_dict(),
            "canary_exposure": self.canary_exposure,
            "baseline_exposure": self.baseline_exposure,
            "log_e": list(self.log_e),
        }

    @classmethod
    def from_dict(cls, data: Any, *, path: str = "") -> GuardTally:
        """Inverse of :meth:`to_dict`; ``StateStoreError`` naming the field otherwise."""
        t = _object(data, path)
        event = t.get("event")
        if not isinstance(event, str) or not event:
            _bad(_join(path, "event"), f"must be an event name, got {_show(event)}")
        return cls(
            event=event,
            canary=Tracked.from_dict(t.get("canary", {}), path=_join(path, "canary")),
            baseline=Tracked.from_dict(t.get("baseline", {}), path=_join(path, "baseline")),
            canary_exposure=_integer(t, path, "canary_exposure"),
            baseline_exposure=_integer(t, path, "baseline_exposure"),
            log_e=tuple(_numbers(t, path, "log_e", integer=False)),
        )


@dataclass(frozen=True)
class StageEvidence:
    """The evidence of stage ``stage``, gathered from ``started`` up to ``through`` (the time
    of the last data folded in: the next tick reads from there, so nothing counts twice).

    ``ratio_log_e`` and ``tail_log_e`` are the running log e-values of the error-ratio and
    latency-tail comparisons, one per alternative. ``error_units`` holds, per cohort (canary,
    baseline), the hashed units seen answering a 5xx in this stage (sorted; empty when the
    source cannot know units). There is no reference from earlier stages: a stage without a
    live baseline has no comparison (docs/decisions.md, "No stale reference").
    """

    stage: int
    started: float
    through: float
    canary: Tally = Tally()
    baseline: Tally = Tally()
    ratio_log_e: tuple[float, ...] = ()
    tail_log_e: tuple[float, ...] = ()
    error_units: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
    guards: tuple[GuardTally, ...] = ()

    def guard(self, event: str) -> GuardTally:
        """The evidence of the guard on ``event`` (empty before its first data)."""
        return next((g for g in self.guards if g.event == event), GuardTally(event))

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        data: dict[str, Any] = {
            "stage": self.stage,
            "started": self.started,
            "through": self.through,
            "canary": self.canary.to_dict(),
            "baseline": self.baseline.to_dict(),
            "ratio_log_e": list(self.ratio_log_e),
            "tail_log_e": list(self.tail_log_e),
        }
        if any(self.error_units):
            data["error_units"] = [list(u) for u in self.error_units]
        if self.guards:
            data["guards"] = [g.to_dict() for g in self.guards]
        return data

    @classmethod
    def from_dict(cls, data: Any, *, path: str = "") -> StageEvidence:
        """Inverse of :meth:`to_dict`; ``StateStoreError`` naming the field otherwise. State
        written before the tail comparison (``rank_log_e``, ``reference``) loads without them:
        the stage's comparisons restart from 1, the safe side."""
        t = _object(data, path)
        return cls(
            stage=_integer(t, path, "stage"),
            started=_finite(t, path, "started"),
            through=_finite(t, path, "through"),
            canary=Tally.from_dict(t.get("canary", {}), path=_join(path, "canary")),
            baseline=Tally.from_dict(t.get("baseline", {}), path=_join(path, "baseline")),
            ratio_log_e=tuple(_numbers(t, path, "ratio_log_e", integer=False)),
            tail_log_e=tuple(_numbers(t, path, "tail_log_e", integer=False)),
            error_units=_units(t, path),
            guards=_guards(t, path),
        )


def _guards(t: Mapping[str, Any], path: str) -> tuple[GuardTally, ...]:
    value = t.get("guards", [])
    where = _join(path, "guards")
    if not isinstance(value, list):
        _bad(where, f"must be an array, got {_show(value)}")
    return tuple(GuardTally.from_dict(g, path=f"{where}[{i}]") for i, g in enumerate(value))


def _units(t: Mapping[str, Any], path: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    value = t.get("error_units", [[], []])
    where = _join(path, "error_units")
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, list) for v in value)
    ):
        _bad(where, f"must be two arrays (canary, baseline), got {_show(value)}")
    out = []
    for i, units in enumerate(value):
        if len(units) > MAX_ERROR_UNITS:
            _bad(f"{where}[{i}]", f"must hold at most {MAX_ERROR_UNITS} units, got {len(units)}")
        for j, unit in enumerate(units):
            if not isinstance(unit, str):
                _bad(f"{where}[{i}][{j}]", f"must be a string, got {_show(unit)}")
        out.append(tuple(sorted(units)))
    return out[0], out[1]


def _numbers(t: Mapping[str, Any], path: str, key: str, *, integer: bool) -> list[float]:
    value = t.get(key, [] if key != "counts" else [0])
    where = _join(path, key)
    if not isinstance(value, list):
        _bad(where, f"must be an array, got {_show(value)}")
    for i, item in enumerate(value):
        ok = isinstance(item, int | float) and not isinstance(item, bool)
        if ok and integer:
            ok = isinstance(item, int) and item >= 0
        if ok and not integer:
            ok = math.isfinite(item)
        if not ok:
            kind = "an integer >= 0" if integer else "a number"
            _bad(f"{where}[{i}]", f"must be {kind}, got {_show(item)}")
    return value
