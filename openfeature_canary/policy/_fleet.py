"""This process's part in a fleet: publish its signals, decide only while it holds the lease.

Every process serves flags. Exactly one at a time runs the policy of a rollout: the one holding
the decider lease in the state store (:class:`~openfeature_canary.stores.FleetStore`). Every
process that records traffic publishes its cumulative signals to the store at each tick, and
the decider reads them all (:class:`~openfeature_canary.signals.FleetSignalSource`), so it
judges the whole fleet's traffic. A holder that dies stops renewing; another process takes the
lease over once it expires. Losing the race for the lease is the normal case, not an error: it
is logged once, at INFO, when this process's role changes.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Final

from openfeature_canary._forksafe import renew_locks_after_fork
from openfeature_canary.errors import StateStoreError

if TYPE_CHECKING:
    from openfeature_canary.signals._fleet import Publisher
    from openfeature_canary.stores._fleet import FleetStore

__all__ = ["DEFAULT_LEASE_TTL_S", "Fleet"]

log = logging.getLogger("openfeature_canary")

#: How long a decider's lease lasts without renewal: the longest a dead decider is not
#: replaced (it renews at every tick, every 10 s in the reference plan).
DEFAULT_LEASE_TTL_S: Final = 30.0


class Fleet:
    """Publishes this process's signals and holds (or waits for) the decider lease.

    ``publisher`` is ``None`` for a process that records no traffic (the ``controller``
    command); ``decide=False`` for a process that only serves and publishes (a fleet whose
    policy runs in a dedicated controller). :meth:`round` is what the policy asks at each
    tick: it publishes, then tries the lease, at most once per ``now``.
    """

    def __init__(
        self,
        store: FleetStore,
        process_id: str,
        *,
        publisher: Publisher | None = None,
        decide: bool = True,
        lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
    ) -> None:
        if lease_ttl_s <= 0:
            raise ValueError(f"lease_ttl_s must be positive, got {lease_ttl_s}")
        self.store = store
        self._process_id = process_id
        self.publisher = publisher
        self.decide = decide
        self.lease_ttl_s = lease_ttl_s
        self._lock = threading.Lock()
        renew_locks_after_fork(self, "_lock")
        self._round_at: float | None = None
        self._leader = False
        self._publish_failing = False

    @property
    def process_id(self) -> str:
        """Who this process is in the store: its publisher's id (which a forked child
        renews, so two workers never share one), else the id it was given."""
        return self.publisher.process_id if self.publisher is not None else self._process_id

    @property
    def leader(self) -> bool:
        """True while this process held the lease at its last round."""
        return self._leader

    def round(self, now: float) -> bool:
        """Publish this process's signals, then take or renew the lease: True when this
        process decides at ``now``. Idempotent within one ``now``."""
        with self._lock:
            if self._round_at == now:
                return self._leader
            self._round_at = now
            self._publish(now)
            leader = self.decide and self._try_lease(now)
            if leader != self._leader:
                role = "decides" if leader else "no longer decides"
                log.info("openfeature-canary: process %s %s", self.process_id, role)
            self._leader = leader
            return leader

    def release(self) -> None:
        """Give the lease up (a clean shutdown: another process takes over at once)."""
        with self._lock:
            if not self._leader:
                return
            self._leader = False
            try:
                self.store.release_lease(self.process_id)
            except StateStoreError as exc:
                log.warning("openfeature-canary: cannot release the decider lease: %s", exc)

    def _publish(self, now: float) -> None:
        if self.publisher is None:
            return
        try:
            self.publisher.publish(now)
        except StateStoreError as exc:
            if not self._publish_failing:  # once per outage, not every tick
                log.warning("openfeature-canary: cannot publish this process's signals: %s", exc)
            self._publish_failing = True
            return
        if self._publish_failing:
            log.info("openfeature-canary: publishing this process's signals again")
        self._publish_failing = False

    def _try_lease(self, now: float) -> bool:
        try:
            return self.store.try_lease(self.process_id, self.lease_ttl_s, now)
        except StateStoreError as exc:
            # Cannot tell who decides: deciding blind could double a transition, and the
            # store's compare-and-set would refuse it anyway. Wait for the store.
            log.warning("openfeature-canary: cannot take the decider lease: %s", exc)
            return False
