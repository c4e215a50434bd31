"""Fleet signals: each process publishes its cumulative snapshot, the decider merges them all.

Every process of a service serves flags and records its own traffic; one of them decides
(spec §10). A :class:`Publisher` takes this process's snapshot at each tick and writes it to the
state store as a small JSON record (:func:`snapshot_record`) with a heartbeat. The decider's
:class:`FleetSignalSource` reads every record back (:func:`snapshot_from_record`), folds each
process's totals into fleet-wide running totals and keeps the merged snapshots in the same ring
as :class:`~openfeature_canary.signals.InProcessSignalSource`, whose read side it shares: every
signal is computed from the fleet's traffic exactly as from one process's.

Merge rules, per process id: the totals last seen are remembered, and what a record adds is its
increase over them, series by series (a cohort's histogram and 5xx count, a lag layout, a
counter, a cohort's log of erroring units). A series whose totals went down was restarted in
place: its new totals are all increase (Prometheus ``increase()``). A process that stops
publishing keeps what it contributed, so fleet totals never go down; its record is dropped from
the store once its heartbeat is older than ``forget_after_s``. A record that cannot be read is
skipped with one warning.
"""

from __future__ import annotations

import logging
import math
import os
import re
import secrets
import socket
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from operator import add, sub
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from openfeature_canary.errors import SignalSourceError, StateStoreError
from openfeature_canary.instrumentation import UnitLog
from openfeature_canary.instrumentation._units import UNIT_LOG_CAP
from openfeature_canary.signals._in_process import InProcessSignalSource
from openfeature_canary.signals._records import (
    TriggerReading,
    snapshot_from_record,
    snapshot_record,
    triggers_record,
)
from openfeature_canary.signals._snapshot_reads import SnapshotReads
from openfeature_canary.signals._snapshots import (
    Bounds,
    CohortKey,
    CohortTotals,
    Counts,
    Snapshot,
)
from openfeature_canary.signals._tracked import TrackedTotals, tracked_increase

if TYPE_CHECKING:
    from openfeature_canary.plan import RolloutPlan
    from openfeature_canary.stores._fleet import FleetStore

__all__ = [
    "FleetSignalSource",
    "Publisher",
    "new_process_id",
    "snapshot_from_record",
    "snapshot_record",
]

log = logging.getLogger("openfeature_canary")

_UNSAFE_ID_CHARS: Final = re.compile(r"[^A-Za-z0-9_.:-]")


# -------------------------------------------------------------------------- merging


def _went_down(new: Counts, old: Counts) -> bool:
    return any(n < o for n, o in zip(new, old, strict=True))


def _layout_increase(new: Counts, old: Counts | None) -> Counts:
    """What one bucket layout adds: all of it when a bucket went down (a restart in place)."""
    return new if old is None or _went_down(new, old) else tuple(map(sub, new, old))


def _cohort_increase(new: CohortTotals, old: CohortTotals | None) -> CohortTotals:
    """What ``new`` adds over ``old``: all of it when the cohort was restarted in place."""
    if old is None or new.errors < old.errors:
        return new
    before = dict(old.hist)
    layouts = {bounds for bounds, _ in new.hist}
    if not before.keys() <= layouts or any(
        _went_down(counts, before[bounds]) for bounds, counts in new.hist if bounds in before
    ):
        return new
    hist = tuple(
        (bounds, _layout_increase(counts, before.get(bounds))) for bounds, counts in new.hist
    )
    return CohortTotals(new.errors - old.errors, hist)


def _new_entries(new: UnitLog, old: UnitLog | None) -> tuple[int, tuple[str | None, ...]]:
    """How many entries a process's unit log grew by, and the newest of them it still holds
    (all of it after a restart in place); those it no longer holds are missing."""
    added = new.total if old is None or new.total < old.total else new.total - old.total
    held = new.recent[max(len(new.recent) - added, 0) :] if added else ()
    return added, held


class _FleetUnits:
    """The fleet's erroring-unit logs: each process's new entries appended per cohort, the ones
    a process no longer held (it logged more than its cap between two reads) as ``None``."""

    def __init__(self) -> None:
        self._totals: dict[CohortKey, int] = {}
        self._recent: dict[CohortKey, deque[str | None]] = {}
        self._frozen: dict[CohortKey, UnitLog] = {}
        self._dirty: set[CohortKey] = set()
        self.view: Mapping[CohortKey, UnitLog] = MappingProxyType({})

    def add(self, new: Snapshot, old: Snapshot | None) -> None:
        for cohort, log in new.units.items():
            prev = old.units.get(cohort) if old is not None else None
            if prev == log:
                continue
            added, held = _new_entries(log, prev)
            if not added:
                continue
            recent = self._recent.setdefault(cohort, deque(maxlen=UNIT_LOG_CAP))
            recent.extend([None] * min(added - len(held), UNIT_LOG_CAP))
            recent.extend(held)
            self._totals[cohort] = self._totals.get(cohort, 0) + added
            self._dirty.add(cohort)

    def freeze(self) -> Mapping[CohortKey, UnitLog]:
        if self._dirty:
            for cohort in self._dirty:
                self._frozen[cohort] = UnitLog(self._totals[cohort], tuple(self._recent[cohort]))
            self._dirty.clear()
            self.view = MappingProxyType(dict(self._frozen))
        return self.view


class _Totals:
    """The fleet's running totals (they only grow), frozen into snapshots where they changed."""

    def __init__(self) -> None:
        self._units = _FleetUnits()
        self._tracked = TrackedTotals()
        self._requests: dict[CohortKey, tuple[list[int], dict[Bounds, list[int]]]] = {}
        self._lag: dict[Bounds, list[int]] = {}
        self._counters: dict[tuple[str, str], float] = {}
        self._dirty: set[CohortKey] = set()
        self._frozen: dict[CohortKey, CohortTotals] = {}
        self._views: list[Mapping[Any, Any]] = [MappingProxyType({})] * 3
        self._lag_dirty = self._counters_dirty = False

    def add(self, new: Snapshot, old: Snapshot | None) -> None:
        """Add what process snapshot ``new`` grew by since ``old`` (``None``: first seen)."""
        self._units.add(new, old)
        for series, tracked in new.tracked.items():
            seen = old.tracked.get(series) if old is not None else None
            if seen != tracked:
                self._tracked.add_tracked(series, tracked_increase(tracked, seen))
        for cohort, totals in new.requests.items():
            prev = old.requests.get(cohort) if old is not None else None
            if prev == totals:
                continue
            inc = _cohort_increase(totals, prev)
            errors, layouts = self._requests.setdefault(cohort, ([0], {}))
            errors[0] += inc.errors
            for bounds, counts in inc.hist:
                _add_into(layouts, bounds, counts)
            self._dirty.add(cohort)
        for bounds, counts in new.lag.items():
            before = old.lag.get(bounds) if old is not None else None
            if before != counts:
                _add_into(self._lag, bounds, _layout_increase(counts, before))
                self._lag_dirty = True
        for key, value in new.counters.items():
            previous = old.counters.get(key) if old is not None else None
            if previous != value or key not in self._counters:
                increase = value if previous is None or value < previous else value - previous
                self._counters[key] = self._counters.get(key, 0.0) + increase
                self._counters_dirty = True

    def freeze(self, t: float) -> Snapshot:
        """The totals as a snapshot at ``t``; unchanged parts are shared with the previous."""
        if self._dirty:
            for cohort in self._dirty:
                errors, layouts = self._requests[cohort]
                hist = tuple((b, tuple(c)) for b, c in layouts.items())
                self._frozen[cohort] = CohortTotals(errors[0], hist)
            self._dirty.clear()
            self._views[0] = MappingProxyType(dict(self._frozen))
        if self._lag_dirty:
            self._views[1] = MappingProxyType({b: tuple(c) for b, c in self._lag.items()})
        if self._counters_dirty:
            self._views[2] = MappingProxyType(dict(self._counters))
        self._lag_dirty = self._counters_dirty = False
        return Snapshot(
            t,
            self._views[0],
            self._views[1],
            self._views[2],
            units=self._units.freeze(),
            tracked=self._tracked.freeze(),
        )


def _add_into(layouts: dict[Bounds, list[int]], bounds: Bounds, counts: Counts) -> None:
    total = layouts.get(bounds)
    if total is None:
        layouts[bounds] = list(counts)
    else:
        total[:] = map(add, total, counts)


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class _Process:
    """A process as last merged: its heartbeat, its raw record, and the totals parsed from it."""

    heartbeat: float
    record: Mapping[str, Any]
    snapshot: Snapshot


class FleetSignalSource(SnapshotReads):
    """Signals from every process of a fleet, through the records they publish to the store.

    Use it in the process that decides (the lease holder, or the ``controller`` command) when
    several processes serve the flags: each of them runs a :class:`Publisher`. Every read is
    answered exactly as :class:`~openfeature_canary.signals.InProcessSignalSource` answers it,
    from merged snapshots: the fleet's windows are the sum of every process's. ``retention_s``
    and ``plan`` mean what they mean there. A process whose heartbeat is older than
    ``stale_after_s`` is not counted in :attr:`processes` (its totals stay in the sum); one
    older than ``forget_after_s`` has its record dropped from the store. A failing store makes
    :meth:`snapshot` raise ``SignalSourceError`` and marks the readings, like a failing reader.

    >>> from openfeature_canary.stores import MemoryStateStore
    >>> source = FleetSignalSource(MemoryStateStore())
    >>> source.snapshot(0.0)
    >>> source.processes
    0
    """

    _WHAT = "fleet store"

    def __init__(
        self,
        store: FleetStore,
        *,
        stale_after_s: float = 60.0,
        retention_s: float | None = None,
        plan: RolloutPlan | None = None,
        forget_after_s: float = 3600.0,
    ) -> None:
        for name, value in (("stale_after_s", stale_after_s), ("forget_after_s", forget_after_s)):
            if not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value}")
        super().__init__(retention_s=retention_s, plan=plan)
        self._store = store
        self._stale_after_s = float(stale_after_s)
        self._forget_after_s = float(forget_after_s)
        self._totals = _Totals()
        self._seen: dict[str, _Process] = {}
        self._warned: set[str] = set()  # ids whose bad record was already logged
        self._processes = 0

    def snapshot(self, now: float) -> None:
        """Read every record, merge, store the merged cumulative snapshot at ``now``.

        Raises ``SignalSourceError`` when the store cannot be read (nothing is stored; until a
        snapshot succeeds every reading reaching ``now`` carries the error) and ``ValueError``
        when ``now`` is before the newest snapshot.
        """
        super().snapshot(now)

    @property
    def processes(self) -> int:
        """Processes with a readable record and a heartbeat within ``stale_after_s`` at the last
        snapshot."""
        with self._lock:
            return self._processes

    def _collect(self, now: float) -> Snapshot:
        records = self._store.records()
        heartbeats: dict[str, float] = {}
        live = 0
        for process_id, (heartbeat, record) in records.items():
            if self._merge(process_id, heartbeat, record):
                heartbeats[process_id] = heartbeat
                live += heartbeat >= now - self._stale_after_s
        self._warned &= records.keys()
        self._forget(heartbeats, now)
        self._processes = live
        return self._totals.freeze(now)

    def _merge(self, process_id: str, heartbeat: Any, record: Any) -> bool:
        """Fold one record into the totals; False (logged once per id) when it is unreadable."""
        seen = self._seen.get(process_id)
        try:
            if isinstance(heartbeat, bool) or not isinstance(heartbeat, (int, float)):
                raise ValueError(f"heartbeat {heartbeat!r} is not a number")
            if not math.isfinite(heartbeat):
                raise ValueError(f"heartbeat {heartbeat!r} is not a finite time")
            if seen is not None and seen.record == record:  # idle: nothing to parse or add
                snap = seen.snapshot
            else:
                snap = snapshot_from_record(record)
                self._totals.add(snap, seen.snapshot if seen is not None else None)
        except ValueError as exc:
            if process_id not in self._warned:
                self._warned.add(process_id)
                log.warning(
                    "openfeature-canary: skipping the fleet record of process %s: %s",
                    process_id,
                    exc,
                )
            return False
        self._warned.discard(process_id)
        self._seen[process_id] = _Process(float(heartbeat), record, snap)
        return True

    def _forget(self, heartbeats: Mapping[str, float], now: float) -> None:
        """Drop gone processes' records from the store; their totals stay in the sum."""
        cutoff = now - self._forget_after_s
        for process_id, heartbeat in heartbeats.items():
            if heartbeat < cutoff:
                try:
                    self._store.forget(process_id)
                except StateStoreError as exc:
                    log.warning("openfeature-canary: cannot forget process %s: %s", process_id, exc)
        # Once a record has left the store, its process's last totals are no longer needed
        # to compute increases; kept while it may still be read back (a torn read skipped).
        gone = [p for p, s in self._seen.items() if p not in heartbeats and s.heartbeat < cutoff]
        for process_id in gone:
            del self._seen[process_id]


def new_process_id() -> str:
    """A fresh id for this process: ``<host>:<pid>:<random hex>``, matching the stores' rule.

    A :class:`Publisher` created before a fork publishes under a new one in the child, so the
    workers of a pre-fork server never share a record.

    >>> new_process_id() != new_process_id()
    True
    """
    host = _UNSAFE_ID_CHARS.sub("-", socket.gethostname())[:64] or "host"
    return f"{host}:{os.getpid()}:{secrets.token_hex(4)}"


class Publisher:
    """Publishes this process's local signals to the fleet store.

    Every process that serves a flag runs one, at each tick (``Fleet.round``); the decider's
    :class:`FleetSignalSource` merges what they publish. ``source`` is this process's
    ``InProcessSignalSource`` (a decider's own traffic is published like anyone's).

    >>> from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    >>> from openfeature_canary.signals import InProcessSignalSource
    >>> from openfeature_canary.stores import MemoryStateStore
    >>> store = MemoryStateStore()
    >>> Publisher(InProcessSignalSource(InMemoryMetricReader()), store, "web-1").publish(0.0)
    >>> list(store.records())
    ['web-1']
    """

    def __init__(self, source: InProcessSignalSource, store: FleetStore, process_id: str) -> None:
        self._source = source
        self._store = store
        self._process_id = process_id
        self._pid = os.getpid()
        self._reader_failing = False

    @property
    def process_id(self) -> str:
        """The id this process publishes under (a new one in a forked child)."""
        if os.getpid() != self._pid:  # forked: the parent's id is the parent's record
            self._pid = os.getpid()
            self._process_id = new_process_id()
        return self._process_id

    def publish(
        self, now: float, triggers: Mapping[tuple[str, str], TriggerReading] | None = None
    ) -> None:
        """Take a local snapshot at ``now`` (source.snapshot) and publish it, with
        ``triggers`` (the decider's last readings per (flag, trigger); none elsewhere).

        Store errors propagate as ``StateStoreError`` (the caller logs them). A failing local
        reader publishes nothing: it is logged once per outage, and the last record published
        stays in the store (the decider's readings of this process stop growing).
        """
        try:
            self._source.snapshot(now)
        except SignalSourceError as exc:
            if not self._reader_failing:
                log.warning("openfeature-canary: not publishing this process's signals: %s", exc)
            self._reader_failing = True
            return
        self._reader_failing = False
        snap = self._source.latest()
        if snap is not None:
            record = snapshot_record(snap)
            if triggers:  # optional: only the decider has readings
                record["triggers"] = triggers_record(triggers)
            self._store.publish(self.process_id, record, now)
