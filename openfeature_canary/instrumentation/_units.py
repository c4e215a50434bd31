"""Which units answered 5xx: a small bounded log per flag and cohort, one per meter provider.

The sequential error comparison counts erroring *units* (the targeting key a cohort was
bucketed by), not requests, when it knows them (docs/decisions.md, "The unit that was
randomised"). A unit cannot be an OpenTelemetry attribute (one series per user would explode
the metric's cardinality), so :func:`record_request` and ``CanaryMiddleware`` append each 5xx
response's unit, hashed with :func:`unit_digest`, to a :class:`UnitRecorder` kept next to the
request histogram of the same meter provider. Errors are rare, so the newest
:data:`UNIT_LOG_CAP` entries per cohort are enough; a span that needs older ones is unknown.
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from dataclasses import dataclass
from typing import Final

from openfeature_canary._forksafe import renew_locks_after_fork

__all__ = ["EMPTY_UNIT_LOG", "UNIT_LOG_CAP", "UnitLog", "UnitRecorder", "unit_digest"]

#: Entries kept per (flag, cohort): a snapshot span with more 5xx than this reads as unknown.
UNIT_LOG_CAP: Final = 256


def unit_digest(unit: str) -> str:
    """A unit's id as the evidence keeps it: 16 hex digits of its BLAKE2b hash (no user id is
    stored; a collision among a stage's few hundred erroring units is a 1-in-10^14 event).

    >>> unit_digest("user-42") == unit_digest("user-42") != unit_digest("user-43")
    True
    """
    return hashlib.blake2b(unit.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


@dataclass(frozen=True)
class UnitLog:
    """One cohort's 5xx units, cumulative: ``total`` 5xx logged ever, ``recent`` the newest
    ``min(total, cap)`` entries (a :func:`unit_digest`, or ``None`` for a 5xx whose unit was
    not given). Like the histogram totals it only grows, so a span is the difference of two.

    >>> UnitLog(3, ("a", "b", "a")).between(UnitLog(1, ("a",)), errors=2)
    frozenset({'a', 'b'})
    """

    total: int
    recent: tuple[str | None, ...]

    def between(self, old: UnitLog | None, errors: int) -> frozenset[str] | None:
        """The distinct units of the entries logged since ``old``, or ``None`` (unknown) unless
        they are exactly the span's ``errors`` 5xx, each with its unit, all still kept.

        The count check keeps the two records of a request honest: a 5xx recorded without
        this log (another recorder, another meter provider), a cap overrun, or a request whose
        histogram point and unit entry fell on two sides of a snapshot all read as unknown,
        so the gate falls back to counting requests instead of undercounting units.
        """
        added = self.total - (old.total if old is not None else 0)
        if added != errors or added > len(self.recent) or added < 0:
            return None
        if added == 0:
            return frozenset()
        entries = self.recent[len(self.recent) - added :]
        if None in entries:
            return None
        return frozenset(e for e in entries if e is not None)


#: A cohort that logged nothing.
EMPTY_UNIT_LOG: Final = UnitLog(0, ())


class UnitRecorder:
    """The per-process log of erroring units per (flag, variant), bounded by ``cap`` entries per
    cohort (oldest dropped). Thread-safe; a read copies only the cohorts that changed.

    >>> recorder = UnitRecorder(cap=2)
    >>> for unit in ("u1", "u2", "u3"):
    ...     recorder.record("f", "on", unit)
    >>> log = recorder.logs()[("f", "on")]
    >>> log.total, len(log.recent)
    (3, 2)
    """

    def __init__(self, cap: int = UNIT_LOG_CAP) -> None:
        if cap < 1:
            raise ValueError(f"cap must be at least 1 entry, got {cap}")
        self._cap = cap
        self._lock = threading.Lock()
        renew_locks_after_fork(self, "_lock")
        self._totals: dict[tuple[str, str], int] = {}
        self._recent: dict[tuple[str, str], deque[str | None]] = {}
        self._frozen: dict[tuple[str, str], UnitLog] = {}
        self._dirty: set[tuple[str, str]] = set()

    def record(self, flag_key: str, variant: str, unit: str | None) -> None:
        """Log one 5xx response of ``flag_key``'s ``variant`` cohort; ``unit`` is the raw
        targeting key (hashed here, never kept) or ``None`` when it is not known."""
        digest = unit_digest(unit) if isinstance(unit, str) else None
        cohort = (flag_key, variant)
        with self._lock:
            recent = self._recent.get(cohort)
            if recent is None:
                recent = self._recent[cohort] = deque(maxlen=self._cap)
            recent.append(digest)
            self._totals[cohort] = self._totals.get(cohort, 0) + 1
            self._dirty.add(cohort)

    def logs(self) -> dict[tuple[str, str], UnitLog]:
        """Every cohort's log as it stands (a copy; unchanged cohorts share their object)."""
        with self._lock:
            for cohort in self._dirty:
                self._frozen[cohort] = UnitLog(self._totals[cohort], tuple(self._recent[cohort]))
            self._dirty.clear()
            return dict(self._frozen)
