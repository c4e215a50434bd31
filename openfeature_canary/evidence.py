"""What a stage has gathered, persisted with the state so a restart keeps it.

A :class:`StageEvidence` holds, for the stage a flag is in, the running totals of both cohorts
(requests, 5xx and request-duration bucket counts: a :class:`Tally` each) and the running log
e-values of the two canary-against-baseline tests, whose ticks cannot be recomputed from totals.
Its size does not grow with the stage's length: a few dozen integers and ten floats, however
long the stage runs. The tests themselves are in :mod:`openfeature_canary.policy`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from openfeature_canary._validate import _bad, _finite, _integer, _join, _object, _show

__all__ = ["StageEvidence", "Tally"]


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
class StageEvidence:
    """The evidence of stage ``stage``, gathered from ``started`` up to ``through`` (the time
    of the last data folded in: the next tick reads from there, so nothing counts twice).

    ``ratio_log_e`` and ``rank_log_e`` are the running log e-values of the error-ratio and
    latency-rank tests, one per alternative; ``reference`` is the pooled baseline of the
    earlier stages, the comparison at 100 % when no live baseline is served.
    """

    stage: int
    started: float
    through: float
    canary: Tally = Tally()
    baseline: Tally = Tally()
    ratio_log_e: tuple[float, ...] = ()
    rank_log_e: tuple[float, ...] = ()
    reference: Tally | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        data: dict[str, Any] = {
            "stage": self.stage,
            "started": self.started,
            "through": self.through,
            "canary": self.canary.to_dict(),
            "baseline": self.baseline.to_dict(),
            "ratio_log_e": list(self.ratio_log_e),
            "rank_log_e": list(self.rank_log_e),
        }
        if self.reference is not None:
            data["reference"] = self.reference.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Any, *, path: str = "") -> StageEvidence:
        """Inverse of :meth:`to_dict`; ``StateStoreError`` naming the field otherwise."""
        t = _object(data, path)
        reference = t.get("reference")
        return cls(
            stage=_integer(t, path, "stage"),
            started=_finite(t, path, "started"),
            through=_finite(t, path, "through"),
            canary=Tally.from_dict(t.get("canary", {}), path=_join(path, "canary")),
            baseline=Tally.from_dict(t.get("baseline", {}), path=_join(path, "baseline")),
            ratio_log_e=tuple(_numbers(t, path, "ratio_log_e", integer=False)),
            rank_log_e=tuple(_numbers(t, path, "rank_log_e", integer=False)),
            reference=None
            if reference is None
            else Tally.from_dict(reference, path=_join(path, "reference")),
        )


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
