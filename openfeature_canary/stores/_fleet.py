"""What a state store offers a fleet: each process's published record, and one decider lease.

Every process of a service publishes a small record (its cumulative signals) with a heartbeat;
exactly one process at a time holds the lease and decides (spec §10). :class:`FleetStore` is
the protocol; the memory store implements it here (:class:`MemoryFleet`), the file store in
``stores/_fleet_file.py``, the ``redis://`` store in ``stores/_redis_fleet.py``; what they
share (ids, the stored texts, :class:`Lease`) is in ``stores/_fleet_codec.py``. Times are the
rollout clock's seconds, given by the caller (``now``), never read here.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from openfeature_canary._forksafe import hold_locks_across_fork
from openfeature_canary.stores._fleet_codec import (
    Lease,
    check_lease_args,
    check_process_id,
    decode_record,
    encode_record,
    taken_by_other,
)
from openfeature_canary.stores._fleet_file import FileFleet

__all__ = ["FileFleet", "FleetDelegate", "FleetStore", "Lease", "MemoryFleet"]


@runtime_checkable
class FleetStore(Protocol):
    """What a state store offers a fleet: each process's published record, and one lease."""

    def publish(self, process_id: str, record: Mapping[str, Any], now: float) -> None:
        """Write this process's record (JSON-safe) with heartbeat ``now`` (replaces its last
        one)."""
        ...

    def records(self) -> dict[str, tuple[float, Mapping[str, Any]]]:
        """Every published record: process id -> (heartbeat, record). A record that cannot be
        read (torn, corrupt, wrong shape at the top level) is left out with one log warning
        per id."""
        ...

    def forget(self, process_id: str) -> None:
        """Drop a process's record (it is gone)."""
        ...

    def try_lease(self, holder: str, ttl_s: float, now: float) -> bool:
        """Take the decider lease, or renew it when ``holder`` has it: True when ``holder`` holds
        it until ``now + ttl_s``; False (no exception, nothing logged) when another holder's lease
        has not expired at ``now``. Atomic across processes/hosts."""
        ...

    def release_lease(self, holder: str) -> None:
        """Give the lease up if ``holder`` has it (a clean shutdown: takeover is immediate)."""
        ...

    def lease(self) -> Lease | None:
        """The lease as stored, expired or not (``None``: nobody has taken it, or it was
        released). Read only: for ``status`` and tests, never to decide who decides."""
        ...

    def lease_holder(self, now: float) -> str | None:
        """Who holds a lease in force at ``now`` (for status and tests)."""
        ...


class FleetDelegate:
    """The :class:`FleetStore` methods of a state store, passed on to its ``_fleet``."""

    _fleet: FleetStore

    def publish(self, process_id: str, record: Mapping[str, Any], now: float) -> None:
        """See :class:`~openfeature_canary.stores.FleetStore`."""
        self._fleet.publish(process_id, record, now)

    def records(self) -> dict[str, tuple[float, Mapping[str, Any]]]:
        """See :class:`~openfeature_canary.stores.FleetStore`."""
        return self._fleet.records()

    def forget(self, process_id: str) -> None:
        """See :class:`~openfeature_canary.stores.FleetStore`."""
        self._fleet.forget(process_id)

    def try_lease(self, holder: str, ttl_s: float, now: float) -> bool:
        """See :class:`~openfeature_canary.stores.FleetStore`."""
        return self._fleet.try_lease(holder, ttl_s, now)

    def release_lease(self, holder: str) -> None:
        """See :class:`~openfeature_canary.stores.FleetStore`."""
        self._fleet.release_lease(holder)

    def lease(self) -> Lease | None:
        """See :class:`~openfeature_canary.stores.FleetStore`."""
        return self._fleet.lease()

    def lease_holder(self, now: float) -> str | None:
        """See :class:`~openfeature_canary.stores.FleetStore`."""
        return self._fleet.lease_holder(now)


class MemoryFleet:
    """:class:`FleetStore` in dicts of this process (the memory store's)."""

    def __init__(self) -> None:
        self._records: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lease: Lease | None = None
        self._lock = threading.Lock()
        hold_locks_across_fork(self, "_lock")

    def publish(self, process_id: str, record: Mapping[str, Any], now: float) -> None:
        """See :class:`FleetStore`: kept as a JSON copy, as the other stores keep it."""
        found = decode_record(encode_record(process_id, record, now))
        with self._lock:
            self._records[process_id] = found

    def records(self) -> dict[str, tuple[float, Mapping[str, Any]]]:
        """See :class:`FleetStore`."""
        with self._lock:
            return dict(self._records)

    def forget(self, process_id: str) -> None:
        """See :class:`FleetStore`."""
        check_process_id(process_id)
        with self._lock:
            self._records.pop(process_id, None)

    def try_lease(self, holder: str, ttl_s: float, now: float) -> bool:
        """See :class:`FleetStore`."""
        holder, ttl, now = check_lease_args(holder, ttl_s, now)
        with self._lock:
            if taken_by_other(self._lease, holder, now):
                return False
            self._lease = Lease(holder, now + ttl)
            return True

    def release_lease(self, holder: str) -> None:
        """See :class:`FleetStore`."""
        check_process_id(holder, "lease holder")
        with self._lock:
            if self._lease is not None and self._lease.holder == holder:
                self._lease = None

    def lease(self) -> Lease | None:
        """See :class:`FleetStore`."""
        return self._lease

    def lease_holder(self, now: float) -> str | None:
        """See :class:`FleetStore`."""
        lease = self._lease
        return lease.holder if lease is not None and lease.held_at(now) else None
