"""The read side shared by every snapshot-based source: windows are differences of two
cumulative snapshots (see :class:`SnapshotReads`)."""

from __future__ import annotations

import math
import threading
from dataclasses import replace
from typing import TYPE_CHECKING, ClassVar

from openfeature_canary._forksafe import renew_locks_after_fork
from openfeature_canary.errors import SignalSourceError
from openfeature_canary.plan._signals import BASELINE, CANARY, QUANTILES, split_signal
from openfeature_canary.signals._counts import EMPTY_COHORT, CohortCounts, CountsReading
from openfeature_canary.signals._differences import (
    NOTHING,
    HistWindow,
    cohort_counts,
    cohort_window,
    window,
)
from openfeature_canary.signals._histogram import count_above, count_at_least, histogram_quantile
from openfeature_canary.signals._ring import SnapshotRing
from openfeature_canary.signals._snapshots import (
    EVENT_LOOP_LAG,
    LEDGER_MISMATCHES,
    REQUEST_DURATION,
    TELEMETRY_ACCEPTED,
    TELEMETRY_SENT,
    Snapshot,
)
from openfeature_canary.signals._tracked import tracked_between

if TYPE_CHECKING:
    from openfeature_canary.plan import RolloutPlan
from openfeature_canary.signals._protocol import (
    DEFAULT_RETENTION_S,
    SignalReading,
    retention_for_plan,
)

__all__ = ["SnapshotReads"]


class SnapshotReads:
    """The read side of the snapshot sources: windows are differences of cumulative snapshots.

    Keeps the timestamped snapshots in a :class:`SnapshotRing` and answers every
    :class:`SignalSource` read from them; a subclass says only how one snapshot is collected
    (:meth:`_collect`: this process's reader, or the fleet's merged records). A collection that
    fails marks every reading reaching its time with the error. Thread-safe.
    """

    #: What a failing collection names in its error.
    _WHAT: ClassVar[str] = "snapshot collection"

    def __init__(
        self,
        *,
        retention_s: float | None = None,
        max_snapshots: int = 10_000,
        plan: RolloutPlan | None = None,
    ) -> None:
        if plan is not None:
            needed = retention_for_plan(plan)
            if retention_s is None:
                retention_s = needed
            elif retention_s < needed:
                raise ValueError(
                    f"retention_s {retention_s:g} is shorter than the {needed:g} s that the "
                    "plan's longest window needs (two ticks of margin included)"
                )
        self._ring = SnapshotRing(
            DEFAULT_RETENTION_S if retention_s is None else retention_s, max_snapshots
        )
        self._lock = threading.Lock()
        renew_locks_after_fork(self, "_lock")
        self._cache: dict[tuple[float, float, str, str], HistWindow] = {}
        # (time, message) of the latest snapshot attempt if it failed: readings that reach
        # that time carry the error, so a dead reader trips ``on_error`` instead of serving
        # stale windows that look quiet.
        self._failure: tuple[float, str] | None = None

    @property
    def retention_s(self) -> float:
        """How far back windows can reach, in seconds."""
        return self._ring.retention_s

    @property
    def history_s(self) -> float:
        """Seconds between the oldest and the newest snapshot kept (at most about
        ``retention_s`` plus one snapshot interval, however long the source runs)."""
        with self._lock:
            return self._ring.span_s

    def snapshot(self, now: float) -> None:
        """Collect once and store the cumulative state at ``now``.

        Raises ``SignalSourceError`` when the collection fails: nothing is stored, and until a
        snapshot succeeds again every reading that reaches ``now`` carries the error.
        Raises ``ValueError`` when ``now`` is before the newest snapshot.
        """
        _check_time("now", now)
        with self._lock:
            if len(self._ring) and now < self._ring[-1].t:
                raise ValueError(
                    f"snapshot at {now} is before the newest one at {self._ring[-1].t}"
                )
            try:
                snap = self._collect(now)
            except Exception as exc:
                message = f"{self._WHAT} failed: {exc!r}"
                self._failure = (now, message)
                raise SignalSourceError(message) from exc
            self._failure = None
            self._ring.add(snap)
            self._cache.clear()

    def latest(self) -> Snapshot | None:
        """The newest snapshot kept (``None`` before the first): what a fleet process publishes."""
        with self._lock:
            return self._ring[-1] if len(self._ring) else None

    def _collect(self, now: float) -> Snapshot:
        """The cumulative snapshot at ``now`` (called with the lock held; may raise)."""
        raise NotImplementedError

    def read(self, flag_key: str, signal: str, window_s: float, now: float) -> SignalReading:
        """Read ``signal`` for ``flag_key`` over the trailing ``window_s`` seconds before ``now``.

        Uses the newest snapshot at or before ``now`` and the newest one at or before
        ``now - window_s``. If history is shorter because the source has not run that long,
        the oldest snapshot is used (the reading's ``window_s`` then tells the span covered);
        if it is shorter because older snapshots were dropped, the reading has no value and
        an ``error`` saying there is not enough data.
        """
        variant, base = split_signal(signal)
        if not (window_s > 0 and math.isfinite(window_s)):
            raise ValueError(f"window_s must be a positive number of seconds, got {window_s}")
        _check_time("now", now)
        with self._lock:
            span, short = self._span(now - window_s, now)
            failure = self._failed_by(now) or short
            if failure is not None:
                return _empty(signal, span, now, failure)
            return self._compute(flag_key, signal, variant, base, span, now)

    def read_between(self, flag_key: str, signal: str, start: float, end: float) -> SignalReading:
        """Read ``signal`` for ``flag_key`` between the snapshots at/before ``start`` and ``end``.

        Use it to judge a gate window ``[start, end]`` as it closes; take a snapshot at the
        window's edges (every tick) so the span matches the window.
        """
        variant, base = split_signal(signal)
        _check_time("start", start)
        _check_time("end", end)
        if start > end:
            raise ValueError(f"start {start} is after end {end}")
        with self._lock:
            span, short = self._span(start, end)
            failure = self._failed_by(end) or short
            if failure is not None:
                return _empty(signal, span, end, failure)
            return self._compute(flag_key, signal, variant, base, span, end)

    def count_beyond(
        self,
        flag_key: str,
        signal: str,
        threshold: float,
        inclusive: bool,
        window_s: float,
        now: float,
    ) -> SignalReading:
        """Count samples of a histogram signal beyond ``threshold`` (ms) in the trailing window.

        ``signal`` is a latency signal (its cohort's request durations) or
        ``event_loop_lag_ms``; ``value`` is the count of samples ``> threshold`` (``>=`` when
        ``inclusive``), ``n`` all samples. Exact when ``threshold`` is a histogram bound.
        Example: ``count_beyond(flag, "event_loop_lag_ms", 300, True, 60, now).value >= 2``.
        """
        variant, base = split_signal(signal)
        if base not in QUANTILES and base != "event_loop_lag_ms":
            raise ValueError(
                f"count_beyond needs a histogram signal (latency or lag), not {signal!r}"
            )
        if math.isnan(threshold):
            raise ValueError("threshold must not be NaN")
        if not (window_s > 0 and math.isfinite(window_s)):
            raise ValueError(f"window_s must be a positive number of seconds, got {window_s}")
        _check_time("now", now)
        with self._lock:
            span, short = self._span(now - window_s, now)
            failure = self._failed_by(now) or short
            if failure is not None:
                return _empty(signal, span, now, failure)
            if span is None or span[0] is span[1]:
                return _empty(signal, span, now)
            old, new = span
            instrument = EVENT_LOOP_LAG if base == "event_loop_lag_ms" else REQUEST_DURATION
            problem = new.problems.get(instrument)
            if problem is not None:
                return _empty(signal, span, now, problem)
            hist = self._hist(flag_key, variant, base, old, new)
            if hist.n == 0:
                return _empty(signal, span, now)
            count = count_at_least if inclusive else count_above
            beyond = sum(count(threshold, b, c) for b, c in hist.by_bounds.items())
            return _reading(signal, float(beyond), hist.n, span)

    def counts_between(self, flag_key: str, start: float, end: float) -> CountsReading:
        """See :meth:`SignalSource.counts_between`.

        Uses the snapshots at or before ``start`` and ``end`` (the oldest one kept when
        ``start`` is before it). When the histogram's bucket layout changed inside the span,
        the layout holding most requests is counted and the others are left out.
        ``error_units`` are the units logged for the span's 5xx when every one of them was
        logged with its unit and is still kept (``UnitLog.between``), else ``None``.
        ``tracked`` holds what ``track()`` recorded for each cohort over the same span.
        """
        _check_time("start", start)
        _check_time("end", end)
        if start > end:
            raise ValueError(f"start {start} is after end {end}")
        with self._lock:
            failure = self._failed_by(end)
            ring = self._ring
            last = ring.at_or_before(end)
            if failure is not None or last is None:
                return CountsReading(EMPTY_COHORT, EMPTY_COHORT, start, end, failure)
            first = ring.at_or_before(start)
            old, new = ring[0 if first is None else first], ring[last]
            problem = new.problems.get(REQUEST_DURATION)
            if problem is not None:
                return CountsReading(EMPTY_COHORT, EMPTY_COHORT, old.t, new.t, problem)
            canary = _with_units(
                cohort_counts(self._hist(flag_key, CANARY, "requests", old, new)),
                (flag_key, CANARY),
                old,
                new,
            )
            baseline = _with_units(
                cohort_counts(self._hist(flag_key, BASELINE, "requests", old, new)),
                (flag_key, BASELINE),
                old,
                new,
            )
            return CountsReading(
                _with_tracked(canary, flag_key, CANARY, old, new),
                _with_tracked(baseline, flag_key, BASELINE, old, new),
                old.t,
                new.t,
            )

    # -- internals (called with the lock held) --------------------------------------------

    def _failed_by(self, at: float) -> str | None:
        if self._failure is not None and self._failure[0] <= at:
            return f"{self._failure[1]} (latest snapshot attempt, at {self._failure[0]:g})"
        return None

    def _span(
        self, start: float, end: float
    ) -> tuple[tuple[Snapshot, Snapshot] | None, str | None]:
        """The (old, new) snapshots of ``[start, end]``, and why there is not enough data.

        A window reaching before the oldest snapshot uses that one while nothing was ever
        dropped (there is no older data: it is the source's baseline); once snapshots were
        dropped, the one the window needs is gone and the window cannot be computed.
        """
        ring = self._ring
        last = ring.at_or_before(end)
        first = ring.at_or_before(start)
        span = None if last is None else (ring[0 if first is None else first], ring[last])
        if first is None and ring.truncated:
            return span, (
                f"not enough data: the window starts at {start:g}, before the oldest snapshot "
                f"kept ({ring[0].t:g}; retention {ring.retention_s:g} s, at most "
                f"{ring.max_snapshots} snapshots)"
            )
        return span, None

    def _hist(self, flag: str, variant: str, base: str, old: Snapshot, new: Snapshot) -> HistWindow:
        key = (old.t, new.t, flag if base != "event_loop_lag_ms" else "", variant)
        hist = self._cache.get(key)
        if hist is None:
            if base == "event_loop_lag_ms":
                same = new.lag is old.lag  # unchanged: shared between snapshots
                hist = NOTHING if same else window(new.lag.items(), old.lag.items(), 0)
            else:
                cohort = (flag, variant)
                hist = cohort_window(new.requests.get(cohort), old.requests.get(cohort))
            self._cache[key] = hist
        return hist

    def _compute(
        self,
        flag: str,
        signal: str,
        variant: str,
        base: str,
        span: tuple[Snapshot, Snapshot] | None,
        at: float,
    ) -> SignalReading:
        if span is None or span[0] is span[1]:
            return _empty(signal, span, at)
        old, new = span
        if base in ("ledger_mismatches", "telemetry_acceptance"):
            return self._counter_signal(flag, signal, base, old, new)
        instrument = EVENT_LOOP_LAG if base == "event_loop_lag_ms" else REQUEST_DURATION
        problem = new.problems.get(instrument)
        if problem is not None:
            return _empty(signal, span, at, problem)
        hist = self._hist(flag, variant, base, old, new)
        if base == "requests":
            return _reading(signal, float(hist.n), hist.n, span)
        if hist.n == 0:
            return _empty(signal, span, at)
        if base == "error_rate":
            return _reading(signal, hist.errors / hist.n, hist.n, span)
        if len(hist.by_bounds) > 1:
            layouts = "; ".join(str(list(b)) for b in hist.by_bounds)
            error = f"{instrument} bucket bounds changed inside the window ({layouts})"
            return _empty(signal, span, at, error)
        q = 1.0 if base == "event_loop_lag_ms" else QUANTILES[base]
        ((bounds, counts),) = hist.by_bounds.items()
        return _reading(signal, histogram_quantile(q, bounds, counts), hist.n, span)

    def _counter_signal(
        self, flag: str, signal: str, base: str, old: Snapshot, new: Snapshot
    ) -> SignalReading:
        span = (old, new)

        def increase(name: str, key: str) -> float:
            return new.counters.get((name, key), 0.0) - old.counters.get((name, key), 0.0)

        if base == "ledger_mismatches":
            problem = new.problems.get(LEDGER_MISMATCHES)
            if problem is not None:
                return _empty(signal, span, new.t, problem)
            count = increase(LEDGER_MISMATCHES, flag)
            return _reading(signal, count, round(count), span)
        problem = new.problems.get(TELEMETRY_SENT) or new.problems.get(TELEMETRY_ACCEPTED)
        if problem is not None:
            return _empty(signal, span, new.t, problem)
        sent = increase(TELEMETRY_SENT, "")
        if sent <= 0:
            return _empty(signal, span, new.t)
        return _reading(signal, increase(TELEMETRY_ACCEPTED, "") / sent, round(sent), span)


def _with_units(
    counts: CohortCounts, cohort: tuple[str, str], old: Snapshot, new: Snapshot
) -> CohortCounts:
    """``counts`` with the span's erroring units, when the snapshots know them all."""
    log = new.units.get(cohort)
    if log is None:
        # Nothing logged: no 5xx means no erroring unit; 5xx without a log are unknown.
        return counts if counts.errors else replace(counts, error_units=frozenset())
    units = log.between(old.units.get(cohort), counts.errors)
    return counts if units is None else replace(counts, error_units=units)


def _with_tracked(
    counts: CohortCounts, flag: str, variant: str, old: Snapshot, new: Snapshot
) -> CohortCounts:
    """``counts`` with the tracked events of the span (unchanged when there are none)."""
    tracked = tracked_between(new.tracked, old.tracked, flag, variant)
    return replace(counts, tracked=tracked) if tracked else counts


def _check_time(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite time, got {value}")


def _reading(
    signal: str, value: float | None, n: int, span: tuple[Snapshot, Snapshot]
) -> SignalReading:
    old, new = span
    return SignalReading(signal, value, n, new.t - old.t, old.t, new.t)


def _empty(
    signal: str, span: tuple[Snapshot, Snapshot] | None, at: float, error: str | None = None
) -> SignalReading:
    if span is None:
        return SignalReading(signal, None, 0, 0.0, at, at, error)
    old, new = span
    return SignalReading(signal, None, 0, new.t - old.t, old.t, new.t, error)
