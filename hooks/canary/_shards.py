"""A thread's pre-aggregated evaluation counts (its *shard*) and what collection adds them into.

``MetricsHook`` (``metrics.py``) gives each evaluating thread one :class:`Shard`: plain Python
ints and floats that only that thread writes, with no lock. For every outcome (flag, provider,
variant, reason, error) a shard holds an :class:`Outcome`: how many evaluations ended so, how
many of them were timed, and those durations as histogram buckets, sum, min and max. Collection
reads them (each ``int`` or ``float`` read is atomic, and ``tuple(list)`` runs in C under the
GIL) and adds them up: the counters per attribute set, the durations per
:class:`DurationTotal`.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

from openfeature.contrib.hook.canary._constants import (
    DURATION_BOUNDS_S,
    ERROR_TYPE,
    FLAG_KEY,
    PROVIDER_NAME,
    RESULT_REASON,
    RESULT_VARIANT,
)
from opentelemetry.util.types import AttributeValue

__all__ = [
    "BUCKETS",
    "UNKNOWN",
    "Attributes",
    "DurationTotal",
    "Outcome",
    "OutcomeKey",
    "Shard",
]

UNKNOWN = "unknown"
#: Buckets of the duration histogram: one per bound, and one above the last.
BUCKETS = len(DURATION_BOUNDS_S) + 1

Attributes = dict[str, AttributeValue]
#: (flag key, provider name, variant, reason, error code): one outcome.
OutcomeKey = tuple[str, str, Any, Any, Any]


class Outcome:
    """Counts and timings of one outcome in one thread (or of the ended threads, folded);
    attribute dicts built once.

    ``buckets`` follow OpenTelemetry's explicit-bucket histogram: bucket ``i`` holds the
    durations ``d`` with ``DURATION_BOUNDS_S[i-1] < d <= DURATION_BOUNDS_S[i]``
    (``bisect_left``).
    """

    __slots__ = (
        "buckets",
        "count",
        "duration_attrs",
        "flag_key",
        "max",
        "min",
        "outcome_attrs",
        "provider",
        "success",
        "sum",
        "timed",
    )

    def __init__(self, key: OutcomeKey) -> None:
        flag_key, provider, variant, reason, error_code = key
        self.flag_key: str = flag_key
        self.provider: str = provider
        self.count = 0  # evaluations with this outcome
        self.timed = 0  # ... of which ``before`` ran (so they were in flight and are timed)
        self.buckets = [0] * BUCKETS  # the timed ones' durations
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.success = error_code is None
        self.duration_attrs: Attributes = {FLAG_KEY: flag_key}
        self.outcome_attrs: Attributes = {FLAG_KEY: flag_key, PROVIDER_NAME: provider}
        if self.success:
            if variant is not None:
                self.outcome_attrs[RESULT_VARIANT] = str(variant)
            self.outcome_attrs[RESULT_REASON] = str(reason).lower() if reason else UNKNOWN
        else:
            error_type = str(error_code).lower()
            self.outcome_attrs[ERROR_TYPE] = error_type
            self.duration_attrs[ERROR_TYPE] = error_type

    def fold(self, other: Outcome) -> None:
        """Add an ended thread's final counts of the same outcome to this total."""
        self.count += other.count
        if other.timed:  # none timed (provider not ready): no bucket to add
            self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)


class DurationTotal:
    """The durations of every outcome with one duration attribute set, added up."""

    __slots__ = ("attributes", "buckets", "max", "min", "sum")

    def __init__(self, attributes: Attributes) -> None:
        self.attributes = attributes
        self.buckets = [0] * BUCKETS
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    @property
    def count(self) -> int:
        """Durations recorded (every bucket's count)."""
        return sum(self.buckets)

    def add(self, o: Outcome) -> None:
        """Add an outcome's durations as read now (a live thread may be adding to them)."""
        # ``tuple(list)`` copies in C under the GIL: one consistent bucket vector. The
        # evaluation path writes the sum, min and max before the bucket, and they are read
        # after it here: every duration counted is in them (the sum may hold one more, which
        # the next collection counts; the totals are cumulative).
        self.buckets = [a + b for a, b in zip(self.buckets, tuple(o.buckets), strict=True)]
        self.sum += o.sum
        self.min = min(self.min, o.min)
        self.max = max(self.max, o.max)

    def add_total(self, other: DurationTotal) -> None:
        """Add another total (a view that drops an attribute merges attribute sets)."""
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)


class Shard:
    """One live thread's counts. Only its thread writes; collection reads ints (atomic)."""

    __slots__ = ("outcomes", "started", "token")

    def __init__(self) -> None:
        self.outcomes: dict[OutcomeKey, Outcome] = {}
        self.started: dict[str, int] = {}  # per flag key: evaluations whose ``before`` ran
        #: Weak reference to the thread's token, whose callback folds this shard (it is kept
        #: here so that the callback runs); None once folded.
        self.token: weakref.ref[Any] | None = None
